//! Running a plan: stale stages in dependency order, each committed with the
//! parts-then-manifest protocol, current stages skipped.

use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::manifest::{self, Manifest};
use super::plan::{Plan, PlannedStage};
use crate::stages::{self, StageError, StageInput, StageName, Stats};
use crate::store::session::new_context;
use crate::store::tables::{TableWriter, register_version};
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
}

/// What happened to one stage.
#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    /// The stage.
    pub stage: StageName,
    /// Its output key.
    pub key: String,
    /// `ran` or `skipped` (already current).
    pub status: &'static str,
    /// Rows of its output version.
    pub rows: u64,
    /// Seconds spent (0 when skipped).
    pub seconds: f64,
    /// Stage counts from the manifest.
    pub stats: Stats,
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
    /// `--stage` names a stage the pipeline does not configure.
    #[error("the pipeline has no [stages.{0}] section")]
    NotConfigured(StageName),
}

/// Runs `plan` and reports on every stage it touched.
pub async fn run(plan: &Plan, options: RunOptions) -> Result<Vec<StageReport>, RunError> {
    if let Some(only) = options.only {
        let stage = plan.stage(only).ok_or(RunError::NotConfigured(only))?;
        return Ok(vec![execute(plan, stage, options).await?]);
    }
    let mut reports = Vec::new();
    for stage in &plan.stages {
        let report = match plan.current(stage).await? {
            Some(current) if !options.force => skipped(stage, &current),
            _ => execute(plan, stage, options).await?,
        };
        reports.push(report);
    }
    Ok(reports)
}

fn skipped(stage: &PlannedStage, current: &Manifest) -> StageReport {
    StageReport {
        stage: stage.stage,
        key: stage.key.clone(),
        status: "skipped",
        rows: current.rows,
        seconds: 0.0,
        stats: current.stats.clone(),
    }
}

async fn execute(plan: &Plan, stage: &PlannedStage, options: RunOptions) -> Result<StageReport, RunError> {
    let started = Instant::now();
    let started_at = chrono::Utc::now().to_rfc3339();
    tracing::info!(stage = %stage.stage, key = %stage.key, "running");
    let ctx = new_context();
    plan.storage.register(&ctx);
    for (table, key) in &stage.inputs {
        let table = Table::from_name(table).expect("plans name known tables");
        let input = manifest::read(&plan.storage, table, key).await?.ok_or_else(|| RunError::InputMissing {
            stage: stage.stage,
            table,
            key: key.clone(),
        })?;
        register_version(&ctx, &plan.storage, table, key, &input.parts, table.name()).await?;
    }
    let progress = progress_bar(stage.stage, options.progress);
    let resume = !options.force && options.only.is_none();
    let input =
        StageInput { ctx: &ctx, spec: &plan.loaded.spec, base_dir: &plan.loaded.base_dir, progress: &progress, resume };
    let mut writer = TableWriter::new(&plan.storage, stage.stage.writes(), &stage.key, &attempt_nonce());
    let stats = match stages::run(stage.stage, &input, &mut writer).await {
        Ok(stats) => stats,
        Err(source) => {
            progress.abandon();
            writer.abort().await;
            return Err(RunError::Stage { stage: stage.stage, source: Box::new(source) });
        }
    };
    let parts = writer
        .finish()
        .await
        .map_err(|source| RunError::Stage { stage: stage.stage, source: Box::new(source.into()) })?;
    let rows = parts.iter().map(|p| p.rows).sum();
    let manifest = Manifest {
        table: stage.stage.writes().name().to_string(),
        key: stage.key.clone(),
        stage: stage.stage.name().to_string(),
        schema_version: stage.stage.writes().schema().version,
        params: stage.params.clone(),
        inputs: stage.inputs.clone(),
        external: stage.external.clone(),
        models: stage.models.clone(),
        parts,
        rows,
        stats: stats.clone(),
        run: plan.loaded.spec.run.name.clone(),
        started_at,
        committed_at: chrono::Utc::now().to_rfc3339(),
        croco_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    manifest::commit(&plan.storage, &manifest).await?;
    progress.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(stage = %stage.stage, rows, seconds, "committed");
    Ok(StageReport { stage: stage.stage, key: stage.key.clone(), status: "ran", rows, seconds, stats })
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
