//! SQLite's half of stations (issue 24, migration 006): parts, their history,
//! the screens' tickets and the report's samples. The same rows as
//! `postgres/stations.rs`.

use super::orders::{items_of, load_order, order_row, ORDER_COLUMNS};
use super::outbox::insert_outbox;
use super::{opt_ts, parse_col, parse_ts, sql_err, state_values, ts};
use crate::domain::error::Class;
use crate::domain::stations::{Part, StationUpdate, Ticket, TicketDecision};
use crate::storage::{
    attach_items, attach_parts, name_items, sort_for_screens, ticket_of, HistoryEntry, OrderView,
    StationChange, StationTimes, StoreError,
};
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

/// The parts of the orders `ids`, each with its order's id, by item then station order.
pub(super) fn parts_of(conn: &Connection, ids: &[i64]) -> Result<Vec<(i64, Part)>, StoreError> {
    let ids = serde_json::to_string(ids)
        .map_err(|e| StoreError::caused_by(Class::Permanent, "encoding order ids", e))?;
    let mut st = conn
        .prepare_cached(
            "select order_id, item_index, station, state, started_at, started_by, bumped_at, bumped_by
             from order_item_stations where order_id in (select value from json_each(?1))
             order by order_id, item_index, rowid",
        )
        .map_err(sql_err)?;
    st.query_map([ids], |r| {
        Ok((
            r.get(0)?,
            Part {
                item_index: r.get(1)?,
                station: r.get(2)?,
                state: parse_col(r.get(3)?)?,
                started_at: opt_ts(r.get(4)?)?,
                started_by: r.get(5)?,
                bumped_at: opt_ts(r.get(6)?)?,
                bumped_by: r.get(7)?,
            },
        ))
    })
    .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
    .map_err(sql_err)
}

/// Writes the parts of a new order (its items' stations, from routing).
pub(super) fn insert_parts(
    conn: &Connection,
    order_id: i64,
    items: &[crate::domain::Item],
) -> Result<(), StoreError> {
    if items.iter().all(|i| i.stations.is_empty()) {
        return Ok(());
    }
    let mut st = conn
        .prepare_cached(
            "insert into order_item_stations (order_id, item_index, station) values (?1, ?2, ?3)",
        )
        .map_err(sql_err)?;
    for (i, item) in items.iter().enumerate() {
        for s in &item.stations {
            st.execute(params![order_id, i as i64, s])
                .map_err(sql_err)?;
        }
    }
    Ok(())
}

pub(super) fn ticket(conn: &Connection, number: &str) -> Result<Option<Ticket>, StoreError> {
    Ok(load_order(conn, number)?.map(|(_, o)| ticket_of(&o)))
}

/// See `Store::persist_ticket`. On the writer thread, in its transaction.
pub(super) fn persist_ticket(
    conn: &Connection,
    owner: &str,
    c: &StationChange,
    cur: &Ticket,
    d: &TicketDecision,
) -> Result<bool, StoreError> {
    let s = &d.ticket.state;
    let id: Option<i64> = conn
        .prepare_cached(
            "update orders set status = ?1, version = ?2, updated_at = ?3, processed_by = ?4,
                estimated_completion = ?5, completed_at = ?6, rush = ?7, stations_done_at = ?8
             where number = ?9 and version = ?10 returning id",
        )
        .and_then(|mut st| {
            let mut values = state_values(s);
            values.extend([
                d.ticket.rush.into(),
                d.ticket.stations_done_at.map(ts).into(),
                cur.state.order_number.clone().into(),
                cur.state.version.into(),
            ]);
            st.query_row(rusqlite::params_from_iter(values), |r| r.get(0))
                .optional()
        })
        .map_err(sql_err)?;
    let Some(id) = id else { return Ok(false) };
    {
        let mut st = conn
            .prepare_cached(
                "update order_item_stations set state = ?1, started_at = ?2, started_by = ?3,
                    bumped_at = ?4, bumped_by = ?5
                 where order_id = ?6 and item_index = ?7 and station = ?8",
            )
            .map_err(sql_err)?;
        for p in &d.changed_parts {
            st.execute(params![
                p.state.as_str(),
                p.started_at.map(ts),
                p.started_by,
                p.bumped_at.map(ts),
                p.bumped_by,
                id,
                p.item_index,
                p.station
            ])
            .map_err(sql_err)?;
        }
    }
    for u in d.status_updates() {
        conn.prepare_cached(
            "insert into order_status_log (created_at, order_id, status, changed_by, changed_at) values (?1, ?2, ?3, ?4, ?1)",
        )
        .and_then(|mut st| st.execute(params![ts(u.timestamp), id, u.new_status.as_str(), u.changed_by]))
        .map_err(sql_err)?;
    }
    for u in d.station_updates() {
        insert_event(conn, id, u)?;
    }
    for m in &d.messages {
        let (exchange, key, message_id, payload) = m
            .outbox_row()
            .map_err(|e| StoreError::new(Class::Permanent, format!("encoding message: {e}")))?;
        insert_outbox(
            conn,
            owner,
            c.now,
            (exchange, &key, 0),
            &payload,
            &message_id,
            &c.request_id,
        )
        .map_err(sql_err)?;
    }
    Ok(true)
}

fn insert_event(conn: &Connection, order_id: i64, u: &StationUpdate) -> Result<(), StoreError> {
    let rush = u.station.is_none().then_some(u.rush);
    conn.prepare_cached(
        "insert into order_item_events (order_id, item_index, station, state, rush, order_status, changed_by, changed_at)
         values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut st| {
        st.execute(params![
            order_id,
            u.item_index,
            u.station,
            u.new_state.map(|s| s.as_str()),
            rush,
            u.order_status.as_str(),
            u.changed_by,
            ts(u.timestamp)
        ])
    })
    .map_err(sql_err)?;
    Ok(())
}

/// The part and rush entries of an order's history, item names filled in.
pub(super) fn part_history(
    conn: &Connection,
    order_id: i64,
) -> Result<Vec<HistoryEntry>, StoreError> {
    let mut st = conn
        .prepare_cached(
            "select order_status, changed_at, changed_by, station, item_index, state, rush
             from order_item_events where order_id = ?1 order by id",
        )
        .map_err(sql_err)?;
    let mut entries = st
        .query_map([order_id], |r| {
            Ok(HistoryEntry {
                status: parse_col(r.get(0)?)?,
                timestamp: parse_ts(&r.get::<_, String>(1)?)?,
                changed_by: r.get(2)?,
                station: r.get(3)?,
                item_index: r.get(4)?,
                item_state: r.get::<_, Option<String>>(5)?.map(parse_col).transpose()?,
                rush: r.get(6)?,
                item: None,
            })
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(sql_err)?;
    let names: Vec<String> = items_of(conn, &[order_id])?
        .into_iter()
        .map(|(_, i)| i.name)
        .collect();
    name_items(&mut entries, &names);
    Ok(entries)
}

/// See `Store::tickets`.
pub(super) fn tickets(
    conn: &Connection,
    station: Option<&str>,
) -> Result<Vec<OrderView>, StoreError> {
    let sql = match station {
        Some(_) => format!(
            "select {ORDER_COLUMNS} from orders where status in ('received', 'cooking') and id in
                (select order_id from order_item_stations where station = ?1 and state <> 'done')"
        ),
        None => format!(
            "select {ORDER_COLUMNS} from orders where status in ('received', 'cooking', 'ready') and
                exists (select 1 from order_item_stations p where p.order_id = orders.id) and ?1 is null"
        ),
    };
    let mut st = conn.prepare_cached(&sql).map_err(sql_err)?;
    let (ids, mut orders): (Vec<i64>, Vec<OrderView>) = st
        .query_map([station], order_row)
        .and_then(|rows| rows.collect::<rusqlite::Result<_>>())
        .map_err(sql_err)?;
    attach_items(&mut orders, &ids, items_of(conn, &ids)?);
    attach_parts(&mut orders, &ids, parts_of(conn, &ids)?);
    sort_for_screens(&mut orders);
    Ok(orders)
}

/// See `Store::station_times`.
pub(super) fn station_times(
    conn: &Connection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<StationTimes, StoreError> {
    let mut st = conn
        .prepare_cached(
            "select p.station, o.created_at, p.bumped_at from order_item_stations p join orders o on o.id = p.order_id
             where o.created_at >= ?1 and o.created_at < ?2 and p.state = 'done' and p.bumped_at is not null
             order by o.id",
        )
        .map_err(sql_err)?;
    let parts = st
        .query_map(params![ts(from), ts(to)], |r| {
            Ok((
                r.get::<_, String>(0)?,
                parse_ts(&r.get::<_, String>(1)?)?,
                parse_ts(&r.get::<_, String>(2)?)?,
            ))
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(sql_err)?;
    let mut st = conn
        .prepare_cached(
            "select o.stations_done_at,
                (select min(l.changed_at) from order_status_log l where l.order_id = o.id and l.status = 'ready'
                    and l.changed_at >= o.stations_done_at)
             from orders o where o.created_at >= ?1 and o.created_at < ?2 and o.stations_done_at is not null
             order by o.id",
        )
        .map_err(sql_err)?;
    let expo = st
        .query_map(params![ts(from), ts(to)], |r| {
            Ok((parse_ts(&r.get::<_, String>(0)?)?, opt_ts(r.get(1)?)?))
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(sql_err)?
        .into_iter()
        .filter_map(|(done, ready)| ready.map(|r| (done, r)))
        .collect();
    Ok(StationTimes { parts, expo })
}
