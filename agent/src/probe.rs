//! `flopmeter probe`: an operator's first command on a node. It loads NVML, prints the GPU
//! inventory and a few seconds of 1-second readings with their FLOP estimate and method,
//! so one sees what the agent will report before deploying it. On a node without an NVIDIA
//! driver it fails with a message that says exactly that.
//!
//! # JSON (`--json`)
//!
//! One document, written when the readings are done:
//!
//! ```json
//! {
//!   "nvml_lib": "libnvidia-ml.so.1",
//!   "driver_version": "550.54.15",            // null if unreadable
//!   "nvml_version": "12.550.54.15",
//!   "declared_precision": null,               // or "fp8", ... from --precision
//!   "gpus": [{
//!     "index": 0, "uuid": "GPU-…", "name": "NVIDIA H100 80GB HBM3",
//!     "pci_device_id": "0x2330",
//!     "catalogue": { "id": "h100-sxm", "matched_by": "pci-device-id" },   // null: unknown GPU
//!     "max_sm_clock_mhz": 1980, "max_mem_clock_mhz": 2619,
//!     "memory_total_bytes": 85520809984, "gpm_supported": true
//!   }],
//!   "readings": [{                            // one per second, after a baseline read
//!     "second": 1, "at_seconds": 1.0,
//!     "gpus": [{
//!       "index": 0, "uuid": "GPU-…",          // once each (from the reading)
//!       "method": "gpm-tensor",               // or "util-mfu (gpm unsupported)", ...; null
//!                                             //   when there is no estimate
//!       "precision": "bf16", "precision_declared": false,
//!       "flop": { "low": 3.7e14, "central": 4.4e14, "high": 8.8e14 },  // integers, FLOP
//!                                             //   over the interval; null if no estimate
//!       "no_estimate": null,                  // why there is none, e.g. a failed GPU
//!       "status": { "state": "ok" },          // or { "state": "failed", "lost": true,
//!                                             //   "reason": "…", "next_retry_seconds": 7.0 }
//!       "interval_seconds": 1.0, "gpm_supported": true,
//!       "gpm": { "any_tensor": 45.0, "hmma": 45.0, "fp64": 0.0, "fp32": 3.0,
//!                "fp16": 1.0, "sm_util": 80.0 },   // percent; null without GPM
//!       "sm_clock_mhz": 1755, "mean_sm_clock_mhz": 1755.0, "gpu_util_percent": 98,
//!       "power_mw": 612000, "energy_mj": 1834000, "memory_used_bytes": 64424509440,
//!       "processes": [{ "pid": 4242, "used_memory_bytes": 32212254720,
//!                       "sm_util_percent": 40.0 }],
//!       "unavailable": [{ "field": "power_mw", "error": "…" }]   // fields that failed
//!     }]
//!   }],
//!   "totals": [{ "index": 0, "seconds": 3.0, "method": "gpm-tensor",
//!                "flop": { "low": …, "central": …, "high": … } }]   // integers
//! }
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use flopmeter_core::catalogue::{GpuModel, Lookup};
use flopmeter_core::format;
use flopmeter_core::units::{FlopBand, FlopTotal, Precision};
use serde::Serialize;

use crate::gpu::nvml::{DEFAULT_LIB, NvmlLibrary, NvmlSource, NvmlSourceError, RetryPolicy};
use crate::gpu::{
    GpuEstimate, GpuInfo, GpuReading, GpuSource, GpuStatus, IntervalSummary, Inventory,
    estimate_for_peak,
};

/// `flopmeter probe`: show the GPUs and what the agent would measure on them.
#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    /// The NVML library: a path, or a name the dynamic linker resolves. On a machine without
    /// GPUs, point it at the fake (`cargo build -p fake-nvml`, then
    /// `--nvml-lib target/debug/libfake_nvml.so` with FAKE_NVML_SCENARIO set).
    #[arg(long, env = "FLOPMETER_NVML_LIB", value_name = "PATH", default_value = DEFAULT_LIB)]
    pub nvml_lib: PathBuf,

    /// Print one JSON document instead of text.
    #[arg(long, env = "FLOPMETER_PROBE_JSON")]
    pub json: bool,

    /// Seconds of 1-second readings after the inventory (0: inventory only).
    #[arg(
        long,
        env = "FLOPMETER_PROBE_SECONDS",
        value_name = "S",
        default_value_t = 3
    )]
    pub seconds: u32,

    /// The precision the workloads on this node run at (bf16, fp8, tf32, ...), if known:
    /// narrows the band as a job's declaration would. Default: undeclared, so the central
    /// estimate assumes BF16 and the high bound FP8 where the GPU has it.
    #[arg(long, env = "FLOPMETER_PROBE_PRECISION", value_name = "PRECISION")]
    pub precision: Option<Precision>,

    /// Dense BF16 peak (TFLOP/s) of GPUs the catalogue does not know, as the agent's flag of
    /// the same name: check what the agent would report for them before deploying.
    #[arg(long, env = "FLOPMETER_UNKNOWN_GPU_PEAK_TFLOPS", value_name = "TFLOPS")]
    pub unknown_gpu_peak_tflops: Option<f64>,
}

/// Why the probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// NVML could not be started (no driver, no library, ...).
    #[error(transparent)]
    Nvml(#[from] NvmlSourceError),
    /// Writing the output failed.
    #[error("writing the probe output: {0}")]
    Io(#[from] std::io::Error),
    /// Serialising the JSON failed.
    #[error("serialising the probe output: {0}")]
    Json(#[from] serde_json::Error),
}

/// Runs the probe against the library named in `args`, writing text or JSON to `out`.
/// Blocks for `args.seconds` seconds (it samples in real time, as the agent does).
pub fn run(args: &ProbeArgs, out: &mut dyn Write) -> Result<(), ProbeError> {
    let operator = args
        .unknown_gpu_peak_tflops
        .filter(|p| p.is_finite() && *p > 0.0)
        .map(GpuModel::operator_supplied);
    let lib = NvmlLibrary::open(&args.nvml_lib)?;
    let mut source = NvmlSource::new(&lib, RetryPolicy::default())?;
    let lib_name = lib.path().to_string_lossy().into_owned();

    let start = Instant::now();
    // The baseline: GPM metrics and intervals need a previous sample. It comes first so the
    // inventory shows MIG instances as they are now.
    source.read(start.elapsed());
    if !args.json {
        write_inventory(out, &lib_name, source.inventory())?;
    }
    let mut readings = Vec::new();
    let mut totals: Vec<(FlopTotal, f64, Option<&'static str>)> =
        vec![(FlopTotal::ZERO, 0.0, None); source.inventory().gpus.len()];
    for second in 1..=args.seconds {
        let due = Duration::from_secs(u64::from(second));
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        let tick = source.read(start.elapsed());
        let inventory = source.inventory();
        let gpus: Vec<ReadingOut<'_>> = tick
            .gpus
            .iter()
            .map(|r| {
                let info = &inventory.gpus[r.index as usize];
                let estimate = IntervalSummary::from_reading(r)
                    .ok_or_else(|| no_interval_reason(r))
                    .and_then(|s| {
                        estimate_for_peak(info, operator.as_ref(), &s, args.precision)
                            .map_err(|e| e.to_string())
                    });
                ReadingOut::new(r, estimate)
            })
            .collect();
        for g in &gpus {
            if let (Some(band), Some(total)) = (g.flop, totals.get_mut(g.index as usize)) {
                total.0.add_band(band);
                total.1 += g.reading.interval_seconds.unwrap_or(0.0);
                total.2 = g.method;
            }
        }
        if args.json {
            readings.push(SecondOut {
                second,
                at_seconds: tick.at_seconds,
                gpus: gpus.into_iter().map(ReadingOut::into_owned).collect(),
            });
        } else {
            write_second(out, second, &gpus)?;
        }
    }
    let totals: Vec<TotalOut> = totals
        .into_iter()
        .enumerate()
        .map(|(index, (flop, seconds, method))| TotalOut {
            index: index as u32,
            seconds,
            method,
            flop,
        })
        .collect();
    if args.json {
        let doc = ProbeOut {
            nvml_lib: &lib_name,
            driver_version: source.inventory().driver_version.as_deref(),
            nvml_version: source.inventory().nvml_version.as_deref(),
            declared_precision: args.precision,
            gpus: source
                .inventory()
                .gpus
                .iter()
                .map(InventoryOut::from)
                .collect(),
            readings,
            totals,
        };
        serde_json::to_writer_pretty(&mut *out, &doc)?;
        writeln!(out)?;
    } else if args.seconds > 0 {
        write_totals(out, &totals)?;
    }
    Ok(())
}

fn no_interval_reason(r: &GpuReading) -> String {
    match &r.status {
        GpuStatus::Ok => "baseline reading: no interval yet".into(),
        GpuStatus::Failed { lost, reason, .. } => {
            format!("GPU {}: {reason}", if *lost { "lost" } else { "failed" })
        }
    }
}

#[derive(Serialize)]
struct ProbeOut<'a> {
    nvml_lib: &'a str,
    driver_version: Option<&'a str>,
    nvml_version: Option<&'a str>,
    declared_precision: Option<Precision>,
    gpus: Vec<InventoryOut<'a>>,
    readings: Vec<SecondOut>,
    totals: Vec<TotalOut>,
}

#[derive(Serialize)]
struct InventoryOut<'a> {
    index: u32,
    uuid: Option<&'a str>,
    name: Option<&'a str>,
    pci_device_id: Option<String>,
    #[serde(serialize_with = "crate::gpu::serialize_lookup")]
    catalogue: Lookup,
    max_sm_clock_mhz: Option<u32>,
    max_mem_clock_mhz: Option<u32>,
    memory_total_bytes: Option<u64>,
    gpm_supported: bool,
    name_conflict: Option<&'static str>,
    mig_enabled: bool,
    mig_instances: &'a [crate::gpu::MigInfo],
}

impl<'a> From<&'a GpuInfo> for InventoryOut<'a> {
    fn from(g: &'a GpuInfo) -> Self {
        InventoryOut {
            index: g.index,
            uuid: g.uuid.as_deref(),
            name: g.name.as_deref(),
            pci_device_id: g.pci_device_id.map(|id| format!("{id:#06x}")),
            catalogue: g.catalogue,
            max_sm_clock_mhz: g.max_sm_clock_mhz,
            max_mem_clock_mhz: g.max_mem_clock_mhz,
            memory_total_bytes: g.memory_total_bytes,
            gpm_supported: g.gpm_supported,
            name_conflict: g.name_conflict.map(|m| m.id),
            mig_enabled: g.mig_enabled,
            mig_instances: &g.mig_instances,
        }
    }
}

#[derive(Serialize)]
struct SecondOut {
    second: u32,
    at_seconds: f64,
    gpus: Vec<ReadingOut<'static>>,
}

#[derive(Serialize)]
struct ReadingOut<'a> {
    /// For the text output and the totals; the JSON has it once, from the reading.
    #[serde(skip)]
    index: u32,
    method: Option<&'static str>,
    precision: Option<Precision>,
    precision_declared: bool,
    flop: Option<FlopBand>,
    no_estimate: Option<String>,
    #[serde(flatten)]
    reading: std::borrow::Cow<'a, GpuReading>,
}

impl<'a> ReadingOut<'a> {
    fn new(reading: &'a GpuReading, estimate: Result<GpuEstimate, String>) -> Self {
        let (method, precision, declared, flop, no_estimate) = match estimate {
            Ok(e) => (
                Some(e.method.as_str()),
                Some(e.estimate.precision),
                e.estimate.precision_declared,
                Some(e.estimate.flop),
                None,
            ),
            Err(why) => (None, None, false, None, Some(why)),
        };
        ReadingOut {
            index: reading.index,
            method,
            precision,
            precision_declared: declared,
            flop,
            no_estimate,
            reading: std::borrow::Cow::Borrowed(reading),
        }
    }

    fn into_owned(self) -> ReadingOut<'static> {
        ReadingOut {
            reading: std::borrow::Cow::Owned(self.reading.into_owned()),
            ..self
        }
    }
}

#[derive(Serialize)]
struct TotalOut {
    index: u32,
    seconds: f64,
    method: Option<&'static str>,
    flop: FlopTotal,
}

fn write_inventory(out: &mut dyn Write, lib: &str, inv: &Inventory) -> std::io::Result<()> {
    let unknown = || "unknown".to_string();
    writeln!(
        out,
        "NVML library {lib}: driver {}, NVML {}, {} GPU(s)",
        inv.driver_version.clone().unwrap_or_else(unknown),
        inv.nvml_version.clone().unwrap_or_else(unknown),
        inv.gpus.len()
    )?;
    for g in &inv.gpus {
        let catalogue = match g.model() {
            Some(m) => m.id.to_string(),
            None => "NOT IN CATALOGUE (no estimate without an operator-supplied peak)".into(),
        };
        writeln!(
            out,
            "  GPU {:<2} {:<24} PCI {:<7} {:<10} max SM {:>5} MHz  GPM {:<3}  {}",
            g.index,
            g.name.clone().unwrap_or_else(unknown),
            g.pci_device_id
                .map_or_else(unknown, |id| format!("{id:#06x}")),
            catalogue,
            g.max_sm_clock_mhz
                .map_or_else(|| "?".into(), |c| c.to_string()),
            if g.gpm_supported { "yes" } else { "no" },
            g.uuid.clone().unwrap_or_else(unknown),
        )?;
        if let Some(other) = g.name_conflict {
            writeln!(
                out,
                "         PEAK CONFLICT: the NVML name names {}; estimates cover both models' peaks",
                other.id
            )?;
        }
        if g.mig_enabled {
            writeln!(
                out,
                "         MIG mode: {} instance(s){}",
                g.mig_instances.len(),
                if g.mig_instances.is_empty() {
                    " (read with the first sample)"
                } else {
                    ""
                }
            )?;
            for m in &g.mig_instances {
                write_mig(out, m, g.gpu_sm_count())?;
            }
        }
    }
    Ok(())
}

fn write_mig(
    out: &mut dyn Write,
    m: &crate::gpu::MigInfo,
    gpu_sm: Option<u32>,
) -> std::io::Result<()> {
    let id = |v: Option<u32>| v.map_or_else(|| "?".to_string(), |v| v.to_string());
    writeln!(
        out,
        "           {:<9} GI {:<2} CI {:<2} {} of {} SMs  {}",
        m.profile,
        id(m.gpu_instance_id),
        id(m.compute_instance_id),
        id(m.sm_count),
        id(gpu_sm),
        m.uuid
    )
}

fn write_second(out: &mut dyn Write, second: u32, gpus: &[ReadingOut<'_>]) -> std::io::Result<()> {
    writeln!(
        out,
        "second {second}: FLOP over the interval, central [low – high]"
    )?;
    for g in gpus {
        let r = &g.reading;
        match (&g.flop, &r.status) {
            (
                _,
                GpuStatus::Failed {
                    reason,
                    next_retry_seconds,
                    lost,
                },
            ) => writeln!(
                out,
                "  GPU {:<2} {}: {reason}; retrying from t = {next_retry_seconds:.1} s",
                g.index,
                if *lost { "LOST" } else { "FAILED" },
            )?,
            (Some(band), GpuStatus::Ok) => writeln!(
                out,
                "  GPU {:<2} {:<27} {} FLOP ({}{}) in {:.2} s  {}",
                g.index,
                g.method.unwrap_or("-"),
                format::band(band.low.into(), band.central.into(), band.high.into()),
                g.precision.map_or("", |p| p.as_str()),
                if g.precision_declared {
                    ", declared"
                } else {
                    ""
                },
                r.interval_seconds.unwrap_or(0.0),
                describe(r),
            )?,
            (None, GpuStatus::Ok) => writeln!(
                out,
                "  GPU {:<2} no estimate: {}  {}",
                g.index,
                g.no_estimate.as_deref().unwrap_or("-"),
                describe(r),
            )?,
        }
    }
    Ok(())
}

/// The raw readings behind an estimate, compactly.
fn describe(r: &GpuReading) -> String {
    let mut parts = Vec::new();
    if let Some(t) = r.gpm.and_then(|m| m.any_tensor) {
        parts.push(format!("tensor {t:.1}%"));
    }
    if let Some(c) = r.sm_clock_mhz {
        parts.push(format!("SM {c} MHz"));
    }
    if let Some(u) = r.gpu_util_percent {
        parts.push(format!("util {u}%"));
    }
    if let Some(p) = r.power_mw {
        parts.push(format!("{:.0} W", f64::from(p) / 1e3));
    }
    if let Some(procs) = &r.processes {
        let list: Vec<String> = procs
            .iter()
            .map(|p| match p.sm_util_percent {
                Some(sm) => format!("{} ({sm:.0}% SM)", p.pid),
                None => p.pid.to_string(),
            })
            .collect();
        parts.push(if list.is_empty() {
            "no processes".into()
        } else {
            format!("pids {}", list.join(", "))
        });
    }
    for m in r.mig.iter().flatten() {
        let pids: Vec<String> = m.processes.iter().map(|p| p.pid.to_string()).collect();
        parts.push(format!(
            "MIG {} tensor {} pids [{}]",
            m.info.profile,
            m.gpm
                .and_then(|g| g.any_tensor)
                .map_or_else(|| "n/a".to_string(), |t| format!("{t:.1}%")),
            pids.join(", ")
        ));
    }
    if !r.unavailable.is_empty() {
        let missing: Vec<String> = r
            .unavailable
            .iter()
            .map(|f| format!("{} ({})", f.field, f.error))
            .collect();
        parts.push(format!("unavailable: {}", missing.join(", ")));
    }
    parts.join(", ")
}

fn write_totals(out: &mut dyn Write, totals: &[TotalOut]) -> std::io::Result<()> {
    writeln!(out, "totals: central [low – high]")?;
    let mut node = FlopTotal::ZERO;
    let mut estimated = 0;
    for t in totals {
        let Some(method) = t.method else {
            // A zero would read as an idle GPU; this one could not be measured at all.
            writeln!(out, "  GPU {:<2} no estimate", t.index)?;
            continue;
        };
        estimated += 1;
        node.add_total(t.flop);
        writeln!(
            out,
            "  GPU {:<2} {} over {:.1} s ({method})",
            t.index,
            format::band(t.flop.low, t.flop.central, t.flop.high),
            t.seconds,
        )?;
    }
    match estimated {
        0 => writeln!(
            out,
            "  node   no estimate: none of the {} GPU(s) could be estimated (see above why)",
            totals.len()
        ),
        n if n < totals.len() => writeln!(
            out,
            "  node   {} ({n} of {} GPUs; the others could not be estimated)",
            format::band(node.low, node.central, node.high),
            totals.len()
        ),
        _ => writeln!(
            out,
            "  node   {}",
            format::band(node.low, node.central, node.high)
        ),
    }
}
