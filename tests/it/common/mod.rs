//! Test harness: every test gets its own PostgreSQL database (or SQLite file)
//! and its own RabbitMQ vhost on the real servers, and removes them when done.
//!
//! Servers are found through TEST_PG_HOST/PORT/USER/PASSWORD and
//! TEST_RABBITMQ_HOST/PORT/USER/PASSWORD (defaults: 127.0.0.1, postgres, guest).
//! `bash scripts/test.sh` installs and starts them when missing. A test that
//! cannot reach a server fails and says how to start it.
#![allow(dead_code)]

pub mod mosquitto;
pub mod servers;

use restaurant_system::modes::{self, Mode, Options, Running};
use restaurant_system::process::config::{Config, QueueType, Secret, StorageBackend};
use restaurant_system::services::kitchen::WorkerConfig;
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
    pg_query("postgres", sql).map(|_| ())
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

    /// Makes this test's vhost keep its classic queues with index version `v`
    /// (a policy, as `classic_queue.default_version` in rabbitmq.conf does for
    /// the whole broker: the .deb ships version 2, issue 21). Call before the
    /// queues are declared.
    pub fn classic_queue_version(&self, v: u8) {
        let definition = format!("{{\"queue-version\":{v}}}");
        rabbitmqctl(&[
            "set_policy",
            "-p",
            &self.vhost,
            "--apply-to",
            "queues",
            "queue-version",
            ".*",
            &definition,
        ])
        .expect("setting the queue-version policy");
    }

    /// The name of the policy RabbitMQ applies to `queue` in this test's vhost.
    pub fn queue_policy(&self, queue: &str) -> String {
        let out = Command::new("rabbitmqctl")
            .args(["-q", "list_queues", "-p", &self.vhost, "name", "policy"])
            .output()
            .expect("rabbitmqctl list_queues");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{queue}\t")).map(str::to_string))
            .unwrap_or_default()
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
        if c.rabbitmq.queue_type == QueueType::Quorum {
            v.push(("RESTAURANT_RABBITMQ__QUEUE_TYPE".into(), "quorum".into()));
        }
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
        self.launch(mode, cfg, worker.into_iter().collect()).await
    }

    /// A kitchen-worker process running several workers.
    pub async fn start_kitchen(&self, workers: Vec<WorkerConfig>) -> App {
        self.launch(Mode::KitchenWorker, &self.cfg, workers).await
    }

    async fn launch(&self, mode: Mode, cfg: &Config, workers: Vec<WorkerConfig>) -> App {
        launch(mode, cfg, workers).await
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
        let conn = restaurant_system::broker::connect(&self.cfg.rabbitmq, "test")
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

/// Starts a mode in-process with `cfg` (the same code path as the binary).
pub async fn launch(mode: Mode, cfg: &Config, workers: Vec<WorkerConfig>) -> App {
    let shutdown = CancellationToken::new();
    let running = tokio::time::timeout(
        Duration::from_secs(30),
        modes::start(mode, cfg, Options { workers }, shutdown.clone()),
    )
    .await
    .expect("mode did not start within 30 s")
    .expect("mode failed to start");
    App {
        running: Some(running),
        shutdown,
    }
}

/// A running mode; stopped (and awaited) by `stop`, or cancelled on drop.
pub struct App {
    pub running: Option<Running>,
    pub shutdown: CancellationToken,
}

impl App {
    fn url(&self, addr: impl Fn(&Running) -> Option<SocketAddr>, what: &str) -> String {
        let a = self
            .running
            .as_ref()
            .and_then(addr)
            .unwrap_or_else(|| panic!("{what} is not running in this App"));
        format!("http://{a}")
    }
    pub fn order_url(&self) -> String {
        self.url(|r| r.order_addr, "the order service")
    }
    pub fn tracking_url(&self) -> String {
        self.url(|r| r.tracking_addr, "the tracking service")
    }
    pub fn bridge_url(&self) -> String {
        self.url(|r| r.bridge_addr, "the display bridge")
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

// ---------------------------------------------------------------------------
// Helpers for the order-intake, lifecycle, worker and CLI suites.
// ---------------------------------------------------------------------------

/// Runs SQL in the test's PostgreSQL database (not `postgres`) and returns
/// psql's unaligned, tuples-only output (`-At`), trimmed.
pub fn pg_query(db: &str, sql: &str) -> Result<String, String> {
    let mut cmd = Command::new("psql");
    cmd.args([
        "-X",
        "-q",
        "-At",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        &pg_host(),
        "-p",
        &pg_port().to_string(),
        "-U",
        &pg_user(),
        "-d",
        db,
        "-c",
        sql,
    ]);
    if let Ok(pw) = std::env::var("TEST_PG_PASSWORD") {
        cmd.env("PGPASSWORD", pw);
    }
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs SQL in the PostgreSQL maintenance database (ALTER/DROP DATABASE ...).
pub fn pg_admin(sql: &str) -> Result<(), String> {
    psql(sql)
}

impl TestEnv {
    /// A store of its own on this test's database (migrations applied), for
    /// arranging and inspecting state without going through a running mode.
    pub async fn open_store(&self) -> restaurant_system::storage::SharedStore {
        restaurant_system::storage::open(&self.cfg.database)
            .await
            .expect("opening the test database")
    }

    /// A channel on this test's vhost with the topology declared, so queues can
    /// be inspected before any mode declared them.
    pub async fn amqp_with_topology(&self) -> lapin::Channel {
        let ch = self.amqp().await;
        restaurant_system::broker::topology::declare(&ch, self.cfg.rabbitmq.queue_type)
            .await
            .expect("declaring the topology");
        ch
    }
}

/// Ready messages and consumers of a queue (passive declare: the queue must exist).
pub async fn queue_counts(ch: &lapin::Channel, queue: &str) -> (u32, u32) {
    let q = ch
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("passive declare of {queue}: {e}"));
    (q.message_count(), q.consumer_count())
}

/// Takes (and acks) every message waiting in `queue`.
pub async fn get_all(ch: &lapin::Channel, queue: &str) -> Vec<lapin::message::Delivery> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(
            queue.into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap_or_else(|e| panic!("basic_get {queue}: {e}"))
    {
        out.push(m.delivery);
    }
    out
}

/// A private queue bound to `notifications_fanout`: sees every status update
/// published after this call. Read it with `get_all`.
pub async fn notification_tap(ch: &lapin::Channel) -> String {
    use restaurant_system::domain::events::NOTIFICATIONS_EXCHANGE;
    let q = ch
        .queue_declare(
            "".into(),
            lapin::options::QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("declaring the notification tap");
    ch.queue_bind(
        q.name().clone(),
        NOTIFICATIONS_EXCHANGE.into(),
        "".into(),
        lapin::options::QueueBindOptions::default(),
        lapin::types::FieldTable::default(),
    )
    .await
    .expect("binding the notification tap");
    q.name().as_str().to_string()
}

/// A string header of a message (`x-request-id`, `x-rejection-reason`, ...).
pub fn header(d: &lapin::message::Delivery, name: &str) -> Option<String> {
    use lapin::types::AMQPValue;
    match d.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// Publishes raw bytes (persistent, confirmed) to an exchange.
pub async fn publish_raw(
    ch: &lapin::Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    priority: Option<u8>,
) {
    let mut props = lapin::BasicProperties::default().with_delivery_mode(2);
    if let Some(p) = priority {
        props = props.with_priority(p);
    }
    ch.basic_publish(
        exchange.into(),
        routing_key.into(),
        lapin::options::BasicPublishOptions::default(),
        body,
        props,
    )
    .await
    .expect("publish")
    .await
    .expect("publish confirm");
}

/// POSTs JSON and returns the status, headers and the body parsed as JSON
/// (`Value::Null` when the body is not JSON).
pub async fn post_json(
    http: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let resp = http
        .post(url)
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    split(resp).await
}

pub async fn get_json(
    http: &reqwest::Client,
    url: &str,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let resp = http
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    split(resp).await
}

pub async fn split(
    resp: reqwest::Response,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.expect("response body");
    let v = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, headers, v)
}

/// Places an order and returns its number (panics unless 200).
pub async fn place_order(
    http: &reqwest::Client,
    order_url: &str,
    body: &serde_json::Value,
) -> String {
    let (status, _, v) = post_json(http, &format!("{order_url}/orders"), body).await;
    assert_eq!(status, 200, "POST /orders {body}: {v}");
    v["order_number"]
        .as_str()
        .expect("order_number in the response")
        .to_string()
}

/// A takeout order for `customer` with one item: `quantity` x `price`.
pub fn takeout(customer: &str, quantity: i64, price: f64) -> serde_json::Value {
    serde_json::json!({"customer_name": customer, "order_type": "takeout",
        "items": [{"name": "Pizza", "quantity": quantity, "price": price}]})
}

/// Waits until the order has `status` in the store; returns its view.
pub async fn wait_status(
    store: &restaurant_system::storage::SharedStore,
    n: &str,
    status: restaurant_system::domain::OrderStatus,
    timeout: Duration,
) -> restaurant_system::storage::OrderView {
    eventually(timeout, &format!("{n} to be {status}"), || async {
        store
            .order(n)
            .await
            .ok()
            .flatten()
            .filter(|o| o.status == status)
    })
    .await
}

/// A running copy of the real binary. Its stdout and stderr are collected line
/// by line; it is killed (SIGKILL) on drop if still running.
pub struct Proc {
    pub child: std::process::Child,
    out: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    err: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// The threads reading stdout and stderr: done at the pipes' end.
    readers: Vec<std::thread::JoinHandle<()>>,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        use std::io::BufRead;
        use std::process::Stdio;
        cmd.env_remove("JOURNAL_STREAM")
            .env("RESTAURANT_LOG__FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        let mut readers = Vec::new();
        let mut collect = |r: Box<dyn std::io::Read + Send>| {
            let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let l = lines.clone();
            readers.push(std::thread::spawn(move || {
                for line in std::io::BufReader::new(r).lines() {
                    match line {
                        Ok(line) => l.lock().unwrap().push(line),
                        Err(_) => break,
                    }
                }
            }));
            lines
        };
        let out = collect(Box::new(child.stdout.take().expect("stdout")));
        let err = collect(Box::new(child.stderr.take().expect("stderr")));
        Proc {
            child,
            out,
            err,
            readers,
            name: name.to_string(),
        }
    }

    pub fn stdout(&self) -> Vec<String> {
        self.out.lock().unwrap().clone()
    }
    pub fn stderr(&self) -> Vec<String> {
        self.err.lock().unwrap().clone()
    }

    /// stdout lines that are JSON log lines.
    pub fn logs(&self) -> Vec<serde_json::Value> {
        self.stdout()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.get("action").is_some())
            .collect()
    }

    /// Waits for a log line with this `action` (and the predicate); returns it.
    pub async fn wait_log(
        &self,
        action: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let what = format!("{}: log action {action}", self.name);
        let found = tokio::time::timeout(timeout, async {
            loop {
                if let Some(v) = self
                    .logs()
                    .into_iter()
                    .find(|v| v["action"] == action && pred(v))
                {
                    return v;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        found.unwrap_or_else(|_| {
            panic!(
                "timed out after {timeout:?} waiting for {what}\nstdout:\n{}\nstderr:\n{}",
                self.stdout().join("\n"),
                self.stderr().join("\n")
            )
        })
    }

    /// Waits for a stdout line equal to `line`.
    pub async fn wait_stdout_line(&self, line: &str, timeout: Duration) {
        let ok = tokio::time::timeout(timeout, async {
            while !self.stdout().iter().any(|l| l == line) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(
            ok.is_ok(),
            "{}: timed out after {timeout:?} waiting for stdout line {line:?}\nstdout:\n{}",
            self.name,
            self.stdout().join("\n")
        );
    }

    /// The port of the HTTP listener, from the `service_started` log line.
    pub async fn port(&self) -> u16 {
        let v = self
            .wait_log("service_started", Duration::from_secs(30), |v| {
                v["details"]["port"].is_u64()
            })
            .await;
        v["details"]["port"].as_u64().expect("port") as u16
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig)
            .unwrap_or_else(|e| panic!("signalling {}: {e}", self.name));
    }

    /// Waits (without blocking the runtime) for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                // Let the reader threads take the last lines: they end when
                // the pipes do (a fixed pause lost lines on a loaded machine).
                let drained = tokio::time::Instant::now() + Duration::from_secs(5);
                while !self.readers.iter().all(|r| r.is_finished())
                    && tokio::time::Instant::now() < drained
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                return st;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} did not exit within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                self.name,
                self.stdout().join("\n"),
                self.stderr().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then the exit status.
    pub async fn stop(&mut self) -> std::process::ExitStatus {
        if self.child.try_wait().expect("try_wait").is_none() {
            self.signal(nix::sys::signal::Signal::SIGTERM);
        }
        self.wait_exit(Duration::from_secs(30)).await
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends raw bytes over one TCP connection and returns the status code and
/// the body of the response (parsed as JSON when it is). The request should
/// say `Connection: close`.
pub async fn raw_http(addr: &str, request: &[u8]) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = addr.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    // The server may answer (413, 415) and close before reading everything.
    let _ = s.write_all(request).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    let v = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    (status, v)
}

/// A TCP forwarder in front of a real server (PostgreSQL, RabbitMQ), so a test
/// can cut the server off (`down`: stop listening, reset every connection) and
/// bring it back (`up`, same port): a crash seen from the client, without
/// touching the shared server.
pub struct TcpProxy {
    pub port: u16,
    target: String,
    stop: std::sync::Mutex<CancellationToken>,
}

impl TcpProxy {
    pub async fn start(target: &str) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("proxy bind");
        let port = listener.local_addr().expect("proxy addr").port();
        let p = TcpProxy {
            port,
            target: target.to_string(),
            stop: std::sync::Mutex::new(CancellationToken::new()),
        };
        p.serve(listener);
        p
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let stop = self.stop.lock().unwrap().clone();
        let target = self.target.clone();
        tokio::spawn(async move {
            loop {
                let (mut inbound, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                let target = target.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = stop.cancelled() => {
                            // Reset, as a crashed server's kernel would.
                            let _ = inbound.set_zero_linger();
                        }
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
    }

    /// Stops listening and resets every forwarded connection.
    pub fn down(&self) {
        self.stop.lock().unwrap().cancel();
    }

    /// Listens again on the same port.
    pub async fn up(&self) {
        *self.stop.lock().unwrap() = CancellationToken::new();
        let listener = eventually(Duration::from_secs(10), "proxy port to rebind", || async {
            tokio::net::TcpListener::bind(("127.0.0.1", self.port))
                .await
                .ok()
        })
        .await;
        self.serve(listener);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.lock().unwrap().cancel();
    }
}

/// The statuses in an order's history, oldest first (panics when the order is unknown).
pub async fn statuses(
    store: &restaurant_system::storage::SharedStore,
    order_number: &str,
) -> Vec<restaurant_system::domain::OrderStatus> {
    store
        .history(order_number)
        .await
        .expect("history query")
        .expect("order exists")
        .iter()
        .map(|e| e.status)
        .collect()
}
