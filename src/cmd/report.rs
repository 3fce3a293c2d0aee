//! `flopmeter report --model M`: the Annex XI §1.2(d)(e) / Model Documentation Form figures,
//! from a running collector or, offline, from a ledger directory.

use std::io::Write;
use std::path::PathBuf;

use flopmeter_collector::ledger::LedgerStore;
use flopmeter_collector::ledger::sled_store::SledStore;
use flopmeter_collector::report::{self, Format, Report};
use flopmeter_proto::v1 as pb;
use serde::Serialize;

use super::UsageError;
use super::client::{ClientArgs, runtime, status_error};

/// Options of `flopmeter report`.
#[derive(Debug, clap::Args, Serialize)]
#[serde(rename_all = "kebab-case")]
#[command(after_help = "\
FLOP are given to two significant figures as central [low – high] with the method mix;
training time in wall-clock days; hardware-days per GPU type; energy in MWh; the per-stage and
per-run breakdown shows what the stage policy excluded; unattributed compute on the same nodes
in the same period shows what may be missing.

Examples:
  flopmeter report --model acme-7b --collector http://collector:7443
  flopmeter report --model acme-7b --format csv > acme-7b.csv
  flopmeter report --model acme-7b --data-dir /var/lib/flopmeter/collector   # collector stopped")]
pub struct ReportArgs {
    /// The model.
    #[arg(long, env = "FLOPMETER_MODEL", value_name = "MODEL")]
    pub model: String,

    /// Output format.
    #[arg(
        long,
        env = "FLOPMETER_REPORT_FORMAT",
        value_name = "FORMAT",
        default_value = "text"
    )]
    pub format: Format,

    /// Read the ledger directory directly instead of asking a collector (the collector must
    /// be stopped: one process per ledger).
    #[arg(long, env = "FLOPMETER_LEDGER_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    #[command(flatten)]
    #[serde(flatten)]
    pub client: ClientArgs,
}

/// Runs `flopmeter report`.
pub fn run(args: &ReportArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let r = match &args.data_dir {
        Some(dir) => offline(dir, &args.model)?,
        None => runtime()?.block_on(async {
            let mut c = args.client.connect().await?;
            let resp = c
                .report(args.client.request(pb::ReportRequest {
                    model: args.model.clone(),
                })?)
                .await
                .map_err(status_error)?;
            let r: Report = serde_json::from_str(&resp.into_inner().json)?;
            anyhow::Ok(r)
        })?,
    };
    out.write_all(report::render(&r, args.format).as_bytes())?;
    Ok(())
}

fn offline(dir: &std::path::Path, model: &str) -> anyhow::Result<Report> {
    let store = SledStore::open(dir)?;
    let policy = store.stage_policy()?.unwrap_or_default();
    report::build(&store, model, &policy, flopmeter_collector::now_unix_ms())?
        .ok_or_else(|| UsageError(format!("the ledger knows no model {model:?}")).into())
}
