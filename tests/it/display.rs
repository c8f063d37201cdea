//! The display bridge against a real Mosquitto (a private one per test, on a
//! free port, no persistence), on both database backends:
//!
//! 1. an order placed over HTTP appears retained at its topic (seen by a real
//!    `mosquitto_sub` started after the fact), moves to cooking and ready, and
//!    its retained topic is cleared after completion + `clear_after_seconds`;
//! 2. with the bridge stopped while orders flow, restarting it delivers every
//!    change, in order per order, none missing, none twice;
//! 3. killing the broker and starting it again (empty) restores the whole board
//!    from the bridge's snapshot;
//! 4. the order state the bridge builds from the messages alone is the state
//!    the database holds, through every change;
//! 5. notes, modifiers and allergens reach the retained ticket;
//! 6. with stations, each station's retained copy of an order lives while the
//!    station has an open part of it, and item changes reach the change feed.
use crate::common;

use common::mosquitto::{free_port, spawn_and_wait};
use common::{eventually, spec_orders, Backend, TestEnv};
use restaurant_system::modes::Mode;
use restaurant_system::process::config::Config;
use restaurant_system::services::kitchen::WorkerConfig;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const PREFIX: &str = "restaurant/main";

// ---------------------------------------------------------------------------
// A private Mosquitto
// ---------------------------------------------------------------------------

/// A Mosquitto of the test's own, killed on drop.
struct Mosquitto {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Mosquitto {
    fn start() -> Mosquitto {
        let dir = tempfile::tempdir().expect("temp dir");
        // Mosquitto started as root drops to its own user after reading the config.
        let _ = std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        );
        let (port, ws_port) = (free_port(), free_port());
        std::fs::write(
            dir.path().join("mosquitto.conf"),
            format!(
                "listener {port} 127.0.0.1\n\
                 listener {ws_port} 127.0.0.1\nprotocol websockets\n\
                 allow_anonymous true\npersistence false\n\
                 max_queued_messages 10000\nlog_dest stderr\nlog_type error\nlog_type warning\n"
            ),
        )
        .expect("writing mosquitto.conf");
        let mut m = Mosquitto {
            port,
            dir,
            child: None,
        };
        m.spawn();
        m
    }

    fn spawn(&mut self) {
        self.child = Some(spawn_and_wait(self.dir.path(), self.port));
    }

    /// Kills the broker (SIGKILL: no goodbye to anyone).
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, empty (no persistence).
    fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `mosquitto_sub` (a real client, not ours), started now, for `secs` seconds:
/// every message it printed, as topic -> last payload.
async fn mosquitto_sub(port: u16, secs: u32) -> BTreeMap<String, String> {
    let out = tokio::task::spawn_blocking(move || {
        Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-t", &format!("{PREFIX}/#"), "-v", "-W", &secs.to_string()])
            .output()
            .expect("mosquitto_sub (apt-get install mosquitto-clients)")
    })
    .await
    .expect("mosquitto_sub task");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (t, p) = l.split_once(' ').unwrap_or((l, ""));
            (t.to_string(), p.to_string())
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Our own subscriber, recording everything in arrival order
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Msg {
    topic: String,
    payload: Vec<u8>,
}

struct Watcher {
    msgs: Arc<Mutex<Vec<Msg>>>,
    stop: CancellationToken,
}

impl Watcher {
    /// Connects (clean session), subscribes to `P/#` and returns after the SUBACK.
    async fn start(port: u16) -> Watcher {
        let id = format!("test-watcher-{:08x}", rand::random::<u32>());
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_max_packet_size(1 << 20, 1 << 20);
        opts.set_keep_alive(Duration::from_secs(5));
        let (client, mut el) = AsyncClient::new(opts, 100);
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        let (m, s) = (msgs.clone(), stop.clone());
        tokio::spawn(async move {
            let mut subscribed_tx = Some(subscribed_tx);
            loop {
                let ev = tokio::select! {
                    _ = s.cancelled() => return,
                    ev = el.poll() => ev,
                };
                match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client
                            .subscribe(format!("{PREFIX}/#"), QoS::AtLeastOnce)
                            .await;
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => m.lock().unwrap().push(Msg {
                        topic: p.topic.clone(),
                        payload: p.payload.to_vec(),
                    }),
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed)
            .await
            .expect("test subscriber did not get its SUBACK within 10 s")
            .expect("test subscriber stopped");
        Watcher { msgs, stop }
    }

    fn all(&self) -> Vec<Msg> {
        self.msgs.lock().unwrap().clone()
    }

    /// Every event, in arrival order.
    fn events(&self) -> Vec<Value> {
        self.all()
            .into_iter()
            .filter(|m| m.topic == format!("{PREFIX}/events"))
            .map(|m| serde_json::from_slice(&m.payload).expect("event JSON"))
            .collect()
    }

    /// Every payload seen on an order's topic, in arrival order (empty = cleared).
    fn states(&self, n: &str) -> Vec<Vec<u8>> {
        let topic = format!("{PREFIX}/orders/{n}");
        self.all()
            .into_iter()
            .filter(|m| m.topic == topic)
            .map(|m| m.payload)
            .collect()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn bridge_cfg(env: &TestEnv, mqtt: &Mosquitto) -> Config {
    let mut cfg = env.cfg.clone();
    cfg.mqtt.enabled = true;
    cfg.mqtt.host = "127.0.0.1".into();
    cfg.mqtt.port = mqtt.port;
    cfg.mqtt.clear_after_seconds = 0.5;
    cfg
}

fn fast_worker(env: &TestEnv, name: &str) -> WorkerConfig {
    let mut w = env.worker(name, &[]);
    w.prefetch = 20;
    w.cooking.dine_in = 0.05;
    w.cooking.takeout = 0.05;
    w.cooking.delivery = 0.05;
    w
}

async fn place(http: &reqwest::Client, order_url: &str, body: &Value) -> String {
    let resp = http
        .post(format!("{order_url}/orders"))
        .json(body)
        .send()
        .await
        .expect("POST /orders");
    assert_eq!(resp.status(), 200, "POST /orders");
    let v: Value = resp.json().await.expect("order JSON");
    v["order_number"]
        .as_str()
        .expect("order_number")
        .to_string()
}

async fn post_ok(http: &reqwest::Client, url: String) {
    let resp = http.post(&url).send().await.expect("POST");
    assert_eq!(resp.status(), 200, "POST {url}");
}

async fn health(http: &reqwest::Client, bridge_url: &str) -> (u16, Value) {
    let r = http
        .get(format!("{bridge_url}/health"))
        .send()
        .await
        .expect("GET /health");
    let status = r.status().as_u16();
    (status, r.json().await.expect("health JSON"))
}

fn json_of(payload: &str) -> Value {
    serde_json::from_str(payload).unwrap_or_else(|e| panic!("not JSON ({e}): {payload}"))
}

// ---------------------------------------------------------------------------
// 1. retained state, status changes, clearing
// ---------------------------------------------------------------------------

async fn order_is_retained_then_cleared(b: Backend) {
    let mqtt = Mosquitto::start();
    let env = TestEnv::new(b);
    let cfg = bridge_cfg(&env, &mqtt);
    let watcher = Watcher::start(mqtt.port).await;
    let app = env.start_with(Mode::All, None, &cfg).await;
    let http = reqwest::Client::new();

    let n = place(&http, &app.order_url(), &spec_orders()[1]).await;
    let topic = format!("{PREFIX}/orders/{n}");

    // The kitchen cooks it (0.2 s); wait for the bridge to have published `ready`.
    eventually(Duration::from_secs(20), "the ready state on MQTT", || {
        let states = watcher.states(&n);
        async move {
            let last = states.last()?;
            let v: Value = serde_json::from_slice(last).ok()?;
            (v["status"] == "ready").then_some(())
        }
    })
    .await;

    // A real client, connected only now, gets the board from retained messages.
    let board = mosquitto_sub(mqtt.port, 2).await;
    let state = json_of(board.get(&topic).expect("order retained at its topic"));
    let order = app.store().order(&n).await.unwrap().unwrap();
    assert_eq!(state["order_number"], json!(n));
    assert_eq!(state["status"], "ready");
    assert_eq!(state["version"], json!(order.version));
    assert_eq!(state["order_type"], "dine_in");
    assert_eq!(state["customer_name"], "Jane Smith");
    assert_eq!(state["table_number"], 12);
    assert_eq!(
        state["items"],
        json!([{"name": "Steak", "quantity": 1, "price": 29.99}])
    );
    assert_eq!(state["total_amount"], 29.99);
    assert!(state["processed_by"].is_string());
    for f in ["created_at", "status_changed_at", "server_time"] {
        let s = state[f].as_str().unwrap_or_else(|| panic!("{f} missing"));
        assert!(s.ends_with('Z') && s.len() == 24, "{f} = {s}");
    }
    assert_eq!(
        board
            .get(&format!("{PREFIX}/bridge/status"))
            .map(String::as_str),
        Some("online")
    );
    let worker_topic = board
        .keys()
        .find(|t| t.starts_with(&format!("{PREFIX}/workers/")))
        .expect("worker presence retained");
    let w = json_of(&board[worker_topic]);
    assert_eq!(w["status"], "online");
    assert!(
        !board.contains_key(&format!("{PREFIX}/events")),
        "events are not retained"
    );

    // Every change went out on P/events, in order.
    let events: Vec<Value> = watcher
        .events()
        .into_iter()
        .filter(|e| e["order_number"] == json!(n))
        .collect();
    let seen: Vec<(String, i64)> = events
        .iter()
        .map(|e| {
            (
                e["new_status"].as_str().unwrap().to_string(),
                e["version"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("received".to_string(), 1),
            ("cooking".to_string(), 2),
            ("ready".to_string(), 3)
        ]
    );
    assert_eq!(events[0]["kind"], "order_created");
    assert_eq!(events[0]["changed_by"], "order-service");
    assert_eq!(events[1]["kind"], "status_changed");
    assert_eq!(events[1]["old_status"], "received");

    // Retained states never go backwards.
    let versions: Vec<i64> = watcher
        .states(&n)
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| {
            serde_json::from_slice::<Value>(p).unwrap()["version"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "state versions {versions:?}"
    );

    let (status, h) = health(&http, &app.bridge_url()).await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["service"], "display-bridge");
    assert_eq!(h["checks"]["mqtt"], "healthy");
    assert_eq!(h["checks"]["rabbitmq"], "healthy");
    assert_eq!(h["checks"]["database"], "healthy");

    // Bump: completed is published, then cleared 0.5 s later.
    post_ok(&http, format!("{}/orders/{n}/complete", app.order_url())).await;
    let completed_at = Instant::now();
    eventually(
        Duration::from_secs(10),
        "the empty retained payload",
        || {
            let states = watcher.states(&n);
            async move { states.last().filter(|p| p.is_empty()).map(|_| ()) }
        },
    )
    .await;
    assert!(
        completed_at.elapsed() >= Duration::from_millis(400),
        "cleared before the grace period"
    );
    let states = watcher.states(&n);
    let completed: Value = serde_json::from_slice(&states[states.len() - 2]).unwrap();
    assert_eq!(completed["status"], "completed");
    assert_eq!(completed["version"], 4);
    let board = mosquitto_sub(mqtt.port, 1).await;
    assert!(
        !board.contains_key(&topic),
        "the retained state is gone: {board:?}"
    );

    // A clean stop says offline.
    app.stop().await;
    let board = mosquitto_sub(mqtt.port, 1).await;
    assert_eq!(
        board
            .get(&format!("{PREFIX}/bridge/status"))
            .map(String::as_str),
        Some("offline")
    );
}

// ---------------------------------------------------------------------------
// 2. bridge stopped while orders flow
// ---------------------------------------------------------------------------

async fn restart_delivers_every_change_in_order(b: Backend) {
    let mqtt = Mosquitto::start();
    let env = TestEnv::new(b);
    let bridge_cfg = bridge_cfg(&env, &mqtt);
    let watcher = Watcher::start(mqtt.port).await;

    // The bridge declares its queue when it first starts.
    let bridge = env.start_with(Mode::DisplayBridge, None, &bridge_cfg).await;
    let main = env
        .start(Mode::All, Some(fast_worker(&env, "chef_flow")))
        .await;
    let http = reqwest::Client::new();
    let order_url = main.order_url();

    // Orders keep coming while the bridge stops and starts again.
    let poster = {
        let http = http.clone();
        let order_url = order_url.clone();
        tokio::spawn(async move {
            let mut numbers = Vec::new();
            for i in 0..60 {
                let body = &spec_orders()[i % 3];
                numbers.push(place(&http, &order_url, body).await);
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            numbers
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    bridge.stop().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let bridge = env.start_with(Mode::DisplayBridge, None, &bridge_cfg).await;
    let numbers = poster.await.expect("poster");

    // Close some orders too: completed and cancelled changes must arrive as well.
    let store = main.store();
    eventually(Duration::from_secs(60), "every order to be ready", || {
        let store = store.clone();
        let numbers = numbers.clone();
        async move {
            for n in &numbers {
                if store.order(n).await.ok()??.status.as_str() != "ready" {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
    for n in numbers.iter().step_by(7) {
        post_ok(&http, format!("{order_url}/orders/{n}/complete")).await;
    }

    let mut expected = HashMap::new();
    for n in &numbers {
        expected.insert(n.clone(), store.order(n).await.unwrap().unwrap().version);
    }
    let per_order = || {
        let mut seen: HashMap<String, Vec<i64>> = HashMap::new();
        for e in watcher.events() {
            seen.entry(e["order_number"].as_str().unwrap().to_string())
                .or_default()
                .push(e["version"].as_i64().unwrap());
        }
        seen
    };
    eventually(Duration::from_secs(30), "every change on P/events", || {
        let seen = per_order();
        let done = expected
            .iter()
            .all(|(n, v)| seen.get(n).and_then(|s| s.last()) == Some(v));
        async move { done.then_some(()) }
    })
    .await;
    // Give duplicates, if any, a moment to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = per_order();
    for (n, last) in &expected {
        let want: Vec<i64> = (1..=*last).collect();
        assert_eq!(
            seen.get(n),
            Some(&want),
            "events of {n}: every version once, in order"
        );
    }
    bridge.stop().await;
    main.stop().await;
}

// ---------------------------------------------------------------------------
// 3. the broker dies and comes back empty
// ---------------------------------------------------------------------------

async fn broker_restart_restores_the_board(b: Backend) {
    let mut mqtt = Mosquitto::start();
    let env = TestEnv::new(b);
    let mut cfg = bridge_cfg(&env, &mqtt);
    cfg.http.max_concurrent = 500; // the burst below comes all at once
    let app = env
        .start_with(Mode::All, Some(fast_worker(&env, "chef_burst")), &cfg)
        .await;
    let http = reqwest::Client::new();
    let store = app.store();

    let mut numbers = Vec::new();
    for body in spec_orders() {
        numbers.push(place(&http, &app.order_url(), &body).await);
    }
    // Board = exactly the open orders, with the versions in the database.
    let board_matches = |store: restaurant_system::storage::SharedStore, port: u16| async move {
        let open = store.open_orders().await.ok()?;
        let board = mosquitto_sub(port, 1).await;
        let retained: BTreeMap<&str, Value> = board
            .iter()
            .filter_map(|(t, p)| {
                let n = t.strip_prefix(&format!("{PREFIX}/orders/"))?;
                Some((n, serde_json::from_str(p).ok()?))
            })
            .collect();
        let want: BTreeMap<&str, (i64, &str)> = open
            .iter()
            .map(|o| {
                (
                    o.placed.order_number.as_str(),
                    (o.version, o.status.as_str()),
                )
            })
            .collect();
        let got: BTreeMap<&str, (i64, &str)> = retained
            .iter()
            .map(|(n, v)| {
                (
                    *n,
                    (
                        v["version"].as_i64().unwrap_or(-1),
                        v["status"].as_str().unwrap_or(""),
                    ),
                )
            })
            .collect();
        let online = board
            .get(&format!("{PREFIX}/bridge/status"))
            .map(String::as_str)
            == Some("online");
        (want == got && online && !want.is_empty()).then_some(want.len())
    };
    eventually(
        Duration::from_secs(30),
        "the board before the restart",
        || board_matches(store.clone(), mqtt.port),
    )
    .await;

    mqtt.kill();
    let bridge_url = app.bridge_url();
    eventually(
        Duration::from_secs(10),
        "health to report MQTT down",
        || {
            let http = http.clone();
            let url = bridge_url.clone();
            async move {
                let (status, h) = health(&http, &url).await;
                (status == 503 && h["checks"]["mqtt"].as_str()?.starts_with("unhealthy"))
                    .then_some(())
            }
        },
    )
    .await;
    // Changes while the broker is away: a new order, a completed one.
    numbers.push(place(&http, &app.order_url(), &spec_orders()[0]).await);
    eventually(Duration::from_secs(20), "the first order ready", || {
        let store = store.clone();
        let n = numbers[0].clone();
        async move { (store.order(&n).await.ok()??.status.as_str() == "ready").then_some(()) }
    })
    .await;
    post_ok(
        &http,
        format!("{}/orders/{}/complete", app.order_url(), numbers[0]),
    )
    .await;

    mqtt.restart();
    let count = eventually(
        Duration::from_secs(30),
        "the board restored after the restart",
        || board_matches(store.clone(), mqtt.port),
    )
    .await;
    assert_eq!(count, 3, "three open orders on the restored board");
    let (status, h) = health(&http, &bridge_url).await;
    assert_eq!(status, 200, "{h}");

    // Again, with publishes in flight: the broker dies in the middle of a burst.
    let burst: Vec<_> = (0..150)
        .map(|i| {
            let (http, url) = (http.clone(), app.order_url());
            tokio::spawn(async move { place(&http, &url, &spec_orders()[i % 3]).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    mqtt.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    mqtt.restart();
    for p in burst {
        p.await.expect("burst order");
    }
    let count = eventually(
        Duration::from_secs(60),
        "the board restored after a restart during a burst",
        || board_matches(store.clone(), mqtt.port),
    )
    .await;
    assert_eq!(count, 153, "every open order on the board");
    app.stop().await;
}

// ---------------------------------------------------------------------------
// 4. The state from the messages is the stored state
// ---------------------------------------------------------------------------

/// The bridge publishes each order's retained state from the messages
/// (`OrderView::from_message`, `OrderView::apply`) instead of reading the
/// database. Here every message the stores write into the outbox for a whole
/// lifecycle (new, cooking, ready, completed, recalled, completed) is replayed
/// that way, and after each one the retained payload equals the one built
/// from the database row.
async fn state_from_messages_is_the_stored_state(b: Backend) {
    use restaurant_system::domain::events::{OrderMessage, StatusUpdate};
    use restaurant_system::domain::order::validate;
    use restaurant_system::domain::OrderStatus;
    use restaurant_system::services::display::payload::order_state;
    use restaurant_system::storage::{Durability, OrderView, Transition};

    let env = TestEnv::new(b);
    let store = env.open_store().await;
    let order = validate(&spec_orders()[1]).expect("a valid spec order");
    let created = store
        .create_order(
            &order,
            "rid-1",
            chrono::Utc::now(),
            chrono::Utc::now().date_naive(),
        )
        .await
        .expect("create");
    let n = created.order_number;
    let at = chrono::Utc::now();
    let mut msgs = store
        .claim_outbox(&[], 10, Duration::from_secs(10), at)
        .await
        .expect("outbox");
    let mut view =
        OrderView::from_message(&OrderMessage::decode(msgs[0].payload.as_bytes()).unwrap())
            .expect("the message carries created_at");
    let stored = store.order(&n).await.unwrap().unwrap();
    assert_eq!(
        order_state(&view, false, at),
        order_state(&stored, false, at),
        "new order"
    );

    let steps = [
        (OrderStatus::Cooking, "chef_a"),
        (OrderStatus::Ready, "chef_a"),
        (OrderStatus::Completed, "order-service"),
        (OrderStatus::Ready, "order-service"),
        (OrderStatus::Completed, "order-service"),
    ];
    for (to, by) in steps {
        let now = chrono::Utc::now();
        let t = Transition {
            order_number: n.clone(),
            to,
            changed_by: by.to_string(),
            request_id: "rid-2".into(),
            now,
            estimated_completion: (to == OrderStatus::Cooking)
                .then(|| now + chrono::Duration::seconds(90)),
            notes: None,
            durability: Durability::Now,
        };
        store.transition(&t).await.expect("transition");
        // Deletes the rows handled so far and leases the new one.
        let ids: Vec<i64> = msgs.iter().map(|m| m.id).collect();
        msgs = store
            .claim_outbox(&ids, 10, Duration::from_secs(10), chrono::Utc::now())
            .await
            .expect("outbox");
        assert_eq!(msgs.len(), 1, "one message for -> {to}");
        assert_eq!(store.outbox_len().await.unwrap(), 1, "handled rows deleted");
        let u = StatusUpdate::decode(msgs[0].payload.as_bytes()).expect("status update");
        assert_eq!(
            msgs[0].message_id,
            u.event_id(),
            "message id names the change"
        );
        assert!(view.apply(&u), "-> {to} applies as the next version");
        assert!(!view.apply(&u), "the same update twice does not");
        let stored = store.order(&n).await.unwrap().unwrap();
        assert_eq!(
            String::from_utf8(order_state(&view, false, at)).unwrap(),
            String::from_utf8(order_state(&stored, false, at)).unwrap(),
            "after -> {to}"
        );
    }
}

// ---------------------------------------------------------------------------
// 5. notes, modifiers and allergens reach the retained ticket (issue 13)
// ---------------------------------------------------------------------------

async fn kitchen_details_reach_the_retained_ticket(b: Backend) {
    let mqtt = Mosquitto::start();
    let env = TestEnv::new(b);
    let cfg = bridge_cfg(&env, &mqtt);
    let app = env.start_with(Mode::All, None, &cfg).await;
    let http = reqwest::Client::new();
    let n = place(
        &http,
        &app.order_url(),
        &json!({"customer_name": "Ana Lopez", "order_type": "dine_in", "table_number": 3,
                "notes": "Birthday: candle on the dessert",
                "items": [{"name": "Satay", "quantity": 1, "price": 9.0,
                           "modifiers": ["sauce on the side"], "notes": "mild",
                           "allergens": ["peanuts", "soya"]},
                          {"name": "Water", "quantity": 1, "price": 2.0}]}),
    )
    .await;
    let topic = format!("{PREFIX}/orders/{n}");
    // A real client connected after the fact reads it from the retained store.
    let port = mqtt.port;
    let state = eventually(Duration::from_secs(20), "the retained ticket", || {
        let topic = topic.clone();
        async move {
            let board = mosquitto_sub(port, 1).await;
            board
                .get(&topic)
                .filter(|p| !p.is_empty())
                .map(|p| json_of(p))
        }
    })
    .await;
    assert_eq!(state["notes"], "Birthday: candle on the dessert");
    assert_eq!(
        state["items"],
        json!([{"name": "Satay", "quantity": 1, "price": 9.0, "notes": "mild",
                "modifiers": ["sauce on the side"], "allergens": ["peanuts", "soya"]},
               {"name": "Water", "quantity": 1, "price": 2.0}])
    );
    app.stop().await;
}

// ---------------------------------------------------------------------------
// 6. stations (issue 24): each station's retained copy follows its parts
// ---------------------------------------------------------------------------

fn stations_cfg(cfg: &mut Config) {
    use restaurant_system::process::config::{RuleConfig, StationConfig};
    let station = |name: &str| StationConfig {
        name: name.into(),
        ..Default::default()
    };
    let rule = |category: &str, to: &str| RuleConfig {
        category: Some(category.into()),
        item: None,
        stations: vec![to.into()],
    };
    cfg.stations.default = Some("grill".into());
    cfg.stations.station = vec![station("grill"), station("fry"), station("bar")];
    cfg.stations.rule = vec![
        rule("burgers", "grill"),
        rule("sides", "fry"),
        rule("drinks", "bar"),
    ];
    cfg.expo.confirm = false;
}

/// What a client connecting now finds retained under `P/stations/+/orders/{n}`:
/// station -> payload.
async fn station_copies(port: u16, n: &str) -> BTreeMap<String, Value> {
    mosquitto_sub(port, 1)
        .await
        .into_iter()
        // A clear seen live prints as "(null)".
        .filter(|(_, p)| !p.is_empty() && p != "(null)")
        .filter_map(|(t, p)| {
            let rest = t.strip_prefix(&format!("{PREFIX}/stations/"))?;
            let (station, order) = rest.split_once("/orders/")?;
            (order == n).then(|| (station.to_string(), json_of(&p)))
        })
        .collect()
}

async fn station_topics_follow_the_parts(b: Backend) {
    let mqtt = Mosquitto::start();
    let env = TestEnv::new(b);
    let mut cfg = bridge_cfg(&env, &mqtt);
    stations_cfg(&mut cfg);
    let watcher = Watcher::start(mqtt.port).await;
    let app = env.start_with(Mode::All, None, &cfg).await;
    let http = reqwest::Client::new();
    let n = place(
        &http,
        &app.order_url(),
        &json!({"customer_name": "Sam Lee", "order_type": "takeout",
                "items": [{"name": "Bacon Burger", "quantity": 2, "price": 11.5, "category": "burgers"},
                          {"name": "Fries", "quantity": 1, "price": 3.5, "category": "sides"},
                          {"name": "Cola", "quantity": 1, "price": 3.0, "category": "drinks"}]}),
    )
    .await;
    let port = mqtt.port;
    // Routed to all three: each station's copy is retained, carrying every part.
    let copies = eventually(Duration::from_secs(20), "three station copies", || {
        let n = n.clone();
        async move {
            let c = station_copies(port, &n).await;
            (c.len() == 3).then_some(c)
        }
    })
    .await;
    let grill = &copies["grill"];
    assert_eq!(grill["status"], "received");
    assert_eq!(grill["rush"], false);
    assert_eq!(grill["expo"]["confirm"], false);
    let parts: Vec<(String, String)> = grill["items"]
        .as_array()
        .expect("items")
        .iter()
        .flat_map(|it| it["stations"].as_array().expect("parts").clone())
        .map(|p| {
            (
                p["station"].as_str().unwrap_or("?").into(),
                p["state"].as_str().unwrap_or("?").into(),
            )
        })
        .collect();
    let want: Vec<(String, String)> =
        [("grill", "waiting"), ("fry", "waiting"), ("bar", "waiting")]
            .iter()
            .map(|(s, st)| (s.to_string(), st.to_string()))
            .collect();
    assert_eq!(parts, want);

    // The grill bumps its item: its copy is cleared, the others stay; the order cooks.
    let o = app.order_url();
    post_ok(&http, format!("{o}/orders/{n}/stations/grill/items/0/bump")).await;
    let copies = eventually(Duration::from_secs(10), "the grill's copy cleared", || {
        let n = n.clone();
        async move {
            let c = station_copies(port, &n).await;
            (!c.contains_key("grill") && c.len() == 2).then_some(c)
        }
    })
    .await;
    assert_eq!(copies["fry"]["status"], "cooking");
    assert_eq!(copies["fry"]["items"][0]["stations"][0]["state"], "done");

    // Fry and then the bar bump their parts: ready, on no station's screen any more.
    post_ok(&http, format!("{o}/orders/{n}/stations/fry/bump")).await;
    post_ok(&http, format!("{o}/orders/{n}/stations/bar/bump")).await;
    let topic = format!("{PREFIX}/orders/{n}");
    eventually(Duration::from_secs(10), "ready, no station copy", || {
        let (n, topic) = (n.clone(), topic.clone());
        async move {
            let board = mosquitto_sub(port, 1).await;
            let ready = board
                .get(&topic)
                .is_some_and(|p| !p.is_empty() && p != "(null)" && json_of(p)["status"] == "ready");
            (ready && station_copies(port, &n).await.is_empty()).then_some(())
        }
    })
    .await;
    // The item changes went out on the change feed too, in version order.
    let done: Vec<i64> = watcher
        .events()
        .iter()
        .filter(|e| e["order_number"] == n.as_str() && e["kind"] == "station_update")
        .map(|e| e["version"].as_i64().unwrap_or(0))
        .collect();
    assert_eq!(done.len(), 3, "station_update events: {done:?}");
    assert!(
        done.windows(2).all(|w| w[0] < w[1]),
        "out of order: {done:?}"
    );
    app.stop().await;
}

backend_tests!(
    station_topics_follow_the_parts,
    order_is_retained_then_cleared,
    restart_delivers_every_change_in_order,
    broker_restart_restores_the_board,
    state_from_messages_is_the_stored_state,
    kitchen_details_reach_the_retained_ticket
);

/// Issue 22, item 7: `scripts/run.sh` starts Mosquitto's WebSockets listener
/// on `MQTT_WS_PORT`, and the display page and the board must connect there,
/// not to a hard-coded 9001: the port reaches them through `config.json`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_follows_the_websockets_port() {
    let env = TestEnv::new(Backend::Sqlite);
    let mut cfg = env.cfg.clone();
    cfg.display.mqtt_ws_port = 9555;
    let app = env.start_with(Mode::TrackingService, None, &cfg).await;
    let v: Value = reqwest::get(format!("{}/display/config.json", app.tracking_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["mqtt_ws_port"], 9555, "{v}");
    app.stop().await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    for page in ["web/src/display.js", "web/src/board.js"] {
        let js = read(page);
        assert!(js.contains("mqtt_ws_port"), "{page} ignores mqtt_ws_port");
    }
    assert!(
        read("scripts/run.sh")
            .contains("RESTAURANT_DISPLAY__MQTT_WS_PORT=\"${RESTAURANT_DISPLAY__MQTT_WS_PORT:-$MQTT_WS_PORT}\""),
        "scripts/run.sh must hand MQTT_WS_PORT to the page"
    );
}
