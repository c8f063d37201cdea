//! The display bridge: RabbitMQ -> MQTT for kitchen display screens (issue 4,
//! contract in docs/mqtt.md).
//!
//! Four tasks:
//! - [`consumer`]: consumes `display_bridge_queue` in order (orders, status
//!   changes, and with stations each part and rush change), turns each
//!   message into the order's current state ([`cache`]: from the messages
//!   themselves, the database only when one is missing), and acks a delivery only after the MQTT
//!   broker acknowledged what it caused. Reconnects to RabbitMQ like every other
//!   consumer here (sessions under `link::supervise`).
//! - [`mqtt`]: owns the MQTT client; decides and tracks every publish (never an
//!   older state than already sent, the PUBACK bookkeeping, clears after the
//!   grace period), plus a small task that keeps polling rumqttc's event loop
//!   and backs off between reconnects.
//! - [`snapshot`]: republishes the board on every (re)connect, reconciles what
//!   the broker retains, refreshes worker presence.
//! - a health endpoint on the bridge's own small HTTP port.
//!
//! Shutdown: the consumer stops taking deliveries and settles those in hand;
//! then the MQTT task publishes `offline` and disconnects.

pub mod cache;
pub mod consumer;
pub mod mqtt;
pub mod payload;
pub mod snapshot;

use super::StartError;
use crate::http::{self, ApiError, Limits, RequestCtx, Resp, Routes};
use crate::link::supervise::{LinkState, Peer};
use crate::process::config::Config;
use crate::storage::SharedStore;
use hyper::body::Incoming;
use hyper::Request;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub const SERVICE: &str = "display-bridge";

/// How often worker presence is read from the database (published only on change).
const PRESENCE_REFRESH: Duration = Duration::from_secs(5);

/// Starts the bridge. Returns the health port's address once the bridge
/// consumes its queue (so nothing published after this is missed); the MQTT
/// broker may still be unreachable, in which case it keeps retrying.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    cfg: &Config,
    store: SharedStore,
    addr: SocketAddr,
    limits: Limits,
    edge: Edge,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> Result<(SocketAddr, [LinkState; 2]), StartError> {
    let rabbit_link = LinkState::new("display bridge consumer", Peer::RabbitMq);
    let mqtt_link = LinkState::new("display bridge", Peer::Mqtt);
    let tls = edge.tls.clone();
    let health = Health {
        store: store.clone(),
        rabbit: rabbit_link.clone(),
        mqtt: mqtt_link.clone(),
        broker: format!("{}:{}", cfg.mqtt.host, cfg.mqtt.port),
        edge,
    };
    let server = http::serve(addr, Arc::new(health), limits, tls, shutdown.clone())
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let bound = server.addr;

    let topics = payload::Topics::new(&cfg.mqtt);
    // MQTT over TLS (issue 27) for a broker on another host: a CA file that
    // cannot be read stops the start, with its reason.
    let mqtt_tls = if cfg.mqtt.tls {
        Some(crate::tls::client_config(&cfg.mqtt.ca_file)?)
    } else {
        None
    };
    let (mqtt, publisher, inbound) = mqtt::new(
        &cfg.mqtt,
        topics,
        cfg.expo.confirm,
        mqtt_link.clone(),
        mqtt_tls,
    );
    let span = tracing::Span::current();
    // The MQTT task outlives the consumer: it must see the PUBACKs of what the
    // consumer settles while stopping.
    let consumer_done = CancellationToken::new();
    tasks.spawn(mqtt.run(consumer_done.clone()).instrument(span.clone()));
    let snapshots = snapshot::Snapshots {
        store: store.clone(),
        publisher: publisher.clone(),
        inbound,
        refresh: PRESENCE_REFRESH,
    };
    tasks.spawn(snapshots.run(shutdown.clone()).instrument(span.clone()));
    let consumer = consumer::Consumer {
        store,
        rabbit: cfg.rabbitmq.clone(),
        queue: crate::broker::topology::display_queue(
            cfg.cluster.boxes.len() >= 2,
            &crate::process::telemetry::hostname(),
        ),
        publisher,
        link: rabbit_link.clone(),
        mqtt: mqtt_link.clone(),
    };
    let s = shutdown.clone();
    tasks.spawn(
        async move {
            consumer.run(s).await;
            consumer_done.cancel();
        }
        .instrument(span),
    );
    tasks.spawn(async move {
        let _ = server.task.await;
    });

    super::ready(
        &rabbit_link,
        &shutdown,
        "waiting for RabbitMQ (display queue)",
    )
    .await?;
    tracing::info!(
        action = "service_started",
        port = bound.port(),
        broker = %format!("{}:{}", cfg.mqtt.host, cfg.mqtt.port),
        clear_after_seconds = cfg.mqtt.clear_after_seconds,
        "Display bridge started (health on port {}), publishing to MQTT broker {}:{}",
        bound.port(),
        cfg.mqtt.host,
        cfg.mqtt.port
    );
    Ok((bound, [rabbit_link, mqtt_link]))
}

/// What the bridge's health port shares with the other listeners: the
/// process's guard (its `/metrics` is a read route like any other: open to
/// loopback as configured, a token from anywhere else), and whether it is the
/// process's metrics endpoint.
pub struct Edge {
    pub guard: Arc<http::auth::Guard>,
    pub metrics: bool,
    /// The process's TLS (issue 27), when on.
    pub tls: Option<crate::tls::Tls>,
}

/// `GET /health`: database, RabbitMQ and MQTT, 503 when any is down; and
/// `GET /metrics` (answered by the HTTP edge).
struct Health {
    store: SharedStore,
    rabbit: LinkState,
    mqtt: LinkState,
    broker: String,
    edge: Edge,
}

#[async_trait::async_trait]
impl Routes for Health {
    fn guard(&self) -> Option<&Arc<http::auth::Guard>> {
        Some(&self.edge.guard)
    }

    fn metrics(&self) -> bool {
        self.edge.metrics
    }

    async fn handle(&self, req: Request<Incoming>, ctx: RequestCtx) -> Result<Resp, ApiError> {
        http::only_health(&req, &ctx)?;
        let db = http::database_health(&self.store).await;
        let rabbit = self.rabbit.health("not connected to RabbitMQ");
        let mqtt = self.mqtt.health(&format!(
            "not connected to the MQTT broker at {}",
            self.broker
        ));
        Ok(http::health_response(
            SERVICE,
            &[("database", db), ("rabbitmq", rabbit), ("mqtt", mqtt)],
        ))
    }
}
