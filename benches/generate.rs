//! Benchmark: croco's generation (tokens/s, and the share of slot steps that
//! produced a token) and reward scoring (sequences/s) on ONNX Runtime (CPU)
//! against Hugging Face transformers on PyTorch (CPU) and onnxruntime-genai
//! (the same runtime, its own model builder's graphs), same bundle, prompt
//! ids, batch and sampling, in one run; prints the ratios.
//!
//!     CROCO_BENCH_PYTHON=/opt/export-venv/bin/python cargo bench --bench generate
//!
//! Cases: (a) the demo policy, natural stop tokens (lengths vary); (b) a
//! ~0.5 B random Llama, stop tokens ignored (fixed lengths), when
//! `CROCO_BENCH_LLAMA_0_5B` names its bundle (`python -m tools.export
//! random-llama --out DIR --hidden 1024 --layers 32 --heads 16 --kv-heads 8
//! --intermediate 4096 --no-train`); score: the demo reward bundle.
//! The Python sides are `tools/bench/hf_reference.py` and
//! `tools/bench/ortgenai_reference.py` (`pip install -r tools/export/requirements.txt`
//! plus `onnxruntime-genai==0.18.0`).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use croco::model::bundle::{Bundle, Verify};
use croco::model::continuous::SlotLimits;
use croco::model::policy::{Generated, GenerationRequest, Policy};
use croco::model::reward::RewardModel;
use croco::model::runtime::{Device, SessionConfig};
use croco::model::sampling::SamplingParams;

use self::common::Better;

const SEQUENCES: usize = 512;
const SCORE_BATCH: usize = 32;
const THREADS: usize = 2;

/// One generation case: the same work for every engine.
struct Case {
    name: String,
    bundle: PathBuf,
    prompts: usize,
    samples: usize,
    max_new_tokens: usize,
    /// Prompts per static batch in the peers; croco keeps as many rows in flight.
    batch: usize,
    ignore_eos: bool,
}

fn main() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = SessionConfig { device: Device::Cpu, device_id: 0, threads: THREADS };
    let prompts = demo_prompts(repo);
    let mut cases = vec![Case {
        name: "(a) demo policy, 16 prompts x 8 samples, <= 256 new tokens, natural stops, T=1".into(),
        bundle: repo.join("data/models/policy"),
        prompts: 16,
        samples: 8,
        max_new_tokens: 256,
        batch: 8,
        ignore_eos: false,
    }];
    match std::env::var_os("CROCO_BENCH_LLAMA_0_5B") {
        Some(dir) => cases.push(Case {
            name: "(b) 0.5 B random Llama, 2 prompts x 16 samples x 128 tokens, stops ignored, T=1".into(),
            bundle: PathBuf::from(dir),
            prompts: 2,
            samples: 16,
            max_new_tokens: 128,
            batch: 2,
            ignore_eos: true,
        }),
        None => println!("case (b) skipped: set CROCO_BENCH_LLAMA_0_5B to a ~0.5 B random Llama bundle"),
    }
    let mut rows = Vec::new();
    println!("croco vs transformers and onnxruntime-genai, CPU, {THREADS} threads:");
    for case in &cases {
        rows.extend(generate_case(case, &config, &prompts));
    }
    let croco_score = score(repo, &config, &prompts);
    let hf_score = reference(
        "tools/bench/hf_reference.py",
        &["--mode", "score", "--bundle", "data/models/reward"],
        &[("--batch-size", SCORE_BATCH), ("--n-sequences", SEQUENCES), ("--threads", THREADS)],
        "sequences_per_s",
    );
    let score_case = format!("score: {SEQUENCES} sequences, batch {SCORE_BATCH}");
    report(&score_case, "sequences/s", croco_score, "transformers", hf_score);
    let peer = "transformers (tools/bench/hf_reference.py)";
    rows.push(common::row(&score_case, "sequences/s", croco_score, peer, hf_score, Better::Higher));
    common::write_json("generate", rows);
}

/// croco, transformers and onnxruntime-genai on one case; its JSON rows.
fn generate_case(case: &Case, config: &SessionConfig, prompts: &[(String, String, String)]) -> Vec<serde_json::Value> {
    let (rate, useful, static_useful) = generate(case, config, prompts);
    let bundle = case.bundle.to_string_lossy().to_string();
    let mut args = vec!["--bundle", bundle.as_str()];
    if case.ignore_eos {
        args.push("--ignore-eos");
    }
    let settings = [
        ("--n-prompts", case.prompts),
        ("--samples", case.samples),
        ("--max-new-tokens", case.max_new_tokens),
        ("--batch-size", case.batch),
        ("--threads", THREADS),
    ];
    let hf_args: Vec<&str> = ["--mode", "generate"].into_iter().chain(args.iter().copied()).collect();
    let hf = reference("tools/bench/hf_reference.py", &hf_args, &settings, "tokens_per_s");
    let genai = reference("tools/bench/ortgenai_reference.py", &args, &settings, "tokens_per_s");
    println!("  {}", case.name);
    report(&case.name, "tokens/s", rate, "transformers", hf);
    report(&case.name, "tokens/s", rate, "onnxruntime-genai", genai);
    println!("    useful slot steps: croco {useful:.3}, a static batch of the same rows {static_useful:.3}");
    vec![
        common::row(&case.name, "tokens/s", rate, "transformers (tools/bench/hf_reference.py)", hf, Better::Higher),
        common::row(
            &case.name,
            "tokens/s",
            rate,
            "onnxruntime-genai 0.18 (tools/bench/ortgenai_reference.py)",
            genai,
            Better::Higher,
        ),
        common::row(
            &case.name,
            "useful_slot_steps / slot_steps",
            useful,
            "static batches of the same prompts (computed from the same lengths)",
            Some(static_useful),
            Better::Higher,
        ),
    ]
}

fn report(what: &str, unit: &str, croco: f64, peer: &str, reference: Option<f64>) {
    match reference {
        Some(value) => {
            println!("    croco {croco:.0} {unit}, {peer} {value:.0} {unit}, croco / {peer} = {:.2}", croco / value)
        }
        None => println!("    {what}: croco {croco:.0} {unit}, {peer} unavailable (set CROCO_BENCH_PYTHON)"),
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

/// croco's tokens/s on `case`, the share of its slot steps that produced a
/// token, and that share for static batches of `case.batch` prompts.
fn generate(case: &Case, config: &SessionConfig, prompts: &[(String, String, String)]) -> (f64, f64, f64) {
    let bundle = Bundle::open(&case.bundle, Verify::Sizes).unwrap();
    let mut policy = Policy::load(bundle, config).unwrap();
    if case.ignore_eos {
        policy.tokenizer.stop_token_ids.clear();
    }
    let params = SamplingParams { temperature: 1.0, top_p: 1.0, top_k: None };
    let requests: Vec<GenerationRequest> = prompts[..case.prompts]
        .iter()
        .enumerate()
        .map(|(i, (_, _, text))| GenerationRequest {
            prompt: policy.tokenizer.encode_prompt(text).unwrap(),
            seeds: (0..case.samples as u64).map(|k| (i * case.samples) as u64 + k).collect(),
        })
        .collect();
    let limits = SlotLimits::for_prompts(case.batch, case.samples);
    policy.generate(&requests[..1], &params, 2, limits, &mut |_| {}).unwrap();
    policy.steps = Default::default();
    let start = Instant::now();
    let generated = policy.generate(&requests, &params, case.max_new_tokens, limits, &mut |_| {}).unwrap();
    let seconds = start.elapsed().as_secs_f64();
    let produced = |g: &Generated| g.tokens.len() + usize::from(g.stop_token.is_some());
    let tokens = generated.iter().flatten().map(produced).sum::<usize>();
    let steps = policy.steps;
    // A static batch runs each batch of prompts until its longest sample ends.
    let static_steps: usize = generated
        .chunks(case.batch)
        .map(|batch| {
            let rows = batch.iter().map(Vec::len).sum::<usize>();
            rows * batch.iter().flatten().map(produced).max().unwrap_or(0)
        })
        .sum();
    let useful = steps.useful_slot_steps as f64 / steps.slot_steps as f64;
    (tokens as f64 / seconds, useful, tokens as f64 / static_steps as f64)
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

/// Runs a Python reference `script` and returns the JSON field `field`.
fn reference(script: &str, args: &[&str], settings: &[(&str, usize)], field: &str) -> Option<f64> {
    let args = std::iter::once(script.to_string())
        .chain(args.iter().map(|a| a.to_string()))
        .chain(settings.iter().flat_map(|(flag, value)| [flag.to_string(), value.to_string()]))
        .collect::<Vec<_>>();
    common::python_json(&args)?[field].as_f64()
}
