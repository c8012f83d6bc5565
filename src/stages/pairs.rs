//! The pairs stage: chosen/rejected pairs by the recipe's rule, defined in
//! `sql/pairs.sql` (the rule is documented there), with the counts of what
//! could not be paired from `sql/pairs_report.sql`.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::dataframe::DataFrame;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use futures::StreamExt;

use super::stage::{Stage, StageError, StageInput};
use crate::ids::stable_id;
use crate::spec::pairs::{PairsParams, PoolScope, RejectedTarget, SourceFilter};
use crate::spec::{PipelineSpec, StageName};
use crate::store::manifest::Stats;
use crate::store::schema::plain_strings;
use crate::store::session::query;
use crate::store::tables::TableWriter;
use crate::store::{StoreError, Table};

/// The pair rule, as shipped in `sql/pairs.sql`.
pub const PAIRS_SQL: &str = include_str!("../../sql/pairs.sql");
/// The unpaired-pool counts, as shipped in `sql/pairs_report.sql`.
pub const PAIRS_REPORT_SQL: &str = include_str!("../../sql/pairs_report.sql");

/// Registers the one-row `pairs_params` table the SQL reads its parameters from.
pub fn register_params(ctx: &SessionContext, params: &PairsParams) -> Result<(), StageError> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("pool_scope", DataType::Utf8, false),
        Field::new("target_rule", DataType::Utf8, false),
        Field::new("min_margin", DataType::Float64, false),
        Field::new("chosen_source", DataType::Utf8, false),
        Field::new("rejected_source", DataType::Utf8, false),
        Field::new("prompt_source", DataType::Utf8, false),
        Field::new("prompt_seed", DataType::UInt64, false),
    ]));
    let pool_scope = match params.pool {
        PoolScope::InLang => "in_lang",
        PoolScope::AllLang => "all_lang",
    };
    let target_rule = match params.rejected {
        RejectedTarget::MeanMinus2std => "mean_minus_2std",
        RejectedTarget::Q1 => "q1",
        RejectedTarget::Min => "min",
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![pool_scope])),
        Arc::new(StringArray::from(vec![target_rule])),
        Arc::new(Float64Array::from(vec![params.min_margin])),
        Arc::new(StringArray::from(vec![params.chosen_source.as_str()])),
        Arc::new(StringArray::from(vec![params.rejected_source.as_str()])),
        Arc::new(StringArray::from(vec![params.prompt_source.as_str()])),
        Arc::new(UInt64Array::from(vec![params.seed])),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).expect("seven one-row columns");
    let registering = || StoreError::query("registering pairs_params");
    let table = MemTable::try_new(schema, vec![vec![batch]]).map_err(registering())?;
    ctx.deregister_table("pairs_params").map_err(registering())?;
    ctx.register_table("pairs_params", Arc::new(table)).map_err(registering())?;
    Ok(())
}

/// The pairs of the tables registered in `ctx` (`generations`, `scores`,
/// `prompts`), without `pair_id` (see [`with_pair_ids`]).
pub async fn compute(ctx: &SessionContext, params: &PairsParams) -> Result<DataFrame, StageError> {
    register_params(ctx, params)?;
    Ok(query(ctx, PAIRS_SQL, "sql/pairs.sql").await?)
}

/// Prepends `pair_id` = stable id of (chosen, rejected) to a batch of
/// `sql/pairs.sql` output.
pub fn with_pair_ids(batch: &RecordBatch) -> Result<RecordBatch, StageError> {
    let batch = plain_strings(batch);
    let chosen = string_column(&batch, "chosen_generation_id");
    let rejected = string_column(&batch, "rejected_generation_id");
    let ids: StringArray =
        (0..batch.num_rows()).map(|i| Some(stable_id(&[chosen.value(i), rejected.value(i)]))).collect();
    let mut given: Vec<(&str, ArrayRef)> = vec![("pair_id", Arc::new(ids))];
    let schema = batch.schema();
    given.extend(schema.fields().iter().map(|f| f.name().as_str()).zip(batch.columns().iter().cloned()));
    Ok(Table::Pairs.schema().assemble(given, batch.num_rows())?)
}

fn string_column<'b>(batch: &'b RecordBatch, name: &str) -> &'b StringArray {
    batch.column_by_name(name).and_then(|c| c.as_any().downcast_ref::<StringArray>()).expect("id columns are strings")
}

/// The pairs stage.
pub struct Pairs;

impl Stage for Pairs {
    type Params = PairsParams;
    const NAME: StageName = StageName::Pairs;

    fn params(spec: &PipelineSpec) -> Option<PairsParams> {
        spec.stages.pairs.clone()
    }

    async fn run(input: &StageInput<'_>, params: &PairsParams, sink: &mut TableWriter) -> Result<Stats, StageError> {
        let frame = compute(input.ctx, params).await?;
        let mut stream = frame.execute_stream().await.map_err(StoreError::query("sql/pairs.sql"))?;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|source| StoreError::Query { context: "sql/pairs.sql".into(), source })?;
            sink.write(&with_pair_ids(&batch)?).await?;
            input.progress.set_position(sink.rows());
        }
        let mut stats = report(input.ctx).await?;
        let pairable = ["pools", "pools_too_small", "pools_without_lower"]
            .map(|k| stats.get(k).and_then(|v| v.as_u64()).unwrap_or(0));
        let candidates = pairable[0].saturating_sub(pairable[1] + pairable[2]);
        stats.insert("pairs".into(), sink.rows().into());
        // With source restrictions a pool can also lack an eligible chosen or
        // rejected response; the report's counts cannot tell that from a margin drop.
        let restricted = params.chosen_source != SourceFilter::Any || params.rejected_source != SourceFilter::Any;
        let unpaired = if restricted { "unpaired_by_source_or_margin" } else { "dropped_below_min_margin" };
        stats.insert(unpaired.into(), candidates.saturating_sub(sink.rows()).into());
        Ok(stats)
    }
}

/// The counts of `sql/pairs_report.sql` as a stats map.
pub async fn report(ctx: &SessionContext) -> Result<Stats, StageError> {
    let frame = query(ctx, PAIRS_REPORT_SQL, "sql/pairs_report.sql").await?;
    let batches = frame.collect().await.map_err(StoreError::query("sql/pairs_report.sql"))?;
    let mut stats = Stats::new();
    if let Some(batch) = batches.iter().find(|b| b.num_rows() > 0) {
        for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
            let value = arrow::compute::cast(column, &DataType::UInt64)?;
            let value = value.as_any().downcast_ref::<arrow::array::UInt64Array>().expect("cast to UInt64");
            stats.insert(field.name().clone(), if value.is_null(0) { 0 } else { value.value(0) }.into());
        }
    }
    Ok(stats)
}
