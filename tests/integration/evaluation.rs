//! Evaluation: the evaluate stage (multiple-choice log-likelihoods, judged
//! open-ended answers), the report stage's metrics, and `croco report`
//! rendered in headless Chromium.
//!
//! The pipelines here evaluate `models.policy_adapter` against its base on a
//! few items in two languages, so no tuning run is needed.

use std::path::{Path, PathBuf};

use arrow::array::{Array, RecordBatch};
use croco::model::bundle::{Bundle, Verify};
use croco::model::lora::{Adapter, AdapterConfig};
use croco::model::policy::Policy;
use croco::model::runtime::{Device, SessionConfig};
use croco::pipeline::runner::RunOptions;

use crate::util::{repo, strings};

const CPU: SessionConfig = SessionConfig { device: Device::Cpu, device_id: 0, threads: 2 };

fn policy_bundle() -> Bundle {
    Bundle::open(&repo().join("data/models/policy"), Verify::Sizes).unwrap()
}

/// Writes a PEFT adapter for the demo policy whose B matrices are all `b`
/// (0 leaves the base unchanged) into `dir`.
fn write_adapter(dir: &Path, b: f32) -> PathBuf {
    let config: AdapterConfig = serde_json::from_value(serde_json::json!({
        "r": 4, "lora_alpha": 8.0, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj", "down_proj"],
        "peft_type": "LORA", "task_type": "CAUSAL_LM"
    }))
    .unwrap();
    let mut adapter = Adapter::init(&policy_bundle(), config, 5).unwrap();
    adapter.modules.iter_mut().filter(|m| m.trainable).for_each(|m| m.b.fill(b));
    let adapter_dir = dir.join("adapter");
    std::fs::create_dir_all(&adapter_dir).unwrap();
    let (weights, config) = adapter.to_peft().unwrap();
    std::fs::write(adapter_dir.join("adapter_model.safetensors"), weights).unwrap();
    std::fs::write(adapter_dir.join("adapter_config.json"), config).unwrap();
    adapter_dir
}

/// Prompts, evaluate (the three demo tasks, 4 items per language; 3 judged
/// prompts per language) and report, in en and fr, tuned = `adapter_dir`.
fn eval_pipeline(dir: &Path, adapter_dir: &Path, choice_source: Option<&Path>) -> PathBuf {
    let data = repo().join("data");
    let tasks = match choice_source {
        Some(source) => format!("{{ name = \"custom\", source = \"{}\" }}", source.display()),
        None => ["lang_match", "real_text", "word_order"]
            .map(|t| {
                format!(
                    "{{ name = \"{t}\", source = \"{}/eval/{t}.jsonl\", max_items_per_language = 4 }}",
                    data.display()
                )
            })
            .join(",\n  "),
    };
    let models = [
        ("policy", crate::util::data("models/policy")),
        ("policy_adapter", adapter_dir.display().to_string()),
        ("reward", crate::util::data("models/reward")),
    ];
    let text = format!(
        r#"{head}
[stages.evaluate]
batch_size = 8
choice = [
  {tasks}
]

[stages.evaluate.judge]
kind = "reward"
tie_margin = 0.0
max_new_tokens = 24
max_prompts_per_language = 3

[stages.report]
bootstrap = 200
"#,
        head = crate::util::en_fr_head("evaluation", dir, &models)
    );
    crate::util::write_pipeline(dir, &text)
}

async fn query(file: &Path, sql: &str) -> Vec<RecordBatch> {
    let planned = crate::util::plan(file).await;
    let ctx = croco::pipeline::session::pipeline_session(&planned).await.unwrap();
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    batches.iter().map(croco::store::schema::plain_strings).collect()
}

fn float(batches: &[RecordBatch]) -> f64 {
    let values = batches[0].column(0).as_any().downcast_ref::<arrow::array::Float64Array>().unwrap();
    values.value(0)
}

/// With B = 0 the tuned policy is the base: every choice item scores the
/// same under both, every judged pair is an exact tie, so the win rate and
/// the LC win rate are ½ in every language.
#[tokio::test]
async fn a_zero_adapter_scores_like_the_base_and_ties_every_comparison() {
    let dir = tempfile::tempdir().unwrap();
    let file = eval_pipeline(dir.path(), &write_adapter(dir.path(), 0.0), None);
    let reports = crate::util::run(&file, RunOptions::default()).await;
    assert_eq!(crate::util::ran(&reports), ["prompts", "evaluate", "report"]);
    let evaluate = &reports[1];
    assert_eq!(evaluate.stats["choice_items"], 3 * 2 * 4, "3 tasks x 2 languages x 4 items");
    assert_eq!(evaluate.stats["judged_prompts"], 6);
    assert_eq!(evaluate.stats["ties"], 6);
    assert_eq!(evaluate.rows, 2 * 24 + 6, "choice rows per variant, one judged row per prompt");

    let differing = query(
        &file,
        "SELECT b.item_id FROM eval_items b JOIN eval_items t ON b.task = t.task AND b.item_id = t.item_id \
         WHERE b.kind = 'choice' AND b.variant = 'base' AND t.variant = 'tuned' AND b.option_logprobs <> t.option_logprobs",
    )
    .await;
    assert!(differing.iter().all(|b| b.num_rows() == 0), "a zero adapter changes no log-likelihood");
    let rates = query(
        &file,
        "SELECT language, metric, value FROM eval_results WHERE metric IN ('win_rate', 'lc_win_rate') ORDER BY language, metric",
    )
    .await;
    assert_eq!(strings(&rates, 0), ["all", "all", "en", "en", "fr", "fr"]);
    let values = rates[0].column(2).as_any().downcast_ref::<arrow::array::Float64Array>().unwrap();
    assert!(values.iter().all(|v| v == Some(0.5)), "{values:?}");
}

/// The stage's log-likelihoods, re-derived here from the policy's per-token
/// log-probs (the graph is held to torch by model_parity): chat layout,
/// option tokens only, no end-of-turn token; argmax over sums and per byte.
#[tokio::test]
async fn choice_scores_are_the_options_log_likelihoods_under_each_model() {
    let dir = tempfile::tempdir().unwrap();
    let adapter_dir = write_adapter(dir.path(), 0.05);
    let file = eval_pipeline(dir.path(), &adapter_dir, None);
    crate::util::run(&file, RunOptions::default()).await;
    let rows = query(
        &file,
        "SELECT variant, option_logprobs, option_tokens, CAST(predicted AS VARCHAR), CAST(predicted_norm AS VARCHAR) \
         FROM eval_items WHERE task = 'lang_match' AND item_id = 'lang_match-fr-s01' ORDER BY variant",
    )
    .await;
    let item = croco::stages::evaluate::items::parse_items(
        &std::fs::read(repo().join("data/eval/lang_match.jsonl")).unwrap(),
        &serde_json::from_value(serde_json::json!({"name": "lang_match", "source": "x.jsonl"})).unwrap(),
    )
    .unwrap()
    .into_iter()
    .find(|i| i.item_id == "lang_match-fr-s01")
    .unwrap();
    let weights = std::fs::read(adapter_dir.join("adapter_model.safetensors")).unwrap();
    let config = std::fs::read(adapter_dir.join("adapter_config.json")).unwrap();
    let adapter = Adapter::from_peft(&policy_bundle(), &weights, &config).unwrap();
    for (row, adapter) in [None, Some(&adapter)].into_iter().enumerate() {
        let mut policy = Policy::load_tuned(policy_bundle(), adapter, &CPU).unwrap();
        let prompt_ids = policy.tokenizer.encode_prompt(&item.context).unwrap();
        let mut expected = Vec::new();
        let mut tokens = Vec::new();
        for option in &item.options {
            let (ids, start) = policy.tokenizer.encode_exchange(&item.context, option).unwrap();
            assert_eq!(start, prompt_ids.len());
            // The exchange ends with the end-of-turn token; an option is scored without it.
            let end_of_turn = policy.tokenizer.encode_text("<|end|>").unwrap().len();
            let ids = ids[..ids.len() - end_of_turn].to_vec();
            let logprob = policy.logprobs(&[(ids.clone(), start)]).unwrap().remove(0);
            expected.push(logprob.tokens.iter().map(|&t| f64::from(t)).sum::<f64>());
            tokens.push(ids.len() - start);
        }
        let stored: Vec<f64> = serde_json::from_str(&strings(&rows, 1)[row]).unwrap();
        for (s, e) in stored.iter().zip(&expected) {
            assert!((s - e).abs() < 1e-3, "stored {stored:?}, recomputed {expected:?}");
        }
        assert_eq!(serde_json::from_str::<Vec<usize>>(&strings(&rows, 2)[row]).unwrap(), tokens);
        let argmax = |v: &[f64]| (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
        let per_byte: Vec<f64> = expected.iter().zip(&item.options).map(|(l, o)| l / o.len() as f64).collect();
        assert_eq!(strings(&rows, 3)[row], argmax(&expected).to_string());
        assert_eq!(strings(&rows, 4)[row], argmax(&per_byte).to_string());
    }
    // A tuned model that differs is measured as different, and the report names it.
    let ids = query(&file, "SELECT DISTINCT adapter FROM eval_results WHERE variant = 'tuned'").await;
    assert!(strings(&ids, 0)[0].starts_with("adapter:"));
    let accuracy = query(
        &file,
        "SELECT value FROM eval_results WHERE variant = 'base' AND task = 'real_text' \
                                 AND language = 'all' AND metric = 'accuracy'",
    )
    .await;
    let recount = query(
        &file,
        "SELECT AVG(CAST(correct AS DOUBLE)) FROM eval_items WHERE variant = 'base' \
                                AND task = 'real_text'",
    )
    .await;
    assert_eq!(float(&accuracy), float(&recount), "eval_results traces back to eval_items");
}

/// Regression test for bad task files: the run fails before any model runs,
/// names the task file and the line, and commits nothing.
#[tokio::test]
async fn a_bad_task_file_is_named_with_its_line_and_nothing_is_committed() {
    let cases = [
        (r#"{"item_id":"a","language":"en","context":"c","options":["x","y"]}"#, "field `gold` is missing"),
        (r#"{"item_id":"a","language":"en","context":"c","options":["x","y"],"gold":5}"#, "out of range"),
        (r#"{"item_id":"a","language":"en","context":"c","options":[],"gold":0}"#, "at least 2 options"),
    ];
    for (line, problem) in cases {
        let dir = tempfile::tempdir().unwrap();
        let good = r#"{"item_id":"g","language":"en","context":"c","options":["x","y"],"gold":0}"#;
        let source = dir.path().join("task.jsonl");
        std::fs::write(&source, format!("{good}\n{line}\n")).unwrap();
        let file = eval_pipeline(dir.path(), &write_adapter(dir.path(), 0.0), Some(&source));
        let loaded = croco::pipeline::validate::load(&file).unwrap();
        let plan = croco::pipeline::Plan::build(loaded).await.unwrap();
        let error = croco::pipeline::runner::run(&plan, RunOptions::default()).await.unwrap_err().to_string();
        assert!(error.contains("task.jsonl") && error.contains("line 2") && error.contains(problem), "{error}");
        let evaluate = plan.stage(croco::spec::StageName::Evaluate).unwrap();
        assert!(plan.current(evaluate).await.unwrap().is_none(), "nothing of evaluate is committed");
    }
}

/// `croco report` writes one self-contained HTML file; headless Chromium
/// parses it and every chart is an SVG with marks drawn. Needs Debian's
/// `chromium` (`.ci/run` installs it).
#[tokio::test]
async fn the_html_report_renders_in_headless_chromium_with_non_empty_charts() {
    let dir = tempfile::tempdir().unwrap();
    let file = eval_pipeline(dir.path(), &write_adapter(dir.path(), 0.05), None);
    crate::util::run(&file, RunOptions::default()).await;
    let html = dir.path().join("report.html");
    let croco = |args: &[&str]| std::process::Command::new(env!("CARGO_BIN_EXE_croco")).args(args).output().unwrap();
    let output = croco(&["report", file.to_str().unwrap(), "-o", html.to_str().unwrap()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = std::fs::read_to_string(&html).unwrap();
    let namespaces = text.matches("http://www.w3.org/2000/svg").count();
    assert_eq!(text.matches("http://").count(), namespaces, "self-contained: no link but the SVG namespace");
    assert!(!text.contains("<script") && !text.contains("https://"), "self-contained: no script, nothing fetched");

    let chromium =
        which("chromium").expect("the report test needs Debian's chromium: apt-get install chromium (.ci/run does)");
    let dom = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--dump-dom",
        ])
        .arg(format!("file://{}", html.display()))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout);
    let charts: Vec<&str> = dom.split("<svg ").skip(1).collect();
    assert_eq!(charts.len(), 3, "win rates, structured accuracy, rewards (no tune stage: no training curves)");
    for chart in &charts {
        let marks = chart.split("data-marks=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("0");
        let drawn = chart.split("</svg>").next().unwrap().matches("class=\"mark").count();
        assert!(marks != "0" && drawn > 0, "an empty chart: {}", &chart[..chart.len().min(200)]);
    }
    let md = croco(&["report", file.to_str().unwrap(), "--format", "md"]);
    let md = String::from_utf8_lossy(&md.stdout);
    assert!(md.contains("| en |") && md.contains("| fr |") && md.contains("| all |"), "{md}");
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|dir| Path::new(dir).join(program)).find(|p| p.is_file())
}

/// The pairwise judge on its own prompt file. With a zero adapter both
/// responses are the same text, so the judge's question is the same whatever
/// the order, and its A-over-B log-odds `d` is one number per prompt: the
/// stored preference must be `d` when the tuned response was shown first and
/// `-d` otherwise — the order is recorded and undone correctly.
#[tokio::test]
async fn a_pairwise_judge_reads_its_own_prompts_and_undoes_the_order_it_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("arena.jsonl");
    let lines: Vec<String> = (0..6)
        .map(|i| {
            let language = ["en", "fr", "de"][i % 3];
            serde_json::json!({"id": i, "lang": language, "question": format!("Question {i}: name a colour.")})
                .to_string()
        })
        .collect();
    std::fs::write(&prompts, lines.join("\n")).unwrap();
    let base = eval_pipeline(dir.path(), &write_adapter(dir.path(), 0.0), None);
    let judge_prompts = format!(
        "prompts = {{ source = \"{}\", columns = {{ prompt_id = \"id\", language = \"lang\", text = \"question\" }} }}",
        prompts.display()
    );
    let text = std::fs::read_to_string(&base)
        .unwrap()
        .replace("kind = \"reward\"", &format!("kind = \"pairwise\"\n{judge_prompts}"))
        .replace("[models]\n", &format!("[models]\njudge = \"{}/data/models/policy\"\n", repo().display()));
    let file = dir.path().join("pairwise.toml");
    std::fs::write(&file, text).unwrap();
    let reports = crate::util::run(&file, RunOptions::default()).await;
    assert_eq!(reports[1].stats["judged_prompts"], 4, "the en and fr prompts of the file; de is not a run language");

    let rows = query(
        &file,
        "SELECT item_id, judge, CAST(tuned_first AS VARCHAR), CAST(preference AS VARCHAR), base_response = tuned_response \
         FROM eval_items WHERE kind = 'judge' ORDER BY item_id",
    )
    .await;
    assert_eq!(strings(&rows, 0), ["0", "1", "3", "4"]);
    assert!(strings(&rows, 1).iter().all(|j| j.starts_with("pairwise:")));
    let first: Vec<bool> = strings(&rows, 2).iter().map(|b| b == "true").collect();
    let drawn: Vec<bool> =
        strings(&rows, 0).iter().map(|id| croco::stages::evaluate::judge::tuned_first(0, id)).collect();
    assert_eq!(first, drawn, "the recorded order is the seeded draw");
    let same = rows[0].column(4).as_any().downcast_ref::<arrow::array::BooleanArray>().unwrap();
    assert!(same.iter().all(|s| s == Some(true)), "a zero adapter answers like the base");
    let mut policy = Policy::load(policy_bundle(), &CPU).unwrap();
    let template = croco::spec::evaluate::JudgeParams::default_template();
    for (i, (id, preference)) in strings(&rows, 0).iter().zip(strings(&rows, 3)).enumerate() {
        let question = format!("Question {id}: name a colour.");
        let response = query_response(&file, id).await;
        let shown = template.replace("{prompt}", &question).replace("{a}", &response).replace("{b}", &response);
        let prefix = policy.tokenizer.prompt_text(&shown);
        let sequences: Vec<_> =
            ["A", "B"].iter().map(|l| policy.tokenizer.encode_continuation(&prefix, l).unwrap()).collect();
        let sums: Vec<f64> = policy.logprobs(&sequences).unwrap().iter().map(|l| f64::from(l.sum)).collect();
        let d = sums[0] - sums[1];
        let expected = if first[i] { d } else { -d };
        let stored: f64 = preference.parse().unwrap();
        assert!((stored - expected).abs() < 1e-3, "prompt {id}: stored {stored}, expected {expected}");
    }
}

async fn query_response(file: &Path, item_id: &str) -> String {
    let rows =
        query(file, &format!("SELECT tuned_response FROM eval_items WHERE kind = 'judge' AND item_id = '{item_id}'"))
            .await;
    strings(&rows, 0).remove(0)
}
