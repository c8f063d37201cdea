//! Every status change of an order, decided in one place.
//!
//! [`decide`] takes the order's current state and a requested change and
//! returns either a refusal (the state machine in `status` says no) or the
//! order's next state together with the complete Status Update announcing it
//! (and so its event id). Both stores persist exactly what it decided, guarded
//! by a compare-and-set on `(status, version)` in the database; the display
//! bridge replays the same Status Updates on its own copy with [`apply`], so
//! the two can never drift apart.

use super::events::StatusUpdate;
use super::order::OrderType;
use super::status::{OrderStatus, TransitionError};
use chrono::{DateTime, SubsecRound, Utc};

/// The part of an order a status change reads or writes. `(order_number,
/// version)` names one state exactly: every change bumps the version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderState {
    pub order_number: String,
    pub order_type: OrderType,
    pub status: OrderStatus,
    pub version: i64,
    /// The kitchen worker that started cooking it.
    pub processed_by: Option<String>,
    pub updated_at: DateTime<Utc>,
    pub estimated_completion: Option<DateTime<Utc>>,
    /// When it last went from cooking to ready.
    pub completed_at: Option<DateTime<Utc>>,
}

impl OrderState {
    /// A new order as intake stores it: received, version 1. The kitchen knows
    /// this much from the order message alone.
    pub fn received(order_number: String, order_type: OrderType, at: DateTime<Utc>) -> Self {
        OrderState {
            order_number,
            order_type,
            status: OrderStatus::Received,
            version: 1,
            processed_by: None,
            updated_at: at,
            estimated_completion: None,
            completed_at: None,
        }
    }
}

/// A requested change: who moves the order to which status, when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub to: OrderStatus,
    pub by: String,
    pub at: DateTime<Utc>,
    /// For `-> cooking`: when the order will be ready. Ignored otherwise.
    pub estimated_completion: Option<DateTime<Utc>>,
}

/// What [`decide`] decided: the order's next state and the message announcing it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub state: OrderState,
    pub update: StatusUpdate,
}

impl Decision {
    /// The change finishes a cooking (cooking -> ready): the worker that made
    /// it has one more order processed.
    pub fn finishes_cooking(&self) -> bool {
        self.update.old_status == OrderStatus::Cooking
            && self.update.new_status == OrderStatus::Ready
    }
}

/// Decides `change` on an order in state `cur`. Times are kept to the
/// microsecond, the precision both stores keep, so the message says exactly
/// what is stored.
pub fn decide(cur: &OrderState, change: &Change) -> Result<Decision, TransitionError> {
    cur.status.check(change.to)?;
    let estimated_completion = if change.to == OrderStatus::Cooking {
        change.estimated_completion.map(|t| t.trunc_subsecs(6))
    } else {
        cur.estimated_completion
    };
    let update = StatusUpdate {
        order_number: cur.order_number.clone(),
        old_status: cur.status,
        new_status: change.to,
        changed_by: change.by.clone(),
        timestamp: change.at.trunc_subsecs(6),
        estimated_completion,
        version: cur.version + 1,
        order_type: Some(cur.order_type),
    };
    let state = next(cur, &update);
    Ok(Decision { state, update })
}

/// The one move back the state machine does not list: a station's undo of
/// the bump that made the order ready (issue 24) takes it from `ready` back to
/// `cooking`. Only `stations::decide` asks for it.
pub fn reopen(cur: &OrderState, by: &str, at: DateTime<Utc>) -> Result<Decision, TransitionError> {
    if cur.status != OrderStatus::Ready {
        return Err(TransitionError {
            current: cur.status,
            requested: OrderStatus::Cooking,
        });
    }
    let update = StatusUpdate {
        order_number: cur.order_number.clone(),
        old_status: cur.status,
        new_status: OrderStatus::Cooking,
        changed_by: by.to_string(),
        timestamp: at.trunc_subsecs(6),
        estimated_completion: cur.estimated_completion,
        version: cur.version + 1,
        order_type: Some(cur.order_type),
    };
    let mut state = next(cur, &update);
    // Still the cook who first started it, not the one who took the bump back.
    state.processed_by = cur.processed_by.clone();
    Ok(Decision { state, update })
}

fn is_reopen(from: OrderStatus, to: OrderStatus) -> bool {
    from == OrderStatus::Ready && to == OrderStatus::Cooking
}

/// Applies a Status Update to a copy of the order (the display bridge's
/// view): the state it describes, or None when it does not follow from `cur`
/// (another order, not the next version, not from the current status, or a
/// change the state machine forbids): a duplicate, a stale update or a gap.
pub fn apply(cur: &OrderState, u: &StatusUpdate) -> Option<OrderState> {
    let follows = u.order_number == cur.order_number
        && u.version == cur.version + 1
        && u.old_status == cur.status
        && (cur.status.check(u.new_status).is_ok() || is_reopen(cur.status, u.new_status));
    follows.then(|| {
        let mut s = next(cur, u);
        if is_reopen(cur.status, u.new_status) {
            s.processed_by = cur.processed_by.clone();
        }
        s
    })
}

/// The state after `u`, which is known to follow from `cur`.
fn next(cur: &OrderState, u: &StatusUpdate) -> OrderState {
    let cooking = u.new_status == OrderStatus::Cooking;
    let cooked = u.old_status == OrderStatus::Cooking && u.new_status == OrderStatus::Ready;
    OrderState {
        order_number: cur.order_number.clone(),
        order_type: cur.order_type,
        status: u.new_status,
        version: u.version,
        processed_by: if cooking {
            Some(u.changed_by.clone())
        } else {
            cur.processed_by.clone()
        },
        updated_at: u.timestamp,
        estimated_completion: u.estimated_completion,
        completed_at: if cooked {
            Some(u.timestamp)
        } else {
            cur.completed_at
        },
    }
}

#[cfg(test)]
mod tests {
    use super::OrderStatus::*;
    use super::*;
    use chrono::TimeZone;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 123_456_789).unwrap()
    }

    fn state(status: OrderStatus, version: i64) -> OrderState {
        OrderState {
            status,
            version,
            processed_by: Some("chef_a".into()),
            estimated_completion: Some(t(60)),
            completed_at: Some(t(30)),
            ..OrderState::received("ORD_20261202_001".into(), OrderType::Delivery, t(0))
        }
    }

    fn change(to: OrderStatus) -> Change {
        Change {
            to,
            by: "chef_b".into(),
            at: t(100),
            estimated_completion: Some(t(190)),
        }
    }

    #[test]
    fn every_pair_is_decided_by_the_state_machine() {
        for from in OrderStatus::ALL {
            for to in OrderStatus::ALL {
                let got = decide(&state(from, 4), &change(to));
                match from.check(to) {
                    Ok(()) => assert!(got.is_ok(), "{from} -> {to}"),
                    Err(e) => assert_eq!(got, Err(e), "{from} -> {to}"),
                }
            }
        }
    }

    #[test]
    fn the_message_is_complete() {
        for from in OrderStatus::ALL {
            for &to in from.next_allowed() {
                let d = decide(&state(from, 4), &change(to)).unwrap();
                let u = &d.update;
                assert_eq!(u.order_number, "ORD_20261202_001");
                assert_eq!((u.old_status, u.new_status), (from, to));
                assert_eq!(u.changed_by, "chef_b");
                assert_eq!(u.timestamp, t(100).trunc_subsecs(6));
                assert_eq!(u.timestamp.timestamp_subsec_nanos(), 123_456_000);
                assert_eq!(u.version, 5);
                assert_eq!(u.order_type, Some(OrderType::Delivery));
                assert_eq!(u.estimated_completion, d.state.estimated_completion);
                assert_eq!(u.event_id(), format!("ORD_20261202_001:{to}:5"));
                assert_eq!(d.finishes_cooking(), (from, to) == (Cooking, Ready));
            }
        }
    }

    #[test]
    fn the_next_state_follows_the_change() {
        for from in OrderStatus::ALL {
            for &to in from.next_allowed() {
                let cur = state(from, 4);
                let s = decide(&cur, &change(to)).unwrap().state;
                let at = t(100).trunc_subsecs(6);
                assert_eq!((s.status, s.version, s.updated_at), (to, 5, at));
                assert_eq!(s.order_number, cur.order_number);
                if to == Cooking {
                    assert_eq!(s.processed_by.as_deref(), Some("chef_b"));
                    assert_eq!(s.estimated_completion, Some(t(190).trunc_subsecs(6)));
                } else {
                    assert_eq!(s.processed_by, cur.processed_by);
                    assert_eq!(s.estimated_completion, cur.estimated_completion);
                }
                let completed = if (from, to) == (Cooking, Ready) {
                    Some(at)
                } else {
                    cur.completed_at
                };
                assert_eq!(s.completed_at, completed, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn applying_the_message_gives_the_decided_state() {
        let mut cur = OrderState::received("ORD_20261202_001".into(), OrderType::Takeout, t(0));
        for to in [Cooking, Ready, Completed, Ready, Completed] {
            let d = decide(&cur, &change(to)).unwrap();
            assert_eq!(apply(&cur, &d.update).as_ref(), Some(&d.state), "-> {to}");
            // Once applied, the same message is a duplicate.
            assert_eq!(apply(&d.state, &d.update), None);
            cur = d.state;
        }
    }

    #[test]
    fn apply_refuses_what_does_not_follow() {
        let cur = state(Received, 1);
        let u = decide(&cur, &change(Cooking)).unwrap().update;
        let gap = StatusUpdate {
            version: 3,
            ..u.clone()
        };
        let other = StatusUpdate {
            order_number: "ORD_20261202_002".into(),
            ..u.clone()
        };
        let wrong_from = StatusUpdate {
            old_status: Cooking,
            ..u.clone()
        };
        let illegal = StatusUpdate {
            new_status: Completed,
            ..u.clone()
        };
        for bad in [gap, other, wrong_from, illegal] {
            assert_eq!(apply(&cur, &bad), None, "{bad:?}");
        }
    }
}
