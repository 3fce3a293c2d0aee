//! `flopmeter alerts`, `flopmeter ack`, `flopmeter dismiss`, `flopmeter audit verify|export`:
//! the compliance engine's admin side (issue 6).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use flopmeter_collector::compliance::ComplianceStore;
use flopmeter_collector::ledger::sled_store::SledStore;
use flopmeter_proto::v1 as pb;
use flopmeter_proto::v1::compliance_client::ComplianceClient;
use serde::Serialize;
use tonic::transport::Channel;

use super::InvalidInput;
use super::client::{ClientArgs, runtime, status_error};

async fn connect(c: &ClientArgs) -> anyhow::Result<ComplianceClient<Channel>> {
    Ok(ComplianceClient::new(c.channel().await?).max_decoding_message_size(64 << 20))
}

/// Options of `flopmeter alerts`.
#[derive(Debug, clap::Args, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct AlertsArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub client: ClientArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Writes alerts as a table.
pub fn print_alerts(out: &mut dyn Write, alerts: &[pb::AlertSummary]) -> anyhow::Result<()> {
    if alerts.is_empty() {
        writeln!(out, "no alerts")?;
        return Ok(());
    }
    for a in alerts {
        writeln!(out, "{} / {}: {}", a.model, a.threshold, a.status)?;
        if !a.clock_start.is_empty() {
            writeln!(out, "  clock started {} {}", a.clock_start, a.reason)?;
            writeln!(out, "  deadline      {} ({})", a.deadline, a.time_left)?;
        }
        if !a.acknowledged.is_empty() {
            writeln!(out, "  acknowledged  {}", a.acknowledged)?;
        }
        if !a.dismissed.is_empty() {
            writeln!(out, "  dismissed     {}", a.dismissed)?;
        }
        let delivery: Vec<String> = a
            .delivery
            .iter()
            .map(|d| {
                let mut s = format!("{} {} delivered", d.sink, d.delivered);
                if d.pending > 0 {
                    s.push_str(&format!(", {} pending", d.pending));
                }
                if !d.last_error.is_empty() {
                    s.push_str(&format!(" (last error: {})", d.last_error));
                }
                s
            })
            .collect();
        writeln!(out, "  delivery      {}", delivery.join("; "))?;
        if !a.summary.is_empty() {
            writeln!(out, "  {}", a.summary)?;
        }
    }
    Ok(())
}

/// Runs `flopmeter alerts`.
pub fn run_alerts(args: &AlertsArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let resp = runtime()?.block_on(async {
        let mut c = connect(&args.client).await?;
        c.list_alerts(pb::ListAlertsRequest {})
            .await
            .map_err(status_error)
    })?;
    let alerts = resp.into_inner().alerts;
    if args.json {
        let v: Vec<serde_json::Value> = alerts
            .iter()
            .map(|a| serde_json::from_str(&a.content_json).unwrap_or(serde_json::Value::Null))
            .zip(alerts.iter())
            .map(|(content, a)| {
                serde_json::json!({
                    "model": a.model, "threshold": a.threshold, "status": a.status,
                    "clock_start": a.clock_start, "reason": a.reason, "deadline": a.deadline,
                    "time_left": a.time_left, "acknowledged": a.acknowledged,
                    "dismissed": a.dismissed, "content": content,
                    "delivery": a.delivery.iter().map(|d| serde_json::json!({
                        "sink": d.sink, "delivered": d.delivered, "pending": d.pending,
                        "last_error": d.last_error})).collect::<Vec<_>>(),
                })
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    print_alerts(out, &alerts)
}

/// Options of `flopmeter ack`.
#[derive(Debug, clap::Args, Serialize)]
#[serde(rename_all = "kebab-case")]
#[command(after_help = "\
Example:
  flopmeter ack --model acme-400b --threshold eu-systemic-risk \\
      --reference \"AI Office notification 2026-0042\" --by alice")]
pub struct AckArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub client: ClientArgs,
    /// Model.
    #[arg(long)]
    pub model: String,
    /// Threshold id.
    #[arg(long, default_value = "eu-systemic-risk")]
    pub threshold: String,
    /// The notification's reference (what was sent, where).
    #[arg(long)]
    pub reference: String,
    /// Who records it. Required with the collector's shared admin token; with a named admin
    /// token (the collector's --admin-tokens) the token names you and this may be left out.
    #[arg(long, env = "FLOPMETER_BY", value_name = "NAME", default_value = "")]
    pub by: String,
}

/// Options of `flopmeter dismiss`.
#[derive(Debug, clap::Args, Serialize)]
#[serde(rename_all = "kebab-case")]
#[command(after_help = "\
Example:
  flopmeter dismiss --model acme-400b --threshold eu-systemic-risk \\
      --reason \"not placed on the EU market\" --by bob")]
pub struct DismissArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub client: ClientArgs,
    /// Model.
    #[arg(long)]
    pub model: String,
    /// Threshold id.
    #[arg(long, default_value = "eu-systemic-risk")]
    pub threshold: String,
    /// Why (not placed on the EU market, rebuttal filed, ...).
    #[arg(long)]
    pub reason: String,
    /// Who dismisses. Required with the collector's shared admin token; with a named admin
    /// token (the collector's --admin-tokens) the token names you and this may be left out.
    #[arg(long, env = "FLOPMETER_BY", value_name = "NAME", default_value = "")]
    pub by: String,
}

/// Attempts at a person's action that a collector replica refuses as not the compliance
/// leader.
const LEADER_ATTEMPTS: u32 = 5;

/// Sends a person's action, retrying UNAVAILABLE over a new connection each time: with
/// several collector replicas only the compliance leader records acks and dismissals, and
/// behind a Kubernetes Service a new connection may land on it. Each retry is said on
/// stderr. (A single replica that is down answers UNAVAILABLE too; five tries a second apart
/// cost it five seconds.)
async fn to_leader<T, F, Fut>(client: &ClientArgs, what: &str, mut call: F) -> anyhow::Result<T>
where
    F: FnMut(ComplianceClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Result<T, tonic::Status>>>,
{
    let mut attempt = 1;
    loop {
        let c = connect(client).await?;
        match call(c).await? {
            Err(s) if s.code() == tonic::Code::Unavailable && attempt < LEADER_ATTEMPTS => {
                eprintln!(
                    "{what}: the collector answered UNAVAILABLE: {} (attempt {attempt} of \
                     {LEADER_ATTEMPTS}); retrying over a new connection in 1 s",
                    s.message()
                );
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            r => return r.map_err(status_error),
        }
    }
}

/// Runs `flopmeter ack`.
pub fn run_ack(args: &AckArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let resp = runtime()?.block_on(to_leader(&args.client, "ack", |mut c| async move {
        let req = args.client.request(pb::AcknowledgeRequest {
            model: args.model.clone(),
            threshold: args.threshold.clone(),
            by: args.by.clone(),
            reference: args.reference.clone(),
        })?;
        Ok(c.acknowledge(req).await)
    }))?;
    print_alerts(
        out,
        &resp.into_inner().alert.into_iter().collect::<Vec<_>>(),
    )
}

/// Runs `flopmeter dismiss`.
pub fn run_dismiss(args: &DismissArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let resp = runtime()?.block_on(to_leader(&args.client, "dismiss", |mut c| async move {
        let req = args.client.request(pb::DismissRequest {
            model: args.model.clone(),
            threshold: args.threshold.clone(),
            by: args.by.clone(),
            reason: args.reason.clone(),
        })?;
        Ok(c.dismiss(req).await)
    }))?;
    print_alerts(
        out,
        &resp.into_inner().alert.into_iter().collect::<Vec<_>>(),
    )
}

/// Options of `flopmeter audit`.
#[derive(Debug, clap::Args, Serialize)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub action: AuditAction,
}

/// `flopmeter audit` subcommands.
#[derive(Debug, clap::Subcommand, Serialize)]
pub enum AuditAction {
    /// Check the whole hash chain; report the first broken link (exit 1 when broken).
    Verify(AuditSource),
    /// Write entries as JSON lines.
    Export(AuditExportArgs),
}

/// Where the audit log is read: a stopped collector's data dir, or a running collector.
#[derive(Debug, clap::Args, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct AuditSource {
    /// Read the ledger directory directly (the collector must be stopped).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Read the PostgreSQL ledger at this URL (the collectors' --store) directly; the
    /// collectors may keep running.
    #[arg(long, value_name = "URL", conflicts_with = "data_dir")]
    #[serde(skip_serializing)]
    pub store: Option<String>,
    #[command(flatten)]
    #[serde(flatten)]
    pub client: ClientArgs,
}

/// Options of `flopmeter audit export`.
#[derive(Debug, clap::Args, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct AuditExportArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub source: AuditSource,
    /// Only entries at or after this instant: a date YYYY-MM-DD (UTC), an RFC 3339 time or
    /// Unix milliseconds.
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
}

/// The compliance store of a stopped collector's directory, or of a PostgreSQL ledger.
fn open_offline(src: &AuditSource) -> anyhow::Result<Option<Arc<dyn ComplianceStore>>> {
    if let Some(dir) = &src.data_dir {
        return Ok(Some(Arc::new(SledStore::open(dir)?)));
    }
    match &src.store {
        Some(url) => Ok(Some(super::open_store(url)?.compliance)),
        None => Ok(None),
    }
}

/// Parses `--since` by the one rule of [`flopmeter_core::utc::parse_utc`].
pub fn parse_since(s: &str) -> anyhow::Result<i64> {
    flopmeter_core::utc::parse_utc(s).map_err(|e| InvalidInput::flag("since", e).into())
}

/// Runs `flopmeter audit`.
pub fn run_audit(args: &AuditArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    match &args.action {
        AuditAction::Verify(src) => {
            let (ok, entries, verified, head, broken) = match open_offline(src)? {
                Some(store) => {
                    let s = store.chain_status()?;
                    (
                        s.ok(),
                        s.entries,
                        s.verified(),
                        s.head_entries,
                        s.broken
                            .as_ref()
                            .map(|b| (b.index as u64, b.reason.to_string())),
                    )
                }
                None => {
                    let r = runtime()?
                        .block_on(async {
                            let mut c = connect(&src.client).await?;
                            c.verify_audit(pb::VerifyAuditRequest {})
                                .await
                                .map_err(status_error)
                        })?
                        .into_inner();
                    (
                        r.ok,
                        r.entries,
                        r.verified,
                        r.head_entries,
                        (!r.ok).then_some((r.broken_index, r.broken_reason)),
                    )
                }
            };
            if ok {
                writeln!(
                    out,
                    "audit chain OK: {entries} entries, every link verified"
                )?;
                Ok(())
            } else {
                let (i, why) = broken.unwrap_or_default();
                writeln!(out, "audit chain BROKEN at entry {i}: {why}")?;
                writeln!(
                    out,
                    "  {entries} entries present, the head accounts for {head}; entries 0..{verified} verify"
                )?;
                anyhow::bail!("the audit chain is broken at entry {i}")
            }
        }
        AuditAction::Export(a) => {
            let since = a
                .since
                .as_deref()
                .map(parse_since)
                .transpose()?
                .unwrap_or(i64::MIN);
            match open_offline(&a.source)? {
                Some(store) => {
                    for e in store.audit_entries()? {
                        if e.time_ms >= since {
                            writeln!(out, "{}", serde_json::to_string(&e)?)?;
                        }
                    }
                }
                None => {
                    let r = runtime()?.block_on(async {
                        let mut c = connect(&a.source.client).await?;
                        c.export_audit(pb::ExportAuditRequest {
                            since_unix_ms: since,
                        })
                        .await
                        .map_err(status_error)
                    })?;
                    for l in r.into_inner().lines {
                        writeln!(out, "{l}")?;
                    }
                }
            }
            Ok(())
        }
    }
}
