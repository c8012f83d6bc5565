//! The run lock: exactly one `croco run` per storage root; stale locks are
//! taken over; `croco unlock` clears a dead run's lock.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use croco::pipeline::lock::{LOCK_FILE, LockError, LockRecord, RunLock};
use croco::store::Storage;
use rstest::rstest;

use crate::storage::root;
use crate::util::{demo_pipeline_text, write_pipeline};

const TTL: Duration = Duration::from_secs(60);

fn croco(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_croco")).args(args).output().unwrap()
}

fn stale_record(run: &str) -> LockRecord {
    let then = chrono::Utc::now() - chrono::Duration::hours(2);
    LockRecord {
        run: run.into(),
        owner: "ghost@elsewhere".into(),
        host: "elsewhere".into(),
        pid: 4242,
        started_at: then,
        heartbeat_at: then,
        token: "ghost".into(),
    }
}

#[rstest]
#[case::file("file")]
#[case::memory("memory")]
#[case::s3("s3")]
#[tokio::test]
async fn one_holder_at_a_time_and_stale_locks_are_taken_over(#[case] provider: &str) {
    let root = root(provider, &format!("lock_{provider}"));
    let storage = Storage::open(&root.url, std::path::Path::new("."), &root.options, &Default::default()).unwrap();
    let first = RunLock::acquire(&storage, "first", TTL, LOCK_FILE).await.unwrap();
    match RunLock::acquire(&storage, "second", TTL, LOCK_FILE).await {
        Err(LockError::Held { holder, .. }) => assert_eq!(holder.run, "first"),
        other => panic!("a second holder was admitted: {:?}", other.err()),
    }
    first.release().await.unwrap();
    let second = RunLock::acquire(&storage, "second", TTL, LOCK_FILE).await.unwrap();
    second.release().await.unwrap();

    let stale = serde_json::to_vec(&stale_record("dead")).unwrap();
    storage.put(&storage.path(LOCK_FILE), stale.into()).await.unwrap();
    let taker = RunLock::acquire(&storage, "taker", TTL, LOCK_FILE).await.expect("a stale lock is taken over");
    let (held, _) = croco::pipeline::lock::read(&storage).await.unwrap().unwrap();
    assert_eq!(held.run, "taker");
    taker.release().await.unwrap();
    assert!(croco::pipeline::lock::read(&storage).await.unwrap().is_none(), "release removes the lock");
}

#[test]
fn a_second_concurrent_run_exits_with_the_lock_code_and_tables_stay_intact() {
    let dir = tempfile::tempdir().unwrap();
    let root_dir = dir.path().join("root");
    // The model pipeline takes seconds: long enough to overlap with a second run.
    let file = crate::model_stages::model_pipeline(dir.path(), "");
    let file = file.to_str().unwrap().to_string();
    let mut first = Command::new(env!("CARGO_BIN_EXE_croco"))
        .args(["run", &file])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !root_dir.join(LOCK_FILE).exists() {
        assert!(Instant::now() < deadline, "the first run never took the lock");
        std::thread::sleep(Duration::from_millis(10));
    }
    let second = croco(&["run", &file]);
    assert!(first.wait().unwrap().success(), "the first run completes");
    assert_eq!(second.status.code(), Some(3), "{}", String::from_utf8_lossy(&second.stderr));
    let message = String::from_utf8_lossy(&second.stderr);
    assert!(message.contains("is locked by run `models`") && message.contains("croco unlock"), "{message}");
    assert!(!root_dir.join(LOCK_FILE).exists(), "the first run released its lock");
    let status: serde_json::Value = serde_json::from_slice(&croco(&["status", &file, "--json"]).stdout).unwrap();
    let states: Vec<&str> = status["stages"].as_array().unwrap().iter().map(|s| s["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["current"; 4]);
}

#[test]
fn unlock_clears_a_dead_runs_lock() {
    let dir = tempfile::tempdir().unwrap();
    let root_dir = dir.path().join("root");
    let file = write_pipeline(dir.path(), &demo_pipeline_text(root_dir.to_str().unwrap(), "", ""));
    let file = file.to_str().unwrap();
    std::fs::create_dir_all(&root_dir).unwrap();
    let mut fresh = stale_record("crashed");
    fresh.heartbeat_at = chrono::Utc::now();
    std::fs::write(root_dir.join(LOCK_FILE), serde_json::to_vec(&fresh).unwrap()).unwrap();
    assert_eq!(croco(&["run", file]).status.code(), Some(3));
    let unlocked = croco(&["unlock", file]);
    assert!(
        String::from_utf8_lossy(&unlocked.stdout)
            .contains("removed the lock of run `crashed` (ghost@elsewhere, pid 4242")
    );
    assert!(croco(&["run", file]).status.success());
}
