//! Names the evaluation's tables share: the two sides of every comparison,
//! the open-ended task, and the pooled language.

/// The task name of the judged open-ended comparison in `eval_items` and
/// `eval_results` (choice tasks carry their own names).
pub const OPEN_ENDED: &str = "open_ended";

/// The task name of the structured verdict in `eval_results`: the mean over
/// the choice tasks (its `accuracy_delta` decides whether accuracy held).
pub const STRUCTURED: &str = "structured";

/// Task names a choice task may not take.
pub const RESERVED_TASKS: [&str; 2] = [OPEN_ENDED, STRUCTURED];

/// The `language` of metrics pooled over every language.
pub const ALL_LANGUAGES: &str = "all";

/// The two sides of an evaluation: the policy without its adapter, and with
/// the tuned one (`eval_items.variant`, `eval_results.variant`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EvalModel {
    /// The policy as it shipped.
    Base,
    /// The policy with the tuned adapter merged.
    Tuned,
}

impl EvalModel {
    /// Both sides, base first.
    pub const BOTH: [EvalModel; 2] = [EvalModel::Base, EvalModel::Tuned];

    /// The value stored in the `variant` columns.
    pub fn name(self) -> &'static str {
        match self {
            EvalModel::Base => "base",
            EvalModel::Tuned => "tuned",
        }
    }
}

impl std::fmt::Display for EvalModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
