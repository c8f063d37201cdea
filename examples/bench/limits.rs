//! What the hardware gives, measured in the same run: the order transaction
//! straight at the database (pgbench replaying the intake statement for
//! PostgreSQL; the library's own SQLite store, one order at a time, for
//! SQLite), persistent publishing to RabbitMQ with confirms, and one hop
//! through Mosquitto.

use crate::load::random_order;
use crate::stats::Latency;
use crate::system::{cpu_seconds, Result, Servers};
use restaurant_system::broker::lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use restaurant_system::broker::lapin::types::{AMQPValue, FieldTable};
use restaurant_system::broker::lapin::{BasicProperties, Confirmation};
use restaurant_system::domain::events::OrderMessage;
use restaurant_system::domain::order::{validate, ValidOrder};
use restaurant_system::process::config::{DatabaseConfig, Secret, StorageBackend};
use restaurant_system::storage::{self, sqlite::SqliteStore, Store};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::Serialize;
use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A transaction (or publish) rate limit and its latency.
#[derive(Debug, Clone, Serialize)]
pub struct TxLimit {
    pub what: String,
    pub clients: u32,
    pub per_second: f64,
    pub count: u64,
    pub latency: Option<Latency>,
    /// CPU seconds of this program per 1,000 transactions (SQLite loop only:
    /// the work happens in this process there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_s_per_1000: Option<f64>,
}

// ---- PostgreSQL: pgbench ------------------------------------------------------

/// Creates the schema in `db` (a fresh database) with the daemon's own
/// migrations: the same tables and columns bench/order_tx.sql writes.
pub async fn pg_schema(servers: &Servers, db: &str) -> Result<()> {
    let cfg = DatabaseConfig {
        backend: StorageBackend::Postgres,
        host: Some(servers.pg_host.clone()),
        port: servers.pg_port,
        user: servers.pg_user.clone(),
        password: servers.pg_password.clone().map(Secret::new),
        database: db.to_string(),
        pool_size: 1,
        ..DatabaseConfig::default()
    };
    storage::open(&cfg).await.map_err(|e| format!("{e:?}"))?;
    Ok(())
}

/// `pgbench -M prepared -f SCRIPT -c CLIENTS -T SECS`, with per-transaction logs
/// for the percentiles.
pub fn pgbench(
    servers: &Servers,
    db: &str,
    script: &Path,
    clients: u32,
    secs: u64,
    logdir: &Path,
) -> Result<TxLimit> {
    let threads = clients.min(2);
    let prefix = format!("c{clients}");
    std::fs::create_dir_all(logdir)?;
    let mut cmd = std::process::Command::new("pgbench");
    cmd.args(["-h", &servers.pg_host, "-p", &servers.pg_port.to_string()])
        .args(["-U", &servers.pg_user, "-n", "-M", "prepared", "-l"])
        .arg(format!("--log-prefix={prefix}"))
        .arg("-f")
        .arg(script)
        .args(["-c", &clients.to_string(), "-j", &threads.to_string()])
        .args(["-T", &secs.max(1).to_string(), db])
        .current_dir(logdir)
        .stdin(std::process::Stdio::null());
    if let Some(pw) = &servers.pg_password {
        cmd.env("PGPASSWORD", pw);
    }
    let out = cmd
        .output()
        .map_err(|e| format!("running pgbench: {e} (Debian: apt-get install postgresql-client)"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || stderr.contains("error") {
        return Err(format!("pgbench failed: {}\n{}", stdout.trim(), stderr.trim()).into());
    }
    let field = |key: &str| -> Option<f64> {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    let tps = field("tps = ").ok_or_else(|| format!("no tps in pgbench output: {stdout}"))?;
    let count = field("number of transactions actually processed: ").unwrap_or(0.0) as u64;
    let mut micros = Vec::new();
    for entry in std::fs::read_dir(logdir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if !name.starts_with(&format!("{prefix}.")) {
            continue;
        }
        // client_id transaction_no time_us script_no epoch us
        let text = std::fs::read_to_string(&path)?;
        micros.extend(
            text.lines()
                .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok()),
        );
        let _ = std::fs::remove_file(&path);
    }
    Ok(TxLimit {
        what: format!("pgbench order transaction, {clients} client(s)"),
        clients,
        per_second: tps,
        count,
        latency: Latency::from_micros(micros),
        cpu_s_per_1000: None,
    })
}

// ---- SQLite: the library's store, one order at a time ------------------------

/// Stores orders back to back for `dur` through the daemon's own SQLite store
/// (`SqliteStore::create_order`: WAL, synced before the answer), one at a time, so
/// each is its own transaction (no group commit): the bare per-order cost.
pub async fn sqlite_limit(path: &Path, dur: Duration) -> Result<TxLimit> {
    let store = SqliteStore::open(path, "bench-limit".into())
        .await
        .map_err(|e| format!("{e:?}"))?;
    let mut rng = rand::rng();
    let orders: Vec<ValidOrder> = (0..64)
        .map(|_| {
            let body: serde_json::Value =
                serde_json::from_slice(&random_order(&mut rng)).expect("json");
            validate(&body).expect("the generator makes valid orders")
        })
        .collect();
    let cpu0 = cpu_seconds(std::process::id());
    let start = Instant::now();
    let mut lat = Vec::new();
    while start.elapsed() < dur {
        let t = Instant::now();
        let order = &orders[lat.len() % orders.len()];
        store
            .create_order(
                order,
                "0f8fad5b-d9cb-469f-a165-70867728950e",
                chrono::Utc::now(),
                chrono::Utc::now().date_naive(),
            )
            .await
            .map_err(|e| format!("{e:?}"))?;
        lat.push(t.elapsed());
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = match (cpu0, cpu_seconds(std::process::id())) {
        (Some(a), Some(b)) => Some((b - a) / lat.len().max(1) as f64 * 1000.0),
        _ => None,
    };
    Ok(TxLimit {
        what: "SqliteStore::create_order, WAL synced per order (as synchronous=FULL), 1 order at a time".into(),
        clients: 1,
        per_second: lat.len() as f64 / elapsed,
        count: lat.len() as u64,
        latency: Latency::from_durations(lat),
        cpu_s_per_1000: cpu,
    })
}

// ---- RabbitMQ: persistent publish with confirms -------------------------------

#[derive(Debug, Clone, Serialize)]
pub struct AmqpLimit {
    /// Pipelined: up to `inflight` unconfirmed messages.
    pub pipelined: TxLimit,
    /// One at a time: publish, wait for the confirm (the latency of one hop).
    pub one_by_one: TxLimit,
}

fn order_like_payload() -> Vec<u8> {
    let mut rng = rand::rng();
    let body: serde_json::Value = serde_json::from_slice(&random_order(&mut rng)).expect("json");
    let order = validate(&body).expect("valid");
    serde_json::to_vec(&OrderMessage::new(
        "ORD_20261125_001".into(),
        &order,
        chrono::Utc::now(),
    ))
    .expect("json")
}

/// Persistent messages into a durable priority queue (like the kitchen
/// queues), publisher confirms on.
pub async fn amqp_limit(servers: &Servers, vhost: &str, dur: Duration) -> Result<AmqpLimit> {
    let conn = restaurant_system::broker::connect(&servers.rabbit(vhost), "bench limit")
        .await
        .map_err(|e| {
            format!(
                "RabbitMQ at {}:{}: {e}",
                servers.amqp_host, servers.amqp_port
            )
        })?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut args = FieldTable::default();
    args.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(10));
    let queue = "bench_limit_queue";
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await?;
    let payload = order_like_payload();
    let props = || {
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_priority(1)
            .with_content_type("application/json".into())
    };
    const INFLIGHT: usize = 1000;
    let start = Instant::now();
    let mut pending = VecDeque::with_capacity(INFLIGHT);
    let mut acked = 0u64;
    while start.elapsed() < dur {
        let c = ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &payload,
                props(),
            )
            .await?;
        pending.push_back(c);
        if pending.len() >= INFLIGHT {
            if let Some(c) = pending.pop_front() {
                if matches!(c.await?, Confirmation::Ack(_)) {
                    acked += 1;
                }
            }
        }
    }
    for c in pending {
        if matches!(c.await?, Confirmation::Ack(_)) {
            acked += 1;
        }
    }
    let pipelined = TxLimit {
        what: format!("RabbitMQ persistent publish, pipelined confirms ({INFLIGHT} in flight)"),
        clients: 1,
        per_second: acked as f64 / start.elapsed().as_secs_f64(),
        count: acked,
        latency: None,
        cpu_s_per_1000: None,
    };
    let start = Instant::now();
    let mut lat = Vec::new();
    while start.elapsed() < dur / 2 {
        let t = Instant::now();
        let c = ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &payload,
                props(),
            )
            .await?;
        c.await?;
        lat.push(t.elapsed());
    }
    let one_by_one = TxLimit {
        what: "RabbitMQ persistent publish, waiting for each confirm".into(),
        clients: 1,
        per_second: lat.len() as f64 / start.elapsed().as_secs_f64(),
        count: lat.len() as u64,
        latency: Latency::from_durations(lat),
        cpu_s_per_1000: None,
    };
    let _ = ch
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    let _ = conn.close(200, "bench done".into()).await;
    Ok(AmqpLimit {
        pipelined,
        one_by_one,
    })
}

// ---- Mosquitto: one QoS 1 hop -------------------------------------------------

/// Publisher -> broker -> subscriber at QoS 1, open loop at `rate` for `dur`:
/// the floor under the bridge's publish-to-screen time.
pub async fn mqtt_limit(
    servers: &Servers,
    topic: &str,
    rate: f64,
    dur: Duration,
) -> Result<TxLimit> {
    let opts = |id: &str| {
        let mut o = MqttOptions::new(
            format!("rs-bench-{id}-{}", std::process::id()),
            servers.mqtt_host.clone(),
            servers.mqtt_port,
        );
        o.set_clean_session(true);
        o
    };
    let n = (rate * dur.as_secs_f64()).round().max(1.0) as usize;
    let start = Instant::now() + Duration::from_millis(300);
    let due: Arc<Vec<Instant>> = Arc::new(
        (0..n)
            .map(|i| start + Duration::from_secs_f64(i as f64 / rate))
            .collect(),
    );
    let lat = Arc::new(Mutex::new(Vec::with_capacity(n)));

    let (sub, mut sub_ev) = AsyncClient::new(opts("hop-sub"), 100);
    sub.subscribe(topic, QoS::AtLeastOnce).await?;
    let (subacked_tx, subacked_rx) = tokio::sync::oneshot::channel::<()>();
    let sub_task = {
        let (due, lat) = (due.clone(), lat.clone());
        tokio::spawn(async move {
            let mut subacked = Some(subacked_tx);
            let mut got = 0;
            while got < n {
                match tokio::time::timeout(Duration::from_secs(5), sub_ev.poll()).await {
                    Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                        if let Some(tx) = subacked.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                        let now = Instant::now();
                        if let Ok(b) = <[u8; 8]>::try_from(&p.payload[..]) {
                            let i = u64::from_le_bytes(b) as usize;
                            if let Some(d) = due.get(i) {
                                lat.lock()
                                    .expect("lock")
                                    .push(now.saturating_duration_since(*d));
                            }
                        }
                        got += 1;
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) | Err(_) => break,
                }
            }
            let _ = sub.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_millis(500), sub_ev.poll()).await;
        })
    };
    tokio::time::timeout(Duration::from_secs(10), subacked_rx)
        .await
        .map_err(|_| "MQTT subscription not acknowledged within 10 s")?
        .map_err(|_| {
            format!(
                "MQTT broker at {}:{} not reachable",
                servers.mqtt_host, servers.mqtt_port
            )
        })?;

    let (publ, mut pub_ev) = AsyncClient::new(opts("hop-pub"), 1000);
    let pub_loop = tokio::spawn(async move { while pub_ev.poll().await.is_ok() {} });
    // Paced by a thread with the OS sleep (tokio's timer rounds up to whole
    // milliseconds, which would count in every hop).
    let topic_owned = topic.to_string();
    let pacer = {
        let (due, publ) = (due.clone(), publ.clone());
        std::thread::spawn(move || -> std::result::Result<(), String> {
            for (i, d) in due.iter().enumerate() {
                let now = Instant::now();
                if *d > now {
                    std::thread::sleep(*d - now);
                }
                publ.try_publish(
                    topic_owned.clone(),
                    QoS::AtLeastOnce,
                    false,
                    (i as u64).to_le_bytes().to_vec(),
                )
                .map_err(|e| e.to_string())?;
            }
            Ok(())
        })
    };
    tokio::task::spawn_blocking(move || pacer.join())
        .await?
        .map_err(|_| "MQTT pacer thread panicked")??;
    let _ = tokio::time::timeout(dur + Duration::from_secs(5), sub_task).await;
    let _ = publ.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), pub_loop).await;
    let lat = std::mem::take(&mut *lat.lock().expect("lock"));
    Ok(TxLimit {
        what: format!("Mosquitto QoS 1 publish -> subscriber at {rate}/s"),
        clients: 1,
        per_second: lat.len() as f64 / dur.as_secs_f64(),
        count: lat.len() as u64,
        latency: Latency::from_durations(lat),
        cpu_s_per_1000: None,
    })
}
