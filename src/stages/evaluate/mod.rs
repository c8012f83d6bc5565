//! The evaluate stage: the recipe's verdict, base policy against tuned
//! policy, written item by item to `eval_items` (the report stage turns the
//! items into metrics with intervals).
//!
//! - **choice** tasks ([`choice`]): every option of every item scored by its
//!   log-likelihood under each model.
//! - **judge** ([`judge`]): both models answer the eval split's prompts and a
//!   judge decides each pair; each response's language is detected.
//!
//! The tuned policy is the base bundle with the tune stage's adapter (read
//! from the `train_log` version's artifacts, checked against its manifest),
//! or `models.policy_adapter` in a pipeline that does not tune. The base is
//! the bundle without any adapter. Both are built by merging, as everywhere.
//!
//! Task files are read and checked before any model runs. The stage is not
//! resumable: a failed evaluation is rerun whole.

pub mod choice;
pub mod items;
pub mod judge;

use super::stage::{Stage, StageError, StageInput, adapter_from_files, stats};
use crate::model::bundle::Bundle;
use crate::model::lora::{ADAPTER_CONFIG, ADAPTER_DIR, ADAPTER_WEIGHTS, Adapter};
use crate::model::policy::{Policy, policy_id};
use crate::model::reward::RewardModel;
use crate::spec::evaluate::{EvaluateParams, JudgeKind, JudgeParams};
use crate::spec::{PipelineSpec, StageName};
use crate::store::Table;
use crate::store::manifest::Stats;
use crate::store::tables::TableWriter;
use crate::vocab::eval::EvalModel;
use crate::vocab::roles::ModelRole;
use items::ChoiceItem;
use judge::{EvalPrompt, Response};

/// The evaluate stage.
pub struct Evaluate;

impl Stage for Evaluate {
    type Params = EvaluateParams;
    const NAME: StageName = StageName::Evaluate;

    fn params(spec: &PipelineSpec) -> Option<EvaluateParams> {
        spec.stages.evaluate.clone()
    }

    /// The policy (base and tuned), the reward model when configured (it
    /// scores the judged responses), the pairwise judge.
    fn models(spec: &PipelineSpec) -> Vec<(ModelRole, String)> {
        let models = &spec.models;
        let Some(judge) = spec.stages.evaluate.as_ref().and_then(|e| e.judge.as_ref()) else {
            return models.policy.clone().map(|p| (ModelRole::Policy, p)).into_iter().collect();
        };
        let pairwise = (judge.kind == JudgeKind::Pairwise).then(|| models.judge.clone()).flatten();
        let roles = [
            (ModelRole::Policy, models.policy.clone()),
            (ModelRole::Reward, models.reward.clone()),
            (ModelRole::Judge, pairwise),
        ];
        roles.into_iter().filter_map(|(role, location)| location.map(|l| (role, l))).collect()
    }

    fn external_inputs(spec: &PipelineSpec) -> Vec<(String, String)> {
        let evaluate = spec.stages.evaluate.as_ref();
        let tasks = evaluate.into_iter().flat_map(|e| e.choice.iter().enumerate());
        let tasks = tasks.map(|(i, t)| (format!("stages.evaluate.choice[{i}].source"), t.source.clone()));
        let judge = evaluate.and_then(|e| e.judge.as_ref()?.prompts.as_ref());
        let judge = judge.map(|p| ("stages.evaluate.judge.prompts.source".to_string(), p.source.clone()));
        tasks.chain(judge).collect()
    }

    async fn run(input: &StageInput<'_>, params: &EvaluateParams, sink: &mut TableWriter) -> Result<Stats, StageError> {
        let bundle = input.bundle(ModelRole::Policy)?;
        let (adapter, adapter_checksum) = tuned_adapter(input, &bundle).await?;
        let mut tasks = Vec::new();
        let mut skipped = 0;
        for (index, task) in params.choice.iter().enumerate() {
            let (items, other_languages) = items::read_task(input, index, task).await?;
            skipped += other_languages;
            tasks.push(items);
        }
        let prompts = match &params.judge {
            Some(judge) => judge::eval_prompts(input, judge).await?,
            None => vec![],
        };
        let variants = [
            (EvalModel::Base, None, policy_id(&bundle.checksum, None)),
            (EvalModel::Tuned, Some(&adapter), policy_id(&bundle.checksum, Some(&adapter_checksum))),
        ];
        let mut responses = Vec::new();
        for (variant, adapter, id) in &variants {
            let mut policy = Policy::load_tuned(bundle.clone(), *adapter, &input.session)?;
            tracing::info!(variant = variant.name(), target = ?policy.target(), "evaluate: policy loaded");
            score_tasks(input, params, &tasks, &mut policy, (*variant, id), sink).await?;
            if let Some(judge) = &params.judge {
                input.progress.set_message(format!("{variant}: answering {} eval prompts", prompts.len()));
                responses.push(judge::respond(&mut policy, &prompts, judge)?);
            }
        }
        let mut stats = stats([
            ("choice_items", tasks.iter().map(|t| t.len() as u64).sum()),
            ("skipped_items_other_languages", skipped),
        ]);
        if let (Some(judge), [base, tuned]) = (&params.judge, responses.as_slice()) {
            let judged = judge_responses(input, judge, &prompts, (base, tuned), &variants[1].2)?;
            let batch = judged.rows(judge, input.languages)?;
            sink.write(&batch).await?;
            stats.extend(outcome_counts(&judged));
        }
        Ok(stats)
    }
}

/// The tuned adapter and its checksum: the tune stage's, else `models.policy_adapter`.
async fn tuned_adapter(input: &StageInput<'_>, bundle: &Bundle) -> Result<(Adapter, String), StageError> {
    // The plan registers `train_log` exactly when the pipeline tunes.
    if !input.inputs.contains_key(&Table::TrainLog) {
        let adapter = input.policy_adapter(bundle).await?;
        return adapter.ok_or_else(|| StageError::Input {
            file: "[models]".into(),
            problem: "evaluate needs a tuned policy: add [stages.tune] or set `policy_adapter`".into(),
        });
    }
    let dir = ADAPTER_DIR;
    let weights = input.input_artifact(Table::TrainLog, &format!("{dir}/{ADAPTER_WEIGHTS}")).await?;
    let config = input.input_artifact(Table::TrainLog, &format!("{dir}/{ADAPTER_CONFIG}")).await?;
    adapter_from_files(bundle, &weights, &config, "train_log adapter")
}

/// Scores every choice task with `policy` and writes its rows.
async fn score_tasks(
    input: &StageInput<'_>,
    params: &EvaluateParams,
    tasks: &[Vec<ChoiceItem>],
    policy: &mut Policy,
    (variant, id): (EvalModel, &str),
    sink: &mut TableWriter,
) -> Result<(), StageError> {
    for (task, items) in params.choice.iter().zip(tasks) {
        input.progress.set_message(format!("{variant}: {} ({} items)", task.name, items.len()));
        let file = format!("stages.evaluate.choice `{}` ({})", task.name, task.source);
        let scores = choice::score_items(policy, items, task.prompt, params.batch_size as usize, &file)?;
        sink.write(&choice::rows(&task.name, variant.name(), id, items, &scores)?).await?;
        input.progress.set_position(sink.rows());
    }
    Ok(())
}

/// Judges every (base, tuned) response pair; rewards are computed whenever
/// a reward model is configured (the report shows their distributions).
fn judge_responses<'a>(
    input: &StageInput<'_>,
    params: &JudgeParams,
    prompts: &'a [EvalPrompt],
    (base, tuned): (&'a [Response], &'a [Response]),
    tuned_id: &'a str,
) -> Result<judge::Judged<'a>, StageError> {
    input.progress.set_message(format!("judging {} pairs", prompts.len()));
    let config = input.session;
    let batch = params.batch_size as usize;
    let rewards = match input.models.contains_key(&ModelRole::Reward) {
        true => {
            let mut model = RewardModel::load(input.bundle(ModelRole::Reward)?, &config)?;
            Some((
                judge::rewards(&mut model, prompts, base, batch)?,
                judge::rewards(&mut model, prompts, tuned, batch)?,
            ))
        }
        false => None,
    };
    let (preferences, judge) = match params.kind {
        JudgeKind::Reward => {
            let (b, t) = rewards.as_ref().expect("validation requires models.reward for the reward judge");
            (t.iter().zip(b).map(|(t, b)| t - b).collect(), "reward".to_string())
        }
        JudgeKind::Pairwise => {
            let bundle = input.bundle(ModelRole::Judge)?;
            let name = format!("pairwise:{}", &bundle.checksum[..16]);
            let mut model = Policy::load(bundle, &config)?;
            (judge::pairwise_preferences(&mut model, prompts, base, tuned, params)?, name)
        }
    };
    let outcomes = preferences.iter().map(|&p| judge::outcome(p, params.tie_margin)).collect();
    Ok(judge::Judged { prompts, base, tuned, rewards, preferences, outcomes, judge, tuned_id })
}

fn outcome_counts(judged: &judge::Judged<'_>) -> Stats {
    use crate::vocab::stats::Outcome;
    let count = |o| judged.outcomes.iter().filter(|&&x| x == o).count() as u64;
    stats([
        ("judged_prompts", judged.outcomes.len() as u64),
        ("wins", count(Outcome::Win)),
        ("ties", count(Outcome::Tie)),
        ("losses", count(Outcome::Loss)),
    ])
}
