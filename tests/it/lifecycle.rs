//! The whole order lifecycle (issue 3) on both backends: the spec's orders
//! through the real binaries (order service, kitchen worker, tracking, two
//! notification subscribers), then bump, cancel and recall, illegal
//! transitions, and a cancel while the order is cooking.
use crate::common;

use common::{
    eventually, get_all, get_json, notification_tap, place_order, post_json, queue_counts,
    spec_orders, wait_status, Backend, OrderType, Proc, TestEnv,
};
use restaurant_system::domain::OrderStatus;
use restaurant_system::modes::Mode;
use serde_json::{json, Value};
use std::time::Duration;

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

fn ts(v: &Value) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("timestamp: {v}")))
        .unwrap_or_else(|e| panic!("timestamp {v}: {e}"))
}

fn line(n: &str, from: &str, to: &str, by: &str) -> String {
    format!("Notification for order {n}: Status changed from '{from}' to '{to}' by {by}.")
}

/// The spec's walk-through, each mode its own process of the real binary.
async fn spec_orders_through_the_binaries(b: Backend) {
    let env = TestEnv::new(b);
    // Apply the schema once first, so the five processes do not all race to.
    let st = env.command().arg("migrate").output().unwrap();
    assert!(st.status.success(), "{st:?}");
    let spawn = |name: &str, args: &[&str]| {
        let mut cmd = env.command();
        cmd.args(args);
        Proc::spawn(name, cmd)
    };
    let mut orders = spawn("order-service", &["--mode=order-service", "--port=0"]);
    let mut tracking = spawn("tracking-service", &["--mode=tracking-service", "--port=0"]);
    let mut subs = vec![
        spawn("subscriber-1", &["--mode=notification-subscriber"]),
        spawn("subscriber-2", &["--mode=notification-subscriber"]),
    ];
    let mut worker = spawn(
        "kitchen-worker",
        &[
            "--mode=kitchen-worker",
            "--worker-name=chef_x",
            "--heartbeat-interval=2",
        ],
    );
    let ou = format!("http://127.0.0.1:{}", orders.port().await);
    let tu = format!("http://127.0.0.1:{}", tracking.port().await);
    for s in &subs {
        s.wait_log("service_started", Duration::from_secs(30), |_| true)
            .await;
    }
    let ch = env.amqp_with_topology().await;
    eventually(Duration::from_secs(30), "the worker consuming", || async {
        let mut all = true;
        for t in OrderType::ALL {
            all &= queue_counts(&ch, &format!("kitchen_{t}_queue")).await.1 == 1;
        }
        all.then_some(())
    })
    .await;

    let http = http();
    let mut numbers = Vec::new();
    for (o, total) in spec_orders().iter().zip([40.97, 29.99, 37.98]) {
        let (s, _, v) = post_json(&http, &format!("{ou}/orders"), o).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["total_amount"], total);
        assert_eq!(v["status"], "received");
        numbers.push(v["order_number"].as_str().unwrap().to_string());
    }
    for n in &numbers {
        let v = eventually(Duration::from_secs(30), &format!("{n} ready"), || async {
            let (s, _, v) = get_json(&http, &format!("{tu}/orders/{n}/status")).await;
            (s == 200 && v["current_status"] == "ready").then_some(v)
        })
        .await;
        assert_eq!(v["order_number"], n.as_str());
        assert_eq!(v["processed_by"], "chef_x");
        ts(&v["updated_at"]);
        ts(&v["estimated_completion"]);
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(
            keys.len(),
            5,
            "spec's status shape (order_number, current_status, updated_at, estimated_completion, processed_by): {v}"
        );

        let (s, _, h) = get_json(&http, &format!("{tu}/orders/{n}/history")).await;
        assert_eq!(s, 200);
        let h = h.as_array().expect("history is an array").clone();
        let got: Vec<(&str, &str)> = h
            .iter()
            .map(|e| {
                (
                    e["status"].as_str().unwrap(),
                    e["changed_by"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("received", "order-service"),
                ("cooking", "chef_x"),
                ("ready", "chef_x")
            ],
            "{n}"
        );
        assert!(
            h.windows(2)
                .all(|w| ts(&w[0]["timestamp"]) <= ts(&w[1]["timestamp"])),
            "history in time order: {h:?}"
        );
        for e in &h {
            assert_eq!(e.as_object().unwrap().len(), 3, "spec's history entry: {e}");
        }
    }
    let store = env.open_store().await;
    for n in &numbers {
        let o = store.order(n).await.unwrap().unwrap();
        assert!(o.completed_at.is_some(), "{n}: completed_at set when ready");
    }

    let (s, _, w) = get_json(&http, &format!("{tu}/workers/status")).await;
    assert_eq!(s, 200);
    let w = w.as_array().unwrap();
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0]["worker_name"], "chef_x");
    assert_eq!(w[0]["status"], "online");
    assert_eq!(w[0]["orders_processed"], 3);
    ts(&w[0]["last_seen"]);

    // Every subscriber printed every change, exactly once, as the spec words it.
    for s in &subs {
        for n in &numbers {
            for (from, to) in [("received", "cooking"), ("cooking", "ready")] {
                let want = line(n, from, to, "chef_x");
                s.wait_stdout_line(&want, Duration::from_secs(15)).await;
            }
        }
    }

    // Bump (complete), recall, illegal moves.
    let n0 = &numbers[0];
    let act = |n: &str, a: &str| {
        let http = http.clone();
        let url = format!("{ou}/orders/{n}/{a}");
        async move { post_json(&http, &url, &json!({})).await }
    };
    let (s, _, v) = act(n0, "complete").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["old_status"], "ready");
    for (a, current) in [("complete", "completed"), ("cancel", "completed")] {
        let (s, _, v) = act(n0, a).await;
        assert_eq!(s, 409, "{a} a completed order: {v}");
        assert_eq!(v["details"][0]["current_status"], current, "{v}");
        assert!(v["error"].is_string());
    }
    let (s, _, v) = act(n0, "recall").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "ready");
    let (s, _, v) = act(n0, "complete").await;
    assert_eq!(s, 200, "{v}");
    let (s, _, v) = act(&numbers[1], "cancel").await;
    assert_eq!(s, 409, "cancel a ready order: {v}");
    assert_eq!(v["details"][0]["current_status"], "ready");
    let (s, _, v) = act(&numbers[1], "recall").await;
    assert_eq!(s, 409, "recall a ready order: {v}");

    let (_, _, h) = get_json(&http, &format!("{tu}/orders/{n0}/history")).await;
    let statuses: Vec<&str> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "received",
            "cooking",
            "ready",
            "completed",
            "ready",
            "completed"
        ]
    );
    let (_, _, v) = get_json(&http, &format!("{tu}/orders/{n0}/status")).await;
    assert_eq!(v["current_status"], "completed");
    for s in &subs {
        s.wait_stdout_line(
            &line(n0, "ready", "completed", "order-service"),
            Duration::from_secs(15),
        )
        .await;
        s.wait_stdout_line(
            &line(n0, "completed", "ready", "order-service"),
            Duration::from_secs(15),
        )
        .await;
        for n in &numbers {
            let want = line(n, "received", "cooking", "chef_x");
            let times = s.stdout().iter().filter(|l| **l == want).count();
            assert_eq!(times, 1, "{}: {want}", s.name);
        }
    }

    // Everything stops cleanly on SIGTERM; the worker is shown offline.
    assert!(worker.stop().await.success(), "{:?}", worker.stderr());
    let (_, _, w) = get_json(&http, &format!("{tu}/workers/status")).await;
    assert_eq!(w[0]["status"], "offline", "{w}");
    for p in subs.iter_mut().chain([&mut orders, &mut tracking]) {
        let st = p.stop().await;
        assert!(st.success(), "{} exited {st:?}: {:?}", p.name, p.stderr());
        assert!(
            !p.stderr().iter().any(|l| l.contains("panicked")),
            "{}: {:?}",
            p.name,
            p.stderr()
        );
    }
}

/// Bump, cancel and recall from every status they do not apply to: 409 naming
/// the current status; unknown orders 404; malformed numbers 400; each applied
/// change has its log row and exactly one notification.
async fn transitions_and_errors(b: Backend) {
    let env = TestEnv::new(b);
    let ch = env.amqp_with_topology().await;
    let tap = notification_tap(&ch).await;
    // No kitchen worker: orders stay received until we move them.
    let orders = env.start(Mode::OrderService, None).await;
    let tracking = env.start(Mode::TrackingService, None).await;
    let (ou, tu) = (orders.order_url(), tracking.tracking_url());
    let http = http();

    let (s, _, w) = get_json(&http, &format!("{tu}/workers/status")).await;
    assert_eq!((s, w), (200, json!([])));

    let n = place_order(&http, &ou, &spec_orders()[0]).await;
    let (s, _, v) = get_json(&http, &format!("{tu}/orders/{n}/status")).await;
    assert_eq!(s, 200);
    assert_eq!(v["current_status"], "received");
    assert_eq!(v["processed_by"], Value::Null);

    let act = |n: String, a: &'static str| {
        let http = http.clone();
        let url = format!("{ou}/orders/{n}/{a}");
        async move { post_json(&http, &url, &json!({})).await }
    };
    for a in ["complete", "recall"] {
        let (s, _, v) = act(n.clone(), a).await;
        assert_eq!(s, 409, "{a} a received order: {v}");
        assert_eq!(v["details"][0]["current_status"], "received", "{v}");
    }
    let (s, _, v) = act(n.clone(), "cancel").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["old_status"], "received");
    assert_eq!(v["status"], "cancelled");
    for a in ["cancel", "complete", "recall"] {
        let (s, _, v) = act(n.clone(), a).await;
        assert_eq!(s, 409, "{a} a cancelled order: {v}");
        assert_eq!(v["details"][0]["current_status"], "cancelled", "{v}");
    }
    let (_, _, h) = get_json(&http, &format!("{tu}/orders/{n}/history")).await;
    let got: Vec<(&str, &str)> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["status"].as_str().unwrap(),
                e["changed_by"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("received", "order-service"),
            ("cancelled", "order-service")
        ]
    );
    let (_, _, v) = get_json(&http, &format!("{tu}/orders/{n}/status")).await;
    assert_eq!(v["current_status"], "cancelled");

    // Exactly one notification, in the spec's Status Update shape.
    let updates = eventually(
        Duration::from_secs(15),
        "the cancel notification",
        || async {
            let got = get_all(&ch, &tap).await;
            (!got.is_empty()).then_some(got)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let late = get_all(&ch, &tap).await;
    assert_eq!(
        updates.len() + late.len(),
        1,
        "one change, one notification"
    );
    let u: Value = serde_json::from_slice(&updates[0].data).unwrap();
    assert_eq!(u["order_number"], n.as_str());
    assert_eq!(u["old_status"], "received");
    assert_eq!(u["new_status"], "cancelled");
    assert_eq!(u["changed_by"], "order-service");
    ts(&u["timestamp"]);
    assert!(u.get("estimated_completion").is_some(), "{u}");
    assert_eq!(*updates[0].properties.delivery_mode(), Some(2));

    // Unknown order: 404 everywhere. Malformed number: 400 everywhere.
    let unknown = "ORD_20200101_999";
    for a in ["complete", "cancel", "recall"] {
        let (s, _, v) = act(unknown.into(), a).await;
        assert_eq!(s, 404, "{a}: {v}");
        assert!(v["error"].is_string());
    }
    for what in ["status", "history"] {
        let (s, _, v) = get_json(&http, &format!("{tu}/orders/{unknown}/{what}")).await;
        assert_eq!(s, 404, "{what}: {v}");
        assert!(v["error"].is_string());
    }
    for bad in [
        "ORD_1",
        "abc",
        "ORD_20241340_001",
        "ORD_20240101_01",
        "ORD_20240101_00a",
        "ord_20240101_001",
        "ORD_20240101_001x",
        "%27%3B--",
    ] {
        for a in ["complete", "cancel", "recall"] {
            let (s, _, v) = act(bad.into(), a).await;
            assert_eq!(s, 400, "{a} {bad}: {v}");
            assert_eq!(v["details"][0]["field"], "order_number", "{v}");
        }
        for what in ["status", "history"] {
            let (s, _, v) = get_json(&http, &format!("{tu}/orders/{bad}/{what}")).await;
            assert_eq!(s, 400, "{what} {bad}: {v}");
            assert_eq!(v["details"][0]["field"], "order_number", "{v}");
        }
    }
    // The tracking service is read-only.
    let r = http
        .post(format!("{tu}/orders/{n}/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let (s, _, v) = get_json(&http, &format!("{tu}/nope")).await;
    assert_eq!(s, 404, "{v}");
    assert!(v["error"].is_string());
    orders.stop().await;
    tracking.stop().await;
}

/// Cancelling an order while it cooks stops the worker: the order ends
/// cancelled with no ready row, is not counted as processed, and the worker
/// is free for the next order long before the cancelled one would have been done.
async fn cancel_while_cooking(b: Backend) {
    let env = TestEnv::new(b);
    let mut cfg = env.cfg.clone();
    cfg.kitchen.cooking_seconds.takeout = 4.0;
    cfg.kitchen.cooking_seconds.dine_in = 0.1;
    let orders = env.start_with(Mode::OrderService, None, &cfg).await;
    let mut w = env.worker("chef_cancel", &[]);
    w.cooking = cfg.kitchen.cooking_seconds;
    let worker = env.start_with(Mode::KitchenWorker, Some(w), &cfg).await;
    let store = orders.store();
    let http = http();
    let ou = orders.order_url();

    let t = place_order(&http, &ou, &spec_orders()[0]).await; // takeout
    let cooking = wait_status(&store, &t, OrderStatus::Cooking, Duration::from_secs(15)).await;
    let eta = cooking.estimated_completion.expect("estimated completion");
    assert_eq!(cooking.processed_by.as_deref(), Some("chef_cancel"));
    let (s, _, v) = post_json(&http, &format!("{ou}/orders/{t}/cancel"), &json!({})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["old_status"], "cooking");

    // prefetch 1: the dine-in order starts only once the worker let go of the other.
    let d = place_order(&http, &ou, &spec_orders()[1]).await;
    wait_status(&store, &d, OrderStatus::Ready, Duration::from_secs(15)).await;
    let dh = store.history(&d).await.unwrap().unwrap();
    let d_cooking = dh
        .iter()
        .find(|e| e.status == OrderStatus::Cooking)
        .expect("cooking row");
    assert!(
        d_cooking.timestamp < eta,
        "the worker kept cooking the cancelled order: next order started {} , cancelled one was due {}",
        d_cooking.timestamp,
        eta
    );

    let th = store.history(&t).await.unwrap().unwrap();
    let statuses: Vec<OrderStatus> = th.iter().map(|e| e.status).collect();
    assert_eq!(
        statuses,
        [
            OrderStatus::Received,
            OrderStatus::Cooking,
            OrderStatus::Cancelled
        ]
    );
    let o = store.order(&t).await.unwrap().unwrap();
    assert_eq!(o.status, OrderStatus::Cancelled);
    assert_eq!(o.completed_at, None);
    let workers = store.workers().await.unwrap();
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0].orders_processed, 1, "only the dine-in order");
    // Nothing left to redeliver: the cancelled order's message was acked.
    let ch = env.amqp_with_topology().await;
    assert_eq!(queue_counts(&ch, "kitchen_takeout_queue").await.0, 0);
    worker.stop().await;
    orders.stop().await;
}

/// A clean stop is clean (issue 22, item 4): each mode that uses RabbitMQ,
/// the real binary, started until READY, given an order where it takes one,
/// stopped with SIGTERM: it exits 0 and its whole log (stdout and stderr) has
/// no line above INFO. Before, lapin logged an ERROR "invalid channel state:
/// Closing" on every stop of the order service, the worker and `--mode=all`.
async fn a_clean_stop_logs_nothing_above_info(b: Backend) {
    use common::mosquitto::{SecureBroker, BRIDGE_USER};
    let env = TestEnv::new(b);
    let st = env.command().arg("migrate").output().unwrap();
    assert!(st.status.success(), "{st:?}");
    let mqtt = SecureBroker::start(false);
    let http = http();
    for mode in [
        "order-service",
        "kitchen-worker",
        "notification-subscriber",
        "display-bridge",
        "all",
    ] {
        let notify = env.dir.path().join(format!("notify-{mode}.sock"));
        let ready = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
        ready
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut cmd = env.command();
        cmd.arg(format!("--mode={mode}"))
            .arg("--worker-name=chef_stop")
            .env("NOTIFY_SOCKET", &notify)
            .env("RESTAURANT_HTTP__ORDER_PORT", "0")
            .env("RESTAURANT_HTTP__TRACKING_PORT", "0")
            .env("RESTAURANT_HTTP__BRIDGE_PORT", "0")
            .env("RESTAURANT_MQTT__ENABLED", "true")
            .env("RESTAURANT_MQTT__HOST", "127.0.0.1")
            .env("RESTAURANT_MQTT__PORT", mqtt.port.to_string())
            .env("RESTAURANT_MQTT__USER", BRIDGE_USER)
            .env("RESTAURANT_MQTT__PASSWORD", &mqtt.bridge_password);
        let mut p = Proc::spawn(mode, cmd);
        // READY=1 comes once every part of the mode serves (links up).
        let ready = tokio::task::spawn_blocking(move || {
            let mut buf = [0u8; 512];
            loop {
                let n = ready.recv(&mut buf).ok()?;
                if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
                    return Some(());
                }
            }
        })
        .await
        .unwrap();
        assert!(
            ready.is_some(),
            "{mode}: no READY=1 within 60 s\nstdout:\n{}\nstderr:\n{}",
            p.stdout().join("\n"),
            p.stderr().join("\n")
        );
        if mode == "order-service" || mode == "all" {
            let port = p
                .wait_log("service_started", Duration::from_secs(5), |v| {
                    v["service"] == "order-service" && v["details"]["port"].is_u64()
                })
                .await["details"]["port"]
                .as_u64()
                .unwrap();
            place_order(
                &http,
                &format!("http://127.0.0.1:{port}"),
                &spec_orders()[0],
            )
            .await;
        }
        // A moment of work (the relay publishing, the worker cooking) before the stop.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let status = p.stop().await;
        assert!(status.success(), "{mode}: {status:?}");
        // Every stderr line, and every log line above INFO; besides log lines,
        // stdout has only the notifier's spec lines.
        let mut loud = p.stderr();
        for line in p.stdout() {
            match serde_json::from_str::<Value>(&line) {
                Ok(v) if matches!(v["level"].as_str(), Some("INFO" | "DEBUG" | "TRACE")) => {}
                Err(_) if line.starts_with("Notification for order ") => {}
                _ => loud.push(line),
            }
        }
        assert!(
            loud.is_empty(),
            "{mode}: a clean stop logged above INFO:\n{}\n\nthe whole stdout:\n{}",
            loud.join("\n"),
            p.stdout().join("\n")
        );
        assert!(
            p.logs().iter().any(|v| v["action"] == "service_stopped"),
            "{mode}: no service_stopped line"
        );
    }
}

backend_tests!(
    spec_orders_through_the_binaries,
    transitions_and_errors,
    cancel_while_cooking,
    a_clean_stop_logs_nothing_above_info
);
