//! The prompts stage: ingest a prompt set, validate languages, drop empty and
//! duplicate prompts (counted), assign stable ids and a train/eval split.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray, StringBuilder};
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;

use serde::Serialize;

use super::files::{ColumnKind, Mapped, read_mapped};
use super::stage::{Stage, StageError, StageInput, stats};
use crate::ids::{prompt_id, unit_interval};
use crate::langs::is_iso_639_1;
use crate::spec::common::FileFormat;
use crate::spec::prompts::PromptsParams;
use crate::spec::{PipelineSpec, StageName};
use crate::store::manifest::Stats;
use crate::store::tables::TableWriter;

/// Counts of what ingestion dropped.
#[derive(Default)]
struct Dropped {
    empty: u64,
    duplicate: u64,
    other_language: BTreeMap<String, u64>,
}

/// The prompts stage.
pub struct Prompts;

/// What the prompts stage runs with: its section and the run's languages,
/// which filter the prompts.
#[derive(Debug, Clone, Serialize)]
pub struct PromptsStage {
    /// `[stages.prompts]`.
    #[serde(flatten)]
    pub section: PromptsParams,
    /// `run.languages`.
    pub languages: Vec<String>,
}

impl Stage for Prompts {
    type Params = PromptsStage;
    const NAME: StageName = StageName::Prompts;

    fn params(spec: &PipelineSpec) -> Option<PromptsStage> {
        let section = spec.stages.prompts.clone()?;
        Some(PromptsStage { section, languages: spec.run.languages.clone() })
    }

    fn external_inputs(spec: &PipelineSpec) -> Vec<(String, String)> {
        let source = spec.stages.prompts.as_ref().map(|p| p.source.clone());
        source.map(|s| ("stages.prompts.source".to_string(), s)).into_iter().collect()
    }

    async fn run(input: &StageInput<'_>, stage: &PromptsStage, sink: &mut TableWriter) -> Result<Stats, StageError> {
        let params = &stage.section;
        // One partition keeps file order, so row numbers in errors are exact and
        // the output order is the input order.
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
        let file = read_mapped(&ctx, &params.source, params.format, input, &mapping(params)).await?;
        let mut stream = match file.frame.clone().execute_stream().await {
            Ok(stream) => stream,
            Err(source) => return Err(file.explain(source).await),
        };
        let mut ingest = Ingest {
            params,
            languages: &stage.languages,
            // CSV has no null: an empty field is an empty text, dropped and counted.
            null_text_is_empty: file.format() == FileFormat::Csv,
            seen: HashSet::new(),
            rows: 0,
            dropped: Dropped::default(),
        };
        while let Some(batch) = stream.next().await {
            let batch = match batch {
                Ok(batch) => batch,
                Err(source) => return Err(file.explain(source).await),
            };
            let out = match ingest.batch(&batch) {
                Ok(out) => out,
                Err((index, problem)) => return Err(file.row_error(index, problem).await),
            };
            sink.write(&out).await?;
            input.progress.set_position(sink.rows());
        }
        Ok(ingest.stats(sink.rows()))
    }
}

fn mapping(params: &PromptsParams) -> Vec<Mapped<'_>> {
    let mut columns = vec![
        Mapped { role: "text", column: &params.columns.text, kind: ColumnKind::Text },
        Mapped { role: "language", column: &params.columns.language, kind: ColumnKind::Text },
    ];
    if let Some(source_id) = &params.columns.source_id {
        columns.push(Mapped { role: "source_id", column: source_id, kind: ColumnKind::Key });
    }
    columns
}

struct Ingest<'a> {
    params: &'a PromptsParams,
    languages: &'a [String],
    null_text_is_empty: bool,
    seen: HashSet<String>,
    rows: u64,
    dropped: Dropped,
}

/// What is wrong with one input row: (0-based row index, problem).
type RowProblem = (u64, String);

impl Ingest<'_> {
    fn batch(&mut self, batch: &RecordBatch) -> Result<RecordBatch, RowProblem> {
        let text = string_column(batch, "text");
        let language = string_column(batch, "language");
        let source =
            batch.column_by_name("source_id").map(|c| c.as_any().downcast_ref::<StringArray>().expect("cast to Utf8"));
        let mut out = OutputColumns::default();
        for i in 0..batch.num_rows() {
            self.rows += 1;
            let language = self.language(language, i)?;
            if text.is_null(i) && !self.null_text_is_empty {
                let field = &self.params.columns.text;
                return Err((self.rows - 1, format!("field `{field}` (text) is missing or null")));
            }
            let text = if text.is_null(i) { "" } else { text.value(i).trim() };
            if text.is_empty() {
                self.dropped.empty += 1;
                continue;
            }
            if !self.languages.iter().any(|l| l == &language) {
                *self.dropped.other_language.entry(language).or_default() += 1;
                continue;
            }
            let id = prompt_id(&language, text);
            if !self.seen.insert(id.clone()) {
                self.dropped.duplicate += 1;
                continue;
            }
            let source_id = source.filter(|s| !s.is_null(i)).map_or_else(|| id.clone(), |s| s.value(i).to_string());
            let split = if unit_interval(self.params.split_seed, &source_id) < self.params.eval_fraction {
                "eval"
            } else {
                "train"
            };
            out.push(&id, &source_id, &language, text, split);
        }
        Ok(out.finish())
    }

    /// The row's language code, lower-cased; unknown codes are an error, since
    /// a typo would otherwise silently drop a whole language.
    fn language(&self, column: &StringArray, i: usize) -> Result<String, RowProblem> {
        let field = &self.params.columns.language;
        if column.is_null(i) {
            return Err((self.rows - 1, format!("field `{field}` (language) is missing")));
        }
        let code = column.value(i).trim().to_ascii_lowercase();
        if !is_iso_639_1(&code) {
            return Err((self.rows - 1, format!("language `{}` is not an ISO 639-1 code", column.value(i))));
        }
        Ok(code)
    }

    fn stats(&self, written: u64) -> Stats {
        let mut stats = stats([
            ("rows_read", self.rows),
            ("prompts", written),
            ("dropped_empty", self.dropped.empty),
            ("dropped_duplicate", self.dropped.duplicate),
            ("dropped_other_language", self.dropped.other_language.values().sum()),
        ]);
        if !self.dropped.other_language.is_empty() {
            stats.insert(
                "dropped_languages".into(),
                serde_json::to_value(&self.dropped.other_language).expect("counts"),
            );
        }
        stats
    }
}

fn string_column<'b>(batch: &'b RecordBatch, name: &str) -> &'b StringArray {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .expect("mapped columns are cast to Utf8")
}

#[derive(Default)]
struct OutputColumns {
    prompt_id: StringBuilder,
    source_id: StringBuilder,
    language: StringBuilder,
    text: StringBuilder,
    split: StringBuilder,
}

impl OutputColumns {
    fn push(&mut self, prompt_id: &str, source_id: &str, language: &str, text: &str, split: &str) {
        self.prompt_id.append_value(prompt_id);
        self.source_id.append_value(source_id);
        self.language.append_value(language);
        self.text.append_value(text);
        self.split.append_value(split);
    }

    fn finish(mut self) -> RecordBatch {
        let columns: Vec<(&str, ArrayRef)> = vec![
            ("prompt_id", Arc::new(self.prompt_id.finish())),
            ("source_id", Arc::new(self.source_id.finish())),
            ("language", Arc::new(self.language.finish())),
            ("text", Arc::new(self.text.finish())),
            ("split", Arc::new(self.split.finish())),
        ];
        RecordBatch::try_from_iter(columns).expect("columns of equal length")
    }
}
