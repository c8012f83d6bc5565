//! Reading the files a pipeline names (prompt sets, imported responses and
//! rewards): JSONL, CSV or Parquet, local or on object storage, with a column
//! mapping from the file's names to croco's.

use arrow::datatypes::DataType;
use datafusion::dataframe::DataFrame;
use datafusion::prelude::{CsvReadOptions, JsonReadOptions, ParquetReadOptions, SessionContext, cast, ident};

use std::path::Path as FsPath;

use datafusion::error::DataFusionError;
use object_store::path::Path;

use super::stage::{StageError, StageInput};
use crate::ids::stable_id;
use crate::spec::common::FileFormat;
use crate::store::rows::first_row;
use crate::store::storage::resolve_input;
use crate::store::{Storage, StoreError, lines};

/// What kind of values a mapped column must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// Strings.
    Text,
    /// Strings or integers (identifiers), read as strings.
    Key,
    /// Integers, read as Int32.
    Integer,
    /// Integers or floats, read as Float64.
    Number,
}

impl ColumnKind {
    fn accepts(self, data_type: &DataType) -> bool {
        let text = matches!(data_type, DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 | DataType::Null);
        match self {
            ColumnKind::Text => text,
            ColumnKind::Key => text || data_type.is_integer(),
            ColumnKind::Integer => data_type.is_integer() || data_type == &DataType::Null,
            ColumnKind::Number => data_type.is_numeric() || data_type == &DataType::Null,
        }
    }

    fn target(self) -> DataType {
        match self {
            ColumnKind::Text | ColumnKind::Key => DataType::Utf8,
            ColumnKind::Integer => DataType::Int32,
            ColumnKind::Number => DataType::Float64,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            ColumnKind::Text => "strings",
            ColumnKind::Key => "strings or integers",
            ColumnKind::Integer => "integers",
            ColumnKind::Number => "numbers",
        }
    }
}

/// One mapped column: croco's name for it, the file's name, what it must hold.
#[derive(Debug, Clone, Copy)]
pub struct Mapped<'a> {
    /// croco's name (the alias in the result).
    pub role: &'a str,
    /// The column's name in the file.
    pub column: &'a str,
    /// What it must hold.
    pub kind: ColumnKind,
}

/// An input file opened for reading.
pub struct InputFile {
    /// The mapped columns, renamed to their roles and cast to croco's types.
    pub frame: DataFrame,
    /// The file's URL, for messages.
    pub url: String,
    /// Where it lives and its format, to explain a read error by its line.
    source: (Storage, Path, FileFormat),
    /// The mapped columns as (role, column, kind), to name a mistyped value.
    columns: Vec<(String, String, ColumnKind)>,
}

impl InputFile {
    /// `source`, an error DataFusion raised while reading the file, as the
    /// file's own line and column where a line-oriented file has a bad line.
    pub async fn explain(&self, source: DataFusionError) -> StageError {
        let (storage, path, format) = &self.source;
        let columns: Vec<Mapped<'_>> =
            self.columns.iter().map(|(role, column, kind)| Mapped { role, column, kind: *kind }).collect();
        explain_read_error(storage, path, *format, &self.url, &columns, source).await
    }

    /// An error about the row at 0-based `index` of the file (in file
    /// order, blank lines not counted), naming its line where the file has
    /// lines: JSONL's non-blank lines, CSV's records (the header is line 1).
    pub async fn row_error(&self, index: u64, problem: String) -> StageError {
        let (storage, path, format) = &self.source;
        match line_of_row(storage, path, *format, index).await {
            Some(line) => StageError::Line { file: self.url.clone(), line, column: None, problem },
            None => StageError::Row { file: self.url.clone(), row: (index + 1).to_string(), problem },
        }
    }

    /// The file's format.
    pub fn format(&self) -> FileFormat {
        self.source.2
    }
}

/// The 1-based line of the row at 0-based `index` of a JSONL or CSV file.
async fn line_of_row(storage: &Storage, path: &Path, format: FileFormat, index: u64) -> Option<usize> {
    match format {
        FileFormat::Jsonl => {
            let (mut rows, mut found) = (0, None);
            let visited = lines::visit_lines(storage, path, |number, bytes| {
                if bytes.iter().all(u8::is_ascii_whitespace) {
                    return true;
                }
                if rows == index {
                    found = Some(number);
                }
                rows += 1;
                found.is_none()
            });
            visited.await.ok().and(found)
        }
        FileFormat::Csv => {
            let bytes = csv_bytes(storage, path).await.ok()?;
            let record = csv::Reader::from_reader(bytes.as_ref()).into_records().nth(index as usize)?.ok()?;
            record.position().map(|p| p.line() as usize)
        }
        FileFormat::Parquet => None,
    }
}

/// Opens `location` (resolved against `base_dir`) in `ctx` and selects the
/// mapped columns, checking that each exists and holds the right kind of values.
pub async fn read_mapped(
    ctx: &SessionContext,
    location: &str,
    format: Option<FileFormat>,
    input: &StageInput<'_>,
    columns: &[Mapped<'_>],
) -> Result<InputFile, StageError> {
    let (storage, path) = resolve_input(location, input.base_dir, input.storage_options, input.retry)?;
    let url = storage.url_of(&path);
    let format = format.or_else(|| FileFormat::from_extension(location)).ok_or_else(|| StageError::Input {
        file: url.clone(),
        problem: "cannot infer the format from the extension; set `format`".into(),
    })?;
    let (size, bom) = lines::size_and_bom(&storage, &path).await?;
    if size == 0 {
        return Err(StageError::Input { file: url, problem: "the file is empty".into() });
    }
    // DataFusion's text readers take a byte-order mark for data: such a file
    // is read from memory without it (editors write it on small files).
    let text = matches!(format, FileFormat::Jsonl | FileFormat::Csv);
    let (reader, read_path) = match text && bom {
        true => without_bom(&storage, &path).await?,
        false => (storage.clone(), path.clone()),
    };
    reader.register(ctx);
    let read_url = reader.url_of(&read_path);
    // Match the file's own extension so DataFusion does not filter it out.
    let extension = location.rsplit_once('.').map(|(_, ext)| format!(".{ext}")).unwrap_or_default();
    let frame = match format {
        FileFormat::Jsonl => ctx.read_json(&read_url, JsonReadOptions::default().file_extension(&extension)).await,
        FileFormat::Csv => {
            ctx.read_csv(&read_url, CsvReadOptions::new().has_header(true).file_extension(&extension)).await
        }
        FileFormat::Parquet => {
            let options = ParquetReadOptions { file_extension: &extension, ..Default::default() };
            ctx.read_parquet(&read_url, options).await
        }
    };
    let frame = match frame {
        Ok(frame) => frame,
        Err(source) => return Err(explain_read_error(&storage, &path, format, &url, columns, source).await),
    };
    if frame.schema().fields().is_empty() {
        return Err(StageError::Input { file: url, problem: "has no rows (only blank lines)".into() });
    }
    let mut exprs = Vec::with_capacity(columns.len());
    for mapped in columns {
        match check_column(&frame, &url, mapped) {
            Ok(expr) => exprs.push(expr),
            // A column of the wrong type: name the first line that made it so.
            Err(StageError::Column { file, column, role, mut problem }) => {
                let present = frame.schema().fields().iter().any(|f| f.name() == mapped.column);
                let first = match present {
                    true => first_mistyped_line(&storage, &path, format, mapped).await.ok().flatten(),
                    false => None,
                };
                if let Some((line, value)) = first {
                    problem = format!("{problem}; line {line} holds `{value}`");
                }
                return Err(StageError::Column { file, column, role, problem });
            }
            Err(other) => return Err(other),
        }
    }
    let frame = frame.select(exprs).map_err(StoreError::query(format!("reading {url}")))?;
    let columns = columns.iter().map(|m| (m.role.to_string(), m.column.to_string(), m.kind)).collect();
    Ok(InputFile { frame, url, source: (storage, path, format), columns })
}

/// A copy of the object at `path` without its leading byte-order mark, in a
/// process-local memory store.
async fn without_bom(storage: &Storage, path: &Path) -> Result<(Storage, Path), StoreError> {
    let url = storage.url_of(path);
    let bytes = storage.get_if_exists(path).await?.unwrap_or_default();
    let copy = Storage::open(
        &format!("memory://croco-bom-{}", stable_id(&[&url])),
        FsPath::new("."),
        &Default::default(),
        &Default::default(),
    )?;
    let name = path.filename().unwrap_or("input");
    let copy_path = copy.path(name);
    copy.put(&copy_path, bytes.slice(lines::BOM.len().min(bytes.len())..)).await?;
    tracing::info!(file = %url, "read without its UTF-8 byte-order mark");
    Ok((copy, copy_path))
}

/// `source`, a read error of the file at `url`, explained by the file
/// itself where it can be: JSONL's first bad line (invalid UTF-8, invalid
/// JSON, not an object) or first value of a mapped column of the wrong kind
/// (DataFusion infers a column's type from the first lines), CSV's first
/// record whose field count differs from the header's, a Parquet file
/// without Parquet's footer. Otherwise a query error naming the file.
async fn explain_read_error(
    storage: &Storage,
    path: &Path,
    format: FileFormat,
    url: &str,
    columns: &[Mapped<'_>],
    source: DataFusionError,
) -> StageError {
    let explained = match format {
        FileFormat::Jsonl => match first_bad_json_line(storage, path).await {
            Ok(Some((line, column, problem))) => {
                Some(StageError::Line { file: url.to_string(), line, column, problem })
            }
            _ => first_mistyped_value(storage, path, format, url, columns).await,
        },
        FileFormat::Csv => first_ragged_record(storage, path, url).await,
        FileFormat::Parquet => not_parquet(storage, path, url).await,
    };
    explained.unwrap_or_else(|| StageError::Store(StoreError::Query { context: format!("reading {url}"), source }))
}

/// The first value of one of `columns` that is not of its column's kind, as
/// a column error naming its line.
async fn first_mistyped_value(
    storage: &Storage,
    path: &Path,
    format: FileFormat,
    url: &str,
    columns: &[Mapped<'_>],
) -> Option<StageError> {
    for mapped in columns {
        if let Ok(Some((line, value))) = first_mistyped_line(storage, path, format, mapped).await {
            return Some(StageError::Column {
                file: url.to_string(),
                column: mapped.column.to_string(),
                role: mapped.role.to_string(),
                problem: format!("expected {}; line {line} holds `{value}`", mapped.kind.describe()),
            });
        }
    }
    None
}

/// The whole CSV object at `path` without its byte-order mark: the error
/// paths read it with the `csv` crate to name a line.
async fn csv_bytes(storage: &Storage, path: &Path) -> Result<bytes::Bytes, StoreError> {
    let bytes = storage.get_if_exists(path).await?.unwrap_or_default();
    let skip = if bytes.starts_with(lines::BOM) { lines::BOM.len() } else { 0 };
    Ok(bytes.slice(skip..))
}

/// The first CSV record with more or fewer fields than the header, as an
/// error naming its line (an unclosed quote makes one too: it runs on to
/// the end of the file).
async fn first_ragged_record(storage: &Storage, path: &Path, url: &str) -> Option<StageError> {
    let bytes = csv_bytes(storage, path).await.ok()?;
    let mut reader = csv::Reader::from_reader(bytes.as_ref());
    let header = reader.headers().ok()?.len();
    reader.into_records().find_map(|record| match record {
        Err(e) => match e.kind() {
            csv::ErrorKind::UnequalLengths { pos, len, .. } => Some(StageError::Line {
                file: url.to_string(),
                line: pos.as_ref().map_or(0, |p| p.line() as usize),
                column: None,
                problem: format!("{len} field(s) where the header has {header}"),
            }),
            _ => None,
        },
        Ok(_) => None,
    })
}

/// An error when the object does not end with Parquet's `PAR1` footer magic.
async fn not_parquet(storage: &Storage, path: &Path, url: &str) -> Option<StageError> {
    use object_store::ObjectStoreExt;
    let size = storage.store().head(path).await.ok()?.size;
    let tail = match size >= 4 {
        true => storage.store().get_range(path, size - 4..size).await.ok()?,
        false => Default::default(),
    };
    (tail.as_ref() != b"PAR1").then(|| StageError::Input {
        file: url.to_string(),
        problem: "not a Parquet file (it does not end with Parquet's `PAR1` footer)".into(),
    })
}

/// The first line of a JSONL object that is not valid UTF-8 or not one JSON
/// object: its number, the column (1-based, in characters) and the problem.
async fn first_bad_json_line(
    storage: &Storage,
    path: &Path,
) -> Result<Option<(usize, Option<usize>, String)>, StoreError> {
    let mut found = None;
    lines::visit_lines(storage, path, |number, bytes| {
        found = lines::json_object(bytes).err().map(|(column, problem)| (number, column, problem));
        found.is_none()
    })
    .await?;
    Ok(found)
}

fn check_column(frame: &DataFrame, url: &str, mapped: &Mapped<'_>) -> Result<datafusion::prelude::Expr, StageError> {
    let column_error = |problem: String| StageError::Column {
        file: url.to_string(),
        column: mapped.column.to_string(),
        role: mapped.role.to_string(),
        problem,
    };
    let schema = frame.schema();
    let Some((_, field)) = schema.iter().find(|(_, f)| f.name() == mapped.column) else {
        let present: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        return Err(column_error(format!("missing; the file has columns: {}", present.join(", "))));
    };
    if !mapped.kind.accepts(field.data_type()) {
        return Err(column_error(format!("holds {}, expected {}", field.data_type(), mapped.kind.describe())));
    }
    Ok(cast(ident(mapped.column), mapped.kind.target()).alias(mapped.role))
}

impl ColumnKind {
    /// Whether a CSV field's text is a value of this kind.
    fn accepts_text(self, text: &str) -> bool {
        match self {
            ColumnKind::Text | ColumnKind::Key => true,
            ColumnKind::Integer => text.trim().parse::<i64>().is_ok(),
            ColumnKind::Number => text.trim().parse::<f64>().is_ok(),
        }
    }

    /// Whether a JSON value is a value of this kind (null is a missing value, not a wrong one).
    fn accepts_json(self, value: &serde_json::Value) -> bool {
        use serde_json::Value;
        match (self, value) {
            (_, Value::Null) => true,
            (ColumnKind::Text, Value::String(_)) => true,
            (ColumnKind::Key, Value::String(_)) => true,
            (ColumnKind::Key | ColumnKind::Integer, Value::Number(n)) => n.is_i64() || n.is_u64(),
            (ColumnKind::Number, Value::Number(_)) => true,
            _ => false,
        }
    }
}

/// The first line of a CSV or JSONL file whose `mapped` field holds a value
/// of the wrong kind, and that value. CSV files are read whole: this runs
/// only once their column was found mistyped.
async fn first_mistyped_line(
    storage: &Storage,
    path: &Path,
    format: FileFormat,
    mapped: &Mapped<'_>,
) -> Result<Option<(usize, String)>, StoreError> {
    match format {
        FileFormat::Jsonl => {
            let mut found = None;
            lines::visit_lines(storage, path, |number, bytes| {
                let object = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(bytes).ok();
                let value = object.and_then(|mut o| o.remove(mapped.column));
                if let Some(value) = value.filter(|v| !mapped.kind.accepts_json(v)) {
                    found = Some((number, value.to_string()));
                }
                found.is_none()
            })
            .await?;
            Ok(found)
        }
        FileFormat::Csv => {
            let bytes = csv_bytes(storage, path).await?;
            let mut reader = csv::Reader::from_reader(bytes.as_ref());
            let index = reader.headers().ok().and_then(|h| h.iter().position(|name| name == mapped.column));
            let Some(index) = index else { return Ok(None) };
            for record in reader.records().flatten() {
                let value = record.get(index).unwrap_or_default();
                if !value.is_empty() && !mapped.kind.accepts_text(value) {
                    let line = record.position().map_or(0, |p| p.line() as usize);
                    return Ok(Some((line, value.to_string())));
                }
            }
            Ok(None)
        }
        FileFormat::Parquet => Ok(None),
    }
}

/// The file name of a location, for default import labels.
pub fn file_name(location: &str) -> &str {
    location.rsplit('/').next().unwrap_or(location)
}

/// Opens an import keyed by (prompt_id, sample_idx) — responses or rewards —
/// registers it as `name` in the stage's session, and checks that its keys
/// are filled and unique. Returns the file's URL.
pub async fn open_keyed_import(
    input: &StageInput<'_>,
    name: &str,
    location: &str,
    format: Option<FileFormat>,
    columns: &[Mapped<'_>],
) -> Result<String, StageError> {
    let file = read_mapped(input.ctx, location, format, input, columns).await?;
    // A stage may open two imports under one name (generate's `also_import`).
    let registering = || StoreError::query(format!("registering {} as `{name}`", file.url));
    input.ctx.deregister_table(name).map_err(registering())?;
    input.ctx.register_table(name, file.frame.clone().into_view()).map_err(registering())?;
    // The key check reads the whole file: a bad line anywhere surfaces here.
    match check_import_keys(input.ctx, name, &file.url).await {
        Err(StageError::Store(StoreError::Query { source, .. })) => Err(file.explain(source).await),
        other => other.map(|()| file.url),
    }
}

/// Checks that the imported table `table` (read from `file`) has its key
/// columns `prompt_id` and `sample_idx` filled and unique.
pub async fn check_import_keys(ctx: &SessionContext, table: &str, file: &str) -> Result<(), StageError> {
    let null_keys = format!("SELECT prompt_id, sample_idx FROM {table} WHERE prompt_id IS NULL OR sample_idx IS NULL");
    if let Some(row) = first_row(ctx, &null_keys, file).await? {
        return Err(StageError::Row {
            file: file.into(),
            row,
            problem: "prompt_id and sample_idx must both be set".into(),
        });
    }
    let negative = format!("SELECT prompt_id, sample_idx FROM {table} WHERE sample_idx < 0");
    if let Some(row) = first_row(ctx, &negative, file).await? {
        return Err(StageError::Row { file: file.into(), row, problem: "sample_idx must be 0 or more".into() });
    }
    let duplicates = format!(
        "SELECT prompt_id, sample_idx, COUNT(*) AS copies FROM {table} GROUP BY prompt_id, sample_idx \
         HAVING COUNT(*) > 1 ORDER BY prompt_id, sample_idx"
    );
    if let Some(row) = first_row(ctx, &duplicates, file).await? {
        return Err(StageError::Row {
            file: file.into(),
            row,
            problem: "(prompt_id, sample_idx) occurs more than once".into(),
        });
    }
    Ok(())
}
