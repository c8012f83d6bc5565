//! What a report shows, gathered from the pipeline's current tables with SQL
//! and from the plan (lineage). Sections whose table is not current are
//! empty; the metrics table (`eval_results`) is required.

use std::collections::BTreeMap;

use datafusion::prelude::SessionContext;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::pipeline::Plan;
use crate::vocab::eval::EvalModel;
use crate::vocab::stats::Verdict;

/// Errors while building a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Reading a table failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A table the report needs has no current version.
    #[error("{0}")]
    NotComputed(String),
    /// A query's rows could not be turned into JSON.
    #[error("report data: {sql}: {source}")]
    Rows { sql: String, source: arrow::error::ArrowError },
    /// A query's rows are not the report's row type.
    #[error("report data: {sql}: {source}")]
    Json { sql: String, source: serde_json::Error },
}

/// One row of `eval_results`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct MetricRow {
    /// `base` or `tuned`.
    pub variant: String,
    /// Task name.
    pub task: String,
    /// Language or `all`.
    pub language: String,
    /// The prompt category of an open-ended metric; `None`: every prompt.
    pub category: Option<String>,
    /// Metric name.
    pub metric: String,
    /// Value.
    pub value: f64,
    /// Items behind it.
    pub n: i64,
    /// Interval bounds.
    pub ci_low: Option<f64>,
    /// Interval bounds.
    pub ci_high: Option<f64>,
}

/// Rewards of one judged prompt.
#[derive(Debug, Clone, Deserialize)]
pub struct RewardRow {
    /// The prompt's language.
    pub language: String,
    /// The base response's reward.
    pub base_reward: f64,
    /// The tuned response's reward.
    pub tuned_reward: f64,
}

/// One optimizer step of `train_log`.
#[derive(Debug, Clone, Deserialize)]
pub struct StepRow {
    /// Step number.
    pub step: f64,
    /// DPO loss.
    pub loss: f64,
    /// Share of pairs whose chosen implicit reward is higher.
    pub reward_accuracy: f64,
    /// Mean chosen minus rejected implicit reward.
    pub reward_margin: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
}

/// Pair statistics of one language.
#[derive(Debug, Clone, Deserialize)]
pub struct PairStats {
    /// Language.
    pub language: String,
    /// Pairs.
    pub pairs: i64,
    /// Mean pool size.
    pub pool_size: f64,
    /// Mean reward margin, chosen minus rejected.
    pub margin: f64,
    /// Mean chosen reward.
    pub chosen_reward: f64,
    /// Mean rejected reward.
    pub rejected_reward: f64,
}

/// One row of `sql/ablation_summary.sql`.
#[derive(Debug, Clone, Deserialize)]
pub struct AblationRow {
    /// Variant name (`base` for the pipeline without overrides).
    pub variant: String,
    /// Language or `all`.
    pub language: String,
    /// Tuned minus base structured accuracy, mean over choice tasks.
    pub accuracy_delta: Option<f64>,
    /// Open-ended win rate.
    pub win_rate: Option<f64>,
    /// Length-controlled win rate.
    pub lc_win_rate: Option<f64>,
    /// Pairs tuned on.
    pub pairs: Option<i64>,
    /// Their mean reward margin.
    pub mean_margin: Option<f64>,
}

/// The ablation table's query.
pub const ABLATION_SUMMARY_SQL: &str = include_str!("../../sql/ablation_summary.sql");

/// One stage's lineage.
#[derive(Debug, Clone, Serialize)]
pub struct Lineage {
    /// Stage name.
    pub stage: String,
    /// Table it writes.
    pub table: String,
    /// `current`, `stale` or `missing`.
    pub state: String,
    /// Content key.
    pub key: String,
    /// Rows of the current version.
    pub rows: Option<u64>,
    /// Keys of the versions it read.
    pub inputs: BTreeMap<String, String>,
    /// Checksums of the bundles it ran.
    pub models: BTreeMap<String, String>,
    /// Resolved parameters.
    pub params: serde_json::Value,
}

/// Everything a report shows.
#[derive(Debug, Clone)]
pub struct ReportData {
    /// The pipeline's run name.
    pub run: String,
    /// Its storage root.
    pub root: String,
    /// Every metric.
    pub metrics: Vec<MetricRow>,
    /// Judged rewards (empty without a reward model).
    pub rewards: Vec<RewardRow>,
    /// The training log (empty without a tune stage).
    pub steps: Vec<StepRow>,
    /// Pair statistics per language (empty without a pairs stage).
    pub pairs: Vec<PairStats>,
    /// Every stage's lineage.
    pub lineage: Vec<Lineage>,
    /// The ablation table, when the pipeline has variants.
    pub ablations: Vec<AblationRow>,
}

/// Gathers the report of `plan` from `ctx`, a session where every current
/// table is registered under its name.
pub async fn gather(plan: &Plan, ctx: &SessionContext) -> Result<ReportData, ReportError> {
    if !ctx.table_exist("eval_results").unwrap_or(false) {
        return Err(ReportError::NotComputed(
            "eval_results has no current version: add [stages.evaluate] and [stages.report] and run the pipeline"
                .into(),
        ));
    }
    let metrics = rows(
        ctx,
        "SELECT variant, task, language, category, metric, value, n, ci_low, ci_high FROM eval_results \
                           ORDER BY task, language, category NULLS FIRST, metric, variant",
    )
    .await?;
    let rewards = optional(
        ctx,
        "eval_items",
        "SELECT language, base_reward, tuned_reward FROM eval_items \
                           WHERE kind = 'judge' AND base_reward IS NOT NULL ORDER BY language, item_id",
    )
    .await?;
    let steps = optional(
        ctx,
        "train_log",
        "SELECT CAST(step AS DOUBLE) AS step, loss, reward_accuracy, reward_margin, \
                           grad_norm FROM train_log ORDER BY step",
    )
    .await?;
    let pairs = optional(
        ctx,
        "pairs",
        "SELECT language, COUNT(*) AS pairs, AVG(CAST(pool_size AS DOUBLE)) AS pool_size, \
                           AVG(margin) AS margin, AVG(chosen_reward) AS chosen_reward, \
                           AVG(rejected_reward) AS rejected_reward FROM pairs GROUP BY language ORDER BY language",
    )
    .await?;
    let compared = ["eval_results_by_variant", "pairs_by_variant"].iter().all(|t| ctx.table_exist(*t).unwrap_or(false));
    let ablations = match plan.variants.is_empty() || !compared {
        true => vec![],
        false => rows(ctx, ABLATION_SUMMARY_SQL).await?,
    };
    Ok(ReportData {
        ablations,
        run: plan.loaded.spec.run.name.clone(),
        root: plan.storage.display().to_string(),
        metrics,
        rewards,
        steps,
        pairs,
        lineage: lineage(plan).await?,
    })
}

async fn lineage(plan: &Plan) -> Result<Vec<Lineage>, ReportError> {
    let mut stages = Vec::new();
    for stage in &plan.stages {
        let (state, current) = plan.state(stage).await?;
        let state = serde_json::to_value(state).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        stages.push(Lineage {
            stage: stage.stage.name().into(),
            table: stage.stage.writes().name().into(),
            state,
            key: stage.key.clone(),
            rows: current.map(|m| m.rows),
            inputs: stage.input_keys_by_name(),
            models: stage.models.clone(),
            params: stage.params.clone(),
        });
    }
    Ok(stages)
}

async fn optional<T: DeserializeOwned>(ctx: &SessionContext, table: &str, sql: &str) -> Result<Vec<T>, ReportError> {
    match ctx.table_exist(table).unwrap_or(false) {
        true => rows(ctx, sql).await,
        false => Ok(vec![]),
    }
}

/// The rows of `sql`, each deserialized from its JSON form.
async fn rows<T: DeserializeOwned>(ctx: &SessionContext, sql: &str) -> Result<Vec<T>, ReportError> {
    let frame = crate::store::session::query(ctx, sql, "report").await?;
    let batches = frame
        .collect()
        .await
        .map_err(|source| crate::store::StoreError::Query { context: format!("report query `{sql}`"), source })?;
    let mut writer = arrow::json::ArrayWriter::new(Vec::new());
    for batch in &batches {
        writer.write(batch).map_err(|source| ReportError::Rows { sql: sql.into(), source })?;
    }
    writer.finish().map_err(|source| ReportError::Rows { sql: sql.into(), source })?;
    let json = writer.into_inner();
    if json.is_empty() {
        return Ok(vec![]);
    }
    serde_json::from_slice(&json).map_err(|source| ReportError::Json { sql: sql.into(), source })
}

impl ReportData {
    /// The metric `(variant, task, language, metric)` over every prompt, if computed.
    pub fn metric(&self, model: EvalModel, task: &str, language: &str, metric: &str) -> Option<&MetricRow> {
        self.category_metric(model, task, language, None, metric)
    }

    /// The metric `(variant, task, language, category, metric)`, if computed.
    pub fn category_metric(
        &self,
        model: EvalModel,
        task: &str,
        language: &str,
        category: Option<&str>,
        metric: &str,
    ) -> Option<&MetricRow> {
        let variant = model.name();
        self.metrics.iter().find(|m| {
            m.variant == variant
                && m.task == task
                && m.language == language
                && m.category.as_deref() == category
                && m.metric == metric
        })
    }

    /// The open-ended prompt categories, sorted (empty when prompts have none).
    pub fn categories(&self) -> Vec<String> {
        let mut categories: Vec<String> = self.metrics.iter().filter_map(|m| m.category.clone()).collect();
        categories.sort();
        categories.dedup();
        categories
    }

    /// The choice tasks, in order.
    pub fn choice_tasks(&self) -> Vec<String> {
        let mut tasks: Vec<String> =
            self.metrics.iter().filter(|m| m.metric == "accuracy").map(|m| m.task.clone()).collect();
        tasks.dedup();
        tasks
    }

    /// The languages with metrics, `all` last.
    pub fn languages(&self) -> Vec<String> {
        let mut languages: Vec<String> = self
            .metrics
            .iter()
            .map(|m| m.language.clone())
            .filter(|l| l != crate::vocab::eval::ALL_LANGUAGES)
            .collect();
        languages.sort();
        languages.dedup();
        languages.push(crate::vocab::eval::ALL_LANGUAGES.into());
        languages
    }

    /// Mean over the choice tasks of `variant`'s accuracy in `language`.
    pub fn mean_accuracy(&self, model: EvalModel, language: &str) -> Option<f64> {
        let values: Vec<f64> = self
            .choice_tasks()
            .iter()
            .filter_map(|task| self.metric(model, task, language, "accuracy").map(|m| m.value))
            .collect();
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    }

    /// The recipe's headline per language.
    pub fn headline(&self) -> Vec<Headline> {
        let open = crate::vocab::eval::OPEN_ENDED;
        self.languages()
            .into_iter()
            .map(|language| {
                let value = |model: EvalModel, metric: &str| self.metric(model, open, &language, metric).cloned();
                let structured = crate::vocab::eval::STRUCTURED;
                Headline {
                    accuracy_delta: self.metric(EvalModel::Tuned, structured, &language, "accuracy_delta").cloned(),
                    base_accuracy: self.mean_accuracy(EvalModel::Base, &language),
                    tuned_accuracy: self.mean_accuracy(EvalModel::Tuned, &language),
                    win_rate: value(EvalModel::Tuned, "win_rate"),
                    lc_win_rate: value(EvalModel::Tuned, "lc_win_rate"),
                    base_fidelity: value(EvalModel::Base, "language_fidelity").map(|m| m.value),
                    tuned_fidelity: value(EvalModel::Tuned, "language_fidelity").map(|m| m.value),
                    language,
                }
            })
            .collect()
    }
}

/// One line of the headline table.
#[derive(Debug, Clone)]
pub struct Headline {
    /// Language or `all`.
    pub language: String,
    /// Base accuracy, mean over choice tasks.
    pub base_accuracy: Option<f64>,
    /// Tuned accuracy, mean over choice tasks.
    pub tuned_accuracy: Option<f64>,
    /// Tuned minus base accuracy on the same items, mean over choice tasks,
    /// with its paired interval.
    pub accuracy_delta: Option<MetricRow>,
    /// Open-ended win rate of the tuned policy.
    pub win_rate: Option<MetricRow>,
    /// Its length-controlled version.
    pub lc_win_rate: Option<MetricRow>,
    /// Share of base responses in the prompt's language.
    pub base_fidelity: Option<f64>,
    /// Share of tuned responses in the prompt's language.
    pub tuned_fidelity: Option<f64>,
}

impl Headline {
    /// Whether structured accuracy held: `Yes` when the paired 95 % interval
    /// of Δ accuracy lies at or above 0, `No` when wholly below, if measured.
    pub fn structured_held(&self) -> Option<Verdict> {
        Some(Verdict::of_interval(interval(self.accuracy_delta.as_ref()?)?, 0.0, false))
    }

    /// Whether the tuned policy wins: `Yes` when the win rate's 95 % interval
    /// lies above ½, `No` when wholly at or below it, if measured.
    pub fn open_ended_won(&self) -> Option<Verdict> {
        Some(Verdict::of_interval(interval(self.win_rate.as_ref()?)?, 0.5, true))
    }
}

/// A metric's interval; a metric measured without one (no resamples) is
/// its own point.
fn interval(metric: &MetricRow) -> Option<(f64, f64)> {
    match metric.ci_low.zip(metric.ci_high) {
        Some(ci) if !ci.0.is_nan() && !ci.1.is_nan() => Some(ci),
        _ if metric.value.is_nan() => None,
        _ => Some((metric.value, metric.value)),
    }
}
