//! Several boxes (issue 25, docs/multi-box.md): quorum queues keep the
//! kitchen's priorities and make a second delivery harmless; a multi-box
//! configuration refuses SQLite.
use crate::common::{Backend, TestEnv};
use crate::worker::{concurrent_duplicates_in, priority_order, redelivered_after_ready_in};
use restaurant_system::process::config::QueueType;
use std::process::Command;

fn quorum_env() -> TestEnv {
    let mut env = TestEnv::new(Backend::Postgres);
    env.cfg.rabbitmq.queue_type = QueueType::Quorum;
    env
}

/// `name -> type` of every queue in the test's vhost.
fn queue_types(env: &TestEnv) -> Vec<(String, String)> {
    let out = Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_queues",
            "-p",
            &env.vhost,
            "name",
            "type",
            "exclusive",
        ])
        .output()
        .expect("rabbitmqctl list_queues");
    assert!(
        out.status.success(),
        "rabbitmqctl list_queues: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut v: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            // The notifier's exclusive queues stay transient classic ones.
            (f.len() >= 2 && f[0] != "name" && f.get(2) != Some(&"true"))
                .then(|| (f[0].to_string(), f[1].to_string()))
        })
        .collect();
    v.sort();
    v
}

/// With quorum queues (one per priority, RabbitMQ 3.10 has no priorities in
/// them) a backlog is still cooked 10, then 5, then 1, first come first
/// served within a priority; every durable queue is a quorum queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queues_keep_priorities_under_a_backlog() {
    let env = quorum_env();
    priority_order(&env).await;
    let types = queue_types(&env);
    let names: Vec<&str> = types.iter().map(|(n, _)| n.as_str()).collect();
    for q in [
        "kitchen_takeout_p10_queue",
        "kitchen_takeout_p5_queue",
        "kitchen_takeout_p1_queue",
        "kitchen_dine_in_p1_queue",
        "orders_dlq",
    ] {
        assert!(names.contains(&q), "{q} declared: {types:?}");
    }
    assert!(
        types.iter().all(|(_, t)| t == "quorum"),
        "every durable queue is a quorum queue: {types:?}"
    );
}

/// The default stays what a single box had: classic queues, one per type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_box_keeps_classic_queues() {
    let env = TestEnv::new(Backend::Postgres);
    let _ch = env.amqp_with_topology().await;
    let types = queue_types(&env);
    assert!(
        types
            .iter()
            .any(|(n, t)| n == "kitchen_takeout_queue" && t == "classic"),
        "{types:?}"
    );
    assert!(types.iter().all(|(_, t)| t == "classic"), "{types:?}");
}

/// The same order message delivered again after the order is ready (a relay
/// that published twice, a redelivery after a lost ack): acked, no second
/// transition, log row or notification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_second_delivery_after_ready_is_harmless() {
    redelivered_after_ready_in(&quorum_env()).await
}

/// Three copies of one order in a worker's hands at once: one cooking and one
/// ready transition, one notification each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_concurrent_copies_make_one_order() {
    concurrent_duplicates_in(&quorum_env()).await
}

/// Every mode refuses to start on SQLite in a multi-box configuration, with
/// one line and exit code 2.
#[test]
fn sqlite_is_refused_when_several_boxes_serve_the_kitchen() {
    let dir = tempfile::tempdir().unwrap();
    let boxes = dir.path().join("boxes.toml");
    std::fs::write(
        &boxes,
        "[cluster]\nboxes = [\"10.77.0.11\", \"10.77.0.12\", \"10.77.0.13\"]\n",
    )
    .unwrap();
    let quorum = dir.path().join("quorum.toml");
    std::fs::write(&quorum, "[rabbitmq]\nqueue_type = \"quorum\"\n").unwrap();
    let one = dir.path().join("one.toml");
    std::fs::write(&one, "[cluster]\nboxes = [\"10.77.0.11\"]\n").unwrap();
    let run = |config: &std::path::Path, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_restaurant-system"))
            .arg("--config")
            .arg(config)
            .args(args)
            .env("RESTAURANT_DATABASE__BACKEND", "sqlite")
            .env(
                "RESTAURANT_DATABASE__SQLITE_PATH",
                dir.path().join("r.db").display().to_string(),
            )
            .output()
            .unwrap()
    };
    for config in [&boxes, &quorum] {
        for mode in [
            "order-service",
            "kitchen-worker",
            "tracking-service",
            "notification-subscriber",
            "display-bridge",
            "all",
        ] {
            let out = run(config, &[&format!("--mode={mode}"), "--worker-name=chef_a"]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{mode}: {out:?}");
            assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
            assert!(err.contains("needs PostgreSQL"), "{mode}: {err}");
        }
    }
    // One box named is still one box.
    let out = run(&one, &["validate"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

/// Customer names may not hold digits: request 120 is "Guest bca".
pub(crate) fn guest(i: usize) -> String {
    let letters: String = i
        .to_string()
        .bytes()
        .map(|d| char::from(b'a' + (d - b'0')))
        .collect();
    format!("Guest {letters}")
}

/// What a POS terminal got: when, its key, the status and the order number.
pub(crate) type Answer = (std::time::Instant, String, u16, Option<String>);

/// The POS: an order every 20 ms to `url`, each with its own key, until `stop`.
pub(crate) fn pos_load(
    http: &reqwest::Client,
    url: &str,
    stop: &tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<Vec<Answer>> {
    let (http, url, stop) = (http.clone(), url.to_string(), stop.clone());
    tokio::spawn(async move {
        let mut answers = Vec::new();
        let mut i = 0;
        while !stop.is_cancelled() {
            i += 1;
            let key = format!("pos-{i}");
            let (s, n) = post_keyed(&http, &url, &key, &guest(i)).await;
            answers.push((std::time::Instant::now(), key, s, n));
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        answers
    })
}

/// One POST with an Idempotency-Key: the status and the order number (on 200).
async fn post_keyed(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    customer: &str,
) -> (u16, Option<String>) {
    let r = http
        .post(format!("{url}/orders"))
        .header("Idempotency-Key", key)
        .json(&crate::common::takeout(customer, 1, 12.5))
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await;
    match r {
        Ok(r) => {
            let s = r.status().as_u16();
            let v: serde_json::Value = r.json().await.unwrap_or_default();
            match v["order_number"].as_str() {
                Some(n) => (s, Some(n.to_string())),
                None => (s, v["error"].as_str().map(str::to_string)),
            }
        }
        // A timeout counts as "no answer", like a 503: the POS retries.
        Err(_) => (0, None),
    }
}

/// The pool follows a PostgreSQL failover without replication: two private
/// clusters behind a multi-host URL (`target_session_attrs=read-write`), one
/// writable, one read-only. A steady keyed POS load runs while they swap
/// roles twice: first as a failover does it (the old primary read-only and
/// its sessions ended), then with the old primary's sessions left open (the
/// pool must notice they went read-only). Every answer is 200 or 503, never
/// 500; orders are accepted again within a few seconds of each swap; a 503'd
/// request retried with its key makes one order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_finds_the_new_primary_after_a_failover() {
    use crate::common::servers::PrivatePostgres;
    use restaurant_system::modes::Mode;
    use restaurant_system::process::config::StorageBackend;
    use std::time::{Duration, Instant};

    let a = PrivatePostgres::start();
    let b = PrivatePostgres::start();
    let mut env = TestEnv::new(Backend::Postgres);
    for pg in [&a, &b] {
        pg.sql("postgres", "create database restaurant");
        // The schema on both: without replication, b would have nothing.
        let mut one = env.cfg.database.clone();
        one.host = Some("127.0.0.1".into());
        one.port = pg.port;
        one.user = "postgres".into();
        one.password = None;
        one.database = "restaurant".into();
        drop(
            restaurant_system::storage::open(&one)
                .await
                .expect("schema"),
        );
    }
    b.read_only(true, true);
    env.cfg.database.backend = StorageBackend::Postgres;
    env.cfg.database.host = None;
    env.cfg.database.password = None;
    env.cfg.database.url = Some(format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/restaurant?target_session_attrs=read-write",
        a.port, b.port
    ));
    let orders = env.start(Mode::OrderService, None).await;
    let url = orders.order_url();
    let http = reqwest::Client::new();

    let stop = tokio_util::sync::CancellationToken::new();
    let load = pos_load(&http, &url, &stop);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Swap 1, as a failover: a demoted (read-only, sessions ended), b promoted.
    let swap1 = Instant::now();
    a.read_only(true, true);
    b.read_only(false, false);
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Swap 2: b read-only with its sessions left open, a writable again.
    let swap2 = Instant::now();
    b.read_only(true, false);
    a.read_only(false, false);
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.cancel();
    let answers = load.await.unwrap();

    let bad: Vec<_> = answers
        .iter()
        .filter(|(_, _, s, _)| ![200, 503, 0].contains(s))
        .collect();
    assert!(
        bad.is_empty(),
        "only 200 or 503: {:?}",
        &bad[..bad.len().min(3)]
    );
    for (swap, name) in [(swap1, "swap 1"), (swap2, "swap 2")] {
        let back = answers
            .iter()
            .find(|(t, _, s, _)| *t > swap && *s == 200)
            .map(|(t, ..)| t.duration_since(swap))
            .unwrap_or_else(|| panic!("no order accepted after {name}"));
        println!("{name}: orders accepted again after {back:?}");
        assert!(back < Duration::from_secs(4), "{name}: {back:?}");
    }
    let ok = answers.iter().filter(|a| a.2 == 200).count();
    let failed: Vec<_> = answers.iter().filter(|a| a.2 != 200).collect();
    println!(
        "{} requests: {ok} accepted, {} answered 503 or not at all",
        answers.len(),
        failed.len()
    );
    // The POS retries what was not accepted, with the same key.
    for (_, key, _, _) in &failed {
        let i: usize = key.trim_start_matches("pos-").parse().unwrap_or(0);
        let customer = guest(i);
        let (s, _) = post_keyed(&http, &url, key, &customer).await;
        assert_eq!(s, 200, "retry of {key}");
    }
    orders.stop().await;
    // Every request made exactly one order, on one of the two servers.
    let count = |pg: &PrivatePostgres| -> std::collections::BTreeMap<String, i64> {
        pg.sql(
            "restaurant",
            "select customer_name || '|' || count(*) from orders group by customer_name",
        )
        .lines()
        .filter_map(|l| l.split_once('|'))
        .map(|(c, n)| (c.to_string(), n.parse().unwrap_or(0)))
        .collect()
    };
    let (ca, cb) = (count(&a), count(&b));
    for (i, _) in answers.iter().enumerate() {
        let c = guest(i + 1);
        let n = ca.get(&c).unwrap_or(&0) + cb.get(&c).unwrap_or(&0);
        assert_eq!(n, 1, "{c}: orders on a {ca:?} / b {cb:?}");
    }
}

/// The display page learns every box from `config.json`, to move to the next
/// box's /mqtt when its own dies; one box gives an empty list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screens_get_the_list_of_boxes() {
    use restaurant_system::modes::Mode;
    let mut env = quorum_env();
    let http = reqwest::Client::new();
    let one = env.start(Mode::TrackingService, None).await;
    let (_, _, v) = crate::common::get_json(
        &http,
        &format!("{}/display/config.json", one.tracking_url()),
    )
    .await;
    assert_eq!(v["boxes"], serde_json::json!([]), "{v}");
    one.stop().await;
    let boxes = ["10.77.0.11", "10.77.0.12", "10.77.0.13"];
    env.cfg.cluster.boxes = boxes.iter().map(|b| b.to_string()).collect();
    let three = env.start(Mode::TrackingService, None).await;
    let (_, _, v) = crate::common::get_json(
        &http,
        &format!("{}/display/config.json", three.tracking_url()),
    )
    .await;
    assert_eq!(v["boxes"], serde_json::json!(boxes), "{v}");
    three.stop().await;
}
