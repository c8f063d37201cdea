//! The restaurant's business day (issue 26): which date an order belongs to.
//!
//! A day runs from `day_starts_at` in the restaurant's time zone to the same
//! wall-clock time the next day, so a late service that ends at 1:30 am with
//! the cut-over at 4 am belongs to the day it started. The seed's rule is the
//! default: UTC, 00:00.
//!
//! Each day starts at one instant, and those instants only move forward: when
//! a daylight-saving change repeats an hour that holds the cut-over, the day
//! starts at the first pass of it and the repeated hour stays in the new day;
//! when the change skips the cut-over, the day starts as the clocks jump
//! (jiff's "compatible" rule). So the business date never goes backwards
//! while real time moves forward, and the day's order numbers stay in order.
//!
//! Pure: the time zone is resolved by the caller (`process::config`), which
//! reads the system's time zone database.

use chrono::{DateTime, Datelike, NaiveDate, NaiveTime, Timelike, Utc};
use jiff::tz::TimeZone;

/// The rule that gives an instant its business date.
#[derive(Debug, Clone)]
pub struct BusinessDay {
    tz: TimeZone,
    starts_at: NaiveTime,
}

impl Default for BusinessDay {
    /// The seed's rule: UTC, 00:00.
    fn default() -> Self {
        BusinessDay::new(TimeZone::UTC, NaiveTime::MIN)
    }
}

impl BusinessDay {
    pub fn new(tz: TimeZone, starts_at: NaiveTime) -> Self {
        BusinessDay { tz, starts_at }
    }

    /// Parses `day_starts_at`: "HH:MM", 00:00 to 23:59.
    pub fn parse_start(s: &str) -> Result<NaiveTime, String> {
        let t = NaiveTime::parse_from_str(s.trim(), "%H:%M")
            .map_err(|_| format!("'{s}' is not a time of day as HH:MM (e.g. 04:00)"))?;
        Ok(t.with_second(0).unwrap_or(t))
    }

    /// The instant business day `day` starts.
    pub fn start(&self, day: NaiveDate) -> DateTime<Utc> {
        let civil = jiff::civil::DateTime::new(
            i16::try_from(day.year()).unwrap_or(i16::MAX),
            day.month() as i8,
            day.day() as i8,
            self.starts_at.hour() as i8,
            self.starts_at.minute() as i8,
            0,
            0,
        );
        // Out of jiff's range (years beyond 9999) the UTC wall time is the
        // nearest honest answer; no clock reaches it.
        let ts = civil
            .ok()
            .and_then(|c| self.tz.to_ambiguous_timestamp(c).compatible().ok())
            .map(|ts| ts.as_second());
        ts.and_then(|s| DateTime::from_timestamp(s, 0))
            .unwrap_or_else(|| day.and_time(self.starts_at).and_utc())
    }

    /// The business day `[start, end)` that `day` names.
    pub fn bounds(&self, day: NaiveDate) -> (DateTime<Utc>, DateTime<Utc>) {
        let next = day.succ_opt().unwrap_or(day);
        (self.start(day), self.start(next))
    }

    /// The business date of instant `now`: the day whose start is the last
    /// one at or before `now`.
    pub fn date(&self, now: DateTime<Utc>) -> NaiveDate {
        let local = jiff::Timestamp::from_second(now.timestamp())
            .map(|ts| ts.to_zoned(self.tz.clone()).datetime())
            .ok()
            .and_then(|d| {
                NaiveDate::from_ymd_opt(d.year().into(), d.month() as u32, d.day() as u32).and_then(
                    |date| date.and_hms_opt(d.hour() as u32, d.minute() as u32, d.second() as u32),
                )
            })
            .unwrap_or_else(|| now.naive_utc());
        // The wall clock minus the cut-over gives the date everywhere except
        // next to a daylight-saving change; the day starts decide there.
        let guess = (local - self.starts_at.signed_duration_since(NaiveTime::MIN)).date();
        if now < self.start(guess) {
            guess.pred_opt().unwrap_or(guess)
        } else if guess.succ_opt().is_some_and(|next| now >= self.start(next)) {
            guess.succ_opt().unwrap_or(guess)
        } else {
            guess
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    fn rule(tz: &str, start: &str) -> BusinessDay {
        BusinessDay::new(
            TimeZone::get(tz).expect("tz in the test database"),
            BusinessDay::parse_start(start).expect("start"),
        )
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    fn day(y: i32, mo: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, mo, d).unwrap()
    }

    /// `at` is where `r` starts `new_day`: a second earlier is still the day before.
    fn assert_cut_over(r: &BusinessDay, at: DateTime<Utc>, new_day: NaiveDate) {
        let before = new_day.pred_opt().expect("a day before");
        assert_eq!(r.date(at - chrono::Duration::seconds(1)), before);
        assert_eq!(r.date(at), new_day);
    }

    /// Business day `d` in New York with a 04:00 cut-over runs over `bounds`
    /// and lasts `hours`.
    fn assert_new_york_day(d: NaiveDate, bounds: (DateTime<Utc>, DateTime<Utc>), hours: i64) {
        let (s, e) = rule("America/New_York", "04:00").bounds(d);
        assert_eq!((s, e), bounds, "{d}");
        assert_eq!(e - s, chrono::Duration::hours(hours));
    }

    #[test]
    fn the_default_is_the_seeds_utc_midnight() {
        let r = BusinessDay::default();
        let (start, end) = r.bounds(day(2026, 12, 7));
        assert_eq!(
            (start, end),
            (utc(2026, 12, 7, 0, 0), utc(2026, 12, 8, 0, 0))
        );
        assert_cut_over(&r, start, day(2026, 12, 7));
        assert_eq!(r.date(utc(2026, 12, 7, 23, 59)), day(2026, 12, 7));
    }

    #[test]
    fn a_late_service_belongs_to_the_day_it_started() {
        // New York, cut-over 04:00 (EST = UTC-5 in December).
        let r = rule("America/New_York", "04:00");
        // 19:00 local on Dec 7 is midnight UTC: the seed's rule changed days here.
        assert_eq!(r.date(utc(2026, 12, 8, 0, 0)), day(2026, 12, 7));
        // 01:30 local on Dec 8: still the 7th's service.
        assert_eq!(r.date(utc(2026, 12, 8, 6, 30)), day(2026, 12, 7));
        // The cut-over: 03:59:59 local is the 7th, 04:00 the 8th.
        assert_cut_over(&r, utc(2026, 12, 8, 9, 0), day(2026, 12, 8));
        assert_eq!(
            r.bounds(day(2026, 12, 7)),
            (utc(2026, 12, 7, 9, 0), utc(2026, 12, 8, 9, 0))
        );
    }

    #[test]
    fn spring_forward_makes_a_23_hour_day() {
        // US DST starts 2026-03-08 at 02:00 EST -> 03:00 EDT.
        let bounds = (utc(2026, 3, 7, 9, 0), utc(2026, 3, 8, 8, 0)); // 04:00 EST, 04:00 EDT
        assert_new_york_day(day(2026, 3, 7), bounds, 23);
        let r = rule("America/New_York", "04:00");
        assert_eq!(r.date(utc(2026, 3, 8, 7, 59)), day(2026, 3, 7));
        assert_eq!(r.date(utc(2026, 3, 8, 8, 0)), day(2026, 3, 8));
    }

    #[test]
    fn a_cut_over_inside_the_skipped_hour_starts_as_the_clocks_jump() {
        // 02:30 does not exist on 2026-03-08 in New York.
        let r = rule("America/New_York", "02:30");
        let start = r.start(day(2026, 3, 8));
        // 02:30 EST would be 07:30 UTC = 03:30 EDT: after the jump, once.
        assert_eq!(start, utc(2026, 3, 8, 7, 30));
        assert_cut_over(&r, start, day(2026, 3, 8));
    }

    #[test]
    fn fall_back_makes_a_25_hour_day() {
        // US DST ends 2026-11-01 at 02:00 EDT -> 01:00 EST.
        let bounds = (utc(2026, 10, 31, 8, 0), utc(2026, 11, 1, 9, 0)); // 04:00 EDT, 04:00 EST
        assert_new_york_day(day(2026, 10, 31), bounds, 25);
    }

    #[test]
    fn a_cut_over_inside_the_repeated_hour_happens_once() {
        // 01:30 happens twice on 2026-11-01 in New York (05:30 and 06:30 UTC).
        let r = rule("America/New_York", "01:30");
        assert_eq!(r.start(day(2026, 11, 1)), utc(2026, 11, 1, 5, 30));
        assert_eq!(r.date(utc(2026, 11, 1, 5, 29)), day(2026, 10, 31));
        assert_eq!(r.date(utc(2026, 11, 1, 5, 30)), day(2026, 11, 1));
        // The repeated 01:00-01:59 (EST) stays in the new day: no step back.
        assert_eq!(r.date(utc(2026, 11, 1, 6, 0)), day(2026, 11, 1));
        assert_eq!(r.date(utc(2026, 11, 1, 6, 45)), day(2026, 11, 1));
    }

    #[test]
    fn the_date_never_goes_backwards_minute_by_minute() {
        // Through both 2026 US changes and a southern-hemisphere one, with
        // cut-overs on, inside and beside the changed hour.
        for (tz, from) in [
            ("America/New_York", utc(2026, 3, 7, 0, 0)),
            ("America/New_York", utc(2026, 10, 31, 0, 0)),
            ("Australia/Sydney", utc(2026, 4, 3, 0, 0)),
            ("Australia/Sydney", utc(2026, 10, 2, 0, 0)),
        ] {
            for start in ["00:00", "01:30", "02:00", "02:30", "03:00", "05:30"] {
                let r = rule(tz, start);
                let mut last = r.date(from);
                let mut changes = 0;
                for m in 1..(3 * 24 * 60) {
                    let now = from + chrono::Duration::minutes(m);
                    let d = r.date(now);
                    assert!(d >= last, "{tz} {start}: {now} went back to {d}");
                    if d != last {
                        changes += 1;
                        assert_eq!(r.start(d), now, "{tz} {start}: day {d} starts at its start");
                        assert_eq!(d, last.succ_opt().unwrap(), "{tz} {start}: no day skipped");
                    }
                    let (s, e) = r.bounds(d);
                    assert!(s <= now && now < e, "{tz} {start}: {now} outside {d}");
                    last = d;
                }
                assert!((2..=3).contains(&changes), "{tz} {start}: {changes}");
            }
        }
    }

    #[test]
    fn day_starts_at_is_hh_mm() {
        assert_eq!(
            BusinessDay::parse_start("05:30"),
            Ok(NaiveTime::from_hms_opt(5, 30, 0).unwrap())
        );
        for bad in ["24:00", "4", "4am", "", "05:30:10", "-1:00"] {
            assert!(BusinessDay::parse_start(bad).is_err(), "{bad}");
        }
    }
}
