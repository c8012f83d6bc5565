//! The open-ended comparison: base and tuned policy answer the held-out
//! prompts (the prompts table's eval split), and a judge decides each pair.
//!
//! - `reward` judge: the reward model scores both responses; the preference
//!   is the difference, tuned minus base.
//! - `pairwise` judge: a policy bundle reads both responses, in an order drawn
//!   per prompt from the seed and recorded, and the preference is its
//!   log-odds of answering with the tuned response's letter.
//! - `generative` judge (the recipe's): a policy bundle reads both responses
//!   in the drawn order and writes, sampled with a seed per prompt, an
//!   analysis ending in a verdict tag (`[[1]]`, `[[2]]`, `[[T]]`); the tag is
//!   mapped back through the order. An answer without a readable tag is
//!   `unparseable`: counted, stored, never scored as a tie.
//!
//! Within `tie_margin` a reward or pairwise comparison is a tie. Every
//! response's language is detected too, for the language-fidelity metric.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};

use crate::ids::{stable_seed, unit_interval};
use crate::model::batching::{BatchLimits, in_batches};
use crate::model::continuous::SlotLimits;
use crate::model::policy::{GenerationRequest, Policy};
use crate::model::reward::RewardModel;
use crate::model::sampling::SamplingParams;
use crate::spec::common::with_instruction;
use crate::spec::evaluate::{JudgeKind, JudgeParams, LengthUnit, VerdictTags, compact_tag};
use crate::stages::stage::{StageError, StageInput};
use crate::store::rows::{first_row, text_at};
use crate::store::{StoreError, Table};
use crate::vocab::eval::{EvalModel, OPEN_ENDED};
use crate::vocab::stats::Outcome;

/// A held-out prompt.
#[derive(Debug, Clone)]
pub struct EvalPrompt {
    /// Its id in the prompts table.
    pub prompt_id: String,
    /// ISO 639-1 code.
    pub language: String,
    /// The instruction.
    pub text: String,
    /// Its category, when the judge's prompt file maps one.
    pub category: Option<String>,
}

/// One policy's answer to a prompt.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Response {
    /// Decoded text.
    pub text: String,
    /// Generated tokens.
    pub tokens: usize,
}

/// The held-out prompts, by prompt_id, at most `max_prompts_per_language`
/// per language: the prompts table's eval split, or the judge's own file
/// (its rows in the run's languages; ids must be unique).
pub async fn eval_prompts(input: &StageInput<'_>, params: &JudgeParams) -> Result<Vec<EvalPrompt>, StageError> {
    let (source, context) = match &params.prompts {
        Some(file) => (register_prompt_file(input, file).await?, "stages.evaluate.judge.prompts".to_string()),
        None => ("(SELECT * FROM prompts WHERE split = 'eval')".to_string(), "prompts (eval split)".to_string()),
    };
    let languages: Vec<String> = input.languages.iter().map(|l| format!("'{l}'")).collect();
    let limit = params.max_prompts_per_language.map_or(i64::MAX, i64::from);
    let category = match params.prompts.as_ref().is_some_and(|p| p.columns.category.is_some()) {
        true => "category",
        false => "CAST(NULL AS VARCHAR) AS category",
    };
    let sql = format!(
        "SELECT prompt_id, language, text, category FROM (SELECT prompt_id, language, text, {category}, \
         ROW_NUMBER() OVER (PARTITION BY language ORDER BY prompt_id) AS rank FROM {source} \
         WHERE language IN ({})) WHERE rank <= {limit} ORDER BY prompt_id",
        languages.join(", ")
    );
    let frame = crate::store::session::query(input.ctx, &sql, &context).await?;
    let batches = frame.collect().await.map_err(StoreError::query(&context))?;
    let mut prompts = Vec::new();
    for batch in batches.iter().map(crate::store::schema::plain_strings) {
        prompts.extend((0..batch.num_rows()).map(|i| EvalPrompt {
            prompt_id: text_at(&batch, "prompt_id", i),
            language: text_at(&batch, "language", i),
            text: text_at(&batch, "text", i),
            category:
                batch.column_by_name("category").filter(|c| c.is_valid(i)).map(|_| text_at(&batch, "category", i)),
        }));
    }
    if prompts.is_empty() {
        let problem =
            "no held-out prompt in the run's languages (for the eval split: set stages.prompts.eval_fraction > 0)";
        return Err(StageError::Input { file: context, problem: problem.into() });
    }
    Ok(prompts)
}

/// Registers the judge's prompt file as `judge_prompts` after checking its
/// ids are filled and unique; returns the table name.
async fn register_prompt_file(
    input: &StageInput<'_>,
    file: &crate::spec::evaluate::JudgePrompts,
) -> Result<String, StageError> {
    use crate::stages::files::{ColumnKind, Mapped, read_mapped};
    let columns = &file.columns;
    let mut mapping = vec![
        Mapped { role: "prompt_id", column: &columns.prompt_id, kind: ColumnKind::Key },
        Mapped { role: "language", column: &columns.language, kind: ColumnKind::Text },
        Mapped { role: "text", column: &columns.text, kind: ColumnKind::Text },
    ];
    if let Some(category) = &columns.category {
        mapping.push(Mapped { role: "category", column: category, kind: ColumnKind::Text });
    }
    let opened = read_mapped(input.ctx, &file.source, file.format, input, &mapping).await?;
    input
        .ctx
        .register_table("judge_prompts", opened.frame.into_view())
        .map_err(StoreError::query(format!("registering {}", opened.url)))?;
    let bad = "SELECT prompt_id, COUNT(*) AS copies FROM judge_prompts GROUP BY prompt_id \
               HAVING COUNT(*) > 1 OR prompt_id IS NULL ORDER BY prompt_id";
    if let Some(row) = first_row(input.ctx, bad, &opened.url).await? {
        return Err(StageError::Row { file: opened.url, row, problem: "prompt ids must be set and unique".into() });
    }
    Ok("judge_prompts".into())
}

/// `policy`'s response to every prompt: greedy, or sampled with a seed per
/// prompt so the answer does not depend on batching.
pub fn respond(policy: &mut Policy, prompts: &[EvalPrompt], params: &JudgeParams) -> Result<Vec<Response>, StageError> {
    let sampling = SamplingParams { temperature: params.temperature, top_p: 1.0, top_k: None };
    let requests = prompts
        .iter()
        .map(|p| {
            let seed = stable_seed(&[&params.seed.to_string(), &p.prompt_id]);
            let text = with_instruction(&p.text, params.instruction.as_deref(), &p.language);
            Ok(GenerationRequest { prompt: policy.tokenizer.encode_prompt(&text)?, seeds: vec![seed] })
        })
        .collect::<Result<Vec<_>, StageError>>()?;
    let limits = SlotLimits::for_prompts(params.batch_size as usize, 1);
    let generated = policy.generate(&requests, &sampling, params.max_new_tokens as usize, limits, &mut |_| {})?;
    let mut responses = Vec::with_capacity(prompts.len());
    for mut samples in generated {
        let generated = samples.remove(0);
        responses.push(Response { text: policy.tokenizer.decode(&generated.tokens)?, tokens: generated.tokens.len() });
    }
    Ok(responses)
}

/// The reward of every (prompt, response), in length-sorted batches within `limits`.
pub fn rewards(
    model: &mut RewardModel,
    prompts: &[EvalPrompt],
    responses: &[Response],
    limits: BatchLimits,
) -> Result<Vec<f64>, StageError> {
    let sequences = prompts
        .iter()
        .zip(responses)
        .map(|(p, r)| model.tokenizer.encode_exchange(&p.text, &r.text).map(|(ids, _)| ids))
        .collect::<Result<Vec<_>, _>>()?;
    let rewards: Vec<f64> =
        in_batches(&sequences, Vec::len, limits, |batch| model.score_ids(batch))?.into_iter().map(f64::from).collect();
    if let Some(i) = rewards.iter().position(|r| !r.is_finite()) {
        return Err(StageError::Row {
            file: "models.reward".into(),
            row: format!("prompt_id={}", prompts[i].prompt_id),
            problem: format!("the reward model returned {} for a judged response", rewards[i]),
        });
    }
    Ok(rewards)
}

/// Whether the tuned response is shown first to the pairwise judge.
pub fn tuned_first(seed: u64, prompt_id: &str) -> bool {
    unit_interval(seed, &format!("judge-order:{prompt_id}")) < 0.5
}

/// The pairwise judge's preference for the tuned response of each prompt:
/// `log p(tuned's letter) - log p(other letter)` as the judge's answer.
pub fn pairwise_preferences(
    judge: &mut Policy,
    (prompts, base, tuned): (&[EvalPrompt], &[Response], &[Response]),
    params: &JudgeParams,
    template: &str,
    limits: BatchLimits,
) -> Result<Vec<f64>, StageError> {
    let firsts: Vec<bool> = prompts.iter().map(|p| tuned_first(params.seed, &p.prompt_id)).collect();
    let mut sequences = Vec::with_capacity(prompts.len() * 2);
    for (((prompt, base), tuned), &first) in prompts.iter().zip(base).zip(tuned).zip(&firsts) {
        let prefix = judge.tokenizer.prompt_text(&judge_question(template, prompt, (base, tuned), first));
        for letter in ["A", "B"] {
            sequences.push(judge.tokenizer.encode_continuation(&prefix, letter)?);
        }
    }
    let logprobs: Vec<f64> = in_batches(&sequences, |(ids, _)| ids.len(), limits, |batch| judge.logprobs(batch))?
        .into_iter()
        .map(|l| f64::from(l.sum))
        .collect();
    // The judge's log-odds of A over B, turned towards the tuned response.
    Ok(logprobs
        .chunks(2)
        .zip(firsts)
        .map(|(pair, first)| if first { pair[0] - pair[1] } else { pair[1] - pair[0] })
        .collect())
}

/// The judge's question: `template` with the prompt and the two responses,
/// the tuned one first when `tuned_first`.
pub fn judge_question(
    template: &str,
    prompt: &EvalPrompt,
    (base, tuned): (&Response, &Response),
    tuned_first: bool,
) -> String {
    let (a, b) = if tuned_first { (&tuned.text, &base.text) } else { (&base.text, &tuned.text) };
    // One pass, so a response that itself contains `{b}` is not substituted again.
    let mut question = String::with_capacity(template.len() + a.len() + b.len() + prompt.text.len());
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let (value, skip) = match &rest[start..] {
            r if r.starts_with("{prompt}") => (prompt.text.as_str(), "{prompt}".len()),
            r if r.starts_with("{a}") => (a.as_str(), 3),
            r if r.starts_with("{b}") => (b.as_str(), 3),
            _ => ("{", 1),
        };
        question.push_str(&rest[..start]);
        question.push_str(value);
        rest = &rest[start + skip..];
    }
    question.push_str(rest);
    question
}

/// Which of the two answers shown a generative judge's verdict names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    /// The first answer shown (`[[1]]`).
    First,
    /// The second answer shown (`[[2]]`).
    Second,
    /// Neither (`[[T]]`).
    Tie,
}

impl Shown {
    /// The value of `eval_items.verdict`.
    pub fn name(self) -> &'static str {
        match self {
            Shown::First => "first",
            Shown::Second => "second",
            Shown::Tie => "tie",
        }
    }

    /// The verdict for the tuned response, undoing the order it was shown in.
    pub fn outcome(self, tuned_first: bool) -> Outcome {
        match (self, tuned_first) {
            (Shown::Tie, _) => Outcome::Tie,
            (Shown::First, true) | (Shown::Second, false) => Outcome::Win,
            _ => Outcome::Loss,
        }
    }
}

/// The verdict a judge's answer ends with: the last line holding a tag
/// decides (whitespace and case inside and around a tag do not matter, and
/// the tag may stand mid-line). `None` (unparseable) when no line holds a
/// tag, or the deciding line holds two different ones.
pub fn parse_verdict(answer: &str, tags: &VerdictTags) -> Option<Shown> {
    let tags = [
        (compact_tag(&tags.first), Shown::First),
        (compact_tag(&tags.second), Shown::Second),
        (compact_tag(&tags.tie), Shown::Tie),
    ];
    answer.lines().rev().find_map(|line| {
        let line = compact_tag(line);
        let found: Vec<Shown> = tags.iter().filter(|(tag, _)| line.contains(tag.as_str())).map(|(_, s)| *s).collect();
        match found.as_slice() {
            [] => None,
            [one] => Some(Some(*one)),
            _ => Some(None),
        }
    })?
}

/// One generative judgment: the judge's whole answer and the verdict read from it.
#[derive(Debug, Clone)]
pub struct JudgeAnswer {
    /// The judge's text.
    pub text: String,
    /// The verdict, `None` when unparseable.
    pub verdict: Option<Shown>,
}

/// The generative judge's answer for every prompt: sampled at
/// `judge_temperature` with a seed per prompt (so batching does not change
/// it), the responses in the recorded order. A question that does not fit
/// the judge's context with room for its answer is an error naming the prompt.
pub fn generative_verdicts(
    judge: &mut Policy,
    (prompts, base, tuned): (&[EvalPrompt], &[Response], &[Response]),
    params: &JudgeParams,
    template: &str,
) -> Result<Vec<JudgeAnswer>, StageError> {
    let sampling = SamplingParams { temperature: params.judge_temperature, top_p: 1.0, top_k: None };
    let context = judge.bundle.manifest.architecture.max_position_embeddings;
    let answer_tokens = params.judge_max_new_tokens as usize;
    let mut requests = Vec::with_capacity(prompts.len());
    for ((prompt, base), tuned) in prompts.iter().zip(base).zip(tuned) {
        let first = tuned_first(params.seed, &prompt.prompt_id);
        let ids = judge.tokenizer.encode_prompt(&judge_question(template, prompt, (base, tuned), first))?;
        if ids.len() + answer_tokens > context {
            return Err(StageError::Row {
                file: "models.judge".into(),
                row: format!("prompt_id={}", prompt.prompt_id),
                problem: format!(
                    "the judge's question is {} tokens; with judge_max_new_tokens = {answer_tokens} it does not fit \
                     the judge's {context} positions (shorten the template or max_new_tokens, or lower judge_max_new_tokens)",
                    ids.len()
                ),
            });
        }
        let seed = stable_seed(&[&params.seed.to_string(), "judge", &prompt.prompt_id]);
        requests.push(GenerationRequest { prompt: ids, seeds: vec![seed] });
    }
    let limits = SlotLimits::for_prompts(params.batch_size as usize, 1);
    let mut answers = Vec::with_capacity(prompts.len());
    for mut samples in judge.generate(&requests, &sampling, answer_tokens, limits, &mut |_| {})? {
        let text = judge.tokenizer.decode(&samples.remove(0).tokens)?;
        answers.push(JudgeAnswer { verdict: parse_verdict(&text, &params.verdicts), text });
    }
    Ok(answers)
}

/// The verdict for the tuned response given the judge's preference.
pub fn outcome(preference: f64, tie_margin: f64) -> Outcome {
    if preference > tie_margin {
        Outcome::Win
    } else if preference < -tie_margin {
        Outcome::Loss
    } else {
        Outcome::Tie
    }
}

/// The language of `text` among `candidates` (the run's languages the
/// detector knows), or `None` when the prompt's language is not one of them
/// or nothing was detected.
pub fn detect_language(text: &str, prompt_language: &str, candidates: &[whatlang::Lang]) -> Option<String> {
    crate::langs::detector_language(prompt_language)?;
    let detector = whatlang::Detector::with_allowlist(candidates.to_vec());
    let found = detector.detect_lang(text)?;
    crate::langs::iso_639_1_of(found).map(str::to_string)
}

/// What the judged rows of one part are made of.
pub struct Judged<'a> {
    /// The prompts.
    pub prompts: &'a [EvalPrompt],
    /// The base's responses, one per prompt.
    pub base: &'a [Response],
    /// The tuned policy's responses.
    pub tuned: &'a [Response],
    /// Rewards of both, when a reward model is configured.
    pub rewards: Option<(Vec<f64>, Vec<f64>)>,
    /// The judge's preference for the tuned response (`None`: unparseable).
    pub preferences: Vec<Option<f64>>,
    /// The verdicts (`None`: unparseable).
    pub outcomes: Vec<Option<Outcome>>,
    /// The generative judge's answers.
    pub answers: Option<Vec<JudgeAnswer>>,
    /// `reward`, `pairwise:<judge checksum>` or `generative:<judge checksum>`.
    pub judge: String,
    /// Identity of the tuned model.
    pub tuned_id: &'a str,
}

impl Judged<'_> {
    /// The `eval_items` rows, one per prompt.
    pub fn rows(&self, params: &JudgeParams, languages: &[String]) -> Result<RecordBatch, StageError> {
        let n = self.prompts.len();
        let candidates: Vec<whatlang::Lang> =
            languages.iter().filter_map(|code| crate::langs::detector_language(code)).collect();
        let detect = |responses: &[Response]| -> ArrayRef {
            let codes =
                self.prompts.iter().zip(responses).map(|(p, r)| detect_language(&r.text, &p.language, &candidates));
            Arc::new(StringArray::from_iter(codes))
        };
        let text = |value: &str| -> ArrayRef { Arc::new(StringArray::from(vec![value; n])) };
        let strings =
            |f: &dyn Fn(usize) -> String| -> ArrayRef { Arc::new(StringArray::from_iter_values((0..n).map(f))) };
        let integers = |r: &[Response], measure: &dyn Fn(&Response) -> usize| -> ArrayRef {
            Arc::new(Int64Array::from_iter_values(r.iter().map(|r| measure(r) as i64)))
        };
        let tokens = |r: &Response| r.tokens;
        let length = |r: &Response| match params.length_unit {
            LengthUnit::Chars => r.text.chars().count(),
            LengthUnit::Tokens => r.tokens,
        };
        let floats = |v: &[f64]| -> ArrayRef { Arc::new(Float64Array::from(v.to_vec())) };
        let ordered = params.kind != JudgeKind::Reward;
        let order = self.prompts.iter().map(|p| ordered.then(|| tuned_first(params.seed, &p.prompt_id)));
        let outcomes = self.outcomes.iter().map(|o| o.map(Outcome::name));
        let categories = self.prompts.iter().map(|p| p.category.clone());
        let mut given = vec![
            ("task", text(OPEN_ENDED)),
            ("kind", text("judge")),
            ("language", strings(&|i| self.prompts[i].language.clone())),
            ("item_id", strings(&|i| self.prompts[i].prompt_id.clone())),
            ("variant", text(EvalModel::Tuned.name())),
            ("policy_id", text(self.tuned_id)),
            ("category", Arc::new(StringArray::from_iter(categories)) as ArrayRef),
            ("prompt", strings(&|i| self.prompts[i].text.clone())),
            ("base_response", strings(&|i| self.base[i].text.clone())),
            ("tuned_response", strings(&|i| self.tuned[i].text.clone())),
            ("base_tokens", integers(self.base, &tokens)),
            ("tuned_tokens", integers(self.tuned, &tokens)),
            ("base_length", integers(self.base, &length)),
            ("tuned_length", integers(self.tuned, &length)),
            ("length_unit", text(params.length_unit.name())),
            ("judge", text(&self.judge)),
            ("tuned_first", Arc::new(BooleanArray::from_iter(order)) as ArrayRef),
            ("preference", Arc::new(Float64Array::from(self.preferences.clone())) as ArrayRef),
            ("outcome", Arc::new(StringArray::from_iter(outcomes)) as ArrayRef),
            (
                "unparseable",
                Arc::new(BooleanArray::from_iter(self.outcomes.iter().map(|o| Some(o.is_none())))) as ArrayRef,
            ),
            ("base_detected", detect(self.base)),
            ("tuned_detected", detect(self.tuned)),
        ];
        if let Some((base, tuned)) = &self.rewards {
            given.extend([("base_reward", floats(base)), ("tuned_reward", floats(tuned))]);
        }
        if let Some(answers) = &self.answers {
            let verdicts = answers.iter().map(|a| a.verdict.map(Shown::name));
            given.extend([
                (
                    "judge_output",
                    Arc::new(StringArray::from_iter_values(answers.iter().map(|a| a.text.as_str()))) as ArrayRef,
                ),
                ("verdict", Arc::new(StringArray::from_iter(verdicts)) as ArrayRef),
            ]);
        }
        Ok(Table::EvalItems.schema().assemble(given, n)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_are_within_the_margin() {
        assert_eq!(outcome(0.3, 0.5), Outcome::Tie);
        assert_eq!(outcome(-0.5, 0.5), Outcome::Tie);
        assert_eq!(outcome(0.51, 0.5), Outcome::Win);
        assert_eq!(outcome(-1e-9, 0.0), Outcome::Loss);
        assert_eq!(outcome(0.0, 0.0), Outcome::Tie);
    }

    #[test]
    fn the_order_is_balanced_and_seeded() {
        let first = (0..1000).filter(|i| tuned_first(7, &format!("p{i}"))).count();
        assert!((400..600).contains(&first), "{first}");
        assert_eq!(tuned_first(7, "p1"), tuned_first(7, "p1"));
    }

    fn tags() -> VerdictTags {
        VerdictTags::default()
    }

    #[test]
    fn every_tag_is_read_with_spaces_case_and_surrounding_text() {
        assert_eq!(parse_verdict("Assistant 1 is clearer.\n[[1]]", &tags()), Some(Shown::First));
        assert_eq!(parse_verdict("[[2]]", &tags()), Some(Shown::Second));
        assert_eq!(parse_verdict("Both are fine.\n\n  [[T]]  \n", &tags()), Some(Shown::Tie));
        assert_eq!(parse_verdict("My final verdict is [[ t ]] overall.", &tags()), Some(Shown::Tie));
        assert_eq!(parse_verdict("Verdict:[[ 2 ]].", &tags()), Some(Shown::Second));
    }

    #[test]
    fn no_tag_or_two_on_the_deciding_line_is_unparseable_and_the_last_line_decides() {
        assert_eq!(parse_verdict("Assistant 1 is better.", &tags()), None);
        assert_eq!(parse_verdict("", &tags()), None);
        assert_eq!(parse_verdict("[1] or [2]", &tags()), None, "single brackets are no tag");
        assert_eq!(parse_verdict("Either [[1]] or [[2]].", &tags()), None);
        assert_eq!(parse_verdict("At first: [[1]]\nOn reflection:\n[[2]]\nThat is all.", &tags()), Some(Shown::Second));
        let custom = VerdictTags { first: "<A>".into(), second: "<B>".into(), tie: "<TIE>".into() };
        assert_eq!(parse_verdict("so <b>", &custom), Some(Shown::Second));
    }

    #[test]
    fn the_order_is_undone() {
        assert_eq!(Shown::First.outcome(true), Outcome::Win);
        assert_eq!(Shown::First.outcome(false), Outcome::Loss);
        assert_eq!(Shown::Second.outcome(true), Outcome::Loss);
        assert_eq!(Shown::Second.outcome(false), Outcome::Win);
        assert_eq!(Shown::Tie.outcome(true), Outcome::Tie);
        let prompt = EvalPrompt { prompt_id: "p".into(), language: "en".into(), text: "Q {a}".into(), category: None };
        let (base, tuned) =
            (Response { text: "base {b}".into(), tokens: 1 }, Response { text: "tuned".into(), tokens: 1 });
        assert_eq!(judge_question("{prompt}|{a}|{b}|{x}", &prompt, (&base, &tuned), true), "Q {a}|tuned|base {b}|{x}");
        assert_eq!(judge_question("{prompt}|{a}|{b}", &prompt, (&base, &tuned), false), "Q {a}|base {b}|tuned");
    }

    #[test]
    fn lengths_for_length_control_are_characters_unless_tokens_are_asked_for() {
        use arrow::array::{Array, Int64Array};
        let prompts = [EvalPrompt { prompt_id: "p".into(), language: "fr".into(), text: "Q".into(), category: None }];
        // 9 characters in 11 bytes, 3 tokens; 2 characters, 7 tokens.
        let base = [Response { text: "été chaud".into(), tokens: 3 }];
        let tuned = [Response { text: "ok".into(), tokens: 7 }];
        let judged = |unit: &str| {
            let params: JudgeParams = serde_json::from_value(serde_json::json!({ "length_unit": unit })).unwrap();
            let rows = Judged {
                prompts: &prompts,
                base: &base,
                tuned: &tuned,
                rewards: Some((vec![0.0], vec![1.0])),
                preferences: vec![Some(1.0)],
                outcomes: vec![Some(Outcome::Win)],
                answers: None,
                judge: "reward".into(),
                tuned_id: "bundle:b+adapter:a",
            }
            .rows(&params, &["fr".to_string()])
            .unwrap();
            let length = |name: &str| rows[name].as_any().downcast_ref::<Int64Array>().unwrap().value(0);
            (length("base_length"), length("tuned_length"), rows["tuned_first"].is_null(0))
        };
        assert_eq!(judged("chars"), (9, 2, true), "the reward judge shows no order");
        assert_eq!(judged("tokens"), (3, 7, true));
    }

    #[test]
    fn languages_are_detected_among_the_candidates_only() {
        let candidates = [whatlang::Lang::Fra, whatlang::Lang::Deu, whatlang::Lang::Eng];
        let text = "Le chat dort sur le canapé pendant que la pluie tombe doucement sur la ville.";
        assert_eq!(detect_language(text, "fr", &candidates).as_deref(), Some("fr"));
        assert_eq!(detect_language(text, "ga", &candidates), None, "the detector does not know Irish");
    }
}
