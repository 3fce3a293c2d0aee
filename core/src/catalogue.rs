//! The GPU catalogue: dense datasheet peaks per model, as data with a source per row.
//!
//! Rules this table keeps (tested below):
//! - **Dense figures only.** NVIDIA datasheets quote tensor figures with 2:4 sparsity (2× the
//!   dense rate); every figure here is dense. A sparse figure would double every estimate.
//! - **Keyed by PCI device id, NVML name as a fallback.** One model can have several ids, and
//!   SXM/PCIe/NVL/export parts differ by up to 30%, so they are separate rows.
//! - **Unknown is an outcome.** [`lookup`] returns [`Lookup::Unknown`] rather than a neighbour's
//!   numbers; the agent then needs an operator-supplied peak ([`GpuModel::operator_supplied`]).
//! - `None` means "not verified by a source", never zero.
//!
//! Figures are TFLOP/s (10^12 FLOP/s) per GPU. Sources are the keys of
//! `shared/reference/gpu-peaks.md` (P3 = stas00 ml-engineering accelerator table, P6 = NVIDIA
//! developer forum on H100 tensor peaks, P8 = H100 datasheet, P9 = pci.ids and NVIDIA's driver
//! README, P10/P16/P17 = spec-comparison pages, P11 = NVIDIA GB200/HGX B200 table, P14 = H20
//! spec pages, P15 = torchtitan's peak table, P26 = a public GPU catalogue).

use serde::Serialize;

use crate::units::Precision;

/// A GPU architecture generation. GPM (tensor-activity counters in NVML) exists on Hopper
/// and later only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// Volta (V100).
    Volta,
    /// Ampere (A100, A800, A30, A10).
    Ampere,
    /// Ada Lovelace (L40S, L40, L4).
    Ada,
    /// Hopper (H100, H800, H20, H200, GH200).
    Hopper,
    /// Blackwell (B100, B200, GB200).
    Blackwell,
    /// Not known (operator-supplied peak).
    Unknown,
}

/// Dense peak throughput per precision, TFLOP/s. `None` = the part lacks the unit or no
/// source verified the figure.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Peaks {
    /// FP64 on the CUDA cores.
    pub fp64: Option<f64>,
    /// FP64 on the tensor cores (DMMA).
    pub fp64_tensor: Option<f64>,
    /// FP32 on the CUDA cores.
    pub fp32: Option<f64>,
    /// TF32 on the tensor cores.
    pub tf32: Option<f64>,
    /// BF16/FP16 on the tensor cores (FP16 only on Volta).
    pub bf16: Option<f64>,
    /// FP8 on the tensor cores.
    pub fp8: Option<f64>,
    /// FP4 on the tensor cores.
    pub fp4: Option<f64>,
}

impl Peaks {
    /// The dense tensor peak at `precision`, in TFLOP/s.
    pub fn tensor(&self, precision: Precision) -> Option<f64> {
        match precision {
            Precision::Fp64 => self.fp64_tensor,
            Precision::Tf32 => self.tf32,
            Precision::Bf16 => self.bf16,
            Precision::Fp8 => self.fp8,
            Precision::Fp4 => self.fp4,
        }
    }

    /// Non-tensor FP16 throughput (GPM's `FP16_UTIL` counts only non-tensor half math).
    /// Datasheets rarely quote it; packed half2 FMA runs at twice the FP32 rate on Hopper and
    /// Blackwell, which is the only place GPM exists, so we derive it as 2 × FP32.
    pub fn fp16_vector(&self) -> Option<f64> {
        self.fp32.map(|f| 2.0 * f)
    }

    /// The highest tensor peak of any precision the part has.
    pub fn max_tensor(&self) -> Option<f64> {
        [self.fp4, self.fp8, self.bf16, self.tf32, self.fp64_tensor]
            .into_iter()
            .flatten()
            .reduce(f64::max)
    }
}

/// One GPU model of the catalogue.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuModel {
    /// Stable id used on the command line, on the wire and in reports, e.g. `h100-sxm`.
    pub id: &'static str,
    /// Human name, e.g. `NVIDIA H100 SXM5`.
    pub name: &'static str,
    /// PCI device ids (vendor 0x10DE) that identify this model.
    pub pci_device_ids: &'static [u16],
    /// Names NVML reports for this model (`nvmlDeviceGetName`), for the fallback match.
    pub nvml_names: &'static [&'static str],
    /// Architecture generation.
    pub architecture: Architecture,
    /// Streaming multiprocessors.
    pub sm_count: Option<u32>,
    /// The clock the datasheet tensor peaks are quoted at (MHz). Below the max SM clock on
    /// Hopper: H100 SXM quotes 989 TFLOP/s at 1830 MHz although NVML reports up to 1980.
    pub tensor_ref_clock_mhz: Option<u32>,
    /// The max SM (boost) clock, at which the non-tensor peaks are quoted (MHz).
    pub max_sm_clock_mhz: Option<u32>,
    /// Firmware-capped export part (H20): peaks are not proportional to SMs × clock, so the
    /// estimator applies no clock scaling at all.
    pub firmware_capped: bool,
    /// Dense peaks.
    pub peaks: Peaks,
    /// Board power (W).
    pub tdp_watts: Option<u32>,
    /// Whether NVML GPM (tensor activity) is available.
    pub gpm: bool,
    /// Source keys for this row (see module docs).
    pub source: &'static str,
    /// Caveats a reader of a report should know.
    pub notes: &'static str,
    /// True for a peak an operator supplied for a device the catalogue does not know.
    pub operator_supplied: bool,
}

impl GpuModel {
    /// A model for a device the catalogue does not know, with a BF16 dense peak the operator
    /// supplied. Estimates for it carry an "unknown peak" flag. Its FP8 peak is taken as twice
    /// the BF16 one (the ratio on every NVIDIA part that has FP8), used only by the high bound:
    /// tensor activity cannot tell BF16 from FP8, and an unknown device is most likely a new
    /// one, so a high bound at BF16 could sit below an FP8 run's truth.
    pub fn operator_supplied(bf16_tflops: f64) -> GpuModel {
        GpuModel {
            id: "unknown",
            name: "unknown GPU (operator-supplied peak)",
            pci_device_ids: &[],
            nvml_names: &[],
            architecture: Architecture::Unknown,
            sm_count: None,
            tensor_ref_clock_mhz: None,
            max_sm_clock_mhz: None,
            firmware_capped: false,
            peaks: Peaks {
                fp64: None,
                fp64_tensor: None,
                fp32: None,
                tf32: None,
                bf16: Some(bf16_tflops),
                fp8: Some(2.0 * bf16_tflops),
                fp4: None,
            },
            tdp_watts: None,
            gpm: false,
            source: "operator",
            notes: "peak supplied by the operator for a device not in the catalogue",
            operator_supplied: true,
        }
    }

    /// The precision assumed when a workload declares none: 16-bit, the common training
    /// precision (the Commission guidelines' H100 example uses the dense 16-bit peak).
    pub fn default_precision(&self) -> Precision {
        Precision::Bf16
    }

    /// The precision of the high bound when none is declared: the fastest floating-point
    /// tensor precision the part has (FP4 on Blackwell, FP8 on Hopper and Ada), else the
    /// default. Tensor activity counts busy cycles and cannot tell one precision from
    /// another, so any slower assumption would let an undeclared FP4 or FP8 run sit above the
    /// high bound, which compliance decisions rely on never to undercount.
    pub fn high_precision(&self) -> Precision {
        if self.peaks.fp4.is_some() {
            Precision::Fp4
        } else if self.peaks.fp8.is_some() {
            Precision::Fp8
        } else {
            self.default_precision()
        }
    }

    /// How far above the datasheet tensor peak the part can run: datasheets quote tensor
    /// peaks at a tensor boost clock below the max SM clock (H100 SXM: 1830 vs 1980 MHz, so
    /// up to 1070 instead of 989 TFLOP/s dense BF16). The high bound multiplies by this, so a
    /// part boosting past the reference clock, or a clock that moved between two samples,
    /// cannot put the truth above it. 1 where either clock is unverified or the part is
    /// firmware-capped (its datasheet figure is the cap).
    pub fn clock_headroom(&self) -> f64 {
        match (
            self.firmware_capped,
            self.tensor_ref_clock_mhz,
            self.max_sm_clock_mhz,
        ) {
            (false, Some(r), Some(m)) if r > 0 && m > r => f64::from(m) / f64::from(r),
            _ => 1.0,
        }
    }

    /// The physical ceiling in FLOP/s: every tensor and vector unit at its highest rate at
    /// once, with the estimator's high-bound margin and the clock headroom on the tensor
    /// term. No honest estimate of one interval can exceed it; the collector rejects records
    /// that do.
    pub fn ceiling_flop_per_s(&self) -> f64 {
        let p = &self.peaks;
        let tflops =
            p.max_tensor().unwrap_or(0.0) * crate::estimator::HIGH_MARGIN * self.clock_headroom()
                + p.fp32.unwrap_or(0.0)
                + p.fp16_vector().unwrap_or(0.0)
                + p.fp64.unwrap_or(0.0);
        tflops * 1e12
    }
}

/// How [`lookup`] found a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MatchedBy {
    /// By PCI device id.
    PciDeviceId,
    /// By the NVML name, because the PCI id was not known.
    NvmlName,
}

/// The outcome of identifying a device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lookup {
    /// A catalogued model.
    Known(&'static GpuModel, MatchedBy),
    /// Not in the catalogue: needs an operator-supplied peak.
    Unknown,
}

/// Identifies a device: PCI device id first, then the NVML name (exact, case-insensitive).
pub fn lookup(pci_device_id: Option<u16>, nvml_name: Option<&str>) -> Lookup {
    if let Some(id) = pci_device_id
        && let Some(m) = CATALOGUE.iter().find(|m| m.pci_device_ids.contains(&id))
    {
        return Lookup::Known(m, MatchedBy::PciDeviceId);
    }
    if let Some(name) = nvml_name {
        let name = name.trim();
        if let Some(m) = CATALOGUE
            .iter()
            .find(|m| m.nvml_names.iter().any(|n| n.eq_ignore_ascii_case(name)))
        {
            return Lookup::Known(m, MatchedBy::NvmlName);
        }
    }
    Lookup::Unknown
}

/// The catalogue model the NVML name alone names, when it is not the one the PCI device id
/// chose: the two disagree (an H20 or GB200 name on the H100 SXM's id 0x2330, seen on
/// re-flashed boards and on other vendors' NVML implementations). The estimator then widens
/// the band to cover both models' peaks rather than guess which one is right.
pub fn name_conflict(
    pci_device_id: Option<u16>,
    nvml_name: Option<&str>,
) -> Option<&'static GpuModel> {
    let Lookup::Known(by_pci, MatchedBy::PciDeviceId) = lookup(pci_device_id, None) else {
        return None;
    };
    let Lookup::Known(by_name, _) = lookup(None, nvml_name) else {
        return None;
    };
    (by_name.id != by_pci.id).then_some(by_name)
}

/// Finds a model by catalogue id (`h100-sxm`) or PCI device id (`0x2330`, `2330`).
pub fn find(key: &str) -> Option<&'static GpuModel> {
    let k = key.trim().to_ascii_lowercase();
    if let Some(m) = CATALOGUE.iter().find(|m| m.id == k) {
        return Some(m);
    }
    let hex = k.strip_prefix("0x").unwrap_or(&k);
    if hex.len() == 4
        && let Ok(id) = u16::from_str_radix(hex, 16)
    {
        return CATALOGUE.iter().find(|m| m.pci_device_ids.contains(&id));
    }
    None
}

/// Catalogue ids closest to `key`, best first, for "did you mean" messages: ids that
/// contain what was typed (`h100` → every H100), then ids within a small edit distance
/// (`h10-sxm` → `h100-sxm`).
pub fn close_matches(key: &str) -> Vec<&'static str> {
    let k = key.trim().to_ascii_lowercase();
    if k.is_empty() {
        return Vec::new();
    }
    let mut scored: Vec<(usize, usize, &'static str)> = CATALOGUE
        .iter()
        .enumerate()
        .filter_map(|(order, m)| {
            if m.id.contains(k.as_str()) {
                Some((0, order, m.id))
            } else {
                let d = edit_distance(&k, m.id);
                (d <= 3).then_some((d, order, m.id))
            }
        })
        .collect();
    scored.sort();
    scored.into_iter().take(6).map(|(_, _, id)| id).collect()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

const fn peaks(
    fp64: Option<f64>,
    fp64_tensor: Option<f64>,
    fp32: Option<f64>,
    tf32: Option<f64>,
    bf16: Option<f64>,
    fp8: Option<f64>,
    fp4: Option<f64>,
) -> Peaks {
    Peaks {
        fp64,
        fp64_tensor,
        fp32,
        tf32,
        bf16,
        fp8,
        fp4,
    }
}

const HOPPER_SXM_PEAKS: Peaks = peaks(
    Some(34.0),
    Some(67.0),
    Some(67.0),
    Some(495.0),
    Some(989.0),
    Some(1979.0),
    None,
);

const GA100_PEAKS: Peaks = peaks(
    Some(9.7),
    Some(19.5),
    Some(19.5),
    Some(156.0),
    Some(312.0),
    None,
    None,
);

/// The catalogue. Order is display order.
pub static CATALOGUE: &[GpuModel] = &[
    GpuModel {
        id: "a100-sxm",
        name: "NVIDIA A100 SXM4 (40/80 GB)",
        pci_device_ids: &[0x20B0, 0x20B2],
        nvml_names: &["NVIDIA A100-SXM4-40GB", "NVIDIA A100-SXM4-80GB"],
        architecture: Architecture::Ampere,
        sm_count: Some(108),
        tensor_ref_clock_mhz: Some(1410),
        max_sm_clock_mhz: Some(1410),
        firmware_capped: false,
        peaks: GA100_PEAKS,
        tdp_watts: Some(400),
        gpm: false,
        source: "P3, P10, P9",
        notes: "",
        operator_supplied: false,
    },
    GpuModel {
        id: "a100-pcie",
        name: "NVIDIA A100 PCIe (40/80 GB)",
        pci_device_ids: &[0x20F1, 0x20B1, 0x20B5],
        nvml_names: &["NVIDIA A100-PCIE-40GB", "NVIDIA A100 80GB PCIe"],
        architecture: Architecture::Ampere,
        sm_count: Some(108),
        tensor_ref_clock_mhz: Some(1410),
        max_sm_clock_mhz: Some(1410),
        firmware_capped: false,
        peaks: GA100_PEAKS,
        tdp_watts: Some(250),
        gpm: false,
        source: "P3, P16, P9",
        notes: "TDP is the 40 GB part's",
        operator_supplied: false,
    },
    GpuModel {
        id: "a800",
        name: "NVIDIA A800 (SXM4 40/80 GB, PCIe 80 GB)",
        pci_device_ids: &[0x20F3, 0x20F5, 0x20BD],
        nvml_names: &[
            "NVIDIA A800-SXM4-80GB",
            "NVIDIA A800 80GB PCIe",
            "NVIDIA A800-SXM4-40GB",
        ],
        architecture: Architecture::Ampere,
        sm_count: Some(108),
        tensor_ref_clock_mhz: Some(1410),
        max_sm_clock_mhz: Some(1410),
        firmware_capped: false,
        peaks: GA100_PEAKS,
        tdp_watts: Some(250),
        gpm: false,
        source: "P10, P9",
        notes: "export variant of A100 (NVLink cut); compute as A100; TDP is the PCIe part's",
        operator_supplied: false,
    },
    GpuModel {
        id: "h100-sxm",
        name: "NVIDIA H100 SXM5 80 GB",
        pci_device_ids: &[0x2330],
        nvml_names: &["NVIDIA H100 80GB HBM3"],
        architecture: Architecture::Hopper,
        sm_count: Some(132),
        tensor_ref_clock_mhz: Some(1830),
        max_sm_clock_mhz: Some(1980),
        firmware_capped: false,
        peaks: HOPPER_SXM_PEAKS,
        tdp_watts: Some(700),
        gpm: true,
        source: "P7, P8, P6",
        notes: "tensor peaks quoted at 1830 MHz, FP32/FP64 at 1980 MHz",
        operator_supplied: false,
    },
    GpuModel {
        id: "h100-pcie",
        name: "NVIDIA H100 PCIe 80 GB",
        pci_device_ids: &[0x2331],
        nvml_names: &["NVIDIA H100 PCIe"],
        architecture: Architecture::Hopper,
        sm_count: Some(114),
        tensor_ref_clock_mhz: Some(1620),
        max_sm_clock_mhz: Some(1755),
        firmware_capped: false,
        peaks: peaks(
            Some(26.0),
            Some(51.0),
            Some(51.0),
            Some(378.0),
            Some(756.0),
            Some(1513.0),
            None,
        ),
        tdp_watts: Some(350),
        gpm: true,
        source: "P8, P6",
        notes: "TDP 300-350 W by board",
        operator_supplied: false,
    },
    GpuModel {
        id: "h100-nvl",
        name: "NVIDIA H100 NVL 94 GB",
        pci_device_ids: &[0x2321],
        nvml_names: &["NVIDIA H100 NVL"],
        architecture: Architecture::Hopper,
        sm_count: None,
        tensor_ref_clock_mhz: None,
        max_sm_clock_mhz: None,
        firmware_capped: false,
        peaks: peaks(
            None,
            None,
            None,
            Some(418.0),
            Some(835.0),
            Some(1671.0),
            None,
        ),
        tdp_watts: Some(400),
        gpm: true,
        source: "P15, P9",
        notes: "BF16 from torchtitan; TF32 and FP8 derived (1/2, 2x); clocks not verified, so no clock scaling",
        operator_supplied: false,
    },
    GpuModel {
        id: "h800",
        name: "NVIDIA H800 (SXM/PCIe)",
        pci_device_ids: &[0x2324, 0x2322],
        nvml_names: &["NVIDIA H800", "NVIDIA H800 PCIe"],
        architecture: Architecture::Hopper,
        sm_count: Some(132),
        tensor_ref_clock_mhz: Some(1830),
        max_sm_clock_mhz: Some(1980),
        firmware_capped: false,
        peaks: peaks(
            Some(1.0),
            None,
            Some(67.0),
            Some(495.0),
            Some(989.0),
            Some(1979.0),
            None,
        ),
        tdp_watts: Some(700),
        gpm: true,
        source: "P15 (code), P9",
        notes: "export variant: FP64 capped (~1 TFLOP/s, not verified); PCIe figures not verified separately",
        operator_supplied: false,
    },
    GpuModel {
        id: "h20",
        name: "NVIDIA H20 96 GB",
        pci_device_ids: &[0x2329],
        nvml_names: &["NVIDIA H20"],
        architecture: Architecture::Hopper,
        sm_count: Some(78),
        tensor_ref_clock_mhz: None,
        max_sm_clock_mhz: None,
        firmware_capped: true,
        peaks: peaks(
            Some(1.0),
            None,
            Some(44.0),
            Some(74.0),
            Some(148.0),
            Some(296.0),
            None,
        ),
        tdp_watts: Some(400),
        gpm: true,
        source: "P14",
        notes: "firmware-capped export part: 78 SMs x clock would give ~630 TFLOP/s, datasheet is 148; no clock scaling",
        operator_supplied: false,
    },
    GpuModel {
        id: "h200",
        name: "NVIDIA H200 SXM 141 GB",
        pci_device_ids: &[0x2335],
        nvml_names: &["NVIDIA H200"],
        architecture: Architecture::Hopper,
        sm_count: Some(132),
        tensor_ref_clock_mhz: Some(1830),
        max_sm_clock_mhz: Some(1980),
        firmware_capped: false,
        peaks: HOPPER_SXM_PEAKS,
        tdp_watts: Some(700),
        gpm: true,
        source: "P3, P9",
        notes: "compute as H100 SXM",
        operator_supplied: false,
    },
    GpuModel {
        id: "h200-nvl",
        name: "NVIDIA H200 NVL",
        pci_device_ids: &[0x233B],
        nvml_names: &["NVIDIA H200 NVL"],
        architecture: Architecture::Hopper,
        sm_count: None,
        tensor_ref_clock_mhz: None,
        max_sm_clock_mhz: None,
        firmware_capped: false,
        peaks: peaks(None, None, None, None, Some(835.0), None, None),
        tdp_watts: Some(600),
        gpm: true,
        source: "P15, P9",
        notes: "only the BF16 peak is sourced; other precisions unknown, so no FP8 high bound",
        operator_supplied: false,
    },
    GpuModel {
        id: "gh200",
        name: "NVIDIA GH200 Grace Hopper (GPU part)",
        pci_device_ids: &[0x2342, 0x2348],
        nvml_names: &["NVIDIA GH200 120GB", "NVIDIA GH200 480GB"],
        architecture: Architecture::Hopper,
        sm_count: Some(132),
        tensor_ref_clock_mhz: Some(1830),
        max_sm_clock_mhz: Some(1980),
        firmware_capped: false,
        peaks: HOPPER_SXM_PEAKS,
        tdp_watts: None,
        gpm: true,
        source: "P3, P9",
        notes: "compute as H100 SXM; power is module-level (CPU+GPU), so no GPU TDP",
        operator_supplied: false,
    },
    GpuModel {
        id: "l40s",
        name: "NVIDIA L40S",
        pci_device_ids: &[0x26B9],
        nvml_names: &["NVIDIA L40S"],
        architecture: Architecture::Ada,
        sm_count: Some(142),
        tensor_ref_clock_mhz: Some(2520),
        max_sm_clock_mhz: Some(2520),
        firmware_capped: false,
        peaks: peaks(
            Some(1.4),
            None,
            Some(91.6),
            Some(183.0),
            Some(362.0),
            Some(733.0),
            None,
        ),
        tdp_watts: Some(350),
        gpm: false,
        source: "P3, P17, P10",
        notes: "",
        operator_supplied: false,
    },
    GpuModel {
        id: "l40",
        name: "NVIDIA L40",
        pci_device_ids: &[0x26B5],
        nvml_names: &["NVIDIA L40"],
        architecture: Architecture::Ada,
        sm_count: Some(142),
        tensor_ref_clock_mhz: Some(2490),
        max_sm_clock_mhz: Some(2490),
        firmware_capped: false,
        peaks: peaks(
            Some(1.4),
            None,
            Some(90.5),
            Some(181.0),
            Some(362.0),
            Some(724.0),
            None,
        ),
        tdp_watts: Some(300),
        gpm: false,
        source: "P10",
        notes: "FP16 with FP32 accumulate may run at half rate; sources conflict",
        operator_supplied: false,
    },
    GpuModel {
        id: "l4",
        name: "NVIDIA L4",
        pci_device_ids: &[0x27B8],
        nvml_names: &["NVIDIA L4"],
        architecture: Architecture::Ada,
        sm_count: None,
        tensor_ref_clock_mhz: Some(2040),
        max_sm_clock_mhz: Some(2040),
        firmware_capped: false,
        peaks: peaks(
            Some(0.5),
            None,
            Some(31.0),
            Some(60.0),
            Some(121.0),
            Some(242.5),
            None,
        ),
        tdp_watts: Some(72),
        gpm: false,
        source: "P17, P10",
        notes: "",
        operator_supplied: false,
    },
    GpuModel {
        id: "a10",
        name: "NVIDIA A10",
        pci_device_ids: &[0x2236],
        nvml_names: &["NVIDIA A10"],
        architecture: Architecture::Ampere,
        sm_count: Some(72),
        tensor_ref_clock_mhz: Some(1695),
        max_sm_clock_mhz: Some(1695),
        firmware_capped: false,
        peaks: peaks(
            Some(1.0),
            None,
            Some(31.2),
            Some(62.5),
            Some(125.0),
            None,
            None,
        ),
        tdp_watts: Some(150),
        gpm: false,
        source: "P16",
        notes: "TF32 and BF16 derived (SMs x per-clock rate x clock)",
        operator_supplied: false,
    },
    GpuModel {
        id: "a30",
        name: "NVIDIA A30",
        pci_device_ids: &[0x20B7],
        nvml_names: &["NVIDIA A30"],
        architecture: Architecture::Ampere,
        sm_count: Some(56),
        tensor_ref_clock_mhz: Some(1440),
        max_sm_clock_mhz: Some(1440),
        firmware_capped: false,
        peaks: peaks(
            Some(5.2),
            Some(10.3),
            Some(10.3),
            Some(82.0),
            Some(165.0),
            None,
            None,
        ),
        tdp_watts: Some(165),
        gpm: false,
        source: "P16",
        notes: "FP64 tensor, TF32 and BF16 derived",
        operator_supplied: false,
    },
    GpuModel {
        id: "v100-sxm",
        name: "NVIDIA Tesla V100 SXM2 (16/32 GB)",
        pci_device_ids: &[0x1DB1, 0x1DB5],
        nvml_names: &["Tesla V100-SXM2-16GB", "Tesla V100-SXM2-32GB"],
        architecture: Architecture::Volta,
        sm_count: Some(80),
        tensor_ref_clock_mhz: Some(1530),
        max_sm_clock_mhz: Some(1530),
        firmware_capped: false,
        peaks: peaks(Some(7.8), None, Some(15.7), None, Some(125.0), None, None),
        tdp_watts: Some(300),
        gpm: false,
        source: "P6, P26, P9",
        notes: "16-bit tensor peak is FP16 only (no BF16 on Volta)",
        operator_supplied: false,
    },
    GpuModel {
        id: "v100-pcie",
        name: "NVIDIA Tesla V100 PCIe (16/32 GB)",
        pci_device_ids: &[0x1DB4, 0x1DB6],
        nvml_names: &["Tesla V100-PCIE-16GB", "Tesla V100-PCIE-32GB"],
        architecture: Architecture::Volta,
        sm_count: Some(80),
        tensor_ref_clock_mhz: Some(1380),
        max_sm_clock_mhz: Some(1380),
        firmware_capped: false,
        peaks: peaks(Some(7.0), None, Some(14.1), None, Some(112.0), None, None),
        tdp_watts: Some(250),
        gpm: false,
        source: "P6, P16",
        notes: "16-bit tensor peak is FP16 only (no BF16 on Volta)",
        operator_supplied: false,
    },
    GpuModel {
        id: "b100",
        name: "NVIDIA B100",
        pci_device_ids: &[0x2920, 0x29BC],
        nvml_names: &["NVIDIA B100"],
        architecture: Architecture::Blackwell,
        sm_count: Some(148),
        tensor_ref_clock_mhz: Some(1440),
        max_sm_clock_mhz: Some(1600),
        firmware_capped: false,
        peaks: peaks(
            Some(30.0),
            Some(27.0),
            Some(61.0),
            Some(875.0),
            Some(1750.0),
            Some(3500.0),
            Some(7000.0),
        ),
        tdp_watts: Some(700),
        gpm: true,
        source: "P10",
        notes: "",
        operator_supplied: false,
    },
    GpuModel {
        id: "b200",
        name: "NVIDIA B200 (HGX)",
        pci_device_ids: &[0x2901, 0x2909],
        nvml_names: &["NVIDIA B200"],
        architecture: Architecture::Blackwell,
        sm_count: Some(148),
        tensor_ref_clock_mhz: Some(1860),
        max_sm_clock_mhz: Some(1965),
        firmware_capped: false,
        peaks: peaks(
            Some(37.0),
            Some(37.0),
            Some(75.0),
            Some(1100.0),
            Some(2250.0),
            Some(4500.0),
            Some(9000.0),
        ),
        tdp_watts: Some(1000),
        gpm: true,
        source: "P11, P3, P10",
        notes: "datasheet BF16 4.5 PFLOP/s is sparse; dense is 2.25",
        operator_supplied: false,
    },
    GpuModel {
        id: "gb200",
        name: "NVIDIA GB200 (per GPU)",
        pci_device_ids: &[0x2941],
        nvml_names: &["NVIDIA GB200"],
        architecture: Architecture::Blackwell,
        sm_count: Some(148),
        tensor_ref_clock_mhz: None,
        max_sm_clock_mhz: Some(2062),
        firmware_capped: false,
        peaks: peaks(
            Some(40.0),
            Some(40.0),
            Some(80.0),
            Some(1250.0),
            Some(2500.0),
            Some(5000.0),
            Some(10000.0),
        ),
        tdp_watts: Some(1200),
        gpm: true,
        source: "P11, P3",
        notes: "tensor reference clock not verified: tensor peaks are not clock-scaled",
        operator_supplied: false,
    },
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn no_duplicate_pci_ids_or_ids() {
        let mut pci = HashSet::new();
        let mut ids = HashSet::new();
        for m in CATALOGUE {
            assert!(ids.insert(m.id), "duplicate id {}", m.id);
            for p in m.pci_device_ids {
                assert!(pci.insert(*p), "duplicate PCI id {p:#06x} ({})", m.id);
            }
            assert!(!m.pci_device_ids.is_empty(), "{} has no PCI id", m.id);
            assert!(!m.nvml_names.is_empty(), "{} has no NVML name", m.id);
            assert!(!m.source.is_empty(), "{} has no source", m.id);
        }
    }

    #[test]
    fn dense_peaks_are_ordered_by_precision() {
        for m in CATALOGUE {
            let p = &m.peaks;
            if let (Some(bf16), Some(fp8)) = (p.bf16, p.fp8) {
                assert!(bf16 <= fp8, "{}: BF16 {bf16} > FP8 {fp8}", m.id);
            }
            if let (Some(fp8), Some(fp4)) = (p.fp8, p.fp4) {
                assert!(fp8 <= fp4, "{}: FP8 > FP4", m.id);
            }
            if let (Some(tf32), Some(bf16)) = (p.tf32, p.bf16) {
                assert!(tf32 <= bf16, "{}: TF32 > BF16", m.id);
            }
            assert!(p.bf16.is_some(), "{} lacks a 16-bit peak", m.id);
        }
    }

    /// A sparse datasheet figure is exactly 2x the dense one. Guard the best-known ones.
    #[test]
    fn known_dense_figures() {
        assert_eq!(find("h100-sxm").unwrap().peaks.bf16, Some(989.0));
        assert_eq!(find("b200").unwrap().peaks.bf16, Some(2250.0));
        assert_eq!(find("gb200").unwrap().peaks.fp4, Some(10000.0));
        assert_eq!(find("h20").unwrap().peaks.bf16, Some(148.0));
    }

    #[test]
    fn required_models_are_present() {
        for id in [
            "a100-sxm",
            "a100-pcie",
            "a800",
            "h100-sxm",
            "h100-pcie",
            "h100-nvl",
            "h800",
            "h20",
            "h200",
            "gh200",
            "l40s",
            "l40",
            "l4",
            "a10",
            "a30",
            "v100-sxm",
            "v100-pcie",
            "b100",
            "b200",
            "gb200",
        ] {
            assert!(find(id).is_some(), "{id} missing");
        }
    }

    #[test]
    fn gpm_only_on_hopper_and_later() {
        for m in CATALOGUE {
            let later = matches!(
                m.architecture,
                Architecture::Hopper | Architecture::Blackwell
            );
            assert_eq!(m.gpm, later, "{}", m.id);
        }
    }

    #[test]
    fn lookup_prefers_pci_id_then_name_and_admits_unknown() {
        match lookup(Some(0x2330), Some("NVIDIA A100-SXM4-80GB")) {
            Lookup::Known(m, MatchedBy::PciDeviceId) => assert_eq!(m.id, "h100-sxm"),
            other => panic!("{other:?}"),
        }
        match lookup(Some(0xFFFF), Some("nvidia h100 nvl")) {
            Lookup::Known(m, MatchedBy::NvmlName) => assert_eq!(m.id, "h100-nvl"),
            other => panic!("{other:?}"),
        }
        assert_eq!(lookup(Some(0xFFFF), Some("NVIDIA H100")), Lookup::Unknown);
        assert_eq!(lookup(None, None), Lookup::Unknown);
    }

    #[test]
    fn name_conflicts_are_detected() {
        assert_eq!(
            name_conflict(Some(0x2330), Some("NVIDIA H20")).map(|m| m.id),
            Some("h20")
        );
        assert_eq!(
            name_conflict(Some(0x2330), Some("NVIDIA GB200")).map(|m| m.id),
            Some("gb200")
        );
        assert_eq!(
            name_conflict(Some(0x2330), Some("NVIDIA H100 80GB HBM3")),
            None
        );
        // An unknown name, or no PCI match, is no conflict: nothing to compare.
        assert_eq!(name_conflict(Some(0x2330), Some("NVIDIA Future")), None);
        assert_eq!(name_conflict(Some(0xFFFF), Some("NVIDIA H20")), None);
    }

    #[test]
    fn high_precision_is_the_fastest_the_part_has() {
        assert_eq!(find("b200").unwrap().high_precision(), Precision::Fp4);
        assert_eq!(find("h100-sxm").unwrap().high_precision(), Precision::Fp8);
        assert_eq!(find("a100-sxm").unwrap().high_precision(), Precision::Bf16);
        // 1980 / 1830 MHz on H100 SXM; none where the reference clock is unverified.
        assert!((find("h100-sxm").unwrap().clock_headroom() - 1980.0 / 1830.0).abs() < 1e-12);
        assert_eq!(find("gb200").unwrap().clock_headroom(), 1.0);
        assert_eq!(find("h20").unwrap().clock_headroom(), 1.0);
    }

    #[test]
    fn find_accepts_pci_ids_and_suggests() {
        assert_eq!(find("0x2330").unwrap().id, "h100-sxm");
        assert_eq!(find("2331").unwrap().id, "h100-pcie");
        assert_eq!(find("H100-SXM").unwrap().id, "h100-sxm");
        assert!(find("h100").is_none());
        let near = close_matches("h100");
        assert!(near.contains(&"h100-sxm"), "{near:?}");
        assert!(near.contains(&"h100-pcie"), "{near:?}");
    }
}
