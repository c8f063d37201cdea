//! Latency summaries: every sample is kept (a run holds at most a few hundred
//! thousand), sorted once, and read by nearest rank.

use serde::Serialize;
use std::time::Duration;

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    /// None when there are no samples.
    pub fn from_micros(mut v: Vec<u64>) -> Option<Latency> {
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let n = v.len();
        let rank = |p: f64| -> f64 {
            let idx = ((p * n as f64).ceil() as usize).clamp(1, n) - 1;
            v[idx] as f64 / 1000.0
        };
        let sum: u128 = v.iter().map(|&x| u128::from(x)).sum();
        Some(Latency {
            count: n,
            p50_ms: rank(0.50),
            p95_ms: rank(0.95),
            p99_ms: rank(0.99),
            max_ms: v[n - 1] as f64 / 1000.0,
            mean_ms: sum as f64 / n as f64 / 1000.0,
        })
    }

    pub fn from_durations(v: impl IntoIterator<Item = Duration>) -> Option<Latency> {
        Latency::from_micros(v.into_iter().map(|d| d.as_micros() as u64).collect())
    }
}

/// `a / b`, or None when either side is missing or b is zero.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let l = Latency::from_micros((1..=100).map(|x| x * 1000).collect()).unwrap();
        assert_eq!(l.p50_ms, 50.0);
        assert_eq!(l.p99_ms, 99.0);
        assert_eq!(l.max_ms, 100.0);
        assert!(Latency::from_micros(vec![]).is_none());
    }
}
