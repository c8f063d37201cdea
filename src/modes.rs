//! The modes the binary runs in, and `start`, which brings one up.
//!
//! `start` returns once the mode really serves (database migrated, listener
//! bound, consumers started): that is when `main` tells systemd READY=1, and
//! when tests start sending requests. Everything it spawns stops when the
//! shutdown token is cancelled; `Running::wait` waits until it all has.

use crate::broker::relay::Relay;
use crate::http::{self, Limits};
use crate::link::backoff::Backoff;
use crate::link::supervise::{LinkState, Peer};
use crate::process::config::Config;
use crate::process::telemetry::service_span;
use crate::services::kitchen::{self, Kitchen, WorkerConfig};
use crate::services::notifier::{self, Subscriber};
use crate::services::order_api::{self, OrderApi};
use crate::services::tracking_api::{self, TrackingApi};
use crate::services::{self, display, StartError};
use crate::storage::{self, SharedStore};
use crate::tls::Tls;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// How long start-up waits for the relay's first broker connection.
const RELAY_CONNECT_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    OrderService,
    KitchenWorker,
    TrackingService,
    NotificationSubscriber,
    DisplayBridge,
    /// Every mode in one process: for tiny boxes and the README's demo.
    All,
}

impl Mode {
    pub fn service_name(self) -> &'static str {
        match self {
            Mode::OrderService => order_api::SERVICE,
            Mode::KitchenWorker => kitchen::SERVICE,
            Mode::TrackingService => tracking_api::SERVICE,
            Mode::NotificationSubscriber => notifier::SERVICE,
            Mode::DisplayBridge => display::SERVICE,
            Mode::All => "restaurant-system",
        }
    }
}

/// A started mode: the real addresses of its HTTP listeners, and its tasks.
pub struct Running {
    pub order_addr: Option<SocketAddr>,
    pub tracking_addr: Option<SocketAddr>,
    pub bridge_addr: Option<SocketAddr>,
    /// The `[metrics] port` listener of a kitchen worker or the notifier.
    pub metrics_addr: Option<SocketAddr>,
    pub store: SharedStore,
    tasks: Tasks,
    /// Every broker link of the mode, watched for a fatal end.
    links: Vec<LinkState>,
}

impl Running {
    /// Waits until one of the mode's links stops for good and says why; never
    /// returns while they all run (or stop on shutdown).
    pub async fn failed(&self) -> String {
        if self.links.is_empty() {
            return std::future::pending().await;
        }
        let each = self.links.iter().map(|l| Box::pin(l.stopped_for_good()));
        futures_util::future::select_all(each).await.0
    }

    /// Waits until every task has stopped (after the shutdown token is cancelled).
    pub async fn wait(self) {
        self.tasks.wait().await;
    }
}

/// What a mode runs. The relay stops last, on a token of its own: the work that
/// is finishing up (the order a worker is cooking) still writes messages into
/// the outbox, and they should leave before the process does.
#[derive(Clone)]
struct Tasks {
    work: TaskTracker,
    relay: TaskTracker,
    relay_stop: CancellationToken,
}

impl Tasks {
    async fn wait(&self) {
        self.work.close();
        self.work.wait().await;
        self.relay_stop.cancel();
        self.relay.close();
        self.relay.wait().await;
    }
}

/// An HTTP API: its service name (for its log span), its title, its routes.
struct Api(&'static str, &'static str, Arc<dyn http::Routes>);

impl Api {
    /// Binds `addr` and serves until `shutdown`; returns the real address.
    async fn listen(
        self,
        addr: SocketAddr,
        limits: Limits,
        tls: &Option<Tls>,
        shutdown: &CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<SocketAddr, StartError> {
        let Api(service, title, routes) = self;
        let span = service_span(service);
        let server = http::serve(addr, routes, limits, tls.clone(), shutdown.clone())
            .instrument(span.clone())
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let port = server.addr.port();
        span.in_scope(|| {
            tracing::info!(
                action = "service_started",
                port,
                max_concurrent = limits.max_concurrent,
                https = tls.is_some(),
                "{title} started on port {port}"
            )
        });
        tasks.spawn(async move {
            let _ = server.task.await;
        });
        Ok(server.addr)
    }
}

/// What a kitchen process is told on the command line: its workers. Several
/// share the process, its store and its relay (on SQLite: one writer, whose
/// syncs serve them all). None: `--mode=all`'s one worker, named after the host.
#[derive(Debug, Clone)]
pub struct Options {
    pub workers: Vec<WorkerConfig>,
}

/// Opens the database, retrying with backoff while it is unreachable.
pub async fn open_store(
    cfg: &Config,
    shutdown: &CancellationToken,
) -> Result<SharedStore, StartError> {
    let mut backoff = Backoff::default();
    let started = Instant::now();
    loop {
        match storage::open_in(&cfg.database, &cfg.cluster).await {
            Ok(store) => {
                tracing::info!(
                    action = "db_connected",
                    backend = %store.backend(),
                    reason = cfg.database.backend_reason(),
                    duration_ms = started.elapsed().as_millis() as u64,
                    "Connected to {} database", match store.backend() {
                        storage::Backend::Postgres => "PostgreSQL",
                        storage::Backend::Sqlite => "SQLite",
                    }
                );
                return Ok(store);
            }
            Err(e) if e.is_unavailable() => {
                if backoff.attempts() == 0 {
                    tracing::error!(action = "db_connection_failed", error = %e, "Database unreachable; retrying with backoff");
                }
                crate::process::daemon::status("waiting for the database");
                if !backoff.wait(shutdown).await {
                    return Err(StartError::Cancelled);
                }
            }
            Err(e) => {
                tracing::error!(action = "db_connection_failed", error = %e, "Database not usable");
                return Err(e.into());
            }
        }
    }
}

/// The earliest the clock may read (issue 26, `domain::clock`): the newest
/// change stored, and the time this program was installed (the binary's
/// modification time: the package's build time on a box, as dpkg keeps it).
async fn clock_floor(
    store: &SharedStore,
) -> Result<Arc<crate::domain::clock::ClockFloor>, StartError> {
    let installed = std::env::current_exe()
        .and_then(std::fs::metadata)
        .and_then(|m| m.modified())
        .ok()
        .map(chrono::DateTime::<chrono::Utc>::from);
    let floor = store
        .newest_change()
        .await?
        .into_iter()
        .chain(installed)
        .max()
        .unwrap_or_default();
    Ok(Arc::new(crate::domain::clock::ClockFloor::new(floor)))
}

/// Starts `mode`. For `All`, everything shares one store and one relay.
///
/// When start-up fails or is cancelled half way (SIGTERM while waiting for
/// RabbitMQ, a port in use), what already started is stopped and awaited
/// before returning: a registered worker marks itself offline, so a restart
/// under the same name is not refused as a duplicate.
pub async fn start(
    mode: Mode,
    cfg: &Config,
    opts: Options,
    shutdown: CancellationToken,
) -> Result<Running, StartError> {
    // One recorder per process, whatever runs in it (docs/metrics.md).
    crate::process::metrics::install();
    let store = open_store(cfg, &shutdown).await?;
    let all = Tasks {
        work: TaskTracker::new(),
        relay: TaskTracker::new(),
        relay_stop: CancellationToken::new(),
    };
    match start_parts(mode, cfg, opts, &shutdown, store, &all).await {
        Ok(running) => Ok(running),
        Err(e) => {
            shutdown.cancel();
            all.wait().await;
            Err(e)
        }
    }
}

/// A part of a mode: what `start` brings up for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// Kitchen workers: register, then consume their queues. None with
    /// `[stations]`: the cooks bump items instead (docs/architecture.md;
    /// `main` refuses `--mode=kitchen-worker` then).
    Kitchen,
    /// The order service's API, its clock watch and its closer.
    OrderApi,
    TrackingApi,
    Notifier,
    /// The display bridge; in `All` only with `[mqtt] enabled`.
    DisplayBridge,
}

impl Mode {
    /// What each mode runs, in start order: workers first, so that a duplicate
    /// name fails before anything listens. A mode with a part that writes
    /// (the kitchen, the order API) also runs the outbox relay; a mode of one
    /// part serves that part's `GET /metrics` (the kitchen and the notifier on
    /// their `[metrics] port`), `All` only the order API's.
    fn parts(self) -> &'static [Part] {
        use Part::*;
        match self {
            Mode::OrderService => &[OrderApi],
            Mode::KitchenWorker => &[Kitchen],
            Mode::TrackingService => &[TrackingApi],
            Mode::NotificationSubscriber => &[Notifier],
            Mode::DisplayBridge => &[DisplayBridge],
            Mode::All => &[Kitchen, OrderApi, TrackingApi, Notifier, DisplayBridge],
        }
    }
}

async fn start_parts(
    mode: Mode,
    cfg: &Config,
    opts: Options,
    shutdown: &CancellationToken,
    store: SharedStore,
    all: &Tasks,
) -> Result<Running, StartError> {
    let mut w = Wiring::new(mode, cfg, shutdown, store, all)?;
    for part in mode.parts() {
        match part {
            Part::Kitchen => w.kitchen(&opts).await?,
            Part::OrderApi => w.order_api().await?,
            Part::TrackingApi => w.tracking_api().await?,
            Part::Notifier => w.notifier().await?,
            Part::DisplayBridge => w.display_bridge().await?,
        }
    }
    w.metrics_port().await?;
    Ok(w.running)
}

/// What the parts of one process share while `start_parts` brings them up.
struct Wiring<'a> {
    cfg: &'a Config,
    mode: Mode,
    /// The mode runs one part, which then serves its own `GET /metrics`.
    alone: bool,
    store: SharedStore,
    shutdown: CancellationToken,
    all: &'a Tasks,
    limits: Limits,
    /// Every listener of the process serves the same certificate (issue 27).
    tls: Option<Tls>,
    /// One per process: the order and tracking APIs share its token cache and
    /// its record of failed attempts.
    guard: Arc<http::auth::Guard>,
    /// `[stations]`: items routed to stations.
    routing: Option<Arc<crate::domain::stations::Routing>>,
    /// The outbox relay, started by the first part that writes.
    relay: Option<Relay>,
    /// The consumer of a mode without HTTP, for its metrics port's `/health`.
    consumer_link: Option<LinkState>,
    running: Running,
}

impl<'a> Wiring<'a> {
    fn new(
        mode: Mode,
        cfg: &'a Config,
        shutdown: &CancellationToken,
        store: SharedStore,
        all: &'a Tasks,
    ) -> Result<Self, StartError> {
        let tls = Tls::start(&cfg.tls)?;
        if let Some(t) = &tls {
            t.spawn_reloader(shutdown.clone());
        }
        let guard = http::auth::Guard::new(
            store.clone(),
            http::auth::AuthSettings {
                policy: crate::domain::access::Policy {
                    anonymous_loopback: cfg.security.anonymous_loopback,
                },
                allowed_origins: cfg.security.allowed_origins.clone(),
                display_port: cfg.http.tracking_port,
            },
        );
        all.work.spawn(services::metrics_port::probe(
            store.clone(),
            shutdown.clone(),
        ));
        Ok(Wiring {
            cfg,
            mode,
            alone: mode.parts().len() == 1,
            store: store.clone(),
            shutdown: shutdown.clone(),
            all,
            limits: Limits {
                max_concurrent: cfg.http.max_concurrent,
                queue_timeout: Duration::from_millis(cfg.http.queue_timeout_ms),
                max_connections: cfg.http.max_connections,
                body_limit: cfg.http.body_limit_bytes,
                timeout: Duration::from_secs(cfg.http.request_timeout_seconds.max(1)),
            },
            guard,
            routing: cfg.routing().map(Arc::new),
            relay: None,
            consumer_link: None,
            running: Running {
                order_addr: None,
                tracking_addr: None,
                bridge_addr: None,
                metrics_addr: None,
                store,
                tasks: all.clone(),
                links: Vec::new(),
            },
            tls,
        })
    }

    fn bind(&self, port: u16) -> SocketAddr {
        // Config::check rejects an address that does not parse; a Config built
        // in code that skipped it gets the narrowest bind, never a wider one.
        let ip = self
            .cfg
            .http
            .bind
            .trim()
            .parse()
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
        SocketAddr::new(ip, port)
    }

    async fn listen(&self, api: Api, port: u16) -> Result<SocketAddr, StartError> {
        let addr = self.bind(port);
        api.listen(addr, self.limits, &self.tls, &self.shutdown, &self.all.work)
            .await
    }

    /// The outbox relay of the process's writing parts: started (on its own
    /// task tracker, which stops last) by the first of them to ask.
    async fn relay(&mut self) -> Result<Relay, StartError> {
        if let Some(relay) = &self.relay {
            return Ok(relay.clone());
        }
        let service = self.mode.service_name();
        let relay = Relay::new(
            self.store.clone(),
            self.cfg.rabbitmq.clone(),
            &format!("{service} relay"),
        );
        self.relay = Some(relay.clone());
        self.running.links.push(relay.link());
        self.all.relay.spawn(
            relay
                .clone()
                .run(self.all.relay_stop.clone())
                .instrument(service_span(service)),
        );
        // Ready means connected to the broker too, when it is there. When it is
        // not, the order service still starts: orders wait in the outbox.
        let connected = tokio::time::timeout(
            RELAY_CONNECT_WAIT,
            services::ready(&relay.link(), &self.shutdown, "waiting for RabbitMQ"),
        )
        .await;
        if let Ok(Err(e)) = connected {
            return Err(e);
        }
        if !relay.link().is_up() {
            tracing::info!(
                action = "rabbitmq_unavailable_at_start",
                "Starting without RabbitMQ; orders are kept in the outbox until it is reachable"
            );
        }
        Ok(relay)
    }

    /// Runs a broker consumer: its link joins the mode's, and start-up waits
    /// until it is up.
    async fn consume<F>(
        &mut self,
        link: &LinkState,
        run: F,
        waiting: &str,
    ) -> Result<(), StartError>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.running.links.push(link.clone());
        self.all.work.spawn(run);
        services::ready(link, &self.shutdown, waiting).await
    }

    async fn kitchen(&mut self, opts: &Options) -> Result<(), StartError> {
        let relay = self.relay().await?;
        if self.routing.is_some() {
            return Ok(());
        }
        let span = service_span(kitchen::SERVICE);
        let mut workers = opts.workers.clone();
        if workers.is_empty() {
            workers.push(WorkerConfig {
                name: kitchen::default_worker_name(),
                order_types: Vec::new(),
                prefetch: 1,
                heartbeat: Duration::from_secs(30),
                cooking: self.cfg.kitchen.cooking_seconds,
            });
        }
        let store = &self.store;
        let mut kitchens: Vec<Kitchen> = Vec::new();
        for wcfg in workers {
            let lease = match kitchen::register(store, &wcfg)
                .instrument(span.clone())
                .await
            {
                Ok(lease) => lease,
                Err(e) => {
                    // The ones registered already do not start either.
                    for k in &kitchens {
                        let _ = store.worker_offline(&k.cfg.name, chrono::Utc::now()).await;
                    }
                    return Err(e.into());
                }
            };
            kitchens.push(Kitchen {
                cfg: wcfg,
                store: store.clone(),
                rabbit: self.cfg.rabbitmq.clone(),
                relay: relay.clone(),
                link: LinkState::new("kitchen consumer", Peer::RabbitMq),
                poison: Default::default(),
                lease,
            });
        }
        for k in kitchens {
            crate::process::metrics::worker_started(&k.cfg.name);
            let link = k.link.clone();
            let run = k.run(self.shutdown.clone()).instrument(span.clone());
            self.consume(&link, run, "waiting for RabbitMQ (kitchen queues)")
                .await?;
            // The first worker's consumer answers for the process's health:
            // they all share one broker.
            if self.alone && self.consumer_link.is_none() {
                self.consumer_link = Some(link);
            }
        }
        Ok(())
    }

    async fn order_api(&mut self) -> Result<(), StartError> {
        let relay = self.relay().await?;
        let (cfg, store, shutdown) = (self.cfg, &self.store, &self.shutdown);
        crate::process::metrics::order_service_started();
        let api = OrderApi {
            store: store.clone(),
            relay: relay.clone(),
            guard: self.guard.clone(),
            idempotency: order_api::Idempotency::new(cfg.orders.idempotency_ttl_seconds),
            routing: self.routing.clone(),
            business: cfg.business.rule()?,
            clock: clock_floor(store).await?,
        };
        let tasks = &self.all.work;
        tasks.spawn(order_api::watch_clock(api.clock.clone(), shutdown.clone()));
        let closer = services::closer::Closer {
            business: api.business.clone(),
            auto_complete_after_minutes: cfg.display.auto_complete_after_minutes,
        };
        tasks.spawn(closer.run(store.clone(), move || relay.wake(), shutdown.clone()));
        let retention = services::retention::Retention {
            keep_days: cfg.retention.keep_days,
        };
        tasks.spawn(retention.run(store.clone(), shutdown.clone()));
        let api = Api(order_api::SERVICE, "Order Service", Arc::new(api));
        self.running.order_addr = Some(self.listen(api, cfg.http.order_port).await?);
        Ok(())
    }

    async fn tracking_api(&mut self) -> Result<(), StartError> {
        let cfg = self.cfg;
        let api = TrackingApi {
            store: self.store.clone(),
            display: cfg.display.clone(),
            mqtt_prefix: cfg.mqtt.topic_prefix.clone(),
            mqtt_site: cfg.mqtt.site.clone(),
            mqtt_ws: format!("{}:{}", cfg.mqtt.host, cfg.display.mqtt_ws_port),
            tls: self.tls.clone(),
            boxes: cfg.cluster.boxes.clone(),
            guard: self.guard.clone(),
            metrics: self.alone,
            routing: self.routing.clone(),
            business: cfg.business.rule()?,
        };
        let api = Api(tracking_api::SERVICE, "Tracking Service", Arc::new(api));
        let bound = self.listen(api, cfg.http.tracking_port).await?;
        self.running.tracking_addr = Some(bound);
        self.guard.set_display_port(bound.port());
        Ok(())
    }

    async fn notifier(&mut self) -> Result<(), StartError> {
        let span = service_span(notifier::SERVICE);
        let sub = Subscriber {
            rabbit: self.cfg.rabbitmq.clone(),
            link: LinkState::new("notification subscriber", Peer::RabbitMq),
        };
        let link = sub.link.clone();
        let run = sub.run(self.shutdown.clone()).instrument(span.clone());
        self.consume(&link, run, "waiting for RabbitMQ (notifications)")
            .await?;
        if self.alone {
            self.consumer_link = Some(link);
        }
        span.in_scope(|| {
            tracing::info!(
                action = "service_started",
                "Notification subscriber started"
            )
        });
        Ok(())
    }

    async fn display_bridge(&mut self) -> Result<(), StartError> {
        // `--mode=all` bridges to MQTT only when asked to; the bridge's own
        // mode always does.
        if !self.alone && !self.cfg.mqtt.enabled {
            return Ok(());
        }
        let span = service_span(display::SERVICE);
        let edge = display::Edge {
            guard: self.guard.clone(),
            metrics: self.alone,
            tls: self.tls.clone(),
        };
        let (bridge, links) = display::start(
            self.cfg,
            self.store.clone(),
            self.bind(self.cfg.http.bridge_port),
            self.limits,
            edge,
            self.shutdown.clone(),
            &self.all.work,
        )
        .instrument(span)
        .await?;
        self.running.bridge_addr = Some(bridge);
        self.running.links.extend(links);
        Ok(())
    }

    /// The modes without HTTP get a metrics listener when asked for one.
    async fn metrics_port(&mut self) -> Result<(), StartError> {
        let (Some(port), Some(rabbit)) = (self.cfg.metrics.port, self.consumer_link.take()) else {
            return Ok(());
        };
        let service = self.mode.service_name();
        let routes = services::metrics_port::MetricsPort {
            service,
            store: self.store.clone(),
            rabbit,
            guard: self.guard.clone(),
        };
        let api = Api(service, "Metrics endpoint", Arc::new(routes));
        self.running.metrics_addr = Some(self.listen(api, port).await?);
        Ok(())
    }
}
