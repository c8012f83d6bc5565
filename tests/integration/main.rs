//! croco's integration tests: one binary (as in ripgrep), one module per area.

mod ablations;
mod bundles;
mod cli;
mod context;
mod evaluation;
mod exits;
mod faults;
mod fuzz;
mod gc;
mod imports;
mod inputs;
mod interop;
mod lock;
mod malformed;
#[path = "../shared/memory_plan_pipeline.rs"]
mod memory_plan_pipeline;
mod model_parity;
mod model_stages;
mod pairs_rule;
mod shards;
mod slt;
mod spec_corpus;
mod stage_graph;
mod storage;
mod tuning;
mod util;
