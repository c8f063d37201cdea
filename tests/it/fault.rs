//! The fault suite (issue 6), scenarios 1-3: a server restarts or a worker is
//! killed while orders pour in, and still no order is lost and no transition
//! happens twice. Scenario 4 (issue 14): the order service dies between an
//! order's commit and its answer (failpoint `crash_after_commit`), or
//! PostgreSQL restarts, under load whose clients retry with an
//! `Idempotency-Key`: every order is stored exactly once.
//!
//!   bash tests/fault/run.sh
//!   cargo test --test it fault:: -- --ignored --test-threads=1 --nocapture
//!
//! The tests are `#[ignore]`d so that the ordinary `cargo test` stays fast:
//! they start private servers (tests/it/common/servers.rs) and the real binary as
//! separate processes (tests/it/fault/harness.rs), take about a minute each, and
//! need root for the private RabbitMQ node. The servers they stop are always
//! their own; the machine's shared PostgreSQL and RabbitMQ only lend a private
//! database and vhost (tests/it/common) where a scenario does not restart them.
//!
//! Each scenario prints one summary line, e.g.
//! `fault broker-restart [postgres]: placed=300 accepted=300 ready=300 lost=0 duplicate_transitions=0 ...`
//! (also appended to target/tmp/fault-summary.txt); process logs are kept in
//! target/tmp/fault-logs/<scenario>/.
use crate::common;
mod harness;

use common::servers::{free_port, PrivatePostgres, PrivateRabbit};
use common::{Backend, TestEnv};
use harness::{
    check_idle, check_running, doubled, notification_counts, place_orders, place_orders_keyed,
    stop_all, wait_unhealthy, Answer, Db, Keyed, Placed, Proc, Report, Setup,
};
use restaurant_system::process::config::{Secret, StorageBackend};
use std::collections::HashSet;
use std::future::Future;
use std::time::{Duration, Instant};

/// Orders per scenario, and the steady rate they are placed at (per second).
const ORDERS: usize = 300;
const RATE: f64 = 50.0;
/// The broker takes 4-15 s to restart; slower, longer load keeps orders
/// coming before, during and after the outage.
const BROKER_ORDERS: usize = 400;
const BROKER_RATE: f64 = 40.0;
/// Two database outages of about 2 s each within 10 s of load.
const DB_ORDERS: usize = 400;
const DB_RATE: f64 = 40.0;
/// No scenario may take longer; on timeout every process and server it
/// started is stopped by the destructors.
const SCENARIO_LIMIT: Duration = Duration::from_secs(240);
/// How long all accepted orders get to reach ready after the load.
const READY_LIMIT: Duration = Duration::from_secs(120);

/// One scenario at a time, even without --test-threads=1: they measure timing
/// and share two cores. (A tokio mutex: no poisoning when a scenario fails.)
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn bounded(what: &str, scenario: impl Future<Output = ()>) {
    if tokio::time::timeout(SCENARIO_LIMIT, scenario)
        .await
        .is_err()
    {
        panic!("{what} did not finish within {SCENARIO_LIMIT:?}");
    }
}

fn label(b: Backend) -> &'static str {
    match b {
        Backend::Postgres => "postgres",
        Backend::Sqlite => "sqlite",
    }
}

/// After the load: the processes must have survived the fault and sit idle;
/// then they are stopped. The three outcomes are what `assert_common` judges.
async fn check_and_stop(mut procs: Vec<&mut Proc>) -> [Result<(), String>; 3] {
    let running = check_running(&mut procs);
    let idle = match running {
        Ok(()) => {
            let all: Vec<&Proc> = procs.iter().map(|p| &**p).collect();
            check_idle(&all).await
        }
        Err(_) => Ok(()),
    };
    let stopped = stop_all(procs).await;
    [running, idle, stopped]
}

fn accepted_numbers(placed: &[Placed]) -> HashSet<String> {
    placed
        .iter()
        .filter_map(|p| match &p.answer {
            Answer::Accepted(n) => Some(n.clone()),
            _ => None,
        })
        .collect()
}

/// Runs a blocking server operation off the async threads (the load keeps
/// going meanwhile) and hands the server back.
async fn blocking<T: Send + 'static>(v: T, f: impl FnOnce(&mut T) + Send + 'static) -> T {
    tokio::task::spawn_blocking(move || {
        let mut v = v;
        f(&mut v);
        v
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

async fn order_service(setup: &Setup) -> (Proc, String) {
    let port = free_port().to_string();
    let p = setup
        .start("order-service", &["--mode=order-service", "--port", &port])
        .await;
    (p, format!("http://127.0.0.1:{port}"))
}

async fn kitchen(setup: &Setup, name: &str, extra: &[&str]) -> Proc {
    let worker = format!("--worker-name={name}");
    let mut args = vec!["--mode=kitchen-worker", worker.as_str()];
    args.extend_from_slice(extra);
    setup.start(name, &args).await
}

/// The checks every scenario shares, after the report line is printed.
fn assert_common(r: &Report, outcome: &[Result<(), String>]) {
    for o in outcome {
        if let Err(e) = o {
            panic!("{}: {e}", r.line());
        }
    }
    let p = r.problems();
    assert_eq!(r.lost, 0, "accepted orders did not reach ready:\n{p}");
    assert_eq!(
        r.duplicate_transitions, 0,
        "transitions were logged twice:\n{p}"
    );
    assert_eq!(r.missing_transitions, 0, "log rows are missing:\n{p}");
    assert_eq!(r.half_written, 0, "half-written orders:\n{p}");
    assert_eq!(
        r.bad_answers, 0,
        "answers other than 200 or 503 + Retry-After:\n{p}"
    );
    assert_eq!(
        r.stray, 0,
        "orders stored although the API did not accept them:\n{p}"
    );
}

// ---------------------------------------------------------------------------
// 1. Broker restart under load

#[derive(Debug, Clone, Copy)]
enum Restart {
    /// `rabbitmqctl stop_app` / `start_app`: the Erlang node stays up.
    App,
    /// SIGKILL to the node's Erlang VM (a crash: no connection is closed
    /// politely), then the server process started again.
    Kill,
}

async fn broker_restart(b: Backend, how: Restart) {
    let mut env = TestEnv::new(b);
    let rabbit = tokio::task::spawn_blocking(PrivateRabbit::start)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let cfg = &mut env.cfg;
    cfg.rabbitmq.host = "127.0.0.1".into();
    cfg.rabbitmq.port = rabbit.port;
    cfg.rabbitmq.vhost = "/".into();
    cfg.rabbitmq.user = "guest".into();
    cfg.rabbitmq.password = Secret::new("guest");
    cfg.kitchen.cooking_seconds.dine_in = 0.3;
    cfg.kitchen.cooking_seconds.takeout = 0.2;
    cfg.kitchen.cooking_seconds.delivery = 0.4;
    let cfg = env.cfg.clone();
    let setup = Setup::new(&format!("broker-restart-{}", label(b)), &cfg);
    let (mut order, url) = order_service(&setup).await;
    let mut chef_a = kitchen(&setup, "chef_a", &["--prefetch=10"]).await;
    let mut chef_b = kitchen(&setup, "chef_b", &["--prefetch=10"]).await;

    let load = tokio::spawn(place_orders(url.clone(), BROKER_ORDERS, BROKER_RATE));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let down_at = Instant::now();
    let rabbit = blocking(rabbit, move |r| match how {
        Restart::App => r.stop_app(),
        Restart::Kill => r.kill_node(),
    })
    .await;
    let health = wait_unhealthy(&format!("{url}/health"), "rabbitmq", Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _rabbit = blocking(rabbit, move |r| match how {
        Restart::App => r.start_app(),
        Restart::Kill => r.start_node(),
    })
    .await;
    let outage = down_at.elapsed();
    let placed = load.await.expect("load task");

    let db = Db::of(&cfg);
    let accepted = accepted_numbers(&placed);
    let waited = Instant::now();
    db.wait_ready(&accepted, READY_LIMIT).await;
    let settle = format!("{:.1}", waited.elapsed().as_secs_f64());
    let outcome = check_and_stop(vec![&mut order, &mut chef_a, &mut chef_b]).await;
    let facts = db.orders().await.expect("reading the final orders");
    let r = Report::new("broker-restart", label(b), &placed, &facts)
        .with("restart", format!("{how:?}").to_lowercase())
        .with("outage_s", format!("{:.1}", outage.as_secs_f64()))
        .with("health_503_during_outage", health.is_ok())
        .with("all_ready_after_load_s", &settle);
    r.print();
    assert_common(&r, &outcome);
    assert_eq!(
        r.accepted,
        r.placed,
        "POST /orders must answer 200 while RabbitMQ is down:\n{}",
        r.problems()
    );
    if let Err(last) = health {
        panic!("order-service /health did not report RabbitMQ down during the outage; last answer: {last}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite (private servers, about a minute): run tests/fault/run.sh"]
async fn broker_restart_postgres() {
    let _one = SERIAL.lock().await;
    bounded(
        "broker-restart [postgres]",
        broker_restart(Backend::Postgres, Restart::App),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite (private servers, about a minute): run tests/fault/run.sh"]
async fn broker_restart_sqlite() {
    let _one = SERIAL.lock().await;
    bounded(
        "broker-restart [sqlite]",
        broker_restart(Backend::Sqlite, Restart::Kill),
    )
    .await;
}

// ---------------------------------------------------------------------------
// 2. Database restart under load (PostgreSQL)

/// A TestEnv (its RabbitMQ vhost and temp dir) whose database is a private
/// PostgreSQL cluster of its own, which the scenario may restart.
async fn env_on_private_postgres() -> (TestEnv, PrivatePostgres) {
    let mut env = TestEnv::new(Backend::Sqlite);
    let pg = tokio::task::spawn_blocking(PrivatePostgres::start)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let d = &mut env.cfg.database;
    d.backend = StorageBackend::Postgres;
    d.host = Some("127.0.0.1".into());
    d.port = pg.port;
    d.user = "postgres".into();
    d.password = None;
    d.database = "postgres".into();
    (env, pg)
}

async fn db_restart() {
    let (env, pg) = env_on_private_postgres().await;
    let cfg = env.cfg.clone();
    let setup = Setup::new("db-restart-postgres", &cfg);
    let (mut order, url) = order_service(&setup).await;
    let mut chef_a = kitchen(&setup, "chef_a", &["--prefetch=10"]).await;
    let mut chef_b = kitchen(&setup, "chef_b", &["--prefetch=10"]).await;

    // Two outages: a clean restart (`fast`: clients are disconnected) and a
    // crash (`immediate`: recovery from the WAL at the next start).
    let started = tokio::time::Instant::now();
    let load = tokio::spawn(place_orders(url.clone(), DB_ORDERS, DB_RATE));
    let mut pg = pg;
    let mut outages = Vec::new();
    let mut health = Ok(String::new());
    for (at, mode) in [(1.5, "fast"), (6.0, "immediate")] {
        tokio::time::sleep_until(started + Duration::from_secs_f64(at)).await;
        let down_at = Instant::now();
        pg = blocking(pg, move |pg| pg.stop_server(mode)).await;
        let h = wait_unhealthy(&format!("{url}/health"), "database", Duration::from_secs(5)).await;
        if health.is_ok() {
            health = h;
        }
        tokio::time::sleep_until((down_at + Duration::from_secs(2)).into()).await;
        pg = blocking(pg, |pg| pg.start_server()).await;
        outages.push(format!("{:.1}", down_at.elapsed().as_secs_f64()));
    }
    let placed = load.await.expect("load task");

    let db = Db::of(&cfg);
    let accepted = accepted_numbers(&placed);
    let waited = Instant::now();
    db.wait_ready(&accepted, READY_LIMIT).await;
    let settle = format!("{:.1}", waited.elapsed().as_secs_f64());
    let outcome = check_and_stop(vec![&mut order, &mut chef_a, &mut chef_b]).await;
    let facts = db.orders().await.expect("reading the final orders");
    let r = Report::new("db-restart", "postgres", &placed, &facts);
    let (refused, bad, stray, half) = (r.refused_503, r.bad_answers, r.stray, r.half_written);
    let r = r
        .with("refused_503", refused)
        .with("other_answers", bad)
        .with("refused_but_stored", stray)
        .with("half_written", half)
        .with("restarts", "fast,immediate")
        .with("outage_s", outages.join(","))
        .with("health_503_during_outage", health.is_ok())
        .with("all_ready_after_load_s", &settle);
    r.print();
    if r.lost > 0 || r.stray > 0 {
        eprintln!("private PostgreSQL log:\n{}", pg.log_tail(40));
    }
    assert_common(&r, &outcome);
    assert!(
        r.refused_503 > 0,
        "no order was refused while PostgreSQL was down: the outage was not exercised"
    );
    if let Err(last) = health {
        panic!("order-service /health did not report the database down during the outage; last answer: {last}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite (private servers, about a minute): run tests/fault/run.sh"]
async fn db_restart_postgres() {
    let _one = SERIAL.lock().await;
    bounded("db-restart [postgres]", db_restart()).await;
}

// ---------------------------------------------------------------------------
// 3. Worker SIGKILL mid-cooking, repeatedly, with a second worker running

const KILLS: usize = 3;

async fn worker_sigkill(b: Backend) {
    let mut env = TestEnv::new(b);
    let c = &mut env.cfg.kitchen.cooking_seconds;
    (c.dine_in, c.takeout, c.delivery) = (0.5, 0.4, 0.5);
    let cfg = env.cfg.clone();
    let setup = Setup::new(&format!("worker-sigkill-{}", label(b)), &cfg);
    let db = Db::of(&cfg);
    let (mut order, url) = order_service(&setup).await;
    let mut notifier = setup
        .start("notifier", &["--mode=notification-subscriber"])
        .await;
    // chef_a heartbeats every second, so 2 s after a kill its row is stale.
    let a_args = ["--prefetch=5", "--heartbeat-interval=1"];
    let mut chef_a = kitchen(&setup, "chef_a", &a_args).await;
    let mut chef_b = kitchen(&setup, "chef_b", &["--prefetch=5"]).await;

    let load = tokio::spawn(place_orders(url.clone(), ORDERS, RATE));
    let mut in_hand = Vec::new();
    let mut restarts = Vec::new();
    for _ in 0..KILLS {
        // Mid-cooking: chef_a has orders in 'cooking' right now.
        let deadline = Instant::now() + Duration::from_secs(30);
        let cooking = loop {
            let n = db
                .orders()
                .await
                .unwrap_or_default()
                .iter()
                .filter(|f| f.status == "cooking" && f.processed_by.as_deref() == Some("chef_a"))
                .count();
            if n > 0 {
                break n;
            }
            assert!(
                Instant::now() < deadline,
                "chef_a never had an order in 'cooking' to be killed over"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        chef_a.kill9();
        let killed = Instant::now();
        in_hand.push(cooking.to_string());
        // Stale after 2 heartbeat intervals; the same name then takes over.
        tokio::time::sleep(Duration::from_millis(2300)).await;
        chef_a = kitchen(&setup, "chef_a", &a_args).await;
        restarts.push(format!("{:.1}", killed.elapsed().as_secs_f64()));
        let log = chef_a.log_text();
        assert!(
            log.contains("stale_since"),
            "the restarted chef_a did not report taking over its stale registration:\n{}",
            chef_a.log_tail(20)
        );
    }
    let placed = load.await.expect("load task");

    let accepted = accepted_numbers(&placed);
    let waited = Instant::now();
    db.wait_ready(&accepted, READY_LIMIT).await;
    let settle = format!("{:.1}", waited.elapsed().as_secs_f64());
    // Every notification published (a killed relay's lease can hold rows 30 s).
    let draining = Instant::now();
    let drained = db.wait_outbox_empty(Duration::from_secs(45)).await;
    let drain = format!("{:.1}", draining.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let outcome = check_and_stop(vec![&mut order, &mut notifier, &mut chef_a, &mut chef_b]).await;
    let facts = db.orders().await.expect("reading the final orders");

    let counts = notification_counts(&notifier.log_text());
    let mut duplicate_notifications = 0;
    let mut missing_notifications = 0;
    for n in &accepted {
        for to in ["cooking", "ready"] {
            match counts.get(&(n.clone(), to.to_string())) {
                None => missing_notifications += 1,
                Some(c) => duplicate_notifications += c - 1,
            }
        }
    }
    let mut r = Report::new("worker-sigkill", label(b), &placed, &facts)
        .with("kills", KILLS)
        .with("cooking_at_kill", in_hand.join("+"))
        .with("restarted_after_s", restarts.join(","))
        .with("duplicate_notifications", duplicate_notifications)
        .with("missing_notifications", missing_notifications)
        .with("all_ready_after_load_s", &settle)
        .with("outbox_empty_after_s", &drain);
    if !drained {
        r.note("the outbox did not drain within 45 s".into());
    }
    r.print();
    assert_common(&r, &outcome);
    assert_eq!(r.accepted, r.placed, "orders refused:\n{}", r.problems());
    assert_eq!(
        duplicate_notifications, 0,
        "a transition was notified twice"
    );
    assert!(
        drained && missing_notifications == 0,
        "{missing_notifications} notifications never arrived (outbox drained: {drained})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite (about a minute): run tests/fault/run.sh"]
async fn worker_sigkill_postgres() {
    let _one = SERIAL.lock().await;
    bounded(
        "worker-sigkill [postgres]",
        worker_sigkill(Backend::Postgres),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite (about a minute): run tests/fault/run.sh"]
async fn worker_sigkill_sqlite() {
    let _one = SERIAL.lock().await;
    bounded("worker-sigkill [sqlite]", worker_sigkill(Backend::Sqlite)).await;
}

// ---------------------------------------------------------------------------
// 4. Idempotent retries (issue 14): the process or the database dies between
//    the commit and the answer; clients retry with their Idempotency-Key

const KEYED_ORDERS: usize = 120;
const KEYED_RATE: f64 = 30.0;
/// The order service aborts right after this many intake commits.
const CRASH_AT_COMMIT: usize = 40;
/// How long a client keeps retrying one order.
const RETRY_LIMIT: Duration = Duration::from_secs(60);

/// The checks both keyed scenarios share: every request ended in a 200, every
/// order is stored exactly once and reached ready, the answer names it.
fn assert_keyed(
    r: &Report,
    outcome: &[Result<(), String>],
    keyed: &[Keyed],
    facts: &[harness::OrderFacts],
) {
    assert_common(r, outcome);
    let p = r.problems();
    assert_eq!(
        r.accepted, r.placed,
        "a keyed order never got its 200:\n{p}"
    );
    assert_eq!(doubled(facts), 0, "an order was stored twice:\n{p}");
    assert_eq!(
        facts.len(),
        keyed.len(),
        "orders in the database vs requests:\n{p}"
    );
}

fn keyed_report(
    scenario: &str,
    backend: &str,
    keyed: &[Keyed],
    facts: &[harness::OrderFacts],
) -> Report {
    let placed: Vec<Placed> = keyed.iter().map(|k| k.placed.clone()).collect();
    let retried = keyed.iter().filter(|k| k.attempts > 1).count();
    let requests: usize = keyed.iter().map(|k| k.attempts).sum();
    let replayed = keyed.iter().filter(|k| k.replayed).count();
    Report::new(scenario, backend, &placed, facts)
        .with("orders_in_db", facts.len())
        .with("doubled", doubled(facts))
        .with("requests", requests)
        .with("retried_orders", retried)
        .with("answered_by_replay", replayed)
}

/// The order service aborts (failpoint `crash_after_commit`) right after an
/// order's commit, before its answer; its clients get no answer, retry with
/// their keys against the restarted service, and get their orders: the ones
/// committed before the crash as replays, none lost, none doubled.
async fn crash_after_commit(b: Backend) {
    let mut env = TestEnv::new(b);
    let c = &mut env.cfg.kitchen.cooking_seconds;
    (c.dine_in, c.takeout, c.delivery) = (0.1, 0.1, 0.1);
    let cfg = env.cfg.clone();
    let mut setup = Setup::new(&format!("crash-after-commit-{}", label(b)), &cfg);
    let db = Db::of(&cfg);
    let failpoint = format!("crash_after_commit:{CRASH_AT_COMMIT}");
    setup.set_env("RESTAURANT_FAILPOINT", Some(&failpoint));
    let (mut doomed, url) = order_service(&setup).await;
    setup.set_env("RESTAURANT_FAILPOINT", None);
    let mut chef = kitchen(&setup, "chef_a", &["--prefetch=10"]).await;

    let (tx, rx) = tokio::sync::watch::channel(url);
    let load = tokio::spawn(place_orders_keyed(
        rx,
        KEYED_ORDERS,
        KEYED_RATE,
        RETRY_LIMIT,
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = doomed.exit_status() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the order service did not reach its failpoint"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let died = Instant::now();
    let (mut order, url) = order_service(&setup).await;
    let restart = format!("{:.1}", died.elapsed().as_secs_f64());
    tx.send(url).expect("the load is listening");
    let keyed = load.await.expect("load task");

    let accepted: HashSet<String> = keyed
        .iter()
        .filter_map(|k| match &k.placed.answer {
            Answer::Accepted(n) => Some(n.clone()),
            _ => None,
        })
        .collect();
    let waited = Instant::now();
    db.wait_ready(&accepted, READY_LIMIT).await;
    let settle = format!("{:.1}", waited.elapsed().as_secs_f64());
    let outcome = check_and_stop(vec![&mut order, &mut chef]).await;
    let facts = db.orders().await.expect("reading the final orders");
    use std::os::unix::process::ExitStatusExt;
    let r = keyed_report("crash-after-commit", label(b), &keyed, &facts)
        .with("failpoint", &failpoint)
        .with("died_by_signal", status.signal().unwrap_or(0))
        .with("restarted_after_s", &restart)
        .with("all_ready_after_load_s", &settle);
    r.print();
    assert_keyed(&r, &outcome, &keyed, &facts);
    assert_eq!(
        status.signal(),
        Some(nix::sys::signal::Signal::SIGABRT as i32),
        "the order service should have aborted at its failpoint: {status}"
    );
    assert!(
        keyed.iter().any(|k| k.replayed && k.attempts > 1),
        "no retry was answered by a replay: the crash did not fall between a commit and its answer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite (about a minute): run tests/fault/run.sh"]
async fn crash_after_commit_postgres() {
    let _one = SERIAL.lock().await;
    bounded(
        "crash-after-commit [postgres]",
        crash_after_commit(Backend::Postgres),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite (about a minute): run tests/fault/run.sh"]
async fn crash_after_commit_sqlite() {
    let _one = SERIAL.lock().await;
    bounded(
        "crash-after-commit [sqlite]",
        crash_after_commit(Backend::Sqlite),
    )
    .await;
}

/// PostgreSQL restarts twice (fast, then immediate: a crash) under keyed load
/// whose clients retry every 503 and lost answer with their keys: every order
/// is stored exactly once and every client ends with its order.
async fn db_restart_keyed() {
    let (mut env, pg) = env_on_private_postgres().await;
    let c = &mut env.cfg.kitchen.cooking_seconds;
    (c.dine_in, c.takeout, c.delivery) = (0.1, 0.1, 0.1);
    let cfg = env.cfg.clone();
    let setup = Setup::new("db-restart-keyed-postgres", &cfg);
    let (mut order, url) = order_service(&setup).await;
    let mut chef = kitchen(&setup, "chef_a", &["--prefetch=10"]).await;

    let started = tokio::time::Instant::now();
    let (_tx, rx) = tokio::sync::watch::channel(url);
    let load = tokio::spawn(place_orders_keyed(
        rx,
        KEYED_ORDERS,
        KEYED_RATE,
        RETRY_LIMIT,
    ));
    let mut pg = pg;
    let mut outages = Vec::new();
    for (at, mode) in [(1.0, "fast"), (3.5, "immediate")] {
        tokio::time::sleep_until(started + Duration::from_secs_f64(at)).await;
        let down_at = Instant::now();
        pg = blocking(pg, move |pg| pg.stop_server(mode)).await;
        tokio::time::sleep_until((down_at + Duration::from_secs(2)).into()).await;
        pg = blocking(pg, |pg| pg.start_server()).await;
        outages.push(format!("{:.1}", down_at.elapsed().as_secs_f64()));
    }
    let keyed = load.await.expect("load task");

    let db = Db::of(&cfg);
    let accepted: HashSet<String> = keyed
        .iter()
        .filter_map(|k| match &k.placed.answer {
            Answer::Accepted(n) => Some(n.clone()),
            _ => None,
        })
        .collect();
    let waited = Instant::now();
    db.wait_ready(&accepted, READY_LIMIT).await;
    let settle = format!("{:.1}", waited.elapsed().as_secs_f64());
    let outcome = check_and_stop(vec![&mut order, &mut chef]).await;
    let facts = db.orders().await.expect("reading the final orders");
    let r = keyed_report("db-restart-keyed", "postgres", &keyed, &facts)
        .with("restarts", "fast,immediate")
        .with("outage_s", outages.join(","))
        .with("all_ready_after_load_s", &settle);
    r.print();
    if r.lost > 0 || r.stray > 0 || doubled(&facts) > 0 {
        eprintln!("private PostgreSQL log:\n{}", pg.log_tail(40));
    }
    assert_keyed(&r, &outcome, &keyed, &facts);
    assert!(
        keyed.iter().any(|k| k.attempts > 1),
        "no request was retried: the outages were not exercised"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite (private servers, about a minute): run tests/fault/run.sh"]
async fn db_restart_keyed_postgres() {
    let _one = SERIAL.lock().await;
    bounded("db-restart-keyed [postgres]", db_restart_keyed()).await;
}

// ---------------------------------------------------------------------------
// The duplicate the SIGKILL scenario can produce, made on purpose

/// A relay killed after the broker took a notification but before it deleted
/// the outbox row publishes it again when its lease runs out (the SIGKILL
/// scenario hits this now and then). The subscriber must show it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_publish_is_notified_once() {
    use restaurant_system::broker::lapin::options::BasicPublishOptions;
    use restaurant_system::broker::lapin::BasicProperties;
    use restaurant_system::domain::events::StatusUpdate;
    use restaurant_system::domain::events::NOTIFICATIONS_EXCHANGE;
    use restaurant_system::domain::{OrderStatus, OrderType};

    let env = TestEnv::new(Backend::Sqlite);
    let setup = Setup::new("duplicate-publish", &env.cfg);
    let mut notifier = setup
        .start("notifier", &["--mode=notification-subscriber"])
        .await;
    let ch = env.amqp().await;
    let update = |n: &str, version: i64| StatusUpdate {
        order_number: n.into(),
        old_status: OrderStatus::Received,
        new_status: OrderStatus::Cooking,
        changed_by: "chef_a".into(),
        timestamp: chrono::Utc::now(),
        estimated_completion: None,
        version,
        order_type: Some(OrderType::Takeout),
    };
    let twice = update("ORD_20240101_001", 2);
    let marker = update("ORD_20240101_002", 2);
    for u in [&twice, &twice, &marker] {
        let body = serde_json::to_vec(u).expect("json");
        ch.basic_publish(
            NOTIFICATIONS_EXCHANGE.into(),
            "".into(),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default().with_message_id(u.event_id().as_str().into()),
        )
        .await
        .expect("publish")
        .await
        .expect("publish");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !notifier.log_text().contains("ORD_20240101_002") {
        assert!(
            Instant::now() < deadline,
            "the subscriber printed nothing:\n{}",
            notifier.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let counts = notification_counts(&notifier.log_text());
    stop_all(vec![&mut notifier]).await.expect("stopping");
    assert_eq!(
        counts.get(&("ORD_20240101_001".to_string(), "cooking".to_string())),
        Some(&1),
        "one transition published twice must be notified once: {counts:?}"
    );
}

// ---------------------------------------------------------------------------
// A fatal end restarts (issue 22)

/// A link that retrying cannot fix (the broker allows one channel per
/// connection; the kitchen consumer needs two, lapin's `ChannelsLimitReached`)
/// used to leave a quiet worker: exit 0 at start-up, a live process without a
/// consumer after it. Now the worker stops cleanly and exits 1 either way, so
/// systemd's Restart=on-failure restarts it.
async fn fatal_end_exits_non_zero() {
    use futures_util::FutureExt;
    let mut env = TestEnv::new(Backend::Sqlite);
    let rabbit = tokio::task::spawn_blocking(PrivateRabbit::start)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let cfg = &mut env.cfg;
    cfg.rabbitmq.host = "127.0.0.1".into();
    cfg.rabbitmq.port = rabbit.port;
    cfg.rabbitmq.vhost = "/".into();
    cfg.rabbitmq.user = "guest".into();
    cfg.rabbitmq.password = Secret::new("guest");
    let cfg = env.cfg.clone();
    let setup = Setup::new("fatal-end", &cfg);
    let mut chef = kitchen(&setup, "chef_f", &[]).await;

    // After start-up: the broker comes back allowing one channel per connection.
    let _rabbit = blocking(rabbit, |r| {
        r.kill_node();
        r.add_config("channel_max = 1");
        r.start_node();
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(s) = chef.exit_status() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the worker kept running with a consumer that stopped for good:\n{}",
            chef.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status.code(), Some(1), "{}", chef.log_tail(30));
    let log = chef.log_text();
    assert!(log.contains("\"service_failed\""), "{}", chef.log_tail(30));
    assert!(
        log.contains("\"worker_offline\""),
        "stopped cleanly: {}",
        chef.log_tail(30)
    );

    // At start-up: the same fault fails the start with 1, not 0.
    let started = std::panic::AssertUnwindSafe(kitchen(&setup, "chef_f", &[]))
        .catch_unwind()
        .await;
    let Err(panic) = started else {
        panic!("the worker started with a consumer that cannot work");
    };
    let msg = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains("exited during start-up (exit status: 1)"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite (private servers, about a minute): run tests/fault/run.sh"]
async fn fatal_end_exits_non_zero_sqlite() {
    let _one = SERIAL.lock().await;
    bounded("fatal-end", fatal_end_exits_non_zero()).await;
}
