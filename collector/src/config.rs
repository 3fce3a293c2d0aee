//! `flopmeter collector` configuration: the clap arguments (every flag also from a
//! `FLOPMETER_*` variable and, through the binary's config-file layer, from TOML) and the
//! resolved [`CollectorConfig`] the server runs with.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flopmeter_core::stage::{Stage, StagePolicy};
use serde::Serialize;

use crate::ingest::validate::Limits;

/// Errors resolving the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The agent tokens file could not be read.
    #[error("cannot read agent tokens file {path}: {source}")]
    TokensRead {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The agent tokens file is not a TOML table of strings.
    #[error("agent tokens file {path} must be a TOML table `agent-id = \"token\"`: {message}")]
    TokensParse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A value is out of range.
    #[error("{0}")]
    Invalid(String),
}

pub use flopmeter_core::duration::HumanDuration;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

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

Examples:
  flopmeter collector --data-dir /var/lib/flopmeter/ledger
  flopmeter collector --data-dir ./ledger --listen 127.0.0.1:7443 --http-addr 127.0.0.1:9464 \\
      --agent-tokens tokens.toml --exclude-stages research,eval")]
pub struct CollectorArgs {
    /// Directory of the ledger (a sled database). One collector process per directory.
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

    /// Token the admin write RPCs (model registry changes) require. Without it they are
    /// open to anyone who can reach --listen.
    #[arg(
        long,
        env = "FLOPMETER_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    #[serde(skip_serializing)]
    pub admin_token: Option<String>,

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

    /// Ledger page cache, MiB (most of the collector's resident memory).
    #[arg(
        long,
        env = "FLOPMETER_LEDGER_CACHE_MB",
        value_name = "MIB",
        default_value_t = 256
    )]
    pub ledger_cache_mb: u64,

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
    /// Admin token for write RPCs.
    pub admin_token: Option<String>,
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
    /// Jobs waiting for the writer, at most (backpressure beyond).
    pub writer_queue: usize,
    /// The compliance engine: thresholds, sinks, its clock.
    pub compliance: crate::compliance::ComplianceConfig,
}

impl fmt::Debug for CollectorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Tokens stay out of logs.
        f.debug_struct("CollectorConfig")
            .field("data_dir", &self.data_dir)
            .field("listen", &self.listen)
            .field("http_addr", &self.http_addr)
            .field("agent_tokens", &self.agent_tokens.as_ref().map(|t| t.len()))
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<set>"))
            .field("raw_retention", &self.raw_retention)
            .field("policy", &self.policy)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl CollectorConfig {
    /// Defaults for a ledger in `dir`, listening on loopback ports the OS picks (tests,
    /// embedding).
    pub fn for_data_dir(dir: &Path) -> CollectorConfig {
        CollectorConfig {
            data_dir: dir.to_path_buf(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            agent_tokens: None,
            admin_token: None,
            raw_retention: Duration::from_secs(90 * 86_400),
            rollup_every: Duration::from_secs(3600),
            policy: StagePolicy::default(),
            limits: Limits::default(),
            commit_group: 1024,
            cache_bytes: 64 << 20,
            writer_queue: 8192,
            compliance: crate::compliance::ComplianceConfig::default(),
        }
    }

    /// Resolves the command-line arguments (reads the tokens file).
    pub fn from_args(a: &CollectorArgs) -> Result<CollectorConfig, ConfigError> {
        if !(a.peak_tolerance.is_finite() && a.peak_tolerance >= 1.0) {
            return Err(ConfigError::Invalid(format!(
                "--peak-tolerance must be at least 1.0, got {}",
                a.peak_tolerance
            )));
        }
        if a.rollup_every.0.is_zero() {
            return Err(ConfigError::Invalid(
                "--rollup-every must be above 0".into(),
            ));
        }
        let agent_tokens = a.agent_tokens.as_deref().map(load_tokens).transpose()?;
        let compliance = compliance_config(a)?;
        Ok(CollectorConfig {
            data_dir: a.data_dir.clone(),
            listen: a.listen,
            http_addr: a.http_addr,
            agent_tokens,
            admin_token: a.admin_token.clone().filter(|t| !t.is_empty()),
            raw_retention: a.raw_retention.0,
            rollup_every: a.rollup_every.0,
            policy: stage_policy(&a.count_stages, &a.exclude_stages, a.unknown_stages_count),
            limits: Limits {
                peak_tolerance: a.peak_tolerance,
                max_interval_ms: a.max_interval.0.as_millis() as i64,
                max_future_ms: a.max_future.0.as_millis() as i64,
                ..Limits::default()
            },
            commit_group: a.commit_group.max(1),
            cache_bytes: a.ledger_cache_mb.max(16) << 20,
            writer_queue: 8192,
            compliance,
        })
    }
}

/// The compliance part of the arguments: the thresholds file and the sinks.
fn compliance_config(
    a: &CollectorArgs,
) -> Result<crate::compliance::ComplianceConfig, ConfigError> {
    use crate::compliance::{ComplianceConfig, SinkConfig};
    let mut c = ComplianceConfig::default();
    if let Some(path) = &a.thresholds {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::Invalid(format!(
                "cannot read thresholds file {}: {e}",
                path.display()
            ))
        })?;
        c.thresholds = toml::from_str(&text).map_err(|e| {
            ConfigError::Invalid(format!("thresholds file {}: {e}", path.display()))
        })?;
        // Validate now, so a typo stops the collector at start and not at first evaluation.
        c.thresholds.resolve(&[]).map_err(|e| {
            ConfigError::Invalid(format!("thresholds file {}: {e}", path.display()))
        })?;
    }
    for url in &a.alertmanager_url {
        c.sinks.push(SinkConfig::Alertmanager { url: url.clone() });
    }
    for (i, url) in a.webhook_url.iter().enumerate() {
        let Some(secret) = a.webhook_secret.clone().filter(|s| !s.is_empty()) else {
            return Err(ConfigError::Invalid(
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

/// Reads an agent tokens file: a TOML table `agent-id = "token"`.
pub fn load_tokens(path: &Path) -> Result<HashMap<String, String>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::TokensRead {
        path: path.to_path_buf(),
        source,
    })?;
    let table: toml::Table =
        text.parse()
            .map_err(|e: toml::de::Error| ConfigError::TokensParse {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
    let mut out = HashMap::new();
    for (agent, v) in table {
        let Some(token) = v.as_str() else {
            return Err(ConfigError::TokensParse {
                path: path.to_path_buf(),
                message: format!("the value for {agent:?} is not a string"),
            });
        };
        if token.is_empty() {
            return Err(ConfigError::TokensParse {
                path: path.to_path_buf(),
                message: format!("the token for {agent:?} is empty"),
            });
        }
        out.insert(agent, token.to_string());
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

    #[test]
    fn policy_overrides() {
        let p = stage_policy(&["research".into()], &["rl".into()], false);
        assert!(p.counts(&Stage::Research));
        assert!(!p.counts(&Stage::Rl));
        assert!(!p.counts(&Stage::Other("x".into())));
    }
}
