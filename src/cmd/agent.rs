//! `flopmeter agent`: the node agent. Thin: logging, signals, `--print-config`, and
//! `flopmeter_agent::run`.

use std::io::Write;

use anyhow::Context;
use flopmeter_agent::AgentArgs;
use flopmeter_agent::config::LogFormat;

use super::InvalidInput;

/// Runs the agent until SIGTERM or SIGINT, then drains and exits 0; or prints the effective
/// configuration with `--print-config`.
pub fn run(args: &AgentArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    if let Err(e) = args.validate() {
        return Err(InvalidInput::new(e).into());
    }
    if args.print_config {
        out.write_all(args.to_toml()?.as_bytes())?;
        return Ok(());
    }
    super::init_logging(matches!(args.log_format, LogFormat::Json));
    // Two workers: the shipper and the metrics endpoint are light, and NVML has its own
    // thread. A runtime per core would only add idle threads and memory on a big node.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("agent")
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let opts = flopmeter_agent::RunOptions {
            ready: Some(ready_tx),
            ..flopmeter_agent::RunOptions::default()
        };
        let ready_file = args.ready_file.clone();
        let announce = async move {
            // The sender is dropped unused when the agent fails to start: nothing to say.
            if let (Some(path), Ok(ready)) = (ready_file, ready_rx.await) {
                let what = serde_json::json!({
                    "agent_id": ready.agent_id,
                    "node": ready.node,
                    "metrics": ready.metrics_addr.map(|a| a.to_string()),
                });
                if let Err(e) = super::ready::write(&path, &what) {
                    tracing::error!(error = %format!("{e:#}"), "--ready-file");
                }
            }
        };
        let (result, ()) = tokio::join!(
            flopmeter_agent::run_with(args.clone(), opts, wait_for_signal()),
            announce
        );
        if let Some(path) = &args.ready_file {
            super::ready::remove(path);
        }
        result?;
        anyhow::Ok(())
    })
}

/// Resolves on SIGTERM or SIGINT. If the handlers cannot be installed the agent would be
/// unstoppable but for SIGKILL, which the spool survives; log and wait forever.
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("signal received");
}
