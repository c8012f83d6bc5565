//! `[run]`: the run's name, storage root, languages, device and rounds.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::ValueProblem;

/// `[run]`: what the pipeline is called, where its tables live, which languages it covers.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// Name of the run (letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// Storage root: `file://…`, a path relative to the pipeline file, `memory://NAME`,
    /// `s3://bucket/prefix`, `gs://bucket/prefix` or `az://container/prefix`.
    pub root: String,
    /// ISO 639-1 codes of the languages the pipeline covers; prompts in other languages are dropped (and counted).
    pub languages: Vec<String>,
    /// Object-store options (`endpoint`, `region`, `allow_http`, ...) overriding the provider's
    /// environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`). Keep secrets in the environment, not here.
    #[serde(default)]
    pub storage: crate::store::storage::StorageOptions,
    /// Retries of object-store requests (cloud roots and inputs).
    #[serde(default)]
    pub retry: crate::store::storage::RetrySpec,
    /// Where model stages run: `auto` (CUDA when its provider loads, else CPU), `cpu` or `cuda`.
    /// Not part of any table key.
    #[serde(default)]
    pub device: crate::model::runtime::Device,
    /// CUDA device id.
    #[serde(default)]
    pub device_id: i32,
    /// Memory of the device the model stages run on (`80GiB`, `24 GB`):
    /// `croco validate` refuses a stage whose predicted peak (`croco plan`)
    /// exceeds it, naming the key to lower. Unset: not checked. Not part of any table key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_memory: Option<String>,
    /// What the training step's backward recomputes of each layer: `full`
    /// (the whole layer from its saved input, as gradient checkpointing),
    /// `selective` (all but the MLP's gate and up products, which the
    /// forward keeps: ~20 % faster, `2 · intermediate` more elements per
    /// token and layer) or `auto` (selective where `croco plan`'s step fits
    /// `device_memory`, or on the CPU without it the available memory).
    /// The same gradients either way: not part of any table key.
    #[serde(default)]
    pub recompute: crate::model::layerwise::Recompute,
    /// Intra-op threads of each ONNX Runtime session (0: ONNX Runtime's default).
    #[serde(default)]
    pub threads: usize,
    /// Seconds after the last heartbeat when another run may take over this run's lock.
    #[serde(default = "default_lock_ttl_s")]
    pub lock_ttl_s: u64,
    /// Online preference optimisation: R rounds of generate (with the previous
    /// round's adapter) → score → pairs → ref_logps → tune (continuing from
    /// it) → evaluate, round r answering slice r of R of the training prompts,
    /// so R rounds see as many pairs as one offline round. 1 (the default) is offline.
    #[serde(default = "default_rounds")]
    pub rounds: u32,
}

fn default_rounds() -> u32 {
    1
}

fn default_lock_ttl_s() -> u64 {
    600
}

impl RunSpec {
    /// Checks the values serde cannot: the name, the root's scheme, the language codes.
    pub fn value_problems(&self) -> Vec<ValueProblem> {
        let mut problems = Vec::new();
        let name_ok = !self.name.is_empty()
            && self.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            problems.push((
                "run.name".into(),
                format!("`{}` must be non-empty letters, digits, `-`, `_` or `.`", self.name),
            ));
        }
        if let Some(reason) = crate::store::storage::root_problem(&self.root) {
            problems.push(("run.root".into(), reason));
        } else if !self.storage.is_empty() && !crate::store::storage::is_cloud_root(&self.root) {
            problems.push(("run.storage".into(), "storage options apply to s3://, gs:// and az:// roots only".into()));
        }
        if let Some(size) = &self.device_memory
            && crate::model::memory::parse_size(size).is_none()
        {
            problems.push((
                "run.device_memory".into(),
                format!("`{size}` is not a size; write it like `80GiB`, `24 GB` or `512MiB`"),
            ));
        }
        if self.rounds == 0 {
            problems.push(("run.rounds".into(), "must be at least 1".into()));
        } else if self.rounds > 1 && self.root.starts_with("memory://") {
            // Round r reads round r-1's adapter back by URL, which an in-process memory store cannot serve.
            problems.push((
                "run.rounds".into(),
                "rounds need a persistent root (a path, file://, s3://, gs://, az://)".into(),
            ));
        }
        if self.lock_ttl_s < 3 {
            problems.push(("run.lock_ttl_s".into(), "must be at least 3 seconds".into()));
        }
        if self.languages.is_empty() {
            problems.push(("run.languages".into(), "at least one language is needed".into()));
        }
        for (i, code) in self.languages.iter().enumerate() {
            if !crate::langs::is_iso_639_1(code) {
                problems.push((format!("run.languages[{i}]"), format!("`{code}` is not an ISO 639-1 language code")));
            } else if self.languages[..i].contains(code) {
                problems.push((format!("run.languages[{i}]"), format!("`{code}` is listed twice")));
            }
        }
        problems
    }
}
