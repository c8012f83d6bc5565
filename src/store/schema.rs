//! Table schemas, read from `schemas/*.json` (embedded at build time so the
//! binary is self-contained). They are the single source of truth: every write
//! is conformed to them and every read is checked against them.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::Deserialize;

/// Declares [`Table`] from one list: variant, name, description. Each table
/// has one schema file, `schemas/<name>.json`, embedded in the binary.
macro_rules! tables {
    ($($(#[$doc:meta])* $variant:ident = $name:literal,)*) => {
        /// The tables croco knows, in pipeline order.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Table {
            $($(#[$doc])* $variant,)*
        }

        impl Table {
            /// Every table, in pipeline order.
            pub const ALL: &'static [Table] = &[$(Table::$variant),*];

            /// The table's name in storage paths and SQL.
            pub fn name(self) -> &'static str {
                match self {
                    $(Table::$variant => $name,)*
                }
            }

            fn schema_source(self) -> &'static str {
                match self {
                    $(Table::$variant => include_str!(concat!("../../schemas/", $name, ".json")),)*
                }
            }
        }
    };
}

tables! {
    /// Ingested instruction prompts.
    Prompts = "prompts",
    /// Responses, on- and off-policy.
    Generations = "generations",
    /// One reward per generation.
    Scores = "scores",
    /// Chosen/rejected preference pairs.
    Pairs = "pairs",
    /// Reference log-probs of every pair.
    RefLogps = "ref_logps",
    /// Per-step tuning log.
    TrainLog = "train_log",
    /// Every evaluation judgment, item by item.
    EvalItems = "eval_items",
    /// Evaluation metrics.
    EvalResults = "eval_results",
}

impl Table {
    /// The table named `name`, if any.
    pub fn from_name(name: &str) -> Option<Table> {
        Table::ALL.iter().copied().find(|table| table.name() == name)
    }

    /// The parsed schema of this table.
    pub fn schema(self) -> &'static TableSchema {
        static SCHEMAS: OnceLock<BTreeMap<Table, TableSchema>> = OnceLock::new();
        &SCHEMAS.get_or_init(parse_embedded_schemas)[&self]
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn parse_embedded_schemas() -> BTreeMap<Table, TableSchema> {
    Table::ALL
        .iter()
        .map(|&table| {
            // The files are part of the build; a broken one is a programming
            // error caught by the unit test below, not a user error.
            let schema: TableSchema = serde_json::from_str(table.schema_source())
                .unwrap_or_else(|e| panic!("schemas/{}.json is invalid: {e}", table.name()));
            assert_eq!(schema.table, table.name(), "schemas/{table}.json names another table");
            (table, schema)
        })
        .collect()
}

/// Column types a schema file may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    /// UTF-8 string.
    Utf8,
    /// 32-bit signed integer.
    Int32,
    /// 64-bit signed integer.
    Int64,
    /// 64-bit unsigned integer.
    Uint64,
    /// 64-bit float.
    Float64,
    /// Boolean.
    Boolean,
}

impl ColumnType {
    fn arrow(self) -> DataType {
        match self {
            ColumnType::Utf8 => DataType::Utf8,
            ColumnType::Int32 => DataType::Int32,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Uint64 => DataType::UInt64,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::Boolean => DataType::Boolean,
        }
    }
}

/// One column of a table schema.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    /// Column name.
    pub name: String,
    /// Column type.
    #[serde(rename = "type")]
    pub column_type: ColumnType,
    /// Whether nulls are allowed.
    pub nullable: bool,
    /// What the column holds.
    pub description: String,
}

/// A table schema as read from `schemas/<table>.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSchema {
    /// Table name.
    pub table: String,
    /// Schema version; part of every content key of the table.
    pub version: u32,
    /// What the table holds.
    pub description: String,
    /// Columns, in storage order.
    pub columns: Vec<ColumnSpec>,
}

/// A batch or file that does not match its table's schema.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// A declared column is absent.
    #[error("table `{table}`{origin}: column `{column}` is missing")]
    MissingColumn { table: String, origin: String, column: String },
    /// A column has another type than declared.
    #[error("table `{table}`{origin}: column `{column}` has type {found}, the schema says {expected}")]
    WrongType { table: String, origin: String, column: String, found: DataType, expected: DataType },
    /// A non-nullable column holds nulls.
    #[error("table `{table}`{origin}: column `{column}` holds {nulls} null(s) but is not nullable")]
    UnexpectedNulls { table: String, origin: String, column: String, nulls: usize },
    /// A column the schema does not declare.
    #[error("table `{table}`{origin}: column `{column}` is not in the schema")]
    ExtraColumn { table: String, origin: String, column: String },
    /// Arrow refused to assemble the conformed batch.
    #[error("table `{table}`: {source}")]
    Arrow { table: String, source: arrow::error::ArrowError },
}

impl TableSchema {
    /// The Arrow schema of the table.
    pub fn arrow_schema(&self) -> SchemaRef {
        let fields: Vec<Field> =
            self.columns.iter().map(|c| Field::new(&c.name, c.column_type.arrow(), c.nullable)).collect();
        Arc::new(Schema::new(fields))
    }

    /// Checks `batch` against the schema and returns it with the declared
    /// schema attached (columns in declared order).
    ///
    /// The only conversion allowed is within the string family (`Utf8View`,
    /// `LargeUtf8` → `Utf8`): query engines choose those representations freely
    /// and they carry the same values. Anything else is an error naming the column.
    pub fn conform(&self, batch: &RecordBatch) -> Result<RecordBatch, SchemaError> {
        self.reject_extra_columns(batch.schema().as_ref(), "")?;
        let columns =
            self.columns.iter().map(|spec| self.conform_column(batch, spec)).collect::<Result<Vec<_>, _>>()?;
        RecordBatch::try_new(self.arrow_schema(), columns)
            .map_err(|source| SchemaError::Arrow { table: self.table.clone(), source })
    }

    fn conform_column(&self, batch: &RecordBatch, spec: &ColumnSpec) -> Result<ArrayRef, SchemaError> {
        let column = batch.column_by_name(&spec.name).ok_or_else(|| SchemaError::MissingColumn {
            table: self.table.clone(),
            origin: String::new(),
            column: spec.name.clone(),
        })?;
        let expected = spec.column_type.arrow();
        let column = if column.data_type() == &expected {
            column.clone()
        } else if is_string_family(column.data_type()) && expected == DataType::Utf8 {
            cast(column, &expected).map_err(|source| SchemaError::Arrow { table: self.table.clone(), source })?
        } else {
            return Err(self.wrong_type(spec, column.data_type(), ""));
        };
        if !spec.nullable && column.null_count() > 0 {
            return Err(SchemaError::UnexpectedNulls {
                table: self.table.clone(),
                origin: String::new(),
                column: spec.name.clone(),
                nulls: column.null_count(),
            });
        }
        Ok(column)
    }

    /// Builds a batch of this table from the named columns, filling every
    /// nullable column that is not given with nulls (imports lack token
    /// counts, sampling parameters, ...), then conforms it.
    pub fn assemble(&self, given: Vec<(&str, ArrayRef)>, rows: usize) -> Result<RecordBatch, SchemaError> {
        let columns = self
            .columns
            .iter()
            .map(|spec| match given.iter().find(|(name, _)| *name == spec.name) {
                Some((_, array)) => Ok(array.clone()),
                None if spec.nullable => Ok(arrow::array::new_null_array(&spec.column_type.arrow(), rows)),
                None => Err(SchemaError::MissingColumn {
                    table: self.table.clone(),
                    origin: String::new(),
                    column: spec.name.clone(),
                }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let batch = RecordBatch::try_new(self.arrow_schema(), columns)
            .map_err(|source| SchemaError::Arrow { table: self.table.clone(), source })?;
        self.conform(&batch)
    }

    /// Checks the schema of a stored file (`origin` names it) against the
    /// declared one: same columns, same types.
    pub fn check_file_schema(&self, found: &Schema, origin: &str) -> Result<(), SchemaError> {
        let origin = format!(" (file {origin})");
        self.reject_extra_columns(found, &origin)?;
        for spec in &self.columns {
            let field = found.field_with_name(&spec.name).map_err(|_| SchemaError::MissingColumn {
                table: self.table.clone(),
                origin: origin.clone(),
                column: spec.name.clone(),
            })?;
            if field.data_type() != &spec.column_type.arrow() {
                return Err(self.wrong_type(spec, field.data_type(), &origin));
            }
        }
        Ok(())
    }

    fn reject_extra_columns(&self, found: &Schema, origin: &str) -> Result<(), SchemaError> {
        match found.fields().iter().find(|f| !self.columns.iter().any(|c| &c.name == f.name())) {
            Some(extra) => Err(SchemaError::ExtraColumn {
                table: self.table.clone(),
                origin: origin.to_string(),
                column: extra.name().clone(),
            }),
            None => Ok(()),
        }
    }

    fn wrong_type(&self, spec: &ColumnSpec, found: &DataType, origin: &str) -> SchemaError {
        SchemaError::WrongType {
            table: self.table.clone(),
            origin: origin.to_string(),
            column: spec.name.clone(),
            found: found.clone(),
            expected: spec.column_type.arrow(),
        }
    }
}

/// `batch` with every string column as plain `Utf8`: query engines hand out
/// views or large strings as they see fit, stage code reads `StringArray`.
pub fn plain_strings(batch: &RecordBatch) -> RecordBatch {
    let (fields, columns): (Vec<Field>, Vec<ArrayRef>) = batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(field, column)| match is_string_family(column.data_type()) && column.data_type() != &DataType::Utf8 {
            true => (
                field.as_ref().clone().with_data_type(DataType::Utf8),
                cast(column, &DataType::Utf8).expect("string casts are infallible"),
            ),
            false => (field.as_ref().clone(), column.clone()),
        })
        .unzip();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("same lengths as the input batch")
}

fn is_string_family(data_type: &DataType) -> bool {
    matches!(data_type, DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int32Array, StringArray, StringViewArray};

    #[test]
    fn every_schema_file_parses_and_names_its_table() {
        for &table in Table::ALL {
            assert_eq!(table.schema().table, table.name());
            assert!(!table.schema().columns.is_empty());
            assert_eq!(Table::from_name(table.name()), Some(table));
        }
    }

    fn prompts_batch(text: ArrayRef, language: ArrayRef) -> RecordBatch {
        let ids: ArrayRef = Arc::new(StringArray::from(vec!["a"]));
        RecordBatch::try_from_iter(vec![
            ("prompt_id", ids.clone()),
            ("source_id", ids.clone()),
            ("language", language),
            ("text", text),
            ("split", Arc::new(StringArray::from(vec!["train"])) as ArrayRef),
        ])
        .unwrap()
    }

    #[test]
    fn conform_accepts_string_views_and_names_a_mistyped_column() {
        let schema = Table::Prompts.schema();
        let en: ArrayRef = Arc::new(StringArray::from(vec!["en"]));
        let view: ArrayRef = Arc::new(StringViewArray::from(vec!["hello"]));
        let conformed = schema.conform(&prompts_batch(view, en.clone())).unwrap();
        assert_eq!(conformed.schema(), schema.arrow_schema());

        let number: ArrayRef = Arc::new(Int32Array::from(vec![1]));
        let err = schema.conform(&prompts_batch(number, en)).unwrap_err().to_string();
        assert!(err.contains("column `text` has type Int32"), "{err}");
    }

    #[test]
    fn conform_rejects_nulls_in_a_required_column() {
        let nulls: ArrayRef = Arc::new(StringArray::from(vec![None::<&str>]));
        let text: ArrayRef = Arc::new(StringArray::from(vec!["hi"]));
        let err = Table::Prompts.schema().conform(&prompts_batch(text, nulls)).unwrap_err();
        assert!(err.to_string().contains("column `language` holds 1 null(s)"), "{err}");
    }
}
