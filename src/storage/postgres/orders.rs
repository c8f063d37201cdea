//! The orders' rows and reads (columns, items, the whole order), the
//! compare-and-set every status change writes, and the status's encoding.

use super::*;
use tokio_postgres::types::{to_sql_checked, IsNull, Type};

pub(super) const ORDER_COLUMNS: &str = "o.id, o.number, o.customer_name, o.type, o.table_number, o.delivery_address, (o.total_amount * 100)::bigint, o.priority, o.status, o.processed_by, o.created_at, o.updated_at, o.estimated_completion, o.completed_at, o.version, o.notes, o.rush, o.stations_done_at";

pub(super) fn order_row(r: &Row) -> Result<(i32, OrderView), StoreError> {
    let parse = |s: String| StoreError::new(Class::Permanent, s);
    Ok((
        r.try_get(0).map_err(pg_err)?,
        OrderView {
            placed: PlacedOrder {
                order_number: r.try_get(1).map_err(pg_err)?,
                customer_name: r.try_get(2).map_err(pg_err)?,
                order_type: r
                    .try_get::<_, String>(3)
                    .map_err(pg_err)?
                    .parse()
                    .map_err(parse)?,
                table_number: r
                    .try_get::<_, Option<i32>>(4)
                    .map_err(pg_err)?
                    .map(i64::from),
                delivery_address: r.try_get(5).map_err(pg_err)?,
                items: Vec::new(),
                total_amount: Cents(r.try_get(6).map_err(pg_err)?),
                priority: r.try_get::<_, Option<i32>>(7).map_err(pg_err)?.unwrap_or(1),
            },
            status: r
                .try_get::<_, String>(8)
                .map_err(pg_err)?
                .parse()
                .map_err(parse)?,
            processed_by: r.try_get(9).map_err(pg_err)?,
            created_at: r.try_get(10).map_err(pg_err)?,
            updated_at: r.try_get(11).map_err(pg_err)?,
            estimated_completion: r.try_get(12).map_err(pg_err)?,
            completed_at: r.try_get(13).map_err(pg_err)?,
            version: r.try_get(14).map_err(pg_err)?,
            notes: r.try_get(15).map_err(pg_err)?,
            rush: r.try_get(16).map_err(pg_err)?,
            stations_done_at: r.try_get(17).map_err(pg_err)?,
            parts: Vec::new(),
        },
    ))
}

/// The items of the orders `ids`, each with its order's id, in order.
pub(super) async fn items_of(c: &Object, ids: &[i32]) -> Result<Vec<(i32, Item)>, StoreError> {
    // Prepared once per connection: every order read runs it.
    let st = c
        .prepare_cached(
            "select name, quantity, (price * 100)::bigint, notes, modifiers, allergens, order_id, category from order_items where order_id = any($1) order by order_id, id",
        )
        .await
        .map_err(pg_err)?;
    let rows = c.query(&st, &[&ids]).await.map_err(pg_err)?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get(6).map_err(pg_err)?,
                Item {
                    category: r.try_get(7).map_err(pg_err)?,
                    ..item_row(r)?
                },
            ))
        })
        .collect()
}

/// An item from a row whose first columns are name, quantity, price in
/// cents, notes, modifiers, allergens.
pub(super) fn item_row(r: &Row) -> Result<Item, StoreError> {
    item_from_columns(
        r.try_get(0).map_err(pg_err)?,
        i64::from(r.try_get::<_, i32>(1).map_err(pg_err)?),
        Cents(r.try_get(2).map_err(pg_err)?),
        r.try_get(3).map_err(pg_err)?,
        r.try_get(4).map_err(pg_err)?,
        r.try_get(5).map_err(pg_err)?,
    )
}

pub(super) async fn load_order(c: &Object, number: &str) -> Result<Option<OrderView>, StoreError> {
    let st = c
        .prepare_cached(&format!(
            "select {ORDER_COLUMNS} from orders o where o.number = $1"
        ))
        .await
        .map_err(pg_err)?;
    let Some(row) = c.query_opt(&st, &[&number]).await.map_err(pg_err)? else {
        return Ok(None);
    };
    let (id, mut view) = order_row(&row)?;
    view.placed.items = items_of(c, &[id])
        .await?
        .into_iter()
        .map(|(_, i)| i)
        .collect();
    let mut one = [view];
    attach_parts(&mut one, &[id], stations::parts_of(c, &[id]).await?);
    let [view] = one;
    Ok(Some(view))
}

/// What every compare-and-set on `orders` writes, as `$1`..`$6`: status,
/// version, updated_at, processed_by, estimated_completion, completed_at.
/// The caller's own placeholders follow.
pub(super) fn state_params(s: &OrderState) -> [&(dyn ToSql + Sync); 6] {
    [
        &s.status,
        &s.version,
        &s.updated_at,
        &s.processed_by,
        &s.estimated_completion,
        &s.completed_at,
    ]
}

/// A status is stored as its name.
impl ToSql for OrderStatus {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        self.as_str().to_sql(ty, out)
    }

    fn accepts(ty: &Type) -> bool {
        <&str as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}

/// Persists a status change decided in Rust (`domain::transition::decide`),
/// in one statement (one round trip, one commit): update the order only if it
/// is still in the state the decision started from ($8 status, $9 version),
/// count the worker's cooked order, write the history row and the outbox
/// message ($13, the Status Update as built in Rust, with its event id $14).
/// Returns the updated order, or no row when the compare-and-set missed (the
/// order changed meanwhile, or there is no such order). No status rules and no
/// message building here: only what was decided.
pub(super) const TRANSITION_SQL: &str = r#"
with done as (
    update orders o set status = $1, version = $2, updated_at = $3, processed_by = $4,
        estimated_completion = $5, completed_at = $6
    where o.number = $7 and o.status = $8 and o.version = $9
    returning o.id, o.number, o.customer_name, o.type, o.table_number, o.delivery_address,
        (o.total_amount * 100)::bigint, o.priority, o.status, o.processed_by,
        o.created_at, o.updated_at, o.estimated_completion, o.completed_at, o.version, o.notes,
        o.rush, o.stations_done_at
), w as (
    update workers set orders_processed = orders_processed + 1
    where $10 and name = $11 and exists (select 1 from done)
), l as (
    insert into order_status_log (created_at, order_id, status, changed_by, changed_at, notes)
    select $3, done.id, $1, $11, $3, $12 from done
), x as (
    insert into outbox (created_at, exchange, routing_key, payload, priority, message_id, request_id, owner)
    select $3, $15, '', $13, 0, $14, $16, $17 from done
)
select * from done
"#;
