//! Every store the collector can run on, for the parametrised store suite: the ledger and
//! compliance store tests that go to the store directly loop over [`stores`] (through
//! [`for_each_store`]), so each runs on every backend from one body. Adding a backend (the
//! PostgreSQL store, issue 15 §2) is one line in [`stores`].

use std::sync::Arc;

use flopmeter_collector::compliance::ComplianceStore;
use flopmeter_collector::ledger::memory_store::MemoryStore;
use flopmeter_collector::ledger::pg_store::PgStore;
use flopmeter_collector::ledger::sled_store::SledStore;
use flopmeter_collector::ledger::{LedgerStore, RawBatchId, SeqRange, StoredBatch};
use flopmeter_collector::storage::Stores;

/// One backend under test: both halves of one store, and what a restart does to it.
pub struct TestStore {
    /// The backend's name, printed before each run (a failure's output names it).
    pub name: &'static str,
    stores: Option<Stores>,
    reopen: Box<dyn Fn() -> Stores>,
    _dir: Option<tempfile::TempDir>,
    _spare: Option<Spare>,
}

impl TestStore {
    /// The ledger.
    pub fn ledger(&self) -> &dyn LedgerStore {
        self.stores().ledger.as_ref()
    }

    /// The compliance store (the same backend).
    pub fn compliance(&self) -> &dyn ComplianceStore {
        self.stores().compliance.as_ref()
    }

    /// Both halves, as the collector holds them.
    pub fn stores(&self) -> &Stores {
        self.stores.as_ref().expect("open")
    }

    /// A store built elsewhere (a migration's target), whose restart keeps it.
    pub fn wrap(name: &'static str, stores: Stores) -> TestStore {
        let kept = stores.clone();
        TestStore {
            name,
            stores: Some(stores),
            reopen: Box::new(move || kept.clone()),
            _dir: None,
            _spare: None,
        }
    }

    /// A collector restart: every handle dropped, the store opened again. The memory store
    /// has no restart (nothing survives its process); it stands for a store that keeps
    /// what it was given, so its restart keeps the same store.
    pub fn restart(&mut self) {
        self.stores = None;
        self.stores = Some((self.reopen)());
    }
}

/// A store constructor.
pub type Constructor = fn() -> TestStore;

/// Every backend, by name.
pub fn stores() -> Vec<(&'static str, Constructor)> {
    vec![("memory", memory), ("sled", sled), ("postgres", postgres)]
}

/// Runs `f` on a fresh store of every backend in turn, saying which.
pub fn for_each_store(mut f: impl FnMut(TestStore)) {
    for (name, make) in stores() {
        println!("--- on the {name} store");
        f(make());
    }
}

/// The in-memory reference store.
pub fn memory() -> TestStore {
    let store = Stores::new(Arc::new(MemoryStore::new()));
    let kept = store.clone();
    TestStore {
        name: "memory",
        stores: Some(store),
        reopen: Box::new(move || kept.clone()),
        _dir: None,
        _spare: None,
    }
}

/// The sled store in a temporary directory.
pub fn sled() -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    TestStore {
        name: "sled",
        stores: Some(Stores::new(Arc::new(SledStore::open(&path).unwrap()))),
        reopen: Box::new(move || Stores::new(Arc::new(reopen_sled(&path)))),
        _dir: Some(dir),
        _spare: None,
    }
}

/// The PostgreSQL store on an empty database of the test binary's one server; a restart
/// drops every handle (the pool closes) and opens the store again on the same database.
///
/// Databases are reused: creating one costs a few hundred milliseconds (a copy of the
/// template, then the migrations), and the model tests build a store per case. A database
/// goes back to [`SPARE`] when its `TestStore` is dropped and is emptied (every row deleted,
/// the schema kept) when taken again.
pub fn postgres() -> TestStore {
    let (dsn, reused) = match SPARE.lock().unwrap_or_else(|p| p.into_inner()).pop() {
        Some(dsn) => (dsn, true),
        None => (
            flopmeter_pg::test_support::shared()
                .fresh_database()
                .socket_dsn(),
            false,
        ),
    };
    let db = connect_pg(&dsn);
    if reused {
        empty(&db);
    }
    let first = Stores::new(Arc::new(PgStore::open(db).unwrap()));
    let again = dsn.clone();
    TestStore {
        name: "postgres",
        stores: Some(first),
        reopen: Box::new(move || Stores::new(Arc::new(open_pg(&again)))),
        _dir: None,
        _spare: Some(Spare(dsn)),
    }
}

/// Databases a dropped `TestStore` left, migrated, to be emptied and used again.
static SPARE: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Gives its database back to [`SPARE`] when dropped (after the store's own handles).
struct Spare(String);

impl Drop for Spare {
    fn drop(&mut self) {
        SPARE
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(std::mem::take(&mut self.0));
    }
}

/// Deletes every row of the store's tables (not `schema_migrations`): the database is then
/// as a fresh migrated one, and `PgStore::open` writes the chain's genesis head again.
fn empty(db: &flopmeter_pg::Database) {
    db.run(|conn| async move {
        let tables: Vec<String> = conn
            .query(
                "SELECT tablename::text FROM pg_tables \
                 WHERE schemaname = current_schema() AND tablename <> 'schema_migrations'",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let sql: String = tables.iter().map(|t| format!("DELETE FROM {t};")).collect();
        conn.batch_execute(&sql).await?;
        Ok::<(), flopmeter_pg::PgError>(())
    })
    .unwrap();
}

/// A [`PgStore`] on `dsn`, migrated.
pub fn open_pg(dsn: &str) -> PgStore {
    PgStore::open(connect_pg(dsn)).unwrap()
}

/// A connection pool to `dsn`, with short limits so a stuck test fails rather than hangs.
pub fn connect_pg(dsn: &str) -> flopmeter_pg::Database {
    let mut o = flopmeter_pg::Options::new(flopmeter_pg::Dsn::parse(dsn).unwrap());
    o.connect_timeout = std::time::Duration::from_secs(10);
    o.run_timeout = std::time::Duration::from_secs(30);
    flopmeter_pg::Database::connect(o).unwrap()
}

/// Reopens a sled ledger after a drop in the same process: sled releases its file lock from
/// a background thread shortly after the last handle goes, so retry (bounded) while it does.
pub fn reopen_sled(dir: &std::path::Path) -> SledStore {
    for _ in 0..500 {
        if let Ok(s) = SledStore::open(dir) {
            return s;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    SledStore::open(dir).unwrap()
}

/// A compliance engine on `stores` whose now is `now` (Unix ms), with the default
/// thresholds and the log sink, and metrics in a registry of its own.
pub fn engine(
    stores: &Stores,
    now: Arc<std::sync::atomic::AtomicI64>,
) -> flopmeter_collector::compliance::Engine {
    use flopmeter_collector::compliance::metrics::ComplianceMetrics;
    use flopmeter_collector::compliance::{ComplianceConfig, Engine, EngineTime};
    Engine::open(
        stores.clone(),
        ComplianceConfig {
            time: EngineTime::from_fn(move || now.load(std::sync::atomic::Ordering::SeqCst)),
            ..ComplianceConfig::default()
        },
        flopmeter_core::stage::StagePolicy::default(),
        ComplianceMetrics::register(&prometheus::Registry::new()).unwrap(),
    )
    .unwrap()
}

/// A registry entry declaring a plan of `flop` for `model`, by alice at `at`.
pub fn planned(model: &str, flop: u128, at: i64) -> flopmeter_collector::ledger::ModelEntry {
    use flopmeter_collector::ledger::{ModelEntry, Role};
    ModelEntry {
        model: model.into(),
        role: Some(Role::Provider),
        declared: flopmeter_core::declaration::Declaration {
            planned_flop: Some(flop),
            ..Default::default()
        },
        updated_unix_ms: at,
        updated_by: Some("alice".into()),
        ..ModelEntry::default()
    }
}

/// An audit entry of kind alert at `n` ms whose payload is `n`: entries told apart by number.
pub fn note(n: i64) -> flopmeter_collector::compliance::store::AuditRecord {
    use flopmeter_core::audit::{AuditKind, Json};
    flopmeter_collector::compliance::store::AuditRecord {
        time_ms: n,
        actor: "test".into(),
        kind: AuditKind::Alert,
        payload: Json::Int(n),
    }
}

/// Every raw batch `l` holds, in (agent, first sequence) order: each agent's up to its mark.
pub fn all_raw_batches(l: &dyn LedgerStore) -> Vec<(RawBatchId, StoredBatch)> {
    let ranges: Vec<SeqRange> = l
        .high_water_marks()
        .unwrap()
        .into_iter()
        .map(|(agent_id, upto)| SeqRange {
            agent_id,
            after: 0,
            upto,
        })
        .collect();
    l.raw_batches_between(&ranges, usize::MAX).unwrap()
}
