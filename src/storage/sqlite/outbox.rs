//! The outbox's SQL: the row every change writes in its own transaction, and
//! the relay's lease, release and delete.

use super::*;

pub(super) fn insert_outbox(
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

/// Whether any row waits for this process's relay: ours, or an orphan (older
/// than `orphaned_before`), and not leased.
pub(super) fn any_waiting(
    c: &Connection,
    owner: &str,
    orphaned_before: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    c.prepare_cached(
        "select exists(select 1 from outbox where (owner = ?1 or created_at < ?2) and (lease_until is null or lease_until < ?3))",
    )
    .and_then(|mut st| {
        st.query_row(params![owner, ts(orphaned_before), ts(now)], |r| {
            r.get::<_, bool>(0)
        })
    })
    .map_err(sql_err)
}

/// Deletes what was published, then leases the next rows; says whether any of
/// them is another process's.
pub(super) fn lease(
    c: &Connection,
    owner: &str,
    k: &OutboxClaim<'_>,
) -> Result<(Vec<OutboxMessage>, bool), StoreError> {
    delete_published(c, k.published)?;
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
    let (until, now, orphans) = (ts(k.until), ts(k.now), ts(k.orphaned_before));
    let mut rows = st
        .query_map(params![until, now, k.limit, owner, orphans], |r| {
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
}

pub(super) fn release(c: &Connection, ids: &[i64]) -> Result<(), StoreError> {
    per_id(c, "update outbox set lease_until = null where id = ?1", ids)
}

pub(super) fn len(c: &Connection) -> Result<i64, StoreError> {
    c.query_row("select count(*) from outbox", [], |r| r.get(0))
        .map_err(sql_err)
}

/// How many rows wait, and the oldest one's time.
pub(super) fn stats(c: &Connection) -> Result<(i64, Option<DateTime<Utc>>), StoreError> {
    let (n, oldest) = c
        .query_row("select count(*), min(created_at) from outbox", [], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Option<String>>(1)?))
        })
        .map_err(sql_err)?;
    let oldest = oldest.map(|t| parse_ts(&t)).transpose().map_err(sql_err)?;
    Ok((n, oldest))
}

pub(super) fn delete_published(c: &Connection, ids: &[i64]) -> Result<(), StoreError> {
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
