//! HTTPS with the box's own CA (issue 27, docs/security.md), checked with
//! curl as a POS terminal or a restaurant's IT person would: `--cacert` with
//! the CA the box serves, against every listener; a wrong host name and an
//! expired certificate fail; SIGHUP swaps the certificate while an open
//! connection keeps its own.

use crate::common;

use common::*;
use restaurant_system::modes::Mode;
use restaurant_system::process::config::{Config, TlsMode};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// `curl -sS` with the arguments; (exit code, stdout, stderr). Fails with a
/// clear message where curl is missing.
fn curl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl is needed for the TLS tests: apt-get install curl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port in the URL")
}

fn self_signed(env: &TestEnv) -> Config {
    let mut cfg = env.cfg.clone();
    cfg.tls.mode = TlsMode::SelfSigned;
    cfg.tls.dir = env.dir.path().join("tls");
    cfg
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listener_serves_https_with_the_box_ca_and_plain_http_on_loopback() {
    let env = TestEnv::new(Backend::Sqlite);
    let cfg = self_signed(&env);
    let app = env.start_with(Mode::All, None, &cfg).await;
    let mut notifier_cfg = cfg.clone();
    notifier_cfg.metrics.port = Some(free_port());
    let notifier = env
        .start_with(Mode::NotificationSubscriber, None, &notifier_cfg)
        .await;
    let metrics_port = notifier_cfg.metrics.port.expect("set above");

    // The CA a device downloads, over plain HTTP on the box (it is public).
    let ca_path = env.dir.path().join("downloaded-ca.crt");
    let tracking = port_of(&app.tracking_url());
    let (rc, _, err) = curl(&[
        "-o",
        ca_path.to_str().expect("utf-8 path"),
        &format!("http://127.0.0.1:{tracking}/ca.crt"),
    ]);
    assert_eq!(rc, 0, "{err}");
    let ca = std::fs::read_to_string(&ca_path).expect("the downloaded CA");
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
    assert_eq!(
        Some(ca.clone()),
        restaurant_system::tls::ca::ca_in(&cfg.tls.dir).expect("read the CA")
    );
    let cacert = ca_path.to_str().expect("utf-8 path");

    let listeners = [
        ("order", port_of(&app.order_url()), "/health"),
        ("tracking", tracking, "/health"),
        ("notifier metrics", metrics_port, "/metrics"),
    ];
    for (name, port, path) in listeners {
        for host in ["localhost", "127.0.0.1"] {
            let (rc, body, err) = curl(&[
                "--cacert",
                cacert,
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("https://{host}:{port}{path}"),
            ]);
            assert_eq!(rc, 0, "{name} over https://{host}: {err}");
            assert_eq!(body, "200", "{name} over https://{host}");
        }
        // The same port still speaks plain HTTP to the box itself.
        let (rc, body, err) = curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://127.0.0.1:{port}{path}"),
        ]);
        assert_eq!(
            (rc, body.as_str()),
            (0, "200"),
            "{name} over plain HTTP: {err}"
        );
    }

    // A name the certificate does not carry fails, even with the right CA.
    let (rc, _, err) = curl(&[
        "--cacert",
        cacert,
        "--resolve",
        &format!("pos.example:{tracking}:127.0.0.1"),
        &format!("https://pos.example:{tracking}/health"),
    ]);
    assert_eq!(rc, 60, "a wrong host name must fail verification: {err}");
    // And without the CA, nothing is trusted.
    let (rc, _, _) = curl(&[&format!("https://localhost:{tracking}/health")]);
    assert_eq!(rc, 60, "the box's certificate is not publicly trusted");

    // `tls show` prints the fingerprint of the CA that is served.
    let show = env
        .command()
        .env("RESTAURANT_TLS__MODE", "self-signed")
        .env("RESTAURANT_TLS__DIR", &cfg.tls.dir)
        .args(["tls", "show"])
        .output()
        .expect("run tls show");
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(show.status.success(), "{text}");
    let fingerprint = restaurant_system::tls::ca::summary(&ca)
        .expect("parse the CA")
        .fingerprint;
    assert!(text.contains(&fingerprint), "{text}");
    assert!(
        text.contains("localhost") && text.contains("127.0.0.1"),
        "{text}"
    );

    notifier.stop().await;
    app.stop().await;
}

/// A CA and a server certificate for `localhost`, valid from `from` for `days`
/// (negative: already expired), written as files; returns (ca, chain, key).
fn files_cert(dir: &Path, tag: &str, days: i64) -> (PathBuf, PathBuf, PathBuf) {
    let c = common::servers::test_cert(dir, tag, &["localhost", "127.0.0.1"], days);
    (c.ca, c.chain, c.key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_fails() {
    let env = TestEnv::new(Backend::Sqlite);
    let (ca, chain, key) = files_cert(env.dir.path(), "old", -1);
    let mut cfg = env.cfg.clone();
    cfg.tls.mode = TlsMode::Files;
    cfg.tls.cert_file = chain;
    cfg.tls.key_file = key;
    let app = env.start_with(Mode::TrackingService, None, &cfg).await;
    let port = port_of(&app.tracking_url());
    let (rc, _, err) = curl(&[
        "--cacert",
        ca.to_str().expect("utf-8"),
        &format!("https://localhost:{port}/health"),
    ]);
    assert_eq!(rc, 60, "an expired certificate must fail: {err}");
    assert!(err.contains("expired"), "{err}");
    app.stop().await;
}

/// A TLS client that trusts only `ca`, over one kept-alive connection.
struct KeptAlive {
    stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
}

impl KeptAlive {
    async fn connect(port: u16, ca: &Path) -> KeptAlive {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("read CA") {
            roots.add(c.expect("a CA certificate")).expect("add CA");
        }
        #[allow(deprecated)] // the same provider as the server (src/tls)
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        KeptAlive { stream }
    }

    /// GET /health on the open connection; the status code.
    async fn health(&mut self) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        self.stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .expect("send");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        // Read the head and a body of Content-Length bytes.
        loop {
            let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
                .await
                .expect("an answer within 10 s")
                .expect("read");
            assert!(n > 0, "the server closed the kept-alive connection");
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap_or(0))
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    return head
                        .split_whitespace()
                        .nth(1)
                        .and_then(|s| s.parse().ok())
                        .expect("a status code");
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_loads_a_new_certificate_and_open_connections_keep_theirs() {
    let env = TestEnv::new(Backend::Sqlite);
    let (ca_a, chain_a, key_a) = files_cert(env.dir.path(), "a", 30);
    let (ca_b, chain_b, key_b) = files_cert(env.dir.path(), "b", 30);
    // The files the service reads; replaced in place below.
    let chain = env.dir.path().join("server.crt");
    let key = env.dir.path().join("server.key");
    std::fs::copy(&chain_a, &chain).expect("copy");
    std::fs::copy(&key_a, &key).expect("copy");
    let mut cmd = env.command();
    cmd.args(["--mode", "tracking-service"])
        .env("RESTAURANT_HTTP__TRACKING_PORT", "0")
        .env("RESTAURANT_TLS__MODE", "files")
        .env("RESTAURANT_TLS__CERT_FILE", &chain)
        .env("RESTAURANT_TLS__KEY_FILE", &key);
    let mut proc = Proc::spawn("tracking-service", cmd);
    let port = proc.port().await;

    let mut open = KeptAlive::connect(port, &ca_a).await;
    assert_eq!(open.health().await, 200);

    std::fs::copy(&chain_b, &chain).expect("copy");
    std::fs::copy(&key_b, &key).expect("copy");
    proc.signal(nix::sys::signal::Signal::SIGHUP);
    proc.wait_log("tls_reloaded", Duration::from_secs(10), |_| true)
        .await;

    // New connections get the new certificate ...
    let url = format!("https://localhost:{port}/health");
    let (rc, _, err) = curl(&["--cacert", ca_b.to_str().expect("utf-8"), &url]);
    assert_eq!(rc, 0, "the new certificate after SIGHUP: {err}");
    let (rc, _, _) = curl(&["--cacert", ca_a.to_str().expect("utf-8"), &url]);
    assert_eq!(rc, 60, "the old certificate is no longer served");
    // ... and the connection opened before keeps going.
    assert_eq!(open.health().await, 200);
    assert_eq!(open.health().await, 200);

    let st = proc.stop().await;
    assert!(st.success(), "{st:?}");
}

/// An MQTT 3.1.1 CONNECT packet with a user name and password.
fn mqtt_connect(client: &str, user: &str, password: &str) -> Vec<u8> {
    let field = |s: &str| {
        let mut v = (s.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(s.as_bytes());
        v
    };
    let mut body = field("MQTT");
    body.extend_from_slice(&[4, 0xC2, 0, 30]); // level 4; user, password, clean; keepalive 30 s
    body.extend(field(client));
    body.extend(field(user));
    body.extend(field(password));
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    packet
}

/// The kitchen display over HTTPS reaches the broker over `wss://` on the
/// page's own origin: the tracking service passes `/mqtt` on to Mosquitto's
/// WebSocket listener, and Mosquitto still checks the screen's account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screens_reach_the_broker_over_wss_on_the_pages_origin() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = TestEnv::new(Backend::Sqlite);
    let broker = common::mosquitto::SecureBroker::start(false);
    let mut cfg = self_signed(&env);
    cfg.mqtt.host = "127.0.0.1".into();
    cfg.display.mqtt_ws_port = broker.ws_port;
    let app = env.start_with(Mode::TrackingService, None, &cfg).await;
    let port = port_of(&app.tracking_url());
    // Mosquitto opens its WebSocket listener a moment after its MQTT one
    // (which is what SecureBroker waits for).
    eventually(
        Duration::from_secs(10),
        "Mosquitto's WebSocket listener",
        || async { std::net::TcpStream::connect(("127.0.0.1", broker.ws_port)).ok() },
    )
    .await;

    let connack = |user: &'static str, password: String| {
        let ca = cfg.tls.dir.join("ca.crt");
        async move {
            let mut ws = KeptAlive::connect(port, &ca).await.stream;
            ws.write_all(
                b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
                  Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                  Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n",
            )
            .await
            .expect("send the upgrade");
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            let head_end = loop {
                let n = tokio::time::timeout(Duration::from_secs(10), ws.read(&mut chunk))
                    .await
                    .expect("an answer to the upgrade")
                    .expect("read");
                assert!(n > 0, "closed: {}", String::from_utf8_lossy(&buf));
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
            assert!(
                head.starts_with("HTTP/1.1 101"),
                "{}",
                String::from_utf8_lossy(&buf)
            );
            assert!(
                head.to_ascii_lowercase()
                    .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
                "{head}"
            );
            // One masked binary frame carrying the CONNECT.
            let packet = mqtt_connect("tls-test", user, &password);
            let mask = [0x12u8, 0x34, 0x56, 0x78];
            let mut frame = vec![0x82, 0x80 | packet.len() as u8];
            frame.extend_from_slice(&mask);
            frame.extend(packet.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
            ws.write_all(&frame).await.expect("send CONNECT");
            let mut rest = buf.split_off(head_end);
            while rest.len() < 6 {
                let n = tokio::time::timeout(Duration::from_secs(10), ws.read(&mut chunk))
                    .await
                    .expect("a CONNACK within 10 s")
                    .expect("read");
                assert!(n > 0, "closed before the CONNACK");
                rest.extend_from_slice(&chunk[..n]);
            }
            // Frame: binary, 4 bytes; MQTT: CONNACK, remaining 2, flags, return code.
            assert_eq!(&rest[..5], &[0x82, 4, 0x20, 2, 0], "{rest:?}");
            rest[5]
        }
    };
    assert_eq!(
        connack(
            common::mosquitto::DISPLAY_USER,
            broker.display_password.clone()
        )
        .await,
        0,
        "the screen's account is accepted through the pass-through"
    );
    assert_eq!(
        connack(common::mosquitto::DISPLAY_USER, "wrong".into()).await,
        5,
        "Mosquitto still refuses a wrong password (5: not authorised)"
    );
    // The pairing form's settings carry the CA's fingerprint to compare.
    let (rc, body, err) = curl(&[
        "--cacert",
        cfg.tls.dir.join("ca.crt").to_str().expect("utf-8"),
        &format!("https://localhost:{port}/display/config.json"),
    ]);
    assert_eq!(rc, 0, "{err}");
    let settings: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let ca = std::fs::read_to_string(cfg.tls.dir.join("ca.crt")).expect("CA");
    assert_eq!(
        settings["ca_fingerprint"],
        restaurant_system::tls::ca::summary(&ca)
            .expect("CA")
            .fingerprint,
        "{body}"
    );
    // A plain GET on /mqtt is a clear JSON refusal, not a hang.
    let (rc, body, _) = curl(&[
        "--cacert",
        cfg.tls.dir.join("ca.crt").to_str().expect("utf-8"),
        &format!("https://localhost:{port}/mqtt"),
    ]);
    assert_eq!(rc, 0);
    assert!(body.contains("expected a WebSocket upgrade"), "{body}");
    app.stop().await;
}

/// The display bridge reaches a broker on another host over MQTT with TLS
/// (`[mqtt] tls`, `ca_file`), checking the broker's certificate; a broker
/// whose certificate the CA file does not vouch for is never talked to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_talks_mqtt_over_tls_to_a_broker_it_trusts() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new(Backend::Sqlite);
    let dir = tempfile::tempdir().expect("temp dir");
    // Mosquitto started as root reads its files as its own user.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let (ca, chain, key) = files_cert(dir.path(), "broker", 30);
    let (other_ca, _, _) = files_cert(dir.path(), "other", 30);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (plain, tls_port) = (free_port(), free_port());
    std::fs::write(
        dir.path().join("mosquitto.conf"),
        format!(
            "per_listener_settings false\nallow_anonymous true\npersistence false\n\
             log_dest stderr\nlog_type error\nlog_type warning\n\
             listener {plain} 127.0.0.1\n\
             listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n",
            ca.display(),
            chain.display(),
            key.display()
        ),
    )
    .expect("mosquitto.conf");
    let mut broker = common::mosquitto::spawn_and_wait(dir.path(), plain);

    let start = |ca_file: PathBuf| {
        let mut cfg = env.cfg.clone();
        cfg.mqtt.enabled = true;
        cfg.mqtt.host = "localhost".into();
        cfg.mqtt.port = tls_port;
        cfg.mqtt.tls = true;
        cfg.mqtt.ca_file = ca_file;
        cfg.mqtt.client_id = format!("tls-bridge-{}", rand::random::<u32>());
        cfg
    };
    let health = |url: String| async move {
        let r = reqwest::get(format!("{url}/health")).await.ok()?;
        let v: serde_json::Value = r.json().await.ok()?;
        Some(v)
    };

    let app = env
        .start_with(Mode::DisplayBridge, None, &start(ca.clone()))
        .await;
    let url = app.bridge_url();
    let v = eventually(
        Duration::from_secs(20),
        "the bridge's MQTT link up over TLS",
        || {
            let url = url.clone();
            async move {
                health(url)
                    .await
                    .filter(|v| v["checks"]["mqtt"] == "healthy")
            }
        },
    )
    .await;
    assert_eq!(v["checks"]["mqtt"], "healthy", "{v}");
    app.stop().await;

    // The same broker, but a CA that did not sign its certificate: no link.
    let app = env
        .start_with(Mode::DisplayBridge, None, &start(other_ca))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let v = health(app.bridge_url()).await.expect("health answers");
    assert_ne!(
        v["checks"]["mqtt"], "healthy",
        "trusted a broker the CA file does not vouch for: {v}"
    );
    app.stop().await;
    let _ = broker.kill();
    let _ = broker.wait();
}
