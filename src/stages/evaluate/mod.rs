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
//! Task files (and a judge template file) are read and checked before any
//! model runs.
//!
//! The stage is resumable, like generate: its work is a fixed list of parts
//! — for each model, each choice task's items in blocks of `items_per_part`;
//! then the judged prompts in blocks of `items_per_part` — and each part's
//! rows are committed as a chunk. The answers both policies give the judged
//! prompts are kept as resume state (`_resume/<scope>/responses/`) until
//! their part is judged. A rerun after a crash skips committed parts, loads
//! a model only when a part still needs it, and, every draw being seeded
//! per prompt, writes exactly the rows an uninterrupted run writes.

pub mod choice;
pub mod items;
pub mod judge;

use super::stage::{Stage, StageError, StageInput, adapter_from_files, stats};
use crate::model::batching::BatchLimits;
use crate::model::bundle::Bundle;
use crate::model::lora::{ADAPTER_CONFIG, ADAPTER_DIR, ADAPTER_WEIGHTS, Adapter};
use crate::model::policy::{Policy, policy_id};
use crate::model::reward::RewardModel;
use crate::spec::evaluate::{EvaluateParams, JudgeKind, JudgeParams};
use crate::spec::{PipelineSpec, StageName};
use crate::store::manifest::Stats;
use crate::store::storage::read_input_file;
use crate::store::tables::TableWriter;
use crate::store::{StoreError, Table};
use crate::vocab::eval::EvalModel;
use crate::vocab::roles::ModelRole;
use crate::vocab::stats::Outcome;
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
    /// scores the judged responses), the pairwise or generative judge.
    fn models(spec: &PipelineSpec) -> Vec<(ModelRole, String)> {
        let models = &spec.models;
        let Some(judge) = spec.stages.evaluate.as_ref().and_then(|e| e.judge.as_ref()) else {
            return models.policy.clone().map(|p| (ModelRole::Policy, p)).into_iter().collect();
        };
        let asks_judge = matches!(judge.kind, JudgeKind::Pairwise | JudgeKind::Generative);
        let pairwise = asks_judge.then(|| models.judge.clone()).flatten();
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
        let judge = evaluate.and_then(|e| e.judge.as_ref());
        let prompts = judge.and_then(|j| j.prompts.as_ref());
        let prompts = prompts.map(|p| ("stages.evaluate.judge.prompts.source".to_string(), p.source.clone()));
        let template = judge.and_then(|j| j.template_file.clone());
        let template = template.map(|t| ("stages.evaluate.judge.template_file".to_string(), t));
        tasks.chain(prompts).chain(template).collect()
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
        let (prompts, template) = match &params.judge {
            Some(judge) => (judge::eval_prompts(input, judge).await?, judge_template(input, judge).await?),
            None => (vec![], String::new()),
        };
        let variants = [
            (EvalModel::Base, None, policy_id(&bundle.checksum, None)),
            (EvalModel::Tuned, Some(&adapter), policy_id(&bundle.checksum, Some(&adapter_checksum))),
        ];
        let parts = Parts::new(&tasks, prompts.len(), params.items_per_part as usize);
        let done = if input.resume { sink.resume_chunks().await? } else { Default::default() };
        let mut saved = SavedState { sink, resume: input.resume, saved: Default::default() };
        for (side, (variant, adapter, id)) in variants.iter().enumerate() {
            let choice_todo: Vec<_> = parts.choice(side).filter(|p| !done.contains(&p.chunk)).collect();
            let mut answer_todo = Vec::new();
            for part in parts.judged().filter(|p| !done.contains(&p.chunk)) {
                if saved.responses(*variant, part.block).await?.is_none() {
                    answer_todo.push(part);
                }
            }
            if choice_todo.is_empty() && answer_todo.is_empty() {
                continue;
            }
            let mut policy = Policy::load_tuned(bundle.clone(), *adapter, &input.session)?;
            tracing::info!(variant = variant.name(), target = ?policy.target(), "evaluate: policy loaded");
            for part in choice_todo {
                score_part(input, params, &tasks, &mut policy, (*variant, id), &part, saved.sink).await?;
            }
            if let Some(judge) = &params.judge {
                for part in answer_todo {
                    input.progress.set_message(format!("{variant}: answering eval prompts, part {}", part.block));
                    let answers = judge::respond(&mut policy, &prompts[part.range.clone()], judge)?;
                    saved.put_responses(*variant, part.block, &answers).await?;
                }
            }
        }
        let mut stats = stats([
            ("choice_items", tasks.iter().map(|t| t.len() as u64).sum()),
            ("skipped_items_other_languages", skipped),
            ("resumed_parts", done.len() as u64),
        ]);
        if let Some(judge) = &params.judge {
            let mut judges =
                Judges { max_batch_tokens: params.max_batch_tokens.map(|t| t as usize), ..Default::default() };
            let mut counts = OutcomeCounts::default();
            for part in parts.judged() {
                if !done.contains(&part.chunk) {
                    let [base, tuned] = [EvalModel::Base, EvalModel::Tuned].map(|v| saved.responses(v, part.block));
                    let (base, tuned) = (base.await?.expect("answered above"), tuned.await?.expect("answered above"));
                    let prompts = &prompts[part.range.clone()];
                    let judged = judges.judge(input, judge, &template, prompts, (&base, &tuned), &variants[1].2)?;
                    saved.sink.write(&judged.rows(judge, input.languages)?).await?;
                    saved.put_counts(part.block, &OutcomeCounts::of(&judged.outcomes)).await?;
                    saved.sink.commit_chunk(part.chunk).await?;
                    input.progress.set_position(saved.sink.rows());
                }
                counts.add(&saved.counts(part.block).await?);
            }
            stats.extend(counts.stats(prompts.len() as u64));
        }
        Ok(stats)
    }
}

/// The judge's prompt: the inline template or the kind's default, or the
/// template file's text; checked for what the kind needs.
async fn judge_template(input: &StageInput<'_>, judge: &JudgeParams) -> Result<String, StageError> {
    let Some(location) = &judge.template_file else { return Ok(judge.template()) };
    let bytes = read_input_file(location, input.base_dir, input.storage_options, input.retry).await?;
    let file = format!("stages.evaluate.judge.template_file = {location:?}");
    let text = String::from_utf8(bytes.to_vec())
        .map_err(|e| StageError::Input { file: file.clone(), problem: format!("is not UTF-8 text: {e}") })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text).replace("\r\n", "\n");
    judge.check_template(&text).map_err(|problem| StageError::Input { file, problem })?;
    Ok(text)
}

/// One part of the stage's work, committed as chunk `chunk`.
#[derive(Debug, Clone)]
struct Part {
    /// Chunk number (the part's place in the fixed list of parts).
    chunk: u64,
    /// Choice parts: the task's index. Judged parts: unused.
    task: usize,
    /// The block's number within its task, or among the judged prompts.
    block: usize,
    /// The items (or prompts) of the block.
    range: std::ops::Range<usize>,
}

/// The stage's fixed list of parts: for the base, then the tuned model,
/// each task's items in blocks; then the judged prompts in blocks.
struct Parts {
    /// Per model side (0 base, 1 tuned): its choice parts.
    choice: [Vec<Part>; 2],
    /// The judged parts.
    judged: Vec<Part>,
}

impl Parts {
    fn new(tasks: &[Vec<ChoiceItem>], prompts: usize, size: usize) -> Parts {
        let mut chunk = 0;
        let mut next = |task, block, range| {
            chunk += 1;
            Part { chunk: chunk - 1, task, block, range }
        };
        let blocks = |n: usize| (0..n.div_ceil(size)).map(move |b| (b, b * size..((b + 1) * size).min(n)));
        let mut choice = [vec![], vec![]];
        for side in &mut choice {
            for (task, items) in tasks.iter().enumerate() {
                side.extend(blocks(items.len()).map(|(block, range)| next(task, block, range)));
            }
        }
        let judged = blocks(prompts).map(|(block, range)| next(0, block, range)).collect();
        Parts { choice, judged }
    }

    fn choice(&self, side: usize) -> impl Iterator<Item = Part> + '_ {
        self.choice[side].iter().cloned()
    }

    fn judged(&self) -> impl Iterator<Item = Part> + '_ {
        self.judged.iter().cloned()
    }
}

/// The stage's resume state beside its parts: each judged block's answers
/// per model, and each judged part's outcome counts (so a resumed run's
/// manifest counts what an uninterrupted one does).
struct SavedState<'w> {
    sink: &'w mut TableWriter,
    /// Whether state left by an earlier attempt may be read.
    resume: bool,
    /// The answers this attempt saved (readable whether resuming or not).
    saved: std::collections::BTreeSet<(EvalModel, usize)>,
}

impl SavedState<'_> {
    fn path(&self, file: &str) -> object_store::path::Path {
        self.sink.resume_path(file)
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, file: &str) -> Result<Option<T>, StageError> {
        let path = self.path(file);
        let Some(bytes) = self.sink.storage().get_if_exists(&path).await? else { return Ok(None) };
        let url = self.sink.storage().url_of(&path);
        Ok(Some(serde_json::from_slice(&bytes).map_err(|source| StoreError::Json { url, source })?))
    }

    async fn put<T: serde::Serialize>(&self, file: &str, value: &T) -> Result<(), StageError> {
        let path = self.path(file);
        let json = serde_json::to_vec(value)
            .map_err(|source| StoreError::Json { url: self.sink.storage().url_of(&path), source })?;
        Ok(self.sink.storage().put(&path, json.into()).await?)
    }

    fn responses_file(variant: EvalModel, block: usize) -> String {
        format!("responses/{variant}/{block:05}.json")
    }

    /// The answers `variant` gave the prompts of judged block `block`, when saved
    /// (by this attempt, or by an earlier one when resuming).
    async fn responses(&self, variant: EvalModel, block: usize) -> Result<Option<Vec<Response>>, StageError> {
        match self.resume || self.saved.contains(&(variant, block)) {
            true => self.get(&Self::responses_file(variant, block)).await,
            false => Ok(None),
        }
    }

    async fn put_responses(
        &mut self,
        variant: EvalModel,
        block: usize,
        answers: &[Response],
    ) -> Result<(), StageError> {
        self.put(&Self::responses_file(variant, block), &answers).await?;
        self.saved.insert((variant, block));
        Ok(())
    }

    async fn put_counts(&self, block: usize, counts: &OutcomeCounts) -> Result<(), StageError> {
        self.put(&format!("outcomes/{block:05}.json"), counts).await
    }

    async fn counts(&self, block: usize) -> Result<OutcomeCounts, StageError> {
        let file = format!("outcomes/{block:05}.json");
        let url = self.sink.storage().url_of(&self.path(&file));
        self.get(&file).await?.ok_or_else(|| StageError::Input {
            file: url,
            problem: "a committed judged part has no outcome counts: rerun with --force".into(),
        })
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

/// Scores one choice part with `policy`, writes its rows and commits them.
async fn score_part(
    input: &StageInput<'_>,
    params: &EvaluateParams,
    tasks: &[Vec<ChoiceItem>],
    policy: &mut Policy,
    (variant, id): (EvalModel, &str),
    part: &Part,
    sink: &mut TableWriter,
) -> Result<(), StageError> {
    let task = &params.choice[part.task];
    let items = &tasks[part.task][part.range.clone()];
    input.progress.set_message(format!("{variant}: {} (part {}, {} items)", task.name, part.block, items.len()));
    let file = format!("stages.evaluate.choice `{}` ({})", task.name, task.source);
    let limits =
        BatchLimits { max_rows: params.batch_size as usize, max_tokens: params.max_batch_tokens.map(|t| t as usize) };
    let scores = choice::score_items(policy, items, task.prompt, limits, &file)?;
    sink.write(&choice::rows(&task.name, variant.name(), id, items, &scores)?).await?;
    sink.commit_chunk(part.chunk).await?;
    input.progress.set_position(sink.rows());
    Ok(())
}

/// The judging models, loaded when first needed and kept for every part.
#[derive(Default)]
struct Judges {
    reward: Option<RewardModel>,
    judge: Option<(Policy, String)>,
    /// `[stages.evaluate] max_batch_tokens`: bounds the scoring batches too.
    max_batch_tokens: Option<usize>,
}

impl Judges {
    /// Judges every (base, tuned) response pair of one part; rewards are
    /// computed whenever a reward model is configured (the report shows their
    /// distributions).
    fn judge<'a>(
        &mut self,
        input: &StageInput<'_>,
        params: &JudgeParams,
        template: &str,
        prompts: &'a [EvalPrompt],
        (base, tuned): (&'a [Response], &'a [Response]),
        tuned_id: &'a str,
    ) -> Result<judge::Judged<'a>, StageError> {
        input.progress.set_message(format!("judging {} pairs", prompts.len()));
        let batch = BatchLimits { max_rows: params.batch_size as usize, max_tokens: self.max_batch_tokens };
        let rewards = match input.models.contains_key(&ModelRole::Reward) {
            true => {
                let model = match &mut self.reward {
                    Some(model) => model,
                    empty => empty.insert(RewardModel::load(input.bundle(ModelRole::Reward)?, &input.session)?),
                };
                Some((judge::rewards(model, prompts, base, batch)?, judge::rewards(model, prompts, tuned, batch)?))
            }
            false => None,
        };
        let shown = (prompts, base, tuned);
        let mut answers = None;
        let (preferences, judge): (Vec<Option<f64>>, String) = match params.kind {
            JudgeKind::Reward => {
                let (b, t) = rewards.as_ref().expect("validation requires models.reward for the reward judge");
                (t.iter().zip(b).map(|(t, b)| Some(t - b)).collect(), "reward".to_string())
            }
            JudgeKind::Pairwise => {
                let (model, name) = self.judge_policy(input, "pairwise")?;
                let pairs = BatchLimits { max_rows: batch.max_rows * 2, ..batch };
                let preferences = judge::pairwise_preferences(model, shown, params, template, pairs)?;
                (preferences.into_iter().map(Some).collect(), name)
            }
            JudgeKind::Generative => {
                let (model, name) = self.judge_policy(input, "generative")?;
                let judged = judge::generative_verdicts(model, shown, params, template)?;
                let preferences = judged
                    .iter()
                    .zip(prompts)
                    .map(|(a, p)| {
                        a.verdict.map(|v| v.outcome(judge::tuned_first(params.seed, &p.prompt_id)).score() * 2.0 - 1.0)
                    })
                    .collect();
                answers = Some(judged);
                (preferences, name)
            }
        };
        let outcomes = preferences.iter().map(|p| p.map(|p| judge::outcome(p, params.tie_margin))).collect();
        Ok(judge::Judged { prompts, base, tuned, rewards, preferences, outcomes, answers, judge, tuned_id })
    }

    /// The judge policy (`models.judge`) and its name in `eval_items.judge`.
    fn judge_policy(&mut self, input: &StageInput<'_>, kind: &str) -> Result<(&mut Policy, String), StageError> {
        if self.judge.is_none() {
            let bundle = input.bundle(ModelRole::Judge)?;
            let name = format!("{kind}:{}", &bundle.checksum[..16]);
            self.judge = Some((Policy::load(bundle, &input.session)?, name));
        }
        let (model, name) = self.judge.as_mut().expect("loaded above");
        Ok((model, name.clone()))
    }
}

/// Wins, ties, losses and unparseable verdicts of judged prompts.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct OutcomeCounts {
    wins: u64,
    ties: u64,
    losses: u64,
    unparseable: u64,
}

impl OutcomeCounts {
    fn of(outcomes: &[Option<Outcome>]) -> OutcomeCounts {
        let count = |o| outcomes.iter().filter(|&&x| x == o).count() as u64;
        OutcomeCounts {
            wins: count(Some(Outcome::Win)),
            ties: count(Some(Outcome::Tie)),
            losses: count(Some(Outcome::Loss)),
            unparseable: count(None),
        }
    }

    fn add(&mut self, other: &OutcomeCounts) {
        self.wins += other.wins;
        self.ties += other.ties;
        self.losses += other.losses;
        self.unparseable += other.unparseable;
    }

    fn stats(&self, judged: u64) -> Stats {
        stats([
            ("judged_prompts", judged),
            ("wins", self.wins),
            ("ties", self.ties),
            ("losses", self.losses),
            ("unparseable", self.unparseable),
        ])
    }
}
