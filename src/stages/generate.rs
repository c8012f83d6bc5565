//! The generate stage: responses for every prompt.
//!
//! This build imports responses made elsewhere (`[stages.generate.import]`),
//! matched to the prompts table by `prompt_id`. Sampling the policy itself
//! needs the ONNX Runtime model layer, which is not part of this build yet;
//! asking for it is a clear error rather than a silent fallback.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int32Array, RecordBatch, StringArray};
use futures::StreamExt;

use super::input::{ColumnKind, Mapped, file_name, open_keyed_import};
use super::{StageError, StageInput, StageName, Stats, count};
use crate::ids::stable_id;
use crate::pipeline::spec::GenerationsImport;
use crate::store::schema::plain_strings;
use crate::store::tables::TableWriter;
use crate::store::{StoreError, Table};

/// Name under which the imported file is registered for the stage's queries.
const IMPORTED: &str = "imported_generations";

/// Runs the stage.
pub async fn run(input: &StageInput<'_>, sink: &mut TableWriter) -> Result<Stats, StageError> {
    let params = input.spec.stages.generate.as_ref().expect("the plan only runs configured stages");
    let Some(import) = &params.import else {
        return Err(StageError::Unsupported {
            stage: StageName::Generate,
            problem: "sampling the policy model needs the ONNX Runtime generation layer, which this build does not \
                      include yet; import responses with a [stages.generate.import] section"
                .into(),
        });
    };
    import_generations(input, import, sink).await
}

async fn import_generations(
    input: &StageInput<'_>,
    import: &GenerationsImport,
    sink: &mut TableWriter,
) -> Result<Stats, StageError> {
    let columns = [
        Mapped { role: "prompt_id", column: &import.columns.prompt_id, kind: ColumnKind::Key },
        Mapped { role: "sample_idx", column: &import.columns.sample_idx, kind: ColumnKind::Integer },
        Mapped { role: "text", column: &import.columns.text, kind: ColumnKind::Text },
    ];
    let url = open_keyed_import(input, IMPORTED, &import.path, import.format, &columns).await?;
    let null_text = format!("SELECT prompt_id, sample_idx FROM {IMPORTED} WHERE text IS NULL");
    if let Some(row) = super::first_row(input.ctx, &null_text, &url).await? {
        return Err(StageError::Row {
            file: url,
            row,
            problem: format!("column `{}` (text) is null", import.columns.text),
        });
    }
    let total = count(input.ctx, &format!("SELECT COUNT(*) FROM {IMPORTED}"), &url).await?;
    let label = import.label.clone().unwrap_or_else(|| format!("import:{}", file_name(&import.path)));
    let matched = format!(
        "SELECT i.prompt_id, p.source_id, p.language, i.sample_idx, i.text \
         FROM {IMPORTED} AS i JOIN prompts AS p ON p.prompt_id = i.prompt_id ORDER BY i.prompt_id, i.sample_idx"
    );
    let frame = crate::store::session::query(input.ctx, &matched, &url).await?;
    let mut stream = frame.execute_stream().await?;
    let identity = Identity { source: import.source.as_str(), policy_id: &label };
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|source| StoreError::Query { context: format!("importing {url}"), source })?;
        sink.write(&identity.generations(&batch)?).await?;
        input.progress.set_position(sink.rows());
    }
    let written = sink.rows();
    if written == 0 && total > 0 {
        return Err(StageError::Input {
            file: url,
            problem: format!(
                "none of its {total} rows has a prompt_id of the prompts table; prompt ids are the first 16 hex \
                 digits of sha256(language + \"\\x1f\" + text)"
            ),
        });
    }
    if written < total {
        tracing::warn!("{}: {} row(s) answer prompts that are not in the prompts table; dropped", url, total - written);
    }
    Ok(super::stats([("rows_read", total), ("generations", written), ("dropped_unknown_prompt", total - written)]))
}

/// Who produced the imported responses.
struct Identity<'a> {
    source: &'a str,
    policy_id: &'a str,
}

impl Identity<'_> {
    /// Turns matched import rows into generations rows with stable ids.
    fn generations(&self, batch: &RecordBatch) -> Result<RecordBatch, StageError> {
        let batch = &plain_strings(batch);
        let prompt_ids = utf8(batch, "prompt_id");
        let samples = batch
            .column_by_name("sample_idx")
            .and_then(|c| c.as_any().downcast_ref::<Int32Array>())
            .expect("cast to Int32");
        let ids: StringArray = (0..batch.num_rows())
            .map(|i| {
                Some(stable_id(&[prompt_ids.value(i), self.source, self.policy_id, &samples.value(i).to_string()]))
            })
            .collect();
        let constant = |value: &str| Arc::new(StringArray::from(vec![value; batch.num_rows()])) as ArrayRef;
        let given = vec![
            ("generation_id", Arc::new(ids) as ArrayRef),
            ("prompt_id", batch.column(0).clone()),
            ("source_id", batch.column(1).clone()),
            ("language", batch.column(2).clone()),
            ("sample_idx", batch.column(3).clone()),
            ("source", constant(self.source)),
            ("policy_id", constant(self.policy_id)),
            ("text", batch.column(4).clone()),
        ];
        Ok(Table::Generations.schema().assemble(given, batch.num_rows())?)
    }
}

fn utf8<'b>(batch: &'b RecordBatch, name: &str) -> &'b StringArray {
    batch.column_by_name(name).and_then(|c| c.as_any().downcast_ref::<StringArray>()).expect("Utf8 column")
}
