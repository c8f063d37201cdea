//! Stations and the expo (issue 24, docs/stations.md), on both backends:
//! the store (routing stored at intake, bump/undo, readiness from the last
//! station, expo confirm on and off, rush ordering, history, report samples;
//! the same rows and messages on both), and the real binary's API (the
//! routes and their answers, the messages on `stations_topic`, a kill -9
//! between two bumps).
use crate::common;

use chrono::{DateTime, TimeZone, Utc};
use common::{Backend, Proc, TestEnv};
use restaurant_system::domain::events::STATIONS_EXCHANGE;
use restaurant_system::domain::order::validate;
use restaurant_system::domain::stations::{Action, PartState, Refusal, Routing};
use restaurant_system::domain::OrderStatus;
use restaurant_system::process::config::Config;
use restaurant_system::storage::{OrderView, SharedStore, StationChange, StationOutcome};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

fn at(ms: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 15, 10, 0, 0).unwrap() + chrono::Duration::milliseconds(ms)
}

/// The burger restaurant of docs/stations.toml, with `[expo] confirm` as asked.
fn burger_config(confirm: bool) -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/stations.toml");
    let mut cfg = Config::load(Some(&path)).expect("docs/stations.toml loads");
    cfg.expo.confirm = confirm;
    cfg
}

fn routing(confirm: bool) -> Routing {
    burger_config(confirm)
        .routing()
        .expect("stations configured")
}

/// A burger (grill), fries (fry), a combo (grill and fry) and a shake (drinks).
fn burger_order() -> Value {
    json!({"customer_name": "Ann", "order_type": "takeout", "items": [
        {"name": "Bacon Burger", "quantity": 2, "price": 11.5, "category": "Burgers"},
        {"name": "Curly Fries", "quantity": 1, "price": 3.0, "category": "sides"},
        {"name": "Kids Combo", "quantity": 1, "price": 7.0},
        {"name": "Vanilla Shake", "quantity": 1, "price": 4.0, "category": "desserts"}
    ]})
}

async fn create(store: &SharedStore, r: &Routing, body: &Value, now: DateTime<Utc>) -> String {
    let order = r.route_order(validate(body).expect("valid order"));
    store
        .create_order(&order, "rid-create", now, now.date_naive())
        .await
        .expect("create")
        .order_number
}

async fn act(
    store: &SharedStore,
    r: &Routing,
    n: &str,
    action: Action,
    by: &str,
    now: DateTime<Utc>,
) -> Result<(Box<OrderView>, bool), Refusal> {
    let c = StationChange {
        order_number: n.to_string(),
        action,
        by: by.to_string(),
        request_id: "rid-station".into(),
        now,
    };
    match store.station_change(&c, r).await.expect("station change") {
        StationOutcome::Applied { order, changed } => Ok((order, changed)),
        StationOutcome::Refused(e) => Err(e),
        StationOutcome::NotFound => panic!("order {n} not found"),
    }
}

fn bump(station: &str, item: i32) -> Action {
    Action::Bump {
        station: station.into(),
        item,
    }
}

fn undo(station: &str, item: i32) -> Action {
    Action::Undo {
        station: station.into(),
        item,
    }
}

fn parts(o: &OrderView) -> Vec<(i32, String, PartState)> {
    o.parts
        .iter()
        .map(|p| (p.item_index, p.station.clone(), p.state))
        .collect()
}

/// The whole scenario on one backend; returns what both must agree on: the
/// history and every outbox message (exchange, key, id, payload).
async fn store_scenario(b: Backend) -> Value {
    let env = TestEnv::new(b);
    let store = env.open_store().await;
    let r = routing(false);
    let n = create(&store, &r, &burger_order(), at(0)).await;

    // Routing is stored with the order: first matching rule, default, both stations of a combo.
    let o = store.order(&n).await.unwrap().unwrap();
    use PartState::*;
    assert_eq!(
        parts(&o),
        [
            (0, "grill".into(), Waiting),
            (1, "fry".into(), Waiting),
            (2, "grill".into(), Waiting),
            (2, "fry".into(), Waiting),
            (3, "drinks".into(), Waiting),
        ]
    );
    assert_eq!(o.placed.items[0].category.as_deref(), Some("Burgers"));
    assert_eq!(o.placed.items[2].stations, ["grill", "fry"]);
    assert_eq!(o.status, OrderStatus::Received);

    // Starting an item moves the order to cooking; a double tap changes nothing.
    let start = Action::Start {
        station: "grill".into(),
        item: 0,
    };
    let (o, changed) = act(&store, &r, &n, start.clone(), "anna", at(1_000))
        .await
        .unwrap();
    assert!(changed);
    assert_eq!(o.status, OrderStatus::Cooking);
    assert_eq!(o.processed_by.as_deref(), Some("anna"));
    let (_, changed) = act(&store, &r, &n, start, "anna", at(1_500)).await.unwrap();
    assert!(!changed);

    // Bump and undo within the window; the undo after it is too late.
    act(&store, &r, &n, bump("grill", 0), "anna", at(2_000))
        .await
        .unwrap();
    let (o, _) = act(&store, &r, &n, undo("grill", 0), "anna", at(4_000))
        .await
        .unwrap();
    assert_eq!(o.parts[0].state, Cooking, "back to cooking: it was started");
    assert_eq!(o.parts[0].bumped_by, None);
    act(&store, &r, &n, bump("grill", 0), "anna", at(5_000))
        .await
        .unwrap();
    assert!(matches!(
        act(&store, &r, &n, undo("grill", 0), "anna", at(16_000)).await,
        Err(Refusal::UndoTooLate(_))
    ));
    assert!(matches!(
        act(&store, &r, &n, bump("drinks", 0), "x", at(16_000)).await,
        Err(Refusal::ItemNotAtStation { .. })
    ));

    // The fry station bumps its whole part; the order waits for the drinks.
    let (o, _) = act(
        &store,
        &r,
        &n,
        Action::BumpStation {
            station: "fry".into(),
        },
        "ben",
        at(20_000),
    )
    .await
    .unwrap();
    assert_eq!(o.parts[1].state, Done);
    assert_eq!(o.parts[3].state, Done);
    assert_eq!(o.parts[3].bumped_by.as_deref(), Some("ben"));
    assert_eq!(o.status, OrderStatus::Cooking);
    act(&store, &r, &n, bump("grill", 2), "anna", at(21_000))
        .await
        .unwrap();
    assert_eq!(
        store.order(&n).await.unwrap().unwrap().status,
        OrderStatus::Cooking
    );
    // The last station's bump makes it ready, and its undo takes that back.
    let (o, _) = act(&store, &r, &n, bump("drinks", 3), "cleo", at(30_000))
        .await
        .unwrap();
    assert_eq!(o.status, OrderStatus::Ready);
    assert_eq!(o.stations_done_at, Some(at(30_000)));
    let (o, _) = act(&store, &r, &n, undo("drinks", 3), "cleo", at(32_000))
        .await
        .unwrap();
    assert_eq!((o.status, o.stations_done_at), (OrderStatus::Cooking, None));
    let (o, _) = act(&store, &r, &n, bump("drinks", 3), "cleo", at(33_000))
        .await
        .unwrap();
    assert_eq!(o.status, OrderStatus::Ready);
    // A ready order takes no more bumps.
    assert!(matches!(
        act(&store, &r, &n, bump("grill", 0), "x", at(34_000)).await,
        Err(Refusal::OrderClosed(OrderStatus::Ready))
    ));

    // The history shows every part change beside the status changes.
    let history = store.history(&n).await.unwrap().unwrap();
    let h = serde_json::to_value(&history).unwrap();
    let first_bump = h
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["item_state"] == "done")
        .unwrap();
    assert_eq!(
        first_bump,
        &json!({"status": "cooking", "timestamp": "2026-01-15T10:00:02Z", "changed_by": "anna",
                "station": "grill", "item_index": 0, "item": "Bacon Burger", "item_state": "done"})
    );
    let statuses: Vec<&str> = history
        .iter()
        .filter(|e| e.station.is_none())
        .map(|e| e.status.as_str())
        .collect();
    assert_eq!(
        statuses,
        ["received", "cooking", "ready", "cooking", "ready"]
    );
    assert_eq!(history.len(), 5 + 10, "{h:#}");

    // The report's samples: every done part, and the expo's wait (zero without confirm).
    let times = store.station_times(at(0), at(60_000)).await.unwrap();
    let mut grill: Vec<_> = times
        .parts
        .iter()
        .filter(|p| p.0 == "grill")
        .map(|p| (p.2 - p.1).num_milliseconds())
        .collect();
    grill.sort();
    assert_eq!(grill, [5_000, 21_000]);
    assert_eq!(times.parts.len(), 5);
    assert_eq!(times.expo, [(at(33_000), at(33_000))]);

    let msgs = store
        .claim_outbox(&[], 1000, Duration::from_secs(30), Utc::now())
        .await
        .unwrap();
    let mut out: Vec<Value> = msgs
        .iter()
        .map(|m| {
            json!([
                m.exchange,
                m.routing_key,
                m.message_id,
                serde_json::from_str::<Value>(&m.payload).unwrap()
            ])
        })
        .collect();
    // The Order Message names each item's stations.
    assert_eq!(out[0][3]["items"][2]["stations"], json!(["grill", "fry"]));
    // Then a message per change, versions 2.. in order: part changes on
    // stations_topic, status changes on the notifications.
    let versions: Vec<i64> = out[1..]
        .iter()
        .map(|m| m[3]["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, (2..2 + versions.len() as i64).collect::<Vec<_>>());
    assert_eq!(out[1][0], STATIONS_EXCHANGE);
    assert_eq!(out[1][1], "station.grill");
    assert_eq!(out[1][2], format!("{n}:item_started:2"));
    assert_eq!(out[2][3]["new_status"], "cooking");
    // Order numbers differ by day only in the test's database; blank them for the comparison.
    for m in &mut out {
        m[2] = json!(m[2].as_str().unwrap().replace(&n, "N"));
        m[3]["order_number"] = json!("N");
    }
    json!({"history": h, "outbox": out})
}

#[tokio::test]
async fn store_stations_behave_alike_on_both_backends() {
    let pg = store_scenario(Backend::Postgres).await;
    let lite = store_scenario(Backend::Sqlite).await;
    assert_eq!(pg, lite);
}

async fn expo_and_rush(b: Backend) {
    let env = TestEnv::new(b);
    let store = env.open_store().await;
    let r = routing(true);
    let one = json!({"customer_name": "Bo", "order_type": "dine_in", "table_number": 4,
                     "items": [{"name": "Cola", "quantity": 1, "price": 2.0, "category": "drinks"},
                               {"name": "Burger", "quantity": 1, "price": 9.0, "category": "burgers"}]});
    let a = create(&store, &r, &one, at(0)).await;
    let b2 = create(&store, &r, &one, at(1_000)).await;
    let c = create(&store, &r, &one, at(2_000)).await;

    // Oldest first; rush jumps the queue on every station's screen and on expo's.
    let numbers = |v: Vec<OrderView>| {
        v.into_iter()
            .map(|o| o.placed.order_number)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        numbers(store.tickets(Some("grill")).await.unwrap()),
        [a.clone(), b2.clone(), c.clone()]
    );
    act(&store, &r, &c, Action::Rush(true), "expo", at(3_000))
        .await
        .unwrap();
    assert_eq!(
        numbers(store.tickets(Some("grill")).await.unwrap()),
        [c.clone(), a.clone(), b2.clone()]
    );
    assert_eq!(
        numbers(store.tickets(None).await.unwrap()),
        [c.clone(), a.clone(), b2.clone()]
    );
    assert!(store.tickets(Some("fry")).await.unwrap().is_empty());
    let (o, changed) = act(&store, &r, &c, Action::Rush(true), "expo", at(3_500))
        .await
        .unwrap();
    assert!(o.rush && !changed);

    // With confirm, the last bump leaves the order cooking until the expo sends it.
    assert!(matches!(
        act(&store, &r, &a, Action::Confirm, "expo", at(4_000)).await,
        Err(Refusal::ExpoNotWaiting)
    ));
    act(&store, &r, &a, bump("drinks", 0), "dan", at(5_000))
        .await
        .unwrap();
    let (o, _) = act(&store, &r, &a, bump("grill", 1), "eve", at(6_000))
        .await
        .unwrap();
    assert_eq!(
        (o.status, o.stations_done_at),
        (OrderStatus::Cooking, Some(at(6_000)))
    );
    // Done at the grill: off the grill's screen, still on expo's.
    assert_eq!(
        numbers(store.tickets(Some("grill")).await.unwrap()),
        [c.clone(), b2.clone()]
    );
    assert!(numbers(store.tickets(None).await.unwrap()).contains(&a));
    let (o, _) = act(&store, &r, &a, Action::Confirm, "expo", at(16_000))
        .await
        .unwrap();
    assert_eq!(o.status, OrderStatus::Ready);
    // Once the expo sent it, a cook's undo is refused.
    assert!(matches!(
        act(&store, &r, &a, undo("grill", 1), "eve", at(16_500)).await,
        Err(Refusal::OrderClosed(OrderStatus::Ready))
    ));
    let times = store.station_times(at(0), at(60_000)).await.unwrap();
    assert_eq!(times.expo, [(at(6_000), at(16_000))]);

    // An order made without stations has no parts: nothing to bump.
    let plain = validate(&one).unwrap();
    let d = store
        .create_order(&plain, "rid", at(7_000), at(7_000).date_naive())
        .await
        .unwrap()
        .order_number;
    assert!(store.order(&d).await.unwrap().unwrap().parts.is_empty());
    assert!(matches!(
        act(&store, &r, &d, bump("grill", 1), "eve", at(8_000)).await,
        Err(Refusal::ItemNotAtStation { .. })
    ));
}

#[tokio::test]
async fn expo_confirm_and_rush_on_postgres() {
    expo_and_rush(Backend::Postgres).await;
}

#[tokio::test]
async fn expo_confirm_and_rush_on_sqlite() {
    expo_and_rush(Backend::Sqlite).await;
}

// ---------------------------------------------------------------------------
// The real binary.

/// The order service as the real binary, with the burger restaurant's config.
fn order_service(env: &TestEnv, config: &Path) -> Proc {
    let mut cmd = binary(env, config);
    cmd.arg("--mode=order-service")
        .env("RESTAURANT_HTTP__ORDER_PORT", "0");
    Proc::spawn("order-service", cmd)
}

/// The real binary with `config` and this test's servers.
fn binary(env: &TestEnv, config: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_restaurant-system"));
    cmd.arg("--config").arg(config);
    for (k, v) in env.env_vars() {
        cmd.env(k, v);
    }
    cmd
}

/// Waits until `queue` has given `n` messages in all (appending to `got`).
async fn take(ch: &lapin::Channel, queue: &str, got: &mut Vec<(String, Value)>, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while got.len() < n {
        for d in common::get_all(ch, queue).await {
            got.push((
                d.exchange.to_string(),
                serde_json::from_slice(&d.data).unwrap(),
            ));
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {n} messages: {got:?}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn post(http: &reqwest::Client, url: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = http.post(url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let (s, _, v) = common::split(req.send().await.unwrap()).await;
    (s, v)
}

async fn api(b: Backend) {
    let env = TestEnv::new(b);
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/stations.toml");
    let ch = env.amqp_with_topology().await;
    let tap = common::notification_tap(&ch).await;
    ch.queue_bind(
        tap.as_str().into(),
        STATIONS_EXCHANGE.into(),
        "#".into(),
        lapin::options::QueueBindOptions::default(),
        lapin::types::FieldTable::default(),
    )
    .await
    .unwrap();

    let mut svc = order_service(&env, &config);
    let base = format!("http://127.0.0.1:{}", svc.port().await);
    let mut cfg = env.cfg.clone();
    let burger = burger_config(true);
    cfg.stations = burger.stations.clone();
    cfg.expo = burger.expo.clone();
    let tracking = env
        .start_with(restaurant_system::modes::Mode::TrackingService, None, &cfg)
        .await;
    let tu = tracking.tracking_url();
    let http = reqwest::Client::new();

    let (s, _, v) = common::get_json(&http, &format!("{tu}/stations")).await;
    assert_eq!(s, 200);
    assert_eq!(
        v["stations"][0],
        json!({"name": "grill", "yellow_after_seconds": 420, "red_after_seconds": 600})
    );
    assert_eq!(v["expo"]["confirm"], true);

    let n = common::place_order(&http, &base, &burger_order()).await;
    let (_, _, o) = common::get_json(&http, &format!("{tu}/orders/{n}")).await;
    assert_eq!(o["items"][2]["category"], Value::Null);
    assert_eq!(o["items"][2]["stations"][1]["station"], "fry");
    assert_eq!(o["items"][2]["stations"][1]["state"], "waiting");
    assert_eq!(o["rush"], false);
    assert_eq!(
        o["expo"],
        json!({"confirm": true, "waiting": false, "stations_done_at": null})
    );

    // Refusals: JSON, with their codes.
    let item = |base: &str, st: &str, i: i32, a: &str| {
        format!("{base}/orders/{n}/stations/{st}/items/{i}/{a}")
    };
    for (url, body, want, code) in [
        (item(&base, "pastry", 0, "bump"), None, 404, None),
        (
            item(&base, "fry", 0, "bump"),
            None,
            404,
            Some("item_not_at_station"),
        ),
        (item(&base, "grill", 99, "bump"), None, 400, None),
        (
            item(&base, "grill", 0, "undo"),
            None,
            409,
            Some("undo_too_late"),
        ),
        (
            format!("{base}/orders/{n}/expo/confirm"),
            None,
            409,
            Some("expo_not_waiting"),
        ),
        (
            item(&base, "grill", 0, "bump"),
            Some(json!({"by": "not a name!"})),
            400,
            None,
        ),
        (
            item(&base, "grill", 0, "bump"),
            Some(json!({"who": "x"})),
            400,
            None,
        ),
        (
            format!("{base}/orders/ORD_20240101_999/rush"),
            None,
            404,
            None,
        ),
        (format!("{base}/orders/nope/rush"), None, 400, None),
    ] {
        let (s, v) = post(&http, &url, body).await;
        assert_eq!(s, want, "{url}: {v}");
        assert!(v["error"].is_string(), "{url}: {v}");
        if let Some(code) = code {
            assert_eq!(v["details"][0]["code"], code, "{url}: {v}");
        }
    }
    // A wrong method on a station route: 405; a made-up write route: refused.
    let r = http
        .get(item(&base, "grill", 0, "bump"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let (s, v) = post(
        &http,
        &format!("{base}/orders/{n}/stations/grill/explode"),
        None,
    )
    .await;
    assert_eq!(s, 404, "{v}");

    // The first bump: 200 with the order, cooking now.
    let (s, v) = post(
        &http,
        &item(&base, "grill", 0, "bump"),
        Some(json!({"by": "anna"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["changed"].clone(), v["status"].clone()),
        (json!(true), json!("cooking"))
    );
    assert_eq!(v["items"][0]["stations"][0]["bumped_by"], "anna");
    // (Published before the kill: a dead process's rows are taken over after
    // 5 s, and would then come after the new process's.)
    let mut got = Vec::new();
    take(&ch, &tap, &mut got, 2).await;

    // kill -9 between two bumps: the answered one survives, the next one lands.
    svc.signal(nix::sys::signal::Signal::SIGKILL);
    svc.wait_exit(Duration::from_secs(10)).await;
    let mut svc = order_service(&env, &config);
    let base2 = format!("http://127.0.0.1:{}", svc.port().await);
    let (s, v) = post(
        &http,
        &format!("{base2}/orders/{n}/stations/fry/bump"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["items"][0]["stations"][0]["state"], "done",
        "the bump before kill -9: {v}"
    );
    assert_eq!(v["items"][1]["stations"][0]["bumped_by"], "fry");
    let (s, v) = post(
        &http,
        &format!("{base2}/orders/{n}/stations/grill/bump"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    // Rush from the expo; the drinks station's bump is the last: waiting for the expo.
    let (s, v) = post(&http, &format!("{base2}/orders/{n}/rush"), None).await;
    assert_eq!((s, v["rush"].clone()), (200, json!(true)), "{v}");
    let (_, _, t) = common::get_json(&http, &format!("{tu}/tickets?station=drinks")).await;
    assert_eq!(t[0]["order_number"], n.as_str());
    let (s, v) = post(&http, &item(&base2, "drinks", 3, "bump"), None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "cooking");
    assert_eq!(v["expo"]["waiting"], true);
    let (_, _, t) = common::get_json(&http, &format!("{tu}/tickets?station=drinks")).await;
    assert_eq!(t, json!([]));
    let (s, v) = post(&http, &format!("{base2}/orders/{n}/expo/confirm"), None).await;
    assert_eq!((s, v["status"].clone()), (200, json!("ready")), "{v}");

    // History and report.
    let (_, _, h) = common::get_json(&http, &format!("{tu}/orders/{n}/history")).await;
    let h = h.as_array().unwrap().clone();
    let part_entries: Vec<_> = h.iter().filter(|e| e["station"].is_string()).collect();
    assert_eq!(part_entries.len(), 5, "{h:?}");
    assert!(h.iter().any(|e| e["rush"] == true));
    assert_eq!(h.last().unwrap()["status"], "ready");
    assert_eq!(h.last().unwrap()["changed_by"], "expo");
    let (s, _, rep) = common::get_json(&http, &format!("{tu}/reports/speed-of-service")).await;
    assert_eq!(s, 200, "{rep}");
    assert_eq!(rep["by_station"]["grill"]["count"], 2, "{rep}");
    assert_eq!(rep["by_station"]["fry"]["count"], 2);
    assert_eq!(rep["by_station"]["drinks"]["count"], 1);
    assert_eq!(rep["expo_wait"]["count"], 1);
    assert!(rep["expo_wait"]["avg_seconds"].as_f64().unwrap() >= 0.0);

    // Every change reached RabbitMQ: Station Updates on stations_topic, in order, then ready.
    take(&ch, &tap, &mut got, 8).await;
    let events: Vec<String> = got
        .iter()
        .map(|(x, v)| {
            if x == STATIONS_EXCHANGE {
                format!("{}@{}", v["event"].as_str().unwrap(), v["version"])
            } else {
                format!("{}@{}", v["new_status"].as_str().unwrap(), v["version"])
            }
        })
        .collect();
    assert_eq!(
        events,
        [
            "item_done@2",
            "cooking@3",
            "item_done@4",
            "item_done@5",
            "item_done@6",
            "rush@7",
            "item_done@8",
            "ready@9"
        ],
        "{got:?}"
    );
    svc.stop().await;
    tracking.stop().await;
}

#[tokio::test]
async fn api_on_postgres() {
    api(Backend::Postgres).await;
}

#[tokio::test]
async fn api_on_sqlite() {
    api(Backend::Sqlite).await;
}

/// With stations configured, the kitchen-worker mode refuses to start: cooks
/// bump items, no timer cooks whole orders.
#[tokio::test]
async fn no_kitchen_worker_with_stations() {
    let env = TestEnv::new(Backend::Sqlite);
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/stations.toml");
    let mut cmd = binary(&env, &config);
    cmd.args(["--mode=kitchen-worker", "--worker-name=chef_a"]);
    let mut p = Proc::spawn("kitchen-worker", cmd);
    let st = p.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(st.code(), Some(2));
    assert!(
        p.stderr().join("\n").contains("[stations]"),
        "{:?}",
        p.stderr()
    );
}
