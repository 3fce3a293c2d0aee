//! The agent id: generated once and kept beside the spool.
//!
//! Why beside the spool: the collector's exactly-once accounting keys its high-water mark by
//! (agent id, sequence number), and the sequence counter lives in the spool. The two must
//! travel together: a spool read under another id would present sequence numbers the
//! collector never saw (a gap it waits for forever), and a fresh id with an old spool would
//! do the same. So the id is a file in the spool directory, and an explicit `--agent-id`
//! that contradicts a spool that has already numbered records is refused.
//!
//! Which ids are valid is [`AgentId`]'s rule (core): a DNS name, because in mutual TLS the
//! id must be a name the agent's certificate carries. The stored id is held to it too, so
//! an agent never streams under an id the collector will refuse at Hello.

use std::io::Read;
use std::path::Path;

use flopmeter_core::agent_id::AgentId;

/// The file holding the id, in the spool directory.
pub const FILE_NAME: &str = "agent-id";

/// Why the agent id could not be resolved. (Whether a text is an id at all is core's
/// [`flopmeter_core::agent_id::AgentIdError`].)
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
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
    /// The id file holds an id that is not valid (written by hand, or by a version that
    /// accepted ids no certificate can name). The records in the spool were numbered under
    /// it, so it cannot simply be replaced.
    #[error(
        "{path}: {source}. The collector refuses it at Hello: let the previous flopmeter \
         version deliver this spool, then start with a valid --agent-id and a new --spool-dir"
    )]
    StoredInvalid {
        /// The id file.
        path: String,
        /// Why its id is not one.
        #[source]
        source: flopmeter_core::agent_id::AgentIdError,
    },
    /// A generated id broke the rule (a bug: a UUID is always a valid id).
    #[error("generated agent id: {0}")]
    Generated(#[source] flopmeter_core::agent_id::AgentIdError),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ResolveError + '_ {
    move |source| ResolveError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The id to run with. `explicit` is `--agent-id` (already held to the rule by its
/// parser); `spool_used` says whether the spool has ever numbered a record (then the stored
/// id is binding).
pub fn resolve(
    dir: &Path,
    explicit: Option<&AgentId>,
    spool_used: bool,
) -> Result<AgentId, ResolveError> {
    let path = dir.join(FILE_NAME);
    let stored = match std::fs::read_to_string(&path) {
        Ok(s) => Some(s.trim().to_string()).filter(|s| !s.is_empty()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(&path)(e)),
    };
    match (explicit, stored) {
        (Some(given), Some(stored)) if given.as_str() != stored => {
            if spool_used {
                Err(ResolveError::Mismatch {
                    given: given.to_string(),
                    stored,
                    dir: dir.display().to_string(),
                })
            } else {
                store(&path, given)?;
                Ok(given.clone())
            }
        }
        (Some(given), None) => {
            store(&path, given)?;
            Ok(given.clone())
        }
        (_, Some(stored)) => {
            AgentId::parse(&stored).map_err(|source| ResolveError::StoredInvalid {
                path: path.display().to_string(),
                source,
            })
        }
        (None, None) => {
            let id = AgentId::parse(&generate(&path)?).map_err(ResolveError::Generated)?;
            store(&path, &id)?;
            Ok(id)
        }
    }
}

/// A random id in UUID form (version 4).
fn generate(path: &Path) -> Result<String, ResolveError> {
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
fn store(path: &Path, id: &AgentId) -> Result<(), ResolveError> {
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

    fn id(s: &str) -> AgentId {
        AgentId::parse(s).unwrap()
    }

    #[test]
    fn generated_once_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = resolve(dir.path(), None, false).unwrap();
        assert_eq!(a.as_str().len(), 36);
        assert_eq!(resolve(dir.path(), None, true).unwrap(), a);
    }

    #[test]
    fn explicit_id_cannot_contradict_a_used_spool() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            resolve(dir.path(), Some(&id("node-a")), false).unwrap(),
            id("node-a")
        );
        assert!(matches!(
            resolve(dir.path(), Some(&id("node-b")), true),
            Err(ResolveError::Mismatch { .. })
        ));
        // A spool that never numbered a record may be re-labelled.
        assert_eq!(
            resolve(dir.path(), Some(&id("node-b")), false).unwrap(),
            id("node-b")
        );
    }

    /// An id file from a version that took any printable id: refused with what to do,
    /// rather than streamed under an id the collector refuses at Hello.
    #[test]
    fn a_stored_id_no_certificate_can_name_is_refused_with_the_way_out() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), "node:1\n").unwrap();
        let e = resolve(dir.path(), None, true).unwrap_err();
        assert!(matches!(e, ResolveError::StoredInvalid { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("node:1") && text.contains("new --spool-dir"),
            "{text}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap(),
            "node:1\n",
            "the id file is left as it was"
        );
    }
}
