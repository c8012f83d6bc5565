//! A policy bundle on ONNX Runtime: batched generation with a KV cache, and
//! log-probs of responses.
//!
//! Generation runs over slots ([`super::continuous`]): each prompt is
//! prefilled once and its cache copied into the rows of its K samples.
//! Batches are right-padded and each row's length is a graph input, so
//! positions are 0, 1, ... exactly as transformers counts them.

use super::ModelError;
use super::bundle::{Bundle, BundleKind};
use super::continuous::{DecodeModel, Scheduler, SlotLimits};
use super::device_sampler::DeviceSampler;
pub use super::generation::{Finish, Generated, GenerationRequest, StepCounts};
use super::graph::{BoundGraph, WeightFeed};
use super::kv::CacheShape;
use super::lora::Adapter;
use super::runtime::{SessionConfig, Target, resolve_target};
use super::sampling::SamplingParams;
use super::tokenizer::ChatTokenizer;
use super::values::{host_f32, right_pad, sequence_lengths, tensor_i64};
use super::weights::Weights;
use ort::session::builder::PrepackedWeights;

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
    weights: Weights,
    /// Built on the first generation: on the CPU they hold packed weights
    /// ([`WeightFeed::Initializers`]), which a stage that only computes
    /// log-probs does not pay for.
    decode: Option<DecodeSessions>,
    logprob: BoundGraph,
    target: Target,
    threads: usize,
    /// Tokens are drawn on the device (CUDA's default), else on the host.
    sampler: Option<DeviceSampler>,
    /// What the generations so far cost, in slots and tokens.
    pub steps: StepCounts,
}

/// The decode graph's sessions.
struct DecodeSessions {
    /// Prompts (prefill), and on CUDA every call.
    prompts: BoundGraph,
    /// On the CPU, the decode steps: attention in croco's kernel
    /// ([`super::decode_attention`]), faster where steps read long caches.
    steps: Option<BoundGraph>,
    /// The CPU sessions' packed matrices, packed once for both.
    _packed: PrepackedWeights,
}

impl DecodeSessions {
    fn new(bundle: &Bundle, weights: &Weights, target: Target, threads: usize) -> Result<Self, ModelError> {
        let packed = PrepackedWeights::new();
        let feed = WeightFeed::packed_on(target, &packed);
        let prompts = BoundGraph::new(bundle, "decode", weights, target, threads, feed)?;
        let steps = match target {
            Target::Cpu => {
                Some(BoundGraph::new(bundle, "decode", weights, target, threads, WeightFeed::DecodeSteps(&packed))?)
            }
            Target::Cuda(_) => None,
        };
        Ok(DecodeSessions { prompts, steps, _packed: packed })
    }
}

impl Policy {
    /// Loads the policy bundle in `bundle`: weights, tokenizer, and the
    /// `logprob` session on the configured device (the `decode` session
    /// follows on the first generation).
    pub fn load(bundle: Bundle, config: &SessionConfig) -> Result<Policy, ModelError> {
        Policy::load_tuned(bundle, None, config)
    }

    /// Like [`Policy::load`], with a LoRA adapter merged into the weights.
    /// The weights are loaded once, in the precision of the graph variant
    /// the device runs, and shared by both sessions.
    pub fn load_tuned(bundle: Bundle, adapter: Option<&Adapter>, config: &SessionConfig) -> Result<Policy, ModelError> {
        bundle.expect_kind(BundleKind::Policy)?;
        let target = resolve_target(config)?;
        let precision = bundle.precision_for("decode", target)?;
        let weights = Weights::load_merged(&bundle, adapter, precision, target)?;
        let tokenizer = ChatTokenizer::load(&bundle)?;
        let logprob = BoundGraph::new(&bundle, "logprob", &weights, target, config.threads, WeightFeed::Bound)?;
        let mut policy = Policy {
            bundle,
            tokenizer,
            weights,
            decode: None,
            logprob,
            target,
            threads: config.threads,
            sampler: None,
            steps: StepCounts::default(),
        };
        policy.sample_on_device(matches!(target, Target::Cuda(_)))?;
        Ok(policy)
    }

    /// Whether tokens are drawn on the device, from logits that never leave
    /// it ([`super::device_sampler`]), or on the host. On by default on CUDA;
    /// on the CPU the host draws in float64 from the same RNG streams.
    pub fn sample_on_device(&mut self, on: bool) -> Result<(), ModelError> {
        self.sampler = match on {
            true => Some(DeviceSampler::new(self.target, self.threads, self.bundle.manifest.architecture.vocab_size)?),
            false => None,
        };
        Ok(())
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
        let decode = match &mut self.decode {
            Some(decode) => decode,
            None => self.decode.insert(DecodeSessions::new(&self.bundle, &self.weights, self.target, self.threads)?),
        };
        let model = DecodeModel {
            graph: &mut decode.prompts,
            steps: decode.steps.as_mut(),
            cache_names,
            cache: CacheShape { tensors: 2 * arch.num_layers, heads: arch.num_kv_heads, dim: arch.head_dim },
            vocab: arch.vocab_size,
            pad: self.tokenizer.pad_token_id,
            stops: &self.tokenizer.stop_token_ids,
            sampler: self.sampler.as_mut(),
        };
        Scheduler::new(model, requests, params, max_new_tokens, limits, &mut self.steps).run(on_tokens)
    }

    /// Log-probs of each `(ids, response_start)` sequence's response tokens
    /// (positions `response_start..`), in one batch: only the positions that
    /// predict a response token reach the vocabulary projection.
    pub fn logprobs(&mut self, sequences: &[(Vec<i64>, usize)]) -> Result<Vec<ResponseLogprob>, ModelError> {
        if sequences.is_empty() {
            return Ok(vec![]);
        }
        let ids: Vec<&[i64]> = sequences.iter().map(|(ids, _)| ids.as_slice()).collect();
        let (padded, rows, width) = right_pad(&ids, self.tokenizer.pad_token_id);
        let targets = sequences.iter().map(|(ids, start)| ids.len() - start).max().unwrap_or(0).max(1);
        let mut positions = vec![0i64; rows * targets];
        let mut target_ids = vec![0i64; rows * targets];
        for (b, (ids, start)) in sequences.iter().enumerate() {
            for (j, t) in (*start..ids.len()).enumerate() {
                // The token at t is predicted by the logits at t - 1 (a response never starts at 0).
                positions[b * targets + j] = t.max(1) as i64 - 1;
                target_ids[b * targets + j] = ids[t];
            }
        }
        let (seqlens, total) = sequence_lengths(&ids, width)?;
        let (input_ids, positions, target_ids) = (
            tensor_i64([rows, width], padded)?,
            tensor_i64([rows, targets], positions)?,
            tensor_i64([rows, targets], target_ids)?,
        );
        let inputs = [
            ("input_ids", &input_ids),
            ("seqlens_k", &seqlens),
            ("total_sequence_length", &total),
            ("target_positions", &positions),
            ("target_ids", &target_ids),
        ];
        let outputs = self.logprob.run(&inputs, &["target_logprobs"])?;
        let (_, values) = host_f32(&outputs["target_logprobs"])?;
        Ok(sequences
            .iter()
            .enumerate()
            .map(|(b, (ids, start))| {
                let tokens = values[b * targets..b * targets + ids.len() - start].to_vec();
                let sum = tokens.iter().sum();
                ResponseLogprob { tokens, sum }
            })
            .collect())
    }
}
