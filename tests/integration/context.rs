//! Token budgets against a bundle's context (`max_position_embeddings`):
//! a budget that cannot fit is a `croco validate` error naming its key, and
//! a prompt longer than the generate stage's budget is skipped and counted,
//! never truncated.

use std::path::Path;
use std::process::Command;

use croco::model::bundle::{Bundle, Verify};
use croco::model::tokenizer::ChatTokenizer;
use rstest::rstest;

use crate::util::{data, en_fr_head, write_pipeline};

/// The en/fr demo pipeline with the demo policy (512 positions), then `rest`.
fn pipeline(dir: &Path, rest: &str) -> String {
    let models = [
        ("policy", data("models/policy")),
        ("policy_adapter", crate::util::write_adapter(dir, 0.0).display().to_string()),
    ];
    let text = format!("{}\n{rest}", en_fr_head("context", dir, &models));
    write_pipeline(dir, &text).display().to_string()
}

#[rstest]
#[case::new_tokens_fill_the_context(
    "[stages.generate]\nmax_new_tokens = 512\n",
    "`stages.generate.max_new_tokens`: 512 new tokens leave no room for a prompt in the `policy` bundle's context of \
     512 positions (architecture.max_position_embeddings)"
)]
#[case::prompt_and_new_tokens_exceed_it(
    "[stages.generate]\nmax_prompt_tokens = 400\nmax_new_tokens = 200\n",
    "`stages.generate.max_prompt_tokens`: 400 prompt tokens + max_new_tokens 200 exceed the `policy` bundle's \
     context of 512 positions"
)]
#[case::judged_answers_fill_it(
    "[stages.evaluate.judge]\nkind = \"reward\"\nmax_new_tokens = 600\n",
    "`stages.evaluate.judge.max_new_tokens`: 600 new tokens leave no room for a prompt in the `policy` bundle's"
)]
#[case::a_variant_exceeds_it(
    "[stages.generate]\nmax_new_tokens = 8\n\n[variants.long.stages.generate]\nmax_new_tokens = 1000\n",
    "`stages.generate.max_new_tokens`: in variant `long`: 1000 new tokens leave no room"
)]
fn a_budget_beyond_the_bundles_context_is_a_validate_error_naming_the_key(#[case] rest: &str, #[case] expected: &str) {
    let dir = tempfile::tempdir().unwrap();
    let rest = match rest.contains("evaluate") {
        true => format!("[stages.evaluate]\nbatch_size = 8\n\n{rest}"),
        false => rest.to_string(),
    };
    let file = pipeline(dir.path(), &rest);
    let output = Command::new(env!("CARGO_BIN_EXE_croco")).args(["validate", &file]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(expected), "expected `{expected}` in:\n{stderr}");
}

#[test]
fn the_dpo_truncation_must_fit_the_policys_context() {
    let dir = tempfile::tempdir().unwrap();
    let rest = "[stages.generate.import]\npath = \"x.jsonl\"\n\n[stages.score.import]\npath = \"x.jsonl\"\n\n\
                [stages.pairs]\n\n[stages.ref_logps]\nmax_length = 1024\n";
    let file = pipeline(dir.path(), rest);
    let error = croco::pipeline::validate::load(Path::new(&file)).unwrap_err().to_string();
    assert!(
        error.contains(
            "`stages.ref_logps.max_length`: 1024 tokens exceed the `policy` bundle's context of 512 positions"
        ),
        "{error}"
    );
}

/// The demo prompts whose encoded prompt is longer than `budget` tokens, of those answered.
fn longer_than(budget: usize) -> (usize, usize) {
    let bundle = Bundle::open(&crate::util::repo().join("data/models/policy"), Verify::Sizes).unwrap();
    let tokenizer = ChatTokenizer::load(&bundle).unwrap();
    let text = std::fs::read_to_string(crate::util::repo().join("data/prompts/demo.jsonl")).unwrap();
    let lengths: Vec<usize> = text
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|row| ["en", "fr"].contains(&row["language"].as_str().unwrap()))
        .map(|row| tokenizer.encode_prompt(row["prompt"].as_str().unwrap()).unwrap().len())
        .collect();
    (lengths.iter().filter(|&&n| n > budget).count(), lengths.len())
}

#[tokio::test]
async fn a_prompt_longer_than_its_budget_is_skipped_and_counted_never_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let budget = 30;
    let rest = format!(
        "[stages.generate]\nsplit = \"all\"\nsamples = 2\nmax_new_tokens = 2\nmax_prompt_tokens = {budget}\n\
         batch_size = 4\nprompts_per_part = 8\n"
    );
    let file = pipeline(dir.path(), &rest);
    let (too_long, prompts) = longer_than(budget);
    assert!(too_long > 0 && too_long < prompts, "the budget must split the demo prompts ({too_long} of {prompts})");
    let reports = crate::util::run(Path::new(&file), Default::default()).await;
    let generate = reports.iter().find(|r| r.stage.name() == "generate").unwrap();
    assert_eq!(generate.stats["skipped_too_long"], too_long as u64);
    assert_eq!(generate.rows, 2 * (prompts - too_long) as u64, "two samples of every prompt that fits");
    let sql = "SELECT CAST(MAX(prompt_tokens) AS BIGINT) FROM generations";
    let batches = crate::util::query(Path::new(&file), sql).await;
    let longest = batches[0].column(0).as_any().downcast_ref::<arrow::array::Int64Array>().unwrap().value(0);
    assert!(longest <= budget as i64, "no prompt beyond the budget was answered ({longest})");
}
