//! What becomes of a delivery that could not be handled: the one mapping from
//! a failure's [`Class`] to ack, requeue or dead-letter, and the poison-message
//! cap, so that no single message can hold a queue up for good.

use crate::domain::error::Class;
use std::collections::{HashMap, VecDeque};

/// How many times a message may fail the same way, while the database itself
/// answers, before it is dead-lettered.
pub const POISON_AFTER: u32 = 5;
/// Messages whose failures are remembered at once (oldest forgotten first).
const REMEMBERED: usize = 1024;

/// What to do with a delivery once handling it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done (or nothing to do): acknowledge it.
    Ack,
    /// Failed for a reason that may pass: requeue it.
    Retry(String),
    /// Can never succeed: dead-letter it with this reason.
    DeadLetter(String),
}

impl Outcome {
    /// The outcome of a failure of `class`. Conflicts are retried: the next
    /// attempt reads the new state and decides again.
    pub fn of_failure(class: Class, reason: String) -> Outcome {
        match class {
            Class::Transient | Class::Conflict => Outcome::Retry(reason),
            Class::NotFound | Class::Permanent => Outcome::DeadLetter(reason),
        }
    }
}

/// Counts the failures of each message (by id) that happened while the
/// database was answering: a message that keeps failing then is at fault, not
/// the database, and after [`POISON_AFTER`] failures its retry becomes a
/// dead letter. Failures while the database is down are not counted.
#[derive(Debug, Default)]
pub struct PoisonCap {
    failures: HashMap<String, (String, u32)>,
    age: VecDeque<String>,
}

impl PoisonCap {
    /// Applies the cap to `outcome` for message `id`. `db_answers`: whether
    /// the database answered a health check just now.
    pub fn check(&mut self, id: &str, outcome: Outcome, db_answers: bool) -> Outcome {
        let reason = match outcome {
            Outcome::Retry(reason) if db_answers => reason,
            other => {
                if !matches!(other, Outcome::Retry(_)) {
                    self.forget(id);
                }
                return other;
            }
        };
        if !self.failures.contains_key(id) {
            if self.age.len() >= REMEMBERED {
                if let Some(old) = self.age.pop_front() {
                    self.failures.remove(&old);
                }
            }
            self.age.push_back(id.to_string());
        }
        let entry = self
            .failures
            .entry(id.to_string())
            .or_insert_with(|| (reason.clone(), 0));
        // Only the same failure again counts; another one starts over.
        if entry.0 != reason {
            *entry = (reason.clone(), 0);
        }
        entry.1 += 1;
        if entry.1 >= POISON_AFTER {
            let n = entry.1;
            self.forget(id);
            Outcome::DeadLetter(format!(
                "failed {n} times while the database was up: {reason}"
            ))
        } else {
            Outcome::Retry(reason)
        }
    }

    /// Forgets message `id` (it succeeded, or was settled for good).
    pub fn forget(&mut self, id: &str) {
        if self.failures.remove(id).is_some() {
            self.age.retain(|n| n != id);
        }
    }
}

/// Deliveries received and not started yet, one line per priority band (0 the
/// highest). With quorum queues (one per priority) a worker is sent work from
/// every band at once; it starts the highest band's first, so under a backlog
/// a rush order overtakes the normal ones already waiting.
#[derive(Debug)]
pub struct Bands<T> {
    lines: Vec<VecDeque<T>>,
}

impl<T> Bands<T> {
    pub fn new(bands: usize) -> Self {
        Bands {
            lines: (0..bands.max(1)).map(|_| VecDeque::new()).collect(),
        }
    }

    /// Queues `item` in band `band` (past the last band: the last).
    pub fn push(&mut self, band: usize, item: T) {
        let last = self.lines.len() - 1;
        self.lines[band.min(last)].push_back(item);
    }

    /// The oldest item of the highest band that has one.
    pub fn pop(&mut self) -> Option<T> {
        self.lines.iter_mut().find_map(VecDeque::pop_front)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry() -> Outcome {
        Outcome::Retry("statement failed".into())
    }

    #[test]
    fn classes_map_to_actions() {
        assert_eq!(
            Outcome::of_failure(Class::Transient, "x".into()),
            Outcome::Retry("x".into())
        );
        assert_eq!(
            Outcome::of_failure(Class::Permanent, "x".into()),
            Outcome::DeadLetter("x".into())
        );
        assert_eq!(
            Outcome::of_failure(Class::NotFound, "x".into()),
            Outcome::DeadLetter("x".into())
        );
    }

    #[test]
    fn the_same_failure_n_times_is_dead_lettered() {
        let mut cap = PoisonCap::default();
        for _ in 1..POISON_AFTER {
            assert_eq!(cap.check("ORD_1", retry(), true), retry());
        }
        match cap.check("ORD_1", retry(), true) {
            Outcome::DeadLetter(r) => assert!(r.contains("statement failed"), "{r}"),
            o => panic!("{o:?}"),
        }
        // Counting starts over afterwards.
        assert_eq!(cap.check("ORD_1", retry(), true), retry());
    }

    #[test]
    fn failures_while_the_database_is_down_do_not_count() {
        let mut cap = PoisonCap::default();
        for _ in 0..(3 * POISON_AFTER) {
            assert_eq!(cap.check("ORD_1", retry(), false), retry());
        }
        // Another failure resets the count; success forgets it.
        for _ in 1..POISON_AFTER {
            cap.check("ORD_2", retry(), true);
        }
        assert_eq!(
            cap.check("ORD_2", Outcome::Retry("other".into()), true),
            Outcome::Retry("other".into())
        );
        cap.forget("ORD_2");
        assert!(cap.failures.is_empty() && cap.age.is_empty());
    }

    #[test]
    fn bands_start_the_highest_first_and_keep_order_within_a_band() {
        let mut b = Bands::new(3);
        b.push(2, "low 1");
        b.push(2, "low 2");
        b.push(0, "rush 1");
        b.push(1, "mid");
        b.push(0, "rush 2");
        b.push(9, "past the last band");
        let order: Vec<_> = std::iter::from_fn(|| b.pop()).collect();
        assert_eq!(
            order,
            [
                "rush 1",
                "rush 2",
                "mid",
                "low 1",
                "low 2",
                "past the last band"
            ]
        );
    }
}
