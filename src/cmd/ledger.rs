//! `flopmeter ledger verify`: recompute every aggregate from the raw records and rollups and
//! compare, on a running collector (admin RPC) or offline on a ledger directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use flopmeter_collector::ledger::sled_store::{DEFAULT_CACHE_BYTES, DamageScan, SledStore};
use flopmeter_collector::ledger::verify::VerifyReport;
use flopmeter_collector::ledger::{LedgerStore, StoreError};
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
  flopmeter ledger verify --collector http://collector:7443 --admin-token $TOKEN
      # needs the admin credential; ingest goes on, one verification at a time
  flopmeter ledger verify --data-dir /var/lib/flopmeter/collector   # collector stopped
  flopmeter ledger verify --store \"$DSN\"   # a PostgreSQL ledger, collectors running or not")]
pub struct VerifyArgs {
    /// Verify this ledger directory directly instead of asking a collector (the collector
    /// must be stopped: one process per ledger).
    #[arg(long, env = "FLOPMETER_LEDGER_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Verify the PostgreSQL ledger at this URL (the collectors' --store) directly. The
    /// collectors may keep running: the check cuts at every agent's high-water mark.
    #[arg(long, value_name = "URL", conflicts_with = "data_dir")]
    #[serde(skip_serializing)]
    pub store: Option<String>,

    #[command(flatten)]
    #[serde(flatten)]
    pub client: ClientArgs,
}

/// The ledger does not match its recomputation.
#[derive(Debug, thiserror::Error)]
#[error("ledger verification failed: {0} mismatch(es)")]
pub struct VerifyFailed(pub usize);

/// The ledger holds values that do not decode: `verify` cannot recompute on them.
#[derive(Debug, thiserror::Error)]
#[error(
    "the ledger in {dir} has {count} damaged value(s) (listed above): restore {dir} from a \
     backup; agents re-send everything they still hold above the restored high-water marks"
)]
pub struct LedgerDamaged {
    /// The ledger directory.
    pub dir: PathBuf,
    /// Damaged values.
    pub count: usize,
}

/// Offline verification: first every value must decode (each damaged one is listed), then
/// the recomputation.
fn verify_offline(dir: &Path, out: &mut dyn Write) -> anyhow::Result<VerifyReport> {
    // sled creates what is missing: without this, a mistyped --data-dir would verify a new,
    // empty ledger and report success.
    if !dir.join("db").is_file() {
        anyhow::bail!(
            "no ledger in {}: it has no sled `db` file (check --data-dir)",
            dir.display()
        );
    }
    let store = match SledStore::open_unchecked(dir, DEFAULT_CACHE_BYTES) {
        Ok(s) => s,
        Err(StoreError::Damaged { cause, .. }) => anyhow::bail!(
            "the ledger in {} cannot be opened: {cause}. Restore it from a backup; agents \
             re-send everything they still hold above the restored high-water marks",
            dir.display()
        ),
        Err(e) => return Err(e.into()),
    };
    // sled 0.34 can panic on damaged pages; that is a verdict on the ledger, not a crash.
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut damage = store.damage(DamageScan::Full)?;
        if let Err(e) = store.check_guard(dir) {
            damage.push(match e {
                StoreError::Damaged { cause, .. } => format!("ledger: {cause}"),
                other => other.to_string(),
            });
        }
        if damage.is_empty() {
            store.verify().map(Ok)
        } else {
            Ok(Err(damage))
        }
    }));
    match checked {
        Ok(Ok(Ok(report))) => Ok(report),
        Ok(Ok(Err(damage))) => {
            for d in &damage {
                writeln!(out, "DAMAGED {d}")?;
            }
            Err(LedgerDamaged {
                dir: dir.to_path_buf(),
                count: damage.len(),
            }
            .into())
        }
        Ok(Err(e)) => Err(anyhow::Error::from(e).context(format!(
            "verifying the ledger in {} failed; if it is damaged, restore it from a backup",
            dir.display()
        ))),
        Err(_) => anyhow::bail!(
            "the ledger in {} is damaged: the storage engine failed reading it. Restore it from \
             a backup; agents re-send everything they still hold above the restored high-water \
             marks",
            dir.display()
        ),
    }
}

/// Runs `flopmeter ledger ...`.
pub fn run(args: &LedgerArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let LedgerAction::Verify(a) = &args.action;
    let (summary, mismatches) = match (&a.data_dir, &a.store) {
        (Some(dir), _) => {
            let r = verify_offline(dir, out)?;
            (r.summary(), r.mismatches)
        }
        (None, Some(url)) => {
            let r = super::open_store(url)?.ledger.verify()?;
            (r.summary(), r.mismatches)
        }
        (None, None) => runtime()?.block_on(async {
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
