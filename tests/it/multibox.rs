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
