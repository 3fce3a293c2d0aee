//! `VerifyLedger` on a running collector (issue 12, item 4): it needs the admin credential,
//! runs one at a time, and reads the bulk of the ledger off the writer, so ingest goes on
//! while it runs; what arrives meanwhile is part of the verdict.
//!
//! The scan is held open with the test-only failpoint `hold_verify_scan`
//! (`collector/src/failpoint.rs`): while it is held, a second verification is refused, a
//! batch is acknowledged, and once released the verdict counts that batch and is clean.

use crate::support;

use std::time::Duration;

use flopmeter_collector::Collector;
use flopmeter_collector::config::CollectorConfig;
use flopmeter_collector::failpoint::{Hold, held_marker};
use flopmeter_proto::v1 as pb;
use flopmeter_proto::v1::admin_client::AdminClient;
use flopmeter_proto::v1::collector_message::Kind;
use support::{Stream, rec};

const TOKEN: &str = "v3rify";
const GOOD: u64 = 4_000_000_000_000_000;

fn verify_request(token: Option<&str>) -> tonic::Request<pb::VerifyLedgerRequest> {
    let mut req = tonic::Request::new(pb::VerifyLedgerRequest {});
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    req
}

async fn acked_through(s: &mut Stream) -> u64 {
    match s.next().await.unwrap().and_then(|m| m.kind) {
        Some(Kind::Ack(a)) => {
            assert!(a.rejections.is_empty(), "{:?}", a.rejections);
            a.acked_through
        }
        other => panic!("expected an Ack, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_runs_beside_ingest_one_at_a_time_with_the_admin_credential() {
    let dir = tempfile::tempdir().unwrap();
    let hold = dir.path().join("hold-verify");
    let mut cfg = CollectorConfig::for_data_dir(&dir.path().join("ledger"));
    cfg.admin_token = Some(TOKEN.into());
    cfg.failpoints.hold_verify_scan = Some(Hold { file: hold.clone() });
    let c = Collector::start(cfg).await.unwrap();
    let url = format!("http://{}", c.grpc_addr());

    let mut s = Stream::open(c.grpc_addr(), "agent-v", None).await;
    s.next().await.unwrap(); // Welcome
    s.send((1..=3).map(|q| rec(q, "m", "r", "", GOOD)).collect())
        .await;
    assert_eq!(acked_through(&mut s).await, 3);

    // Without the credential: refused before anything is read.
    let mut admin = AdminClient::connect(url.clone()).await.unwrap();
    let e = admin.verify_ledger(verify_request(None)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);

    // A verification whose scan is held open.
    std::fs::write(&hold, b"hold\n").unwrap();
    let first = tokio::spawn({
        let url = url.clone();
        async move {
            let mut admin = AdminClient::connect(url).await.unwrap();
            admin.verify_ledger(verify_request(Some(TOKEN))).await
        }
    });
    let held = held_marker(&hold);
    for _ in 0..600 {
        if held.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(held.exists(), "the verification's scan never started");

    // A second one meanwhile: told to wait, not queued.
    let e = admin
        .verify_ledger(verify_request(Some(TOKEN)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
    assert!(e.message().contains("already running"), "{e}");

    // Ingest goes on while the scan runs.
    s.send((4..=6).map(|q| rec(q, "m", "r", "", GOOD)).collect())
        .await;
    assert_eq!(acked_through(&mut s).await, 6);
    // Including an agent the cut did not know, on the same model.
    let mut w = Stream::open(c.grpc_addr(), "agent-w", None).await;
    w.next().await.unwrap();
    w.send((1..=2).map(|q| rec(q, "m", "r2", "", GOOD)).collect())
        .await;
    assert_eq!(acked_through(&mut w).await, 2);
    assert!(
        !first.is_finished(),
        "the verification ended before its scan was released"
    );

    // Released: the verdict includes what arrived during the scan, and is clean.
    std::fs::remove_file(&hold).unwrap();
    let v = first.await.unwrap().unwrap().into_inner();
    assert!(v.ok, "{:?}", v.mismatches);
    assert!(v.summary.contains("(8 records)"), "{}", v.summary);

    // And the next one may run.
    let v = admin
        .verify_ledger(verify_request(Some(TOKEN)))
        .await
        .unwrap()
        .into_inner();
    assert!(v.ok, "{:?}", v.mismatches);
    c.shutdown().await.unwrap();
}
