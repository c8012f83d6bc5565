//! A policy bundle on ONNX Runtime: batched generation with a KV cache, and
//! log-probs of responses.
//!
//! Generation runs over slots ([`super::continuous`]): each prompt is
//! prefilled once and its cache copied into the rows of its K samples.
//! Prompts are left-padded; positions are `cumsum(mask) - 1`, exactly as the
//! bundle's graphs and transformers' `generate` expect.

use ort::value::{DynValue, Tensor};

use super::bundle::{Bundle, BundleKind};
use super::continuous::{DecodeModel, Scheduler, SlotLimits};
use super::graph::BoundGraph;
use super::lora::Adapter;
use super::runtime::{SessionConfig, Target, resolve_target};
use super::sampling::SamplingParams;
use super::tokenizer::ChatTokenizer;
use super::weights::Weights;
use super::{ModelError, tensor_error};

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// A stop token was generated.
    Stop,
    /// The token limit was reached.
    Length,
}

impl Finish {
    /// The value of the `finish_reason` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "eos",
            Finish::Length => "length",
        }
    }
}

/// One generated sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// Generated ids, the stop token excluded.
    pub tokens: Vec<i64>,
    /// The stop token, when one ended the sequence.
    pub stop_token: Option<i64>,
    /// Why it ended.
    pub finish: Finish,
    /// Summed log-prob of the drawn tokens (stop token included) under the
    /// distribution they were drawn from ([`super::sampling::Sampled`]).
    pub logprob: f64,
}

impl Generated {
    /// No tokens: what a zero token limit produces.
    pub fn empty() -> Generated {
        Generated { tokens: vec![], stop_token: None, finish: Finish::Length, logprob: 0.0 }
    }
}

/// What to generate for one prompt: its ids and one RNG seed per sample.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    /// Prompt ids (chat template applied).
    pub prompt: Vec<i64>,
    /// One seed per sample; their number is K.
    pub seeds: Vec<u64>,
}

/// Log-probs of one response given its prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseLogprob {
    /// Per response token.
    pub tokens: Vec<f32>,
    /// Their sum.
    pub sum: f32,
}

/// The `policy_id` of rows a policy produced: `bundle:<checksum>`, plus
/// `+adapter:<checksum>` when an adapter is merged (16 hex digits each).
pub fn policy_id(bundle_checksum: &str, adapter_checksum: Option<&str>) -> String {
    match adapter_checksum {
        Some(adapter) => format!("bundle:{}+adapter:{}", &bundle_checksum[..16], &adapter[..16]),
        None => format!("bundle:{}", &bundle_checksum[..16]),
    }
}

/// The parts of a [`policy_id`]: `bundle:…` and, for a tuned policy, `adapter:…`.
pub fn split_policy_id(id: &str) -> (&str, Option<&str>) {
    match id.split_once('+') {
        Some((bundle, adapter)) => (bundle, Some(adapter)),
        None => (id, None),
    }
}

/// A loaded policy.
pub struct Policy {
    /// The bundle.
    pub bundle: Bundle,
    /// Its tokenizer.
    pub tokenizer: ChatTokenizer,
    decode: BoundGraph,
    logprob: BoundGraph,
    target: Target,
    /// What the generations so far cost, in slots and tokens.
    pub steps: StepCounts,
}

/// What generation cost, summed over [`Policy::generate`] calls: a row whose
/// sequence ended still takes its slot (fed pad) until the batch is rebuilt,
/// so `useful_slot_steps / slot_steps` is the fraction of the work that
/// produced a token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepCounts {
    /// Rows × steps: every row of a batch at every sampled position (the
    /// first from the prefill, then one per decode call).
    pub slot_steps: u64,
    /// The row-steps that produced a token kept in a response, or its stop token.
    pub useful_slot_steps: u64,
    /// Prompt tokens prefilled (once per prompt, whatever its sample count).
    pub prefill_tokens: u64,
}

/// A left-padded batch of sequences.
pub(super) struct Padded {
    pub ids: Vec<i64>,
    pub mask: Vec<i64>,
    pub positions: Vec<i64>,
    pub rows: usize,
    pub width: usize,
}

/// Left-pads `sequences` with `pad` to the longest one.
pub(super) fn left_pad(sequences: &[&[i64]], pad: i64) -> Padded {
    let width = sequences.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut padded = Padded { ids: vec![], mask: vec![], positions: vec![], rows: sequences.len(), width };
    for sequence in sequences {
        let padding = width - sequence.len();
        padded.ids.extend(std::iter::repeat_n(pad, padding).chain(sequence.iter().copied()));
        padded.mask.extend(std::iter::repeat_n(0, padding).chain(std::iter::repeat_n(1, sequence.len())));
        // Padding positions are never attended to; the exporter uses 1 for them.
        padded.positions.extend(std::iter::repeat_n(1, padding).chain(0..sequence.len() as i64));
    }
    padded
}

pub(super) fn tensor_i64(shape: [usize; 2], data: Vec<i64>) -> Result<DynValue, ModelError> {
    Ok(Tensor::from_array((shape, data)).map_err(|source| tensor_error("input", source))?.into_dyn())
}

pub(super) fn host_f32(value: &DynValue) -> Result<(Vec<usize>, &[f32]), ModelError> {
    let (shape, data) = value.try_extract_tensor::<f32>().map_err(|source| tensor_error("output", source))?;
    Ok((shape.iter().map(|&d| d as usize).collect(), data))
}

impl Policy {
    /// Loads the policy bundle in `bundle`: weights, tokenizer, and the
    /// `decode` and `logprob` sessions on the configured device.
    pub fn load(bundle: Bundle, config: &SessionConfig) -> Result<Policy, ModelError> {
        Policy::load_tuned(bundle, None, config)
    }

    /// Like [`Policy::load`], with a LoRA adapter merged into the weights.
    pub fn load_tuned(bundle: Bundle, adapter: Option<&Adapter>, config: &SessionConfig) -> Result<Policy, ModelError> {
        bundle.expect_kind(BundleKind::Policy)?;
        let target = resolve_target(config)?;
        let weights = Weights::load_merged(&bundle, adapter)?;
        let tokenizer = ChatTokenizer::load(&bundle)?;
        let decode = BoundGraph::new(&bundle, "decode", &weights, target, config.threads)?;
        let logprob = BoundGraph::new(&bundle, "logprob", &weights, target, config.threads)?;
        Ok(Policy { bundle, tokenizer, decode, logprob, target, steps: StepCounts::default() })
    }

    /// The execution target the sessions run on.
    pub fn target(&self) -> Target {
        self.target
    }

    /// Generates `seeds.len()` samples for each request, at most
    /// `max_new_tokens` each, over at most `limits.slots` sequences at a time
    /// (continuous batching, [`super::continuous`]). Returns, per request,
    /// its samples in seed order; `on_tokens` hears how many tokens each
    /// decode step produced.
    pub fn generate(
        &mut self,
        requests: &[GenerationRequest],
        params: &SamplingParams,
        max_new_tokens: usize,
        limits: SlotLimits,
        on_tokens: &mut dyn FnMut(u64),
    ) -> Result<Vec<Vec<Generated>>, ModelError> {
        let arch = &self.bundle.manifest.architecture;
        let cache_names = (0..arch.num_layers)
            .flat_map(|layer| ["key", "value"].map(|part| (layer, part)))
            .map(|(layer, part)| (format!("past_key_values.{layer}.{part}"), format!("present.{layer}.{part}")))
            .collect();
        let model = DecodeModel {
            graph: &mut self.decode,
            target: self.target,
            cache_names,
            kv_heads: arch.num_kv_heads,
            head_dim: arch.head_dim,
            vocab: arch.vocab_size,
            pad: self.tokenizer.pad_token_id,
            stops: &self.tokenizer.stop_token_ids,
        };
        Scheduler::new(model, requests, params, max_new_tokens, limits, &mut self.steps).run(on_tokens)
    }

    /// Log-probs of each `(ids, response_start)` sequence's response tokens
    /// (positions `response_start..`), in one batch.
    pub fn logprobs(&mut self, sequences: &[(Vec<i64>, usize)]) -> Result<Vec<ResponseLogprob>, ModelError> {
        if sequences.is_empty() {
            return Ok(vec![]);
        }
        let ids: Vec<&[i64]> = sequences.iter().map(|(ids, _)| ids.as_slice()).collect();
        let padded = left_pad(&ids, self.tokenizer.pad_token_id);
        let response_mask: Vec<i64> = sequences
            .iter()
            .flat_map(|(ids, start)| {
                let padding = padded.width - ids.len();
                (0..padded.width).map(move |t| i64::from(t >= padding + start))
            })
            .collect();
        let shape = [padded.rows, padded.width];
        let (ids, mask, response_mask) = (
            tensor_i64(shape, padded.ids.clone())?,
            tensor_i64(shape, padded.mask.clone())?,
            tensor_i64(shape, response_mask)?,
        );
        let inputs = [("input_ids", &ids), ("attention_mask", &mask), ("response_mask", &response_mask)];
        let outputs = self.logprob.run(&inputs, &["token_logprobs", "logprob_sum"])?;
        let (_, tokens) = host_f32(&outputs["token_logprobs"])?;
        let (_, sums) = host_f32(&outputs["logprob_sum"])?;
        Ok(sequences
            .iter()
            .enumerate()
            .map(|(b, (ids, start))| {
                let row = &tokens[b * padded.width..(b + 1) * padded.width];
                let first = padded.width - ids.len() + start;
                ResponseLogprob { tokens: row[first..].to_vec(), sum: sums[b] }
            })
            .collect())
    }
}
