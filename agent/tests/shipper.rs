//! The shipper against a minimal in-test collector: disconnects, duplicate acks, a stalled
//! collector, lost batches and Resend, a collector that already holds records, rejections,
//! and the agent token.

use crate::collector_fake;

use std::sync::Arc;
use std::time::Duration;

use collector_fake::{FakeCollector, Script, eventually};
use flopmeter_agent::gpu::{GpuSource, Inventory};
use flopmeter_agent::metrics::AgentMetrics;
use flopmeter_agent::shipper::{Shipper, ShipperConfig, ShipperControl};
use flopmeter_agent::simulated::{SimulatedSource, Workload};
use flopmeter_agent::spool::{Spool, SpoolOptions};
use flopmeter_agent::time_source::RealTime;
use flopmeter_proto::v1::IntervalRecord;
use tokio::sync::watch;

const AGENT: &str = "agent-under-test";

struct Rig {
    spool: Arc<Spool>,
    metrics: Arc<AgentMetrics>,
    control: watch::Sender<ShipperControl>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

fn inventory() -> Inventory {
    let w = Workload::from_toml("gpu = \"h100-sxm\"\ncount = 2\ntensor_util = 0.4").unwrap();
    SimulatedSource::new(w).unwrap().inventory().clone()
}

fn start(addr: &str, tune: impl FnOnce(&mut ShipperConfig)) -> Rig {
    start_preloaded(addr, 0, tune)
}

/// A shipper whose spool already holds `preload` records when it starts.
fn start_preloaded(addr: &str, preload: u64, tune: impl FnOnce(&mut ShipperConfig)) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(Spool::open(&dir.path().join("spool"), SpoolOptions::default()).unwrap());
    if preload > 0 {
        append(&spool, preload);
    }
    let metrics = Arc::new(AgentMetrics::new().unwrap());
    let mut cfg = ShipperConfig::new(addr.to_string(), AGENT.into(), "node-1".into());
    cfg.max_batch_records = 10;
    cfg.max_in_flight = 2;
    cfg.backoff_initial = Duration::from_millis(10);
    cfg.backoff_max = Duration::from_millis(200);
    cfg.response_timeout = Duration::from_secs(2);
    tune(&mut cfg);
    let (_inv_tx, inv_rx) = watch::channel(Some(inventory()));
    let (control, control_rx) = watch::channel(ShipperControl::Run);
    let shipper = Shipper::new(
        cfg,
        spool.clone(),
        metrics.clone(),
        inv_rx,
        Arc::new(RealTime::new()),
    );
    let task = tokio::spawn(shipper.run(control_rx));
    Rig {
        spool,
        metrics,
        control,
        task,
        _dir: dir,
    }
}

fn append(spool: &Spool, n: u64) {
    let mut batch: Vec<IntervalRecord> = (0..n)
        .map(|i| IntervalRecord {
            flop_central: 1000 + i,
            gpu_uuid: "GPU-x".into(),
            start_unix_ms: 1_700_000_000_000,
            end_unix_ms: 1_700_000_010_000,
            ..IntervalRecord::default()
        })
        .collect();
    spool.append(&mut batch).unwrap();
}

async fn stop(rig: Rig) {
    rig.control.send(ShipperControl::Stop).unwrap();
    rig.task.await.unwrap();
}

#[tokio::test]
async fn delivers_everything_exactly_once_across_disconnects() {
    let (fake, addr) = FakeCollector::start(Script {
        drop_after_batches: Some(2),
        ..Script::default()
    })
    .await;
    let rig = start(&addr, |_| {});
    for _ in 0..10 {
        append(&rig.spool, 17);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eventually("all 170 applied", || fake.applied_seqs(AGENT).len() == 170).await;
    eventually("spool emptied by acks", || rig.spool.stats().records == 0).await;
    assert_eq!(fake.applied_seqs(AGENT), (1..=170).collect::<Vec<_>>());
    {
        let st = fake.state.lock().unwrap();
        assert!(
            st.connections > 3,
            "it reconnected ({} streams)",
            st.connections
        );
        assert!(st.received > 170, "unacked batches were resent");
        assert_eq!(
            st.hellos[0].gpus.len(),
            2,
            "the hello carries the inventory"
        );
        assert_eq!(st.hellos[0].gpus[0].catalogue_id, "h100-sxm");
    }
    // The counter follows the spool's delete (which runs off the async workers).
    eventually("acked counter", || {
        rig.metrics.records_acked_total.get() == 170
    })
    .await;
    stop(rig).await;
}

#[tokio::test]
async fn duplicate_and_stale_acks_are_harmless() {
    let (fake, addr) = FakeCollector::start(Script {
        duplicate_acks: true,
        ..Script::default()
    })
    .await;
    let rig = start(&addr, |_| {});
    append(&rig.spool, 95);
    eventually("spool emptied", || rig.spool.stats().records == 0).await;
    assert_eq!(fake.applied_seqs(AGENT), (1..=95).collect::<Vec<_>>());
    // The counter follows the spool's delete (which runs off the async workers).
    eventually("acked counter", || {
        rig.metrics.records_acked_total.get() == 95
    })
    .await;
    assert_eq!(rig.spool.stats().acked_through, 95);
    stop(rig).await;
}

#[tokio::test]
async fn stalled_collector_bounds_what_is_in_flight_and_loses_nothing() {
    let (fake, addr) = FakeCollector::start(Script {
        stall: true,
        ..Script::default()
    })
    .await;
    let rig = start(&addr, |c| {
        c.max_batch_records = 10;
        c.max_in_flight = 3;
        c.response_timeout = Duration::from_millis(300);
    });
    append(&rig.spool, 500);
    // The hello is sent into a stalled stream: nothing can be shipped before a Welcome, and
    // after a response timeout the agent reconnects, again and again, with bounded state.
    eventually("several stalled attempts", || {
        fake.state.lock().unwrap().connections >= 3
    })
    .await;
    assert_eq!(rig.metrics.records_sent_total.get(), 0);
    assert_eq!(
        rig.spool.stats().records,
        500,
        "everything waits in the spool"
    );

    // Stall mid-stream: the fake answers two batches and stalls again by itself. (The test
    // used to stall it from here once it saw a first delivery; on a loaded machine the
    // shipper had delivered most of the spool by then, and "the rest waits in the spool"
    // failed about once in five runs: the test's timing, not the shipper.)
    let connections_at_stall = {
        let mut st = fake.state.lock().unwrap();
        st.script.stall_after_batches = Some(2);
        st.connections
    };
    fake.unstall();
    eventually("two batches answered, then stalled", || {
        fake.state.lock().unwrap().script.stall
    })
    .await;
    let applied = fake.applied_seqs(AGENT).len() as u64;
    assert_eq!(applied, 20, "two batches of 10");
    // Give a misbehaving shipper every chance to push more than its window: wait until it
    // has given up on the stalled stream (response timeout) and on a new one.
    eventually("reconnected twice into the stall", || {
        fake.state.lock().unwrap().connections >= connections_at_stall + 2
    })
    .await;
    // What it sent: what was answered, plus at most one window of unacknowledged batches
    // on the stalled stream (nothing on later ones: no Welcome, no batch).
    let sent = rig.metrics.records_sent_total.get();
    assert!(
        sent <= applied + 3 * 10,
        "a stalled collector got {} records beyond the {applied} it answered",
        sent - applied
    );
    assert_eq!(
        rig.spool.stats().records,
        500 - rig.spool.stats().acked_through,
        "nothing unacknowledged left the spool"
    );
    assert!(
        rig.spool.stats().records >= 480,
        "the rest waits in the spool"
    );
    fake.unstall();
    eventually("all applied", || fake.applied_seqs(AGENT).len() == 500).await;
    eventually("spool emptied", || rig.spool.stats().records == 0).await;
    assert_eq!(fake.applied_seqs(AGENT), (1..=500).collect::<Vec<_>>());
    stop(rig).await;
}

#[tokio::test]
async fn lost_batch_is_resent_on_request() {
    let (fake, addr) = FakeCollector::start(Script {
        lose_batch_with: Some(21),
        ..Script::default()
    })
    .await;
    let rig = start(&addr, |c| c.max_in_flight = 4);
    append(&rig.spool, 80);
    eventually("all applied", || fake.applied_seqs(AGENT).len() == 80).await;
    eventually("spool emptied", || rig.spool.stats().records == 0).await;
    assert_eq!(fake.applied_seqs(AGENT), (1..=80).collect::<Vec<_>>());
    assert!(fake.state.lock().unwrap().resends >= 1);
    assert!(rig.metrics.resends_total.get() >= 1);
    stop(rig).await;
}

#[tokio::test]
async fn welcome_high_water_mark_drops_what_the_collector_holds_and_renumbers_the_rest() {
    let (fake, addr) = FakeCollector::start(Script::default()).await;
    fake.preset_hwm(AGENT, 30);
    let rig = start_preloaded(&addr, 50, |_| {});
    eventually("rest applied", || fake.applied_seqs(AGENT).len() == 20).await;
    assert_eq!(fake.applied_seqs(AGENT), (31..=50).collect::<Vec<_>>());
    eventually("spool emptied", || rig.spool.stats().records == 0).await;
    stop(rig).await;

    // A collector that remembers more than this (wiped) spool ever numbered: the spool's
    // records were never sent under those numbers, so they are renumbered above the mark
    // and delivered, not taken as acknowledged (spool contract 8); new records follow.
    let (fake2, addr2) = FakeCollector::start(Script::default()).await;
    fake2.preset_hwm(AGENT, 1_000);
    let rig2 = start_preloaded(&addr2, 5, |_| {});
    eventually("renumbered above the mark and delivered", || {
        fake2.applied_seqs(AGENT) == (1001..=1005).collect::<Vec<_>>()
    })
    .await;
    append(&rig2.spool, 3);
    eventually("new records numbered after them", || {
        fake2.applied_seqs(AGENT) == (1001..=1008).collect::<Vec<_>>()
    })
    .await;
    stop(rig2).await;
}

#[tokio::test]
async fn rejections_are_counted_and_token_is_sent() {
    let (fake, addr) = FakeCollector::start(Script {
        reject: [4, 9].into_iter().collect(),
        token: Some("s3cret".into()),
        ..Script::default()
    })
    .await;
    // First with a wrong token: refused, retried, nothing shipped.
    let bad = start(&addr, |c| c.agent_token = Some("wrong".into()));
    append(&bad.spool, 10);
    eventually("refused twice", || {
        fake.state.lock().unwrap().connections >= 2
    })
    .await;
    assert_eq!(bad.spool.stats().records, 10);
    stop(bad).await;

    let rig = start(&addr, |c| c.agent_token = Some("s3cret".into()));
    append(&rig.spool, 10);
    eventually("spool emptied", || rig.spool.stats().records == 0).await;
    assert_eq!(
        fake.applied_seqs(AGENT),
        vec![1, 2, 3, 5, 6, 7, 8, 10],
        "rejected records are quarantined, not applied"
    );
    assert_eq!(
        rig.metrics
            .records_rejected_total
            .with_label_values(&["flop-above-peak"])
            .get(),
        2
    );
    let auth = fake.state.lock().unwrap().auth.clone();
    assert!(auth.contains(&Some("Bearer s3cret".into())));
    assert!(auth.contains(&Some("Bearer wrong".into())));
    stop(rig).await;
}

#[tokio::test]
async fn drain_ships_then_returns_and_stop_returns_at_once() {
    let (fake, addr) = FakeCollector::start(Script::default()).await;
    let rig = start(&addr, |_| {});
    append(&rig.spool, 33);
    rig.control
        .send(ShipperControl::Drain {
            deadline: tokio::time::Instant::now() + Duration::from_secs(60),
        })
        .unwrap();
    rig.task.await.unwrap();
    assert_eq!(
        rig.spool.stats().records,
        0,
        "drain returns once the spool is empty"
    );
    assert_eq!(fake.applied_seqs(AGENT).len(), 33);

    // Nobody listening: a drain gives up at its deadline and the records stay spooled.
    // A listener that never accepts: the handshake cannot complete (a fixed "closed" port
    // could belong to someone).
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let rig = start(&format!("http://{}", hole.local_addr().unwrap()), |_| {});
    append(&rig.spool, 3);
    rig.control
        .send(ShipperControl::Drain {
            deadline: tokio::time::Instant::now() + Duration::from_millis(100),
        })
        .unwrap();
    rig.task.await.unwrap();
    assert_eq!(rig.spool.stats().records, 3);
}

#[tokio::test]
async fn a_collector_that_forgot_acknowledged_records_cannot_make_the_agent_delete_or_spin() {
    let (fake, addr) = FakeCollector::start(Script::default()).await;
    let rig = start(&addr, |_| {});
    append(&rig.spool, 20);
    eventually("delivered and acked", || {
        rig.spool.stats().acked_through == 20
    })
    .await;
    // The collector's ledger is restored from an old backup: it no longer knows this agent.
    fake.preset_hwm(AGENT, 0);
    append(&rig.spool, 5);
    eventually("the agent gave up on the stream more than once", || {
        rig.metrics.collector_stream_errors_total.get() >= 2
    })
    .await;
    // It cannot resend what it deleted, and it deleted nothing it still holds.
    let st = rig.spool.stats();
    assert_eq!(
        (st.records, st.first_seq, st.acked_through),
        (5, Some(21), 20)
    );
    assert_eq!(fake.applied_seqs(AGENT), (1..=20).collect::<Vec<_>>());
    stop(rig).await;
}
