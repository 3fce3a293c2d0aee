//! The engine lease: one holder at a time, takeover within the stated bound when the holder
//! stalls, fencing of a stale epoch, and an immediate handover on release.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use flopmeter_pg::lease::{self, Contender, LeaseConfig, LeaseError};
use flopmeter_pg::migrate::{self, DEFAULT_TIMEOUT, MIGRATIONS};
use flopmeter_pg::test_support::TestDatabase;
use flopmeter_pg::{Database, PgError};

use crate::{connect, fresh, wait_for};

/// A fresh database with the schema and a table for the fenced writes of the tests.
fn leased_db() -> (TestDatabase, Database) {
    let test_db = fresh();
    let db = connect(&test_db);
    migrate::apply(&db, MIGRATIONS, DEFAULT_TIMEOUT).unwrap();
    db.run(|conn| async move {
        conn.batch_execute(
            "CREATE TABLE fenced_writes (holder text NOT NULL, epoch bigint NOT NULL, \
             written_at timestamptz NOT NULL DEFAULT clock_timestamp())",
        )
        .await?;
        Ok::<(), PgError>(())
    })
    .unwrap();
    (test_db, db)
}

fn config(holder: &str, ttl_ms: u64, renew_ms: u64, poll_ms: u64) -> LeaseConfig {
    let mut c = LeaseConfig::engine(holder);
    c.ttl = Duration::from_millis(ttl_ms);
    c.renew_every = Duration::from_millis(renew_ms);
    c.poll_every = Duration::from_millis(poll_ms);
    c
}

/// `(epoch, holder, expires_at, acquired_at, renewed_at)` of the engine's lease.
type Row = (i64, Option<String>, SystemTime, SystemTime, SystemTime);

fn lease_row(db: &Database) -> Option<Row> {
    db.run(|conn| async move {
        let row = conn
            .query_opt(
                "SELECT epoch, holder, expires_at, acquired_at, renewed_at FROM engine_lease \
                 WHERE name = $1",
                &[&lease::ENGINE],
            )
            .await?;
        Ok::<_, PgError>(row.map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))))
    })
    .unwrap()
}

fn fenced_write(db: &Database, lease: &lease::Lease, holder: &str) -> Result<(), LeaseError> {
    let (lease, holder) = (lease.clone(), holder.to_string());
    db.run(move |mut conn| async move {
        let tx = lease.begin(&mut conn).await?;
        tx.execute(
            "INSERT INTO fenced_writes (holder, epoch) VALUES ($1, $2)",
            &[&holder, &tx.epoch()],
        )
        .await?;
        tx.commit().await
    })
}

#[test]
fn one_holder_at_a_time_and_a_stale_epoch_cannot_write_after_takeover() {
    let (_t, db) = leased_db();
    let a = config("replica-a", 400, 100, 100);
    let b = config("replica-b", 400, 100, 100);
    let acquire = |c: &LeaseConfig| {
        let c = c.clone();
        db.run(move |conn| async move { lease::try_acquire(&conn, &c).await })
            .unwrap()
    };
    let lease_a = acquire(&a).expect("a free lease is taken");
    assert_eq!(lease_a.epoch(), 1);
    assert!(acquire(&b).is_none(), "a held lease is not taken");
    fenced_write(&db, &lease_a, "replica-a").expect("the holder writes");

    // A stops renewing; once its lease expired (by the database's clock), B takes it.
    wait_for("the lease to expire", Duration::from_secs(10), || {
        lease_row(&db).is_some_and(|r| r.2 <= SystemTime::now())
    });
    let lease_b = loop {
        if let Some(l) = acquire(&b) {
            break l;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(lease_b.epoch(), 2, "the fencing token moved");

    let e = fenced_write(&db, &lease_a, "replica-a").unwrap_err();
    match &e {
        LeaseError::LostLeadership {
            epoch: 1,
            current: 2,
            holder,
            ..
        } => {
            assert_eq!(holder.as_deref(), Some("replica-b"));
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("nothing was written"), "{e}");
    let la = lease_a.clone();
    let renewed =
        db.run(move |conn| async move { lease::renew(&conn, &la, Duration::from_secs(1)).await });
    assert!(
        matches!(renewed, Err(LeaseError::LostLeadership { .. })),
        "{renewed:?}"
    );
    fenced_write(&db, &lease_b, "replica-b").expect("the new holder writes");
    let rows = db
        .run(|conn| async move {
            let rows = conn
                .query(
                    "SELECT holder, epoch FROM fenced_writes ORDER BY written_at",
                    &[],
                )
                .await?;
            Ok::<Vec<(String, i64)>, PgError>(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
        .unwrap();
    assert_eq!(rows, vec![("replica-a".into(), 1), ("replica-b".into(), 2)]);
}

#[test]
fn a_clean_release_hands_over_at_once() {
    let (_t, db) = leased_db();
    // A long ttl: without the release, B would wait a minute.
    let a = Contender::start(&db, config("replica-a", 60_000, 1_000, 200)).unwrap();
    wait_for("A to lead", Duration::from_secs(10), || a.lease().is_some());
    let b = Contender::start(&db, config("replica-b", 60_000, 1_000, 200)).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        b.lease().is_none(),
        "B must not lead while A holds the lease"
    );
    a.shutdown();
    wait_for(
        "B to lead after A released",
        Duration::from_secs(10),
        || b.lease().is_some(),
    );
    assert_eq!(b.lease().unwrap().epoch(), 2);
    let row = lease_row(&db).unwrap();
    assert_eq!(row.1.as_deref(), Some("replica-b"));
    b.shutdown();
    assert_eq!(lease_row(&db).unwrap().1, None, "released on shutdown");
}

fn kill(signal: &str, pid: u32) {
    let ok = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {signal} {pid}");
}

/// The contender process's output lines, as they come.
fn lines(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn expect_line(rx: &mpsc::Receiver<String>, want: &str, limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) if line == want => return,
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    panic!("no line {want:?} within {limit:?}; saw {seen:?}");
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_paused_leader_is_replaced_within_the_bound_and_fenced_when_it_wakes() {
    let (test_db, db) = leased_db();
    let (ttl, renew, poll) = (2_000, 500, 500);
    let mut child = Command::new(env!("CARGO_BIN_EXE_pg-lease-contender"))
        .args([test_db.socket_dsn(), "replica-a".into()])
        .args([ttl, renew, poll].map(|v: u64| v.to_string()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = lines(child.stdout.take().unwrap());
    let pid = child.id();
    let mut child = KillOnDrop(child);
    expect_line(&out, "ACQUIRED 1", Duration::from_secs(15));
    expect_line(&out, "WROTE 1", Duration::from_secs(15));

    let b_config = config("replica-b", ttl, renew, poll);
    let bound = b_config.failover_bound();
    assert_eq!(bound, Duration::from_millis(2_500));
    let b = Contender::start(&db, b_config).unwrap();
    std::thread::sleep(Duration::from_millis(1_000));
    assert!(
        b.lease().is_none(),
        "B must not take a lease A keeps renewing"
    );

    // A stalls (a GC pause, a frozen VM, SIGSTOP). Its last renewal is in the row once any
    // statement it had in flight landed.
    kill("-STOP", pid);
    std::thread::sleep(Duration::from_millis(300));
    let (epoch, holder, expires, _, a_renewed) = lease_row(&db).unwrap();
    assert_eq!((epoch, holder.as_deref()), (1, Some("replica-a")));

    wait_for("B to take over", Duration::from_secs(30), || {
        b.lease().is_some()
    });
    let (epoch, holder, _, b_acquired, _) = lease_row(&db).unwrap();
    assert_eq!((epoch, holder.as_deref()), (2, Some("replica-b")));
    // Database times, so the test machine's load cannot blur them: not before A's lease
    // ran out, and within the bound (plus a second for one query's latency on a loaded
    // machine) of A's last renewal.
    assert!(b_acquired >= expires, "B took the lease before A's expired");
    let took = b_acquired.duration_since(a_renewed).unwrap();
    assert!(
        took <= bound + Duration::from_secs(1),
        "takeover {took:?} after A's last renewal; the bound is {bound:?}"
    );
    println!("failover: {took:?} after the last renewal (bound {bound:?})");

    // A wakes up still believing it leads: its fenced write is refused.
    kill("-CONT", pid);
    expect_line(&out, "REFUSED 1", Duration::from_secs(15));
    let late = db
        .run(move |conn| async move {
            let row = conn
                .query_one(
                    "SELECT count(*) FROM fenced_writes WHERE epoch = 1 AND written_at >= $1",
                    &[&b_acquired],
                )
                .await?;
            Ok::<i64, PgError>(row.get(0))
        })
        .unwrap();
    assert_eq!(late, 0, "the former leader wrote after the takeover");
    assert!(b.lease().is_some(), "B still leads");
    // A exits cleanly when its stdin closes, without touching B's lease.
    drop(child.0.stdin.take());
    expect_line(&out, "RELEASED", Duration::from_secs(15));
    assert_eq!(lease_row(&db).unwrap().1.as_deref(), Some("replica-b"));
    b.shutdown();
}
