//! Idempotent order intake (issue 14, part 1) through the HTTP API, on both
//! backends: a retry with the same `Idempotency-Key` and body gets the original
//! order (200, same number, `Idempotent-Replayed: true`) and creates nothing;
//! another body is a 422; concurrent requests with one key make one order;
//! keys survive a restart, are per caller, and expire; a bad key is a 400; no
//! key is today's intake.
use crate::common;

use common::{eventually, split, takeout, Backend, TestEnv};
use restaurant_system::domain::access::{hash_token, token_from_bytes, Role};
use restaurant_system::modes::Mode;
use serde_json::{json, Value};
use std::time::Duration;

const KEY: &str = "Idempotency-Key";

async fn post_keyed(
    http: &reqwest::Client,
    order_url: &str,
    key: &str,
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let resp = http
        .post(format!("{order_url}/orders"))
        .header(KEY, key)
        .json(body)
        .send()
        .await
        .expect("POST /orders");
    split(resp).await
}

/// Orders in the store (no kitchen worker runs: every order stays received).
async fn order_count(app: &common::App) -> usize {
    app.store().open_orders().await.expect("open orders").len()
}

fn replayed(h: &reqwest::header::HeaderMap) -> bool {
    h.get("idempotent-replayed").and_then(|v| v.to_str().ok()) == Some("true")
}

/// Replay, other body, another caller's same key, and no key at all.
async fn replay_and_mismatch(b: Backend) {
    let env = TestEnv::new(b);
    let app = env.start(Mode::OrderService, None).await;
    let http = reqwest::Client::new();
    let url = app.order_url();
    let body = takeout("Key Holder", 2, 9.5);

    let (s1, h1, v1) = post_keyed(&http, &url, "pos-1:ticket-0001", &body).await;
    assert_eq!(s1, 200, "{v1}");
    assert!(!replayed(&h1));
    let n = v1["order_number"]
        .as_str()
        .expect("order_number")
        .to_string();
    assert_eq!(
        v1,
        json!({"order_number": n, "status": "received", "total_amount": 19.0})
    );
    assert_eq!(order_count(&app).await, 1);

    // The same request again, with its body's keys reordered and re-spaced:
    // the original answer, and nothing new.
    let same: Value = serde_json::from_str(
        r#"{ "items": [{"price": 9.5, "name": "Pizza", "quantity": 2}],
             "order_type": "takeout", "customer_name": "Key Holder" }"#,
    )
    .unwrap();
    for _ in 0..3 {
        let (s, h, v) = post_keyed(&http, &url, "pos-1:ticket-0001", &same).await;
        assert_eq!(s, 200, "{v}");
        assert!(replayed(&h), "replay header missing: {h:?}");
        assert_eq!(v, v1, "a replay answers exactly as the first time");
        assert_eq!(h["location"], h1["location"]);
    }
    assert_eq!(order_count(&app).await, 1);
    let history = app.store().history(&n).await.unwrap().expect("history");
    assert_eq!(history.len(), 1, "a replay writes no status row");

    // The same key with another body: 422 naming the header, nothing created.
    let other = takeout("Key Holder", 3, 9.5);
    let (s, _, v) = post_keyed(&http, &url, "pos-1:ticket-0001", &other).await;
    assert_eq!(s, 422, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("Idempotency-Key"),
        "{v}"
    );
    assert_eq!(v["details"][0]["field"], KEY);
    assert_eq!(order_count(&app).await, 1);

    // A new key is a new order.
    let (s, h, v) = post_keyed(&http, &url, "pos-1:ticket-0002", &body).await;
    assert_eq!(s, 200, "{v}");
    assert!(!replayed(&h));
    assert_ne!(v["order_number"], v1["order_number"]);
    assert_eq!(order_count(&app).await, 2);

    // Keys are per caller: a POS token using the anonymous caller's key makes
    // its own order, and then replays its own.
    let token = token_from_bytes(rand::random());
    let stored = app
        .store()
        .create_token("till-7", Role::Pos, &hash_token(&token), chrono::Utc::now())
        .await
        .expect("create token");
    assert!(stored);
    let as_till = || {
        http.post(format!("{url}/orders"))
            .header(KEY, "pos-1:ticket-0001")
            .bearer_auth(&token)
            .json(&body)
    };
    // The services pick a new token up within a second.
    let (h, v) = eventually(Duration::from_secs(5), "the new token accepted", || async {
        let (s, h, v) = split(as_till().send().await.unwrap()).await;
        (s != 401).then_some((h, v))
    })
    .await;
    assert!(v["order_number"].is_string(), "{v}");
    assert!(!replayed(&h), "another caller's key is not ours");
    assert_ne!(v["order_number"], v1["order_number"]);
    assert_eq!(order_count(&app).await, 3);
    let (s, h, again) = split(as_till().send().await.unwrap()).await;
    assert_eq!(s, 200, "{again}");
    assert!(replayed(&h));
    assert_eq!(again, v);

    // Without the header: today's intake, unchanged (200, no replay header),
    // and the same body twice is two orders.
    let before = order_count(&app).await;
    for _ in 0..2 {
        let resp = http
            .post(format!("{url}/orders"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let (s, h, v) = split(resp).await;
        assert_eq!(s, 200, "{v}");
        assert!(h.get("idempotent-replayed").is_none());
    }
    assert_eq!(order_count(&app).await, before + 2);
    app.stop().await;
}

/// Keys that are not 1-255 printable ASCII characters: 400 naming the header.
async fn bad_keys(b: Backend) {
    let env = TestEnv::new(b);
    let app = env.start(Mode::OrderService, None).await;
    let http = reqwest::Client::new();
    let url = app.order_url();
    let body = takeout("Bad Key", 1, 5.0);
    let long = "k".repeat(256);
    let bad: Vec<reqwest::header::HeaderValue> = vec![
        reqwest::header::HeaderValue::from_static(""),
        reqwest::header::HeaderValue::from_str(&long).unwrap(),
        reqwest::header::HeaderValue::from_bytes("caf\u{e9}".as_bytes()).unwrap(),
        reqwest::header::HeaderValue::from_bytes(b"tab\there").unwrap(),
    ];
    for v in bad {
        let resp = http
            .post(format!("{url}/orders"))
            .header(KEY, v.clone())
            .json(&body)
            .send()
            .await
            .unwrap();
        let (s, _, e) = split(resp).await;
        assert_eq!(s, 400, "{v:?}: {e}");
        assert!(e["error"].as_str().unwrap().contains(KEY), "{e}");
        assert_eq!(e["details"][0]["field"], KEY, "{e}");
    }
    // Two keys in one request are not one key.
    let resp = http
        .post(format!("{url}/orders"))
        .header(KEY, "a")
        .header(KEY, "b")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // 255 characters is still a key.
    let (s, _, v) = post_keyed(&http, &url, &"k".repeat(255), &body).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(order_count(&app).await, 1);
    app.stop().await;
}

/// Ten requests at once with one key: exactly one order, and every answer
/// names it.
async fn concurrent_requests_make_one_order(b: Backend) {
    let env = TestEnv::new(b);
    let app = env.start(Mode::OrderService, None).await;
    let http = reqwest::Client::new();
    let url = app.order_url();
    for round in 0..3 {
        let key = format!("race-{round}");
        let body = takeout(["Racer Ann", "Racer Bo", "Racer Cy"][round], 1, 12.0);
        let answers = futures_util::future::join_all((0..10).map(|_| {
            let (http, url, key, body) = (http.clone(), url.clone(), key.clone(), body.clone());
            async move { post_keyed(&http, &url, &key, &body).await }
        }))
        .await;
        let mut numbers: Vec<String> = Vec::new();
        let mut fresh = 0;
        for (s, h, v) in &answers {
            assert_eq!(*s, 200, "{v}");
            numbers.push(v["order_number"].as_str().unwrap().to_string());
            if !replayed(h) {
                fresh += 1;
            }
        }
        numbers.dedup();
        assert_eq!(numbers.len(), 1, "answers disagree: {numbers:?}");
        assert_eq!(fresh, 1, "exactly one answer is the creation");
        assert_eq!(order_count(&app).await, round + 1);
    }
    app.stop().await;
}

/// Keys live in the database: a restarted service still replays them.
async fn keys_survive_a_restart(b: Backend) {
    let env = TestEnv::new(b);
    let http = reqwest::Client::new();
    let body = takeout("Before Restart", 1, 7.25);
    let app = env.start(Mode::OrderService, None).await;
    let (s, _, first) = post_keyed(&http, &app.order_url(), "restart-key", &body).await;
    assert_eq!(s, 200, "{first}");
    app.stop().await;

    let app = env.start(Mode::OrderService, None).await;
    let (s, h, again) = post_keyed(&http, &app.order_url(), "restart-key", &body).await;
    assert_eq!(s, 200, "{again}");
    assert!(replayed(&h));
    assert_eq!(again, first);
    assert_eq!(order_count(&app).await, 1);
    app.stop().await;
}

/// With a 1-second TTL, a key used 2 seconds ago is forgotten: the same
/// request makes a new order, and the sweep removes expired keys.
async fn expired_keys_make_new_orders(b: Backend) {
    let env = TestEnv::new(b);
    let mut cfg = env.cfg.clone();
    cfg.orders.idempotency_ttl_seconds = 1;
    let app = env.start_with(Mode::OrderService, None, &cfg).await;
    let http = reqwest::Client::new();
    let url = app.order_url();
    let body = takeout("Late Retry", 1, 3.0);
    let (s, _, first) = post_keyed(&http, &url, "short-lived", &body).await;
    assert_eq!(s, 200, "{first}");
    let (_, h, v) = post_keyed(&http, &url, "other-short-lived", &body).await;
    assert!(!replayed(&h), "{v}");
    // Waiting out a TTL: the behaviour under test is what happens after it.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (s, h, second) = post_keyed(&http, &url, "short-lived", &body).await;
    assert_eq!(s, 200, "{second}");
    assert!(!replayed(&h), "an expired key is no key");
    assert_ne!(second["order_number"], first["order_number"]);
    assert_eq!(order_count(&app).await, 3);
    // And the new order has the key now.
    let (_, h, third) = post_keyed(&http, &url, "short-lived", &body).await;
    assert!(replayed(&h));
    assert_eq!(third, second);
    // The sweep deletes expired keys only: none had expired an hour ago, and
    // "short-lived" (stored just now) will have in an hour.
    let store = app.store();
    let now = chrono::Utc::now();
    let early = store
        .sweep_idempotency_keys(now - chrono::Duration::hours(1))
        .await
        .expect("sweep");
    assert_eq!(early, 0);
    let late = store
        .sweep_idempotency_keys(now + chrono::Duration::hours(1))
        .await
        .expect("sweep");
    assert!(late >= 1, "swept {late}");
    app.stop().await;
}

/// The same through the `Store` trait, with a fixed clock: both backends
/// answer alike, the outbox holds one message per order made, an expired key
/// is replaced, and the sweep removes exactly the expired rows.
async fn store_keys_behave_alike(b: Backend) {
    use chrono::TimeZone;
    use restaurant_system::domain::order::validate;
    use restaurant_system::storage::{IdempotencyKey, KeyedOutcome};
    let env = TestEnv::new(b);
    let store = env.open_store().await;
    let t0 = chrono::Utc.with_ymd_and_hms(2026, 1, 15, 10, 0, 0).unwrap();
    let secs = chrono::Duration::seconds;
    let order = validate(&takeout("Store Key", 1, 4.5)).expect("valid");
    let key = |k: &str, hash: &str, now: chrono::DateTime<chrono::Utc>| IdempotencyKey {
        scope: "anonymous".into(),
        key: k.into(),
        request_hash: hash.into(),
        expires_at: now + secs(60),
    };
    let first = store
        .create_order_keyed(&order, "rid-1", t0, t0.date_naive(), &key("k1", "h1", t0))
        .await
        .expect("create");
    let KeyedOutcome::Created(created) = first else {
        panic!("{first:?}")
    };
    assert_eq!(created.order_number, "ORD_20260115_001");
    let again = store
        .create_order_keyed(
            &order,
            "rid-2",
            t0 + secs(1),
            (t0 + secs(1)).date_naive(),
            &key("k1", "h1", t0 + secs(1)),
        )
        .await
        .unwrap();
    assert_eq!(again, KeyedOutcome::Replayed(created.clone()));
    let other = store
        .create_order_keyed(
            &order,
            "rid-3",
            t0 + secs(2),
            (t0 + secs(2)).date_naive(),
            &key("k1", "h2", t0 + secs(2)),
        )
        .await
        .unwrap();
    assert_eq!(other, KeyedOutcome::Mismatch);
    // Another scope's "k1" is another key.
    let mut theirs = key("k1", "h1", t0 + secs(3));
    theirs.scope = "token:till-1".into();
    let made = store
        .create_order_keyed(
            &order,
            "rid-4",
            t0 + secs(3),
            (t0 + secs(3)).date_naive(),
            &theirs,
        )
        .await
        .unwrap();
    assert!(
        matches!(made, KeyedOutcome::Created(ref c) if c.order_number == "ORD_20260115_002"),
        "{made:?}"
    );
    // Past its expiry (t0 + 60 s) the key makes a new order.
    let late = store
        .create_order_keyed(
            &order,
            "rid-5",
            t0 + secs(61),
            (t0 + secs(61)).date_naive(),
            &key("k1", "h2", t0 + secs(61)),
        )
        .await
        .unwrap();
    assert!(
        matches!(late, KeyedOutcome::Created(ref c) if c.order_number == "ORD_20260115_003"),
        "{late:?}"
    );
    assert_eq!(
        store.outbox_len().await.unwrap(),
        3,
        "one message per order made"
    );
    // At t0 + 70 s, only the token's key (expired at t0 + 63 s) has expired.
    assert_eq!(
        store.sweep_idempotency_keys(t0 + secs(70)).await.unwrap(),
        1
    );
    assert_eq!(
        store.sweep_idempotency_keys(t0 + secs(70)).await.unwrap(),
        0
    );
    assert_eq!(
        store.sweep_idempotency_keys(t0 + secs(200)).await.unwrap(),
        1
    );
}

/// The real binary's log lines: a keyed order's `order_created` carries the
/// key cut to 16 characters, a replay says `order_replayed`, and no line holds
/// the whole key.
async fn keys_stay_short_in_log_lines(b: Backend) {
    let env = TestEnv::new(b);
    let mut cmd = env.command();
    cmd.args(["--mode=order-service", "--port=0"]);
    let mut p = common::Proc::spawn("order-service", cmd);
    let url = format!("http://127.0.0.1:{}", p.port().await);
    let http = reqwest::Client::new();
    let key = format!("till-3:{}", "x".repeat(120));
    let body = takeout("Log Reader", 1, 6.0);
    for _ in 0..2 {
        let (s, _, v) = post_keyed(&http, &url, &key, &body).await;
        assert_eq!(s, 200, "{v}");
    }
    let created = p
        .wait_log("order_created", Duration::from_secs(10), |_| true)
        .await;
    assert_eq!(
        created["details"]["idempotency_key"], "till-3:xxxxxxxxx…",
        "{created}"
    );
    p.wait_log("order_replayed", Duration::from_secs(10), |v| {
        v["details"]["idempotency_key"] == "till-3:xxxxxxxxx…"
    })
    .await;
    // Without a key, order_created has no such field.
    let (s, _, _) = post_json_plain(&http, &url, &body).await;
    assert_eq!(s, 200);
    let plain = p
        .wait_log("order_created", Duration::from_secs(10), |v| {
            v["details"].get("idempotency_key").is_none()
        })
        .await;
    assert!(plain["details"]["order_number"].is_string(), "{plain}");
    p.stop().await;
    let all = [p.stdout(), p.stderr()].concat();
    assert!(
        !all.iter().any(|l| l.contains(&key)),
        "a log line holds the whole key"
    );
}

async fn post_json_plain(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    common::post_json(http, &format!("{url}/orders"), body).await
}

backend_tests!(
    keys_stay_short_in_log_lines,
    store_keys_behave_alike,
    replay_and_mismatch,
    bad_keys,
    concurrent_requests_make_one_order,
    keys_survive_a_restart,
    expired_keys_make_new_orders,
);
