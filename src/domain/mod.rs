//! Domain rules: pure functions and types with no I/O.
//!
//! Everything here is deterministic and unit-tested next to the code. Storage,
//! the broker, HTTP and the services call into this module; it calls into none of them.

pub mod access;
pub mod error;
pub mod events;
pub mod field_error;
pub mod idempotency;
pub mod kitchen_notes;
pub mod money;
pub mod order;
pub mod speed;
pub mod status;
pub mod transition;
pub mod worker;

pub use money::Cents;
pub use order::{FieldError, Item, OrderType, ValidOrder};
pub use status::{OrderStatus, TransitionError};
