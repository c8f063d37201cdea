//! The writer thread: the one connection that writes, and group commit.
//!
//! Every job that arrived while the previous batch was committing runs in the
//! next transaction, each inside its own SAVEPOINT (a failing job rolls back
//! alone), and the whole batch shares one COMMIT; the WAL is synced only for a
//! batch that needs it (see `OnDisk` and the backend's comment).

use super::checkpointer::CHECKPOINT_EVERY;
use super::error::sql_err;
use crate::domain::error::Class;
use crate::storage::StoreError;
use rusqlite::Connection;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::error::SendTimeoutError;

const MAX_BATCH: usize = 256;
/// Jobs waiting for the writer, at most: a few batches. Every caller is bounded
/// already (HTTP slots, kitchen prefetch, one relay), so this is reached only
/// when the disk stalls; then memory stays flat and callers wait, then fail.
pub(super) const QUEUE: usize = 4 * MAX_BATCH;
/// How long a job waits for room in a full queue before it is refused
/// (Transient: the HTTP edge answers 503 with Retry-After).
const QUEUE_WAIT: Duration = Duration::from_secs(1);

/// The queue of the writer thread (bounded: `QUEUE`).
pub(super) type Jobs = tokio::sync::mpsc::Sender<Box<dyn WriteJob>>;
/// The writer thread's end of the queue.
pub(super) type JobQueue = tokio::sync::mpsc::Receiver<Box<dyn WriteJob>>;

/// What must be on disk before a write job is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OnDisk {
    /// Its own write: the caller tells the world at once.
    Own,
    /// Its own write, but only before the relay publishes it: a deferred
    /// status change.
    BeforePublishing,
    /// Nothing: the relay's bookkeeping (leases, deleting published rows);
    /// losing it in a power cut only means a message is published again.
    Nothing,
    /// What it read: the relay's claim, whose rows it publishes next. Those
    /// are on disk unless a `BeforePublishing` write not synced yet came first.
    WhatItRead,
}

pub(super) trait WriteJob: Send {
    /// Runs the job inside the open transaction; returns whether it succeeded.
    fn run(&mut self, conn: &Connection) -> bool;
    /// After a successful `run`: what its answer needs on disk.
    fn sync(&self) -> OnDisk;
    /// Marks the job failed without running it.
    fn fail(&mut self, err: StoreError);
    /// Answers the caller once the batch's COMMIT is known.
    fn finish(self: Box<Self>, commit: Result<(), StoreError>);
}

struct Job<T, F> {
    f: Option<F>,
    sync: fn(&T) -> OnDisk,
    result: Option<Result<T, StoreError>>,
    reply: Option<tokio::sync::oneshot::Sender<Result<T, StoreError>>>,
}

impl<T, F> WriteJob for Job<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(f) = self.f.take() else { return false };
        let r = f(conn);
        let ok = r.is_ok();
        self.result = Some(r);
        ok
    }

    fn sync(&self) -> OnDisk {
        match &self.result {
            Some(Ok(r)) => (self.sync)(r),
            _ => OnDisk::Nothing,
        }
    }

    fn fail(&mut self, err: StoreError) {
        self.result = Some(Err(err));
    }

    fn finish(mut self: Box<Self>, commit: Result<(), StoreError>) {
        let answer = match (commit, self.result.take()) {
            (Err(e), _) => Err(e),
            (Ok(()), Some(r)) => r,
            (Ok(()), None) => Err(StoreError::new(Class::Permanent, "write job was not run")),
        };
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(answer);
        }
    }
}

/// Hands `f` to the writer thread and waits for its answer, which comes once
/// the batch committed and, as `sync` says of the result, was synced.
pub(super) async fn submit<T, F>(jobs: &Jobs, sync: fn(&T) -> OnDisk, f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
{
    let (reply, rx) = tokio::sync::oneshot::channel();
    let job = Box::new(Job {
        f: Some(f),
        sync,
        result: None,
        reply: Some(reply),
    });
    let stopped = || StoreError::new(Class::Transient, "sqlite writer thread stopped");
    match jobs.send_timeout(job, QUEUE_WAIT).await {
        Ok(()) => {}
        Err(SendTimeoutError::Timeout(_)) => return Err(StoreError::busy()),
        Err(SendTimeoutError::Closed(_)) => return Err(stopped()),
    }
    rx.await.map_err(|_| stopped())?
}

pub(super) fn writer_loop(
    conn: Connection,
    wal: std::fs::File,
    syncs: Arc<AtomicU64>,
    mut rx: JobQueue,
    checkpoint: mpsc::SyncSender<()>,
) {
    // A `BeforePublishing` write committed since the last sync.
    let mut unsynced = false;
    let mut last_checkpoint = Instant::now();
    while let Some(first) = rx.blocking_recv() {
        if last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
            // Full: one is running or asked for already.
            let _ = checkpoint.try_send(());
            last_checkpoint = Instant::now();
        }
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let e = sql_err(e);
            batch.into_iter().for_each(|j| j.finish(Err(e.clone())));
            continue;
        }
        // Whether this batch must be synced before its answers: a job needs
        // its own write on disk, or read rows an unsynced write may have made.
        let mut sync = false;
        let mut pending = unsynced;
        for job in batch.iter_mut() {
            if let Err(e) = conn.execute_batch("SAVEPOINT job") {
                job.fail(sql_err(e));
                continue;
            }
            let ok = job.run(&conn);
            let undo = if ok {
                "RELEASE job"
            } else {
                "ROLLBACK TO job; RELEASE job"
            };
            if let Err(e) = conn.execute_batch(undo) {
                job.fail(sql_err(e));
                continue;
            }
            if ok {
                match job.sync() {
                    OnDisk::Own => sync = true,
                    OnDisk::WhatItRead => sync |= pending,
                    OnDisk::BeforePublishing => pending = true,
                    OnDisk::Nothing => {}
                }
            }
        }
        let mut commit = conn.execute_batch("COMMIT").map_err(sql_err);
        if commit.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        } else if sync {
            // What synchronous=FULL does at each commit: the WAL is written in
            // order, so this puts every commit so far on disk.
            commit = wal.sync_data().map_err(|e| {
                StoreError::new(Class::Transient, format!("syncing the SQLite WAL: {e}"))
            });
            unsynced = commit.is_err();
            syncs.fetch_add(1, Ordering::Relaxed);
        } else {
            unsynced = pending;
        }
        batch.into_iter().for_each(|j| j.finish(commit.clone()));
    }
}
