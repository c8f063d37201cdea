//! The services, in the order an order meets them: the order API (intake and
//! front-of-house transitions), the kitchen worker, the notification
//! subscriber, the display bridge (RabbitMQ -> MQTT) and the tracking API.
//!
//! Each service builds on `storage`, `broker` and `http`; none imports a
//! sibling, and `modes` (above them all) wires them together.

pub mod closer;
pub mod display;
pub mod kitchen;
pub mod metrics_port;
pub mod notifier;
pub mod order_api;
pub mod retention;
pub mod tracking_api;

use crate::link::supervise::LinkState;
use crate::storage::StoreError;
use kitchen::WorkerError;
use std::net::SocketAddr;
use tokio_util::sync::CancellationToken;

/// Why a service (or a whole mode) could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("shutdown requested during start-up")]
    Cancelled,
    /// A link stopped for good (retrying cannot help): exit non-zero, so the
    /// service manager restarts us.
    #[error("{0}")]
    Fatal(String),
    /// A setting `Config::check` refuses (a `Config` built in code skips it).
    #[error("{0}")]
    Config(#[from] crate::process::config::ConfigError),
    /// The certificate could not be made or read (issue 27).
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// Waits until `link` is up: a service is ready once it consumes (or can
/// publish). Tells systemd what it waits for meanwhile.
pub async fn ready(
    link: &LinkState,
    shutdown: &CancellationToken,
    waiting: &str,
) -> Result<(), StartError> {
    crate::process::daemon::status(waiting);
    tokio::select! {
        r = link.wait_up() => r.map_err(|()| match link.fatal() {
            Some(why) => StartError::Fatal(why),
            None => StartError::Cancelled,
        }),
        _ = shutdown.cancelled() => Err(StartError::Cancelled),
    }
}
