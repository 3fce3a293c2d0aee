//! The spool's contract, and its durability rule on a real full disk.

use super::*;

pub(crate) fn rec(flop: u64) -> IntervalRecord {
    IntervalRecord {
        flop_central: flop,
        gpu_uuid: "GPU-test".into(),
        ..IntervalRecord::default()
    }
}

fn open(dir: &Path, max_bytes: u64) -> Spool {
    Spool::open(
        dir,
        SpoolOptions {
            max_bytes,
            ..SpoolOptions::default()
        },
    )
    .unwrap()
}

#[test]
fn append_ack_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path(), 1 << 20);
        let mut a = vec![rec(1), rec(2), rec(3)];
        assert_eq!(s.append(&mut a).unwrap(), Some(1..=3));
        assert_eq!(a[2].seq, 3);
        assert_eq!(s.ack(2).unwrap(), 2);
        assert_eq!(s.ack(1).unwrap(), 0, "duplicate ack is a no-op");
        let left = s.read_from(0, 10, 1 << 20).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!((left[0].seq, left[0].flop_central), (3, 3));
    }
    let s = open(dir.path(), 1 << 20);
    let st = s.stats();
    assert_eq!((st.records, st.first_seq, st.next_seq), (1, Some(3), 4));
    let mut b = vec![rec(4)];
    assert_eq!(s.append(&mut b).unwrap(), Some(4..=4));
    // Everything acked: the counter still never goes back.
    s.ack(4).unwrap();
    drop(s);
    let s = open(dir.path(), 1 << 20);
    assert_eq!(s.stats().next_seq, 5);
    assert_eq!(s.stats().records, 0);
}

#[test]
fn full_spool_refuses_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 100);
    let mut big: Vec<_> = (0..10).map(rec).collect();
    s.append(&mut big).unwrap();
    let mut more = vec![rec(99)];
    assert!(matches!(s.append(&mut more), Err(SpoolError::Full { .. })));
    assert!(s.stats().full);
    assert_eq!(more[0].seq, 0, "refused records keep no number");
    // Over the cap on purpose: counted.
    s.append_over_cap(&mut more).unwrap();
    assert_eq!(s.stats().over_cap_records, 1);
    s.ack(11).unwrap();
    assert!(!s.stats().full);
    let mut again = vec![rec(5)];
    assert_eq!(s.append(&mut again).unwrap(), Some(12..=12));
}

#[test]
fn raise_next_seq_and_ack_beyond_the_counter() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 20);
    s.raise_next_seq(100).unwrap();
    let mut a = vec![rec(1)];
    assert_eq!(s.append(&mut a).unwrap(), Some(100..=100));
    // An ack beyond what exists cannot be for record 100: it is renumbered, not deleted.
    assert_eq!(s.ack(1_000).unwrap(), 0);
    let st = s.stats();
    assert_eq!(
        (st.acked_through, st.records, st.first_seq),
        (1_000, 1, Some(1_001))
    );
    let held = s.read_from(0, 10, 1 << 20).unwrap();
    assert_eq!((held[0].seq, held[0].flop_central), (1_001, 1));
    let mut b = vec![rec(2)];
    assert_eq!(s.append(&mut b).unwrap(), Some(1_002..=1_002));
    drop(s);
    assert_eq!(open(dir.path(), 1 << 20).stats().next_seq, 1_003);
}

/// A tmpfs mounted for one test, so "the disk failed the fsync" is the kernel's ENOSPC,
/// not an imitation. Mounting needs root: CI runs as root; elsewhere the test says it
/// skipped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
            .then_some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

/// The durability rule: an fsync that fails (the disk is full) is an error the caller
/// sees, the records it covered are not reported durable but are not lost to the stream
/// either, and the guard never claims them, so a restart opens on what the disk holds.
#[test]
fn a_failed_fsync_is_not_reported_durable() {
    let Some(fs) = Tmpfs::mount("4m") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let dir = fs.0.path().join("spool");
    let s = open(&dir, 1 << 30);
    let mut first = vec![rec(1), rec(2), rec(3)];
    assert_eq!(s.append(&mut first).unwrap(), Some(1..=3));
    let filler = fs.0.path().join("filler");
    // Fills the file system: the write stops at ENOSPC.
    let _ = std::fs::write(&filler, vec![0u8; 8 << 20]);

    // Appends go into sled's memory until it must write its log: that fsync fails.
    let mut durable_through = 3;
    let (stored, source) = loop {
        let mut batch: Vec<_> = (0..8).map(rec).collect();
        match s.append(&mut batch) {
            Ok(Some(r)) => durable_through = *r.end(),
            Err(SpoolError::NotDurable {
                first,
                last,
                source,
            }) => {
                let seqs: Vec<u64> = batch.iter().map(|r| r.seq).collect();
                assert_eq!(
                    seqs,
                    (first..=last).collect::<Vec<_>>(),
                    "numbered as named"
                );
                break (first..=last, source);
            }
            other => panic!("expected Ok or NotDurable, got {other:?}"),
        }
        assert!(durable_through < 10_000, "the disk never filled");
    };
    assert!(matches!(source, FlushError::Failed(_)), "{source}");
    assert_eq!(*stored.start(), durable_through + 1);
    let st = s.stats();
    assert!(!st.durable, "the spool says it is no longer durable");
    assert_eq!(st.flush_errors, 1);
    assert_eq!(st.next_seq, stored.end() + 1);
    // Stored, so the shipper sends them: nothing is lost while the process lives.
    let held = s.read_from(*stored.start(), 100, usize::MAX).unwrap();
    assert_eq!(
        held.iter().map(|r| r.seq).collect::<Vec<_>>(),
        stored.clone().collect::<Vec<_>>()
    );
    // Nothing after it is reported durable either, whatever happens to the next write.
    let mut later = vec![rec(9)];
    match s.append(&mut later) {
        Ok(r) => panic!("reported durable after a failed fsync: {r:?}"),
        Err(SpoolError::NotDurable { .. }) => {}
        // sled refuses writes after an I/O error: the record stays the caller's.
        Err(SpoolError::Storage { .. }) => assert_eq!(later[0].seq, 0),
        Err(e) => panic!("unexpected {e}"),
    }
    // Acknowledgements are never taken back: the ack of durable records stands.
    s.ack(2).unwrap_or_default();
    let guard: u64 = std::fs::read_to_string(dir.join(GUARD_FILE))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // (It may lag: on a full disk its own write fails too.)
    assert!(
        guard <= durable_through + 1,
        "the guard ({guard}) never claims what failed"
    );
    drop(s);

    // Restart on the disk as it is: the spool opens (the guard is not ahead of it) and
    // every record reported durable is there under its number.
    std::fs::remove_file(&filler).unwrap();
    let s = open(&dir, 1 << 30);
    assert!(s.stats().durable);
    let back = s.read_from(0, 10_000, usize::MAX).unwrap();
    let seqs: Vec<u64> = back.iter().map(|r| r.seq).collect();
    let from = s.stats().acked_through + 1;
    assert!(
        from <= 3,
        "acked through {} only what was acknowledged",
        from - 1
    );
    assert_eq!(
        seqs[..(durable_through - from + 1) as usize],
        (from..=durable_through).collect::<Vec<_>>(),
        "every record reported durable survives"
    );
    assert!(s.stats().next_seq > durable_through);
}

#[test]
fn read_from_respects_limits() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 20);
    let mut a: Vec<_> = (0..50).map(rec).collect();
    s.append(&mut a).unwrap();
    assert_eq!(s.read_from(10, 5, 1 << 20).unwrap().len(), 5);
    assert_eq!(s.read_from(10, 5, 1 << 20).unwrap()[0].seq, 10);
    assert_eq!(s.read_from(0, 100, 1).unwrap().len(), 1);
    assert_eq!(s.read_from(51, 100, 1 << 20).unwrap().len(), 0);
}
