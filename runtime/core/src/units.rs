//! The one syntax for durations and sizes in driver arguments and mailpush's own
//! settings.
//!
//! - A duration is a number with a unit: `250ms`, `5s`, `2m`, `1h`, `1d` (and
//!   combinations such as `1h30m`, as the `humantime` crate reads them) — except for keys
//!   whose name ends in `_msecs` (Dovecot's convention): those take a bare number of
//!   milliseconds, the unit being in the name.
//! - A size is a number of bytes, or with a unit: `K`, `M`, `G`, `T` are binary, as in
//!   Dovecot (`10M` is 10 MiB); `KiB`, `MiB`, … likewise; `KB`, `MB`, … are decimal.
//!
//! Dovecot's own interval syntax (the ox driver's `cache_lifetime`) is kept where
//! compatibility needs its exact error texts; see the ox driver's config.

use std::time::Duration;

/// The longest duration any setting takes (ten years): longer values are refused, not
/// left to overflow a clock later.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Parses a duration with a unit (`5s`, `250ms`, `2m`, `1h`, `1d`), at most
/// [`MAX_DURATION`].
pub fn parse_duration(v: &str) -> Option<Duration> {
    let v = v.trim();
    // humantime also reads a bare number as an error, which is what we want here.
    if v.is_empty() || !v.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    humantime::parse_duration(v)
        .ok()
        .filter(|d| *d <= MAX_DURATION)
}

/// Parses the value of a `*_msecs` key: a bare number of milliseconds, at most
/// [`MAX_DURATION`].
pub fn parse_msecs(v: &str) -> Option<Duration> {
    let v = v.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse::<u64>()
        .ok()
        .map(Duration::from_millis)
        .filter(|d| *d <= MAX_DURATION)
}

/// Parses a size (`1048576`, `64K`, `10M`, `1G`, `32MiB`, `5MB`).
pub fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let digits = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    if digits == 0 {
        return None;
    }
    let (n, unit) = v.split_at(digits);
    let unit = unit.trim();
    // Dovecot's single-letter units are binary; bytesize reads them as decimal, so they
    // are spelled out as IEC units first.
    let iec = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => return n.parse().ok(),
        "K" => "KiB",
        "M" => "MiB",
        "G" => "GiB",
        "T" => "TiB",
        _ => unit,
    };
    format!("{n} {iec}")
        .parse::<bytesize::ByteSize>()
        .ok()
        .map(|b| b.as_u64())
}

/// Writes a size the way [`parse_size`] reads it back, in the largest binary unit that
/// divides it (`10M`, `1G`, `1536K`, `7`).
pub fn format_size(n: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if n != 0 && n.is_multiple_of(1u64 << shift) {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

/// Writes a duration the way [`parse_duration`] reads it back, in the largest unit that
/// divides it (`30d`, `2m`, `1500ms`; `0s`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (per, unit) in [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
    ] {
        if ms != 0 && ms.is_multiple_of(per) {
            return format!("{}{unit}", ms / per);
        }
    }
    if ms == 0 {
        "0s".into()
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (v, ms) in [
            ("250ms", 250),
            ("5s", 5_000),
            ("2m", 120_000),
            ("1h", 3_600_000),
            ("1d", 86_400_000),
            ("1h30m", 5_400_000),
        ] {
            assert_eq!(parse_duration(v), Some(Duration::from_millis(ms)), "{v}");
        }
        for bad in ["", "5", "5x", "-5s", "s", "1.5.s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        assert_eq!(parse_msecs("100"), Some(Duration::from_millis(100)));
        assert_eq!(parse_msecs("2s"), None, "the unit is in the key's name");
        assert_eq!(parse_msecs("fast"), None);
        // Beyond ten years: refused, rather than overflowing a clock later.
        assert_eq!(parse_duration("3650d"), Some(MAX_DURATION));
        assert_eq!(parse_duration("3651d"), None);
        assert_eq!(parse_duration("99999999999999h"), None);
        assert_eq!(parse_msecs("18446744073709551615"), None);
    }

    #[test]
    fn sizes_are_binary_like_dovecots() {
        for (v, n) in [
            ("1048576", 1u64 << 20),
            ("64K", 64 << 10),
            ("64k", 64 << 10),
            ("10M", 10 << 20),
            ("1G", 1 << 30),
            ("32MiB", 32 << 20),
            ("32mib", 32 << 20),
            ("5MB", 5_000_000),
            ("7B", 7),
        ] {
            assert_eq!(parse_size(v), Some(n), "{v}");
        }
        for bad in ["", "lots", "M", "1G5", "-1M", "10Q"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn sizes_and_durations_are_written_as_they_are_read() {
        for n in [
            0,
            7,
            1 << 10,
            1536 << 10,
            10 << 20,
            1 << 30,
            3 << 40,
            1_000_000,
        ] {
            assert_eq!(parse_size(&format_size(n)), Some(n), "{n}");
        }
        assert_eq!(format_size(10 << 20), "10M");
        assert_eq!(format_size(1536 << 10), "1536K");
        for ms in [0, 250, 1_500, 120_000, 5_400_000, 30 * 86_400_000] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse_duration(&format_duration(d)), Some(d), "{ms}");
        }
        assert_eq!(format_duration(Duration::from_secs(30 * 86_400)), "30d");
        assert_eq!(format_duration(Duration::from_millis(1_500)), "1500ms");
    }
}
