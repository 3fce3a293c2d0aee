//! Fuzz target `flop_amount`: the one exact parser of FLOP, parameter and token counts
//! (`flopmeter_core::units::FlopAmount`), which every door uses: config files, CLI flags,
//! job labels, record declarations at ingest and the admin API.
//!
//! Property: nothing panics; the parser agrees with an independent reference written the
//! slow, obvious way (build the whole decimal string, then let `u128::from_str` judge it);
//! every refusal has a message. The inputs lean on what once froze the collector: long
//! exponents (`0e2147483647`), huge mantissas, and zero with any exponent; a parser whose
//! work grew with the exponent would not finish this target.
//!
//! Inputs: every file of `fuzz/corpus/flop_amount`, then `FLOPMETER_FUZZ_CASES` (default 600)
//! byte-level mutations of them, as many structured numbers (sign, digits with separators,
//! fraction, exponent from the extremes) and as many `0e<any i64>` / `9…9e<n>` inputs.

use crate::fuzz_support;

use flopmeter_core::units::FlopAmount;
use fuzz_support::{corpus, mutate, mutation, no_panic};
use proptest::prelude::*;

const TARGET: &str = "flop_amount";

/// The reference: what the text denotes, decided without any cleverness. `None` = refused.
fn reference(text: &str) -> Option<u128> {
    let t = text.trim();
    if t.len() > FlopAmount::MAX_LEN {
        return None;
    }
    let t = t.strip_prefix('+').unwrap_or(t);
    let (mantissa, exponent) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], Some(&t[i + 1..])),
        None => (t, None),
    };
    let exponent: i64 = match exponent {
        None => 0,
        Some(e) => {
            let (neg, d) = match e.strip_prefix('-') {
                Some(d) => (true, d),
                None => (false, e.strip_prefix('+').unwrap_or(e)),
            };
            if d.is_empty() || !d.chars().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let d = d.trim_start_matches('0');
            // Any magnitude above the bound is refused; below it, it fits an i64.
            if d.len() > 3 || d.parse::<i64>().unwrap_or(0) > i64::from(FlopAmount::MAX_EXPONENT) {
                return None;
            }
            let m: i64 = if d.is_empty() { 0 } else { d.parse().unwrap() };
            if neg { -m } else { m }
        }
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    for part in [int, frac] {
        if part.starts_with('_') || part.ends_with('_') || part.contains("__") {
            return None;
        }
        if !part.chars().all(|c| c.is_ascii_digit() || c == '_') {
            return None;
        }
    }
    let mut digits: String = format!("{int}{frac}").replace('_', "");
    if digits.is_empty() {
        return None;
    }
    let shift = exponent - frac.replace('_', "").len() as i64;
    if shift >= 0 {
        digits.push_str(&"0".repeat(shift as usize));
    } else {
        let cut = (-shift) as usize;
        let keep = digits.len().saturating_sub(cut);
        if digits[keep..].chars().any(|c| c != '0') {
            return None;
        }
        digits.truncate(keep);
    }
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Some(0);
    }
    digits.parse::<u128>().ok()
}

fn check(text: &str) -> Result<(), TestCaseError> {
    let got = no_panic(text.as_bytes(), || FlopAmount::parse(text))?;
    let want = reference(text);
    match (&got, want) {
        (Ok(v), Some(w)) if v.get() == w => Ok(()),
        (Err(e), None) if !e.to_string().trim().is_empty() => Ok(()),
        _ => Err(TestCaseError::fail(format!(
            "{text:?}: parser says {got:?}, the reference {want:?}"
        ))),
    }
}

#[test]
fn flop_amount_corpus_replays() {
    let c = corpus(TARGET);
    assert!(c.len() >= 10, "the corpus is missing");
    for (name, bytes) in &c {
        let text = String::from_utf8_lossy(bytes);
        if let Err(e) = check(&text) {
            panic!("corpus entry {name}: {e}");
        }
    }
    // The regression the target exists for: refused, with the reason, not computed.
    let e = FlopAmount::parse("0e2147483647").unwrap_err().to_string();
    assert!(e.contains("exponent outside"), "{e}");
    // And the corpus's valid entries stay valid (a parser refusing everything would pass).
    assert_eq!(
        FlopAmount::parse("2.5e24").unwrap().get(),
        25 * 10u128.pow(23)
    );
}

fn corpus_cached() -> &'static [(String, Vec<u8>)] {
    static C: std::sync::OnceLock<Vec<(String, Vec<u8>)>> = std::sync::OnceLock::new();
    C.get_or_init(|| corpus(TARGET))
}

fn digits_with_separators(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![8 => (0u8..10).prop_map(|d| (b'0' + d) as char), 1 => Just('_')],
        0..max,
    )
    .prop_map(|v| v.into_iter().collect())
}

fn exponent() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        (-45i64..45).prop_map(|e| format!("e{e}")),
        (-45i64..45).prop_map(|e| format!("E+{e}")),
        any::<i32>().prop_map(|e| format!("e{e}")),
        any::<i64>().prop_map(|e| format!("e{e}")),
        Just("e2147483647".to_string()),
        Just("e-2147483648".to_string()),
        Just("e99999999999999999999999999999".to_string()),
        (0usize..60, 0u32..45).prop_map(|(z, e)| format!("e{}{e}", "0".repeat(z))),
        Just("e".to_string()),
        Just("e-".to_string()),
    ]
}

fn structured() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just(""), Just("+"), Just("-"), Just(" ")],
        digits_with_separators(50),
        prop_oneof![Just(None), digits_with_separators(30).prop_map(Some)],
        exponent(),
    )
        .prop_map(|(sign, int, frac, exp)| match frac {
            Some(f) => format!("{sign}{int}.{f}{exp}"),
            None => format!("{sign}{int}{exp}"),
        })
}

proptest! {
    #![proptest_config(fuzz_support::config(600))]

    #[test]
    fn flop_amount_mutated_corpus(
        seed in any::<prop::sample::Index>(),
        muts in prop::collection::vec(mutation(), 1..6),
    ) {
        let c = corpus_cached();
        let bytes = mutate(&c[seed.index(c.len())].1, &muts, c);
        check(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn flop_amount_structured(text in structured()) {
        check(&text)?;
    }

    #[test]
    fn flop_amount_zero_with_any_exponent_and_huge_mantissas(
        e in any::<i64>(),
        zeros in 0usize..80,
        nines in 1usize..200,
        small in -45i64..45,
    ) {
        check(&format!("0e{e}"))?;
        check(&format!("{}.0e{e}", "0".repeat(zeros)))?;
        check(&format!("{}e{small}", "9".repeat(nines)))?;
        check(&format!("{}e{e}", "9".repeat(nines)))?;
    }
}
