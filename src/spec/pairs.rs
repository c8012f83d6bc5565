//! `[stages.pairs]`: the pair rule's parameters (`sql/pairs.sql`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Section, ValueProblem};

/// Which responses form one pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PoolScope {
    /// One pool per (prompt, language).
    #[default]
    InLang,
    /// One pool per source prompt across all its languages.
    AllLang,
}

/// The reward the rejected response should be closest to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RejectedTarget {
    /// mean − 2·std (population std) of the pool: the recipe's rule.
    #[default]
    #[serde(rename = "mean_minus_2std")]
    MeanMinus2std,
    /// First quartile of the pool (linear interpolation, as numpy's default).
    Q1,
    /// The pool's minimum.
    Min,
}

/// `[stages.pairs]`: the pair rule.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PairsParams {
    /// Pool scope.
    #[serde(default)]
    pub pool: PoolScope,
    /// Target of the rejected response.
    #[serde(default)]
    pub rejected: RejectedTarget,
    /// Pairs whose reward gap is below this are dropped (and counted).
    #[serde(default)]
    pub min_margin: f64,
    /// Where the chosen response may come from (the mixed on/off-policy ablation).
    #[serde(default, skip_serializing_if = "SourceFilter::is_any")]
    pub chosen_source: SourceFilter,
    /// Where the rejected response may come from.
    #[serde(default, skip_serializing_if = "SourceFilter::is_any")]
    pub rejected_source: SourceFilter,
    /// In `all_lang` pools, whose language the prompt is taken in: the
    /// `chosen` response's (the recipe's default), the `rejected` one's, or a
    /// `random` one of the pool's, drawn per pool from `seed`. Left out of keys
    /// when `chosen`.
    #[serde(default, skip_serializing_if = "PromptSource::is_chosen")]
    pub prompt_source: PromptSource,
    /// Seed of the `random` prompt draw. Left out of keys when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seed: u64,
}

fn is_zero(seed: &u64) -> bool {
    *seed == 0
}

/// Whose language an `all_lang` pair's prompt is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PromptSource {
    /// The chosen response's (the recipe's default).
    #[default]
    Chosen,
    /// The rejected response's.
    Rejected,
    /// One of the pool's languages, drawn per pool.
    Random,
}

impl PromptSource {
    fn is_chosen(&self) -> bool {
        *self == PromptSource::Chosen
    }

    /// The value `sql/pairs.sql` reads in `pairs_params.prompt_source`.
    pub fn as_str(self) -> &'static str {
        match self {
            PromptSource::Chosen => "chosen",
            PromptSource::Rejected => "rejected",
            PromptSource::Random => "random",
        }
    }
}

/// Which responses of a pool may take a role in its pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SourceFilter {
    /// Every response (the recipe).
    #[default]
    Any,
    /// The policy's own.
    OnPolicy,
    /// Another model's or dataset's.
    OffPolicy,
}

impl SourceFilter {
    fn is_any(&self) -> bool {
        *self == SourceFilter::Any
    }

    /// The value `sql/pairs.sql` compares with the `source` column.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceFilter::Any => "any",
            SourceFilter::OnPolicy => "on_policy",
            SourceFilter::OffPolicy => "off_policy",
        }
    }
}

impl Section for PairsParams {
    fn value_problems(&self, problems: &mut Vec<ValueProblem>) {
        if !self.min_margin.is_finite() || self.min_margin < 0.0 {
            problems.push(("stages.pairs.min_margin".into(), "must be a finite number >= 0".into()));
        }
    }
}
