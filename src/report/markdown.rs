//! The report as Markdown: the headline table and the per-task accuracies,
//! for a terminal or a README.

use std::fmt::Write;

use super::cells::{
    ABLATION_COLUMNS, HEADLINE_COLUMNS, OPEN_ENDED_COLUMNS, OPEN_ENDED_LEGEND, VERDICT_LEGEND, ablation_row,
    headline_row, open_ended_rows, with_interval,
};
use super::data::ReportData;

/// A Markdown table: header, rule, rows.
fn table<const N: usize>(md: &mut String, columns: &[&str; N], rows: impl Iterator<Item = [String; N]>) {
    let _ = writeln!(md, "| {} |", columns.join(" | "));
    let _ = writeln!(md, "|{}", "---|".repeat(columns.len()));
    for row in rows {
        let _ = writeln!(md, "| {} |", row.join(" | "));
    }
}

/// Renders the headline and the structured tasks of `data` as Markdown.
pub fn render(data: &ReportData) -> String {
    let mut md = format!("# croco report: {}\n\nBase against tuned policy; 95 % bootstrap intervals.\n\n", data.run);
    table(&mut md, &HEADLINE_COLUMNS, data.headline().iter().map(headline_row));
    let _ = writeln!(md, "\n{VERDICT_LEGEND}");
    let open_ended = open_ended_rows(data);
    if !open_ended.is_empty() {
        md.push('\n');
        table(&mut md, &OPEN_ENDED_COLUMNS, open_ended.into_iter());
        let _ = writeln!(md, "\n{OPEN_ENDED_LEGEND}");
    }
    if !data.ablations.is_empty() {
        md.push('\n');
        table(&mut md, &ABLATION_COLUMNS, data.ablations.iter().map(ablation_row));
    }
    let tasks = data.choice_tasks();
    if !tasks.is_empty() {
        let all = crate::vocab::eval::ALL_LANGUAGES;
        use crate::vocab::eval::EvalModel::{Base, Tuned};
        let row = |task: &String| {
            let cell = |variant, metric| with_interval(data.metric(variant, task, all, metric));
            [task.clone(), cell(Base, "accuracy"), cell(Tuned, "accuracy"), cell(Tuned, "accuracy_norm")]
        };
        md.push('\n');
        table(
            &mut md,
            &["task", "base accuracy (%)", "tuned accuracy (%)", "tuned, per byte (%)"],
            tasks.iter().map(row),
        );
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
