//! A development CA and the certificates of a local deployment: the collector's (server),
//! one per agent (client, CN = agent id) and one for the CLI. For `flopmeter certs dev` and
//! for tests, which also need certificates that are expired or from another CA. Production
//! certificates come from the cluster's issuer (cert-manager; see docs/tls.md).
//!
//! Keys are ECDSA P-256 (rcgen with ring).

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::{TlsError, unix_now};

const DAY: i64 = flopmeter_core::utc::SECONDS_PER_DAY as i64;

/// Started an hour ago, so a certificate made now is valid on a machine whose clock is a
/// little behind.
const BACKDATE: i64 = flopmeter_core::utc::SECONDS_PER_HOUR as i64;

fn at(unix_s: i64) -> Result<time::OffsetDateTime, TlsError> {
    time::OffsetDateTime::from_unix_timestamp(unix_s).map_err(TlsError::DateOutOfRange)
}

/// A certificate and its key, PEM.
#[derive(Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").finish_non_exhaustive()
    }
}

/// What a leaf certificate is for and who it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafSpec {
    /// Subject common name.
    pub common_name: String,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// IP subject alternative names.
    pub ips: Vec<IpAddr>,
    /// May serve TLS (serverAuth).
    pub server: bool,
    /// May authenticate as a client (clientAuth).
    pub client: bool,
    /// Start of validity, Unix seconds (default: an hour ago).
    pub not_before: Option<i64>,
    /// End of validity, Unix seconds (default: `days` from now).
    pub not_after: Option<i64>,
    /// Days of validity when `not_after` is not given.
    pub days: u32,
    /// The role, as the subject's organizational unit ([`crate::AGENT_ROLE`],
    /// [`crate::ADMIN_ROLE`]): what the collector lets the certificate do.
    pub role: Option<&'static str>,
}

impl LeafSpec {
    /// The collector's server certificate: CN = the first name; SANs = `localhost`,
    /// `127.0.0.1`, `::1` and `names`.
    pub fn collector(names: &[String]) -> LeafSpec {
        let mut dns_names = vec!["localhost".to_string()];
        let mut ips: Vec<IpAddr> =
            vec![[127, 0, 0, 1].into(), std::net::Ipv6Addr::LOCALHOST.into()];
        for n in names {
            match n.parse::<IpAddr>() {
                Ok(ip) if !ips.contains(&ip) => ips.push(ip),
                Ok(_) => {}
                Err(_) if !dns_names.contains(n) => dns_names.push(n.clone()),
                Err(_) => {}
            }
        }
        LeafSpec {
            common_name: names
                .first()
                .cloned()
                .unwrap_or_else(|| "flopmeter-collector".into()),
            dns_names,
            ips,
            server: true,
            client: false,
            not_before: None,
            not_after: None,
            days: 365,
            role: None,
        }
    }

    /// An agent's client certificate: CN = DNS SAN = the agent id (what the collector
    /// checks the Hello's agent id against in mutual TLS), OU = [`crate::AGENT_ROLE`] (what
    /// lets it send records).
    pub fn agent(agent_id: &str) -> LeafSpec {
        LeafSpec {
            common_name: agent_id.to_string(),
            dns_names: vec![agent_id.to_string()],
            ips: Vec::new(),
            server: false,
            client: true,
            not_before: None,
            not_after: None,
            days: 365,
            role: Some(crate::AGENT_ROLE),
        }
    }

    /// The CLI's client certificate (CN `flopmeter-admin`, OU [`crate::ADMIN_ROLE`]). It
    /// authenticates the TLS connection only: ingest refuses it, and admin writes still need
    /// the admin token.
    pub fn admin() -> LeafSpec {
        LeafSpec {
            common_name: "flopmeter-admin".into(),
            dns_names: Vec::new(),
            role: Some(crate::ADMIN_ROLE),
            ..LeafSpec::agent("flopmeter-admin")
        }
    }

    /// This certificate, valid for `days` from now.
    pub fn days(self, days: u32) -> LeafSpec {
        LeafSpec { days, ..self }
    }

    /// This certificate, already expired: valid from `days_ago + 1` days ago until
    /// `days_ago` days ago (tests).
    pub fn expired(self, days_ago: u32) -> LeafSpec {
        let now = unix_now();
        LeafSpec {
            not_before: Some(now - (i64::from(days_ago) + 1) * DAY),
            not_after: Some(now - i64::from(days_ago) * DAY),
            ..self
        }
    }
}

/// A development certificate authority.
pub struct DevCa {
    /// Its certificate, PEM (what clients and servers trust: `--tls-ca`, `--tls-client-ca`).
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").finish_non_exhaustive()
    }
}

impl DevCa {
    /// A new CA valid for `days`. Its name carries a tag from its key, so two development
    /// CAs are told apart in messages and never share a subject.
    pub fn generate(days: u32) -> Result<DevCa, TlsError> {
        let key = KeyPair::generate()?;
        let tag: String = key
            .public_key_raw()
            .iter()
            .rev()
            .take(4)
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "flopmeter (development)");
        dn.push(
            DnType::CommonName,
            format!("flopmeter development CA {tag}"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = unix_now();
        params.not_before = at(now - BACKDATE)?;
        params.not_after = at(now + i64::from(days.max(1)) * DAY)?;
        let cert = params.self_signed(&key)?;
        Ok(DevCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A CA from its certificate and key (PEM), e.g. the `ca.pem` and `ca-key.pem` that
    /// `flopmeter certs dev` wrote.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<DevCa, TlsError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        let key_pem = key_pem.to_string();
        Ok(DevCa {
            cert_pem: cert_pem.to_string(),
            key_pem,
            issuer,
        })
    }

    /// Issues a leaf certificate with a new key.
    pub fn issue(&self, spec: &LeafSpec) -> Result<Issued, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, spec.common_name.clone());
        if let Some(role) = spec.role {
            dn.push(DnType::OrganizationalUnitName, role);
        }
        params.distinguished_name = dn;
        for d in &spec.dns_names {
            params
                .subject_alt_names
                .push(SanType::DnsName(d.clone().try_into()?));
        }
        for ip in &spec.ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if spec.server {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if spec.client {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        params.use_authority_key_identifier_extension = true;
        let now = unix_now();
        params.not_before = at(spec.not_before.unwrap_or(now - BACKDATE))?;
        params.not_after = at(spec
            .not_after
            .unwrap_or(now + i64::from(spec.days.max(1)) * DAY))?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CertInfo;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;

    fn info(pem: &str) -> CertInfo {
        CertInfo::parse(&CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn collector_names_and_a_reloaded_ca_signs_like_the_original() {
        let ca = DevCa::generate(10).unwrap();
        let c = ca
            .issue(&LeafSpec::collector(&[
                "collector.flopmeter.svc".into(),
                "10.0.0.7".into(),
            ]))
            .unwrap();
        let i = info(&c.cert_pem);
        assert_eq!(i.common_name.as_deref(), Some("collector.flopmeter.svc"));
        assert_eq!(i.dns_names, vec!["localhost", "collector.flopmeter.svc"]);

        let again = DevCa::load(&ca.cert_pem, &ca.key_pem).unwrap();
        let late = again.issue(&LeafSpec::agent("node-z").expired(2)).unwrap();
        let i = info(&late.cert_pem);
        assert!(i.not_after < unix_now() - DAY);
    }
}
