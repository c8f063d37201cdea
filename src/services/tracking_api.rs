//! The tracking service's API: read-only views of orders and workers, the
//! speed-of-service report, plus the kitchen display page and the customer
//! order board (static files embedded in the binary).

use crate::domain::access::{Api, Route};
use crate::domain::access::{Caller, Role, HOW_TO_GET_A_TOKEN};
use crate::domain::order::is_order_number;
use crate::domain::speed;
use crate::domain::stations::Routing;
use crate::http::{
    bad_order_number, health_response, json_response, query_param, route_of, segments,
    static_response, store_error, whole_order, ApiError, RequestCtx, Resp, Routes, OPENAPI,
};
use crate::process::config::DisplayConfig;
use crate::storage::{SharedStore, StoreError};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::json;

pub const SERVICE: &str = "tracking-service";

pub struct TrackingApi {
    pub store: SharedStore,
    pub display: DisplayConfig,
    pub mqtt_prefix: String,
    pub mqtt_site: String,
    pub guard: std::sync::Arc<crate::http::auth::Guard>,
    /// Whether this listener is the process's `/metrics` endpoint.
    pub metrics: bool,
    /// The kitchen's stations (issue 24); None without stations.
    pub routing: Option<std::sync::Arc<Routing>>,
    /// The speed report's default range is the current business day.
    pub business: crate::domain::business_day::BusinessDay,
    /// Mosquitto's WebSocket listener (`host:port`), which `GET /mqtt` passes
    /// a screen's connection on to (issue 27: wss on the page's own origin).
    pub mqtt_ws: String,
    /// The process's TLS: the pairing form shows the CA's fingerprint to compare.
    pub tls: Option<crate::tls::Tls>,
    /// Every box serving the kitchen (`[cluster] boxes`): a screen whose box
    /// dies carries on from the next one.
    pub boxes: Vec<String>,
}

/// The display page: our own files from `web/src/`, and the MQTT client that
/// `web/build.sh` copies from the pinned npm package into `web/dist/`.
const PAGE: &[(&str, &str, &[u8])] = &[
    (
        "",
        "text/html; charset=utf-8",
        include_bytes!("../../web/src/index.html"),
    ),
    (
        "display.js",
        "text/javascript",
        include_bytes!("../../web/src/display.js"),
    ),
    (
        "display.css",
        "text/css",
        include_bytes!("../../web/src/display.css"),
    ),
    (
        "mqtt.min.js",
        "text/javascript",
        include_bytes!("../../web/dist/mqtt.min.js"),
    ),
];

/// The customer order board (`/board`): its own files, and the same MQTT client.
const BOARD: &[(&str, &str, &[u8])] = &[
    (
        "",
        "text/html; charset=utf-8",
        include_bytes!("../../web/src/board.html"),
    ),
    (
        "board.js",
        "text/javascript",
        include_bytes!("../../web/src/board.js"),
    ),
    (
        "board.css",
        "text/css",
        include_bytes!("../../web/src/board.css"),
    ),
    (
        "mqtt.min.js",
        "text/javascript",
        include_bytes!("../../web/dist/mqtt.min.js"),
    ),
];

#[async_trait::async_trait]
impl Routes for TrackingApi {
    async fn handle(&self, req: Request<Incoming>, ctx: RequestCtx) -> Result<Resp, ApiError> {
        let route = route_of(&req, &ctx, |r| r.served_by(Api::Tracking))?;
        // The order number or file name: the path's second segment.
        let arg = segments(&req).get(1).cloned().unwrap_or_default();
        match route {
            Route::OrderStatus => self.status(&arg).await,
            Route::OrderHistory => self.history(&arg).await,
            Route::Order => self.whole_order(&arg).await,
            Route::SpeedOfService => self.speed_of_service(req.uri().query()).await,
            Route::Board => file(BOARD, "").ok_or_else(|| ApiError::not_found("no such file")),
            Route::BoardFile => {
                file(BOARD, &arg).ok_or_else(|| ApiError::not_found("no such file"))
            }
            Route::Workers => self.workers().await,
            Route::Stations => Ok(self.stations()),
            Route::Tickets => self.tickets(req.uri().query()).await,
            Route::Health => Ok(self.health().await),
            Route::DisplayFile if arg == "config.json" => self.display_config(&ctx.caller),
            Route::Display => Ok(page("")),
            Route::DisplayFile => PAGE
                .iter()
                .find(|(name, _, _)| *name == arg)
                .map(|(name, _, _)| page(name))
                .ok_or_else(|| ApiError::not_found("no such file")),
            Route::OpenApi => Ok(static_response("application/yaml", OPENAPI)),
            Route::MqttWs => {
                crate::http::upgrade::pass_to(req, &self.mqtt_ws, ctx.limits.timeout).await
            }
            _ => Err(ApiError::not_found("no such route")),
        }
    }

    fn guard(&self) -> Option<&std::sync::Arc<crate::http::auth::Guard>> {
        Some(&self.guard)
    }

    fn metrics(&self) -> bool {
        self.metrics
    }
}

fn file(files: &[(&str, &'static str, &'static [u8])], name: &str) -> Option<Resp> {
    files
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, ct, body)| static_response(ct, body))
}

fn page(name: &str) -> Resp {
    file(PAGE, name).unwrap_or_else(|| static_response(PAGE[0].1, PAGE[0].2))
}

/// 400 for something that is not an order number (before any query).
fn checked(number: &str) -> Result<(), ApiError> {
    if is_order_number(number) {
        Ok(())
    } else {
        Err(bad_order_number(number))
    }
}

/// The store's answer about order `number`: the value, 404, or the store error.
fn found<T>(
    number: &str,
    answer: Result<Option<T>, StoreError>,
    query: &str,
) -> Result<T, ApiError> {
    answer
        .map_err(|e| store_error(e, "db_query_failed", &format!("{query} query failed")))?
        .ok_or_else(|| ApiError::not_found(format!("order {number} not found")))
}

impl TrackingApi {
    async fn status(&self, number: &str) -> Result<Resp, ApiError> {
        checked(number)?;
        let order = found(number, self.store.order(number).await, "Order status")?;
        Ok(json_response(
            StatusCode::OK,
            &json!({
                "order_number": order.placed.order_number,
                "current_status": order.status,
                "updated_at": order.updated_at,
                "estimated_completion": order.estimated_completion,
                "processed_by": order.processed_by,
            }),
        ))
    }

    async fn history(&self, number: &str) -> Result<Resp, ApiError> {
        checked(number)?;
        let history = found(number, self.store.history(number).await, "Order history")?;
        Ok(json_response(StatusCode::OK, &history))
    }

    /// The whole order: what was ordered, with the kitchen details, and where it is.
    async fn whole_order(&self, number: &str) -> Result<Resp, ApiError> {
        if !is_order_number(number) {
            return Err(bad_order_number(number));
        }
        let o = self
            .store
            .order(number)
            .await
            .map_err(|e| store_error(e, "db_query_failed", "Order query failed"))?
            .ok_or_else(|| ApiError::not_found(format!("order {number} not found")))?;
        let confirm = self.routing.as_ref().is_some_and(|r| r.confirm);
        Ok(json_response(StatusCode::OK, &whole_order(&o, confirm)))
    }

    /// `GET /stations`: what the screens need of the configuration.
    fn stations(&self) -> Resp {
        let body = match &self.routing {
            None => json!({"stations": [], "default": null, "undo_seconds": null,
                           "expo": {"confirm": false}}),
            Some(r) => json!({
                "stations": r.stations.iter().map(|s| json!({
                    "name": s.name,
                    "yellow_after_seconds": s.yellow_after_seconds,
                    "red_after_seconds": s.red_after_seconds,
                })).collect::<Vec<_>>(),
                "default": r.default,
                "undo_seconds": r.undo.as_secs(),
                "expo": {"confirm": r.confirm},
            }),
        };
        json_response(StatusCode::OK, &body)
    }

    /// `GET /tickets[?station=NAME]`: a station's screen, or the expo's.
    async fn tickets(&self, query: Option<&str>) -> Result<Resp, ApiError> {
        let station = match query_param(query, "station") {
            None => None,
            Some(Ok(s)) => Some(s),
            Some(Err(())) => {
                return Err(
                    ApiError::new(StatusCode::BAD_REQUEST, "bad station").with_details(vec![
                        json!({"field": "station", "message": "must be UTF-8 text"}),
                    ]),
                )
            }
        };
        if let Some(s) = &station {
            if !self.routing.as_ref().is_some_and(|r| r.is_station(s)) {
                return Err(ApiError::not_found(format!("no station '{s}'")));
            }
        }
        let orders = self
            .store
            .tickets(station.as_deref())
            .await
            .map_err(|e| store_error(e, "db_query_failed", "Tickets query failed"))?;
        let confirm = self.routing.as_ref().is_some_and(|r| r.confirm);
        let body: Vec<_> = orders.iter().map(|o| whole_order(o, confirm)).collect();
        Ok(json_response(StatusCode::OK, &body))
    }

    async fn speed_of_service(&self, query: Option<&str>) -> Result<Resp, ApiError> {
        let mut errors = Vec::new();
        let mut param = |name: &str| match query_param(query, name) {
            Some(Ok(v)) => Some(v),
            Some(Err(())) => {
                errors.push(json!({"field": name, "message": "must be UTF-8 text"}));
                None
            }
            None => None,
        };
        let (from, to) = (param("from"), param("to"));
        if !errors.is_empty() {
            return Err(bad_range(errors));
        }
        let (from, to) = speed::parse_range(
            from.as_deref(),
            to.as_deref(),
            chrono::Utc::now(),
            &self.business,
        )
        .map_err(|errs| {
            bad_range(
                errs.into_iter()
                    .map(|e| json!({"field": e.field, "message": e.message}))
                    .collect(),
            )
        })?;
        let tickets = self
            .store
            .ticket_times(from, to)
            .await
            .map_err(|e| store_error(e, "db_query_failed", "Speed-of-service query failed"))?;
        let times = self
            .store
            .station_times(from, to)
            .await
            .map_err(|e| store_error(e, "db_query_failed", "Speed-of-service query failed"))?;
        let report =
            speed::with_stations(speed::report(from, to, &tickets), &times.parts, &times.expo);
        Ok(json_response(StatusCode::OK, &report))
    }

    async fn workers(&self) -> Result<Resp, ApiError> {
        let now = chrono::Utc::now();
        let workers = self
            .store
            .workers()
            .await
            .map_err(|e| store_error(e, "db_query_failed", "Workers query failed"))?;
        let body: Vec<_> = workers
            .iter()
            .map(|w| {
                json!({
                    "worker_name": w.name,
                    // A crashed worker's row still says online; its heartbeat says otherwise.
                    "status": if w.is_online(now) { "online" } else { "offline" },
                    "orders_processed": w.orders_processed,
                    "last_seen": w.last_seen,
                })
            })
            .collect();
        Ok(json_response(StatusCode::OK, &body))
    }

    async fn health(&self) -> Resp {
        let db = self.store.ping().await.map_err(|e| e.to_string());
        health_response(SERVICE, &[("database", db)])
    }

    /// The page's settings. A page that sends its kitchen token (it is paired)
    /// also gets the broker's read-only screen account; a page whose token was
    /// revoked gets 401, which it shows as "paired device revoked".
    fn display_config(&self, caller: &Caller) -> Result<Resp, ApiError> {
        let paired = match caller {
            Caller::Anonymous => None,
            Caller::Rejected => {
                return Err(
                    ApiError::new(StatusCode::UNAUTHORIZED, "paired device revoked").with_details(
                        vec![json!({"field": "authorization", "message": HOW_TO_GET_A_TOKEN})],
                    ),
                )
            }
            Caller::Token { role, .. } if matches!(role, Role::Kitchen | Role::Manager) => {
                Some(*role)
            }
            Caller::Token { role, .. } => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!("role '{role}' may not pair a kitchen display"),
                )
                .with_details(vec![
                    json!({"field": "authorization", "message": "allowed roles: kitchen, manager"}),
                ]))
            }
        };
        let mut body = json!({
                "mqtt_ws_url": self.display.mqtt_ws_url,
                "mqtt_ws_port": self.display.mqtt_ws_port,
                "order_service_url": self.display.order_service_url,
                "topic_prefix": self.mqtt_prefix,
                "site": self.mqtt_site,
                "yellow_after_seconds": self.display.yellow_after_seconds,
                "red_after_seconds": self.display.red_after_seconds,
                "server_time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                // Bumps and recalls need a kitchen token: the page asks for one once.
                "pairing": true,
                "paired": paired.is_some(),
                "role": paired.map(|r| r.as_str()),
                "boxes": self.boxes,
        });
        // Pairing over HTTPS: the screen shows the fingerprint of the CA it
        // trusts, to compare with `restaurant-system tls show` on the box.
        if let Some(fp) = self
            .tls
            .as_ref()
            .and_then(crate::tls::Tls::ca_pem)
            .and_then(|pem| crate::tls::ca::summary(&pem).ok())
        {
            body["ca_fingerprint"] = json!(fp.fingerprint);
        }
        if paired.is_some() && !self.display.mqtt_username.is_empty() {
            body["mqtt_username"] = json!(self.display.mqtt_username);
            body["mqtt_password"] = json!(self
                .display
                .mqtt_password
                .as_ref()
                .map(|p| p.expose())
                .unwrap_or(""));
        }
        let mut r = json_response(StatusCode::OK, &body);
        // It may carry a password: never from a cache.
        r.headers_mut().insert(
            "cache-control",
            hyper::header::HeaderValue::from_static("no-store"),
        );
        Ok(r)
    }
}

fn bad_range(details: Vec<serde_json::Value>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid report range").with_details(details)
}
