//! A PostgreSQL error's class, from its SQLSTATE or the connection's state.

use super::*;
use deadpool_postgres::PoolError;
use tokio_postgres::error::SqlState;

pub(super) fn pool_err(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => pg_err(e),
        // No connection within the wait: the server is down or overloaded.
        e @ (PoolError::Timeout(_) | PoolError::Closed) => {
            StoreError::caused_by(Class::Transient, "no database connection", e)
        }
        e => StoreError::caused_by(Class::Permanent, "connection pool", e),
    }
}

pub(super) fn pg_err(e: tokio_postgres::Error) -> StoreError {
    let class = pg_class(&e);
    StoreError::caused_by(class, "PostgreSQL", e)
}

/// The class of a PostgreSQL error, from its SQLSTATE when the server sent one,
/// else from the connection state.
fn pg_class(e: &tokio_postgres::Error) -> Class {
    if let Some(code) = e.code() {
        return sqlstate_class(code);
    }
    // No server error: the connection failed, closed or timed out (an I/O
    // cause), which passes when the server is back; or we sent something
    // wrong, which does not.
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if c.is::<std::io::Error>() {
            return Class::Transient;
        }
        cause = c.source();
    }
    if e.is_closed() {
        Class::Transient
    } else {
        Class::Permanent
    }
}

/// SQLSTATE classes (the first two characters) as the standard defines them.
fn sqlstate_class(code: &SqlState) -> Class {
    let c = code.code();
    if *code == SqlState::UNIQUE_VIOLATION {
        return Class::Conflict;
    }
    // A write on a server that became read-only: a primary demoted by a
    // failover. Another connection reaches the new primary.
    if *code == SqlState::READ_ONLY_SQL_TRANSACTION {
        return Class::Transient;
    }
    match &c[..2.min(c.len())] {
        // connection exception; insufficient resources (too many connections,
        // disk full); operator intervention (shutting down, starting up,
        // statement cancelled); transaction rollback (serialization failure,
        // deadlock): all pass on a later try.
        "08" | "53" | "57" | "40" => Class::Transient,
        // lock not available
        "55" if *code == SqlState::LOCK_NOT_AVAILABLE => Class::Transient,
        _ => Class::Permanent,
    }
}
