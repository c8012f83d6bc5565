//! The cells of the report's tables, shared by the HTML and Markdown
//! renderings so both always show the same numbers the same way.

use super::data::{AblationRow, Headline, MetricRow};

/// Column titles of the headline table.
pub const HEADLINE_COLUMNS: [&str; 7] = [
    "language",
    "structured acc. base → tuned (%)",
    "held",
    "win rate (%)",
    "LC win rate (%)",
    "won",
    "in prompt language base → tuned (%)",
];

/// Column titles of the ablation table.
pub const ABLATION_COLUMNS: [&str; 7] =
    ["variant", "language", "structured Δ (points)", "win rate (%)", "LC win rate (%)", "pairs", "mean margin"];

/// A share as a percentage with one decimal, `–` when absent.
pub fn percent(value: Option<f64>) -> String {
    value.map_or("–".into(), |v| format!("{:.1}", v * 100.0))
}

/// A metric as a percentage with its 95 % interval, when it has one.
pub fn with_interval(metric: Option<&MetricRow>) -> String {
    match metric.map(|m| (m.value, m.ci_low.zip(m.ci_high))) {
        Some((value, Some((low, high)))) => format!("{:.1} [{:.1}, {:.1}]", value * 100.0, low * 100.0, high * 100.0),
        Some((value, None)) => format!("{:.1}", value * 100.0),
        None => "–".into(),
    }
}

/// `yes`, `no` or `–`.
pub fn verdict(value: Option<bool>) -> &'static str {
    match value {
        Some(true) => "yes",
        Some(false) => "no",
        None => "–",
    }
}

/// One line of the headline table.
pub fn headline_row(line: &Headline) -> [String; 7] {
    [
        line.language.clone(),
        format!("{} → {}", percent(line.base_accuracy), percent(line.tuned_accuracy)),
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
