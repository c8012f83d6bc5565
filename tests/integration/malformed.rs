//! The malformed-input corpus, `tests/fixtures/malformed/cases.toml`: every
//! kind of input croco reads — prompt files, imported responses and scores,
//! choice-task and judge prompt files, model bundles, LoRA adapters, storage
//! URLs and options — broken the ways files made elsewhere break. Each case
//! runs `croco run` (the binary, on a fresh root) over a pipeline that reads
//! the broken input, and must exit with its code, print every `expect`
//! message, and leave no version, committed or half-written, of the table of
//! the stage that read it.

use std::path::{Path, PathBuf};
use std::process::Command;

use croco::store::Table;
use serde::Deserialize;
use sha2::Digest;

use crate::util::{data, en_fr_head, prompts_only_pipeline, repo, write_adapter, write_pipeline};

#[derive(Debug, Deserialize)]
struct Corpus {
    case: Vec<Case>,
}

/// One malformed input and what croco must say about it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    kind: Kind,
    /// The broken file, relative to the corpus directory (file kinds).
    #[serde(default)]
    file: Option<String>,
    /// Changes to a copy of a good bundle or adapter (bundle and adapter kinds).
    #[serde(default)]
    edits: Vec<Edit>,
    /// Which demo bundle the edited copy starts from (default: the kind's own).
    #[serde(default)]
    copy_of: Option<String>,
    /// Rewrites the manifest's size and sha256 of every edited file, so
    /// that what is checked is the file's content, not its checksum.
    #[serde(default)]
    refresh_checksums: bool,
    /// `[run]` lines replacing the root (storage kind).
    #[serde(default)]
    run: Option<String>,
    /// The prompts stage's `source` (storage kind).
    #[serde(default)]
    source: Option<String>,
    /// Messages stderr must contain.
    expect: Vec<String>,
    /// The exit code (1: a run failed; 2: the pipeline file is invalid).
    #[serde(default = "exit_code_of_a_failed_run")]
    exit_code: i32,
}

fn exit_code_of_a_failed_run() -> i32 {
    1
}

/// What the broken input is, and so which pipeline reads it.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Prompts,
    Responses,
    Scores,
    ChoiceTask,
    JudgePrompts,
    PolicyBundle,
    RewardBundle,
    Adapter,
    Storage,
}

impl Kind {
    /// The table of the stage that reads this kind of input.
    fn table(self) -> Table {
        match self {
            Kind::Prompts | Kind::Storage => Table::Prompts,
            Kind::Responses | Kind::PolicyBundle | Kind::Adapter => Table::Generations,
            Kind::Scores | Kind::RewardBundle => Table::Scores,
            Kind::ChoiceTask | Kind::JudgePrompts => Table::EvalItems,
        }
    }
}

/// One change to a file of a copied bundle or adapter directory.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Edit {
    file: String,
    /// Replace the first occurrence of the first string (which must occur) by the second.
    #[serde(default)]
    replace: Option<[String; 2]>,
    /// Keep only this many bytes.
    #[serde(default)]
    truncate: Option<usize>,
    /// Delete the file.
    #[serde(default)]
    remove: bool,
}

fn corpus_dir() -> PathBuf {
    repo().join("tests/fixtures/malformed")
}

#[test]
fn every_malformed_input_is_refused_with_its_message_and_writes_nothing() {
    let text = std::fs::read_to_string(corpus_dir().join("cases.toml")).unwrap();
    let corpus: Corpus = toml::from_str(&text).unwrap_or_else(|e| panic!("cases.toml: {e}"));
    assert!(corpus.case.len() >= 40, "the corpus holds {} cases, at least 40 are needed", corpus.case.len());
    let adapter_home = tempfile::tempdir().unwrap();
    let good_adapter = write_adapter(adapter_home.path(), 0.05);
    // The cases are independent processes on their own roots: run them a few at a time.
    let failures: Vec<String> = std::thread::scope(|scope| {
        let chunks = corpus.case.chunks(corpus.case.len().div_ceil(4));
        let handles: Vec<_> = chunks
            .map(|cases| {
                let good_adapter = &good_adapter;
                scope.spawn(move || cases.iter().filter_map(|case| check(case, good_adapter).err()).collect::<Vec<_>>())
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        corpus.case.len(),
        failures.join("\n\n")
    );
}

/// Runs one case: `Err` says how croco's answer differed from the expected one.
fn check(case: &Case, good_adapter: &Path) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = write_pipeline(dir.path(), &pipeline_text(case, dir.path(), good_adapter));
    let output = Command::new(env!("CARGO_BIN_EXE_croco")).args(["run", pipeline.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let mut problems = Vec::new();
    if output.status.code() != Some(case.exit_code) {
        problems.push(format!("exit code {:?}, expected {}", output.status.code(), case.exit_code));
    }
    problems.extend(case.expect.iter().filter(|e| !stderr.contains(e.as_str())).map(|e| format!("no `{e}`")));
    let written = dir.path().join("root/tables").join(case.kind.table().name());
    if let Some(entry) = std::fs::read_dir(&written).into_iter().flatten().next() {
        problems.push(format!("wrote {}", entry.unwrap().path().display()));
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(format!("{} ({:?}): {}; stderr:\n{stderr}", case.name, case.kind, problems.join("; "))),
    }
}

/// The pipeline that reads `case`'s broken input, storing tables under `dir/root`.
fn pipeline_text(case: &Case, dir: &Path, good_adapter: &Path) -> String {
    let file = || corpus_dir().join(case.file.as_deref().expect("a file case names its `file`")).display().to_string();
    let demo = data("demo/scored_generations.jsonl");
    let models = |role: &str, location: String| en_fr_head("malformed", dir, &[(role, location)]);
    match case.kind {
        Kind::Prompts => prompts_only_pipeline(&format!("root = \"{}\"", dir.join("root").display()), &file()),
        Kind::Storage => prompts_only_pipeline(
            case.run.as_deref().expect("a storage case sets `run`"),
            case.source.as_deref().unwrap_or(&data("prompts/demo.jsonl")),
        ),
        Kind::Responses => {
            format!("{}\n[stages.generate.import]\npath = \"{}\"\n", models("policy", data("models/policy")), file())
        }
        Kind::Scores => format!(
            "{}\n[stages.generate.import]\npath = \"{demo}\"\n\n[stages.score.import]\npath = \"{}\"\n",
            en_fr_head("malformed", dir, &[]),
            file()
        ),
        Kind::ChoiceTask => evaluate_pipeline(
            dir,
            good_adapter,
            &format!("choice = [{{ name = \"task\", source = \"{}\" }}]\n", file()),
        ),
        Kind::JudgePrompts => evaluate_pipeline(
            dir,
            good_adapter,
            &format!(
                "\n[stages.evaluate.judge]\nkind = \"reward\"\nmax_new_tokens = 4\nprompts = {{ source = \"{}\" }}\n",
                file()
            ),
        ),
        Kind::PolicyBundle => {
            let bundle = edited_copy(case, &demo_bundle(case, "policy"), dir);
            format!("{}\n[stages.generate]\nsamples = 1\nmax_new_tokens = 2\n", models("policy", bundle))
        }
        Kind::RewardBundle => {
            let bundle = edited_copy(case, &demo_bundle(case, "reward"), dir);
            format!("{}\n[stages.generate.import]\npath = \"{demo}\"\n\n[stages.score]\n", models("reward", bundle))
        }
        Kind::Adapter => {
            let adapter = edited_copy(case, good_adapter, dir);
            let head = en_fr_head("malformed", dir, &[("policy", data("models/policy")), ("policy_adapter", adapter)]);
            format!("{head}\n[stages.generate]\nsamples = 1\nmax_new_tokens = 2\n")
        }
    }
}

/// The demo bundle a bundle case edits a copy of: `copy_of`, else `own`.
fn demo_bundle(case: &Case, own: &str) -> PathBuf {
    repo().join("data/models").join(case.copy_of.as_deref().unwrap_or(own))
}

/// The demo policy, `adapter` as the tuned policy, and an evaluate stage
/// whose settings are `evaluate` (one choice task or a judge).
fn evaluate_pipeline(dir: &Path, adapter: &Path, evaluate: &str) -> String {
    let models = [
        ("policy", data("models/policy")),
        ("policy_adapter", adapter.display().to_string()),
        ("reward", data("models/reward")),
    ];
    format!("{}\n[stages.evaluate]\nbatch_size = 8\n{evaluate}", en_fr_head("malformed", dir, &models))
}

/// A copy of the directory `good` under `dir` with `case.edits` applied: its path.
fn edited_copy(case: &Case, good: &Path, dir: &Path) -> String {
    let copy = dir.join("input");
    crate::bundles::copy_dir(good, &copy);
    for edit in &case.edits {
        let path = copy.join(&edit.file);
        if edit.remove {
            std::fs::remove_file(&path).unwrap();
            continue;
        }
        let mut bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {}: {e}", case.name, edit.file));
        if let Some([from, to]) = &edit.replace {
            let at =
                find(&bytes, from.as_bytes()).unwrap_or_else(|| panic!("{}: `{from}` not in {}", case.name, edit.file));
            bytes.splice(at..at + from.len(), to.bytes());
        }
        if let Some(length) = edit.truncate {
            bytes.truncate(length);
        }
        std::fs::write(&path, &bytes).unwrap();
    }
    if case.refresh_checksums {
        refresh_checksums(&copy, case.edits.iter().map(|e| e.file.as_str()));
    }
    copy.display().to_string()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Rewrites the `[files]` entries of `files` in the bundle manifest at
/// `bundle` to their present size and sha256.
fn refresh_checksums<'a>(bundle: &Path, files: impl Iterator<Item = &'a str>) {
    let manifest = bundle.join("croco-model.toml");
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    for file in files.filter(|f| *f != "croco-model.toml") {
        let bytes = std::fs::read(bundle.join(file)).unwrap();
        let prefix = format!("\"{file}\" = {{ sha256 = \"");
        let start = text.find(&prefix).unwrap_or_else(|| panic!("{file} is not in the manifest's [files]"));
        let end = start + text[start..].find('\n').unwrap();
        let entry = format!("{prefix}{:x}\", bytes = {} }}", sha2::Sha256::digest(&bytes), bytes.len());
        text.replace_range(start..end, &entry);
    }
    std::fs::write(manifest, text).unwrap();
}
