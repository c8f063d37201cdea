//! The kitchen worker: takes orders from its per-type queues, cooks them and
//! moves them received -> cooking -> ready.
//!
//! Redelivery is harmless by construction: each step is a compare-and-set
//! transition in the database (`storage::Store::transition_from`, starting from
//! the state the worker knows: `received` at version 1 from the message, then
//! what the first step returned), and when the order is elsewhere, what to do
//! is decided from its current status (`domain::status::kitchen_step`), not
//! from the message. A message that can never succeed goes to the dead-letter
//! queue with its reason; a transient failure is requeued after a pause.

use crate::broker::delivery::{Bands, Outcome, PoisonCap};
use crate::broker::relay::Relay;
use crate::broker::topology::{self, kitchen_queues, REASON_HEADER, REQUEST_ID_HEADER};
use crate::broker::{bounded_setup, connect, connection_lost, STOP_WAIT as BROKER_STOP_WAIT};
use crate::domain::events::{OrderMessage, ORDERS_EXCHANGE};
use crate::domain::order::PRIORITIES;
use crate::domain::status::{kitchen_step, KitchenStep};
use crate::domain::transition::OrderState;
use crate::domain::{OrderStatus, OrderType};
use crate::link::supervise::{LinkState, SessionEnd, Supervisor};
use crate::process::config::{CookingSeconds, QueueType, RabbitConfig};
use crate::process::metrics;
use crate::storage::{
    Durability, Registered, SharedStore, StoreError, Transition, TransitionOutcome, WorkerLease,
    WorkerRegistration,
};
use chrono::Utc;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub const SERVICE: &str = "kitchen-worker";

/// With a queue per priority: how long a new session lets its bands fill
/// before it starts the first order.
const GATHER: Duration = Duration::from_millis(200);

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub name: String,
    /// Empty: all types.
    pub order_types: Vec<OrderType>,
    pub prefetch: u16,
    pub heartbeat: Duration,
    pub cooking: CookingSeconds,
}

impl WorkerConfig {
    pub fn handled_types(&self) -> Vec<OrderType> {
        if self.order_types.is_empty() {
            OrderType::ALL.to_vec()
        } else {
            self.order_types.clone()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("worker '{name}' is already online (last heartbeat {last_seen}); stop that worker or choose another --worker-name")]
    AlreadyOnline {
        name: String,
        last_seen: chrono::DateTime<Utc>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Registers the worker row. Refuses a name whose worker is alive; takes over
/// one whose process is gone (a crash or a power cut left it "online"), as
/// `domain::worker::decide` says. The returned lease must live as long as the
/// worker: it is the proof of life a restarted worker of that name checks.
pub async fn register(store: &SharedStore, cfg: &WorkerConfig) -> Result<WorkerLease, WorkerError> {
    let types: Vec<&str> = cfg.handled_types().iter().map(|t| t.as_str()).collect();
    // A server drops a killed process's session lock a moment after the
    // process died; a few tries before refusing cover a restart at once.
    let mut lease = store.worker_lease(&cfg.name).await?;
    for pause_ms in [250, 500, 1000] {
        if lease.held() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        lease = store.worker_lease(&cfg.name).await?;
    }
    let reg = WorkerRegistration {
        name: cfg.name.clone(),
        order_types: types.join(","),
        heartbeat_interval_secs: cfg.heartbeat.as_secs().max(1) as i64,
        now: Utc::now(),
        name_lock_held: lease.held(),
    };
    match store.register_worker(&reg).await? {
        Registered::AlreadyOnline { last_seen } => {
            let e = WorkerError::AlreadyOnline {
                name: cfg.name.clone(),
                last_seen,
            };
            tracing::error!(action = "worker_registration_failed", error = %e, "Worker registration refused");
            Err(e)
        }
        Registered::TakenOver { last_seen } => {
            tracing::info!(
                action = "worker_registered",
                worker = %cfg.name,
                stale_since = %last_seen,
                "Took over a stale 'online' registration (its previous process is gone)"
            );
            Ok(lease)
        }
        Registered::New | Registered::Returned => {
            tracing::info!(action = "worker_registered", worker = %cfg.name, types = %reg.order_types, "Worker registered");
            Ok(lease)
        }
    }
}

#[derive(Clone)]
pub struct Kitchen {
    pub cfg: WorkerConfig,
    pub store: SharedStore,
    pub rabbit: RabbitConfig,
    pub relay: Relay,
    pub link: LinkState,
    /// Failures per order message, for the poison-message cap.
    pub poison: Arc<Mutex<PoisonCap>>,
    /// Released when the worker stops (after it marked itself offline).
    pub lease: WorkerLease,
}

impl Kitchen {
    /// Heartbeats and consumption until `shutdown`; then finishes the orders in
    /// hand, returns unstarted ones to the queue and marks the worker offline.
    /// Readiness: `link` comes up once the worker consumes its queues.
    pub async fn run(self, shutdown: CancellationToken) {
        // Its own token: a consumer that stops for good (a fatal session end)
        // stops the heartbeat too, so the worker does not look alive.
        let stop_heartbeat = shutdown.child_token();
        let hb = tokio::spawn(
            heartbeat(self.store.clone(), self.cfg.clone(), stop_heartbeat.clone())
                .instrument(tracing::Span::current()),
        );
        let mut sup = Supervisor::new(self.link.clone());
        while sup.next(self.session(&shutdown).await, &shutdown).await {}
        stop_heartbeat.cancel();
        let _ = hb.await;
        match self.store.worker_offline(&self.cfg.name, Utc::now()).await {
            Ok(()) => {
                tracing::info!(action = "worker_offline", worker = %self.cfg.name, "Worker marked offline")
            }
            Err(e) => {
                tracing::error!(action = "db_connection_failed", error = %e, "Could not mark the worker offline")
            }
        }
    }

    async fn session(&self, shutdown: &CancellationToken) -> SessionEnd {
        let conn = match connect(&self.rabbit, &format!("kitchen-worker {}", self.cfg.name)).await {
            Ok(c) => c,
            Err(e) => return e.into(),
        };
        let (ch, dlq, consumers) = match bounded_setup(self.subscribe(&conn)).await {
            Ok(s) => s,
            Err(end) => return end,
        };
        let tags: Vec<_> = consumers.iter().map(|(_, c)| c.tag()).collect();
        let mut deliveries = futures_util::stream::select_all(
            consumers
                .into_iter()
                .map(|(band, c)| c.map(move |d| (band, d))),
        );
        self.link.up(&format!("exchange '{ORDERS_EXCHANGE}'"));

        // Orders in hand, at most `prefetch`; what arrives beyond that (only
        // with quorum queues, one per priority) waits in its band, and the
        // highest band's order starts first.
        let limit = usize::from(self.cfg.prefetch.max(1));
        let mut waiting = Bands::new(PRIORITIES.len());
        let mut in_hand = JoinSet::new();
        // A backlog arrives from every band's queue at once when the session
        // starts; the first order to arrive must not start merely for having
        // arrived first, so the bands fill for a moment before any starts.
        let mut gather = (self.rabbit.queue_type == QueueType::Quorum)
            .then(|| tokio::time::Instant::now() + GATHER);
        let end = loop {
            while gather.is_none() && in_hand.len() < limit {
                let Some(d) = waiting.pop() else { break };
                let me = self.clone();
                let dlq = dlq.clone();
                in_hand.spawn(
                    async move { me.handle(d, &dlq).await }.instrument(tracing::Span::current()),
                );
            }
            tokio::select! {
                _ = shutdown.cancelled() => break SessionEnd::Shutdown,
                Some(_) = in_hand.join_next(), if !in_hand.is_empty() => {}
                _ = tokio::time::sleep_until(gather.unwrap_or_else(tokio::time::Instant::now)), if gather.is_some() => {
                    gather = None;
                }
                next = deliveries.next() => match next {
                    Some((band, Ok(d))) => waiting.push(band, d),
                    Some((_, Err(e))) => break e.into(),
                    None => break connection_lost(),
                },
            }
        };
        // Stop new deliveries, finish what is cooking, hand back the rest.
        // Bounded: on a connection the broker dropped, a cancel may never be
        // answered, and the stop must not wait for it.
        for tag in tags {
            let cancel = ch.basic_cancel(tag, BasicCancelOptions::default());
            let _ = tokio::time::timeout(BROKER_STOP_WAIT, cancel).await;
        }
        while in_hand.join_next().await.is_some() {}
        let requeue = BasicNackOptions {
            requeue: true,
            multiple: false,
        };
        while let Some(d) = waiting.pop() {
            let _ = d.nack(requeue).await;
        }
        while let Ok(Some((_, Ok(d)))) =
            tokio::time::timeout(Duration::from_millis(200), deliveries.next()).await
        {
            let _ = d.nack(requeue).await;
        }
        crate::broker::close(&conn, &[&ch, &dlq]).await;
        end
    }

    /// Declares the topology and consumes this worker's queues. Returns the
    /// consuming channel, the (confirming) dead-letter channel and the
    /// consumers, each with its priority band (0 the highest).
    async fn subscribe(
        &self,
        conn: &lapin::Connection,
    ) -> Result<(Channel, Channel, Vec<(usize, lapin::Consumer)>), lapin::Error> {
        let qt = self.rabbit.queue_type;
        let ch = topology::channel(conn, qt).await?;
        let prefetch = self.cfg.prefetch.max(1);
        match qt {
            // global: the limit covers all of this channel's consumers together, so
            // `--prefetch=1` means one order in hand, whatever the number of queues.
            QueueType::Classic => {
                ch.basic_qos(prefetch, BasicQosOptions { global: true })
                    .await?
            }
            // Quorum queues take a limit per consumer only. One more than the
            // orders in hand keeps the next order of each band here, so when
            // one is done the highest band's next starts at once, not the
            // lower band's that happened to be here while the broker sends it.
            QueueType::Quorum => {
                ch.basic_qos(prefetch.saturating_add(1), BasicQosOptions::default())
                    .await?
            }
        }
        let dlq = conn.create_channel().await?;
        dlq.confirm_select(ConfirmSelectOptions::default()).await?;
        let mut consumers = Vec::new();
        for t in self.cfg.handled_types() {
            for (band, (q, _)) in kitchen_queues(t, qt).into_iter().enumerate() {
                // chef-dine_in, or chef-dine_in_p10 with a queue per priority.
                let short = q.trim_start_matches("kitchen_").trim_end_matches("_queue");
                let tag = format!("{}-{}", self.cfg.name, short);
                let c = ch
                    .basic_consume(
                        q.as_str().into(),
                        tag.as_str().into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                consumers.push((band, c));
            }
        }
        Ok((ch, dlq, consumers))
    }

    async fn handle(&self, d: Delivery, dlq: &Channel) {
        // Carry the request id of the POST that created the order into every
        // log line and status change this delivery causes.
        let rid = d
            .properties
            .headers()
            .as_ref()
            .and_then(|h| match h.inner().get(REQUEST_ID_HEADER) {
                Some(AMQPValue::LongString(s)) => Some(s.to_string()),
                Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_string()),
                _ => None,
            })
            .unwrap_or_else(crate::http::new_request_id);
        let span = tracing::info_span!("delivery", request_id = %rid);
        self.handle_in_span(d, dlq, rid).instrument(span).await
    }

    async fn handle_in_span(&self, d: Delivery, dlq: &Channel, rid: String) {
        let outcome = self.process(&d.data, &rid).await;
        let outcome = self.cap(&d, outcome).await;
        let res = match outcome {
            Outcome::Ack => d.ack(BasicAckOptions::default()).await,
            Outcome::DeadLetter(reason) => {
                tracing::error!(action = "message_processing_failed", error = %reason, "Message sent to the dead-letter queue");
                match dead_letter(dlq, &d, &reason).await {
                    // Acked only once the dead-letter copy is confirmed: never lost.
                    Ok(()) => d.ack(BasicAckOptions::default()).await,
                    Err(_) => {
                        d.nack(BasicNackOptions {
                            requeue: true,
                            multiple: false,
                        })
                        .await
                    }
                }
            }
            Outcome::Retry(reason) => {
                tracing::error!(action = "message_processing_failed", error = %reason, "Processing failed; the order is requeued");
                // Pause so a down database is not hammered by the same message.
                tokio::time::sleep(Duration::from_secs(1)).await;
                d.nack(BasicNackOptions {
                    requeue: true,
                    multiple: false,
                })
                .await
            }
        };
        if let Err(e) = res {
            // The channel is gone; the broker redelivers the message, harmlessly.
            tracing::debug!(action = "ack_failed", error = %e, "Could not settle a delivery");
        }
    }

    /// The poison-message cap: a retry that keeps failing the same way while
    /// the database answers becomes a dead letter (see `broker::delivery`).
    async fn cap(&self, d: &Delivery, outcome: Outcome) -> Outcome {
        // The relay names every message (the order number for an order);
        // a message from elsewhere is known by its body.
        let id = match d.properties.message_id() {
            Some(m) => m.to_string(),
            None => {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                d.data.hash(&mut h);
                format!("body:{:016x}", h.finish())
            }
        };
        let db_answers = match &outcome {
            Outcome::Retry(_) => self.store.ping().await.is_ok(),
            _ => false,
        };
        let mut cap = self.poison.lock().unwrap_or_else(|e| e.into_inner());
        match outcome {
            Outcome::Ack => {
                cap.forget(&id);
                Outcome::Ack
            }
            other => cap.check(&id, other, db_answers),
        }
    }

    async fn process(&self, body: &[u8], rid: &str) -> Outcome {
        let msg = match OrderMessage::decode(body) {
            Ok(m) => m,
            Err(e) => return Outcome::DeadLetter(e),
        };
        if !self.cfg.handled_types().contains(&msg.placed.order_type) {
            return Outcome::DeadLetter(format!(
                "order type {} arrived on a queue of another type",
                msg.placed.order_type
            ));
        }
        let cook_time = self.cfg.cooking.for_type(msg.placed.order_type);
        let n = &msg.placed.order_number;
        // The common case costs one statement: the message says the order was
        // received (version 1), so try received -> cooking from there at once.
        // Only when the order is no longer there (a redelivery) does the store
        // read where it is, and `kitchen_step` says what that means.
        let fresh = OrderState::received(
            n.clone(),
            msg.placed.order_type,
            msg.created_at.unwrap_or_else(Utc::now),
        );
        let eta = Utc::now() + chrono::Duration::from_std(cook_time).unwrap_or_default();
        let cooking = match self
            .change(&fresh, OrderStatus::Cooking, Some(eta), rid)
            .await
        {
            Ok(TransitionOutcome::Applied { order, .. }) => {
                tracing::debug!(action = "order_processing_started", order_number = %n, "Cooking started");
                order.state()
            }
            Ok(TransitionOutcome::NotFound) => {
                return Outcome::DeadLetter(format!("unknown order {n}"))
            }
            Err(e) => return failed(&e),
            Ok(TransitionOutcome::Rejected(e)) => match kitchen_step(e.current) {
                KitchenStep::AlreadyDone => return Outcome::Ack,
                KitchenStep::ResumeCooking => match self.store.order(n).await {
                    Ok(Some(o)) => o.state(),
                    Ok(None) => return Outcome::DeadLetter(format!("unknown order {n}")),
                    Err(e) => return failed(&e),
                },
                // received -> cooking is always legal; a refusal from `received`
                // means it changed under us: try again later.
                KitchenStep::StartCooking => {
                    return Outcome::Retry(format!("order {n} changed during the transition"))
                }
            },
        };
        let until = cooking.estimated_completion.unwrap_or_else(Utc::now);
        if self.cook_until(n, until).await == Cooked::Cancelled {
            tracing::info!(action = "order_cancelled", order_number = %n, "Order cancelled while cooking; stopped");
            return Outcome::Ack;
        }
        match self.change(&cooking, OrderStatus::Ready, None, rid).await {
            Ok(TransitionOutcome::Applied { .. }) => {
                tracing::debug!(action = "order_completed", order_number = %n, "Order ready");
                ::metrics::counter!(metrics::ORDERS_COOKED, "worker" => self.cfg.name.clone())
                    .increment(1);
                if let Some(received) = msg.created_at {
                    let secs = (Utc::now() - received).num_milliseconds().max(0) as f64 / 1e3;
                    ::metrics::histogram!(metrics::TICKET_TIME, "order_type" => msg.placed.order_type.as_str())
                        .record(secs);
                }
                Outcome::Ack
            }
            // Cancelled at the last moment, or finished by another worker.
            Ok(TransitionOutcome::Rejected(_)) => Outcome::Ack,
            Ok(TransitionOutcome::NotFound) => Outcome::DeadLetter(format!("unknown order {n}")),
            Err(e) => failed(&e),
        }
    }

    /// Moves the order, believed to be in state `known`, to `to`: one
    /// compare-and-set when the belief is right, a read and a retry when not.
    async fn change(
        &self,
        known: &OrderState,
        to: OrderStatus,
        eta: Option<chrono::DateTime<Utc>>,
        rid: &str,
    ) -> Result<TransitionOutcome, StoreError> {
        let t = Transition {
            order_number: known.order_number.clone(),
            to,
            changed_by: self.cfg.name.clone(),
            request_id: rid.to_string(),
            now: Utc::now(),
            estimated_completion: eta,
            notes: None,
            // `cooking` is told to no one before `ready`, which is made
            // durable before the ack (and the relay makes it durable before
            // publishing it): a sync of its own would only slow the kitchen.
            durability: if to == OrderStatus::Cooking {
                Durability::Deferred
            } else {
                Durability::Now
            },
        };
        let out = self.store.transition_from(&t, Some(known)).await?;
        if matches!(out, TransitionOutcome::Applied { .. }) {
            match t.durability {
                Durability::Now => self.relay.wake(),
                Durability::Deferred => self.relay.wake_soon(),
            }
        }
        Ok(out)
    }

    /// "Cooks" until `until`, looking every quarter second whether the order was
    /// cancelled meanwhile (its status only, one small read). Shutdown does not
    /// interrupt: the order in hand is finished.
    async fn cook_until(&self, n: &str, until: chrono::DateTime<Utc>) -> Cooked {
        loop {
            let left = (until - Utc::now()).to_std().unwrap_or_default();
            if left.is_zero() {
                return Cooked::Done;
            }
            tokio::time::sleep(left.min(Duration::from_millis(250))).await;
            if let Ok(Some(OrderStatus::Cancelled)) = self.store.status(n).await {
                return Cooked::Cancelled;
            }
        }
    }
}

/// A store failure, as the delivery's outcome (decided by its class).
fn failed(e: &StoreError) -> Outcome {
    Outcome::of_failure(e.class(), e.to_string())
}

#[derive(Debug, PartialEq)]
enum Cooked {
    Done,
    Cancelled,
}

/// Copies the message to the dead-letter exchange with the reason in a header.
async fn dead_letter(ch: &Channel, d: &Delivery, reason: &str) -> Result<(), String> {
    let mut headers = d.properties.headers().clone().unwrap_or_default();
    headers.insert(REASON_HEADER.into(), AMQPValue::LongString(reason.into()));
    headers.insert(
        "x-original-routing-key".into(),
        AMQPValue::LongString(d.routing_key.as_str().into()),
    );
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers);
    let confirm = ch
        .basic_publish(
            topology::DEAD_LETTER_EXCHANGE.into(),
            d.routing_key.clone(),
            BasicPublishOptions::default(),
            &d.data,
            props,
        )
        .await
        .map_err(|e| e.to_string())?;
    match confirm.await.map_err(|e| e.to_string())? {
        lapin::Confirmation::Nack(_) => Err("dead-letter publish refused by the broker".into()),
        _ => Ok(()),
    }
}

async fn heartbeat(store: SharedStore, cfg: WorkerConfig, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(cfg.heartbeat.max(Duration::from_millis(100)));
    tick.tick().await; // registration just set last_seen
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => match store.heartbeat(&cfg.name, Utc::now()).await {
                Ok(()) => tracing::debug!(action = "heartbeat_sent", worker = %cfg.name, "Heartbeat sent"),
                Err(e) => tracing::error!(action = "db_connection_failed", error = %e, "Heartbeat failed"),
            }
        }
    }
}

/// Used by `--mode=all`: one worker named after the host.
pub fn default_worker_name() -> String {
    let h = crate::process::telemetry::hostname();
    let clean: String = h
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("chef_{clean}")
}

pub type SharedKitchen = Arc<Kitchen>;
