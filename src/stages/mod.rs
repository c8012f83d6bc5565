//! The stages of the recipe, one file each. A stage reads the tables it
//! declares (registered by the runner in a DataFusion session under their
//! names) and writes its one output table through a [`TableWriter`]; it never
//! reaches into another stage.

pub mod evaluate;
pub mod generate;
pub mod input;
pub mod pairs;
pub mod prompts;
pub mod ref_logps;
pub mod report;
pub mod score;
pub mod tune;

use std::path::Path;

use datafusion::prelude::SessionContext;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use crate::pipeline::spec::{PipelineSpec, SamplingModel};
use crate::store::tables::TableWriter;
use crate::store::{StoreError, Table};

/// The stages, in dependency order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum StageName {
    /// Ingest prompts.
    Prompts,
    /// Generate (or import) responses.
    Generate,
    /// Score (or import rewards for) responses.
    Score,
    /// Build preference pairs.
    Pairs,
    /// Reference log-probs of the pairs.
    RefLogps,
    /// DPO with LoRA on the pairs.
    Tune,
    /// Base against tuned: multiple-choice tasks and judged open-ended answers.
    Evaluate,
    /// Metrics with intervals from the evaluation's items.
    Report,
}

impl StageName {
    /// Every stage, in dependency order.
    pub const ALL: [StageName; 8] = [
        StageName::Prompts,
        StageName::Generate,
        StageName::Score,
        StageName::Pairs,
        StageName::RefLogps,
        StageName::Tune,
        StageName::Evaluate,
        StageName::Report,
    ];

    /// The stage's name in pipeline files and messages.
    pub fn name(self) -> &'static str {
        match self {
            StageName::Prompts => "prompts",
            StageName::Generate => "generate",
            StageName::Score => "score",
            StageName::Pairs => "pairs",
            StageName::RefLogps => "ref_logps",
            StageName::Tune => "tune",
            StageName::Evaluate => "evaluate",
            StageName::Report => "report",
        }
    }

    /// The table the stage writes.
    pub fn writes(self) -> Table {
        match self {
            StageName::Prompts => Table::Prompts,
            StageName::Generate => Table::Generations,
            StageName::Score => Table::Scores,
            StageName::Pairs => Table::Pairs,
            StageName::RefLogps => Table::RefLogps,
            StageName::Tune => Table::TrainLog,
            StageName::Evaluate => Table::EvalItems,
            StageName::Report => Table::EvalResults,
        }
    }

    /// The tables the stage reads, each written by an earlier stage.
    pub fn reads(self) -> &'static [Table] {
        match self {
            StageName::Prompts => &[],
            StageName::Generate => &[Table::Prompts],
            StageName::Score => &[Table::Prompts, Table::Generations],
            StageName::Pairs => &[Table::Prompts, Table::Generations, Table::Scores],
            StageName::RefLogps => &[Table::Pairs],
            StageName::Tune => &[Table::Pairs, Table::RefLogps],
            StageName::Evaluate => &[Table::Prompts, Table::TrainLog],
            StageName::Report => &[Table::EvalItems],
        }
    }

    /// The tables the stage cannot run without. Evaluate reads the prompts
    /// only for its judge and the tuned adapter from `train_log` only when
    /// the pipeline tunes (else `models.policy_adapter` names it); the
    /// pipeline checks those cases itself.
    pub fn required_reads(self) -> &'static [Table] {
        match self {
            StageName::Evaluate => &[],
            _ => self.reads(),
        }
    }

    /// The stage that writes `table`.
    pub fn writer_of(table: Table) -> Option<StageName> {
        StageName::ALL.into_iter().find(|stage| stage.writes() == table)
    }

    /// The stage's resolved parameters as JSON (for keys and manifests), or
    /// `None` when the pipeline does not configure it.
    pub fn params(self, spec: &PipelineSpec) -> Option<serde_json::Value> {
        let stages = &spec.stages;
        let value = match self {
            StageName::Prompts => stages.prompts.as_ref().map(serde_json::to_value),
            StageName::Generate => stages.generate.as_ref().map(serde_json::to_value),
            StageName::Score => stages.score.as_ref().map(serde_json::to_value),
            StageName::Pairs => stages.pairs.as_ref().map(serde_json::to_value),
            StageName::RefLogps => stages.ref_logps.as_ref().map(serde_json::to_value),
            // The tune stage truncates exactly as ref_logps did: those settings are its own too.
            StageName::Tune => stages
                .tune
                .as_ref()
                .map(|tune| serde_json::to_value(serde_json::json!({ "tune": tune, "truncation": stages.ref_logps }))),
            StageName::Evaluate => stages.evaluate.as_ref().map(serde_json::to_value),
            StageName::Report => stages.report.as_ref().map(serde_json::to_value),
        };
        let value = value.map(|v| v.expect("stage parameters serialize to JSON"));
        // Prompts also depend on the run's language list, which filters them.
        match (self, value) {
            (StageName::Prompts, Some(serde_json::Value::Object(mut map))) => {
                map.insert("languages".into(), serde_json::to_value(&spec.run.languages).expect("strings"));
                Some(serde_json::Value::Object(map))
            }
            (_, value) => value,
        }
    }

    /// Whether the stage can be split over shards of prompts: generate and
    /// score, when they run a model (imports are cheap and not sharded). The
    /// tuning stages see every pair: an optimizer run does not split.
    pub fn shardable(self, spec: &PipelineSpec) -> bool {
        matches!(self, StageName::Generate | StageName::Score) && !self.models(spec).is_empty()
    }

    /// The model bundles the stage runs, by role (`policy`, `reward`,
    /// `reference`), as written in `[models]`. The reference defaults to the
    /// policy's bundle, without its adapter.
    pub fn models(self, spec: &PipelineSpec) -> Vec<(&'static str, String)> {
        let (stages, models) = (&spec.stages, &spec.models);
        let found = match self {
            StageName::Generate => match stages.generate.as_ref().filter(|g| g.import.is_none()).map(|g| g.model) {
                Some(SamplingModel::Policy) => models.policy.clone().map(|p| ("policy", p)),
                Some(SamplingModel::OffPolicy) => models.off_policy.clone().map(|p| ("off_policy", p)),
                None => None,
            },
            StageName::Score if stages.score.as_ref().is_some_and(|s| s.import.is_none()) => {
                models.reward.clone().map(|r| ("reward", r))
            }
            StageName::RefLogps => models.reference.clone().or_else(|| models.policy.clone()).map(|r| ("reference", r)),
            StageName::Tune => models.policy.clone().map(|p| ("policy", p)),
            StageName::Evaluate => return evaluate_models(spec),
            _ => None,
        };
        found.into_iter().collect()
    }

    /// Locations of the files the stage reads from outside the storage root,
    /// with the pipeline key that names each.
    pub fn external_inputs(self, spec: &PipelineSpec) -> Vec<(String, String)> {
        let stages = &spec.stages;
        let found = match self {
            StageName::Prompts => stages.prompts.as_ref().map(|p| ("stages.prompts.source", p.source.clone())),
            StageName::Generate => stages
                .generate
                .as_ref()
                .and_then(|g| g.import.as_ref())
                .map(|i| ("stages.generate.import.path", i.path.clone())),
            StageName::Score => stages
                .score
                .as_ref()
                .and_then(|s| s.import.as_ref())
                .map(|i| ("stages.score.import.path", i.path.clone())),
            StageName::Evaluate => {
                let tasks = stages.evaluate.iter().flat_map(|e| e.choice.iter().enumerate());
                let tasks = tasks.map(|(i, t)| (format!("stages.evaluate.choice[{i}].source"), t.source.clone()));
                let judge = stages.evaluate.as_ref().and_then(|e| e.judge.as_ref()?.prompts.as_ref());
                let judge = judge.map(|p| ("stages.evaluate.judge.prompts.source".to_string(), p.source.clone()));
                return tasks.chain(judge).collect();
            }
            StageName::Pairs | StageName::RefLogps | StageName::Tune | StageName::Report => None,
        };
        found.into_iter().map(|(key, location)| (key.to_string(), location)).collect()
    }
}

/// The bundles evaluate runs: the policy (base and tuned), the reward model
/// when configured (it scores the judged responses), the pairwise judge.
fn evaluate_models(spec: &PipelineSpec) -> Vec<(&'static str, String)> {
    let models = &spec.models;
    let Some(judge) = spec.stages.evaluate.as_ref().and_then(|e| e.judge.as_ref()) else {
        return models.policy.clone().map(|p| ("policy", p)).into_iter().collect();
    };
    let pairwise = (judge.kind == crate::pipeline::spec::JudgeKind::Pairwise).then(|| models.judge.clone()).flatten();
    let roles = [("policy", models.policy.clone()), ("reward", models.reward.clone()), ("judge", pairwise)];
    roles.into_iter().filter_map(|(role, location)| location.map(|l| (role, l))).collect()
}

impl std::fmt::Display for StageName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Stage-specific counts recorded in the manifest (dropped rows, pools, ...).
pub type Stats = serde_json::Map<String, serde_json::Value>;

/// What a stage gets to work with.
pub struct StageInput<'a> {
    /// A session with the stage's input tables registered under their names.
    pub ctx: &'a SessionContext,
    /// The pipeline.
    pub spec: &'a PipelineSpec,
    /// Directory that relative paths in the pipeline file are resolved against.
    pub base_dir: &'a Path,
    /// Progress of the stage (rows written); hidden when not on a terminal.
    pub progress: &'a ProgressBar,
    /// Whether to resume from chunks an interrupted attempt committed
    /// (false when the run was forced).
    pub resume: bool,
    /// The slice of prompts this run handles, in a sharded run.
    pub shard: Option<crate::pipeline::shard::Shard>,
    /// The manifests of the committed input versions (not of shard parts).
    pub inputs: &'a std::collections::BTreeMap<Table, crate::pipeline::manifest::Manifest>,
    /// The storage root the tables live in.
    pub storage: &'a crate::store::Storage,
}

impl StageInput<'_> {
    /// The session settings of model stages, from `[run]`.
    pub fn session_config(&self) -> crate::model::runtime::SessionConfig {
        let run = &self.spec.run;
        crate::model::runtime::SessionConfig { device: run.device, device_id: run.device_id, threads: run.threads }
    }

    /// Opens the bundle of `role` named in `[models]`, relative to the pipeline file.
    pub fn bundle(&self, role: &str, location: Option<&String>) -> Result<crate::model::bundle::Bundle, StageError> {
        let location = location.ok_or_else(|| StageError::Input {
            file: "[models]".into(),
            problem: format!("no `{role}` bundle is configured"),
        })?;
        let bundle =
            crate::model::bundle::Bundle::open(&self.base_dir.join(location), crate::model::bundle::Verify::Sizes)?;
        Ok(bundle)
    }

    /// The content of artifact `file` of the input version of `table`, after
    /// checking it against the sha256 its manifest records.
    pub async fn input_artifact(&self, table: Table, file: &str) -> Result<bytes::Bytes, StageError> {
        let manifest = self.inputs.get(&table).ok_or_else(|| StageError::Input {
            file: table.name().into(),
            problem: "the input version is not registered".into(),
        })?;
        let version = crate::store::tables::version_dir(table, &manifest.key);
        let path = self.storage.path(&format!("{version}/{file}"));
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
    /// its checksum ([`crate::model::lora::checksum_of_files`]), if any.
    pub async fn policy_adapter(
        &self,
        bundle: &crate::model::bundle::Bundle,
    ) -> Result<Option<(crate::model::lora::Adapter, String)>, StageError> {
        let Some(location) = &self.spec.models.policy_adapter else {
            return Ok(None);
        };
        let (weights, config) = input::read_adapter_files(self.spec, self.base_dir, location).await?;
        let origin = format!("models.policy_adapter = {location:?}");
        Ok(Some(input::adapter_from_files(bundle, &weights, &config, &origin)?))
    }
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
    /// A batch does not fit its table's schema.
    #[error(transparent)]
    Schema(#[from] crate::store::SchemaError),
    /// An Arrow kernel failed.
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    /// An input file lacks a mapped column or has it with an unusable type.
    #[error("{file}: column `{column}` ({role}): {problem}")]
    Column { file: String, column: String, role: String, problem: String },
    /// A row of an input file is unusable.
    #[error("{file}: row {row}: {problem}")]
    Row { file: String, row: String, problem: String },
    /// An input as a whole is unusable.
    #[error("{file}: {problem}")]
    Input { file: String, problem: String },
}

/// Runs `stage`, writing its output into `sink`; returns its counts.
pub async fn run(stage: StageName, input: &StageInput<'_>, sink: &mut TableWriter) -> Result<Stats, StageError> {
    match stage {
        StageName::Prompts => prompts::run(input, sink).await,
        StageName::Generate => generate::run(input, sink).await,
        StageName::Score => score::run(input, sink).await,
        StageName::Pairs => pairs::run(input, sink).await,
        StageName::RefLogps => ref_logps::run(input, sink).await,
        StageName::Tune => tune::run(input, sink).await,
        StageName::Evaluate => evaluate::run(input, sink).await,
        StageName::Report => report::run(input, sink).await,
    }
}

/// Builds a [`Stats`] map from name/value pairs.
pub fn stats<const N: usize>(entries: [(&str, u64); N]) -> Stats {
    entries.into_iter().map(|(name, value)| (name.to_string(), serde_json::Value::from(value))).collect()
}

/// The first row of `sql`'s result as `column=value` text, or `None` when it
/// is empty. Used to name offending rows in errors.
pub async fn first_row(ctx: &SessionContext, sql: &str, context: &str) -> Result<Option<String>, StageError> {
    let frame = crate::store::session::query(ctx, sql, context).await?;
    let batches = frame
        .limit(0, Some(1))?
        .collect()
        .await
        .map_err(|source| StoreError::Query { context: context.into(), source })?;
    let Some(batch) = batches.iter().find(|b| b.num_rows() > 0) else {
        return Ok(None);
    };
    let cells = batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(field, column)| {
            let value = arrow::util::display::array_value_to_string(column, 0).unwrap_or_default();
            format!("{}={value}", field.name())
        })
        .collect::<Vec<_>>();
    Ok(Some(cells.join(", ")))
}

/// The single integer `sql` returns (a `COUNT(*)`).
pub async fn count(ctx: &SessionContext, sql: &str, context: &str) -> Result<u64, StageError> {
    let frame = crate::store::session::query(ctx, sql, context).await?;
    let batches = frame.collect().await.map_err(|source| StoreError::Query { context: context.into(), source })?;
    let value = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .and_then(|b| b.column(0).as_any().downcast_ref::<arrow::array::Int64Array>().map(|a| a.value(0)))
        .unwrap_or(0);
    Ok(value.max(0) as u64)
}

/// Checks that the imported table `table` (read from `file`) has its key
/// columns `prompt_id` and `sample_idx` filled and unique.
pub async fn check_import_keys(ctx: &SessionContext, table: &str, file: &str) -> Result<(), StageError> {
    let null_keys = format!("SELECT prompt_id, sample_idx FROM {table} WHERE prompt_id IS NULL OR sample_idx IS NULL");
    if let Some(row) = first_row(ctx, &null_keys, file).await? {
        return Err(StageError::Row {
            file: file.into(),
            row,
            problem: "prompt_id and sample_idx must both be set".into(),
        });
    }
    let duplicates = format!(
        "SELECT prompt_id, sample_idx, COUNT(*) AS copies FROM {table} GROUP BY prompt_id, sample_idx \
         HAVING COUNT(*) > 1 ORDER BY prompt_id, sample_idx"
    );
    if let Some(row) = first_row(ctx, &duplicates, file).await? {
        return Err(StageError::Row {
            file: file.into(),
            row,
            problem: "(prompt_id, sample_idx) occurs more than once".into(),
        });
    }
    Ok(())
}

impl From<datafusion::error::DataFusionError> for StageError {
    fn from(source: datafusion::error::DataFusionError) -> Self {
        StageError::Store(StoreError::Query { context: "query".into(), source })
    }
}

/// The rows of a query, read as a stream and handed out in numbered chunks
/// of a fixed size: the unit resumable stages commit and skip.
pub struct Chunks<T, F> {
    stream: datafusion::physical_plan::SendableRecordBatchStream,
    context: &'static str,
    size: usize,
    row: F,
    pending: Vec<T>,
    index: u64,
}

impl<T, F: Fn(&arrow::array::RecordBatch, usize) -> Option<T>> Chunks<T, F> {
    /// Runs `sql` in `ctx`; `row` turns row `i` of a result batch (strings
    /// as plain `Utf8`) into a `T`, or skips it with `None`.
    pub async fn new(
        ctx: &SessionContext,
        sql: &str,
        context: &'static str,
        size: usize,
        row: F,
    ) -> Result<Self, StageError> {
        let stream = crate::store::session::query(ctx, sql, context).await?.execute_stream().await?;
        Ok(Chunks { stream, context, size: size.max(1), row, pending: Vec::new(), index: 0 })
    }

    /// The next chunk and its number, or `None` when the rows are exhausted.
    pub async fn next(&mut self) -> Result<Option<(u64, Vec<T>)>, StageError> {
        use futures::StreamExt;
        while self.pending.len() < self.size {
            let Some(batch) = self.stream.next().await else { break };
            let batch = batch.map_err(|source| StoreError::Query { context: self.context.into(), source })?;
            let batch = crate::store::schema::plain_strings(&batch);
            self.pending.extend((0..batch.num_rows()).filter_map(|i| (self.row)(&batch, i)));
        }
        if self.pending.is_empty() {
            return Ok(None);
        }
        let rest = self.pending.split_off(self.size.min(self.pending.len()));
        let chunk = std::mem::replace(&mut self.pending, rest);
        self.index += 1;
        Ok(Some((self.index - 1, chunk)))
    }
}

/// The value of string column `name` at row `i` (columns selected as Utf8).
pub fn text_at(batch: &arrow::array::RecordBatch, name: &str, i: usize) -> String {
    use arrow::array::Array;
    let column = batch.column_by_name(name).and_then(|c| c.as_any().downcast_ref::<arrow::array::StringArray>());
    column.filter(|c| c.is_valid(i)).map(|c| c.value(i).to_string()).unwrap_or_default()
}
