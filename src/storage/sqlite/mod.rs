//! SQLite backend: the embedded default, so a box with nothing installed works.
//!
//! Writes never run on the async runtime's threads. One writer thread owns the
//! write connection and applies jobs in batches: every job that arrived while the
//! previous batch was committing runs in the next transaction, each inside its
//! own SAVEPOINT (a failing job rolls back alone), and the whole batch shares one
//! COMMIT. That is group commit.
//!
//! Durability is the writer's own step: it commits with synchronous=NORMAL
//! (WAL: the commit is written, not yet synced) and then syncs the WAL file
//! itself, which is what synchronous=FULL does at every commit, but only when
//! a job of the batch needs it (see `OnDisk`): an order or a status change whose
//! caller answers at once is answered after the sync; a deferred status change
//! (`Durability::Deferred`) and the relay's bookkeeping are not, and are synced
//! with the next batch that syncs (the WAL is one file, written in order). The
//! relay's claim syncs what it is about to publish when a deferred change may
//! be among it; bookkeeping alone never causes a sync. So an answered write is
//! durable, and nothing leaves through the outbox before it is on disk; a
//! reader may see a write in the moment between its commit and its sync.
//! The WAL is copied into the database file by a thread of its own
//! (`checkpointer`), never inside a commit.
//! Reads use a small pool of connections on the blocking thread pool (WAL lets
//! them run beside the writer).
//!
//! The files, by concern: `pool` (opening a connection, migrations, the
//! readers), `writer` (the writer thread and its sync rule), `checkpointer`,
//! `error` (a SQLite error's class), and the SQL of `orders`, `workers`,
//! `outbox` and `tokens`. This file holds the store and the column encodings
//! they share.

use crate::domain::error::Class;
use crate::domain::events::NOTIFICATIONS_EXCHANGE;
use crate::domain::order::order_number;
use crate::storage::migrations::SQLITE;
use crate::storage::*;
use error::sql_err;
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::mpsc;
use writer::OnDisk;

pub(crate) mod backup;
mod checkpointer;
mod error;
mod orders;
mod outbox;
mod pool;
mod stations;
mod tokens;
mod workers;
mod writer;

pub struct SqliteStore {
    path: PathBuf,
    owner: String,
    writer: writer::Jobs,
    readers: Arc<pool::Readers>,
    /// How many times the writer has synced the WAL (read by the test of its rule).
    #[cfg_attr(not(test), allow(dead_code))]
    syncs: Arc<AtomicU64>,
}

/// `restaurant-system migrate` on SQLite: switches a database of any size to
/// giving deleted orders' space back (see `pool::reclaim_space`).
pub fn reclaim_space(path: &Path) -> Result<bool, StoreError> {
    pool::reclaim_space(&pool::open_conn(path)?, None)
}

impl SqliteStore {
    /// Opens (creating when missing) the database file, applies migrations and
    /// starts the writer thread.
    pub async fn open(path: &Path, owner: String) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        let p = path.clone();
        let (conn, wal, ckpt_conn) = tokio::task::spawn_blocking(
            move || -> Result<(Connection, std::fs::File, Connection), StoreError> {
                if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        StoreError::new(
                            Class::Transient,
                            format!("creating {}: {e}", dir.display()),
                        )
                    })?;
                }
                // A new file reclaims space from the start: auto_vacuum is set
                // before anything (WAL mode included) writes its first page.
                if std::fs::metadata(&p).map_or(true, |m| m.len() == 0) {
                    Connection::open(&p)
                        .and_then(|c| {
                            c.execute_batch("PRAGMA auto_vacuum = INCREMENTAL; PRAGMA journal_mode = WAL;")
                        })
                        .map_err(sql_err)?;
                }
                let conn = pool::open_conn(&p)?;
                pool::migrate(&conn, SQLITE)?;
                {
                    match pool::reclaim_space(&conn, Some(pool::RECLAIM_AT_START_MAX_BYTES)) {
                        Ok(true) => {}
                        Ok(false) => tracing::warn!(
                            action = "sqlite_reclaim_off",
                            "The database reuses deleted orders' space but does not give it back to the disk; run `restaurant-system migrate` once with the services stopped to change that"
                        ),
                        // Another process holds the file (a worker starting too): next start.
                        Err(e) => tracing::warn!(action = "sqlite_reclaim_off", error = %e, "Could not switch the database to incremental vacuum; trying again at the next start"),
                    }
                }
                // The writer syncs the WAL itself; NORMAL keeps SQLite from doing
                // it at every commit as well.
                // No checkpoint inside a commit either: see `checkpointer`.
                conn.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA wal_autocheckpoint=0")
                    .map_err(sql_err)?;
                let wal = pool::open_wal(&p)?;
                Ok((conn, wal, pool::open_conn(&p)?))
            },
        )
        .await
        .map_err(|e| StoreError::new(Class::Permanent, format!("sqlite open task: {e}")))??;

        let (tx, rx) = tokio::sync::mpsc::channel(writer::QUEUE);
        let syncs = Arc::new(AtomicU64::new(0));
        let counted = syncs.clone();
        let (ckpt_tx, ckpt_rx) = mpsc::sync_channel::<()>(1);
        let thread = |name: &str| std::thread::Builder::new().name(name.into());
        let failed = |e: std::io::Error| {
            StoreError::new(Class::Permanent, format!("starting sqlite threads: {e}"))
        };
        thread("sqlite-checkpoint")
            .spawn(move || checkpointer::checkpointer(ckpt_conn, ckpt_rx))
            .map_err(failed)?;
        thread("sqlite-writer")
            .spawn(move || writer::writer_loop(conn, wal, counted, rx, ckpt_tx))
            .map_err(failed)?;
        Ok(SqliteStore {
            readers: Arc::new(pool::Readers::new(path.clone())),
            path,
            owner,
            writer: tx,
            syncs,
        })
    }

    /// A write whose answer waits until it is on disk.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        writer::submit(&self.writer, |_| OnDisk::Own, f).await
    }

    /// A write whose answer needs what `sync` says of its result.
    async fn write_then<T, F>(&self, sync: fn(&T) -> OnDisk, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        writer::submit(&self.writer, sync, f).await
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.readers.read(f).await
    }
}

// ---- column encodings, shared by the SQL files -----------------------------

/// Fixed-width UTC timestamps: lexicographic order is time order.
fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn parse_ts(s: &str) -> rusqlite::Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|d| d.with_timezone(&Utc))
        .map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
        })
}

fn opt_ts(s: Option<String>) -> rusqlite::Result<Option<DateTime<Utc>>> {
    s.as_deref().map(parse_ts).transpose()
}

/// What every compare-and-set on `orders` writes, as `?1`..`?6`: status,
/// version, updated_at, processed_by, estimated_completion, completed_at.
/// The caller appends the values of its own placeholders.
fn state_values(s: &OrderState) -> Vec<rusqlite::types::Value> {
    vec![
        s.status.as_str().to_string().into(),
        s.version.into(),
        ts(s.updated_at).into(),
        s.processed_by.clone().into(),
        s.estimated_completion.map(ts).into(),
        s.completed_at.map(ts).into(),
    ]
}

fn parse_col<T: std::str::FromStr<Err = String>>(s: String) -> rusqlite::Result<T> {
    s.parse::<T>().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
    })
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // `select 1` never touches the file. Check that the database file is
        // still at its path (deleted or on an unmounted disk, every write from
        // now on is lost at the next start) and read a real table.
        if let Err(e) = std::fs::metadata(&self.path) {
            return Err(StoreError::new(
                Class::Transient,
                format!("database file {}: {e}", self.path.display()),
            ));
        }
        self.read(|c| {
            c.query_row("select count(*) from schema_migrations", [], |_| Ok(()))
                .map_err(|e| StoreError::new(Class::Transient, e.to_string()))
        })
        .await
    }

    async fn insert_order(&self, new: NewOrder<'_>) -> Result<CreatedOrder, StoreError> {
        let (order, request_id) = (new.order.clone(), new.request_id.to_string());
        let (owner, at) = (self.owner.clone(), (new.now, new.day));
        self.write(move |c| orders::create_order_tx(c, &owner, &order, &request_id, at))
            .await
    }

    async fn insert_order_keyed(
        &self,
        new: NewOrder<'_>,
        key: &IdempotencyKey,
    ) -> Result<KeyedOutcome, StoreError> {
        let (order, request_id) = (new.order.clone(), new.request_id.to_string());
        let (owner, at, key) = (self.owner.clone(), (new.now, new.day), key.clone());
        self.write(move |c| {
            orders::keyed_tx(c, &key, at.0, || {
                orders::create_order_tx(c, &owner, &order, &request_id, at)
            })
        })
        .await
    }

    async fn sweep_idempotency_keys(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        self.write(move |c| orders::sweep_keys(c, now)).await
    }

    async fn order_state(&self, order_number: &str) -> Result<Option<OrderState>, StoreError> {
        let n = order_number.to_string();
        self.read(move |c| orders::order_state(c, &n)).await
    }

    /// On the writer thread, in its transaction: see `orders::persist_transition`.
    async fn persist_transition(
        &self,
        step: TransitionStep<'_>,
    ) -> Result<Option<OrderView>, StoreError> {
        let on_disk: fn(&Option<OrderView>) -> OnDisk = match step.asked.durability {
            Durability::Now => |_| OnDisk::Own,
            Durability::Deferred => |_| OnDisk::BeforePublishing,
        };
        let (t, cur, d) = (step.asked.clone(), step.cur.clone(), step.decided.clone());
        let owner = self.owner.clone();
        self.write_then(on_disk, move |c| {
            orders::persist_transition(c, &owner, &t, &cur, &d)
        })
        .await
    }

    /// On the writer thread, in its transaction, synced before the answer.
    async fn persist_ticket(&self, step: TicketStep<'_>) -> Result<bool, StoreError> {
        let (c, cur, d) = (step.asked.clone(), step.cur.clone(), step.decided.clone());
        let owner = self.owner.clone();
        self.write(move |conn| stations::persist_ticket(conn, &owner, &c, &cur, &d))
            .await
    }

    async fn tickets(&self, station: Option<&str>) -> Result<Vec<OrderView>, StoreError> {
        let station = station.map(str::to_string);
        self.read(move |c| stations::tickets(c, station.as_deref()))
            .await
    }

    async fn ticket(&self, order_number: &str) -> Result<Option<Ticket>, StoreError> {
        let n = order_number.to_string();
        self.read(move |c| stations::ticket(c, &n)).await
    }

    async fn station_times(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<StationTimes, StoreError> {
        self.read(move |c| stations::station_times(c, from, to))
            .await
    }

    async fn order(&self, order_number: &str) -> Result<Option<OrderView>, StoreError> {
        let n = order_number.to_string();
        self.read(move |c| Ok(orders::load_order(c, &n)?.map(|(_, v)| v)))
            .await
    }

    async fn status(&self, order_number: &str) -> Result<Option<OrderStatus>, StoreError> {
        let n = order_number.to_string();
        self.read(move |c| orders::status(c, &n)).await
    }

    async fn history(&self, order_number: &str) -> Result<Option<Vec<HistoryEntry>>, StoreError> {
        let n = order_number.to_string();
        self.read(move |c| orders::history(c, &n)).await
    }

    async fn open_orders(&self) -> Result<Vec<OrderView>, StoreError> {
        self.read(orders::open_orders).await
    }

    async fn ticket_times(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<TicketTimes>, StoreError> {
        self.read(move |c| orders::ticket_times(c, from, to)).await
    }

    async fn workers(&self) -> Result<Vec<WorkerRow>, StoreError> {
        self.read(workers::list).await
    }

    async fn worker_lease(&self, name: &str) -> Result<WorkerLease, StoreError> {
        let (db, name) = (self.path.clone(), name.to_string());
        tokio::task::spawn_blocking(move || workers::lease(&db, &name))
            .await
            .map_err(|e| StoreError::new(Class::Permanent, format!("worker lock task: {e}")))?
    }

    async fn register_worker(&self, reg: &WorkerRegistration) -> Result<Registered, StoreError> {
        let reg = reg.clone();
        self.write(move |c| workers::register(c, &reg)).await
    }

    async fn set_worker(&self, seen: WorkerSeen<'_>) -> Result<(), StoreError> {
        let (name, now, status) = (seen.name.to_string(), seen.now, seen.status);
        self.write(move |c| workers::set(c, &name, now, status))
            .await
    }

    async fn lease_outbox(
        &self,
        claim: &OutboxClaim<'_>,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        let k = *claim;
        // Look before leasing: the relay polls twice a second, and an idle poll
        // should be a read, not a write transaction with its fsync.
        let (owner, orphans, now) = (self.owner.clone(), k.orphaned_before, k.now);
        let waiting = !k.published.is_empty()
            || self
                .read(move |c| outbox::any_waiting(c, &owner, orphans, now))
                .await?;
        if !waiting {
            return Ok(Vec::new());
        }
        let owner = self.owner.clone();
        let published = k.published.to_vec();
        let (until, limit) = (k.until, k.limit);
        // The rows go out next, so they must be on disk: ours are unless an
        // unsynced write came before; another (dead) process's rows may not be.
        let on_disk =
            |(rows, foreign): &(Vec<OutboxMessage>, bool)| match (rows.is_empty(), foreign) {
                (true, _) => OnDisk::Nothing,
                (false, false) => OnDisk::WhatItRead,
                (false, true) => OnDisk::Own,
            };
        let (rows, _) = self
            .write_then(on_disk, move |c| {
                let claim = OutboxClaim {
                    published: &published,
                    limit,
                    now,
                    until,
                    orphaned_before: orphans,
                };
                outbox::lease(c, &owner, &claim)
            })
            .await?;
        Ok(rows)
    }

    async fn delete_outbox(&self, ids: &[i64]) -> Result<(), StoreError> {
        let ids = ids.to_vec();
        self.write_then(
            |_| OnDisk::Nothing,
            move |c| outbox::delete_published(c, &ids),
        )
        .await
    }

    async fn release_outbox(&self, ids: &[i64]) -> Result<(), StoreError> {
        let ids = ids.to_vec();
        self.write_then(|_| OnDisk::Nothing, move |c| outbox::release(c, &ids))
            .await
    }

    async fn outbox_len(&self) -> Result<i64, StoreError> {
        self.read(outbox::len).await
    }

    async fn outbox_stats(&self) -> Result<(i64, Option<DateTime<Utc>>), StoreError> {
        self.read(outbox::stats).await
    }

    async fn newest_change(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.read(|c| {
            let t: Option<String> = c
                .query_row(NEWEST_CHANGE_SQL, [], |r| r.get(0))
                .map_err(sql_err)?;
            t.map(|t| parse_ts(&t)).transpose().map_err(sql_err)
        })
        .await
    }

    async fn purge_orders(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        let before = ts(before);
        // Nothing to sync: a purge lost in a power cut is done again tomorrow.
        self.write_then(
            |_| OnDisk::Nothing,
            move |c| orders::purge(c, &before, limit),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::checkpointer::CHECKPOINT_EVERY;
    use super::*;
    use crate::domain::order::validate;
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    /// Issue 26: a database made before retention (auto_vacuum NONE) is
    /// switched to INCREMENTAL when a service opens it (small enough), and a
    /// new one is INCREMENTAL from the start.
    #[tokio::test]
    async fn databases_give_freed_space_back() {
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| -> i64 {
            Connection::open(p)
                .unwrap()
                .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
                .unwrap()
        };
        let old = dir.path().join("old.db");
        Connection::open(&old)
            .unwrap()
            .execute_batch("PRAGMA journal_mode=WAL; create table t (x); insert into t values (1);")
            .unwrap();
        assert_eq!(mode(&old), 0);
        drop(SqliteStore::open(&old, "test".into()).await.unwrap());
        assert_eq!(mode(&old), 2, "switched at start");
        let new = dir.path().join("new.db");
        drop(SqliteStore::open(&new, "test".into()).await.unwrap());
        assert_eq!(mode(&new), 2, "a new file from the start");
    }

    async fn claim(store: &SqliteStore, done: &[i64]) -> Vec<OutboxMessage> {
        store
            .claim_outbox(done, 10, Duration::from_secs(30), Utc::now())
            .await
            .expect("claim")
    }

    fn change(n: &str, to: OrderStatus, durability: Durability) -> Transition {
        Transition {
            order_number: n.to_string(),
            to,
            changed_by: "chef".into(),
            request_id: "rid".into(),
            now: Utc::now(),
            estimated_completion: None,
            notes: None,
            durability,
        }
    }

    /// The writer's rule: it syncs the WAL for an answer that tells the world
    /// (an order, a durable change) and before the relay publishes a write
    /// that is not synced yet; never for a deferred change or bookkeeping.
    #[tokio::test]
    async fn the_writer_syncs_what_is_answered_or_published_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("t.db"), "test".into())
            .await
            .expect("open");
        let syncs = || store.syncs.load(Ordering::Relaxed);
        let order = validate(
            &serde_json::json!({"customer_name": "Ann", "order_type": "takeout",
            "items": [{"name": "Fries", "quantity": 1, "price": 4.5}]}),
        )
        .expect("valid");

        let start = syncs();
        let n = store
            .create_order(&order, "rid", Utc::now(), Utc::now().date_naive())
            .await
            .expect("create")
            .order_number;
        assert_eq!(syncs(), start + 1, "an order is on disk before its answer");
        let msgs = claim(&store, &[]).await;
        assert_eq!(msgs.len(), 1);
        assert_eq!(syncs(), start + 1, "its message was on disk already");

        let cooking = store
            .transition(&change(&n, OrderStatus::Cooking, Durability::Deferred))
            .await
            .expect("cooking");
        assert!(matches!(cooking, TransitionOutcome::Applied { .. }));
        assert_eq!(syncs(), start + 1, "a deferred change waits for no sync");
        let msgs = claim(&store, &[msgs[0].id]).await;
        assert_eq!(msgs.len(), 1, "the deferred change's message");
        assert_eq!(syncs(), start + 2, "synced before the relay publishes it");

        store
            .transition(&change(&n, OrderStatus::Ready, Durability::Now))
            .await
            .expect("ready");
        assert_eq!(syncs(), start + 3, "a durable change is synced");
        let msgs = claim(&store, &[msgs[0].id]).await;
        assert_eq!(msgs.len(), 1);
        assert!(claim(&store, &[msgs[0].id]).await.is_empty());
        assert_eq!(syncs(), start + 3, "bookkeeping needs no sync");

        // A claim's own writes (leases, deletes) are bookkeeping too: a claim
        // after one, of rows on disk already, needs no sync.
        for _ in 0..2 {
            store
                .create_order(&order, "rid", Utc::now(), Utc::now().date_naive())
                .await
                .expect("create");
        }
        assert_eq!(syncs(), start + 5);
        let one = |done: Vec<i64>| {
            let store = &store;
            async move {
                store
                    .claim_outbox(&done, 1, Duration::from_secs(30), Utc::now())
                    .await
                    .expect("claim")
            }
        };
        let first = one(vec![]).await;
        let second = one(vec![first[0].id]).await;
        assert_eq!((first.len(), second.len()), (1, 1));
        assert_eq!(syncs(), start + 5, "a lease is not worth a sync");
    }

    /// SQLite's own checkpoint (inside a commit) is off; the WAL still reaches
    /// the database file, on the checkpointer's thread.
    #[tokio::test]
    async fn the_wal_is_copied_into_the_database_in_the_background() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("t.db");
        let store = SqliteStore::open(&db, "test".into()).await.expect("open");
        let order = validate(
            &serde_json::json!({"customer_name": "Ann", "order_type": "takeout",
            "items": [{"name": "Fries", "quantity": 1, "price": 4.5}]}),
        )
        .expect("valid");
        let size = || std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
        let before = size();
        for _ in 0..20 {
            store
                .create_order(&order, "rid", Utc::now(), Utc::now().date_naive())
                .await
                .expect("create");
        }
        // The writer asks at its first write after CHECKPOINT_EVERY.
        let t = Instant::now();
        while size() <= before && t.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(CHECKPOINT_EVERY).await;
            store
                .create_order(&order, "rid", Utc::now(), Utc::now().date_naive())
                .await
                .expect("create");
        }
        assert!(
            size() > before,
            "the database file stayed at {before} bytes: nothing was checkpointed"
        );
    }
}
