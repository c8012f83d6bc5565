//! `[stages.score]`: the reward model, or imported rewards.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    FileFormat, Section, ValueProblem, check_format, default_rows_per_part, default_score_batch_size, positive,
};
use super::models::ModelsSpec;

/// `[stages.score]`: reward scoring, or an import of existing rewards.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScoreParams {
    /// Import rewards from a file instead of running the reward model.
    #[serde(default)]
    pub import: Option<ScoresImport>,
    /// Sequences per batch (batches are formed from sequences of similar length).
    #[serde(default = "default_score_batch_size")]
    pub batch_size: u32,
    /// At most this many padded tokens per batch (rows × its longest row),
    /// besides `batch_size`: memory then follows tokens, not the longest row.
    /// A longer sequence is scored alone. Unset: rows only. Left out of keys
    /// when unset (it changes batching, never a reward beyond float rounding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch_tokens: Option<u32>,
    /// Generations per committed part: a crashed run resumes after the last committed part.
    #[serde(default = "default_rows_per_part")]
    pub rows_per_part: u32,
    /// A (prompt, response) longer than the reward model's context
    /// (`max_position_embeddings`): `skip` (the recipe's: no reward, counted) or
    /// `truncate` (the response cut to fit). Left out of keys when `skip`.
    #[serde(default, skip_serializing_if = "TooLong::is_skip")]
    pub too_long: TooLong,
}

/// What the score stage does with an exchange longer than the reward model's context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TooLong {
    /// No reward (null): the pairs never use it. The recipe's rule.
    #[default]
    Skip,
    /// Cut the response's tokens from the right until the exchange fits.
    Truncate,
}

impl TooLong {
    fn is_skip(&self) -> bool {
        *self == TooLong::Skip
    }
}

/// `[stages.score.import]`: rewards computed elsewhere, matched to generations
/// by (prompt_id, sample_idx).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScoresImport {
    /// Input file: a path relative to the pipeline file, or an object-store URL.
    pub path: String,
    /// Input format; inferred from the extension when absent.
    #[serde(default)]
    pub format: Option<FileFormat>,
    /// Which input columns hold the fields.
    #[serde(default)]
    pub columns: ScoreColumns,
    /// Identity recorded in `reward_model` (default: `import:` + the file name).
    #[serde(default)]
    pub label: Option<String>,
}

/// Column mapping of a scores import.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ScoreColumns {
    /// Column holding the prompt id.
    pub prompt_id: String,
    /// Column holding the sample index.
    pub sample_idx: String,
    /// Column holding the reward.
    pub reward: String,
}

impl Default for ScoreColumns {
    fn default() -> Self {
        ScoreColumns { prompt_id: "prompt_id".into(), sample_idx: "sample_idx".into(), reward: "reward".into() }
    }
}

impl Section for ScoreParams {
    fn value_problems(&self, problems: &mut Vec<ValueProblem>) {
        if let Some(import) = &self.import {
            check_format("stages.score.import", &import.path, import.format, problems);
        }
        positive("stages.score.batch_size", self.batch_size, problems);
        if let Some(tokens) = self.max_batch_tokens {
            positive("stages.score.max_batch_tokens", tokens, problems);
        }
        positive("stages.score.rows_per_part", self.rows_per_part, problems);
    }

    fn model_problems(&self, models: &ModelsSpec, problems: &mut Vec<ValueProblem>) {
        if self.import.is_none() && models.reward.is_none() {
            problems.push((
                "stages.score".into(),
                "runs the reward model: set `reward` in [models] (or import rewards)".into(),
            ));
        }
    }
}
