//! TLS to PostgreSQL through rustls with the ring provider (never OpenSSL), with libpq's
//! modes: `verify-full` checks the chain and the host name, `verify-ca` the chain only,
//! `require` and `prefer` encrypt without checking who answers (as libpq does).
//!
//! The trust roots are a CA file (`sslrootcert=` in the DSN, or the collector's option, which
//! wins) or the system's store (`sslrootcert=system`, and the default of a verifying mode
//! without a file, so a managed server with a public certificate needs no file).

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::dsn::{RootCerts, SslMode};

/// TLS settings that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The CA file cannot be read or holds no valid certificate.
    #[error("{0} (the CA that signed PostgreSQL's certificate: sslrootcert= in the DSN)")]
    CaFile(#[source] flopmeter_tls::TlsError),
    /// A verifying mode without a CA file, and the system's trust store is empty.
    #[error(
        "sslmode={mode} checks PostgreSQL's certificate, but no CA file was given and the \
         system's trust store has no certificate ({detail}): give the CA file (sslrootcert= \
         in the DSN) or install the system's CA certificates (Debian: ca-certificates)"
    )]
    NoSystemRoots {
        /// The mode that needs roots.
        mode: SslMode,
        /// What loading the system store reported.
        detail: String,
    },
    /// rustls refused the configuration.
    #[error("cannot set up TLS for PostgreSQL: {0}")]
    Rustls(#[from] rustls::Error),
    /// rustls refused the trust roots for a verifier.
    #[error("cannot check PostgreSQL's certificate against these roots: {0}")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
}

/// The connector for `mode`, trusting `roots` (when it verifies).
pub(crate) fn connector(
    mode: SslMode,
    roots: Option<&RootCerts>,
) -> Result<MakeRustlsConnect, TlsSetupError> {
    let provider = flopmeter_tls::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let config = match mode {
        SslMode::VerifyFull => builder
            .with_root_certificates(root_store(mode, roots)?)
            .with_no_client_auth(),
        SslMode::VerifyCa => {
            let inner = WebPkiServerVerifier::builder_with_provider(
                Arc::new(root_store(mode, roots)?),
                provider,
            )
            .build()?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(inner)))
                .with_no_client_auth()
        }
        SslMode::Disable | SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
            .with_no_client_auth(),
    };
    Ok(MakeRustlsConnect::new(config))
}

fn root_store(mode: SslMode, roots: Option<&RootCerts>) -> Result<RootCertStore, TlsSetupError> {
    match roots {
        Some(RootCerts::File(path)) => file_roots(path),
        Some(RootCerts::System) | None => system_roots(mode),
    }
}

fn file_roots(path: &Path) -> Result<RootCertStore, TlsSetupError> {
    let roots =
        flopmeter_tls::TrustRoots::load(path, "PostgreSQL CA file", flopmeter_tls::unix_now())
            .map_err(TlsSetupError::CaFile)?;
    roots.store().map_err(TlsSetupError::CaFile)
}

fn system_roots(mode: SslMode) -> Result<RootCertStore, TlsSetupError> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(found.certs);
    if added == 0 {
        let detail = match found.errors.first() {
            Some(e) => e.to_string(),
            None => "no certificates found".to_string(),
        };
        return Err(TlsSetupError::NoSystemRoots { mode, detail });
    }
    Ok(store)
}

/// `verify-ca`: the chain must lead to a trusted CA; the name is not compared. rustls checks
/// the name last, after the chain, so a name error means the chain passed.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `require` and `prefer`: encrypted, the certificate not checked (libpq's meaning). The
/// handshake's signatures are still verified, so the session is with the key holder of
/// whatever certificate was shown.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
