//! Store conformance (issue 12): the same tests, through the `Store` trait,
//! against both backends. Whatever one backend does, the other does alike:
//! the same answers, the same rows, byte for byte the same outbox messages.
use crate::common;

use chrono::{DateTime, TimeZone, Utc};
use common::{Backend, TestEnv};
use restaurant_system::domain::access::Role;
use restaurant_system::domain::events::{StatusUpdate, NOTIFICATIONS_EXCHANGE};
use restaurant_system::domain::order::validate;
use restaurant_system::domain::transition::OrderState;
use restaurant_system::domain::{OrderStatus, OrderType, TransitionError, ValidOrder};
use restaurant_system::storage::{
    Durability, OutboxMessage, Registered, SharedStore, Transition, TransitionOutcome,
    WorkerRegistration,
};
use serde_json::json;
use std::time::Duration;
use OrderStatus::*;

/// A fixed clock (`ms` after 10:00 on 2026-01-15): every row and message of a scenario is the same on both backends.
fn at(ms: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 15, 10, 0, 0).unwrap() + chrono::Duration::milliseconds(ms)
}

fn order(body: serde_json::Value) -> ValidOrder {
    validate(&body).expect("a valid order")
}

fn takeout(customer: &str) -> ValidOrder {
    order(json!({"customer_name": customer, "order_type": "takeout",
                 "items": [{"name": "Fries", "quantity": 1, "price": 4.5}]}))
}

fn change(n: &str, to: OrderStatus, by: &str, now: DateTime<Utc>) -> Transition {
    Transition {
        order_number: n.to_string(),
        to,
        changed_by: by.to_string(),
        request_id: format!("rid-{to}"),
        now,
        estimated_completion: (to == Cooking).then(|| now + chrono::Duration::seconds(90)),
        notes: None,
        durability: Durability::Now,
    }
}

/// Takes every message waiting in the outbox (and deletes those `done`).
async fn outbox(store: &SharedStore, done: &[i64]) -> Vec<OutboxMessage> {
    store
        .claim_outbox(done, 100, Duration::from_secs(30), Utc::now())
        .await
        .expect("claim outbox")
}

async fn applied(store: &SharedStore, t: &Transition) -> (OrderStatus, i64) {
    match store.transition(t).await.expect("transition") {
        TransitionOutcome::Applied { old, order } => (old, order.version),
        other => panic!("-> {} not applied: {other:?}", t.to),
    }
}

// ---------------------------------------------------------------------------

/// A fresh store of backend `b` holding one takeout order (Ann's, made at
/// `at(0)`), and its number. Keep the TestEnv: it owns the database.
async fn with_one_order(b: Backend) -> (TestEnv, SharedStore, String) {
    let env = TestEnv::new(b);
    let store = env.open_store().await;
    let n = store
        .create_order(&takeout("Ann"), "rid-1", at(0), at(0).date_naive())
        .await
        .unwrap()
        .order_number;
    (env, store, n)
}

async fn create_and_read_back(b: Backend) {
    let env = TestEnv::new(b);
    let store = env.open_store().await;
    let created = store
        .create_order(&takeout("Ann"), "rid-1", at(0), at(0).date_naive())
        .await
        .expect("create");
    assert_eq!(created.order_number, "ORD_20260115_001");
    let second = store
        .create_order(&takeout("Bob"), "rid-2", at(1), at(1).date_naive())
        .await
        .unwrap();
    assert_eq!(second.order_number, "ORD_20260115_002");
    let v = store.order(&created.order_number).await.unwrap().unwrap();
    assert_eq!((v.status, v.version, v.created_at), (Received, 1, at(0)));
    assert_eq!(v.placed.customer_name, "Ann");
    assert_eq!(v.placed.items.len(), 1);
    assert_eq!(
        store.status(&created.order_number).await.unwrap(),
        Some(Received)
    );
    assert_eq!(store.order("ORD_20260115_999").await.unwrap(), None);
    assert_eq!(store.status("ORD_20260115_999").await.unwrap(), None);
    let msgs = outbox(&store, &[]).await;
    assert_eq!(msgs.len(), 2, "one message per order");
    assert_eq!(msgs[0].message_id, created.order_number);
    assert_eq!(msgs[0].routing_key, "kitchen.takeout.1");
}

async fn transition_chain_writes_what_the_domain_decided(b: Backend) {
    let (_env, store, n) = with_one_order(b).await;
    let mut done: Vec<i64> = outbox(&store, &[]).await.iter().map(|m| m.id).collect();
    let steps = [
        (Cooking, "chef_a", 1_000),
        (Ready, "chef_b", 2_250),
        (Completed, "order-service", 3_500),
        (Ready, "order-service", 4_750),
        (Completed, "order-service", 6_000),
    ];
    let mut old = Received;
    for (i, (to, by, ms)) in steps.into_iter().enumerate() {
        let version = i as i64 + 2;
        assert_eq!(
            applied(&store, &change(&n, to, by, at(ms))).await,
            (old, version)
        );
        let msgs = outbox(&store, &done).await;
        assert_eq!(msgs.len(), 1, "one message for -> {to}");
        let m = &msgs[0];
        done = vec![m.id];
        assert_eq!(m.exchange, NOTIFICATIONS_EXCHANGE);
        assert_eq!((m.routing_key.as_str(), m.priority), ("", 0));
        assert_eq!(m.message_id, format!("{n}:{to}:{version}"));
        assert_eq!(m.request_id, format!("rid-{to}"));
        // The payload is the same bytes on both backends: built by the domain.
        let eta = "2026-01-15T10:01:31Z";
        let ts = at(ms).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
        assert_eq!(
            m.payload,
            format!(
                r#"{{"order_number":"{n}","old_status":"{old}","new_status":"{to}","changed_by":"{by}","timestamp":"{ts}","estimated_completion":"{eta}","version":{version},"order_type":"takeout"}}"#
            )
        );
        let u = StatusUpdate::decode(m.payload.as_bytes()).unwrap();
        assert_eq!(u.event_id(), m.message_id);
        old = to;
    }
    let v = store.order(&n).await.unwrap().unwrap();
    assert_eq!((v.status, v.version), (Completed, 6));
    assert_eq!(v.processed_by.as_deref(), Some("chef_a"));
    assert_eq!(v.estimated_completion, Some(at(91_000)));
    assert_eq!(v.completed_at, Some(at(2_250)), "when it was cooked");
    assert_eq!(v.updated_at, at(6_000));
    let history: Vec<_> = store
        .history(&n)
        .await
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|h| (h.status, h.changed_by, h.timestamp))
        .collect();
    assert_eq!(history.len(), 6);
    assert_eq!(history[0].0, Received);
    assert_eq!(history[0].2, at(0));
    for (h, (to, by, ms)) in history[1..].iter().zip(steps) {
        assert_eq!(h, &(to, by.to_string(), at(ms)));
    }
    assert_eq!(store.history("ORD_20260115_999").await.unwrap(), None);
}

async fn refusals_write_nothing(b: Backend) {
    let (_env, store, n) = with_one_order(b).await;
    let before = store.outbox_len().await.unwrap();
    match store.transition(&change(&n, Completed, "x", at(1))).await {
        Ok(TransitionOutcome::Rejected(e)) => assert_eq!(
            e,
            TransitionError {
                current: Received,
                requested: Completed
            }
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let unknown = change("ORD_20260115_999", Cooking, "x", at(1));
    assert!(matches!(
        store.transition(&unknown).await,
        Ok(TransitionOutcome::NotFound)
    ));
    let guess = OrderState::received("ORD_20260115_999".into(), OrderType::Takeout, at(0));
    assert!(matches!(
        store.transition_from(&unknown, Some(&guess)).await,
        Ok(TransitionOutcome::NotFound)
    ));
    assert_eq!(store.outbox_len().await.unwrap(), before);
    let v = store.order(&n).await.unwrap().unwrap();
    assert_eq!((v.status, v.version), (Received, 1));
    assert_eq!(store.history(&n).await.unwrap().unwrap().len(), 1);
}

async fn a_wrong_guess_is_read_again(b: Backend) {
    let (_env, store, n) = with_one_order(b).await;
    let stale = OrderState::received(n.clone(), OrderType::Takeout, at(0));
    applied(&store, &change(&n, Cooking, "chef_a", at(1))).await;
    // Believed received; really cooking: -> cooking is refused from the real state.
    match store
        .transition_from(&change(&n, Cooking, "chef_b", at(2)), Some(&stale))
        .await
        .unwrap()
    {
        TransitionOutcome::Rejected(e) => assert_eq!(e.current, Cooking),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Believed received; -> cancelled is legal from the real state too.
    match store
        .transition_from(&change(&n, Cancelled, "order-service", at(3)), Some(&stale))
        .await
        .unwrap()
    {
        TransitionOutcome::Applied { old, order } => {
            assert_eq!((old, order.status, order.version), (Cooking, Cancelled, 3));
            assert_eq!(order.processed_by.as_deref(), Some("chef_a"));
        }
        other => panic!("expected it applied, got {other:?}"),
    }
}

async fn concurrent_transitions_from_one_state_one_wins(b: Backend) {
    let env = TestEnv::new(b);
    let store = env.open_store().await;
    for round in 0..5 {
        let n = store
            .create_order(
                &takeout("Ann"),
                "rid-1",
                at(round),
                (at(round)).date_naive(),
            )
            .await
            .unwrap()
            .order_number;
        let known = OrderState::received(n.clone(), OrderType::Takeout, at(0));
        let (ta, tb) = (
            change(&n, Cooking, "chef_a", at(10)),
            change(&n, Cooking, "chef_b", at(10)),
        );
        // Both believe the order is received, as two kitchens would.
        let (a, b2) = tokio::join!(
            store.transition_from(&ta, Some(&known)),
            store.transition_from(&tb, Some(&known))
        );
        let outcomes = [a.unwrap(), b2.unwrap()];
        let wins = outcomes
            .iter()
            .filter(|o| matches!(o, TransitionOutcome::Applied { .. }))
            .count();
        assert_eq!(wins, 1, "exactly one kitchen starts cooking: {outcomes:?}");
        assert!(outcomes.iter().any(|o| matches!(o,
            TransitionOutcome::Rejected(e) if e.current == Cooking)));
        // Two reads-then-CAS from the same state (two displays bumping).
        let (c1, c2) = (
            change(&n, Cancelled, "order-service", at(20)),
            change(&n, Cancelled, "order-service", at(20)),
        );
        let (a, b2) = tokio::join!(store.transition(&c1), store.transition(&c2));
        let wins = [a.unwrap(), b2.unwrap()]
            .iter()
            .filter(|o| matches!(o, TransitionOutcome::Applied { .. }))
            .count();
        assert_eq!(wins, 1, "exactly one cancel applies");
        let v = store.order(&n).await.unwrap().unwrap();
        assert_eq!((v.status, v.version), (Cancelled, 3));
        assert_eq!(store.history(&n).await.unwrap().unwrap().len(), 3);
    }
    // One order message and two status updates per round, no more.
    assert_eq!(store.outbox_len().await.unwrap(), 15);
}

async fn open_orders_carry_their_kitchen_details(b: Backend) {
    let env = TestEnv::new(b);
    let store = env.open_store().await;
    let detailed = order(json!({
        "customer_name": "Ana", "order_type": "dine_in", "table_number": 3,
        "notes": "Birthday",
        "items": [{"name": "Satay", "quantity": 2, "price": 9.0, "notes": "mild",
                   "modifiers": ["sauce on the side", "no \"chili\", please"],
                   "allergens": ["peanuts", "soya"]},
                  {"name": "Water", "quantity": 1, "price": 2.0}]}));
    let a = store
        .create_order(&detailed, "r", at(0), at(0).date_naive())
        .await
        .unwrap()
        .order_number;
    let gone = store
        .create_order(&takeout("Bob"), "r", at(1), at(1).date_naive())
        .await
        .unwrap()
        .order_number;
    let c = store
        .create_order(&takeout("Cy"), "r", at(2), at(2).date_naive())
        .await
        .unwrap()
        .order_number;
    applied(&store, &change(&gone, Cancelled, "order-service", at(3))).await;
    applied(&store, &change(&c, Cooking, "chef_a", at(4))).await;
    let open = store.open_orders().await.unwrap();
    let numbers: Vec<_> = open
        .iter()
        .map(|o| o.placed.order_number.as_str())
        .collect();
    assert_eq!(
        numbers,
        [a.as_str(), c.as_str()],
        "open orders, oldest first"
    );
    assert_eq!(
        open[0].placed.items, detailed.items,
        "items with notes, modifiers, allergens"
    );
    assert_eq!(open[0].notes.as_deref(), Some("Birthday"));
    assert_eq!(open[0].placed.table_number, Some(3));
    assert_eq!(open[1].placed.items, takeout("Cy").items);
    assert_eq!(open[1].status, Cooking);
    assert_eq!(open[0], store.order(&a).await.unwrap().unwrap());
}

async fn workers_register_beat_and_count(b: Backend) {
    let env = TestEnv::new(b);
    let store = env.open_store().await;
    let reg = |now| WorkerRegistration {
        name: "chef_a".into(),
        order_types: "dine_in,takeout".into(),
        heartbeat_interval_secs: 10,
        now,
        name_lock_held: true,
    };
    assert_eq!(
        store.register_worker(&reg(at(0))).await.unwrap(),
        Registered::New
    );
    let w = store.workers().await.unwrap();
    assert_eq!(w.len(), 1);
    assert_eq!(
        (
            w[0].name.as_str(),
            w[0].order_types.as_str(),
            w[0].status.as_str()
        ),
        ("chef_a", "dine_in,takeout", "online")
    );
    assert_eq!(
        (w[0].orders_processed, w[0].heartbeat_interval_secs),
        (0, 10)
    );
    store.heartbeat("chef_a", at(5_000)).await.unwrap();
    assert_eq!(store.workers().await.unwrap()[0].last_seen, at(5_000));
    // A second live process under the name is refused.
    let other = WorkerRegistration {
        name_lock_held: false,
        ..reg(at(6_000))
    };
    assert_eq!(
        store.register_worker(&other).await.unwrap(),
        Registered::AlreadyOnline {
            last_seen: at(5_000)
        }
    );
    // Cooking one order to ready counts it for the worker that finished it.
    let n = store
        .create_order(&takeout("Ann"), "r", at(0), at(0).date_naive())
        .await
        .unwrap()
        .order_number;
    applied(&store, &change(&n, Cooking, "chef_a", at(1))).await;
    applied(&store, &change(&n, Ready, "chef_a", at(2))).await;
    applied(&store, &change(&n, Completed, "chef_a", at(3))).await;
    applied(&store, &change(&n, Ready, "chef_a", at(4))).await;
    assert_eq!(store.workers().await.unwrap()[0].orders_processed, 1);
    store.worker_offline("chef_a", at(7_000)).await.unwrap();
    let w = &store.workers().await.unwrap()[0];
    assert_eq!((w.status.as_str(), w.last_seen), ("offline", at(7_000)));
    assert_eq!(
        store.register_worker(&reg(at(8_000))).await.unwrap(),
        Registered::Returned
    );
    let lease = store.worker_lease("chef_a").await.unwrap();
    assert!(lease.held());
}

async fn tokens_round_trip(b: Backend) {
    let env = TestEnv::new(b);
    let store = env.open_store().await;
    assert!(store
        .create_token("display-1", Role::Kitchen, "hash-1", at(0))
        .await
        .unwrap());
    assert!(!store
        .create_token("display-1", Role::Manager, "hash-2", at(1))
        .await
        .unwrap());
    assert!(store
        .create_token("admin", Role::Manager, "hash-3", at(2))
        .await
        .unwrap());
    store
        .touch_tokens(&[("display-1".to_string(), at(5))])
        .await
        .unwrap();
    let rows = store.tokens().await.unwrap();
    let seen: Vec<_> = rows
        .iter()
        .map(|t| {
            (
                t.name.as_str(),
                t.role,
                t.token_hash.as_str(),
                t.created_at,
                t.last_used_at,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("admin", Role::Manager, "hash-3", at(2), None),
            ("display-1", Role::Kitchen, "hash-1", at(0), Some(at(5))),
        ]
    );
    assert!(store.revoke_token("admin").await.unwrap());
    assert!(!store.revoke_token("admin").await.unwrap());
    assert_eq!(store.tokens().await.unwrap().len(), 1);
}

/// The kitchen's `cooking` is written without waiting for the disk
/// (`Durability::Deferred`): it is applied, read back and published exactly
/// like a durable change, and the durable `ready` after it follows from it.
async fn a_deferred_change_is_a_change_like_any_other(b: Backend) {
    let (_env, store, n) = with_one_order(b).await;
    let done: Vec<i64> = outbox(&store, &[]).await.iter().map(|m| m.id).collect();
    let mut cooking = change(&n, Cooking, "chef_a", at(1_000));
    cooking.durability = Durability::Deferred;
    assert_eq!(applied(&store, &cooking).await, (Received, 2));
    assert_eq!(store.status(&n).await.unwrap(), Some(Cooking));
    let msgs = outbox(&store, &done).await;
    assert_eq!(msgs.len(), 1, "the deferred change's message is claimed");
    assert_eq!(msgs[0].message_id, format!("{n}:cooking:2"));
    // Its compare-and-set holds like any other: a second try from `received` misses.
    match store.transition(&cooking).await.unwrap() {
        TransitionOutcome::Rejected(e) => assert_eq!(e.current, Cooking),
        other => panic!("a repeated deferred change was not refused: {other:?}"),
    }
    assert_eq!(
        applied(&store, &change(&n, Ready, "chef_a", at(2_000))).await,
        (Cooking, 3)
    );
    let msgs = outbox(&store, &[msgs[0].id]).await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].message_id, format!("{n}:ready:3"));
}

/// Issue 26: order numbers carry the business date (New York, cut-over 04:00)
/// and stay unique and in order across both daylight-saving changes, the
/// cut-over, orders that arrive together, and a clock stepped back within a
/// day. The clock is injected: every order says when it was placed.
async fn business_day_numbers_stay_unique_and_in_order(b: Backend) {
    use std::collections::{BTreeMap, HashSet};
    let env = TestEnv::new(b);
    let store = env.open_store().await;
    let rule = restaurant_system::process::config::BusinessConfig {
        timezone: "America/New_York".into(),
        day_starts_at: "04:00".into(),
    }
    .rule()
    .expect("a valid business day");
    // Every 25 minutes over the night of each change (local 22:00 to 08:00),
    // three orders at once at each time; then a clock stepped back an hour.
    let mut times = Vec::new();
    for night in [
        Utc.with_ymd_and_hms(2026, 3, 8, 3, 0, 0).unwrap(), // spring forward
        Utc.with_ymd_and_hms(2026, 11, 1, 2, 0, 0).unwrap(), // fall back
    ] {
        for step in 0..26 {
            times.push(night + chrono::Duration::minutes(25 * step));
        }
    }
    let last = *times.last().unwrap();
    times.push(last - chrono::Duration::hours(1));
    let mut numbers = HashSet::new();
    let mut per_day: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (i, t) in times.iter().enumerate() {
        let day = rule.date(*t);
        let placed = futures_util::future::join_all((0..3).map(|k| {
            let store = store.clone();
            let rid = format!("rid-{i}-{k}");
            async move {
                store
                    .create_order(&takeout("Guest"), &rid, *t, day)
                    .await
                    .expect("create")
                    .order_number
            }
        }))
        .await;
        let mut seqs = Vec::new();
        for n in placed {
            assert!(numbers.insert(n.clone()), "{n} given twice");
            let (date, seq) = n["ORD_".len()..].split_once('_').expect("ORD_D_N");
            assert_eq!(date, day.format("%Y%m%d").to_string(), "{n} placed at {t}");
            seqs.push(seq.parse::<u64>().expect("seq"));
        }
        // Orders placed together: unique, and after every earlier one of the day.
        seqs.sort_unstable();
        let seen = per_day.entry(date_of(&rule, *t)).or_default();
        if let Some(prev) = seen.last() {
            assert!(seqs[0] > *prev, "{seqs:?} after {prev} at {t}");
        }
        seen.extend(seqs);
    }
    // Each business day's numbers run 1, 2, 3, ... with no gap.
    for (day, seqs) in &per_day {
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, &expected, "{day}");
    }
    // The nights span the 7th/8th of March and the 31st of October/1st of
    // November: with the cut-over at 04:00 local both split in two.
    let days: Vec<&String> = per_day.keys().collect();
    assert_eq!(days, ["20260307", "20260308", "20261031", "20261101"]);
}

fn date_of(
    rule: &restaurant_system::domain::business_day::BusinessDay,
    t: DateTime<Utc>,
) -> String {
    rule.date(t).format("%Y%m%d").to_string()
}

/// Issue 26: tickets that clear themselves. A ready order is completed after
/// its minutes (not before); at the business day's cut-over yesterday's ready
/// order is completed and its received one cancelled; the history says it was
/// automatic. The clock is injected.
async fn tickets_clear_themselves(b: Backend) {
    use restaurant_system::services::closer::{Closer, CHANGED_BY};
    let env = TestEnv::new(b);
    let store = env.open_store().await;
    let closer = Closer {
        business: Default::default(),
        auto_complete_after_minutes: 30,
    };
    let mut numbers = Vec::new();
    for (i, who) in ["Ann", "Bob", "Cy"].into_iter().enumerate() {
        let t = at(i as i64);
        let n = store
            .create_order(&takeout(who), "rid", t, t.date_naive())
            .await
            .unwrap()
            .order_number;
        numbers.push(n);
    }
    let minute = |m: i64| at(0) + chrono::Duration::minutes(m);
    // Ann's and Bob's are ready at minute 1; Cy's stays received.
    for n in &numbers[..2] {
        applied(&store, &change(n, Cooking, "chef", minute(1))).await;
        applied(&store, &change(n, Ready, "chef", minute(1))).await;
    }
    assert_eq!(closer.run_once(&store, minute(30)).await.unwrap(), 0);
    // Bob's is bumped by hand meanwhile; Ann's waits its 30 minutes.
    applied(&store, &change(&numbers[1], Completed, "expo", minute(20))).await;
    assert_eq!(closer.run_once(&store, minute(31)).await.unwrap(), 1);
    assert_eq!(store.status(&numbers[0]).await.unwrap(), Some(Completed));
    let h = store.history(&numbers[0]).await.unwrap().unwrap();
    assert_eq!(h.last().map(|e| e.changed_by.as_str()), Some(CHANGED_BY));
    let h = store.history(&numbers[1]).await.unwrap().unwrap();
    assert_eq!(h.last().map(|e| e.changed_by.as_str()), Some("expo"));
    // The next business day (UTC midnight by default): Cy's is cancelled.
    let tomorrow = (at(0).date_naive() + chrono::Duration::days(1))
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    assert_eq!(closer.run_once(&store, tomorrow).await.unwrap(), 1);
    assert_eq!(store.status(&numbers[2]).await.unwrap(), Some(Cancelled));
    assert!(store.open_orders().await.unwrap().is_empty());
    // Every automatic change announced itself like a bump does.
    let updates: Vec<StatusUpdate> = outbox(&store, &[])
        .await
        .iter()
        .filter(|m| m.exchange == NOTIFICATIONS_EXCHANGE)
        .filter_map(|m| serde_json::from_str(&m.payload).ok())
        .collect();
    let auto: Vec<(&str, OrderStatus)> = updates
        .iter()
        .filter(|u| u.changed_by == CHANGED_BY)
        .map(|u| (u.order_number.as_str(), u.new_status))
        .collect();
    assert_eq!(
        auto,
        [
            (numbers[0].as_str(), Completed),
            (numbers[2].as_str(), Cancelled)
        ]
    );
}

/// Issue 26: retention. `purge_orders` deletes the oldest orders created
/// before the cut-off, a batch at a time, with their items and history (no
/// row is left pointing at a deleted order); newer orders are untouched. On
/// SQLite a new database gives the space back (auto_vacuum = INCREMENTAL).
async fn purge_deletes_old_orders_in_batches(b: Backend) {
    let env = TestEnv::new(b);
    let store = env.open_store().await;
    let old = at(0);
    let cutoff = old + chrono::Duration::days(1);
    let mut numbers = Vec::new();
    for (i, t) in [0, 1, 2, 3, 4, 2 * 86_400_000, 3 * 86_400_000]
        .into_iter()
        .enumerate()
    {
        let t = at(t + i as i64);
        let n = store
            .create_order(&takeout("Ann"), "rid", t, t.date_naive())
            .await
            .unwrap()
            .order_number;
        applied(&store, &change(&n, Cooking, "chef", t)).await;
        numbers.push(n);
    }
    let (gone, kept) = numbers.split_at(5);
    let mut batches = Vec::new();
    loop {
        let n = store.purge_orders(cutoff, 2).await.expect("purge");
        batches.push(n);
        if n < 2 {
            break;
        }
    }
    assert_eq!(batches, [2, 2, 1]);
    for n in gone {
        assert!(
            store.order(n).await.unwrap().is_none(),
            "{n} is still there"
        );
        assert!(store.history(n).await.unwrap().is_none(), "{n}'s history");
    }
    for n in kept {
        let o = store.order(n).await.unwrap().expect("a newer order stays");
        assert_eq!(o.status, Cooking);
        assert_eq!(store.history(n).await.unwrap().unwrap().len(), 2);
    }
    assert_eq!(store.purge_orders(cutoff, 2).await.unwrap(), 0);
    let orphans =
        "select (select count(*) from order_items where order_id not in (select id from orders)) \
         + (select count(*) from order_status_log where order_id not in (select id from orders))";
    match b {
        Backend::Sqlite => {
            let c = rusqlite::Connection::open(&env.cfg.database.sqlite_path).unwrap();
            let n: i64 = c.query_row(orphans, [], |r| r.get(0)).unwrap();
            assert_eq!(n, 0);
            let mode: i64 = c.query_row("PRAGMA auto_vacuum", [], |r| r.get(0)).unwrap();
            assert_eq!(mode, 2, "a new database is INCREMENTAL");
            let free: i64 = c
                .query_row("PRAGMA freelist_count", [], |r| r.get(0))
                .unwrap();
            assert_eq!(free, 0, "the freed pages went back to the file system");
        }
        Backend::Postgres => {
            let db = env.pg_db.as_deref().unwrap();
            assert_eq!(common::pg_query(db, orphans).unwrap(), "0");
        }
    }
}

backend_tests!(
    purge_deletes_old_orders_in_batches,
    tickets_clear_themselves,
    business_day_numbers_stay_unique_and_in_order,
    create_and_read_back,
    transition_chain_writes_what_the_domain_decided,
    refusals_write_nothing,
    a_wrong_guess_is_read_again,
    concurrent_transitions_from_one_state_one_wins,
    open_orders_carry_their_kitchen_details,
    workers_register_beat_and_count,
    tokens_round_trip,
    a_deferred_change_is_a_change_like_any_other
);
