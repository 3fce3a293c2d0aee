//! `flopmeter loadgen`: simulated agents against a collector, over real gRPC connections,
//! speaking the real protocol ([`crate::agent::SimAgent`]).
//!
//! Two modes: paced (every agent sends one batch per report interval, phases spread evenly
//! over the interval, as a fleet does) and `--max` (every agent sends its next batch as soon
//! as the previous one is acknowledged: the collector's sustained ceiling). It reports
//! records acknowledged per second, ack latency percentiles and the collector's RSS.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use flopmeter_collector::config::HumanDuration;

use crate::agent::{Pace, SimAgent, SimSpec, SimStats, StopAt, percentile_ms};

/// Options of `flopmeter loadgen`.
#[derive(Debug, Clone, clap::Args, Serialize)]
#[serde(rename_all = "kebab-case")]
#[command(after_help = "\
Examples:
  flopmeter loadgen --agents 200 --max --duration 30s --collector http://127.0.0.1:7443
  flopmeter loadgen --agents 10000 --gpus-per-agent 8 --report-interval 10s --duration 60s \\
      --agents-per-connection 20 --collector-pid $(pidof flopmeter)")]
pub struct LoadgenArgs {
    /// Simulated agents.
    #[arg(
        long,
        env = "FLOPMETER_LOADGEN_AGENTS",
        value_name = "N",
        default_value_t = 100
    )]
    pub agents: u32,

    /// GPUs per agent: records per batch.
    #[arg(
        long,
        env = "FLOPMETER_LOADGEN_GPUS_PER_AGENT",
        value_name = "N",
        default_value_t = 8
    )]
    pub gpus_per_agent: u32,

    /// Interval each batch covers, and the pace of paced mode.
    #[arg(
        long,
        env = "FLOPMETER_LOADGEN_REPORT_INTERVAL",
        value_name = "DURATION",
        default_value = "10s"
    )]
    pub report_interval: HumanDuration,

    /// How long to run.
    #[arg(
        long,
        env = "FLOPMETER_LOADGEN_DURATION",
        value_name = "DURATION",
        default_value = "60s"
    )]
    pub duration: HumanDuration,

    /// Time at the start excluded from the figures (connection set-up, first batches).
    /// Default: one report interval.
    #[arg(long, env = "FLOPMETER_LOADGEN_WARMUP", value_name = "DURATION")]
    pub warmup: Option<HumanDuration>,

    /// The collector's gRPC endpoint; several, comma-separated, for replicas sharing one
    /// PostgreSQL ledger: connections go to them in turn, so the agents split evenly.
    #[arg(
        long,
        env = "FLOPMETER_COLLECTOR",
        value_name = "URL[,URL...]",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7443"
    )]
    pub collector: Vec<String>,

    /// Send each agent's next batch as soon as the previous one is acknowledged.
    #[arg(long, env = "FLOPMETER_LOADGEN_MAX")]
    pub max: bool,

    /// Agents sharing one HTTP/2 connection (each agent keeps its own stream).
    #[arg(
        long,
        env = "FLOPMETER_LOADGEN_AGENTS_PER_CONNECTION",
        value_name = "N",
        default_value_t = 1
    )]
    pub agents_per_connection: u32,

    /// Models the agents' work is spread over.
    #[arg(
        long,
        env = "FLOPMETER_LOADGEN_MODELS",
        value_name = "N",
        default_value_t = 4
    )]
    pub models: u32,

    /// Prefix of the simulated agent ids (`<prefix>-<n>`).
    #[arg(
        long,
        env = "FLOPMETER_LOADGEN_AGENT_PREFIX",
        value_name = "PREFIX",
        default_value = "loadgen"
    )]
    pub agent_prefix: String,

    /// Bearer token every simulated agent presents.
    #[arg(
        long,
        env = "FLOPMETER_LOADGEN_AGENT_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    #[serde(skip_serializing)]
    pub agent_token: Option<String>,

    /// PID of the collector, to read its RSS from /proc; several, comma-separated, and the
    /// report gives their sum.
    #[arg(
        long,
        env = "FLOPMETER_LOADGEN_COLLECTOR_PID",
        value_name = "PID[,PID...]",
        value_delimiter = ','
    )]
    pub collector_pid: Vec<u32>,

    /// The collector's /metrics URL, to read its RSS when no PID is given (default: each
    /// collector's host, port 9464); several, comma-separated, and the report gives their sum.
    #[arg(
        long,
        env = "FLOPMETER_LOADGEN_COLLECTOR_METRICS",
        value_name = "URL[,URL...]",
        value_delimiter = ','
    )]
    pub collector_metrics: Vec<String>,
}

/// Errors of the load generator.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    /// The collector URL is not valid.
    #[error("invalid collector URL {url:?}: {message}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
    /// Bad options.
    #[error("{0}")]
    Invalid(String),
}

/// What a load run measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadgenReport {
    /// Agents simulated.
    pub agents: u32,
    /// Records per batch.
    pub gpus_per_agent: u32,
    /// Whether it ran in `--max` mode.
    pub max: bool,
    /// Seconds measured (after the warm-up).
    pub seconds: f64,
    /// Records generated.
    pub generated: u64,
    /// Records acknowledged.
    pub acked: u64,
    /// Records rejected by the collector.
    pub rejected: u64,
    /// Stream reconnects.
    pub reconnects: u64,
    /// Records acknowledged per second after the warm-up.
    pub records_per_s: f64,
    /// Batches with a measured ack latency.
    pub batches: usize,
    /// Median ack latency, ms.
    pub p50_ms: f64,
    /// 99th percentile ack latency, ms.
    pub p99_ms: f64,
    /// Collector resident memory, bytes, when it could be read.
    pub collector_rss_bytes: Option<u64>,
}

impl LoadgenReport {
    /// The report as printed.
    pub fn render(&self) -> String {
        let rss = self.collector_rss_bytes.map_or("unknown".to_string(), |b| {
            format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
        });
        format!(
            "loadgen: {} agents x {} GPUs, {} mode, {:.1} s measured after warm-up\n\
             generated {} records, acknowledged {} ({} rejected, {} reconnects)\n\
             {:.0} records/s\n\
             ack latency after warm-up: p50 {:.1} ms, p99 {:.1} ms ({} batches)\n\
             collector RSS: {rss}\n",
            self.agents,
            self.gpus_per_agent,
            if self.max { "--max" } else { "paced" },
            self.seconds,
            self.generated,
            self.acked,
            self.rejected,
            self.reconnects,
            self.records_per_s,
            self.p50_ms,
            self.p99_ms,
            self.batches,
        )
    }
}

/// A lazily connecting channel to `url`, with the settings an agent uses.
pub fn channel(url: &str) -> Result<Channel, LoadgenError> {
    let bad = |e: &dyn std::fmt::Display| LoadgenError::BadUrl {
        url: url.to_string(),
        message: e.to_string(),
    };
    Ok(Endpoint::from_shared(url.to_string())
        .map_err(|e| bad(&e))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .connect_lazy())
}

/// Runs the load.
pub async fn run(args: &LoadgenArgs) -> Result<LoadgenReport, LoadgenError> {
    if args.agents == 0 || args.gpus_per_agent == 0 || args.agents_per_connection == 0 {
        return Err(LoadgenError::Invalid(
            "--agents, --gpus-per-agent and --agents-per-connection must be above 0".into(),
        ));
    }
    if args.collector.is_empty() {
        return Err(LoadgenError::Invalid(
            "--collector needs at least one URL".into(),
        ));
    }
    let interval = args.report_interval.0;
    if interval.is_zero() {
        return Err(LoadgenError::Invalid(
            "--report-interval must be above 0".into(),
        ));
    }
    let start = Instant::now();
    let deadline = start + args.duration.0;
    let warmup = args
        .warmup
        .map_or(interval, |w| w.0)
        .min(args.duration.0 / 2);
    let stats = Arc::new(SimStats {
        measure_from: Some(start + warmup),
        ..SimStats::default()
    });
    let pace = if args.max {
        Pace::Max
    } else {
        Pace::Paced { every: interval }
    };
    let mut channels = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..args.agents {
        if i % args.agents_per_connection == 0 {
            let url = &args.collector[channels.len() % args.collector.len()];
            channels.push(channel(url)?);
        }
        let ch = channels.last().expect("pushed above").clone();
        let spec = SimSpec {
            agent_id: format!("{}-{i}", args.agent_prefix),
            node: format!("{}-node-{i}", args.agent_prefix),
            gpus: args.gpus_per_agent,
            model: format!("loadgen-model-{}", i % args.models.max(1)),
            run: format!("loadgen-run-{}", i % (args.models.max(1) * 4)),
            stage: String::new(),
            interval,
            token: args.agent_token.clone(),
            cluster: String::new(),
        };
        // Spread the fleet's phases evenly over one interval.
        let phase = interval.mul_f64(f64::from(i) / f64::from(args.agents));
        let stats = stats.clone();
        tasks.push(tokio::spawn(async move {
            let mut a = SimAgent::new(spec);
            let stop = StopAt {
                batches: None,
                deadline: Some(deadline),
            };
            a.run(ch, pace, stop, phase, stats).await;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let seconds = start.elapsed().as_secs_f64() - warmup.as_secs_f64();
    let mut lat = std::mem::take(&mut *stats.latencies_us.lock().expect("not poisoned"));
    lat.sort_unstable();
    let acked = stats.acked.load(Ordering::Relaxed);
    let acked_measured = stats.acked_measured.load(Ordering::Relaxed);
    let rss: Option<u64> = if !args.collector_pid.is_empty() {
        args.collector_pid.iter().map(|p| rss_from_proc(*p)).sum()
    } else if !args.collector_metrics.is_empty() {
        args.collector_metrics
            .iter()
            .map(|u| rss_from_metrics(u))
            .sum()
    } else {
        args.collector
            .iter()
            .map(|c| rss_from_metrics(&default_metrics_url(c)))
            .sum()
    };
    Ok(LoadgenReport {
        agents: args.agents,
        gpus_per_agent: args.gpus_per_agent,
        max: args.max,
        seconds,
        generated: stats.generated.load(Ordering::Relaxed),
        acked,
        rejected: stats.rejected.load(Ordering::Relaxed),
        reconnects: stats.reconnects.load(Ordering::Relaxed),
        records_per_s: acked_measured as f64 / seconds.max(1e-9),
        batches: lat.len(),
        p50_ms: percentile_ms(&lat, 50.0),
        p99_ms: percentile_ms(&lat, 99.0),
        collector_rss_bytes: rss,
    })
}

/// `http://host:7443` → `http://host:9464/metrics`.
fn default_metrics_url(collector: &str) -> String {
    let rest = collector
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    let host = rest.split('/').next().unwrap_or(rest);
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    format!("http://{host}:9464/metrics")
}

/// VmRSS of a process, from /proc.
pub fn rss_from_proc(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// `process_resident_memory_bytes` from a Prometheus text endpoint.
pub fn rss_from_metrics(url: &str) -> Option<u64> {
    let body = http_get(url).ok()?;
    let line = body
        .lines()
        .find(|l| l.starts_with("process_resident_memory_bytes "))?;
    line.split_whitespace()
        .nth(1)?
        .parse::<f64>()
        .ok()
        .map(|v| v as u64)
}

/// A minimal blocking HTTP/1.1 GET of an `http://` URL (loopback monitoring only): the body
/// of a 200 response, or the status line as an error.
pub fn http_get(url: &str) -> std::io::Result<String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "only http:// URLs")
    })?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let addr = host
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address for host"))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAccept: */*\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or_default().to_string();
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(body)
    } else {
        Err(std::io::Error::other(format!("{status}: {body}")))
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_url_and_dechunk() {
        assert_eq!(
            default_metrics_url("http://10.0.0.1:7443"),
            "http://10.0.0.1:9464/metrics"
        );
        assert_eq!(dechunk("5\r\nhello\r\n1\r\n!\r\n0\r\n\r\n"), "hello!");
    }
}
