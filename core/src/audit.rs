//! The audit log: an append-only SHA-256 hash chain.
//!
//! Every entry records `{seq, time_ms, actor, kind, payload, prev_hash}` and its `hash`:
//!
//! ```text
//! hash = hex(SHA-256(prev_hash || canonical(entry without its hash)))
//! ```
//!
//! where `prev_hash` is the previous entry's hash as 64 lowercase hex characters (64 zeros for
//! the first entry, [`GENESIS_HASH`]) and `canonical` is the entry as canonical JSON (below).
//! Changing, deleting, inserting or reordering any entry breaks the chain at or right after
//! that entry, and [`verify`] reports the first broken link. (Cutting entries off the *end*
//! leaves a valid shorter chain; [`verify_with_head`] detects it against a head kept
//! elsewhere.) Storage is the collector's business; this module is the pure part.
//!
//! `canonical` is the entry as canonical JSON ([`Json::canonical`]; the form and why it is
//! not `serde_json::to_string` are in `audit/json.rs`).

mod json;

pub use json::{Json, PayloadError, to_json};

use std::collections::BTreeMap;
use std::fmt::Write as _;

use sha2::{Digest, Sha256};

/// The `prev_hash` of the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What an entry records. Serialized as its kebab-case name; names the engine does not know
/// are kept verbatim as [`AuditKind::Other`], so a log written by a newer version still
/// verifies.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", from = "String")]
pub enum AuditKind {
    /// A notification clock started.
    ClockStarted,
    /// A fact was added to a clock.
    ClockFact,
    /// An alert changed status, or a reminder or re-notification fell due.
    Alert,
    /// An alert was delivered to a sink (or a delivery failed).
    Delivery,
    /// Someone recorded the notification.
    Acknowledged,
    /// Someone dismissed an alert.
    Dismissed,
    /// The model registry changed (role, base model, plans).
    RegistryChange,
    /// The threshold configuration changed.
    ThresholdConfigChange,
    /// A stage inclusion or exclusion was decided or overridden.
    StagePolicyChange,
    /// A plan was declared or revised in a run's records (the registry's plans are in
    /// [`AuditKind::RegistryChange`]).
    PlanDeclared,
    /// The collector found the chain broken: the fact, recorded once per break, so the log
    /// says from when on it was known not to verify.
    AuditChainBroken,
    /// Any other kind.
    Other(String),
}

impl AuditKind {
    /// The kebab-case name.
    pub fn as_str(&self) -> &str {
        match self {
            AuditKind::ClockStarted => "clock-started",
            AuditKind::ClockFact => "clock-fact",
            AuditKind::Alert => "alert",
            AuditKind::Delivery => "delivery",
            AuditKind::Acknowledged => "acknowledged",
            AuditKind::Dismissed => "dismissed",
            AuditKind::RegistryChange => "registry-change",
            AuditKind::ThresholdConfigChange => "threshold-config-change",
            AuditKind::StagePolicyChange => "stage-policy-change",
            AuditKind::PlanDeclared => "plan-declared",
            AuditKind::AuditChainBroken => "audit-chain-broken",
            AuditKind::Other(s) => s,
        }
    }
}

impl From<AuditKind> for String {
    fn from(k: AuditKind) -> String {
        k.as_str().to_string()
    }
}

impl From<String> for AuditKind {
    fn from(s: String) -> AuditKind {
        match s.as_str() {
            "clock-started" => AuditKind::ClockStarted,
            "clock-fact" => AuditKind::ClockFact,
            "alert" => AuditKind::Alert,
            "delivery" => AuditKind::Delivery,
            "acknowledged" => AuditKind::Acknowledged,
            "dismissed" => AuditKind::Dismissed,
            "registry-change" => AuditKind::RegistryChange,
            "threshold-config-change" => AuditKind::ThresholdConfigChange,
            "stage-policy-change" => AuditKind::StagePolicyChange,
            "plan-declared" => AuditKind::PlanDeclared,
            "audit-chain-broken" => AuditKind::AuditChainBroken,
            _ => AuditKind::Other(s),
        }
    }
}

/// One entry of the chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditEntry {
    /// Position in the chain, from 0.
    pub seq: u64,
    /// When recorded (Unix ms UTC).
    pub time_ms: i64,
    /// Who or what: a user name, or `engine`, `collector`, ….
    pub actor: String,
    /// What kind of record.
    pub kind: AuditKind,
    /// The record itself.
    pub payload: Json,
    /// The previous entry's hash ([`GENESIS_HASH`] for the first).
    pub prev_hash: String,
    /// This entry's hash, hex.
    pub hash: String,
}

impl AuditEntry {
    /// The canonical text of the entry without its hash: what is hashed after `prev_hash`.
    pub fn canonical(&self) -> String {
        Json::Object(BTreeMap::from([
            ("actor".to_string(), Json::Str(self.actor.clone())),
            (
                "kind".to_string(),
                Json::Str(self.kind.as_str().to_string()),
            ),
            ("payload".to_string(), self.payload.clone()),
            ("prev_hash".to_string(), Json::Str(self.prev_hash.clone())),
            ("seq".to_string(), Json::UInt(self.seq)),
            ("time_ms".to_string(), Json::int(i128::from(self.time_ms))),
        ]))
        .canonical()
    }

    /// The hash this entry should carry.
    pub fn compute_hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.prev_hash.as_bytes());
        h.update(self.canonical().as_bytes());
        let mut out = String::with_capacity(64);
        for b in h.finalize() {
            let _ = write!(out, "{b:02x}");
        }
        out
    }
}

/// The end of a chain: what the next entry links to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChainHead {
    /// The next entry's `seq` (the number of entries so far).
    pub next_seq: u64,
    /// The last entry's hash ([`GENESIS_HASH`] when empty).
    pub last_hash: String,
}

impl Default for ChainHead {
    fn default() -> Self {
        ChainHead::genesis()
    }
}

impl ChainHead {
    /// The head of an empty chain.
    pub fn genesis() -> ChainHead {
        ChainHead {
            next_seq: 0,
            last_hash: GENESIS_HASH.to_string(),
        }
    }

    /// The head after `entry` (to resume appending after a restart).
    pub fn after(entry: &AuditEntry) -> ChainHead {
        ChainHead {
            next_seq: entry.seq + 1,
            last_hash: entry.hash.clone(),
        }
    }

    /// Makes the next entry and advances the head. The caller stores the entry; if storing
    /// fails it must not keep the advanced head (append is all or nothing).
    pub fn append(
        &mut self,
        time_ms: i64,
        actor: &str,
        kind: AuditKind,
        payload: Json,
    ) -> AuditEntry {
        let mut e = AuditEntry {
            seq: self.next_seq,
            time_ms,
            actor: actor.to_string(),
            kind,
            payload,
            prev_hash: self.last_hash.clone(),
            hash: String::new(),
        };
        e.hash = e.compute_hash();
        *self = ChainHead::after(&e);
        e
    }
}

/// How a link is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The entry's `seq` is not the next number: an entry before it was deleted, or entries
    /// were inserted or reordered.
    #[error(
        "sequence number {found}, expected {expected} (entries deleted, inserted or reordered)"
    )]
    Seq {
        /// The number expected.
        expected: u64,
        /// The number found.
        found: u64,
    },
    /// The entry does not link to the previous entry's hash: the previous entry was changed
    /// and re-hashed, or the chain was spliced.
    #[error("prev_hash {found} does not match the previous entry's hash {expected}")]
    PrevHash {
        /// The previous entry's hash.
        expected: String,
        /// The `prev_hash` found.
        found: String,
    },
    /// The entry's content does not hash to its recorded hash: it was modified.
    #[error(
        "hash {stored} does not match the content, which hashes to {computed} (entry modified)"
    )]
    Hash {
        /// The hash recorded.
        stored: String,
        /// The hash of the content.
        computed: String,
    },
    /// The chain ends before the expected head: entries were cut off the end.
    #[error("the chain ends at {found} entries, but the head says {expected}")]
    Truncated {
        /// Entries the head accounts for.
        expected: u64,
        /// Entries found.
        found: u64,
    },
}

/// The first broken link of a chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit chain broken at entry {index}: {reason}")]
pub struct BrokenLink {
    /// Index in the slice given (for a whole chain, equal to the expected `seq`).
    pub index: usize,
    /// How.
    pub reason: LinkError,
}

/// Verifies a whole chain from its first entry. Returns the first broken link.
pub fn verify(entries: &[AuditEntry]) -> Result<(), BrokenLink> {
    verify_segment(entries, &ChainHead::genesis()).map(|_| ())
}

/// Verifies entries that continue from `start` (an exported segment whose predecessor's
/// hash is known), returning the head after them.
pub fn verify_segment(entries: &[AuditEntry], start: &ChainHead) -> Result<ChainHead, BrokenLink> {
    let mut head = start.clone();
    for (index, e) in entries.iter().enumerate() {
        let broken = |reason| Err(BrokenLink { index, reason });
        if e.seq != head.next_seq {
            return broken(LinkError::Seq {
                expected: head.next_seq,
                found: e.seq,
            });
        }
        if e.prev_hash != head.last_hash {
            return broken(LinkError::PrevHash {
                expected: head.last_hash,
                found: e.prev_hash.clone(),
            });
        }
        let computed = e.compute_hash();
        if computed != e.hash {
            return broken(LinkError::Hash {
                stored: e.hash.clone(),
                computed,
            });
        }
        head = ChainHead::after(e);
    }
    Ok(head)
}

/// Verifies a whole chain and that it reaches `expected` (a head kept apart from the log, e.g.
/// in a second file or a published digest), which also detects entries cut off the end.
pub fn verify_with_head(entries: &[AuditEntry], expected: &ChainHead) -> Result<(), BrokenLink> {
    let head = verify_segment(entries, &ChainHead::genesis())?;
    if head.next_seq < expected.next_seq {
        return Err(BrokenLink {
            index: entries.len(),
            reason: LinkError::Truncated {
                expected: expected.next_seq,
                found: head.next_seq,
            },
        });
    }
    if head.next_seq == expected.next_seq && head.last_hash != expected.last_hash {
        return Err(BrokenLink {
            index: entries.len().saturating_sub(1),
            reason: LinkError::Hash {
                stored: expected.last_hash.clone(),
                computed: head.last_hash,
            },
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::json::tests::Sample;
    use super::*;
    use crate::units::{FlopTotal, Method};

    fn chain(n: u64) -> Vec<AuditEntry> {
        let mut head = ChainHead::genesis();
        (0..n)
            .map(|i| {
                let payload = to_json(&Sample::Started {
                    flop: FlopTotal::exact(21 * 10u128.pow(24) + u128::from(i)),
                    method: Method::GpmTensor,
                    note: (i % 2 == 0).then(|| format!("entry \"{i}\"\n")),
                    ratio: 0.1 + i as f64,
                })
                .unwrap();
                head.append(
                    1_790_000_000_000 + i as i64,
                    "engine",
                    AuditKind::Alert,
                    payload,
                )
            })
            .collect()
    }

    #[test]
    fn a_valid_chain_verifies_and_survives_a_json_round_trip() {
        let entries = chain(6);
        assert_eq!(entries[0].prev_hash, GENESIS_HASH);
        assert_eq!(entries[1].prev_hash, entries[0].hash);
        assert_eq!(entries[0].hash.len(), 64);
        assert_eq!(verify(&entries), Ok(()));
        assert_eq!(verify(&[]), Ok(()));
        // As the collector stores it: JSON lines, read back.
        let lines: Vec<String> = entries
            .iter()
            .map(|e| serde_json::to_string(e).unwrap())
            .collect();
        let back: Vec<AuditEntry> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(back, entries);
        assert_eq!(verify(&back), Ok(()));
        let head = ChainHead::after(entries.last().unwrap());
        assert_eq!(verify_with_head(&entries, &head), Ok(()));
        assert_eq!(
            verify_segment(&entries[2..], &ChainHead::after(&entries[1])),
            Ok(head)
        );
    }

    /// A known answer, so a change to the canonical form or the hash input is caught.
    #[test]
    fn known_hash() {
        let mut head = ChainHead::genesis();
        let e = head.append(0, "alice", AuditKind::Acknowledged, Json::Null);
        assert_eq!(
            e.canonical(),
            format!(
                r#"{{"actor":"alice","kind":"acknowledged","payload":null,"prev_hash":"{GENESIS_HASH}","seq":0,"time_ms":0}}"#
            )
        );
        let mut h = Sha256::new();
        h.update(format!("{GENESIS_HASH}{}", e.canonical()).as_bytes());
        let want: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(e.hash, want);
    }

    /// Tampering, table-driven: each row changes a valid chain and names the first broken
    /// link it must produce.
    #[test]
    fn verify_detects_tampering() {
        type Tamper = fn(&mut Vec<AuditEntry>);
        let rows: Vec<(&str, Tamper, usize, &str)> = vec![
            (
                "modified payload",
                |c| c[2].payload = Json::Str("forged".into()),
                2,
                "entry modified",
            ),
            ("modified time", |c| c[3].time_ms += 1, 3, "entry modified"),
            (
                "modified actor",
                |c| c[0].actor = "mallory".into(),
                0,
                "entry modified",
            ),
            (
                "modified and re-hashed",
                |c| {
                    c[2].actor = "mallory".into();
                    c[2].hash = c[2].compute_hash();
                },
                3,
                "does not match the previous entry's hash",
            ),
            (
                "deleted",
                |c| {
                    c.remove(2);
                },
                2,
                "expected 2",
            ),
            (
                "deleted first",
                |c| {
                    c.remove(0);
                },
                0,
                "expected 0",
            ),
            ("reordered", |c| c.swap(1, 4), 1, "reordered"),
            (
                "reordered and renumbered",
                |c| {
                    c.swap(1, 2);
                    c[1].seq = 1;
                    c[2].seq = 2;
                },
                1,
                "does not match the previous entry's hash",
            ),
            (
                "inserted",
                |c| {
                    let mut fake = c[1].clone();
                    fake.payload = Json::Bool(true);
                    c.insert(2, fake);
                },
                2,
                "expected 2",
            ),
        ];
        for (name, tamper, index, why) in rows {
            let mut c = chain(6);
            tamper(&mut c);
            let err = verify(&c).unwrap_err();
            assert_eq!(err.index, index, "{name}: {err}");
            assert!(err.to_string().contains(why), "{name}: {err}");
        }
        // Cutting entries off the end is invisible to the chain alone, not to a kept head.
        let full = chain(6);
        let head = ChainHead::after(full.last().unwrap());
        assert_eq!(verify(&full[..4]), Ok(()));
        let err = verify_with_head(&full[..4], &head).unwrap_err();
        assert!(
            matches!(
                err.reason,
                LinkError::Truncated {
                    expected: 6,
                    found: 4
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn kinds_round_trip_and_keep_unknown_names() {
        for k in [
            AuditKind::ClockStarted,
            AuditKind::ThresholdConfigChange,
            AuditKind::Other("x-new".into()),
        ] {
            assert_eq!(AuditKind::from(String::from(k.clone())), k);
        }
    }
}
