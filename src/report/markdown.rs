//! The report as Markdown: the headline table and the per-task accuracies,
//! for a terminal or a README.

use std::fmt::Write;

use super::data::{MetricRow, ReportData};

fn percent(value: Option<f64>) -> String {
    value.map_or("–".into(), |v| format!("{:.1}", v * 100.0))
}

fn with_interval(metric: Option<&MetricRow>) -> String {
    match metric.map(|m| (m.value, m.ci_low.zip(m.ci_high))) {
        Some((value, Some((low, high)))) => format!("{:.1} [{:.1}, {:.1}]", value * 100.0, low * 100.0, high * 100.0),
        Some((value, None)) => format!("{:.1}", value * 100.0),
        None => "–".into(),
    }
}

fn verdict(value: Option<bool>) -> &'static str {
    match value {
        Some(true) => "yes",
        Some(false) => "no",
        None => "–",
    }
}

/// Renders the headline and the structured tasks of `data` as Markdown.
pub fn render(data: &ReportData) -> String {
    let mut md = format!("# croco report: {}\n\nBase against tuned policy; 95 % bootstrap intervals.\n\n", data.run);
    md.push_str("| language | structured acc. base → tuned (%) | held | win rate (%) | LC win rate (%) | won | in prompt language base → tuned (%) |\n");
    md.push_str("|---|---|---|---|---|---|---|\n");
    for line in data.headline() {
        let _ = writeln!(
            md,
            "| {} | {} → {} | {} | {} | {} | {} | {} → {} |",
            line.language,
            percent(line.base_accuracy),
            percent(line.tuned_accuracy),
            verdict(line.structured_held()),
            with_interval(line.win_rate.as_ref()),
            with_interval(line.lc_win_rate.as_ref()),
            verdict(line.open_ended_won()),
            percent(line.base_fidelity),
            percent(line.tuned_fidelity),
        );
    }
    if !data.ablations.is_empty() {
        md.push_str(
            "\n| variant | language | structured Δ (points) | win rate (%) | LC win rate (%) | pairs | mean margin |\n",
        );
        md.push_str("|---|---|---|---|---|---|---|\n");
        for row in &data.ablations {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} |",
                row.variant,
                row.language,
                row.accuracy_delta.map_or("–".into(), |d| format!("{:+.1}", d * 100.0)),
                percent(row.win_rate),
                percent(row.lc_win_rate),
                row.pairs.map_or("–".into(), |p| p.to_string()),
                row.mean_margin.map_or("–".into(), |m| format!("{m:.3}")),
            );
        }
    }
    let tasks = data.choice_tasks();
    if !tasks.is_empty() {
        md.push_str("\n| task | base accuracy (%) | tuned accuracy (%) | tuned, per byte (%) |\n|---|---|---|---|\n");
        let all = crate::stages::report::ALL_LANGUAGES;
        for task in &tasks {
            let _ = writeln!(
                md,
                "| {task} | {} | {} | {} |",
                with_interval(data.metric("base", task, all, "accuracy")),
                with_interval(data.metric("tuned", task, all, "accuracy")),
                with_interval(data.metric("tuned", task, all, "accuracy_norm")),
            );
        }
    }
    if let (Some(first), Some(last)) = (data.steps.first(), data.steps.last()) {
        let _ = writeln!(
            md,
            "\nTraining: {} steps, loss {:.3} → {:.3}, reward accuracy {:.2} → {:.2}.",
            data.steps.len(),
            first.loss,
            last.loss,
            first.reward_accuracy,
            last.reward_accuracy
        );
    }
    md
}
