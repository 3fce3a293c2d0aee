//! Writing a small file atomically and durably.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// Who may read a file [`write_atomic`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The process's umask decides (ids, guard files, certificates).
    Shared,
    /// Mode 0600 from the moment the file exists (private keys): never readable by others,
    /// not even for an instant, and not through a file that already existed either.
    Private,
}

/// Writes `contents` to `path` so that a crash at any point leaves either the old file or the
/// new one: a temporary file beside it (`<name>.tmp`), fsynced, renamed over `path`, and the
/// directory fsynced so the rename itself survives a power cut. `Ok` means the new contents
/// are durable.
///
/// The temporary file has a fixed name, so a crash leaves at most one behind and the next
/// write replaces it; two writers of the same path must not run at once (callers serialize
/// them, see [`crate::GuardFile`]).
pub fn write_atomic(path: &Path, contents: &[u8], access: Access) -> io::Result<()> {
    let tmp = temp_path(path);
    let mut opts = OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if access == Access::Private {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    // A temporary file left by a crash keeps its old mode through `open`: set it.
    #[cfg(unix)]
    if access == Access::Private {
        use std::os::unix::fs::PermissionsExt as _;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(contents)?;
    f.sync_all()?;
    drop(f);
    #[expect(
        clippy::disallowed_methods,
        reason = "the one rename the house rule points to"
    )]
    std::fs::rename(&tmp, path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        write_atomic(&path, b"one", Access::Shared).unwrap();
        write_atomic(&path, b"two", Access::Shared).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["ca.pem"], "no temporary file is left behind");
    }

    #[cfg(unix)]
    #[test]
    fn private_files_are_0600_even_over_a_leftover_temporary() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        // What a crash could leave: a world-readable temporary file.
        std::fs::write(temp_path(&path), b"old").unwrap();
        std::fs::set_permissions(temp_path(&path), std::fs::Permissions::from_mode(0o644)).unwrap();
        write_atomic(&path, b"secret", Access::Private).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_missing_directory_is_an_error_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent").join("id");
        let e = write_atomic(&path, b"x", Access::Shared).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
