//! Test-only failpoints: hooks that let a test hold the collector at a chosen instant.
//!
//! They are off unless a test turns them on: in-process tests set
//! [`Failpoints`] in `CollectorConfig::failpoints`, and a `flopmeter collector` process reads
//! them only from environment variables whose names say they are for tests. The product
//! never sets them; a collector that finds one logs a warning at start.
//!
//! - `FLOPMETER_TEST_HOLD_FLUSH=<path>` ([`Failpoints::hold_flush`]): while the file
//!   `<path>` exists, the ledger writer stops before flushing a commit group that applied
//!   batches, after writing `<path>.held` (the group is applied in memory, not on disk).
//!   `tests/collector_durable_mark.rs` opens a second stream and SIGKILLs the collector in
//!   that window.
//! - `FLOPMETER_TEST_HOLD_VERIFY_SCAN=<path>` ([`Failpoints::hold_verify_scan`]): the same
//!   for the off-writer scan of an online `VerifyLedger`; `collector/tests/verify_online.rs`
//!   checks that ingest is acknowledged while the scan is held.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The variable that arms [`Failpoints::hold_flush`] in a collector process.
pub const HOLD_FLUSH_ENV: &str = "FLOPMETER_TEST_HOLD_FLUSH";
/// The variable that arms [`Failpoints::hold_verify_scan`] in a collector process.
pub const HOLD_VERIFY_SCAN_ENV: &str = "FLOPMETER_TEST_HOLD_VERIFY_SCAN";

/// The failpoints a collector runs with (all off by default).
#[derive(Debug, Clone, Default)]
pub struct Failpoints {
    /// Hold each commit group's flush while this file exists.
    pub hold_flush: Option<Hold>,
    /// Hold each online verification's scan while this file exists.
    pub hold_verify_scan: Option<Hold>,
}

impl Failpoints {
    /// From the test-only environment variables; all off in every normal run.
    pub fn from_env() -> Failpoints {
        let hold = |var: &str| {
            let file = PathBuf::from(std::env::var_os(var)?);
            tracing::warn!(file = %file.display(), "{var} is set: a TEST-ONLY failpoint is armed");
            Some(Hold { file })
        };
        Failpoints {
            hold_flush: hold(HOLD_FLUSH_ENV),
            hold_verify_scan: hold(HOLD_VERIFY_SCAN_ENV),
        }
    }
}

/// Holds the calling thread while a file exists.
#[derive(Debug, Clone)]
pub struct Hold {
    /// The file whose existence holds.
    pub file: PathBuf,
}

impl Hold {
    /// Blocks while the file exists, having written [`held_marker`] (the thread is one
    /// the failpoint may block: the writer's, or a blocking task's).
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

/// The file written while a hold is in effect.
pub fn held_marker(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".held");
    PathBuf::from(name)
}
