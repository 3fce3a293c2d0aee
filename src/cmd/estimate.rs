//! `flopmeter estimate`: the what-if planner.

use std::io::Write;

use anyhow::Context;
use flopmeter_core::catalogue::{self, GpuModel};
use flopmeter_core::format::{flop, flop_near, quantity};
use flopmeter_core::plan::{self, PlanInput, PlanOutcome, Utilisation};
use flopmeter_core::threshold;
use flopmeter_core::units::{FlopAmount, FlopAmountError, Precision};
use flopmeter_core::utc::{SECONDS_PER_DAY, SECONDS_PER_HOUR};

use super::{InvalidInput, UsageError};

/// Options of `flopmeter estimate`.
#[derive(Debug, clap::Args)]
#[command(
    group(clap::ArgGroup::new("duration").required(true).args(["days", "hours"])),
    group(clap::ArgGroup::new("utilisation").required(true).args(["tensor_util", "mfu"])),
    after_help = "\
How the figures are made:
  FLOP = GPUs x seconds x utilisation x dense peak at the precision.
  Without --precision the central figure assumes BF16 (the common training precision), the high
  bound FP8 where the GPU has it (tensor activity cannot tell them apart), and the low bound
  0.85 x central (tile quantisation). --precision removes that uncertainty.
  Thresholds: strict \">\" where the law says \"greater than\" (EU AI Act Art. 51(2): > 10^25).
  Day N means the run crosses during its N-th day.

Examples:
  flopmeter estimate --gpu h100-sxm --count 1024 --days 90 --tensor-util 0.4
  flopmeter estimate --gpu 0x2330 --count 4096 --days 60 --mfu 0.38 --precision bf16 \\
      --params 70e9 --tokens 15e12 --json"
)]
pub struct EstimateArgs {
    /// GPU model: a catalogue id (h100-sxm) or PCI device id (0x2330). See `flopmeter gpus`.
    #[arg(long, env = "FLOPMETER_GPU", value_name = "ID|PCI-ID")]
    pub gpu: String,

    /// Number of GPUs in the run.
    #[arg(
        long,
        env = "FLOPMETER_COUNT",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub count: i64,

    /// Planned duration in days.
    #[arg(
        long,
        env = "FLOPMETER_DAYS",
        value_name = "D",
        allow_negative_numbers = true
    )]
    pub days: Option<f64>,

    /// Planned duration in hours (instead of --days).
    #[arg(
        long,
        env = "FLOPMETER_HOURS",
        value_name = "H",
        allow_negative_numbers = true
    )]
    pub hours: Option<f64>,

    /// Expected tensor-pipe activity, 0..1, as the agent measures it on Hopper and later
    /// (e.g. 0.4 for 40%).
    #[arg(
        long,
        env = "FLOPMETER_TENSOR_UTIL",
        value_name = "U",
        allow_negative_numbers = true
    )]
    pub tensor_util: Option<f64>,

    /// Expected model-FLOP utilisation, 0..1 (useful FLOP / dense peak), instead of
    /// --tensor-util.
    #[arg(
        long,
        env = "FLOPMETER_MFU",
        value_name = "U",
        allow_negative_numbers = true
    )]
    pub mfu: Option<f64>,

    /// Training precision, if known: bf16 (or fp16), fp8, tf32 (or fp32), fp4, fp64.
    /// Narrows the band.
    #[arg(long, env = "FLOPMETER_PRECISION", value_name = "P")]
    pub precision: Option<Precision>,

    /// Model parameters N, for the 6·N·D cross-check (e.g. 70e9).
    #[arg(long, env = "FLOPMETER_PARAMS", value_name = "N", value_parser = parse_count, requires = "tokens")]
    pub params: Option<u128>,

    /// Training tokens D, for the 6·N·D cross-check (e.g. 15e12).
    #[arg(long, env = "FLOPMETER_TOKENS", value_name = "D", value_parser = parse_count, requires = "params")]
    pub tokens: Option<u128>,

    /// Print JSON instead of text.
    #[arg(long, env = "FLOPMETER_JSON")]
    pub json: bool,
}

/// Parses a count written as an integer or in e notation (`70e9`), exactly, by the rule every
/// FLOP, parameter and token figure follows ([`FlopAmount`]).
fn parse_count(s: &str) -> Result<u128, FlopAmountError> {
    FlopAmount::parse(s).map(FlopAmount::get)
}

/// Resolves `--gpu` or explains what would have worked.
pub fn resolve_gpu(key: &str) -> Result<&'static GpuModel, UsageError> {
    catalogue::find(key).ok_or_else(|| {
        let near = catalogue::close_matches(key);
        let hint = if near.is_empty() {
            String::new()
        } else {
            format!(" Did you mean: {}?", near.join(", "))
        };
        UsageError(format!(
            "unknown GPU {key:?}.{hint} Run `flopmeter gpus` for the catalogue (ids and PCI device ids)."
        ))
    })
}

/// Runs `flopmeter estimate`.
pub fn run(args: &EstimateArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let gpu = resolve_gpu(&args.gpu)?;
    if args.count < 1 {
        return Err(UsageError(format!(
            "--count must be a positive number of GPUs, got {}",
            args.count
        ))
        .into());
    }
    let seconds = match (args.days, args.hours) {
        (Some(d), _) => d * SECONDS_PER_DAY as f64,
        (None, Some(h)) => h * SECONDS_PER_HOUR as f64,
        (None, None) => unreachable!("clap requires --days or --hours"),
    };
    let utilisation = match (args.tensor_util, args.mfu) {
        (Some(u), _) => Utilisation::TensorUtil(u),
        (None, Some(u)) => Utilisation::Mfu(u),
        (None, None) => unreachable!("clap requires --tensor-util or --mfu"),
    };
    let input = PlanInput {
        gpu,
        count: args.count as u64,
        seconds,
        utilisation,
        precision: args.precision,
        params: args.params,
        tokens: args.tokens,
    };
    let outcome = plan::evaluate(&input, &threshold::defaults()).map_err(InvalidInput::new)?;
    if args.json {
        write_json(out, &input, &outcome).context("writing JSON")?;
    } else {
        write_text(out, &input, &outcome).context("writing the estimate")?;
    }
    Ok(())
}

/// The JSON document of `flopmeter estimate --json`. FLOP figures are exact integers (they
/// exceed 2^64, so they are written as JSON numbers from u128; parse them as big integers or
/// doubles).
#[derive(serde::Serialize)]
struct EstimateJson<'a> {
    gpu: GpuJson<'a>,
    days: f64,
    utilisation: UtilisationJson,
    precision: Precision,
    precision_declared: bool,
    method: flopmeter_core::units::Method,
    flop: &'a flopmeter_core::units::FlopTotal,
    flop_per_day: &'a flopmeter_core::units::FlopTotal,
    thresholds: &'a [plan::ThresholdOutcome],
    architecture: Option<ArchitectureJson>,
}

#[derive(serde::Serialize)]
struct GpuJson<'a> {
    id: &'a str,
    name: &'a str,
    count: u64,
}

#[derive(serde::Serialize)]
struct UtilisationJson {
    kind: &'static str,
    value: f64,
}

#[derive(serde::Serialize)]
struct ArchitectureJson {
    six_n_d: u128,
    ratio: f64,
}

fn write_json(out: &mut dyn Write, input: &PlanInput<'_>, o: &PlanOutcome) -> anyhow::Result<()> {
    let (kind, value) = match input.utilisation {
        Utilisation::TensorUtil(u) => ("tensor-util", u),
        Utilisation::Mfu(u) => ("mfu", u),
    };
    let doc = EstimateJson {
        gpu: GpuJson {
            id: input.gpu.id,
            name: input.gpu.name,
            count: input.count,
        },
        days: o.days,
        utilisation: UtilisationJson { kind, value },
        precision: o.precision,
        precision_declared: o.precision_declared,
        method: o.method,
        flop: &o.flop,
        flop_per_day: &o.per_day,
        thresholds: &o.thresholds,
        architecture: o.architecture.map(|a| ArchitectureJson {
            six_n_d: a.flop,
            ratio: a.ratio,
        }),
    };
    serde_json::to_writer_pretty(&mut *out, &doc)?;
    writeln!(out)?;
    Ok(())
}

fn write_text(out: &mut dyn Write, input: &PlanInput<'_>, o: &PlanOutcome) -> std::io::Result<()> {
    let gpu = input.gpu;
    writeln!(
        out,
        "{} x {} ({}) for {} days",
        input.count,
        gpu.name,
        gpu.id,
        quantity(o.days)
    )?;
    let peak = gpu.peaks.tensor(o.precision).unwrap_or(0.0);
    match input.utilisation {
        Utilisation::TensorUtil(u) => writeln!(
            out,
            "  method     {}: tensor activity {u} x dense {} peak {peak} TFLOP/s",
            o.method, o.precision
        )?,
        Utilisation::Mfu(u) => writeln!(
            out,
            "  method     {}: MFU {u} x dense {} peak {peak} TFLOP/s",
            o.method, o.precision
        )?,
    }
    if o.precision_declared {
        writeln!(out, "  precision  {} (declared)", o.precision)?;
    } else {
        writeln!(
            out,
            "  precision  {} assumed; the high bound assumes {}. Pass --precision to narrow the band.",
            o.precision,
            gpu.high_precision()
        )?;
    }
    writeln!(out)?;
    let levels: Vec<u128> = o.thresholds.iter().map(|t| t.flop).collect();
    writeln!(
        out,
        "  FLOP       {} central   [low {}, high {}]",
        flop_near(o.flop.central, &levels),
        flop_near(o.flop.low, &levels),
        flop_near(o.flop.high, &levels)
    )?;
    writeln!(out, "  per day    {} central", flop(o.per_day.central))?;
    if let Some(a) = o.architecture {
        writeln!(
            out,
            "  6·N·D      {}   hardware / architecture = {:.2}",
            flop_near(a.flop, &levels),
            a.ratio
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "  {:<20} {:<6} {:>7}  {:<18} high bound",
        "threshold", "where", "level", "central"
    )?;
    for t in &o.thresholds {
        let show = |crossed: bool, day: Option<u64>| match (crossed, day) {
            (true, Some(d)) => format!("crossed on day {d}"),
            (true, None) => "crossed".to_string(),
            _ => "not crossed".to_string(),
        };
        writeln!(
            out,
            "  {:<20} {:<6} {:>7}  {:<18} {}",
            t.name,
            t.jurisdiction,
            flop(t.flop),
            show(t.crossed, t.crossing_day),
            show(t.crossed_high, t.crossing_day_high)
        )?;
    }
    if o.thresholds.iter().any(|t| t.notify && t.crossed_high) {
        writeln!(out)?;
        writeln!(
            out,
            "  A notifying threshold is crossed: under EU AI Act Art. 52(1) the two-week clock can start \
             as soon as it is known the threshold will be met, i.e. before the run starts."
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_accept_scientific_notation() {
        assert_eq!(parse_count("70e9"), Ok(70_000_000_000));
        // Exact, where f64 would read 10000000000000000905969664.
        assert_eq!(parse_count("1e25"), Ok(10u128.pow(25)));
        assert_eq!(parse_count("1.5e12"), Ok(1_500_000_000_000));
        assert!(parse_count("0e2147483647").is_err());
        assert_eq!(parse_count("15_000"), Ok(15_000));
        assert!(parse_count("1.5").is_err());
        assert!(parse_count("-3").is_err());
        assert!(parse_count("many").is_err());
    }
}
