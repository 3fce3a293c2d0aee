//! Damaged state on disk, with the real binary. A damaged ledger: `flopmeter collector`
//! refuses to start (exit 1) with a message naming the data dir, what is wrong and the
//! recovery path; `flopmeter ledger verify --data-dir` lists what is damaged. Damage: a
//! garbage aggregate or high-water-mark value written through sled, the sled `db` file
//! truncated, garbage bytes in its middle. A damaged spool: `flopmeter agent` refuses to
//! start with the spool's recovery path.

// These tests damage stores behind the programs' backs, so they open sled directly.
#![allow(clippy::disallowed_methods)]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use flopmeter_collector::ledger::sled_store::SledStore;
use flopmeter_collector::ledger::{CheckedRecord, IncomingBatch, LedgerStore, keys};
use flopmeter_proto::v1::{IntervalRecord, WorkloadIdentity};

const NOW: i64 = 1_780_000_000_000;

/// A small ledger: two agents, a few records each, flushed; the collector stopped.
fn ledger(dir: &Path) {
    let s = SledStore::open(dir).unwrap();
    for agent in ["agent-a", "agent-b"] {
        let records = (1..=5)
            .map(|seq| {
                let record = IntervalRecord {
                    seq,
                    start_unix_ms: NOW - 10_000 * (6 - seq as i64),
                    end_unix_ms: NOW - 10_000 * (5 - seq as i64),
                    gpu_uuid: "GPU-1".into(),
                    gpu_type: "h100-sxm".into(),
                    flop_low: 1_000,
                    flop_central: 2_000,
                    flop_high: 3_000,
                    gpu_ms: 10_000,
                    identity: Some(WorkloadIdentity {
                        model: "acme".into(),
                        run: "run-1".into(),
                        ..WorkloadIdentity::default()
                    }),
                    ..IntervalRecord::default()
                };
                CheckedRecord::new(record, None)
            })
            .collect();
        s.apply_batch(&IncomingBatch {
            agent_id: agent.into(),
            node: "node-1".into(),
            received_unix_ms: NOW,
            records,
        })
        .unwrap();
    }
    s.flush().unwrap();
}

/// The binary with stdout captured as well.
fn flopmeter(args: &[&str]) -> Command {
    let mut c = crate::support::flopmeter(args);
    c.stdout(Stdio::piped());
    c
}

/// Starts the collector on `dir` and waits until it either exits (a refusal) or serves (its
/// `--ready-file` appears, written once the ledger is open: the damage went unnoticed or sled
/// recovered); a serving collector is killed, and its status is `None`.
fn collector_on(dir: &Path) -> Output {
    let d = dir.to_str().unwrap();
    let ready = tempfile::tempdir().unwrap();
    let ready_file = ready.path().join("ready.json");
    let mut child = flopmeter(&[
        "collector",
        "--data-dir",
        d,
        "--listen",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
        "--ready-file",
        ready_file.to_str().unwrap(),
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // Bounded only so that a broken build cannot hang the suite.
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if ready_file.exists() || Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The refusal: exit 1, the data dir, what is wrong, both recovery paths.
fn assert_refused(o: &Output, dir: &Path, what: &str) {
    let err = text(&o.stderr);
    eprintln!("collector on {}: {err}", dir.display());
    assert_eq!(o.status.code(), Some(1), "collector did not refuse: {err}");
    let d = dir.display().to_string();
    assert!(
        err.contains(&format!("the ledger in {d} is damaged")),
        "{err}"
    );
    assert!(err.contains(what), "{err}");
    assert!(err.contains(&format!("restore {d} from a backup")), "{err}");
    assert!(
        err.contains(&format!("flopmeter ledger verify --data-dir {d}")),
        "{err}"
    );
}

fn tamper(dir: &Path, tree: &str, key: &[u8], value: &[u8]) {
    let db = sled::Config::new().path(dir).open().unwrap();
    db.open_tree(tree).unwrap().insert(key, value).unwrap();
    db.flush().unwrap();
}

#[test]
fn a_garbage_aggregate_is_refused_at_start_and_listed_by_verify() {
    let dir = tempfile::tempdir().unwrap();
    ledger(dir.path());
    tamper(
        dir.path(),
        "run_agg",
        &keys::join(&["acme", "run-1"]),
        b"{\"stages\": garbage",
    );
    let o = collector_on(dir.path());
    assert_refused(
        &o,
        dir.path(),
        "run_agg value at key \"acme/run-1\" does not decode",
    );

    let d = dir.path().to_str().unwrap();
    let o = flopmeter(&["ledger", "verify", "--data-dir", d])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("DAMAGED run_agg value at key \"acme/run-1\" does not decode"),
        "{}",
        text(&o.stdout)
    );
    let err = text(&o.stderr);
    assert!(
        err.contains(&format!("the ledger in {d} has 1 damaged value(s)")),
        "{err}"
    );
    assert!(err.contains("restore"), "{err}");
}

#[test]
fn a_garbage_high_water_mark_and_raw_batch_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    ledger(dir.path());
    tamper(dir.path(), "hwm", b"agent-a", b"\x01\x02\x03");
    let o = collector_on(dir.path());
    assert_refused(
        &o,
        dir.path(),
        "hwm value at key \"agent-a\" does not decode",
    );

    // A raw batch is not read at start (it is the bulk), but verify finds it.
    let dir = tempfile::tempdir().unwrap();
    ledger(dir.path());
    let raw_key = {
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        db.open_tree("raw")
            .unwrap()
            .iter()
            .keys()
            .next()
            .unwrap()
            .unwrap()
    };
    tamper(dir.path(), "raw", &raw_key, b"\xff\xff\xff\xff");
    let d = dir.path().to_str().unwrap();
    let o = flopmeter(&["ledger", "verify", "--data-dir", d])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("DAMAGED raw value at key"),
        "{}",
        text(&o.stdout)
    );
}

#[test]
fn verify_refuses_a_directory_without_a_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("typo");
    let o = flopmeter(&["ledger", "verify", "--data-dir", missing.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("no ledger in"),
        "{}",
        text(&o.stderr)
    );
    assert!(!missing.exists(), "verify must not create a ledger");
}

/// Every truncation or overwrite of the `db` file: the collector either refuses with the
/// message, or (sled recovered a consistent prefix of its log) starts; it never panics.
#[test]
fn a_truncated_or_overwritten_db_file_never_panics_the_collector() {
    let pristine = tempfile::tempdir().unwrap();
    ledger(pristine.path());
    let len = std::fs::metadata(pristine.path().join("db")).unwrap().len();
    let mut refused = 0;
    let mut cases = Vec::new();
    for cut in [0, 1, 100, len / 2] {
        cases.push((format!("truncated to {cut}"), Some(cut), None));
    }
    for at in [len / 3, len / 2] {
        cases.push((format!("overwritten at {at}"), None, Some(at)));
    }
    for (what, cut, at) in cases {
        let work = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(pristine.path()).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                std::fs::copy(e.path(), work.path().join(e.file_name())).unwrap();
            }
        }
        let db = work.path().join("db");
        if let Some(cut) = cut {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&db)
                .unwrap()
                .set_len(cut)
                .unwrap();
        }
        if let Some(at) = at {
            let mut bytes = std::fs::read(&db).unwrap();
            let end = (at as usize + 512).min(bytes.len());
            for b in &mut bytes[at as usize..end] {
                *b = 0xa5;
            }
            std::fs::write(&db, bytes).unwrap();
        }
        let o = collector_on(work.path());
        let err = text(&o.stderr);
        assert!(!err.contains("panicked"), "{what}: {err}");
        let must_refuse = cut == Some(0) || cut == Some(len / 2);
        assert!(
            !must_refuse || o.status.code() == Some(1),
            "{what}: a ledger that lost its records was served: {err}"
        );
        match o.status.code() {
            Some(1) => {
                assert_refused(&o, work.path(), "");
                refused += 1;
            }
            // Killed after serving: sled recovered a prefix. Then verify must agree with it.
            None => {
                let d = work.path().to_str().unwrap();
                let v = flopmeter(&["ledger", "verify", "--data-dir", d])
                    .output()
                    .unwrap();
                assert!(
                    !text(&v.stderr).contains("panicked"),
                    "{what}: {}",
                    text(&v.stderr)
                );
                eprintln!("{what}: sled recovered; verify: {}", text(&v.stdout));
            }
            other => panic!("{what}: exit {other:?}: {err}"),
        }
    }
    eprintln!("{refused} of 6 damaged ledgers refused");
}

#[test]
fn a_truncated_ledger_is_refused_by_its_guard_and_verify_says_so() {
    let dir = tempfile::tempdir().unwrap();
    ledger(dir.path());
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("db"))
        .unwrap()
        .set_len(0)
        .unwrap();
    let o = collector_on(dir.path());
    assert_refused(
        &o,
        dir.path(),
        "its high-water marks sum to 0 over 0 agent(s), but had reached 10 over 2",
    );
    let d = dir.path().to_str().unwrap();
    let o = flopmeter(&["ledger", "verify", "--data-dir", d])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("DAMAGED ledger: its high-water marks sum to 0"),
        "{}",
        text(&o.stdout)
    );
}

#[test]
fn a_truncated_spool_stops_the_agent_with_the_recovery_path() {
    use flopmeter_agent::spool::{Spool, SpoolOptions};
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("agent");
    let spool = spool_dir.join("spool");
    {
        let s = Spool::open(&spool, SpoolOptions::default()).unwrap();
        let mut recs: Vec<IntervalRecord> = (0..10).map(|_| IntervalRecord::default()).collect();
        s.append(&mut recs).unwrap();
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(spool.join("db"))
        .unwrap()
        .set_len(0)
        .unwrap();
    let w = dir.path().join("workload.toml");
    std::fs::write(&w, "gpu = \"h100-sxm\"\ncount = 1\ntensor_util = 0.4\n").unwrap();
    let mut child = flopmeter(&["agent", "--collector", "http://127.0.0.1:1", "--spool-dir"])
        .arg(&spool_dir)
        .arg("--simulate")
        .arg(&w)
        .args(["--metrics-addr", "off", "--kube", "off"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded only so that an agent that (wrongly) runs cannot hang the suite.
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let o = child.wait_with_output().unwrap();
    let err = text(&o.stderr);
    eprintln!("agent: {err}");
    assert_eq!(o.status.code(), Some(1), "{err}");
    let p = spool.display().to_string();
    for want in [
        format!("the spool at {p} cannot be opened"),
        "had assigned up to 10".to_string(),
        format!("mv {p} {p}.damaged"),
        "high-water mark".to_string(),
    ] {
        assert!(err.contains(&want), "missing {want:?} in: {err}");
    }
}
