//! One DPO forward + backward pass on ONNX Runtime: the bundle's `dpo`
//! graph (`docs/bundle-format.md`) takes a micro-batch of pairs, the
//! reference log-probs, the loss settings and the LoRA tensors, and returns
//! the loss, the policy's log-probs and the gradients of every LoRA tensor.
//! The base weights are bound once and never change; the optimizer runs in
//! Rust ([`super::optim`]).

use ort::value::{DynValue, Tensor};

use super::bundle::{Bundle, BundleKind};
use super::graph::BoundGraph;
use super::lora::Adapter;
use super::runtime::{SessionConfig, Target, resolve_target};
use super::tokenizer::ChatTokenizer;
use super::values::left_pad;
use super::weights::Weights;
use super::{ModelError, tensor_error};

/// One tokenized pair: the prompt + chosen and prompt + rejected sequences,
/// and where the response starts in each.
#[derive(Debug, Clone, PartialEq)]
pub struct PairTokens {
    /// Prompt + chosen response ids.
    pub chosen: Vec<i64>,
    /// Prompt + rejected response ids.
    pub rejected: Vec<i64>,
    /// Index of the first response token (the same in both: the prompt is shared).
    pub response_start: usize,
}

impl PairTokens {
    /// Response tokens of the chosen sequence.
    pub fn chosen_tokens(&self) -> usize {
        self.chosen.len() - self.response_start
    }

    /// Response tokens of the rejected sequence.
    pub fn rejected_tokens(&self) -> usize {
        self.rejected.len() - self.response_start
    }
}

/// How long a pair's sequences may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncation {
    /// Longest prompt + response, in tokens.
    pub max_length: usize,
    /// Prompt tokens kept when a sequence must be shortened.
    pub max_prompt_length: usize,
}

/// Tokenizes a pair with the chat template and fits it into `limits`: when
/// prompt + the longer response is too long, the prompt loses tokens from the
/// left (its end, where the assistant turn begins, stays) but keeps at least
/// `max_prompt_length`, then the responses lose tokens from the right. Both
/// sequences keep the same prompt tokens. Returns the pair and whether
/// anything was cut.
pub fn encode_pair(
    tokenizer: &ChatTokenizer,
    prompt: &str,
    chosen: &str,
    rejected: &str,
    limits: Truncation,
) -> Result<(PairTokens, bool), ModelError> {
    let (chosen_ids, start) = tokenizer.encode_exchange(prompt, chosen)?;
    let (rejected_ids, _) = tokenizer.encode_exchange(prompt, rejected)?;
    let longest = (chosen_ids.len() - start).max(rejected_ids.len() - start);
    if start + longest <= limits.max_length {
        return Ok((PairTokens { chosen: chosen_ids, rejected: rejected_ids, response_start: start }, false));
    }
    let prompt_keep = start.min(limits.max_prompt_length.max(limits.max_length.saturating_sub(longest)));
    let response_keep = limits.max_length - prompt_keep;
    let cut = |ids: &[i64]| -> Vec<i64> {
        let response_end = ids.len().min(start + response_keep);
        ids[start - prompt_keep..response_end].to_vec()
    };
    let pair = PairTokens { chosen: cut(&chosen_ids), rejected: cut(&rejected_ids), response_start: prompt_keep };
    Ok((pair, true))
}

/// A tuning loss, as TRL names them (`loss_type`), with h = (π_c − π_r) −
/// (ref_c − ref_r) the difference of the policy's and the reference's
/// log-prob margins of a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// −(1 − ε)·log σ(β·h) − ε·log σ(−β·h): DPO, with label smoothing ε (cDPO); the recipe's.
    #[default]
    Sigmoid,
    /// (h − 1/(2β))² on length-normalised log-probs.
    Ipo,
    /// max(0, 1 − β·h) (SLiC).
    Hinge,
    /// (−(1 − ε)·log σ(β·h) + ε·log σ(−β·h)) / (1 − 2ε): unbiased under label noise ε.
    Robust,
    /// The SFT baseline: mean negative log-likelihood of the chosen responses' tokens (the rejected ones
    /// are not trained on).
    Sft,
}

impl Loss {
    /// Whether the loss compares per-token means instead of sums.
    pub fn length_normalised(self) -> bool {
        self == Loss::Ipo
    }
}

/// The loss settings of a step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossSettings {
    /// β.
    pub beta: f32,
    /// Label smoothing ε (sigmoid and robust).
    pub label_smoothing: f32,
    /// The loss.
    pub loss: Loss,
    /// Weight α of an NLL term on the chosen responses' tokens added to a
    /// preference loss (TRL `rpo_alpha`); 0 for none.
    pub rpo_alpha: f32,
    /// Dropout on the adapters' inputs.
    pub dropout: f32,
    /// Seed of this micro-batch's dropout masks.
    pub dropout_seed: i64,
}

/// What one pass returns.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutput {
    /// Mean loss over the micro-batch's pairs.
    pub loss: f32,
    /// Policy log-probs of the chosen sequences (length-normalised under IPO).
    pub chosen_logps: Vec<f32>,
    /// The same for the rejected sequences.
    pub rejected_logps: Vec<f32>,
    /// Gradients of the LoRA tensors, in [`Adapter::named_tensors`] order (all modules).
    pub grads: Vec<Vec<f32>>,
    /// Non-padding tokens processed.
    pub tokens: usize,
}

/// The `dpo` graph of a policy bundle, weights bound.
pub struct DpoGraph {
    graph: BoundGraph,
    pad: i64,
    target: Target,
}

impl DpoGraph {
    /// Builds the session of the bundle's `dpo` graph on the configured device.
    pub fn load(bundle: &Bundle, pad_token_id: i64, config: &SessionConfig) -> Result<DpoGraph, ModelError> {
        bundle.expect_kind(BundleKind::Policy)?;
        if !bundle.manifest.graphs.contains_key("dpo") {
            return Err(ModelError::Invalid {
                dir: bundle.dir.clone(),
                problem: "no `dpo` training graph: add one with `python -m tools.export dpo-graph BUNDLE`".into(),
            });
        }
        let target = resolve_target(config)?;
        let precision = bundle.precision_for("dpo", target)?;
        let weights = Weights::load(bundle, precision, target)?;
        let graph = BoundGraph::new(bundle, "dpo", &weights, target, config.threads)?;
        Ok(DpoGraph { graph, pad: pad_token_id, target })
    }

    /// Where the session runs.
    pub fn target(&self) -> Target {
        self.target
    }

    /// Loss, log-probs and LoRA gradients of `pairs` given their reference
    /// log-probs `(chosen, rejected)` (length-normalised by the caller under IPO).
    pub fn step(
        &mut self,
        pairs: &[&PairTokens],
        reference: &[(f32, f32)],
        adapter: &Adapter,
        settings: &LossSettings,
    ) -> Result<StepOutput, ModelError> {
        if !matches!(settings.loss, Loss::Sigmoid | Loss::Ipo) || settings.rpo_alpha != 0.0 {
            return Err(ModelError::Invalid {
                dir: "dpo.onnx".into(),
                problem: format!("the whole-model `dpo` graph computes sigmoid and ipo only, not {settings:?}"),
            });
        }
        let sequences: Vec<&[i64]> =
            pairs.iter().map(|p| p.chosen.as_slice()).chain(pairs.iter().map(|p| p.rejected.as_slice())).collect();
        let starts: Vec<usize> = pairs.iter().chain(pairs.iter()).map(|p| p.response_start).collect();
        let padded = left_pad(&sequences, self.pad);
        let response_mask: Vec<f32> = sequences
            .iter()
            .zip(&starts)
            .flat_map(|(ids, start)| {
                let first = padded.width - ids.len() + start;
                (0..padded.width).map(move |t| if t >= first { 1.0 } else { 0.0 })
            })
            .collect();
        let ref_logps: Vec<f32> =
            reference.iter().map(|r| r.0).chain(reference.iter().map(|r| r.1)).collect::<Vec<f32>>();
        let shape = [padded.rows, padded.width];
        let mut inputs: Vec<(String, DynValue)> = vec![
            ("input_ids".into(), tensor(shape.to_vec(), padded.ids.clone())?),
            ("attention_mask".into(), tensor(shape.to_vec(), padded.mask.clone())?),
            ("response_mask".into(), tensor(shape.to_vec(), response_mask)?),
            ("ref_logps".into(), tensor(vec![padded.rows], ref_logps)?),
            ("beta".into(), scalar(settings.beta)?),
            ("label_smoothing".into(), scalar(settings.label_smoothing)?),
            ("ipo".into(), scalar(if settings.loss == Loss::Ipo { 1.0f32 } else { 0.0 })?),
            ("lora_scale".into(), scalar(adapter.scale())?),
            ("dropout_p".into(), scalar(settings.dropout)?),
            ("dropout_seed".into(), scalar(settings.dropout_seed)?),
        ];
        let lora = adapter.named_tensors(|_| true);
        for (name, shape, values) in &lora {
            inputs.push((name.clone(), tensor(shape.clone(), values.to_vec())?));
        }
        let grad_names: Vec<String> = lora.iter().map(|(name, _, _)| format!("grad.{name}")).collect();
        let mut on_host: Vec<&str> = vec!["loss", "policy_logps"];
        on_host.extend(grad_names.iter().map(String::as_str));
        let borrowed: Vec<(&str, &DynValue)> = inputs.iter().map(|(n, v)| (n.as_str(), v)).collect();
        let outputs = self.graph.run(&borrowed, &on_host)?;
        let values = |name: &str| -> Result<Vec<f32>, ModelError> {
            let value = outputs
                .get(name)
                .ok_or_else(|| ModelError::MissingOutput { graph: "dpo".into(), output: name.into() })?;
            let (_, data) = value.try_extract_tensor::<f32>().map_err(|source| tensor_error(name, source))?;
            Ok(data.to_vec())
        };
        let logps = values("policy_logps")?;
        let grads = grad_names.iter().map(|name| values(name)).collect::<Result<Vec<_>, _>>()?;
        Ok(StepOutput {
            loss: values("loss")?[0],
            chosen_logps: logps[..pairs.len()].to_vec(),
            rejected_logps: logps[pairs.len()..].to_vec(),
            grads,
            tokens: sequences.iter().map(|s| s.len()).sum(),
        })
    }
}

fn tensor<T: ort::value::PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static>(
    shape: Vec<usize>,
    data: Vec<T>,
) -> Result<DynValue, ModelError> {
    Ok(Tensor::from_array((shape, data)).map_err(|source| tensor_error("input", source))?.into_dyn())
}

fn scalar<T: ort::value::PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static>(
    value: T,
) -> Result<DynValue, ModelError> {
    tensor(Vec::new(), vec![value])
}
