//! Units of account: FLOP bands per interval (`u64`) and aggregates (`u128`), precisions and
//! method tags, and [`FlopAmount`], the one exact parser for FLOP (and parameter and token)
//! counts as people write them.
//!
//! Why integers: a per-interval estimate is rounded once to whole FLOP and from then on only
//! added. Integer sums are exact and independent of the order in which records arrive, so a
//! replayed or reordered stream can never drift a total. One GPU-interval at the highest
//! peak in the catalogue (10 PFLOP/s FP4) for a day is ~8.6e20, far below `u64::MAX` (1.8e19
//! per interval would need half an hour at that rate; intervals are seconds), and a model's
//! lifetime total fits `u128` with a margin of 10^13.

mod flop_amount;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use flop_amount::{FlopAmount, FlopAmountError};

/// The numeric precision a tensor workload runs at. It decides which dense peak a unit of
/// tensor activity is worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// FP64 on the tensor cores (DMMA).
    Fp64,
    /// FP32 training on the tensor cores as TF32.
    Tf32,
    /// 16-bit training, BF16 or FP16: the same peak on every catalogued GPU.
    Bf16,
    /// 8-bit floating point (Hopper and later, Ada).
    Fp8,
    /// 4-bit floating point (Blackwell).
    Fp4,
}

impl Precision {
    /// All precisions, narrowest last.
    pub const ALL: [Precision; 5] = [
        Precision::Fp64,
        Precision::Tf32,
        Precision::Bf16,
        Precision::Fp8,
        Precision::Fp4,
    ];

    /// The lowercase tag used on the wire, in config and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp64 => "fp64",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
            Precision::Fp8 => "fp8",
            Precision::Fp4 => "fp4",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A precision tag that is not one we know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown precision {given:?}: expected one of fp64, tf32 (or fp32), bf16 (or fp16), fp8, fp4"
)]
pub struct UnknownPrecision {
    /// What was given.
    pub given: String,
}

impl FromStr for Precision {
    type Err = UnknownPrecision;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fp64" => Ok(Precision::Fp64),
            // Frameworks call FP32-on-tensor-cores "fp32" or "tf32"; both run at the TF32 peak.
            "tf32" | "fp32" => Ok(Precision::Tf32),
            "bf16" | "fp16" => Ok(Precision::Bf16),
            "fp8" | "e4m3" | "e5m2" => Ok(Precision::Fp8),
            "fp4" | "nvfp4" | "mxfp4" => Ok(Precision::Fp4),
            _ => Err(UnknownPrecision {
                given: s.to_string(),
            }),
        }
    }
}

/// How an estimate was made. Reports show the mix of methods behind a total, so a reader
/// knows how much of it rests on hardware counters and how much on assumptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Tensor-pipe activity from NVML GPM (Hopper and later) × dense peak × clock factor.
    GpmTensor,
    /// `utilization.gpu` × dense peak × clock factor × an assumed MFU band (pre-Hopper).
    UtilMfu,
    /// A stated model-FLOP utilisation × dense peak (the planner's `--mfu`).
    Mfu,
    /// A figure declared by a person: a plan, 6·N·D, or an inherited base-model compute.
    Declared,
    /// A MIG instance without per-instance GPM: the parent GPU's activity × the instance's
    /// share of its SMs, with a wider band.
    MigFallback,
    /// No estimate could be made (uncatalogued GPU without a peak, no activity reading): the
    /// GPU time and energy are real, the FLOP are not known.
    None,
}

impl Method {
    /// The kebab-case tag used on the wire and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::GpmTensor => "gpm-tensor",
            Method::UtilMfu => "util-mfu",
            Method::Mfu => "mfu",
            Method::Declared => "declared",
            Method::MigFallback => "mig-fallback",
            Method::None => "none",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A method tag that is not one we know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown method {given:?}: expected gpm-tensor, util-mfu, mfu, declared, mig-fallback or none"
)]
pub struct UnknownMethod {
    /// What was given.
    pub given: String,
}

impl FromStr for Method {
    type Err = UnknownMethod;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "gpm-tensor" => Ok(Method::GpmTensor),
            "util-mfu" => Ok(Method::UtilMfu),
            "mfu" => Ok(Method::Mfu),
            "declared" => Ok(Method::Declared),
            "mig-fallback" => Ok(Method::MigFallback),
            "none" => Ok(Method::None),
            _ => Err(UnknownMethod {
                given: s.to_string(),
            }),
        }
    }
}

/// Which bound of a band a decision uses. Compliance decisions default to [`Bound::High`]
/// so that undercounting can never hide a threshold crossing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Bound {
    /// The low bound.
    Low,
    /// The central estimate.
    Central,
    /// The high bound (conservative for thresholds).
    #[default]
    High,
}

impl Bound {
    /// All three bounds, in label order.
    pub const ALL: [Bound; 3] = [Bound::Low, Bound::Central, Bound::High];

    /// The lowercase tag used in metric labels and config.
    pub fn as_str(self) -> &'static str {
        match self {
            Bound::Low => "low",
            Bound::Central => "central",
            Bound::High => "high",
        }
    }
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A bound name that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown bound {given:?}: expected low, central or high")]
pub struct UnknownBound {
    /// What was given.
    pub given: String,
}

impl FromStr for Bound {
    type Err = UnknownBound;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "low" => Ok(Bound::Low),
            "central" => Ok(Bound::Central),
            "high" => Ok(Bound::High),
            _ => Err(UnknownBound {
                given: s.to_string(),
            }),
        }
    }
}

/// FLOP of one GPU over one interval: `low ≤ central ≤ high`, whole FLOP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FlopBand {
    /// Lower bound.
    pub low: u64,
    /// Central estimate.
    pub central: u64,
    /// Upper bound.
    pub high: u64,
}

impl FlopBand {
    /// A band with all three bounds equal.
    pub fn exact(flop: u64) -> Self {
        FlopBand {
            low: flop,
            central: flop,
            high: flop,
        }
    }

    /// Builds a band from floating-point bounds, rounding each to whole FLOP and restoring
    /// the order `low ≤ central ≤ high` that rounding can never break but callers might.
    pub fn from_f64(low: f64, central: f64, high: f64) -> Self {
        let mut v = [to_u64(low), to_u64(central), to_u64(high)];
        v.sort_unstable();
        FlopBand {
            low: v[0],
            central: v[1],
            high: v[2],
        }
    }

    /// The bound named by `bound`.
    pub fn get(&self, bound: Bound) -> u64 {
        match bound {
            Bound::Low => self.low,
            Bound::Central => self.central,
            Bound::High => self.high,
        }
    }

    /// True when `low ≤ central ≤ high`.
    pub fn is_ordered(&self) -> bool {
        self.low <= self.central && self.central <= self.high
    }
}

fn to_u64(x: f64) -> u64 {
    if x.is_nan() || x <= 0.0 {
        0
    } else if x >= u64::MAX as f64 {
        u64::MAX
    } else {
        x.round() as u64
    }
}

/// An aggregate of bands: exact `u128` sums of each bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
pub struct FlopTotal {
    /// Sum of low bounds.
    pub low: u128,
    /// Sum of central estimates.
    pub central: u128,
    /// Sum of high bounds.
    pub high: u128,
}

impl FlopTotal {
    /// The empty total.
    pub const ZERO: FlopTotal = FlopTotal {
        low: 0,
        central: 0,
        high: 0,
    };

    /// Adds one interval's band. Saturates rather than wraps: 2^128 FLOP is ~10^13 times
    /// the largest training run ever reported, so saturation means corrupt input, and a
    /// saturated total stays visibly absurd instead of wrapping to a small number.
    pub fn add_band(&mut self, band: FlopBand) {
        self.low = self.low.saturating_add(u128::from(band.low));
        self.central = self.central.saturating_add(u128::from(band.central));
        self.high = self.high.saturating_add(u128::from(band.high));
    }

    /// Adds another total.
    pub fn add_total(&mut self, other: FlopTotal) {
        self.low = self.low.saturating_add(other.low);
        self.central = self.central.saturating_add(other.central);
        self.high = self.high.saturating_add(other.high);
    }

    /// Subtracts another total (used when rolling records up); saturates at zero.
    pub fn sub_total(&mut self, other: FlopTotal) {
        self.low = self.low.saturating_sub(other.low);
        self.central = self.central.saturating_sub(other.central);
        self.high = self.high.saturating_sub(other.high);
    }

    /// The bound named by `bound`.
    pub fn get(&self, bound: Bound) -> u128 {
        match bound {
            Bound::Low => self.low,
            Bound::Central => self.central,
            Bound::High => self.high,
        }
    }

    /// A total with all three bounds equal (a declared figure).
    pub fn exact(flop: u128) -> Self {
        FlopTotal {
            low: flop,
            central: flop,
            high: flop,
        }
    }
}

impl FromIterator<FlopBand> for FlopTotal {
    fn from_iter<I: IntoIterator<Item = FlopBand>>(iter: I) -> Self {
        let mut t = FlopTotal::ZERO;
        for b in iter {
            t.add_band(b);
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn precision_parses_framework_spellings() {
        assert_eq!("FP16".parse::<Precision>().unwrap(), Precision::Bf16);
        assert_eq!("fp32".parse::<Precision>().unwrap(), Precision::Tf32);
        assert_eq!("nvfp4".parse::<Precision>().unwrap(), Precision::Fp4);
        let err = "int4".parse::<Precision>().unwrap_err();
        assert!(err.to_string().contains("expected one of"));
    }

    #[test]
    fn band_from_f64_rounds_and_orders() {
        let b = FlopBand::from_f64(10.4, 9.6, 12.5);
        assert_eq!((b.low, b.central, b.high), (10, 10, 13));
        assert!(b.is_ordered());
        assert_eq!(FlopBand::from_f64(f64::NAN, -1.0, 1e30).high, u64::MAX);
    }

    fn band() -> impl Strategy<Value = FlopBand> {
        (0u64..1 << 60, 0u64..1 << 60, 0u64..1 << 60)
            .prop_map(|(a, b, c)| FlopBand::from_f64(a as f64, b as f64, c as f64))
    }

    proptest! {
        /// Aggregation is exact and independent of order: any permutation of the same
        /// records gives the same u128 sums, equal to the sum computed without rounding.
        #[test]
        fn aggregation_is_exact_and_order_independent(
            bands in proptest::collection::vec(band(), 0..200),
            seed in any::<u64>(),
        ) {
            let forward: FlopTotal = bands.iter().copied().collect();
            let mut shuffled = bands.clone();
            // A deterministic shuffle from the seed (Fisher-Yates with an LCG).
            let mut s = seed | 1;
            for i in (1..shuffled.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let j = (s >> 33) as usize % (i + 1);
                shuffled.swap(i, j);
            }
            let backward: FlopTotal = shuffled.into_iter().collect();
            prop_assert_eq!(forward, backward);
            let exact: u128 = bands.iter().map(|b| u128::from(b.central)).sum();
            prop_assert_eq!(forward.central, exact);
            prop_assert!(forward.low <= forward.central && forward.central <= forward.high);
        }
    }
}

/// Serde for a `u128` inside an internally tagged enum (`#[serde(tag = ...)]`).
///
/// Why: serde buffers an internally tagged enum's fields in its private `Content` type before
/// picking the variant, and `Content` has no 128-bit integer, so a derived `u128` field there
/// fails to deserialize ("u128 is not supported") and the collector could not read back a
/// stored clock. This writes values up to `u64::MAX` as JSON integers (unchanged shape) and
/// larger ones as exact decimal strings, and reads integers, `u128`s and decimal strings;
/// floats are refused because they would silently round a FLOP figure.
pub mod u128_compat {
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    /// Serializes as a `u64` when it fits, else as a decimal string.
    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        match u64::try_from(*v) {
            Ok(small) => s.serialize_u64(small),
            Err(_) => s.serialize_str(&v.to_string()),
        }
    }

    struct V;

    impl Visitor<'_> for V {
        type Value = u128;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a non-negative integer or its decimal string")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u128, E> {
            Ok(u128::from(v))
        }
        fn visit_u128<E: de::Error>(self, v: u128) -> Result<u128, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u128, E> {
            u128::try_from(v).map_err(|_| E::custom("negative FLOP figure"))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<u128, E> {
            v.parse()
                .map_err(|_| E::custom(format!("not a decimal integer: {v:?}")))
        }
    }

    /// Deserializes from an integer or a decimal string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        d.deserialize_any(V)
    }
}

/// Serde for a [`FlopTotal`] inside an internally tagged enum; see [`u128_compat`] for why.
pub mod flop_total_compat {
    use super::FlopTotal;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Compat {
        #[serde(with = "super::u128_compat")]
        low: u128,
        #[serde(with = "super::u128_compat")]
        central: u128,
        #[serde(with = "super::u128_compat")]
        high: u128,
    }

    /// Serializes `{low, central, high}` with [`super::u128_compat`] fields.
    pub fn serialize<S: Serializer>(v: &FlopTotal, s: S) -> Result<S::Ok, S::Error> {
        Compat {
            low: v.low,
            central: v.central,
            high: v.high,
        }
        .serialize(s)
    }

    /// Deserializes what [`serialize`] writes (or plain integers).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<FlopTotal, D::Error> {
        let c = Compat::deserialize(d)?;
        Ok(FlopTotal {
            low: c.low,
            central: c.central,
            high: c.high,
        })
    }
}

#[cfg(test)]
mod compat_tests {
    use crate::clock::FactKind;
    use crate::threshold::Level;
    use crate::units::FlopTotal;

    #[test]
    fn u128_inside_tagged_enums_round_trips_through_json_exactly() {
        let big = 21_000_000_000_000_000_000_123u128;
        let level = Level::Absolute { flop: big };
        let json = serde_json::to_string(&level).unwrap();
        assert_eq!(serde_json::from_str::<Level>(&json).unwrap(), level);
        let fact = FactKind::EarlierEvidence {
            reason: crate::clock::StartReason::Measured,
            at_ms: 1,
            implied_deadline_ms: 2,
            measured: FlopTotal {
                low: 5,
                central: big,
                high: u128::MAX,
            },
        };
        let json = serde_json::to_string(&fact).unwrap();
        assert!(
            json.contains("\"low\":5"),
            "small values stay integers: {json}"
        );
        assert_eq!(serde_json::from_str::<FactKind>(&json).unwrap(), fact);
    }
}
