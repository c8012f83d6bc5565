//! Benchmark: the memory of the model stages.
//!
//! (1) generate streams its prompts. Peak resident memory of `croco run
//! --stage generate` (the demo policy, one sample of two new tokens per
//! prompt, prompts read and committed part by part) over 100,000 prompts,
//! against the same run over 1,000: `ratio` = peak at 1,000 ÷ peak at
//! 100,000, so 1 means flat and the issue's bound (flat within 20 %) is a
//! ratio of at least 0.83.
//!
//! (2) `croco plan` predicts it. For generate and score, the plan's host
//! figure against the peak `croco run --stage … --json` reports, with
//! prompts that fill the planned context (448 prompt tokens + 64 new, 8
//! samples of 8 prompts at a time): the demo bundles, and a ~0.5 B policy
//! and reward model when `CROCO_BENCH_LLAMA_0_5B` and
//! `CROCO_BENCH_REWARD_0_5B` name them (`tools/bench/make_checkpoint.py
//! --shape llama-0.5b [--reward]`, then `python -m tools.export policy|reward
//! --no-train`). Each row's `croco` is the relative error |planned − measured|
//! ÷ measured, its reference the issue's bound of 25 %.
//!
//!     cargo bench --bench generate_memory
//!
//! Each run is a child process of the release `croco` binary; the prompts
//! stage runs first, unmeasured.

mod common;
#[path = "../tests/shared/memory_plan_pipeline.rs"]
mod memory_plan_pipeline;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use self::common::Better;

const COUNTS: [usize; 2] = [1_000, 100_000];

fn main() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Cargo builds the binary, in the bench's profile, for every benchmark.
    let croco = PathBuf::from(env!("CARGO_BIN_EXE_croco"));
    let mut peaks = Vec::new();
    println!("generate's peak memory against its prompt count (demo policy, 1 sample x 2 tokens per prompt)");
    for count in COUNTS {
        let dir = tempfile::tempdir().unwrap();
        let pipeline = write_world(dir.path(), repo, count);
        let pipeline = pipeline.to_str().unwrap();
        let prompts = Command::new(&croco).args(["run", pipeline, "--stage", "prompts"]).output().unwrap();
        assert!(prompts.status.success(), "{}", String::from_utf8_lossy(&prompts.stderr));
        let args: Vec<String> =
            ["tools/bench/timed.py", croco.to_str().unwrap(), "run", pipeline, "--stage", "generate"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        let measured = common::python_json(&args).expect("the generate run");
        let (seconds, peak) = (measured["seconds"].as_f64().unwrap(), measured["peak_rss_mb"].as_f64().unwrap());
        println!("  {count:>7} prompts: peak RSS {peak:.0} MB, {seconds:.0} s");
        peaks.push(peak);
    }
    let mut rows = vec![common::row(
        &format!("generate, {} prompts, 1 sample x 2 new tokens each (demo policy)", COUNTS[1]),
        "peak RSS MB",
        peaks[1],
        &format!("the same run over {} prompts", COUNTS[0]),
        Some(peaks[0]),
        Better::Lower,
    )];
    let demo = (repo.join("data/models/policy"), repo.join("data/models/reward"));
    let larger = match (std::env::var("CROCO_BENCH_LLAMA_0_5B"), std::env::var("CROCO_BENCH_REWARD_0_5B")) {
        (Ok(policy), Ok(reward)) => Some((policy.into(), reward.into())),
        _ => None,
    };
    println!("croco plan's host figure against the measured peak (prompts filling the planned context)");
    for (name, models) in std::iter::once(("demo bundles", demo)).chain(larger.map(|m| ("~0.5 B bundles", m))) {
        rows.extend(plan_against_measured(&croco, name, &models));
    }
    common::write_json("generate_memory", rows);
}

/// The plan's host figure for generate and score against their measured
/// peaks, on prompts that fill the planned context.
fn plan_against_measured(croco: &Path, name: &str, (policy, reward): &(PathBuf, PathBuf)) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    let file = memory_plan_pipeline::write(dir.path(), &policy.display().to_string(), &reward.display().to_string());
    let json = |args: &[&str]| -> serde_json::Value {
        let output = Command::new(croco).args(args).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let file = file.to_str().unwrap();
    let plan = json(&["plan", file, "--json"]);
    json(&["run", file, "--stage", "prompts", "--json"]);
    let mut rows = Vec::new();
    for stage in ["generate", "score"] {
        let planned =
            plan["variants"][0]["stages"].as_array().unwrap().iter().find(|s| s["stage"] == stage).unwrap()["host"]
                .as_f64()
                .unwrap();
        let measured = json(&["run", file, "--stage", stage, "--json"])["peak_rss_bytes"].as_f64().unwrap();
        let error = (planned - measured).abs() / measured;
        println!(
            "  {name}, {stage}: planned {:.0} MB, measured {:.0} MB ({:+.1} %)",
            planned / 1e6,
            measured / 1e6,
            100.0 * (planned / measured - 1.0)
        );
        let case =
            format!("croco plan, {stage}, {name} (planned {:.0} MB, measured {:.0} MB)", planned / 1e6, measured / 1e6);
        rows.push(common::row(&case, "relative error", error, "the issue's bound", Some(0.25), Better::Lower));
    }
    rows
}

/// A pipeline answering `count` distinct English prompts, in `dir`.
fn write_world(dir: &Path, repo: &Path, count: usize) -> std::path::PathBuf {
    let prompts = dir.join("prompts.jsonl");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&prompts).unwrap());
    let topics = ["the sea", "a quiet garden", "the old library", "winter mornings", "the city at night"];
    for i in 0..count {
        let topic = topics[i % topics.len()];
        writeln!(
            file,
            r#"{{"prompt": "Please write one short sentence about {topic}, number {i}.", "language": "en"}}"#
        )
        .unwrap();
    }
    file.flush().unwrap();
    let policy = repo.join("data/models/policy");
    let pipeline = dir.join("pipeline.toml");
    let text = format!(
        r#"[run]
name = "stream"
root = "{root}"
languages = ["en"]
device = "cpu"
threads = 2

[models]
policy = "{policy}"

[stages.prompts]
source = "{prompts}"
columns = {{ text = "prompt", language = "language" }}
eval_fraction = 0.0

[stages.generate]
samples = 1
max_new_tokens = 2
batch_size = 64
prompts_per_part = 1000
"#,
        root = dir.join("root").display(),
        policy = policy.display(),
        prompts = prompts.display(),
    );
    std::fs::write(&pipeline, text).unwrap();
    pipeline
}
