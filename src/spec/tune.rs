//! `[stages.tune]`: offline DPO with LoRA; the defaults are the recipe's.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Section, ValueProblem, positive};
use super::models::ModelsSpec;
use crate::model::dpo::Loss;
use crate::model::optim::LrSchedule;

/// `[stages.tune.lora]`: the adapter.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoraParams {
    /// Rank r.
    #[serde(default = "default_lora_rank")]
    pub rank: u32,
    /// α; the update is scaled by α / r.
    #[serde(default = "default_lora_alpha")]
    pub alpha: f64,
    /// Dropout on the adapter's input.
    #[serde(default = "default_lora_dropout")]
    pub dropout: f64,
    /// Modules that get an adapter (a subset of the bundle's `[lora].target_modules`).
    #[serde(default = "default_lora_targets")]
    pub target_modules: Vec<String>,
}

fn default_lora_rank() -> u32 {
    16
}

fn default_lora_alpha() -> f64 {
    32.0
}

fn default_lora_dropout() -> f64 {
    0.05
}

fn default_lora_targets() -> Vec<String> {
    ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"].map(String::from).to_vec()
}

impl Default for LoraParams {
    fn default() -> Self {
        LoraParams {
            rank: default_lora_rank(),
            alpha: default_lora_alpha(),
            dropout: default_lora_dropout(),
            target_modules: default_lora_targets(),
        }
    }
}

/// `[stages.tune]`: offline DPO with LoRA. Defaults are the recipe's.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TuneParams {
    /// Loss: `sigmoid` (the recipe's), `ipo`, `hinge`, `robust`, or `sft`
    /// (the SFT baseline: the chosen responses only, default learning rate
    /// 2e-4 instead of 5e-6).
    #[serde(default)]
    pub loss: Loss,
    /// β of DPO.
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// Label smoothing ε of the sigmoid and robust losses (conservative DPO); 0 = plain DPO.
    #[serde(default)]
    pub label_smoothing: f64,
    /// Weight of an NLL term on the chosen responses added to the preference
    /// loss (TRL's `rpo_alpha`); unset: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_alpha: Option<f64>,
    /// The adapter.
    #[serde(default)]
    pub lora: LoraParams,
    /// Peak learning rate (default: 5e-6, the recipe's; 2e-4 for `loss = "sft"`).
    #[serde(default)]
    pub learning_rate: Option<f64>,
    /// Schedule after warm-up.
    #[serde(default)]
    pub schedule: LrSchedule,
    /// Share of the optimizer steps spent warming up linearly from 0.
    #[serde(default = "default_warmup_ratio")]
    pub warmup_ratio: f64,
    /// AdamW's decoupled weight decay.
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    /// Gradients are clipped to this global L2 norm (0: no clipping).
    #[serde(default = "default_max_grad_norm")]
    pub max_grad_norm: f64,
    /// Passes over the pairs.
    #[serde(default = "default_epochs")]
    pub epochs: u32,
    /// Pairs per forward/backward pass.
    #[serde(default = "default_micro_batch")]
    pub micro_batch: u32,
    /// Micro-batches per optimizer step: the effective batch is `micro_batch × grad_accumulation`.
    #[serde(default = "default_grad_accumulation")]
    pub grad_accumulation: u32,
    /// Seed of the adapter's initialisation, the shuffling and the dropout masks.
    #[serde(default)]
    pub seed: u64,
    /// Optimizer steps between checkpoints (a killed run resumes from the last one).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u32,
}

fn default_beta() -> f64 {
    0.1
}

impl TuneParams {
    /// The peak learning rate: the one set, else the loss's default (the
    /// recipe's 5e-6 for DPO, the paper's 2e-4 for its SFT baseline).
    pub fn peak_learning_rate(&self) -> f64 {
        self.learning_rate.unwrap_or(if self.loss == Loss::Sft { 2e-4 } else { 5e-6 })
    }

    /// The parameters with the default learning rate filled in: what enters
    /// the stage's key (a key never depends on which default applied).
    pub fn resolved(&self) -> TuneParams {
        TuneParams { learning_rate: Some(self.peak_learning_rate()), ..self.clone() }
    }
}

fn default_warmup_ratio() -> f64 {
    0.05
}

fn default_weight_decay() -> f64 {
    0.01
}

fn default_max_grad_norm() -> f64 {
    1.0
}

fn default_epochs() -> u32 {
    1
}

fn default_micro_batch() -> u32 {
    1
}

fn default_grad_accumulation() -> u32 {
    8
}

fn default_checkpoint_every() -> u32 {
    50
}

impl Section for TuneParams {
    fn value_problems(&self, problems: &mut Vec<ValueProblem>) {
        let mut require = |key: &str, ok: bool, message: &str| {
            if !ok {
                problems.push((format!("stages.tune.{key}"), message.into()));
            }
        };
        require("beta", self.beta.is_finite() && self.beta > 0.0, "must be a finite number > 0");
        require("label_smoothing", (0.0..0.5).contains(&self.label_smoothing), "must be in [0, 0.5)");
        let lr = self.peak_learning_rate();
        require("learning_rate", lr.is_finite() && lr > 0.0, "must be > 0");
        let rpo = self.rpo_alpha.unwrap_or(0.0);
        require("rpo_alpha", rpo.is_finite() && rpo >= 0.0, "must be >= 0");
        require("rpo_alpha", rpo == 0.0 || self.loss != Loss::Sft, "adds an NLL term to a preference loss, not to sft");
        require("warmup_ratio", (0.0..=1.0).contains(&self.warmup_ratio), "must be in [0, 1]");
        require("weight_decay", self.weight_decay.is_finite() && self.weight_decay >= 0.0, "must be >= 0");
        require("max_grad_norm", self.max_grad_norm.is_finite() && self.max_grad_norm >= 0.0, "must be >= 0");
        require("lora.alpha", self.lora.alpha.is_finite() && self.lora.alpha > 0.0, "must be > 0");
        require("lora.dropout", (0.0..1.0).contains(&self.lora.dropout), "must be in [0, 1)");
        require("lora.target_modules", !self.lora.target_modules.is_empty(), "name at least one module");
        for (key, value) in [
            ("lora.rank", self.lora.rank),
            ("epochs", self.epochs),
            ("micro_batch", self.micro_batch),
            ("grad_accumulation", self.grad_accumulation),
            ("checkpoint_every", self.checkpoint_every),
        ] {
            positive(&format!("stages.tune.{key}"), value, problems);
        }
    }

    fn model_problems(&self, models: &ModelsSpec, problems: &mut Vec<ValueProblem>) {
        if models.policy.is_none() {
            problems.push(("stages.tune".into(), "tunes the policy: set `policy` in [models]".into()));
        }
    }
}
