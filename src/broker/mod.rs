//! RabbitMQ: connections, the topology every mode declares, the outbox relay,
//! and what every reconnect loop shares (`backoff`, link state, outage logs).
//!
//! We do not rely on lapin's auto-recovery (it has open reports of not recovering
//! after a broker restart). Each user of the broker runs a small supervising loop
//! instead: connect, declare the topology, work until an error, back off, repeat.
//! Declaring is idempotent, so a restarted broker gets its exchanges and queues back.

pub mod backoff;
pub mod relay;
pub mod topology;

use crate::process::config::RabbitConfig;
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use lapin::{Connection, ConnectionProperties};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub use lapin;

/// Opens a connection. The password goes into the client and nowhere else: the
/// URI is built as a struct, never formatted into a string that could be logged.
pub async fn connect(cfg: &RabbitConfig, name: &str) -> Result<Connection, lapin::Error> {
    let uri = AMQPUri {
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
    Connection::connect_uri(uri, props).await
}

/// Whether a component currently holds a working broker connection; read by `/health`.
#[derive(Clone, Default)]
pub struct LinkState(Arc<AtomicBool>);

impl LinkState {
    pub fn set(&self, up: bool) {
        self.0.store(up, Ordering::Relaxed);
    }
    pub fn is_up(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Logs a lost connection once per outage, and its recovery once.
#[derive(Default)]
pub struct OutageLog {
    down: bool,
}

impl OutageLog {
    pub fn failed(&mut self, what: &str, err: &dyn std::fmt::Display, attempt: u32) {
        if !self.down {
            tracing::error!(
                action = "rabbitmq_connection_failed",
                error = %err,
                "{what}: RabbitMQ unavailable; retrying with backoff"
            );
            self.down = true;
        } else {
            tracing::debug!(action = "retry_attempted", attempt, error = %err, "{what}: still unavailable");
        }
    }

    pub fn connected(&mut self, what: &str, exchange: &str) {
        if self.down {
            tracing::info!(
                action = "rabbitmq_reconnected",
                "{what}: RabbitMQ connection restored"
            );
        } else {
            tracing::info!(
                action = "rabbitmq_connected",
                "Connected to RabbitMQ exchange '{exchange}'"
            );
        }
        self.down = false;
    }
}

/// The error a session ends with when the broker closed the connection or a
/// consumer stream ended without saying why.
pub fn connection_lost() -> lapin::Error {
    lapin::Error::from(lapin::ErrorKind::IOError(Arc::new(std::io::Error::other(
        "connection to RabbitMQ lost",
    ))))
}
