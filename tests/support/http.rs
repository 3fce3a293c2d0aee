//! The tests' one HTTP client, shared by the workspace's test trees (`#[path]`-included by
//! `agent/tests` and `collector/tests`): requests to our HTTP listeners (the collector's API,
//! console and /metrics, the agent's /metrics), to Alertmanager, and over TLS.
//!
//! ureq does the protocol; this module only fixes what every test wants: no redirects
//! followed (the console's answers are under test), every status returned rather than turned
//! into an error, bounded waits, and `None` where a test polls a server that is not up yet.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A server's whole answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// Every header, in order, names lower-case (`set-cookie` may repeat).
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics with the body if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

fn agent(tls: Option<ureq::tls::TlsConfig>) -> ureq::Agent {
    let mut cfg = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(60)));
    if let Some(tls) = tls {
        cfg = cfg.tls_config(tls);
    }
    cfg.build().into()
}

fn reply(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<Reply, ureq::Error> {
    let mut r = r?;
    let status = r.status().as_u16();
    let headers = r
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = r
        .body_mut()
        .with_config()
        .limit(256 << 20)
        .read_to_string()?;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// `method path` with these headers and (for POST) an URL-encoded form body: the answer, or
/// the transport error (nothing listening, connection reset, timeout).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    form: &str,
) -> Result<Reply, ureq::Error> {
    let mut req = ureq::http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    if method == "POST" {
        req = req.header("content-type", "application/x-www-form-urlencoded");
    }
    let req = req.body(form.to_string()).expect("a well-formed request");
    reply(agent(None).run(req))
}

/// `GET path`: the answer whatever its status; `None` while nothing answers.
pub fn get(addr: SocketAddr, path: &str) -> Option<Reply> {
    request(addr, "GET", path, &[], "").ok()
}

/// The body of a 200 answer to `GET path`; `None` while the server is down or answers
/// otherwise.
pub fn get_text(addr: SocketAddr, path: &str) -> Option<String> {
    get(addr, path).filter(|r| r.status == 200).map(|r| r.body)
}

/// The JSON of a 200 answer to `GET path`; `None` while the server is down or answers
/// otherwise.
pub fn get_json(addr: SocketAddr, path: &str) -> Option<serde_json::Value> {
    serde_json::from_str(&get_text(addr, path)?).ok()
}

/// The body of a 200 answer to `GET https://<addr>path`, trusting only the CA certificates
/// in `ca` (`certs dev` names 127.0.0.1 in the collector's certificate); `None` while the server is down, the handshake fails or the status
/// is not 200.
pub fn https_text(addr: SocketAddr, path: &str, ca: &Path) -> Option<String> {
    let pem = std::fs::read(ca).ok()?;
    let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)))
        .unversioned_rustls_crypto_provider(flopmeter_tls::provider())
        .build();
    let r = reply(agent(Some(tls)).get(format!("https://{addr}{path}")).call()).ok()?;
    (r.status == 200).then_some(r.body)
}

/// The value of one sample in a Prometheus text exposition, `series` written exactly as
/// rendered (`name` or `name{label="v"}`).
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
