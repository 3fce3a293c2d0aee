//! [`FlopAmount`]: a whole number of FLOP (or of parameters, or tokens) as people write it,
//! held exactly, parsed with bounded work.
//!
//! One rule for every door a number comes through (config files, CLI flags, job labels,
//! records on the wire, the admin API), so `2.5e24` cannot mean one thing in a pod annotation
//! and another in `flopmeter model set`:
//! - digits, an optional fraction and an optional exponent (`70000000000`, `70e9`, `2.5e24`,
//!   `1E+25`); `_` may separate digits (`70_000_000_000`); a leading `+` is allowed;
//! - the value is exact (`u128`): going through `f64` would turn 10^25 into
//!   10000000000000000905969664;
//! - a fraction is allowed only where the result is whole (`2.5e24` yes, `2.5` and `1e-3` no):
//!   a plan of "2.5 FLOP" is a typo, not a number to round;
//! - work is bounded whatever the input: at most [`FlopAmount::MAX_LEN`] bytes are looked at
//!   once each, and an exponent beyond ±[`FlopAmount::MAX_EXPONENT`] is refused without being
//!   applied (`0e2147483647` once made a parser multiply zero by ten two billion times inside
//!   the ledger's transaction).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A whole, non-negative number of FLOP, exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct FlopAmount(pub u128);

/// Why a text is not a [`FlopAmount`]. Every message says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlopAmountError {
    /// Not a decimal number in plain or `e` notation.
    #[error("{0:?} is not a number: write a whole number such as 70000000000, 70e9 or \"2.5e24\"")]
    Syntax(String),
    /// Negative amounts make no sense for compute, parameters or tokens.
    #[error("{0:?} is negative; FLOP, parameter and token counts are never negative")]
    Negative(String),
    /// The value has a fractional part (`2.5`, `1e-3`).
    #[error(
        "{0:?} is not a whole number: a fraction is allowed only when the exponent makes it \
         whole (2.5e24 yes, 2.5 no)"
    )]
    NotWhole(String),
    /// The value does not fit in 128 bits (about 3.4e38).
    #[error("{0:?} is too large: the limit is about 3.4e38")]
    TooLarge(String),
    /// The exponent is outside ±[`FlopAmount::MAX_EXPONENT`]; no real amount needs it.
    #[error(
        "{text:?} has an exponent outside -{max}..={max}: write the amount with an exponent \
         in that range (e.g. 1e25)",
        max = FlopAmount::MAX_EXPONENT
    )]
    ExponentOutOfRange {
        /// The text as given (shortened when long).
        text: String,
    },
    /// Longer than [`FlopAmount::MAX_LEN`] bytes.
    #[error(
        "a number of {len} characters is too long (at most {max}): write it in e notation, \
         e.g. 1e25",
        max = FlopAmount::MAX_LEN
    )]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
}

impl FlopAmount {
    /// Longest text accepted, in bytes: u128 has 39 digits, so 64 leaves room for
    /// separators, a fraction and an exponent while bounding the work per parse.
    pub const MAX_LEN: usize = 64;

    /// Largest exponent magnitude accepted: `u128::MAX` is about 3.4e38, so no whole amount
    /// written with a sane mantissa needs more.
    pub const MAX_EXPONENT: u32 = 40;

    /// The amount as a `u128`.
    pub fn get(self) -> u128 {
        self.0
    }

    /// Parses `text` by the module's rule. Whitespace around it is ignored.
    pub fn parse(text: &str) -> Result<FlopAmount, FlopAmountError> {
        let t = text.trim();
        if t.len() > Self::MAX_LEN {
            return Err(FlopAmountError::TooLong { len: t.len() });
        }
        let syntax = || FlopAmountError::Syntax(t.to_string());
        let unsigned = match t.as_bytes().first() {
            Some(b'-') => return Err(FlopAmountError::Negative(t.to_string())),
            Some(b'+') => &t[1..],
            _ => t,
        };
        let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
            Some(i) => (&unsigned[..i], Some(&unsigned[i + 1..])),
            None => (unsigned, None),
        };
        let exponent = match exponent {
            None => 0i64,
            Some(e) => parse_exponent(e).ok_or_else(syntax)?.map_err(|()| {
                FlopAmountError::ExponentOutOfRange {
                    text: t.to_string(),
                }
            })?,
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if !digits_ok(int) || !digits_ok(frac) || (digit_count(int) + digit_count(frac) == 0) {
            return Err(syntax());
        }
        // value = (int ‖ frac) × 10^(exponent − digits in frac). Both lengths are bounded by
        // MAX_LEN and the exponent by MAX_EXPONENT, so `shift` is small.
        let shift = exponent - digit_count(frac) as i64;
        let digits = int.bytes().chain(frac.bytes()).filter(u8::is_ascii_digit);
        let total = digit_count(int) + digit_count(frac);
        // Digits a negative shift cuts off must all be zero, or the amount is not whole.
        let keep = if shift < 0 {
            total.saturating_sub(shift.unsigned_abs() as usize)
        } else {
            total
        };
        let mut value: u128 = 0;
        for (i, d) in digits.enumerate() {
            let d = u128::from(d - b'0');
            if i >= keep {
                if d != 0 {
                    return Err(FlopAmountError::NotWhole(t.to_string()));
                }
                continue;
            }
            value = value
                .checked_mul(10)
                .and_then(|v| v.checked_add(d))
                .ok_or_else(|| FlopAmountError::TooLarge(t.to_string()))?;
        }
        if shift > 0 && value != 0 {
            let scale = 10u128
                .checked_pow(shift as u32)
                .ok_or_else(|| FlopAmountError::TooLarge(t.to_string()))?;
            value = value
                .checked_mul(scale)
                .ok_or_else(|| FlopAmountError::TooLarge(t.to_string()))?;
        }
        Ok(FlopAmount(value))
    }
}

/// Digits with single `_` separators between them (or nothing at all).
fn digits_ok(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter().all(|c| c.is_ascii_digit() || *c == b'_')
        && b.first() != Some(&b'_')
        && b.last() != Some(&b'_')
        && !s.contains("__")
}

fn digit_count(s: &str) -> usize {
    s.bytes().filter(u8::is_ascii_digit).count()
}

/// An exponent: `None` when it is not one (syntax), `Some(Err)` when its magnitude is beyond
/// [`FlopAmount::MAX_EXPONENT`]. Leading zeros are skipped without counting them, so the
/// work is one look at each byte.
fn parse_exponent(e: &str) -> Option<Result<i64, ()>> {
    let (negative, digits) = match e.as_bytes().first() {
        Some(b'-') => (true, &e[1..]),
        Some(b'+') => (false, &e[1..]),
        _ => (false, e),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let significant = digits.trim_start_matches('0');
    if significant.len() > 3 {
        return Some(Err(()));
    }
    let magnitude: u32 = if significant.is_empty() {
        0
    } else {
        significant.parse().ok()?
    };
    if magnitude > FlopAmount::MAX_EXPONENT {
        return Some(Err(()));
    }
    let m = i64::from(magnitude);
    Some(Ok(if negative { -m } else { m }))
}

impl std::str::FromStr for FlopAmount {
    type Err = FlopAmountError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FlopAmount::parse(s)
    }
}

impl fmt::Display for FlopAmount {
    /// Every digit: an exact figure is never shown rounded here.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl From<u128> for FlopAmount {
    fn from(v: u128) -> Self {
        FlopAmount(v)
    }
}

impl Serialize for FlopAmount {
    /// As an exact decimal string, so it survives TOML and JSON unchanged.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for FlopAmount {
    /// From a string by [`FlopAmount::parse`], or from an integer. A float is read through
    /// its shortest decimal form (TOML `1e25` → `"1e25"` → exactly 10^25), which is what its
    /// author typed.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = FlopAmount;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number of FLOP, best as a string such as \"1e25\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<FlopAmount, E> {
                FlopAmount::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<FlopAmount, E> {
                Ok(FlopAmount(u128::from(v)))
            }
            fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<FlopAmount, E> {
                Ok(FlopAmount(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<FlopAmount, E> {
                u128::try_from(v)
                    .map(FlopAmount)
                    .map_err(|_| E::custom(FlopAmountError::Negative(v.to_string())))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<FlopAmount, E> {
                FlopAmount::parse(&format!("{v:e}")).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pow10(n: u32) -> u128 {
        10u128.pow(n)
    }

    #[test]
    fn amounts_are_exact() {
        let cases: &[(&str, Result<u128, &str>)] = &[
            ("1e25", Ok(pow10(25))),
            ("1E25", Ok(pow10(25))),
            ("1e+25", Ok(pow10(25))),
            ("2.5e24", Ok(25 * pow10(23))),
            ("3.33e24", Ok(333 * pow10(22))),
            ("70000000000", Ok(70_000_000_000)),
            ("70e9", Ok(70_000_000_000)),
            ("70_000_000_000", Ok(70_000_000_000)),
            (" +7 ", Ok(7)),
            ("1.50e1", Ok(15)),
            ("2500e-2", Ok(25)),
            ("0.0", Ok(0)),
            ("0e40", Ok(0)),
            ("0e-40", Ok(0)),
            (".5e1", Ok(5)),
            ("5.e1", Ok(50)),
            ("340282366920938463463374607431768211455", Ok(u128::MAX)),
            ("2.5", Err("not a whole number")),
            ("1e-3", Err("not a whole number")),
            ("1.5e0", Err("not a whole number")),
            ("-1e25", Err("negative")),
            ("1e39", Err("too large")),
            ("340282366920938463463374607431768211456", Err("too large")),
            ("0e2147483647", Err("exponent outside")),
            ("1e-2147483648", Err("exponent outside")),
            ("1e41", Err("exponent outside")),
            (
                "1e0000000000000000000000000000000000000000000000000005",
                Ok(100_000),
            ),
            ("abc", Err("not a number")),
            ("", Err("not a number")),
            ("1e", Err("not a number")),
            (".", Err("not a number")),
            ("_1", Err("not a number")),
            ("1__0", Err("not a number")),
            ("1,5", Err("not a number")),
            ("1e2.5", Err("not a number")),
            ("inf", Err("not a number")),
            ("NaN", Err("not a number")),
            ("0x10", Err("not a number")),
        ];
        for (text, want) in cases {
            let got = FlopAmount::parse(text);
            match want {
                Ok(v) => assert_eq!(got, Ok(FlopAmount(*v)), "{text}"),
                Err(msg) => {
                    let e = got.expect_err(text).to_string();
                    assert!(e.contains(msg), "{text}: {e}");
                }
            }
        }
    }

    #[test]
    fn long_input_is_refused_before_any_work() {
        let huge = format!("{}e2147483647", "9".repeat(1_000_000));
        let e = FlopAmount::parse(&huge).unwrap_err();
        assert!(matches!(e, FlopAmountError::TooLong { .. }), "{e}");
        assert!(e.to_string().contains("too long"), "{e}");
    }

    #[test]
    fn serde_reads_strings_integers_and_floats_exactly() {
        #[derive(Deserialize, Serialize)]
        struct T {
            a: FlopAmount,
        }
        let t: T = toml::from_str("a = 1e25").unwrap();
        assert_eq!(t.a, FlopAmount(pow10(25)));
        let t: T = toml::from_str("a = \"2.1e25\"").unwrap();
        assert_eq!(t.a, FlopAmount(21 * pow10(24)));
        let t: T = serde_json::from_str("{\"a\": 5000}").unwrap();
        assert_eq!(t.a, FlopAmount(5000));
        assert_eq!(
            serde_json::to_string(&T {
                a: FlopAmount(u128::MAX)
            })
            .unwrap(),
            format!("{{\"a\":\"{}\"}}", u128::MAX)
        );
        assert!(serde_json::from_str::<T>("{\"a\": \"0e2147483647\"}").is_err());
        assert!(serde_json::from_str::<T>("{\"a\": -1}").is_err());
    }
}
