//! Private PostgreSQL clusters and RabbitMQ nodes, for what the machine's
//! shared servers cannot show: the fault suite stops and starts them, and the
//! TLS client tests (issue 27) need them to speak TLS with a certificate from
//! a CA the test makes (`test_cert`, `start_tls`).
//!
//! Each test starts its own on free ports in a temp dir, and
//! `Drop` stops it and removes its files, also when the test fails. When we
//! are root the servers run as the `postgres` and `rabbitmq` users (neither
//! runs as root); otherwise as the current user.
//!
//! Everything here is blocking (std::process); async tests call it through
//! `tokio::task::spawn_blocking` while load is running.

use std::fs::File;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A TCP port nobody listens on right now (the OS picks it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("asking the OS for a free port")
}

pub fn port_open(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Makes `path` (recursively) belong to `user` when we are root.
fn give_to(path: &Path, user: &str) {
    if !is_root() {
        return;
    }
    let u = nix::unistd::User::from_name(user)
        .ok()
        .flatten()
        .unwrap_or_else(|| {
            panic!("user '{user}' does not exist: is its server package installed?")
        });
    let (uid, gid) = (u.uid.as_raw(), u.gid.as_raw());
    fn walk(p: &Path, uid: u32, gid: u32) {
        std::os::unix::fs::chown(p, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
        if p.is_dir() {
            for e in std::fs::read_dir(p).expect("read_dir").flatten() {
                walk(&e.path(), uid, gid);
            }
        }
    }
    walk(path, uid, gid);
}

/// `program` run as `user` when we are root (runuser), else as ourselves.
fn as_user(user: &str, program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", user, "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs `cmd` to completion within `limit`. Output goes to a file, not a pipe:
/// a daemon the command forks may keep its stdout open forever.
pub fn run_limited(cmd: &mut Command, out_file: &Path, limit: Duration) -> Result<String, String> {
    let desc = format!("{cmd:?}");
    let out = File::create(out_file).map_err(|e| format!("{}: {e}", out_file.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("{desc}: {e}"))?;
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{desc}: no answer within {limit:?}"));
            }
        }
    };
    let mut text = String::new();
    let _ = File::open(out_file).and_then(|mut f| f.read_to_string(&mut text));
    if status.success() {
        Ok(text)
    } else {
        Err(format!("{desc} failed ({status}):\n{text}"))
    }
}

fn alive(pid: i32) -> bool {
    pid > 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// A temp dir in /tmp (`prefix` is rs_fault_pg, rs_fault_mq or rs_fault_run)
/// that records the test process owning it, so that what it holds can be
/// cleaned up if that process dies without running its destructors.
pub fn owned_dir(prefix: &str) -> tempfile::TempDir {
    reap_orphans();
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .expect("temp dir in /tmp");
    std::fs::write(dir.path().join("owner.pid"), std::process::id().to_string())
        .expect("writing owner.pid");
    dir
}

/// Stops and removes private servers and binary subprocesses whose test
/// process died without running its destructors (SIGKILL, a CI stage
/// timeout). Only dirs with an owner.pid naming a dead process are touched,
/// so concurrent runs are safe.
fn reap_orphans() {
    let Ok(rd) = std::fs::read_dir("/tmp") else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let (pg, mq, run) = (
            name.starts_with("rs_fault_pg"),
            name.starts_with("rs_fault_mq"),
            name.starts_with("rs_fault_run"),
        );
        let dir = e.path();
        if !(pg || mq || run) || read_pid(&dir.join("owner.pid")).is_none_or(alive) {
            continue;
        }
        // restaurant-system processes: their environment names this dir
        // (NOTIFY_SOCKET), which rules out a recycled pid.
        let pids = std::fs::read_to_string(dir.join("pids")).unwrap_or_default();
        for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let marker = dir.display().to_string();
            if String::from_utf8_lossy(&env).contains(&marker) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if pg && dir.join("data/postmaster.pid").exists() {
            let mut cmd = as_user("postgres", &pg_bindir().join("pg_ctl"));
            cmd.arg("-D")
                .arg(dir.join("data"))
                .args(["-m", "immediate", "-w", "-t", "30", "stop"])
                .current_dir(&dir);
            let _ = run_limited(&mut cmd, &dir.join("reap.out"), Duration::from_secs(40));
        }
        if let Some(pid) = read_pid(&dir.join("rabbitmq.pid")).filter(|p| alive(*p)) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        eprintln!("removed {name}: left behind by a test process that died");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn wait_until(limit: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------
// PostgreSQL

/// `sql` by `bin`'s psql as `postgres` in database `db` on 127.0.0.1:`port`,
/// its output unaligned and trimmed; run in `dir` (where it leaves its output).
fn psql_as_postgres(
    bin: &Path,
    dir: &Path,
    port: u16,
    db: &str,
    sql: &str,
) -> Result<String, String> {
    let mut cmd = as_user("postgres", &bin.join("psql"));
    cmd.args([
        "-X",
        "-q",
        "-At",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        "127.0.0.1",
        "-p",
    ])
    .arg(port.to_string())
    .args(["-U", "postgres", "-d", db, "-c", sql])
    .current_dir(dir);
    let out = dir.join(format!("psql-{port}.out"));
    run_limited(&mut cmd, &out, Duration::from_secs(30)).map(|s| s.trim().to_string())
}

/// A throwaway PostgreSQL cluster on 127.0.0.1:`port`, trust authentication,
/// user `postgres`, database `postgres`. With TLS (`start_tls`): only
/// `hostssl` connections from 127.0.0.1, by `password` (SCRAM).
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    pub password: Option<String>,
    /// Server options beyond the port, socket and listen address.
    options: String,
}

/// The newest /usr/lib/postgresql/N/bin with initdb (TEST_PG_BINDIR overrides).
fn pg_bindir() -> PathBuf {
    if let Ok(d) = std::env::var("TEST_PG_BINDIR") {
        return PathBuf::from(d);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                    let bin = e.path().join("bin");
                    bin.join("initdb").exists().then_some((v, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().map(|(_, b)| b).expect(
        "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin (apt-get install postgresql, \
         or set TEST_PG_BINDIR)",
    )
}

impl PrivatePostgres {
    pub fn start() -> PrivatePostgres {
        let pg = PrivatePostgres::init();
        pg.start_server();
        pg
    }

    /// `ssl = on` with `cert`, and no connection without TLS: an order that
    /// gets through went over TLS.
    pub fn start_tls(cert: &TestCert) -> PrivatePostgres {
        let mut pg = PrivatePostgres::init();
        let data = pg.dir.path().join("data");
        for (from, to) in [(&cert.chain, "server.crt"), (&cert.key, "server.key")] {
            std::fs::copy(from, data.join(to)).expect("copying the server certificate");
            std::fs::set_permissions(
                data.join(to),
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .expect("chmod");
        }
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
        )
        .expect("pg_hba.conf");
        give_to(&data, "postgres");
        let password = format!("pg-{:016x}", rand::random::<u64>());
        pg.options = " -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key".into();
        pg.start_server();
        // Over the Unix socket (trust): the password is never on a command line.
        pg.pg(
            "psql",
            &[
                "-h",
                &pg.dir.path().display().to_string(),
                "-p",
                &pg.port.to_string(),
                "-U",
                "postgres",
                "-qAt",
                "-c",
                &format!("alter user postgres password '{password}'"),
            ],
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("setting the password: {e}"));
        pg.password = Some(password);
        pg
    }

    fn init() -> PrivatePostgres {
        let bin = pg_bindir();
        let dir = owned_dir("rs_fault_pg");
        give_to(dir.path(), "postgres");
        let pg = PrivatePostgres {
            dir,
            bin,
            port: free_port(),
            password: None,
            options: String::new(),
        };
        let data = pg.data();
        pg.pg(
            "initdb",
            &[
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            Duration::from_secs(120),
        )
        .unwrap_or_else(|e| panic!("initdb for the private PostgreSQL failed: {e}"));
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn pg(&self, tool: &str, args: &[&str], limit: Duration) -> Result<String, String> {
        let mut cmd = as_user("postgres", &self.bin.join(tool));
        cmd.args(args).current_dir(self.dir.path());
        run_limited(
            &mut cmd,
            &self.dir.path().join(format!("{tool}.out")),
            limit,
        )
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start_server(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200{}",
            self.port,
            self.dir.path().display(),
            self.options
        );
        let (data, log) = (self.data(), self.log().display().to_string());
        self.pg(
            "pg_ctl",
            &[
                "-D", &data, "-l", &log, "-o", &opts, "-w", "-t", "60", "start",
            ],
            Duration::from_secs(90),
        )
        .unwrap_or_else(|e| {
            panic!(
                "starting the private PostgreSQL failed: {e}\n{}",
                tail(&self.log(), 30)
            )
        });
    }

    /// Stops the server: `fast` (clients disconnected, clean shutdown) or
    /// `immediate` (like a crash: recovery at the next start).
    pub fn stop_server(&self, mode: &str) {
        let data = self.data();
        self.pg(
            "pg_ctl",
            &["-D", &data, "-m", mode, "-w", "-t", "60", "stop"],
            Duration::from_secs(90),
        )
        .unwrap_or_else(|e| panic!("stopping the private PostgreSQL failed: {e}"));
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log(), lines)
    }

    /// Runs `sql` as `postgres` in database `db`; its output, unaligned.
    pub fn sql(&self, db: &str, sql: &str) -> String {
        psql_as_postgres(&self.bin, self.dir.path(), self.port, db, sql)
            .unwrap_or_else(|e| panic!("psql on the private PostgreSQL: {e}"))
    }

    /// Makes the server refuse writes (`default_transaction_read_only`, as a
    /// demoted primary does) or take them again (issue 25); `kick` ends every
    /// client session, as a failover does.
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

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self.pg(
            "pg_ctl",
            &["-D", &data, "-m", "immediate", "-w", "-t", "30", "stop"],
            Duration::from_secs(40),
        );
    }
}

// ---------------------------------------------------------------------------
// RabbitMQ

/// A throwaway RabbitMQ node (no plugins) with an AMQP listener on
/// 127.0.0.1:`port`, user guest/guest, vhost "/". It uses the rabbitmq user's
/// Erlang cookie, so `rabbitmqctl -n NODE` works as for the system node.
pub struct PrivateRabbit {
    dir: tempfile::TempDir,
    pub node: String,
    pub port: u16,
    /// The TLS listener's port (`start_tls`); 0 without one.
    pub tls_port: u16,
    dist_port: u16,
    /// The node started in the foreground: its exit before readiness is a
    /// start failure we can report at once.
    server: Option<Child>,
}

const RABBITMQ_SERVER: &str = "/usr/sbin/rabbitmq-server";
const RABBITMQCTL: &str = "/usr/sbin/rabbitmqctl";

impl PrivateRabbit {
    pub fn start() -> PrivateRabbit {
        let mut r = PrivateRabbit::configure();
        r.start_node();
        r
    }

    /// With a TLS listener on `tls_port` serving `cert` (no client certificates).
    pub fn start_tls(cert: &TestCert) -> PrivateRabbit {
        let mut r = PrivateRabbit::configure();
        let p = r.dir.path();
        // The node runs as the rabbitmq user: its own copies, in its own dir.
        std::fs::copy(&cert.chain, p.join("server.crt")).expect("copying the certificate");
        std::fs::copy(&cert.key, p.join("server.key")).expect("copying the key");
        give_to(p, "rabbitmq");
        r.tls_port = free_port();
        for line in [
            format!("listeners.ssl.1 = 127.0.0.1:{}", r.tls_port),
            format!("ssl_options.certfile = {}", p.join("server.crt").display()),
            format!("ssl_options.keyfile = {}", p.join("server.key").display()),
            "ssl_options.verify = verify_none".into(),
            "ssl_options.fail_if_no_peer_cert = false".into(),
        ] {
            r.add_config(&line);
        }
        r.start_node();
        r
    }

    fn configure() -> PrivateRabbit {
        assert!(
            Path::new(RABBITMQ_SERVER).exists(),
            "{RABBITMQ_SERVER} is missing: apt-get install rabbitmq-server"
        );
        assert!(
            is_root(),
            "the private RabbitMQ node needs root (the Debian scripts switch to the rabbitmq user)"
        );
        let dir = owned_dir("rs_fault_mq");
        let port = free_port();
        let mut dist_port = free_port();
        while dist_port == port {
            dist_port = free_port();
        }
        let node = format!(
            "rs_fault_{}_{:06x}@localhost",
            std::process::id(),
            rand::random::<u32>() & 0xff_ffff
        );
        let p = dir.path();
        // Our own config and env files: the system ones name the shared node's
        // listener (5672) and node name.
        std::fs::write(
            p.join("rabbitmq.conf"),
            format!("listeners.tcp.1 = 127.0.0.1:{port}\n"),
        )
        .expect("writing rabbitmq.conf");
        std::fs::write(p.join("rabbitmq-env.conf"), "ERL_EPMD_ADDRESS=127.0.0.1\n")
            .expect("writing rabbitmq-env.conf");
        std::fs::write(p.join("enabled_plugins"), "[].\n").expect("writing enabled_plugins");
        give_to(p, "rabbitmq");
        PrivateRabbit {
            dir,
            node,
            port,
            tls_port: 0,
            dist_port,
            server: None,
        }
    }

    /// Adds a line to the node's rabbitmq.conf (read when the node starts).
    pub fn add_config(&self, line: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("rabbitmq.conf"))
            .expect("opening rabbitmq.conf");
        writeln!(f, "{line}").expect("writing rabbitmq.conf");
    }

    /// Starts the Erlang node (and the rabbit application) and waits for it.
    pub fn start_node(&mut self) {
        let p = self.dir.path();
        let out = File::create(p.join("server.out")).expect("server.out");
        let err = out.try_clone().expect("server.out");
        let child = Command::new(RABBITMQ_SERVER)
            .current_dir(p)
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", p.join("rabbitmq.conf"))
            .env("RABBITMQ_CONF_ENV_FILE", p.join("rabbitmq-env.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", p.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", p.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", p.join("log"))
            .env("RABBITMQ_PID_FILE", p.join("rabbitmq.pid"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("ERL_CRASH_DUMP", p.join("erl_crash.dump"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawning rabbitmq-server");
        self.server = Some(child);
        self.wait_ready(Duration::from_secs(120));
    }

    /// Waits for the AMQP port, then for `rabbitmqctl await_startup`.
    fn wait_ready(&mut self, limit: Duration) {
        let port = self.port;
        let mut exited = None;
        let server = &mut self.server;
        let up = wait_until(limit, || {
            if let Some(s) = server.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                exited = Some(s);
                return true;
            }
            port_open(port)
        });
        if let Some(s) = exited {
            panic!(
                "the private RabbitMQ node exited during start-up ({s}):\n{}",
                self.log_tail(40)
            );
        }
        assert!(
            up,
            "the private RabbitMQ node did not open port {port} within {limit:?}:\n{}",
            self.log_tail(40)
        );
        self.ctl(
            &["await_startup", "--timeout", "60"],
            Duration::from_secs(90),
        )
        .unwrap_or_else(|e| panic!("rabbitmqctl await_startup: {e}\n{}", self.log_tail(40)));
    }

    pub fn ctl(&self, args: &[&str], limit: Duration) -> Result<String, String> {
        let mut cmd = Command::new(RABBITMQCTL);
        cmd.arg("-n").arg(&self.node).args(args);
        let out = self
            .dir
            .path()
            .join(format!("rabbitmqctl-{}.out", args.first().unwrap_or(&"")));
        run_limited(&mut cmd, &out, limit)
    }

    /// `rabbitmqctl stop_app`: every connection is closed, the port closes,
    /// the Erlang node keeps running.
    pub fn stop_app(&self) {
        self.ctl(&["stop_app"], Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("rabbitmqctl stop_app: {e}"));
        assert!(
            wait_until(Duration::from_secs(10), || !port_open(self.port)),
            "port {} still open after stop_app",
            self.port
        );
    }

    pub fn start_app(&mut self) {
        self.ctl(&["start_app"], Duration::from_secs(90))
            .unwrap_or_else(|e| panic!("rabbitmqctl start_app: {e}\n{}", self.log_tail(40)));
        self.wait_ready(Duration::from_secs(60));
    }

    /// SIGKILL to the node's Erlang VM: a crash, no connection is closed politely.
    pub fn kill_node(&mut self) {
        self.kill_beam();
        if let Some(mut c) = self.server.take() {
            let _ = wait_until(Duration::from_secs(30), || {
                c.try_wait().ok().flatten().is_some()
            });
            let _ = c.kill();
            let _ = c.wait();
        }
        assert!(
            wait_until(Duration::from_secs(10), || !port_open(self.port)),
            "port {} still open after killing the node",
            self.port
        );
    }

    fn kill_beam(&self) {
        // Only our node's beam: the pid file lives in our temp dir.
        if let Some(pid) = read_pid(&self.dir.path().join("rabbitmq.pid")).filter(|p| alive(*p)) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let mut s = tail(&self.dir.path().join("server.out"), lines);
        if let Ok(rd) = std::fs::read_dir(self.dir.path().join("log")) {
            for e in rd.flatten() {
                if e.path().extension().is_some_and(|x| x == "log") {
                    s.push_str(&format!("\n--- {}\n", e.path().display()));
                    s.push_str(&tail(&e.path(), lines));
                }
            }
        }
        s
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        let _ = self.ctl(&["shutdown"], Duration::from_secs(30));
        if let Some(mut c) = self.server.take() {
            let _ = wait_until(Duration::from_secs(10), || {
                c.try_wait().ok().flatten().is_some()
            });
            let _ = c.kill();
            let _ = c.wait();
        }
        self.kill_beam();
    }
}

// ---------------------------------------------------------------------------
// Certificates

/// A CA made for a test and a server certificate it signed.
pub struct TestCert {
    pub ca: PathBuf,
    /// The server certificate, then the CA.
    pub chain: PathBuf,
    pub key: PathBuf,
}

/// Makes a CA (`ca-TAG.crt`) and a server certificate for `names` valid for
/// `days` from now (negative: expired that many days ago) in `dir`.
pub fn test_cert(dir: &Path, tag: &str, names: &[&str], days: i64) -> TestCert {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let now = time::OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("test CA {tag}"));
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("server key");
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("params");
    if days < 0 {
        params.not_before = now - time::Duration::days(30);
    } else {
        params.not_before = now - time::Duration::hours(1);
    }
    params.not_after = now + time::Duration::days(days);
    let cert = params.signed_by(&key, &issuer).expect("server cert");
    let files = TestCert {
        ca: dir.join(format!("ca-{tag}.crt")),
        chain: dir.join(format!("server-{tag}.crt")),
        key: dir.join(format!("server-{tag}.key")),
    };
    std::fs::write(&files.ca, ca.pem()).expect("write CA");
    std::fs::write(&files.chain, format!("{}{}", cert.pem(), ca.pem())).expect("write chain");
    std::fs::write(&files.key, key.serialize_pem()).expect("write key");
    files
}

// ---------------------------------------------------------------------------
// pg_auto_failover

/// A real pg_auto_failover formation on this host (Debian's
/// postgresql-15-auto-failover): a monitor and two nodes, `a` (the first
/// primary) and `b` (its synchronous secondary), each `pg_autoctl` run as the
/// `postgres` user in a process group of its own, on free ports, trust
/// authentication, no TLS. The monitor is tuned to fail over within seconds.
/// `Drop` stops every process it started and removes its files.
pub struct PrivateFormation {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub monitor_port: u16,
    /// Nodes `a` and `b`.
    pub ports: [u16; 2],
    /// pg_autoctl processes (monitor, a, b): each leads its process group.
    keepers: std::sync::Mutex<Vec<Child>>,
}

const NODES: [&str; 2] = ["a", "b"];

impl PrivateFormation {
    pub fn start() -> PrivateFormation {
        let autoctl = Path::new("/usr/bin/pg_autoctl");
        assert!(
            autoctl.exists(),
            "pg_auto_failover is not installed: apt-get install postgresql-15-auto-failover pg-auto-failover-cli"
        );
        let dir = owned_dir("rs_fault_run");
        give_to(dir.path(), "postgres");
        let f = PrivateFormation {
            dir,
            bin: pg_bindir(),
            monitor_port: free_port(),
            ports: [free_port(), free_port()],
            keepers: std::sync::Mutex::new(Vec::new()),
        };
        let port = f.monitor_port.to_string();
        f.autoctl_once(&[
            "create",
            "monitor",
            "--pgdata",
            &f.data("monitor"),
            "--pgport",
            &port,
            "--hostname",
            "127.0.0.1",
            "--auth",
            "trust",
            "--no-ssl",
        ]);
        f.keep(&["run", "--pgdata", &f.data("monitor")], "monitor");
        f.wait_for("the monitor to answer", Duration::from_secs(60), || {
            f.psql(f.monitor_port, "pg_auto_failover", "select 1")
                .is_ok()
        });
        // Failover within seconds instead of the default ~50 s; and the role
        // our services read the monitor with (as packaging/multi-box makes it).
        for sql in [
            "alter system set pgautofailover.health_check_period = 1000",
            "alter system set pgautofailover.health_check_timeout = 1000",
            "alter system set pgautofailover.health_check_retry_delay = 500",
            "alter system set pgautofailover.health_check_max_retries = 1",
            "alter system set pgautofailover.node_considered_unhealthy_timeout = 2000",
            "alter system set pgautofailover.primary_demote_timeout = 3000",
            "select pg_reload_conf()",
            "create role restaurant_monitor login",
            "grant usage on schema pgautofailover to restaurant_monitor",
            "grant select on pgautofailover.node to restaurant_monitor",
        ] {
            f.psql(f.monitor_port, "pg_auto_failover", sql)
                .unwrap_or_else(|e| panic!("tuning the monitor: {e}"));
        }
        let monitor = format!(
            "postgres://autoctl_node@127.0.0.1:{}/pg_auto_failover?sslmode=disable",
            f.monitor_port
        );
        for (i, name) in NODES.iter().enumerate() {
            let port = f.ports[i].to_string();
            f.keep(
                &[
                    "create",
                    "postgres",
                    "--pgdata",
                    &f.data(name),
                    "--pgport",
                    &port,
                    "--hostname",
                    "127.0.0.1",
                    "--name",
                    name,
                    "--auth",
                    "trust",
                    "--no-ssl",
                    "--monitor",
                    &monitor,
                    "--run",
                ],
                name,
            );
            let want = if i == 0 {
                "a:single/single"
            } else {
                "a:primary/primary b:secondary/secondary"
            };
            f.wait_for(
                &format!("node {name} to join ({want})"),
                Duration::from_secs(180),
                || f.states() == want,
            );
        }
        f
    }

    fn data(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// pg_autoctl as `postgres`, its files (config, state) in our dir.
    fn autoctl(&self, args: &[&str]) -> Command {
        let d = self.dir.path();
        let mut cmd = as_user("postgres", Path::new("/usr/bin/env"));
        cmd.arg(format!("HOME={}", d.display()))
            .arg(format!("XDG_CONFIG_HOME={}/xdg/config", d.display()))
            .arg(format!("XDG_DATA_HOME={}/xdg/data", d.display()))
            .arg(format!("XDG_RUNTIME_DIR={}/xdg/run", d.display()))
            .arg(format!("PG_CONFIG={}/pg_config", self.bin.display()))
            .arg("pg_autoctl")
            .args(args)
            .current_dir(d);
        if args.first() == Some(&"create") {
            cmd.arg("--pgctl").arg(self.bin.join("pg_ctl"));
        }
        cmd
    }

    fn autoctl_once(&self, args: &[&str]) {
        let out = self.dir.path().join("create-monitor.out");
        run_limited(&mut self.autoctl(args), &out, Duration::from_secs(180))
            .unwrap_or_else(|e| panic!("pg_autoctl {}: {e}", args.join(" ")));
    }

    /// Starts a long-running pg_autoctl in a process group of its own.
    fn keep(&self, args: &[&str], name: &str) {
        use std::os::unix::process::CommandExt;
        let log = File::create(self.dir.path().join(format!("{name}.log"))).expect("keeper log");
        let err = log.try_clone().expect("keeper log");
        let child = self
            .autoctl(args)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting pg_autoctl {name}: {e}"));
        self.keepers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child);
        self.note_pids();
    }

    /// Every process of our groups and every postmaster of ours, in `pids`,
    /// for `reap_orphans` should this test process die without `Drop`.
    fn note_pids(&self) {
        let groups: Vec<u32> = self
            .keepers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|c| c.id())
            .collect();
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            // pid (comm) state ppid pgrp ...: comm may hold spaces, so after ')'.
            let pgrp = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(2))
                .and_then(|p| p.parse::<u32>().ok());
            if pgrp.is_some_and(|g| groups.contains(&g)) {
                pids.push(pid);
            }
        }
        for name in ["monitor", "a", "b"] {
            if let Some(p) = read_pid(&self.dir.path().join(name).join("postmaster.pid")) {
                pids.push(p as u32);
            }
        }
        let text: String = pids.iter().map(|p| format!("{p}\n")).collect();
        let _ = std::fs::write(self.dir.path().join("pids"), text);
    }

    fn wait_for(&self, what: &str, limit: Duration, ok: impl FnMut() -> bool) {
        if !wait_until(limit, ok) {
            panic!(
                "pg_auto_failover: no {what} within {limit:?}; states: {}\nmonitor: {}\na: {}\nb: {}",
                self.states(),
                tail(&self.dir.path().join("monitor.log"), 15),
                tail(&self.dir.path().join("a.log"), 15),
                tail(&self.dir.path().join("b.log"), 15),
            );
        }
    }

    /// `psql` as postgres on 127.0.0.1:`port`.
    pub fn psql(&self, port: u16, db: &str, sql: &str) -> Result<String, String> {
        psql_as_postgres(&self.bin, self.dir.path(), port, db, sql)
    }

    /// Node `i`'s SQL, or a panic saying why.
    pub fn node_sql(&self, i: usize, db: &str, sql: &str) -> String {
        self.psql(self.ports[i], db, sql)
            .unwrap_or_else(|e| panic!("psql on node {}: {e}", NODES[i]))
    }

    /// `a:REPORTED/GOAL b:REPORTED/GOAL` as the monitor has them ("" when it
    /// does not answer).
    pub fn states(&self) -> String {
        self.psql(
            self.monitor_port,
            "pg_auto_failover",
            "select string_agg(nodename || ':' || reportedstate || '/' || goalstate, ' ' order by nodeid) from pgautofailover.node",
        )
        .unwrap_or_default()
    }

    /// Waits until `ok(states)`; the states then.
    pub fn wait_states(&self, what: &str, limit: Duration, ok: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        self.wait_for(what, limit, || {
            last = self.states();
            ok(&last)
        });
        last
    }

    /// A power cut of node `i`: its pg_autoctl and PostgreSQL, SIGKILLed.
    pub fn cut(&self, i: usize) {
        let keepers = self.keepers.lock().unwrap_or_else(|e| e.into_inner());
        let group = keepers[i + 1].id() as i32;
        nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(group),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap_or_else(|e| panic!("SIGKILL to node {}: {e}", NODES[i]));
        let postmaster = self.dir.path().join(NODES[i]).join("postmaster.pid");
        assert!(
            wait_until(Duration::from_secs(10), || read_pid(&postmaster)
                .is_none_or(|p| !alive(p))),
            "node {}'s PostgreSQL survived SIGKILL",
            NODES[i]
        );
    }

    /// Node `i`'s PostgreSQL started without its keeper, as pg_autoctl does
    /// before it asks the monitor: a primary comes back writable. Its
    /// synchronous standby is cleared, as a primary alone has it
    /// (`wait_primary`): else every commit would wait for a standby that
    /// has gone.
    pub fn start_alone(&self, i: usize) {
        let data = self.data(NODES[i]);
        let log = self.dir.path().join(format!("{}-alone.log", NODES[i]));
        // HOME names our dir in its environment, for `reap_orphans`.
        let mut cmd = as_user("postgres", Path::new("/usr/bin/env"));
        cmd.arg(format!("HOME={}", self.dir.path().display()))
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &data, "-l"])
            .arg(&log)
            .args([
                "-o",
                "-c synchronous_standby_names=",
                "-w",
                "-t",
                "60",
                "start",
            ])
            .current_dir(self.dir.path());
        let out = self.dir.path().join("pg_ctl-alone.out");
        run_limited(&mut cmd, &out, Duration::from_secs(90)).unwrap_or_else(|e| {
            panic!(
                "starting node {}'s PostgreSQL alone: {e}\n{}",
                NODES[i],
                tail(&log, 20)
            )
        });
        self.note_pids();
    }
}

impl Drop for PrivateFormation {
    fn drop(&mut self) {
        let mut keepers = self.keepers.lock().unwrap_or_else(|e| e.into_inner());
        // Nodes first, then the monitor: each pg_autoctl stops its PostgreSQL.
        for child in keepers.iter_mut().rev() {
            let group = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
        }
        // What runs without a keeper (a node started alone), or survived it.
        for name in ["monitor", "a", "b"] {
            if self.dir.path().join(name).join("postmaster.pid").exists() {
                let data = self.data(name);
                let mut cmd = as_user("postgres", &self.bin.join("pg_ctl"));
                cmd.args(["-D", &data, "-m", "immediate", "-w", "-t", "30", "stop"])
                    .current_dir(self.dir.path());
                let _ = run_limited(
                    &mut cmd,
                    &self.dir.path().join("stop.out"),
                    Duration::from_secs(40),
                );
            }
        }
    }
}
