//! `sql/pairs.sql` against a straightforward Rust implementation of the same
//! rule, on random pools: sizes 1–64, reward ties, null and NaN rewards, both
//! pool scopes and all three targets.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, Int32Array, RecordBatch, StringArray};
use croco::spec::pairs::{PairsParams, PoolScope, PromptSource, RejectedTarget};
use croco::stages::pairs::compute;
use croco::store::Table;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use proptest::prelude::*;

/// One scored response.
#[derive(Debug, Clone)]
struct Response {
    generation_id: String,
    prompt_id: String,
    source_id: String,
    language: String,
    reward: Option<f64>,
}

/// A pair as both implementations report it.
#[derive(Debug, Clone, PartialEq)]
struct Pair {
    pool_id: String,
    prompt_id: String,
    chosen: String,
    rejected: String,
    target: f64,
}

/// The pool's prompt that `prompt_source = "random"` draws: the least hex
/// md5 of `seed:pool_id:prompt_id`.
fn drawn_prompt(members: &[&Response], pool_id: &str, seed: u64) -> String {
    use md5::{Digest, Md5};
    let draw = |prompt: &str| hex::encode(Md5::digest(format!("{seed}:{pool_id}:{prompt}")));
    let prompts: std::collections::BTreeSet<&str> = members.iter().map(|r| r.prompt_id.as_str()).collect();
    prompts.into_iter().min_by_key(|p| (draw(p), p.to_string())).unwrap().to_string()
}

/// The rule, written the obvious way: group, sort, scan.
fn reference(rows: &[Response], params: &PairsParams) -> Vec<Pair> {
    let mut pools: BTreeMap<String, Vec<&Response>> = BTreeMap::new();
    for row in rows.iter().filter(|r| r.reward.is_some_and(|x| !x.is_nan())) {
        let pool = match params.pool {
            PoolScope::InLang => &row.prompt_id,
            PoolScope::AllLang => &row.source_id,
        };
        pools.entry(pool.clone()).or_default().push(row);
    }
    let reward = |r: &Response| r.reward.unwrap();
    let mut pairs = Vec::new();
    for (pool_id, members) in pools {
        let n = members.len() as f64;
        let chosen = members
            .iter()
            .max_by(|a, b| reward(a).total_cmp(&reward(b)).then_with(|| b.generation_id.cmp(&a.generation_id)))
            .unwrap();
        let mean = members.iter().map(|r| reward(r)).sum::<f64>() / n;
        let std = (members.iter().map(|r| (reward(r) - mean).powi(2)).sum::<f64>() / n).sqrt();
        let mut sorted: Vec<f64> = members.iter().map(|r| reward(r)).collect();
        sorted.sort_by(f64::total_cmp);
        let h = 0.25 * (n - 1.0);
        let (lo, hi) = (sorted[h.floor() as usize], sorted[h.ceil() as usize]);
        let target = match params.rejected {
            RejectedTarget::MeanMinus2std => mean - 2.0 * std,
            RejectedTarget::Q1 => lo + (h - h.floor()) * (hi - lo),
            RejectedTarget::Min => sorted[0],
        };
        let rejected = members.iter().filter(|r| reward(r) < reward(chosen)).min_by(|a, b| {
            (reward(a) - target)
                .abs()
                .total_cmp(&(reward(b) - target).abs())
                .then_with(|| reward(a).total_cmp(&reward(b)))
                .then_with(|| a.generation_id.cmp(&b.generation_id))
        });
        if let Some(rejected) = rejected.filter(|r| reward(chosen) - reward(r) >= params.min_margin) {
            let prompt_id = match params.prompt_source {
                PromptSource::Chosen => chosen.prompt_id.clone(),
                PromptSource::Rejected => rejected.prompt_id.clone(),
                PromptSource::Random => drawn_prompt(&members, &pool_id, params.seed),
            };
            pairs.push(Pair {
                pool_id,
                prompt_id,
                chosen: chosen.generation_id.clone(),
                rejected: rejected.generation_id.clone(),
                target,
            });
        }
    }
    pairs
}

fn register(ctx: &SessionContext, table: Table, columns: Vec<(&str, ArrayRef)>, rows: usize) {
    let batch = table.schema().assemble(columns, rows).unwrap();
    let mem = MemTable::try_new(batch.schema(), vec![vec![batch]]).unwrap();
    ctx.register_table(table.name(), Arc::new(mem)).unwrap();
}

fn strings<'a>(rows: &'a [Response], field: impl Fn(&'a Response) -> &'a str) -> ArrayRef {
    Arc::new(StringArray::from(rows.iter().map(field).collect::<Vec<_>>()))
}

/// Runs `sql/pairs.sql` through the pairs stage's own entry point.
async fn via_sql(rows: &[Response], params: &PairsParams) -> Vec<Pair> {
    let ctx = SessionContext::new();
    let n = rows.len();
    register(
        &ctx,
        Table::Generations,
        vec![
            ("generation_id", strings(rows, |r| &r.generation_id)),
            ("prompt_id", strings(rows, |r| &r.prompt_id)),
            ("source_id", strings(rows, |r| &r.source_id)),
            ("language", strings(rows, |r| &r.language)),
            ("sample_idx", Arc::new(Int32Array::from((0..n as i32).collect::<Vec<_>>()))),
            ("source", strings(rows, |_| "on_policy")),
            ("policy_id", strings(rows, |_| "test")),
            ("text", strings(rows, |r| &r.generation_id)),
        ],
        n,
    );
    register(
        &ctx,
        Table::Scores,
        vec![
            ("generation_id", strings(rows, |r| &r.generation_id)),
            ("reward", Arc::new(Float64Array::from(rows.iter().map(|r| r.reward).collect::<Vec<_>>()))),
            ("reward_model", strings(rows, |_| "test")),
        ],
        n,
    );
    let mut prompts: BTreeMap<&str, &Response> = BTreeMap::new();
    rows.iter().for_each(|r| {
        prompts.entry(&r.prompt_id).or_insert(r);
    });
    let prompt_rows: Vec<Response> = prompts.values().map(|r| (*r).clone()).collect();
    register(
        &ctx,
        Table::Prompts,
        vec![
            ("prompt_id", strings(&prompt_rows, |r| &r.prompt_id)),
            ("source_id", strings(&prompt_rows, |r| &r.source_id)),
            ("language", strings(&prompt_rows, |r| &r.language)),
            ("text", strings(&prompt_rows, |r| &r.prompt_id)),
            ("split", strings(&prompt_rows, |_| "train")),
        ],
        prompt_rows.len(),
    );
    let batches = compute(&ctx, params).await.unwrap().collect().await.unwrap();
    batches.iter().flat_map(pairs_of).collect()
}

fn pairs_of(batch: &RecordBatch) -> Vec<Pair> {
    let batch = croco::store::schema::plain_strings(batch);
    let text = |name: &str| batch.column_by_name(name).unwrap().as_any().downcast_ref::<StringArray>().unwrap().clone();
    let (pool, prompt, chosen, rejected) =
        (text("pool_id"), text("prompt_id"), text("chosen_generation_id"), text("rejected_generation_id"));
    let target = batch.column_by_name("target").unwrap().as_any().downcast_ref::<Float64Array>().unwrap().clone();
    (0..batch.num_rows())
        .map(|i| Pair {
            pool_id: pool.value(i).into(),
            prompt_id: prompt.value(i).into(),
            chosen: chosen.value(i).into(),
            rejected: rejected.value(i).into(),
            target: target.value(i),
        })
        .collect()
}

/// Random responses: up to 4 source prompts, each in 1–3 languages, each
/// prompt with 1–64 responses. Rewards come from a small grid half the time
/// (to force ties) and are sometimes null or NaN.
fn responses() -> impl Strategy<Value = Vec<Response>> {
    let reward = prop_oneof![
        4 => (-8i32..8).prop_map(|x| Some(x as f64 / 4.0)),
        4 => (-3.0f64..3.0).prop_map(Some),
        1 => Just(None),
        1 => Just(Some(f64::NAN)),
    ];
    let prompt = prop::collection::vec(reward, 1..=64);
    let source = prop::collection::vec(prompt, 1..=3);
    prop::collection::vec(source, 1..=4).prop_map(|sources| {
        let mut rows = Vec::new();
        for (s, languages) in sources.into_iter().enumerate() {
            for (l, rewards) in languages.into_iter().enumerate() {
                let language = ["en", "fr", "mt"][l];
                for (k, reward) in rewards.into_iter().enumerate() {
                    rows.push(Response {
                        // Ids in a scrambled order so ties are not broken by insertion order.
                        generation_id: croco::ids::stable_id(&[&s.to_string(), language, &k.to_string()]),
                        prompt_id: format!("p{s}-{language}"),
                        source_id: format!("s{s}"),
                        language: language.into(),
                        reward,
                    });
                }
            }
        }
        rows
    })
}

fn params() -> impl Strategy<Value = PairsParams> {
    let pool = prop_oneof![Just(PoolScope::InLang), Just(PoolScope::AllLang)];
    let rejected =
        prop_oneof![Just(RejectedTarget::MeanMinus2std), Just(RejectedTarget::Q1), Just(RejectedTarget::Min)];
    let min_margin = prop_oneof![3 => Just(0.0), 1 => 0.0f64..2.0];
    let prompt_source =
        prop_oneof![Just(PromptSource::Chosen), Just(PromptSource::Rejected), Just(PromptSource::Random)];
    (pool, rejected, min_margin, prompt_source, 0..4u64).prop_map(
        |(pool, rejected, min_margin, prompt_source, seed)| PairsParams {
            pool,
            rejected,
            min_margin,
            prompt_source,
            seed,
            ..Default::default()
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn sql_pairs_match_the_reference_rule(rows in responses(), params in params()) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let from_sql = runtime.block_on(via_sql(&rows, &params));
        let expected = reference(&rows, &params);
        prop_assert_eq!(from_sql.len(), expected.len(), "pools: {:?}", params);
        for (got, want) in from_sql.iter().zip(&expected) {
            prop_assert_eq!((&got.pool_id, &got.prompt_id, &got.chosen, &got.rejected),
                            (&want.pool_id, &want.prompt_id, &want.chosen, &want.rejected));
            prop_assert!((got.target - want.target).abs() < 1e-9, "target {} vs {}", got.target, want.target);
        }
    }
}
