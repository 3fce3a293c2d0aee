//! The one durability rule.

use std::sync::Mutex;

/// Why a flush did not make what was written durable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FlushError {
    /// This fsync failed: what was written since the last good flush may be lost.
    #[error("fsync failed: {0}")]
    Failed(#[source] sled::Error),
    /// An earlier fsync failed, so this one proves nothing: the kernel may have dropped the
    /// pages the earlier one could not write, and a later fsync succeeds without them.
    #[error(
        "an earlier fsync failed ({0}): nothing written since is known to be durable until \
         the process restarts"
    )]
    AfterFailure(#[source] sled::Error),
}

/// Flushes one sled database under the durability rule: once a flush failed, every later
/// flush reports [`FlushError::AfterFailure`] until the process restarts, whatever the
/// fsync itself says. Callers report something durable only on `Ok`, and move their guard
/// file ([`crate::GuardFile`]) only then.
///
/// A restart ends it because reopening reads what is really on disk, and the guard file,
/// never moved after the failure, tells whether that is less than was made durable before.
#[derive(Debug)]
pub struct Flusher {
    db: sled::Db,
    /// The first failure, kept for every later error.
    failed: Mutex<Option<sled::Error>>,
}

impl Flusher {
    /// A flusher for `db`, durable so far.
    pub fn new(db: sled::Db) -> Flusher {
        Flusher {
            db,
            failed: Mutex::new(None),
        }
    }

    /// Flushes (fsync) everything written so far. After a failure it still flushes, so
    /// that as much as possible reaches the disk, but reports nothing durable.
    pub fn flush(&self) -> Result<(), FlushError> {
        let result = self.db.flush();
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        match (result, failed.as_ref()) {
            (Ok(_), None) => Ok(()),
            (Ok(_), Some(first)) => Err(FlushError::AfterFailure(first.clone())),
            (Err(e), None) => {
                *failed = Some(e.clone());
                Err(FlushError::Failed(e))
            }
            (Err(e), Some(_)) => Err(FlushError::Failed(e)),
        }
    }

    /// Whether every flush so far succeeded.
    pub fn durable(&self) -> bool {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }
}
