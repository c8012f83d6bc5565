//! Benchmark: croco's generation (tokens/s) and reward scoring (sequences/s)
//! on ONNX Runtime (CPU) against Hugging Face transformers on PyTorch (CPU),
//! same bundle, prompts, batch and sampling, in one run; prints the ratios.
//!
//!     CROCO_BENCH_PYTHON=/opt/export-venv/bin/python cargo bench --bench generate
//!
//! The Python side is `tools/bench/hf_reference.py` (needs torch and
//! transformers: `pip install -r tools/export/requirements.txt`).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use croco::model::bundle::{Bundle, Verify};
use croco::model::policy::{GenerationRequest, Policy};
use croco::model::reward::RewardModel;
use croco::model::runtime::{Device, SessionConfig};
use croco::model::sampling::SamplingParams;

use self::common::Better;

const PROMPTS: usize = 32;
const SAMPLES: usize = 8;
const MAX_NEW_TOKENS: usize = 48;
const BATCH: usize = 8;
const SEQUENCES: usize = 512;
const SCORE_BATCH: usize = 32;
const THREADS: usize = 2;

fn main() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = SessionConfig { device: Device::Cpu, device_id: 0, threads: THREADS };
    let prompts = demo_prompts(repo);
    let croco_generate = generate(repo, &config, &prompts);
    let croco_score = score(repo, &config, &prompts);
    println!("croco vs transformers, CPU, {THREADS} threads, demo bundles (data/models):");
    let hf_generate = reference(&["--mode", "generate", "--bundle", "data/models/policy"], "tokens_per_s");
    let generate_case =
        format!("generate: {PROMPTS} prompts x {SAMPLES} samples, {MAX_NEW_TOKENS} new tokens, batch {BATCH}, T=1");
    report(&generate_case, "tokens/s", croco_generate, hf_generate);
    let hf_score = reference(&["--mode", "score", "--bundle", "data/models/reward"], "sequences_per_s");
    let score_case = format!("score: {SEQUENCES} sequences, batch {SCORE_BATCH}");
    report(&score_case, "sequences/s", croco_score, hf_score);
    let peer = "transformers (tools/bench/hf_reference.py)";
    common::write_json(
        "generate",
        vec![
            common::row(&generate_case, "tokens/s", croco_generate, peer, hf_generate, Better::Higher),
            common::row(&score_case, "sequences/s", croco_score, peer, hf_score, Better::Higher),
        ],
    );
}

fn report(what: &str, unit: &str, croco: f64, reference: Option<f64>) {
    match reference {
        Some(hf) => println!(
            "  {what}\n    croco {croco:.0} {unit}, transformers {hf:.0} {unit}, croco / transformers = {:.2}",
            croco / hf
        ),
        None => println!("  {what}\n    croco {croco:.0} {unit}, transformers unavailable (set CROCO_BENCH_PYTHON)"),
    }
}

/// The first demo prompts, in file order: (prompt_id, language, text).
fn demo_prompts(repo: &Path) -> Vec<(String, String, String)> {
    std::fs::read_to_string(repo.join("data/prompts/demo.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .map(|row| {
            let (language, text) =
                (row["language"].as_str().unwrap().to_string(), row["prompt"].as_str().unwrap().to_string());
            (croco::ids::prompt_id(&language, &text), language, text)
        })
        .collect()
}

fn generate(repo: &Path, config: &SessionConfig, prompts: &[(String, String, String)]) -> f64 {
    let bundle = Bundle::open(&repo.join("data/models/policy"), Verify::Sizes).unwrap();
    let mut policy = Policy::load(bundle, config).unwrap();
    let params = SamplingParams { temperature: 1.0, top_p: 1.0, top_k: None };
    let requests: Vec<GenerationRequest> = prompts[..PROMPTS]
        .iter()
        .enumerate()
        .map(|(i, (_, _, text))| GenerationRequest {
            prompt: policy.tokenizer.encode_prompt(text).unwrap(),
            seeds: (0..SAMPLES as u64).map(|k| (i * SAMPLES) as u64 + k).collect(),
        })
        .collect();
    policy.generate(&requests[..1], &params, 4).unwrap();
    let start = Instant::now();
    let mut tokens = 0;
    for batch in requests.chunks(BATCH) {
        let generated = policy.generate(batch, &params, MAX_NEW_TOKENS).unwrap();
        tokens +=
            generated.iter().flatten().map(|g| g.tokens.len() + usize::from(g.stop_token.is_some())).sum::<usize>();
    }
    tokens as f64 / start.elapsed().as_secs_f64()
}

fn score(repo: &Path, config: &SessionConfig, prompts: &[(String, String, String)]) -> f64 {
    let texts: HashMap<&str, &str> = prompts.iter().map(|(id, _, text)| (id.as_str(), text.as_str())).collect();
    let responses: Vec<(String, String)> = std::fs::read_to_string(repo.join("data/demo/scored_generations.jsonl"))
        .unwrap()
        .lines()
        .take(SEQUENCES)
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .map(|row| (texts[row["prompt_id"].as_str().unwrap()].to_string(), row["text"].as_str().unwrap().to_string()))
        .collect();
    let bundle = Bundle::open(&repo.join("data/models/reward"), Verify::Sizes).unwrap();
    let mut model = RewardModel::load(bundle, config).unwrap();
    let mut encoded: Vec<Vec<i64>> =
        responses.iter().map(|(p, r)| model.tokenizer.encode_exchange(p, r).unwrap().0).collect();
    model.score_ids(&encoded[..1]).unwrap();
    let start = Instant::now();
    encoded.sort_by_key(Vec::len);
    for batch in encoded.chunks(SCORE_BATCH) {
        model.score_ids(batch).unwrap();
    }
    SEQUENCES as f64 / start.elapsed().as_secs_f64()
}

/// Runs the transformers reference and returns the JSON field `field`.
fn reference(args: &[&str], field: &str) -> Option<f64> {
    let batch = if args.contains(&"score") { SCORE_BATCH } else { BATCH };
    let settings = [
        ("--n-prompts", PROMPTS),
        ("--samples", SAMPLES),
        ("--max-new-tokens", MAX_NEW_TOKENS),
        ("--threads", THREADS),
        ("--batch-size", batch),
        ("--n-sequences", SEQUENCES),
    ];
    let args = std::iter::once("tools/bench/hf_reference.py".to_string())
        .chain(args.iter().map(|a| a.to_string()))
        .chain(settings.iter().flat_map(|(flag, value)| [flag.to_string(), value.to_string()]))
        .collect::<Vec<_>>();
    common::python_json(&args)?[field].as_f64()
}
