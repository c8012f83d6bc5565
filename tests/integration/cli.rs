//! The `croco` binary: exit codes, output formats, read-only SQL.

use std::path::Path;
use std::process::{Command, Output};

use crate::util::{demo_pipeline_text, repo, write_pipeline};

fn croco(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_croco")).args(args).output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A demo pipeline in a temporary directory, already run.
fn demo_run(dir: &Path) -> String {
    let root = dir.join("root");
    let file = write_pipeline(dir, &demo_pipeline_text(root.to_str().unwrap(), "", ""));
    let file = file.to_str().unwrap().to_string();
    let output = croco(&["run", &file, "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let summary: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    let statuses: Vec<&str> =
        summary["stages"].as_array().unwrap().iter().map(|s| s["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["ran"; 4]);
    file
}

#[test]
fn validate_exits_2_with_positions_for_a_bad_file() {
    let bad = repo().join("tests/fixtures/bad_pipelines/08-unknown-language-code.toml");
    let output = croco(&["validate", bad.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("08-unknown-language-code.toml:5:20: `run.languages[1]`"), "{}", stderr(&output));
    let good = repo().join("pipelines/demo.toml");
    let output = croco(&["validate", good.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn schema_prints_the_pipeline_format_and_table_schemas() {
    let output = croco(&["schema", "pipeline"]);
    let schema: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert!(schema["properties"]["stages"].is_object() && schema["properties"]["run"].is_object());
    let output = croco(&["schema", "pairs"]);
    let pairs: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(pairs["columns"][0]["name"], "pair_id");
    assert_eq!(croco(&["schema", "nonsense"]).status.code(), Some(2));
}

#[test]
fn status_then_sql_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let file = demo_run(dir.path());

    let status: serde_json::Value = serde_json::from_str(&stdout(&croco(&["status", &file, "--json"]))).unwrap();
    let states: Vec<&str> = status["stages"].as_array().unwrap().iter().map(|s| s["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["current"; 4]);

    let csv = croco(&["sql", &file, "SELECT COUNT(*) AS n FROM pairs", "--format", "csv"]);
    assert_eq!(stdout(&csv), "n\n270\n", "{}", stderr(&csv)); // one pair per training prompt

    let json = croco(&[
        "sql",
        &file,
        "SELECT language, COUNT(*) AS n FROM prompts GROUP BY language ORDER BY language LIMIT 1",
        "--format",
        "json",
    ]);
    assert_eq!(stdout(&json).trim(), r#"{"language":"cy","n":24}"#);

    let query_file = dir.path().join("q.sql");
    std::fs::write(&query_file, "SELECT MIN(margin) > 0 AS positive FROM pairs").unwrap();
    let table = croco(&["sql", &file, "-f", query_file.to_str().unwrap()]);
    assert!(stdout(&table).contains("| true     |"), "{}", stdout(&table));

    let parquet = dir.path().join("pairs.parquet");
    let out =
        croco(&["sql", &file, "SELECT * FROM pairs", "--format", "parquet", "--output", parquet.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let back = croco(&["sql", &file, &format!("SELECT COUNT(*) AS n FROM '{}'", parquet.display()), "--format", "csv"]);
    assert_eq!(stdout(&back), "n\n270\n", "{}", stderr(&back));
}

#[test]
fn sql_is_read_only_unless_asked_and_sees_old_versions() {
    let dir = tempfile::tempdir().unwrap();
    let file = demo_run(dir.path());
    let refused = croco(&["sql", &file, "CREATE TABLE t AS SELECT 1"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("read-only unless --allow-writes"), "{}", stderr(&refused));
    let copy = dir.path().join("copy.csv");
    let copy_sql = format!("COPY (SELECT 1 AS one) TO '{}' STORED AS CSV", copy.display());
    assert_eq!(croco(&["sql", &file, &copy_sql]).status.code(), Some(1));
    assert!(!copy.exists());
    assert!(croco(&["sql", &file, &copy_sql, "--allow-writes"]).status.success());
    assert!(copy.exists());

    // A second pairs setting: both versions are queryable side by side.
    let status: serde_json::Value = serde_json::from_str(&stdout(&croco(&["status", &file, "--json"]))).unwrap();
    let old_key = status["stages"][3]["key"].as_str().unwrap().to_string();
    let text =
        std::fs::read_to_string(&file).unwrap().replace("[stages.pairs]\n", "[stages.pairs]\nrejected = \"q1\"\n");
    std::fs::write(&file, text).unwrap();
    let rerun: serde_json::Value = serde_json::from_str(&stdout(&croco(&["run", &file, "--json"]))).unwrap();
    assert_eq!(rerun["stages"][3]["status"], "ran");
    let query = format!(
        "SELECT (SELECT AVG(margin) FROM pairs) < (SELECT AVG(margin) FROM \"pairs@{old_key}\") AS q1_narrows_margins"
    );
    let compared = croco(&["sql", &file, &query, "--format", "csv"]);
    assert_eq!(stdout(&compared), "q1_narrows_margins\ntrue\n", "{}", stderr(&compared));
}

#[test]
fn a_failing_stage_exits_1_with_one_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.jsonl"), "{\"text\": \"Hi\", \"language\": \"zz\"}\n").unwrap();
    let file = write_pipeline(
        dir.path(),
        "[run]\nname = \"t\"\nroot = \"root\"\nlanguages = [\"en\"]\n\n[stages.prompts]\nsource = \"p.jsonl\"\n",
    );
    let output = croco(&["run", file.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(message.starts_with("error: stage `prompts` failed, nothing committed:"), "{message}");
    assert!(message.contains("line 1: language `zz` is not an ISO 639-1 code"), "{message}");
}

#[test]
fn logs_can_be_json_lines_for_collectors() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let file = write_pipeline(dir.path(), &demo_pipeline_text(root.to_str().unwrap(), "", ""));
    let output = croco(&["run", file.to_str().unwrap(), "-v", "--log-format", "json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let lines: Vec<serde_json::Value> = stderr(&output).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(
        lines.iter().any(|l| l["fields"]["message"] == "committed" && l["fields"]["stage"] == "pairs"),
        "{lines:?}"
    );
}

/// Regression: one version written under an older schema made every query fail.
#[test]
fn sql_skips_old_versions_whose_schema_changed() {
    let dir = tempfile::tempdir().unwrap();
    let file = demo_run(dir.path());
    let status: serde_json::Value = serde_json::from_str(&stdout(&croco(&["status", &file, "--json"]))).unwrap();
    let prompts_key = status["stages"][0]["key"].as_str().unwrap();
    let root = dir.path().join("root/tables");
    let manifest_path = root.join("prompts").join(prompts_key).join("_manifest.json");
    let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    let old = root.join("scores/00000000old00000");
    std::fs::create_dir_all(&old).unwrap();
    for part in manifest["parts"].as_array().unwrap() {
        let name = part["file"].as_str().unwrap();
        std::fs::copy(root.join("prompts").join(prompts_key).join(name), old.join(name)).unwrap();
    }
    manifest["table"] = "scores".into();
    manifest["key"] = "00000000old00000".into();
    manifest["schema_version"] = 0.into();
    std::fs::write(old.join("_manifest.json"), serde_json::to_vec(&manifest).unwrap()).unwrap();
    let output = croco(&["sql", &file, "SELECT COUNT(*) AS n FROM scores", "--format", "csv"]);
    assert_eq!(stdout(&output), "n\n2160\n", "{}", stderr(&output)); // the train split's 270 prompts x 8
    assert!(
        stderr(&output).contains("not registering `scores@00000000old00000` (schema version 0)"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn plan_prints_each_model_stage_and_refuses_what_does_not_fit() {
    let demo = crate::util::repo().join("pipelines/demo.toml");
    let demo = demo.to_str().unwrap();
    let output = croco(&["plan", demo, "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let plan: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    let stages = plan["variants"][0]["stages"].as_array().unwrap();
    let generate = stages.iter().find(|s| s["stage"] == "generate").expect("generate is planned");
    let weights = std::fs::metadata(crate::util::repo().join("data/models/policy/model.safetensors")).unwrap().len();
    // The weights are the manifest's tensors: the safetensors file less its header.
    assert!(
        generate["weights"].as_u64().unwrap() <= weights && generate["weights"].as_u64().unwrap() > weights * 9 / 10
    );
    assert!(generate["kv_cache"].as_u64().unwrap() > 0);
    let output = croco(&["plan", demo, "--device-memory", "100MiB"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stdout(&output).contains("DOES NOT FIT"), "{}", stdout(&output));
    assert!(stderr(&output).contains("stages.generate.slots"), "{}", stderr(&output));
}

/// `croco plan`'s host figure against the peak memory `croco run --json`
/// reports, for generate and score on the CPU: within 25 %. The prompts fill
/// the planned context (448 prompt tokens + 64 new = the demo's 512), so the
/// runs reach the sizes the plan bounds: every slot's cache at full length,
/// score batches at their token budget.
#[test]
fn plan_predicts_the_peak_memory_of_generate_and_score_within_a_quarter() {
    let dir = tempfile::tempdir().unwrap();
    let file = crate::memory_plan_pipeline::write(
        dir.path(),
        &crate::util::data("models/policy"),
        &crate::util::data("models/reward"),
    );
    let file = file.to_str().unwrap();
    let output = croco(&["plan", file, "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let plan: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    let predicted = |stage: &str| {
        let stages = plan["variants"][0]["stages"].as_array().unwrap();
        stages.iter().find(|s| s["stage"] == stage).unwrap()["host"].as_u64().unwrap() as f64
    };
    assert!(croco(&["run", file, "--stage", "prompts"]).status.success());
    for stage in ["generate", "score"] {
        let output = croco(&["run", file, "--stage", stage, "--json"]);
        assert!(output.status.success(), "{}", stderr(&output));
        let report: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
        let measured = report["peak_rss_bytes"].as_u64().unwrap() as f64;
        let ratio = predicted(stage) / measured;
        assert!(
            (0.75..1.25).contains(&ratio),
            "{stage}: planned {} MB, measured {} MB",
            predicted(stage) / 1e6,
            measured / 1e6
        );
    }
}
