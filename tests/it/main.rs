//! The integration tests: one binary, one module per area (issue 23), so the
//! harness in `common` and the crate are compiled and linked once, not once
//! per file. Run one area with `cargo test --test it NAME::` (e.g.
//! `cargo test --test it orders_api::`); the fault suite is `#[ignore]`d
//! (`bash tests/fault/run.sh`).
//!
//! `common` comes first with `#[macro_use]` so that `backend_tests!` is in
//! scope in every module after it.
#[macro_use]
mod common;

mod backup;
mod cli;
mod clock;
mod display;
mod fault;
mod fence;
mod idempotency;
mod kitchen_screens;
mod lifecycle;
mod metrics;
mod mqtt_acl;
mod multibox;
mod orders_api;
mod pressure;
mod proptest_domain;
mod proptest_kitchen;
mod security;
mod smoke;
mod stations;
mod store_conformance;
mod tls;
mod tls_clients;
mod worker;
