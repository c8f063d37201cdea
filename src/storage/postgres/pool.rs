//! Reaching the database: the connection settings, the pools (and their
//! check for a former primary), the sessions outside them, and migrations.

use super::tls::{self, MakeRustls};
use super::*;
use crate::process::config::PgSslMode;
use crate::storage::migrations::POSTGRES;
use deadpool_postgres::{
    ClientWrapper, Hook, HookError, Manager, ManagerConfig, RecyclingMethod, Runtime, Timeouts,
};

/// Serialises concurrent migrations from several processes starting at once.
const MIGRATION_LOCK: i64 = 0x7265_7374_6175;

/// How every connection of ours reaches the configured database.
/// A `url` (checked when the config was loaded) names the hosts, the
/// database and the user itself; else `host`, `port`, `user` and `database`.
pub(super) fn pg_config(cfg: &DatabaseConfig) -> tokio_postgres::Config {
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
    pub(super) pg: tokio_postgres::Config,
    tls: Option<MakeRustls>,
    pub(super) monitor: Option<Arc<Monitor>>,
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

/// A pool that connects lazily and replaces dead connections, so a restarted
/// server is picked up again on its own.
pub(super) fn build_pool(at: &Connector, size: usize) -> Result<Pool, StoreError> {
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

impl PgStore {
    pub(super) async fn migrate(&self) -> Result<(), StoreError> {
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
