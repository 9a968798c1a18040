//! Decimal fractions in integers: seconds on the command line and durations and sizes in
//! messages. Float parsing and formatting would add about 25 KiB to the device binary for
//! these few numbers.

use std::fmt;
use std::time::Duration;

/// `value / 10^places`, printed with exactly `places` decimals, rounded half up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fixed {
    /// Already scaled: 1234 with 2 places is "12.34".
    pub scaled: u64,
    pub places: u32,
}

impl Fixed {
    /// `num / den` with `places` decimals; a zero `den` gives 0.
    pub fn ratio(num: u64, den: u64, places: u32) -> Fixed {
        // In u64 (u128 division is 1.5 KB of the device binary): the whole part, then the
        // remainder scaled; when that overflows, `den` is large enough to scale down instead.
        let scale = 10u64.saturating_pow(places);
        let (Some(whole), Some(rem)) = (num.checked_div(den), num.checked_rem(den)) else {
            return Fixed { scaled: 0, places };
        };
        let frac = match rem.checked_mul(scale) {
            Some(r) => r.saturating_add(den / 2) / den,
            None => rem / (den / scale).max(1),
        };
        Fixed {
            scaled: whole.saturating_mul(scale).saturating_add(frac),
            places,
        }
    }
}

impl fmt::Display for Fixed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scale = 10u64.pow(self.places);
        let whole = self.scaled / scale;
        if self.places == 0 {
            return write!(f, "{whole}");
        }
        let frac = self.scaled % scale;
        write!(f, "{whole}.{frac:0width$}", width = self.places as usize)
    }
}

/// A duration in seconds with `places` decimals ("1.25").
pub fn secs(d: Duration, places: u32) -> Fixed {
    Fixed::ratio(micros(d), 1_000_000, places)
}

/// Whole microseconds of `d`, saturating (Duration's own count is a u128).
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Whole milliseconds of `d`, for messages (Duration's own count is a u128).
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Microseconds as milliseconds with one decimal ("12.3").
pub fn ms(us: u64) -> Fixed {
    Fixed::ratio(us, 1000, 1)
}

/// Seconds, decimals allowed ("2", "0.5", ".25", "3."); None for anything else (signs,
/// exponents, spaces). Digits beyond microseconds are dropped; at most an hour.
pub fn parse_seconds(s: &str) -> Option<Duration> {
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() && frac.is_empty() {
        return None;
    }
    if !whole
        .bytes()
        .chain(frac.bytes())
        .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    // Any number of leading digits is a valid (if silly) value: cap it instead of failing.
    let whole = whole.trim_start_matches('0');
    let secs: u64 = if whole.len() > 6 {
        u64::MAX
    } else {
        whole.parse().unwrap_or(0)
    };
    let mut micros: u32 = 0;
    for (i, b) in frac.bytes().take(6).enumerate() {
        micros += u32::from(b - b'0') * 10u32.pow(5 - i as u32);
    }
    let max = Duration::from_secs(3600);
    if secs >= 3600 {
        return Some(max);
    }
    Some((Duration::from_secs(secs) + Duration::from_micros(u64::from(micros))).min(max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_fixed_point() {
        assert_eq!(secs(Duration::from_millis(1234), 2).to_string(), "1.23");
        assert_eq!(secs(Duration::from_millis(1235), 2).to_string(), "1.24");
        assert_eq!(secs(Duration::from_micros(999_999), 1).to_string(), "1.0");
        assert_eq!(secs(Duration::from_millis(5), 2).to_string(), "0.01");
        assert_eq!(secs(Duration::ZERO, 2).to_string(), "0.00");
        assert_eq!(ms(12_345).to_string(), "12.3");
        assert_eq!(ms(999).to_string(), "1.0");
        assert_eq!(Fixed::ratio(3, 2, 0).to_string(), "2");
        assert_eq!(Fixed::ratio(1536, 1024, 1).to_string(), "1.5");
        assert_eq!(Fixed::ratio(1, 0, 1).to_string(), "0.0");
        assert_eq!(Fixed::ratio(u64::MAX, 1, 3).scaled, u64::MAX);
        assert_eq!(Fixed::ratio(u64::MAX, u64::MAX, 2).to_string(), "1.00");
        assert_eq!(Fixed::ratio(u64::MAX - 1, u64::MAX, 2).to_string(), "1.00");
        assert_eq!(Fixed::ratio(u64::MAX / 3, u64::MAX, 3).to_string(), "0.333");
        assert_eq!(Fixed::ratio(7, 1000, 2).to_string(), "0.01");
        assert_eq!(millis(Duration::from_micros(2999)), 2);
        assert_eq!(micros(Duration::from_nanos(2999)), 2);
        assert_eq!(micros(Duration::MAX), u64::MAX);
    }

    #[test]
    fn parses_decimal_seconds_only() {
        let ms = Duration::from_millis;
        assert_eq!(parse_seconds("2"), Some(ms(2000)));
        assert_eq!(parse_seconds("0.5"), Some(ms(500)));
        assert_eq!(parse_seconds(".25"), Some(ms(250)));
        assert_eq!(parse_seconds("3."), Some(ms(3000)));
        assert_eq!(parse_seconds("0.0000019"), Some(Duration::from_micros(1)));
        assert_eq!(parse_seconds("007"), Some(ms(7000)));
        assert_eq!(parse_seconds("99999999999999999999"), Some(ms(3_600_000)));
        assert_eq!(parse_seconds("3600.5"), Some(ms(3_600_000)));
        for bad in [
            "", ".", "-1", "+1", "1e3", "1.2.3", " 1", "inf", "NaN", "1,5", "0x10",
        ] {
            assert_eq!(parse_seconds(bad), None, "{bad:?}");
        }
    }
}
