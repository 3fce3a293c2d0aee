//! Test-only failpoints: hooks that let a test hold the collector at a chosen instant, armed
//! only by environment variables whose names say they are for tests. The product never sets
//! them; a collector that finds one logs a warning at start.
//!
//! - `FLOPMETER_TEST_HOLD_FLUSH=<path>`: while the file `<path>` exists, the ledger writer
//!   stops before flushing a commit group that applied batches, after writing `<path>.held`
//!   (so the test knows the group is applied in memory and not on disk). Removing `<path>`
//!   lets it go on. `tests/collector_durable_mark.rs` uses it to open a second stream and
//!   SIGKILL the collector inside the window between a commit and its flush.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The variable that arms [`HoldFlush`].
pub const HOLD_FLUSH_ENV: &str = "FLOPMETER_TEST_HOLD_FLUSH";

/// The hold-the-flush failpoint, when armed.
#[derive(Debug, Clone)]
pub struct HoldFlush {
    file: PathBuf,
}

impl HoldFlush {
    /// Reads [`HOLD_FLUSH_ENV`] once; `None` in every normal run.
    pub fn from_env() -> Option<HoldFlush> {
        let file = PathBuf::from(std::env::var_os(HOLD_FLUSH_ENV)?);
        tracing::warn!(
            file = %file.display(),
            "{HOLD_FLUSH_ENV} is set: a TEST-ONLY failpoint can hold ledger flushes open"
        );
        Some(HoldFlush { file })
    }

    /// Blocks while the file exists (the writer thread is ours to block).
    pub fn wait(&self) {
        if !self.file.exists() {
            return;
        }
        let held = held_marker(&self.file);
        let _ = std::fs::write(&held, b"held\n");
        while self.file.exists() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_file(held);
    }
}

/// The file written while a flush is held.
pub fn held_marker(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".held");
    PathBuf::from(name)
}
