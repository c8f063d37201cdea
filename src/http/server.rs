//! Serving: the accept loop, each connection (plain or TLS, hyper's HTTP/1
//! with a header-read timeout), and the edge every request passes before its
//! service sees it (connection and request limits, the request id, the
//! access check, the metrics label, `/metrics` and `/ca.crt`).

use super::*;

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

/// Accepts `X-Request-ID` when it is short and printable; otherwise makes one.
fn request_id(req: &Request<Incoming>) -> String {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(String::from)
        .unwrap_or_else(new_request_id)
}
