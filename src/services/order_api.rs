//! The order service's API: intake (`POST /orders`) and the front-of-house
//! transitions (complete = the display's bump, cancel, recall).

use crate::broker::relay::Relay;
use crate::domain::access::{Api, Caller, Route};
use crate::domain::business_day::BusinessDay;
use crate::domain::clock::{Behind, ClockFloor};
use crate::domain::idempotency;
use crate::domain::order::{is_order_number, validate};
use crate::domain::stations::{Action, Refusal, Routing};
use crate::domain::OrderStatus;
use crate::domain::ValidOrder;
use crate::http::{
    bad_order_number, health_response, json_response, read_json, route_of, segments,
    static_response, store_error, whole_order, ApiError, RequestCtx, Resp, Routes, OPENAPI,
};
use crate::process::failpoint;
use crate::process::metrics;
use crate::storage::{
    CreatedOrder, Durability, IdempotencyKey, KeyedOutcome, SharedStore, StationChange,
    StationOutcome, Transition, TransitionOutcome,
};
use chrono::{DateTime, Utc};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, LOCATION};
use hyper::{Request, StatusCode};
use serde_json::json;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = "order-service";

pub struct OrderApi {
    pub store: SharedStore,
    pub relay: Relay,
    pub guard: std::sync::Arc<crate::http::auth::Guard>,
    pub idempotency: Idempotency,
    /// The kitchen's stations (issue 24): routes items at intake, and the
    /// station routes' rules. None without stations.
    pub routing: Option<std::sync::Arc<Routing>>,
    /// Gives each order its business date (`[business]`, issue 26).
    pub business: BusinessDay,
    /// Orders wait while the clock is earlier than this (issue 26).
    pub clock: Arc<ClockFloor>,
}

/// Checks the clock against its floor, and says so in the journal and to
/// systemd once when it falls behind and once when it is right again (not once
/// per refused order).
pub fn check_clock(floor: &ClockFloor, now: DateTime<Utc>) -> Option<Behind> {
    let v = floor.check(now);
    if v.changed {
        match &v.behind {
            Some(b) => {
                tracing::error!(action = "clock_behind", error = %b.reason(), "Orders refused until the clock is right");
                crate::process::daemon::status("orders refused: the clock is not right yet");
            }
            None => {
                tracing::info!(action = "clock_right", "The clock is right; taking orders");
                crate::process::daemon::status("taking orders");
            }
        }
    }
    v.behind
}

/// Checks the clock every 2 s, so the journal says when it falls behind or is
/// set right even while no order comes in.
pub async fn watch_clock(floor: Arc<ClockFloor>, shutdown: CancellationToken) {
    loop {
        check_clock(&floor, chrono::Utc::now());
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// How `Idempotency-Key`s are kept (issue 14).
pub struct Idempotency {
    /// A key is remembered this long (`orders.idempotency_ttl_seconds`).
    pub ttl: chrono::Duration,
    /// Unix seconds of the last sweep of expired keys.
    last_sweep: AtomicI64,
}

impl Idempotency {
    pub fn new(ttl_seconds: u64) -> Self {
        Idempotency {
            ttl: chrono::Duration::seconds(i64::try_from(ttl_seconds).unwrap_or(i64::MAX / 1000)),
            last_sweep: AtomicI64::new(0),
        }
    }

    /// True at most once per sweep interval: SWEEP_EVERY, or the TTL when it is
    /// shorter (so a test's short TTL is swept too).
    fn sweep_due(&self, now: chrono::DateTime<chrono::Utc>) -> bool {
        let every = SWEEP_EVERY.min(self.ttl.num_seconds().max(1));
        let last = self.last_sweep.load(Ordering::Relaxed);
        now.timestamp() - last >= every
            && self
                .last_sweep
                .compare_exchange(last, now.timestamp(), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Expired keys are deleted by keyed intake at most this often (seconds): one
/// indexed delete, off the request's path.
const SWEEP_EVERY: i64 = 300;

/// The header telling a client its answer is a replay of an earlier request
/// (the same name as payment APIs use).
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

#[async_trait::async_trait]
impl Routes for OrderApi {
    async fn handle(&self, req: Request<Incoming>, ctx: RequestCtx) -> Result<Resp, ApiError> {
        let route = route_of(&req, &ctx, |r| r.served_by(Api::Orders))?;
        // The order number of `/orders/{n}/...`, and the station and item of
        // `/orders/{n}/stations/{station}/items/{i}/...`.
        let seg = segments(&req);
        let n = seg.get(1).cloned().unwrap_or_default();
        let station = seg.get(3).cloned().unwrap_or_default();
        let item = || item_index(seg.get(5).map_or("", String::as_str));
        match route {
            Route::CreateOrder => self.create(req, &ctx).await,
            Route::Complete => self.transition(&n, OrderStatus::Completed, &ctx).await,
            Route::Cancel => self.transition(&n, OrderStatus::Cancelled, &ctx).await,
            Route::Recall => self.transition(&n, OrderStatus::Ready, &ctx).await,
            Route::Health => Ok(self.health().await),
            Route::OpenApi => Ok(static_response("application/yaml", OPENAPI)),
            Route::ItemStart | Route::ItemBump | Route::ItemUndo => {
                let (item, st) = (item()?, station.clone());
                let action = match route {
                    Route::ItemStart => Action::Start { station: st, item },
                    Route::ItemBump => Action::Bump { station: st, item },
                    _ => Action::Undo { station: st, item },
                };
                self.station(&n, &station, action, req, &ctx).await
            }
            Route::StationBump => {
                let action = Action::BumpStation {
                    station: station.clone(),
                };
                self.station(&n, &station, action, req, &ctx).await
            }
            Route::ExpoConfirm => self.station(&n, EXPO_BY, Action::Confirm, req, &ctx).await,
            Route::Rush => {
                self.station(&n, EXPO_BY, Action::Rush(true), req, &ctx)
                    .await
            }
            _ => Err(ApiError::not_found("no such route")),
        }
    }

    fn guard(&self) -> Option<&std::sync::Arc<crate::http::auth::Guard>> {
        Some(&self.guard)
    }

    fn metrics(&self) -> bool {
        true
    }
}

impl OrderApi {
    async fn create(&self, req: Request<Incoming>, ctx: &RequestCtx) -> Result<Resp, ApiError> {
        let key = idempotency_key(&req)?;
        let body = read_json(req, ctx).await?;
        let order = validate(&body).map_err(|errors| {
            tracing::error!(
                action = "validation_failed",
                error = %errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; "),
                "Order rejected by validation"
            );
            ApiError::new(StatusCode::BAD_REQUEST, "validation failed").with_details(
                errors
                    .into_iter()
                    .map(|e| json!({"field": e.field, "message": e.message}))
                    .collect(),
            )
        })?;
        // Each item to its stations, once, at intake (docs/stations.md).
        let order = match &self.routing {
            Some(r) => r.route_order(order),
            None => order,
        };
        tracing::debug!(
            action = "order_received",
            customer_name = %order.customer_name,
            order_type = %order.order_type,
            items = order.items.len(),
            "Valid order received"
        );
        // Before the clock is right an order would get the wrong business date
        // and a time before its predecessors': refuse it, and say why.
        let now = chrono::Utc::now();
        if let Some(behind) = check_clock(&self.clock, now) {
            return Err(ApiError::unavailable(behind.reason()));
        }
        // Keys are not secrets, but log lines stay short: at most 16 characters.
        let shown = key.as_deref().map(idempotency::for_log);
        let (created, replayed) = match key {
            None => {
                let created = self
                    .store
                    .create_order(&order, &ctx.request_id, now, self.business.date(now))
                    .await
                    .map_err(|e| {
                        store_error(e, "db_transaction_failed", "Could not store the order")
                    })?;
                (created, false)
            }
            Some(key) => self.create_keyed(&order, &body, key, ctx, now).await?,
        };
        self.clock.raise(now);
        if !replayed {
            // The fault suite's "died between the commit and the answer".
            failpoint::hit("crash_after_commit");
            // The order and its message are committed together; the relay publishes it.
            self.relay.wake();
            // Counted once per order: a replayed key created nothing.
            ::metrics::counter!(metrics::ORDERS_CREATED, "order_type" => order.order_type.as_str())
                .increment(1);
            tracing::info!(
                action = "order_created",
                order_number = %created.order_number,
                total_amount = created.total.as_f64(),
                order_priority = created.priority,
                idempotency_key = shown.as_deref(),
                "Order created successfully"
            );
        }
        let mut resp = json_response(
            StatusCode::OK,
            &json!({
                "order_number": created.order_number,
                "status": OrderStatus::Received,
                "total_amount": created.total,
            }),
        );
        if let Ok(v) = HeaderValue::from_str(&format!("/orders/{}/status", created.order_number)) {
            resp.headers_mut().insert(LOCATION, v);
        }
        if replayed {
            resp.headers_mut()
                .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
        }
        Ok(resp)
    }

    /// Intake under an `Idempotency-Key`: the new order, or (replayed = true)
    /// the answer of the order this caller already made with this key and body.
    async fn create_keyed(
        &self,
        order: &ValidOrder,
        body: &serde_json::Value,
        key: String,
        ctx: &RequestCtx,
        now: DateTime<Utc>,
    ) -> Result<(CreatedOrder, bool), ApiError> {
        let scope = idempotency::scope(&ctx.caller);
        let shown = idempotency::for_log(&key);
        let k = IdempotencyKey {
            scope,
            key,
            request_hash: idempotency::request_hash(body),
            expires_at: now + self.idempotency.ttl,
        };
        if self.idempotency.sweep_due(now) {
            let store = self.store.clone();
            tokio::spawn(async move {
                match store.sweep_idempotency_keys(now).await {
                    Ok(n) => tracing::debug!(action = "idempotency_keys_swept", count = n),
                    Err(e) => tracing::warn!(action = "idempotency_sweep_failed", error = %e),
                }
            });
        }
        let outcome = self
            .store
            .create_order_keyed(order, &ctx.request_id, now, self.business.date(now), &k)
            .await
            .map_err(|e| store_error(e, "db_transaction_failed", "Could not store the order"))?;
        match outcome {
            KeyedOutcome::Created(c) => Ok((c, false)),
            KeyedOutcome::Replayed(c) => {
                tracing::info!(
                    action = "order_replayed",
                    order_number = %c.order_number,
                    idempotency_key = %shown,
                    "Repeated request answered with its original order"
                );
                Ok((c, true))
            }
            KeyedOutcome::Mismatch => {
                tracing::warn!(
                    action = "idempotency_key_reused",
                    idempotency_key = %shown,
                    "Idempotency-Key reused with another body"
                );
                Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Idempotency-Key was already used with a different request body",
                )
                .with_details(vec![json!({
                    "field": idempotency::HEADER,
                    "message": "a key can only repeat the request it was first sent with; use a new key for a new order",
                })]))
            }
        }
    }

    async fn transition(
        &self,
        number: &str,
        to: OrderStatus,
        ctx: &RequestCtx,
    ) -> Result<Resp, ApiError> {
        if !is_order_number(number) {
            return Err(bad_order_number(number));
        }
        let t = Transition {
            order_number: number.to_string(),
            to,
            changed_by: SERVICE.to_string(),
            request_id: ctx.request_id.clone(),
            now: chrono::Utc::now(),
            estimated_completion: None,
            notes: None,
            durability: Durability::Now,
        };
        let outcome = self.store.transition(&t).await.map_err(|e| {
            store_error(
                e,
                "db_transaction_failed",
                "Could not change the order's status",
            )
        })?;
        match outcome {
            TransitionOutcome::Applied { old, order } => {
                self.relay.wake();
                tracing::info!(
                    action = "order_status_changed",
                    order_number = %number,
                    old_status = %old,
                    new_status = %to,
                    "Order status changed"
                );
                Ok(json_response(
                    StatusCode::OK,
                    &json!({
                        "order_number": order.placed.order_number,
                        "old_status": old,
                        "status": order.status,
                        "updated_at": order.updated_at,
                    }),
                ))
            }
            TransitionOutcome::Rejected(e) => Err(ApiError::new(StatusCode::CONFLICT, e.to_string())
                .with_details(vec![json!({
                    "field": "status",
                    "message": format!("order is '{}'; allowed next: {}", e.current,
                        e.current.next_allowed().iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")),
                    "current_status": e.current,
                })])),
            TransitionOutcome::NotFound => Err(ApiError::not_found(format!("order {number} not found"))),
        }
    }

    /// The station and expo routes (issue 24, docs/stations.md). `station`
    /// is the station named in the route (`expo` for the expo's): unknown,
    /// 404; also the default name of who did it.
    async fn station(
        &self,
        number: &str,
        station: &str,
        mut action: Action,
        req: Request<Incoming>,
        ctx: &RequestCtx,
    ) -> Result<Resp, ApiError> {
        if !is_order_number(number) {
            return Err(bad_order_number(number));
        }
        let Some(routing) = &self.routing else {
            return Err(refused(
                StatusCode::CONFLICT,
                "stations_not_configured",
                "this kitchen has no stations ([stations] in the config)".into(),
            ));
        };
        if station != EXPO_BY && !routing.is_station(station) {
            return Err(ApiError::not_found(format!("no station '{station}'")));
        }
        // An optional body: {"by": NAME} (and {"rush": false} for the rush route).
        let body = if req.headers().contains_key(hyper::header::CONTENT_TYPE) {
            Some(read_json(req, ctx).await?)
        } else {
            None
        };
        let field = |name: &str| {
            body.as_ref()
                .and_then(|b| b.get(name))
                .filter(|v| !v.is_null())
        };
        if let Some(b) = &body {
            let known = ["by", "rush"];
            if let Some(k) = b
                .as_object()
                .and_then(|o| o.keys().find(|k| !known.contains(&k.as_str())))
            {
                return Err(bad_field(k, "unknown field"));
            }
            if !b.is_object() {
                return Err(bad_field("body", "must be a JSON object"));
            }
        }
        let by = match field("by") {
            None => match &ctx.caller {
                Caller::Token { name, .. } => name.clone(),
                _ => station.to_string(),
            },
            Some(serde_json::Value::String(s)) if crate::domain::is_plain_name(s) => s.clone(),
            Some(_) => {
                return Err(bad_field(
                    "by",
                    "must be 1-64 ASCII letters, digits, '_', '-' or '.'",
                ))
            }
        };
        match (field("rush"), &mut action) {
            (None, _) => {}
            (Some(serde_json::Value::Bool(on)), Action::Rush(r)) => *r = *on,
            (Some(_), Action::Rush(_)) => return Err(bad_field("rush", "must be true or false")),
            (Some(_), _) => return Err(bad_field("rush", "unknown field")),
        }
        let change = StationChange {
            order_number: number.to_string(),
            action,
            by,
            request_id: ctx.request_id.clone(),
            now: chrono::Utc::now(),
        };
        let outcome = self
            .store
            .station_change(&change, routing)
            .await
            .map_err(|e| store_error(e, "db_transaction_failed", "Could not change the order"))?;
        match outcome {
            StationOutcome::Applied { order, changed } => {
                if changed {
                    self.relay.wake();
                    tracing::info!(
                        action = "order_station_changed",
                        order_number = %number,
                        change = ?change.action,
                        changed_by = %change.by,
                        status = %order.status,
                        "Order changed at a station"
                    );
                }
                let mut body = whole_order(&order, routing.confirm);
                body["changed"] = json!(changed);
                Ok(json_response(StatusCode::OK, &body))
            }
            StationOutcome::NotFound => {
                Err(ApiError::not_found(format!("order {number} not found")))
            }
            StationOutcome::Refused(r) => Err(match &r {
                Refusal::ItemNotAtStation { .. } | Refusal::NothingAtStation(_) => {
                    refused(StatusCode::NOT_FOUND, "item_not_at_station", r.to_string())
                }
                Refusal::OrderClosed(_) => {
                    refused(StatusCode::CONFLICT, "order_closed", r.to_string())
                }
                Refusal::UndoTooLate(_) => {
                    refused(StatusCode::CONFLICT, "undo_too_late", r.to_string())
                }
                Refusal::ExpoNotWaiting => {
                    refused(StatusCode::CONFLICT, "expo_not_waiting", r.to_string())
                }
            }),
        }
    }

    async fn health(&self) -> Resp {
        let db = self.store.ping().await.map_err(|e| e.to_string());
        let mq = if self.relay.link().is_up() {
            Ok(())
        } else {
            Err("not connected".to_string())
        };
        let clock = match check_clock(&self.clock, chrono::Utc::now()) {
            Some(b) => Err(b.reason()),
            None => Ok(()),
        };
        health_response(
            SERVICE,
            &[("database", db), ("rabbitmq", mq), ("clock", clock)],
        )
    }
}

/// The request's `Idempotency-Key`, if any; 400 when it is not a valid key.
fn idempotency_key(req: &Request<Incoming>) -> Result<Option<String>, ApiError> {
    let mut values = req.headers().get_all(idempotency::HEADER).iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    let bad = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid {} header", idempotency::HEADER),
        )
        .with_details(vec![json!({
            "field": idempotency::HEADER,
            "message": idempotency::KEY_RULE,
        })])
    };
    if values.next().is_some() {
        return Err(bad());
    }
    idempotency::parse_key(v.as_bytes())
        .map(|k| Some(k.to_string()))
        .ok_or_else(bad)
}

/// Who the expo routes say did it, without a `by` or a token.
const EXPO_BY: &str = crate::domain::stations::EXPO;

/// A refusal of a station route: its stable code in `details[0].code`.
fn refused(status: StatusCode, code: &str, message: String) -> ApiError {
    ApiError::new(status, message.clone()).with_details(vec![
        json!({"field": "order", "message": message, "code": code}),
    ])
}

fn bad_field(field: &str, message: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad request")
        .with_details(vec![json!({"field": field, "message": message})])
}

/// An item's place in the order, from the URL: 0-19.
fn item_index(s: &str) -> Result<i32, ApiError> {
    s.parse::<i32>()
        .ok()
        .filter(|i| (0..crate::domain::order::MAX_ITEMS as i32).contains(i))
        .ok_or_else(|| bad_field("item", "must be an item's place in the order, 0-19"))
}
