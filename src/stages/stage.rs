//! What a stage is: the [`Stage`] trait each stage file implements, what a
//! stage gets to work with ([`StageInput`]) and how it fails ([`StageError`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;

use datafusion::prelude::SessionContext;
use indicatif::ProgressBar;
use serde::Serialize;

use crate::model::bundle::{Bundle, Verify};
use crate::model::layerwise::Recompute;
use crate::model::lora::{ADAPTER_CONFIG, ADAPTER_WEIGHTS, Adapter, checksum_of_files};
use crate::model::runtime::SessionConfig;
use crate::spec::{PipelineSpec, StageName};
use crate::store::manifest::{Manifest, Stats};
use crate::store::shard::Shard;
use crate::store::storage::{RetrySpec, StorageOptions, read_input_files};
use crate::store::tables::{TableWriter, version_dir};
use crate::store::{SchemaError, Storage, StoreError, Table};
use crate::vocab::roles::ModelRole;

/// One stage of the recipe. Each stage file implements it on a unit struct;
/// `stages::registry` maps every [`StageName`] to its implementation.
///
/// The declarations (`params`, `models`, `external_inputs`) read the
/// pipeline; [`Stage::run`] sees only its resolved parameters and its
/// [`StageInput`], never the pipeline file.
pub trait Stage: Sync {
    /// The stage's resolved, typed parameters: its section and what it
    /// shares with other sections. Serialized, they enter its content key.
    type Params: Serialize + Sync;

    /// Which stage this is.
    const NAME: StageName;

    /// Whether the stage may be split over shards of prompts when it runs a
    /// model (imports are cheap and not sharded; an optimizer does not split).
    const SHARDS: bool = false;

    /// The stage's parameters, or `None` when the pipeline does not configure it.
    fn params(spec: &PipelineSpec) -> Option<Self::Params>;

    /// The bundles the stage runs, by role, as `[models]` names them.
    fn models(_spec: &PipelineSpec) -> Vec<(ModelRole, String)> {
        Vec::new()
    }

    /// The files the stage reads from outside the storage root, with the
    /// pipeline key that names each.
    fn external_inputs(_spec: &PipelineSpec) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Runs the stage, writing its one table into `sink`; returns its counts.
    fn run(
        input: &StageInput<'_>,
        params: &Self::Params,
        sink: &mut TableWriter,
    ) -> impl Future<Output = Result<Stats, StageError>>;
}

/// What a stage gets to work with.
pub struct StageInput<'a> {
    /// A session with the stage's input tables registered under their names.
    pub ctx: &'a SessionContext,
    /// Directory that relative paths in the pipeline file are resolved against.
    pub base_dir: &'a Path,
    /// Progress of the stage (rows written); hidden when not on a terminal.
    pub progress: &'a ProgressBar,
    /// Whether to resume from chunks an interrupted attempt committed
    /// (false when the run was forced).
    pub resume: bool,
    /// The slice of prompts this run handles, in a sharded run.
    pub shard: Option<Shard>,
    /// The manifests of the committed input versions (not of shard parts).
    pub inputs: &'a BTreeMap<Table, Manifest>,
    /// The storage root the tables live in.
    pub storage: &'a Storage,
    /// The run's languages (`run.languages`).
    pub languages: &'a [String],
    /// Object-store options for input files (`run.storage`).
    pub storage_options: &'a StorageOptions,
    /// Retries of object-store requests for input files (`run.retry`).
    pub retry: &'a RetrySpec,
    /// ONNX Runtime session settings (`run.device`, `run.threads`, ...).
    pub session: SessionConfig,
    /// What a training step's backward recomputes (`run.recompute`).
    pub recompute: Recompute,
    /// `run.device_memory` in bytes: the bound `Recompute::Auto` holds the
    /// step's plan to (unset: the host's available memory on the CPU).
    pub device_memory: Option<u64>,
    /// The bundles this stage runs, by role ([`Stage::models`]).
    pub models: &'a BTreeMap<ModelRole, String>,
    /// `models.policy_adapter`: the adapter applied to the policy wherever it runs.
    pub policy_adapter: Option<&'a str>,
}

impl StageInput<'_> {
    /// Opens the bundle of `role`, relative to the pipeline file.
    pub fn bundle(&self, role: ModelRole) -> Result<Bundle, StageError> {
        let location = self.models.get(&role).ok_or_else(|| StageError::Input {
            file: "[models]".into(),
            problem: format!("no `{role}` bundle is configured"),
        })?;
        Ok(Bundle::open(&self.base_dir.join(location), Verify::Sizes)?)
    }

    /// The content of artifact `file` of the input version of `table`, after
    /// checking it against the sha256 its manifest records.
    pub async fn input_artifact(&self, table: Table, file: &str) -> Result<bytes::Bytes, StageError> {
        let manifest = self.inputs.get(&table).ok_or_else(|| StageError::Input {
            file: table.name().into(),
            problem: "the input version is not registered".into(),
        })?;
        let path = self.storage.path(&format!("{}/{file}", version_dir(table, &manifest.key)));
        let url = self.storage.url_of(&path);
        let listed = manifest.artifacts.iter().find(|a| a.file == file);
        let listed =
            listed.ok_or_else(|| StageError::Input { file: url.clone(), problem: "not in the manifest".into() })?;
        let bytes = self.storage.get_if_exists(&path).await?;
        let bytes = bytes.ok_or_else(|| StageError::Input { file: url.clone(), problem: "missing".into() })?;
        if crate::ids::sha256_hex(&bytes) != listed.sha256 {
            return Err(StageError::Input { file: url, problem: "content differs from the manifest's sha256".into() });
        }
        Ok(bytes)
    }

    /// The LoRA adapter `models.policy_adapter` names, read for `bundle`, and
    /// its checksum ([`checksum_of_files`]), if any.
    pub async fn policy_adapter(&self, bundle: &Bundle) -> Result<Option<(Adapter, String)>, StageError> {
        let Some(location) = self.policy_adapter else {
            return Ok(None);
        };
        let names = [ADAPTER_WEIGHTS, ADAPTER_CONFIG];
        let [weights, config] = read_input_files(location, &names, self.base_dir, self.storage_options, self.retry)
            .await?
            .try_into()
            .expect("one file per name");
        let origin = format!("models.policy_adapter = {location:?}");
        Ok(Some(adapter_from_files(bundle, &weights, &config, &origin)?))
    }
}

/// The LoRA adapter of the PEFT files `weights` + `config` for `bundle`, and
/// its checksum ([`checksum_of_files`]); `origin` names the files in errors.
pub fn adapter_from_files(
    bundle: &Bundle,
    weights: &[u8],
    config: &[u8],
    origin: &str,
) -> Result<(Adapter, String), StageError> {
    let adapter = Adapter::from_peft(bundle, weights, config)
        .map_err(|source| StageError::Adapter { origin: origin.to_string(), source })?;
    Ok((adapter, checksum_of_files(weights, config)))
}

/// Builds a [`Stats`] map from name/value pairs.
pub fn stats<const N: usize>(entries: [(&str, u64); N]) -> Stats {
    entries.into_iter().map(|(name, value)| (name.to_string(), serde_json::Value::from(value))).collect()
}

/// Errors inside a stage. Each names the file, column or row it concerns.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// Storage or query failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A model could not be loaded or run.
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// A LoRA adapter's files do not fit the bundle.
    #[error("{origin}: {source}")]
    Adapter { origin: String, source: crate::model::ModelError },
    /// A batch does not fit its table's schema.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// An Arrow kernel failed.
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    /// An input file lacks a mapped column or has it with an unusable type.
    #[error("{file}: column `{column}` ({role}): {problem}")]
    Column { file: String, column: String, role: String, problem: String },
    /// A line of a line-oriented input file (JSONL) is unusable.
    #[error("{file}: line {line}{}: {problem}", column.map(|c| format!(", column {c}")).unwrap_or_default())]
    Line { file: String, line: usize, column: Option<usize>, problem: String },
    /// A row of an input file is unusable.
    #[error("{file}: row {row}: {problem}")]
    Row { file: String, row: String, problem: String },
    /// A tuning checkpoint cannot be read back.
    #[error("{url}: unreadable checkpoint: {source}; rerun with --force")]
    Checkpoint { url: String, source: Box<dyn std::error::Error + Send + Sync> },
    /// An input as a whole is unusable.
    #[error("{file}: {problem}")]
    Input { file: String, problem: String },
}
