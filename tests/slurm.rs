//! Attribution on a real Slurm cluster: Debian's slurm-wlm (slurmctld, slurmd) with munge,
//! one node, brought up in a temporary directory (`proctrack/linuxproc`, `task/none`, no
//! cgroups), with the shipped Prolog and Epilog (`deploy/slurm/`) installed.
//!
//! Real jobs run `sleep`, and a fake-NVML scenario puts each job's real PID on its own GPU.
//! The real `flopmeter agent` (on the fake `libnvidia-ml.so`) streams to a real collector,
//! and the collector's API must show, per job, the model, run, stage and cluster that Slurm's
//! own conventions give:
//!
//! | job | how it is labelled | expected |
//! |---|---|---|
//! | A | `sbatch --comment "flopmeter.model=… flopmeter.run=… flopmeter.stage=sft"` | model, run, finetune |
//! | B | `sbatch -J flopmeter:<model>` | model, run `slurm-<id>` |
//! | C | `srun --comment "flopmeter.model=…"` (an interactive step) | model |
//! | D | `sbatch -J train --account research` (no label; Prolog record removed) | unattributed, traced to job, user, account, cluster |
//! | E | batch script exporting `FLOPMETER_MODEL`, `--comment "flopmeter.stage=sft"` | model from env, stage from the comment |
//! | F | `--comment`, Prolog record removed, controller stopped when the agent starts | unattributed with its job id until `squeue` answers, then its model |
//! | G | `sbatch --comment` whose work runs in an `srun` step | model, stage rl |
//!
//! Slurm never puts the comment into a task's environment, so every comment here reaches
//! the agent from Slurm itself: A, B, C, E and G through the Prolog's record, D and F through
//! `squeue` (`(null)` for D), after the agent's first queries timed out against the stopped
//! controller.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fake_nvml::builder::{GpuBuilder, ScenarioBuilder};
use fake_nvml::harness::FakeNvml;

use crate::support::{self, Proc, eventually, flopmeter, http};

fn get(port: u16, path: &str) -> Option<serde_json::Value> {
    http::get_json(std::net::SocketAddr::from(([127, 0, 0, 1], port)), path)
}

/// A port for a Slurm daemon. Slurm reads its ports from `slurm.conf` (clients as well as
/// daemons), so it cannot bind port 0 and say what it got, as our servers do: this is the
/// one place a test still picks a port in advance. A clash shows as a daemon that exits at
/// start, which [`Slurm::start`] notices and answers with other ports.
fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

const CLUSTER: &str = "flopcluster";

/// A one-node Slurm cluster in a directory, stopped (jobs cancelled, daemons killed) on drop.
struct Slurm {
    dir: PathBuf,
    conf: PathBuf,
    ctld_pid: u32,
    daemons: Vec<Proc>,
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("never happened within {limit:?}: {what}");
}

fn short_hostname() -> String {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("host name");
    h.trim().split('.').next().unwrap_or_default().to_string()
}

impl Slurm {
    /// Starts munged, slurmctld and slurmd in `dir`, with the shipped Prolog and Epilog
    /// recording comments into `comments`.
    fn start(dir: &Path, comments: &Path) -> Slurm {
        assert!(
            std::fs::read_to_string("/proc/self/status")
                .unwrap()
                .lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")),
            "the Slurm test runs slurmd, which must be root (as on a real node)"
        );
        for p in ["munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue"] {
            assert!(
                Command::new("sh")
                    .args(["-c", &format!("command -v {p}")])
                    .stdout(Stdio::null())
                    .status()
                    .unwrap()
                    .success(),
                "{p} is missing: run scripts/install-test-deps (Debian packages slurm-wlm, munge)"
            );
        }
        let munge = dir.join("munge");
        for d in [
            &munge,
            &dir.join("state"),
            &dir.join("spool"),
            &dir.join("log"),
        ] {
            std::fs::create_dir_all(d).unwrap();
        }
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&munge, std::fs::Permissions::from_mode(0o700)).unwrap();
        let key: Vec<u8> = (0..1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let key_file = munge.join("munge.key");
        std::fs::write(&key_file, key).unwrap();
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o400)).unwrap();
        let socket = munge.join("munge.sock");
        let quiet = |c: &mut Command| {
            c.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
        };
        let mut munged = Command::new("munged");
        munged
            .args(["--foreground", "--force"])
            .arg(format!("--key-file={}", key_file.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--pid-file={}", munge.join("munged.pid").display()))
            .arg(format!("--seed-file={}", munge.join("seed").display()))
            .arg(format!(
                "--log-file={}",
                dir.join("log/munged.log").display()
            ));
        quiet(&mut munged);
        let daemons = vec![Proc(munged.spawn().expect("munged starts"))];
        wait_for("munge socket", Duration::from_secs(20), || socket.exists());

        // The shipped scripts, told where to record (slurmd gives a Prolog its own
        // environment, so a wrapper sets the directory).
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        for (name, script) in [
            ("prolog", "flopmeter-prolog"),
            ("epilog", "flopmeter-epilog"),
        ] {
            let w = dir.join(name);
            std::fs::write(
                &w,
                format!(
                    "#!/bin/sh\nFLOPMETER_SLURM_COMMENT_DIR={} exec {}\n",
                    comments.display(),
                    repo.join("deploy/slurm").join(script).display()
                ),
            )
            .unwrap();
            std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let host = short_hostname();
        let mut s = Slurm {
            dir: dir.to_path_buf(),
            conf: dir.join("slurm.conf"),
            ctld_pid: 0,
            daemons,
        };
        // A daemon that exits before it serves most likely found its port taken after
        // unused_port() let it go: start again on other ports (munged stays).
        for attempt in 1..=3 {
            let (ctld_port, slurmd_port) = (unused_port(), unused_port());
            let conf = &s.conf;
            let d = dir.display();
            std::fs::write(
                conf,
                format!(
                    "ClusterName={CLUSTER}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
AuthInfo=socket={socket}
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
Prolog={d}/prolog
Epilog={d}/epilog
NodeName={host} NodeAddr=127.0.0.1 CPUs=1 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:16
",
                    socket = socket.display()
                ),
            )
            .unwrap();
            let mut ctld = Command::new("slurmctld");
            ctld.args(["-D", "-i", "-f"]).arg(&s.conf);
            quiet(&mut ctld);
            let ctld = Proc(ctld.spawn().expect("slurmctld starts"));
            s.ctld_pid = ctld.0.id();
            s.daemons.push(ctld);
            if s.wait_serving("slurmctld answers", |s| {
                s.cmd("scontrol")
                    .arg("ping")
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("is UP"))
            }) {
                let mut slurmd = Command::new("slurmd");
                slurmd.args(["-D", "-f"]).arg(&s.conf);
                quiet(&mut slurmd);
                s.daemons.push(Proc(slurmd.spawn().expect("slurmd starts")));
                if s.wait_serving("the node is idle", |s| {
                    s.cmd("sinfo")
                        .args(["-h", "-o", "%T"])
                        .output()
                        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "idle")
                }) {
                    return s;
                }
            }
            eprintln!("Slurm attempt {attempt}: a daemon exited at start; other ports");
            s.daemons.truncate(1);
        }
        panic!(
            "slurmctld or slurmd exited at start three times: see {}",
            dir.join("log").display()
        );
    }

    /// Waits (30 s at most) for `cond`; false as soon as a daemon has exited.
    fn wait_serving(&mut self, what: &str, cond: impl Fn(&Slurm) -> bool) -> bool {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if cond(self) {
                return true;
            }
            if self
                .daemons
                .iter_mut()
                .any(|d| d.0.try_wait().is_ok_and(|st| st.is_some()))
            {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("never happened within 30 s: {what}");
    }

    /// A Slurm command against this cluster.
    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf)
            .current_dir(&self.dir)
            .stdin(Stdio::null());
        c
    }

    /// `sbatch --parsable <args>`: the job id.
    fn sbatch(&self, args: &[&str]) -> String {
        let out = self
            .cmd("sbatch")
            .args(["--parsable", "-o", "/dev/null"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sbatch {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .split(';')
            .next()
            .unwrap()
            .to_string()
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) the controller: a controller that accepts
    /// connections and never answers, as an overloaded one does.
    fn controller(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([signal, &self.ctld_pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {signal} slurmctld");
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        self.controller("-CONT");
        let _ = self.cmd("scancel").args(["--user", "root"]).status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            let running = self
                .cmd("squeue")
                .args(["-h", "-o", "%i"])
                .output()
                .map(|o| !o.stdout.is_empty())
                .unwrap_or(false);
            if !running {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // Daemons are killed by their guards, slurmd first.
        while let Some(p) = self.daemons.pop() {
            drop(p);
        }
    }
}

/// The PID a job wrote into `pids/<name>` (the shell that then execs `sleep`).
fn pid_of(pids: &Path, name: &str) -> u32 {
    let f = pids.join(name);
    wait_for(
        &format!("job {name} running"),
        Duration::from_secs(60),
        || std::fs::read_to_string(&f).is_ok_and(|s| s.trim().parse::<u32>().is_ok()),
    );
    std::fs::read_to_string(&f).unwrap().trim().parse().unwrap()
}

fn runs(http: u16, model: &str) -> Vec<serde_json::Value> {
    get(http, &format!("/api/v1/runs?model={model}"))
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn unattributed_source(http: u16, job: &str) -> Option<serde_json::Value> {
    get(http, "/api/v1/unattributed?limit=100")?["sources"]
        .as_array()?
        .iter()
        .find(|s| s["source"]["job"] == job)
        .cloned()
}

#[test]
fn slurm_jobs_are_attributed_by_their_comment_name_and_environment() {
    let work = tempfile::tempdir().unwrap();
    let comments = work.path().join("comments");
    let slurm = Slurm::start(&work.path().join("slurm"), &comments);
    let pids = work.path().join("pids");
    std::fs::create_dir_all(&pids).unwrap();
    let record = |name: &str| format!("echo $$ > {}/{name}; exec sleep 900", pids.display());

    let a = slurm.sbatch(&[
        "--comment",
        "flopmeter.model=comment-7b flopmeter.run=c-run flopmeter.stage=sft",
        "--wrap",
        &record("A"),
    ]);
    let b = slurm.sbatch(&["-J", "flopmeter:named-3b", "--wrap", &record("B")]);
    let d = slurm.sbatch(&[
        "-J",
        "train",
        "--account",
        "research",
        "--wrap",
        &record("D"),
    ]);
    let script = work.path().join("train-e.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/bash\nexport FLOPMETER_MODEL=env-13b\n{}\n",
            record("E")
        ),
    )
    .unwrap();
    let e = slurm.sbatch(&["--comment", "flopmeter.stage=sft", script.to_str().unwrap()]);
    let f = slurm.sbatch(&[
        "--comment",
        "flopmeter.model=late-1b",
        "--wrap",
        &record("F"),
    ]);
    let step = format!(
        "srun bash -c 'echo $$ > {}/G; exec sleep 900'",
        pids.display()
    );
    let g = slurm.sbatch(&[
        "--comment",
        "flopmeter.model=step-7b flopmeter.stage=rl",
        "--wrap",
        &step,
    ]);
    // An interactive `srun --comment` job, as a user at a login node runs one.
    let _srun = Proc(
        slurm
            .cmd("srun")
            .args(["--comment", "flopmeter.model=srun-1b", "-J", "interactive"])
            .args(["bash", "-c", &record("C")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("srun starts"),
    );
    let names = ["A", "B", "C", "D", "E", "F", "G"];
    let pid: Vec<u32> = names.iter().map(|n| pid_of(&pids, n)).collect();
    let c = slurm
        .cmd("squeue")
        .args(["-h", "-n", "interactive", "-o", "%i"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap();
    assert!(!c.is_empty(), "the srun job is in the queue");

    // What the tasks really carry: no comment, but job, user and cluster.
    let environ = std::fs::read(format!("/proc/{}/environ", pid[0])).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        !environ.contains("SLURM_JOB_COMMENT"),
        "Slurm gives tasks no comment"
    );
    assert!(environ.contains(&format!("SLURM_JOB_ID={a}")));
    assert!(environ.contains(&format!("SLURM_CLUSTER_NAME={CLUSTER}")));
    // The Prolog recorded the comment; F's record goes, so only squeue can tell it.
    assert_eq!(
        std::fs::read_to_string(comments.join(&a)).unwrap(),
        "flopmeter.model=comment-7b flopmeter.run=c-run flopmeter.stage=sft"
    );
    assert_eq!(
        std::fs::read_to_string(comments.join(&d)).unwrap(),
        "",
        "no comment"
    );
    // F's and D's records go: only squeue can tell F's comment, and that D has none.
    std::fs::remove_file(comments.join(&f)).unwrap();
    std::fs::remove_file(comments.join(&d)).unwrap();

    // One H100 per job, busy, the job's real PID its only process.
    let mut scenario = ScenarioBuilder::new();
    for (i, p) in pid.iter().enumerate() {
        scenario = scenario.gpu(
            GpuBuilder::h100()
                .uuid(&format!("GPU-51a00000-0000-4000-8000-00000000000{i}"))
                .training(*p, 40.0, 1830),
        );
    }
    let fake = FakeNvml::new(&scenario.toml()).unwrap();

    let collector = support::collector(&work.path().join("ledger")).start();
    let (grpc, http) = (collector.grpc.port(), collector.http.port());

    // A controller that does not answer: the agent must neither wait for it nor lose F.
    slurm.controller("-STOP");
    let mut agent = flopmeter(&["agent", "--nvml-lib"]);
    agent
        .arg(fake.lib_path())
        .arg("--spool-dir")
        .arg(work.path().join("agent"))
        .args(["--collector", &format!("http://127.0.0.1:{grpc}")])
        .args(["--metrics-addr", "off", "--kube", "off"])
        .args(["--sample-interval", "100ms", "--report-interval", "500ms"])
        .arg("--slurm-comment-dir")
        .arg(&comments)
        .args(["--slurm-query-timeout", "2s"])
        .args(["--log-format", "json"])
        .env("SLURM_CONF", &slurm.conf)
        .env("FLOPMETER_LOG", "info");
    let mut agent = Proc(agent.spawn().expect("flopmeter agent starts"));
    let log = Arc::new(Mutex::new(String::new()));
    let drain = {
        let (log, mut stderr) = (log.clone(), agent.0.stderr.take().unwrap());
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                log.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };

    // The agent's log, one JSON object per line.
    let events = |log: &Mutex<String>| -> Vec<serde_json::Value> {
        log.lock()
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let message = |e: &serde_json::Value| e["fields"]["message"].as_str().unwrap_or("").to_string();
    // F's (and D's) comment cannot be had: the queries time out (one warning per outage),
    // and F's work is unattributed but traceable to its job meanwhile.
    eventually("the agent's squeue queries timed out", || {
        events(&log).iter().any(|e| {
            e["level"] == "WARN"
                && message(e).starts_with("Slurm did not give the job's comment")
                && (e["fields"]["job"] == *f || e["fields"]["job"] == *d)
        })
    });
    eventually("F's work booked unattributed with its job id", || {
        unattributed_source(http, &f).is_some()
    });
    let labelled = [
        ("comment-7b", "c-run"),
        ("named-3b", &*format!("slurm-{b}")),
        ("srun-1b", &*format!("slurm-{c}")),
        ("env-13b", &*format!("slurm-{e}")),
        ("step-7b", &*format!("slurm-{g}")),
    ]
    .map(|(m, r)| (m.to_string(), r.to_string()));
    for (model, run) in &labelled {
        eventually(
            &format!("{model} run {run} while the controller is stopped"),
            || runs(http, model).iter().any(|r| r["run"] == *run),
        );
    }
    slurm.controller("-CONT");
    eventually("F attributed once squeue answers", || {
        runs(http, "late-1b")
            .iter()
            .any(|r| r["run"] == format!("slurm-{f}"))
    });

    // Model, run, stage and cluster of every job, from the collector's API.
    let expect = [
        ("comment-7b", "c-run".to_string(), "finetune"),
        ("named-3b", format!("slurm-{b}"), "pretrain"),
        ("srun-1b", format!("slurm-{c}"), "pretrain"),
        ("env-13b", format!("slurm-{e}"), "finetune"),
        ("late-1b", format!("slurm-{f}"), "pretrain"),
        ("step-7b", format!("slurm-{g}"), "rl"),
    ];
    for (model, run, stage) in &expect {
        let rs = runs(http, model);
        assert_eq!(rs.len(), 1, "{model}: {rs:?}");
        let r = &rs[0];
        assert_eq!(r["run"], *run, "{model}");
        assert_eq!(r["stages"], serde_json::json!([stage]), "{model}");
        assert_eq!(r["clusters"], serde_json::json!([CLUSTER]), "{model}");
        assert!(
            r["counted"]["central"].as_str().is_some_and(|s| s != "0"),
            "{model}: {r}"
        );
        // All of it booked on the job's cluster: the one per-cluster row is the run.
        let by = r["by_cluster"].as_array().unwrap();
        assert_eq!(by.len(), 1, "{model}: {r}");
        assert_eq!(by[0]["cluster"], CLUSTER, "{model}");
        assert_eq!(by[0]["counted"]["flop"], r["counted"], "{model}");
    }
    // The plain `train` job: unattributed, and traceable to its job, user, account and
    // cluster, and to the command that ran.
    let src = unattributed_source(http, &d).expect("the train job is listed");
    assert_eq!(src["source"]["user"], "root");
    assert_eq!(src["source"]["namespace"], "research");
    assert_eq!(src["source"]["cluster"], CLUSTER);
    assert_eq!(src["source"]["process"], "sleep");
    assert!(
        src["counts"]["flop"]["central"]
            .as_str()
            .is_some_and(|s| s != "0")
    );
    // No labelled job is listed as unattributed (F only for its pending window).
    for job in [&a, &b, &c, &e, &g] {
        assert!(
            unattributed_source(http, job).is_none(),
            "job {job} unattributed"
        );
    }
    // D is logged once Slurm has said it has no comment (never while that was pending).
    eventually("D logged as unattributed", || {
        events(&log)
            .iter()
            .any(|e| message(e).contains("booked as unattributed"))
    });
    // The agent said which cluster it is in (the ClusterName of its slurm.conf).
    let agents = get(http, "/api/v1/agents").unwrap();
    assert_eq!(agents[0]["cluster"], CLUSTER);

    let ok = Command::new("kill")
        .args(["-TERM", &agent.0.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    assert!(agent.0.wait().unwrap().success());
    drain.join().unwrap();
    // Each unattributed source is logged once, at info, with what finds it; labelled jobs,
    // and F while it waited for Slurm, never.
    let events = events(&log);
    let unattributed: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| message(e).contains("booked as unattributed"))
        .collect();
    assert_eq!(unattributed.len(), 1, "{unattributed:?}");
    let fields = &unattributed[0]["fields"];
    assert_eq!(unattributed[0]["level"], "INFO");
    assert_eq!(fields["slurm_job"], *d);
    assert_eq!(fields["user"], "root");
    assert_eq!(fields["account"], "research");
    assert_eq!(fields["cluster"], CLUSTER);
    assert_eq!(fields["process"], "sleep");
    drop(slurm);
}
