//! Ablations as variants of one pipeline file: shared tables are computed
//! once (content keys), each variant's pairs come from its own responses,
//! and `sql/ablation_summary.sql` compares them.

use std::path::{Path, PathBuf};

use arrow::array::Array;

use crate::util::{repo, strings};

/// Imported en/fr responses (on-policy by label), a short tune and a small
/// evaluation; variants: `all_lang` pools, a `beta` change (shares pairs and
/// ref_logps), and `off_policy` (the same file imported as off-policy responses).
fn ablation_pipeline(dir: &Path) -> PathBuf {
    let text = format!(
        r#"{head}
[stages.ref_logps]
max_length = 192
max_prompt_length = 96

[stages.tune]
learning_rate = 1e-3
micro_batch = 4
grad_accumulation = 2
lora = {{ rank = 4, alpha = 8.0, dropout = 0.0 }}

[stages.evaluate]
choice = [{{ name = "word_order", source = "{data}/eval/word_order.jsonl", max_items_per_language = 4 }}]

[stages.report]
bootstrap = 100

[variants.all_lang.stages.pairs]
pool = "all_lang"

[variants.beta.stages.tune]
beta = 0.3

[variants.off_policy.stages.generate.import]
path = "{data}/demo/scored_generations.jsonl"
source = "off_policy"
label = "other-model"
"#,
        head = crate::util::imported_pairs_pipeline("ablations", dir),
        data = repo().join("data").display()
    );
    crate::util::write_pipeline(dir, &text)
}

/// Every variant runs; each shared stage ran once across them, and the
/// summary has a row per variant.
#[tokio::test]
async fn variants_share_every_table_they_do_not_change_and_are_compared_in_one_table() {
    let dir = tempfile::tempdir().unwrap();
    let file = ablation_pipeline(dir.path());
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_croco"))
        .args(["run", file.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut runs = vec![("base".to_string(), summary["stages"].clone())];
    for (name, stages) in summary["variants"].as_object().unwrap() {
        runs.push((name.clone(), stages.clone()));
    }
    let ran = |stage: &str| -> Vec<String> {
        let did = |stages: &serde_json::Value| {
            stages.as_array().unwrap().iter().any(|s| s["stage"] == stage && s["status"] == "ran")
        };
        runs.iter().filter(|(_, stages)| did(stages)).map(|(name, _)| name.clone()).collect()
    };
    assert_eq!(ran("prompts"), ["base"], "prompts are shared by every variant");
    assert_eq!(ran("generate"), ["base", "off_policy"]);
    assert_eq!(ran("score"), ["base", "off_policy"]);
    assert_eq!(ran("pairs"), ["base", "all_lang", "off_policy"], "beta shares the base's pairs");
    assert_eq!(ran("ref_logps"), ["base", "all_lang", "off_policy"], "and its reference log-probs");
    assert_eq!(ran("tune"), ["base", "all_lang", "beta", "off_policy"]);
    assert_eq!(ran("evaluate"), ["base", "all_lang", "beta", "off_policy"]);

    let planned = crate::util::plan(&file).await;
    let ctx = croco::pipeline::session::pipeline_session(&planned).await.unwrap();
    // Off-policy pairs are made of off-policy responses only, and on-policy ones of on-policy responses.
    let sources = "SELECT DISTINCT p.pipeline_variant, g.source FROM pairs_by_variant AS p \
                   JOIN generations_by_variant AS g ON g.pipeline_variant = p.pipeline_variant \
                   AND g.generation_id IN (p.chosen_generation_id, p.rejected_generation_id) \
                   ORDER BY p.pipeline_variant, g.source";
    let batches = ctx.sql(sources).await.unwrap().collect().await.unwrap();
    assert_eq!(strings(&batches, 0), ["all_lang", "base", "beta", "off_policy"]);
    assert_eq!(strings(&batches, 1), ["on_policy", "on_policy", "on_policy", "off_policy"]);

    let sql = std::fs::read_to_string(repo().join("sql/ablation_summary.sql")).unwrap();
    let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
    let variants = strings(&batches, 0);
    for variant in ["all_lang", "base", "beta", "off_policy"] {
        assert_eq!(variants.iter().filter(|v| *v == variant).count(), 3, "en, fr and all for {variant}");
    }
    let pairs = batches.iter().flat_map(|b| {
        let column = b.column(5).as_any().downcast_ref::<arrow::array::Int64Array>().unwrap().clone();
        (0..column.len()).map(move |i| column.value(i))
    });
    let all_rows: Vec<(String, i64)> = variants.iter().cloned().zip(pairs).collect();
    let pairs_of = |v: &str| all_rows.iter().filter(|(name, _)| name == v).map(|(_, p)| *p).max().unwrap();
    assert!(pairs_of("all_lang") < pairs_of("base"), "one pool per source instead of per prompt");
    assert_eq!(pairs_of("beta"), pairs_of("base"));

    // Regression: gc --versions must not take a variant's tables for unused ones.
    let gc = std::process::Command::new(env!("CARGO_BIN_EXE_croco"))
        .args(["gc", file.to_str().unwrap(), "--versions", "--older-than", "0s", "--json"])
        .output()
        .unwrap();
    let gc: serde_json::Value = serde_json::from_slice(&gc.stdout).unwrap();
    let parquet = gc["objects"].as_array().unwrap().iter().filter(|o| o["url"].as_str().unwrap().ends_with(".parquet"));
    assert_eq!(parquet.count(), 0, "no variant's part is garbage: {gc}");

    let report = std::process::Command::new(env!("CARGO_BIN_EXE_croco"))
        .args(["report", file.to_str().unwrap(), "--format", "md"])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&report.stdout);
    assert!(report.contains("| off_policy | all |"), "{report}");
}

/// A variant that would move the storage root is refused: sharing needs one root.
#[test]
fn a_variant_cannot_move_the_root() {
    let text = "[run]\nname = \"x\"\nroot = \"memory://x\"\nlanguages = [\"en\"]\n\n[stages.prompts]\nsource = \"p.jsonl\"\n\n\
                [variants.elsewhere.run]\nroot = \"memory://y\"\n\n[variants.bad.stages.pairs]\npool = \"nowhere\"\n";
    let error = croco::pipeline::validate::parse(text, Path::new("v.toml")).unwrap_err().to_string();
    assert!(error.contains("`variants.elsewhere`: variants share the base's storage root"), "{error}");
    assert!(error.contains("in variant `bad`"), "{error}");
}

/// An off-policy variant sampled from a second bundle (`models.off_policy`,
/// here the demo policy again under that role): its rows say `off_policy`,
/// its generation ids differ from the on-policy ones, and its pairs are made
/// of them only, while prompts are shared.
#[tokio::test]
async fn an_off_policy_variant_samples_the_second_bundle_and_pairs_its_responses_only() {
    use croco::pipeline::runner::RunOptions;
    let dir = tempfile::tempdir().unwrap();
    let base = crate::model_stages::model_pipeline(dir.path(), "");
    let text = std::fs::read_to_string(&base).unwrap()
        + &format!(
            "\n[variants.other.models]\noff_policy = \"{}/data/models/policy\"\n\n[variants.other.stages.generate]\nmodel = \"off_policy\"\n",
            repo().display()
        );
    let file = dir.path().join("variants.toml");
    std::fs::write(&file, text).unwrap();
    let planned = crate::util::plan(&file).await;
    for (_, plan) in planned.all() {
        croco::pipeline::runner::run(plan, RunOptions::default()).await.unwrap();
    }
    let (base_plan, other) = (&planned, &planned.variants[0].1);
    let key = |plan: &croco::pipeline::Plan, stage| plan.stage(stage).unwrap().key.clone();
    use croco::spec::StageName::{Generate, Prompts};
    assert_eq!(key(base_plan, Prompts), key(other, Prompts));
    assert_ne!(key(base_plan, Generate), key(other, Generate));
    assert!(other.stage(Generate).unwrap().models.contains_key("off_policy"));

    let ctx = croco::pipeline::session::pipeline_session(&planned).await.unwrap();
    let sql = "SELECT DISTINCT p.pipeline_variant, g.source FROM pairs_by_variant AS p \
               JOIN generations_by_variant AS g ON g.pipeline_variant = p.pipeline_variant \
               AND g.generation_id IN (p.chosen_generation_id, p.rejected_generation_id) ORDER BY 1, 2";
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    assert_eq!(strings(&batches, 0), ["base", "other"]);
    assert_eq!(strings(&batches, 1), ["on_policy", "off_policy"]);
    let shared = "SELECT COUNT(*) FROM generations_by_variant AS a JOIN generations_by_variant AS b \
                  ON a.generation_id = b.generation_id WHERE a.pipeline_variant = 'base' AND b.pipeline_variant = 'other'";
    let batches = ctx.sql(shared).await.unwrap().collect().await.unwrap();
    let count = batches[0].column(0).as_any().downcast_ref::<arrow::array::Int64Array>().unwrap().value(0);
    assert_eq!(count, 0, "off-policy rows never reuse an on-policy generation id");
}

/// Online rounds: round 2 answers the other half of the training prompts,
/// sampled by the policy with round 1's adapter (its checksum is in round
/// 2's generate key), tunes on from that adapter against the base reference.
#[tokio::test]
async fn round_two_generates_with_round_one_adapter_on_its_own_prompts() {
    use croco::spec::StageName::{Generate, RefLogps, Tune};
    let dir = tempfile::tempdir().unwrap();
    let base = crate::model_stages::model_pipeline(dir.path(), "");
    let text = std::fs::read_to_string(&base).unwrap().replace("threads = 2\n", "threads = 2\nrounds = 2\n")
        + "\n[stages.ref_logps]\nmax_length = 128\nmax_prompt_length = 64\n\n[stages.tune]\nlearning_rate = 1e-3\n\
           micro_batch = 4\ngrad_accumulation = 1\nlora = { rank = 4, alpha = 8.0, dropout = 0.0 }\n";
    let file = dir.path().join("online.toml");
    std::fs::write(&file, text).unwrap();
    let output =
        std::process::Command::new(env!("CARGO_BIN_EXE_croco")).args(["run", file.to_str().unwrap()]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let planned = crate::util::plan(&file).await;
    let names: Vec<String> = planned.all().into_iter().map(|(name, _)| name).collect();
    assert_eq!(names, ["base", "base.round2"]);
    let (first, second) = (&planned, &planned.rounds[0]);
    let bundle =
        croco::model::bundle::Bundle::open(&repo().join("data/models/policy"), croco::model::bundle::Verify::Sizes)
            .unwrap()
            .checksum;
    assert_eq!(first.stage(Generate).unwrap().models["policy"], bundle, "round 1 samples the base");
    let adapter_dir = first.storage.path(&format!(
        "{}/adapter",
        croco::store::tables::version_dir(croco::store::Table::TrainLog, &first.stage(Tune).unwrap().key)
    ));
    let adapter_dir = std::path::PathBuf::from("/").join(adapter_dir.as_ref());
    let weights = std::fs::read(adapter_dir.join("adapter_model.safetensors")).unwrap();
    let config = std::fs::read(adapter_dir.join("adapter_config.json")).unwrap();
    let checksum = croco::model::lora::checksum_of_files(&weights, &config);
    assert_eq!(second.stage(Generate).unwrap().models["policy"], format!("{bundle}+adapter:{checksum}"));
    assert_eq!(second.stage(RefLogps).unwrap().models["reference"], bundle, "the reference stays the base");
    assert_eq!(second.stage(Tune).unwrap().models["policy"], format!("{bundle}+adapter:{checksum}"));

    let ctx = croco::pipeline::session::pipeline_session(&planned).await.unwrap();
    let overlap = "SELECT COUNT(*) FROM (SELECT DISTINCT prompt_id FROM generations_by_variant WHERE pipeline_variant = 'base') a \
                   JOIN (SELECT DISTINCT prompt_id FROM generations_by_variant WHERE pipeline_variant = 'base.round2') b \
                   ON a.prompt_id = b.prompt_id";
    let count = |sql: &str| {
        let ctx = &ctx;
        let sql = sql.to_string();
        async move {
            let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
            batches[0].column(0).as_any().downcast_ref::<arrow::array::Int64Array>().unwrap().value(0)
        }
    };
    assert_eq!(count(overlap).await, 0, "the rounds answer disjoint prompts");
    let answered = count("SELECT COUNT(DISTINCT prompt_id) FROM generations_by_variant").await;
    let train = count("SELECT COUNT(*) FROM prompts WHERE split = 'train'").await;
    assert_eq!(answered, train, "together they answer every training prompt once");
    // From B = 0 the policy is the reference: its first step's implicit rewards would be 0 up to the
    // graphs' float error (β · ~1e-5); from round 1's adapter they are not (7.9e-4 measured).
    let first_rewards = "SELECT CAST((ABS(chosen_reward) + ABS(rejected_reward)) * 1000000000 AS BIGINT) \
                         FROM train_log_by_variant WHERE pipeline_variant = 'base.round2' AND step = 1";
    let rewards = count(first_rewards).await as f64 / 1e9;
    assert!(rewards > 2e-5, "round 2 starts from round 1's adapter, not B = 0: implicit rewards {rewards}");
}

/// The mixed ablation: the policy's own samples and imported off-policy
/// responses in one generations table, pairs with an on-policy chosen and an
/// off-policy rejected response, and the reverse.
#[tokio::test]
async fn mixed_pairs_take_each_role_from_the_named_source() {
    use croco::pipeline::runner::RunOptions;
    let dir = tempfile::tempdir().unwrap();
    let also = format!(
        "also_import = {{ path = \"{}/data/demo/scored_generations.jsonl\", source = \"off_policy\", label = \"other\" }}",
        repo().display()
    );
    let base = crate::model_stages::model_pipeline(dir.path(), &also);
    let text = std::fs::read_to_string(&base).unwrap()
        + "chosen_source = \"on_policy\"\nrejected_source = \"off_policy\"\n\n\
           [variants.reverse.stages.pairs]\nchosen_source = \"off_policy\"\nrejected_source = \"on_policy\"\n";
    let file = dir.path().join("mixed.toml");
    std::fs::write(&file, text).unwrap();
    let planned = crate::util::plan(&file).await;
    for (_, plan) in planned.all() {
        croco::pipeline::runner::run(plan, RunOptions::default()).await.unwrap();
    }
    let ctx = croco::pipeline::session::pipeline_session(&planned).await.unwrap();
    let sql = "SELECT DISTINCT p.pipeline_variant, c.source, r.source FROM pairs_by_variant AS p \
               JOIN generations_by_variant AS c ON c.pipeline_variant = p.pipeline_variant AND c.generation_id = p.chosen_generation_id \
               JOIN generations_by_variant AS r ON r.pipeline_variant = p.pipeline_variant AND r.generation_id = p.rejected_generation_id \
               ORDER BY 1";
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    assert_eq!(strings(&batches, 0), ["base", "reverse"], "one source pairing per variant, and pairs exist");
    assert_eq!(strings(&batches, 1), ["on_policy", "off_policy"]);
    assert_eq!(strings(&batches, 2), ["off_policy", "on_policy"]);
    let sources = "SELECT source, COUNT(*) FROM generations GROUP BY source ORDER BY source";
    let batches = ctx.sql(sources).await.unwrap().collect().await.unwrap();
    assert_eq!(strings(&batches, 0), ["off_policy", "on_policy"], "both sources in one table");
}
