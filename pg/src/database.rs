//! The pool and the synchronous bridge.
//!
//! The collector's stores are synchronous: the ledger writer is an OS thread with group
//! commit, the compliance engine runs in `spawn_blocking`, and HTTP and gRPC handlers read
//! stores directly from async code. So a [`Database`] owns a small tokio runtime of its own
//! (`flopmeter-pg` threads), on which the pool's connections live, and
//! [`Database::run`] spawns a future there and blocks the calling thread until it is done.
//!
//! **Contract of `run`:**
//! - It may be called from any thread: a plain thread, a `spawn_blocking` thread, or a worker
//!   of another tokio runtime. The caller waits on a standard channel, never on tokio, so no
//!   runtime notices the wait or refuses it.
//! - From a worker of another runtime it blocks that worker for the query's duration, as
//!   sled's calls do today: fine for short reads; an async caller that can await uses
//!   [`Database::run_async`] instead.
//! - It must not be called from the database's own runtime (inside a future given to `run`):
//!   that could wait on itself, so it panics at once.
//! - The whole of the work, waiting for a pooled connection included, has `run_timeout`
//!   (default 30 s). On timeout the future is dropped, the statement in flight is cancelled
//!   on the server, and the connection is **closed, not returned** to the pool: the server
//!   rolls back whatever was open and no later caller inherits a connection in an unknown
//!   state.
//! - A panic in the work is re-raised in the caller, as if the work had run there.
//!
//! Connections are checked out per `run` and returned when the future ends (deadpool's fast
//! recycling: a connection whose socket closed is dropped, not handed out).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use deadpool_postgres::{ClientWrapper, Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use futures_util::FutureExt as _;
use tokio::runtime::Runtime;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::dsn::{Dsn, RootCerts};
use crate::error::{PgError, Target};

/// How to connect, and the pool's limits.
#[derive(Debug, Clone)]
pub struct Options {
    /// The DSN.
    pub dsn: Dsn,
    /// A CA file that overrides the DSN's `sslrootcert` (the collector's option).
    pub ca_file: Option<PathBuf>,
    /// Connections in the pool at most.
    pub pool_size: usize,
    /// Time to open one connection, TLS and authentication included, unless the DSN sets
    /// `connect_timeout`.
    pub connect_timeout: Duration,
    /// Time allowed to one [`Database::run`], waiting for a connection included.
    pub run_timeout: Duration,
    /// Worker threads of the database's runtime.
    pub threads: usize,
    /// `application_name` the server shows in `pg_stat_activity`, unless the DSN sets one.
    pub application_name: String,
}

impl Options {
    /// The defaults for a DSN: a pool of 8, 10 s to connect, 30 s per unit of work, two
    /// threads.
    pub fn new(dsn: Dsn) -> Options {
        Options {
            dsn,
            ca_file: None,
            pool_size: 8,
            connect_timeout: Duration::from_secs(10),
            run_timeout: Duration::from_secs(30),
            threads: 2,
            application_name: "flopmeter".into(),
        }
    }
}

/// A pool of PostgreSQL connections on a runtime of its own, usable from synchronous code.
/// Cheap to clone; the runtime stops when the last clone is dropped.
#[derive(Clone)]
pub struct Database {
    inner: Arc<Inner>,
}

struct Inner {
    id: u64,
    runtime: Option<Runtime>,
    pool: Pool,
    manager_parts: (tokio_postgres::Config, MakeRustlsConnect),
    target: Target,
    run_timeout: Duration,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("target", &self.inner.target)
            .finish_non_exhaustive()
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The id of the database whose runtime this thread belongs to (0: none).
    static OWN_RUNTIME: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

impl Database {
    /// Builds the runtime and the pool, and opens one connection, so that a wrong host,
    /// password, database or certificate is reported now, with its typed error.
    pub fn connect(options: Options) -> Result<Database, PgError> {
        let Options {
            mut dsn,
            ca_file,
            pool_size,
            connect_timeout,
            run_timeout,
            threads,
            application_name,
        } = options;
        let roots = match ca_file {
            Some(path) => Some(RootCerts::File(path)),
            None => dsn.root_certs().cloned(),
        };
        let tls = crate::tls::connector(dsn.ssl_mode(), roots.as_ref())?;
        let config = dsn.config_mut();
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(connect_timeout);
        }
        if config.get_application_name().is_none() {
            config.application_name(&application_name);
        }
        let target = Target {
            hosts: dsn.target(),
            user: dsn.user().to_string(),
            database: dsn.database().to_string(),
            ssl_mode: dsn.ssl_mode(),
        };
        if dsn.uses_tcp() && !dsn.ssl_mode().verifies() {
            tracing::warn!(
                dsn = %dsn,
                "PostgreSQL's certificate is not checked (sslmode={}): use sslmode=verify-full",
                dsn.ssl_mode()
            );
        }
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("flopmeter-pg")
            .on_thread_start(move || OWN_RUNTIME.set(id))
            .enable_all()
            .build()
            .map_err(PgError::Runtime)?;
        let pg_config = dsn.config().clone();
        let pool = build_pool(&pg_config, &tls, pool_size, &runtime)?;
        let db = Database {
            inner: Arc::new(Inner {
                id,
                runtime: Some(runtime),
                pool,
                manager_parts: (pg_config, tls),
                target,
                run_timeout,
            }),
        };
        db.run(|_conn| async { Ok::<(), PgError>(()) })?;
        tracing::info!(dsn = %dsn, "connected to PostgreSQL");
        Ok(db)
    }

    /// Where this database is (for messages).
    pub fn target(&self) -> &Target {
        &self.inner.target
    }

    /// Runs `work` with a pooled connection on the database's runtime and blocks this thread
    /// until it is done, within `run_timeout` (see the module's contract).
    pub fn run<T, E, F, Fut>(&self, work: F) -> Result<T, E>
    where
        F: FnOnce(Conn) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: From<PgError> + Send + 'static,
    {
        self.run_with_timeout(self.inner.run_timeout, work)
    }

    /// [`Database::run`] with another time limit (migrations wait for a lock; tests stall).
    pub fn run_with_timeout<T, E, F, Fut>(&self, timeout: Duration, work: F) -> Result<T, E>
    where
        F: FnOnce(Conn) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: From<PgError> + Send + 'static,
    {
        self.block_on(with_connection(
            self.inner.pool.clone(),
            self.inner.target.clone(),
            self.inner.manager_parts.1.clone(),
            timeout,
            work,
        ))
    }

    /// [`Database::run`] for async callers: the work runs on the database's runtime and the
    /// caller awaits it, blocking nothing.
    pub async fn run_async<T, E, F, Fut>(&self, work: F) -> Result<T, E>
    where
        F: FnOnce(Conn) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: From<PgError> + Send + 'static,
    {
        let handle = self.spawn(with_connection(
            self.inner.pool.clone(),
            self.inner.target.clone(),
            self.inner.manager_parts.1.clone(),
            self.inner.run_timeout,
            work,
        ));
        match handle.await {
            Ok(out) => out,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(PgError::Closed.into()),
        }
    }

    /// Runs a future on the database's runtime and blocks this thread until it is done (no
    /// connection, no timeout: the future bounds itself).
    pub fn block_on<T, Fut>(&self, fut: Fut) -> T
    where
        Fut: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        assert!(
            OWN_RUNTIME.get() != self.inner.id,
            "Database::run called from the database's own runtime (inside work given to \
             run): it would wait on itself; await the connection directly instead"
        );
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.spawn(async move {
            let out = AssertUnwindSafe(fut).catch_unwind().await;
            let _ = tx.send(out);
        });
        match rx.recv() {
            Ok(Ok(out)) => out,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => panic!("the PostgreSQL runtime stopped while work was waiting on it"),
        }
    }

    /// Spawns a task on the database's runtime (background work: the lease's renewals).
    pub fn spawn<Fut>(&self, fut: Fut) -> tokio::task::JoinHandle<Fut::Output>
    where
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        self.inner
            .runtime
            .as_ref()
            .expect("the runtime lives as long as the database")
            .spawn(fut)
    }

    /// A separate pool of `size` connections to the same server, for work that must not wait
    /// behind the main pool (the lease's renewals).
    pub fn dedicated_pool(&self, size: usize) -> Result<Pool, PgError> {
        let (config, tls) = &self.inner.manager_parts;
        build_pool(
            config,
            tls,
            size,
            self.inner.runtime.as_ref().expect("runtime present"),
        )
    }

    /// What a connection outside the pool is opened with (`notify`'s listener).
    pub(crate) fn connection_parts(&self) -> (tokio_postgres::Config, MakeRustlsConnect) {
        self.inner.manager_parts.clone()
    }

    /// The pool (for tasks on the database's runtime).
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.pool.close();
        // Dropping a runtime blocks, which tokio forbids inside another runtime; the last
        // clone may well be dropped there. Connections end with the threads.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn build_pool(
    config: &tokio_postgres::Config,
    tls: &MakeRustlsConnect,
    size: usize,
    runtime: &Runtime,
) -> Result<Pool, PgError> {
    let manager = Manager::from_config(
        config.clone(),
        tls.clone(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    // Pool::builder needs a runtime context for its timers.
    let _guard = runtime.enter();
    Ok(Pool::builder(manager)
        .max_size(size.max(1))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .expect("a pool with a runtime and a size of at least 1 always builds"))
}

/// Checks a connection out, runs `work` with it within `timeout`, and closes the connection
/// instead of returning it if the time runs out.
async fn with_connection<T, E, F, Fut>(
    pool: Pool,
    target: Target,
    tls: MakeRustlsConnect,
    timeout: Duration,
    work: F,
) -> Result<T, E>
where
    F: FnOnce(Conn) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: From<PgError>,
{
    let discard = Arc::new(AtomicBool::new(false));
    let flag = discard.clone();
    let cancel = Arc::new(std::sync::Mutex::new(None));
    let cancel_slot = cancel.clone();
    let mut fut = Box::pin(async move {
        let object = pool.get().await.map_err(|e| pool_error(&target, e))?;
        *cancel_slot.lock().expect("cancel slot") = Some(object.cancel_token());
        work(Conn {
            object: Some(object),
            discard: flag,
        })
        .await
    });
    let out = tokio::select! {
        out = &mut fut => Some(out),
        () = tokio::time::sleep(timeout) => None,
    };
    match out {
        Some(out) => out,
        None => {
            // Set before the future (and the connection inside it) is dropped.
            discard.store(true, Ordering::SeqCst);
            drop(fut);
            // Closing the socket alone does not stop the server: a backend notices a gone
            // client only when it next writes to it, so a long statement would run on (and
            // keep its locks). Cancel it, as libpq's clients do on Ctrl-C.
            let token = cancel.lock().expect("cancel slot").take();
            if let Some(token) = token {
                tokio::spawn(async move {
                    if let Err(e) = token.cancel_query(tls).await {
                        tracing::debug!(error = %e, "cancelling a timed-out statement failed");
                    }
                });
            }
            Err(PgError::Timeout { after: timeout }.into())
        }
    }
}

fn pool_error(target: &Target, e: deadpool_postgres::PoolError) -> PgError {
    use deadpool_postgres::PoolError as P;
    match e {
        P::Backend(e) => PgError::connecting(target, e),
        P::Closed => PgError::Closed,
        // No pool timeout is configured (run's timeout bounds the wait) and no hook is set.
        P::Timeout(_) | P::NoRuntimeSpecified | P::PostCreateHook(_) => PgError::Closed,
    }
}

/// A pooled connection, lent to one unit of work. Derefs to deadpool's client (statement
/// cache, `transaction()`), and through it to [`tokio_postgres::Client`].
pub struct Conn {
    object: Option<Object>,
    discard: Arc<AtomicBool>,
}

impl Conn {
    /// Closes this connection when the work ends instead of returning it to the pool (after
    /// an error that leaves it in an unknown state).
    pub fn discard(&self) {
        self.discard.store(true, Ordering::SeqCst);
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").finish_non_exhaustive()
    }
}

impl std::ops::Deref for Conn {
    type Target = ClientWrapper;

    fn deref(&self) -> &ClientWrapper {
        self.object.as_ref().expect("present until dropped")
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut ClientWrapper {
        self.object.as_mut().expect("present until dropped")
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.discard.load(Ordering::SeqCst)
            && let Some(object) = self.object.take()
        {
            // Detached from the pool and dropped: the socket closes, the server rolls back.
            drop(Object::take(object));
        }
    }
}
