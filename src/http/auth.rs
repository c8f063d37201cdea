//! The HTTP edge of issue 11: who is calling, may they, and which browser
//! origins may read the answer. The rules are in `domain::access`; this module
//! reads headers, looks tokens up, slows down failed attempts and logs them.
//!
//! Tokens are looked up in an in-memory copy of `api_tokens`, re-read when it
//! is older than `MAX_AGE`: a revoked token stops working within a second, in
//! every running service, without a restart, and a busy service reads the
//! table at most twice a second. An unknown token makes it look again (at most
//! every `MISS_RELOAD`), so a token just made works at once. Requests without a
//! token never touch it. One request at a time re-reads the table; the others
//! go on with the current copy meanwhile, so a slow database delays one
//! request, not every request with a token.

use super::{json_response, ApiError, Resp};
use crate::domain::access::{
    self, hash_token, hashes_equal, Access, Caller, Credential, Decision, Facts, Policy, Role,
    Throttle,
};
use crate::storage::SharedStore;
use chrono::{DateTime, Utc};
use hyper::header::{HeaderMap, HeaderValue};
use hyper::StatusCode;
use serde_json::json;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How old the copy of the token table may get (revocation takes effect within this).
const MAX_AGE: Duration = Duration::from_millis(500);
/// How often `last_used_at` is written back (at most).
/// How often an unknown token may make the guard re-read the token table.
const MISS_RELOAD: Duration = Duration::from_millis(100);
const TOUCH_EVERY: Duration = Duration::from_secs(10);

/// What the edge needs from the config.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub policy: Policy,
    /// `[security] allowed_origins`, besides the box's own display page.
    pub allowed_origins: Vec<String>,
    /// The tracking service's port (the display page's origin), from the config.
    pub display_port: u16,
}

/// One process's guard, shared by its HTTP services.
pub struct Guard {
    store: SharedStore,
    settings: AuthSettings,
    /// The tracking port actually bound (config port 0 in tests: known only then).
    display_port: AtomicU16,
    /// Never held across an await: a request only copies what it needs.
    cache: Mutex<Cache>,
    /// Held by the one request that re-reads the token table.
    reloading: tokio::sync::Mutex<()>,
    throttle: Mutex<Throttle>,
}

#[derive(Default)]
struct Cache {
    /// (name, role, hash) of every token.
    rows: Vec<(String, Role, String)>,
    loaded: Option<Instant>,
    used: HashMap<String, DateTime<Utc>>,
    touched: Option<Instant>,
}

impl Cache {
    /// The name and role of the token with this hash. Compares with every row,
    /// without stopping at a match: the time taken does not depend on which
    /// token (if any) matched.
    fn find(&self, presented: &str) -> Option<(String, Role)> {
        self.rows.iter().fold(None, |found, (name, role, hash)| {
            if hashes_equal(hash, presented) {
                Some((name.clone(), *role))
            } else {
                found
            }
        })
    }
}

impl Guard {
    pub fn new(store: SharedStore, settings: AuthSettings) -> Arc<Guard> {
        Arc::new(Guard {
            store,
            display_port: AtomicU16::new(settings.display_port),
            settings,
            cache: Mutex::new(Cache::default()),
            reloading: tokio::sync::Mutex::new(()),
            throttle: Mutex::new(Throttle::default()),
        })
    }

    /// Called once the tracking service listens, with its real port.
    pub fn set_display_port(&self, port: u16) {
        self.display_port.store(port, Ordering::Relaxed);
    }

    /// Who presented this token: a known token, or Rejected. Err when the
    /// token table cannot be read (the database is down): no answer is safer
    /// than a stale one that may still hold a revoked token.
    async fn lookup(&self, token: &str) -> Result<Caller, ApiError> {
        let presented = hash_token(token);
        if self.older_than(MAX_AGE) {
            self.reload(MAX_AGE, false).await?;
        }
        let mut found = self.cache().find(&presented);
        // A token made a moment ago by `token create` is not in a cache loaded
        // before it: look again, at most every MISS_RELOAD, so that a new device
        // pairs at once while a stream of wrong tokens costs few reads.
        if found.is_none() && self.older_than(MISS_RELOAD) {
            self.reload(MISS_RELOAD, true).await?;
            found = self.cache().find(&presented);
        }
        Ok(match found {
            Some((name, role)) => {
                self.cache().used.insert(name.clone(), Utc::now());
                Caller::Token { name, role }
            }
            None => Caller::Rejected,
        })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn older_than(&self, age: Duration) -> bool {
        self.cache().loaded.is_none_or(|t| t.elapsed() > age)
    }

    /// Re-reads the token table unless another request is doing it: then the
    /// caller goes on with the current copy, or waits for the new one when
    /// there is none yet or it asks to (`wait`, for an unknown token).
    async fn reload(&self, max_age: Duration, wait: bool) -> Result<(), ApiError> {
        let _reloading = match self.reloading.try_lock() {
            Ok(g) => g,
            Err(_) if !wait && self.cache().loaded.is_some() => return Ok(()),
            Err(_) => self.reloading.lock().await,
        };
        // Re-read meanwhile by the request we waited for.
        if !self.older_than(max_age) {
            return Ok(());
        }
        let rows = self.store.tokens().await.map_err(|e| {
            tracing::error!(action = "token_table_unreadable", error = %e, "Cannot read the token table");
            ApiError::unavailable("database unavailable, try again shortly")
        })?;
        let mut cache = self.cache();
        cache.rows = rows
            .into_iter()
            .map(|r| (r.name, r.role, r.token_hash))
            .collect();
        cache.loaded = Some(Instant::now());
        self.flush_used(&mut cache);
        Ok(())
    }

    /// Writes `last_used_at` back now and then, off the request's path.
    fn flush_used(&self, cache: &mut Cache) {
        if cache.used.is_empty() || cache.touched.is_some_and(|t| t.elapsed() < TOUCH_EVERY) {
            return;
        }
        cache.touched = Some(Instant::now());
        let used: Vec<_> = cache.used.drain().collect();
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.touch_tokens(&used).await {
                tracing::warn!(action = "token_touch_failed", error = %e, "Could not record token use");
            }
        });
    }

    /// Decides one request. Ok(caller) to go on; Err(response) to answer at once.
    pub async fn check(
        &self,
        method: &str,
        seg: &[&str],
        headers: &HeaderMap,
        peer: SocketAddr,
    ) -> Result<Caller, Resp> {
        let access_class = access::classify(method, seg);
        let origin = headers.get("origin").and_then(|v| v.to_str().ok());
        if let Some(o) = origin {
            if access_class != Access::Open && !self.origin_allowed(o, headers) {
                tracing::warn!(
                    action = "origin_refused",
                    source = %peer.ip(),
                    origin = %o.chars().take(100).collect::<String>(),
                    "Request from a web page of a foreign origin refused"
                );
                return Err(error(
                    StatusCode::FORBIDDEN,
                    "origin not allowed",
                    "this web page's origin is not in [security] allowed_origins",
                ));
            }
        }
        let credential = access::parse_authorization(
            headers
                .get(hyper::header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
        );
        let caller = match credential {
            Credential::None => Caller::Anonymous,
            Credential::Malformed => Caller::Rejected,
            Credential::Bearer(t) => self.lookup(&t).await.map_err(|e| e.into_response())?,
        };
        let facts = Facts {
            loopback: access::is_loopback(peer.ip()),
            forwarded: headers.contains_key("forwarded") || headers.contains_key("x-forwarded-for"),
            browser: origin.is_some(),
            caller,
        };
        match access::decide(access_class, &facts, self.settings.policy) {
            Decision::Allow => {
                if let Caller::Token { name, role } = &facts.caller {
                    self.throttle_lock().success(peer.ip());
                    // The audit trail: which token changed what (joined to the
                    // request's other lines by its request id).
                    if access_class.changes_state() {
                        tracing::info!(
                            action = "request_authorized",
                            source = %peer.ip(),
                            token_name = %name,
                            role = %role,
                            method,
                            path = %seg.join("/"),
                            "Change requested with a token"
                        );
                    }
                }
                Ok(facts.caller)
            }
            Decision::Unauthorized(why) => {
                if facts.caller == Caller::Rejected {
                    self.failed(peer.ip(), why).await;
                } else {
                    tracing::info!(
                        action = "auth_required",
                        source = %peer.ip(),
                        method,
                        path = %seg.join("/"),
                        "Request without a token refused"
                    );
                }
                let mut r = error(StatusCode::UNAUTHORIZED, why, access::HOW_TO_GET_A_TOKEN);
                r.headers_mut().insert(
                    "www-authenticate",
                    HeaderValue::from_static("Bearer realm=\"restaurant-system\""),
                );
                Err(r)
            }
            Decision::NoSuchRoute => {
                tracing::info!(
                    action = "unclassified_route_refused",
                    source = %peer.ip(),
                    method,
                    path = %seg.join("/").chars().take(200).collect::<String>(),
                    "Request to a route without an access class refused"
                );
                Err(json_response(
                    StatusCode::NOT_FOUND,
                    &json!({"error": "no such route", "details": [{"field": "route",
                        "message": "this method and path are not a route of this service"}]}),
                ))
            }
            Decision::Forbidden { role, allowed } => {
                let name = match &facts.caller {
                    Caller::Token { name, .. } => name.as_str(),
                    _ => "",
                };
                tracing::warn!(
                    action = "auth_forbidden",
                    source = %peer.ip(),
                    token_name = name,
                    role = %role,
                    method,
                    path = %seg.join("/"),
                    "Token's role may not do this"
                );
                let allowed: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
                Err(error(
                    StatusCode::FORBIDDEN,
                    &format!("role '{role}' may not do this"),
                    &format!("allowed roles: {}", allowed.join(", ")),
                ))
            }
        }
    }

    /// A failed attempt: logged with its source (never the token) and answered late.
    async fn failed(&self, ip: IpAddr, why: &str) {
        let (delay, n) = self.throttle_lock().failure(ip, Instant::now());
        tracing::warn!(
            action = "auth_failed",
            source = %ip,
            reason = why,
            failures = n,
            delay_ms = delay.as_millis() as u64,
            "Request with an invalid token refused"
        );
        tokio::time::sleep(delay).await;
    }

    fn throttle_lock(&self) -> std::sync::MutexGuard<'_, Throttle> {
        self.throttle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn origin_allowed(&self, origin: &str, headers: &HeaderMap) -> bool {
        access::origin_allowed(
            origin,
            headers.get("host").and_then(|v| v.to_str().ok()),
            self.display_port.load(Ordering::Relaxed),
            &self.settings.allowed_origins,
        )
    }

    /// CORS headers for an answer to a request from `origin` (only when it is
    /// allowed); `host` is the request's `Host`.
    pub fn cors_headers(
        &self,
        origin: Option<&HeaderValue>,
        host: Option<&HeaderValue>,
        resp_headers: &mut HeaderMap,
    ) {
        resp_headers.insert("vary", HeaderValue::from_static("Origin"));
        let Some(origin) = origin else {
            return;
        };
        let allowed = origin.to_str().is_ok_and(|o| {
            access::origin_allowed(
                o,
                host.and_then(|h| h.to_str().ok()),
                self.display_port.load(Ordering::Relaxed),
                &self.settings.allowed_origins,
            )
        });
        if !allowed {
            return;
        }
        resp_headers.insert("access-control-allow-origin", origin.clone());
        resp_headers.insert(
            "access-control-allow-methods",
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        resp_headers.insert(
            "access-control-allow-headers",
            HeaderValue::from_static("authorization, content-type, x-request-id, idempotency-key"),
        );
        resp_headers.insert(
            "access-control-expose-headers",
            HeaderValue::from_static("x-request-id, location, idempotent-replayed"),
        );
        resp_headers.insert("access-control-max-age", HeaderValue::from_static("600"));
    }

    /// The answer to a CORS preflight: 204 for an allowed origin (the headers
    /// are added by `cors_headers`), 403 JSON for any other.
    pub fn preflight(&self, headers: &HeaderMap) -> Resp {
        match headers.get("origin").and_then(|v| v.to_str().ok()) {
            Some(o) if !self.origin_allowed(o, headers) => error(
                StatusCode::FORBIDDEN,
                "origin not allowed",
                "this web page's origin is not in [security] allowed_origins",
            ),
            _ => {
                let mut r = Resp::new(http_body_util::Full::new(bytes::Bytes::new()));
                *r.status_mut() = StatusCode::NO_CONTENT;
                r
            }
        }
    }
}

fn error(status: StatusCode, error: &str, how: &str) -> Resp {
    json_response(
        status,
        &json!({"error": error, "details": [{"field": "authorization", "message": how}]}),
    )
}
