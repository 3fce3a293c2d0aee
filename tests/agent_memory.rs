//! The agent's memory ceiling, as a process: a `flopmeter agent` whose collector is a black
//! hole (a TCP listener that accepts and never answers) and whose spool is tiny plays many
//! virtual days of 32 record series as fast as it can. The spool refuses almost at once, so
//! the sampler holds records in memory — one per series per 30-minute span — until its ceiling
//! (`max_held_records`), then writes them past the cap. Whatever the collector does, the held
//! series never exceed the ceiling and the resident set stays under a fixed bound, after
//! several ceiling cycles.
//!
//! Virtual time with `--virtual-hold-when-full` makes this a seconds-long test: the sampler
//! behaves exactly as on the real clock (hold, close spans, spill past the cap) instead of
//! pausing as replay mode otherwise does.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use crate::support::{self, flopmeter, http};

/// The sampler's ceiling (`SamplerConfig::max_held_records`) plus one open record per series.
const CEILING: f64 = 10_000.0 + 32.0;
/// Peak resident set allowed to the debug-build agent (see the measurement printed).
const RSS_BOUND_KIB: u64 = 96 * 1024;

fn gauge(text: &str, name: &str) -> Option<f64> {
    http::sample(text, name)
}

/// `VmRSS` / `VmHWM` of a process, KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

#[test]
fn agent_memory_is_bounded_when_the_collector_stalls_and_the_spool_is_full() {
    let work = tempfile::tempdir().unwrap();
    // 8 GPUs, 4 runs on each: 32 series.
    let mut workload = String::from("gpu = \"h100-sxm\"\ncount = 8\ntensor_util = 0.4\n");
    for p in 0..4 {
        workload.push_str(&format!(
            "[[process]]\npid = {}\nsm_share = 1.0\n[process.env]\nFLOPMETER_MODEL = \"mem-{p}\"\n\
             FLOPMETER_RUN = \"run-{p}\"\n",
            41000 + p
        ));
    }
    let wl = work.path().join("workload.toml");
    std::fs::write(&wl, workload).unwrap();

    // The stalled collector: connections are accepted and then left hanging.
    let hole = TcpListener::bind("127.0.0.1:0").unwrap();
    let hole_port = hole.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in hole.incoming().flatten() {
            held.push(s);
        }
    });

    let (mut agent, _log, ready, _ready_dir) = support::start_agent(
        flopmeter(&["agent", "--simulate"])
            .arg(&wl)
            .arg("--spool-dir")
            .arg(work.path().join("agent"))
            .args(["--collector", &format!("http://127.0.0.1:{hole_port}")])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .args(["--kube", "off", "--spool-max-bytes", "4KiB"])
            .args(["--sample-interval", "5m", "--report-interval", "30m"])
            .args(["--virtual-clock-start", "1700000000000"])
            .arg("--virtual-hold-when-full")
            .env("FLOPMETER_LOG", "error"),
    );
    let maddr = support::metrics_addr(&ready);
    let pid = agent.0.id();

    // Run until the ceiling has been reached and spilled twice.
    let deadline = Instant::now() + Duration::from_secs(240);
    let (mut max_held, mut over_cap, mut max_rss, mut full) = (0.0f64, 0.0f64, 0u64, false);
    while over_cap < 2.0 * 10_000.0 {
        assert!(
            Instant::now() < deadline,
            "the ceiling was not reached in time: held {max_held}, over cap {over_cap}"
        );
        assert!(agent.0.try_wait().unwrap().is_none(), "the agent died");
        if let Some(m) = http::get_text(maddr, "/metrics") {
            max_held =
                max_held.max(gauge(&m, "flopmeter_agent_sampler_held_series").unwrap_or(0.0));
            over_cap = gauge(&m, "flopmeter_agent_spool_over_cap_records").unwrap_or(0.0);
            full |= gauge(&m, "flopmeter_agent_spool_full") == Some(1.0);
        }
        max_rss = max_rss.max(status_kib(pid, "VmRSS"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let hwm = status_kib(pid, "VmHWM");
    println!(
        "agent memory: held series peak {max_held}, over-cap records {over_cap}, \
         VmRSS peak sampled {max_rss} KiB, VmHWM {hwm} KiB (bound {RSS_BOUND_KIB} KiB)"
    );
    assert!(
        max_held <= CEILING,
        "held series {max_held} above the ceiling {CEILING}"
    );
    assert!(
        max_held > 1000.0,
        "the sampler did hold records: {max_held}"
    );
    assert!(full, "flopmeter_agent_spool_full was raised");
    assert!(
        hwm <= RSS_BOUND_KIB,
        "peak RSS {hwm} KiB above the bound {RSS_BOUND_KIB} KiB"
    );
}
