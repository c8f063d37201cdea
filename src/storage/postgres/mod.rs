//! PostgreSQL backend: tokio-postgres behind a deadpool pool (the pool replaces
//! dead connections, so a restarted server is picked up again on its own).
//!
//! The files, by concern: `pool` (the connection settings, the pools and
//! migrations), `monitor` (the fence: which node is the primary), `error` (a
//! PostgreSQL error's class), `intake` (order intake, batched), the SQL of
//! `orders`, `stations` and `workers` (with the worker name's lock session),
//! `tokens`, `tls` and `backup`. This file holds the store, its count of
//! deferred commits, and the `Store` implementation with the outbox's
//! statements.

pub(crate) mod backup;
mod error;
mod intake;
mod monitor;
mod orders;
mod pool;
mod stations;
mod tls;
mod tokens;
mod workers;

use crate::domain::error::Class;
use crate::domain::events::NOTIFICATIONS_EXCHANGE;
use crate::process::config::{ClusterConfig, DatabaseConfig};
use crate::storage::*;
use deadpool_postgres::GenericClient;
use deadpool_postgres::{Object, Pool};
use error::{pg_err, pool_err};
use intake::Intake;
use monitor::Monitor;
use orders::{items_of, load_order, order_row, state_params, ORDER_COLUMNS, TRANSITION_SQL};
use pool::build_pool;
pub(crate) use pool::Connector;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use workers::{hold_lease, worker_row, LeaseSession, WORKER_COLUMNS};

/// This process's deferred commits (`Durability::Deferred`), counted so the
/// relay knows whether what it claimed may not be flushed yet.
#[derive(Default)]
struct DeferredCommits {
    started: AtomicU64,
    done: AtomicU64,
    /// Done before a synchronous commit (the relay's flush, a durable
    /// change): on disk.
    flushed: AtomicU64,
}

impl DeferredCommits {
    /// Counts a deferred commit as started until the guard drops, whatever
    /// happens meanwhile: a call that fails must not leave it "started" for
    /// ever, or every later claim would pay a flush of its own.
    fn begin(&self) -> DeferredCommit<'_> {
        self.started.fetch_add(1, Ordering::SeqCst);
        DeferredCommit(self)
    }

    /// Whether a deferred commit may not be on disk yet.
    fn unflushed(&self) -> bool {
        self.started.load(Ordering::SeqCst) > self.flushed.load(Ordering::SeqCst)
    }
}

struct DeferredCommit<'a>(&'a DeferredCommits);

impl Drop for DeferredCommit<'_> {
    fn drop(&mut self) {
        self.0.done.fetch_add(1, Ordering::SeqCst);
    }
}

pub struct PgStore {
    pool: Pool,
    /// Connections with `synchronous_commit = off`, whose commits do not wait
    /// for a WAL flush: the outbox relay's bookkeeping (leases, deleting
    /// published rows; losing such a commit in a crash only means a message is
    /// published again, which consumers already tolerate) and deferred status
    /// changes (`Durability::Deferred`; the relay flushes them before it
    /// publishes their messages, see `lease_outbox`).
    lazy_pool: Pool,
    deferred: DeferredCommits,
    /// Order intake, batched (group commit): see `intake`.
    intake: Intake,
    /// For the kitchen workers' liveness-lock sessions (`worker_lease`).
    lease: Connector,
    owner: String,
}

impl PgStore {
    pub async fn connect(
        cfg: &DatabaseConfig,
        cluster: &ClusterConfig,
        owner: String,
    ) -> Result<Self, StoreError> {
        let mut lease = Connector::new(cfg)?;
        lease.monitor = Monitor::from_config(cluster)?;
        if let Some(m) = &lease.monitor {
            Monitor::watch(Arc::downgrade(m));
        }
        let pool = build_pool(&lease, cfg.pool_size)?;
        let mut lazy = lease.clone();
        lazy.pg.options("-c synchronous_commit=off");
        let lazy_pool = build_pool(&lazy, 4)?;
        let store = PgStore {
            intake: Intake::start(pool.clone(), owner.clone()),
            pool,
            lazy_pool,
            deferred: Default::default(),
            lease,
            owner,
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn client(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(pool_err)
    }

    async fn lazy_client(&self) -> Result<Object, StoreError> {
        self.lazy_pool.get().await.map_err(pool_err)
    }
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let c = self.client().await?;
        c.simple_query("select 1").await.map_err(pg_err)?;
        Ok(())
    }

    async fn insert_order(&self, new: NewOrder<'_>) -> Result<CreatedOrder, StoreError> {
        let (order, request_id) = (new.order, new.request_id);
        let number = self
            .intake
            .create(order, request_id, new.now, new.day)
            .await?;
        Ok(CreatedOrder {
            order_number: number,
            total: order.total,
            priority: order.priority,
        })
    }

    /// Not batched: see `intake::create_keyed`.
    async fn insert_order_keyed(
        &self,
        new: NewOrder<'_>,
        key: &IdempotencyKey,
    ) -> Result<KeyedOutcome, StoreError> {
        let (order, request_id) = (new.order, new.request_id);
        intake::create_keyed(
            &self.pool,
            &self.owner,
            order,
            request_id,
            (new.now, new.day),
            key,
        )
        .await
    }

    async fn sweep_idempotency_keys(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let c = self.client().await?;
        c.execute(
            "delete from idempotency_keys where expires_at <= $1",
            &[&now],
        )
        .await
        .map_err(pg_err)
    }

    /// One statement, one commit: see TRANSITION_SQL.
    async fn persist_transition(
        &self,
        step: TransitionStep<'_>,
    ) -> Result<Option<OrderView>, StoreError> {
        let (t, cur, d) = (step.asked, step.cur, step.decided);
        let deferred = t.durability == Durability::Deferred;
        // A synchronous commit flushes the WAL up to itself, so every deferred
        // commit done before it began: the relay need not flush those again.
        let done_before = self.deferred.done.load(Ordering::SeqCst);
        let pending = deferred.then(|| self.deferred.begin());
        let c = if deferred {
            self.lazy_client().await?
        } else {
            self.client().await?
        };
        let st = c.prepare_cached(TRANSITION_SQL).await.map_err(pg_err)?;
        let own: [&(dyn ToSql + Sync); 11] = [
            &cur.order_number,
            &cur.status,
            &cur.version,
            &d.finishes_cooking(),
            &d.update.changed_by,
            &t.notes,
            &to_json(&d.update)?,
            &d.update.event_id(),
            &NOTIFICATIONS_EXCHANGE,
            &t.request_id,
            &self.owner,
        ];
        let row = c
            .query_opt(&st, &[&state_params(&d.state)[..], &own].concat())
            .await;
        if deferred {
            drop(pending);
        } else if matches!(row, Ok(Some(_))) {
            // (It wrote a row: a commit that wrote nothing waits for no flush.)
            self.deferred
                .flushed
                .fetch_max(done_before, Ordering::SeqCst);
        }
        row.map_err(pg_err)?
            .map(|r| order_row(&r).map(|(_, o)| o))
            .transpose()
    }

    async fn order_state(&self, order_number: &str) -> Result<Option<OrderState>, StoreError> {
        let c = self.client().await?;
        let st = c
            .prepare_cached(&format!(
                "select {ORDER_COLUMNS} from orders o where o.number = $1"
            ))
            .await
            .map_err(pg_err)?;
        match c.query_opt(&st, &[&order_number]).await.map_err(pg_err)? {
            Some(row) => Ok(Some(order_row(&row)?.1.state())),
            None => Ok(None),
        }
    }

    async fn order(&self, order_number: &str) -> Result<Option<OrderView>, StoreError> {
        let c = self.client().await?;
        load_order(&c, order_number).await
    }

    async fn ticket(&self, order_number: &str) -> Result<Option<Ticket>, StoreError> {
        let c = self.client().await?;
        Ok(load_order(&c, order_number).await?.as_ref().map(ticket_of))
    }

    async fn persist_ticket(&self, step: TicketStep<'_>) -> Result<bool, StoreError> {
        let mut conn = self.client().await?;
        let (c, cur, d) = (step.asked, step.cur, step.decided);
        stations::persist_ticket(&mut conn, &self.owner, c, cur, d).await
    }

    async fn tickets(&self, station: Option<&str>) -> Result<Vec<OrderView>, StoreError> {
        let c = self.client().await?;
        stations::tickets(&c, station).await
    }

    async fn station_times(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<StationTimes, StoreError> {
        let c = self.client().await?;
        stations::station_times(&c, from, to).await
    }

    async fn status(&self, order_number: &str) -> Result<Option<OrderStatus>, StoreError> {
        let c = self.client().await?;
        let st = c
            .prepare_cached("select status from orders where number = $1")
            .await
            .map_err(pg_err)?;
        let Some(row) = c.query_opt(&st, &[&order_number]).await.map_err(pg_err)? else {
            return Ok(None);
        };
        let status: String = row.try_get(0).map_err(pg_err)?;
        status
            .parse()
            .map(Some)
            .map_err(|e: String| StoreError::new(Class::Permanent, e))
    }

    async fn history(&self, order_number: &str) -> Result<Option<Vec<HistoryEntry>>, StoreError> {
        let c = self.client().await?;
        let Some(row) = c
            .query_opt("select id from orders where number = $1", &[&order_number])
            .await
            .map_err(pg_err)?
        else {
            return Ok(None);
        };
        let id: i32 = row.try_get(0).map_err(pg_err)?;
        let rows = c
            .query(
                "select status, coalesce(changed_at, created_at), coalesce(changed_by, '') from order_status_log where order_id = $1 order by id",
                &[&id],
            )
            .await
            .map_err(pg_err)?;
        let status = rows
            .iter()
            .map(|r| {
                Ok(HistoryEntry::status(
                    r.try_get::<_, String>(0)
                        .map_err(pg_err)?
                        .parse()
                        .map_err(|e| StoreError::new(Class::Permanent, e))?,
                    r.try_get(1).map_err(pg_err)?,
                    r.try_get(2).map_err(pg_err)?,
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Some(merge_history(
            status,
            stations::part_history(&c, id).await?,
        )))
    }

    async fn open_orders(&self) -> Result<Vec<OrderView>, StoreError> {
        let c = self.client().await?;
        let sql = format!(
            "select {ORDER_COLUMNS} from orders o where o.status in ('received', 'cooking', 'ready') order by o.id"
        );
        let rows = c.query(&sql, &[]).await.map_err(pg_err)?;
        let (ids, mut out): (Vec<i32>, Vec<OrderView>) =
            rows.iter().map(order_row).collect::<Result<_, _>>()?;
        // Every open order's items in one query, not one query per order.
        attach_items(&mut out, &ids, items_of(&c, &ids).await?);
        attach_parts(&mut out, &ids, stations::parts_of(&c, &ids).await?);
        Ok(out)
    }

    async fn ticket_times(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<TicketTimes>, StoreError> {
        let c = self.client().await?;
        let sql = format!(
            "{TICKET_TIMES_SELECT} where o.created_at >= $1 and o.created_at < $2 order by o.id"
        );
        let rows = c.query(&sql, &[&from, &to]).await.map_err(pg_err)?;
        rows.iter()
            .map(|r| {
                Ok(TicketTimes {
                    order_type: r
                        .try_get::<_, String>(0)
                        .map_err(pg_err)?
                        .parse()
                        .map_err(|e| StoreError::new(crate::domain::error::Class::Permanent, e))?,
                    worker: r.try_get(1).map_err(pg_err)?,
                    received_at: r.try_get(2).map_err(pg_err)?,
                    ready_at: r.try_get(3).map_err(pg_err)?,
                    completed_at: r.try_get(4).map_err(pg_err)?,
                })
            })
            .collect()
    }

    async fn workers(&self) -> Result<Vec<WorkerRow>, StoreError> {
        let c = self.client().await?;
        let sql = format!("select {WORKER_COLUMNS} from workers order by name");
        let rows = c.query(&sql, &[]).await.map_err(pg_err)?;
        rows.iter().map(worker_row).collect()
    }

    async fn worker_lease(&self, name: &str) -> Result<WorkerLease, StoreError> {
        let key = format!(
            "restaurant-system worker {}",
            crate::domain::worker::lock_key(name)
        );
        let session = LeaseSession::open(&self.lease).await?;
        let held = session.try_lock(&key).await?;
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(hold_lease(
            self.lease.clone(),
            key,
            session,
            held,
            stop.clone(),
        ));
        Ok(WorkerLease::new(held, Some(Arc::new(stop.drop_guard()))))
    }

    async fn register_worker(&self, reg: &WorkerRegistration) -> Result<Registered, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        let sql = format!("select {WORKER_COLUMNS} from workers where name = $1 for update");
        let existing = match tx.query_opt(&sql, &[&reg.name]).await.map_err(pg_err)? {
            Some(r) => Some(worker_row(&r)?),
            None => None,
        };
        let outcome = crate::domain::worker::decide(existing.as_ref(), reg);
        if matches!(outcome, Registered::AlreadyOnline { .. }) {
            return Ok(outcome);
        }
        let interval = reg.heartbeat_interval_secs as i32;
        tx.execute(
            "insert into workers (name, type, status, last_seen, heartbeat_interval) values ($1, $2, 'online', $3, $4)
             on conflict (name) do update set type = excluded.type, status = 'online', last_seen = excluded.last_seen, heartbeat_interval = excluded.heartbeat_interval",
            &[&reg.name, &reg.order_types, &reg.now, &interval],
        )
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        Ok(outcome)
    }

    async fn set_worker(&self, seen: WorkerSeen<'_>) -> Result<(), StoreError> {
        let c = self.client().await?;
        c.execute(
            "update workers set last_seen = $1, status = $3 where name = $2",
            &[&seen.now, &seen.name, &seen.status],
        )
        .await
        .map_err(pg_err)?;
        Ok(())
    }

    async fn lease_outbox(
        &self,
        claim: &OutboxClaim<'_>,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        let c = self.lazy_client().await?;
        let st = c
            .prepare_cached(
                "with gone as (delete from outbox where id = any($6))
                 update outbox set lease_until = $1 where id in
                    (select id from outbox
                     where (owner = $4 or created_at < $5) and (lease_until is null or lease_until < $2)
                       and not (id = any($6))
                     order by id limit $3 for update skip locked)
                 returning id, exchange, routing_key, payload, priority, message_id, request_id",
            )
            .await
            .map_err(pg_err)?;
        let rows = c
            .query(
                &st,
                &[
                    &claim.until,
                    &claim.now,
                    &claim.limit,
                    &self.owner,
                    &claim.orphaned_before,
                    &claim.published,
                ],
            )
            .await
            .map_err(pg_err)?;
        let mut out = rows
            .iter()
            .map(|r| {
                Ok(OutboxMessage {
                    id: r.try_get(0).map_err(pg_err)?,
                    exchange: r.try_get(1).map_err(pg_err)?,
                    routing_key: r.try_get(2).map_err(pg_err)?,
                    payload: r.try_get(3).map_err(pg_err)?,
                    priority: r.try_get::<_, i16>(4).map_err(pg_err)?.clamp(0, 255) as u8,
                    message_id: r.try_get(5).map_err(pg_err)?,
                    request_id: r.try_get(6).map_err(pg_err)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        out.sort_by_key(|m| m.id);
        // The rows are published next. A deferred change among them may not be
        // flushed yet: one synchronous write flushes the WAL up to itself,
        // so everything this claim saw. Not needed once no deferred commit
        // started since the last flush finished.
        if let Some(first) = out.first() {
            if self.deferred.unflushed() {
                let done = self.deferred.done.load(Ordering::SeqCst);
                let c = self.client().await?;
                let st = c
                    .prepare_cached("update outbox set lease_until = lease_until where id = $1")
                    .await
                    .map_err(pg_err)?;
                c.execute(&st, &[&first.id]).await.map_err(pg_err)?;
                self.deferred.flushed.fetch_max(done, Ordering::SeqCst);
            }
        }
        Ok(out)
    }

    async fn delete_outbox(&self, ids: &[i64]) -> Result<(), StoreError> {
        let c = self.lazy_client().await?;
        let st = c
            .prepare_cached("delete from outbox where id = any($1)")
            .await
            .map_err(pg_err)?;
        c.execute(&st, &[&ids]).await.map_err(pg_err)?;
        Ok(())
    }

    async fn release_outbox(&self, ids: &[i64]) -> Result<(), StoreError> {
        let c = self.lazy_client().await?;
        c.execute(
            "update outbox set lease_until = null where id = any($1)",
            &[&ids],
        )
        .await
        .map_err(pg_err)?;
        Ok(())
    }

    async fn outbox_len(&self) -> Result<i64, StoreError> {
        let c = self.client().await?;
        let row = c
            .query_one("select count(*) from outbox", &[])
            .await
            .map_err(pg_err)?;
        row.try_get(0).map_err(pg_err)
    }

    async fn outbox_stats(&self) -> Result<(i64, Option<DateTime<Utc>>), StoreError> {
        let c = self.client().await?;
        let row = c
            .query_one("select count(*), min(created_at) from outbox", &[])
            .await
            .map_err(pg_err)?;
        Ok((
            row.try_get(0).map_err(pg_err)?,
            row.try_get(1).map_err(pg_err)?,
        ))
    }

    async fn newest_change(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let c = self.client().await?;
        let row = c.query_one(NEWEST_CHANGE_SQL, &[]).await.map_err(pg_err)?;
        row.try_get(0).map_err(pg_err)
    }

    async fn purge_orders(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        // One statement: every CTE sees the same orders; the foreign keys are
        // checked at its end, when their rows are gone too. Autovacuum makes
        // the space reusable; PostgreSQL keeps the files' size.
        let children: String = ORDER_CHILD_TABLES
            .iter()
            .enumerate()
            .map(|(i, t)| {
                format!(", c{i} as (delete from {t} where order_id in (select id from doomed))")
            })
            .collect();
        let sql = format!(
            "with doomed as materialized (select id from orders where created_at < $1 order by created_at limit $2){children}, \
             o as (delete from outbox where created_at < $1) \
             delete from orders where id in (select id from doomed)"
        );
        // Nothing waits for it: no WAL flush of its own.
        let c = self.lazy_client().await?;
        let st = c.prepare_cached(&sql).await.map_err(pg_err)?;
        c.execute(&st, &[&before, &i64::from(limit)])
            .await
            .map_err(pg_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 22: a deferred change that failed before its commit (no pool
    /// connection, a statement that would not prepare) left the counter
    /// "started" for ever, so every later claim paid a flush.
    #[test]
    fn a_failed_deferred_commit_owes_no_flush() {
        let d = DeferredCommits::default();
        let fails = || -> Result<(), ()> {
            let _pending = d.begin();
            Err(())
        };
        assert!(fails().is_err());
        assert!(d.unflushed(), "not flushed yet: the relay cannot know");
        // The relay's flush covers every deferred commit done before it.
        d.flushed
            .fetch_max(d.done.load(Ordering::SeqCst), Ordering::SeqCst);
        assert!(!d.unflushed(), "a failed commit leaves nothing to flush");
    }
}
