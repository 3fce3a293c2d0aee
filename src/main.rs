//! `flopmeter`: one binary, one subcommand per job. Thin by design: it parses the command
//! line, calls the crates, and turns their typed errors into messages and exit codes.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;
mod config;
mod term;

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
    /// TOML config file with one table per subcommand (a table named agent, collector, ...) keyed by long
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
    /// Run the collector: exactly-once ingest from agents, the durable ledger, /metrics and
    /// the JSON API, the admin API.
    Collector(flopmeter_collector::config::CollectorArgs),
    /// List the models in the ledger with their counted and excluded FLOP.
    Models(cmd::models::ModelsArgs),
    /// List the runs of one model, or of every model on one cluster.
    Runs(cmd::models::RunsArgs),
    /// The model registry: base model and inherited compute, role, declared plan.
    Model(cmd::model::ModelArgs),
    /// The Annex XI / Model Documentation Form figures of one model (text, JSON, CSV).
    Report(cmd::report::ReportArgs),
    /// Ledger maintenance: `ledger verify` recomputes every total from the raw records;
    /// `ledger migrate` copies a sled ledger into PostgreSQL.
    Ledger(cmd::ledger::LedgerArgs),
    /// Load generator: simulated agents against a collector over the real protocol.
    Loadgen(flopmeter_sim::loadgen::LoadgenArgs),
    /// Run the node agent: read the GPUs, attribute FLOP to runs and models, spool the
    /// records durably and stream them to the collector.
    Agent(flopmeter_agent::AgentArgs),
    /// Show this node's GPUs and a few seconds of readings with their FLOP estimate and
    /// method: what the agent will report, before deploying it.
    Probe(flopmeter_agent::probe::ProbeArgs),
    /// The compliance story in seconds: an embedded collector, simulated agents on a virtual
    /// clock, the Art. 52 clock starting for each reason, alerts to a webhook, an ack, audit.
    Demo(cmd::demo::DemoArgs),
    /// List alerts: state, clock start and reason, deadline, time left, delivery status.
    Alerts(cmd::compliance::AlertsArgs),
    /// Record that the Art. 52 notification was made (ends the alert; admin token).
    Ack(cmd::compliance::AckArgs),
    /// Dismiss an alert with a reason (admin token; audited).
    Dismiss(cmd::compliance::DismissArgs),
    /// The audit log: `audit verify` checks the hash chain, `audit export` writes JSON lines.
    Audit(cmd::compliance::AuditArgs),
    /// TLS certificates: `certs dev` writes a development CA and certificates for the
    /// collector, agents and the CLI, and prints the flags that use them.
    Certs(cmd::certs::CertsArgs),
}

impl Command {
    /// Whether the command was asked for JSON on stdout (its errors then are JSON too).
    fn json(&self) -> bool {
        match self {
            Command::Gpus(a) => a.json,
            Command::Estimate(a) => a.json,
            Command::Models(a) => a.json,
            Command::Runs(a) => a.json,
            Command::Alerts(a) => a.json,
            Command::Probe(a) => a.json,
            Command::Report(a) => a.format == flopmeter_collector::report::Format::Json,
            _ => false,
        }
    }
}

fn main() -> ExitCode {
    let cli: Cli = match config::parse() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("error: {e}");
            config::json_error_if_asked(&e.to_string(), 2);
            return ExitCode::from(2);
        }
    };
    let mut stdout = std::io::stdout().lock();
    // What other people typed (names, references, reasons) reaches a terminal through this.
    let mut safe = term::TerminalSafe::new(std::io::stdout().lock());
    let result = match &cli.command {
        Command::Gpus(args) => cmd::gpus::run(args, &mut stdout),
        Command::Estimate(args) => cmd::estimate::run(args, &mut stdout),
        Command::Collector(args) => cmd::collector::run(args, &mut stdout),
        Command::Models(args) => cmd::models::run_models(args, &mut safe),
        Command::Runs(args) => cmd::models::run_runs(args, &mut safe),
        Command::Model(args) => cmd::model::run(args, &mut safe),
        Command::Report(args) => cmd::report::run(args, &mut safe),
        Command::Ledger(args) => cmd::ledger::run(args, &mut stdout),
        Command::Loadgen(args) => cmd::loadgen::run(args, &mut stdout),
        Command::Agent(args) => cmd::agent::run(args, &mut stdout),
        Command::Demo(args) => cmd::demo::run(args, &mut std::io::stdout()),
        Command::Alerts(args) => cmd::compliance::run_alerts(args, &mut safe),
        Command::Ack(args) => cmd::compliance::run_ack(args, &mut safe),
        Command::Dismiss(args) => cmd::compliance::run_dismiss(args, &mut safe),
        Command::Audit(args) => cmd::compliance::run_audit(args, &mut stdout),
        Command::Certs(args) => cmd::certs::run(args, &mut stdout),
        Command::Probe(args) => {
            flopmeter_agent::probe::run(args, &mut stdout).map_err(anyhow::Error::from)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let json = cli.command.json();
            cmd::report_error(&e, json.then_some(&mut stdout as &mut dyn std::io::Write))
        }
    }
}
