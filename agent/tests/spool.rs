//! The spool's contract under crashes and against a model.
//!
//! - `kill_9_at_random_points`: re-runs this test binary as a child process (selected by the
//!   `FLOPMETER_SPOOL_CRASH_CHILD` variable) that appends and acknowledges records as fast as
//!   it can, journaling each completed step on stdout, and SIGKILLs it after a seeded random
//!   delay, 20 times over the same spool. After each kill the spool must hold exactly the
//!   unacknowledged records, none that were acknowledged, and sequence numbers must keep
//!   increasing across restarts.
//! - `spool_matches_a_queue_model`: proptest sequences of append / ack / restart against a
//!   `VecDeque`.

use std::collections::VecDeque;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use flopmeter_agent::spool::{Spool, SpoolOptions};
use flopmeter_proto::v1::{IntervalRecord, WorkloadIdentity};
use proptest::prelude::*;

const CHILD_ENV: &str = "FLOPMETER_SPOOL_CRASH_CHILD";
const SEED_ENV: &str = "FLOPMETER_SPOOL_CRASH_SEED";

/// The payload of the record with sequence number `seq`, so the parent can check contents.
fn payload(seq: u64) -> u64 {
    seq.wrapping_mul(7).wrapping_add(3)
}

fn record(seq: u64) -> IntervalRecord {
    IntervalRecord {
        flop_central: payload(seq),
        gpu_uuid: "GPU-5151a7ed-0000-4000-8000-000000000000".into(),
        identity: Some(WorkloadIdentity {
            model: "crash-test-model".into(),
            run: format!("run-{}", seq % 5),
            ..WorkloadIdentity::default()
        }),
        ..IntervalRecord::default()
    }
}

fn open(dir: &Path) -> Spool {
    let options = || SpoolOptions {
        max_bytes: 1 << 30,
        ..SpoolOptions::default()
    };
    // A reopen right after a drop: sled releases its file lock from a background thread
    // shortly after the last handle goes (on a loaded machine, late enough to be seen), so
    // retry, bounded, while the lock is still held, as the collector's store tests do.
    for _ in 0..500 {
        match Spool::open(dir, options()) {
            Ok(s) => return s,
            Err(e) if format!("{e:?}").contains("could not acquire lock") => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("opening the spool: {e:?}"),
        }
    }
    Spool::open(dir, options()).unwrap()
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The child: appends and acks until killed. Journal lines, each written after the step it
/// names is complete (`A first last`, `K through`) or before it starts (`k through`).
/// Without the variable this is a no-op test.
#[test]
fn spool_crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let seed: u64 = std::env::var(SEED_ENV).unwrap().parse().unwrap();
    let mut rng = XorShift(seed | 1);
    let spool = open(Path::new(&dir));
    let mut out = std::io::stdout().lock();
    // Bounded, in case the parent died and nobody kills us.
    for _ in 0..200_000 {
        let st = spool.stats();
        let n = 1 + rng.below(8);
        let mut batch: Vec<_> = (0..n).map(|i| record(st.next_seq + i)).collect();
        let range = spool.append(&mut batch).unwrap().unwrap();
        writeln!(out, "A {} {}", range.start(), range.end()).unwrap();
        out.flush().unwrap();
        if rng.below(3) == 0 {
            let st = spool.stats();
            let lo = st.acked_through;
            let hi = st.next_seq - 1;
            let through = lo + rng.below(hi - lo + 1);
            writeln!(out, "k {through}").unwrap();
            out.flush().unwrap();
            spool.ack(through).unwrap();
            writeln!(out, "K {through}").unwrap();
            out.flush().unwrap();
        }
    }
}

/// The child test's full name in this binary (`spool::spool_crash_child` in the merged one).
fn child_test_name() -> String {
    match module_path!().split_once("::") {
        Some((_crate, module)) => format!("{module}::spool_crash_child"),
        None => "spool_crash_child".into(),
    }
}

#[test]
fn kill_9_at_random_points() {
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    let exe = std::env::current_exe().unwrap();
    let mut rng = XorShift(0x5eed_f10b_0000_0001);
    let mut max_seq_ever = 0u64;
    let mut kills_with_work = 0;
    for iteration in 0..20 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                &child_test_name(),
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &spool_dir)
            .env(SEED_ENV, (iteration + 1).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The journal, line by line as the child writes it.
        let (line_tx, line_rx) = std::sync::mpsc::channel::<String>();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut journal: Vec<String> = Vec::new();
        if iteration % 5 == 4 {
            // Now and then kill early: during start-up or the first appends.
            std::thread::sleep(Duration::from_millis(rng.below(60)));
        } else {
            // Otherwise once the child is working, at a seeded random point: mid-append,
            // mid-ack, or between.
            let first = line_rx
                .recv_timeout(Duration::from_secs(120))
                .expect("the child starts appending");
            journal.push(first);
            while !journal.last().unwrap().starts_with("A ") {
                journal.push(line_rx.recv_timeout(Duration::from_secs(120)).unwrap());
            }
            std::thread::sleep(Duration::from_millis(rng.below(150)));
        }
        let status = Command::new("kill")
            .args(["-KILL", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        child.wait().unwrap();
        reader.join().unwrap();
        journal.extend(line_rx.try_iter());

        // What the child knew it had done (complete lines only).
        let mut appended_through = 0u64;
        let mut first_appended = None;
        let mut acked_done = 0u64;
        let mut ack_intent = 0u64;
        for line in &journal {
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.as_slice() {
                ["A", a, b] => {
                    let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
                    first_appended.get_or_insert(a);
                    appended_through = b;
                }
                ["k", t] => ack_intent = ack_intent.max(t.parse().unwrap()),
                ["K", t] => acked_done = acked_done.max(t.parse().unwrap()),
                _ => {} // the libtest banner, or a line cut by the kill
            }
        }
        if let Some(first) = first_appended {
            kills_with_work += 1;
            assert!(
                first > max_seq_ever,
                "iteration {iteration}: sequence {first} reused (had reached {max_seq_ever})"
            );
        }

        let spool = open(&spool_dir);
        let st = spool.stats();
        let held = spool.read_from(0, usize::MAX, usize::MAX).unwrap();
        // Nothing acknowledged reappears.
        assert!(st.acked_through >= acked_done);
        if let Some(r) = held.first() {
            assert!(
                r.seq > acked_done,
                "iteration {iteration}: acked record {} reappeared",
                r.seq
            );
        }
        // Nothing unacknowledged is lost: every record the child appended above its last ack
        // intent is present, with its content.
        let must_hold_from = ack_intent.max(st.acked_through) + 1;
        for seq in must_hold_from..=appended_through {
            let r = held
                .iter()
                .find(|r| r.seq == seq)
                .unwrap_or_else(|| panic!("iteration {iteration}: unacked record {seq} lost"));
            assert_eq!(r.flop_central, payload(seq));
        }
        // What is held is one contiguous, increasing range ending below the next number.
        for w in held.windows(2) {
            assert_eq!(
                w[1].seq,
                w[0].seq + 1,
                "iteration {iteration}: gap or disorder"
            );
        }
        if let Some(last) = held.last() {
            assert!(st.next_seq > last.seq);
        }
        assert!(st.next_seq > appended_through);
        assert_eq!(st.records, held.len() as u64);
        max_seq_ever = max_seq_ever.max(appended_through).max(st.next_seq - 1);
        drop(spool);
    }
    assert!(
        kills_with_work >= 16,
        "kills after the first append landed while the child worked ({kills_with_work}/20)"
    );
}

#[derive(Debug, Clone)]
enum Op {
    Append(u8),
    Ack(u8),
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..6).prop_map(Op::Append),
        3 => any::<u8>().prop_map(Op::Ack),
        1 => Just(Op::Restart),
    ]
}

proptest! {
    // A new seed each run, printed; FLOPMETER_FUZZ_SEED replays one (fuzz/README.md). The
    // regression file beside this one is replayed first, as ever.
    #![proptest_config(crate::support::seed::config(48))]

    /// Append / ack / restart against a queue: the spool holds exactly the model's records,
    /// in order, and its counter is the model's.
    #[test]
    fn spool_matches_a_queue_model(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Some(open(dir.path()));
        let mut model: VecDeque<(u64, u64)> = VecDeque::new();
        let mut next = 1u64;
        let mut acked = 0u64;
        for op in ops {
            let s = spool.as_ref().unwrap();
            match op {
                Op::Append(n) => {
                    let mut batch: Vec<_> = (0..u64::from(n)).map(|i| record(next + i)).collect();
                    let got = s.append(&mut batch).unwrap();
                    if n == 0 {
                        prop_assert!(got.is_none());
                    } else {
                        prop_assert_eq!(got, Some(next..=next + u64::from(n) - 1));
                        for i in 0..u64::from(n) {
                            model.push_back((next + i, payload(next + i)));
                        }
                        next += u64::from(n);
                    }
                }
                Op::Ack(k) => {
                    // Aim around the live range, sometimes below (duplicate) or beyond.
                    let through = acked.saturating_sub(2) + u64::from(k % 16);
                    s.ack(through).unwrap();
                    if through >= next {
                        // Numbers this spool never assigned: what it holds moves above them
                        // (contract 8), nothing is taken as acknowledged.
                        for (i, r) in model.iter_mut().enumerate() {
                            r.0 = through + 1 + i as u64;
                        }
                        next = through + 1 + model.len() as u64;
                        acked = through;
                    } else if through > acked {
                        acked = through;
                        while model.front().is_some_and(|(q, _)| *q <= acked) {
                            model.pop_front();
                        }
                    }
                }
                Op::Restart => {
                    drop(spool.take());
                    spool = Some(open(dir.path()));
                }
            }
            let s = spool.as_ref().unwrap();
            let held: Vec<(u64, u64)> = s
                .read_from(0, usize::MAX, usize::MAX)
                .unwrap()
                .iter()
                .map(|r| (r.seq, r.flop_central))
                .collect();
            prop_assert_eq!(&held, &model.iter().copied().collect::<Vec<_>>());
            let st = s.stats();
            prop_assert_eq!(st.next_seq, next);
            prop_assert_eq!(st.acked_through, acked);
            prop_assert_eq!(st.records, model.len() as u64);
            prop_assert_eq!(st.first_seq, model.front().map(|(q, _)| *q));
        }
    }
}
