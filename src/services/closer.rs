//! Tickets that clear themselves (issue 26, item 2), run by the order service.
//!
//! - A `ready` order nobody bumped is completed automatically after
//!   `[display] auto_complete_after_minutes` (0: never): the food went out,
//!   the screen just missed the bump.
//! - At the business day's cut-over what is left of an earlier business day is
//!   closed: `ready` is completed (it was served), `received` and `cooking`
//!   are cancelled (a ticket from the previous service is not cooked the next
//!   morning; the kitchen worker finds it cancelled and leaves it).
//!
//! Each change goes through `Store::transition` like a bump, so it has its
//! history row (`changed_by` = `auto-close`, the note says why) and its Status
//! Update, and the display bridge drops the order from the screens and from
//! its memory: what it holds stays bounded by one service's orders.

use crate::domain::business_day::BusinessDay;
use crate::domain::OrderStatus;
use crate::storage::{Durability, SharedStore, StoreError, Transition, TransitionOutcome};
use chrono::{DateTime, Utc};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Who the history says made the change.
pub const CHANGED_BY: &str = "auto-close";
/// How often the order service looks for tickets to close.
const EVERY: Duration = Duration::from_secs(30);

/// The rules: the business day, and minutes after which `ready` is completed.
#[derive(Debug, Clone)]
pub struct Closer {
    pub business: BusinessDay,
    pub auto_complete_after_minutes: u64,
}

impl Closer {
    /// The change due for `order` at `now`, with the note saying why.
    fn due(
        &self,
        status: OrderStatus,
        created_at: DateTime<Utc>,
        changed_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Option<(OrderStatus, String)> {
        let today = self.business.date(now);
        if self.business.date(created_at) < today {
            return match status {
                OrderStatus::Ready => Some((
                    OrderStatus::Completed,
                    "completed automatically at the business day's cut-over".into(),
                )),
                OrderStatus::Received | OrderStatus::Cooking => Some((
                    OrderStatus::Cancelled,
                    "cancelled automatically: still open at the business day's cut-over".into(),
                )),
                _ => None,
            };
        }
        let after = self.auto_complete_after_minutes;
        let waited = now - changed_at;
        (status == OrderStatus::Ready
            && after > 0
            && waited
                >= chrono::Duration::minutes(i64::try_from(after).unwrap_or(i64::MAX / 60_000)))
        .then(|| {
            (
                OrderStatus::Completed,
                format!("completed automatically after {after} minutes ready"),
            )
        })
    }

    /// Closes what is due at `now`; returns how many orders it changed. An
    /// order that changed meanwhile (bumped, recalled) is left as it is.
    pub async fn run_once(
        &self,
        store: &SharedStore,
        now: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let mut closed = 0;
        for o in store.open_orders().await? {
            let Some((to, note)) = self.due(o.status, o.created_at, o.updated_at, now) else {
                continue;
            };
            let t = Transition {
                order_number: o.placed.order_number.clone(),
                to,
                changed_by: CHANGED_BY.to_string(),
                request_id: crate::http::new_request_id(),
                now,
                estimated_completion: None,
                notes: Some(note),
                durability: Durability::Now,
            };
            if let TransitionOutcome::Applied { .. } = store.transition(&t).await? {
                closed += 1;
                tracing::info!(action = "order_auto_closed", order_number = %o.placed.order_number, status = %to, "Order closed automatically");
            }
        }
        Ok(closed)
    }

    /// Runs every 30 s until shutdown; a database outage is logged and retried.
    pub async fn run(self, store: SharedStore, wake: impl Fn(), shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(EVERY) => {}
                _ = shutdown.cancelled() => return,
            }
            match self.run_once(&store, Utc::now()).await {
                Ok(0) => {}
                Ok(_) => wake(),
                Err(e) => {
                    tracing::warn!(action = "auto_close_failed", error = %e, "Could not close old tickets; retrying")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use OrderStatus::*;

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 7, h, m, 0).unwrap()
    }

    #[test]
    fn ready_waits_its_minutes_and_the_cut_over_closes_the_rest() {
        let c = Closer {
            business: BusinessDay::default(),
            auto_complete_after_minutes: 30,
        };
        assert_eq!(c.due(Ready, at(10, 0), at(10, 5), at(10, 34)), None);
        assert_eq!(
            c.due(Ready, at(10, 0), at(10, 5), at(10, 35)).map(|d| d.0),
            Some(Completed)
        );
        assert_eq!(c.due(Cooking, at(10, 0), at(10, 5), at(23, 0)), None);
        // The next business day: yesterday's tickets are closed.
        let tomorrow = at(0, 0) + chrono::Duration::days(1);
        assert_eq!(
            c.due(Cooking, at(10, 0), at(10, 5), tomorrow).map(|d| d.0),
            Some(Cancelled)
        );
        assert_eq!(
            c.due(Received, at(23, 59), at(23, 59), tomorrow)
                .map(|d| d.0),
            Some(Cancelled)
        );
        assert_eq!(
            c.due(Ready, at(23, 50), at(23, 59), tomorrow).map(|d| d.0),
            Some(Completed)
        );
        // 0 minutes: never automatic within the day.
        let off = Closer {
            auto_complete_after_minutes: 0,
            ..c
        };
        assert_eq!(off.due(Ready, at(1, 0), at(1, 0), at(23, 0)), None);
    }
}
