//! Hostile input at the gRPC door, from an independent client: `tests/python/hostile_client.py`
//! (Python, stubs generated from the `.proto` files at run time by grpcio-tools) sends
//! malformed, truncated and oversized messages, replays, forged agent ids, wrong tokens,
//! absurd records, sequence gaps and racing streams to a real `flopmeter collector` process.
//!
//! The script asserts each case's status and counter; this test then checks, from outside
//! both, that the collector is still alive, that its totals are exactly what the accepted
//! records add up to (u128 sums compared as decimal strings), that every refusal and
//! rejection reason the attacks aim at was counted, and that `flopmeter ledger verify` passes
//! online and, after a clean stop, offline.
//!
//! Needs python3 with grpcio-tools (`scripts/install-test-deps`): skipped with a notice
//! without it, except under CI, where it fails.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::{self, http};

/// Small enough that an oversized batch is cheap to build, large enough for every other case.
const MAX_MESSAGE_BYTES: usize = 64 << 10;
const AGENT_A: &str = "hostile-agent-a";
const AGENT_B: &str = "hostile-agent-b";

/// Refusal reasons (`flopmeter_ingest_refused_total`) the attacks must have moved.
const REFUSALS: &[&str] = &[
    "malformed-message",
    "message-too-large",
    "bad-hello",
    "bad-token",
    "unknown-agent",
    "forged-identity",
    "sequence-not-increasing",
    "hello-timeout",
    "not-grpc",
];

/// Quarantine reasons (`flopmeter_ingest_rejected_records_total`) the absurd records hit.
const REJECTIONS: &[&str] = &[
    "flop-above-peak",
    "bad-interval",
    "interval-too-long",
    "future-event-time",
    "band-order",
    "unknown-gpu-type",
    "gpu-time-above-interval",
    "implausible-energy",
    "bad-identity",
    "bad-value",
    "implausible-peak",
    "bad-declaration",
    "undeclared-gpu",
    "gpu-overlap",
    "event-time-too-old",
];

/// The collector's `--hello-timeout` here, seconds: short, so silent connections are
/// closed within the test.
const HELLO_TIMEOUT_S: u32 = 2;

/// The collector's file-descriptor limit here: low, so the client's flood exhausts it.
const FD_LIMIT: u32 = 256;

/// Whether python3 with grpcio-tools is here; without it, fails under CI and skips elsewhere.
fn python_ready() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools.protoc"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 with grpcio-tools is missing: run scripts/install-test-deps"
        );
        eprintln!(
            "SKIPPED hostile_client: python3 with grpcio-tools is missing \
             (scripts/install-test-deps installs it)"
        );
    }
    ok
}

/// The value of one sample of the exposition (`name{labels}` exactly as rendered).
fn sample(metrics: &str, series: &str) -> f64 {
    http::sample(metrics, series).unwrap_or_else(|| panic!("no sample {series} in /metrics"))
}

fn verify(args: &[&str]) -> (bool, String) {
    let o = support::flopmeter(&["ledger", "verify"])
        .args(args)
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

#[test]
fn an_independent_hostile_client_changes_no_total() {
    if !python_ready() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("ledger");
    let tokens = work.path().join("agent-tokens.toml");
    std::fs::write(
        &tokens,
        format!("{AGENT_A} = \"tok-a-5f0c9e\"\n{AGENT_B} = \"tok-b-81d2aa\"\n"),
    )
    .unwrap();
    let mut collector = support::collector(&data)
        .args(["--hello-timeout", &format!("{HELLO_TIMEOUT_S}s")])
        .arg_path("--agent-tokens", &tokens)
        .args(["--max-message-bytes", &MAX_MESSAGE_BYTES.to_string()])
        .fd_limit(FD_LIMIT)
        .start();
    let (grpc, http) = (collector.grpc, collector.http);

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/hostile_client.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(["--grpc", &grpc.to_string()])
        .args(["--http", &http.to_string()])
        .arg("--tokens")
        .arg(&tokens)
        .args(["--agent", AGENT_A, "--agent", AGENT_B])
        .args(["--max-message-bytes", &MAX_MESSAGE_BYTES.to_string()])
        .args(["--hello-timeout", &HELLO_TIMEOUT_S.to_string()])
        .args(["--collector-pid", &collector.proc.0.id().to_string()])
        .args(["--flood", &(FD_LIMIT + 150).to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "hostile client reported failures:\n{stdout}\ncollector log:\n{}",
        collector.log.text()
    );
    assert!(
        collector.proc.0.try_wait().unwrap().is_none(),
        "the collector died:\n{}",
        collector.log.text()
    );

    // The totals: exactly what the accepted records add up to, per the client.
    let expected: BTreeMap<String, String> = serde_json::from_str(
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("TOTALS "))
            .expect("the client prints TOTALS"),
    )
    .unwrap();
    let models = collector.get("/api/v1/models").unwrap();
    let models = models.as_array().unwrap();
    assert_eq!(models.len(), 1, "only the client's model: {models:?}");
    let m = &models[0];
    assert_eq!(m["model"], "hostile-model");
    assert_eq!(m["records"].to_string(), expected["records"]);
    for bound in ["low", "central", "high"] {
        // u128 figures are decimal strings in the JSON API.
        assert_eq!(
            m["counted"][bound].as_str().unwrap(),
            expected[bound],
            "{bound}"
        );
    }
    // Nothing landed outside the model either (an absurd record counted as unattributed
    // would not show in the model's totals).
    let metrics = http::get_text(http, "/metrics").expect("/metrics answers");
    assert_eq!(
        sample(&metrics, "flopmeter_ingest_records_total").to_string(),
        expected["records"]
    );
    assert!(
        !metrics.contains("flopmeter_unattributed_flop{"),
        "unattributed work appeared"
    );
    for reason in REFUSALS {
        let n = sample(
            &metrics,
            &format!("flopmeter_ingest_refused_total{{reason=\"{reason}\"}}"),
        );
        assert!(n > 0.0, "refusal {reason} was never counted");
    }
    for reason in REJECTIONS {
        let n = sample(
            &metrics,
            &format!("flopmeter_ingest_rejected_records_total{{reason=\"{reason}\"}}"),
        );
        assert!(n > 0.0, "rejection {reason} was never counted");
    }
    assert!(sample(&metrics, "flopmeter_ingest_resends_total") > 0.0);
    assert!(
        sample(
            &metrics,
            "flopmeter_accept_errors_total{listener=\"grpc\",reason=\"fd-exhausted\"}"
        ) > 0.0,
        "running out of descriptors was never counted"
    );
    assert!(sample(&metrics, "flopmeter_ingest_duplicate_records_total") > 0.0);

    // The ledger is consistent with its raw records: online, then offline after a clean stop.
    let (ok, text) = verify(&["--collector", &collector.url()]);
    assert!(ok, "online verify failed: {text}");
    let status = collector.proc.terminate();
    assert!(
        status.success(),
        "collector exit: {status:?}\n{}",
        collector.log.text()
    );
    let (ok, text) = verify(&["--data-dir", data.to_str().unwrap()]);
    assert!(ok, "offline verify failed: {text}");
    assert!(text.contains("ok:"), "{text}");
}

/// Mutual TLS from the same independent client: the CLI's certificate (`flopmeter certs dev`
/// `admin.pem`, CN `flopmeter-admin`) must not stream records as an agent of that name,
/// because its role is not the agent's; a TLS connection that never sends the HTTP/2
/// preface is closed.
#[test]
fn an_independent_client_meets_certificate_roles_in_mutual_tls() {
    if !python_ready() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let certs = work.path().join("certs");
    let o = support::flopmeter(&["certs", "dev", "--out"])
        .arg(&certs)
        .args(["--agent", AGENT_A])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let tokens = work.path().join("agent-tokens.toml");
    std::fs::write(&tokens, format!("{AGENT_A} = \"unused\"\n")).unwrap();
    let c = |f: &str| certs.join(f);
    let collector = support::collector(&work.path().join("ledger"))
        .args(["--hello-timeout", &format!("{HELLO_TIMEOUT_S}s")])
        .arg_path("--tls-cert", &c("collector.pem"))
        .arg_path("--tls-key", &c("collector-key.pem"))
        .arg_path("--tls-client-ca", &c("ca.pem"))
        .start();
    let (grpc, http) = (collector.grpc.port(), collector.http.port());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/hostile_client.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(["--grpc", &format!("localhost:{grpc}")])
        .args(["--http", &format!("localhost:{http}")])
        .arg("--tokens")
        .arg(&tokens)
        .args(["--agent", AGENT_A, "--agent", AGENT_B])
        .args(["--max-message-bytes", &MAX_MESSAGE_BYTES.to_string()])
        .args(["--hello-timeout", &HELLO_TIMEOUT_S.to_string()])
        .arg("--tls-ca")
        .arg(c("ca.pem"))
        .arg("--tls-cert")
        .arg(c(&format!("agent-{AGENT_A}.pem")))
        .arg("--tls-key")
        .arg(c(&format!("agent-{AGENT_A}-key.pem")))
        .arg("--admin-cert")
        .arg(c("admin.pem"))
        .arg("--admin-key")
        .arg(c("admin-key.pem"))
        .stdin(Stdio::null())
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "hostile client reported failures:\n{stdout}\ncollector log:\n{}",
        collector.log.text()
    );
}
