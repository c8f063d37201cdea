//! Kitchen worker behaviour (issue 3) on both backends: specialisation,
//! priority, poison messages and duplicate deliveries.
use crate::common;

use common::{
    eventually, get_all, header, notification_tap, place_order, publish_raw, queue_counts,
    spec_orders, takeout, wait_status, Backend, OrderType, TestEnv,
};
use restaurant_system::broker::topology::{kitchen_queues, DEAD_LETTER_QUEUE};
use restaurant_system::domain::events::ORDERS_EXCHANGE;
use restaurant_system::domain::OrderStatus;
use restaurant_system::modes::Mode;
use restaurant_system::storage::SharedStore;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

fn dine_in(customer: &str) -> Value {
    json!({"customer_name": customer, "order_type": "dine_in", "table_number": 7,
           "items": [{"name": "Soup", "quantity": 1, "price": 6.5}]})
}

/// Messages ready in all of `t`'s queues.
pub(crate) async fn queued(env: &TestEnv, ch: &lapin::Channel, t: OrderType) -> u32 {
    let mut n = 0;
    for (q, _) in kitchen_queues(t, env.cfg.rabbitmq.queue_type) {
        n += queue_counts(ch, &q).await.0;
    }
    n
}

async fn changed_by(store: &SharedStore, n: &str) -> BTreeSet<String> {
    store
        .history(n)
        .await
        .unwrap()
        .unwrap()
        .into_iter()
        .filter(|e| e.status != OrderStatus::Received)
        .map(|e| e.changed_by)
        .collect()
}

/// A worker started with `order_types = [dine_in]` consumes only the dine-in
/// queue: takeout orders wait for a general worker, and never reach it even
/// while both run.
async fn specialised_worker(b: Backend) {
    let env = TestEnv::new(b);
    let orders = env.start(Mode::OrderService, None).await;
    let store = orders.store();
    let http = http();
    let ou = orders.order_url();
    let dine = env
        .start(
            Mode::KitchenWorker,
            Some(env.worker("chef_dine", &[OrderType::DineIn])),
        )
        .await;

    let mut takeouts = Vec::new();
    let mut dine_ins = Vec::new();
    for i in 0..3 {
        takeouts.push(
            place_order(
                &http,
                &ou,
                &takeout(&format!("Take {}", "x".repeat(i + 1)), 1, 9.5),
            )
            .await,
        );
        dine_ins.push(place_order(&http, &ou, &dine_in("Sit Down")).await);
    }
    for n in &dine_ins {
        let o = wait_status(&store, n, OrderStatus::Ready, Duration::from_secs(15)).await;
        assert_eq!(o.processed_by.as_deref(), Some("chef_dine"));
    }
    let ch = env.amqp_with_topology().await;
    // The takeout orders are all still waiting, untouched, in their queue.
    eventually(
        Duration::from_secs(10),
        "3 takeout orders queued",
        || async { (queue_counts(&ch, "kitchen_takeout_queue").await == (3, 0)).then_some(()) },
    )
    .await;
    for n in &takeouts {
        let o = store.order(n).await.unwrap().unwrap();
        assert_eq!(
            o.status,
            OrderStatus::Received,
            "{n} taken by {:?}",
            o.processed_by
        );
    }
    assert_eq!(queue_counts(&ch, "kitchen_dine_in_queue").await.1, 1);
    assert_eq!(queue_counts(&ch, "kitchen_delivery_queue").await.1, 0);

    let general = env
        .start(Mode::KitchenWorker, Some(env.worker("chef_all", &[])))
        .await;
    for n in &takeouts {
        let o = wait_status(&store, n, OrderStatus::Ready, Duration::from_secs(15)).await;
        assert_eq!(o.processed_by.as_deref(), Some("chef_all"));
    }
    // Both running: takeout still only ever goes to the general worker.
    let mut more_takeouts = Vec::new();
    for i in 0..6 {
        more_takeouts.push(place_order(&http, &ou, &takeout("More Take", 1, 9.5 + i as f64)).await);
        dine_ins.push(place_order(&http, &ou, &dine_in("More Sit")).await);
    }
    for n in more_takeouts.iter().chain(&dine_ins) {
        wait_status(&store, n, OrderStatus::Ready, Duration::from_secs(30)).await;
    }
    for n in takeouts.iter().chain(&more_takeouts) {
        let by = changed_by(&store, n).await;
        assert_eq!(by, BTreeSet::from(["chef_all".to_string()]), "{n}");
    }
    let mut dine_by_chef_dine = 0;
    for n in &dine_ins {
        let by = changed_by(&store, n).await;
        assert_eq!(by.len(), 1, "{n} cooked by one worker: {by:?}");
        if by.contains("chef_dine") {
            dine_by_chef_dine += 1;
        }
    }
    let workers: BTreeMap<String, i64> = store
        .workers()
        .await
        .unwrap()
        .into_iter()
        .map(|w| (w.name, w.orders_processed))
        .collect();
    assert_eq!(workers["chef_dine"], dine_by_chef_dine);
    assert_eq!(
        workers["chef_all"],
        (takeouts.len() + more_takeouts.len() + dine_ins.len()) as i64 - dine_by_chef_dine
    );
    general.stop().await;
    dine.stop().await;
    orders.stop().await;
}

/// Orders queued while no worker runs are cooked highest priority first
/// (10, then 5, then 1), first come first served within a priority.
async fn high_priority_first(b: Backend) {
    priority_order(&TestEnv::new(b)).await
}

/// The same with the classic queue index version 2 that the .deb makes the
/// box's RabbitMQ use (issue 21): priorities hold there too.
async fn high_priority_first_v2_index(b: Backend) {
    let env = TestEnv::new(b);
    env.classic_queue_version(2);
    priority_order(&env).await;
    // The policy `classic_queue_version` set: {"queue-version":2}.
    assert_eq!(
        env.queue_policy("kitchen_takeout_queue"),
        "queue-version",
        "the takeout queue ran under the index version 2 policy"
    );
}

pub(crate) async fn priority_order(env: &TestEnv) {
    let mut cfg = env.cfg.clone();
    cfg.kitchen.cooking_seconds.takeout = 0.05;
    let orders = env.start_with(Mode::OrderService, None, &cfg).await;
    let store = orders.store();
    let http = http();
    let ou = orders.order_url();
    // price -> priority: 10.00 -> 1, 75.00 -> 5, 150.00 -> 10.
    let plan = [1, 1, 10, 1, 5, 1, 10, 1, 5, 1, 10, 1];
    let mut placed = Vec::new();
    for (i, p) in plan.iter().enumerate() {
        let price = match p {
            10 => 150.0,
            5 => 75.0,
            _ => 10.0,
        };
        let n = place_order(&http, &ou, &takeout("Queue Order", 1, price)).await;
        assert_eq!(
            store.order(&n).await.unwrap().unwrap().placed.priority,
            *p,
            "order {i}"
        );
        placed.push((n, *p));
    }
    let ch = env.amqp_with_topology().await;
    eventually(Duration::from_secs(15), "all orders queued", || async {
        (queued(env, &ch, OrderType::Takeout).await == plan.len() as u32).then_some(())
    })
    .await;

    let mut w = env.worker("chef_prio", &[OrderType::Takeout]);
    w.cooking = cfg.kitchen.cooking_seconds;
    assert_eq!(w.prefetch, 1);
    let worker = env.start_with(Mode::KitchenWorker, Some(w), &cfg).await;
    let mut started = Vec::new();
    for (n, p) in &placed {
        wait_status(&store, n, OrderStatus::Ready, Duration::from_secs(30)).await;
        let h = store.history(n).await.unwrap().unwrap();
        let cooking = h.iter().find(|e| e.status == OrderStatus::Cooking).unwrap();
        started.push((cooking.timestamp, *p, n.clone()));
    }
    started.sort();
    let order: Vec<i32> = started.iter().map(|s| s.1).collect();
    assert_eq!(
        order,
        [10, 10, 10, 5, 5, 1, 1, 1, 1, 1, 1, 1],
        "cooking order: {started:?}"
    );
    for p in [10, 5, 1] {
        let numbers: Vec<&String> = started.iter().filter(|s| s.1 == p).map(|s| &s.2).collect();
        let mut sorted = numbers.clone();
        sorted.sort();
        assert_eq!(
            numbers, sorted,
            "first come first served within priority {p}"
        );
    }
    worker.stop().await;
    orders.stop().await;
}

/// Messages that can never be processed go to the dead-letter queue exactly
/// once, with the reason in `x-rejection-reason`, and do not block the queue.
async fn poison_messages(b: Backend) {
    let env = TestEnv::new(b);
    let orders = env.start(Mode::OrderService, None).await;
    let worker = env
        .start(Mode::KitchenWorker, Some(env.worker("chef_poison", &[])))
        .await;
    let store = orders.store();
    let ch = env.amqp_with_topology().await;
    let unknown = json!({"order_number": "ORD_20200101_001", "customer_name": "Ghost",
        "order_type": "takeout", "table_number": null, "delivery_address": null,
        "items": [{"name": "Pizza", "quantity": 1, "price": 9.5}],
        "total_amount": 9.5, "priority": 1});
    let mut bad_number = unknown.clone();
    bad_number["order_number"] = json!("DROP TABLE orders");
    let poison: Vec<(&str, Vec<u8>)> = vec![
        ("kitchen.takeout.1", b"this is not json".to_vec()),
        (
            "kitchen.takeout.1",
            b"{\"order_number\": \"ORD_20200101_002\"}".to_vec(),
        ),
        ("kitchen.takeout.1", vec![0xff, 0x00, 0xfe]),
        ("kitchen.takeout.1", unknown.to_string().into_bytes()),
        ("kitchen.takeout.1", bad_number.to_string().into_bytes()),
        ("kitchen.dine_in.5", b"[]".to_vec()),
    ];
    for (rk, body) in &poison {
        publish_raw(&ch, ORDERS_EXCHANGE, rk, body, Some(1)).await;
    }
    eventually(Duration::from_secs(15), "poison in the DLQ", || async {
        (queue_counts(&ch, DEAD_LETTER_QUEUE).await.0 >= poison.len() as u32).then_some(())
    })
    .await;
    // A good order after them is cooked: the queue is not blocked, and by the
    // time it is ready the poison has long been settled (prefetch 1).
    let n = place_order(
        &reqwest::Client::new(),
        &orders.order_url(),
        &spec_orders()[0],
    )
    .await;
    wait_status(&store, &n, OrderStatus::Ready, Duration::from_secs(15)).await;

    let dead = get_all(&ch, DEAD_LETTER_QUEUE).await;
    assert_eq!(
        dead.len(),
        poison.len(),
        "each poison message dead-lettered exactly once"
    );
    let mut bodies: Vec<Vec<u8>> = dead.iter().map(|d| d.data.clone()).collect();
    let mut want: Vec<Vec<u8>> = poison.iter().map(|p| p.1.clone()).collect();
    bodies.sort();
    want.sort();
    assert_eq!(bodies, want);
    for d in &dead {
        let reason = header(d, "x-rejection-reason").expect("x-rejection-reason header");
        assert!(!reason.trim().is_empty());
        if d.data == unknown.to_string().into_bytes() {
            assert!(reason.contains("ORD_20200101_001"), "{reason}");
        }
    }
    for q in ["kitchen_takeout_queue", "kitchen_dine_in_queue"] {
        assert_eq!(queue_counts(&ch, q).await.0, 0, "{q} drained");
    }
    // Nothing was written for the poison.
    assert!(store.order("ORD_20200101_001").await.unwrap().is_none());
    worker.stop().await;
    orders.stop().await;
}

fn order_message(o: &restaurant_system::storage::OrderView) -> Vec<u8> {
    json!({"order_number": o.placed.order_number, "customer_name": o.placed.customer_name,
        "order_type": o.placed.order_type, "table_number": o.placed.table_number,
        "delivery_address": o.placed.delivery_address, "items": o.placed.items,
        "total_amount": o.placed.total_amount, "priority": o.placed.priority})
    .to_string()
    .into_bytes()
}

/// Every notification published so far: waits until the outbox is empty (each
/// committed change confirmed by the broker, so routed to the tap), then
/// reads the tap. Grouped by order: (old, new, version).
async fn notifications(
    ch: &lapin::Channel,
    tap: &str,
    store: &SharedStore,
) -> BTreeMap<String, Vec<(String, String, i64)>> {
    eventually(Duration::from_secs(15), "the outbox to drain", || async {
        (store.outbox_len().await.ok()? == 0).then_some(())
    })
    .await;
    by_order(&get_all(ch, tap).await)
}

/// Notifications grouped by order: (old, new, version).
fn by_order(msgs: &[lapin::message::Delivery]) -> BTreeMap<String, Vec<(String, String, i64)>> {
    let mut m: BTreeMap<String, Vec<(String, String, i64)>> = BTreeMap::new();
    for d in msgs {
        let v: Value = serde_json::from_slice(&d.data).unwrap();
        m.entry(v["order_number"].as_str().unwrap().to_string())
            .or_default()
            .push((
                v["old_status"].as_str().unwrap().to_string(),
                v["new_status"].as_str().unwrap().to_string(),
                v["version"].as_i64().unwrap_or(0),
            ));
    }
    m
}

/// The same order message delivered again after the order is ready: acked,
/// with no second transition, log row or notification.
async fn redelivered_after_ready(b: Backend) {
    redelivered_after_ready_in(&TestEnv::new(b)).await
}

pub(crate) async fn redelivered_after_ready_in(env: &TestEnv) {
    let ch = env.amqp_with_topology().await;
    let tap = notification_tap(&ch).await;
    let orders = env.start(Mode::OrderService, None).await;
    let worker = env
        .start(Mode::KitchenWorker, Some(env.worker("chef_dup", &[])))
        .await;
    let store = orders.store();
    let http = http();
    let ou = orders.order_url();

    let a = place_order(&http, &ou, &spec_orders()[0]).await;
    let o = wait_status(&store, &a, OrderStatus::Ready, Duration::from_secs(15)).await;
    for _ in 0..2 {
        publish_raw(
            &ch,
            ORDERS_EXCHANGE,
            "kitchen.takeout.1",
            &order_message(&o),
            Some(1),
        )
        .await;
    }
    // Same queue, same priority, prefetch 1: once this one is ready, the
    // duplicates ahead of it have been handled.
    let b2 = place_order(&http, &ou, &spec_orders()[0]).await;
    wait_status(&store, &b2, OrderStatus::Ready, Duration::from_secs(15)).await;

    let statuses: Vec<OrderStatus> = common::statuses(&store, &a).await;
    assert_eq!(
        statuses,
        [
            OrderStatus::Received,
            OrderStatus::Cooking,
            OrderStatus::Ready
        ]
    );
    assert_eq!(
        store.order(&a).await.unwrap().unwrap().version,
        o.version,
        "order untouched"
    );
    assert_eq!(store.workers().await.unwrap()[0].orders_processed, 2);
    assert_eq!(queued(env, &ch, OrderType::Takeout).await, 0);
    assert_eq!(
        queue_counts(&ch, DEAD_LETTER_QUEUE).await.0,
        0,
        "a duplicate is not poison"
    );

    let map = notifications(&ch, &tap, &store).await;
    assert_eq!(map[&b2].len(), 2, "{map:?}");
    let mut got: Vec<(String, String)> = map[&a]
        .iter()
        .map(|(o, n, _)| (o.clone(), n.clone()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("cooking".to_string(), "ready".to_string()),
            ("received".to_string(), "cooking".to_string())
        ],
        "one notification per change of {a}"
    );
    worker.stop().await;
    orders.stop().await;
}

/// Three copies of one order message in the worker's hands at the same time
/// (prefetch 3): the compare-and-set lets exactly one cooking and one ready
/// transition through.
async fn concurrent_duplicates(b: Backend) {
    concurrent_duplicates_in(&TestEnv::new(b)).await
}

pub(crate) async fn concurrent_duplicates_in(env: &TestEnv) {
    let mut cfg = env.cfg.clone();
    cfg.kitchen.cooking_seconds.takeout = 0.5;
    let ch = env.amqp_with_topology().await;
    let tap = notification_tap(&ch).await;
    let orders = env.start_with(Mode::OrderService, None, &cfg).await;
    let store = orders.store();
    let http = http();
    let ou = orders.order_url();
    // Queue the order and two copies before the worker starts, so all three
    // are delivered together.
    let n = place_order(&http, &ou, &spec_orders()[0]).await;
    let o = store.order(&n).await.unwrap().unwrap();
    for _ in 0..2 {
        publish_raw(
            &ch,
            ORDERS_EXCHANGE,
            "kitchen.takeout.1",
            &order_message(&o),
            Some(1),
        )
        .await;
    }
    eventually(Duration::from_secs(15), "three copies queued", || async {
        (queued(env, &ch, OrderType::Takeout).await == 3).then_some(())
    })
    .await;
    let mut w = env.worker("chef_triple", &[]);
    w.prefetch = 3;
    w.cooking = cfg.kitchen.cooking_seconds;
    let worker = env.start_with(Mode::KitchenWorker, Some(w), &cfg).await;
    wait_status(&store, &n, OrderStatus::Ready, Duration::from_secs(15)).await;
    eventually(Duration::from_secs(15), "all copies settled", || async {
        (queued(env, &ch, OrderType::Takeout).await == 0).then_some(())
    })
    .await;
    // Stopping waits for every delivery in hand, so each copy's handler has
    // made (or been refused) its own transitions by the time this returns.
    worker.stop().await;

    let statuses: Vec<OrderStatus> = common::statuses(&store, &n).await;
    assert_eq!(
        statuses,
        [
            OrderStatus::Received,
            OrderStatus::Cooking,
            OrderStatus::Ready
        ]
    );
    assert_eq!(store.workers().await.unwrap()[0].orders_processed, 1);
    assert_eq!(queue_counts(&ch, DEAD_LETTER_QUEUE).await.0, 0);
    // The order service's relay publishes what the stopped worker committed.
    let m = notifications(&ch, &tap, &store).await;
    let changes: Vec<(String, String)> = m[&n]
        .iter()
        .map(|(o, n, _)| (o.clone(), n.clone()))
        .collect();
    assert_eq!(
        changes,
        [
            ("received".to_string(), "cooking".to_string()),
            ("cooking".to_string(), "ready".to_string())
        ]
    );
    orders.stop().await;
}

/// Two workers in one process (`--worker-name=chef_left,chef_right`): each is
/// registered and takes its own orders (one at a time, prefetch 1), every
/// order is cooked by exactly one of them, and both go offline with the process.
async fn two_workers_in_one_process(b: Backend) {
    let env = TestEnv::new(b);
    let orders = env.start(Mode::OrderService, None).await;
    let store = orders.store();
    let http = http();
    let kitchen = env
        .start_kitchen(vec![
            env.worker("chef_left", &[]),
            env.worker("chef_right", &[]),
        ])
        .await;
    let mut placed = Vec::new();
    for i in 0..8 {
        placed.push(
            place_order(
                &http,
                &orders.order_url(),
                &takeout("Two Chefs", 1, 5.0 + i as f64),
            )
            .await,
        );
    }
    let mut cooked: BTreeMap<String, i64> = BTreeMap::new();
    for n in &placed {
        wait_status(&store, n, OrderStatus::Ready, Duration::from_secs(30)).await;
        let by = changed_by(&store, n).await;
        assert_eq!(by.len(), 1, "{n} cooked by one worker: {by:?}");
        *cooked.entry(by.into_iter().next().unwrap()).or_default() += 1;
    }
    // Eight orders of 0.2 s each, taken one at a time per worker: both cook.
    assert_eq!(
        cooked.keys().collect::<Vec<_>>(),
        ["chef_left", "chef_right"],
        "{cooked:?}"
    );
    let workers: BTreeMap<String, (String, i64)> = store
        .workers()
        .await
        .unwrap()
        .into_iter()
        .map(|w| (w.name, (w.status, w.orders_processed)))
        .collect();
    for (name, n) in &cooked {
        assert_eq!(workers[name], ("online".to_string(), *n), "{name}");
    }
    kitchen.stop().await;
    for w in store.workers().await.unwrap() {
        assert_eq!(w.status, "offline", "{} after the process stopped", w.name);
    }
    orders.stop().await;
}

backend_tests!(
    two_workers_in_one_process,
    specialised_worker,
    high_priority_first,
    high_priority_first_v2_index,
    poison_messages,
    redelivered_after_ready,
    concurrent_duplicates,
);
