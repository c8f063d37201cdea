//! Prometheus metrics (issue 14; every metric is described in docs/metrics.md).
//!
//! One process-wide recorder (`metrics-exporter-prometheus` without its own
//! HTTP listener): the parts record through the `metrics` macros, and the HTTP
//! edge renders the text for `GET /metrics` on our own listeners, behind the
//! same guard as every other read route. The names live here, once, so the
//! docs, the alert rules and the code cannot drift apart unnoticed.
//!
//! Recording before [`install`] (unit tests, the CLI) goes nowhere and costs
//! next to nothing.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// Orders stored by `POST /orders`, by `order_type`.
pub const ORDERS_CREATED: &str = "restaurant_orders_created_total";
/// Time from the request's headers to the answer, by `route` (the pattern, never
/// the raw path), `method` and `status`.
pub const HTTP_DURATION: &str = "restaurant_http_request_duration_seconds";
/// Messages waiting in the outbox (every process's rows), read by the relay.
pub const OUTBOX_PENDING: &str = "restaurant_outbox_pending";
/// Age of the oldest message waiting in the outbox (0 when empty).
pub const OUTBOX_OLDEST_AGE: &str = "restaurant_outbox_oldest_age_seconds";
/// One relay batch: publish and wait for the broker's confirms.
pub const RELAY_PUBLISH: &str = "restaurant_relay_publish_duration_seconds";
/// Orders this kitchen worker moved to `ready`, by `worker`.
pub const ORDERS_COOKED: &str = "restaurant_orders_cooked_total";
/// Ticket time: from `received` (the order stored) to `ready`, by `order_type`.
pub const TICKET_TIME: &str = "restaurant_ticket_time_seconds";
/// 1 while every link of this process to `link` (database, rabbitmq, mqtt) is up.
pub const LINK_UP: &str = "restaurant_link_up";
/// Kitchen workers whose heartbeat is fresh (from the workers table).
pub const WORKERS_ONLINE: &str = "restaurant_workers_online";
/// Display bridge: now minus the event time of the last message it applied.
pub const BRIDGE_LAG: &str = "restaurant_display_bridge_lag_seconds";

/// The Content-Type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Latency buckets (seconds) for HTTP requests and relay batches.
const FAST: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Ticket-time buckets (seconds): from a test kitchen's fraction of a second to an hour.
const TICKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1200.0, 1800.0, 3600.0,
];
/// Histogram samples are folded into buckets at each scrape, and at least this
/// often when nobody scrapes (bounded memory).
const UPKEEP: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls return the same
/// handle). None when another recorder is already installed.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = [HTTP_DURATION, RELAY_PUBLISH]
                .into_iter()
                .map(|name| (name, FAST))
                .chain([(TICKET_TIME, TICKETS)])
                .try_fold(PrometheusBuilder::new(), |b, (name, buckets)| {
                    b.set_buckets_for_metric(Matcher::Full(name.to_string()), buckets)
                });
            let handle = match builder.and_then(|b| b.install_recorder()) {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(action = "metrics_unavailable", error = %e, "Metrics recorder not installed");
                    return None;
                }
            };
            describe();
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP);
                    upkeep.run_upkeep();
                });
            Some(handle)
        })
        .as_ref()
}

/// The text for `GET /metrics` (empty when no recorder is installed).
pub fn render() -> String {
    HANDLE
        .get()
        .and_then(Option::as_ref)
        .map(PrometheusHandle::render)
        .unwrap_or_default()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(ORDERS_CREATED, "Orders stored by POST /orders");
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "HTTP request duration by route pattern, method and status"
    );
    describe_gauge!(OUTBOX_PENDING, "Messages waiting in the outbox");
    describe_gauge!(
        OUTBOX_OLDEST_AGE,
        Unit::Seconds,
        "Age of the oldest message waiting in the outbox"
    );
    describe_histogram!(
        RELAY_PUBLISH,
        Unit::Seconds,
        "Outbox relay: one batch published and confirmed by RabbitMQ"
    );
    describe_counter!(ORDERS_COOKED, "Orders a kitchen worker moved to ready");
    describe_histogram!(TICKET_TIME, Unit::Seconds, "Ticket time, received to ready");
    describe_gauge!(
        LINK_UP,
        "1 while every link of this process to the server is up"
    );
    describe_gauge!(WORKERS_ONLINE, "Kitchen workers with a fresh heartbeat");
    describe_gauge!(
        BRIDGE_LAG,
        Unit::Seconds,
        "Display bridge: now minus the event time of the last applied message"
    );
}

/// Exports the order service's counters at 0 for every order type, so a
/// counter exists from start-up and `increase()` sees the first order after a
/// restart (a series that appears at 1 has no earlier sample to rise from).
pub fn order_service_started() {
    for t in crate::domain::OrderType::ALL {
        metrics::counter!(ORDERS_CREATED, "order_type" => t.as_str()).increment(0);
    }
}

/// The same for a kitchen worker: its cooked counter exists at 0 from start-up.
pub fn worker_started(worker: &str) {
    metrics::counter!(ORDERS_COOKED, "worker" => worker.to_string()).increment(0);
}

/// A server a process links to: the `link` label of [`LINK_UP`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    Database,
    RabbitMq,
    Mqtt,
}

impl LinkKind {
    pub fn label(self) -> &'static str {
        match self {
            LinkKind::Database => "database",
            LinkKind::RabbitMq => "rabbitmq",
            LinkKind::Mqtt => "mqtt",
        }
    }
}

/// Per kind: links registered, and links up. A process may hold several links
/// to one server (the relay and the kitchen consumer); the gauge says 1 only
/// while all of them are up.
static LINKS: [(AtomicI64, AtomicI64); 2] = [
    (AtomicI64::new(0), AtomicI64::new(0)),
    (AtomicI64::new(0), AtomicI64::new(0)),
];

fn slot(kind: LinkKind) -> Option<&'static (AtomicI64, AtomicI64)> {
    match kind {
        LinkKind::RabbitMq => Some(&LINKS[0]),
        LinkKind::Mqtt => Some(&LINKS[1]),
        LinkKind::Database => None,
    }
}

/// A supervised link changed: `registered` and `up` are the changes (+1/-1/0).
pub fn link_changed(kind: LinkKind, registered: i64, up: i64) {
    let Some((all, ups)) = slot(kind) else {
        return;
    };
    let all = all.fetch_add(registered, Ordering::AcqRel) + registered;
    let ups = ups.fetch_add(up, Ordering::AcqRel) + up;
    if all > 0 {
        set_link(kind, ups >= all);
    }
}

/// Sets [`LINK_UP`] for `kind`.
pub fn set_link(kind: LinkKind, up: bool) {
    metrics::gauge!(LINK_UP, "link" => kind.label()).set(if up { 1.0 } else { 0.0 });
}

/// The label of a status code, without allocating for the usual ones.
pub fn status_label(status: u16) -> metrics::SharedString {
    let s: &'static str = match status {
        200 => "200",
        201 => "201",
        204 => "204",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        408 => "408",
        409 => "409",
        413 => "413",
        415 => "415",
        422 => "422",
        429 => "429",
        500 => "500",
        503 => "503",
        other => return metrics::SharedString::from(other.to_string()),
    };
    metrics::SharedString::const_str(s)
}

/// The label of a method: the usual ones, else "other" (bounded cardinality).
pub fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "POST" => "POST",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        _ => "other",
    }
}

/// The route pattern of a path, for the `route` label: order numbers and file
/// names become placeholders, unknown paths "other", so the label set stays
/// small whatever clients send.
pub fn route_label(path: &str) -> &'static str {
    crate::domain::access::Route::of_path(path).map_or("other", |r| r.pattern())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_patterns_never_raw_paths() {
        assert_eq!(route_label("/orders/ORD_20261202_001"), "/orders/{n}");
        assert_eq!(
            route_label("/orders/ORD_20261202_001/status"),
            "/orders/{n}/status"
        );
        assert_eq!(route_label("/orders/x/cancel"), "/orders/{n}/cancel");
        assert_eq!(route_label("/orders/x/bogus"), "other");
        assert_eq!(route_label("/orders"), "/orders");
        assert_eq!(route_label("/"), "other");
        assert_eq!(route_label("/metrics"), "/metrics");
        assert_eq!(route_label("/display/app.js"), "/display/{file}");
        assert_eq!(route_label("/a/b/c/d/e"), "other");
        assert_eq!(route_label("/ORD_20261202_001"), "other");
        assert_eq!(method_label("BREW"), "other");
        assert_eq!(status_label(200).as_ref(), "200");
        assert_eq!(status_label(418).as_ref(), "418");
    }
}
