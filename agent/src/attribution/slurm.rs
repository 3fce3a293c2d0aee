//! Slurm jobs: the `SLURM_*` variables every task of a job carries in its environment, and
//! the job comment, which it does not carry.
//!
//! Slurm has no labels, so a job names its model by convention, in one of two places
//! (documented in the README, "Label a training job"):
//!
//! 1. the job comment (`sbatch --comment`), as `flopmeter.<key>=<value>` words separated by
//!    spaces, commas or semicolons: `--comment "flopmeter.model=llama-70b flopmeter.stage=sft"`.
//!    Every key of the `FLOPMETER_*` variables works (`model`, `run`, `stage`, `precision`,
//!    `planned_flop`, `params`, `tokens`, `base_model`, `planned_end`);
//! 2. the job name, as `flopmeter:<model>` (`sbatch -J flopmeter:llama-70b`).
//!
//! **Where the comment comes from.** Slurm never puts `SLURM_JOB_COMMENT` into a task's
//! environment (slurm.conf(5) lists it for Prolog and Epilog scripts only), so the agent asks
//! Slurm: [`super::slurm_comments`] reads what the shipped Prolog recorded on the node, and
//! otherwise asks `squeue` once per job. A `SLURM_JOB_COMMENT` that a site's launcher does
//! export is still honoured, and wins.
//!
//! A plain job name is *not* taken as a model: clusters are full of jobs called `train` or
//! `test`, and booking them as models would pollute the per-model ledger. Without a model the
//! job id, user, account and cluster still travel with the unattributed record, so an
//! operator can find it. The run defaults to `slurm-<job id>`: a job id is unique in its
//! cluster and shared by all ranks on all nodes, which is exactly what a run is.

use std::collections::HashMap;

use super::labels::Declared;

/// The longest job id taken from an environment (Slurm's are 32-bit numbers).
const MAX_JOB_ID_LEN: usize = 20;

/// Whether `id` can be a Slurm job id. The environment is the job owner's to write, and the
/// id is used as a file name and a command argument, so anything but digits is refused.
pub fn valid_job_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_JOB_ID_LEN && id.bytes().all(|b| b.is_ascii_digit())
}

/// The environment variables [`SlurmJob::from_env`] reads (the rest of `SLURM_*` is not kept).
pub fn wanted(key: &str) -> bool {
    key.starts_with("SLURM_JOB_") || key == "SLURM_CLUSTER_NAME"
}

/// A Slurm job, from its environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct SlurmJob {
    /// `SLURM_JOB_ID`.
    pub job_id: String,
    /// `SLURM_JOB_NAME`.
    pub job_name: Option<String>,
    /// `SLURM_JOB_ACCOUNT` (present only when the job was submitted with `--account`).
    pub account: Option<String>,
    /// `SLURM_JOB_USER`.
    pub user: Option<String>,
    /// `SLURM_CLUSTER_NAME`.
    pub cluster: Option<String>,
    /// `SLURM_JOB_COMMENT`, when a launcher exported it (Slurm itself does not).
    pub env_comment: Option<String>,
}

impl SlurmJob {
    /// The job of a process environment, if it runs under Slurm (has a valid `SLURM_JOB_ID`).
    pub fn from_env(env: &HashMap<String, String>) -> Option<SlurmJob> {
        let job_id = env.get("SLURM_JOB_ID")?.trim().to_string();
        if !valid_job_id(&job_id) {
            return None;
        }
        let get = |k: &str| {
            env.get(k)
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        Some(SlurmJob {
            job_name: get("SLURM_JOB_NAME"),
            account: get("SLURM_JOB_ACCOUNT"),
            user: get("SLURM_JOB_USER"),
            cluster: get("SLURM_CLUSTER_NAME"),
            env_comment: env.get("SLURM_JOB_COMMENT").cloned(),
            job_id,
        })
    }

    /// What the job declared by the convention above, given its comment as Slurm knows it
    /// (`None` when unknown or empty).
    pub fn declared(&self, comment: Option<&str>) -> Declared {
        let mut declared = Declared::default();
        if let Some(comment) = self.env_comment.as_deref().or(comment) {
            parse_comment(comment, &mut declared);
        }
        if declared.model.is_none()
            && let Some(model) = self
                .job_name
                .as_deref()
                .and_then(|n| n.strip_prefix("flopmeter:"))
        {
            declared.set("model", model);
        }
        if declared.run.is_none() {
            declared.run = Some(format!("slurm-{}", self.job_id));
        }
        declared
    }
}

/// Reads `flopmeter.<key>=<value>` words; other words (a comment is free text) are ignored.
fn parse_comment(comment: &str, declared: &mut Declared) {
    for word in comment.split(|c: char| c.is_whitespace() || c == ',' || c == ';') {
        if let Some((k, v)) = word.split_once('=')
            && let Some(key) = k.strip_prefix("flopmeter.")
        {
            declared.set(key, v);
        }
    }
}

/// The `ClusterName` of a slurm.conf text (keys are case-insensitive; `#` starts a comment).
pub fn cluster_name(slurm_conf: &str) -> Option<String> {
    slurm_conf.lines().find_map(|line| {
        let line = line.split('#').next()?.trim();
        let (k, v) = line.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("ClusterName")
            .then(|| v.trim().to_string())
            .filter(|v| !v.is_empty() && v.len() <= 256 && !v.chars().any(char::is_control))
    })
}

/// This node's Slurm cluster name, from the slurm.conf its Slurm commands read (`SLURM_CONF`,
/// else the usual places, then the copy slurmd caches in configless mode). `None` on a node
/// without Slurm.
///
/// Why a file and not `scontrol show config`: the file is what every Slurm command on the
/// node reads, it answers when the controller is down, and it costs slurmctld nothing (an
/// RPC from every agent of a large cluster restarting at once is load an admin would not
/// accept for a name that never changes). A node whose slurm.conf is elsewhere sets
/// `--cluster` or `SLURM_CONF` in the agent's unit.
pub fn local_cluster_name() -> Option<String> {
    let mut paths: Vec<std::path::PathBuf> = std::env::var_os("SLURM_CONF")
        .map(Into::into)
        .into_iter()
        .collect();
    paths.extend(
        [
            "/etc/slurm/slurm.conf",
            "/etc/slurm-llnl/slurm.conf",
            // Configless mode (Slurm 22.05 and later, then earlier releases' default).
            "/run/slurm/conf/slurm.conf",
            "/var/spool/slurmd/conf-cache/slurm.conf",
        ]
        .iter()
        .map(Into::into),
    );
    paths
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| cluster_name(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn comment_convention() {
        let j = SlurmJob::from_env(&env(&[
            ("SLURM_JOB_ID", "4242"),
            ("SLURM_JOB_NAME", "train"),
            ("SLURM_JOB_ACCOUNT", "research"),
            ("SLURM_JOB_USER", "alice"),
            ("SLURM_CLUSTER_NAME", "c1"),
        ]))
        .unwrap();
        let d = j.declared(Some(
            "nightly; flopmeter.model=llama-70b,flopmeter.stage=sft flopmeter.planned_flop=2e24",
        ));
        assert_eq!(d.model.as_deref(), Some("llama-70b"));
        assert_eq!(d.stage.as_deref(), Some("finetune"));
        assert_eq!(d.run.as_deref(), Some("slurm-4242"));
        assert_eq!(d.declaration.planned_flop, Some(2 * 10u128.pow(24)));
        assert_eq!(j.account.as_deref(), Some("research"));
        assert_eq!(j.user.as_deref(), Some("alice"));
        assert_eq!(j.cluster.as_deref(), Some("c1"));
        assert_eq!(j.declared(None).model, None, "no comment, plain name");
    }

    #[test]
    fn job_name_convention_and_plain_names() {
        let j = SlurmJob::from_env(&env(&[
            ("SLURM_JOB_ID", "7"),
            ("SLURM_JOB_NAME", "flopmeter:demo-7b"),
        ]))
        .unwrap();
        assert_eq!(j.declared(None).model.as_deref(), Some("demo-7b"));
        // The comment's model wins over the name's.
        assert_eq!(
            j.declared(Some("flopmeter.model=other")).model.as_deref(),
            Some("other")
        );
        let plain = SlurmJob::from_env(&env(&[("SLURM_JOB_ID", "8"), ("SLURM_JOB_NAME", "train")]))
            .unwrap();
        assert_eq!(
            plain.declared(None).model,
            None,
            "a plain name is not a model"
        );
        assert_eq!(SlurmJob::from_env(&env(&[("HOME", "/root")])), None);
    }

    #[test]
    fn job_ids_are_digits_only() {
        for bad in [
            "",
            "../../etc/passwd",
            "12 -o %u",
            "-1",
            "123456789012345678901",
        ] {
            assert!(!valid_job_id(bad), "{bad:?}");
            assert_eq!(SlurmJob::from_env(&env(&[("SLURM_JOB_ID", bad)])), None);
        }
        assert!(valid_job_id("4294967294"));
    }

    #[test]
    fn cluster_name_from_slurm_conf() {
        let conf = "# a comment\nSlurmctldHost=head\n  clustername = gpu-a # prod\nNodeName=n1\n";
        assert_eq!(cluster_name(conf).as_deref(), Some("gpu-a"));
        assert_eq!(cluster_name("#ClusterName=x\n"), None);
    }

    #[test]
    fn an_exported_comment_wins_over_the_looked_up_one() {
        let j = SlurmJob::from_env(&env(&[
            ("SLURM_JOB_ID", "9"),
            ("SLURM_JOB_COMMENT", "flopmeter.model=from-env"),
        ]))
        .unwrap();
        assert_eq!(
            j.declared(Some("flopmeter.model=from-slurm"))
                .model
                .as_deref(),
            Some("from-env")
        );
    }
}
