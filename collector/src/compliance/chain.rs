//! What is appended to the audit chain, and why an append can fail.
//!
//! A fact enters the chain in the transaction that makes it true, whichever store holds it:
//! the compliance store appends the engine's and people's facts
//! ([`super::store::ComplianceStore::commit`]); the ledger appends registry changes and plans
//! declared in records in the very transaction that writes them
//! ([`crate::ledger::LedgerStore::set_model_entry`], [`crate::ledger::LedgerStore::apply_batch`]).
//! Both read the head inside their transaction and write the entries and the new head before
//! it commits, so the chain has one order whatever writes it (the contract in
//! [`crate::storage`]).

use flopmeter_core::audit::{AuditKind, Json};

/// An audit record to append: actor, kind, payload, time.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    /// When (engine or collector clock, Unix ms).
    pub time_ms: i64,
    /// Who or what.
    pub actor: String,
    /// What kind.
    pub kind: AuditKind,
    /// The record.
    pub payload: Json,
}

/// Why the chain could not be appended to.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The stored head does not decode.
    #[error("the audit chain's head does not decode: {0}")]
    Head(#[source] serde_json::Error),
    /// An entry or the head does not encode.
    #[error("cannot encode an audit entry: {0}")]
    Encode(#[source] serde_json::Error),
}
