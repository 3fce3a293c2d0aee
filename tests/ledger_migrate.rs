//! `flopmeter ledger migrate` as an operator runs it: the demo's sled ledger (`flopmeter demo
//! --data-dir`) copied by the real binary into a fresh database of the test binary's real
//! PostgreSQL (and into memory, `--dry-run`), the checks it prints on the target, the copy
//! read back, and its refusals (no ledger at --from, a collector still running on it, a
//! database that holds anything). And the offline tools on `--store`, which read a schema
//! and never change it.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::OnceLock;

use flopmeter_collector::compliance::ComplianceStore;
use flopmeter_collector::ledger::LedgerStore;
use flopmeter_collector::ledger::pg_store::PgStore;
use flopmeter_collector::ledger::sled_store::SledStore;

use crate::support::{collector, flopmeter, scratch};

/// The demo's ledger, built once per test binary; each test copies it (sled lets one
/// process at a time open a ledger, and tests run in parallel).
fn demo_ledger() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch("ledger-migrate-demo").join("data");
        let out = flopmeter(&["demo", "--fast", "--data-dir", dir.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

/// A copy of the demo's ledger in `target/tmp/<name>`.
pub fn demo_copy(name: &str) -> PathBuf {
    let dir = scratch(name).join("data");
    let st = std::process::Command::new("cp")
        .arg("-r")
        .arg(demo_ledger())
        .arg(&dir)
        .status()
        .unwrap();
    assert!(st.success());
    dir
}

/// Runs `flopmeter ledger migrate` with `args`, capturing both outputs.
pub fn migrate(args: &[&str]) -> (Output, String, String) {
    let mut all = vec!["ledger", "migrate"];
    all.extend_from_slice(args);
    let out = flopmeter(&all).stdout(Stdio::piped()).output().unwrap();
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    (out, o, e)
}

/// What every successful migration prints: both verifications passed, every model equal.
pub fn assert_migrated(out: &Output, stdout: &str, stderr: &str) {
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("; 0 mismatches"), "{stdout}");
    assert!(stdout.contains("audit chain OK"), "{stdout}");
    assert!(!stdout.contains("DIFFERENT"), "{stdout}");
    for model in ["atlas-70b", "frontier-400b", "helper-8b-ft"] {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(model))
            .unwrap_or_else(|| panic!("no line for {model}:\n{stdout}"));
        let figures: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(figures.len(), 4, "{line}");
        assert_eq!(figures[1], figures[2], "{line}");
        assert!(figures[1].parse::<u128>().unwrap() > 0, "{line}");
        assert_eq!(figures[3], "equal", "{line}");
    }
    assert!(
        stdout.contains("high-water marks: 4 agents, equal"),
        "{stdout}"
    );
    assert!(stdout.contains("migration complete"), "{stdout}");
    // Progress reached every item the source counted.
    let last = stderr
        .lines()
        .rev()
        .find(|l| l.contains("items"))
        .unwrap_or("");
    assert!(last.contains("(100.0%)"), "{stderr}");
}

#[test]
fn a_dry_run_copies_the_demo_ledger_and_proves_it_equal() {
    let dir = demo_copy("ledger-migrate-dry-run");
    let (out, stdout, stderr) = migrate(&["--from", dir.to_str().unwrap(), "--dry-run"]);
    assert_migrated(&out, &stdout, &stderr);
    assert!(stdout.contains("copied "), "{stdout}");
}

#[test]
fn a_directory_without_a_ledger_or_with_a_running_collector_is_refused() {
    let empty = scratch("ledger-migrate-empty");
    let (out, _, stderr) = migrate(&["--from", empty.to_str().unwrap(), "--dry-run"]);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no ledger in"), "{stderr}");
    assert!(stderr.contains("check --from"), "{stderr}");
    assert!(!empty.join("db").exists(), "nothing created at --from");

    let dir = demo_copy("ledger-migrate-running");
    let mut running = collector(&dir).start();
    let (out, _, stderr) = migrate(&["--from", dir.to_str().unwrap(), "--dry-run"]);
    running.proc.terminate();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("a collector is running on it. Stop it first"),
        "{stderr}"
    );
}

/// A fresh database on the test binary's PostgreSQL, and its DSN.
fn fresh_dsn() -> String {
    flopmeter_pg::test_support::shared()
        .fresh_database()
        .socket_dsn()
}

fn open_pg(dsn: &str) -> PgStore {
    let db = flopmeter_pg::Database::connect(flopmeter_pg::Options::new(
        flopmeter_pg::Dsn::parse(dsn).unwrap(),
    ))
    .unwrap();
    PgStore::open(db).unwrap()
}

#[test]
fn the_demo_ledger_migrates_into_postgres_with_equal_totals_and_a_verified_chain() {
    let dir = demo_copy("ledger-migrate-postgres");
    let dsn = fresh_dsn();
    let (out, stdout, stderr) = migrate(&["--from", dir.to_str().unwrap(), "--to", &dsn]);
    assert_migrated(&out, &stdout, &stderr);
    println!("{stderr}{stdout}");

    // A re-run onto the migrated database completes only when told to, and changes
    // nothing: every item is written again with the same value.
    let (out, _, stderr) = migrate(&["--from", dir.to_str().unwrap(), "--to", &dsn]);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the target is not empty"), "{stderr}");
    let (out, stdout, stderr) = migrate(&[
        "--from",
        dir.to_str().unwrap(),
        "--to",
        &dsn,
        "--allow-non-empty",
    ]);
    assert_migrated(&out, &stdout, &stderr);

    // Read back independently of the command's own checks.
    let source = SledStore::open(&dir).unwrap();
    let target = open_pg(&dsn);
    let models = source.model_names().unwrap();
    assert_eq!(target.model_names().unwrap(), models);
    for m in &models {
        assert_eq!(
            target.model_aggregate(m).unwrap(),
            source.model_aggregate(m).unwrap(),
            "{m}"
        );
        assert_eq!(target.runs(m).unwrap(), source.runs(m).unwrap(), "{m}");
    }
    assert_eq!(
        target.high_water_marks().unwrap(),
        source.high_water_marks().unwrap()
    );
    assert_eq!(target.alerts().unwrap(), source.alerts().unwrap());
    assert_eq!(target.clocks().unwrap(), source.clocks().unwrap());
    assert_eq!(target.outbox().unwrap(), source.outbox().unwrap());
    assert_eq!(
        target.audit_entries().unwrap(),
        source.audit_entries().unwrap()
    );
    assert_eq!(
        ComplianceStore::head(&target).unwrap(),
        ComplianceStore::head(&source).unwrap()
    );
    assert!(target.chain_status().unwrap().ok());
    assert!(target.verify().unwrap().ok());
}

#[test]
fn a_database_that_holds_anything_is_refused_and_nothing_is_written() {
    let dir = demo_copy("ledger-migrate-non-empty");
    let dsn = fresh_dsn();
    let target = open_pg(&dsn);
    let mut entry = flopmeter_collector::ledger::ModelEntry {
        model: "already-here".into(),
        updated_unix_ms: 1_800_000_000_000,
        ..Default::default()
    };
    entry.updated_by = Some("alice".into());
    target.set_model_entry(&entry).unwrap();
    let before = (
        target.model_names().unwrap(),
        target.audit_entries().unwrap(),
        ComplianceStore::head(&target).unwrap(),
    );

    let (out, stdout, stderr) = migrate(&["--from", dir.to_str().unwrap(), "--to", &dsn]);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the target is not empty"), "{stderr}");
    assert!(stderr.contains("nothing was written"), "{stderr}");
    assert!(stderr.contains("new, empty database"), "{stderr}");
    assert!(stderr.contains("--allow-non-empty"), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    let after = (
        target.model_names().unwrap(),
        target.audit_entries().unwrap(),
        ComplianceStore::head(&target).unwrap(),
    );
    assert_eq!(after, before);
    assert_eq!(after.0, vec!["already-here".to_string()]);
}

/// `ledger verify --store` and `audit verify --store` are offline tools, run beside collectors
/// that may be older: they refuse a database without the schema, or with an older one, and
/// create or migrate nothing.
#[test]
fn offline_tools_on_a_store_never_create_or_migrate_the_schema() {
    let dsn = fresh_dsn();
    let tables = |dsn: &str| -> Vec<String> {
        let db = flopmeter_pg::Database::connect(flopmeter_pg::Options::new(
            flopmeter_pg::Dsn::parse(dsn).unwrap(),
        ))
        .unwrap();
        db.run(|conn| async move {
            let rows = conn
                .query(
                    "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' \
                     ORDER BY 1",
                    &[],
                )
                .await?;
            Ok::<_, flopmeter_pg::PgError>(rows.iter().map(|r| r.get(0)).collect())
        })
        .unwrap()
    };
    let run = |args: &[&str]| {
        let out = flopmeter(args).stdout(Stdio::piped()).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for tool in [&["ledger", "verify"][..], &["audit", "verify"][..]] {
        let (code, stderr) = run(&[tool, &["--store", &dsn]].concat());
        assert_eq!(code, Some(1), "{tool:?}: {stderr}");
        assert!(stderr.contains("no flopmeter schema"), "{tool:?}: {stderr}");
        assert!(stderr.contains("DSN's database name"), "{tool:?}: {stderr}");
    }
    assert!(tables(&dsn).is_empty(), "{:?}", tables(&dsn));

    // An older collector's schema (version 1 of 3).
    let db = flopmeter_pg::Database::connect(flopmeter_pg::Options::new(
        flopmeter_pg::Dsn::parse(&dsn).unwrap(),
    ))
    .unwrap();
    flopmeter_pg::migrate::apply(
        &db,
        &flopmeter_pg::MIGRATIONS[..1],
        flopmeter_pg::migrate::DEFAULT_TIMEOUT,
    )
    .unwrap();
    let before = tables(&dsn);
    for tool in [&["ledger", "verify"][..], &["audit", "verify"][..]] {
        let (code, stderr) = run(&[tool, &["--store", &dsn]].concat());
        assert_eq!(code, Some(1), "{tool:?}: {stderr}");
        assert!(
            stderr.contains("the database schema is version 1, this flopmeter knows 3"),
            "{tool:?}: {stderr}"
        );
    }
    assert_eq!(tables(&dsn), before, "nothing migrated");

    // Once a collector of this version migrated it, the tools read it.
    drop(open_pg(&dsn));
    let (code, stderr) = run(&["audit", "verify", "--store", &dsn]);
    assert_eq!(code, Some(0), "{stderr}");
}
