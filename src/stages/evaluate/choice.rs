//! Multiple-choice scoring: every option's log-likelihood given the context,
//! under one policy, batched through the bundle's log-prob graph.
//!
//! Two predictions per item, as lm-evaluation-harness reports them: the
//! option with the highest summed log-likelihood (`accuracy`), and the one
//! with the highest log-likelihood per UTF-8 byte of the option
//! (`accuracy_norm`), which does not favour short options.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray};

use super::items::ChoiceItem;
use crate::model::batching::{BatchLimits, in_batches};
use crate::model::policy::Policy;
use crate::model::tokenizer::ChatTokenizer;
use crate::spec::evaluate::ChoicePrompt;
use crate::stages::stage::StageError;
use crate::store::Table;

/// One item scored by one model.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceScore {
    /// Summed log-likelihood of each option.
    pub logprobs: Vec<f64>,
    /// Tokens of each option.
    pub tokens: Vec<usize>,
    /// Option with the highest summed log-likelihood.
    pub predicted: usize,
    /// Option with the highest log-likelihood per byte.
    pub predicted_norm: usize,
}

/// A tokenized (item, option) sequence.
struct Sequence {
    item: usize,
    ids: Vec<i64>,
    start: usize,
}

/// Scores `items` with `policy` in batches within `limits` (shortest
/// first, so a batch pads little). `file` names the task in errors.
pub fn score_items(
    policy: &mut Policy,
    items: &[ChoiceItem],
    layout: ChoicePrompt,
    limits: BatchLimits,
    file: &str,
) -> Result<Vec<ChoiceScore>, StageError> {
    let max_length = policy.bundle.manifest.architecture.max_position_embeddings;
    let sequences = encode_items(&policy.tokenizer, items, layout, max_length, file)?;
    let inputs: Vec<(Vec<i64>, usize)> = sequences.iter().map(|s| (s.ids.clone(), s.start)).collect();
    let logprobs = in_batches(&inputs, |(ids, _)| ids.len(), limits, |batch| policy.logprobs(batch))?;
    let sums = logprobs.iter().map(|l| f64::from(l.sum));
    let mut scores: Vec<ChoiceScore> = items
        .iter()
        .map(|_| ChoiceScore { logprobs: vec![], tokens: vec![], predicted: 0, predicted_norm: 0 })
        .collect();
    for (sequence, sum) in sequences.iter().zip(sums) {
        let score = &mut scores[sequence.item];
        score.logprobs.push(sum);
        score.tokens.push(sequence.ids.len() - sequence.start);
    }
    for (score, item) in scores.iter_mut().zip(items) {
        let per_byte: Vec<f64> = score.logprobs.iter().zip(&item.options).map(|(l, o)| l / o.len() as f64).collect();
        score.predicted = argmax(&score.logprobs);
        score.predicted_norm = argmax(&per_byte);
    }
    Ok(scores)
}

/// The first index of the largest value.
fn argmax(values: &[f64]) -> usize {
    let best = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    values.iter().position(|&v| v == best).unwrap_or(0)
}

fn encode_items(
    tokenizer: &ChatTokenizer,
    items: &[ChoiceItem],
    layout: ChoicePrompt,
    max_length: usize,
    file: &str,
) -> Result<Vec<Sequence>, StageError> {
    let mut sequences = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let prefix = match layout {
            ChoicePrompt::Chat => tokenizer.prompt_text(&item.context),
            ChoicePrompt::Raw => item.context.clone(),
        };
        for option in &item.options {
            let (ids, start) = tokenizer.encode_continuation(&prefix, option)?;
            let problem = if start == 0 {
                Some("the context encodes to no tokens, so the option's first token has nothing to condition on; use prompt = \"chat\"".to_string())
            } else if start == ids.len() {
                Some(format!("option {option:?} encodes to no tokens of its own"))
            } else if ids.len() > max_length {
                Some(format!("{} tokens exceed the policy's {max_length} positions", ids.len()))
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(StageError::Row { file: file.into(), row: format!("item_id={}", item.item_id), problem });
            }
            sequences.push(Sequence { item: index, ids, start });
        }
    }
    Ok(sequences)
}

/// The `eval_items` rows of `task`'s items scored by the model `variant`.
pub fn rows(
    task: &str,
    variant: &str,
    policy_id: &str,
    items: &[ChoiceItem],
    scores: &[ChoiceScore],
) -> Result<RecordBatch, StageError> {
    let n = items.len();
    let text = |value: &str| -> ArrayRef { Arc::new(StringArray::from(vec![value; n])) };
    let strings = |f: &dyn Fn(usize) -> String| -> ArrayRef { Arc::new(StringArray::from_iter_values((0..n).map(f))) };
    let ints = |f: &dyn Fn(usize) -> usize| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values((0..n).map(|i| f(i) as i64)))
    };
    let bools =
        |f: &dyn Fn(usize) -> bool| -> ArrayRef { Arc::new(BooleanArray::from_iter((0..n).map(|i| Some(f(i))))) };
    let json = |f: &dyn Fn(usize) -> serde_json::Value| strings(&|i| f(i).to_string());
    let given = vec![
        ("task", text(task)),
        ("kind", text("choice")),
        ("language", strings(&|i| items[i].language.clone())),
        ("item_id", strings(&|i| items[i].item_id.clone())),
        ("variant", text(variant)),
        ("policy_id", text(policy_id)),
        ("gold", ints(&|i| items[i].gold)),
        ("predicted", ints(&|i| scores[i].predicted)),
        ("predicted_norm", ints(&|i| scores[i].predicted_norm)),
        ("correct", bools(&|i| scores[i].predicted == items[i].gold)),
        ("correct_norm", bools(&|i| scores[i].predicted_norm == items[i].gold)),
        ("option_logprobs", json(&|i| serde_json::json!(scores[i].logprobs))),
        ("option_tokens", json(&|i| serde_json::json!(scores[i].tokens))),
    ];
    Ok(Table::EvalItems.schema().assemble(given, n)?)
}

#[cfg(test)]
mod tests {
    use super::argmax;

    #[test]
    fn argmax_takes_the_first_of_equal_values() {
        assert_eq!(argmax(&[-3.0, -1.0, -1.0]), 1);
        assert_eq!(argmax(&[-0.5]), 0);
    }
}
