//! `[stages.ref_logps]`: the reference log-probs and the truncation that
//! the tune stage applies identically.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Section, ValueProblem, default_rows_per_part, default_score_batch_size, positive};
use super::models::ModelsSpec;
use crate::model::batching::BatchLimits;
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
    /// At most this many padded tokens per batch (rows × its longest row),
    /// besides `batch_size`: memory then follows tokens, not the longest row.
    /// A longer sequence runs alone. Unset: rows only. Left out of keys when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch_tokens: Option<u32>,
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
            max_batch_tokens: None,
            rows_per_part: default_rows_per_part(),
        }
    }
}

impl RefLogpsParams {
    /// The batches of the reference model's log-prob runs.
    pub fn batch_limits(&self) -> BatchLimits {
        BatchLimits { max_rows: self.batch_size as usize, max_tokens: self.max_batch_tokens.map(|t| t as usize) }
    }

    /// The truncation these settings describe, shared with the tune stage.
    pub fn truncation(&self) -> Truncation {
        Truncation { max_length: self.max_length as usize, max_prompt_length: self.max_prompt_length as usize }
    }
}

impl Section for RefLogpsParams {
    fn value_problems(&self, problems: &mut Vec<ValueProblem>) {
        positive("stages.ref_logps.batch_size", self.batch_size, problems);
        if let Some(tokens) = self.max_batch_tokens {
            positive("stages.ref_logps.max_batch_tokens", tokens, problems);
        }
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
