//! A failed connection to the collector, in plain words.
//!
//! tonic reports a failed handshake as "transport error" with the cause several sources
//! down, sometimes typed (a `rustls::Error` inside an `io::Error`) and sometimes only as text
//! (h2 keeps an I/O error's kind and message, not the error). So the typed cause is looked
//! for first, then the text of the whole chain.

use std::error::Error;

use rustls::{AlertDescription, CertificateError};

/// What is wrong, for a log line and a metric label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnosis {
    /// A bounded label value, e.g. `tls-server-cert-expired`.
    pub reason: &'static str,
    /// What is wrong and what to do, in plain words.
    pub message: String,
}

fn d(reason: &'static str, message: &str) -> Option<Diagnosis> {
    Some(Diagnosis {
        reason,
        message: message.to_string(),
    })
}

const SERVER_EXPIRED: &str =
    "TLS: the collector's certificate has expired (or this machine's clock is wrong); renew it";
const SERVER_NOT_YET: &str =
    "TLS: the collector's certificate is not valid yet: is this machine's clock right?";
const UNKNOWN_ISSUER: &str = "TLS: unknown issuer: is --tls-ca the CA that signed the \
                              collector's certificate?";
const WRONG_NAME: &str = "TLS: the collector's certificate does not name the host in \
                          --collector; use a name it has (see its SANs) or --tls-server-name";
const CLIENT_CERT_REQUIRED: &str = "TLS: the collector asked for a client certificate: give \
                                    --tls-cert and --tls-key";
const CLIENT_CERT_REFUSED: &str = "TLS: the collector refused this client certificate: is it \
                                   signed by the CA the collector trusts (its --tls-client-ca)?";
const CLIENT_CERT_EXPIRED: &str =
    "TLS: the collector says this client certificate has expired; renew it";
const PLAINTEXT_SERVER: &str = "TLS: the collector speaks plaintext; use http:// or enable TLS \
                                on the collector (--tls-cert, --tls-key)";
const TLS_SERVER: &str = "the collector speaks TLS but --collector is http://; use https:// \
                          (with --tls-ca if its CA is not in the system's roots)";
const NOT_H2: &str = "TLS: the server did not offer HTTP/2: is --collector the collector's \
                      gRPC address (--listen), not its HTTP one?";

fn from_rustls(e: &rustls::Error) -> Option<Diagnosis> {
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                d("tls-server-cert-expired", SERVER_EXPIRED)
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                d("tls-server-cert-not-yet-valid", SERVER_NOT_YET)
            }
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                d("tls-unknown-issuer", UNKNOWN_ISSUER)
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                d("tls-wrong-name", WRONG_NAME)
            }
            _ => None,
        },
        E::AlertReceived(a) => from_alert(*a),
        E::InvalidMessage(_) => d("tls-plaintext-server", PLAINTEXT_SERVER),
        _ => None,
    }
}

fn from_alert(a: AlertDescription) -> Option<Diagnosis> {
    match a {
        AlertDescription::CertificateRequired => {
            d("tls-client-cert-required", CLIENT_CERT_REQUIRED)
        }
        AlertDescription::CertificateExpired => d("tls-client-cert-expired", CLIENT_CERT_EXPIRED),
        AlertDescription::UnknownCA
        | AlertDescription::BadCertificate
        | AlertDescription::CertificateUnknown
        | AlertDescription::DecryptError => d("tls-client-cert-refused", CLIENT_CERT_REFUSED),
        AlertDescription::NoApplicationProtocol => d("tls-not-h2", NOT_H2),
        _ => None,
    }
}

fn typed(e: &(dyn Error + 'static)) -> Option<Diagnosis> {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return from_rustls(r);
        }
        // `io::Error::source` skips the error it wraps: look inside.
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && let Some(found) = typed(inner)
        {
            return Some(found);
        }
        cur = e.source();
    }
    None
}

fn chain_text(e: &(dyn Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

fn textual(text: &str, https: bool) -> Option<Diagnosis> {
    let has = |needle: &str| text.contains(needle);
    if has("invalid peer certificate: certificate expired")
        || has("invalid peer certificate: Expired")
    {
        return d("tls-server-cert-expired", SERVER_EXPIRED);
    }
    if has("UnknownIssuer") || has("BadSignature") {
        return d("tls-unknown-issuer", UNKNOWN_ISSUER);
    }
    if has("NotValidForName") || has("certificate not valid for name") {
        return d("tls-wrong-name", WRONG_NAME);
    }
    if has("fatal alert: CertificateRequired") {
        return d("tls-client-cert-required", CLIENT_CERT_REQUIRED);
    }
    if has("fatal alert: CertificateExpired") {
        return d("tls-client-cert-expired", CLIENT_CERT_EXPIRED);
    }
    if has("fatal alert: UnknownCA")
        || has("fatal alert: BadCertificate")
        || has("fatal alert: CertificateUnknown")
        || has("fatal alert: DecryptError")
    {
        return d("tls-client-cert-refused", CLIENT_CERT_REFUSED);
    }
    if https && has("received corrupt message") {
        return d("tls-plaintext-server", PLAINTEXT_SERVER);
    }
    if has("HTTP/2 was not negotiated") || has("fatal alert: NoApplicationProtocol") {
        return d("tls-not-h2", NOT_H2);
    }
    // The collector's own answer to plaintext (a GOAWAY saying so); or, from another TLS
    // server, TLS records read as HTTP/2 frames, whose first bytes make a frame length far
    // above the limit.
    if !https
        && (has("this port speaks TLS")
            || has("frame with invalid size")
            || has("invalid frame size"))
    {
        return d("plaintext-to-tls", TLS_SERVER);
    }
    None
}

/// What is wrong with a connection that failed with `e`, when it is one of the TLS
/// mistakes flopmeter can name. `https` is whether the client meant to speak TLS.
pub fn diagnose(e: &(dyn Error + 'static), https: bool) -> Option<Diagnosis> {
    match typed(e) {
        Some(found) if https || found.reason != "tls-plaintext-server" => Some(found),
        _ => textual(&chain_text(e), https),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(e: rustls::Error) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn typed_causes() {
        let cases = [
            (
                rustls::Error::InvalidCertificate(CertificateError::Expired),
                "tls-server-cert-expired",
                "the collector's certificate has expired",
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
                "tls-unknown-issuer",
                "unknown issuer: is --tls-ca the CA that signed the collector's certificate?",
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
                "tls-client-cert-required",
                "the collector asked for a client certificate",
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::UnknownCA),
                "tls-client-cert-refused",
                "refused this client certificate",
            ),
            (
                rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
                "tls-plaintext-server",
                "the collector speaks plaintext; use http://",
            ),
        ];
        for (err, reason, words) in cases {
            let wrapped = io(err);
            let got = diagnose(&wrapped, true).expect("diagnosed");
            assert_eq!(got.reason, reason);
            assert!(got.message.contains(words), "{}", got.message);
        }
    }

    #[test]
    fn the_same_causes_as_text_only() {
        // As h2 passes them on: the kind and the message, not the error.
        let text = |e: rustls::Error| std::io::Error::other(e.to_string());
        let got = diagnose(
            &text(rustls::Error::AlertReceived(AlertDescription::UnknownCA)),
            true,
        )
        .unwrap();
        assert_eq!(got.reason, "tls-client-cert-refused");
        let got = diagnose(
            &text(rustls::Error::AlertReceived(
                AlertDescription::CertificateExpired,
            )),
            true,
        )
        .unwrap();
        assert_eq!(got.reason, "tls-client-cert-expired");
        let got = diagnose(
            &text(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
            true,
        )
        .unwrap();
        assert_eq!(got.reason, "tls-unknown-issuer");
        let got = diagnose(
            &std::io::Error::other("http2 error: frame with invalid size"),
            false,
        )
        .unwrap();
        assert_eq!(got.reason, "plaintext-to-tls");
        assert!(got.message.contains("use https://"));
        assert_eq!(
            diagnose(&std::io::Error::other("connection refused"), true),
            None
        );
    }
}
