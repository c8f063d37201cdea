//! Old orders go (issue 26, item 3), run by the order service: once a day,
//! orders created more than `[retention] keep_days` ago are deleted with
//! everything that belongs to them (`Store::purge_orders`), so the database
//! never fills the disk.
//!
//! In small batches, each its own short transaction, with a pause between
//! them: intake waits at most for one batch (SQLite has one writer; on
//! PostgreSQL the batches take no lock intake needs), never for the whole
//! purge.

use crate::storage::{SharedStore, StoreError};
use chrono::{DateTime, Utc};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Orders deleted per transaction.
pub const BATCH: u32 = 200;
/// The shortest pause between batches, in which intake has the database to
/// itself (a pause is at least as long as the batch before it).
pub const PAUSE: Duration = Duration::from_millis(20);
/// The first purge after start (a restart loop does not purge in a loop), then daily.
const FIRST_AFTER: Duration = Duration::from_secs(300);
const EVERY: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// 0: keep every order forever.
    pub keep_days: u32,
}

impl Retention {
    /// The instant before which orders go, None when they are kept forever.
    pub fn cutoff(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        (self.keep_days > 0).then(|| now - chrono::Duration::days(i64::from(self.keep_days)))
    }

    /// Purges what is due at `now`, batch after batch until none is left or
    /// shutdown; returns how many orders went.
    pub async fn run_once(
        &self,
        store: &SharedStore,
        now: DateTime<Utc>,
        shutdown: &CancellationToken,
    ) -> Result<u64, StoreError> {
        let Some(before) = self.cutoff(now) else {
            return Ok(0);
        };
        let mut purged = 0;
        loop {
            let started = std::time::Instant::now();
            let n = store.purge_orders(before, BATCH).await?;
            purged += n;
            if n < u64::from(BATCH) {
                return Ok(purged);
            }
            // At least as long as the batch took: the purge has the database
            // at most half the time, however slow the box.
            tokio::select! {
                _ = tokio::time::sleep(started.elapsed().max(PAUSE)) => {}
                _ = shutdown.cancelled() => return Ok(purged),
            }
        }
    }

    /// Runs daily until shutdown; a database outage is logged and retried the next day.
    pub async fn run(self, store: SharedStore, shutdown: CancellationToken) {
        let mut wait = FIRST_AFTER;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return,
            }
            wait = EVERY;
            let started = std::time::Instant::now();
            match self.run_once(&store, Utc::now(), &shutdown).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    action = "orders_purged",
                    orders = n,
                    keep_days = self.keep_days,
                    seconds = started.elapsed().as_secs_f64(),
                    "Deleted orders older than the retention period"
                ),
                Err(e) => {
                    tracing::warn!(action = "purge_failed", error = %e, "Could not delete old orders; trying again tomorrow")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_keeps_forever() {
        let now = "2026-12-07T12:00:00Z".parse().unwrap();
        assert_eq!(Retention { keep_days: 0 }.cutoff(now), None);
        assert_eq!(
            Retention { keep_days: 400 }.cutoff(now),
            Some("2025-11-02T12:00:00Z".parse().unwrap())
        );
    }
}
