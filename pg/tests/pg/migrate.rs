//! Migrations: applied once under the advisory lock, even by collectors starting together;
//! a newer schema and an edited migration are refused, changing nothing.

use std::sync::{Arc, Barrier};
use std::time::Duration;

use flopmeter_pg::migrate::{self, DEFAULT_TIMEOUT, MIGRATIONS, MigrateError, Migration};
use flopmeter_pg::{Database, PgError};

use crate::{connect, fresh};

fn versions(db: &Database) -> Vec<(i32, String)> {
    db.run(|conn| async move {
        let rows = conn
            .query(
                "SELECT version, name FROM schema_migrations ORDER BY version",
                &[],
            )
            .await?;
        Ok::<_, PgError>(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    })
    .unwrap()
}

fn table_exists(db: &Database, table: &'static str) -> bool {
    db.run(move |conn| async move {
        let row = conn
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
            .await?;
        Ok::<bool, PgError>(row.get(0))
    })
    .unwrap()
}

#[test]
fn collectors_starting_together_apply_each_migration_once() {
    let test_db = fresh();
    let n = 4;
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let db = connect(&test_db);
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                migrate::apply(&db, MIGRATIONS, DEFAULT_TIMEOUT).unwrap()
            })
        })
        .collect();
    let reports: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let applied: Vec<&Vec<i32>> = reports.iter().map(|r| &r.applied).collect();
    assert_eq!(
        applied.iter().filter(|a| !a.is_empty()).count(),
        1,
        "exactly one collector applies: {applied:?}"
    );
    assert!(applied.contains(&&vec![1, 2, 3]), "{applied:?}");
    assert!(reports.iter().all(|r| r.schema_version == 3));
    let db = connect(&test_db);
    assert_eq!(
        versions(&db),
        MIGRATIONS
            .iter()
            .map(|m| (m.version, m.name.to_string()))
            .collect::<Vec<_>>()
    );
    assert!(table_exists(&db, "engine_lease"));
    // Migration 3: the rows every commit group rewrites are vacuumed promptly.
    let options: Vec<String> = db
        .run(|conn| async move {
            let row = conn
                .query_one(
                    "SELECT reloptions::text FROM pg_class WHERE relname = 'ledger_run_agg'",
                    &[],
                )
                .await?;
            Ok::<_, PgError>(
                row.get::<_, String>(0)
                    .trim_matches(['{', '}'])
                    .split(',')
                    .map(String::from)
                    .collect(),
            )
        })
        .unwrap();
    assert!(
        options.contains(&"fillfactor=50".to_string()),
        "{options:?}"
    );
    assert!(
        options.contains(&"autovacuum_vacuum_cost_delay=0".to_string()),
        "{options:?}"
    );
    // A later start finds nothing to do.
    let again = migrate::apply(&db, MIGRATIONS, DEFAULT_TIMEOUT).unwrap();
    assert!(again.applied.is_empty());
}

#[test]
fn a_schema_newer_than_this_flopmeter_is_refused() {
    let test_db = fresh();
    let db = connect(&test_db);
    migrate::apply(&db, MIGRATIONS, DEFAULT_TIMEOUT).unwrap();
    // A newer flopmeter applied up to version 7.
    db.run(|conn| async move {
        conn.batch_execute(
            "INSERT INTO schema_migrations (version, name, checksum, applied_by) \
             SELECT v, 'future_' || v, 'x', '9.9.9' FROM generate_series(4, 7) AS v",
        )
        .await?;
        Ok::<(), PgError>(())
    })
    .unwrap();
    let e = migrate::apply(&db, MIGRATIONS, DEFAULT_TIMEOUT).unwrap_err();
    assert!(
        matches!(
            e,
            MigrateError::SchemaNewer {
                database: 7,
                known: 3,
                ..
            }
        ),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.starts_with("the database schema is version 7, this flopmeter"),
        "{msg}"
    );
    assert!(msg.contains("knows up to 3: upgrade flopmeter"), "{msg}");
    assert!(msg.contains("9.9.9"), "{msg}");
    assert_eq!(versions(&db).len(), 7, "nothing changed");
}

static V2: &[Migration] = &[
    MIGRATIONS[0],
    Migration {
        version: 2,
        name: "widgets",
        sql: "CREATE TABLE widgets (id integer PRIMARY KEY);",
    },
];
static V2_EDITED: &[Migration] = &[
    MIGRATIONS[0],
    Migration {
        version: 2,
        name: "widgets",
        sql: "CREATE TABLE widgets (id bigint PRIMARY KEY);",
    },
    Migration {
        version: 3,
        name: "gadgets",
        sql: "CREATE TABLE gadgets (id integer);",
    },
];
static V3_BROKEN: &[Migration] = &[
    MIGRATIONS[0],
    V2[1],
    Migration {
        version: 3,
        name: "half_done",
        sql: "CREATE TABLE half (id integer); CREATE TABLE half (id integer);",
    },
];

#[test]
fn an_edited_migration_is_refused_and_a_failing_one_changes_nothing() {
    let test_db = fresh();
    let db = connect(&test_db);
    assert_eq!(
        migrate::apply(&db, V2, DEFAULT_TIMEOUT).unwrap().applied,
        vec![1, 2]
    );
    let e = migrate::apply(&db, V2_EDITED, DEFAULT_TIMEOUT).unwrap_err();
    match &e {
        MigrateError::ChecksumChanged {
            version,
            recorded,
            expected,
            ..
        } => {
            assert_eq!(*version, 2);
            assert_eq!(recorded, &V2[1].checksum());
            assert_eq!(expected, &V2_EDITED[1].checksum());
        }
        other => panic!("{other:?}"),
    }
    assert!(
        e.to_string().contains("a released migration was edited"),
        "{e}"
    );
    assert!(
        !table_exists(&db, "gadgets"),
        "migration 3 must not run after the refusal"
    );

    // A migration that fails rolls the whole run back, its record included.
    let e = migrate::apply(&db, V3_BROKEN, DEFAULT_TIMEOUT).unwrap_err();
    assert!(
        matches!(e, MigrateError::Pg(PgError::Statement { .. })),
        "{e:?}"
    );
    assert!(e.to_string().contains("already exists"), "{e}");
    assert!(!table_exists(&db, "half"));
    assert_eq!(versions(&db).len(), 2);
    // The lock went with the transaction: the next run does not wait for it (it would
    // time out instead).
    migrate::apply(&db, V2, Duration::from_secs(5)).unwrap();
}

#[test]
fn an_offline_check_refuses_an_absent_older_or_newer_schema_and_changes_nothing() {
    let test_db = fresh();
    let db = connect(&test_db);
    let e = migrate::check(&db, MIGRATIONS, DEFAULT_TIMEOUT).unwrap_err();
    assert!(matches!(e, MigrateError::NoSchema), "{e:?}");
    assert!(e.to_string().contains("no flopmeter schema"), "{e}");
    assert!(
        !table_exists(&db, "schema_migrations"),
        "a check creates nothing"
    );

    // An older collector applied version 1 only; a newer tool must not migrate under it.
    migrate::apply(&db, &MIGRATIONS[..1], DEFAULT_TIMEOUT).unwrap();
    let e = migrate::check(&db, MIGRATIONS, DEFAULT_TIMEOUT).unwrap_err();
    assert!(
        matches!(
            e,
            MigrateError::SchemaOlder {
                database: 1,
                known: 3
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains("start a collector of this version to migrate it"),
        "{e}"
    );
    assert_eq!(versions(&db).len(), 1, "nothing migrated");

    migrate::apply(&db, MIGRATIONS, DEFAULT_TIMEOUT).unwrap();
    assert_eq!(migrate::check(&db, MIGRATIONS, DEFAULT_TIMEOUT).unwrap(), 3);
    // A tool older than the schema is refused like a collector.
    let e = migrate::check(&db, &MIGRATIONS[..1], DEFAULT_TIMEOUT).unwrap_err();
    assert!(
        matches!(
            e,
            MigrateError::SchemaNewer {
                database: 3,
                known: 1,
                ..
            }
        ),
        "{e:?}"
    );
}
