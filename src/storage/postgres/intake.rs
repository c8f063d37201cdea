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
//! thread (`storage/sqlite`). Each request is still answered only after its own
//! order committed.

use super::{pg_err, pool_err};
use crate::domain::error::Class;
use crate::domain::events::{OrderMessage, ORDERS_EXCHANGE};
use crate::domain::ValidOrder;
use crate::storage::{item_detail_columns, order_outbox, to_json, StoreError};
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};

/// Orders per statement at most.
const MAX_BATCH: usize = 64;

struct Job {
    order: ValidOrder,
    request_id: String,
    now: DateTime<Utc>,
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
    ) -> Result<String, StoreError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            order: order.clone(),
            request_id: request_id.to_string(),
            now,
            reply,
        };
        let gone = || StoreError::new(Class::Transient, "order intake stopped");
        self.jobs.send(job).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

async fn run(pool: Pool, owner: String, mut rx: mpsc::Receiver<Job>) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        // One statement per day: the counter is per day (a batch spans two
        // only around midnight, or in tests).
        while !jobs.is_empty() {
            let day = jobs[0].now.date_naive();
            let same = jobs
                .iter()
                .take_while(|j| j.now.date_naive() == day)
                .count();
            let batch: Vec<Job> = jobs.drain(..same).collect();
            store(&pool, &owner, batch).await;
        }
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
    let now = batch.first().map(|j| j.now).ok_or_else(no_number)?;
    let n = batch.len() as i32;
    let mut cols = Columns::default();
    for (idx, job) in batch.iter().enumerate() {
        cols.push(idx as i32 + 1, job, now)?;
    }
    let c = pool.get().await.map_err(pool_err)?;
    let st = c.prepare_cached(CREATE_ORDERS_SQL).await.map_err(pg_err)?;
    let rows = c
        .query(
            &st,
            &[
                &now.date_naive(),
                &now,
                &n,
                &cols.customer,
                &cols.kind,
                &cols.table,
                &cols.address,
                &cols.total,
                &cols.priority,
                &cols.routing_key,
                &cols.payload,
                &cols.prio,
                &cols.request_id,
                &cols.item_order,
                &cols.item_name,
                &cols.item_qty,
                &cols.item_price,
                &ORDERS_EXCHANGE,
                &owner,
                &cols.notes,
                &cols.item_notes,
                &cols.item_modifiers,
                &cols.item_allergens,
            ],
        )
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
}

impl Columns {
    /// Adds order number `idx` of the batch, stored at `now` (the batch's time).
    fn push(&mut self, idx: i32, job: &Job, now: DateTime<Utc>) -> Result<(), StoreError> {
        let o = &job.order;
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
        self.request_id.push(job.request_id.clone());
        self.notes.push(o.notes.clone());
        for item in &o.items {
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
}

/// Order intake, for a batch of orders in one statement (one commit): the
/// daily counter moves by the batch size ($3) under its row lock, each order
/// takes the next number (`ORD_YYYYMMDD_NNN`, see `domain::order::order_number`),
/// and the order, its items, its first history row and its outbox message (the
/// JSON of `OrderMessage` with the number filled in) are written. Order-level
/// arrays ($4-$13, and $20 the notes) have one element per order; item arrays
/// ($14-$17, and $21-$23 the kitchen details) one per item, with the 1-based
/// index of its order. Returns the numbers in batch
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
    insert into order_items (created_at, order_id, name, quantity, price, notes, modifiers, allergens)
    select $2, o.id, t.name, t.quantity, t.price_cents / 100.0, t.notes, t.modifiers, t.allergens
    from unnest($14::int[], $15::text[], $16::int[], $17::bigint[], $21::text[], $22::text[], $23::text[])
        with ordinality as t(order_idx, name, quantity, price_cents, notes, modifiers, allergens, k)
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
        assert_eq!(inserts.len(), 5);
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
