//! Bad input files get clear errors naming the file, column or row, and a
//! failed stage leaves nothing behind; odd rows are dropped and counted.

use std::path::{Path, PathBuf};

use croco::pipeline::runner::{self, RunOptions};
use croco::spec::StageName;

use crate::util::{demo_pipeline_text, plan, run, write_pipeline};

/// A pipeline over the given prompt, generation and score files (paths
/// relative to `dir`), rooted in `dir/root`.
fn pipeline(dir: &Path, prompts: &str, generations: &str, scores: &str, languages: &str) -> PathBuf {
    let text = format!(
        r#"[run]
name = "t"
root = "root"
languages = [{languages}]

[stages.prompts]
source = "{prompts}"
columns = {{ source_id = "source_id" }}

[stages.generate.import]
path = "{generations}"

[stages.score.import]
path = "{scores}"

[stages.pairs]
"#
    );
    write_pipeline(dir, &text)
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn id(language: &str, text: &str) -> String {
    croco::ids::prompt_id(language, text)
}

/// Runs and returns the error message.
async fn run_error(file: &Path) -> String {
    let planned = plan(file).await;
    runner::run(&planned, RunOptions::default()).await.unwrap_err().to_string()
}

fn committed(root: &Path, table: &str) -> bool {
    crate::util::committed_versions(root, table) > 0
}

fn files_under(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries.map(|e| e.unwrap().path()).map(|p| if p.is_dir() { files_under(&p) } else { 1 }).sum()
    })
}

const GOOD_PROMPTS: &str = r#"{"text": "Hello", "language": "en", "source_id": "a"}
{"text": "Bonjour", "language": "fr", "source_id": "a"}
"#;

#[tokio::test]
async fn prompts_ingestion_drops_and_counts_empty_duplicate_and_foreign_rows() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = concat!(
        r#"{"text": "Hello", "language": "en", "source_id": "a"}"#,
        "\n",
        r#"{"text": "  Hello  ", "language": "EN", "source_id": "a"}"#,
        "\n",
        r#"{"text": "   ", "language": "en", "source_id": "b"}"#,
        "\n",
        r#"{"text": "Hallo", "language": "de", "source_id": "a"}"#,
        "\n",
        r#"{"text": "Bonjour", "language": "fr", "source_id": "a"}"#,
        "\n",
    );
    write(dir.path(), "p.jsonl", prompts);
    let text = "[run]\nname = \"t\"\nroot = \"root\"\nlanguages = [\"en\", \"fr\"]\n\n[stages.prompts]\nsource = \"p.jsonl\"\ncolumns = { source_id = \"source_id\" }\n";
    let file = write_pipeline(dir.path(), text);
    let reports = run(&file, RunOptions::default()).await;
    let stats = &reports[0].stats;
    assert_eq!(reports[0].rows, 2);
    for (name, value) in
        [("rows_read", 5), ("dropped_empty", 1), ("dropped_duplicate", 1), ("dropped_other_language", 1)]
    {
        assert_eq!(stats[name], value, "{name} in {stats:?}");
    }
    assert_eq!(stats["dropped_languages"]["de"], 1);
}

#[tokio::test]
async fn an_unknown_language_code_names_the_line_and_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "p.jsonl",
        "{\"text\": \"Hi\", \"language\": \"en\", \"source_id\": \"a\"}\n{\"text\": \"Hej\", \"language\": \"xx\", \"source_id\": \"a\"}\n",
    );
    let file = pipeline(dir.path(), "p.jsonl", "g.jsonl", "g.jsonl", "\"en\"");
    write(dir.path(), "g.jsonl", "");
    let error = run_error(&file).await;
    assert!(error.contains("p.jsonl: line 2: language `xx` is not an ISO 639-1 code"), "{error}");
    assert!(!committed(&dir.path().join("root"), "prompts"));
    assert_eq!(files_under(&dir.path().join("root")), 0, "a failed stage leaves no parts behind");
}

#[tokio::test]
async fn a_missing_mapped_column_names_file_and_column() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.jsonl", "{\"prompt\": \"Hi\", \"language\": \"en\", \"source_id\": \"a\"}\n");
    write(dir.path(), "g.jsonl", "");
    let file = pipeline(dir.path(), "p.jsonl", "g.jsonl", "g.jsonl", "\"en\"");
    let error = run_error(&file).await;
    assert!(
        error.contains("p.jsonl: column `text` (text): missing; the file has columns: language, prompt, source_id"),
        "{error}"
    );
}

#[tokio::test]
async fn a_nan_reward_names_its_row_and_keeps_earlier_stages() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.jsonl", GOOD_PROMPTS);
    let en = id("en", "Hello");
    write(dir.path(), "g.csv", &format!("prompt_id,sample_idx,text,reward\n{en},0,one,1.5\n{en},1,two,NaN\n"));
    let file = pipeline(dir.path(), "p.jsonl", "g.csv", "g.csv", "\"en\", \"fr\"");
    let error = run_error(&file).await;
    assert!(error.contains("stage `score` failed, nothing committed"), "{error}");
    assert!(error.contains(&format!("row prompt_id={en}, sample_idx=1: column `reward` (reward) is NaN")), "{error}");
    let root = dir.path().join("root");
    assert!(committed(&root, "prompts") && committed(&root, "generations"));
    assert!(!committed(&root, "scores") && !committed(&root, "pairs"));
}

#[tokio::test]
async fn a_non_numeric_reward_column_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.jsonl", GOOD_PROMPTS);
    let en = id("en", "Hello");
    write(
        dir.path(),
        "g.jsonl",
        &format!("{{\"prompt_id\": \"{en}\", \"sample_idx\": 0, \"text\": \"x\", \"reward\": \"high\"}}\n"),
    );
    let file = pipeline(dir.path(), "p.jsonl", "g.jsonl", "g.jsonl", "\"en\", \"fr\"");
    let error = run_error(&file).await;
    assert!(error.contains("g.jsonl: column `reward` (reward): holds Utf8, expected numbers"), "{error}");
}

#[tokio::test]
async fn duplicate_samples_and_unknown_prompts_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.jsonl", GOOD_PROMPTS);
    let en = id("en", "Hello");
    let row = |k: u32| format!("{{\"prompt_id\": \"{en}\", \"sample_idx\": {k}, \"text\": \"x\", \"reward\": 1.0}}\n");
    write(dir.path(), "dup.jsonl", &(row(0) + &row(0)));
    let file = pipeline(dir.path(), "p.jsonl", "dup.jsonl", "dup.jsonl", "\"en\", \"fr\"");
    let error = run_error(&file).await;
    assert!(
        error.contains(&format!(
            "row prompt_id={en}, sample_idx=0, copies=2: (prompt_id, sample_idx) occurs more than once"
        )),
        "{error}"
    );

    write(
        dir.path(),
        "orphans.jsonl",
        "{\"prompt_id\": \"0000000000000000\", \"sample_idx\": 0, \"text\": \"x\", \"reward\": 1.0}\n",
    );
    let file = pipeline(dir.path(), "p.jsonl", "orphans.jsonl", "orphans.jsonl", "\"en\", \"fr\"");
    let error = run_error(&file).await;
    assert!(error.contains("none of its 1 rows has a prompt_id of the prompts table"), "{error}");
}

#[tokio::test]
async fn a_missing_input_file_names_the_pipeline_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline(dir.path(), "nowhere.jsonl", "g.jsonl", "g.jsonl", "\"en\"");
    let loaded = croco::pipeline::validate::load(&file).unwrap();
    let error = croco::pipeline::Plan::build(loaded).await.unwrap_err().to_string();
    assert!(error.contains("`stages.prompts.source`: cannot read `nowhere.jsonl`"), "{error}");
}

#[tokio::test]
async fn the_split_keeps_translations_together_and_all_lang_pairs_once_per_source() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let file = write_pipeline(dir.path(), &demo_pipeline_text(root.to_str().unwrap(), "", "pool = \"all_lang\""));
    let reports = run(&file, RunOptions::default()).await;
    let planned = plan(&file).await;
    let ctx = croco::pipeline::session::pipeline_session(&planned).await.unwrap();
    // Imported responses to held-out prompts are not imported (they would be
    // tuned on, then evaluated on): one pair per training source prompt.
    let train_sources = "SELECT COUNT(DISTINCT source_id) FROM prompts WHERE split = 'train'";
    let batches = ctx.sql(train_sources).await.unwrap().collect().await.unwrap();
    let sources = batches[0].column(0).as_any().downcast_ref::<arrow::array::Int64Array>().unwrap().value(0);
    assert!((10..24).contains(&sources), "{sources} of the 24 sources train");
    assert_eq!(reports[3].rows, sources as u64, "one pair per training source prompt");
    assert!(reports[1].stats["dropped_other_split"].as_u64().unwrap() > 0, "{:?}", reports[1].stats);
    let query = "SELECT COUNT(DISTINCT split) AS splits FROM prompts GROUP BY source_id ORDER BY splits DESC LIMIT 1";
    let batches = ctx.sql(query).await.unwrap().collect().await.unwrap();
    let text = arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string();
    assert!(text.contains("| 1      |"), "every source in one split:\n{text}");
    let eval = ctx
        .sql("SELECT COUNT(DISTINCT source_id) FROM prompts WHERE split = 'eval'")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let eval = arrow::util::pretty::pretty_format_batches(&eval).unwrap().to_string();
    assert!(!eval.contains("| 0 "), "some sources are held out:\n{eval}");
    assert_eq!(planned.stage(StageName::Pairs).unwrap().params["pool"], "all_lang");
}
