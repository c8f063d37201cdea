//! Who may do what (issue 11): API tokens and their roles, the access class of
//! every route, the decision for one request, the CORS origin rule and the
//! slow-down after failed attempts. Pure: the HTTP edge (`http::auth`) reads the
//! headers and the token table and asks these functions.
//!
//! The model is Mosquitto 2's: on the box itself (loopback) anonymous callers
//! keep working unless the admin turns that off; from anywhere else every API
//! route needs `Authorization: Bearer TOKEN`. A browser request (it carries
//! `Origin`) never changes state anonymously, so a foreign web page open on the
//! box cannot forge a cancel.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Point of sale: places orders, reads.
    Pos,
    /// Kitchen display: bumps (complete) and recalls, reads.
    Kitchen,
    /// Everything, cancel included.
    Manager,
}

names!(Role, |s| format!("unknown role '{s}': use pos, kitchen or manager"), {
    Pos => "pos",
    Kitchen => "kitchen",
    Manager => "manager",
});

/// The access class of a route: what a caller needs to use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `/health`, `/openapi.yaml`, the display page's static files: anyone.
    Open,
    /// Reading orders and workers, and any GET/HEAD/OPTIONS.
    Read,
    /// `POST /orders`.
    CreateOrder,
    /// `POST /orders/{n}/complete` (the bump) and `/recall`.
    KitchenAction,
    /// `POST /orders/{n}/cancel`.
    Cancel,
    /// A cook's start, bump and undo of items at a station, and a station's
    /// bump of its whole part of a ticket (issue 24).
    StationAction,
    /// The expo's confirm and rush (issue 24).
    Expo,
    /// Any other method on a route nobody classified: refused for everyone, so
    /// a new route that changes state can never be opened by omission.
    Unknown,
}

impl Access {
    pub fn allows(self, role: Role) -> bool {
        match self {
            Access::Open | Access::Read => true,
            Access::CreateOrder => matches!(role, Role::Pos | Role::Manager),
            Access::KitchenAction | Access::StationAction | Access::Expo => {
                matches!(role, Role::Kitchen | Role::Manager)
            }
            Access::Cancel => role == Role::Manager,
            Access::Unknown => false,
        }
    }

    /// Roles that may use a route of this class, for error messages.
    pub fn roles(self) -> Vec<Role> {
        Role::ALL.into_iter().filter(|r| self.allows(*r)).collect()
    }

    pub fn changes_state(self) -> bool {
        !matches!(self, Access::Open | Access::Read)
    }
}

/// Every HTTP route of both services, written once: the services dispatch on
/// it, `classify` reads its access class, the metrics use its pattern as the
/// `route` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    CreateOrder,
    Complete,
    Recall,
    Cancel,
    Order,
    OrderStatus,
    OrderHistory,
    Workers,
    SpeedOfService,
    /// Issue 24 (docs/stations.md): a cook at a station, the expo, and what their screens read.
    ItemStart,
    ItemBump,
    ItemUndo,
    StationBump,
    ExpoConfirm,
    Rush,
    Stations,
    Tickets,
    Health,
    Metrics,
    OpenApi,
    Display,
    DisplayFile,
    Board,
    BoardFile,
    /// The box's CA certificate (issue 27): public, for devices to trust.
    CaCert,
    /// The screens' MQTT WebSocket on the page's own origin (issue 27), passed
    /// on to Mosquitto, which checks the screen's account itself.
    MqttWs,
}

impl Route {
    /// Every route, in the order `find` tries them.
    pub const ALL: [Route; 26] = [
        Route::CreateOrder,
        Route::Complete,
        Route::Recall,
        Route::Cancel,
        Route::Order,
        Route::OrderStatus,
        Route::OrderHistory,
        Route::Workers,
        Route::SpeedOfService,
        Route::ItemStart,
        Route::ItemBump,
        Route::ItemUndo,
        Route::StationBump,
        Route::ExpoConfirm,
        Route::Rush,
        Route::Stations,
        Route::Tickets,
        Route::Health,
        Route::Metrics,
        Route::OpenApi,
        Route::Display,
        Route::DisplayFile,
        Route::Board,
        Route::BoardFile,
        Route::CaCert,
        Route::MqttWs,
    ];

    /// The route table: its pattern (`{..}` is any one segment), the one
    /// method it answers (others get 405), who may call it.
    fn row(self) -> (&'static str, &'static str, Access) {
        use Access::*;
        match self {
            Route::CreateOrder => ("/orders", "POST", CreateOrder),
            Route::Complete => ("/orders/{n}/complete", "POST", KitchenAction),
            Route::Recall => ("/orders/{n}/recall", "POST", KitchenAction),
            Route::Cancel => ("/orders/{n}/cancel", "POST", Cancel),
            Route::Order => ("/orders/{n}", "GET", Read),
            Route::OrderStatus => ("/orders/{n}/status", "GET", Read),
            Route::OrderHistory => ("/orders/{n}/history", "GET", Read),
            Route::Workers => ("/workers/status", "GET", Read),
            Route::SpeedOfService => ("/reports/speed-of-service", "GET", Read),
            Route::ItemStart => (
                "/orders/{n}/stations/{station}/items/{i}/start",
                "POST",
                StationAction,
            ),
            Route::ItemBump => (
                "/orders/{n}/stations/{station}/items/{i}/bump",
                "POST",
                StationAction,
            ),
            Route::ItemUndo => (
                "/orders/{n}/stations/{station}/items/{i}/undo",
                "POST",
                StationAction,
            ),
            Route::StationBump => ("/orders/{n}/stations/{station}/bump", "POST", StationAction),
            Route::ExpoConfirm => ("/orders/{n}/expo/confirm", "POST", Expo),
            Route::Rush => ("/orders/{n}/rush", "POST", Expo),
            Route::Stations => ("/stations", "GET", Read),
            Route::Tickets => ("/tickets", "GET", Read),
            Route::Health => ("/health", "GET", Open),
            Route::Metrics => ("/metrics", "GET", Read),
            Route::OpenApi => ("/openapi.yaml", "GET", Open),
            // The kitchen display page and its settings; `config.json` holds
            // the MQTT read account only for a paired page (decided by the
            // route, which sees the caller).
            Route::Display => ("/display", "GET", Open),
            Route::DisplayFile => ("/display/{file}", "GET", Open),
            // The customer board's static files (it reads the board over MQTT).
            Route::Board => ("/board", "GET", Open),
            Route::BoardFile => ("/board/{file}", "GET", Open),
            Route::CaCert => ("/ca.crt", "GET", Open),
            Route::MqttWs => ("/mqtt", "GET", Open),
        }
    }

    /// The route of a path split into segments (`/orders/X/cancel` ->
    /// `["orders", "X", "cancel"]`), whatever the method.
    pub fn find(seg: &[&str]) -> Option<Route> {
        Route::ALL.into_iter().find(|route| {
            let mut want = route.pattern().split('/').filter(|p| !p.is_empty());
            let mut got = seg.iter();
            loop {
                match (want.next(), got.next()) {
                    (None, None) => return true,
                    (Some(w), Some(g)) if w.starts_with('{') || w == *g => {}
                    _ => return false,
                }
            }
        })
    }

    /// The route of a raw path.
    pub fn of_path(path: &str) -> Option<Route> {
        let seg: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        Route::find(&seg)
    }

    /// The pattern, e.g. `/orders/{n}/status` (the metrics label).
    pub fn pattern(self) -> &'static str {
        self.row().0
    }

    /// The one method the route answers.
    pub fn method(self) -> &'static str {
        self.row().1
    }

    pub fn access(self) -> Access {
        self.row().2
    }

    /// Whether `api` serves the route (its own match then handles it). The
    /// edge answers `/metrics` and `/ca.crt` itself; every port answers
    /// `/health` and `/openapi.yaml`.
    pub fn served_by(self, api: Api) -> bool {
        use Route::*;
        match self {
            Health | OpenApi => true,
            CreateOrder | Complete | Cancel | Recall | ItemStart | ItemBump | ItemUndo
            | StationBump | ExpoConfirm | Rush => api == Api::Orders,
            Order | OrderStatus | OrderHistory | SpeedOfService | Board | BoardFile | Workers
            | Stations | Tickets | Display | DisplayFile | MqttWs => api == Api::Tracking,
            Metrics | CaCert => false,
        }
    }
}

/// The two APIs that share the route table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// The order service's (intake and the kitchen's actions).
    Orders,
    /// The tracking service's (reads, the display and the board).
    Tracking,
}

/// The class of `method` on the path split into segments. Open routes are
/// open whatever the method (they answer 405 themselves); a known route under
/// another method, or an unknown route read with GET/HEAD/OPTIONS, is `Read`:
/// it reveals nothing to an anonymous remote caller. Any other method on an
/// unknown route is `Unknown`, refused for everyone (issue 24).
pub fn classify(method: &str, seg: &[&str]) -> Access {
    match Route::find(seg) {
        Some(r) if r.access() == Access::Open || r.method() == method => r.access(),
        // Another method on a known route: its handler answers 405.
        Some(_) => Access::Read,
        None if matches!(method, "GET" | "HEAD" | "OPTIONS") => Access::Read,
        // A route nobody wrote in the table: refused, so a route that changes
        // state can never be opened by omission.
        None => Access::Unknown,
    }
}

/// What the `Authorization` header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// No `Authorization` header.
    None,
    /// A syntactically valid bearer token (not yet looked up).
    Bearer(String),
    /// A header that is not `Bearer <token>`.
    Malformed,
}

/// Reads an `Authorization` header value. Never echoes it anywhere.
pub fn parse_authorization(value: Option<&[u8]>) -> Credential {
    let Some(v) = value else {
        return Credential::None;
    };
    let Ok(v) = std::str::from_utf8(v) else {
        return Credential::Malformed;
    };
    let v = v.trim();
    let Some((scheme, token)) = v.split_once(' ') else {
        return Credential::Malformed;
    };
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || !is_token_shaped(token) {
        return Credential::Malformed;
    }
    Credential::Bearer(token.to_string())
}

/// Tokens look like `rsk_` + 64 lowercase hex digits (32 random bytes).
pub const TOKEN_PREFIX: &str = "rsk_";
const TOKEN_HEX: usize = 64;

fn is_token_shaped(t: &str) -> bool {
    t.len() == TOKEN_PREFIX.len() + TOKEN_HEX
        && t.starts_with(TOKEN_PREFIX)
        && t[TOKEN_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A new token from 32 random bytes (the caller passes `rand::random()`, a CSPRNG).
pub fn token_from_bytes(bytes: [u8; 32]) -> String {
    let mut s = String::with_capacity(TOKEN_PREFIX.len() + TOKEN_HEX);
    s.push_str(TOKEN_PREFIX);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// What is stored instead of the token: SHA-256, hex. The token has 256 bits
/// of randomness, so a plain hash is enough (no salt or slow KDF needed: there
/// is nothing to guess).
pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compares two stored hashes in constant time (no early exit on the first
/// differing byte).
pub fn hashes_equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Token names: what `token list` shows and `token revoke` takes.
pub fn check_token_name(name: &str) -> Result<(), String> {
    if !super::is_plain_name(name) {
        return Err(format!(
            "token name '{}': use 1-64 letters, digits, '_', '-' or '.'",
            name.chars().take(64).collect::<String>()
        ));
    }
    Ok(())
}

/// The admin's choices that the decision depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// `[security] anonymous_loopback`: callers on the box itself need no token.
    pub anonymous_loopback: bool,
}

/// The facts about one request, read by the HTTP edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// The peer address is loopback (127.0.0.0/8, ::1, ::ffff:127.x).
    pub loopback: bool,
    /// The request came through a proxy (`Forwarded` / `X-Forwarded-For`): the
    /// peer being loopback then says nothing about the real client.
    pub forwarded: bool,
    /// The request carries `Origin`: it comes from a web page.
    pub browser: bool,
    /// The result of looking the bearer token up.
    pub caller: Caller,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No credentials.
    Anonymous,
    /// A known token.
    Token { name: String, role: Role },
    /// Credentials that are malformed, unknown or revoked.
    Rejected,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// 401: no (valid) token. The message says how to get one.
    Unauthorized(&'static str),
    /// 404: a route without an access class, for any caller (never reached
    /// by a handler).
    NoSuchRoute,
    /// 403: a valid token whose role may not do this.
    Forbidden {
        role: Role,
        allowed: Vec<Role>,
    },
}

pub const HOW_TO_GET_A_TOKEN: &str = "ask a manager to run `restaurant-system token create NAME --role pos|kitchen|manager` on the box and send it as `Authorization: Bearer TOKEN`";

pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// The decision for one request.
pub fn decide(access: Access, facts: &Facts, policy: Policy) -> Decision {
    match access {
        Access::Open => return Decision::Allow,
        Access::Unknown => return Decision::NoSuchRoute,
        _ => {}
    }
    match &facts.caller {
        Caller::Token { role, .. } if access.allows(*role) => Decision::Allow,
        Caller::Token { role, .. } => Decision::Forbidden {
            role: *role,
            allowed: access.roles(),
        },
        // A wrong token is never downgraded to anonymous: the caller meant to
        // authenticate and should learn that it failed.
        Caller::Rejected => Decision::Unauthorized("invalid or revoked token"),
        Caller::Anonymous => {
            if !policy.anonymous_loopback || !facts.loopback || facts.forwarded {
                Decision::Unauthorized("a token is required")
            } else if facts.browser && access.changes_state() {
                Decision::Unauthorized("a token is required for changes made from a web page")
            } else {
                Decision::Allow
            }
        }
    }
}

/// `scheme://host[:port]` of an `Origin` header, lowercased, default port
/// filled in. None for anything else (`null`, garbage).
pub fn parse_origin(origin: &str) -> Option<(String, String, u16)> {
    let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    let (scheme, rest) = origin.split_once("://")?;
    let default = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    let (host, port) = split_host_port(rest)?;
    let port = port.unwrap_or(default);
    Some((scheme.to_string(), host, port))
}

/// `host[:port]` (with `[v6]` brackets) -> (host, port).
pub fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    let s = s.trim().to_ascii_lowercase();
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?.parse().ok()?),
        };
        (format!("[{h}]"), port)
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p.parse().ok()?)),
            None => (s.clone(), None),
        }
    };
    (!host.is_empty() && host != "[]").then_some((host, port))
}

/// CORS: may a page from `origin` call us? Yes for the origins the config
/// names, and for the box's own display page: the tracking service's port on
/// the host name the client used for this request (`Host`). A page elsewhere
/// gets no CORS headers, so the browser keeps its answers from it.
pub fn origin_allowed(
    origin: &str,
    host_header: Option<&str>,
    display_port: u16,
    configured: &[String],
) -> bool {
    let Some(o) = parse_origin(origin) else {
        return false;
    };
    if configured
        .iter()
        .filter_map(|c| parse_origin(c))
        .any(|c| c == o)
    {
        return true;
    }
    let Some((host, _)) = host_header.and_then(split_host_port) else {
        return false;
    };
    // The box's own page, over plain HTTP or (issue 27) HTTPS on the same port.
    (o.0 == "http" || o.0 == "https") && o.1 == host && o.2 == display_port
}

/// Failed attempts per source address, and how long to hold back the next
/// answer to that address. Each failure within `WINDOW` of the previous one
/// doubles the delay (from 200 ms, up to 5 s); a quiet `WINDOW` forgets it.
#[derive(Debug, Default)]
pub struct Throttle {
    by_ip: HashMap<IpAddr, (u32, Instant)>,
}

impl Throttle {
    pub const WINDOW: Duration = Duration::from_secs(60);
    const FIRST: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(5);
    /// Bounds the memory an attacker with many addresses can make us use.
    const MAX_ENTRIES: usize = 10_000;

    /// Records a failure from `ip`; returns how long to wait before answering
    /// it, and how many failures in a row this address has.
    pub fn failure(&mut self, ip: IpAddr, now: Instant) -> (Duration, u32) {
        if self.by_ip.len() >= Self::MAX_ENTRIES && !self.by_ip.contains_key(&ip) {
            self.by_ip
                .retain(|_, (_, last)| now.duration_since(*last) < Self::WINDOW);
            if self.by_ip.len() >= Self::MAX_ENTRIES {
                self.evict_oldest();
            }
        }
        let entry = self.by_ip.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) >= Self::WINDOW {
            entry.0 = 0;
        }
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
        (Self::delay(entry.0), entry.0)
    }

    /// Every address still failing within the window (a flood from many
    /// addresses): forgets the tenth that failed longest ago, so the map never
    /// passes `MAX_ENTRIES` and the scan is paid once per tenth, not per failure.
    fn evict_oldest(&mut self) {
        let mut last: Vec<Instant> = self.by_ip.values().map(|(_, at)| *at).collect();
        let k = (Self::MAX_ENTRIES / 10).min(last.len() - 1);
        let (_, cut, _) = last.select_nth_unstable(k);
        let cut = *cut;
        self.by_ip.retain(|_, (_, at)| *at > cut);
    }

    /// Delay before answering the `n`th failure in a row.
    pub fn delay(n: u32) -> Duration {
        let shift = n.saturating_sub(1).min(16);
        Self::FIRST.saturating_mul(1 << shift).min(Self::MAX)
    }

    /// A success from `ip` clears its record.
    pub fn success(&mut self, ip: IpAddr) {
        self.by_ip.remove(&ip);
    }

    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(loopback: bool, browser: bool, caller: Caller) -> Facts {
        Facts {
            loopback,
            forwarded: false,
            browser,
            caller,
        }
    }
    const ON: Policy = Policy {
        anonymous_loopback: true,
    };
    const OFF: Policy = Policy {
        anonymous_loopback: false,
    };

    fn token(role: Role) -> Caller {
        Caller::Token {
            name: "t".into(),
            role,
        }
    }

    #[test]
    fn routes_are_classified() {
        assert_eq!(classify("GET", &["health"]), Access::Open);
        assert_eq!(classify("POST", &["health"]), Access::Open);
        assert_eq!(classify("GET", &["openapi.yaml"]), Access::Open);
        assert_eq!(classify("GET", &["display"]), Access::Open);
        assert_eq!(classify("GET", &["display", "config.json"]), Access::Open);
        assert_eq!(classify("GET", &["board"]), Access::Open);
        assert_eq!(classify("GET", &["board", "board.js"]), Access::Open);
        assert_eq!(classify("POST", &["orders"]), Access::CreateOrder);
        assert_eq!(classify("GET", &["orders"]), Access::Read);
        assert_eq!(
            classify("POST", &["orders", "X", "complete"]),
            Access::KitchenAction
        );
        assert_eq!(
            classify("POST", &["orders", "X", "recall"]),
            Access::KitchenAction
        );
        assert_eq!(classify("POST", &["orders", "X", "cancel"]), Access::Cancel);
        assert_eq!(classify("GET", &["orders", "X", "status"]), Access::Read);
        assert_eq!(classify("GET", &["workers", "status"]), Access::Read);
        assert_eq!(classify("GET", &["metrics"]), Access::Read);
        assert_eq!(classify("GET", &["nope"]), Access::Read);
        assert_eq!(classify("GET", &[]), Access::Read);
        // Issue 24: the station and expo routes have classes of their own...
        for seg in [
            &["orders", "X", "stations", "grill", "items", "0", "bump"][..],
            &["orders", "X", "stations", "grill", "items", "0", "start"],
            &["orders", "X", "stations", "grill", "items", "0", "undo"],
            &["orders", "X", "stations", "grill", "bump"],
        ] {
            assert_eq!(classify("POST", seg), Access::StationAction, "{seg:?}");
        }
        assert_eq!(
            classify("POST", &["orders", "X", "expo", "confirm"]),
            Access::Expo
        );
        assert_eq!(classify("POST", &["orders", "X", "rush"]), Access::Expo);
        // ...and a route nobody classified is refused unless it only reads.
        for (m, seg) in [
            ("POST", &["nope"][..]),
            ("POST", &["orders", "X", "explode"]),
            ("PUT", &["orders", "X", "stations"]),
            ("POST", &["orders", "X", "stations", "grill", "explode"]),
            ("DELETE", &["tokens"]),
            ("PATCH", &[]),
        ] {
            let a = classify(m, seg);
            assert_eq!(a, Access::Unknown, "{m} {seg:?}");
            assert!(a.changes_state() && a.roles().is_empty());
        }
        // Wrong methods on known routes reach their handler (405).
        assert_eq!(classify("DELETE", &["orders"]), Access::Read);
        assert_eq!(classify("POST", &["orders", "X", "status"]), Access::Read);
    }

    #[test]
    fn every_route_is_found_by_its_pattern() {
        for route in Route::ALL {
            let pattern = route.pattern();
            let concrete = pattern
                .replace("{n}", "ORD_20261202_001")
                .replace("{file}", "a.js");
            assert_eq!(Route::of_path(&concrete), Some(route), "{pattern}");
        }
        assert_eq!(Route::of_path("/orders/x/bogus"), None);
        assert_eq!(Route::of_path("/"), None);
        assert_eq!(Route::of_path("/display/a/b"), None);
    }

    #[test]
    fn roles_match_the_issue() {
        use Access::*;
        use Role::*;
        let table = [
            (Read, [true, true, true]),
            (CreateOrder, [true, false, true]),
            (KitchenAction, [false, true, true]),
            (Cancel, [false, false, true]),
            (StationAction, [false, true, true]),
            (Expo, [false, true, true]),
            (Unknown, [false, false, false]),
        ];
        for (access, want) in table {
            for (role, ok) in [Pos, Kitchen, Manager].into_iter().zip(want) {
                assert_eq!(access.allows(role), ok, "{access:?} {role}");
            }
        }
        assert_eq!(Cancel.roles(), vec![Manager]);
        assert_eq!("kitchen".parse::<Role>(), Ok(Kitchen));
        assert!("chef".parse::<Role>().is_err());
    }

    #[test]
    fn anonymous_works_on_loopback_only_and_only_when_allowed() {
        for access in [Access::Read, Access::CreateOrder, Access::Cancel] {
            assert_eq!(
                decide(access, &facts(true, false, Caller::Anonymous), ON),
                Decision::Allow
            );
            assert!(matches!(
                decide(access, &facts(false, false, Caller::Anonymous), ON),
                Decision::Unauthorized(_)
            ));
            assert!(matches!(
                decide(access, &facts(true, false, Caller::Anonymous), OFF),
                Decision::Unauthorized(_)
            ));
        }
        // A route without a class is refused for everyone, on the box too.
        for caller in [Caller::Anonymous, token(Role::Manager), Caller::Rejected] {
            assert_eq!(
                decide(Access::Unknown, &facts(true, false, caller), ON),
                Decision::NoSuchRoute
            );
        }
        // Open routes stay open from anywhere, whatever the credentials.
        for caller in [Caller::Anonymous, Caller::Rejected] {
            assert_eq!(
                decide(Access::Open, &facts(false, true, caller), OFF),
                Decision::Allow
            );
        }
    }

    #[test]
    fn a_proxy_or_a_web_page_does_not_count_as_the_box() {
        let mut f = facts(true, false, Caller::Anonymous);
        f.forwarded = true;
        assert!(matches!(
            decide(Access::Read, &f, ON),
            Decision::Unauthorized(_)
        ));
        // A page open on the box may read (CORS keeps foreign pages from the
        // answer) but never change anything without a token.
        let page = facts(true, true, Caller::Anonymous);
        assert_eq!(decide(Access::Read, &page, ON), Decision::Allow);
        for a in [Access::CreateOrder, Access::KitchenAction, Access::Cancel] {
            assert!(matches!(decide(a, &page, ON), Decision::Unauthorized(_)));
        }
    }

    #[test]
    fn tokens_decide_by_role_and_bad_tokens_are_never_anonymous() {
        let f = |c| facts(false, false, c);
        assert_eq!(
            decide(Access::CreateOrder, &f(token(Role::Pos)), OFF),
            Decision::Allow
        );
        assert_eq!(
            decide(Access::Cancel, &f(token(Role::Kitchen)), OFF),
            Decision::Forbidden {
                role: Role::Kitchen,
                allowed: vec![Role::Manager]
            }
        );
        assert!(matches!(
            decide(Access::Read, &facts(true, false, Caller::Rejected), ON),
            Decision::Unauthorized(_)
        ));
    }

    #[test]
    fn authorization_header_parsing() {
        let t = token_from_bytes([7; 32]);
        assert_eq!(parse_authorization(None), Credential::None);
        assert_eq!(
            parse_authorization(Some(format!("Bearer {t}").as_bytes())),
            Credential::Bearer(t.clone())
        );
        assert_eq!(
            parse_authorization(Some(format!("bearer   {t} ").as_bytes())),
            Credential::Bearer(t.clone())
        );
        for bad in [
            "Basic dXNlcjpwYXNz".to_string(),
            "Bearer".to_string(),
            "Bearer ".to_string(),
            format!("Bearer {t}x"),
            format!("Bearer {}", t.to_uppercase()),
            t.clone(),
        ] {
            assert_eq!(
                parse_authorization(Some(bad.as_bytes())),
                Credential::Malformed,
                "{bad}"
            );
        }
        assert_eq!(
            parse_authorization(Some(&[0xff, 0xfe])),
            Credential::Malformed
        );
    }

    #[test]
    fn tokens_hashes_and_names() {
        let a = token_from_bytes([0xab; 32]);
        assert!(a.starts_with("rsk_abab") && a.len() == 68);
        assert_ne!(token_from_bytes([1; 32]), token_from_bytes([2; 32]));
        let h = hash_token(&a);
        assert_eq!(h.len(), 64);
        assert!(!h.contains(&a[4..]));
        assert!(hashes_equal(&h, &hash_token(&a)));
        assert!(!hashes_equal(&h, &hash_token(&token_from_bytes([1; 32]))));
        assert!(!hashes_equal(&h, "short"));
        // A known SHA-256 vector, so the stored format never changes by accident.
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(check_token_name("kds-grill_1.a").is_ok());
        assert!(check_token_name("").is_err());
        assert!(check_token_name("a b").is_err());
        assert!(check_token_name(&"x".repeat(65)).is_err());
    }

    #[test]
    fn loopback_addresses() {
        for ip in ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "10.213.0.2",
            "0.0.0.0",
            "::",
            "192.168.1.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_loopback(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn only_the_own_display_page_and_configured_origins_pass() {
        let none: Vec<String> = vec![];
        assert!(origin_allowed(
            "http://box.local:3002",
            Some("box.local:3000"),
            3002,
            &none
        ));
        assert!(origin_allowed(
            "https://box.local:3002",
            Some("box.local:3000"),
            3002,
            &none
        ));
        assert!(origin_allowed(
            "http://[::1]:3002",
            Some("[::1]:3000"),
            3002,
            &none
        ));
        assert!(!origin_allowed(
            "http://evil.example:3002",
            Some("box.local:3000"),
            3002,
            &none
        ));
        assert!(!origin_allowed(
            "http://box.local:8080",
            Some("box.local:3000"),
            3002,
            &none
        ));
        assert!(!origin_allowed("null", Some("box:3000"), 3002, &none));
        assert!(!origin_allowed("http://box:3002", None, 3002, &none));
        let cfg = vec!["https://pos.example.com".to_string()];
        assert!(origin_allowed(
            "https://POS.example.com:443",
            Some("box:3000"),
            3002,
            &cfg
        ));
        assert!(!origin_allowed(
            "http://pos.example.com",
            Some("box:3000"),
            3002,
            &cfg
        ));
        assert_eq!(
            parse_origin("http://a:1/"),
            Some(("http".into(), "a".into(), 1))
        );
        assert_eq!(parse_origin("ftp://a"), None);
        assert_eq!(parse_origin("http://u@a"), None);
        assert_eq!(parse_origin("http://a:99999"), None);
    }

    #[test]
    fn failures_slow_down_and_are_forgotten() {
        let mut t = Throttle::default();
        let ip: IpAddr = "10.213.0.2".parse().unwrap();
        let other: IpAddr = "10.213.0.3".parse().unwrap();
        let t0 = Instant::now();
        let delays: Vec<Duration> = (0..8)
            .map(|i| t.failure(ip, t0 + Duration::from_secs(i)).0)
            .collect();
        assert_eq!(delays[0], Duration::from_millis(200));
        assert_eq!(delays[1], Duration::from_millis(400));
        assert!(delays.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(delays[7], Duration::from_secs(5));
        assert_eq!(Throttle::delay(1000), Duration::from_secs(5));
        // Another address is not slowed by the first one's failures.
        assert_eq!(t.failure(other, t0).0, Duration::from_millis(200));
        // A quiet minute forgets; a success forgets at once.
        let later = t0 + Duration::from_secs(8) + Throttle::WINDOW;
        assert_eq!(t.failure(ip, later), (Duration::from_millis(200), 1));
        t.success(ip);
        assert_eq!(t.len(), 1);
    }

    /// A flood of failures from more addresses than the map holds, all within
    /// the window (issue 22): the map stays bounded, the oldest go first, and a
    /// recent address keeps its count.
    #[test]
    fn the_failure_map_is_bounded() {
        let mut t = Throttle::default();
        let t0 = Instant::now();
        let ip = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        let flood = 5 * Throttle::MAX_ENTRIES as u32;
        for i in 0..flood {
            t.failure(ip(i), t0 + Duration::from_micros(i as u64));
            assert!(t.len() <= Throttle::MAX_ENTRIES, "{} entries", t.len());
        }
        assert!(t.len() > Throttle::MAX_ENTRIES / 2);
        // The newest address is still known (its second failure doubles), the first is not.
        let late = t0 + Duration::from_secs(1);
        assert_eq!(
            t.failure(ip(flood - 1), late),
            (Duration::from_millis(400), 2)
        );
        assert_eq!(t.failure(ip(0), late).1, 1);
    }
}
