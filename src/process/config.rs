//! Configuration: built-in defaults < config file < environment < command-line flags.
//!
//! The file is TOML (`config.toml`); a path ending in `.yaml`/`.yml` is read as the
//! spec's `config.yaml`, with the same keys. Environment variables are the spec's
//! `DB_*` and `RABBITMQ_*` names plus `RESTAURANT_<SECTION>__<KEY>` for everything.
//! Unknown keys are errors, so a typo never silently falls back to a default.

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the packaged daemon reads its config.
pub const SYSTEM_CONFIG: &str = "/etc/restaurant-system/config.toml";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub database: DatabaseConfig,
    pub rabbitmq: RabbitConfig,
    pub mqtt: MqttConfig,
    pub display: DisplayConfig,
    pub kitchen: KitchenConfig,
    pub orders: OrdersConfig,
    pub business: BusinessConfig,
    pub backup: BackupConfig,
    pub retention: RetentionConfig,
    pub http: HttpConfig,
    pub security: SecurityConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub stations: StationsConfig,
    pub expo: ExpoConfig,
    pub tls: TlsConfig,
    pub cluster: ClusterConfig,
}

/// Several boxes serving one kitchen (docs/multi-box.md).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Host names or addresses of every box, this one included; empty: one box.
    pub boxes: Vec<String>,
}

/// A password: never printed by `Debug` or `Display`, so it cannot reach a log line.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The only way to read the value: call it where the password is handed to a client.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        lenient_string(d).map(Secret)
    }
}

/// Accepts a string, or a number/bool written without quotes (an env var such as
/// `DB_PASSWORD=1234` arrives as a number).
fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        S(String),
        I(i64),
        F(f64),
        B(bool),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::S(s) => s,
        Raw::I(i) => i.to_string(),
        Raw::F(f) => f.to_string(),
        Raw::B(b) => b.to_string(),
    })
}

/// Prometheus metrics (issue 14, docs/metrics.md). Every HTTP service answers
/// `GET /metrics` on its own port; `port` gives the modes without one (a
/// kitchen worker, the notifier) a listener for `/metrics` and `/health`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Off when absent (the default): such a mode listens on no port.
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    Auto,
    Postgres,
    Sqlite,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// auto: PostgreSQL when `host` is set, else SQLite.
    pub backend: StorageBackend,
    pub host: Option<String>,
    pub port: u16,
    #[serde(deserialize_with = "lenient_string")]
    pub user: String,
    pub password: Option<Secret>,
    #[serde(deserialize_with = "lenient_string")]
    pub database: String,
    pub sqlite_path: PathBuf,
    pub pool_size: usize,
    /// A PostgreSQL URL, instead of host and port: several hosts for a
    /// cluster that fails over (`postgres://u@b1:5432,b2:5432/db?target_session_attrs=read-write`).
    /// The password stays in `password`, never in the URL.
    pub url: Option<String>,
    /// TLS to a PostgreSQL on another host (issue 27); loopback stays plain.
    /// A URL's `sslmode` and `sslrootcert` take the place of these two.
    pub sslmode: PgSslMode,
    /// The CA (PEM) that signed the server's certificate; empty: the system's CAs.
    pub ca_file: PathBuf,
}

/// libpq's `sslmode`, the values that protect against someone on the LAN:
/// `prefer` and `require` check no certificate, so they are not offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PgSslMode {
    Disable,
    /// The server's certificate must chain to `ca_file`; its name is not checked.
    VerifyCa,
    /// As `verify-ca`, and the certificate must name `host`.
    VerifyFull,
}

/// Takes `sslmode=verify-ca|verify-full` and `sslrootcert` out of a
/// PostgreSQL URL: tokio-postgres 0.7 refuses them, and we implement them
/// ourselves (`storage::postgres::tls`). The modes it knows stay in the URL
/// for it, as before: `disable`, and `prefer`, which without a TLS connector
/// is plain (what packaging/multi-box writes); `require` fails without one.
fn split_url_tls(url: &str) -> Result<(String, Option<PgSslMode>, Option<PathBuf>), ConfigError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), None, None));
    };
    let (mut mode, mut ca, mut kept) = (None, None, Vec::new());
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("sslmode", "verify-ca")) => mode = Some(PgSslMode::VerifyCa),
            Some(("sslmode", "verify-full")) => mode = Some(PgSslMode::VerifyFull),
            Some(("sslmode", "require")) => {
                return Err(ConfigError::Invalid(
                    "database.url: sslmode=require checks no certificate: use verify-full \
                     (with sslrootcert=CA file) to a server on another host"
                        .into(),
                ))
            }
            Some(("sslrootcert", v)) => ca = Some(PathBuf::from(v)),
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, mode, ca))
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            backend: StorageBackend::Auto,
            host: None,
            port: 5432,
            user: "restaurant_user".into(),
            password: None,
            database: "restaurant_db".into(),
            sqlite_path: "/var/lib/restaurant-system/restaurant.db".into(),
            pool_size: 16,
            url: None,
            sslmode: PgSslMode::Disable,
            ca_file: PathBuf::new(),
        }
    }
}

impl DatabaseConfig {
    /// The backend actually used: `auto` resolved.
    pub fn resolved_backend(&self) -> StorageBackend {
        match self.backend {
            StorageBackend::Auto if self.postgres_named() => StorageBackend::Postgres,
            StorageBackend::Auto => StorageBackend::Sqlite,
            other => other,
        }
    }

    /// A PostgreSQL server is named, by `host` or by `url`.
    fn postgres_named(&self) -> bool {
        let set = |v: &Option<String>| v.as_deref().is_some_and(|h| !h.trim().is_empty());
        set(&self.host) || set(&self.url)
    }

    /// The URL parsed, when one is set.
    pub fn parsed_url(&self) -> Result<Option<tokio_postgres::Config>, ConfigError> {
        let Some(url) = self.url.as_deref().filter(|u| !u.trim().is_empty()) else {
            return Ok(None);
        };
        let (url, _, _) = split_url_tls(url)?;
        let pg: tokio_postgres::Config = url.parse().map_err(|e| {
            ConfigError::Invalid(format!("database.url is not a PostgreSQL URL: {e}"))
        })?;
        if pg.get_password().is_some() {
            return Err(ConfigError::Invalid(
                "database.url must not carry the password: put it in database.password".into(),
            ));
        }
        Ok(Some(pg))
    }

    /// The TLS our connections take: the URL's `sslmode` and `sslrootcert`
    /// when it has them, else `sslmode` and `ca_file`. (A URL that does not
    /// parse was refused when the config was loaded.)
    pub fn ssl(&self) -> (PgSslMode, PathBuf) {
        let from_url = self
            .url
            .as_deref()
            .and_then(|u| split_url_tls(u).ok())
            .map(|(_, mode, ca)| (mode, ca))
            .unwrap_or_default();
        (
            from_url.0.unwrap_or(self.sslmode),
            from_url.1.unwrap_or_else(|| self.ca_file.clone()),
        )
    }

    /// What the PostgreSQL tools take as `--dbname`: the URL (which names the
    /// hosts too, over `--host`) when one is set, else the database's name.
    pub fn dbname_arg(&self) -> String {
        match self.url.as_deref().filter(|u| !u.trim().is_empty()) {
            Some(url) => url.to_string(),
            None => self.database.clone(),
        }
    }

    /// Where the database is, for messages (never with the password).
    pub fn place(&self) -> String {
        match self.url.as_deref().filter(|u| !u.trim().is_empty()) {
            Some(url) => url.to_string(),
            None => format!(
                "database {} on {}:{}",
                self.database,
                self.host.as_deref().unwrap_or("localhost"),
                self.port
            ),
        }
    }

    /// Why that backend was chosen, for the start-up log line.
    pub fn backend_reason(&self) -> &'static str {
        match (self.backend, self.resolved_backend()) {
            (StorageBackend::Auto, StorageBackend::Postgres) => {
                "backend = auto and a PostgreSQL host is configured"
            }
            (StorageBackend::Auto, _) => "backend = auto and no PostgreSQL host is configured",
            _ => "backend set explicitly in config",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RabbitConfig {
    pub host: String,
    pub port: u16,
    #[serde(deserialize_with = "lenient_string")]
    pub user: String,
    pub password: Secret,
    #[serde(deserialize_with = "lenient_string")]
    pub vhost: String,
    /// The kind of queue that holds orders and status changes.
    pub queue_type: QueueType,
    /// amqps:// (issue 27), for a broker on another host: TLS to `port`
    /// (RabbitMQ's TLS listener, usually 5671), the broker's name checked.
    pub tls: bool,
    /// The CA (PEM) that signed the broker's certificate; empty: the system's CAs.
    pub ca_file: PathBuf,
}

/// Classic queues live on one node; quorum queues are replicated over a
/// RabbitMQ cluster and survive the loss of a minority of its nodes.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    #[default]
    Classic,
    Quorum,
}

impl Default for RabbitConfig {
    fn default() -> Self {
        RabbitConfig {
            host: "localhost".into(),
            port: 5672,
            user: "guest".into(),
            password: Secret::new("guest"),
            vhost: "/".into(),
            queue_type: QueueType::Classic,
            tls: false,
            ca_file: PathBuf::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// `--mode=all` runs the display bridge only when this is true.
    pub enabled: bool,
    pub host: String,
    pub port: u16,
    #[serde(deserialize_with = "lenient_string")]
    pub site: String,
    pub topic_prefix: String,
    #[serde(deserialize_with = "lenient_string")]
    pub client_id: String,
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// How long a completed or cancelled order stays on the board.
    pub clear_after_seconds: f64,
    /// MQTT over TLS (issue 27), for a broker on another host.
    pub tls: bool,
    /// The CA (PEM) that signed the broker's certificate; empty: the system's CAs.
    pub ca_file: PathBuf,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            enabled: true,
            host: "localhost".into(),
            port: 1883,
            site: "main".into(),
            topic_prefix: "restaurant".into(),
            client_id: "restaurant-display-bridge".into(),
            user: None,
            password: None,
            clear_after_seconds: 30.0,
            tls: false,
            ca_file: PathBuf::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DisplayConfig {
    /// The WebSocket URL screens use for Mosquitto; empty: same host as the
    /// page, port `mqtt_ws_port`.
    pub mqtt_ws_url: String,
    /// Mosquitto's WebSockets port, when `mqtt_ws_url` is empty.
    pub mqtt_ws_port: u16,
    /// Where the page sends bump and recall; empty: same host as the page, port 3000.
    pub order_service_url: String,
    pub yellow_after_seconds: u64,
    pub red_after_seconds: u64,
    /// The broker's read-only account for screens; given only to paired pages.
    #[serde(deserialize_with = "lenient_string")]
    pub mqtt_username: String,
    pub mqtt_password: Option<Secret>,
    /// A ready order nobody bumps is completed after this many minutes (0:
    /// never; issue 26, `services::closer`).
    pub auto_complete_after_minutes: u64,
}

impl Default for DisplayConfig {
    fn default() -> Self {
        DisplayConfig {
            mqtt_ws_url: String::new(),
            mqtt_ws_port: 9001,
            order_service_url: String::new(),
            yellow_after_seconds: 300,
            red_after_seconds: 480,
            mqtt_username: String::new(),
            mqtt_password: None,
            auto_complete_after_minutes: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KitchenConfig {
    pub cooking_seconds: CookingSeconds,
    /// Per-worker settings: `<workers_dir>/<worker name>.toml` (see `WorkerFile`).
    pub workers_dir: PathBuf,
}

impl Default for KitchenConfig {
    fn default() -> Self {
        KitchenConfig {
            cooking_seconds: CookingSeconds::default(),
            workers_dir: "/etc/restaurant-system/kitchen".into(),
        }
    }
}

/// Optional settings of one kitchen worker, e.g. `/etc/restaurant-system/kitchen/chef_mario.toml`
/// for `restaurant-kitchen@chef_mario`. Flags (and their environment variables) win.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorkerFile {
    /// Comma-separated, as `--order-types`.
    pub order_types: Option<String>,
    pub prefetch: Option<u16>,
    pub heartbeat_interval: Option<u64>,
}

impl WorkerFile {
    /// Reads `<dir>/<name>.toml`; a missing file means no settings.
    pub fn load(dir: &Path, name: &str) -> Result<WorkerFile, ConfigError> {
        let path = dir.join(format!("{name}.toml"));
        if !path.is_file() {
            return Ok(WorkerFile::default());
        }
        Figment::from(Toml::file_exact(&path))
            .extract()
            .map_err(|e| ConfigError::Invalid(describe(e)))
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CookingSeconds {
    pub dine_in: f64,
    pub takeout: f64,
    pub delivery: f64,
}

impl Default for CookingSeconds {
    fn default() -> Self {
        CookingSeconds {
            dine_in: 8.0,
            takeout: 10.0,
            delivery: 12.0,
        }
    }
}

impl CookingSeconds {
    pub fn for_type(&self, t: crate::domain::OrderType) -> Duration {
        use crate::domain::OrderType::*;
        let secs = match t {
            DineIn => self.dine_in,
            Takeout => self.takeout,
            Delivery => self.delivery,
        };
        Duration::from_secs_f64(secs.max(0.0))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub bind: String,
    pub order_port: u16,
    pub tracking_port: u16,
    pub bridge_port: u16,
    pub max_concurrent: usize,
    /// How long a request over `max_concurrent` waits for a slot before its 503.
    pub queue_timeout_ms: u64,
    /// Open connections per listener; more get a 503 and are closed.
    pub max_connections: usize,
    pub body_limit_bytes: usize,
    /// Slow or idle clients are dropped after this long.
    pub request_timeout_seconds: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            bind: "0.0.0.0".into(),
            order_port: 3000,
            tracking_port: 3002,
            bridge_port: 3003,
            max_concurrent: 50,
            queue_timeout_ms: 2000,
            max_connections: 1024,
            body_limit_bytes: 64 * 1024,
            request_timeout_seconds: 10,
        }
    }
}

/// The drop-in files of a config file: `conf.d/*.toml` in its folder, sorted.
fn drop_ins(file: &Path) -> Vec<PathBuf> {
    let Some(dir) = file.parent().map(|d| d.join("conf.d")) else {
        return Vec::new();
    };
    let mut parts: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect()
        })
        .unwrap_or_default();
    parts.sort();
    parts
}

/// HTTPS on the listeners (issue 27, `crate::tls`, docs/security.md).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Plain HTTP (the default; an upgraded install keeps it until turned on).
    #[default]
    Off,
    /// The box's own CA signs a certificate for its names and addresses.
    SelfSigned,
    /// The restaurant's own certificate and key (`cert_file`, `key_file`).
    Files,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub mode: TlsMode,
    /// Where the self-signed mode keeps its CA and certificate.
    pub dir: PathBuf,
    /// The chain (server certificate first) and key, PEM, for `files`.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Names the self-signed certificate carries besides the host name and addresses.
    pub names: Vec<String>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            mode: TlsMode::Off,
            dir: "/var/lib/restaurant-system/tls".into(),
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            names: Vec::new(),
        }
    }
}

/// Order intake (issue 14).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OrdersConfig {
    /// How long an `Idempotency-Key` is remembered: a retry with the same key
    /// within this time gets the original answer (default 24 h).
    pub idempotency_ttl_seconds: u64,
}

impl Default for OrdersConfig {
    fn default() -> Self {
        OrdersConfig {
            idempotency_ttl_seconds: 86_400,
        }
    }
}

/// `restaurant-system backup` without a file, as the nightly
/// `restaurant-backup.timer` runs it (issue 26): where the copies go and how
/// many are kept.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    /// The directory of the dated copies (created when missing).
    pub directory: PathBuf,
    /// How many of them are kept: the oldest beyond that are removed after a
    /// new copy is written and checked.
    pub keep: u32,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            directory: "/var/lib/restaurant-system/backups".into(),
            keep: 7,
        }
    }
}

/// How long orders are kept (issue 26): older ones are deleted by the order
/// service's daily purge, so the database never fills the disk.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Orders created more than this many days ago are deleted, with
    /// everything that belongs to them; 0 keeps every order forever.
    pub keep_days: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig { keep_days: 400 }
    }
}

/// The restaurant's business day (issue 26, `domain::business_day`): the order
/// number's date and the speed report's default range.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BusinessConfig {
    /// An IANA time zone name ("America/New_York").
    pub timezone: String,
    /// When the day changes, in that time zone: "HH:MM".
    pub day_starts_at: String,
}

impl Default for BusinessConfig {
    /// The seed's rule: the day changes at midnight UTC.
    fn default() -> Self {
        BusinessConfig {
            timezone: "UTC".into(),
            day_starts_at: "00:00".into(),
        }
    }
}

impl BusinessConfig {
    /// The rule, with the time zone looked up in the system's database (the
    /// copy built into the binary when the box has none).
    pub fn rule(&self) -> Result<crate::domain::business_day::BusinessDay, ConfigError> {
        use crate::domain::business_day::BusinessDay;
        let tz = jiff::tz::TimeZone::get(self.timezone.trim()).map_err(|_| {
            ConfigError::Invalid(format!(
                "business.timezone '{}' is not an IANA time zone name (e.g. America/New_York, Europe/Paris, UTC)",
                self.timezone
            ))
        })?;
        let start = BusinessDay::parse_start(&self.day_starts_at)
            .map_err(|e| ConfigError::Invalid(format!("business.day_starts_at: {e}")))?;
        Ok(BusinessDay::new(tz, start))
    }
}

/// The longest `orders.idempotency_ttl_seconds` accepted: 30 days.
pub const MAX_IDEMPOTENCY_TTL: u64 = 30 * 86_400;
/// The longest `retention.keep_days` (100 years); 0 keeps orders forever.
pub const MAX_KEEP_DAYS: u32 = 36_500;

/// Who may call the HTTP APIs (issue 11, docs/security.md).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Requests from the box itself (loopback) need no token. Everything else
    /// always needs `Authorization: Bearer TOKEN`.
    pub anonymous_loopback: bool,
    /// Web page origins (`scheme://host[:port]`) allowed to call the APIs from a
    /// browser, besides the box's own display page (tracking port, same host).
    pub allowed_origins: Vec<String>,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            anonymous_loopback: true,
            allowed_origins: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// journald when started by systemd (JOURNAL_STREAM set), JSON otherwise.
    Auto,
    Json,
    Journald,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Auto,
        }
    }
}

/// `[stations]` (issue 24, docs/stations.md): none configured, no stations.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StationsConfig {
    /// Where items no rule matches go.
    pub default: Option<String>,
    /// How long a bump can be taken back.
    pub undo_seconds: u64,
    pub station: Vec<StationConfig>,
    pub rule: Vec<RuleConfig>,
}

impl Default for StationsConfig {
    fn default() -> Self {
        StationsConfig {
            default: None,
            undo_seconds: 10,
            station: Vec::new(),
            rule: Vec::new(),
        }
    }
}

/// `[[stations.station]]`: thresholds default to `[display]`'s.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StationConfig {
    pub name: String,
    pub yellow_after_seconds: Option<u64>,
    pub red_after_seconds: Option<u64>,
}

/// `[[stations.rule]]`: first match wins.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub category: Option<String>,
    pub item: Option<String>,
    #[serde(default)]
    pub stations: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ExpoConfig {
    /// The order becomes ready only when the expo confirms it.
    pub confirm: bool,
}

/// A config problem, reported with the file and key; exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Which file to read: the one given, else the system file when present, else
/// `./config.toml` when present, else none (defaults and environment only).
pub fn config_path(explicit: Option<&Path>) -> Result<Option<PathBuf>, ConfigError> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(Some(p.to_path_buf()))
        } else {
            Err(ConfigError::Missing(p.to_path_buf()))
        };
    }
    Ok([Path::new(SYSTEM_CONFIG), Path::new("config.toml")]
        .into_iter()
        .find(|p| p.is_file())
        .map(Path::to_path_buf))
}

/// The spec's plain environment variable names and the keys they set.
const SPEC_ENV: [(&str, &str); 9] = [
    ("DB_HOST", "database.host"),
    ("DB_PORT", "database.port"),
    ("DB_USER", "database.user"),
    ("DB_PASSWORD", "database.password"),
    ("DB_NAME", "database.database"),
    ("RABBITMQ_HOST", "rabbitmq.host"),
    ("RABBITMQ_PORT", "rabbitmq.port"),
    ("RABBITMQ_USER", "rabbitmq.user"),
    ("RABBITMQ_PASSWORD", "rabbitmq.password"),
];

impl Config {
    /// The kitchen's stations and routing, or None when no station is configured.
    pub fn routing(&self) -> Option<crate::domain::stations::Routing> {
        use crate::domain::stations::{Routing, Rule, Station};
        let st = &self.stations;
        if st.station.is_empty() {
            return None;
        }
        Some(Routing {
            stations: st
                .station
                .iter()
                .map(|s| Station {
                    name: s.name.clone(),
                    yellow_after_seconds: s
                        .yellow_after_seconds
                        .unwrap_or(self.display.yellow_after_seconds),
                    red_after_seconds: s
                        .red_after_seconds
                        .unwrap_or(self.display.red_after_seconds),
                })
                .collect(),
            rules: st
                .rule
                .iter()
                .map(|r| Rule {
                    category: r.category.clone(),
                    item: r.item.clone(),
                    stations: r.stations.clone(),
                })
                .collect(),
            default: st.default.clone().unwrap_or_default(),
            undo: Duration::from_secs(st.undo_seconds),
            confirm: self.expo.confirm,
        })
    }

    /// Loads defaults < file < environment. Flags are applied by the caller.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            let yaml = matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            );
            fig = if yaml {
                fig.merge(YamlFile(path.to_path_buf()))
            } else {
                fig.merge(Toml::file_exact(path))
            };
            // conf.d/*.toml beside the file, in name order, over it: settings the
            // package writes once at installation (the .deb's postinst turns TLS
            // on for new installs there, since it may not edit config.toml).
            for part in drop_ins(path) {
                fig = fig.merge(Toml::file_exact(part));
            }
        }
        let spec_env = Env::raw().filter_map(|k| {
            SPEC_ENV
                .iter()
                .find(|(name, _)| k == *name)
                .map(|(_, key)| (*key).into())
        });
        fig = fig
            .merge(spec_env)
            // Only nested keys (SECTION__KEY): RESTAURANT_WORKER_* and
            // RESTAURANT_CONFIG are flags' environment variables, not config keys.
            .merge(
                Env::prefixed("RESTAURANT_")
                    .filter(|k| k.as_str().contains("__"))
                    .split("__"),
            );
        let cfg: Config = fig
            .extract()
            .map_err(|e| ConfigError::Invalid(describe(e)))?;
        cfg.check()?;
        Ok(cfg)
    }

    /// More than one box serves this kitchen, or its queues are made to survive one.
    pub fn multi_box(&self) -> bool {
        self.cluster.boxes.len() >= 2 || self.rabbitmq.queue_type == QueueType::Quorum
    }

    /// Rules that parse fine but make no sense.
    pub fn check(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.tls.mode == TlsMode::Files
            && (self.tls.cert_file.as_os_str().is_empty()
                || self.tls.key_file.as_os_str().is_empty())
        {
            return bad("tls.mode = \"files\" needs tls.cert_file and tls.key_file".into());
        }
        if self.tls.mode == TlsMode::SelfSigned && self.tls.dir.as_os_str().is_empty() {
            return bad("tls.dir must not be empty".into());
        }
        // A CA file with TLS off is a half-made setting: say so rather than
        // talk in clear to a server the operator meant to verify.
        for (key, set, on) in [
            (
                "rabbitmq.ca_file needs rabbitmq.tls = true",
                &self.rabbitmq.ca_file,
                self.rabbitmq.tls,
            ),
            (
                "mqtt.ca_file needs mqtt.tls = true",
                &self.mqtt.ca_file,
                self.mqtt.tls,
            ),
            (
                "database.ca_file needs database.sslmode = \"verify-full\" (or \"verify-ca\")",
                &self.database.ca_file,
                self.database.ssl().0 != PgSslMode::Disable,
            ),
        ] {
            if !set.as_os_str().is_empty() && !on {
                return bad(key.into());
            }
        }
        self.business.rule()?;
        if self.database.resolved_backend() == StorageBackend::Postgres
            && !self.database.postgres_named()
        {
            return bad(
                "database.backend = \"postgres\" needs database.host or database.url".into(),
            );
        }
        self.database.parsed_url()?;
        if self.database.resolved_backend() == StorageBackend::Sqlite
            && self.database.sqlite_path.as_os_str().is_empty()
        {
            return bad("database.sqlite_path must not be empty".into());
        }
        if self.multi_box() && self.database.resolved_backend() == StorageBackend::Sqlite {
            return bad(
                "a multi-box configuration (cluster.boxes with 2 or more boxes, or rabbitmq.queue_type = \"quorum\") needs PostgreSQL: SQLite lives on one box (set database.backend = \"postgres\" and database.host or database.url)"
                    .into(),
            );
        }
        for b in &self.cluster.boxes {
            if b.trim().is_empty() || b.contains(|c: char| c.is_whitespace() || "/@?#".contains(c))
            {
                return bad(format!(
                    "cluster.boxes: '{b}' is not a host name or address"
                ));
            }
        }
        if self.database.pool_size == 0 {
            return bad("database.pool_size must be at least 1".into());
        }
        // An address that does not parse must never become a wider bind.
        if self.http.bind.trim().parse::<std::net::IpAddr>().is_err() {
            return bad(format!(
                "http.bind '{}' is not an IP address (use 127.0.0.1 for this box only, 0.0.0.0 for every interface)",
                self.http.bind
            ));
        }
        for (key, host) in [
            ("rabbitmq.host", self.rabbitmq.host.as_str()),
            ("mqtt.host", self.mqtt.host.as_str()),
        ] {
            if host.trim().is_empty()
                || host.contains(|c: char| c.is_whitespace() || "/@?#".contains(c))
            {
                return bad(format!("{key} '{host}' is not a host name or address"));
            }
        }
        for (key, url, schemes) in [
            (
                "display.mqtt_ws_url",
                &self.display.mqtt_ws_url,
                ["ws://", "wss://"],
            ),
            (
                "display.order_service_url",
                &self.display.order_service_url,
                ["http://", "https://"],
            ),
        ] {
            let u = url.to_ascii_lowercase();
            if !u.is_empty()
                && (!schemes.iter().any(|s| u.starts_with(s)) || u.contains(char::is_whitespace))
            {
                return bad(format!(
                    "{key} '{url}' must start with {} or {}",
                    schemes[0], schemes[1]
                ));
            }
        }
        for o in &self.security.allowed_origins {
            if crate::domain::access::parse_origin(o).is_none() {
                return bad(format!(
                    "security.allowed_origins: '{o}' is not an origin (scheme://host[:port], e.g. http://pos.local:8080)"
                ));
            }
        }
        if self.display.mqtt_password.is_some() && self.display.mqtt_username.is_empty() {
            return bad("display.mqtt_password needs display.mqtt_username".into());
        }
        if let Some(p) = self.metrics.port.filter(|p| *p != 0) {
            for (key, port) in [
                ("http.order_port", self.http.order_port),
                ("http.tracking_port", self.http.tracking_port),
                ("http.bridge_port", self.http.bridge_port),
            ] {
                if port == p {
                    return bad(format!(
                        "metrics.port {p} is also {key}: give the metrics listener a port of its own"
                    ));
                }
            }
        }
        if !(1..=MAX_IDEMPOTENCY_TTL).contains(&self.orders.idempotency_ttl_seconds) {
            return bad(format!(
                "orders.idempotency_ttl_seconds must be between 1 and {MAX_IDEMPOTENCY_TTL} (30 days), got {}",
                self.orders.idempotency_ttl_seconds
            ));
        }
        if self.backup.keep == 0 || self.backup.directory.as_os_str().is_empty() {
            return bad(
                "backup.keep must be at least 1 and backup.directory must not be empty".into(),
            );
        }
        if self.retention.keep_days > MAX_KEEP_DAYS {
            return bad(format!(
                "retention.keep_days must be at most {MAX_KEEP_DAYS} (0 keeps orders forever), got {}",
                self.retention.keep_days
            ));
        }
        if self.http.max_concurrent == 0 {
            return bad("http.max_concurrent must be at least 1".into());
        }
        if self.http.max_connections == 0 {
            return bad("http.max_connections must be at least 1".into());
        }
        if self.http.queue_timeout_ms > 60_000 {
            return bad(format!(
                "http.queue_timeout_ms must be at most 60000, got {}",
                self.http.queue_timeout_ms
            ));
        }
        let c = self.kitchen.cooking_seconds;
        for (k, v) in [
            ("dine_in", c.dine_in),
            ("takeout", c.takeout),
            ("delivery", c.delivery),
        ] {
            if !(0.0..=3600.0).contains(&v) {
                return bad(format!(
                    "kitchen.cooking_seconds.{k} must be between 0 and 3600, got {v}"
                ));
            }
        }
        if !(0.0..=86_400.0).contains(&self.mqtt.clear_after_seconds) {
            return bad("mqtt.clear_after_seconds must be between 0 and 86400".into());
        }
        if self.display.yellow_after_seconds > self.display.red_after_seconds {
            return bad("display.yellow_after_seconds must not exceed red_after_seconds".into());
        }
        match self.routing() {
            None if self.stations.default.is_some() || !self.stations.rule.is_empty() => {
                return bad(
                    "stations.default and [[stations.rule]] need at least one [[stations.station]]"
                        .into(),
                );
            }
            None => {}
            Some(r) => {
                let errors = r.check();
                if !errors.is_empty() {
                    return bad(errors.join("; "));
                }
            }
        }
        // A bare word must be a level: EnvFilter would read "loud" as a target name.
        let levels = ["trace", "debug", "info", "warn", "error", "off"];
        let bare_ok = self.log.level.split(',').all(|d| {
            let d = d.trim().to_ascii_lowercase();
            d.contains('=') || levels.contains(&d.as_str())
        });
        if !bare_ok
            || self
                .log
                .level
                .parse::<tracing_subscriber::EnvFilter>()
                .is_err()
        {
            return bad(format!(
                "log.level '{}' is not a valid level",
                self.log.level
            ));
        }
        Ok(())
    }
}

/// Turns figment's error into one readable line per problem: key, source, reason.
/// A YAML config file (the spec's `config.yaml`) as a figment provider.
struct YamlFile(PathBuf);

impl figment::Provider for YamlFile {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("YAML file").source(self.0.as_path())
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let text = std::fs::read_to_string(&self.0)
            .map_err(|e| format!("reading {}: {e}", self.0.display()))?;
        let docs = yaml_rust2::YamlLoader::load_from_str(&text)
            .map_err(|e| format!("{}: {e}", self.0.display()))?;
        let value = match docs.first() {
            Some(doc) => yaml_to_json(doc)?,
            None => serde_json::Value::Object(Default::default()),
        };
        Serialized::defaults(value).data()
    }
}

fn yaml_to_json(y: &yaml_rust2::Yaml) -> Result<serde_json::Value, String> {
    use serde_json::Value;
    use yaml_rust2::Yaml;
    Ok(match y {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Real(r) => r
            .parse::<f64>()
            .map(Value::from)
            .map_err(|_| format!("not a number: {r}"))?,
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(a) => Value::Array(a.iter().map(yaml_to_json).collect::<Result<_, _>>()?),
        Yaml::Hash(h) => {
            let mut m = serde_json::Map::new();
            for (k, v) in h {
                let key = match k {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    other => return Err(format!("unsupported YAML key {other:?}")),
                };
                m.insert(key, yaml_to_json(v)?);
            }
            Value::Object(m)
        }
        Yaml::Alias(_) | Yaml::BadValue => return Err("unsupported YAML value".into()),
    })
}

fn describe(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let key = if e.path.is_empty() {
                String::new()
            } else {
                format!("key `{}`: ", e.path.join("."))
            };
            let source = e
                .metadata
                .as_ref()
                .and_then(|m| m.source.as_ref().map(|s| format!(" (from {s})")))
                .unwrap_or_default();
            format!("{key}{}{source}", e.kind)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
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
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/stations.toml"),
        )
        .unwrap();
        let c = load_str(&text).unwrap();
        let r = c.routing().unwrap();
        assert_eq!(r.stations.len(), 3);
        assert_eq!(r.stations[2].red_after_seconds, 240);
        assert!(r.confirm);
        assert_eq!(r.undo, Duration::from_secs(10));
        // A station without thresholds takes the board's.
        let c =
            load_str("[stations]\ndefault = \"a\"\n[[stations.station]]\nname = \"a\"\n").unwrap();
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
        let c =
            load_str("[business]\ntimezone = \"America/New_York\"\nday_starts_at = \"04:00\"\n")
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
        let c = load_str("[security]\nanonymous_loopback = false\nallowed_origins = [\"http://pos.local:8080\"]\n").unwrap();
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
}
