//! Backups (issue 26): `restaurant-system backup [FILE]` writes a consistent
//! copy of the database while orders flow; `restaurant-system restore FILE`
//! brings one back on a stopped box. SQLite: the online backup API
//! (`sqlite::backup`); PostgreSQL: pg_dump's custom format of the same snapshot
//! the counts are read from (`postgres::backup`).
//!
//! A copy is written beside its final name (`FILE.partial`), checked, synced and
//! only then renamed, so a file with a backup's name is always a whole one.

use crate::process::config::{DatabaseConfig, StorageBackend};
use std::path::Path;

pub use super::backup_file::{dated_name, prune, BackupError, Summary};

/// Writes a consistent copy of the configured database to `file`.
pub async fn backup(cfg: &DatabaseConfig, file: &Path) -> Result<Summary, BackupError> {
    match cfg.resolved_backend() {
        StorageBackend::Postgres => super::postgres::backup::backup(cfg, file).await,
        _ => {
            let (db, file) = (cfg.sqlite_path.clone(), file.to_path_buf());
            blocking(move || super::sqlite::backup::backup(&db, &file)).await
        }
    }
}

/// Replaces the configured database with the copy in `file`, refusing while
/// anything uses the database, and checks the result.
pub async fn restore(cfg: &DatabaseConfig, file: &Path) -> Result<Summary, BackupError> {
    match cfg.resolved_backend() {
        StorageBackend::Postgres => super::postgres::backup::restore(cfg, file).await,
        _ => {
            let (db, file) = (cfg.sqlite_path.clone(), file.to_path_buf());
            blocking(move || super::sqlite::backup::restore(&db, &file)).await?;
            // Opening applies the migrations a copy from an older version lacks.
            super::open(cfg)
                .await
                .map_err(|e| BackupError::failed("opening the restored database", e))?;
            let db = cfg.sqlite_path.clone();
            blocking(move || super::sqlite::backup::check(&db)).await
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BackupError> + Send + 'static,
) -> Result<T, BackupError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BackupError::failed("backup task", e))?
}
