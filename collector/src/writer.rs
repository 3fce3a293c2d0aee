//! The ledger writer: the one thread that mutates the ledger, with group commit.
//!
//! Why one writer: exactly-once accounting needs each agent's batches applied in order and
//! each batch's read-modify-write of the high-water mark and aggregates to be atomic. With a
//! single writer no two transactions ever conflict, `verify` can run on a consistent ledger
//! by queueing behind the batches, and the order of application is the order of the queue.
//!
//! Why group commit: a flush (fsync) costs milliseconds, applying a batch microseconds. The
//! writer takes every job waiting in its queue (up to a bound), applies each batch in its own
//! transaction, flushes once, and only then replies, so every Ack follows the flush that made
//! its batch durable while the fsync cost is shared by every stream that was waiting.

use std::sync::Arc;
use std::thread;
use std::time::Instant;

use tokio::sync::{Notify, mpsc, oneshot};

use crate::durable_marks::DurableMarks;
use crate::failpoint::Hold;
use crate::ingest::validate::RejectReason;
use crate::ledger::{
    AgentInfo, ApplyOutcome, IncomingBatch, LedgerStore, ModelEntry, RollupStats, StoreError,
    VerifyCut, VerifyReport, VerifyScan,
};
use crate::metrics::Metrics;
use crate::newruns::NewRuns;
use crate::occupancy::{Occupancy, REBUILD_BATCHES};

/// A reply channel.
pub type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// Work for the writer.
#[derive(Debug)]
pub enum Job {
    /// Apply a batch; the reply is sent after the flush that made it durable.
    Apply(Box<IncomingBatch>, Reply<ApplyOutcome>),
    /// Remember an agent's Hello (no reply: informational).
    RecordAgent(AgentInfo),
    /// Create or replace a registry entry.
    SetModel(ModelEntry, Reply<ModelEntry>),
    /// Roll raw batches older than the cutoff (Unix ms) into hourly rollups.
    RollUp {
        /// Cutoff, Unix ms.
        cutoff_unix_ms: i64,
        /// Reply, if anyone waits.
        reply: Option<Reply<RollupStats>>,
    },
    /// Step 1 of an online verification: where it cuts (`LedgerStore::verify_cut`).
    VerifyCut(Reply<VerifyCut>),
    /// Step 3: what was applied since the cut, and the comparison
    /// (`LedgerStore::verify_finish`). Step 2 runs off the writer.
    VerifyFinish(Box<VerifyScan>, Reply<VerifyReport>),
    /// Finish the jobs queued before this one, flush, and exit.
    Stop,
}

/// Rollups done per job, so a large backlog never stalls ingest for long.
const ROLLUP_BATCHES_PER_JOB: usize = 512;

/// Handle to the writer thread.
#[derive(Debug, Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Job>,
    /// Set while an online verification reads raw batches off the writer: rollups, which
    /// move raw batches, wait.
    rollups_paused: Arc<std::sync::atomic::AtomicUsize>,
}

/// Rollups wait while this lives ([`WriterHandle::pause_rollups`]).
#[derive(Debug)]
pub struct RollupPause(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for RollupPause {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The writer has stopped (shutdown or a fatal storage error).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the ledger writer has stopped")]
pub struct WriterStopped;

impl From<WriterStopped> for tonic::Status {
    fn from(e: WriterStopped) -> Self {
        tonic::Status::unavailable(e.to_string())
    }
}

impl WriterHandle {
    /// Holds rollups back until the guard is dropped. Rollup jobs queued meanwhile do
    /// nothing; the rollup loop tries again at its next tick.
    pub fn pause_rollups(&self) -> RollupPause {
        self.rollups_paused
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        RollupPause(self.rollups_paused.clone())
    }

    /// Queues a job (waits while the queue is full: backpressure on the streams).
    pub async fn submit(&self, job: Job) -> Result<(), WriterStopped> {
        self.tx.send(job).await.map_err(|_| WriterStopped)
    }

    /// Queues a job and waits for its reply.
    pub async fn call<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> Job,
    ) -> Result<Result<T, StoreError>, WriterStopped> {
        let (tx, rx) = oneshot::channel();
        self.submit(make(tx)).await?;
        rx.await.map_err(|_| WriterStopped)
    }
}

/// The running writer thread.
#[derive(Debug)]
pub struct Writer {
    handle: WriterHandle,
    thread: thread::JoinHandle<()>,
}

/// How the writer runs.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Jobs waiting, at most (backpressure beyond).
    pub queue: usize,
    /// Batches per flush, at most.
    pub max_group: usize,
    /// Free space the ledger's volume must keep.
    pub headroom: Headroom,
    /// Test-only: hold each flush (`crate::failpoint`).
    pub hold_flush: Option<Hold>,
    /// New runs per agent per hour (0: no limit).
    pub new_runs_per_hour: u32,
}

impl Writer {
    /// Starts the writer on its own OS thread (sled calls block). `marks` are moved after
    /// each flush, and only then. `facts` is notified after a flush that made a registry
    /// change or a newly declared plan durable: the compliance engine evaluates them at once.
    pub fn start(
        store: Arc<dyn LedgerStore>,
        metrics: Metrics,
        marks: Arc<DurableMarks>,
        cfg: WriterConfig,
        facts: Arc<Notify>,
    ) -> Writer {
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        let rollups_paused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let ctx = Ctx {
            rollups_paused: rollups_paused.clone(),
            metrics,
            marks,
            hold_flush: cfg.hold_flush,
            occupancy: Default::default(),
            new_runs: std::cell::RefCell::new(NewRuns::new(cfg.new_runs_per_hour)),
            facts,
        };
        let (max_group, headroom) = (cfg.max_group.max(1), cfg.headroom);
        let thread = thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || run(rx, store.as_ref(), &ctx, max_group, &headroom))
            .expect("spawning the ledger writer thread");
        Writer {
            handle: WriterHandle { tx, rollups_paused },
            thread,
        }
    }

    /// A handle for submitting jobs.
    pub fn handle(&self) -> WriterHandle {
        self.handle.clone()
    }

    /// Finishes the jobs queued so far (flushing them), stops the thread and waits for it.
    /// Jobs queued afterwards are dropped unanswered: their submitters see
    /// [`WriterStopped`], and agents resend them to the next collector process.
    pub async fn stop(self) {
        let _ = self.handle.tx.send(Job::Stop).await;
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

/// Free space the ledger's volume must keep before the writer writes.
#[derive(Debug, Clone)]
pub struct Headroom {
    /// A directory on the volume (the ledger's).
    pub dir: std::path::PathBuf,
    /// Below this many free bytes, nothing is written (0: no check).
    pub min_free_bytes: u64,
}

impl Headroom {
    /// The free bytes left when they are too few to write, if they are.
    fn short(&self) -> Option<u64> {
        if self.min_free_bytes == 0 {
            return None;
        }
        let st = rustix::fs::statvfs(&self.dir).ok()?;
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        (free < self.min_free_bytes).then_some(free)
    }

    /// Why the writer does not write with `free` bytes left.
    fn low_space(&self, free: u64) -> StoreError {
        StoreError::LowSpace {
            dir: self.dir.clone(),
            free_mib: free >> 20,
            min_mib: self.min_free_bytes >> 20,
        }
    }
}

/// What the writer thread works with besides the store.
struct Ctx {
    metrics: Metrics,
    marks: Arc<DurableMarks>,
    hold_flush: Option<Hold>,
    /// Recent work per GPU, for the cross-record ceiling (only this thread touches it).
    occupancy: std::cell::RefCell<Occupancy>,
    /// New runs per agent and hour.
    new_runs: std::cell::RefCell<NewRuns>,
    /// Above 0 while an online verification scans: rollups wait.
    rollups_paused: Arc<std::sync::atomic::AtomicUsize>,
    /// Woken after a flush that made a registry change or a new plan durable.
    facts: Arc<Notify>,
}

fn run(
    mut rx: mpsc::Receiver<Job>,
    store: &dyn LedgerStore,
    ctx: &Ctx,
    max_group: usize,
    headroom: &Headroom,
) {
    let metrics = &ctx.metrics;
    let mut was_short = false;
    let mut group: Vec<Job> = Vec::with_capacity(max_group);
    let mut stop = false;
    let mut broken: Option<Arc<StoreError>> = None;
    while !stop {
        match rx.blocking_recv() {
            None | Some(Job::Stop) => break,
            Some(first) => group.push(first),
        }
        while group.len() < max_group {
            match rx.try_recv() {
                Ok(Job::Stop) => {
                    stop = true;
                    break;
                }
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        // Stop before the disk is full rather than after: the storage engine does not
        // recover cleanly from a write that failed for lack of space.
        let short = headroom.short();
        if short.is_some() != was_short {
            match short {
                Some(free) => tracing::error!("{}", headroom.low_space(free)),
                None => tracing::warn!("the ledger's volume has room again: acknowledging"),
            }
            was_short = short.is_some();
        }
        match (&broken, &short) {
            (Some(earlier), _) => refuse_group(&mut group, store, metrics, &|| {
                StoreError::Broken(earlier.clone())
            }),
            (None, Some(free)) => {
                refuse_group(&mut group, store, metrics, &|| headroom.low_space(*free))
            }
            (None, None) => broken = commit_group(&mut group, store, ctx),
        }
    }
    // Everything answered was flushed already; flush once more so a clean shutdown leaves
    // nothing (such as agent Hellos) to sled's recovery.
    let _ = store.flush();
}

enum Pending {
    /// The agent, the reply, the outcome.
    Apply(
        String,
        Reply<ApplyOutcome>,
        Result<ApplyOutcome, StoreError>,
    ),
    SetModel(Reply<ModelEntry>, Result<ModelEntry, StoreError>),
    RollUp(Option<Reply<RollupStats>>, Result<RollupStats, StoreError>),
}

impl Pending {
    fn storage_failure(&self) -> bool {
        let e = match self {
            Pending::Apply(_, _, r) => r.as_ref().err(),
            Pending::SetModel(_, r) => r.as_ref().err(),
            Pending::RollUp(_, r) => r.as_ref().err(),
        };
        e.is_some_and(StoreError::is_write_failure)
    }

    /// Takes a failed write's error out, to become the source of every refusal until
    /// restart. What is left in its place is never sent: once the ledger is broken every
    /// reply of the group is [`StoreError::Broken`].
    fn take_error(&mut self) -> Option<StoreError> {
        fn never_sent<T>() -> Result<T, StoreError> {
            Err(StoreError::Invalid("replaced by the write failure"))
        }
        match self {
            Pending::Apply(_, _, r) => std::mem::replace(r, never_sent()).err(),
            Pending::SetModel(_, r) => std::mem::replace(r, never_sent()).err(),
            Pending::RollUp(_, r) => std::mem::replace(r, never_sent()).err(),
        }
    }
}

/// Answers every job with why the ledger cannot be written now, without writing.
///
/// Two causes. Too little free space ([`Headroom`]): refused until there is room again.
/// A write that failed (disk full anyway, I/O error): refused until restart, because the
/// store's on-disk log may end before writes it still holds in memory and a later flush that
/// succeeds does not make them durable; acknowledging after it could acknowledge records that
/// vanish on recovery. Either way the agents keep their records meanwhile.
fn refuse_group(
    group: &mut Vec<Job>,
    store: &dyn LedgerStore,
    metrics: &Metrics,
    err: &dyn Fn() -> StoreError,
) {
    for job in group.drain(..) {
        match job {
            Job::Apply(_, reply) => {
                metrics.ledger_write_errors.inc();
                let _ = reply.send(Err(err()));
            }
            Job::SetModel(_, reply) => {
                let _ = reply.send(Err(err()));
            }
            Job::RollUp { reply, .. } => {
                if let Some(reply) = reply {
                    let _ = reply.send(Err(err()));
                }
            }
            // Reads only: still useful to see what is on disk.
            Job::VerifyCut(reply) => {
                let _ = reply.send(store.verify_cut());
            }
            Job::VerifyFinish(scan, reply) => {
                let _ = reply.send(store.verify_finish(*scan));
            }
            Job::RecordAgent(_) | Job::Stop => {}
        }
    }
}

/// Applies and flushes a group; returns why the ledger is broken if a write failed.
fn commit_group(
    group: &mut Vec<Job>,
    store: &dyn LedgerStore,
    ctx: &Ctx,
) -> Option<Arc<StoreError>> {
    let metrics = &ctx.metrics;
    let mut pending = Vec::with_capacity(group.len());
    let mut batches: Vec<(Box<IncomingBatch>, Reply<ApplyOutcome>)> = Vec::new();
    let mut applied = 0u64;
    // Models whose gauges must be read again once this group is durable, and runs that
    // reported.
    let touched = std::cell::RefCell::new(std::collections::HashSet::<String>::new());
    let active = std::cell::RefCell::new(std::collections::HashSet::<(String, String)>::new());
    // Consecutive batches are applied together; any other job first applies the batches
    // queued before it, so every job sees the ledger as the queue order says.
    let apply = |batches: &mut Vec<(Box<IncomingBatch>, Reply<ApplyOutcome>)>,
                 pending: &mut Vec<Pending>| {
        if batches.is_empty() {
            return 0;
        }
        let mut occupancy = ctx.occupancy.borrow_mut();
        screen(
            batches,
            store,
            &mut occupancy,
            &mut ctx.new_runs.borrow_mut(),
        );
        {
            let mut t = touched.borrow_mut();
            let mut a = active.borrow_mut();
            for (b, _) in batches.iter() {
                for cr in &b.records {
                    if cr.rejection.is_some() {
                        continue;
                    }
                    if let crate::ledger::aggregate::Attribution::Run { model, run } =
                        crate::ledger::aggregate::attribution(&cr.record)
                    {
                        if !t.contains(model) {
                            t.insert(model.to_string());
                        }
                        if !a.contains(&(model.to_string(), run.to_string())) {
                            a.insert((model.to_string(), run.to_string()));
                        }
                    }
                }
            }
        }
        let refs: Vec<&IncomingBatch> = batches.iter().map(|(b, _)| b.as_ref()).collect();
        let results = store.apply_group(&refs);
        for (b, r) in batches.iter().zip(&results) {
            if r.is_err() {
                occupancy.forget(&b.0.agent_id);
            }
        }
        let n = batches.len() as u64;
        for ((batch, reply), r) in batches.drain(..).zip(results) {
            pending.push(Pending::Apply(batch.agent_id, reply, r));
        }
        n
    };
    // Hellos are recorded together after the group's batches: they are informational and
    // commute with everything else, and each would otherwise cost a round trip of its own.
    let mut hellos = Vec::new();
    for job in group.drain(..) {
        match job {
            Job::Apply(batch, reply) => {
                batches.push((batch, reply));
                continue;
            }
            Job::RecordAgent(info) => {
                hellos.push(info);
                continue;
            }
            _ => {}
        }
        applied += apply(&mut batches, &mut pending);
        match job {
            Job::Apply(..) | Job::RecordAgent(..) | Job::Stop => {}
            Job::SetModel(entry, reply) => {
                let r = store.set_model_entry(&entry).map(|()| entry);
                pending.push(Pending::SetModel(reply, r));
            }
            Job::RollUp {
                cutoff_unix_ms,
                reply,
            } => {
                let r = if ctx.rollups_paused.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                    // A verification is reading raw batches off this thread.
                    Ok(RollupStats::default())
                } else {
                    store.roll_up(cutoff_unix_ms, ROLLUP_BATCHES_PER_JOB)
                };
                if let Ok(s) = &r
                    && s.batches > 0
                {
                    tracing::info!(
                        batches = s.batches,
                        records = s.records,
                        more = s.more,
                        "rolled raw batches up"
                    );
                }
                pending.push(Pending::RollUp(reply, r));
            }
            // Reads only; the jobs before them are applied, the ones after wait (step 3
            // is proportional to what arrived during step 2, not to the ledger).
            Job::VerifyCut(reply) => {
                let _ = reply.send(store.verify_cut());
            }
            Job::VerifyFinish(scan, reply) => {
                let _ = reply.send(store.verify_finish(*scan));
            }
        }
    }
    applied += apply(&mut batches, &mut pending);
    if !hellos.is_empty()
        && let Err(e) = store.record_agents(&hellos)
    {
        tracing::warn!(agents = hellos.len(), error = %e, "cannot record agents");
    }
    let batches = applied;
    if pending.is_empty() {
        return None;
    }
    if batches > 0
        && let Some(hold) = &ctx.hold_flush
    {
        hold.wait();
    }
    let started = Instant::now();
    let flushed = store.flush();
    metrics
        .flush_seconds
        .observe(started.elapsed().as_secs_f64());
    if batches > 0 {
        metrics.commit_group_batches.observe(batches as f64);
    }
    let failed_writes = pending.iter().filter(|p| p.storage_failure()).count();
    let broken = match flushed {
        Err(e) => Some(Arc::new(e)),
        Ok(()) => pending
            .iter_mut()
            .find(|p| p.storage_failure())
            .and_then(Pending::take_error)
            .map(Arc::new),
    };
    if let Some(why) = &broken {
        tracing::error!(
            error = %why,
            "ledger write failed (is its volume full?): acknowledging nothing until the \
             collector is restarted; agents keep their records"
        );
        metrics
            .ledger_write_errors
            .inc_by(failed_writes.max(1) as u64);
    }
    // A registry change or a newly declared plan is a fact the engine must evaluate now, not
    // at its next periodic pass: only once durable, like everything else it acts on.
    let new_facts = pending.iter().any(|p| match p {
        Pending::SetModel(_, r) => r.is_ok(),
        Pending::Apply(_, _, r) => r.as_ref().is_ok_and(|o| o.plans_declared > 0),
        Pending::RollUp(..) => false,
    });
    if broken.is_none() && new_facts {
        ctx.facts.notify_one();
    }
    // Replies only after the flush: an Ack promises durability. After a failed write
    // nothing in the group is acknowledged, not even what seemed to apply (see
    // `refuse_group`).
    fn outcome<T>(
        broken: &Option<Arc<StoreError>>,
        r: Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match broken {
            None => r,
            Some(why) => Err(StoreError::Broken(why.clone())),
        }
    }
    // The marks move after the flush and before any reply, so a Welcome that follows an
    // Ack names at least what the Ack did, and nothing that is not on disk.
    if broken.is_none() {
        for p in &pending {
            match p {
                Pending::Apply(agent, _, Ok(o)) => ctx.marks.advance(agent, o.acked_through),
                Pending::SetModel(_, Ok(e)) => {
                    touched.borrow_mut().insert(e.model.clone());
                }
                _ => {}
            }
        }
        metrics.mark_models_dirty(touched.borrow().iter().map(String::as_str));
        metrics.mark_runs_active(
            active
                .borrow()
                .iter()
                .map(|(m, r)| (m.as_str(), r.as_str())),
        );
    }
    for p in pending {
        match p {
            Pending::Apply(_, reply, r) => {
                let _ = reply.send(outcome(&broken, r));
            }
            Pending::SetModel(reply, r) => {
                let _ = reply.send(outcome(&broken, r));
            }
            Pending::RollUp(reply, r) => {
                if let Some(reply) = reply {
                    let _ = reply.send(outcome(&broken, r));
                }
            }
        }
    }
    broken
}

/// Quarantines, before they are applied, new records that would take their GPU past its
/// ceiling together with the records they overlap ([`crate::occupancy`]), or start a run
/// beyond the agent's hourly allowance ([`crate::newruns`]). Bounded work: a few segments
/// and one key lookup per record, and for an agent not seen since the start, its last
/// [`REBUILD_BATCHES`] raw batches.
fn screen(
    batches: &mut [(Box<IncomingBatch>, Reply<ApplyOutcome>)],
    store: &dyn LedgerStore,
    occupancy: &mut Occupancy,
    new_runs: &mut NewRuns,
) {
    let now = crate::now_unix_ms();
    // Marks as batches earlier in this group leave them (the store has not seen them yet),
    // and runs they start.
    let mut agents: Vec<String> = batches.iter().map(|(b, _)| b.agent_id.clone()).collect();
    agents.sort_unstable();
    agents.dedup();
    // One read for the group; if it fails, each batch reads its own below (and fails the
    // same way when applied).
    let mut marks = store.high_water_marks_of(&agents).unwrap_or_default();
    // The same for the recent batches of agents new to the overlap screen.
    let unknown: Vec<String> = agents
        .iter()
        .filter(|a| !occupancy.knows(a))
        .cloned()
        .collect();
    let mut recent = if unknown.is_empty() {
        Default::default()
    } else {
        store
            .recent_records_of(&unknown, REBUILD_BATCHES)
            .unwrap_or_default()
    };
    let mut started: std::collections::HashSet<(String, String)> = Default::default();
    let reject = |cr: &mut crate::ledger::CheckedRecord, r: RejectReason, detail: String| {
        cr.rejection = Some(crate::ledger::RecordRejection {
            reason: r.as_str().into(),
            detail,
        });
        cr.declaration = None;
    };
    for (b, _) in batches.iter_mut() {
        let agent = b.agent_id.clone();
        let hwm = match marks.get(&agent) {
            Some(&h) => h,
            None => match store.high_water_mark(&agent) {
                Ok(h) => h,
                // The batch will fail the same way when applied; nothing to screen.
                Err(_) => continue,
            },
        };
        let seqs: Vec<u64> = b.records.iter().map(|r| r.record.seq).collect();
        if !crate::ledger::sequence::well_formed(&seqs) {
            continue; // refused whole when applied
        }
        let crate::ledger::sequence::SeqPlan::Apply { start, end, .. } =
            crate::ledger::sequence::plan(hwm, &seqs)
        else {
            continue;
        };
        if !occupancy.knows(&agent) {
            let read = match recent.remove(&agent) {
                Some(r) => Ok(r),
                None => store.recent_records(&agent, REBUILD_BATCHES),
            };
            match read {
                Ok((recent, truncated)) => occupancy.rebuild(&agent, &recent, truncated),
                Err(e) => {
                    tracing::warn!(%agent, error = %e, "cannot read recent records");
                    continue;
                }
            }
        }
        for cr in &mut b.records[start..end] {
            if cr.rejection.is_some() {
                continue;
            }
            if let crate::ledger::aggregate::Attribution::Run { model, run } =
                crate::ledger::aggregate::attribution(&cr.record)
            {
                let key = (model.to_string(), run.to_string());
                let new = !started.contains(&key) && !store.run_exists(model, run).unwrap_or(true);
                if new {
                    if !new_runs.allow(&agent, now) {
                        let detail = format!(
                            "agent {agent:?} started more than {} new runs in the last hour \
                             (--new-runs-per-agent-per-hour); run {run:?} of model {model:?} \
                             waits in quarantine",
                            new_runs.per_hour()
                        );
                        reject(cr, RejectReason::TooManyNewRuns, detail);
                        continue;
                    }
                    started.insert(key);
                }
            }
            if let Err(why) = occupancy.admit(&agent, &cr.record, cr.max_flop_per_s) {
                reject(cr, RejectReason::GpuOverlap, why.to_string());
            }
        }
        marks.insert(agent, seqs[end - 1]);
    }
}
