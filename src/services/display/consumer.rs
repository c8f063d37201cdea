//! The RabbitMQ side of the bridge: consumes `display_bridge_queue` (new orders
//! from `orders_topic`, status changes from `notifications_fanout`, part and
//! rush changes from `stations_topic`) in order,
//! and acks each delivery only once everything it caused was acknowledged by
//! the MQTT broker (at least once, end to end).
//!
//! Deliveries are handled one at a time, in queue order: work out the order's
//! current state (from the messages, see `cache`; from the database when a
//! message is missing), hand its state and the event to the MQTT task. A
//! second task waits for the PUBACKs, in the same order, and acks. The pipeline
//! is as deep as the prefetch. The MQTT broker losing our session ends the
//! RabbitMQ session instead of skipping a message: the broker then returns
//! every unacknowledged delivery to the queue, in order, for the next session.
//! A database read that fails is retried in place (in order) while the
//! database is down; an order that keeps failing while it is up is given up
//! (its event is still published), so no single order can stall the queue.

use super::cache::{self, OrderCache};
use super::mqtt::{Cmd, Publisher};
use super::payload::Event;
use crate::broker::delivery::{Outcome, PoisonCap};
use crate::broker::topology;
use crate::broker::{bounded_setup, connect, connection_lost};
use crate::domain::events::{
    OrderMessage, StatusUpdate, NOTIFICATIONS_EXCHANGE, ORDERS_EXCHANGE, STATIONS_EXCHANGE,
};
use crate::domain::stations::StationUpdate;
use crate::link::backoff::Backoff;
use crate::link::supervise::{LinkState, SessionEnd, Supervisor};
use crate::process::config::{QueueType, RabbitConfig};
use crate::process::metrics;
use crate::storage::{OrderView, SharedStore};
use chrono::Utc;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Deliveries in hand (being published or waiting for their PUBACKs).
pub const PREFETCH: u16 = 100;
/// On stop: how long to wait for the PUBACKs of what was already published.
const SETTLE: Duration = Duration::from_secs(5);

pub struct Consumer {
    pub store: SharedStore,
    pub rabbit: RabbitConfig,
    /// `topology::display_queue`: one per box when several serve the kitchen.
    pub queue: String,
    pub publisher: Publisher,
    pub link: LinkState,
    /// The MQTT connection: no use waiting for PUBACKs while it is down.
    pub mqtt: LinkState,
}

/// The MQTT broker lost publishes we had not seen acknowledged: the session
/// ends so that RabbitMQ delivers them again, in order.
#[derive(Debug, thiserror::Error)]
#[error("MQTT publishes were lost before their PUBACK")]
struct MqttLost;

type Pending = (Delivery, Vec<oneshot::Receiver<()>>);

impl Consumer {
    /// Consumes `display_bridge_queue` until `shutdown`. Readiness: `link`
    /// comes up once it consumes (nothing published after that is missed).
    pub async fn run(self, shutdown: CancellationToken) {
        let mut sup = Supervisor::new(self.link.clone());
        while sup.next(self.session(&shutdown).await, &shutdown).await {}
    }

    async fn session(&self, shutdown: &CancellationToken) -> SessionEnd {
        let conn = match connect(&self.rabbit, super::SERVICE).await {
            Ok(c) => c,
            Err(e) => return e.into(),
        };
        let (ch, consumer) =
            match bounded_setup(subscribe(&conn, self.rabbit.queue_type, &self.queue)).await {
                Ok(c) => c,
                Err(end) => return end,
            };
        self.link.up(&format!("queue '{}'", self.queue));
        let end = self.consume(consumer, &ch, shutdown).await;
        crate::broker::close(&conn, &[&ch]).await;
        if matches!(&end, SessionEnd::Restart(e) if e.is::<MqttLost>()) {
            tracing::warn!(
                action = "display_requeued",
                "MQTT publishes were lost before their PUBACK; RabbitMQ delivers them again"
            );
            // Queued behind whatever this session still handed over, so those
            // cannot mark the redelivered messages as duplicates.
            self.publisher.send(Cmd::ForgetSent, shutdown).await;
        }
        end
    }

    async fn consume(
        &self,
        mut consumer: lapin::Consumer,
        ch: &lapin::Channel,
        shutdown: &CancellationToken,
    ) -> SessionEnd {
        let lost = CancellationToken::new();
        let (pending_tx, pending_rx) = mpsc::channel::<Pending>(PREFETCH as usize);
        let acker =
            tokio::spawn(settle(pending_rx, lost.clone()).instrument(tracing::Span::current()));
        // Per session: after a reconnect the first message of each order reads
        // the database once, which also covers whatever was missed meanwhile.
        let mut cache = OrderCache::new(cache::CAPACITY);
        let end = loop {
            let d = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break SessionEnd::Shutdown,
                _ = lost.cancelled() => break SessionEnd::Restart(Box::new(MqttLost)),
                next = consumer.next() => match next {
                    Some(Ok(d)) => d,
                    Some(Err(e)) => break e.into(),
                    None => break connection_lost(),
                },
            };
            match self.process(&d, &mut cache, shutdown).await {
                Some(waits) => {
                    if pending_tx.send((d, waits)).await.is_err() {
                        break SessionEnd::Restart(Box::new(MqttLost));
                    }
                }
                // Stopping while the MQTT side was not taking publishes.
                None => break SessionEnd::Shutdown,
            }
        };
        // No new deliveries; ack what the broker acknowledges within SETTLE. The
        // rest return to the queue when the connection closes.
        let _ = ch
            .basic_cancel(consumer.tag(), BasicCancelOptions::default())
            .await;
        drop(pending_tx);
        let abort = acker.abort_handle();
        let grace = if self.mqtt.is_up() {
            SETTLE
        } else {
            Duration::ZERO
        };
        if tokio::time::timeout(grace, acker).await.is_err() {
            abort.abort();
        }
        end
    }

    /// Hands what one delivery means to the MQTT task. Returns what to wait for
    /// before acking it, or None when shutdown came first.
    async fn process(
        &self,
        d: &Delivery,
        cache: &mut OrderCache,
        shutdown: &CancellationToken,
    ) -> Option<Vec<oneshot::Receiver<()>>> {
        enum Msg {
            Created(OrderMessage),
            Changed(StatusUpdate),
            Station(StationUpdate),
        }
        let exchange = d.exchange.as_str();
        let decoded = if exchange == ORDERS_EXCHANGE {
            OrderMessage::decode(&d.data).map(Msg::Created)
        } else if exchange == NOTIFICATIONS_EXCHANGE {
            StatusUpdate::decode(&d.data).map(Msg::Changed)
        } else if exchange == STATIONS_EXCHANGE {
            StationUpdate::decode(&d.data).map(Msg::Station)
        } else {
            Err(format!("message from unexpected exchange '{exchange}'"))
        };
        let msg = match decoded {
            Ok(m) => m,
            Err(e) => {
                // Nothing to show for it; acked (dropped) so it cannot block the queue.
                tracing::error!(action = "message_processing_failed", error = %e, "Unreadable message dropped by the display bridge");
                return Some(Vec::new());
            }
        };
        let n = match &msg {
            Msg::Created(m) => m.placed.order_number.clone(),
            Msg::Changed(u) => u.order_number.clone(),
            Msg::Station(u) => u.order_number.clone(),
        };
        let known = match &msg {
            Msg::Created(m) => cache.created(m),
            Msg::Changed(u) => cache.changed(u),
            Msg::Station(u) => cache.station_changed(u),
        };
        let view = match known {
            Some(v) => Some(v),
            // Not derivable from the messages seen: the database has it.
            None => match self.read(&n, shutdown).await {
                Some(v) => v.inspect(|v| cache.remember(v.clone())),
                None => return None,
            },
        };
        let mut waits = Vec::with_capacity(2);
        match &view {
            Some(v) => {
                let (tx, rx) = oneshot::channel();
                let cmd = Cmd::State {
                    view: Box::new(v.clone()),
                    snapshot: false,
                    done: Some(tx),
                };
                if !self.publisher.send(cmd, shutdown).await {
                    return None;
                }
                waits.push(rx);
            }
            None => tracing::warn!(
                action = "message_processing_failed",
                order_number = %n,
                "Order not in the database; publishing its event only"
            ),
        }
        // The lag: how far behind the events the screens are.
        let happened = match &msg {
            Msg::Created(m) => m.created_at,
            Msg::Changed(u) => Some(u.timestamp),
            Msg::Station(u) => Some(u.timestamp),
        };
        if let Some(t) = happened {
            let lag = (Utc::now() - t).num_milliseconds().max(0) as f64 / 1e3;
            ::metrics::gauge!(metrics::BRIDGE_LAG).set(lag);
        }
        let event = match &msg {
            Msg::Created(m) => Event::created(m, view.as_ref(), Utc::now()),
            Msg::Changed(u) => Event::status_changed(u, view.as_ref()),
            Msg::Station(u) => Event::station_changed(u, view.as_ref()),
        };
        let (tx, rx) = oneshot::channel();
        let cmd = Cmd::Event {
            event,
            done: Some(tx),
        };
        if !self.publisher.send(cmd, shutdown).await {
            return None;
        }
        waits.push(rx);
        Some(waits)
    }

    /// Reads order `n`, in place: deliveries stay in queue order, and one
    /// order cannot stall the queue. While the database is down it waits for
    /// it (a message is not at fault then); an order whose read keeps failing
    /// while the database answers is given up after `POISON_AFTER` tries (the
    /// caller then publishes its event only, as for an unknown order). None
    /// when shutdown came first.
    async fn read(&self, n: &str, shutdown: &CancellationToken) -> Option<Option<OrderView>> {
        let mut cap = PoisonCap::default();
        let mut backoff = Backoff::default();
        loop {
            let e = match self.store.order(n).await {
                Ok(v) => return Some(v),
                Err(e) => e,
            };
            let db_answers = e.is_unavailable() && self.store.ping().await.is_ok();
            let outcome = Outcome::of_failure(e.class(), e.to_string());
            match cap.check(n, outcome, db_answers || !e.is_unavailable()) {
                Outcome::Retry(_) => {
                    if backoff.attempts() == 0 {
                        tracing::error!(action = "db_connection_failed", order_number = %n, error = %e, "Display bridge could not read an order; retrying");
                    }
                    if !backoff.wait(shutdown).await {
                        return None;
                    }
                }
                Outcome::DeadLetter(reason) => {
                    tracing::error!(action = "message_processing_failed", order_number = %n, error = %reason, "Order unreadable; publishing its event only");
                    return Some(None);
                }
                Outcome::Ack => return Some(None),
            }
        }
    }
}

/// Declares the topology and the display queue, and consumes it.
async fn subscribe(
    conn: &lapin::Connection,
    qt: QueueType,
    queue: &str,
) -> Result<(lapin::Channel, lapin::Consumer), lapin::Error> {
    let ch = topology::channel(conn, qt).await?;
    topology::declare_display_queue(&ch, qt, queue).await?;
    ch.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
    let consumer = ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((ch, consumer))
}

/// Acks deliveries in order, each once all its publishes were acknowledged.
/// A publish lost (its sender dropped) cancels `lost` and stops acking: the
/// session ends and RabbitMQ redelivers from there.
async fn settle(mut pending: mpsc::Receiver<Pending>, lost: CancellationToken) {
    while let Some((d, waits)) = pending.recv().await {
        for w in waits {
            if w.await.is_err() {
                lost.cancel();
                return;
            }
        }
        if let Err(e) = d.ack(BasicAckOptions::default()).await {
            // The channel is gone; the consumer sees it too, and RabbitMQ
            // redelivers (harmless: the MQTT side drops what it already sent).
            tracing::debug!(action = "ack_failed", error = %e, "Could not ack a delivery");
        }
    }
}
