//! Slurm jobs: the `SLURM_*` variables every task of a job carries in its environment.
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
//! A plain job name is *not* taken as a model: clusters are full of jobs called `train` or
//! `test`, and booking them as models would pollute the per-model ledger. Without a model the
//! job id and account still travel with the unattributed record, so an operator can find it.
//! The run defaults to `slurm-<job id>`: a job id is unique in its cluster and shared by all
//! ranks on all nodes, which is exactly what a run is.

use std::collections::HashMap;

use super::labels::Declared;

/// A Slurm job, from its environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct SlurmJob {
    /// `SLURM_JOB_ID`.
    pub job_id: String,
    /// `SLURM_JOB_NAME`.
    pub job_name: Option<String>,
    /// `SLURM_JOB_ACCOUNT`.
    pub account: Option<String>,
    /// What the comment and name declared, by the convention above.
    pub declared: Declared,
}

impl SlurmJob {
    /// The job of a process environment, if it runs under Slurm (has `SLURM_JOB_ID`).
    pub fn from_env(env: &HashMap<String, String>) -> Option<SlurmJob> {
        let job_id = env.get("SLURM_JOB_ID")?.trim().to_string();
        if job_id.is_empty() {
            return None;
        }
        let job_name = env.get("SLURM_JOB_NAME").map(|s| s.trim().to_string());
        let account = env
            .get("SLURM_JOB_ACCOUNT")
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        let mut declared = Declared::default();
        if let Some(comment) = env.get("SLURM_JOB_COMMENT") {
            for word in comment.split(|c: char| c.is_whitespace() || c == ',' || c == ';') {
                if let Some((k, v)) = word.split_once('=')
                    && let Some(key) = k.strip_prefix("flopmeter.")
                {
                    declared.set(key, v);
                }
            }
        }
        if declared.model.is_none()
            && let Some(model) = job_name
                .as_deref()
                .and_then(|n| n.strip_prefix("flopmeter:"))
        {
            declared.set("model", model);
        }
        if declared.run.is_none() {
            declared.run = Some(format!("slurm-{job_id}"));
        }
        Some(SlurmJob {
            job_id,
            job_name,
            account,
            declared,
        })
    }
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
            (
                "SLURM_JOB_COMMENT",
                "nightly; flopmeter.model=llama-70b,flopmeter.stage=sft flopmeter.planned_flop=2e24",
            ),
        ]))
        .unwrap();
        assert_eq!(j.declared.model.as_deref(), Some("llama-70b"));
        assert_eq!(j.declared.stage.as_deref(), Some("finetune"));
        assert_eq!(j.declared.run.as_deref(), Some("slurm-4242"));
        assert_eq!(j.declared.planned_flop, Some(2 * 10u128.pow(24)));
        assert_eq!(j.account.as_deref(), Some("research"));
    }

    #[test]
    fn job_name_convention_and_plain_names() {
        let j = SlurmJob::from_env(&env(&[
            ("SLURM_JOB_ID", "7"),
            ("SLURM_JOB_NAME", "flopmeter:demo-7b"),
        ]))
        .unwrap();
        assert_eq!(j.declared.model.as_deref(), Some("demo-7b"));
        let plain = SlurmJob::from_env(&env(&[("SLURM_JOB_ID", "8"), ("SLURM_JOB_NAME", "train")]))
            .unwrap();
        assert_eq!(plain.declared.model, None, "a plain name is not a model");
        assert_eq!(SlurmJob::from_env(&env(&[("HOME", "/root")])), None);
    }
}
