//! Order intake (issue 2) against the real servers, on both backends: the
//! spec's orders and their messages, every validation rule, bad bodies, request
//! ids, concurrency, health and the in-flight limit.
use crate::common;

use common::{
    eventually, get_all, get_json, header, place_order, post_json, queue_counts, raw_http,
    spec_orders, takeout, Backend, TcpProxy, TestEnv,
};
use restaurant_system::domain::OrderStatus;
use restaurant_system::modes::Mode;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

const QUEUES: [&str; 3] = [
    "kitchen_dine_in_queue",
    "kitchen_takeout_queue",
    "kitchen_delivery_queue",
];

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// The Order Message the spec describes for an accepted request.
fn expected_message(n: &str, req: &Value, total: f64, priority: i64) -> Value {
    json!({
        "order_number": n,
        "customer_name": req["customer_name"],
        "order_type": req["order_type"],
        "table_number": req.get("table_number").cloned().unwrap_or(Value::Null),
        "delivery_address": req.get("delivery_address").cloned().unwrap_or(Value::Null),
        "items": req["items"],
        "total_amount": total,
        "priority": priority,
    })
}

/// The spec's three orders plus priority boundaries: each accepted with the
/// right total (exact money), stored with its items and first log row, and
/// published once, to the right queue, with the right routing key, persistent,
/// with the priority property, the request id header and the spec's JSON.
async fn orders_are_stored_and_published(b: Backend) {
    let env = TestEnv::new(b);
    // No kitchen worker runs in this vhost: the messages stay in the queues.
    let app = env.start(Mode::OrderService, None).await;
    let store = app.store();
    let http = http();

    let mut cases: Vec<(Value, f64, i64)> = spec_orders()
        .into_iter()
        .zip([(40.97, 1), (29.99, 1), (37.98, 1)])
        .map(|(o, (t, p))| (o, t, p))
        .collect();
    for (qty, price, total, prio) in [
        (7, 15.99, 111.93, 10), // the origin spec's example message
        (1, 50.00, 50.00, 5),   // 50 is the lower edge of priority 5
        (1, 100.00, 100.00, 5), // 100 is still 5: 10 needs more than 100
        (1, 100.01, 100.01, 10),
        (1, 49.99, 49.99, 1),
        (10, 999.99, 9999.9, 10),
    ] {
        cases.push((takeout("Edge Case", qty, price), total, prio));
    }
    // Float traps: 0.1 + 0.2 must be 0.3, and 3 x 0.07 must be 0.21.
    cases.push((
        json!({"customer_name": "Float Trap", "order_type": "delivery",
               "delivery_address": "1 Binary Lane, Roundoff",
               "items": [{"name": "A", "quantity": 1, "price": 0.1},
                         {"name": "B", "quantity": 1, "price": 0.2},
                         {"name": "C", "quantity": 3, "price": 0.07}]}),
        0.51,
        1,
    ));

    let mut expected: HashMap<String, (Value, String, i64)> = HashMap::new();
    for (i, (req, total, prio)) in cases.iter().enumerate() {
        let rid = format!("test-rid-{i}-{}", b as u8);
        let resp = http
            .post(format!("{}/orders", app.order_url()))
            .header("X-Request-ID", &rid)
            .json(req)
            .send()
            .await
            .expect("POST /orders");
        assert_eq!(resp.status(), 200, "{req}");
        assert_eq!(resp.headers()["x-request-id"], rid.as_str());
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        let location = resp.headers()["location"].to_str().unwrap().to_string();
        let body: Value = resp.json().await.expect("json body");
        let n = body["order_number"].as_str().expect("order_number");
        assert_eq!(
            body,
            json!({"order_number": n, "status": "received", "total_amount": total}),
            "response for {req}"
        );
        // Printed exactly, never 40.970000001.
        let printed = body["total_amount"].to_string();
        assert!(
            printed.split('.').nth(1).is_none_or(|f| f.len() <= 2),
            "total printed as {printed}"
        );
        assert_eq!(location, format!("/orders/{n}/status"));

        let o = store.order(n).await.unwrap().expect("stored order");
        assert_eq!(o.status, OrderStatus::Received);
        assert_eq!(i64::from(o.placed.priority), *prio, "priority of {req}");
        assert_eq!(o.placed.items.len(), req["items"].as_array().unwrap().len());
        let h = store.history(n).await.unwrap().expect("history");
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].status, OrderStatus::Received);
        assert_eq!(h[0].changed_by, "order-service");
        expected.insert(
            n.to_string(),
            (expected_message(n, req, *total, *prio), rid, *prio),
        );
    }
    // Numbers are ORD_<UTC date>_001, _002, ... in order of arrival.
    let mut seqs: Vec<u32> = expected
        .keys()
        .map(|n| n.rsplit('_').next().unwrap().parse().unwrap())
        .collect();
    seqs.sort();
    assert_eq!(seqs, (1..=cases.len() as u32).collect::<Vec<_>>());

    let ch = env.amqp_with_topology().await;
    let total = cases.len() as u32;
    eventually(
        Duration::from_secs(15),
        "every order in a queue",
        || async {
            let mut sum = 0;
            for q in QUEUES {
                sum += queue_counts(&ch, q).await.0;
            }
            (sum == total).then_some(())
        },
    )
    .await;
    let mut seen = BTreeSet::new();
    for q in QUEUES {
        for d in get_all(&ch, q).await {
            let mut v: Value = serde_json::from_slice(&d.data).expect("message is JSON");
            // The spec's fields, plus when the order was stored (for the display bridge).
            let created = v
                .as_object_mut()
                .and_then(|o| o.remove("created_at"))
                .expect("created_at in the message");
            let created = created.as_str().expect("created_at is a string");
            assert!(
                chrono::DateTime::parse_from_rfc3339(created).is_ok(),
                "created_at is RFC 3339: {created}"
            );
            let n = v["order_number"]
                .as_str()
                .expect("order_number")
                .to_string();
            let (want, rid, prio) = expected.get(&n).expect("a message for an order we placed");
            assert_eq!(&v, want, "message body in {q}");
            let t = want["order_type"].as_str().unwrap();
            assert_eq!(q, format!("kitchen_{t}_queue"), "queue of {n}");
            assert_eq!(d.routing_key.as_str(), format!("kitchen.{t}.{prio}"));
            assert_eq!(d.exchange.as_str(), "orders_topic");
            assert_eq!(*d.properties.delivery_mode(), Some(2), "persistent");
            assert_eq!(*d.properties.priority(), Some(*prio as u8));
            assert_eq!(header(&d, "x-request-id").as_deref(), Some(rid.as_str()));
            assert!(seen.insert(n.clone()), "{n} published twice");
        }
    }
    assert_eq!(seen.len(), cases.len());
    eventually(Duration::from_secs(5), "the outbox to drain", || async {
        (store.outbox_len().await.ok()? == 0).then_some(())
    })
    .await;
    app.stop().await;
}

/// Each case: a body, and the field the 400 must name.
fn invalid_orders() -> Vec<(&'static str, Value, &'static str)> {
    let item = json!({"name": "Pizza", "quantity": 1, "price": 9.99});
    let with = |patch: Value| {
        let mut o =
            json!({"customer_name": "John Doe", "order_type": "takeout", "items": [item.clone()]});
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                o.as_object_mut().unwrap().remove(k);
            } else {
                o[k] = v.clone();
            }
        }
        o
    };
    let item_with = |k: &str, v: Value| {
        let mut i = item.clone();
        if v.is_null() {
            i.as_object_mut().unwrap().remove(k);
        } else {
            i[k] = v;
        }
        with(json!({"items": [i]}))
    };
    let dine_in = |patch: Value| {
        let mut o = with(json!({"order_type": "dine_in", "table_number": 12}));
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                o.as_object_mut().unwrap().remove(k);
            } else {
                o[k] = v.clone();
            }
        }
        o
    };
    let delivery = |patch: Value| {
        let mut o = with(json!({"order_type": "delivery", "delivery_address": "123 Main Street"}));
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                o.as_object_mut().unwrap().remove(k);
            } else {
                o[k] = v.clone();
            }
        }
        o
    };
    let items = |n: usize| with(json!({"items": vec![item.clone(); n]}));
    vec![
        (
            "customer_name missing",
            with(json!({"customer_name": null})),
            "customer_name",
        ),
        (
            "customer_name empty",
            with(json!({"customer_name": ""})),
            "customer_name",
        ),
        (
            "customer_name 101 chars",
            with(json!({"customer_name": "a".repeat(101)})),
            "customer_name",
        ),
        (
            "customer_name digit",
            with(json!({"customer_name": "John Doe 2"})),
            "customer_name",
        ),
        (
            "customer_name punctuation",
            with(json!({"customer_name": "Robert'); DROP TABLE orders;--"})),
            "customer_name",
        ),
        (
            "customer_name not a string",
            with(json!({"customer_name": 42})),
            "customer_name",
        ),
        (
            "customer_name an array",
            with(json!({"customer_name": ["John"]})),
            "customer_name",
        ),
        (
            "order_type missing",
            with(json!({"order_type": null})),
            "order_type",
        ),
        (
            "order_type unknown",
            with(json!({"order_type": "pickup"})),
            "order_type",
        ),
        (
            "order_type wrong case",
            with(json!({"order_type": "Takeout"})),
            "order_type",
        ),
        (
            "order_type not a string",
            with(json!({"order_type": 1})),
            "order_type",
        ),
        ("items missing", with(json!({"items": null})), "items"),
        ("items empty", items(0), "items"),
        ("items 21", items(21), "items"),
        (
            "items not an array",
            with(json!({"items": {"name": "Pizza"}})),
            "items",
        ),
        (
            "item not an object",
            with(json!({"items": ["Pizza"]})),
            "items[0]",
        ),
        (
            "item name missing",
            item_with("name", Value::Null),
            "items[0].name",
        ),
        (
            "item name empty",
            item_with("name", json!("")),
            "items[0].name",
        ),
        (
            "item name blank",
            item_with("name", json!("   ")),
            "items[0].name",
        ),
        (
            "item name 51 chars",
            item_with("name", json!("n".repeat(51))),
            "items[0].name",
        ),
        (
            "item name not a string",
            item_with("name", json!(7)),
            "items[0].name",
        ),
        (
            "quantity missing",
            item_with("quantity", Value::Null),
            "items[0].quantity",
        ),
        (
            "quantity 0",
            item_with("quantity", json!(0)),
            "items[0].quantity",
        ),
        (
            "quantity 11",
            item_with("quantity", json!(11)),
            "items[0].quantity",
        ),
        (
            "quantity negative",
            item_with("quantity", json!(-1)),
            "items[0].quantity",
        ),
        (
            "quantity fractional",
            item_with("quantity", json!(1.5)),
            "items[0].quantity",
        ),
        (
            "quantity a string",
            item_with("quantity", json!("2")),
            "items[0].quantity",
        ),
        (
            "price missing",
            item_with("price", Value::Null),
            "items[0].price",
        ),
        ("price 0", item_with("price", json!(0)), "items[0].price"),
        (
            "price negative",
            item_with("price", json!(-5)),
            "items[0].price",
        ),
        (
            "price 1000",
            item_with("price", json!(1000)),
            "items[0].price",
        ),
        (
            "price 999.991",
            item_with("price", json!(999.991)),
            "items[0].price",
        ),
        (
            "price three decimals",
            item_with("price", json!(0.005)),
            "items[0].price",
        ),
        (
            "price a string",
            item_with("price", json!("15.99")),
            "items[0].price",
        ),
        (
            "price a bool",
            item_with("price", json!(true)),
            "items[0].price",
        ),
        (
            "second item bad",
            with(json!({"items": [item.clone(), {"name": "Soup", "quantity": 1, "price": 0}]})),
            "items[1].price",
        ),
        (
            "dine_in without table",
            dine_in(json!({"table_number": null})),
            "table_number",
        ),
        (
            "table 0",
            dine_in(json!({"table_number": 0})),
            "table_number",
        ),
        (
            "table 101",
            dine_in(json!({"table_number": 101})),
            "table_number",
        ),
        (
            "table a string",
            dine_in(json!({"table_number": "12"})),
            "table_number",
        ),
        (
            "table fractional",
            dine_in(json!({"table_number": 1.5})),
            "table_number",
        ),
        (
            "dine_in with address",
            dine_in(json!({"delivery_address": "123 Main Street"})),
            "delivery_address",
        ),
        (
            "delivery without address",
            delivery(json!({"delivery_address": null})),
            "delivery_address",
        ),
        (
            "address 9 chars",
            delivery(json!({"delivery_address": "12 Main S"})),
            "delivery_address",
        ),
        (
            "address padded to 10",
            delivery(json!({"delivery_address": "  Main St  "})),
            "delivery_address",
        ),
        (
            "address not a string",
            delivery(json!({"delivery_address": 12345678901_i64})),
            "delivery_address",
        ),
        (
            "delivery with table",
            delivery(json!({"table_number": 4})),
            "table_number",
        ),
        (
            "takeout with table",
            with(json!({"table_number": 4})),
            "table_number",
        ),
        (
            "takeout with address",
            with(json!({"delivery_address": "123 Main Street"})),
            "delivery_address",
        ),
        ("unknown field", with(json!({"coupon": "FREE"})), "coupon"),
        ("body an array", json!([{"customer_name": "John"}]), "body"),
        ("body a string", json!("order"), "body"),
        ("body null", Value::Null, "body"),
    ]
}

/// Bodies on the edge of every rule, all accepted.
fn valid_edge_orders() -> Vec<(&'static str, Value)> {
    let item = json!({"name": "Pizza", "quantity": 1, "price": 9.99});
    vec![
        (
            "name 100 chars",
            json!({"customer_name": "a".repeat(100), "order_type": "takeout", "items": [item]}),
        ),
        (
            "name with hyphen and apostrophe",
            json!({"customer_name": "Mary-Jane O'Brien", "order_type": "takeout", "items": [item]}),
        ),
        (
            "name with accents",
            json!({"customer_name": "Zoë Müller", "order_type": "takeout", "items": [item]}),
        ),
        (
            "single letter",
            json!({"customer_name": "Q", "order_type": "takeout", "items": [item]}),
        ),
        (
            "20 items",
            json!({"customer_name": "Big Party", "order_type": "takeout", "items": vec![item.clone(); 20]}),
        ),
        (
            "item name 50 chars, qty 10, price 999.99",
            json!({"customer_name": "Max", "order_type": "takeout",
            "items": [{"name": "n".repeat(50), "quantity": 10, "price": 999.99}]}),
        ),
        (
            "price 0.01",
            json!({"customer_name": "Min", "order_type": "takeout",
            "items": [{"name": "Mint", "quantity": 1, "price": 0.01}]}),
        ),
        (
            "table 1",
            json!({"customer_name": "T", "order_type": "dine_in", "table_number": 1, "items": [item]}),
        ),
        (
            "table 100",
            json!({"customer_name": "T", "order_type": "dine_in", "table_number": 100, "items": [item]}),
        ),
        (
            "address 10 chars",
            json!({"customer_name": "D", "order_type": "delivery", "delivery_address": "1 Main St.", "items": [item]}),
        ),
        (
            "explicit nulls",
            json!({"customer_name": "N", "order_type": "takeout", "table_number": null,
            "delivery_address": null, "items": [item]}),
        ),
    ]
}

/// Every rule: the wrong input gets 400, a JSON error whose details name the
/// field; nothing is stored or published for it; inputs on the edge pass.
async fn validation_rules(b: Backend) {
    let env = TestEnv::new(b);
    let app = env.start(Mode::OrderService, None).await;
    let url = format!("{}/orders", app.order_url());
    let http = http();
    let mut failures = Vec::new();
    for (name, body, field) in invalid_orders() {
        let (status, headers, v) = post_json(&http, &url, &body).await;
        let fields: Vec<&str> = v["details"]
            .as_array()
            .map(|d| d.iter().filter_map(|e| e["field"].as_str()).collect())
            .unwrap_or_default();
        let ct = headers
            .get("content-type")
            .and_then(|c| c.to_str().ok())
            .unwrap_or("");
        if status != 400
            || !fields.contains(&field)
            || !v["error"].is_string()
            || ct != "application/json"
        {
            failures.push(format!(
                "{name}: got {status} {v} (content-type {ct}), want 400 naming {field}"
            ));
        }
        // Each detail says what rule was broken.
        for d in v["details"].as_array().into_iter().flatten() {
            assert!(
                d["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{name}: detail without a message: {d}"
            );
        }
    }
    assert!(
        failures.is_empty(),
        "validation failures:\n{}",
        failures.join("\n")
    );

    // Several problems at once are all reported.
    let (status, _, v) = post_json(
        &http,
        &url,
        &json!({"customer_name": "", "order_type": "dine_in", "items": []}),
    )
    .await;
    assert_eq!(status, 400);
    let fields: BTreeSet<&str> = v["details"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["field"].as_str())
        .collect();
    for f in ["customer_name", "table_number", "items"] {
        assert!(fields.contains(f), "{f} missing from {v}");
    }

    // Nothing was stored: the first accepted order is number 001.
    let mut numbers = Vec::new();
    for (name, body) in valid_edge_orders() {
        let (status, _, v) = post_json(&http, &url, &body).await;
        assert_eq!(status, 200, "{name}: {v}");
        numbers.push(v["order_number"].as_str().unwrap().to_string());
    }
    assert!(numbers[0].ends_with("_001"), "{numbers:?}");
    let ch = env.amqp_with_topology().await;
    let count = numbers.len() as u32;
    eventually(
        Duration::from_secs(15),
        "only the valid orders published",
        || async {
            let mut sum = 0;
            for q in QUEUES {
                sum += queue_counts(&ch, q).await.0;
            }
            (sum == count).then_some(())
        },
    )
    .await;
    app.stop().await;
}

/// Bodies that are not an order at all: a clear 4xx JSON error, never a 500,
/// and the service keeps working.
async fn bad_bodies(b: Backend) {
    let env = TestEnv::new(b);
    let app = env.start(Mode::OrderService, None).await;
    let base = app.order_url();
    let url = format!("{base}/orders");
    let http = http();
    let send = |ct: Option<&'static str>, body: Vec<u8>| {
        let mut r = http.post(&url).body(body);
        if let Some(ct) = ct {
            r = r.header("content-type", ct);
        }
        async move { common::split(r.send().await.expect("POST")).await }
    };
    let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    let mut big = serde_json::to_vec(&takeout("Big Body", 1, 1.0)).unwrap();
    big.truncate(big.len() - 1);
    big.extend(format!(r#","pad":"{}"}}"#, "x".repeat(70 * 1024)).bytes());
    let cases: Vec<(&str, Option<&'static str>, Vec<u8>, u16)> = vec![
        ("truncated JSON", Some("application/json"), br#"{"customer_name": "#.to_vec(), 400),
        ("not JSON", Some("application/json"), b"customer_name=John".to_vec(), 400),
        ("empty body", Some("application/json"), Vec::new(), 400),
        ("invalid UTF-8", Some("application/json"), b"{\"customer_name\": \"\xff\xfe\"}".to_vec(), 400),
        ("trailing garbage", Some("application/json"), br#"{"a":1} {"b":2}"#.to_vec(), 400),
        ("number out of range", Some("application/json"),
            br#"{"customer_name":"A","order_type":"takeout","items":[{"name":"P","quantity":1,"price":1e400}]}"#.to_vec(), 400),
        ("huge integer", Some("application/json"),
            br#"{"customer_name":"A","order_type":"takeout","items":[{"name":"P","quantity":99999999999999999999999,"price":1}]}"#.to_vec(), 400),
        ("nested 20000 deep", Some("application/json"), deep.into_bytes(), 400),
        ("text/plain", Some("text/plain"), serde_json::to_vec(&spec_orders()[0]).unwrap(), 415),
        ("form", Some("application/x-www-form-urlencoded"), b"customer_name=John".to_vec(), 415),
        ("no content type", None, serde_json::to_vec(&spec_orders()[0]).unwrap(), 415),
        ("over 64 KiB", Some("application/json"), big, 413),
    ];
    for (name, ct, body, want) in cases {
        let (status, _, v) = send(ct, body).await;
        assert_eq!(status, want, "{name}: {v}");
        assert!(
            v["error"].is_string(),
            "{name}: JSON error expected, got {v}"
        );
    }

    // A chunked body (no Content-Length) over the limit is cut off too.
    let chunk = "x".repeat(16 * 1024);
    let mut req = "POST /orders HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_string();
    let first = "{\"pad\":\"";
    req.push_str(&format!("{:x}\r\n{first}\r\n", first.len()));
    for _ in 0..5 {
        req.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    req.push_str("2\r\n\"}\r\n0\r\n\r\n");
    let (status, v) = raw_http(&base, req.as_bytes()).await;
    assert_eq!(status, 413, "chunked body over the limit: {v}");

    // application/json with a charset is JSON.
    let (status, _, v) = send(
        Some("application/json; charset=utf-8"),
        serde_json::to_vec(&spec_orders()[1]).unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{v}");

    // Routes: unknown path 404, wrong method 405 with Allow; both JSON.
    for (method, path, want, allow) in [
        ("GET", "/nope", 404, None),
        ("GET", "/orders/ORD_20240101_001/explode", 404, None),
        ("POST", "/orders/ORD_20240101_001/explode", 404, None),
        ("GET", "/orders", 405, Some("POST")),
        ("DELETE", "/orders", 405, Some("POST")),
        (
            "GET",
            "/orders/ORD_20240101_001/complete",
            405,
            Some("POST"),
        ),
        ("POST", "/health", 405, Some("GET")),
    ] {
        let r = http
            .request(method.parse().unwrap(), format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        let got_allow = r
            .headers()
            .get("allow")
            .map(|a| a.to_str().unwrap().to_string());
        let (status, _, v) = common::split(r).await;
        assert_eq!(status, want, "{method} {path}: {v}");
        assert!(
            v["error"].is_string(),
            "{method} {path}: JSON error expected, got {v}"
        );
        if let Some(a) = allow {
            assert_eq!(
                got_allow.as_deref(),
                Some(a),
                "{method} {path}: Allow header"
            );
        }
    }

    // Still healthy after all that.
    let n = place_order(&http, &base, &spec_orders()[2]).await;
    assert!(n.starts_with("ORD_"));
    app.stop().await;
}

/// X-Request-ID: echoed when usable, generated otherwise, and on errors too.
async fn request_ids(b: Backend) {
    let env = TestEnv::new(b);
    let app = env.start(Mode::OrderService, None).await;
    let base = app.order_url();
    let http = http();
    let r = http
        .get(format!("{base}/health"))
        .header("X-Request-ID", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    let r = http.get(format!("{base}/health")).send().await.unwrap();
    let generated = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(!generated.is_empty());
    let r2 = http.get(format!("{base}/health")).send().await.unwrap();
    assert_ne!(
        r2.headers()["x-request-id"].to_str().unwrap(),
        generated,
        "ids are unique"
    );
    // Unusable ids (too long, spaces) are replaced, not echoed.
    for bad in ["x".repeat(500), "has spaces in it".to_string()] {
        let r = http
            .get(format!("{base}/health"))
            .header("X-Request-ID", &bad)
            .send()
            .await
            .unwrap();
        let got = r.headers()["x-request-id"].to_str().unwrap();
        assert!(!got.is_empty() && got != bad, "{got}");
    }
    // On a 400 as well.
    let r = http
        .post(format!("{base}/orders"))
        .header("X-Request-ID", "bad-order-1")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["x-request-id"], "bad-order-1");
    app.stop().await;
}

/// 200 orders at once: 200 distinct numbers, the day's counter 001..200 with no
/// gap, and 200 messages in the kitchen queues.
async fn concurrent_orders(b: Backend) {
    let env = TestEnv::new(b);
    let mut cfg = env.cfg.clone();
    // All 200 in flight at once; the in-flight limit has its own test.
    cfg.http.max_concurrent = 400;
    let app = env.start_with(Mode::OrderService, None, &cfg).await;
    let http = http();
    let mut tasks = tokio::task::JoinSet::new();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(200));
    for i in 0..200 {
        let http = http.clone();
        let url = app.order_url();
        let barrier = barrier.clone();
        let mut body = spec_orders()[i % 3].clone();
        // A name of its own, so a swapped order would show.
        let tag: String = [i / 26, i % 26]
            .iter()
            .map(|d| char::from(b'a' + *d as u8))
            .collect();
        body["customer_name"] = json!(format!("Guest {tag}"));
        tasks.spawn(async move {
            barrier.wait().await;
            (place_order(&http, &url, &body).await, body)
        });
    }
    let mut numbers = Vec::new();
    let mut bodies = BTreeMap::new();
    while let Some(r) = tasks.join_next().await {
        let (n, body) = r.expect("task");
        numbers.push(n.clone());
        bodies.insert(n, body);
    }
    // Stored together (PostgreSQL commits concurrent orders in batches), each
    // number still holds the order that was sent for it.
    let store = app.store();
    for (n, body) in &bodies {
        let o = store.order(n).await.unwrap().expect("stored");
        assert_eq!(
            o.placed.customer_name,
            body["customer_name"].as_str().unwrap(),
            "{n}"
        );
        let items = body["items"].as_array().unwrap();
        assert_eq!(o.placed.items.len(), items.len(), "{n}");
        for (got, want) in o.placed.items.iter().zip(items) {
            assert_eq!(got.name, want["name"].as_str().unwrap(), "{n}");
            assert_eq!(got.quantity, want["quantity"].as_i64().unwrap(), "{n}");
        }
    }
    let distinct: BTreeSet<&String> = numbers.iter().collect();
    assert_eq!(distinct.len(), 200, "duplicate order numbers");
    // Per UTC date (a run may straddle midnight), the counter is 1..=k.
    let mut by_date: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for n in &numbers {
        let parts: Vec<&str> = n.split('_').collect();
        assert_eq!(parts.len(), 3, "{n}");
        assert_eq!(parts[2].len(), 3, "{n}: three digits up to 999");
        by_date
            .entry(parts[1].to_string())
            .or_default()
            .push(parts[2].parse().unwrap());
    }
    for seqs in by_date.values_mut() {
        seqs.sort();
        assert_eq!(*seqs, (1..=seqs.len() as u32).collect::<Vec<_>>());
    }
    let ch = env.amqp_with_topology().await;
    eventually(
        Duration::from_secs(30),
        "200 messages in the kitchen queues",
        || async {
            let mut counts = Vec::new();
            for q in QUEUES {
                counts.push(queue_counts(&ch, q).await.0);
            }
            (counts.iter().sum::<u32>() == 200).then_some(counts)
        },
    )
    .await;
    let mut published = BTreeSet::new();
    for q in QUEUES {
        for d in get_all(&ch, q).await {
            let v: Value = serde_json::from_slice(&d.data).unwrap();
            let n = v["order_number"].as_str().unwrap().to_string();
            let body = &bodies[&n];
            assert_eq!(v["customer_name"], body["customer_name"], "message of {n}");
            assert_eq!(
                v["items"].as_array().map(Vec::len),
                body["items"].as_array().map(Vec::len)
            );
            published.insert(n);
        }
    }
    assert_eq!(published.len(), 200);
    assert!(published.iter().all(|n| distinct.contains(n)));
    app.stop().await;
}

async fn health(url: &str) -> (u16, Value) {
    let (s, _, v) = get_json(&http(), &format!("{url}/health")).await;
    (s, v)
}

/// /health is the spec's document with real checks; 503 when the database
/// cannot be used, 200 again once it can.
///
/// PostgreSQL: the service reaches the real server through a TCP forwarder
/// that the test cuts (no listener, every connection reset): to the service
/// that is exactly a crashed or unreachable server. New orders get 503, not
/// 500, meanwhile.
async fn health_follows_the_database(b: Backend) {
    let env = TestEnv::new(b);
    let mut cfg = env.cfg.clone();
    let proxy = match b {
        Backend::Postgres => {
            let p = TcpProxy::start(&format!("{}:{}", common::pg_host(), common::pg_port())).await;
            cfg.database.host = Some("127.0.0.1".into());
            cfg.database.port = p.port;
            Some(p)
        }
        Backend::Sqlite => None,
    };
    let orders = env.start_with(Mode::OrderService, None, &cfg).await;
    let tracking = env.start_with(Mode::TrackingService, None, &cfg).await;
    let (ou, tu) = (orders.order_url(), tracking.tracking_url());

    // Healthy once the relay is connected to RabbitMQ.
    let v = eventually(Duration::from_secs(15), "order service healthy", || async {
        let (s, v) = health(&ou).await;
        (s == 200).then_some(v)
    })
    .await;
    assert_eq!(v["status"], "healthy");
    assert_eq!(v["service"], "order-service");
    assert_eq!(v["checks"]["database"], "healthy");
    assert_eq!(v["checks"]["rabbitmq"], "healthy");
    assert!(
        chrono::DateTime::parse_from_rfc3339(v["timestamp"].as_str().unwrap()).is_ok(),
        "{v}"
    );
    let (s, v) = health(&tu).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["service"], "tracking-service");
    assert_eq!(v["checks"]["database"], "healthy");

    // The database goes away.
    let moved = env.dir.path().join("moved-away.db");
    match b {
        Backend::Postgres => proxy.as_ref().unwrap().down(),
        // SQLite has no server to lose; what an edge box does lose is the file
        // (deleted by hand or by a package purge, a disk unmounted). A service
        // that keeps writing to an unlinked file loses every order at its next
        // start, so it is not healthy: move the file away (a rename keeps the
        // inode, so it can be put back below).
        Backend::Sqlite => std::fs::rename(&env.cfg.database.sqlite_path, &moved).unwrap(),
    }
    for (url, service) in [(&ou, "order-service"), (&tu, "tracking-service")] {
        let v = eventually(
            Duration::from_secs(20),
            &format!("{service} unhealthy"),
            || async {
                let (s, v) = health(url).await;
                (s == 503).then_some(v)
            },
        )
        .await;
        assert_eq!(v["status"], "unhealthy", "{v}");
        assert_eq!(v["service"], service);
        assert!(
            v["checks"]["database"]
                .as_str()
                .unwrap()
                .starts_with("unhealthy"),
            "{v}"
        );
    }
    if b == Backend::Postgres {
        let (s, h, v) = post_json(&http(), &format!("{ou}/orders"), &spec_orders()[0]).await;
        assert_eq!(s, 503, "POST while the database is down: {v}");
        assert!(h.contains_key("retry-after"));
        assert!(v["error"].is_string());
    }

    // Back.
    match b {
        Backend::Postgres => proxy.as_ref().unwrap().up().await,
        Backend::Sqlite => std::fs::rename(&moved, &env.cfg.database.sqlite_path).unwrap(),
    }
    for url in [&ou, &tu] {
        eventually(Duration::from_secs(30), "healthy again", || async {
            (health(url).await.0 == 200).then_some(())
        })
        .await;
    }
    place_order(&http(), &ou, &spec_orders()[0]).await;
    orders.stop().await;
    tracking.stop().await;
}

/// Over --max-concurrent requests in flight, the next one waits for a slot:
/// it is served when the slot frees, and gets 503 with Retry-After only after
/// `queue_timeout_ms` (issue 22: an instant 503 made clients retry at once).
async fn max_concurrent_overflow(b: Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = TestEnv::new(b);
    let mut cfg = env.cfg.clone();
    cfg.http.max_concurrent = 1;
    cfg.http.queue_timeout_ms = 600;
    let app = env.start_with(Mode::OrderService, None, &cfg).await;
    let base = app.order_url();
    let http = http();

    // A client that sends its headers and half its body, then stalls: its
    // request holds the only slot while the service waits for the body.
    let body = serde_json::to_vec(&spec_orders()[0]).unwrap();
    let mut slow = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "POST /orders HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&body[..body.len() / 2]).await.unwrap();

    let v = eventually(
        Duration::from_secs(10),
        "the slow request to hold the slot",
        || async {
            let r = http.get(format!("{base}/openapi.yaml")).send().await.ok()?;
            if r.status() != 503 {
                return None;
            }
            r.json::<serde_json::Value>().await.ok()
        },
    )
    .await;
    assert!(v["error"].is_string(), "{v}");
    // Health checks are exempt from the limit: a busy service is not a dead one.
    let started = std::time::Instant::now();
    let (s, _) = health(&base).await;
    assert_eq!(s, 200, "/health must answer while the service is busy");
    assert!(started.elapsed() < Duration::from_millis(500));
    // A request over the limit waits its queue_timeout_ms, then 503.
    let started = std::time::Instant::now();
    let (s, h, v) = post_json(&http, &format!("{base}/orders"), &spec_orders()[1]).await;
    let took = started.elapsed();
    assert_eq!(s, 503, "{v}");
    assert_eq!(h.get("retry-after").map(|v| v.as_bytes()), Some(&b"1"[..]));
    assert!(
        took >= Duration::from_millis(550) && took < Duration::from_secs(5),
        "503 after {took:?}, queue_timeout_ms is 600"
    );

    // A request that arrives while the slot is taken and gets it within its
    // wait is served, not refused.
    let queued = tokio::spawn({
        let (http, base) = (http.clone(), base.clone());
        async move { post_json(&http, &format!("{base}/orders"), &spec_orders()[1]).await }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    slow.write_all(&body[body.len() / 2..]).await.unwrap();
    let mut resp = Vec::new();
    slow.read_to_end(&mut resp).await.unwrap();
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let (s, _, v) = queued.await.unwrap();
    assert_eq!(s, 200, "the queued request must be served: {v}");
    assert!(v["order_number"].as_str().unwrap().ends_with("_002"), "{v}");
    app.stop().await;
}

/// Open connections are bounded (issue 22): over `max_connections`, a new
/// connection gets one clean 503 and is closed, and a freed slot is reused.
async fn connections_are_bounded(b: Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = TestEnv::new(b);
    let mut cfg = env.cfg.clone();
    cfg.http.max_connections = 3;
    let app = env.start_with(Mode::OrderService, None, &cfg).await;
    let base = app.order_url();
    let addr = base.trim_start_matches("http://").to_string();
    let get = |keep: bool| {
        format!(
            "GET /health HTTP/1.1\r\nHost: t\r\nConnection: {}\r\n\r\n",
            if keep { "keep-alive" } else { "close" }
        )
    };
    // Three idle keep-alive connections, each proven served.
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        c.write_all(get(true).as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = c.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        idle.push(c);
    }
    // The fourth is answered 503, with Retry-After, and closed.
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    c.write_all(get(true).as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut resp))
        .await
        .expect("an over-limit connection is closed")
        .unwrap();
    let resp = String::from_utf8_lossy(&resp).to_ascii_lowercase();
    assert!(resp.starts_with("http/1.1 503"), "{resp}");
    assert!(resp.contains("retry-after: 1"), "{resp}");
    assert!(resp.contains("too many open connections"), "{resp}");
    // A closed connection frees its slot.
    drop(idle.pop());
    let v = eventually(
        Duration::from_secs(5),
        "a freed connection slot",
        || async {
            let mut c = tokio::net::TcpStream::connect(&addr).await.ok()?;
            c.write_all(get(false).as_bytes()).await.ok()?;
            let mut resp = Vec::new();
            c.read_to_end(&mut resp).await.ok()?;
            resp.starts_with(b"HTTP/1.1 200").then_some(())
        },
    )
    .await;
    assert_eq!(v, ());
    drop(idle);
    app.stop().await;
}

backend_tests!(
    orders_are_stored_and_published,
    validation_rules,
    bad_bodies,
    request_ids,
    concurrent_orders,
    health_follows_the_database,
    max_concurrent_overflow,
    connections_are_bounded,
);
