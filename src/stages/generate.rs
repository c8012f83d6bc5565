//! The generate stage: responses for every prompt.
//!
//! Either the policy samples K responses per prompt on ONNX Runtime (the
//! recipe's on-policy self-generations), or a second bundle does
//! (`model = "off_policy"`, `models.off_policy`: rows with
//! `source = 'off_policy'`), or responses made elsewhere are imported
//! (`[stages.generate.import]`) and matched to the prompts table by
//! `prompt_id`.
//!
//! Sampling is resumable: prompts are taken in `prompt_id` order in chunks of
//! `prompts_per_part`, each chunk committed as its own part; a rerun after a
//! crash skips committed chunks. Every (prompt, sample) draws from its own
//! seeded RNG, so the rerun produces exactly the rows an uninterrupted run has.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, Int32Array, RecordBatch, StringArray, UInt64Array};
use futures::StreamExt;

use super::files::{ColumnKind, Mapped, file_name, open_keyed_import};
use super::stage::{Stage, StageError, StageInput, stats};
use crate::ids::{stable_id, stable_seed};
use crate::model::policy::{Generated, GenerationRequest, Policy, policy_id};
use crate::model::sampling::SamplingParams;
use crate::spec::common::{SplitFilter, with_instruction};
use crate::spec::generate::{GenerateParams, GenerationsImport, ResponseSource, SamplingModel};
use crate::spec::{PipelineSpec, StageName};
use crate::store::manifest::Stats;
use crate::store::rows::{Chunks, count, first_row, text_at};
use crate::store::schema::plain_strings;
use crate::store::tables::TableWriter;
use crate::store::{StoreError, Table};
use crate::vocab::roles::ModelRole;

/// Name under which the imported file is registered for the stage's queries.
const IMPORTED: &str = "imported_generations";

/// The generate stage.
pub struct Generate;

impl Stage for Generate {
    type Params = GenerateParams;
    const NAME: StageName = StageName::Generate;
    const SHARDS: bool = true;

    fn params(spec: &PipelineSpec) -> Option<GenerateParams> {
        spec.stages.generate.clone()
    }

    fn models(spec: &PipelineSpec) -> Vec<(ModelRole, String)> {
        let sampled = spec.stages.generate.as_ref().filter(|g| g.import.is_none());
        let model = sampled.and_then(|g| match g.model {
            SamplingModel::Policy => spec.models.policy.clone().map(|p| (ModelRole::Policy, p)),
            SamplingModel::OffPolicy => spec.models.off_policy.clone().map(|p| (ModelRole::OffPolicy, p)),
        });
        model.into_iter().collect()
    }

    fn external_inputs(spec: &PipelineSpec) -> Vec<(String, String)> {
        let import = spec.stages.generate.as_ref().and_then(|g| g.import.as_ref());
        import.map(|i| ("stages.generate.import.path".to_string(), i.path.clone())).into_iter().collect()
    }

    async fn run(input: &StageInput<'_>, params: &GenerateParams, sink: &mut TableWriter) -> Result<Stats, StageError> {
        let mut stats = match &params.import {
            Some(import) => import_generations(input, import, params.split, sink).await?,
            None => sample_policy(input, params, sink).await?,
        };
        if let Some(also) = &params.also_import {
            let added = import_generations(input, also, params.split, sink).await?;
            stats.extend(added.into_iter().map(|(name, value)| (format!("also_import_{name}"), value)));
            stats.insert("generations".into(), sink.rows().into());
        }
        Ok(stats)
    }
}

/// A prompt to answer.
struct PromptRow {
    prompt_id: String,
    source_id: String,
    language: String,
    text: String,
}

async fn sample_policy(
    input: &StageInput<'_>,
    params: &GenerateParams,
    sink: &mut TableWriter,
) -> Result<Stats, StageError> {
    let source = match params.model {
        SamplingModel::Policy => ResponseSource::OnPolicy,
        SamplingModel::OffPolicy => ResponseSource::OffPolicy,
    };
    let bundle = input.bundle(params.sampling_role())?;
    let prompt_budget = params.prompt_budget(bundle.manifest.architecture.max_position_embeddings);
    // The adapter tunes the policy; another model is sampled as it is.
    let adapter = match params.model {
        SamplingModel::Policy => input.policy_adapter(&bundle).await?,
        SamplingModel::OffPolicy => None,
    };
    let policy_id = policy_id(&bundle.checksum, adapter.as_ref().map(|(_, c)| c.as_str()));
    let mut policy = Policy::load_tuned(bundle, adapter.as_ref().map(|(a, _)| a), &input.session)?;
    tracing::info!(target = ?policy.target(), "generate: policy loaded");
    let done = if input.resume { sink.resume_chunks().await? } else { Default::default() };
    let sql = format!("SELECT prompt_id, source_id, language, text FROM prompts WHERE {}", params.split.sql("split"));
    // A shard answers only the prompts of its slice, a round those of its own.
    let row = |batch: &RecordBatch, i: usize| {
        let prompt_id = text_at(batch, "prompt_id", i);
        let in_slice = params.prompt_slice.is_none_or(|slice| slice.contains(&prompt_id));
        (in_slice && input.shard.is_none_or(|shard| shard.contains(&prompt_id))).then(|| PromptRow {
            prompt_id,
            source_id: text_at(batch, "source_id", i),
            language: text_at(batch, "language", i),
            text: text_at(batch, "text", i),
        })
    };
    let mut chunks = Chunks::new(input.ctx, &sql, "prompts", params.prompts_per_part as usize, row).await?;
    let mut sampler = Sampler {
        policy: &mut policy,
        params,
        policy_id,
        source: source.as_str(),
        tokens: 0,
        started: std::time::Instant::now(),
        prompts: 0,
        prompt_budget,
        too_long: 0,
    };
    while let Some((index, prompts)) = chunks.next().await? {
        sampler.chunk(index, &prompts, &done, sink, input).await?;
    }
    if sampler.too_long > 0 {
        tracing::warn!(
            "generate: {} prompt(s) longer than {prompt_budget} tokens skipped (max_prompt_tokens)",
            sampler.too_long
        );
    }
    // Like new_tokens, the step counts are this attempt's (resumed parts cost nothing).
    let steps = sampler.policy.steps;
    Ok(stats([
        ("prompts", sampler.prompts),
        ("generations", sink.rows()),
        ("resumed_parts", done.len() as u64),
        ("new_tokens", sampler.tokens),
        ("skipped_too_long", sampler.too_long),
        ("slot_steps", steps.slot_steps),
        ("useful_slot_steps", steps.useful_slot_steps),
        ("prefill_tokens", steps.prefill_tokens),
    ]))
}

/// Generates chunk after chunk and turns the samples into rows.
struct Sampler<'p> {
    policy: &'p mut Policy,
    params: &'p GenerateParams,
    policy_id: String,
    /// `on_policy` or `off_policy`.
    source: &'static str,
    tokens: u64,
    started: std::time::Instant,
    prompts: u64,
    /// The longest prompt answered, in tokens.
    prompt_budget: usize,
    /// Prompts skipped for being longer, resumed parts included.
    too_long: u64,
}

impl Sampler<'_> {
    async fn chunk(
        &mut self,
        index: u64,
        prompts: &[PromptRow],
        done: &std::collections::BTreeSet<u64>,
        sink: &mut TableWriter,
        input: &StageInput<'_>,
    ) -> Result<(), StageError> {
        self.prompts += prompts.len() as u64;
        // Encoding is cheap: a resumed part is encoded too, so that the
        // skipped prompts are counted the same however often a run resumes.
        let (mut kept, mut requests) = (Vec::with_capacity(prompts.len()), Vec::with_capacity(prompts.len()));
        for prompt in prompts {
            let request = self.request(prompt)?;
            match request.prompt.len() > self.prompt_budget {
                true => self.too_long += 1,
                false => {
                    kept.push(prompt);
                    requests.push(request);
                }
            }
        }
        if done.contains(&index) {
            return Ok(());
        }
        let rows = self.generate(&kept, &requests, input)?;
        sink.write(&rows).await?;
        input.progress.set_position(sink.rows());
        sink.commit_chunk(index).await?;
        Ok(())
    }

    /// The prompt with its instruction, encoded, and its samples' seeds.
    fn request(&self, prompt: &PromptRow) -> Result<GenerationRequest, StageError> {
        let text = with_instruction(&prompt.text, self.params.instruction.as_deref(), &prompt.language);
        let encoded = self.policy.tokenizer.encode_prompt(&text)?;
        let seeds = (0..self.params.samples as usize).map(|k| sample_seed(self.params.seed, &prompt.prompt_id, k));
        Ok(GenerationRequest { prompt: encoded, seeds: seeds.collect() })
    }

    fn generate(
        &mut self,
        prompts: &[&PromptRow],
        requests: &[GenerationRequest],
        input: &StageInput<'_>,
    ) -> Result<RecordBatch, StageError> {
        let sampling = SamplingParams {
            temperature: self.params.temperature,
            top_p: self.params.top_p,
            top_k: self.params.top_k.map(|k| k as usize),
        };
        let (started, progress) = (self.started, &input.progress);
        let mut tokens = self.tokens;
        let mut on_tokens = |step: u64| {
            tokens += step;
            let rate = tokens as f64 / started.elapsed().as_secs_f64().max(1e-9);
            progress.set_message(format!("{rate:.0} tokens/s"));
        };
        let max_new_tokens = self.params.max_new_tokens as usize;
        let limits = self.params.slot_limits();
        let generated = self.policy.generate(requests, &sampling, max_new_tokens, limits, &mut on_tokens)?;
        let mut rows = GenerationRows { source: self.source, ..Default::default() };
        for ((prompt, request), samples) in prompts.iter().zip(requests).zip(generated) {
            for (k, sample) in samples.into_iter().enumerate() {
                self.tokens += sample.tokens.len() as u64 + u64::from(sample.stop_token.is_some());
                let text = self.policy.tokenizer.decode(&sample.tokens)?;
                rows.push(prompt, k, &self.policy_id, text, request, &sample);
            }
        }
        rows.finish(self.params)
    }
}

/// The RNG seed of sample `k` of a prompt: independent of batching and order.
fn sample_seed(seed: u64, prompt_id: &str, k: usize) -> u64 {
    stable_seed(&[&seed.to_string(), prompt_id, &k.to_string()])
}

/// Columns of sampled generations being assembled.
#[derive(Default)]
struct GenerationRows {
    source: &'static str,
    generation_id: Vec<String>,
    prompt_id: Vec<String>,
    source_id: Vec<String>,
    language: Vec<String>,
    sample_idx: Vec<i32>,
    policy_id: Vec<String>,
    text: Vec<String>,
    prompt_tokens: Vec<i32>,
    response_tokens: Vec<i32>,
    finish_reason: Vec<&'static str>,
    seed: Vec<u64>,
    behaviour_logprob: Vec<f64>,
}

impl GenerationRows {
    fn push(
        &mut self,
        prompt: &PromptRow,
        k: usize,
        policy_id: &str,
        text: String,
        request: &GenerationRequest,
        sample: &Generated,
    ) {
        self.generation_id.push(stable_id(&[&prompt.prompt_id, self.source, policy_id, &k.to_string()]));
        self.prompt_id.push(prompt.prompt_id.clone());
        self.source_id.push(prompt.source_id.clone());
        self.language.push(prompt.language.clone());
        self.sample_idx.push(k as i32);
        self.policy_id.push(policy_id.to_string());
        self.text.push(text);
        self.prompt_tokens.push(request.prompt.len() as i32);
        self.response_tokens.push(sample.tokens.len() as i32);
        self.finish_reason.push(sample.finish.as_str());
        self.seed.push(request.seeds[k]);
        self.behaviour_logprob.push(sample.logprob);
    }

    fn finish(self, params: &GenerateParams) -> Result<RecordBatch, StageError> {
        let n = self.text.len();
        let strings = |v: Vec<String>| Arc::new(StringArray::from(v)) as ArrayRef;
        let given: Vec<(&str, ArrayRef)> = vec![
            ("generation_id", strings(self.generation_id)),
            ("prompt_id", strings(self.prompt_id)),
            ("source_id", strings(self.source_id)),
            ("language", strings(self.language)),
            ("sample_idx", Arc::new(Int32Array::from(self.sample_idx))),
            ("source", Arc::new(StringArray::from(vec![self.source; n]))),
            ("policy_id", strings(self.policy_id)),
            ("text", strings(self.text)),
            ("prompt_tokens", Arc::new(Int32Array::from(self.prompt_tokens))),
            ("response_tokens", Arc::new(Int32Array::from(self.response_tokens))),
            ("finish_reason", Arc::new(StringArray::from(self.finish_reason))),
            ("temperature", Arc::new(Float64Array::from(vec![params.temperature; n]))),
            ("top_p", Arc::new(Float64Array::from(vec![params.top_p; n]))),
            ("top_k", Arc::new(Int32Array::from(vec![params.top_k.map(|k| k as i32); n]))),
            ("max_new_tokens", Arc::new(Int32Array::from(vec![params.max_new_tokens as i32; n]))),
            ("seed", Arc::new(UInt64Array::from(self.seed))),
            ("behaviour_logprob", Arc::new(Float64Array::from(self.behaviour_logprob))),
        ];
        Ok(Table::Generations.schema().assemble(given, n)?)
    }
}

async fn import_generations(
    input: &StageInput<'_>,
    import: &GenerationsImport,
    split: SplitFilter,
    sink: &mut TableWriter,
) -> Result<Stats, StageError> {
    // The sink may already hold sampled rows (`also_import`): count this import's own.
    let before = sink.rows();
    let columns = [
        Mapped { role: "prompt_id", column: &import.columns.prompt_id, kind: ColumnKind::Key },
        Mapped { role: "sample_idx", column: &import.columns.sample_idx, kind: ColumnKind::Integer },
        Mapped { role: "text", column: &import.columns.text, kind: ColumnKind::Text },
    ];
    let url = open_keyed_import(input, IMPORTED, &import.path, import.format, &columns).await?;
    let null_text = format!("SELECT prompt_id, sample_idx FROM {IMPORTED} WHERE text IS NULL");
    if let Some(row) = first_row(input.ctx, &null_text, &url).await? {
        return Err(StageError::Row {
            file: url,
            row,
            problem: format!("column `{}` (text) is null", import.columns.text),
        });
    }
    let total = count(input.ctx, &format!("SELECT COUNT(*) FROM {IMPORTED}"), &url).await?;
    let label = import.label.clone().unwrap_or_else(|| format!("import:{}", file_name(&import.path)));
    // Like sampling, an import answers one split (train by default): responses
    // to held-out prompts must not reach the pairs the policy is tuned on.
    let matched = format!(
        "SELECT i.prompt_id, p.source_id, p.language, i.sample_idx, i.text \
         FROM {IMPORTED} AS i JOIN prompts AS p ON p.prompt_id = i.prompt_id WHERE {} \
         ORDER BY i.prompt_id, i.sample_idx",
        split.sql("p.split")
    );
    let frame = crate::store::session::query(input.ctx, &matched, &url).await?;
    let mut stream = frame.execute_stream().await.map_err(StoreError::query(format!("importing {url}")))?;
    let identity = Identity { source: import.source.as_str(), policy_id: &label };
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|source| StoreError::Query { context: format!("importing {url}"), source })?;
        sink.write(&identity.generations(&batch)?).await?;
        input.progress.set_position(sink.rows());
    }
    let written = sink.rows() - before;
    if written == 0 && total > 0 {
        return Err(StageError::Input {
            file: url,
            problem: format!(
                "none of its {total} rows has a prompt_id of the prompts table; prompt ids are the first 16 hex \
                 digits of sha256(language + \"\\x1f\" + text)"
            ),
        });
    }
    let unknown_sql = format!(
        "SELECT COUNT(*) FROM {IMPORTED} AS i LEFT JOIN prompts AS p ON p.prompt_id = i.prompt_id WHERE p.prompt_id IS NULL"
    );
    let unknown = count(input.ctx, &unknown_sql, &url).await?;
    let other_split = total - written - unknown;
    if unknown > 0 {
        tracing::warn!("{url}: {unknown} row(s) answer prompts that are not in the prompts table; dropped");
    }
    Ok(stats([
        ("rows_read", total),
        ("generations", written),
        ("dropped_unknown_prompt", unknown),
        ("dropped_other_split", other_split),
    ]))
}

/// Who produced the imported responses.
struct Identity<'a> {
    source: &'a str,
    policy_id: &'a str,
}

impl Identity<'_> {
    /// Turns matched import rows into generations rows with stable ids.
    fn generations(&self, batch: &RecordBatch) -> Result<RecordBatch, StageError> {
        let batch = &plain_strings(batch);
        let prompt_ids = utf8(batch, "prompt_id");
        let samples = batch
            .column_by_name("sample_idx")
            .and_then(|c| c.as_any().downcast_ref::<Int32Array>())
            .expect("cast to Int32");
        let ids: StringArray = (0..batch.num_rows())
            .map(|i| {
                Some(stable_id(&[prompt_ids.value(i), self.source, self.policy_id, &samples.value(i).to_string()]))
            })
            .collect();
        let constant = |value: &str| Arc::new(StringArray::from(vec![value; batch.num_rows()])) as ArrayRef;
        let given = vec![
            ("generation_id", Arc::new(ids) as ArrayRef),
            ("prompt_id", batch.column(0).clone()),
            ("source_id", batch.column(1).clone()),
            ("language", batch.column(2).clone()),
            ("sample_idx", batch.column(3).clone()),
            ("source", constant(self.source)),
            ("policy_id", constant(self.policy_id)),
            ("text", batch.column(4).clone()),
        ];
        Ok(Table::Generations.schema().assemble(given, batch.num_rows())?)
    }
}

fn utf8<'b>(batch: &'b RecordBatch, name: &str) -> &'b StringArray {
    batch.column_by_name(name).and_then(|c| c.as_any().downcast_ref::<StringArray>()).expect("Utf8 column")
}
