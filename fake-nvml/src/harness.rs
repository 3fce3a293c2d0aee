//! Test support: a private, freshly built copy of the fake library per test.
//!
//! # Why a copy per test
//! `dlopen` of one path returns one instance per process, so every test loading the same
//! `.so` would share one global state (and one scenario). A copy in a temp dir is a separate
//! inode, hence a separate instance, and the scenario and clock files beside it are that
//! instance's alone. Tests can therefore run in parallel.
//!
//! # How the library gets built
//! A dev-dependency on this crate makes cargo compile the cdylib as a side effect, but that
//! is undocumented behaviour and says nothing about *where* the file lands. So
//! [`cdylib_path`] asks cargo itself, once per test process: it runs
//! `$CARGO build -p fake-nvml --message-format=json` (the `CARGO` the tests run under, the
//! same profile, and whatever `CARGO_TARGET_DIR` the environment sets) and takes the cdylib
//! path from cargo's `compiler-artifact` message. On a fresh clone that builds the library;
//! afterwards it is a no-op that still guarantees the file matches the current sources.
//! Cargo releases its build lock before running tests, so the nested build does not block.
//! Set `FAKE_NVML_LIB` to a prebuilt library to skip the nested build.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::{CLOCK_FILE_NAME, SCENARIO_FILE_NAME};

/// Environment variable naming a prebuilt fake library; skips the nested cargo build.
pub const LIB_ENV: &str = "FAKE_NVML_LIB";

/// Why the harness could not provide a library.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// Running cargo failed.
    #[error("could not run `{cargo} build -p fake-nvml`: {source}")]
    Spawn {
        /// The cargo binary.
        cargo: String,
        /// The I/O error.
        source: io::Error,
    },
    /// Cargo ran but the build failed.
    #[error("`cargo build -p fake-nvml` failed ({status}):\n{stderr}")]
    Build {
        /// Exit status.
        status: String,
        /// Cargo's stderr.
        stderr: String,
    },
    /// Cargo's output named no cdylib.
    #[error("cargo built fake-nvml but reported no cdylib artifact")]
    NoArtifact,
    /// File system trouble.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: io::Error,
    },
    /// A symbol to hide is not in the library's string table.
    #[error("symbol {0} not found in the fake library")]
    NoSuchSymbol(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> HarnessError {
    let what = what.into();
    move |source| HarnessError::Io { what, source }
}

/// The freshly built fake library (see the module docs), built at most once per process.
pub fn cdylib_path() -> Result<PathBuf, HarnessError> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    if let Some(path) = std::env::var_os(LIB_ENV) {
        return Ok(PathBuf::from(path));
    }
    // The error is kept as text: HarnessError holds io::Error, which is not Clone, and every
    // later caller needs its own copy.
    match BUILT.get_or_init(|| build().map_err(|e| e.to_string())) {
        Ok(p) => Ok(p.clone()),
        Err(e) => Err(HarnessError::Build {
            status: "earlier attempt".into(),
            stderr: e.clone(),
        }),
    }
}

fn build() -> Result<PathBuf, HarnessError> {
    let cargo = std::env::var_os("CARGO")
        .or_else(|| option_env!("CARGO").map(OsString::from))
        .unwrap_or_else(|| OsString::from("cargo"));
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let mut cmd = Command::new(&cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(&manifest)
        .args([
            "-p",
            "fake-nvml",
            "--lib",
            "--message-format=json-render-diagnostics",
        ]);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let out = cmd.output().map_err(|source| HarnessError::Spawn {
        cargo: cargo.to_string_lossy().into_owned(),
        source,
    })?;
    if !out.status.success() {
        return Err(HarnessError::Build {
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let suffix = std::env::consts::DLL_SUFFIX;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| {
            msg["reason"] == "compiler-artifact"
                && msg["target"]["name"] == "fake_nvml"
                && msg["target"]["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "cdylib"))
        })
        .flat_map(|msg| {
            msg["filenames"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
        })
        .filter_map(|f| f.as_str().map(PathBuf::from))
        .find(|f| f.to_string_lossy().ends_with(suffix))
        .ok_or(HarnessError::NoArtifact)
}

/// A private instance of the fake: a temp dir holding a copy of the library (named
/// `libnvidia-ml.so.1`, as on a real node), its scenario and, optionally, its clock file.
/// The directory is removed on drop; the mapping of a loaded library survives that.
#[derive(Debug)]
pub struct FakeNvml {
    dir: tempfile::TempDir,
    lib: PathBuf,
}

impl FakeNvml {
    /// A private instance playing the scenario in `scenario_toml`.
    pub fn new(scenario_toml: &str) -> Result<FakeNvml, HarnessError> {
        Self::without_symbols(scenario_toml, &[])
    }

    /// A private instance playing the scenario file at `path`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<FakeNvml, HarnessError> {
        let path = path.as_ref();
        let text =
            std::fs::read_to_string(path).map_err(io_err(format!("reading {}", path.display())))?;
        Self::new(&text)
    }

    /// Like [`FakeNvml::new`], with the named functions missing from the library, so the
    /// caller's symbol lookup fails exactly as with an old driver that lacks them.
    ///
    /// The copy's dynamic string table is patched: each `\0name\0` has its first letter
    /// changed, so the dynamic linker's lookup of `name` no longer matches (same length,
    /// so no offset moves). The code stays in place, unreachable by that name.
    pub fn without_symbols(scenario_toml: &str, hidden: &[&str]) -> Result<FakeNvml, HarnessError> {
        let source = cdylib_path()?;
        let dir = tempfile::Builder::new()
            .prefix("fake-nvml-")
            .tempdir()
            .map_err(io_err("creating a temp dir"))?;
        let lib = dir.path().join("libnvidia-ml.so.1");
        let mut bytes =
            std::fs::read(&source).map_err(io_err(format!("reading {}", source.display())))?;
        for name in hidden {
            if !hide_symbol(&mut bytes, name) {
                return Err(HarnessError::NoSuchSymbol((*name).to_string()));
            }
        }
        std::fs::write(&lib, &bytes).map_err(io_err(format!("writing {}", lib.display())))?;
        let scenario = dir.path().join(SCENARIO_FILE_NAME);
        std::fs::write(&scenario, scenario_toml)
            .map_err(io_err(format!("writing {}", scenario.display())))?;
        Ok(FakeNvml { dir, lib })
    }

    /// The library to hand to `Nvml::builder().lib_path(..)` or `--nvml-lib`.
    pub fn lib_path(&self) -> &Path {
        &self.lib
    }

    /// The temp dir holding the library, scenario and clock file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Sets the scenario time (seconds) seen by this instance from now on. The file is
    /// replaced atomically (write then rename) so a concurrent reader never sees it empty.
    /// Not `flopmeter_durable::write_atomic`: a test's clock needs no fsync to survive a power
    /// cut, and the fake library must not link sled.
    pub fn set_time(&self, seconds: f64) -> Result<(), HarnessError> {
        let tmp = self.dir.path().join(format!("{CLOCK_FILE_NAME}.tmp"));
        let clock = self.dir.path().join(CLOCK_FILE_NAME);
        std::fs::write(&tmp, format!("{seconds}"))
            .map_err(io_err(format!("writing {}", tmp.display())))?;
        #[expect(
            clippy::disallowed_methods,
            reason = "a test clock needs atomicity, not durability (see above)"
        )]
        std::fs::rename(&tmp, &clock).map_err(io_err(format!("renaming to {}", clock.display())))
    }
}

/// Renames every NUL-delimited occurrence of `name` in an ELF image; false if none.
fn hide_symbol(bytes: &mut [u8], name: &str) -> bool {
    let mut pattern = Vec::with_capacity(name.len() + 2);
    pattern.push(0);
    pattern.extend_from_slice(name.as_bytes());
    pattern.push(0);
    let mut found = false;
    let mut i = 0;
    while i + pattern.len() <= bytes.len() {
        if bytes[i..i + pattern.len()] == pattern[..] {
            // 'x' keeps the string length and cannot collide with any `nvml*` name.
            bytes[i + 1] = b'x';
            found = true;
            i += pattern.len() - 1;
        } else {
            i += 1;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::hide_symbol;

    #[test]
    fn hides_whole_names_only() {
        let mut image = b"\0nvmlInit\0nvmlInit_v2\0xnvmlInit\0".to_vec();
        assert!(hide_symbol(&mut image, "nvmlInit"));
        assert_eq!(&image[..], b"\0xvmlInit\0nvmlInit_v2\0xnvmlInit\0");
        assert!(!hide_symbol(&mut image, "nvmlShutdown"));
    }
}
