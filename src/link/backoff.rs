//! Exponential backoff with jitter, shared by every reconnect loop (database,
//! RabbitMQ, MQTT), so they all behave and log the same way.

use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(200), Duration::from_secs(10))
    }
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            attempt: 0,
        }
    }

    /// How many failures in a row so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The next delay: min * 2^attempt, capped, times a random factor in
    /// [0.5, 1.0) so that many clients do not reconnect in lockstep.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.min.saturating_mul(1u32 << self.attempt.min(16));
        self.attempt = self.attempt.saturating_add(1);
        exp.min(self.max).mul_f64(0.5 + rand::random::<f64>() / 2.0)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Sleeps for the next delay; returns false when shutdown came first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let d = self.next_delay();
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let d: Vec<_> = (0..8).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] < Duration::from_millis(100));
        assert!(d[3] >= Duration::from_millis(400));
        assert!(d.iter().all(|x| *x < Duration::from_secs(1)));
        assert_eq!(b.attempts(), 8);
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(100));
    }

    /// On tokio's paused clock: `wait` sleeps exactly the next delay, and
    /// returns at once, false, on shutdown.
    #[tokio::test(start_paused = true)]
    async fn wait_sleeps_the_delay_unless_shut_down() {
        let mut b = Backoff::new(Duration::from_secs(2), Duration::from_secs(10));
        let stop = CancellationToken::new();
        let t0 = tokio::time::Instant::now();
        assert!(b.wait(&stop).await);
        let slept = t0.elapsed();
        assert!(
            slept >= Duration::from_secs(1) && slept < Duration::from_secs(2),
            "{slept:?}"
        );
        stop.cancel();
        assert!(!b.wait(&stop).await);
        assert_eq!(t0.elapsed(), slept, "shutdown does not wait out the delay");
    }
}
