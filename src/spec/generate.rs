//! `[stages.generate]`: sampling the policy, or importing responses.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    FileFormat, ModelContexts, Section, SplitFilter, ValueProblem, check_format, check_instruction,
    check_room_for_a_prompt, positive,
};
use super::models::ModelsSpec;
use crate::model::continuous::SlotLimits;
use crate::vocab::roles::ModelRole;

/// Where a set of responses came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResponseSource {
    /// Sampled from the policy being tuned.
    #[default]
    OnPolicy,
    /// From another model or dataset.
    OffPolicy,
}

impl ResponseSource {
    /// The value stored in the `source` column.
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseSource::OnPolicy => "on_policy",
            ResponseSource::OffPolicy => "off_policy",
        }
    }
}

/// One of `count` disjoint slices of the prompts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PromptSlice {
    /// 0-based index, below `count`.
    pub index: u32,
    /// Number of slices.
    pub count: u32,
}

impl PromptSlice {
    /// Whether `prompt_id` falls in this slice. The hash differs from the
    /// shards' so a round's slice spreads evenly over shards.
    pub fn contains(&self, prompt_id: &str) -> bool {
        let u = crate::ids::unit_interval(7, &format!("round-slice:{prompt_id}"));
        (u * f64::from(self.count)) as u32 == self.index
    }
}

/// Which bundle the generate stage samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SamplingModel {
    /// `models.policy` (with its adapter): on-policy responses.
    #[default]
    Policy,
    /// `models.off_policy`: another model's responses, `source = 'off_policy'`.
    OffPolicy,
}

impl SamplingModel {
    fn is_policy(&self) -> bool {
        *self == SamplingModel::Policy
    }
}

/// `[stages.generate]`: sampling parameters, or an import of existing responses.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateParams {
    /// Import responses from a file instead of sampling the policy.
    #[serde(default)]
    pub import: Option<GenerationsImport>,
    /// Answer only this slice of the prompts (by a hash of `prompt_id`); the
    /// online rounds set it, round r answering slice r of R.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_slice: Option<PromptSlice>,
    /// Responses imported in addition to the sampled (or imported) ones, e.g.
    /// off-policy responses beside the policy's own for a mixed-pairs ablation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub also_import: Option<GenerationsImport>,
    /// Which bundle samples: `policy` (on-policy, the default) or `off_policy`
    /// (`models.off_policy`). Left out of keys when it is the default, so
    /// existing versions stay current.
    #[serde(default, skip_serializing_if = "SamplingModel::is_policy")]
    pub model: SamplingModel,
    /// Appended to every prompt before the chat template, `{language}` replaced by the prompt
    /// language's English name; the recipe's is " Please respond in {language} and nothing else."
    /// (mind the leading space). Unset (the default): prompts as they are. Left out of keys when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instruction: Option<String>,
    /// Responses per prompt (the recipe: 64).
    #[serde(default = "default_samples")]
    pub samples: u32,
    /// Sampling temperature (the recipe: 1.0).
    #[serde(default = "one")]
    pub temperature: f64,
    /// Nucleus mass (the recipe: 1.0).
    #[serde(default = "one")]
    pub top_p: f64,
    /// Top-k cut-off (the recipe: none).
    #[serde(default)]
    pub top_k: Option<u32>,
    /// New-token limit (the recipe: 4096).
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: u32,
    /// Longest prompt answered, in tokens (chat template and instruction
    /// included); a longer one is skipped and counted (`skipped_too_long`),
    /// never truncated. Unset: the sampled bundle's context
    /// (`max_position_embeddings`) less `max_new_tokens`. Left out of keys when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prompt_tokens: Option<u32>,
    /// Base seed; each (prompt, sample) derives its own.
    #[serde(default)]
    pub seed: u64,
    /// Prompts prefilled together, at most; with `slots` unset, also how
    /// many prompts' samples are in flight (`slots = batch_size × samples`).
    #[serde(default = "default_batch_size")]
    pub batch_size: u32,
    /// Sequences decoded together (continuous batching: a slot whose
    /// sample ends is refilled at once with the next one). Unset:
    /// `batch_size × samples`. The rows do not depend on it. Left out of keys when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<u32>,
    /// Padded prompt tokens per prefill call; a longer prompt is prefilled
    /// in chunks of this size, one chunk between two decode steps. Unset:
    /// 2048. The rows do not depend on it. Left out of keys when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill_chunk_tokens: Option<u32>,
    /// Which prompts to answer: the `train` split (default), `eval`, or `all`.
    #[serde(default)]
    pub split: SplitFilter,
    /// Prompts per committed part: a crashed run resumes after the last committed part.
    #[serde(default = "default_prompts_per_part")]
    pub prompts_per_part: u32,
}

fn default_prompts_per_part() -> u32 {
    64
}

fn default_samples() -> u32 {
    64
}

fn one() -> f64 {
    1.0
}

fn default_max_new_tokens() -> u32 {
    4096
}

fn default_batch_size() -> u32 {
    8
}

/// `[stages.generate.import]`: responses made elsewhere.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerationsImport {
    /// Input file: a path relative to the pipeline file, or an object-store URL.
    pub path: String,
    /// Input format; inferred from the extension when absent.
    #[serde(default)]
    pub format: Option<FileFormat>,
    /// Which input columns hold the fields.
    #[serde(default)]
    pub columns: GenerationColumns,
    /// Whether these responses count as the policy's own.
    #[serde(default)]
    pub source: ResponseSource,
    /// Identity recorded in `policy_id` (default: `import:` + the file name).
    #[serde(default)]
    pub label: Option<String>,
}

/// Column mapping of a generations import.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct GenerationColumns {
    /// Column holding the prompt id (as computed by the prompts stage).
    pub prompt_id: String,
    /// Column holding the response text.
    pub text: String,
    /// Column holding the sample index.
    pub sample_idx: String,
}

impl Default for GenerationColumns {
    fn default() -> Self {
        GenerationColumns { prompt_id: "prompt_id".into(), text: "text".into(), sample_idx: "sample_idx".into() }
    }
}

impl GenerateParams {
    /// The bundle role that samples.
    pub fn sampling_role(&self) -> ModelRole {
        match self.model {
            SamplingModel::Policy => ModelRole::Policy,
            SamplingModel::OffPolicy => ModelRole::OffPolicy,
        }
    }

    /// How many sequences decode and how many prompts prefill at once.
    pub fn slot_limits(&self) -> SlotLimits {
        let mut limits = SlotLimits::for_prompts(self.batch_size as usize, self.samples as usize);
        if let Some(slots) = self.slots {
            limits.slots = slots as usize;
        }
        if let Some(tokens) = self.prefill_chunk_tokens {
            limits.prefill_chunk_tokens = tokens as usize;
        }
        limits
    }

    /// The longest prompt answered, in tokens, by a bundle of `context` positions.
    pub fn prompt_budget(&self, context: usize) -> usize {
        let room = context.saturating_sub(self.max_new_tokens as usize);
        self.max_prompt_tokens.map_or(room, |budget| budget as usize)
    }
}

impl Section for GenerateParams {
    fn context_problems(&self, contexts: &ModelContexts, problems: &mut Vec<ValueProblem>) {
        if self.import.is_some() {
            return;
        }
        let role = self.sampling_role();
        let Some(budget) = self.max_prompt_tokens else {
            check_room_for_a_prompt("stages.generate.max_new_tokens", self.max_new_tokens, role, contexts, problems);
            return;
        };
        if let Some(&context) = contexts.get(&role)
            && budget as usize + self.max_new_tokens as usize > context
        {
            problems.push((
                "stages.generate.max_prompt_tokens".into(),
                format!(
                    "{budget} prompt tokens + max_new_tokens {} exceed the `{role}` bundle's context of {context} \
                     positions (architecture.max_position_embeddings)",
                    self.max_new_tokens
                ),
            ));
        }
    }

    fn value_problems(&self, problems: &mut Vec<ValueProblem>) {
        if let Some(budget) = self.max_prompt_tokens {
            positive("stages.generate.max_prompt_tokens", budget, problems);
        }
        if let Some(import) = &self.import {
            check_format("stages.generate.import", &import.path, import.format, problems);
        }
        if let Some(import) = &self.also_import {
            check_format("stages.generate.also_import", &import.path, import.format, problems);
        }
        if let Some(slice) = self.prompt_slice
            && slice.index >= slice.count
        {
            problems.push(("stages.generate.prompt_slice".into(), "index must be below count".into()));
        }
        check_instruction("stages.generate.instruction", self.instruction.as_deref(), problems);
        positive("stages.generate.samples", self.samples, problems);
        positive("stages.generate.max_new_tokens", self.max_new_tokens, problems);
        positive("stages.generate.batch_size", self.batch_size, problems);
        positive("stages.generate.prompts_per_part", self.prompts_per_part, problems);
        if let Some(slots) = self.slots {
            positive("stages.generate.slots", slots, problems);
        }
        if let Some(tokens) = self.prefill_chunk_tokens {
            positive("stages.generate.prefill_chunk_tokens", tokens, problems);
        }
        if let Some(top_k) = self.top_k {
            positive("stages.generate.top_k", top_k, problems);
        }
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            problems.push(("stages.generate.temperature".into(), "must be a finite number >= 0 (0 = greedy)".into()));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            problems.push(("stages.generate.top_p".into(), "must be in (0, 1]".into()));
        }
    }

    fn model_problems(&self, models: &ModelsSpec, problems: &mut Vec<ValueProblem>) {
        if self.import.is_some() {
            return;
        }
        if self.model == SamplingModel::OffPolicy && models.off_policy.is_none() {
            problems.push((
                "stages.generate.model".into(),
                "`off_policy` samples another model: set `off_policy` in [models]".into(),
            ));
        }
        if self.model == SamplingModel::Policy && models.policy.is_none() {
            problems.push((
                "stages.generate".into(),
                "samples the policy: set `policy` in [models] (or import responses)".into(),
            ));
        }
    }
}
