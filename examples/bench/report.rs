//! The report: run-wide and per-backend results (serialised to JSON as they
//! are), the ratios to the limits, the targets of issue 7, and the Markdown
//! summary that is printed and appended to a file (bench/run.sh records it in
//! docs/BENCHMARKS.md with bench/record.sh).

use crate::limits::{AmqpLimit, TxLimit};
use crate::load::PhaseReport;
use crate::oha;
use crate::stats::{ratio, Latency};
use crate::system::{Machine, Result, Stopped};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub short: bool,
    pub step_seconds: f64,
    pub rates: Vec<u32>,
    pub burst: usize,
    pub burst_concurrency: usize,
    pub p99_limit_ms: f64,
    pub drain_timeout_s: f64,
    pub cooking_seconds: f64,
    pub log_level: &'static str,
    pub kitchen_prefetch: u16,
    /// Kitchen workers during the burst (the rate steps have one).
    pub burst_workers: u16,
    /// The mode under test: all (normally) or order-service (--intake-only).
    pub mode: &'static str,
    pub oha_rates: Vec<u32>,
}

#[derive(Debug, Serialize)]
pub struct SharedLimits {
    pub amqp: Option<AmqpLimit>,
    pub mqtt_hop: Option<TxLimit>,
    pub errors: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct StepReport {
    pub rate: u32,
    #[serde(flatten)]
    pub phase: PhaseReport,
    /// p99 under the limit and no errors.
    pub pass: bool,
    /// utime+stime of the daemon over the step and its drain, per 1,000 orders.
    pub cpu_s_per_1000: Option<f64>,
    /// CPU of this program (the load generator and observers) over the same window.
    pub bench_cpu_s: Option<f64>,
    pub e2e_mqtt: Option<Latency>,
    pub e2e_ready: Option<Latency>,
    pub mqtt_seen: usize,
    pub ready_seen: usize,
    pub drain_s: f64,
    pub drained: bool,
}

#[derive(Debug, Serialize)]
pub struct BurstReport {
    pub requested: usize,
    pub concurrency: usize,
    #[serde(flatten)]
    pub phase: PhaseReport,
    /// Orders shown `ready` on MQTT.
    pub ready: usize,
    /// Orders whose MQTT message the live subscriber saw.
    pub mqtt_live: Option<usize>,
    /// Orders a fresh QoS 0 subscriber found retained on the broker afterwards
    /// (what the broker holds).
    pub retained: Option<usize>,
    /// All retained order messages under the run's site (every order of the
    /// run is still open: `ready`), as a fresh QoS 0 subscriber gets them.
    pub retained_total: Option<usize>,
    /// The same at QoS 1 (how the display page subscribes): Mosquitto hands a
    /// new QoS 1 subscriber at most max_inflight_messages + max_queued_messages
    /// (20 + 1000 by default) retained messages at once and drops the rest.
    pub retained_qos1: Option<usize>,
    pub retained_note: Option<String>,
    /// From the first POST to the last `ready`.
    pub drain_s: f64,
    pub ready_per_s: f64,
}

/// The kitchen alone (issue 15's drain rate): orders queued first with no
/// kitchen running, then `workers` kitchen-worker processes drain them. The
/// rate runs from the first `cooking` to the last `ready` in the status log.
#[derive(Debug, Serialize)]
pub struct KitchenReport {
    pub orders: usize,
    pub workers: u16,
    pub prefetch: u16,
    /// The workers in one process (`--worker-name=a,b`), or each in its own.
    pub one_process: bool,
    pub ready: usize,
    pub drain_s: Option<f64>,
    pub ready_per_s: Option<f64>,
    pub note: Option<String>,
}

impl KitchenReport {
    pub fn layout(&self) -> String {
        if self.one_process {
            format!("{} workers in one process", self.workers)
        } else {
            format!("{} worker processes", self.workers)
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ModeReport {
    pub mode: String,
    pub ready_ms: Option<f64>,
    pub idle_rss_kb: Option<u64>,
    pub note: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct Ratios {
    /// Sustained orders/s over the bare transaction rate at 8 clients (PostgreSQL)
    /// or the library SQLite store one order at a time (SQLite).
    pub sustained_vs_db: Option<f64>,
    /// PostgreSQL: over pgbench with 1 client.
    pub sustained_vs_db_1client: Option<f64>,
    pub sustained_vs_amqp_pipelined: Option<f64>,
    /// POST p99 at 500/s over the bare transaction's p99 (1 client).
    pub p99_at_500_vs_db_p99: Option<f64>,
    /// POST -> MQTT p99 at 100/s over the sum of the hops' p99 (transaction,
    /// one confirmed publish, one MQTT hop).
    pub e2e_mqtt_p99_vs_hops: Option<f64>,
    /// SQLite: daemon CPU per order over the bare loop's CPU per order.
    pub cpu_vs_db_loop: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Target {
    pub target: String,
    pub goal: String,
    pub measured: String,
    pub met: Option<bool>,
    pub limited_by: String,
}

#[derive(Debug, Default, Serialize)]
pub struct BackendReport {
    pub backend: String,
    pub limit: Vec<TxLimit>,
    pub limit_error: Option<String>,
    /// Spawn of `--mode=all` on a fresh database to READY=1.
    pub ready_ms: Option<f64>,
    pub mqtt_bridge: bool,
    pub mqtt_note: Option<String>,
    pub warmup: Option<PhaseReport>,
    pub steps: Vec<StepReport>,
    pub sustained_rate: Option<u32>,
    /// The same load driven by oha, when installed.
    pub oha: Vec<oha::OhaRun>,
    pub oha_note: Option<String>,
    pub burst: Option<BurstReport>,
    /// The kitchen alone, its workers in one process, then one process each.
    pub kitchen: Vec<KitchenReport>,
    pub peak_rss_kb: Option<u64>,
    pub cpu_s_per_1000_orders: Option<f64>,
    pub orders_total: usize,
    /// PostgreSQL: transactions committed in the daemon's database (each
    /// autocommit statement counts one) per order, over the whole run.
    pub pg_commits_per_order: Option<f64>,
    /// PostgreSQL: rows inserted, updated and deleted per order.
    pub pg_rows_written_per_order: Option<f64>,
    pub stopped: Option<Stopped>,
    pub modes: Vec<ModeReport>,
    pub ratios: Ratios,
    pub targets: Vec<Target>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub date_utc: String,
    pub kind: &'static str,
    pub commit: Option<String>,
    pub note: Option<String>,
    pub machine: Machine,
    pub oha: Option<String>,
    pub settings: Settings,
    pub limits: SharedLimits,
    pub backends: Vec<BackendReport>,
    pub duration_s: f64,
}

// ---- ratios and targets --------------------------------------------------------

pub fn step(rep: &BackendReport, rate: u32) -> Option<&StepReport> {
    rep.steps.iter().find(|s| s.rate == rate)
}

pub fn p99(l: &Option<Latency>) -> Option<f64> {
    l.as_ref().map(|l| l.p99_ms)
}

/// The bare transaction rate the sustained rate is held against: pgbench at 8
/// clients, or the library SQLite store one order at a time.
fn db_limit(rep: &BackendReport) -> Option<&TxLimit> {
    rep.limit.iter().find(|l| l.clients == 8).or_else(|| {
        rep.limit
            .iter()
            .find(|l| rep.backend == "sqlite" && l.clients == 1)
    })
}

fn db_limit_1(rep: &BackendReport) -> Option<&TxLimit> {
    rep.limit.iter().find(|l| l.clients == 1)
}

pub fn ratios(rep: &BackendReport, shared: &SharedLimits) -> Ratios {
    // No rate passed: the sustained intake is zero, not unknown.
    let sustained = rep
        .sustained_rate
        .map(f64::from)
        .or((!rep.steps.is_empty()).then_some(0.0));
    let db_p99 = db_limit_1(rep).and_then(|l| p99(&l.latency));
    let hops = match (
        db_p99,
        shared
            .amqp
            .as_ref()
            .and_then(|a| p99(&a.one_by_one.latency)),
        shared.mqtt_hop.as_ref().and_then(|m| p99(&m.latency)),
    ) {
        (Some(a), Some(b), Some(c)) => Some(a + b + c),
        _ => None,
    };
    Ratios {
        sustained_vs_db: ratio(sustained, db_limit(rep).map(|l| l.per_second)),
        sustained_vs_db_1client: if rep.backend == "postgres" {
            ratio(sustained, db_limit_1(rep).map(|l| l.per_second))
        } else {
            None
        },
        sustained_vs_amqp_pipelined: ratio(
            sustained,
            shared.amqp.as_ref().map(|a| a.pipelined.per_second),
        ),
        p99_at_500_vs_db_p99: ratio(
            step(rep, 500).and_then(|s| p99(&s.phase.post_latency)),
            db_p99,
        ),
        e2e_mqtt_p99_vs_hops: ratio(step(rep, 100).and_then(|s| p99(&s.e2e_mqtt)), hops),
        cpu_vs_db_loop: ratio(
            rep.cpu_s_per_1000_orders,
            db_limit_1(rep).and_then(|l| l.cpu_s_per_1000),
        ),
    }
}

pub fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.digits$}"))
}

fn pct(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{:.0}%", v * 100.0))
}

pub fn targets(rep: &BackendReport, s: &Settings) -> Vec<Target> {
    let pg = rep.backend == "postgres";
    let mut t = Vec::new();
    let goal_p99 = if pg { 5.0 } else { 3.0 };
    let p = step(rep, 500).and_then(|s| p99(&s.phase.post_latency));
    let errs = step(rep, 500).map_or(0, |s| s.phase.errors.values().sum::<u64>());
    t.push(Target {
        target: "POST /orders p99 at 500 orders/s".into(),
        goal: format!("<= {goal_p99} ms"),
        measured: format!(
            "{} ms{}",
            fmt_opt(p, 2),
            if errs > 0 {
                format!(", {errs} errors")
            } else {
                String::new()
            }
        ),
        met: p.map(|p| p <= goal_p99 && errs == 0),
        limited_by: format!(
            "bare transaction p99 {} ms (1 client)",
            fmt_opt(db_limit_1(rep).and_then(|l| p99(&l.latency)), 2)
        ),
    });
    let lim = db_limit(rep).map(|l| l.per_second);
    t.push(Target {
        target: format!("sustained intake, p99 <= {} ms", s.p99_limit_ms),
        goal: format!(
            ">= 50% of the bare transaction rate ({} tx/s)",
            fmt_opt(lim, 0)
        ),
        measured: format!(
            "{} ({}){}",
            rep.sustained_rate
                .map_or("none (not even the lowest rate)".into(), |r| format!(
                    "{r} orders/s"
                )),
            pct(rep.ratios.sustained_vs_db),
            if rep.steps.last().is_some_and(|l| l.pass) && rep.sustained_rate.is_some() {
                " (highest rate offered)"
            } else {
                ""
            }
        ),
        met: rep.ratios.sustained_vs_db.map(|r| r >= 0.5),
        limited_by: if pg {
            "pgbench at 8 clients".into()
        } else {
            "SqliteStore::create_order, one order at a time".into()
        },
    });
    // Issue 15: relative to what its three hops cost in the same run (was: <= 20 ms).
    let e2e = step(rep, 100).and_then(|s| p99(&s.e2e_mqtt));
    let vs_hops = rep.ratios.e2e_mqtt_p99_vs_hops;
    t.push(Target {
        target: "POST -> retained MQTT p99 at 100 orders/s".into(),
        goal: "<= 2x the sum of the hops' p99".into(),
        measured: if rep.mqtt_bridge {
            format!(
                "{} ms ({}x the hops' sum)",
                fmt_opt(e2e, 2),
                fmt_opt(vs_hops, 1)
            )
        } else {
            "n/a (display bridge not available)".into()
        },
        met: if rep.mqtt_bridge {
            vs_hops.map(|r| r <= 2.0)
        } else {
            None
        },
        limited_by: "transaction + confirmed publish + one MQTT hop".into(),
    });
    if let Some(b) = &rep.burst {
        let mqtt_ok = b.retained.is_none_or(|r| r == b.requested);
        let ready_ok = s.mode != "all" || b.ready == b.requested;
        let ok = b.phase.ok == b.requested && ready_ok && mqtt_ok;
        t.push(Target {
            target: format!("burst of {} orders, nothing dropped", b.requested),
            goal: "all accepted, ready and retained".into(),
            measured: format!(
                "{} accepted, {} ready, {} retained",
                b.phase.ok,
                b.ready,
                b.retained.map_or("n/a".into(), |r| r.to_string()),
            ),
            // Without the bridge the MQTT half is unmeasured: n/a unless something else was lost.
            met: match (ok, rep.mqtt_bridge) {
                (false, _) => Some(false),
                (true, true) => Some(true),
                (true, false) => None,
            },
            limited_by: if rep.mqtt_bridge {
                "Mosquitto max_queued_messages per client".into()
            } else {
                "MQTT part n/a (display bridge not available)".into()
            },
        });
    }
    // Issue 15: the kitchen drains a queue at cooking time 0. The target is
    // held against the layout the box runs (one process, several workers);
    // the other layout is shown beside it.
    if let Some(k) = rep.kitchen.iter().find(|k| k.one_process) {
        let goal = if pg { 700.0 } else { 1000.0 };
        let others: Vec<String> = rep
            .kitchen
            .iter()
            .filter(|o| !o.one_process)
            .map(|o| format!("{}: {} ready/s", o.layout(), fmt_opt(o.ready_per_s, 0)))
            .collect();
        t.push(Target {
            target: format!(
                "kitchen drain, cooking 0, {} at prefetch {}",
                k.layout(),
                k.prefetch
            ),
            goal: format!(">= {goal:.0} ready/s"),
            measured: match k.ready_per_s {
                Some(r) => format!(
                    "{r:.0} ready/s ({} queued orders, first cooking to last ready){}",
                    k.orders,
                    if others.is_empty() {
                        String::new()
                    } else {
                        format!("; {}", others.join("; "))
                    }
                ),
                None => format!("n/a ({})", k.note.as_deref().unwrap_or("not measured")),
            },
            met: k.ready_per_s.map(|r| k.ready == k.orders && r >= goal),
            limited_by: "a worker's cycle (ack -> next delivery, cooking, ready's durable commit) \
                on 2 cores shared with RabbitMQ"
                .into(),
        });
    }
    let worst = rep
        .modes
        .iter()
        .filter_map(|m| m.idle_rss_kb.map(|k| (k, m.mode.as_str())))
        .max();
    let measured_modes = rep.modes.iter().filter(|m| m.idle_rss_kb.is_some()).count();
    t.push(Target {
        target: "idle RSS per mode process".into(),
        goal: "<= 20 MB".into(),
        measured: worst.map_or("n/a".into(), |(k, m)| {
            format!(
                "max {:.1} MB ({m}); {measured_modes} of {} modes measured",
                k as f64 / 1024.0,
                rep.modes.len()
            )
        }),
        met: worst.map(|(k, _)| k <= 20 * 1024),
        limited_by: "-".into(),
    });
    if !pg {
        let all = rep.ready_ms;
        let worst_mode = rep
            .modes
            .iter()
            .filter_map(|m| m.ready_ms)
            .fold(None, |a: Option<f64>, b| Some(a.map_or(b, |a| a.max(b))));
        let worst = match (all, worst_mode) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        t.push(Target {
            target: "start to READY on SQLite (NOTIFY_SOCKET)".into(),
            goal: "<= 300 ms".into(),
            measured: format!(
                "all (fresh file): {} ms; slowest single mode: {} ms",
                fmt_opt(all, 0),
                fmt_opt(worst_mode, 0)
            ),
            met: worst.map(|w| w <= 300.0),
            limited_by: "-".into(),
        });
    }
    t
}

// ---- the Markdown summary ----------------------------------------------------

fn lat_cells(l: &Option<Latency>) -> String {
    match l {
        Some(l) => format!(
            "{:.2} | {:.2} | {:.2} | {:.1}",
            l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms
        ),
        None => "n/a | n/a | n/a | n/a".into(),
    }
}

fn p50_p99(l: &Option<Latency>) -> String {
    l.as_ref().map_or("n/a".into(), |l| {
        format!("{:.1} / {:.1}", l.p50_ms, l.p99_ms)
    })
}

fn limit_line(l: &TxLimit) -> String {
    match &l.latency {
        Some(lat) => format!(
            "{}: **{:.0}/s** (p50 {:.2} ms, p99 {:.2} ms)",
            l.what, l.per_second, lat.p50_ms, lat.p99_ms
        ),
        None => format!("{}: **{:.0}/s**", l.what, l.per_second),
    }
}

pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(
        s,
        "### {} · {} run{}",
        r.date_utc,
        r.kind,
        r.commit
            .as_deref()
            .map_or(String::new(), |c| format!(" · commit {c}"))
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "Machine: {} cores, {:.1} GB memory, {} (kernel {}); load average {} at the start, {} at the end. \
         --mode={}, {} s per rate step, cooking time 0, log level {}, kitchen prefetch {}, run took {:.0} s.",
        m.cores,
        m.memory_mb as f64 / 1024.0,
        m.cpu_model,
        m.kernel,
        m.loadavg_start,
        m.loadavg_end,
        r.settings.mode,
        r.settings.step_seconds,
        r.settings.log_level,
        r.settings.kitchen_prefetch,
        r.duration_s
    );
    if let Some(n) = &r.note {
        let _ = writeln!(s, "\nNote: {n}");
    }
    let _ = writeln!(s, "\nLimits measured in this run:");
    if let Some(a) = &r.limits.amqp {
        let _ = writeln!(s, "- {}", limit_line(&a.pipelined));
        let _ = writeln!(s, "- {}", limit_line(&a.one_by_one));
    }
    if let Some(h) = &r.limits.mqtt_hop {
        let _ = writeln!(s, "- {}", limit_line(h));
    }
    for e in &r.limits.errors {
        let _ = writeln!(s, "- not measured: {e}");
    }
    for b in &r.backends {
        let name = if b.backend == "postgres" {
            "PostgreSQL"
        } else {
            "SQLite"
        };
        let _ = writeln!(s, "\n#### {name}\n");
        for l in &b.limit {
            let _ = writeln!(s, "- Limit: {}", limit_line(l));
        }
        if let Some(e) = &b.limit_error {
            let _ = writeln!(s, "- Limit not measured: {e}");
        }
        if let Some(e) = &b.error {
            let _ = writeln!(s, "- **Run failed**: {e}");
        }
        if let Some(n) = &b.mqtt_note {
            let _ = writeln!(s, "- POST -> MQTT: n/a. {n}");
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "| offered/s | ok | errors | p50 ms | p95 ms | p99 ms | max ms | CPU s/1k orders | POST->MQTT p50/p99 ms | POST->ready p50/p99 ms | drained | p99 <= {} ms |",
            r.settings.p99_limit_ms
        );
        let _ = writeln!(
            s,
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|"
        );
        for st in &b.steps {
            let errs: u64 = st.phase.errors.values().sum();
            let err_txt = if errs == 0 {
                "0".into()
            } else {
                format!(
                    "{errs} ({})",
                    st.phase
                        .errors
                        .iter()
                        .map(|(k, v)| format!("{k}: {v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                st.rate,
                st.phase.ok,
                err_txt,
                lat_cells(&st.phase.post_latency),
                fmt_opt(st.cpu_s_per_1000, 2),
                if b.mqtt_bridge {
                    p50_p99(&st.e2e_mqtt)
                } else {
                    "n/a".into()
                },
                p50_p99(&st.e2e_ready),
                if st.drained {
                    format!("{:.1} s", st.drain_s)
                } else {
                    format!("no ({}/{})", st.ready_seen, st.phase.ok)
                },
                if st.pass { "yes" } else { "**no**" }
            );
        }
        let _ = writeln!(s);
        let rt = &b.ratios;
        let _ = writeln!(
            s,
            "- Sustained intake with p99 <= {} ms: **{}**: {} of the bare transaction rate{}, {} of RabbitMQ pipelined publish.",
            r.settings.p99_limit_ms,
            b.sustained_rate.map_or("none (not even the lowest rate)".into(), |v| format!("{v} orders/s")),
            pct(rt.sustained_vs_db),
            if b.backend == "postgres" {
                format!(" at 8 clients ({} of 1 client)", pct(rt.sustained_vs_db_1client))
            } else {
                String::new()
            },
            pct(rt.sustained_vs_amqp_pipelined)
        );
        let _ = writeln!(
            s,
            "- POST p99 at 500/s: {} the bare transaction's p99; POST -> MQTT p99 at 100/s: {} the sum of the hops' p99.",
            rt.p99_at_500_vs_db_p99
                .map_or("n/a".into(), |v| format!("{v:.1}x")),
            rt.e2e_mqtt_p99_vs_hops
                .map_or("n/a".into(), |v| format!("{v:.1}x"))
        );
        if !b.oha.is_empty() {
            let _ = writeln!(
                s,
                "- Cross-check with oha (-q RATE --latency-correction, 50 connections, mixed orders): {}.",
                b.oha
                    .iter()
                    .map(|o| format!(
                        "{}/s: p50 {} / p95 {} / p99 {} / max {} ms, success {:.3} (ours at that rate: p50 {} / p99 {} ms)",
                        o.rate,
                        fmt_opt(o.p50_ms, 2),
                        fmt_opt(o.p95_ms, 2),
                        fmt_opt(o.p99_ms, 2),
                        fmt_opt(o.max_ms, 1),
                        o.success_rate,
                        fmt_opt(step(b, o.rate).and_then(|s| s.phase.post_latency.as_ref().map(|l| l.p50_ms)), 2),
                        fmt_opt(step(b, o.rate).and_then(|s| p99(&s.phase.post_latency)), 2),
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        } else if let Some(n) = &b.oha_note {
            let _ = writeln!(s, "- oha cross-check: {n}.");
        }
        if let Some(bu) = &b.burst {
            let _ = writeln!(
                s,
                "- Burst of {} orders ({} connections): {} accepted in {:.2} s (p99 {} ms), {} ready after {:.1} s ({:.0} ready/s, {} kitchen workers at prefetch {}), MQTT seen live {}, retained afterwards {}. The broker then held {} retained orders of this run; a display subscribing at QoS 1 got {} of them.",
                bu.requested,
                bu.concurrency,
                bu.phase.ok,
                bu.phase.elapsed_s,
                fmt_opt(p99(&bu.phase.post_latency), 1),
                bu.ready,
                bu.drain_s,
                bu.ready_per_s,
                r.settings.burst_workers,
                r.settings.kitchen_prefetch,
                bu.mqtt_live.map_or("n/a".into(), |v| v.to_string()),
                bu.retained.map_or("n/a".into(), |v| v.to_string()),
                bu.retained_total.map_or("n/a".into(), |v| v.to_string()),
                bu.retained_qos1.map_or("n/a".into(), |v| v.to_string()),
            );
        }
        for k in &b.kitchen {
            let _ = writeln!(
                s,
                "- The kitchen alone: {} orders queued with no kitchen running, then {} at prefetch {} (cooking 0; no notifier or bridge consuming): {} ready in {} s, {} ready/s (first cooking to last ready in the status log){}.",
                k.orders,
                k.layout(),
                k.prefetch,
                k.ready,
                fmt_opt(k.drain_s, 2),
                fmt_opt(k.ready_per_s, 0),
                k.note.as_deref().map_or(String::new(), |n| format!("; {n}")),
            );
        }
        let _ = writeln!(
            s,
            "- Peak RSS (VmHWM) of --mode={}: {}; CPU {} s per 1,000 orders over the whole load{}; start to READY (fresh database, migrations included) {} ms; stop {}.",
            r.settings.mode,
            b.peak_rss_kb
                .map_or("n/a".into(), |k| format!("{:.1} MB", k as f64 / 1024.0)),
            fmt_opt(b.cpu_s_per_1000_orders, 2),
            rt.cpu_vs_db_loop
                .map_or(String::new(), |v| format!(" ({v:.1}x the bare loop's)")),
            fmt_opt(b.ready_ms, 0),
            b.stopped.as_ref().map_or("n/a".into(), |st| format!(
                "{:.0} ms, exit {}",
                st.stop_ms,
                st.exit_code.map_or("killed".into(), |c| c.to_string())
            ))
        );
        if let (Some(c), Some(r)) = (b.pg_commits_per_order, b.pg_rows_written_per_order) {
            let _ = writeln!(
                s,
                "- PostgreSQL work per order (whole run, kitchen and relay included): {c:.1} transactions, {r:.1} rows written (the bare intake transaction: 1 and about 7)."
            );
        }
        if !b.modes.is_empty() {
            let _ = writeln!(
                s,
                "- Each mode alone: {}.",
                b.modes
                    .iter()
                    .map(|m| match (m.ready_ms, m.idle_rss_kb) {
                        (Some(r), Some(k)) => format!(
                            "{} READY {r:.0} ms, idle RSS {:.1} MB",
                            m.mode,
                            k as f64 / 1024.0
                        ),
                        _ => format!(
                            "{} n/a ({})",
                            m.mode,
                            m.note
                                .as_deref()
                                .unwrap_or("?")
                                .lines()
                                .next()
                                .unwrap_or("")
                                .chars()
                                .take(160)
                                .collect::<String>()
                        ),
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        let _ = writeln!(s, "\n| target ({name}) | goal | measured | met | limit |");
        let _ = writeln!(s, "|---|---|---|:---:|---|");
        for t in &b.targets {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                t.target,
                t.goal,
                t.measured,
                match t.met {
                    Some(true) => "met",
                    Some(false) => "**missed**",
                    None => "n/a",
                },
                t.limited_by
            );
        }
    }
    s
}

pub fn append_doc(doc: &Path, md: &str) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(doc)?;
    write!(f, "\n{md}")?;
    Ok(())
}
