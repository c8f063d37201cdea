//! Kitchen worker registration: may a process run under a worker name?
//!
//! The spec's rule: a second live worker with a name is refused. A row saying
//! "online" does not prove a live worker: a crash, a `kill -9` or a power cut
//! leaves it so, and systemd restarts the worker within seconds, long before
//! the heartbeat goes stale. So the proof of life is a lock that dies with its
//! process (a PostgreSQL session advisory lock, a `flock` beside the SQLite
//! file): whoever gets the name's lock knows no live process holds the name.
//! The heartbeat only decides when the lock is held by someone who may be hung
//! (a remote PostgreSQL session not yet dropped).

use chrono::{DateTime, Duration, Utc};

/// A worker's row in the `workers` table, as both backends read it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerRow {
    pub name: String,
    pub order_types: String,
    pub status: String,
    pub orders_processed: i64,
    pub last_seen: DateTime<Utc>,
    pub heartbeat_interval_secs: i64,
}

impl WorkerRow {
    /// A worker counts as online only while its heartbeats are fresh: a crashed
    /// worker's row still says "online", but its last_seen ages past 2 intervals.
    pub fn is_online(&self, now: DateTime<Utc>) -> bool {
        self.status == "online" && !self.is_stale(now)
    }

    pub fn is_stale(&self, now: DateTime<Utc>) -> bool {
        let limit = Duration::seconds(2 * self.heartbeat_interval_secs.max(1));
        now - self.last_seen > limit
    }
}

#[derive(Debug, Clone)]
pub struct WorkerRegistration {
    pub name: String,
    pub order_types: String,
    pub heartbeat_interval_secs: i64,
    pub now: DateTime<Utc>,
    /// This process holds the name's liveness lock (see the module comment).
    pub name_lock_held: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Registered {
    New,
    /// The row existed and was offline.
    Returned,
    /// The row said online, but the process behind it is gone (its lock was
    /// free) or hung (its heartbeat stale): a crash or a power cut.
    TakenOver {
        last_seen: DateTime<Utc>,
    },
    /// Refused: a live worker with this name is online.
    AlreadyOnline {
        last_seen: DateTime<Utc>,
    },
}

/// The registration decision, the same for every backend.
pub fn decide(existing: Option<&WorkerRow>, reg: &WorkerRegistration) -> Registered {
    match (existing, reg.name_lock_held) {
        (None, true) => Registered::New,
        (Some(w), true) if w.status == "online" => Registered::TakenOver {
            last_seen: w.last_seen,
        },
        (Some(_), true) => Registered::Returned,
        // Somebody holds the lock: alive, unless its heartbeat stopped.
        (Some(w), false) if w.status == "online" && w.is_stale(reg.now) => Registered::TakenOver {
            last_seen: w.last_seen,
        },
        (Some(w), false) => Registered::AlreadyOnline {
            last_seen: w.last_seen,
        },
        // Locked, but no row yet: the other process is registering right now.
        (None, false) => Registered::AlreadyOnline { last_seen: reg.now },
    }
}

/// The lock key every backend derives from a worker name: file-name safe
/// (letters, digits, `_`, `-`; anything else as `%XX`), distinct per name.
pub fn lock_key(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-02T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn row(status: &str, age_secs: i64) -> WorkerRow {
        WorkerRow {
            name: "chef_anna".into(),
            order_types: "dine_in".into(),
            status: status.into(),
            orders_processed: 3,
            last_seen: now() - Duration::seconds(age_secs),
            heartbeat_interval_secs: 30,
        }
    }

    fn reg(held: bool) -> WorkerRegistration {
        WorkerRegistration {
            name: "chef_anna".into(),
            order_types: "dine_in".into(),
            heartbeat_interval_secs: 30,
            now: now(),
            name_lock_held: held,
        }
    }

    #[test]
    fn lock_free_means_the_name_is_ours() {
        assert_eq!(decide(None, &reg(true)), Registered::New);
        assert_eq!(
            decide(Some(&row("offline", 5)), &reg(true)),
            Registered::Returned
        );
        // systemd restarts a SIGKILLed worker 2 s later: fresh heartbeat, dead
        // process; and a stale one.
        for seen in [row("online", 2), row("online", 3600)] {
            assert_eq!(
                decide(Some(&seen), &reg(true)),
                Registered::TakenOver {
                    last_seen: seen.last_seen
                }
            );
        }
    }

    #[test]
    fn lock_held_elsewhere_refuses_a_live_worker() {
        // Alive; or shutting down (already marked offline) but still holding
        // the lock.
        for held in [row("online", 2), row("offline", 1)] {
            assert_eq!(
                decide(Some(&held), &reg(false)),
                Registered::AlreadyOnline {
                    last_seen: held.last_seen
                }
            );
        }
        assert_eq!(
            decide(None, &reg(false)),
            Registered::AlreadyOnline { last_seen: now() }
        );
    }

    #[test]
    fn lock_held_by_a_hung_process_yields_to_a_stale_heartbeat() {
        // 61 s > 2 intervals of 30 s.
        let hung = row("online", 61);
        assert_eq!(
            decide(Some(&hung), &reg(false)),
            Registered::TakenOver {
                last_seen: hung.last_seen
            }
        );
        assert!(matches!(
            decide(Some(&row("online", 59)), &reg(false)),
            Registered::AlreadyOnline { .. }
        ));
    }

    #[test]
    fn lock_keys_are_file_name_safe_and_distinct() {
        assert_eq!(lock_key("chef_mario-2"), "chef_mario-2");
        assert_eq!(lock_key("a/b"), "a%2Fb");
        assert_eq!(lock_key(".."), "%2E%2E");
        assert_ne!(lock_key("a b"), lock_key("a_b"));
        assert_ne!(lock_key("%20"), lock_key(" "));
    }
}
