//! The PostgreSQL side of `storage::backup`: pg_dump and pg_restore (the
//! postgresql-client package, the server's major version or newer).
//!
//! The password reaches them in their environment (PGPASSWORD), never on a
//! command line another user could read in `ps`; without one configured they
//! use what libpq finds itself (~/.pgpass, PGPASSFILE).

use super::Connector;
use crate::process::config::{DatabaseConfig, PgSslMode};
use crate::storage::backup_file::{
    commit_file, expect_magic, partial, BackupError, Summary, COUNTS_SQL,
};
use std::path::Path;
use std::process::Stdio;

/// The first bytes of pg_dump's custom format.
const MAGIC: &[u8] = b"PGDMP";

/// pg_dump of the snapshot the counts were read in: the copy and its summary
/// are the database as of one instant, while intake goes on.
pub(crate) async fn backup(cfg: &DatabaseConfig, file: &Path) -> Result<Summary, BackupError> {
    let client = connect(cfg).await?;
    let db_err = |e| BackupError::failed("backup", e);
    client
        .batch_execute("begin isolation level repeatable read read only")
        .await
        .map_err(db_err)?;
    let snapshot: String = client
        .query_one("select pg_export_snapshot()", &[])
        .await
        .map_err(db_err)?
        .get(0);
    let mut summary = counts(&client).await?;
    let tmp = partial(file);
    let _ = std::fs::remove_file(&tmp);
    let mut dump = tool("pg_dump", cfg);
    dump.args(["--format=custom", "--no-owner", "--no-privileges"])
        .arg(format!("--snapshot={snapshot}"))
        .arg("--file")
        .arg(&tmp)
        .arg(format!("--dbname={}", cfg.dbname_arg()));
    let ran = run(dump, "pg_dump").await;
    // The snapshot had to live until pg_dump imported it; it is done now.
    let _ = client.batch_execute("commit").await;
    if let Err(e) = ran {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // The archive reads back whole: its table of contents lists every entry.
    let mut list = tool("pg_restore", cfg);
    list.arg("--list").arg(&tmp);
    run(list, "pg_restore --list").await?;
    commit_file(&tmp, file)?;
    summary.bytes = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    Ok(summary)
}

/// pg_restore into the configured database, in one transaction (all or
/// nothing), after making sure no other session is connected to it.
pub(crate) async fn restore(cfg: &DatabaseConfig, file: &Path) -> Result<Summary, BackupError> {
    expect_magic(file, MAGIC, "a pg_dump archive (custom format)")?;
    let mut list = tool("pg_restore", cfg);
    list.arg("--list").arg(file);
    run(list, "pg_restore --list").await?;
    {
        let client = connect(cfg).await?;
        let row = client
            .query_one(
                "select count(*), coalesce(string_agg(distinct coalesce(nullif(application_name, ''), 'unnamed'), ', '), '') \
                 from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()",
                &[],
            )
            .await
            .map_err(|e| BackupError::failed("restore", e))?;
        let (n, who): (i64, String) = (row.get(0), row.get(1));
        if n > 0 {
            return Err(BackupError::InUse(format!(
                "{n} other connection(s) to database {}: {who}",
                cfg.database
            )));
        }
    }
    let mut restore = tool("pg_restore", cfg);
    restore
        .args([
            "--clean",
            "--if-exists",
            "--no-owner",
            "--no-privileges",
            "--single-transaction",
            "--exit-on-error",
        ])
        .arg(format!("--dbname={}", cfg.dbname_arg()))
        .arg(file);
    run(restore, "pg_restore").await?;
    // Opening applies the migrations a copy from an older version lacks.
    crate::storage::open(cfg)
        .await
        .map_err(|e| BackupError::failed("opening the restored database", e))?;
    let mut summary = counts(&connect(cfg).await?).await?;
    summary.bytes = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    Ok(summary)
}

async fn connect(cfg: &DatabaseConfig) -> Result<tokio_postgres::Client, BackupError> {
    let mut at = Connector::new(cfg).map_err(|e| BackupError::failed("database TLS", e))?;
    at.pg.application_name("restaurant-system backup");
    let (client, _conn) = at
        .connect()
        .await
        .map_err(|e| BackupError::failed(format!("connecting to {}", cfg.place()), e))?;
    Ok(client)
}

async fn counts(client: &tokio_postgres::Client) -> Result<Summary, BackupError> {
    let row = client
        .query_one(COUNTS_SQL, &[])
        .await
        .map_err(|e| BackupError::failed("counting orders", e))?;
    Ok(Summary {
        orders: row.get(0),
        items: row.get(1),
        history: row.get(2),
        bytes: 0,
    })
}

/// A PostgreSQL client tool pointed at the configured server.
fn tool(name: &str, cfg: &DatabaseConfig) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(name);
    cmd.arg(format!(
        "--host={}",
        cfg.host.as_deref().unwrap_or("localhost")
    ))
    .arg(format!("--port={}", cfg.port))
    .arg(format!("--username={}", cfg.user))
    .arg("--no-password")
    .env("PGCONNECT_TIMEOUT", "10")
    .env("PGAPPNAME", "restaurant-system backup")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    if let Some(pw) = cfg.password.as_ref() {
        cmd.env("PGPASSWORD", pw.expose());
    }
    // libpq checks the server as our own connections do (`tls`); without
    // TLS its defaults stay as they were.
    let (mode, ca) = cfg.ssl();
    if mode != PgSslMode::Disable {
        let mode = if mode == PgSslMode::VerifyCa {
            "verify-ca"
        } else {
            "verify-full"
        };
        cmd.env("PGSSLMODE", mode)
            .env("PGSSLROOTCERT", crate::tls::ca_file_or_system(&ca));
    }
    cmd
}

async fn run(mut cmd: tokio::process::Command, what: &str) -> Result<(), BackupError> {
    let out = cmd.output().await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            BackupError::Failed(format!(
                "{what}: not installed (apt install postgresql-client; the server's major version or newer)"
            ))
        } else {
            BackupError::failed(what, e)
        }
    })?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let err = err.trim();
    Err(BackupError::Failed(format!(
        "{what} failed ({}): {}",
        out.status,
        if err.is_empty() { "no message" } else { err }
    )))
}
