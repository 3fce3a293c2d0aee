//! `Database::listen`: a notification committed on another connection moves the counter,
//! one rolled back does not, and after the server restarts the listener reconnects (which
//! counts as a change, since what was sent meanwhile is lost) and hears the next one.

use std::time::Duration;

use flopmeter_pg::test_support::Server;
use flopmeter_pg::{Database, PgError};

use crate::{options, wait_for};

const CHANNEL: &str = "flopmeter_test_channel";

fn notify(db: &Database, commit: bool) -> Result<(), PgError> {
    db.run(move |mut conn| async move {
        let tx = conn.transaction().await?;
        tx.batch_execute(&format!("NOTIFY {CHANNEL}")).await?;
        if commit {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok::<_, PgError>(())
    })
}

#[test]
fn a_listener_hears_commits_not_rollbacks_and_survives_a_restart() {
    // A server of its own: it is restarted.
    let server = Server::start();
    let test_db = server.fresh_database();
    let db = Database::connect(options(&test_db.socket_dsn())).unwrap();
    let listener = db.listen(CHANNEL);
    let changes = listener.changes();
    let now = || *changes.borrow();
    wait_for("the first LISTEN", Duration::from_secs(10), || now() >= 1);
    let listening = now();

    notify(&db, true).unwrap();
    wait_for("a committed NOTIFY", Duration::from_secs(10), || {
        now() == listening + 1
    });
    notify(&db, false).unwrap();
    notify(&db, true).unwrap();
    wait_for("the next committed NOTIFY", Duration::from_secs(10), || {
        now() >= listening + 2
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        now(),
        listening + 2,
        "the rolled-back NOTIFY was not delivered"
    );

    server.restart();
    // Reconnected (the listener retries every second): that counts as a change.
    wait_for("the reconnection", Duration::from_secs(20), || {
        now() >= listening + 3
    });
    let reconnected = now();
    wait_for(
        "a NOTIFY after the restart",
        Duration::from_secs(20),
        || {
            // The pool's connections died with the old server: the first use may fail.
            let _ = notify(&db, true);
            now() > reconnected
        },
    );
    drop(listener);
}
