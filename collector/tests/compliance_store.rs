//! The compliance store's contract, on every store (`support::stores`): a [`Change`] is
//! written whole or not at all, a recorded clock start never moves, outbox items are keyed
//! by (sink, idempotency key), and the ledger's registry appends and the engine's share one
//! linear, verifiable chain. The clock, alert and outbox values are the engine's own, from
//! a pass over a model whose plan crosses the EU level.

use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use flopmeter_collector::compliance::store::{Change, ComplianceStoreError, DeliveryState, meta};
use flopmeter_collector::now_unix_ms;
use flopmeter_core::threshold::Threshold;

use crate::support::stores::{TestStore, engine, for_each_store, note, planned};

const E25: u128 = 10_000_000_000_000_000_000_000_000;

/// A store after one engine pass over a model planned at 2e25: a started clock, an alert,
/// outbox items and audit entries (threshold config, registry change, clock, alert).
fn crossed(t: &TestStore) {
    let now = now_unix_ms();
    t.ledger()
        .set_model_entry(&planned("m", 2 * E25, now - 60_000))
        .unwrap();
    let e = engine(t.stores(), Arc::new(AtomicI64::new(now)));
    let pass = e.evaluate().unwrap();
    assert!(pass.clock_events > 0 && pass.alert_events > 0, "{pass:?}");
}

#[test]
fn a_change_that_would_move_a_clock_start_writes_nothing() {
    for_each_store(|t| {
        crossed(&t);
        let s = t.compliance();
        let clock = s.clocks().unwrap().pop().expect("the pass started a clock");
        let (head, entries, outbox) = (
            s.head().unwrap(),
            s.audit_entries().unwrap(),
            s.outbox().unwrap(),
        );
        let mut moved = clock.clone();
        moved.start.at_ms -= 1;
        let mut item = outbox[0].clone();
        item.key = "another-key".into();
        let e = s
            .commit(&Change {
                clock: Some(moved),
                audit: vec![note(1)],
                outbox: vec![item],
                meta: vec![("x".into(), b"1".to_vec())],
                ..Change::default()
            })
            .unwrap_err();
        assert!(
            matches!(e, ComplianceStoreError::StartMoved { .. }),
            "{e:?}"
        );
        assert_eq!(s.head().unwrap(), head, "{}: the chain moved", t.name);
        assert_eq!(s.audit_entries().unwrap(), entries);
        assert_eq!(s.outbox().unwrap(), outbox);
        assert_eq!(s.meta_bytes("x").unwrap(), None);
        assert_eq!(s.clocks().unwrap(), vec![clock.clone()]);
        // The same start with a new fact is a write like any other.
        let written = s
            .commit(&Change {
                clock: Some(clock),
                audit: vec![note(2)],
                ..Change::default()
            })
            .unwrap();
        assert_eq!(written.len(), 1);
        assert_eq!(written[0].seq, head.next_seq);
        assert!(s.verify_audit().unwrap().is_ok());
    });
}

#[test]
fn outbox_items_are_keyed_by_sink_and_key_in_creation_order() {
    for_each_store(|t| {
        crossed(&t);
        let s = t.compliance();
        let before = s.outbox().unwrap();
        assert!(!before.is_empty());
        // Enqueuing an existing key again leaves the stored item alone.
        let mut again = before[0].clone();
        again.attempts = 99;
        let mut fresh = before[0].clone();
        fresh.key = "later".into();
        s.commit(&Change {
            outbox: vec![again, fresh.clone()],
            ..Change::default()
        })
        .unwrap();
        let after = s.outbox().unwrap();
        assert_eq!(after.len(), before.len() + 1, "{}", t.name);
        assert_eq!(
            after[..before.len()],
            before[..],
            "{}: existing items changed",
            t.name
        );
        assert_eq!(after.last().unwrap().key, "later", "creation order");
        // Delivery progress overwrites.
        let mut delivered = after[0].clone();
        delivered.state = DeliveryState::Delivered;
        s.commit(&Change {
            outbox_update: vec![delivered.clone()],
            ..Change::default()
        })
        .unwrap();
        assert_eq!(s.outbox().unwrap()[0], delivered);
    });
}

#[test]
fn registry_and_engine_appends_share_one_chain() {
    for_each_store(|t| {
        crossed(&t);
        let s = t.compliance();
        let head = s.head().unwrap();
        let entries = s.audit_entries().unwrap();
        assert_eq!(head.next_seq, entries.len() as u64);
        let kinds: Vec<&str> = entries.iter().map(|e| e.kind.as_str()).collect();
        for k in [
            "threshold-config-change",
            "registry-change",
            "clock-started",
            "alert",
        ] {
            assert!(kinds.contains(&k), "{}: {k} missing from {kinds:?}", t.name);
        }
        // The ledger appends (a registry change), then the engine: one linear chain.
        t.ledger()
            .set_model_entry(&planned("m", 3 * E25, now_unix_ms()))
            .unwrap();
        s.append_audit(vec![note(3)]).unwrap();
        let new = s
            .verify_since(&head)
            .unwrap()
            .expect("the appended entries verify");
        assert_eq!(new.next_seq, head.next_seq + 2);
        assert_eq!(new, s.head().unwrap());
        let range = s.audit_range(head.next_seq, new.next_seq).unwrap();
        assert_eq!(
            range.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
            ["registry-change", "alert"]
        );
        let status = s.chain_status().unwrap();
        assert!(status.ok() && status.entries == new.next_seq, "{status:?}");
        // The engine's metadata reads back typed.
        let thresholds: Vec<Threshold> = meta(s, "thresholds").unwrap().unwrap();
        assert!(thresholds.iter().any(|t| t.id == "eu-systemic-risk"));
        t.ledger().flush().unwrap();
        s.flush().unwrap();
    });
}
