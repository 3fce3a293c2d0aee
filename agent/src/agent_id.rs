//! The agent id: generated once and kept beside the spool.
//!
//! Why beside the spool: the collector's exactly-once accounting keys its high-water mark by
//! (agent id, sequence number), and the sequence counter lives in the spool. The two must
//! travel together: a spool read under another id would present sequence numbers the
//! collector never saw (a gap it waits for forever), and a fresh id with an old spool would
//! do the same. So the id is a file in the spool directory, and an explicit `--agent-id`
//! that contradicts a spool that has already numbered records is refused.

use std::io::Read;
use std::path::Path;

/// The file holding the id, in the spool directory.
pub const FILE_NAME: &str = "agent-id";

/// Errors around the agent id.
#[derive(Debug, thiserror::Error)]
pub enum AgentIdError {
    /// Reading or writing the id file failed.
    #[error("agent id file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `--agent-id` differs from the id that numbered the spool's records.
    #[error(
        "--agent-id {given:?} differs from {stored:?}, the id that numbered the records in \
         {dir}; use that id, or a new --spool-dir for a new agent"
    )]
    Mismatch {
        /// The flag's value.
        given: String,
        /// The stored id.
        stored: String,
        /// The spool directory.
        dir: String,
    },
    /// An id that cannot be sent or stored.
    #[error("agent id {0:?} must be 1 to 128 printable characters without spaces")]
    Invalid(String),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> AgentIdError + '_ {
    move |source| AgentIdError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn valid(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_graphic())
}

/// The id to run with. `explicit` is `--agent-id`; `spool_used` says whether the spool has
/// ever numbered a record (then the stored id is binding).
pub fn resolve(
    dir: &Path,
    explicit: Option<&str>,
    spool_used: bool,
) -> Result<String, AgentIdError> {
    let path = dir.join(FILE_NAME);
    let stored = match std::fs::read_to_string(&path) {
        Ok(s) => Some(s.trim().to_string()).filter(|s| !s.is_empty()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(&path)(e)),
    };
    match (explicit, stored) {
        (Some(given), Some(stored)) if given != stored => {
            if spool_used {
                Err(AgentIdError::Mismatch {
                    given: given.to_string(),
                    stored,
                    dir: dir.display().to_string(),
                })
            } else {
                store(&path, given)?;
                Ok(given.to_string())
            }
        }
        (Some(given), None) => {
            if !valid(given) {
                return Err(AgentIdError::Invalid(given.to_string()));
            }
            store(&path, given)?;
            Ok(given.to_string())
        }
        (_, Some(stored)) => Ok(stored),
        (None, None) => {
            let id = generate(&path)?;
            store(&path, &id)?;
            Ok(id)
        }
    }
}

/// A random id in UUID form (version 4).
fn generate(path: &Path) -> Result<String, AgentIdError> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(io(path))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// Writes the id durably ([`flopmeter_durable::write_atomic`]), so a crash never leaves a
/// half id.
fn store(path: &Path, id: &str) -> Result<(), AgentIdError> {
    if !valid(id) {
        return Err(AgentIdError::Invalid(id.to_string()));
    }
    flopmeter_durable::write_atomic(
        path,
        format!("{id}\n").as_bytes(),
        flopmeter_durable::Access::Shared,
    )
    .map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = resolve(dir.path(), None, false).unwrap();
        assert_eq!(a.len(), 36);
        assert_eq!(resolve(dir.path(), None, true).unwrap(), a);
    }

    #[test]
    fn explicit_id_cannot_contradict_a_used_spool() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            resolve(dir.path(), Some("node-a"), false).unwrap(),
            "node-a"
        );
        assert!(matches!(
            resolve(dir.path(), Some("node-b"), true),
            Err(AgentIdError::Mismatch { .. })
        ));
        // A spool that never numbered a record may be re-labelled.
        assert_eq!(
            resolve(dir.path(), Some("node-b"), false).unwrap(),
            "node-b"
        );
        assert!(resolve(dir.path(), Some("has space"), false).is_err());
    }
}
