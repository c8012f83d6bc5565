//! Predicted peak memory of the model work, from a bundle's manifest and a
//! stage's batch settings, before anything is loaded: what `croco plan`
//! prints and what `croco validate` holds against `[run] device_memory`.
//!
//! The figures follow the format-2 graphs in the precision the device runs
//! (float32 on the CPU, the bundle's half precision on CUDA), the way ONNX
//! Runtime runs them:
//! - **weights**: every tensor of the manifest, once, in that precision
//!   (bound by reference to every session of the device), and on the CPU
//!   the matrices once more in generation, whose decode session packs them;
//! - **KV cache** (generation): one buffer of `slots × length` tokens of
//!   `2 · layers · kv_heads · head_dim` elements, written in place, plus the
//!   caches of the prompts prefilled ahead of admission (about two prefill
//!   calls' worth);
//! - **activations**: the largest call's live tensors: the logits it returns
//!   (one row per sequence for decode and prefill; the response positions,
//!   with their log-softmax, for log-probs; none for scores), one layer's
//!   MLP (`tokens × 3 · intermediate`) and four `tokens × hidden` streams
//!   (residual, normed input, attention output, projection). Generation
//!   also counts the larger of the MLP and one layer's attention
//!   probabilities (`rows × heads × width × keys`, float32); a batched
//!   forward without a cache (score, log-probs) does not (measured: its peak
//!   does not depend on `width²` at a given token count);
//! - **workspace**: ONNX Runtime's arena rounds allocations up and keeps
//!   freed blocks; a quarter of the activations is allowed for it in
//!   generation (a batched forward's figure was measured with its arena).
//!
//! Host memory holds the weights once more while they are decoded from the
//! memory-mapped file (one tensor at a time) and, on CUDA, the logits copied
//! back.

use super::bundle::BundleManifest;
use super::precision::Precision;

/// Bytes of one float32 (logits, softmax, attention probabilities).
const F32: u64 = 4;

/// Host memory of a croco process before any model is loaded: the binary,
/// ONNX Runtime, DataFusion's session, the tokenizer, the stage's batches
/// (measured: peak RSS of `croco run --stage generate` on the demo less its
/// predicted model footprint, ~125 MB for a release build and ~170 MB for a
/// debug one on Linux x86_64; between the two).
pub const RUNTIME_BYTES: u64 = 150 << 20;

/// The parts of one model stage's peak memory, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Footprint {
    /// The bundle's weights.
    pub weights: u64,
    /// The generation KV cache.
    pub kv_cache: u64,
    /// The largest call's live activations.
    pub activations: u64,
    /// Allocator slack on top of the activations.
    pub workspace: u64,
}

impl Footprint {
    /// Everything together.
    pub fn total(&self) -> u64 {
        self.weights + self.kv_cache + self.activations + self.workspace
    }
}

/// The numbers of a bundle the estimates need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelShape {
    /// Bytes of every weight tensor, in the precision the graphs run.
    pub weight_bytes: u64,
    /// Bytes of one element of the activations and the KV cache.
    pub element: u64,
    /// Decoder layers.
    pub layers: u64,
    /// Model width.
    pub hidden: u64,
    /// MLP width.
    pub intermediate: u64,
    /// Query heads.
    pub heads: u64,
    /// Key/value heads.
    pub kv_heads: u64,
    /// Head dimension.
    pub head_dim: u64,
    /// Vocabulary size.
    pub vocab: u64,
    /// Elements of the largest weight tensor (decoded alone on the host).
    pub largest_tensor: u64,
    /// Bytes of the weights GEMMs multiply by (every matrix but the
    /// embeddings, which are gathered, unless the LM head reuses them): what
    /// a session that packs its weights holds once more.
    pub gemm_weight_bytes: u64,
    /// Sequence chunks of the layer training graphs (one in exports from
    /// before chunking).
    pub sequence_chunks: u64,
    /// The precision of the training graphs' weights and hidden states: the
    /// device's where they ship it, else float32.
    pub training_precision: Precision,
    /// Elements per token and layer the forward keeps with
    /// [`Recompute::Selective`] (0: the bundle's training graphs predate it).
    pub selective_saved: u64,
}

impl ModelShape {
    /// The shape in a bundle manifest, run in `precision`.
    pub fn of(manifest: &BundleManifest, precision: Precision) -> ModelShape {
        let arch = &manifest.architecture;
        let element = precision.bytes() as u64;
        let tensors = &manifest.weights.tensors;
        let elements = |t: &super::bundle::TensorSpec| t.shape.iter().product::<usize>() as u64;
        let tied = !tensors.iter().any(|t| t.name == "lm_head.weight");
        let gemm_elements: u64 = (tensors.iter())
            .filter(|t| t.shape.len() == 2 && (tied || !t.name.ends_with("embed_tokens.weight")))
            .map(elements)
            .sum();
        ModelShape {
            weight_bytes: tensors.iter().map(elements).sum::<u64>() * element,
            element,
            layers: arch.num_layers as u64,
            hidden: arch.hidden_size as u64,
            intermediate: arch.intermediate_size as u64,
            heads: arch.num_attention_heads as u64,
            kv_heads: arch.num_kv_heads as u64,
            head_dim: arch.head_dim as u64,
            vocab: arch.vocab_size as u64,
            largest_tensor: tensors.iter().map(elements).max().unwrap_or(0),
            gemm_weight_bytes: gemm_elements * element,
            // A bundle without training graphs yet is planned with the ones
            // `train-graphs` would add.
            sequence_chunks: manifest
                .graphs
                .get("train_layer_backward")
                .map_or(EXPORTED_SEQUENCE_CHUNKS, |g| g.sequence_chunks.map_or(1, u64::from)),
            training_precision: if trains_in(manifest, precision) { precision } else { Precision::Float32 },
            selective_saved: selective_saved(manifest),
        }
    }

    /// Host memory of the stage whose device footprint is `device`: on the
    /// CPU everything is host memory; on CUDA the host decodes one weight
    /// tensor at a time (in float32) and receives `host_rows` rows of logits.
    pub fn host(&self, device: &Footprint, on_cpu: bool, host_rows: u64) -> u64 {
        match on_cpu {
            true => RUNTIME_BYTES + device.total(),
            false => RUNTIME_BYTES + self.largest_tensor * F32 * 2 + host_rows * self.vocab * F32,
        }
    }

    /// Bytes of one cached token (keys and values of every layer).
    pub fn kv_bytes_per_token(&self) -> u64 {
        2 * self.layers * self.kv_heads * self.head_dim * self.element
    }

    /// One forward call of `rows` sequences `width` tokens wide over `keys`
    /// keys: its live tensors, with `logits` = how many positions' logits it
    /// returns and `logit_copies` how many vocab-wide float32 tensors per
    /// position stay alive.
    fn call(&self, rows: u64, width: u64, keys: u64, logits: u64, logit_copies: u64) -> u64 {
        let tokens = rows * width;
        let attention = rows * self.heads * width * keys * F32;
        let mlp = tokens * 3 * self.intermediate * self.element;
        // A layer's attention and its MLP are not alive at once: ONNX Runtime frees each when its consumers ran.
        logits * logit_copies * self.vocab * F32 + attention.max(mlp) + self.streams(tokens)
    }

    /// Four `tokens × hidden` streams: residual, normed input, attention
    /// output, projection.
    fn streams(&self, tokens: u64) -> u64 {
        tokens * 4 * self.hidden * self.element
    }

    fn with_workspace(&self, kv_cache: u64, activations: u64) -> Footprint {
        Footprint { weights: self.weight_bytes, kv_cache, activations, workspace: activations / 4 }
    }

    /// Generation over `slots` sequences of up to `length` cached tokens,
    /// prompts prefilled in calls of at most `prefill_tokens` padded tokens.
    /// On the CPU the decode session packs its GEMMs' weights once more
    /// ([`super::graph::WeightFeed::Initializers`]).
    pub fn generation(&self, slots: u64, length: u64, prefill_tokens: u64, on_cpu: bool) -> Footprint {
        let chunk = prefill_tokens.min(length);
        let kv_cache = (slots * length + 2 * chunk) * self.kv_bytes_per_token();
        let decode = self.call(slots, 1, length, slots, 1);
        // The worst prefill call: one prompt filling the chunk, its last position's logits returned.
        let prefill = self.call(1, chunk, chunk, 1, 1);
        let mut footprint = self.with_workspace(kv_cache, decode.max(prefill));
        if on_cpu {
            footprint.weights += self.gemm_weight_bytes;
        }
        footprint
    }

    /// Reward scoring (or log-probs with `logits`) of batches of at most
    /// `rows` rows and `tokens` padded tokens, rows at most `width` long.
    ///
    /// Measured on the CPU (`cargo bench --bench generate_memory`; the demo
    /// and a ~0.5 B reward bundle, 32 rows × ~512 tokens): the peak is the
    /// same at 64 × 256, 32 × 512 and 16 × 1,024 tokens (GroupQueryAttention
    /// never holds the batch's `rows × heads × width²` probabilities). The
    /// graphs leave out attention's present keys and values (ONNX Runtime
    /// had kept every layer's until the call ended: bundles exported before
    /// 2026-12-05 still do, and need `rebundle`), so the MLP and the streams,
    /// without further slack, are the figure.
    pub fn forward(&self, rows: u64, tokens: u64, width: u64, logits: bool) -> Footprint {
        let width = width.min(tokens).max(1);
        let rows = rows.min(tokens / width).max(1);
        let tokens = rows * width;
        // Log-probs keep the response positions' logits and their log-softmax
        // (at most every position); scores return no logits.
        let logits = if logits { tokens * 2 * self.vocab * F32 } else { 0 };
        let mlp = tokens * 3 * self.intermediate * self.element;
        let activations = logits + mlp + self.streams(tokens);
        Footprint { weights: self.weight_bytes, kv_cache: 0, activations, workspace: 0 }
    }

    /// One layer-wise training step (`src/model/layerwise.rs`; the training
    /// graphs are float32) over `rows` sequences `width` tokens wide: the
    /// weights, every layer's saved input (`layers × rows × width × hidden`),
    /// the layer graphs' working set and one head chunk of `head_chunk`
    /// positions per row (its logits, their softmax and gradient). Each
    /// graph's session keeps its own arena, so the parts add up.
    ///
    /// The layer graphs cut the sequence into `sequence_chunks` chunks of
    /// `c = ⌈width / chunks⌉` positions (`tools/export/chunked.py`): they
    /// hold a few whole-sequence streams (inputs, queries, keys, values,
    /// attention outputs and their gradients), and one chunk at a time its
    /// MLP and its attention scores over the key prefix (the last chunk's:
    /// `rows × heads × c × width`). The copies of each are fitted on measured
    /// peaks (tune bench, CPU, 8 chunks; within 7.1 % of all four): a ~0.5 B
    /// Llama at 1 pair × 1,024 and × 2,048 tokens (3.96 and 4.90 GB; its
    /// vocabulary of 4,096 makes the head negligible) and two layers of
    /// EuroLLM-9B's widths at 1 pair × 1,024 and × 2,048 (13.3 and 16.5 GB;
    /// vocabulary 128,000: the head's two sessions). In half precision the
    /// weights, saved inputs and whole-sequence streams take its element
    /// size; the attention scores, the head (softmax, logits) and the MLP's
    /// streams (LoRA inputs and dropout masks are float32) stay float32: the
    /// float32 fit, scaled, not measured on a GPU.
    ///
    /// With [`Recompute::Selective`] every layer also keeps
    /// [`ModelShape::selective_saved`] elements per token: its MLP's gate
    /// and up products and attention's queries, keys, values and output.
    pub fn training(&self, rows: u64, width: u64, head_chunk: u64, recompute: Recompute) -> Footprint {
        let element = self.training_precision.bytes() as u64;
        let weights = self.weight_bytes / self.element * element;
        let chunks = self.sequence_chunks.max(1);
        let chunk = width.div_ceil(chunks);
        let padded = chunk * chunks;
        let products = match recompute {
            Recompute::Selective => TRAINING_PRODUCT_COPIES * self.layers * rows * padded * self.selective_saved,
            Recompute::Auto | Recompute::Full => 0,
        };
        let saved = (TRAINING_SAVED_COPIES * self.layers * rows * width * self.hidden + products) * element;
        let sequence = TRAINING_SEQUENCE_COPIES * rows * padded * self.hidden * element;
        let attention = TRAINING_ATTENTION_COPIES * rows * self.heads * chunk * padded * F32;
        let mlp = TRAINING_STREAM_COPIES * rows * chunk * (4 * self.hidden + 3 * self.intermediate) * F32;
        let head = TRAINING_HEAD_COPIES * rows * head_chunk.min(width) * self.vocab * F32;
        Footprint { weights, kv_cache: 0, activations: saved + sequence + attention + mlp + head, workspace: 0 }
    }
}

/// The graphs of the selective recompute ([`Recompute::Selective`]), in
/// bundles exported since they exist.
pub const SELECTIVE_GRAPHS: [&str; 2] = ["train_layer_save", "train_layer_backward_saved"];

/// [`ModelShape::selective_saved`] of a manifest: the MLP's gate and up
/// products (`2 · intermediate`) and, in exports since they are kept too,
/// attention's queries, keys, values and output (`2 · (heads + kv_heads) ·
/// head_dim`). A bundle without training graphs yet is planned with the ones
/// `train-graphs` would add.
fn selective_saved(manifest: &BundleManifest) -> u64 {
    let arch = &manifest.architecture;
    let mlp = 2 * arch.intermediate_size as u64;
    let attention = 2 * (arch.num_attention_heads + arch.num_kv_heads) as u64 * arch.head_dim as u64;
    let keeps_attention =
        |g: &super::bundle::GraphSpec| g.outputs.iter().any(|o| o.name.starts_with("saved.attention."));
    match (manifest.graphs.get(SELECTIVE_GRAPHS[0]), manifest.graphs.contains_key("train_layer")) {
        (Some(save), _) if keeps_attention(save) => mlp + attention,
        (Some(_), _) => mlp,
        (None, true) => 0,
        (None, false) => mlp + attention,
    }
}

/// What a training step's backward recomputes of each layer (`[run]
/// recompute`). Every choice gives the same gradients, bit for bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Recompute {
    /// `selective` where the bundle has its graphs and the step's plan with
    /// it fits the memory bound, else `full`.
    #[default]
    Auto,
    /// The whole layer from its saved input (gradient checkpointing, as
    /// TRL's `gradient_checkpointing`).
    Full,
    /// Everything but the MLP's gate and up products, which the forward
    /// keeps: ~20 % less work per step.
    Selective,
}

impl Recompute {
    /// The choice for a step of the bundle `shape` over `rows` sequences of
    /// up to `width` tokens, the head in chunks of `head_chunk` positions:
    /// `Auto` takes `Selective` where the bundle has its graphs and its plan
    /// fits `bound` bytes (none: `Full`).
    pub fn resolve(
        self,
        shape: &ModelShape,
        (rows, width): (u64, u64),
        head_chunk: u64,
        bound: Option<u64>,
    ) -> Recompute {
        match self {
            Recompute::Auto => {
                let plan = shape.training(rows, width, head_chunk, Recompute::Selective).total();
                match shape.selective_saved > 0 && bound.is_some_and(|b| plan <= b) {
                    true => Recompute::Selective,
                    false => Recompute::Full,
                }
            }
            chosen => chosen,
        }
    }
}

impl std::fmt::Display for Recompute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Recompute::Auto => "auto",
            Recompute::Full => "full",
            Recompute::Selective => "selective",
        })
    }
}

/// Whether the training graphs compute in `precision`: they ship its
/// variant or, in a bundle without them yet, the checkpoint ships it (what
/// `train-graphs` would add: float32, and the checkpoint's half precision).
fn trains_in(manifest: &BundleManifest, precision: Precision) -> bool {
    match manifest.graphs.get("train_layer") {
        Some(graph) => graph.files.contains_key(precision.name()),
        None => precision == Precision::Float32 || manifest.weights.dtype == precision.name(),
    }
}

/// The sequence chunks of the layer training graphs `tools/export` writes
/// (`train_graphs.SEQUENCE_CHUNKS`).
pub const EXPORTED_SEQUENCE_CHUNKS: u64 = 8;

/// Bytes per saved layer input: the input itself and the slack of the
/// forward session's arena, which allocates them and grows by doubling
/// (fitted; see [`ModelShape::training`]).
pub const TRAINING_SAVED_COPIES: u64 = 3;

/// Copies of the saved MLP products ([`Recompute::Selective`]; fitted: the
/// ~0.5 B Llama at 1 pair × 1,024 tokens measured 2.38 GB above full
/// recompute for 2.15 GB of products).
pub const TRAINING_PRODUCT_COPIES: u64 = 1;

/// Whole-sequence `rows × width × hidden` float32 streams alive in the layer
/// graphs' sessions, with the arenas' slack (fitted).
pub const TRAINING_SEQUENCE_COPIES: u64 = 16;

/// `rows × heads × chunk × width` float32 attention tensors alive in the
/// layer graphs' sessions: one chunk's scores, probabilities and their
/// gradients (fitted).
pub const TRAINING_ATTENTION_COPIES: u64 = 4;

/// `rows × chunk × (4 · hidden + 3 · intermediate)` float32 streams of one
/// chunk's projections, MLP and dropout masks alive in the layer graphs'
/// sessions (fitted).
pub const TRAINING_STREAM_COPIES: u64 = 28;

/// Vocabulary-wide float32 rows per head-chunk position alive in a
/// layer-wise training step: logits, their softmax and gradient in the head
/// and in its backward, each session's arena kept (fitted).
pub const TRAINING_HEAD_COPIES: u64 = 12;

/// `bytes` as a short human figure (`1.5 GiB`).
pub fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < units.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", units[unit]) }
}

/// The host's available memory (`MemAvailable` of `/proc/meminfo`; none
/// where it cannot be read): the bound of `[run] recompute = "auto"` on the
/// CPU without `device_memory`.
pub fn available_host_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Parses `80GiB`, `80 GB`, `512MiB`, `1.5TiB` or a byte count.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.trim().parse().ok()?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kib" => 1024.0,
        "mib" => 1024f64.powi(2),
        "gib" => 1024f64.powi(3),
        "tib" => 1024f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        _ => return None,
    };
    (number.is_finite() && number >= 0.0).then_some((number * scale) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::bundle::{Bundle, Verify};

    /// EuroLLM-9B's numbers (its Hugging Face config), bfloat16.
    fn eurollm_9b() -> ModelShape {
        ModelShape {
            weight_bytes: 9_150_000_000 * 2,
            element: 2,
            layers: 42,
            hidden: 4096,
            intermediate: 12288,
            heads: 32,
            kv_heads: 8,
            head_dim: 128,
            vocab: 128_000,
            sequence_chunks: 8,
            largest_tensor: 128_000 * 4096,
            gemm_weight_bytes: (9_150_000_000 - 128_000 * 4096) * 2,
            training_precision: Precision::Float32,
            selective_saved: 2 * 12288 + 2 * (32 + 8) * 128,
        }
    }

    #[test]
    fn the_kv_cache_is_one_buffer_of_slots_times_length_tokens() {
        let shape = eurollm_9b();
        // 2 · 42 layers · 8 heads · 128 · 2 bytes = 172,032 bytes per token in bfloat16.
        assert_eq!(shape.kv_bytes_per_token(), 172_032);
        let plan = shape.generation(1024, 4096, 2048, false);
        assert_eq!(plan.kv_cache, (1024 * 4096 + 2 * 2048) * 172_032);
        // 64 slots of 4,608 tokens fit beside the 18 GB of weights on an 80 GB H100.
        let paper = shape.generation(64, 4608, 2048, false);
        assert!(paper.total() < 80 * (1 << 30), "{paper:?}");
        assert!(plan.total() > plan.kv_cache);
    }

    #[test]
    fn a_token_budget_bounds_the_activations() {
        let shape = eurollm_9b();
        let small = shape.forward(64, 8192, 4096, true);
        let large = shape.forward(64, 65536, 4096, true);
        assert!(large.activations > 6 * small.activations, "{small:?} {large:?}");
        // Scoring returns no logits: log-probs of the same batch add its logits and their log-softmax.
        let scoring = shape.forward(64, 8192, 4096, false);
        assert_eq!(small.activations - scoring.activations, 2 * 8192 * 128_000 * F32);
    }

    #[test]
    fn layer_wise_training_saves_one_input_per_layer_and_works_on_one_layer() {
        let shape = eurollm_9b();
        let step = shape.training(2, 4096, 512, Recompute::Full);
        // 42 saved inputs of 2 × 4096 × 4096 float32 (5.6 GB), with the forward arena's slack.
        let saved = TRAINING_SAVED_COPIES * 42 * 2 * 4096 * 4096 * F32;
        // One layer's working set, whatever the depth: the same step of a 2-layer model differs by the saved inputs only.
        let two_layers = ModelShape { layers: 2, ..shape }.training(2, 4096, 512, Recompute::Full);
        assert_eq!(step.activations - two_layers.activations, saved * 40 / 42);
        assert_eq!(step.weights, 9_150_000_000 * F32);
        // The recipe's step (1 pair × 4,096 tokens, float32 training graphs) fits one 80 GB GPU.
        assert!(step.total() < 80 * (1 << 30), "{}", human(step.total()));
    }

    #[test]
    fn selective_recompute_keeps_the_mlp_products_and_attention_tensors_per_token_and_layer() {
        let shape = ModelShape { training_precision: Precision::BFloat16, ..eurollm_9b() };
        let (full, selective) =
            (shape.training(2, 4096, 512, Recompute::Full), shape.training(2, 4096, 512, Recompute::Selective));
        // gate and up (2 × 12,288), q and attention output (2 × 32 × 128), k and v (2 × 8 × 128), in bfloat16
        let kept = TRAINING_PRODUCT_COPIES * 42 * 2 * 4096 * (2 * 12288 + 2 * 32 * 128 + 2 * 8 * 128) * 2;
        assert_eq!(selective.activations - full.activations, kept);
        // auto: selective where the plan with it fits the bound, full where it does not or nothing bounds it.
        let bound = |b: Option<u64>| Recompute::Auto.resolve(&shape, (2, 4096), 512, b);
        assert_eq!(bound(Some(selective.total())), Recompute::Selective);
        assert_eq!(bound(Some(selective.total() - 1)), Recompute::Full);
        assert_eq!(bound(None), Recompute::Full);
        let without = ModelShape { selective_saved: 0, ..shape };
        assert_eq!(Recompute::Auto.resolve(&without, (2, 4096), 512, Some(u64::MAX)), Recompute::Full);
        assert_eq!(Recompute::Full.resolve(&shape, (2, 4096), 512, Some(u64::MAX)), Recompute::Full);
    }

    #[test]
    fn bfloat16_training_graphs_halve_the_weights_and_saved_inputs_not_the_attention() {
        let fp32 = eurollm_9b();
        let bf16 = ModelShape { training_precision: Precision::BFloat16, ..fp32 };
        let (wide, narrow) =
            (fp32.training(2, 4096, 512, Recompute::Full), bf16.training(2, 4096, 512, Recompute::Full));
        assert_eq!(narrow.weights, 9_150_000_000 * 2);
        let saved = |shape: &ModelShape| {
            shape.training(2, 4096, 512, Recompute::Full).activations
                - ModelShape { layers: 0, ..*shape }.training(2, 4096, 512, Recompute::Full).activations
        };
        assert_eq!(saved(&fp32), 2 * saved(&bf16));
        let attention = |shape: &ModelShape| {
            shape.training(2, 4096, 512, Recompute::Full).activations
                - ModelShape { heads: 0, ..*shape }.training(2, 4096, 512, Recompute::Full).activations
        };
        assert_eq!(attention(&fp32), attention(&bf16));
        assert!(narrow.total() < wide.total() * 3 / 4, "{} vs {}", human(narrow.total()), human(wide.total()));
    }

    #[test]
    fn training_graphs_are_planned_in_the_precision_they_ship() {
        let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/models/policy");
        let mut manifest = Bundle::open(&demo, Verify::Sizes).unwrap().manifest;
        // The demo's training graphs are float32 only: float32 whatever the device runs.
        assert_eq!(ModelShape::of(&manifest, Precision::BFloat16).training_precision, Precision::Float32);
        let train_layer = manifest.graphs.get_mut("train_layer").unwrap();
        train_layer.files.insert("bfloat16".into(), "train_layer.bfloat16.onnx".into());
        assert_eq!(ModelShape::of(&manifest, Precision::BFloat16).training_precision, Precision::BFloat16);
        assert_eq!(ModelShape::of(&manifest, Precision::Float32).training_precision, Precision::Float32);
        // Without training graphs: those `train-graphs` would add for the checkpoint's dtype.
        manifest.graphs.remove("train_layer");
        assert_eq!(ModelShape::of(&manifest, Precision::BFloat16).training_precision, Precision::Float32);
        manifest.weights.dtype = "bfloat16".into();
        assert_eq!(ModelShape::of(&manifest, Precision::BFloat16).training_precision, Precision::BFloat16);
    }

    #[test]
    fn selective_recompute_is_planned_with_what_the_bundles_forward_keeps() {
        let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/models/policy");
        let mut manifest = Bundle::open(&demo, Verify::Sizes).unwrap().manifest;
        let arch = manifest.architecture.clone();
        let mlp = 2 * arch.intermediate_size as u64;
        let attention = 2 * (arch.num_attention_heads + arch.num_kv_heads) as u64 * arch.head_dim as u64;
        assert_eq!(ModelShape::of(&manifest, Precision::Float32).selective_saved, mlp + attention);
        // An export from before attention's tensors were kept too: the MLP products only.
        let save = manifest.graphs.get_mut(SELECTIVE_GRAPHS[0]).unwrap();
        save.outputs.retain(|o| !o.name.starts_with("saved.") || o.name.starts_with("saved.mlp_"));
        assert_eq!(ModelShape::of(&manifest, Precision::Float32).selective_saved, mlp);
        // One from before selective recompute: none, so `auto` recomputes fully.
        manifest.graphs.remove(SELECTIVE_GRAPHS[0]);
        let shape = ModelShape::of(&manifest, Precision::Float32);
        assert_eq!(shape.selective_saved, 0);
        assert_eq!(Recompute::Auto.resolve(&shape, (2, 128), 512, Some(u64::MAX)), Recompute::Full);
        // No training graphs yet: planned with those `train-graphs` would add.
        manifest.graphs.remove("train_layer");
        assert_eq!(ModelShape::of(&manifest, Precision::Float32).selective_saved, mlp + attention);
    }

    #[test]
    fn chunked_layer_graphs_hold_a_chunk_of_attention_not_the_whole_square() {
        let chunked = eurollm_9b();
        let whole = ModelShape { sequence_chunks: 1, ..chunked };
        let attention = |shape: &ModelShape| {
            let step = shape.training(2, 4096, 512, Recompute::Full);
            step.activations - ModelShape { heads: 0, ..*shape }.training(2, 4096, 512, Recompute::Full).activations
        };
        // The last query chunk sees every key: 1/8 of the 4096² scores per head.
        assert_eq!(attention(&whole), 8 * attention(&chunked));
        assert_eq!(attention(&chunked), TRAINING_ATTENTION_COPIES * 2 * 32 * 512 * 4096 * F32);
    }

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!(parse_size("80GiB"), Some(80 * 1024 * 1024 * 1024));
        assert_eq!(parse_size("80 GB"), Some(80_000_000_000));
        assert_eq!(parse_size("1.5TiB"), Some((1.5 * 1024f64.powi(4)) as u64));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("3 parsecs"), None);
        assert_eq!(human(3 * 1024 * 1024 * 1024 / 2), "1.5 GiB");
    }
}
