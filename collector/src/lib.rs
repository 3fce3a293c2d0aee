//! flopmeter-collector: the system of record of a flopmeter deployment.
//!
//! Agents stream interval records over gRPC ([`ingest`]); the collector validates them,
//! applies each agent's records exactly once and in order to a durable ledger ([`ledger`])
//! through a single group-committing writer (`writer`), and acknowledges only what is on
//! disk. It serves Prometheus metrics and a JSON API over HTTP (`http`), the compliance
//! console for browsers (`console`), an admin gRPC API for the CLI ([`admin`]), and the
//! Annex XI figures per model ([`report`]).
//!
//! Module map:
//! - [`config`]: `flopmeter collector` flags and the resolved configuration;
//! - [`ingest`]: the agent stream, validation at the door ([`ingest::validate`]), tokens;
//! - `writer`: the one thread that mutates the ledger (group commit, ack after flush);
//! - [`storage`]: the storage boundary: [`ledger::LedgerStore`] and
//!   [`compliance::store::ComplianceStore`], implemented by one backend, and their contract;
//! - [`ledger`]: the ledger trait, its sled and in-memory implementations, aggregates,
//!   rollups and `verify`;
//! - [`admin`], `http`, [`metrics`], [`report`]: the read and admin sides;
//! - `console`: the server-rendered web console under `/ui/`.
//!
//! [`Collector::start`] wires it all; the `flopmeter collector` subcommand adds signals and
//! logging. The demo and the load generator drive a collector from outside, as tools: they
//! live in `flopmeter-sim`, not here.

pub mod admin;
pub mod compliance;
pub mod config;
pub(crate) mod conn;
pub(crate) mod console;
pub(crate) mod durable_marks;
pub mod failpoint;
pub(crate) mod http;
pub mod ingest;
pub mod leadership;
pub mod ledger;
pub mod metrics;
pub(crate) mod newruns;
pub(crate) mod occupancy;
pub mod report;
pub mod storage;
pub(crate) mod tls;
pub(crate) mod writer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use flopmeter_proto::v1::admin_server::AdminServer;
use flopmeter_proto::v1::compliance_server::ComplianceServer;
use flopmeter_proto::v1::ingest_server::IngestServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;

use crate::config::CollectorConfig;
use crate::ledger::{LedgerStore, StoreError};
use crate::metrics::Metrics;
use crate::writer::{Job, Writer};

/// The collector's wall clock, Unix ms. Used only at the edges (ingest receipt, retention,
/// registry timestamps); everything below takes time as a parameter.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Errors starting or running the collector.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The ledger could not be opened or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The storage could not be opened for this replica (the store, or the engine lease).
    #[error(transparent)]
    Open(#[from] storage::OpenError),
    /// An address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// The HTTP server failed.
    #[error("HTTP server failed: {0}")]
    Http(#[source] std::io::Error),
    /// The compliance engine could not start: its store, or an invalid threshold config.
    #[error("compliance engine: {0}")]
    Compliance(#[from] compliance::EngineError),
    /// The compliance store could not be opened.
    #[error("compliance store: {0}")]
    ComplianceStore(#[from] compliance::ComplianceStoreError),
    /// The compliance metrics could not be registered (a name registered twice: a bug).
    #[error(transparent)]
    ComplianceMetrics(#[from] compliance::metrics::ComplianceMetricsError),
    /// A blocking start-up task (opening the ledger) panicked.
    #[error("opening the ledger: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// The TLS certificate, key or client CA is missing, unreadable or unusable.
    #[error(transparent)]
    Tls(#[from] flopmeter_tls::TlsError),
}

/// Largest gRPC message accepted by default (`--max-message-bytes`): a backfilling agent
/// may send big batches.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// How long a shutdown waits for connections to close before it stops them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A running collector.
#[derive(Debug)]
pub struct Collector {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    metrics: Metrics,
    store: Arc<dyn LedgerStore>,
    ready: Arc<AtomicBool>,
    shutdown: watch::Sender<bool>,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    http: JoinHandle<std::io::Result<()>>,
    rollups: JoinHandle<()>,
    writer: Writer,
    compliance: compliance::Compliance,
    /// The engine lease's contender (PostgreSQL): released at shutdown.
    contender: Option<flopmeter_pg::lease::Contender>,
    /// Listens for other replicas' commits (PostgreSQL) while the collector runs.
    _ledger_changes: Option<flopmeter_pg::Listener>,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

impl Collector {
    /// Opens the ledger, starts the writer, binds both servers and starts serving.
    pub async fn start(cfg: CollectorConfig) -> Result<Collector, ServeError> {
        // Before anything else: a certificate problem must stop the start with nothing
        // opened or bound.
        let tls = cfg
            .tls
            .as_ref()
            .map(|p| tls::ServerTls::load(p, flopmeter_tls::unix_now()))
            .transpose()?;
        let backend = cfg.backend();
        let shared = backend.is_shared();
        let (lease, opening) = (cfg.lease(), backend.clone());
        let storage::Replica {
            stores,
            leadership,
            contender,
            ledger_changes,
        } = tokio::task::spawn_blocking(move || storage::open_replica(&opening, lease))
            .await
            .map_err(ServeError::Task)??;
        let store = stores.ledger.clone();
        store.set_stage_policy(&cfg.policy)?;
        let marks = Arc::new(if shared {
            durable_marks::DurableMarks::load_shared(store.clone())?
        } else {
            durable_marks::DurableMarks::load(store.as_ref())?
        });
        let metrics = Metrics::new();
        metrics.set_shared_ledger(shared);
        metrics.set_series_bounds(cfg.metrics_max_models, cfg.metrics_max_runs);
        metrics.start_time.set(now_unix_ms() as f64 / 1000.0);
        // Registry changes and new plans wake the compliance engine as soon as they are durable.
        let facts = Arc::new(tokio::sync::Notify::new());
        let writer = Writer::start(
            store.clone(),
            metrics.clone(),
            marks.clone(),
            writer::WriterConfig {
                queue: cfg.writer_queue,
                max_group: cfg.commit_group,
                headroom: writer::Headroom {
                    dir: cfg.data_dir.clone(),
                    // The data directory's free space says nothing about a database's.
                    min_free_bytes: if shared { 0 } else { cfg.min_free_bytes },
                },
                hold_flush: cfg.failpoints.hold_flush.clone(),
                new_runs_per_hour: cfg.new_runs_per_agent_per_hour,
            },
            facts.clone(),
        );
        let (shutdown, shutdown_rx) = watch::channel(false);
        let ready = Arc::new(AtomicBool::new(false));
        let engine = compliance::Engine::open_as(
            stores,
            compliance::ComplianceConfig {
                metrics_max_models: cfg.metrics_max_models,
                ..cfg.compliance.clone()
            },
            cfg.policy.clone(),
            compliance::metrics::ComplianceMetrics::register(metrics.registry())?,
            leadership,
        )?;
        let compliance = compliance::Compliance::start(
            engine,
            metrics.ingest_records.clone(),
            ledger_changes.as_ref().map(flopmeter_pg::Listener::changes),
            facts,
            shutdown_rx.clone(),
        );

        let grpc_listener = bind(cfg.listen).await?;
        let grpc_addr = grpc_listener
            .local_addr()
            .map_err(|source| ServeError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let http_listener = bind(cfg.http_addr).await?;
        let http_addr = http_listener
            .local_addr()
            .map_err(|source| ServeError::Bind {
                addr: cfg.http_addr,
                source,
            })?;

        let ingest = ingest::IngestService::new(
            marks,
            writer.handle(),
            metrics.clone(),
            ingest::Door {
                limits: cfg.limits,
                timeouts: ingest::Timeouts {
                    hello: cfg.hello_timeout,
                    idle: cfg.idle_timeout,
                },
                tokens: cfg.agent_tokens.clone(),
                client_certs: tls.as_ref().is_some_and(tls::ServerTls::mutual),
            },
            shutdown_rx.clone(),
        );
        let admin = admin::AdminService::new(
            store.clone(),
            writer.handle(),
            cfg.policy.clone(),
            cfg.admin_credentials(),
        )
        .with_verify_hold(cfg.failpoints.hold_verify_scan.clone());
        let mut stop = shutdown_rx.clone();
        let grpc_router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .layer(conn::GrpcOnlyLayer::new(metrics.clone()))
            .add_service(
                IngestServer::new(ingest)
                    .max_decoding_message_size(cfg.max_message_bytes)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(AdminServer::new(admin).max_encoding_message_size(MAX_MESSAGE_BYTES))
            .add_service(ComplianceServer::new(
                compliance::admin::ComplianceService::new(
                    compliance.engine().clone(),
                    cfg.admin_credentials(),
                ),
            ));
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        let grpc = match &tls {
            Some(tls) => {
                let (hello, m) = (cfg.hello_timeout, metrics.clone());
                let incoming = ReceiverStream::new(tls.grpc_incoming(
                    grpc_listener,
                    metrics.clone(),
                    shutdown_rx.clone(),
                ))
                .map(move |s| s.map(|s| conn::Silent::new(s, hello, m.clone())));
                tokio::spawn(grpc_router.serve_with_incoming_shutdown(incoming, stopped))
            }
            None => {
                let incoming = ReceiverStream::new(conn::plaintext_incoming(
                    grpc_listener,
                    cfg.hello_timeout,
                    metrics.clone(),
                    shutdown_rx.clone(),
                ));
                tokio::spawn(grpc_router.serve_with_incoming_shutdown(incoming, stopped))
            }
        };

        let access = console::Access::new(
            cfg.admin_tokens.clone(),
            cfg.viewer_tokens.clone(),
            tls.is_some(),
        );
        let router = http::router(http::HttpState {
            store: store.clone(),
            metrics: metrics.clone(),
            policy: cfg.policy.clone(),
            ready: ready.clone(),
            engine: compliance.engine().clone(),
        })
        .merge(compliance::http::router(compliance.engine().clone()))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(access.clone()),
            console::guard_api,
        ))
        .merge(console::router(console::ConsoleState::new(
            store.clone(),
            compliance.engine().clone(),
            cfg.policy.clone(),
            access.clone(),
        )));
        let mut stop = shutdown_rx.clone();
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        let http = match &tls {
            Some(tls) => {
                let listener = tls
                    .http_listener(http_listener, metrics.clone(), shutdown_rx.clone())
                    .map_err(|source| ServeError::Bind {
                        addr: cfg.http_addr,
                        source,
                    })?;
                tokio::spawn(async move {
                    axum::serve(listener, router)
                        .with_graceful_shutdown(stopped)
                        .await
                })
            }
            None => tokio::spawn(async move {
                axum::serve(http_listener, router)
                    .with_graceful_shutdown(stopped)
                    .await
            }),
        };

        let rollups = tokio::spawn(rollup_loop(
            writer.handle(),
            cfg.raw_retention,
            cfg.rollup_every,
        ));
        if cfg.admin_credentials().is_open() {
            tracing::warn!(
                "no admin credential (--admin-token or --admin-tokens): anyone who can reach \
                 the gRPC port can change the model registry and acknowledge alerts"
            );
        }
        if access.read_is_open() {
            tracing::warn!(
                "no --viewer-tokens: the console (/ui/) and /api/v1 are readable by anyone who \
                 can reach the HTTP port {http_addr}; keep it on a trusted network or give \
                 --viewer-tokens FILE"
            );
        }
        ready.store(true, Ordering::SeqCst);
        let tls_mode = match &tls {
            Some(t) if t.mutual() => "mutual",
            Some(_) => "on",
            None => "off",
        };
        if let Some(t) = &tls {
            let c = t.certificate();
            tracing::info!(
                certificate = %c.display_name(),
                expires = %flopmeter_tls::utc(c.not_after),
                "TLS on for gRPC and HTTP"
            );
        }
        tracing::info!(%grpc_addr, %http_addr, tls = tls_mode, store = %backend.describe(), "collector serving");
        Ok(Collector {
            grpc_addr,
            http_addr,
            metrics,
            store,
            ready,
            shutdown,
            grpc,
            http,
            rollups,
            writer,
            compliance,
            contender,
            _ledger_changes: ledger_changes,
        })
    }

    /// The compliance engine (evaluate on demand, ack, views).
    pub fn compliance(&self) -> &compliance::Compliance {
        &self.compliance
    }

    /// The bound gRPC address (ingest and admin).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The ledger (for reads; writes go through the writer).
    pub fn store(&self) -> Arc<dyn LedgerStore> {
        self.store.clone()
    }

    /// Graceful shutdown: stop being ready, end agent streams (they get UNAVAILABLE and
    /// reconnect elsewhere or later), stop both servers, let the writer finish and flush
    /// what it was given, and return once the ledger is closed.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        self.ready.store(false, Ordering::SeqCst);
        let _ = self.shutdown.send(true);
        self.rollups.abort();
        self.compliance.stop().await;
        if let Some(contender) = self.contender {
            // The engine has stopped: release the lease, so another replica takes it at its
            // next poll rather than after the ttl.
            let _ = tokio::task::spawn_blocking(move || contender.shutdown()).await;
        }
        let grpc = tokio::time::timeout(SHUTDOWN_GRACE, self.grpc).await;
        let http = tokio::time::timeout(SHUTDOWN_GRACE, self.http).await;
        self.writer.stop().await;
        self.store.flush()?;
        tracing::info!("collector stopped");
        if let Ok(Ok(Err(e))) = grpc {
            return Err(ServeError::Grpc(e));
        }
        if let Ok(Ok(Err(e))) = http {
            return Err(ServeError::Http(e));
        }
        Ok(())
    }
}

/// Periodically rolls raw batches past the retention age into hourly rollups, in bounded
/// steps queued behind ingest.
async fn rollup_loop(writer: writer::WriterHandle, retention: Duration, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        loop {
            let cutoff_unix_ms = now_unix_ms() - retention.as_millis() as i64;
            let r = writer
                .call(|reply| Job::RollUp {
                    cutoff_unix_ms,
                    reply: Some(reply),
                })
                .await;
            match r {
                Ok(Ok(stats)) if stats.more => continue,
                Ok(Ok(_)) => break,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "rollup failed");
                    break;
                }
                Err(_) => return,
            }
        }
    }
}
