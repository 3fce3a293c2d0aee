//! The synchronous bridge: `Database::run` from a plain thread, from `spawn_blocking`, and
//! from inside another runtime's workers.

use std::time::Duration;

use flopmeter_pg::{Database, PgError};

use crate::{connect, fresh};

/// A query that proves the work ran on the server: the backend's PID, different per
/// connection, and an arithmetic the server did.
fn query(db: &Database, n: i64) -> i64 {
    db.run(move |conn| async move {
        let row = conn.query_one("SELECT $1::bigint * 2", &[&n]).await?;
        Ok::<i64, PgError>(row.get(0))
    })
    .expect("the query runs")
}

#[test]
fn run_from_a_plain_thread_and_from_many_at_once() {
    let db = connect(&fresh());
    assert_eq!(query(&db, 21), 42);
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let db = db.clone();
            std::thread::spawn(move || query(&db, i))
        })
        .collect();
    let got: Vec<i64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(got, (0..16).map(|i| i * 2).collect::<Vec<_>>());
}

#[test]
fn run_from_spawn_blocking_and_from_inside_other_runtimes() {
    let db = connect(&fresh());
    // A multi-threaded runtime, as the collector's: from spawn_blocking (the compliance
    // engine) and straight from a worker (an HTTP handler reading a store).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let d = db.clone();
    let (from_blocking, from_worker) = rt.block_on(async move {
        let d2 = d.clone();
        let blocking = tokio::task::spawn_blocking(move || query(&d2, 5))
            .await
            .unwrap();
        let d3 = d.clone();
        let worker = tokio::spawn(async move { query(&d3, 7) }).await.unwrap();
        (blocking, worker)
    });
    assert_eq!((from_blocking, from_worker), (10, 14));
    // A current-thread runtime (a test, a small tool): blocking its only thread is fine,
    // since the work runs on the database's own threads.
    let rt1 = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let d = db.clone();
    assert_eq!(rt1.block_on(async move { query(&d, 8) }), 16);
    // And the async form awaits without blocking.
    let d = db.clone();
    let v = rt
        .block_on(async move {
            d.run_async(|conn| async move {
                let row = conn.query_one("SELECT 40 + 2", &[]).await?;
                Ok::<i32, PgError>(row.get(0))
            })
            .await
        })
        .unwrap();
    assert_eq!(v, 42);
    // Dropping the last handle inside a runtime must not panic (tokio forbids blocking
    // drops of a runtime there).
    rt.block_on(async move { drop(db) });
}

#[test]
fn a_stalled_query_times_out_and_its_connection_is_closed_not_reused() {
    let test_db = fresh();
    let db = connect(&test_db);
    let before = db.pool().status().size;
    let err = db
        .run_with_timeout(Duration::from_millis(300), |conn| async move {
            conn.execute("SELECT pg_sleep(30)", &[]).await?;
            Ok::<(), PgError>(())
        })
        .unwrap_err();
    assert!(matches!(err, PgError::Timeout { .. }), "{err:?}");
    assert!(err.is_transient());
    // The connection left the pool instead of coming back mid-query...
    assert_eq!(
        db.pool().status().size,
        before - 1,
        "{:?}",
        db.pool().status()
    );
    // ...and the server ends the backend (the socket closed), so no sleeper remains.
    crate::wait_for(
        "the stalled backend to end",
        Duration::from_secs(10),
        || {
            db.run(|conn| async move {
                let row = conn
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)'",
                        &[],
                    )
                    .await?;
                Ok::<i64, PgError>(row.get(0))
            })
            .unwrap()
                == 0
        },
    );
    assert_eq!(query(&db, 1), 2);
}

#[test]
fn a_panic_in_the_work_reaches_the_caller_and_the_database_stays_usable() {
    let db = connect(&fresh());
    let d = db.clone();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        d.run(|_conn| async move {
            if true {
                panic!("work panicked");
            }
            Ok::<(), PgError>(())
        })
    }));
    let payload = caught.unwrap_err();
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"work panicked"));
    assert_eq!(query(&db, 3), 6);
}
