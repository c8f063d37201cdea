//! The workers: their rows, and the session that holds a worker name's
//! liveness lock (`Store::worker_lease`).

use super::*;

/// A session of its own for a worker name's advisory lock: PostgreSQL
/// releases the lock when the session ends, so when the worker process dies.
pub(super) struct LeaseSession {
    client: tokio_postgres::Client,
    connection: tokio::task::JoinHandle<()>,
}

impl LeaseSession {
    pub(super) async fn open(at: &Connector) -> Result<Self, StoreError> {
        let (client, connection) = at.connect().await.map_err(pg_err)?;
        Ok(LeaseSession { client, connection })
    }

    fn is_gone(&self) -> bool {
        self.client.is_closed() || self.connection.is_finished()
    }

    pub(super) async fn try_lock(&self, key: &str) -> Result<bool, StoreError> {
        let row = self
            .client
            .query_one(
                "select pg_try_advisory_lock(hashtextextended($1, 0))",
                &[&key],
            )
            .await
            .map_err(pg_err)?;
        Ok(row.get(0))
    }
}

/// Keeps the lease's session open until `stop`. When the session is lost (a
/// database restart) it opens a new one and takes the lock again; when the
/// lock was not ours (taken over from a hung holder), it takes it once free.
pub(super) async fn hold_lease(
    at: Connector,
    key: String,
    mut session: LeaseSession,
    mut held: bool,
    stop: tokio_util::sync::CancellationToken,
) {
    // A fixed pause between attempts: one session per worker, no thundering herd.
    let pause = || tokio::time::sleep(Duration::from_secs(2));
    loop {
        if held && !session.is_gone() {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = &mut session.connection => {}
            }
        } else {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
        loop {
            if session.is_gone() {
                match LeaseSession::open(&at).await {
                    Ok(s) => session = s,
                    Err(e) => {
                        tracing::warn!(action = "worker_lock_lost", error = %e, "Worker name lock lost with its database session; reconnecting");
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = pause() => continue,
                        }
                    }
                }
            }
            match session.try_lock(&key).await {
                Ok(h) => {
                    if h != held {
                        tracing::info!(
                            action = "worker_lock",
                            held = h,
                            "Worker name lock {}",
                            if h {
                                "taken"
                            } else {
                                "held by another session"
                            }
                        );
                    }
                    held = h;
                    break;
                }
                Err(e) => {
                    tracing::warn!(action = "worker_lock_lost", error = %e, "Could not take the worker name lock; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = pause() => {}
                    }
                }
            }
        }
    }
    session.connection.abort();
}

pub(super) fn worker_row(r: &Row) -> Result<WorkerRow, StoreError> {
    Ok(WorkerRow {
        name: r.try_get(0).map_err(pg_err)?,
        order_types: r.try_get(1).map_err(pg_err)?,
        status: r
            .try_get::<_, Option<String>>(2)
            .map_err(pg_err)?
            .unwrap_or_default(),
        orders_processed: i64::from(r.try_get::<_, Option<i32>>(3).map_err(pg_err)?.unwrap_or(0)),
        last_seen: r
            .try_get::<_, Option<DateTime<Utc>>>(4)
            .map_err(pg_err)?
            .unwrap_or_default(),
        heartbeat_interval_secs: i64::from(r.try_get::<_, i32>(5).map_err(pg_err)?),
    })
}

pub(super) const WORKER_COLUMNS: &str =
    "name, type, status, orders_processed, last_seen, heartbeat_interval";
