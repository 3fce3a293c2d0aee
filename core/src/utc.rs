//! Time as the compliance engine sees it: `i64` Unix milliseconds, always UTC.
//!
//! Why not a date-time crate: this crate has no clock and few dependencies, and the engine only
//! needs three things: fixed durations (a day is exactly 86 400 000 ms, so "7 days before the
//! deadline" is exactly 7×24 h before it whatever a local calendar does around a daylight-saving
//! change), rendering an instant as ISO 8601 UTC for alerts, and building instants from civil
//! UTC dates in tests and configs. Local time never appears: a legal deadline shown in a local
//! zone would move by an hour twice a year.

/// One second in milliseconds.
pub const MS_PER_SECOND: i64 = 1_000;
/// One hour in milliseconds.
pub const MS_PER_HOUR: i64 = 3_600_000;
/// One day (exactly 24 h; UTC has no daylight saving) in milliseconds.
pub const MS_PER_DAY: i64 = 86_400_000;

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
        + i64::from(minute) * 60_000
        + i64::from(second) * MS_PER_SECOND
}

/// ISO 8601 in UTC with a `Z`, to the second: `2026-10-25T01:00:00Z`. Milliseconds are shown
/// only when non-zero (`…:00.250Z`), so the common case stays readable.
pub fn format_utc(ms: i64) -> String {
    let days = ms.div_euclid(MS_PER_DAY);
    let rem = ms.rem_euclid(MS_PER_DAY);
    let (y, mo, d) = civil_from_days(days);
    let (h, mi, s, milli) = (
        rem / MS_PER_HOUR,
        rem % MS_PER_HOUR / 60_000,
        rem % 60_000 / 1_000,
        rem % 1_000,
    );
    if milli == 0 {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
    } else {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
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
    fn durations() {
        assert_eq!(days_ms(u32::MAX), i64::from(u32::MAX) * MS_PER_DAY);
    }
}
