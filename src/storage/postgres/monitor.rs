//! The primary as pg_auto_failover's monitor names it (`[cluster] monitor`):
//! a fence against a former primary that comes back writable.
//!
//! A multi-host URL with `target_session_attrs=read-write` takes the first
//! host that accepts writes. A primary cut by a power loss and back within the
//! failover is such a host: its keeper starts PostgreSQL as the primary it was
//! before it asks the monitor (pg_auto_failover issue #129), and is demoted and
//! rewound later, losing what it took meanwhile. The monitor decides who is
//! the primary, so each new connection asks it first and goes to exactly that
//! node; while it names none (a failover in progress) there is no connection,
//! hence 503. When the monitor cannot be reached the multi-host URL is used as
//! before: the monitor is not a single point of failure for serving, and the
//! hole reopens only when the monitor and a primary fail together.

use super::tls::{connect_one, MakeRustls};
use crate::domain::error::Class;
use crate::process::config::ClusterConfig;
use crate::storage::StoreError;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};
use tokio_postgres::config::TargetSessionAttrs;

/// The goal states in which the monitor lets a node take writes (its
/// `CanTakeWritesInState`). A primary being demoted (`draining`,
/// `demote_timeout`, `demoted`) is not among them, even while it still
/// reports `primary` because it died before it could report anything else.
///
/// Not `pgautofailover.get_primary()`: in 2.0, when no node has such a goal
/// (mid-failover), it falls back to a node whose *reported* state is a
/// primary's: the dead primary, exactly the node to keep away from.
const WRITABLE_GOALS: [&str; 5] = [
    "single",
    "primary",
    "wait_primary",
    "join_primary",
    "apply_settings",
];

/// Goal states of a failover under way (a primary drained or demoted, a
/// standby promoted or reporting its position): no node is named the primary
/// meanwhile, whatever another node's goal, so that a node back from the dead
/// in the middle is never written to.
const FAILOVER_GOALS: [&str; 6] = [
    "draining",
    "demote_timeout",
    "prepare_promotion",
    "stop_replication",
    "report_lsn",
    "fast_forward",
];

/// In the formation and group `pg_autoctl create` makes by default (and
/// packaging/multi-box's join-postgres uses).
const PRIMARY_SQL: &str = "select nodehost, nodeport from pgautofailover.node n \
     where formationid = 'default' and groupid = 0 and goalstate::text = any($1) \
     and not exists (select from pgautofailover.node o where o.formationid = n.formationid \
     and o.groupid = n.groupid and o.goalstate::text = any($2))";

/// The pool wants a driver error when it may not connect, and the driver makes
/// those only from a server's answer: the monitor raises it, with the SQLSTATE
/// of a server that cannot take connections now (class 57: answered 503).
const NO_PRIMARY_SQL: &str = "do $$ begin raise exception using errcode = 'cannot_connect_now', \
     message = 'pg_auto_failover''s monitor names no primary (a failover in progress)'; end $$";

/// A question to the monitor is given this long, connection included.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the monitor is asked in the background, so pooled connections
/// learn of a change of primary without a question on their way out.
const POLL: Duration = Duration::from_secs(1);
/// Longest a pooled connection takes to be made (the pool's `create`
/// timeout): one made less than this after a change may have been aimed
/// before it.
pub(super) const CREATE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the monitor last said.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Primary(String, u16),
    NoPrimary,
    Unreachable,
}

/// One question's outcome.
enum Lookup {
    Primary(String, u16),
    /// The monitor's own error saying so (see `NO_PRIMARY_SQL`).
    NoPrimary(tokio_postgres::Error),
    Unreachable(String),
}

impl Lookup {
    fn answer(&self) -> Answer {
        match self {
            Lookup::Primary(h, p) => Answer::Primary(h.clone(), *p),
            Lookup::NoPrimary(_) => Answer::NoPrimary,
            Lookup::Unreachable(_) => Answer::Unreachable,
        }
    }
}

struct State {
    answer: Answer,
    asked_at: Option<Instant>,
    /// When the answer last changed, the monitor going silent aside (the
    /// connections made before stay good: they were aimed by the monitor).
    changed_at: Instant,
    /// An unreachable monitor was logged (once until it answers again).
    warned: bool,
}

pub(crate) struct Monitor {
    at: tokio_postgres::Config,
    tls: Option<MakeRustls>,
    state: Mutex<State>,
}

impl Monitor {
    /// The monitor `cluster` names, or None when it names none.
    pub(crate) fn from_config(cluster: &ClusterConfig) -> Result<Option<Arc<Self>>, StoreError> {
        let Some(db) = cluster.monitor_database() else {
            return Ok(None);
        };
        let mut at = super::pool::pg_config(&db);
        at.connect_timeout(ASK_TIMEOUT)
            .application_name("restaurant-system primary lookup");
        let tls = MakeRustls::from_config(&db)
            .map_err(|e| StoreError::new(Class::Permanent, format!("cluster.monitor TLS: {e}")))?;
        Ok(Some(Arc::new(Monitor {
            at,
            tls,
            state: Mutex::new(State {
                answer: Answer::Unreachable,
                asked_at: None,
                changed_at: Instant::now(),
                warned: false,
            }),
        })))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing in State can be left half-changed by a panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the monitor in the background every `POLL` while the pools live.
    pub(crate) fn watch(monitor: Weak<Self>) {
        tokio::spawn(async move {
            // One session kept open between questions: a new one every second
            // from every service of every box would load the small monitor box.
            let mut session: Option<tokio_postgres::Client> = None;
            loop {
                tokio::time::sleep(POLL).await;
                let Some(m) = monitor.upgrade() else { return };
                if session.as_ref().is_none_or(|c| c.is_closed()) {
                    session = match m.open().await {
                        Ok(c) => Some(c),
                        Err(why) => {
                            m.record(&Lookup::Unreachable(why));
                            continue;
                        }
                    };
                }
                let Some(client) = &session else { continue };
                let lookup = m.lookup(client).await;
                if matches!(lookup, Lookup::Unreachable(_)) {
                    session = None;
                }
                m.record(&lookup);
            }
        });
    }

    /// A session with the monitor, within `ASK_TIMEOUT`.
    async fn open(&self) -> Result<tokio_postgres::Client, String> {
        match tokio::time::timeout(ASK_TIMEOUT, connect_one(&self.at, self.tls.as_ref())).await {
            // The connection's task ends when the client is dropped.
            Ok(Ok((client, _connection))) => Ok(client),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {ASK_TIMEOUT:?}")),
        }
    }

    /// Asks once, on a session of its own.
    async fn ask(&self) -> Lookup {
        match self.open().await {
            Ok(client) => self.lookup(&client).await,
            Err(why) => Lookup::Unreachable(why),
        }
    }

    /// The monitor's answer on `client`, within `ASK_TIMEOUT`.
    async fn lookup(&self, client: &tokio_postgres::Client) -> Lookup {
        let asked = tokio::time::timeout(ASK_TIMEOUT, async {
            let (writable, failover): (&[&str], &[&str]) = (&WRITABLE_GOALS, &FAILOVER_GOALS);
            let rows = client.query(PRIMARY_SQL, &[&writable, &failover]).await?;
            Ok::<_, tokio_postgres::Error>(match rows.as_slice() {
                [one] => {
                    let host: String = one.try_get(0)?;
                    let port: i32 = one.try_get(1)?;
                    match u16::try_from(port) {
                        Ok(port) => Lookup::Primary(host, port),
                        Err(_) => Lookup::Unreachable(format!("node port {port}")),
                    }
                }
                // None, or two (never, by the monitor's rules): no node to
                // send writes to.
                _ => match client.batch_execute(NO_PRIMARY_SQL).await {
                    Err(e) if e.code().is_some() => Lookup::NoPrimary(e),
                    Err(e) => return Err(e),
                    Ok(()) => Lookup::Unreachable("the monitor raised nothing".into()),
                },
            })
        })
        .await;
        match asked {
            Ok(Ok(lookup)) => lookup,
            Ok(Err(e)) => Lookup::Unreachable(e.to_string()),
            Err(_) => Lookup::Unreachable(format!("no answer within {ASK_TIMEOUT:?}")),
        }
    }

    fn record(&self, lookup: &Lookup) {
        let answer = lookup.answer();
        let mut s = self.state();
        let now = Instant::now();
        s.asked_at = Some(now);
        if answer == s.answer {
            return;
        }
        match lookup {
            Lookup::Unreachable(why) => {
                if !s.warned {
                    s.warned = true;
                    tracing::warn!(action = "db_monitor_unreachable", error = %why, "pg_auto_failover's monitor does not answer; new connections go to the first writable host of database.url until it does");
                }
            }
            Lookup::Primary(host, port) => {
                tracing::info!(action = "db_primary", host = %host, port = *port, "pg_auto_failover's monitor names {host}:{port} the primary");
            }
            Lookup::NoPrimary(_) => {
                tracing::warn!(
                    action = "db_primary",
                    "pg_auto_failover's monitor names no primary (a failover in progress): no new database connection until it does"
                );
            }
        }
        if answer != Answer::Unreachable {
            if s.warned {
                s.warned = false;
                tracing::info!(
                    action = "db_monitor_reachable",
                    "pg_auto_failover's monitor answers again"
                );
            }
            s.changed_at = now;
        }
        s.answer = answer;
    }

    /// Whether a pooled connection made at `created` still goes where the
    /// monitor says: not while it names no primary, nor when it has named
    /// another (or named one again after a silence) since that connection
    /// began to be made.
    pub(crate) fn still_current(&self, created: Instant) -> bool {
        let s = self.state();
        s.answer != Answer::NoPrimary
            && created
                .checked_duration_since(s.changed_at)
                .is_some_and(|d| d > CREATE_TIMEOUT)
    }

    /// Connects to the node the monitor names the primary (`pg` with that one
    /// host); to `pg`'s hosts when the monitor does not answer.
    pub(crate) async fn connect(
        &self,
        pg: &tokio_postgres::Config,
        tls: Option<&MakeRustls>,
    ) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
        // A monitor found silent a moment ago is not waited for again by
        // every new connection.
        let silent = {
            let s = self.state();
            s.answer == Answer::Unreachable
                && s.asked_at.is_some_and(|t| t.elapsed() < POLL + ASK_TIMEOUT)
        };
        let lookup = if silent {
            Lookup::Unreachable(String::new())
        } else {
            let l = self.ask().await;
            self.record(&l);
            l
        };
        match lookup {
            Lookup::Primary(host, port) => connect_one(&one_host(pg, &host, port), tls).await,
            Lookup::NoPrimary(e) => Err(e),
            Lookup::Unreachable(_) => connect_one(pg, tls).await,
        }
    }
}

/// `pg` aimed at one host: everything else it says is kept (user, database,
/// password, options, timeouts, TLS), and the server must take writes.
fn one_host(pg: &tokio_postgres::Config, host: &str, port: u16) -> tokio_postgres::Config {
    let mut one = tokio_postgres::Config::new();
    if let Some(v) = pg.get_user() {
        one.user(v);
    }
    if let Some(v) = pg.get_password() {
        one.password(v);
    }
    if let Some(v) = pg.get_dbname() {
        one.dbname(v);
    }
    if let Some(v) = pg.get_options() {
        one.options(v);
    }
    if let Some(v) = pg.get_application_name() {
        one.application_name(v);
    }
    if let Some(v) = pg.get_connect_timeout() {
        one.connect_timeout(*v);
    }
    if let Some(v) = pg.get_tcp_user_timeout() {
        one.tcp_user_timeout(*v);
    }
    if let Some(v) = pg.get_keepalives_interval() {
        one.keepalives_interval(v);
    }
    if let Some(v) = pg.get_keepalives_retries() {
        one.keepalives_retries(v);
    }
    one.ssl_mode(pg.get_ssl_mode())
        .ssl_negotiation(pg.get_ssl_negotiation())
        .channel_binding(pg.get_channel_binding())
        .keepalives(pg.get_keepalives())
        .keepalives_idle(pg.get_keepalives_idle())
        .target_session_attrs(TargetSessionAttrs::ReadWrite)
        .host(host)
        .port(port);
    one
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_host_keeps_all_but_the_hosts() {
        let mut pg: tokio_postgres::Config =
            "postgres://u@a:5432,b:5433/db?target_session_attrs=read-write&sslmode=prefer"
                .parse()
                .expect("url");
        pg.password("pw")
            .options("-c synchronous_commit=off")
            .application_name("x")
            .connect_timeout(Duration::from_secs(5));
        let one = one_host(&pg, "b", 5433);
        assert_eq!(one.get_hosts().len(), 1);
        assert_eq!(one.get_ports(), &[5433]);
        assert_eq!(one.get_user(), Some("u"));
        assert_eq!(one.get_dbname(), Some("db"));
        assert_eq!(one.get_password(), Some(&b"pw"[..]));
        assert_eq!(one.get_options(), Some("-c synchronous_commit=off"));
        assert_eq!(one.get_application_name(), Some("x"));
        assert_eq!(one.get_connect_timeout(), Some(&Duration::from_secs(5)));
        assert_eq!(one.get_ssl_mode(), pg.get_ssl_mode());
        assert_eq!(
            one.get_target_session_attrs(),
            TargetSessionAttrs::ReadWrite
        );
    }
}
