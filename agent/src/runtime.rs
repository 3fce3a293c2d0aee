//! Wiring: the agent's threads and tasks, start-up order and the SIGTERM drain.
//!
//! Start-up order matters for the operator: every configuration mistake (bad flag, unusable
//! spool directory, missing NVML driver, `--kube on` without a cluster) fails before anything
//! runs, with one clear message. Shutdown order matters for the data: the sampler stops
//! first and flushes its partial interval into the spool; only then does the shipper get its
//! grace period to deliver what the spool holds; whatever it cannot deliver stays in the spool
//! for the next start.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use crate::agent_id::{self, ResolveError};
use crate::attribution::Attributor;
use crate::attribution::kubernetes::{self, PodStore};
use crate::attribution::slurm;
use crate::attribution::slurm_comments::SlurmComments;
use crate::cluster::ClusterName;
use crate::config::{AgentArgs, AgentConfigError, KubeMode};
use crate::gpu::nvml::{NvmlLibrary, NvmlSource, NvmlSourceError, RetryPolicy};
use crate::gpu::{GpuSource, Inventory};
use crate::metrics::{self, AgentMetrics, HealthConfig, MetricsError};
use crate::sampler::{Replay, RunEnd, Sampler, SamplerConfig};
use crate::shipper::{Shipper, ShipperConfig, ShipperControl};
use crate::simulated::{SimulatedSource, SimulationError, Workload};
use crate::spool::{Spool, SpoolError, SpoolOptions};
use crate::time_source::{RealTime, StopSignal, TimeSource, VirtualTime};

/// Why the agent could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// An option is invalid.
    #[error(transparent)]
    Config(#[from] AgentConfigError),
    /// The spool directory cannot be created.
    #[error("creating the spool directory {path}: {source}")]
    SpoolDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The agent id cannot be established.
    #[error(transparent)]
    AgentId(#[from] ResolveError),
    /// The spool cannot be opened.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The metrics endpoint failed.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// NVML is unusable (no driver, no permission, not NVML).
    #[error(transparent)]
    Nvml(#[from] NvmlSourceError),
    /// The simulated workload is invalid.
    #[error(transparent)]
    Simulation(#[from] SimulationError),
    /// `--kube on`, but no cluster configuration was found.
    #[error("--kube on, but no Kubernetes client could be configured: {0}")]
    Kube(#[source] kube::Error),
    /// The sampler thread died (a bug).
    #[error("the sampler thread stopped unexpectedly")]
    SamplerDied,
}

/// Where GPU readings come from.
#[derive(Debug, Clone)]
pub enum SourceSpec {
    /// NVML through this library.
    Nvml(PathBuf),
    /// A simulated workload.
    Simulated(Workload),
}

/// A change to the shipper's tuning, applied before it starts.
pub type ShipperTweak = Box<dyn FnOnce(&mut ShipperConfig) + Send>;

/// What tests and demos may swap in [`run_with`]. `Default` is what `flopmeter agent` uses.
#[derive(Default)]
pub struct RunOptions {
    /// GPU source; default from the options (`--simulate`, else NVML at `--nvml-lib`).
    pub source: Option<SourceSpec>,
    /// Time source; default real time.
    pub time: Option<Arc<dyn TimeSource>>,
    /// Kubernetes client; when set it is used whatever `--kube` says.
    pub kube_client: Option<kube::Client>,
    /// Told once the agent runs.
    pub ready: Option<oneshot::Sender<Ready>>,
    /// Adjusts the shipper's tuning (tests shorten timeouts).
    pub shipper: Option<ShipperTweak>,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("source", &self.source)
            .field("time", &self.time)
            .field("kube_client", &self.kube_client.is_some())
            .finish_non_exhaustive()
    }
}

/// What a running agent tells [`RunOptions::ready`].
#[derive(Debug, Clone)]
pub struct Ready {
    /// The agent id in use.
    pub agent_id: String,
    /// The node name in use.
    pub node: String,
    /// The bound metrics address (useful with port 0).
    pub metrics_addr: Option<SocketAddr>,
}

/// Runs the agent until `shutdown` resolves, then drains (see the module docs) and returns.
pub async fn run(
    config: AgentArgs,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AgentError> {
    run_with(config, RunOptions::default(), shutdown).await
}

/// The node name: `--node-name`, else `NODE_NAME` (the Kubernetes downward API), else the
/// kernel's host name.
fn node_name(explicit: Option<&str>) -> String {
    explicit
        .map(str::to_string)
        .or_else(|| std::env::var("NODE_NAME").ok())
        .filter(|s| !s.trim().is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown-node".into())
}

/// [`run`] with parts swapped; see [`RunOptions`].
pub async fn run_with(
    config: AgentArgs,
    mut opts: RunOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AgentError> {
    config.validate()?;
    // Read the TLS files before anything starts: an expired certificate stops the agent.
    let client_tls = config.client_tls(flopmeter_tls::unix_now())?;
    let node = node_name(config.node_name.as_deref());

    // Spool and identity.
    std::fs::create_dir_all(&config.spool_dir).map_err(|source| AgentError::SpoolDir {
        path: config.spool_dir.clone(),
        source,
    })?;
    let spool = Arc::new(Spool::open(
        &config.spool_dir.join("spool"),
        SpoolOptions {
            max_bytes: config.spool_max_bytes.0,
            ..SpoolOptions::default()
        },
    )?);
    let replay = config.virtual_clock_start.map(|_| Replay {
        stop_unix_ms: config.virtual_stop,
        hold_when_full: config.virtual_hold_when_full,
    });
    let time: Arc<dyn TimeSource> = match (opts.time.take(), config.virtual_clock_start) {
        (Some(c), _) => c,
        (None, Some(start)) => {
            // Resume where the spooled output ends, so no interval is lost or made twice.
            let at = spool.virtual_pos()?.unwrap_or(start);
            tracing::info!(
                virtual_unix_ms = at,
                speed = ?config.virtual_speed,
                "replay mode (tests and demos only): sampling in virtual time"
            );
            match config.virtual_speed {
                Some(x) => Arc::new(VirtualTime::paced(at, x)),
                None => Arc::new(VirtualTime::new(at)),
            }
        }
        (None, None) => Arc::new(RealTime::new()),
    };
    let spool_used = spool.stats().next_seq > 1;
    let agent_id = agent_id::resolve(&config.spool_dir, config.agent_id.as_ref(), spool_used)?;
    if let Some(cert) = client_tls.identity()
        && !cert.names().iter().any(|n| n == agent_id.as_str())
    {
        tracing::warn!(
            %agent_id,
            certificate = %cert.names().join(", "),
            "a collector with mutual TLS will refuse this agent: its id is not its client \
             certificate's CN or DNS name; set --agent-id to that name"
        );
    }
    let metrics = Arc::new(AgentMetrics::new()?);

    // GPU source.
    let mut proc_root = config.proc_root.clone();
    let source = match opts.source.take() {
        Some(s) => s,
        None => match &config.simulate {
            Some(path) => {
                let w = Workload::load(path)?;
                if w.processes.iter().any(|p| !p.env.is_empty()) {
                    // The simulated processes do not exist; give the attributor a proc
                    // tree where they do.
                    let root = config.spool_dir.join("simulated-proc");
                    w.write_proc_tree(&root)?;
                    proc_root = root;
                }
                SourceSpec::Simulated(w)
            }
            None => SourceSpec::Nvml(config.nvml_lib.clone()),
        },
    };

    // Kubernetes.
    let kube_client = match (opts.kube_client.take(), config.kube) {
        (Some(c), _) => Some(c),
        (None, KubeMode::Off) => None,
        (None, KubeMode::On) => Some(
            kube::Client::try_default()
                .await
                .map_err(AgentError::Kube)?,
        ),
        (None, KubeMode::Auto) => {
            if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
                match kube::Client::try_default().await {
                    Ok(c) => Some(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "in a pod, but no Kubernetes client: pod labels off");
                        None
                    }
                }
            } else {
                None
            }
        }
    };
    let pods = kube_client.as_ref().map(|_| PodStore::new());
    let kube_task = match (kube_client, &pods) {
        (Some(client), Some(store)) => {
            tracing::info!(node = %node, "watching this node's pods for flopmeter.io/* labels");
            Some(tokio::spawn(kubernetes::watch_pods(
                client,
                node.clone(),
                store.clone(),
            )))
        }
        _ => None,
    };

    // The node's Slurm name is looked up only when the operator named no cluster.
    let cluster_name = ClusterName::new(
        config.cluster.clone(),
        config
            .cluster
            .is_none()
            .then(slurm::local_cluster_name)
            .flatten(),
    );

    // Sampler thread.
    let sampler = Sampler::new(
        SamplerConfig {
            sample_interval: config.sample_interval.0,
            report_interval: config.report_interval.0,
            unknown_gpu_peak_tflops: config.unknown_gpu_peak_tflops,
            replay,
            cluster: cluster_name.clone(),
            ..SamplerConfig::default()
        },
        Attributor::new(proc_root, pods)
            .with_slurm_comments(SlurmComments::new(config.slurm_comments())),
        spool.clone(),
        metrics.clone(),
    );
    let stop = StopSignal::new();
    let (inventory_tx, inventory_rx) = watch::channel::<Option<Inventory>>(None);
    let (init_tx, init_rx) = oneshot::channel::<Result<(), AgentError>>();
    let (done_tx, mut done_rx) = oneshot::channel::<RunEnd>();
    {
        let time = time.clone();
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("flopmeter-sampler".into())
            .spawn(move || {
                if let Some(end) =
                    sampler_thread(sampler, source, time, stop, inventory_tx, init_tx)
                {
                    let _ = done_tx.send(end);
                }
            })
            .map_err(|source| AgentError::SpoolDir {
                path: PathBuf::from("<sampler thread>"),
                source,
            })?;
    }
    match init_rx.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(AgentError::SamplerDied),
    }

    // Metrics endpoint.
    let (http_stop_tx, mut http_stop_rx) = watch::channel(false);
    let mut metrics_addr = None;
    let http_task = match config.metrics_socket()? {
        Some(addr) => {
            let listener = metrics::bind(addr).await?;
            metrics_addr = listener.local_addr().ok();
            tracing::info!(addr = ?metrics_addr, "serving /metrics and /healthz");
            let health = HealthConfig {
                max_tick_age: (config.sample_interval.0 * 5).max(Duration::from_secs(10)),
            };
            Some(tokio::spawn(metrics::serve(
                listener,
                metrics.clone(),
                spool.clone(),
                health,
                async move {
                    let _ = http_stop_rx.wait_for(|s| *s).await;
                },
            )))
        }
        None => None,
    };

    // Shipper.
    let mut ship_cfg =
        ShipperConfig::new(config.collector.clone(), agent_id.to_string(), node.clone());
    ship_cfg.agent_token = config.agent_token.clone();
    ship_cfg.tls = client_tls;
    ship_cfg.operator_peak_tflops = config.unknown_gpu_peak_tflops;
    ship_cfg.cluster = cluster_name.of_node().to_string();
    if replay.is_some() {
        // Replay runs against test and demo collectors that restart in seconds; a 30 s
        // backoff would only add idle time to every restart.
        ship_cfg.backoff_max = ship_cfg.backoff_max.min(Duration::from_secs(2));
    }
    if let Some(tweak) = opts.shipper.take() {
        tweak(&mut ship_cfg);
    }
    let (control_tx, control_rx) = watch::channel(ShipperControl::Run);
    let cluster = ship_cfg.cluster.clone();
    let shipper = Shipper::new(
        ship_cfg,
        spool.clone(),
        metrics.clone(),
        inventory_rx,
        time.clone(),
    );
    let shipper_task = tokio::spawn(shipper.run(control_rx));

    tracing::info!(
        agent_id = %agent_id,
        node = %node,
        cluster = %cluster,
        collector = %config.collector,
        spool = %spool.path().display(),
        "agent running"
    );
    if let Some(ready) = opts.ready.take() {
        let _ = ready.send(Ready {
            agent_id: agent_id.to_string(),
            node: node.clone(),
            metrics_addr,
        });
    }

    // Run until told to stop (or the sampler dies).
    tokio::pin!(shutdown);
    let mut sampler_died = false;
    let mut sampler_done = false;
    tokio::select! {
        _ = &mut shutdown => {}
        end = &mut done_rx => {
            sampler_done = true;
            sampler_died = !matches!(end, Ok(RunEnd::ReplayDone));
        }
    }
    if sampler_done && !sampler_died {
        tracing::info!("replay reached --virtual-stop; shipping what the spool holds");
        let exit = config.virtual_exit_when_drained;
        tokio::select! {
            _ = &mut shutdown => {}
            _ = spool_drained(&spool), if exit => {
                tracing::info!("every record acknowledged; exiting (--virtual-exit-when-drained)");
            }
        }
    }
    tracing::info!("stopping: flushing the partial interval into the spool");
    stop.raise();
    if !sampler_done {
        // The sampler's last act is the final flush; wait for it before draining.
        let _ = done_rx.await;
    }
    let grace = config.drain_grace.0;
    let pending = spool.stats().records;
    if pending > 0 {
        tracing::info!(records = pending, grace = ?grace, "draining the spool to the collector");
    }
    let _ = control_tx.send(ShipperControl::Drain {
        deadline: tokio::time::Instant::now() + grace,
    });
    let _ = shipper_task.await;
    let left = spool.stats().records;
    if left > 0 {
        tracing::warn!(
            records = left,
            "records not yet acknowledged stay in the spool and are sent on the next start"
        );
    }
    let _ = http_stop_tx.send(true);
    if let Some(t) = http_task {
        let _ = t.await;
    }
    if let Some(t) = kube_task {
        t.abort();
    }
    if sampler_died {
        return Err(AgentError::SamplerDied);
    }
    tracing::info!("agent stopped");
    Ok(())
}

/// Resolves once the spool holds no record (everything acknowledged).
async fn spool_drained(spool: &Spool) {
    while spool.stats().records > 0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The sampler thread's body: open the source (reporting the outcome on `init`), then
/// sample until stopped. `None` when the source could not be opened.
fn sampler_thread(
    mut sampler: Sampler,
    source: SourceSpec,
    time: Arc<dyn TimeSource>,
    stop: StopSignal,
    inventory: watch::Sender<Option<Inventory>>,
    init: oneshot::Sender<Result<(), AgentError>>,
) -> Option<RunEnd> {
    let mut body = |src: &mut dyn GpuSource| {
        tracing::info!(
            gpus = src.inventory().gpus.len(),
            driver = src
                .inventory()
                .driver_version
                .as_deref()
                .unwrap_or("unknown"),
            "GPU source ready"
        );
        inventory.send_replace(Some(src.inventory().clone()));
        sampler.run(src, time.as_ref(), &stop, &inventory)
    };
    match source {
        SourceSpec::Nvml(path) => {
            let lib = match open_nvml(&path) {
                Ok(l) => l,
                Err(e) => {
                    let _ = init.send(Err(e));
                    return None;
                }
            };
            let mut src = match NvmlSource::new(&lib, RetryPolicy::default()) {
                Ok(s) => s,
                Err(e) => {
                    let _ = init.send(Err(e.into()));
                    return None;
                }
            };
            let _ = init.send(Ok(()));
            Some(body(&mut src))
        }
        SourceSpec::Simulated(w) => {
            let mut src = match SimulatedSource::new(w) {
                Ok(s) => s,
                Err(e) => {
                    let _ = init.send(Err(e.into()));
                    return None;
                }
            };
            let _ = init.send(Ok(()));
            Some(body(&mut src))
        }
    }
}

fn open_nvml(path: &Path) -> Result<NvmlLibrary, AgentError> {
    Ok(NvmlLibrary::open(path)?)
}
