//! Time as the compliance engine sees it: `i64` Unix milliseconds, always UTC. This module
//! is the one place that defines an hour and a day, parses a time a person or a label wrote
//! ([`parse_utc`]) and formats an instant ([`format_utc`], [`format_utc_minute`],
//! [`format_date`]); every crate uses it rather than its own arithmetic or date library.
//!
//! Why fixed-length days: "7 days before the deadline" is exactly 7×24 h before it whatever a
//! local calendar does around a daylight-saving change, and local time never appears: a legal
//! deadline shown in a local zone would move by an hour twice a year. Parsing leans on jiff
//! (RFC 3339 has more corners than are worth writing again); formatting and civil dates are
//! plain arithmetic. jiff is used here only to read text: core never asks it for the time.

/// One second in milliseconds.
pub const MS_PER_SECOND: i64 = 1_000;
/// One minute in milliseconds.
pub const MS_PER_MINUTE: i64 = 60 * MS_PER_SECOND;
/// One hour in milliseconds.
pub const MS_PER_HOUR: i64 = 60 * MS_PER_MINUTE;
/// One day (exactly 24 h; UTC has no daylight saving) in milliseconds.
pub const MS_PER_DAY: i64 = 24 * MS_PER_HOUR;
/// One hour in seconds, for durations kept in seconds (`std::time::Duration`, plans).
pub const SECONDS_PER_HOUR: u64 = (MS_PER_HOUR / MS_PER_SECOND) as u64;
/// One day in seconds; see [`SECONDS_PER_HOUR`].
pub const SECONDS_PER_DAY: u64 = (MS_PER_DAY / MS_PER_SECOND) as u64;

/// A span of milliseconds in days, for display and rates (`14 * MS_PER_DAY` → `14.0`).
pub fn ms_as_days(ms: u128) -> f64 {
    ms as f64 / MS_PER_DAY as f64
}

/// A span of milliseconds in hours.
pub fn ms_as_hours(ms: u128) -> f64 {
    ms as f64 / MS_PER_HOUR as f64
}

/// `days` whole days as a [`std::time::Duration`] (flag defaults such as a 90-day retention).
pub fn days_duration(days: u64) -> std::time::Duration {
    std::time::Duration::from_secs(days.saturating_mul(SECONDS_PER_DAY))
}

/// `days` whole days in milliseconds, saturating (a configured day count can never wrap a
/// deadline into the past).
pub fn days_ms(days: u32) -> i64 {
    i64::from(days).saturating_mul(MS_PER_DAY)
}

/// Days since 1970-01-01 of a proleptic Gregorian civil date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count since 1970-01-01 (inverse of [`days_from_civil`]).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Unix milliseconds of a civil UTC date and time. Out-of-range fields are not rejected: they
/// roll over arithmetically (hour 24 is the next day's midnight), which is what tests want.
pub fn utc_ms(year: i64, month: u32, day: u32, hour: u32, minute: u32, second: u32) -> i64 {
    days_from_civil(year, month, day) * MS_PER_DAY
        + i64::from(hour) * MS_PER_HOUR
        + i64::from(minute) * MS_PER_MINUTE
        + i64::from(second) * MS_PER_SECOND
}

/// The civil UTC fields of an instant: (year, month, day, hour, minute, second, millisecond).
fn fields(ms: i64) -> (i64, u32, u32, i64, i64, i64, i64) {
    let (y, mo, d) = civil_from_days(ms.div_euclid(MS_PER_DAY));
    let rem = ms.rem_euclid(MS_PER_DAY);
    (
        y,
        mo,
        d,
        rem / MS_PER_HOUR,
        rem % MS_PER_HOUR / MS_PER_MINUTE,
        rem % MS_PER_MINUTE / MS_PER_SECOND,
        rem % MS_PER_SECOND,
    )
}

/// ISO 8601 in UTC with a `Z`, to the second: `2026-10-25T01:00:00Z`. Milliseconds are shown
/// only when non-zero (`…:00.250Z`), so the common case stays readable.
pub fn format_utc(ms: i64) -> String {
    let (y, mo, d, h, mi, s, milli) = fields(ms);
    if milli == 0 {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
    } else {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
    }
}

/// To the minute, for people: `2026-10-25 01:00 UTC` (reports, the console, the CLI).
/// Truncated, like every clock face: `01:00:59` is still `01:00`.
pub fn format_utc_minute(ms: i64) -> String {
    let (y, mo, d, h, mi, _, _) = fields(ms);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02} UTC")
}

/// The UTC date of an instant: `2026-10-25`.
pub fn format_date(ms: i64) -> String {
    let (y, m, d) = civil_from_days(ms.div_euclid(MS_PER_DAY));
    format!("{y:04}-{m:02}-{d:02}")
}

/// Longest text [`parse_utc`] looks at: an RFC 3339 time with nanoseconds and an offset is
/// 35 bytes, so this bounds the work on a hostile label without refusing a real time.
pub const MAX_TIME_LEN: usize = 64;

/// The smallest bare number [`parse_utc`] reads as Unix milliseconds: 10^12 ms is
/// 2001-09-09. Anything smaller is far more likely Unix *seconds* or a year than a time this
/// meter could mean, and read as milliseconds it would land in January 1970 silently.
pub const MIN_UNIX_MS: i64 = 1_000_000_000_000;

/// Why a text is not a time. Every message says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UtcParseError {
    /// Neither a date, an RFC 3339 time nor Unix milliseconds.
    #[error(
        "{0:?} is not a time: write a date YYYY-MM-DD (midnight UTC, e.g. 2026-09-30), an \
         RFC 3339 time (2026-09-30T12:00:00Z) or Unix milliseconds (1790726400000)"
    )]
    Syntax(String),
    /// A bare number below [`MIN_UNIX_MS`].
    #[error(
        "{0:?} is too small for Unix milliseconds (it would be before 2001-09-09): if it is \
         Unix seconds, multiply by 1000; or write a date (2026-09-30) or an RFC 3339 time"
    )]
    NotMilliseconds(String),
    /// Outside what `i64` milliseconds hold, or a calendar date that does not exist.
    #[error("{0:?} is outside the range of times flopmeter records")]
    OutOfRange(String),
    /// Longer than [`MAX_TIME_LEN`] bytes.
    #[error("a time of {len} bytes is too long (at most {max}): write e.g. 2026-09-30", max = MAX_TIME_LEN)]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
}

/// Parses a time as people and job labels write it, the one rule for every door (flags,
/// config, labels, the console): a date `2026-09-30` (midnight UTC), an RFC 3339 time with
/// its offset (`2026-09-30T12:00:00Z`, `2026-09-30T14:00:00+02:00`), or Unix milliseconds
/// (at least [`MIN_UNIX_MS`]). Whitespace around it is ignored. A time without an offset is
/// refused rather than read in some zone.
pub fn parse_utc(text: &str) -> Result<i64, UtcParseError> {
    let t = text.trim();
    if t.len() > MAX_TIME_LEN {
        return Err(UtcParseError::TooLong { len: t.len() });
    }
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        let ms: i64 = t
            .parse()
            .map_err(|_| UtcParseError::OutOfRange(t.to_string()))?;
        return if ms < MIN_UNIX_MS {
            Err(UtcParseError::NotMilliseconds(t.to_string()))
        } else {
            Ok(ms)
        };
    }
    // A date alone, `YYYY-MM-DD`: jiff's date parser would also take the date out of a
    // date-time and drop its time, which must instead be read (or refused) whole.
    let date_shape = t.len() == 10
        && t.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    if date_shape && let Ok(d) = t.parse::<jiff::civil::Date>() {
        let (y, m, d) = (i64::from(d.year()), d.month(), d.day());
        // jiff has checked the calendar; the months and days are small positive numbers.
        return Ok(utc_ms(
            y,
            m.unsigned_abs().into(),
            d.unsigned_abs().into(),
            0,
            0,
            0,
        ));
    }
    match t.parse::<jiff::Timestamp>() {
        Ok(ts) if !date_shape => Ok(ts.as_millisecond()),
        _ => Err(UtcParseError::Syntax(t.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip_and_known_instants() {
        assert_eq!(utc_ms(1970, 1, 1, 0, 0, 0), 0);
        // 2026-10-25T01:00:00Z: the end of EU summer time in 2026.
        assert_eq!(utc_ms(2026, 10, 25, 1, 0, 0), 1_792_890_000_000);
        assert_eq!(format_utc(1_792_890_000_000), "2026-10-25T01:00:00Z");
        assert_eq!(
            format_utc(utc_ms(2024, 2, 29, 23, 59, 59)),
            "2024-02-29T23:59:59Z"
        );
        assert_eq!(format_utc(-1), "1969-12-31T23:59:59.999Z");
        for days in [-800_000, -1, 0, 1, 59, 60, 365, 10_957, 20_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
    }

    #[test]
    fn parses_dates_times_and_milliseconds_alike() {
        let midnight = utc_ms(2026, 9, 30, 0, 0, 0);
        assert_eq!(parse_utc("2026-09-30"), Ok(midnight));
        assert_eq!(parse_utc(" 2026-09-30T00:00:00Z "), Ok(midnight));
        assert_eq!(parse_utc("2026-09-30T02:00:00+02:00"), Ok(midnight));
        assert_eq!(parse_utc("2026-09-30T00:00:00.250Z"), Ok(midnight + 250));
        assert_eq!(parse_utc(&midnight.to_string()), Ok(midnight));
        assert_eq!(parse_utc("2024-02-29"), Ok(utc_ms(2024, 2, 29, 0, 0, 0)));
        for bad in [
            "2026-02-30",
            "tomorrow",
            "2026-09-30T12:00:00",
            "2026-09-30 12:00",
            "",
            "-5",
            "1e12",
        ] {
            assert!(
                matches!(parse_utc(bad), Err(UtcParseError::Syntax(_))),
                "{bad:?}: {:?}",
                parse_utc(bad)
            );
        }
        // Unix seconds and years are refused, not read as January 1970.
        for small in ["1790726400", "2026", "0"] {
            let e = parse_utc(small).unwrap_err();
            assert!(matches!(e, UtcParseError::NotMilliseconds(_)), "{small}");
            assert!(e.to_string().contains("multiply by 1000"), "{e}");
        }
        assert!(matches!(
            parse_utc("99999999999999999999"),
            Err(UtcParseError::OutOfRange(_))
        ));
        assert!(matches!(
            parse_utc(&"1".repeat(65)),
            Err(UtcParseError::TooLong { len: 65 })
        ));
    }

    #[test]
    fn formats_for_people_agree_with_iso() {
        let t = utc_ms(2026, 3, 1, 12, 34, 56) + 789;
        assert_eq!(format_utc(t), "2026-03-01T12:34:56.789Z");
        assert_eq!(format_utc_minute(t), "2026-03-01 12:34 UTC");
        assert_eq!(format_date(t), "2026-03-01");
        assert_eq!(format_date(-1), "1969-12-31");
        assert_eq!(format_utc_minute(-1), "1969-12-31 23:59 UTC");
        // Years 0001 to 9999 are what RFC 3339 writes.
        for ms in [
            utc_ms(1, 1, 1, 0, 0, 0),
            -1,
            0,
            t,
            utc_ms(9999, 12, 30, 0, 0, 0),
        ] {
            assert_eq!(parse_utc(&format_utc(ms)), Ok(ms), "{ms}");
        }
    }

    #[test]
    fn one_hour_one_day() {
        assert_eq!(MS_PER_HOUR, 3_600_000);
        assert_eq!(MS_PER_DAY, 86_400_000);
        assert_eq!(SECONDS_PER_DAY, 86_400);
        assert_eq!(days_duration(90).as_secs(), 90 * 86_400);
        assert_eq!(ms_as_days(14 * MS_PER_DAY as u128), 14.0);
        assert_eq!(ms_as_hours(90 * MS_PER_MINUTE as u128), 1.5);
    }

    #[test]
    fn durations() {
        assert_eq!(days_ms(u32::MAX), i64::from(u32::MAX) * MS_PER_DAY);
    }
}
