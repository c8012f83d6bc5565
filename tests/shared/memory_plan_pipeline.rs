//! The pipeline `croco plan`'s host figures are held against: 16 English
//! prompts that fill the planned context (448 prompt tokens + 64 new), 8
//! samples of 8 prompts at a time, score batches of 32 rows, on the CPU, so
//! the runs reach the sizes the plan bounds. Shared by
//! `tests/integration/cli.rs` (the demo bundles, within 25 %) and
//! `benches/generate_memory.rs` (any bundles), each including this file with
//! `#[path]`.

use std::path::{Path, PathBuf};

/// Writes the prompts and the pipeline file into `dir` and returns the file.
pub fn write(dir: &Path, policy: &str, reward: &str) -> PathBuf {
    let prompts = dir.join("long.jsonl");
    let sentence = "The quick brown fox jumps over the lazy dog near the river bank. ".repeat(15);
    let lines: Vec<String> = (0..16)
        .map(|i| serde_json::json!({"prompt": format!("{sentence}Prompt {i}."), "language": "en"}).to_string())
        .collect();
    std::fs::write(&prompts, lines.join("\n")).unwrap();
    let text = format!(
        "[run]\nname = \"plan\"\nroot = \"{root}\"\nlanguages = [\"en\"]\ndevice = \"cpu\"\nthreads = 2\n\n\
         [models]\npolicy = \"{policy}\"\nreward = \"{reward}\"\n\n\
         [stages.prompts]\nsource = \"{prompts}\"\ncolumns = {{ text = \"prompt\", language = \"language\" }}\neval_fraction = 0.0\n\n\
         [stages.generate]\nsamples = 8\nbatch_size = 8\nmax_prompt_tokens = 448\nmax_new_tokens = 64\nprompts_per_part = 16\n\n\
         [stages.score]\nbatch_size = 32\n",
        root = dir.join("root").display(),
        prompts = prompts.display(),
    );
    let file = dir.join("pipeline.toml");
    std::fs::write(&file, text).unwrap();
    file
}
