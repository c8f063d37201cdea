//! Speed of service (issue 13): how long tickets take from received to ready
//! (the kitchen's time) and from ready to completed (the hand-off), overall, per
//! order type and per worker. Pure: storage supplies one `TicketTimes` per order.
//!
//! Percentiles are nearest-rank: p of n sorted samples is the sample at rank
//! ceil(p/100 * n). It is always a time some ticket actually took, and a
//! manager can check it by hand.

use super::business_day::BusinessDay;
use super::field_error::FieldError;
use super::order::OrderType;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde::Serialize;
use std::collections::BTreeMap;

/// The longest range a report covers: keeps one request from scanning years.
pub const MAX_RANGE_DAYS: i64 = 366;

/// The times of one order, from its status log.
#[derive(Debug, Clone, PartialEq)]
pub struct TicketTimes {
    pub order_type: OrderType,
    /// The worker that cooked it (`processed_by`), if one did.
    pub worker: Option<String>,
    pub received_at: DateTime<Utc>,
    /// The first time it became ready (a recall does not restart the clock).
    pub ready_at: Option<DateTime<Utc>>,
    /// The first time it was completed (bumped) after being ready.
    pub completed_at: Option<DateTime<Utc>>,
}

/// Count, mean and percentiles of one duration, in seconds (millisecond precision).
/// `None` when there are no samples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    pub count: usize,
    pub avg_seconds: Option<f64>,
    pub p50_seconds: Option<f64>,
    pub p90_seconds: Option<f64>,
}

/// One group of orders (all, one order type or one worker).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Group {
    /// Orders received in the range that belong to the group.
    pub orders: usize,
    pub received_to_ready: Stats,
    pub ready_to_completed: Stats,
}

/// `GET /reports/speed-of-service`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub from: String,
    pub to: String,
    pub overall: Group,
    /// Always the three order types, empty ones included.
    pub by_order_type: BTreeMap<String, Group>,
    /// Workers that cooked at least one order in the range.
    pub by_worker: BTreeMap<String, Group>,
}

/// Nearest-rank percentile of sorted samples; `None` for none.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn millis(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub fn stats(samples: &[f64]) -> Stats {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let avg = (!sorted.is_empty()).then(|| sorted.iter().sum::<f64>() / sorted.len() as f64);
    Stats {
        count: sorted.len(),
        avg_seconds: avg.map(millis),
        p50_seconds: percentile(&sorted, 50.0).map(millis),
        p90_seconds: percentile(&sorted, 90.0).map(millis),
    }
}

/// Seconds from `a` to `b`; a clock step backwards counts as zero, not negative.
fn seconds(a: DateTime<Utc>, b: DateTime<Utc>) -> f64 {
    ((b - a).num_milliseconds().max(0)) as f64 / 1000.0
}

fn group<'a>(tickets: impl Iterator<Item = &'a TicketTimes>) -> Group {
    let mut orders = 0;
    let mut cook = Vec::new();
    let mut handoff = Vec::new();
    for t in tickets {
        orders += 1;
        if let Some(ready) = t.ready_at {
            cook.push(seconds(t.received_at, ready));
            if let Some(done) = t.completed_at {
                handoff.push(seconds(ready, done));
            }
        }
    }
    Group {
        orders,
        received_to_ready: stats(&cook),
        ready_to_completed: stats(&handoff),
    }
}

pub fn report(from: DateTime<Utc>, to: DateTime<Utc>, tickets: &[TicketTimes]) -> Report {
    let by_order_type = OrderType::ALL
        .into_iter()
        .map(|ty| {
            let g = group(tickets.iter().filter(|t| t.order_type == ty));
            (ty.as_str().to_string(), g)
        })
        .collect();
    let mut workers: Vec<&str> = tickets.iter().filter_map(|t| t.worker.as_deref()).collect();
    workers.sort_unstable();
    workers.dedup();
    let by_worker = workers
        .into_iter()
        .map(|w| {
            let g = group(tickets.iter().filter(|t| t.worker.as_deref() == Some(w)));
            (w.to_string(), g)
        })
        .collect();
    Report {
        from: from.to_rfc3339_opts(SecondsFormat::Millis, true),
        to: to.to_rfc3339_opts(SecondsFormat::Millis, true),
        overall: group(tickets.iter()),
        by_order_type,
        by_worker,
    }
}

/// One end of the range: an RFC 3339 time, or a date (`2026-11-25`): that
/// business day (`domain::business_day`; UTC midnight to midnight by default).
/// A date as `to` means the end of that day, so `from=D&to=D` is the whole day D.
fn parse_bound(
    field: &str,
    s: &str,
    end: bool,
    days: &BusinessDay,
) -> Result<DateTime<Utc>, FieldError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        let (start, next) = days.bounds(d);
        return Ok(if end { next } else { start });
    }
    Err(FieldError::new(
        field,
        "must be an RFC 3339 time (2026-11-25T10:30:00Z) or a date (2026-11-25)",
    ))
}

/// The report's range `[from, to)`. Missing bounds default to the current
/// business day: `from` to its start, `to` to the next day's start.
pub fn parse_range(
    from: Option<&str>,
    to: Option<&str>,
    now: DateTime<Utc>,
    days: &BusinessDay,
) -> Result<(DateTime<Utc>, DateTime<Utc>), Vec<FieldError>> {
    let (start, next) = days.bounds(days.date(now));
    let mut errors = Vec::new();
    let from = match from {
        Some(s) => parse_bound("from", s, false, days)
            .map_err(|e| errors.push(e))
            .ok(),
        None => Some(start),
    };
    let to = match to {
        Some(s) => parse_bound("to", s, true, days)
            .map_err(|e| errors.push(e))
            .ok(),
        None => Some(next),
    };
    if let (Some(f), Some(t)) = (from, to) {
        if f >= t {
            errors.push(FieldError::new("to", "must be after from"));
        } else if t - f > chrono::Duration::days(MAX_RANGE_DAYS) {
            errors.push(FieldError::new(
                "to",
                format!("the range must be at most {MAX_RANGE_DAYS} days"),
            ));
        }
    }
    match (from, to) {
        (Some(f), Some(t)) if errors.is_empty() => Ok((f, t)),
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap()
    }

    fn ticket(
        ty: OrderType,
        w: Option<&str>,
        cook: Option<i64>,
        handoff: Option<i64>,
    ) -> TicketTimes {
        let ready = cook.map(at);
        TicketTimes {
            order_type: ty,
            worker: w.map(str::to_string),
            received_at: at(0),
            ready_at: ready,
            completed_at: ready.and(handoff.map(|h| at(cook.unwrap_or(0) + h))),
        }
    }

    #[test]
    fn nearest_rank_percentiles() {
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&ten, 50.0), Some(5.0));
        assert_eq!(percentile(&ten, 90.0), Some(9.0));
        assert_eq!(percentile(&ten, 100.0), Some(10.0));
        assert_eq!(percentile(&ten, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 50.0), Some(7.0));
        assert_eq!(percentile(&[7.0], 90.0), Some(7.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn stats_sort_and_round() {
        let s = stats(&[3.0, 1.0, 2.0, 100.0]);
        assert_eq!(s.count, 4);
        assert_eq!(s.avg_seconds, Some(26.5));
        assert_eq!(s.p50_seconds, Some(2.0));
        assert_eq!(s.p90_seconds, Some(100.0));
        assert_eq!(stats(&[1.0, 2.0, 2.0]).avg_seconds, Some(1.667));
        let empty = stats(&[]);
        assert_eq!(
            (empty.count, empty.avg_seconds, empty.p90_seconds),
            (0, None, None)
        );
    }

    #[test]
    fn report_groups_by_type_and_worker() {
        use OrderType::*;
        let tickets = [
            ticket(DineIn, Some("mario"), Some(600), Some(60)),
            ticket(DineIn, Some("luigi"), Some(300), None),
            ticket(Takeout, Some("mario"), Some(120), Some(30)),
            ticket(Delivery, None, None, None), // waiting: counted, no times
        ];
        let r = report(at(0), at(86_400), &tickets);
        assert_eq!(r.overall.orders, 4);
        assert_eq!(r.overall.received_to_ready.count, 3);
        assert_eq!(r.overall.received_to_ready.avg_seconds, Some(340.0));
        assert_eq!(r.overall.received_to_ready.p50_seconds, Some(300.0));
        assert_eq!(r.overall.received_to_ready.p90_seconds, Some(600.0));
        assert_eq!(r.overall.ready_to_completed.count, 2);
        assert_eq!(r.overall.ready_to_completed.avg_seconds, Some(45.0));
        assert_eq!(r.by_order_type.len(), 3);
        assert_eq!(r.by_order_type["dine_in"].received_to_ready.count, 2);
        assert_eq!(r.by_order_type["delivery"].orders, 1);
        assert_eq!(r.by_order_type["delivery"].received_to_ready.count, 0);
        assert_eq!(r.by_worker.keys().collect::<Vec<_>>(), ["luigi", "mario"]);
        assert_eq!(
            r.by_worker["mario"].received_to_ready.avg_seconds,
            Some(360.0)
        );
        assert_eq!(r.by_worker["luigi"].ready_to_completed.count, 0);
        assert_eq!(r.from, "2027-01-15T08:00:00.000Z");
        let v = serde_json::to_value(&r).unwrap();
        assert!(v["by_order_type"]["takeout"]["ready_to_completed"]["p90_seconds"].is_number());
        assert!(v["by_order_type"]["delivery"]["received_to_ready"]["avg_seconds"].is_null());
    }

    #[test]
    fn a_clock_step_back_is_zero_not_negative() {
        let mut t = ticket(OrderType::Takeout, None, Some(10), None);
        t.ready_at = Some(at(-5));
        assert_eq!(
            report(at(0), at(1), &[t])
                .overall
                .received_to_ready
                .avg_seconds,
            Some(0.0)
        );
    }

    #[test]
    fn range_defaults_to_today_utc() {
        let utc = BusinessDay::default();
        let now = Utc.with_ymd_and_hms(2026, 11, 25, 15, 4, 5).unwrap();
        let (f, t) = parse_range(None, None, now, &utc).unwrap();
        assert_eq!(f, Utc.with_ymd_and_hms(2026, 11, 25, 0, 0, 0).unwrap());
        assert_eq!(t, Utc.with_ymd_and_hms(2026, 11, 26, 0, 0, 0).unwrap());
        let (f, t) = parse_range(Some("2026-11-20"), Some("2026-11-20"), now, &utc).unwrap();
        assert_eq!(t - f, chrono::Duration::days(1));
        let (f, t) = parse_range(
            Some("2026-11-25T14:00:00+01:00"),
            Some("2026-11-25T14:30:00Z"),
            now,
            &utc,
        )
        .unwrap();
        assert_eq!(f, Utc.with_ymd_and_hms(2026, 11, 25, 13, 0, 0).unwrap());
        assert_eq!(t - f, chrono::Duration::minutes(90));
        let (_, t) = parse_range(Some("2026-11-25T14:00:00Z"), None, now, &utc).unwrap();
        assert_eq!(t, Utc.with_ymd_and_hms(2026, 11, 26, 0, 0, 0).unwrap());
    }

    #[test]
    fn range_defaults_to_the_current_business_day() {
        // New York, cut-over 04:00: at 01:30 local on Nov 26 (06:30 UTC) the
        // business day is still Nov 25, 04:00 EST (09:00 UTC) to 04:00 on the 26th.
        let ny = BusinessDay::new(
            jiff::tz::TimeZone::get("America/New_York").expect("tz"),
            BusinessDay::parse_start("04:00").expect("start"),
        );
        let now = Utc.with_ymd_and_hms(2026, 11, 26, 6, 30, 0).unwrap();
        let (f, t) = parse_range(None, None, now, &ny).unwrap();
        assert_eq!(f, Utc.with_ymd_and_hms(2026, 11, 25, 9, 0, 0).unwrap());
        assert_eq!(t, Utc.with_ymd_and_hms(2026, 11, 26, 9, 0, 0).unwrap());
        // A date names that business day too.
        let (f, t) = parse_range(Some("2026-11-20"), Some("2026-11-20"), now, &ny).unwrap();
        assert_eq!(f, Utc.with_ymd_and_hms(2026, 11, 20, 9, 0, 0).unwrap());
        assert_eq!(t, Utc.with_ymd_and_hms(2026, 11, 21, 9, 0, 0).unwrap());
    }

    #[test]
    fn bad_ranges_name_the_field() {
        let now = Utc.with_ymd_and_hms(2026, 11, 25, 15, 4, 5).unwrap();
        let fields = |f: Option<&str>, t: Option<&str>| -> Vec<String> {
            parse_range(f, t, now, &BusinessDay::default())
                .unwrap_err()
                .into_iter()
                .map(|e| e.field)
                .collect()
        };
        assert_eq!(fields(Some("yesterday"), None), ["from"]);
        assert_eq!(fields(Some("x"), Some("2026-13-01")), ["from", "to"]);
        assert_eq!(fields(Some("2026-11-25"), Some("2026-11-24")), ["to"]);
        assert_eq!(
            fields(Some("2026-11-25T10:00:00Z"), Some("2026-11-25T10:00:00Z")),
            ["to"]
        );
        assert_eq!(fields(Some("2020-01-01"), Some("2026-01-01")), ["to"]);
        assert_eq!(fields(Some(""), None), ["from"]);
    }
}
