//! The SQLite side of `storage::backup`.
//!
//! The copy is made with SQLite's online backup API in one step: one read
//! transaction copies every page, so the copy is the database as of one commit
//! while the writer goes on (WAL: readers never block it). Copying in parts
//! would start over whenever another connection writes, which under steady
//! intake could be forever.

use super::pool::open_conn;
use crate::storage::backup_file::{
    commit_file, expect_magic, partial, BackupError, Summary, COUNTS_SQL,
};
use crate::storage::migrations::SQLITE;
use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

const MAGIC: &[u8] = b"SQLite format 3\0";

pub(crate) fn backup(db: &Path, file: &Path) -> Result<Summary, BackupError> {
    if !db.exists() {
        return Err(BackupError::Failed(format!(
            "there is no database at {} (database.sqlite_path): nothing to back up",
            db.display()
        )));
    }
    let failed = |e| BackupError::failed("backup", e);
    let src = open_conn(db).map_err(failed)?;
    let tmp = partial(file);
    let _ = std::fs::remove_file(&tmp);
    let mut dst = Connection::open(&tmp).map_err(|e| BackupError::failed(tmp.display(), e))?;
    {
        let copy = Backup::new(&src, &mut dst).map_err(|e| BackupError::failed("backup", e))?;
        let mut waits = 0;
        loop {
            match copy
                .step(-1)
                .map_err(|e| BackupError::failed("backup", e))?
            {
                StepResult::Done => break,
                // Busy or locked: the database is being opened or recovered.
                _ if waits < 200 => {
                    waits += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    return Err(BackupError::Failed(
                        "backup: the database stayed busy for 10 s".into(),
                    ))
                }
            }
        }
    }
    drop(src);
    // One self-contained file: no -wal beside it.
    dst.execute_batch("PRAGMA journal_mode=DELETE")
        .map_err(|e| BackupError::failed(tmp.display(), e))?;
    let mut summary = checked(&dst, &tmp)?;
    drop(dst);
    commit_file(&tmp, file)?;
    summary.bytes = size(file);
    Ok(summary)
}

/// Replaces the database at `db` with a copy of `file`. The database it
/// replaces is kept beside it as `DB.before-restore` (with its -wal).
pub(crate) fn restore(db: &Path, file: &Path) -> Result<(), BackupError> {
    expect_magic(file, MAGIC, "a SQLite database")?;
    refuse_in_use(db)?;
    // Checked on a copy in the database's own directory, then renamed into place.
    let tmp = partial(db);
    let _ = std::fs::remove_file(&tmp);
    std::fs::copy(file, &tmp).map_err(|e| {
        BackupError::failed(
            format!("copying {} to {}", file.display(), tmp.display()),
            e,
        )
    })?;
    // fs::copy takes the backup's mode; the database gets the services' (UMask=0027).
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o640))
        .map_err(|e| BackupError::failed(tmp.display(), e))?;
    {
        let conn = Connection::open(&tmp).map_err(|e| BackupError::failed(tmp.display(), e))?;
        checked(&conn, file)?;
        let version: i64 = conn
            .query_row(
                "select coalesce(max(version), 0) from schema_migrations",
                [],
                |r| r.get(0),
            )
            .map_err(|e| BackupError::failed(file.display(), e))?;
        let known = SQLITE.last().map_or(0, |m| m.version);
        if version > known {
            let _ = std::fs::remove_file(&tmp);
            return Err(BackupError::Failed(format!(
                "{} comes from a newer version (schema {version}, this one knows {known}): install that version to restore it",
                file.display()
            )));
        }
    }
    refuse_in_use(db)?;
    if db.exists() {
        let kept = with_suffix(db, ".before-restore");
        for s in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(with_suffix(&kept, s));
        }
        let _ = std::fs::remove_file(&kept);
        std::fs::rename(db, &kept).map_err(|e| BackupError::failed(db.display(), e))?;
        // The WAL belongs to the database it was written for: it goes along
        // (a stale WAL beside the restored file would be replayed into it).
        let wal = with_suffix(db, "-wal");
        if wal.exists() {
            std::fs::rename(&wal, with_suffix(&kept, "-wal"))
                .map_err(|e| BackupError::failed(wal.display(), e))?;
        }
        let _ = std::fs::remove_file(with_suffix(db, "-shm"));
    }
    commit_file(&tmp, db)
}

/// The restored database's counts, after `PRAGMA integrity_check`.
pub(crate) fn check(db: &Path) -> Result<Summary, BackupError> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(|e| BackupError::failed(db.display(), e))?;
    let mut s = checked(&conn, db)?;
    s.bytes = size(db);
    Ok(s)
}

/// `PRAGMA integrity_check` must say "ok"; then the counts.
fn checked(conn: &Connection, what: &Path) -> Result<Summary, BackupError> {
    let failed = |e| BackupError::failed(what.display(), e);
    let verdict: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(failed)?;
    if verdict != "ok" {
        return Err(BackupError::Failed(format!(
            "{}: integrity check failed: {verdict}",
            what.display()
        )));
    }
    let (orders, items, history) = conn
        .query_row(COUNTS_SQL, [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map_err(|e| {
            BackupError::failed(
                format!("{} (is it this system's database?)", what.display()),
                e,
            )
        })?;
    Ok(Summary {
        orders,
        items,
        history,
        bytes: 0,
    })
}

/// Refuses while another process has the database open. Every SQLite
/// connection to a WAL database holds a shared lock on one byte of its -shm
/// file (the "DMS" byte, offset 128, in SQLite's unix VFS) for as long as it
/// is open; a running service keeps its connections open.
fn refuse_in_use(db: &Path) -> Result<(), BackupError> {
    const DMS_BYTE: i64 = 128;
    let shm = with_suffix(db, "-shm");
    let f = match std::fs::File::open(&shm) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(BackupError::failed(shm.display(), e)),
    };
    // SAFETY: a plain C struct; all-zero is a valid value, filled in below.
    let mut lock: nix::libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = nix::libc::F_WRLCK as _;
    lock.l_whence = nix::libc::SEEK_SET as _;
    lock.l_start = DMS_BYTE;
    lock.l_len = 1;
    nix::fcntl::fcntl(f.as_fd(), nix::fcntl::FcntlArg::F_GETLK(&mut lock))
        .map_err(|e| BackupError::failed(shm.display(), e))?;
    if i32::from(lock.l_type) != nix::libc::F_UNLCK {
        return Err(BackupError::InUse(format!(
            "process {} has {} open",
            lock.l_pid,
            db.display()
        )));
    }
    Ok(())
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}
