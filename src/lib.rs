//! croco: the CroCo recipe (cross-lingual contrastive preference tuning on
//! self-generations) as a dataflow pipeline over Parquet tables.
//!
//! The data flows one way: a pipeline file ([`pipeline::spec`]) becomes a plan of
//! content-keyed stages ([`pipeline::plan`]); the runner ([`pipeline::runner`])
//! executes stale stages ([`stages`]), each reading and writing tables through
//! [`store`]. A stage never reaches into another stage: it reads tables.

pub mod cli;
pub mod ids;
pub mod langs;
pub mod model;
pub mod pipeline;
pub mod report;
pub mod stages;
pub mod store;
