//! Whether this replica runs the compliance engine: always, on an embedded store (one
//! process per data directory), or while it holds the engine lease in PostgreSQL
//! ([`flopmeter_pg::lease`]).
//!
//! The engine loop, the outbox loop, person actions and the model-level metrics ask
//! [`Leadership::leads`] before they act. That check only saves work that would be refused:
//! what makes a former leader harmless is the store, which fences every leader-only write by
//! the lease's epoch (`ComplianceStoreError::NotLeader`).

use flopmeter_pg::{Database, Lease};
use tokio::sync::watch;

/// This replica's standing for the compliance engine. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Leadership(Kind);

#[derive(Debug, Clone)]
enum Kind {
    /// The only collector of its store: always the leader.
    Sole,
    /// One of several replicas: the leader while it holds the lease.
    Lease {
        lease: watch::Receiver<Option<Lease>>,
        db: Database,
        name: String,
    },
}

impl Leadership {
    /// The only collector of an embedded store.
    pub fn sole() -> Leadership {
        Leadership(Kind::Sole)
    }

    /// A replica contending for lease `name` in `db`; `lease` is its contender's watch.
    pub fn lease(
        lease: watch::Receiver<Option<Lease>>,
        db: Database,
        name: impl Into<String>,
    ) -> Leadership {
        Leadership(Kind::Lease {
            lease,
            db,
            name: name.into(),
        })
    }

    /// Whether this replica is the only engine of its store (no lease at all).
    pub fn is_sole(&self) -> bool {
        matches!(self.0, Kind::Sole)
    }

    /// Whether this replica may act as the leader now: it holds the lease and, by its own
    /// clock, less than the ttl passed since its last renewal.
    pub fn leads(&self) -> bool {
        match &self.0 {
            Kind::Sole => true,
            Kind::Lease { lease, .. } => lease.borrow().as_ref().is_some_and(Lease::is_valid),
        }
    }

    /// The lease's epoch while this replica holds it (the fencing token its writes carry).
    pub fn epoch(&self) -> Option<i64> {
        match &self.0 {
            Kind::Sole => None,
            Kind::Lease { lease, .. } => lease.borrow().as_ref().map(Lease::epoch),
        }
    }

    /// Waits until the lease is gained or lost (never returns on a sole collector).
    pub async fn changed(&mut self) {
        match &mut self.0 {
            Kind::Sole => std::future::pending().await,
            Kind::Lease { lease, .. } => {
                if lease.changed().await.is_err() {
                    // The contender stopped (shutdown): nothing will change any more.
                    std::future::pending::<()>().await;
                }
            }
        }
    }

    /// Who holds the lease now, by the database (blocking; `None`: nobody, or it could not
    /// be read). On a sole collector, `None`.
    pub fn holder(&self) -> Option<String> {
        let Kind::Lease { lease, db, name } = &self.0 else {
            return None;
        };
        if let Some(l) = lease.borrow().as_ref().filter(|l| l.is_valid()) {
            return Some(l.holder().to_string());
        }
        let name = name.clone();
        let state = db.run(move |conn| async move {
            flopmeter_pg::lease::current(&conn, &name)
                .await
                .map_err(LeaseRead)
        });
        match state {
            Ok(Some((_, holder, expires_at))) if expires_at > std::time::SystemTime::now() => {
                holder
            }
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(error = %e.0, "cannot read the engine lease's holder");
                None
            }
        }
    }
}

/// A failed read of the lease (only logged).
struct LeaseRead(flopmeter_pg::LeaseError);

impl From<flopmeter_pg::PgError> for LeaseRead {
    fn from(e: flopmeter_pg::PgError) -> Self {
        LeaseRead(e.into())
    }
}

/// What a person acting on a replica that is not the leader is told: who the leader is and
/// that a retry may reach it.
pub fn not_leader_message(holder: Option<&str>) -> String {
    let leader = match holder {
        Some(h) => format!("the leader is {h}"),
        None => "no replica holds the lease right now; one takes it within the lease's ttl \
                 and poll interval"
            .to_string(),
    };
    format!(
        "this collector replica is not the compliance leader ({leader}); retry: only the \
         leader records acknowledgements and dismissals, and behind a load balancer or a \
         Kubernetes Service a new connection may reach it"
    )
}
