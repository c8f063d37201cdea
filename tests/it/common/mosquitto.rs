//! A private Mosquitto configured with the files we ship
//! (`packaging/mosquitto/restaurant.conf` and `restaurant.acl`), on free ports,
//! with its own password file, so tests exercise exactly what an admin installs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BRIDGE_USER: &str = "restaurant-bridge";
pub const DISPLAY_USER: &str = "restaurant-display";

pub fn mosquitto_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join("mosquitto"))
        .find(|p| p.is_file())
        .expect(
            "the mosquitto binary is missing (looked in PATH and /usr/sbin): install it with \
             `apt-get install mosquitto mosquitto-clients`, or run `bash scripts/test.sh`",
        )
}

/// Starts `mosquitto -c DIR/mosquitto.conf` (stderr to DIR/mosquitto.log) and
/// waits until it listens on `port`; panics with its log if it exits first.
pub fn spawn_and_wait(dir: &Path, port: u16) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("mosquitto.log"))
        .expect("mosquitto log file");
    let mut child = Command::new(mosquitto_binary())
        .arg("-c")
        .arg(dir.join("mosquitto.conf"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting mosquitto");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "mosquitto exited ({status}): {}",
                std::fs::read_to_string(dir.join("mosquitto.log")).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "mosquitto did not listen on port {port} within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The shipped broker config with its paths and ports replaced for a test.
pub fn shipped_config(
    port: u16,
    ws_port: u16,
    passwd: &str,
    acl: &str,
    anonymous_read: bool,
) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let conf = std::fs::read_to_string(format!("{root}/packaging/mosquitto/restaurant.conf"))
        .expect("packaging/mosquitto/restaurant.conf");
    let mut out = String::new();
    for line in conf.lines() {
        let l = line.trim();
        let new = if l.starts_with("password_file ") {
            format!("password_file {passwd}")
        } else if l.starts_with("acl_file ") {
            format!("acl_file {acl}")
        } else if l == "listener 1883 127.0.0.1" {
            format!("listener {port} 127.0.0.1")
        } else if l == "listener 9001" {
            format!("listener {ws_port} 127.0.0.1")
        } else if l == "allow_anonymous false" && anonymous_read {
            "allow_anonymous true".to_string()
        } else {
            line.to_string()
        };
        out.push_str(&new);
        out.push('\n');
    }
    assert!(
        out.contains(&format!("listener {port} "))
            && out.contains(&format!("password_file {passwd}"))
            && out.contains(&format!("acl_file {acl}")),
        "packaging/mosquitto/restaurant.conf no longer has the lines this test replaces:\n{conf}"
    );
    out.push_str("persistence false\nlog_dest stderr\nlog_type error\nlog_type warning\n");
    out
}

/// A broker of the test's own, with the shipped ACL; killed on drop.
pub struct SecureBroker {
    pub port: u16,
    pub ws_port: u16,
    pub bridge_password: String,
    pub display_password: String,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl SecureBroker {
    /// `anonymous_read`: the admin's choice to let anonymous clients read.
    pub fn start(anonymous_read: bool) -> SecureBroker {
        let dir = tempfile::tempdir().expect("temp dir");
        // Mosquitto started as root drops to its own user after reading the config;
        // it reads the password and ACL files after that.
        let _ = std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        );
        let bridge_password = format!("bridge-{:016x}", rand::random::<u64>());
        let display_password = format!("display-{:016x}", rand::random::<u64>());
        let passwd = dir.path().join("restaurant.passwd");
        for (i, (user, pw)) in [
            (BRIDGE_USER, &bridge_password),
            (DISPLAY_USER, &display_password),
        ]
        .into_iter()
        .enumerate()
        {
            let mut cmd = Command::new("mosquitto_passwd");
            cmd.arg("-b");
            if i == 0 {
                cmd.arg("-c");
            }
            let st = cmd
                .arg(&passwd)
                .args([user, pw.as_str()])
                .stdout(Stdio::null())
                .status()
                .expect("mosquitto_passwd (apt-get install mosquitto)");
            assert!(st.success(), "mosquitto_passwd failed");
        }
        let _ =
            std::fs::set_permissions(&passwd, std::os::unix::fs::PermissionsExt::from_mode(0o644));
        let acl = format!(
            "{}/packaging/mosquitto/restaurant.acl",
            env!("CARGO_MANIFEST_DIR")
        );
        let (port, ws_port) = (free_port(), free_port());
        let conf = shipped_config(
            port,
            ws_port,
            &passwd.display().to_string(),
            &acl,
            anonymous_read,
        );
        std::fs::write(dir.path().join("mosquitto.conf"), conf).expect("writing mosquitto.conf");
        let mut b = SecureBroker {
            port,
            ws_port,
            bridge_password,
            display_password,
            dir,
            child: None,
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        self.child = Some(spawn_and_wait(self.dir.path(), self.port));
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for SecureBroker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
