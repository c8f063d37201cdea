//! The snapshot task: on every MQTT (re)connect it republishes the retained
//! state of every open order and every worker's presence from the database, so
//! a broker that lost its retained store (or a new screen) sees the true board.
//! It also reconciles what the broker retains for orders that are no longer
//! open (clears missed while the bridge was down), and refreshes worker
//! presence every few seconds, publishing only what changed.

use super::mqtt::{Cmd, Inbound, Publisher, Retained};
use super::payload::{Presence, RetainedOrder};
use crate::storage::{SharedStore, StoreError};
use chrono::Utc;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub struct Snapshots {
    pub store: SharedStore,
    pub publisher: Publisher,
    pub inbound: Inbound,
    /// How often worker presence is refreshed.
    pub refresh: Duration,
}

struct Seen {
    /// Open orders as of the last snapshot: retained payloads for these need no check.
    open: HashSet<String>,
    /// Worker presence last published: (status, orders_processed).
    presence: HashMap<String, (&'static str, i64)>,
    /// A snapshot is owed (the database was down when one was due).
    owed: bool,
}

impl Snapshots {
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut seen = Seen {
            open: HashSet::new(),
            presence: HashMap::new(),
            owed: false,
        };
        let mut tick = tokio::time::interval(self.refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                // A (re)connect's snapshot before the payloads it reads back.
                biased;
                _ = shutdown.cancelled() => return,
                // Several reconnects in a row leave one permit: one snapshot.
                _ = self.inbound.connected.notified() => {
                    seen.owed = !self.snapshot(&mut seen, &shutdown).await;
                }
                msg = self.inbound.retained.recv() => match msg {
                    None => return,
                    Some(Retained { order_number, payload }) => {
                        self.reconcile(&seen, order_number, &payload, &shutdown).await;
                    }
                },
                _ = tick.tick() => {
                    if seen.owed {
                        seen.owed = !self.snapshot(&mut seen, &shutdown).await;
                    } else {
                        self.refresh_presence(&mut seen, &shutdown).await;
                    }
                }
            }
        }
    }

    /// Publishes the whole board. False when the database could not be read.
    async fn snapshot(&self, seen: &mut Seen, shutdown: &CancellationToken) -> bool {
        let started = Instant::now();
        let orders = match self.store.open_orders().await {
            Ok(o) => o,
            Err(e) => return db_failed(&e),
        };
        let workers = match self.store.workers().await {
            Ok(w) => w,
            Err(e) => return db_failed(&e),
        };
        seen.open = orders
            .iter()
            .map(|o| o.placed.order_number.clone())
            .collect();
        let count = orders.len();
        for view in orders {
            let cmd = Cmd::State {
                view: Box::new(view),
                snapshot: true,
                done: None,
            };
            if !self.publisher.send(cmd, shutdown).await {
                return true;
            }
        }
        let now = Utc::now();
        seen.presence.clear();
        for w in &workers {
            let p = Presence::of(w, now);
            seen.presence.insert(p.worker_name.clone(), p.key());
            if !self.publisher.send(Cmd::Presence(p), shutdown).await {
                return true;
            }
        }
        tracing::info!(
            action = "snapshot_published",
            orders = count,
            workers = workers.len(),
            duration_ms = started.elapsed().as_millis() as u64,
            "Board snapshot queued for MQTT: {count} open orders, {} workers",
            workers.len()
        );
        true
    }

    async fn refresh_presence(&self, seen: &mut Seen, shutdown: &CancellationToken) {
        let workers = match self.store.workers().await {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!(action = "db_connection_failed", error = %e, "Worker presence not refreshed");
                return;
            }
        };
        let now = Utc::now();
        for w in &workers {
            let p = Presence::of(w, now);
            if seen.presence.get(&p.worker_name) == Some(&p.key()) {
                continue;
            }
            seen.presence.insert(p.worker_name.clone(), p.key());
            if !self.publisher.send(Cmd::Presence(p), shutdown).await {
                return;
            }
        }
    }

    /// The broker retains order `n`, which the last snapshot did not list as open.
    async fn reconcile(
        &self,
        seen: &Seen,
        n: String,
        payload: &[u8],
        shutdown: &CancellationToken,
    ) {
        if seen.open.contains(&n) {
            return;
        }
        let retained_version = RetainedOrder::parse(payload)
            .map(|r| r.version)
            .unwrap_or(0);
        let cmd = match self.store.order(&n).await {
            Ok(Some(view)) if view.status.is_open() => Cmd::State {
                // Opened after the snapshot read the database: publish it anyway.
                view: Box::new(view),
                snapshot: true,
                done: None,
            },
            Ok(Some(view)) => Cmd::Reconcile {
                view: Box::new(view),
                retained_version,
            },
            Ok(None) => {
                tracing::info!(
                    action = "display_cleared",
                    order_number = %n,
                    "The broker retained an order the database does not know; clearing it"
                );
                Cmd::Forget { order_number: n }
            }
            Err(e) => {
                db_failed(&e);
                return;
            }
        };
        self.publisher.send(cmd, shutdown).await;
    }
}

fn db_failed(e: &StoreError) -> bool {
    tracing::error!(
        action = "db_connection_failed",
        error = %e,
        "Display bridge could not read the board from the database; retrying"
    );
    false
}
