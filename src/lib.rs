//! croco: the CroCo recipe (cross-lingual contrastive preference tuning on
//! self-generations) as a dataflow pipeline over Parquet tables.
//!
//! The data flows one way: a pipeline file ([`spec`], read by
//! [`pipeline::validate`]) becomes a plan of content-keyed stages
//! ([`pipeline::plan`]); the runner ([`pipeline::runner`]) executes stale
//! stages ([`stages`]), each reading and writing tables through [`store`]. A
//! stage never reaches into another stage: it reads tables.
//!
//! The modules are layers, each importing only those below it: [`ids`],
//! [`langs`], [`vocab`] → [`store`], [`model`] → [`spec`] → [`stages`] →
//! [`pipeline`] → [`report`] → [`cli`] (`docs/architecture.md`).

pub mod cli;
pub mod ids;
pub mod langs;
pub mod model;
pub mod pipeline;
pub mod report;
pub mod spec;
pub mod stages;
pub mod store;
pub mod vocab;
