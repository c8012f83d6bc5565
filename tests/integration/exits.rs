//! How `croco` ends on real processes: a closed stdout, SIGTERM and SIGINT
//! during a run, and a lock left behind by a run that died on this host.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use croco::pipeline::lock::{LOCK_FILE, LockRecord};

use crate::model_stages::{count_markers, model_pipeline};
use crate::util::{committed_versions, demo_pipeline_text, repo, write_pipeline};

fn croco() -> Command {
    Command::new(env!("CARGO_BIN_EXE_croco"))
}

/// Runs `args` with a stdout whose reader is gone before the command writes,
/// as `croco … | head -0` does; returns the exit code and standard error.
fn with_closed_stdout(args: &[&str]) -> (Option<i32>, String) {
    let mut child = croco().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn regression_a_closed_stdout_ends_status_and_sql_quietly_with_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let file = write_pipeline(dir.path(), &demo_pipeline_text(root.to_str().unwrap(), "", ""));
    let file = file.to_str().unwrap();
    assert!(croco().args(["run", file]).stdout(Stdio::null()).status().unwrap().success());
    // Big enough that every write after the first 64 KiB meets the closed pipe.
    let many_rows = "SELECT * FROM generations CROSS JOIN (SELECT 1 FROM range(20)) AS copies";
    let ablations = repo().join("pipelines/ablations.toml");
    for args in [
        vec!["status", file],
        vec!["status", ablations.to_str().unwrap()],
        vec!["sql", file, many_rows],
        vec!["sql", file, many_rows, "--format", "csv"],
        vec!["sql", file, many_rows, "--format", "json"],
        vec!["schema", "pipeline"],
        vec!["run", file, "--json"],
    ] {
        let (code, stderr) = with_closed_stdout(&args);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert!(stderr.trim().is_empty(), "{args:?} printed: {stderr}");
    }
}

/// Starts `croco run` on a model pipeline and waits until generate has
/// committed a chunk (and holds the lock), so a signal lands mid-stage.
fn run_until_generate_committed_a_chunk(dir: &Path) -> (Child, std::path::PathBuf) {
    let file = model_pipeline(dir, "");
    let child = croco().args(["run", file.to_str().unwrap()]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn();
    let mut child = child.unwrap();
    let chunks = dir.join("root/tables/generations");
    let deadline = Instant::now() + Duration::from_secs(120);
    while count_markers(&chunks) < 1 {
        assert!(Instant::now() < deadline, "generate committed no chunk in time");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before the signal");
        std::thread::sleep(Duration::from_millis(10));
    }
    (child, file)
}

fn signal(child: &Child, name: &str) {
    let sent = Command::new("kill").args([&format!("-{name}"), &child.id().to_string()]).status().unwrap();
    assert!(sent.success());
}

#[rstest::rstest]
#[case::sigterm("TERM", "SIGTERM", 143)]
#[case::sigint("INT", "SIGINT", 130)]
fn a_signal_during_a_run_releases_the_lock_commits_nothing_partial_and_a_rerun_resumes(
    #[case] name: &str,
    #[case] shown: &str,
    #[case] code: i32,
) {
    let dir = tempfile::tempdir().unwrap();
    let (child, file) = run_until_generate_committed_a_chunk(dir.path());
    signal(&child, name);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "{stderr}");
    assert!(stderr.contains(&format!("stopped by {shown}")) && stderr.contains("rerun to resume"), "{stderr}");
    assert!(stderr.contains("prompts   skipped") || stderr.contains("prompts   ran"), "lists the commits: {stderr}");
    assert!(!dir.path().join("root").join(LOCK_FILE).exists(), "the lock is released");
    let root = dir.path().join("root");
    assert_eq!(committed_versions(&root, "generations"), 0, "generate was stopped before its manifest");

    let rerun = croco().args(["run", file.to_str().unwrap(), "--json"]).output().unwrap();
    assert!(rerun.status.success(), "{}", String::from_utf8_lossy(&rerun.stderr));
    let reports: serde_json::Value = serde_json::from_slice(&rerun.stdout).unwrap();
    let generate = &reports["stages"][1];
    assert_eq!(generate["status"], "ran");
    assert!(generate["stats"]["resumed_parts"].as_u64().unwrap() >= 1, "{generate}");
}

#[test]
fn a_fresh_lock_of_a_dead_process_on_this_host_is_taken_over_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let file = write_pipeline(dir.path(), &demo_pipeline_text(root.to_str().unwrap(), "", ""));
    let file = file.to_str().unwrap();
    let mut finished = Command::new("true").spawn().unwrap();
    let dead_pid = finished.id();
    finished.wait().unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    let now = chrono::Utc::now();
    let record = LockRecord {
        run: "killed".into(),
        owner: format!("someone@{host}"),
        host: host.clone(),
        pid: dead_pid,
        started_at: now,
        heartbeat_at: now,
        token: "killed".into(),
    };
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join(LOCK_FILE), serde_json::to_vec(&record).unwrap()).unwrap();
    let output = croco().args(["run", file]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("its process no longer runs on this host"), "the take-over is logged: {stderr}");

    // A live process on this host still holds its lock.
    let live = LockRecord { pid: std::process::id(), ..record };
    std::fs::write(root.join(LOCK_FILE), serde_json::to_vec(&live).unwrap()).unwrap();
    assert_eq!(croco().args(["run", file]).output().unwrap().status.code(), Some(3));
}
