//! The open-ended comparison: base and tuned policy answer the held-out
//! prompts (the prompts table's eval split), and a judge decides each pair.
//!
//! - `reward` judge: the reward model scores both responses; the preference
//!   is the difference, tuned minus base.
//! - `pairwise` judge: a policy bundle reads both responses, in an order drawn
//!   per prompt from the seed and recorded, and the preference is its
//!   log-odds of answering with the tuned response's letter.
//!
//! Within `tie_margin` the comparison is a tie. Every response's language is
//! detected too, for the language-fidelity metric.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};

use crate::ids::{stable_id, unit_interval};
use crate::model::policy::{GenerationRequest, Policy};
use crate::model::reward::RewardModel;
use crate::model::sampling::SamplingParams;
use crate::spec::common::with_instruction;
use crate::spec::evaluate::{JudgeKind, JudgeParams};
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
}

/// One policy's answer to a prompt.
#[derive(Debug, Clone)]
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
    let sql = format!(
        "SELECT prompt_id, language, text FROM (SELECT prompt_id, language, text, \
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
    let mapping = [
        Mapped { role: "prompt_id", column: &columns.prompt_id, kind: ColumnKind::Key },
        Mapped { role: "language", column: &columns.language, kind: ColumnKind::Text },
        Mapped { role: "text", column: &columns.text, kind: ColumnKind::Text },
    ];
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
    let mut responses = Vec::with_capacity(prompts.len());
    for batch in prompts.chunks(params.batch_size as usize) {
        let requests = batch
            .iter()
            .map(|p| {
                let seed = stable_id(&[&params.seed.to_string(), &p.prompt_id]);
                let seed = u64::from_str_radix(&seed, 16).expect("16 hex digits");
                let text = with_instruction(&p.text, params.instruction.as_deref(), &p.language);
                Ok(GenerationRequest { prompt: policy.tokenizer.encode_prompt(&text)?, seeds: vec![seed] })
            })
            .collect::<Result<Vec<_>, StageError>>()?;
        for mut samples in policy.generate(&requests, &sampling, params.max_new_tokens as usize)? {
            let generated = samples.remove(0);
            responses
                .push(Response { text: policy.tokenizer.decode(&generated.tokens)?, tokens: generated.tokens.len() });
        }
    }
    Ok(responses)
}

/// The reward of every (prompt, response), `batch_size` at a time.
pub fn rewards(
    model: &mut RewardModel,
    prompts: &[EvalPrompt],
    responses: &[Response],
    batch_size: usize,
) -> Result<Vec<f64>, StageError> {
    let exchanges: Vec<(&str, &str)> =
        prompts.iter().zip(responses).map(|(p, r)| (p.text.as_str(), r.text.as_str())).collect();
    let mut rewards = Vec::with_capacity(exchanges.len());
    for batch in exchanges.chunks(batch_size.max(1)) {
        rewards.extend(model.score(batch)?.into_iter().map(f64::from));
    }
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
    prompts: &[EvalPrompt],
    base: &[Response],
    tuned: &[Response],
    params: &JudgeParams,
) -> Result<Vec<f64>, StageError> {
    let firsts: Vec<bool> = prompts.iter().map(|p| tuned_first(params.seed, &p.prompt_id)).collect();
    let mut sequences = Vec::with_capacity(prompts.len() * 2);
    for (((prompt, base), tuned), &first) in prompts.iter().zip(base).zip(tuned).zip(&firsts) {
        let (a, b) = if first { (&tuned.text, &base.text) } else { (&base.text, &tuned.text) };
        let question = params.template.replace("{prompt}", &prompt.text).replace("{a}", a).replace("{b}", b);
        let prefix = judge.tokenizer.prompt_text(&question);
        for letter in ["A", "B"] {
            sequences.push(judge.tokenizer.encode_continuation(&prefix, letter)?);
        }
    }
    let mut logprobs = Vec::with_capacity(sequences.len());
    for batch in sequences.chunks(params.batch_size as usize * 2) {
        logprobs.extend(judge.logprobs(batch)?.into_iter().map(|l| f64::from(l.sum)));
    }
    // The judge's log-odds of A over B, turned towards the tuned response.
    Ok(logprobs
        .chunks(2)
        .zip(firsts)
        .map(|(pair, first)| if first { pair[0] - pair[1] } else { pair[1] - pair[0] })
        .collect())
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

/// What the judged rows are made of.
pub struct Judged<'a> {
    /// The prompts.
    pub prompts: &'a [EvalPrompt],
    /// The base's responses, one per prompt.
    pub base: &'a [Response],
    /// The tuned policy's responses.
    pub tuned: &'a [Response],
    /// Rewards of both, when a reward model is configured.
    pub rewards: Option<(Vec<f64>, Vec<f64>)>,
    /// The judge's preference for the tuned response.
    pub preferences: Vec<f64>,
    /// The verdicts: the preferences against the tie margin.
    pub outcomes: Vec<Outcome>,
    /// `reward` or `pairwise:<judge checksum>`.
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
        let tokens =
            |r: &[Response]| -> ArrayRef { Arc::new(Int64Array::from_iter_values(r.iter().map(|r| r.tokens as i64))) };
        let floats = |v: &[f64]| -> ArrayRef { Arc::new(Float64Array::from(v.to_vec())) };
        let pairwise = params.kind == JudgeKind::Pairwise;
        let order = self.prompts.iter().map(|p| pairwise.then(|| tuned_first(params.seed, &p.prompt_id)));
        let mut given = vec![
            ("task", text(OPEN_ENDED)),
            ("kind", text("judge")),
            ("language", strings(&|i| self.prompts[i].language.clone())),
            ("item_id", strings(&|i| self.prompts[i].prompt_id.clone())),
            ("variant", text(EvalModel::Tuned.name())),
            ("policy_id", text(self.tuned_id)),
            ("prompt", strings(&|i| self.prompts[i].text.clone())),
            ("base_response", strings(&|i| self.base[i].text.clone())),
            ("tuned_response", strings(&|i| self.tuned[i].text.clone())),
            ("base_tokens", tokens(self.base)),
            ("tuned_tokens", tokens(self.tuned)),
            ("judge", text(&self.judge)),
            ("tuned_first", Arc::new(BooleanArray::from_iter(order)) as ArrayRef),
            ("preference", floats(&self.preferences)),
            ("outcome", strings(&|i| self.outcomes[i].name().into())),
            ("base_detected", detect(self.base)),
            ("tuned_detected", detect(self.tuned)),
        ];
        if let Some((base, tuned)) = &self.rewards {
            given.extend([("base_reward", floats(base)), ("tuned_reward", floats(tuned))]);
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

    #[test]
    fn languages_are_detected_among_the_candidates_only() {
        let candidates = [whatlang::Lang::Fra, whatlang::Lang::Deu, whatlang::Lang::Eng];
        let text = "Le chat dort sur le canapé pendant que la pluie tombe doucement sur la ville.";
        assert_eq!(detect_language(text, "fr", &candidates).as_deref(), Some("fr"));
        assert_eq!(detect_language(text, "ga", &candidates), None, "the detector does not know Irish");
    }
}
