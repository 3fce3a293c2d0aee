//! `flopmeter ledger migrate` as an operator runs it: the demo's sled ledger (`flopmeter demo
//! --data-dir`) copied by the real binary, the checks it prints on the target, and its
//! refusals (no ledger at --from, a collector still running on it).

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::OnceLock;

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
