//! Test harness: every test gets its own PostgreSQL database (or SQLite file)
//! and its own RabbitMQ vhost on the real servers, and removes them when done.
//!
//! Servers are found through TEST_PG_HOST/PORT/USER/PASSWORD and
//! TEST_RABBITMQ_HOST/PORT/USER/PASSWORD (defaults: 127.0.0.1, postgres, guest).
//! `bash scripts/test.sh` installs and starts them when missing. A test that
//! cannot reach a server fails and says how to start it.
#![allow(dead_code)]

use restaurant_system::config::{Config, Secret, StorageBackend};
use restaurant_system::kitchen::WorkerConfig;
use restaurant_system::modes::{self, Mode, Options, Running};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub use restaurant_system::domain::OrderType;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// Runs an async scenario once per backend: `backend_tests!(name);` expects
/// `async fn name(b: Backend)` and makes tests `name::postgres` and `name::sqlite`.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::common::Backend::Postgres).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::common::Backend::Sqlite).await
            }
        }
    )+};
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_string())
}

pub fn pg_host() -> String {
    env_or("TEST_PG_HOST", "127.0.0.1")
}
pub fn pg_port() -> u16 {
    env_or("TEST_PG_PORT", "5432").parse().unwrap_or(5432)
}
pub fn pg_user() -> String {
    env_or("TEST_PG_USER", "postgres")
}
pub fn rabbit_host() -> String {
    env_or("TEST_RABBITMQ_HOST", "127.0.0.1")
}
pub fn rabbit_port() -> u16 {
    env_or("TEST_RABBITMQ_PORT", "5672").parse().unwrap_or(5672)
}

/// Fails the test with a clear message when a server is not reachable.
pub fn require_server(name: &str, host: &str, port: u16, how: &str) {
    let addr: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .map(|a| a.collect())
        .unwrap_or_default();
    let ok = addr
        .iter()
        .any(|a| TcpStream::connect_timeout(a, Duration::from_secs(2)).is_ok());
    assert!(
        ok,
        "{name} is not reachable at {host}:{port}. Start it with `bash scripts/test.sh` \
         (installs and starts every server), or by hand: {how}"
    );
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn psql(sql: &str) -> Result<(), String> {
    let mut cmd = Command::new("psql");
    cmd.args([
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        &pg_host(),
        "-p",
        &pg_port().to_string(),
        "-U",
        &pg_user(),
        "-d",
        "postgres",
        "-c",
        sql,
    ]);
    if let Ok(pw) = std::env::var("TEST_PG_PASSWORD") {
        cmd.env("PGPASSWORD", pw);
    }
    run(&mut cmd)
}

fn rabbitmqctl(args: &[&str]) -> Result<(), String> {
    run(Command::new("rabbitmqctl").args(args))
}

/// One test's private world: a database and a vhost, removed on drop.
pub struct TestEnv {
    pub backend: Backend,
    pub cfg: Config,
    pub vhost: String,
    pub pg_db: Option<String>,
    pub dir: tempfile::TempDir,
}

impl TestEnv {
    pub fn new(backend: Backend) -> TestEnv {
        require_server(
            "RabbitMQ",
            &rabbit_host(),
            rabbit_port(),
            "`rabbitmq-server -detached`",
        );
        let vhost = unique("rs_test");
        rabbitmqctl(&["add_vhost", &vhost]).expect("creating the test vhost");
        rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"])
            .expect("granting the test vhost");
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cfg = Config::default();
        cfg.rabbitmq.host = rabbit_host();
        cfg.rabbitmq.port = rabbit_port();
        cfg.rabbitmq.user = env_or("TEST_RABBITMQ_USER", "guest");
        cfg.rabbitmq.password = Secret::new(env_or("TEST_RABBITMQ_PASSWORD", "guest"));
        cfg.rabbitmq.vhost = vhost.clone();
        cfg.http.bind = "127.0.0.1".into();
        cfg.http.order_port = 0;
        cfg.http.tracking_port = 0;
        cfg.http.bridge_port = 0;
        cfg.mqtt.enabled = false;
        cfg.kitchen.cooking_seconds.dine_in = 0.2;
        cfg.kitchen.cooking_seconds.takeout = 0.2;
        cfg.kitchen.cooking_seconds.delivery = 0.2;
        let mut pg_db = None;
        match backend {
            Backend::Postgres => {
                require_server(
                    "PostgreSQL",
                    &pg_host(),
                    pg_port(),
                    "`pg_ctlcluster 15 main start`",
                );
                let db = unique("rs_test");
                psql(&format!("create database {db}")).expect("creating the test database");
                cfg.database.backend = StorageBackend::Postgres;
                cfg.database.host = Some(pg_host());
                cfg.database.port = pg_port();
                cfg.database.user = pg_user();
                cfg.database.password = std::env::var("TEST_PG_PASSWORD").ok().map(Secret::new);
                cfg.database.database = db.clone();
                pg_db = Some(db);
            }
            Backend::Sqlite => {
                cfg.database.backend = StorageBackend::Sqlite;
                cfg.database.sqlite_path = dir.path().join("restaurant.db");
            }
        }
        TestEnv {
            backend,
            cfg,
            vhost,
            pg_db,
            dir,
        }
    }

    /// Environment variables that make the real binary use this test's servers.
    pub fn env_vars(&self) -> Vec<(String, String)> {
        let c = &self.cfg;
        let mut v = vec![
            ("RESTAURANT_RABBITMQ__HOST".into(), c.rabbitmq.host.clone()),
            (
                "RESTAURANT_RABBITMQ__PORT".into(),
                c.rabbitmq.port.to_string(),
            ),
            (
                "RESTAURANT_RABBITMQ__VHOST".into(),
                c.rabbitmq.vhost.clone(),
            ),
            (
                "RESTAURANT_MQTT__ENABLED".into(),
                c.mqtt.enabled.to_string(),
            ),
            ("RESTAURANT_MQTT__PORT".into(), c.mqtt.port.to_string()),
            ("RESTAURANT_HTTP__BIND".into(), "127.0.0.1".into()),
        ];
        let k = c.kitchen.cooking_seconds;
        v.push((
            "RESTAURANT_KITCHEN__COOKING_SECONDS__DINE_IN".into(),
            k.dine_in.to_string(),
        ));
        v.push((
            "RESTAURANT_KITCHEN__COOKING_SECONDS__TAKEOUT".into(),
            k.takeout.to_string(),
        ));
        v.push((
            "RESTAURANT_KITCHEN__COOKING_SECONDS__DELIVERY".into(),
            k.delivery.to_string(),
        ));
        match self.backend {
            Backend::Postgres => {
                v.push(("RESTAURANT_DATABASE__BACKEND".into(), "postgres".into()));
                v.push(("RESTAURANT_DATABASE__HOST".into(), pg_host()));
                v.push(("RESTAURANT_DATABASE__PORT".into(), pg_port().to_string()));
                v.push(("RESTAURANT_DATABASE__USER".into(), pg_user()));
                v.push((
                    "RESTAURANT_DATABASE__DATABASE".into(),
                    self.pg_db.clone().unwrap_or_default(),
                ));
                if let Ok(pw) = std::env::var("TEST_PG_PASSWORD") {
                    v.push(("RESTAURANT_DATABASE__PASSWORD".into(), pw));
                }
            }
            Backend::Sqlite => {
                v.push(("RESTAURANT_DATABASE__BACKEND".into(), "sqlite".into()));
                v.push((
                    "RESTAURANT_DATABASE__SQLITE_PATH".into(),
                    self.cfg.database.sqlite_path.display().to_string(),
                ));
            }
        }
        v
    }

    /// A `Command` for the real binary, wired to this test's servers, with no
    /// config file from the working directory or /etc getting in the way.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_restaurant-system"));
        let empty = self.dir.path().join("empty.toml");
        let _ = std::fs::write(&empty, "");
        cmd.arg("--config").arg(&empty);
        for (k, v) in self.env_vars() {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts a mode in-process (the same code path as the binary).
    pub async fn start(&self, mode: Mode, worker: Option<WorkerConfig>) -> App {
        self.start_with(mode, worker, &self.cfg).await
    }

    pub async fn start_with(&self, mode: Mode, worker: Option<WorkerConfig>, cfg: &Config) -> App {
        let shutdown = CancellationToken::new();
        let running = tokio::time::timeout(
            Duration::from_secs(30),
            modes::start(mode, cfg, Options { worker }, shutdown.clone()),
        )
        .await
        .expect("mode did not start within 30 s")
        .expect("mode failed to start");
        App {
            running: Some(running),
            shutdown,
        }
    }

    pub fn worker(&self, name: &str, types: &[OrderType]) -> WorkerConfig {
        WorkerConfig {
            name: name.to_string(),
            order_types: types.to_vec(),
            prefetch: 1,
            heartbeat: Duration::from_secs(1),
            cooking: self.cfg.kitchen.cooking_seconds,
        }
    }

    /// A raw AMQP connection to this test's vhost, for looking into queues.
    pub async fn amqp(&self) -> lapin::Channel {
        let conn = restaurant_system::messaging::connect(&self.cfg.rabbitmq, "test")
            .await
            .expect("test AMQP connection");
        let ch = conn.create_channel().await.expect("test channel");
        // Keep the connection alive for as long as the test runs.
        std::mem::forget(conn);
        ch
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let _ = rabbitmqctl(&["delete_vhost", &self.vhost]);
        if let Some(db) = &self.pg_db {
            let _ = psql(&format!("drop database if exists {db} with (force)"));
        }
    }
}

/// A running mode; stopped (and awaited) by `stop`, or cancelled on drop.
pub struct App {
    pub running: Option<Running>,
    pub shutdown: CancellationToken,
}

impl App {
    pub fn order_url(&self) -> String {
        let a = self
            .running
            .as_ref()
            .and_then(|r| r.order_addr)
            .expect("order service running");
        format!("http://{a}")
    }
    pub fn tracking_url(&self) -> String {
        let a = self
            .running
            .as_ref()
            .and_then(|r| r.tracking_addr)
            .expect("tracking service running");
        format!("http://{a}")
    }
    pub fn bridge_url(&self) -> String {
        let a = self
            .running
            .as_ref()
            .and_then(|r| r.bridge_addr)
            .expect("display bridge running");
        format!("http://{a}")
    }
    pub fn store(&self) -> restaurant_system::storage::SharedStore {
        self.running.as_ref().expect("running").store.clone()
    }
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(r) = self.running.take() {
            tokio::time::timeout(Duration::from_secs(30), r.wait())
                .await
                .expect("mode did not stop within 30 s");
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Polls `f` every 50 ms until it returns Some, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The spec's three example orders.
pub fn spec_orders() -> Vec<serde_json::Value> {
    use serde_json::json;
    vec![
        json!({"customer_name": "John Doe", "order_type": "takeout",
               "items": [{"name": "Margherita Pizza", "quantity": 2, "price": 15.99},
                         {"name": "Caesar Salad", "quantity": 1, "price": 8.99}]}),
        json!({"customer_name": "Jane Smith", "order_type": "dine_in", "table_number": 12,
               "items": [{"name": "Steak", "quantity": 1, "price": 29.99}]}),
        json!({"customer_name": "Bob Johnson", "order_type": "delivery",
               "delivery_address": "123 Main Street, Apt 4B",
               "items": [{"name": "Burger Combo", "quantity": 2, "price": 18.99}]}),
    ]
}
