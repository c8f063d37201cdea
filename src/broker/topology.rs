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

use crate::domain::events::{NOTIFICATIONS_EXCHANGE, ORDERS_EXCHANGE, STATIONS_EXCHANGE};
use crate::domain::OrderType;
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

/// Exchanges (orders, notifications, stations), the dead-letter queue and the
/// three kitchen queues.
pub async fn declare(ch: &Channel) -> Result<(), lapin::Error> {
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
    ch.queue_declare(
        DEAD_LETTER_QUEUE.into(),
        durable_queue(),
        FieldTable::default(),
    )
    .await?;
    bind(ch, DEAD_LETTER_QUEUE, DEAD_LETTER_EXCHANGE, "").await?;
    for t in OrderType::ALL {
        let mut args = FieldTable::default();
        args.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(10));
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(DEAD_LETTER_EXCHANGE.into()),
        );
        let q = kitchen_queue(t);
        ch.queue_declare(q.as_str().into(), durable_queue(), args)
            .await?;
        bind(ch, q.as_str(), ORDERS_EXCHANGE, &format!("kitchen.{t}.*")).await?;
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

/// The display bridge's queue: every order and every status change, in the order
/// they were published. Single active consumer: a second bridge is a hot
/// standby, never a second reader that could reorder events.
pub async fn declare_display_queue(ch: &Channel) -> Result<(), lapin::Error> {
    let mut args = FieldTable::default();
    args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    // A bridge switched off for good must not grow this queue without end. The
    // oldest updates go first; the board is rebuilt from the database anyway
    // (the snapshot on every MQTT connect), so nothing an order needs is lost.
    args.insert("x-max-length".into(), AMQPValue::LongInt(DISPLAY_QUEUE_MAX));
    ch.queue_declare(DISPLAY_QUEUE.into(), durable_queue(), args)
        .await?;
    bind(ch, DISPLAY_QUEUE, ORDERS_EXCHANGE, "kitchen.#").await?;
    bind(ch, DISPLAY_QUEUE, NOTIFICATIONS_EXCHANGE, "").await?;
    // Issue 24: part and rush changes (docs/stations.md), in publish order
    // with the rest.
    bind(ch, DISPLAY_QUEUE, STATIONS_EXCHANGE, "#").await
}
