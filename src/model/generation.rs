//! What generation produces and what it is asked for: shared by the policy
//! and the continuous-batching scheduler below it.

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// A stop token was generated.
    Stop,
    /// The token limit was reached.
    Length,
}

impl Finish {
    /// The value of the `finish_reason` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "eos",
            Finish::Length => "length",
        }
    }
}

/// One generated sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// Generated ids, the stop token excluded.
    pub tokens: Vec<i64>,
    /// The stop token, when one ended the sequence.
    pub stop_token: Option<i64>,
    /// Why it ended.
    pub finish: Finish,
    /// Summed log-prob of the drawn tokens (stop token included) under the
    /// distribution they were drawn from ([`super::sampling::Sampled`]).
    pub logprob: f64,
}

impl Generated {
    /// No tokens: what a zero token limit produces.
    pub fn empty() -> Generated {
        Generated { tokens: vec![], stop_token: None, finish: Finish::Length, logprob: 0.0 }
    }
}

/// What to generate for one prompt: its ids and one RNG seed per sample.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    /// Prompt ids (chat template applied).
    pub prompt: Vec<i64>,
    /// One seed per sample; their number is K.
    pub seeds: Vec<u64>,
}

/// What generation cost, summed over [`Policy::generate`] calls: a row whose
/// sequence ended still takes its slot (fed pad) until the batch is rebuilt,
/// so `useful_slot_steps / slot_steps` is the fraction of the work that
/// produced a token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepCounts {
    /// Rows × steps: every row of a batch at every sampled position (the
    /// first from the prefill, then one per decode call).
    pub slot_steps: u64,
    /// The row-steps that produced a token kept in a response, or its stop token.
    pub useful_slot_steps: u64,
    /// Prompt tokens prefilled (once per prompt, whatever its sample count).
    pub prefill_tokens: u64,
}
