//! `flopmeter ledger migrate`: copy a stopped collector's sled ledger, with its compliance
//! state, into another store (PostgreSQL), then check the copy on the target itself.
//!
//! The copy is `flopmeter_collector::storage::transfer::migrate` (verbatim, chunked, the
//! audit head first and its entries last); this module opens both sides, shows progress on
//! stderr and proves the result: `ledger verify` and `audit verify` run on the target, and
//! every model's totals, the high-water marks and the audit head are compared with the
//! source's.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flopmeter_collector::compliance::ComplianceStore;
use flopmeter_collector::ledger::memory_store::MemoryStore;
use flopmeter_collector::ledger::pg_store::PgStore;
use flopmeter_collector::ledger::sled_store::{DEFAULT_CACHE_BYTES, SledStore};
use flopmeter_collector::ledger::{LedgerStore, StoreError};
use flopmeter_collector::storage::transfer::{self, Import, Progress};
use serde::Serialize;

/// Options of `flopmeter ledger migrate`.
#[derive(Debug, clap::Args, Serialize)]
#[serde(rename_all = "kebab-case")]
#[command(after_help = "\
What is copied, verbatim: every raw batch and hourly rollup, the run, model and unattributed
aggregates, the agent and node sets, run declarations, quarantined records, high-water marks,
the model registry and plan histories, agents, the stage policy, and the compliance state:
clocks, alerts, the outbox (delivered items stay delivered), the engine's metadata and the
audit chain with its head. Nothing is recomputed: the audit chain is hash-chained and cannot
be re-created, so the target holds the very entries the source does.

Before: stop the collector on --from (a migration copies a ledger no one writes; a running
collector holds the directory and is refused). The target must be empty: a new database.

Progress goes to stderr: items copied, items per second and percent, every second on a
terminal, every 10 seconds otherwise.

At the end, on the TARGET: `ledger verify` (every aggregate recomputed from the raw batches and
rollups) and `audit verify` (every link of the chain, up to its head), both printed; then each
model's totals, source beside target, marked equal or DIFFERENT, and the high-water marks and
audit heads compared. The exit code is 0 only if both verifications pass and everything is
equal.

If a migration stops half-way (a lost connection, a full disk), the target's audit head
accounts for entries it does not hold yet, so `audit verify` fails on it. Run the same command
again with --allow-non-empty: it copies everything again over what is there, and completes it.

Examples:
  flopmeter ledger migrate --from /var/lib/flopmeter/collector \\
      --to 'postgres://flopmeter@db.example/flopmeter?sslmode=verify-full'
  FLOPMETER_STORE='postgres://flopmeter:secret@db.example/flopmeter' \\
      flopmeter ledger migrate --from /var/lib/flopmeter/collector   # the password off argv
  flopmeter ledger migrate --from /var/lib/flopmeter/collector --dry-run
      # copy into memory, verify and compare; nothing is kept")]
pub struct MigrateArgs {
    /// The sled ledger directory to copy (the collector's --data-dir; stop the collector
    /// first). It is only read.
    #[arg(long, env = "FLOPMETER_LEDGER_DIR", value_name = "DIR")]
    pub from: PathBuf,

    /// The PostgreSQL database to copy into, as a libpq URL
    /// (`postgres://user:password@host:port/database?sslmode=verify-full&sslrootcert=FILE`;
    /// a password containing ?, @, / or # percent-encoded). It must be empty. With a
    /// password, prefer the environment variable: a command line is visible to every user
    /// of the machine.
    #[arg(
        long,
        env = "FLOPMETER_STORE",
        hide_env_values = true,
        value_name = "postgres://...",
        required_unless_present = "dry_run"
    )]
    #[serde(skip_serializing)]
    pub to: Option<String>,

    /// Copy into a target that already holds something: to complete a migration that
    /// stopped half-way. Every item is written again over what is there; what the target
    /// holds and the source does not stays, and the checks at the end show it.
    #[arg(long)]
    pub allow_non_empty: bool,

    /// Copy into memory instead of a database (--to is not used), run the checks and keep
    /// nothing: whether --from will migrate cleanly, before a database exists. Needs memory
    /// for the whole ledger.
    #[arg(long)]
    pub dry_run: bool,
}

/// A store the copy goes into, read back for the checks.
pub trait Target: Import + LedgerStore + ComplianceStore {}

impl<T: Import + LedgerStore + ComplianceStore> Target for T {}

/// The checks on the target found a difference or a failure.
#[derive(Debug, thiserror::Error)]
#[error(
    "the migration's checks failed ({0}): the target is not a faithful copy; keep using the \
     source, and see the lines above"
)]
pub struct MigrationFailed(pub String);

/// Opens the sled ledger to copy, refusing a directory that holds none.
fn open_source(dir: &Path) -> anyhow::Result<SledStore> {
    // sled creates what is missing: without this, a mistyped --from would copy a new, empty
    // ledger and report success.
    if !dir.join("db").is_file() {
        anyhow::bail!(
            "no ledger in {}: it has no sled `db` file (check --from: the collector's \
             --data-dir)",
            dir.display()
        );
    }
    // Unchecked: a collector's start moves the truncation guard, and the source is only
    // read. Its checks are made here instead: the guard below, and every value decoded by
    // the export (one that does not is an error naming it).
    let store = match SledStore::open_unchecked(dir, DEFAULT_CACHE_BYTES) {
        Ok(s) => s,
        Err(StoreError::Locked { .. }) => anyhow::bail!(
            "the ledger in {} is in use: a collector is running on it. Stop it first: a \
             migration copies a ledger no one writes",
            dir.display()
        ),
        Err(e) => return Err(e.into()),
    };
    store.check_guard(dir)?;
    Ok(store)
}

/// Opens the PostgreSQL target (applying the schema's migrations, as a collector would).
fn open_postgres(dsn: &str) -> anyhow::Result<Box<dyn Target>> {
    let dsn = flopmeter_pg::Dsn::parse(dsn).map_err(|e| super::InvalidInput::flag("to", e))?;
    let db = flopmeter_pg::Database::connect(flopmeter_pg::Options::new(dsn))?;
    Ok(Box::new(PgStore::open(db)?))
}

/// Progress on stderr, throttled: every second on a terminal, every 10 s otherwise.
struct Reporter {
    started: Instant,
    last: Instant,
    every: Duration,
    terminal: bool,
}

impl Reporter {
    fn new() -> Reporter {
        let terminal = std::io::stderr().is_terminal();
        let now = Instant::now();
        Reporter {
            started: now,
            last: now,
            every: Duration::from_secs(if terminal { 1 } else { 10 }),
            terminal,
        }
    }

    fn line(&self, p: Progress) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let pct = if p.total == 0 {
            100.0
        } else {
            (p.done as f64 * 100.0 / p.total as f64).min(100.0)
        };
        format!(
            "migrate: {} of {} items ({pct:.1}%), {:.0} items/s",
            p.done,
            p.total,
            p.done as f64 / secs
        )
    }

    fn report(&mut self, p: Progress) {
        if self.last.elapsed() < self.every {
            return;
        }
        self.last = Instant::now();
        let mut err = std::io::stderr().lock();
        // A terminal's line is rewritten in place; a log gets one line per report.
        let _ = if self.terminal {
            write!(err, "\r{}\x1b[K", self.line(p))
        } else {
            writeln!(err, "{}", self.line(p))
        };
    }

    fn done(&self, p: Progress) {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(
            err,
            "{}{} in {:.1} s",
            if self.terminal { "\r" } else { "" },
            self.line(p),
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// Runs `flopmeter ledger migrate`.
pub fn run(args: &MigrateArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let source = open_source(&args.from)?;
    let target: Box<dyn Target> = match (&args.to, args.dry_run) {
        (_, true) => Box::new(MemoryStore::new()),
        (Some(dsn), false) => open_postgres(dsn)?,
        (None, false) => anyhow::bail!("--to is required (or --dry-run)"),
    };
    let mut reporter = Reporter::new();
    let mut last = Progress { done: 0, total: 0 };
    let counts = transfer::migrate(&source, target.as_ref(), args.allow_non_empty, |p| {
        last = p;
        reporter.report(p);
    })?;
    reporter.done(last);
    writeln!(out, "copied {} items: {counts}", counts.total())?;
    check(&source, target.as_ref(), out)
}

/// The checks on the target, printed; an error if any fails.
fn check(source: &SledStore, target: &dyn Target, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut failed = Vec::new();

    let report = target.verify()?;
    writeln!(out, "ledger verify on the target: {}", report.summary())?;
    for m in &report.mismatches {
        writeln!(out, "  MISMATCH {m}")?;
    }
    if !report.ok() {
        failed.push("ledger verify");
    }

    let chain = target.chain_status()?;
    match &chain.broken {
        None => writeln!(
            out,
            "audit verify on the target: audit chain OK: {} entries, every link verified",
            chain.entries
        )?,
        Some(b) => {
            writeln!(
                out,
                "audit verify on the target: audit chain BROKEN at entry {}: {}",
                b.index, b.reason
            )?;
            failed.push("audit verify");
        }
    }

    let policy = source.stage_policy()?.unwrap_or_default();
    writeln!(
        out,
        "model totals (counted FLOP, central; every stage and figure compared):"
    )?;
    let mut models = source.model_names()?;
    for m in target.model_names()? {
        if !models.contains(&m) {
            models.push(m);
        }
    }
    let figure = |a: &Option<flopmeter_collector::ledger::Aggregate>| {
        a.as_ref()
            .map_or("-".to_string(), |a| a.counted(&policy).central.to_string())
    };
    let mut rows = Vec::new();
    for m in &models {
        let (s, t) = (source.model_aggregate(m)?, target.model_aggregate(m)?);
        let equal = s == t && source.runs(m)? == target.runs(m)?;
        rows.push((m.as_str(), figure(&s), figure(&t), equal));
    }
    let w_model = rows.iter().map(|r| r.0.len()).chain([5]).max().unwrap_or(5);
    let w_fig = rows
        .iter()
        .map(|r| r.1.len().max(r.2.len()))
        .chain([6])
        .max()
        .unwrap_or(6);
    writeln!(
        out,
        "  {:<w_model$}  {:>w_fig$}  {:>w_fig$}",
        "model", "source", "target"
    )?;
    let mut models_differ = false;
    for (m, s, t, equal) in &rows {
        models_differ |= !equal;
        writeln!(
            out,
            "  {m:<w_model$}  {s:>w_fig$}  {t:>w_fig$}  {}",
            if *equal { "equal" } else { "DIFFERENT" }
        )?;
    }
    if models_differ {
        failed.push("model totals");
    }

    let marks_equal = source.high_water_marks()? == target.high_water_marks()?;
    writeln!(
        out,
        "high-water marks: {} agents, {}",
        source.high_water_marks()?.len(),
        if marks_equal { "equal" } else { "DIFFERENT" }
    )?;
    if !marks_equal {
        failed.push("high-water marks");
    }
    let (sh, th) = (ComplianceStore::head(source)?, target.head()?);
    writeln!(
        out,
        "audit head: {} entries, {}",
        sh.next_seq,
        if sh == th { "equal" } else { "DIFFERENT" }
    )?;
    if sh != th {
        failed.push("audit head");
    }
    if failed.is_empty() {
        writeln!(
            out,
            "migration complete: the target verifies and equals the source"
        )?;
        Ok(())
    } else {
        Err(MigrationFailed(failed.join(", ")).into())
    }
}
