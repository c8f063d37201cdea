//! Process plumbing: configuration, logging and living under systemd. Nothing
//! here knows about orders; every other part may use it.

pub mod config;
pub mod daemon;
pub mod failpoint;
pub mod metrics;
pub mod owner;
pub mod telemetry;
