//! Key layouts of the sled trees.
//!
//! Why this shape: composite keys join their parts with a NUL byte and end with big-endian
//! integers, so that sled's lexicographic order is the natural order (per agent by sequence,
//! per model by run, per bucket by time) and a prefix scan lists one agent's batches or one
//! model's runs. Ingest refuses names containing NUL, so the separator is unambiguous.

/// Separator between the string parts of a key.
pub const SEP: u8 = 0;

/// `agent \0 seq` — raw batches (by first sequence) and quarantined records.
pub fn agent_seq(agent: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(agent.len() + 9);
    k.extend_from_slice(agent.as_bytes());
    k.push(SEP);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Splits an [`agent_seq`] key.
pub fn split_agent_seq(k: &[u8]) -> Option<(String, u64)> {
    if k.len() < 9 || k[k.len() - 9] != SEP {
        return None;
    }
    let (agent, rest) = k.split_at(k.len() - 9);
    let seq = u64::from_be_bytes(rest[1..].try_into().ok()?);
    Some((String::from_utf8(agent.to_vec()).ok()?, seq))
}

/// `part \0 part \0 ...` — run keys (`model \0 run`) and prefixes.
pub fn join(parts: &[&str]) -> Vec<u8> {
    let mut k = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(SEP);
        }
        k.extend_from_slice(p.as_bytes());
    }
    k
}

/// The prefix of every key that starts with `parts` as whole parts.
pub fn prefix(parts: &[&str]) -> Vec<u8> {
    let mut k = join(parts);
    k.push(SEP);
    k
}

/// Splits a [`join`]ed key into its string parts.
pub fn split(k: &[u8]) -> Vec<String> {
    k.split(|&b| b == SEP)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect()
}

/// `parts... \0 n` with `n` big-endian: time buckets (unattributed days, rollup hours).
pub fn with_bucket(parts: &[&str], n: i64) -> Vec<u8> {
    let mut k = prefix(parts);
    // Buckets are days or hours since the epoch of validated (positive) event times; the
    // clamp only keeps a corrupt value from wrapping to the far end of the key space.
    k.extend_from_slice(&(n.max(0) as u64).to_be_bytes());
    k
}

/// Splits a [`with_bucket`] key with `n_parts` string parts.
pub fn split_bucket(k: &[u8], n_parts: usize) -> Option<(Vec<String>, i64)> {
    if k.len() < 9 {
        return None;
    }
    let (head, tail) = k.split_at(k.len() - 8);
    let n = u64::from_be_bytes(tail.try_into().ok()?) as i64;
    let head = head.strip_suffix(&[SEP])?;
    let parts = split(head);
    (parts.len() == n_parts).then_some((parts, n))
}

/// Kinds of entries in the `seen` tree (which agents and nodes reported for what).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// An agent that reported for a run.
    RunAgent,
    /// A node that reported for a run.
    RunNode,
    /// An agent that reported for a model.
    ModelAgent,
    /// A node that reported for a model.
    ModelNode,
}

impl Seen {
    fn tag(self) -> u8 {
        match self {
            Seen::RunAgent => b'A',
            Seen::RunNode => b'N',
            Seen::ModelAgent => b'a',
            Seen::ModelNode => b'n',
        }
    }

    /// The key of one entry: tag, then the parts.
    pub fn key(self, parts: &[&str]) -> Vec<u8> {
        let mut k = vec![self.tag()];
        k.extend_from_slice(&join(parts));
        k
    }

    /// Reads an entry's key: its kind and parts (model, then run if any, then agent or node).
    pub fn parse(k: &[u8]) -> Option<(Seen, Vec<String>)> {
        let (tag, rest) = k.split_first()?;
        let kind = [
            Seen::RunAgent,
            Seen::RunNode,
            Seen::ModelAgent,
            Seen::ModelNode,
        ]
        .into_iter()
        .find(|s| s.tag() == *tag)?;
        let parts = split(rest);
        let want = match kind {
            Seen::RunAgent | Seen::RunNode => 3,
            Seen::ModelAgent | Seen::ModelNode => 2,
        };
        (parts.len() == want).then_some((kind, parts))
    }

    /// The prefix listing entries under `parts`.
    pub fn prefix(self, parts: &[&str]) -> Vec<u8> {
        let mut k = vec![self.tag()];
        k.extend_from_slice(&prefix(parts));
        k
    }
}

/// Rollup scopes: a model's run, or an unattributed (node, GPU type).
pub const ROLLUP_RUN: &str = "R";
/// See [`ROLLUP_RUN`].
pub const ROLLUP_UNATTRIBUTED: &str = "U";

/// Milliseconds per hour and per day: core's one definition, under the names the ledger's
/// key layouts use (hourly rollups, UTC days of unattributed buckets).
pub use flopmeter_core::utc::{MS_PER_DAY as DAY_MS, MS_PER_HOUR as HOUR_MS};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_order() {
        let k = agent_seq("node-a", 258);
        assert_eq!(split_agent_seq(&k), Some(("node-a".into(), 258)));
        assert!(agent_seq("a", 2) < agent_seq("a", 256));
        assert_eq!(split(&join(&["m", "r"])), ["m", "r"]);
        let b = with_bucket(&["n", "h100-sxm"], 20_000);
        assert_eq!(
            split_bucket(&b, 2),
            Some((vec!["n".into(), "h100-sxm".into()], 20_000))
        );
        assert!(join(&["m", "r"]).starts_with(&prefix(&["m"])));
        assert!(!join(&["mm", "r"]).starts_with(&prefix(&["m"])));
        let k = Seen::RunNode.key(&["m", "r", "n"]);
        assert_eq!(
            Seen::parse(&k),
            Some((Seen::RunNode, vec!["m".into(), "r".into(), "n".into()]))
        );
        assert_eq!(Seen::parse(&Seen::ModelAgent.key(&["m", "r", "a"])), None);
    }
}
