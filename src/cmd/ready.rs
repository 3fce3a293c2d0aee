//! `--ready-file`: a long-running command says what it bound, once it serves.
//!
//! With port 0 the kernel picks the ports, so nothing else knows them; a file written after
//! the listeners are up (and replaced atomically, so a reader never sees half of it) lets a
//! supervisor, a script or a test wait for readiness and learn the addresses in one step,
//! without parsing logs or racing another program for a port picked in advance.

use std::path::Path;

use anyhow::Context;

/// Writes `what` as JSON to `path` ([`flopmeter_durable::write_atomic`]).
pub fn write(path: &Path, what: &serde_json::Value) -> anyhow::Result<()> {
    flopmeter_durable::write_atomic(
        path,
        format!("{what}\n").as_bytes(),
        flopmeter_durable::Access::Shared,
    )
    .with_context(|| format!("cannot write the ready file {}", path.display()))
}

/// Removes the file at a clean stop, so nobody reads addresses nothing listens on.
pub fn remove(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove the ready file");
    }
}
