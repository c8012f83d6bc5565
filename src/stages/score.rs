//! The score stage: one reward per generation.
//!
//! This build imports rewards computed elsewhere (`[stages.score.import]`),
//! matched to generations by (prompt_id, sample_idx). Running the reward
//! bundle needs the ONNX Runtime model layer, not part of this build yet.
//!
//! A NaN or infinite reward is an error naming the row: it would otherwise
//! poison every mean and std of its pool. A missing (null) reward is kept and
//! counted; the pairs stage excludes such rows.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, RecordBatch, StringArray};
use futures::StreamExt;

use super::input::{ColumnKind, Mapped, file_name, open_keyed_import};
use super::{StageError, StageInput, StageName, Stats, count, first_row};
use crate::pipeline::spec::ScoresImport;
use crate::store::schema::plain_strings;
use crate::store::tables::TableWriter;
use crate::store::{StoreError, Table};

const IMPORTED: &str = "imported_scores";

/// Runs the stage.
pub async fn run(input: &StageInput<'_>, sink: &mut TableWriter) -> Result<Stats, StageError> {
    let params = input.spec.stages.score.as_ref().expect("the plan only runs configured stages");
    let Some(import) = &params.import else {
        return Err(StageError::Unsupported {
            stage: StageName::Score,
            problem: "scoring with the reward model needs the ONNX Runtime scoring layer, which this build does not \
                      include yet; import rewards with a [stages.score.import] section"
                .into(),
        });
    };
    import_scores(input, import, sink).await
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
    let mut stream = crate::store::session::query(input.ctx, &matched, &url).await?.execute_stream().await?;
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
    Ok(super::stats([
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
