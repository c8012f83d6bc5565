//! The memory plan (`croco plan`): each model stage's predicted peak
//! memory, from its bundle's manifest and the stage's batch settings
//! ([`crate::model::memory`]), and the check `croco validate` makes against
//! `[run] device_memory`, naming the key to lower.

use std::collections::BTreeMap;

use crate::model::bundle::BundleManifest;
use crate::model::layerwise::HEAD_CHUNK;
use crate::model::memory::{Footprint, ModelShape, available_host_memory, human, parse_size};
use crate::model::precision::Precision;
use crate::model::runtime::{Device, Target};
use crate::spec::common::ValueProblem;
use crate::spec::{PipelineSpec, StageName};
use crate::vocab::roles::ModelRole;

/// The manifests of the `[models]` bundles that could be read, by role.
pub type Manifests = BTreeMap<ModelRole, BundleManifest>;

/// One model stage's part of the plan.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StagePlan {
    /// The stage.
    pub stage: StageName,
    /// What it runs: `generation`, `scoring`, `log-probs`, `training`, `answers`, `choice log-likelihoods`.
    pub work: &'static str,
    /// The bundle's role.
    pub role: ModelRole,
    /// The settings the figures follow, in words.
    pub settings: String,
    /// Tokens one call processes at most (a decode step's rows, a batch's padded tokens).
    pub tokens_per_call: u64,
    /// Predicted peak device memory (host memory on the CPU), in bytes.
    pub weights: u64,
    /// The generation KV cache.
    pub kv_cache: u64,
    /// The largest call's activations.
    pub activations: u64,
    /// Allocator slack.
    pub workspace: u64,
    /// Their sum: the device's peak (the host's on the CPU).
    pub total: u64,
    /// Predicted peak host memory of the process running the stage.
    pub host: u64,
    /// The key that bounds the batch (what to lower when it does not fit).
    pub key: String,
}

impl StagePlan {
    fn new(
        (stage, work, role): (StageName, &'static str, ModelRole),
        settings: String,
        tokens_per_call: u64,
        (footprint, host): (Footprint, u64),
        key: &str,
    ) -> StagePlan {
        StagePlan {
            stage,
            work,
            role,
            settings,
            tokens_per_call,
            weights: footprint.weights,
            kv_cache: footprint.kv_cache,
            activations: footprint.activations,
            workspace: footprint.workspace,
            total: footprint.total(),
            host,
            key: key.to_string(),
        }
    }
}

/// Tokens a reward model's chat template and tokenizer may add to a generated exchange.
const TEMPLATE_MARGIN: u64 = 32;

/// The plan of every model stage whose bundle manifest is known, in the
/// precision the configured device runs (CUDA's unless `[run] device =
/// "cpu"`: the plan is about device memory).
pub fn plan(spec: &PipelineSpec, manifests: &Manifests) -> Vec<StagePlan> {
    let target = if spec.run.device == Device::Cpu { Target::Cpu } else { Target::Cuda(spec.run.device_id) };
    let on_cpu = target == Target::Cpu;
    // The device footprint and the host's: rows of logits that come back to the host per call.
    let both = |model: &ModelShape, footprint: Footprint, rows: u64| (footprint, model.host(&footprint, on_cpu, rows));
    let shape = |role: ModelRole| manifests.get(&role).map(|m| (ModelShape::of(m, precision(m, target)), context(m)));
    let mut plans = Vec::new();
    let stages = &spec.stages;
    // The longest exchange generate can write (prompt budget + new tokens), when it samples.
    let mut generated_length = None;
    if let Some(generate) = stages.generate.as_ref().filter(|g| g.import.is_none())
        && let Some((model, context)) = shape(generate.sampling_role())
    {
        let limits = generate.slot_limits();
        let length = (generate.prompt_budget(context) + generate.max_new_tokens as usize).min(context) as u64;
        generated_length = Some(length);
        let (slots, chunk) = (limits.slots as u64, limits.prefill_chunk_tokens as u64);
        let call = limits.prefill_call_tokens() as u64;
        plans.push(StagePlan::new(
            (StageName::Generate, "generation", generate.sampling_role()),
            format!("{slots} slots x {length} tokens, prefill calls of {chunk} tokens"),
            slots.max(call),
            both(&model, model.generation(slots, length, call, on_cpu), 1),
            "stages.generate.slots",
        ));
    }
    if let Some(score) = stages.score.as_ref().filter(|s| s.import.is_none())
        && let Some((model, context)) = shape(ModelRole::Reward)
    {
        // A scored exchange is a generated one in the reward model's template (a few tokens more, another
        // tokenizer): up to its context, or generate's longest plus that margin when generate samples.
        let width = generated_length.map_or(context as u64, |l| (l + TEMPLATE_MARGIN).min(context as u64));
        let batches = Batches { rows: score.batch_size, max_tokens: score.max_batch_tokens, width };
        let what = (StageName::Score, "scoring", ModelRole::Reward);
        plans.push(batches.forward(what, &model, false, on_cpu, "stages.score.max_batch_tokens"));
    }
    let reference = if spec.models.reference.is_some() { ModelRole::Reference } else { ModelRole::Policy };
    if let Some(ref_logps) = &stages.ref_logps
        && let Some((model, _)) = shape(reference)
    {
        let width = u64::from(ref_logps.max_length);
        let batches = Batches { rows: ref_logps.batch_size, max_tokens: ref_logps.max_batch_tokens, width };
        let what = (StageName::RefLogps, "log-probs", reference);
        plans.push(batches.forward(what, &model, true, on_cpu, "stages.ref_logps.max_batch_tokens"));
        if let Some(tune) = &stages.tune
            && let Some((policy, _)) = shape(ModelRole::Policy)
        {
            // A micro-batch is its pairs' chosen and rejected sequences.
            let rows = 2 * u64::from(tune.micro_batch);
            // As the stage resolves `auto`: against device_memory, else the CPU's available memory.
            let bound = spec.run.device_memory.as_deref().and_then(parse_size);
            let bound = bound.or_else(|| if on_cpu { available_host_memory() } else { None });
            let recompute = spec.run.recompute.resolve(&policy, (rows, width), HEAD_CHUNK as u64, bound);
            plans.push(StagePlan::new(
                (StageName::Tune, "training", ModelRole::Policy),
                format!(
                    "{rows} sequences (micro_batch {} pairs) of up to {width} tokens, {} training graphs, {recompute} \
                     recompute",
                    tune.micro_batch, policy.training_precision
                ),
                rows * width,
                both(&policy, policy.training(rows, width, HEAD_CHUNK as u64, recompute), 0),
                // One pair is the least a step takes: then only shorter sequences help.
                if tune.micro_batch > 1 { "stages.tune.micro_batch" } else { "stages.ref_logps.max_length" },
            ));
        }
    }
    if let Some(evaluate) = &stages.evaluate
        && let Some((policy, context)) = shape(ModelRole::Policy)
    {
        let batches =
            Batches { rows: evaluate.batch_size, max_tokens: evaluate.max_batch_tokens, width: context as u64 };
        let what = (StageName::Evaluate, "choice log-likelihoods", ModelRole::Policy);
        plans.push(batches.forward(what, &policy, true, on_cpu, "stages.evaluate.max_batch_tokens"));
        if let Some(judge) = &evaluate.judge {
            let slots = u64::from(judge.batch_size);
            let chunk = crate::model::continuous::SlotLimits::DEFAULT_PREFILL_CHUNK_TOKENS as u64;
            plans.push(StagePlan::new(
                (StageName::Evaluate, "answers", ModelRole::Policy),
                format!("{slots} slots x {context} tokens"),
                slots.max(chunk),
                both(&policy, policy.generation(slots, context as u64, chunk, on_cpu), 1),
                "stages.evaluate.judge.batch_size",
            ));
        }
    }
    plans
}

/// A stage's length-sorted batches: `batch_size` rows, at most
/// `max_batch_tokens` padded tokens (unset: rows × the longest row), rows
/// up to `width` tokens.
struct Batches {
    rows: u32,
    max_tokens: Option<u32>,
    width: u64,
}

impl Batches {
    /// The plan of one forward pass over such a batch (with `logits`: the logprob graph).
    fn forward(
        &self,
        what: (StageName, &'static str, ModelRole),
        model: &ModelShape,
        logits: bool,
        on_cpu: bool,
        key: &str,
    ) -> StagePlan {
        let (rows, width) = (u64::from(self.rows), self.width);
        let tokens = self.max_tokens.map_or(rows * width, u64::from);
        let settings = format!("{rows} rows, {tokens} padded tokens per batch, rows up to {width} tokens");
        let footprint = model.forward(rows, tokens, width, logits);
        StagePlan::new(what, settings, tokens, (footprint, model.host(&footprint, on_cpu, 0)), key)
    }
}

/// The precision `target` runs the bundle's graphs in (its decode or score
/// graph's variant; float32 when the manifest has neither).
fn precision(manifest: &BundleManifest, target: Target) -> Precision {
    ["decode", "score"]
        .iter()
        .find_map(|name| manifest.graphs.get(*name)?.variant_for(target))
        .map_or(Precision::Float32, |(precision, _)| precision)
}

fn context(manifest: &BundleManifest) -> usize {
    manifest.architecture.max_position_embeddings
}

/// A problem at the bounding key of every stage whose plan exceeds `device_memory`.
pub fn memory_problems(plans: &[StagePlan], device_memory: u64) -> Vec<ValueProblem> {
    plans
        .iter()
        .filter(|p| p.total > device_memory)
        .map(|p| {
            (
                p.key.clone(),
                format!(
                    "the {} of `{}` needs ~{} ({}: weights {}, KV cache {}, activations {}) but [run] device_memory \
                     is {}; lower it (`croco plan` shows the parts)",
                    p.work,
                    p.stage.name(),
                    human(p.total),
                    p.settings,
                    human(p.weights),
                    human(p.kv_cache),
                    human(p.activations + p.workspace),
                    human(device_memory)
                ),
            )
        })
        .collect()
}
