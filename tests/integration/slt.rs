//! sqllogictest files (`tests/slt/*.slt`) for the SQL in `sql/`, run on
//! DataFusion as datafusion-cli tests its SQL.
//!
//! A query may name a shipped SQL file as `{sql/NAME.sql}`: the harness pastes
//! the file in (comment lines dropped, since a blank or comment-only line
//! would end the record), so the tests exercise exactly what croco runs.

use std::path::Path;

use arrow::array::RecordBatch;
use arrow::datatypes::DataType;
use datafusion::prelude::SessionContext;
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType};

struct DataFusionDb {
    ctx: SessionContext,
}

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct DbError(#[from] datafusion::error::DataFusionError);

#[async_trait::async_trait]
impl AsyncDB for DataFusionDb {
    type Error = DbError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, DbError> {
        let frame = self.ctx.sql(sql).await?;
        let types = frame.schema().fields().iter().map(|f| column_type(f.data_type())).collect();
        let first_word = sql.split_whitespace().next().unwrap_or_default().to_ascii_uppercase();
        let is_statement = matches!(first_word.as_str(), "CREATE" | "DROP" | "INSERT");
        let batches = frame.collect().await?;
        if is_statement {
            return Ok(DBOutput::StatementComplete(0));
        }
        Ok(DBOutput::Rows { types, rows: batches.iter().flat_map(rows_of).collect() })
    }

    async fn shutdown(&mut self) {}
}

fn column_type(data_type: &DataType) -> DefaultColumnType {
    if data_type.is_integer() {
        DefaultColumnType::Integer
    } else if data_type.is_floating() {
        DefaultColumnType::FloatingPoint
    } else if matches!(data_type, DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8) {
        DefaultColumnType::Text
    } else {
        DefaultColumnType::Any
    }
}

fn rows_of(batch: &RecordBatch) -> Vec<Vec<String>> {
    (0..batch.num_rows())
        .map(|row| {
            batch
                .columns()
                .iter()
                .map(|column| match column.is_null(row) {
                    true => "NULL".to_string(),
                    false => arrow::util::display::array_value_to_string(column, row).unwrap(),
                })
                .collect()
        })
        .collect()
}

/// `script` with every `{sql/NAME.sql}` replaced by that file's statement.
fn expand_sql_files(script: &str, repo: &Path) -> String {
    let mut out = String::new();
    for line in script.lines() {
        match line.trim().strip_prefix('{').and_then(|l| l.strip_suffix('}')) {
            Some(file) if file.starts_with("sql/") => {
                let sql = std::fs::read_to_string(repo.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
                sql.lines()
                    .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with("--"))
                    .for_each(|l| out.extend([l, "\n"]));
            }
            _ => out.extend([line, "\n"]),
        }
    }
    out
}

#[tokio::test]
async fn sql_files_pass_their_sqllogictests() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = std::fs::read_dir(repo.join("tests/slt")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(!files.is_empty());
    for file in files {
        let script = expand_sql_files(&std::fs::read_to_string(&file).unwrap(), repo);
        let mut runner = sqllogictest::Runner::new(|| async { Ok(DataFusionDb { ctx: SessionContext::new() }) });
        runner.run_script_async(&script).await.unwrap_or_else(|e| panic!("{}: {}", file.display(), e.display(true)));
    }
}
