//! Pipelines: reading the file ([`validate`]), the stage graph with
//! content keys ([`plan`]), execution ([`runner`]) under the run lock
//! ([`lock`]), garbage collection ([`gc`]) and the SQL session over every
//! table ([`session`]).

pub mod gc;
pub mod lock;
pub mod memory;
pub mod plan;
pub mod runner;
pub mod session;
pub mod validate;

pub use plan::{Plan, PlanError, PlannedStage, StageState};
pub use runner::{RunError, RunOptions, StageReport, StageStatus};
pub use validate::{LoadedSpec, SpecError, SpecProblem};
