//! A lease contender as a process of its own, for the leadership tests (feature
//! `test-support`, never shipped): a test pauses it with SIGSTOP, as a stalled leader is.
//!
//! `pg-lease-contender DSN HOLDER TTL_MS RENEW_MS POLL_MS`. It contends with
//! [`flopmeter_pg::lease::Contender`], prints `ACQUIRED <epoch>` when it becomes leader, and
//! while it believes it leads, every RENEW_MS writes a row `(holder, epoch)` into
//! `fenced_writes` in a fenced transaction, printing `WROTE <epoch>` or `REFUSED <epoch>`
//! (lost leadership). It releases the lease and exits when its stdin closes.

use std::io::Read;
use std::time::Duration;

use flopmeter_pg::lease::{Contender, LeaseConfig, LeaseError};
use flopmeter_pg::{Database, Dsn, Options};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dsn, holder, ttl, renew, poll] = args.as_slice() else {
        return Err("usage: pg-lease-contender DSN HOLDER TTL_MS RENEW_MS POLL_MS".into());
    };
    let ms = |s: &String| -> Result<Duration, std::num::ParseIntError> {
        Ok(Duration::from_millis(s.parse()?))
    };
    let db = Database::connect(Options::new(Dsn::parse(dsn)?))?;
    let mut config = LeaseConfig::engine(holder.clone());
    config.ttl = ms(ttl)?;
    config.renew_every = ms(renew)?;
    config.poll_every = ms(poll)?;
    let every = config.renew_every;
    let contender = Contender::start(&db, config)?;

    let (done_tx, done) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        let _ = done_tx.send(());
    });
    let mut announced = None;
    let mut last = None;
    let mut watch = contender.watch();
    loop {
        if done.recv_timeout(every).is_ok() {
            break;
        }
        // The last lease this process saw, kept until a write is refused: a former leader
        // that has not noticed its loss yet (it was paused) tries its write, and fencing must
        // refuse it.
        if let Some(newer) = watch.borrow_and_update().clone() {
            last = Some(newer);
        }
        let Some(lease) = last.clone() else { continue };
        if announced != Some(lease.epoch()) {
            println!("ACQUIRED {}", lease.epoch());
            announced = Some(lease.epoch());
        }
        let holder = holder.clone();
        let outcome = db.run(move |mut conn| async move {
            let tx = lease.begin(&mut conn).await?;
            tx.execute(
                "INSERT INTO fenced_writes (holder, epoch) VALUES ($1, $2)",
                &[&holder, &tx.epoch()],
            )
            .await?;
            let epoch = tx.epoch();
            tx.commit().await?;
            Ok::<i64, LeaseError>(epoch)
        });
        match outcome {
            Ok(epoch) => println!("WROTE {epoch}"),
            Err(LeaseError::LostLeadership { epoch, .. }) => {
                println!("REFUSED {epoch}");
                last = None;
            }
            Err(e) => println!("ERROR {e}"),
        }
    }
    contender.shutdown();
    println!("RELEASED");
    Ok(())
}
