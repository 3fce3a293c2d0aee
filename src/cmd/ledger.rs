//! `flopmeter ledger verify`: recompute every aggregate from the raw records and rollups and
//! compare, on a running collector (admin RPC) or offline on a ledger directory.

use std::io::Write;
use std::path::PathBuf;

use flopmeter_collector::ledger::LedgerStore;
use flopmeter_collector::ledger::sled_store::SledStore;
use flopmeter_proto::v1 as pb;
use serde::Serialize;

use super::client::{ClientArgs, runtime, status_error};

/// Options of `flopmeter ledger`.
#[derive(Debug, clap::Args, Serialize)]
pub struct LedgerArgs {
    #[command(subcommand)]
    pub action: LedgerAction,
}

/// `flopmeter ledger` subcommands.
#[derive(Debug, clap::Subcommand, Serialize)]
pub enum LedgerAction {
    /// Recompute every run, model and unattributed aggregate from the raw records and
    /// rollups, and report each one that differs from what is stored. Exit code 1 on any
    /// mismatch.
    Verify(VerifyArgs),
}

/// Options of `flopmeter ledger verify`.
#[derive(Debug, clap::Args, Serialize)]
#[serde(rename_all = "kebab-case")]
#[command(after_help = "\
Examples:
  flopmeter ledger verify --collector http://collector:7443   # pauses ingest while it runs
  flopmeter ledger verify --data-dir /var/lib/flopmeter/collector   # collector stopped")]
pub struct VerifyArgs {
    /// Verify this ledger directory directly instead of asking a collector (the collector
    /// must be stopped: one process per ledger).
    #[arg(long, env = "FLOPMETER_LEDGER_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    #[command(flatten)]
    #[serde(flatten)]
    pub client: ClientArgs,
}

/// The ledger does not match its recomputation.
#[derive(Debug, thiserror::Error)]
#[error("ledger verification failed: {0} mismatch(es)")]
pub struct VerifyFailed(pub usize);

/// Runs `flopmeter ledger ...`.
pub fn run(args: &LedgerArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let LedgerAction::Verify(a) = &args.action;
    let (summary, mismatches) = match &a.data_dir {
        Some(dir) => {
            let r = SledStore::open(dir)?.verify()?;
            (r.summary(), r.mismatches)
        }
        None => runtime()?.block_on(async {
            let mut c = a.client.connect().await?;
            let r = c
                .verify_ledger(a.client.request(pb::VerifyLedgerRequest {})?)
                .await
                .map_err(status_error)?
                .into_inner();
            anyhow::Ok((r.summary, r.mismatches))
        })?,
    };
    writeln!(out, "{summary}")?;
    for m in &mismatches {
        writeln!(out, "MISMATCH {m}")?;
    }
    if mismatches.is_empty() {
        writeln!(out, "ok: every aggregate equals its recomputation")?;
        Ok(())
    } else {
        Err(VerifyFailed(mismatches.len()).into())
    }
}
