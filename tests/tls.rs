//! TLS and mutual TLS as users run them: real `flopmeter collector` and `flopmeter agent`
//! processes (the agent on a simulated GPU workload), certificates from `flopmeter certs dev`,
//! and, for what that command does not make (a certificate from another CA, expired ones),
//! the same library it uses.
//!
//! - a plaintext client is refused by a TLS collector, and an `http://` agent says why;
//! - a client certificate from another CA fails the handshake in mutual TLS;
//! - an agent with a valid certificate streams records end to end; the CLI works over TLS;
//! - expired certificates (the collector's, an agent's, and one a server presents to an
//!   agent) give messages that say so;
//! - mutual TLS takes the agent id from the certificate: a Hello under another id is refused
//!   with PERMISSION_DENIED and the ledger does not change.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use flopmeter_tls::dev::{DevCa, LeafSpec};
use flopmeter_tls::rustls;

use crate::support::{self, CollectorProc, Log, Proc, eventually, flopmeter, http};

/// Our listeners are on loopback: the address of one of their ports.
fn lo(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn get(port: u16, path: &str) -> Option<serde_json::Value> {
    http::get_json(lo(port), path)
}

/// `flopmeter certs dev --out DIR --agent node-a`: the files every test starts from.
fn dev_certs(dir: &Path) -> PathBuf {
    let out = dir.join("certs");
    let o = flopmeter(&["certs", "dev", "--agent", "node-a", "--days", "30", "--out"])
        .arg(&out)
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "certs dev: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("--tls-client-ca") && text.contains("--agent-id node-a"),
        "certs dev prints the flags to use: {text}"
    );
    out
}

fn p(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

/// A collector process with TLS (`mutual`: and mutual TLS) on both ports, and its ports.
fn collector(work: &Path, certs: &Path, mutual: bool) -> (CollectorProc, u16, u16) {
    let mut c = support::collector(&work.join("ledger"))
        .arg_path("--tls-cert", &certs.join("collector.pem"))
        .arg_path("--tls-key", &certs.join("collector-key.pem"));
    if mutual {
        c = c.arg_path("--tls-client-ca", &certs.join("ca.pem"));
    }
    let c = c.start();
    let ca = certs.join("ca.pem");
    let (grpc, http) = (c.grpc.port(), c.http.port());
    eventually("the collector serves HTTPS", || {
        https_get(http, "/api/v1/models", &ca).is_some()
    });
    (c, grpc, http)
}

fn workload(dir: &Path) -> PathBuf {
    let w = dir.join("workload.toml");
    std::fs::write(
        &w,
        r#"
gpu = "h100-sxm"
count = 2
tensor_util = 0.45
[[process]]
pid = 4242
[process.env]
FLOPMETER_MODEL = "tls-7b"
FLOPMETER_RUN = "tls-run"
"#,
    )
    .unwrap();
    w
}

/// An agent process and its log.
fn agent(work: &Path, name: &str, args: &[&str]) -> (Proc, Log) {
    let mut child = flopmeter(&["agent", "--simulate"])
        .arg(workload(work))
        .arg("--spool-dir")
        .arg(work.join(name))
        .args(["--metrics-addr", "off", "--kube", "off"])
        .args(["--sample-interval", "50ms", "--report-interval", "200ms"])
        .args(["--drain-grace", "5s"])
        .args(args)
        .spawn()
        .expect("flopmeter agent starts");
    let log = Log::drain(child.stderr.take().unwrap());
    (Proc(child), log)
}

fn logged(log: &Log, needle: &str) -> bool {
    log.contains(needle)
}

/// An HTTPS GET trusting `ca`: the body, or `None` while the server is not up or the
/// status is not 200.
fn https_text(port: u16, path: &str, ca: &Path) -> Option<String> {
    http::https_text(lo(port), path, ca)
}

fn https_get(port: u16, path: &str, ca: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&https_text(port, path, ca)?).ok()
}

/// A sample of `name{labels}` in a Prometheus text exposition (0 when absent).
fn sample(text: &str, series: &str) -> f64 {
    http::sample(text, series).unwrap_or(0.0)
}

fn collector_metric(http: u16, ca: &Path, series: &str) -> f64 {
    https_text(http, "/metrics", ca).map_or(0.0, |t| sample(&t, series))
}

fn model_records(http: u16, ca: &Path) -> u64 {
    https_get(http, "/api/v1/models", ca)
        .and_then(|v| {
            v.as_array()?
                .iter()
                .find(|m| m["model"] == "tls-7b")
                .and_then(|m| m["records"].as_u64())
        })
        .unwrap_or(0)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn plaintext_clients_are_refused_by_a_tls_collector() {
    let work = tempfile::tempdir().unwrap();
    let certs = dev_certs(work.path());
    let ca = certs.join("ca.pem");
    let (_collector, grpc, http) = collector(work.path(), &certs, false);

    // The HTTP port speaks only TLS.
    assert!(get(http, "/api/v1/models").is_none());

    // A plaintext gRPC client (tonic, http://): refused, and told why.
    let o = flopmeter(&["models", "--collector", &format!("http://127.0.0.1:{grpc}")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a plaintext client is refused");
    assert!(
        stderr.contains("the collector speaks TLS but --collector is http://; use https://"),
        "{stderr}"
    );
    eventually("the refused handshake is counted", || {
        collector_metric(
            http,
            &ca,
            r#"flopmeter_tls_handshake_failures_total{listener="grpc",reason="not-tls"}"#,
        ) >= 1.0
    });

    // An agent configured with http:// says what is wrong, and ships nothing.
    let (_agent, log) = agent(
        work.path(),
        "plain-agent",
        &["--collector", &format!("http://127.0.0.1:{grpc}")],
    );
    eventually("the agent explains the refusal", || {
        logged(&log, "the collector speaks TLS but --collector is http://")
    });
    assert_eq!(model_records(http, &ca), 0, "nothing was shipped");
    let agents = https_get(http, "/api/v1/agents", &ca).unwrap();
    assert_eq!(agents.as_array().map(Vec::len), Some(0), "{agents}");
}

#[test]
fn mutual_tls_end_to_end_foreign_ca_and_identity() {
    let work = tempfile::tempdir().unwrap();
    let certs = dev_certs(work.path());
    let ca = certs.join("ca.pem");
    let (_collector, grpc, http) = collector(work.path(), &certs, true);
    let url = format!("https://localhost:{grpc}");

    // A valid agent certificate: records flow, over TLS, into the ledger.
    let (a, _log) = agent(
        work.path(),
        "agent-a",
        &[
            "--collector",
            &url,
            "--tls-ca",
            &p(&certs, "ca.pem"),
            "--agent-id",
            "node-a",
            "--tls-cert",
            &p(&certs, "agent-node-a.pem"),
            "--tls-key",
            &p(&certs, "agent-node-a-key.pem"),
        ],
    );
    eventually("records from node-a in the ledger", || {
        model_records(http, &ca) >= 4
    });
    // SIGTERM drains the spool; the totals are then final.
    assert!(
        Command::new("kill")
            .args(["-TERM", &a.0.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let mut a = a;
    assert!(a.0.wait().unwrap().success());
    let before = https_get(http, "/api/v1/models/tls-7b", &ca).unwrap()["summary"].clone();

    // The CLI over TLS (no client certificate: only the admin API's own rules apply).
    let o = flopmeter(&[
        "models",
        "--collector",
        &url,
        "--tls-ca",
        &p(&certs, "ca.pem"),
    ])
    .stdout(Stdio::piped())
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("tls-7b"));

    // A certificate from another CA: the handshake fails, and the agent says why.
    let foreign = DevCa::generate(30).unwrap();
    let f = foreign.issue(&LeafSpec::agent("node-a")).unwrap();
    let f_cert = write(work.path(), "foreign-node-a.pem", &f.cert_pem);
    let f_key = write(work.path(), "foreign-node-a-key.pem", &f.key_pem);
    let (_foreign_agent, log) = agent(
        work.path(),
        "agent-foreign",
        &[
            "--collector",
            &url,
            "--tls-ca",
            &p(&certs, "ca.pem"),
            "--agent-id",
            "node-a",
            "--tls-cert",
            &f_cert.display().to_string(),
            "--tls-key",
            &f_key.display().to_string(),
        ],
    );
    eventually("the agent says its certificate was refused", || {
        logged(&log, "the collector refused this client certificate")
    });
    eventually("the collector counts the unknown issuer", || {
        collector_metric(
            http,
            &ca,
            r#"flopmeter_tls_handshake_failures_total{listener="grpc",reason="client-cert-unknown-issuer"}"#,
        ) >= 1.0
    });

    // node-a's certificate, but a Hello that says node-b: PERMISSION_DENIED, nothing applied.
    let (_impostor, log) = agent(
        work.path(),
        "agent-b",
        &[
            "--collector",
            &url,
            "--tls-ca",
            &p(&certs, "ca.pem"),
            "--agent-id",
            "node-b",
            "--tls-cert",
            &p(&certs, "agent-node-a.pem"),
            "--tls-key",
            &p(&certs, "agent-node-a-key.pem"),
        ],
    );
    eventually("the impostor is refused", || {
        // tonic's words for PERMISSION_DENIED, then the collector's.
        logged(&log, "The caller does not have permission")
            && logged(&log, "is not the name in the client certificate")
    });
    assert!(
        logged(&log, "a collector with mutual TLS will refuse this agent"),
        "the agent warned at start"
    );
    eventually("the refusal is counted", || {
        collector_metric(
            http,
            &ca,
            r#"flopmeter_ingest_refused_total{reason="certificate-mismatch"}"#,
        ) >= 1.0
    });
    let after = https_get(http, "/api/v1/models/tls-7b", &ca).unwrap()["summary"].clone();
    assert_eq!(before, after, "the refused agents changed nothing");
    let agents = https_get(http, "/api/v1/agents", &ca).unwrap();
    let ids: Vec<&str> = agents
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["agent_id"].as_str())
        .collect();
    assert_eq!(ids, vec!["node-a"], "{agents}");
}

#[test]
fn expired_certificates_are_named() {
    let work = tempfile::tempdir().unwrap();
    let certs = dev_certs(work.path());
    let ca = DevCa::load(
        &std::fs::read_to_string(certs.join("ca.pem")).unwrap(),
        &std::fs::read_to_string(certs.join("ca-key.pem")).unwrap(),
    )
    .unwrap();

    // The collector's own certificate expired: it does not start, and says why.
    let old = ca.issue(&LeafSpec::collector(&[]).expired(3)).unwrap();
    let old_cert = write(work.path(), "old-collector.pem", &old.cert_pem);
    let old_key = write(work.path(), "old-collector-key.pem", &old.key_pem);
    let o = flopmeter(&["collector", "--data-dir"])
        .arg(work.path().join("ledger"))
        .args(["--listen", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .arg("--tls-cert")
        .arg(&old_cert)
        .arg("--tls-key")
        .arg(&old_key)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("collector certificate (--tls-cert)")
            && stderr.contains("old-collector.pem")
            && stderr.contains("expired on")
            && stderr.contains("renew it"),
        "{stderr}"
    );

    // An agent's client certificate expired: it does not start either.
    let old = ca.issue(&LeafSpec::agent("node-a").expired(3)).unwrap();
    let old_cert = write(work.path(), "old-agent.pem", &old.cert_pem);
    let old_key = write(work.path(), "old-agent-key.pem", &old.key_pem);
    let (mut a, log) = agent(
        work.path(),
        "agent-old",
        &[
            "--collector",
            "https://localhost:1",
            "--tls-ca",
            &p(&certs, "ca.pem"),
            "--tls-cert",
            &old_cert.display().to_string(),
            "--tls-key",
            &old_key.display().to_string(),
        ],
    );
    assert!(!a.0.wait().unwrap().success());
    eventually("the agent names its expired certificate", || {
        logged(&log, "client certificate (--tls-cert)")
            && logged(&log, "old-agent.pem")
            && logged(&log, "expired on")
    });

    // A server whose certificate expired after it started: the agent says so.
    let port = expired_tls_server(&ca);
    let (_a, log) = agent(
        work.path(),
        "agent-late",
        &[
            "--collector",
            &format!("https://localhost:{port}"),
            "--tls-ca",
            &p(&certs, "ca.pem"),
        ],
    );
    eventually("the agent says the collector's certificate expired", || {
        logged(&log, "TLS: the collector's certificate has expired")
    });
}

/// A TLS server presenting an expired certificate from `ca` (a collector whose certificate
/// ran out while it was running), answering handshakes until the test ends.
fn expired_tls_server(ca: &DevCa) -> u16 {
    use rustls::pki_types::pem::PemObject as _;
    let leaf = ca.issue(&LeafSpec::collector(&[]).expired(1)).unwrap();
    let chain =
        vec![rustls::pki_types::CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap()];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(flopmeter_tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let cfg = Arc::new(cfg);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(mut tcp) = tcp else { continue };
            let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
            let mut conn = rustls::ServerConnection::new(cfg.clone()).unwrap();
            while conn.is_handshaking() {
                if conn.complete_io(&mut tcp).is_err() {
                    break;
                }
            }
        }
    });
    port
}
