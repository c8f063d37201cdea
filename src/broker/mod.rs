//! RabbitMQ: connections, the topology every mode declares, the outbox relay,
//! and what a failed delivery becomes.
//!
//! We do not rely on lapin's auto-recovery (it has open reports of not recovering
//! after a broker restart), so it stays off and one owner retries each link:
//! every user of a broker runs sessions (connect, declare the topology, work
//! until an error) under [`crate::link::supervise::Supervisor`]. Declaring is
//! idempotent, so a restarted broker gets its exchanges and queues back.

pub mod delivery;
pub mod relay;
pub mod topology;

use crate::domain::error::Class;
use crate::link::supervise::SessionEnd;
use crate::process::config::RabbitConfig;
use lapin::tcp::AMQPUriTcpExt;
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use lapin::{Channel, Connection, ConnectionProperties};
use std::time::Duration;
use tcp_stream::RustlsConnector;

pub use lapin;

/// Opens a connection. The password goes into the client and nowhere else: the
/// URI is built as a struct, never formatted into a string that could be logged.
/// With `[rabbitmq] tls` it is amqps: TLS on rustls with our provider, the
/// broker's certificate checked against `ca_file` and its name against `host`.
pub async fn connect(cfg: &RabbitConfig, name: &str) -> Result<Connection, lapin::Error> {
    let uri = AMQPUri {
        // TLS, when on, is ours (`connect_tls`): lapin dials plain TCP.
        scheme: AMQPScheme::AMQP,
        authority: AMQPAuthority {
            userinfo: AMQPUserInfo {
                username: cfg.user.clone(),
                password: cfg.password.expose().to_string(),
            },
            host: cfg.host.clone(),
            port: cfg.port,
        },
        vhost: cfg.vhost.clone(),
        query: AMQPQueryString {
            // Heartbeats detect a dead broker in seconds instead of a TCP timeout.
            heartbeat: Some(10),
            connection_timeout: Some(5_000),
            // lapin keeps 32 frames of frame_max for reading and for writing; at
            // RabbitMQ's default (128 KiB) that is 8 MB per connection. Our
            // messages are a few KB; larger ones are split into frames anyway.
            frame_max: Some(16_384),
            ..Default::default()
        },
    };
    let props = ConnectionProperties::default().with_connection_name(name.into());
    if !cfg.tls {
        return Connection::connect_uri(uri, props).await;
    }
    // Read on every connect, so a replaced CA file is picked up by the next session.
    let tls = crate::tls::client_config(&cfg.ca_file).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("rabbitmq.ca_file: {e}"),
        )
    })?;
    let connector = std::sync::Arc::new(RustlsConnector::from(tls));
    let runtime = lapin::runtime::default_runtime()?;
    Connection::connector(
        uri,
        runtime,
        async move |uri: AMQPUri, runtime| {
            let plain = uri.connect_async(&runtime).await?;
            let host = &uri.authority.host;
            plain.into_rustls(&connector, host).await.map_err(|e| {
                // The handshake's own reason (unknown issuer, not valid for
                // name): what the operator needs to fix the CA file or host.
                lapin::Error::from(std::io::Error::new(
                    e.kind(),
                    format!("TLS to RabbitMQ at {host}:{}: {e}", uri.authority.port),
                ))
            })
        },
        props,
    )
    .await
}

/// How a RabbitMQ failure is handled, from lapin's own classification (never
/// from the message text): what a reconnect can fix is transient, the rest
/// (a runtime shutting down, a protocol lapin does not speak) is permanent.
pub fn class_of(e: &lapin::Error) -> Class {
    match e.kind() {
        // A new connection starts with a clean parser.
        lapin::ErrorKind::ParsingError(_) => Class::Transient,
        _ if e.can_be_recovered() => Class::Transient,
        _ => Class::Permanent,
    }
}

/// A session that failed with `e` is lost (reconnect) or, when no reconnect
/// can help, fatal.
impl From<lapin::Error> for SessionEnd {
    fn from(e: lapin::Error) -> Self {
        match class_of(&e) {
            Class::Permanent => SessionEnd::Fatal(Box::new(e)),
            _ => SessionEnd::Lost(Box::new(e)),
        }
    }
}

/// How long declaring and subscribing may take once connected. A broker that
/// accepts connections while it is still recovering its queues (after a power
/// cut) can leave a declare or consume unanswered for good, and a session
/// waiting on it would hold its service in "activating" until systemd's start
/// timeout; it starts over instead (issue 21).
pub const SETUP_WAIT: Duration = Duration::from_secs(30);

/// A session's declarations and subscriptions, bounded by [`SETUP_WAIT`]: their
/// result, or the session's end (lost when the broker did not answer in time).
pub async fn bounded_setup<T>(
    setup: impl std::future::Future<Output = Result<T, lapin::Error>>,
) -> Result<T, SessionEnd> {
    bounded(SETUP_WAIT, setup).await
}

async fn bounded<T>(
    wait: Duration,
    setup: impl std::future::Future<Output = Result<T, lapin::Error>>,
) -> Result<T, SessionEnd> {
    match tokio::time::timeout(wait, setup).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(SessionEnd::Lost(Box::new(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "RabbitMQ did not answer the declarations within {} s (still recovering its queues?)",
                wait.as_secs_f64()
            ),
        )))),
    }
}

/// How long each step of a clean close may wait for the broker's answer: a
/// broker that went away must not hold the stop up.
pub const STOP_WAIT: Duration = Duration::from_secs(2);

/// Ends a session cleanly: closes the connection (bounded by [`STOP_WAIT`])
/// while the session still holds its channels, which the connection's close
/// closes with it. The order matters to lapin (issue 22): a channel whose last
/// handle drops while the connection is up is closed in the background, and
/// when that races the connection's close it fails ("invalid channel state:
/// Closing"); a channel closed explicitly first is removed in the background
/// too, and the connection's close can remove it again ("invalid channel").
/// Either way lapin logs a connection ERROR on a clean stop. The channels are
/// dropped by the caller after this returns, when they are closed already.
pub async fn close(conn: &Connection, channels: &[&Channel]) {
    let _ = tokio::time::timeout(STOP_WAIT, conn.close(200, "shutdown".into())).await;
    // Borrowed only to be held until here.
    let _ = channels;
}

/// The error a session ends with when the broker closed the connection or a
/// consumer stream ended without saying why.
pub fn connection_lost() -> SessionEnd {
    SessionEnd::Lost(Box::new(std::io::Error::other(
        "connection to RabbitMQ lost",
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_setup_that_is_never_answered_ends_the_session_as_lost() {
        let never = std::future::pending::<Result<(), lapin::Error>>();
        match bounded(Duration::from_millis(20), never).await {
            Err(SessionEnd::Lost(e)) => assert!(e.to_string().contains("did not answer")),
            other => panic!("expected a lost session, got {other:?}"),
        }
        let quick = async { Ok::<_, lapin::Error>(7) };
        assert_eq!(
            bounded(Duration::from_millis(20), quick).await.ok(),
            Some(7)
        );
    }
}
