//! One supervisor for every link to a broker (the outbox relay, the kitchen
//! consumer, the notification subscriber, the display bridge's consumer and its
//! MQTT link).
//!
//! A component supplies a *session*: connect, declare, work, and return why it
//! ended ([`SessionEnd`]). A session never sleeps or retries; only
//! [`Supervisor::next`] decides what comes next, so every link backs off, logs
//! and reports its state the same way:
//!
//! - backoff (exponential, jittered) that resets only once a session stayed up
//!   for [`STABLE_AFTER`]: a broker that accepts us and drops us at once cannot
//!   make us spin;
//! - one log line per outage: the first failure (at the spec's ERROR level and
//!   action), the retries at debug, the recovery at info with the outage's length;
//! - the link state `/health` reads, and readiness ([`LinkState::wait_up`]).

use super::backoff::Backoff;
use crate::process::metrics::{self, LinkKind};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A session that stayed up this long resets the backoff.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// Shutdown was requested; the session stopped cleanly.
    Shutdown,
    /// The link broke or could not be made; worth trying again.
    Lost(BoxError),
    /// The session ended itself so that it starts over (for example to have the
    /// broker redeliver what it holds); not an outage, but paced like one.
    Restart(BoxError),
    /// Trying again cannot help (a bug, a runtime shutting down): stop.
    Fatal(BoxError),
}

/// The server at the other end of a link: names the log actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    RabbitMq,
    Mqtt,
}

impl Peer {
    fn metric(self) -> LinkKind {
        match self {
            Peer::RabbitMq => LinkKind::RabbitMq,
            Peer::Mqtt => LinkKind::Mqtt,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Peer::RabbitMq => "RabbitMQ",
            Peer::Mqtt => "MQTT broker",
        }
    }
    fn actions(self) -> [&'static str; 3] {
        match self {
            Peer::RabbitMq => [
                "rabbitmq_connected",
                "rabbitmq_connection_failed",
                "rabbitmq_reconnected",
            ],
            Peer::Mqtt => [
                "mqtt_connected",
                "mqtt_connection_failed",
                "mqtt_reconnected",
            ],
        }
    }
}

/// What a waiter for readiness can see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Down,
    Up,
    /// The supervisor stopped (shutdown or a fatal end): it will never be up.
    Stopped,
}

struct Outage {
    /// When the current session came up.
    up_since: Option<Instant>,
    /// When the current outage began (None while up, or before the first failure).
    down_since: Option<Instant>,
    /// Failures in this outage.
    failures: u32,
}

struct Link {
    what: String,
    peer: Peer,
    phase: watch::Sender<Phase>,
    outage: Mutex<Outage>,
    /// Why the link stopped for good, when retrying could not help.
    fatal: Mutex<Option<String>>,
}

/// The `restaurant_link_up` gauge counts live links: a dropped one leaves it.
impl Drop for Link {
    fn drop(&mut self) {
        let up = i64::from(*self.phase.borrow() == Phase::Up);
        metrics::link_changed(self.peer.metric(), -1, -up);
    }
}

/// Whether a component holds a working link right now (read by `/health`), and
/// the bookkeeping behind its once-per-outage log lines.
#[derive(Clone)]
pub struct LinkState(Arc<Link>);

impl LinkState {
    /// `what` names the component in log lines ("outbox relay", "kitchen consumer").
    pub fn new(what: impl Into<String>, peer: Peer) -> Self {
        metrics::link_changed(peer.metric(), 1, 0);
        LinkState(Arc::new(Link {
            what: what.into(),
            peer,
            phase: watch::Sender::new(Phase::Down),
            outage: Mutex::new(Outage {
                up_since: None,
                down_since: None,
                failures: 0,
            }),
            fatal: Mutex::new(None),
        }))
    }

    pub fn is_up(&self) -> bool {
        *self.0.phase.borrow() == Phase::Up
    }

    /// The link's line in `/health`: `down` when it is not up, or why it
    /// stopped for good (until the process has stopped to be restarted).
    pub fn health(&self, down: &str) -> Result<(), String> {
        if let Some(why) = self.fatal() {
            Err(format!(
                "{} stopped: {why}; the service exits to be restarted",
                self.0.what
            ))
        } else if self.is_up() {
            Ok(())
        } else {
            Err(down.to_string())
        }
    }

    /// Why the link stopped for good, if it did.
    pub fn fatal(&self) -> Option<String> {
        self.0
            .fatal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until the link stopped for good and says why; never returns
    /// for a link that stops on shutdown.
    pub async fn stopped_for_good(&self) -> String {
        let mut rx = self.0.phase.subscribe();
        let _ = rx.wait_for(|p| *p == Phase::Stopped).await;
        match self.fatal() {
            Some(why) => why,
            None => std::future::pending().await,
        }
    }

    /// Called by a session once it is connected and working (consuming, ready to
    /// publish). `target` says to what, for the log line.
    pub fn up(&self, target: &str) {
        let (peer, what) = (self.0.peer, &self.0.what);
        let [connected, _, reconnected] = peer.actions();
        let mut o = self.outage();
        match o.down_since.take() {
            Some(since) => tracing::info!(
                action = reconnected,
                outage_ms = since.elapsed().as_millis() as u64,
                failures = o.failures,
                "{what}: {} connection restored after {:.1} s",
                peer.name(),
                since.elapsed().as_secs_f64()
            ),
            None => tracing::info!(
                action = connected,
                "{what}: connected to {} {target}",
                peer.name()
            ),
        }
        o.failures = 0;
        o.up_since = Some(Instant::now());
        drop(o);
        if self.0.phase.send_replace(Phase::Up) != Phase::Up {
            metrics::link_changed(peer.metric(), 0, 1);
        }
    }

    /// Waits until the link is up. Err when its supervisor stopped first.
    pub async fn wait_up(&self) -> Result<(), ()> {
        let mut rx = self.0.phase.subscribe();
        let phase = rx.wait_for(|p| *p != Phase::Down).await.map(|p| *p);
        match phase {
            Ok(Phase::Up) => Ok(()),
            _ => Err(()),
        }
    }

    fn outage(&self) -> std::sync::MutexGuard<'_, Outage> {
        self.0.outage.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the link down; returns how long it had been up (zero if it never came up).
    fn down(&self) -> Duration {
        self.0.phase.send_if_modified(|p| {
            let changed = *p == Phase::Up;
            if changed {
                *p = Phase::Down;
                metrics::link_changed(self.0.peer.metric(), 0, -1);
            }
            changed
        });
        let mut o = self.outage();
        o.up_since.take().map(|t| t.elapsed()).unwrap_or_default()
    }

    /// Logs a failed or lost session: once per outage, then quietly.
    fn failed(&self, err: &BoxError) {
        let (peer, what) = (self.0.peer, &self.0.what);
        let [_, failed, _] = peer.actions();
        let mut o = self.outage();
        o.failures += 1;
        if o.down_since.is_none() {
            o.down_since = Some(Instant::now());
            tracing::error!(
                action = failed,
                error = %ErrorChain(err.as_ref()),
                "{what}: {} unavailable; retrying with backoff",
                peer.name()
            );
        } else {
            tracing::debug!(action = "retry_attempted", attempt = o.failures, error = %ErrorChain(err.as_ref()), "{what}: still unavailable");
        }
    }

    fn stopped(&self) {
        if self.0.phase.send_replace(Phase::Stopped) == Phase::Up {
            metrics::link_changed(self.0.peer.metric(), 0, -1);
        }
    }
}

/// Runs after every session of one component and decides what comes next.
pub struct Supervisor {
    link: LinkState,
    backoff: Backoff,
}

impl Supervisor {
    pub fn new(link: LinkState) -> Self {
        Supervisor {
            link,
            backoff: Backoff::default(),
        }
    }

    /// Handles the end of a session: marks the link down, logs, and sleeps
    /// before the next attempt. Returns whether to run another session (false
    /// on shutdown, during the pause too, and after a fatal end).
    pub async fn next(&mut self, end: SessionEnd, shutdown: &CancellationToken) -> bool {
        let stayed_up = self.link.down();
        if stayed_up >= STABLE_AFTER {
            self.backoff.reset();
        }
        match &end {
            SessionEnd::Shutdown => {}
            SessionEnd::Lost(e) => self.link.failed(e),
            SessionEnd::Restart(e) => tracing::debug!(
                action = "session_restarted",
                reason = %ErrorChain(e.as_ref()),
                "{}: starting a new session",
                self.link.0.what
            ),
            SessionEnd::Fatal(e) => {
                tracing::error!(
                    action = "session_failed",
                    error = %ErrorChain(e.as_ref()),
                    "{}: stopped; retrying cannot help, so the service stops to be restarted",
                    self.link.0.what
                );
                *self.link.0.fatal.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(ErrorChain(e.as_ref()).to_string());
            }
        }
        let again = match end {
            SessionEnd::Shutdown | SessionEnd::Fatal(_) => false,
            SessionEnd::Lost(_) | SessionEnd::Restart(_) => {
                !shutdown.is_cancelled() && self.backoff.wait(shutdown).await
            }
        };
        if !again {
            self.link.stopped();
        }
        again
    }
}

/// Displays an error with its causes: `a: b: c`.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut last = self.0.to_string();
        let mut cur = self.0.source();
        while let Some(e) = cur {
            // Many errors repeat their source in their own message; say it once.
            let text = e.to_string();
            if !last.contains(&text) {
                write!(f, ": {text}")?;
            }
            last = text;
            cur = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lost() -> SessionEnd {
        SessionEnd::Lost("connection refused".into())
    }

    /// The real supervisor (default backoff, STABLE_AFTER) on tokio's paused
    /// clock: its backoff pauses pass at once, and `advance` is time spent up.
    #[tokio::test(start_paused = true)]
    async fn backoff_resets_only_after_a_session_stayed_up() {
        let link = LinkState::new("test", Peer::RabbitMq);
        let mut sup = Supervisor::new(link.clone());
        let stop = CancellationToken::new();
        for _ in 0..5 {
            assert!(sup.next(lost(), &stop).await);
        }
        assert_eq!(sup.backoff.attempts(), 5);
        // Up for a moment, then lost: no reset.
        link.up("x");
        tokio::time::advance(STABLE_AFTER - Duration::from_millis(1)).await;
        assert!(sup.next(lost(), &stop).await);
        assert_eq!(sup.backoff.attempts(), 6);
        // Up for STABLE_AFTER: the next delay starts small again.
        link.up("x");
        tokio::time::advance(STABLE_AFTER).await;
        assert!(sup.next(lost(), &stop).await);
        assert_eq!(sup.backoff.attempts(), 1);
    }

    #[tokio::test]
    async fn readiness_follows_the_link() {
        let link = LinkState::new("test", Peer::Mqtt);
        let waiter = tokio::spawn({
            let l = link.clone();
            async move { l.wait_up().await }
        });
        tokio::task::yield_now().await;
        assert!(!link.is_up());
        link.up("broker");
        assert_eq!(waiter.await.unwrap(), Ok(()));
        assert!(link.is_up());
        let mut sup = Supervisor::new(link.clone());
        let stop = CancellationToken::new();
        assert!(!sup.next(SessionEnd::Fatal("bug".into()), &stop).await);
        assert!(!link.is_up());
        assert_eq!(link.stopped_for_good().await, "bug");
        let health = link.health("down").unwrap_err();
        assert!(health.contains("stopped: bug"), "{health}");
        assert_eq!(
            link.wait_up().await,
            Err(()),
            "a stopped link never comes up"
        );
    }

    #[test]
    fn error_chain_prints_causes() {
        let io = std::io::Error::other("refused");
        let e: BoxError = Box::new(io);
        assert_eq!(ErrorChain(e.as_ref()).to_string(), "refused");
    }
}
