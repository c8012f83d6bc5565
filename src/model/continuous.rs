//! Continuous batching over slots, as vLLM schedules sequences: up to
//! `slots` sequences decode together, and when one ends (a stop token or
//! its token limit) its slot is given to the next (prompt, sample) in the
//! queue instead of idling until the longest row of a static batch ends.
//!
//! The v1 decode graph takes the cache as `[rows, kv_heads, width,
//! head_dim]` tensors with a left-padding mask, and every step appends one
//! column to every row, so a row's cached tokens are always its last
//! `cached` columns. A row therefore moves between batches by copying those
//! columns, and a rebuilt batch is as wide as its longest row, not as its
//! oldest. Keys carry their rotary position already: where a row's columns
//! sit does not change its attention.
//!
//! A prompt is prefilled once (batched with other short prompts, or in
//! chunks of `prefill_chunk_tokens`, one chunk between two decode steps, so
//! a long prompt never stalls the running rows); its KV prefix is then
//! copied into the row of each of its samples when they are admitted, and
//! its last logits give each sample's first token.
//!
//! Each sample draws from its own seeded RNG and a row's arithmetic does not
//! depend on the other rows, so the tokens are the same whatever the slot
//! count, the chunk size or the order in which rows were admitted.
//!
//! Rebuilding a batch copies the cache once (the graph's concat copies as
//! much every step), so the batch is rebuilt only when a sixteenth of its
//! rows have finished, or none is running: at most ~6 % of slot steps idle,
//! for sixteen times fewer copies.

use std::borrow::Cow;
use std::collections::VecDeque;

use ort::memory::AllocationDevice;
use ort::value::{DynValue, Tensor, TensorValueType};
use rand_chacha::ChaCha8Rng;

use super::generation::{Finish, Generated, GenerationRequest, StepCounts};
use super::graph::BoundGraph;
use super::runtime::Target;
use super::sampling::{Sampled, SamplingParams, next_token, sequence_rng};
use super::values::{host_f32, left_pad, tensor_i64};
use super::{ModelError, tensor_error};

/// How much generation runs at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotLimits {
    /// Sequences decoded together, at most.
    pub slots: usize,
    /// Prompts prefilled together, at most.
    pub prefill_prompts: usize,
    /// Padded prompt tokens in one prefill call, at most; a longer prompt is
    /// prefilled alone, in chunks of this many tokens.
    pub prefill_chunk_tokens: usize,
}

impl SlotLimits {
    /// The default chunk: long enough that prefill runs at matrix speed,
    /// short enough that the running rows wait at most one such call.
    pub const DEFAULT_PREFILL_CHUNK_TOKENS: usize = 2048;

    /// `prompts` prompts of `samples` samples each in flight, as a static
    /// batch of that many prompts would hold.
    pub fn for_prompts(prompts: usize, samples: usize) -> SlotLimits {
        SlotLimits {
            slots: (prompts * samples).max(1),
            prefill_prompts: prompts.max(1),
            prefill_chunk_tokens: Self::DEFAULT_PREFILL_CHUNK_TOKENS,
        }
    }
}

/// What a generation needs to know of the model.
pub(super) struct DecodeModel<'m> {
    pub graph: &'m mut BoundGraph,
    pub target: Target,
    /// `(past_key_values.…, present.…)` for every cache tensor, in graph order.
    pub cache_names: Vec<(String, String)>,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub pad: i64,
    pub stops: &'m [i64],
}

/// One (prompt, sample) being generated.
struct Sequence {
    request: usize,
    sample: usize,
    prompt_length: usize,
    rng: ChaCha8Rng,
    tokens: Vec<i64>,
    stop_token: Option<i64>,
    logprob: f64,
}

impl Sequence {
    /// Takes a drawn token; true when the sequence has ended.
    fn push(&mut self, drawn: Sampled, stops: &[i64], max_new_tokens: usize) -> bool {
        self.logprob += drawn.logprob;
        if stops.contains(&drawn.token) {
            self.stop_token = Some(drawn.token);
            return true;
        }
        self.tokens.push(drawn.token);
        self.tokens.len() >= max_new_tokens
    }

    fn finish(self) -> Generated {
        let finish = if self.stop_token.is_some() { Finish::Stop } else { Finish::Length };
        Generated { tokens: self.tokens, stop_token: self.stop_token, finish, logprob: self.logprob }
    }
}

/// A row of the decode batch: its sequence (`None` once it ended; the row is
/// fed pad until the batch is rebuilt) and how many columns it has cached.
struct Row {
    sequence: Option<Sequence>,
    cached: usize,
}

/// A prefilled prompt whose samples are not all admitted yet.
struct Prefix {
    request: usize,
    length: usize,
    /// Per cache tensor: `[kv_heads, length, head_dim]`, host memory.
    kv: Vec<Vec<f32>>,
    logits: Vec<f32>,
    next_sample: usize,
}

/// A long prompt being prefilled chunk by chunk.
struct Partial {
    request: usize,
    fed: usize,
    /// `[1, kv_heads, fed, head_dim]` per cache tensor, where the graph left them.
    cache: Vec<DynValue>,
}

/// The continuous-batching loop over one set of requests.
pub(super) struct Scheduler<'a, 'm> {
    model: DecodeModel<'m>,
    requests: &'a [GenerationRequest],
    params: &'a SamplingParams,
    max_new_tokens: usize,
    limits: SlotLimits,
    steps: &'a mut StepCounts,
    /// Requests not prefilled yet, in order.
    queue: VecDeque<usize>,
    partial: Option<Partial>,
    ready: VecDeque<Prefix>,
    rows: Vec<Row>,
    width: usize,
    /// The batch's cache, one tensor per cache name; empty when no batch runs.
    cache: Vec<DynValue>,
    results: Vec<Vec<Option<Generated>>>,
}

impl<'a, 'm> Scheduler<'a, 'm> {
    pub fn new(
        model: DecodeModel<'m>,
        requests: &'a [GenerationRequest],
        params: &'a SamplingParams,
        max_new_tokens: usize,
        limits: SlotLimits,
        steps: &'a mut StepCounts,
    ) -> Self {
        let results = requests.iter().map(|r| (0..r.seeds.len()).map(|_| None).collect()).collect();
        Scheduler {
            model,
            requests,
            params,
            max_new_tokens,
            limits: SlotLimits { slots: limits.slots.max(1), prefill_prompts: limits.prefill_prompts.max(1), ..limits },
            steps,
            queue: (0..requests.len()).filter(|&r| !requests[r].seeds.is_empty()).collect(),
            partial: None,
            ready: VecDeque::new(),
            rows: Vec::new(),
            width: 0,
            cache: Vec::new(),
            results,
        }
    }

    /// Runs every request to the end; per request, its samples in seed order.
    /// `on_tokens` hears how many tokens each step produced.
    pub fn run(mut self, on_tokens: &mut dyn FnMut(u64)) -> Result<Vec<Vec<Generated>>, ModelError> {
        if self.max_new_tokens == 0 {
            return Ok(self.requests.iter().map(|r| vec![Generated::empty(); r.seeds.len()]).collect());
        }
        loop {
            self.prefill_ahead()?;
            if self.should_rebuild() {
                self.rebuild()?;
            }
            let live = self.live_rows();
            if live > 0 {
                self.decode_step()?;
                on_tokens(live as u64);
            } else if self.queue_is_dry() {
                break;
            }
        }
        Ok(self
            .results
            .into_iter()
            .map(|samples| samples.into_iter().map(|s| s.expect("every sample generated")).collect())
            .collect())
    }

    fn live_rows(&self) -> usize {
        self.rows.iter().filter(|r| r.sequence.is_some()).count()
    }

    fn ready_samples(&self) -> usize {
        self.ready.iter().map(|p| self.requests[p.request].seeds.len() - p.next_sample).sum()
    }

    /// Prefills until the ready samples cover the free slots: one prefill
    /// call between two decode steps while rows are running, as many as it
    /// takes when none is.
    fn prefill_ahead(&mut self) -> Result<(), ModelError> {
        while self.ready_samples() < self.limits.slots - self.live_rows()
            && (self.partial.is_some() || !self.queue.is_empty())
        {
            self.prefill_call()?;
            if self.live_rows() > 0 {
                break;
            }
        }
        Ok(())
    }

    /// A rebuild admits waiting samples into free slots and drops ended rows.
    fn should_rebuild(&self) -> bool {
        let live = self.live_rows();
        let ended = self.rows.len() - live;
        let admissible = self.ready_samples().min(self.limits.slots - live);
        if live == 0 {
            return admissible > 0 || !self.rows.is_empty();
        }
        ended > 0 && ended >= self.limits.slots.div_ceil(16) && (admissible > 0 || self.queue_is_dry())
    }

    /// Nothing is left to admit later: a rebuild only shrinks the batch.
    fn queue_is_dry(&self) -> bool {
        self.queue.is_empty() && self.partial.is_none() && self.ready.is_empty()
    }

    /// One prefill call: the next chunk of a long prompt, or a batch of
    /// whole short prompts within the prompt and token limits.
    fn prefill_call(&mut self) -> Result<(), ModelError> {
        if self.partial.is_none() {
            let first = *self.queue.front().expect("a prompt to prefill");
            if self.requests[first].prompt.len() > self.limits.prefill_chunk_tokens {
                self.queue.pop_front();
                let cache = self.empty_cache(1)?;
                self.partial = Some(Partial { request: first, fed: 0, cache });
            }
        }
        match self.partial.take() {
            Some(partial) => self.prefill_chunk(partial),
            None => self.prefill_batch(),
        }
    }

    fn prefill_batch(&mut self) -> Result<(), ModelError> {
        let mut batch: Vec<usize> = Vec::new();
        let mut longest = 0;
        while let Some(&next) = self.queue.front() {
            let length = self.requests[next].prompt.len();
            let padded = (batch.len() + 1) * longest.max(length);
            let fits = batch.len() < self.limits.prefill_prompts && padded <= self.limits.prefill_chunk_tokens;
            if !batch.is_empty() && (!fits || length > self.limits.prefill_chunk_tokens) {
                break;
            }
            batch.push(next);
            longest = longest.max(length);
            self.queue.pop_front();
        }
        let prompts: Vec<&[i64]> = batch.iter().map(|&r| self.requests[r].prompt.as_slice()).collect();
        self.steps.prefill_tokens += prompts.iter().map(|p| p.len() as u64).sum::<u64>();
        let padded = left_pad(&prompts, self.model.pad);
        let shape = [padded.rows, padded.width];
        let (ids, mask, positions) =
            (tensor_i64(shape, padded.ids)?, tensor_i64(shape, padded.mask)?, tensor_i64(shape, padded.positions)?);
        let empty = self.empty_cache(padded.rows)?;
        let (logits, presents) = self.run_decode(&ids, &mask, &positions, &empty, true)?;
        let (logit_shape, logits) = host_f32(&logits)?;
        let (seq, vocab) = (logit_shape[1], logit_shape[2]);
        let presents = presents.iter().map(|p| host_copy(p, self.model.target)).collect::<Result<Vec<_>, _>>()?;
        for (b, &request) in batch.iter().enumerate() {
            let length = self.requests[request].prompt.len();
            let kv = presents.iter().map(|p| columns(p, b, padded.width - length, length)).collect();
            let last = logits[(b * seq + seq - 1) * vocab..(b * seq + seq) * vocab].to_vec();
            self.ready.push_back(Prefix { request, length, kv, logits: last, next_sample: 0 });
        }
        Ok(())
    }

    fn prefill_chunk(&mut self, mut partial: Partial) -> Result<(), ModelError> {
        let prompt = &self.requests[partial.request].prompt;
        let end = (partial.fed + self.limits.prefill_chunk_tokens).min(prompt.len());
        let chunk = prompt[partial.fed..end].to_vec();
        let n = chunk.len();
        self.steps.prefill_tokens += n as u64;
        let (ids, mask, positions) = (
            tensor_i64([1, n], chunk)?,
            tensor_i64([1, end], vec![1; end])?,
            tensor_i64([1, n], (partial.fed as i64..end as i64).collect())?,
        );
        let (logits, presents) = self.run_decode(&ids, &mask, &positions, &partial.cache, end == prompt.len())?;
        partial.fed = end;
        partial.cache = presents;
        if end < prompt.len() {
            self.partial = Some(partial);
            return Ok(());
        }
        let (_, logits) = host_f32(&logits)?;
        let vocab = self.model.vocab;
        let last = logits[(n - 1) * vocab..n * vocab].to_vec();
        let kv = partial
            .cache
            .iter()
            .map(|p| Ok(columns(&host_copy(p, self.model.target)?, 0, 0, end)))
            .collect::<Result<Vec<_>, ModelError>>()?;
        self.ready.push_back(Prefix { request: partial.request, length: end, kv, logits: last, next_sample: 0 });
        Ok(())
    }

    /// Admits ready samples into the free slots and drops ended rows,
    /// copying every kept row's columns into a batch as wide as its longest row.
    fn rebuild(&mut self) -> Result<(), ModelError> {
        let old_rows = std::mem::take(&mut self.rows);
        let old_cache = std::mem::take(&mut self.cache);
        let old_width = self.width;
        // (source, cached columns) of every row of the new batch.
        enum Source {
            Kept(usize),
            Prefix(usize),
        }
        let mut sources: Vec<(Source, usize)> = Vec::new();
        for (i, row) in old_rows.into_iter().enumerate() {
            if let Some(sequence) = row.sequence {
                sources.push((Source::Kept(i), row.cached));
                self.rows.push(Row { sequence: Some(sequence), cached: row.cached });
            }
        }
        let mut taken_prefixes: Vec<Prefix> = Vec::new();
        while self.rows.len() < self.limits.slots {
            let Some(sequence) = self.admit_next(&mut taken_prefixes) else { break };
            let length = sequence.prompt_length;
            sources.push((Source::Prefix(taken_prefixes.len() - 1), length));
            self.rows.push(Row { sequence: Some(sequence), cached: length });
        }
        self.width = self.rows.iter().map(|r| r.cached).max().unwrap_or(0);
        if self.rows.is_empty() {
            return Ok(());
        }
        let (heads, dim, width) = (self.model.kv_heads, self.model.head_dim, self.width);
        let old_host = old_cache.iter().map(|c| host_copy(c, self.model.target)).collect::<Result<Vec<_>, _>>()?;
        for t in 0..self.model.cache_names.len() {
            let mut data = vec![0f32; self.rows.len() * heads * width * dim];
            for (r, (source, cached)) in sources.iter().enumerate() {
                for h in 0..heads {
                    let to = ((r * heads + h) * width + width - cached) * dim;
                    let from: &[f32] = match *source {
                        Source::Kept(i) => {
                            let start = ((i * heads + h) * old_width + old_width - cached) * dim;
                            &old_host.get(t).expect("a kept row has an old cache").1[start..start + cached * dim]
                        }
                        Source::Prefix(p) => &taken_prefixes[p].kv[t][h * cached * dim..(h + 1) * cached * dim],
                    };
                    data[to..to + cached * dim].copy_from_slice(from);
                }
            }
            let shape = [self.rows.len(), heads, width, dim];
            let tensor = Tensor::from_array((shape, data)).map_err(|source| tensor_error("KV cache", source))?;
            self.cache.push(tensor.into_dyn());
        }
        // Prefixes with samples left go back to the front, in order.
        for prefix in taken_prefixes.into_iter().rev() {
            if prefix.next_sample < self.requests[prefix.request].seeds.len() {
                self.ready.push_front(prefix);
            }
        }
        Ok(())
    }

    /// The next ready sample that needs a slot: its first token is drawn from
    /// its prompt's logits, and a sample that ends there is finished at once.
    /// The prefixes it draws from move to `taken` (the rebuild copies from them).
    fn admit_next(&mut self, taken: &mut Vec<Prefix>) -> Option<Sequence> {
        loop {
            if taken.last().is_none_or(|p| p.next_sample == self.requests[p.request].seeds.len()) {
                taken.push(self.ready.pop_front()?);
            }
            let prefix = taken.last_mut().expect("a prefix");
            let request = &self.requests[prefix.request];
            let sample = prefix.next_sample;
            prefix.next_sample += 1;
            let mut sequence = Sequence {
                request: prefix.request,
                sample,
                prompt_length: prefix.length,
                rng: sequence_rng(request.seeds[sample]),
                tokens: Vec::new(),
                stop_token: None,
                logprob: 0.0,
            };
            let drawn = next_token(&prefix.logits, self.params, &mut sequence.rng);
            self.steps.slot_steps += 1;
            self.steps.useful_slot_steps += 1;
            if sequence.push(drawn, self.model.stops, self.max_new_tokens) {
                let (request, sample) = (sequence.request, sequence.sample);
                self.results[request][sample] = Some(sequence.finish());
                continue;
            }
            return Some(sequence);
        }
    }

    /// One token for every row of the batch.
    fn decode_step(&mut self) -> Result<(), ModelError> {
        let n = self.rows.len();
        let width = self.width + 1;
        let mut mask = Vec::with_capacity(n * width);
        for row in &self.rows {
            mask.extend(std::iter::repeat_n(0, self.width - row.cached).chain(std::iter::repeat_n(1, row.cached + 1)));
        }
        let ids =
            self.rows.iter().map(|r| r.sequence.as_ref().map_or(self.model.pad, |s| s.tokens[s.tokens.len() - 1]));
        let positions = self.rows.iter().map(|r| r.cached as i64);
        let (ids, mask, positions) = (
            tensor_i64([n, 1], ids.collect())?,
            tensor_i64([n, width], mask)?,
            tensor_i64([n, 1], positions.collect())?,
        );
        let cache = std::mem::take(&mut self.cache);
        let (logits, presents) = self.run_decode(&ids, &mask, &positions, &cache, true)?;
        self.cache = presents;
        self.width = width;
        self.steps.slot_steps += n as u64;
        let (_, logits) = host_f32(&logits)?;
        let vocab = self.model.vocab;
        for (i, row) in self.rows.iter_mut().enumerate() {
            row.cached += 1;
            let Some(sequence) = row.sequence.as_mut() else { continue };
            self.steps.useful_slot_steps += 1;
            let drawn = next_token(&logits[i * vocab..(i + 1) * vocab], self.params, &mut sequence.rng);
            if sequence.push(drawn, self.model.stops, self.max_new_tokens) {
                let ended = row.sequence.take().expect("a running sequence");
                let (request, sample) = (ended.request, ended.sample);
                self.results[request][sample] = Some(ended.finish());
            }
        }
        Ok(())
    }

    /// Runs the decode graph; returns the logits (on the host when
    /// `logits_on_host`) and the present cache, where the graph left it.
    fn run_decode(
        &mut self,
        ids: &DynValue,
        mask: &DynValue,
        positions: &DynValue,
        past: &[DynValue],
        logits_on_host: bool,
    ) -> Result<(DynValue, Vec<DynValue>), ModelError> {
        let mut inputs: Vec<(&str, &DynValue)> =
            vec![("input_ids", ids), ("attention_mask", mask), ("position_ids", positions)];
        inputs.extend(self.model.cache_names.iter().zip(past).map(|((name, _), value)| (name.as_str(), value)));
        let on_host: &[&str] = if logits_on_host { &["logits"] } else { &[] };
        let mut outputs = self.model.graph.run(&inputs, on_host)?;
        let logits = outputs.remove("logits").expect("decode returns logits");
        let presents = self
            .model
            .cache_names
            .iter()
            .map(|(_, present)| outputs.remove(present).expect("decode returns every present"))
            .collect();
        Ok((logits, presents))
    }

    fn empty_cache(&self, rows: usize) -> Result<Vec<DynValue>, ModelError> {
        let shape = [rows, self.model.kv_heads, 0, self.model.head_dim];
        (0..self.model.cache_names.len())
            .map(|_| {
                let empty = Tensor::<f32>::from_array((shape, Vec::<f32>::new()))
                    .map_err(|source| tensor_error("empty KV cache", source))?;
                Ok(empty.into_dyn())
            })
            .collect()
    }
}

/// A cache tensor's shape and data in host memory: borrowed on the CPU,
/// copied off the device on CUDA.
type HostTensor<'v> = (Vec<usize>, Cow<'v, [f32]>);

fn host_copy(value: &DynValue, target: Target) -> Result<HostTensor<'_>, ModelError> {
    match target {
        Target::Cpu => host_f32(value).map(|(shape, data)| (shape, Cow::Borrowed(data))),
        Target::Cuda(_) => {
            let tensor = value.view().downcast::<TensorValueType<f32>>().map_err(|e| tensor_error("KV cache", e))?;
            let copied = tensor.to(AllocationDevice::CPU, 0).map_err(|e| tensor_error("KV cache", e))?.into_dyn();
            host_f32(&copied).map(|(shape, data)| (shape, Cow::Owned(data.to_vec())))
        }
    }
}

/// Row `b`'s columns `first..first + count` of a `[rows, heads, width, dim]`
/// cache tensor, as `[heads, count, dim]`.
fn columns((shape, data): &HostTensor<'_>, b: usize, first: usize, count: usize) -> Vec<f32> {
    let (heads, width, dim) = (shape[1], shape[2], shape[3]);
    let mut out = Vec::with_capacity(heads * count * dim);
    for h in 0..heads {
        let start = ((b * heads + h) * width + first) * dim;
        out.extend_from_slice(&data[start..start + count * dim]);
    }
    out
}
