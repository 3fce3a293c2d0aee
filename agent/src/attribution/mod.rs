//! Attribution: which run and model a GPU process works for (DESIGN.md §4).
//!
//! Why the agent does this itself, from `/proc`: it must work with no change to training code,
//! on Kubernetes, Slurm and bare metal alike, and NVML only knows PIDs. Each PID resolves to
//! a workload identity, in this order, and the first source that yields a model wins:
//!
//! 1. the process environment, `/proc/<pid>/environ`: `FLOPMETER_MODEL`, `_RUN`, `_STAGE`,
//!    `_PRECISION`, `_PLANNED_FLOP`, `_PARAMS`, `_TOKENS`, `_BASE_MODEL`, `_PLANNED_END`;
//! 2. Kubernetes: the pod UID from `/proc/<pid>/cgroup` ([`cgroup`]), then that pod's
//!    `flopmeter.io/*` labels and annotations from a watch of this node's pods
//!    ([`kubernetes`]);
//! 3. Slurm: the job's comment and name, by the convention in [`slurm`]; the comment comes
//!    from Slurm itself ([`slurm_comments`]), since Slurm never puts it into a task's
//!    environment;
//! 4. otherwise **unattributed**: still measured and sent (per node and GPU), never dropped.
//!
//! Fields the winning source leaves out (run, stage, declarations) are filled from the later
//! sources that name the same model or none, so a Slurm job labelled only with
//! `FLOPMETER_MODEL` still gets its job id as the run, and its `--comment
//! "flopmeter.stage=sft"` its stage. Whatever wins, the record also carries the pod's
//! namespace and name, or the Slurm job id, user, account and cluster; unattributed work
//! also carries the process's command name, so it can be traced to what ran it. The first
//! time a source's work is found unattributed, the agent says so once, at info level.
//!
//! Lookups are cached per PID, keyed by (PID, process start time from `/proc/<pid>/stat`
//! field 22): a PID that exited and was reused by a new process is a different key, so an
//! old identity never poisons a new process. Reading the start time is the one `/proc` read
//! per process per tick; environ and cgroup are read once per process.

pub mod cgroup;
pub mod kubernetes;
pub mod labels;
pub mod slurm;
pub mod slurm_comments;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use labels::{Declaration, Declared};

use cgroup::PodRef;
use kubernetes::PodStore;
use slurm::SlurmJob;
use slurm_comments::{Lookup, SlurmComments};

/// Where an identity came from (the wire's `AttributionSource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// `FLOPMETER_*` variables in the process environment.
    ProcessEnv,
    /// `flopmeter.io/*` labels and annotations of the pod.
    Kubernetes,
    /// The Slurm job's comment or name.
    Slurm,
    /// Nothing found.
    Unattributed,
}

impl Source {
    /// The tag used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::ProcessEnv => "process-env",
            Source::Kubernetes => "kubernetes",
            Source::Slurm => "slurm",
            Source::Unattributed => "unattributed",
        }
    }
}

/// Who did the work.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    /// Model name (empty when unattributed).
    pub model: String,
    /// Run id (may be empty: the collector then books the model without a run).
    pub run: String,
    /// Stage, canonical, or empty (pre-training).
    pub stage: String,
    /// Where the identity came from.
    pub source: Source,
    /// Kubernetes namespace or Slurm account.
    pub namespace: String,
    /// Kubernetes pod name or Slurm job id.
    pub job: String,
    /// Slurm cluster of the job (`SLURM_CLUSTER_NAME`).
    pub cluster: String,
    /// Slurm job user (`SLURM_JOB_USER`).
    pub user: String,
    /// Command name of the process (`/proc/<pid>/comm`), for unattributed work only: it is
    /// what traces work nobody labelled, and attributed work needs no more than its run.
    pub process: String,
}

/// A process's identity and what its run declared.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attribution {
    /// Who.
    pub identity: Identity,
    /// Declarations (empty when the run declared nothing).
    pub declaration: Declaration,
}

impl Attribution {
    /// The identity of work no source could attribute.
    pub fn unattributed() -> Attribution {
        Attribution {
            identity: Identity {
                model: String::new(),
                run: String::new(),
                stage: String::new(),
                source: Source::Unattributed,
                namespace: String::new(),
                job: String::new(),
                cluster: String::new(),
                user: String::new(),
                process: String::new(),
            },
            declaration: Declaration::default(),
        }
    }

    /// Whether a model was found.
    pub fn is_attributed(&self) -> bool {
        self.identity.source != Source::Unattributed
    }
}

/// What `/proc` says about one process, read once per (PID, start time).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessFacts {
    /// `FLOPMETER_*` variables.
    pub env: Declared,
    /// The pod, from the cgroup.
    pub pod: Option<PodRef>,
    /// The Slurm job, from `SLURM_*` variables.
    pub slurm: Option<SlurmJob>,
    /// The command name, `/proc/<pid>/comm`.
    pub comm: Option<String>,
}

/// Errors reading a process's `/proc` entries.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The file could not be read (process gone, or not visible from our PID namespace).
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `/proc/<pid>/stat` did not have the expected shape.
    #[error("{path}: no start time in field 22")]
    BadStat {
        /// The file.
        path: PathBuf,
    },
}

fn read(path: PathBuf) -> Result<Vec<u8>, ProcError> {
    std::fs::read(&path).map_err(|source| ProcError::Read { path, source })
}

/// The start time of a process (clock ticks since boot, `/proc/<pid>/stat` field 22).
pub fn start_time(proc_root: &Path, pid: u32) -> Result<u64, ProcError> {
    let path = proc_root.join(pid.to_string()).join("stat");
    let raw = read(path.clone())?;
    let text = String::from_utf8_lossy(&raw);
    // Field 2 (comm) is in parentheses and may itself contain spaces and parentheses, so the
    // fields are counted from the last ')': field 3 (state) is the first after it.
    text.rfind(')')
        .and_then(|i| text[i + 1..].split_whitespace().nth(22 - 3))
        .and_then(|f| f.parse().ok())
        .ok_or(ProcError::BadStat { path })
}

/// Reads the environment and cgroup of a process. A missing cgroup file is not an error
/// (it means "no pod"); an unreadable environ is, because it usually means missing
/// privileges, which the operator must hear about.
pub fn read_facts(proc_root: &Path, pid: u32) -> Result<ProcessFacts, ProcError> {
    let dir = proc_root.join(pid.to_string());
    let environ = read(dir.join("environ"))?;
    let mut env = Declared::default();
    let mut slurm_env = HashMap::new();
    for entry in environ.split(|b| *b == 0) {
        let entry = String::from_utf8_lossy(entry);
        let Some((k, v)) = entry.split_once('=') else {
            continue;
        };
        if let Some(key) = k.strip_prefix("FLOPMETER_") {
            env.set(key, v);
        } else if slurm::wanted(k) {
            slurm_env.insert(k.to_string(), v.to_string());
        }
    }
    let pod = std::fs::read_to_string(dir.join("cgroup"))
        .ok()
        .and_then(|c| cgroup::parse_pod(&c));
    let comm = std::fs::read_to_string(dir.join("comm"))
        .ok()
        .map(|c| {
            c.trim()
                .chars()
                .filter(|c| !c.is_control())
                .collect::<String>()
        })
        .filter(|c| !c.is_empty());
    Ok(ProcessFacts {
        env,
        pod,
        slurm: SlurmJob::from_env(&slurm_env),
        comm,
    })
}

/// Resolves facts to an attribution (the precedence rules of the module docs), with the
/// Slurm job's comment as Slurm knows it.
pub fn resolve(
    facts: &ProcessFacts,
    pods: Option<&PodStore>,
    slurm_comment: Option<&str>,
) -> Attribution {
    let pod = facts
        .pod
        .as_ref()
        .and_then(|p| pods.and_then(|s| s.get(&p.uid)));
    let slurm_declared = facts.slurm.as_ref().map(|s| s.declared(slurm_comment));
    let mut candidates: Vec<(Source, &Declared)> = vec![(Source::ProcessEnv, &facts.env)];
    if let Some(p) = &pod {
        candidates.push((Source::Kubernetes, &p.declared));
    }
    if let Some(d) = &slurm_declared {
        candidates.push((Source::Slurm, d));
    }
    let (namespace, job) = match (&pod, &facts.slurm) {
        (Some(p), _) => (p.namespace.clone(), p.name.clone()),
        (None, Some(s)) => (s.account.clone().unwrap_or_default(), s.job_id.clone()),
        (None, None) => (String::new(), String::new()),
    };
    let slurm_field = |f: fn(&SlurmJob) -> &Option<String>| {
        facts
            .slurm
            .as_ref()
            .and_then(|s| f(s).clone())
            .unwrap_or_default()
    };
    let cluster = slurm_field(|s| &s.cluster);
    let user = slurm_field(|s| &s.user);
    let Some(win) = candidates.iter().position(|(_, d)| d.model.is_some()) else {
        let mut u = Attribution::unattributed();
        u.identity.namespace = namespace;
        u.identity.job = job;
        u.identity.cluster = cluster;
        u.identity.user = user;
        u.identity.process = facts.comm.clone().unwrap_or_default();
        return u;
    };
    let (source, winner) = candidates[win];
    let mut declared = winner.clone();
    for (_, later) in &candidates[win + 1..] {
        if later.model.is_none() || later.model == declared.model {
            declared.fill_from(later);
        }
    }
    Attribution {
        identity: Identity {
            model: declared.model.clone().unwrap_or_default(),
            run: declared.run.clone().unwrap_or_default(),
            stage: declared.stage.clone().unwrap_or_default(),
            source,
            namespace,
            job,
            cluster,
            user,
            process: String::new(),
        },
        declaration: declared.declaration.clone(),
    }
}

#[derive(Debug)]
struct Entry {
    start_time: u64,
    facts: Option<ProcessFacts>,
    /// The attribution, the pod store's generation it saw, and whether it is provisional
    /// (the Slurm job's comment was not known yet: resolved again every tick until it is).
    resolved: Option<(u64, Arc<Attribution>, bool)>,
    last_seen: u64,
}

/// How many ticks a cached PID may go unseen before it is forgotten.
const EVICT_AFTER_TICKS: u64 = 120;
/// A hard ceiling on cached PIDs, so a node that churns processes cannot grow the agent.
const MAX_ENTRIES: usize = 8192;
/// Unattributed sources remembered as already logged; past it the memory starts afresh (a
/// source may then be logged once more).
const MAX_LOGGED: usize = 4096;
/// How long, in all, one tick may wait for Slurm to tell new jobs' comments.
const SLURM_WAIT_PER_TICK: Duration = Duration::from_millis(300);

/// Resolves PIDs to attributions, with the per-(PID, start time) cache.
#[derive(Debug)]
pub struct Attributor {
    proc_root: PathBuf,
    pods: Option<PodStore>,
    slurm: Option<SlurmComments>,
    slurm_wait_left: Duration,
    cache: HashMap<u32, Entry>,
    tick: u64,
    unattributed: Arc<Attribution>,
    warned_unreadable: bool,
    logged: HashSet<String>,
}

impl Attributor {
    /// An attributor reading `proc_root` (normally `/proc`), and pod metadata from `pods`
    /// when Kubernetes is on. Slurm job comments are not looked up until
    /// [`Attributor::with_slurm_comments`].
    pub fn new(proc_root: impl Into<PathBuf>, pods: Option<PodStore>) -> Self {
        Attributor {
            proc_root: proc_root.into(),
            pods,
            slurm: None,
            slurm_wait_left: SLURM_WAIT_PER_TICK,
            cache: HashMap::new(),
            tick: 0,
            unattributed: Arc::new(Attribution::unattributed()),
            warned_unreadable: false,
            logged: HashSet::new(),
        }
    }

    /// Looks Slurm jobs' comments up from `comments`.
    pub fn with_slurm_comments(mut self, comments: SlurmComments) -> Self {
        self.slurm = Some(comments);
        self
    }

    /// The attribution of `pid` now.
    pub fn attribute(&mut self, pid: u32) -> Arc<Attribution> {
        let start = match start_time(&self.proc_root, pid) {
            Ok(s) => s,
            Err(e) => {
                // Gone, or in a PID namespace we cannot see: nothing to cache.
                tracing::debug!(pid, error = %e, "process not visible; unattributed");
                self.cache.remove(&pid);
                return self.unattributed.clone();
            }
        };
        let tick = self.tick;
        let stale = self.cache.get(&pid).is_some_and(|e| e.start_time != start);
        if stale {
            // The PID was reused by a new process: forget everything about the old one.
            self.cache.remove(&pid);
        }
        if self.cache.len() >= MAX_ENTRIES && !self.cache.contains_key(&pid) {
            self.evict_oldest();
        }
        let proc_root = &self.proc_root;
        let warned = &mut self.warned_unreadable;
        let entry = self.cache.entry(pid).or_insert_with(|| {
            let facts = match read_facts(proc_root, pid) {
                Ok(f) => Some(f),
                Err(e) => {
                    if !*warned {
                        *warned = true;
                        tracing::warn!(
                            pid,
                            error = %e,
                            "cannot read a GPU process's environment (the agent needs hostPID \
                             and root or CAP_SYS_PTRACE); its work is unattributed"
                        );
                    }
                    None
                }
            };
            Entry {
                start_time: start,
                facts,
                resolved: None,
                last_seen: tick,
            }
        });
        entry.last_seen = tick;
        let Some(facts) = &entry.facts else {
            return self.unattributed.clone();
        };
        let generation = match (&facts.pod, &self.pods) {
            (Some(_), Some(store)) => store.generation(),
            _ => 0,
        };
        if let Some((g, a, provisional)) = &entry.resolved
            && *g == generation
            && !provisional
        {
            return a.clone();
        }
        let (comment, provisional) = match (&facts.slurm, &mut self.slurm) {
            (Some(job), Some(comments)) if job.env_comment.is_none() => {
                let asked = Instant::now();
                let found = comments.lookup(&job.job_id, self.slurm_wait_left);
                self.slurm_wait_left = self.slurm_wait_left.saturating_sub(asked.elapsed());
                match found {
                    Lookup::Known(c) => (c, false),
                    Lookup::Pending => (None, true),
                }
            }
            _ => (None, false),
        };
        let a = Arc::new(resolve(facts, self.pods.as_ref(), comment.as_deref()));
        entry.resolved = Some((generation, a.clone(), provisional));
        if !a.is_attributed() && !provisional {
            self.log_unattributed(pid, start, &a);
        }
        a
    }

    /// Says once per source (Slurm job, pod, or process) that its work is unattributed, with
    /// what the operator needs to find and label it.
    fn log_unattributed(&mut self, pid: u32, start: u64, a: &Attribution) {
        let id = &a.identity;
        let key = if id.job.is_empty() {
            format!("pid/{pid}/{start}")
        } else {
            format!("job/{}/{}/{}", id.cluster, id.namespace, id.job)
        };
        if self.logged.len() >= MAX_LOGGED {
            self.logged.clear();
        }
        if !self.logged.insert(key) {
            return;
        }
        let facts = self.cache.get(&pid).and_then(|e| e.facts.as_ref());
        let slurm = facts.is_some_and(|f| f.slurm.is_some() && f.pod.is_none());
        let pod = facts.is_some_and(|f| f.pod.is_some());
        let opt = |s: &str| {
            if s.is_empty() {
                "-".to_string()
            } else {
                s.to_string()
            }
        };
        if slurm {
            tracing::info!(
                pid,
                process = %opt(&id.process),
                slurm_job = %id.job,
                user = %opt(&id.user),
                account = %opt(&id.namespace),
                cluster = %opt(&id.cluster),
                "GPU work of a Slurm job that names no model is booked as unattributed; label \
                 the job with --comment \"flopmeter.model=<model>\", -J flopmeter:<model> or \
                 FLOPMETER_MODEL"
            );
        } else if pod {
            tracing::info!(
                pid,
                process = %opt(&id.process),
                namespace = %id.namespace,
                pod = %id.job,
                "GPU work of a pod without a flopmeter.io/model label or annotation is booked \
                 as unattributed"
            );
        } else {
            tracing::info!(
                pid,
                process = %opt(&id.process),
                "GPU work of a process without FLOPMETER_MODEL (and outside any labelled pod \
                 or Slurm job) is booked as unattributed"
            );
        }
    }

    /// Ends a sampling tick: forgets PIDs not seen for a while.
    pub fn end_tick(&mut self) {
        self.tick += 1;
        self.slurm_wait_left = SLURM_WAIT_PER_TICK;
        if self.tick.is_multiple_of(16) {
            let tick = self.tick;
            self.cache
                .retain(|_, e| tick.saturating_sub(e.last_seen) <= EVICT_AFTER_TICKS);
        }
    }

    fn evict_oldest(&mut self) {
        if let Some(pid) = self
            .cache
            .iter()
            .min_by_key(|(_, e)| e.last_seen)
            .map(|(p, _)| *p)
        {
            self.cache.remove(&pid);
        }
    }

    /// Number of cached PIDs.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}
