//! The orders' SQL: intake (the day's number, the items, the first history
//! row and the Order Message in one transaction), idempotency keys, the
//! compare-and-set of a status change, and the read views. Functions of a
//! connection: the store runs them on the writer thread or a reader.

use super::outbox::insert_outbox;
use super::*;

pub(super) const ORDER_COLUMNS: &str = "id, number, customer_name, type, table_number, delivery_address, total_cents, priority, status, processed_by, created_at, updated_at, estimated_completion, completed_at, version, notes, rush, stations_done_at";

pub(super) fn order_row(r: &Row) -> rusqlite::Result<(i64, OrderView)> {
    Ok((
        r.get(0)?,
        OrderView {
            placed: PlacedOrder {
                order_number: r.get(1)?,
                customer_name: r.get(2)?,
                order_type: parse_col(r.get(3)?)?,
                table_number: r.get(4)?,
                delivery_address: r.get(5)?,
                items: Vec::new(),
                total_amount: Cents(r.get(6)?),
                priority: r.get(7)?,
            },
            status: parse_col(r.get(8)?)?,
            processed_by: r.get(9)?,
            created_at: parse_ts(&r.get::<_, String>(10)?)?,
            updated_at: parse_ts(&r.get::<_, String>(11)?)?,
            estimated_completion: opt_ts(r.get(12)?)?,
            completed_at: opt_ts(r.get(13)?)?,
            version: r.get(14)?,
            notes: r.get(15)?,
            rush: r.get(16)?,
            stations_done_at: opt_ts(r.get(17)?)?,
            parts: Vec::new(),
        },
    ))
}

/// The items of the orders `ids`, each with its order's id, in order: one
/// query however many orders (the ids travel as one JSON array).
pub(super) fn items_of(conn: &Connection, ids: &[i64]) -> Result<Vec<(i64, Item)>, StoreError> {
    let ids = serde_json::to_string(ids)
        .map_err(|e| StoreError::caused_by(Class::Permanent, "encoding order ids", e))?;
    let mut st = conn
        .prepare_cached(
            "select name, quantity, price_cents, notes, modifiers, allergens, order_id, category from order_items
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
                r.get::<_, Option<String>>(7)?,
            ))
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(sql_err)?;
    rows.into_iter()
        .map(
            |(id, (name, qty, price, notes, mods, allergens), category)| {
                Ok((
                    id,
                    Item {
                        category,
                        ..item_from_columns(name, qty, price, notes, mods, allergens)?
                    },
                ))
            },
        )
        .collect()
}

pub(super) fn load_order(
    conn: &Connection,
    number: &str,
) -> Result<Option<(i64, OrderView)>, StoreError> {
    let sql = format!("select {ORDER_COLUMNS} from orders where number = ?1");
    let found = conn
        .prepare_cached(&sql)
        .and_then(|mut st| st.query_row([number], order_row).optional())
        .map_err(sql_err)?;
    match found {
        Some((id, mut view)) => {
            view.placed.items = items_of(conn, &[id])?.into_iter().map(|(_, i)| i).collect();
            let mut one = [view];
            attach_parts(&mut one, &[id], stations::parts_of(conn, &[id])?);
            let [view] = one;
            Ok(Some((id, view)))
        }
        None => Ok(None),
    }
}

/// `create` (the order's own transaction, `create_order_tx`) under an
/// idempotency key: the key's stored answer when there is one, else the new
/// order and its key row. On the writer thread, so jobs with one key run one
/// after another: a second one (even in the same batch) finds the first one's
/// row. An expired row is replaced.
pub(super) fn keyed_tx(
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

pub(super) fn create_order_tx(
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
                "insert into order_items (created_at, order_id, name, quantity, price_cents, notes, modifiers, allergens, category) values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
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
                allergens,
                item.category
            ])
            .map_err(sql_err)?;
        }
    }
    stations::insert_parts(conn, order_id, &order.items)?;
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
pub(super) fn order_state(
    conn: &Connection,
    number: &str,
) -> Result<Option<OrderState>, StoreError> {
    let sql = format!("select {ORDER_COLUMNS} from orders where number = ?1");
    conn.prepare_cached(&sql)
        .and_then(|mut st| st.query_row([number], order_row).optional())
        .map(|found| found.map(|(_, v)| v.state()))
        .map_err(sql_err)
}

/// Writes what `d` decided on `cur`: the order (only if it is still in `cur`),
/// the worker's count, the history row and the outbox message. None when the
/// compare-and-set missed; nothing was written then.
pub(super) fn persist_transition(
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
    let mut values = state_values(s);
    values.extend([
        cur.order_number.clone().into(),
        cur.status.as_str().to_string().into(),
        cur.version.into(),
    ]);
    let updated = conn
        .prepare_cached(&sql)
        .and_then(|mut st| {
            st.query_row(rusqlite::params_from_iter(values), order_row)
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

pub(super) fn sweep_keys(c: &Connection, now: DateTime<Utc>) -> Result<u64, StoreError> {
    c.prepare_cached("delete from idempotency_keys where expires_at <= ?1")
        .and_then(|mut st| st.execute([ts(now)]))
        .map(|n| n as u64)
        .map_err(sql_err)
}

pub(super) fn status(c: &Connection, number: &str) -> Result<Option<OrderStatus>, StoreError> {
    c.prepare_cached("select status from orders where number = ?1")
        .and_then(|mut st| {
            st.query_row([number], |r| parse_col::<OrderStatus>(r.get(0)?))
                .optional()
        })
        .map_err(sql_err)
}

pub(super) fn history(
    c: &Connection,
    number: &str,
) -> Result<Option<Vec<HistoryEntry>>, StoreError> {
    let id: Option<i64> = c
        .query_row("select id from orders where number = ?1", [number], |r| {
            r.get(0)
        })
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
            Ok(HistoryEntry::status(
                parse_col(r.get(0)?)?,
                parse_ts(&r.get::<_, String>(1)?)?,
                r.get(2)?,
            ))
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(sql_err)?;
    Ok(Some(merge_history(rows, stations::part_history(c, id)?)))
}

pub(super) fn open_orders(c: &Connection) -> Result<Vec<OrderView>, StoreError> {
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
    attach_parts(&mut orders, &ids, stations::parts_of(c, &ids)?);
    Ok(orders)
}

pub(super) fn ticket_times(
    c: &Connection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<TicketTimes>, StoreError> {
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
}

/// `Store::purge_orders`: the oldest `limit` orders created before `before`
/// and what belongs to them, then the freed pages back to the file system.
pub(super) fn purge(c: &Connection, before: &str, limit: u32) -> Result<u64, StoreError> {
    c.execute_batch(
        "create temp table if not exists purge_ids (id integer primary key); delete from temp.purge_ids;",
    )
    .map_err(sql_err)?;
    c.prepare_cached(
        "insert into temp.purge_ids select id from orders where created_at < ?1 order by created_at limit ?2",
    )
    .and_then(|mut st| st.execute(params![before, limit]))
    .map_err(sql_err)?;
    for t in ORDER_CHILD_TABLES {
        c.prepare_cached(&format!(
            "delete from {t} where order_id in (select id from temp.purge_ids)"
        ))
        .and_then(|mut st| st.execute([]))
        .map_err(sql_err)?;
    }
    let n = c
        .prepare_cached("delete from orders where id in (select id from temp.purge_ids)")
        .and_then(|mut st| st.execute([]))
        .map_err(sql_err)?;
    c.prepare_cached("delete from outbox where created_at < ?1")
        .and_then(|mut st| st.execute([before]))
        .map_err(sql_err)?;
    if n > 0 {
        // Only with auto_vacuum = INCREMENTAL (`pool::reclaim_space`); else
        // SQLite keeps the pages and reuses them for new orders. Each step
        // frees one page: stepped to the end.
        let mut st = c
            .prepare_cached("PRAGMA incremental_vacuum")
            .map_err(sql_err)?;
        let mut rows = st.query([]).map_err(sql_err)?;
        while rows.next().map_err(sql_err)?.is_some() {}
    }
    Ok(n as u64)
}
