//! Fuzzing by mutation (proptest; cargo-fuzz needs a nightly toolchain this
//! project does not have): the pipeline-file parser and validator, the
//! choice-task JSONL reader and the bundle-manifest reader get mutated
//! copies of real inputs — bytes deleted, inserted, replaced, lines repeated
//! or cut — and must answer with an error, never a panic. The run is
//! bounded: `CROCO_FUZZ_CASES` cases per target (default 2000, about five seconds
//! in all); raise it for a longer local run.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::util::repo;

fn cases() -> u32 {
    std::env::var("CROCO_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(2000)
}

/// One edit of a text: what mutation fuzzers do to a seed input.
#[derive(Debug, Clone)]
enum Edit {
    Delete { at: usize, len: usize },
    Insert { at: usize, bytes: Vec<u8> },
    Replace { at: usize, byte: u8 },
    RepeatLine { line: usize },
    Truncate { at: usize },
}

fn edit() -> impl Strategy<Value = Edit> {
    // Bytes that matter to TOML and JSON, plus anything at all.
    let syntax = prop::sample::select(b"[]{}=\"',.:\n#\\-0123456789 \xEF\xBB\xBF\xFF".to_vec());
    let byte = prop_oneof![syntax, any::<u8>()];
    prop_oneof![
        (any::<usize>(), 1..40usize).prop_map(|(at, len)| Edit::Delete { at, len }),
        (any::<usize>(), prop::collection::vec(byte.clone(), 1..12)).prop_map(|(at, bytes)| Edit::Insert { at, bytes }),
        (any::<usize>(), byte).prop_map(|(at, byte)| Edit::Replace { at, byte }),
        any::<usize>().prop_map(|line| Edit::RepeatLine { line }),
        any::<usize>().prop_map(|at| Edit::Truncate { at }),
    ]
}

fn apply(seed: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut text = seed.to_vec();
    for edit in edits {
        let n = text.len().max(1);
        match edit {
            Edit::Delete { at, len } => {
                let start = at % n;
                text.drain(start.min(text.len())..(start + len).min(text.len()));
            }
            Edit::Insert { at, bytes } => {
                let at = at % (text.len() + 1);
                text.splice(at..at, bytes.iter().copied());
            }
            Edit::Replace { at, byte } if !text.is_empty() => text[at % n] = *byte,
            Edit::Replace { .. } => {}
            Edit::RepeatLine { line } => {
                let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
                let picked = lines[line % lines.len()].to_vec();
                text.push(b'\n');
                text.extend_from_slice(&picked);
            }
            Edit::Truncate { at } => text.truncate(at % n),
        }
    }
    text
}

/// Runs `check` on `cases()` mutations of each seed; a panic fails the test
/// with proptest's shrunk input.
fn fuzz(seeds: &[Vec<u8>], check: impl Fn(&[u8])) {
    let mut runner = TestRunner::new(Config { cases: cases(), failure_persistence: None, ..Config::default() });
    let strategy = (0..seeds.len(), prop::collection::vec(edit(), 1..6));
    runner
        .run(&strategy, |(seed, edits)| {
            check(&apply(&seeds[seed], &edits));
            Ok(())
        })
        .unwrap();
}

fn files(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == extension))
        .collect();
    found.sort();
    found
}

#[test]
fn the_pipeline_parser_answers_every_mutated_pipeline_without_panicking() {
    let mut seeds: Vec<Vec<u8>> =
        files(&repo().join("pipelines"), "toml").iter().map(|p| std::fs::read(p).unwrap()).collect();
    seeds.extend(files(&repo().join("tests/fixtures/bad_pipelines"), "toml").iter().map(|p| std::fs::read(p).unwrap()));
    let path = Path::new("fuzzed.toml");
    fuzz(&seeds, |bytes| {
        let text = String::from_utf8_lossy(bytes);
        match croco::pipeline::validate::parse_with_variants(&text, path) {
            Ok(_) | Err(croco::pipeline::SpecError::Invalid { .. }) => {}
            Err(other) => panic!("a parsed text failed as `{other}`"),
        }
    });
}

#[test]
fn the_choice_task_reader_answers_every_mutated_task_file_without_panicking() {
    use croco::spec::evaluate::ChoiceTask;
    use croco::stages::evaluate::items::parse_items;
    // The first lines of each demo task are the seeds.
    let head = |p: &PathBuf| std::fs::read(p).unwrap().into_iter().take(4000).collect::<Vec<u8>>();
    let seeds: Vec<Vec<u8>> = files(&repo().join("data/eval"), "jsonl").iter().map(head).collect();
    assert!(!seeds.is_empty(), "the demo tasks are the seeds");
    let task: ChoiceTask = toml::from_str("name = \"t\"\nsource = \"t.jsonl\"\n").unwrap();
    fuzz(&seeds, |bytes| {
        let _ = parse_items(bytes, &task);
    });
}

#[test]
fn the_bundle_reader_answers_every_mutated_manifest_without_panicking() {
    use croco::model::bundle::{Bundle, Verify};
    let source = repo().join("data/models/policy");
    let dir = tempfile::tempdir().unwrap();
    // The bundle's files by link, the manifest written per case.
    for entry in std::fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "croco-model.toml" {
            std::os::unix::fs::symlink(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
    }
    let seed = std::fs::read(source.join("croco-model.toml")).unwrap();
    fuzz(&[seed], |bytes| {
        std::fs::write(dir.path().join("croco-model.toml"), bytes).unwrap();
        let _ = Bundle::open(dir.path(), Verify::Sizes);
    });
}
