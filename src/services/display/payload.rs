//! The MQTT contract (docs/mqtt.md): topic names and JSON payloads. Pure
//! functions, no I/O, so the shapes are unit-tested here.

use crate::domain::events::{OrderMessage, StatusUpdate};
use crate::domain::stations::{PartState, StationUpdate};
use crate::domain::{Cents, Item, OrderStatus, OrderType};
use crate::process::config::MqttConfig;
use crate::storage::{OrderView, WorkerRow};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// Topic names under `P = {topic_prefix}/{site}`.
#[derive(Debug, Clone)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    pub fn new(cfg: &MqttConfig) -> Self {
        let parts: Vec<&str> = [cfg.topic_prefix.as_str(), cfg.site.as_str()]
            .into_iter()
            .map(|s| s.trim_matches('/'))
            .filter(|s| !s.is_empty())
            .collect();
        Topics {
            prefix: parts.join("/"),
        }
    }

    pub fn order(&self, order_number: &str) -> String {
        format!("{}/orders/{order_number}", self.prefix)
    }
    /// A station's copy of an order it has work on (issue 24).
    pub fn station_order(&self, station: &str, order_number: &str) -> String {
        format!("{}/stations/{station}/orders/{order_number}", self.prefix)
    }
    /// The filter matching every order topic (used to read back what the broker retains).
    pub fn all_orders(&self) -> String {
        format!("{}/orders/+", self.prefix)
    }
    /// The order number in an order topic, or None for any other topic.
    pub fn order_number_of<'a>(&self, topic: &'a str) -> Option<&'a str> {
        topic
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix("/orders/")
            .filter(|n| !n.is_empty() && !n.contains('/'))
    }
    pub fn events(&self) -> String {
        format!("{}/events", self.prefix)
    }
    pub fn worker(&self, name: &str) -> String {
        format!("{}/workers/{name}", self.prefix)
    }
    pub fn bridge_status(&self) -> String {
        format!("{}/bridge/status", self.prefix)
    }
}

/// UTC, ISO 8601 with milliseconds: `2026-11-25T10:30:00.000Z`.
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn opt_timestamp(t: Option<DateTime<Utc>>) -> Option<String> {
    t.map(timestamp)
}

/// `P/orders/{n}`: the order's current state.
#[derive(Debug, Serialize)]
struct OrderState<'a> {
    order_number: &'a str,
    order_type: OrderType,
    customer_name: &'a str,
    table_number: Option<i64>,
    delivery_address: Option<&'a str>,
    items: &'a [Item],
    total_amount: Cents,
    priority: i32,
    status: OrderStatus,
    processed_by: Option<&'a str>,
    created_at: String,
    status_changed_at: String,
    estimated_completion: Option<String>,
    version: i64,
    server_time: String,
    /// Issue 13 (added field): only when the order has a note.
    #[serde(skip_serializing_if = "Option::is_none")]
    notes: Option<&'a str>,
}

/// `P/orders/{n}` (and each station's copy): the order's current state. With
/// stations, its `items` (each with its parts), `rush` and `expo` are exactly
/// what `GET /orders/{n}` shows (`http::whole_order`, one definition for both);
/// without, the seed's payload. `confirm` is `[expo] confirm`.
pub fn order_state(o: &OrderView, confirm: bool, now: DateTime<Utc>) -> Vec<u8> {
    let s = OrderState {
        order_number: &o.placed.order_number,
        order_type: o.placed.order_type,
        customer_name: &o.placed.customer_name,
        table_number: o.placed.table_number,
        delivery_address: o.placed.delivery_address.as_deref(),
        items: &o.placed.items,
        total_amount: o.placed.total_amount,
        priority: o.placed.priority,
        status: o.status,
        processed_by: o.processed_by.as_deref(),
        created_at: timestamp(o.created_at),
        status_changed_at: timestamp(o.updated_at),
        estimated_completion: opt_timestamp(o.estimated_completion),
        version: o.version,
        server_time: timestamp(now),
        notes: o.notes.as_deref(),
    };
    if o.parts.is_empty() {
        // Serialising plain data cannot fail.
        return serde_json::to_vec(&s).unwrap_or_default();
    }
    let mut v = serde_json::to_value(&s).unwrap_or_default();
    let whole = crate::http::whole_order(o, confirm);
    for key in ["items", "rush", "expo"] {
        v[key] = whole[key].clone();
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

/// Issue 24: every station the order has a part at, and whether the order is
/// on that station's screen: open for the kitchen (`received`/`cooking`) with a
/// part there that is not done. In the order the parts come (item, then station).
pub fn stations_of(o: &OrderView) -> Vec<(&str, bool)> {
    let kitchen = matches!(o.status, OrderStatus::Received | OrderStatus::Cooking);
    let mut out: Vec<(&str, bool)> = Vec::new();
    for p in &o.parts {
        let open = kitchen && p.state != PartState::Done;
        match out.iter_mut().find(|(s, _)| *s == p.station) {
            Some(entry) => entry.1 |= open,
            None => out.push((&p.station, open)),
        }
    }
    out
}

/// The part of a retained order payload the bridge reads back from the broker.
#[derive(Debug, Deserialize)]
pub struct RetainedOrder {
    pub status: OrderStatus,
    #[serde(default)]
    pub version: i64,
}

impl RetainedOrder {
    pub fn parse(payload: &[u8]) -> Option<RetainedOrder> {
        serde_json::from_slice(payload).ok()
    }
}

/// `P/events`: one change, built from the RabbitMQ message that announced it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub kind: &'static str,
    pub order_number: String,
    pub order_type: Option<OrderType>,
    pub old_status: Option<OrderStatus>,
    pub new_status: OrderStatus,
    pub changed_by: String,
    pub timestamp: String,
    pub version: i64,
    /// Issue 24, `kind` `station_update` only: which part changed and how
    /// (`event` as in the Station Update: item_started, item_done, item_undone, rush).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub station_update: Option<StationUpdate>,
}

/// Who creates orders, as `changed_by` of an `order_created` event.
pub const CREATED_BY: &str = "order-service";

impl Event {
    /// A new order. The order message carries no time or version: the time is
    /// the order's `created_at` (from the database when known) and a new order
    /// is always version 1.
    pub fn created(msg: &OrderMessage, view: Option<&OrderView>, now: DateTime<Utc>) -> Event {
        Event {
            kind: "order_created",
            order_number: msg.placed.order_number.clone(),
            order_type: Some(msg.placed.order_type),
            old_status: None,
            new_status: OrderStatus::Received,
            changed_by: CREATED_BY.to_string(),
            timestamp: timestamp(view.map(|v| v.created_at).unwrap_or(now)),
            version: 1,
            station_update: None,
        }
    }

    /// A part's change or a rush (issue 24): the Station Update as it came.
    pub fn station_changed(u: &StationUpdate, view: Option<&OrderView>) -> Event {
        Event {
            kind: "station_update",
            order_number: u.order_number.clone(),
            order_type: view.map(|v| v.placed.order_type),
            old_status: None,
            new_status: u.order_status,
            changed_by: u.changed_by.clone(),
            timestamp: timestamp(u.timestamp),
            version: u.version,
            station_update: Some(u.clone()),
        }
    }

    pub fn status_changed(u: &StatusUpdate, view: Option<&OrderView>) -> Event {
        Event {
            kind: "status_changed",
            order_number: u.order_number.clone(),
            order_type: u.order_type.or(view.map(|v| v.placed.order_type)),
            old_status: Some(u.old_status),
            new_status: u.new_status,
            changed_by: u.changed_by.clone(),
            timestamp: timestamp(u.timestamp),
            version: u.version,
            station_update: None,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// `P/workers/{name}`: worker presence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Presence {
    pub worker_name: String,
    pub status: &'static str,
    pub orders_processed: i64,
    pub last_seen: String,
}

impl Presence {
    pub fn of(w: &WorkerRow, now: DateTime<Utc>) -> Presence {
        Presence {
            worker_name: w.name.clone(),
            status: if w.is_online(now) {
                "online"
            } else {
                "offline"
            },
            orders_processed: w.orders_processed,
            last_seen: timestamp(w.last_seen),
        }
    }

    /// What "changed" means for the periodic refresh: not every heartbeat
    /// (last_seen moves all the time), only status and count.
    pub fn key(&self) -> (&'static str, i64) {
        (self.status, self.orders_processed)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::events::PlacedOrder;
    use chrono::TimeZone;
    use serde_json::{json, Value};

    fn at(s: u32, ms: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, 10, 30, s).unwrap()
            + chrono::Duration::milliseconds(ms as i64)
    }

    fn view() -> OrderView {
        OrderView {
            placed: PlacedOrder {
                order_number: "ORD_20261125_001".into(),
                customer_name: "Jane Smith".into(),
                order_type: OrderType::DineIn,
                table_number: Some(12),
                delivery_address: None,
                items: vec![Item::new("Steak", 1, Cents(2999))],
                total_amount: Cents(2999),
                priority: 1,
            },
            status: OrderStatus::Cooking,
            processed_by: Some("chef_mario".into()),
            created_at: at(0, 0),
            updated_at: at(20, 5),
            estimated_completion: Some(at(30, 0)),
            completed_at: None,
            version: 2,
            notes: None,
            rush: false,
            stations_done_at: None,
            parts: Vec::new(),
        }
    }

    #[test]
    fn kitchen_details_are_added_fields_of_the_order_state() {
        let plain: serde_json::Value =
            serde_json::from_slice(&order_state(&view(), false, at(21, 0))).unwrap();
        assert!(plain.get("notes").is_none() && plain["items"][0].get("allergens").is_none());
        let mut v = view();
        v.notes = Some("at the bar".into());
        v.placed.items[0].modifiers = vec!["no onions".into()];
        v.placed.items[0].allergens = vec![crate::domain::kitchen_notes::Allergen::Nuts];
        v.placed.items[0].notes = Some("rare".into());
        let p: serde_json::Value =
            serde_json::from_slice(&order_state(&v, false, at(21, 0))).unwrap();
        assert_eq!(p["notes"], "at the bar");
        assert_eq!(
            p["items"][0],
            json!({"name": "Steak", "quantity": 1, "price": 29.99, "notes": "rare",
                   "modifiers": ["no onions"], "allergens": ["nuts"]})
        );
    }

    #[test]
    fn with_stations_items_carry_their_parts_and_each_station_its_copy() {
        use crate::domain::stations::{Part, PartState};
        let mut v = view();
        v.placed.items.push(Item::new("Fries", 1, Cents(350)));
        let mut grill = Part::waiting(0, "grill");
        grill.state = PartState::Done;
        grill.bumped_by = Some("anna".into());
        grill.bumped_at = Some(at(40, 0));
        v.parts = vec![grill, Part::waiting(0, "fry"), Part::waiting(1, "fry")];
        v.rush = true;
        let p: Value = serde_json::from_slice(&order_state(&v, true, at(41, 0))).unwrap();
        assert_eq!(p["rush"], true);
        assert_eq!(
            p["expo"],
            json!({"confirm": true, "waiting": false, "stations_done_at": null})
        );
        let states: Vec<(&str, &str)> = p["items"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|it| it["stations"].as_array().unwrap().iter())
            .map(|p| (p["station"].as_str().unwrap(), p["state"].as_str().unwrap()))
            .collect();
        assert_eq!(
            states,
            [("grill", "done"), ("fry", "waiting"), ("fry", "waiting")]
        );
        assert_eq!(p["items"][0]["stations"][0]["bumped_by"], "anna");
        // The grill is done with it, fry is not: only fry's screen shows it.
        assert_eq!(stations_of(&v), [("grill", false), ("fry", true)]);
        // Every part done and confirm on: the order waits for the expo.
        for p in &mut v.parts {
            p.state = PartState::Done;
        }
        v.stations_done_at = Some(at(50, 0));
        let p: Value = serde_json::from_slice(&order_state(&v, true, at(51, 0))).unwrap();
        assert_eq!(p["expo"]["waiting"], true);
        assert!(p["expo"]["stations_done_at"].is_string());
        assert_eq!(stations_of(&v), [("grill", false), ("fry", false)]);
        // Ready (or closed): on no station's screen, whatever its parts say.
        v.parts[2].state = PartState::Waiting;
        v.status = OrderStatus::Ready;
        assert_eq!(stations_of(&v), [("grill", false), ("fry", false)]);
        // Without stations: the seed's payload, none of these fields.
        let plain: Value = serde_json::from_slice(&order_state(&view(), true, at(41, 0))).unwrap();
        assert!(plain.get("rush").is_none() && plain.get("expo").is_none());
        assert!(plain["items"][0].get("stations").is_none());
        assert!(stations_of(&view()).is_empty());
        let t = Topics::new(&MqttConfig::default());
        assert_eq!(
            t.station_order("grill", "ORD_1"),
            "restaurant/main/stations/grill/orders/ORD_1"
        );
    }

    #[test]
    fn topics_follow_prefix_and_site() {
        let mut cfg = MqttConfig::default();
        let t = Topics::new(&cfg);
        assert_eq!(t.order("ORD_1"), "restaurant/main/orders/ORD_1");
        assert_eq!(t.events(), "restaurant/main/events");
        assert_eq!(t.worker("chef"), "restaurant/main/workers/chef");
        assert_eq!(t.bridge_status(), "restaurant/main/bridge/status");
        assert_eq!(t.all_orders(), "restaurant/main/orders/+");
        assert_eq!(
            t.order_number_of("restaurant/main/orders/ORD_1"),
            Some("ORD_1")
        );
        assert_eq!(t.order_number_of("restaurant/main/events"), None);
        assert_eq!(t.order_number_of("restaurant/main/orders/a/b"), None);
        cfg.topic_prefix = "/kds/".into();
        cfg.site = "east".into();
        assert_eq!(Topics::new(&cfg).events(), "kds/east/events");
    }

    #[test]
    fn order_state_matches_the_contract() {
        let v: Value = serde_json::from_slice(&order_state(&view(), false, at(20, 15))).unwrap();
        assert_eq!(
            v,
            json!({
                "order_number": "ORD_20261125_001", "order_type": "dine_in",
                "customer_name": "Jane Smith", "table_number": 12, "delivery_address": null,
                "items": [{"name": "Steak", "quantity": 1, "price": 29.99}],
                "total_amount": 29.99, "priority": 1, "status": "cooking",
                "processed_by": "chef_mario", "created_at": "2026-11-25T10:30:00.000Z",
                "status_changed_at": "2026-11-25T10:30:20.005Z",
                "estimated_completion": "2026-11-25T10:30:30.000Z", "version": 2,
                "server_time": "2026-11-25T10:30:20.015Z"
            })
        );
        let back = RetainedOrder::parse(&order_state(&view(), false, at(0, 0))).unwrap();
        assert_eq!((back.status, back.version), (OrderStatus::Cooking, 2));
        assert!(RetainedOrder::parse(b"").is_none());
    }

    #[test]
    fn events_match_the_contract() {
        let msg = OrderMessage {
            placed: view().placed,
            created_at: None,
            notes: None,
        };
        let e = serde_json::to_value(Event::created(&msg, Some(&view()), at(59, 0))).unwrap();
        assert_eq!(
            e,
            json!({"kind": "order_created", "order_number": "ORD_20261125_001",
                   "order_type": "dine_in", "old_status": null, "new_status": "received",
                   "changed_by": "order-service", "timestamp": "2026-11-25T10:30:00.000Z",
                   "version": 1})
        );
        let u = StatusUpdate {
            order_number: "ORD_20261125_001".into(),
            old_status: OrderStatus::Received,
            new_status: OrderStatus::Cooking,
            changed_by: "chef_mario".into(),
            timestamp: at(20, 5),
            estimated_completion: None,
            version: 2,
            order_type: None,
        };
        let e = serde_json::to_value(Event::status_changed(&u, Some(&view()))).unwrap();
        assert_eq!(
            e,
            json!({"kind": "status_changed", "order_number": "ORD_20261125_001",
                   "order_type": "dine_in", "old_status": "received", "new_status": "cooking",
                   "changed_by": "chef_mario", "timestamp": "2026-11-25T10:30:20.005Z",
                   "version": 2})
        );
    }

    #[test]
    fn presence_changes_only_with_status_or_count() {
        let now = at(30, 0);
        let mut w = WorkerRow {
            name: "chef_mario".into(),
            order_types: "dine_in".into(),
            status: "online".into(),
            orders_processed: 5,
            last_seen: at(29, 0),
            heartbeat_interval_secs: 30,
        };
        let p = Presence::of(&w, now);
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            json!({"worker_name": "chef_mario", "status": "online", "orders_processed": 5,
                   "last_seen": "2026-11-25T10:30:29.000Z"})
        );
        w.last_seen = at(29, 500);
        assert_eq!(Presence::of(&w, now).key(), p.key());
        w.status = "offline".into();
        assert_eq!(Presence::of(&w, now).key(), ("offline", 5));
    }
}
