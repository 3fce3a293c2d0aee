//! TLS on the collector's two listeners (gRPC and HTTP), and optional mutual TLS.
//!
//! The certificate, key and client CA are read and checked once at start
//! ([`ServerTls::load`]): a missing or unreadable file, a key that is not the certificate's, or
//! a certificate outside its validity stops the collector with a message naming the file.
//!
//! Handshakes run in spawned tasks, each bounded by [`HANDSHAKE_TIMEOUT`], and at most
//! [`MAX_HANDSHAKES`] at once: a client that opens a connection and never speaks delays no
//! one else's accept, and a flood of them cannot grow memory without bound. Failed handshakes
//! are counted by reason (`flopmeter_tls_handshake_failures_total`).
//!
//! **Mutual TLS** (`--tls-client-ca`): a client certificate must chain to that CA, or the
//! handshake fails. Presenting one is optional *at the TLS layer*, so the CLI can still
//! reach the admin API with only the admin token; the ingest service is what requires it,
//! and takes the agent's identity from it (`crate::ingest::auth::check_identity`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flopmeter_tls::rustls::server::WebPkiClientVerifier;
use flopmeter_tls::rustls::{self, ServerConfig};
use flopmeter_tls::{CertInfo, Identity, TlsError, TrustRoots};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::metrics::Metrics;

/// Longest a client may take to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once, per listener; accepting waits beyond (the kernel's
/// backlog holds the rest).
pub const MAX_HANDSHAKES: usize = 1024;

/// The TLS files of `flopmeter collector`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    /// The collector's certificate chain, PEM, leaf first (`--tls-cert`).
    pub cert: PathBuf,
    /// Its private key, PEM (`--tls-key`).
    pub key: PathBuf,
    /// CA of the agents' client certificates: mutual TLS on (`--tls-client-ca`).
    pub client_ca: Option<PathBuf>,
}

/// The checked TLS settings of both listeners.
#[derive(Debug, Clone)]
pub struct ServerTls {
    grpc: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
    mutual: bool,
    leaf: CertInfo,
}

impl ServerTls {
    /// Reads and checks the files at `now` (Unix seconds).
    pub fn load(paths: &TlsPaths, now: i64) -> Result<ServerTls, TlsError> {
        let id = Identity::load(
            &paths.cert,
            &paths.key,
            "collector certificate (--tls-cert)",
            now,
        )?;
        let provider = flopmeter_tls::provider();
        let client_verifier = match &paths.client_ca {
            Some(ca) => {
                let roots = TrustRoots::load(ca, "client CA (--tls-client-ca)", now)?;
                Some(
                    WebPkiClientVerifier::builder_with_provider(
                        Arc::new(roots.store()?),
                        provider.clone(),
                    )
                    // Optional here, required by the ingest service: see the module docs.
                    .allow_unauthenticated()
                    .build()
                    .map_err(|source| TlsError::ClientCa {
                        path: ca.clone(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        let config = |alpn: &[u8]| -> Result<Arc<ServerConfig>, TlsError> {
            let builder = ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?;
            let builder = match &client_verifier {
                Some(v) => builder.with_client_cert_verifier(v.clone()),
                None => builder.with_no_client_auth(),
            };
            let mut c = builder.with_single_cert(id.chain.clone(), id.key.clone_key())?;
            c.alpn_protocols = vec![alpn.to_vec()];
            Ok(Arc::new(c))
        };
        Ok(ServerTls {
            // gRPC clients (tonic, grpcio) insist on h2; axum serves HTTP/1.1 only.
            grpc: config(b"h2")?,
            http: config(b"http/1.1")?,
            mutual: client_verifier.is_some(),
            leaf: id.leaf,
        })
    }

    /// Whether client certificates are verified (mutual TLS).
    pub fn mutual(&self) -> bool {
        self.mutual
    }

    /// The collector certificate's names and dates.
    pub fn certificate(&self) -> &CertInfo {
        &self.leaf
    }

    /// The gRPC listener's connections, after their handshakes.
    pub fn grpc_incoming(
        &self,
        listener: TcpListener,
        metrics: Metrics,
        shutdown: watch::Receiver<bool>,
    ) -> mpsc::Receiver<Result<TlsStream<TcpStream>, std::io::Error>> {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(accept_loop(
            listener,
            TlsAcceptor::from(self.grpc.clone()),
            Which::Grpc,
            metrics,
            shutdown,
            move |s, _| {
                let tx = tx.clone();
                async move { tx.send(Ok(s)).await.is_ok() }
            },
        ));
        rx
    }

    /// The HTTP listener, after handshakes, for `axum::serve`.
    pub fn http_listener(
        &self,
        listener: TcpListener,
        metrics: Metrics,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<TlsListener> {
        let addr = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(accept_loop(
            listener,
            TlsAcceptor::from(self.http.clone()),
            Which::Http,
            metrics,
            shutdown,
            move |s, peer| {
                let tx = tx.clone();
                async move { tx.send((s, peer)).await.is_ok() }
            },
        ));
        Ok(TlsListener { rx, addr })
    }
}

#[derive(Debug, Clone, Copy)]
enum Which {
    Grpc,
    Http,
}

impl Which {
    fn as_str(self) -> &'static str {
        match self {
            Which::Grpc => "grpc",
            Which::Http => "http",
        }
    }
}

async fn accept_loop<F, Fut>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    which: Which,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
    deliver: F,
) where
    F: Fn(TlsStream<TcpStream>, SocketAddr) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let mut pause = Duration::from_millis(10);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stopped(&mut shutdown) => return,
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => {
                    pause = Duration::from_millis(10);
                    c
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off and count, never spin.
                    pause = crate::conn::accept_backoff(&e, which.as_str(), pause, &metrics).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => return,
        };
        // Acks are small and latency-bound: without TCP_NODELAY, Nagle's algorithm and
        // delayed ACKs add tens of milliseconds to each one.
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let metrics = metrics.clone();
        let deliver = deliver.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let outcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
                match first_byte(&tcp).await {
                    Some(TLS_HANDSHAKE) => match acceptor.accept(tcp).into_fallible().await {
                        Ok(stream) => Opened::Tls(Ok(Box::new(stream))),
                        Err((e, tcp)) => {
                            // The alert that says why is written; let it arrive.
                            linger(tcp).await;
                            Opened::Tls(Err(e))
                        }
                    },
                    Some(_) => {
                        refuse_plaintext(tcp, which).await;
                        Opened::Plaintext
                    }
                    None => Opened::Closed,
                }
            })
            .await;
            match outcome {
                Ok(Opened::Closed) => {}
                Ok(Opened::Plaintext) => {
                    metrics.tls_handshake_failed(which.as_str(), "not-tls");
                    tracing::debug!(%peer, listener = which.as_str(), "plaintext on a TLS port refused");
                }
                Ok(Opened::Tls(Ok(stream))) => {
                    drop(_permit);
                    deliver(*stream, peer).await;
                }
                Ok(Opened::Tls(Err(e))) => {
                    let reason = failure_reason(&e);
                    metrics.tls_handshake_failed(which.as_str(), reason);
                    if reason.starts_with("client-cert") {
                        // A misconfigured agent: the operator wants to see it.
                        tracing::info!(%peer, listener = which.as_str(), reason, error = %e, "TLS handshake refused");
                    } else {
                        tracing::debug!(%peer, listener = which.as_str(), reason, error = %e, "TLS handshake failed");
                    }
                }
                Err(_) => {
                    metrics.tls_handshake_failed(which.as_str(), "timeout");
                    tracing::debug!(%peer, listener = which.as_str(), "TLS handshake timed out");
                }
            }
        });
    }
}

/// How a connection began.
enum Opened {
    /// With a TLS handshake, which succeeded or failed.
    Tls(std::io::Result<Box<TlsStream<TcpStream>>>),
    /// In plaintext (refused, with an answer).
    Plaintext,
    /// Closed before its first byte.
    Closed,
}

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// What a plaintext client is told, in the protocol it speaks.
const PLAINTEXT_REFUSAL: &str = "flopmeter collector: this port speaks TLS; use https://";

/// The connection's first byte, without consuming it (`None`: closed or failed).
async fn first_byte(tcp: &TcpStream) -> Option<u8> {
    let mut b = [0u8; 1];
    match tcp.peek(&mut b).await {
        Ok(1) => Some(b[0]),
        _ => None,
    }
}

/// Answers a plaintext client on a TLS port in its own protocol, so it can say what is
/// wrong instead of "connection reset": HTTP/2 clients (gRPC) get a GOAWAY whose debug data
/// says so, HTTP/1 clients a 400.
async fn refuse_plaintext(mut tcp: TcpStream, which: Which) {
    use tokio::io::AsyncWriteExt as _;
    let answer: Vec<u8> = match which {
        Which::Grpc => {
            let debug = PLAINTEXT_REFUSAL.as_bytes();
            // An empty SETTINGS frame (the server preface), then GOAWAY(last stream 0,
            // PROTOCOL_ERROR, debug data).
            let mut f = vec![0, 0, 0, 0x4, 0, 0, 0, 0, 0];
            let len = (8 + debug.len()) as u32;
            f.extend_from_slice(&len.to_be_bytes()[1..]);
            f.extend_from_slice(&[0x7, 0, 0, 0, 0, 0]);
            f.extend_from_slice(&0u32.to_be_bytes());
            f.extend_from_slice(&1u32.to_be_bytes());
            f.extend_from_slice(debug);
            f
        }
        Which::Http => format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\nconnection: close\r\n\
             content-length: {}\r\n\r\n{PLAINTEXT_REFUSAL}\n",
            PLAINTEXT_REFUSAL.len() + 1
        )
        .into_bytes(),
    };
    if tcp.write_all(&answer).await.is_err() {
        return;
    }
    linger(tcp).await;
}

/// Closes after reading what the client still sends (for at most a second): closing with
/// unread data resets the connection, and a reset can destroy the answer or TLS alert still
/// in flight, leaving the client with "connection reset" instead of the reason.
async fn linger(mut tcp: TcpStream) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let _ = tcp.shutdown().await;
    let mut sink = [0u8; 4096];
    let drain = async {
        while let Ok(n) = tcp.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Every reason label of `flopmeter_tls_handshake_failures_total`.
pub const FAILURE_REASONS: [&str; 7] = [
    "not-tls",
    "client-cert-unknown-issuer",
    "client-cert-expired",
    "client-cert-invalid",
    "refused-by-client",
    "timeout",
    "other",
];

/// A failed handshake's reason label.
fn failure_reason(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError as C, Error as E};
    let Some(r) = e.get_ref().and_then(|i| i.downcast_ref::<E>()) else {
        return "other";
    };
    match r {
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => "not-tls",
        E::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => "client-cert-unknown-issuer",
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => "client-cert-expired",
        E::InvalidCertificate(_) => "client-cert-invalid",
        E::AlertReceived(_) => "refused-by-client",
        _ => "other",
    }
}

/// The HTTP listener's connections after their handshakes ([`axum::serve::Listener`]).
#[derive(Debug)]
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept loop stopped (shutdown): no more connections, ever.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flopmeter_tls::dev::{DevCa, LeafSpec};

    #[test]
    fn loads_a_dev_set_and_names_what_is_wrong() {
        let d = tempfile::tempdir().unwrap();
        let ca = DevCa::generate(30).unwrap();
        let c = ca.issue(&LeafSpec::collector(&[])).unwrap();
        let write = |n: &str, t: &str| {
            let p = d.path().join(n);
            std::fs::write(&p, t).unwrap();
            p
        };
        let paths = TlsPaths {
            cert: write("collector.pem", &c.cert_pem),
            key: write("collector-key.pem", &c.key_pem),
            client_ca: Some(write("ca.pem", &ca.cert_pem)),
        };
        let now = flopmeter_tls::unix_now();
        let tls = ServerTls::load(&paths, now).unwrap();
        assert!(tls.mutual());
        assert_eq!(tls.certificate().dns_names, vec!["localhost"]);

        let e = ServerTls::load(&paths, now + 400 * 86_400).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("collector certificate (--tls-cert)")
                && text.contains("collector.pem")
                && text.contains("expired on"),
            "{text}"
        );
        let missing = TlsPaths {
            client_ca: Some(d.path().join("nope.pem")),
            ..paths
        };
        let e = ServerTls::load(&missing, now).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot read the client CA (--tls-client-ca)"),
            "{e}"
        );
    }

    #[test]
    fn handshake_failures_get_bounded_reasons() {
        let io = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        assert_eq!(
            failure_reason(&io(rustls::Error::InvalidMessage(
                rustls::InvalidMessage::InvalidContentType
            ))),
            "not-tls"
        );
        assert_eq!(
            failure_reason(&io(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            ))),
            "client-cert-unknown-issuer"
        );
        assert_eq!(failure_reason(&std::io::Error::other("eof")), "other");
        for r in FAILURE_REASONS {
            assert!(r.len() < 40);
        }
    }
}
