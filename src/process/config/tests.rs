use super::*;

fn load_str(toml: &str) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().map_err(|e| ConfigError::Invalid(e.to_string()))?;
    let p = dir.path().join("c.toml");
    std::fs::write(&p, toml).map_err(|e| ConfigError::Invalid(e.to_string()))?;
    Config::load(Some(&p))
}

/// `toml` is refused, with a message that names `key`.
fn assert_refused(toml: &str, key: &str) {
    let e = load_str(toml).unwrap_err();
    assert!(e.to_string().contains(key), "{e}");
}

#[test]
fn defaults_run_on_sqlite() {
    let c = Config::default();
    assert_eq!(c.database.resolved_backend(), StorageBackend::Sqlite);
    assert!(c.check().is_ok());
}

#[test]
fn auto_picks_postgres_when_a_host_is_set() {
    let c = load_str("[database]\nhost = \"db\"\n").unwrap();
    assert_eq!(c.database.resolved_backend(), StorageBackend::Postgres);
}

#[test]
fn unknown_keys_and_bad_types_name_the_key_and_file() {
    let e = load_str("[database]\nprot = 5432\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("prot"), "{e}");
    assert!(e.contains("c.toml"), "{e}");
    let e = load_str("[rabbitmq]\nport = \"many\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("rabbitmq.port"), "{e}");
}

#[test]
fn tls_to_other_hosts_is_off_by_default_and_checked() {
    let c = Config::default();
    assert_eq!(c.database.sslmode, PgSslMode::Disable);
    assert!(!c.rabbitmq.tls && !c.mqtt.tls);
    let c = load_str(
        "[database]\nhost = \"db.lan\"\nsslmode = \"verify-full\"\nca_file = \"/etc/ca.crt\"\n\
         [rabbitmq]\ntls = true\nca_file = \"/etc/ca.crt\"\n",
    )
    .unwrap();
    assert_eq!(c.database.sslmode, PgSslMode::VerifyFull);
    assert!(c.rabbitmq.tls);
    assert_eq!(
        load_str("[database]\nsslmode = \"verify-ca\"\n")
            .unwrap()
            .database
            .sslmode,
        PgSslMode::VerifyCa
    );
    // require checks no certificate: refused, naming the values that do.
    let e = load_str("[database]\nsslmode = \"require\"\n").unwrap_err();
    assert!(e.to_string().contains("verify-full"), "{e}");
    // In a URL too, with the CA file as libpq names it.
    let c = load_str(
        "[database]\nurl = \"postgres://u@db1:5432,db2:5432/r?target_session_attrs=read-write&sslmode=verify-full&sslrootcert=/etc/db-ca.crt\"\n",
    )
    .unwrap();
    assert_eq!(
        c.database.ssl(),
        (PgSslMode::VerifyFull, PathBuf::from("/etc/db-ca.crt"))
    );
    let pg = c.database.parsed_url().unwrap().unwrap();
    assert_eq!(pg.get_hosts().len(), 2);
    let e = load_str("[database]\nurl = \"postgres://u@db/r?sslmode=require\"\n").unwrap_err();
    assert!(e.to_string().contains("verify-full"), "{e}");
    // prefer (what packaging/multi-box writes) stays as it was: plain.
    let c = load_str("[database]\nurl = \"postgres://u@db/r?sslmode=prefer\"\n").unwrap();
    assert_eq!(c.database.ssl().0, PgSslMode::Disable);
    for toml in [
        "[rabbitmq]\nca_file = \"/etc/ca.crt\"\n",
        "[mqtt]\nca_file = \"/etc/ca.crt\"\n",
        "[database]\nca_file = \"/etc/ca.crt\"\n",
    ] {
        let e = load_str(toml).unwrap_err().to_string();
        assert!(e.contains("ca_file needs"), "{toml}: {e}");
    }
}

#[test]
fn passwords_never_print() {
    let c = load_str("[rabbitmq]\npassword = \"hunter2\"\n").unwrap();
    assert!(!format!("{c:?}").contains("hunter2"));
    assert_eq!(c.rabbitmq.password.expose(), "hunter2");
}

#[test]
fn the_metrics_port_is_off_by_default_and_checked() {
    assert_eq!(Config::default().metrics.port, None);
    let c = load_str("[metrics]\nport = 9464\n").unwrap();
    assert_eq!(c.metrics.port, Some(9464));
    assert_refused("[metrics]\nport = 3000\n", "metrics.port");
    assert!(load_str("[metrics]\nport = 70000\n").is_err());
    assert!(load_str("[metrics]\nprot = 1\n").is_err());
}

#[test]
fn check_rejects_nonsense() {
    let e = load_str("[kitchen.cooking_seconds]\ntakeout = -1\n").unwrap_err();
    assert!(e.to_string().contains("takeout"));
    assert!(load_str("[log]\nlevel = \"loud!!\"\n").is_err());
    for ttl in ["0", "2592001"] {
        assert_refused(
            &format!("[orders]\nidempotency_ttl_seconds = {ttl}\n"),
            "idempotency_ttl_seconds",
        );
    }
    let c = load_str("[orders]\nidempotency_ttl_seconds = 2\n").unwrap();
    assert_eq!(c.orders.idempotency_ttl_seconds, 2);
    assert_eq!(Config::default().orders.idempotency_ttl_seconds, 86_400);
}

#[test]
fn backup_and_retention_are_checked() {
    let d = Config::default();
    assert_eq!((d.backup.keep, d.retention.keep_days), (7, 400));
    assert_eq!(
        load_str("[retention]\nkeep_days = 0\n")
            .unwrap()
            .retention
            .keep_days,
        0,
        "0 keeps orders forever"
    );
    assert_refused("[retention]\nkeep_days = 36501\n", "retention.keep_days");
    assert_refused("[backup]\nkeep = 0\n", "backup.keep");
}

#[test]
fn stations_are_off_by_default_and_checked_when_on() {
    assert_eq!(Config::default().routing(), None);
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/stations.toml"))
            .unwrap();
    let c = load_str(&text).unwrap();
    let r = c.routing().unwrap();
    assert_eq!(r.stations.len(), 3);
    assert_eq!(r.stations[2].red_after_seconds, 240);
    assert!(r.confirm);
    assert_eq!(r.undo, Duration::from_secs(10));
    // A station without thresholds takes the board's.
    let c = load_str("[stations]\ndefault = \"a\"\n[[stations.station]]\nname = \"a\"\n").unwrap();
    let r = c.routing().unwrap();
    assert_eq!(r.stations[0].yellow_after_seconds, 300);
    assert!(!r.confirm);
    for (bad, needle) in [
        (
            text.replace("stations = [\"fry\"]", "stations = [\"fryer\"]"),
            "unknown station 'fryer'",
        ),
        (
            text.replace("default = \"grill\"", "default = \"bar\""),
            "stations.default 'bar'",
        ),
        (
            text.replace("undo_seconds = 10", "undo_seconds = 0"),
            "undo_seconds",
        ),
        (
            "[stations]\ndefault = \"a\"\n".to_string(),
            "need at least one",
        ),
        (
            text.replace("name = \"drinks\"", "name = \"grill\""),
            "configured twice",
        ),
    ] {
        let e = load_str(&bad).unwrap_err().to_string();
        assert!(e.contains(needle), "{needle}: {e}");
    }
}

#[test]
fn the_business_day_is_checked_and_defaults_to_utc_midnight() {
    let d = Config::default().business;
    assert_eq!(
        (d.timezone.as_str(), d.day_starts_at.as_str()),
        ("UTC", "00:00")
    );
    let c = load_str("[business]\ntimezone = \"America/New_York\"\nday_starts_at = \"04:00\"\n")
        .unwrap();
    assert!(c.business.rule().is_ok());
    assert_refused(
        "[business]\ntimezone = \"Mars/Olympus\"\n",
        "business.timezone",
    );
    assert_refused(
        "[business]\nday_starts_at = \"4am\"\n",
        "business.day_starts_at",
    );
}

#[test]
fn addresses_that_do_not_parse_are_errors_not_wider_binds() {
    let e = load_str("[http]\nbind = \"127.0.0.l\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("http.bind") && e.contains("127.0.0.l"), "{e}");
    assert!(load_str("[http]\nbind = \"localhost\"\n").is_err());
    assert!(load_str("[http]\nbind = \"::1\"\n").is_ok());
    assert!(load_str("[mqtt]\nhost = \"\"\n").is_err());
    assert!(load_str("[display]\nmqtt_ws_url = \"http://x:9001\"\n").is_err());
    assert!(load_str("[display]\nmqtt_ws_url = \"ws://x:9001\"\n").is_ok());
    assert!(load_str("[security]\nallowed_origins = [\"pos.local\"]\n").is_err());
    let c = load_str(
        "[security]\nanonymous_loopback = false\nallowed_origins = [\"http://pos.local:8080\"]\n",
    )
    .unwrap();
    assert!(!c.security.anonymous_loopback);
    assert!(Config::default().security.anonymous_loopback);
}

#[test]
fn worker_file_is_optional_and_strict() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        WorkerFile::load(dir.path(), "chef_x").unwrap(),
        WorkerFile::default()
    );
    std::fs::write(
        dir.path().join("chef_x.toml"),
        "order_types = \"dine_in\"\nprefetch = 2\n",
    )
    .unwrap();
    let f = WorkerFile::load(dir.path(), "chef_x").unwrap();
    assert_eq!(
        (f.order_types.as_deref(), f.prefetch),
        (Some("dine_in"), Some(2))
    );
    std::fs::write(dir.path().join("chef_y.toml"), "prefetc = 2\n").unwrap();
    let e = WorkerFile::load(dir.path(), "chef_y")
        .unwrap_err()
        .to_string();
    assert!(e.contains("prefetc") && e.contains("chef_y.toml"), "{e}");
}

#[test]
fn missing_explicit_file_is_an_error() {
    assert!(matches!(
        config_path(Some(Path::new("/nonexistent/x.toml"))),
        Err(ConfigError::Missing(_))
    ));
}

#[test]
fn the_monitor_is_optional_and_checked() {
    let pg = "[database]\nbackend = \"postgres\"\nurl = \"postgres://u@a:5432,b:5432/db?target_session_attrs=read-write\"\n";
    let c = load_str(pg).unwrap();
    assert!(c.cluster.monitor_database().is_none());
    let c = load_str(&format!(
        "{pg}[cluster]\nmonitor = \"postgres://restaurant_monitor@m:5432/pg_auto_failover\"\nmonitor_password = \"hunter2\"\n"
    ))
    .unwrap();
    assert!(!format!("{c:?}").contains("hunter2"));
    let m = c.cluster.monitor_database().unwrap();
    let at = m.parsed_url().unwrap().unwrap();
    assert_eq!(at.get_user(), Some("restaurant_monitor"));
    assert_eq!(at.get_dbname(), Some("pg_auto_failover"));
    assert_eq!(m.password.as_ref().map(Secret::expose), Some("hunter2"));
    for (bad, key) in [
        (
            "monitor = \"postgres://u:pw@m/pg_auto_failover\"",
            "cluster.monitor_password",
        ),
        (
            "monitor = \"postgres://u@m1,m2/pg_auto_failover\"",
            "one host",
        ),
        (
            "monitor = \"http://m\"",
            "cluster.monitor is not a PostgreSQL URL",
        ),
        (
            "monitor = \"postgres://u@m/pg_auto_failover?sslmode=require\"",
            "cluster.monitor: sslmode=require",
        ),
        (
            "monitor_password = \"x\"",
            "cluster.monitor_password needs cluster.monitor",
        ),
    ] {
        assert_refused(&format!("{pg}[cluster]\n{bad}\n"), key);
    }
    // A monitor without PostgreSQL makes no sense.
    assert_refused(
        "[cluster]\nmonitor = \"postgres://u@m/pg_auto_failover\"\n",
        "cluster.monitor needs PostgreSQL",
    );
}
