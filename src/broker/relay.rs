//! The outbox relay: moves committed messages from the `outbox` table to RabbitMQ.
//!
//! Every state change writes its message into the outbox in the same transaction
//! (see `storage`), so a message exists if and only if its change committed. The
//! relay leases a batch of rows, publishes them all (persistent, pipelined), waits
//! for the broker's confirms, and deletes the confirmed rows in the same step
//! that leases the next batch (one statement per batch). A crash anywhere
//! leaves rows that are published again later: delivery is at-least-once, and
//! consumers are idempotent (status changes are compare-and-set, updates carry a
//! version). It wakes on every commit (on a deferred change, within `SOON`)
//! and also polls, so nothing waits long.

use super::topology::{self, REQUEST_ID_HEADER};
use super::{connect, connection_lost};
use crate::domain::events::ORDERS_EXCHANGE;
use crate::link::supervise::{LinkState, Peer, SessionEnd, Supervisor};
use crate::process::config::RabbitConfig;
use crate::process::metrics;
use crate::storage::{OutboxMessage, SharedStore};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Rows claimed (and published per round trip of confirms), at most. A claim
/// takes whatever waits, up to this, so under load a claim (on SQLite one job
/// of the single writer thread, queued behind intake's) carries everything
/// committed since the previous one: a few claims a second at any rate. Under
/// load the relay's rate is set by RabbitMQ's confirms (issue 22, item 2:
/// docs/BENCHMARKS.md), and a batch must be confirmed well within `LEASE`.
const BATCH: usize = 2_048;
/// Batches written and not yet confirmed, at most.
const DEPTH: usize = 2;
/// A leased row is taken over by another relay when we have not confirmed it by then.
const LEASE: Duration = Duration::from_secs(10);
/// Wake-ups can be missed by another process's commits; poll as well.
const POLL: Duration = Duration::from_millis(500);
/// Confirmed rows are deleted with the next claim; when no new commit comes
/// within this time, the relay claims (and deletes) anyway.
const FLUSH: Duration = Duration::from_millis(20);
/// A deferred change (`wake_soon`) is published within this time, or sooner
/// with the next durable commit's wake-up, which also puts it on disk for free.
const SOON: Duration = Duration::from_millis(50);
/// The outbox gauges (rows pending, age of the oldest) are read this often.
const STATS_EVERY: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct Relay {
    store: SharedStore,
    rabbit: RabbitConfig,
    wake: Arc<Notify>,
    soon: Arc<Notify>,
    link: LinkState,
    name: String,
}

impl Relay {
    pub fn new(store: SharedStore, rabbit: RabbitConfig, name: &str) -> Self {
        Relay {
            store,
            rabbit,
            wake: Arc::new(Notify::new()),
            soon: Arc::new(Notify::new()),
            link: LinkState::new(name, Peer::RabbitMq),
            name: name.to_string(),
        }
    }

    /// Call after committing an outbox row: the relay publishes it at once.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Call after committing a change made with `Durability::Deferred`: the
    /// relay publishes it within `SOON`. Claimed at once, it would have to be
    /// synced on its own; the caller's next durable change (the kitchen's
    /// `ready` after `cooking`) usually comes first and carries it to disk.
    pub fn wake_soon(&self) {
        self.soon.notify_one();
    }

    pub fn link(&self) -> LinkState {
        self.link.clone()
    }

    /// Runs until `shutdown`, its sessions supervised (reconnects, backoff).
    /// On shutdown it makes one last, bounded attempt to publish what is
    /// waiting; what it cannot publish stays in the outbox for the next start
    /// (or another process's relay).
    pub async fn run(self, shutdown: CancellationToken) {
        let relayed = CancellationToken::new();
        let relay = async {
            let mut sup = Supervisor::new(self.link.clone());
            while sup.next(self.session(&shutdown).await, &shutdown).await {}
            relayed.cancel();
        };
        // The gauges keep moving while RabbitMQ is away: that is when the
        // backlog grows and the alert should see it.
        tokio::join!(relay, self.outbox_gauges(&relayed));
    }

    /// Sets the outbox gauges every `STATS_EVERY` until `stop`.
    async fn outbox_gauges(&self, stop: &CancellationToken) {
        loop {
            match self.store.outbox_stats().await {
                Ok((pending, oldest)) => {
                    let age = oldest
                        .map(|t| (chrono::Utc::now() - t).num_milliseconds().max(0) as f64 / 1e3)
                        .unwrap_or(0.0);
                    ::metrics::gauge!(metrics::OUTBOX_PENDING).set(pending as f64);
                    ::metrics::gauge!(metrics::OUTBOX_OLDEST_AGE).set(age);
                }
                Err(e) => {
                    tracing::debug!(action = "outbox_stats_failed", error = %e, "Outbox not readable")
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(STATS_EVERY) => {}
            }
        }
    }

    async fn session(&self, shutdown: &CancellationToken) -> SessionEnd {
        let conn = match connect(&self.rabbit, &self.name).await {
            Ok(c) => c,
            Err(e) => return e.into(),
        };
        let ch = match super::bounded_setup(self.open_channel(&conn)).await {
            Ok(ch) => ch,
            Err(end) => return end,
        };
        let end = self.publish_until_stopped(&conn, &ch, shutdown).await;
        if matches!(end, SessionEnd::Shutdown) {
            super::close(&conn, &[&ch]).await;
        }
        end
    }

    async fn publish_until_stopped(
        &self,
        conn: &lapin::Connection,
        ch: &Channel,
        shutdown: &CancellationToken,
    ) -> SessionEnd {
        self.link.up(&format!("exchange '{ORDERS_EXCHANGE}'"));
        // Confirmed by the broker, deleted with the next claim.
        let mut published = Vec::new();
        let end = loop {
            if let Err(e) = self.drain(ch, &mut published).await {
                break e.into();
            }
            let idle = if published.is_empty() { POLL } else { FLUSH };
            if self.wait(idle, shutdown).await {
                let last = self.drain(ch, &mut published);
                let _ = tokio::time::timeout(Duration::from_secs(3), last).await;
                break SessionEnd::Shutdown;
            }
            if !conn.status().connected() {
                break connection_lost();
            }
        };
        // What is not deleted now is published again after its lease: harmless.
        if !published.is_empty() {
            if let Err(e) = self.store.delete_outbox(&published).await {
                tracing::error!(action = "outbox_delete_failed", error = %e, "Could not prune published outbox rows");
            }
        }
        end
    }

    /// Waits for a wake-up, at most `idle` (`SOON` once a deferred change
    /// waits). Returns true on shutdown.
    async fn wait(&self, idle: Duration, shutdown: &CancellationToken) -> bool {
        let mut until = tokio::time::Instant::now() + idle;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return true,
                _ = self.wake.notified() => return false,
                _ = tokio::time::sleep_until(until) => return false,
                _ = self.soon.notified() => {
                    until = until.min(tokio::time::Instant::now() + SOON);
                }
            }
        }
    }

    async fn open_channel(&self, conn: &lapin::Connection) -> Result<Channel, lapin::Error> {
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        topology::declare(&ch, self.rabbit.queue_type).await?;
        Ok(ch)
    }

    /// Publishes everything waiting in the outbox; `published` collects the
    /// confirmed rows, each claim deletes them. Up to `DEPTH` batches are in
    /// flight: the next batch is claimed and written while the broker confirms
    /// the previous one (same channel, so they still leave in commit order).
    /// Database errors are logged and left for the next round; broker errors
    /// end the session.
    async fn drain(&self, ch: &Channel, published: &mut Vec<i64>) -> Result<(), lapin::Error> {
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        let result = self.fill(ch, published, &mut in_flight).await;
        // Whatever happened, settle what was sent: confirmed rows are deleted
        // with the next claim, the rest given back.
        let mut failed = result.err();
        while let Some(f) = in_flight.pop_front() {
            if failed.is_some() {
                let _ = self.store.release_outbox(&f.ids()).await;
                continue;
            }
            if let Err(e) = self.settle(f, published).await {
                failed = Some(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Claims and writes batches until the outbox is empty, settling the oldest
    /// batch whenever `DEPTH` are in flight.
    async fn fill(
        &self,
        ch: &Channel,
        published: &mut Vec<i64>,
        in_flight: &mut VecDeque<InFlight>,
    ) -> Result<(), lapin::Error> {
        loop {
            let batch = match self
                .store
                .claim_outbox(published, BATCH, LEASE, chrono::Utc::now())
                .await
            {
                Ok(b) => {
                    published.clear();
                    b
                }
                Err(e) => {
                    tracing::debug!(action = "outbox_claim_failed", error = %e, "Outbox not readable; retrying");
                    return Ok(());
                }
            };
            if batch.is_empty() {
                return Ok(());
            }
            let full = batch.len() == BATCH;
            let started = std::time::Instant::now();
            match send_batch(ch, &batch).await {
                Ok(confirms) => in_flight.push_back(InFlight {
                    batch,
                    confirms,
                    started,
                }),
                Err(e) => {
                    let ids: Vec<i64> = batch.iter().map(|m| m.id).collect();
                    let _ = self.store.release_outbox(&ids).await;
                    tracing::error!(action = "rabbitmq_publish_failed", error = %e, "Publishing from the outbox failed");
                    return Err(e);
                }
            }
            if in_flight.len() >= DEPTH {
                if let Some(oldest) = in_flight.pop_front() {
                    self.settle(oldest, published).await?;
                }
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// Awaits a batch's confirms: confirmed rows go to `published`, refused
    /// ones back to the outbox.
    async fn settle(&self, f: InFlight, published: &mut Vec<i64>) -> Result<(), lapin::Error> {
        let InFlight {
            batch,
            confirms,
            started,
        } = f;
        let result = await_confirms(confirms).await;
        ::metrics::histogram!(metrics::RELAY_PUBLISH).record(started.elapsed().as_secs_f64());
        match result {
            Ok((sent, refused)) => {
                if !refused.is_empty() {
                    tracing::error!(
                        action = "rabbitmq_publish_failed",
                        count = refused.len(),
                        "Broker refused messages; they stay in the outbox"
                    );
                    let _ = self.store.release_outbox(&refused).await;
                }
                // Only when asked for: `sent.contains` per row is quadratic in the batch.
                let traced = tracing::enabled!(tracing::Level::DEBUG);
                for m in batch.iter().filter(|m| traced && sent.contains(&m.id)) {
                    tracing::debug!(
                        action = if m.exchange == ORDERS_EXCHANGE { "order_published" } else { "notification_published" },
                        request_id = %m.request_id,
                        amqp_message_id = %m.message_id,
                        routing_key = %m.routing_key,
                        "Message published to '{}'", m.exchange
                    );
                }
                published.extend(sent);
                Ok(())
            }
            Err(e) => {
                let ids: Vec<i64> = batch.iter().map(|m| m.id).collect();
                let _ = self.store.release_outbox(&ids).await;
                tracing::error!(action = "rabbitmq_publish_failed", error = %e, "Publishing from the outbox failed");
                Err(e)
            }
        }
    }
}

/// A batch written to the broker whose confirms are on their way.
struct InFlight {
    batch: Vec<OutboxMessage>,
    confirms: Vec<(i64, PublisherConfirm)>,
    started: std::time::Instant,
}

impl InFlight {
    fn ids(&self) -> Vec<i64> {
        self.batch.iter().map(|m| m.id).collect()
    }
}

/// Writes a batch: hands every message to lapin, then waits until all are
/// written. Returns each row's confirm, to be awaited with `await_confirms`.
///
/// lapin's `basic_publish` queues the frames when first polled and then waits
/// for its I/O thread to write them; awaiting each in turn cost one hand-over
/// to that thread per message and held the relay to a few thousand a second
/// (issue 22, item 2). Each publish is polled once here, in order, so the
/// frames (and the confirms' delivery tags) keep the outbox's order, and the
/// I/O thread writes the whole batch in a few writes.
async fn send_batch(
    ch: &Channel,
    batch: &[OutboxMessage],
) -> Result<Vec<(i64, PublisherConfirm)>, lapin::Error> {
    type Publish<'a> = Pin<Box<dyn Future<Output = lapin::Result<PublisherConfirm>> + Send + 'a>>;
    let mut writing: Vec<(i64, Publish<'_>)> = Vec::with_capacity(batch.len());
    let mut pending = Vec::with_capacity(batch.len());
    for m in batch {
        let mut publish: Publish<'_> = Box::pin(ch.basic_publish(
            m.exchange.as_str().into(),
            m.routing_key.as_str().into(),
            BasicPublishOptions::default(),
            m.payload.as_bytes(),
            properties(m),
        ));
        match std::future::poll_fn(|cx| Poll::Ready(publish.as_mut().poll(cx))).await {
            Poll::Ready(confirm) => pending.push((m.id, confirm?)),
            Poll::Pending => writing.push((m.id, publish)),
        }
    }
    for (id, publish) in writing {
        pending.push((id, publish.await?));
    }
    Ok(pending)
}

/// The ids the broker confirmed and the ids it refused.
async fn await_confirms(
    pending: Vec<(i64, PublisherConfirm)>,
) -> Result<(Vec<i64>, Vec<i64>), lapin::Error> {
    let (mut sent, mut refused) = (Vec::new(), Vec::new());
    for (id, confirm) in pending {
        match confirm.await? {
            Confirmation::Ack(_) | Confirmation::NotRequested => sent.push(id),
            Confirmation::Nack(_) => refused.push(id),
        }
    }
    Ok((sent, refused))
}

/// Persistent, with the priority (for the kitchen queues' x-max-priority), a
/// message id that names the change, and the request id for tracing.
pub fn properties(m: &OutboxMessage) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        REQUEST_ID_HEADER.into(),
        AMQPValue::LongString(m.request_id.as_str().into()),
    );
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_priority(m.priority)
        .with_content_type("application/json".into())
        .with_message_id(m.message_id.as_str().into())
        .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64)
        .with_headers(headers)
}
