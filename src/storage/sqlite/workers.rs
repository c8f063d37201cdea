//! The kitchen workers' SQL (registration, heartbeat, the list) and the lease
//! that keeps two processes from running one worker.

use super::*;

pub(super) fn worker_row(r: &Row) -> rusqlite::Result<WorkerRow> {
    Ok(WorkerRow {
        name: r.get(0)?,
        order_types: r.get(1)?,
        status: r.get(2)?,
        orders_processed: r.get(3)?,
        last_seen: parse_ts(&r.get::<_, String>(4)?)?,
        heartbeat_interval_secs: r.get(5)?,
    })
}

pub(super) const WORKER_COLUMNS: &str =
    "name, type, status, orders_processed, last_seen, heartbeat_interval";

pub(super) fn list(c: &Connection) -> Result<Vec<WorkerRow>, StoreError> {
    let sql = format!("select {WORKER_COLUMNS} from workers order by name");
    let mut st = c.prepare_cached(&sql).map_err(sql_err)?;
    st.query_map([], worker_row)
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(sql_err)
}

/// An exclusive flock on a file beside the database at `db`: the kernel drops
/// it when the process dies, however it dies. Blocking: for `spawn_blocking`.
pub(super) fn lease(db: &Path, name: &str) -> Result<WorkerLease, StoreError> {
    let mut file = db.as_os_str().to_owned();
    file.push(format!(
        ".worker-{}.lock",
        crate::domain::worker::lock_key(name)
    ));
    let file = PathBuf::from(file);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&file)
        .map_err(|e| {
            StoreError::new(Class::Transient, format!("opening {}: {e}", file.display()))
        })?;
    match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(WorkerLease::new(true, Some(Arc::new(lock)))),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(WorkerLease::new(false, None)),
        Err((_, e)) => Err(StoreError::new(
            Class::Transient,
            format!("locking {}: {e}", file.display()),
        )),
    }
}

pub(super) fn register(c: &Connection, reg: &WorkerRegistration) -> Result<Registered, StoreError> {
    let sql = format!("select {WORKER_COLUMNS} from workers where name = ?1");
    let existing = c
        .query_row(&sql, [&reg.name], worker_row)
        .optional()
        .map_err(sql_err)?;
    let outcome = crate::domain::worker::decide(existing.as_ref(), reg);
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
}

pub(super) fn set(
    c: &Connection,
    name: &str,
    now: DateTime<Utc>,
    status: &str,
) -> Result<(), StoreError> {
    c.execute(
        "update workers set last_seen = ?1, status = ?3 where name = ?2",
        params![ts(now), name, status],
    )
    .map(|_| ())
    .map_err(sql_err)
}
