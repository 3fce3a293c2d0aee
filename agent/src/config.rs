//! `flopmeter agent` options: every flag long-named, with a `FLOPMETER_*` environment variable,
//! so flags, environment and the config file's `[agent]` table (keys are the long flag names)
//! all reach the same place.
//!
//! `--print-config` prints the effective options as such an `[agent]` table, so an operator
//! can see what a node runs with, and paste it into a config file. The agent token is redacted.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Serialize, Serializer};

/// Errors in the options that clap's parsers cannot catch alone.
#[derive(Debug, thiserror::Error)]
pub enum AgentConfigError {
    /// A value is out of range or inconsistent with another.
    #[error("{0}")]
    Invalid(String),
    /// The effective config could not be rendered as TOML.
    #[error("rendering the config as TOML: {0}")]
    Render(#[from] toml::ser::Error),
    /// A TLS file is missing, unreadable, mismatched or outside its validity.
    #[error(transparent)]
    Tls(#[from] flopmeter_tls::TlsError),
}

pub use flopmeter_core::duration::HumanDuration;

pub use flopmeter_core::size::{ByteSize, ByteSizeError};

/// Whether to watch Kubernetes pods for attribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KubeMode {
    /// On when a cluster config is found (in-cluster service account or kubeconfig).
    Auto,
    /// Always; failing to configure the client is an error.
    On,
    /// Never.
    Off,
}

/// Log output format: the one type the agent and the collector share.
pub use flopmeter_args::LogFormat;

fn redact<S: Serializer>(token: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match token {
        Some(_) => s.serialize_str("<redacted>"),
        None => s.serialize_none(),
    }
}

/// Options of `flopmeter agent`.
#[derive(Debug, Clone, clap::Args, Serialize)]
#[serde(rename_all = "kebab-case")]
#[command(after_help = "\
The agent runs on every GPU node. It reads the GPUs through NVML every --sample-interval,
estimates the FLOP each process executes, attributes it to a run and model (FLOPMETER_* in
the process environment, flopmeter.io/* pod labels, or the Slurm job), and every
--report-interval writes one record per run and GPU to its spool. Records stay in the spool
until the collector acknowledges them, across restarts and network cuts.

It needs to see the training processes: run it with hostPID (Kubernetes) or on the host,
as root or with CAP_SYS_PTRACE to read other users' /proc/<pid>/environ.

With TLS (docs/tls.md), --collector https://... and --tls-ca; with mutual TLS also
--tls-cert/--tls-key, a certificate whose CN is the agent id.

Examples:
  flopmeter agent --collector http://collector:7443 --spool-dir /var/lib/flopmeter/agent
  flopmeter agent --collector https://collector:7443 --tls-ca ca.pem --agent-id node-a \\
      --tls-cert agent-node-a.pem --tls-key agent-node-a-key.pem
  flopmeter agent --print-config
  flopmeter agent --simulate workload.toml --collector http://127.0.0.1:7443 --spool-dir /tmp/a")]
pub struct AgentArgs {
    /// Collector gRPC address.
    #[arg(
        long,
        env = "FLOPMETER_COLLECTOR",
        value_name = "URL",
        default_value = "http://127.0.0.1:7443"
    )]
    pub collector: String,

    /// Directory of the spool (records until acknowledged) and the agent id.
    #[arg(
        long,
        env = "FLOPMETER_SPOOL_DIR",
        value_name = "DIR",
        default_value = "/var/lib/flopmeter/agent"
    )]
    pub spool_dir: PathBuf,

    /// This agent's id: a DNS name (letters, digits, '-', '_' in dot-separated labels), since
    /// with mutual TLS it is the agent certificate's CN or DNS name. Default: a UUID generated
    /// once and kept in the spool directory, so it is stable across restarts. A spool holding
    /// records of another id refuses to start.
    #[arg(long, env = "FLOPMETER_AGENT_ID", value_name = "ID")]
    pub agent_id: Option<flopmeter_core::agent_id::AgentId>,

    /// Node name (Kubernetes: the pod's spec.nodeName, used to watch this node's pods).
    /// Default: NODE_NAME, then the host name.
    #[arg(long, env = "FLOPMETER_NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,

    /// Token sent to the collector as `authorization: Bearer <token>`.
    #[arg(
        long,
        env = "FLOPMETER_AGENT_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    #[serde(serialize_with = "redact")]
    pub agent_token: Option<String>,

    #[command(flatten)]
    #[serde(flatten)]
    pub tls: flopmeter_args::TlsClientArgs,

    /// Address of /metrics and /healthz; "off" disables them.
    #[arg(
        long,
        env = "FLOPMETER_METRICS_ADDR",
        value_name = "ADDR",
        default_value = "0.0.0.0:9402"
    )]
    pub metrics_addr: String,

    /// Time between GPU reads.
    #[arg(
        long,
        env = "FLOPMETER_SAMPLE_INTERVAL",
        value_name = "DURATION",
        default_value = "1s"
    )]
    pub sample_interval: HumanDuration,

    /// Time covered by one record (per run and GPU).
    #[arg(
        long,
        env = "FLOPMETER_REPORT_INTERVAL",
        value_name = "DURATION",
        default_value = "10s"
    )]
    pub report_interval: HumanDuration,

    /// Where to read processes' environ, cgroup and stat (a container mounts the host's
    /// /proc elsewhere).
    #[arg(
        long,
        env = "FLOPMETER_PROC_ROOT",
        value_name = "DIR",
        default_value = "/proc"
    )]
    pub proc_root: PathBuf,

    /// The NVML library to load.
    #[arg(
        long,
        env = "FLOPMETER_NVML_LIB",
        value_name = "PATH",
        default_value = "libnvidia-ml.so.1"
    )]
    pub nvml_lib: PathBuf,

    /// Watch this node's pods for flopmeter.io/* labels: auto, on or off.
    #[arg(
        long,
        env = "FLOPMETER_KUBE",
        value_name = "MODE",
        default_value = "auto"
    )]
    pub kube: KubeMode,

    /// The cluster this node belongs to: stamped on every record (reports give each
    /// cluster's share of a model) and sent when the agent connects. It wins over a Slurm
    /// job's SLURM_CLUSTER_NAME. Unset on a Slurm node: each job's SLURM_CLUSTER_NAME, and
    /// for other work the ClusterName in slurm.conf ($SLURM_CONF, /etc/slurm, or slurmd's
    /// configless cache).
    #[arg(long, env = "FLOPMETER_CLUSTER", value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,

    /// Where the flopmeter Slurm Prolog (deploy/slurm/) records each job's comment, which
    /// Slurm never puts into a job's environment. Jobs without a record are asked of squeue.
    #[arg(
        long,
        env = "FLOPMETER_SLURM_COMMENT_DIR",
        value_name = "DIR",
        default_value = "/run/flopmeter/slurm"
    )]
    pub slurm_comment_dir: PathBuf,

    /// The squeue program that tells a Slurm job's comment when the Prolog did not record it
    /// (one query per job, cached; the job is unattributed until it answers). "off" never
    /// asks the controller.
    #[arg(
        long,
        env = "FLOPMETER_SLURM_SQUEUE",
        value_name = "PATH",
        default_value = "squeue"
    )]
    pub slurm_squeue: String,

    /// Longest one squeue query may take before it is killed and the job is asked again
    /// later (after 5 s, doubling up to 5 min).
    #[arg(
        long,
        env = "FLOPMETER_SLURM_QUERY_TIMEOUT",
        value_name = "DURATION",
        default_value = "5s"
    )]
    pub slurm_query_timeout: HumanDuration,

    /// Size cap of the spool. When full, the agent holds records in memory, raises
    /// flopmeter_agent_spool_full and never drops them. Memory has a hard ceiling whatever
    /// the collector does: at most 10000 held records (a few MiB) plus one open record per
    /// run and GPU, and at most 4 unacknowledged batches on the wire; past the ceiling,
    /// records are written beyond the cap (counted in flopmeter_agent_spool_over_cap_records).
    #[arg(
        long,
        env = "FLOPMETER_SPOOL_MAX_BYTES",
        value_name = "SIZE",
        default_value = "256MiB"
    )]
    pub spool_max_bytes: ByteSize,

    /// On SIGTERM, how long to keep shipping the spool before exiting.
    #[arg(
        long,
        env = "FLOPMETER_DRAIN_GRACE",
        value_name = "DURATION",
        default_value = "10s"
    )]
    pub drain_grace: HumanDuration,

    /// Dense BF16 peak (TFLOP/s) for GPUs not in the catalogue. Without it their work is
    /// reported as unestimated, never with a neighbour's numbers.
    #[arg(long, env = "FLOPMETER_UNKNOWN_GPU_PEAK_TFLOPS", value_name = "TFLOPS")]
    pub unknown_gpu_peak_tflops: Option<f64>,

    /// Read GPUs from a simulated workload (TOML, see the agent docs) instead of NVML: for
    /// demos and trying the pipeline on a machine without GPUs.
    #[arg(long, env = "FLOPMETER_SIMULATE", value_name = "FILE")]
    pub simulate: Option<PathBuf>,

    /// Log format.
    #[arg(
        long,
        env = "FLOPMETER_LOG_FORMAT",
        value_name = "FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// Once the agent runs, write what it bound to this file as JSON (`{"agent_id": ..,
    /// "node": .., "metrics": "127.0.0.1:41236"}`, `metrics` null when off), replacing it
    /// atomically. With port 0 in --metrics-addr this is how a script or a test learns the
    /// port the kernel chose.
    #[arg(long, env = "FLOPMETER_READY_FILE", value_name = "FILE")]
    pub ready_file: Option<PathBuf>,

    /// Print the effective configuration as TOML and exit.
    #[arg(long, env = "FLOPMETER_PRINT_CONFIG")]
    #[serde(skip)]
    pub print_config: bool,

    /// [Tests and demos only] Replay mode: sample on a virtual clock starting at this event
    /// time (Unix ms), one sample interval per tick, resuming after a restart from the end of
    /// the last interval in the spool. Records are then a function of the workload and the
    /// virtual span alone; a full spool pauses virtual time.
    #[arg(
        long,
        env = "FLOPMETER_VIRTUAL_CLOCK_START",
        value_name = "UNIX_MS",
        hide_short_help = true,
        allow_negative_numbers = true
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub virtual_clock_start: Option<i64>,

    /// [Tests and demos only] Virtual seconds per real second (default: as fast as possible).
    #[arg(
        long,
        env = "FLOPMETER_VIRTUAL_SPEED",
        value_name = "X",
        hide_short_help = true,
        requires = "virtual_clock_start"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub virtual_speed: Option<f64>,

    /// [Tests and demos only] Event time (Unix ms) at which replay ends: the report interval
    /// reaching it is the last; the agent then only ships.
    #[arg(
        long,
        env = "FLOPMETER_VIRTUAL_STOP",
        value_name = "UNIX_MS",
        hide_short_help = true,
        allow_negative_numbers = true,
        requires = "virtual_clock_start"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub virtual_stop: Option<i64>,

    /// [Tests and demos only] Exit (status 0) once --virtual-stop is reached and the
    /// collector has acknowledged every record.
    #[arg(
        long,
        env = "FLOPMETER_VIRTUAL_EXIT_WHEN_DRAINED",
        hide_short_help = true,
        requires = "virtual_stop"
    )]
    #[serde(skip_serializing_if = "is_false")]
    pub virtual_exit_when_drained: bool,

    /// [Tests and demos only] In replay mode, hold records in memory when the spool is full
    /// (as in real time, up to the memory ceiling) instead of pausing virtual time.
    #[arg(
        long,
        env = "FLOPMETER_VIRTUAL_HOLD_WHEN_FULL",
        hide_short_help = true,
        requires = "virtual_clock_start"
    )]
    #[serde(skip_serializing_if = "is_false")]
    pub virtual_hold_when_full: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl AgentArgs {
    /// Checks what clap cannot: ranges and relations between options.
    pub fn validate(&self) -> Result<(), AgentConfigError> {
        let sample = self.sample_interval.0;
        let report = self.report_interval.0;
        if sample < Duration::from_millis(10) {
            return Err(AgentConfigError::Invalid(format!(
                "--sample-interval {} is below 10ms",
                self.sample_interval
            )));
        }
        if report < sample {
            return Err(AgentConfigError::Invalid(format!(
                "--report-interval {} is shorter than --sample-interval {}",
                self.report_interval, self.sample_interval
            )));
        }
        if report > Duration::from_secs(30 * 60) {
            return Err(AgentConfigError::Invalid(format!(
                "--report-interval {} is above 30m (the collector rejects records longer \
                 than its --max-interval, 1h by default)",
                self.report_interval
            )));
        }
        if let Some(p) = self.unknown_gpu_peak_tflops
            && !(p.is_finite() && p > 0.0)
        {
            return Err(AgentConfigError::Invalid(format!(
                "--unknown-gpu-peak-tflops {p} must be a positive number"
            )));
        }
        if let Some(x) = self.virtual_speed
            && !(x.is_finite() && x > 0.0)
        {
            return Err(AgentConfigError::Invalid(format!(
                "--virtual-speed {x} must be a positive number"
            )));
        }
        if let (Some(start), Some(stop)) = (self.virtual_clock_start, self.virtual_stop)
            && stop <= start
        {
            return Err(AgentConfigError::Invalid(format!(
                "--virtual-stop {stop} is not after --virtual-clock-start {start}"
            )));
        }
        if let Some(c) = &self.cluster
            && (c.trim().is_empty() || c.len() > 256 || c.chars().any(char::is_control))
        {
            return Err(AgentConfigError::Invalid(format!(
                "--cluster {c:?} must be a name of at most 256 bytes without control characters"
            )));
        }
        if self.slurm_query_timeout.0.is_zero() {
            return Err(AgentConfigError::Invalid(
                "--slurm-query-timeout must be above zero".into(),
            ));
        }
        self.metrics_socket()?;
        Ok(())
    }

    /// Where Slurm job comments come from.
    pub fn slurm_comments(&self) -> crate::attribution::slurm_comments::SlurmCommentsConfig {
        let squeue = match self.slurm_squeue.trim() {
            "" | "off" | "none" => None,
            p => Some(PathBuf::from(p)),
        };
        crate::attribution::slurm_comments::SlurmCommentsConfig {
            dir: Some(self.slurm_comment_dir.clone()),
            squeue,
            timeout: self.slurm_query_timeout.0,
        }
    }

    /// The TLS settings for --collector, with the files read and checked at `now` (Unix
    /// seconds): an expired client certificate stops the agent here, with its date.
    pub fn client_tls(&self, now: i64) -> Result<flopmeter_tls::ClientTls, AgentConfigError> {
        Ok(flopmeter_tls::ClientTls::load(
            &self.collector,
            &self.tls,
            now,
        )?)
    }

    /// The metrics address, `None` when disabled.
    pub fn metrics_socket(&self) -> Result<Option<SocketAddr>, AgentConfigError> {
        match self.metrics_addr.trim() {
            "" | "off" | "none" => Ok(None),
            a => a.parse().map(Some).map_err(|_| {
                AgentConfigError::Invalid(format!(
                    "--metrics-addr {a:?} is not an address like 0.0.0.0:9402 (or \"off\")"
                ))
            }),
        }
    }

    /// The effective configuration as a config-file `[agent]` table.
    pub fn to_toml(&self) -> Result<String, AgentConfigError> {
        #[derive(Serialize)]
        struct File<'a> {
            agent: &'a AgentArgs,
        }
        Ok(toml::to_string(&File { agent: self })?)
    }

    /// Defaults for everything, as if no flag, variable or file was given (tests).
    pub fn defaults() -> AgentArgs {
        use clap::{Args, Command, FromArgMatches};
        let cmd = AgentArgs::augment_args(Command::new("agent").no_binary_name(true));
        let m = cmd
            .try_get_matches_from(std::iter::empty::<String>())
            .expect("the defaults parse");
        AgentArgs::from_arg_matches(&m).expect("the defaults parse")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_round_trip() {
        for s in ["250ms", "1s", "10s", "5m", "12h", "7d"] {
            assert_eq!(s.parse::<HumanDuration>().unwrap().to_string(), s);
        }
        assert_eq!("1.5s".parse::<HumanDuration>().unwrap().0.as_millis(), 1500);
        assert!("5 weeks".parse::<HumanDuration>().is_err());
        for s in ["256MiB", "1GiB", "4KiB", "1000"] {
            assert_eq!(s.parse::<ByteSize>().unwrap().to_string(), s);
        }
        assert_eq!("1MB".parse::<ByteSize>().unwrap().0, 1_000_000);
        assert!("lots".parse::<ByteSize>().is_err());
    }

    #[test]
    fn print_config_is_a_config_file_and_redacts_the_token() {
        let mut a = AgentArgs::defaults();
        a.agent_token = Some("s3cret".into());
        let text = a.to_toml().unwrap();
        assert!(text.starts_with("[agent]"), "{text}");
        assert!(
            text.contains("collector = \"http://127.0.0.1:7443\""),
            "{text}"
        );
        assert!(text.contains("sample-interval = \"1s\""), "{text}");
        assert!(text.contains("spool-max-bytes = \"256MiB\""), "{text}");
        assert!(text.contains("kube = \"auto\""), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(!text.contains("print-config"), "{text}");
    }

    #[test]
    fn validation() {
        let mut a = AgentArgs::defaults();
        a.validate().unwrap();
        a.report_interval = HumanDuration(Duration::from_millis(500));
        assert!(a.validate().is_err());
        let mut b = AgentArgs::defaults();
        b.metrics_addr = "nowhere".into();
        assert!(b.validate().is_err());
        b.metrics_addr = "off".into();
        assert_eq!(b.metrics_socket().unwrap(), None);
        let mut c = AgentArgs::defaults();
        c.cluster = Some("gpu-a\n".into());
        assert!(
            c.validate().is_err(),
            "the collector would refuse the Hello"
        );
        c.cluster = Some("gpu-a".into());
        c.validate().unwrap();
        c.slurm_squeue = "off".into();
        assert_eq!(c.slurm_comments().squeue, None);
    }
}
