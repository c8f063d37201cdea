//! How a failure is handled, decided once where it happens and read by every
//! edge: the HTTP status, what to do with a delivery, whether a session is
//! worth starting again. Each backend turns its native codes (SQLSTATE, SQLite
//! extended codes, AMQP error kinds) into a `Class`; nothing matches on text.

/// The kind of a failure, as far as handling it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// A server is unreachable, busy or restarting: the same request may pass later.
    Transient,
    /// The thing changed under us (a compare-and-set lost, a duplicate key).
    Conflict,
    /// The thing asked for does not exist.
    NotFound,
    /// A bug or data that can never be handled: retrying gives the same answer.
    Permanent,
}

impl Class {
    /// Whether trying the same thing again later can help.
    pub fn is_retryable(self) -> bool {
        self == Class::Transient
    }
}
