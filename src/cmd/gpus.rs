//! `flopmeter gpus`: the catalogue, so an operator can check what peak their GPUs get.

use std::io::Write;

use flopmeter_core::catalogue::{CATALOGUE, GpuModel};

/// Options of `flopmeter gpus`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "All peaks are dense (no 2:4 sparsity), in TFLOP/s per GPU. \"-\" means the \
part lacks the unit or no source verified the figure. Sources are keys of \
shared/reference/gpu-peaks.md."
)]
pub struct GpusArgs {
    /// Print JSON instead of a table.
    #[arg(long, env = "FLOPMETER_JSON")]
    pub json: bool,
}

/// Runs `flopmeter gpus`.
pub fn run(args: &GpusArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    if args.json {
        // PCI device ids in hex, as `probe` and NVIDIA's tools write them (0x2330, not 9008).
        let mut doc = serde_json::to_value(CATALOGUE)?;
        for (m, entry) in CATALOGUE
            .iter()
            .zip(doc.as_array_mut().into_iter().flatten())
        {
            entry["pci_device_ids"] = m
                .pci_device_ids
                .iter()
                .map(|id| format!("{id:#06x}"))
                .collect();
        }
        serde_json::to_writer_pretty(&mut *out, &doc)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<10} {:<18} {:>4} {:>10} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>5} {:>3}  source",
        "id",
        "PCI ids",
        "SMs",
        "clk TC/max",
        "FP64",
        "FP32",
        "TF32",
        "BF16",
        "FP8",
        "FP4",
        "TDP",
        "GPM"
    )?;
    for m in CATALOGUE {
        writeln!(out, "{}", row(m))?;
    }
    Ok(())
}

fn row(m: &GpuModel) -> String {
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v}"));
    let ids: Vec<String> = m
        .pci_device_ids
        .iter()
        .map(|i| format!("{i:04X}"))
        .collect();
    let clocks = match (m.tensor_ref_clock_mhz, m.max_sm_clock_mhz) {
        (Some(t), Some(x)) => format!("{t}/{x}"),
        (None, Some(x)) => format!("-/{x}"),
        _ if m.firmware_capped => "capped".to_string(),
        _ => "-".to_string(),
    };
    format!(
        "{:<10} {:<18} {:>4} {:>10} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>5} {:>3}  {}",
        m.id,
        ids.join(","),
        m.sm_count.map_or("-".to_string(), |s| s.to_string()),
        clocks,
        opt(m.peaks.fp64),
        opt(m.peaks.fp32),
        opt(m.peaks.tf32),
        opt(m.peaks.bf16),
        opt(m.peaks.fp8),
        opt(m.peaks.fp4),
        m.tdp_watts.map_or("-".to_string(), |w| w.to_string()),
        if m.gpm { "yes" } else { "no" },
        m.source
    )
}
