//! The score stage: one reward per generation.
//!
//! Either the reward bundle scores every (prompt, response) with its chat
//! template on ONNX Runtime — in parts of `rows_per_part` generations, each
//! committed on its own so a crashed run resumes, with batches formed from
//! sequences of similar length — or rewards computed elsewhere are imported
//! (`[stages.score.import]`) and matched by (prompt_id, sample_idx).
//!
//! A NaN or infinite reward is an error naming the row: it would otherwise
//! poison every mean and std of its pool. A missing (null) reward is kept and
//! counted; the pairs stage excludes such rows.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, RecordBatch, StringArray};
use futures::StreamExt;

use super::files::{ColumnKind, Mapped, file_name, open_keyed_import};
use super::stage::{Stage, StageError, StageInput, stats};
use crate::model::batching::{BatchLimits, length_sorted_batches};
use crate::model::reward::RewardModel;
use crate::spec::score::{ScoreParams, ScoresImport, TooLong};
use crate::spec::{PipelineSpec, StageName};
use crate::store::manifest::Stats;
use crate::store::rows::{Chunks, count, first_row, text_at};
use crate::store::schema::plain_strings;
use crate::store::tables::TableWriter;
use crate::store::{StoreError, Table};
use crate::vocab::roles::ModelRole;

const IMPORTED: &str = "imported_scores";

/// The score stage.
pub struct Score;

impl Stage for Score {
    type Params = ScoreParams;
    const NAME: StageName = StageName::Score;
    const SHARDS: bool = true;

    fn params(spec: &PipelineSpec) -> Option<ScoreParams> {
        spec.stages.score.clone()
    }

    fn models(spec: &PipelineSpec) -> Vec<(ModelRole, String)> {
        let scored = spec.stages.score.as_ref().is_some_and(|s| s.import.is_none());
        let reward = spec.models.reward.clone().filter(|_| scored);
        reward.map(|r| (ModelRole::Reward, r)).into_iter().collect()
    }

    fn external_inputs(spec: &PipelineSpec) -> Vec<(String, String)> {
        let import = spec.stages.score.as_ref().and_then(|s| s.import.as_ref());
        import.map(|i| ("stages.score.import.path".to_string(), i.path.clone())).into_iter().collect()
    }

    async fn run(input: &StageInput<'_>, params: &ScoreParams, sink: &mut TableWriter) -> Result<Stats, StageError> {
        match &params.import {
            Some(import) => import_scores(input, import, sink).await,
            None => score_with_model(input, params, sink).await,
        }
    }
}

/// One response to score.
struct Exchange {
    generation_id: String,
    prompt: String,
    response: String,
}

async fn score_with_model(
    input: &StageInput<'_>,
    params: &ScoreParams,
    sink: &mut TableWriter,
) -> Result<Stats, StageError> {
    let bundle = input.bundle(ModelRole::Reward)?;
    let label = format!("bundle:{}", &bundle.checksum[..16]);
    let mut model = RewardModel::load(bundle, &input.session)?;
    let done = if input.resume { sink.resume_chunks().await? } else { Default::default() };
    let sql = "SELECT g.generation_id, p.text AS prompt, g.text AS response FROM generations AS g \
               JOIN prompts AS p ON p.prompt_id = g.prompt_id";
    // In a sharded run the generations table holds this shard's rows only.
    let row = |batch: &RecordBatch, i: usize| {
        Some(Exchange {
            generation_id: text_at(batch, "generation_id", i),
            prompt: text_at(batch, "prompt", i),
            response: text_at(batch, "response", i),
        })
    };
    let mut chunks = Chunks::new(input.ctx, sql, "generations", params.rows_per_part as usize, row).await?;
    let context = model.bundle.manifest.architecture.max_position_embeddings;
    let mut scorer = Scorer {
        model: &mut model,
        label: &label,
        batches: BatchLimits {
            max_rows: params.batch_size as usize,
            max_tokens: params.max_batch_tokens.map(|t| t as usize),
        },
        limit: (context, params.too_long),
        scored: 0,
        too_long: 0,
    };
    while let Some((index, exchanges)) = chunks.next().await? {
        scorer.chunk(index, &exchanges, &done, sink, input).await?;
    }
    Ok(stats([
        ("scores", sink.rows()),
        ("scored_now", scorer.scored),
        ("too_long_now", scorer.too_long),
        ("resumed_parts", done.len() as u64),
    ]))
}

struct Scorer<'m> {
    model: &'m mut RewardModel,
    label: &'m str,
    batches: BatchLimits,
    /// The reward model's context and what to do with longer exchanges.
    limit: (usize, TooLong),
    scored: u64,
    /// Exchanges skipped or truncated for their length, in this run.
    too_long: u64,
}

impl Scorer<'_> {
    async fn chunk(
        &mut self,
        index: u64,
        exchanges: &[Exchange],
        done: &std::collections::BTreeSet<u64>,
        sink: &mut TableWriter,
        input: &StageInput<'_>,
    ) -> Result<(), StageError> {
        if done.contains(&index) {
            return Ok(());
        }
        let rewards = self.score(exchanges)?;
        let ids: Vec<&str> = exchanges.iter().map(|e| e.generation_id.as_str()).collect();
        let given: Vec<(&str, ArrayRef)> = vec![
            ("generation_id", Arc::new(StringArray::from(ids))),
            ("reward", Arc::new(Float64Array::from(rewards))),
            ("reward_model", Arc::new(StringArray::from(vec![self.label; exchanges.len()]))),
        ];
        sink.write(&Table::Scores.schema().assemble(given, exchanges.len())?).await?;
        sink.commit_chunk(index).await?;
        self.scored += exchanges.len() as u64;
        input.progress.set_position(sink.rows());
        Ok(())
    }

    /// Rewards in `exchanges` order (`None`: skipped as too long); batches
    /// group sequences of similar length so little compute goes to padding.
    fn score(&mut self, exchanges: &[Exchange]) -> Result<Vec<Option<f64>>, StageError> {
        let (context, too_long) = self.limit;
        let mut encoded = Vec::with_capacity(exchanges.len());
        for exchange in exchanges {
            let (mut ids, _) = self.model.tokenizer.encode_exchange(&exchange.prompt, &exchange.response)?;
            let fits = ids.len() <= context;
            self.too_long += u64::from(!fits);
            encoded.push(match (fits, too_long) {
                (true, _) => Some(ids),
                (false, TooLong::Skip) => None,
                (false, TooLong::Truncate) => {
                    ids.truncate(context);
                    Some(ids)
                }
            });
        }
        let kept: Vec<usize> = (0..encoded.len()).filter(|&i| encoded[i].is_some()).collect();
        let lengths: Vec<usize> = kept.iter().map(|&i| encoded[i].as_ref().map_or(0, Vec::len)).collect();
        let mut rewards = vec![None; encoded.len()];
        for batch in length_sorted_batches(&lengths, self.batches) {
            let batch: Vec<usize> = batch.into_iter().map(|j| kept[j]).collect();
            let sequences: Vec<Vec<i64>> = batch.iter().filter_map(|&i| encoded[i].clone()).collect();
            for (&i, score) in batch.iter().zip(self.model.score_ids(&sequences)?) {
                if !score.is_finite() {
                    return Err(StageError::Row {
                        file: "reward model output".into(),
                        row: format!("generation_id={}", exchanges[i].generation_id),
                        problem: format!("the reward is {score}; rewards must be finite"),
                    });
                }
                rewards[i] = Some(f64::from(score));
            }
        }
        Ok(rewards)
    }
}

async fn import_scores(
    input: &StageInput<'_>,
    import: &ScoresImport,
    sink: &mut TableWriter,
) -> Result<Stats, StageError> {
    let columns = [
        Mapped { role: "prompt_id", column: &import.columns.prompt_id, kind: ColumnKind::Key },
        Mapped { role: "sample_idx", column: &import.columns.sample_idx, kind: ColumnKind::Integer },
        Mapped { role: "reward", column: &import.columns.reward, kind: ColumnKind::Number },
    ];
    let url = open_keyed_import(input, IMPORTED, &import.path, import.format, &columns).await?;
    let ambiguous = "SELECT prompt_id, sample_idx, COUNT(*) AS generations FROM generations \
                     GROUP BY prompt_id, sample_idx HAVING COUNT(*) > 1 ORDER BY prompt_id, sample_idx";
    if let Some(row) = first_row(input.ctx, ambiguous, "generations").await? {
        return Err(StageError::Input {
            file: url,
            problem: format!(
                "cannot match rewards by (prompt_id, sample_idx): the generations table has several rows for {row}"
            ),
        });
    }
    let label = import.label.clone().unwrap_or_else(|| format!("import:{}", file_name(&import.path)));
    let matched = format!(
        "SELECT g.generation_id, s.reward, s.prompt_id, s.sample_idx FROM {IMPORTED} AS s \
         JOIN generations AS g ON g.prompt_id = s.prompt_id AND g.sample_idx = s.sample_idx ORDER BY g.generation_id"
    );
    let frame = crate::store::session::query(input.ctx, &matched, &url).await?;
    let mut stream = frame.execute_stream().await.map_err(StoreError::query(format!("importing {url}")))?;
    let mut nulls = 0;
    while let Some(batch) = stream.next().await {
        let batch =
            plain_strings(&batch.map_err(|source| StoreError::Query { context: format!("importing {url}"), source })?);
        nulls += check_rewards(&batch, &url, &import.columns.reward)?;
        sink.write(&scores_batch(&batch, &label)?).await?;
        input.progress.set_position(sink.rows());
    }
    let total = count(input.ctx, &format!("SELECT COUNT(*) FROM {IMPORTED}"), &url).await?;
    let generations = count(input.ctx, "SELECT COUNT(*) FROM generations", "generations").await?;
    let written = sink.rows();
    if written == 0 && total > 0 {
        return Err(StageError::Input {
            file: url,
            problem: format!("none of its {total} rows matches a generation by (prompt_id, sample_idx)"),
        });
    }
    // Usually expected (a rewards file covering more languages or the other
    // split): counted in the stats, logged at info level.
    if total > written {
        tracing::info!("{url}: {} row(s) match no generation by (prompt_id, sample_idx); dropped", total - written);
    }
    Ok(stats([
        ("rows_read", total),
        ("scores", written),
        ("null_rewards", nulls),
        ("dropped_unmatched", total - written),
        ("unscored_generations", generations.saturating_sub(written)),
    ]))
}

/// Counts null rewards and rejects NaN or infinite ones, naming the row.
fn check_rewards(batch: &RecordBatch, file: &str, column: &str) -> Result<u64, StageError> {
    let rewards = float_column(batch, "reward");
    if let Some(i) = (0..batch.num_rows()).find(|&i| rewards.is_valid(i) && !rewards.value(i).is_finite()) {
        let key = |name: &str| {
            arrow::util::display::array_value_to_string(batch.column_by_name(name).expect("selected"), i)
                .unwrap_or_default()
        };
        return Err(StageError::Row {
            file: file.into(),
            row: format!("prompt_id={}, sample_idx={}", key("prompt_id"), key("sample_idx")),
            problem: format!("column `{column}` (reward) is {}; rewards must be finite", rewards.value(i)),
        });
    }
    Ok(rewards.null_count() as u64)
}

fn float_column<'b>(batch: &'b RecordBatch, name: &str) -> &'b Float64Array {
    batch.column_by_name(name).and_then(|c| c.as_any().downcast_ref::<Float64Array>()).expect("cast to Float64")
}

fn scores_batch(batch: &RecordBatch, label: &str) -> Result<RecordBatch, StageError> {
    let given: Vec<(&str, ArrayRef)> = vec![
        ("generation_id", batch.column(0).clone()),
        ("reward", batch.column(1).clone()),
        ("reward_model", Arc::new(StringArray::from(vec![label; batch.num_rows()]))),
    ];
    Ok(Table::Scores.schema().assemble(given, batch.num_rows())?)
}
