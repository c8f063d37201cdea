//! A former primary back writable inside a failover (issue 25: the three-box
//! test lost 759 orders answered 200 that way) gets no order when our
//! services ask pg_auto_failover's monitor (`[cluster] monitor`), and does
//! without it. On a real formation (`PrivateFormation`): a monitor and two
//! nodes run by pg_autoctl on this host.
use crate::common::servers::PrivateFormation;
use crate::common::{Backend, TestEnv};
use crate::multibox::{guest, pos_load, Answer};
use restaurant_system::modes::Mode;
use restaurant_system::process::config::StorageBackend;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The monitor's goal states in which node `a` is no longer the primary.
fn a_demoted(states: &str) -> bool {
    [
        "a:primary/draining",
        "a:primary/demote_timeout",
        "a:primary/demoted",
    ]
    .iter()
    .any(|s| states.contains(s))
}

struct Outcome {
    answers: Vec<Answer>,
    /// When the monitor had b promoted.
    promoted: Instant,
    /// Order numbers on the old primary `a` and not on the new one: taken
    /// after the cut, lost when `a` is rewound.
    only_on_a: BTreeSet<String>,
    on_b: BTreeSet<String>,
    /// What `pgautofailover.get_primary()` said while the failover ran.
    get_primary_midway: String,
}

/// Orders flow; node a (the primary) loses power; once the monitor has begun
/// the failover, a's PostgreSQL comes back alone, writable (as its keeper
/// starts it before asking the monitor); b is promoted; orders go on for a
/// while.
async fn returning_primary(with_monitor: bool) -> Outcome {
    let f = Arc::new(
        tokio::task::spawn_blocking(PrivateFormation::start)
            .await
            .expect("starting the pg_auto_failover formation"),
    );
    f.node_sql(0, "postgres", "create database restaurant");
    let mut env = TestEnv::new(Backend::Postgres);
    env.cfg.database.backend = StorageBackend::Postgres;
    env.cfg.database.host = None;
    env.cfg.database.password = None;
    // a first: the driver's pick when both take writes.
    env.cfg.database.url = Some(format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/restaurant?target_session_attrs=read-write",
        f.ports[0], f.ports[1]
    ));
    if with_monitor {
        env.cfg.cluster.monitor = Some(format!(
            "postgres://restaurant_monitor@127.0.0.1:{}/pg_auto_failover",
            f.monitor_port
        ));
    }
    let orders = env.start(Mode::OrderService, None).await;
    let url = orders.order_url();
    let http = reqwest::Client::new();
    let stop = tokio_util::sync::CancellationToken::new();
    let load = pos_load(&http, &url, &stop);
    tokio::time::sleep(Duration::from_secs(3)).await;

    let g = f.clone();
    let (get_primary_midway, returned) = tokio::task::spawn_blocking(move || {
        let cut = Instant::now();
        g.cut(0);
        let states = g.wait_states(
            "failover begun (a no longer the primary)",
            Duration::from_secs(60),
            a_demoted,
        );
        let midway = g
            .psql(
                g.monitor_port,
                "pg_auto_failover",
                "select primary_name || ' ' || primary_port from pgautofailover.get_primary('default', 0)",
            )
            .unwrap_or_else(|e| e.lines().last().unwrap_or_default().to_string());
        println!(
            "failover begun {:?} after the cut: {states}",
            cut.elapsed()
        );
        g.start_alone(0);
        println!("a back alone {:?} after the cut", cut.elapsed());
        (midway, Instant::now())
    })
    .await
    .expect("cutting node a");
    assert_eq!(
        f.node_sql(0, "postgres", "select pg_is_in_recovery()"),
        "f",
        "node a came back read-write"
    );
    let g = f.clone();
    let states = tokio::task::spawn_blocking(move || {
        g.wait_states("b promoted", Duration::from_secs(60), |s| {
            s.contains("b:wait_primary/wait_primary") || s.contains("b:primary/primary")
        })
    })
    .await
    .expect("waiting for b");
    let promoted = Instant::now();
    println!(
        "b promoted {:?} after a came back: {states}",
        returned.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.cancel();
    let answers = load.await.expect("the POS load");
    orders.stop().await;

    let numbers = |i: usize| -> BTreeSet<String> {
        f.node_sql(i, "restaurant", "select number from orders")
            .lines()
            .map(str::to_string)
            .collect()
    };
    let (on_a, on_b) = (numbers(0), numbers(1));
    Outcome {
        answers,
        promoted,
        only_on_a: on_a.difference(&on_b).cloned().collect(),
        on_b,
        get_primary_midway,
    }
}

fn summary(o: &Outcome) -> String {
    let count = |s: u16| o.answers.iter().filter(|a| a.2 == s).count();
    let after = o.answers.iter().filter(|a| a.0 > o.promoted);
    let first_200 = after
        .clone()
        .find(|a| a.2 == 200)
        .map(|a| a.0.duration_since(o.promoted));
    format!(
        "{} requests: {} answered 200, {} 503, {} no answer, {} other; after b's promotion: first 200 after {:?}, {} answered 503; {} orders only on the old primary; get_primary() midway: {}",
        o.answers.len(),
        count(200),
        count(503),
        count(0),
        o.answers.iter().filter(|a| ![200, 503, 0].contains(&a.2)).count(),
        first_200,
        after.filter(|a| a.2 == 503).count(),
        o.only_on_a.len(),
        o.get_primary_midway,
    )
}

/// With the monitor: no order reaches the returning primary, every order
/// answered 200 is on the new one, and the failover answers 503, never 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_monitor_a_returning_primary_gets_no_order() {
    let o = returning_primary(true).await;
    println!("with the monitor: {}", summary(&o));
    let other: Vec<_> = o
        .answers
        .iter()
        .filter(|a| ![200, 503, 0].contains(&a.2))
        .collect();
    assert!(
        other.is_empty(),
        "only 200 or 503: {:?}",
        &other[..other.len().min(3)]
    );
    assert!(
        o.only_on_a.is_empty(),
        "orders written to the returning primary: {:?}",
        o.only_on_a
    );
    let accepted: Vec<&String> = o
        .answers
        .iter()
        .filter(|a| a.2 == 200)
        .filter_map(|a| a.3.as_ref())
        .collect();
    let missing: Vec<_> = accepted.iter().filter(|n| !o.on_b.contains(**n)).collect();
    assert!(
        missing.is_empty(),
        "{} orders answered 200 are not on the new primary: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(
        o.answers.iter().any(|a| a.2 == 200 && a.0 > o.promoted),
        "no order accepted after b's promotion: {}",
        summary(&o)
    );
}

/// Without it, the same scenario writes to the returning primary: orders
/// answered 200 that its rewind would lose (the hole is real, and the test
/// above can see it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_monitor_a_returning_primary_takes_orders() {
    let o = returning_primary(false).await;
    println!("without the monitor: {}", summary(&o));
    let lost = o
        .answers
        .iter()
        .filter(|a| a.2 == 200)
        .filter_map(|a| a.3.as_ref())
        .filter(|n| o.only_on_a.contains(*n))
        .count();
    println!("{lost} orders answered 200 only on the old primary");
    assert!(lost > 0, "the hole did not show: {}", summary(&o));
}

/// A monitor that does not answer (nothing listens on its port) is not a
/// single point of failure: connections go to the first writable host of the
/// URL, as without one, and orders are taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_monitor_falls_back_to_the_url() {
    let mut env = TestEnv::new(Backend::Postgres);
    env.cfg.cluster.monitor = Some(format!(
        "postgres://restaurant_monitor@127.0.0.1:{}/pg_auto_failover",
        crate::common::servers::free_port()
    ));
    let orders = env.start(Mode::OrderService, None).await;
    let http = reqwest::Client::new();
    for i in 0..3 {
        crate::common::place_order(
            &http,
            &orders.order_url(),
            &crate::common::takeout(&format!("Silent monitor {}", guest(i)), 1, 9.5),
        )
        .await;
    }
    orders.stop().await;
}
