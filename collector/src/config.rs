//! `flopmeter collector` configuration: the clap arguments (every flag also from a
//! `FLOPMETER_*` variable and, through the binary's config-file layer, from TOML) and the
//! resolved [`CollectorConfig`] the server runs with.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flopmeter_core::agent_id::{AgentId, AgentIdError};
use flopmeter_core::stage::{Stage, StagePolicy};
use flopmeter_core::threshold_config::{ThresholdConfig, ThresholdConfigError};
use serde::Serialize;

use crate::admin::credentials::AdminCredentials;
use crate::ingest::validate::Limits;

/// Errors resolving the collector's configuration (its flags and the files they name).
#[derive(Debug, thiserror::Error)]
pub enum CollectorConfigError {
    /// A tokens file could not be read.
    #[error("cannot read {kind} tokens file {path}: {source}")]
    TokensRead {
        /// Which file.
        kind: TokensFile,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A tokens file is not TOML.
    #[error("{kind} tokens file {path} must be a TOML table `{key} = \"token\"`: {source}", key = kind.key())]
    TokensToml {
        /// Which file.
        kind: TokensFile,
        /// The file.
        path: PathBuf,
        /// The parser's error (line and column).
        #[source]
        source: toml::de::Error,
    },
    /// A tokens file breaks one of its rules: a value that is not a string, an empty token,
    /// one token for two names, a name that cannot be used.
    #[error("{kind} tokens file {path} must be a TOML table `{key} = \"token\"`: {problem}", key = kind.key())]
    TokensInvalid {
        /// Which file.
        kind: TokensFile,
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the entry.
        problem: String,
    },
    /// A name in the agent tokens file is not an agent id, so no agent could ever use it.
    #[error("agent tokens file {path}: {source}")]
    TokensAgentId {
        /// The file.
        path: PathBuf,
        /// Why the name is not an agent id.
        #[source]
        source: AgentIdError,
    },
    /// The thresholds file could not be read.
    #[error("cannot read thresholds file {path}: {source}")]
    ThresholdsRead {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The thresholds file is not TOML of the thresholds' shape.
    #[error("thresholds file {path}: {source}")]
    ThresholdsToml {
        /// The file.
        path: PathBuf,
        /// The parser's error (line, column, key).
        #[source]
        source: toml::de::Error,
    },
    /// The thresholds file parses but does not resolve (an unknown threshold, two levels).
    #[error("thresholds file {path}: {source}")]
    Thresholds {
        /// The file.
        path: PathBuf,
        /// What the rules found.
        #[source]
        source: ThresholdConfigError,
    },
    /// A value is out of range, or flags contradict each other.
    #[error("{0}")]
    Invalid(String),
}

/// Which tokens file an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokensFile {
    /// `--agent-tokens`: agent id → token.
    Agent,
    /// `--admin-tokens`: actor → token.
    Admin,
    /// `--viewer-tokens`: viewer → token.
    Viewer,
}

impl TokensFile {
    /// What a key of the file names.
    fn key(self) -> &'static str {
        match self {
            TokensFile::Agent => "agent-id",
            TokensFile::Admin | TokensFile::Viewer => "name",
        }
    }
}

impl std::fmt::Display for TokensFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokensFile::Agent => "agent",
            TokensFile::Admin => "admin",
            TokensFile::Viewer => "viewer",
        })
    }
}

pub use flopmeter_core::duration::HumanDuration;

/// The `--help` heading of the PostgreSQL flags.
const PG_HEADING: &str = "PostgreSQL (one ledger for several collectors)";

/// Log output format: the one type the agent and the collector share.
pub use flopmeter_args::LogFormat;

/// Options of `flopmeter collector`.
#[derive(Debug, Clone, clap::Args, Serialize)]
#[serde(rename_all = "kebab-case")]
#[command(after_help = "\
The collector is the system of record: it applies each agent's records exactly once, in
sequence order, acknowledges them only once they are on disk, and keeps per-run and per-model
totals that `flopmeter ledger verify` can recompute from the raw records.

Agent tokens file (TOML), checked against `authorization: Bearer <token>`:
  node-a-agent = \"s3cret\"
  node-b-agent = \"an0ther\"

TLS (docs/tls.md): --tls-cert and --tls-key serve both ports over TLS; --tls-client-ca adds
mutual TLS, where an agent's id must be its certificate's CN or DNS name. `flopmeter certs dev`
writes a development CA and certificates.

Examples:
  flopmeter collector --data-dir /var/lib/flopmeter/ledger
  flopmeter collector --data-dir ./ledger --tls-cert certs/collector.pem \\
      --tls-key certs/collector-key.pem --tls-client-ca certs/ca.pem
  flopmeter collector --data-dir ./ledger --listen 127.0.0.1:7443 --http-addr 127.0.0.1:9464 \\
      --agent-tokens tokens.toml --exclude-stages research,eval

PostgreSQL (docs/deploy.md §7): with --store, every replica serves ingest, the API, the console
and /metrics, and the one holding the engine lease runs the compliance engine. Person actions
(ack, dismiss) on another replica are refused with UNAVAILABLE (HTTP 503) naming the leader;
the CLI retries them. Model-level metrics come from the leader only; every replica exports
flopmeter_compliance_leader (1 on the leader).
  FLOPMETER_STORE='postgres://flopmeter:PASSWORD@db.example:5432/flopmeter?sslmode=verify-full&sslrootcert=/etc/flopmeter/pg-ca/ca.crt' \\
      flopmeter collector --replica-name \"$(hostname)\"")]
pub struct CollectorArgs {
    /// Directory of the ledger (a sled database). One collector process per directory. Not
    /// used with --store.
    #[arg(
        long,
        env = "FLOPMETER_DATA_DIR",
        value_name = "DIR",
        default_value = "/var/lib/flopmeter/collector"
    )]
    pub data_dir: PathBuf,

    /// gRPC address for agents (ingest) and the admin API.
    #[arg(
        long,
        env = "FLOPMETER_LISTEN",
        value_name = "ADDR",
        default_value = "0.0.0.0:7443"
    )]
    pub listen: SocketAddr,

    /// HTTP address for /metrics, /healthz, /readyz and the /api/v1 JSON API.
    #[arg(
        long,
        env = "FLOPMETER_HTTP_ADDR",
        value_name = "ADDR",
        default_value = "0.0.0.0:9464"
    )]
    pub http_addr: SocketAddr,

    /// TOML file mapping agent id to token. When given, every agent must present its token
    /// (`authorization: Bearer <token>`); unknown agents are refused (UNAUTHENTICATED).
    #[arg(long, env = "FLOPMETER_AGENT_TOKENS", value_name = "FILE")]
    pub agent_tokens: Option<PathBuf>,

    /// Shared token the admin write RPCs (model registry changes, ack, dismiss) require.
    /// Whoever holds it must name themselves (`--by`), and the audit log records that name.
    /// Without it or --admin-tokens, those RPCs are open to anyone who can reach --listen.
    #[arg(
        long,
        env = "FLOPMETER_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    #[serde(skip_serializing)]
    pub admin_token: Option<String>,

    /// TOML file mapping admin actor to token (`alice = "…"`), for admin writes audited under
    /// the actor the credential belongs to rather than the name the caller gives. These are
    /// also the logins that may acknowledge and dismiss alerts in the console (/ui/).
    #[arg(long, env = "FLOPMETER_ADMIN_TOKENS", value_name = "FILE")]
    pub admin_tokens: Option<PathBuf>,

    /// TOML file mapping viewer name to token (`victor = "…"`). When given, the console
    /// (/ui/) and /api/v1 need a viewer's or an admin's token (a console login, or
    /// `Authorization: Bearer`); without it they are open to anyone who can reach
    /// --http-addr (the collector warns). /metrics, /healthz and /readyz stay open.
    #[arg(long, env = "FLOPMETER_VIEWER_TOKENS", value_name = "FILE")]
    pub viewer_tokens: Option<PathBuf>,

    /// Actor under which a change of the thresholds file is audited (the file is read at
    /// start): e.g. the deploy pipeline's user or the commit that changed it.
    #[arg(
        long,
        env = "FLOPMETER_CONFIG_ACTOR",
        value_name = "NAME",
        default_value = "collector-config"
    )]
    pub config_actor: String,

    /// Age after which raw record batches are rolled into hourly per-run rollups (kept for
    /// ever; totals do not change).
    #[arg(
        long,
        env = "FLOPMETER_RAW_RETENTION",
        value_name = "DURATION",
        default_value = "90d"
    )]
    pub raw_retention: HumanDuration,

    /// How often to look for raw batches past the retention age.
    #[arg(
        long,
        env = "FLOPMETER_ROLLUP_EVERY",
        value_name = "DURATION",
        default_value = "1h"
    )]
    pub rollup_every: HumanDuration,

    /// Stages that count toward the regulatory total, in addition to the defaults
    /// (pretrain, finetune, rl, synthetic-data). Comma-separated.
    #[arg(
        long,
        env = "FLOPMETER_COUNT_STAGES",
        value_name = "STAGE,...",
        value_delimiter = ','
    )]
    pub count_stages: Vec<String>,

    /// Stages excluded from the regulatory total, in addition to the defaults (eval,
    /// reward-model, distillation-teacher, research). Excluded compute stays visible.
    #[arg(
        long,
        env = "FLOPMETER_EXCLUDE_STAGES",
        value_name = "STAGE,...",
        value_delimiter = ','
    )]
    pub exclude_stages: Vec<String>,

    /// Whether a stage name the policy does not know counts (default true: a typo of a
    /// counting stage must not hide compute).
    #[arg(
        long,
        env = "FLOPMETER_UNKNOWN_STAGES_COUNT",
        value_name = "BOOL",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub unknown_stages_count: bool,

    /// A record's FLOP may exceed its GPU's physical ceiling × interval by this factor
    /// before it is rejected.
    #[arg(
        long,
        env = "FLOPMETER_PEAK_TOLERANCE",
        value_name = "FACTOR",
        default_value_t = 1.05
    )]
    pub peak_tolerance: f64,

    /// Longest interval one record may cover.
    #[arg(
        long,
        env = "FLOPMETER_MAX_INTERVAL",
        value_name = "DURATION",
        default_value = "1h"
    )]
    pub max_interval: HumanDuration,

    /// How far ahead of the collector's clock an event may end (clock skew allowance).
    #[arg(
        long,
        env = "FLOPMETER_MAX_FUTURE",
        value_name = "DURATION",
        default_value = "5m"
    )]
    pub max_future: HumanDuration,

    /// How far behind the collector's clock an event may start. Older records are
    /// quarantined (`event-time-too-old`) and counted: an agent with a clock decades off
    /// must not write facts, such as the start of a notification clock, that can never be
    /// moved. Long enough for a node cut off for weeks to backfill its spool.
    #[arg(
        long,
        env = "FLOPMETER_BACKFILL_WINDOW",
        value_name = "DURATION",
        default_value = "90d"
    )]
    pub backfill_window: HumanDuration,

    /// How long a new connection may stay silent, and then a new agent stream before its
    /// Hello: connections that never speak are closed and counted
    /// (`flopmeter_ingest_refused_total{reason="hello-timeout"}`).
    #[arg(
        long,
        env = "FLOPMETER_HELLO_TIMEOUT",
        value_name = "DURATION",
        default_value = "30s"
    )]
    pub hello_timeout: HumanDuration,

    /// How long an agent stream may go without a message after its Hello before the
    /// collector ends it (the agent reconnects when it has records). Keep it well above the
    /// agents' report interval.
    #[arg(
        long,
        env = "FLOPMETER_IDLE_TIMEOUT",
        value_name = "DURATION",
        default_value = "10m"
    )]
    pub idle_timeout: HumanDuration,

    /// Models that get /metrics series of their own: those with the most counted FLOP (and,
    /// for the compliance gauges, the largest projections, plus every model with a clock or
    /// an alert). The rest are summed under model="_other". Bounds the exposition whatever
    /// the number of models.
    #[arg(
        long,
        env = "FLOPMETER_METRICS_MAX_MODELS",
        value_name = "N",
        default_value_t = crate::metrics::DEFAULT_MAX_MODEL_SERIES
    )]
    pub metrics_max_models: usize,

    /// Runs that get /metrics series of their own: those that reported most recently. The
    /// rest are summed under model="_other", run="_other".
    #[arg(
        long,
        env = "FLOPMETER_METRICS_MAX_RUNS",
        value_name = "N",
        default_value_t = crate::metrics::DEFAULT_MAX_RUN_SERIES
    )]
    pub metrics_max_runs: usize,

    /// New runs (a new model brings a new run) one agent may start per hour; records of
    /// further new runs are quarantined (`too-many-new-runs`) and counted. Bounds how fast
    /// one agent can grow the ledger and the collector's memory. 0: no limit.
    #[arg(
        long,
        env = "FLOPMETER_NEW_RUNS_PER_AGENT_PER_HOUR",
        value_name = "N",
        default_value_t = crate::newruns::DEFAULT_NEW_RUNS_PER_HOUR
    )]
    pub new_runs_per_agent_per_hour: u32,

    /// Largest gRPC message an agent may send (a Hello or a record batch), bytes. A bigger
    /// one is refused with RESOURCE_EXHAUSTED before it is read into memory. Keep it well
    /// above the agents' batch size (about 1 MiB by default).
    #[arg(
        long,
        env = "FLOPMETER_MAX_MESSAGE_BYTES",
        value_name = "BYTES",
        default_value_t = crate::MAX_MESSAGE_BYTES
    )]
    pub max_message_bytes: usize,

    /// Ledger page cache, MiB. The writer keeps the aggregates it works on decoded itself,
    /// so a larger cache adds memory, not ingest speed (64 and 256 MiB both sustained about
    /// 105,000 records/s in `flopmeter loadgen --max`, at 183 and 406 MiB of RSS).
    #[arg(
        long,
        env = "FLOPMETER_LEDGER_CACHE_MB",
        value_name = "MIB",
        default_value_t = 64
    )]
    pub ledger_cache_mb: u64,

    /// Free space the ledger's volume must keep, MiB. Below it the collector stops
    /// acknowledging (agents keep their records) and counts
    /// flopmeter_ledger_write_errors_total, and resumes by itself once there is room: the
    /// storage engine never reaches a full disk, which it does not recover from cleanly.
    #[arg(
        long,
        env = "FLOPMETER_MIN_FREE_MB",
        value_name = "MIB",
        default_value_t = 512
    )]
    pub min_free_mb: u64,

    /// Most batches made durable by one flush (group commit).
    #[arg(
        long,
        env = "FLOPMETER_COMMIT_GROUP",
        value_name = "N",
        default_value_t = 1024
    )]
    pub commit_group: usize,

    /// Log format.
    #[arg(
        long,
        env = "FLOPMETER_LOG_FORMAT",
        value_name = "FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// Threshold configuration (TOML: `decision_bound = "high"` and `[thresholds.<id>]`
    /// tables that change, add or disable thresholds). Changes are recorded in the audit log.
    #[arg(long, env = "FLOPMETER_THRESHOLDS", value_name = "FILE")]
    pub thresholds: Option<PathBuf>,

    /// Alertmanager base URL (plain http), e.g. http://alertmanager:9093. Repeatable.
    #[arg(long, env = "FLOPMETER_ALERTMANAGER_URL", value_name = "URL")]
    pub alertmanager_url: Vec<String>,

    /// Webhook URL receiving signed JSON alerts (plain http). Repeatable.
    #[arg(long, env = "FLOPMETER_WEBHOOK_URL", value_name = "URL")]
    pub webhook_url: Vec<String>,

    /// HMAC-SHA256 key for the `X-Flopmeter-Signature` header of webhook deliveries.
    #[arg(
        long,
        env = "FLOPMETER_WEBHOOK_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    #[serde(skip_serializing)]
    pub webhook_secret: Option<String>,

    /// Serve gRPC and HTTP over TLS with this certificate (PEM, leaf first, then any
    /// intermediates). Needs --tls-key. Agents then use --collector https://... and
    /// --tls-ca. See docs/tls.md; `flopmeter certs dev` makes a local set.
    #[arg(long, env = "FLOPMETER_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "FLOPMETER_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// Mutual TLS: verify client certificates against this CA (PEM), and take each agent's
    /// identity from its certificate (the Hello's agent id must be the certificate's CN or
    /// one of its DNS names). The CLI may still connect without a certificate; the admin
    /// token guards its writes.
    #[arg(long, env = "FLOPMETER_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,

    /// Keep the ledger and the compliance state in PostgreSQL instead of --data-dir, so that
    /// several collectors (replicas, or one per cluster) share one ledger. A URL:
    /// postgres://USER:PASSWORD@HOST:5432/DATABASE?sslmode=verify-full&sslrootcert=CA.pem
    /// (postgresql:// too; the key=value form is not read). Percent-encode special characters
    /// of the password (? is %3F), and a Unix socket directory as the host
    /// (postgres://USER@%2Frun%2Fpostgresql/DATABASE). The user must own the database: the
    /// collector applies its schema migrations at start. Logs never show the password.
    /// Without --store: sled in --data-dir, one collector per directory.
    #[arg(
        long,
        env = "FLOPMETER_STORE",
        value_name = "URL",
        hide_env_values = true,
        help_heading = PG_HEADING
    )]
    #[serde(skip_serializing)]
    pub store: Option<String>,

    /// This collector's name among the replicas sharing --store: the holder the engine
    /// lease, the logs and a refused acknowledgement name. Unique per replica (the pod's name
    /// in Kubernetes). Default: host name, "-", process id.
    #[arg(
        long,
        env = "FLOPMETER_REPLICA_NAME",
        value_name = "NAME",
        help_heading = PG_HEADING
    )]
    pub replica_name: Option<String>,

    /// With --store, one replica at a time runs the compliance engine (clock starts, alerts,
    /// deliveries, the audit chain): the holder of a lease in the database, which it holds
    /// for this long after each renewal. A leader that dies is replaced at most
    /// --lease-ttl + --lease-poll-every after its last renewal (20 s by default).
    #[arg(
        long,
        env = "FLOPMETER_LEASE_TTL",
        value_name = "DURATION",
        default_value = "15s",
        help_heading = PG_HEADING
    )]
    pub lease_ttl: HumanDuration,

    /// How often the leader renews the lease: at most a third of --lease-ttl, so that two
    /// failed renewals in a row do not lose it.
    #[arg(
        long,
        env = "FLOPMETER_LEASE_RENEW_EVERY",
        value_name = "DURATION",
        default_value = "5s",
        help_heading = PG_HEADING
    )]
    pub lease_renew_every: HumanDuration,

    /// How often a replica that does not lead tries to take the lease (at most --lease-ttl).
    /// A leader stopped cleanly releases it, and another replica takes it at its next try.
    #[arg(
        long,
        env = "FLOPMETER_LEASE_POLL_EVERY",
        value_name = "DURATION",
        default_value = "5s",
        help_heading = PG_HEADING
    )]
    pub lease_poll_every: HumanDuration,

    /// PostgreSQL connections this collector opens at most (the lease uses one more of its
    /// own). Count this per replica, over every cluster's collectors, against the server's
    /// max_connections.
    #[arg(
        long,
        env = "FLOPMETER_STORE_POOL_SIZE",
        value_name = "N",
        default_value_t = 8,
        help_heading = PG_HEADING
    )]
    pub store_pool_size: usize,

    /// Once both listeners serve, write their bound addresses to this file as JSON
    /// (`{"grpc": "127.0.0.1:41234", "http": "127.0.0.1:41235"}`), replacing it atomically;
    /// removed again at a clean shutdown. With port 0 in --listen or --http-addr this is how
    /// a supervisor, a script or a test learns the ports the kernel chose.
    #[arg(long, env = "FLOPMETER_READY_FILE", value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
}

/// The resolved configuration the collector runs with.
#[derive(Clone)]
pub struct CollectorConfig {
    /// Ledger directory.
    pub data_dir: PathBuf,
    /// gRPC address (port 0 picks a free port).
    pub listen: SocketAddr,
    /// HTTP address (port 0 picks a free port).
    pub http_addr: SocketAddr,
    /// Agent id → token, when tokens are required.
    pub agent_tokens: Option<HashMap<String, String>>,
    /// Shared admin token for write RPCs.
    pub admin_token: Option<String>,
    /// Named admin tokens, actor → token.
    pub admin_tokens: HashMap<String, String>,
    /// Viewer tokens (read access to the console and /api/v1), name → token; empty = open.
    pub viewer_tokens: HashMap<String, String>,
    /// Raw batches older than this are rolled up.
    pub raw_retention: Duration,
    /// Rollup sweep period.
    pub rollup_every: Duration,
    /// Which stages count.
    pub policy: StagePolicy,
    /// Validation limits.
    pub limits: Limits,
    /// Batches per flush, at most.
    pub commit_group: usize,
    /// Ledger page cache, bytes.
    pub cache_bytes: u64,
    /// Free space the ledger's volume keeps; below it nothing is written or acknowledged.
    pub min_free_bytes: u64,
    /// Jobs waiting for the writer, at most (backpressure beyond).
    pub writer_queue: usize,
    /// Largest inbound gRPC message, bytes.
    pub max_message_bytes: usize,
    /// A connection's first byte, and a stream's Hello, must come within this.
    pub hello_timeout: Duration,
    /// An agent stream silent for this long after its Hello is ended.
    pub idle_timeout: Duration,
    /// Models and runs with /metrics series of their own.
    pub metrics_max_models: usize,
    /// See [`CollectorConfig::metrics_max_models`].
    pub metrics_max_runs: usize,
    /// New runs per agent per hour (0: no limit).
    pub new_runs_per_agent_per_hour: u32,
    /// The compliance engine: thresholds, sinks, its clock.
    pub compliance: crate::compliance::ComplianceConfig,
    /// TLS for both listeners (and mutual TLS), when set.
    pub tls: Option<crate::tls::TlsPaths>,
    /// Test-only hooks (`crate::failpoint`); all off unless a test arms them.
    pub failpoints: crate::failpoint::Failpoints,
    /// PostgreSQL (`--store`) and this replica's part in the engine lease; `None`: sled in
    /// `data_dir`.
    pub store: Option<SharedStore>,
}

/// A collector on PostgreSQL: where, and how it contends for the compliance engine.
#[derive(Debug, Clone)]
pub struct SharedStore {
    /// The DSN (`Display` hides the password).
    pub dsn: flopmeter_pg::Dsn,
    /// Pool size.
    pub pool_size: usize,
    /// The engine lease: this replica's name and the timing, validated.
    pub lease: flopmeter_pg::LeaseConfig,
}

impl CollectorConfig {
    /// The storage backend this configuration names.
    pub fn backend(&self) -> crate::storage::Backend {
        match &self.store {
            Some(s) => crate::storage::Backend::Postgres {
                dsn: Box::new(s.dsn.clone()),
                pool_size: s.pool_size,
            },
            None => crate::storage::Backend::Embedded {
                data_dir: self.data_dir.clone(),
                cache_bytes: self.cache_bytes,
            },
        }
    }

    /// The engine lease's settings (a sole collector on sled ignores them).
    pub fn lease(&self) -> flopmeter_pg::LeaseConfig {
        match &self.store {
            Some(s) => s.lease.clone(),
            None => flopmeter_pg::LeaseConfig::engine(default_replica_name()),
        }
    }
}

/// Host name, "-", process id: unique among replicas on different hosts, and among processes
/// on one host.
pub fn default_replica_name() -> String {
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    let host = if host.is_empty() {
        "collector".into()
    } else {
        host
    };
    format!("{host}-{}", std::process::id())
}

/// `--store` and the lease flags, checked: a DSN that cannot be used or timing the lease
/// cannot keep is refused at start with what to change.
fn shared_store(a: &CollectorArgs) -> Result<Option<SharedStore>, CollectorConfigError> {
    let Some(url) = a.store.as_deref().filter(|s| !s.trim().is_empty()) else {
        return Ok(None);
    };
    let dsn = flopmeter_pg::Dsn::parse(url.trim())
        .map_err(|e| CollectorConfigError::Invalid(format!("--store: {e}")))?;
    if a.store_pool_size == 0 {
        return Err(CollectorConfigError::Invalid(
            "--store-pool-size must be at least 1".into(),
        ));
    }
    let holder = match a.replica_name.as_deref().map(str::trim) {
        Some(name) if !name.is_empty() => name.to_string(),
        _ => default_replica_name(),
    };
    let lease = flopmeter_pg::LeaseConfig {
        ttl: a.lease_ttl.0,
        renew_every: a.lease_renew_every.0,
        poll_every: a.lease_poll_every.0,
        ..flopmeter_pg::LeaseConfig::engine(holder)
    };
    lease.validate().map_err(|e| {
        CollectorConfigError::Invalid(format!(
            "{e} (--replica-name {:?}, --lease-ttl {}, --lease-renew-every {}, \
             --lease-poll-every {}): the ttl between 100ms and 1h, renewals at most a third of \
             it, polls at most the ttl",
            lease.holder, a.lease_ttl, a.lease_renew_every, a.lease_poll_every
        ))
    })?;
    Ok(Some(SharedStore {
        dsn,
        pool_size: a.store_pool_size,
        lease,
    }))
}

impl fmt::Debug for CollectorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Tokens stay out of logs.
        f.debug_struct("CollectorConfig")
            .field("data_dir", &self.data_dir)
            .field("listen", &self.listen)
            .field("http_addr", &self.http_addr)
            .field("agent_tokens", &self.agent_tokens.as_ref().map(|t| t.len()))
            .field("admin", &self.admin_credentials())
            .field("viewers", &self.viewer_tokens.len())
            .field("raw_retention", &self.raw_retention)
            .field("policy", &self.policy)
            .field("limits", &self.limits)
            .field("tls", &self.tls)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl CollectorConfig {
    /// The admin credentials the write RPCs check.
    pub fn admin_credentials(&self) -> AdminCredentials {
        AdminCredentials::new(self.admin_token.clone(), self.admin_tokens.clone())
    }

    /// Defaults for a ledger in `dir`, listening on loopback ports the OS picks (tests,
    /// embedding).
    pub fn for_data_dir(dir: &Path) -> CollectorConfig {
        CollectorConfig {
            data_dir: dir.to_path_buf(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            agent_tokens: None,
            admin_token: None,
            admin_tokens: HashMap::new(),
            viewer_tokens: HashMap::new(),
            raw_retention: flopmeter_core::utc::days_duration(90),
            rollup_every: Duration::from_secs(flopmeter_core::utc::SECONDS_PER_HOUR),
            policy: StagePolicy::default(),
            limits: Limits::default(),
            commit_group: 1024,
            cache_bytes: 64 << 20,
            min_free_bytes: 0,
            writer_queue: 8192,
            max_message_bytes: crate::MAX_MESSAGE_BYTES,
            hello_timeout: crate::conn::DEFAULT_HELLO_TIMEOUT,
            idle_timeout: crate::conn::DEFAULT_IDLE_TIMEOUT,
            metrics_max_models: crate::metrics::DEFAULT_MAX_MODEL_SERIES,
            metrics_max_runs: crate::metrics::DEFAULT_MAX_RUN_SERIES,
            new_runs_per_agent_per_hour: crate::newruns::DEFAULT_NEW_RUNS_PER_HOUR,
            compliance: crate::compliance::ComplianceConfig::default(),
            tls: None,
            failpoints: Default::default(),
            store: None,
        }
    }

    /// Resolves the command-line arguments (reads the tokens file).
    pub fn from_args(a: &CollectorArgs) -> Result<CollectorConfig, CollectorConfigError> {
        if !(a.peak_tolerance.is_finite() && a.peak_tolerance >= 1.0) {
            return Err(CollectorConfigError::Invalid(format!(
                "--peak-tolerance must be at least 1.0, got {}",
                a.peak_tolerance
            )));
        }
        // Below this a normal Hello or a one-record batch no longer fits.
        if a.max_message_bytes < 4096 {
            return Err(CollectorConfigError::Invalid(format!(
                "--max-message-bytes must be at least 4096, got {}",
                a.max_message_bytes
            )));
        }
        if a.hello_timeout.0.is_zero() || a.idle_timeout.0.is_zero() {
            return Err(CollectorConfigError::Invalid(
                "--hello-timeout and --idle-timeout must be above 0".into(),
            ));
        }
        if a.rollup_every.0.is_zero() {
            return Err(CollectorConfigError::Invalid(
                "--rollup-every must be above 0".into(),
            ));
        }
        // Checked here rather than by clap, so values from the config file count too.
        if a.tls_cert.is_some() != a.tls_key.is_some() {
            return Err(CollectorConfigError::Invalid(
                "--tls-cert and --tls-key go together: give both or neither".into(),
            ));
        }
        if a.tls_client_ca.is_some() && a.tls_cert.is_none() {
            return Err(CollectorConfigError::Invalid(
                "--tls-client-ca (mutual TLS) needs TLS: give --tls-cert and --tls-key too".into(),
            ));
        }
        let agent_tokens = a
            .agent_tokens
            .as_deref()
            .map(load_agent_tokens)
            .transpose()?;
        let admin_tokens = match &a.admin_tokens {
            Some(path) => load_named_tokens(TokensFile::Admin, path)?,
            None => HashMap::new(),
        };
        let viewer_tokens = match &a.viewer_tokens {
            Some(path) => load_named_tokens(TokensFile::Viewer, path)?,
            None => HashMap::new(),
        };
        // One token in both files would make a login's role depend on which file wins.
        if let Some(viewer) = viewer_tokens
            .iter()
            .find(|(_, t)| admin_tokens.values().any(|a| a == *t))
            .map(|(v, _)| v)
        {
            return Err(CollectorConfigError::Invalid(format!(
                "viewer {viewer:?} has the same token as an admin in --admin-tokens: give each \
                 person one token, in one file"
            )));
        }
        let mut compliance = compliance_config(a)?;
        if !a.config_actor.trim().is_empty() {
            compliance.config_actor = a.config_actor.trim().to_string();
        }
        compliance.metrics_max_models = a.metrics_max_models;
        Ok(CollectorConfig {
            data_dir: a.data_dir.clone(),
            listen: a.listen,
            http_addr: a.http_addr,
            agent_tokens,
            admin_token: a.admin_token.clone().filter(|t| !t.is_empty()),
            admin_tokens,
            viewer_tokens,
            raw_retention: a.raw_retention.0,
            rollup_every: a.rollup_every.0,
            policy: stage_policy(&a.count_stages, &a.exclude_stages, a.unknown_stages_count),
            limits: Limits {
                peak_tolerance: a.peak_tolerance,
                max_interval_ms: a.max_interval.0.as_millis() as i64,
                max_future_ms: a.max_future.0.as_millis() as i64,
                max_backfill_ms: a.backfill_window.0.as_millis().min(i64::MAX as u128) as i64,
                ..Limits::default()
            },
            commit_group: a.commit_group.max(1),
            cache_bytes: a.ledger_cache_mb.max(16) << 20,
            min_free_bytes: a.min_free_mb << 20,
            writer_queue: 8192,
            max_message_bytes: a.max_message_bytes,
            hello_timeout: a.hello_timeout.0,
            idle_timeout: a.idle_timeout.0,
            metrics_max_models: a.metrics_max_models,
            metrics_max_runs: a.metrics_max_runs,
            new_runs_per_agent_per_hour: a.new_runs_per_agent_per_hour,
            compliance,
            tls: a
                .tls_cert
                .clone()
                .zip(a.tls_key.clone())
                .map(|(cert, key)| crate::tls::TlsPaths {
                    cert,
                    key,
                    client_ca: a.tls_client_ca.clone(),
                }),
            failpoints: crate::failpoint::Failpoints::from_env(),
            store: shared_store(a)?,
        })
    }
}

/// The compliance part of the arguments: the thresholds file and the sinks.
fn compliance_config(
    a: &CollectorArgs,
) -> Result<crate::compliance::ComplianceConfig, CollectorConfigError> {
    use crate::compliance::{ComplianceConfig, SinkConfig};
    let mut c = ComplianceConfig::default();
    if let Some(path) = &a.thresholds {
        let text = std::fs::read_to_string(path).map_err(|source| {
            CollectorConfigError::ThresholdsRead {
                path: path.clone(),
                source,
            }
        })?;
        c.thresholds = parse_thresholds(path, &text)?;
    }
    for url in &a.alertmanager_url {
        c.sinks.push(SinkConfig::Alertmanager { url: url.clone() });
    }
    for (i, url) in a.webhook_url.iter().enumerate() {
        let Some(secret) = a.webhook_secret.clone().filter(|s| !s.is_empty()) else {
            return Err(CollectorConfigError::Invalid(
                "--webhook-url needs --webhook-secret (deliveries are signed)".into(),
            ));
        };
        c.sinks.push(SinkConfig::Webhook {
            name: format!("{i}"),
            url: url.clone(),
            secret,
        });
    }
    Ok(c)
}

/// The default stage policy with overrides (exclusions win over inclusions).
pub fn stage_policy(count: &[String], exclude: &[String], unknown_counts: bool) -> StagePolicy {
    let mut p = StagePolicy {
        unknown_counts,
        ..StagePolicy::default()
    };
    for s in count.iter().filter(|s| !s.trim().is_empty()) {
        p.counts.insert(Stage::parse(s).as_str().to_string(), true);
    }
    for s in exclude.iter().filter(|s| !s.trim().is_empty()) {
        p.counts.insert(Stage::parse(s).as_str().to_string(), false);
    }
    p
}

/// Reads the named admin tokens file: actor → token, each token unique (a token two actors
/// share would let the audit log name the wrong one).
pub fn load_admin_tokens(path: &Path) -> Result<HashMap<String, String>, CollectorConfigError> {
    load_named_tokens(TokensFile::Admin, path)
}

/// An admin or viewer tokens file: name → token, each token unique and each name usable
/// (bounded, no control characters: it is what the audit log and the console show).
fn load_named_tokens(
    kind: TokensFile,
    path: &Path,
) -> Result<HashMap<String, String>, CollectorConfigError> {
    let tokens = parse_tokens(kind, path, &read_tokens(kind, path)?)?;
    unique_tokens(kind, path, &tokens)?;
    for a in tokens.keys() {
        if a.trim().is_empty() || !crate::ingest::validate::valid_name(a) {
            return Err(CollectorConfigError::TokensInvalid {
                kind,
                path: path.to_path_buf(),
                problem: format!("{a:?} is not a usable name"),
            });
        }
    }
    Ok(tokens)
}

/// Parses a thresholds file's text (`path` names it in errors) and validates it, so a typo
/// stops the collector at start and not at first evaluation.
pub fn parse_thresholds(path: &Path, text: &str) -> Result<ThresholdConfig, CollectorConfigError> {
    let config: ThresholdConfig =
        toml::from_str(text).map_err(|source| CollectorConfigError::ThresholdsToml {
            path: path.to_path_buf(),
            source,
        })?;
    config
        .resolve(&[])
        .map_err(|source| CollectorConfigError::Thresholds {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(config)
}

/// Reads the agent tokens file: agent id → token, each token unique (an agent that knows a
/// token another agent also has could speak as that agent), each name an agent id.
pub fn load_agent_tokens(path: &Path) -> Result<HashMap<String, String>, CollectorConfigError> {
    parse_agent_tokens(path, &read_tokens(TokensFile::Agent, path)?)
}

/// [`load_agent_tokens`] on text already read.
pub fn parse_agent_tokens(
    path: &Path,
    text: &str,
) -> Result<HashMap<String, String>, CollectorConfigError> {
    let kind = TokensFile::Agent;
    let tokens = parse_tokens(kind, path, text)?;
    unique_tokens(kind, path, &tokens)?;
    let mut agents: Vec<&String> = tokens.keys().collect();
    agents.sort();
    for a in agents {
        AgentId::parse(a).map_err(|source| CollectorConfigError::TokensAgentId {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(tokens)
}

fn read_tokens(kind: TokensFile, path: &Path) -> Result<String, CollectorConfigError> {
    std::fs::read_to_string(path).map_err(|source| CollectorConfigError::TokensRead {
        kind,
        path: path.to_path_buf(),
        source,
    })
}

/// No token for two names: its holder could speak as either.
fn unique_tokens(
    kind: TokensFile,
    path: &Path,
    tokens: &HashMap<String, String>,
) -> Result<(), CollectorConfigError> {
    let mut names: Vec<_> = tokens.iter().collect();
    names.sort();
    for (i, (a, t)) in names.iter().enumerate() {
        if let Some((b, _)) = names[i + 1..].iter().find(|(_, u)| u == t) {
            let who = match kind {
                TokensFile::Agent => "agent",
                TokensFile::Admin => "actor",
                TokensFile::Viewer => "viewer",
            };
            return Err(CollectorConfigError::TokensInvalid {
                kind,
                path: path.to_path_buf(),
                problem: format!("{a:?} and {b:?} have the same token; give each {who} its own"),
            });
        }
    }
    Ok(())
}

/// A tokens file's text: a TOML table `name = "token"` of non-empty strings.
fn parse_tokens(
    kind: TokensFile,
    path: &Path,
    text: &str,
) -> Result<HashMap<String, String>, CollectorConfigError> {
    let invalid = |problem: String| CollectorConfigError::TokensInvalid {
        kind,
        path: path.to_path_buf(),
        problem,
    };
    let table: toml::Table = text
        .parse()
        .map_err(|source| CollectorConfigError::TokensToml {
            kind,
            path: path.to_path_buf(),
            source,
        })?;
    let mut out = HashMap::new();
    for (name, v) in table {
        let Some(token) = v.as_str() else {
            return Err(invalid(format!("the value for {name:?} is not a string")));
        };
        if token.is_empty() {
            return Err(invalid(format!("the token for {name:?} is empty")));
        }
        out.insert(name, token.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let d = |s: &str| s.parse::<HumanDuration>().unwrap().0;
        assert_eq!(d("90d"), Duration::from_secs(90 * 86_400));
        assert_eq!(d("10s"), Duration::from_secs(10));
        assert_eq!(d("250ms"), Duration::from_millis(250));
        assert_eq!(d("1.5h"), Duration::from_secs(5400));
        assert!("10y".parse::<HumanDuration>().is_err());
        assert_eq!(HumanDuration(d("90d")).to_string(), "90d");
        assert_eq!(HumanDuration(d("90s")).to_string(), "90s");
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: CollectorArgs,
    }

    fn resolve(files: &[(&str, &str)]) -> Result<CollectorConfig, CollectorConfigError> {
        use clap::Parser as _;
        let dir = tempfile::tempdir().unwrap();
        let mut argv = vec!["collector".to_string()];
        for (flag, body) in files {
            let path = dir.path().join(format!("{flag}.toml"));
            std::fs::write(&path, body).unwrap();
            argv.push(format!("--{flag}"));
            argv.push(path.display().to_string());
        }
        CollectorConfig::from_args(&Cli::try_parse_from(argv).unwrap().args)
    }

    #[test]
    fn viewer_tokens_are_named_unique_and_never_an_admins() {
        let c = resolve(&[
            ("admin-tokens", "alice = \"a-secret\"\n"),
            ("viewer-tokens", "victor = \"v-secret\"\n"),
        ])
        .unwrap();
        assert_eq!(
            c.viewer_tokens.get("victor").map(String::as_str),
            Some("v-secret")
        );
        let e = resolve(&[
            ("admin-tokens", "alice = \"same\"\n"),
            ("viewer-tokens", "victor = \"same\"\n"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("viewer \"victor\" has the same token as an admin"),
            "{e}"
        );
        let e = resolve(&[("viewer-tokens", "a = \"x\"\nb = \"x\"\n")])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("viewer tokens file "), "{e}");
        assert!(e.contains("\"a\" and \"b\" have the same token"), "{e}");
        let e = resolve(&[("viewer-tokens", "a = 1\n")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a string"), "{e}");
    }

    /// Each tokens file is named for what it is, and an error keeps what caused it.
    #[test]
    fn tokens_and_thresholds_errors_name_their_file_and_keep_their_cause() {
        use std::error::Error as _;
        let e = resolve(&[("admin-tokens", "a = \"x\"\nb = \"x\"\n")]).unwrap_err();
        assert!(e.to_string().starts_with("admin tokens file "), "{e}");
        let e = resolve(&[("agent-tokens", "node-a = [")]).unwrap_err();
        assert!(matches!(e, CollectorConfigError::TokensToml { .. }), "{e}");
        assert!(e.source().is_some_and(|s| s.is::<toml::de::Error>()));
        // A name no agent can have: no agent could ever use its token.
        let e = resolve(&[("agent-tokens", "\"node a\" = \"s3cret\"\n")]).unwrap_err();
        assert!(
            matches!(e, CollectorConfigError::TokensAgentId { .. }),
            "{e}"
        );
        assert!(
            e.to_string().starts_with("agent tokens file ") && e.to_string().contains("\"node a\""),
            "{e}"
        );
        assert!(e.source().is_some_and(|s| s.is::<AgentIdError>()));
        let e = resolve(&[("thresholds", "[thresholds.typo]\nenabled = false\n")]).unwrap_err();
        assert!(
            e.source().is_some_and(|s| s.is::<ThresholdConfigError>()),
            "{e}"
        );
    }

    fn resolve_flags(flags: &[&str]) -> Result<CollectorConfig, CollectorConfigError> {
        use clap::Parser as _;
        let argv = std::iter::once("collector").chain(flags.iter().copied());
        CollectorConfig::from_args(&Cli::try_parse_from(argv).unwrap().args)
    }

    /// `--store` selects PostgreSQL with the lease flags, checked at start with what to fix;
    /// without it, sled in --data-dir.
    #[test]
    fn store_and_lease_flags() {
        let c = resolve_flags(&[]).unwrap();
        assert!(c.store.is_none());
        assert!(!c.backend().is_shared());
        let url = "postgres://flopmeter:s3cret@db.example:5432/ledger?sslmode=verify-full";
        let c = resolve_flags(&["--store", url, "--replica-name", "pod-0"]).unwrap();
        let s = c.store.as_ref().unwrap();
        assert_eq!(s.lease.holder, "pod-0");
        assert_eq!(s.lease.ttl, Duration::from_secs(15));
        assert_eq!(s.lease.failover_bound(), Duration::from_secs(20));
        assert_eq!(s.pool_size, 8);
        assert!(c.backend().is_shared());
        // Neither the backend's description nor the configuration's debug shows the password.
        assert!(!c.backend().describe().contains("s3cret"));
        assert!(!format!("{c:?}").contains("s3cret"), "{c:?}");
        // Without --replica-name: host name and process id.
        let c = resolve_flags(&["--store", url]).unwrap();
        let holder = &c.store.unwrap().lease.holder;
        assert!(
            holder.ends_with(&format!("-{}", std::process::id())),
            "{holder}"
        );

        let e = resolve_flags(&["--store", url, "--lease-ttl", "3s"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("renew_every") && e.contains("--lease-ttl 3s"),
            "{e}"
        );
        let e = resolve_flags(&["--store", "host=db user=x"])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--store: ") && e.contains("must be a URL"),
            "{e}"
        );
        let e = resolve_flags(&["--store", url, "--store-pool-size", "0"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--store-pool-size"), "{e}");
    }

    #[test]
    fn policy_overrides() {
        let p = stage_policy(&["research".into()], &["rl".into()], false);
        assert!(p.counts(&Stage::Research));
        assert!(!p.counts(&Stage::Rl));
        assert!(!p.counts(&Stage::Other("x".into())));
    }
}
