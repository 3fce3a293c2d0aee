//! Admin credentials: who may change the registry, acknowledge or dismiss an alert, and the
//! actor each change is audited under.
//!
//! Two kinds of credential, both presented as `authorization: Bearer <token>`:
//! - **named tokens** (`--admin-tokens FILE`, actor → token): the actor in the audit log is
//!   the token's name, so an auditor can tell who did it from the credential, not from what
//!   the caller typed. A request's `by` must be empty or that same name;
//! - **a shared token** (`--admin-token`): anyone holding it is an admin, and the audit log
//!   records the person the request names in `by`, which is therefore required.
//!
//! Without either, write RPCs are open (a laptop or a test); the collector warns at start.

use std::collections::HashMap;

use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::ingest::auth;

/// The collector's admin credentials.
#[derive(Clone, Default)]
pub struct AdminCredentials {
    shared: Option<String>,
    named: HashMap<String, String>,
}

impl std::fmt::Debug for AdminCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut actors: Vec<_> = self.named.keys().collect();
        actors.sort();
        f.debug_struct("AdminCredentials")
            .field("shared", &self.shared.as_ref().map(|_| "<set>"))
            .field("named_actors", &actors)
            .finish()
    }
}

/// How a request proved it may write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// The collector requires no admin credential.
    Open,
    /// The shared admin token.
    Shared,
    /// A named admin token: the actor it belongs to.
    Named(String),
}

impl AdminCredentials {
    /// Credentials from the shared token (empty = none) and the named tokens (actor → token).
    pub fn new(shared: Option<String>, named: HashMap<String, String>) -> AdminCredentials {
        AdminCredentials {
            shared: shared.filter(|t| !t.is_empty()),
            named,
        }
    }

    /// Whether write RPCs are open to anyone who can reach the port.
    pub fn is_open(&self) -> bool {
        self.shared.is_none() && self.named.is_empty()
    }

    /// Checks the bearer token of a write request.
    pub fn authorize(&self, md: &MetadataMap) -> Result<Credential, Status> {
        if self.is_open() {
            return Ok(Credential::Open);
        }
        let Some(presented) = auth::bearer(md) else {
            return Err(Status::unauthenticated(
                "this collector requires an admin token (--admin-token / FLOPMETER_ADMIN_TOKEN)",
            ));
        };
        // Every candidate is compared, so the time taken does not say which one matched.
        let mut found = None;
        for (actor, token) in &self.named {
            if auth::same_token(presented, token) {
                found = Some(Credential::Named(actor.clone()));
            }
        }
        if let Some(shared) = &self.shared
            && auth::same_token(presented, shared)
            && found.is_none()
        {
            found = Some(Credential::Shared);
        }
        found.ok_or_else(|| Status::unauthenticated("wrong admin token"))
    }

    /// Authorizes a write request and names its actor for the audit log.
    ///
    /// `declared` is the request's `by`. Under a named token it must be empty or match;
    /// under the shared token it is required, since the token alone names nobody. An open
    /// collector records `declared`, or `fallback` when nobody was named.
    pub fn actor(
        &self,
        md: &MetadataMap,
        declared: &str,
        fallback: &str,
    ) -> Result<String, Status> {
        let declared = declared.trim();
        let credential = self.authorize(md)?;
        super::text::check_name("by", declared)?;
        match credential {
            Credential::Named(actor) if declared.is_empty() || declared == actor => Ok(actor),
            Credential::Named(actor) => Err(Status::permission_denied(format!(
                "this admin token belongs to {actor:?}, not {declared:?}: \
                 leave --by out or use your own token"
            ))),
            Credential::Shared if declared.is_empty() => Err(Status::invalid_argument(
                "name the person making this change (--by NAME): the shared admin token \
                 does not say who holds it, and the audit log must",
            )),
            Credential::Shared => Ok(declared.to_string()),
            Credential::Open if declared.is_empty() => Ok(fallback.to_string()),
            Credential::Open => Ok(declared.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(token: Option<&str>) -> MetadataMap {
        let mut m = MetadataMap::new();
        if let Some(t) = token {
            m.insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        m
    }

    fn creds() -> AdminCredentials {
        AdminCredentials::new(
            Some("shared-secret".into()),
            [
                ("alice".to_string(), "alice-secret".to_string()),
                ("bob".to_string(), "bob-secret".to_string()),
            ]
            .into(),
        )
    }

    #[test]
    fn named_token_names_the_actor_whatever_by_says_or_refuses() {
        let c = creds();
        assert_eq!(
            c.actor(&md(Some("alice-secret")), "", "x").unwrap(),
            "alice"
        );
        assert_eq!(
            c.actor(&md(Some("alice-secret")), " alice ", "x").unwrap(),
            "alice"
        );
        let e = c.actor(&md(Some("alice-secret")), "bob", "x").unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("belongs to \"alice\""), "{e}");
    }

    #[test]
    fn shared_token_requires_by() {
        let c = creds();
        assert_eq!(
            c.actor(&md(Some("shared-secret")), "carol", "x").unwrap(),
            "carol"
        );
        let e = c.actor(&md(Some("shared-secret")), "  ", "x").unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("--by"), "{e}");
    }

    #[test]
    fn wrong_or_missing_token_is_unauthenticated() {
        let c = creds();
        for m in [md(None), md(Some("nope")), md(Some("alice-secre"))] {
            let e = c.actor(&m, "alice", "x").unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated);
        }
        // Named tokens alone (no shared token) still refuse strangers.
        let only_named = AdminCredentials::new(None, [("a".into(), "t".into())].into());
        assert!(!only_named.is_open());
        assert_eq!(
            only_named
                .authorize(&md(Some("shared-secret")))
                .unwrap_err()
                .code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn open_collector_records_by_or_the_fallback() {
        let c = AdminCredentials::new(Some(String::new()), HashMap::new());
        assert!(c.is_open());
        assert_eq!(c.actor(&md(None), "", "admin").unwrap(), "admin");
        assert_eq!(c.actor(&md(Some("x")), "dave", "admin").unwrap(), "dave");
    }

    #[test]
    fn debug_never_prints_tokens() {
        let s = format!("{:?}", creds());
        assert!(!s.contains("secret"), "{s}");
        assert!(s.contains("alice"), "{s}");
    }
}
