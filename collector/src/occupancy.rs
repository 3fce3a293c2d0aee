//! Physical plausibility across records: one GPU cannot do more work than its ceiling
//! allows, however the work is split into records.
//!
//! Per-record validation bounds each record by its GPU's ceiling over its own interval. That
//! left a hole: fifty records for the same GPU and the same ten seconds each passed, together
//! 26 times the node's ceiling (issue 12). Here, per (agent, physical GPU), records whose
//! intervals overlap, across every run and MIG instance sharing the GPU, must together stay
//! within the ceiling over the union of their intervals:
//! `Σ flop_high ≤ max FLOP/s × |∪ intervals|`.
//!
//! What is kept: per GPU the most recent [`SEGMENTS_PER_GPU`] disjoint segments (each the
//! union of a group of overlapping records, with their FLOP sum) and a floor below which the
//! history was let go. A record starting below the floor cannot be checked and is refused:
//! an agent's records for one GPU come in time order, so only a broken or hostile agent (or
//! a clock that jumped back) sends one. The state is a cache of what the ledger holds: it is
//! rebuilt per agent from the agent's last raw batches the first time the writer sees the
//! agent (after a start, or after it was dropped to bound memory), so a restart does not
//! open the hole again.
//!
//! Only the ledger writer uses it, for records that are new (above the high-water mark) and
//! passed per-record validation, in the order they are applied: a resent record is a
//! duplicate and never counts twice.

use std::collections::HashMap;

use flopmeter_proto::v1::IntervalRecord;

/// Segments kept per GPU: at a 10 s report interval, the last 80 s of work.
pub const SEGMENTS_PER_GPU: usize = 8;

/// Agents kept; beyond, the state is dropped and rebuilt from the ledger as agents report
/// (bounds memory whatever the number of agents).
pub const MAX_AGENTS: usize = 50_000;

/// Raw batches read to rebuild an agent's state.
pub const REBUILD_BATCHES: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    start: i64,
    end: i64,
    /// Sum of the high bounds of the records in it.
    flop: u128,
    records: u32,
}

/// One GPU's recent history.
#[derive(Debug, Clone)]
struct GpuLoad {
    /// Disjoint, sorted by start.
    segments: Vec<Segment>,
    /// Records starting before this cannot be checked.
    floor: i64,
}

impl Default for GpuLoad {
    fn default() -> Self {
        GpuLoad {
            segments: Vec::new(),
            floor: i64::MIN,
        }
    }
}

/// Why a record is refused as `gpu-overlap`; the text is the rejection's detail.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OverlapRefusal {
    /// It starts before records of its GPU the collector already applied and forgot.
    #[error(
        "the interval starts before later records of the same GPU that the collector already \
         applied (at {floor}; an agent's records for one GPU come in time order): check the \
         agent's clock"
    )]
    BeforeApplied {
        /// Where the GPU's remembered history begins, Unix ms.
        floor: i64,
    },
    /// With the records it overlaps it exceeds the GPU's ceiling over their union.
    #[error(
        "with the {others} record(s) it overlaps on this GPU, {flop:.3e} FLOP over {seconds} s \
         exceeds the GPU's ceiling over their union ({rate:.3e} FLOP/s × {seconds} s = \
         {limit:.3e}); overlapping records of one GPU share its ceiling across runs and MIG \
         instances"
    )]
    AboveCeiling {
        /// The records it overlaps.
        others: u64,
        /// Their FLOP (high bounds) and its own.
        flop: f64,
        /// The union's length.
        seconds: f64,
        /// The GPU's ceiling, FLOP/s.
        rate: f64,
        /// `rate × seconds`.
        limit: f64,
    },
}

impl GpuLoad {
    /// Admits a record `[start, end)` with `flop` (its high bound), checked against
    /// `max_flop_per_s` when known; on refusal nothing changes and the reason is returned.
    fn admit(
        &mut self,
        start: i64,
        end: i64,
        flop: u64,
        max_flop_per_s: Option<f64>,
    ) -> Result<(), OverlapRefusal> {
        if start < self.floor && max_flop_per_s.is_some() {
            return Err(OverlapRefusal::BeforeApplied { floor: self.floor });
        }
        let overlapping: Vec<usize> = (0..self.segments.len())
            .filter(|&i| self.segments[i].start < end && start < self.segments[i].end)
            .collect();
        let mut merged = Segment {
            start,
            end,
            flop: u128::from(flop),
            records: 1,
        };
        for &i in &overlapping {
            let s = self.segments[i];
            merged.start = merged.start.min(s.start);
            merged.end = merged.end.max(s.end);
            merged.flop = merged.flop.saturating_add(s.flop);
            merged.records = merged.records.saturating_add(s.records);
        }
        if let Some(rate) = max_flop_per_s
            && !overlapping.is_empty()
        {
            let seconds = (merged.end - merged.start) as f64 / 1000.0;
            let limit = rate * seconds;
            if merged.flop as f64 > limit {
                return Err(OverlapRefusal::AboveCeiling {
                    others: u64::from(merged.records - 1),
                    flop: merged.flop as f64,
                    seconds,
                    rate,
                    limit,
                });
            }
        }
        for &i in overlapping.iter().rev() {
            self.segments.remove(i);
        }
        let at = self.segments.partition_point(|s| s.start < merged.start);
        self.segments.insert(at, merged);
        while self.segments.len() > SEGMENTS_PER_GPU {
            let old = self.segments.remove(0);
            self.floor = self.floor.max(old.end);
        }
        Ok(())
    }
}

/// The recent history of every (agent, GPU) the writer has seen.
#[derive(Debug, Default)]
pub struct Occupancy {
    agents: HashMap<String, HashMap<String, GpuLoad>>,
}

impl Occupancy {
    /// Whether the agent's state is here (else the writer rebuilds it with
    /// [`Occupancy::rebuild`]).
    pub fn knows(&self, agent: &str) -> bool {
        self.agents.contains_key(agent)
    }

    /// Rebuilds an agent's state from the records it applied last, in sequence order.
    /// `truncated`: older applied records exist that were not read, so nothing before the
    /// records read can be checked.
    pub fn rebuild(&mut self, agent: &str, records: &[IntervalRecord], truncated: bool) {
        if self.agents.len() >= MAX_AGENTS {
            self.agents.clear();
        }
        let mut gpus: HashMap<String, GpuLoad> = HashMap::new();
        let mut earliest: HashMap<&str, i64> = HashMap::new();
        for r in records {
            let load = gpus.entry(r.gpu_uuid.clone()).or_default();
            let _ = load.admit(r.start_unix_ms, r.end_unix_ms, r.flop_high, None);
            let e = earliest.entry(r.gpu_uuid.as_str()).or_insert(i64::MAX);
            *e = (*e).min(r.start_unix_ms);
        }
        if truncated {
            for (gpu, load) in &mut gpus {
                if let Some(&e) = earliest.get(gpu.as_str()) {
                    load.floor = load.floor.max(e);
                }
            }
        }
        self.agents.insert(agent.to_string(), gpus);
    }

    /// Checks a new record of `agent` and, if it fits, counts it. `Err` says why not.
    pub fn admit(
        &mut self,
        agent: &str,
        r: &IntervalRecord,
        max_flop_per_s: Option<f64>,
    ) -> Result<(), OverlapRefusal> {
        let gpus = match self.agents.get_mut(agent) {
            Some(g) => g,
            None => self.agents.entry(agent.to_string()).or_default(),
        };
        let load = match gpus.get_mut(&r.gpu_uuid) {
            Some(l) => l,
            None => gpus.entry(r.gpu_uuid.clone()).or_default(),
        };
        load.admit(r.start_unix_ms, r.end_unix_ms, r.flop_high, max_flop_per_s)
    }

    /// Drops an agent's state (a batch of it failed to apply): rebuilt from the ledger,
    /// which holds exactly what was applied, next time.
    pub fn forget(&mut self, agent: &str) {
        self.agents.remove(agent);
    }

    /// (agents, GPUs, segments) held, for the memory figures.
    #[cfg(test)]
    pub fn size(&self) -> (usize, usize, usize) {
        let gpus = self.agents.values().map(HashMap::len).sum();
        let segs = self
            .agents
            .values()
            .flat_map(HashMap::values)
            .map(|l| l.segments.len())
            .sum();
        (self.agents.len(), gpus, segs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: f64 = 1e15; // FLOP/s

    fn rec(gpu: &str, start: i64, end: i64, flop: u64) -> IntervalRecord {
        IntervalRecord {
            gpu_uuid: gpu.into(),
            start_unix_ms: start,
            end_unix_ms: end,
            flop_high: flop,
            ..Default::default()
        }
    }

    #[test]
    fn overlapping_records_share_the_ceiling_over_their_union() {
        let mut o = Occupancy::default();
        let full = 10_000_000_000_000_000; // 10 s at RATE
        // Two runs sharing a GPU for the same 10 s, 60% + 40%: fine.
        assert!(
            o.admit("a", &rec("g", 0, 10_000, full * 6 / 10), Some(RATE))
                .is_ok()
        );
        assert!(
            o.admit("a", &rec("g", 0, 10_000, full * 4 / 10), Some(RATE))
                .is_ok()
        );
        // A third one on the same interval: over the ceiling.
        let e = o
            .admit("a", &rec("g", 0, 10_000, full / 10), Some(RATE))
            .unwrap_err();
        assert!(e.to_string().contains("ceiling over their union"), "{e}");
        // The next interval is a new segment; a partial overlap is judged on the union
        // (15 s here: 1.5 × a full 10 s fits, 1.6 × does not).
        assert!(
            o.admit("a", &rec("g", 10_000, 20_000, full), Some(RATE))
                .is_ok()
        );
        assert!(
            o.admit("a", &rec("g", 15_000, 25_000, full * 6 / 10), Some(RATE))
                .is_err()
        );
        let mut p = Occupancy::default();
        assert!(
            p.admit("a", &rec("g", 10_000, 20_000, full), Some(RATE))
                .is_ok()
        );
        assert!(
            p.admit("a", &rec("g", 15_000, 25_000, full / 2), Some(RATE))
                .is_ok()
        );
        assert!(
            o.admit("a", &rec("g", 20_000, 30_000, full), Some(RATE))
                .is_ok()
        );
        // Another GPU, another agent: their own ceilings.
        assert!(o.admit("a", &rec("h", 0, 10_000, full), Some(RATE)).is_ok());
        assert!(o.admit("b", &rec("g", 0, 10_000, full), Some(RATE)).is_ok());
    }

    #[test]
    fn fifty_copies_of_one_interval_are_refused_after_the_first() {
        let mut o = Occupancy::default();
        let full = 10_000_000_000_000_000;
        let ok = (0..50)
            .filter(|_| o.admit("a", &rec("g", 0, 10_000, full), Some(RATE)).is_ok())
            .count();
        assert_eq!(ok, 1);
    }

    #[test]
    fn history_is_bounded_and_older_records_are_refused() {
        let mut o = Occupancy::default();
        for i in 0..100 {
            o.admit("a", &rec("g", i * 10_000, (i + 1) * 10_000, 1), Some(RATE))
                .unwrap();
        }
        assert_eq!(o.size(), (1, 1, SEGMENTS_PER_GPU));
        let e = o
            .admit("a", &rec("g", 0, 10_000, 1), Some(RATE))
            .unwrap_err();
        assert!(e.to_string().contains("time order"), "{e}");
    }

    #[test]
    fn a_rebuilt_agent_keeps_its_last_records_and_floor() {
        let full = 10_000_000_000_000_000;
        let recs: Vec<_> = (10..20)
            .map(|i| rec("g", i * 10_000, (i + 1) * 10_000, full))
            .collect();
        let mut o = Occupancy::default();
        o.rebuild("a", &recs, true);
        assert!(o.knows("a"));
        // The last interval again, under a new sequence number: refused.
        assert!(
            o.admit("a", &rec("g", 190_000, 200_000, full), Some(RATE))
                .is_err()
        );
        // Before what was read: cannot be checked, refused.
        assert!(o.admit("a", &rec("g", 0, 10_000, 1), Some(RATE)).is_err());
        assert!(
            o.admit("a", &rec("g", 200_000, 210_000, full), Some(RATE))
                .is_ok()
        );
        o.forget("a");
        assert!(!o.knows("a"));
    }
}
