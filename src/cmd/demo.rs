//! `flopmeter demo`: the compliance story on a virtual clock, in seconds, with no GPU and no
//! external service (see `flopmeter_sim::demo`).

use std::io::Write;
use std::net::SocketAddr;

use anyhow::Context;
use flopmeter_sim::demo::{self, DemoOptions};
use serde::Serialize;

/// Options of `flopmeter demo`.
#[derive(Debug, clap::Args, Serialize)]
#[serde(rename_all = "kebab-case")]
#[command(after_help = "\
Examples:
  cargo run --release -- demo
  flopmeter demo --keep-running --http-addr 127.0.0.1:9464   # then point Prometheus/Grafana at it")]
pub struct DemoArgs {
    /// Short mode: FLOP figures and levels × 1e-3 (a few thousand records; for tests).
    #[arg(long)]
    pub fast: bool,
    /// Leave the collector running after the story (Ctrl-C or SIGTERM stops it).
    #[arg(long)]
    pub keep_running: bool,
    /// gRPC address of the embedded collector (port 0: any free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// HTTP address of the embedded collector (the console at /ui/, /metrics, /api/v1).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub http_addr: SocketAddr,
    /// Keep the demo's ledger in DIR (created if missing) instead of a temporary directory
    /// removed at the end: to inspect it, or to try `flopmeter ledger migrate --from DIR`.
    #[arg(long, env = "FLOPMETER_DEMO_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<std::path::PathBuf>,
}

/// Runs `flopmeter demo`.
pub fn run(args: &DemoArgs, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let opts = DemoOptions {
            fast: args.fast,
            listen: args.listen,
            http_addr: args.http_addr,
            data_dir: args.data_dir.clone(),
            ..DemoOptions::default()
        };
        let outcome = demo::run(opts, out).await?;
        if args.keep_running {
            let http = outcome.collector.http_addr();
            writeln!(
                out,
                "\ncollector still running: console http://{http}/ui/ (log in as {} with token \
                 {}), http://{http}/metrics, http://{http}/api/v1/alerts (gRPC http://{}, \
                 admin token demo-admin-token); Ctrl-C or SIGTERM to stop",
                demo::CONSOLE_ADMIN,
                demo::CONSOLE_ADMIN_TOKEN,
                outcome.collector.grpc_addr()
            )?;
            out.flush()?;
            // SIGTERM too: that is how scripts, tests and supervisors stop it, and the
            // temporary ledger below must go either way.
            super::collector::wait_for_signal().await?;
        }
        outcome.collector.shutdown().await?;
        if outcome.temporary {
            let _ = std::fs::remove_dir_all(&outcome.data_dir);
        }
        anyhow::Ok(())
    })
}
