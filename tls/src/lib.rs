//! flopmeter-tls: the TLS material of a flopmeter deployment, read once at start and checked
//! so that a mistake stops the process with a message that says what to do.
//!
//! - [`Identity`]: a certificate chain and its private key (the collector's server identity,
//!   an agent's or the CLI's client identity): PEM files read, the key matched to the
//!   certificate, the validity period checked against the clock;
//! - [`TrustRoots`]: a CA bundle (`--tls-ca`, `--tls-client-ca`);
//! - [`CertInfo`]: what flopmeter reads from a certificate: its common name, DNS names and
//!   validity. In mutual TLS the agent identity is a client certificate's CN or DNS SAN;
//! - [`ClientTls`]: the client side (agent, CLI) as tonic settings;
//! - [`diagnose`]: a failed connection's error chain in plain words (expired certificate,
//!   unknown issuer, plaintext on one side, ...), with a bounded reason label for metrics;
//! - [`dev`]: a development CA and certificates (`flopmeter certs dev`, tests).
//!
//! Everything is rustls with the ring provider: no OpenSSL.

pub mod dev;
mod diagnose;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub use diagnose::{Diagnosis, diagnose};
pub use rustls;
use x509_parser::error::X509Error;

/// What to do about an expired certificate.
const RENEW: &str = "renew it (cert-manager renews certificates before they expire; for local \
                     use, `flopmeter certs dev --out DIR --force` writes new ones)";

/// Errors reading or checking TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read the {what} {path}: {source}")]
    Read {
        /// What the file is for, e.g. "collector certificate (--tls-cert)".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file holds no PEM certificate.
    #[error(
        "the {what} {path} holds no PEM certificate (expected a -----BEGIN CERTIFICATE----- block)"
    )]
    NoCertificate {
        /// What the file is for.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// The file holds no PEM private key.
    #[error(
        "the {what} {path} holds no PEM private key (expected -----BEGIN PRIVATE KEY-----, \
         RSA PRIVATE KEY or EC PRIVATE KEY)"
    )]
    NoKey {
        /// What the file is for.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// A PEM block is not an X.509 certificate flopmeter can read.
    #[error("the {what} {path} is not a valid X.509 certificate: {source}")]
    BadCertificate {
        /// What the file is for.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        #[source]
        source: CertParseError,
    },
    /// The key is not the certificate's.
    #[error(
        "the private key {key} does not belong to the certificate {cert} ({}): give the key \
         that was generated with that certificate",
        source.as_ref().map_or_else(|| "their public keys differ".to_string(), ToString::to_string)
    )]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said; `None` when the public keys were compared here and differ.
        #[source]
        source: Option<rustls::Error>,
    },
    /// The certificate's validity ended.
    #[error("the {what} {path} expired on {not_after}: {remedy}")]
    Expired {
        /// What the file is for.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Its notAfter, UTC.
        not_after: String,
        /// What to do.
        remedy: &'static str,
    },
    /// The certificate's validity has not started.
    #[error(
        "the {what} {path} is not valid before {not_before}: is this machine's clock right? \
         (now: {now})"
    )]
    NotYetValid {
        /// What the file is for.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Its notBefore, UTC.
        not_before: String,
        /// The clock's now, UTC.
        now: String,
    },
    /// Options that do not fit together.
    #[error("{0}")]
    Options(String),
    /// A development certificate's validity date is outside what X.509 can carry.
    #[error("certificate date out of range: {0}")]
    DateOutOfRange(#[source] time::error::ComponentRange),
    /// The client CA bundle cannot verify clients (`--tls-client-ca`).
    #[error("--tls-client-ca {path}: {source}")]
    ClientCa {
        /// The bundle.
        path: PathBuf,
        /// What rustls said.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    /// rustls refused the settings.
    #[error("TLS settings: {0}")]
    Rustls(#[from] rustls::Error),
    /// Generating a development certificate failed.
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// The clock, Unix seconds. Only the edges call it; checks take `now` as a parameter.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Unix seconds as `2026-01-02 03:04 UTC` (core's one format for people).
pub fn utc(unix_s: i64) -> String {
    flopmeter_core::utc::format_utc_minute(
        unix_s.saturating_mul(flopmeter_core::utc::MS_PER_SECOND),
    )
}

/// The role (subject OU) of an agent's client certificate: in mutual TLS, ingest accepts
/// only certificates that carry it.
pub const AGENT_ROLE: &str = "flopmeter-agent";

/// The role (subject OU) of the CLI's client certificate: it may open a TLS connection for
/// the admin and read APIs, never stream records.
pub const ADMIN_ROLE: &str = "flopmeter-admin";

/// Why a certificate could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CertParseError {
    /// The PEM framing is broken.
    #[error("{0}")]
    Pem(#[from] rustls::pki_types::pem::Error),
    /// The DER is not an X.509 certificate.
    #[error("{0}")]
    X509(#[from] X509Error),
}

/// What flopmeter reads from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject's common name, if any.
    pub common_name: Option<String>,
    /// The subject's organizational units: a client certificate's role
    /// ([`AGENT_ROLE`], [`ADMIN_ROLE`]).
    pub organizational_units: Vec<String>,
    /// The DNS names of the subject alternative name extension.
    pub dns_names: Vec<String>,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
}

impl CertInfo {
    /// Parses a DER certificate.
    pub fn parse(der: &[u8]) -> Result<CertInfo, CertParseError> {
        use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};
        let (_, cert) = X509Certificate::from_der(der).map_err(X509Error::from)?;
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string);
        let organizational_units = cert
            .subject()
            .iter_organizational_unit()
            .filter_map(|ou| ou.as_str().ok())
            .map(str::to_string)
            .collect();
        let mut dns_names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                if let GeneralName::DNSName(d) = n {
                    dns_names.push((*d).to_string());
                }
            }
        }
        let v = cert.validity();
        Ok(CertInfo {
            common_name,
            organizational_units,
            dns_names,
            not_before: v.not_before.timestamp(),
            not_after: v.not_after.timestamp(),
        })
    }

    /// The names that identify the subject: the CN first, then the DNS SANs.
    pub fn names(&self) -> Vec<String> {
        let mut out: Vec<String> = self.common_name.iter().cloned().collect();
        for d in &self.dns_names {
            if !out.contains(d) {
                out.push(d.clone());
            }
        }
        out
    }

    /// The name to show in messages.
    pub fn display_name(&self) -> String {
        self.common_name
            .clone()
            .or_else(|| self.dns_names.first().cloned())
            .unwrap_or_else(|| "(no name)".into())
    }

    /// Checks the validity period at `now` (Unix seconds).
    pub fn check_valid(&self, what: &'static str, path: &Path, now: i64) -> Result<(), TlsError> {
        if now > self.not_after {
            return Err(TlsError::Expired {
                what,
                path: path.to_path_buf(),
                not_after: utc(self.not_after),
                remedy: RENEW,
            });
        }
        if now < self.not_before {
            return Err(TlsError::NotYetValid {
                what,
                path: path.to_path_buf(),
                not_before: utc(self.not_before),
                now: utc(now),
            });
        }
        Ok(())
    }
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// The certificates of a PEM file, each parsed and checked for validity at `now`.
fn certs_of(
    pem: &[u8],
    path: &Path,
    what: &'static str,
    now: i64,
) -> Result<(Vec<CertificateDer<'static>>, Vec<CertInfo>), TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate {
            what,
            path: path.to_path_buf(),
            source: CertParseError::Pem(e),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_path_buf(),
        });
    }
    let mut infos = Vec::with_capacity(certs.len());
    for c in &certs {
        let info = CertInfo::parse(c).map_err(|source| TlsError::BadCertificate {
            what,
            path: path.to_path_buf(),
            source,
        })?;
        info.check_valid(what, path, now)?;
        infos.push(info);
    }
    Ok((certs, infos))
}

/// The ring provider, explicitly: the process default is not relied upon, so no code path
/// can pick another backend.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and its private key, checked.
pub struct Identity {
    /// The certificate file.
    pub cert_path: PathBuf,
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
    /// The certificate file as read (PEM).
    pub cert_pem: Vec<u8>,
    /// The key file as read (PEM).
    pub key_pem: Vec<u8>,
    /// The leaf's names and dates.
    pub leaf: CertInfo,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("Identity")
            .field("cert_path", &self.cert_path)
            .field("leaf", &self.leaf)
            .finish_non_exhaustive()
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            cert_path: self.cert_path.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
            leaf: self.leaf.clone(),
        }
    }
}

impl Identity {
    /// Reads `cert` (PEM chain, leaf first) and `key` (PEM), checks that the key is the
    /// leaf's and that every certificate is valid at `now`. `what` names the certificate in
    /// messages, e.g. "collector certificate (--tls-cert)".
    pub fn load(
        cert: &Path,
        key: &Path,
        what: &'static str,
        now: i64,
    ) -> Result<Identity, TlsError> {
        let cert_pem = read(cert, what)?;
        let key_pem = read(key, "private key (--tls-key)")?;
        let (chain, infos) = certs_of(&cert_pem, cert, what, now)?;
        let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::NoKey {
            what: "private key (--tls-key)",
            path: key.to_path_buf(),
        })?;
        let mismatch = |source: Option<rustls::Error>| TlsError::KeyMismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            source,
        };
        rustls::sign::CertifiedKey::from_der(chain.clone(), key_der.clone_key(), &provider())
            .map_err(|e| mismatch(Some(e)))?;
        // rustls cannot compare an ECDSA key with the certificate under ring (it reports the
        // consistency as unknown): compare the public keys here when rcgen can read the key.
        if let Ok(pair) = rcgen::KeyPair::try_from(&key_der)
            && let Some(spki) = spki_of(&chain[0])
            && rcgen::PublicKeyData::subject_public_key_info(&pair) != spki
        {
            return Err(mismatch(None));
        }
        Ok(Identity {
            cert_path: cert.to_path_buf(),
            chain,
            key: key_der,
            cert_pem,
            key_pem,
            leaf: infos
                .into_iter()
                .next()
                .expect("certs_of returns at least one"),
        })
    }
}

/// A certificate's SubjectPublicKeyInfo, DER.
fn spki_of(der: &[u8]) -> Option<Vec<u8>> {
    use x509_parser::prelude::{FromDer as _, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(cert.public_key().raw.to_vec())
}

/// A CA bundle.
#[derive(Debug, Clone)]
pub struct TrustRoots {
    /// The file as read (PEM).
    pub pem: Vec<u8>,
    /// Its certificates.
    pub certs: Vec<CertificateDer<'static>>,
}

impl TrustRoots {
    /// Reads a PEM bundle; every certificate must be valid at `now` (an expired CA would
    /// fail every handshake later, with a vaguer message).
    pub fn load(path: &Path, what: &'static str, now: i64) -> Result<TrustRoots, TlsError> {
        let pem = read(path, what)?;
        let (certs, _) = certs_of(&pem, path, what, now)?;
        Ok(TrustRoots { pem, certs })
    }

    /// As a rustls root store.
    pub fn store(&self) -> Result<rustls::RootCertStore, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for c in &self.certs {
            roots.add(c.clone())?;
        }
        Ok(roots)
    }
}

/// The client side's TLS flags (agent, CLI): one group, defined in `flopmeter-args`.
pub use flopmeter_args::TlsClientArgs;

/// The client's TLS settings for one collector URL, checked at start.
#[derive(Debug, Clone)]
pub struct ClientTls {
    config: Option<tonic::transport::ClientTlsConfig>,
    identity: Option<CertInfo>,
}

impl ClientTls {
    /// Plaintext (`http://`).
    pub fn plaintext() -> ClientTls {
        ClientTls {
            config: None,
            identity: None,
        }
    }

    /// Checks the files against the URL and reads them: `https://` uses TLS (with the
    /// system's roots when no CA is given); `http://` with TLS files is a mistake worth
    /// stopping for. A client certificate must be valid at `now`.
    pub fn load(url: &str, files: &TlsClientArgs, now: i64) -> Result<ClientTls, TlsError> {
        let https = url.trim().to_ascii_lowercase().starts_with("https://");
        if !https {
            if files.any() {
                return Err(TlsError::Options(format!(
                    "--tls-ca, --tls-cert, --tls-key and --tls-server-name need an https:// \
                     collector URL, got {url:?}: use https://"
                )));
            }
            return Ok(ClientTls::plaintext());
        }
        use tonic::transport::{Certificate, ClientTlsConfig, Identity as TonicIdentity};
        let mut config = ClientTlsConfig::new();
        config = match &files.tls_ca {
            Some(ca) => {
                let roots = TrustRoots::load(ca, "CA certificate (--tls-ca)", now)?;
                config.ca_certificate(Certificate::from_pem(roots.pem))
            }
            None => config.with_native_roots(),
        };
        let identity = match (&files.tls_cert, &files.tls_key) {
            (Some(cert), Some(key)) => {
                let id = Identity::load(cert, key, "client certificate (--tls-cert)", now)?;
                config = config.identity(TonicIdentity::from_pem(&id.cert_pem, &id.key_pem));
                Some(id.leaf)
            }
            (None, None) => None,
            _ => {
                return Err(TlsError::Options(
                    "--tls-cert and --tls-key go together: give both or neither".into(),
                ));
            }
        };
        if let Some(name) = &files.tls_server_name {
            config = config.domain_name(name.clone());
        }
        Ok(ClientTls {
            config: Some(config),
            identity,
        })
    }

    /// Whether this is TLS.
    pub fn is_tls(&self) -> bool {
        self.config.is_some()
    }

    /// The client certificate's names and dates, if one is configured.
    pub fn identity(&self) -> Option<&CertInfo> {
        self.identity.as_ref()
    }

    /// Applies the settings to an endpoint.
    pub fn apply(
        &self,
        endpoint: tonic::transport::Endpoint,
    ) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
        match &self.config {
            Some(c) => endpoint.tls_config(c.clone()),
            None => Ok(endpoint),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::{DevCa, LeafSpec};

    const DAY: i64 = flopmeter_core::utc::SECONDS_PER_DAY as i64;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn reads_names_and_dates() {
        let ca = DevCa::generate(30).unwrap();
        let leaf = ca.issue(&LeafSpec::agent("node-a")).unwrap();
        let chain = CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let info = CertInfo::parse(&chain[0]).unwrap();
        assert_eq!(info.common_name.as_deref(), Some("node-a"));
        assert_eq!(info.names(), vec!["node-a".to_string()]);
        let now = unix_now();
        assert!(info.not_before <= now && now < info.not_after);
    }

    #[test]
    fn an_identity_loads_and_its_problems_are_named() {
        let d = tempfile::tempdir().unwrap();
        let ca = DevCa::generate(30).unwrap();
        let a = ca.issue(&LeafSpec::agent("node-a")).unwrap();
        let b = ca.issue(&LeafSpec::agent("node-b")).unwrap();
        let cert = write(d.path(), "a.pem", &a.cert_pem);
        let key = write(d.path(), "a-key.pem", &a.key_pem);
        let other_key = write(d.path(), "b-key.pem", &b.key_pem);
        let now = unix_now();
        let id = Identity::load(&cert, &key, "client certificate (--tls-cert)", now).unwrap();
        assert_eq!(id.leaf.common_name.as_deref(), Some("node-a"));

        let e = Identity::load(&cert, &other_key, "x", now).unwrap_err();
        assert!(
            e.to_string().contains("does not belong to the certificate"),
            "{e}"
        );
        let e = Identity::load(&d.path().join("missing.pem"), &key, "x", now).unwrap_err();
        assert!(e.to_string().starts_with("cannot read the x "), "{e}");
        let e = Identity::load(&key, &key, "x", now).unwrap_err();
        assert!(e.to_string().contains("holds no PEM certificate"), "{e}");
        let e = Identity::load(&cert, &cert, "x", now).unwrap_err();
        assert!(e.to_string().contains("holds no PEM private key"), "{e}");

        // The same files, read a year later and a year earlier.
        let e = Identity::load(
            &cert,
            &key,
            "client certificate (--tls-cert)",
            now + 400 * DAY,
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("client certificate (--tls-cert)")
                && text.contains("a.pem")
                && text.contains(" expired on ")
                && text.contains("UTC")
                && text.contains("renew it"),
            "{text}"
        );
        let e = Identity::load(&cert, &key, "x", now - 400 * DAY).unwrap_err();
        assert!(e.to_string().contains("is not valid before"), "{e}");
    }

    #[test]
    fn client_settings_follow_the_url() {
        let d = tempfile::tempdir().unwrap();
        let ca = DevCa::generate(30).unwrap();
        let ca_path = write(d.path(), "ca.pem", &ca.cert_pem);
        let files = TlsClientArgs {
            tls_ca: Some(ca_path.clone()),
            ..Default::default()
        };
        let now = unix_now();
        assert!(
            ClientTls::load("https://c:7443", &files, now)
                .unwrap()
                .is_tls()
        );
        assert!(
            !ClientTls::load("http://c:7443", &Default::default(), now)
                .unwrap()
                .is_tls()
        );
        let e = ClientTls::load("http://c:7443", &files, now).unwrap_err();
        assert!(
            e.to_string().contains("need an https:// collector URL"),
            "{e}"
        );
        let half = TlsClientArgs {
            tls_cert: Some(ca_path),
            ..Default::default()
        };
        let e = ClientTls::load("https://c:7443", &half, now).unwrap_err();
        assert!(e.to_string().contains("go together"), "{e}");
    }
}
