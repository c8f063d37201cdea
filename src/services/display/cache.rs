//! The orders the bridge has in view, kept from the messages themselves, so a
//! delivery becomes MQTT publishes without a database read. A new order's
//! message carries the whole order; each status update carries what changed
//! and its version. Only an update that is exactly the next version is applied;
//! anything else (a gap, a bridge that just started, an order evicted from
//! here) falls back to reading the order from the database. A part's change
//! (issue 24) is read from the database too: cooks bump at the pace of hands,
//! and the part rules stay in one place (`domain::stations`).

use crate::domain::events::{OrderMessage, StatusUpdate};
use crate::domain::stations::StationUpdate;
use crate::storage::OrderView;
use std::collections::{HashMap, VecDeque};

/// Orders kept. Open orders of a busy kitchen fit many times over; closed
/// orders leave at once, and the oldest go first when it is full.
pub const CAPACITY: usize = 4096;

pub struct OrderCache {
    views: HashMap<String, OrderView>,
    /// Insertion order, for eviction. May name orders already gone (skipped).
    age: VecDeque<String>,
    capacity: usize,
}

impl OrderCache {
    pub fn new(capacity: usize) -> Self {
        OrderCache {
            views: HashMap::new(),
            age: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// The order's state after message `m` (or a newer one), or None when it is
    /// not known here: then read the order from the database and `remember` it.
    pub fn created(&mut self, m: &OrderMessage) -> Option<OrderView> {
        if let Some(v) = self.views.get(&m.placed.order_number) {
            // A redelivery: what we hold is at least as new.
            return Some(v.clone());
        }
        let v = OrderView::from_message(m)?;
        self.remember(v.clone());
        Some(v)
    }

    /// Like `created`, for a status update.
    pub fn changed(&mut self, u: &StatusUpdate) -> Option<OrderView> {
        let v = self.views.get_mut(&u.order_number)?;
        if u.version > v.version && !v.apply(u) {
            // A gap: some change did not come through here.
            self.views.remove(&u.order_number);
            return None;
        }
        let v = v.clone();
        if !v.status.is_open() {
            self.views.remove(&u.order_number);
        }
        Some(v)
    }

    /// A part or rush change: the order as held here when it is already at
    /// that version or newer (a redelivery), else None (read the database).
    pub fn station_changed(&mut self, u: &StationUpdate) -> Option<OrderView> {
        match self.views.get(&u.order_number) {
            Some(v) if v.version >= u.version => Some(v.clone()),
            _ => {
                self.views.remove(&u.order_number);
                None
            }
        }
    }

    /// Keeps an order read from the database (open orders only).
    pub fn remember(&mut self, v: OrderView) {
        if !v.status.is_open() {
            self.views.remove(&v.placed.order_number);
            return;
        }
        while self.views.len() >= self.capacity {
            match self.age.pop_front() {
                Some(old) => {
                    self.views.remove(&old);
                }
                None => break,
            }
        }
        if self.age.len() >= self.capacity * 2 {
            // Drop the names of orders already gone, so `age` stays bounded.
            let views = &self.views;
            self.age.retain(|n| views.contains_key(n));
        }
        self.age.push_back(v.placed.order_number.clone());
        self.views.insert(v.placed.order_number.clone(), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::events::PlacedOrder;
    use crate::domain::{Cents, Item, OrderStatus, OrderType};
    use chrono::{TimeZone, Utc};

    fn msg(n: &str) -> OrderMessage {
        OrderMessage {
            placed: PlacedOrder {
                order_number: n.into(),
                customer_name: "Jane".into(),
                order_type: OrderType::Takeout,
                table_number: None,
                delivery_address: None,
                items: vec![Item::new("Soup", 1, Cents(500))],
                total_amount: Cents(500),
                priority: 1,
            },
            created_at: Some(Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap()),
            notes: None,
        }
    }

    fn update(n: &str, old: OrderStatus, new: OrderStatus, version: i64) -> StatusUpdate {
        StatusUpdate {
            order_number: n.into(),
            old_status: old,
            new_status: new,
            changed_by: "Alice".into(),
            timestamp: Utc
                .with_ymd_and_hms(2026, 11, 25, 12, 0, version as u32)
                .unwrap(),
            estimated_completion: None,
            version,
            order_type: Some(OrderType::Takeout),
        }
    }

    fn known(l: Option<OrderView>) -> OrderView {
        l.expect("a known order")
    }

    #[test]
    fn follows_an_order_through_its_changes() {
        let mut c = OrderCache::new(10);
        let v = known(c.created(&msg("ORD_20261125_001")));
        assert_eq!((v.status, v.version), (OrderStatus::Received, 1));
        let u = update(
            "ORD_20261125_001",
            OrderStatus::Received,
            OrderStatus::Cooking,
            2,
        );
        let v = known(c.changed(&u));
        assert_eq!((v.status, v.version), (OrderStatus::Cooking, 2));
        assert_eq!(v.processed_by.as_deref(), Some("Alice"));
        assert_eq!(v.updated_at, u.timestamp);
        // A duplicate of the same update: the state as it is, no second change.
        assert_eq!(known(c.changed(&u)), v);
    }

    #[test]
    fn a_gap_or_an_unknown_order_goes_to_the_database() {
        let mut c = OrderCache::new(10);
        let u = update(
            "ORD_20261125_001",
            OrderStatus::Cooking,
            OrderStatus::Ready,
            3,
        );
        assert_eq!(c.changed(&u), None);
        c.created(&msg("ORD_20261125_001"));
        assert_eq!(c.changed(&u), None, "version 2 never came");
        // And it is forgotten, so the next update reads the database too.
        let u4 = update(
            "ORD_20261125_001",
            OrderStatus::Ready,
            OrderStatus::Completed,
            4,
        );
        assert_eq!(c.changed(&u4), None);
        let mut old = msg("ORD_20261125_002");
        old.created_at = None;
        assert_eq!(c.created(&old), None);
    }

    #[test]
    fn closed_orders_leave_and_the_oldest_are_evicted() {
        let mut c = OrderCache::new(2);
        for n in ["ORD_20261125_001", "ORD_20261125_002", "ORD_20261125_003"] {
            c.created(&msg(n));
        }
        assert_eq!(c.views.len(), 2);
        assert!(!c.views.contains_key("ORD_20261125_001"));
        let u = update(
            "ORD_20261125_002",
            OrderStatus::Received,
            OrderStatus::Cancelled,
            2,
        );
        assert_eq!(known(c.changed(&u)).status, OrderStatus::Cancelled);
        assert!(!c.views.contains_key("ORD_20261125_002"));
    }
}
