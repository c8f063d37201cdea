//! `[database]`: which store, where it is, and TLS to a PostgreSQL on another host.

use super::secret::lenient_string;
use super::{ConfigError, Secret};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

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
fn split_url_tls(
    url: &str,
    key: &str,
) -> Result<(String, Option<PgSslMode>, Option<PathBuf>), ConfigError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), None, None));
    };
    let (mut mode, mut ca, mut kept) = (None, None, Vec::new());
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("sslmode", "verify-ca")) => mode = Some(PgSslMode::VerifyCa),
            Some(("sslmode", "verify-full")) => mode = Some(PgSslMode::VerifyFull),
            Some(("sslmode", "require")) => {
                return Err(ConfigError::Invalid(format!(
                    "{key}: sslmode=require checks no certificate: use verify-full \
                     (with sslrootcert=CA file) to a server on another host"
                )))
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
    pub(super) fn postgres_named(&self) -> bool {
        let set = |v: &Option<String>| v.as_deref().is_some_and(|h| !h.trim().is_empty());
        set(&self.host) || set(&self.url)
    }

    /// The URL parsed, when one is set.
    pub fn parsed_url(&self) -> Result<Option<tokio_postgres::Config>, ConfigError> {
        self.parsed_url_as("database.url", "database.password")
    }

    /// The URL parsed, errors naming the keys it came from (`[cluster] monitor`
    /// is read as a database too).
    pub(super) fn parsed_url_as(
        &self,
        key: &str,
        password_key: &str,
    ) -> Result<Option<tokio_postgres::Config>, ConfigError> {
        let Some(url) = self.url.as_deref().filter(|u| !u.trim().is_empty()) else {
            return Ok(None);
        };
        let (url, _, _) = split_url_tls(url, key)?;
        let pg: tokio_postgres::Config = url
            .parse()
            .map_err(|e| ConfigError::Invalid(format!("{key} is not a PostgreSQL URL: {e}")))?;
        if pg.get_password().is_some() {
            return Err(ConfigError::Invalid(format!(
                "{key} must not carry the password: put it in {password_key}"
            )));
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
            .and_then(|u| split_url_tls(u, "database.url").ok())
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
