//! The real binary: help, usage errors, `validate`, `migrate`, worker
//! registration (duplicate and stale names) and SIGTERM while cooking.
use crate::common;

use common::{
    eventually, get_all, get_json, notification_tap, queue_counts, wait_status, Backend, Proc,
    TestEnv,
};
use nix::sys::signal::Signal;
use restaurant_system::domain::OrderStatus;
use restaurant_system::modes::Mode;
use restaurant_system::storage::{Registered, WorkerRegistration};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_restaurant-system");

/// The binary with no settings leaking in from the environment running the
/// tests, and no config file found by default unless one is given.
fn bare(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("DB_") || k.starts_with("RABBITMQ_") || k.starts_with("RESTAURANT_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn first_line(lines: &[String]) -> String {
    lines
        .iter()
        .find(|l| !l.trim().is_empty())
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn help_lists_modes_flags_and_subcommands() {
    let dir = tempfile::tempdir().unwrap();
    let out = bare(dir.path()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for word in [
        "order-service",
        "kitchen-worker",
        "tracking-service",
        "notification-subscriber",
        "display-bridge",
        "all",
        "--mode",
        "--config",
        "--port",
        "--max-concurrent",
        "--worker-name",
        "--order-types",
        "--prefetch",
        "--heartbeat-interval",
        "migrate",
        "validate",
    ] {
        assert!(
            text.contains(word),
            "--help does not mention {word}:\n{text}"
        );
    }
    let out = bare(dir.path()).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

/// Bad usage: exit code 2, a clear first line on stderr naming the problem,
/// no panic, nothing started (no log lines).
#[tokio::test]
async fn usage_errors_exit_2_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--mode=foo"], "foo"),
        (&["--mode", "kitchen"], "kitchen"),
        (&["--mode=order-service", "--bogus"], "--bogus"),
        (&["--mode=order-service", "extra"], "extra"),
        (&[], "--mode"),
        (&["--mode=kitchen-worker"], "--worker-name"),
        (
            &["--mode=kitchen-worker", "--worker-name="],
            "--worker-name",
        ),
        (
            &["--mode=kitchen-worker", "--worker-name=chef mario"],
            "--worker-name",
        ),
        (
            &[
                "--mode=kitchen-worker",
                "--worker-name=chef_a,chef_b,chef_a",
            ],
            "'chef_a' is given twice",
        ),
        (
            &["--mode=kitchen-worker", "--worker-name=chef_a,,chef_b"],
            "--worker-name",
        ),
        (
            &[
                "--mode=kitchen-worker",
                "--worker-name=x",
                "--order-types=pizza",
            ],
            "pizza",
        ),
        (
            &[
                "--mode=kitchen-worker",
                "--worker-name=x",
                "--order-types=dine_in,,takeout",
            ],
            "--order-types",
        ),
        (
            &["--mode=kitchen-worker", "--worker-name=x", "--prefetch=0"],
            "prefetch",
        ),
        (
            &[
                "--mode=kitchen-worker",
                "--worker-name=x",
                "--prefetch=many",
            ],
            "prefetch",
        ),
        (
            &[
                "--mode=kitchen-worker",
                "--worker-name=x",
                "--heartbeat-interval=0",
            ],
            "heartbeat",
        ),
        (&["--mode=order-service", "--port=70000"], "port"),
        (&["--mode=order-service", "--port=-1"], "port"),
        (
            &["--mode=order-service", "--max-concurrent=0"],
            "max-concurrent",
        ),
    ];
    for (args, needle) in cases {
        let mut cmd = bare(dir.path());
        cmd.arg("--config").arg(&empty).args(*args);
        let mut p = Proc::spawn(&format!("{args:?}"), cmd);
        let st = p.wait_exit(Duration::from_secs(10)).await;
        let err = p.stderr();
        assert_eq!(st.code(), Some(2), "{args:?}: {st:?} {err:?}");
        let first = first_line(&err);
        assert!(
            first.contains(needle),
            "{args:?}: first stderr line {first:?} does not name {needle:?}; all: {err:?}"
        );
        assert!(
            !err.iter()
                .any(|l| l.contains("panicked") || l.contains("RUST_BACKTRACE")),
            "{args:?}: {err:?}"
        );
        assert!(
            p.stdout().is_empty(),
            "{args:?} started something: {:?}",
            p.stdout()
        );
    }
}

/// `validate`: 0 with a summary for good config; 2 with the file, key and
/// problem for bad config, from a file or from the environment.
#[tokio::test]
async fn validate_checks_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let repo_config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    let good = [
        (write("empty.toml", ""), "sqlite"),
        (repo_config.clone(), "sqlite"),
        (
            Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/stations.toml"),
            "sqlite",
        ),
        (
            write("sqlite.toml", "[database]\nbackend = \"sqlite\"\nsqlite_path = \"/tmp/x.db\"\n"),
            "sqlite",
        ),
        (
            write(
                "spec.yaml",
                "database:\n  host: localhost\n  port: 5432\n  user: restaurant_user\n  password: restaurant_pass\n  database: restaurant_db\n\nrabbitmq:\n  host: localhost\n  port: 5672\n  user: guest\n  password: guest\n",
            ),
            "postgres",
        ),
    ];
    for (path, backend) in &good {
        let out = bare(dir.path())
            .arg("validate")
            .arg("--config")
            .arg(path)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}: {out:?}", path.display());
        assert!(
            stdout.to_lowercase().contains(backend),
            "{}: {stdout}",
            path.display()
        );
        // The config's passwords are not printed.
        assert!(!stdout.contains("restaurant_pass"), "{stdout}");
    }

    let bad = [
        (write("port.toml", "[database]\nport = \"abc\"\n"), "port"),
        (write("syntax.toml", "[database\nport = 1\n"), "syntax.toml"),
        (
            write("backend.toml", "[database]\nbackend = \"mysql\"\n"),
            "backend",
        ),
        (write("unknown.toml", "[database]\nhots = \"x\"\n"), "hots"),
        (
            write("section.toml", "[databse]\nhost = \"x\"\n"),
            "databse",
        ),
        (
            write("neg.toml", "[kitchen.cooking_seconds]\ntakeout = -1\n"),
            "takeout",
        ),
        (
            write(
                "stations.toml",
                "[stations]\ndefault = \"grill\"\n[[stations.station]]\nname = \"grill\"\n[[stations.rule]]\ncategory = \"sides\"\nstations = [\"fry\"]\n",
            ),
            "unknown station 'fry'",
        ),
    ];
    for (path, needle) in &bad {
        let out = bare(dir.path())
            .arg("validate")
            .arg("--config")
            .arg(path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {out:?}", path.display());
        assert!(err.contains(needle), "{}: {err}", path.display());
        assert!(
            err.contains(path.file_name().unwrap().to_str().unwrap()),
            "error names the file {}: {err}",
            path.display()
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    let out = bare(dir.path())
        .args(["validate", "--config", "/nonexistent/restaurant.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/restaurant.toml"));

    for (k, v, needle) in [
        ("DB_PORT", "not-a-port", "port"),
        ("RESTAURANT_RABBITMQ__PORT", "99999", "port"),
        ("RESTAURANT_DATABASE__BACKEND", "oracle", "backend"),
    ] {
        let out = bare(dir.path())
            .arg("validate")
            .arg("--config")
            .arg(&good[0].0)
            .env(k, v)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{k}={v}: {out:?}");
        assert!(err.contains(needle), "{k}={v}: {err}");
    }
}

/// `migrate` applies the schema and exits 0, again and again; it exits 1
/// (not hang) when the database cannot be reached.
async fn migrate_subcommand(b: Backend) {
    let env = TestEnv::new(b);
    for _ in 0..2 {
        let out = env.command().arg("migrate").output().unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("up to date"));
    }
    let tables = ["orders", "order_items", "order_status_log", "workers"];
    match b {
        Backend::Postgres => {
            let db = env.pg_db.clone().unwrap();
            let n = common::pg_query(
                &db,
                "select count(*) from information_schema.tables where table_schema = 'public' \
                 and table_name in ('orders', 'order_items', 'order_status_log', 'workers')",
            )
            .unwrap();
            assert_eq!(n, "4");
            let checks = common::pg_query(
                &db,
                "select pg_get_constraintdef(oid) from pg_constraint where conrelid = 'orders'::regclass and contype = 'c'",
            )
            .unwrap();
            for s in ["received", "cooking", "ready", "completed", "cancelled"] {
                assert!(checks.contains(s), "status check lacks {s}: {checks}");
            }
        }
        Backend::Sqlite => {
            let c = rusqlite::Connection::open(&env.cfg.database.sqlite_path).unwrap();
            for t in tables {
                let n: i64 = c
                    .query_row(
                        "select count(*) from sqlite_master where type = 'table' and name = ?1",
                        [t],
                        |r| r.get(0),
                    )
                    .unwrap();
                assert_eq!(n, 1, "table {t}");
            }
        }
    }

    // Unreachable database: a clear error and exit 1, promptly.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = env.command();
    cmd.arg("migrate");
    match b {
        Backend::Postgres => {
            cmd.env("RESTAURANT_DATABASE__PORT", port.to_string());
        }
        Backend::Sqlite => {
            // A path under a regular file can never be created.
            let file = env.dir.path().join("plain-file");
            std::fs::write(&file, "").unwrap();
            cmd.env(
                "RESTAURANT_DATABASE__SQLITE_PATH",
                file.join("sub/restaurant.db").display().to_string(),
            );
        }
    }
    let mut p = Proc::spawn("migrate (unreachable)", cmd);
    let st = p.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(st.code(), Some(1), "{:?}", p.stderr());
    assert!(
        first_line(&p.stderr()).contains("migration failed"),
        "{:?}",
        p.stderr()
    );
}

/// Waits until each kitchen queue has `n` consumers (workers fully started).
async fn wait_consuming(ch: &lapin::Channel, n: u32) {
    eventually(Duration::from_secs(30), "workers consuming", || async {
        let mut ok = true;
        for t in common::OrderType::ALL {
            ok &= queue_counts(ch, &format!("kitchen_{t}_queue")).await.1 == n;
        }
        ok.then_some(())
    })
    .await;
}

fn worker_cmd(env: &TestEnv, name: &str) -> Command {
    let mut cmd = env.command();
    cmd.args([
        "--mode=kitchen-worker",
        &format!("--worker-name={name}"),
        "--heartbeat-interval=1",
    ]);
    cmd
}

/// A second worker with the name of one that is online exits 1 with a one-line
/// explanation; the first keeps working; the name is free again after it stops.
async fn duplicate_online_worker(b: Backend) {
    let env = TestEnv::new(b);
    let ch = env.amqp_with_topology().await;
    let mut first = Proc::spawn("first", worker_cmd(&env, "chef_dup"));
    wait_consuming(&ch, 1).await;

    let mut second = Proc::spawn("second", worker_cmd(&env, "chef_dup"));
    let st = second.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(st.code(), Some(1), "{:?}", second.stderr());
    let err: Vec<String> = second
        .stderr()
        .into_iter()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(err.len(), 1, "one line on stderr: {err:?}");
    assert!(
        err[0].contains("chef_dup") && err[0].contains("already online"),
        "{err:?}"
    );
    assert!(
        err[0].contains("--worker-name"),
        "says how to fix it: {err:?}"
    );
    let log = second
        .wait_log("worker_registration_failed", Duration::from_secs(5), |_| {
            true
        })
        .await;
    assert_eq!(log["level"], "ERROR", "{log}");

    // The first one is unharmed: still running and online.
    assert!(
        first.child.try_wait().unwrap().is_none(),
        "first worker died"
    );
    let store = env.open_store().await;
    let w = store.workers().await.unwrap();
    assert_eq!(w.len(), 1);
    assert!(w[0].is_online(chrono::Utc::now()), "{w:?}");

    first.signal(Signal::SIGINT);
    let st = first.wait_exit(Duration::from_secs(30)).await;
    assert!(st.success(), "SIGINT exit: {st:?} {:?}", first.stderr());
    let w = store.workers().await.unwrap();
    assert_eq!(
        w[0].status,
        "offline",
        "{w:?}\n{}",
        first.stdout().join("\n")
    );

    let mut again = Proc::spawn("again", worker_cmd(&env, "chef_dup"));
    again
        .wait_log("worker_registered", Duration::from_secs(30), |_| true)
        .await;
    assert!(again.stop().await.success());
}

/// A worker killed with SIGKILL (a crash, `systemctl kill -s KILL`, a power
/// cut) and restarted at once finds its row still "online" with a fresh
/// heartbeat: it is accepted, because its liveness lock died with the killed
/// process. A second live worker with that name is still refused (exit 1).
async fn killed_worker_restarts_at_once(b: Backend) {
    let env = TestEnv::new(b);
    let ch = env.amqp_with_topology().await;
    // The default heartbeat (30 s): the killed worker's row stays fresh for a minute.
    let cmd = || {
        let mut c = env.command();
        c.args(["--mode=kitchen-worker", "--worker-name=chef_anna"]);
        c
    };
    let mut first = Proc::spawn("first chef_anna", cmd());
    wait_consuming(&ch, 1).await;
    first.signal(Signal::SIGKILL);
    first.wait_exit(Duration::from_secs(30)).await;
    let store = env.open_store().await;
    let w = store.workers().await.unwrap();
    assert!(
        w[0].is_online(chrono::Utc::now()),
        "the killed worker's row is still online and fresh: {w:?}"
    );

    let mut again = Proc::spawn("restarted chef_anna", cmd());
    let log = again
        .wait_log("worker_registered", Duration::from_secs(30), |_| true)
        .await;
    assert!(
        log["details"]["stale_since"].is_string(),
        "says it took over the dead worker's row: {log}"
    );
    wait_consuming(&ch, 1).await;
    assert!(
        again.child.try_wait().unwrap().is_none(),
        "restarted worker died: {:?}",
        again.stderr()
    );

    let mut dup = Proc::spawn("duplicate chef_anna", cmd());
    let st = dup.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(st.code(), Some(1), "{:?}", dup.stderr());
    assert!(
        dup.stderr().join("\n").contains("already online"),
        "{:?}",
        dup.stderr()
    );
    assert!(
        again.child.try_wait().unwrap().is_none(),
        "the live worker is unharmed"
    );
    assert!(again.stop().await.success());
}

/// A row left "online" by a worker that died (its heartbeat stopped long ago)
/// is taken over by a new worker of that name, with an INFO line saying so.
async fn stale_online_worker_taken_over(b: Backend) {
    let env = TestEnv::new(b);
    let store = env.open_store().await;
    let long_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    let reg = WorkerRegistration {
        name: "chef_crashed".into(),
        order_types: "dine_in,takeout,delivery".into(),
        heartbeat_interval_secs: 30,
        now: long_ago,
        name_lock_held: true,
    };
    assert_eq!(store.register_worker(&reg).await.unwrap(), Registered::New);
    let w = store.workers().await.unwrap();
    assert_eq!(w[0].status, "online", "the crash left the row online");

    // The tracking service already shows it offline: its heartbeat is stale.
    let tracking = env.start(Mode::TrackingService, None).await;
    let http = reqwest::Client::new();
    let url = format!("{}/workers/status", tracking.tracking_url());
    let (_, _, v) = get_json(&http, &url).await;
    assert_eq!(v[0]["status"], "offline", "{v}");

    let mut p = Proc::spawn("new chef_crashed", worker_cmd(&env, "chef_crashed"));
    let log = p
        .wait_log("worker_registered", Duration::from_secs(30), |_| true)
        .await;
    assert_eq!(log["level"], "INFO");
    let text = log.to_string().to_lowercase();
    assert!(
        text.contains("stale") || text.contains("took over") || text.contains("taken over"),
        "the log says the stale row was taken over: {log}"
    );
    assert!(p.child.try_wait().unwrap().is_none(), "{:?}", p.stderr());
    let w = store.workers().await.unwrap();
    assert_eq!(w[0].status, "online");
    assert!(
        w[0].last_seen > long_ago + chrono::Duration::minutes(59),
        "{w:?}"
    );
    let (_, _, v) = get_json(&http, &url).await;
    assert_eq!(v[0]["status"], "online", "{v}");
    assert!(p.stop().await.success());
    tracking.stop().await;
}

/// SIGTERM while an order cooks: the worker stops taking orders, finishes the
/// one in hand (it reaches ready and its notification goes out), leaves the
/// next order queued, marks itself offline and exits 0.
async fn sigterm_mid_cooking(b: Backend) {
    let env = TestEnv::new(b);
    let store = env.open_store().await;
    let ch = env.amqp_with_topology().await;
    let tap = notification_tap(&ch).await;
    // Orders written straight to the store: no other process (and so no other
    // outbox relay) runs, the worker alone publishes and consumes.
    let order = |name: &str| {
        restaurant_system::domain::order::validate(&common::takeout(name, 1, 12.5)).unwrap()
    };
    let first = store
        .create_order(
            &order("First Order"),
            "req-sigterm-1",
            chrono::Utc::now(),
            chrono::Utc::now().date_naive(),
        )
        .await
        .unwrap()
        .order_number;
    let second = store
        .create_order(
            &order("Second Order"),
            "req-sigterm-2",
            chrono::Utc::now(),
            chrono::Utc::now().date_naive(),
        )
        .await
        .unwrap()
        .order_number;

    let mut cmd = worker_cmd(&env, "chef_term");
    cmd.env("RESTAURANT_KITCHEN__COOKING_SECONDS__TAKEOUT", "2");
    let mut p = Proc::spawn("chef_term", cmd);
    let cooking = wait_status(
        &store,
        &first,
        OrderStatus::Cooking,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(cooking.processed_by.as_deref(), Some("chef_term"));
    p.signal(Signal::SIGTERM);
    let st = p.wait_exit(Duration::from_secs(30)).await;
    assert!(st.success(), "exit {st:?}: {:?}", p.stderr());

    let o = store.order(&first).await.unwrap().unwrap();
    assert_eq!(
        o.status,
        OrderStatus::Ready,
        "the order in hand was finished"
    );
    let h: Vec<OrderStatus> = common::statuses(&store, &first).await;
    assert_eq!(
        h,
        [
            OrderStatus::Received,
            OrderStatus::Cooking,
            OrderStatus::Ready
        ]
    );
    let w = store.workers().await.unwrap();
    assert_eq!(w[0].status, "offline");
    assert_eq!(w[0].orders_processed, 1);
    // The next order was not started and is still queued for another worker.
    assert_eq!(
        store.order(&second).await.unwrap().unwrap().status,
        OrderStatus::Received
    );
    assert_eq!(queue_counts(&ch, "kitchen_takeout_queue").await, (1, 0));
    p.wait_log("graceful_shutdown", Duration::from_secs(1), |_| true)
        .await;

    // Its status changes were published before it exited (no relay is left
    // running that could still publish them).
    let outbox = store.outbox_len().await.unwrap();
    let notes: Vec<serde_json::Value> = get_all(&ch, &tap)
        .await
        .iter()
        .map(|d| serde_json::from_slice(&d.data).unwrap())
        .filter(|v: &serde_json::Value| v["order_number"] == first.as_str())
        .collect();
    let changes: Vec<(&str, &str)> = notes
        .iter()
        .map(|v| {
            (
                v["old_status"].as_str().unwrap(),
                v["new_status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        (outbox, changes),
        (0, vec![("received", "cooking"), ("cooking", "ready")]),
        "messages left unpublished in the outbox, and the notifications that went out"
    );
}

/// A worker stopped while it is still starting (RabbitMQ unreachable, so it
/// waits) exits 0 and leaves its row offline: restarting it at once with the
/// same name must not be refused as a duplicate.
async fn sigterm_while_starting(b: Backend) {
    let env = TestEnv::new(b);
    let store = env.open_store().await;
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The default heartbeat (30 s): the row would only look stale after a minute.
    let early = || {
        let mut cmd = env.command();
        cmd.args(["--mode=kitchen-worker", "--worker-name=chef_early"]);
        cmd
    };
    let mut cmd = early();
    cmd.env("RESTAURANT_RABBITMQ__PORT", dead_port.to_string());
    let mut p = Proc::spawn("chef_early", cmd);
    p.wait_log("worker_registered", Duration::from_secs(30), |_| true)
        .await;
    p.wait_log(
        "rabbitmq_connection_failed",
        Duration::from_secs(30),
        |_| true,
    )
    .await;
    p.signal(Signal::SIGTERM);
    let st = p.wait_exit(Duration::from_secs(30)).await;
    assert!(st.success(), "exit {st:?}: {:?}", p.stderr());
    let w = store.workers().await.unwrap();
    assert_eq!(
        w[0].status, "offline",
        "row after stopping during start-up: {w:?}"
    );

    let mut again = Proc::spawn("chef_early again", early());
    let ch = env.amqp_with_topology().await;
    let started = tokio::time::timeout(Duration::from_secs(30), wait_consuming(&ch, 1)).await;
    let exited = again.child.try_wait().unwrap();
    assert!(
        started.is_ok() && exited.is_none(),
        "restart refused: {exited:?} {:?}",
        again.stderr()
    );
    assert!(again.stop().await.success());
}

backend_tests!(
    sigterm_while_starting,
    migrate_subcommand,
    duplicate_online_worker,
    stale_online_worker_taken_over,
    killed_worker_restarts_at_once,
    sigterm_mid_cooking,
);

/// Issue 21: `token create` run as root before any service started (install.md's
/// order) must leave the SQLite files to the owner of the state directory (the
/// services' user), at the units' modes, and hand back a file an older version
/// left to root. Not root: the files are simply the caller's.
#[tokio::test]
async fn database_created_by_root_belongs_to_the_state_owner() {
    use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let root = nix::unistd::Uid::effective().is_root();
    // nobody:nogroup stands for the package's user; any non-root owner will do.
    let (uid, gid) = if root {
        (65534, 65534)
    } else {
        let m = std::fs::metadata(&state).unwrap();
        (m.uid(), m.gid())
    };
    if root {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        chown(&state, Some(uid), Some(gid)).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o750)).unwrap();
    }
    // What an earlier root run left behind.
    let stale = state.join("restaurant.db.worker-x.lock");
    std::fs::write(&stale, "").unwrap();
    std::fs::set_permissions(&stale, std::fs::Permissions::from_mode(0o600)).unwrap();
    let db = state.join("restaurant.db");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nbackend = \"sqlite\"\nsqlite_path = \"{}\"\n",
            db.display()
        ),
    )
    .unwrap();
    let out = bare(dir.path())
        .args(["token", "create", "pos-1", "--role", "pos", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut seen = Vec::new();
    for e in std::fs::read_dir(&state).unwrap().flatten() {
        let m = e.metadata().unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        assert_eq!(
            (m.uid(), m.gid()),
            (uid, gid),
            "{name} is not the state directory owner's"
        );
        if root {
            assert_eq!(m.mode() & 0o777, 0o640, "{name}: mode {:o}", m.mode());
        }
        seen.push(name);
    }
    assert!(seen.iter().any(|n| n == "restaurant.db"), "{seen:?}");
    // The services' user can use it: a second command as that user sees the token.
    let list = bare(dir.path())
        .args(["token", "list", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(list.status.success(), "{list:?}");
    assert!(String::from_utf8_lossy(&list.stdout).contains("pos-1"));
}
