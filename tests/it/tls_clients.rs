//! Our clients of servers on another host (issue 27, docs/security.md):
//! PostgreSQL with `sslmode = "verify-full"` and RabbitMQ over amqps://, each a
//! private server of the test's (`common::servers`) with a certificate from a
//! CA the test makes, for the name `localhost` only. So `127.0.0.1` is a
//! wrong host name for it, and a second CA is a wrong CA. The PostgreSQL takes
//! only TLS connections: an order that gets through went over TLS.

use crate::common;

use common::servers::{test_cert, PrivatePostgres, PrivateRabbit, TestCert};
use common::*;
use restaurant_system::domain::OrderStatus;
use restaurant_system::modes::Mode;
use restaurant_system::process::config::{Config, PgSslMode, Secret, StorageBackend};
use restaurant_system::services::kitchen::WorkerConfig;
use std::time::{Duration, Instant};

/// The password the kitchen worker's RabbitMQ account gets in the failing
/// cases: it must appear in no log line.
const RABBIT_PASSWORD: &str = "amqps-secret-never-logged";

fn client_config(pg: &PrivatePostgres, rabbit: &PrivateRabbit, ca: &TestCert) -> Config {
    let mut cfg = Config::default();
    cfg.database.backend = StorageBackend::Postgres;
    cfg.database.host = Some("localhost".into());
    cfg.database.port = pg.port;
    cfg.database.user = "postgres".into();
    cfg.database.password = pg.password.clone().map(Secret::new);
    cfg.database.database = "postgres".into();
    cfg.database.sslmode = PgSslMode::VerifyFull;
    cfg.database.ca_file = ca.ca.clone();
    cfg.database.pool_size = 4;
    cfg.rabbitmq.host = "localhost".into();
    cfg.rabbitmq.port = rabbit.tls_port;
    cfg.rabbitmq.tls = true;
    cfg.rabbitmq.ca_file = ca.ca.clone();
    cfg.http.bind = "127.0.0.1".into();
    cfg.http.order_port = 0;
    cfg.http.tracking_port = 0;
    cfg.http.bridge_port = 0;
    cfg.mqtt.enabled = false;
    cfg.kitchen.cooking_seconds.dine_in = 0.2;
    cfg.kitchen.cooking_seconds.takeout = 0.2;
    cfg.kitchen.cooking_seconds.delivery = 0.2;
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_go_over_verify_full_postgres_and_amqps_and_wrong_certificates_fail() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = test_cert(dir.path(), "good", &["localhost"], 30);
    let other = test_cert(dir.path(), "other", &["localhost"], 30);
    // Both servers at once: RabbitMQ's boot is most of this test's time.
    let ((pg, pg_s), (rabbit, rabbit_s)) = std::thread::scope(|s| {
        let rabbit = s.spawn(|| timed(|| PrivateRabbit::start_tls(&good)));
        let pg = timed(|| PrivatePostgres::start_tls(&good));
        (pg, rabbit.join().expect("starting RabbitMQ"))
    });
    eprintln!("private servers up: PostgreSQL in {pg_s:.1} s, RabbitMQ in {rabbit_s:.1} s");
    let pg_password = pg.password.clone().expect("a password");
    let cfg = client_config(&pg, &rabbit, &good);

    // An order through the order service (PostgreSQL, verify-full) and the
    // outbox relay (amqps) to a kitchen worker, which cooks it (ready).
    let began = Instant::now();
    let order = launch(Mode::OrderService, &cfg, vec![]).await;
    let worker = WorkerConfig {
        name: "chef_tls".into(),
        order_types: vec![],
        prefetch: 1,
        heartbeat: Duration::from_secs(1),
        cooking: cfg.kitchen.cooking_seconds,
    };
    let kitchen = launch(Mode::KitchenWorker, &cfg, vec![worker]).await;
    let http = reqwest::Client::new();
    let n = place_order(&http, &order.order_url(), &takeout("Tess", 1, 9.5)).await;
    let done = wait_status(
        &order.store(),
        &n,
        OrderStatus::Ready,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(done.processed_by.as_deref(), Some("chef_tls"), "{done:?}");
    eprintln!(
        "order {n} ready over TLS in {:.1} s",
        began.elapsed().as_secs_f64()
    );
    kitchen.stop().await;
    order.stop().await;

    // PostgreSQL: a CA that did not sign the server's certificate, and a host
    // name the certificate does not carry, fail with the handshake's reason.
    let mut wrong_ca = cfg.database.clone();
    wrong_ca.ca_file = other.ca.clone();
    let e = open_err(&wrong_ca).await;
    assert!(
        e.contains("invalid peer certificate") && e.contains("UnknownIssuer"),
        "{e}"
    );
    let mut wrong_host = cfg.database.clone();
    wrong_host.host = Some("127.0.0.1".into());
    let e = open_err(&wrong_host).await;
    assert!(e.contains("not valid for name"), "{e}");
    // verify-ca checks the chain, not the name: the same host is accepted.
    wrong_host.sslmode = PgSslMode::VerifyCa;
    restaurant_system::storage::open(&wrong_host)
        .await
        .expect("verify-ca ignores the host name");
    wrong_host.ca_file = other.ca.clone();
    let e = open_err(&wrong_host).await;
    assert!(
        e.contains("UnknownIssuer"),
        "verify-ca with a wrong CA: {e}"
    );

    // RabbitMQ: the same two mistakes.
    let mut wrong_ca = cfg.rabbitmq.clone();
    wrong_ca.ca_file = other.ca.clone();
    let e = amqp_err(&wrong_ca).await;
    assert!(
        e.contains(&format!("TLS to RabbitMQ at localhost:{}", rabbit.tls_port))
            && e.contains("UnknownIssuer"),
        "{e}"
    );
    let mut wrong_host = cfg.rabbitmq.clone();
    wrong_host.host = "127.0.0.1".into();
    let e = amqp_err(&wrong_host).await;
    assert!(e.contains("not valid for name"), "{e}");
    // And plain AMQP to the TLS port is no way around it: refused too.
    let mut plain = cfg.rabbitmq.clone();
    plain.tls = false;
    assert!(
        tokio::time::timeout(
            Duration::from_secs(10),
            restaurant_system::broker::connect(&plain, "test")
        )
        .await
        .map_or(true, |r| r.is_err()),
        "plain AMQP to the TLS listener connected"
    );

    // The real binary, a kitchen worker whose CA file is wrong: it logs why,
    // keeps retrying (no panic, no exit), and never logs the password.
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "").expect("empty config");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_restaurant-system"));
    cmd.arg("--config")
        .arg(&empty)
        .args(["--mode=kitchen-worker", "--worker-name=chef_wrong_ca"])
        .env("RESTAURANT_LOG__LEVEL", "debug")
        .env("RESTAURANT_HTTP__BIND", "127.0.0.1")
        .env("RESTAURANT_MQTT__ENABLED", "false")
        .env("RESTAURANT_DATABASE__BACKEND", "postgres")
        .env("RESTAURANT_DATABASE__HOST", "localhost")
        .env("RESTAURANT_DATABASE__PORT", pg.port.to_string())
        .env("RESTAURANT_DATABASE__USER", "postgres")
        .env("RESTAURANT_DATABASE__PASSWORD", &pg_password)
        .env("RESTAURANT_DATABASE__DATABASE", "postgres")
        .env("RESTAURANT_DATABASE__SSLMODE", "verify-full")
        .env("RESTAURANT_DATABASE__CA_FILE", &good.ca)
        .env("RESTAURANT_RABBITMQ__HOST", "localhost")
        .env("RESTAURANT_RABBITMQ__PORT", rabbit.tls_port.to_string())
        .env("RESTAURANT_RABBITMQ__USER", "guest")
        .env("RESTAURANT_RABBITMQ__PASSWORD", RABBIT_PASSWORD)
        .env("RESTAURANT_RABBITMQ__TLS", "true")
        .env("RESTAURANT_RABBITMQ__CA_FILE", &other.ca);
    let mut proc = Proc::spawn("kitchen worker, wrong CA", cmd);
    let failed = proc
        .wait_log(
            "rabbitmq_connection_failed",
            Duration::from_secs(30),
            |_| true,
        )
        .await;
    let why = failed["error"].to_string();
    assert!(
        why.contains("TLS to RabbitMQ") && why.contains("UnknownIssuer"),
        "{failed}"
    );
    proc.wait_log("retry_attempted", Duration::from_secs(30), |v| {
        v["details"]["error"].to_string().contains("UnknownIssuer")
    })
    .await;
    assert!(
        proc.child.try_wait().expect("try_wait").is_none(),
        "the worker exited instead of retrying:\n{}",
        proc.stderr().join("\n")
    );
    proc.stop().await;
    for line in proc.stdout().iter().chain(proc.stderr().iter()) {
        assert!(
            !line.contains(RABBIT_PASSWORD) && !line.contains(&pg_password),
            "a password in the log: {line}"
        );
        assert!(!line.contains("panicked"), "{line}");
    }
}

/// What `start` returns, and how many seconds it took.
fn timed<T>(start: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    (start(), t.elapsed().as_secs_f64())
}

/// Opening the store must fail; its error, as an operator reads it.
async fn open_err(db: &restaurant_system::process::config::DatabaseConfig) -> String {
    match restaurant_system::storage::open(db).await {
        Ok(_) => panic!("connected with {:?} / {:?}", db.sslmode, db.ca_file),
        Err(e) => error_chain(&e),
    }
}

async fn amqp_err(cfg: &restaurant_system::process::config::RabbitConfig) -> String {
    match restaurant_system::broker::connect(cfg, "test").await {
        Ok(_) => panic!("connected to {} with {:?}", cfg.host, cfg.ca_file),
        Err(e) => error_chain(&e),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut next = e.source();
    while let Some(c) = next {
        s.push_str(": ");
        s.push_str(&c.to_string());
        next = c.source();
    }
    s
}
