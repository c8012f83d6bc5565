//! Every table croco writes is plain Parquet: pyarrow and polars read the
//! demo tables as they are, with croco's row counts and column types.
//! Needs `python3` with `pyarrow` and `polars` (`.ci/run` installs them).

use croco::pipeline::runner::RunOptions;
use croco::store::Table;
use croco::store::schema::ColumnType;

use crate::util::{demo_pipeline_text, repo, run, write_pipeline};

fn pyarrow_name(column_type: ColumnType) -> &'static str {
    match column_type {
        ColumnType::Utf8 => "string",
        ColumnType::Int32 => "int32",
        ColumnType::Int64 => "int64",
        ColumnType::Uint64 => "uint64",
        ColumnType::Float64 => "double",
        ColumnType::Boolean => "bool",
    }
}

fn polars_name(column_type: ColumnType) -> &'static str {
    match column_type {
        ColumnType::Utf8 => "String",
        ColumnType::Int32 => "Int32",
        ColumnType::Int64 => "Int64",
        ColumnType::Uint64 => "UInt64",
        ColumnType::Float64 => "Float64",
        ColumnType::Boolean => "Boolean",
    }
}

#[tokio::test]
async fn pyarrow_and_polars_read_every_demo_table_as_croco_does() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let file = write_pipeline(dir.path(), &demo_pipeline_text(root.to_str().unwrap(), "", ""));
    let reports = run(&file, RunOptions::default()).await;
    let versions: Vec<String> = reports.iter().map(|r| format!("{}={}", r.stage.writes(), r.key)).collect();
    let output = std::process::Command::new("python3")
        .arg(repo().join("tests/interop/read_tables.py"))
        .arg(&root)
        .args(&versions)
        .output()
        .expect("python3 must be installed");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let seen: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for report in &reports {
        let table: Table = report.stage.writes();
        for (reader, name_of) in [("pyarrow", pyarrow_name as fn(ColumnType) -> &'static str), ("polars", polars_name)]
        {
            let view = &seen[table.name()][reader];
            assert_eq!(view["rows"], report.rows, "{reader} rows of {table}");
            let types = view["types"].as_object().unwrap();
            assert_eq!(types.len(), table.schema().columns.len(), "{reader} columns of {table}");
            for column in &table.schema().columns {
                assert_eq!(types[&column.name], name_of(column.column_type), "{reader}: {table}.{}", column.name);
            }
        }
    }
}
