//! What several stage sections share: input file formats, the train/eval
//! split filter, shared defaults, and the value checks' vocabulary.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::models::ModelsSpec;

/// What a `[stages.NAME]` section checks about itself once it is read.
pub trait Section {
    /// The problems of its values that serde cannot express, by dotted key.
    fn value_problems(&self, problems: &mut Vec<ValueProblem>);

    /// The problems with the bundles it needs from `[models]`.
    fn model_problems(&self, _models: &ModelsSpec, _problems: &mut Vec<ValueProblem>) {}

    /// The token budgets that do not fit the context of the bundles it runs
    /// (those whose manifest could be read, in `contexts`).
    fn context_problems(&self, _contexts: &ModelContexts, _problems: &mut Vec<ValueProblem>) {}
}

/// The context, in positions (`architecture.max_position_embeddings`), of
/// each `[models]` bundle whose manifest could be read, by role.
pub type ModelContexts = std::collections::BTreeMap<crate::vocab::roles::ModelRole, usize>;

/// A problem at `key` when `tokens` new tokens leave no room for a prompt
/// in `role`'s context.
pub fn check_room_for_a_prompt(
    key: &str,
    tokens: u32,
    role: crate::vocab::roles::ModelRole,
    contexts: &ModelContexts,
    problems: &mut Vec<ValueProblem>,
) {
    if let Some(&context) = contexts.get(&role)
        && tokens as usize >= context
    {
        problems.push((
            key.into(),
            format!(
                "{tokens} new tokens leave no room for a prompt in the `{role}` bundle's context of {context} \
                 positions (architecture.max_position_embeddings)"
            ),
        ));
    }
}

/// A tabular input file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// Newline-delimited JSON objects.
    Jsonl,
    /// Comma-separated values with a header line.
    Csv,
    /// Apache Parquet.
    Parquet,
}

impl FileFormat {
    /// The format implied by a file name's extension.
    pub fn from_extension(location: &str) -> Option<FileFormat> {
        let lower = location.to_ascii_lowercase();
        if lower.ends_with(".jsonl") || lower.ends_with(".ndjson") || lower.ends_with(".json") {
            Some(FileFormat::Jsonl)
        } else if lower.ends_with(".csv") {
            Some(FileFormat::Csv)
        } else if lower.ends_with(".parquet") {
            Some(FileFormat::Parquet)
        } else {
            None
        }
    }
}

/// Which split of the prompts table a stage reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SplitFilter {
    /// Training prompts.
    #[default]
    Train,
    /// Held-out prompts.
    Eval,
    /// Every prompt.
    All,
}

impl SplitFilter {
    /// SQL condition on the split column `column` (e.g. `split`, `p.split`).
    pub fn sql(self, column: &str) -> String {
        match self {
            SplitFilter::Train => format!("{column} = 'train'"),
            SplitFilter::Eval => format!("{column} = 'eval'"),
            SplitFilter::All => "TRUE".into(),
        }
    }
}

/// A value problem found after the types were read: the dotted key and what is wrong.
pub type ValueProblem = (String, String);

/// Records a problem at `key` when a count that must be positive is 0.
pub fn positive(key: &str, value: u32, problems: &mut Vec<ValueProblem>) {
    if value == 0 {
        problems.push((key.into(), "must be at least 1".into()));
    }
}

/// Records a problem at `{section}.format` when `format` is unset and
/// `location`'s extension does not tell it.
pub fn check_format(section: &str, location: &str, format: Option<FileFormat>, problems: &mut Vec<ValueProblem>) {
    if format.is_none() && FileFormat::from_extension(location).is_none() {
        problems.push((
            format!("{section}.format"),
            format!("cannot infer the format of `{location}` from its extension: set format = \"jsonl\", \"csv\" or \"parquet\""),
        ));
    }
}

/// `prompt` as the policy reads it: with `instruction` appended, `{language}`
/// in it replaced by the English name of `language` (the code itself when
/// ISO 639-1 has no name for it).
pub fn with_instruction(prompt: &str, instruction: Option<&str>, language: &str) -> String {
    match instruction {
        Some(instruction) => {
            let name = crate::langs::english_name(language).unwrap_or(language);
            format!("{prompt}{}", instruction.replace("{language}", name))
        }
        None => prompt.to_string(),
    }
}

/// Records a problem at `key` when a prompt instruction is set but empty.
pub fn check_instruction(key: &str, instruction: Option<&str>, problems: &mut Vec<ValueProblem>) {
    if instruction.is_some_and(|i| i.trim().is_empty()) {
        problems.push((key.into(), "is empty: leave it out for prompts as they are".into()));
    }
}

/// Rows per committed part of the chunked model stages (score, ref_logps).
pub(super) fn default_rows_per_part() -> u32 {
    2048
}

/// Sequences per batch of the scoring stages (score, ref_logps).
pub(super) fn default_score_batch_size() -> u32 {
    16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_instruction_names_the_language_in_english() {
        let instruction = Some(" Please respond in {language} and nothing else.");
        assert_eq!(
            with_instruction("Bonjour ?", instruction, "fr"),
            "Bonjour ? Please respond in French and nothing else."
        );
        assert_eq!(
            with_instruction("Dia duit", instruction, "ga"),
            "Dia duit Please respond in Irish and nothing else."
        );
        assert_eq!(with_instruction("Hi", None, "en"), "Hi");
    }
}
