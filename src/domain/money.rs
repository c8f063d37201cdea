//! Money as integer cents. Prices arrive as JSON numbers (15.99); we convert once,
//! at the edge, and never sum floats.

use serde::{Serialize, Serializer};
use std::fmt;

/// An amount of money in cents. Serialises as a JSON number with two decimals
/// (4097 -> 40.97), which is what the spec's API and messages carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Cents(pub i64);

impl Cents {
    /// Converts a JSON number like 15.99 to cents. Returns `None` when the value
    /// has more than two decimal places or is not finite.
    pub fn from_decimal(value: f64) -> Option<Cents> {
        if !value.is_finite() || value.abs() > 1e12 {
            return None;
        }
        let scaled = value * 100.0;
        let rounded = scaled.round();
        // 15.99 * 100 is 1598.9999999999998 in binary floating point: allow that
        // noise, but reject a real third decimal such as 15.999.
        if (scaled - rounded).abs() > 1e-6 {
            return None;
        }
        Some(Cents(rounded as i64))
    }

    pub fn as_f64(self) -> f64 {
        self.0 as f64 / 100.0
    }
}

impl fmt::Display for Cents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        write!(f, "{sign}{}.{:02}", self.0.abs() / 100, self.0.abs() % 100)
    }
}

impl Serialize for Cents {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // An f64 built from whole cents prints with the shortest round-trip
        // representation, so 4097 becomes 40.97, never 40.970000001.
        s.serialize_f64(self.as_f64())
    }
}

impl<'de> serde::Deserialize<'de> for Cents {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        Cents::from_decimal(v)
            .ok_or_else(|| serde::de::Error::custom("amount must have at most two decimals"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_two_decimals_exactly() {
        assert_eq!(Cents::from_decimal(15.99), Some(Cents(1599)));
        assert_eq!(Cents::from_decimal(0.01), Some(Cents(1)));
        assert_eq!(Cents::from_decimal(999.99), Some(Cents(99999)));
        assert_eq!(Cents::from_decimal(8.0), Some(Cents(800)));
    }

    #[test]
    fn rejects_third_decimal_and_non_finite() {
        assert_eq!(Cents::from_decimal(15.999), None);
        assert_eq!(Cents::from_decimal(f64::NAN), None);
        assert_eq!(Cents::from_decimal(f64::INFINITY), None);
    }

    #[test]
    fn serialises_without_float_noise() {
        let total = Cents(1599 * 2 + 899);
        assert_eq!(serde_json::to_string(&total).unwrap(), "40.97");
        assert_eq!(serde_json::to_string(&Cents(11193)).unwrap(), "111.93");
        assert_eq!(serde_json::to_string(&Cents(2000)).unwrap(), "20.0");
        assert_eq!(total.to_string(), "40.97");
    }
}
