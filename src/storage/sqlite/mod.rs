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

use crate::domain::error::Class;
use crate::domain::events::NOTIFICATIONS_EXCHANGE;
use crate::domain::order::order_number;
use crate::storage::migrations::{Migration, SQLITE};
use crate::storage::*;
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

mod tokens;

const MAX_BATCH: usize = 256;
const MAX_IDLE_READERS: usize = 8;
/// How often the WAL is checkpointed while the writer writes: see `checkpointer`.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
/// How long a write waits for another process's before it fails as busy.
const BUSY_WAIT: Duration = Duration::from_secs(5);

pub struct SqliteStore {
    path: PathBuf,
    owner: String,
    writer: mpsc::Sender<Box<dyn WriteJob>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    /// How many times the writer has synced the WAL (read by the test of its rule).
    #[cfg_attr(not(test), allow(dead_code))]
    syncs: Arc<AtomicU64>,
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
                let conn = open_conn(&p)?;
                migrate(&conn, SQLITE)?;
                // The writer syncs the WAL itself; NORMAL keeps SQLite from doing
                // it at every commit as well.
                // No checkpoint inside a commit either: see `checkpointer`.
                conn.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA wal_autocheckpoint=0")
                    .map_err(sql_err)?;
                let wal = open_wal(&p)?;
                Ok((conn, wal, open_conn(&p)?))
            },
        )
        .await
        .map_err(|e| StoreError::new(Class::Permanent, format!("sqlite open task: {e}")))??;

        let (tx, rx) = mpsc::channel::<Box<dyn WriteJob>>();
        let syncs = Arc::new(AtomicU64::new(0));
        let counted = syncs.clone();
        let (ckpt_tx, ckpt_rx) = mpsc::sync_channel::<()>(1);
        let thread = |name: &str| std::thread::Builder::new().name(name.into());
        let failed = |e: std::io::Error| {
            StoreError::new(Class::Permanent, format!("starting sqlite threads: {e}"))
        };
        thread("sqlite-checkpoint")
            .spawn(move || checkpointer(ckpt_conn, ckpt_rx))
            .map_err(failed)?;
        thread("sqlite-writer")
            .spawn(move || writer_loop(conn, wal, counted, rx, ckpt_tx))
            .map_err(failed)?;
        Ok(SqliteStore {
            path,
            owner,
            writer: tx,
            readers: Arc::new(Mutex::new(Vec::new())),
            syncs,
        })
    }

    /// A write whose answer waits until it is on disk.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.write_then(|_| OnDisk::Own, f).await
    }

    /// A write whose answer needs what `sync` says of its result.
    async fn write_then<T, F>(&self, sync: fn(&T) -> OnDisk, f: F) -> Result<T, StoreError>
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
        self.writer.send(job).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let pool = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let conn = match pooled {
                Some(c) => c,
                None => open_conn(&path)?,
            };
            let result = f(&conn);
            let mut idle = pool.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
            result
        })
        .await
        .map_err(|e| StoreError::new(Class::Permanent, format!("sqlite read task: {e}")))?
    }
}

fn open_conn(path: &Path) -> Result<Connection, StoreError> {
    let mut conn = Connection::open(path).map_err(|e| {
        StoreError::new(Class::Transient, format!("opening {}: {e}", path.display()))
    })?;
    // WAL: readers do not block the writer. synchronous=FULL: a committed write
    // survives a power cut (the writer thread commits with NORMAL and syncs
    // itself: see the module's comment).
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")
        .map_err(sql_err)?;
    // Other processes on the same file (a kitchen worker beside the order
    // service) wait for each other's writes instead of failing, as
    // busy_timeout would make them, but polling at a fraction of one write's
    // length: SQLite's own waits (1, 2, 5, 10 ... 100 ms) idle a queue of
    // writes behind a lock that is free again within a millisecond.
    let mut since = Instant::now();
    conn.busy_handler(Some(move |tries: i32| {
        if tries == 0 {
            since = Instant::now();
        }
        let pause = if tries < 400 { 50 } else { 1000 };
        std::thread::sleep(Duration::from_micros(pause));
        since.elapsed() < BUSY_WAIT
    }))
    .map_err(sql_err)?;
    Ok(conn)
}

/// The WAL file of the database at `path` (SQLite's name for it), opened for
/// the writer's own sync.
fn open_wal(path: &Path) -> Result<std::fs::File, StoreError> {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&wal)
        .map_err(|e| {
            StoreError::new(
                Class::Transient,
                format!("opening {}: {e}", Path::new(&wal).display()),
            )
        })
}

fn migrate(conn: &Connection, migrations: &[Migration]) -> Result<(), StoreError> {
    conn.execute_batch("BEGIN IMMEDIATE").map_err(sql_err)?;
    let result = (|| {
        conn.execute_batch(
            "create table if not exists schema_migrations (version integer primary key, name text not null, applied_at text not null)",
        )?;
        for m in migrations {
            let done: Option<i64> = conn
                .query_row(
                    "select version from schema_migrations where version = ?1",
                    [m.version],
                    |r| r.get(0),
                )
                .optional()?;
            if done.is_none() {
                conn.execute_batch(m.sql)?;
                conn.execute(
                    "insert into schema_migrations (version, name, applied_at) values (?1, ?2, ?3)",
                    params![m.version, m.name, ts(Utc::now())],
                )?;
            }
        }
        Ok::<(), rusqlite::Error>(())
    })();
    match result {
        Ok(()) => conn.execute_batch("COMMIT").map_err(sql_err),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(StoreError::new(
                Class::Permanent,
                format!("applying sqlite migrations: {e}"),
            ))
        }
    }
}

// ---- the writer thread -------------------------------------------------------

/// What must be on disk before a write job is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnDisk {
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

trait WriteJob: Send {
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

fn writer_loop(
    conn: Connection,
    wal: std::fs::File,
    syncs: Arc<AtomicU64>,
    rx: mpsc::Receiver<Box<dyn WriteJob>>,
    checkpoint: mpsc::SyncSender<()>,
) {
    // A `BeforePublishing` write committed since the last sync.
    let mut unsynced = false;
    let mut last_checkpoint = Instant::now();
    while let Ok(first) = rx.recv() {
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

/// Copies the WAL into the database file, on its own connection and thread,
/// when the writer asks (at most every `CHECKPOINT_EVERY` while it writes).
/// SQLite's automatic checkpoint would run inside a commit, with two fsyncs,
/// and while the readers of another process on the file keep the WAL from
/// starting over, at nearly every commit. PASSIVE never waits for a lock:
/// what readers still use is copied next time. Ends with the writer.
fn checkpointer(conn: Connection, asked: mpsc::Receiver<()>) {
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

// ---- helpers -----------------------------------------------------------------

fn sql_err(e: rusqlite::Error) -> StoreError {
    let class = sqlite_class(&e);
    StoreError::caused_by(class, "SQLite", e)
}

/// The class of a SQLite error, from its (extended) result code.
fn sqlite_class(e: &rusqlite::Error) -> Class {
    use rusqlite::ErrorCode::*;
    match e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            // Another writer holds the file, or the file or disk is not usable
            // right now (unmounted, read-only, full): passes when it is back.
            DatabaseBusy | DatabaseLocked | CannotOpen | ReadOnly | DiskFull | SystemIoFailure => {
                Class::Transient
            }
            ConstraintViolation
                if matches!(
                    f.extended_code,
                    rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                        | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                ) =>
            {
                Class::Conflict
            }
            _ => Class::Permanent,
        },
        rusqlite::Error::QueryReturnedNoRows => Class::NotFound,
        _ => Class::Permanent,
    }
}

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

fn parse_col<T: std::str::FromStr<Err = String>>(s: String) -> rusqlite::Result<T> {
    s.parse::<T>().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
    })
}

const ORDER_COLUMNS: &str = "id, number, customer_name, type, table_number, delivery_address, total_cents, priority, status, processed_by, created_at, updated_at, estimated_completion, completed_at, version, notes";

fn order_row(r: &Row) -> rusqlite::Result<(i64, OrderView)> {
    Ok((
        r.get(0)?,
        OrderView {
            order_number: r.get(1)?,
            customer_name: r.get(2)?,
            order_type: parse_col(r.get(3)?)?,
            table_number: r.get(4)?,
            delivery_address: r.get(5)?,
            items: Vec::new(),
            total_amount: Cents(r.get(6)?),
            priority: r.get(7)?,
            status: parse_col(r.get(8)?)?,
            processed_by: r.get(9)?,
            created_at: parse_ts(&r.get::<_, String>(10)?)?,
            updated_at: parse_ts(&r.get::<_, String>(11)?)?,
            estimated_completion: opt_ts(r.get(12)?)?,
            completed_at: opt_ts(r.get(13)?)?,
            version: r.get(14)?,
            notes: r.get(15)?,
        },
    ))
}

/// The items of the orders `ids`, each with its order's id, in order: one
/// query however many orders (the ids travel as one JSON array).
fn items_of(conn: &Connection, ids: &[i64]) -> Result<Vec<(i64, Item)>, StoreError> {
    let ids = serde_json::to_string(ids)
        .map_err(|e| StoreError::caused_by(Class::Permanent, "encoding order ids", e))?;
    let mut st = conn
        .prepare_cached(
            "select name, quantity, price_cents, notes, modifiers, allergens, order_id from order_items
             where order_id in (select value from json_each(?1)) order by order_id, id",
        )
        .map_err(sql_err)?;
    let rows = st
        .query_map([ids], |r| {
            Ok((
                r.get::<_, i64>(6)?,
                (
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    Cents(r.get(2)?),
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, Option<String>>(5)?,
                ),
            ))
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(sql_err)?;
    rows.into_iter()
        .map(|(id, (name, qty, price, notes, mods, allergens))| {
            Ok((
                id,
                item_from_columns(name, qty, price, notes, mods, allergens)?,
            ))
        })
        .collect()
}

fn load_order(conn: &Connection, number: &str) -> Result<Option<(i64, OrderView)>, StoreError> {
    let sql = format!("select {ORDER_COLUMNS} from orders where number = ?1");
    let found = conn
        .prepare_cached(&sql)
        .and_then(|mut st| st.query_row([number], order_row).optional())
        .map_err(sql_err)?;
    match found {
        Some((id, mut view)) => {
            view.items = items_of(conn, &[id])?.into_iter().map(|(_, i)| i).collect();
            Ok(Some((id, view)))
        }
        None => Ok(None),
    }
}

fn insert_outbox(
    conn: &Connection,
    owner: &str,
    now: DateTime<Utc>,
    (exchange, routing_key, priority): (&str, &str, u8),
    payload: &str,
    message_id: &str,
    request_id: &str,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "insert into outbox (created_at, exchange, routing_key, payload, priority, message_id, request_id, owner) values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![ts(now), exchange, routing_key, payload, priority, message_id, request_id, owner])?;
    Ok(())
}

/// `create` (the order's own transaction, `create_order_tx`) under an
/// idempotency key: the key's stored answer when there is one, else the new
/// order and its key row. On the writer thread, so jobs with one key run one
/// after another: a second one (even in the same batch) finds the first one's
/// row. An expired row is replaced.
fn keyed_tx(
    conn: &Connection,
    key: &IdempotencyKey,
    now: DateTime<Utc>,
    create: impl FnOnce() -> Result<CreatedOrder, StoreError>,
) -> Result<KeyedOutcome, StoreError> {
    let found: Option<(String, Option<String>, i64, i32, String)> = conn
        .prepare_cached(
            "select request_hash, order_number, total_cents, priority, expires_at from idempotency_keys where scope = ?1 and key = ?2",
        )
        .and_then(|mut st| {
            st.query_row([&key.scope, &key.key], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .optional()
        })
        .map_err(sql_err)?;
    if let Some((hash, number, total, priority, expires_at)) = found {
        if expires_at > ts(now) {
            if hash != key.request_hash {
                return Ok(KeyedOutcome::Mismatch);
            }
            let order_number = number.ok_or_else(|| {
                StoreError::new(Class::Permanent, "idempotency key without its order")
            })?;
            return Ok(KeyedOutcome::Replayed(CreatedOrder {
                order_number,
                total: Cents(total),
                priority,
            }));
        }
        conn.prepare_cached("delete from idempotency_keys where scope = ?1 and key = ?2")
            .and_then(|mut st| st.execute([&key.scope, &key.key]))
            .map_err(sql_err)?;
    }
    let created = create()?;
    conn.prepare_cached(
        "insert into idempotency_keys (scope, key, request_hash, order_number, total_cents, priority, created_at, expires_at) values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut st| {
        st.execute(params![
            key.scope,
            key.key,
            key.request_hash,
            created.order_number,
            created.total.0,
            created.priority,
            ts(now),
            ts(key.expires_at)
        ])
    })
    .map_err(sql_err)?;
    Ok(KeyedOutcome::Created(created))
}

fn create_order_tx(
    conn: &Connection,
    owner: &str,
    order: &ValidOrder,
    request_id: &str,
    (now, day): (DateTime<Utc>, NaiveDate),
) -> Result<CreatedOrder, StoreError> {
    let seq: i64 = conn
        .prepare_cached(
            "insert into daily_order_counters (date, last) values (?1, 1) on conflict(date) do update set last = last + 1 returning last",
        )
        .and_then(|mut st| st.query_row([day.to_string()], |r| r.get(0)))
        .map_err(sql_err)?;
    let number = order_number(day, seq);
    let now_s = ts(now);
    conn.prepare_cached(
        "insert into orders (created_at, updated_at, number, customer_name, type, table_number, delivery_address, total_cents, priority, status, version, notes) values (?1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'received', 1, ?9)",
    )
    .and_then(|mut st| {
        st.execute(params![
            now_s,
            number,
            order.customer_name,
            order.order_type.as_str(),
            order.table_number,
            order.delivery_address,
            order.total.0,
            order.priority,
            order.notes
        ])
    })
    .map_err(sql_err)?;
    let order_id = conn.last_insert_rowid();
    {
        let mut st = conn
            .prepare_cached(
                "insert into order_items (created_at, order_id, name, quantity, price_cents, notes, modifiers, allergens) values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .map_err(sql_err)?;
        for item in &order.items {
            let (notes, modifiers, allergens) = item_detail_columns(item);
            st.execute(params![
                now_s,
                order_id,
                item.name,
                item.quantity,
                item.price.0,
                notes,
                modifiers,
                allergens
            ])
            .map_err(sql_err)?;
        }
    }
    conn.prepare_cached(
        "insert into order_status_log (created_at, order_id, status, changed_by, changed_at) values (?1, ?2, 'received', 'order-service', ?1)",
    )
    .and_then(|mut st| st.execute(params![now_s, order_id]))
    .map_err(sql_err)?;

    let msg = OrderMessage::new(number.clone(), order, now);
    let (exchange, key, prio) = order_outbox(&msg);
    insert_outbox(
        conn,
        owner,
        now,
        (&exchange, &key, prio),
        &to_json(&msg)?,
        &number,
        request_id,
    )
    .map_err(sql_err)?;
    Ok(CreatedOrder {
        order_number: number,
        total: order.total,
        priority: order.priority,
    })
}

/// The order's columns without its items.
fn order_state(conn: &Connection, number: &str) -> Result<Option<OrderState>, StoreError> {
    let sql = format!("select {ORDER_COLUMNS} from orders where number = ?1");
    conn.prepare_cached(&sql)
        .and_then(|mut st| st.query_row([number], order_row).optional())
        .map(|found| found.map(|(_, v)| v.state()))
        .map_err(sql_err)
}

/// Writes what `d` decided on `cur`: the order (only if it is still in `cur`),
/// the worker's count, the history row and the outbox message. None when the
/// compare-and-set missed; nothing was written then.
fn persist_transition(
    conn: &Connection,
    owner: &str,
    t: &Transition,
    cur: &OrderState,
    d: &Decision,
) -> Result<Option<OrderView>, StoreError> {
    let s = &d.state;
    let sql = format!(
        "update orders set status = ?1, version = ?2, updated_at = ?3, processed_by = ?4,
            estimated_completion = ?5, completed_at = ?6
         where number = ?7 and status = ?8 and version = ?9
         returning {ORDER_COLUMNS}"
    );
    let updated = conn
        .prepare_cached(&sql)
        .and_then(|mut st| {
            st.query_row(
                params![
                    s.status.as_str(),
                    s.version,
                    ts(s.updated_at),
                    s.processed_by,
                    s.estimated_completion.map(ts),
                    s.completed_at.map(ts),
                    cur.order_number,
                    cur.status.as_str(),
                    cur.version,
                ],
                order_row,
            )
            .optional()
        })
        .map_err(sql_err)?;
    let Some((id, order)) = updated else {
        return Ok(None);
    };
    let u = &d.update;
    if d.finishes_cooking() {
        conn.prepare_cached(
            "update workers set orders_processed = orders_processed + 1 where name = ?1",
        )
        .and_then(|mut st| st.execute([&u.changed_by]))
        .map_err(sql_err)?;
    }
    let now = ts(u.timestamp);
    conn.prepare_cached(
        "insert into order_status_log (created_at, order_id, status, changed_by, changed_at, notes) values (?1, ?2, ?3, ?4, ?1, ?5)",
    )
    .and_then(|mut st| st.execute(params![now, id, u.new_status.as_str(), u.changed_by, t.notes]))
    .map_err(sql_err)?;
    insert_outbox(
        conn,
        owner,
        u.timestamp,
        (NOTIFICATIONS_EXCHANGE, "", 0),
        &to_json(u)?,
        &u.event_id(),
        &t.request_id,
    )
    .map_err(sql_err)?;
    Ok(Some(order))
}

fn worker_row(r: &Row) -> rusqlite::Result<WorkerRow> {
    Ok(WorkerRow {
        name: r.get(0)?,
        order_types: r.get(1)?,
        status: r.get(2)?,
        orders_processed: r.get(3)?,
        last_seen: parse_ts(&r.get::<_, String>(4)?)?,
        heartbeat_interval_secs: r.get(5)?,
    })
}

const WORKER_COLUMNS: &str = "name, type, status, orders_processed, last_seen, heartbeat_interval";

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

    async fn create_order(
        &self,
        order: &ValidOrder,
        request_id: &str,
        now: DateTime<Utc>,
        day: NaiveDate,
    ) -> Result<CreatedOrder, StoreError> {
        let order = order.clone();
        let request_id = request_id.to_string();
        let owner = self.owner.clone();
        self.write(move |c| create_order_tx(c, &owner, &order, &request_id, (now, day)))
            .await
    }

    async fn create_order_keyed(
        &self,
        order: &ValidOrder,
        request_id: &str,
        now: DateTime<Utc>,
        day: NaiveDate,
        key: &IdempotencyKey,
    ) -> Result<KeyedOutcome, StoreError> {
        let order = order.clone();
        let request_id = request_id.to_string();
        let owner = self.owner.clone();
        let key = key.clone();
        self.write(move |c| {
            keyed_tx(c, &key, now, || {
                create_order_tx(c, &owner, &order, &request_id, (now, day))
            })
        })
        .await
    }

    async fn sweep_idempotency_keys(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        self.write(move |c| {
            c.prepare_cached("delete from idempotency_keys where expires_at <= ?1")
                .and_then(|mut st| st.execute([ts(now)]))
                .map(|n| n as u64)
                .map_err(sql_err)
        })
        .await
    }

    async fn order_state(&self, order_number: &str) -> Result<Option<OrderState>, StoreError> {
        let n = order_number.to_string();
        self.read(move |c| order_state(c, &n)).await
    }

    /// On the writer thread, in its transaction: see `persist_transition`.
    async fn persist_transition(
        &self,
        t: &Transition,
        cur: &OrderState,
        d: &Decision,
    ) -> Result<Option<OrderView>, StoreError> {
        let on_disk: fn(&Option<OrderView>) -> OnDisk = match t.durability {
            Durability::Now => |_| OnDisk::Own,
            Durability::Deferred => |_| OnDisk::BeforePublishing,
        };
        let (t, cur, d) = (t.clone(), cur.clone(), d.clone());
        let owner = self.owner.clone();
        self.write_then(on_disk, move |c| {
            persist_transition(c, &owner, &t, &cur, &d)
        })
        .await
    }

    async fn order(&self, order_number: &str) -> Result<Option<OrderView>, StoreError> {
        let n = order_number.to_string();
        self.read(move |c| Ok(load_order(c, &n)?.map(|(_, v)| v)))
            .await
    }

    async fn status(&self, order_number: &str) -> Result<Option<OrderStatus>, StoreError> {
        let n = order_number.to_string();
        self.read(move |c| {
            c.prepare_cached("select status from orders where number = ?1")
                .and_then(|mut st| {
                    st.query_row([&n], |r| parse_col::<OrderStatus>(r.get(0)?))
                        .optional()
                })
                .map_err(sql_err)
        })
        .await
    }

    async fn history(&self, order_number: &str) -> Result<Option<Vec<HistoryEntry>>, StoreError> {
        let n = order_number.to_string();
        self.read(move |c| {
            let id: Option<i64> = c
                .query_row("select id from orders where number = ?1", [&n], |r| r.get(0))
                .optional()
                .map_err(sql_err)?;
            let Some(id) = id else { return Ok(None) };
            let mut st = c
                .prepare_cached(
                    "select status, changed_at, changed_by from order_status_log where order_id = ?1 order by id",
                )
                .map_err(sql_err)?;
            let rows = st
                .query_map([id], |r| {
                    Ok(HistoryEntry {
                        status: parse_col(r.get(0)?)?,
                        timestamp: parse_ts(&r.get::<_, String>(1)?)?,
                        changed_by: r.get(2)?,
                    })
                })
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(sql_err)?;
            Ok(Some(rows))
        })
        .await
    }

    async fn open_orders(&self) -> Result<Vec<OrderView>, StoreError> {
        self.read(|c| {
            let sql = format!(
                "select {ORDER_COLUMNS} from orders where status in ('received', 'cooking', 'ready') order by id"
            );
            let mut st = c.prepare_cached(&sql).map_err(sql_err)?;
            let (ids, mut orders): (Vec<i64>, Vec<OrderView>) = st
                .query_map([], order_row)
                .and_then(|rows| rows.collect::<rusqlite::Result<_>>())
                .map_err(sql_err)?;
            // Every open order's items in one query, not one query per order.
            attach_items(&mut orders, &ids, items_of(c, &ids)?);
            Ok(orders)
        })
        .await
    }

    async fn ticket_times(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<TicketTimes>, StoreError> {
        self.read(move |c| {
            let sql = format!(
                "{TICKET_TIMES_SELECT} where o.created_at >= ?1 and o.created_at < ?2 order by o.id"
            );
            let mut st = c.prepare_cached(&sql).map_err(sql_err)?;
            st.query_map(params![ts(from), ts(to)], |r| {
                Ok(TicketTimes {
                    order_type: parse_col(r.get(0)?)?,
                    worker: r.get(1)?,
                    received_at: parse_ts(&r.get::<_, String>(2)?)?,
                    ready_at: opt_ts(r.get(3)?)?,
                    completed_at: opt_ts(r.get(4)?)?,
                })
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(sql_err)
        })
        .await
    }

    async fn workers(&self) -> Result<Vec<WorkerRow>, StoreError> {
        self.read(|c| {
            let sql = format!("select {WORKER_COLUMNS} from workers order by name");
            let mut st = c.prepare_cached(&sql).map_err(sql_err)?;
            st.query_map([], worker_row)
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(sql_err)
        })
        .await
    }

    async fn worker_lease(&self, name: &str) -> Result<WorkerLease, StoreError> {
        // An exclusive flock on a file beside the database: the kernel drops it
        // when the process dies, however it dies.
        let mut file = self.path.as_os_str().to_owned();
        file.push(format!(
            ".worker-{}.lock",
            crate::domain::worker::lock_key(name)
        ));
        let file = PathBuf::from(file);
        tokio::task::spawn_blocking(move || {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&file)
                .map_err(|e| {
                    StoreError::new(
                        crate::domain::error::Class::Transient,
                        format!("opening {}: {e}", file.display()),
                    )
                })?;
            match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                Ok(lock) => Ok(WorkerLease::new(true, Some(Arc::new(lock)))),
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(WorkerLease::new(false, None)),
                Err((_, e)) => Err(StoreError::new(
                    crate::domain::error::Class::Transient,
                    format!("locking {}: {e}", file.display()),
                )),
            }
        })
        .await
        .map_err(|e| {
            StoreError::new(
                crate::domain::error::Class::Permanent,
                format!("worker lock task: {e}"),
            )
        })?
    }

    async fn register_worker(&self, reg: &WorkerRegistration) -> Result<Registered, StoreError> {
        let reg = reg.clone();
        self.write(move |c| {
            let sql = format!("select {WORKER_COLUMNS} from workers where name = ?1");
            let existing = c
                .query_row(&sql, [&reg.name], worker_row)
                .optional()
                .map_err(sql_err)?;
            let outcome = crate::domain::worker::decide(existing.as_ref(), &reg);
            if matches!(outcome, Registered::AlreadyOnline { .. }) {
                return Ok(outcome);
            }
            c.execute(
                "insert into workers (created_at, name, type, status, last_seen, heartbeat_interval) values (?1, ?2, ?3, 'online', ?1, ?4)
                 on conflict(name) do update set type = excluded.type, status = 'online', last_seen = excluded.last_seen, heartbeat_interval = excluded.heartbeat_interval",
                params![ts(reg.now), reg.name, reg.order_types, reg.heartbeat_interval_secs],
            )
            .map_err(sql_err)?;
            Ok(outcome)
        })
        .await
    }

    async fn set_worker(
        &self,
        name: &str,
        now: DateTime<Utc>,
        status: &'static str,
    ) -> Result<(), StoreError> {
        let name = name.to_string();
        self.write(move |c| {
            c.execute(
                "update workers set last_seen = ?1, status = ?3 where name = ?2",
                params![ts(now), name, status],
            )
            .map(|_| ())
            .map_err(sql_err)
        })
        .await
    }

    async fn lease_outbox(
        &self,
        claim: &OutboxClaim<'_>,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        let k = *claim;
        // Look before leasing: the relay polls twice a second, and an idle poll
        // should be a read, not a write transaction with its fsync.
        let (owner, orphans, now_s) = (self.owner.clone(), ts(k.orphaned_before), ts(k.now));
        let waiting = !k.published.is_empty()
            || self
            .read(move |c| {
                c.prepare_cached(
                    "select exists(select 1 from outbox where (owner = ?1 or created_at < ?2) and (lease_until is null or lease_until < ?3))",
                )
                .and_then(|mut st| st.query_row(params![owner, orphans, now_s], |r| r.get::<_, bool>(0)))
                .map_err(sql_err)
            })
            .await?;
        if !waiting {
            return Ok(Vec::new());
        }
        let owner = self.owner.clone();
        let published = k.published.to_vec();
        let (until, now, limit, orphans) = (ts(k.until), ts(k.now), k.limit, ts(k.orphaned_before));
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
                delete_published(c, &published)?;
                let mut st = c
                    .prepare_cached(
                        "update outbox set lease_until = ?1 where id in
                            (select id from outbox
                             where (owner = ?4 or created_at < ?5) and (lease_until is null or lease_until < ?2)
                             order by id limit ?3)
                         returning id, exchange, routing_key, payload, priority, message_id, request_id, owner <> ?4",
                    )
                    .map_err(sql_err)?;
                let mut foreign = false;
                let mut rows = st
                    .query_map(params![until, now, limit, owner, orphans], |r| {
                        foreign |= r.get::<_, bool>(7)?;
                        Ok(OutboxMessage {
                            id: r.get(0)?,
                            exchange: r.get(1)?,
                            routing_key: r.get(2)?,
                            payload: r.get(3)?,
                            priority: r.get(4)?,
                            message_id: r.get(5)?,
                            request_id: r.get(6)?,
                        })
                    })
                    .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                    .map_err(sql_err)?;
                rows.sort_by_key(|m| m.id);
                Ok((rows, foreign))
            })
            .await?;
        Ok(rows)
    }

    async fn delete_outbox(&self, ids: &[i64]) -> Result<(), StoreError> {
        let ids = ids.to_vec();
        self.write_then(|_| OnDisk::Nothing, move |c| delete_published(c, &ids))
            .await
    }

    async fn release_outbox(&self, ids: &[i64]) -> Result<(), StoreError> {
        let ids = ids.to_vec();
        self.write_then(
            |_| OnDisk::Nothing,
            move |c| {
                per_id(
                    c,
                    "update outbox set lease_until = null where id = ?1",
                    &ids,
                )
            },
        )
        .await
    }

    async fn outbox_len(&self) -> Result<i64, StoreError> {
        self.read(|c| {
            c.query_row("select count(*) from outbox", [], |r| r.get(0))
                .map_err(sql_err)
        })
        .await
    }

    async fn outbox_stats(&self) -> Result<(i64, Option<DateTime<Utc>>), StoreError> {
        self.read(|c| {
            let (n, oldest) = c
                .query_row("select count(*), min(created_at) from outbox", [], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, Option<String>>(1)?))
                })
                .map_err(sql_err)?;
            let oldest = oldest.map(|t| parse_ts(&t)).transpose().map_err(sql_err)?;
            Ok((n, oldest))
        })
        .await
    }
}

fn delete_published(c: &Connection, ids: &[i64]) -> Result<(), StoreError> {
    per_id(c, "delete from outbox where id = ?1", ids)
}

/// Runs `sql` (with `?1` the id) once per id, in the current transaction.
fn per_id(c: &Connection, sql: &str, ids: &[i64]) -> Result<(), StoreError> {
    let mut st = c.prepare_cached(sql).map_err(sql_err)?;
    for id in ids {
        st.execute([id]).map_err(sql_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::order::validate;

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
