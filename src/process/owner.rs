//! Who owns the SQLite files when root runs the binary.
//!
//! The services run as the package's user (`restaurant`) and own
//! `/var/lib/restaurant-system`. A command run as root that creates the
//! database there (`token create` before the services ever started, as
//! install.md's steps go; `migrate`; a mode started by hand) would leave a
//! root-owned file that the services cannot write: they then wait for the
//! database forever. So root first becomes the owner of the database's
//! directory, and every file it creates belongs to that user, with the mode the
//! units give (UMask=0027). Files an older version left to root there are
//! handed back.

use nix::sys::stat::{umask, Mode};
use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};
use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The units' `UMask=0027`: files 0640, directories 0750.
const SERVICE_UMASK: u32 = 0o027;

#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    #[error("cannot read {path}: {source}")]
    Inspect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot give {path} to the owner of its directory (uid {uid}): {source}")]
    Chown {
        path: PathBuf,
        uid: u32,
        source: std::io::Error,
    },
    #[error("cannot become uid {uid} (owner of {dir}) to create the database as the services would: {source}; run the command as that user (runuser -u USER -- restaurant-system ...)")]
    Switch {
        uid: u32,
        dir: PathBuf,
        source: nix::Error,
    },
}

/// The user a root process became, or None when it stayed as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Became {
    pub uid: u32,
    pub gid: u32,
}

/// When running as root, becomes the owner of the directory that holds (or
/// will hold) the SQLite database at `db`, first handing that user any of the
/// database's files root owns there. Does nothing when not root, or when the
/// directory is root's own (a root-run development setup stays as it is).
/// Must run before any thread is started.
pub fn become_state_owner(db: &Path) -> Result<Option<Became>, OwnerError> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    // The nearest directory that exists: SQLite creates the rest under it.
    let dir = db
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let Some(existing) = dir.ancestors().find(|a| a.exists()) else {
        return Ok(None);
    };
    let meta = std::fs::metadata(existing).map_err(|source| OwnerError::Inspect {
        path: existing.to_path_buf(),
        source,
    })?;
    let (uid, gid) = (meta.uid(), meta.gid());
    if uid == 0 {
        return Ok(None);
    }
    if existing == dir {
        hand_back(dir, db, uid, gid)?;
    }
    let switch = |source| OwnerError::Switch {
        uid,
        dir: existing.to_path_buf(),
        source,
    };
    // Group first: once the uid is dropped, the group can no longer change.
    setgroups(&[Gid::from_raw(gid)]).map_err(switch)?;
    setgid(Gid::from_raw(gid)).map_err(switch)?;
    setuid(Uid::from_raw(uid)).map_err(switch)?;
    umask(Mode::from_bits_truncate(SERVICE_UMASK));
    Ok(Some(Became { uid, gid }))
}

/// Gives `uid:gid` the database's own files in `dir` (the database, its -wal,
/// -shm and journal, the workers' lock files) that root owns, at mode 0640.
fn hand_back(dir: &Path, db: &Path, uid: u32, gid: u32) -> Result<(), OwnerError> {
    let Some(stem) = db.file_name() else {
        return Ok(());
    };
    let stem = stem.as_encoded_bytes();
    let entries = std::fs::read_dir(dir).map_err(|source| OwnerError::Inspect {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries.flatten() {
        if !entry.file_name().as_encoded_bytes().starts_with(stem) {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_file() || meta.uid() != 0 {
            continue;
        }
        let failed = |source| OwnerError::Chown {
            path: path.clone(),
            uid,
            source,
        };
        chown(&path, Some(uid), Some(gid)).map_err(failed)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).map_err(failed)?;
    }
    Ok(())
}
