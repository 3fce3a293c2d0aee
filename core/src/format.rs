//! Figures as regulators and compliance officers read them: the one set of formatting
//! functions behind the CLI, the JSON API's text fields, reports, alerts and webhooks.
//!
//! The rules, and why:
//! - **FLOP** in scientific notation to two significant figures ([`flop`]: `2.3e25`), the
//!   form the Commission guidelines ask for. Rounded exactly from the integer (half up), not
//!   through `f64`, whose last bits could move a figure across a rounding boundary.
//! - **Near a threshold**, two figures can hide the comparison that matters: `1.0e25` is both
//!   exactly 10^25 (not above a strict "greater than") and 10^25 + 1 (above). [`flop_near`]
//!   keeps the two-figure headline and adds digits, up to [`NEAR_MAX_FIGURES`], until the value
//!   reads differently from the level it rounds to; past that it writes the comparison
//!   itself: `>1.0e25` or `<1.0e25`.
//! - **Quantities** (days, GPU-days, MWh) as plain numbers with at least two significant
//!   figures and every integer digit ([`quantity`]: `14`, `123`, `1.5`, `0.050`, `0`): "14
//!   wall-clock days", never `1.4e1`; 123 days never `1.2e2`; no `0.0e0` or `-0`.
//! - **Durations** to the hour once they exceed a day ([`duration`]: `31 d 07 h`), and a
//!   deadline's distance as `13 d 04 h left` or `overdue by 31 d 07 h` ([`time_left`]),
//!   never a negative "time left".

use crate::units::FlopTotal;

/// Most significant figures [`flop_near`] shows before it falls back to `>` or `<`.
pub const NEAR_MAX_FIGURES: usize = 6;

/// `v` to `figures` significant figures in scientific notation (`2.3e25`), rounded half up
/// from its exact decimal digits. Zero is `0`.
pub fn flop_figures(v: u128, figures: usize) -> String {
    if v == 0 {
        return "0".to_string();
    }
    let figures = figures.max(1);
    let digits: Vec<u8> = v.to_string().bytes().map(|b| b - b'0').collect();
    let mut exp = digits.len() - 1;
    let mut kept: Vec<u8> = digits.iter().copied().take(figures).collect();
    kept.resize(figures, 0);
    if digits.get(figures).is_some_and(|&d| d >= 5) {
        // Round up, carrying; 9.99 → 10.0 moves the exponent.
        let mut i = figures;
        loop {
            if i == 0 {
                kept.insert(0, 1);
                kept.truncate(figures);
                exp += 1;
                break;
            }
            i -= 1;
            if kept[i] == 9 {
                kept[i] = 0;
            } else {
                kept[i] += 1;
                break;
            }
        }
    }
    let mut s = String::with_capacity(figures + 6);
    s.push(char::from(b'0' + kept[0]));
    if figures > 1 {
        s.push('.');
        s.extend(kept[1..].iter().map(|d| char::from(b'0' + d)));
    }
    s.push('e');
    s.push_str(&exp.to_string());
    s
}

/// A FLOP figure to two significant figures: `2.3e25`; zero is `0`.
pub fn flop(v: u128) -> String {
    flop_figures(v, 2)
}

/// A FLOP figure as [`flop`], unless that would read the same as one of `levels` it differs
/// from: then with more figures (`1.0004e25`), or, when even [`NEAR_MAX_FIGURES`] do not
/// tell them apart, with the comparison written out (`>1.0e25`, `<1.0e25`). A value equal to
/// a level prints as the level does.
pub fn flop_near(v: u128, levels: &[u128]) -> String {
    let head = flop(v);
    let Some(&level) = levels.iter().find(|&&l| l != v && flop(l) == head) else {
        return head;
    };
    for figures in 3..=NEAR_MAX_FIGURES {
        let s = flop_figures(v, figures);
        if s != flop_figures(level, figures) {
            return s;
        }
    }
    format!("{}{head}", if v > level { ">" } else { "<" })
}

/// A band as `2.3e25 [1.9e25 – 4.6e25]` (central [low – high]).
pub fn band(low: u128, central: u128, high: u128) -> String {
    band_near(FlopTotal { low, central, high }, &[])
}

/// A band whose figures are each written with [`flop_near`] against `levels`.
pub fn band_near(t: FlopTotal, levels: &[u128]) -> String {
    format!(
        "{} [{} – {}]",
        flop_near(t.central, levels),
        flop_near(t.low, levels),
        flop_near(t.high, levels)
    )
}

/// Two significant figures in scientific notation for a figure that is only known as a
/// float (a what-if plan): `2.3e25`; zero is `0`.
pub fn sig2(value: f64) -> String {
    if value == 0.0 {
        "0".to_string()
    } else if value.is_finite() {
        format!("{value:.1e}")
    } else {
        value.to_string()
    }
}

/// A plain number with at least two significant figures and all its integer digits: `123`,
/// `14`, `1.5`, `0.050`; zero (also `-0`) is `0`. For days, GPU-days, MWh and percentages.
pub fn quantity(x: f64) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    let a = x.abs();
    if a == 0.0 {
        return "0".to_string();
    }
    if a >= 9.95 {
        return format!("{x:.0}");
    }
    if a >= 0.995 {
        return format!("{x:.1}");
    }
    // Two significant figures below one: as many decimals as the leading zeros need.
    let decimals = (1 - a.log10().floor() as i32).clamp(2, 15) as usize;
    let s = format!("{x:.decimals$}");
    if s.trim_start_matches('-')
        .trim_start_matches(['0', '.'])
        .is_empty()
    {
        // Below what 15 decimals show: say so rather than print a zero.
        format!("{}<0.{}1", if x < 0.0 { "-" } else { "" }, "0".repeat(14))
    } else {
        s
    }
}

/// Milliseconds as days, a [`quantity`]: `14`, `0.50`.
pub fn days_of_ms(ms: u128) -> String {
    quantity(crate::utc::ms_as_days(ms))
}

/// Millijoules as megawatt-hours, a [`quantity`]: `700`, `0.050`.
pub fn mwh_of_mj(mj: u128) -> String {
    quantity(crate::energy::mj_to_mwh(mj))
}

/// A non-negative duration: `31 d 07 h` from a day up, `7 h 05 min` from an hour up, else
/// `12 min`. Truncated, never rounded up: a deadline's "time left" must not look longer
/// than it is. Negative durations are shown as their magnitude.
pub fn duration(ms: i64) -> String {
    use crate::utc::{MS_PER_DAY, MS_PER_HOUR, MS_PER_MINUTE};
    const MIN: u64 = MS_PER_MINUTE as u64;
    const HOUR: u64 = MS_PER_HOUR as u64;
    const DAY: u64 = MS_PER_DAY as u64;
    let abs = ms.unsigned_abs();
    let (d, h, m) = (abs / DAY, abs % DAY / HOUR, abs % HOUR / MIN);
    if d > 0 {
        format!("{d} d {h:02} h")
    } else if h > 0 {
        format!("{h} h {m:02} min")
    } else {
        format!("{m} min")
    }
}

/// The distance to a deadline (`deadline − now`, ms): `13 d 04 h left`, or once it passed,
/// `overdue by 31 d 07 h`.
pub fn time_left(left_ms: i64) -> String {
    if left_ms > 0 {
        format!("{} left", duration(left_ms))
    } else {
        format!("overdue by {}", duration(left_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::threshold::pow10;

    #[test]
    fn two_significant_figures_exactly() {
        assert_eq!(flop(234 * pow10(23)), "2.3e25");
        assert_eq!(flop(235 * pow10(23)), "2.4e25", "half up");
        assert_eq!(flop(996 * pow10(22)), "1.0e25", "carry into the exponent");
        assert_eq!(flop(3149 * pow10(21)), "3.1e24");
        assert_eq!(flop(0), "0");
        assert_eq!(flop(7), "7.0e0");
        assert_eq!(flop(36), "3.6e1");
        assert_eq!(flop(pow10(25)), "1.0e25");
        assert_eq!(flop(u128::MAX), "3.4e38");
        assert_eq!(flop_figures(999_999, 3), "1.00e6");
        assert_eq!(flop_figures(123, 1), "1e2");
        assert_eq!(band(19, 23, 46), "2.3e1 [1.9e1 – 4.6e1]");
        assert_eq!(sig2(0.0), "0");
        assert_eq!(sig2(2.34e25), "2.3e25");
    }

    #[test]
    fn near_a_level_the_comparison_stays_visible() {
        let l = pow10(25);
        let levels = [pow10(23), l, pow10(26)];
        assert_eq!(flop_near(l, &levels), "1.0e25", "equal reads as the level");
        assert_eq!(flop_near(l + 1, &levels), ">1.0e25");
        assert_eq!(flop_near(l - 1, &levels), "<1.0e25");
        assert_eq!(flop_near(996 * pow10(22), &levels), "9.96e24");
        assert_eq!(flop_near(10_004 * pow10(21), &levels), "1.0004e25");
        assert_eq!(flop_near(12 * pow10(24), &levels), "1.2e25", "far enough");
        assert_eq!(flop_near(l + 1, &[]), "1.0e25", "no level, no fuss");
        assert_eq!(
            band_near(
                FlopTotal {
                    low: 8 * pow10(24),
                    central: l,
                    high: l + 1
                },
                &levels
            ),
            "1.0e25 [8.0e24 – >1.0e25]"
        );
    }

    #[test]
    fn quantities_are_plain() {
        assert_eq!(quantity(14.0), "14");
        assert_eq!(quantity(123.4), "123");
        assert_eq!(quantity(700.2), "700");
        assert_eq!(quantity(9.96), "10");
        assert_eq!(quantity(1.46), "1.5");
        assert_eq!(quantity(0.05), "0.050");
        assert_eq!(quantity(0.00123), "0.0012");
        assert_eq!(quantity(0.0), "0");
        assert_eq!(quantity(-0.0), "0");
        assert_eq!(quantity(1e-20), "<0.000000000000001");
        assert_eq!(quantity(400_000.0), "400000");
        assert_eq!(days_of_ms(14 * 86_400_000), "14");
        assert_eq!(days_of_ms(0), "0");
        assert_eq!(mwh_of_mj(7 * 36 * pow10(11)), "7.0");
    }

    #[test]
    fn durations_and_deadlines() {
        const H: i64 = 3_600_000;
        const D: i64 = 24 * H;
        assert_eq!(duration(14 * D), "14 d 00 h");
        assert_eq!(duration(31 * D + 7 * H + 30 * 60_000), "31 d 07 h");
        assert_eq!(duration(7 * H + 5 * 60_000), "7 h 05 min");
        assert_eq!(duration(59_999), "0 min");
        assert_eq!(time_left(13 * D + 4 * H), "13 d 04 h left");
        assert_eq!(
            time_left(-(31 * D + 7 * H + 30 * 60_000)),
            "overdue by 31 d 07 h"
        );
        assert_eq!(time_left(0), "overdue by 0 min");
    }
}
