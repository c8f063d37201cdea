//! A clock that is not yet right (issue 26).
//!
//! A box without a battery-backed clock can boot with a clock in the past
//! until NTP (or a person) sets it, and many kitchens have no internet, so
//! waiting for NTP cannot be the rule. What we know for sure is a floor: the
//! clock cannot be earlier than the newest change already stored, nor than the
//! moment this program was built. While it is, orders would get the wrong
//! business date and times earlier than their predecessors, so the order
//! service refuses them (503) until the clock passes the floor again.
//!
//! Pure: the floor is read from the store and the build by the caller.

use chrono::{DateTime, Utc};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

/// The earliest instant the clock may read: raised by every change stored.
#[derive(Debug)]
pub struct ClockFloor {
    floor_ms: AtomicI64,
    behind: AtomicBool,
}

/// The clock reads `now`, earlier than `floor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Behind {
    pub now: DateTime<Utc>,
    pub floor: DateTime<Utc>,
}

impl Behind {
    /// The reason given to a caller, /health and the journal.
    pub fn reason(&self) -> String {
        format!(
            "the clock is not right yet: it reads {}, earlier than the newest stored change ({}); orders are refused until it is set",
            self.now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            self.floor.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    }
}

/// What a check found, and whether that differs from the previous check (so
/// the journal says it once per episode, not once per request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub behind: Option<Behind>,
    pub changed: bool,
}

impl ClockFloor {
    pub fn new(floor: DateTime<Utc>) -> Self {
        ClockFloor {
            floor_ms: AtomicI64::new(floor.timestamp_millis()),
            behind: AtomicBool::new(false),
        }
    }

    pub fn floor(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.floor_ms.load(Ordering::Acquire)).unwrap_or_default()
    }

    /// A change was stored at `at`: the clock may never read earlier again.
    pub fn raise(&self, at: DateTime<Utc>) {
        self.floor_ms
            .fetch_max(at.timestamp_millis(), Ordering::AcqRel);
    }

    /// Whether `now` is at or past the floor.
    pub fn check(&self, now: DateTime<Utc>) -> Verdict {
        let floor = self.floor();
        let behind = (now < floor).then_some(Behind { now, floor });
        let was = self.behind.swap(behind.is_some(), Ordering::AcqRel);
        Verdict {
            behind,
            changed: was != behind.is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 7, h, 0, 0).unwrap()
    }

    #[test]
    fn behind_until_the_clock_passes_the_floor_said_once_each_way() {
        let f = ClockFloor::new(t(12));
        let v = f.check(t(9));
        assert_eq!(
            v,
            Verdict {
                behind: Some(Behind {
                    now: t(9),
                    floor: t(12)
                }),
                changed: true
            }
        );
        assert!(v.behind.unwrap().reason().contains("2026-12-07T09:00:00Z"));
        assert!(!f.check(t(10)).changed);
        // Equal is right: a change stored this very millisecond.
        assert_eq!(
            f.check(t(12)),
            Verdict {
                behind: None,
                changed: true
            }
        );
        assert!(!f.check(t(13)).changed);
    }

    #[test]
    fn the_floor_only_rises() {
        let f = ClockFloor::new(t(12));
        f.raise(t(14));
        f.raise(t(13));
        assert_eq!(f.floor(), t(14));
        assert!(f.check(t(13)).behind.is_some());
    }
}
