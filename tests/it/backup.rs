//! Issue 26, item 4: backups that restore. A backup taken by the real binary
//! while orders flow, restored on a fresh box (a new database / file): every
//! order acknowledged before the backup started is there, the copy's integrity
//! holds, and the order service starts on it. Restore refuses while the
//! services use the database.

use crate::common;

use common::{get_json, place_order, post_json, takeout, Backend, TestEnv};
use restaurant_system::modes::Mode;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The orders a load task got 200 for, in the order the answers came.
type Acked = Arc<Mutex<Vec<String>>>;

async fn run_cli(env: &TestEnv, args: Vec<String>) -> std::process::Output {
    let mut cmd = env.command();
    cmd.args(args);
    tokio::task::spawn_blocking(move || cmd.output().expect("running the binary"))
        .await
        .unwrap()
}

/// The restored database's order numbers, and its integrity as the test sees
/// it: SQLite's integrity check, every order with its item and history.
fn inspect(env: &TestEnv) -> BTreeSet<String> {
    let orphans = "select (select count(*) from orders o where not exists \
         (select 1 from order_items i where i.order_id = o.id)) + \
         (select count(*) from orders o where not exists \
         (select 1 from order_status_log l where l.order_id = o.id))";
    match env.backend {
        Backend::Sqlite => {
            let c = rusqlite::Connection::open(&env.cfg.database.sqlite_path).unwrap();
            let ok: String = c
                .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                .unwrap();
            assert_eq!(ok, "ok");
            let n: i64 = c.query_row(orphans, [], |r| r.get(0)).unwrap();
            assert_eq!(n, 0, "orders without their item or history");
            let mut st = c.prepare("select number from orders").unwrap();
            let rows = st.query_map([], |r| r.get::<_, String>(0)).unwrap();
            rows.map(Result::unwrap).collect()
        }
        Backend::Postgres => {
            let db = env.pg_db.as_deref().unwrap();
            assert_eq!(common::pg_query(db, orphans).unwrap(), "0");
            common::pg_query(db, "select number from orders")
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect()
        }
    }
}

async fn backup_under_load_restores_on_a_fresh_box(b: Backend) {
    let env = TestEnv::new(b);
    let app = env.start(Mode::OrderService, None).await;
    let url = app.order_url();
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Default::default();
    let mut load = Vec::new();
    for t in 0..4 {
        let (url, stop, acked) = (url.clone(), stop.clone(), acked.clone());
        load.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let name = ["Ann Load", "Bob Load", "Cy Load", "Di Load"][t];
            while !stop.load(Ordering::Relaxed) {
                let n = place_order(&http, &url, &takeout(name, 1, 9.5)).await;
                acked.lock().unwrap().push(n);
            }
        }));
    }
    let count = || acked.lock().unwrap().len();
    common::eventually(
        Duration::from_secs(60),
        "100 orders before the backup",
        || async { (count() >= 100).then_some(()) },
    )
    .await;

    // Everything acknowledged up to here must be in the copy.
    let before: Vec<String> = acked.lock().unwrap().clone();
    let file = env.dir.path().join("copy.backup");
    let out = run_cli(&env, vec!["backup".into(), file.display().to_string()]).await;
    assert!(out.status.success(), "backup: {out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("backup written"), "{said}");
    // Intake went on through the backup: more orders after it.
    let after_backup = count();
    common::eventually(
        Duration::from_secs(60),
        "orders after the backup",
        || async { (count() >= after_backup + 20).then_some(()) },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert!(
        file.exists() && !env.dir.path().join("copy.backup.partial").exists(),
        "the copy is under its name, no partial file left"
    );

    // Restore refuses while the service uses the database, and leaves it alone.
    let total = count();
    let out = run_cli(&env, vec!["restore".into(), file.display().to_string()]).await;
    assert_eq!(out.status.code(), Some(3), "restore while running: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("in use") && err.contains("stop the services"),
        "{err}"
    );
    app.stop().await;
    assert_eq!(inspect(&env).len(), total, "the live database is untouched");

    // A fresh box: its own database, restored from the copy.
    let fresh = TestEnv::new(b);
    let out = run_cli(&fresh, vec!["restore".into(), file.display().to_string()]).await;
    assert!(out.status.success(), "restore: {out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("integrity checked"), "{said}");
    let restored = inspect(&fresh);
    let missing: Vec<_> = before.iter().filter(|n| !restored.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} orders acknowledged before the backup are missing: {missing:?}",
        missing.len(),
        before.len()
    );
    assert!(restored.len() <= total, "no order the service never took");
    println!(
        "{b:?}: {} orders acknowledged before the backup, {} in the restored copy, {total} taken in all",
        before.len(),
        restored.len()
    );
    assert!(
        said.contains(&format!("{} orders", restored.len())),
        "the summary counts the restored orders: {said}"
    );

    // The services start on it: an old order reads back, a new one is taken
    // with a number of its own.
    let app = fresh.start(Mode::OrderService, None).await;
    let tracking = fresh.start(Mode::TrackingService, None).await;
    let http = reqwest::Client::new();
    let (status, _, v) = get_json(
        &http,
        &format!("{}/orders/{}", tracking.tracking_url(), before[0]),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let (status, _, v) = post_json(
        &http,
        &format!("{}/orders", app.order_url()),
        &takeout("After restore", 2, 4.0),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let n = v["order_number"].as_str().unwrap().to_string();
    assert!(!restored.contains(&n), "{n} was already taken");
    tracking.stop().await;
    app.stop().await;
}

backend_tests!(backup_under_load_restores_on_a_fresh_box);

/// `backup` without a file writes dated copies into `[backup] directory` and
/// keeps the newest `[backup] keep`; a restore of something that is not a
/// backup of this backend is refused before anything is touched.
async fn dated_copies_are_pruned_and_foreign_files_refused(b: Backend) {
    let env = TestEnv::new(b);
    env.open_store().await;
    let dir = env.dir.path().join("backups");
    let mut names = Vec::new();
    for _ in 0..3 {
        let mut cmd = env.command();
        cmd.arg("backup")
            .env("RESTAURANT_BACKUP__DIRECTORY", dir.display().to_string())
            .env("RESTAURANT_BACKUP__KEEP", "2");
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let mut now: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        now.sort();
        names.push(now);
        // Dated to the second.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    assert_eq!(names[0].len(), 1);
    assert_eq!(names[1].len(), 2);
    assert_eq!(names[2].len(), 2, "{:?}", names[2]);
    assert!(!names[2].contains(&names[0][0]), "the oldest went first");

    let junk = env.dir.path().join("junk");
    std::fs::write(&junk, "not a backup at all").unwrap();
    let out = run_cli(&env, vec!["restore".into(), junk.display().to_string()]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a"));
}

backend_tests!(dated_copies_are_pruned_and_foreign_files_refused);

/// Run as root (the technician's `restaurant-system backup`), the copies belong
/// to the owner of the state directory (the services' user), at 0640, so the
/// nightly unit can prune them later. Not root: simply the caller's.
#[tokio::test]
async fn root_made_backups_belong_to_the_state_owner() {
    use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let root = nix::unistd::Uid::effective().is_root();
    let (uid, gid) = if root {
        (65534, 65534)
    } else {
        let m = std::fs::metadata(&state).unwrap();
        (m.uid(), m.gid())
    };
    if root {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        chown(&state, Some(uid), Some(gid)).unwrap();
    }
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nbackend = \"sqlite\"\nsqlite_path = \"{}\"\n[backup]\ndirectory = \"{}\"\n",
            state.join("restaurant.db").display(),
            state.join("backups").display()
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_restaurant-system");
    for args in [&["migrate"][..], &["backup"][..]] {
        let out = std::process::Command::new(bin)
            .args(args)
            .arg("--config")
            .arg(&config)
            .env_clear()
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    let backups = state.join("backups");
    let m = std::fs::metadata(&backups).unwrap();
    assert_eq!((m.uid(), m.gid()), (uid, gid), "the backup directory");
    let copies: Vec<_> = std::fs::read_dir(&backups).unwrap().flatten().collect();
    assert_eq!(copies.len(), 1);
    let m = copies[0].metadata().unwrap();
    assert_eq!((m.uid(), m.gid()), (uid, gid), "{:?}", copies[0].path());
    assert_eq!(m.mode() & 0o777, 0o640);
}
