//! Object-store faults between croco and a real S3 server (moto): a loopback
//! proxy drops connections, or (request-aware) answers chosen requests with
//! 503 — at the first request of a run, and in the middle of generate, score
//! and tune. Transient faults are retried and the run completes with the rows
//! an uninterrupted run has; persistent ones fail the run naming the object,
//! commit nothing, and a later run resumes to the same rows. Credentials
//! never reach the messages.

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
    let storage = format!("{}\n\n[stages.prompts]", storage_settings(endpoint, max_retries));
    let text = demo_pipeline_text(bucket_url, "", "").replacen("[stages.prompts]", &storage, 1);
    write_pipeline(dir, &text).to_str().unwrap().to_string()
}

/// The `[run]` keys of moto through `endpoint`, with fast retries.
fn storage_settings(endpoint: &str, max_retries: usize) -> String {
    format!(
        "storage = {{ endpoint = \"{endpoint}\", allow_http = \"true\", region = \"us-east-1\", access_key_id = \"croco-test\", secret_access_key = \"{SECRET}\" }}\nretry = {{ max_retries = {max_retries}, init_backoff_ms = 10, max_backoff_s = 1, retry_timeout_s = 10 }}"
    )
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

/// An HTTP/1.1 proxy on loopback that counts requests, not connections:
/// each request is read whole (head and `Content-Length` body), forwarded on
/// a fresh upstream connection (`Connection: close`), and its response
/// copied back. Requests numbered in `failing` (from 0) are answered
/// `503 Service Unavailable` instead — the object store's "retry later".
struct CountingProxy {
    port: u16,
    requests: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    /// Every request's first line (`PUT /bucket/key HTTP/1.1`), in order.
    seen: Arc<std::sync::Mutex<Vec<String>>>,
}

impl CountingProxy {
    fn start(upstream: String, failing: std::ops::Range<usize>) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (requests, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let state = Counted { counter: requests.clone(), failures: failed.clone(), seen: seen.clone(), failing };
        let state = Arc::new(state);
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (upstream, state) = (upstream.clone(), state.clone());
                std::thread::spawn(move || serve(client, &upstream, &state));
            }
        });
        CountingProxy { port, requests, failed, seen }
    }
}

/// What the proxy's connections share.
struct Counted {
    counter: Arc<AtomicUsize>,
    failures: Arc<AtomicUsize>,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
    failing: std::ops::Range<usize>,
}

/// Serves the requests of one client connection until it closes.
fn serve(mut client: TcpStream, upstream: &str, state: &Counted) {
    let mut pending = Vec::new();
    while let Some(request) = read_request(&mut client, &mut pending) {
        let number = {
            // Numbered and recorded together, so `seen[n]` is request `n`.
            let mut seen = state.seen.lock().unwrap();
            seen.push(String::from_utf8_lossy(&request).lines().next().unwrap_or_default().to_string());
            state.counter.fetch_add(1, Ordering::SeqCst)
        };
        if state.failing.contains(&number) {
            state.failures.fetch_add(1, Ordering::SeqCst);
            let refusal = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
            let _ = client.write_all(refusal.as_bytes());
            return;
        }
        let Ok(mut server) = TcpStream::connect(upstream) else { return };
        if server.write_all(&request).is_err() {
            return;
        }
        let mut response = Vec::new();
        if server.read_to_end(&mut response).is_err() || client.write_all(&response).is_err() {
            return;
        }
    }
}

/// The next whole request on `client` with its `Connection` header set to
/// `close`, or `None` once the client closes. `pending` keeps bytes read past it.
fn read_request(client: &mut TcpStream, pending: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut buffer = [0u8; 64 * 1024];
    let head_end = loop {
        if let Some(at) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = client.read(&mut buffer).ok().filter(|&n| n > 0)?;
        pending.extend_from_slice(&buffer[..n]);
    };
    let head = String::from_utf8_lossy(&pending[..head_end]).into_owned();
    let length = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")))
        .map_or(0, |(_, v)| v.trim().parse::<usize>().unwrap());
    assert!(!head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "the proxy reads sized bodies only");
    while pending.len() < head_end + length {
        let n = client.read(&mut buffer).ok().filter(|&n| n > 0)?;
        pending.extend_from_slice(&buffer[..n]);
    }
    let rest = pending.split_off(head_end + length);
    let body = pending.split_off(head_end);
    let lines: Vec<&str> =
        head.trim_end().lines().filter(|l| !l.to_ascii_lowercase().starts_with("connection:")).collect();
    let mut request = format!("{}\r\nConnection: close\r\n\r\n", lines.join("\r\n")).into_bytes();
    request.extend_from_slice(&body);
    *pending = rest;
    Some(request)
}

/// generate, score, pairs, ref_logps and tune of the demo policy on S3 through `endpoint`.
fn model_pipeline_on_s3(dir: &std::path::Path, bucket_url: &str, endpoint: &str, max_retries: usize) -> String {
    let file = crate::model_stages::model_pipeline(dir, "");
    let local_root = format!("root = \"{}\"", dir.join("root").display());
    let storage = format!("root = \"{bucket_url}\"\n{}", storage_settings(endpoint, max_retries));
    let text = std::fs::read_to_string(&file).unwrap().replacen(&local_root, &storage, 1)
        + "\n[stages.ref_logps]\nmax_length = 192\nmax_prompt_length = 96\nrows_per_part = 8\n\n\
           [stages.tune]\nepochs = 1\nmicro_batch = 2\ngrad_accumulation = 1\ncheckpoint_every = 2\n";
    std::fs::write(&file, text).unwrap();
    file.to_str().unwrap().to_string()
}

/// Every row of the model stages' tables, for comparing runs.
const ROWS: &str =
    "SELECT g.generation_id, g.text, s.reward FROM generations g JOIN scores s USING (generation_id) ORDER BY 1";

fn rows_of(file: &str) -> String {
    let output = croco(&["sql", file, ROWS, "--format", "csv"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn train_log_of(file: &str) -> String {
    // The gradient norm's last bits follow a parallel sum's order; 9 decimals are well above that.
    let sql = "SELECT step, loss, ROUND(grad_norm, 9) AS grad_norm FROM train_log ORDER BY step";
    let output = croco(&["sql", file, sql, "--format", "csv"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Faults in the middle of the model stages, counted in requests: a first
/// run through the proxy counts the requests of a whole run; then 503s
/// injected at three points spread over it (inside generate, score, tune)
/// are retried and the run equals the uninterrupted one; and a store that
/// goes away at those points for good fails the run, naming the object, and
/// a later run resumes to the same rows and the same training log.
#[test]
fn mid_stage_store_faults_are_retried_or_fail_cleanly_and_resume_to_the_same_rows() {
    // Fresh buckets each time: moto keeps what an earlier test run left.
    let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() % 1_000_000_000;
    let bucket = |name: &str| root("s3", &format!("midstage-{name}-{nonce}")).url;
    let upstream = root("s3", "midstage").options["endpoint"].trim_start_matches("http://").to_string();
    let dir = tempfile::tempdir().unwrap();
    let counting = CountingProxy::start(upstream.clone(), 0..0);
    let reference_url = bucket("reference");
    let reference = model_pipeline_on_s3(dir.path(), &reference_url, &format!("http://127.0.0.1:{}", counting.port), 0);
    let output = croco(&["run", &reference]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let total = counting.requests.load(Ordering::SeqCst);
    let (expected_rows, expected_log) = (rows_of(&reference), train_log_of(&reference));
    // The points: right after each model stage commits its first chunk, so
    // every fault lands inside generate, score and tune, with work to resume.
    let seen = counting.seen.lock().unwrap().clone();
    let points: Vec<usize> = ["generations", "scores", "train_log"]
        .iter()
        .map(|table| {
            let marker = |line: &String| {
                line.starts_with("PUT ") && line.contains(&format!("/tables/{table}/")) && line.contains("/_chunks/")
            };
            1 + seen.iter().position(marker).unwrap_or_else(|| panic!("no chunk of {table} among {total} requests"))
        })
        .collect();

    for (i, point) in points.into_iter().enumerate() {
        // Two 503s in a row at `point`: retried.
        let flaky = CountingProxy::start(upstream.clone(), point..point + 2);
        let run_dir = tempfile::tempdir().unwrap();
        let url = bucket(&format!("flaky-{i}"));
        let file = model_pipeline_on_s3(run_dir.path(), &url, &format!("http://127.0.0.1:{}", flaky.port), 5);
        let output = croco(&["run", &file]);
        assert!(output.status.success(), "point {point}: {}", String::from_utf8_lossy(&output.stderr));
        assert_eq!(flaky.failed.load(Ordering::SeqCst), 2, "point {point}: both faults were met");
        assert_eq!(rows_of(&file), expected_rows, "point {point}: retried run = uninterrupted run");
        assert_eq!(train_log_of(&file), expected_log);

        // The store gone from `point` on: the run fails, names the object, and resumes later.
        let gone = CountingProxy::start(upstream.clone(), point..usize::MAX);
        let url = bucket(&format!("gone-{i}"));
        let file = model_pipeline_on_s3(run_dir.path(), &url, &format!("http://127.0.0.1:{}", gone.port), 1);
        let output = croco(&["run", &file]);
        let message = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(1), "point {point}: {message}");
        assert!(message.contains(&format!("{url}/")), "point {point}: the failing object is named: {message}");
        assert!(!message.contains(SECRET), "credentials leaked into the error");
        let file = model_pipeline_on_s3(run_dir.path(), &url, &format!("http://{upstream}"), 1);
        // The failed run could not remove its lock from a store that was gone.
        let _ = croco(&["unlock", &file]);
        let output = croco(&["run", &file]);
        assert!(output.status.success(), "point {point}: {}", String::from_utf8_lossy(&output.stderr));
        assert_eq!(rows_of(&file), expected_rows, "point {point}: resumed run = uninterrupted run");
        assert_eq!(train_log_of(&file), expected_log, "point {point}: resumed tune = uninterrupted tune");
    }
}
