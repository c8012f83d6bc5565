//! The stages of the recipe, one file each. A stage reads the tables it
//! declares (registered by the runner in a DataFusion session under their
//! names) and writes its one output table through a `TableWriter`; it never
//! reaches into another stage. [`stage`] says what a stage is, [`registry`]
//! lists them, [`files`] reads the input files a pipeline names.

pub mod evaluate;
pub mod files;
pub mod generate;
pub mod pairs;
pub mod prompts;
pub mod ref_logps;
pub mod registry;
pub mod report;
pub mod score;
pub mod stage;
pub mod tune;
