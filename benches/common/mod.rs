//! What every benchmark shares: running a Python reference, the JSON file
//! of its figures (`target/croco-bench/<bench>.json`, see DEVELOPERS.md),
//! peak memory. Each benchmark compiles this module on its own and uses
//! part of it, hence the `allow`.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// Which way a metric is better, so that every row's `ratio` reads the same:
/// above 1, croco is better.
#[derive(Debug, Clone, Copy)]
pub enum Better {
    /// Times, bytes: croco better when smaller (ratio = reference / croco).
    Lower,
    /// Rates: croco better when larger (ratio = croco / reference).
    Higher,
}

/// One row of a benchmark's JSON: `croco` against `reference` on `metric`;
/// without a reference value (the peer could not run) the ratio is null.
pub fn row(
    case: &str,
    metric: &str,
    croco: f64,
    reference: &str,
    value: Option<f64>,
    better: Better,
) -> serde_json::Value {
    let ratio = value.map(|value| match better {
        Better::Lower => value / croco,
        Better::Higher => croco / value,
    });
    serde_json::json!({
        "case": case, "metric": metric, "croco": croco, "reference": reference,
        "reference_value": value, "ratio": ratio,
    })
}

/// Writes `target/croco-bench/<bench>.json`: the machine and every row
/// (ratio > 1: croco is better), so a README figure is one command away.
pub fn write_json(bench: &str, rows: Vec<serde_json::Value>) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|info| {
        info.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|m| m.trim().to_string())
    });
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/croco-bench");
    std::fs::create_dir_all(&out).unwrap();
    let path = out.join(format!("{bench}.json"));
    let rows = merged_rows(&path, rows);
    let json = serde_json::json!({ "bench": bench, "machine": { "cpu": cpu, "cores": cores }, "rows": rows });
    std::fs::write(&path, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    println!("wrote {}", path.display());
}

/// `rows` after the rows of an earlier run in `path` that measured other
/// cases (another bundle, length or batch): a bench run once per case keeps
/// every case's figures, and a rerun replaces its own.
fn merged_rows(path: &Path, rows: Vec<serde_json::Value>) -> Vec<serde_json::Value> {
    let key = |row: &serde_json::Value| (row["case"].clone(), row["metric"].clone(), row["reference"].clone());
    let fresh: std::collections::HashSet<_> = rows.iter().map(key).collect();
    let earlier: Vec<serde_json::Value> = std::fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|json| json["rows"].as_array().cloned())
        .unwrap_or_default();
    earlier.into_iter().filter(|row| !fresh.contains(&key(row))).chain(rows).collect()
}

/// Runs `python` (`CROCO_BENCH_PYTHON`, else `python3`) with `args` in the
/// repository and returns the JSON object on the last line of its output;
/// `None` (its stderr shown) when it cannot run.
pub fn python_json(args: &[String]) -> Option<serde_json::Value> {
    let python = std::env::var("CROCO_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let output = Command::new(python).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().ok()?;
    if !output.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
        return None;
    }
    let line = String::from_utf8_lossy(&output.stdout).lines().last()?.to_string();
    serde_json::from_str(&line).ok()
}

/// Peak resident memory of this process (Linux `VmHWM`), in MB.
pub fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().strip_suffix(" kB"));
    kb.and_then(|v| v.trim().parse::<f64>().ok()).map_or(f64::NAN, |kb| kb / 1024.0)
}
