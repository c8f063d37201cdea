//! PostgreSQL's half of stations (issue 24, migration 006): parts, their
//! history, the screens' tickets and the report's samples. The same rows as
//! `sqlite/stations.rs`.

use super::{items_of, order_row, pg_err, state_params, ORDER_COLUMNS};
use crate::domain::error::Class;
use crate::domain::stations::{Part, Ticket, TicketDecision};
use crate::storage::{
    attach_items, attach_parts, name_items, sort_for_screens, HistoryEntry, OrderView,
    StationChange, StationTimes, StoreError,
};
use chrono::{DateTime, Utc};
use deadpool_postgres::Object;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

fn parse<T: std::str::FromStr<Err = String>>(s: String) -> Result<T, StoreError> {
    s.parse().map_err(|e| StoreError::new(Class::Permanent, e))
}

fn part_row(r: &Row) -> Result<(i32, Part), StoreError> {
    Ok((
        r.try_get(0).map_err(pg_err)?,
        Part {
            item_index: r.try_get(1).map_err(pg_err)?,
            station: r.try_get(2).map_err(pg_err)?,
            state: parse(r.try_get(3).map_err(pg_err)?)?,
            started_at: r.try_get(4).map_err(pg_err)?,
            started_by: r.try_get(5).map_err(pg_err)?,
            bumped_at: r.try_get(6).map_err(pg_err)?,
            bumped_by: r.try_get(7).map_err(pg_err)?,
        },
    ))
}

/// The parts of the orders `ids`, each with its order's id, by item then station order.
pub(super) async fn parts_of(c: &Object, ids: &[i32]) -> Result<Vec<(i32, Part)>, StoreError> {
    let st = c
        .prepare_cached(
            "select order_id, item_index, station, state, started_at, started_by, bumped_at, bumped_by
             from order_item_stations where order_id = any($1) order by order_id, item_index, ctid",
        )
        .await
        .map_err(pg_err)?;
    c.query(&st, &[&ids])
        .await
        .map_err(pg_err)?
        .iter()
        .map(part_row)
        .collect()
}

/// See `Store::persist_ticket`: one transaction, committed synchronously.
pub(super) async fn persist_ticket(
    c: &mut Object,
    owner: &str,
    ch: &StationChange,
    cur: &Ticket,
    d: &TicketDecision,
) -> Result<bool, StoreError> {
    let tx = c.transaction().await.map_err(pg_err)?;
    let s = &d.ticket.state;
    let own: [&(dyn ToSql + Sync); 4] = [
        &d.ticket.rush,
        &d.ticket.stations_done_at,
        &cur.state.order_number,
        &cur.state.version,
    ];
    let row = tx
        .query_opt(
            "update orders set status = $1, version = $2, updated_at = $3, processed_by = $4,
                estimated_completion = $5, completed_at = $6, rush = $7, stations_done_at = $8
             where number = $9 and version = $10 returning id",
            &[&state_params(s)[..], &own].concat(),
        )
        .await
        .map_err(pg_err)?;
    let Some(row) = row else {
        tx.rollback().await.map_err(pg_err)?;
        return Ok(false);
    };
    let id: i32 = row.try_get(0).map_err(pg_err)?;
    for p in &d.changed_parts {
        tx.execute(
            "update order_item_stations set state = $1, started_at = $2, started_by = $3,
                bumped_at = $4, bumped_by = $5
             where order_id = $6 and item_index = $7 and station = $8",
            &[
                &p.state.as_str(),
                &p.started_at,
                &p.started_by,
                &p.bumped_at,
                &p.bumped_by,
                &id,
                &p.item_index,
                &p.station,
            ],
        )
        .await
        .map_err(pg_err)?;
    }
    for u in d.status_updates() {
        tx.execute(
            "insert into order_status_log (created_at, order_id, status, changed_by, changed_at) values ($1, $2, $3, $4, $1)",
            &[&u.timestamp, &id, &u.new_status.as_str(), &u.changed_by],
        )
        .await
        .map_err(pg_err)?;
    }
    for u in d.station_updates() {
        let rush = u.station.is_none().then_some(u.rush);
        tx.execute(
            "insert into order_item_events (order_id, item_index, station, state, rush, order_status, changed_by, changed_at)
             values ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &id,
                &u.item_index,
                &u.station,
                &u.new_state.map(|s| s.as_str()),
                &rush,
                &u.order_status.as_str(),
                &u.changed_by,
                &u.timestamp,
            ],
        )
        .await
        .map_err(pg_err)?;
    }
    for m in &d.messages {
        let (exchange, key, message_id, payload) = m
            .outbox_row()
            .map_err(|e| StoreError::new(Class::Permanent, format!("encoding message: {e}")))?;
        tx.execute(
            "insert into outbox (created_at, exchange, routing_key, payload, priority, message_id, request_id, owner)
             values ($1, $2, $3, $4, 0, $5, $6, $7)",
            &[&ch.now, &exchange, &key, &payload, &message_id, &ch.request_id, &owner],
        )
        .await
        .map_err(pg_err)?;
    }
    tx.commit().await.map_err(pg_err)?;
    Ok(true)
}

/// The part and rush entries of an order's history, item names filled in.
pub(super) async fn part_history(
    c: &Object,
    order_id: i32,
) -> Result<Vec<HistoryEntry>, StoreError> {
    let rows = c
        .query(
            "select order_status, changed_at, changed_by, station, item_index, state, rush
             from order_item_events where order_id = $1 order by id",
            &[&order_id],
        )
        .await
        .map_err(pg_err)?;
    let mut entries = rows
        .iter()
        .map(|r| {
            Ok(HistoryEntry {
                status: parse(r.try_get(0).map_err(pg_err)?)?,
                timestamp: r.try_get(1).map_err(pg_err)?,
                changed_by: r.try_get(2).map_err(pg_err)?,
                station: r.try_get(3).map_err(pg_err)?,
                item_index: r.try_get(4).map_err(pg_err)?,
                item_state: r
                    .try_get::<_, Option<String>>(5)
                    .map_err(pg_err)?
                    .map(parse)
                    .transpose()?,
                rush: r.try_get(6).map_err(pg_err)?,
                item: None,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let names: Vec<String> = items_of(c, &[order_id])
        .await?
        .into_iter()
        .map(|(_, i)| i.name)
        .collect();
    name_items(&mut entries, &names);
    Ok(entries)
}

/// See `Store::tickets`.
pub(super) async fn tickets(
    c: &Object,
    station: Option<&str>,
) -> Result<Vec<OrderView>, StoreError> {
    let rows = match station {
        Some(s) => {
            let sql = format!(
                "select {ORDER_COLUMNS} from orders o where o.status in ('received', 'cooking') and o.id in
                    (select order_id from order_item_stations where station = $1 and state <> 'done')"
            );
            c.query(&sql, &[&s]).await
        }
        None => {
            let sql = format!(
                "select {ORDER_COLUMNS} from orders o where o.status in ('received', 'cooking', 'ready') and
                    exists (select 1 from order_item_stations p where p.order_id = o.id)"
            );
            c.query(&sql, &[]).await
        }
    }
    .map_err(pg_err)?;
    let (ids, mut orders): (Vec<i32>, Vec<OrderView>) =
        rows.iter().map(order_row).collect::<Result<_, _>>()?;
    attach_items(&mut orders, &ids, items_of(c, &ids).await?);
    attach_parts(&mut orders, &ids, parts_of(c, &ids).await?);
    sort_for_screens(&mut orders);
    Ok(orders)
}

/// See `Store::station_times`.
pub(super) async fn station_times(
    c: &Object,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<StationTimes, StoreError> {
    let rows = c
        .query(
            "select p.station, o.created_at, p.bumped_at from order_item_stations p join orders o on o.id = p.order_id
             where o.created_at >= $1 and o.created_at < $2 and p.state = 'done' and p.bumped_at is not null
             order by o.id",
            &[&from, &to],
        )
        .await
        .map_err(pg_err)?;
    let parts = rows
        .iter()
        .map(|r| {
            Ok((
                r.try_get(0).map_err(pg_err)?,
                r.try_get(1).map_err(pg_err)?,
                r.try_get(2).map_err(pg_err)?,
            ))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let rows = c
        .query(
            "select o.stations_done_at,
                (select min(l.changed_at) from order_status_log l where l.order_id = o.id and l.status = 'ready'
                    and l.changed_at >= o.stations_done_at)
             from orders o where o.created_at >= $1 and o.created_at < $2 and o.stations_done_at is not null
             order by o.id",
            &[&from, &to],
        )
        .await
        .map_err(pg_err)?;
    let mut expo = Vec::new();
    for r in &rows {
        let done: DateTime<Utc> = r.try_get(0).map_err(pg_err)?;
        if let Some(ready) = r.try_get::<_, Option<DateTime<Utc>>>(1).map_err(pg_err)? {
            expo.push((done, ready));
        }
    }
    Ok(StationTimes { parts, expo })
}
