//! Leadership: one replica at a time runs the compliance engine, and a replica that lost the
//! lease cannot write as if it had it.
//!
//! **The lease** is a row of `engine_lease` (migration 1): holder, epoch, `expires_at`.
//! - *Acquire* succeeds only when the row is free (released) or expired, and raises the epoch
//!   by one: the epoch is the **fencing token**. Expiry is compared with the database's
//!   `now()`, and `expires_at` is set from it, so the replicas' clocks never matter.
//! - *Renew* (the holder, every `renew_every`) moves `expires_at` to `now() + ttl`, only while
//!   the epoch is still its own.
//! - *Release* (clean shutdown) frees the row at once; the next contender to poll takes it.
//!
//! **Fencing.** Every write only the leader may do (clock starts, alert transitions, the
//! outbox, the audit chain) runs in a [`FencedTransaction`]: its first statement locks the
//! lease row `FOR SHARE` and checks the epoch, so the transaction either commits before any
//! takeover (an acquisition must wait for the share lock) or fails with
//! [`LeaseError::LostLeadership`]. A paused former leader that wakes up after a takeover
//! cannot commit anything. Keep fenced transactions short: while one is open, renewals and
//! takeovers of the row wait for it.
//!
//! **Failover bound.** A holder that stops renewing (killed, paused, cut off) renewed at most
//! `ttl` before its lease expires, so it is replaced at most `ttl + poll_every` after its
//! last renewal (plus one query's latency): [`LeaseConfig::failover_bound`]. With the
//! defaults (ttl 15 s, renewals every 5 s, polls every 5 s) that is 20 s, and a holder can
//! miss two renewals in a row without losing the lease. A holder also stops acting as leader
//! by itself when `ttl` has passed, by its own monotonic clock, since the start of its last
//! successful renewal ([`Lease::is_valid`]); fencing does not depend on that.

use std::time::{Duration, SystemTime};

use deadpool_postgres::{ClientWrapper, Transaction};
use tokio::time::Instant;

use crate::error::PgError;

/// The lease's name for the compliance engine.
pub const ENGINE: &str = "compliance-engine";

/// Who contends for which lease, and its timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    /// The lease ([`ENGINE`]).
    pub name: String,
    /// This replica's name, unique among the replicas (the pod's name, host and PID...).
    pub holder: String,
    /// How long an acquisition or a renewal holds the lease.
    pub ttl: Duration,
    /// How often the holder renews: at most a third of `ttl`, so two renewals in a row may
    /// fail without losing the lease.
    pub renew_every: Duration,
    /// How often a replica without the lease tries to take it.
    pub poll_every: Duration,
}

impl LeaseConfig {
    /// The engine's lease for `holder`, with ttl 15 s, renewals and polls every 5 s.
    pub fn engine(holder: impl Into<String>) -> LeaseConfig {
        LeaseConfig {
            name: ENGINE.into(),
            holder: holder.into(),
            ttl: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
            poll_every: Duration::from_secs(5),
        }
    }

    /// The longest time from a holder's last renewal to another replica holding the lease,
    /// when the holder stops renewing: `ttl + poll_every` (plus one query's latency).
    pub fn failover_bound(&self) -> Duration {
        self.ttl + self.poll_every
    }

    /// Checks the timing and the names.
    pub fn validate(&self) -> Result<(), LeaseError> {
        let bad = |problem| Err(LeaseError::Config { problem });
        if self.name.is_empty() || self.holder.is_empty() {
            return bad("the lease name and the holder must not be empty");
        }
        if self.holder.len() > 200 || self.holder.chars().any(char::is_control) {
            return bad("the holder must be at most 200 characters, without control characters");
        }
        if self.ttl < Duration::from_millis(100) || self.ttl > Duration::from_secs(3600) {
            return bad("the lease ttl must be between 100 ms and 1 h");
        }
        if self.renew_every.is_zero() || self.renew_every * 3 > self.ttl {
            return bad("renew_every must be more than 0 and at most a third of the ttl");
        }
        if self.poll_every.is_zero() || self.poll_every > self.ttl {
            return bad("poll_every must be more than 0 and at most the ttl");
        }
        Ok(())
    }
}

/// How long a fenced transaction may sit idle before PostgreSQL ends it (see [`Lease::begin`]).
const FENCED_IDLE_TIMEOUT_SQL: &str = "SET LOCAL idle_in_transaction_session_timeout = '1s'";

/// A held lease: the fencing token and until when the holder may believe in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    name: String,
    holder: String,
    epoch: i64,
    expires_at: SystemTime,
    valid_until: Instant,
}

impl Lease {
    /// The fencing token.
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// The lease's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Who holds it.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// When it expires unless renewed, by the database's clock.
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }

    /// Whether this replica may still act as the holder by its own clock: less than `ttl`
    /// since its last successful renewal was sent. Fenced writes are refused by the database
    /// anyway once another replica took over; this stops work that would only be refused.
    pub fn is_valid(&self) -> bool {
        Instant::now() < self.valid_until
    }

    /// Begins a transaction fenced by this lease: it locks the lease row and fails with
    /// [`LeaseError::LostLeadership`] if the epoch is no longer this one.
    pub async fn begin<'a>(
        &self,
        client: &'a mut ClientWrapper,
    ) -> Result<FencedTransaction<'a>, LeaseError> {
        let tx = client.transaction().await?;
        // A leader paused inside this transaction (SIGSTOP, a frozen VM) keeps its connection
        // open and the lease row share-locked, so the next leader's takeover would wait for it
        // forever and the failover bound would not hold. PostgreSQL ends a transaction that
        // sits idle longer than this, releasing the row; the paused leader's COMMIT then fails.
        // Leader-only writes send their statements back to back, so a healthy leader never
        // idles this long inside one.
        tx.batch_execute(FENCED_IDLE_TIMEOUT_SQL).await?;
        let row = tx
            .query_opt(
                "SELECT epoch, holder FROM engine_lease WHERE name = $1 FOR SHARE",
                &[&self.name],
            )
            .await?;
        let (current, holder) = match row {
            Some(r) => (r.get::<_, i64>(0), r.get::<_, Option<String>>(1)),
            None => (0, None),
        };
        if current != self.epoch {
            return Err(LeaseError::LostLeadership {
                name: self.name.clone(),
                epoch: self.epoch,
                current,
                holder,
            });
        }
        Ok(FencedTransaction {
            tx,
            epoch: self.epoch,
        })
    }
}

/// A transaction that holds the lease row in share mode with its epoch checked: what every
/// leader-only write runs in. Derefs to the transaction.
pub struct FencedTransaction<'a> {
    tx: Transaction<'a>,
    epoch: i64,
}

impl<'a> FencedTransaction<'a> {
    /// The epoch it was checked for.
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// Commits.
    pub async fn commit(self) -> Result<(), LeaseError> {
        Ok(self.tx.commit().await?)
    }
}

impl std::fmt::Debug for FencedTransaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FencedTransaction")
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl<'a> std::ops::Deref for FencedTransaction<'a> {
    type Target = Transaction<'a>;

    fn deref(&self) -> &Transaction<'a> {
        &self.tx
    }
}

/// Why a lease operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another replica holds the lease now (or held it since): this one must stop acting as
    /// leader. Nothing of the refused transaction was written.
    #[error(
        "lost leadership of {name}: this replica's epoch is {epoch}, the lease is at epoch \
         {current} (holder {holder:?}); nothing was written"
    )]
    LostLeadership {
        /// The lease.
        name: String,
        /// The epoch this replica held.
        epoch: i64,
        /// The epoch in the database.
        current: i64,
        /// Who holds it now (none: released).
        holder: Option<String>,
    },
    /// PostgreSQL failed.
    #[error(transparent)]
    Pg(#[from] PgError),
    /// The configuration is unusable.
    #[error("lease configuration: {problem}")]
    Config {
        /// What is wrong.
        problem: &'static str,
    },
}

impl From<tokio_postgres::Error> for LeaseError {
    fn from(e: tokio_postgres::Error) -> Self {
        LeaseError::Pg(e.into())
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Takes the lease if it is free or expired. `None`: someone else holds it.
pub async fn try_acquire(
    client: &tokio_postgres::Client,
    config: &LeaseConfig,
) -> Result<Option<Lease>, LeaseError> {
    let sent = Instant::now();
    // ON CONFLICT DO UPDATE locks the row, so it waits for fenced transactions (FOR SHARE)
    // of the former holder, and contenders take turns; its WHERE sees the latest version.
    let row = client
        .query_opt(
            "INSERT INTO engine_lease AS l \
                 (name, holder, epoch, expires_at, acquired_at, renewed_at) \
             VALUES ($1, $2, 1, now() + $3::bigint * interval '1 millisecond', now(), now()) \
             ON CONFLICT (name) DO UPDATE SET \
                 holder = EXCLUDED.holder, epoch = l.epoch + 1, \
                 expires_at = EXCLUDED.expires_at, acquired_at = now(), renewed_at = now() \
             WHERE l.holder IS NULL OR l.expires_at <= now() \
             RETURNING epoch, expires_at",
            &[&config.name, &config.holder, &millis(config.ttl)],
        )
        .await?;
    Ok(row.map(|r| Lease {
        name: config.name.clone(),
        holder: config.holder.clone(),
        epoch: r.get(0),
        expires_at: r.get(1),
        valid_until: sent + config.ttl,
    }))
}

/// Extends the lease by `ttl` from now (the database's), if its epoch is still the holder's.
pub async fn renew(
    client: &tokio_postgres::Client,
    lease: &Lease,
    ttl: Duration,
) -> Result<Lease, LeaseError> {
    let sent = Instant::now();
    let row = client
        .query_opt(
            "UPDATE engine_lease SET expires_at = now() + $3::bigint * interval '1 millisecond', \
                 renewed_at = now() \
             WHERE name = $1 AND epoch = $2 AND holder IS NOT NULL \
             RETURNING expires_at",
            &[&lease.name, &lease.epoch, &millis(ttl)],
        )
        .await?;
    match row {
        Some(r) => Ok(Lease {
            expires_at: r.get(0),
            valid_until: sent + ttl,
            ..lease.clone()
        }),
        None => Err(lost(client, lease).await),
    }
}

/// Frees the lease now, so the next contender does not wait for it to expire.
pub async fn release(client: &tokio_postgres::Client, lease: &Lease) -> Result<(), LeaseError> {
    let n = client
        .execute(
            "UPDATE engine_lease SET holder = NULL, expires_at = now() \
             WHERE name = $1 AND epoch = $2 AND holder IS NOT NULL",
            &[&lease.name, &lease.epoch],
        )
        .await?;
    if n == 0 {
        return Err(lost(client, lease).await);
    }
    Ok(())
}

/// The state of the lease in the database: `(epoch, holder, expires_at)`, or `None` if it
/// was never taken.
pub async fn current(
    client: &tokio_postgres::Client,
    name: &str,
) -> Result<Option<(i64, Option<String>, SystemTime)>, LeaseError> {
    Ok(client
        .query_opt(
            "SELECT epoch, holder, expires_at FROM engine_lease WHERE name = $1",
            &[&name],
        )
        .await?
        .map(|r| (r.get(0), r.get(1), r.get(2))))
}

async fn lost(client: &tokio_postgres::Client, lease: &Lease) -> LeaseError {
    match current(client, &lease.name).await {
        Ok(state) => {
            let (current, holder) = state.map_or((0, None), |(e, h, _)| (e, h));
            LeaseError::LostLeadership {
                name: lease.name.clone(),
                epoch: lease.epoch,
                current,
                holder,
            }
        }
        Err(e) => e,
    }
}

/// The loop a replica runs to hold the lease when it can: it polls while another replica
/// holds it, renews while it holds it, gives it up when a renewal finds the epoch moved (or
/// when `ttl` passed without a successful renewal), and releases it on
/// [`Contender::shutdown`]. It runs on the database's runtime with a connection of its own, so
/// renewals never queue behind the store's work.
#[derive(Debug)]
pub struct Contender {
    state: tokio::sync::watch::Receiver<Option<Lease>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    db: crate::Database,
}

impl Contender {
    /// Starts contending for `config.name` as `config.holder`.
    pub fn start(db: &crate::Database, config: LeaseConfig) -> Result<Contender, LeaseError> {
        config.validate()?;
        let pool = db.dedicated_pool(1)?;
        let (tx, state) = tokio::sync::watch::channel(None);
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = db.spawn(contend(pool, config, tx, stopped));
        Ok(Contender {
            state,
            stop: Some(stop),
            task: Some(task),
            db: db.clone(),
        })
    }

    /// The lease, if this replica holds it and may still believe so by its own clock.
    pub fn lease(&self) -> Option<Lease> {
        self.state.borrow().clone().filter(Lease::is_valid)
    }

    /// A receiver that sees every acquisition and loss (the engine waits on it).
    pub fn watch(&self) -> tokio::sync::watch::Receiver<Option<Lease>> {
        self.state.clone()
    }

    /// Stops contending and releases the lease if held, so another replica takes it at its
    /// next poll instead of after `ttl`. Blocks until the release is done (or failed).
    pub fn shutdown(mut self) {
        self.stop_and_wait();
    }

    fn stop_and_wait(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = self.db.block_on(task);
        }
    }
}

impl Drop for Contender {
    fn drop(&mut self) {
        // Dropped without shutdown (a panic, an early return): release all the same.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn contend(
    pool: deadpool_postgres::Pool,
    config: LeaseConfig,
    tx: tokio::sync::watch::Sender<Option<Lease>>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    // One query may take at most this long; a stalled connection is dropped and the next
    // round opens another.
    let limit = config.renew_every.min(config.poll_every);
    let mut held: Option<Lease> = None;
    let mut first_round = true;
    loop {
        let pause = if held.is_some() {
            config.renew_every
        } else {
            config.poll_every
        };
        if !first_round {
            tokio::select! {
                _ = &mut stopped => break,
                () = tokio::time::sleep(pause) => {}
            }
        }
        first_round = false;
        let outcome = tokio::time::timeout(limit, async {
            let client = pool.get().await.map_err(pool_failure)?;
            match &held {
                None => try_acquire(&client, &config).await.map(|l| (l, client)),
                Some(lease) => renew(&client, lease, config.ttl)
                    .await
                    .map(|l| (Some(l), client)),
            }
        })
        .await;
        match outcome {
            Ok(Ok((Some(lease), _client))) => {
                if held.is_none() {
                    tracing::info!(lease = %lease.name, epoch = lease.epoch, "acquired the lease");
                }
                held = Some(lease);
            }
            Ok(Ok((None, _client))) => {}
            Ok(Err(LeaseError::LostLeadership {
                current, holder, ..
            })) => {
                tracing::warn!(current, ?holder, "lost the lease to another replica");
                held = None;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "lease round failed; retrying"),
            Err(_) => tracing::warn!(?limit, "lease round timed out; retrying"),
        }
        if held.as_ref().is_some_and(|l| !l.is_valid()) {
            tracing::warn!("lease expired without a successful renewal; stepping down");
            held = None;
        }
        if *tx.borrow() != held {
            tx.send_replace(held.clone());
        }
    }
    if let Some(lease) = held.take() {
        tx.send_replace(None);
        let released = tokio::time::timeout(limit, async {
            let client = pool.get().await.map_err(pool_failure)?;
            release(&client, &lease).await
        })
        .await;
        match released {
            Ok(Ok(())) => tracing::info!(epoch = lease.epoch, "released the lease"),
            Ok(Err(e)) => tracing::warn!(error = %e, "could not release the lease; it expires"),
            Err(_) => tracing::warn!("releasing the lease timed out; it expires"),
        }
    }
}

fn pool_failure(e: deadpool_postgres::PoolError) -> LeaseError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => LeaseError::from(e),
        _ => LeaseError::Pg(PgError::Closed),
    }
}
