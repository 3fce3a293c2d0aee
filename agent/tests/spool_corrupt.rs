//! A damaged spool on disk: truncated or overwritten sled files, garbage record values, a
//! lost counter, a spool path that is a file or cannot be created. The agent never panics;
//! a spool sled cannot open is refused with a message naming the recovery; a damaged record
//! is quarantined and replaced by a placeholder under its number (so the stream goes on and
//! the collector rejects it visibly); sequence numbers never repeat once the collector's
//! Welcome has been applied.

// These tests damage the spool behind the agent's back, so they open sled directly.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};

use flopmeter_agent::spool::{CORRUPT_PLACEHOLDER_UUID, Spool, SpoolError, SpoolOptions};
use flopmeter_proto::v1::IntervalRecord;

fn rec(flop: u64) -> IntervalRecord {
    IntervalRecord {
        flop_central: flop,
        gpu_uuid: "GPU-corrupt-test".into(),
        ..IntervalRecord::default()
    }
}

fn open(dir: &Path) -> Result<Spool, SpoolError> {
    Spool::open(dir, SpoolOptions::default())
}

fn key(seq: u64) -> Vec<u8> {
    let mut k = vec![b'r'];
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// A spool with records 1..=n, `acked` of them acknowledged; returns the highest number.
fn filled(dir: &Path, n: u64, acked: u64) -> u64 {
    let s = open(dir).unwrap();
    let mut recs: Vec<_> = (1..=n).map(rec).collect();
    s.append(&mut recs).unwrap();
    s.ack(acked).unwrap();
    s.stats().next_seq - 1
}

/// Edits the spool's sled tree directly (the agent stopped), as a damaged disk or a bad
/// tool would.
fn tamper(dir: &Path, f: impl FnOnce(&sled::Db)) {
    let db = sled::Config::new().path(dir).open().unwrap();
    f(&db);
    db.flush().unwrap();
}

/// What the shipper does with a Welcome: everything through the collector's high-water
/// mark is acknowledged and new numbers start above it.
fn welcome(s: &Spool, hwm: u64) {
    s.ack(hwm).unwrap();
    s.raise_next_seq(hwm + 1).unwrap();
}

#[test]
fn an_undecodable_record_is_quarantined_and_replaced_by_a_placeholder() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path(), 6, 1);
    tamper(dir.path(), |db| {
        db.insert(key(3), &b"\xff\xff\xff garbage"[..]).unwrap();
        // Decodes, but as another number: sending it would make the batch malformed.
        let mut wrong = rec(5);
        wrong.seq = 77;
        db.insert(key(5), prost::Message::encode_to_vec(&wrong))
            .unwrap();
        // A key in the record range that is no record key.
        let mut bad = key(4);
        bad.push(0xff);
        db.insert(bad, &b"x"[..]).unwrap();
    });
    let s = open(dir.path()).unwrap();
    let got = s.read_from(0, 100, 1 << 20).unwrap();
    let seqs: Vec<u64> = got.iter().map(|r| r.seq).collect();
    assert_eq!(
        seqs,
        [2, 3, 4, 5, 6],
        "contiguous: the placeholders keep the numbers"
    );
    for r in &got {
        let placeholder = r.gpu_uuid == CORRUPT_PLACEHOLDER_UUID;
        assert_eq!(placeholder, r.seq == 3 || r.seq == 5, "{r:?}");
        if placeholder {
            // The collector rejects it (no interval), so it can never reach a total.
            assert_eq!((r.start_unix_ms, r.end_unix_ms, r.flop_high), (0, 0, 0));
        } else {
            assert_eq!(r.flop_central, r.seq);
        }
    }
    let st = s.stats();
    assert_eq!((st.corrupt_records, st.quarantined, st.records), (3, 3, 5));
    // Reading again finds nothing new to quarantine.
    assert_eq!(s.read_from(0, 100, 1 << 20).unwrap().len(), 5);
    assert_eq!(s.stats().corrupt_records, 3);
    drop(s);

    let s = open(dir.path()).unwrap();
    let st = s.stats();
    assert_eq!((st.corrupt_records, st.quarantined, st.records), (0, 3, 5));
    assert_eq!(
        s.ack(6).unwrap(),
        5,
        "placeholders are acknowledged like records"
    );
    drop(s);
    // The damaged values are kept, as stored, for inspection.
    tamper(dir.path(), |db| {
        let q: Vec<_> = db.scan_prefix(b"q").map(|kv| kv.unwrap()).collect();
        assert_eq!(q.len(), 3);
        assert!(
            q.iter()
                .any(|(k, v)| k.as_ref() == [&b"q"[..], &key(3)].concat()
                    && v.as_ref() == b"\xff\xff\xff garbage")
        );
    });
}

#[test]
fn a_lost_counter_never_reuses_numbers() {
    // Records held: the counter comes back from the highest record.
    let dir = tempfile::tempdir().unwrap();
    let last = filled(dir.path(), 5, 2);
    tamper(dir.path(), |db| {
        db.remove("m/next_seq").unwrap();
    });
    assert_eq!(open(dir.path()).unwrap().stats().next_seq, last + 1);

    // Nothing held: from the acked mark.
    let dir = tempfile::tempdir().unwrap();
    let last = filled(dir.path(), 5, 5);
    tamper(dir.path(), |db| {
        db.remove("m/next_seq").unwrap();
    });
    assert_eq!(open(dir.path()).unwrap().stats().next_seq, last + 1);

    // A counter that is not 8 bytes reads as lost, not as a panic.
    let dir = tempfile::tempdir().unwrap();
    let last = filled(dir.path(), 5, 1);
    tamper(dir.path(), |db| {
        db.insert("m/next_seq", &b"\x01"[..]).unwrap();
        db.insert("m/acked_through", &b"garbage!!"[..]).unwrap();
    });
    assert_eq!(open(dir.path()).unwrap().stats().next_seq, last + 1);
}

#[test]
fn a_wiped_spool_renumbers_above_the_collectors_high_water_mark() {
    // The collector holds 1..=40 from this agent; the spool was moved aside, and the sampler
    // wrote three records before the shipper's first Welcome.
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).unwrap();
    let mut early: Vec<_> = (101..=103).map(rec).collect();
    assert_eq!(s.append(&mut early).unwrap(), Some(1..=3));
    welcome(&s, 40);
    let held = s.read_from(41, 100, 1 << 20).unwrap();
    let got: Vec<(u64, u64)> = held.iter().map(|r| (r.seq, r.flop_central)).collect();
    assert_eq!(
        got,
        [(41, 101), (42, 102), (43, 103)],
        "kept, not taken as acked"
    );
    let mut more = vec![rec(104)];
    assert_eq!(s.append(&mut more).unwrap(), Some(44..=44));
    drop(s);
    let s = open(dir.path()).unwrap();
    assert_eq!((s.stats().records, s.stats().next_seq), (4, 45));
    // A normal Welcome (the mark below the counter) acknowledges as before.
    welcome(&s, 42);
    assert_eq!(s.read_from(0, 100, 1 << 20).unwrap()[0].seq, 43);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            out.extend(files(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out.sort();
    out
}

/// After damage: the spool either refuses to open with the recovery in its message, or
/// opens, reads, takes a Welcome and appends without a panic and without reusing a number.
fn check_damaged(dir: &Path, what: &str, last_assigned: u64) -> &'static str {
    match open(dir) {
        Err(e @ SpoolError::Damaged { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&dir.display().to_string()), "{what}: {msg}");
            assert!(msg.contains("move the directory aside"), "{what}: {msg}");
            assert!(msg.contains("high-water mark"), "{what}: {msg}");
            "refused"
        }
        Err(e) => panic!("{what}: unexpected error kind: {e}"),
        Ok(s) => {
            let held = s.read_from(0, 10_000, 1 << 30).unwrap();
            for w in held.windows(2) {
                assert!(w[0].seq < w[1].seq, "{what}: order");
            }
            // The collector has everything that was ever assigned (the worst case).
            welcome(&s, last_assigned);
            let mut r = vec![rec(1)];
            let got = s.append(&mut r).unwrap().unwrap();
            assert!(*got.start() > last_assigned, "{what}: reused {got:?}");
            "opened"
        }
    }
}

#[test]
fn truncated_or_overwritten_files_are_refused_or_recovered_never_a_panic() {
    let pristine = tempfile::tempdir().unwrap();
    let last = filled(pristine.path(), 200, 50);
    let mut outcomes = Vec::new();
    for file in files(pristine.path()) {
        let rel = file.strip_prefix(pristine.path()).unwrap().to_path_buf();
        let len = std::fs::metadata(&file).unwrap().len();
        let mut cuts: Vec<u64> = vec![0, 1, 7, 8, 64, len / 3, len / 2, len.saturating_sub(1)];
        cuts.retain(|c| *c < len);
        cuts.dedup();
        for cut in cuts {
            let work = tempfile::tempdir().unwrap();
            copy_dir(pristine.path(), work.path());
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(work.path().join(&rel))
                .unwrap();
            f.set_len(cut).unwrap();
            drop(f);
            let what = format!("{} truncated to {cut} of {len}", rel.display());
            outcomes.push((what.clone(), check_damaged(work.path(), &what, last)));
        }
        for at in [len / 4, len / 2, len * 3 / 4] {
            let work = tempfile::tempdir().unwrap();
            copy_dir(pristine.path(), work.path());
            let path = work.path().join(&rel);
            let mut bytes = std::fs::read(&path).unwrap();
            let end = (at as usize + 64).min(bytes.len());
            for b in &mut bytes[at as usize..end] {
                *b ^= 0x5a;
            }
            std::fs::write(&path, bytes).unwrap();
            let what = format!("{} overwritten at {at}..{end}", rel.display());
            outcomes.push((what.clone(), check_damaged(work.path(), &what, last)));
        }
    }
    assert!(outcomes.len() >= 10, "{outcomes:?}");
    // sled opens a truncated log as the prefix it can read; the spool's guard refuses it.
    for (what, o) in &outcomes {
        if what.starts_with("db truncated to 0 ") || what.starts_with("db truncated to 64 ") {
            assert_eq!(*o, "refused", "{what}: {outcomes:#?}");
        }
    }
    eprintln!("{outcomes:#?}");
}

#[test]
fn a_truncated_spool_is_refused_with_what_it_lost() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path(), 20, 5);
    let db = dir.path().join("db");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .unwrap()
        .set_len(0)
        .unwrap();
    let msg = open(dir.path()).unwrap_err().to_string();
    assert!(
        msg.contains("had assigned up to 20") && msg.contains("truncated"),
        "{msg}"
    );
    assert!(msg.contains("move the directory aside"), "{msg}");
}

#[test]
fn a_spool_path_that_is_a_file_or_cannot_be_created_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("spool");
    std::fs::write(&file, b"not a directory").unwrap();
    let e = open(&file).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(&file.display().to_string()), "{msg}");
    assert!(matches!(e, SpoolError::Unusable { .. }), "{msg}");

    // Not writable even by root: /proc has no room for a spool.
    let proc_path = Path::new("/proc/self/flopmeter-spool");
    let e = open(proc_path).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("/proc/self/flopmeter-spool"), "{msg}");
    assert!(msg.contains("permissions"), "{msg}");
}

#[test]
fn a_spool_in_use_is_reported_as_locked_not_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let _held = sled::Config::new().path(dir.path()).open().unwrap();
    let e = open(dir.path()).unwrap_err();
    assert!(matches!(e, SpoolError::Locked { .. }), "{e}");
    assert!(e.to_string().contains("another flopmeter agent"), "{e}");
}
