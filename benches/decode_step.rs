//! Benchmark: one decode step of a policy bundle (every row of a batch one
//! new token, over a KV cache of a given context) against its roofline on
//! the same machine, measured in the same run: the bytes a step must read
//! (weights + the rows' KV cache) over the measured memory bandwidth (a
//! large copy), and its FLOPs over the measured GEMM throughput (one large
//! MatMul through ONNX Runtime). The slower of the two bounds is the
//! roofline; `ratio` is roofline time / step time, the fraction of the
//! physical limit reached (1 at best).
//!
//!     cargo bench --bench decode_step
//!
//! `CROCO_BENCH_BUNDLE` (default `data/models/policy`) points it at another
//! policy bundle; contexts are 64, 512 and 2048 where they fit the bundle's
//! `max_position_embeddings` (else its largest context), batches 1, 16, 64.
//! A step is timed as (a generation of `STEPS + 1` new tokens − a generation
//! of 1) ÷ the decode calls between them, so prefill is left out.

mod common;

use std::path::Path;
use std::time::Instant;

use croco::model::bundle::{Bundle, Verify};
use croco::model::continuous::SlotLimits;
use croco::model::policy::{GenerationRequest, Policy};
use croco::model::runtime::{Device, SessionConfig, Target};
use croco::model::sampling::SamplingParams;
use ort::value::Tensor;

use self::common::Better;

const THREADS: usize = 2;
/// Decode steps timed per measurement.
const STEPS: usize = 16;
const CONTEXTS: [usize; 3] = [64, 512, 2048];
const BATCHES: [usize; 3] = [1, 16, 64];
const REPEATS: usize = 3;

fn main() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bundle_dir = repo.join(std::env::var("CROCO_BENCH_BUNDLE").unwrap_or_else(|_| "data/models/policy".into()));
    let bandwidth = memory_bandwidth();
    let gemm = gemm_throughput(repo);
    println!(
        "decode step vs roofline, CPU, {THREADS} threads, {}: memory {:.1} GB/s (copy), GEMM {:.1} GFLOP/s (ONNX Runtime MatMul)",
        bundle_dir.display(),
        bandwidth / 1e9,
        gemm / 1e9
    );
    let bundle = Bundle::open(&bundle_dir, Verify::Sizes).unwrap();
    let shape = Shape::of(&bundle);
    let config = SessionConfig { device: Device::Cpu, device_id: 0, threads: THREADS };
    let mut policy = Policy::load(bundle, &config).unwrap();
    // Every row decodes every step: a stop token would end a row (and, at batch 1, the timing) early.
    policy.tokenizer.stop_token_ids.clear();
    let mut rows = Vec::new();
    for context in contexts(shape.max_positions) {
        for batch in BATCHES {
            let step = step_seconds(&mut policy, context, batch);
            // The cache grows over the timed steps: its mean length is read.
            let mean_context = (context + STEPS / 2) as f64;
            let bytes = shape.weight_bytes + batch as f64 * shape.kv_bytes_per_token * mean_context;
            let flops = batch as f64 * (shape.flops_per_token + shape.attention_flops_per_context * mean_context);
            let roofline = (bytes / bandwidth).max(flops / gemm);
            let bound = if bytes / bandwidth >= flops / gemm { "memory" } else { "compute" };
            println!(
                "  context {context:>5}, batch {batch:>3}: {:>8.3} ms/step, roofline {:>8.3} ms ({bound}-bound), {:.1} % of it",
                step * 1e3,
                roofline * 1e3,
                100.0 * roofline / step
            );
            let case = format!("decode step, context {context}, batch {batch}");
            let reference = format!("roofline ({bound}-bound: weights + KV bytes / bandwidth, FLOPs / GEMM)");
            rows.push(common::row(&case, "seconds", step, &reference, Some(roofline), Better::Lower));
        }
    }
    common::write_json("decode_step", rows);
}

/// The contexts measured: those of [`CONTEXTS`] that leave room for the
/// timed steps, else the largest that does.
fn contexts(max_positions: usize) -> Vec<usize> {
    let largest = max_positions - STEPS - 2;
    let mut contexts: Vec<usize> = CONTEXTS.iter().map(|&c| c.min(largest)).collect();
    contexts.dedup();
    contexts
}

/// What one decode step must read and compute, from the manifest.
struct Shape {
    max_positions: usize,
    /// Every weight, read once per step.
    weight_bytes: f64,
    /// Keys and values of one cached token, over all layers.
    kv_bytes_per_token: f64,
    /// 2 × the multiply-adds of one token through every matrix (the
    /// embedding is a lookup, the LM head a matrix).
    flops_per_token: f64,
    /// The attention's FLOPs per token per cached position (scores and
    /// weighted values, every layer and head).
    attention_flops_per_context: f64,
}

impl Shape {
    fn of(bundle: &Bundle) -> Shape {
        let arch = &bundle.manifest.architecture;
        let tensors = &bundle.manifest.weights.tensors;
        let elements = |shape: &[usize]| shape.iter().product::<usize>() as f64;
        let weight_bytes = tensors.iter().map(|t| 4.0 * elements(&t.shape)).sum();
        let matrices: f64 = tensors.iter().filter(|t| t.shape.len() == 2).map(|t| elements(&t.shape)).sum();
        // A tied LM head reuses the embedding: it is one matrix either way.
        let embedding = (arch.vocab_size * arch.hidden_size) as f64;
        let lm_head = if tensors.iter().any(|t| t.name == "lm_head.weight") { 0.0 } else { embedding };
        let layers = arch.num_layers as f64;
        Shape {
            max_positions: arch.max_position_embeddings,
            weight_bytes,
            kv_bytes_per_token: layers * 2.0 * (arch.num_kv_heads * arch.head_dim) as f64 * 4.0,
            flops_per_token: 2.0 * (matrices - embedding + embedding.max(lm_head)),
            attention_flops_per_context: layers * 2.0 * 2.0 * (arch.num_attention_heads * arch.head_dim) as f64,
        }
    }
}

/// Seconds of one decode step of `batch` rows over a cache of `context` positions.
fn step_seconds(policy: &mut Policy, context: usize, batch: usize) -> f64 {
    // One prompt of exactly `context` tokens, its `batch` samples as the rows.
    let word = policy.tokenizer.encode_text(" the").unwrap();
    let mut prompt = policy.tokenizer.encode_prompt("Tell me").unwrap();
    while prompt.len() < context {
        prompt.push(word[0]);
    }
    prompt.truncate(context);
    let request = GenerationRequest { prompt, seeds: (0..batch as u64).collect() };
    let params = SamplingParams { temperature: 1.0, top_p: 1.0, top_k: None };
    let mut timed = |new_tokens: usize| {
        let start = Instant::now();
        let limits = SlotLimits::for_prompts(1, batch);
        let generated =
            policy.generate(std::slice::from_ref(&request), &params, new_tokens, limits, &mut |_| {}).unwrap();
        let longest = generated[0].iter().map(|g| g.tokens.len() + usize::from(g.stop_token.is_some())).max();
        (start.elapsed().as_secs_f64(), longest.unwrap_or(0))
    };
    timed(2);
    let mut best = f64::INFINITY;
    for _ in 0..REPEATS {
        let (prefill, _) = timed(1);
        let (whole, tokens) = timed(STEPS + 1);
        // The first token comes from prefill; each later one is a decode call.
        let calls = tokens.saturating_sub(1).max(1);
        best = best.min((whole - prefill).max(0.0) / calls as f64);
    }
    best
}

/// Bytes per second of a large copy (read + written), best of many: on a
/// shared machine the best is the closest to what the memory can do.
fn memory_bandwidth() -> f64 {
    let bytes = 256 << 20;
    let source = vec![1u8; bytes];
    let mut target = vec![0u8; bytes];
    let mut best = f64::INFINITY;
    for _ in 0..20 {
        let start = Instant::now();
        target.copy_from_slice(&source);
        std::hint::black_box(&mut target);
        best = best.min(start.elapsed().as_secs_f64());
    }
    2.0 * bytes as f64 / best
}

/// FLOP/s of one 1024³ float32 MatMul through ONNX Runtime on the CPU (the
/// bench's threads), best of a few.
fn gemm_throughput(repo: &Path) -> f64 {
    let n = 1024;
    let mut session =
        croco::model::runtime::session(&repo.join("benches/fixtures/matmul.onnx"), Target::Cpu, THREADS).unwrap();
    let matrix = || Tensor::from_array(([n, n], vec![0.5f32; n * n])).unwrap();
    let (a, b) = (matrix(), matrix());
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = Instant::now();
        let outputs = session.run(ort::inputs!["a" => &a, "b" => &b]).unwrap();
        std::hint::black_box(outputs);
        best = best.min(start.elapsed().as_secs_f64());
    }
    2.0 * (n * n * n) as f64 / best
}
