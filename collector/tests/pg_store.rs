//! What only the PostgreSQL store has to show, on the test binary's real PostgreSQL (the
//! shared suites run on it too, through `support::stores`): exact u128 sums through
//! NUMERIC, one batch applied once by two stores racing on one database, fenced compliance
//! writes, a tampered audit log caught, and a newer schema refused.

use std::sync::{Arc, Barrier};

use flopmeter_collector::compliance::ComplianceStore;
use flopmeter_collector::compliance::store::{Change, ComplianceStoreError};
use flopmeter_collector::ledger::pg_store::PgStore;
use flopmeter_collector::ledger::{Aggregate, LedgerStore, StoreError};
use flopmeter_pg::{MigrateError, PgError};

use crate::support::stores::{connect_pg, note, open_pg};
use crate::support::{incoming, rec};

/// A fresh database's DSN on the shared server.
fn fresh_dsn() -> String {
    flopmeter_pg::test_support::shared()
        .fresh_database()
        .socket_dsn()
}

/// Runs one SQL statement on the store's database; returns the first column of each row
/// as text.
fn sql(store: &PgStore, statement: &'static str, params: Vec<Vec<u8>>) -> Vec<Option<String>> {
    store
        .database()
        .run(move |conn| async move {
            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                .iter()
                .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            let rows = conn.query(statement, &refs).await?;
            Ok::<_, PgError>(rows.iter().map(|r| r.get(0)).collect())
        })
        .unwrap()
}

#[test]
fn u128_sums_round_trip_exactly_through_numeric() {
    let store = open_pg(&fresh_dsn());
    store
        .apply_batch(&incoming("a", "n", vec![rec(1, "m", "r", "pretrain", 4)]))
        .unwrap();
    // Sums no fleet reaches yet, set in the stored document: near u128::MAX, and one above
    // i64 and f64's exact range (2^63 < 12292135081967203200 < 2^64, not a multiple of 2^11).
    let mut a: Aggregate = store.run_aggregate("m", "r").unwrap().unwrap();
    let t = a.stages.get_mut("pretrain").unwrap();
    t.flop.low = 12_292_135_081_967_203_200;
    t.flop.central = u128::MAX - 1_000;
    t.flop.high = u128::MAX - 8;
    let doc = serde_json::to_vec(&a).unwrap();
    sql(
        &store,
        "UPDATE ledger_run_agg SET doc = $1 WHERE model = 'm' RETURNING 'x'",
        vec![doc],
    );
    // The next batch reads the document, adds to it in Rust, and writes the document and the
    // NUMERIC columns back.
    store
        .apply_batch(&incoming("a", "n", vec![rec(2, "m", "r", "pretrain", 4)]))
        .unwrap();
    let want = (12_292_135_081_967_203_202u128, u128::MAX - 996, u128::MAX);
    let got = store.run_aggregate("m", "r").unwrap().unwrap().all().flop;
    assert_eq!((got.low, got.central, got.high), want);
    let columns = sql(
        &store,
        "SELECT concat_ws(' ', flop_low, flop_central, flop_high) FROM ledger_run_agg",
        vec![],
    );
    assert_eq!(
        columns,
        vec![Some(format!("{} {} {}", want.0, want.1, want.2))]
    );
    assert_eq!(want.2, u128::MAX, "the high sum reaches u128::MAX exactly");
    // Compared as NUMERIC in SQL too (no float anywhere on the way).
    let equal = sql(
        &store,
        "SELECT (flop_central = 340282366920938463463374607431768210459 \
                 AND flop_low = 12292135081967203202)::text FROM ledger_run_agg",
        vec![],
    );
    assert_eq!(equal, vec![Some("true".into())]);
    // The model's document was merged from its own row, unaffected.
    let model = store.model_aggregate("m").unwrap().unwrap().all().flop;
    assert_eq!(model.central, 8);
    assert!(
        store
            .verify()
            .unwrap()
            .mismatches
            .iter()
            .any(|m| m.contains("run m/r"))
    );
    assert!(
        store.size_on_disk().unwrap() > 100_000,
        "the tables take room"
    );
}

#[test]
fn two_stores_racing_with_the_same_batch_apply_it_once() {
    let dsn = fresh_dsn();
    let (one, two) = (Arc::new(open_pg(&dsn)), Arc::new(open_pg(&dsn)));
    let rounds = 12u64;
    let mut applied_twice = 0;
    for round in 0..rounds {
        let seqs = (round * 3 + 1)..=(round * 3 + 3);
        let batch = incoming(
            "agent",
            "node",
            seqs.map(|s| rec(s, "m", "r", "pretrain", 1_000)).collect(),
        );
        let barrier = Arc::new(Barrier::new(2));
        let handles: Vec<_> = [one.clone(), two.clone()]
            .into_iter()
            .map(|store| {
                let (batch, barrier) = (batch.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    store.apply_batch(&batch).unwrap()
                })
            })
            .collect();
        let outs: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let applied: Vec<usize> = outs.iter().map(|o| o.applied).collect();
        let dups: Vec<usize> = outs.iter().map(|o| o.duplicates).collect();
        assert!(
            applied.contains(&3) && applied.contains(&0) && dups.contains(&3),
            "round {round}: one store applies, the other finds duplicates: {outs:?}"
        );
        applied_twice += applied.iter().filter(|a| **a > 0).count() - 1;
        assert!(outs.iter().all(|o| o.acked_through == round * 3 + 3));
    }
    assert_eq!(applied_twice, 0);
    let total = one.model_aggregate("m").unwrap().unwrap().all();
    assert_eq!(total.records, rounds * 3);
    assert_eq!(total.flop.central, u128::from(rounds * 3 * 1_000));
    assert_eq!(one.run_aggregate("m", "r").unwrap().unwrap().agents, 1);
    assert!(two.verify().unwrap().ok());
}

#[test]
fn a_fenced_store_without_the_lease_writes_nothing() {
    let dsn = fresh_dsn();
    let (tx, rx) = tokio::sync::watch::channel(None);
    let store = open_pg(&dsn).fence_with(rx);
    let change = Change {
        audit: vec![note(1)],
        meta: vec![("k".into(), b"1".to_vec())],
        ..Change::default()
    };
    let e = store.commit(&change).unwrap_err();
    assert!(matches!(e, ComplianceStoreError::NotLeader { .. }), "{e:?}");
    assert!(store.audit_entries().unwrap().is_empty());
    assert_eq!(store.meta_bytes("k").unwrap(), None);

    // With the lease it writes; once another replica took over it is refused again.
    let config = flopmeter_pg::LeaseConfig::engine("replica-a");
    let db = store.database().clone();
    let lease = db
        .run(move |conn| async move { flopmeter_pg::lease::try_acquire(&conn, &config).await })
        .unwrap()
        .expect("the lease is free");
    tx.send_replace(Some(lease));
    assert_eq!(store.commit(&change).unwrap().len(), 1);
    sql(
        &store,
        "UPDATE engine_lease SET epoch = epoch + 1, holder = 'replica-b' RETURNING holder",
        vec![],
    );
    let e = store.commit(&change).unwrap_err();
    assert!(matches!(e, ComplianceStoreError::NotLeader { .. }), "{e:?}");
    assert_eq!(
        store.audit_entries().unwrap().len(),
        1,
        "nothing more written"
    );
    // Ledger writes are every replica's: the stale leader still applies batches.
    store
        .apply_batch(&incoming("a", "n", vec![rec(1, "m", "r", "pretrain", 4)]))
        .unwrap();
}

#[test]
fn a_tampered_audit_log_is_caught() {
    let store = open_pg(&fresh_dsn());
    store
        .commit(&Change {
            audit: (0..4).map(note).collect(),
            ..Change::default()
        })
        .unwrap();
    assert_eq!(store.verify_audit().unwrap(), Ok(4));
    sql(
        &store,
        "UPDATE audit_log SET entry = convert_to(replace(convert_from(entry, 'UTF8'), \
             '\"actor\":\"test\"', '\"actor\":\"mallory\"'), 'UTF8') \
         WHERE idx = 2 RETURNING 'x'",
        vec![],
    );
    let broken = store.verify_audit().unwrap().unwrap_err();
    assert_eq!(broken.index, 2, "{broken:?}");

    // Cutting the last entry off is caught by the head kept apart.
    let store = open_pg(&fresh_dsn());
    store
        .commit(&Change {
            audit: (0..3).map(note).collect(),
            ..Change::default()
        })
        .unwrap();
    sql(
        &store,
        "DELETE FROM audit_log WHERE idx = 2 RETURNING 'x'",
        vec![],
    );
    assert!(store.verify_audit().unwrap().is_err());
}

#[test]
fn a_schema_newer_than_this_collector_is_refused() {
    let dsn = fresh_dsn();
    let store = open_pg(&dsn);
    sql(
        &store,
        "INSERT INTO schema_migrations (version, name, checksum, applied_by) \
         VALUES (99, 'future', 'x', '9.9.9') RETURNING name",
        vec![],
    );
    drop(store);
    let e = PgStore::open(connect_pg(&dsn)).unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::Schema(ref m) if matches!(**m, MigrateError::SchemaNewer { database: 99, .. })
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("upgrade flopmeter"), "{e}");
    assert!(!e.is_write_failure());
}

#[test]
fn a_connection_lost_mid_batch_costs_a_resend_not_a_restart() {
    let dsn = fresh_dsn();
    let store = open_pg(&dsn);
    let batch = |first: u64| {
        incoming(
            "a",
            "n",
            (first..first + 2)
                .map(|s| rec(s, "m", "r", "pretrain", 10))
                .collect(),
        )
    };
    store.apply_batch(&batch(1)).unwrap();
    // Another session holds the agent's mark, so the next batch waits inside its
    // transaction; its connection is then cut (as by a server restart or a network failure).
    let locker = connect_pg(&dsn);
    let (locked, is_locked) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        locker
            .run(move |mut conn| async move {
                let tx = conn.transaction().await?;
                tx.execute("SELECT 1 FROM ledger_hwm WHERE agent = 'a' FOR UPDATE", &[])
                    .await?;
                locked.send(()).unwrap();
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                tx.rollback().await?;
                Ok::<(), PgError>(())
            })
            .unwrap()
    });
    is_locked.recv().unwrap();
    let second = batch(3);
    let applying = {
        let (store, second) = (store.clone(), second.clone());
        std::thread::spawn(move || store.apply_batch(&second))
    };
    while sql(
        &store,
        "SELECT pg_terminate_backend(pid)::text FROM pg_stat_activity \
         WHERE wait_event_type = 'Lock' AND datname = current_database()",
        vec![],
    )
    .is_empty()
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let e = applying.join().unwrap().unwrap_err();
    // Rolled back before its COMMIT: not a write failure (after which the writer refuses
    // everything until restart). Nothing of it was stored, and the agent's resend applies it.
    assert!(matches!(e, StoreError::Database(_)), "{e:?}");
    assert!(!e.is_write_failure(), "{e}");
    assert!(
        e.to_string().contains("nothing of this request was stored"),
        "{e}"
    );
    holder.join().unwrap();
    assert_eq!(store.high_water_mark("a").unwrap(), 2);
    let out = store.apply_batch(&second).unwrap();
    assert_eq!((out.applied, out.acked_through), (2, 4));
    assert_eq!(
        store.model_aggregate("m").unwrap().unwrap().all().records,
        4
    );
}

#[test]
fn two_stores_sharing_runs_and_models_sum_exactly() {
    // Four agents on two stores at once, all on two runs of one model and an unattributed
    // bucket: every aggregate row is contended (first inserted by whichever store gets
    // there), and the distinct agent counts must rise exactly once per agent.
    let dsn = fresh_dsn();
    let stores = [Arc::new(open_pg(&dsn)), Arc::new(open_pg(&dsn))];
    let (agents, batches, per) = (4u64, 15u64, 3u64);
    let handles: Vec<_> = (0..agents)
        .map(|a| {
            let store = stores[(a % 2) as usize].clone();
            std::thread::spawn(move || {
                for b in 0..batches {
                    let records = (1..=per)
                        .map(|i| {
                            let seq = b * per + i;
                            let (model, run) = match seq % 3 {
                                0 => ("m", "r1"),
                                1 => ("m", "r2"),
                                _ => ("", ""),
                            };
                            rec(seq, model, run, "pretrain", 1_000 + a)
                        })
                        .collect();
                    let batch = incoming(&format!("agent-{a}"), &format!("node-{a}"), records);
                    // Sent to both stores, as an agent that reconnects elsewhere would.
                    store
                        .apply_group(&[&batch, &batch])
                        .into_iter()
                        .for_each(|r| {
                            r.unwrap();
                        });
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let s = &stores[0];
    let model = s.model_aggregate("m").unwrap().unwrap();
    let records: u64 = (0..agents)
        .map(|_| (1..=batches * per).filter(|q| q % 3 != 2).count() as u64)
        .sum();
    assert_eq!(model.all().records, records);
    let flop: u128 = (0..agents)
        .map(|a| (1..=batches * per).filter(|q| q % 3 != 2).count() as u128 * u128::from(1_000 + a))
        .sum();
    assert_eq!(model.all().flop.central, flop);
    assert_eq!((model.agents, model.nodes), (agents, agents));
    for run in ["r1", "r2"] {
        assert_eq!(s.run_aggregate("m", run).unwrap().unwrap().agents, agents);
    }
    let report = stores[1].verify().unwrap();
    assert!(report.ok(), "{:?}", report.mismatches);
}
