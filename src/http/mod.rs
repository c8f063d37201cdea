//! The HTTP edge shared by every service that listens (the order API, the
//! tracking API and the display bridge's health port): the server loop, limits,
//! request ids, and the one mapping from an error to a JSON response.
//!
//! hyper 1 leaves the accept loop to us. Each connection is served by hyper's
//! HTTP/1 machinery with a header-read timeout (slow or idle clients are dropped);
//! requests beyond `max_concurrent` wait for a slot (first come, first served) for
//! up to `queue_timeout`, then get 503 with `Retry-After`; connections beyond
//! `max_connections` get one 503 and are closed; bodies are limited in size and
//! in time. Every response carries the request id, and
//! every 4xx/5xx is JSON `{"error": ..., "details": [...]}`.
//!
//! The files: `server` (the accept loop, each connection, the edge every
//! request passes), `auth` (who may call), `upgrade` (the WebSocket pass-through);
//! this file holds what the services use: the context, errors and answers.

pub mod auth;
mod server;
pub mod upgrade;

pub use server::{serve, Server};

use crate::domain::access::Route;
use crate::domain::error::Class;
use crate::process::metrics;
use crate::storage::StoreError;
use crate::tls::{self, Tls};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub type Resp = Response<Full<Bytes>>;

/// What a route gets besides the request.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    pub request_id: String,
    pub limits: Limits,
    /// Who is calling (`Anonymous` where the service has no guard).
    pub caller: crate::domain::access::Caller,
    /// The route the path matches, if any.
    pub route: Option<Route>,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_concurrent: usize,
    /// How long a request waits for one of the `max_concurrent` slots.
    pub queue_timeout: Duration,
    /// Open connections. Each holds at most one request (HTTP/1, no
    /// pipelining), so this also bounds the requests waiting for a slot.
    pub max_connections: usize,
    pub body_limit: usize,
    pub timeout: Duration,
}

/// A service: the order API, the tracking API or a health endpoint.
#[async_trait::async_trait]
pub trait Routes: Send + Sync + 'static {
    async fn handle(&self, req: Request<Incoming>, ctx: RequestCtx) -> Result<Resp, ApiError>;
    /// Who may call (issue 11). None: no checks and no CORS (the display
    /// bridge's health port).
    fn guard(&self) -> Option<&Arc<auth::Guard>> {
        None
    }
    /// Whether this listener answers `GET /metrics` (issue 14): every HTTP
    /// service does, except the second and third listener of `--mode=all`
    /// (one endpoint per process, one recorder).
    fn metrics(&self) -> bool {
        false
    }
}

/// An error answer. One place turns each kind into a status code and JSON.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: String,
    pub details: Vec<Value>,
    pub retry_after: Option<u64>,
    pub allow: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<String>) -> Self {
        ApiError {
            status,
            error: error.into(),
            details: Vec::new(),
            retry_after: None,
            allow: None,
        }
    }
    pub fn with_details(mut self, details: Vec<Value>) -> Self {
        self.details = details;
        self
    }
    pub fn not_found(what: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, what)
    }
    pub fn method_not_allowed(allow: &'static str) -> Self {
        let mut e = ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        e.allow = Some(allow);
        e
    }
    /// A server we depend on is down: try again shortly.
    pub fn unavailable(what: impl Into<String>) -> Self {
        let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, what);
        e.retry_after = Some(2);
        e
    }
    /// A real fault on our side. The client gets an opaque message; the cause is logged.
    pub fn internal() -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }

    fn into_response(self) -> Resp {
        let mut r = json_response(
            self.status,
            &json!({"error": self.error, "details": self.details}),
        );
        if let Some(s) = self.retry_after {
            r.headers_mut().insert("retry-after", HeaderValue::from(s));
        }
        if let Some(a) = self.allow {
            r.headers_mut().insert("allow", HeaderValue::from_static(a));
        }
        r
    }
}

pub fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Resp {
    // Serialising our own types cannot fail; fall back to an empty object regardless.
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

pub fn static_response(content_type: &'static str, body: &'static [u8]) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from_static(body)));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// The path split into segments: `/orders/X/status` -> ["orders", "X", "status"].
pub fn segments(req: &Request<Incoming>) -> Vec<String> {
    req.uri()
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// The value of query parameter `name` (the first one), percent-decoded. A `+`
/// stays a `+` (these are not form bodies: `+01:00` in a time means what it
/// says). None when absent or not UTF-8 after decoding.
pub fn query_param(query: Option<&str>, name: &str) -> Option<Result<String, ()>> {
    let raw = query?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)?
        .1;
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |at: usize| bytes.get(at).and_then(|&b| (b as char).to_digit(16));
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(String::from_utf8(out).map_err(|_| ()))
}

/// Reads a JSON body: 415 unless it is JSON, 413 over the limit, 408 when the
/// client is too slow, 400 when it does not parse.
pub async fn read_json(req: Request<Incoming>, ctx: &RequestCtx) -> Result<Value, ApiError> {
    let is_json = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        })
        .unwrap_or(false);
    if !is_json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        ));
    }
    let limited = Limited::new(req.into_body(), ctx.limits.body_limit);
    let collected = tokio::time::timeout(ctx.limits.timeout, limited.collect())
        .await
        .map_err(|_| ApiError::new(StatusCode::REQUEST_TIMEOUT, "request body too slow"))?;
    let bytes = match collected {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body exceeds {} bytes", ctx.limits.body_limit),
            ))
        }
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "could not read request body",
            ))
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed JSON").with_details(vec![json!({
            "field": "body", "message": e.to_string()
        })])
    })
}

pub fn new_request_id() -> String {
    format!("req-{:08x}", rand::random::<u32>())
}

/// The request's route among those a service `serves`: 404 for any other
/// path, 405 (with `Allow`) for another method.
pub fn route_of(
    req: &Request<Incoming>,
    ctx: &RequestCtx,
    serves: impl Fn(Route) -> bool,
) -> Result<Route, ApiError> {
    let route = ctx
        .route
        .filter(|r| serves(*r))
        .ok_or_else(|| ApiError::not_found("no such route"))?;
    if req.method().as_str() != route.method() {
        return Err(ApiError::method_not_allowed(route.method()));
    }
    Ok(route)
}

/// The route check of a port that serves only `GET /health`.
pub fn only_health(req: &Request<Incoming>, ctx: &RequestCtx) -> Result<(), ApiError> {
    route_of(req, ctx, |r| r == Route::Health).map(|_| ())
}

/// The database's line in `/health`: a ping, given 2 s.
pub async fn database_health(store: &crate::storage::SharedStore) -> Result<(), String> {
    match tokio::time::timeout(std::time::Duration::from_secs(2), store.ping()).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("database ping timed out".to_string()),
    }
}

/// The spec's health document; 503 when any check fails.
pub fn health_response(service: &str, checks: &[(&str, Result<(), String>)]) -> Resp {
    let healthy = checks.iter().all(|(_, r)| r.is_ok());
    let checks: serde_json::Map<String, Value> = checks
        .iter()
        .map(|(name, r)| {
            let v = match r {
                Ok(()) => "healthy".to_string(),
                Err(e) => format!("unhealthy: {e}"),
            };
            (name.to_string(), Value::String(v))
        })
        .collect();
    let body = json!({
        "status": if healthy { "healthy" } else { "unhealthy" },
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "service": service,
        "checks": checks,
    });
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, &body)
}

/// The OpenAPI document describing both HTTP services.
pub const OPENAPI: &[u8] = include_bytes!("../../docs/openapi.yaml");

/// 400 for something in a URL that is not an order number (not 404: it never could be one).
pub fn bad_order_number(number: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "malformed order number").with_details(vec![json!({
        "field": "order_number",
        "message": format!("'{}' is not of the form ORD_YYYYMMDD_NNN", number.chars().take(40).collect::<String>()),
    })])
}

/// The whole order as `GET /orders/{n}` answers it (and the station routes,
/// docs/stations.md): every field always present (null or empty), unlike the
/// messages, which leave out what an order does not have. `confirm` is
/// `[expo] confirm`, for `expo.waiting`.
pub fn whole_order(o: &crate::storage::OrderView, confirm: bool) -> Value {
    let items: Vec<_> = o
        .placed
        .items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let parts: Vec<_> = o
                .parts
                .iter()
                .filter(|p| p.item_index as usize == i)
                .map(|p| {
                    json!({
                        "station": p.station,
                        "state": p.state,
                        "started_at": p.started_at,
                        "started_by": p.started_by,
                        "bumped_at": p.bumped_at,
                        "bumped_by": p.bumped_by,
                    })
                })
                .collect();
            json!({
                "name": item.name,
                "quantity": item.quantity,
                "price": item.price,
                "notes": item.notes,
                "modifiers": item.modifiers,
                "allergens": item.allergens,
                "category": item.category,
                "stations": parts,
            })
        })
        .collect();
    let all_done = !o.parts.is_empty()
        && o.parts
            .iter()
            .all(|p| p.state == crate::domain::stations::PartState::Done);
    json!({
        "order_number": o.placed.order_number,
        "customer_name": o.placed.customer_name,
        "order_type": o.placed.order_type,
        "table_number": o.placed.table_number,
        "delivery_address": o.placed.delivery_address,
        "notes": o.notes,
        "items": items,
        "total_amount": o.placed.total_amount,
        "priority": o.placed.priority,
        "status": o.status,
        "processed_by": o.processed_by,
        "created_at": o.created_at,
        "updated_at": o.updated_at,
        "estimated_completion": o.estimated_completion,
        "version": o.version,
        "rush": o.rush,
        "expo": {
            "confirm": confirm,
            "waiting": confirm && all_done && o.status == crate::domain::OrderStatus::Cooking,
            "stations_done_at": o.stations_done_at,
        },
    })
}

/// A store failure as the answer, by its class (the one place that maps
/// them): 503 with Retry-After while the database is unreachable, 409 when the
/// order changed meanwhile, 404, else 500. The cause is logged; the client
/// gets no internals.
pub fn store_error(e: StoreError, action: &'static str, what: &str) -> ApiError {
    if e.is_busy() {
        // Load, not a fault: a warning, and the client told to come back.
        tracing::warn!(action, error = %e, "{what}");
        let mut busy = ApiError::unavailable("the database is busy, try again shortly");
        busy.retry_after = Some(1);
        return busy;
    }
    tracing::error!(action, error = %e, "{what}");
    match e.class() {
        Class::Transient => ApiError::unavailable("database unavailable, try again shortly"),
        Class::Conflict => ApiError::new(
            StatusCode::CONFLICT,
            "the order changed meanwhile; try again",
        ),
        Class::NotFound => ApiError::not_found("not found"),
        Class::Permanent => ApiError::internal(),
    }
}

#[cfg(test)]
mod tests {
    use super::query_param;

    #[test]
    fn query_params_are_percent_decoded() {
        let q = Some("from=2026-11-25T10%3A00%3A00%2B01%3A00&to=2026-11-26&x");
        assert_eq!(
            query_param(q, "from"),
            Some(Ok("2026-11-25T10:00:00+01:00".into()))
        );
        assert_eq!(query_param(q, "to"), Some(Ok("2026-11-26".into())));
        assert_eq!(query_param(q, "x"), Some(Ok(String::new())));
        assert_eq!(query_param(q, "y"), None);
        assert_eq!(query_param(None, "from"), None);
        assert_eq!(
            query_param(Some("a=1+2%zz%4"), "a"),
            Some(Ok("1+2%zz%4".into()))
        );
        assert_eq!(query_param(Some("a=%ff"), "a"), Some(Err(())));
    }
}
