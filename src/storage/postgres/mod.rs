//! PostgreSQL backend: tokio-postgres behind a deadpool pool (the pool replaces
//! dead connections, so a restarted server is picked up again on its own).

pub(crate) mod backup;
mod intake;
mod monitor;
mod stations;
mod tls;

use crate::domain::error::Class;
use crate::domain::events::NOTIFICATIONS_EXCHANGE;
use crate::process::config::{ClusterConfig, DatabaseConfig, PgSslMode};
use crate::storage::migrations::POSTGRES;
use crate::storage::*;
use deadpool_postgres::GenericClient;
use deadpool_postgres::{
    ClientWrapper, Hook, HookError, Manager, ManagerConfig, Object, Pool, PoolError,
    RecyclingMethod, Runtime, Timeouts,
};
use intake::Intake;
use monitor::Monitor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tls::MakeRustls;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::Row;

mod tokens;

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

/// Serialises concurrent migrations from several processes starting at once.
const MIGRATION_LOCK: i64 = 0x7265_7374_6175;

/// How every connection of ours reaches the configured database.
/// A `url` (checked when the config was loaded) names the hosts, the
/// database and the user itself; else `host`, `port`, `user` and `database`.
fn pg_config(cfg: &DatabaseConfig) -> tokio_postgres::Config {
    let mut pg = match cfg.parsed_url() {
        Ok(Some(pg)) => pg,
        _ => {
            let mut pg = tokio_postgres::Config::new();
            pg.host(cfg.host.as_deref().unwrap_or("localhost"))
                .port(cfg.port)
                .user(&cfg.user)
                .dbname(&cfg.database);
            pg
        }
    };
    if pg.get_user().is_none() {
        pg.user(&cfg.user);
    }
    if pg.get_dbname().is_none() {
        pg.dbname(&cfg.database);
    }
    pg.application_name("restaurant-system")
        .connect_timeout(Duration::from_secs(5));
    if let Some(pw) = cfg.password.as_ref() {
        pg.password(pw.expose());
    }
    if cfg.ssl().0 != PgSslMode::Disable {
        // TLS or no connection; the certificate is checked by `tls::MakeRustls`.
        pg.ssl_mode(tokio_postgres::config::SslMode::Require);
    }
    pg
}

/// Where our sessions go, and the TLS if any: the pools' connections and the
/// sessions outside them. With pg_auto_failover's monitor, to the node it
/// names the primary.
#[derive(Clone)]
pub(crate) struct Connector {
    pg: tokio_postgres::Config,
    tls: Option<MakeRustls>,
    monitor: Option<Arc<Monitor>>,
}

impl Connector {
    pub(crate) fn new(cfg: &DatabaseConfig) -> Result<Self, StoreError> {
        let tls = MakeRustls::from_config(cfg).map_err(|e| {
            StoreError::new(
                Class::Permanent,
                format!("database.ca_file (sslmode {:?}): {e}", cfg.ssl().0),
            )
        })?;
        Ok(Connector {
            pg: pg_config(cfg),
            tls,
            monitor: None,
        })
    }

    pub(crate) async fn connect(
        &self,
    ) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
        match &self.monitor {
            Some(m) => m.connect(&self.pg, self.tls.as_ref()).await,
            None => tls::connect_one(&self.pg, self.tls.as_ref()).await,
        }
    }
}

/// The pools connect through the `Connector` (the monitor's choice).
impl deadpool_postgres::Connect for Connector {
    fn connect(
        &self,
        _: &tokio_postgres::Config,
    ) -> futures_util::future::BoxFuture<
        '_,
        Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>,
    > {
        Box::pin(Connector::connect(self))
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

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        tx.execute("select pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg_err)?;
        tx.batch_execute(
            "create table if not exists schema_migrations (version bigint primary key, name text not null, applied_at timestamptz not null default now())",
        )
        .await
        .map_err(pg_err)?;
        for m in POSTGRES {
            let done = tx
                .query_opt(
                    "select version from schema_migrations where version = $1",
                    &[&m.version],
                )
                .await
                .map_err(pg_err)?;
            if done.is_none() {
                tx.batch_execute(m.sql).await.map_err(|e| {
                    StoreError::new(
                        Class::Permanent,
                        format!("applying migration {}: {}", m.name, pg_err(e)),
                    )
                })?;
                tx.execute(
                    "insert into schema_migrations (version, name) values ($1, $2)",
                    &[&m.version, &m.name],
                )
                .await
                .map_err(pg_err)?;
            }
        }
        tx.commit().await.map_err(pg_err)
    }
}

/// A session of its own for a worker name's advisory lock: PostgreSQL
/// releases the lock when the session ends, so when the worker process dies.
struct LeaseSession {
    client: tokio_postgres::Client,
    connection: tokio::task::JoinHandle<()>,
}

impl LeaseSession {
    async fn open(at: &Connector) -> Result<Self, StoreError> {
        let (client, connection) = at.connect().await.map_err(pg_err)?;
        Ok(LeaseSession { client, connection })
    }

    fn is_gone(&self) -> bool {
        self.client.is_closed() || self.connection.is_finished()
    }

    async fn try_lock(&self, key: &str) -> Result<bool, StoreError> {
        let row = self
            .client
            .query_one(
                "select pg_try_advisory_lock(hashtextextended($1, 0))",
                &[&key],
            )
            .await
            .map_err(pg_err)?;
        Ok(row.get(0))
    }
}

/// Keeps the lease's session open until `stop`. When the session is lost (a
/// database restart) it opens a new one and takes the lock again; when the
/// lock was not ours (taken over from a hung holder), it takes it once free.
async fn hold_lease(
    at: Connector,
    key: String,
    mut session: LeaseSession,
    mut held: bool,
    stop: tokio_util::sync::CancellationToken,
) {
    // A fixed pause between attempts: one session per worker, no thundering herd.
    let pause = || tokio::time::sleep(Duration::from_secs(2));
    loop {
        if held && !session.is_gone() {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = &mut session.connection => {}
            }
        } else {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
        loop {
            if session.is_gone() {
                match LeaseSession::open(&at).await {
                    Ok(s) => session = s,
                    Err(e) => {
                        tracing::warn!(action = "worker_lock_lost", error = %e, "Worker name lock lost with its database session; reconnecting");
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = pause() => continue,
                        }
                    }
                }
            }
            match session.try_lock(&key).await {
                Ok(h) => {
                    if h != held {
                        tracing::info!(
                            action = "worker_lock",
                            held = h,
                            "Worker name lock {}",
                            if h {
                                "taken"
                            } else {
                                "held by another session"
                            }
                        );
                    }
                    held = h;
                    break;
                }
                Err(e) => {
                    tracing::warn!(action = "worker_lock_lost", error = %e, "Could not take the worker name lock; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = pause() => {}
                    }
                }
            }
        }
    }
    session.connection.abort();
}

/// A pool that connects lazily and replaces dead connections, so a restarted
/// server is picked up again on its own.
fn build_pool(at: &Connector, size: usize) -> Result<Pool, StoreError> {
    let several_hosts = at.pg.get_hosts().len() > 1;
    let config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let mgr = Manager::from_connect(at.pg.clone(), at.clone(), config);
    let timeouts = Timeouts {
        wait: Some(Duration::from_secs(5)),
        create: Some(monitor::CREATE_TIMEOUT),
        recycle: Some(Duration::from_secs(5)),
    };
    let mut builder = Pool::builder(mgr)
        .max_size(size)
        .timeouts(timeouts)
        .runtime(Runtime::Tokio1);
    if let Some(m) = at.monitor.clone() {
        builder = builder.pre_recycle(Hook::async_fn(move |client, metrics| {
            let current = m.still_current(metrics.created);
            Box::pin(async move {
                if !current {
                    return Err(HookError::message(
                        "connection made before pg_auto_failover's monitor last changed the primary",
                    ));
                }
                writable(client).await
            })
        }));
    } else if several_hosts {
        builder = builder.pre_recycle(Hook::async_fn(|client, _| {
            Box::pin(async move { writable(client).await })
        }));
    }
    builder.build().map_err(|e| {
        StoreError::new(
            Class::Permanent,
            format!("building the connection pool: {e}"),
        )
    })
}

/// With several hosts (a cluster that fails over), a connection is checked
/// before each use: one to a former primary that still answers, now read-only,
/// is dropped, and the pool connects again, to the host that takes writes
/// (`target_session_attrs=read-write`: the driver checks that only when it
/// connects). Closed connections and ones the old primary shut down are
/// dropped by the usual recycling (`is_closed`).
async fn writable(client: &mut ClientWrapper) -> Result<(), HookError> {
    let row = client
        .query_one("show transaction_read_only", &[])
        .await
        .map_err(HookError::Backend)?;
    match row
        .try_get::<_, String>(0)
        .map_err(HookError::Backend)?
        .as_str()
    {
        "off" => Ok(()),
        _ => Err(HookError::message(
            "connection to a read-only server (a former primary)",
        )),
    }
}

fn pool_err(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => pg_err(e),
        // No connection within the wait: the server is down or overloaded.
        e @ (PoolError::Timeout(_) | PoolError::Closed) => {
            StoreError::caused_by(Class::Transient, "no database connection", e)
        }
        e => StoreError::caused_by(Class::Permanent, "connection pool", e),
    }
}

fn pg_err(e: tokio_postgres::Error) -> StoreError {
    let class = pg_class(&e);
    StoreError::caused_by(class, "PostgreSQL", e)
}

/// The class of a PostgreSQL error, from its SQLSTATE when the server sent one,
/// else from the connection state.
fn pg_class(e: &tokio_postgres::Error) -> Class {
    if let Some(code) = e.code() {
        return sqlstate_class(code);
    }
    // No server error: the connection failed, closed or timed out (an I/O
    // cause), which passes when the server is back; or we sent something
    // wrong, which does not.
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if c.is::<std::io::Error>() {
            return Class::Transient;
        }
        cause = c.source();
    }
    if e.is_closed() {
        Class::Transient
    } else {
        Class::Permanent
    }
}

/// SQLSTATE classes (the first two characters) as the standard defines them.
fn sqlstate_class(code: &SqlState) -> Class {
    let c = code.code();
    if *code == SqlState::UNIQUE_VIOLATION {
        return Class::Conflict;
    }
    // A write on a server that became read-only: a primary demoted by a
    // failover. Another connection reaches the new primary.
    if *code == SqlState::READ_ONLY_SQL_TRANSACTION {
        return Class::Transient;
    }
    match &c[..2.min(c.len())] {
        // connection exception; insufficient resources (too many connections,
        // disk full); operator intervention (shutting down, starting up,
        // statement cancelled); transaction rollback (serialization failure,
        // deadlock): all pass on a later try.
        "08" | "53" | "57" | "40" => Class::Transient,
        // lock not available
        "55" if *code == SqlState::LOCK_NOT_AVAILABLE => Class::Transient,
        _ => Class::Permanent,
    }
}

const ORDER_COLUMNS: &str = "o.id, o.number, o.customer_name, o.type, o.table_number, o.delivery_address, (o.total_amount * 100)::bigint, o.priority, o.status, o.processed_by, o.created_at, o.updated_at, o.estimated_completion, o.completed_at, o.version, o.notes, o.rush, o.stations_done_at";

fn order_row(r: &Row) -> Result<(i32, OrderView), StoreError> {
    let parse = |s: String| StoreError::new(Class::Permanent, s);
    Ok((
        r.try_get(0).map_err(pg_err)?,
        OrderView {
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
async fn items_of(c: &Object, ids: &[i32]) -> Result<Vec<(i32, Item)>, StoreError> {
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
fn item_row(r: &Row) -> Result<Item, StoreError> {
    item_from_columns(
        r.try_get(0).map_err(pg_err)?,
        i64::from(r.try_get::<_, i32>(1).map_err(pg_err)?),
        Cents(r.try_get(2).map_err(pg_err)?),
        r.try_get(3).map_err(pg_err)?,
        r.try_get(4).map_err(pg_err)?,
        r.try_get(5).map_err(pg_err)?,
    )
}

async fn load_order(c: &Object, number: &str) -> Result<Option<OrderView>, StoreError> {
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
    view.items = items_of(c, &[id])
        .await?
        .into_iter()
        .map(|(_, i)| i)
        .collect();
    let mut one = [view];
    attach_parts(&mut one, &[id], stations::parts_of(c, &[id]).await?);
    let [view] = one;
    Ok(Some(view))
}

fn worker_row(r: &Row) -> Result<WorkerRow, StoreError> {
    Ok(WorkerRow {
        name: r.try_get(0).map_err(pg_err)?,
        order_types: r.try_get(1).map_err(pg_err)?,
        status: r
            .try_get::<_, Option<String>>(2)
            .map_err(pg_err)?
            .unwrap_or_default(),
        orders_processed: i64::from(r.try_get::<_, Option<i32>>(3).map_err(pg_err)?.unwrap_or(0)),
        last_seen: r
            .try_get::<_, Option<DateTime<Utc>>>(4)
            .map_err(pg_err)?
            .unwrap_or_default(),
        heartbeat_interval_secs: i64::from(r.try_get::<_, i32>(5).map_err(pg_err)?),
    })
}

const WORKER_COLUMNS: &str = "name, type, status, orders_processed, last_seen, heartbeat_interval";

/// What every compare-and-set on `orders` writes, as `$1`..`$6`: status,
/// version, updated_at, processed_by, estimated_completion, completed_at.
/// The caller's own placeholders follow.
fn state_params(s: &OrderState) -> [&(dyn ToSql + Sync); 6] {
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
const TRANSITION_SQL: &str = r#"
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
        t: &Transition,
        cur: &OrderState,
        d: &Decision,
    ) -> Result<Option<OrderView>, StoreError> {
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

    async fn persist_ticket(
        &self,
        c: &StationChange,
        cur: &Ticket,
        d: &TicketDecision,
    ) -> Result<bool, StoreError> {
        let mut conn = self.client().await?;
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

    async fn set_worker(
        &self,
        name: &str,
        now: DateTime<Utc>,
        status: &'static str,
    ) -> Result<(), StoreError> {
        let c = self.client().await?;
        c.execute(
            "update workers set last_seen = $1, status = $3 where name = $2",
            &[&now, &name, &status],
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
