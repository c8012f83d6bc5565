//! Object-store faults between croco and a real S3 server (moto): a loopback
//! proxy drops connections. Transient faults are retried and the run
//! completes; persistent ones fail the stage naming the object, commit
//! nothing, and a later run completes. Credentials never reach the messages.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::storage::root;
use crate::util::{demo_pipeline_text, write_pipeline};

const SECRET: &str = "croco-test-secret";

/// A TCP proxy on loopback that drops the first `drop_first` connections
/// (all of them with `usize::MAX`) and forwards the others to `upstream`.
struct FaultyProxy {
    port: u16,
    dropped: Arc<AtomicUsize>,
}

impl FaultyProxy {
    fn start(upstream: String, drop_first: usize) -> FaultyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let dropped = Arc::new(AtomicUsize::new(0));
        let counter = dropped.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if counter.load(Ordering::SeqCst) < drop_first {
                    counter.fetch_add(1, Ordering::SeqCst);
                    drop(client);
                    continue;
                }
                if let Ok(server) = TcpStream::connect(&upstream) {
                    pipe(client, server);
                }
            }
        });
        FaultyProxy { port, dropped }
    }
}

/// Copies bytes both ways until either side closes.
fn pipe(client: TcpStream, server: TcpStream) {
    let copy = |mut from: TcpStream, mut to: TcpStream| {
        std::thread::spawn(move || {
            let mut buffer = [0u8; 64 * 1024];
            while let Ok(n) = from.read(&mut buffer) {
                if n == 0 || to.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(std::net::Shutdown::Write);
        });
    };
    copy(client.try_clone().unwrap(), server.try_clone().unwrap());
    copy(server, client);
}

/// The import demo on S3 through `endpoint`, with fast retries.
fn pipeline(dir: &std::path::Path, bucket_url: &str, endpoint: &str, max_retries: usize) -> String {
    let storage = format!(
        "storage = {{ endpoint = \"{endpoint}\", allow_http = \"true\", region = \"us-east-1\", access_key_id = \"croco-test\", secret_access_key = \"{SECRET}\" }}\nretry = {{ max_retries = {max_retries}, init_backoff_ms = 10, max_backoff_s = 1, retry_timeout_s = 10 }}\n\n[stages.prompts]"
    );
    let text = demo_pipeline_text(bucket_url, "", "").replacen("[stages.prompts]", &storage, 1);
    write_pipeline(dir, &text).to_str().unwrap().to_string()
}

fn croco(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_croco")).args(args).output().unwrap()
}

#[test]
fn transient_faults_are_retried_and_persistent_ones_fail_cleanly() {
    let root = root("s3", "faults");
    let upstream = root.options["endpoint"].trim_start_matches("http://").to_string();
    let dir = tempfile::tempdir().unwrap();

    let flaky = FaultyProxy::start(upstream.clone(), 3);
    let file = pipeline(dir.path(), &root.url, &format!("http://127.0.0.1:{}", flaky.port), 5);
    let output = croco(&["run", &file, "-v", "--json"]);
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{log}");
    assert_eq!(flaky.dropped.load(Ordering::SeqCst), 3, "the proxy dropped three connections");
    assert!(!log.contains(SECRET), "credentials leaked into the log");
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(summary["retries"].as_u64().unwrap() >= 3, "the run summary counts the retries: {summary}");

    let dead = FaultyProxy::start(upstream, usize::MAX);
    let other = format!("{}-again", root.url);
    let file = pipeline(dir.path(), &other, &format!("http://127.0.0.1:{}", dead.port), 2);
    let output = croco(&["run", &file]);
    let message = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert!(message.contains(&format!("{other}/")), "the failing object is named: {message}");
    assert!(!message.contains(SECRET), "credentials leaked into the error");

    // Once the network is back, the same root completes.
    let file = pipeline(dir.path(), &other, &root.options["endpoint"], 2);
    std::thread::sleep(Duration::from_millis(10));
    let output = croco(&["run", &file]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}
