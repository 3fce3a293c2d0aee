//! The harness's fault primitives, which the failover campaign builds on: restarting the
//! server and cutting one client's connection. Each test shows the client breaking and
//! recovering, with nothing committed lost.

use std::time::Duration;

use flopmeter_pg::test_support::{CutProxy, Server};
use flopmeter_pg::{Database, PgError};

use crate::{fresh, options, wait_for};

fn count(db: &Database) -> Result<i64, PgError> {
    db.run(|conn| async move {
        let row = conn.query_one("SELECT count(*) FROM t", &[]).await?;
        Ok::<i64, PgError>(row.get(0))
    })
}

fn insert(db: &Database) -> Result<u64, PgError> {
    db.run(|conn| async move {
        Ok::<u64, PgError>(conn.execute("INSERT INTO t VALUES (1)", &[]).await?)
    })
}

/// Retries a transient failure, as a store will.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Result<T, PgError>) -> T {
    let mut last = None;
    for _ in 0..100 {
        match f() {
            Ok(v) => return v,
            Err(e) => {
                assert!(e.is_transient(), "{what}: a permanent error: {e:?}");
                last = Some(e);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    panic!("{what}: still failing: {last:?}");
}

#[test]
fn a_restarted_server_breaks_connections_and_keeps_the_data() {
    // A server of its own: the shared one serves the other tests meanwhile.
    let server = Server::start();
    let test_db = server.fresh_database();
    let db = Database::connect(options(&test_db.socket_dsn())).unwrap();
    db.run(
        |conn| async move { Ok::<_, PgError>(conn.batch_execute("CREATE TABLE t (x int)").await?) },
    )
    .unwrap();
    insert(&db).unwrap();

    server.restart();
    // The pooled connection died with the old server: the first use may fail, transiently.
    eventually("insert after restart", || insert(&db));
    assert_eq!(count(&db).unwrap(), 2);

    server.stop();
    let e = count(&db).unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    // With the server down, new connections are refused as unreachable.
    let e = eventually_err(&db);
    assert!(matches!(e, PgError::Unreachable { .. }), "{e:?}");
    server.start_again();
    assert_eq!(eventually("count after start", || count(&db)), 2);
}

/// The error of a query while the server is down, once the pool's old connections are gone.
fn eventually_err(db: &Database) -> PgError {
    let mut last = None;
    for _ in 0..20 {
        match count(db) {
            Ok(n) => panic!("the server is down, yet a query returned {n}"),
            Err(e @ PgError::Unreachable { .. }) => return e,
            Err(e) => last = Some(e),
        }
    }
    panic!("never unreachable: {last:?}")
}

#[test]
fn a_cut_proxy_breaks_one_clients_connection_until_restored() {
    let test_db = fresh();
    let direct = Database::connect(options(&test_db.socket_dsn())).unwrap();
    direct
        .run(|conn| async move { Ok::<_, PgError>(conn.batch_execute("CREATE TABLE t (x int)").await?) })
        .unwrap();
    let server = flopmeter_pg::test_support::shared();
    let proxy = CutProxy::start(([127, 0, 0, 1], server.port()).into());
    let cut_off = Database::connect(options(&test_db.dsn_via(proxy.port()))).unwrap();
    insert(&cut_off).unwrap();

    proxy.cut();
    // The open connection is reset and new ones are refused, until restored.
    let e = insert(&cut_off).unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    let e = insert(&cut_off).unwrap_err();
    assert!(matches!(e, PgError::Unreachable { .. }), "{e:?}");
    // Other clients are not affected.
    insert(&direct).unwrap();

    proxy.restore();
    eventually("insert through the restored proxy", || insert(&cut_off));
    wait_for("three rows", Duration::from_secs(5), || {
        count(&direct).unwrap() == 3
    });
}
