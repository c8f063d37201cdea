//! Domain rules: pure functions and types with no I/O.
//!
//! Everything here is deterministic and unit-tested next to the code. Storage,
//! the broker, HTTP and the services call into this module; it calls into none of them.

/// The names of an enum's values, written once: they are how the values are
/// stored, sent and typed (the database, messages, the CLI). Gives the enum
/// `ALL` (in declaration order), `as_str`, `Display` and `FromStr` (which
/// answers `$unknown(s)` for a name it does not know).
macro_rules! names {
    ($ty:ident, $unknown:expr, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            pub const ALL: [$ty; [$($name),+].len()] = [$($ty::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $ty::ALL
                    .into_iter()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| ($unknown)(s))
            }
        }
    };
}

/// The rule for names an operator types and logs show (tokens, workers):
/// 1-64 letters, digits, '_', '-' or '.'.
pub fn is_plain_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}

pub mod access;
pub mod business_day;
pub mod clock;
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
