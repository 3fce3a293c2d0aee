//! How fast one agent may create runs (and so models): a token bucket per agent.
//!
//! Why: every new run (a new model brings one) adds aggregates, registry reads and gauges the
//! collector keeps for ever. A hostile or broken agent sending one record per made-up model
//! grew a collector to 2.8 GiB at 40,000 models (issue 12). With a bucket of
//! `--new-runs-per-agent-per-hour` tokens, refilled continuously, a real node (a Slurm node
//! running short jobs starts a run per job) is never limited, and a runaway one is: records of
//! further new runs are quarantined (`too-many-new-runs`) and counted, records of runs that
//! exist are not affected. Only the ledger writer uses it, in the order records are applied.

use std::collections::HashMap;

use flopmeter_core::utc::MS_PER_HOUR;

/// Default `--new-runs-per-agent-per-hour`: ten a minute, sustained.
pub const DEFAULT_NEW_RUNS_PER_HOUR: u32 = 600;

/// Agents whose buckets are kept before full ones are dropped (a full bucket is the same as
/// none).
const MAX_AGENTS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: i64,
}

/// The buckets.
#[derive(Debug)]
pub struct NewRuns {
    per_hour: u32,
    agents: HashMap<String, Bucket>,
}

impl NewRuns {
    /// `per_hour` new runs per agent per hour (0: no limit).
    pub fn new(per_hour: u32) -> NewRuns {
        NewRuns {
            per_hour,
            agents: HashMap::new(),
        }
    }

    fn refilled(&self, b: Bucket, now_ms: i64) -> f64 {
        let cap = f64::from(self.per_hour);
        let elapsed = (now_ms - b.at_ms).max(0) as f64;
        (b.tokens + elapsed * cap / MS_PER_HOUR as f64).min(cap)
    }

    /// Takes a token for a new run of `agent` at `now_ms`; `false` when its bucket is empty.
    pub fn allow(&mut self, agent: &str, now_ms: i64) -> bool {
        if self.per_hour == 0 {
            return true;
        }
        if self.agents.len() >= MAX_AGENTS {
            let cap = f64::from(self.per_hour);
            let full: Vec<String> = self
                .agents
                .iter()
                .filter(|(_, b)| self.refilled(**b, now_ms) >= cap)
                .map(|(a, _)| a.clone())
                .collect();
            for a in full {
                self.agents.remove(&a);
            }
        }
        let b = self.agents.get(agent).copied().unwrap_or(Bucket {
            tokens: f64::from(self.per_hour),
            at_ms: now_ms,
        });
        let tokens = self.refilled(b, now_ms);
        let ok = tokens >= 1.0;
        let b = Bucket {
            tokens: if ok { tokens - 1.0 } else { tokens },
            at_ms: now_ms,
        };
        match self.agents.get_mut(agent) {
            Some(slot) => *slot = b,
            None => {
                self.agents.insert(agent.to_string(), b);
            }
        }
        ok
    }

    /// The limit, per agent and hour.
    pub fn per_hour(&self) -> u32 {
        self.per_hour
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let mut n = NewRuns::new(60);
        let t = 1_000_000;
        assert_eq!((0..100).filter(|_| n.allow("a", t)).count(), 60);
        // Other agents have their own bucket.
        assert!(n.allow("b", t));
        // One token a minute comes back.
        assert!(!n.allow("a", t + 30_000));
        assert!(n.allow("a", t + 61_000));
        assert!(!n.allow("a", t + 61_000));
        // No limit.
        let mut free = NewRuns::new(0);
        assert!((0..10_000).all(|_| free.allow("a", t)));
    }
}
