//! Shared test helpers: pipeline files over the demo data with a chosen root.

use std::path::{Path, PathBuf};

use croco::pipeline::runner::{self, RunOptions};
use croco::pipeline::{LoadedSpec, Plan, StageReport, validate};

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The text of a pipeline over the demo data, storing its tables at `root`.
/// `extra_pairs` is appended to the `[stages.pairs]` section and
/// `extra_prompts` to `[stages.prompts]`, to vary parameters.
pub fn demo_pipeline_text(root: &str, extra_prompts: &str, extra_pairs: &str) -> String {
    let data = repo().join("data");
    let data = data.display();
    format!(
        r#"[run]
name = "test"
root = "{root}"
languages = ["en", "da", "nl", "fr", "de", "it", "es", "gl", "ga", "mt", "cy", "fi", "nb", "pt", "sv"]

[stages.prompts]
source = "{data}/prompts/demo.jsonl"
columns = {{ text = "prompt", language = "language", source_id = "source_id" }}
eval_fraction = 0.2
{extra_prompts}

[stages.generate.import]
path = "{data}/demo/scored_generations.jsonl"
label = "synthetic-demo"

[stages.score.import]
path = "{data}/demo/scored_generations.jsonl"
label = "synthetic-demo"

[stages.pairs]
{extra_pairs}
"#
    )
}

/// Writes `text` as `pipeline.toml` in `dir` and returns its path.
pub fn write_pipeline(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Loads and plans the pipeline file at `path`.
pub async fn plan(path: &Path) -> Plan {
    let loaded: LoadedSpec = validate::load(path).unwrap_or_else(|e| panic!("{e}"));
    Plan::build(loaded).await.unwrap_or_else(|e| panic!("{e}"))
}

/// Runs the pipeline file at `path` and returns the stage reports.
pub async fn run(path: &Path, options: RunOptions) -> Vec<StageReport> {
    let plan = plan(path).await;
    runner::run(&plan, options).await.unwrap_or_else(|e| panic!("{e}"))
}

/// The stages a run actually executed, by name.
pub fn ran(reports: &[StageReport]) -> Vec<&'static str> {
    reports.iter().filter(|r| r.status == "ran").map(|r| r.stage.name()).collect()
}
