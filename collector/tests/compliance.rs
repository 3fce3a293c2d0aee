//! The compliance engine on a real collector: the outbox survives a sink outage without
//! losing or duplicating anything, a real Alertmanager receives the alert, the audit chain
//! detects tampering, and the demo tells its story in short mode.
//!
//! Time: the engine runs in virtual time (an atomic the test moves), so no assertion
//! depends on wall-clock timing; waits are bounded polls.
//!
//! Why one file of 1,200 lines: the tests share one fixture (a collector with a virtual
//! engine clock and a recording webhook; one test adds a real Alertmanager)
//! and read as one story of an alert's life; split by topic, every part would import the
//! whole fixture and the story would be harder to follow. The storage-boundary work moves
//! its store-level cases into the parametrised store suite, which shrinks it.

use crate::support;
use support::proc::{Log, Proc};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use flopmeter_collector::compliance::{ComplianceStore, EngineTime, SinkConfig, outbox};
use flopmeter_collector::config::CollectorConfig;
use flopmeter_collector::ledger::sled_store::SledStore;
use flopmeter_collector::{Collector, now_unix_ms};
use flopmeter_core::utc::MS_PER_DAY;
use flopmeter_proto::v1 as pb;

const SECRET: &str = "test-secret";

/// A webhook receiver that can be "down" (503) and records what it accepted.
#[derive(Debug, Default)]
struct Receiver {
    down: AtomicBool,
    accepted: Mutex<Vec<String>>,
    bodies: Mutex<Vec<serde_json::Value>>,
    refused: Mutex<u32>,
}

async fn receive(
    State(r): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    if r.down.load(Ordering::SeqCst) {
        *r.refused.lock().unwrap() += 1;
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let sig = headers
        .get("x-flopmeter-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(
        outbox::verify_signature(SECRET, &body, sig),
        "bad webhook signature"
    );
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let key = v["key"].as_str().unwrap().to_string();
    assert_eq!(
        headers
            .get("x-flopmeter-idempotency-key")
            .and_then(|v| v.to_str().ok()),
        Some(key.as_str())
    );
    r.accepted.lock().unwrap().push(key);
    r.bodies.lock().unwrap().push(v);
    StatusCode::OK
}

async fn start_receiver() -> (Arc<Receiver>, SocketAddr) {
    let r = Arc::new(Receiver::default());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(r.clone());
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (r, addr)
}

fn config(dir: &std::path::Path, vnow: &Arc<AtomicI64>, sinks: Vec<SinkConfig>) -> CollectorConfig {
    let mut cfg = CollectorConfig::for_data_dir(dir);
    let v = vnow.clone();
    cfg.compliance.time = EngineTime::from_fn(move || v.load(Ordering::SeqCst));
    cfg.compliance.sinks = sinks;
    // The test drives evaluation and delivery; keep the background loops out of the way.
    cfg.compliance.interval = Duration::from_secs(3600);
    cfg.compliance.debounce = Duration::from_secs(3600);
    cfg.compliance.backoff = (Duration::from_millis(1), Duration::from_millis(5));
    cfg
}

async fn plan(c: &Collector, model: &str, flop: &str) {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", c.grpc_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    pb::admin_client::AdminClient::new(ch)
        .set_model(pb::SetModelRequest {
            entry: Some(pb::ModelEntry {
                model: model.into(),
                role: pb::ModelRole::Provider as i32,
                planned_flop: flop.into(),
                ..pb::ModelEntry::default()
            }),
            by: String::new(),
        })
        .await
        .unwrap();
}

fn pending(c: &Collector) -> usize {
    c.compliance()
        .engine()
        .store()
        .outbox()
        .unwrap()
        .iter()
        .filter(|i| i.state == flopmeter_collector::compliance::store::DeliveryState::Pending)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_sink_down_then_up_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (recv, addr) = start_receiver().await;
    recv.down.store(true, Ordering::SeqCst);
    let vnow = Arc::new(AtomicI64::new(now_unix_ms()));
    let c = Collector::start(config(
        dir.path(),
        &vnow,
        vec![SinkConfig::Webhook {
            name: "t".into(),
            url: format!("http://{addr}/hook"),
            secret: SECRET.into(),
        }],
    ))
    .await
    .unwrap();
    plan(&c, "m1", "2e25").await;
    plan(&c, "m2", "3e25").await;
    vnow.store(now_unix_ms() + 1_000, Ordering::SeqCst);
    let comp = c.compliance();
    comp.evaluate_now().await.unwrap();
    // Re-evaluating at the same instant adds nothing (idempotent rules and outbox keys).
    let before = comp.engine().store().outbox().unwrap().len();
    comp.evaluate_now().await.unwrap();
    assert_eq!(comp.engine().store().outbox().unwrap().len(), before);
    // The log sink delivers (here or in the background loop); the webhook refuses.
    let log_delivered = || {
        comp.engine()
            .store()
            .outbox()
            .unwrap()
            .iter()
            .filter(|i| {
                i.sink == "log"
                    && i.state == flopmeter_collector::compliance::store::DeliveryState::Delivered
            })
            .count()
    };
    for _ in 0..200 {
        comp.deliver_now().await.unwrap();
        if log_delivered() == 2 && *recv.refused.lock().unwrap() >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(log_delivered(), 2);
    assert!(*recv.refused.lock().unwrap() >= 1, "the webhook is down");
    // A week passes with the sink still down: the 7-day reminders queue behind.
    vnow.fetch_add(7 * MS_PER_DAY, Ordering::SeqCst);
    comp.evaluate_now().await.unwrap();
    for _ in 0..5 {
        comp.deliver_now().await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(recv.accepted.lock().unwrap().is_empty());
    assert!(*recv.refused.lock().unwrap() >= 2);
    assert_eq!(
        pending(&c),
        4,
        "2 clock starts + 2 reminders wait for the webhook"
    );
    let metrics = c.metrics().render();
    assert!(
        metrics.contains("flopmeter_outbox_pending{sink=\"webhook:t\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("flopmeter_outbox_deliveries_total{result=\"error\",sink=\"webhook:t\"}")
    );

    // The sink comes back: everything arrives, once, in order per alert.
    recv.down.store(false, Ordering::SeqCst);
    for _ in 0..200 {
        comp.deliver_now().await.unwrap();
        if pending(&c) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(pending(&c), 0);
    let got = recv.accepted.lock().unwrap().clone();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for k in &got {
        *counts.entry(k.as_str()).or_default() += 1;
    }
    let expected = [
        "m1/eu-systemic-risk/clock-started/1",
        "m1/eu-systemic-risk/reminder-7d/1",
        "m2/eu-systemic-risk/clock-started/1",
        "m2/eu-systemic-risk/reminder-7d/1",
    ];
    assert_eq!(counts.keys().copied().collect::<Vec<_>>(), expected);
    assert!(counts.values().all(|n| *n == 1), "duplicates: {got:?}");
    for m in ["m1", "m2"] {
        let pos = |k: &str| {
            got.iter()
                .position(|g| g == &format!("{m}/eu-systemic-risk/{k}"))
        };
        assert!(pos("clock-started/1") < pos("reminder-7d/1"), "{got:?}");
    }
    // Delivery status is visible per alert.
    let views = comp.engine().alert_views().unwrap();
    assert!(views.iter().all(|v| {
        v.delivery
            .iter()
            .any(|d| d.sink == "webhook:t" && d.delivered == 2 && d.pending == 0)
    }));
    c.shutdown().await.unwrap();
}

/// Starts the Debian Alertmanager on loopback, on a port it picks (port 0), and returns it
/// with the address from its "Listening on" log line; `None` (after a loud message) when it
/// is not installed and this is not CI.
fn start_alertmanager(dir: &std::path::Path) -> Option<(Proc, SocketAddr)> {
    let bin = std::path::Path::new("/usr/bin/prometheus-alertmanager");
    if !bin.exists() {
        if std::env::var_os("CI").is_some() {
            panic!(
                "CI is set but /usr/bin/prometheus-alertmanager is missing: run scripts/install-test-deps"
            );
        }
        eprintln!(
            "\n!!!!! SKIPPING the real-Alertmanager test: /usr/bin/prometheus-alertmanager is not \
             installed (apt-get install prometheus-alertmanager, or scripts/install-test-deps) !!!!!\n"
        );
        return None;
    }
    let cfg = dir.join("alertmanager.yml");
    std::fs::write(
        &cfg,
        "route:\n  receiver: blackhole\nreceivers:\n  - name: blackhole\n",
    )
    .unwrap();
    let mut child = std::process::Command::new(bin)
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--storage.path={}", dir.join("data").display()))
        .arg("--web.listen-address=127.0.0.1:0")
        .arg("--cluster.listen-address=")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start alertmanager");
    let log = Log::drain(child.stderr.take().unwrap());
    let am = Proc(child);
    // `... msg="Listening on" address=127.0.0.1:41101`
    let mut addr = None;
    support::proc::eventually("alertmanager says where it listens", || {
        addr = log.text().lines().find_map(|l| {
            l.contains("msg=\"Listening on\"")
                .then(|| {
                    l.split("address=")
                        .nth(1)?
                        .split_whitespace()
                        .next()?
                        .parse()
                        .ok()
                })
                .flatten()
        });
        addr.is_some()
    });
    Some((am, addr.unwrap()))
}

/// A tiny HTTP GET: the body of a 200.
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    support::http::get_text(addr, path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_alertmanager_receives_the_alert_with_labels_and_annotations() {
    let amdir = tempfile::tempdir().unwrap();
    let Some((_am, port)) = start_alertmanager(amdir.path()) else {
        return;
    };
    let mut ready = false;
    for _ in 0..200 {
        if http_get(port, "/-/ready").is_some() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "alertmanager did not become ready");

    let dir = tempfile::tempdir().unwrap();
    let vnow = Arc::new(AtomicI64::new(now_unix_ms()));
    let c = Collector::start(config(
        dir.path(),
        &vnow,
        vec![SinkConfig::Alertmanager {
            url: format!("http://{port}"),
        }],
    ))
    .await
    .unwrap();
    plan(&c, "am-model", "2.1e25").await;
    vnow.store(now_unix_ms() + 1_000, Ordering::SeqCst);
    c.compliance().evaluate_now().await.unwrap();
    let mut found = None;
    for _ in 0..100 {
        c.compliance().deliver_now().await.unwrap();
        if let Some(body) = http_get(port, "/api/v2/alerts") {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            if let Some(a) = v
                .as_array()
                .and_then(|a| a.iter().find(|a| a["labels"]["model"] == "am-model"))
            {
                found = Some(a.clone());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let a = found.expect("the alert reached Alertmanager");
    let l = &a["labels"];
    assert_eq!(l["alertname"], "FlopmeterComplianceAlert");
    assert_eq!(l["threshold"], "eu-systemic-risk");
    assert_eq!(l["severity"], "critical");
    assert_eq!(l["source"], "flopmeter");
    assert_eq!(l["team"], "compliance");
    let summary = a["annotations"]["summary"].as_str().unwrap();
    let description = a["annotations"]["description"].as_str().unwrap();
    assert!(summary.contains("am-model"), "{summary}");
    assert!(description.contains("Art. 51"), "{description}");
    assert!(description.contains("deadline"), "{description}");
    assert_eq!(a["status"]["state"], "active");
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_detects_modified_deleted_and_reordered_entries() {
    let dir = tempfile::tempdir().unwrap();
    let vnow = Arc::new(AtomicI64::new(now_unix_ms()));
    let c = Collector::start(config(dir.path(), &vnow, Vec::new()))
        .await
        .unwrap();
    plan(&c, "a1", "2e25").await;
    plan(&c, "a2", "5e25").await;
    vnow.store(now_unix_ms() + 1_000, Ordering::SeqCst);
    c.compliance().evaluate_now().await.unwrap();
    c.compliance().deliver_now().await.unwrap();
    c.compliance()
        .engine()
        .acknowledge("a1", "eu-systemic-risk", "alice", "ref-1")
        .unwrap();
    c.shutdown().await.unwrap();

    let ledger = SledStore::open(dir.path()).unwrap();
    let store = &ledger;
    let n = store
        .verify_audit()
        .unwrap()
        .expect("intact chain verifies");
    assert!(
        n >= 8,
        "threshold config, registry, clocks, alerts, deliveries, ack: {n}"
    );
    let kinds: Vec<String> = store
        .audit_entries()
        .unwrap()
        .iter()
        .map(|e| e.kind.as_str().to_string())
        .collect();
    for k in [
        "threshold-config-change",
        "registry-change",
        "clock-started",
        "alert",
        "delivery",
        "acknowledged",
    ] {
        assert!(kinds.iter().any(|x| x == k), "{k} missing from {kinds:?}");
    }
    let ack = store
        .audit_entries()
        .unwrap()
        .into_iter()
        .find(|e| e.kind.as_str() == "acknowledged")
        .unwrap();
    assert_eq!(ack.actor, "alice");

    let tree = store.audit_tree();
    let key = |i: u64| i.to_be_bytes();
    let orig: Vec<Vec<u8>> = (0..n)
        .map(|i| tree.get(key(i)).unwrap().unwrap().to_vec())
        .collect();
    let restore = || {
        for (i, v) in orig.iter().enumerate() {
            tree.insert(key(i as u64), v.as_slice()).unwrap();
        }
        assert!(store.verify_audit().unwrap().is_ok());
    };
    let broken_at = || {
        store
            .verify_audit()
            .unwrap()
            .expect_err("tampering detected")
            .index
    };

    // Modified: an acknowledgement's reference rewritten.
    let ack_i = ack.seq;
    let mut e = ack.clone();
    e.actor = "mallory".into();
    tree.insert(key(ack_i), serde_json::to_vec(&e).unwrap())
        .unwrap();
    assert_eq!(broken_at(), ack_i as usize);
    restore();

    // Deleted: an entry in the middle.
    tree.remove(key(2)).unwrap();
    assert_eq!(broken_at(), 2);
    restore();

    // Reordered: two entries swapped.
    tree.insert(key(1), orig[2].as_slice()).unwrap();
    tree.insert(key(2), orig[1].as_slice()).unwrap();
    assert_eq!(broken_at(), 1);
    restore();

    // Cut off the end: caught against the head stored apart from the log.
    tree.remove(key(n - 1)).unwrap();
    assert!(store.verify_audit().unwrap().is_err());
    restore();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_tells_its_story_in_short_mode() {
    let dir = tempfile::tempdir().unwrap();
    let opts = flopmeter_sim::demo::DemoOptions {
        fast: true,
        data_dir: Some(dir.path().join("ledger")),
        ..Default::default()
    };
    let mut out = Vec::new();
    let o = flopmeter_sim::demo::run(opts, &mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    let k = |m: &str, t: &str| (m.to_string(), t.to_string());
    assert_eq!(
        o.alerts[&k("frontier-400b", "eu-systemic-risk")],
        "acknowledged"
    );
    assert_eq!(
        o.alerts[&k("atlas-70b", "eu-systemic-risk")],
        "clock-started"
    );
    assert_eq!(o.alerts[&k("helper-8b-ft", "eu-modifier")], "clock-started");
    assert_eq!(o.reasons[&k("frontier-400b", "eu-systemic-risk")], "a");
    assert_eq!(o.reasons[&k("atlas-70b", "eu-systemic-risk")], "c");
    assert_eq!(o.reasons[&k("helper-8b-ft", "eu-modifier")], "c");
    // Every webhook delivery signed, each key once.
    assert!(o.webhook.iter().all(|(_, _, ok)| *ok));
    let mut keys: Vec<&str> = o.webhook.iter().map(|(k, _, _)| k.as_str()).collect();
    let n = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), n, "duplicate deliveries: {:?}", o.webhook);
    for want in [
        "frontier-400b/eu-systemic-risk/clock-started/1",
        "atlas-70b/eu-systemic-risk/forecast/1",
        "atlas-70b/eu-systemic-risk/clock-started/1",
        "helper-8b-ft/eu-modifier/clock-started/1",
        "frontier-400b/eu-systemic-risk/acknowledged/1",
    ] {
        assert!(keys.contains(&want), "{want} not delivered: {keys:?}");
    }
    assert!(o.audit_entries > 20, "{}", o.audit_entries);
    // The story, in order.
    let pos = |s: &str| {
        text.find(s)
            .unwrap_or_else(|| panic!("{s:?} missing from:\n{text}"))
    };
    assert!(pos("CLOCK STARTED frontier-400b") < pos("CLOCK STARTED helper-8b-ft"));
    assert!(pos("FORECAST atlas-70b") < pos("CLOCK STARTED atlas-70b"));
    assert!(pos("CLOCK STARTED atlas-70b") < pos("ack     frontier-400b"));
    assert!(pos("ack     frontier-400b") < pos("flopmeter report atlas-70b"));
    assert!(text.contains("flopmeter audit verify: OK"));
    let metrics = o.collector.metrics().render();
    for m in [
        "flopmeter_model_projected_flop{bound=\"high\",model=\"atlas-70b\"}",
        "flopmeter_threshold_level_flop{model=\"helper-8b-ft\",threshold=\"eu-modifier\"} 1000000000000000000000",
        "flopmeter_notification_deadline_timestamp_seconds{model=\"atlas-70b\",threshold=\"eu-systemic-risk\"}",
        "flopmeter_alert_open{model=\"frontier-400b\",state=\"acknowledged\",threshold=\"eu-systemic-risk\"} 0",
        "flopmeter_alert_open{model=\"atlas-70b\",state=\"clock-started\",threshold=\"eu-systemic-risk\"} 1",
        "flopmeter_projected_crossing_timestamp_seconds{model=\"atlas-70b\",threshold=\"eu-systemic-risk\"}",
        "flopmeter_outbox_pending{sink=\"webhook:demo\"} 0",
        "flopmeter_outbox_deliveries_total{result=\"ok\",sink=\"webhook:demo\"}",
    ] {
        assert!(metrics.contains(m), "{m} missing");
    }
    o.collector.shutdown().await.unwrap();
    // Offline verification of the stopped collector's chain.
    let ledger = SledStore::open(&o.data_dir).unwrap();
    let store = &ledger;
    assert_eq!(store.verify_audit().unwrap().unwrap(), o.audit_entries);
}

/// Admin writes over gRPC name their actor in the audit log: a named token's actor, whatever
/// the caller types, or the person a shared-token request names. Wrong, missing or
/// mismatched credentials change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_writes_are_audited_under_the_credentials_actor() {
    let dir = tempfile::tempdir().unwrap();
    let vnow = Arc::new(AtomicI64::new(now_unix_ms()));
    let mut cfg = config(dir.path(), &vnow, Vec::new());
    cfg.admin_token = Some("shared-secret".into());
    cfg.admin_tokens = [("alice".to_string(), "alice-secret".to_string())].into();
    let c = Collector::start(cfg).await.unwrap();
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", c.grpc_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut admin = pb::admin_client::AdminClient::new(ch.clone());
    let mut compliance = pb::compliance_client::ComplianceClient::new(ch);
    fn with<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Some(t) = token {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        r
    }
    let entry = |model: &str| pb::ModelEntry {
        model: model.into(),
        role: pb::ModelRole::Provider as i32,
        planned_flop: "3e25".into(),
        ..pb::ModelEntry::default()
    };
    let set = |model: &str, by: &str| pb::SetModelRequest {
        entry: Some(entry(model)),
        by: by.into(),
    };

    // Refusals first: none of them may leave a trace in the registry.
    for (req, code) in [
        (with(set("m1", "alice"), None), tonic::Code::Unauthenticated),
        (
            with(set("m1", "alice"), Some("guess")),
            tonic::Code::Unauthenticated,
        ),
        (
            with(set("m1", "bob"), Some("alice-secret")),
            tonic::Code::PermissionDenied,
        ),
        (
            with(set("m1", ""), Some("shared-secret")),
            tonic::Code::InvalidArgument,
        ),
    ] {
        assert_eq!(admin.set_model(req).await.unwrap_err().code(), code);
    }
    assert!(c.store().model_entry("m1").unwrap().is_none());

    let saved = admin
        .set_model(with(set("m1", ""), Some("alice-secret")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(saved.entry.unwrap().updated_by, "alice");
    admin
        .set_model(with(set("m2", "carol"), Some("shared-secret")))
        .await
        .unwrap();

    // Both plans start clocks; acknowledge one with each kind of credential.
    vnow.store(now_unix_ms() + 1_000, Ordering::SeqCst);
    c.compliance().evaluate_now().await.unwrap();
    let ack = |model: &str, by: &str| pb::AcknowledgeRequest {
        model: model.into(),
        threshold: "eu-systemic-risk".into(),
        by: by.into(),
        reference: "AI Office 2026-7".into(),
    };
    let mismatch = compliance
        .acknowledge(with(ack("m1", "mallory"), Some("alice-secret")))
        .await
        .unwrap_err();
    assert_eq!(mismatch.code(), tonic::Code::PermissionDenied);
    assert!(mismatch.message().contains("alice"), "{mismatch}");
    compliance
        .acknowledge(with(ack("m1", ""), Some("alice-secret")))
        .await
        .unwrap();
    compliance
        .acknowledge(with(ack("m2", "carol"), Some("shared-secret")))
        .await
        .unwrap();
    c.compliance().evaluate_now().await.unwrap();

    let entries = c.compliance().engine().store().audit_entries().unwrap();
    let actors = |kind: &str| -> Vec<String> {
        entries
            .iter()
            .filter(|e| e.kind.as_str() == kind)
            .map(|e| e.actor.clone())
            .collect()
    };
    assert_eq!(actors("registry-change"), ["alice", "carol"]);
    assert_eq!(actors("acknowledged"), ["alice", "carol"]);
    assert!(
        !entries
            .iter()
            .any(|e| e.actor == "mallory" || e.actor == "bob")
    );
    c.shutdown().await.unwrap();
}

/// GET on the collector's HTTP port from a blocking thread.
fn api(c: &Collector, path: &str) -> serde_json::Value {
    serde_json::from_str(&support::http_get(c.http_addr(), path).unwrap()).unwrap()
}

/// A tampered audit chain is loud: found when the collector starts (and by the incremental
/// check after each pass), shown as `flopmeter_audit_chain_intact 0` for the
/// `FlopmeterAuditChainBroken` rule, recorded in the chain once, and `/api/v1/audit/verify`
/// and `Compliance.VerifyAudit` give the real counts. The collector keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_audit_chain_is_loud_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let vnow = Arc::new(AtomicI64::new(now_unix_ms()));
    let c = Collector::start(config(dir.path(), &vnow, Vec::new()))
        .await
        .unwrap();
    assert!(
        c.metrics()
            .render()
            .contains("flopmeter_audit_chain_intact 1"),
        "an intact chain verifies at start"
    );
    plan(&c, "t1", "2e25").await;
    vnow.store(now_unix_ms() + 1_000, Ordering::SeqCst);
    c.compliance().evaluate_now().await.unwrap();
    // The incremental check: an entry appended since the last pass, altered while running, is
    // caught by the next pass. The registry change above kicked the background loop, whose
    // pass may run at any moment after ours and verify what ours appended; so let it finish,
    // then append an entry no pass has seen (a registry change written to the store
    // directly kicks nothing) and alter that one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut entry = c.store().model_entry("t1").unwrap().unwrap();
    entry.updated_by = Some("bob".into());
    c.store().set_model_entry(&entry).unwrap();
    let store = c.compliance().engine().store().clone();
    let last = store.audit_entries().unwrap().pop().unwrap();
    assert_eq!(last.actor, "bob", "the registry change is the newest entry");
    let mut forged = last.clone();
    forged.actor = "mallory".into();
    let sled = store.as_any().downcast_ref::<SledStore>().unwrap();
    sled.audit_tree()
        .insert(last.seq.to_be_bytes(), serde_json::to_vec(&forged).unwrap())
        .unwrap();
    c.compliance().evaluate_now().await.unwrap();
    assert!(
        c.metrics()
            .render()
            .contains("flopmeter_audit_chain_intact 0"),
        "{}",
        c.metrics().render()
    );
    sled.audit_tree()
        .insert(last.seq.to_be_bytes(), serde_json::to_vec(&last).unwrap())
        .unwrap();
    drop(store);
    c.shutdown().await.unwrap();

    // Offline: entry 2 is edited.
    let n = {
        let ledger = SledStore::open(dir.path()).unwrap();
        let store = &ledger;
        let n = store
            .verify_audit()
            .unwrap()
            .expect("restored chain verifies");
        let mut e = store.audit_entries().unwrap()[2].clone();
        e.actor = "mallory".into();
        store
            .audit_tree()
            .insert(2u64.to_be_bytes(), serde_json::to_vec(&e).unwrap())
            .unwrap();
        ledger.db().flush().unwrap();
        n
    };
    let c = Collector::start(config(dir.path(), &vnow, Vec::new()))
        .await
        .expect("a broken audit chain does not stop ingest or the clocks");
    let metrics = c.metrics().render();
    assert!(
        metrics.contains("flopmeter_audit_chain_intact 0"),
        "{metrics}"
    );
    let v = api(&c, "/api/v1/audit/verify");
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["broken_index"], 2, "{v}");
    assert_eq!(v["verified"], 2, "{v}");
    // The detection itself was appended to the chain: one more entry than before.
    assert_eq!(v["entries"], n + 1, "{v}");
    assert_eq!(v["head_entries"], n + 1, "{v}");
    assert!(
        v["broken_reason"]
            .as_str()
            .unwrap()
            .contains("entry modified"),
        "{v}"
    );
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", c.grpc_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let r = pb::compliance_client::ComplianceClient::new(ch)
        .verify_audit(pb::VerifyAuditRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.ok, r.entries, r.verified, r.broken_index),
        (false, n + 1, 2, 2)
    );
    let broken = |c: &Collector| {
        c.compliance()
            .engine()
            .store()
            .audit_entries()
            .unwrap()
            .iter()
            .filter(|e| e.kind.as_str() == "audit-chain-broken")
            .count()
    };
    assert_eq!(broken(&c), 1);
    // Ingest and the registry still work on a broken chain.
    plan(&c, "t2", "3e25").await;
    c.shutdown().await.unwrap();
    // Recorded once per break, not at every start.
    let c = Collector::start(config(dir.path(), &vnow, Vec::new()))
        .await
        .unwrap();
    assert_eq!(broken(&c), 1);
    c.shutdown().await.unwrap();
}

/// Polls (bounded) until the clock of (model, eu-systemic-risk) exists, without asking the
/// engine to evaluate: only its own event-driven loop can make it appear.
async fn wait_for_clock(c: &Collector, model: &str) -> flopmeter_core::clock::ClockState {
    for _ in 0..200 {
        if let Some(clock) = c
            .compliance()
            .engine()
            .store()
            .clock(model, "eu-systemic-risk")
            .unwrap()
        {
            return clock;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no clock for {model} within 10 s: the engine did not react to the new fact");
}

/// A plan of 2e25 revised to 5e24 three seconds later was lost: only the net registry
/// change reached the audit log at the engine's next pass, and no clock started. Each change
/// is now a fact at the moment it is made (audited in its transaction, with its actor, kept
/// as a plan version), and the plan above the threshold starts the clock at its own instant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_revised_seconds_later_still_started_the_clock_and_is_on_record() {
    let dir = tempfile::tempdir().unwrap();
    let t = now_unix_ms() - 60_000;
    {
        // Both changes land before any engine pass.
        use flopmeter_collector::ledger::{LedgerStore, ModelEntry, Role};
        let s = SledStore::open(dir.path()).unwrap();
        let entry = |flop: u128, at: i64| ModelEntry {
            model: "rev".into(),
            role: Some(Role::Provider),
            declared: flopmeter_core::declaration::Declaration {
                planned_flop: Some(flop),
                ..Default::default()
            },
            updated_unix_ms: at,
            updated_by: Some("alice".into()),
            ..ModelEntry::default()
        };
        s.set_model_entry(&entry(2 * 10u128.pow(25), t)).unwrap();
        s.set_model_entry(&entry(5 * 10u128.pow(24), t + 3_000))
            .unwrap();
        LedgerStore::flush(&s).unwrap();
        let h = s.plan_histories("rev").unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].1.versions.len(), 2, "both versions are kept");
    }
    let vnow = Arc::new(AtomicI64::new(now_unix_ms()));
    let c = Collector::start(config(dir.path(), &vnow, Vec::new()))
        .await
        .unwrap();
    c.compliance().evaluate_now().await.unwrap();
    let clock = c
        .compliance()
        .engine()
        .store()
        .clock("rev", "eu-systemic-risk")
        .unwrap()
        .expect("the 2e25 plan started the clock although revised to 5e24");
    assert_eq!(
        (clock.start.at_ms, clock.start.reason),
        (t, flopmeter_core::clock::StartReason::Plan)
    );
    // The revision is a fact of the clock, and the alert cites the plan that started it.
    let view = c
        .compliance()
        .engine()
        .alert_views()
        .unwrap()
        .into_iter()
        .find(|v| v.model == "rev")
        .unwrap();
    let content = view.content.unwrap();
    let clock_text = content.clock.as_ref().unwrap();
    assert!(
        clock_text
            .facts
            .iter()
            .any(|f| f.starts_with("plan revised to 5.0e24 FLOP")),
        "{clock_text:?}"
    );
    assert!(
        content.notification_must_contain[0]
            .contains("2.0e25 FLOP, the plan that started the clock")
            && content.notification_must_contain[0].contains("by alice via the model registry"),
        "{:?}",
        content.notification_must_contain
    );
    let entries = c.compliance().engine().store().audit_entries().unwrap();
    let changes: Vec<_> = entries
        .iter()
        .filter(|e| e.kind.as_str() == "registry-change")
        .collect();
    assert_eq!(changes.len(), 2, "every change, not the net one");
    for (e, (at, flop)) in changes.iter().zip([
        (t, "20000000000000000000000000"),
        (t + 3_000, "5000000000000000000000000"),
    ]) {
        assert_eq!(e.actor, "alice");
        assert_eq!(e.time_ms, at);
        let plan = e.payload.get("plan").unwrap();
        assert_eq!(
            plan.get("planned_flop").unwrap().as_str(),
            Some(flop),
            "{e:?}"
        );
    }
    c.shutdown().await.unwrap();
}

/// Registry changes reach the engine at once, not at its periodic pass (here an hour).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_plan_reaches_the_engine_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let vnow = Arc::new(AtomicI64::new(now_unix_ms() + 60_000));
    let c = Collector::start(config(dir.path(), &vnow, Vec::new()))
        .await
        .unwrap();
    // Let the loop's first (start-up) pass go by, so only the plan can wake it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    plan(&c, "now-1", "2e25").await;
    let clock = wait_for_clock(&c, "now-1").await;
    assert_eq!(clock.start.reason, flopmeter_core::clock::StartReason::Plan);
    c.shutdown().await.unwrap();
}

/// A plan declared in a run's records is dated when it was first declared (the event time
/// of the first record that carried it), not at the run's first event: a run that declared
/// 2.1e25 on day 30 got a clock dated day 0, "overdue by 26 d". It reaches the engine at once,
/// and the chain records which agent declared it (issue 12: who may declare a plan).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_declared_in_records_is_dated_when_declared_and_by_whom() {
    let dir = tempfile::tempdir().unwrap();
    let vnow = Arc::new(AtomicI64::new(now_unix_ms() + 60_000));
    let c = Collector::start(config(dir.path(), &vnow, Vec::new()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let day0 = now_unix_ms() - 30 * MS_PER_DAY;
    let declared = now_unix_ms() - 60_000;
    let mut early = support::rec_at(1, "late-plan", "r1", "", 1_000_000_000, day0);
    early.declaration = Some(pb::WorkloadDeclaration {
        precision: pb::Precision::Bf16 as i32,
        ..Default::default()
    });
    let with_plan = |seq: u64, end: i64| {
        let mut r = support::rec_at(seq, "late-plan", "r1", "", 1_000_000_000, end);
        r.declaration = Some(pb::WorkloadDeclaration {
            planned_flop: "2.1e25".into(),
            ..Default::default()
        });
        r
    };
    let later = vec![with_plan(2, declared), with_plan(3, declared + 10_000)];
    let mut s = support::Stream::open(c.grpc_addr(), "planner", None).await;
    let _welcome = s.next().await.unwrap();
    s.send(vec![early]).await;
    s.next().await.unwrap();
    s.send(later).await;
    s.next().await.unwrap();
    let clock = wait_for_clock(&c, "late-plan").await;
    assert_eq!(clock.start.reason, flopmeter_core::clock::StartReason::Plan);
    assert_eq!(
        clock.start.at_ms,
        declared - 10_000,
        "dated at the first record carrying the plan, not at day 0"
    );
    c.compliance().evaluate_now().await.unwrap();
    let view = c
        .compliance()
        .engine()
        .alert_views()
        .unwrap()
        .into_iter()
        .find(|v| v.model == "late-plan")
        .unwrap();
    let trigger = view.content.unwrap().notification_must_contain[0].clone();
    assert!(
        trigger.contains("2.1e25 FLOP, the plan that started the clock")
            && trigger.contains("by agent planner on node planner-node"),
        "{trigger}"
    );
    let fact = c
        .compliance()
        .engine()
        .store()
        .audit_entries()
        .unwrap()
        .into_iter()
        .find(|e| e.kind.as_str() == "plan-declared")
        .expect("the declaration is in the chain");
    assert_eq!(fact.actor, "agent:planner");
    let v = fact.payload.get("version").unwrap();
    assert_eq!(
        v.get("planned_flop").unwrap().as_str(),
        Some("21000000000000000000000000")
    );
    assert_eq!(
        v.get("by").unwrap().get("node").unwrap().as_str(),
        Some("planner-node")
    );
    // Only one version: the second record repeats the plan.
    let n = c
        .compliance()
        .engine()
        .store()
        .audit_entries()
        .unwrap()
        .iter()
        .filter(|e| e.kind.as_str() == "plan-declared")
        .count();
    assert_eq!(n, 1);
    c.shutdown().await.unwrap();
}

/// The modifier fallback: with the base's compute unknown, a third of 10^25 applies to a
/// base declared systemic-risk (`model set --base-systemic-risk`), a third of 10^23
/// otherwise, and the alert names which fallback applied and why. The collector used to
/// decide "systemic-risk" from the base's compute alone, so with it unknown the 10^25/3
/// level could never apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_modifier_fallback_follows_the_declared_base_status() {
    let dir = tempfile::tempdir().unwrap();
    let vnow = Arc::new(AtomicI64::new(now_unix_ms() + 60_000));
    let c = Collector::start(config(dir.path(), &vnow, Vec::new()))
        .await
        .unwrap();
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", c.grpc_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut admin = pb::admin_client::AdminClient::new(ch);
    let set = |model: &str, planned: &str, systemic: Option<bool>| pb::SetModelRequest {
        entry: Some(pb::ModelEntry {
            model: model.into(),
            role: pb::ModelRole::Modifier as i32,
            base_model: "frontier-x".into(),
            planned_flop: planned.into(),
            base_systemic_risk: systemic,
            ..pb::ModelEntry::default()
        }),
        by: String::new(),
    };
    // 1e24 planned: above 10^23/3, below 10^25/3.
    admin
        .set_model(set("ft-declared", "1e24", Some(true)))
        .await
        .unwrap();
    admin
        .set_model(set("ft-undeclared", "1e24", None))
        .await
        .unwrap();
    admin
        .set_model(set("ft-big", "4e24", Some(true)))
        .await
        .unwrap();
    let saved = admin
        .get_model(pb::GetModelRequest {
            model: "ft-declared".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        saved.summary.unwrap().entry.unwrap().base_systemic_risk,
        Some(true)
    );
    c.compliance().evaluate_now().await.unwrap();
    let clock = |m: &str| {
        c.compliance()
            .engine()
            .store()
            .clock(m, "eu-modifier")
            .unwrap()
    };
    assert!(clock("ft-declared").is_none(), "1e24 < 10^25/3");
    assert!(clock("ft-undeclared").is_some(), "1e24 > 10^23/3");
    assert!(clock("ft-big").is_some(), "4e24 > 10^25/3");
    let metrics = c.metrics().render();
    assert!(
        metrics.contains(
            "flopmeter_threshold_level_flop{model=\"ft-declared\",threshold=\"eu-modifier\"} 3333333333333333"
        ),
        "{metrics}"
    );
    let level = |m: &str| {
        c.compliance()
            .engine()
            .alert_views()
            .unwrap()
            .into_iter()
            .find(|v| v.model == m && v.threshold == "eu-modifier")
            .and_then(|v| v.content)
            .map(|c| c.level)
            .unwrap()
    };
    let big = level("ft-big");
    assert!(
        big.contains("fallback for a systemic-risk base")
            && big.contains(
                "frontier-x's compute is unknown, and it is declared a systemic-risk model"
            ),
        "{big}"
    );
    let undeclared = level("ft-undeclared");
    assert!(
        undeclared.contains("its systemic-risk status is not declared")
            && undeclared.contains("flopmeter model set ft-undeclared --base-systemic-risk"),
        "{undeclared}"
    );
    c.shutdown().await.unwrap();
}

/// An overdue deadline reads "overdue by …" in the API, the gRPC listing and the webhook,
/// never a negative "time left"; an acknowledgement's reference and a dismissal's reason,
/// with who gave them, are in the hash-chained audit entry and in the webhook payloads
/// (they used to live only in the alert record).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overdue_ack_and_dismissal_are_said_in_full_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let (recv, addr) = start_receiver().await;
    let vnow = Arc::new(AtomicI64::new(now_unix_ms()));
    let c = Collector::start(config(
        dir.path(),
        &vnow,
        vec![SinkConfig::Webhook {
            name: "t".into(),
            url: format!("http://{addr}/hook"),
            secret: SECRET.into(),
        }],
    ))
    .await
    .unwrap();
    plan(&c, "late-1", "2e25").await;
    plan(&c, "late-2", "2e25").await;
    let registered = now_unix_ms();
    // Twenty days later nobody has notified: six days overdue.
    vnow.store(registered + 20 * MS_PER_DAY, Ordering::SeqCst);
    c.compliance().evaluate_now().await.unwrap();
    let views = api(&c, "/api/v1/alerts");
    for v in views.as_array().unwrap() {
        let left = v["time_left"].as_str().unwrap();
        assert!(
            left.starts_with("overdue by 5 d 23 h") || left.starts_with("overdue by 6 d 00 h"),
            "{v}"
        );
        assert!(!left.contains('-') && !left.contains("left"), "{left}");
        assert_eq!(v["overdue"], true);
    }
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", c.grpc_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = pb::compliance_client::ComplianceClient::new(ch);
    let listed = client
        .list_alerts(pb::ListAlertsRequest {})
        .await
        .unwrap()
        .into_inner()
        .alerts;
    assert!(
        listed
            .iter()
            .all(|a| a.overdue && a.time_left.starts_with("overdue by ")),
        "{listed:?}"
    );
    client
        .acknowledge(pb::AcknowledgeRequest {
            model: "late-1".into(),
            threshold: "eu-systemic-risk".into(),
            by: "alice".into(),
            reference: "AI Office GPAI-2026-0099".into(),
        })
        .await
        .unwrap();
    client
        .dismiss(pb::DismissRequest {
            model: "late-2".into(),
            threshold: "eu-systemic-risk".into(),
            by: "bob".into(),
            reason: "not placed on the EU market".into(),
        })
        .await
        .unwrap();
    for _ in 0..200 {
        c.compliance().deliver_now().await.unwrap();
        if pending(&c) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let bodies = recv.bodies.lock().unwrap().clone();
    let body = |key: &str| {
        bodies
            .iter()
            .find(|b| b["key"] == key)
            .unwrap_or_else(|| panic!("{key} not delivered: {bodies:?}"))
            .clone()
    };
    let overdue = body("late-1/eu-systemic-risk/overdue/1");
    let left = overdue["content"]["clock"]["time_left"].as_str().unwrap();
    assert!(left.starts_with("overdue by "), "{left}");
    let acked = body("late-1/eu-systemic-risk/acknowledged/1");
    assert_eq!(acked["content"]["acknowledgement"]["by"], "alice");
    assert_eq!(
        acked["content"]["acknowledgement"]["reference"],
        "AI Office GPAI-2026-0099"
    );
    let dismissed = body("late-2/eu-systemic-risk/dismissed/1");
    assert_eq!(dismissed["content"]["dismissal"]["by"], "bob");
    assert_eq!(
        dismissed["content"]["dismissal"]["reason"],
        "not placed on the EU market"
    );
    let entries = c.compliance().engine().store().audit_entries().unwrap();
    let entry = |kind: &str| entries.iter().find(|e| e.kind.as_str() == kind).unwrap();
    let ack = entry("acknowledged");
    assert_eq!(ack.actor, "alice");
    assert_eq!(
        ack.payload
            .get("acknowledgement")
            .and_then(|a| a.get("reference"))
            .and_then(|r| r.as_str()),
        Some("AI Office GPAI-2026-0099")
    );
    assert_eq!(
        ack.payload.get("key").and_then(|k| k.as_str()),
        Some("late-1/eu-systemic-risk/acknowledged/1")
    );
    let dis = entry("dismissed");
    assert_eq!(dis.actor, "bob");
    assert_eq!(
        dis.payload
            .get("dismissal")
            .and_then(|d| d.get("reason"))
            .and_then(|r| r.as_str()),
        Some("not placed on the EU market")
    );
    c.shutdown().await.unwrap();
}

/// What records do to a run's plan history, at the ledger: a repeated plan is one version;
/// a garbled figure or a record without figures withdraws nothing; a revision is a version;
/// another node's late records showing the plan earlier date it earlier; each version is a
/// `plan-declared` entry of the chain written with the batch.
#[test]
fn record_plans_become_versions_only_when_they_say_something_new() {
    support::stores::for_each_store(|t| record_plans_become_versions(t.ledger(), t.compliance()));
}

fn record_plans_become_versions(
    s: &dyn flopmeter_collector::ledger::LedgerStore,
    store: &dyn ComplianceStore,
) {
    use flopmeter_collector::ledger::plans::PlanScope;
    let t = now_unix_ms() - 3_600_000;
    let rec = |seq: u64, end: i64, planned: &str| {
        let mut r = support::rec_at(seq, "m", "r", "", 1_000, end);
        r.declaration = Some(pb::WorkloadDeclaration {
            planned_flop: planned.into(),
            ..Default::default()
        });
        r
    };
    s.apply_batch(&support::incoming(
        "a1",
        "n1",
        vec![
            rec(1, t, "2e25"),
            rec(2, t + 10_000, "2e25"),
            rec(3, t + 20_000, "lots"),
            rec(4, t + 30_000, ""),
        ],
    ))
    .unwrap();
    let out = s
        .apply_batch(&support::incoming(
            "a1",
            "n1",
            vec![rec(5, t + 40_000, "5e24")],
        ))
        .unwrap();
    assert_eq!(out.plans_declared, 1);
    // Node n2's spool arrives late: the same 2e25, from an hour earlier.
    s.apply_batch(&support::incoming(
        "a2",
        "n2",
        vec![rec(1, t - 3_590_000, "2e25")],
    ))
    .unwrap();
    let h = s.plan_histories("m").unwrap();
    assert_eq!(h[0].0, PlanScope::Run("r".into()));
    let versions: Vec<(i64, Option<u128>)> = h[0]
        .1
        .versions
        .iter()
        .map(|v| (v.declared_at_ms, v.planned_flop))
        .collect();
    let e = |x: u32| 10u128.pow(x);
    assert_eq!(
        versions,
        [
            (t - 3_600_000, Some(2 * e(25))),
            (t - 10_000, Some(2 * e(25))),
            (t + 30_000, Some(5 * e(24))),
        ]
    );
    let declared: Vec<String> = store
        .audit_entries()
        .unwrap()
        .into_iter()
        .filter(|e| e.kind.as_str() == "plan-declared")
        .map(|e| e.actor)
        .collect();
    assert_eq!(declared, ["agent:a1", "agent:a1", "agent:a2"]);
    assert!(store.verify_audit().unwrap().is_ok());
}
