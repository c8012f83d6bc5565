//! The same table round trips on every storage provider: local disk,
//! process memory, and a real S3-compatible server (moto) on loopback.
//!
//! The S3 cases need `CROCO_TEST_S3_ENDPOINT` (e.g. `http://127.0.0.1:5055`)
//! pointing at a running `moto_server`; `.ci/run` installs and starts one.

use std::io::{Read, Write};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use croco::pipeline::runner::RunOptions;
use croco::store::manifest::{self, Manifest};
use croco::store::session::new_context;
use croco::store::storage::StorageOptions;
use croco::store::tables::{TableWriter, register_version};
use croco::store::{Storage, Table};
use rstest::rstest;

use crate::util::{demo_pipeline_text, ran, run, write_pipeline};

/// A storage root of the given provider, unique to the calling test.
pub struct Root {
    pub url: String,
    pub options: StorageOptions,
    _dir: Option<tempfile::TempDir>,
}

pub fn root(provider: &str, test: &str) -> Root {
    match provider {
        "file" => {
            let dir = tempfile::tempdir().unwrap();
            Root {
                url: format!("file://{}/root", dir.path().display()),
                options: StorageOptions::new(),
                _dir: Some(dir),
            }
        }
        "memory" => Root { url: format!("memory://{test}/root"), options: StorageOptions::new(), _dir: None },
        "s3" => {
            let endpoint = std::env::var("CROCO_TEST_S3_ENDPOINT")
                .expect("CROCO_TEST_S3_ENDPOINT must point at a moto_server (run the tests through .ci/run)");
            let bucket = test.replace('_', "-");
            create_bucket(&endpoint, &bucket);
            let options = [
                ("endpoint", endpoint.as_str()),
                ("allow_http", "true"),
                ("region", "us-east-1"),
                ("access_key_id", "croco-test"),
                ("secret_access_key", "croco-test-secret"),
            ];
            let options = options.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            Root { url: format!("s3://{bucket}/croco"), options, _dir: None }
        }
        other => panic!("unknown provider {other}"),
    }
}

/// Creates a bucket with one plain HTTP PUT (moto needs no signature).
fn create_bucket(endpoint: &str, bucket: &str) {
    let host = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(host).unwrap_or_else(|e| panic!("moto at {host}: {e}"));
    write!(stream, "PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "creating bucket {bucket}: {response}");
}

fn scores_batch(range: std::ops::Range<usize>) -> RecordBatch {
    let ids: ArrayRef = Arc::new(StringArray::from(range.clone().map(|i| format!("g{i:05}")).collect::<Vec<_>>()));
    let rewards: ArrayRef = Arc::new(Float64Array::from(range.clone().map(|i| i as f64 / 10.0).collect::<Vec<_>>()));
    let model: ArrayRef = Arc::new(StringArray::from(vec!["rm"; range.len()]));
    Table::Scores
        .schema()
        .assemble(vec![("generation_id", ids), ("reward", rewards), ("reward_model", model)], range.len())
        .unwrap()
}

fn manifest_for(key: &str, parts: Vec<croco::store::tables::PartInfo>) -> Manifest {
    Manifest {
        table: "scores".into(),
        key: key.into(),
        stage: "score".into(),
        schema_version: 1,
        params: serde_json::json!({}),
        inputs: Default::default(),
        external: vec![],
        models: Default::default(),
        rows: parts.iter().map(|p| p.rows).sum(),
        parts,
        artifacts: vec![],
        stats: Default::default(),
        run: "test".into(),
        started_at: "2026-11-26T00:00:00Z".into(),
        committed_at: "2026-11-26T00:00:01Z".into(),
        croco_version: "test".into(),
    }
}

#[rstest]
#[case::file("file")]
#[case::memory("memory")]
#[case::s3("s3")]
#[tokio::test]
async fn a_table_version_round_trips_and_is_invisible_until_committed(#[case] provider: &str) {
    let root = root(provider, &format!("roundtrip_{provider}"));
    let storage = Storage::open(&root.url, std::path::Path::new("."), &root.options, &Default::default()).unwrap();
    let mut writer = TableWriter::new(&storage, Table::Scores, "k1", "n1").with_rows_per_part(400);
    writer.write(&scores_batch(0..700)).await.unwrap();
    writer.write(&scores_batch(700..1000)).await.unwrap();
    let parts = writer.finish().await.unwrap();
    assert_eq!(parts.len(), 3, "1000 rows at 400 per part");

    // Parts alone are not a table version.
    assert!(manifest::list_versions(&storage, Table::Scores).await.unwrap().is_empty());
    manifest::commit(&storage, &manifest_for("k1", parts.clone())).await.unwrap();
    let versions = manifest::list_versions(&storage, Table::Scores).await.unwrap();
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0].parts, parts);

    let ctx = new_context();
    register_version(&ctx, &storage, Table::Scores, "k1", &parts, "scores").await.unwrap();
    let batches =
        ctx.sql("SELECT COUNT(*), SUM(reward), MIN(generation_id) FROM scores").await.unwrap().collect().await.unwrap();
    let text = arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string();
    assert!(text.contains("| 1000  ") && text.contains("49950.0") && text.contains("g00000"), "{text}");
}

#[rstest]
#[case::file("file")]
#[case::memory("memory")]
#[case::s3("s3")]
#[tokio::test]
async fn the_demo_pipeline_runs_on_every_provider(#[case] provider: &str) {
    let root = root(provider, &format!("pipeline_{provider}"));
    let dir = tempfile::tempdir().unwrap();
    let mut text = demo_pipeline_text(&root.url, "", "");
    if !root.options.is_empty() {
        let options: Vec<String> = root.options.iter().map(|(k, v)| format!("{k} = \"{v}\"")).collect();
        text = text.replacen(
            "[stages.prompts]",
            &format!("storage = {{ {} }}\n\n[stages.prompts]", options.join(", ")),
            1,
        );
    }
    let file = write_pipeline(dir.path(), &text);
    let reports = run(&file, RunOptions::default()).await;
    assert_eq!(ran(&reports), ["prompts", "generate", "score", "pairs"]);
    let rows: Vec<u64> = reports.iter().map(|r| r.rows).collect();
    // Imports answer the train split only: 270 of the 360 prompts, 8 responses each.
    assert_eq!(rows, [360, 2160, 2160, 270]);
    assert!(ran(&run(&file, RunOptions::default()).await).is_empty(), "a rerun finds everything current");
}

#[tokio::test]
async fn a_part_with_a_wrong_schema_is_rejected_naming_file_and_column() {
    let root = root("memory", "wrong_schema");
    let storage = Storage::open(&root.url, std::path::Path::new("."), &root.options, &Default::default()).unwrap();
    // Write a prompts-shaped part where a scores version should be.
    let mut writer = TableWriter::new(&storage, Table::Prompts, "k", "n");
    let batch = Table::Prompts
        .schema()
        .assemble(
            ["prompt_id", "source_id", "language", "text", "split"]
                .map(|name| (name, Arc::new(StringArray::from(vec!["x"])) as ArrayRef))
                .to_vec(),
            1,
        )
        .unwrap();
    writer.write(&batch).await.unwrap();
    let parts = writer.finish().await.unwrap();
    let moved = format!("tables/scores/k/{}", parts[0].file);
    let bytes =
        storage.get_if_exists(&storage.path(&format!("tables/prompts/k/{}", parts[0].file))).await.unwrap().unwrap();
    storage.put(&storage.path(&moved), bytes).await.unwrap();
    let error = register_version(&new_context(), &storage, Table::Scores, "k", &parts, "scores").await.unwrap_err();
    let message = error.to_string();
    assert!(message.contains("table `scores`") && message.contains(&parts[0].file), "{message}");
    assert!(
        message.contains("column `generation_id` is missing") || message.contains("is not in the schema"),
        "{message}"
    );
}

#[rstest]
#[case::memory("memory")]
#[case::s3("s3")]
#[tokio::test]
async fn prompts_are_read_from_object_storage(#[case] provider: &str) {
    let root = root(provider, &format!("input_{provider}"));
    let storage = Storage::open(&root.url, std::path::Path::new("."), &root.options, &Default::default()).unwrap();
    let prompts = std::fs::read(crate::util::repo().join("data/prompts/demo.jsonl")).unwrap();
    storage.put(&storage.path("inputs/prompts.jsonl"), prompts.into()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let options: Vec<String> = root.options.iter().map(|(k, v)| format!("{k} = \"{v}\"")).collect();
    let storage_line =
        if options.is_empty() { String::new() } else { format!("storage = {{ {} }}", options.join(", ")) };
    let text = format!(
        "[run]\nname = \"t\"\nroot = \"{url}/out\"\nlanguages = [\"en\", \"fr\"]\n{storage_line}\n\n[stages.prompts]\nsource = \"{url}/inputs/prompts.jsonl\"\ncolumns = {{ text = \"prompt\", source_id = \"source_id\" }}\n",
        url = root.url
    );
    let reports = run(&write_pipeline(dir.path(), &text), RunOptions::default()).await;
    assert_eq!(reports[0].rows, 48, "24 source prompts in en and fr");
    assert_eq!(reports[0].stats["dropped_other_language"], 13 * 24);
}
