//! The metrics port: what issue 14's metrics need besides the recording done
//! where things happen (the names and the recorder are `process::metrics`, the
//! one module of that name): the small HTTP listener of the modes that have none (a kitchen
//! worker, the notifier: `[metrics] port`, off by default), and the gauges read
//! from the database (the database link, the workers online).
//!
//! `GET /metrics` itself is answered by the HTTP edge (`http::handle`), behind
//! the process's guard, on whichever listener is the process's endpoint.

use crate::http::{self, health_response, ApiError, RequestCtx, Resp, Routes};
use crate::link::supervise::LinkState;
use crate::process::metrics::{self, LinkKind};
use crate::storage::SharedStore;
use hyper::body::Incoming;
use hyper::Request;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the database gauges are read.
const PROBE_EVERY: Duration = Duration::from_secs(5);

/// The metrics port of a kitchen worker or the notifier: `/metrics` and
/// `/health` only, behind the same guard as every API (a token from off the
/// box).
pub struct MetricsPort {
    pub service: &'static str,
    pub store: SharedStore,
    /// The mode's RabbitMQ consumer, for `/health`.
    pub rabbit: LinkState,
    pub guard: Arc<http::auth::Guard>,
}

#[async_trait::async_trait]
impl Routes for MetricsPort {
    async fn handle(&self, req: Request<Incoming>, ctx: RequestCtx) -> Result<Resp, ApiError> {
        http::only_health(&req, &ctx)?;
        let db = http::database_health(&self.store).await;
        let rabbit = self.rabbit.health("not connected to RabbitMQ");
        Ok(health_response(
            self.service,
            &[("database", db), ("rabbitmq", rabbit)],
        ))
    }

    fn guard(&self) -> Option<&Arc<http::auth::Guard>> {
        Some(&self.guard)
    }

    fn metrics(&self) -> bool {
        true
    }
}

/// Reads the database's gauges every few seconds until `shutdown`: the
/// database link (a ping) and the kitchen workers online (fresh heartbeat).
pub async fn probe(store: SharedStore, shutdown: CancellationToken) {
    loop {
        let ping = tokio::time::timeout(Duration::from_secs(2), store.ping()).await;
        metrics::set_link(LinkKind::Database, matches!(ping, Ok(Ok(()))));
        if let Ok(workers) = store.workers().await {
            let now = chrono::Utc::now();
            let online = workers.iter().filter(|w| w.is_online(now)).count();
            ::metrics::gauge!(metrics::WORKERS_ONLINE).set(online as f64);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(PROBE_EVERY) => {}
        }
    }
}
