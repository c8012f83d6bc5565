//! Shards: N shard runs of the model stages plus a plain run that merges them
//! equal one unsharded run, row for row; a plain run refuses while shards
//! are missing.

use croco::pipeline::runner::{self, RunError, RunOptions};
use croco::store::shard::Shard;

use crate::model_stages::model_pipeline;
use crate::util::{plan, run};

async fn rows(file: &std::path::Path, sql: &str) -> String {
    let planned = plan(file).await;
    let ctx = croco::pipeline::session::pipeline_session(&planned).await.unwrap();
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string()
}

// Rewards are compared to 3 decimals: shards batch other sequences together,
// and padding moves float32 scores by ~1e-6.
const TABLES: &str = "SELECT g.generation_id, g.text, ROUND(s.reward, 3) AS reward FROM generations g JOIN scores s USING (generation_id) ORDER BY 1";

#[tokio::test]
async fn three_shards_and_a_merge_equal_one_unsharded_run() {
    let reference_dir = tempfile::tempdir().unwrap();
    let reference = model_pipeline(reference_dir.path(), "");
    run(&reference, RunOptions::default()).await;

    let dir = tempfile::tempdir().unwrap();
    let file = model_pipeline(dir.path(), "");
    let mut shard_rows = 0;
    for index in [2, 0] {
        let reports = run(&file, RunOptions { shard: Some(Shard { index, count: 3 }), ..Default::default() }).await;
        let statuses: Vec<&str> = reports.iter().map(|r| r.status.name()).collect();
        assert_eq!(statuses[1..], ["shard", "shard", "deferred"], "generate and score do their slice, pairs waits");
        shard_rows += reports[1].rows;
    }
    let planned = plan(&file).await;
    match runner::run(&planned, RunOptions::default()).await {
        Err(error @ RunError::ShardsMissing { .. }) => assert!(error.to_string().contains("shard(s) [1]"), "{error}"),
        other => panic!("a plain run must refuse while shard 1 is missing: {:?}", other.map(|r| r.len())),
    }
    let reports = run(&file, RunOptions { shard: Some(Shard { index: 1, count: 3 }), ..Default::default() }).await;
    shard_rows += reports[1].rows;

    let merged = run(&file, RunOptions::default()).await;
    let statuses: Vec<&str> = merged.iter().map(|r| r.status.name()).collect();
    assert_eq!(statuses, ["skipped", "merged", "merged", "ran"]);
    assert_eq!(merged[1].rows, shard_rows);
    assert_eq!(rows(&file, TABLES).await, rows(&reference, TABLES).await, "same rows as one unsharded run");
    let pairs = "SELECT pair_id FROM pairs ORDER BY pair_id";
    assert_eq!(rows(&file, pairs).await, rows(&reference, pairs).await);
}

#[test]
fn shards_come_from_the_scheduler_environment() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_croco"))
        .args(["run", "no-such-file.toml"])
        .env("JOB_COMPLETION_INDEX", "1")
        .env_remove("CROCO_SHARD_COUNT")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("set CROCO_SHARD_COUNT"));
}
