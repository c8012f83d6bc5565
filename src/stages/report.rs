//! The report stage: `eval_items` → `eval_results`, one row per
//! (variant, task, language, metric), each language and `all` pooled, with
//! percentile-bootstrap 95 % intervals. Rendering the report for a person is
//! `croco report` ([`crate::report`]); it reads this table.
//!
//! Metrics:
//! - choice tasks, per variant: `accuracy`, `accuracy_norm` (per-byte).
//! - open-ended, on the tuned row: `win_rate` (ties ½), `lc_win_rate`,
//!   `wins`, `ties`, `losses` (counts, no interval).
//! - open-ended, per variant: `language_fidelity` (share of responses
//!   detected in the prompt's language, over languages the detector knows),
//!   `mean_reward` (when rewards were computed), `mean_tokens`.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};

use super::stage::{Stage, StageError, StageInput, stats};
use crate::model::policy::split_policy_id;
use crate::spec::report::ReportParams;
use crate::spec::{PipelineSpec, StageName};
use crate::store::manifest::Stats;
use crate::store::rows::text_at;
use crate::store::tables::TableWriter;
use crate::store::{StoreError, Table};
use crate::vocab::eval::{ALL_LANGUAGES, EvalModel, STRUCTURED};
use crate::vocab::stats::{
    Judged, Outcome, bootstrap_95, lc_win_rate, mean_of_means, stratified_bootstrap_95, win_rate,
};

/// One metric value.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    /// `bundle:…` or `bundle:…+adapter:…` of the measured model.
    pub policy_id: String,
    /// `base` or `tuned`.
    pub variant: String,
    /// Task name.
    pub task: String,
    /// ISO 639-1 code or `all`.
    pub language: String,
    /// The prompt category the metric is restricted to; `None`: every prompt.
    pub category: Option<String>,
    /// Metric name.
    pub metric: &'static str,
    /// Its value.
    pub value: f64,
    /// Items behind it.
    pub n: usize,
    /// 95 % interval, when the metric has one.
    pub ci: Option<(f64, f64)>,
}

/// The report stage.
pub struct Report;

impl Stage for Report {
    type Params = ReportParams;
    const NAME: StageName = StageName::Report;

    fn params(spec: &PipelineSpec) -> Option<ReportParams> {
        spec.stages.report.clone()
    }

    async fn run(input: &StageInput<'_>, params: &ReportParams, sink: &mut TableWriter) -> Result<Stats, StageError> {
        let resample = Resample { count: params.bootstrap as usize, seed: params.seed };
        let choice = read_choice(input).await?;
        let mut metrics = choice_metrics(&choice, &resample);
        metrics.extend(delta_metrics(&choice, &resample));
        metrics.extend(judge_metrics(&read_judged(input).await?, &resample, params.lc_lambda));
        sink.write(&rows(&metrics)?).await?;
        Ok(stats([("metrics", metrics.len() as u64)]))
    }
}

/// How intervals are drawn.
pub struct Resample {
    /// Resamples per interval.
    pub count: usize,
    /// Seed of every interval (each interval starts from it).
    pub seed: u64,
}

impl Resample {
    fn interval<T: Copy>(&self, items: &[T], statistic: impl Fn(&[T]) -> f64) -> Option<(f64, f64)> {
        Some(bootstrap_95(items, statistic, self.count, self.seed))
    }
}

/// The group of a choice row: (policy_id, variant, task, language).
type ChoiceGroup = (String, String, String, String);

/// A choice row: its group, (correct, correct_norm), and the item's id.
type ChoiceRow = (ChoiceGroup, (bool, bool), String);

/// One judged prompt.
#[derive(Debug, Clone)]
pub struct JudgedRow {
    /// The tuned model.
    pub policy_id: String,
    /// The prompt's language.
    pub language: String,
    /// The prompt's category, if it has one.
    pub category: Option<String>,
    /// The verdict and the length difference; `None` when the judge's
    /// answer was unparseable.
    pub judged: Option<Judged>,
    /// Base and tuned token counts.
    pub tokens: (f64, f64),
    /// Base and tuned rewards, when computed.
    pub rewards: Option<(f64, f64)>,
    /// Whether each response is in the prompt's language; `None` when the
    /// detector does not know the language.
    pub in_language: Option<(bool, bool)>,
}

async fn read_choice(input: &StageInput<'_>) -> Result<Vec<ChoiceRow>, StageError> {
    let sql = "SELECT policy_id, variant, task, language, item_id, correct, correct_norm FROM eval_items \
               WHERE kind = 'choice' ORDER BY task, language, item_id, variant";
    let mut rows = Vec::new();
    for batch in collect(input, sql).await? {
        let (correct, norm) = (booleans(&batch, "correct"), booleans(&batch, "correct_norm"));
        rows.extend((0..batch.num_rows()).map(|i| {
            let text = |name| text_at(&batch, name, i);
            let group = (text("policy_id"), text("variant"), text("task"), text("language"));
            (group, (correct.value(i), norm.value(i)), text("item_id"))
        }));
    }
    Ok(rows)
}

async fn read_judged(input: &StageInput<'_>) -> Result<Vec<JudgedRow>, StageError> {
    let sql = "SELECT policy_id, language, category, outcome, CAST(base_tokens AS DOUBLE) AS base_tokens, \
               CAST(tuned_tokens AS DOUBLE) AS tuned_tokens, CAST(base_length AS DOUBLE) AS base_length, \
               CAST(tuned_length AS DOUBLE) AS tuned_length, base_reward, tuned_reward, base_detected, tuned_detected \
               FROM eval_items WHERE kind = 'judge' ORDER BY language, item_id";
    let mut rows = Vec::new();
    for batch in collect(input, sql).await? {
        let float =
            |name: &str| batch.column_by_name(name).and_then(|c| c.as_any().downcast_ref::<Float64Array>().cloned());
        let (base_tokens, tuned_tokens) = (float("base_tokens").expect("cast"), float("tuned_tokens").expect("cast"));
        let (base_length, tuned_length) = (float("base_length").expect("cast"), float("tuned_length").expect("cast"));
        let (category, outcome) = (strings(&batch, "category"), strings(&batch, "outcome"));
        let (base_reward, tuned_reward) =
            (float("base_reward").expect("schema"), float("tuned_reward").expect("schema"));
        for i in 0..batch.num_rows() {
            let text = |name| text_at(&batch, name, i);
            let language = text("language");
            let outcome = outcome.is_valid(i).then(|| parse_outcome(outcome.value(i))).transpose()?;
            let tokens = (base_tokens.value(i), tuned_tokens.value(i));
            let rewards = (base_reward.is_valid(i) && tuned_reward.is_valid(i))
                .then(|| (base_reward.value(i), tuned_reward.value(i)));
            let in_language = crate::langs::detector_language(&language)
                .map(|_| (text("base_detected") == language, text("tuned_detected") == language));
            let length_delta = tuned_length.value(i) - base_length.value(i);
            let judged = outcome.map(|outcome| Judged { outcome, length_delta });
            let category = category.is_valid(i).then(|| category.value(i).to_string());
            let policy_id = text("policy_id");
            rows.push(JudgedRow { policy_id, language, category, judged, tokens, rewards, in_language });
        }
    }
    Ok(rows)
}

fn parse_outcome(name: &str) -> Result<Outcome, StageError> {
    Outcome::from_name(name).ok_or_else(|| StageError::Row {
        file: "eval_items".into(),
        row: format!("outcome={name}"),
        problem: "outcome must be win, tie or loss".into(),
    })
}

async fn collect(input: &StageInput<'_>, sql: &str) -> Result<Vec<RecordBatch>, StageError> {
    let frame = crate::store::session::query(input.ctx, sql, "eval_items").await?;
    let batches = frame.collect().await.map_err(StoreError::query("eval_items"))?;
    Ok(batches.iter().map(crate::store::schema::plain_strings).collect())
}

fn strings(batch: &RecordBatch, name: &str) -> StringArray {
    let column = batch.column_by_name(name).and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned());
    column.expect("eval_items schema")
}

fn booleans(batch: &RecordBatch, name: &str) -> BooleanArray {
    let column = batch.column_by_name(name).and_then(|c| c.as_any().downcast_ref::<BooleanArray>().cloned());
    column.expect("eval_items schema")
}

/// Accuracy and per-byte accuracy per (model, task, language) and pooled.
pub fn choice_metrics(rows: &[ChoiceRow], resample: &Resample) -> Vec<Metric> {
    let mut groups: BTreeMap<ChoiceGroup, Vec<(bool, bool)>> = BTreeMap::new();
    for ((policy_id, variant, task, language), outcome, _) in rows {
        for language in [language.as_str(), ALL_LANGUAGES] {
            let key = (policy_id.clone(), variant.clone(), task.clone(), language.to_string());
            groups.entry(key).or_default().push(*outcome);
        }
    }
    let mut metrics = Vec::new();
    for ((policy_id, variant, task, language), outcomes) in groups {
        let metric = |metric, pick: fn(&(bool, bool)) -> bool| {
            let hits: Vec<f64> = outcomes.iter().map(|o| f64::from(u8::from(pick(o)))).collect();
            Metric {
                policy_id: policy_id.clone(),
                variant: variant.clone(),
                task: task.clone(),
                language: language.clone(),
                category: None,
                metric,
                value: mean(&hits),
                n: hits.len(),
                ci: resample.interval(&hits, mean),
            }
        };
        metrics.push(metric("accuracy", |o| o.0));
        metrics.push(metric("accuracy_norm", |o| o.1));
    }
    metrics
}

/// Tuned minus base accuracy on the same items, per (task, language), and
/// the structured Δ per language (task [`STRUCTURED`]: the mean over the
/// choice tasks of their Δ), each pooled over languages too, with paired
/// bootstrap intervals: an item's Δ is `correct(tuned) - correct(base)`, and
/// the structured interval resamples each task's items on their own. Items
/// scored by one model only (an interrupted evaluation) are left out.
pub fn delta_metrics(rows: &[ChoiceRow], resample: &Resample) -> Vec<Metric> {
    // (task, language, item) → (base, tuned) correctness, and the tuned model.
    let mut paired: BTreeMap<(&str, &str, &str), [Option<bool>; 2]> = BTreeMap::new();
    let mut tuned_id = None;
    for ((policy_id, variant, task, language), (correct, _), item) in rows {
        let side = usize::from(variant == EvalModel::Tuned.name());
        if side == 1 {
            tuned_id = Some(policy_id.clone());
        }
        paired.entry((task.as_str(), language.as_str(), item.as_str())).or_default()[side] = Some(*correct);
    }
    let Some(tuned_id) = tuned_id else { return vec![] };
    // language → task → item deltas.
    let mut deltas: BTreeMap<&str, BTreeMap<&str, Vec<f64>>> = BTreeMap::new();
    for ((task, language, _), sides) in &paired {
        let [Some(base), Some(tuned)] = sides else { continue };
        let delta = f64::from(u8::from(*tuned)) - f64::from(u8::from(*base));
        for language in [*language, ALL_LANGUAGES] {
            deltas.entry(language).or_default().entry(*task).or_default().push(delta);
        }
    }
    let metric = |task: &str, language: &str, value, n, ci| Metric {
        policy_id: tuned_id.clone(),
        variant: EvalModel::Tuned.name().into(),
        task: task.into(),
        language: language.into(),
        category: None,
        metric: "accuracy_delta",
        value,
        n,
        ci,
    };
    let mut metrics = Vec::new();
    for (language, tasks) in &deltas {
        for (task, values) in tasks {
            metrics.push(metric(task, language, mean(values), values.len(), resample.interval(values, mean)));
        }
        let strata: Vec<Vec<f64>> = tasks.values().cloned().collect();
        let n = strata.iter().map(Vec::len).sum();
        let ci = stratified_bootstrap_95(&strata, resample.count, resample.seed);
        metrics.push(metric(STRUCTURED, language, mean_of_means(&strata), n, Some(ci)));
    }
    metrics
}

/// The open-ended metrics per language and pooled, and again per prompt
/// category (for prompts that have one).
pub fn judge_metrics(rows: &[JudgedRow], resample: &Resample, lambda: f64) -> Vec<Metric> {
    let mut groups: BTreeMap<(String, Option<String>), Vec<&JudgedRow>> = BTreeMap::new();
    for row in rows {
        for language in [row.language.as_str(), ALL_LANGUAGES] {
            groups.entry((language.into(), None)).or_default().push(row);
            if let Some(category) = &row.category {
                groups.entry((language.into(), Some(category.clone()))).or_default().push(row);
            }
        }
    }
    groups
        .into_iter()
        .flat_map(|((language, category), rows)| {
            let mut metrics = language_metrics(&language, &rows, resample, lambda);
            metrics.iter_mut().for_each(|m| m.category = category.clone());
            metrics
        })
        .collect()
}

fn language_metrics(language: &str, rows: &[&JudgedRow], resample: &Resample, lambda: f64) -> Vec<Metric> {
    let tuned_id = rows[0].policy_id.clone();
    let base_id = split_policy_id(&tuned_id).0.to_string();
    let metric = |model: EvalModel, metric, value, n, ci| Metric {
        policy_id: match model {
            EvalModel::Base => base_id.clone(),
            EvalModel::Tuned => tuned_id.clone(),
        },
        variant: model.name().into(),
        task: crate::vocab::eval::OPEN_ENDED.into(),
        language: language.into(),
        category: None,
        metric,
        value,
        n,
        ci,
    };
    // Win rates are over readable verdicts; the unparseable are counted apart.
    let judged: Vec<Judged> = rows.iter().filter_map(|r| r.judged).collect();
    let count = |o: Outcome| judged.iter().filter(|j| j.outcome == o).count() as f64;
    let (n, unparseable) = (judged.len(), (rows.len() - judged.len()) as f64);
    let mut metrics = Vec::new();
    // No readable verdict, no win rate (rather than a NaN): the counts say why.
    if n > 0 {
        metrics.extend([
            metric(EvalModel::Tuned, "win_rate", win_rate(&judged), n, resample.interval(&judged, win_rate)),
            metric(
                EvalModel::Tuned,
                "lc_win_rate",
                lc_win_rate(&judged, lambda),
                n,
                resample.interval(&judged, |j| lc_win_rate(j, lambda)),
            ),
        ]);
    }
    metrics.extend([
        metric(EvalModel::Tuned, "wins", count(Outcome::Win), n, None),
        metric(EvalModel::Tuned, "ties", count(Outcome::Tie), n, None),
        metric(EvalModel::Tuned, "losses", count(Outcome::Loss), n, None),
        metric(EvalModel::Tuned, "unparseable", unparseable, rows.len(), None),
    ]);
    let n = rows.len();
    for (variant, pick) in [(EvalModel::Base, 0), (EvalModel::Tuned, 1)] {
        let side = |pair: (f64, f64)| if pick == 0 { pair.0 } else { pair.1 };
        let tokens: Vec<f64> = rows.iter().map(|r| side(r.tokens)).collect();
        metrics.push(metric(variant, "mean_tokens", mean(&tokens), n, resample.interval(&tokens, mean)));
        let rewards: Vec<f64> = rows.iter().filter_map(|r| r.rewards).map(side).collect();
        if !rewards.is_empty() {
            metrics.push(metric(
                variant,
                "mean_reward",
                mean(&rewards),
                rewards.len(),
                resample.interval(&rewards, mean),
            ));
        }
        let in_language: Vec<f64> = rows
            .iter()
            .filter_map(|r| r.in_language)
            .map(|(base, tuned)| f64::from(u8::from(if pick == 0 { base } else { tuned })))
            .collect();
        if !in_language.is_empty() {
            let ci = resample.interval(&in_language, mean);
            metrics.push(metric(variant, "language_fidelity", mean(&in_language), in_language.len(), ci));
        }
    }
    metrics
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

/// The `eval_results` rows of `metrics`.
fn rows(metrics: &[Metric]) -> Result<RecordBatch, StageError> {
    let n = metrics.len();
    let strings =
        |f: &dyn Fn(&Metric) -> String| -> ArrayRef { Arc::new(StringArray::from_iter_values(metrics.iter().map(f))) };
    let floats =
        |f: &dyn Fn(&Metric) -> Option<f64>| -> ArrayRef { Arc::new(Float64Array::from_iter(metrics.iter().map(f))) };
    let adapter = metrics.iter().map(|m| split_policy_id(&m.policy_id).1);
    let given = vec![
        ("model", strings(&|m| split_policy_id(&m.policy_id).0.to_string())),
        ("adapter", Arc::new(StringArray::from_iter(adapter)) as ArrayRef),
        ("variant", strings(&|m| m.variant.clone())),
        ("task", strings(&|m| m.task.clone())),
        ("language", strings(&|m| m.language.clone())),
        ("category", Arc::new(StringArray::from_iter(metrics.iter().map(|m| m.category.clone()))) as ArrayRef),
        ("metric", strings(&|m| m.metric.to_string())),
        ("value", floats(&|m| Some(m.value))),
        ("n", Arc::new(Int64Array::from_iter_values(metrics.iter().map(|m| m.n as i64))) as ArrayRef),
        ("ci_low", floats(&|m| m.ci.map(|c| c.0))),
        ("ci_high", floats(&|m| m.ci.map(|c| c.1))),
    ];
    Ok(Table::EvalResults.schema().assemble(given, n)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resample() -> Resample {
        Resample { count: 200, seed: 0 }
    }

    fn choice(variant: &str, language: &str, correct: bool) -> ChoiceRow {
        item(variant, "t", language, "i", correct)
    }

    fn item(variant: &str, task: &str, language: &str, id: &str, correct: bool) -> ChoiceRow {
        let policy = if variant == "tuned" { "bundle:b+adapter:a" } else { "bundle:b" };
        ((policy.into(), variant.into(), task.into(), language.into()), (correct, !correct), id.into())
    }

    #[test]
    fn accuracy_deltas_pair_items_and_weigh_tasks_alike() {
        // t1 (fr): items 1, 2 go wrong → right and right → right: Δ ½.
        // t2 (fr): item 1 right → wrong: Δ -1. t2 (de): item 9 scored by the base only.
        let rows = [
            item("base", "t1", "fr", "1", false),
            item("tuned", "t1", "fr", "1", true),
            item("base", "t1", "fr", "2", true),
            item("tuned", "t1", "fr", "2", true),
            item("base", "t2", "fr", "1", true),
            item("tuned", "t2", "fr", "1", false),
            item("base", "t2", "de", "9", true),
        ];
        let metrics = delta_metrics(&rows, &resample());
        let find = |task: &str, language: &str| {
            let m = metrics.iter().find(|m| m.task == task && m.language == language).unwrap();
            (m.value, m.n, m.variant.as_str(), m.policy_id.as_str())
        };
        assert_eq!(find("t1", "fr"), (0.5, 2, "tuned", "bundle:b+adapter:a"));
        assert_eq!(find("t2", "fr").0, -1.0);
        assert_eq!(find(STRUCTURED, "fr").0, -0.25, "the mean of ½ and -1, not of the three items");
        assert_eq!(find(STRUCTURED, "all").1, 3);
        assert!(metrics.iter().all(|m| m.language != "de"), "an unpaired item has no Δ");
        let ci = metrics.iter().find(|m| m.task == STRUCTURED && m.language == "fr").unwrap().ci.unwrap();
        assert!(ci.0 <= -0.25 && -0.25 <= ci.1);
    }

    #[test]
    fn accuracy_is_per_language_and_pooled() {
        let rows = [choice("base", "fr", true), choice("base", "fr", false), choice("base", "de", true)];
        let metrics = choice_metrics(&rows, &resample());
        let find = |language: &str, metric: &str| {
            metrics.iter().find(|m| m.language == language && m.metric == metric).map(|m| (m.value, m.n)).unwrap()
        };
        assert_eq!(find("fr", "accuracy"), (0.5, 2));
        assert_eq!(find("de", "accuracy"), (1.0, 1));
        assert_eq!(find("all", "accuracy"), (2.0 / 3.0, 3));
        assert_eq!(find("all", "accuracy_norm"), (1.0 / 3.0, 3));
    }

    #[test]
    fn open_ended_metrics_count_outcomes_and_fidelity() {
        let row = |outcome, in_language| JudgedRow {
            policy_id: "bundle:b+adapter:a".into(),
            language: "fr".into(),
            category: None,
            judged: Some(Judged { outcome, length_delta: 0.0 }),
            tokens: (10.0, 12.0),
            rewards: Some((0.0, 1.0)),
            in_language: Some(in_language),
        };
        let rows =
            [row(Outcome::Win, (true, true)), row(Outcome::Tie, (false, true)), row(Outcome::Loss, (true, false))];
        let metrics = judge_metrics(&rows, &resample(), 1.0);
        let find = |variant: &str, metric: &str| {
            let m = metrics.iter().find(|m| m.language == "fr" && m.variant == variant && m.metric == metric).unwrap();
            (m.value, m.policy_id.clone())
        };
        assert_eq!(find("tuned", "win_rate").0, 0.5);
        assert_eq!(find("tuned", "wins").0, 1.0);
        assert_eq!(find("base", "language_fidelity"), (2.0 / 3.0, "bundle:b".to_string()));
        assert_eq!(find("tuned", "mean_tokens").0, 12.0);
        assert_eq!(find("base", "mean_reward").0, 0.0);
    }

    #[test]
    fn unparseable_verdicts_are_counted_apart_and_categories_get_their_own_rows() {
        let row = |category: &str, outcome: Option<Outcome>| JudgedRow {
            policy_id: "bundle:b+adapter:a".into(),
            language: "de".into(),
            category: Some(category.into()),
            judged: outcome.map(|outcome| Judged { outcome, length_delta: 0.0 }),
            tokens: (1.0, 1.0),
            rewards: None,
            in_language: None,
        };
        let rows =
            [row("math", Some(Outcome::Win)), row("math", None), row("code", Some(Outcome::Loss)), row("code", None)];
        let metrics = judge_metrics(&rows, &resample(), 1.0);
        let find = |category: Option<&str>, metric: &str| {
            let m = metrics
                .iter()
                .find(|m| m.language == "all" && m.category.as_deref() == category && m.metric == metric)
                .unwrap();
            (m.value, m.n)
        };
        assert_eq!(find(None, "win_rate"), (0.5, 2), "over the two readable verdicts");
        assert_eq!(find(None, "unparseable"), (2.0, 4));
        assert_eq!(find(Some("math"), "win_rate"), (1.0, 1));
        assert_eq!(find(Some("code"), "win_rate"), (0.0, 1));
        assert_eq!(find(Some("code"), "unparseable"), (1.0, 2));
        assert_eq!(find(None, "mean_tokens").1, 4, "every response has a length");

        // Regression: a group with no readable verdict got a NaN win rate, which broke `croco report`.
        let unreadable = [row("math", None), row("math", None)];
        let metrics = judge_metrics(&unreadable, &resample(), 1.0);
        assert!(metrics.iter().all(|m| m.value.is_finite()), "{metrics:?}");
        assert!(!metrics.iter().any(|m| m.metric == "win_rate" || m.metric == "lc_win_rate"));
        assert!(metrics.iter().any(|m| m.metric == "unparseable" && m.value == 2.0));
    }
}
