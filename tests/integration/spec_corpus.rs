//! Every malformed pipeline file in `tests/fixtures/bad_pipelines/` must be
//! rejected with the messages its `# expect:` lines name (file:line:column and
//! key included).

use std::path::Path;

use croco::pipeline::{SpecError, validate};

#[test]
fn every_bad_pipeline_is_rejected_with_its_expected_messages() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bad_pipelines");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 15, "the corpus must hold at least 15 files");
    let mut failures = Vec::new();
    for file in files {
        let source = std::fs::read_to_string(&file).unwrap();
        let expected: Vec<&str> = source.lines().filter_map(|l| l.strip_prefix("# expect: ")).collect();
        assert!(!expected.is_empty(), "{} has no `# expect:` line", file.display());
        let message = match validate::parse(&source, &file) {
            Ok(_) => panic!("{} was accepted", file.display()),
            Err(error @ SpecError::Invalid { .. }) => error.to_string(),
            Err(other) => panic!("{}: unexpected error {other}", file.display()),
        };
        for needle in expected.into_iter().filter(|needle| !message.contains(needle)) {
            failures.push(format!("{}: expected `{needle}` in:\n{message}", file.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_shipped_pipelines_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            validate::load(&path).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
