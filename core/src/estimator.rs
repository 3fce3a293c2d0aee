//! The FLOP estimator: what one GPU executed over one interval, as `[low, central, high]`.
//!
//! Two methods (DESIGN.md §3, `reference/gpu-peaks.md`):
//!
//! - **GPM** (Hopper and later), [`Activity::Gpm`]:
//!   `FLOP = Δt · [ tensor · P_tensor(prec) · c_t + (fp32 · P_fp32 + fp16 · P_fp16 + fp64 · P_fp64) · c_s ]`
//!   with `c_t = min(1, f_SM / f_tensor_ref)` and `c_s = min(1, f_SM / f_max)`.
//!   Tensor activity counts busy cycles, not operations, and cannot tell BF16 from FP8 or FP4:
//!   the central estimate assumes BF16; the low bound is 0.85 × central for tile quantisation
//!   (padded tiles count as busy).
//! - **util × MFU** (no GPM), [`Activity::Util`]:
//!   `FLOP = Δt · util_gpu · P_tensor(prec) · c_t · MFU` with MFU 0.25 (low) and 0.40
//!   (central). `util_gpu · P` is a hard upper bound (a one-thread kernel reads 100%), so it is
//!   the high bound, never an estimate.
//!
//! **The high bound never undercounts** (see [`estimate_share`]): the fastest precision the
//! part has (FP4 on Blackwell, FP8 on Hopper/Ada) unless one is declared, a 3% [`HIGH_MARGIN`]
//! for peak rounding, the clock headroom above the tensor reference clock instead of the
//! sampled clock, the non-tensor pipes at full rate, and for util × MFU the hard bound.
//!
//! A declared precision removes the precision uncertainty: the band narrows to
//! `[0.85 · c, 1.03 · headroom · c]` with `c` at the declared precision (GPM), or to
//! `[0.25, hard bound]` at that precision (util × MFU).
//!
//! Firmware-capped parts (H20), and parts whose reference clock no source verified, get no
//! clock scaling: their datasheet peak is used as is.
//!
//! MIG instances are estimated over their share of the GPU's SMs ([`estimate_share`]), or,
//! without per-instance GPM, from the whole GPU's activity with bounds that never charge one
//! instance another's work ([`mig_fallback`]). A device whose NVML name and PCI id disagree
//! gets a band covering both models ([`estimate_conflicted`]).

use serde::Serialize;

use crate::catalogue::GpuModel;
use crate::units::{FlopBand, Method, Precision};

/// Tile-quantisation factor for the low bound of tensor-activity estimates (judgement, from
/// cuBLAS/CUTLASS reaching 90–95% of peak on tuned GEMMs and the OFU paper's correction).
pub const TILE_FACTOR: f64 = 0.85;

/// Headroom on the high bound of tensor-activity estimates. Datasheet peaks are rounded
/// (H100 SXM: 989 TFLOP/s quoted, 132 SMs × 4096 × 1.83 GHz = 989.4), and the clock factor uses
/// the mean of sampled clocks, so a run at exactly the assumed precision can land a fraction of
/// a percent above `tensor × peak`. Threshold decisions use the high bound, so it must not sit
/// below the truth; 3% covers both effects with margin and is small beside the band itself.
pub const HIGH_MARGIN: f64 = 1.03;

/// MFU assumed for the util × MFU method: low, central, and the "typical high" (Megatron,
/// MegaScale, Llama 3, PaLM report 38–56%; Epoch's default is 30–40%). The estimator's high
/// bound does not use the third figure: tuned GEMMs reach 75–80% MFU, so it takes the hard
/// bound `util × peak` instead.
pub const MFU_BAND: (f64, f64, f64) = (0.25, 0.40, 0.55);

/// GPM readings over an interval, as fractions in `[0, 1]` (NVML reports percent).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct GpmActivity {
    /// Any-tensor pipe activity.
    pub tensor: f64,
    /// Non-tensor FP32 pipe activity.
    pub fp32: f64,
    /// Non-tensor FP16 pipe activity.
    pub fp16: f64,
    /// Non-tensor FP64 pipe activity.
    pub fp64: f64,
    /// Some non-tensor pipe metric was not read (it counts as 0 above). The high bound then
    /// takes the vector pipes at their full peak: a metric that did not come back is not a
    /// pipe that did nothing, and the high bound must never undercount.
    #[serde(default)]
    pub pipes_unread: bool,
}

/// What was measured on one GPU over one interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Activity {
    /// Tensor and pipe activity from NVML GPM.
    Gpm(GpmActivity),
    /// Only `utilization.gpu` (fraction of time any kernel ran).
    Util {
        /// `utilization.gpu` as a fraction.
        gpu_util: f64,
    },
}

/// One interval's input to the estimator.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    /// Length in seconds.
    pub seconds: f64,
    /// What was measured.
    pub activity: Activity,
    /// Mean SM clock over the interval (MHz), if known. Unknown means no clock scaling,
    /// which can only overstate (the factor is capped at 1).
    pub mean_sm_clock_mhz: Option<f64>,
    /// The precision the workload declared, if any.
    pub declared_precision: Option<Precision>,
}

/// Why an estimate could not be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EstimateError {
    /// The interval length is negative, NaN or infinite.
    #[error("interval length {0} s is not a finite non-negative number")]
    BadInterval(f64),
    /// A utilisation is outside `[0, 1]` (beyond a 5% reporting tolerance) or not finite.
    #[error("{field} = {value} is outside 0..1")]
    BadUtilisation {
        /// Which reading.
        field: &'static str,
        /// Its value.
        value: f64,
    },
    /// The clock is negative, NaN or infinite.
    #[error("SM clock {0} MHz is not a finite non-negative number")]
    BadClock(f64),
    /// A share of the GPU's SMs outside `(0, 1]`.
    #[error("SM share {0} is outside 0..1")]
    BadShare(f64),
    /// The model has no peak for the precision the estimate needs.
    #[error("{gpu} has no dense {precision} tensor peak in the catalogue")]
    NoPeak {
        /// Catalogue id.
        gpu: &'static str,
        /// The precision.
        precision: Precision,
    },
}

/// Flags an auditor should see beside an estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct EstimateFlags {
    /// The peak came from the operator, not the catalogue.
    pub unknown_peak: bool,
    /// A precision was declared but the part has no peak for it, so the band stayed wide.
    pub declared_precision_unsupported: bool,
    /// No clock scaling was applied (firmware-capped part, unverified clock, or no clock).
    pub unscaled_clock: bool,
    /// The NVML name and the PCI id name different catalogue models; the band covers both.
    pub peak_conflict: bool,
}

/// The estimator's answer for one interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimate {
    /// FLOP over the interval.
    pub flop: FlopBand,
    /// The method used.
    pub method: Method,
    /// The precision behind the central estimate.
    pub precision: Precision,
    /// Whether that precision was declared (and honoured) rather than assumed.
    pub precision_declared: bool,
    /// Flags for the record.
    pub flags: EstimateFlags,
}

/// Estimates the FLOP `gpu` executed over `interval` (the whole GPU).
///
/// Utilisations up to 1.05 are clamped to 1: NVML rounds, and a sampler that reads a few
/// percent over is reporting a busy GPU, not an impossible one. Anything further out is an
/// error, because an estimator that silently accepted 2.0 would double a total.
pub fn estimate(gpu: &GpuModel, interval: &Interval) -> Result<Estimate, EstimateError> {
    estimate_share(gpu, interval, 1.0)
}

/// [`estimate`] for activity measured over a fraction `sm_share` of the GPU's streaming
/// multiprocessors: a MIG instance, whose GPM metrics are percent of its own SMs, so its peak
/// is `sm_share` × the GPU's (`sm_count / gpu_sm_count`). 1 for a whole GPU.
///
/// # The high bound
/// It is a promise to compliance officers that the truth is never above it, so every input
/// it depends on takes its most generous value: the fastest precision the part has (unless
/// declared), [`HIGH_MARGIN`], the part's [`GpuModel::clock_headroom`] instead of the sampled
/// clock (the clock between two samples is unknown), the non-tensor pipes at their full
/// rate, and for util × MFU the hard bound `util × peak` (MFU 1) rather than an MFU guess:
/// tuned GEMMs reach 75–80% MFU, above any "typical" high.
pub fn estimate_share(
    gpu: &GpuModel,
    interval: &Interval,
    sm_share: f64,
) -> Result<Estimate, EstimateError> {
    let dt = interval.seconds;
    if !dt.is_finite() || dt < 0.0 {
        return Err(EstimateError::BadInterval(dt));
    }
    if !(sm_share.is_finite() && sm_share > 0.0 && sm_share <= 1.0) {
        return Err(EstimateError::BadShare(sm_share));
    }
    let clock = match interval.mean_sm_clock_mhz {
        Some(f) if !f.is_finite() || f < 0.0 => return Err(EstimateError::BadClock(f)),
        other => other,
    };

    let mut flags = EstimateFlags {
        unknown_peak: gpu.operator_supplied,
        ..EstimateFlags::default()
    };
    let (central_prec, high_prec, declared) = precisions(gpu, interval.declared_precision);
    flags.declared_precision_unsupported = interval.declared_precision.is_some() && !declared;

    let c_t = clock_factor(gpu, clock, gpu.tensor_ref_clock_mhz, &mut flags);
    let peak = |p: Precision| -> Result<f64, EstimateError> {
        gpu.peaks
            .tensor(p)
            .map(|t| t * 1e12)
            .ok_or(EstimateError::NoPeak {
                gpu: gpu.id,
                precision: p,
            })
    };
    let p_central = peak(central_prec)? * sm_share;
    let p_high = peak(high_prec)? * sm_share * HIGH_MARGIN * gpu.clock_headroom();
    let p = &gpu.peaks;
    let vector_peak =
        (p.fp32.unwrap_or(0.0) + p.fp16_vector().unwrap_or(0.0) + p.fp64.unwrap_or(0.0))
            * 1e12
            * sm_share;

    // An operator-supplied peak is used like a catalogued one: GPM tensor activity measures
    // busy time already, so an MFU factor on top of it would undercount (by 2.5x at MFU 0.4).
    let (flop, method) = match interval.activity {
        Activity::Gpm(g) => {
            let tensor = unit("tensor_util", g.tensor)?;
            let fp32 = unit("fp32_util", g.fp32)?;
            let fp16 = unit("fp16_util", g.fp16)?;
            let fp64 = unit("fp64_util", g.fp64)?;
            let mut scalar_flags = flags;
            let c_s = clock_factor(gpu, clock, gpu.max_sm_clock_mhz, &mut scalar_flags);
            let vector = (fp32 * p.fp32.unwrap_or(0.0)
                + fp16 * p.fp16_vector().unwrap_or(0.0)
                + fp64 * p.fp64.unwrap_or(0.0))
                * 1e12
                * sm_share;
            let central = dt * (tensor * p_central * c_t + vector * c_s);
            // Vector peaks are quoted at the max boost clock: never above them.
            let vector_high = if g.pipes_unread { vector_peak } else { vector };
            let high = dt * (tensor * p_high + vector_high);
            let low = dt * (TILE_FACTOR * tensor * p_central * c_t + vector * c_s);
            (FlopBand::from_f64(low, central, high), Method::GpmTensor)
        }
        Activity::Util { gpu_util } => {
            let u = unit("gpu_util", gpu_util)?;
            let (lo, mid, _) = MFU_BAND;
            let base = dt * u * c_t;
            (
                FlopBand::from_f64(
                    base * p_central * lo,
                    base * p_central * mid,
                    dt * u * (p_high + vector_peak),
                ),
                Method::UtilMfu,
            )
        }
    };

    Ok(Estimate {
        flop,
        method,
        precision: central_prec,
        precision_declared: declared,
        flags,
    })
}

/// [`estimate_share`] for a device whose PCI id names `gpu` and whose NVML name names
/// `other` ([`crate::catalogue::name_conflict`]). The central estimate stays `gpu`'s (the PCI
/// id is the more specific identification), but the band covers both models: low is the
/// lower of the two lows and high the higher of the two highs, so whichever model the device
/// really is, its truth stays inside. Flagged `peak_conflict`.
pub fn estimate_conflicted(
    gpu: &GpuModel,
    other: &GpuModel,
    interval: &Interval,
    sm_share: f64,
) -> Result<Estimate, EstimateError> {
    let mut e = estimate_share(gpu, interval, sm_share)?;
    // The other model may lack a peak for a declared precision: then its figure cannot be
    // formed and the first model's band stands, still flagged.
    if let Ok(o) = estimate_share(other, interval, sm_share) {
        e.flop = FlopBand {
            low: e.flop.low.min(o.flop.low),
            central: e.flop.central,
            high: e.flop.high.max(o.flop.high),
        };
    }
    e.flags.peak_conflict = true;
    Ok(e)
}

/// One MIG instance of a GPU for [`mig_fallback`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MigSlice {
    /// The instance's share of the GPU's SMs, in `(0, 1]`.
    pub sm_share: f64,
    /// Its own GPM activity (percent of its SMs, as fractions), when per-instance GPM gave
    /// it for this interval; `None` for an instance that needs the fallback.
    pub activity: Option<GpmActivity>,
}

/// Estimates for the MIG instances that have no per-instance GPM reading this interval
/// (`slices[i].activity == None`), from the activity of the whole GPU (`parent`), in
/// [`Method::MigFallback`]. Only instances with work on them (running processes) should be
/// passed. Returns one estimate per slice without activity, in order.
///
/// No instance is charged another's work beyond what the parent's reading allows, and the
/// band is wide where the split is unknown. In units of the GPU's SMs, with `X` the parent's
/// activity of one pipe, `R = X − Σ` the known instances' part and `S` the unknown
/// instances' total share, an unknown instance `i` of share `s`:
/// - can hold at most `min(s, X)`: the high bound (its own SMs fully busy, or all the GPU's
///   activity);
/// - must hold at least `max(0, R − (S − s))`: the low bound (what the others cannot hold);
/// - holds `min(s, R · s / S)` centrally (the residual split by SM share).
///
/// Without GPM on the parent (`Activity::Util`), `utilization.gpu` is a time fraction, so
/// each instance gets the util × MFU band over its own share.
pub fn mig_fallback(
    gpu: &GpuModel,
    parent: &Interval,
    slices: &[MigSlice],
) -> Result<Vec<Estimate>, EstimateError> {
    let as_fallback = |mut e: Estimate| {
        e.method = Method::MigFallback;
        e
    };
    let unknown: Vec<f64> = slices
        .iter()
        .filter(|s| s.activity.is_none())
        .map(|s| s.sm_share)
        .collect();
    let g = match parent.activity {
        Activity::Gpm(g) => g,
        Activity::Util { .. } => {
            return unknown
                .iter()
                .map(|&s| estimate_share(gpu, parent, s).map(as_fallback))
                .collect();
        }
    };
    let fields = |a: &GpmActivity| [a.tensor, a.fp32, a.fp16, a.fp64];
    let parent_x = fields(&g).map(|x| x.clamp(0.0, 1.0));
    let mut known = [0.0; 4];
    for s in slices {
        if let Some(a) = &s.activity {
            for (k, x) in known.iter_mut().zip(fields(a)) {
                *k += s.sm_share * x.clamp(0.0, 1.0);
            }
        }
    }
    let total: f64 = unknown.iter().sum();
    let at = |x: [f64; 4], s: f64| Interval {
        activity: Activity::Gpm(GpmActivity {
            tensor: (x[0] / s).clamp(0.0, 1.0),
            fp32: (x[1] / s).clamp(0.0, 1.0),
            fp16: (x[2] / s).clamp(0.0, 1.0),
            fp64: (x[3] / s).clamp(0.0, 1.0),
            pipes_unread: false,
        }),
        ..*parent
    };
    unknown
        .iter()
        .map(|&s| {
            let mut high = [0.0; 4];
            let mut central = [0.0; 4];
            let mut low = [0.0; 4];
            for k in 0..4 {
                let residual = (parent_x[k] - known[k]).max(0.0);
                high[k] = s.min(parent_x[k]);
                central[k] = s.min(residual * s / total);
                low[k] = (residual - (total - s)).max(0.0).min(central[k]);
            }
            let c = estimate_share(gpu, &at(central, s), s)?;
            let h = estimate_share(gpu, &at(high, s), s)?;
            let l = estimate_share(gpu, &at(low, s), s)?;
            Ok(as_fallback(Estimate {
                flop: FlopBand {
                    low: l.flop.low.min(c.flop.central),
                    central: c.flop.central,
                    high: h.flop.high.max(c.flop.high),
                },
                ..c
            }))
        })
        .collect()
}

/// (central precision, high precision, declaration honoured).
fn precisions(gpu: &GpuModel, declared: Option<Precision>) -> (Precision, Precision, bool) {
    match declared {
        Some(p) if gpu.peaks.tensor(p).is_some() => (p, p, true),
        _ => (gpu.default_precision(), gpu.high_precision(), false),
    }
}

/// `min(1, f / f_ref)`, or 1 with the unscaled flag where scaling is not sound.
fn clock_factor(
    gpu: &GpuModel,
    clock_mhz: Option<f64>,
    reference_mhz: Option<u32>,
    flags: &mut EstimateFlags,
) -> f64 {
    match (gpu.firmware_capped, clock_mhz, reference_mhz) {
        (false, Some(f), Some(r)) if r > 0 => (f / f64::from(r)).min(1.0),
        _ => {
            flags.unscaled_clock = true;
            1.0
        }
    }
}

fn unit(field: &'static str, value: f64) -> Result<f64, EstimateError> {
    if value.is_finite() && (0.0..=1.05).contains(&value) {
        Ok(value.min(1.0))
    } else {
        Err(EstimateError::BadUtilisation { field, value })
    }
}

/// The architecture estimate `6 · N · D` (parameters × tokens), for dense transformers.
/// `None` if it overflows `u128`, which no real model does.
pub fn six_n_d(params: u128, tokens: u128) -> Option<u128> {
    6u128.checked_mul(params)?.checked_mul(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::{GpuModel, find};
    use proptest::prelude::*;

    fn gpm(tensor: f64) -> Activity {
        Activity::Gpm(GpmActivity {
            tensor,
            ..GpmActivity::default()
        })
    }

    fn at(activity: Activity, seconds: f64, clock: f64, declared: Option<Precision>) -> Interval {
        Interval {
            seconds,
            activity,
            mean_sm_clock_mhz: Some(clock),
            declared_precision: declared,
        }
    }

    fn close(a: u64, b: f64) -> bool {
        (a as f64 - b).abs() <= 1.0
    }

    // --- Worked examples. Each expected figure is a hand calculation. ---

    /// H100 SXM, tensor 0.5, SM clock at the 1830 MHz tensor reference, 1 s, no declaration:
    /// central = 0.5 × 989e12 = 4.945e14 (BF16); high = 0.5 × 1979e12 × 1.03 × 1980/1830 =
    /// 1.1027247541e15 (FP8, the margin, the clock headroom); low = 0.85 × 4.945e14 = 4.20325e14.
    #[test]
    fn h100_gpm_bf16_undeclared() {
        let e = estimate(find("h100-sxm").unwrap(), &at(gpm(0.5), 1.0, 1830.0, None)).unwrap();
        assert!(close(e.flop.central, 4.945e14), "{e:?}");
        assert!(close(e.flop.high, 1.1027247540983606e15), "{e:?}");
        assert!(close(e.flop.low, 4.20325e14), "{e:?}");
        assert_eq!(e.method, Method::GpmTensor);
        assert_eq!(e.precision, Precision::Bf16);
        assert!(!e.precision_declared);
    }

    /// Declared FP8 narrows the band: central = 0.5 × 1979e12 = 9.895e14, high = 1.03 ×
    /// 1980/1830 × that = 1.1027247541e15, low = 0.85 × that = 8.41075e14.
    #[test]
    fn h100_gpm_declared_fp8_narrows() {
        let e = estimate(
            find("h100-sxm").unwrap(),
            &at(gpm(0.5), 1.0, 1830.0, Some(Precision::Fp8)),
        )
        .unwrap();
        assert!(close(e.flop.central, 9.895e14), "{e:?}");
        assert!(close(e.flop.high, 1.1027247540983606e15), "{e:?}");
        assert!(close(e.flop.low, 8.41075e14), "{e:?}");
        assert!(e.precision_declared);
    }

    /// Declared TF32 (FP32 training): 0.5 × 495e12 × 1 s = 2.475e14.
    #[test]
    fn h100_gpm_declared_tf32() {
        let e = estimate(
            find("h100-sxm").unwrap(),
            &at(gpm(0.5), 1.0, 1830.0, Some(Precision::Tf32)),
        )
        .unwrap();
        assert!(close(e.flop.central, 2.475e14), "{e:?}");
    }

    /// Clock below the reference scales down: 1464 MHz / 1830 = 0.8, so
    /// 0.5 × 989e12 × 0.8 = 3.956e14. Above the reference (1980 MHz) the factor caps at 1.
    #[test]
    fn clock_factor_scales_and_caps() {
        let h100 = find("h100-sxm").unwrap();
        let slow = estimate(h100, &at(gpm(0.5), 1.0, 1464.0, None)).unwrap();
        assert!(close(slow.flop.central, 3.956e14), "{slow:?}");
        let fast = estimate(h100, &at(gpm(0.5), 1.0, 1980.0, None)).unwrap();
        assert!(close(fast.flop.central, 4.945e14), "{fast:?}");
    }

    /// Non-tensor pipes use the max-clock factor: fp32 0.2 on H100 at 1980 MHz over 2 s is
    /// 2 × 0.2 × 67e12 = 2.68e13 on top of the tensor term (tensor 0 here). At 990 MHz the
    /// factor is 0.5: 1.34e13.
    #[test]
    fn vector_pipes_use_max_clock() {
        let h100 = find("h100-sxm").unwrap();
        let a = Activity::Gpm(GpmActivity {
            fp32: 0.2,
            ..GpmActivity::default()
        });
        let e = estimate(h100, &at(a, 2.0, 1980.0, None)).unwrap();
        assert!(close(e.flop.central, 2.68e13), "{e:?}");
        assert_eq!(e.flop.low, e.flop.central, "no tile factor on vector work");
        let half = estimate(h100, &at(a, 2.0, 990.0, None)).unwrap();
        assert!(close(half.flop.central, 1.34e13), "{half:?}");
    }

    /// H20 is firmware-capped: no clock scaling at any clock. tensor 1.0 × 148e12 × 1 s.
    #[test]
    fn h20_is_never_clock_scaled() {
        let h20 = find("h20").unwrap();
        let e = estimate(h20, &at(gpm(1.0), 1.0, 900.0, None)).unwrap();
        assert!(close(e.flop.central, 1.48e14), "{e:?}");
        assert!(e.flags.unscaled_clock);
    }

    /// A100 util×MFU: util 0.9 at 1410 MHz for 10 s, BF16 peak 312e12:
    /// low 0.9·312e12·10·0.25 = 7.02e14, central ·0.40 = 1.1232e15; high is the hard bound
    /// 0.9·10·(312·1.03 + 19.5 + 2·19.5 + 9.7)e12 = 3.50604e15 (no FP8 on Ampere, no clock
    /// headroom: the A100's tensor peak is quoted at its max clock).
    #[test]
    fn a100_util_mfu() {
        let a100 = find("a100-sxm").unwrap();
        let e = estimate(
            a100,
            &at(Activity::Util { gpu_util: 0.9 }, 10.0, 1410.0, None),
        )
        .unwrap();
        assert_eq!(e.method, Method::UtilMfu);
        assert!(close(e.flop.low, 7.02e14), "{e:?}");
        assert!(close(e.flop.central, 1.1232e15), "{e:?}");
        assert!(close(e.flop.high, 3.50604e15), "{e:?}");
    }

    /// L40S has FP8, so its util×MFU high bound uses FP8 at the hard bound:
    /// (733·1.03 + 91.6 + 183.2 + 1.4)e12 = 1.03119e15.
    #[test]
    fn l40s_util_mfu_high_uses_fp8() {
        let e = estimate(
            find("l40s").unwrap(),
            &at(Activity::Util { gpu_util: 1.0 }, 1.0, 2520.0, None),
        )
        .unwrap();
        assert!(close(e.flop.high, 1.03119e15), "{e:?}");
        assert!(close(e.flop.central, 1.448e14), "{e:?}");
    }

    /// FP4 declared on an H100 (no FP4): the declaration is not honoured, band stays wide.
    #[test]
    fn unsupported_declaration_keeps_wide_band() {
        let e = estimate(
            find("h100-sxm").unwrap(),
            &at(gpm(0.5), 1.0, 1830.0, Some(Precision::Fp4)),
        )
        .unwrap();
        assert!(e.flags.declared_precision_unsupported);
        assert!(!e.precision_declared);
        assert!(close(e.flop.central, 4.945e14));
    }

    /// FP4 declared on a B200: 0.5 × 9000e12 × 1 s at the 1860 MHz reference = 4.5e15.
    #[test]
    fn b200_declared_fp4() {
        let e = estimate(
            find("b200").unwrap(),
            &at(gpm(0.5), 1.0, 1860.0, Some(Precision::Fp4)),
        )
        .unwrap();
        assert!(close(e.flop.central, 4.5e15), "{e:?}");
    }

    /// Unknown device with GPM: operator-supplied 100 TFLOP/s, tensor 0.5 for 1 s. Tensor
    /// activity already measures busy time, so no MFU on top: central = 0.5 × 100e12 = 5e13,
    /// high = 0.5 × 200e12 (FP8 assumed 2 × BF16) × 1.03 = 1.03e14, flagged. (Before issue
    /// 13 the MFU band was applied and a true BF16 run came out 1.8x above the high bound.)
    #[test]
    fn operator_supplied_peak_with_gpm_uses_tensor_activity() {
        let m = GpuModel::operator_supplied(100.0);
        let e = estimate(&m, &at(gpm(0.5), 1.0, 1500.0, None)).unwrap();
        assert_eq!(e.method, Method::GpmTensor);
        assert!(e.flags.unknown_peak);
        assert!(close(e.flop.central, 5e13), "{e:?}");
        assert!(close(e.flop.high, 1.03e14), "{e:?}");
        // Without GPM: util × MFU, high the hard bound util × 2 × peak × margin.
        let u = estimate(&m, &at(Activity::Util { gpu_util: 0.5 }, 1.0, 1500.0, None)).unwrap();
        assert_eq!(u.method, Method::UtilMfu);
        assert!(close(u.flop.central, 2e13), "{u:?}");
        assert!(close(u.flop.high, 1.03e14), "{u:?}");
    }

    /// An H20 name on the H100 SXM PCI id: central is the H100's (0.5 × 989e12 = 4.945e14 at
    /// the reference clock), low the H20's (0.85 × 0.5 × 148e12 = 6.29e13), high the H100's
    /// FP8 (1.1027e15). A GB200 name: high is the GB200's FP4 (0.5 × 10000e12 × 1.03 =
    /// 5.15e15), above anything the H100 could do.
    #[test]
    fn name_and_pci_conflict_covers_both_models() {
        let h100 = find("h100-sxm").unwrap();
        let i = at(gpm(0.5), 1.0, 1830.0, None);
        let e = estimate_conflicted(h100, find("h20").unwrap(), &i, 1.0).unwrap();
        assert!(e.flags.peak_conflict);
        assert!(close(e.flop.central, 4.945e14), "{e:?}");
        assert!(close(e.flop.low, 6.29e13), "{e:?}");
        assert!(close(e.flop.high, 1.1027247540983606e15), "{e:?}");
        let g = estimate_conflicted(h100, find("gb200").unwrap(), &i, 1.0).unwrap();
        assert!(close(g.flop.high, 5.15e15), "{g:?}");
        assert!(close(g.flop.central, 4.945e14), "{g:?}");
    }

    /// A 3g.40gb instance (60 of 132 SMs) at 50% of its own SMs, reference clock, 1 s:
    /// 0.5 × 60/132 × 989e12 = 2.247727e14.
    #[test]
    fn mig_share_scales_the_peak() {
        let h100 = find("h100-sxm").unwrap();
        let e = estimate_share(h100, &at(gpm(0.5), 1.0, 1830.0, None), 60.0 / 132.0).unwrap();
        assert!(close(e.flop.central, 0.5 * 60.0 / 132.0 * 989e12), "{e:?}");
        assert!(estimate_share(h100, &at(gpm(0.5), 1.0, 1830.0, None), 1.5).is_err());
    }

    /// Two busy instances (shares 3/7 and 4/7), parent tensor 0.4 of the GPU, no per-instance
    /// GPM. Instance A really ran 0.6 of its SMs (0.2571 of the GPU), B 0.2 of its SMs
    /// (0.1143). Each truth must be inside its band; centrals split the parent's total.
    #[test]
    fn mig_fallback_bounds_each_instance() {
        let h100 = find("h100-sxm").unwrap();
        let parent = at(gpm(0.4), 1.0, 1830.0, Some(Precision::Bf16));
        let (sa, sb) = (3.0 / 7.0, 4.0 / 7.0);
        let slices = [
            MigSlice {
                sm_share: sa,
                activity: None,
            },
            MigSlice {
                sm_share: sb,
                activity: None,
            },
        ];
        let out = mig_fallback(h100, &parent, &slices).unwrap();
        let truth_a = 0.6 * sa * 989e12;
        let truth_b = 0.2 * sb * 989e12;
        assert!(
            (out[0].flop.low as f64) <= truth_a && truth_a <= out[0].flop.high as f64,
            "{:?}",
            out[0]
        );
        assert!(
            (out[1].flop.low as f64) <= truth_b && truth_b <= out[1].flop.high as f64,
            "{:?}",
            out[1]
        );
        assert_eq!(out[0].method, Method::MigFallback);
        let central: u64 = out.iter().map(|e| e.flop.central).sum();
        assert!((central as f64 - 0.4 * 989e12).abs() <= 2.0, "{central}");
        // B knowing its own activity: A gets the residual 0.4 − 0.1143 = 0.2857 of the GPU,
        // capped at its share (0.4286), with A's truth inside.
        let known = [
            MigSlice {
                sm_share: sa,
                activity: None,
            },
            MigSlice {
                sm_share: sb,
                activity: Some(GpmActivity {
                    tensor: 0.2,
                    ..GpmActivity::default()
                }),
            },
        ];
        let a = mig_fallback(h100, &parent, &known).unwrap();
        assert_eq!(a.len(), 1);
        assert!(
            (a[0].flop.low as f64) <= truth_a && truth_a <= a[0].flop.high as f64,
            "{:?}",
            a[0]
        );
    }

    #[test]
    fn bad_inputs_are_errors() {
        let h100 = find("h100-sxm").unwrap();
        assert!(matches!(
            estimate(h100, &at(gpm(1.5), 1.0, 1830.0, None)),
            Err(EstimateError::BadUtilisation { .. })
        ));
        assert!(matches!(
            estimate(h100, &at(gpm(f64::NAN), 1.0, 1830.0, None)),
            Err(EstimateError::BadUtilisation { .. })
        ));
        assert!(matches!(
            estimate(h100, &at(gpm(0.5), -1.0, 1830.0, None)),
            Err(EstimateError::BadInterval(_))
        ));
        assert!(matches!(
            estimate(h100, &at(gpm(0.5), 1.0, f64::INFINITY, None)),
            Err(EstimateError::BadClock(_))
        ));
        // Slightly over 100% is NVML rounding: clamped, not rejected.
        let e = estimate(h100, &at(gpm(1.02), 1.0, 1830.0, None)).unwrap();
        assert!(close(e.flop.central, 989e12));
    }

    #[test]
    fn six_n_d_is_exact() {
        // 70e9 params × 15e12 tokens × 6 = 6.3e24.
        assert_eq!(
            six_n_d(70_000_000_000, 15_000_000_000_000),
            Some(6_300_000_000_000_000_000_000_000)
        );
        assert_eq!(six_n_d(u128::MAX, 2), None);
    }

    #[test]
    fn unread_vector_pipes_are_at_full_peak_in_the_high_bound_only() {
        let gpu = crate::catalogue::find("h100-sxm").unwrap();
        let read = GpmActivity {
            tensor: 0.5,
            fp32: 0.0,
            fp16: 0.0,
            fp64: 0.0,
            pipes_unread: false,
        };
        let unread = GpmActivity {
            pipes_unread: true,
            ..read
        };
        let a = estimate(gpu, &at(Activity::Gpm(read), 1.0, 1980.0, None)).unwrap();
        let b = estimate(gpu, &at(Activity::Gpm(unread), 1.0, 1980.0, None)).unwrap();
        assert_eq!((a.flop.low, a.flop.central), (b.flop.low, b.flop.central));
        // Busy vector pipes whose metrics did not come back would put the truth above a
        // high bound that counted them as idle.
        let p = &gpu.peaks;
        let vector =
            (p.fp32.unwrap_or(0.0) + p.fp16_vector().unwrap_or(0.0) + p.fp64.unwrap_or(0.0)) * 1e12;
        assert!(
            b.flop.high as f64 >= a.flop.high as f64 + vector - 1.0,
            "{a:?} {b:?}"
        );
    }

    // --- Properties. ---

    fn any_activity() -> impl Strategy<Value = Activity> {
        prop_oneof![
            (
                0.0..=1.0f64,
                0.0..=1.0f64,
                0.0..=1.0f64,
                0.0..=1.0f64,
                any::<bool>()
            )
                .prop_map(|(tensor, fp32, fp16, fp64, pipes_unread)| {
                    Activity::Gpm(GpmActivity {
                        tensor,
                        fp32,
                        fp16,
                        fp64,
                        pipes_unread,
                    })
                }),
            (0.0..=1.0f64).prop_map(|gpu_util| Activity::Util { gpu_util }),
        ]
    }

    fn any_precision() -> impl Strategy<Value = Option<Precision>> {
        proptest::option::of(proptest::sample::select(Precision::ALL.to_vec()))
    }

    fn any_gpu() -> impl Strategy<Value = &'static GpuModel> {
        proptest::sample::select(crate::catalogue::CATALOGUE.iter().collect::<Vec<_>>())
    }

    proptest! {
        #[test]
        fn bounds_are_ordered(
            gpu in any_gpu(), a in any_activity(), dt in 0.0..100.0f64,
            clock in 0.0..3000.0f64, p in any_precision(),
        ) {
            let e = estimate(gpu, &at(a, dt, clock, p)).unwrap();
            prop_assert!(e.flop.is_ordered(), "{:?}", e);
        }

        /// No estimate exceeds every unit at its peak for the interval (+1 FLOP rounding).
        #[test]
        fn never_exceeds_the_physical_ceiling(
            gpu in any_gpu(), a in any_activity(), dt in 0.0..100.0f64,
            clock in 0.0..5000.0f64, p in any_precision(),
        ) {
            let e = estimate(gpu, &at(a, dt, clock, p)).unwrap();
            let ceiling = gpu.ceiling_flop_per_s() * dt;
            prop_assert!(e.flop.high as f64 <= ceiling + 1.0, "{:?} > {}", e, ceiling);
        }

        /// Splitting an interval in two with the same readings gives the same total, to the
        /// one FLOP each piece may lose or gain in rounding.
        #[test]
        fn splitting_an_interval_preserves_the_total(
            gpu in any_gpu(), a in any_activity(), dt in 0.001..100.0f64,
            cut in 0.0..1.0f64, clock in 0.0..3000.0f64, p in any_precision(),
        ) {
            let whole = estimate(gpu, &at(a, dt, clock, p)).unwrap().flop;
            let first = estimate(gpu, &at(a, dt * cut, clock, p)).unwrap().flop;
            let second = estimate(gpu, &at(a, dt - dt * cut, clock, p)).unwrap().flop;
            for (w, x, y) in [
                (whole.low, first.low, second.low),
                (whole.central, first.central, second.central),
                (whole.high, first.high, second.high),
            ] {
                let sum = x as f64 + y as f64;
                // Rounding: one FLOP per piece, plus f64's relative error on ~1e17 values.
                let tol = 2.0 + (w as f64) * 1e-12;
                prop_assert!((sum - w as f64).abs() <= tol, "whole {} vs {} + {}", w, x, y);
            }
        }

        /// A declaration honoured never widens the band.
        #[test]
        fn declaring_never_widens(
            gpu in any_gpu(), a in any_activity(), clock in 0.0..3000.0f64,
            p in proptest::sample::select(Precision::ALL.to_vec()),
        ) {
            let open = estimate(gpu, &at(a, 1.0, clock, None)).unwrap().flop;
            let e = estimate(gpu, &at(a, 1.0, clock, Some(p))).unwrap();
            if e.precision_declared && matches!(p, Precision::Bf16 | Precision::Fp8) {
                prop_assert!(e.flop.high - e.flop.low <= open.high - open.low + 1);
            }
        }
    }
}
