//! Benchmark: one LoRA DPO optimizer step — croco (the bundle's `dpo` graph on
//! ONNX Runtime, CPU, + AdamW in Rust) against TRL's `DPOTrainer` (PyTorch
//! CPU, peft LoRA) and against a plain PyTorch forward + backward + AdamW of
//! the same loss, same policy, LoRA config, pairs and sequence length, in one
//! run; prints pairs/s, tokens/s, peak memory and the ratios.
//!
//!     CROCO_BENCH_PYTHON=/opt/export-venv/bin/python cargo bench --bench tune
//!
//! The Python side is `tools/bench/trl_dpo.py` (needs torch, transformers,
//! peft and trl: `pip install -r tools/export/requirements.txt`).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use croco::model::bundle::{Bundle, Verify};
use croco::model::dpo::{DpoGraph, LossSettings, PairTokens};
use croco::model::lora::{Adapter, AdapterConfig};
use croco::model::optim::{AdamW, clip_grad_norm};
use croco::model::runtime::{Device, SessionConfig};
use rand::{Rng, SeedableRng};

const PAIRS: usize = 4;
const PROMPT_TOKENS: usize = 32;
const RESPONSE_TOKENS: usize = 96;
const RANK: usize = 16;
const STEPS: usize = 10;
const THREADS: usize = 2;

fn main() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = SessionConfig { device: Device::Cpu, device_id: 0, threads: THREADS };
    let (step_s, optimizer_s) = croco_step(repo, &config);
    let tokens = (2 * PAIRS * (PROMPT_TOKENS + RESPONSE_TOKENS)) as f64;
    let peak = peak_rss_mb();
    println!(
        "LoRA DPO step, CPU, {THREADS} threads, demo policy, {PAIRS} pairs x {} tokens, r={RANK} on q,k,v,o,gate,up,down:",
        PROMPT_TOKENS + RESPONSE_TOKENS
    );
    println!(
        "  croco        {:.2} pairs/s, {:.0} tokens/s, {:.1} ms/step (AdamW + clipping in Rust: {:.2} ms = {:.2} %), peak RSS {peak:.0} MB",
        PAIRS as f64 / step_s,
        tokens / step_s,
        step_s * 1e3,
        optimizer_s * 1e3,
        100.0 * optimizer_s / step_s
    );
    for engine in ["trl", "torch-step"] {
        match reference(repo, engine) {
            Some(result) => {
                let theirs = result["step_s"].as_f64().unwrap_or(f64::NAN);
                println!(
                    "  {engine:<12} {:.2} pairs/s, {:.0} tokens/s, {:.1} ms/step, peak RSS {:.0} MB; croco / {engine} = {:.2}",
                    PAIRS as f64 / theirs,
                    tokens / theirs,
                    theirs * 1e3,
                    result["peak_rss_mb"].as_f64().unwrap_or(f64::NAN),
                    theirs / step_s
                )
            }
            None => println!("  {engine:<12} unavailable (set CROCO_BENCH_PYTHON to a Python with trl)"),
        }
    }
}

/// Median seconds of a whole croco step and of its optimizer part.
fn croco_step(repo: &Path, config: &SessionConfig) -> (f64, f64) {
    let bundle = Bundle::open(&repo.join("data/models/policy"), Verify::Sizes).unwrap();
    let vocab = bundle.manifest.architecture.vocab_size as i64;
    let adapter_config: AdapterConfig = serde_json::from_value(serde_json::json!({
        "r": RANK, "lora_alpha": 2.0 * RANK as f64, "lora_dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    }))
    .unwrap();
    let mut adapter = Adapter::init(&bundle, adapter_config, 0).unwrap();
    let mut graph = DpoGraph::load(&bundle, bundle.manifest.tokenizer.pad_token_id, config).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut ids = |n: usize| (0..n).map(|_| rng.random_range(6..vocab)).collect::<Vec<i64>>();
    let pairs: Vec<PairTokens> = (0..PAIRS)
        .map(|_| {
            let prompt = ids(PROMPT_TOKENS);
            let chosen = [prompt.clone(), ids(RESPONSE_TOKENS)].concat();
            let rejected = [prompt, ids(RESPONSE_TOKENS)].concat();
            PairTokens { chosen, rejected, response_start: PROMPT_TOKENS }
        })
        .collect();
    let batch: Vec<&PairTokens> = pairs.iter().collect();
    let reference = vec![(-400.0f32, -420.0f32); PAIRS];
    let sizes: Vec<usize> = adapter.named_tensors(|m| m.trainable).iter().map(|t| t.2.len()).collect();
    let mut optimizer = AdamW::new(&sizes, 0.01);
    let (mut steps, mut updates) = (Vec::new(), Vec::new());
    for step in 0..=STEPS {
        let settings =
            LossSettings { beta: 0.1, label_smoothing: 0.0, ipo: false, dropout: 0.05, dropout_seed: step as i64 };
        let started = Instant::now();
        let output = graph.step(&batch, &reference, &adapter, &settings).unwrap();
        let update_started = Instant::now();
        let mut grads = output.grads;
        clip_grad_norm(&mut grads, 1.0);
        let mut tensors: Vec<&mut [f32]> =
            adapter.modules.iter_mut().flat_map(|m| [m.a.as_mut_slice(), m.b.as_mut_slice()]).collect();
        optimizer.update(&mut tensors, &grads, 1e-4);
        if step > 0 {
            // Step 0 warms the session up.
            updates.push(update_started.elapsed().as_secs_f64());
            steps.push(started.elapsed().as_secs_f64());
        }
    }
    (median(&mut steps), median(&mut updates))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Peak resident memory of this process (Linux `VmHWM`), in MB.
fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().strip_suffix(" kB"));
    kb.and_then(|v| v.trim().parse::<f64>().ok()).map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Runs the Python reference `engine` and returns its JSON result line.
fn reference(repo: &Path, engine: &str) -> Option<serde_json::Value> {
    let python = std::env::var("CROCO_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let output = Command::new(python)
        .arg("tools/bench/trl_dpo.py")
        .args(["--engine", engine, "--bundle", "data/models/policy"])
        .args(["--pairs", &PAIRS.to_string(), "--prompt-len", &PROMPT_TOKENS.to_string()])
        .args(["--response-len", &RESPONSE_TOKENS.to_string(), "--rank", &RANK.to_string()])
        .args(["--steps", &STEPS.to_string(), "--threads", &THREADS.to_string()])
        .current_dir(repo)
        .output()
        .ok()?;
    if !output.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
        return None;
    }
    let line = String::from_utf8_lossy(&output.stdout).lines().last()?.to_string();
    serde_json::from_str(&line).ok()
}
