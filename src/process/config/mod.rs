//! Configuration: built-in defaults < config file < environment < command-line flags.
//!
//! The file is TOML (`config.toml`); a path ending in `.yaml`/`.yml` is read as the
//! spec's `config.yaml`, with the same keys. Environment variables are the spec's
//! `DB_*` and `RABBITMQ_*` names plus `RESTAURANT_<SECTION>__<KEY>` for everything.
//! Unknown keys are errors, so a typo never silently falls back to a default.

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

mod database;
mod secret;
mod sections;
#[cfg(test)]
mod tests;
mod yaml;

pub use database::{DatabaseConfig, PgSslMode, StorageBackend};
pub use secret::Secret;
pub use sections::*;
use yaml::YamlFile;

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
        self.cluster.check()?;
        if self.cluster.monitor_database().is_some()
            && self.database.resolved_backend() != StorageBackend::Postgres
        {
            return bad(
                "cluster.monitor needs PostgreSQL (database.backend = \"postgres\")".into(),
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
