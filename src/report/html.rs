//! The self-contained HTML report: one file, inline CSS and SVG, no script,
//! nothing fetched.

use std::fmt::Write;

use super::cells::{
    ABLATION_COLUMNS, HEADLINE_COLUMNS, OPEN_ENDED_COLUMNS, OPEN_ENDED_LEGEND, VERDICT_LEGEND, ablation_row,
    headline_row, open_ended_rows, percent, with_interval,
};
use super::data::{Headline, MetricRow, ReportData};
use super::svg::{Bars, bar_chart, box_chart, escape, line_chart};
use crate::vocab::eval::{ALL_LANGUAGES, EvalModel, OPEN_ENDED};

const BASE: &str = "#8c9aa8";
const TUNED: &str = "#1f6fb2";
const LC: &str = "#e08a1e";

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:820px;color:#1d232a}\
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #d8dee4}\
table{border-collapse:collapse;margin:8px 0}td,th{padding:3px 8px;border-bottom:1px solid #eaeef2;text-align:right}\
td:first-child,th:first-child{text-align:left}.yes{color:#1a7f37}.no{color:#cf222e}\
.chart{display:block;margin:8px 0}.chart .title{font-size:13px;font-weight:600}.chart .tick{font-size:10px;fill:#57606a}\
.chart .grid{stroke:#eaeef2}.chart .whisker{stroke:#24292f}.chart .median{stroke:#fff;stroke-width:2}\
.chart .reference{stroke:#cf222e;stroke-dasharray:4 3}code,pre{font-size:12px}pre{white-space:pre-wrap}";

/// Renders `data` as one HTML document.
pub fn render(data: &ReportData) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>croco report: {run}</title>\
         <style>{STYLE}</style></head><body><h1>croco report: {run}</h1><p>Storage root <code>{root}</code>. \
         Base policy against the tuned policy, per language; intervals are 95 % bootstrap intervals.</p>",
        run = escape(&data.run),
        root = escape(&data.root)
    );
    headline_section(&mut html, data);
    ablation_section(&mut html, data);
    charts_section(&mut html, data);
    tasks_section(&mut html, data);
    training_section(&mut html, data);
    pairs_section(&mut html, data);
    lineage_section(&mut html, data);
    html.push_str("</body></html>\n");
    html
}

/// A table row; a `yes`/`no` cell gets its colour class.
fn table_row(cells: &[String]) -> String {
    let cells: String = cells
        .iter()
        .map(|cell| match cell.as_str() {
            "yes" | "no" => format!("<td class=\"{cell}\">{cell}</td>"),
            _ => format!("<td>{}</td>", escape(cell)),
        })
        .collect();
    format!("<tr>{cells}</tr>")
}

/// A table's opening tag and header row.
fn table_head(columns: &[&str]) -> String {
    let cells: String = columns.iter().map(|c| format!("<th>{}</th>", escape(c))).collect();
    format!("<table><tr>{cells}</tr>")
}

fn headline_section(html: &mut String, data: &ReportData) {
    html.push_str("<h2>The recipe's verdict</h2>");
    html.push_str(&table_head(&HEADLINE_COLUMNS));
    for line in data.headline() {
        html.push_str(&table_row(&headline_row(&line)));
    }
    html.push_str(&format!("</table><p>{}</p>", escape(VERDICT_LEGEND)));
    let open_ended = open_ended_rows(data);
    if !open_ended.is_empty() {
        html.push_str("<h3>Open-ended comparisons, all languages</h3>");
        html.push_str(&table_head(&OPEN_ENDED_COLUMNS));
        open_ended.iter().for_each(|row| html.push_str(&table_row(row)));
        html.push_str(&format!("</table><p>{}</p>", escape(OPEN_ENDED_LEGEND)));
    }
}

fn ablation_section(html: &mut String, data: &ReportData) {
    if data.ablations.is_empty() {
        return;
    }
    html.push_str(
        "<h2>Ablations</h2><p>One row per variant and language (<code>sql/ablation_summary.sql</code>); the headline \
         above is the base pipeline's.</p>",
    );
    html.push_str(&table_head(&ABLATION_COLUMNS));
    for row in &data.ablations {
        html.push_str(&table_row(&ablation_row(row)));
    }
    html.push_str("</table>");
}

fn charts_section(html: &mut String, data: &ReportData) {
    let headline: Vec<Headline> = data.headline();
    let languages: Vec<String> = headline.iter().map(|h| h.language.clone()).collect();
    let interval = |m: &Option<MetricRow>| m.as_ref().map(|m| (m.value, m.ci_low.zip(m.ci_high)));
    html.push_str("<h2>Per language</h2>");
    if headline.iter().any(|h| h.win_rate.is_some()) {
        let series = [
            Bars { name: "win rate", color: TUNED, values: headline.iter().map(|h| interval(&h.win_rate)).collect() },
            Bars {
                name: "LC win rate",
                color: LC,
                values: headline.iter().map(|h| interval(&h.lc_win_rate)).collect(),
            },
        ];
        html.push_str(&bar_chart(
            "Open-ended win rate of the tuned policy against the base",
            &languages,
            &series,
            (0.0, 1.0),
            Some(0.5),
        ));
    }
    if headline.iter().any(|h| h.base_accuracy.is_some()) {
        let series = [
            Bars {
                name: EvalModel::Base.name(),
                color: BASE,
                values: headline.iter().map(|h| h.base_accuracy.map(|v| (v, None))).collect(),
            },
            Bars {
                name: EvalModel::Tuned.name(),
                color: TUNED,
                values: headline.iter().map(|h| h.tuned_accuracy.map(|v| (v, None))).collect(),
            },
        ];
        html.push_str(&bar_chart("Structured accuracy (mean over tasks)", &languages, &series, (0.0, 1.0), None));
    }
    if !data.rewards.is_empty() {
        let per_language: Vec<String> = languages.iter().filter(|l| *l != ALL_LANGUAGES).cloned().collect();
        let pick = |side: fn(&super::data::RewardRow) -> f64| -> Vec<Vec<f64>> {
            per_language.iter().map(|l| data.rewards.iter().filter(|r| &r.language == l).map(side).collect()).collect()
        };
        let groups = [
            (EvalModel::Base.name(), BASE, pick(|r| r.base_reward)),
            (EvalModel::Tuned.name(), TUNED, pick(|r| r.tuned_reward)),
        ];
        html.push_str(&box_chart("Rewards of the judged responses", &per_language, &groups));
    }
}

fn tasks_section(html: &mut String, data: &ReportData) {
    let tasks = data.choice_tasks();
    if tasks.is_empty() {
        return;
    }
    html.push_str("<h2>Structured tasks</h2>");
    let tables =
        [("accuracy", "summed log-likelihood"), ("accuracy_norm", "log-likelihood per UTF-8 byte of the option")];
    for (metric, meaning) in tables {
        let _ = write!(
            html,
            "<p>Accuracy (%), base → tuned, by {meaning}; hover for the tuned 95 % interval.</p><table><tr><th>language</th>"
        );
        tasks.iter().for_each(|task| {
            let _ = write!(html, "<th>{}</th>", escape(task));
        });
        html.push_str("</tr>");
        for language in data.languages() {
            let _ = write!(html, "<tr><td>{}</td>", escape(&language));
            for task in &tasks {
                let (base, tuned) = (
                    data.metric(EvalModel::Base, task, &language, metric),
                    data.metric(EvalModel::Tuned, task, &language, metric),
                );
                let _ = write!(
                    html,
                    "<td title=\"{}\">{} → {}</td>",
                    with_interval(tuned),
                    percent(base.map(|m| m.value)),
                    percent(tuned.map(|m| m.value))
                );
            }
            html.push_str("</tr>");
        }
        html.push_str("</table>");
    }
    if data.metric(EvalModel::Tuned, OPEN_ENDED, ALL_LANGUAGES, "mean_tokens").is_some() {
        let value = |variant, metric| {
            data.metric(variant, OPEN_ENDED, ALL_LANGUAGES, metric).map_or("–".into(), |m| format!("{:.2}", m.value))
        };
        let _ = write!(
            html,
            "<p>Open-ended responses, all languages: mean length {} → {} tokens, mean reward {} → {}.</p>",
            value(EvalModel::Base, "mean_tokens"),
            value(EvalModel::Tuned, "mean_tokens"),
            value(EvalModel::Base, "mean_reward"),
            value(EvalModel::Tuned, "mean_reward")
        );
    }
}

/// Reads one curve's value off a training step.
type StepValue = fn(&super::data::StepRow) -> f64;

fn training_section(html: &mut String, data: &ReportData) {
    if data.steps.is_empty() {
        return;
    }
    html.push_str("<h2>Training</h2>");
    let curves: [(&str, StepValue); 4] = [
        ("DPO loss", |s| s.loss),
        ("Reward accuracy", |s| s.reward_accuracy),
        ("Reward margin", |s| s.reward_margin),
        ("Gradient norm", |s| s.grad_norm),
    ];
    for (title, value) in curves {
        let points: Vec<(f64, f64)> = data.steps.iter().map(|s| (s.step, value(s))).collect();
        html.push_str(&line_chart(title, &points, TUNED));
    }
}

fn pairs_section(html: &mut String, data: &ReportData) {
    if data.pairs.is_empty() {
        return;
    }
    html.push_str("<h2>Preference pairs</h2>");
    let columns = ["language", "pairs", "mean pool size", "mean chosen reward", "mean rejected reward", "mean margin"];
    html.push_str(&table_head(&columns));
    for p in &data.pairs {
        let numbers = [p.chosen_reward, p.rejected_reward, p.margin].map(|v| format!("{v:.3}"));
        let cells = [vec![p.language.clone(), p.pairs.to_string(), format!("{:.1}", p.pool_size)], numbers.to_vec()];
        html.push_str(&table_row(&cells.concat()));
    }
    html.push_str("</table>");
}

fn lineage_section(html: &mut String, data: &ReportData) {
    html.push_str(
        "<h2>Lineage</h2><p>Every table version is named by a content key over its parameters, its inputs' keys \
         and its models' checksums.</p>",
    );
    html.push_str(&table_head(&["stage", "table", "state", "rows", "key"]));
    for stage in &data.lineage {
        let rows = stage.rows.map_or("–".into(), |r| r.to_string());
        let cells = [stage.stage.clone(), stage.table.clone(), stage.state.clone(), rows, stage.key.clone()];
        html.push_str(&table_row(&cells));
    }
    html.push_str("</table>");
    for stage in &data.lineage {
        let detail = serde_json::json!({ "inputs": stage.inputs, "models": stage.models, "params": stage.params });
        let text = serde_json::to_string_pretty(&detail).unwrap_or_default();
        let _ =
            write!(html, "<details><summary>{}</summary><pre>{}</pre></details>", escape(&stage.stage), escape(&text));
    }
}
