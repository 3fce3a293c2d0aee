//! Which cluster a record's work ran on.
//!
//! The agent stamps it on every record (`WorkloadIdentity.cluster`) rather than leaving the
//! collector to stamp it from the Hello: a record then says where its work ran whenever it is
//! sent (a spooled record keeps the cluster it was sampled on across a reconfiguration), and
//! the raw batches the ledger keeps reproduce the per-cluster figures on their own, which is
//! what `ledger verify` recomputes from.
//!
//! Precedence, from the operator's word down:
//! 1. `--cluster` (flag, `FLOPMETER_CLUSTER` or the config file): the organisation's name for
//!    the cluster, which the per-cluster figures of a report must use. It wins over a job's
//!    `SLURM_CLUSTER_NAME`, which is only what the job's environment says (and a process
//!    can change its own environment); a disagreement is logged once per name.
//! 2. The Slurm job's `SLURM_CLUSTER_NAME`: on a Slurm node whose agent was given no name.
//! 3. The node's Slurm `ClusterName` ([`crate::attribution::slurm::local_cluster_name`]): for
//!    work outside a job (or a job whose environment could not be read).
//! 4. None: the record names no cluster and is summed under "no cluster named".

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

/// Distinct disagreeing job cluster names logged (beyond it, no more lines).
const MAX_LOGGED: usize = 16;

/// The cluster names an agent stamps records with (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct ClusterName {
    configured: Option<String>,
    node: Option<String>,
    logged: Arc<Mutex<BTreeSet<String>>>,
}

impl ClusterName {
    /// From the operator's `--cluster` and, when it is not set, the node's Slurm name.
    pub fn new(configured: Option<String>, node: Option<String>) -> ClusterName {
        ClusterName {
            configured,
            node,
            logged: Arc::default(),
        }
    }

    /// The node's cluster, as the Hello says it (empty when unknown).
    pub fn of_node(&self) -> &str {
        self.configured
            .as_deref()
            .or(self.node.as_deref())
            .unwrap_or("")
    }

    /// The cluster of a record whose Slurm job (if any) named `job_cluster`.
    pub fn of_record(&self, job_cluster: &str) -> String {
        match &self.configured {
            Some(c) => {
                if !job_cluster.is_empty() && job_cluster != c {
                    self.log_disagreement(c, job_cluster);
                }
                c.clone()
            }
            None if !job_cluster.is_empty() => job_cluster.to_string(),
            None => self.node.clone().unwrap_or_default(),
        }
    }

    fn log_disagreement(&self, configured: &str, job_cluster: &str) {
        let Ok(mut logged) = self.logged.lock() else {
            return;
        };
        if logged.len() < MAX_LOGGED && logged.insert(job_cluster.to_string()) {
            tracing::warn!(
                cluster = %configured,
                slurm_cluster = %job_cluster,
                "a Slurm job names another cluster than --cluster; its records are booked on \
                 --cluster (the operator's name wins); set --cluster to the Slurm ClusterName, \
                 or leave it unset to use Slurm's"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operators_name_wins_then_the_jobs_then_the_nodes() {
        let c = ClusterName::new(Some("eu-pretrain".into()), Some("slurm-a".into()));
        assert_eq!(c.of_node(), "eu-pretrain");
        assert_eq!(c.of_record("slurm-a"), "eu-pretrain");
        assert_eq!(c.of_record(""), "eu-pretrain");
        let c = ClusterName::new(None, Some("slurm-a".into()));
        assert_eq!(c.of_node(), "slurm-a");
        assert_eq!(c.of_record("slurm-b"), "slurm-b");
        assert_eq!(c.of_record(""), "slurm-a");
        let c = ClusterName::default();
        assert_eq!(c.of_node(), "");
        assert_eq!(c.of_record(""), "");
        assert_eq!(c.of_record("slurm-b"), "slurm-b");
    }
}
