//! Issue 13 against the real servers, on both backends: notes, modifiers and allergens are
//! validated, stored, carried in the Order Message and returned whole by `GET /orders/{n}` on
//! the tracking service; `GET /reports/speed-of-service` reports ticket times that match the
//! orders' own history; the customer board is served at `/board`.
use crate::common;

use common::{get_all, get_json, place_order, post_json, takeout, wait_status, Backend, TestEnv};
use restaurant_system::domain::speed::percentile;
use restaurant_system::domain::OrderStatus;
use restaurant_system::modes::Mode;
use serde_json::{json, Value};
use std::time::Duration;

fn detailed_order() -> Value {
    json!({
        "customer_name": "Ana Lopez", "order_type": "takeout",
        "notes": "Customer waits at the bar\nno cutlery",
        "items": [
            {"name": "Burger", "quantity": 2, "price": 12.5, "notes": "well done",
             "modifiers": ["no onions", "extra cheese"], "allergens": ["sesame", "gluten", "gluten"]},
            {"name": "Fries", "quantity": 1, "price": 4.5}
        ]
    })
}

/// Stored on the backend, returned whole by the tracking service, carried in the Order
/// Message (added fields only: an order without them has the spec's exact message).
async fn details_are_stored_returned_and_published(b: Backend) {
    let env = TestEnv::new(b);
    // No kitchen worker in this vhost: the messages stay in the queue for us to read.
    let orders = env.start(Mode::OrderService, None).await;
    let tracking = env.start(Mode::TrackingService, None).await;
    let http = reqwest::Client::new();

    let n = place_order(&http, &orders.order_url(), &detailed_order()).await;
    let plain = place_order(&http, &orders.order_url(), &takeout("Bob Smith", 1, 9.5)).await;

    let (status, _, o) = get_json(&http, &format!("{}/orders/{n}", tracking.tracking_url())).await;
    assert_eq!(status, 200, "{o}");
    assert_eq!(o["order_number"], json!(n));
    assert_eq!(o["notes"], "Customer waits at the bar\nno cutlery");
    assert_eq!(o["status"], "received");
    assert_eq!(o["total_amount"], 29.5);
    assert_eq!(o["priority"], 1);
    assert_eq!(o["version"], 1);
    assert_eq!(
        o["items"],
        json!([
            // `category` and `stations` are additive (docs/stations.md): null and empty
            // without a category and without configured stations.
            {"name": "Burger", "quantity": 2, "price": 12.5, "notes": "well done",
             "modifiers": ["no onions", "extra cheese"], "allergens": ["gluten", "sesame"],
             "category": null, "stations": []},
            {"name": "Fries", "quantity": 1, "price": 4.5, "notes": null, "modifiers": [], "allergens": [],
             "category": null, "stations": []}
        ])
    );
    for f in [
        "customer_name",
        "order_type",
        "table_number",
        "delivery_address",
        "processed_by",
        "created_at",
        "updated_at",
        "estimated_completion",
    ] {
        assert!(o.get(f).is_some(), "{f} missing from {o}");
    }
    let (_, _, p) = get_json(
        &http,
        &format!("{}/orders/{plain}", tracking.tracking_url()),
    )
    .await;
    assert_eq!(p["notes"], Value::Null);
    assert_eq!(p["items"][0]["modifiers"], json!([]));

    // 404 for an unknown order, 400 for garbage: JSON both.
    let (s, _, e) = get_json(
        &http,
        &format!("{}/orders/ORD_20200101_999", tracking.tracking_url()),
    )
    .await;
    assert_eq!((s, e["error"].is_string()), (404, true), "{e}");
    let (s, _, e) = get_json(
        &http,
        &format!("{}/orders/nonsense", tracking.tracking_url()),
    )
    .await;
    assert_eq!(
        (s, e["details"][0]["field"].as_str()),
        (400, Some("order_number")),
        "{e}"
    );

    // The Order Messages in the kitchen's queue.
    let ch = env.amqp().await;
    // The relay publishes after the commit, not before the answer: wait for both.
    let mut msgs = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while msgs.len() < 2 && tokio::time::Instant::now() < deadline {
        msgs.extend(get_all(&ch, "kitchen_takeout_queue").await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(msgs.len(), 2, "two order messages");
    let by_number: std::collections::HashMap<String, Value> = msgs
        .iter()
        .map(|d| {
            let v: Value = serde_json::from_slice(&d.data).expect("message JSON");
            (
                v["order_number"].as_str().unwrap_or_default().to_string(),
                v,
            )
        })
        .collect();
    let m = &by_number[&n];
    assert_eq!(m["notes"], "Customer waits at the bar\nno cutlery");
    assert_eq!(
        m["items"][0]["modifiers"],
        json!(["no onions", "extra cheese"])
    );
    assert_eq!(m["items"][0]["allergens"], json!(["gluten", "sesame"]));
    assert_eq!(m["items"][0]["notes"], "well done");
    assert!(
        m["items"][1].get("allergens").is_none(),
        "empty details are left out: {m}"
    );
    let pm = &by_number[&plain];
    assert!(pm.get("notes").is_none(), "{pm}");
    assert_eq!(
        pm["items"],
        json!([{"name": "Pizza", "quantity": 1, "price": 9.5}])
    );

    tracking.stop().await;
    orders.stop().await;
}

/// Broken kitchen details: a 400 listing every broken rule by field, nothing stored.
async fn bad_details_are_rejected_by_field(b: Backend) {
    let env = TestEnv::new(b);
    let orders = env.start(Mode::OrderService, None).await;
    let http = reqwest::Client::new();
    let body = json!({
        "customer_name": "Ana Lopez", "order_type": "takeout", "notes": "n".repeat(281),
        "items": [
            {"name": "Burger", "quantity": 1, "price": 12.5, "allergens": ["gluten", "avocado"],
             "modifiers": (0..11).map(|i| format!("m{i}")).collect::<Vec<_>>()},
            {"name": "Fries", "quantity": 1, "price": 4.5, "notes": "x".repeat(141),
             "modifiers": ["ok", "y".repeat(51)], "allergens": "nuts"}
        ]
    });
    let (status, _, e) = post_json(&http, &format!("{}/orders", orders.order_url()), &body).await;
    assert_eq!(status, 400, "{e}");
    let mut fields: Vec<&str> = e["details"]
        .as_array()
        .expect("details")
        .iter()
        .filter_map(|d| d["field"].as_str())
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "items[0].allergens[1]",
            "items[0].modifiers",
            "items[1].allergens",
            "items[1].modifiers[1]",
            "items[1].notes",
            "notes"
        ],
        "{e}"
    );
    let allergen = e["details"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["field"] == "items[0].allergens[1]"))
        .expect("allergen detail");
    assert!(
        allergen["message"]
            .as_str()
            .is_some_and(|m| m.contains("sulphites")),
        "{allergen}"
    );
    // Nothing half-written: the store has no order at all.
    assert!(orders
        .store()
        .open_orders()
        .await
        .expect("open orders")
        .is_empty());
    orders.stop().await;
}

/// The report's numbers are the ones the orders' own histories give.
async fn speed_of_service_matches_the_history(b: Backend) {
    let env = TestEnv::new(b);
    let mut cfg = env.cfg.clone();
    cfg.kitchen.cooking_seconds.takeout = 0.3;
    cfg.kitchen.cooking_seconds.dine_in = 0.1;
    let all = env.start_with(Mode::All, None, &cfg).await;
    let http = reqwest::Client::new();
    let base = all.tracking_url();
    let store = all.store();

    let mut numbers = Vec::new();
    for i in 0..3 {
        numbers.push(place_order(&http, &all.order_url(), &takeout("Ana Lopez", 1 + i, 5.0)).await);
    }
    numbers.push(
        place_order(
            &http,
            &all.order_url(),
            &json!({"customer_name": "Jane Smith",
            "order_type": "dine_in", "table_number": 4,
            "items": [{"name": "Steak", "quantity": 1, "price": 29.99}]}),
        )
        .await,
    );
    for n in &numbers {
        wait_status(&store, n, OrderStatus::Ready, Duration::from_secs(30)).await;
    }
    // Bump two of them; the others wait at the pass.
    for n in &numbers[..2] {
        let (s, _, v) = post_json(
            &http,
            &format!("{}/orders/{n}/complete", all.order_url()),
            &json!({}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
    }

    // Expected numbers from the history of each order.
    let mut cook = Vec::new();
    let mut handoff = Vec::new();
    let mut workers = std::collections::BTreeSet::new();
    for n in &numbers {
        let (_, _, h) = get_json(&http, &format!("{base}/orders/{n}/history")).await;
        let at = |status: &str| {
            h.as_array()
                .and_then(|rows| rows.iter().find(|r| r["status"] == status))
                .and_then(|r| r["timestamp"].as_str())
                .map(|t| chrono::DateTime::parse_from_rfc3339(t).expect("timestamp"))
        };
        let (received, ready) = (
            at("received").expect("received"),
            at("ready").expect("ready"),
        );
        cook.push((ready - received).num_milliseconds() as f64 / 1000.0);
        if let Some(done) = at("completed") {
            handoff.push((done - ready).num_milliseconds() as f64 / 1000.0);
        }
        let o = store.order(n).await.unwrap().unwrap();
        workers.insert(o.processed_by.expect("processed_by"));
    }
    cook.sort_by(f64::total_cmp);
    handoff.sort_by(f64::total_cmp);

    let (s, _, r) = get_json(&http, &format!("{base}/reports/speed-of-service")).await;
    assert_eq!(s, 200, "{r}");
    let overall = &r["overall"];
    assert_eq!(overall["orders"], 4, "{r}");
    assert_eq!(overall["received_to_ready"]["count"], 4);
    assert_eq!(overall["ready_to_completed"]["count"], 2);
    let close = |v: &Value, want: f64| {
        let got = v.as_f64().unwrap_or(f64::NAN);
        assert!((got - want).abs() < 0.0015, "{got} != {want} in {r}");
    };
    close(
        &overall["received_to_ready"]["p50_seconds"],
        percentile(&cook, 50.0).unwrap(),
    );
    close(
        &overall["received_to_ready"]["p90_seconds"],
        percentile(&cook, 90.0).unwrap(),
    );
    close(
        &overall["received_to_ready"]["avg_seconds"],
        cook.iter().sum::<f64>() / 4.0,
    );
    close(
        &overall["ready_to_completed"]["p90_seconds"],
        percentile(&handoff, 90.0).unwrap(),
    );
    // The takeouts cooked for 0.3 s: their ticket time cannot be shorter.
    assert!(
        r["by_order_type"]["takeout"]["received_to_ready"]["p50_seconds"]
            .as_f64()
            .unwrap()
            >= 0.3
    );
    assert_eq!(r["by_order_type"]["takeout"]["orders"], 3);
    assert_eq!(r["by_order_type"]["dine_in"]["orders"], 1);
    assert_eq!(r["by_order_type"]["delivery"]["orders"], 0);
    assert_eq!(
        r["by_order_type"]["delivery"]["received_to_ready"]["avg_seconds"],
        Value::Null
    );
    let by_worker = r["by_worker"].as_object().expect("by_worker");
    assert_eq!(
        by_worker
            .keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        workers
    );
    let cooked: u64 = by_worker
        .values()
        .map(|g| g["received_to_ready"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(cooked, 4);

    // Explicit ranges: today as dates, a past day (empty), and bad input.
    let today = chrono::Utc::now().date_naive();
    let (s, _, r2) = get_json(
        &http,
        &format!("{base}/reports/speed-of-service?from={today}&to={today}"),
    )
    .await;
    assert_eq!((s, &r2["overall"]["orders"]), (200, &json!(4)), "{r2}");
    let (s, _, r3) = get_json(
        &http,
        &format!("{base}/reports/speed-of-service?from=2000-01-01&to=2000-01-01T12%3A00%3A00Z"),
    )
    .await;
    assert_eq!(s, 200, "{r3}");
    assert_eq!(r3["overall"]["orders"], 0);
    assert_eq!(r3["from"], "2000-01-01T00:00:00.000Z");
    assert_eq!(r3["to"], "2000-01-01T12:00:00.000Z");
    assert_eq!(
        r3["overall"]["received_to_ready"]["p90_seconds"],
        Value::Null
    );
    for (q, field) in [
        ("from=yesterday", "from"),
        ("to=2026-13-01", "to"),
        ("from=2026-11-25&to=2026-11-24", "to"),
        ("from=%ff", "from"),
    ] {
        let (s, _, e) = get_json(&http, &format!("{base}/reports/speed-of-service?{q}")).await;
        assert_eq!(s, 400, "{q}: {e}");
        assert_eq!(e["details"][0]["field"], field, "{q}: {e}");
    }
    all.stop().await;
}

/// The pages are served by the tracking service.
async fn customer_board_is_served(b: Backend) {
    let env = TestEnv::new(b);
    let tracking = env.start(Mode::TrackingService, None).await;
    let http = reqwest::Client::new();
    for (path, ct, needle) in [
        ("/board", "text/html", "Ready for pickup"),
        ("/board/board.js", "text/javascript", "customerBoard"),
        ("/board/board.css", "text/css", "just-ready"),
        ("/board/mqtt.min.js", "text/javascript", "mqtt"),
    ] {
        let r = http
            .get(format!("{}{path}", tracking.tracking_url()))
            .send()
            .await
            .expect("GET");
        assert_eq!(r.status(), 200, "{path}");
        let got = r.headers()["content-type"]
            .to_str()
            .unwrap_or_default()
            .to_string();
        assert!(got.starts_with(ct), "{path}: {got}");
        assert!(
            r.text().await.unwrap_or_default().contains(needle),
            "{path}"
        );
    }
    let (s, _, e) = get_json(&http, &format!("{}/board/nope.js", tracking.tracking_url())).await;
    assert_eq!(s, 404, "{e}");
    let r = http
        .post(format!("{}/board", tracking.tracking_url()))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), 405);
    tracking.stop().await;
}

backend_tests!(
    details_are_stored_returned_and_published,
    bad_details_are_rejected_by_field,
    speed_of_service_matches_the_history,
    customer_board_is_served,
);
