//! What a SQLite error means to the callers: its class, from the result code.

use crate::domain::error::Class;
use crate::storage::StoreError;

pub(super) fn sql_err(e: rusqlite::Error) -> StoreError {
    let class = sqlite_class(&e);
    StoreError::caused_by(class, "SQLite", e)
}

/// The class of a SQLite error, from its (extended) result code.
fn sqlite_class(e: &rusqlite::Error) -> Class {
    use rusqlite::ErrorCode::*;
    match e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            // Another writer holds the file, or the file or disk is not usable
            // right now (unmounted, read-only, full): passes when it is back.
            DatabaseBusy | DatabaseLocked | CannotOpen | ReadOnly | DiskFull | SystemIoFailure => {
                Class::Transient
            }
            ConstraintViolation
                if matches!(
                    f.extended_code,
                    rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                        | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                ) =>
            {
                Class::Conflict
            }
            _ => Class::Permanent,
        },
        rusqlite::Error::QueryReturnedNoRows => Class::NotFound,
        _ => Class::Permanent,
    }
}
