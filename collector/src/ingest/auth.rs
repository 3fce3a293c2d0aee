//! Agent authentication: a token per agent id, presented as `authorization: Bearer <token>`.

use std::collections::HashMap;

use flopmeter_core::agent_id::AgentId;
use flopmeter_tls::rustls::pki_types::CertificateDer;
use tonic::metadata::MetadataMap;

use crate::metrics::Refusal;

/// The bearer token of a request, if any.
pub fn bearer(md: &MetadataMap) -> Option<&str> {
    md.get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Compares without an early exit, so the time taken does not reveal how much of a guessed
/// token was right.
pub fn same_token(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks an agent against the tokens table (`None` = tokens not required).
pub fn check_agent(
    tokens: Option<&HashMap<String, String>>,
    agent_id: &str,
    presented: Option<&str>,
) -> Result<(), Refusal> {
    let Some(tokens) = tokens else {
        return Ok(());
    };
    let Some(expected) = tokens.get(agent_id) else {
        return Err(Refusal::UnknownAgent);
    };
    match presented {
        Some(p) if same_token(p, expected) => Ok(()),
        // Every token is compared, so the time taken does not tell which agent owns it.
        Some(p) if tokens.values().fold(false, |hit, t| hit | same_token(p, t)) => {
            Err(Refusal::ForgedIdentity)
        }
        _ => Err(Refusal::BadToken),
    }
}

/// Who a client certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its CN and DNS SANs.
    pub names: Vec<String>,
    /// Its roles (subject OUs).
    pub roles: Vec<String>,
}

/// The client certificate's names and roles (`None` without a certificate, or when the leaf
/// does not parse).
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<Peer> {
    let leaf = certs?.first()?;
    flopmeter_tls::CertInfo::parse(leaf).ok().map(|info| Peer {
        names: info.names(),
        roles: info.organizational_units,
    })
}

/// In mutual TLS (`required`), the agent is who its certificate says: the certificate must
/// carry the agent role ([`flopmeter_tls::AGENT_ROLE`], so the CLI's admin certificate cannot
/// stream records), and the Hello's agent id must be its CN or one of its DNS names. A
/// certificate vouches for one name, so an agent cannot report under another agent's id
/// (and sequence numbers).
pub fn check_identity(
    required: bool,
    peer: Option<&Peer>,
    agent_id: &AgentId,
) -> Result<(), Refusal> {
    if !required {
        return Ok(());
    }
    match peer {
        None => Err(Refusal::NoClientCertificate),
        Some(p) if !p.roles.iter().any(|r| r == flopmeter_tls::AGENT_ROLE) => {
            Err(Refusal::CertificateRole)
        }
        Some(p) if p.names.iter().any(|n| n == agent_id.as_str()) => Ok(()),
        Some(_) => Err(Refusal::CertificateMismatch),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> AgentId {
        AgentId::parse(s).unwrap()
    }

    #[test]
    fn certificate_identity() {
        let peer = Peer {
            names: vec!["node-a".to_string(), "node-a.gpu.internal".to_string()],
            roles: vec![flopmeter_tls::AGENT_ROLE.to_string()],
        };
        assert_eq!(check_identity(false, None, &id("anything")), Ok(()));
        assert_eq!(check_identity(true, Some(&peer), &id("node-a")), Ok(()));
        assert_eq!(
            check_identity(true, Some(&peer), &id("node-a.gpu.internal")),
            Ok(())
        );
        assert_eq!(
            check_identity(true, Some(&peer), &id("node-b")),
            Err(Refusal::CertificateMismatch)
        );
        // The right name without the agent role (the CLI's certificate, or one from before
        // roles): refused.
        for roles in [vec![], vec![flopmeter_tls::ADMIN_ROLE.to_string()]] {
            let p = Peer {
                roles,
                ..peer.clone()
            };
            assert_eq!(
                check_identity(true, Some(&p), &id("node-a")),
                Err(Refusal::CertificateRole)
            );
        }
        assert_eq!(
            check_identity(true, None, &id("node-a")),
            Err(Refusal::NoClientCertificate)
        );
    }

    #[test]
    fn names_come_from_the_leaf() {
        use flopmeter_tls::dev::{DevCa, LeafSpec};
        use flopmeter_tls::rustls::pki_types::pem::PemObject as _;
        let ca = DevCa::generate(1).unwrap();
        let leaf = ca.issue(&LeafSpec::agent("node-a")).unwrap();
        let der = CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap();
        assert_eq!(
            peer_identity(Some(&[der])),
            Some(Peer {
                names: vec!["node-a".to_string()],
                roles: vec![flopmeter_tls::AGENT_ROLE.to_string()],
            })
        );
        let admin = ca.issue(&LeafSpec::admin()).unwrap();
        let der = CertificateDer::from_pem_slice(admin.cert_pem.as_bytes()).unwrap();
        let p = peer_identity(Some(&[der])).unwrap();
        assert_eq!(p.roles, vec![flopmeter_tls::ADMIN_ROLE.to_string()]);
        assert_eq!(
            check_identity(true, Some(&p), &id("flopmeter-admin")),
            Err(Refusal::CertificateRole)
        );
        assert_eq!(peer_identity(None), None);
        assert_eq!(peer_identity(Some(&[])), None);
    }

    #[test]
    fn tokens() {
        let t: HashMap<String, String> = [
            ("a".to_string(), "s3cret".to_string()),
            ("c".to_string(), "other".to_string()),
        ]
        .into();
        assert_eq!(check_agent(None, "x", None), Ok(()));
        assert_eq!(check_agent(Some(&t), "a", Some("s3cret")), Ok(()));
        assert_eq!(
            check_agent(Some(&t), "a", Some("s3cres")),
            Err(Refusal::BadToken)
        );
        assert_eq!(check_agent(Some(&t), "a", None), Err(Refusal::BadToken));
        assert_eq!(
            check_agent(Some(&t), "b", Some("s3cret")),
            Err(Refusal::UnknownAgent)
        );
        assert_eq!(
            check_agent(Some(&t), "a", Some("other")),
            Err(Refusal::ForgedIdentity)
        );
    }
}
