//! The order status state machine. Every transition is checked here, through
//! `transition::decide`, which the stores persist with a compare-and-set.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Received,
    Cooking,
    Ready,
    Completed,
    Cancelled,
}

names!(OrderStatus, |s| format!("unknown order status '{s}'"), {
    Received => "received",
    Cooking => "cooking",
    Ready => "ready",
    Completed => "completed",
    Cancelled => "cancelled",
});

impl OrderStatus {
    /// Open orders are on the kitchen board; closed ones are history.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            OrderStatus::Received | OrderStatus::Cooking | OrderStatus::Ready
        )
    }

    /// The statuses an order may move to from `self`.
    ///
    /// - received -> cooking (a kitchen worker picks it up) or cancelled
    /// - cooking  -> ready (cooked) or cancelled
    /// - ready    -> completed (picked up / served: the display's "bump")
    /// - completed -> ready (the display's "recall" of a bumped ticket)
    /// - cancelled is final.
    pub fn next_allowed(self) -> &'static [OrderStatus] {
        use OrderStatus::*;
        match self {
            Received => &[Cooking, Cancelled],
            Cooking => &[Ready, Cancelled],
            Ready => &[Completed],
            Completed => &[Ready],
            Cancelled => &[],
        }
    }

    /// Checks the transition `self -> to`.
    pub fn check(self, to: OrderStatus) -> Result<(), TransitionError> {
        if self.next_allowed().contains(&to) {
            Ok(())
        } else {
            Err(TransitionError {
                current: self,
                requested: to,
            })
        }
    }
}

/// An illegal transition: the order is in `current`, which cannot move to `requested`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("order is '{current}' and cannot become '{requested}'")]
pub struct TransitionError {
    pub current: OrderStatus,
    pub requested: OrderStatus,
}

/// What a kitchen worker should do with an order message, given the order's
/// current status. This is what makes redelivery harmless.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KitchenStep {
    /// received: move it to cooking, then cook.
    StartCooking,
    /// Already cooking (a redelivery after a crash or a duplicate message):
    /// resume cooking without a second transition.
    ResumeCooking,
    /// ready, completed or cancelled: nothing to do, acknowledge the message.
    AlreadyDone,
}

pub fn kitchen_step(current: OrderStatus) -> KitchenStep {
    match current {
        OrderStatus::Received => KitchenStep::StartCooking,
        OrderStatus::Cooking => KitchenStep::ResumeCooking,
        OrderStatus::Ready | OrderStatus::Completed | OrderStatus::Cancelled => {
            KitchenStep::AlreadyDone
        }
    }
}

#[cfg(test)]
mod tests {
    use super::OrderStatus::*;
    use super::*;

    /// The transitions the state machine allows, written out once.
    const LEGAL: [(OrderStatus, OrderStatus); 6] = [
        (Received, Cooking),
        (Received, Cancelled),
        (Cooking, Ready),
        (Cooking, Cancelled),
        (Ready, Completed),
        (Completed, Ready),
    ];

    #[test]
    fn legal_transitions() {
        for (from, to) in LEGAL {
            assert_eq!(from.check(to), Ok(()), "{from} -> {to}");
        }
    }

    #[test]
    fn every_other_transition_is_illegal() {
        for from in OrderStatus::ALL {
            for to in OrderStatus::ALL {
                if LEGAL.contains(&(from, to)) {
                    continue;
                }
                let err = from.check(to).unwrap_err();
                assert_eq!(err.current, from);
                assert_eq!(err.requested, to);
            }
        }
    }

    #[test]
    fn kitchen_steps_make_redelivery_harmless() {
        assert_eq!(kitchen_step(Received), KitchenStep::StartCooking);
        assert_eq!(kitchen_step(Cooking), KitchenStep::ResumeCooking);
        for st in [Ready, Completed, Cancelled] {
            assert_eq!(kitchen_step(st), KitchenStep::AlreadyDone);
        }
    }

    #[test]
    fn parses_and_prints() {
        for st in OrderStatus::ALL {
            assert_eq!(st.as_str().parse::<OrderStatus>(), Ok(st));
        }
        assert!("cooked".parse::<OrderStatus>().is_err());
        assert!(Ready.is_open() && !Completed.is_open() && !Cancelled.is_open());
    }
}
