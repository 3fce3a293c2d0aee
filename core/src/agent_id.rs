//! [`AgentId`]: the name an agent reports under, with the one rule every door applies (the
//! agent's `--agent-id` and stored id, `flopmeter certs dev --agent`, the collector's Hello
//! check, its agent tokens file and mutual TLS).
//!
//! The rule is what a certificate can carry, because in mutual TLS the collector accepts an
//! agent only under a name its client certificate vouches for (CN or DNS SAN): an id the
//! agent accepted but no certificate could name would make mutual TLS impossible for that
//! node. So an agent id is a DNS name as rustls reads one, short enough to be a CN:
//! - 1 to [`AgentId::MAX_LEN`] (64) bytes: RFC 5280's upper bound for a common name,
//!   which issuers such as cert-manager enforce;
//! - dot-separated labels of ASCII letters, digits, `-` or `_`, each 1 to 63 bytes and not
//!   starting or ending with `-`;
//! - the last label not all digits (`10.0.0.1` is an address, not a name);
//! - no trailing dot (`node-a.` and `node-a` would be one host but two ledger keys).
//!
//! Host names (`node-01.example`, `ip-10-0-1-23.eu-west-1.compute.internal`), Kubernetes
//! node names up to 64 characters and the UUIDs the agent generates all qualify. Ids are
//! compared exactly (they key the ledger's sequence numbers), so `Node-A` and `node-a` are
//! two agents.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A valid agent id (see the module docs for the rule).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AgentId(String);

/// Why a text is not an agent id. Every message says what an id may be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "agent id {shown:?} {problem}: an agent id is a DNS name of at most 64 characters \
     (letters, digits, '-' and '_' in dot-separated labels), because the agent's certificate \
     names it as its CN and DNS name"
)]
pub struct AgentIdError {
    /// The text, shortened when long.
    pub shown: String,
    /// What is wrong with it.
    pub problem: AgentIdProblem,
}

/// What is wrong with a would-be agent id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AgentIdProblem {
    /// Empty (or only whitespace).
    #[error("is empty")]
    Empty,
    /// Longer than [`AgentId::MAX_LEN`] bytes.
    #[error("is longer than 64 bytes")]
    TooLong,
    /// A character no DNS name has (space, `:`, `/`, `@`, non-ASCII, a control, ...).
    #[error("has a character a DNS name cannot have")]
    BadCharacter,
    /// Two dots in a row, or a dot at the start or the end.
    #[error("has an empty label (a dot at the start or end, or two in a row)")]
    EmptyLabel,
    /// A label of more than 63 bytes.
    #[error("has a label longer than 63 bytes")]
    LongLabel,
    /// A label that starts or ends with `-`.
    #[error("has a label that starts or ends with '-'")]
    HyphenAtEdge,
    /// The last label is all digits: an address, not a name.
    #[error("ends in an all-digit label (an IP address is not a name)")]
    NumericEnd,
}

impl AgentId {
    /// Longest id accepted, in bytes: a certificate's CN (RFC 5280 `ub-common-name`).
    pub const MAX_LEN: usize = 64;
    /// Longest label, in bytes (DNS).
    pub const MAX_LABEL_LEN: usize = 63;

    /// Checks `text` against the rule. Whitespace around it is not trimmed: an id read from
    /// a file or a flag is trimmed by whoever reads it, and the wire carries it exactly.
    pub fn parse(text: &str) -> Result<AgentId, AgentIdError> {
        match problem(text) {
            None => Ok(AgentId(text.to_string())),
            Some(problem) => Err(AgentIdError {
                shown: shorten(text),
                problem,
            }),
        }
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }
}

fn problem(s: &str) -> Option<AgentIdProblem> {
    if s.is_empty() {
        return Some(AgentIdProblem::Empty);
    }
    if s.len() > AgentId::MAX_LEN {
        return Some(AgentIdProblem::TooLong);
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Some(AgentIdProblem::BadCharacter);
    }
    let mut last = "";
    for label in s.split('.') {
        if label.is_empty() {
            return Some(AgentIdProblem::EmptyLabel);
        }
        if label.len() > AgentId::MAX_LABEL_LEN {
            return Some(AgentIdProblem::LongLabel);
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some(AgentIdProblem::HyphenAtEdge);
        }
        last = label;
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Some(AgentIdProblem::NumericEnd);
    }
    None
}

/// At most 80 characters of a refused text, so a hostile id cannot flood a log line.
fn shorten(s: &str) -> String {
    const SHOWN: usize = 80;
    match s.char_indices().nth(SHOWN) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

impl FromStr for AgentId {
    type Err = AgentIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AgentId::parse(s)
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for AgentId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<AgentId> for String {
    fn from(id: AgentId) -> String {
        id.0
    }
}

impl Serialize for AgentId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for AgentId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        AgentId::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployed_ids_stay_valid() {
        for id in [
            "node-a",
            "node-01.example",
            "gpu07",
            "ip-10-0-1-23.eu-west-1.compute.internal",
            "gke-prod-default-pool-3f2a1b9c-x7k2",
            "9f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f",
            "a",
            "node_7",
            "1node",
        ] {
            assert_eq!(AgentId::parse(id).map(AgentId::into_string), Ok(id.into()));
        }
        let longest = ["a".repeat(31), "b".repeat(32)].join(".");
        assert_eq!(longest.len(), 64);
        assert!(AgentId::parse(&longest).is_ok());
    }

    #[test]
    fn what_no_certificate_can_name_is_refused_with_the_reason() {
        use AgentIdProblem::*;
        for (id, why) in [
            ("", Empty),
            ("has space", BadCharacter),
            ("node:1", BadCharacter),
            ("gpu@host", BadCharacter),
            ("nöde", BadCharacter),
            ("node\u{7}", BadCharacter),
            (" node", BadCharacter),
            ("node.", EmptyLabel),
            (".node", EmptyLabel),
            ("a..b", EmptyLabel),
            ("-node", HyphenAtEdge),
            ("node-.x", HyphenAtEdge),
            ("10.0.0.1", NumericEnd),
            ("12345", NumericEnd),
        ] {
            let e = AgentId::parse(id).unwrap_err();
            assert_eq!(e.problem, why, "{id:?}");
            assert!(e.to_string().contains("is a DNS name"), "{e}");
        }
        assert_eq!(
            AgentId::parse(&"a".repeat(64)).unwrap_err().problem,
            LongLabel
        );
        assert_eq!(
            AgentId::parse(&["a"; 33].join(".")).unwrap_err().problem,
            TooLong
        );
        let e = AgentId::parse(&"x y".repeat(1000)).unwrap_err();
        assert!(e.to_string().len() < 400, "{e}");
    }

    #[test]
    fn serde_checks_the_rule() {
        let id: AgentId = serde_json::from_str("\"node-a\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"node-a\"");
        assert!(serde_json::from_str::<AgentId>("\"node a\"").is_err());
    }
}
