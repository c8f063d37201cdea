//! Links to the servers we depend on, and the one way they are kept up: every
//! RabbitMQ and MQTT link runs its sessions under [`supervise::Supervisor`], and
//! every retry (the database at start-up too) waits with [`backoff::Backoff`],
//! so they all back off, log and report their state the same way.
//!
//! Nothing here knows which protocol a session speaks: the broker and the
//! display bridge supply the sessions.

pub mod backoff;
pub mod supervise;
