//! `croco gc`: finds objects no manifest references (dry run by default),
//! deletes them with --apply, never touches what a current version lists.

use std::process::{Command, Output};

use crate::util::{demo_pipeline_text, write_pipeline};

fn croco(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_croco")).args(args).output().unwrap()
}

fn json(output: &Output) -> serde_json::Value {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn gc_collects_stray_parts_and_unused_versions_but_keeps_current_tables() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let file = write_pipeline(dir.path(), &demo_pipeline_text(root.to_str().unwrap(), "", ""));
    let file = file.to_str().unwrap().to_string();
    assert!(croco(&["run", &file]).status.success());
    let status = json(&croco(&["status", &file, "--json"]));
    let pairs_key = status["stages"][3]["key"].as_str().unwrap().to_string();

    // A part of a failed attempt beside a committed version, and a crashed uncommitted version.
    let pairs_dir = root.join("tables/pairs").join(&pairs_key);
    let listed = std::fs::read_dir(&pairs_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "parquet"))
        .unwrap();
    std::fs::copy(&listed, pairs_dir.join("part-dead0000-00000.parquet")).unwrap();
    let crashed = root.join("tables/scores/0123456789abcdef");
    std::fs::create_dir_all(&crashed).unwrap();
    std::fs::write(crashed.join("part-dead0000-00000.parquet"), b"half a file").unwrap();

    let dry = json(&croco(&["gc", &file, "--older-than", "0s", "--json"]));
    let urls: Vec<&str> = dry["objects"].as_array().unwrap().iter().map(|o| o["url"].as_str().unwrap()).collect();
    assert_eq!(urls.len(), 2, "{urls:?}");
    assert!(urls.iter().any(|u| u.ends_with(&format!("pairs/{pairs_key}/part-dead0000-00000.parquet"))));
    assert!(urls.iter().any(|u| u.ends_with("scores/0123456789abcdef/part-dead0000-00000.parquet")));
    assert_eq!(dry["deleted"], false);
    assert!(pairs_dir.join("part-dead0000-00000.parquet").exists(), "a dry run deletes nothing");

    assert_eq!(json(&croco(&["gc", &file, "--older-than", "0s", "--json", "--apply"]))["deleted"], true);
    assert!(!pairs_dir.join("part-dead0000-00000.parquet").exists() && listed.exists());
    let count = croco(&["sql", &file, "SELECT COUNT(*) AS n FROM pairs", "--format", "csv"]);
    assert_eq!(String::from_utf8_lossy(&count.stdout), "n\n270\n");

    // An older pairs setting: kept without --versions, collected with it.
    std::fs::write(
        &file,
        std::fs::read_to_string(&file).unwrap().replace("[stages.pairs]\n", "[stages.pairs]\nrejected = \"q1\"\n"),
    )
    .unwrap();
    assert!(croco(&["run", &file]).status.success());
    let kept = json(&croco(&["gc", &file, "--older-than", "0s", "--json"]));
    assert_eq!(kept["objects"].as_array().unwrap().len(), 0);
    let versions = json(&croco(&["gc", &file, "--older-than", "0s", "--versions", "--apply", "--json"]));
    assert!(versions["objects"].as_array().unwrap().iter().all(|o| o["url"].as_str().unwrap().contains(&pairs_key)));
    assert!(!pairs_dir.exists() || std::fs::read_dir(&pairs_dir).unwrap().count() == 0);
    let states = json(&croco(&["status", &file, "--json"]));
    assert!(states["stages"].as_array().unwrap().iter().all(|s| s["state"] == "current"));
}
