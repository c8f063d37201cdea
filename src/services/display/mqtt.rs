//! The MQTT side of the bridge: one task owns the rumqttc client and decides
//! every publish; a second task only polls rumqttc's `EventLoop`.
//!
//! # Knowing when a publish was acknowledged
//!
//! rumqttc tells us nothing per publish call; it reports `Outgoing::Publish(pkid)`
//! when it writes a publish (assigning the packet id) and `Incoming::PubAck(pkid)`
//! when the broker acknowledges it. Requests leave in the order we hand them over,
//! so the `n`-th `Outgoing::Publish` with a packet id we do not already track
//! belongs to the `n`-th publish we issued: we keep the issued publishes in a
//! FIFO (`unassigned`) and move each to `inflight[pkid]` when its id is reported.
//! A reported id that is already in `inflight` is rumqttc resending it after a
//! reconnect (persistent session), not a new publish. Each publish may carry a
//! `Done` sender, fired at its PUBACK; the RabbitMQ side acks a delivery only
//! after all of its publishes fired.
//!
//! Packet ids never collide: we have at most `WINDOW` publishes outstanding and
//! rumqttc cycles through `2 * WINDOW + SPARE` ids, so an id comes round again
//! only long after its previous use was acknowledged.
//!
//! # Reconnects
//!
//! Fixed client id and `clean_session = false`: when the broker still has our
//! session (CONNACK session_present = 1), rumqttc resends the unacknowledged
//! publishes and their PUBACKs arrive as usual. When it does not (a broker that
//! restarted without persistence), rumqttc drops them: we drop their `Done`
//! senders, the RabbitMQ side sees that and returns the deliveries to the queue
//! (they are published again, in order), and the snapshot republishes the board.
//! (Which of our publishes rumqttc dropped is counted by the polling task, see
//! `Polled`: publishes handed over after the error survive and keep their place.)
//!
//! rumqttc reconnects on the next poll after an error, with no delay of its own;
//! the polling task runs each connection as a session under the broker
//! `Supervisor`, which pauses between attempts and owns the link state.
//!
//! # What is published
//!
//! Per order the bridge remembers the highest state version and event version
//! it sent, and never sends an older state (so a slow path can never move a
//! screen back) nor an event twice (RabbitMQ redeliveries). A completed or
//! cancelled order is cleared (empty retained payload) `clear_after_seconds`
//! after its status changed, unless it changed again meanwhile (a recall).
//!
//! With stations (issue 24), each state also goes to the order's copy on every
//! station it has a part at: the state while the station has an open part of
//! it, else an empty retained payload. Decided from the state alone, so it
//! needs no memory of what each station was sent and is right after any
//! reconnect or snapshot. The delivery waits for the last of these publishes:
//! a broker acknowledges QoS 1 publishes in the order it received them (MQTT
//! 3.1.1, 4.6), so that PUBACK means all of them arrived.

use super::payload::{order_state, stations_of, Event, Presence, Topics};
use crate::domain::OrderStatus;
use crate::link::supervise::{LinkState, SessionEnd, Supervisor};
use crate::process::config::MqttConfig;
use crate::storage::OrderView;
use bytes::Bytes;
use chrono::Utc;
use rumqttc::{
    AsyncClient, Event as MqttEvent, EventLoop, LastWill, MqttOptions, NetworkOptions, Outgoing,
    Packet, QoS, Request,
};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Publishes outstanding (sent, not yet acknowledged) at most. Bounds what the
/// broker holds for us and how far ahead of the PUBACKs we run.
pub const WINDOW: usize = 100;
/// Room for the few publishes and (un)subscribes made outside the window.
const SPARE: usize = 32;
/// How long the bridge reads back retained order topics after connecting.
const READ_BACK: Duration = Duration::from_secs(3);
/// Forgotten: cleared orders untouched this long, anything untouched for a day.
const FORGET_CLEARED: Duration = Duration::from_secs(3600);
const FORGET_ANY: Duration = Duration::from_secs(24 * 3600);
/// On a clean stop: how long to wait for the `offline` status to be acknowledged.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Fired when the broker acknowledged the publish; dropped when it was lost.
pub type Done = oneshot::Sender<()>;

/// What the rest of the bridge asks the MQTT task to do.
pub enum Cmd {
    /// Publish an order's state, unless a newer one (or, for a snapshot, a newer
    /// or equal one) was already sent.
    State {
        view: Box<OrderView>,
        snapshot: bool,
        done: Option<Done>,
    },
    /// Publish a change on `P/events`, unless this version of the order was sent.
    Event {
        event: Event,
        done: Option<Done>,
    },
    Presence(Presence),
    /// The broker retains a closed order (version `retained_version`): publish
    /// its final state if the broker's is older, and clear it when its grace
    /// period is over (now, if it already is).
    Reconcile {
        view: Box<OrderView>,
        retained_version: i64,
    },
    /// The broker retains an order the database does not know: clear it.
    Forget {
        order_number: String,
    },
    /// Forget which versions were sent: the RabbitMQ side is about to deliver
    /// again what the broker lost, and none of it may be skipped as a duplicate.
    ForgetSent,
}

/// Retained order payloads read back after connecting, waiting for the
/// snapshot task, at most. A broker that retains more (a flood on our topics)
/// gets the rest dropped, not our memory: they are read back at the next connect.
const READ_BACK_QUEUE: usize = 1024;

/// What the MQTT task tells the snapshot task.
pub struct Inbound {
    /// Notified on every (re)connect: publish the snapshot. Several in a row
    /// leave one permit, so they need one snapshot.
    pub connected: Arc<Notify>,
    /// Retained order payloads read back from the broker after connecting
    /// (bounded: `READ_BACK_QUEUE`).
    pub retained: mpsc::Receiver<Retained>,
}

/// A retained order payload read back from the broker.
#[derive(Debug)]
pub struct Retained {
    pub order_number: String,
    pub payload: Bytes,
}

/// The handle other tasks publish through.
#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::Sender<Cmd>,
}

impl Publisher {
    /// Queues `cmd`; waits while the MQTT task is busy or disconnected. False
    /// when `shutdown` came first or the MQTT task is gone.
    pub async fn send(&self, cmd: Cmd, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            // Sending wins a tie: a publish that can be queued is not given up.
            biased;
            r = self.tx.send(cmd) => r.is_ok(),
            _ = shutdown.cancelled() => false,
        }
    }
}

/// The MQTT task, ready to run.
pub struct Mqtt {
    client: AsyncClient,
    eventloop: EventLoop,
    cmds: mpsc::Receiver<Cmd>,
    state: State,
    /// The link to the broker, owned by the polling task's supervisor.
    link: LinkState,
    broker: String,
}

/// `expo_confirm` is `[expo] confirm`, which the order payload's `expo` carries.
pub fn new(
    cfg: &MqttConfig,
    topics: Topics,
    expo_confirm: bool,
    link: LinkState,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> (Mqtt, Publisher, Inbound) {
    let client_id = if cfg.client_id.trim().is_empty() {
        MqttConfig::default().client_id
    } else {
        cfg.client_id.clone()
    };
    let mut opts = MqttOptions::new(client_id, cfg.host.clone(), cfg.port);
    opts.set_keep_alive(Duration::from_secs(15))
        .set_clean_session(false)
        .set_last_will(LastWill::new(
            topics.bridge_status(),
            "offline",
            QoS::AtLeastOnce,
            true,
        ))
        .set_inflight((2 * WINDOW + SPARE) as u16)
        // Orders with many items exceed rumqttc's default of 10 KiB.
        .set_max_packet_size(1 << 20, 1 << 20);
    if let Some(tls) = tls {
        opts.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls),
        ));
    }
    if let Some(user) = &cfg.user {
        let password = cfg.password.as_ref().map(|p| p.expose()).unwrap_or("");
        opts.set_credentials(user.clone(), password);
    }
    // Never full: we hand over at most WINDOW publishes plus a few (un)subscribes
    // before rumqttc has taken them.
    let (client, mut eventloop) = AsyncClient::new(opts, WINDOW + SPARE);
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(5);
    eventloop.set_network_options(net);

    let (tx, cmds) = mpsc::channel(2 * WINDOW);
    let (retained_tx, retained) = mpsc::channel(READ_BACK_QUEUE);
    let connected = Arc::new(Notify::new());
    let state = State {
        client: client.clone(),
        topics,
        expo_confirm,
        clear_after: Duration::from_secs_f64(cfg.clear_after_seconds.max(0.0)),
        retained: retained_tx,
        reconnected: connected.clone(),
        dropped_read_back: 0,
        connected: false,
        stopping: false,
        unassigned: VecDeque::new(),
        inflight: HashMap::new(),
        marks: HashMap::new(),
        clears: BinaryHeap::new(),
        clear_seq: 0,
        read_back_until: None,
    };
    (
        Mqtt {
            client,
            eventloop,
            cmds,
            state,
            link,
            broker: format!("{}:{}", cfg.host, cfg.port),
        },
        Publisher { tx },
        Inbound {
            connected,
            retained,
        },
    )
}

impl Mqtt {
    /// Runs until `stop` (cancelled once the RabbitMQ side has settled its
    /// deliveries); then publishes `offline` and disconnects cleanly.
    pub async fn run(self, stop: CancellationToken) {
        let Mqtt {
            client,
            eventloop,
            mut cmds,
            mut state,
            link,
            broker,
        } = self;
        let polling_stop = CancellationToken::new();
        let (events_tx, mut events) = mpsc::channel(4 * WINDOW);
        let poller = tokio::spawn(
            poll(eventloop, events_tx, polling_stop.clone(), link, broker)
                .instrument(tracing::Span::current()),
        );
        let mut prune = tokio::time::interval(Duration::from_secs(60));
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);

        loop {
            let can_send = state.connected && state.outstanding() < WINDOW;
            let timer = state.next_timer(can_send);
            tokio::select! {
                biased;
                polled = events.recv() => match polled {
                    Some(polled) => state.on_event(polled),
                    None => break,
                },
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep_until(timer.unwrap_or_else(Instant::now)), if timer.is_some() => {
                    state.on_timer(can_send);
                }
                cmd = cmds.recv(), if can_send => match cmd {
                    Some(cmd) => state.on_cmd(cmd),
                    None => break,
                },
                _ = prune.tick() => state.prune(),
            }
        }

        // A clean stop: the Last Will only covers a crash, so say `offline` ourselves.
        state.stopping = true;
        if state.connected {
            let (tx, mut acked) = oneshot::channel();
            state.publish(
                state.topics.bridge_status(),
                true,
                b"offline".to_vec(),
                Some(tx),
            );
            let deadline = Instant::now() + STOP_GRACE;
            loop {
                tokio::select! {
                    polled = events.recv() => match polled {
                        Some(polled) => state.on_event(polled),
                        None => break,
                    },
                    _ = &mut acked => break,
                    _ = tokio::time::sleep_until(deadline) => break,
                }
                if !state.connected {
                    break;
                }
            }
            if state.connected && client.try_disconnect().is_ok() {
                let deadline = Instant::now() + Duration::from_millis(500);
                loop {
                    tokio::select! {
                        polled = events.recv() => match polled {
                            Some(Polled::Event(MqttEvent::Outgoing(Outgoing::Disconnect), _) | Polled::Disconnected) | None => break,
                            Some(polled) => state.on_event(polled),
                        },
                        _ = tokio::time::sleep_until(deadline) => break,
                    }
                }
            }
        }
        polling_stop.cancel();
        drop(events); // a poller blocked on a full channel gets an error, not a hang
        let _ = poller.await;
        tracing::info!(
            action = "mqtt_disconnected",
            "Display bridge disconnected from the MQTT broker"
        );
    }
}

/// One result of polling rumqttc.
enum Polled {
    /// An event. For a CONNACK without a session, also how many of our
    /// publishes rumqttc dropped that it had not written yet (had not reported
    /// a packet id for).
    Event(MqttEvent, usize),
    /// The connection failed or broke (the supervisor logs why); rumqttc
    /// reconnects on the next poll.
    Disconnected,
}

/// Polls rumqttc's event loop (which must be polled all the time) and forwards
/// every event. Polling is kept out of the MQTT task's `select!` because a poll
/// cancelled halfway could lose a packet. rumqttc reconnects on the next poll
/// after an error, with no pause of its own: each connection is a session under
/// the supervisor, which owns the backoff, the outage log lines and the link.
async fn poll(
    mut eventloop: EventLoop,
    events: mpsc::Sender<Polled>,
    stop: CancellationToken,
    link: LinkState,
    broker: String,
) {
    let mut sup = Supervisor::new(link.clone());
    loop {
        let end = poll_session(&mut eventloop, &events, &stop, &link, &broker).await;
        if !sup.next(end, &stop).await {
            return;
        }
    }
}

/// Polls until the connection fails (or `stop`).
async fn poll_session(
    eventloop: &mut EventLoop,
    events: &mpsc::Sender<Polled>,
    stop: &CancellationToken,
    link: &LinkState,
    broker: &str,
) -> SessionEnd {
    // Once our DISCONNECT is written, the connection ending is the clean stop's
    // last step, not an outage to log.
    let mut disconnecting = false;
    loop {
        // After an error rumqttc holds what it will resend in `pending`: the
        // unacknowledged publishes (with their packet ids) followed by the
        // requests it took back from its channel (publishes with id 0). A CONNACK
        // without a session drops all of them, but not what reached the channel
        // after the error: the MQTT task needs the count to tell them apart.
        let unsent = if eventloop.network.is_none() {
            eventloop
                .pending
                .iter()
                .filter(|r| matches!(r, Request::Publish(p) if p.pkid == 0))
                .count()
        } else {
            0
        };
        let event = tokio::select! {
            _ = stop.cancelled() => return SessionEnd::Shutdown,
            ev = eventloop.poll() => ev,
        };
        let (polled, end) = match event {
            Ok(ev) => {
                disconnecting |= matches!(ev, MqttEvent::Outgoing(Outgoing::Disconnect));
                let mut dropped_unsent = 0;
                if let MqttEvent::Incoming(Packet::ConnAck(ack)) = &ev {
                    link.up(broker);
                    if !ack.session_present {
                        dropped_unsent = unsent;
                    }
                }
                (Polled::Event(ev, dropped_unsent), None)
            }
            Err(_) if disconnecting => (Polled::Disconnected, Some(SessionEnd::Shutdown)),
            Err(e) => (Polled::Disconnected, Some(SessionEnd::Lost(Box::new(e)))),
        };
        if events.send(polled).await.is_err() {
            return SessionEnd::Shutdown;
        }
        if let Some(end) = end {
            return end;
        }
    }
}

/// The debug line for an order's state or event handed to the broker.
fn published(topic: &str, order_number: &str, status: OrderStatus, version: i64, snapshot: bool) {
    tracing::debug!(
        action = "display_published",
        topic,
        order_number,
        status = %status,
        version,
        snapshot,
        "Published on {topic}"
    );
}

/// What the bridge remembers per order.
#[derive(Debug, Clone, Copy)]
struct Mark {
    /// Highest state version sent (0: none).
    state: i64,
    /// Highest event version sent (0: none).
    event: i64,
    /// The last state sent was completed/cancelled.
    closed: bool,
    /// ... and its retained message has been cleared.
    cleared: bool,
    touched: Instant,
}

impl Default for Mark {
    fn default() -> Self {
        Mark {
            state: 0,
            event: 0,
            closed: false,
            cleared: false,
            touched: Instant::now(),
        }
    }
}

/// A scheduled clear: (when, tie-breaker, order, version it clears, forced).
type Clear = Reverse<(Instant, u64, String, i64, bool)>;

struct State {
    client: AsyncClient,
    topics: Topics,
    expo_confirm: bool,
    clear_after: Duration,
    retained: mpsc::Sender<Retained>,
    reconnected: Arc<Notify>,
    /// Read-back payloads dropped since the last connect (the queue was full).
    dropped_read_back: u64,
    connected: bool,
    stopping: bool,
    /// Publishes handed to rumqttc whose packet id is not known yet, in order.
    unassigned: VecDeque<Option<Done>>,
    /// Publishes written to the broker and not yet acknowledged, by packet id.
    inflight: HashMap<u16, Option<Done>>,
    marks: HashMap<String, Mark>,
    clears: BinaryHeap<Clear>,
    clear_seq: u64,
    /// While set, we are subscribed to the order topics to read back what the broker retains.
    read_back_until: Option<Instant>,
}

impl State {
    fn outstanding(&self) -> usize {
        self.unassigned.len() + self.inflight.len()
    }

    /// The next moment `on_timer` has work: a due clear (only when we may send)
    /// or the end of the read-back.
    fn next_timer(&self, can_send: bool) -> Option<Instant> {
        let clear = self
            .clears
            .peek()
            .filter(|_| can_send)
            .map(|Reverse((at, ..))| *at);
        let read_back = self.read_back_until.filter(|_| self.connected);
        match (clear, read_back) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn on_timer(&mut self, can_send: bool) {
        let now = Instant::now();
        if let Some(until) = self.read_back_until {
            if self.connected && until <= now {
                self.read_back_until = None;
                let _ = self.client.try_unsubscribe(self.topics.all_orders());
                if self.dropped_read_back > 0 {
                    tracing::info!(
                        action = "mqtt_read_back_dropped",
                        dropped = self.dropped_read_back,
                        "{} retained orders read back from the broker were left for the next connect (queue full)",
                        self.dropped_read_back
                    );
                    self.dropped_read_back = 0;
                }
            }
        }
        if !can_send {
            return;
        }
        while self.outstanding() < WINDOW {
            match self.clears.peek() {
                Some(Reverse((at, ..))) if *at <= now => {}
                _ => break,
            }
            if let Some(Reverse((_, _, n, version, force))) = self.clears.pop() {
                self.clear(&n, version, force);
            }
        }
    }

    fn on_event(&mut self, polled: Polled) {
        let (event, dropped_unsent) = match polled {
            Polled::Event(event, dropped_unsent) => (event, dropped_unsent),
            Polled::Disconnected => {
                self.connected = false;
                return;
            }
        };
        match event {
            MqttEvent::Incoming(Packet::ConnAck(ack)) => {
                self.on_connack(ack.session_present, dropped_unsent)
            }
            MqttEvent::Incoming(Packet::PubAck(ack)) => {
                if let Some(Some(done)) = self.inflight.remove(&ack.pkid) {
                    let _ = done.send(());
                }
            }
            MqttEvent::Outgoing(Outgoing::Publish(pkid)) => {
                // 0: QoS 0 (we send none). Known id: a resend after a reconnect.
                if pkid == 0 || self.inflight.contains_key(&pkid) {
                    return;
                }
                match self.unassigned.pop_front() {
                    Some(done) => {
                        self.inflight.insert(pkid, done);
                    }
                    None => tracing::debug!(
                        action = "mqtt_unexpected_publish",
                        pkid,
                        "rumqttc reported a publish we did not issue"
                    ),
                }
            }
            MqttEvent::Incoming(Packet::Publish(p)) => {
                // Only the retained messages sent in answer to our read-back
                // subscription carry the retain flag; live ones (our own
                // publishes coming back) do not.
                if !p.retain || p.payload.is_empty() {
                    return;
                }
                if let Some(n) = self.topics.order_number_of(&p.topic) {
                    let read = Retained {
                        order_number: n.to_string(),
                        payload: p.payload,
                    };
                    if let Err(mpsc::error::TrySendError::Full(_)) = self.retained.try_send(read) {
                        self.dropped_read_back += 1;
                    }
                }
            }
            _ => {}
        }
    }

    fn on_connack(&mut self, session_present: bool, dropped_unsent: usize) {
        self.connected = true;
        tracing::debug!(
            action = "mqtt_session",
            session_present,
            "MQTT session resumed: {session_present}"
        );
        if !session_present {
            // The broker has no session for us: rumqttc dropped what it would have
            // resent (everything in flight, and the first `dropped_unsent` of those
            // without a packet id; later ones are still in its channel and go out
            // now). Dropping the senders tells the RabbitMQ side to requeue those
            // deliveries. Forget what we sent, too: the broker may have lost it.
            let dropped_unsent = dropped_unsent.min(self.unassigned.len());
            let lost = self.inflight.len() + dropped_unsent;
            self.inflight.clear();
            self.unassigned.drain(..dropped_unsent);
            self.marks.clear();
            if lost > 0 {
                tracing::warn!(
                    action = "mqtt_session_lost",
                    lost,
                    "The broker had no session for the bridge: {lost} unacknowledged publishes will be sent again"
                );
            }
        }
        if self.stopping {
            return;
        }
        self.publish(self.topics.bridge_status(), true, b"online".to_vec(), None);
        // Read back the retained order topics to clear closed orders whose clear
        // was missed (the bridge was down when it was due).
        if self
            .client
            .try_subscribe(self.topics.all_orders(), QoS::AtMostOnce)
            .is_ok()
        {
            self.read_back_until = Some(Instant::now() + READ_BACK);
        }
        self.reconnected.notify_one();
    }

    fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::State {
                view,
                snapshot,
                done,
            } => self.state(&view, snapshot, done),
            Cmd::Event { event, done } => {
                // Version 0: a message from before versions existed; never deduplicated.
                if event.version > 0 {
                    let m = self.marks.entry(event.order_number.clone()).or_default();
                    if event.version <= m.event {
                        if let Some(done) = done {
                            let _ = done.send(());
                        }
                        return;
                    }
                    m.event = event.version;
                    m.touched = Instant::now();
                }
                published(
                    "events",
                    &event.order_number,
                    event.new_status,
                    event.version,
                    false,
                );
                self.publish(self.topics.events(), false, event.to_bytes(), done);
            }
            Cmd::Presence(p) => {
                tracing::debug!(
                    action = "display_published",
                    topic = "workers",
                    worker = %p.worker_name,
                    status = p.status,
                    "Worker presence published"
                );
                self.publish(self.topics.worker(&p.worker_name), true, p.to_bytes(), None);
            }
            Cmd::Reconcile {
                view,
                retained_version,
            } => {
                if retained_version < view.version {
                    self.state(&view, true, None);
                }
                self.schedule_clear(&view, true);
            }
            Cmd::Forget { order_number } => {
                self.clear(&order_number, i64::MAX, true);
            }
            Cmd::ForgetSent => self.marks.clear(),
        }
    }

    fn state(&mut self, view: &OrderView, snapshot: bool, done: Option<Done>) {
        let m = self
            .marks
            .entry(view.placed.order_number.clone())
            .or_default();
        let fresh = if snapshot {
            view.version >= m.state
        } else {
            view.version > m.state
        };
        if !fresh {
            if let Some(done) = done {
                let _ = done.send(());
            }
            return;
        }
        m.state = view.version;
        m.closed = !view.status.is_open();
        m.cleared = false;
        m.touched = Instant::now();
        let closed = m.closed;
        published(
            "orders",
            &view.placed.order_number,
            view.status,
            view.version,
            snapshot,
        );
        let payload = order_state(view, self.expo_confirm, Utc::now());
        let stations = stations_of(view);
        let mut done = done;
        let order_done = if stations.is_empty() {
            done.take()
        } else {
            None
        };
        self.publish(
            self.topics.order(&view.placed.order_number),
            true,
            payload.clone(),
            order_done,
        );
        let last = stations.len().saturating_sub(1);
        for (i, (station, open)) in stations.into_iter().enumerate() {
            let body = if open { payload.clone() } else { Vec::new() };
            let d = if i == last { done.take() } else { None };
            self.publish(
                self.topics
                    .station_order(station, &view.placed.order_number),
                true,
                body,
                d,
            );
        }
        if closed {
            self.schedule_clear(view, false);
        }
    }

    /// Clears `view`'s retained state `clear_after` after its last status change.
    fn schedule_clear(&mut self, view: &OrderView, force: bool) {
        let age = (Utc::now() - view.updated_at).to_std().unwrap_or_default();
        let at = Instant::now() + self.clear_after.saturating_sub(age);
        self.clear_seq += 1;
        self.clears.push(Reverse((
            at,
            self.clear_seq,
            view.placed.order_number.clone(),
            view.version,
            force,
        )));
    }

    /// Publishes the empty retained payload for order `n`, unless the order
    /// changed after `version` or was cleared already (unless `force`).
    fn clear(&mut self, n: &str, version: i64, force: bool) {
        let m = self.marks.entry(n.to_string()).or_default();
        let reopened = m.state > version || (m.state > 0 && !m.closed);
        if reopened || (m.cleared && !force) {
            return;
        }
        m.closed = true;
        m.cleared = true;
        m.touched = Instant::now();
        tracing::debug!(
            action = "display_cleared",
            order_number = %n,
            "Closed order cleared from the board"
        );
        self.publish(self.topics.order(n), true, Vec::new(), None);
    }

    fn publish(&mut self, topic: String, retain: bool, payload: Vec<u8>, done: Option<Done>) {
        match self
            .client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
        {
            Ok(()) => self.unassigned.push_back(done),
            // Cannot happen while the window holds (the channel has room for it);
            // dropping `done` makes the RabbitMQ side retry rather than lose it.
            Err(e) => {
                tracing::error!(action = "mqtt_publish_failed", error = %e, "Could not hand a publish to the MQTT client")
            }
        }
    }

    fn prune(&mut self) {
        self.marks.retain(|_, m| {
            let idle = m.touched.elapsed();
            !(idle > FORGET_ANY || (m.cleared && idle > FORGET_CLEARED))
        });
    }
}
