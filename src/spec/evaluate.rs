//! `[stages.evaluate]`: its multiple-choice tasks and its open-ended judge.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    FileFormat, ModelContexts, Section, ValueProblem, check_format, check_instruction, check_room_for_a_prompt,
    positive,
};
use super::models::ModelsSpec;
use crate::vocab::roles::ModelRole;

/// `[stages.evaluate]`: the recipe's verdict, base policy against tuned policy.
///
/// The tuned policy is the base with the tune stage's adapter (or, in a
/// pipeline without a tune stage, `models.policy_adapter`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluateParams {
    /// Multiple-choice tasks (`[[stages.evaluate.choice]]`), scored by log-likelihood.
    #[serde(default)]
    pub choice: Vec<ChoiceTask>,
    /// The open-ended comparison on the prompts' eval split.
    #[serde(default)]
    pub judge: Option<JudgeParams>,
    /// Sequences per log-likelihood batch.
    #[serde(default = "default_eval_batch_size")]
    pub batch_size: u32,
    /// At most this many padded tokens per batch (rows × its longest row),
    /// besides `batch_size`: memory then follows tokens, not the longest row.
    /// A longer sequence runs alone. Unset: rows only. Left out of keys when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch_tokens: Option<u32>,
    /// Choice items (per model and task) or judged prompts committed
    /// together: an interrupted evaluation resumes after the last committed part.
    #[serde(default = "default_items_per_part")]
    pub items_per_part: u32,
}

fn default_eval_batch_size() -> u32 {
    16
}

fn default_items_per_part() -> u32 {
    256
}

/// One multiple-choice task: a JSONL file of items, native
/// (`schemas/eval_items.schema.json`) or mapped from another benchmark's
/// columns (Belebele, XCOPA, ...).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChoiceTask {
    /// The task's name in `eval_items` and `eval_results`.
    pub name: String,
    /// The JSONL file (path relative to the pipeline file, or a URL).
    pub source: String,
    /// Which field of each line holds what.
    #[serde(default)]
    pub columns: ChoiceColumns,
    /// The index of the first option in the gold field: 0 (native, XCOPA) or 1 (Belebele).
    #[serde(default)]
    pub gold_base: u32,
    /// Builds the context from several fields, e.g. `"{flores_passage}\n{question}"`;
    /// replaces `columns.context`.
    #[serde(default)]
    pub context_template: Option<String>,
    /// Maps the file's language values onto ISO 639-1 codes (Belebele's
    /// `fra_Latn` → `fr`); lines whose value is not mapped are skipped.
    #[serde(default)]
    pub language_map: std::collections::BTreeMap<String, String>,
    /// How context and option become one sequence.
    #[serde(default)]
    pub prompt: ChoicePrompt,
    /// Score at most this many items per language (the first ones in file order).
    #[serde(default)]
    pub max_items_per_language: Option<u32>,
}

/// Field names of a choice task's lines.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ChoiceColumns {
    /// Unique item id, or a template over several fields (`"{link}#{question_number}"`).
    pub item_id: String,
    /// ISO 639-1 language code.
    pub language: String,
    /// The text the options are conditioned on.
    pub context: String,
    /// One field holding a list of options, or a list of fields holding one option each.
    pub options: OptionFields,
    /// Index of the correct option (an integer, or a string of one).
    pub gold: String,
}

impl Default for ChoiceColumns {
    fn default() -> Self {
        ChoiceColumns {
            item_id: "item_id".into(),
            language: "language".into(),
            context: "context".into(),
            options: OptionFields::List("options".into()),
            gold: "gold".into(),
        }
    }
}

/// Where a choice item's options are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum OptionFields {
    /// One field whose value is an array of strings.
    List(String),
    /// One field per option, in option order.
    Fields(Vec<String>),
}

/// How a choice item is laid out for the policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChoicePrompt {
    /// The context is the user's turn, the option the assistant's response
    /// (the chat template without its end-of-turn suffix).
    #[default]
    Chat,
    /// The option follows the context text directly (base-model style).
    Raw,
}

/// `[stages.evaluate.judge]`: base and tuned policy answer the held-out
/// prompts; a judge decides each pair.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JudgeParams {
    /// `reward` (the reward model's score difference), `pairwise`
    /// (`models.judge`'s log-odds of A over B) or `generative` (`models.judge`
    /// writes an analysis ending in a verdict tag, as in the recipe).
    #[serde(default)]
    pub kind: JudgeKind,
    /// A preference within ± this margin is a tie (reward units, or log-odds for `pairwise`).
    #[serde(default)]
    pub tie_margin: f64,
    /// Appended to every judged prompt before the chat template, `{language}` replaced by the prompt
    /// language's English name; the recipe's is " Please respond in {language} and nothing else."
    /// (mind the leading space). Unset (the default): prompts as they are. Left out of keys when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instruction: Option<String>,
    /// Response length limit, in tokens.
    #[serde(default = "default_judge_max_new_tokens")]
    pub max_new_tokens: u32,
    /// Sampling temperature; 0 (the default) is greedy.
    #[serde(default)]
    pub temperature: f64,
    /// Seed of sampling (temperature > 0) and of the pairwise A/B order.
    #[serde(default)]
    pub seed: u64,
    /// Prompts per generation batch.
    #[serde(default = "default_eval_batch_size")]
    pub batch_size: u32,
    /// Answer at most this many eval prompts per language (the first by prompt_id).
    #[serde(default)]
    pub max_prompts_per_language: Option<u32>,
    /// A held-out prompt set of its own (e.g. m-ArenaHard) instead of the
    /// prompts table's eval split.
    #[serde(default)]
    pub prompts: Option<JudgePrompts>,
    /// The judge's prompt, with `{prompt}`, `{a}` and `{b}` (the two answers in
    /// the order shown). Pairwise: it must make `A` or `B` the natural answer;
    /// generative: it must ask for one of the `verdicts` tags. Default: the
    /// kind's own ([`JudgeParams::default_template`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// The judge's prompt from a file (path relative to the pipeline file, or
    /// a URL), instead of `template`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_file: Option<String>,
    /// Generative: the tags that end the judge's answer.
    #[serde(default)]
    pub verdicts: VerdictTags,
    /// Generative: the judge's sampling temperature (the recipe: 0.7; 0 is greedy).
    #[serde(default = "default_judge_temperature")]
    pub judge_temperature: f64,
    /// Generative: the judge's answer length limit, in tokens.
    #[serde(default = "default_judge_answer_tokens")]
    pub judge_max_new_tokens: u32,
    /// The unit of the response lengths the length-controlled win rate
    /// corrects for: `chars` (the recipe) or `tokens`.
    #[serde(default)]
    pub length_unit: LengthUnit,
}

fn default_judge_temperature() -> f64 {
    0.7
}

fn default_judge_answer_tokens() -> u32 {
    1024
}

/// The generative judge's verdict tags: the first answer shown is better,
/// the second is, or neither.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct VerdictTags {
    /// The first answer shown wins.
    pub first: String,
    /// The second answer shown wins.
    pub second: String,
    /// A tie.
    pub tie: String,
}

impl Default for VerdictTags {
    fn default() -> Self {
        VerdictTags { first: "[[1]]".into(), second: "[[2]]".into(), tie: "[[T]]".into() }
    }
}

/// How response lengths are measured for length control.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LengthUnit {
    /// Unicode scalar values of the decoded text (the recipe).
    #[default]
    Chars,
    /// Tokens the policy generated.
    Tokens,
}

impl LengthUnit {
    /// The value stored in `eval_items.length_unit`.
    pub fn name(self) -> &'static str {
        match self {
            LengthUnit::Chars => "chars",
            LengthUnit::Tokens => "tokens",
        }
    }
}

fn default_judge_max_new_tokens() -> u32 {
    512
}

impl JudgeParams {
    fn check(&self, problems: &mut Vec<ValueProblem>) {
        if !self.tie_margin.is_finite() || self.tie_margin < 0.0 {
            problems.push(("stages.evaluate.judge.tie_margin".into(), "must be a finite number >= 0".into()));
        }
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            problems
                .push(("stages.evaluate.judge.temperature".into(), "must be a finite number >= 0 (0 = greedy)".into()));
        }
        check_instruction("stages.evaluate.judge.instruction", self.instruction.as_deref(), problems);
        positive("stages.evaluate.judge.max_new_tokens", self.max_new_tokens, problems);
        positive("stages.evaluate.judge.batch_size", self.batch_size, problems);
        if let Some(limit) = self.max_prompts_per_language {
            positive("stages.evaluate.judge.max_prompts_per_language", limit, problems);
        }
        if let Some(prompts) = &self.prompts {
            check_format("stages.evaluate.judge.prompts", &prompts.source, prompts.format, problems);
        }
        if !self.judge_temperature.is_finite() || self.judge_temperature < 0.0 {
            let problem = "must be a finite number >= 0 (0 = greedy)".into();
            problems.push(("stages.evaluate.judge.judge_temperature".into(), problem));
        }
        positive("stages.evaluate.judge.judge_max_new_tokens", self.judge_max_new_tokens, problems);
        if self.template.is_some() && self.template_file.is_some() {
            problems.push((
                "stages.evaluate.judge.template_file".into(),
                "set `template` or `template_file`, not both".into(),
            ));
        }
        if self.kind != JudgeKind::Reward
            && self.template_file.is_none()
            && let Err(problem) = self.check_template(&self.template())
        {
            problems.push(("stages.evaluate.judge.template".into(), problem));
        }
        let tags = [&self.verdicts.first, &self.verdicts.second, &self.verdicts.tie];
        for (name, tag) in ["first", "second", "tie"].iter().zip(tags) {
            if tag.trim().is_empty() {
                problems.push((format!("stages.evaluate.judge.verdicts.{name}"), "must not be empty".into()));
            }
        }
        let compact: Vec<String> = tags.iter().map(|t| compact_tag(t)).collect();
        if compact
            .iter()
            .enumerate()
            .any(|(i, t)| compact[..i].iter().any(|u| t.contains(u.as_str()) || u.contains(t.as_str())))
        {
            let problem = "the three tags must differ, and none may contain another (spaces and case aside)".into();
            problems.push(("stages.evaluate.judge.verdicts".into(), problem));
        }
    }

    /// The judge's prompt as configured inline, else the kind's default (a
    /// `template_file` is read by the stage).
    pub fn template(&self) -> String {
        self.template.clone().unwrap_or_else(|| Self::default_template(self.kind))
    }

    /// Whether `template` has what the judge's kind needs: `{prompt}`, `{a}`
    /// and `{b}`, and for the generative judge its verdict tags.
    pub fn check_template(&self, template: &str) -> Result<(), String> {
        for placeholder in ["{prompt}", "{a}", "{b}"] {
            if !template.contains(placeholder) {
                return Err(format!("must contain `{placeholder}`"));
            }
        }
        let tags = [&self.verdicts.first, &self.verdicts.second, &self.verdicts.tie];
        match tags.iter().find(|tag| self.kind == JudgeKind::Generative && !template.contains(tag.as_str())) {
            Some(tag) => Err(format!("must name the verdict tag `{tag}` so the judge knows to write it")),
            None => Ok(()),
        }
    }

    /// The default prompt of a judge kind: a question answered `A` or `B`
    /// (pairwise), or the recipe's style of instruction, an analysis then
    /// `[[1]]`, `[[2]]` or `[[T]]` (generative).
    pub fn default_template(kind: JudgeKind) -> String {
        match kind {
            JudgeKind::Generative => GENERATIVE_TEMPLATE.into(),
            _ => PAIRWISE_TEMPLATE.into(),
        }
    }
}

/// A verdict tag as it is matched: without whitespace, lower case.
pub fn compact_tag(tag: &str) -> String {
    tag.chars().filter(|c| !c.is_whitespace()).flat_map(char::to_lowercase).collect()
}

const PAIRWISE_TEMPLATE: &str = "Which response answers the instruction better?\n\nInstruction:\n{prompt}\n\n\
     Response A:\n{a}\n\nResponse B:\n{b}\n\nAnswer with A or B.";

const GENERATIVE_TEMPLATE: &str = "Please act as an impartial judge and evaluate the quality of the responses \
     provided by two AI assistants to the user prompt below. Consider helpfulness, relevance, accuracy, depth and \
     whether the response is written in the language of the prompt. Do not let the order of the responses, their \
     length or the assistants' names influence you. Begin with a short explanation, then output your final \
     verdict on a line of its own, strictly in this format: \"[[1]]\" if assistant 1 is better, \"[[2]]\" if \
     assistant 2 is better, \"[[T]]\" for a tie.\n\n[User prompt]\n{prompt}\n\n[The start of assistant 1's \
     answer]\n{a}\n[The end of assistant 1's answer]\n\n[The start of assistant 2's answer]\n{b}\n[The end of \
     assistant 2's answer]";

/// `[stages.evaluate.judge.prompts]`: a file of held-out prompts.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JudgePrompts {
    /// The file (path relative to the pipeline file, or a URL).
    pub source: String,
    /// Its format (default: from the extension).
    #[serde(default)]
    pub format: Option<FileFormat>,
    /// Which column holds what.
    #[serde(default)]
    pub columns: JudgePromptColumns,
}

/// Column names of a judge prompt file.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct JudgePromptColumns {
    /// Unique prompt id (string or integer).
    pub prompt_id: String,
    /// ISO 639-1 language code.
    pub language: String,
    /// The instruction.
    pub text: String,
    /// The prompt's category (m-ArenaHard's, say): the report gives the
    /// open-ended metrics per category too. Unset: no categories.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

impl Default for JudgePromptColumns {
    fn default() -> Self {
        JudgePromptColumns {
            prompt_id: "prompt_id".into(),
            language: "language".into(),
            text: "prompt".into(),
            category: None,
        }
    }
}

/// The judge of open-ended responses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum JudgeKind {
    /// The reward model scores both responses; the higher one wins.
    #[default]
    Reward,
    /// A policy bundle (`models.judge`) is shown both, in a random order, and
    /// the log-odds of it answering `A` against `B` decide.
    Pairwise,
    /// A policy bundle (`models.judge`) is shown both, in a random order, and
    /// writes (sampled) an analysis ending in a verdict tag; an answer without
    /// a readable tag is counted as unparseable, not as a tie.
    Generative,
}

impl JudgeKind {
    /// The kind as the pipeline file spells it.
    pub fn name(self) -> &'static str {
        match self {
            JudgeKind::Reward => "reward",
            JudgeKind::Pairwise => "pairwise",
            JudgeKind::Generative => "generative",
        }
    }
}

impl Section for EvaluateParams {
    fn context_problems(&self, contexts: &ModelContexts, problems: &mut Vec<ValueProblem>) {
        let Some(judge) = &self.judge else { return };
        let answers = judge.max_new_tokens;
        check_room_for_a_prompt("stages.evaluate.judge.max_new_tokens", answers, ModelRole::Policy, contexts, problems);
        if judge.kind == JudgeKind::Generative {
            let key = "stages.evaluate.judge.judge_max_new_tokens";
            check_room_for_a_prompt(key, judge.judge_max_new_tokens, ModelRole::Judge, contexts, problems);
        }
    }

    fn value_problems(&self, problems: &mut Vec<ValueProblem>) {
        if self.choice.is_empty() && self.judge.is_none() {
            problems.push((
                "stages.evaluate".into(),
                "configure at least one [[stages.evaluate.choice]] task or a [stages.evaluate.judge]".into(),
            ));
        }
        positive("stages.evaluate.batch_size", self.batch_size, problems);
        if let Some(tokens) = self.max_batch_tokens {
            positive("stages.evaluate.max_batch_tokens", tokens, problems);
        }
        positive("stages.evaluate.items_per_part", self.items_per_part, problems);
        for (i, task) in self.choice.iter().enumerate() {
            task.check(&format!("stages.evaluate.choice[{i}]"), problems);
            if self.choice[..i].iter().any(|t| t.name == task.name) {
                problems.push((format!("stages.evaluate.choice[{i}].name"), format!("`{}` is used twice", task.name)));
            }
        }
        if let Some(judge) = &self.judge {
            judge.check(problems);
        }
    }

    fn model_problems(&self, models: &ModelsSpec, problems: &mut Vec<ValueProblem>) {
        if models.policy.is_none() {
            problems.push(("stages.evaluate".into(), "evaluates the policy: set `policy` in [models]".into()));
        }
        match self.judge.as_ref().map(|j| j.kind) {
            Some(JudgeKind::Reward) if models.reward.is_none() => problems.push((
                "stages.evaluate.judge.kind".into(),
                "`reward` judges with the reward model: set `reward` in [models]".into(),
            )),
            Some(kind @ (JudgeKind::Pairwise | JudgeKind::Generative)) if models.judge.is_none() => problems.push((
                "stages.evaluate.judge.kind".into(),
                format!("`{}` asks a judge policy: set `judge` in [models]", kind.name()),
            )),
            _ => {}
        }
    }
}

impl ChoiceTask {
    fn check(&self, key: &str, problems: &mut Vec<ValueProblem>) {
        let valid_name = !self.name.is_empty() && self.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name || crate::vocab::eval::RESERVED_TASKS.contains(&self.name.as_str()) {
            problems.push((
                format!("{key}.name"),
                format!("`{}` must be letters, digits or `_`, and not `open_ended` or `structured`", self.name),
            ));
        }
        if FileFormat::from_extension(&self.source) != Some(FileFormat::Jsonl) {
            problems.push((format!("{key}.source"), format!("`{}` must be a JSONL file (.jsonl)", self.source)));
        }
        if self.gold_base > 1 {
            problems.push((format!("{key}.gold_base"), "must be 0 or 1".into()));
        }
        if matches!(&self.columns.options, OptionFields::Fields(fields) if fields.len() < 2) {
            problems.push((format!("{key}.columns.options"), "name at least two option fields".into()));
        }
        if let Some(limit) = self.max_items_per_language {
            positive(&format!("{key}.max_items_per_language"), limit, problems);
        }
        for (value, code) in &self.language_map {
            if !crate::langs::is_iso_639_1(code) {
                problems.push((format!("{key}.language_map.{value}"), format!("`{code}` is not an ISO 639-1 code")));
            }
        }
    }
}
