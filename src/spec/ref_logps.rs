//! `[stages.ref_logps]`: the reference log-probs and the truncation that
//! the tune stage applies identically.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Section, ValueProblem, default_rows_per_part, default_score_batch_size, positive};
use super::models::ModelsSpec;
use crate::model::dpo::Truncation;

/// `[stages.ref_logps]`: the reference model's log-probs of every pair, and
/// the truncation that the tune stage applies identically.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RefLogpsParams {
    /// Longest sequence (prompt + response, in tokens). Longer pairs lose prompt tokens from
    /// the left first (down to `max_prompt_length`), then response tokens from the right.
    #[serde(default = "default_max_length")]
    pub max_length: u32,
    /// Prompt tokens kept when a sequence must be shortened.
    #[serde(default = "default_max_prompt_length")]
    pub max_prompt_length: u32,
    /// Sequences per batch (batches are formed from sequences of similar length).
    #[serde(default = "default_score_batch_size")]
    pub batch_size: u32,
    /// Pairs per committed part: a crashed run resumes after the last committed part.
    #[serde(default = "default_rows_per_part")]
    pub rows_per_part: u32,
}

fn default_max_length() -> u32 {
    1024
}

fn default_max_prompt_length() -> u32 {
    512
}

impl Default for RefLogpsParams {
    fn default() -> Self {
        RefLogpsParams {
            max_length: default_max_length(),
            max_prompt_length: default_max_prompt_length(),
            batch_size: default_score_batch_size(),
            rows_per_part: default_rows_per_part(),
        }
    }
}

impl RefLogpsParams {
    /// The truncation these settings describe, shared with the tune stage.
    pub fn truncation(&self) -> Truncation {
        Truncation { max_length: self.max_length as usize, max_prompt_length: self.max_prompt_length as usize }
    }
}

impl Section for RefLogpsParams {
    fn value_problems(&self, problems: &mut Vec<ValueProblem>) {
        positive("stages.ref_logps.batch_size", self.batch_size, problems);
        positive("stages.ref_logps.rows_per_part", self.rows_per_part, problems);
        positive("stages.ref_logps.max_prompt_length", self.max_prompt_length, problems);
        if self.max_length <= self.max_prompt_length {
            problems.push((
                "stages.ref_logps.max_length".into(),
                format!("must exceed max_prompt_length ({})", self.max_prompt_length),
            ));
        }
    }

    fn model_problems(&self, models: &ModelsSpec, problems: &mut Vec<ValueProblem>) {
        if models.reference.is_none() && models.policy.is_none() {
            problems.push((
                "stages.ref_logps".into(),
                "runs the reference model: set `reference` (or `policy`) in [models]".into(),
            ));
        }
    }
}
