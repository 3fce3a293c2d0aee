//! `flopmeter`: one binary, one subcommand per job. Thin by design: it parses the command
//! line, calls the crates, and turns their typed errors into messages and exit codes.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;
mod config;

/// flopmeter: a training-compute meter for GPU clusters.
///
/// It estimates the floating-point operations each training run executes, per run and per
/// model, with a stated uncertainty, and watches the regulatory thresholds (EU AI Act
/// 10^25 FLOP, Art. 51/52).
///
/// Start with `flopmeter estimate --help`: it tells you, before a run starts, whether it will
/// cross a threshold and on which day.
#[derive(Debug, Parser)]
#[command(
    name = "flopmeter",
    version,
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    /// TOML config file with one table per subcommand ([agent], [collector], ...) keyed by long
    /// flag names. Precedence: command line, then FLOPMETER_* environment, then this file,
    /// then built-in defaults.
    #[arg(long, global = true, env = config::CONFIG_ENV, value_name = "FILE")]
    config: Option<std::path::PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the GPU catalogue: dense peak FLOP/s per precision, clocks, TDP, with sources.
    Gpus(cmd::gpus::GpusArgs),
    /// What-if planner: the FLOP a planned run will execute and the thresholds it crosses.
    Estimate(cmd::estimate::EstimateArgs),
}

fn main() -> ExitCode {
    let cli: Cli = match config::parse() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut stdout = std::io::stdout().lock();
    let result = match &cli.command {
        Command::Gpus(args) => cmd::gpus::run(args, &mut stdout),
        Command::Estimate(args) => cmd::estimate::run(args, &mut stdout),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => cmd::report_error(&e),
    }
}
