//! The vocabulary of one preference-tuning step: tokenized pairs and their
//! truncation, the losses TRL names and their settings, and what a step
//! returns. The step itself runs layer by layer ([`super::layerwise`]); the
//! optimizer runs in Rust ([`super::optim`]).

use super::ModelError;
use super::tokenizer::ChatTokenizer;

/// One tokenized pair: the prompt + chosen and prompt + rejected sequences,
/// and where the response starts in each.
#[derive(Debug, Clone, PartialEq)]
pub struct PairTokens {
    /// Prompt + chosen response ids.
    pub chosen: Vec<i64>,
    /// Prompt + rejected response ids.
    pub rejected: Vec<i64>,
    /// Index of the first response token (the same in both: the prompt is shared).
    pub response_start: usize,
}

impl PairTokens {
    /// Response tokens of the chosen sequence.
    pub fn chosen_tokens(&self) -> usize {
        self.chosen.len() - self.response_start
    }

    /// Response tokens of the rejected sequence.
    pub fn rejected_tokens(&self) -> usize {
        self.rejected.len() - self.response_start
    }
}

/// How long a pair's sequences may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncation {
    /// Longest prompt + response, in tokens.
    pub max_length: usize,
    /// Prompt tokens kept when a sequence must be shortened.
    pub max_prompt_length: usize,
}

/// Tokenizes a pair with the chat template and fits it into `limits`: when
/// prompt + the longer response is too long, the prompt loses tokens from the
/// left (its end, where the assistant turn begins, stays) but keeps at least
/// `max_prompt_length`, then the responses lose tokens from the right. Both
/// sequences keep the same prompt tokens. Returns the pair and whether
/// anything was cut.
pub fn encode_pair(
    tokenizer: &ChatTokenizer,
    prompt: &str,
    chosen: &str,
    rejected: &str,
    limits: Truncation,
) -> Result<(PairTokens, bool), ModelError> {
    let (chosen_ids, start) = tokenizer.encode_exchange(prompt, chosen)?;
    let (rejected_ids, _) = tokenizer.encode_exchange(prompt, rejected)?;
    let longest = (chosen_ids.len() - start).max(rejected_ids.len() - start);
    if start + longest <= limits.max_length {
        return Ok((PairTokens { chosen: chosen_ids, rejected: rejected_ids, response_start: start }, false));
    }
    let prompt_keep = start.min(limits.max_prompt_length.max(limits.max_length.saturating_sub(longest)));
    let response_keep = limits.max_length - prompt_keep;
    let cut = |ids: &[i64]| -> Vec<i64> {
        let response_end = ids.len().min(start + response_keep);
        ids[start - prompt_keep..response_end].to_vec()
    };
    let pair = PairTokens { chosen: cut(&chosen_ids), rejected: cut(&rejected_ids), response_start: prompt_keep };
    Ok((pair, true))
}

/// A tuning loss, as TRL names them (`loss_type`), with h = (π_c − π_r) −
/// (ref_c − ref_r) the difference of the policy's and the reference's
/// log-prob margins of a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// −(1 − ε)·log σ(β·h) − ε·log σ(−β·h): DPO, with label smoothing ε (cDPO); the recipe's.
    #[default]
    Sigmoid,
    /// (h − 1/(2β))² on length-normalised log-probs.
    Ipo,
    /// max(0, 1 − β·h) (SLiC).
    Hinge,
    /// (−(1 − ε)·log σ(β·h) + ε·log σ(−β·h)) / (1 − 2ε): unbiased under label noise ε.
    Robust,
    /// The SFT baseline: mean negative log-likelihood of the chosen responses' tokens (the rejected ones
    /// are not trained on).
    Sft,
}

impl Loss {
    /// Whether the loss compares per-token means instead of sums.
    pub fn length_normalised(self) -> bool {
        self == Loss::Ipo
    }
}

/// The loss settings of a step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossSettings {
    /// β.
    pub beta: f32,
    /// Label smoothing ε (sigmoid and robust).
    pub label_smoothing: f32,
    /// The loss.
    pub loss: Loss,
    /// Weight α of an NLL term on the chosen responses' tokens added to a
    /// preference loss (TRL `rpo_alpha`); 0 for none.
    pub rpo_alpha: f32,
    /// Dropout on the adapters' inputs.
    pub dropout: f32,
    /// Seed of this micro-batch's dropout masks.
    pub dropout_seed: i64,
}

/// What one pass returns.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutput {
    /// Mean loss over the micro-batch's pairs.
    pub loss: f32,
    /// Policy log-probs of the chosen sequences (length-normalised under IPO).
    pub chosen_logps: Vec<f32>,
    /// The same for the rejected sequences.
    pub rejected_logps: Vec<f32>,
    /// Gradients of the LoRA tensors, in [`Adapter::named_tensors`] order (all modules).
    pub grads: Vec<Vec<f32>>,
    /// Non-padding tokens processed.
    pub tokens: usize,
}
