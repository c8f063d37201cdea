//! Issue 14, part 2: Prometheus metrics, through the real binary (one process
//! per service, so each has its own recorder and the counters are exactly the
//! test's), on both backends:
//!
//! 1. the order service's `/metrics`: the orders-created counter moves by
//!    exactly the orders posted, per type; the request histogram carries the
//!    route pattern (never a raw order number); every line of the text is a
//!    valid exposition line;
//! 2. a kitchen worker's `[metrics] port`: `/health`, and orders cooked and
//!    ticket times after cooking;
//! 3. who may scrape: from off the box (`anonymous_loopback = false` makes
//!    loopback count as off the box; an `X-Forwarded-For` header from a reverse
//!    proxy does too) a token of any role is needed, on the order service, the
//!    display bridge's health port and the worker's and notifier's metrics
//!    ports alike; the answer without one is the same 401 JSON as the API's;
//! 4. `--mode=all` has one endpoint (the order service's port).
use crate::common;

use common::{place_order, spec_orders, takeout, wait_status, Backend, Proc, TestEnv};
use restaurant_system::domain::OrderStatus;
use std::collections::HashMap;
use std::time::Duration;

/// `GET url` with optional headers: status, Content-Type, body text.
async fn get(url: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut req = reqwest::Client::new().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, ct, resp.text().await.expect("body"))
}

/// Scrapes `base/metrics` (200, the text format) and checks every line.
async fn scrape(base: &str) -> Exposition {
    let (status, ct, text) = get(&format!("{base}/metrics"), &[]).await;
    assert_eq!(status, 200, "{text}");
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    Exposition::parse(&text)
}

/// The samples of an exposition text: (name, labels) -> value.
struct Exposition {
    text: String,
    samples: Vec<(String, HashMap<String, String>, f64)>,
}

impl Exposition {
    /// Parses the text format; panics on any line that is not a valid
    /// exposition line (comment, HELP, TYPE, sample, blank).
    fn parse(text: &str) -> Exposition {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# ") {
                let mut parts = rest.splitn(3, ' ');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some("HELP"), Some(name), _) => assert!(is_name(name), "{line}"),
                    (Some("TYPE"), Some(name), Some(kind)) => {
                        assert!(is_name(name), "{line}");
                        assert!(
                            ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                            "{line}"
                        );
                    }
                    _ => {}
                }
                continue;
            }
            assert!(!line.starts_with('#'), "bad comment line: {line:?}");
            samples.push(parse_sample(line));
        }
        Exposition {
            text: text.to_string(),
            samples,
        }
    }

    /// The value of the sample `name` whose labels include `labels` (0 when absent).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| *v)
            .sum()
    }

    fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.samples.iter().any(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
    }
}

fn is_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

/// `name{k="v",...} value [timestamp]`.
fn parse_sample(line: &str) -> (String, HashMap<String, String>, f64) {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("no value: {line:?}"));
    let name = &line[..name_end];
    assert!(is_name(name), "bad metric name in {line:?}");
    let mut labels = HashMap::new();
    let mut rest = &line[name_end..];
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        let mut end = None;
        loop {
            // A label: name="value" (with \\, \" and \n escapes), then , or }.
            let start = match chars.peek() {
                Some((_, '}')) => {
                    end = chars.next().map(|(i, _)| i);
                    break;
                }
                Some((i, _)) => *i,
                None => break,
            };
            let eq = after[start..]
                .find("=\"")
                .unwrap_or_else(|| panic!("bad label in {line:?}"));
            let key = &after[start..start + eq];
            assert!(
                is_name(key) && !key.contains(':'),
                "bad label name in {line:?}"
            );
            for _ in 0..eq + 2 {
                chars.next();
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c @ ('\\' | '"'))) => value.push(c),
                        other => panic!("bad escape {other:?} in {line:?}"),
                    },
                    Some((_, '"')) => break,
                    Some((_, c)) => value.push(c),
                    None => panic!("unterminated label value in {line:?}"),
                }
            }
            labels.insert(key.to_string(), value);
            match chars.peek() {
                Some((_, ',')) => {
                    chars.next();
                }
                Some((_, '}')) => {}
                other => panic!("bad label separator {other:?} in {line:?}"),
            }
        }
        let end = end.unwrap_or_else(|| panic!("unterminated labels in {line:?}"));
        rest = &after[end + 1..];
    }
    let mut parts = rest
        .strip_prefix(' ')
        .unwrap_or_else(|| panic!("no space before the value in {line:?}"))
        .split(' ');
    let value = match parts.next() {
        Some("+Inf") => f64::INFINITY,
        Some("-Inf") => f64::NEG_INFINITY,
        Some("NaN") => f64::NAN,
        Some(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        None => panic!("no value in {line:?}"),
    };
    if let Some(ts) = parts.next() {
        ts.parse::<i64>()
            .unwrap_or_else(|_| panic!("bad timestamp in {line:?}"));
    }
    assert!(parts.next().is_none(), "trailing text in {line:?}");
    (name.to_string(), labels, value)
}

const CREATED: &str = "restaurant_orders_created_total";
const DURATION: &str = "restaurant_http_request_duration_seconds";

/// Starts the real binary in `mode` with extra env; returns it and its base URL.
async fn spawn(env: &TestEnv, mode: &str, extra: &[(&str, &str)]) -> (Proc, String) {
    let mut cmd = env.command();
    cmd.arg(format!("--mode={mode}"))
        .env("RESTAURANT_HTTP__ORDER_PORT", "0")
        .env("RESTAURANT_HTTP__TRACKING_PORT", "0")
        .env("RESTAURANT_HTTP__BRIDGE_PORT", "0");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let p = Proc::spawn(mode, cmd);
    let port = p.port().await;
    (p, format!("http://127.0.0.1:{port}"))
}

// ---------------------------------------------------------------------------
// 1. The order service
// ---------------------------------------------------------------------------

async fn orders_created_and_request_durations(b: Backend) {
    let env = TestEnv::new(b);
    let (mut p, base) = spawn(&env, "order-service", &[]).await;
    let before = scrape(&base).await;
    // Issue 26: every order type's counter is there at 0 from start-up, so
    // `increase()` sees the first order after a restart.
    for t in ["dine_in", "takeout", "delivery"] {
        assert!(
            before.has(CREATED, &[("order_type", t)]),
            "{t} not exported at start: {}",
            before.text
        );
        assert_eq!(before.value(CREATED, &[("order_type", t)]), 0.0);
    }
    let http = reqwest::Client::new();
    // 3 takeout, 1 dine-in, 1 delivery; one invalid order and one replayed
    // keyed order that create nothing.
    let mut numbers = Vec::new();
    for body in spec_orders()
        .into_iter()
        .chain([takeout("A", 1, 1.0), takeout("B", 2, 2.0)])
    {
        numbers.push(place_order(&http, &base, &body).await);
    }
    let (status, _, _) = common::post_json(
        &http,
        &format!("{base}/orders"),
        &serde_json::json!({"customer_name": "", "order_type": "takeout", "items": []}),
    )
    .await;
    assert_eq!(status, 400);
    // A retry under the same Idempotency-Key creates nothing, so counts nothing.
    for _ in 0..2 {
        let r = http
            .post(format!("{base}/orders"))
            .header("Idempotency-Key", "pos-1-retry")
            .json(&takeout("C", 1, 3.0))
            .send()
            .await
            .expect("keyed POST");
        assert_eq!(r.status().as_u16(), 200);
    }
    let (status, _, _) = common::post_json(
        &http,
        &format!("{base}/orders/{}/cancel", numbers[0]),
        &serde_json::json!({}),
    )
    .await;
    assert_eq!(status, 200);

    let after = scrape(&base).await;
    for (t, n) in [("takeout", 4.0), ("dine_in", 1.0), ("delivery", 1.0)] {
        let moved = after.value(CREATED, &[("order_type", t)])
            - before.value(CREATED, &[("order_type", t)]);
        assert_eq!(moved, n, "{t}: {}", after.text);
    }
    // The histogram: by route pattern, method and status.
    let count = |labels: &[(&str, &str)]| {
        after.value(&format!("{DURATION}_count"), labels)
            - before.value(&format!("{DURATION}_count"), labels)
    };
    assert_eq!(
        count(&[("route", "/orders"), ("method", "POST"), ("status", "200")]),
        7.0,
        "{}",
        after.text
    );
    assert_eq!(
        count(&[("route", "/orders"), ("method", "POST"), ("status", "400")]),
        1.0
    );
    assert_eq!(
        count(&[
            ("route", "/orders/{n}/cancel"),
            ("method", "POST"),
            ("status", "200")
        ]),
        1.0
    );
    assert!(after.has(
        &format!("{DURATION}_bucket"),
        &[("route", "/orders"), ("le", "+Inf")]
    ));
    // The scrape before this one is counted too.
    assert!(after.has(&format!("{DURATION}_count"), &[("route", "/metrics")]));
    // No raw order number anywhere: label values are patterns.
    assert!(!after.text.contains("ORD_"), "{}", after.text);
    // The relay's gauges and the link state exist.
    assert!(
        after.has("restaurant_outbox_pending", &[]),
        "{}",
        after.text
    );
    assert!(after.has("restaurant_outbox_oldest_age_seconds", &[]));
    assert_eq!(
        after.value("restaurant_link_up", &[("link", "rabbitmq")]),
        1.0,
        "{}",
        after.text
    );
    common::eventually(Duration::from_secs(15), "database link gauge", || {
        let base = base.clone();
        async move {
            let m = scrape(&base).await;
            (m.value("restaurant_link_up", &[("link", "database")]) == 1.0).then_some(())
        }
    })
    .await;
    // Relay batches were published and timed.
    common::eventually(Duration::from_secs(15), "relay publish histogram", || {
        let base = base.clone();
        async move {
            let m = scrape(&base).await;
            (m.value("restaurant_relay_publish_duration_seconds_count", &[]) >= 1.0).then_some(())
        }
    })
    .await;
    assert!(p.stop().await.success());
}

// ---------------------------------------------------------------------------
// 2. A kitchen worker's metrics port
// ---------------------------------------------------------------------------

async fn worker_metrics_port_counts_orders_cooked(b: Backend) {
    let env = TestEnv::new(b);
    let app = env
        .start(restaurant_system::modes::Mode::OrderService, None)
        .await;
    let (mut w, base) = spawn(
        &env,
        "kitchen-worker",
        &[
            ("RESTAURANT_METRICS__PORT", "0"),
            ("RESTAURANT_WORKER_NAME", "grill-1"),
        ],
    )
    .await;
    let (status, _, health) = get(&format!("{base}/health"), &[]).await;
    assert_eq!(status, 200, "{health}");
    assert!(health.contains("kitchen-worker"), "{health}");
    // Issue 26: the worker's counter is exported at 0 before its first order.
    let m = scrape(&base).await;
    assert!(
        m.has("restaurant_orders_cooked_total", &[("worker", "grill-1")]),
        "{}",
        m.text
    );
    assert_eq!(
        m.value("restaurant_orders_cooked_total", &[("worker", "grill-1")]),
        0.0
    );
    let http = reqwest::Client::new();
    let mut numbers = Vec::new();
    for body in [takeout("A", 1, 1.0), takeout("B", 1, 1.0)] {
        numbers.push(place_order(&http, &app.order_url(), &body).await);
    }
    for n in &numbers {
        wait_status(&app.store(), n, OrderStatus::Ready, Duration::from_secs(30)).await;
    }
    let m = common::eventually(Duration::from_secs(10), "orders cooked", || {
        let base = base.clone();
        async move {
            let m = scrape(&base).await;
            (m.value("restaurant_orders_cooked_total", &[("worker", "grill-1")]) >= 2.0)
                .then_some(m)
        }
    })
    .await;
    assert_eq!(
        m.value("restaurant_orders_cooked_total", &[("worker", "grill-1")]),
        2.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.value(
            "restaurant_ticket_time_seconds_count",
            &[("order_type", "takeout")]
        ),
        2.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.value("restaurant_link_up", &[("link", "rabbitmq")]),
        1.0,
        "{}",
        m.text
    );
    // Only /metrics and /health on this port.
    let (status, _, _) = get(&format!("{base}/orders/{}", numbers[0]), &[]).await;
    assert_eq!(status, 404);
    assert!(w.stop().await.success());
    app.stop().await;
}

// ---------------------------------------------------------------------------
// 3. Who may scrape
// ---------------------------------------------------------------------------

fn token(env: &TestEnv, name: &str, role: &str) -> String {
    let out = env
        .command()
        .args(["token", "create", name, "--role", role])
        .output()
        .expect("token create");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .to_string()
}

/// Anonymous: 401 with the API's JSON error. Any role's token: 200.
async fn only_with_a_token(base: &str, tokens: &[String], what: &str) {
    let (status, ct, body) = get(&format!("{base}/metrics"), &[]).await;
    assert_eq!(status, 401, "{what}: {body}");
    assert!(ct.starts_with("application/json"), "{what}: {ct}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON error");
    assert_eq!(v["error"], "a token is required", "{what}: {body}");
    assert!(!body.contains("restaurant_"), "{what}: {body}");
    let wrong = restaurant_system::domain::access::token_from_bytes(rand::random());
    let (status, _, _) = get(
        &format!("{base}/metrics"),
        &[("authorization", &format!("Bearer {wrong}"))],
    )
    .await;
    assert_eq!(status, 401, "{what}: a wrong token");
    for t in tokens {
        let (status, ct, body) = get(
            &format!("{base}/metrics"),
            &[("authorization", &format!("Bearer {t}"))],
        )
        .await;
        assert_eq!(status, 200, "{what}: {body}");
        assert!(ct.starts_with("text/plain"), "{what}: {ct}");
        Exposition::parse(&body);
    }
    // /health stays open to anyone.
    let (status, _, body) = get(&format!("{base}/health"), &[]).await;
    assert_ne!(status, 401, "{what}: /health {body}");
}

async fn off_the_box_a_token_is_needed(b: Backend) {
    let env = TestEnv::new(b);
    let tokens: Vec<String> = ["pos", "kitchen", "manager"]
        .iter()
        .map(|r| token(&env, &format!("prom-{r}"), r))
        .collect();
    let closed = [("RESTAURANT_SECURITY__ANONYMOUS_LOOPBACK", "false")];
    let (mut order, order_base) = spawn(&env, "order-service", &closed).await;
    only_with_a_token(&order_base, &tokens, "order service").await;
    // Behind a reverse proxy, loopback is not the box: the same rule.
    let (mut open_order, open_base) = spawn(&env, "order-service", &[]).await;
    let (status, _, _) = get(&format!("{open_base}/metrics"), &[]).await;
    assert_eq!(status, 200, "anonymous loopback is on by default");
    let (status, _, _) = get(
        &format!("{open_base}/metrics"),
        &[("x-forwarded-for", "192.0.2.7")],
    )
    .await;
    assert_eq!(status, 401, "a proxied scrape is not from the box");
    // The display bridge's health port (no MQTT broker needed for this).
    let (mut bridge, bridge_base) = spawn(
        &env,
        "display-bridge",
        &[
            closed[0],
            ("RESTAURANT_MQTT__ENABLED", "true"),
            ("RESTAURANT_MQTT__PORT", "1"),
        ],
    )
    .await;
    only_with_a_token(&bridge_base, &tokens, "display bridge").await;
    // A kitchen worker's metrics port.
    let (mut worker, worker_base) = spawn(
        &env,
        "kitchen-worker",
        &[
            closed[0],
            ("RESTAURANT_METRICS__PORT", "0"),
            ("RESTAURANT_WORKER_NAME", "grill-2"),
        ],
    )
    .await;
    only_with_a_token(&worker_base, &tokens, "worker metrics port").await;
    // The notifier's, likewise.
    let (mut notifier, notifier_base) = spawn(
        &env,
        "notification-subscriber",
        &[closed[0], ("RESTAURANT_METRICS__PORT", "0")],
    )
    .await;
    only_with_a_token(&notifier_base, &tokens, "notifier metrics port").await;
    for p in [
        &mut order,
        &mut open_order,
        &mut bridge,
        &mut worker,
        &mut notifier,
    ] {
        p.stop().await;
    }
}

/// `--mode=all`: one endpoint (the order service's port), not three.
async fn one_endpoint_in_mode_all(b: Backend) {
    let env = TestEnv::new(b);
    let mut cmd = env.command();
    cmd.args(["--mode=all"])
        .env("RESTAURANT_HTTP__ORDER_PORT", "0")
        .env("RESTAURANT_HTTP__TRACKING_PORT", "0");
    let mut p = Proc::spawn("all", cmd);
    let mut ports = HashMap::new();
    for svc in ["order-service", "tracking-service"] {
        let v = p
            .wait_log("service_started", Duration::from_secs(30), |v| {
                v["service"] == svc && v["details"]["port"].is_u64()
            })
            .await;
        ports.insert(svc, v["details"]["port"].as_u64().unwrap_or(0));
    }
    let order = format!("http://127.0.0.1:{}", ports["order-service"]);
    let tracking = format!("http://127.0.0.1:{}", ports["tracking-service"]);
    let m = scrape(&order).await;
    assert!(
        m.has("restaurant_link_up", &[("link", "rabbitmq")]),
        "{}",
        m.text
    );
    let (status, _, _) = get(&format!("{tracking}/metrics"), &[]).await;
    assert_eq!(status, 404);
    p.stop().await;
}

// ---------------------------------------------------------------------------
// 3. The relay under a backlog
// ---------------------------------------------------------------------------

/// Issue 22, item 2: the relay claims what waits in a few large steps, not a
/// step per 500 rows (each a job of SQLite's single writer, queued behind
/// intake's). 3,000 rows left by another process (old enough to be taken
/// over) go out in at most two batches, each message once.
async fn a_backlog_goes_out_in_few_batches(b: Backend) {
    const BACKLOG: usize = 3_000;
    let env = TestEnv::new(b);
    let ch = env.amqp_with_topology().await;
    let store = env.open_store().await;
    let order =
        restaurant_system::domain::order::validate(&takeout("Ann", 1, 4.5)).expect("a valid order");
    let then = chrono::Utc::now() - chrono::Duration::seconds(30);
    let mut writes = tokio::task::JoinSet::new();
    for chunk in 0..BACKLOG / 100 {
        let (store, order) = (store.clone(), order.clone());
        writes.spawn(async move {
            for i in 0..100 {
                store
                    .create_order(&order, &format!("rid-{chunk}-{i}"), then, then.date_naive())
                    .await
                    .expect("create");
            }
        });
    }
    while let Some(done) = writes.join_next().await {
        done.expect("writer task");
    }
    assert_eq!(store.outbox_len().await.expect("outbox"), BACKLOG as i64);

    let (mut p, base) = spawn(&env, "order-service", &[]).await;
    common::eventually(Duration::from_secs(60), "the backlog published", || {
        let store = store.clone();
        async move { (store.outbox_len().await.ok()? == 0).then_some(()) }
    })
    .await;
    let m = scrape(&base).await;
    let batches = m.value("restaurant_relay_publish_duration_seconds_count", &[]);
    assert!(
        (1.0..=2.0).contains(&batches),
        "{BACKLOG} rows went out in {batches} batches"
    );
    let (waiting, _) = common::queue_counts(&ch, "kitchen_takeout_queue").await;
    assert_eq!(waiting as usize, BACKLOG, "each message once");
    assert!(p.stop().await.success());
}

backend_tests!(
    orders_created_and_request_durations,
    worker_metrics_port_counts_orders_cooked,
    off_the_box_a_token_is_needed,
    one_endpoint_in_mode_all,
    a_backlog_goes_out_in_few_batches,
);
