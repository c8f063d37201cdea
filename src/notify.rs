//! The notification subscriber: prints every status change.
//!
//! Each subscriber declares its own exclusive, server-named queue bound to the
//! fanout exchange, so every running subscriber sees every notification (a shared
//! queue would split them between subscribers).

use crate::backoff::Backoff;
use crate::config::RabbitConfig;
use crate::domain::events::StatusUpdate;
use crate::messaging::topology::{self, NOTIFICATIONS_EXCHANGE};
use crate::messaging::{connect, LinkState, OutageLog};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicRejectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use std::io::Write;
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = "notification-subscriber";

/// One write per line so it never interleaves with log lines from other threads.
fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

pub struct Subscriber {
    pub rabbit: RabbitConfig,
    pub link: LinkState,
}

impl Subscriber {
    pub async fn run(self, shutdown: CancellationToken, ready: tokio::sync::oneshot::Sender<()>) {
        let mut ready = Some(ready);
        let mut backoff = Backoff::default();
        let mut outage = OutageLog::default();
        while !shutdown.is_cancelled() {
            match self.session(&shutdown, &mut outage, &mut ready).await {
                Ok(()) => break,
                Err(e) => {
                    self.link.set(false);
                    outage.failed("notification subscriber", &e, backoff.attempts());
                    if !backoff.wait(&shutdown).await {
                        break;
                    }
                    continue;
                }
            }
        }
        self.link.set(false);
    }

    async fn session(
        &self,
        shutdown: &CancellationToken,
        outage: &mut OutageLog,
        ready: &mut Option<tokio::sync::oneshot::Sender<()>>,
    ) -> Result<(), lapin::Error> {
        let conn = connect(&self.rabbit, SERVICE).await?;
        let ch = conn.create_channel().await?;
        topology::declare(&ch).await?;
        let q = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        ch.queue_bind(
            q.name().clone(),
            NOTIFICATIONS_EXCHANGE.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        let mut consumer = ch
            .basic_consume(
                q.name().clone(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        self.link.set(true);
        outage.connected(SERVICE, NOTIFICATIONS_EXCHANGE);
        if let Some(tx) = ready.take() {
            let _ = tx.send(());
        }
        loop {
            let d = tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = conn.close(200, "shutdown".into()).await;
                    return Ok(());
                }
                next = consumer.next() => match next {
                    Some(Ok(d)) => d,
                    Some(Err(e)) => return Err(e),
                    None => return Err(crate::messaging::connection_lost()),
                },
            };
            match StatusUpdate::decode(&d.data) {
                Ok(u) => {
                    tracing::debug!(
                        action = "notification_received",
                        order_number = %u.order_number,
                        new_status = %u.new_status,
                        "Received status update for order {}", u.order_number
                    );
                    print_line(&u.human_line());
                    d.ack(BasicAckOptions::default()).await?;
                }
                Err(e) => {
                    tracing::error!(action = "message_processing_failed", error = %e, "Unreadable notification dropped");
                    d.reject(BasicRejectOptions { requeue: false }).await?;
                }
            }
        }
    }
}
