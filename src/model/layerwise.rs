//! A LoRA preference-tuning step driven layer by layer (gradient
//! checkpointing): the bundle's training graphs (`docs/bundle-format.md`,
//! training graphs) run embeddings → `train_layer` × L, keeping only each
//! layer's input → `train_head` over the response positions, in chunks →
//! the loss and its gradient w.r.t. each sequence's log-prob, here in Rust →
//! `train_head_backward` → `train_layer_backward` × L in reverse (each layer
//! recomputed from its saved input), collecting every LoRA gradient. The
//! memory of a step is the weights, L saved layer inputs, one layer's working
//! set and one head chunk, whatever the depth; the full `[rows, seq, vocab]`
//! logits never exist.
//!
//! With [`Recompute::Selective`] the forward runs `train_layer_save`,
//! which also returns each layer's `saved.*` tensors (per sequence chunk:
//! the MLP's gate and up products, attention's queries, keys, values and
//! output), and the backward `train_layer_backward_saved` takes them back
//! instead of recomputing them (of the forward it then recomputes only the
//! attention probabilities, the norms and `o_proj`): the same gradients,
//! bit for bit, for `layers × rows × width × (2 · intermediate + 2 · (heads
//! + kv_heads) · head_dim)` more elements.
//!
//! The result is [`super::dpo::StepOutput`], with the numbers of the torch
//! DPO step the fixtures hold (the graphs are traced from the same
//! functional model; `tools/export/tests/test_train_graphs.py` holds them to
//! torch autograd).

use ort::value::{DynValue, Tensor};

use super::bundle::{Bundle, BundleKind};
use super::dpo::{Loss, LossSettings, PairTokens, StepOutput};
use super::graph::{BoundGraph, WeightFeed};
use super::lora::Adapter;
use super::memory::ModelShape;
pub use super::memory::{Recompute, SELECTIVE_GRAPHS};
use super::precision::Precision;
use super::runtime::{SessionConfig, Target, resolve_target};
use super::values::{host_f32, host_widened, left_pad};
use super::weights::Weights;
use super::{ModelError, tensor_error};

/// The graphs a layer-wise step needs.
pub const TRAINING_GRAPHS: [&str; 5] =
    ["train_embed", "train_layer", "train_layer_backward", "train_head", "train_head_backward"];

/// Response positions per head call, at most (per row): bounds the head's
/// `[rows, chunk, vocab]` logits.
pub const HEAD_CHUNK: usize = 512;

/// The name prefix of the tensors `train_layer_save` returns beside
/// `hidden_out` and `train_layer_backward_saved` takes back, by name.
const SAVED_PREFIX: &str = "saved.";

/// The training graphs of a policy bundle, its weights bound by reference.
pub struct LayerwiseGraphs {
    embed: BoundGraph,
    /// `train_layer`, or `train_layer_save` with [`Recompute::Selective`].
    layer: BoundGraph,
    /// `train_layer_backward`, or `train_layer_backward_saved`.
    layer_backward: BoundGraph,
    /// Whether the forward keeps its `saved.*` tensors ([`Recompute::Selective`]).
    selective: bool,
    head: BoundGraph,
    head_backward: BoundGraph,
    weights: Weights,
    layers: usize,
    hidden: usize,
    /// LoRA module names (`q_proj`, ...) in the graphs' order.
    targets: Vec<String>,
    pad: i64,
    target: Target,
    /// The precision the graphs compute in (the hidden states' and the
    /// weights'; LoRA tensors and their gradients are float32 in every one).
    precision: Precision,
}

impl LayerwiseGraphs {
    /// Builds the training sessions on the configured device: float32 on the CPU,
    /// the bundle's half precision on CUDA where its training graphs have it;
    /// with `recompute` selective, the layer graphs whose forward keeps its
    /// `saved.*` tensors instead of the plain pair. `Auto` is resolved for steps of
    /// `step` = (rows, longest row) held to `bound` bytes (none: on the CPU,
    /// the memory the host has available; on CUDA, full recompute).
    pub fn load(
        bundle: &Bundle,
        pad_token_id: i64,
        config: &SessionConfig,
        recompute: Recompute,
        step: (u64, u64),
        bound: Option<u64>,
    ) -> Result<LayerwiseGraphs, ModelError> {
        bundle.expect_kind(BundleKind::Policy)?;
        if let Some(missing) = TRAINING_GRAPHS.iter().find(|g| !bundle.manifest.graphs.contains_key(**g)) {
            return Err(ModelError::Invalid {
                dir: bundle.dir.clone(),
                problem: format!(
                    "no `{missing}` training graph: add them with `python -m tools.export train-graphs BUNDLE`"
                ),
            });
        }
        let target = resolve_target(config)?;
        let precision = bundle.precision_for("train_layer", target)?;
        let bound = bound.or_else(|| if target == Target::Cpu { super::memory::available_host_memory() } else { None });
        let recompute = recompute.resolve(&ModelShape::of(&bundle.manifest, precision), step, HEAD_CHUNK as u64, bound);
        let weights = Weights::load(bundle, precision, target)?;
        let graph = |name: &str| BoundGraph::new(bundle, name, &weights, target, config.threads, WeightFeed::Bound);
        let arch = &bundle.manifest.architecture;
        let targets = bundle.manifest.lora.as_ref().map(|l| l.target_modules.clone()).unwrap_or_default();
        // Only the layer pair the step runs is loaded.
        let selective = recompute == Recompute::Selective;
        let [forward, backward] = if selective { SELECTIVE_GRAPHS } else { ["train_layer", "train_layer_backward"] };
        if let Some(missing) = [forward, backward].iter().find(|g| !bundle.manifest.graphs.contains_key(**g)) {
            return Err(ModelError::Invalid {
                dir: bundle.dir.clone(),
                problem: format!(
                    "no `{missing}` graph for recompute = \"selective\": re-export the training graphs \
                     (`python -m tools.export train-graphs BUNDLE`) or set [run] recompute = \"full\""
                ),
            });
        }
        if selective {
            check_saved(bundle, forward, backward)?;
        }
        Ok(LayerwiseGraphs {
            embed: graph("train_embed")?,
            layer: graph(forward)?,
            layer_backward: graph(backward)?,
            selective,
            head: graph("train_head")?,
            head_backward: graph("train_head_backward")?,
            layers: arch.num_layers,
            hidden: arch.hidden_size,
            targets,
            weights,
            pad: pad_token_id,
            target,
            precision,
        })
    }

    /// Where the sessions run.
    pub fn target(&self) -> Target {
        self.target
    }

    /// What the backward recomputes.
    pub fn recompute(&self) -> Recompute {
        if self.selective { Recompute::Selective } else { Recompute::Full }
    }

    /// Loss, log-probs and LoRA gradients of `pairs` given their reference
    /// log-probs `(chosen, rejected)` (length-normalised by the caller under
    /// IPO): the whole model's DPO step, computed layer by layer.
    pub fn step(
        &mut self,
        pairs: &[&PairTokens],
        reference: &[(f32, f32)],
        adapter: &Adapter,
        settings: &LossSettings,
    ) -> Result<StepOutput, ModelError> {
        let sequences: Vec<&[i64]> =
            pairs.iter().map(|p| p.chosen.as_slice()).chain(pairs.iter().map(|p| p.rejected.as_slice())).collect();
        let starts: Vec<usize> = pairs.iter().chain(pairs.iter()).map(|p| p.response_start).collect();
        let padded = left_pad(&sequences, self.pad);
        let (rows, width) = (padded.rows, padded.width);
        let targets = Targets::of(&sequences, &starts, width);
        let ids = tensor(vec![rows, width], padded.ids.clone())?;
        let mask = tensor(vec![rows, width], padded.mask.clone())?;
        let lora = LayerLora::of(adapter, &self.targets, self.layers)?;
        let scalars = Scalars::of(adapter, settings)?;

        // Forward, keeping each layer's input.
        let embed = weight(&self.weights, "model.embed_tokens.weight")?;
        let mut x =
            remove(&mut self.embed.run(&[("input_ids", &ids), ("embed_tokens.weight", embed)], &[])?, "hidden")?;
        let mut saved = Vec::with_capacity(self.layers);
        for layer in 0..self.layers {
            let mut out = self.run_layer(layer, &x, &mask, &lora, &scalars, None)?;
            let input = std::mem::replace(&mut x, remove(&mut out, "hidden_out")?);
            // Its `saved.*` tensors (none with full recompute).
            let kept: Vec<(String, DynValue)> = out.into_iter().filter(|(n, _)| n.starts_with(SAVED_PREFIX)).collect();
            saved.push((input, kept));
        }

        // The head: per-token log-probs of the response tokens, chunk by chunk.
        let token_logps = self.head_logps(&x, &targets)?;
        let counts: Vec<f32> = targets.counts().iter().map(|&n| n as f32).collect();
        let sums: Vec<f32> = token_logps.iter().map(|row| row.iter().sum()).collect();
        let normalised = settings.loss.length_normalised();
        let policy: Vec<f32> =
            sums.iter().zip(&counts).map(|(s, n)| if normalised { s / n.max(1.0) } else { *s }).collect();
        let reference: Vec<f32> = reference.iter().map(|r| r.0).chain(reference.iter().map(|r| r.1)).collect();
        let (loss, weights) = objective(settings, &policy, &reference, &counts);
        let mut grad = self.head_grad(&x, &targets, &weights, rows, width)?;

        // Backward, layer by layer, recomputing each from its saved input.
        let mut grads: Vec<Option<(Vec<f32>, Vec<f32>)>> = vec![None; self.layers * self.targets.len()];
        for layer in (0..self.layers).rev() {
            let (input, kept) = &saved[layer];
            let mut out = self.run_layer(layer, input, &mask, &lora, &scalars, Some((&grad, kept)))?;
            for (m, module) in self.targets.iter().enumerate() {
                let a = host_f32(take_ref(&out, &format!("grad.lora.{module}.A"))?)?.1.to_vec();
                let b = host_f32(take_ref(&out, &format!("grad.lora.{module}.B"))?)?.1.to_vec();
                grads[layer * self.targets.len() + m] = Some((a, b));
            }
            grad = remove(&mut out, "grad_hidden")?;
        }
        let grads = order_grads(adapter, &self.targets, grads)?;
        let pairs_n = pairs.len();
        Ok(StepOutput {
            loss,
            chosen_logps: policy[..pairs_n].to_vec(),
            rejected_logps: policy[pairs_n..].to_vec(),
            grads,
            tokens: sequences.iter().map(|s| s.len()).sum(),
        })
    }

    /// One layer forward (`backward` none) or backward, given the gradient of
    /// its output and the `saved.*` tensors its forward returned (none with
    /// [`Recompute::Full`]).
    fn run_layer(
        &mut self,
        layer: usize,
        hidden: &DynValue,
        mask: &DynValue,
        lora: &LayerLora,
        scalars: &Scalars,
        backward: Option<(&DynValue, &[(String, DynValue)])>,
    ) -> Result<std::collections::BTreeMap<String, DynValue>, ModelError> {
        let index = tensor(vec![], vec![layer as i64])?;
        let prefix = format!("model.layers.{layer}.");
        let mut inputs: Vec<(String, &DynValue)> = vec![
            ("hidden".into(), hidden),
            ("attention_mask".into(), mask),
            ("lora_scale".into(), &scalars.scale),
            ("dropout_p".into(), &scalars.dropout),
            ("dropout_seed".into(), &scalars.seed),
            ("layer".into(), &index),
        ];
        for (name, value) in self.weights.tensors.iter().filter(|(n, _)| n.starts_with(&prefix)) {
            inputs.push((format!("layer.{}", &name[prefix.len()..]), &**value));
        }
        for (m, module) in self.targets.iter().enumerate() {
            let (a, b) = &lora.tensors[layer * self.targets.len() + m];
            inputs.push((format!("lora.{module}.A"), a));
            inputs.push((format!("lora.{module}.B"), b));
        }
        let graph = match backward {
            None => &mut self.layer,
            Some((grad, kept)) => {
                inputs.push(("grad_hidden_out".into(), grad));
                inputs.extend(kept.iter().map(|(name, value)| (name.clone(), value)));
                &mut self.layer_backward
            }
        };
        let borrowed: Vec<(&str, &DynValue)> = inputs.iter().map(|(n, v)| (n.as_str(), *v)).collect();
        let on_host: Vec<String> =
            self.targets.iter().flat_map(|m| [format!("grad.lora.{m}.A"), format!("grad.lora.{m}.B")]).collect();
        let on_host: Vec<&str> = on_host.iter().map(String::as_str).collect();
        graph.run(&borrowed, &on_host)
    }

    /// Per row, the log-prob of each response token.
    fn head_logps(&mut self, hidden: &DynValue, targets: &Targets) -> Result<Vec<Vec<f32>>, ModelError> {
        let mut rows: Vec<Vec<f32>> = vec![Vec::new(); targets.rows];
        for chunk in targets.chunks(HEAD_CHUNK) {
            let (positions, ids) = chunk.tensors()?;
            let (norm, lm) = head_weights(&self.weights)?;
            let inputs = [
                ("hidden", hidden),
                ("target_positions", &positions),
                ("target_ids", &ids),
                ("norm.weight", norm),
                ("lm_head.weight", lm),
            ];
            let outputs = self.head.run(&inputs, &["token_logps"])?;
            let (_, values) = host_f32(&outputs["token_logps"])?;
            for (r, row) in rows.iter_mut().enumerate() {
                row.extend_from_slice(&values[r * chunk.width..r * chunk.width + chunk.counts[r]]);
            }
        }
        Ok(rows)
    }

    /// The gradient of Σ weights[row] · (the row's token log-probs) w.r.t. the
    /// last hidden states, summed over the head's chunks.
    fn head_grad(
        &mut self,
        hidden: &DynValue,
        targets: &Targets,
        weights: &[f32],
        rows: usize,
        width: usize,
    ) -> Result<DynValue, ModelError> {
        let mut total: Option<Vec<f32>> = None;
        for chunk in targets.chunks(HEAD_CHUNK) {
            let (positions, ids) = chunk.tensors()?;
            let (counts, width) = (&chunk.counts, chunk.width);
            let token_weights: Vec<f32> =
                (0..rows).flat_map(|r| (0..width).map(move |j| if j < counts[r] { weights[r] } else { 0.0 })).collect();
            let token_weights = tensor(vec![rows, chunk.width], token_weights)?;
            let (norm, lm) = head_weights(&self.weights)?;
            let inputs = [
                ("hidden", hidden),
                ("target_positions", &positions),
                ("target_ids", &ids),
                ("token_weights", &token_weights),
                ("norm.weight", norm),
                ("lm_head.weight", lm),
            ];
            let outputs = self.head_backward.run(&inputs, &["grad_hidden"])?;
            // Summed over the chunks in float32, then rounded once to the
            // graphs' precision.
            let values = host_widened(&outputs["grad_hidden"], self.precision)?;
            match total.as_mut() {
                None => total = Some(values),
                Some(sum) => sum.iter_mut().zip(values).for_each(|(s, v)| *s += v),
            }
        }
        let sum = total.unwrap_or_else(|| vec![0.0; rows * width * self.hidden]);
        self.precision.tensor(vec![rows, width, self.hidden], sum)
    }
}

/// Fails unless the `backward` graph takes every `saved.*` tensor the
/// `forward` graph returns (in the manifest).
fn check_saved(bundle: &Bundle, forward: &str, backward: &str) -> Result<(), ModelError> {
    let graphs = &bundle.manifest.graphs;
    let takes = |name: &str| graphs[backward].inputs.iter().any(|i| i.name == name);
    let saved = graphs[forward].outputs.iter().map(|o| o.name.as_str()).filter(|n| n.starts_with(SAVED_PREFIX));
    match saved.into_iter().find(|name| !takes(name)) {
        Some(name) => Err(ModelError::Invalid {
            dir: bundle.dir.clone(),
            problem: format!(
                "`{forward}` saves `{name}` but `{backward}` does not take it: re-export the training graphs \
                 (`python -m tools.export train-graphs BUNDLE`)"
            ),
        }),
        None => Ok(()),
    }
}

/// A bundle weight by name.
fn weight<'w>(weights: &'w Weights, name: &str) -> Result<&'w DynValue, ModelError> {
    weights
        .tensors
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| &**v)
        .ok_or_else(|| ModelError::MissingOutput { graph: "weights".into(), output: name.into() })
}

/// The head's weights: the final norm and the LM head (the embeddings when tied).
fn head_weights(weights: &Weights) -> Result<(&DynValue, &DynValue), ModelError> {
    let lm = weight(weights, "lm_head.weight").or_else(|_| weight(weights, "model.embed_tokens.weight"))?;
    Ok((weight(weights, "model.norm.weight")?, lm))
}

/// The positions that predict each row's response tokens (`t − 1` for the
/// response token at `t`, in the left-padded batch) and those tokens.
struct Targets {
    rows: usize,
    /// Per row: (position, token id) of each response token.
    per_row: Vec<Vec<(i64, i64)>>,
}

/// A chunk of the targets: at most `width` per row.
struct TargetChunk {
    width: usize,
    counts: Vec<usize>,
    positions: Vec<i64>,
    ids: Vec<i64>,
}

impl Targets {
    fn of(sequences: &[&[i64]], starts: &[usize], width: usize) -> Targets {
        let per_row = sequences
            .iter()
            .zip(starts)
            .map(|(ids, &start)| {
                let padding = width - ids.len();
                // A response never starts at 0: the chat template's prompt comes first.
                (start.max(1)..ids.len()).map(|t| ((padding + t - 1) as i64, ids[t])).collect()
            })
            .collect();
        Targets { rows: sequences.len(), per_row }
    }

    fn counts(&self) -> Vec<usize> {
        self.per_row.iter().map(Vec::len).collect()
    }

    /// Chunks of at most `size` targets per row (at least one chunk).
    fn chunks(&self, size: usize) -> Vec<TargetChunk> {
        let longest = self.per_row.iter().map(Vec::len).max().unwrap_or(0);
        let chunks = longest.div_ceil(size).max(1);
        (0..chunks)
            .map(|c| {
                let (lo, hi) = (c * size, ((c + 1) * size).min(longest.max(1)));
                let width = hi - lo;
                let mut chunk = TargetChunk { width, counts: vec![], positions: vec![], ids: vec![] };
                for row in &self.per_row {
                    let part = &row[lo.min(row.len())..hi.min(row.len())];
                    chunk.counts.push(part.len());
                    // Unused slots point at position 0 and token 0; their weight is 0.
                    chunk.positions.extend(part.iter().map(|p| p.0).chain(std::iter::repeat_n(0, width - part.len())));
                    chunk.ids.extend(part.iter().map(|p| p.1).chain(std::iter::repeat_n(0, width - part.len())));
                }
                chunk
            })
            .collect()
    }
}

impl TargetChunk {
    fn tensors(&self) -> Result<(DynValue, DynValue), ModelError> {
        let rows = self.counts.len();
        Ok((tensor(vec![rows, self.width], self.positions.clone())?, tensor(vec![rows, self.width], self.ids.clone())?))
    }
}

/// Every layer's LoRA tensors, `(A, B)` per (layer, module), layer-major.
struct LayerLora {
    tensors: Vec<(DynValue, DynValue)>,
}

impl LayerLora {
    fn of(adapter: &Adapter, targets: &[String], layers: usize) -> Result<LayerLora, ModelError> {
        let r = adapter.config.r;
        let mut tensors = Vec::with_capacity(layers * targets.len());
        for layer in 0..layers {
            for module in targets {
                let m = find_module(adapter, layer, module)?;
                tensors.push((
                    tensor(vec![r, m.in_features], m.a.clone())?,
                    tensor(vec![m.out_features, r], m.b.clone())?,
                ));
            }
        }
        Ok(LayerLora { tensors })
    }
}

fn find_module<'a>(
    adapter: &'a Adapter,
    layer: usize,
    module: &str,
) -> Result<&'a super::lora::LoraModule, ModelError> {
    let prefix = format!("model.layers.{layer}.");
    adapter
        .modules
        .iter()
        .find(|m| m.weight.starts_with(&prefix) && m.module() == module)
        .ok_or_else(|| ModelError::MissingOutput { graph: "adapter".into(), output: format!("{prefix}{module}") })
}

/// The gradients in [`Adapter::named_tensors`] order (every module, A then B).
fn order_grads(
    adapter: &Adapter,
    targets: &[String],
    grads: Vec<Option<(Vec<f32>, Vec<f32>)>>,
) -> Result<Vec<Vec<f32>>, ModelError> {
    let mut ordered = Vec::with_capacity(2 * adapter.modules.len());
    for module in &adapter.modules {
        let layer: usize = module.weight.split('.').nth(2).and_then(|l| l.parse().ok()).unwrap_or(usize::MAX);
        let index = targets.iter().position(|t| t == module.module()).map(|m| layer * targets.len() + m);
        let (a, b) = index.and_then(|i| grads.get(i).cloned().flatten()).ok_or_else(|| ModelError::MissingOutput {
            graph: "train_layer_backward".into(),
            output: format!("grad of {}", module.weight),
        })?;
        ordered.push(a);
        ordered.push(b);
    }
    Ok(ordered)
}

/// A step's scalar inputs.
struct Scalars {
    scale: DynValue,
    dropout: DynValue,
    seed: DynValue,
}

impl Scalars {
    fn of(adapter: &Adapter, settings: &LossSettings) -> Result<Scalars, ModelError> {
        Ok(Scalars {
            scale: tensor(vec![], vec![adapter.scale()])?,
            dropout: tensor(vec![], vec![settings.dropout])?,
            seed: tensor(vec![], vec![settings.dropout_seed])?,
        })
    }
}

/// The step's loss and, per row (the chosen sequences, then the rejected),
/// its gradient w.r.t. each of the row's response-token log-probs (the same
/// for every token of a row). `policy`: the rows' log-probs (per-token means
/// for a length-normalised loss), `counts`: their response tokens.
pub fn objective(settings: &LossSettings, policy: &[f32], reference: &[f32], counts: &[f32]) -> (f32, Vec<f32>) {
    let pairs = policy.len() / 2;
    let chosen_tokens: f32 = counts[..pairs].iter().sum::<f32>().max(1.0);
    if settings.loss == Loss::Sft {
        // The mean NLL of the chosen responses' tokens; the rejected rows get no gradient.
        let loss = -policy[..pairs].iter().sum::<f32>() / chosen_tokens;
        let weights = (0..policy.len()).map(|r| if r < pairs { -1.0 / chosen_tokens } else { 0.0 }).collect();
        return (loss, weights);
    }
    let (mut loss, d_policy) = preference_loss(settings, policy, reference);
    let mut weights: Vec<f32> = d_policy
        .iter()
        .zip(counts)
        .map(|(d, n)| if settings.loss.length_normalised() { d / n.max(1.0) } else { *d })
        .collect();
    if settings.rpo_alpha > 0.0 {
        // TRL's rpo_alpha: α times the mean NLL of the chosen tokens (sums here: rpo needs them).
        let sums: f32 =
            (0..pairs).map(|r| if settings.loss.length_normalised() { policy[r] * counts[r] } else { policy[r] }).sum();
        loss += settings.rpo_alpha * (-sums / chosen_tokens);
        weights[..pairs].iter_mut().for_each(|w| *w -= settings.rpo_alpha / chosen_tokens);
    }
    (loss, weights)
}

/// The mean preference loss over the pairs and its gradient w.r.t. each
/// row's policy log-prob (rows: the chosen sequences, then the rejected), as
/// TRL computes them (`loss_type` sigmoid, ipo, hinge, robust).
pub fn preference_loss(settings: &LossSettings, policy: &[f32], reference: &[f32]) -> (f32, Vec<f32>) {
    let pairs = policy.len() / 2;
    let (beta, eps) = (f64::from(settings.beta), f64::from(settings.label_smoothing));
    let mut loss = 0.0;
    let mut grad = vec![0f32; policy.len()];
    for i in 0..pairs {
        let h = f64::from(policy[i] - policy[pairs + i]) - f64::from(reference[i] - reference[pairs + i]);
        let (l, dh) = match settings.loss {
            Loss::Ipo => ((h - 1.0 / (2.0 * beta)).powi(2), 2.0 * (h - 1.0 / (2.0 * beta))),
            Loss::Hinge => match 1.0 - beta * h > 0.0 {
                true => (1.0 - beta * h, -beta),
                false => (0.0, 0.0),
            },
            Loss::Robust => (
                (-(1.0 - eps) * log_sigmoid(beta * h) + eps * log_sigmoid(-beta * h)) / (1.0 - 2.0 * eps),
                (-(1.0 - eps) * beta * sigmoid(-beta * h) - eps * beta * sigmoid(beta * h)) / (1.0 - 2.0 * eps),
            ),
            Loss::Sigmoid | Loss::Sft => (
                -(1.0 - eps) * log_sigmoid(beta * h) - eps * log_sigmoid(-beta * h),
                -(1.0 - eps) * beta * sigmoid(-beta * h) + eps * beta * sigmoid(beta * h),
            ),
        };
        loss += l / pairs as f64;
        grad[i] = (dh / pairs as f64) as f32;
        grad[pairs + i] = (-dh / pairs as f64) as f32;
    }
    (loss as f32, grad)
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn log_sigmoid(x: f64) -> f64 {
    if x >= 0.0 { -(-x).exp().ln_1p() } else { x - x.exp().ln_1p() }
}

fn tensor<T: ort::value::PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static>(
    shape: Vec<usize>,
    data: Vec<T>,
) -> Result<DynValue, ModelError> {
    Ok(Tensor::from_array((shape, data)).map_err(|source| tensor_error("input", source))?.into_dyn())
}

fn remove(outputs: &mut std::collections::BTreeMap<String, DynValue>, name: &str) -> Result<DynValue, ModelError> {
    outputs.remove(name).ok_or_else(|| ModelError::MissingOutput { graph: "training".into(), output: name.into() })
}

fn take_ref<'a>(
    outputs: &'a std::collections::BTreeMap<String, DynValue>,
    name: &str,
) -> Result<&'a DynValue, ModelError> {
    outputs.get(name).ok_or_else(|| ModelError::MissingOutput { graph: "training".into(), output: name.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(loss: Loss, rpo_alpha: f32) -> LossSettings {
        LossSettings { beta: 0.3, label_smoothing: 0.1, loss, rpo_alpha, dropout: 0.0, dropout_seed: 0 }
    }

    /// Every loss's gradient against central differences of its own value.
    #[test]
    fn every_loss_gradient_matches_finite_differences() {
        let policy = [-12.0f32, -30.5, -9.0, -14.0, -29.0, -11.5];
        let reference = [-13.0f32, -31.0, -8.0, -13.5, -30.0, -10.0];
        let counts = [6.0f32, 15.0, 4.0, 7.0, 14.0, 5.0];
        for (loss, rpo) in [
            (Loss::Sigmoid, 0.0),
            (Loss::Sigmoid, 0.5),
            (Loss::Ipo, 0.0),
            (Loss::Hinge, 0.0),
            (Loss::Robust, 0.0),
            (Loss::Sft, 0.0),
        ] {
            let s = settings(loss, rpo);
            // The objective's weights are per token: a row's log-prob (a sum) moves with each of them.
            let value = |p: &[f32]| -> f64 {
                let scaled: Vec<f32> = match loss.length_normalised() {
                    true => p.iter().zip(&counts).map(|(x, n)| x / n).collect(),
                    false => p.to_vec(),
                };
                f64::from(objective(&s, &scaled, &reference, &counts).0)
            };
            let scaled: Vec<f32> = match loss.length_normalised() {
                true => policy.iter().zip(&counts).map(|(x, n)| x / n).collect(),
                false => policy.to_vec(),
            };
            let (_, weights) = objective(&s, &scaled, &reference, &counts);
            for r in 0..policy.len() {
                let (mut up, mut down) = (policy, policy);
                up[r] += 1e-2;
                down[r] -= 1e-2;
                let numeric = (value(&up) - value(&down)) / 2e-2;
                assert!(
                    (numeric - f64::from(weights[r])).abs() < 2e-3,
                    "{loss:?} rpo {rpo}, row {r}: {numeric} vs {}",
                    weights[r]
                );
            }
        }
    }

    /// The values TRL's formulas give at one point.
    #[test]
    fn losses_take_trls_values() {
        // One pair, h = (−10 − −12) − (−11 − −11.5) = 1.5.
        let (policy, reference) = ([-10.0f32, -12.0], [-11.0f32, -11.5]);
        let value = |loss| objective(&settings(loss, 0.0), &policy, &reference, &[5.0, 5.0]).0 as f64;
        let (beta, eps, h) = (0.3f64, 0.1f64, 1.5f64);
        let log_sig = |x: f64| -(1.0 + (-x).exp()).ln();
        let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        close(value(Loss::Sigmoid), -(1.0 - eps) * log_sig(beta * h) - eps * log_sig(-beta * h));
        close(value(Loss::Hinge), (1.0 - beta * h).max(0.0));
        close(value(Loss::Robust), (-(1.0 - eps) * log_sig(beta * h) + eps * log_sig(-beta * h)) / (1.0 - 2.0 * eps));
        close(value(Loss::Sft), 10.0 / 5.0);
    }
}
