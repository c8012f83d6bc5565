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

/// The text of a pipeline of the prompts stage alone over `source`, in en
/// and fr (half held out), with `run_root` as the `[run]` root lines.
pub fn prompts_only_pipeline(run_root: &str, source: &str) -> String {
    format!(
        "[run]\nname = \"prompts-only\"\nlanguages = [\"en\", \"fr\"]\n{run_root}\n\n\
         [stages.prompts]\nsource = \"{source}\"\neval_fraction = 0.5\n"
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

/// The result of `sql` over the tables of the pipeline file at `path`
/// (string views read as strings).
pub async fn query(path: &Path, sql: &str) -> Vec<arrow::array::RecordBatch> {
    let planned = plan(path).await;
    let ctx = croco::pipeline::session::pipeline_session(&planned).await.unwrap();
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    batches.iter().map(croco::store::schema::plain_strings).collect()
}

/// The stages a run actually executed, by name.
pub fn ran(reports: &[StageReport]) -> Vec<&'static str> {
    reports.iter().filter(|r| r.status == "ran").map(|r| r.stage.name()).collect()
}

/// The committed versions (those with a manifest) of `table` under the storage root `root`.
pub fn committed_versions(root: &Path, table: &str) -> usize {
    let versions = std::fs::read_dir(root.join("tables").join(table)).into_iter().flatten();
    versions.filter(|v| v.as_ref().is_ok_and(|v| v.path().join("_manifest.json").exists())).count()
}

/// `path` under the repository's `data/` directory, as pipeline-file text.
pub fn data(path: &str) -> String {
    repo().join("data").join(path).display().to_string()
}

/// The `[run]`, `[models]` and `[stages.prompts]` sections the model-running
/// test pipelines share: the en and fr demo prompts (20 % held out), CPU, two
/// threads, tables under `dir/root`. `models` are `[models]` entries, as
/// (role, location).
pub fn en_fr_head(name: &str, dir: &Path, models: &[(&str, String)]) -> String {
    let models: Vec<String> = models.iter().map(|(role, location)| format!("{role} = \"{location}\"")).collect();
    format!(
        "[run]\nname = \"{name}\"\nroot = \"{root}\"\nlanguages = [\"en\", \"fr\"]\ndevice = \"cpu\"\nthreads = 2\n\n\
         [models]\n{models}\n\n[stages.prompts]\nsource = \"{prompts}\"\n\
         columns = {{ text = \"prompt\", source_id = \"source_id\" }}\neval_fraction = 0.2\n",
        root = dir.join("root").display(),
        models = models.join("\n"),
        prompts = data("prompts/demo.jsonl"),
    )
}

/// [`en_fr_head`] with the demo policy, then the demo's scored responses
/// imported (no sampling: fast) and `[stages.pairs]`, ready for more sections.
pub fn imported_pairs_pipeline(name: &str, dir: &Path) -> String {
    let responses = data("demo/scored_generations.jsonl");
    format!(
        "{}\n[stages.generate.import]\npath = \"{responses}\"\n\n[stages.score.import]\npath = \"{responses}\"\n\n\
         [stages.pairs]\n",
        en_fr_head(name, dir, &[("policy", data("models/policy"))])
    )
}

/// The values of string column `column` across `batches` (string views read as strings).
pub fn strings(batches: &[arrow::array::RecordBatch], column: usize) -> Vec<String> {
    use arrow::array::{Array, StringArray};
    let batches: Vec<_> = batches.iter().map(croco::store::schema::plain_strings).collect();
    batches
        .iter()
        .flat_map(|b| {
            let values = b.column(column).as_any().downcast_ref::<StringArray>().unwrap();
            (0..values.len()).map(|i| values.value(i).to_string()).collect::<Vec<_>>()
        })
        .collect()
}

/// The demo policy bundle (sizes verified).
pub fn policy_bundle() -> croco::model::bundle::Bundle {
    use croco::model::bundle::{Bundle, Verify};
    Bundle::open(&repo().join("data/models/policy"), Verify::Sizes).unwrap()
}

/// Writes a PEFT adapter for the demo policy whose B matrices are all `b`
/// (0 leaves the base unchanged) into `dir/adapter` and returns that directory.
pub fn write_adapter(dir: &Path, b: f32) -> PathBuf {
    use croco::model::lora::{Adapter, AdapterConfig};
    let config: AdapterConfig = serde_json::from_value(serde_json::json!({
        "r": 4, "lora_alpha": 8.0, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj", "down_proj"],
        "peft_type": "LORA", "task_type": "CAUSAL_LM"
    }))
    .unwrap();
    let mut adapter = Adapter::init(&policy_bundle(), config, 5).unwrap();
    adapter.modules.iter_mut().filter(|m| m.trainable).for_each(|m| m.b.fill(b));
    let adapter_dir = dir.join("adapter");
    std::fs::create_dir_all(&adapter_dir).unwrap();
    let (weights, config) = adapter.to_peft().unwrap();
    std::fs::write(adapter_dir.join("adapter_model.safetensors"), weights).unwrap();
    std::fs::write(adapter_dir.join("adapter_config.json"), config).unwrap();
    adapter_dir
}
