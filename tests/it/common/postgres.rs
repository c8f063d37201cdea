//! A PostgreSQL cluster of a test's own: `initdb` into a temporary directory
//! (as the `postgres` user when the tests run as root), started on a free
//! port, stopped (immediately) and removed on drop. For tests that change the
//! server itself (read-only, failover) where the shared server cannot be used.

use super::mosquitto::free_port;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = "/usr/lib/postgresql/15/bin";

pub struct PrivatePg {
    pub port: u16,
    dir: tempfile::TempDir,
}

fn as_postgres(program: &Path) -> Command {
    if nix::unistd::Uid::effective().is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e} (needs postgresql-15: apt install postgresql)"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl PrivatePg {
    /// initdb (trust for local connections, user `postgres`) and start.
    pub fn start() -> PrivatePg {
        let dir = tempfile::tempdir().expect("temp dir");
        if nix::unistd::Uid::effective().is_root() {
            run(
                Command::new("chown")
                    .arg("-R")
                    .arg("postgres:")
                    .arg(dir.path()),
                "chown the private cluster's directory",
            );
        }
        let data = dir.path().join("data");
        run(
            as_postgres(&Path::new(BIN).join("initdb"))
                .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "-D"])
                .arg(&data),
            "initdb",
        );
        let port = free_port();
        let pg = PrivatePg { port, dir };
        let opts = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off",
            pg.dir.path().display()
        );
        run(
            as_postgres(&Path::new(BIN).join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(pg.dir.path().join("log"))
                .args(["-w", "-t", "60", "-o", &opts, "start"]),
            "pg_ctl start",
        );
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs `sql` as `postgres` in database `db`; its output, unaligned.
    pub fn sql(&self, db: &str, sql: &str) -> String {
        run(
            Command::new(Path::new(BIN).join("psql"))
                .args([
                    "-X",
                    "-q",
                    "-At",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-h",
                    "127.0.0.1",
                ])
                .args([
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                    "-d",
                    db,
                    "-c",
                    sql,
                ]),
            "psql",
        )
    }

    /// Makes the server refuse writes (`default_transaction_read_only`, as a
    /// demoted primary does) or take them again; `kick` ends every client
    /// session, as a failover does.
    pub fn read_only(&self, on: bool, kick: bool) {
        let v = if on { "on" } else { "off" };
        self.sql(
            "postgres",
            &format!("alter system set default_transaction_read_only = {v}"),
        );
        self.sql("postgres", "select pg_reload_conf()");
        if kick {
            self.sql(
                "postgres",
                "select count(pg_terminate_backend(pid)) from pg_stat_activity where backend_type = 'client backend' and pid <> pg_backend_pid()",
            );
        }
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = as_postgres(&Path::new(BIN).join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "stop"])
            .output();
    }
}
