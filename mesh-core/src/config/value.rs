//! Parsers for the one format each kind of value has everywhere: durations `250ms`,
//! percentages `20%`, counts, sizes `64KiB`, comma-separated lists.
//!
//! Each returns `Err(expected)`, a phrase saying what a valid value looks like; the
//! caller adds the variable's name and the value.

use std::time::Duration;

/// What a duration looks like, for error messages.
pub const DURATION: &str = "a duration such as 250ms, 10s or 1m";
/// What an optional duration looks like, for error messages.
pub const OPTIONAL_DURATION: &str = "a duration such as 250ms, 10s or 1m, or `off`";

/// `250ms`, `1.5s`, `10s`, `1m`, `1h`, `500us`, or `0`.
pub fn duration(s: &str) -> Result<Duration, &'static str> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or(DURATION)?;
    let (number, unit) = s.split_at(split);
    let number: f64 = number.parse().map_err(|_| DURATION)?;
    let seconds = match unit {
        "us" | "µs" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(DURATION),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| DURATION)
}

/// A duration longer than zero.
pub fn positive_duration(s: &str) -> Result<Duration, &'static str> {
    const EXPECTED: &str = "a duration longer than zero, such as 250ms, 10s or 1m";
    match duration(s) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(EXPECTED),
    }
}

/// A duration, or `off` for none.
pub fn optional_duration(s: &str) -> Result<Option<Duration>, &'static str> {
    match s.trim() {
        "off" | "none" => Ok(None),
        other => duration(other).map(Some).map_err(|_| OPTIONAL_DURATION),
    }
}

/// `20%` → 0.2, between 0% and 100%.
pub fn percent(s: &str) -> Result<f64, &'static str> {
    const EXPECTED: &str = "a percentage between 0% and 100%, such as 20%";
    let number = s.trim().strip_suffix('%').ok_or(EXPECTED)?;
    let value: f64 = number.trim().parse().map_err(|_| EXPECTED)?;
    if !(0.0..=100.0).contains(&value) {
        return Err(EXPECTED);
    }
    Ok(value / 100.0)
}

/// An `ip:port` socket address, or `off` for none.
pub fn optional_socket_addr(s: &str) -> Result<Option<std::net::SocketAddr>, &'static str> {
    match s.trim() {
        "off" | "" => Ok(None),
        other => other
            .parse()
            .map(Some)
            .map_err(|_| "an ip:port address such as 0.0.0.0:9090, or `off`"),
    }
}

/// A positive whole number.
pub fn positive_count(s: &str) -> Result<usize, &'static str> {
    const EXPECTED: &str = "a whole number of at least 1";
    match s.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(EXPECTED),
    }
}

/// A whole number, zero included.
pub fn count(s: &str) -> Result<u32, &'static str> {
    s.trim()
        .parse::<u32>()
        .map_err(|_| "a whole number (0 or more)")
}

/// A positive whole number, or `unlimited`.
pub fn optional_limit(s: &str) -> Result<Option<usize>, &'static str> {
    match s.trim() {
        "unlimited" => Ok(None),
        other => positive_count(other)
            .map(Some)
            .map_err(|_| "a whole number of at least 1, or `unlimited`"),
    }
}

/// `64KiB`, `1MiB`, `512B` or a plain number of bytes.
pub fn size(s: &str) -> Result<u64, &'static str> {
    const EXPECTED: &str = "a size such as 512B, 64KiB or 1MiB";
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: u64 = number.parse().map_err(|_| EXPECTED)?;
    let factor = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(EXPECTED),
    };
    number.checked_mul(factor).ok_or(EXPECTED)
}

/// Comma-separated items, trimmed, empty items dropped.
pub fn list(s: &str) -> Vec<&str> {
    s.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .collect()
}

/// A positive whole number, or `off` for none.
pub fn optional_positive(s: &str) -> Result<Option<u32>, &'static str> {
    const EXPECTED: &str = "a whole number of at least 1, or `off`";
    match s.trim() {
        "off" => Ok(None),
        other => match other.parse::<u32>() {
            Ok(n) if n >= 1 => Ok(Some(n)),
            _ => Err(EXPECTED),
        },
    }
}

/// `true`/`false` (also `on`/`off`, `1`/`0`).
pub fn boolean(s: &str) -> Result<bool, &'static str> {
    match s.trim() {
        "true" | "on" | "1" => Ok(true),
        "false" | "off" | "0" => Ok(false),
        _ => Err("true or false"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_every_unit_parse_and_garbage_does_not() {
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(duration("500us"), Ok(Duration::from_micros(500)));
        assert_eq!(duration("0"), Ok(Duration::ZERO));
        for bad in ["abc", "10", "-1s", "1x", "", "ms", "1.2.3s"] {
            assert_eq!(duration(bad), Err(DURATION), "{bad:?}");
        }
        assert_eq!(optional_duration("off"), Ok(None));
        assert!(optional_duration("soon").is_err());
    }

    #[test]
    fn percentages_must_lie_between_zero_and_one_hundred() {
        assert_eq!(percent("20%"), Ok(0.2));
        assert_eq!(percent("0%"), Ok(0.0));
        assert_eq!(percent("100%"), Ok(1.0));
        for bad in ["101%", "-1%", "20", "x%"] {
            assert!(percent(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sizes_counts_and_lists_parse() {
        assert_eq!(size("64KiB"), Ok(65536));
        assert_eq!(size("1MiB"), Ok(1 << 20));
        assert_eq!(size("512"), Ok(512));
        assert!(size("64kb").is_err());
        assert_eq!(positive_count("3"), Ok(3));
        assert!(positive_count("0").is_err());
        assert_eq!(optional_limit("unlimited"), Ok(None));
        assert_eq!(list(" a, b,,c "), vec!["a", "b", "c"]);
        assert_eq!(boolean("on"), Ok(true));
        assert!(boolean("yes please").is_err());
    }
}
