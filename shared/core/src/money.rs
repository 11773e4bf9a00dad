//! Money as integer micro-dollars: no floating point ever touches a balance.

use std::fmt;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Sub};

use serde::{Deserialize, Serialize};

/// An amount of US dollars in millionths (1 USD = 1_000_000).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct MicroUsd(pub i64);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "`{0}` is not a dollar amount (expected e.g. `3`, `0.30` or `12.500001`, at most 6 decimals)"
)]
pub struct MoneyParseError(pub String);

impl MicroUsd {
    pub const ZERO: MicroUsd = MicroUsd(0);

    pub const fn from_micros(micros: i64) -> Self {
        MicroUsd(micros)
    }

    pub const fn micros(self) -> i64 {
        self.0
    }

    /// Parses a decimal dollar amount exactly (`"3.75"` → 3_750_000).
    pub fn parse_usd(text: &str) -> Result<Self, MoneyParseError> {
        let err = || MoneyParseError(text.to_string());
        let t = text.trim().trim_start_matches('$');
        let (neg, t) = match t.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, t),
        };
        let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
        if whole.is_empty() && frac.is_empty() {
            return Err(err());
        }
        if frac.len() > 6
            || !whole
                .chars()
                .chain(frac.chars())
                .all(|c| c.is_ascii_digit())
        {
            return Err(err());
        }
        let whole: i64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| err())?
        };
        let frac_micros: i64 = format!("{frac:0<6}").parse().map_err(|_| err())?;
        let v = whole
            .checked_mul(1_000_000)
            .and_then(|w| w.checked_add(frac_micros))
            .ok_or_else(err)?;
        Ok(MicroUsd(if neg { -v } else { v }))
    }

    /// For display and reports only; never for arithmetic on balances.
    pub fn as_usd_f64(self) -> f64 {
        self.0 as f64 / 1_000_000.0
    }

    pub fn saturating_sub(self, other: MicroUsd) -> MicroUsd {
        MicroUsd(self.0.saturating_sub(other.0))
    }
}

impl fmt::Display for MicroUsd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let a = self.0.unsigned_abs();
        write!(f, "{sign}${}.{:06}", a / 1_000_000, a % 1_000_000)
    }
}

impl Add for MicroUsd {
    type Output = MicroUsd;
    fn add(self, rhs: MicroUsd) -> MicroUsd {
        MicroUsd(self.0.saturating_add(rhs.0))
    }
}

impl Sub for MicroUsd {
    type Output = MicroUsd;
    fn sub(self, rhs: MicroUsd) -> MicroUsd {
        MicroUsd(self.0.saturating_sub(rhs.0))
    }
}

impl AddAssign for MicroUsd {
    fn add_assign(&mut self, rhs: MicroUsd) {
        *self = *self + rhs;
    }
}

impl Sum for MicroUsd {
    fn sum<I: Iterator<Item = MicroUsd>>(iter: I) -> MicroUsd {
        iter.fold(MicroUsd::ZERO, Add::add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dollar_amounts_exactly() {
        assert_eq!(MicroUsd::parse_usd("3.75"), Ok(MicroUsd(3_750_000)));
        assert_eq!(MicroUsd::parse_usd("0.30"), Ok(MicroUsd(300_000)));
        assert_eq!(MicroUsd::parse_usd("$12"), Ok(MicroUsd(12_000_000)));
        assert_eq!(MicroUsd::parse_usd(".000001"), Ok(MicroUsd(1)));
        assert!(MicroUsd::parse_usd("0.0000001").is_err());
        assert!(MicroUsd::parse_usd("1e3").is_err());
        assert!(MicroUsd::parse_usd("").is_err());
    }

    #[test]
    fn displays_as_dollars_with_six_decimals() {
        assert_eq!(MicroUsd(1_234_567).to_string(), "$1.234567");
        assert_eq!(MicroUsd(-5).to_string(), "-$0.000005");
    }
}
