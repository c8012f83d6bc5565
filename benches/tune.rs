//! Benchmark: one LoRA DPO optimizer step — croco (the tune stage's
//! layer-wise step on ONNX Runtime, CPU: each layer recomputed in the
//! backward, + AdamW in Rust) against TRL's `DPOTrainer` (PyTorch CPU, peft
//! LoRA, sdpa attention) with and without gradient checkpointing
//! (`use_reentrant=False`), and against a plain PyTorch forward + backward +
//! AdamW of the same loss; same policy, LoRA config, pairs and sequence
//! length, in one run; prints pairs/s, tokens/s, peak memory and the ratios.
//!
//!     CROCO_BENCH_PYTHON=/opt/export-venv/bin/python cargo bench --bench tune
//!
//! `CROCO_BENCH_BUNDLE` (default `data/models/policy`; it needs the training
//! graphs: `python -m tools.export train-graphs BUNDLE`), `CROCO_BENCH_DEVICE`
//! (`cpu` or `cuda`), `CROCO_BENCH_PAIRS` (default 4), `CROCO_BENCH_SEQ_LEN`
//! (tokens per sequence, default 128, 32 of them prompt) and
//! `CROCO_BENCH_STEPS` (default 10) choose the case, `CROCO_BENCH_RECOMPUTE`
//! (`auto`, the default, as `[run] recompute`; `full` or `selective`) what
//! croco's backward recomputes; `CROCO_BENCH_PEERS`
//! (default `trl,trl-checkpointing,torch-step`, `none` for none) the Python
//! references, which run on the CPU (on a GPU, `tools/gpu/torch_dpo_step.py`).
//! Every run also holds croco's peak RSS against the memory plan's host
//! figure for the step (`croco plan`'s tune row).
//!
//! The Python side is `tools/bench/trl_dpo.py` (needs torch, transformers,
//! peft and trl: `pip install -r tools/export/requirements.txt`).

mod common;

use std::path::Path;
use std::time::Instant;

use croco::model::bundle::{Bundle, Verify};
use croco::model::dpo::{Loss, LossSettings, PairTokens};
use croco::model::layerwise::{HEAD_CHUNK, LayerwiseGraphs, Recompute};
use croco::model::lora::{Adapter, AdapterConfig};
use croco::model::memory::ModelShape;
use croco::model::optim::{AdamW, clip_grad_norm};
use croco::model::precision::Precision;
use croco::model::runtime::{Device, SessionConfig, Target};
use rand::{Rng, SeedableRng};

use self::common::Better;

const PROMPT_TOKENS: usize = 32;
/// Tokens per sequence by default (`CROCO_BENCH_SEQ_LEN`).
const SEQ_LEN: usize = 128;
const RANK: usize = 16;
/// Steps timed (the median is reported); `CROCO_BENCH_STEPS` overrides it for big bundles.
const STEPS: usize = 10;
const THREADS: usize = 2;

/// What the croco side runs on.
struct Setup {
    bundle: std::path::PathBuf,
    config: SessionConfig,
    pairs: usize,
    /// Tokens per sequence (prompt + response).
    seq_len: usize,
    steps: usize,
    recompute: Recompute,
}

fn setup(repo: &Path) -> Setup {
    let var = |name: &str| std::env::var(name).ok();
    let device = match var("CROCO_BENCH_DEVICE").as_deref() {
        Some("cuda") => Device::Cuda,
        _ => Device::Cpu,
    };
    let threads = if device == Device::Cpu { THREADS } else { 0 };
    Setup {
        bundle: repo.join(var("CROCO_BENCH_BUNDLE").unwrap_or_else(|| "data/models/policy".into())),
        config: SessionConfig { device, device_id: 0, threads },
        pairs: var("CROCO_BENCH_PAIRS").and_then(|p| p.parse().ok()).unwrap_or(4),
        seq_len: var("CROCO_BENCH_SEQ_LEN").and_then(|p| p.parse().ok()).unwrap_or(SEQ_LEN),
        steps: var("CROCO_BENCH_STEPS").and_then(|s| s.parse().ok()).unwrap_or(STEPS),
        recompute: match var("CROCO_BENCH_RECOMPUTE").as_deref() {
            Some("full") => Recompute::Full,
            Some("selective") => Recompute::Selective,
            _ => Recompute::Auto,
        },
    }
}

fn main() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut setup = setup(repo);
    let (step_s, optimizer_s) = croco_step(&mut setup);
    // The step's peak, before merging loads the weights a second time.
    let peak = common::peak_rss_mb();
    let merge_s = merge_seconds(&setup.bundle);
    let pairs = setup.pairs;
    let tokens = (2 * pairs * setup.seq_len) as f64;
    println!(
        "LoRA DPO step, {:?}, {}, {pairs} pairs x {} tokens, r={RANK} on q,k,v,o,gate,up,down, croco's {} recompute:",
        setup.config.device,
        setup.bundle.display(),
        setup.seq_len,
        setup.recompute
    );
    println!(
        "  croco        {:.2} pairs/s, {:.0} tokens/s, {:.1} ms/step (AdamW + clipping in Rust: {:.2} ms = {:.2} %), peak RSS {peak:.0} MB",
        pairs as f64 / step_s,
        tokens / step_s,
        step_s * 1e3,
        optimizer_s * 1e3,
        100.0 * optimizer_s / step_s
    );
    println!(
        "  tuned policy: merging the r={RANK} adapter into the weights at session build takes {:.1} ms \
         (once per session; a merged policy then decodes at the base's speed)",
        merge_s * 1e3
    );
    let on_cpu = setup.config.device == Device::Cpu;
    let name = setup.bundle.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let case = format!(
        "LoRA DPO step, {name}, {pairs} pairs x {} tokens, r={RANK}, {} recompute",
        setup.seq_len, setup.recompute
    );
    let planned = planned_peak_mb(&setup);
    println!(
        "  plan         {planned:.0} MB planned on the host (croco plan), measured {peak:.0} MB: {:+.1} %",
        100.0 * (peak - planned) / planned
    );
    let mut rows =
        vec![common::row(&case, "peak RSS, MB, measured vs planned", peak, "croco plan", Some(planned), Better::Lower)];
    let peers = std::env::var("CROCO_BENCH_PEERS").unwrap_or_else(|_| "trl,trl-checkpointing,torch-step".into());
    for engine in peers.split(',').filter(|e| on_cpu && !e.is_empty() && *e != "none") {
        let result = reference(engine, &setup);
        let theirs = result.as_ref().and_then(|r| r["step_s"].as_f64());
        rows.push(common::row(&case, "seconds per step (median)", step_s, engine, theirs, Better::Lower));
        let their_peak = result.as_ref().and_then(|r| r["peak_rss_mb"].as_f64());
        rows.push(common::row(&case, "peak RSS, MB", peak, engine, their_peak, Better::Lower));
        match result {
            Some(result) => {
                let theirs = result["step_s"].as_f64().unwrap_or(f64::NAN);
                println!(
                    "  {engine:<12} {:.2} pairs/s, {:.0} tokens/s, {:.1} ms/step, peak RSS {:.0} MB; croco / {engine} = {:.2}",
                    pairs as f64 / theirs,
                    tokens / theirs,
                    theirs * 1e3,
                    result["peak_rss_mb"].as_f64().unwrap_or(f64::NAN),
                    theirs / step_s
                )
            }
            None => println!("  {engine:<12} unavailable (set CROCO_BENCH_PYTHON to a Python with trl)"),
        }
    }
    common::write_json("tune", rows);
}

/// The memory plan's host figure for this step, in MB: what `croco plan`
/// predicts for a tune stage of `pairs` pairs at `seq_len` tokens on the CPU.
fn planned_peak_mb(setup: &Setup) -> f64 {
    let bundle = Bundle::open(&setup.bundle, Verify::Manifest).unwrap();
    let shape = ModelShape::of(&bundle.manifest, Precision::Float32);
    let step = shape.training(2 * setup.pairs as u64, setup.seq_len as u64, HEAD_CHUNK as u64, setup.recompute);
    shape.host(&step, true, 0) as f64 / (1u64 << 20) as f64
}

/// Median seconds of a whole croco step and of its optimizer part; sets
/// `setup.recompute` to the one `auto` resolved to.
fn croco_step(setup: &mut Setup) -> (f64, f64) {
    let bundle = Bundle::open(&setup.bundle, Verify::Sizes).unwrap();
    let vocab = bundle.manifest.architecture.vocab_size as i64;
    let adapter_config: AdapterConfig = serde_json::from_value(serde_json::json!({
        "r": RANK, "lora_alpha": 2.0 * RANK as f64, "lora_dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    }))
    .unwrap();
    let mut adapter = Adapter::init(&bundle, adapter_config, 0).unwrap();
    let rows = 2 * setup.pairs as u64;
    let step = (rows, setup.seq_len as u64);
    let pad = bundle.manifest.tokenizer.pad_token_id;
    let mut graph = LayerwiseGraphs::load(&bundle, pad, &setup.config, setup.recompute, step, None).unwrap();
    setup.recompute = graph.recompute();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut ids = |n: usize| (0..n).map(|_| rng.random_range(6..vocab)).collect::<Vec<i64>>();
    let pairs: Vec<PairTokens> = (0..setup.pairs)
        .map(|_| {
            let prompt = ids(PROMPT_TOKENS);
            let chosen = [prompt.clone(), ids(setup.seq_len - PROMPT_TOKENS)].concat();
            let rejected = [prompt, ids(setup.seq_len - PROMPT_TOKENS)].concat();
            PairTokens { chosen, rejected, response_start: PROMPT_TOKENS }
        })
        .collect();
    let batch: Vec<&PairTokens> = pairs.iter().collect();
    let reference = vec![(-400.0f32, -420.0f32); setup.pairs];
    let sizes: Vec<usize> = adapter.named_tensors(|m| m.trainable).iter().map(|t| t.2.len()).collect();
    let mut optimizer = AdamW::new(&sizes, 0.01);
    let (mut steps, mut updates) = (Vec::new(), Vec::new());
    for step in 0..=setup.steps {
        let settings = LossSettings {
            beta: 0.1,
            label_smoothing: 0.0,
            loss: Loss::Sigmoid,
            rpo_alpha: 0.0,
            dropout: 0.05,
            dropout_seed: step as i64,
        };
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

/// Seconds to load the policy's weights with a trained-looking adapter
/// merged, minus loading them plain: the cost of running a tuned policy.
fn merge_seconds(bundle: &Path) -> f64 {
    let bundle = Bundle::open(bundle, Verify::Sizes).unwrap();
    let adapter_config: AdapterConfig = serde_json::from_value(serde_json::json!({
        "r": RANK, "lora_alpha": 2.0 * RANK as f64,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    }))
    .unwrap();
    let mut adapter = Adapter::init(&bundle, adapter_config, 0).unwrap();
    adapter.modules.iter_mut().for_each(|m| m.b.fill(1e-3));
    let time = |adapter: Option<&Adapter>| {
        let mut runs: Vec<f64> = (0..5)
            .map(|_| {
                let started = Instant::now();
                let precision = croco::model::precision::Precision::Float32;
                croco::model::weights::Weights::load_merged(&bundle, adapter, precision, Target::Cpu).unwrap();
                started.elapsed().as_secs_f64()
            })
            .collect();
        median(&mut runs)
    };
    (time(Some(&adapter)) - time(None)).max(0.0)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Runs the Python reference `engine` (`trl-checkpointing`: TRL with
/// gradient checkpointing) and returns its JSON result line.
fn reference(engine: &str, setup: &Setup) -> Option<serde_json::Value> {
    let mut args = vec![
        "tools/bench/trl_dpo.py".to_string(),
        "--engine".into(),
        engine.trim_end_matches("-checkpointing").into(),
        "--bundle".into(),
        setup.bundle.display().to_string(),
        "--pairs".into(),
        setup.pairs.to_string(),
        "--prompt-len".into(),
        PROMPT_TOKENS.to_string(),
        "--seq-len".into(),
        setup.seq_len.to_string(),
        "--rank".into(),
        RANK.to_string(),
        "--alpha".into(),
        (2 * RANK).to_string(),
        "--lora-dropout".into(),
        "0.05".into(),
        "--steps".into(),
        setup.steps.to_string(),
        "--threads".into(),
        THREADS.to_string(),
    ];
    if engine.ends_with("-checkpointing") {
        args.push("--gradient-checkpointing".into());
    }
    common::python_json(&args)
}
