//! Issue 11, on the real services and both backends:
//!
//! 1. every route x {no token, malformed token, wrong token, pos, kitchen,
//!    manager}, from loopback and from a second host (a network namespace
//!    joined by a veth pair: a real other machine as far as TCP is concerned);
//! 2. the cross-site POST and the CORS preflight from a foreign origin, and
//!    the box's own display page allowed;
//! 3. a revoked token refused within a second, without a restart;
//! 4. the `token` CLI (last line, list, duplicate, unknown, hash only at rest);
//! 5. `anonymous_loopback = false`; an invalid `http.bind` is exit 2;
//! 6. a log scan: no token, hash or Authorization header in any line, and the
//!    failed attempts logged with their source and growing delays.
use crate::common;

use common::{eventually, pg_host, pg_port, pg_user, spec_orders, Backend, Proc, TestEnv};
use restaurant_system::domain::access::{hash_token, token_from_bytes, Access, Role};
use restaurant_system::modes::Mode;
use restaurant_system::storage::SharedStore;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

// ---------------------------------------------------------------------------
// A tiny blocking HTTP/1.1 client that can run inside a network namespace
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
    raw: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request over a fresh connection. `ns`: the network namespace to
/// connect from (the thread joins it before opening the socket).
async fn request(
    ns: Option<String>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: Vec<(String, String)>,
    body: Option<String>,
) -> Reply {
    let method = method.to_string();
    let path = path.to_string();
    // A thread of its own, not one of the runtime's blocking pool: a thread
    // that joined a namespace stays in it, and a pooled one would take the
    // next request (from the box itself) there too.
    let thread = std::thread::spawn(move || {
        if let Some(ns) = &ns {
            let f = std::fs::File::open(format!("/run/netns/{ns}"))
                .unwrap_or_else(|e| panic!("opening netns {ns}: {e}"));
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("entering netns {ns}: {e}"));
        }
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(20))).ok();
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (k, v) in &headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = &body {
            if !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            {
                req.push_str("Content-Type: application/json\r\n");
            }
            req.push_str(&format!("Content-Length: {}\r\n\r\n{b}", b.len()));
        } else {
            req.push_str("Content-Length: 0\r\n\r\n");
        }
        s.write_all(req.as_bytes()).expect("send request");
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let raw = String::from_utf8_lossy(&buf).to_string();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP status in {raw:?}"));
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let body = serde_json::from_str(body).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
            raw,
        }
    });
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .expect("request thread")
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

// ---------------------------------------------------------------------------
// A second host: a network namespace joined to this one by a veth pair
// ---------------------------------------------------------------------------

/// `ip netns` + a veth pair with a /30 of our own; removed on drop (also when
/// the test fails half way).
struct SecondHost {
    ns: String,
    host_if: String,
    host_ip: Ipv4Addr,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e} (apt-get install iproute2)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl SecondHost {
    fn create() -> SecondHost {
        let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
        // 10.213.0.0/16 is ours for these tests; a random /30 in it, so that
        // test binaries running at once do not collide.
        let n: u16 = rand::random::<u16>() % 16384;
        let base = [10, 213, (n >> 6) as u8, ((n & 63) * 4) as u8];
        let host_ip = Ipv4Addr::new(base[0], base[1], base[2], base[3] + 1);
        let peer_ip = Ipv4Addr::new(base[0], base[1], base[2], base[3] + 2);
        let h = SecondHost {
            ns: format!("rs-sec-{tag}"),
            host_if: format!("rsh{tag}"),
            host_ip,
        };
        let peer_if = format!("rsp{tag}");
        let steps: Vec<Vec<String>> = vec![
            vec!["netns".into(), "add".into(), h.ns.clone()],
            vec![
                "link".into(),
                "add".into(),
                h.host_if.clone(),
                "type".into(),
                "veth".into(),
                "peer".into(),
                "name".into(),
                peer_if.clone(),
            ],
            vec![
                "link".into(),
                "set".into(),
                peer_if.clone(),
                "netns".into(),
                h.ns.clone(),
            ],
            vec![
                "addr".into(),
                "add".into(),
                format!("{host_ip}/30"),
                "dev".into(),
                h.host_if.clone(),
            ],
            vec!["link".into(), "set".into(), h.host_if.clone(), "up".into()],
            vec![
                "-n".into(),
                h.ns.clone(),
                "addr".into(),
                "add".into(),
                format!("{peer_ip}/30"),
                "dev".into(),
                peer_if.clone(),
            ],
            vec![
                "-n".into(),
                h.ns.clone(),
                "link".into(),
                "set".into(),
                peer_if,
                "up".into(),
            ],
            vec![
                "-n".into(),
                h.ns.clone(),
                "link".into(),
                "set".into(),
                "lo".into(),
                "up".into(),
            ],
        ];
        for step in steps {
            let args: Vec<&str> = step.iter().map(String::as_str).collect();
            if let Err(e) = ip(&args) {
                panic!(
                    "setting up the second host failed: {e}. This test needs root (CAP_NET_ADMIN) \
                     and iproute2; run it through `bash scripts/test.sh` as root."
                );
            }
        }
        h
    }
}

impl Drop for SecondHost {
    fn drop(&mut self) {
        // Deleting the namespace deletes the peer end, and with it the pair.
        let _ = ip(&["netns", "del", &self.ns]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}

// ---------------------------------------------------------------------------
// The route table and the callers
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Svc {
    Order,
    Tracking,
}

struct Route {
    svc: Svc,
    method: &'static str,
    /// `{n}` is replaced by an order number.
    path: &'static str,
    body: Option<Value>,
    access: Access,
}

fn routes() -> Vec<Route> {
    use Access::*;
    let r = |svc, method, path, access| Route {
        svc,
        method,
        path,
        body: None,
        access,
    };
    vec![
        Route {
            body: Some(spec_orders()[0].clone()),
            ..r(Svc::Order, "POST", "/orders", CreateOrder)
        },
        r(Svc::Order, "POST", "/orders/{n}/complete", KitchenAction),
        r(Svc::Order, "POST", "/orders/{n}/recall", KitchenAction),
        r(Svc::Order, "POST", "/orders/{n}/cancel", Cancel),
        r(Svc::Tracking, "GET", "/orders/{n}/status", Read),
        r(Svc::Tracking, "GET", "/orders/{n}/history", Read),
        r(Svc::Tracking, "GET", "/workers/status", Read),
        // Unknown paths are API paths too: nothing for anonymous strangers.
        r(Svc::Order, "GET", "/no/such/route", Read),
        r(Svc::Order, "GET", "/health", Open),
        r(Svc::Tracking, "GET", "/health", Open),
        r(Svc::Order, "GET", "/openapi.yaml", Open),
        r(Svc::Tracking, "GET", "/openapi.yaml", Open),
        r(Svc::Tracking, "GET", "/display", Open),
        r(Svc::Tracking, "GET", "/display/display.js", Open),
    ]
}

#[derive(Debug, Clone, PartialEq)]
enum Who {
    Nobody,
    Malformed,
    Wrong,
    Role(Role),
}

struct Tokens {
    pos: String,
    kitchen: String,
    manager: String,
}

impl Tokens {
    async fn create(store: &SharedStore, suffix: &str) -> Tokens {
        let make = |role: Role| {
            let t = token_from_bytes(rand::random());
            (role, t)
        };
        let (pos, kitchen, manager) = (make(Role::Pos), make(Role::Kitchen), make(Role::Manager));
        for (role, t) in [&pos, &kitchen, &manager] {
            let created = store
                .create_token(
                    &format!("{role}-{suffix}"),
                    *role,
                    &hash_token(t),
                    chrono::Utc::now(),
                )
                .await
                .expect("create token");
            assert!(created);
        }
        Tokens {
            pos: pos.1,
            kitchen: kitchen.1,
            manager: manager.1,
        }
    }

    fn header(&self, who: &Who) -> Option<String> {
        match who {
            Who::Nobody => None,
            Who::Malformed => Some("Bearer not-a-token".into()),
            // Shaped like a token, but never created.
            Who::Wrong => Some(format!("Bearer {}", token_from_bytes(rand::random()))),
            Who::Role(Role::Pos) => Some(format!("Bearer {}", self.pos)),
            Who::Role(Role::Kitchen) => Some(format!("Bearer {}", self.kitchen)),
            Who::Role(Role::Manager) => Some(format!("Bearer {}", self.manager)),
        }
    }
}

/// Failures interleaved with successes: a success clears the slow-down, so
/// the matrix never waits more than the first step (200 ms) per failure.
const CALLERS: [Who; 6] = [
    Who::Wrong,
    Who::Role(Role::Pos),
    Who::Malformed,
    Who::Role(Role::Kitchen),
    Who::Nobody,
    Who::Role(Role::Manager),
];

fn expected(access: Access, who: &Who, anonymous_ok: bool) -> Option<u16> {
    if access == Access::Open {
        return None;
    }
    match who {
        Who::Nobody if anonymous_ok => None,
        Who::Nobody | Who::Malformed | Who::Wrong => Some(401),
        Who::Role(r) if access.allows(*r) => None,
        Who::Role(_) => Some(403),
    }
}

/// Runs the matrix against the running system from `ns` (None: loopback).
async fn matrix(
    ns: Option<String>,
    order: SocketAddr,
    tracking: SocketAddr,
    tokens: &Tokens,
    store: &SharedStore,
    anonymous_ok: bool,
) -> usize {
    let mut checked = 0;
    for route in routes() {
        for who in CALLERS.iter() {
            // A fresh order for every transition, so an allowed call meets a
            // real order (its answer may be 409; it must not be 401/403/5xx).
            let n = store
                .create_order(
                    &restaurant_system::domain::order::validate(&spec_orders()[1])
                        .expect("valid order"),
                    "req-test",
                    chrono::Utc::now(),
                    chrono::Utc::now().date_naive(),
                )
                .await
                .expect("create order")
                .order_number;
            let path = route.path.replace("{n}", &n);
            let addr = match route.svc {
                Svc::Order => order,
                Svc::Tracking => tracking,
            };
            let mut headers = Vec::new();
            if let Some(h) = tokens.header(who) {
                headers.push(("Authorization".to_string(), h));
            }
            let r = request(
                ns.clone(),
                addr,
                route.method,
                &path,
                headers,
                route.body.as_ref().map(|b| b.to_string()),
            )
            .await;
            let what = format!(
                "{} {path} as {who:?} from {}",
                route.method,
                ns.as_deref().unwrap_or("loopback")
            );
            assert!(r.status < 500, "{what}: {}", r.raw);
            match expected(route.access, who, anonymous_ok) {
                Some(401) => {
                    assert_eq!(r.status, 401, "{what}: {}", r.raw);
                    assert!(
                        r.body["details"][0]["message"]
                            .as_str()
                            .is_some_and(|m| m.contains("token create")),
                        "{what}: the 401 does not say how to get a token: {}",
                        r.raw
                    );
                    assert!(r.header("www-authenticate").is_some(), "{what}");
                }
                Some(403) => {
                    assert_eq!(r.status, 403, "{what}: {}", r.raw);
                    assert!(r.body["error"].is_string(), "{what}: {}", r.raw);
                }
                Some(other) => unreachable!("{other}"),
                None => assert!(
                    r.status != 401 && r.status != 403,
                    "{what} was refused: {}",
                    r.raw
                ),
            }
            // Never an echo of the credentials.
            if let Some(h) = tokens.header(who) {
                let t = h.trim_start_matches("Bearer ");
                assert!(!r.raw.contains(t), "{what}: the answer echoes the token");
            }
            checked += 1;
        }
    }
    checked
}

fn addr_on(ip: Ipv4Addr, a: SocketAddr) -> SocketAddr {
    SocketAddr::new(ip.into(), a.port())
}

fn parse_addr(url: &str) -> SocketAddr {
    url.trim_start_matches("http://")
        .parse()
        .expect("a socket address")
}

// ---------------------------------------------------------------------------
// 1. The matrix, from loopback and from a second host
// ---------------------------------------------------------------------------

async fn every_route_every_caller_from_loopback_and_a_second_host(b: Backend) {
    let env = TestEnv::new(b);
    let mut cfg = env.cfg.clone();
    cfg.http.bind = "0.0.0.0".into();
    cfg.display.mqtt_username = "restaurant-display".into();
    cfg.display.mqtt_password = Some(restaurant_system::process::config::Secret::new(
        "screen-pw-1",
    ));
    let app = env.start_with(Mode::All, None, &cfg).await;
    let store = app.store();
    let tokens = Tokens::create(&store, "m").await;
    let (order, tracking) = (
        parse_addr(&app.order_url()),
        parse_addr(&app.tracking_url()),
    );
    let order = addr_on(Ipv4Addr::LOCALHOST, order);
    let tracking = addr_on(Ipv4Addr::LOCALHOST, tracking);

    let n = matrix(None, order, tracking, &tokens, &store, true).await;
    assert_eq!(n, routes().len() * CALLERS.len());

    let host = SecondHost::create();
    let n = matrix(
        Some(host.ns.clone()),
        addr_on(host.host_ip, order),
        addr_on(host.host_ip, tracking),
        &tokens,
        &store,
        false,
    )
    .await;
    assert_eq!(n, routes().len() * CALLERS.len());

    // From the second host: the display page's settings carry the screens'
    // broker account only for a paired (kitchen or manager) page.
    let cfg_url = "/display/config.json";
    let get = |h: Option<String>| {
        let ns = host.ns.clone();
        let addr = addr_on(host.host_ip, tracking);
        async move {
            let headers = h
                .map(|h| vec![("Authorization".to_string(), h)])
                .unwrap_or_default();
            request(Some(ns), addr, "GET", cfg_url, headers, None).await
        }
    };
    let r = get(None).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.body["pairing"], true);
    assert_eq!(r.body["paired"], false);
    assert!(
        !r.raw.contains("screen-pw-1"),
        "an unpaired page got the screens' password"
    );
    let r = get(tokens.header(&Who::Role(Role::Kitchen))).await;
    assert_eq!(r.body["paired"], true);
    assert_eq!(r.body["mqtt_username"], "restaurant-display");
    assert_eq!(r.body["mqtt_password"], "screen-pw-1");
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(get(tokens.header(&Who::Wrong)).await.status, 401);
    assert_eq!(get(tokens.header(&Who::Role(Role::Pos))).await.status, 403);
    drop(host);
    app.stop().await;
}

// ---------------------------------------------------------------------------
// 2. Browsers: the cross-site POST and CORS
// ---------------------------------------------------------------------------

async fn foreign_pages_cannot_forge_or_read(b: Backend) {
    let env = TestEnv::new(b);
    let app = env.start(Mode::All, None).await;
    let store = app.store();
    let tokens = Tokens::create(&store, "c").await;
    let order = parse_addr(&app.order_url());
    let tracking = parse_addr(&app.tracking_url());
    let n = common::place_order(&reqwest::Client::new(), &app.order_url(), &spec_orders()[0]).await;

    // The classic cross-site form POST from a page on another site, sent by a
    // browser on the box itself (loopback, no token): refused, nothing changes.
    let evil = "http://evil.example";
    let r = request(
        None,
        order,
        "POST",
        &format!("/orders/{n}/cancel"),
        vec![
            ("Origin".into(), evil.into()),
            (
                "Content-Type".into(),
                "application/x-www-form-urlencoded".into(),
            ),
        ],
        Some("a=b".into()),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.raw);
    assert_eq!(r.body["error"], "origin not allowed");
    assert!(r.header("access-control-allow-origin").is_none());
    // Even with a stolen token, a foreign page gets nowhere.
    let r = request(
        None,
        order,
        "POST",
        &format!("/orders/{n}/cancel"),
        vec![
            ("Origin".into(), evil.into()),
            (
                "Authorization".into(),
                tokens.header(&Who::Role(Role::Manager)).unwrap(),
            ),
        ],
        None,
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.raw);
    let status = store.order(&n).await.unwrap().unwrap().status;
    assert_ne!(
        status,
        restaurant_system::domain::OrderStatus::Cancelled,
        "a cross-site POST cancelled the order"
    );

    // The preflight from a foreign origin: 403, no CORS headers.
    let preflight = |origin: String| {
        request(
            None,
            order,
            "OPTIONS",
            "/orders/X/complete",
            vec![
                ("Origin".into(), origin),
                ("Access-Control-Request-Method".into(), "POST".into()),
                (
                    "Access-Control-Request-Headers".into(),
                    "authorization".into(),
                ),
            ],
            None,
        )
    };
    let r = preflight(evil.into()).await;
    assert_eq!(r.status, 403, "{}", r.raw);
    assert!(
        r.header("access-control-allow-origin").is_none(),
        "{}",
        r.raw
    );

    // The box's own display page (tracking port, same host name): allowed, and
    // named exactly (never `*`).
    let own = format!("http://127.0.0.1:{}", tracking.port());
    let r = preflight(own.clone()).await;
    assert_eq!(r.status, 204, "{}", r.raw);
    assert_eq!(r.header("access-control-allow-origin"), Some(own.as_str()));
    assert!(r
        .header("access-control-allow-headers")
        .is_some_and(|h| h.contains("authorization")));
    // ...but even the own page changes nothing without its token.
    let r = request(
        None,
        order,
        "POST",
        &format!("/orders/{n}/cancel"),
        vec![("Origin".into(), own.clone())],
        None,
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.raw);
    // With the kitchen token it bumps (here: 409, the order is not ready; the
    // point is that it got past the guard) and may read the answer.
    let r = request(
        None,
        order,
        "POST",
        &format!("/orders/{n}/complete"),
        vec![
            ("Origin".into(), own.clone()),
            (
                "Authorization".into(),
                tokens.header(&Who::Role(Role::Kitchen)).unwrap(),
            ),
        ],
        None,
    )
    .await;
    assert!(r.status == 200 || r.status == 409, "{}", r.raw);
    assert_eq!(r.header("access-control-allow-origin"), Some(own.as_str()));
    // No response anywhere carries a wildcard.
    let r = request(
        None,
        tracking,
        "GET",
        "/health",
        vec![("Origin".into(), evil.into())],
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("access-control-allow-origin").is_none(),
        "{}",
        r.raw
    );
    app.stop().await;
}

// ---------------------------------------------------------------------------
// 3. Revocation without a restart (the CLI in another process)
// ---------------------------------------------------------------------------

fn cli(env: &TestEnv, args: &[&str]) -> std::process::Output {
    env.command()
        .args(args)
        .env("RESTAURANT_LOG__FORMAT", "json")
        .output()
        .expect("running restaurant-system")
}

fn last_line(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .to_string()
}

async fn revoked_tokens_stop_working_within_a_second(b: Backend) {
    let env = TestEnv::new(b);
    let app = env.start(Mode::All, None).await;
    let out = cli(&env, &["token", "create", "pos-till-1", "--role", "pos"]);
    assert!(out.status.success(), "{out:?}");
    let token = last_line(&out);
    let http = reqwest::Client::new();
    let post = || {
        http.post(format!("{}/orders", app.order_url()))
            .bearer_auth(&token)
            .json(&spec_orders()[0])
            .send()
    };
    assert_eq!(post().await.unwrap().status(), 200);
    let out = cli(&env, &["token", "revoke", "pos-till-1"]);
    assert!(out.status.success(), "{out:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r = post().await.unwrap();
    assert_eq!(r.status(), 401, "a revoked token still works after 1 s");
    // The same service, never restarted, accepts a new token at once.
    let out = cli(&env, &["token", "create", "pos-till-2", "--role", "pos"]);
    let token2 = last_line(&out);
    eventually(Duration::from_secs(2), "the new token to work", || async {
        let r = http
            .post(format!("{}/orders", app.order_url()))
            .bearer_auth(&token2)
            .json(&spec_orders()[0])
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    app.stop().await;
}

// ---------------------------------------------------------------------------
// 4. The CLI
// ---------------------------------------------------------------------------

async fn token_cli(b: Backend) {
    let env = TestEnv::new(b);
    let out = cli(&env, &["token", "create", "kds-grill", "--role", "kitchen"]);
    assert!(out.status.success(), "{out:?}");
    let token = last_line(&out);
    assert!(
        token.starts_with("rsk_") && token.len() == 68,
        "the last line is not the token: {token:?}"
    );
    let store = env.open_store().await;
    let rows = store.tokens().await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].role, Role::Kitchen);
    assert_eq!(rows[0].token_hash, hash_token(&token), "stored: the hash");
    assert!(!format!("{:?}", rows[0]).contains(&rows[0].token_hash));
    if b == Backend::Sqlite {
        let bytes = std::fs::read(&env.cfg.database.sqlite_path).unwrap_or_default();
        let wal = std::fs::read(env.cfg.database.sqlite_path.with_extension("db-wal"))
            .unwrap_or_default();
        for file in [bytes, wal] {
            assert!(
                !file.windows(token.len()).any(|w| w == token.as_bytes()),
                "the token itself is in the database file"
            );
        }
    }
    for (args, what) in [
        (
            vec!["token", "create", "kds-grill", "--role", "pos"],
            "already exists",
        ),
        (vec!["token", "revoke", "nobody"], "no token named"),
        (vec!["token", "create", "x", "--role", "chef"], "role"),
        (
            vec!["token", "create", "bad name", "--role", "pos"],
            "token name",
        ),
    ] {
        let o = cli(&env, &args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(what), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line: {err}");
    }
    let list = cli(&env, &["token", "list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains("kds-grill") && text.contains("kitchen"),
        "{text}"
    );
    assert!(text.contains("never"), "{text}");
    assert!(
        !text.contains(&token) && !text.contains(&hash_token(&token)[..16]),
        "{text}"
    );
    assert!(cli(&env, &["token", "revoke", "kds-grill"])
        .status
        .success());
    assert!(store.tokens().await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------
// 5. The switch and the bind address
// ---------------------------------------------------------------------------

async fn anonymous_loopback_can_be_switched_off(b: Backend) {
    let env = TestEnv::new(b);
    let mut cfg = env.cfg.clone();
    cfg.security.anonymous_loopback = false;
    let app = env.start_with(Mode::All, None, &cfg).await;
    let tokens = Tokens::create(&app.store(), "s").await;
    let n = matrix(
        None,
        parse_addr(&app.order_url()),
        parse_addr(&app.tracking_url()),
        &tokens,
        &app.store(),
        false,
    )
    .await;
    assert!(n > 0);
    app.stop().await;
}

#[test]
fn an_invalid_bind_address_is_exit_2_never_a_wider_bind() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("c.toml");
    std::fs::write(&conf, "[http]\nbind = \"127.0.0.l\"\n").unwrap();
    for args in [
        vec!["--mode=order-service"],
        vec!["validate"],
        vec!["token", "list"],
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_restaurant-system"))
            .arg("--config")
            .arg(&conf)
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            err.contains("http.bind") && err.contains("127.0.0.l"),
            "{err}"
        );
    }
    let o = Command::new(env!("CARGO_BIN_EXE_restaurant-system"))
        .arg("--config")
        .arg(&conf)
        .args(["--mode=order-service"])
        .env("RESTAURANT_HTTP__BIND", "0.0.0.O")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
}

// ---------------------------------------------------------------------------
// 6. The log scan, on the real binary
// ---------------------------------------------------------------------------

async fn no_token_in_any_log_line(b: Backend) {
    let env = TestEnv::new(b);
    let out = cli(&env, &["token", "create", "mgr", "--role", "manager"]);
    let token = last_line(&out);
    let created_output =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let hash = hash_token(&token);
    let mut cmd = env.command();
    cmd.args(["--mode=all"])
        .env("RESTAURANT_HTTP__ORDER_PORT", "0")
        .env("RESTAURANT_HTTP__TRACKING_PORT", "0")
        .env("RESTAURANT_HTTP__BRIDGE_PORT", "0")
        .env("RESTAURANT_LOG__LEVEL", "debug");
    let mut p = Proc::spawn("all", cmd);
    let started = p
        .wait_log("service_started", Duration::from_secs(30), |v| {
            v["service"] == "order-service"
        })
        .await;
    let port = started["details"]["port"].as_u64().expect("port") as u16;
    let order = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let wrong = token_from_bytes(rand::random());
    let mut sent = vec![token.clone(), wrong.clone()];
    for (auth, _) in [
        (format!("Bearer {token}"), 200),
        (format!("Bearer {wrong}"), 401),
        (format!("Bearer {wrong}"), 401),
        (format!("Bearer {wrong}"), 401),
        (format!("Basic {token}"), 401),
        (format!("Bearer {token}x"), 401),
    ] {
        sent.push(auth.clone());
        let r = request(
            None,
            order,
            "POST",
            "/orders",
            vec![("Authorization".into(), auth)],
            Some(spec_orders()[0].to_string()),
        )
        .await;
        assert!(r.status == 200 || r.status == 401, "{}", r.raw);
    }
    // Failed attempts: logged with the source, counted, slowed down more each time.
    let failed = p
        .wait_log("auth_failed", Duration::from_secs(20), |v| {
            v["details"]["failures"] == 5
        })
        .await;
    assert_eq!(failed["details"]["source"], "127.0.0.1");
    let delays: Vec<u64> = p
        .logs()
        .iter()
        .filter(|v| v["action"] == "auth_failed")
        .map(|v| v["details"]["delay_ms"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(delays.len(), 5, "{delays:?}");
    assert!(
        delays.windows(2).all(|w| w[1] > w[0]),
        "failed attempts are not slowed down more each time: {delays:?}"
    );
    // The audit line of the accepted order names the token, not the token itself.
    let audit = p
        .wait_log("request_authorized", Duration::from_secs(5), |_| true)
        .await;
    assert_eq!(audit["details"]["token_name"], "mgr");
    assert_eq!(audit["details"]["role"], "manager");
    // Revocation and the CLI list write log lines too (the CLI's own output aside).
    let _ = cli(&env, &["token", "list"]);
    let _ = cli(&env, &["token", "revoke", "mgr"]);
    p.stop().await;
    let all = [p.stdout(), p.stderr()].concat().join("\n");
    for secret in sent.iter().chain([&hash]) {
        let s = secret
            .trim_start_matches("Bearer ")
            .trim_start_matches("Basic ");
        assert!(!all.contains(s), "a token or hash is in the logs");
    }
    assert!(
        !all.contains("rsk_"),
        "something token-shaped is in the logs"
    );
    assert!(
        !all.to_ascii_lowercase().contains("bearer "),
        "an Authorization header is in the logs"
    );
    assert!(!created_output.contains(&hash));
}

backend_tests!(
    every_route_every_caller_from_loopback_and_a_second_host,
    foreign_pages_cannot_forge_or_read,
    revoked_tokens_stop_working_within_a_second,
    token_cli,
    anonymous_loopback_can_be_switched_off,
    no_token_in_any_log_line,
);

/// Issue 22: re-reading the token table held the cache's lock across the
/// database call, so every request with a token waited behind a slow
/// database. Now one request re-reads it and the others use the current copy.
/// PostgreSQL only: a table lock makes its read slow on demand (SQLite's
/// readers never wait for a writer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_token_table_delays_one_request_not_all() {
    let env = TestEnv::new(Backend::Postgres);
    let app = env.start(Mode::OrderService, None).await;
    let out = cli(&env, &["token", "create", "pos-till-1", "--role", "pos"]);
    assert!(out.status.success(), "{out:?}");
    let token = last_line(&out);
    let url = format!("{}/openapi.yaml", app.order_url());
    let get = {
        let (token, url) = (token.clone(), url.clone());
        move || {
            let (token, url) = (token.clone(), url.clone());
            async move {
                reqwest::Client::new()
                    .get(url)
                    .bearer_auth(token)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            }
        }
    };
    assert_eq!(get().await.unwrap(), 200, "the token works");
    // Another session holds a lock that makes every read of the table wait.
    let conninfo = format!(
        "host={} port={} user={} dbname={}",
        pg_host(),
        pg_port(),
        pg_user(),
        env.pg_db.as_deref().unwrap()
    );
    let (locker, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    locker
        .batch_execute("begin; lock table api_tokens in access exclusive mode")
        .await
        .unwrap();
    // The copy is now older than its 0.5 s: the next request re-reads it
    // (and waits for the lock); the ones after it must not wait.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let first = tokio::spawn(get());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    for _ in 0..3 {
        let answer = tokio::time::timeout(Duration::from_secs(3), get()).await;
        assert_eq!(
            answer.ok().and_then(|r| r.ok()),
            Some(200),
            "a request with a token waited behind the re-read of the token table"
        );
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "requests with a token waited {took:?} behind one re-read of the token table"
    );
    assert!(
        !first.is_finished(),
        "the re-read itself waits for the lock"
    );
    locker.batch_execute("rollback").await.unwrap();
    assert_eq!(first.await.unwrap().unwrap(), 200);
    app.stop().await;
}

// ---------------------------------------------------------------------------
// TLS on (issue 27): a token never crosses the LAN in clear
// ---------------------------------------------------------------------------

/// With `[tls] mode = "self-signed"`, a POS on another host that sends its
/// token over plain HTTP is refused (403, "use https") and the request does
/// nothing; the same request over HTTPS, trusting the box's CA, works; on the
/// box itself plain HTTP keeps working (the seed's curl examples).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_a_token_over_plain_http_from_another_host_is_refused() {
    let env = TestEnv::new(Backend::Sqlite);
    // The second host first: its address is then one of the box's, and in
    // the certificate the box issues at start.
    let host = SecondHost::create();
    let mut cfg = env.cfg.clone();
    cfg.http.bind = "0.0.0.0".into();
    cfg.tls.mode = restaurant_system::process::config::TlsMode::SelfSigned;
    cfg.tls.dir = env.dir.path().join("tls");
    let app = env.start_with(Mode::All, None, &cfg).await;
    let store = app.store();
    let tokens = Tokens::create(&store, "tls").await;
    let order = addr_on(host.host_ip, parse_addr(&app.order_url()));
    let auth = || {
        vec![(
            "Authorization".to_string(),
            format!("Bearer {}", tokens.pos),
        )]
    };
    let body = spec_orders()[0].to_string();

    let r = request(
        Some(host.ns.clone()),
        order,
        "POST",
        "/orders",
        auth(),
        Some(body.clone()),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.raw);
    assert_eq!(r.body["error"], "use https", "{}", r.raw);
    assert!(
        r.body["details"][0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("https://"),
        "{}",
        r.raw
    );
    // Over HTTPS from the same host, trusting the box's CA: accepted.
    let ca = cfg.tls.dir.join("ca.crt");
    let out = Command::new("ip")
        .args(["netns", "exec", &host.ns, "curl", "-sS", "--max-time", "10"])
        .arg("--cacert")
        .arg(&ca)
        .args(["-H", &format!("Authorization: Bearer {}", tokens.pos)])
        .args(["-H", "Content-Type: application/json", "-d", &body])
        .arg(format!("https://{order}/orders"))
        .output()
        .expect("curl in the second host (apt-get install curl)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_str(&text).expect("JSON");
    assert!(created["order_number"].is_string(), "{text}");

    // On the box itself, plain HTTP with a token still works.
    let local = addr_on(Ipv4Addr::LOCALHOST, order);
    let r = request(None, local, "POST", "/orders", auth(), Some(body)).await;
    assert_eq!(r.status, 200, "{}", r.raw);

    drop(host);
    app.stop().await;
}
