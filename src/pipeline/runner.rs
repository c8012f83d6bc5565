//! Running a plan: stale stages in dependency order, each committed with the
//! parts-then-manifest protocol, current stages skipped.

use std::collections::BTreeMap;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use datafusion::prelude::SessionContext;

use super::plan::{Plan, PlannedStage};
use crate::model::runtime::SessionConfig;
use crate::spec::StageName;
use crate::stages::registry;
use crate::stages::stage::{StageError, StageInput};
use crate::store::manifest::{self, Manifest, Stats};
use crate::store::session::new_context;
use crate::store::shard::{self, Shard, ShardRecord};
use crate::store::tables::{ArtifactInfo, PartInfo, TableWriter, register_version};
use crate::store::{StoreError, Table};

/// What to run.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Run only this stage (whether or not it is current); its inputs must be current.
    pub only: Option<StageName>,
    /// Rerun stages even when current.
    pub force: bool,
    /// Show progress bars (on a terminal).
    pub progress: bool,
    /// Process only this shard of the model stages (see [`crate::store::shard`]).
    pub shard: Option<Shard>,
}

/// What happened to one stage.
#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    /// The stage.
    pub stage: StageName,
    /// Its output key.
    pub key: String,
    /// What the run did with it.
    pub status: StageStatus,
    /// Rows of its output version.
    pub rows: u64,
    /// Seconds spent (0 when skipped).
    pub seconds: f64,
    /// Stage counts from the manifest.
    pub stats: Stats,
    /// Object-store requests retried while the stage ran (counted when the
    /// binary's tracing layer is installed).
    pub retries: u64,
}

/// What a run did with one stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    /// Computed and committed.
    Ran,
    /// Already current (or, in a shard run, this shard already committed).
    Skipped,
    /// Its shards' parts committed as one version.
    Merged,
    /// This shard's part committed.
    Shard,
    /// Waits for all shards; a plain run computes it.
    Deferred,
}

impl StageStatus {
    /// The status as `croco run` prints it.
    pub fn name(self) -> &'static str {
        match self {
            StageStatus::Ran => "ran",
            StageStatus::Skipped => "skipped",
            StageStatus::Merged => "merged",
            StageStatus::Shard => "shard",
            StageStatus::Deferred => "deferred",
        }
    }
}

impl PartialEq<&str> for StageStatus {
    fn eq(&self, other: &&str) -> bool {
        self.name() == *other
    }
}

impl std::fmt::Display for StageStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad`, not `write_str`: `croco run` prints statuses in a padded column.
        f.pad(self.name())
    }
}

/// Errors while running a plan.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Storage failed outside any stage.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stage failed; nothing of it was committed.
    #[error("stage `{stage}` failed, nothing committed: {source}")]
    Stage { stage: StageName, source: Box<StageError> },
    /// `--stage` was given for a stage whose inputs are not current.
    #[error(
        "stage `{stage}` needs table `{table}` version {key}, which is not committed; run the pipeline without --stage first"
    )]
    InputMissing { stage: StageName, table: Table, key: String },
    /// A plain run found some, not all, shards of a stage committed.
    #[error(
        "stage `{stage}` is sharded {count} ways and shard(s) {missing:?} are not committed yet; run them \
         (`croco run FILE --shard I/{count}`) or rerun everything with --force"
    )]
    ShardsMissing { stage: StageName, count: u32, missing: Vec<u32> },
    /// `--stage` names a stage the pipeline does not configure.
    #[error("the pipeline has no [stages.{0}] section")]
    NotConfigured(StageName),
}

/// Runs `plan` and reports on every stage it touched.
pub async fn run(plan: &Plan, options: RunOptions) -> Result<Vec<StageReport>, RunError> {
    let mut reports = Vec::new();
    run_into(plan, options, &mut reports).await?;
    Ok(reports)
}

/// Runs `plan`, pushing each stage's report onto `reports` as soon as the
/// stage is done, so a caller that stops the run early (a signal) still
/// knows what was committed.
pub async fn run_into(plan: &Plan, options: RunOptions, reports: &mut Vec<StageReport>) -> Result<(), RunError> {
    if let Some(only) = options.only {
        let stage = plan.stage(only).ok_or(RunError::NotConfigured(only))?;
        reports.push(execute(plan, stage, options).await?);
        return Ok(());
    }
    for stage in &plan.stages {
        let retries_before = crate::store::retries::count();
        let mut report = match options.shard {
            Some(shard) => run_shard(plan, stage, shard, options).await?,
            None => run_plain(plan, stage, options).await?,
        };
        report.retries = crate::store::retries::count() - retries_before;
        reports.push(report);
    }
    Ok(())
}

/// A stage in a plain run: skipped when current, merged when its shards are
/// all committed, computed otherwise.
async fn run_plain(plan: &Plan, stage: &PlannedStage, options: RunOptions) -> Result<StageReport, RunError> {
    if let Some(current) = plan.current(stage).await?.filter(|_| !options.force) {
        return Ok(skipped(stage, &current));
    }
    let records = shard::list_records(&plan.storage, stage.stage.writes(), &stage.key).await?;
    match records.first() {
        Some(first) if !options.force => merge(plan, stage, first.shard.count, records).await,
        _ => execute(plan, stage, options).await,
    }
}

/// A stage in a shard run: model stages do their slice; stages after them
/// wait for the plain run that merges the shards; the others run as usual.
async fn run_shard(
    plan: &Plan,
    stage: &PlannedStage,
    shard: Shard,
    options: RunOptions,
) -> Result<StageReport, RunError> {
    if registry::stage(stage.stage).shardable(&plan.loaded.spec) {
        let table = stage.stage.writes();
        return match shard::read_record(&plan.storage, table, &stage.key, shard).await? {
            Some(record) if !options.force => Ok(report(stage, StageStatus::Skipped, record.rows, 0.0, record.stats)),
            _ => execute(plan, stage, options).await,
        };
    }
    match downstream_of_shards(plan, stage) {
        true => Ok(report(stage, StageStatus::Deferred, 0, 0.0, Stats::new())),
        false => run_plain(plan, stage, RunOptions { shard: None, ..options }).await,
    }
}

/// Whether `stage` reads, directly or through other stages, a table that
/// shards write: such a stage waits for the plain run that merges them.
fn downstream_of_shards(plan: &Plan, stage: &PlannedStage) -> bool {
    let spec = &plan.loaded.spec;
    stage.inputs.keys().filter_map(|&table| StageName::writer_of(table)).any(|writer| {
        registry::stage(writer).shardable(spec)
            || plan.stage(writer).is_some_and(|upstream| downstream_of_shards(plan, upstream))
    })
}

fn report(stage: &PlannedStage, status: StageStatus, rows: u64, seconds: f64, stats: Stats) -> StageReport {
    StageReport { stage: stage.stage, key: stage.key.clone(), status, rows, seconds, stats, retries: 0 }
}

fn skipped(stage: &PlannedStage, current: &Manifest) -> StageReport {
    report(stage, StageStatus::Skipped, current.rows, 0.0, current.stats.clone())
}

/// Commits the shards of `stage` as one version, if all `count` are there.
async fn merge(
    plan: &Plan,
    stage: &PlannedStage,
    count: u32,
    records: Vec<ShardRecord>,
) -> Result<StageReport, RunError> {
    let present: Vec<u32> = records.iter().filter(|r| r.shard.count == count).map(|r| r.shard.index).collect();
    let missing: Vec<u32> = (0..count).filter(|i| !present.contains(i)).collect();
    if !missing.is_empty() {
        return Err(RunError::ShardsMissing { stage: stage.stage, count, missing });
    }
    let mut stats = Stats::new();
    for record in &records {
        for (name, value) in &record.stats {
            let sum = stats.get(name).and_then(|v| v.as_u64()).unwrap_or(0) + value.as_u64().unwrap_or(0);
            stats.insert(name.clone(), sum.into());
        }
    }
    stats.insert("shards".into(), count.into());
    let parts = records.into_iter().flat_map(|r| r.parts).collect();
    let now = chrono::Utc::now().to_rfc3339();
    let manifest = commit_manifest(plan, stage, Written { parts, artifacts: vec![] }, stats, now).await?;
    tracing::info!(stage = %stage.stage, rows = manifest.rows, shards = count, "merged shards");
    Ok(report(stage, StageStatus::Merged, manifest.rows, 0.0, manifest.stats))
}

/// What a stage wrote.
struct Written {
    parts: Vec<PartInfo>,
    artifacts: Vec<ArtifactInfo>,
}

async fn commit_manifest(
    plan: &Plan,
    stage: &PlannedStage,
    written: Written,
    stats: Stats,
    started_at: String,
) -> Result<Manifest, RunError> {
    let manifest = Manifest {
        table: stage.stage.writes().name().to_string(),
        key: stage.key.clone(),
        stage: stage.stage.name().to_string(),
        schema_version: stage.stage.writes().schema().version,
        params: stage.params.clone(),
        inputs: stage.input_keys_by_name(),
        external: stage.external.clone(),
        models: stage.models.clone(),
        rows: written.parts.iter().map(|p| p.rows).sum(),
        parts: written.parts,
        artifacts: written.artifacts,
        stats,
        run: plan.loaded.spec.run.name.clone(),
        started_at,
        committed_at: chrono::Utc::now().to_rfc3339(),
        croco_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    manifest::commit(&plan.storage, &manifest).await?;
    Ok(manifest)
}

/// Registers the input tables of `stage`: committed versions, or in a shard
/// run the same shard's part of a sharded input. Returns the manifests of the
/// committed versions it registered (their artifacts are the stage's to read).
async fn register_inputs(
    plan: &Plan,
    stage: &PlannedStage,
    ctx: &SessionContext,
    shard: Option<Shard>,
) -> Result<BTreeMap<Table, Manifest>, RunError> {
    let mut manifests = BTreeMap::new();
    for (&table, key) in &stage.inputs {
        let sharded = shard
            .filter(|_| StageName::writer_of(table).is_some_and(|w| registry::stage(w).shardable(&plan.loaded.spec)));
        let missing = || RunError::InputMissing { stage: stage.stage, table, key: key.clone() };
        let parts = match sharded {
            Some(shard) => shard::read_record(&plan.storage, table, key, shard).await?.ok_or_else(missing)?.parts,
            None => {
                let manifest = manifest::read(&plan.storage, table, key).await?.ok_or_else(missing)?;
                let parts = manifest.parts.clone();
                manifests.insert(table, manifest);
                parts
            }
        };
        register_version(ctx, &plan.storage, table, key, &parts, table.name()).await?;
    }
    Ok(manifests)
}

async fn execute(plan: &Plan, stage: &PlannedStage, options: RunOptions) -> Result<StageReport, RunError> {
    let started = Instant::now();
    let started_at = chrono::Utc::now().to_rfc3339();
    let spec = &plan.loaded.spec;
    let implementation = registry::stage(stage.stage);
    let shard = options.shard.filter(|_| implementation.shardable(spec));
    tracing::info!(stage = %stage.stage, key = %stage.key, ?shard, "running");
    let ctx = new_context();
    plan.storage.register(&ctx);
    let inputs = register_inputs(plan, stage, &ctx, shard).await?;
    let progress = progress_bar(stage.stage, options.progress);
    let resume = !options.force && options.only.is_none();
    let models = implementation.models(spec).into_iter().collect();
    let input = StageInput {
        ctx: &ctx,
        base_dir: &plan.loaded.base_dir,
        progress: &progress,
        resume,
        shard,
        inputs: &inputs,
        storage: &plan.storage,
        languages: &spec.run.languages,
        storage_options: &spec.run.storage,
        retry: &spec.run.retry,
        session: SessionConfig { device: spec.run.device, device_id: spec.run.device_id, threads: spec.run.threads },
        recompute: spec.run.recompute,
        device_memory: spec.run.device_memory.as_deref().and_then(crate::model::memory::parse_size),
        models: &models,
        policy_adapter: spec.models.policy_adapter.as_deref(),
    };
    let scope = shard.map_or_else(|| "all".to_string(), |s| s.name());
    let mut writer =
        TableWriter::new(&plan.storage, stage.stage.writes(), &stage.key, &attempt_nonce()).with_scope(&scope);
    let stats = match implementation.run(spec, &input, &mut writer).await {
        Ok(stats) => stats,
        Err(source) => {
            progress.abandon();
            writer.abort().await;
            return Err(RunError::Stage { stage: stage.stage, source: Box::new(source) });
        }
    };
    let artifacts = writer.artifacts().to_vec();
    let parts = writer
        .finish()
        .await
        .map_err(|source| RunError::Stage { stage: stage.stage, source: Box::new(source.into()) })?;
    progress.finish_and_clear();
    let rows: u64 = parts.iter().map(|p| p.rows).sum();
    if let Some(shard) = shard {
        let record = ShardRecord { shard, parts, rows, stats: stats.clone() };
        shard::write_record(&plan.storage, stage.stage.writes(), &stage.key, &record).await?;
        tracing::info!(stage = %stage.stage, rows, shard = %shard.name(), "committed shard");
        return Ok(report(stage, StageStatus::Shard, rows, started.elapsed().as_secs_f64(), stats));
    }
    commit_manifest(plan, stage, Written { parts, artifacts }, stats.clone(), started_at).await?;
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(stage = %stage.stage, rows, seconds, "committed");
    Ok(report(stage, StageStatus::Ran, rows, seconds, stats))
}

fn progress_bar(stage: StageName, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix}: {pos} rows ({per_sec}, {elapsed}) {msg}")
            .expect("static template"),
    );
    bar.set_prefix(stage.name());
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

/// A token unique to this attempt (time + process), so part names of a rerun
/// never collide with parts an earlier manifest lists.
fn attempt_nonce() -> String {
    let nanos = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
    crate::ids::stable_id(&[&nanos.to_string(), &std::process::id().to_string()])[..8].to_string()
}
