//! DataFusion sessions: how croco runs SQL over its tables.

use datafusion::dataframe::DataFrame;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::DFParser;

use super::error::StoreError;

/// A session configured the way every croco query runs.
///
/// Parquet strings are read as plain `Utf8` rather than views so that query
/// results match the declared schemas without casts in the common case.
pub fn new_context() -> SessionContext {
    let mut config = SessionConfig::new().with_information_schema(true);
    config.options_mut().execution.parquet.schema_force_view_types = false;
    SessionContext::new_with_config(config)
}

/// Plans every statement of `sql` (one or more, separated by `;`) and returns
/// one DataFrame per statement, in order.
///
/// Unless `allow_writes` is set, DDL, DML (`INSERT`, `COPY`) and `SET`-style
/// statements are refused before anything runs, so `croco sql` cannot change
/// a table by accident.
pub async fn run_statements(ctx: &SessionContext, sql: &str, allow_writes: bool) -> Result<Vec<DataFrame>, StoreError> {
    let error = |source| StoreError::Query { context: "SQL".into(), source };
    let options =
        SQLOptions::new().with_allow_ddl(allow_writes).with_allow_dml(allow_writes).with_allow_statements(allow_writes);
    let statements = DFParser::parse_sql(sql).map_err(error)?;
    let mut plans = Vec::with_capacity(statements.len());
    for statement in statements {
        let plan = ctx.state().statement_to_plan(statement).await.map_err(error)?;
        options.verify_plan(&plan).map_err(|source| StoreError::Query {
            context: "SQL is read-only unless --allow-writes is given".into(),
            source,
        })?;
        plans.push(plan);
    }
    let mut frames = Vec::with_capacity(plans.len());
    for plan in plans {
        frames.push(ctx.execute_logical_plan(plan).await.map_err(error)?);
    }
    Ok(frames)
}

/// Runs one read-only query (the SQL files in `sql/` that define derived tables).
pub async fn query(ctx: &SessionContext, sql: &str, context: &str) -> Result<DataFrame, StoreError> {
    let mut frames = run_statements(ctx, sql, false).await.map_err(|e| match e {
        StoreError::Query { source, .. } => StoreError::Query { context: context.to_string(), source },
        other => other,
    })?;
    match (frames.pop(), frames.is_empty()) {
        (Some(frame), true) => Ok(frame),
        _ => Err(StoreError::Query {
            context: context.to_string(),
            source: datafusion::error::DataFusionError::Plan("expected exactly one SQL statement".into()),
        }),
    }
}
