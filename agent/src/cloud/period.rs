//! Time on the wire: ISO 8601 date-times as the cloud (Python's `isoformat`) writes
//! them, and the usage periods (`cpuPeriod`, `memoryPeriod`) of the consumption commands.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The window a consumption command asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    /// From `start` to `end` (`"START,END"`).
    Range { start: SystemTime, end: SystemTime },
    /// The last `Duration` up to now (`Nh`, `Nm`, `Nd`, `N` seconds, or the default hour).
    Last(Duration),
}

impl Period {
    /// What the older agent does with anything it cannot read: the last hour.
    pub const DEFAULT: Period = Period::Last(Duration::from_secs(3600));

    /// The window as (start, end) for `now`.
    pub fn window(&self, now: SystemTime) -> (SystemTime, SystemTime) {
        match *self {
            Period::Range { start, end } => (start, end),
            Period::Last(d) => (now.checked_sub(d).unwrap_or(UNIX_EPOCH), now),
        }
    }
}

/// Reads a period: `"START,END"` (ISO), `Nh`, `Nm`, `Nd`, `N` (seconds); anything else
/// (including a range whose end is before its start) is the last hour.
pub fn parse_period(text: &str) -> Period {
    let t = text.trim();
    if let Some((a, b)) = t.split_once(',') {
        return match (parse_iso(a.trim()), parse_iso(b.trim())) {
            (Some(start), Some(end)) if start <= end => Period::Range { start, end },
            _ => Period::DEFAULT,
        };
    }
    let (digits, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c.to_ascii_lowercase()),
        _ => (t, 's'),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Period::DEFAULT;
    }
    let Ok(n) = digits.parse::<u64>() else {
        return Period::DEFAULT;
    };
    let secs = match unit {
        's' => Some(n),
        'm' => n.checked_mul(60),
        'h' => n.checked_mul(3600),
        'd' => n.checked_mul(86_400),
        _ => None,
    };
    match secs {
        Some(s) if s > 0 => Period::Last(Duration::from_secs(s)),
        _ => Period::DEFAULT,
    }
}

/// Parses what Python's `datetime.fromisoformat` accepts in practice:
/// `YYYY-MM-DD[(T| )HH:MM[:SS[.f+]]][Z|(+|-)HH[:]MM]`. A time without a zone is UTC.
pub fn parse_iso(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if part.is_empty() || !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) {
        return None;
    }
    let (mut h, mut mi, mut sec, mut nanos, mut offset) = (0, 0, 0, 0u32, 0i64);
    let mut i = 10;
    if i < b.len() {
        if b[i] != b'T' && b[i] != b't' && b[i] != b' ' {
            return None;
        }
        if b.len() < i + 6 || b[i + 3] != b':' {
            return None;
        }
        h = num(i + 1..i + 3)?;
        mi = num(i + 4..i + 6)?;
        i += 6;
        if i < b.len() && b[i] == b':' {
            sec = num(i + 1..i + 3)?;
            i += 3;
            if i < b.len() && (b[i] == b'.' || b[i] == b',') {
                let start = i + 1;
                i = start;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                let frac = s.get(start..i)?;
                if frac.is_empty() {
                    return None;
                }
                let mut digits: String = frac.chars().take(9).collect();
                while digits.len() < 9 {
                    digits.push('0');
                }
                nanos = digits.parse().ok()?;
            }
        }
        if i < b.len() {
            offset = parse_offset(&s[i..])?;
            i = b.len();
        }
    }
    if i != b.len() || h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset;
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

/// `Z`, `+HH:MM`, `+HHMM`, `+HH` as seconds east of UTC.
fn parse_offset(z: &str) -> Option<i64> {
    if z == "Z" || z == "z" {
        return Some(0);
    }
    let sign = match z.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let rest = z[1..].replace(':', "");
    if !rest.bytes().all(|c| c.is_ascii_digit()) || !(rest.len() == 2 || rest.len() == 4) {
        return None;
    }
    let hh: i64 = rest[..2].parse().ok()?;
    let mm: i64 = if rest.len() == 4 {
        rest[2..].parse().ok()?
    } else {
        0
    };
    if hh > 23 || mm > 59 {
        return None;
    }
    Some(sign * (hh * 3600 + mm * 60))
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// An ISO 8601 UTC timestamp with microseconds, as the older agent's `isoformat()`.
pub fn format_iso(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn iso_forms_python_writes() {
        let t = at(1_704_067_200); // 2024-01-01T00:00:00Z
        for s in [
            "2024-01-01",
            "2024-01-01T00:00",
            "2024-01-01T00:00:00",
            "2024-01-01 00:00:00",
            "2024-01-01T00:00:00Z",
            "2024-01-01T00:00:00+00:00",
            "2024-01-01T01:00:00+01:00",
            "2023-12-31T23:00:00-0100",
        ] {
            assert_eq!(parse_iso(s), Some(t), "{s}");
        }
        assert_eq!(
            parse_iso("2024-01-01T00:00:00.250000"),
            Some(t + Duration::from_millis(250))
        );
        assert_eq!(parse_iso("2024-02-29T12:00:00"), Some(at(1_709_208_000)));
        for bad in [
            "",
            "yesterday",
            "2024-13-01",
            "2023-02-29",
            "2024-01-01T25:00",
            "2024-01-01T00:00:00+2",
            "2024-01-01X00:00",
            "2024-01-01T00:00:00.",
            "1969-12-31T23:59:59",
        ] {
            assert_eq!(parse_iso(bad), None, "{bad}");
        }
        assert_eq!(
            parse_iso(&format_iso(at(1_700_000_000))),
            Some(at(1_700_000_000))
        );
    }

    #[test]
    fn periods() {
        let cases: &[(&str, Period)] = &[
            ("1h", Period::Last(Duration::from_secs(3600))),
            ("6H", Period::Last(Duration::from_secs(6 * 3600))),
            ("30m", Period::Last(Duration::from_secs(1800))),
            ("2d", Period::Last(Duration::from_secs(2 * 86_400))),
            ("90", Period::Last(Duration::from_secs(90))),
            (" 15m ", Period::Last(Duration::from_secs(900))),
            (
                "2024-01-01T00:00:00,2024-01-01T01:00:00Z",
                Period::Range {
                    start: at(1_704_067_200),
                    end: at(1_704_070_800),
                },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse_period(text), *want, "{text}");
        }
        for other in [
            "",
            "h",
            "1w",
            "-5m",
            "0",
            "1.5h",
            "abc",
            "2024-01-01,bad",        // bad end
            "2024-01-02,2024-01-01", // end before start
            "99999999999999999999d",
        ] {
            assert_eq!(parse_period(other), Period::DEFAULT, "{other:?}");
        }
        let now = at(10_000);
        assert_eq!(
            Period::Last(Duration::from_secs(60)).window(now),
            (at(9_940), now)
        );
    }
}
