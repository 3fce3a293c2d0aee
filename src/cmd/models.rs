//! `flopmeter models` and `flopmeter runs --model M`: what the ledger holds, per model and
//! per run, from a running collector.

use std::io::Write;

use flopmeter_collector::admin::convert::band_from_pb;
use flopmeter_collector::report::date_time;
use flopmeter_core::format::{band, sig2, sig2_u128};
use flopmeter_proto::v1 as pb;
use serde::Serialize;

use super::client::{ClientArgs, runtime, status_error, u128_of};

/// Options of `flopmeter models`.
#[derive(Debug, clap::Args, Serialize)]
#[serde(rename_all = "kebab-case")]
#[command(
    after_help = "Counted FLOP follow the collector's stage policy; excluded compute \
(eval, research, ...) is shown beside it. Example: flopmeter models --collector http://collector:7443"
)]
pub struct ModelsArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub client: ClientArgs,

    /// Print JSON (exact integers as strings).
    #[arg(long, env = "FLOPMETER_JSON")]
    pub json: bool,
}

/// Options of `flopmeter runs`.
#[derive(Debug, clap::Args, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RunsArgs {
    /// The model whose runs to list.
    #[arg(long, env = "FLOPMETER_MODEL", value_name = "MODEL")]
    pub model: String,

    #[command(flatten)]
    #[serde(flatten)]
    pub client: ClientArgs,

    /// Print JSON (exact integers as strings).
    #[arg(long, env = "FLOPMETER_JSON")]
    pub json: bool,
}

fn opt_time(ms: i64) -> Option<i64> {
    (ms != 0).then_some(ms)
}

fn days(ms: &str) -> String {
    sig2(u128_of(ms) as f64 / 86_400_000.0)
}

fn mwh(mj: &str) -> String {
    sig2(u128_of(mj) as f64 / 3.6e12)
}

/// Runs `flopmeter models`.
pub fn run_models(args: &ModelsArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let resp = runtime()?.block_on(async {
        let mut c = args.client.connect().await?;
        let r = c
            .list_models(args.client.request(pb::ListModelsRequest {})?)
            .await
            .map_err(status_error)?;
        anyhow::Ok(r.into_inner())
    })?;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &json_models(&resp.models))?;
        writeln!(out)?;
        return Ok(());
    }
    if resp.models.is_empty() {
        writeln!(out, "The ledger holds no models yet.")?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<24} {:>32} {:>9} {:>5} {:>9} {:>9} {:<9} last event",
        "model", "counted FLOP central [low – high]", "excluded", "runs", "GPU-days", "MWh", "role"
    )?;
    for m in &resp.models {
        let c = band_from_pb(m.counted.as_ref());
        let x = band_from_pb(m.excluded.as_ref());
        let role = m
            .entry
            .as_ref()
            .map(|e| match e.role() {
                pb::ModelRole::Provider => "provider",
                pb::ModelRole::Modifier => "modifier",
                pb::ModelRole::Unspecified => "-",
            })
            .unwrap_or("-");
        writeln!(
            out,
            "{:<24} {:>32} {:>9} {:>5} {:>9} {:>9} {:<9} {}",
            m.model,
            band(c.low, c.central, c.high),
            sig2_u128(x.central),
            m.runs,
            days(&m.gpu_ms),
            mwh(&m.energy_mj),
            role,
            date_time(opt_time(m.last_event_unix_ms))
        )?;
    }
    Ok(())
}

#[derive(Serialize)]
struct JsonBand {
    low: String,
    central: String,
    high: String,
}

fn jb(b: Option<&pb::FlopBand128>) -> JsonBand {
    let b = b.cloned().unwrap_or_default();
    JsonBand {
        low: b.low,
        central: b.central,
        high: b.high,
    }
}

#[derive(Serialize)]
struct JsonModel<'a> {
    model: &'a str,
    counted: JsonBand,
    excluded: JsonBand,
    runs: u32,
    gpu_ms: &'a str,
    energy_mj: &'a str,
    first_event_unix_ms: Option<i64>,
    last_event_unix_ms: Option<i64>,
    records: u64,
    agents: u64,
    nodes: u64,
}

fn json_models(models: &[pb::ModelSummary]) -> Vec<JsonModel<'_>> {
    models
        .iter()
        .map(|m| JsonModel {
            model: &m.model,
            counted: jb(m.counted.as_ref()),
            excluded: jb(m.excluded.as_ref()),
            runs: m.runs,
            gpu_ms: &m.gpu_ms,
            energy_mj: &m.energy_mj,
            first_event_unix_ms: opt_time(m.first_event_unix_ms),
            last_event_unix_ms: opt_time(m.last_event_unix_ms),
            records: m.records,
            agents: m.agents,
            nodes: m.nodes,
        })
        .collect()
}

#[derive(Serialize)]
struct JsonRun<'a> {
    model: &'a str,
    run: &'a str,
    stages: &'a [String],
    counted: JsonBand,
    excluded: JsonBand,
    gpu_ms: &'a str,
    energy_mj: &'a str,
    first_event_unix_ms: Option<i64>,
    last_event_unix_ms: Option<i64>,
    records: u64,
    approximate_records: u64,
    agents: u64,
    nodes: u64,
}

/// Runs `flopmeter runs`.
pub fn run_runs(args: &RunsArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let resp = runtime()?.block_on(async {
        let mut c = args.client.connect().await?;
        let r = c
            .list_runs(args.client.request(pb::ListRunsRequest {
                model: args.model.clone(),
            })?)
            .await
            .map_err(status_error)?;
        anyhow::Ok(r.into_inner())
    })?;
    if args.json {
        let runs: Vec<JsonRun<'_>> = resp
            .runs
            .iter()
            .map(|r| JsonRun {
                model: &r.model,
                run: &r.run,
                stages: &r.stages,
                counted: jb(r.counted.as_ref()),
                excluded: jb(r.excluded.as_ref()),
                gpu_ms: &r.gpu_ms,
                energy_mj: &r.energy_mj,
                first_event_unix_ms: opt_time(r.first_event_unix_ms),
                last_event_unix_ms: opt_time(r.last_event_unix_ms),
                records: r.records,
                approximate_records: r.approximate_records,
                agents: r.agents,
                nodes: r.nodes,
            })
            .collect();
        serde_json::to_writer_pretty(&mut *out, &runs)?;
        writeln!(out)?;
        return Ok(());
    }
    if resp.runs.is_empty() {
        writeln!(out, "No runs of model {:?} in the ledger.", args.model)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<24} {:<18} {:>32} {:>9} {:>9} {:>9} {:>6} {:>5}  period",
        "run",
        "stages",
        "counted FLOP central [low – high]",
        "excluded",
        "GPU-days",
        "MWh",
        "agents",
        "nodes"
    )?;
    for r in &resp.runs {
        let c = band_from_pb(r.counted.as_ref());
        let x = band_from_pb(r.excluded.as_ref());
        writeln!(
            out,
            "{:<24} {:<18} {:>32} {:>9} {:>9} {:>9} {:>6} {:>5}  {} to {}",
            if r.run.is_empty() { "(none)" } else { &r.run },
            r.stages.join(","),
            band(c.low, c.central, c.high),
            sig2_u128(x.central),
            days(&r.gpu_ms),
            mwh(&r.energy_mj),
            r.agents,
            r.nodes,
            date_time(opt_time(r.first_event_unix_ms)),
            date_time(opt_time(r.last_event_unix_ms)),
        )?;
    }
    Ok(())
}
