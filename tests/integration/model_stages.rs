//! The generate and score stages on the demo world with ONNX Runtime (CPU):
//! K samples per prompt, reproducible reruns, resume after `kill -9`, and
//! clear errors for a missing runtime or a broken bundle.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use croco::pipeline::runner::RunOptions;

use crate::util::{data, en_fr_head, plan, repo, run, write_pipeline};

const SAMPLES: u64 = 3;

/// A small model pipeline: en and fr demo prompts, 3 samples of 8 tokens.
pub fn model_pipeline(dir: &Path, extra_generate: &str) -> std::path::PathBuf {
    let models = [("policy", data("models/policy")), ("reward", data("models/reward"))];
    let text = format!(
        r#"{head}
[stages.generate]
samples = {SAMPLES}
max_new_tokens = 8
batch_size = 4
prompts_per_part = 4
{extra_generate}

[stages.score]
batch_size = 16
rows_per_part = 32

[stages.pairs]
"#,
        head = en_fr_head("models", dir, &models)
    );
    write_pipeline(dir, &text)
}

async fn query(file: &Path, sql: &str) -> String {
    let planned = plan(file).await;
    let ctx = croco::pipeline::session::pipeline_session(&planned).await.unwrap();
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string()
}

#[tokio::test]
async fn every_train_prompt_gets_k_samples_and_a_forced_rerun_is_identical() {
    let dir = tempfile::tempdir().unwrap();
    let file = model_pipeline(dir.path(), "");
    let reports = run(&file, RunOptions::default()).await;
    let train = query(&file, "SELECT COUNT(*) AS n FROM prompts WHERE split = 'train'").await;
    let per_prompt = query(
        &file,
        "SELECT MIN(c) AS lo, MAX(c) AS hi FROM (SELECT COUNT(*) AS c FROM generations GROUP BY prompt_id)",
    )
    .await;
    assert!(per_prompt.contains(&format!("| {SAMPLES}  | {SAMPLES}  |")), "{per_prompt}");
    let prompts: u64 = train.lines().nth(3).unwrap().trim_matches(|c| c == '|' || c == ' ').parse().unwrap();
    assert_eq!(reports[1].rows, prompts * SAMPLES);
    assert_eq!(reports[2].rows, reports[1].rows, "every generation is scored");
    let finite = query(&file, "SELECT COUNT(*) AS bad FROM scores WHERE reward IS NULL OR isnan(reward)").await;
    assert!(finite.contains("| 0   |"), "{finite}");

    let before = query(&file, "SELECT generation_id, text FROM generations ORDER BY generation_id").await;
    run(&file, RunOptions { force: true, ..Default::default() }).await;
    let after = query(&file, "SELECT generation_id, text FROM generations ORDER BY generation_id").await;
    assert_eq!(before, after, "same seeds, same text");
}

/// `max_batch_tokens` changes how the reward model's batches are cut (here
/// 64 padded tokens: a row or two per batch instead of 16), never a reward
/// beyond float rounding.
#[tokio::test]
async fn a_token_budget_cuts_score_batches_without_changing_a_reward() {
    let rewards = |extra_score: &'static str| async move {
        let dir = tempfile::tempdir().unwrap();
        let file = model_pipeline(dir.path(), "");
        let text = std::fs::read_to_string(&file).unwrap().replace("rows_per_part = 32\n", extra_score);
        std::fs::write(&file, text).unwrap();
        run(&file, RunOptions::default()).await;
        let batches = crate::util::query(&file, "SELECT reward FROM scores ORDER BY generation_id").await;
        batches
            .iter()
            .flat_map(|b| {
                let values = b.column(0).as_any().downcast_ref::<arrow::array::Float64Array>().unwrap();
                values.iter().map(Option::unwrap).collect::<Vec<_>>()
            })
            .collect::<Vec<f64>>()
    };
    let by_rows = rewards("rows_per_part = 32\n").await;
    let by_tokens = rewards("rows_per_part = 32\nmax_batch_tokens = 64\n").await;
    assert_close(&by_rows, &by_tokens);
}

fn assert_close(a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len());
    for (a, b) in a.iter().zip(b) {
        assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "{a} vs {b}");
    }
}

/// The same for the reference model's log-probs (`ref_logps`).
#[tokio::test]
async fn a_token_budget_cuts_reference_batches_without_changing_a_log_prob() {
    let logps = |extra: &'static str| async move {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "{}\n[stages.ref_logps]\nmax_length = 256\nmax_prompt_length = 128\nbatch_size = 16\n{extra}",
            crate::util::imported_pairs_pipeline("budget", dir.path())
        );
        let file = write_pipeline(dir.path(), &text);
        run(&file, RunOptions::default()).await;
        let sql = "SELECT chosen_logp, rejected_logp FROM ref_logps ORDER BY pair_id";
        let batches = crate::util::query(&file, sql).await;
        let column = |b: &arrow::array::RecordBatch, i: usize| {
            let values = b.column(i).as_any().downcast_ref::<arrow::array::Float64Array>().unwrap();
            values.iter().map(Option::unwrap).collect::<Vec<_>>()
        };
        batches.iter().flat_map(|b| [column(b, 0), column(b, 1)].concat()).collect::<Vec<f64>>()
    };
    assert_close(&logps("").await, &logps("max_batch_tokens = 64\n").await);
}

/// A static batch (4 prompts x 3 samples here: each part is one batch) runs
/// until its longest row ends: `slot_steps` counts every row at every step,
/// `useful_slot_steps` those that produced a token (or the stop token).
#[tokio::test]
async fn generate_counts_its_slot_steps_useful_steps_and_prefill_tokens_and_wastes_few_slots() {
    let dir = tempfile::tempdir().unwrap();
    // Long enough for the demo policy's stop tokens to end most rows early.
    let generate = "[stages.generate]\nsamples = 3\nmax_new_tokens = 64\nbatch_size = 4\nprompts_per_part = 4\n";
    let models = [("policy", data("models/policy"))];
    let file = write_pipeline(dir.path(), &format!("{}\n{generate}", en_fr_head("steps", dir.path(), &models)));
    let reports = run(&file, RunOptions::default()).await;
    let stats = &reports[1].stats;
    let sql = "WITH ranked AS (
                 SELECT prompt_id, prompt_tokens,
                        response_tokens + CASE WHEN finish_reason = 'eos' THEN 1 ELSE 0 END AS steps,
                        DENSE_RANK() OVER (ORDER BY prompt_id) - 1 AS p
                 FROM generations),
               batches AS (SELECT CAST(p AS BIGINT) / 4 AS b, COUNT(*) AS rows, MAX(steps) AS longest FROM ranked GROUP BY 1)
               SELECT CAST((SELECT SUM(rows * longest) FROM batches) AS BIGINT),
                      CAST((SELECT SUM(steps) FROM ranked) AS BIGINT),
                      CAST((SELECT SUM(prompt_tokens) FROM (SELECT DISTINCT prompt_id, prompt_tokens FROM ranked)) AS BIGINT)";
    let batches = crate::util::query(&file, sql).await;
    let value = |i: usize| batches[0].column(i).as_any().downcast_ref::<arrow::array::Int64Array>().unwrap().value(0);
    let static_batches = value(0) as u64;
    assert_eq!(stats["useful_slot_steps"], value(1) as u64, "{stats:?}");
    assert_eq!(stats["useful_slot_steps"], stats["new_tokens"], "every useful step samples one token");
    assert_eq!(stats["prefill_tokens"], value(2) as u64, "each prompt prefilled once, not once per sample");
    assert!(static_batches > value(1) as u64, "static batches would idle: {static_batches} vs {}", value(1));
    // Continuous batching drops ended rows instead of feeding them pad to the batch's end.
    let (useful, slot_steps) = (stats["useful_slot_steps"].as_u64().unwrap(), stats["slot_steps"].as_u64().unwrap());
    let share = useful as f64 / slot_steps as f64;
    assert!(slot_steps < static_batches && share >= 0.95, "{share:.3}: {stats:?}");
}

#[tokio::test]
async fn a_killed_generate_resumes_and_ends_with_the_uninterrupted_rows() {
    let reference_dir = tempfile::tempdir().unwrap();
    let reference = model_pipeline(reference_dir.path(), "");
    run(&reference, RunOptions::default()).await;
    let expected =
        query(&reference, "SELECT generation_id, sample_idx, text FROM generations ORDER BY generation_id").await;

    let dir = tempfile::tempdir().unwrap();
    let file = model_pipeline(dir.path(), "");
    let mut child = Command::new(env!("CARGO_BIN_EXE_croco")).args(["run", file.to_str().unwrap()]).spawn().unwrap();
    let chunks = dir.path().join("root/tables/generations");
    let deadline = Instant::now() + Duration::from_secs(120);
    // Kill as soon as two chunks of generate are committed.
    while count_markers(&chunks) < 2 {
        assert!(Instant::now() < deadline, "generate committed no chunk in time");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let reports = run(&file, RunOptions::default()).await;
    assert!(reports[1].stats["resumed_parts"].as_u64().unwrap() >= 2, "{:?}", reports[1].stats);
    let resumed = query(&file, "SELECT generation_id, sample_idx, text FROM generations ORDER BY generation_id").await;
    assert_eq!(resumed, expected, "no row lost, none duplicated, same text");
}

/// Chunk markers committed so far, over every version and writer scope
/// (`<version>/_chunks/<scope>/<n>.json`).
pub fn count_markers(tables: &Path) -> usize {
    let entries =
        |dir: &Path| std::fs::read_dir(dir).into_iter().flatten().map(|e| e.unwrap().path()).collect::<Vec<_>>();
    entries(tables)
        .iter()
        .flat_map(|version| entries(&version.join("_chunks")))
        // Only finished markers: object_store's local store writes each to a
        // staging file (`NAME#N`) first and renames it, and a kill between the
        // two leaves an uncommitted chunk that an earlier count included.
        .map(|scope| entries(&scope).iter().filter(|p| p.extension().is_some_and(|e| e == "json")).count())
        .sum()
}

#[test]
fn a_missing_onnx_runtime_says_what_to_install() {
    let dir = tempfile::tempdir().unwrap();
    let file = model_pipeline(dir.path(), "");
    let output = Command::new(env!("CARGO_BIN_EXE_croco"))
        .args(["run", file.to_str().unwrap()])
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("stage `generate` failed"), "{message}");
    assert!(message.contains("ORT_DYLIB_PATH=/nonexistent/libonnxruntime.so is not a file"), "{message}");
    assert!(message.contains("pip install onnxruntime==1.31.1"), "{message}");
}

#[tokio::test]
async fn a_bundle_with_a_wrong_weight_shape_or_tokenizer_is_rejected() {
    use croco::model::bundle::{Bundle, Verify};
    use croco::model::policy::Policy;
    use croco::model::runtime::{Device, SessionConfig};
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("policy");
    crate::bundles::copy_dir(&repo().join("data/models/policy"), &copy);
    let manifest = copy.join("croco-model.toml");
    let original = std::fs::read_to_string(&manifest).unwrap();
    let config = SessionConfig { device: Device::Cpu, device_id: 0, threads: 1 };
    let load = || Policy::load(Bundle::open(&copy, Verify::Sizes).unwrap(), &config).err().map(|e| e.to_string());

    std::fs::write(&manifest, original.replacen("shape = [4096, 256]", "shape = [4096, 255]", 1)).unwrap();
    let error = load().expect("a wrong shape fails");
    assert!(
        error.contains("tensor `model.embed_tokens.weight` is F32 [4096, 256]") && error.contains("[4096, 255]"),
        "{error}"
    );

    std::fs::write(&manifest, original.replace("\"<|end|>\" = 5", "\"<|end|>\" = 6")).unwrap();
    let error = load().expect("a tokenizer mismatch fails");
    assert!(error.contains("tokenizer mismatch") && error.contains("<|end|>"), "{error}");
}

#[test]
fn device_cuda_without_a_cuda_provider_fails_instead_of_falling_back() {
    let dir = tempfile::tempdir().unwrap();
    let file = model_pipeline(dir.path(), "");
    let text = std::fs::read_to_string(&file).unwrap().replace("device = \"cpu\"", "device = \"cuda\"");
    std::fs::write(&file, text).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_croco")).args(["run", file.to_str().unwrap()]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(
        message.contains("stage `generate` failed, nothing committed")
            && message.contains("no CUDA execution provider"),
        "{message}"
    );
    assert!(message.contains("CUDA"), "{message}");
}

/// Regression test for crash safety: `kill -9` at ten points spread over
/// generate, score and pairs, each followed by a rerun, ends with exactly the
/// rows an uninterrupted run has — none lost, none duplicated.
#[tokio::test]
async fn kill_nine_at_ten_points_then_rerun_matches_an_uninterrupted_run() {
    let reference_dir = tempfile::tempdir().unwrap();
    let reference = model_pipeline(reference_dir.path(), "");
    let started = Instant::now();
    run(&reference, RunOptions::default()).await;
    let full = started.elapsed();
    let tables =
        "SELECT g.generation_id, g.text, s.reward FROM generations g JOIN scores s USING (generation_id) ORDER BY 1";
    let expected = query(&reference, tables).await;
    let expected_pairs = query(&reference, "SELECT pair_id FROM pairs ORDER BY pair_id").await;

    let dir = tempfile::tempdir().unwrap();
    let file = model_pipeline(dir.path(), "");
    for point in 1..=10u32 {
        // Spread the kills over the length of a full run (the process also
        // pays its start-up, so early points land in planning and prompts).
        let delay = full.mul_f64(f64::from(point) / 11.0);
        let mut child = Command::new(env!("CARGO_BIN_EXE_croco"))
            .args(["run", file.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        child.wait().unwrap();
        // A killed run leaves its lock behind; a cron operator would unlock (or wait for the TTL).
        let _ = std::fs::remove_file(dir.path().join("root").join(croco::pipeline::lock::LOCK_FILE));
    }
    run(&file, RunOptions::default()).await;
    assert_eq!(query(&file, tables).await, expected);
    assert_eq!(query(&file, "SELECT pair_id FROM pairs ORDER BY pair_id").await, expected_pairs);
}

#[tokio::test]
async fn the_prompt_instruction_reaches_the_policy_and_its_key() {
    let generations = |dir: &Path, instruction: &str| {
        let text = format!(
            "{}\n[stages.generate]\nsamples = 1\nmax_new_tokens = 2\n{instruction}\n",
            en_fr_head("instructed", dir, &[("policy", data("models/policy"))])
        );
        write_pipeline(dir, &text)
    };
    let (plain_dir, instructed_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let plain = generations(plain_dir.path(), "");
    let instructed =
        generations(instructed_dir.path(), "instruction = \" Please respond in {language} and nothing else.\"");
    let (plain_reports, instructed_reports) =
        (run(&plain, RunOptions::default()).await, run(&instructed, RunOptions::default()).await);
    assert_eq!(plain_reports[0].key, instructed_reports[0].key, "prompts are the same");
    assert_ne!(plain_reports[1].key, instructed_reports[1].key, "the instruction is part of generate's key");
    let sql = "SELECT prompt_id, prompt_tokens FROM generations ORDER BY prompt_id";
    let (plain_rows, instructed_rows) = (query(&plain, sql).await, query(&instructed, sql).await);
    let tokens =
        |table: &str| -> Vec<i64> { table.lines().filter_map(|l| l.split('|').nth(2)?.trim().parse().ok()).collect() };
    let (before, after) = (tokens(&plain_rows), tokens(&instructed_rows));
    assert!(!before.is_empty() && before.len() == after.len());
    assert!(
        before.iter().zip(&after).all(|(b, a)| a > b),
        "every prompt grew by the instruction:\n{plain_rows}\n{instructed_rows}"
    );
}

#[rstest::rstest]
#[case::skip("", 1, 1)]
#[case::truncate("too_long = \"truncate\"", 0, 1)]
#[tokio::test]
async fn exchanges_longer_than_the_reward_models_context_are_skipped_or_truncated(
    #[case] setting: &str,
    #[case] null_rewards: usize,
    #[case] too_long: u64,
) {
    let dir = tempfile::tempdir().unwrap();
    let prompt = "Explain in simple terms why the sky is blue during the day and red at sunset.";
    let prompt_id = croco::ids::prompt_id("en", prompt);
    // The demo reward model reads 512 tokens: the second response is far longer.
    let long = "The light of the sun scatters in the air. ".repeat(200);
    let responses = dir.path().join("responses.jsonl");
    let line = |k: usize, text: &str| serde_json::json!({"prompt_id": prompt_id, "sample_idx": k, "text": text});
    std::fs::write(&responses, format!("{}\n{}\n", line(0, "Rayleigh scattering."), line(1, &long))).unwrap();
    let text = format!(
        "{}\n[stages.generate]\nsplit = \"all\"\n\n[stages.generate.import]\npath = \"{}\"\n\n[stages.score]\n{setting}\n",
        en_fr_head("too_long", dir.path(), &[("reward", data("models/reward"))]),
        responses.display()
    );
    let file = write_pipeline(dir.path(), &text);
    let reports = run(&file, RunOptions::default()).await;
    assert_eq!(reports[2].stats["too_long_now"], too_long, "{:?}", reports[2].stats);
    let nulls = query(&file, "SELECT COUNT(*) AS n FROM scores WHERE reward IS NULL").await;
    assert!(nulls.contains(&format!("| {null_rewards} ")), "{nulls}");
}
