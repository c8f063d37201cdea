//! Stations and the expo (issue 24, docs/stations.md): which stations make an
//! item (routing, at intake), and every change a cook or the expo makes to an
//! order's parts (one item at one station), decided here the way
//! `transition::decide` decides status changes: the stores persist exactly
//! what [`decide`] returns, guarded by a compare-and-set on the order's version.

use super::events::{StatusUpdate, STATIONS_EXCHANGE};
use super::order::{Item, ValidOrder};
use super::status::OrderStatus;
use super::transition::{self, Change, OrderState};
use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The name no station may take: the expo's, in routes and reports.
pub const EXPO: &str = "expo";

/// One configured station.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Station {
    pub name: String,
    pub yellow_after_seconds: u64,
    pub red_after_seconds: u64,
}

/// A routing rule: items whose category and/or name match go to `stations`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub category: Option<String>,
    pub item: Option<String>,
    pub stations: Vec<String>,
}

/// The kitchen's stations and how items reach them. Built from `[stations]`
/// by `process::config`; `check` is what `validate` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    pub stations: Vec<Station>,
    pub rules: Vec<Rule>,
    pub default: String,
    pub undo: Duration,
    /// `[expo] confirm`: the order becomes ready only when the expo confirms it.
    pub confirm: bool,
}

impl Routing {
    /// Every broken rule of the configuration, as one line each.
    pub fn check(&self) -> Vec<String> {
        let mut errors = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for s in &self.stations {
            if !super::is_plain_name(&s.name) {
                errors.push(format!(
                    "station name '{}' must be 1-64 ASCII letters, digits, '_', '-' or '.'",
                    s.name
                ));
            }
            if s.name.eq_ignore_ascii_case(EXPO) {
                errors.push(format!(
                    "station name '{}' is reserved for the expo",
                    s.name
                ));
            }
            if !seen.insert(s.name.as_str()) {
                errors.push(format!("station '{}' is configured twice", s.name));
            }
            if s.yellow_after_seconds > s.red_after_seconds {
                errors.push(format!(
                    "station '{}': yellow_after_seconds must not exceed red_after_seconds",
                    s.name
                ));
            }
        }
        if !self.is_station(&self.default) {
            errors.push(format!(
                "stations.default '{}' is not a configured station",
                self.default
            ));
        }
        for (i, r) in self.rules.iter().enumerate() {
            if r.category.is_none() && r.item.is_none() {
                errors.push(format!(
                    "stations.rule[{i}] needs a category or an item pattern"
                ));
            }
            if r.stations.is_empty() {
                errors.push(format!("stations.rule[{i}] names no station"));
            }
            for s in &r.stations {
                if !self.is_station(s) {
                    errors.push(format!("stations.rule[{i}] names unknown station '{s}'"));
                }
            }
        }
        if !(1..=300).contains(&self.undo.as_secs()) {
            errors.push("stations.undo_seconds must be between 1 and 300".into());
        }
        errors
    }

    pub fn is_station(&self, name: &str) -> bool {
        self.stations.iter().any(|s| s.name == name)
    }

    /// The stations that make `item`: those of the first matching rule, else the default.
    pub fn route(&self, item: &Item) -> Vec<String> {
        let hit = self.rules.iter().find(|r| {
            let cat = match (&r.category, &item.category) {
                (None, _) => true,
                (Some(p), Some(c)) => matches(p, c),
                (Some(_), None) => false,
            };
            let name = r.item.as_ref().is_none_or(|p| matches(p, &item.name));
            cat && name
        });
        let mut out: Vec<String> = Vec::new();
        for s in hit.map_or(std::slice::from_ref(&self.default), |r| &r.stations) {
            if !out.contains(s) {
                out.push(s.clone());
            }
        }
        out
    }

    /// The order with each item's stations filled in.
    pub fn route_order(&self, mut order: ValidOrder) -> ValidOrder {
        for item in &mut order.items {
            item.stations = self.route(item);
        }
        order
    }
}

/// A case-insensitive pattern where `*` is any run of characters (none too).
pub fn matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let t: Vec<char> = text.to_lowercase().chars().collect();
    // Greedy with backtracking to the last star: linear enough for 50-char names.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Where one part (an item at a station) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartState {
    Waiting,
    Cooking,
    Done,
}

names!(PartState, |s| format!("unknown part state '{s}'"), {
    Waiting => "waiting",
    Cooking => "cooking",
    Done => "done",
});

/// One item of an order at one station.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Part {
    pub item_index: i32,
    pub station: String,
    pub state: PartState,
    pub started_at: Option<DateTime<Utc>>,
    pub started_by: Option<String>,
    pub bumped_at: Option<DateTime<Utc>>,
    pub bumped_by: Option<String>,
}

impl Part {
    pub fn waiting(item_index: i32, station: &str) -> Part {
        Part {
            item_index,
            station: station.to_string(),
            state: PartState::Waiting,
            started_at: None,
            started_by: None,
            bumped_at: None,
            bumped_by: None,
        }
    }
}

/// What a station change reads: the order's state, its station fields, its
/// items (name and quantity, for the messages) and all its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub state: OrderState,
    pub rush: bool,
    pub stations_done_at: Option<DateTime<Utc>>,
    pub items: Vec<(String, i64)>,
    pub parts: Vec<Part>,
}

impl Ticket {
    /// Every part done (and there is at least one).
    pub fn all_done(&self) -> bool {
        !self.parts.is_empty() && self.parts.iter().all(|p| p.state == PartState::Done)
    }

    /// Done at every station, waiting for the expo's confirm.
    pub fn waiting_for_expo(&self) -> bool {
        self.state.status == OrderStatus::Cooking && self.all_done()
    }
}

/// What a cook or the expo asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Start {
        station: String,
        item: i32,
    },
    Bump {
        station: String,
        item: i32,
    },
    Undo {
        station: String,
        item: i32,
    },
    /// Every open part of the order at the station.
    BumpStation {
        station: String,
    },
    Confirm,
    Rush(bool),
}

/// Why an action was refused; nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("item {item} of the order is not made at station '{station}'")]
    ItemNotAtStation { station: String, item: i32 },
    #[error("no item of the order is made at station '{0}'")]
    NothingAtStation(String),
    #[error("the order is '{0}'")]
    OrderClosed(OrderStatus),
    #[error("{0}")]
    UndoTooLate(String),
    #[error("the order is not waiting for the expo")]
    ExpoNotWaiting,
}

/// The event of a Station Update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StationEvent {
    ItemStarted,
    ItemDone,
    ItemUndone,
    Rush,
}

names!(StationEvent, |s| format!("unknown station event '{s}'"), {
    ItemStarted => "item_started",
    ItemDone => "item_done",
    ItemUndone => "item_undone",
    Rush => "rush",
});

/// Published to `stations_topic` on every part or rush change (docs/stations.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StationUpdate {
    pub order_number: String,
    pub event: StationEvent,
    pub station: Option<String>,
    pub item_index: Option<i32>,
    pub item_name: Option<String>,
    pub quantity: Option<i64>,
    pub old_state: Option<PartState>,
    pub new_state: Option<PartState>,
    pub changed_by: String,
    pub timestamp: DateTime<Utc>,
    pub version: i64,
    pub order_status: OrderStatus,
    pub rush: bool,
}

impl StationUpdate {
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("invalid station update: {e}"))
    }

    pub fn routing_key(&self) -> String {
        match &self.station {
            Some(s) => format!("station.{s}"),
            None => "order.rush".to_string(),
        }
    }

    pub fn event_id(&self) -> String {
        format!("{}:{}:{}", self.order_number, self.event, self.version)
    }

    /// The notification subscriber's line.
    pub fn human_line(&self) -> String {
        match (self.event, &self.item_name, &self.station) {
            (StationEvent::Rush, _, _) => format!(
                "Notification for order {}: rush {} (by {}).",
                self.order_number,
                if self.rush { "on" } else { "off" },
                self.changed_by
            ),
            (_, Some(item), Some(station)) => format!(
                "Notification for order {}: item '{}' at {} is {} (by {}).",
                self.order_number,
                item,
                station,
                self.new_state.map_or("unknown", PartState::as_str),
                self.changed_by
            ),
            _ => format!(
                "Notification for order {}: {} (by {}).",
                self.order_number, self.event, self.changed_by
            ),
        }
    }
}

/// One message a decision publishes, in the order it must leave.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    Station(StationUpdate),
    Status(StatusUpdate),
}

impl Outgoing {
    /// `(exchange, routing key, message id, payload)` for the outbox.
    pub fn outbox_row(&self) -> Result<(&'static str, String, String, String), String> {
        let (exchange, key, id, json) = match self {
            Outgoing::Station(u) => (
                STATIONS_EXCHANGE,
                u.routing_key(),
                u.event_id(),
                serde_json::to_string(u),
            ),
            Outgoing::Status(u) => (
                super::events::NOTIFICATIONS_EXCHANGE,
                String::new(),
                u.event_id(),
                serde_json::to_string(u),
            ),
        };
        Ok((exchange, key, id, json.map_err(|e| e.to_string())?))
    }

    pub fn version(&self) -> i64 {
        match self {
            Outgoing::Station(u) => u.version,
            Outgoing::Status(u) => u.version,
        }
    }
}

/// What [`decide`] decided: the ticket afterwards, the parts that changed and
/// the messages announcing every change, versions `cur.version + 1 ..`.
/// No messages: nothing to change (a double tap), nothing to write.
#[derive(Debug, Clone, PartialEq)]
pub struct TicketDecision {
    pub ticket: Ticket,
    pub changed_parts: Vec<Part>,
    pub messages: Vec<Outgoing>,
}

impl TicketDecision {
    pub fn changed(&self) -> bool {
        !self.messages.is_empty()
    }

    /// The Status Updates among the messages (for the status log).
    pub fn status_updates(&self) -> impl Iterator<Item = &StatusUpdate> {
        self.messages.iter().filter_map(|m| match m {
            Outgoing::Status(u) => Some(u),
            Outgoing::Station(_) => None,
        })
    }

    /// The Station Updates among the messages (for the history).
    pub fn station_updates(&self) -> impl Iterator<Item = &StationUpdate> {
        self.messages.iter().filter_map(|m| match m {
            Outgoing::Station(u) => Some(u),
            Outgoing::Status(_) => None,
        })
    }

    /// The change finishes a cooking: the status log's `ready`.
    pub fn finishes_cooking(&self) -> bool {
        self.status_updates()
            .any(|u| u.old_status == OrderStatus::Cooking && u.new_status == OrderStatus::Ready)
    }
}

/// Decides `action` by `by` at `at` on ticket `cur`.
pub fn decide(
    cur: &Ticket,
    action: &Action,
    by: &str,
    at: DateTime<Utc>,
    routing: &Routing,
) -> Result<TicketDecision, Refusal> {
    let at = at.trunc_subsecs(6);
    let mut b = Builder {
        t: cur.clone(),
        changed: Vec::new(),
        messages: Vec::new(),
        by,
        at,
    };
    let status = cur.state.status;
    let open_for_cooks = matches!(status, OrderStatus::Received | OrderStatus::Cooking);
    match action {
        Action::Start { station, item } => {
            let i = b.part(station, *item)?;
            if !open_for_cooks {
                return Err(Refusal::OrderClosed(status));
            }
            if b.t.parts[i].state == PartState::Waiting {
                b.set(i, PartState::Cooking);
            }
        }
        Action::Bump { station, item } => {
            let i = b.part(station, *item)?;
            if !open_for_cooks {
                return Err(Refusal::OrderClosed(status));
            }
            if b.t.parts[i].state != PartState::Done {
                b.set(i, PartState::Done);
            }
        }
        Action::BumpStation { station } => {
            let at_station: Vec<usize> = (0..b.t.parts.len())
                .filter(|&i| b.t.parts[i].station == *station)
                .collect();
            if at_station.is_empty() {
                return Err(Refusal::NothingAtStation(station.clone()));
            }
            if !open_for_cooks {
                return Err(Refusal::OrderClosed(status));
            }
            for i in at_station {
                if b.t.parts[i].state != PartState::Done {
                    b.set(i, PartState::Done);
                }
            }
        }
        Action::Undo { station, item } => {
            let i = b.part(station, *item)?;
            // A ready order can be taken back only when the last bump made it
            // ready (no expo confirm in between).
            let reopen = status == OrderStatus::Ready && !routing.confirm;
            if !open_for_cooks && !reopen {
                return Err(Refusal::OrderClosed(status));
            }
            let p = &b.t.parts[i];
            let Some(bumped_at) = p.bumped_at.filter(|_| p.state == PartState::Done) else {
                return Err(Refusal::UndoTooLate("the item is not done".into()));
            };
            let limit = chrono::Duration::from_std(routing.undo).unwrap_or(chrono::Duration::MAX);
            if at - bumped_at > limit {
                return Err(Refusal::UndoTooLate(format!(
                    "a bump can be undone for {} s only",
                    routing.undo.as_secs()
                )));
            }
            let back = if p.started_at.is_some() {
                PartState::Cooking
            } else {
                PartState::Waiting
            };
            b.set(i, back);
            if reopen {
                b.status(transition::reopen(&b.t.state, by, at));
            }
        }
        Action::Confirm => {
            if !(routing.confirm && cur.waiting_for_expo()) {
                return Err(Refusal::ExpoNotWaiting);
            }
            b.status(transition::decide(
                &b.t.state,
                &change(OrderStatus::Ready, by, at),
            ));
        }
        Action::Rush(on) => {
            if !status.is_open() {
                return Err(Refusal::OrderClosed(status));
            }
            if cur.rush != *on {
                b.t.rush = *on;
                b.t.state.version += 1;
                b.t.state.updated_at = at;
                b.messages.push(Outgoing::Station(StationUpdate {
                    order_number: cur.state.order_number.clone(),
                    event: StationEvent::Rush,
                    station: None,
                    item_index: None,
                    item_name: None,
                    quantity: None,
                    old_state: None,
                    new_state: None,
                    changed_by: by.to_string(),
                    timestamp: at,
                    version: b.t.state.version,
                    order_status: status,
                    rush: *on,
                }));
            }
            return Ok(b.finish());
        }
    }
    if matches!(action, Action::Confirm) {
        return Ok(b.finish());
    }
    // What the parts' changes do to the order.
    if b.changed.is_empty() {
        return Ok(b.finish());
    }
    let touched =
        b.t.parts
            .iter()
            .any(|p| p.state != PartState::Waiting || p.bumped_at.is_some());
    if b.t.state.status == OrderStatus::Received && touched {
        b.status(transition::decide(
            &b.t.state,
            &change(OrderStatus::Cooking, by, at),
        ));
    }
    if b.t.all_done() {
        if b.t.stations_done_at.is_none() {
            b.t.stations_done_at = Some(at);
        }
        if !routing.confirm && b.t.state.status == OrderStatus::Cooking {
            b.status(transition::decide(
                &b.t.state,
                &change(OrderStatus::Ready, by, at),
            ));
        }
    } else {
        b.t.stations_done_at = None;
    }
    Ok(b.finish())
}

fn change(to: OrderStatus, by: &str, at: DateTime<Utc>) -> Change {
    Change {
        to,
        by: by.to_string(),
        at,
        estimated_completion: None,
    }
}

struct Builder<'a> {
    t: Ticket,
    changed: Vec<usize>,
    messages: Vec<Outgoing>,
    by: &'a str,
    at: DateTime<Utc>,
}

impl Builder<'_> {
    fn part(&self, station: &str, item: i32) -> Result<usize, Refusal> {
        self.t
            .parts
            .iter()
            .position(|p| p.station == station && p.item_index == item)
            .ok_or_else(|| Refusal::ItemNotAtStation {
                station: station.to_string(),
                item,
            })
    }

    /// Moves part `i` to `to`, with its message.
    fn set(&mut self, i: usize, to: PartState) {
        let (by, at) = (self.by.to_string(), self.at);
        let p = &mut self.t.parts[i];
        let old = p.state;
        let event = match to {
            PartState::Cooking if old == PartState::Waiting => StationEvent::ItemStarted,
            PartState::Done => StationEvent::ItemDone,
            _ => StationEvent::ItemUndone,
        };
        p.state = to;
        match event {
            StationEvent::ItemStarted => {
                p.started_at = Some(at);
                p.started_by = Some(by.clone());
            }
            StationEvent::ItemDone => {
                p.bumped_at = Some(at);
                p.bumped_by = Some(by.clone());
            }
            _ => {
                p.bumped_at = None;
                p.bumped_by = None;
            }
        }
        let p = p.clone();
        self.t.state.version += 1;
        self.t.state.updated_at = at;
        let (name, quantity) = self
            .t
            .items
            .get(p.item_index as usize)
            .cloned()
            .unwrap_or_default();
        self.messages.push(Outgoing::Station(StationUpdate {
            order_number: self.t.state.order_number.clone(),
            event,
            station: Some(p.station.clone()),
            item_index: Some(p.item_index),
            item_name: Some(name),
            quantity: Some(quantity),
            old_state: Some(old),
            new_state: Some(to),
            changed_by: by,
            timestamp: at,
            version: self.t.state.version,
            order_status: self.t.state.status,
            rush: self.t.rush,
        }));
        if !self.changed.contains(&i) {
            self.changed.push(i);
        }
    }

    /// Applies a status change the parts caused. The callers only ask for
    /// changes the state machine allows from the state they checked.
    fn status(&mut self, d: Result<transition::Decision, super::status::TransitionError>) {
        if let Ok(d) = d {
            self.t.state = d.state;
            self.messages.push(Outgoing::Status(d.update));
        }
    }

    fn finish(self) -> TicketDecision {
        let changed_parts = self
            .changed
            .iter()
            .map(|&i| self.t.parts[i].clone())
            .collect();
        TicketDecision {
            ticket: self.t,
            changed_parts,
            messages: self.messages,
        }
    }
}

/// The order screens show tickets in: rush first, then oldest first.
pub fn screen_order(
    a: (bool, DateTime<Utc>, &str),
    b: (bool, DateTime<Utc>, &str),
) -> std::cmp::Ordering {
    b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(b.2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::money::Cents;
    use crate::domain::order::OrderType;
    use chrono::TimeZone;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap()
    }

    fn station(name: &str) -> Station {
        Station {
            name: name.into(),
            yellow_after_seconds: 300,
            red_after_seconds: 480,
        }
    }

    fn routing(confirm: bool) -> Routing {
        Routing {
            stations: vec![station("grill"), station("fry"), station("drinks")],
            rules: vec![
                Rule {
                    category: Some("burgers".into()),
                    item: None,
                    stations: vec!["grill".into()],
                },
                Rule {
                    category: None,
                    item: Some("*combo*".into()),
                    stations: vec!["grill".into(), "fry".into()],
                },
                Rule {
                    category: Some("sides".into()),
                    item: Some("*fries".into()),
                    stations: vec!["fry".into()],
                },
                Rule {
                    category: Some("drink*".into()),
                    item: None,
                    stations: vec!["drinks".into()],
                },
            ],
            default: "grill".into(),
            undo: Duration::from_secs(10),
            confirm,
        }
    }

    fn item(name: &str, category: Option<&str>) -> Item {
        Item {
            category: category.map(str::to_string),
            ..Item::new(name, 1, Cents(100))
        }
    }

    #[test]
    fn patterns_are_case_insensitive_globs() {
        assert!(matches("burger*", "Burgers"));
        assert!(matches("*combo*", "Big COMBO meal"));
        assert!(matches("*", ""));
        assert!(matches("a*b*c", "aXXbYYc"));
        assert!(matches("*fries", "Curly Fries"));
        assert!(!matches("*fries", "Fries with dip"));
        assert!(!matches("cola", "cola zero"));
        assert!(matches("Crème*", "CRÈME brûlée"));
        assert!(matches("a**b", "ab"));
    }

    #[test]
    fn routing_first_rule_wins_default_catches_the_rest() {
        let r = routing(false);
        assert_eq!(r.route(&item("Bacon Burger", Some("Burgers"))), ["grill"]);
        assert_eq!(r.route(&item("Burger Combo", Some("burgers"))), ["grill"]);
        assert_eq!(r.route(&item("Kids combo", None)), ["grill", "fry"]);
        assert_eq!(r.route(&item("Curly Fries", Some("sides"))), ["fry"]);
        // Both patterns of a rule must match.
        assert_eq!(r.route(&item("Onion rings", Some("sides"))), ["grill"]);
        assert_eq!(r.route(&item("Cola", Some("Drinks"))), ["drinks"]);
        assert_eq!(r.route(&item("Mystery", None)), ["grill"]);
        assert!(r.check().is_empty(), "{:?}", r.check());
    }

    #[test]
    fn check_names_every_broken_rule() {
        let mut r = routing(false);
        r.rules.push(Rule {
            category: None,
            item: None,
            stations: vec!["bar".into()],
        });
        r.stations.push(station("grill"));
        r.stations.push(station("Expo"));
        r.stations.push(Station {
            yellow_after_seconds: 10,
            red_after_seconds: 9,
            ..station("salad bar")
        });
        r.default = "pastry".into();
        r.undo = Duration::from_secs(0);
        let errors = r.check().join("\n");
        for want in [
            "unknown station 'bar'",
            "needs a category or an item",
            "'grill' is configured twice",
            "reserved for the expo",
            "station name 'salad bar'",
            "yellow_after_seconds must not exceed",
            "stations.default 'pastry'",
            "undo_seconds",
        ] {
            assert!(errors.contains(want), "{want} missing from:\n{errors}");
        }
    }

    fn ticket(parts: &[(i32, &str)]) -> Ticket {
        Ticket {
            state: OrderState::received("ORD_20261207_001".into(), OrderType::Takeout, t(0)),
            rush: false,
            stations_done_at: None,
            items: vec![("Burger".into(), 2), ("Fries".into(), 1)],
            parts: parts.iter().map(|(i, s)| Part::waiting(*i, s)).collect(),
        }
    }

    fn bump(station: &str, item: i32) -> Action {
        Action::Bump {
            station: station.into(),
            item,
        }
    }

    fn bump_station(station: &str) -> Action {
        Action::BumpStation {
            station: station.into(),
        }
    }

    fn kinds(d: &TicketDecision) -> Vec<String> {
        d.messages
            .iter()
            .map(|m| match m {
                Outgoing::Station(u) => format!("{}@{}", u.event, u.version),
                Outgoing::Status(u) => format!("{}@{}", u.new_status, u.version),
            })
            .collect()
    }

    #[test]
    fn first_bump_cooks_last_bump_readies() {
        let r = routing(false);
        let t0 = ticket(&[(0, "grill"), (1, "fry")]);
        let d1 = decide(&t0, &bump("grill", 0), "anna", t(5), &r).unwrap();
        assert_eq!(kinds(&d1), ["item_done@2", "cooking@3"]);
        assert_eq!(d1.ticket.state.status, OrderStatus::Cooking);
        assert_eq!(d1.changed_parts.len(), 1);
        assert_eq!(d1.changed_parts[0].bumped_by.as_deref(), Some("anna"));
        // A double tap changes nothing.
        let again = decide(&d1.ticket, &bump("grill", 0), "anna", t(6), &r).unwrap();
        assert!(!again.changed());
        let d2 = decide(&d1.ticket, &bump("fry", 1), "ben", t(9), &r).unwrap();
        assert_eq!(kinds(&d2), ["item_done@4", "ready@5"]);
        assert!(d2.finishes_cooking());
        assert_eq!(d2.ticket.stations_done_at, Some(t(9)));
        assert_eq!(d2.ticket.state.completed_at, Some(t(9)));
    }

    #[test]
    fn starting_cooks_and_undo_goes_back_to_cooking() {
        let r = routing(false);
        let start = Action::Start {
            station: "grill".into(),
            item: 0,
        };
        let d = decide(
            &ticket(&[(0, "grill"), (1, "fry")]),
            &start,
            "anna",
            t(1),
            &r,
        )
        .unwrap();
        assert_eq!(kinds(&d), ["item_started@2", "cooking@3"]);
        let d = decide(&d.ticket, &bump("grill", 0), "anna", t(2), &r).unwrap();
        let undo = Action::Undo {
            station: "grill".into(),
            item: 0,
        };
        let u = decide(&d.ticket, &undo, "anna", t(5), &r).unwrap();
        assert_eq!(kinds(&u), ["item_undone@5"]);
        assert_eq!(u.ticket.parts[0].state, PartState::Cooking);
        assert_eq!(u.ticket.parts[0].bumped_by, None);
        // Undo only within the window, and only of a done part.
        assert!(matches!(
            decide(&d.ticket, &undo, "anna", t(13), &r),
            Err(Refusal::UndoTooLate(_))
        ));
        assert!(matches!(
            decide(&u.ticket, &undo, "anna", t(6), &r),
            Err(Refusal::UndoTooLate(_))
        ));
    }

    #[test]
    fn undo_of_the_last_bump_reopens_a_ready_order() {
        let r = routing(false);
        let d = decide(
            &ticket(&[(0, "grill")]),
            &bump("grill", 0),
            "anna",
            t(1),
            &r,
        )
        .unwrap();
        assert_eq!(d.ticket.state.status, OrderStatus::Ready);
        let undo = Action::Undo {
            station: "grill".into(),
            item: 0,
        };
        let u = decide(&d.ticket, &undo, "anna", t(3), &r).unwrap();
        assert_eq!(kinds(&u), ["item_undone@5", "cooking@6"]);
        assert_eq!(u.ticket.parts[0].state, PartState::Waiting);
        assert_eq!(u.ticket.stations_done_at, None);
        assert_eq!(u.ticket.state.status, OrderStatus::Cooking);
    }

    #[test]
    fn expo_confirm_holds_the_order_until_it_confirms() {
        let r = routing(true);
        let t0 = ticket(&[(0, "grill"), (1, "fry")]);
        assert_eq!(
            decide(&t0, &Action::Confirm, "expo", t(1), &r),
            Err(Refusal::ExpoNotWaiting)
        );
        let d = decide(&t0, &bump_station("grill"), "anna", t(2), &r).unwrap();
        let d = decide(&d.ticket, &bump("fry", 1), "ben", t(3), &r).unwrap();
        assert_eq!(kinds(&d), ["item_done@4"]);
        assert!(d.ticket.waiting_for_expo());
        assert_eq!(d.ticket.stations_done_at, Some(t(3)));
        let c = decide(&d.ticket, &Action::Confirm, "expo", t(30), &r).unwrap();
        assert_eq!(kinds(&c), ["ready@5"]);
        // After the expo sent it, a cook cannot take a bump back.
        let undo = Action::Undo {
            station: "fry".into(),
            item: 1,
        };
        assert_eq!(
            decide(&c.ticket, &undo, "ben", t(31), &r),
            Err(Refusal::OrderClosed(OrderStatus::Ready))
        );
        // Without confirm there is nothing to confirm.
        assert_eq!(
            decide(&d.ticket, &Action::Confirm, "expo", t(30), &routing(false)),
            Err(Refusal::ExpoNotWaiting)
        );
    }

    #[test]
    fn a_station_bump_takes_every_open_part_there() {
        let r = routing(false);
        let mut t0 = ticket(&[(0, "grill"), (1, "grill"), (1, "fry")]);
        t0.items.push(("Shake".into(), 1));
        let d = decide(&t0, &bump_station("grill"), "anna", t(2), &r).unwrap();
        assert_eq!(kinds(&d), ["item_done@2", "item_done@3", "cooking@4"]);
        assert_eq!(d.ticket.parts[2].state, PartState::Waiting);
        assert_eq!(
            decide(&t0, &bump_station("drinks"), "x", t(2), &r),
            Err(Refusal::NothingAtStation("drinks".into()))
        );
        assert_eq!(
            decide(&t0, &bump("fry", 0), "x", t(2), &r),
            Err(Refusal::ItemNotAtStation {
                station: "fry".into(),
                item: 0
            })
        );
    }

    #[test]
    fn rush_is_a_change_of_its_own_and_closed_orders_refuse() {
        let r = routing(false);
        let t0 = ticket(&[(0, "grill")]);
        let d = decide(&t0, &Action::Rush(true), "expo", t(1), &r).unwrap();
        assert_eq!(kinds(&d), ["rush@2"]);
        assert!(d.ticket.rush);
        assert!(!decide(&d.ticket, &Action::Rush(true), "expo", t(2), &r)
            .unwrap()
            .changed());
        let mut closed = t0.clone();
        closed.state.status = OrderStatus::Cancelled;
        assert_eq!(
            decide(&closed, &bump("grill", 0), "x", t(1), &r),
            Err(Refusal::OrderClosed(OrderStatus::Cancelled))
        );
        assert_eq!(
            decide(&closed, &Action::Rush(true), "x", t(1), &r),
            Err(Refusal::OrderClosed(OrderStatus::Cancelled))
        );
    }

    #[test]
    fn station_updates_have_ids_keys_and_lines() {
        let r = routing(false);
        let d = decide(
            &ticket(&[(0, "grill"), (1, "fry")]),
            &bump("grill", 0),
            "anna",
            t(1),
            &r,
        )
        .unwrap();
        let Outgoing::Station(u) = &d.messages[0] else {
            panic!("first message is the part's")
        };
        assert_eq!(u.routing_key(), "station.grill");
        assert_eq!(u.event_id(), "ORD_20261207_001:item_done:2");
        assert_eq!(
            u.human_line(),
            "Notification for order ORD_20261207_001: item 'Burger' at grill is done (by anna)."
        );
        let back = StationUpdate::decode(&serde_json::to_vec(u).unwrap()).unwrap();
        assert_eq!(&back, u);
        assert!(StationUpdate::decode(b"{}").is_err());
    }

    #[test]
    fn screens_show_rush_first_then_oldest() {
        let mut v = [
            (false, t(1), "B"),
            (true, t(5), "C"),
            (false, t(0), "A"),
            (true, t(2), "D"),
        ];
        v.sort_by(|a, b| screen_order(*a, *b));
        let names: Vec<_> = v.iter().map(|x| x.2).collect();
        assert_eq!(names, ["D", "C", "A", "B"]);
    }
}
