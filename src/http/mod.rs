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

pub mod auth;
pub mod upgrade;

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

/// Accepts `X-Request-ID` when it is short and printable; otherwise makes one.
fn request_id(req: &Request<Incoming>) -> String {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(String::from)
        .unwrap_or_else(new_request_id)
}

pub fn new_request_id() -> String {
    format!("req-{:08x}", rand::random::<u32>())
}

/// A bound HTTP server; `addr` is the real port (tests bind port 0).
pub struct Server {
    pub addr: SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
}

/// Binds `addr` and serves `routes` until `shutdown`, then lets requests in
/// flight finish (for at most five seconds). With `tls`, a connection that
/// starts a TLS handshake is served over TLS, any other as plain HTTP (see
/// `crate::tls`).
pub async fn serve(
    addr: SocketAddr,
    routes: Arc<dyn Routes>,
    limits: Limits,
    tls: Option<Tls>,
    shutdown: CancellationToken,
) -> std::io::Result<Server> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let permits = Arc::new(Semaphore::new(limits.max_concurrent));
    let conns = Arc::new(Semaphore::new(limits.max_connections));
    // Connections over the limit are told 503 and closed rather than left in
    // the kernel's backlog (where a client sees only a timeout). Those are
    // bounded too: past as many again, accepting pauses.
    let shed = Arc::new(Semaphore::new(limits.max_connections));
    let span = tracing::Span::current();
    let task = tokio::spawn(
        async move {
            // Every connection's task, so that a stop waits for the requests in
            // flight (hyper-util's GracefulShutdown cannot watch a connection
            // that may be upgraded: the display's MQTT WebSocket is one).
            let open = TaskTracker::new();
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.timeout)
                .keep_alive(true);
            let mut shedder = builder.clone();
            shedder.keep_alive(false);
            loop {
                let stream = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            // Out of file descriptors and the like: wait, do not spin.
                            tracing::error!(action = "accept_failed", error = %e, "Accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let (stream, peer) = stream;
                let _ = stream.set_nodelay(true);
                if let Ok(slot) = conns.clone().try_acquire_owned() {
                    let conn = Conn {
                        routes: routes.clone(),
                        permits: permits.clone(),
                        limits,
                        peer,
                        span: tracing::Span::current(),
                        tls: tls.clone(),
                    };
                    let builder = builder.clone();
                    let stop = shutdown.clone();
                    open.spawn(async move {
                        conn.serve(stream, builder, stop).await;
                        drop(slot);
                    });
                } else {
                    let slot = tokio::select! {
                        _ = shutdown.cancelled() => break,
                        slot = shed.clone().acquire_owned() => match slot {
                            Ok(slot) => slot,
                            Err(_) => break,
                        },
                    };
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(
                            overloaded("too many open connections").into_response(),
                        )
                    });
                    // Told in plain HTTP: a TLS client sees the connection close.
                    let conn = shedder.serve_connection(TokioIo::new(stream), svc);
                    open.spawn(async move {
                        let _ = conn.await;
                        drop(slot);
                    });
                }
            }
            drop(listener);
            open.close();
            let _ = tokio::time::timeout(Duration::from_secs(5), open.wait()).await;
        }
        .instrument(span),
    );
    Ok(Server { addr, task })
}

/// One accepted connection and what serving it needs.
struct Conn {
    routes: Arc<dyn Routes>,
    permits: Arc<Semaphore>,
    limits: Limits,
    peer: SocketAddr,
    span: tracing::Span,
    tls: Option<Tls>,
}

impl Conn {
    async fn serve(
        self,
        stream: tokio::net::TcpStream,
        builder: hyper::server::conn::http1::Builder,
        stop: CancellationToken,
    ) {
        let Some(tls) = self.tls.clone() else {
            return self.http(TokioIo::new(stream), false, builder, stop).await;
        };
        match tls::starts_tls(&stream, self.limits.timeout).await {
            Some(true) => {
                let handshake = tls.acceptor().accept(stream);
                match tokio::time::timeout(self.limits.timeout, handshake).await {
                    Ok(Ok(stream)) => self.http(TokioIo::new(stream), true, builder, stop).await,
                    // A client that does not trust the certificate, or a scanner:
                    // nothing to answer, and not worth a line per connection.
                    Ok(Err(e)) => {
                        tracing::debug!(action = "tls_handshake_failed", source = %self.peer.ip(), error = %e, "TLS handshake failed")
                    }
                    Err(_) => {}
                }
            }
            Some(false) => self.http(TokioIo::new(stream), false, builder, stop).await,
            None => {}
        }
    }

    async fn http<I>(
        self,
        io: I,
        secure: bool,
        builder: hyper::server::conn::http1::Builder,
        stop: CancellationToken,
    ) where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let Conn {
            routes,
            permits,
            limits,
            peer,
            span,
            tls,
        } = self;
        let edge = Edge { peer, secure, tls };
        let svc = hyper::service::service_fn(move |req| {
            let routes = routes.clone();
            let permits = permits.clone();
            let span = span.clone();
            let edge = edge.clone();
            async move {
                Ok::<_, std::convert::Infallible>(
                    handle(req, edge, routes, permits, limits)
                        .instrument(span)
                        .await,
                )
            }
        });
        // With upgrades: the tracking service hands the display's MQTT
        // WebSocket on to the broker (`upgrade::pass_to`).
        let conn = builder.serve_connection(io, svc).with_upgrades();
        let mut conn = std::pin::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = stop.cancelled() => {}
        }
        // Stopping: finish the request in flight, then close.
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
    }
}

/// What a request's connection says about it.
#[derive(Clone)]
struct Edge {
    peer: SocketAddr,
    /// Whether it came over TLS.
    secure: bool,
    /// The listener's TLS, when it has one.
    tls: Option<Tls>,
}

/// The answer when the service is full: try again in a second.
fn overloaded(what: &str) -> ApiError {
    let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, what);
    e.retry_after = Some(1);
    e
}

async fn handle(
    req: Request<Incoming>,
    edge: Edge,
    routes: Arc<dyn Routes>,
    permits: Arc<Semaphore>,
    limits: Limits,
) -> Resp {
    let started = std::time::Instant::now();
    let peer = edge.peer;
    let matched = Route::of_path(req.uri().path());
    let route = matched.map_or("other", Route::pattern);
    let method = metrics::method_label(req.method().as_str());
    let rid = request_id(&req);
    let span = tracing::info_span!("request", request_id = %rid);
    let guard = routes.guard().cloned();
    // Kept for the CORS headers of the answer (the request itself moves on);
    // nothing is copied for requests without `Origin` (everything but browsers).
    let origin = guard
        .as_ref()
        .and_then(|_| req.headers().get("origin").cloned());
    let host = origin
        .as_ref()
        .and_then(|_| req.headers().get("host").cloned());
    let mut resp = async {
        tracing::debug!(
            action = "request_received",
            method = %req.method(),
            path = %req.uri().path(),
            "Request received"
        );
        if req.method() == Method::OPTIONS {
            if let Some(g) = &guard {
                return g.preflight(req.headers());
            }
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::NO_CONTENT;
            return r;
        }
        if let Some(refused) = plain_token_refusal(&req, &edge) {
            return refused.into_response();
        }
        if matched == Some(Route::CaCert) {
            return ca_certificate(&req, &edge);
        }
        // Who is calling, before any permit is taken: a flood of bad tokens is
        // slowed down without holding the slots real requests need.
        let caller = match &guard {
            Some(g) => {
                let seg = segments(&req);
                let seg: Vec<&str> = seg.iter().map(String::as_str).collect();
                match g
                    .check(req.method().as_str(), &seg, req.headers(), peer)
                    .await
                {
                    Ok(caller) => caller,
                    Err(resp) => return resp,
                }
            }
            None => crate::domain::access::Caller::Anonymous,
        };
        // Over the limit, a request waits for a slot (first come, first served),
        // but not for ever: an instant 503 makes clients retry at once, and the
        // refusals eat the CPU the requests in flight need. Health checks and
        // the metrics scrape never wait: a busy service is not a dead one, and
        // busy is when the metrics matter most.
        let _permit = if matches!(matched, Some(Route::Health | Route::Metrics)) {
            None
        } else {
            match tokio::time::timeout(limits.queue_timeout, permits.acquire()).await {
                Ok(Ok(permit)) => Some(permit),
                _ => return overloaded("too many requests in flight").into_response(),
            }
        };
        if matched == Some(Route::Metrics) && routes.metrics() {
            if req.method() != Method::GET {
                return ApiError::method_not_allowed("GET").into_response();
            }
            let mut r = Response::new(Full::new(Bytes::from(metrics::render())));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            return r;
        }
        let ctx = RequestCtx {
            request_id: rid.clone(),
            limits,
            caller,
            route: matched,
        };
        match routes.handle(req, ctx).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        }
    }
    .instrument(span)
    .await;
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&rid) {
        h.insert("x-request-id", v);
    }
    // The kitchen display page (served by the tracking service) calls the order
    // service from another origin (bump and recall): CORS for the allowed
    // origins only, never a wildcard.
    if let Some(g) = &guard {
        g.cors_headers(origin.as_ref(), host.as_ref(), h);
    }
    ::metrics::histogram!(
        metrics::HTTP_DURATION,
        "route" => route,
        "method" => method,
        "status" => metrics::status_label(resp.status().as_u16()),
    )
    .record(started.elapsed().as_secs_f64());
    resp
}

/// With TLS on, a token sent over plain HTTP from another host is refused
/// before it is even looked up: it crossed the LAN in clear, and accepting
/// it would teach clients that this works. On the box itself (loopback)
/// plain HTTP keeps working, as the seed's curl examples use it.
fn plain_token_refusal(req: &Request<Incoming>, edge: &Edge) -> Option<ApiError> {
    if edge.tls.is_none()
        || edge.secure
        || crate::domain::access::is_loopback(edge.peer.ip())
        || !req.headers().contains_key(hyper::header::AUTHORIZATION)
    {
        return None;
    }
    tracing::warn!(
        action = "plain_http_token_refused",
        source = %edge.peer.ip(),
        "A token over plain HTTP from another host was refused"
    );
    Some(
        ApiError::new(StatusCode::FORBIDDEN, "use https").with_details(vec![json!({
            "field": "Authorization",
            "message": "this box serves HTTPS on this port: send tokens over https:// only (the token was not accepted; docs/security.md)"
        })]),
    )
}

/// `GET /ca.crt`: the box's CA certificate, for devices to trust (public).
fn ca_certificate(req: &Request<Incoming>, edge: &Edge) -> Resp {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return ApiError::method_not_allowed("GET").into_response();
    }
    let Some(pem) = edge.tls.as_ref().and_then(Tls::ca_pem) else {
        return ApiError::not_found(
            "this box has no CA of its own ([tls] mode is not \"self-signed\")",
        )
        .into_response();
    };
    let mut r = Response::new(Full::new(Bytes::from(pem.as_bytes().to_vec())));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-pem-file"),
    );
    r.headers_mut().insert(
        hyper::header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"restaurant-system-ca.crt\""),
    );
    r
}

/// The request's route among those a service `serves`: 404 for any other
/// path, 405 (with `Allow`) for another method.
pub fn route_of(
    req: &Request<Incoming>,
    ctx: &RequestCtx,
    serves: &[Route],
) -> Result<Route, ApiError> {
    let route = ctx
        .route
        .filter(|r| serves.contains(r))
        .ok_or_else(|| ApiError::not_found("no such route"))?;
    if req.method().as_str() != route.method() {
        return Err(ApiError::method_not_allowed(route.method()));
    }
    Ok(route)
}

/// The route check of a port that serves only `GET /health`.
pub fn only_health(req: &Request<Incoming>, ctx: &RequestCtx) -> Result<(), ApiError> {
    route_of(req, ctx, &[Route::Health]).map(|_| ())
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
        "order_number": o.order_number,
        "customer_name": o.customer_name,
        "order_type": o.order_type,
        "table_number": o.table_number,
        "delivery_address": o.delivery_address,
        "notes": o.notes,
        "items": items,
        "total_amount": o.total_amount,
        "priority": o.priority,
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
