//! The fault suite's moving parts: the real binary as supervised subprocesses,
//! a steady-rate order generator, the database facts we judge by (plain SQL,
//! not the code under test), and the per-scenario report.

use restaurant_system::process::config::{Config, StorageBackend};
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Subprocesses

/// Where a scenario's processes get their environment and write their logs.
pub struct Setup {
    env: Vec<(String, String)>,
    /// target/tmp/fault-logs/<scenario>: kept after the run, for reading.
    pub logs: PathBuf,
    /// Short-path temp dir for notify sockets, the empty config file and the
    /// pids of the processes started (see `servers::owned_dir`).
    scratch: tempfile::TempDir,
}

/// Environment variables that point the binary at `cfg`'s servers.
pub fn binary_env(cfg: &Config) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = vec![
        (
            "RESTAURANT_RABBITMQ__HOST".into(),
            cfg.rabbitmq.host.clone(),
        ),
        (
            "RESTAURANT_RABBITMQ__PORT".into(),
            cfg.rabbitmq.port.to_string(),
        ),
        (
            "RESTAURANT_RABBITMQ__USER".into(),
            cfg.rabbitmq.user.clone(),
        ),
        (
            "RESTAURANT_RABBITMQ__PASSWORD".into(),
            cfg.rabbitmq.password.expose().to_string(),
        ),
        (
            "RESTAURANT_RABBITMQ__VHOST".into(),
            cfg.rabbitmq.vhost.clone(),
        ),
        ("RESTAURANT_MQTT__ENABLED".into(), "false".into()),
        ("RESTAURANT_HTTP__BIND".into(), "127.0.0.1".into()),
        ("RESTAURANT_LOG__LEVEL".into(), "info".into()),
        ("RESTAURANT_LOG__FORMAT".into(), "json".into()),
    ];
    let k = cfg.kitchen.cooking_seconds;
    for (t, s) in [
        ("DINE_IN", k.dine_in),
        ("TAKEOUT", k.takeout),
        ("DELIVERY", k.delivery),
    ] {
        v.push((
            format!("RESTAURANT_KITCHEN__COOKING_SECONDS__{t}"),
            s.to_string(),
        ));
    }
    let d = &cfg.database;
    match d.backend {
        StorageBackend::Postgres => {
            v.push(("RESTAURANT_DATABASE__BACKEND".into(), "postgres".into()));
            v.push((
                "RESTAURANT_DATABASE__HOST".into(),
                d.host.clone().unwrap_or_else(|| "127.0.0.1".into()),
            ));
            v.push(("RESTAURANT_DATABASE__PORT".into(), d.port.to_string()));
            v.push(("RESTAURANT_DATABASE__USER".into(), d.user.clone()));
            v.push(("RESTAURANT_DATABASE__DATABASE".into(), d.database.clone()));
            if let Some(pw) = &d.password {
                v.push((
                    "RESTAURANT_DATABASE__PASSWORD".into(),
                    pw.expose().to_string(),
                ));
            }
        }
        _ => {
            v.push(("RESTAURANT_DATABASE__BACKEND".into(), "sqlite".into()));
            v.push((
                "RESTAURANT_DATABASE__SQLITE_PATH".into(),
                d.sqlite_path.display().to_string(),
            ));
        }
    }
    v
}

impl Setup {
    pub fn new(scenario: &str, cfg: &Config) -> Setup {
        let logs = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("fault-logs")
            .join(scenario);
        let _ = std::fs::remove_dir_all(&logs);
        std::fs::create_dir_all(&logs).expect("creating the log dir");
        let scratch = crate::common::servers::owned_dir("rs_fault_run");
        std::fs::write(scratch.path().join("empty.toml"), "").expect("empty config");
        Setup {
            env: binary_env(cfg),
            logs,
            scratch,
        }
    }

    /// Sets (Some) or removes (None) an environment variable for the
    /// processes started from now on (e.g. `RESTAURANT_FAILPOINT`).
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            self.env.push((key.to_string(), v.to_string()));
        }
    }

    /// Starts `restaurant-system <args>` and waits (60 s at most) until it says
    /// READY=1 on its notify socket, as it would to systemd.
    pub async fn start(&self, name: &str, args: &[&str]) -> Proc {
        let mut n = 1;
        while self.logs.join(format!("{name}.{n}.log")).exists() {
            n += 1;
        }
        let log = self.logs.join(format!("{name}.{n}.log"));
        let sock_path = self.scratch.path().join(format!("{name}.{n}.sock"));
        let sock = tokio::net::UnixDatagram::bind(&sock_path).expect("binding a notify socket");
        let out = std::fs::File::create(&log).expect("creating a log file");
        let err = out.try_clone().expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_restaurant-system"));
        // Nothing from the caller's environment may redirect the processes.
        for (k, _) in std::env::vars() {
            if k.starts_with("RESTAURANT_")
                || k.starts_with("DB_")
                || k.starts_with("RABBITMQ_")
                || k.starts_with("NOTIFY_")
                || k.starts_with("WATCHDOG_")
            {
                cmd.env_remove(k);
            }
        }
        cmd.arg("--config")
            .arg(self.scratch.path().join("empty.toml"))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("NOTIFY_SOCKET", &sock_path)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd.spawn().expect("spawning restaurant-system");
        // For servers::reap_orphans, should this test process die abruptly.
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.scratch.path().join("pids"))
        {
            use std::io::Write;
            let _ = writeln!(f, "{}", child.id());
        }
        let mut p = Proc {
            name: name.to_string(),
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut buf = [0u8; 4096];
        loop {
            if let Some(status) = p.exit_status() {
                panic!(
                    "{name} exited during start-up ({status}):\n{}",
                    p.log_tail(30)
                );
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not report READY=1 within 60 s:\n{}",
                p.log_tail(30)
            );
            if let Ok(Ok(len)) =
                tokio::time::timeout(Duration::from_millis(200), sock.recv(&mut buf)).await
            {
                if String::from_utf8_lossy(&buf[..len])
                    .lines()
                    .any(|l| l == "READY=1")
                {
                    return p;
                }
            }
        }
    }
}

/// A running `restaurant-system` process; SIGKILLed on drop if still running.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    fn pid(&self) -> Option<nix::unistd::Pid> {
        self.child
            .as_ref()
            .map(|c| nix::unistd::Pid::from_raw(c.id() as i32))
    }

    /// The exit status, if the process has ended.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILL: no shutdown code runs, like a power cut of that process.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits up to `limit` for the exit; SIGKILL after that.
    /// Returns the exit status, or None when it had to be killed.
    pub async fn terminate(&mut self, limit: Duration) -> Option<ExitStatus> {
        let pid = self.pid()?;
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(s) = self.exit_status() {
                self.child = None;
                return Some(s);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.kill9();
        None
    }

    /// User + system CPU time used so far (Linux /proc, 100 ticks a second).
    pub fn cpu_seconds(&self) -> f64 {
        let Some(pid) = self.pid() else { return 0.0 };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are 14 and 15.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0)
            + f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
        ticks as f64 / 100.0
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        format!(
            "--- {} ({})\n{}",
            self.name,
            self.log.display(),
            all[all.len().saturating_sub(lines)..].join("\n")
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Every process must survive a server restart: names any that ended on its
/// own, with its last log lines.
pub fn check_running(procs: &mut [&mut Proc]) -> Result<(), String> {
    let mut dead = Vec::new();
    for p in procs.iter_mut() {
        if let Some(s) = p.exit_status() {
            dead.push(format!(
                "{} exited by itself ({s}) during the scenario:\n{}",
                p.name,
                p.log_tail(40)
            ));
        }
    }
    if dead.is_empty() {
        Ok(())
    } else {
        Err(dead.join("\n"))
    }
}

/// No process may spin once the work is done: over 2 s of quiet, each may use
/// at most 0.5 s of CPU (an idle daemon uses next to nothing).
pub async fn check_idle(procs: &[&Proc]) -> Result<(), String> {
    let before: Vec<f64> = procs.iter().map(|p| p.cpu_seconds()).collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut busy = Vec::new();
    for (p, b) in procs.iter().zip(before) {
        let used = p.cpu_seconds() - b;
        if used > 0.5 {
            busy.push(format!(
                "{} used {used:.2} s of CPU in 2 idle seconds: it spins\n{}",
                p.name,
                p.log_tail(20)
            ));
        }
    }
    if busy.is_empty() {
        Ok(())
    } else {
        Err(busy.join("\n"))
    }
}

/// Stops every process with SIGTERM (in parallel); each must exit with 0
/// within 30 s.
pub async fn stop_all(procs: Vec<&mut Proc>) -> Result<(), String> {
    let results = futures_util::future::join_all(procs.into_iter().map(|p| async move {
        let status = p.terminate(Duration::from_secs(30)).await;
        let p: &Proc = p;
        (status, p)
    }))
    .await;
    let mut failures = Vec::new();
    for (status, p) in results {
        match status {
            Some(s) if s.success() => {}
            Some(s) => failures.push(format!("{} exited with {s}\n{}", p.name, p.log_tail(20))),
            None => failures.push(format!(
                "{} did not stop within 30 s of SIGTERM\n{}",
                p.name,
                p.log_tail(20)
            )),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

// ---------------------------------------------------------------------------
// Load

/// Customer names may hold only letters, so the order's index is spelled in
/// letters: 0 -> "a", 17 -> "bh". Names identify orders the API refused.
pub fn customer_name(i: usize) -> String {
    let digits: String = i
        .to_string()
        .bytes()
        .map(|d| (b'a' + (d - b'0')) as char)
        .collect();
    format!("Fault Guest {digits}")
}

/// Order `i`: the three types in turn, so all three kitchen queues carry load.
pub fn order_body(i: usize) -> serde_json::Value {
    let items = json!([{"name": "Soup", "quantity": 1 + (i % 3), "price": 4.5}]);
    match i % 3 {
        0 => json!({"customer_name": customer_name(i), "order_type": "takeout", "items": items}),
        1 => json!({"customer_name": customer_name(i), "order_type": "dine_in",
                    "table_number": 1 + (i % 40), "items": items}),
        _ => json!({"customer_name": customer_name(i), "order_type": "delivery",
                    "delivery_address": "1 Fault Street", "items": items}),
    }
}

#[derive(Debug, Clone)]
pub enum Answer {
    /// 200 with this order number.
    Accepted(String),
    /// A refusal: status, whether Retry-After came with it, whether the body
    /// was a JSON error document.
    Refused {
        status: u16,
        retry_after: bool,
        json_error: bool,
    },
    /// No HTTP answer (connection error, client timeout) or an unreadable one.
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct Placed {
    pub index: usize,
    pub name: String,
    pub answer: Answer,
}

async fn place_one(http: reqwest::Client, url: String, i: usize) -> Placed {
    let answer = match http.post(&url).json(&order_body(i)).send().await {
        Err(e) => Answer::Failed(e.to_string()),
        Ok(resp) => {
            let status = resp.status().as_u16();
            let retry_after = resp.headers().contains_key("retry-after");
            let body: Option<serde_json::Value> = resp.json().await.ok();
            if status == 200 {
                match body
                    .as_ref()
                    .and_then(|b| b["order_number"].as_str())
                    .map(str::to_string)
                {
                    Some(n) => Answer::Accepted(n),
                    None => Answer::Failed(format!("200 without an order number: {body:?}")),
                }
            } else {
                Answer::Refused {
                    status,
                    retry_after,
                    json_error: body.as_ref().is_some_and(|b| b["error"].is_string()),
                }
            }
        }
    };
    Placed {
        index: i,
        name: customer_name(i),
        answer,
    }
}

/// POSTs `n` orders at a steady `rate` per second (each request its own task,
/// so a slow answer does not slow the rate) and returns every answer.
pub async fn place_orders(order_url: String, n: usize, rate: f64) -> Vec<Placed> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("http client");
    let url = format!("{order_url}/orders");
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        tick.tick().await;
        tasks.spawn(place_one(http.clone(), url.clone(), i));
    }
    let mut out = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        out.push(r.expect("order task panicked"));
    }
    out.sort_by_key(|p| p.index);
    out
}

/// A keyed order's fate: its last answer, after `attempts` requests with one
/// `Idempotency-Key`, and whether that answer was a replay.
#[derive(Debug, Clone)]
pub struct Keyed {
    pub placed: Placed,
    pub attempts: usize,
    pub replayed: bool,
}

/// One order with `Idempotency-Key: fault-<i>`, retried as a POS would:
/// after no answer or a 503, 250 ms later, with the same key and body, against
/// the order service's current address (`url` changes when it is restarted),
/// until an answer other than 503 or `limit`.
async fn place_keyed(
    http: reqwest::Client,
    url: tokio::sync::watch::Receiver<String>,
    i: usize,
    limit: Duration,
) -> Keyed {
    let deadline = Instant::now() + limit;
    let key = format!("fault-{i}");
    let mut attempts = 0;
    loop {
        attempts += 1;
        let target = format!("{}/orders", url.borrow().clone());
        let sent = http
            .post(&target)
            .header("Idempotency-Key", &key)
            .json(&order_body(i))
            .send()
            .await;
        let (answer, replayed) = match sent {
            Err(e) => (Answer::Failed(e.to_string()), false),
            Ok(resp) => {
                let status = resp.status().as_u16();
                let replayed = resp.headers().contains_key("idempotent-replayed");
                let retry_after = resp.headers().contains_key("retry-after");
                let body: Option<serde_json::Value> = resp.json().await.ok();
                let answer = match (
                    status,
                    body.as_ref().and_then(|b| b["order_number"].as_str()),
                ) {
                    (200, Some(n)) => Answer::Accepted(n.to_string()),
                    (200, None) => Answer::Failed(format!("200 without an order number: {body:?}")),
                    _ => Answer::Refused {
                        status,
                        retry_after,
                        json_error: body.as_ref().is_some_and(|b| b["error"].is_string()),
                    },
                };
                (answer, replayed)
            }
        };
        let retry = matches!(
            answer,
            Answer::Failed(_) | Answer::Refused { status: 503, .. }
        );
        if !retry || Instant::now() >= deadline {
            return Keyed {
                placed: Placed {
                    index: i,
                    name: customer_name(i),
                    answer,
                },
                attempts,
                replayed,
            };
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `place_orders` with an `Idempotency-Key` per order and retries (see
/// `place_keyed`).
pub async fn place_orders_keyed(
    url: tokio::sync::watch::Receiver<String>,
    n: usize,
    rate: f64,
    limit: Duration,
) -> Vec<Keyed> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        tick.tick().await;
        tasks.spawn(place_keyed(http.clone(), url.clone(), i, limit));
    }
    let mut out = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        out.push(r.expect("order task panicked"));
    }
    out.sort_by_key(|k| k.placed.index);
    out
}

/// Orders stored more than once for one customer (= one request): each
/// extra order counts.
pub fn doubled(facts: &[OrderFacts]) -> usize {
    let mut per: HashMap<&str, usize> = HashMap::new();
    for f in facts {
        *per.entry(f.customer_name.as_str()).or_default() += 1;
    }
    per.values().map(|c| c - 1).sum()
}

/// GET `url` and return the status and body text (None: no answer).
pub async fn get(url: &str) -> Option<(u16, String)> {
    let resp = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.text().await.unwrap_or_default()))
}

/// Polls `url` (a /health endpoint) for up to `limit` until it answers 503
/// with `check` unhealthy; returns what it said last.
pub async fn wait_unhealthy(url: &str, check: &str, limit: Duration) -> Result<String, String> {
    let deadline = Instant::now() + limit;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        if let Some((status, body)) = get(url).await {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let down = v["checks"][check]
                .as_str()
                .is_some_and(|s| s.starts_with("unhealthy"));
            if status == 503 && down {
                return Ok(body);
            }
            last = format!("{status} {body}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last)
}

// ---------------------------------------------------------------------------
// Database facts

/// One order as the database holds it, with its status-log counts.
#[derive(Debug, Clone)]
pub struct OrderFacts {
    pub number: String,
    pub customer_name: String,
    pub status: String,
    pub processed_by: Option<String>,
    pub items: i64,
    pub received: i64,
    pub cooking: i64,
    pub ready: i64,
    pub log_rows: i64,
}

const FACTS_SQL: &str = "
select o.number, o.customer_name, o.status, o.processed_by,
       (select count(*) from order_items i where i.order_id = o.id),
       (select count(*) from order_status_log l where l.order_id = o.id and l.status = 'received'),
       (select count(*) from order_status_log l where l.order_id = o.id and l.status = 'cooking'),
       (select count(*) from order_status_log l where l.order_id = o.id and l.status = 'ready'),
       (select count(*) from order_status_log l where l.order_id = o.id)
from orders o order by o.id";

/// Reads the scenario's database directly (not through the code under test).
#[derive(Clone)]
pub enum Db {
    Pg(Box<tokio_postgres::Config>),
    Sqlite(PathBuf),
}

impl Db {
    pub fn of(cfg: &Config) -> Db {
        let d = &cfg.database;
        match d.backend {
            StorageBackend::Postgres => {
                let mut c = tokio_postgres::Config::new();
                c.host(d.host.as_deref().unwrap_or("127.0.0.1"))
                    .port(d.port)
                    .user(&d.user)
                    .dbname(&d.database)
                    .connect_timeout(Duration::from_secs(5));
                if let Some(pw) = &d.password {
                    c.password(pw.expose());
                }
                Db::Pg(Box::new(c))
            }
            _ => Db::Sqlite(d.sqlite_path.clone()),
        }
    }

    async fn pg(cfg: &tokio_postgres::Config) -> Result<tokio_postgres::Client, String> {
        let (client, conn) = cfg
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(client)
    }

    pub async fn orders(&self) -> Result<Vec<OrderFacts>, String> {
        match self {
            Db::Pg(cfg) => {
                let c = Db::pg(cfg).await?;
                let rows = c.query(FACTS_SQL, &[]).await.map_err(|e| e.to_string())?;
                Ok(rows
                    .iter()
                    .map(|r| OrderFacts {
                        number: r.get(0),
                        customer_name: r.get(1),
                        status: r.get(2),
                        processed_by: r.get(3),
                        items: r.get(4),
                        received: r.get(5),
                        cooking: r.get(6),
                        ready: r.get(7),
                        log_rows: r.get(8),
                    })
                    .collect())
            }
            Db::Sqlite(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || -> Result<Vec<OrderFacts>, String> {
                    let c = sqlite(&path)?;
                    let mut st = c.prepare(FACTS_SQL).map_err(|e| e.to_string())?;
                    let rows = st
                        .query_map([], |r| {
                            Ok(OrderFacts {
                                number: r.get(0)?,
                                customer_name: r.get(1)?,
                                status: r.get(2)?,
                                processed_by: r.get(3)?,
                                items: r.get(4)?,
                                received: r.get(5)?,
                                cooking: r.get(6)?,
                                ready: r.get(7)?,
                                log_rows: r.get(8)?,
                            })
                        })
                        .map_err(|e| e.to_string())?;
                    rows.collect::<Result<Vec<_>, _>>()
                        .map_err(|e| e.to_string())
                })
                .await
                .map_err(|e| e.to_string())?
            }
        }
    }

    pub async fn outbox_len(&self) -> Result<i64, String> {
        let sql = "select count(*) from outbox";
        match self {
            Db::Pg(cfg) => {
                let c = Db::pg(cfg).await?;
                let row = c.query_one(sql, &[]).await.map_err(|e| e.to_string())?;
                Ok(row.get(0))
            }
            Db::Sqlite(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    sqlite(&path)?
                        .query_row(sql, [], |r| r.get(0))
                        .map_err(|e| e.to_string())
                })
                .await
                .map_err(|e| e.to_string())?
            }
        }
    }

    /// Polls until every one of `numbers` is ready (or `limit` passes) and
    /// returns the last facts read.
    pub async fn wait_ready(&self, numbers: &HashSet<String>, limit: Duration) -> Vec<OrderFacts> {
        let deadline = Instant::now() + limit;
        let mut last = Vec::new();
        loop {
            match self.orders().await {
                Ok(facts) => {
                    let ready = facts
                        .iter()
                        .filter(|f| f.status == "ready" && numbers.contains(&f.number))
                        .count();
                    last = facts;
                    if ready == numbers.len() {
                        return last;
                    }
                }
                Err(e) => eprintln!("reading the orders failed (retrying): {e}"),
            }
            if Instant::now() >= deadline {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Polls until the outbox is empty (every message published); false on timeout.
    pub async fn wait_outbox_empty(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.outbox_len().await == Ok(0) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn sqlite(path: &Path) -> Result<rusqlite::Connection, String> {
    let c = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| e.to_string())?;
    c.busy_timeout(Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    Ok(c)
}

// ---------------------------------------------------------------------------
// The verdict

/// What a scenario found, printed as its one summary line.
#[derive(Debug, Default)]
pub struct Report {
    pub scenario: String,
    pub backend: String,
    pub placed: usize,
    pub accepted: usize,
    pub ready: usize,
    /// Accepted (200) but not ready at the end.
    pub lost: usize,
    /// Status-log rows beyond one received, one cooking and one ready per order.
    pub duplicate_transitions: i64,
    /// Ready orders lacking their received, cooking or ready row.
    pub missing_transitions: usize,
    /// Refused with 503 (and Retry-After, and a JSON error).
    pub refused_503: usize,
    /// Answers that were neither 200 nor a proper 503 (500s, timeouts, a 503
    /// without Retry-After or JSON).
    pub bad_answers: usize,
    /// Orders in the database that the API did not answer 200 for.
    pub stray: usize,
    /// Orders without items or without their received row.
    pub half_written: usize,
    /// Scenario-specific counts, appended to the line.
    pub extra: Vec<(String, String)>,
    /// Examples of each problem, for the failure message.
    pub problems: Vec<String>,
}

impl Report {
    pub fn new(scenario: &str, backend: &str, placed: &[Placed], facts: &[OrderFacts]) -> Report {
        let mut r = Report {
            scenario: scenario.into(),
            backend: backend.into(),
            placed: placed.len(),
            ..Default::default()
        };
        let by_number: HashMap<&str, &OrderFacts> =
            facts.iter().map(|f| (f.number.as_str(), f)).collect();
        let accepted_names: HashSet<&str> = placed
            .iter()
            .filter(|p| matches!(p.answer, Answer::Accepted(_)))
            .map(|p| p.name.as_str())
            .collect();
        for p in placed {
            match &p.answer {
                Answer::Accepted(n) => {
                    r.accepted += 1;
                    match by_number.get(n.as_str()) {
                        Some(f) if f.status == "ready" => {
                            r.ready += 1;
                            if f.received < 1 || f.cooking < 1 || f.ready < 1 {
                                r.missing_transitions += 1;
                                r.note(format!("{n} is ready but its log lacks a row: {f:?}"));
                            }
                            if f.customer_name != p.name {
                                r.note(format!(
                                    "{n} belongs to '{}', but the API gave it to '{}'",
                                    f.customer_name, p.name
                                ));
                            }
                        }
                        Some(f) => {
                            r.lost += 1;
                            r.note(format!(
                                "{n} ({}) is '{}', not ready: {f:?}",
                                p.name, f.status
                            ));
                        }
                        None => {
                            r.lost += 1;
                            r.note(format!(
                                "{n} ({}) was accepted but is not in the database",
                                p.name
                            ));
                        }
                    }
                }
                Answer::Refused {
                    status: 503,
                    retry_after: true,
                    json_error: true,
                } => r.refused_503 += 1,
                Answer::Failed(e) => {
                    r.bad_answers += 1;
                    r.note(format!("order {} ({}) got no answer: {e}", p.index, p.name));
                }
                other => {
                    r.bad_answers += 1;
                    r.note(format!("order {} ({}) got {other:?}", p.index, p.name));
                }
            }
        }
        for f in facts {
            let extra_rows = (f.received - 1).max(0)
                + (f.cooking - 1).max(0)
                + (f.ready - 1).max(0)
                + (f.log_rows - f.received - f.cooking - f.ready);
            if extra_rows > 0 {
                r.duplicate_transitions += extra_rows;
                r.note(format!(
                    "{} has {extra_rows} extra status-log rows: {f:?}",
                    f.number
                ));
            }
            if f.items == 0 || f.received == 0 {
                r.half_written += 1;
                r.note(format!("{} is half-written: {f:?}", f.number));
            }
            if !accepted_names.contains(f.customer_name.as_str()) {
                r.stray += 1;
                r.note(format!(
                    "{} ('{}') is in the database but the API did not answer 200 for it",
                    f.number, f.customer_name
                ));
            }
        }
        r
    }

    pub fn note(&mut self, problem: String) {
        if self.problems.len() < 20 {
            self.problems.push(problem);
        }
    }

    pub fn with(mut self, key: &str, value: impl ToString) -> Report {
        self.extra.push((key.into(), value.to_string()));
        self
    }

    pub fn line(&self) -> String {
        let mut s = format!(
            "fault {} [{}]: placed={} accepted={} ready={} lost={} duplicate_transitions={}",
            self.scenario,
            self.backend,
            self.placed,
            self.accepted,
            self.ready,
            self.lost,
            self.duplicate_transitions
        );
        for (k, v) in &self.extra {
            s.push_str(&format!(" {k}={v}"));
        }
        s
    }

    /// Prints the summary line (stdout, and target/tmp/fault-summary.txt).
    pub fn print(&self) {
        let line = self.line();
        println!("{line}");
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fault-summary.txt");
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            use std::io::Write;
            let _ = writeln!(f, "{line}");
        }
    }

    pub fn problems(&self) -> String {
        self.problems.join("\n")
    }
}

/// Notification lines a subscriber printed, counted per (order, new status).
pub fn notification_counts(log: &str) -> BTreeMap<(String, String), usize> {
    let mut counts = BTreeMap::new();
    for line in log.lines() {
        // "Notification for order N: Status changed from 'a' to 'b' by W."
        let Some(rest) = line.strip_prefix("Notification for order ") else {
            continue;
        };
        let Some((number, rest)) = rest.split_once(':') else {
            continue;
        };
        let Some(to) = rest.split('\'').nth(3) else {
            continue;
        };
        *counts
            .entry((number.to_string(), to.to_string()))
            .or_insert(0) += 1;
    }
    counts
}
