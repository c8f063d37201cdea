//! The benchmark of issue 7: `bash bench/run.sh` builds this example and runs
//! it (see docs/BENCHMARKS.md for what it measures and why).
//!
//! For each backend (PostgreSQL, SQLite) it measures the limit the machine
//! gives in this run (the order transaction straight at the database, publish
//! with confirms straight at RabbitMQ, one hop through Mosquitto), then starts
//! the real binary with `--mode=all` against a fresh database and a fresh
//! RabbitMQ vhost, drives it with open-loop fixed-rate load, follows every
//! order to its retained MQTT message and to the message showing it `ready`, and reads
//! the process's CPU and memory from /proc. It prints a summary, writes JSON
//! under target/bench/ and (with --doc) appends the summary to a Markdown file.
//!
//! It asserts nothing about speed: it fails only when it could not measure.

mod limits;
mod load;
mod oha;
mod report;
mod stats;
mod system;

use clap::Parser;
use load::{PhaseReport, Seen};
use report::{
    append_doc, fmt_opt, markdown, ratios, targets, BackendReport, BurstReport, KitchenReport,
    ModeReport, Report, Settings, SharedLimits, StepReport,
};
use stats::ratio;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use system::{free_port, start_daemon, Daemon, Machine, Result, Servers, Vhost};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(about = "restaurant-system benchmark (run it through bench/run.sh)")]
struct Args {
    /// A few seconds per step (CI): keeps the benchmark working, figures are rough.
    #[arg(long)]
    short: bool,
    /// The release binary under test.
    #[arg(long, default_value = "target/release/restaurant-system")]
    bin: PathBuf,
    /// Where the JSON results go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Append the Markdown summary to this file (bench/run.sh gives a file of
    /// its own and records it in docs/BENCHMARKS.md with bench/record.sh).
    #[arg(long)]
    doc: Option<PathBuf>,
    /// Backends to run, in order.
    #[arg(long, value_delimiter = ',', default_value = "postgres,sqlite")]
    backends: Vec<String>,
    /// The pgbench script with the order transaction.
    #[arg(long, default_value = "bench/order_tx.sql")]
    pgbench_script: PathBuf,
    /// Offered rates, orders/s (default: 100,250,500,1000,1500,2000,2500,3000;
    /// --intake-only: 500,1000,1250,...,3000 (steps of 250),3500,4000; --short: 100,250,500,1000,2000).
    #[arg(long, value_delimiter = ',')]
    rates: Option<Vec<u32>>,
    /// Seconds per rate step (default 10, --short 2).
    #[arg(long)]
    step_seconds: Option<f64>,
    /// Orders in the burst (default 2000, --short 500).
    #[arg(long)]
    burst: Option<usize>,
    /// A note recorded with the run (e.g. "machine shared with other jobs").
    #[arg(long, env = "BENCH_NOTE")]
    note: Option<String>,
    /// Rates also driven with oha, when it is installed (default: 500,1000 on a
    /// full run, none with --short).
    #[arg(long, value_delimiter = ',')]
    oha_rates: Option<Vec<u32>>,
    /// The kitchen worker's prefetch in --mode=all (1: the product's default,
    /// one order in hand at a time; with cooking time 0 its throughput is set
    /// by the database round trips of two status changes).
    #[arg(long, default_value_t = 1)]
    prefetch: u16,
    /// Kitchen workers draining the burst (issue 15: two at prefetch 1): the
    /// rate steps run with --mode=all's own worker; this many minus one
    /// `--mode=kitchen-worker` processes join it for the burst.
    #[arg(long, default_value_t = 2)]
    burst_workers: u16,
    /// Diagnosis: run --mode=order-service instead of --mode=all (intake and
    /// outbox relay only: no kitchen, no bridge, no end-to-end figures).
    #[arg(long)]
    intake_only: bool,
    /// Pin every daemon process the benchmark starts to these CPUs (taskset
    /// list syntax, e.g. "0"): the one-core profile (bench/one-core.sh) runs the
    /// servers and the daemon on CPU 0 and this program on the other.
    #[arg(long, env = "BENCH_DAEMON_CPUS")]
    daemon_cpus: Option<String>,
    /// Measure the limits only (no daemon).
    #[arg(long)]
    only_limits: bool,
    /// Keep the temporary directory (daemon logs, databases) and print its path.
    #[arg(long)]
    keep: bool,
    /// The commit under test (bench/run.sh passes it).
    #[arg(long, env = "BENCH_COMMIT")]
    commit: Option<String>,
    #[arg(long, env = "TEST_PG_HOST", default_value = "127.0.0.1")]
    pg_host: String,
    #[arg(long, env = "TEST_PG_PORT", default_value_t = 5432)]
    pg_port: u16,
    #[arg(long, env = "TEST_PG_USER", default_value = "postgres")]
    pg_user: String,
    #[arg(long, env = "TEST_PG_PASSWORD")]
    pg_password: Option<String>,
    #[arg(long, env = "TEST_RABBITMQ_HOST", default_value = "127.0.0.1")]
    amqp_host: String,
    #[arg(long, env = "TEST_RABBITMQ_PORT", default_value_t = 5672)]
    amqp_port: u16,
    #[arg(long, env = "TEST_RABBITMQ_USER", default_value = "guest")]
    amqp_user: String,
    #[arg(long, env = "TEST_RABBITMQ_PASSWORD", default_value = "guest")]
    amqp_password: String,
    #[arg(long, env = "TEST_MQTT_HOST", default_value = "127.0.0.1")]
    mqtt_host: String,
    #[arg(long, env = "TEST_MQTT_PORT", default_value_t = 1883)]
    mqtt_port: u16,
}

/// Run-wide settings derived from the flags.
fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let began = Instant::now();
    if let Some(cpus) = &args.daemon_cpus {
        system::pin_daemons(cpus);
    }
    if !args.bin.is_file() {
        return Err(format!(
            "{} not found: build it with `cargo build --release` (bench/run.sh does)",
            args.bin.display()
        )
        .into());
    }
    let bin = std::fs::canonicalize(&args.bin)?;
    let settings = Settings {
        short: args.short,
        step_seconds: args
            .step_seconds
            .unwrap_or(if args.short { 2.0 } else { 10.0 }),
        rates: args
            .rates
            .clone()
            .unwrap_or_else(|| match (args.short, args.intake_only) {
                (true, _) => vec![100, 250, 500, 1000, 2000],
                (false, false) => vec![100, 250, 500, 1000, 1500, 2000, 2500, 3000],
                // The intake alone goes further, in finer steps near the limits.
                (false, true) => vec![
                    500, 1000, 1250, 1500, 1750, 2000, 2250, 2500, 2750, 3000, 3500, 4000,
                ],
            }),
        burst: args.burst.unwrap_or(if args.short { 500 } else { 2000 }),
        burst_concurrency: 32,
        p99_limit_ms: 10.0,
        drain_timeout_s: if args.short { 10.0 } else { 60.0 },
        cooking_seconds: 0.0,
        log_level: "info",
        kitchen_prefetch: args.prefetch,
        burst_workers: if args.intake_only {
            0
        } else {
            args.burst_workers.max(1)
        },
        mode: if args.intake_only {
            "order-service"
        } else {
            "all"
        },
        oha_rates: args.oha_rates.clone().unwrap_or_else(|| {
            if args.short {
                vec![]
            } else {
                vec![500, 1000]
            }
        }),
    };
    let servers = Servers {
        pg_host: args.pg_host.clone(),
        pg_port: args.pg_port,
        pg_user: args.pg_user.clone(),
        pg_password: args.pg_password.clone().filter(|p| !p.is_empty()),
        amqp_host: args.amqp_host.clone(),
        amqp_port: args.amqp_port,
        amqp_user: args.amqp_user.clone(),
        amqp_password: args.amqp_password.clone(),
        mqtt_host: args.mqtt_host.clone(),
        mqtt_port: args.mqtt_port,
    };
    let mut machine = Machine::read();
    let tmp = tempfile::Builder::new().prefix("rs-bench-").tempdir()?;
    let run_id = format!("{}_{:04x}", std::process::id(), rand::random::<u16>());
    say(&format!(
        "machine: {} cores, {} MB, {}; load average {}",
        machine.cores, machine.memory_mb, machine.cpu_model, machine.loadavg_start
    ));

    // Limits shared by both backends: RabbitMQ and Mosquitto.
    let limit_secs = Duration::from_secs_f64(if args.short { 2.0 } else { 5.0 });
    let mut shared = SharedLimits {
        amqp: None,
        mqtt_hop: None,
        errors: Vec::new(),
    };
    say("limit: RabbitMQ persistent publish with confirms");
    match Vhost::create(&format!("rs_bench_{run_id}_limit"), &servers.amqp_user) {
        Ok(vhost) => match limits::amqp_limit(&servers, &vhost.name, limit_secs).await {
            Ok(l) => shared.amqp = Some(l),
            Err(e) => shared.errors.push(format!("RabbitMQ limit: {e}")),
        },
        Err(e) => shared.errors.push(format!("RabbitMQ vhost: {e}")),
    }
    say("limit: Mosquitto QoS 1 hop");
    match limits::mqtt_limit(
        &servers,
        &format!("rs-bench/{run_id}/hop"),
        1000.0,
        limit_secs,
    )
    .await
    {
        Ok(l) => shared.mqtt_hop = Some(l),
        Err(e) => shared.errors.push(format!("Mosquitto limit: {e}")),
    }

    let mut backends = Vec::new();
    for b in &args.backends {
        let b = b.trim().to_lowercase();
        if b != "postgres" && b != "sqlite" {
            return Err(format!("unknown backend '{b}' (postgres, sqlite)").into());
        }
        std::fs::create_dir_all(tmp.path().join(&b))?;
        backends.push(BackendReport {
            backend: b.clone(),
            ..Default::default()
        });
    }
    // Every limit first, on a machine where nothing of ours runs yet; then
    // each backend's system.
    let mut drops: Vec<String> = Vec::new();
    for rep in backends.iter_mut() {
        let dir = tmp.path().join(&rep.backend);
        measure_limit(&args, &servers, &run_id, &dir, &mut drops, rep).await;
    }
    for rep in backends.iter_mut() {
        if args.only_limits {
            break;
        }
        let b = rep.backend.clone();
        let dir = tmp.path().join(&b);
        if let Err(e) = run_backend(
            &settings, &servers, &bin, &b, &run_id, &dir, &mut drops, rep,
        )
        .await
        {
            say(&format!("{b}: {e}"));
            rep.error = Some(e.to_string());
        }
    }
    for rep in backends.iter_mut() {
        rep.ratios = ratios(rep, &shared);
        rep.targets = targets(rep, &settings);
    }
    machine.loadavg_end = system::loadavg();
    // Dropped at the end: DROP DATABASE forces a checkpoint, whose writes would
    // slow whatever is measured next.
    for db in drops {
        if let Err(e) = servers.drop_db(&db).await {
            say(&format!("could not drop database {db}: {e}"));
        }
    }
    if args.keep {
        let kept = tmp.keep();
        say(&format!("kept {} (daemon logs, databases)", kept.display()));
    }

    let now = chrono::Utc::now();
    let report = Report {
        date_utc: now.format("%Y-%m-%d %H:%M UTC").to_string(),
        kind: if args.short { "short" } else { "full" },
        commit: args.commit.clone(),
        note: args.note.clone(),
        machine,
        oha: oha::find().map(|p| format!("{} ({})", oha::version(&p), p.display())),
        settings,
        limits: shared,
        backends,
        duration_s: began.elapsed().as_secs_f64(),
    };
    let md = markdown(&report);
    println!("\n{md}");
    std::fs::create_dir_all(&args.out)?;
    let json = serde_json::to_string_pretty(&report)?;
    let stamp = now.format("%Y%m%d-%H%M%S");
    // e.g. bench-full-all-DATE.json and latest-full-all.json (-order-service for --intake-only).
    let name = format!("{}-{}", report.kind, report.settings.mode);
    let file = args.out.join(format!("bench-{name}-{stamp}.json"));
    std::fs::write(&file, &json)?;
    std::fs::write(args.out.join(format!("latest-{name}.json")), &json)?;
    say(&format!("JSON written to {}", file.display()));
    if let Some(doc) = &args.doc {
        append_doc(doc, &md)?;
        say(&format!("summary appended to {}", doc.display()));
    }
    let failures: Vec<String> = report
        .backends
        .iter()
        .filter_map(|b| b.error.as_ref().map(|e| format!("{}: {e}", b.backend)))
        .collect();
    if !failures.is_empty() {
        return Err(format!("could not measure: {}", failures.join("; ")).into());
    }
    Ok(())
}

fn say(msg: &str) {
    eprintln!("{} [bench] {msg}", chrono::Local::now().format("%H:%M:%S"));
}

/// The daemon's environment for one backend.
struct DaemonEnv {
    vars: Vec<(String, String)>,
    config: PathBuf,
}

impl DaemonEnv {
    fn with(&self, extra: &[(&str, String)]) -> Vec<(String, String)> {
        let mut v = self.vars.clone();
        for (k, val) in extra {
            v.retain(|(kk, _)| kk != k);
            v.push((k.to_string(), val.clone()));
        }
        v
    }
}

/// The limit: the order transaction straight at the database.
async fn measure_limit(
    args: &Args,
    servers: &Servers,
    run_id: &str,
    dir: &Path,
    drops: &mut Vec<String>,
    rep: &mut BackendReport,
) {
    settle(servers).await;
    let limit_secs = if args.short { 2 } else { 10 };
    if rep.backend == "postgres" {
        let db = format!("rs_bench_{run_id}_limit");
        say(&format!(
            "postgres limit: pgbench, 1 and 8 clients, {limit_secs} s each"
        ));
        drops.push(db.clone());
        let r = async {
            servers.create_db(&db).await?;
            limits::pg_schema(servers, &db).await?;
            let script = std::fs::canonicalize(&args.pgbench_script)
                .map_err(|e| format!("{}: {e}", args.pgbench_script.display()))?;
            let logs = dir.join("pgbench");
            for clients in [1, 8] {
                rep.limit.push(limits::pgbench(
                    servers, &db, &script, clients, limit_secs, &logs,
                )?);
            }
            Ok::<(), system::Error>(())
        }
        .await;
        if let Err(e) = r {
            rep.limit_error = Some(e.to_string());
            say(&format!("postgres limit failed: {e}"));
        }
    } else {
        say(&format!(
            "sqlite limit: the library's store, {limit_secs} s"
        ));
        let path = dir.join("limit.db");
        match limits::sqlite_limit(&path, Duration::from_secs(limit_secs)).await {
            Ok(l) => rep.limit.push(l),
            Err(e) => rep.limit_error = Some(e.to_string()),
        }
    }
}

/// The system, on a fresh database and vhost.
#[allow(clippy::too_many_arguments)]
async fn run_backend(
    settings: &Settings,
    servers: &Servers,
    bin: &Path,
    backend: &str,
    run_id: &str,
    dir: &Path,
    drops: &mut Vec<String>,
    rep: &mut BackendReport,
) -> Result<()> {
    let pg = backend == "postgres";
    let vhost = Vhost::create(&format!("rs_bench_{run_id}_{backend}"), &servers.amqp_user)?;
    let db = format!("rs_bench_{run_id}_{backend}");
    let sqlite_path = dir.join("restaurant.db");
    let site = format!("bench{}{}", run_id.replace('_', ""), &backend[..2]);
    let prefix = format!("restaurant/{site}");
    let config = dir.join("bench.toml");
    std::fs::write(
        &config,
        "# Written by the benchmark; the environment sets the rest.\n[log]\nlevel = \"info\"\nformat = \"json\"\n",
    )?;
    let mut vars: Vec<(String, String)> = vec![
        ("RESTAURANT_DATABASE__BACKEND".into(), backend.into()),
        ("RABBITMQ_HOST".into(), servers.amqp_host.clone()),
        ("RABBITMQ_PORT".into(), servers.amqp_port.to_string()),
        ("RABBITMQ_USER".into(), servers.amqp_user.clone()),
        ("RABBITMQ_PASSWORD".into(), servers.amqp_password.clone()),
        ("RESTAURANT_RABBITMQ__VHOST".into(), vhost.name.clone()),
        ("RESTAURANT_MQTT__HOST".into(), servers.mqtt_host.clone()),
        (
            "RESTAURANT_MQTT__PORT".into(),
            servers.mqtt_port.to_string(),
        ),
        ("RESTAURANT_MQTT__SITE".into(), site.clone()),
        (
            "RESTAURANT_MQTT__CLIENT_ID".into(),
            format!("rs-bench-bridge-{site}"),
        ),
        ("RESTAURANT_HTTP__BIND".into(), "127.0.0.1".into()),
        ("RESTAURANT_LOG__LEVEL".into(), settings.log_level.into()),
        ("RESTAURANT_LOG__FORMAT".into(), "json".into()),
    ];
    for t in ["DINE_IN", "TAKEOUT", "DELIVERY"] {
        vars.push((
            format!("RESTAURANT_KITCHEN__COOKING_SECONDS__{t}"),
            settings.cooking_seconds.to_string(),
        ));
    }
    if pg {
        drops.push(db.clone());
        servers.create_db(&db).await?;
        vars.extend([
            ("DB_HOST".into(), servers.pg_host.clone()),
            ("DB_PORT".into(), servers.pg_port.to_string()),
            ("DB_USER".into(), servers.pg_user.clone()),
            ("DB_NAME".into(), db.clone()),
        ]);
        if let Some(pw) = &servers.pg_password {
            vars.push(("DB_PASSWORD".into(), pw.clone()));
        }
    } else {
        vars.push((
            "RESTAURANT_DATABASE__SQLITE_PATH".into(),
            sqlite_path.display().to_string(),
        ));
    }
    let env = DaemonEnv { vars, config };
    settle(servers).await;
    let result = measure_system(
        settings,
        servers,
        bin,
        pg,
        &db,
        &sqlite_path,
        &prefix,
        &env,
        dir,
        rep,
    )
    .await;
    drop(vhost);
    result
}

/// Lets the disk settle before a measurement: a PostgreSQL checkpoint and a
/// sync now rather than in the middle of the next figure, then up to 30 s for
/// the disks to go quiet (other jobs on a shared machine may never let them).
async fn settle(servers: &Servers) {
    if let Ok(c) = servers.pg_connect("postgres").await {
        let _ = c.batch_execute("checkpoint").await;
    }
    let _ = tokio::process::Command::new("sync").status().await;
    let t = Instant::now();
    let mut quiet = 0;
    let mut last = system::sectors_written();
    while quiet < 2 && t.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = system::sectors_written();
        // Under 1 MB/s: 2048 sectors of 512 bytes per second.
        if now.saturating_sub(last) < 1024 {
            quiet += 1;
        } else {
            quiet = 0;
        }
        last = now;
    }
    if quiet < 2 {
        say("disks still busy after 30 s (other jobs?); measuring anyway");
    }
}

fn remove_sqlite(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

#[allow(clippy::too_many_arguments)]
async fn measure_system(
    settings: &Settings,
    servers: &Servers,
    bin: &Path,
    pg: bool,
    db: &str,
    sqlite_path: &Path,
    prefix: &str,
    env: &DaemonEnv,
    dir: &Path,
    rep: &mut BackendReport,
) -> Result<()> {
    let order_port = free_port()?;
    let tracking_port = free_port()?;
    let bridge_port = free_port()?;
    let ports = [
        ("RESTAURANT_HTTP__ORDER_PORT", order_port.to_string()),
        ("RESTAURANT_HTTP__TRACKING_PORT", tracking_port.to_string()),
        ("RESTAURANT_HTTP__BRIDGE_PORT", bridge_port.to_string()),
    ];
    let all_args = |cfg: &Path| -> Vec<String> {
        let mut a = vec![
            "--config".into(),
            cfg.display().to_string(),
            format!("--mode={}", settings.mode),
        ];
        if settings.mode == "all" {
            a.push("--worker-name=bench_chef".into());
            a.push(format!("--prefetch={}", settings.kitchen_prefetch));
        }
        a
    };
    say(&format!(
        "{}: starting --mode={}{}",
        rep.backend,
        settings.mode,
        if settings.mode == "all" {
            " with the display bridge"
        } else {
            ""
        }
    ));
    let mut extra: Vec<(&str, String)> = ports.to_vec();
    extra.push(("RESTAURANT_MQTT__ENABLED", "true".into()));
    if settings.mode != "all" {
        rep.mqtt_note = Some(format!(
            "--mode={} measured alone (--intake-only): no kitchen, no bridge",
            settings.mode
        ));
    }
    let timeout = Duration::from_secs(60);
    let mut daemon = match start_daemon(
        bin,
        &all_args(&env.config),
        &env.with(&extra),
        dir,
        "all",
        timeout,
    )
    .await
    {
        Ok(d) => {
            rep.mqtt_bridge = settings.mode == "all";
            d
        }
        Err(e) => {
            // The display bridge may not be there (yet): measure without it.
            say(&format!(
                "{}: --mode=all with MQTT did not start ({e}); again without the bridge",
                rep.backend
            ));
            rep.mqtt_note = Some(format!(
                "display bridge not available: --mode=all with RESTAURANT_MQTT__ENABLED=true failed: {e}"
            ));
            if pg {
                servers.drop_db(db).await?;
                servers.create_db(db).await?;
            } else {
                remove_sqlite(sqlite_path);
            }
            extra.retain(|(k, _)| *k != "RESTAURANT_MQTT__ENABLED");
            extra.push(("RESTAURANT_MQTT__ENABLED", "false".into()));
            start_daemon(
                bin,
                &all_args(&env.config),
                &env.with(&extra),
                dir,
                "all",
                timeout,
            )
            .await
            .map_err(|e| format!("--mode=all did not start: {e}"))?
        }
    };
    rep.ready_ms = Some(daemon.ready_ms);
    say(&format!(
        "{}: READY after {:.0} ms (pid {})",
        rep.backend, daemon.ready_ms, daemon.pid
    ));

    let stop = CancellationToken::new();
    let helpers = ExtraWorkers {
        bin,
        config: &env.config,
        env: env.with(&extra),
        dir,
        prefetch: settings.kitchen_prefetch,
    };
    let r = drive(
        settings,
        servers,
        prefix,
        order_port,
        &mut daemon,
        &helpers,
        &stop,
        dir,
        rep,
    )
    .await;
    rep.peak_rss_kb = daemon.status_kb("VmHWM");
    let stopped = daemon.stop(Duration::from_secs(30)).await;
    if pg {
        // Read after the stop: backends flush their statistics when they exit.
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some((commits, rows)) = servers.db_stats(db).await {
            let orders = rep.orders_total.max(1) as f64;
            rep.pg_commits_per_order = Some(commits as f64 / orders);
            rep.pg_rows_written_per_order = Some(rows as f64 / orders);
        }
    }
    say(&format!(
        "{}: stopped in {:.0} ms (exit {:?})",
        rep.backend, stopped.stop_ms, stopped.exit_code
    ));
    rep.stopped = Some(stopped);
    stop.cancel();
    if rep.mqtt_bridge {
        let mut topics: Vec<String> = rep_created_topics(rep, prefix);
        topics.push(format!("{prefix}/bridge/status"));
        topics.push(format!("{prefix}/workers/bench_chef"));
        for i in 2..=settings.burst_workers {
            topics.push(format!("{prefix}/workers/bench_chef_{i}"));
        }
        if let Err(e) = load::clear_retained(servers, topics).await {
            say(&format!("clearing retained messages under {prefix}: {e}"));
        }
    }
    r?;

    // Idle memory and READY time of each mode on its own, on a database of
    // their own (migrated first): the load above left thousands of open orders,
    // which the display bridge would load for its board snapshot.
    let modes_db = format!("{db}_modes");
    let mut db_env: Vec<(&str, String)> = ports.to_vec();
    db_env.push(("RESTAURANT_MQTT__ENABLED", "true".into()));
    if pg {
        servers.create_db(&modes_db).await?;
        db_env.push(("DB_NAME", modes_db.clone()));
    } else {
        db_env.push((
            "RESTAURANT_DATABASE__SQLITE_PATH",
            dir.join("modes.db").display().to_string(),
        ));
    }
    let migrated = tokio::process::Command::new(bin)
        .args(["--config", &env.config.display().to_string(), "migrate"])
        .env_clear()
        .envs(env.with(&db_env))
        .stdin(std::process::Stdio::null())
        .output()
        .await?;
    if !migrated.status.success() {
        return Err(format!(
            "restaurant-system migrate failed: {}",
            String::from_utf8_lossy(&migrated.stderr).trim()
        )
        .into());
    }
    let modes: [(&str, Vec<String>); 5] = [
        ("order-service", vec![]),
        (
            "kitchen-worker",
            vec!["--worker-name=bench_idle_chef".into()],
        ),
        ("tracking-service", vec![]),
        ("notification-subscriber", vec![]),
        ("display-bridge", vec![]),
    ];
    for (mode, more) in modes {
        let mut a = vec![
            "--config".to_string(),
            env.config.display().to_string(),
            format!("--mode={mode}"),
        ];
        a.extend(more);
        let extra = db_env.clone();
        let mut m = ModeReport {
            mode: mode.into(),
            ready_ms: None,
            idle_rss_kb: None,
            note: None,
        };
        match start_daemon(
            bin,
            &a,
            &env.with(&extra),
            dir,
            mode,
            Duration::from_secs(30),
        )
        .await
        {
            Ok(mut d) => {
                m.ready_ms = Some(d.ready_ms);
                tokio::time::sleep(Duration::from_secs(2)).await;
                if d.alive() {
                    m.idle_rss_kb = d.status_kb("VmRSS");
                } else {
                    m.note = Some(format!(
                        "exited during the idle wait: {}",
                        system::tail(&d.stderr_path, 3)
                    ));
                }
                d.stop(Duration::from_secs(15)).await;
            }
            Err(e) => m.note = Some(e.to_string()),
        }
        say(&format!(
            "{}: {mode}: READY {} ms, idle RSS {} kB{}",
            rep.backend,
            fmt_opt(m.ready_ms, 0),
            m.idle_rss_kb.map_or("n/a".into(), |v| v.to_string()),
            m.note
                .as_deref()
                .map_or(String::new(), |n| format!(" ({n})"))
        ));
        rep.modes.push(m);
    }
    let _ = load::clear_retained(
        servers,
        vec![
            format!("{prefix}/bridge/status"),
            format!("{prefix}/workers/bench_idle_chef"),
        ],
    )
    .await;

    // The kitchen alone, on the modes' (now idle) database: its workers in one
    // process, then each in a process of its own.
    if settings.mode == "all" {
        let probe = if pg {
            servers.pg_connect(&modes_db).await.map(Probe::Pg)
        } else {
            sqlite(&dir.join("modes.db")).map(Probe::Sqlite)
        };
        let helpers = ExtraWorkers {
            env: env.with(&db_env),
            ..helpers
        };
        for one_process in [true, false] {
            let mut k = KitchenReport {
                orders: settings.burst,
                workers: settings.burst_workers.max(1),
                prefetch: settings.kitchen_prefetch,
                one_process,
                ready: 0,
                drain_s: None,
                ready_per_s: None,
                note: None,
            };
            let run = match &probe {
                Ok(p) => kitchen_alone(settings, p, &helpers, order_port, &mut k).await,
                Err(e) => Err(format!("database probe: {e}").into()),
            };
            if let Err(e) = run {
                k.note = Some(e.to_string());
            }
            say(&format!(
                "{}: the kitchen alone, {}: {} of {} ready, {} ready/s{}",
                rep.backend,
                k.layout(),
                k.ready,
                k.orders,
                fmt_opt(k.ready_per_s, 0),
                k.note
                    .as_deref()
                    .map_or(String::new(), |n| format!(" ({n})"))
            ));
            rep.kitchen.push(k);
        }
    }
    if pg {
        let _ = servers.drop_db(&modes_db).await;
    }
    Ok(())
}

/// Reads the kitchen's progress straight from the database.
enum Probe {
    Pg(tokio_postgres::Client),
    Sqlite(rusqlite::Connection),
}

impl Probe {
    /// Rows waiting in the outbox.
    async fn outbox(&self) -> Result<i64> {
        let sql = "select count(*) from outbox";
        Ok(match self {
            Probe::Pg(c) => c.query_one(sql, &[]).await?.get(0),
            Probe::Sqlite(c) => c.query_row(sql, [], |r| r.get(0))?,
        })
    }

    /// The last status log entry so far: a run counts the ones after it.
    async fn log_end(&self) -> Result<i64> {
        let sql = "select coalesce(max(id), 0) from order_status_log";
        Ok(match self {
            Probe::Pg(c) => c.query_one(sql, &[]).await?.get::<_, i32>(0) as i64,
            Probe::Sqlite(c) => c.query_row(sql, [], |r| r.get(0))?,
        })
    }

    /// Orders whose `ready` is logged after entry `since`, and the seconds
    /// from the first `cooking` to the last `ready` among those entries.
    async fn drained(&self, since: i64) -> Result<(i64, Option<f64>)> {
        Ok(match self {
            Probe::Pg(c) => {
                let r = c
                    .query_one(
                        "select count(*) filter (where status = 'ready'),
                                extract(epoch from max(changed_at) filter (where status = 'ready')
                                                 - min(changed_at) filter (where status = 'cooking'))::float8
                         from order_status_log where id > $1",
                        &[&(since as i32)],
                    )
                    .await?;
                (r.get(0), r.get(1))
            }
            Probe::Sqlite(c) => c.query_row(
                "select count(case when status = 'ready' then 1 end),
                        (julianday(max(case when status = 'ready' then changed_at end))
                         - julianday(min(case when status = 'cooking' then changed_at end))) * 86400.0
                 from order_status_log where id > ?1",
                [since],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?,
        })
    }
}

fn sqlite(path: &Path) -> Result<rusqlite::Connection> {
    let c =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    c.busy_timeout(Duration::from_secs(5))?;
    Ok(c)
}

/// Issue 15's drain rate: orders are queued while no kitchen runs (an
/// order-service alone takes them), then the kitchen workers start together
/// and drain the queue. Nothing else consumes meanwhile.
async fn kitchen_alone(
    settings: &Settings,
    probe: &Probe,
    helpers: &ExtraWorkers<'_>,
    order_port: u16,
    k: &mut KitchenReport,
) -> Result<()> {
    let drain_timeout = Duration::from_secs_f64(settings.drain_timeout_s * 3.0);
    let args = vec![
        "--config".to_string(),
        helpers.config.display().to_string(),
        "--mode=order-service".into(),
    ];
    let intake = start_daemon(
        helpers.bin,
        &args,
        &helpers.env,
        helpers.dir,
        "kitchen-intake",
        Duration::from_secs(30),
    )
    .await
    .map_err(|e| format!("order-service did not start: {e}"))?;
    let url = format!("http://127.0.0.1:{order_port}/orders");
    let phase = load::burst(
        &load::http_client(),
        &url,
        k.orders,
        settings.burst_concurrency,
    )
    .await;
    // Queued once the relay has published (and pruned) every outbox row.
    let t = Instant::now();
    while probe.outbox().await? > 0 && t.elapsed() < drain_timeout {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    intake.stop(Duration::from_secs(30)).await;
    if phase.ok != k.orders {
        return Err(format!("only {} of {} orders accepted", phase.ok, k.orders).into());
    }
    let since = probe.log_end().await?;
    let names: Vec<String> = (1..=k.workers)
        .map(|i| format!("bench_kitchen_{i}"))
        .collect();
    let started = if k.one_process {
        vec![helpers.start_as(&names.join(",")).await]
    } else {
        futures_util::future::join_all(names.iter().map(|n| helpers.start_as(n))).await
    };
    let mut workers = Vec::new();
    let mut failure = None;
    for w in started {
        match w {
            Ok(d) => workers.push(d),
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    if let Some(e) = failure {
        for w in workers {
            w.stop(Duration::from_secs(30)).await;
        }
        return Err(e);
    }
    let t = Instant::now();
    let mut drained = probe.drained(since).await?;
    while (drained.0 as usize) < k.orders && t.elapsed() < drain_timeout {
        tokio::time::sleep(Duration::from_millis(50)).await;
        drained = probe.drained(since).await?;
    }
    for w in workers {
        w.stop(Duration::from_secs(30)).await;
    }
    k.ready = drained.0 as usize;
    k.drain_s = drained.1;
    k.ready_per_s = drained.1.map(|s| k.ready as f64 / s.max(1e-9));
    if k.ready < k.orders {
        k.note = Some(format!(
            "not drained after {:.0} s",
            drain_timeout.as_secs_f64()
        ));
    }
    Ok(())
}

fn rep_created_topics(rep: &BackendReport, prefix: &str) -> Vec<String> {
    // Order numbers are ORD_<date>_<seq>, 1..=total for the run's fresh database.
    let day = chrono::Utc::now().date_naive();
    let n = rep.orders_total + 100;
    (1..=n as i64)
        .map(|seq| {
            format!(
                "{prefix}/orders/{}",
                restaurant_system::domain::order::order_number(day, seq)
            )
        })
        .collect()
}

async fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> (bool, f64) {
    let t = Instant::now();
    while !done() {
        if t.elapsed() >= timeout {
            return (false, t.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (true, t.elapsed().as_secs_f64())
}

/// What starts the burst's extra kitchen workers: the daemon's own settings,
/// `--mode=kitchen-worker` under another name.
struct ExtraWorkers<'a> {
    bin: &'a Path,
    config: &'a Path,
    env: Vec<(String, String)>,
    dir: &'a Path,
    prefetch: u16,
}

impl ExtraWorkers<'_> {
    async fn start(&self, i: u16) -> Result<Daemon> {
        self.start_as(&format!("bench_chef_{i}")).await
    }

    /// `name`: one worker, or several in one process (comma-separated).
    async fn start_as(&self, name: &str) -> Result<Daemon> {
        let args = vec![
            "--config".to_string(),
            self.config.display().to_string(),
            "--mode=kitchen-worker".into(),
            format!("--worker-name={name}"),
            format!("--prefetch={}", self.prefetch),
        ];
        start_daemon(
            self.bin,
            &args,
            &self.env,
            self.dir,
            name,
            Duration::from_secs(30),
        )
        .await
        .map_err(|e| format!("kitchen worker {name} did not start: {e}").into())
    }
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    settings: &Settings,
    servers: &Servers,
    prefix: &str,
    order_port: u16,
    daemon: &mut Daemon,
    helpers: &ExtraWorkers<'_>,
    stop: &CancellationToken,
    dir: &Path,
    rep: &mut BackendReport,
) -> Result<()> {
    let seen = Arc::new(Seen::default());
    if rep.mqtt_bridge {
        load::watch_mqtt(servers, prefix, seen.clone(), stop.clone()).await?;
    }
    // Without a kitchen (or without the bridge, through which `ready` is seen)
    // nothing is followed: the waits below end at once.
    let follow = settings.mode == "all" && rep.mqtt_bridge;
    let client = load::http_client();
    let url = format!("http://127.0.0.1:{order_port}/orders");
    let me = std::process::id();
    let drain_timeout = Duration::from_secs_f64(settings.drain_timeout_s);

    // Warm-up: connections, prepared statements, caches.
    let warm = load::open_loop(&client, &url, 100.0, Duration::from_secs(1)).await;
    rep.orders_total += warm.ok;
    wait_until(drain_timeout, || {
        !follow || seen.ready_count(&warm.created) >= warm.ok
    })
    .await;
    if warm.ok == 0 {
        return Err(format!("no order accepted during warm-up: {:?}", warm.errors).into());
    }
    rep.warmup = Some(PhaseReport::from(&warm));

    let cpu_start = daemon.cpu_seconds();
    let orders_start = rep.orders_total;
    let mut failed = false;
    for &rate in &settings.rates {
        if failed && rate > 1000 {
            break;
        }
        if !daemon.alive() {
            return Err("the daemon exited during the load".into());
        }
        let cpu0 = daemon.cpu_seconds();
        let me0 = system::cpu_seconds(me);
        let phase = load::open_loop(
            &client,
            &url,
            f64::from(rate),
            Duration::from_secs_f64(settings.step_seconds),
        )
        .await;
        rep.orders_total += phase.ok;
        let want = phase.ok;
        if !follow {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let (drained, drain_s) = wait_until(drain_timeout, || {
            !follow
                || seen.ready_count(&phase.created) >= want
                    && (!rep.mqtt_bridge || seen.mqtt_count(&phase.created) >= want)
        })
        .await;
        let cpu = ratio(
            daemon.cpu_seconds().zip(cpu0).map(|(b, a)| b - a),
            Some(phase.ok as f64 / 1000.0),
        );
        let bench_cpu = system::cpu_seconds(me).zip(me0).map(|(b, a)| b - a);
        let p99 = phase.latency.as_ref().map(|l| l.p99_ms);
        let pass = phase.error_count() == 0 && p99.is_some_and(|p| p <= settings.p99_limit_ms);
        if pass && !failed {
            rep.sustained_rate = Some(rate);
        }
        if !pass {
            failed = true;
        }
        let step = StepReport {
            rate,
            phase: PhaseReport::from(&phase),
            pass,
            cpu_s_per_1000: cpu,
            bench_cpu_s: bench_cpu,
            e2e_mqtt: seen.mqtt_latency(&phase.created),
            e2e_ready: seen.ready_latency(&phase.created),
            mqtt_seen: seen.mqtt_count(&phase.created),
            ready_seen: seen.ready_count(&phase.created),
            drain_s,
            drained,
        };
        say(&format!(
            "{} {rate:>5}/s: {} ok, {} errors, p50 {} p99 {} max {} ms; ready {}/{} (p99 {} ms){}",
            rep.backend,
            step.phase.ok,
            phase.error_count(),
            fmt_opt(phase.latency.as_ref().map(|l| l.p50_ms), 2),
            fmt_opt(p99, 2),
            fmt_opt(phase.latency.as_ref().map(|l| l.max_ms), 1),
            step.ready_seen,
            step.phase.ok,
            fmt_opt(step.e2e_ready.as_ref().map(|l| l.p99_ms), 1),
            if drained {
                String::new()
            } else {
                format!(" (not drained after {drain_s:.0} s)")
            }
        ));
        rep.steps.push(step);
    }

    // The cross-check with oha (when installed).
    match oha::find() {
        Some(tool) if !settings.oha_rates.is_empty() => {
            for &rate in &settings.oha_rates {
                say(&format!("{}: oha at {rate}/s", rep.backend));
                let dur = Duration::from_secs_f64(settings.step_seconds);
                match oha::run(&tool, &url, rate, dur, dir).await {
                    Ok(o) => {
                        let created = o.status_codes["200"].as_u64().unwrap_or(0) as usize;
                        rep.orders_total += created;
                        let total = rep.orders_total;
                        wait_until(drain_timeout, || {
                            !follow || seen.ready.lock().expect("lock").len() >= total
                        })
                        .await;
                        say(&format!(
                            "{} oha {rate:>5}/s: {} requests, success {:.3}, p50 {} p99 {} ms",
                            rep.backend,
                            o.requests,
                            o.success_rate,
                            fmt_opt(o.p50_ms, 2),
                            fmt_opt(o.p99_ms, 2)
                        ));
                        rep.oha.push(o);
                    }
                    Err(e) => {
                        rep.oha_note = Some(e);
                        break;
                    }
                }
            }
        }
        None if !settings.oha_rates.is_empty() => {
            rep.oha_note =
                Some("oha not installed (cargo install --locked oha); our generator only".into())
        }
        _ => {}
    }

    // The burst starts on an idle system: what earlier steps left in the
    // kitchen is finished first.
    let total = rep.orders_total;
    let (drained, waited) = wait_until(drain_timeout * 3, || {
        !follow || seen.ready.lock().expect("lock").len() >= total
    })
    .await;
    if !drained {
        say(&format!(
            "{}: backlog not finished after {waited:.0} s; the burst starts anyway",
            rep.backend
        ));
    }

    // The kitchen drains the burst with `burst_workers` workers (issue 15's
    // measure: two at prefetch 1), the extra ones started now, on a quiet system.
    let mut extra_workers = Vec::new();
    for i in 2..=settings.burst_workers {
        extra_workers.push(helpers.start(i).await?);
    }

    // The burst: a rush of orders as fast as the connections allow.
    let n = settings.burst;
    say(&format!(
        "{}: burst of {n} orders ({} connections, {} kitchen workers)",
        rep.backend, settings.burst_concurrency, settings.burst_workers
    ));
    let t = Instant::now();
    let phase = load::burst(&client, &url, n, settings.burst_concurrency).await;
    rep.orders_total += phase.ok;
    let want = phase.ok;
    let (_, _) = wait_until(drain_timeout * 3, || {
        !follow
            || seen.ready_count(&phase.created) >= want
                && (!rep.mqtt_bridge || seen.mqtt_count(&phase.created) >= want)
    })
    .await;
    let drain_s = t.elapsed().as_secs_f64();
    let ready = seen.ready_count(&phase.created);
    let (mut retained, mut retained_total, mut retained_qos1, mut retained_note) =
        (None, None, None, None);
    if rep.mqtt_bridge {
        for qos in [rumqttc::QoS::AtMostOnce, rumqttc::QoS::AtLeastOnce] {
            match load::count_retained(servers, prefix, &phase.created, qos, Duration::from_secs(2))
                .await
            {
                Ok((c, total)) if qos == rumqttc::QoS::AtMostOnce => {
                    retained = Some(c);
                    retained_total = Some(total);
                }
                Ok((_, total)) => retained_qos1 = Some(total),
                Err(e) => retained_note = Some(e),
            }
        }
    } else {
        retained_note = rep.mqtt_note.clone();
    }
    rep.burst = Some(BurstReport {
        requested: n,
        concurrency: settings.burst_concurrency,
        phase: PhaseReport::from(&phase),
        ready,
        mqtt_live: rep.mqtt_bridge.then(|| seen.mqtt_count(&phase.created)),
        retained,
        retained_total,
        retained_qos1,
        retained_note,
        drain_s,
        ready_per_s: ready as f64 / drain_s.max(1e-9),
    });
    say(&format!(
        "{}: burst: {} of {n} accepted, {ready} ready in {drain_s:.1} s, retained {}",
        rep.backend,
        phase.ok,
        retained.map_or("n/a".into(), |r| r.to_string())
    ));
    for w in extra_workers {
        w.stop(Duration::from_secs(30)).await;
    }
    rep.cpu_s_per_1000_orders = ratio(
        daemon.cpu_seconds().zip(cpu_start).map(|(b, a)| b - a),
        Some((rep.orders_total - orders_start) as f64 / 1000.0),
    );
    Ok(())
}
