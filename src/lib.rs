//! # restaurant-system
//!
//! A restaurant order system for a kitchen edge box: one binary, several modes.
//!
//! ## Layout
//! - [`domain`]: the rules, pure and unit-tested: validation, money, order
//!   numbers, priority, the status state machine, message formats.
//! - [`storage`]: one `Store` trait, two real implementations (PostgreSQL and
//!   SQLite). Every state change writes its outgoing message to an outbox table
//!   in the same transaction.
//! - [`messaging`]: RabbitMQ connections, topology, and the outbox relay.
//! - [`http`]: the HTTP server loop, the order API and the tracking API.
//! - [`kitchen`]: the kitchen worker. [`notify`]: the notification subscriber.
//!   [`display`]: the bridge from RabbitMQ to MQTT for kitchen display screens.
//! - [`modes`]: starts a mode (or all of them) and returns once it serves.
//! - [`config`], [`telemetry`], [`daemon`], [`backoff`]: configuration, logs,
//!   systemd integration, and the one retry policy every reconnect loop uses.
//!
//! `main.rs` only parses flags, loads config and calls [`modes::start`]; tests
//! call the same function, so the binary and the tests share one code path.

pub mod backoff;
pub mod config;
pub mod daemon;
pub mod display;
pub mod domain;
pub mod http;
pub mod kitchen;
pub mod messaging;
pub mod modes;
pub mod notify;
pub mod storage;
pub mod telemetry;
