//! Evaluation: the evaluate stage (multiple-choice log-likelihoods, judged
//! open-ended answers), the report stage's metrics, and `croco report`
//! rendered in headless Chromium.
//!
//! The pipelines here evaluate `models.policy_adapter` against its base on a
//! few items in two languages, so no tuning run is needed.

use std::path::{Path, PathBuf};

use arrow::array::{Array, RecordBatch};
use croco::model::lora::Adapter;
use croco::model::policy::Policy;
use croco::model::runtime::{Device, SessionConfig};
use croco::pipeline::runner::RunOptions;

use crate::util::{policy_bundle, query, repo, strings, write_adapter};

const CPU: SessionConfig = SessionConfig { device: Device::Cpu, device_id: 0, threads: 2 };

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

    // Paired Δ accuracy is exactly 0 with the interval [0, 0]: accuracy held;
    // every comparison tied, so the win rate's [½, ½] is no win.
    let delta = query(
        &file,
        "SELECT CAST(value AS VARCHAR), CAST(ci_low AS VARCHAR), CAST(ci_high AS VARCHAR), CAST(n AS VARCHAR) \
         FROM eval_results WHERE task = 'structured' AND metric = 'accuracy_delta' AND language = 'all'",
    )
    .await;
    let delta: Vec<String> = (0..4).map(|c| strings(&delta, c)[0].clone()).collect();
    assert_eq!(delta, ["0.0", "0.0", "0.0", "24"]);
    let md = std::process::Command::new(env!("CARGO_BIN_EXE_croco"))
        .args(["report", file.to_str().unwrap(), "--format", "md"])
        .output()
        .unwrap();
    let md = String::from_utf8_lossy(&md.stdout);
    let all = md.lines().find(|l| l.starts_with("| all |")).unwrap();
    let cells: Vec<&str> = all.split('|').map(str::trim).collect();
    assert_eq!((cells[3], cells[4], cells[7]), ("+0.0 [+0.0, +0.0]", "yes", "no"), "{all}");
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
    let template = croco::spec::evaluate::JudgeParams::default_template(croco::spec::evaluate::JudgeKind::Pairwise);
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

/// The generative judge, the recipe's: the demo policy judges (from a
/// template file), writing sampled text that rarely ends in a verdict tag.
/// Every row keeps the judge's whole answer; a row's verdict is whatever the
/// parser reads from that text, undone through the recorded order; the
/// unparseable are counted in the manifest and in eval_results and left out
/// of the win rate; lengths are in characters; categories get their own
/// metrics. The same run again gives the same judgments (seeded sampling).
#[tokio::test]
async fn a_generative_judge_keeps_its_answers_and_counts_the_unparseable_apart() {
    use croco::stages::evaluate::judge::{Shown, parse_verdict, tuned_first};
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("arena.jsonl");
    let lines: Vec<String> = (0..8)
        .map(|i| {
            let (language, category) = (["en", "fr"][i % 2], ["colours", "animals"][i / 4]);
            let question = format!("Question {i}: name a {}.", &category[..category.len() - 1]);
            serde_json::json!({"id": format!("q{i}"), "lang": language, "question": question, "kind": category})
                .to_string()
        })
        .collect();
    std::fs::write(&prompts, lines.join("\n")).unwrap();
    let template = dir.path().join("judge.txt");
    std::fs::write(&template, "Which is better for {prompt}?\n1: {a}\n2: {b}\nEnd with [[1]], [[2]] or [[T]].\n")
        .unwrap();
    let base = eval_pipeline(dir.path(), &write_adapter(dir.path(), 0.05), None);
    let judge = format!(
        "kind = \"generative\"\ntemplate_file = \"{}\"\njudge_max_new_tokens = 24\nprompts = {{ source = \"{}\", \
         columns = {{ prompt_id = \"id\", language = \"lang\", text = \"question\", category = \"kind\" }} }}",
        template.display(),
        prompts.display()
    );
    let text = std::fs::read_to_string(&base)
        .unwrap()
        .replace("kind = \"reward\"", &judge)
        .replace("[models]\n", &format!("[models]\njudge = \"{}/data/models/policy\"\n", repo().display()));
    let file = dir.path().join("generative.toml");
    std::fs::write(&file, text).unwrap();
    let reports = crate::util::run(&file, RunOptions::default()).await;
    let stats = &reports[1].stats;
    let stat = |name: &str| stats[name].as_u64().unwrap();
    assert_eq!(stat("judged_prompts"), 6, "max_prompts_per_language = 3, in en and fr");
    assert_eq!(stat("wins") + stat("ties") + stat("losses") + stat("unparseable"), 6);

    let rows = query(
        &file,
        "SELECT item_id, judge, judge_output, CAST(tuned_first AS VARCHAR), verdict, outcome, \
         CAST(unparseable AS VARCHAR), CAST(preference AS VARCHAR), \
         CAST(base_length = character_length(base_response) AS VARCHAR), length_unit, category \
         FROM eval_items WHERE kind = 'judge' ORDER BY item_id",
    )
    .await;
    let column = |c: usize| -> Vec<Option<String>> {
        let values = rows[0].column(c).as_any().downcast_ref::<arrow::array::StringArray>().unwrap();
        values.iter().map(|v| v.map(str::to_string)).collect()
    };
    let (ids, outputs, verdicts, outcomes) = (column(0), column(2), column(4), column(5));
    assert!(column(1).iter().all(|j| j.as_deref().unwrap().starts_with("generative:")));
    let tags = croco::spec::evaluate::VerdictTags::default();
    let mut unparseable = 0;
    for i in 0..6 {
        let (id, output) = (ids[i].clone().unwrap(), outputs[i].clone().expect("the judge's answer is kept"));
        let first = column(3)[i].as_deref() == Some("true");
        assert_eq!(first, tuned_first(0, &id), "the order is the seeded draw");
        let read = parse_verdict(&output, &tags);
        assert_eq!(verdicts[i].as_deref(), read.map(Shown::name), "{id}: the verdict is what the text says");
        assert_eq!(outcomes[i].as_deref(), read.map(|v| v.outcome(first).name()), "{id}: the order is undone");
        assert_eq!(column(6)[i].as_deref(), Some(if read.is_none() { "true" } else { "false" }));
        assert_eq!(column(7)[i].is_none(), read.is_none(), "no preference without a verdict");
        unparseable += usize::from(read.is_none());
    }
    assert_eq!(stat("unparseable"), unparseable as u64);
    assert!(column(8).iter().all(|same| same.as_deref() == Some("true")), "lengths are characters");
    assert!(column(9).iter().all(|unit| unit.as_deref() == Some("chars")));
    assert_eq!(column(10)[0].as_deref(), Some("colours"));

    let counted = query(
        &file,
        "SELECT CAST(value AS BIGINT), CAST(n AS BIGINT) FROM eval_results \
         WHERE metric = 'unparseable' AND language = 'all' AND category IS NULL",
    )
    .await;
    let values = |c: usize| counted[0].column(c).as_any().downcast_ref::<arrow::array::Int64Array>().unwrap().value(0);
    assert_eq!((values(0), values(1)), (unparseable as i64, 6));
    let categories =
        query(&file, "SELECT DISTINCT category FROM eval_results WHERE category IS NOT NULL ORDER BY category").await;
    assert_eq!(strings(&categories, 0), ["animals", "colours"]);

    let md = std::process::Command::new(env!("CARGO_BIN_EXE_croco"))
        .args(["report", file.to_str().unwrap(), "--format", "md"])
        .output()
        .unwrap();
    assert!(md.status.success(), "the report renders however many verdicts were unreadable: {md:?}");
    let md = String::from_utf8_lossy(&md.stdout);
    let animals = md.lines().find(|l| l.starts_with("| category: animals |")).expect("a line per category");
    assert!(animals.ends_with(&format!("| {} |", stat_of_category(&file, "animals").await)), "{md}");

    let forced = crate::util::run(&file, RunOptions { force: true, ..Default::default() }).await;
    assert_eq!(forced[1].stats["unparseable"], stats["unparseable"]);
    let again = query(&file, "SELECT judge_output FROM eval_items WHERE kind = 'judge' ORDER BY item_id").await;
    assert_eq!(
        strings(&again, 0),
        outputs.into_iter().map(Option::unwrap).collect::<Vec<_>>(),
        "seeded: the same answers"
    );
}

/// Regression test for crash safety in evaluate: `kill -9` after 3, 8 and 13
/// committed parts (base choice parts; tuned ones; the first judged part),
/// each followed by a rerun that resumes, ends with exactly the `eval_items`
/// of an uninterrupted run, and a manifest that counts the same outcomes.
#[tokio::test]
async fn a_killed_evaluate_resumes_part_by_part_and_ends_with_the_uninterrupted_items() {
    use crate::model_stages::count_markers;
    let resumable = |dir: &Path| {
        let file = eval_pipeline(dir, &write_adapter(dir, 0.05), None);
        let text = std::fs::read_to_string(&file).unwrap();
        std::fs::write(&file, text.replace("batch_size = 8\nchoice", "batch_size = 8\nitems_per_part = 4\nchoice"))
            .unwrap();
        file
    };
    let every_column = "SELECT * FROM eval_items ORDER BY task, item_id, variant";
    let table = |batches: Vec<RecordBatch>| arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string();
    let reference_dir = tempfile::tempdir().unwrap();
    let reference = resumable(reference_dir.path());
    let uninterrupted = crate::util::run(&reference, RunOptions::default()).await;
    let expected = table(query(&reference, every_column).await);

    let dir = tempfile::tempdir().unwrap();
    let file = resumable(dir.path());
    let chunks = dir.path().join("root/tables/eval_items");
    // 3 tasks x 8 items in blocks of 4: 6 choice parts per model, then 2 judged parts.
    for point in [3, 8, 13] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_croco"))
            .args(["run", file.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
        while count_markers(&chunks) < point {
            assert!(std::time::Instant::now() < deadline, "evaluate committed no part in time");
            assert!(child.try_wait().unwrap().is_none(), "the run ended before part {point}");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let _ = std::fs::remove_file(dir.path().join("root").join(croco::pipeline::lock::LOCK_FILE));
    }
    let reports = crate::util::run(&file, RunOptions::default()).await;
    let evaluate = reports.iter().find(|r| r.stage == croco::spec::StageName::Evaluate).unwrap();
    assert!(evaluate.stats["resumed_parts"].as_u64().unwrap() >= 13, "{:?}", evaluate.stats);
    assert_eq!(table(query(&file, every_column).await), expected, "no row lost, none duplicated, same values");
    for counted in ["judged_prompts", "wins", "ties", "losses", "unparseable", "choice_items"] {
        assert_eq!(evaluate.stats[counted], uninterrupted[1].stats[counted], "{counted}");
    }
}

/// The unparseable verdicts of `category`'s prompts, counted in eval_items.
async fn stat_of_category(file: &Path, category: &str) -> i64 {
    let sql =
        format!("SELECT COUNT(*) FROM eval_items WHERE kind = 'judge' AND category = '{category}' AND unparseable");
    let rows = query(file, &sql).await;
    rows[0].column(0).as_any().downcast_ref::<arrow::array::Int64Array>().unwrap().value(0)
}
