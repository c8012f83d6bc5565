//! The roles a model bundle plays in a pipeline (`[models]` keys).

use serde::{Deserialize, Serialize};

/// Which `[models]` entry a stage runs. The variants are in alphabetical
/// order of their names, so maps keyed by role serialize as maps keyed by
/// the names did (content keys depend on that order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelRole {
    /// The policy that judges open-ended answers pairwise.
    Judge,
    /// A second policy whose responses are the off-policy source.
    OffPolicy,
    /// The policy that generates and is tuned.
    Policy,
    /// The reference policy of DPO.
    Reference,
    /// The reward model.
    Reward,
}

impl ModelRole {
    /// The role's key in `[models]`.
    pub fn name(self) -> &'static str {
        match self {
            ModelRole::Judge => "judge",
            ModelRole::OffPolicy => "off_policy",
            ModelRole::Policy => "policy",
            ModelRole::Reference => "reference",
            ModelRole::Reward => "reward",
        }
    }
}

impl std::fmt::Display for ModelRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
