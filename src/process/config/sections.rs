//! The sections of the config file other than `[database]`, each with its defaults.

use super::secret::lenient_string;
use super::{describe, ConfigError, DatabaseConfig, Secret, StorageBackend};
use figment::providers::{Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Several boxes serving one kitchen (docs/multi-box.md).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Host names or addresses of every box, this one included; empty: one box.
    pub boxes: Vec<String>,
    /// pg_auto_failover's monitor (`postgres://USER@HOST:PORT/pg_auto_failover`):
    /// each new database connection goes to the node it names as the primary,
    /// never to a former primary that came back writable (docs/multi-box.md).
    pub monitor: Option<String>,
    /// The monitor user's password; never in the URL.
    pub monitor_password: Option<Secret>,
}

impl ClusterConfig {
    /// The monitor as a database to connect to, when one is set: its URL
    /// parsed by the same rules as `[database] url` (TLS included).
    pub fn monitor_database(&self) -> Option<DatabaseConfig> {
        let url = self.monitor.as_deref().filter(|u| !u.trim().is_empty())?;
        Some(DatabaseConfig {
            backend: StorageBackend::Postgres,
            url: Some(url.to_string()),
            password: self.monitor_password.clone(),
            user: "autoctl_node".into(),
            database: "pg_auto_failover".into(),
            ..DatabaseConfig::default()
        })
    }

    /// The monitor's URL names one host and carries no password.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        let Some(m) = self.monitor_database() else {
            if self.monitor_password.is_some() {
                return Err(ConfigError::Invalid(
                    "cluster.monitor_password needs cluster.monitor".into(),
                ));
            }
            return Ok(());
        };
        let pg = m
            .parsed_url_as("cluster.monitor", "cluster.monitor_password")?
            .ok_or_else(|| ConfigError::Invalid("cluster.monitor is empty".into()))?;
        if pg.get_hosts().len() != 1 {
            return Err(ConfigError::Invalid(format!(
                "cluster.monitor must name one host (pg_auto_failover's monitor), not {}",
                pg.get_hosts().len()
            )));
        }
        Ok(())
    }
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
