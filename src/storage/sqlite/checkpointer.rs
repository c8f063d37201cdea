//! The WAL's checkpoints, off the writer's path.

use rusqlite::Connection;
use std::sync::mpsc;
use std::time::Duration;

/// How often the WAL is checkpointed while the writer writes: see `checkpointer`.
pub(super) const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// Copies the WAL into the database file, on its own connection and thread,
/// when the writer asks (at most every `CHECKPOINT_EVERY` while it writes).
/// SQLite's automatic checkpoint would run inside a commit, with two fsyncs,
/// and while the readers of another process on the file keep the WAL from
/// starting over, at nearly every commit. PASSIVE never waits for a lock:
/// what readers still use is copied next time. Ends with the writer.
pub(super) fn checkpointer(conn: Connection, asked: mpsc::Receiver<()>) {
    while asked.recv().is_ok() {
        let r = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        });
        match r {
            Ok((wal, copied)) => {
                tracing::trace!(
                    action = "sqlite_checkpoint",
                    wal,
                    copied,
                    "WAL checkpointed"
                )
            }
            Err(e) => {
                tracing::debug!(action = "sqlite_checkpoint_failed", error = %e, "WAL checkpoint failed; tried again later")
            }
        }
    }
}
