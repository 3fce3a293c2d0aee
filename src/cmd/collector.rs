//! `flopmeter collector`: the ledger server. Thin: logging, signals, and the collector
//! crate's `Collector`.

use std::io::Write;

use anyhow::Context;
use flopmeter_collector::Collector;
use flopmeter_collector::config::{CollectorArgs, CollectorConfig, LogFormat};

use super::InvalidInput;

/// Runs the collector until SIGTERM or SIGINT, then shuts down gracefully.
pub fn run(args: &CollectorArgs, _out: &mut dyn Write) -> anyhow::Result<()> {
    super::init_logging(matches!(args.log_format, LogFormat::Json));
    // Every configuration error (a flag out of range, an unreadable or invalid tokens or
    // thresholds file) is the user's to fix: exit code 2, like clap's.
    let cfg = CollectorConfig::from_args(args).map_err(InvalidInput::new)?;
    tracing::info!(config = ?cfg, "starting collector");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("collector")
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let collector = Collector::start(cfg).await?;
        if let Some(path) = &args.ready_file {
            super::ready::write(
                path,
                &serde_json::json!({
                    "grpc": collector.grpc_addr().to_string(),
                    "http": collector.http_addr().to_string(),
                }),
            )?;
        }
        wait_for_signal().await?;
        tracing::info!("shutting down");
        if let Some(path) = &args.ready_file {
            super::ready::remove(path);
        }
        collector.shutdown().await?;
        anyhow::Ok(())
    })
}

/// Resolves on SIGTERM (what supervisors and `kill` send) or SIGINT (Ctrl-C).
pub(super) async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot watch SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}
