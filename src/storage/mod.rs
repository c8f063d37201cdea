//! Storage: one trait, two real implementations (PostgreSQL and SQLite).
//!
//! Every write that changes an order also writes the message announcing it into
//! the `outbox` table, in the same transaction (see `broker::relay`). Status
//! changes are decided by `domain::transition::decide` (the new state and its
//! Status Update, built in Rust) and persisted with a compare-and-set on the
//! order's `(status, version)`: when another change won meanwhile, the store
//! reads the order again and decides again, so a redelivered message can never
//! apply the same change twice.

pub mod backup;
pub mod backup_file;
mod migrations;
pub mod postgres;
pub mod sqlite;
mod tokens;

use crate::domain::error::Class;
use crate::domain::events::{OrderMessage, PlacedOrder, StatusUpdate, ORDERS_EXCHANGE};
use crate::domain::kitchen_notes::Allergen;
use crate::domain::speed::TicketTimes;
use crate::domain::stations::{Action, Part, PartState, Refusal, Routing, Ticket, TicketDecision};
use crate::domain::transition::{Change, Decision, OrderState};
use crate::domain::{Cents, Item, OrderStatus, TransitionError, ValidOrder};
use crate::process::config::{ClusterConfig, DatabaseConfig, StorageBackend};
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
pub use tokens::{TokenRow, TokenStore};

pub type SharedStore = Arc<dyn Store>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        })
    }
}

/// A database failure: what failed, its cause, and its [`Class`], decided by
/// each backend from its native codes (SQLSTATE and connection state on
/// PostgreSQL, extended result codes on SQLite), never from message text. The
/// class alone decides what callers do: 503 or retry for `Transient`, and so on.
#[derive(Clone)]
pub struct StoreError {
    class: Class,
    /// Transient because the store's own queue is full (not the server away).
    busy: bool,
    context: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl StoreError {
    pub fn new(class: Class, context: impl Into<String>) -> Self {
        StoreError {
            class,
            busy: false,
            context: context.into(),
            source: None,
        }
    }

    /// Too much work waiting for the database (a bounded queue stayed full):
    /// transient, and said as such to the client.
    pub fn busy() -> Self {
        StoreError {
            busy: true,
            ..StoreError::new(Class::Transient, "too many writes waiting")
        }
    }

    /// Whether this is [`StoreError::busy`].
    pub fn is_busy(&self) -> bool {
        self.busy
    }

    pub fn caused_by(
        class: Class,
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StoreError {
            class,
            busy: false,
            context: context.into(),
            source: Some(Arc::new(source)),
        }
    }

    pub fn class(&self) -> Class {
        self.class
    }

    /// The database cannot be reached right now; retrying later may work.
    pub fn is_unavailable(&self) -> bool {
        self.class == Class::Transient
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.busy {
            "database busy"
        } else if self.is_unavailable() {
            "database unavailable"
        } else {
            "database error"
        };
        write!(f, "{kind}: {}", self.context)?;
        if let Some(src) = &self.source {
            write!(f, ": {src}")?;
        }
        Ok(())
    }
}

/// The whole cause chain, once, as the edges log it.
impl std::fmt::Debug for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self} ({:?})", self.class)?;
        let mut cur = self.source.as_deref().and_then(|e| e.source());
        while let Some(e) = cur {
            write!(f, "\n  caused by: {e}")?;
            cur = e.source();
        }
        Ok(())
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// The answer to `create_order`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedOrder {
    pub order_number: String,
    pub total: Cents,
    pub priority: i32,
}

/// An `Idempotency-Key` as the stores keep it (issue 14, migration 005).
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    /// Whose key: see `domain::idempotency::scope`.
    pub scope: String,
    pub key: String,
    /// Fingerprint of the request body: see `domain::idempotency::request_hash`.
    pub request_hash: String,
    /// After this, the key is ignored (and swept): a new request makes a new order.
    pub expires_at: DateTime<Utc>,
}

/// The answer to `create_order_keyed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyedOutcome {
    /// A new order, committed together with its key.
    Created(CreatedOrder),
    /// The key was already used, with the same body: the original order's
    /// answer. Nothing was written.
    Replayed(CreatedOrder),
    /// The key was already used with another body. Nothing was written.
    Mismatch,
}

/// A requested status change.
#[derive(Debug, Clone)]
pub struct Transition {
    pub order_number: String,
    pub to: OrderStatus,
    pub changed_by: String,
    pub request_id: String,
    pub now: DateTime<Utc>,
    /// For `-> cooking`: when the order will be ready.
    pub estimated_completion: Option<DateTime<Utc>>,
    pub notes: Option<String>,
    /// Whether the change must be on disk before the store answers.
    pub durability: Durability,
}

/// When a write must be on disk (fsync) before the store answers.
///
/// `Now` is the rule for anything the caller tells the world about at once
/// (an HTTP answer, a broker ack). `Deferred` is for a step that nobody hears
/// of before a later durable step of the same caller: the kitchen's `cooking`,
/// which its `ready` (written later, so flushed with it) must precede before
/// the delivery is acked. Its outbox message still leaves only once it is on
/// disk: the relay makes what it claims durable before publishing. A power cut
/// in between loses the change, the unacked delivery comes back, and the
/// change is made again. A backend may treat `Deferred` as `Now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    #[default]
    Now,
    Deferred,
}

impl Transition {
    /// The change as the domain decides it.
    pub fn change(&self) -> Change {
        Change {
            to: self.to,
            by: self.changed_by.clone(),
            at: self.now,
            estimated_completion: self.estimated_completion,
        }
    }
}

/// How many times a store tries a transition whose compare-and-set keeps
/// missing (another change won each time) before it gives up with a conflict.
const CAS_TRIES: usize = 8;

#[derive(Debug, Clone)]
pub enum TransitionOutcome {
    Applied {
        old: OrderStatus,
        /// The order after the change, without its items (callers need the
        /// status, times and version; boxed: the other variants are small).
        order: Box<OrderView>,
    },
    /// The order's current status does not allow the change; nothing was written.
    Rejected(TransitionError),
    NotFound,
}

/// An order as the tracking API and the displays see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OrderView {
    /// First, so the fields keep their order in the JSON.
    #[serde(flatten)]
    pub placed: PlacedOrder,
    pub status: OrderStatus,
    pub processed_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub estimated_completion: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub version: i64,
    /// The order's note for the kitchen (issue 13).
    pub notes: Option<String>,
    /// Issue 24: the expo's rush mark.
    pub rush: bool,
    /// When the last part was bumped (None while a part is open, or without stations).
    pub stations_done_at: Option<DateTime<Utc>>,
    /// Every part (an item at a station), by item then station; empty without stations.
    pub parts: Vec<Part>,
}

impl OrderView {
    /// The order as stored, from the message that announced it: what the
    /// display bridge shows without reading the database. None for a message
    /// without `created_at` (from an older version).
    pub fn from_message(m: &OrderMessage) -> Option<OrderView> {
        Some(OrderView {
            placed: m.placed.clone(),
            status: OrderStatus::Received,
            processed_by: None,
            created_at: m.created_at?,
            updated_at: m.created_at?,
            estimated_completion: None,
            completed_at: None,
            version: 1,
            notes: m.notes.clone(),
            rush: false,
            stations_done_at: None,
            parts: m
                .placed
                .items
                .iter()
                .enumerate()
                .flat_map(|(i, item)| {
                    item.stations
                        .iter()
                        .map(move |s| Part::waiting(i as i32, s))
                })
                .collect(),
        })
    }

    /// Applies the change `u` announces with `domain::transition::apply`,
    /// the function whose decisions the stores persist. Only the next version
    /// applies: for any other (a gap, a duplicate) it returns false and leaves
    /// the view as it was.
    pub fn apply(&mut self, u: &StatusUpdate) -> bool {
        match crate::domain::transition::apply(&self.state(), u) {
            Some(next) => {
                self.set_state(next);
                true
            }
            None => false,
        }
    }

    /// The part of the order a status change reads.
    pub fn state(&self) -> OrderState {
        OrderState {
            order_number: self.placed.order_number.clone(),
            order_type: self.placed.order_type,
            status: self.status,
            version: self.version,
            processed_by: self.processed_by.clone(),
            updated_at: self.updated_at,
            estimated_completion: self.estimated_completion,
            completed_at: self.completed_at,
        }
    }

    fn set_state(&mut self, s: OrderState) {
        self.status = s.status;
        self.version = s.version;
        self.processed_by = s.processed_by;
        self.updated_at = s.updated_at;
        self.estimated_completion = s.estimated_completion;
        self.completed_at = s.completed_at;
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryEntry {
    pub status: OrderStatus,
    pub timestamp: DateTime<Utc>,
    pub changed_by: String,
    /// Issue 24: a part's change (station, item and its new state) or a rush
    /// change; absent from status entries, so those keep the spec's shape.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub station: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item_index: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item_state: Option<PartState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rush: Option<bool>,
}

impl HistoryEntry {
    /// A status-log row.
    pub fn status(status: OrderStatus, timestamp: DateTime<Utc>, changed_by: String) -> Self {
        HistoryEntry {
            status,
            timestamp,
            changed_by,
            station: None,
            item_index: None,
            item: None,
            item_state: None,
            rush: None,
        }
    }
}

/// The status log and the part/rush events of one order, as one history in
/// time order; at the same instant a part's change comes before the status
/// change it caused.
fn merge_history(status: Vec<HistoryEntry>, parts: Vec<HistoryEntry>) -> Vec<HistoryEntry> {
    let mut all: Vec<(bool, HistoryEntry)> = parts
        .into_iter()
        .map(|e| (false, e))
        .chain(status.into_iter().map(|e| (true, e)))
        .collect();
    // Stable: each source keeps its own order.
    all.sort_by(|a, b| a.1.timestamp.cmp(&b.1.timestamp).then(a.0.cmp(&b.0)));
    all.into_iter().map(|(_, e)| e).collect()
}

/// Gives each part entry of a history its item's name (`names` in the
/// order's item order).
fn name_items(entries: &mut [HistoryEntry], names: &[String]) {
    for e in entries {
        e.item = e
            .item_index
            .and_then(|i| names.get(usize::try_from(i).ok()?))
            .cloned();
    }
}

/// A station change as asked (issue 24): who asks what of which order.
#[derive(Debug, Clone)]
pub struct StationChange {
    pub order_number: String,
    pub action: Action,
    pub by: String,
    pub request_id: String,
    pub now: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub enum StationOutcome {
    /// The order afterwards; `changed` false: nothing to do, nothing written.
    Applied {
        order: Box<OrderView>,
        changed: bool,
    },
    Refused(Refusal),
    NotFound,
}

/// The samples of the report's `by_station` and `expo_wait`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StationTimes {
    /// One per done part: station, order received, part bumped.
    pub parts: Vec<(String, DateTime<Utc>, DateTime<Utc>)>,
    /// One per order done at every station that became ready: stations done, first ready.
    pub expo: Vec<(DateTime<Utc>, DateTime<Utc>)>,
}

pub use crate::domain::worker::{Registered, WorkerRegistration, WorkerRow};

/// Held for a kitchen worker's lifetime: the name's liveness lock (see
/// `domain::worker`). The server or the kernel releases it when the process
/// dies, however it dies; dropping it releases it too.
#[derive(Clone)]
pub struct WorkerLease {
    held: bool,
    _guard: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl WorkerLease {
    pub fn new(held: bool, guard: Option<Arc<dyn std::any::Any + Send + Sync>>) -> Self {
        WorkerLease {
            held,
            _guard: guard,
        }
    }

    /// True when this process holds the lock: no other live process has the name.
    pub fn held(&self) -> bool {
        self.held
    }
}

/// A message waiting in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMessage {
    pub id: i64,
    pub exchange: String,
    pub routing_key: String,
    pub payload: String,
    pub priority: u8,
    pub message_id: String,
    pub request_id: String,
}

/// An order as a backend stores it (see `Store::create_order`): the request
/// that carried it, when, and the business day its number belongs to.
#[derive(Debug, Clone, Copy)]
pub struct NewOrder<'a> {
    pub order: &'a ValidOrder,
    pub request_id: &'a str,
    pub now: DateTime<Utc>,
    pub day: NaiveDate,
}

/// A change the domain decided, as a backend persists it (the argument of
/// `persist_transition` and `persist_ticket`): what was asked, the state it
/// was decided on (what the compare-and-set expects), and the decision.
#[derive(Debug)]
pub struct Step<'a, Asked, State, Decided> {
    pub asked: &'a Asked,
    pub cur: &'a State,
    pub decided: &'a Decided,
}

/// A status change as `domain::transition::decide` decided it.
pub type TransitionStep<'a> = Step<'a, Transition, OrderState, Decision>;
/// A station change as `domain::stations::decide` decided it.
pub type TicketStep<'a> = Step<'a, StationChange, Ticket, TicketDecision>;

/// What `heartbeat` and `worker_offline` write: worker `name` seen at `now`,
/// as `status` (see `Store::set_worker`).
#[derive(Debug, Clone, Copy)]
pub struct WorkerSeen<'a> {
    pub name: &'a str,
    pub now: DateTime<Utc>,
    pub status: &'static str,
}

/// One step of the outbox relay (see `Store::claim_outbox`): delete the rows
/// `published`, then lease up to `limit` rows until `until`: this process's
/// own, and other processes' created before `orphaned_before`.
#[derive(Debug, Clone, Copy)]
pub struct OutboxClaim<'a> {
    pub published: &'a [i64],
    pub limit: i64,
    pub now: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub orphaned_before: DateTime<Utc>,
}

#[async_trait]
pub trait Store: TokenStore + Send + Sync + 'static {
    fn backend(&self) -> Backend;
    /// A cheap round trip, for health checks.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Stores the order, its items, its first status-log row and its outbox
    /// message in one transaction, and assigns the order number: the next of
    /// business day `day` (`domain::business_day`, decided by the caller).
    async fn create_order(
        &self,
        order: &ValidOrder,
        request_id: &str,
        now: DateTime<Utc>,
        day: NaiveDate,
    ) -> Result<CreatedOrder, StoreError> {
        self.insert_order(NewOrder {
            order,
            request_id,
            now,
            day,
        })
        .await
    }
    /// The backend's half of `create_order`.
    async fn insert_order(&self, new: NewOrder<'_>) -> Result<CreatedOrder, StoreError>;

    /// `create_order` under an idempotency key: the key row is written in the
    /// order's transaction (a unique key per scope). A key already stored and
    /// not expired is answered from its row instead, and nothing is written; a
    /// concurrent request with the same key waits for the first one's commit
    /// and then reads its answer.
    async fn create_order_keyed(
        &self,
        order: &ValidOrder,
        request_id: &str,
        now: DateTime<Utc>,
        day: NaiveDate,
        key: &IdempotencyKey,
    ) -> Result<KeyedOutcome, StoreError> {
        let new = NewOrder {
            order,
            request_id,
            now,
            day,
        };
        self.insert_order_keyed(new, key).await
    }
    /// The backend's half of `create_order_keyed`.
    async fn insert_order_keyed(
        &self,
        new: NewOrder<'_>,
        key: &IdempotencyKey,
    ) -> Result<KeyedOutcome, StoreError>;

    /// Deletes the keys expired at `now`; returns how many.
    async fn sweep_idempotency_keys(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Applies a status change if the state machine allows it from the order's
    /// current status, with its log row and outbox message, atomically: reads
    /// the order, decides (`domain::transition::decide`), compare-and-sets.
    async fn transition(&self, t: &Transition) -> Result<TransitionOutcome, StoreError> {
        self.transition_from(t, None).await
    }

    /// Like `transition`, starting from `known`, the state the caller believes
    /// the order is in (the kitchen holds the order it cooks): the store tries
    /// the compare-and-set at once and reads the order only when it misses.
    async fn transition_from(
        &self,
        t: &Transition,
        known: Option<&OrderState>,
    ) -> Result<TransitionOutcome, StoreError> {
        let mut guess = known.cloned();
        for _ in 0..CAS_TRIES {
            // A refusal is final only on a state just read, not on a guess.
            let fresh = guess.is_none();
            let cur = match guess.take() {
                Some(s) => s,
                None => match self.order_state(&t.order_number).await? {
                    Some(s) => s,
                    None => return Ok(TransitionOutcome::NotFound),
                },
            };
            let d = match crate::domain::transition::decide(&cur, &t.change()) {
                Ok(d) => d,
                Err(e) if fresh => return Ok(TransitionOutcome::Rejected(e)),
                Err(_) => continue,
            };
            let step = Step {
                asked: t,
                cur: &cur,
                decided: &d,
            };
            if let Some(order) = self.persist_transition(step).await? {
                return Ok(TransitionOutcome::Applied {
                    old: cur.status,
                    order: Box::new(order),
                });
            }
        }
        Err(StoreError::new(
            Class::Conflict,
            format!(
                "order {} kept changing during the transition",
                t.order_number
            ),
        ))
    }

    /// Applies a station change (issue 24): reads the ticket, decides
    /// (`domain::stations::decide`) and persists the decision with a
    /// compare-and-set on the order's version, retrying when it misses.
    async fn station_change(
        &self,
        c: &StationChange,
        routing: &Routing,
    ) -> Result<StationOutcome, StoreError> {
        for _ in 0..CAS_TRIES {
            let Some(cur) = self.ticket(&c.order_number).await? else {
                return Ok(StationOutcome::NotFound);
            };
            let d = match crate::domain::stations::decide(&cur, &c.action, &c.by, c.now, routing) {
                Ok(d) => d,
                Err(r) => return Ok(StationOutcome::Refused(r)),
            };
            let step = Step {
                asked: c,
                cur: &cur,
                decided: &d,
            };
            if d.changed() && !self.persist_ticket(step).await? {
                continue;
            }
            return match self.order(&c.order_number).await? {
                Some(order) => Ok(StationOutcome::Applied {
                    order: Box::new(order),
                    changed: d.changed(),
                }),
                None => Ok(StationOutcome::NotFound),
            };
        }
        Err(StoreError::new(
            Class::Conflict,
            format!(
                "order {} kept changing during the station change",
                c.order_number
            ),
        ))
    }

    /// What a station change reads: the order's state, rush, stations done,
    /// items and parts.
    async fn ticket(&self, order_number: &str) -> Result<Option<Ticket>, StoreError>;

    /// The backend's half of `station_change`, in one transaction, only if
    /// the order is still at `cur`'s version: the order's columns, the changed
    /// parts, a status-log row per Status Update, a history row per Station
    /// Update and an outbox row per message, in the decision's order; durable
    /// before it answers. False when the compare-and-set missed (nothing written).
    async fn persist_ticket(&self, step: TicketStep<'_>) -> Result<bool, StoreError>;

    /// The open orders that have parts, for the screens: with `station`, the
    /// received or cooking ones with a part there not done yet; without, every
    /// open one (the expo). Rush first, then oldest (`stations::screen_order`).
    async fn tickets(&self, station: Option<&str>) -> Result<Vec<OrderView>, StoreError>;

    /// The report's station samples for the orders received in `[from, to)`.
    async fn station_times(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<StationTimes, StoreError>;

    /// The order's state (its columns without the items), for `transition_from`.
    async fn order_state(&self, order_number: &str) -> Result<Option<OrderState>, StoreError>;

    /// The backend's half of `transition_from`: writes what `d` decided on
    /// `cur` (the order's new columns, the worker's count when it finishes a
    /// cooking, the history row, the outbox row with `d.update` as its payload
    /// and its event id as the message id), only if the order is still at
    /// `cur`'s status and version. The order as updated (without its items), or
    /// None when the compare-and-set missed and nothing was written.
    async fn persist_transition(
        &self,
        step: TransitionStep<'_>,
    ) -> Result<Option<OrderView>, StoreError>;

    async fn order(&self, order_number: &str) -> Result<Option<OrderView>, StoreError>;
    /// Only the order's status: the cheap check a worker makes while cooking.
    async fn status(&self, order_number: &str) -> Result<Option<OrderStatus>, StoreError>;
    async fn history(&self, order_number: &str) -> Result<Option<Vec<HistoryEntry>>, StoreError>;
    /// Orders on the kitchen board (received, cooking, ready), oldest first.
    async fn open_orders(&self) -> Result<Vec<OrderView>, StoreError>;
    /// The times of every order received in `[from, to)`, for the
    /// speed-of-service report: when it first became ready and was first
    /// completed after that, from the status log.
    async fn ticket_times(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<TicketTimes>, StoreError>;

    async fn workers(&self) -> Result<Vec<WorkerRow>, StoreError>;
    /// Takes the worker name's liveness lock when it is free (`held()` says
    /// whether it was); keep the lease for as long as the worker runs.
    async fn worker_lease(&self, name: &str) -> Result<WorkerLease, StoreError>;
    /// Registers per `domain::worker::decide`; a refusal writes nothing.
    async fn register_worker(&self, reg: &WorkerRegistration) -> Result<Registered, StoreError>;
    async fn heartbeat(&self, name: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        let status = "online";
        self.set_worker(WorkerSeen { name, now, status }).await
    }
    async fn worker_offline(&self, name: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        let status = "offline";
        self.set_worker(WorkerSeen { name, now, status }).await
    }
    /// Marks the worker as `seen.status` (online: a heartbeat), seen at `seen.now`.
    async fn set_worker(&self, seen: WorkerSeen<'_>) -> Result<(), StoreError>;

    /// Deletes `published` (rows whose publish the broker confirmed), then
    /// leases up to `limit` unsent outbox rows, oldest first, for `lease`:
    /// another relay will not take them meanwhile, and takes them over if we
    /// die. Takes this process's own rows, and other processes' rows older than
    /// `ORPHAN_AFTER`. One step for both, so the relay's bookkeeping costs one
    /// statement per batch.
    async fn claim_outbox(
        &self,
        published: &[i64],
        limit: usize,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        let until =
            now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(30));
        self.lease_outbox(&OutboxClaim {
            published,
            limit: limit as i64,
            now,
            until,
            orphaned_before: now - ORPHAN_AFTER,
        })
        .await
    }
    /// The backend's half of `claim_outbox`, its bounds computed.
    async fn lease_outbox(&self, claim: &OutboxClaim<'_>)
        -> Result<Vec<OutboxMessage>, StoreError>;
    /// Removes rows whose publish the broker confirmed.
    async fn delete_outbox(&self, ids: &[i64]) -> Result<(), StoreError>;
    /// Gives leased rows back after a failed publish, for an immediate retry.
    async fn release_outbox(&self, ids: &[i64]) -> Result<(), StoreError>;
    /// How many messages wait in the outbox (for health and tests).
    async fn outbox_len(&self) -> Result<i64, StoreError>;
    /// How many messages wait in the outbox, and when the oldest was written
    /// (the relay's gauges, docs/metrics.md).
    async fn outbox_stats(&self) -> Result<(i64, Option<DateTime<Utc>>), StoreError>;

    /// When the newest change stored happened (the newest order, the newest
    /// status-log row), None on an empty database: the clock cannot be
    /// earlier than that (`domain::clock`). Two index lookups.
    async fn newest_change(&self) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// Retention (issue 26): deletes up to `limit` of the oldest orders created
    /// before `before`, with their items, status history, parts and part
    /// history, and the outbox rows written before `before`, in one short
    /// transaction. Returns how many orders went; fewer than `limit` means none
    /// older is left. SQLite then hands the freed pages back to the file
    /// system (incremental vacuum, migration 007).
    async fn purge_orders(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError>;
}

/// The tables whose rows belong to an order (`order_id`), emptied by
/// `Store::purge_orders` before the orders themselves.
const ORDER_CHILD_TABLES: [&str; 4] = [
    "order_items",
    "order_status_log",
    "order_item_stations",
    "order_item_events",
];

/// `Store::newest_change`, the same on both backends.
const NEWEST_CHANGE_SQL: &str = "select max(t) from (\
     select max(created_at) as t from orders \
     union all select changed_at from order_status_log \
     where id = (select max(id) from order_status_log)) as changes";

/// Opens the configured backend and applies migrations.
pub async fn open(cfg: &DatabaseConfig) -> Result<SharedStore, StoreError> {
    open_in(cfg, &ClusterConfig::default()).await
}

/// As `open`, on a cluster: with `[cluster] monitor`, PostgreSQL connections
/// go to the primary pg_auto_failover's monitor names.
pub async fn open_in(
    cfg: &DatabaseConfig,
    cluster: &ClusterConfig,
) -> Result<SharedStore, StoreError> {
    let owner = outbox_owner();
    match cfg.resolved_backend() {
        StorageBackend::Postgres => Ok(Arc::new(
            postgres::PgStore::connect(cfg, cluster, owner).await?,
        )),
        _ => Ok(Arc::new(
            sqlite::SqliteStore::open(&cfg.sqlite_path, owner).await?,
        )),
    }
}

/// Names this process in the outbox: its relay publishes the rows it wrote, in
/// order. Unique per start, so a restarted process does not mistake its
/// predecessor's rows (taken over as orphans) for its own.
fn outbox_owner() -> String {
    format!(
        "{}-{}-{:08x}",
        crate::process::telemetry::hostname(),
        std::process::id(),
        rand::random::<u32>()
    )
}

/// Rows of another process are taken over once they are this old: a live relay
/// publishes its own within milliseconds, so older rows belong to a process
/// that died or cannot reach the broker.
pub const ORPHAN_AFTER: chrono::Duration = chrono::Duration::seconds(5);

/// The outbox row for a new order.
fn order_outbox(msg: &OrderMessage) -> (String, String, u8) {
    (
        ORDERS_EXCHANGE.to_string(),
        msg.routing_key(),
        msg.placed.priority.clamp(0, 10) as u8,
    )
}

fn to_json<T: Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v)
        .map_err(|e| StoreError::caused_by(Class::Permanent, "encoding message", e))
}

/// An item's kitchen details as stored (migration 004, the same on both
/// backends): the note, the modifiers as a JSON array, the allergens as a
/// comma-separated list; NULL when there are none.
fn item_detail_columns(item: &Item) -> (Option<String>, Option<String>, Option<String>) {
    let modifiers = (!item.modifiers.is_empty())
        .then(|| serde_json::to_string(&item.modifiers).unwrap_or_default());
    let allergens = (!item.allergens.is_empty()).then(|| Allergen::join(&item.allergens));
    (item.notes.clone(), modifiers, allergens)
}

/// The inverse of `item_detail_columns`.
fn item_from_columns(
    name: String,
    quantity: i64,
    price: Cents,
    notes: Option<String>,
    modifiers: Option<String>,
    allergens: Option<String>,
) -> Result<Item, StoreError> {
    let modifiers = match modifiers {
        Some(json) => serde_json::from_str(&json).map_err(|e| {
            StoreError::new(
                crate::domain::error::Class::Permanent,
                format!("bad modifiers in database: {e}"),
            )
        })?,
        None => Vec::new(),
    };
    Ok(Item {
        notes,
        modifiers,
        allergens: allergens
            .as_deref()
            .map(Allergen::split)
            .unwrap_or_default(),
        ..Item::new(name, quantity, price)
    })
}

/// Gives each of `orders` (whose database ids are `ids`) its parts, read for
/// all of them at once as `(order id, part)`, and each item the names of its
/// stations (as the Order Message carried them).
fn attach_parts<I: std::hash::Hash + Eq + Copy>(
    orders: &mut [OrderView],
    ids: &[I],
    parts: Vec<(I, Part)>,
) {
    by_order(ids, parts, |i, part| {
        if let Some(item) = orders[i].placed.items.get_mut(part.item_index as usize) {
            item.stations.push(part.station.clone());
        }
        orders[i].parts.push(part);
    });
}

/// Hands each `(order id, row)` to `put` with its order's index in `ids`.
fn by_order<I: std::hash::Hash + Eq + Copy, T>(
    ids: &[I],
    rows: Vec<(I, T)>,
    mut put: impl FnMut(usize, T),
) {
    let at: std::collections::HashMap<I, usize> =
        ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    for (order_id, row) in rows {
        if let Some(&i) = at.get(&order_id) {
            put(i, row);
        }
    }
}

/// The screens' order (`stations::screen_order`).
fn sort_for_screens(orders: &mut [OrderView]) {
    orders.sort_by(|a, b| {
        crate::domain::stations::screen_order(
            (a.rush, a.created_at, &a.placed.order_number),
            (b.rush, b.created_at, &b.placed.order_number),
        )
    });
}

/// The ticket of an order read with its items and parts.
fn ticket_of(o: &OrderView) -> Ticket {
    Ticket {
        state: o.state(),
        rush: o.rush,
        stations_done_at: o.stations_done_at,
        items: o
            .placed
            .items
            .iter()
            .map(|i| (i.name.clone(), i.quantity))
            .collect(),
        parts: o.parts.clone(),
    }
}

/// Gives each of `orders` (whose database ids are `ids`, in the same order)
/// its items, read for all of them at once as `(order id, item)` in order.
fn attach_items<I: std::hash::Hash + Eq + Copy>(
    orders: &mut [OrderView],
    ids: &[I],
    items: Vec<(I, Item)>,
) {
    by_order(ids, items, |i, item| orders[i].placed.items.push(item));
}

/// The speed-of-service query's row, the same on both backends.
const TICKET_TIMES_SELECT: &str = "select o.type, o.processed_by, o.created_at,
    (select min(l.changed_at) from order_status_log l where l.order_id = o.id and l.status = 'ready'),
    (select min(l.changed_at) from order_status_log l where l.order_id = o.id and l.status = 'completed')
    from orders o";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Cents;

    #[test]
    fn item_details_round_trip_through_their_columns() {
        let item = Item {
            notes: Some("well done".into()),
            modifiers: vec!["no onions".into(), "a \"quoted\", comma".into()],
            allergens: vec![Allergen::Gluten, Allergen::Nuts],
            ..Item::new("Burger", 2, Cents(1250))
        };
        let (n, m, a) = item_detail_columns(&item);
        assert_eq!(a.as_deref(), Some("gluten,nuts"));
        assert_eq!(
            item_from_columns("Burger".into(), 2, Cents(1250), n, m, a).unwrap(),
            item
        );
        let plain = Item::new("Fries", 1, Cents(450));
        assert_eq!(item_detail_columns(&plain), (None, None, None));
        assert!(item_from_columns("x".into(), 1, Cents(1), None, Some("{".into()), None).is_err());
    }
}
