//! The cells of the report's tables, shared by the HTML and Markdown
//! renderings so both always show the same numbers the same way.

use super::data::{AblationRow, Headline, MetricRow, ReportData};
use crate::vocab::eval::EvalModel;
use crate::vocab::stats::Verdict;

/// Column titles of the headline table.
pub const HEADLINE_COLUMNS: [&str; 8] = [
    "language",
    "structured acc. base → tuned (%)",
    "Δ (points)",
    "held",
    "win rate (%)",
    "LC win rate (%)",
    "won",
    "in prompt language base → tuned (%)",
];

/// What the headline's verdict columns mean, under the table in both renderings.
pub const VERDICT_LEGEND: &str = "Δ: tuned minus base structured accuracy on the same items, mean over the choice \
     tasks, with its paired 95 % interval. held: yes when that interval lies at or above 0, no when it lies below \
     0, unclear when it contains 0. won: yes when the open-ended win rate's (ties ½) 95 % interval lies above ½, \
     no when it lies at or below ½, unclear when it contains ½. LC: length-controlled. Language fidelity counts \
     only languages the detector knows.";

/// What the open-ended table's counts mean.
pub const OPEN_ENDED_LEGEND: &str = "Win rates are over the readable verdicts (ties ½); an unparseable verdict \
     (a generative judge's answer without a verdict tag) is counted apart, never as a tie.";

/// A difference in points (a share × 100, signed) with its interval.
pub fn points_with_interval(metric: Option<&MetricRow>) -> String {
    interval_cell(metric, |difference| format!("{:+.1}", difference * 100.0))
}

/// Column titles of the open-ended table (all languages pooled).
pub const OPEN_ENDED_COLUMNS: [&str; 5] =
    ["prompts", "win rate (%)", "LC win rate (%)", "wins / ties / losses", "unparseable"];

/// One line of the open-ended table: every prompt (`category` `None`) or one category's.
pub fn open_ended_row(data: &ReportData, category: Option<&str>) -> Option<[String; 5]> {
    let (open, all, tuned) = (crate::vocab::eval::OPEN_ENDED, crate::vocab::eval::ALL_LANGUAGES, EvalModel::Tuned);
    let metric = |name| data.category_metric(tuned, open, all, category, name);
    let count = |name| metric(name).map_or("–".into(), |m| format!("{:.0}", m.value));
    metric("wins")?;
    Some([
        category.map_or("all".into(), |c| format!("category: {c}")),
        with_interval(metric("win_rate")),
        with_interval(metric("lc_win_rate")),
        format!("{} / {} / {}", count("wins"), count("ties"), count("losses")),
        count("unparseable"),
    ])
}

/// Every line of the open-ended table: all prompts, then each category.
pub fn open_ended_rows(data: &ReportData) -> Vec<[String; 5]> {
    let categories = data.categories();
    let lines = std::iter::once(None).chain(categories.iter().map(|c| Some(c.as_str())));
    lines.filter_map(|category| open_ended_row(data, category)).collect()
}

/// Column titles of the ablation table.
pub const ABLATION_COLUMNS: [&str; 7] =
    ["variant", "language", "structured Δ (points)", "win rate (%)", "LC win rate (%)", "pairs", "mean margin"];

/// A share as a percentage with one decimal, `–` when absent.
pub fn percent(value: Option<f64>) -> String {
    value.map_or("–".into(), |v| format!("{:.1}", v * 100.0))
}

/// A metric as a percentage with its 95 % interval, when it has one.
pub fn with_interval(metric: Option<&MetricRow>) -> String {
    interval_cell(metric, |share| format!("{:.1}", share * 100.0))
}

/// A metric and its interval, each number written by `number`, `–` when absent.
fn interval_cell(metric: Option<&MetricRow>, number: impl Fn(f64) -> String) -> String {
    match metric.map(|m| (m.value, m.ci_low.zip(m.ci_high))) {
        Some((value, Some((low, high)))) => format!("{} [{}, {}]", number(value), number(low), number(high)),
        Some((value, None)) => number(value),
        None => "–".into(),
    }
}

/// `yes`, `no`, `unclear` or `–` (not measured).
pub fn verdict(value: Option<Verdict>) -> &'static str {
    value.map_or("–", Verdict::name)
}

/// One line of the headline table.
pub fn headline_row(line: &Headline) -> [String; 8] {
    [
        line.language.clone(),
        format!("{} → {}", percent(line.base_accuracy), percent(line.tuned_accuracy)),
        points_with_interval(line.accuracy_delta.as_ref()),
        verdict(line.structured_held()).into(),
        with_interval(line.win_rate.as_ref()),
        with_interval(line.lc_win_rate.as_ref()),
        verdict(line.open_ended_won()).into(),
        format!("{} → {}", percent(line.base_fidelity), percent(line.tuned_fidelity)),
    ]
}

/// One line of the ablation table.
pub fn ablation_row(row: &AblationRow) -> [String; 7] {
    [
        row.variant.clone(),
        row.language.clone(),
        row.accuracy_delta.map_or("–".into(), |d| format!("{:+.1}", d * 100.0)),
        percent(row.win_rate),
        percent(row.lc_win_rate),
        row.pairs.map_or("–".into(), |p| p.to_string()),
        row.mean_margin.map_or("–".into(), |m| format!("{m:.3}")),
    ]
}
