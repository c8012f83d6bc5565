//! A policy bundle on ONNX Runtime: batched generation with a KV cache, and
//! log-probs of responses.
//!
//! Generation prefills each prompt once, then repeats its cache for the K
//! samples of that prompt (rows `b * K + k`), and decodes one token per step
//! for all rows. Prompts are left-padded; positions are `cumsum(mask) - 1`,
//! exactly as the bundle's graphs and transformers' `generate` expect.

use ort::value::{DynValue, Tensor};
use rand_chacha::ChaCha8Rng;

use super::bundle::{Bundle, BundleKind};
use super::graph::BoundGraph;
use super::lora::Adapter;
use super::runtime::{SessionConfig, Target, resolve_target};
use super::sampling::{SamplingParams, next_token, sequence_rng};
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// Generated ids, the stop token excluded.
    pub tokens: Vec<i64>,
    /// The stop token, when one ended the sequence.
    pub stop_token: Option<i64>,
    /// Why it ended.
    pub finish: Finish,
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

/// What generation cost, summed over [`Policy::generate`] calls: a static
/// batch runs until its longest row ends, and a finished row still takes a
/// slot in every later step (fed pad), so `useful_slot_steps / slot_steps`
/// is the fraction of the work that produced a token.
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

/// The KV cache as graph inputs: `past_key_values.{layer}.{key|value}` and its value.
type KvCache = Vec<(String, DynValue)>;

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

fn tensor_i64(shape: [usize; 2], data: Vec<i64>) -> Result<DynValue, ModelError> {
    Ok(Tensor::from_array((shape, data)).map_err(|source| tensor_error("input", source))?.into_dyn())
}

fn host_f32(value: &DynValue) -> Result<(Vec<usize>, &[f32]), ModelError> {
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

    fn empty_cache(&self, rows: usize) -> Result<KvCache, ModelError> {
        let arch = &self.bundle.manifest.architecture;
        let mut cache = Vec::with_capacity(arch.num_layers * 2);
        for layer in 0..arch.num_layers {
            for part in ["key", "value"] {
                let shape = [rows, arch.num_kv_heads, 0, arch.head_dim];
                let empty = Tensor::<f32>::from_array((shape, Vec::<f32>::new()))
                    .map_err(|source| tensor_error("empty KV cache", source))?;
                cache.push((format!("past_key_values.{layer}.{part}"), empty.into_dyn()));
            }
        }
        Ok(cache)
    }

    /// Generates `seeds.len()` samples for each request, at most
    /// `max_new_tokens` each. Returns, per request, its samples in seed order.
    pub fn generate(
        &mut self,
        requests: &[GenerationRequest],
        params: &SamplingParams,
        max_new_tokens: usize,
    ) -> Result<Vec<Vec<Generated>>, ModelError> {
        let samples = requests.first().map_or(0, |r| r.seeds.len());
        assert!(requests.iter().all(|r| r.seeds.len() == samples), "every request has the same number of samples");
        if requests.is_empty() || samples == 0 || max_new_tokens == 0 {
            return Ok(requests
                .iter()
                .map(|r| vec![Generated { tokens: vec![], stop_token: None, finish: Finish::Length }; r.seeds.len()])
                .collect());
        }
        let prompts: Vec<&[i64]> = requests.iter().map(|r| r.prompt.as_slice()).collect();
        self.steps.prefill_tokens += prompts.iter().map(|p| p.len() as u64).sum::<u64>();
        let padded = left_pad(&prompts, self.tokenizer.pad_token_id);
        let (first_logits, cache) = self.prefill(&padded, samples)?;
        let mut rows: Vec<Row> = requests
            .iter()
            .enumerate()
            .flat_map(|(b, r)| r.seeds.iter().map(move |&seed| (b, r.prompt.len(), seed)))
            .map(|(b, length, seed)| Row::new(b, length, seed))
            .collect();
        let vocab = self.bundle.manifest.architecture.vocab_size;
        self.steps.slot_steps += rows.len() as u64;
        self.steps.useful_slot_steps += rows.len() as u64;
        for row in rows.iter_mut() {
            let logits = &first_logits[row.prompt * vocab..(row.prompt + 1) * vocab];
            let token = next_token(logits, params, &mut row.rng);
            row.push(token, &self.tokenizer.stop_token_ids, max_new_tokens);
        }
        let mut mask: Vec<i64> = Vec::new();
        for row in &rows {
            mask.extend_from_slice(&padded.mask[row.prompt * padded.width..(row.prompt + 1) * padded.width]);
        }
        self.decode_loop(&mut rows, mask, padded.width, cache, params, max_new_tokens)?;
        let mut out: Vec<Vec<Generated>> = requests.iter().map(|_| Vec::with_capacity(samples)).collect();
        for row in rows {
            out[row.prompt].push(row.finish());
        }
        Ok(out)
    }

    /// Runs the prompts once; returns the last position's logits per prompt
    /// (host) and the cache repeated `samples` times per prompt.
    fn prefill(&mut self, padded: &Padded, samples: usize) -> Result<(Vec<f32>, KvCache), ModelError> {
        let shape = [padded.rows, padded.width];
        let mut inputs: Vec<(String, DynValue)> = vec![
            ("input_ids".into(), tensor_i64(shape, padded.ids.clone())?),
            ("attention_mask".into(), tensor_i64(shape, padded.mask.clone())?),
            ("position_ids".into(), tensor_i64(shape, padded.positions.clone())?),
        ];
        inputs.extend(self.empty_cache(padded.rows)?);
        let every_output: Vec<String> =
            self.bundle.manifest.graphs["decode"].outputs.iter().map(|o| o.name.clone()).collect();
        let on_host: Vec<&str> = every_output.iter().map(String::as_str).collect();
        let borrowed: Vec<(&str, &DynValue)> = inputs.iter().map(|(n, v)| (n.as_str(), v)).collect();
        let outputs = self.decode.run(&borrowed, &on_host)?;
        let (logit_shape, logits) = host_f32(&outputs["logits"])?;
        let (seq, vocab) = (logit_shape[1], logit_shape[2]);
        let last: Vec<f32> = (0..padded.rows)
            .flat_map(|b| logits[(b * seq + seq - 1) * vocab..(b * seq + seq) * vocab].iter().copied())
            .collect();
        let mut cache = Vec::new();
        for (name, value) in outputs.iter().filter(|(name, _)| name.starts_with("present.")) {
            let (shape, data) = host_f32(value)?;
            let block = shape[1..].iter().product::<usize>();
            let repeated: Vec<f32> =
                data.chunks(block).flat_map(|b| std::iter::repeat_n(b, samples).flatten().copied()).collect();
            let expanded = [shape[0] * samples, shape[1], shape[2], shape[3]];
            let tensor = Tensor::from_array((expanded, repeated)).map_err(|source| tensor_error("KV cache", source))?;
            cache.push((name.replacen("present.", "past_key_values.", 1), tensor.into_dyn()));
        }
        Ok((last, cache))
    }

    fn decode_loop(
        &mut self,
        rows: &mut [Row],
        mut mask: Vec<i64>,
        mut width: usize,
        mut cache: KvCache,
        params: &SamplingParams,
        max_new_tokens: usize,
    ) -> Result<(), ModelError> {
        let n = rows.len();
        let vocab = self.bundle.manifest.architecture.vocab_size;
        let pad = self.tokenizer.pad_token_id;
        while rows.iter().any(|r| !r.done) {
            // Every row gets one more visible token (finished rows are fed pad, as transformers does).
            mask = mask.chunks(width).flat_map(|m| m.iter().copied().chain([1])).collect();
            width += 1;
            let ids: Vec<i64> = rows
                .iter()
                .map(|r| if r.done { pad } else { *r.tokens.last().expect("first token sampled") })
                .collect();
            let positions: Vec<i64> = rows.iter().map(|r| r.next_position()).collect();
            let (ids, mask_value, positions) =
                (tensor_i64([n, 1], ids)?, tensor_i64([n, width], mask.clone())?, tensor_i64([n, 1], positions)?);
            let mut inputs: Vec<(&str, &DynValue)> =
                vec![("input_ids", &ids), ("attention_mask", &mask_value), ("position_ids", &positions)];
            inputs.extend(cache.iter().map(|(name, value)| (name.as_str(), value)));
            let mut outputs = self.decode.run(&inputs, &["logits"])?;
            self.steps.slot_steps += n as u64;
            self.steps.useful_slot_steps += rows.iter().filter(|r| !r.done).count() as u64;
            let (_, logits) = host_f32(&outputs["logits"])?;
            for (i, row) in rows.iter_mut().enumerate().filter(|(_, r)| !r.done) {
                let token = next_token(&logits[i * vocab..(i + 1) * vocab], params, &mut row.rng);
                row.push(token, &self.tokenizer.stop_token_ids, max_new_tokens);
            }
            for (name, value) in cache.iter_mut() {
                *value = outputs
                    .remove(&name.replacen("past_key_values.", "present.", 1))
                    .expect("decode returns every present");
            }
        }
        Ok(())
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

/// One sequence being generated.
struct Row {
    prompt: usize,
    prompt_length: usize,
    rng: ChaCha8Rng,
    tokens: Vec<i64>,
    stop_token: Option<i64>,
    done: bool,
}

impl Row {
    fn new(prompt: usize, prompt_length: usize, seed: u64) -> Row {
        Row { prompt, prompt_length, rng: sequence_rng(seed), tokens: vec![], stop_token: None, done: false }
    }

    /// Position of the token fed next: the last generated one.
    fn next_position(&self) -> i64 {
        (self.prompt_length + self.tokens.len()) as i64 - 1
    }

    fn push(&mut self, token: i64, stops: &[i64], max_new_tokens: usize) {
        if stops.contains(&token) {
            self.stop_token = Some(token);
            self.done = true;
            return;
        }
        self.tokens.push(token);
        self.done = self.tokens.len() >= max_new_tokens;
    }

    fn finish(self) -> Generated {
        let finish = if self.stop_token.is_some() { Finish::Stop } else { Finish::Length };
        Generated { tokens: self.tokens, stop_token: self.stop_token, finish }
    }
}
