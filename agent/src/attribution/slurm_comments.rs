//! Slurm job comments, from Slurm itself: what the shipped Prolog recorded on this node, else
//! one `squeue` query per job, in the background, bounded by a timeout.
//!
//! Why two ways. A job's comment is known to slurmctld and handed to the Prolog and Epilog
//! only (never to the job's tasks). The Prolog (`deploy/slurm/flopmeter-prolog`) writes it to
//! `<dir>/<job id>` before the job's first task starts, so the agent finds it at its first
//! sight of the job without asking the controller anything: what a large site wants. Without
//! the Prolog the agent asks `squeue --noheader --jobs <id> --format %k` itself: one small RPC
//! per job and node, cached for the job's life, with no configuration to change.
//!
//! The sampler must never stall on the controller: queries run on their own thread. The first
//! lookup of a job waits for the answer for at most the caller's budget (a fraction of a
//! sample interval); a job whose answer has not come is attributed without its comment for
//! the time being (its work is then unattributed, with its job id) and looked up again every
//! tick until the answer arrives. A slow or unreachable controller (timeout, error) is asked
//! again after 5 s, then 10 s, ... up to 5 min; a missing `squeue` switches queries off with one
//! warning. The cache is bounded ([`MAX_JOBS`], least recently used evicted).

use std::collections::HashMap;
use std::io::Read as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::slurm::valid_job_id;

/// Where comments come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlurmCommentsConfig {
    /// The directory the Prolog writes `<job id>` files into; `None` to skip it.
    pub dir: Option<PathBuf>,
    /// The `squeue` program; `None` never asks the controller.
    pub squeue: Option<PathBuf>,
    /// Longest one `squeue` may run before it is killed and the job asked again later.
    pub timeout: Duration,
}

impl Default for SlurmCommentsConfig {
    fn default() -> Self {
        SlurmCommentsConfig {
            dir: Some(PathBuf::from(DEFAULT_DIR)),
            squeue: Some(PathBuf::from("squeue")),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Where the shipped Prolog records comments unless told otherwise.
pub const DEFAULT_DIR: &str = "/run/flopmeter/slurm";

/// Most jobs remembered (a node runs far fewer at once).
pub const MAX_JOBS: usize = 4096;

/// Queries waiting for the worker; beyond it a lookup is retried at a later tick.
const QUEUE: usize = 256;

/// The largest comment read (Slurm comments are short; this only bounds a broken reply).
const MAX_COMMENT_BYTES: u64 = 64 * 1024;

const RETRY_FIRST: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// What is known of a job's comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Slurm answered: the comment, or `None` when the job has none (or is gone).
    Known(Option<String>),
    /// Not known yet (asked, or waiting to be asked again).
    Pending,
}

#[derive(Debug, Clone)]
enum Answer {
    Known(Option<String>),
    Asked,
    RetryAt(Instant),
}

#[derive(Debug)]
struct Job {
    answer: Answer,
    used: Instant,
    delay: Duration,
}

#[derive(Debug, Default)]
struct State {
    jobs: HashMap<String, Job>,
    /// `squeue` could not be started at all: queries are off.
    squeue_missing: bool,
    /// The last query failed; the next failure is not logged again until one succeeds.
    failing: bool,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    answered: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The comment source; see the module docs.
#[derive(Debug)]
pub struct SlurmComments {
    cfg: SlurmCommentsConfig,
    shared: Arc<Shared>,
    tx: Option<SyncSender<String>>,
}

impl SlurmComments {
    /// A source with `cfg`; the query thread starts at the first query.
    pub fn new(cfg: SlurmCommentsConfig) -> Self {
        SlurmComments {
            cfg,
            shared: Arc::default(),
            tx: None,
        }
    }

    /// The comment of `job_id`, waiting at most `wait` for a first answer.
    pub fn lookup(&mut self, job_id: &str, wait: Duration) -> Lookup {
        if !valid_job_id(job_id) {
            return Lookup::Known(None);
        }
        let now = Instant::now();
        {
            let mut st = self.shared.lock();
            if let Some(job) = st.jobs.get_mut(job_id) {
                job.used = now;
                match &job.answer {
                    Answer::Known(c) => return Lookup::Known(c.clone()),
                    Answer::Asked => return Lookup::Pending,
                    Answer::RetryAt(at) if now < *at => return Lookup::Pending,
                    Answer::RetryAt(_) => {}
                }
            }
        }
        if let Some(c) = self.prolog_record(job_id) {
            self.remember(job_id, Answer::Known(c.clone()), now);
            return Lookup::Known(c);
        }
        if self.cfg.squeue.is_none() || self.shared.lock().squeue_missing {
            self.remember(job_id, Answer::Known(None), now);
            return Lookup::Known(None);
        }
        if !self.ask(job_id, now) {
            return Lookup::Pending;
        }
        let deadline = now + wait;
        let mut st = self.shared.lock();
        loop {
            if let Some(Job {
                answer: Answer::Known(c),
                ..
            }) = st.jobs.get(job_id)
            {
                return Lookup::Known(c.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Lookup::Pending;
            }
            st = self
                .shared
                .answered
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The comment the Prolog recorded, if it did (`Some(None)`: recorded as empty).
    fn prolog_record(&self, job_id: &str) -> Option<Option<String>> {
        let path = self.cfg.dir.as_ref()?.join(job_id);
        match std::fs::File::open(&path) {
            Ok(f) => {
                let mut s = String::new();
                match f.take(MAX_COMMENT_BYTES).read_to_string(&mut s) {
                    Ok(_) => Some(Some(s.trim().to_string()).filter(|s| !s.is_empty())),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot read a Slurm job comment recorded by the Prolog");
                        None
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "no readable Prolog record");
                None
            }
        }
    }

    fn remember(&self, job_id: &str, answer: Answer, now: Instant) {
        let mut st = self.shared.lock();
        if st.jobs.len() >= MAX_JOBS
            && !st.jobs.contains_key(job_id)
            && let Some(oldest) = st
                .jobs
                .iter()
                .min_by_key(|(_, j)| j.used)
                .map(|(k, _)| k.clone())
        {
            st.jobs.remove(&oldest);
        }
        let delay = st.jobs.get(job_id).map_or(RETRY_FIRST, |j| j.delay);
        st.jobs.insert(
            job_id.to_string(),
            Job {
                answer,
                used: now,
                delay,
            },
        );
    }

    /// Queues a query; false when the queue is full (asked again at a later lookup).
    fn ask(&mut self, job_id: &str, now: Instant) -> bool {
        let tx = self.tx.get_or_insert_with(|| {
            let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
            let shared = self.shared.clone();
            let squeue = self.cfg.squeue.clone().unwrap_or_default();
            let timeout = self.cfg.timeout;
            let spawned = std::thread::Builder::new()
                .name("flopmeter-squeue".into())
                .spawn(move || worker(&shared, &squeue, timeout, &rx));
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start the Slurm query thread");
            }
            tx
        });
        let tx = tx.clone();
        // Marked before it is sent, so the worker's answer always finds the entry.
        self.remember(job_id, Answer::Asked, now);
        match tx.try_send(job_id.to_string()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.remember(job_id, Answer::RetryAt(now), now);
                false
            }
            Err(TrySendError::Disconnected(_)) => {
                self.remember(job_id, Answer::Known(None), now);
                false
            }
        }
    }
}

/// Why a query gave no comment.
#[derive(Debug, thiserror::Error)]
enum QueryError {
    /// `squeue` is not installed (or not executable).
    #[error("squeue cannot be run: {0}")]
    Missing(#[source] std::io::Error),
    /// Slurm does not know the job (it ended and was purged).
    #[error("Slurm does not know the job")]
    NoSuchJob,
    /// No answer within the timeout.
    #[error("squeue gave no answer within {0:?} (--slurm-query-timeout)")]
    Slow(Duration),
    /// squeue could not be started for another reason than its absence.
    #[error("squeue cannot be started: {0}")]
    Spawn(#[source] std::io::Error),
    /// Waiting for squeue failed.
    #[error("waiting for squeue: {0}")]
    Wait(#[source] std::io::Error),
    /// squeue answered with an error: controller down, munge broken, ... (its exit status
    /// and what it wrote on stderr).
    #[error("squeue failed: {0}")]
    Failed(String),
}

fn worker(shared: &Shared, squeue: &std::path::Path, timeout: Duration, rx: &Receiver<String>) {
    for job_id in rx {
        let outcome = query(squeue, &job_id, timeout);
        let mut st = shared.lock();
        let answer = match outcome {
            Ok(c) => {
                st.failing = false;
                Answer::Known(c)
            }
            Err(QueryError::NoSuchJob) => Answer::Known(None),
            Err(QueryError::Missing(e)) => {
                tracing::warn!(
                    squeue = %squeue.display(),
                    error = %e,
                    "cannot run squeue: Slurm job comments are not read (jobs labelled with \
                     --comment stay unattributed); install the flopmeter Prolog \
                     (deploy/slurm/) or set --slurm-squeue"
                );
                st.squeue_missing = true;
                for j in st.jobs.values_mut() {
                    if matches!(j.answer, Answer::Asked) {
                        j.answer = Answer::Known(None);
                    }
                }
                Answer::Known(None)
            }
            Err(e) => {
                let delay = st.jobs.get(&job_id).map_or(RETRY_FIRST, |j| j.delay);
                if !st.failing {
                    st.failing = true;
                    tracing::warn!(
                        job = %job_id,
                        error = %e,
                        retry_in = ?delay,
                        "Slurm did not give the job's comment; its work is unattributed (with \
                         its job id) until it does"
                    );
                }
                if let Some(j) = st.jobs.get_mut(&job_id) {
                    j.delay = (delay * 2).min(RETRY_MAX);
                }
                Answer::RetryAt(Instant::now() + delay)
            }
        };
        let used = Instant::now();
        st.jobs
            .entry(job_id)
            .or_insert(Job {
                answer: Answer::Asked,
                used,
                delay: RETRY_FIRST,
            })
            .answer = answer;
        drop(st);
        shared.answered.notify_all();
    }
}

/// `squeue --noheader --jobs <id> --format %k`, killed after `timeout`.
fn query(
    squeue: &std::path::Path,
    job_id: &str,
    timeout: Duration,
) -> Result<Option<String>, QueryError> {
    let started = Instant::now();
    let mut child = Command::new(squeue)
        .args(["--noheader", "--jobs", job_id, "--format", "%k"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                QueryError::Missing(e)
            }
            _ => QueryError::Spawn(e),
        })?;
    // Read on a thread so a long answer cannot block the child on a full pipe.
    let stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(out) = stdout {
            let _ = out.take(MAX_COMMENT_BYTES).read_to_string(&mut s);
        }
        s
    });
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = reader.join();
                return Err(QueryError::Slow(timeout));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(QueryError::Wait(e)),
        }
    };
    let out = reader.join().unwrap_or_default();
    let mut err = String::new();
    if let Some(e) = child.stderr.take() {
        let _ = e.take(4096).read_to_string(&mut err);
    }
    if !status.success() {
        return Err(if err.contains("Invalid job id") {
            QueryError::NoSuchJob
        } else {
            QueryError::Failed(format!("{status}: {}", err.trim()))
        });
    }
    let comment = out.trim();
    Ok((!comment.is_empty() && comment != "(null)").then(|| comment.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_ids_are_never_looked_up() {
        let mut c = SlurmComments::new(SlurmCommentsConfig {
            dir: None,
            squeue: Some("/bin/false".into()),
            timeout: Duration::from_secs(1),
        });
        assert_eq!(c.lookup("../x", Duration::ZERO), Lookup::Known(None));
        assert!(c.tx.is_none(), "nothing was asked");
    }
}
