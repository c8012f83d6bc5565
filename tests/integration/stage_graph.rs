//! The stage graph: content keys decide what reruns.

use croco::pipeline::StageState;
use croco::pipeline::runner::RunOptions;
use croco::spec::StageName;

use crate::util::{demo_pipeline_text, plan, ran, run, write_pipeline};

#[tokio::test]
async fn an_unchanged_rerun_does_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let file = write_pipeline(dir.path(), &demo_pipeline_text(root.to_str().unwrap(), "", ""));
    assert_eq!(ran(&run(&file, RunOptions::default()).await), ["prompts", "generate", "score", "pairs"]);
    let again = run(&file, RunOptions::default()).await;
    assert!(ran(&again).is_empty(), "{again:?}");
    assert!(again.iter().all(|r| r.rows > 0));
}

#[tokio::test]
async fn changing_a_parameter_reruns_that_stage_and_its_dependents_only() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let root = root.to_str().unwrap();
    let file = write_pipeline(dir.path(), &demo_pipeline_text(root, "", ""));
    run(&file, RunOptions::default()).await;

    // A pairs parameter: only pairs reruns, and the old version stays readable.
    let before = plan(&file).await.stage(StageName::Pairs).unwrap().key.clone();
    write_pipeline(dir.path(), &demo_pipeline_text(root, "", "rejected = \"min\""));
    assert_eq!(ran(&run(&file, RunOptions::default()).await), ["pairs"]);
    let versions =
        croco::store::manifest::list_versions(&plan(&file).await.storage, croco::store::Table::Pairs).await.unwrap();
    assert!(versions.iter().any(|v| v.key == before) && versions.len() == 2);

    // A prompts parameter: prompts and everything downstream rerun.
    write_pipeline(dir.path(), &demo_pipeline_text(root, "split_seed = 7", "rejected = \"min\""));
    assert_eq!(ran(&run(&file, RunOptions::default()).await), ["prompts", "generate", "score", "pairs"]);
}

#[tokio::test]
async fn editing_an_input_file_makes_its_stage_stale() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let prompts = dir.path().join("prompts.jsonl");
    std::fs::write(&prompts, "{\"text\": \"Hello there\", \"language\": \"en\"}\n").unwrap();
    let text = format!(
        "[run]\nname = \"t\"\nroot = \"{}\"\nlanguages = [\"en\"]\n\n[stages.prompts]\nsource = \"{}\"\n",
        root.display(),
        prompts.display()
    );
    let file = write_pipeline(dir.path(), &text);
    run(&file, RunOptions::default()).await;
    let planned = plan(&file).await;
    assert_eq!(planned.state(&planned.stages[0]).await.unwrap().0, StageState::Current);
    std::fs::write(&prompts, "{\"text\": \"Hello again\", \"language\": \"en\"}\n").unwrap();
    let planned = plan(&file).await;
    assert_eq!(planned.state(&planned.stages[0]).await.unwrap().0, StageState::Stale);
}

#[tokio::test]
async fn a_single_stage_rerun_touches_only_that_stage() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let file = write_pipeline(dir.path(), &demo_pipeline_text(root.to_str().unwrap(), "", ""));
    run(&file, RunOptions::default()).await;
    let reports = run(&file, RunOptions { only: Some(StageName::Score), ..Default::default() }).await;
    assert_eq!(ran(&reports), ["score"]);
    let forced = run(&file, RunOptions { force: true, ..Default::default() }).await;
    assert_eq!(ran(&forced), ["prompts", "generate", "score", "pairs"]);
}

#[tokio::test]
async fn a_single_stage_rerun_refuses_when_its_inputs_are_missing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let file = write_pipeline(dir.path(), &demo_pipeline_text(root.to_str().unwrap(), "", ""));
    let planned = plan(&file).await;
    let options = RunOptions { only: Some(StageName::Pairs), ..Default::default() };
    let error = croco::pipeline::runner::run(&planned, options).await.unwrap_err().to_string();
    assert!(error.contains("stage `pairs` needs table `"), "{error}");
    assert!(error.contains("run the pipeline without --stage first"), "{error}");
    assert!(!root.join("tables/pairs").exists(), "nothing may be written");
}
