//! Bounded everything (issue 22, item 5): a flood per bound, against the real
//! binary, showing that what it holds stays bounded (counts of what was
//! accepted, refused or dropped) and that its memory stays flat (the RSS of
//! the process from /proc, before and after; a bound, not a speed). The fourth
//! bound, the failed-login throttle's map, is a unit test of
//! `domain::access::Throttle` (`the_failure_map_is_bounded`): telling 10,000
//! small entries from 50,000 apart needs no process.
use crate::common;

use common::mosquitto::{SecureBroker, BRIDGE_USER};
use common::{place_order, spec_orders, Backend, Proc, TestEnv};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Resident memory of a process, in KiB (VmRSS, or VmHWM for its peak).
fn memory_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn order_service(env: &TestEnv, settings: &[(&str, &str)]) -> Proc {
    let mut cmd = env.command();
    cmd.args(["--mode=order-service", "--port=0"]);
    for (k, v) in settings {
        cmd.env(k, v);
    }
    Proc::spawn("order-service", cmd)
}

/// Open connections (the semaphore bounds requests, not sockets): 2,000
/// keep-alive connections, each sending one request and then holding on. At
/// most `max_connections` are served and kept; every other one is answered a
/// clean 503 (JSON, Retry-After) and closed, and the process's memory grows by
/// a bounded amount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_are_bounded_under_a_flood() {
    const FLOOD: usize = 2_000;
    const LIMIT: usize = 100;
    let env = TestEnv::new(Backend::Sqlite);
    let p = order_service(&env, &[("RESTAURANT_HTTP__MAX_CONNECTIONS", "100")]);
    let addr = format!("127.0.0.1:{}", p.port().await);
    let pid = p.child.id();
    place_order(
        &reqwest::Client::new(),
        &format!("http://{addr}"),
        &spec_orders()[0],
    )
    .await;
    let before = memory_kb(pid, "VmRSS:");

    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..FLOOD {
        let addr = addr.clone();
        flood.spawn(async move {
            let mut c = tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect");
            c.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
                .await
                .expect("send");
            let mut resp = vec![0u8; 8192];
            let n = tokio::time::timeout(Duration::from_secs(60), c.read(&mut resp))
                .await
                .expect("every connection is answered")
                .expect("read");
            resp.truncate(n);
            if resp.starts_with(b"HTTP/1.1 503") {
                // Closed after its answer: the rest of it, then the end.
                let _ = c.read_to_end(&mut resp).await;
                (None, String::from_utf8_lossy(&resp).to_ascii_lowercase())
            } else {
                (Some(c), String::from_utf8_lossy(&resp).to_ascii_lowercase())
            }
        });
    }
    let (mut held, mut refused) = (Vec::new(), 0);
    while let Some(r) = flood.join_next().await {
        match r.unwrap() {
            (Some(c), text) => {
                assert!(text.starts_with("http/1.1 200"), "{text}");
                held.push(c);
            }
            (None, text) => {
                assert!(
                    text.contains("retry-after: 1") && text.contains("too many open connections"),
                    "an over-limit connection gets a clean 503: {text}"
                );
                refused += 1;
            }
        }
    }
    let during = memory_kb(pid, "VmRSS:");
    eprintln!(
        "{FLOOD} connections: {} served and held, {refused} refused; RSS {before} kB before, {during} kB with them open",
        held.len()
    );
    assert!(
        held.len() <= LIMIT,
        "{} connections served and held open, max_connections is {LIMIT}",
        held.len()
    );
    assert_eq!(held.len() + refused, FLOOD);
    // Generous: the point is that it does not grow with the flood.
    assert!(
        during < before + 16 * 1024,
        "RSS grew from {before} kB to {during} kB under {FLOOD} connections"
    );
    drop(held);
    // The service still serves once the flood is gone.
    common::eventually(
        Duration::from_secs(10),
        "served after the flood",
        || async {
            let (s, _) = common::raw_http(
                &addr,
                b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            )
            .await;
            (s == 200).then_some(())
        },
    )
    .await;
}

/// The SQLite writer's queue: with the database locked by another process and
/// no HTTP limit in the way, 3,000 concurrent orders. The queue holds at most
/// its bound (1,024 jobs); the orders that find it full wait a second for room
/// and get 503 "the database is busy" with Retry-After, never an unbounded
/// queue. (A batch the writer is stuck on fails after its 5 s busy wait: a 503
/// "database unavailable".) Once the lock is gone, the queued orders commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_writer_queue_is_bounded() {
    const FLOOD: usize = 3_000;
    let env = TestEnv::new(Backend::Sqlite);
    let p = order_service(
        &env,
        &[
            ("RESTAURANT_HTTP__MAX_CONCURRENT", "5000"),
            ("RESTAURANT_HTTP__MAX_CONNECTIONS", "5000"),
        ],
    );
    let base = format!("http://127.0.0.1:{}", p.port().await);
    let pid = p.child.id();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(FLOOD)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    place_order(&http, &base, &spec_orders()[0]).await;
    let before = memory_kb(pid, "VmRSS:");

    // Another process's write transaction: the writer's next BEGIN waits for it.
    let path = env.cfg.database.sqlite_path.clone();
    let lock = rusqlite::Connection::open(&path).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();

    let mut flood = tokio::task::JoinSet::new();
    for i in 0..FLOOD {
        let (http, base) = (http.clone(), base.clone());
        let body = spec_orders()[i % 3].clone();
        flood.spawn(async move {
            let r = http
                .post(format!("{base}/orders"))
                .json(&body)
                .send()
                .await?;
            let status = r.status().as_u16();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.as_bytes().to_vec());
            let v: serde_json::Value = r.json().await?;
            Ok::<_, reqwest::Error>((status, retry, v))
        });
    }
    // Long enough for the flood to arrive at a debug build on a busy machine.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let during = memory_kb(pid, "VmRSS:");
    lock.execute_batch("ROLLBACK").unwrap();

    let (mut stored, mut busy, mut unavailable) = (0, 0, 0);
    while let Some(r) = flood.join_next().await {
        let (status, retry, v) = r.unwrap().expect("every order is answered");
        match (status, v["error"].as_str()) {
            (200, _) => stored += 1,
            (503, Some("the database is busy, try again shortly")) => {
                assert_eq!(retry.as_deref(), Some(&b"1"[..]), "{v}");
                busy += 1;
            }
            (503, Some("database unavailable, try again shortly")) => {
                assert!(retry.is_some(), "{v}");
                unavailable += 1;
            }
            _ => panic!("answer {status}: {v}"),
        }
    }
    eprintln!(
        "{FLOOD} orders against a locked database: {stored} stored, {busy} refused busy, {unavailable} failed in the stuck batches; RSS {before} kB before, {during} kB during"
    );
    assert!(busy > 0, "nothing was refused: the queue is not bounded");
    // What waited behind the lock: the queue's bound and the batch the writer held.
    assert!(stored <= 1_024 + 256, "{stored} orders were queued");
    assert_eq!(stored + busy + unavailable, FLOOD);
    // Most of it is the 3,000 open connections this test lets in (20-25 KB
    // each, 60-75 MB seen); the counts above are what show the queue's bound.
    assert!(
        during < before + 128 * 1024,
        "RSS grew from {before} kB to {during} kB"
    );
}

/// The MQTT inbound channel: a broker that retains 10,000 order payloads of
/// 16 KB (160 MB) on the bridge's topics, all sent to the bridge when it reads
/// them back after connecting. It keeps at most 1,024 waiting for the snapshot
/// task, drops the rest for the next connect (and says so), and its memory
/// stays far below what it was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mqtt_read_back_is_bounded() {
    const RETAINED: usize = 10_000;
    const SIZE: usize = 16 * 1024;
    let env = TestEnv::new(Backend::Sqlite);
    let mqtt = SecureBroker::start(false);
    // Fill the broker's retained store with orders the database does not know.
    let mut opts = rumqttc::MqttOptions::new("flood", "127.0.0.1", mqtt.port);
    opts.set_credentials(BRIDGE_USER, mqtt.bridge_password.clone());
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 64);
    let poller = tokio::spawn(async move {
        let mut acked = 0;
        while acked < RETAINED {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("flood publisher: {e}"),
            }
        }
    });
    let payload = format!(
        "{{\"order_number\":\"x\",\"pad\":\"{}\"}}",
        "p".repeat(SIZE)
    );
    for i in 0..RETAINED {
        client
            .publish(
                format!("restaurant/main/orders/ORD_19990101_{i:05}"),
                rumqttc::QoS::AtLeastOnce,
                true,
                payload.clone(),
            )
            .await
            .unwrap();
    }
    tokio::time::timeout(Duration::from_secs(120), poller)
        .await
        .expect("the broker took the flood")
        .unwrap();

    let st = env.command().arg("migrate").output().unwrap();
    assert!(st.status.success(), "{st:?}");
    let mut cmd = env.command();
    cmd.arg("--mode=display-bridge")
        .env("RESTAURANT_HTTP__BRIDGE_PORT", "0")
        .env("RESTAURANT_MQTT__ENABLED", "true")
        .env("RESTAURANT_MQTT__HOST", "127.0.0.1")
        .env("RESTAURANT_MQTT__PORT", mqtt.port.to_string())
        .env("RESTAURANT_MQTT__USER", BRIDGE_USER)
        .env("RESTAURANT_MQTT__PASSWORD", &mqtt.bridge_password);
    let p = Proc::spawn("display-bridge", cmd);
    let dropped = p
        .wait_log("mqtt_read_back_dropped", Duration::from_secs(60), |_| true)
        .await;
    let peak = memory_kb(p.child.id(), "VmHWM:");
    let sent_kb = (RETAINED * SIZE / 1024) as u64;
    eprintln!("read back {RETAINED} x {SIZE} B: {dropped}; peak RSS {peak} kB");
    assert!(
        dropped["details"]["dropped"].as_u64().unwrap_or(0) > 0,
        "{dropped}"
    );
    // At most 1,024 payloads (16 MB) wait; unbounded, most of the 160 MB did.
    assert!(
        peak < sent_kb / 2,
        "peak RSS {peak} kB after being sent {sent_kb} kB of retained payloads"
    );
}
