//! The RabbitMQ side of the bridge: consumes `display_bridge_queue` (new orders
//! from `orders_topic`, status changes from `notifications_fanout`) in order,
//! and acks each delivery only once everything it caused was acknowledged by
//! the MQTT broker (at least once, end to end).
//!
//! Deliveries are handled one at a time, in queue order: work out the order's
//! current state (from the messages, see `cache`; from the database when a
//! message is missing), hand its state and the event to the MQTT task. A second task waits for the PUBACKs, in the same order, and acks. The
//! pipeline is as deep as the prefetch. Anything that breaks the order (the
//! database failing, the MQTT broker losing our session) ends the RabbitMQ
//! session instead of skipping a message: the broker then returns every
//! unacknowledged delivery to the queue, in order, for the next session.

use super::cache::{self, OrderCache};
use super::mqtt::{Cmd, Publisher};
use super::payload::Event;
use crate::broker::backoff::Backoff;
use crate::broker::topology::{self, DISPLAY_QUEUE};
use crate::broker::{connect, LinkState, OutageLog};
use crate::domain::events::{OrderMessage, StatusUpdate, NOTIFICATIONS_EXCHANGE, ORDERS_EXCHANGE};
use crate::process::config::RabbitConfig;
use crate::storage::{SharedStore, StoreError};
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
    pub publisher: Publisher,
    pub link: LinkState,
    /// The MQTT connection: no use waiting for PUBACKs while it is down.
    pub mqtt: LinkState,
}

/// Why a session ended.
#[derive(Debug)]
enum End {
    Rabbit(lapin::Error),
    Store(StoreError),
    /// The MQTT broker lost publishes we had not seen acknowledged.
    MqttLost,
}

type Pending = (Delivery, Vec<oneshot::Receiver<()>>);

impl Consumer {
    pub async fn run(self, shutdown: CancellationToken, ready: oneshot::Sender<()>) {
        let mut ready = Some(ready);
        let mut backoff = Backoff::default();
        let mut outage = OutageLog::default();
        while !shutdown.is_cancelled() {
            match self
                .session(&shutdown, &mut outage, &mut backoff, &mut ready)
                .await
            {
                Ok(()) => break,
                Err(End::Rabbit(e)) => {
                    self.link.set(false);
                    outage.failed("display bridge consumer", &e, backoff.attempts());
                }
                Err(End::Store(e)) => {
                    tracing::error!(
                        action = "db_connection_failed",
                        error = %e,
                        "Display bridge could not read an order; its messages go back to the queue"
                    );
                }
                Err(End::MqttLost) => {
                    tracing::warn!(
                        action = "display_requeued",
                        "MQTT publishes were lost before their PUBACK; RabbitMQ delivers them again"
                    );
                    // Queued behind whatever the old session still handed over, so
                    // those cannot mark the redelivered messages as duplicates.
                    self.publisher.send(Cmd::ForgetSent, &shutdown).await;
                }
            }
            if !backoff.wait(&shutdown).await {
                break;
            }
        }
        self.link.set(false);
    }

    async fn session(
        &self,
        shutdown: &CancellationToken,
        outage: &mut OutageLog,
        backoff: &mut Backoff,
        ready: &mut Option<oneshot::Sender<()>>,
    ) -> Result<(), End> {
        let conn = connect(&self.rabbit, super::SERVICE)
            .await
            .map_err(End::Rabbit)?;
        let ch = conn.create_channel().await.map_err(End::Rabbit)?;
        let consumer = async {
            topology::declare(&ch).await?;
            topology::declare_display_queue(&ch).await?;
            ch.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
            ch.basic_consume(
                DISPLAY_QUEUE.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
        }
        .await;
        let mut consumer = consumer.map_err(End::Rabbit)?;
        self.link.set(true);
        outage.connected(super::SERVICE, ORDERS_EXCHANGE);
        if let Some(tx) = ready.take() {
            let _ = tx.send(());
        }

        let lost = CancellationToken::new();
        let (pending_tx, pending_rx) = mpsc::channel::<Pending>(PREFETCH as usize);
        let acker =
            tokio::spawn(settle(pending_rx, lost.clone()).instrument(tracing::Span::current()));
        let mut progressed = false;
        // Per session: after a reconnect the first message of each order reads
        // the database once, which also covers whatever was missed meanwhile.
        let mut cache = OrderCache::new(cache::CAPACITY);
        let result = loop {
            let d = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Ok(()),
                _ = lost.cancelled() => break Err(End::MqttLost),
                next = consumer.next() => match next {
                    Some(Ok(d)) => d,
                    Some(Err(e)) => break Err(End::Rabbit(e)),
                    None => break Err(End::Rabbit(crate::broker::connection_lost())),
                },
            };
            match self.process(&d, &mut cache, shutdown).await {
                Ok(Some(waits)) => {
                    if pending_tx.send((d, waits)).await.is_err() {
                        break Err(End::MqttLost);
                    }
                    if !progressed {
                        // Reset only once a delivery went through: a database that
                        // fails every first read must not make us spin.
                        backoff.reset();
                        progressed = true;
                    }
                }
                // Stopping while the MQTT side was not taking publishes.
                Ok(None) => break Ok(()),
                Err(e) => break Err(End::Store(e)),
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
        let _ = conn.close(200, "shutdown".into()).await;
        self.link.set(false);
        result
    }

    /// Hands what one delivery means to the MQTT task. Returns what to wait for
    /// before acking it, or None when shutdown came first.
    async fn process(
        &self,
        d: &Delivery,
        cache: &mut OrderCache,
        shutdown: &CancellationToken,
    ) -> Result<Option<Vec<oneshot::Receiver<()>>>, StoreError> {
        enum Msg {
            Created(OrderMessage),
            Changed(StatusUpdate),
        }
        let exchange = d.exchange.as_str();
        let decoded = if exchange == ORDERS_EXCHANGE {
            OrderMessage::decode(&d.data).map(Msg::Created)
        } else if exchange == NOTIFICATIONS_EXCHANGE {
            StatusUpdate::decode(&d.data).map(Msg::Changed)
        } else {
            Err(format!("message from unexpected exchange '{exchange}'"))
        };
        let msg = match decoded {
            Ok(m) => m,
            Err(e) => {
                // Nothing to show for it; acked (dropped) so it cannot block the queue.
                tracing::error!(action = "message_processing_failed", error = %e, "Unreadable message dropped by the display bridge");
                return Ok(Some(Vec::new()));
            }
        };
        let n = match &msg {
            Msg::Created(m) => m.order_number.clone(),
            Msg::Changed(u) => u.order_number.clone(),
        };
        let known = match &msg {
            Msg::Created(m) => cache.created(m),
            Msg::Changed(u) => cache.changed(u),
        };
        let view = match known {
            Some(v) => Some(v),
            // Not derivable from the messages seen: the database has it.
            None => self
                .store
                .order(&n)
                .await?
                .inspect(|v| cache.remember(v.clone())),
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
                    return Ok(None);
                }
                waits.push(rx);
            }
            None => tracing::warn!(
                action = "message_processing_failed",
                order_number = %n,
                "Order not in the database; publishing its event only"
            ),
        }
        let event = match &msg {
            Msg::Created(m) => Event::created(m, view.as_ref(), Utc::now()),
            Msg::Changed(u) => Event::status_changed(u, view.as_ref()),
        };
        let (tx, rx) = oneshot::channel();
        let cmd = Cmd::Event {
            event,
            done: Some(tx),
        };
        if !self.publisher.send(cmd, shutdown).await {
            return Ok(None);
        }
        waits.push(rx);
        Ok(Some(waits))
    }
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
