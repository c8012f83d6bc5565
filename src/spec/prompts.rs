//! `[stages.prompts]`: the prompt set and how to read it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{FileFormat, Section, ValueProblem, check_format};

/// `[stages.prompts]`: where prompts come from and how to read them.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PromptsParams {
    /// Input file: a path relative to the pipeline file, or an object-store URL.
    pub source: String,
    /// Input format; inferred from the extension when absent.
    #[serde(default)]
    pub format: Option<FileFormat>,
    /// Which input columns hold the fields.
    #[serde(default)]
    pub columns: PromptColumns,
    /// Share of source prompts held out for evaluation, in [0, 1).
    #[serde(default = "default_eval_fraction")]
    pub eval_fraction: f64,
    /// Seed of the train/eval split.
    #[serde(default)]
    pub split_seed: u64,
}

fn default_eval_fraction() -> f64 {
    0.1
}

/// Column mapping of the prompt input.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PromptColumns {
    /// Column holding the prompt text.
    pub text: String,
    /// Column holding the ISO 639-1 language code.
    pub language: String,
    /// Column linking translations of one source prompt; without it each prompt is its own source.
    pub source_id: Option<String>,
}

impl Default for PromptColumns {
    fn default() -> Self {
        PromptColumns { text: "text".into(), language: "language".into(), source_id: None }
    }
}

impl Section for PromptsParams {
    fn value_problems(&self, problems: &mut Vec<ValueProblem>) {
        if !(0.0..1.0).contains(&self.eval_fraction) {
            problems.push(("stages.prompts.eval_fraction".into(), "must be in [0, 1)".into()));
        }
        check_format("stages.prompts", &self.source, self.format, problems);
    }
}
