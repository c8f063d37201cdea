//! HTTPS on every listener (issue 27, docs/security.md).
//!
//! `[tls] mode`:
//! - `off`: plain HTTP, as the seed had it (the default, and what an upgraded
//!   install keeps until the operator turns TLS on);
//! - `self-signed`: the box's own CA ([`ca`]) signs a certificate for its host
//!   names and addresses; renewed before its end and re-issued when the
//!   addresses change (checked every [`CHECK_EVERY`] and on SIGHUP);
//! - `files`: the restaurant's own certificate and key, re-read on SIGHUP.
//!
//! A listener with TLS still answers plain HTTP on the same port: the first
//! byte of a connection says which (a TLS handshake starts with 0x16, no HTTP
//! method does). Plain HTTP keeps the seed's curl examples working on the box
//! itself; from another host, a request carrying a token over plain HTTP is
//! refused (`http::handle`), so a token never crosses the LAN in clear.
//! The certificate is swapped under running listeners: a new handshake gets
//! the new one, an open connection keeps going.

pub mod ca;
mod client;

pub use client::{ca_file_or_system, client_config, client_config_any_name};

use crate::process::config::{TlsConfig, TlsMode};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// How often a running service checks its certificate (renewal, new addresses).
pub const CHECK_EVERY: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Certificate(String),
}

impl TlsError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        TlsError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    pub(crate) fn cert(e: impl std::fmt::Display) -> Self {
        TlsError::Certificate(e.to_string())
    }
}

/// A listener's TLS: what it serves now, swapped in place on renewal or SIGHUP.
#[derive(Clone)]
pub struct Tls {
    settings: TlsConfig,
    current: Arc<Current>,
    acceptor: TlsAcceptor,
}

#[derive(Debug)]
struct Current {
    key: RwLock<Arc<CertifiedKey>>,
    /// The CA certificate for `GET /ca.crt` (self-signed mode only).
    ca_pem: RwLock<Option<Arc<str>>>,
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.key.read().ok().map(|k| k.clone())
    }
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("mode", &self.settings.mode)
            .finish()
    }
}

impl Tls {
    /// Loads (or, self-signed, makes) the certificate. None when TLS is off.
    pub fn start(settings: &TlsConfig) -> Result<Option<Tls>, TlsError> {
        if settings.mode == TlsMode::Off {
            return Ok(None);
        }
        let (key, ca_pem) = load(settings)?;
        let current = Arc::new(Current {
            key: RwLock::new(key),
            ca_pem: RwLock::new(ca_pem),
        });
        let provider = Arc::new(provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::cert)?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(Tls {
            settings: settings.clone(),
            current,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        }))
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// The CA certificate (PEM) a device downloads to trust the box.
    pub fn ca_pem(&self) -> Option<Arc<str>> {
        self.current.ca_pem.read().ok().and_then(|c| c.clone())
    }

    /// Reads the certificate again (self-signed: renews or re-issues it when
    /// due); connections already open keep theirs.
    pub fn reload(&self) -> Result<(), TlsError> {
        let (key, ca_pem) = load(&self.settings)?;
        if let Ok(mut k) = self.current.key.write() {
            *k = key;
        }
        if let Ok(mut c) = self.current.ca_pem.write() {
            *c = ca_pem;
        }
        Ok(())
    }

    /// Reloads on SIGHUP and every [`CHECK_EVERY`] until `shutdown`. A failed
    /// reload keeps serving the certificate it has (and says why).
    pub fn spawn_reloader(&self, shutdown: CancellationToken) {
        let tls = self.clone();
        tokio::spawn(async move {
            let mut hup = match tokio::signal::unix::signal(
                tokio::signal::unix::SignalKind::hangup(),
            ) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(action = "tls_reload_unavailable", error = %e, "No SIGHUP reload of the certificate");
                    return;
                }
            };
            let mut tick = tokio::time::interval(CHECK_EVERY);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = hup.recv() => {}
                    _ = tick.tick() => {}
                }
                let tls = tls.clone();
                match tokio::task::spawn_blocking(move || tls.reload()).await {
                    Ok(Ok(())) => {
                        tracing::info!(action = "tls_reloaded", "Certificate checked and loaded")
                    }
                    Ok(Err(e)) => tracing::error!(
                        action = "tls_reload_failed",
                        error = %e,
                        "Could not load the certificate; keeping the one in use"
                    ),
                    Err(_) => {}
                }
            }
        });
    }
}

/// rustls on *ring*: it builds with the C compiler the project already needs
/// (aws-lc-rs would add cmake-class build steps to every box that builds us).
/// rustls 0.23.48 deprecates it for lacking post-quantum key exchange; revisit
/// when the box moves to aws-lc-rs.
#[allow(deprecated)]
pub(crate) fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn load(settings: &TlsConfig) -> Result<(Arc<CertifiedKey>, Option<Arc<str>>), TlsError> {
    match settings.mode {
        TlsMode::SelfSigned => {
            let names = box_names(&settings.names);
            let served = ca::ensure(&settings.dir, &names, time::OffsetDateTime::now_utc())?;
            let key = certified_key(&served.chain_pem, &served.key_pem, &settings.dir)?;
            Ok((key, Some(served.ca_pem.into())))
        }
        TlsMode::Files => {
            let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| TlsError::io(p, e));
            let chain = read(&settings.cert_file)?;
            let key = read(&settings.key_file)?;
            Ok((certified_key(&chain, &key, &settings.cert_file)?, None))
        }
        TlsMode::Off => Err(TlsError::Certificate("TLS is off".into())),
    }
}

fn certified_key(
    chain_pem: &str,
    key_pem: &str,
    from: &Path,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificate(format!("{}: {e}", from.display())))?;
    if chain.is_empty() {
        return Err(TlsError::Certificate(format!(
            "{}: no certificate in the file",
            from.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| TlsError::Certificate(format!("{}: private key: {e}", from.display())))?;
    let ck = CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| TlsError::Certificate(format!("{}: {e}", from.display())))?;
    Ok(Arc::new(ck))
}

/// The names the server certificate must carry: the host name (and
/// `NAME.local`, for mDNS), `localhost`, every address of the box's
/// interfaces, and `[tls] names`.
pub fn box_names(extra: &[String]) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = extra.iter().cloned().collect();
    names.insert("localhost".into());
    if let Some(host) = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
    {
        if !host.contains('.') {
            names.insert(format!("{host}.local"));
        }
        names.insert(host);
    }
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let Some(addr) = a.address else { continue };
            if let Some(v4) = addr.as_sockaddr_in() {
                names.insert(v4.ip().to_string());
            } else if let Some(v6) = addr.as_sockaddr_in6() {
                let ip = v6.ip();
                // Link-local addresses need a zone in a URL: no browser names a box by one.
                if (ip.segments()[0] & 0xffc0) != 0xfe80 {
                    names.insert(ip.to_string());
                }
            }
        }
    }
    names
}

/// Whether a connection starts with a TLS handshake (0x16), read without
/// consuming it; false for plain HTTP. Waits at most `timeout` for the first byte.
pub async fn starts_tls(stream: &tokio::net::TcpStream, timeout: Duration) -> Option<bool> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(timeout, stream.peek(&mut first)).await {
        Ok(Ok(1)) => Some(first[0] == 0x16),
        _ => None,
    }
}
