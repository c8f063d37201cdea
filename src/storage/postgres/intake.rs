//! Group commit for order intake on PostgreSQL.
//!
//! Every order takes the next number from the day's row in
//! `daily_order_counters` (the spec wants the sequence managed in the
//! transaction, so it has no gaps). That row lock is held until the commit's
//! WAL flush, so orders stored one transaction each are stored strictly one
//! after another, one flush each. Here one task stores the orders: whatever
//! requests arrived while a batch was being committed go into the next batch,
//! one statement and one flush for all of them. At low rates a batch is a single
//! order and nothing waits; under load the batches grow, like SQLite's writer
//! thread (`storage/sqlite`). Two batches may be in flight: the second waits on
//! the counter row and runs as soon as the first commits (`IN_FLIGHT`). Each
//! request is still answered only after its own order committed.

use super::{pg_err, pool_err};
use crate::domain::error::Class;
use crate::domain::events::{OrderMessage, ORDERS_EXCHANGE};
use crate::domain::{Cents, ValidOrder};
use crate::storage::{
    item_detail_columns, order_outbox, to_json, CreatedOrder, IdempotencyKey, KeyedOutcome,
    StoreError,
};
use chrono::{DateTime, NaiveDate, Utc};
use deadpool_postgres::Pool;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_postgres::types::ToSql;

/// Orders per statement at most.
const MAX_BATCH: usize = 64;

struct Job {
    order: ValidOrder,
    request_id: String,
    now: DateTime<Utc>,
    day: NaiveDate,
    reply: oneshot::Sender<Result<String, StoreError>>,
}

/// The handle `PgStore` keeps; the task ends when it is dropped.
pub struct Intake {
    jobs: mpsc::Sender<Job>,
}

impl Intake {
    pub fn start(pool: Pool, owner: String) -> Intake {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
        tokio::spawn(run(pool, owner, rx));
        Intake { jobs: tx }
    }

    /// Stores `order`; returns its number once committed.
    pub async fn create(
        &self,
        order: &ValidOrder,
        request_id: &str,
        now: DateTime<Utc>,
        day: NaiveDate,
    ) -> Result<String, StoreError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            order: order.clone(),
            request_id: request_id.to_string(),
            now,
            day,
            reply,
        };
        let gone = || StoreError::new(Class::Transient, "order intake stopped");
        self.jobs.send(job).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

/// Batches being stored at once, at most. The next batch is sent while the
/// previous one commits: it waits on the day's counter row and runs the moment
/// that commit ends, instead of one round trip later (on a busy box each round
/// trip is a wake-up of two processes: issue 22, item 1's p99).
const IN_FLIGHT: usize = 2;

async fn run(pool: Pool, owner: String, mut rx: mpsc::Receiver<Job>) {
    let owner: Arc<str> = owner.into();
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        // A slot first, then the batch: whatever arrived while both were busy
        // goes into it.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut jobs = Vec::with_capacity(MAX_BATCH);
        if rx.recv_many(&mut jobs, MAX_BATCH).await == 0 {
            return;
        }
        let (pool, owner) = (pool.clone(), owner.clone());
        tokio::spawn(async move {
            // One statement per day: the counter is per business day (a batch
            // spans two only at the cut-over, or in tests).
            while !jobs.is_empty() {
                let day = jobs[0].day;
                let same = jobs.iter().take_while(|j| j.day == day).count();
                let batch: Vec<Job> = jobs.drain(..same).collect();
                store(&pool, &owner, batch).await;
            }
            drop(slot);
        });
    }
}

/// Stores a batch and answers each request. A batch that fails for a reason
/// other than the database being unavailable is retried one order at a time,
/// so one order the database refuses cannot fail the others.
async fn store(pool: &Pool, owner: &str, batch: Vec<Job>) {
    match insert(pool, owner, &batch).await {
        Ok(numbers) => {
            for (job, n) in batch.into_iter().zip(numbers) {
                let _ = job.reply.send(Ok(n));
            }
        }
        Err(e) if !e.class().is_retryable() && batch.len() > 1 => {
            for job in batch {
                let one = insert(pool, owner, std::slice::from_ref(&job)).await;
                let _ = job
                    .reply
                    .send(one.and_then(|mut n| n.pop().ok_or_else(no_number)));
            }
        }
        Err(e) => {
            for job in batch {
                let _ = job.reply.send(Err(e.clone()));
            }
        }
    }
}

fn no_number() -> StoreError {
    StoreError::new(Class::Permanent, "order intake returned no number")
}

async fn insert(pool: &Pool, owner: &str, batch: &[Job]) -> Result<Vec<String>, StoreError> {
    let (now, day) = batch
        .first()
        .map(|j| (j.now, j.day))
        .ok_or_else(no_number)?;
    let mut cols = Columns::default();
    for (idx, job) in batch.iter().enumerate() {
        cols.push(idx as i32 + 1, &job.order, &job.request_id, now)?;
    }
    let c = pool.get().await.map_err(pool_err)?;
    let st = c.prepare_cached(CREATE_ORDERS_SQL).await.map_err(pg_err)?;
    let n = batch.len() as i32;
    let rows = c
        .query(&st, &cols.params(&day, &now, &n, &owner))
        .await
        .map_err(pg_err)?;
    let numbers = rows
        .iter()
        .map(|r| r.try_get::<_, String>(0).map_err(pg_err))
        .collect::<Result<Vec<_>, _>>()?;
    if numbers.len() != batch.len() {
        return Err(no_number());
    }
    Ok(numbers)
}

/// One order under an idempotency key, in its own transaction (not batched:
/// keyed requests are retries' insurance, not the hot path, and the batch
/// path stays as it was). The key row goes in first: its primary key makes a
/// concurrent request with the same key wait here until this transaction ends,
/// and then find our row (committed) or insert its own (we rolled back). The
/// order goes in with the same statement as the batch path, then the key row
/// gets the order's answer, and all commit together.
pub async fn create_keyed(
    pool: &Pool,
    owner: &str,
    order: &ValidOrder,
    request_id: &str,
    (now, day): (DateTime<Utc>, NaiveDate),
    key: &IdempotencyKey,
) -> Result<KeyedOutcome, StoreError> {
    let mut c = pool.get().await.map_err(pool_err)?;
    // An expired key is no key: remove it (its own statement, committed even if
    // the order below fails; a sweep would remove it anyway).
    c.execute(
        "delete from idempotency_keys where scope = $1 and key = $2 and expires_at <= $3",
        &[&key.scope, &key.key, &now],
    )
    .await
    .map_err(pg_err)?;
    let tx = c.transaction().await.map_err(pg_err)?;
    let claimed = tx
        .execute(
            "insert into idempotency_keys (scope, key, request_hash, created_at, expires_at)
             values ($1, $2, $3, $4, $5) on conflict (scope, key) do nothing",
            &[
                &key.scope,
                &key.key,
                &key.request_hash,
                &now,
                &key.expires_at,
            ],
        )
        .await
        .map_err(pg_err)?;
    if claimed == 0 {
        // Someone else's committed row (the insert waited for its commit).
        let row = tx
            .query_opt(
                "select request_hash, order_number, total_cents, priority, expires_at > $3
                 from idempotency_keys where scope = $1 and key = $2",
                &[&key.scope, &key.key, &now],
            )
            .await
            .map_err(pg_err)?;
        tx.rollback().await.map_err(pg_err)?;
        let Some(row) = row else {
            // Swept between the two statements: the client may simply retry.
            return Err(StoreError::new(
                Class::Transient,
                "idempotency key changed meanwhile",
            ));
        };
        let hash: String = row.try_get(0).map_err(pg_err)?;
        let number: Option<String> = row.try_get(1).map_err(pg_err)?;
        let live: bool = row.try_get(4).map_err(pg_err)?;
        if !live {
            // Expired just now, after our delete: as above.
            return Err(StoreError::new(
                Class::Transient,
                "idempotency key expired meanwhile",
            ));
        }
        if hash != key.request_hash {
            return Ok(KeyedOutcome::Mismatch);
        }
        return Ok(KeyedOutcome::Replayed(CreatedOrder {
            order_number: number.ok_or_else(no_number)?,
            total: Cents(row.try_get(2).map_err(pg_err)?),
            priority: row.try_get(3).map_err(pg_err)?,
        }));
    }
    let mut cols = Columns::default();
    cols.push(1, order, request_id, now)?;
    let st = tx.prepare_cached(CREATE_ORDERS_SQL).await.map_err(pg_err)?;
    let rows = tx
        .query(&st, &cols.params(&day, &now, &1, &owner))
        .await
        .map_err(pg_err)?;
    let number: String = rows
        .first()
        .ok_or_else(no_number)?
        .try_get(0)
        .map_err(pg_err)?;
    tx.execute(
        "update idempotency_keys set order_number = $3, total_cents = $4, priority = $5
         where scope = $1 and key = $2",
        &[
            &key.scope,
            &key.key,
            &number,
            &order.total.0,
            &order.priority,
        ],
    )
    .await
    .map_err(pg_err)?;
    tx.commit().await.map_err(pg_err)?;
    Ok(KeyedOutcome::Created(CreatedOrder {
        order_number: number,
        total: order.total,
        priority: order.priority,
    }))
}

/// The statement's array parameters, one element per order or per item.
#[derive(Default)]
struct Columns {
    customer: Vec<String>,
    kind: Vec<&'static str>,
    table: Vec<Option<i32>>,
    address: Vec<Option<String>>,
    total: Vec<i64>,
    priority: Vec<i32>,
    routing_key: Vec<String>,
    payload: Vec<String>,
    prio: Vec<i16>,
    request_id: Vec<String>,
    item_order: Vec<i32>,
    item_name: Vec<String>,
    item_qty: Vec<i32>,
    item_price: Vec<i64>,
    notes: Vec<Option<String>>,
    item_notes: Vec<Option<String>>,
    item_modifiers: Vec<Option<String>>,
    item_allergens: Vec<Option<String>>,
    item_category: Vec<Option<String>>,
    /// One per part (issue 24): its order's index, its item's 0-based place, the station.
    part_order: Vec<i32>,
    part_item: Vec<i32>,
    part_station: Vec<String>,
}

impl Columns {
    /// Adds order number `idx` of the batch, stored at `now` (the batch's time).
    fn push(
        &mut self,
        idx: i32,
        o: &ValidOrder,
        request_id: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        // Built with an empty number; the statement fills it in.
        let msg = OrderMessage::new(String::new(), o, now);
        let (_, key, prio) = order_outbox(&msg);
        self.customer.push(o.customer_name.clone());
        self.kind.push(o.order_type.as_str());
        self.table.push(o.table_number.map(|t| t as i32));
        self.address.push(o.delivery_address.clone());
        self.total.push(o.total.0);
        self.priority.push(o.priority);
        self.routing_key.push(key);
        self.payload.push(to_json(&msg)?);
        self.prio.push(i16::from(prio));
        self.request_id.push(request_id.to_string());
        self.notes.push(o.notes.clone());
        for (k, item) in o.items.iter().enumerate() {
            for station in &item.stations {
                self.part_order.push(idx);
                self.part_item.push(k as i32);
                self.part_station.push(station.clone());
            }
            self.item_category.push(item.category.clone());
            let (notes, modifiers, allergens) = item_detail_columns(item);
            self.item_notes.push(notes);
            self.item_modifiers.push(modifiers);
            self.item_allergens.push(allergens);
            self.item_order.push(idx);
            self.item_name.push(item.name.clone());
            self.item_qty.push(item.quantity as i32);
            self.item_price.push(item.price.0);
        }
        Ok(())
    }

    /// CREATE_ORDERS_SQL's parameters, in order: the day, the time, the
    /// number of orders, these columns, the exchange and the outbox owner.
    fn params<'a>(
        &'a self,
        day: &'a NaiveDate,
        now: &'a DateTime<Utc>,
        n: &'a i32,
        owner: &'a &str,
    ) -> [&'a (dyn ToSql + Sync); 27] {
        [
            day,
            now,
            n,
            &self.customer,
            &self.kind,
            &self.table,
            &self.address,
            &self.total,
            &self.priority,
            &self.routing_key,
            &self.payload,
            &self.prio,
            &self.request_id,
            &self.item_order,
            &self.item_name,
            &self.item_qty,
            &self.item_price,
            &ORDERS_EXCHANGE,
            owner,
            &self.notes,
            &self.item_notes,
            &self.item_modifiers,
            &self.item_allergens,
            &self.item_category,
            &self.part_order,
            &self.part_item,
            &self.part_station,
        ]
    }
}

/// Order intake, for a batch of orders in one statement (one commit): the
/// daily counter moves by the batch size ($3) under its row lock, each order
/// takes the next number (`ORD_YYYYMMDD_NNN`, see `domain::order::order_number`),
/// and the order, its items, its first history row and its outbox message (the
/// JSON of `OrderMessage` with the number filled in) are written. Order-level
/// arrays ($4-$13, and $20 the notes) have one element per order; item arrays
/// ($14-$17, $21-$23 the kitchen details and $24 the category) one per item,
/// with the 1-based index of its order; part arrays ($25-$27, issue 24) one per
/// part: its order's index, its item's 0-based place, the station. Returns the numbers in batch
/// order. `bench/order_tx.sql` is the one-order case, for pgbench.
const CREATE_ORDERS_SQL: &str = r#"
with c as (
    insert into daily_order_counters (date, last) values ($1::date, $3::int)
    on conflict (date) do update set last = daily_order_counters.last + $3::int
    returning last
), n as (
    select t.*,
        'ORD_' || to_char($1::date, 'YYYYMMDD') || '_' ||
        case when c.last - $3::int + t.idx < 1000
             then lpad((c.last - $3::int + t.idx)::text, 3, '0')
             else (c.last - $3::int + t.idx)::text end as number
    from c, unnest($4::text[], $5::text[], $6::int[], $7::text[], $8::bigint[], $9::int[],
                   $10::text[], $11::text[], $12::smallint[], $13::text[], $20::text[])
        with ordinality as t(customer_name, type, table_number, delivery_address, total_cents,
                             priority, routing_key, payload, prio, request_id, notes, idx)
), o as (
    insert into orders (created_at, updated_at, number, customer_name, type, table_number,
                        delivery_address, total_amount, priority, status, version, notes)
    select $2, $2, number, customer_name, type, table_number, delivery_address,
           total_cents / 100.0, priority, 'received', 1, notes
    from n order by idx
    returning id, number
), i as (
    insert into order_items (created_at, order_id, name, quantity, price, notes, modifiers, allergens, category)
    select $2, o.id, t.name, t.quantity, t.price_cents / 100.0, t.notes, t.modifiers, t.allergens, t.category
    from unnest($14::int[], $15::text[], $16::int[], $17::bigint[], $21::text[], $22::text[], $23::text[], $24::text[])
        with ordinality as t(order_idx, name, quantity, price_cents, notes, modifiers, allergens, category, k)
    join n on n.idx = t.order_idx
    join o on o.number = n.number
    order by t.k
), p as (
    insert into order_item_stations (order_id, item_index, station)
    select o.id, t.item_index, t.station
    from unnest($25::int[], $26::int[], $27::text[]) with ordinality as t(order_idx, item_index, station, k)
    join n on n.idx = t.order_idx
    join o on o.number = n.number
    order by t.k
), l as (
    insert into order_status_log (created_at, order_id, status, changed_by, changed_at)
    select $2, o.id, 'received', 'order-service', $2 from o
), x as (
    insert into outbox (created_at, exchange, routing_key, payload, priority, message_id, request_id, owner)
    select $2, $18, n.routing_key, jsonb_set(n.payload::jsonb, '{order_number}', to_jsonb(n.number))::text,
           n.prio, n.number, n.request_id, $19
    from n order by n.idx
)
select number from n order by idx
"#;

#[cfg(test)]
mod tests {
    /// `bench/order_tx.sql` (pgbench's replay of intake) writes the same
    /// columns as the statement the daemon runs.
    #[test]
    fn the_bench_script_writes_what_intake_writes() {
        let script = include_str!("../../../bench/order_tx.sql");
        let inserts: Vec<&str> = super::CREATE_ORDERS_SQL
            .split("insert into ")
            .skip(1)
            .map(|s| &s[..s.find(')').map_or(s.len(), |i| i + 1)])
            .collect();
        assert_eq!(inserts.len(), 6);
        let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        let script = squash(script);
        for cols in inserts {
            assert!(
                script.contains(&squash(&format!("insert into {cols}"))),
                "bench/order_tx.sql lacks: insert into {cols}"
            );
        }
    }
}
