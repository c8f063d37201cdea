//! A cross-check with a well-kept load tool: when `oha` is installed (it is not
//! in Debian 12; `cargo install --locked oha` takes minutes of compiling, so
//! the benchmark never installs it), a full run also drives two rates with
//! `oha -q RATE --latency-correction` and the same kind of mixed orders, and
//! reports its POST latency next to ours.

use crate::load::random_order;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Serialize)]
pub struct OhaRun {
    pub rate: u32,
    pub requests: u64,
    pub success_rate: f64,
    pub status_codes: serde_json::Value,
    pub errors: serde_json::Value,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub requests_per_s: Option<f64>,
}

/// `oha` on PATH (or BENCH_OHA), if any.
pub fn find() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BENCH_OHA") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("oha"))
            .find(|p| p.is_file())
    })
}

pub fn version(oha: &Path) -> String {
    std::process::Command::new(oha)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// `oha -m POST -Z bodies -q RATE -z DUR --latency-correction -c 50 -w URL`.
pub async fn run(
    oha: &Path,
    url: &str,
    rate: u32,
    dur: Duration,
    dir: &Path,
) -> Result<OhaRun, String> {
    let n = (f64::from(rate) * dur.as_secs_f64()).ceil() as usize + 100;
    let bodies = dir.join(format!("oha-bodies-{rate}.jsonl"));
    let mut text = Vec::new();
    let mut rng = rand::rng();
    for _ in 0..n {
        text.extend(random_order(&mut rng));
        text.push(b'\n');
    }
    std::fs::write(&bodies, text).map_err(|e| e.to_string())?;
    let out = tokio::process::Command::new(oha)
        .args(["--no-tui", "--output-format", "json", "-m", "POST"])
        .args([
            "-T",
            "application/json",
            "-c",
            "50",
            "-w",
            "--latency-correction",
        ])
        .arg("-Z")
        .arg(&bodies)
        .args(["-q", &rate.to_string()])
        .arg("-z")
        .arg(format!("{}ms", dur.as_millis()))
        .arg(url)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("running oha: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "oha failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("oha's JSON: {e}"))?;
    let secs_to_ms = |x: &serde_json::Value| x.as_f64().map(|s| s * 1000.0);
    let codes = v["statusCodeDistribution"].clone();
    let requests = codes
        .as_object()
        .map(|m| m.values().filter_map(|c| c.as_u64()).sum())
        .unwrap_or(0);
    Ok(OhaRun {
        rate,
        requests,
        success_rate: v["summary"]["successRate"].as_f64().unwrap_or(0.0),
        status_codes: codes,
        errors: v["errorDistribution"].clone(),
        p50_ms: secs_to_ms(&v["latencyPercentiles"]["p50"]),
        p95_ms: secs_to_ms(&v["latencyPercentiles"]["p95"]),
        p99_ms: secs_to_ms(&v["latencyPercentiles"]["p99"]),
        max_ms: secs_to_ms(&v["summary"]["slowest"]),
        requests_per_s: v["summary"]["requestsPerSec"].as_f64(),
    })
}
