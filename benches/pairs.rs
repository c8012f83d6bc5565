//! Benchmark: the pairs stage's rule (`sql/pairs.sql` on DataFusion) over
//! 1,000,000 synthetic scored generations (64 per pool), side by side in one
//! run with a plain numpy implementation and with the same SQL in DuckDB;
//! then a no-op `croco run` of an up-to-date pipeline.
//!
//!     cargo bench --bench pairs            (needs python3 with numpy, pyarrow, duckdb)
//!
//! Prints times and ratios; asserts nothing about speed.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Float64Array, Int32Array, RecordBatch, StringArray};
use croco::pipeline::runner::{self, RunOptions};
use croco::pipeline::{Plan, validate};
use croco::spec::pairs::PairsParams;
use croco::stages::pairs::compute;
use croco::store::Table;
use croco::store::session::new_context;
use datafusion::prelude::ParquetReadOptions;
use rand::{Rng, SeedableRng};

use self::common::Better;

const ROWS: usize = 1_000_000;
const POOL: usize = 64;
const REPEATS: usize = 3;

fn main() {
    let dir = tempfile::tempdir().unwrap();
    write_synthetic(dir.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (croco_time, croco_pairs) = runtime.block_on(best_of(|| croco_pairs(dir.path())));
    println!("pairs over {ROWS} scored generations ({POOL} per pool, {} pools), best of {REPEATS}:", ROWS / POOL);
    report("croco (DataFusion, sql/pairs.sql)", croco_time, croco_pairs, croco_time);
    let sql = Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/pairs.sql");
    let numpy = python(&["benches/pairs_numpy.py", dir.path().to_str().unwrap()]);
    let duckdb = python(&["benches/pairs_duckdb.py", dir.path().to_str().unwrap(), sql.to_str().unwrap()]);
    let mut rows = Vec::new();
    for (name, result) in [("numpy (benches/pairs_numpy.py)", numpy), ("DuckDB (same sql/pairs.sql)", duckdb)] {
        match result {
            Some((seconds, pairs)) => {
                report(name, seconds, pairs, croco_time);
                let case = format!("pairs, {ROWS} scored generations, {POOL} per pool");
                let (croco, theirs) = (croco_time.as_secs_f64(), Some(seconds.as_secs_f64()));
                rows.push(common::row(&case, "seconds (best of 3)", croco, name, theirs, Better::Lower));
            }
            None => println!("  {name:<36} unavailable (python3 with numpy, pyarrow, duckdb needed)"),
        }
    }
    runtime.block_on(noop_run());
    common::write_json("pairs", rows);
}

fn report(name: &str, seconds: Duration, pairs: usize, croco: Duration) {
    let rate = ROWS as f64 / seconds.as_secs_f64();
    let ratio = seconds.as_secs_f64() / croco.as_secs_f64();
    println!(
        "  {name:<36} {:>8.3} s  {:>12.0} rows/s  {pairs} pairs  time / croco = {ratio:.2}",
        seconds.as_secs_f64(),
        rate
    );
}

async fn best_of<F, Fut>(mut f: F) -> (Duration, usize)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let mut best = (Duration::MAX, 0);
    for _ in 0..REPEATS {
        let start = Instant::now();
        let pairs = f().await;
        best = best.min((start.elapsed(), pairs));
    }
    best
}

async fn croco_pairs(dir: &Path) -> usize {
    let ctx = new_context();
    for table in ["generations", "scores", "prompts"] {
        let path = dir.join(format!("{table}.parquet"));
        ctx.register_parquet(table, path.to_str().unwrap(), ParquetReadOptions::default()).await.unwrap();
    }
    let batches = compute(&ctx, &PairsParams::default()).await.unwrap().collect().await.unwrap();
    batches.iter().map(RecordBatch::num_rows).sum()
}

fn python(args: &[&str]) -> Option<(Duration, usize)> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).chain([REPEATS.to_string()]).collect();
    let result = common::python_json(&args)?;
    Some((Duration::from_secs_f64(result["seconds"].as_f64()?), result["pairs"].as_u64()? as usize))
}

/// Synthetic tables conforming to croco's schemas: rewards ~ N(0, 1) rounded
/// to 3 decimals (so ties occur), one NaN in 1000.
fn write_synthetic(dir: &Path) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let ids: Vec<String> = (0..ROWS).map(|i| croco::ids::stable_id(&[&i.to_string()])).collect();
    let prompts: Vec<String> = (0..ROWS).map(|i| format!("p{:06}", i / POOL)).collect();
    let rewards: Vec<f64> = (0..ROWS)
        .map(|_| {
            let normal: f64 = (0..12).map(|_| rng.random::<f64>()).sum::<f64>() - 6.0;
            if rng.random_ratio(1, 1000) { f64::NAN } else { (normal * 1000.0).round() / 1000.0 }
        })
        .collect();
    let text = |v: &[String]| Arc::new(StringArray::from(v.to_vec())) as ArrayRef;
    let constant = |value: &str, n: usize| Arc::new(StringArray::from(vec![value; n])) as ArrayRef;
    let generations = Table::Generations.schema().assemble(
        vec![
            ("generation_id", text(&ids)),
            ("prompt_id", text(&prompts)),
            ("source_id", text(&prompts)),
            ("language", constant("en", ROWS)),
            ("sample_idx", Arc::new(Int32Array::from((0..ROWS).map(|i| (i % POOL) as i32).collect::<Vec<_>>()))),
            ("source", constant("on_policy", ROWS)),
            ("policy_id", constant("bench", ROWS)),
            ("text", constant("a synthetic response", ROWS)),
        ],
        ROWS,
    );
    let scores = Table::Scores.schema().assemble(
        vec![
            ("generation_id", text(&ids)),
            ("reward", Arc::new(Float64Array::from(rewards))),
            ("reward_model", constant("bench", ROWS)),
        ],
        ROWS,
    );
    let unique: Vec<String> = (0..ROWS / POOL).map(|p| format!("p{p:06}")).collect();
    let n = unique.len();
    let prompts = Table::Prompts.schema().assemble(
        vec![
            ("prompt_id", text(&unique)),
            ("source_id", text(&unique)),
            ("language", constant("en", n)),
            ("text", constant("a prompt", n)),
            ("split", constant("train", n)),
        ],
        n,
    );
    for (name, batch) in [("generations", generations), ("scores", scores), ("prompts", prompts)] {
        let batch = batch.unwrap();
        let file = std::fs::File::create(dir.join(format!("{name}.parquet"))).unwrap();
        let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    }
}

/// Times `croco run` of the demo pipeline once it is up to date: planning,
/// key derivation and manifest look-ups only.
async fn noop_run() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(repo.join("pipelines/demo.toml"))
        .unwrap()
        .replace("\"../.croco/demo\"", &format!("\"{}\"", dir.path().join("root").display()))
        .replace("\"../data/", &format!("\"{}/data/", repo.display()));
    let file = dir.path().join("demo.toml");
    std::fs::write(&file, text).unwrap();
    let plan = Plan::build(validate::load(&file).unwrap()).await.unwrap();
    let start = Instant::now();
    runner::run(&plan, RunOptions::default()).await.unwrap();
    let full = start.elapsed();
    let mut noop = Duration::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        let plan = Plan::build(validate::load(&file).unwrap()).await.unwrap();
        runner::run(&plan, RunOptions::default()).await.unwrap();
        noop = noop.min(start.elapsed());
    }
    println!(
        "no-op croco run of the up-to-date demo pipeline: {:.1} ms (full run {:.1} ms, ratio {:.3})",
        noop.as_secs_f64() * 1e3,
        full.as_secs_f64() * 1e3,
        noop.as_secs_f64() / full.as_secs_f64()
    );
}
