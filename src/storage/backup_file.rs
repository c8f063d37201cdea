//! A backup file (issue 26): what it holds (`Summary`), how a backup fails, how
//! a copy is written whole (`FILE.partial`, checked, synced, then renamed),
//! dated names and pruning. Shared by both backends' `backup.rs`; the
//! dispatch to them is `storage::backup`.

use crate::process::config::StorageBackend;
use chrono::{DateTime, Utc};
use std::path::{Path, PathBuf};

/// What a backup holds, or what a restore brought back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub orders: i64,
    pub items: i64,
    pub history: i64,
    pub bytes: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} orders, {} items, {} status changes; {:.1} MB",
            self.orders,
            self.items,
            self.history,
            self.bytes as f64 / 1e6
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Restore only: something still uses the database.
    #[error("the database is in use ({0}): stop the services first (systemctl stop restaurant-system.target), then restore")]
    InUse(String),
    #[error("{0}")]
    Failed(String),
}

impl BackupError {
    pub(crate) fn failed(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Self {
        BackupError::Failed(format!("{what}: {e}"))
    }
}

/// The counts a summary reports, the same SQL on both backends.
pub(crate) const COUNTS_SQL: &str = "select (select count(*) from orders), \
     (select count(*) from order_items), (select count(*) from order_status_log)";

/// The name of a dated copy in `[backup] directory`: sorts by time.
pub fn dated_name(backend: StorageBackend, now: DateTime<Utc>) -> String {
    let ext = match backend {
        StorageBackend::Postgres => "pgdump",
        _ => "db",
    };
    format!("restaurant-{}.{ext}", now.format("%Y%m%d-%H%M%S"))
}

/// Removes the oldest dated copies in `dir` beyond the newest `keep`; only
/// files named as `dated_name` names them are touched. Returns what it removed.
pub fn prune(dir: &Path, keep: usize) -> Result<Vec<PathBuf>, BackupError> {
    let entries = std::fs::read_dir(dir).map_err(|e| BackupError::failed(dir.display(), e))?;
    let mut dated: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let is_dated = name.starts_with("restaurant-")
                && (name.ends_with(".db") || name.ends_with(".pgdump"))
                && e.file_type().is_ok_and(|t| t.is_file());
            is_dated.then(|| (name, e.path()))
        })
        .collect();
    dated.sort();
    let excess = dated.len().saturating_sub(keep);
    let mut removed = Vec::new();
    for (_, path) in dated.into_iter().take(excess) {
        std::fs::remove_file(&path).map_err(|e| BackupError::failed(path.display(), e))?;
        removed.push(path);
    }
    Ok(removed)
}

/// `FILE.partial`: where a copy is written before it is renamed to `FILE`.
pub(crate) fn partial(file: &Path) -> PathBuf {
    let mut p = file.as_os_str().to_owned();
    p.push(".partial");
    PathBuf::from(p)
}

/// Syncs `path` and renames it to `to`, then syncs the directory: the copy
/// is whole on disk under its final name, or not there.
pub(crate) fn commit_file(path: &Path, to: &Path) -> Result<(), BackupError> {
    let sync = |p: &Path| {
        std::fs::File::open(p)
            .and_then(|f| f.sync_all())
            .map_err(|e| BackupError::failed(p.display(), e))
    };
    // A copy holds customers' names and addresses: the services' group only.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o640))
        .map_err(|e| BackupError::failed(path.display(), e))?;
    sync(path)?;
    std::fs::rename(path, to).map_err(|e| BackupError::failed(to.display(), e))?;
    let dir = to
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    sync(dir)
}

/// Fails unless `file` starts with `magic` (a restore of the other backend's
/// copy, or of something else, is refused before anything is touched).
pub(crate) fn expect_magic(file: &Path, magic: &[u8], what: &str) -> Result<(), BackupError> {
    use std::io::Read;
    let mut head = vec![0u8; magic.len()];
    std::fs::File::open(file)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(|e| BackupError::failed(file.display(), e))?;
    if head != magic {
        return Err(BackupError::Failed(format!(
            "{} is not {what} (the configured database backend's backup format)",
            file.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_keeps_the_newest_dated_copies_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let names = [
            "restaurant-20261201-030000.db",
            "restaurant-20261202-030000.db",
            "restaurant-20261203-030000.db",
            "restaurant-20261204-030000.db",
            "restaurant-20261201-030000.db.partial",
            "mine.db",
        ];
        for n in names {
            std::fs::write(dir.path().join(n), "").unwrap();
        }
        let removed = prune(dir.path(), 2).unwrap();
        let removed: Vec<_> = removed
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        assert_eq!(
            removed,
            [
                "restaurant-20261201-030000.db",
                "restaurant-20261202-030000.db"
            ]
        );
        let mut left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "mine.db",
                "restaurant-20261201-030000.db.partial",
                "restaurant-20261203-030000.db",
                "restaurant-20261204-030000.db"
            ]
        );
    }

    #[test]
    fn dated_names_sort_by_time() {
        let a = "2026-01-02T03:04:05Z".parse().unwrap();
        let b = "2026-11-02T03:04:05Z".parse().unwrap();
        let (na, nb) = (
            dated_name(StorageBackend::Sqlite, a),
            dated_name(StorageBackend::Sqlite, b),
        );
        assert_eq!(na, "restaurant-20260102-030405.db");
        assert!(na < nb);
        assert!(dated_name(StorageBackend::Postgres, a).ends_with(".pgdump"));
    }
}
