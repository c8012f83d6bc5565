//! The SQL session over a pipeline's tables, for `croco sql` and `croco
//! report`: every committed version as `"<table>@<key>"`, the current one as
//! `<table>`, and `<table>_by_variant` views over the variants.

use datafusion::prelude::SessionContext;

use super::plan::Plan;
use crate::store::manifest;
use crate::store::session::new_context;
use crate::store::tables::{PartInfo, register_version};
use crate::store::{StoreError, Table};

/// A session with every table of the pipeline registered: the current
/// version under the table's name, every committed version as `table@key`.
pub async fn pipeline_session(plan: &Plan) -> Result<SessionContext, StoreError> {
    let ctx = new_context();
    plan.storage.register(&ctx);
    // Every committed version, by table and key: what is registered as
    // `table@key`, and what tells which version of a stage is current.
    let mut committed: std::collections::BTreeMap<(Table, String), Vec<PartInfo>> = Default::default();
    for &table in Table::ALL {
        for version in manifest::list_versions(&plan.storage, table).await? {
            let name = format!("{}@{}", table.name(), version.key);
            // An old version written under an older schema must not make the
            // whole session unusable: it is skipped, with the reason logged.
            match register_version(&ctx, &plan.storage, table, &version.key, &version.parts, &name).await {
                Err(StoreError::Schema(e)) if version.schema_version != table.schema().version => {
                    tracing::warn!("not registering `{name}` (schema version {}): {e}", version.schema_version);
                }
                other => {
                    other?;
                    committed.insert((table, version.key), version.parts);
                }
            }
        }
    }
    for stage in &plan.stages {
        let table = stage.stage.writes();
        if let Some(parts) = committed.get(&(table, stage.key.clone())) {
            register_version(&ctx, &plan.storage, table, &stage.key, parts, table.name()).await?;
        }
    }
    register_variant_views(plan, &ctx, |table, key| committed.contains_key(&(table, key.to_string()))).await?;
    Ok(ctx)
}

/// Registers `<table>_by_variant` for every table some variant has current
/// (`is_committed`): the union of each variant's current version (the base's
/// as `base`), with the variant's name in a first column, `pipeline_variant`.
/// This is what `sql/ablation_summary.sql` compares.
async fn register_variant_views(
    plan: &Plan,
    ctx: &SessionContext,
    is_committed: impl Fn(Table, &str) -> bool,
) -> Result<(), StoreError> {
    for &table in Table::ALL {
        let mut selects = Vec::new();
        for (name, variant) in plan.all() {
            let Some(stage) = variant.stages.iter().find(|s| s.stage.writes() == table) else { continue };
            if is_committed(table, &stage.key) {
                let version = format!("{}@{}", table.name(), stage.key);
                selects.push(format!("SELECT '{name}' AS pipeline_variant, * FROM \"{version}\""));
            }
        }
        if selects.is_empty() {
            continue;
        }
        let sql = format!("CREATE VIEW {}_by_variant AS {}", table.name(), selects.join(" UNION ALL "));
        let context = format!("registering {}_by_variant", table.name());
        let query = |source| StoreError::Query { context: context.clone(), source };
        ctx.sql(&sql).await.map_err(query)?.collect().await.map_err(query)?;
    }
    Ok(())
}
