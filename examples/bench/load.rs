//! The load: realistic orders sent open-loop at a fixed rate, and the two
//! observers that see each order come out the other end (its retained MQTT
//! message, and the message that shows it `ready`).
//!
//! Open loop: order i is due at `start + i / rate`, whatever happened to the
//! orders before it, and its latency is measured from that due time, not from
//! when it was actually sent. A stall (in the daemon, or in this program) shows
//! up in the latency of every order that was due during it: no coordinated
//! omission.

use crate::stats::Latency;
use crate::system::Servers;
use rand::seq::IndexedRandom;
use rand::Rng;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::Serialize;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MENU: &[(&str, f64)] = &[
    ("Margherita Pizza", 15.99),
    ("Pepperoni Pizza", 17.49),
    ("Caesar Salad", 8.99),
    ("Steak", 29.99),
    ("Burger Combo", 18.99),
    ("Pad Thai", 14.00),
    ("Spring Rolls", 6.50),
    ("Fish and Chips", 16.25),
    ("Tomato Soup", 5.75),
    ("Tiramisu", 7.20),
    ("Lemonade", 3.50),
    ("Espresso", 2.40),
];
const NAMES: &[&str] = &[
    "John Doe",
    "Jane Smith",
    "Bob Johnson",
    "Maria Garcia",
    "Li Wei",
    "Amelie Dubois",
    "Sean O'Brien",
    "Anna-Lena Schmidt",
];
const ADDRESSES: &[&str] = &[
    "123 Main Street, Apt 4B",
    "12 Baker Street, Apt 3",
    "77 Harbour Road, Unit 9",
    "5 Station Square, Floor 2",
];

/// One realistic order body: mixed types (half dine-in, a third takeout, the
/// rest delivery), 1-5 distinct items, quantities 1-3.
pub fn random_order(rng: &mut impl Rng) -> Vec<u8> {
    let n = rng.random_range(1..=5);
    let picked: Vec<(&str, f64)> = MENU.choose_multiple(rng, n).copied().collect();
    let items: Vec<_> = picked
        .into_iter()
        .map(|(name, price)| json!({"name": name, "quantity": rng.random_range(1..=3), "price": price}))
        .collect();
    let name = NAMES.choose(rng).copied().unwrap_or("John Doe");
    let body = match rng.random_range(0..6) {
        0..=2 => json!({"customer_name": name, "order_type": "dine_in",
                        "table_number": rng.random_range(1..=40), "items": items}),
        3..=4 => json!({"customer_name": name, "order_type": "takeout", "items": items}),
        _ => json!({"customer_name": name, "order_type": "delivery",
                    "delivery_address": ADDRESSES.choose(rng).copied().unwrap_or(ADDRESSES[0]),
                    "items": items}),
    };
    serde_json::to_vec(&body).expect("json")
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(512)
        .tcp_nodelay(true)
        .build()
        .expect("http client")
}

/// One order's fate as the load generator saw it.
struct Sent {
    due: Instant,
    /// When the request actually started (its lag behind `due` is the
    /// generator's own; it counts in the latency all the same).
    sent: Instant,
    done: Instant,
    outcome: Result<String, String>,
}

async fn post_order(client: &reqwest::Client, url: &str, body: Vec<u8>) -> Result<String, String> {
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                "timeout".to_string()
            } else if e.is_connect() {
                "connect".to_string()
            } else {
                "transport".to_string()
            }
        })?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|_| "body".to_string())?;
    if !status.is_success() {
        return Err(format!("http {}", status.as_u16()));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| "bad json".to_string())?;
    v["order_number"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| "no order_number".to_string())
}

/// What a load phase produced.
pub struct Phase {
    pub sent: usize,
    pub ok: usize,
    pub errors: BTreeMap<String, u64>,
    /// POST latency of the successful orders, from their due time.
    pub latency: Option<Latency>,
    /// How late the generator started requests (all of them).
    pub send_lag: Option<Latency>,
    /// Created order numbers with their due time (for end-to-end figures).
    pub created: Vec<(String, Instant)>,
    pub elapsed: Duration,
}

impl Phase {
    fn from_sent(sent: Vec<Sent>, elapsed: Duration) -> Phase {
        let mut errors = BTreeMap::new();
        let mut created = Vec::new();
        let mut lat = Vec::new();
        let n = sent.len();
        let send_lag =
            Latency::from_durations(sent.iter().map(|s| s.sent.saturating_duration_since(s.due)));
        for s in sent {
            match s.outcome {
                Ok(num) => {
                    lat.push(s.done.saturating_duration_since(s.due));
                    created.push((num, s.due));
                }
                Err(e) => *errors.entry(e).or_insert(0) += 1,
            }
        }
        Phase {
            sent: n,
            ok: created.len(),
            errors,
            latency: Latency::from_durations(lat),
            send_lag,
            created,
            elapsed,
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Sends `rate` orders per second for `dur`, open loop. The schedule runs on
/// a thread of its own with the OS sleep (tokio's timer rounds up to whole
/// milliseconds, which would add up to a millisecond to every latency).
pub async fn open_loop(client: &reqwest::Client, url: &str, rate: f64, dur: Duration) -> Phase {
    let n = (rate * dur.as_secs_f64()).round().max(1.0) as usize;
    let mut rng = rand::rng();
    let bodies: Vec<Vec<u8>> = (0..n).map(|_| random_order(&mut rng)).collect();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Sent>();
    let url: Arc<str> = Arc::from(url);
    let start = Instant::now() + Duration::from_millis(20);
    let handle = tokio::runtime::Handle::current();
    let client = client.clone();
    let scheduler = std::thread::spawn(move || {
        for (i, body) in bodies.into_iter().enumerate() {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let (client, url, tx) = (client.clone(), url.clone(), tx.clone());
            handle.spawn(async move {
                let sent = Instant::now();
                let outcome = post_order(&client, &url, body).await;
                let _ = tx.send(Sent {
                    due,
                    sent,
                    done: Instant::now(),
                    outcome,
                });
            });
        }
    });
    let mut sent = Vec::with_capacity(n);
    while let Some(s) = rx.recv().await {
        sent.push(s);
    }
    let _ = scheduler.join();
    Phase::from_sent(sent, start.elapsed())
}

/// Sends `n` orders as fast as `concurrency` connections allow (a rush).
pub async fn burst(client: &reqwest::Client, url: &str, n: usize, concurrency: usize) -> Phase {
    let mut rng = rand::rng();
    let bodies: Arc<Mutex<Vec<Vec<u8>>>> =
        Arc::new(Mutex::new((0..n).map(|_| random_order(&mut rng)).collect()));
    let url: Arc<str> = Arc::from(url);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, bodies) = (client.clone(), url.clone(), bodies.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let Some(body) = bodies.lock().expect("lock").pop() else {
                    break;
                };
                let due = Instant::now();
                let outcome = post_order(&client, &url, body).await;
                out.push(Sent {
                    due,
                    sent: due,
                    done: Instant::now(),
                    outcome,
                });
            }
            out
        }));
    }
    let mut sent = Vec::with_capacity(n);
    for t in tasks {
        sent.extend(t.await.unwrap_or_default());
    }
    Phase::from_sent(sent, start.elapsed())
}

/// When each order was first seen on MQTT and when MQTT first showed it ready.
#[derive(Default)]
pub struct Seen {
    pub mqtt_first: Mutex<HashMap<String, Instant>>,
    pub ready: Mutex<HashMap<String, Instant>>,
    pub mqtt_messages: AtomicU64,
}

impl Seen {
    pub fn ready_count(&self, orders: &[(String, Instant)]) -> usize {
        let r = self.ready.lock().expect("lock");
        orders.iter().filter(|(n, _)| r.contains_key(n)).count()
    }

    pub fn mqtt_count(&self, orders: &[(String, Instant)]) -> usize {
        let r = self.mqtt_first.lock().expect("lock");
        orders.iter().filter(|(n, _)| r.contains_key(n)).count()
    }

    /// Due time -> first MQTT message, for the given orders.
    pub fn mqtt_latency(&self, orders: &[(String, Instant)]) -> Option<Latency> {
        let r = self.mqtt_first.lock().expect("lock");
        Latency::from_durations(
            orders
                .iter()
                .filter_map(|(n, due)| r.get(n).map(|t| t.saturating_duration_since(*due))),
        )
    }

    /// Due time -> the order shown `ready` on MQTT, for the given orders.
    pub fn ready_latency(&self, orders: &[(String, Instant)]) -> Option<Latency> {
        let r = self.ready.lock().expect("lock");
        Latency::from_durations(
            orders
                .iter()
                .filter_map(|(n, due)| r.get(n).map(|t| t.saturating_duration_since(*due))),
        )
    }
}

/// Subscribes to `{prefix}/orders/+` and records the first message of each
/// order and the first that shows it `ready` (the end of the kitchen's work as
/// a display sees it; no RabbitMQ queue of our own, so the observer adds no
/// load to the broker under test). Returns once the subscription is acknowledged.
pub async fn watch_mqtt(
    servers: &Servers,
    prefix: &str,
    seen: Arc<Seen>,
    stop: tokio_util::sync::CancellationToken,
) -> Result<(), String> {
    let mut opts = MqttOptions::new(
        format!("rs-bench-watch-{}", std::process::id()),
        servers.mqtt_host.clone(),
        servers.mqtt_port,
    );
    opts.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut ev) = AsyncClient::new(opts, 1000);
    let topic = format!("{prefix}/orders/+");
    client
        .subscribe(topic.clone(), QoS::AtLeastOnce)
        .await
        .map_err(|e| e.to_string())?;
    let (tx, rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
    tokio::spawn(async move {
        let mut tx = Some(tx);
        loop {
            let e = tokio::select! {
                _ = stop.cancelled() => break,
                e = ev.poll() => e,
            };
            match e {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(Ok(()));
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let now = Instant::now();
                    seen.mqtt_messages.fetch_add(1, Ordering::Relaxed);
                    if p.payload.is_empty() {
                        continue;
                    }
                    if let Some(n) = p.topic.rsplit('/').next() {
                        seen.mqtt_first
                            .lock()
                            .expect("lock")
                            .entry(n.to_string())
                            .or_insert(now);
                        #[derive(serde::Deserialize)]
                        struct State<'a> {
                            status: &'a str,
                        }
                        if serde_json::from_slice::<State>(&p.payload)
                            .is_ok_and(|s| s.status == "ready")
                        {
                            seen.ready
                                .lock()
                                .expect("lock")
                                .entry(n.to_string())
                                .or_insert(now);
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(Err(format!("MQTT {}: {e}", topic)));
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        let _ = client.disconnect().await;
    });
    tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .map_err(|_| "MQTT subscription not acknowledged within 10 s".to_string())?
        .map_err(|_| "MQTT watcher stopped".to_string())?
}

/// Counts the retained messages a fresh client subscribing at `qos` gets:
/// those of `orders`, and all order topics. Stops when nothing has arrived for
/// `quiet`.
pub async fn count_retained(
    servers: &Servers,
    prefix: &str,
    orders: &[(String, Instant)],
    qos: QoS,
    quiet: Duration,
) -> Result<(usize, usize), String> {
    let mut opts = MqttOptions::new(
        format!("rs-bench-retained-{}-{qos:?}", std::process::id()),
        servers.mqtt_host.clone(),
        servers.mqtt_port,
    );
    opts.set_clean_session(true)
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut ev) = AsyncClient::new(opts, 100);
    client
        .subscribe(format!("{prefix}/orders/+"), qos)
        .await
        .map_err(|e| e.to_string())?;
    let mut topics = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match tokio::time::timeout(quiet, ev.poll()).await {
            Err(_) => break,
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                if p.retain && !p.payload.is_empty() {
                    if let Some(n) = p.topic.rsplit('/').next() {
                        topics.insert(n.to_string());
                    }
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("MQTT: {e}")),
        }
        if Instant::now() > deadline {
            break;
        }
    }
    let _ = client.disconnect().await;
    Ok((
        orders.iter().filter(|(n, _)| topics.contains(n)).count(),
        topics.len(),
    ))
}

/// Deletes the retained messages under `prefix` (the run's private site): an
/// empty retained payload for every topic given.
pub async fn clear_retained(servers: &Servers, topics: Vec<String>) -> Result<(), String> {
    if topics.is_empty() {
        return Ok(());
    }
    let mut opts = MqttOptions::new(
        format!("rs-bench-clear-{}", std::process::id()),
        servers.mqtt_host.clone(),
        servers.mqtt_port,
    );
    opts.set_clean_session(true);
    let (client, mut ev) = AsyncClient::new(opts, 1000);
    let n = topics.len();
    let sender = tokio::spawn(async move {
        for t in topics {
            if client
                .publish(t, QoS::AtLeastOnce, true, Vec::<u8>::new())
                .await
                .is_err()
            {
                break;
            }
        }
        client
    });
    let mut acked = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked < n && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), ev.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("MQTT: {e}")),
            Err(_) => break,
        }
    }
    if let Ok(client) = sender.await {
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), ev.poll()).await;
    }
    if acked < n {
        return Err(format!("only {acked} of {n} retained messages cleared"));
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub sent: usize,
    pub ok: usize,
    pub errors: BTreeMap<String, u64>,
    pub elapsed_s: f64,
    pub post_latency: Option<Latency>,
    pub send_lag: Option<Latency>,
}

impl From<&Phase> for PhaseReport {
    fn from(p: &Phase) -> Self {
        PhaseReport {
            sent: p.sent,
            ok: p.ok,
            errors: p.errors.clone(),
            elapsed_s: p.elapsed.as_secs_f64(),
            post_latency: p.latency.clone(),
            send_lag: p.send_lag.clone(),
        }
    }
}
