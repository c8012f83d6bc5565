//! Benchmark: one decode step of a policy bundle (every row of a batch one
//! new token, over a KV cache of a given context), measured in the same run
//! against (a) its roofline on this machine: the bytes a step must read
//! (weights + the rows' KV cache) over the measured memory bandwidth (a
//! large copy), and its FLOPs over the measured GEMM throughput (one large
//! MatMul through ONNX Runtime), the slower bound being the roofline
//! (`ratio` = roofline time / step time, the fraction of the physical limit
//! reached, 1 at best); (b) the same step through the format-1 decode
//! graph of the same weights (`ratio` = v1 time / v2 time); and (c) the same
//! v2 graph with ONNX Runtime's `GroupQueryAttention` kernel instead of
//! croco's decode-step kernel (`ratio` = its time / croco's).
//!
//!     cargo bench --bench decode_step
//!
//! `CROCO_BENCH_BUNDLE` (default `data/models/policy`) points it at another
//! policy bundle; contexts are 64, 512 and 2048 where they fit the bundle's
//! `max_position_embeddings` (else its largest context), batches 1, 16, 64.
//! The format-1 graph is `CROCO_BENCH_V1_GRAPH`, else, for the demo policy,
//! its `decode.onnx` read from git at the last format-1 commit ([`V1_COMMIT`];
//! the weights are the same values under the same names). Both graphs are
//! timed the way croco drives them: v2 with the cache bound as past and
//! present and written in place and the weights packed once by the session
//! ([`WeightFeed::DecodeSteps`]), v1 with the cache passed in, the
//! concatenated present fed back as the next step's past and the weights
//! bound as inputs.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use croco::model::bundle::{Bundle, Verify};
use croco::model::graph::{BoundGraph, WeightFeed};
use croco::model::precision::Precision;
use croco::model::runtime::{Device, SessionConfig, Target, resolve_target};
use croco::model::weights::Weights;
use ort::memory::Allocator;
use ort::session::Session;
use ort::session::builder::PrepackedWeights;
use ort::value::{DynTensor, DynValue, Tensor, TensorElementType};

use self::common::Better;

const THREADS: usize = 2;
/// Decode steps timed per measurement.
const STEPS: usize = 16;
const CONTEXTS: [usize; 3] = [64, 512, 2048];
const BATCHES: [usize; 3] = [1, 16, 64];
const REPEATS: usize = 3;
/// The last commit whose demo policy is a format-1 bundle.
const V1_COMMIT: &str = "04a8a0b";

fn main() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bundle_dir = repo.join(std::env::var("CROCO_BENCH_BUNDLE").unwrap_or_else(|_| "data/models/policy".into()));
    let bandwidth = memory_bandwidth();
    let gemm = gemm_throughput(repo);
    println!(
        "decode step vs roofline and vs format 1, CPU, {THREADS} threads, {}: memory {:.1} GB/s (copy), GEMM {:.1} GFLOP/s (ONNX Runtime MatMul)",
        bundle_dir.display(),
        bandwidth / 1e9,
        gemm / 1e9
    );
    let bundle = Bundle::open(&bundle_dir, Verify::Sizes).unwrap();
    let shape = Shape::of(&bundle);
    let config = SessionConfig { device: Device::Cpu, device_id: 0, threads: THREADS };
    let target = resolve_target(&config).unwrap();
    let weights = Weights::load(&bundle, Precision::Float32, target).unwrap();
    // Generation's two sessions: decode steps in croco's attention kernel, and ONNX Runtime's
    // GroupQueryAttention (the prompts' session) as a reference.
    let packed = PrepackedWeights::new();
    let mut v2 =
        BoundGraph::new(&bundle, "decode", &weights, target, THREADS, WeightFeed::DecodeSteps(&packed)).unwrap();
    let mut gqa =
        BoundGraph::new(&bundle, "decode", &weights, target, THREADS, WeightFeed::packed_on(target, &packed)).unwrap();
    let mut v1 = v1_graph(repo, &bundle_dir).map(|path| V1::new(&path, &weights));
    if v1.is_none() {
        println!("  (no format-1 graph: set CROCO_BENCH_V1_GRAPH to compare)");
    }
    let mut rows = Vec::new();
    let available = available_memory();
    for context in contexts(shape.max_positions) {
        for batch in BATCHES {
            // Format 1 holds its input and output caches at once.
            let cache = batch as f64 * shape.kv_bytes_per_token * (context + STEPS) as f64;
            if 2.0 * cache + shape.weight_bytes > 0.8 * available {
                println!(
                    "  context {context:>5}, batch {batch:>3}: skipped, its caches need more than this machine's memory"
                );
                continue;
            }
            // One cache for both kernels (each step writes the same positions).
            let mut cache = v2_cache(&shape, context, batch);
            let step = best_of(|| v2_step_seconds(&mut v2, &mut cache, &shape, context, batch));
            let ort_step = best_of(|| v2_step_seconds(&mut gqa, &mut cache, &shape, context, batch));
            drop(cache);
            let old = v1.as_mut().map(|v1| best_of(|| v1.step_seconds(&shape, context, batch)));
            // The cache grows over the timed steps: its mean length is read.
            let mean_context = (context + STEPS / 2) as f64;
            let bytes = shape.weight_bytes + batch as f64 * shape.kv_bytes_per_token * mean_context;
            let flops = batch as f64 * (shape.flops_per_token + shape.attention_flops_per_context * mean_context);
            let roofline = (bytes / bandwidth).max(flops / gemm);
            let bound = if bytes / bandwidth >= flops / gemm { "memory" } else { "compute" };
            println!(
                "  context {context:>5}, batch {batch:>3}: {:>8.3} ms/step, roofline {:>8.3} ms ({bound}-bound), {:.1} % of it; ONNX Runtime's attention {:.3} ms, {:.2}x{}",
                step * 1e3,
                roofline * 1e3,
                100.0 * roofline / step,
                ort_step * 1e3,
                ort_step / step,
                old.map_or(String::new(), |old| format!("; format 1 {:.3} ms, {:.2}x", old * 1e3, old / step))
            );
            let case = format!("decode step, context {context}, batch {batch}");
            let reference = format!("roofline ({bound}-bound: weights + KV bytes / bandwidth, FLOPs / GEMM)");
            rows.push(common::row(&case, "seconds", step, &reference, Some(roofline), Better::Lower));
            let reference = "same graph, ONNX Runtime's GroupQueryAttention kernel for the step";
            rows.push(common::row(&case, "seconds", step, reference, Some(ort_step), Better::Lower));
            if let Some(old) = old {
                let reference = "format-1 decode graph, same weights (KV cache concatenated every step)";
                rows.push(common::row(&case, "seconds", step, reference, Some(old), Better::Lower));
            }
        }
    }
    common::write_json("decode_step", rows);
}

/// Bytes of memory available now (Linux `MemAvailable`).
fn available_memory() -> f64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kb = info.lines().find_map(|l| l.strip_prefix("MemAvailable:")).and_then(|v| v.trim().strip_suffix(" kB"));
    kb.and_then(|v| v.trim().parse::<f64>().ok()).map_or(f64::INFINITY, |kb| kb * 1024.0)
}

fn best_of(mut run: impl FnMut() -> f64) -> f64 {
    run();
    (0..REPEATS).map(|_| run()).fold(f64::INFINITY, f64::min)
}

/// Seconds of one format-2 decode step of `batch` rows over `context`
/// cached positions: the cache bound in place, each step one position more.
/// A decode graph's KV cache for `batch` rows of `context` tokens and the timed steps.
fn v2_cache(shape: &Shape, context: usize, batch: usize) -> Vec<DynTensor> {
    let allocator = Allocator::default();
    let dims = [batch, shape.kv_heads, context + STEPS, shape.head_dim];
    (0..2 * shape.layers).map(|_| DynTensor::new(&allocator, TensorElementType::Float32, dims).unwrap()).collect()
}

fn v2_step_seconds(
    graph: &mut BoundGraph,
    cache: &mut [DynTensor],
    shape: &Shape,
    context: usize,
    batch: usize,
) -> f64 {
    let names = cache_names(shape.layers);
    let ids = Tensor::from_array(([batch, 1], vec![7i64; batch])).unwrap().into_dyn();
    let start = Instant::now();
    for step in 0..STEPS {
        for ((past, present), tensor) in names.iter().zip(cache.iter_mut()) {
            graph.bind_in_place(past, present, tensor.view_mut().into_dyn()).unwrap();
        }
        let seqlens = Tensor::from_array(([batch], vec![(context + step) as i32; batch])).unwrap().into_dyn();
        let total = Tensor::from_array((Vec::<usize>::new(), vec![(context + step + 1) as i32])).unwrap().into_dyn();
        let inputs = [("input_ids", &ids), ("seqlens_k", &seqlens), ("total_sequence_length", &total)];
        std::hint::black_box(graph.run(&inputs, &["logits"]).unwrap());
    }
    start.elapsed().as_secs_f64() / STEPS as f64
}

fn cache_names(layers: usize) -> Vec<(String, String)> {
    (0..layers)
        .flat_map(|i| {
            ["key", "value"].map(|part| (format!("past_key_values.{i}.{part}"), format!("present.{i}.{part}")))
        })
        .collect()
}

/// The format-1 decode graph to compare with, if there is one.
fn v1_graph(repo: &Path, bundle_dir: &Path) -> Option<PathBuf> {
    if let Ok(path) = std::env::var("CROCO_BENCH_V1_GRAPH") {
        return Some(PathBuf::from(path));
    }
    if bundle_dir != repo.join("data/models/policy") {
        return None;
    }
    let out = repo.join("target/croco-bench/v1-demo-decode.onnx");
    let blob = format!("{V1_COMMIT}:data/models/policy/decode.onnx");
    let shown = std::process::Command::new("git").args(["show", &blob]).current_dir(repo).output().ok()?;
    if !shown.status.success() {
        return None;
    }
    std::fs::create_dir_all(out.parent()?).ok()?;
    std::fs::write(&out, shown.stdout).ok()?;
    Some(out)
}

/// A format-1 decode session: the weights bound once, the cache passed in
/// (`[batch, kv_heads, past, head_dim]`) and returned one position longer.
struct V1<'w> {
    session: Session,
    weights: &'w Weights,
}

impl<'w> V1<'w> {
    fn new(path: &Path, weights: &'w Weights) -> V1<'w> {
        let session = croco::model::runtime::session(path, Target::Cpu, THREADS).unwrap();
        V1 { session, weights }
    }

    fn step_seconds(&mut self, shape: &Shape, context: usize, batch: usize) -> f64 {
        let mut binding = self.session.create_binding().unwrap();
        for (name, value) in &self.weights.tensors {
            binding.bind_input(name.as_str(), value).unwrap();
        }
        let dims = [batch, shape.kv_heads, context, shape.head_dim];
        let mut past: Vec<DynValue> = (0..2 * shape.layers)
            .map(|_| Tensor::from_array((dims, vec![0.1f32; dims.iter().product()])).unwrap().into_dyn())
            .collect();
        let names = cache_names(shape.layers);
        let ids = Tensor::from_array(([batch, 1], vec![7i64; batch])).unwrap().into_dyn();
        let start = Instant::now();
        for step in 0..STEPS {
            let width = context + step + 1;
            let mask = Tensor::from_array(([batch, width], vec![1i64; batch * width])).unwrap().into_dyn();
            let positions = Tensor::from_array(([batch, 1], vec![(width - 1) as i64; batch])).unwrap().into_dyn();
            for (name, value) in [("input_ids", &ids), ("attention_mask", &mask), ("position_ids", &positions)] {
                binding.bind_input(name, value).unwrap();
            }
            for ((name, _), value) in names.iter().zip(&past) {
                binding.bind_input(name.as_str(), value).unwrap();
            }
            for output in std::iter::once("logits".to_string()).chain(names.iter().map(|(_, present)| present.clone()))
            {
                binding.bind_output_to_device(output.as_str(), &ort::memory::MemoryInfo::default()).unwrap();
            }
            let mut outputs = self.session.run_binding(&binding).unwrap();
            past = names.iter().map(|(_, present)| outputs.remove(present.as_str()).unwrap()).collect();
        }
        start.elapsed().as_secs_f64() / STEPS as f64
    }
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
    layers: usize,
    kv_heads: usize,
    head_dim: usize,
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
            layers: arch.num_layers,
            kv_heads: arch.num_kv_heads,
            head_dim: arch.head_dim,
            weight_bytes,
            kv_bytes_per_token: layers * 2.0 * (arch.num_kv_heads * arch.head_dim) as f64 * 4.0,
            flops_per_token: 2.0 * (matrices - embedding + embedding.max(lm_head)),
            attention_flops_per_context: layers * 2.0 * 2.0 * (arch.num_attention_heads * arch.head_dim) as f64,
        }
    }
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
