//! `flopmeter loadgen`: a simulated agent fleet against a collector (see the collector
//! crate's `loadgen` module).

use std::io::Write;

use flopmeter_sim::loadgen::{self, LoadgenArgs, LoadgenError};

use super::UsageError;

/// Runs the load and prints what it measured.
pub fn run(args: &LoadgenArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(loadgen::run(args)).map_err(|e| match e {
        LoadgenError::BadUrl { .. } | LoadgenError::Invalid(_) => {
            anyhow::Error::from(UsageError(e.to_string()))
        }
    })?;
    out.write_all(report.render().as_bytes())?;
    Ok(())
}
