//! The notification subscriber: prints every status change.
//!
//! Each subscriber declares its own exclusive, server-named queue bound to the
//! fanout exchange, so every running subscriber sees every notification (a shared
//! queue would split them between subscribers).

use crate::broker::topology;
use crate::broker::{bounded_setup, connect, connection_lost};
use crate::domain::events::{StatusUpdate, NOTIFICATIONS_EXCHANGE, STATIONS_EXCHANGE};
use crate::domain::stations::StationUpdate;
use crate::link::supervise::{LinkState, SessionEnd, Supervisor};
use crate::process::config::{QueueType, RabbitConfig};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicRejectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use std::collections::{HashSet, VecDeque};
use std::io::Write;
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = "notification-subscriber";

/// One write per line so it never interleaves with log lines from other threads.
fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

pub struct Subscriber {
    pub rabbit: RabbitConfig,
    pub link: LinkState,
}

impl Subscriber {
    /// Prints every status update until `shutdown`. Readiness: `link` comes up
    /// once its queue is bound and consumed.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut seen = Seen::new(SEEN_CAPACITY);
        let mut sup = Supervisor::new(self.link.clone());
        while sup
            .next(self.session(&shutdown, &mut seen).await, &shutdown)
            .await
        {}
    }

    async fn session(&self, shutdown: &CancellationToken, seen: &mut Seen) -> SessionEnd {
        let conn = match connect(&self.rabbit, SERVICE).await {
            Ok(c) => c,
            Err(e) => return e.into(),
        };
        let (ch, mut consumer) = match bounded_setup(subscribe(&conn, self.rabbit.queue_type)).await
        {
            Ok(c) => c,
            Err(end) => return end,
        };
        self.link
            .up(&format!("exchange '{NOTIFICATIONS_EXCHANGE}'"));
        loop {
            let d = tokio::select! {
                _ = shutdown.cancelled() => {
                    crate::broker::close(&conn, &[&ch]).await;
                    return SessionEnd::Shutdown;
                }
                next = consumer.next() => match next {
                    Some(Ok(d)) => d,
                    Some(Err(e)) => return e.into(),
                    None => return connection_lost(),
                },
            };
            // Shown (or seen before) and acked, or unreadable and dropped.
            let read = if d.exchange.as_str() == STATIONS_EXCHANGE {
                StationUpdate::decode(&d.data)
                    .map(|u| {
                        if seen.first(u.event_id()) {
                            print_line(&u.human_line());
                        }
                    })
                    .map_err(|e| (e.to_string(), "Unreadable station update dropped"))
            } else {
                StatusUpdate::decode(&d.data)
                    .map(|u| show_status(&u, seen))
                    .map_err(|e| (e.to_string(), "Unreadable notification dropped"))
            };
            let settled = match read {
                Ok(()) => d.ack(BasicAckOptions::default()).await,
                Err((e, what)) => {
                    tracing::error!(action = "message_processing_failed", error = %e, "{what}");
                    d.reject(BasicRejectOptions { requeue: false }).await
                }
            };
            if let Err(e) = settled {
                return e.into();
            }
        }
    }
}

/// Prints a status update the first time it is seen; a copy published again
/// after a crash is skipped.
fn show_status(u: &StatusUpdate, seen: &mut Seen) {
    if seen.first(u.event_id()) {
        tracing::debug!(
            action = "notification_received",
            order_number = %u.order_number,
            new_status = %u.new_status,
            "Received status update for order {}", u.order_number
        );
        print_line(&u.human_line());
    } else {
        tracing::debug!(
            action = "duplicate_notification",
            order_number = %u.order_number,
            event_id = %u.event_id(),
            "Status update already shown (published again after a crash); skipped"
        );
    }
}

/// This subscriber's own queue (exclusive, server-named), bound to the fanout
/// exchange, and a consumer on it.
async fn subscribe(
    conn: &lapin::Connection,
    qt: QueueType,
) -> Result<(lapin::Channel, lapin::Consumer), lapin::Error> {
    let ch = topology::channel(conn, qt).await?;
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    topology::bind(&ch, q.name().as_str(), NOTIFICATIONS_EXCHANGE, "").await?;
    // Issue 24: part and rush changes too (their own exchange, so subscribers
    // written against the spec never see them).
    topology::bind(&ch, q.name().as_str(), STATIONS_EXCHANGE, "#").await?;
    let consumer = ch
        .basic_consume(
            q.name().clone(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((ch, consumer))
}

/// How many recent transitions a subscriber remembers to drop duplicates.
const SEEN_CAPACITY: usize = 20_000;

/// The event ids (`StatusUpdate::event_id`) of recently shown updates. The
/// outbox publishes at least once: a relay that dies after the broker took a
/// message but before deleting its row publishes it again once its lease
/// runs out. The copy has the same event id, so it is shown only once.
struct Seen {
    order: VecDeque<String>,
    ids: HashSet<String>,
    capacity: usize,
}

impl Seen {
    fn new(capacity: usize) -> Self {
        Seen {
            order: VecDeque::new(),
            ids: HashSet::new(),
            capacity: capacity.max(1),
        }
    }

    /// True the first time `id` comes by; the oldest ids are forgotten first.
    fn first(&mut self, id: String) -> bool {
        if self.ids.contains(&id) {
            return false;
        }
        if self.order.len() >= self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        self.order.push_back(id.clone());
        self.ids.insert(id);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::Seen;

    #[test]
    fn a_transition_is_shown_once_and_old_ids_are_forgotten() {
        let mut seen = Seen::new(2);
        assert!(seen.first("ORD_20240101_001:cooking:2".into()));
        assert!(!seen.first("ORD_20240101_001:cooking:2".into()));
        assert!(seen.first("ORD_20240101_001:ready:3".into()));
        assert!(seen.first("ORD_20240101_002:cooking:2".into()));
        // Capacity 2: the first id was forgotten.
        assert!(seen.first("ORD_20240101_001:cooking:2".into()));
    }
}
