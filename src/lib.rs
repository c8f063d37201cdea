//! # restaurant-system
//!
//! A restaurant order system for a kitchen edge box: one binary, several modes.
//!
//! # Layout
//!
//! The folders follow an order's path, and each part uses only the parts
//! listed before it (no module cycles; `../shared/tools/module-graph` checks):
//!
//! - [`domain`]: the rules, pure and unit-tested, no I/O: validation, money,
//!   order numbers, priority, the status state machine, and the messages an
//!   order produces with their destinations (exchange names, routing keys).
//! - [`process`]: configuration, logs, and living under systemd (readiness,
//!   watchdog, signals).
//! - [`link`]: the one reconnect loop every link runs under (RabbitMQ, MQTT;
//!   the database's retries share its backoff): `supervise` (sessions, link
//!   state, once-per-outage logs, readiness) and `backoff`.
//! - [`storage`]: one `Store` trait and its two backends, `postgres/` and
//!   `sqlite/`, with the embedded migrations. Every state change writes its
//!   outgoing message to an outbox table in the same transaction.
//! - [`broker`]: RabbitMQ: connecting, the topology, the outbox relay, and
//!   `delivery`, what a failed delivery becomes (requeue or dead-letter, with
//!   the poison-message cap).
//! - [`http`]: the HTTP edge every listening service shares: the server loop,
//!   limits, request ids, the mapping from an error to a JSON response, and
//!   `auth` (tokens, roles, CORS; the rules are `domain::access`).
//! - [`services`]: what runs: `order_api` (intake), `kitchen`, `notifier`,
//!   `display` (the bridge from RabbitMQ to MQTT for kitchen screens) and
//!   `tracking_api`.
//! - [`modes`]: the wiring: starts a mode (or all of them) and returns once it
//!   serves.
//!
//! `main.rs` only parses flags, loads config and calls [`modes::start`]; tests
//! call the same function, so the binary and the tests share one code path.

pub mod broker;
pub mod domain;
pub mod http;
pub mod link;
pub mod modes;
pub mod process;
pub mod services;
pub mod storage;
pub mod tls;
