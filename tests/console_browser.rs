//! The compliance console in a real browser, end to end.
//!
//! Starts `flopmeter demo --fast --keep-running` (the demo's story in a real collector
//! process), feeds it a real `flopmeter agent` whose job is labelled with hostile names
//! (`<script>alert(1)</script>`, `" onmouseover="x`), then runs
//! `tests/python/console_browser.py`: headless Chromium from Debian, driven through
//! chromium-driver by selenium, loads every page and checks what a person sees against the
//! JSON API (urgent model first, its deadline, band figures), the hostile names as text,
//! accessibility basics, a login with the demo's named admin token, an acknowledgement
//! through the form, and a cross-site POST without the CSRF token refused. Screenshots of each
//! page go to `<target>/tmp/console/`.
//!
//! Afterwards, from outside both, `flopmeter audit export` must show the acknowledgement
//! under the logged-in admin's name, and `flopmeter audit verify` must pass.
//!
//! Needs chromium, chromium-driver and python3 with selenium (`scripts/install-test-deps`):
//! skipped with a notice without them, except under CI, where it fails.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{self, Proc, flopmeter, http};

fn get(addr: SocketAddr, path: &str) -> Option<serde_json::Value> {
    http::get_json(addr, path)
}

const HOSTILE_MODEL: &str = "<script>alert(1)</script>";
const HOSTILE_RUN: &str = "\" onmouseover=\"x";

fn browser_ready() -> bool {
    let ok = Path::new("/usr/bin/chromium").exists()
        && Path::new("/usr/bin/chromedriver").exists()
        && Command::new("python3")
            .args(["-c", "import selenium"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium, chromium-driver or python3 selenium is missing: run scripts/install-test-deps"
        );
        eprintln!(
            "SKIPPED console_browser: chromium, chromium-driver or python3 selenium is missing \
             (scripts/install-test-deps installs them)"
        );
    }
    ok
}

/// Plays an hour of a labelled job on a simulated H100 with a real agent, in replay mode, and
/// waits until the collector has acknowledged all of it.
fn hostile_agent(dir: &Path, grpc: SocketAddr) {
    let workload = dir.join("hostile.toml");
    std::fs::write(
        &workload,
        format!(
            "gpu = \"h100-sxm\"\ncount = 1\ntensor_util = 0.4\n[[process]]\npid = 4242\n\
             [process.env]\nFLOPMETER_MODEL = {}\nFLOPMETER_RUN = {}\n",
            toml_string(HOSTILE_MODEL),
            toml_string(HOSTILE_RUN)
        ),
    )
    .unwrap();
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 3_600_000;
    let out = flopmeter(&["agent", "--simulate"])
        .arg(&workload)
        .args(["--collector", &format!("http://{grpc}")])
        .arg("--spool-dir")
        .arg(dir.join("spool"))
        .args([
            "--kube",
            "off",
            "--metrics-addr",
            "off",
            "--sample-interval",
            "10s",
            "--report-interval",
            "60s",
            "--virtual-clock-start",
            &start.to_string(),
            "--virtual-stop",
            &(start + 3_600_000).to_string(),
            "--virtual-exit-when-drained",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the hostile agent failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[test]
fn the_console_in_a_real_browser() {
    if !browser_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Port 0: the demo prints where its collector listens.
    let mut demo = Proc(
        flopmeter(&[
            "demo",
            "--fast",
            "--keep-running",
            "--listen",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap(),
    );
    // The demo prints the console's URL and, with --keep-running, says so when the story is
    // over and the collector stays up, with its gRPC address.
    let mut lines = BufReader::new(demo.0.stdout.take().unwrap()).lines();
    let (mut console_url, mut grpc_url) = (None, None);
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.trim().strip_prefix("console") {
            console_url = rest.split_whitespace().next().map(str::to_string);
        }
        if line.contains("collector still running") {
            grpc_url = line
                .split_once("(gRPC ")
                .and_then(|(_, r)| r.split([',', ')']).next())
                .map(str::to_string);
            break;
        }
    }
    let grpc_url = grpc_url.expect("the demo kept its collector running and named its gRPC port");
    let console_url = console_url.expect("the demo prints the console's URL");
    let http: SocketAddr = console_url
        .strip_prefix("http://")
        .and_then(|u| u.strip_suffix("/ui/"))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("console URL {console_url}"));
    let grpc: SocketAddr = grpc_url
        .strip_prefix("http://")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("gRPC URL {grpc_url}"));
    // Keep draining the demo's output so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    assert!(get(http, "/api/v1/alerts").is_some());

    hostile_agent(dir.path(), grpc);
    let models = get(http, "/api/v1/models").unwrap();
    assert!(
        models
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["model"] == HOSTILE_MODEL),
        "the hostile model reached the ledger: {models}"
    );

    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console");
    let _ = std::fs::remove_dir_all(&out_dir);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/console_browser.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .arg(format!("http://{http}"))
        .arg(&out_dir)
        .arg(flopmeter_sim::demo::CONSOLE_ADMIN_TOKEN)
        .arg(flopmeter_sim::demo::CONSOLE_ADMIN)
        .arg(HOSTILE_MODEL)
        .arg(HOSTILE_RUN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the browser script did not finish in 5 minutes");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(status.success(), "browser checks failed:\n{stderr}");
    let did: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    for page in ["models", "model", "alerts", "audit", "hostile-model"] {
        assert!(
            out_dir.join(format!("{page}.png")).exists(),
            "screenshot of {page}"
        );
    }

    // From outside the browser and the API: the audit log names the logged-in admin.
    let export = flopmeter(&["audit", "export", "--collector", &grpc_url])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(export.status.success());
    let acks: Vec<serde_json::Value> = String::from_utf8_lossy(&export.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &serde_json::Value| {
            e["kind"] == "acknowledged"
                && e["payload"]["model"] == did["model"]
                && e["payload"]["threshold_id"] == did["threshold"]
        })
        .collect();
    assert_eq!(acks.len(), 1, "one acknowledgement of {did}");
    assert_eq!(acks[0]["actor"], flopmeter_sim::demo::CONSOLE_ADMIN);
    let verify = flopmeter(&["audit", "verify", "--collector", &grpc_url])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "audit verify after the console's acknowledgement"
    );

    // Stopped as scripts and supervisors stop it, the demo leaves no ledger behind in the
    // temporary directory (it used to, under SIGTERM, one per run).
    let pid = demo.0.id();
    assert!(demo.terminate().success(), "the demo exits 0 on SIGTERM");
    // `/tmp`: the demo runs with a cleared environment, so without TMPDIR.
    let left: Vec<_> = std::fs::read_dir("/tmp")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("flopmeter-demo-{pid}-")))
        .collect();
    assert!(left.is_empty(), "the demo left {left:?} behind");
}

/// The collector says at start whether anyone who reaches its HTTP port can read the console
/// and the API, and stops saying so once `--viewer-tokens` protects them.
#[test]
fn the_collector_warns_when_reading_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let viewers = dir.path().join("viewers.toml");
    std::fs::write(&viewers, "victor = \"victor-token\"\n").unwrap();
    for protected in [false, true] {
        let data = dir.path().join(format!("ledger-{protected}"));
        let mut c = support::collector(&data);
        if protected {
            c = c.arg_path("--viewer-tokens", &viewers);
        }
        // Its ready file is written after the start-up warnings.
        let mut c = c.start();
        // Reads need a token once viewers exist.
        assert_eq!(c.get("/api/v1/models").is_some(), !protected);
        let stderr = c.kill9();
        assert_eq!(
            stderr.contains("no --viewer-tokens: the console (/ui/) and /api/v1 are readable"),
            !protected,
            "protected={protected}: {stderr}"
        );
    }
}
