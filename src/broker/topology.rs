//! The RabbitMQ topology. Every mode declares what it uses at start and after
//! every reconnect; declarations are idempotent.
//!
//! ```text
//! orders_topic (topic) --kitchen.dine_in.*--> kitchen_dine_in_queue  --+
//!                      --kitchen.takeout.*--> kitchen_takeout_queue  --+-- dead letters --> orders_dlx (fanout) --> orders_dlq
//!                      --kitchen.delivery.*-> kitchen_delivery_queue --+
//!                      --kitchen.#----------> display_bridge_queue (single active consumer)
//! notifications_fanout (fanout) ------------> display_bridge_queue, one exclusive queue per notification subscriber
//! ```
//!
//! With `[rabbitmq] queue_type = "quorum"` (several boxes, docs/multi-box.md)
//! every durable queue above is a quorum queue, replicated over the RabbitMQ
//! cluster. RabbitMQ 3.10's quorum queues refuse `x-max-priority`, so each
//! kitchen queue becomes one queue per priority, as RabbitMQ's documentation
//! advises: `kitchen.dine_in.10` goes to `kitchen_dine_in_p10_queue`, and the
//! worker drains the higher one first (`services::kitchen`).

use crate::domain::events::{NOTIFICATIONS_EXCHANGE, ORDERS_EXCHANGE, STATIONS_EXCHANGE};
use crate::domain::order::PRIORITIES;
use crate::domain::OrderType;
use crate::process::config::QueueType;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

pub const DEAD_LETTER_EXCHANGE: &str = "orders_dlx";
pub const DEAD_LETTER_QUEUE: &str = "orders_dlq";
pub const DISPLAY_QUEUE: &str = "display_bridge_queue";
/// Messages kept for a display bridge that is not running.
pub const DISPLAY_QUEUE_MAX: i32 = 100_000;
/// Header naming why a message was dead-lettered by us.
pub const REASON_HEADER: &str = "x-rejection-reason";
/// Header carrying the request id across services.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

pub fn kitchen_queue(t: OrderType) -> String {
    format!("kitchen_{t}_queue")
}

/// The queues a worker for type `t` consumes, highest priority first, each
/// with its priority (one queue holding all priorities: `None`).
pub fn kitchen_queues(t: OrderType, qt: QueueType) -> Vec<(String, Option<i32>)> {
    match qt {
        QueueType::Classic => vec![(kitchen_queue(t), None)],
        QueueType::Quorum => PRIORITIES
            .iter()
            .map(|p| (format!("kitchen_{t}_p{p}_queue"), Some(*p)))
            .collect(),
    }
}

/// The arguments every durable queue of ours gets for `qt`.
fn queue_args(qt: QueueType) -> FieldTable {
    let mut args = FieldTable::default();
    if qt == QueueType::Quorum {
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
    }
    args
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// A new channel on `conn` with the topology declared (`declare`): what every
/// consumer opens first.
pub async fn channel(conn: &lapin::Connection, qt: QueueType) -> Result<Channel, lapin::Error> {
    let ch = conn.create_channel().await?;
    declare(&ch, qt).await?;
    Ok(ch)
}

/// Exchanges (orders, notifications, stations), the dead-letter queue and the
/// kitchen queues (three, or three per priority with quorum queues). The
/// dead-letter queue comes first: a box configured with the other queue type
/// fails there (PRECONDITION_FAILED), before it binds a kitchen queue that
/// would take a copy of every order.
pub async fn declare(ch: &Channel, qt: QueueType) -> Result<(), lapin::Error> {
    ch.exchange_declare(
        ORDERS_EXCHANGE.into(),
        ExchangeKind::Topic,
        durable_exchange(),
        FieldTable::default(),
    )
    .await?;
    ch.exchange_declare(
        NOTIFICATIONS_EXCHANGE.into(),
        ExchangeKind::Fanout,
        durable_exchange(),
        FieldTable::default(),
    )
    .await?;
    ch.exchange_declare(
        STATIONS_EXCHANGE.into(),
        ExchangeKind::Topic,
        durable_exchange(),
        FieldTable::default(),
    )
    .await?;
    ch.exchange_declare(
        DEAD_LETTER_EXCHANGE.into(),
        ExchangeKind::Fanout,
        durable_exchange(),
        FieldTable::default(),
    )
    .await?;
    ch.queue_declare(DEAD_LETTER_QUEUE.into(), durable_queue(), queue_args(qt))
        .await?;
    bind(ch, DEAD_LETTER_QUEUE, DEAD_LETTER_EXCHANGE, "").await?;
    for t in OrderType::ALL {
        for (q, priority) in kitchen_queues(t, qt) {
            let mut args = queue_args(qt);
            if qt == QueueType::Classic {
                args.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(10));
            }
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(DEAD_LETTER_EXCHANGE.into()),
            );
            ch.queue_declare(q.as_str().into(), durable_queue(), args)
                .await?;
            // The routing key ends with the order's priority (`events::routing_key`).
            let key = match priority {
                Some(p) => format!("kitchen.{t}.{p}"),
                None => format!("kitchen.{t}.*"),
            };
            bind(ch, q.as_str(), ORDERS_EXCHANGE, &key).await?;
        }
    }
    Ok(())
}

/// Binds `queue` to `exchange` with `key` (idempotent, like every declare here).
pub async fn bind(
    ch: &Channel,
    queue: &str,
    exchange: &str,
    key: &str,
) -> Result<(), lapin::Error> {
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
}

/// The display bridges' queue. One box: `display_bridge_queue`. Several
/// boxes (`[cluster] boxes`): one per box, `display_bridge_queue.HOST`, so
/// the bridge of every box feeds its own Mosquitto with every ticket, and a
/// screen that moves to another box finds the same board there
/// (docs/multi-box.md).
pub fn display_queue(several_boxes: bool, host: &str) -> String {
    if several_boxes {
        format!("{DISPLAY_QUEUE}.{host}")
    } else {
        DISPLAY_QUEUE.to_string()
    }
}

/// A display bridge's queue (`display_queue`): every order and every status
/// change, in the order they were published. Single active consumer: a second
/// bridge on it is a hot standby, never a second reader that could reorder events.
pub async fn declare_display_queue(
    ch: &Channel,
    qt: QueueType,
    queue: &str,
) -> Result<(), lapin::Error> {
    let mut args = queue_args(qt);
    args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    // A bridge switched off for good must not grow this queue without end. The
    // oldest updates go first; the board is rebuilt from the database anyway
    // (the snapshot on every MQTT connect), so nothing an order needs is lost.
    args.insert("x-max-length".into(), AMQPValue::LongInt(DISPLAY_QUEUE_MAX));
    ch.queue_declare(queue.into(), durable_queue(), args)
        .await?;
    bind(ch, queue, ORDERS_EXCHANGE, "kitchen.#").await?;
    bind(ch, queue, NOTIFICATIONS_EXCHANGE, "").await?;
    // Issue 24: part and rush changes (docs/stations.md), in publish order
    // with the rest.
    bind(ch, queue, STATIONS_EXCHANGE, "#").await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_kitchen_queues_are_one_per_priority_highest_first() {
        assert_eq!(
            kitchen_queues(OrderType::DineIn, QueueType::Classic),
            [("kitchen_dine_in_queue".to_string(), None)]
        );
        let q = kitchen_queues(OrderType::Takeout, QueueType::Quorum);
        let names: Vec<_> = q.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "kitchen_takeout_p10_queue",
                "kitchen_takeout_p5_queue",
                "kitchen_takeout_p1_queue"
            ]
        );
        assert!(queue_args(QueueType::Classic).inner().is_empty());
        assert_eq!(display_queue(false, "b1"), "display_bridge_queue");
        assert_eq!(display_queue(true, "b1"), "display_bridge_queue.b1");
    }
}
