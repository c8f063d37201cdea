//! The messages an order produces and where they go: the origin spec's Order
//! Message and Status Update Message, and the exchanges and routing keys they
//! are published with. Extra fields (`version`, `order_type`) are additive, so
//! consumers written against the spec still work. The destinations live here,
//! not in `broker`, because storage writes them into the outbox.

use super::money::Cents;
use super::order::{Item, OrderType, ValidOrder};
use super::status::OrderStatus;
use chrono::{DateTime, Utc};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where new orders go (a topic exchange; see `routing_key`).
pub const ORDERS_EXCHANGE: &str = "orders_topic";
/// Where status updates go (a fanout exchange: every subscriber sees every update).
pub const NOTIFICATIONS_EXCHANGE: &str = "notifications_fanout";
/// Where part and rush changes go (issue 24; a topic exchange, routing key
/// `station.{station}` or `order.rush`; see `stations::StationUpdate`).
pub const STATIONS_EXCHANGE: &str = "stations_topic";

/// An order as placed and numbered: who ordered what, how, and for how much.
/// The fields the Order Message and the tracking API's order share, under
/// their wire names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlacedOrder {
    pub order_number: String,
    pub customer_name: String,
    pub order_type: OrderType,
    pub table_number: Option<i64>,
    pub delivery_address: Option<String>,
    pub items: Vec<Item>,
    pub total_amount: Cents,
    pub priority: i32,
}

impl PlacedOrder {
    pub fn new(order_number: String, order: &ValidOrder) -> Self {
        PlacedOrder {
            order_number,
            customer_name: order.customer_name.clone(),
            order_type: order.order_type,
            table_number: order.table_number,
            delivery_address: order.delivery_address.clone(),
            items: order.items.clone(),
            total_amount: order.total,
            priority: order.priority,
        }
    }
}

/// Published to `orders_topic` with routing key `kitchen.{order_type}.{priority}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "OrderMessageIn")]
pub struct OrderMessage {
    #[serde(flatten)]
    pub placed: PlacedOrder,
    /// When the order was stored (additive: lets the display bridge show the
    /// order without reading it back from the database).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    /// The order's note for the kitchen (additive, issue 13; items carry
    /// their own notes, modifiers and allergens). Absent when there is none,
    /// so an order without kitchen details has the same message as before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
}

/// What an `OrderMessage` is read from. serde refuses `deny_unknown_fields`
/// beside `flatten`, so the fields nobody knows are collected here and
/// refused in `try_from`: a message with a field we do not know stays an error.
#[derive(Deserialize)]
struct OrderMessageIn {
    #[serde(flatten)]
    placed: PlacedOrder,
    #[serde(default)]
    created_at: Option<DateTime<Utc>>,
    #[serde(default)]
    notes: Option<String>,
    /// Declared after `placed`, so it sees only what `placed` left.
    #[serde(flatten)]
    unknown: BTreeMap<String, IgnoredAny>,
}

impl TryFrom<OrderMessageIn> for OrderMessage {
    type Error = String;

    fn try_from(m: OrderMessageIn) -> Result<Self, String> {
        if let Some(field) = m.unknown.keys().next() {
            return Err(format!("unknown field `{field}`"));
        }
        Ok(OrderMessage {
            placed: m.placed,
            created_at: m.created_at,
            notes: m.notes,
        })
    }
}

impl OrderMessage {
    pub fn new(order_number: String, order: &ValidOrder, created_at: DateTime<Utc>) -> Self {
        OrderMessage {
            placed: PlacedOrder::new(order_number, order),
            created_at: Some(created_at),
            notes: order.notes.clone(),
        }
    }

    pub fn routing_key(&self) -> String {
        routing_key(self.placed.order_type, self.placed.priority)
    }

    /// Decodes a message body; never panics on garbage.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let msg: OrderMessage =
            serde_json::from_slice(bytes).map_err(|e| format!("invalid order message: {e}"))?;
        if !super::order::is_order_number(&msg.placed.order_number) {
            return Err(format!(
                "invalid order message: bad order_number '{}'",
                msg.placed.order_number
            ));
        }
        Ok(msg)
    }
}

pub fn routing_key(order_type: OrderType, priority: i32) -> String {
    format!("kitchen.{order_type}.{priority}")
}

/// Published to `notifications_fanout` on every status change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusUpdate {
    pub order_number: String,
    pub old_status: OrderStatus,
    pub new_status: OrderStatus,
    pub changed_by: String,
    pub timestamp: DateTime<Utc>,
    pub estimated_completion: Option<DateTime<Utc>>,
    /// Grows by one with every change of the order: lets a reader drop stale or
    /// duplicate updates.
    #[serde(default)]
    pub version: i64,
    #[serde(default)]
    pub order_type: Option<OrderType>,
}

impl StatusUpdate {
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("invalid status update: {e}"))
    }

    /// The console line the notification subscriber prints.
    pub fn human_line(&self) -> String {
        format!(
            "Notification for order {}: Status changed from '{}' to '{}' by {}.",
            self.order_number, self.old_status, self.new_status, self.changed_by
        )
    }

    /// A stable id for this transition: the same change always has the same id,
    /// so a duplicate publish is recognisable downstream.
    pub fn event_id(&self) -> String {
        format!("{}:{}:{}", self.order_number, self.new_status, self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn order_message_round_trips_in_spec_shape() {
        let v = json!({
            "order_number": "ORD_20241216_001", "customer_name": "John Doe",
            "order_type": "delivery", "table_number": null,
            "delivery_address": "123 Main St, City",
            "items": [{"name": "Margherita Pizza", "quantity": 7, "price": 15.99}],
            "total_amount": 111.93, "priority": 10
        });
        let msg = OrderMessage::decode(v.to_string().as_bytes()).unwrap();
        assert_eq!(msg.placed.total_amount, Cents(11193));
        assert_eq!(msg.routing_key(), "kitchen.delivery.10");
        assert_eq!(serde_json::to_value(&msg).unwrap(), v);
    }

    #[test]
    fn kitchen_details_travel_in_the_order_message() {
        let v = json!({
            "order_number": "ORD_20241216_002", "customer_name": "Ann",
            "order_type": "takeout", "table_number": null, "delivery_address": null,
            "items": [{"name": "Burger", "quantity": 1, "price": 12.5, "notes": "well done",
                       "modifiers": ["no onions"], "allergens": ["gluten", "nuts"]}],
            "total_amount": 12.5, "priority": 1, "notes": "at the bar"
        });
        let msg = OrderMessage::decode(v.to_string().as_bytes()).unwrap();
        assert_eq!(msg.notes.as_deref(), Some("at the bar"));
        assert_eq!(msg.placed.items[0].modifiers, ["no onions"]);
        assert_eq!(serde_json::to_value(&msg).unwrap(), v);
    }

    #[test]
    fn order_message_refuses_unknown_fields() {
        let mut v = json!({
            "order_number": "ORD_20241216_003", "customer_name": "Bo",
            "order_type": "takeout", "table_number": null, "delivery_address": null,
            "items": [{"name": "Soup", "quantity": 1, "price": 5.0}],
            "total_amount": 5.0, "priority": 1, "notes": "hot"
        });
        assert!(OrderMessage::decode(v.to_string().as_bytes()).is_ok());
        v["coupon"] = json!("FREE");
        let e = OrderMessage::decode(v.to_string().as_bytes()).unwrap_err();
        assert!(e.contains("unknown field `coupon`"), "{e}");
    }

    #[test]
    fn decoders_reject_garbage() {
        assert!(OrderMessage::decode(b"not json").is_err());
        assert!(OrderMessage::decode(b"{}").is_err());
        assert!(OrderMessage::decode(br#"{"order_number":"x"}"#).is_err());
        assert!(StatusUpdate::decode(b"[]").is_err());
    }

    #[test]
    fn status_line_matches_spec() {
        let u = StatusUpdate {
            order_number: "ORD_20241216_001".into(),
            old_status: OrderStatus::Received,
            new_status: OrderStatus::Cooking,
            changed_by: "chef_mario".into(),
            timestamp: Utc::now(),
            estimated_completion: None,
            version: 2,
            order_type: None,
        };
        assert_eq!(
            u.human_line(),
            "Notification for order ORD_20241216_001: Status changed from 'received' to 'cooking' by chef_mario."
        );
        assert_eq!(u.event_id(), "ORD_20241216_001:cooking:2");
    }
}
