//! `[models]`: the model bundles by role.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `[models]`: model bundle directories by role (paths relative to the pipeline file, or URLs).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelsSpec {
    /// The policy that generates and is tuned.
    pub policy: Option<String>,
    /// A LoRA adapter (PEFT directory: `adapter_model.safetensors` + `adapter_config.json`,
    /// a path or an object-store URL) applied to the policy wherever it runs: merged into its
    /// weights when the sessions are built. Its checksum enters every key that uses the policy.
    pub policy_adapter: Option<String>,
    /// The reward model that scores responses.
    pub reward: Option<String>,
    /// The reference policy of DPO (defaults to the policy).
    pub reference: Option<String>,
    /// A second policy whose responses are the off-policy source.
    pub off_policy: Option<String>,
    /// The policy bundle that judges open-ended responses pairwise
    /// (`[stages.evaluate.judge] kind = "pairwise"`).
    pub judge: Option<String>,
}
