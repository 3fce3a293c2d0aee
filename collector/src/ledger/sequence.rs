//! Which records of a batch to apply, given the agent's high-water mark.
//!
//! Exactly-once accounting rests on three rules (DESIGN.md §5):
//! - records at or below the high-water mark are duplicates: acknowledged, never re-applied;
//! - records are applied strictly in sequence order, so the first new record must be
//!   `hwm + 1`; anything else is a gap, and a gap is never skipped (the high-water mark would
//!   swallow the missing records): the agent is asked to resend from `hwm + 1`;
//! - within a batch, only the contiguous run starting at `hwm + 1` is applied; a gap inside
//!   the batch ends it, and the agent is asked to resend from the first missing number.
//!
//! Pure: the caller reads the high-water mark inside the same transaction that applies the
//! plan and writes the new mark.

/// What to do with a batch whose sequence numbers are strictly increasing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqPlan {
    /// Every record is at or below the high-water mark.
    Duplicate,
    /// The first new record is not `hwm + 1`: nothing is applied.
    Gap {
        /// The sequence number the collector needs next (`hwm + 1`).
        expected: u64,
    },
    /// Apply `records[start..end]` (contiguous from `hwm + 1`).
    Apply {
        /// Index of the first record to apply.
        start: usize,
        /// One past the last record to apply.
        end: usize,
        /// The first missing sequence number when the batch has a gap after `end`.
        gap_at: Option<u64>,
    },
}

/// What a store does with a batch at high-water mark `hwm`: answer at once (nothing to
/// apply), or apply `records[start..end]` and complete the outcome it starts from. The one
/// mapping from a [`SeqPlan`] to what the agent is told, shared by every store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Nothing to apply: the outcome as it stands.
    Answered(super::ApplyOutcome),
    /// Apply `records[start..end]`; `outcome` already counts the duplicates in front and
    /// names the resend point after a gap.
    Apply {
        /// Index of the first record to apply.
        start: usize,
        /// One past the last record to apply.
        end: usize,
        /// The outcome so far.
        outcome: super::ApplyOutcome,
    },
}

/// Admits a batch ([`plan`], then the outcome every store answers with).
pub fn admit(hwm: u64, seqs: &[u64]) -> Admission {
    match plan(hwm, seqs) {
        SeqPlan::Duplicate => Admission::Answered(super::ApplyOutcome {
            acked_through: hwm,
            duplicates: seqs.len(),
            ..super::ApplyOutcome::default()
        }),
        SeqPlan::Gap { expected } => Admission::Answered(super::ApplyOutcome {
            acked_through: hwm,
            duplicates: seqs.iter().filter(|&&s| s <= hwm).count(),
            resend_from: Some(expected),
            ..super::ApplyOutcome::default()
        }),
        SeqPlan::Apply { start, end, gap_at } => Admission::Apply {
            start,
            end,
            outcome: super::ApplyOutcome {
                duplicates: start,
                resend_from: gap_at,
                ..super::ApplyOutcome::default()
            },
        },
    }
}

/// Plans a batch. `seqs` must be strictly increasing (the ingest rejects other batches
/// whole before they reach the ledger).
pub fn plan(hwm: u64, seqs: &[u64]) -> SeqPlan {
    let Some(start) = seqs.iter().position(|&s| s > hwm) else {
        return SeqPlan::Duplicate;
    };
    let expected = hwm.saturating_add(1);
    if seqs[start] != expected {
        return SeqPlan::Gap { expected };
    }
    let mut end = start + 1;
    while end < seqs.len() && seqs[end] == seqs[end - 1].saturating_add(1) {
        end += 1;
    }
    let gap_at = (end < seqs.len()).then(|| seqs[end - 1] + 1);
    SeqPlan::Apply { start, end, gap_at }
}

/// True when `seqs` is strictly increasing and starts above zero (sequence numbers start at
/// 1; 0 means "none" in a high-water mark).
pub fn well_formed(seqs: &[u64]) -> bool {
    seqs.first().is_none_or(|&s| s > 0) && seqs.windows(2).all(|w| w[0] < w[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_gaps_and_contiguous_runs() {
        assert_eq!(plan(10, &[9, 10]), SeqPlan::Duplicate);
        assert_eq!(plan(10, &[]), SeqPlan::Duplicate);
        assert_eq!(plan(10, &[12, 13]), SeqPlan::Gap { expected: 11 });
        assert_eq!(
            plan(10, &[9, 10, 11, 12]),
            SeqPlan::Apply {
                start: 2,
                end: 4,
                gap_at: None
            }
        );
        assert_eq!(
            plan(0, &[1, 2, 4]),
            SeqPlan::Apply {
                start: 0,
                end: 2,
                gap_at: Some(3)
            }
        );
    }

    #[test]
    fn well_formed_batches() {
        assert!(well_formed(&[]));
        assert!(well_formed(&[1, 2, 5]));
        assert!(!well_formed(&[0, 1]));
        assert!(!well_formed(&[3, 3]));
        assert!(!well_formed(&[4, 2]));
    }
}
