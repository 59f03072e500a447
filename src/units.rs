//! The one reader of sizes and durations on the command line, and the one
//! writer of sizes for people. Sizes follow coreutils and rsync: `K`, `M`,
//! `G`, `T`, `P` and their `KiB` ... `PiB` forms are powers of 1024; `KB`,
//! `MB`, `GB`, `TB`, `PB` are powers of 1000; fractions are allowed
//! (`1.5GiB`). This module knows nothing else.

use std::time::Duration;

/// Parses `10s`, `500ms`, `2m`, `1h`, `7d`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (value, unit) =
        split_number(s).ok_or_else(|| format!("'{s}' is not a duration (try 10s, 500ms, 2m)"))?;
    let seconds = match unit {
        "" | "s" | "sec" | "secs" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        other => {
            return Err(format!(
                "'{s}': unknown unit '{other}' (use ms, s, m, h or d)"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("'{s}' is out of range"))
}

/// The units a size may carry, each with its multiplier.
const SIZE_UNITS: [(&str, u64); 16] = [
    ("", 1),
    ("b", 1),
    ("k", 1 << 10),
    ("kib", 1 << 10),
    ("kb", 1_000),
    ("m", 1 << 20),
    ("mib", 1 << 20),
    ("mb", 1_000_000),
    ("g", 1 << 30),
    ("gib", 1 << 30),
    ("gb", 1_000_000_000),
    ("t", 1 << 40),
    ("tib", 1 << 40),
    ("tb", 1_000_000_000_000),
    ("p", 1 << 50),
    ("pib", 1 << 50),
];

/// Parses a size in bytes: `4096`, `256MiB` or `256M` (2^20), `5MB`
/// (10^6), `1.5GiB`; `PB` too. Case does not matter.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (value, unit) =
        split_number(s).ok_or_else(|| format!("'{s}' is not a size (try 256MiB, 1GB, 4096)"))?;
    let unit = unit.to_ascii_lowercase();
    let multiplier = match unit.as_str() {
        "pb" => 1_000_000_000_000_000,
        u => SIZE_UNITS
            .iter()
            .find(|(name, _)| *name == u)
            .map(|(_, m)| *m)
            .ok_or_else(|| {
                format!(
                    "'{s}': unknown unit '{unit}' (use B, K/KiB, M/MiB, G/GiB, T/TiB, P/PiB \
                     for powers of 1024, or KB, MB, GB, TB, PB for powers of 1000)"
                )
            })?,
    };
    let bytes = value * multiplier as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("'{s}' is too large"));
    }
    if bytes.fract() != 0.0 {
        return Err(format!("'{s}' is not a whole number of bytes"));
    }
    Ok(bytes as u64)
}

/// Parses a rate in bytes a second: a size as [`parse_size`] reads it,
/// with an optional `/s` (`5M`, `5MiB/s` = 5 × 2^20; `5MB/s` = 5,000,000).
/// `0` means no limit.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("/s")
        .or_else(|| t.strip_suffix("/S"))
        .unwrap_or(t);
    parse_size(t).map_err(|e| e.replace("a size", "a rate"))
}

/// `1.5 GiB`-style sizes for messages.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A non-negative decimal number and what follows it.
fn split_number(s: &str) -> Option<(f64, &str)> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    Some((num.parse().ok()?, unit.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_as_sizes_a_second() {
        assert_eq!(parse_rate("5M"), Ok(5 << 20));
        assert_eq!(parse_rate("5MiB/s"), Ok(5 << 20));
        assert_eq!(parse_rate("5MB/s"), Ok(5_000_000));
        assert_eq!(parse_rate("0"), Ok(0));
        assert!(parse_rate("fast").unwrap_err().contains("not a rate"));
    }

    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
    }

    #[test]
    fn durations_parse_in_common_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sizes_parse_as_coreutils_and_rsync_read_them() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert_eq!(parse_size("5MB"), Ok(5_000_000));
        assert_eq!(parse_size("10GB"), Ok(10_000_000_000));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("2TiB"), Ok(2 << 40));
        assert_eq!(parse_size("1PiB"), Ok(1 << 50));
        assert_eq!(parse_size("1PB"), Ok(1_000_000_000_000_000));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("0.5").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
