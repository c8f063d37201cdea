//! Connections: opening one (WAL, the busy handler), the migrations, and the
//! small pool of read connections, used on the blocking thread pool (WAL lets
//! them run beside the writer).

use super::error::sql_err;
use super::ts;
use crate::domain::error::Class;
use crate::storage::migrations::Migration;
use crate::storage::StoreError;
use chrono::Utc;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MAX_IDLE_READERS: usize = 8;
/// How long a write waits for another process's before it fails as busy.
const BUSY_WAIT: Duration = Duration::from_secs(5);

/// Read connections, reused: at most `MAX_IDLE_READERS` wait idle.
pub(super) struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    pub(super) fn new(path: PathBuf) -> Self {
        Readers {
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` on an idle connection (or a new one) on the blocking pool.
    pub(super) async fn read<T, F>(self: &std::sync::Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = pool.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let conn = match pooled {
                Some(c) => c,
                None => open_conn(&pool.path)?,
            };
            let result = f(&conn);
            let mut idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
            result
        })
        .await
        .map_err(|e| StoreError::new(Class::Permanent, format!("sqlite read task: {e}")))?
    }
}

pub(super) fn open_conn(path: &Path) -> Result<Connection, StoreError> {
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
pub(super) fn open_wal(path: &Path) -> Result<std::fs::File, StoreError> {
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

pub(super) fn migrate(conn: &Connection, migrations: &[Migration]) -> Result<(), StoreError> {
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

/// Databases up to this size are switched to incremental vacuum when a service
/// opens them (a VACUUM of that many bytes takes seconds); a larger one only by
/// `restaurant-system migrate` (`reclaim_space`), with the services stopped.
pub(super) const RECLAIM_AT_START_MAX_BYTES: u64 = 256 << 20;

/// Makes the file give deleted orders' pages back to the file system
/// (`auto_vacuum = INCREMENTAL`, then `PRAGMA incremental_vacuum` after each
/// purge: `Store::purge_orders`). A database that has no table yet takes the
/// setting at once; an existing one needs a VACUUM (a rewrite of the whole
/// file, needing as much free disk again), done when it is at most `max_bytes`
/// (None: any size). Returns whether the file now reclaims space. Until then
/// SQLite reuses the freed pages for new orders: the file stops growing but
/// does not shrink.
pub(super) fn reclaim_space(conn: &Connection, max_bytes: Option<u64>) -> Result<bool, StoreError> {
    let mode: i64 = conn
        .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
        .map_err(sql_err)?;
    if mode == 2 {
        return Ok(true);
    }
    let tables: i64 = conn
        .query_row("select count(*) from sqlite_master", [], |r| r.get(0))
        .map_err(sql_err)?;
    if tables == 0 {
        conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL")
            .map_err(sql_err)?;
        return Ok(true);
    }
    let bytes: i64 = conn
        .query_row(
            "select page_count * page_size from pragma_page_count(), pragma_page_size()",
            [],
            |r| r.get(0),
        )
        .map_err(sql_err)?;
    if max_bytes.is_some_and(|m| bytes as u64 > m) {
        return Ok(false);
    }
    let started = Instant::now();
    conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL; VACUUM;")
        .map_err(sql_err)?;
    tracing::info!(
        action = "sqlite_reclaim_enabled",
        bytes,
        seconds = started.elapsed().as_secs_f64(),
        "The database now gives deleted orders' space back (VACUUM done once)"
    );
    Ok(true)
}
