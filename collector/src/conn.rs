//! The gRPC port's connections: accepted with backoff when the process runs out of file
//! descriptors, closed when they never speak, and answered only in gRPC.
//!
//! Why: an independent client showed that connections which never send a Hello (plaintext),
//! or never send the HTTP/2 preface after a TLS handshake, were held for ever; that the
//! accept loop spun at 100% CPU once descriptors ran out; and that a `text/html` request on
//! the gRPC port was served as gRPC (issue 12).
//!
//! - [`Silent`] wraps every accepted connection: if no byte arrives within the hello timeout
//!   (`--hello-timeout`), reading fails and the HTTP/2 server closes it
//!   (`flopmeter_ingest_refused_total{reason="hello-timeout"}`). The ingest session applies
//!   the same timeout to the Hello and `--idle-timeout` to the gaps between messages.
//! - [`accept_loop`] backs off exponentially (10 ms to 1 s) after an accept error and counts
//!   it (`flopmeter_accept_errors_total{listener,reason}`, `fd-exhausted` for EMFILE and
//!   ENFILE), instead of retrying at once.
//! - [`GrpcOnlyLayer`] answers a request whose content type is not `application/grpc` with
//!   HTTP 415 before it reaches a service (`reason="not-grpc"`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Sleep;
use tonic::codegen::http;

use crate::metrics::{Metrics, Refusal};

/// Default time a connection, and then a stream, has to start speaking.
pub const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(30);

/// Default longest silence on an agent stream after its Hello (agents report every 10 s).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// Longest pause of the accept loop after repeated errors.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// A connection that must send its first byte before a deadline.
#[derive(Debug)]
pub struct Silent<T> {
    inner: T,
    deadline: Option<Pin<Box<Sleep>>>,
    metrics: Metrics,
}

impl<T> Silent<T> {
    /// Wraps `inner`; it has `timeout` to send its first byte.
    pub fn new(inner: T, timeout: Duration, metrics: Metrics) -> Silent<T> {
        Silent {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            metrics,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Silent<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.deadline = None;
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let expired = this
                    .deadline
                    .as_mut()
                    .is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if !expired {
                    return Poll::Pending;
                }
                this.deadline = None;
                this.metrics.refuse(Refusal::HelloTimeout);
                Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the connection sent nothing within the hello timeout",
                )))
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Silent<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Silent<T> {
    type ConnectInfo = T::ConnectInfo;

    /// The inner connection's: the TLS peer certificates stay visible to ingest.
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Why accepting failed, as the metric's label.
pub fn accept_error_reason(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc_emfile) if libc_emfile == 24 || libc_emfile == 23 => "fd-exhausted",
        _ => "other",
    }
}

/// Pauses after an accept error, longer each time in a row (10 ms doubling to 1 s), and
/// counts it. Returns the next pause.
pub async fn accept_backoff(
    e: &std::io::Error,
    listener: &str,
    pause: Duration,
    metrics: &Metrics,
) -> Duration {
    let reason = accept_error_reason(e);
    metrics.accept_failed(listener, reason);
    if pause >= MAX_ACCEPT_BACKOFF / 2 {
        tracing::warn!(error = %e, listener, reason, "accepting connections fails; backing off");
    }
    tokio::time::sleep(pause).await;
    (pause * 2).min(MAX_ACCEPT_BACKOFF)
}

/// The plaintext gRPC listener's connections, for tonic's `serve_with_incoming`.
pub fn plaintext_incoming(
    listener: TcpListener,
    hello_timeout: Duration,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) -> mpsc::Receiver<Result<Silent<TcpStream>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut pause = Duration::from_millis(10);
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = shutdown.wait_for(|s| *s) => return,
            };
            match accepted {
                Ok((tcp, _)) => {
                    pause = Duration::from_millis(10);
                    // Acks are small and latency-bound: without TCP_NODELAY, Nagle's
                    // algorithm and delayed ACKs add tens of milliseconds to each one.
                    let _ = tcp.set_nodelay(true);
                    let conn = Silent::new(tcp, hello_timeout, metrics.clone());
                    if tx.send(Ok(conn)).await.is_err() {
                        return;
                    }
                }
                Err(e) => pause = accept_backoff(&e, "grpc", pause, &metrics).await,
            }
        }
    });
    rx
}

/// Refuses requests that are not gRPC ([`GrpcOnly`]).
#[derive(Debug, Clone)]
pub struct GrpcOnlyLayer {
    metrics: Metrics,
}

impl GrpcOnlyLayer {
    /// The layer; refusals are counted in `metrics`.
    pub fn new(metrics: Metrics) -> GrpcOnlyLayer {
        GrpcOnlyLayer { metrics }
    }
}

impl<S> tower_layer::Layer<S> for GrpcOnlyLayer {
    type Service = GrpcOnly<S>;

    fn layer(&self, inner: S) -> GrpcOnly<S> {
        GrpcOnly {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// A service that answers HTTP 415 to any request whose content type is not gRPC.
#[derive(Debug, Clone)]
pub struct GrpcOnly<S> {
    inner: S,
    metrics: Metrics,
}

/// Whether a content type is gRPC's (`application/grpc`, `application/grpc+proto`, ...).
pub fn is_grpc_content_type(v: Option<&http::HeaderValue>) -> bool {
    v.and_then(|v| v.to_str().ok()).is_some_and(|v| {
        let v = v.trim().to_ascii_lowercase();
        v == "application/grpc" || v.starts_with("application/grpc+")
    })
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tonic::codegen::Service<http::Request<B>> for GrpcOnly<S>
where
    S: tonic::codegen::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if is_grpc_content_type(req.headers().get(http::header::CONTENT_TYPE)) {
            return Box::pin(self.inner.call(req));
        }
        self.metrics.refuse(Refusal::NotGrpc);
        let mut resp = http::Response::new(tonic::body::Body::new(http_body_util::Full::new(
            tonic::codegen::Bytes::from_static(
                b"this port speaks gRPC only (content-type application/grpc); the JSON API \
                  and /metrics are on the HTTP port\n",
            ),
        )));
        *resp.status_mut() = http::StatusCode::UNSUPPORTED_MEDIA_TYPE;
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        Box::pin(async move { Ok(resp) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        let v = |s: &'static str| http::HeaderValue::from_static(s);
        assert!(is_grpc_content_type(Some(&v("application/grpc"))));
        assert!(is_grpc_content_type(Some(&v("application/grpc+proto"))));
        assert!(!is_grpc_content_type(Some(&v("text/html"))));
        assert!(!is_grpc_content_type(Some(&v("application/grpc-web"))));
        assert!(!is_grpc_content_type(None));
    }

    #[test]
    fn descriptor_exhaustion_is_named() {
        assert_eq!(
            accept_error_reason(&std::io::Error::from_raw_os_error(24)),
            "fd-exhausted"
        );
        assert_eq!(
            accept_error_reason(&std::io::Error::from_raw_os_error(104)),
            "other"
        );
    }

    #[tokio::test]
    async fn a_connection_that_never_speaks_is_closed() {
        use tokio::io::AsyncReadExt as _;
        // The other end stays open and silent.
        let (a, _b) = tokio::io::duplex(64);
        let m = Metrics::new();
        let mut s = Silent::new(a, Duration::from_millis(50), m.clone());
        let mut buf = [0u8; 4];
        let e = s.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(m.refused_count(Refusal::HelloTimeout), 1);
        // One that speaks in time is never cut off afterwards.
        let (a, mut b2) = tokio::io::duplex(64);
        let mut s = Silent::new(a, Duration::from_millis(50), m.clone());
        tokio::io::AsyncWriteExt::write_all(&mut b2, b"PRI")
            .await
            .unwrap();
        assert_eq!(s.read(&mut buf).await.unwrap(), 3);
        tokio::time::sleep(Duration::from_millis(100)).await;
        tokio::io::AsyncWriteExt::write_all(&mut b2, b"x")
            .await
            .unwrap();
        assert_eq!(s.read(&mut buf).await.unwrap(), 1);
    }
}
