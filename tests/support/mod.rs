//! The test harness of the end-to-end tests: real `flopmeter` processes, the HTTP client, the
//! fake-NVML scenario builder (`fake_nvml::builder`) and proptest's seed.
//!
//! `http.rs`, `proc.rs` and `seed.rs` are also the harness of `agent/tests` and
//! `collector/tests`, which include them by path: one copy of each mechanism.
#![allow(dead_code)]

pub mod http;
pub mod proc;
pub mod replay;
pub mod seed;

use std::ffi::{OsStr, OsString};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[allow(unused_imports)] // Each binary uses its own part of the harness.
pub use proc::{Log, Proc, eventually, signal};

/// The `flopmeter` binary with a clean environment (PATH only) and warnings-only logs.
pub fn flopmeter(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_flopmeter"));
    c.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("FLOPMETER_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// A `sleep` standing in for a training process on a fake-NVML GPU (the scenario lists its
/// PID), labelled as a job is: `FLOPMETER_MODEL`, `FLOPMETER_RUN`, BF16 declared.
pub fn trainer(model: &str, run: &str) -> Proc {
    Proc(
        Command::new("sleep")
            .arg("3600")
            .env("FLOPMETER_MODEL", model)
            .env("FLOPMETER_RUN", run)
            .env("FLOPMETER_PRECISION", "bf16")
            .spawn()
            .expect("sleep runs"),
    )
}

/// A `flopmeter collector` process to be started: on `--data-dir`, both listeners on port 0
/// unless [`CollectorCmd::on`] names them, `--ready-file` to learn the ports.
pub struct CollectorCmd {
    args: Vec<OsString>,
    envs: Vec<(String, OsString)>,
    addrs: Option<(SocketAddr, SocketAddr)>,
    fd_limit: Option<u32>,
}

/// `flopmeter collector --data-dir <data>`; add flags with [`CollectorCmd::args`].
pub fn collector(data: &Path) -> CollectorCmd {
    CollectorCmd {
        args: vec!["collector".into(), "--data-dir".into(), data.into()],
        envs: Vec::new(),
        addrs: None,
        fd_limit: None,
    }
}

/// `flopmeter collector --store <dsn> --replica-name <name>`: one replica of a ledger in
/// PostgreSQL, with the lease's defaults unless [`CollectorCmd::args`] sets them.
pub fn collector_on_store(dsn: &str, replica: &str) -> CollectorCmd {
    CollectorCmd {
        args: ["collector", "--store", dsn, "--replica-name", replica]
            .into_iter()
            .map(OsString::from)
            .collect(),
        envs: Vec::new(),
        addrs: None,
        fd_limit: None,
    }
}

impl CollectorCmd {
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// `flag path`.
    pub fn arg_path(self, flag: &str, path: &Path) -> Self {
        self.args([OsStr::new(flag), path.as_os_str()])
    }

    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        self.envs.push((key.into(), value.as_ref().to_owned()));
        self
    }

    /// Listens on these (gRPC, HTTP) addresses instead of port 0: a restart where its
    /// clients are, on the ports the kernel gave the first process (which held them until
    /// it died, so no other test picked them meanwhile).
    pub fn on(mut self, grpc: SocketAddr, http: SocketAddr) -> Self {
        self.addrs = Some((grpc, http));
        self
    }

    /// Runs it under `ulimit -n <n>` (through a shell that `exec`s it, so its pid is the
    /// child's).
    pub fn fd_limit(mut self, n: u32) -> Self {
        self.fd_limit = Some(n);
        self
    }

    /// Starts it and waits until it serves.
    pub fn start(self) -> CollectorProc {
        let ready_dir = tempfile::tempdir().unwrap();
        let ready = ready_dir.path().join("ready.json");
        let (grpc, http) = self
            .addrs
            .map(|(g, h)| (g.to_string(), h.to_string()))
            .unwrap_or_else(|| ("127.0.0.1:0".into(), "127.0.0.1:0".into()));
        let mut cmd = match self.fd_limit {
            None => flopmeter(&[]),
            Some(n) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(env!("CARGO_BIN_EXE_flopmeter"))
                    .env_clear()
                    .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                    .env("FLOPMETER_LOG", "warn")
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped());
                sh
            }
        };
        cmd.args(&self.args)
            .args(["--listen", &grpc, "--http-addr", &http])
            .arg("--ready-file")
            .arg(&ready);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("flopmeter collector starts");
        let log = Log::drain(child.stderr.take().expect("stderr is piped"));
        let v = proc::wait_ready_file(&mut child, &ready, &log);
        let addr = |k: &str| -> SocketAddr {
            v[k].as_str()
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("ready file without {k}: {v}"))
        };
        CollectorProc {
            grpc: addr("grpc"),
            http: addr("http"),
            proc: Proc(child),
            log,
            _ready: ready_dir,
        }
    }
}

/// A running `flopmeter collector`, killed when dropped.
pub struct CollectorProc {
    pub proc: Proc,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub log: Log,
    _ready: tempfile::TempDir,
}

impl CollectorProc {
    /// `http://<grpc>`, for agents and the CLI.
    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// The JSON of `GET path` on its HTTP API (`None` unless 200).
    pub fn get(&self, path: &str) -> Option<serde_json::Value> {
        http::get_json(self.http, path)
    }

    /// SIGKILL; returns what it logged.
    pub fn kill9(&mut self) -> String {
        self.proc.kill9();
        self.log.text()
    }
}

/// Starts a `flopmeter agent` (or any command taking `--ready-file`) and waits until it runs:
/// the process, its log and what it wrote (`agent_id`, `node`, `metrics`).
pub fn start_agent(cmd: &mut Command) -> (Proc, Log, serde_json::Value, tempfile::TempDir) {
    let ready_dir = tempfile::tempdir().unwrap();
    let ready = ready_dir.path().join("ready.json");
    let mut child = cmd
        .arg("--ready-file")
        .arg(&ready)
        .stderr(Stdio::piped())
        .spawn()
        .expect("flopmeter agent starts");
    let log = Log::drain(child.stderr.take().expect("stderr is piped"));
    let v = proc::wait_ready_file(&mut child, &ready, &log);
    (Proc(child), log, v, ready_dir)
}

/// The metrics address an agent's ready file reports.
pub fn metrics_addr(ready: &serde_json::Value) -> SocketAddr {
    ready["metrics"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no metrics address in {ready}"))
}

/// `target/tmp/<name>`, emptied: scratch space that outlives no run and is never `/tmp`.
pub fn scratch(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// Sends `batches` batches of `a` to `url`, all acknowledged.
pub fn feed_agent(url: &str, mut a: flopmeter_sim::agent::SimAgent, batches: u64) {
    let agent = a.spec().agent_id.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let stop = flopmeter_sim::agent::StopAt {
            batches: Some(batches),
            deadline: None,
        };
        a.run(
            flopmeter_sim::loadgen::channel(url).unwrap(),
            flopmeter_sim::agent::Pace::Max,
            stop,
            std::time::Duration::ZERO,
            std::sync::Arc::new(flopmeter_sim::agent::SimStats::default()),
        )
        .await;
        assert_eq!(a.unacked(), 0, "{agent}: every batch acknowledged");
    });
}
