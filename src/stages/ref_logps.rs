//! The ref_logps stage: the reference model's log-probs of every pair's
//! chosen and rejected response, computed once on ONNX Runtime and kept as a
//! table keyed by pair id.
//!
//! DPO needs them for every step of every epoch of every tuning run; TRL
//! recomputes them per run (or keeps them in memory for one run). As a table
//! they are computed once per (reference bundle, pairs, truncation) and every
//! tuning variant that shares those reads them — the content key says so.
//! The truncation settings live here because the tune stage must cut the
//! sequences exactly as they were cut when these sums were taken; it checks
//! the token counts stored here.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};

use super::stage::{Stage, StageError, StageInput, stats};
use crate::model::batching::in_batches;
use crate::model::dpo::{PairTokens, encode_pair};
use crate::model::policy::Policy;
use crate::spec::ref_logps::RefLogpsParams;
use crate::spec::{PipelineSpec, StageName};
use crate::store::Table;
use crate::store::manifest::Stats;
use crate::store::rows::{Chunks, text_at};
use crate::store::tables::TableWriter;
use crate::vocab::roles::ModelRole;

/// The ref_logps stage.
pub struct RefLogps;

impl Stage for RefLogps {
    type Params = RefLogpsParams;
    const NAME: StageName = StageName::RefLogps;

    fn params(spec: &PipelineSpec) -> Option<RefLogpsParams> {
        spec.stages.ref_logps.clone()
    }

    /// The reference defaults to the policy's bundle, without its adapter.
    fn models(spec: &PipelineSpec) -> Vec<(ModelRole, String)> {
        let reference = spec.models.reference.clone().or_else(|| spec.models.policy.clone());
        reference.map(|r| (ModelRole::Reference, r)).into_iter().collect()
    }

    async fn run(input: &StageInput<'_>, params: &RefLogpsParams, sink: &mut TableWriter) -> Result<Stats, StageError> {
        let bundle = input.bundle(ModelRole::Reference)?;
        let label = format!("bundle:{}", &bundle.checksum[..16]);
        let mut model = Policy::load(bundle, &input.session)?;
        let done = if input.resume { sink.resume_chunks().await? } else { Default::default() };
        let sql = "SELECT pair_id, prompt_text, chosen_text, rejected_text FROM pairs";
        let row = |batch: &RecordBatch, i: usize| {
            Some(PairText {
                pair_id: text_at(batch, "pair_id", i),
                prompt: text_at(batch, "prompt_text", i),
                chosen: text_at(batch, "chosen_text", i),
                rejected: text_at(batch, "rejected_text", i),
            })
        };
        let mut chunks = Chunks::new(input.ctx, sql, "pairs", params.rows_per_part as usize, row).await?;
        let mut worker = Worker { model: &mut model, label: &label, params, computed: 0, truncated: 0 };
        while let Some((index, pairs)) = chunks.next().await? {
            worker.chunk(index, &pairs, &done, sink, input).await?;
        }
        Ok(stats([
            ("pairs", sink.rows()),
            ("computed_now", worker.computed),
            ("truncated_now", worker.truncated),
            ("resumed_parts", done.len() as u64),
        ]))
    }
}

/// The texts of one pair.
struct PairText {
    pair_id: String,
    prompt: String,
    chosen: String,
    rejected: String,
}

/// Reference log-probs of one pair.
struct PairLogps {
    chosen: f64,
    rejected: f64,
    tokens: PairTokens,
    truncated: bool,
}

struct Worker<'m> {
    model: &'m mut Policy,
    label: &'m str,
    params: &'m RefLogpsParams,
    computed: u64,
    truncated: u64,
}

impl Worker<'_> {
    async fn chunk(
        &mut self,
        index: u64,
        pairs: &[PairText],
        done: &BTreeSet<u64>,
        sink: &mut TableWriter,
        input: &StageInput<'_>,
    ) -> Result<(), StageError> {
        if done.contains(&index) {
            return Ok(());
        }
        let logps = self.compute(pairs)?;
        sink.write(&batch(pairs, &logps, self.label)?).await?;
        sink.commit_chunk(index).await?;
        self.computed += pairs.len() as u64;
        self.truncated += logps.iter().filter(|l| l.truncated).count() as u64;
        input.progress.set_position(sink.rows());
        Ok(())
    }

    /// Log-probs in `pairs` order; the 2·n sequences are batched by length.
    fn compute(&mut self, pairs: &[PairText]) -> Result<Vec<PairLogps>, StageError> {
        let limits = self.params.truncation();
        let encoded = pairs
            .iter()
            .map(|p| encode_pair(&self.model.tokenizer, &p.prompt, &p.chosen, &p.rejected, limits))
            .collect::<Result<Vec<_>, _>>()?;
        // Sequence 2i is pair i's chosen, 2i + 1 its rejected.
        let sequences: Vec<(Vec<i64>, usize)> = encoded
            .iter()
            .flat_map(|(p, _)| [(p.chosen.clone(), p.response_start), (p.rejected.clone(), p.response_start)])
            .collect();
        let logprobs =
            in_batches(&sequences, |(ids, _)| ids.len(), self.params.batch_limits(), |b| self.model.logprobs(b))?;
        let mut sums = Vec::with_capacity(logprobs.len());
        for (i, logprob) in logprobs.into_iter().enumerate() {
            if !logprob.sum.is_finite() {
                return Err(StageError::Row {
                    file: "reference model output".into(),
                    row: format!("pair_id={}", pairs[i / 2].pair_id),
                    problem: format!("the log-prob is {}; it must be finite", logprob.sum),
                });
            }
            sums.push(f64::from(logprob.sum));
        }
        Ok(encoded
            .into_iter()
            .enumerate()
            .map(|(i, (tokens, truncated))| PairLogps {
                chosen: sums[2 * i],
                rejected: sums[2 * i + 1],
                tokens,
                truncated,
            })
            .collect())
    }
}

fn batch(pairs: &[PairText], logps: &[PairLogps], label: &str) -> Result<RecordBatch, StageError> {
    let n = pairs.len();
    let ints = |f: fn(&PairLogps) -> usize| Arc::new(Int64Array::from_iter_values(logps.iter().map(|l| f(l) as i64)));
    let given: Vec<(&str, ArrayRef)> = vec![
        ("pair_id", Arc::new(StringArray::from_iter_values(pairs.iter().map(|p| p.pair_id.as_str())))),
        ("chosen_logp", Arc::new(Float64Array::from_iter_values(logps.iter().map(|l| l.chosen)))),
        ("rejected_logp", Arc::new(Float64Array::from_iter_values(logps.iter().map(|l| l.rejected)))),
        ("chosen_tokens", ints(|l| l.tokens.chosen_tokens())),
        ("rejected_tokens", ints(|l| l.tokens.rejected_tokens())),
        ("prompt_tokens", ints(|l| l.tokens.response_start)),
        ("truncated", Arc::new(logps.iter().map(|l| Some(l.truncated)).collect::<BooleanArray>())),
        ("reference", Arc::new(StringArray::from(vec![label; n]))),
    ];
    Ok(Table::RefLogps.schema().assemble(given, n)?)
}
