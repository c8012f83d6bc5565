//! Continuous batching over slots, as vLLM schedules sequences: up to
//! `slots` sequences decode together, and when one ends (a stop token or
//! its token limit) its slot is given to the next (prompt, sample) in the
//! queue at once, instead of idling until the longest row of a static batch
//! ends.
//!
//! Each slot is a row of one KV cache allocated at its planned length
//! ([`super::kv`]): the longest prompt plus `max_new_tokens`. The decode
//! graph writes each row's new position in place (`GroupQueryAttention`
//! over a shared past/present buffer), and each row carries its own length,
//! so rows of any lengths decode together with no padding and no copy.
//!
//! A prompt is prefilled once (batched with other short prompts, or in
//! chunks of `prefill_chunk_tokens`, one chunk between two decode steps, so
//! a long prompt never stalls the running rows) into a cache of its own; its
//! cached positions are then copied into the row of each of its samples as
//! it is admitted, and its last logits give each sample's first token. Once
//! nothing is left to admit, the running rows move to the lowest rows of the
//! cache each time a sixteenth of the rows have ended, and the calls run over
//! those rows only, so the tail of a generation does not compute for idle
//! slots.
//!
//! Each sample draws from its own seeded RNG and each row attends to its own
//! cache only, so what a row computes does not depend on which rows share its
//! batch. On the CPU that holds bit for bit: the decode session's GEMMs run
//! on weights packed once, a kernel that reduces each row in the same order
//! whatever the batch (with the weights as inputs, its one-row path and its
//! thread partition did not: ~7e-6 on the demo's logits), so every sample is
//! identical, token for token, whatever the slot count. The same holds for
//! the prefill batches and chunks: attention reduces a query's row in the
//! same order in any call that does not leave it alone in its block of
//! queries, and prefill calls are shaped so that none does
//! ([`QueryBlocks`]). `tests/integration/model_parity.rs` holds it.

use std::collections::VecDeque;
use std::rc::Rc;

use rand_chacha::ChaCha8Rng;

use super::ModelError;
use super::generation::{Finish, Generated, GenerationRequest, StepCounts};
use super::graph::BoundGraph;
use super::kv::{CacheShape, KvBuffer};
use ort::value::{DynValue, Tensor};

use super::device_sampler::DeviceSampler;
use super::sampling::{Sampled, SamplingParams, next_token, sequence_rng};
use super::tensor_error;
use super::values::{host_f32, right_pad_to, tensor_i32, tensor_i64};

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

    /// The most tokens one prefill call feeds: a chunk may take one token
    /// more than `prefill_chunk_tokens` rather than leave one behind, and a
    /// batch one padding column more (see [`QueryBlocks`]).
    pub fn prefill_call_tokens(&self) -> usize {
        self.prefill_chunk_tokens.max(2) + 1
    }

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

/// How ONNX Runtime's CPU attention splits a call's queries, and what
/// prefill does about it so that a prompt's cache and first logits are the
/// same, bit for bit, however its prompt is batched or chunked.
///
/// MLAS's flash kernel for `GroupQueryAttention` takes a call's queries in
/// blocks of `2 × head_dim` rows from the call's first (fewer only where
/// the L2 cache is under ~1 MiB), over key blocks counted from position 0,
/// so a query's reduction order is the same in any call, with one
/// exception: a block of a single row goes through the one-row kernel (as
/// does a one-token call over a cached past, the decode step's), which
/// rounds differently (~1e-5 on the demo's logits). So no prefill call
/// leaves a query alone in its last block: a batch of prompts is padded one
/// column wider, and a long prompt's chunks are cut around it.
#[derive(Debug, Clone, Copy)]
struct QueryBlocks(usize);

impl QueryBlocks {
    fn of(cache: &CacheShape) -> QueryBlocks {
        QueryBlocks(2 * cache.dim)
    }

    /// True when a call of `queries` queries leaves its last one alone in a block.
    fn leaves_one_alone(self, queries: usize) -> bool {
        queries % self.0 == 1
    }

    /// The width of a batch of whole prompts at most `longest` tokens long.
    fn batch_width(self, longest: usize) -> usize {
        longest + usize::from(self.leaves_one_alone(longest))
    }

    /// Where the chunk that starts at token `fed` of a `length`-token prompt
    /// ends: `limit` tokens on, in whole blocks when the limit spans one, cut
    /// so that no chunk leaves a query alone and none is a single token.
    fn chunk_end(self, limit: usize, fed: usize, length: usize) -> usize {
        let step = if limit >= self.0 { limit / self.0 * self.0 } else { limit.max(2) };
        let remaining = length - fed;
        if remaining <= step {
            // The last chunk; one query past whole blocks: its last two queries get a chunk of their own.
            return if remaining > 1 && self.leaves_one_alone(remaining) { length - 2 } else { length };
        }
        match remaining - step {
            // One token would be left: this chunk takes it, or leaves two when taking it would leave one alone.
            1 if self.leaves_one_alone(step + 1) => fed + step - 1,
            1 => fed + step + 1,
            _ => fed + step,
        }
    }
}

/// What a generation needs to know of the model.
pub(super) struct DecodeModel<'m> {
    /// The decode graph's session for prompts, and for steps without `steps`.
    pub graph: &'m mut BoundGraph,
    /// A session of the same graph for one token per row (the CPU's, with
    /// croco's attention kernel), when there is one.
    pub steps: Option<&'m mut BoundGraph>,
    /// `(past_key_values.…, present.…)` for every cache tensor, in graph order.
    pub cache_names: Vec<(String, String)>,
    pub cache: CacheShape,
    pub vocab: usize,
    pub pad: i64,
    pub stops: &'m [i64],
    /// Draws tokens on the device when set (the logits stay there); on
    /// the host from the logits otherwise.
    pub sampler: Option<&'m mut DeviceSampler>,
}

/// One (prompt, sample) being generated.
struct Sequence {
    request: usize,
    sample: usize,
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

/// A slot: its sequence (`None` while free) and how many positions it has
/// cached.
#[derive(Default)]
struct Row {
    sequence: Option<Sequence>,
    cached: usize,
}

/// A prefilled prompt whose samples are not all admitted yet.
struct Prefix {
    request: usize,
    length: usize,
    /// The cache its prompt was prefilled into, shared with the prompts
    /// prefilled beside it, and its row there.
    cache: Rc<KvBuffer>,
    row: usize,
    logits: Vec<f32>,
    next_sample: usize,
}

/// A long prompt being prefilled chunk by chunk.
struct Partial {
    request: usize,
    fed: usize,
    cache: KvBuffer,
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
    /// The slots' cache (allocated at the first admission) and its rows.
    slots: Option<KvBuffer>,
    rows: Vec<Row>,
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
            slots: None,
            rows: Vec::new(),
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
            self.admit()?;
            let live = self.live_rows();
            if live > 0 {
                self.shrink_when_idle()?;
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

    fn free_slots(&self) -> usize {
        self.limits.slots.min(self.total_samples()) - self.live_rows()
    }

    fn total_samples(&self) -> usize {
        self.requests.iter().map(|r| r.seeds.len()).sum::<usize>().max(1)
    }

    fn ready_samples(&self) -> usize {
        self.ready.iter().map(|p| self.requests[p.request].seeds.len() - p.next_sample).sum()
    }

    /// Prefills until the ready samples cover the free slots: one prefill
    /// call between two decode steps while rows are running, as many as it
    /// takes when none is.
    fn prefill_ahead(&mut self) -> Result<(), ModelError> {
        while self.ready_samples() < self.free_slots() && (self.partial.is_some() || !self.queue.is_empty()) {
            self.prefill_call()?;
            if self.live_rows() > 0 {
                break;
            }
        }
        Ok(())
    }

    /// Nothing is left to admit.
    fn queue_is_dry(&self) -> bool {
        self.queue.is_empty() && self.partial.is_none() && self.ready.is_empty()
    }

    /// One prefill call: the next chunk of a long prompt, or a batch of
    /// whole short prompts within the prompt and token limits.
    fn prefill_call(&mut self) -> Result<(), ModelError> {
        if self.partial.is_none() {
            let first = *self.queue.front().expect("a prompt to prefill");
            let length = self.requests[first].prompt.len();
            if length > self.limits.prefill_chunk_tokens {
                self.queue.pop_front();
                let cache = KvBuffer::new(self.model.graph, self.model.cache, 1, length)?;
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
        let width = QueryBlocks::of(&self.model.cache).batch_width(longest);
        let ids = right_pad_to(&prompts, self.model.pad, width);
        let lengths: Vec<usize> = prompts.iter().map(|p| p.len()).collect();
        let mut cache = KvBuffer::new(self.model.graph, self.model.cache, prompts.len(), width)?;
        let logits = self.run_decode(&mut cache, [prompts.len(), width], ids, &lengths, true)?;
        let logits = host_f32(&logits)?.1.to_vec();
        let cache = Rc::new(cache);
        let vocab = self.model.vocab;
        for (b, &request) in batch.iter().enumerate() {
            let last = logits[b * vocab..(b + 1) * vocab].to_vec();
            let length = lengths[b];
            self.ready.push_back(Prefix {
                request,
                length,
                cache: Rc::clone(&cache),
                row: b,
                logits: last,
                next_sample: 0,
            });
        }
        Ok(())
    }

    fn prefill_chunk(&mut self, mut partial: Partial) -> Result<(), ModelError> {
        let prompt = &self.requests[partial.request].prompt;
        let blocks = QueryBlocks::of(&self.model.cache);
        let end = blocks.chunk_end(self.limits.prefill_chunk_tokens, partial.fed, prompt.len());
        let chunk = prompt[partial.fed..end].to_vec();
        let (n, done) = (chunk.len(), end == prompt.len());
        self.steps.prefill_tokens += n as u64;
        let logits = self.run_decode(&mut partial.cache, [1, n], chunk, &[end], true)?;
        let logits = host_f32(&logits)?.1.to_vec();
        partial.fed = end;
        if !done {
            self.partial = Some(partial);
            return Ok(());
        }
        let cache = Rc::new(partial.cache);
        self.ready.push_back(Prefix { request: partial.request, length: end, cache, row: 0, logits, next_sample: 0 });
        Ok(())
    }

    /// Fills every free slot with the next ready sample: its prompt's cache
    /// is copied into the slot's row.
    fn admit(&mut self) -> Result<(), ModelError> {
        if self.ready.is_empty() {
            return Ok(());
        }
        if self.slots.is_none() {
            let rows = self.limits.slots.min(self.total_samples());
            let longest = self.requests.iter().map(|r| r.prompt.len()).max().unwrap_or(0);
            let capacity = longest + self.max_new_tokens;
            self.slots = Some(KvBuffer::new(self.model.graph, self.model.cache, rows, capacity)?);
            self.rows = (0..rows).map(|_| Row::default()).collect();
        }
        for r in 0..self.rows.len() {
            if self.rows[r].sequence.is_some() {
                continue;
            }
            let Some((sequence, prefix)) = self.admit_next()? else { break };
            let slots = self.slots.as_mut().expect("allocated above");
            slots.copy_row(r, &prefix.cache, prefix.row, prefix.length)?;
            self.rows[r] = Row { cached: prefix.length, sequence: Some(sequence) };
            if prefix.next_sample < self.requests[prefix.request].seeds.len() {
                self.ready.push_front(prefix);
            }
        }
        Ok(())
    }

    /// The next ready sample that needs a slot, and the prefix it comes
    /// from (to go back to the front of the queue while it has samples
    /// left): its first token is drawn from its prompt's logits, and a
    /// sample that ends there is finished at once.
    fn admit_next(&mut self) -> Result<Option<(Sequence, Prefix)>, ModelError> {
        loop {
            let Some(mut prefix) = self.ready.pop_front() else { return Ok(None) };
            let request = &self.requests[prefix.request];
            if prefix.next_sample == request.seeds.len() {
                continue;
            }
            let sample = prefix.next_sample;
            prefix.next_sample += 1;
            let mut sequence = Sequence {
                request: prefix.request,
                sample,
                rng: sequence_rng(request.seeds[sample]),
                tokens: Vec::new(),
                stop_token: None,
                logprob: 0.0,
            };
            let drawn = self.draw_first(&prefix.logits, &mut sequence.rng)?;
            self.steps.slot_steps += 1;
            self.steps.useful_slot_steps += 1;
            if sequence.push(drawn, self.model.stops, self.max_new_tokens) {
                let (request, sample) = (sequence.request, sequence.sample);
                self.results[request][sample] = Some(sequence.finish());
                self.ready.push_front(prefix);
                continue;
            }
            return Ok(Some((sequence, prefix)));
        }
    }

    /// A sample's first token, from its prompt's logits (host memory).
    fn draw_first(&mut self, logits: &[f32], rng: &mut ChaCha8Rng) -> Result<Sampled, ModelError> {
        let Some(sampler) = self.model.sampler.as_deref_mut() else {
            return Ok(next_token(logits, self.params, rng));
        };
        let logits = Tensor::from_array(([1, logits.len()], logits.to_vec())).map_err(|e| tensor_error("logits", e))?;
        let drawn = sampler.draw(&logits.into_dyn(), self.params, vec![Some(rng)])?;
        Ok(drawn[0].expect("a drawing row"))
    }

    /// Once nothing is left to admit and a sixteenth of the rows have ended,
    /// moves the running rows to the lowest rows of the cache and runs the
    /// calls over them only: the steps left compute for the running rows,
    /// and no second cache is allocated. Sixteenths bound both the idle slot
    /// steps (~6 %) and the moves.
    fn shrink_when_idle(&mut self) -> Result<(), ModelError> {
        let live = self.live_rows();
        let ended = self.rows.len() - live;
        if !self.queue_is_dry() || ended == 0 || ended < self.rows.len().div_ceil(16) {
            return Ok(());
        }
        let slots = self.slots.as_mut().expect("rows run in the slots' cache");
        let mut kept = Vec::with_capacity(live);
        for (r, row) in std::mem::take(&mut self.rows).into_iter().enumerate() {
            if row.sequence.is_some() {
                if r != kept.len() {
                    slots.move_row(r, kept.len(), row.cached)?;
                }
                kept.push(row);
            }
        }
        slots.set_active(live);
        self.rows = kept;
        Ok(())
    }

    /// One token for every running row; free rows compute a pad token at
    /// their position 0 (what they cached is overwritten on admission).
    fn decode_step(&mut self) -> Result<(), ModelError> {
        let n = self.rows.len();
        let ids: Vec<i64> = self
            .rows
            .iter()
            .map(|r| r.sequence.as_ref().map_or(self.model.pad, |s| s.tokens[s.tokens.len() - 1]))
            .collect();
        let lengths: Vec<usize> =
            self.rows.iter().map(|r| if r.sequence.is_some() { r.cached + 1 } else { 1 }).collect();
        let mut slots = self.slots.take().expect("rows run in the slots' cache");
        let on_host = self.model.sampler.is_none();
        let logits = self.run_decode(&mut slots, [n, 1], ids, &lengths, on_host);
        self.slots = Some(slots);
        let drawn = self.draw_rows(&logits?)?;
        self.steps.slot_steps += n as u64;
        for (row, drawn) in self.rows.iter_mut().zip(drawn) {
            let (Some(sequence), Some(drawn)) = (row.sequence.as_mut(), drawn) else { continue };
            row.cached += 1;
            self.steps.useful_slot_steps += 1;
            if sequence.push(drawn, self.model.stops, self.max_new_tokens) {
                let ended = row.sequence.take().expect("a running sequence");
                let (request, sample) = (ended.request, ended.sample);
                self.results[request][sample] = Some(ended.finish());
                row.cached = 0;
            }
        }
        Ok(())
    }

    /// Each running row's next token from `logits` (`[rows, vocab]`): on the
    /// device when there is a device sampler, else on the host.
    fn draw_rows(&mut self, logits: &DynValue) -> Result<Vec<Option<Sampled>>, ModelError> {
        let rngs = self.rows.iter_mut().map(|row| row.sequence.as_mut().map(|s| &mut s.rng)).collect();
        if let Some(sampler) = self.model.sampler.as_deref_mut() {
            return sampler.draw(logits, self.params, rngs);
        }
        let (vocab, logits) = (self.model.vocab, host_f32(logits)?.1);
        let rows = rngs.into_iter().enumerate();
        Ok(rows
            .map(|(i, rng)| rng.map(|rng| next_token(&logits[i * vocab..(i + 1) * vocab], self.params, rng)))
            .collect())
    }

    /// Runs the decode graph on `ids` (`[rows, seq]`, right-padded) over
    /// `cache`, where row `b` holds `lengths[b]` tokens counting its cache and
    /// this call; returns the float32 logits of each row's last token, in
    /// host memory when `on_host`, else where the execution provider left them.
    fn run_decode(
        &mut self,
        cache: &mut KvBuffer,
        shape: [usize; 2],
        ids: Vec<i64>,
        lengths: &[usize],
        on_host: bool,
    ) -> Result<DynValue, ModelError> {
        let graph = match &mut self.model.steps {
            Some(steps) if shape[1] == 1 => &mut **steps,
            _ => &mut *self.model.graph,
        };
        cache.bind(graph, &self.model.cache_names)?;
        let seqlens: Vec<i32> = lengths.iter().map(|&l| l as i32 - 1).collect();
        // A batch of whole prompts may be padded wider than its longest: its total is its width.
        let total = lengths.iter().copied().max().unwrap_or(1).max(shape[1]) as i32;
        let (ids, seqlens, total) =
            (tensor_i64(shape, ids)?, tensor_i32(&[shape[0]], seqlens)?, tensor_i32(&[], vec![total])?);
        let inputs = [("input_ids", &ids), ("seqlens_k", &seqlens), ("total_sequence_length", &total)];
        let mut outputs = graph.run(&inputs, if on_host { &["logits"] } else { &[] })?;
        Ok(outputs.remove("logits").expect("decode returns logits"))
    }
}

#[cfg(test)]
mod tests {
    use super::{QueryBlocks, SlotLimits};

    fn chunks(blocks: QueryBlocks, limit: usize, length: usize) -> Vec<usize> {
        let (mut fed, mut sizes) = (0, Vec::new());
        while fed < length {
            let end = blocks.chunk_end(limit, fed, length);
            sizes.push(end - fed);
            fed = end;
        }
        sizes
    }

    #[test]
    fn no_prefill_chunk_leaves_a_query_alone_in_its_block() {
        let blocks = QueryBlocks(128);
        assert_eq!(chunks(blocks, 5, 12), [5, 5, 2]);
        assert_eq!(chunks(blocks, 5, 11), [5, 6]);
        assert_eq!(chunks(blocks, 1, 5), [2, 3]);
        assert_eq!(chunks(blocks, 300, 600), [256, 256, 88]);
        assert_eq!(chunks(blocks, 256, 385), [256, 127, 2]);
        assert_eq!(chunks(blocks, 128, 257), [128, 127, 2]);
        assert_eq!(chunks(blocks, 129, 600), [128, 128, 128, 128, 88]);
        for limit in (1..12).chain([127, 128, 129, 255, 256, 257, 300]) {
            let call = SlotLimits { slots: 1, prefill_prompts: 1, prefill_chunk_tokens: limit }.prefill_call_tokens();
            for length in (limit + 1)..(limit + 400) {
                let sizes = chunks(blocks, limit, length);
                assert_eq!(sizes.iter().sum::<usize>(), length);
                let bad = sizes.iter().any(|&n| n < 2 || n > call || blocks.leaves_one_alone(n));
                assert!(!bad, "limit {limit}, length {length}: {sizes:?}");
            }
        }
    }

    #[test]
    fn a_batch_of_prompts_one_query_past_whole_blocks_is_padded_one_wider() {
        let blocks = QueryBlocks(128);
        assert_eq!([1, 2, 128, 129, 130, 257].map(|l| blocks.batch_width(l)), [2, 2, 128, 130, 130, 258]);
    }
}
