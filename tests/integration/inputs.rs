//! Input files as other tools write them: a byte-order mark, CRLF line
//! ends, a mistyped value on some line. Files that must be refused are in
//! the malformed-input corpus (`malformed.rs`).

use std::path::Path;
use std::process::Command;

use rstest::rstest;

/// A pipeline of the prompts stage alone over `prompts`, under `dir/root`.
fn prompts_pipeline(dir: &Path, prompts: &Path) -> String {
    let root = format!("root = \"{}\"", dir.join("root").display());
    let text = crate::util::prompts_only_pipeline(&root, &prompts.display().to_string());
    crate::util::write_pipeline(dir, &text).display().to_string()
}

/// Runs `croco run` on a prompts file with `content`: exit code and stderr.
fn run_prompts(name: &str, content: &[u8]) -> (Option<i32>, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join(name);
    std::fs::write(&prompts, content).unwrap();
    let file = prompts_pipeline(dir.path(), &prompts);
    let output = Command::new(env!("CARGO_BIN_EXE_croco")).args(["run", &file]).output().unwrap();
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned(), dir)
}

fn committed_prompts(dir: &Path) -> usize {
    crate::util::committed_versions(&dir.join("root"), "prompts")
}

const LINES: &str =
    "{\"text\": \"Hello there\", \"language\": \"en\"}\n{\"text\": \"Bonjour\", \"language\": \"fr\"}\n";

#[rstest]
#[case::jsonl_with_a_byte_order_mark("prompts.jsonl", [b"\xEF\xBB\xBF", LINES.as_bytes()].concat())]
#[case::jsonl_with_crlf_line_ends("prompts.jsonl", LINES.replace('\n', "\r\n").into_bytes())]
#[case::csv_with_a_byte_order_mark("prompts.csv", b"\xEF\xBB\xBFtext,language\nHello there,en\nBonjour,fr\n".to_vec())]
fn regression_files_with_a_byte_order_mark_are_read_like_files_without(#[case] name: &str, #[case] content: Vec<u8>) {
    let (code, stderr, dir) = run_prompts(name, &content);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(committed_prompts(dir.path()), 1);
    let status = Command::new(env!("CARGO_BIN_EXE_croco"))
        .args(["status", "--json", &dir.path().join("pipeline.toml").display().to_string()])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["stages"][0]["rows"], 2, "both prompts, the first one's text intact: {status}");
}

#[test]
fn choice_task_files_accept_a_byte_order_mark_and_name_the_line_of_invalid_utf8() {
    use croco::spec::evaluate::ChoiceTask;
    use croco::stages::evaluate::items::parse_items;
    let task: ChoiceTask = toml::from_str("name = \"t\"\nsource = \"t.jsonl\"\n").unwrap();
    let item = r#"{"item_id": "a", "language": "en", "context": "2 + 2 =", "options": ["3", "4"], "gold": 1}"#;
    let with_bom = [b"\xEF\xBB\xBF".as_slice(), item.as_bytes(), b"\r\n"].concat();
    assert_eq!(parse_items(&with_bom, &task).unwrap().len(), 1);
    let bad = [item.as_bytes(), b"\n{\"item_id\": \"b\xFF\"}\n"].concat();
    let bad = parse_items(&bad, &task).unwrap_err();
    assert_eq!((bad.line, bad.column, bad.problem.as_str()), (2, Some(15), "invalid UTF-8"));
}

/// Runs `croco run` on the en/fr demo prompts with `content` imported as
/// the responses file `name`: exit code and stderr.
fn run_import(name: &str, content: &[u8]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let responses = dir.path().join(name);
    std::fs::write(&responses, content).unwrap();
    let text = format!(
        "{}\n[stages.generate.import]\npath = \"{}\"\n",
        crate::util::en_fr_head("imports", dir.path(), &[]),
        responses.display()
    );
    let file = crate::util::write_pipeline(dir.path(), &text);
    let output = Command::new(env!("CARGO_BIN_EXE_croco")).args(["run", file.to_str().unwrap()]).output().unwrap();
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn a_bad_line_in_an_imported_responses_file_is_named_by_its_line() {
    let lines = "{\"prompt_id\": \"p1\", \"sample_idx\": 0, \"text\": \"a\"}\n{\"prompt_id\": \"p1\", \"sample_idx\": 1, \"text\": }\n";
    let (code, stderr) = run_import("responses.jsonl", &[b"\xEF\xBB\xBF".as_slice(), lines.as_bytes()].concat());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("responses.jsonl: line 2, column 46: invalid JSON: expected value"), "{stderr}");
}

#[rstest]
#[case::csv(
    "responses.csv",
    "prompt_id,sample_idx,text\np1,0,a\np1,1,b\np1,zz,c\n",
    "responses.csv: column `sample_idx` (sample_idx): holds Utf8, expected integers; line 4 holds `zz`"
)]
#[case::jsonl(
    "responses.jsonl",
    "{\"prompt_id\": \"p1\", \"sample_idx\": 0, \"text\": \"a\"}\n{\"prompt_id\": \"p1\", \"sample_idx\": \"one\", \"text\": \"b\"}\n",
    "responses.jsonl: column `sample_idx` (sample_idx): holds Utf8, expected integers; line 2 holds `\"one\"`"
)]
fn regression_a_mistyped_value_is_named_by_its_line(#[case] name: &str, #[case] content: &str, #[case] expected: &str) {
    let (code, stderr) = run_import(name, content.as_bytes());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(expected), "expected `{expected}` in:\n{stderr}");
}
