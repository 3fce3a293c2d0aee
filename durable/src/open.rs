//! Opening a sled database: its lock, its damage, its panics.

use std::any::Any;
use std::fs::{File, TryLockError};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long to wait between attempts on a database whose lock is held.
const LOCK_RETRY: Duration = Duration::from_millis(40);

/// sled failed in a way that says the files themselves are damaged.
#[derive(Debug, thiserror::Error)]
pub enum Damage {
    /// sled refused the files (not a database, a truncated or garbled log, a mismatched
    /// configuration).
    #[error("the storage engine cannot open it ({0})")]
    Unreadable(#[source] sled::Error),
    /// sled panicked reading them (sled 0.34 asserts on some damaged pages).
    #[error("the storage engine failed reading it ({0})")]
    Panicked(#[source] Panicked),
}

/// A panic of the storage engine, caught ([`catch_panic`]).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Panicked {
    /// The panic's message.
    pub message: String,
}

/// Why a database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process holds the database's lock (sled allows one process per database).
    #[error("{} is locked by another process ({source})", dir.display())]
    Locked {
        /// The database directory.
        dir: PathBuf,
        /// sled's error.
        #[source]
        source: sled::Error,
    },
    /// The directory cannot be created, read or written (permissions, a file in its place, a
    /// read-only file system).
    #[error("cannot open {}: {source}", dir.display())]
    Unusable {
        /// The database directory.
        dir: PathBuf,
        /// The file-system error.
        #[source]
        source: std::io::Error,
    },
    /// The files are damaged.
    #[error("{} is damaged: {cause}", dir.display())]
    Damaged {
        /// The database directory.
        dir: PathBuf,
        /// What sled said.
        #[source]
        cause: Damage,
    },
}

/// Opens the sled database in `dir` with `config` (its path is set here). A lock held by
/// another handle is waited for up to `lock_wait`: a database this process closed a moment
/// ago may still be locked by sled's background threads, which drop their handles shortly
/// after the last `Db`.
pub fn open(dir: &Path, config: sled::Config, lock_wait: Duration) -> Result<sled::Db, OpenError> {
    let config = config.path(dir);
    let deadline = Instant::now() + lock_wait;
    loop {
        #[expect(
            clippy::disallowed_methods,
            reason = "the one sled open the house rule points to"
        )]
        let e = match catch_panic(|| config.open()) {
            Ok(Ok(db)) => return Ok(db),
            Ok(Err(e)) => e,
            Err(p) => {
                return Err(OpenError::Damaged {
                    dir: dir.to_path_buf(),
                    cause: Damage::Panicked(p),
                });
            }
        };
        match classify(dir, e) {
            OpenError::Locked { .. } if Instant::now() < deadline => std::thread::sleep(LOCK_RETRY),
            other => return Err(other),
        }
    }
}

/// Sorts one of sled's open errors by kind. sled reports a held lock as an I/O error of kind
/// `Other`, so the lock is asked directly: another handle holds it when taking it would
/// block.
fn classify(dir: &Path, e: sled::Error) -> OpenError {
    let dir = dir.to_path_buf();
    let sled::Error::Io(io) = e else {
        return OpenError::Damaged {
            dir,
            cause: Damage::Unreadable(e),
        };
    };
    if lock_held(&dir) {
        return OpenError::Locked {
            dir,
            source: sled::Error::Io(io),
        };
    }
    match io.kind() {
        ErrorKind::PermissionDenied
        | ErrorKind::NotADirectory
        | ErrorKind::AlreadyExists
        | ErrorKind::NotFound
        | ErrorKind::ReadOnlyFilesystem
        | ErrorKind::IsADirectory => OpenError::Unusable { dir, source: io },
        _ => OpenError::Damaged {
            dir,
            cause: Damage::Unreadable(sled::Error::Io(io)),
        },
    }
}

/// Whether another open file holds the lock sled takes (`flock` on `<dir>/db`).
fn lock_held(dir: &Path) -> bool {
    let Ok(file) = File::open(dir.join("db")) else {
        return false;
    };
    // Dropping `file` releases the lock if this probe took it.
    matches!(file.try_lock(), Err(TryLockError::WouldBlock))
}

/// Runs storage-engine work that may panic on damaged files and turns a panic into an error.
pub fn catch_panic<T>(f: impl FnOnce() -> T) -> Result<T, Panicked> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| Panicked {
        message: panic_message(p.as_ref()),
    })
}

fn panic_message(p: &(dyn Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> sled::Config {
        sled::Config::new().flush_every_ms(None)
    }

    #[test]
    fn a_held_lock_is_locked_not_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let _held = open(dir.path(), config(), Duration::ZERO).unwrap();
        let e = open(dir.path(), config(), Duration::from_millis(100)).unwrap_err();
        assert!(matches!(e, OpenError::Locked { .. }), "{e:?}");
    }

    #[test]
    fn a_file_in_place_of_the_directory_is_unusable() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("spool");
        std::fs::write(&file, b"not a directory").unwrap();
        let e = open(&file, config(), Duration::ZERO).unwrap_err();
        assert!(matches!(e, OpenError::Unusable { .. }), "{e:?}");
    }

    #[test]
    fn garbage_files_are_damaged() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path(), config(), Duration::ZERO).unwrap());
        // sled's configuration record, overwritten with noise.
        std::fs::write(dir.path().join("conf"), [0xA5u8; 64]).unwrap();
        let e = open(dir.path(), config(), Duration::from_secs(2)).unwrap_err();
        assert!(matches!(e, OpenError::Damaged { .. }), "{e:?}");
    }

    #[test]
    fn a_panic_becomes_its_message() {
        let p = catch_panic(|| -> u8 { panic!("bad page") }).unwrap_err();
        assert_eq!(p.message, "bad page");
    }
}
