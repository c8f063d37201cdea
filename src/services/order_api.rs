//! The order service's API: intake (`POST /orders`) and the front-of-house
//! transitions (complete = the display's bump, cancel, recall).

use crate::broker::relay::Relay;
use crate::domain::order::{is_order_number, validate};
use crate::domain::OrderStatus;
use crate::http::{
    bad_order_number, health_response, json_response, read_json, segments, static_response,
    store_error, ApiError, RequestCtx, Resp, Routes, OPENAPI,
};
use crate::process::metrics;
use crate::storage::{SharedStore, Transition, TransitionOutcome};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, LOCATION};
use hyper::{Method, Request, StatusCode};
use serde_json::json;

pub const SERVICE: &str = "order-service";

pub struct OrderApi {
    pub store: SharedStore,
    pub relay: Relay,
    pub guard: std::sync::Arc<crate::http::auth::Guard>,
}

#[async_trait::async_trait]
impl Routes for OrderApi {
    async fn handle(&self, req: Request<Incoming>, ctx: RequestCtx) -> Result<Resp, ApiError> {
        let seg = segments(&req);
        let seg: Vec<&str> = seg.iter().map(String::as_str).collect();
        match (req.method().clone(), seg.as_slice()) {
            (Method::POST, ["orders"]) => self.create(req, &ctx).await,
            (Method::POST, ["orders", n, action]) => {
                let to = match *action {
                    "complete" => OrderStatus::Completed,
                    "cancel" => OrderStatus::Cancelled,
                    "recall" => OrderStatus::Ready,
                    _ => return Err(ApiError::not_found("no such route")),
                };
                self.transition(n, to, &ctx).await
            }
            (_, ["orders"]) | (_, ["orders", _, "complete" | "cancel" | "recall"]) => {
                Err(ApiError::method_not_allowed("POST"))
            }
            (Method::GET, ["health"]) => Ok(self.health().await),
            (Method::GET, ["openapi.yaml"]) => Ok(static_response("application/yaml", OPENAPI)),
            (_, ["health"]) | (_, ["openapi.yaml"]) => Err(ApiError::method_not_allowed("GET")),
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
        tracing::debug!(
            action = "order_received",
            customer_name = %order.customer_name,
            order_type = %order.order_type,
            items = order.items.len(),
            "Valid order received"
        );
        let created = self
            .store
            .create_order(&order, &ctx.request_id, chrono::Utc::now())
            .await
            .map_err(|e| store_error(e, "db_transaction_failed", "Could not store the order"))?;
        // The order and its message are committed together; the relay publishes it.
        self.relay.wake();
        ::metrics::counter!(metrics::ORDERS_CREATED, "order_type" => order.order_type.as_str())
            .increment(1);
        tracing::info!(
            action = "order_created",
            order_number = %created.order_number,
            total_amount = created.total.as_f64(),
            order_priority = created.priority,
            "Order created successfully"
        );
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
        Ok(resp)
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
                        "order_number": order.order_number,
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

    async fn health(&self) -> Resp {
        let db = self.store.ping().await.map_err(|e| e.to_string());
        let mq = if self.relay.link().is_up() {
            Ok(())
        } else {
            Err("not connected".to_string())
        };
        health_response(SERVICE, &[("database", db), ("rabbitmq", mq)])
    }
}
