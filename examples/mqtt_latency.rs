//! Measures the time from `POST /orders` to the order's retained state arriving
//! at an MQTT subscriber, through the whole system (order service, outbox relay,
//! RabbitMQ, display bridge, Mosquitto), all in this process except the brokers.
//!
//! ```sh
//! cargo run --release --example mqtt_latency -- [--orders 500] [--rate 50] [--backend sqlite|postgres]
//! ```
//!
//! Needs RabbitMQ on 127.0.0.1:5672 (guest/guest, `rabbitmqctl` on PATH or in
//! /usr/sbin), the `mosquitto` binary, and for `--backend postgres` a PostgreSQL
//! on 127.0.0.1:5432 reachable as `postgres` without a password. It creates a
//! private vhost, database (or SQLite file) and Mosquitto, and removes them.
//! Orders are posted at `--rate` per second (0: all at once, 50 in flight).
//! Results go to stderr (stdout carries the notification subscriber's lines).

use restaurant_system::modes::{self, Mode, Options};
use restaurant_system::process::config::{Config, StorageBackend};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

struct Args {
    orders: usize,
    rate: f64,
    backend: StorageBackend,
}

fn args() -> Args {
    let mut a = Args {
        orders: 500,
        rate: 50.0,
        backend: StorageBackend::Sqlite,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(k) = it.next() {
        let v = it
            .next()
            .unwrap_or_else(|| usage(&format!("{k} needs a value")));
        match k.as_str() {
            "--orders" => a.orders = v.parse().unwrap_or_else(|_| usage("bad --orders")),
            "--rate" => a.rate = v.parse().unwrap_or_else(|_| usage("bad --rate")),
            "--backend" => {
                a.backend = match v.as_str() {
                    "sqlite" => StorageBackend::Sqlite,
                    "postgres" => StorageBackend::Postgres,
                    _ => usage("--backend is sqlite or postgres"),
                }
            }
            _ => usage(&format!("unknown argument {k}")),
        }
    }
    a
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "{msg}\nusage: mqtt_latency [--orders N] [--rate PER_SECOND] [--backend sqlite|postgres]"
    );
    std::process::exit(2)
}

fn sbin(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(["/usr/sbin", "/usr/local/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            eprintln!("{name} not found (PATH, /usr/sbin); install it (bash scripts/test.sh does)");
            std::process::exit(1)
        })
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("running a helper command");
    if !out.status.success() {
        eprintln!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        std::process::exit(1);
    }
}

/// What the measurement created; removed on drop.
struct Fixture {
    mosquitto: Child,
    vhost: String,
    pg_db: Option<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.mosquitto.kill();
        let _ = self.mosquitto.wait();
        let _ = Command::new(sbin("rabbitmqctl"))
            .args(["delete_vhost", &self.vhost])
            .output();
        if let Some(db) = &self.pg_db {
            let _ = Command::new("psql")
                .args([
                    "-X",
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                ])
                .args(["-c", &format!("drop database if exists {db} with (force)")])
                .output();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn setup(a: &Args) -> (Config, Fixture) {
    let dir = tempfile::tempdir().expect("temp dir");
    let _ = std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    );
    let port = free_port();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 10000\n"),
    )
    .expect("mosquitto.conf");
    let mosquitto = Command::new(sbin("mosquitto"))
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting mosquitto");
    let tag = format!("rs_latency_{}", std::process::id());
    run(Command::new(sbin("rabbitmqctl")).args(["add_vhost", &tag]));
    run(Command::new(sbin("rabbitmqctl")).args([
        "set_permissions",
        "-p",
        &tag,
        "guest",
        ".*",
        ".*",
        ".*",
    ]));
    let mut cfg = Config::default();
    cfg.rabbitmq.host = "127.0.0.1".into();
    cfg.rabbitmq.vhost = tag.clone();
    cfg.http.bind = "127.0.0.1".into();
    cfg.http.order_port = 0;
    cfg.http.tracking_port = 0;
    cfg.http.bridge_port = 0;
    cfg.http.max_concurrent = 1000;
    cfg.mqtt.enabled = true;
    cfg.mqtt.host = "127.0.0.1".into();
    cfg.mqtt.port = port;
    cfg.mqtt.client_id = tag.clone();
    cfg.database.backend = a.backend;
    // The kitchen keeps cooking meanwhile (a realistic background of status
    // changes); short, so that stopping does not wait long for the order in hand.
    cfg.kitchen.cooking_seconds.dine_in = 0.5;
    cfg.kitchen.cooking_seconds.takeout = 0.5;
    cfg.kitchen.cooking_seconds.delivery = 0.5;
    let mut pg_db = None;
    match a.backend {
        StorageBackend::Postgres => {
            run(Command::new("psql")
                .args([
                    "-X",
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                ])
                .args(["-c", &format!("create database {tag}")]));
            cfg.database.host = Some("127.0.0.1".into());
            cfg.database.user = "postgres".into();
            cfg.database.database = tag.clone();
            pg_db = Some(tag.clone());
        }
        _ => cfg.database.sqlite_path = dir.path().join("restaurant.db"),
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (
        cfg,
        Fixture {
            mosquitto,
            vhost: tag,
            pg_db,
            _dir: dir,
        },
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    let (cfg, _fixture) = setup(&a);
    let shutdown = CancellationToken::new();
    let running = modes::start(
        Mode::All,
        &cfg,
        Options {
            workers: Vec::new(),
        },
        shutdown.clone(),
    )
    .await
    .expect("starting --mode=all");
    let order_url = format!("http://{}", running.order_addr.expect("order service"));

    // The subscriber: first arrival of each order's retained topic.
    let arrivals: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut opts = MqttOptions::new("latency-probe", "127.0.0.1", cfg.mqtt.port);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut el) = AsyncClient::new(opts, 100);
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    el.set_network_options(net);
    client
        .subscribe("restaurant/main/orders/+", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    let arr = arrivals.clone();
    tokio::spawn(async move {
        let mut subscribed_tx = Some(subscribed_tx);
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = subscribed_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let now = Instant::now();
                    if let Some(n) = p.topic.rsplit('/').next() {
                        arr.lock().unwrap().entry(n.to_string()).or_insert(now);
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    subscribed.await.expect("subscriber");

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .expect("http client");
    let body = serde_json::json!({"customer_name": "Latency Probe", "order_type": "takeout",
        "items": [{"name": "Margherita Pizza", "quantity": 2, "price": 15.99}]});
    let warmup = 20;
    let total = a.orders + warmup;
    let limit = Arc::new(tokio::sync::Semaphore::new(50));
    let started = Instant::now();
    let mut posts = Vec::with_capacity(total);
    for i in 0..total {
        if a.rate > 0.0 {
            let at = started + Duration::from_secs_f64(i as f64 / a.rate);
            tokio::time::sleep_until(at.into()).await;
        }
        let permit = limit.clone().acquire_owned().await.expect("semaphore");
        let (http, url, body) = (http.clone(), format!("{order_url}/orders"), body.clone());
        posts.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let resp = http.post(url).json(&body).send().await.expect("POST");
            assert_eq!(resp.status(), 200, "POST /orders");
            let v: serde_json::Value = resp.json().await.expect("json");
            drop(permit);
            (
                v["order_number"].as_str().unwrap().to_string(),
                t0,
                t0.elapsed(),
            )
        }));
    }
    let mut placed = Vec::with_capacity(total);
    for p in posts {
        placed.push(p.await.expect("post task"));
    }
    let posted_in = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got = arrivals.lock().unwrap().len();
        if placed
            .iter()
            .all(|(n, ..)| arrivals.lock().unwrap().contains_key(n))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {got} of {total} orders arrived over MQTT within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_in = started.elapsed();
    let arrivals = arrivals.lock().unwrap().clone();
    let measured = &placed[warmup..];
    let mut lat: Vec<Duration> = measured
        .iter()
        .map(|(n, t0, _)| arrivals[n].saturating_duration_since(*t0))
        .collect();
    let mut http_lat: Vec<Duration> = measured.iter().map(|(.., d)| *d).collect();
    lat.sort();
    http_lat.sort();
    let backend = match a.backend {
        StorageBackend::Postgres => "postgres",
        _ => "sqlite",
    };
    let rate = if a.rate > 0.0 {
        format!("{}/s", a.rate)
    } else {
        "burst (50 in flight)".into()
    };
    eprintln!(
        "POST /orders -> retained MQTT state: {} orders ({backend}, {rate}, after {warmup} warm-up)",
        lat.len()
    );
    eprintln!(
        "  p50 {}  p90 {}  p99 {}  max {}",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.9)),
        ms(percentile(&lat, 0.99)),
        ms(*lat.last().unwrap())
    );
    eprintln!(
        "  (HTTP response alone: p50 {}  p99 {}; {total} orders posted in {:.2} s, all on MQTT after {:.2} s)",
        ms(percentile(&http_lat, 0.5)),
        ms(percentile(&http_lat, 0.99)),
        posted_in.as_secs_f64(),
        all_in.as_secs_f64()
    );
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), running.wait()).await;
}
