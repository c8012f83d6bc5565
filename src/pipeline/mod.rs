//! Pipelines: the file format ([`spec`], [`validate`]), the stage graph with
//! content keys ([`plan`]), execution ([`runner`]) and the commit record of
//! every table version ([`manifest`]).

mod eval_spec;
pub mod gc;
pub mod lock;
pub mod manifest;
pub mod plan;
pub mod runner;
pub mod shard;
pub mod spec;
pub mod validate;

pub use plan::{Plan, PlanError, PlannedStage, StageState};
pub use runner::{RunError, RunOptions, StageReport};
pub use validate::{LoadedSpec, SpecError, SpecProblem};
