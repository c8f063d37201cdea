//! The servers around the daemon (PostgreSQL databases, RabbitMQ vhosts), the
//! daemon process itself (start, READY over NOTIFY_SOCKET, stop), and what
//! /proc says about it.

use restaurant_system::process::config::{RabbitConfig, Secret};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::net::UnixDatagram;
use tokio::process::{Child, Command};

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, Error>;

/// Where the servers are (from the command line / environment).
#[derive(Debug, Clone)]
pub struct Servers {
    pub pg_host: String,
    pub pg_port: u16,
    pub pg_user: String,
    pub pg_password: Option<String>,
    pub amqp_host: String,
    pub amqp_port: u16,
    pub amqp_user: String,
    pub amqp_password: String,
    pub mqtt_host: String,
    pub mqtt_port: u16,
}

impl Servers {
    pub fn rabbit(&self, vhost: &str) -> RabbitConfig {
        RabbitConfig {
            host: self.amqp_host.clone(),
            port: self.amqp_port,
            user: self.amqp_user.clone(),
            password: Secret::new(self.amqp_password.clone()),
            vhost: vhost.to_string(),
            ..Default::default()
        }
    }

    pub async fn pg_connect(&self, db: &str) -> Result<tokio_postgres::Client> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&self.pg_host)
            .port(self.pg_port)
            .user(&self.pg_user)
            .dbname(db)
            .application_name("restaurant-bench")
            .connect_timeout(Duration::from_secs(5));
        if let Some(pw) = &self.pg_password {
            cfg.password(pw);
        }
        let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.map_err(|e| {
            format!(
                "PostgreSQL at {}:{} (user {}): {e}. Start it with `bash scripts/test.sh` or `pg_ctlcluster 15 main start`",
                self.pg_host, self.pg_port, self.pg_user
            )
        })?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Creates database `name` (dropping a leftover of the same name first).
    pub async fn create_db(&self, name: &str) -> Result<()> {
        let c = self.pg_connect("postgres").await?;
        c.batch_execute(&format!("drop database if exists {name} with (force)"))
            .await?;
        c.batch_execute(&format!("create database {name}")).await?;
        Ok(())
    }

    /// (transactions committed, rows inserted + updated + deleted) in `db`.
    pub async fn db_stats(&self, db: &str) -> Option<(i64, i64)> {
        let c = self.pg_connect("postgres").await.ok()?;
        let row = c
            .query_one(
                "select xact_commit, tup_inserted + tup_updated + tup_deleted from pg_stat_database where datname = $1",
                &[&db],
            )
            .await
            .ok()?;
        Some((row.get(0), row.get(1)))
    }

    pub async fn drop_db(&self, name: &str) -> Result<()> {
        let c = self.pg_connect("postgres").await?;
        c.batch_execute(&format!("drop database if exists {name} with (force)"))
            .await?;
        Ok(())
    }
}

/// `rabbitmqctl ARGS...` (the local node; each call costs about half a second).
pub fn rabbitmqctl(args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running rabbitmqctl {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "rabbitmqctl {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(())
}

/// A private RabbitMQ vhost, deleted on drop.
pub struct Vhost {
    pub name: String,
}

impl Vhost {
    pub fn create(name: &str, user: &str) -> Result<Vhost> {
        let _ = rabbitmqctl(&["-q", "delete_vhost", name]);
        rabbitmqctl(&["-q", "add_vhost", name])?;
        let v = Vhost {
            name: name.to_string(),
        };
        rabbitmqctl(&["-q", "set_permissions", "-p", name, user, ".*", ".*", ".*"])?;
        Ok(v)
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        if let Err(e) = rabbitmqctl(&["-q", "delete_vhost", &self.name]) {
            eprintln!("bench: could not delete vhost {}: {e}", self.name);
        }
    }
}

/// The CPUs every daemon is pinned to (--daemon-cpus), if any.
static DAEMON_CPUS: std::sync::OnceLock<String> = std::sync::OnceLock::new();

pub fn pin_daemons(cpus: &str) {
    let _ = DAEMON_CPUS.set(cpus.to_string());
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A running daemon process.
pub struct Daemon {
    pub child: Child,
    pub pid: u32,
    /// From spawn to the READY=1 datagram.
    pub ready_ms: f64,
    pub stderr_path: PathBuf,
}

/// Why a daemon did not come up.
#[derive(Debug)]
pub struct StartFailure {
    pub message: String,
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The last lines of a log file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Spawns `bin ARGS` with `env` (and nothing inherited but PATH and HOME), its
/// stdout and stderr in `dir/NAME.out|err`, and waits for READY=1 on a private
/// NOTIFY_SOCKET (what systemd would see).
pub async fn start_daemon(
    bin: &Path,
    args: &[String],
    env: &[(String, String)],
    dir: &Path,
    name: &str,
    timeout: Duration,
) -> std::result::Result<Daemon, StartFailure> {
    let fail = |m: String| StartFailure { message: m };
    let sock_path = dir.join(format!("notify-{name}.sock"));
    let _ = std::fs::remove_file(&sock_path);
    let sock = UnixDatagram::bind(&sock_path)
        .map_err(|e| fail(format!("binding {}: {e}", sock_path.display())))?;
    let out_path = dir.join(format!("{name}.out"));
    let err_path = dir.join(format!("{name}.err"));
    let out = std::fs::File::create(&out_path).map_err(|e| fail(e.to_string()))?;
    let err = std::fs::File::create(&err_path).map_err(|e| fail(e.to_string()))?;
    // taskset execs the daemon: the pid (and /proc readings) stay the daemon's.
    let mut cmd = match DAEMON_CPUS.get() {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpus).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::var("HOME").unwrap_or_else(|_| "/".into()))
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("NOTIFY_SOCKET", &sock_path)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| fail(format!("starting {}: {e}", bin.display())))?;
    let pid = child.id().unwrap_or(0);
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            r = sock.recv(&mut buf) => {
                let n = r.map_err(|e| fail(format!("reading NOTIFY_SOCKET: {e}")))?;
                let msg = String::from_utf8_lossy(&buf[..n]);
                if msg.lines().any(|l| l == "READY=1") {
                    let ready_ms = started.elapsed().as_secs_f64() * 1000.0;
                    return Ok(Daemon { child, pid, ready_ms, stderr_path: err_path });
                }
            }
            status = child.wait() => {
                let code = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                let why = tail(&err_path, 5);
                let why = if why.trim().is_empty() { tail(&out_path, 5) } else { why };
                return Err(fail(format!("{name} exited before READY ({code}): {}", why.trim())));
            }
            _ = &mut deadline => {
                let _ = child.kill().await;
                return Err(fail(format!("{name} did not send READY=1 within {timeout:?}; last log lines: {}", tail(&out_path, 5).trim())));
            }
        }
    }
}

/// How a daemon stopped.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Stopped {
    pub exit_code: Option<i32>,
    pub stop_ms: f64,
    pub killed: bool,
}

impl Daemon {
    /// SIGTERM, then waits up to `grace` before SIGKILL.
    pub async fn stop(mut self, grace: Duration) -> Stopped {
        let t = Instant::now();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) => Stopped {
                exit_code: status.code(),
                stop_ms: t.elapsed().as_secs_f64() * 1000.0,
                killed: false,
            },
            _ => {
                let _ = self.child.kill().await;
                Stopped {
                    exit_code: None,
                    stop_ms: t.elapsed().as_secs_f64() * 1000.0,
                    killed: true,
                }
            }
        }
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(self.pid)
    }

    pub fn status_kb(&self, key: &str) -> Option<u64> {
        status_kb(self.pid, key)
    }
}

/// A `VmRSS`/`VmHWM`-style line of /proc/PID/status, in kB.
pub fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// utime + stime of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // After the command: state(0) ... utime(11) stime(12), in clock ticks.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks())
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// What the machine is: cores, memory, CPU model, load.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_mb: u64,
    pub cpu_model: String,
    pub kernel: String,
    pub loadavg_start: String,
    pub loadavg_end: String,
}

impl Machine {
    pub fn read() -> Machine {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_mb = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kb| kb / 1024)
            .unwrap_or(0);
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string();
        Machine {
            cores,
            memory_mb,
            cpu_model,
            kernel,
            loadavg_start: loadavg(),
            loadavg_end: String::new(),
        }
    }
}

/// Sectors written so far on the whole disks (not partitions), from /proc/diskstats.
pub fn sectors_written() -> u64 {
    let text = std::fs::read_to_string("/proc/diskstats").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let name = *f.get(2)?;
            let whole = std::path::Path::new("/sys/block").join(name).exists();
            let virt = name.starts_with("loop") || name.starts_with("ram");
            (whole && !virt).then(|| f.get(9)?.parse::<u64>().ok())?
        })
        .sum()
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}
