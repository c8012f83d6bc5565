//! The `croco` command line: argument parsing and one function per command.
//! `main.rs` only turns the result into output and an exit code.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use clap::{Parser, Subcommand, ValueEnum};

use crate::model::memory::{human, parse_size};
use crate::pipeline::gc::{self, GcOptions};
use crate::pipeline::lock::{self, LockError, RunLock};
use crate::pipeline::memory;
use crate::pipeline::runner::{self, RunOptions, StageReport};
use crate::pipeline::session::pipeline_session;
use crate::pipeline::{LoadedSpec, Plan, PlanError, RunError, SpecError, validate};
use crate::report::ReportFormat;
use crate::spec::{BASE_VARIANT, PipelineSpec, StageName};
use crate::store::session::run_statements;
use crate::store::shard::Shard;
use crate::store::{StoreError, Table};

/// Exit code of a run that failed (a stage, storage, an input file).
pub const EXIT_FAILURE: u8 = 1;
/// Exit code of bad usage or an invalid pipeline file.
pub const EXIT_USAGE: u8 = 2;
/// Exit code of a run refused because another run holds the storage root's lock.
pub const EXIT_LOCKED: u8 = 3;
/// Exit code of a run stopped by SIGINT (Ctrl-C): 128 + 2, as shells report it.
pub const EXIT_SIGINT: u8 = 130;
/// Exit code of a run stopped by SIGTERM (what Kubernetes and Slurm send first): 128 + 15.
pub const EXIT_SIGTERM: u8 = 143;

/// Writes one line to standard output, turning a write error (a closed pipe
/// among them: [`CliError::is_closed_pipe`]) into a [`CliError`].
macro_rules! out {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout().lock(), $($arg)*).map_err(stdout_error)?
    };
}

fn stdout_error(source: std::io::Error) -> CliError {
    CliError::Output { path: PathBuf::from("<stdout>"), source: source.into() }
}

/// croco: cross-lingual contrastive preference tuning as a Parquet dataflow.
#[derive(Debug, Parser)]
#[command(name = "croco", version, about)]
pub struct Cli {
    /// Log more (-v: info, -vv: debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log format on standard error: `text` for people, `json` (one object per line) for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a pipeline file and report every problem with file:line:column.
    Validate {
        /// Pipeline file.
        file: PathBuf,
        /// Print problems as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print each model stage's predicted peak memory (weights, KV cache, activations) and the
    /// batch it follows; exits non-zero when a stage does not fit the device memory.
    Plan {
        /// Pipeline file.
        file: PathBuf,
        /// Memory of the device (`80GiB`, `24 GB`); default: `[run] device_memory`.
        #[arg(long)]
        device_memory: Option<String>,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a JSON Schema of the pipeline format, or the schema of a table.
    Schema {
        /// `pipeline`, or a table name (prompts, generations, scores, pairs, ref_logps, train_log, eval_items, eval_results).
        what: String,
    },
    /// Run the stages that are not current, in dependency order.
    Run {
        /// Pipeline file.
        file: PathBuf,
        /// Rerun only this stage (its inputs must be current).
        #[arg(long, value_enum)]
        stage: Option<StageName>,
        /// Rerun stages even when current.
        #[arg(long)]
        force: bool,
        /// Process only shard I of N of the model stages (default: from JOB_COMPLETION_INDEX +
        /// CROCO_SHARD_COUNT, or SLURM_ARRAY_TASK_ID + SLURM_ARRAY_TASK_COUNT, when set).
        #[arg(long, value_parser = Shard::parse)]
        shard: Option<Shard>,
        /// Print the run summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Find (and with --apply delete) objects no manifest references; dry run by default.
    Gc {
        /// Pipeline file.
        file: PathBuf,
        /// Delete what was found (default: only list it).
        #[arg(long)]
        apply: bool,
        /// Also collect committed versions the current pipeline does not use.
        #[arg(long)]
        versions: bool,
        /// Only collect objects older than this (`30s`, `15m`, `1h`, `7d`).
        #[arg(long, default_value = "1h", value_parser = parse_age)]
        older_than: chrono::Duration,
        /// Print the findings as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove the run lock of a pipeline's storage root (after a run died without releasing it).
    Unlock {
        /// Pipeline file.
        file: PathBuf,
    },
    /// Show every stage as current, stale or missing, with row counts and keys.
    Status {
        /// Pipeline file.
        file: PathBuf,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Query the pipeline's tables with SQL (current versions by name, any version as "table@key").
    Sql {
        /// Pipeline file.
        file: PathBuf,
        /// The query (or use -f).
        query: Option<String>,
        /// Read the query from a file.
        #[arg(short = 'f', long = "file", conflicts_with = "query")]
        sql_file: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
        /// Write the result to this file instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Allow statements that write (COPY, INSERT, CREATE ...).
        #[arg(long)]
        allow_writes: bool,
    },
    /// Render the evaluation of a pipeline (its current tables) as HTML or Markdown.
    Report {
        /// Pipeline file.
        file: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ReportFormat::Html)]
        format: ReportFormat,
        /// Write the report to this file (default: standard output).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

/// Log formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Result formats of `croco sql`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned text table.
    Table,
    /// CSV with a header.
    Csv,
    /// JSON lines.
    Json,
    /// Parquet (needs --output).
    Parquet,
}

/// Errors of a command, each mapped to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The pipeline file is unreadable or invalid.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// Planning failed (storage root, input files).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A stage or the runner failed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// Storage or query failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The storage root is locked by another run, or the lock failed.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// Writing output failed.
    #[error("{}: {source}", path.display())]
    Output { path: PathBuf, source: Box<dyn std::error::Error + Send + Sync> },
    /// The arguments do not make sense together.
    #[error("{0}")]
    Usage(String),
    /// The report could not be built.
    #[error(transparent)]
    Report(#[from] crate::report::ReportError),
    /// `croco run` was stopped by a signal; what was committed stays.
    #[error("stopped by {0}: the run lock is released and the committed versions stay; rerun to resume")]
    Interrupted(Signal),
}

/// The signals that stop `croco run` at its next safe point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Ctrl-C.
    Interrupt,
    /// `kill`, Kubernetes, Slurm.
    Terminate,
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
        })
    }
}

/// Resolves when the process receives SIGINT or SIGTERM. The handlers are
/// installed when this is called, so call it before the work it guards.
fn stop_signal() -> Result<impl std::future::Future<Output = Signal>, CliError> {
    #[cfg(unix)]
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| CliError::Usage(format!("cannot handle SIGTERM: {e}")))?;
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = tokio::signal::ctrl_c() => Signal::Interrupt,
            _ = terminate.recv() => Signal::Terminate,
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Interrupt
        }
    })
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Spec(_) | CliError::Usage(_) => EXIT_USAGE,
            CliError::Lock(LockError::Held { .. }) => EXIT_LOCKED,
            CliError::Interrupted(Signal::Interrupt) => EXIT_SIGINT,
            CliError::Interrupted(Signal::Terminate) => EXIT_SIGTERM,
            _ => EXIT_FAILURE,
        }
    }

    /// Whether the error is a write to a closed pipe (`croco status | head`):
    /// the reader has what it wanted, so the binary exits quietly with 0, as
    /// ripgrep does.
    pub fn is_closed_pipe(&self) -> bool {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(error) = cause {
            // Arrow's and Parquet's writer errors give their io::Error as source().
            let io = error.downcast_ref::<std::io::Error>();
            if io.is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) {
                return true;
            }
            cause = error.source();
        }
        false
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Validate { file, json } => validate_command(&file, json),
        Command::Plan { file, device_memory, json } => plan_command(&file, device_memory.as_deref(), json),
        Command::Schema { what } => schema_command(&what),
        Command::Run { file, stage, force, shard, json } => {
            let shard = match shard {
                Some(shard) => Some(shard),
                None => Shard::from_env().map_err(CliError::Usage)?,
            };
            run_command(&file, RunOptions { only: stage, force, progress: !json, shard }, json).await
        }
        Command::Status { file, json } => status_command(&file, json).await,
        Command::Unlock { file } => unlock_command(&file).await,
        Command::Gc { file, apply, versions, older_than, json } => {
            gc_command(&file, apply, GcOptions { versions, older_than }, json).await
        }
        Command::Sql { file, query, sql_file, format, output, allow_writes } => {
            let sql = match (query, sql_file) {
                (Some(query), None) => query,
                (None, Some(path)) => {
                    std::fs::read_to_string(&path).map_err(|e| CliError::Output { path, source: e.into() })?
                }
                _ => return Err(CliError::Usage("give a query or -f FILE".into())),
            };
            sql_command(&file, &sql, format, output.as_deref(), allow_writes).await
        }
        Command::Report { file, format, output } => report_command(&file, format, output.as_deref()).await,
    }
}

async fn report_command(file: &Path, format: ReportFormat, output: Option<&Path>) -> Result<(), CliError> {
    let plan = load_plan(file).await?;
    let ctx = pipeline_session(&plan).await?;
    let data = crate::report::data::gather(&plan, &ctx).await?;
    let text = crate::report::render(&data, format);
    match output {
        Some(path) => std::fs::write(path, text).map_err(|e| CliError::Output { path: path.into(), source: e.into() }),
        None => {
            write!(std::io::stdout().lock(), "{text}").map_err(stdout_error)?;
            Ok(())
        }
    }
}

/// This process's peak resident memory (Linux `VmHWM`), what `croco plan`'s
/// host figure predicts; `None` where `/proc` does not tell.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().strip_suffix(" kB")?;
    kb.trim().parse::<u64>().ok().map(|kb| kb * 1024)
}

fn validate_command(file: &Path, json: bool) -> Result<(), CliError> {
    match (validate::load(file), json) {
        (Ok(_), true) => print_json(&serde_json::json!({ "file": file, "valid": true, "problems": [] }))?,
        (Ok(_), false) => out!("{}: ok", file.display()),
        (Err(SpecError::Invalid { path, problems }), true) => {
            print_json(&serde_json::json!({ "file": path, "valid": false, "problems": problems }))?;
            return Err(CliError::Spec(SpecError::Invalid { path, problems }));
        }
        (Err(e), _) => return Err(e.into()),
    }
    Ok(())
}

fn plan_command(file: &Path, device_memory: Option<&str>, json: bool) -> Result<(), CliError> {
    let loaded = validate::load_for_plan(file)?;
    let limit = match device_memory.or(loaded.spec.run.device_memory.as_deref()) {
        Some(text) => Some(
            parse_size(text)
                .ok_or_else(|| CliError::Usage(format!("--device-memory `{text}` is not a size (80GiB)")))?,
        ),
        None => None,
    };
    let specs = std::iter::once((BASE_VARIANT.to_string(), &loaded.spec))
        .chain(loaded.variants.iter().map(|(name, spec)| (name.clone(), spec)));
    let mut too_big = Vec::new();
    let mut listed = Vec::new();
    for (variant, spec) in specs {
        // The plan resolves `[run] recompute = "auto"` against the device memory asked for here.
        let mut spec = spec.clone();
        spec.run.device_memory = device_memory.map(str::to_string).or(spec.run.device_memory);
        let plans = memory::plan(&spec, &validate::model_manifests(&spec.models, &loaded.base_dir));
        too_big.extend(limit.map(|l| memory::memory_problems(&plans, l)).unwrap_or_default());
        listed.push((variant, plans));
    }
    match json {
        true => print_json(&serde_json::json!({
            "file": file, "device_memory": limit, "fits": too_big.is_empty(),
            "variants": listed.iter().map(|(v, p)| serde_json::json!({"variant": v, "stages": p})).collect::<Vec<_>>(),
        }))?,
        false => print_plan(&listed, limit)?,
    }
    match too_big.first() {
        None => Ok(()),
        Some((key, message)) => Err(CliError::Usage(format!("{}: `{key}`: {message}", file.display()))),
    }
}

fn print_plan(listed: &[(String, Vec<memory::StagePlan>)], limit: Option<u64>) -> Result<(), CliError> {
    for (variant, plans) in listed {
        if listed.len() > 1 {
            out!("[{variant}]");
        }
        if plans.is_empty() {
            out!("  no model stage with a readable bundle manifest");
        }
        for p in plans {
            let fits = match limit {
                Some(limit) if p.total > limit => "  DOES NOT FIT",
                _ => "",
            };
            out!("  {:<9} {:<22} {:>10}{fits}  (host {})", p.stage.name(), p.work, human(p.total), human(p.host));
            out!(
                "            weights {}, KV cache {}, activations {}, workspace {}",
                human(p.weights),
                human(p.kv_cache),
                human(p.activations),
                human(p.workspace)
            );
            out!("            {} ({} tokens per call; bounded by `{}`)", p.settings, p.tokens_per_call, p.key);
        }
    }
    if let Some(limit) = limit {
        out!("device memory: {}", human(limit));
    }
    Ok(())
}

fn schema_command(what: &str) -> Result<(), CliError> {
    if what == "pipeline" {
        return print_json(&schemars::schema_for!(PipelineSpec));
    }
    let table = Table::from_name(what).ok_or_else(|| {
        let names: Vec<&str> = Table::ALL.iter().map(|t| t.name()).collect();
        CliError::Usage(format!("unknown schema `{what}`: use `pipeline` or one of {}", names.join(", ")))
    })?;
    let schema = table.schema();
    let columns: Vec<_> = schema
        .columns
        .iter()
        .map(|c| serde_json::json!({"name": c.name, "type": format!("{:?}", c.column_type).to_lowercase(), "nullable": c.nullable, "description": c.description}))
        .collect();
    print_json(
        &serde_json::json!({"table": schema.table, "version": schema.version, "description": schema.description, "columns": columns}),
    )
}

async fn load_plan(file: &Path) -> Result<Plan, CliError> {
    let loaded: LoadedSpec = validate::load(file)?;
    Ok(Plan::build(loaded).await?)
}

async fn run_command(file: &Path, options: RunOptions, json: bool) -> Result<(), CliError> {
    let retries_before = crate::store::retries::count();
    let plan = load_plan(file).await?;
    let ttl = std::time::Duration::from_secs(plan.loaded.spec.run.lock_ttl_s);
    // Shards run side by side, each under its own lock; a plain run takes the root's.
    let lock_file =
        options.shard.map_or_else(|| lock::LOCK_FILE.to_string(), |s| format!("_lock-shard-{}.json", s.name()));
    let stop = stop_signal()?;
    let lock = RunLock::acquire(&plan.storage, &plan.loaded.spec.run.name, ttl, &lock_file).await?;
    let mut runs = Vec::new();
    // A signal drops the run at its next await: a stage's parts are written
    // and its manifest put only at awaits, so nothing half-committed remains,
    // and resumable stages keep their committed chunks for the rerun.
    let outcome = tokio::select! {
        result = run_every_variant(&plan, options, &mut runs) => Ok(result),
        signal = stop => Err(signal),
    };
    lock.release().await?;
    if let Err(signal) = outcome {
        runs.retain(|(_, reports)| !reports.is_empty());
        eprintln!("{signal}: stopping; committed before the signal:");
        for (name, reports) in &runs {
            eprintln!("{name}:");
            for report in reports {
                eprintln!("  {}", report_line(report));
            }
        }
        return Err(CliError::Interrupted(signal));
    }
    outcome.expect("the signal case returned")?;
    let (_, reports) = runs.remove(0);
    if json {
        // Retries of the whole command: planning and locking talk to the store too.
        let retries = crate::store::retries::count() - retries_before;
        let root = plan.storage.display();
        let variants: serde_json::Map<String, serde_json::Value> =
            runs.into_iter().map(|(name, reports)| (name, serde_json::json!(reports))).collect();
        return print_json(&serde_json::json!({
            "run": plan.loaded.spec.run.name, "root": root, "retries": retries, "stages": reports, "variants": variants,
            "peak_rss_bytes": peak_rss_bytes(),
        }));
    }
    print_reports(&reports)?;
    for (name, reports) in &runs {
        out!("variant {name}:");
        print_reports(reports)?;
    }
    Ok(())
}

/// Runs the base pipeline, then each variant (stages they share are current
/// by then and skipped), each through all its rounds; stops at the first
/// failure. Each run's reports are pushed onto `runs` as its stages finish.
async fn run_every_variant(
    plan: &Plan,
    options: RunOptions,
    runs: &mut Vec<(String, Vec<StageReport>)>,
) -> Result<(), CliError> {
    for (name, first) in plan.variants_and_base() {
        run_one(first, name.to_string(), options, runs).await?;
        // A round can only be planned once the previous one committed its adapter.
        let mut previous = first.next_round().await?;
        while let Some(round) = previous {
            run_one(&round, round.round_name(name), options, runs).await?;
            previous = round.next_round().await?;
        }
    }
    Ok(())
}

async fn run_one(
    plan: &Plan,
    label: String,
    options: RunOptions,
    runs: &mut Vec<(String, Vec<StageReport>)>,
) -> Result<(), CliError> {
    tracing::info!(variant = %label, "running");
    runs.push((label, Vec::new()));
    let (_, reports) = runs.last_mut().expect("just pushed");
    Ok(runner::run_into(plan, options, reports).await?)
}

fn print_reports(reports: &[StageReport]) -> Result<(), CliError> {
    for report in reports {
        out!("{}", report_line(report));
    }
    Ok(())
}

fn report_line(report: &StageReport) -> String {
    format!(
        "{:<9} {:<7} {:>9} rows {:>8.2}s  {}  {}",
        report.stage.name(),
        report.status,
        report.rows,
        report.seconds,
        report.key,
        serde_json::Value::Object(report.stats.clone())
    )
}

/// Parses an age like `30s`, `15m`, `1h` or `7d`.
fn parse_age(text: &str) -> Result<chrono::Duration, String> {
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let number: i64 = number.parse().map_err(|_| format!("`{text}`: expected a number and s, m, h or d"))?;
    match unit {
        "s" => Ok(chrono::Duration::seconds(number)),
        "m" => Ok(chrono::Duration::minutes(number)),
        "h" => Ok(chrono::Duration::hours(number)),
        "d" => Ok(chrono::Duration::days(number)),
        _ => Err(format!("`{text}`: the unit must be s, m, h or d")),
    }
}

async fn gc_command(file: &Path, apply: bool, options: GcOptions, json: bool) -> Result<(), CliError> {
    let plan = load_plan(file).await?;
    let ttl = std::time::Duration::from_secs(plan.loaded.spec.run.lock_ttl_s);
    let lock = RunLock::acquire(&plan.storage, &plan.loaded.spec.run.name, ttl, lock::LOCK_FILE).await?;
    let found = gc::find(&plan, options).await;
    let deleted = match (&found, apply) {
        (Ok(garbage), true) => gc::delete(&plan, garbage).await.map(|()| true),
        _ => Ok(false),
    };
    lock.release().await?;
    let (found, deleted) = (found?, deleted?);
    let bytes: u64 = found.iter().map(|(_, g)| g.bytes).sum();
    let items: Vec<&gc::Garbage> = found.iter().map(|(_, g)| g).collect();
    if json {
        return print_json(
            &serde_json::json!({ "root": plan.storage.display(), "deleted": deleted, "objects": items, "bytes": bytes }),
        );
    }
    for item in &items {
        out!("{:>10}  {}  ({})", item.bytes, item.url, item.reason);
    }
    let verb = if deleted { "deleted" } else { "would delete (dry run; --apply deletes)" };
    out!("{verb}: {} object(s), {bytes} bytes", items.len());
    Ok(())
}

async fn unlock_command(file: &Path) -> Result<(), CliError> {
    let plan = load_plan(file).await?;
    match lock::read(&plan.storage).await? {
        None => println!("{}: not locked", plan.storage.display()),
        Some((holder, _)) => {
            plan.storage.delete(&plan.storage.path(lock::LOCK_FILE)).await?;
            out!(
                "{}: removed the lock of run `{}` ({}, pid {}, last heartbeat {})",
                plan.storage.display(),
                holder.run,
                holder.owner,
                holder.pid,
                holder.heartbeat_at.to_rfc3339()
            );
        }
    }
    Ok(())
}

async fn status_command(file: &Path, json: bool) -> Result<(), CliError> {
    let plan = load_plan(file).await?;
    let mut variants = Vec::new();
    for (name, variant) in plan.all() {
        variants.push((name, stage_rows(variant).await?));
    }
    if json {
        let (_, rows) = &variants[0];
        let others: serde_json::Map<String, serde_json::Value> =
            variants[1..].iter().map(|(name, rows)| (name.clone(), serde_json::json!(rows))).collect();
        return print_json(&serde_json::json!({
            "run": plan.loaded.spec.run.name, "root": plan.storage.display(), "stages": rows, "variants": others
        }));
    }
    out!("root: {}", plan.storage.display());
    for (name, rows) in &variants {
        if name != BASE_VARIANT {
            out!("variant {name}:");
        }
        for row in rows {
            let count = row["rows"].as_u64().map_or("-".to_string(), |r| r.to_string());
            let text = |field: &str| row[field].as_str().unwrap_or_default().to_string();
            out!("{:<9} {:<8} {:>9} rows  {}", text("stage"), text("state"), count, text("key"));
        }
    }
    Ok(())
}

/// Each stage of `plan`: state, key, rows, stats and artifacts of its current version.
async fn stage_rows(plan: &Plan) -> Result<Vec<serde_json::Value>, CliError> {
    let mut rows = Vec::new();
    for stage in &plan.stages {
        let (state, current) = plan.state(stage).await?;
        rows.push(serde_json::json!({
            "stage": stage.stage,
            "table": stage.stage.writes().name(),
            "state": state,
            "key": stage.key,
            "rows": current.as_ref().map(|m| m.rows),
            "committed_at": current.as_ref().map(|m| m.committed_at.clone()),
            "stats": current.as_ref().map(|m| m.stats.clone()),
            "artifacts": current.as_ref().map(|m| m.artifacts.clone()),
        }));
    }
    Ok(rows)
}

async fn sql_command(
    file: &Path,
    sql: &str,
    format: OutputFormat,
    output: Option<&Path>,
    allow_writes: bool,
) -> Result<(), CliError> {
    if format == OutputFormat::Parquet && output.is_none() {
        return Err(CliError::Usage("--format parquet needs --output PATH".into()));
    }
    let plan = load_plan(file).await?;
    // Files named by path or URL in a query are readable too, to join a
    // pipeline table with anything else on hand.
    let ctx = pipeline_session(&plan).await?.enable_url_table();
    let mut batches = Vec::new();
    for frame in run_statements(&ctx, sql, allow_writes).await? {
        batches = frame.collect().await.map_err(|source| StoreError::Query { context: "SQL".into(), source })?;
    }
    write_batches(&batches, format, output)
}

fn write_batches(batches: &[RecordBatch], format: OutputFormat, output: Option<&Path>) -> Result<(), CliError> {
    let path = output.map_or_else(|| PathBuf::from("<stdout>"), Path::to_path_buf);
    let error = |source: Box<dyn std::error::Error + Send + Sync>| CliError::Output { path: path.clone(), source };
    let mut sink: Box<dyn Write + Send> = match output {
        Some(path) => Box::new(std::fs::File::create(path).map_err(|e| error(e.into()))?),
        None => Box::new(std::io::stdout()),
    };
    match format {
        OutputFormat::Table => {
            let text = arrow::util::pretty::pretty_format_batches(batches).map_err(|e| error(e.into()))?;
            writeln!(sink, "{text}").map_err(|e| error(e.into()))?;
        }
        OutputFormat::Csv => {
            let mut writer = arrow::csv::WriterBuilder::new().with_header(true).build(sink);
            batches.iter().try_for_each(|b| writer.write(b)).map_err(|e| error(e.into()))?;
        }
        OutputFormat::Json => {
            let mut writer = arrow::json::LineDelimitedWriter::new(sink);
            batches.iter().try_for_each(|b| writer.write(b)).map_err(|e| error(e.into()))?;
            writer.finish().map_err(|e| error(e.into()))?;
        }
        OutputFormat::Parquet => {
            let schema = batches.first().map_or_else(|| Arc::new(arrow::datatypes::Schema::empty()), |b| b.schema());
            let mut writer = parquet::arrow::ArrowWriter::try_new(sink, schema, None).map_err(|e| error(e.into()))?;
            batches.iter().try_for_each(|b| writer.write(b)).map_err(|e| error(e.into()))?;
            writer.close().map_err(|e| error(e.into()))?;
        }
    }
    Ok(())
}

fn print_json(value: &impl serde::Serialize) -> Result<(), CliError> {
    out!("{}", serde_json::to_string_pretty(value).expect("JSON values serialize"));
    Ok(())
}
