//! The tune stage: offline DPO with LoRA on the pairs, on ONNX Runtime.
//!
//! pairs ⋈ ref_logps → a LoRA adapter (PEFT files, committed with the
//! `train_log` version as artifacts under `adapter/`) and one `train_log` row
//! per optimizer step.
//!
//! Each optimizer step takes the next `micro_batch × grad_accumulation` pairs
//! of a seeded permutation (one per epoch); each micro-batch is one pass of
//! the bundle's training graphs, layer by layer with recomputation
//! ([`crate::model::layerwise`]: forward + backward w.r.t. the LoRA tensors);
//! gradients are averaged over the step's pairs, clipped by global norm and
//! applied by AdamW in Rust at the schedule's learning rate. Everything that
//! decides a step — the permutation, the dropout seeds, the adapter's
//! initialisation — is a function of the seed and the step number, so a run
//! resumed from a checkpoint takes exactly the steps an uninterrupted run takes.
//!
//! Checkpoints: every `checkpoint_every` steps the adapter and the optimizer
//! state go to the version's `_resume/` directory, then the `train_log` rows
//! so far are committed as a chunk whose number is the step: the chunk marker
//! is the commit point, so a crash between the two leaves the previous
//! checkpoint in force.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::stage::{Stage, StageError, StageInput, stats};
use crate::model::bundle::Bundle;
use crate::model::dpo::{LossSettings, PairTokens, StepOutput, Truncation, encode_pair};
use crate::model::layerwise::LayerwiseGraphs;
use crate::model::lora::{ADAPTER_CONFIG, ADAPTER_DIR, ADAPTER_WEIGHTS, Adapter, AdapterConfig};
use crate::model::optim::{AdamW, clip_grad_norm, learning_rate, warmup_steps};
use crate::model::tensors::{read_f32_tensors, safetensors_bytes};
use crate::model::tokenizer::ChatTokenizer;
use crate::spec::ref_logps::RefLogpsParams;
use crate::spec::tune::TuneParams;
use crate::spec::{PipelineSpec, StageName};
use crate::store::manifest::Stats;
use crate::store::rows::text_at;
use crate::store::schema::plain_strings;
use crate::store::tables::TableWriter;
use crate::store::{StoreError, Table};
use crate::vocab::roles::ModelRole;

/// The tune stage.
pub struct Tune;

/// What the tune stage runs with: its section and the truncation of
/// `[stages.ref_logps]`, which it must apply exactly as the reference did.
#[derive(Debug, Clone, Serialize)]
pub struct TuneStage {
    /// `[stages.tune]`.
    pub tune: TuneParams,
    /// The truncation shared with `ref_logps`.
    pub truncation: RefLogpsParams,
}

impl Stage for Tune {
    type Params = TuneStage;
    const NAME: StageName = StageName::Tune;

    fn params(spec: &PipelineSpec) -> Option<TuneStage> {
        let tune = spec.stages.tune.as_ref()?.resolved();
        Some(TuneStage { tune, truncation: spec.stages.truncation() })
    }

    fn models(spec: &PipelineSpec) -> Vec<(ModelRole, String)> {
        spec.models.policy.clone().map(|p| (ModelRole::Policy, p)).into_iter().collect()
    }

    async fn run(input: &StageInput<'_>, stage: &TuneStage, sink: &mut TableWriter) -> Result<Stats, StageError> {
        let params = &stage.tune;
        let bundle = input.bundle(ModelRole::Policy)?;
        let tokenizer = ChatTokenizer::load(&bundle)?;
        let examples = load_examples(input, &tokenizer, stage.truncation.truncation()).await?;
        let schedule = Schedule::new(examples.len(), params);
        let mut state = match input.resume {
            true => resume(sink, &bundle).await?,
            false => None,
        };
        let resumed_at = state.as_ref().map_or(0, |s| s.step);
        if state.is_none() {
            state = Some(TrainState::fresh(input, &bundle, params).await?);
        }
        let mut state = state.expect("set above");
        let longest = examples.iter().map(|e| e.tokens.chosen.len().max(e.tokens.rejected.len())).max().unwrap_or(0);
        let step = (2 * u64::from(params.micro_batch), longest as u64);
        let mut graph = LayerwiseGraphs::load(
            &bundle,
            tokenizer.pad_token_id,
            &input.session,
            input.recompute,
            step,
            input.device_memory,
        )?;
        let recompute = graph.recompute();
        tracing::info!(target = ?graph.target(), %recompute, pairs = examples.len(), steps = schedule.total, resumed_at, "tune");
        input.progress.set_position(state.step);
        let mut rows = Vec::new();
        while state.step < schedule.total {
            rows.push(state.optimizer_step(&mut graph, &examples, &schedule, params)?);
            input.progress.set_position(state.step);
            if state.step % u64::from(params.checkpoint_every) == 0 && state.step < schedule.total {
                checkpoint(sink, &mut state, &mut rows).await?;
            }
        }
        sink.write(&log_batch(&rows)?).await?;
        write_adapter(sink, &state.adapter, &bundle).await?;
        let mut stats = stats([
            ("pairs", examples.len() as u64),
            ("steps", schedule.total),
            ("steps_per_epoch", schedule.steps_per_epoch),
            ("warmup_steps", schedule.warmup),
            ("resumed_at_step", resumed_at),
            (
                "trainable_parameters",
                state.adapter.named_tensors(|m| m.trainable).iter().map(|t| t.2.len() as u64).sum(),
            ),
        ]);
        stats.insert("adapter".into(), sink.url_of_artifact(ADAPTER_DIR).into());
        stats.insert("recompute".into(), recompute.to_string().into());
        Ok(stats)
    }
}

/// One pair, tokenized as ref_logps tokenized it, with its reference log-probs.
struct Example {
    tokens: PairTokens,
    reference: (f64, f64),
}

/// Reads pairs ⋈ ref_logps, tokenizes every pair with ref_logps' truncation
/// and checks that the token counts agree with the ones the reference
/// log-probs were computed on (another tokenizer or truncation would make
/// every DPO log-ratio wrong without failing).
async fn load_examples(
    input: &StageInput<'_>,
    tokenizer: &ChatTokenizer,
    limits: Truncation,
) -> Result<Vec<Example>, StageError> {
    let sql = "SELECT p.pair_id, p.prompt_text, p.chosen_text, p.rejected_text, r.chosen_logp, r.rejected_logp, \
               r.chosen_tokens, r.rejected_tokens, r.prompt_tokens \
               FROM pairs AS p LEFT JOIN ref_logps AS r ON r.pair_id = p.pair_id ORDER BY p.pair_id";
    let batches = crate::store::session::query(input.ctx, sql, "pairs ⋈ ref_logps")
        .await?
        .collect()
        .await
        .map_err(|source| StoreError::Query { context: "pairs ⋈ ref_logps".into(), source })?;
    let mut examples = Vec::new();
    for batch in batches.iter().map(plain_strings) {
        for i in 0..batch.num_rows() {
            examples.push(example(&batch, i, tokenizer, limits)?);
        }
    }
    if examples.is_empty() {
        return Err(StageError::Input { file: "pairs".into(), problem: "no pairs to tune on".into() });
    }
    Ok(examples)
}

fn example(
    batch: &RecordBatch,
    i: usize,
    tokenizer: &ChatTokenizer,
    limits: crate::model::dpo::Truncation,
) -> Result<Example, StageError> {
    let pair_id = text_at(batch, "pair_id", i);
    let row_error =
        |problem: String| StageError::Row { file: "ref_logps".into(), row: format!("pair_id={pair_id}"), problem };
    let floats = |name: &str| batch.column_by_name(name).and_then(|c| c.as_any().downcast_ref::<Float64Array>());
    let ints = |name: &str| batch.column_by_name(name).and_then(|c| c.as_any().downcast_ref::<Int64Array>());
    let (chosen, rejected) = (floats("chosen_logp").expect("selected"), floats("rejected_logp").expect("selected"));
    if chosen.is_null(i) || rejected.is_null(i) {
        return Err(row_error("the pair has no reference log-probs; rerun the ref_logps stage".into()));
    }
    let (tokens, _) = encode_pair(
        tokenizer,
        &text_at(batch, "prompt_text", i),
        &text_at(batch, "chosen_text", i),
        &text_at(batch, "rejected_text", i),
        limits,
    )?;
    let counted =
        [ints("prompt_tokens"), ints("chosen_tokens"), ints("rejected_tokens")].map(|c| c.expect("selected").value(i));
    let ours = [tokens.response_start, tokens.chosen_tokens(), tokens.rejected_tokens()].map(|n| n as i64);
    if counted != ours {
        return Err(row_error(format!(
            "reference log-probs were taken over (prompt, chosen, rejected) = {counted:?} tokens, the policy's \
             tokenizer gives {ours:?}: the reference and the policy must share a tokenizer and ref_logps' truncation"
        )));
    }
    Ok(Example { tokens, reference: (chosen.value(i), rejected.value(i)) })
}

/// Which pairs each optimizer step takes.
struct Schedule {
    pairs: usize,
    batch: usize,
    micro: usize,
    steps_per_epoch: u64,
    total: u64,
    warmup: u64,
    seed: u64,
}

impl Schedule {
    fn new(pairs: usize, params: &TuneParams) -> Schedule {
        let batch = (params.micro_batch * params.grad_accumulation) as usize;
        let steps_per_epoch = pairs.div_ceil(batch) as u64;
        let total = steps_per_epoch * u64::from(params.epochs);
        Schedule {
            pairs,
            batch,
            micro: params.micro_batch as usize,
            steps_per_epoch,
            total,
            warmup: warmup_steps(total, params.warmup_ratio),
            seed: params.seed,
        }
    }

    /// The pair indices of optimizer step `step` (0-based), as micro-batches.
    fn micro_batches(&self, step: u64) -> Vec<Vec<usize>> {
        let epoch = step / self.steps_per_epoch;
        let mut order: Vec<usize> = (0..self.pairs).collect();
        order
            .shuffle(&mut ChaCha8Rng::seed_from_u64(self.seed.wrapping_add(epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15))));
        let first = (step % self.steps_per_epoch) as usize * self.batch;
        let taken = &order[first..(first + self.batch).min(self.pairs)];
        taken.chunks(self.micro).map(<[usize]>::to_vec).collect()
    }
}

/// One `train_log` row.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LogRow {
    step: u64,
    epoch: f64,
    loss: f64,
    chosen_reward: f64,
    rejected_reward: f64,
    reward_accuracy: f64,
    reward_margin: f64,
    grad_norm: f64,
    lr: f64,
    pairs: u64,
    tokens_per_s: f64,
}

/// The adapter, the optimizer and the number of steps taken.
struct TrainState {
    adapter: Adapter,
    optimizer: AdamW,
    step: u64,
    /// Step of the checkpoint in force (deleted when the next one commits).
    checkpointed: Option<u64>,
}

impl TrainState {
    /// A new run: the adapter `models.policy_adapter` names (training
    /// continues from it, with its own rank and targets), else a fresh one.
    async fn fresh(input: &StageInput<'_>, bundle: &Bundle, params: &TuneParams) -> Result<TrainState, StageError> {
        let adapter = match input.policy_adapter(bundle).await? {
            Some((mut adapter, _)) => {
                let (config, wanted) = (&adapter.config, &params.lora);
                if config.r != wanted.rank as usize || config.target_modules != wanted.target_modules {
                    tracing::warn!(
                        rank = config.r,
                        targets = ?config.target_modules,
                        "tune continues models.policy_adapter with its own rank and targets, not [stages.tune.lora]'s"
                    );
                }
                adapter.config.lora_dropout = params.lora.dropout;
                adapter
            }
            None => Adapter::init(bundle, adapter_config(params, bundle), params.seed)?,
        };
        let optimizer = AdamW::new(&trainable_sizes(&adapter), params.weight_decay);
        Ok(TrainState { adapter, optimizer, step: 0, checkpointed: None })
    }

    /// Takes optimizer step `self.step` and returns its log row.
    fn optimizer_step(
        &mut self,
        graph: &mut LayerwiseGraphs,
        examples: &[Example],
        schedule: &Schedule,
        params: &TuneParams,
    ) -> Result<LogRow, StageError> {
        let started = Instant::now();
        let micro_batches = schedule.micro_batches(self.step);
        let pairs: usize = micro_batches.iter().map(Vec::len).sum();
        let mut sums = StepSums::new(&self.adapter);
        for (m, indices) in micro_batches.iter().enumerate() {
            let settings = loss_settings(params, self.step, m);
            let batch: Vec<&PairTokens> = indices.iter().map(|&i| &examples[i].tokens).collect();
            let reference: Vec<(f32, f32)> = indices.iter().map(|&i| reference_of(&examples[i], params)).collect();
            let output = graph.step(&batch, &reference, &self.adapter, &settings)?;
            sums.add(&output, &reference, indices.len() as f64 / pairs as f64, settings.beta);
        }
        let mut grads = sums.trainable_grads(&self.adapter);
        let sums = sums.totals;
        let grad_norm = clip_grad_norm(&mut grads, params.max_grad_norm);
        if !grad_norm.is_finite() || !sums.loss.is_finite() {
            return Err(StageError::Input {
                file: "tune".into(),
                problem: format!(
                    "step {}: loss {} and gradient norm {grad_norm} are not finite; lower learning_rate or check the pairs",
                    self.step + 1,
                    sums.loss
                ),
            });
        }
        let lr =
            learning_rate(params.schedule, params.peak_learning_rate(), self.step, schedule.total, schedule.warmup);
        let mut tensors: Vec<&mut [f32]> = self
            .adapter
            .modules
            .iter_mut()
            .filter(|m| m.trainable)
            .flat_map(|m| [m.a.as_mut_slice(), m.b.as_mut_slice()])
            .collect();
        self.optimizer.update(&mut tensors, &grads, lr);
        self.step += 1;
        Ok(LogRow {
            step: self.step,
            epoch: self.step as f64 / schedule.steps_per_epoch as f64,
            loss: sums.loss,
            chosen_reward: sums.chosen_reward / pairs as f64,
            rejected_reward: sums.rejected_reward / pairs as f64,
            reward_accuracy: sums.correct as f64 / pairs as f64,
            reward_margin: (sums.chosen_reward - sums.rejected_reward) / pairs as f64,
            grad_norm,
            lr,
            pairs: pairs as u64,
            tokens_per_s: sums.tokens as f64 / started.elapsed().as_secs_f64().max(1e-9),
        })
    }
}

fn adapter_config(params: &TuneParams, bundle: &Bundle) -> AdapterConfig {
    AdapterConfig {
        r: params.lora.rank as usize,
        lora_alpha: params.lora.alpha,
        lora_dropout: params.lora.dropout,
        target_modules: params.lora.target_modules.clone(),
        peft_type: "LORA".into(),
        task_type: "CAUSAL_LM".into(),
        bias: "none".into(),
        base_model_name_or_path: Some(bundle.manifest.name.clone()),
        use_rslora: false,
    }
}

fn trainable_sizes(adapter: &Adapter) -> Vec<usize> {
    adapter.named_tensors(|m| m.trainable).iter().map(|t| t.2.len()).collect()
}

/// The loss settings of micro-batch `micro` of step `step`: the dropout seed
/// is a function of (seed, step, micro-batch) so a resumed run draws the same masks.
fn loss_settings(params: &TuneParams, step: u64, micro: usize) -> LossSettings {
    let id = crate::ids::stable_id(&[&params.seed.to_string(), &step.to_string(), &micro.to_string()]);
    let seed = i64::from_str_radix(&id[..7], 16).expect("hex digits");
    LossSettings {
        beta: params.beta as f32,
        label_smoothing: params.label_smoothing as f32,
        loss: params.loss,
        rpo_alpha: params.rpo_alpha.unwrap_or(0.0) as f32,
        dropout: params.lora.dropout as f32,
        dropout_seed: seed,
    }
}

/// The reference log-probs the graph compares against: sums, or per-token
/// means under IPO (as the graph normalises the policy's).
fn reference_of(example: &Example, params: &TuneParams) -> (f32, f32) {
    let (chosen, rejected) = example.reference;
    match params.loss.length_normalised() {
        false => (chosen as f32, rejected as f32),
        true => (
            (chosen / example.tokens.chosen_tokens().max(1) as f64) as f32,
            (rejected / example.tokens.rejected_tokens().max(1) as f64) as f32,
        ),
    }
}

/// Sums over the micro-batches of one optimizer step.
struct StepSums {
    grads: Vec<Vec<f32>>,
    totals: Totals,
}

/// The step's scalar sums.
#[derive(Default)]
struct Totals {
    loss: f64,
    chosen_reward: f64,
    rejected_reward: f64,
    correct: u64,
    tokens: usize,
}

impl StepSums {
    fn new(adapter: &Adapter) -> StepSums {
        let grads = adapter.named_tensors(|_| true).iter().map(|t| vec![0.0; t.2.len()]).collect();
        StepSums { grads, totals: Totals::default() }
    }

    /// Adds a micro-batch whose share of the step's pairs is `weight`: the
    /// graph's mean loss and gradients are weighted by it, so the step's are
    /// means over all its pairs.
    fn add(&mut self, output: &StepOutput, reference: &[(f32, f32)], weight: f64, beta: f32) {
        let totals = &mut self.totals;
        totals.loss += weight * f64::from(output.loss);
        for (sum, grad) in self.grads.iter_mut().zip(&output.grads) {
            sum.iter_mut().zip(grad).for_each(|(s, g)| *s += weight as f32 * g);
        }
        for ((chosen, rejected), (ref_chosen, ref_rejected)) in
            output.chosen_logps.iter().zip(&output.rejected_logps).zip(reference)
        {
            let chosen_reward = f64::from(beta * (chosen - ref_chosen));
            let rejected_reward = f64::from(beta * (rejected - ref_rejected));
            totals.chosen_reward += chosen_reward;
            totals.rejected_reward += rejected_reward;
            totals.correct += u64::from(chosen_reward > rejected_reward);
        }
        totals.tokens += output.tokens;
    }

    /// The gradients of the trainable tensors, in the optimizer's order.
    fn trainable_grads(&mut self, adapter: &Adapter) -> Vec<Vec<f32>> {
        let trainable = adapter.modules.iter().flat_map(|m| [m.trainable, m.trainable]);
        std::mem::take(&mut self.grads).into_iter().zip(trainable).filter(|(_, t)| *t).map(|(g, _)| g).collect()
    }
}

fn log_batch(rows: &[LogRow]) -> Result<RecordBatch, StageError> {
    let floats = |f: fn(&LogRow) -> f64| -> ArrayRef { Arc::new(Float64Array::from_iter_values(rows.iter().map(f))) };
    let ints = |f: fn(&LogRow) -> u64| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| f(r) as i64)))
    };
    let given: Vec<(&str, ArrayRef)> = vec![
        ("step", ints(|r| r.step)),
        ("epoch", floats(|r| r.epoch)),
        ("loss", floats(|r| r.loss)),
        ("chosen_reward", floats(|r| r.chosen_reward)),
        ("rejected_reward", floats(|r| r.rejected_reward)),
        ("reward_accuracy", floats(|r| r.reward_accuracy)),
        ("reward_margin", floats(|r| r.reward_margin)),
        ("grad_norm", floats(|r| r.grad_norm)),
        ("lr", floats(|r| r.lr)),
        ("pairs", ints(|r| r.pairs)),
        ("tokens_per_s", floats(|r| r.tokens_per_s)),
    ];
    Ok(Table::TrainLog.schema().assemble(given, rows.len())?)
}

/// The optimizer's scalar state, saved next to the tensors of a checkpoint.
#[derive(Debug, Serialize, Deserialize)]
struct CheckpointState {
    step: u64,
    optimizer: AdamW,
    adapter: AdapterConfig,
}

const CHECKPOINT_ADAPTER: &str = "adapter.safetensors";
const CHECKPOINT_OPTIMIZER: &str = "optimizer.safetensors";
const CHECKPOINT_STATE: &str = "state.json";

fn checkpoint_file(step: u64, file: &str) -> String {
    format!("step-{step:08}/{file}")
}

/// Saves the state after `state.step` steps, then commits the log rows since
/// the last checkpoint as chunk `state.step` (the commit point), then drops
/// the previous checkpoint.
async fn checkpoint(sink: &mut TableWriter, state: &mut TrainState, rows: &mut Vec<LogRow>) -> Result<(), StageError> {
    let storage = sink.storage().clone();
    let adapter = safetensors_bytes(&state.adapter.named_tensors(|m| m.trainable))?;
    let moments: Vec<(String, Vec<usize>, &[f32])> = state
        .adapter
        .named_tensors(|m| m.trainable)
        .iter()
        .zip(state.optimizer.m.iter().zip(&state.optimizer.v))
        .flat_map(|((name, shape, _), (m, v))| {
            [(format!("m.{name}"), shape.clone(), m.as_slice()), (format!("v.{name}"), shape.clone(), v.as_slice())]
        })
        .collect();
    let optimizer = safetensors_bytes(&moments)?;
    let scalars =
        CheckpointState { step: state.step, optimizer: state.optimizer.clone(), adapter: state.adapter.config.clone() };
    let json = serde_json::to_vec(&scalars).expect("checkpoint state serializes");
    for (file, bytes) in [(CHECKPOINT_ADAPTER, adapter), (CHECKPOINT_OPTIMIZER, optimizer), (CHECKPOINT_STATE, json)] {
        storage.put(&sink.resume_path(&checkpoint_file(state.step, file)), bytes.into()).await?;
    }
    sink.write(&log_batch(rows)?).await?;
    sink.commit_chunk(state.step).await?;
    rows.clear();
    if let Some(previous) = state.checkpointed.replace(state.step) {
        for file in [CHECKPOINT_ADAPTER, CHECKPOINT_OPTIMIZER, CHECKPOINT_STATE] {
            storage.delete(&sink.resume_path(&checkpoint_file(previous, file))).await?;
        }
    }
    tracing::info!(step = state.step, "tune: checkpoint");
    Ok(())
}

/// The state of the last checkpoint an interrupted attempt committed, if any.
async fn resume(sink: &mut TableWriter, bundle: &Bundle) -> Result<Option<TrainState>, StageError> {
    let Some(step) = sink.resume_chunks().await?.last().copied() else {
        return Ok(None);
    };
    let storage = sink.storage().clone();
    let mut files = BTreeMap::new();
    for file in [CHECKPOINT_ADAPTER, CHECKPOINT_OPTIMIZER, CHECKPOINT_STATE] {
        let path = sink.resume_path(&checkpoint_file(step, file));
        let bytes = storage.get_if_exists(&path).await?.ok_or_else(|| StageError::Input {
            file: storage.url_of(&path),
            problem: format!("the checkpoint of step {step} is incomplete; rerun with --force"),
        })?;
        files.insert(file, bytes);
    }
    let corrupt = |source: Box<dyn std::error::Error + Send + Sync>| StageError::Checkpoint {
        url: storage.url_of(&sink.resume_path(&format!("step-{step:08}"))),
        source,
    };
    let scalars: CheckpointState = serde_json::from_slice(&files[CHECKPOINT_STATE]).map_err(|e| corrupt(e.into()))?;
    let config = serde_json::to_vec(&scalars.adapter).expect("config serializes");
    let adapter = Adapter::from_peft(bundle, &files[CHECKPOINT_ADAPTER], &config).map_err(|e| corrupt(e.into()))?;
    let moments = read_f32_tensors(&files[CHECKPOINT_OPTIMIZER]).map_err(|e| corrupt(e.into()))?;
    let mut optimizer = scalars.optimizer;
    for (name, _, _) in adapter.named_tensors(|m| m.trainable) {
        let moment = |prefix: &str| {
            moments
                .get(&format!("{prefix}.{name}"))
                .map(|t| t.1.clone())
                .ok_or_else(|| corrupt(format!("no {prefix}.{name}").into()))
        };
        optimizer.m.push(moment("m")?);
        optimizer.v.push(moment("v")?);
    }
    tracing::info!(step, "tune: resuming from checkpoint");
    Ok(Some(TrainState { adapter, optimizer, step: scalars.step, checkpointed: Some(step) }))
}

/// Writes the adapter as PEFT files into the version's `adapter/` directory.
async fn write_adapter(sink: &mut TableWriter, adapter: &Adapter, bundle: &Bundle) -> Result<(), StageError> {
    let mut adapter = adapter.clone();
    adapter.config.base_model_name_or_path = Some(bundle.manifest.name.clone());
    let (weights, config) = adapter.to_peft()?;
    sink.put_artifact(&format!("{ADAPTER_DIR}/{ADAPTER_WEIGHTS}"), weights).await?;
    sink.put_artifact(&format!("{ADAPTER_DIR}/{ADAPTER_CONFIG}"), config).await?;
    Ok(())
}
