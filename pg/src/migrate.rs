//! The schema, as numbered SQL files compiled into the binary and applied at start.
//!
//! **Contract:**
//! - Migrations are `migrations/NNNN_name.sql`, listed in [`MIGRATIONS`] with versions 1, 2,
//!   3... without gaps. A released file is never edited: add the next one.
//! - [`apply`] runs in one transaction that first takes a transaction-level advisory lock
//!   ([`MIGRATION_LOCK_KEY`]). Collectors starting at once queue on the lock; the first
//!   applies what is missing, the others then find nothing to do. A failure rolls the whole
//!   run back, lock included, and the schema stays as it was. (So a migration cannot use
//!   statements that refuse a transaction, such as `CREATE INDEX CONCURRENTLY`.)
//! - `schema_migrations` records each applied version with its name, the SHA-256 of its SQL,
//!   the time and the flopmeter version that applied it.
//! - A collector refuses a database whose schema is newer than it knows
//!   ([`MigrateError::SchemaNewer`]), one where an applied migration's checksum differs from
//!   its own copy ([`MigrateError::ChecksumChanged`]), and one missing a version below its
//!   newest. It changes nothing in those cases.
//! - Offline tools [`check`] instead: they read a schema exactly as new as theirs and change
//!   nothing, so a newer CLI never migrates a shared schema under older running collectors.

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::database::Database;
use crate::error::PgError;

/// One migration: its number, a name, and its SQL (one or more statements).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// 1, 2, 3...
    pub version: i32,
    /// What it does, in a few words (snake_case, as in its file name).
    pub name: &'static str,
    /// The statements.
    pub sql: &'static str,
}

impl Migration {
    /// SHA-256 of the SQL, lower-case hex: what `schema_migrations.checksum` records.
    pub fn checksum(&self) -> String {
        Sha256::digest(self.sql.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// The migrations this flopmeter knows, oldest first. The ledger's tables are migration 2
/// onward.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "schema_migrations_and_engine_lease",
        sql: include_str!("../migrations/0001_schema_migrations_and_engine_lease.sql"),
    },
    Migration {
        version: 2,
        name: "ledger_and_compliance",
        sql: include_str!("../migrations/0002_ledger_and_compliance.sql"),
    },
    Migration {
        version: 3,
        name: "hot_rows_vacuumed_promptly",
        sql: include_str!("../migrations/0003_hot_rows_vacuumed_promptly.sql"),
    },
];

/// The advisory lock key migrations run under ("flopmigr" in ASCII).
pub const MIGRATION_LOCK_KEY: i64 = 0x666c_6f70_6d69_6772;

/// How long [`apply`] waits, lock included, by default: another collector may be applying a
/// long migration.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Versions this run applied (empty when the schema was current).
    pub applied: Vec<i32>,
    /// The schema's version afterwards.
    pub schema_version: i32,
}

/// Why the schema was not brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// PostgreSQL failed (connection, statement, timeout).
    #[error(transparent)]
    Pg(#[from] PgError),
    /// The database was migrated by a newer flopmeter.
    #[error(
        "the database schema is version {database}, this flopmeter ({ours}) knows up to \
         {known}: upgrade flopmeter (version {database} was applied by flopmeter {applied_by})"
    )]
    SchemaNewer {
        /// The database's newest version.
        database: i32,
        /// The newest this binary knows.
        known: i32,
        /// This binary's version.
        ours: &'static str,
        /// The version of flopmeter that applied the database's newest migration.
        applied_by: String,
    },
    /// The database has no flopmeter schema, and the caller may not create it ([`check`]).
    #[error(
        "the database has no flopmeter schema: check the DSN's database name (a collector \
         started with --store creates the schema, and so does `flopmeter ledger migrate`)"
    )]
    NoSchema,
    /// The database's schema is older than this binary's, and the caller may not migrate it
    /// ([`check`]).
    #[error(
        "the database schema is version {database}, this flopmeter knows {known}: start a \
         collector of this version to migrate it, or use the flopmeter release the collectors \
         run (this tool never changes the schema under running collectors)"
    )]
    SchemaOlder {
        /// The database's newest version.
        database: i32,
        /// The newest this binary knows.
        known: i32,
    },
    /// An applied migration is not the SQL this binary has for it.
    #[error(
        "migration {version} ({name}) was applied from other SQL than this flopmeter's copy \
         (checksum {recorded} in schema_migrations, {expected} here): a released migration \
         was edited; use the flopmeter release that applied it, or restore the file"
    )]
    ChecksumChanged {
        /// Its version.
        version: i32,
        /// Its name here.
        name: &'static str,
        /// The checksum in `schema_migrations`.
        recorded: String,
        /// This binary's.
        expected: String,
    },
    /// A version below the database's newest is not recorded.
    #[error(
        "schema_migrations lacks version {version} but has later ones: the schema was changed \
         by hand; restore the database from a backup or ask for help"
    )]
    Missing {
        /// The missing version.
        version: i32,
    },
    /// The list itself is wrong (a development error, caught by the tests).
    #[error("the migration list is wrong: {problem}")]
    BadList {
        /// What is wrong.
        problem: &'static str,
    },
}

impl From<tokio_postgres::Error> for MigrateError {
    fn from(e: tokio_postgres::Error) -> Self {
        MigrateError::Pg(e.into())
    }
}

/// Brings the schema up to `migrations` on a connection of `db` (see the module's contract),
/// waiting at most `timeout` (lock included).
pub fn apply(
    db: &Database,
    migrations: &'static [Migration],
    timeout: Duration,
) -> Result<MigrationReport, MigrateError> {
    db.run_with_timeout(timeout, move |mut conn| async move {
        apply_with(&mut conn, migrations).await
    })
}

/// Checks, without changing anything, that the schema is exactly `migrations`: what an
/// offline tool (`ledger verify --store`, `audit verify --store`) does before reading, so
/// that a newer tool never migrates a schema under running collectors of an older version.
/// Returns the schema's version; an absent or older schema is refused
/// ([`MigrateError::NoSchema`], [`MigrateError::SchemaOlder`]).
pub fn check(
    db: &Database,
    migrations: &'static [Migration],
    timeout: Duration,
) -> Result<i32, MigrateError> {
    db.run_with_timeout(timeout, move |mut conn| async move {
        check_list(migrations)?;
        let tx = conn.transaction().await?;
        let recorded = recorded(&tx).await?;
        validate(&recorded, migrations)?;
        let known = migrations.last().map_or(0, |m| m.version);
        match recorded.last() {
            None => return Err(MigrateError::NoSchema),
            Some(newest) if newest.version < known => {
                return Err(MigrateError::SchemaOlder {
                    database: newest.version,
                    known,
                });
            }
            Some(_) => {}
        }
        Ok(known)
    })
}

/// [`apply`] on a client the caller holds.
pub async fn apply_with(
    client: &mut tokio_postgres::Client,
    migrations: &[Migration],
) -> Result<MigrationReport, MigrateError> {
    check_list(migrations)?;
    let known = migrations.last().map_or(0, |m| m.version);
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    let recorded = recorded(&tx).await?;
    validate(&recorded, migrations)?;
    let mut applied = Vec::new();
    for m in &migrations[recorded.len()..] {
        tx.batch_execute(m.sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, checksum, applied_by) \
             VALUES ($1, $2, $3, $4)",
            &[
                &m.version,
                &m.name,
                &m.checksum(),
                &env!("CARGO_PKG_VERSION"),
            ],
        )
        .await?;
        applied.push(m.version);
    }
    tx.commit().await?;
    if !applied.is_empty() {
        tracing::info!(
            ?applied,
            schema_version = known,
            "applied schema migrations"
        );
    }
    Ok(MigrationReport {
        applied,
        schema_version: known,
    })
}

/// One row of `schema_migrations`.
struct Recorded {
    version: i32,
    checksum: String,
    applied_by: String,
}

/// `schema_migrations`, oldest first; empty when the table does not exist.
async fn recorded(tx: &tokio_postgres::Transaction<'_>) -> Result<Vec<Recorded>, MigrateError> {
    let exists: bool = tx
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    Ok(tx
        .query(
            "SELECT version, checksum, applied_by FROM schema_migrations ORDER BY version",
            &[],
        )
        .await?
        .into_iter()
        .map(|r| Recorded {
            version: r.get(0),
            checksum: r.get(1),
            applied_by: r.get(2),
        })
        .collect())
}

/// Refuses what the database records if it is newer than `migrations`, has a gap, or was
/// applied from other SQL.
fn validate(recorded: &[Recorded], migrations: &[Migration]) -> Result<(), MigrateError> {
    let known = migrations.last().map_or(0, |m| m.version);
    if let Some(newest) = recorded.last()
        && newest.version > known
    {
        return Err(MigrateError::SchemaNewer {
            database: newest.version,
            known,
            ours: env!("CARGO_PKG_VERSION"),
            applied_by: newest.applied_by.clone(),
        });
    }
    for (i, r) in recorded.iter().enumerate() {
        let expected_version = i32::try_from(i).unwrap_or(i32::MAX).saturating_add(1);
        if r.version != expected_version {
            return Err(MigrateError::Missing {
                version: expected_version,
            });
        }
        let m = &migrations[i];
        let expected = m.checksum();
        if r.checksum != expected {
            return Err(MigrateError::ChecksumChanged {
                version: m.version,
                name: m.name,
                recorded: r.checksum.clone(),
                expected,
            });
        }
    }
    Ok(())
}

/// Versions 1, 2, 3... in order, each with a name and SQL.
pub fn check_list(migrations: &[Migration]) -> Result<(), MigrateError> {
    for (i, m) in migrations.iter().enumerate() {
        if i64::from(m.version) != i as i64 + 1 {
            return Err(MigrateError::BadList {
                problem: "versions must be 1, 2, 3... in order, without gaps",
            });
        }
        if m.name.is_empty() || m.sql.trim().is_empty() {
            return Err(MigrateError::BadList {
                problem: "every migration needs a name and SQL",
            });
        }
    }
    Ok(())
}
