//! Delivery: the durable outbox and its sinks (Alertmanager v2, signed webhooks, the log).
//!
//! The engine writes outbox items in the same transaction as the alert events they
//! announce, keyed by (sink, idempotency key), so a crash between recording and sending
//! loses nothing and a re-evaluation adds nothing. [`deliver_due`] sends every pending item
//! whose backoff has elapsed, in key order, and marks it delivered (with an audit entry) only
//! after the sink answered 2xx; failures back off exponentially and are retried for ever. A
//! sink that is down therefore only delays its messages. Receivers get the idempotency key
//! (webhook header `X-Flopmeter-Idempotency-Key`) to drop the duplicates an at-least-once
//! channel can produce (a 2xx lost on the way back).
//!
//! HTTP client: a bare `hyper` HTTP/1 connection per request (hyper is already in the tree
//! through tonic and axum). Why not reqwest: it would add a TLS stack, a connection pool and
//! a dozen crates for a handful of POSTs a day to in-cluster receivers. Consequence: plain
//! `http://` only; reach an HTTPS receiver through a sidecar or an in-cluster relay.

use std::time::Duration;

use flopmeter_core::alert::{Alert, AlertContent};
use flopmeter_core::audit::{AuditKind, to_json};
use flopmeter_core::utc::format_utc;
use hmac::{KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde::Serialize;
use sha2::Sha256;
use tokio::net::TcpStream;

use super::engine::{Engine, EngineError, SinkConfig};
use super::store::{AuditRecord, Change, DeliveryState, OutboxItem};

/// A failed delivery.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The URL is not a plain `http://host[:port]/path` URL.
    #[error("unsupported sink URL {0:?} (plain http:// only)")]
    Url(String),
    /// The TCP connection could not be made.
    #[error("connect {host}:{port}: {source}")]
    Connect {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed (handshake, sending, reading the body).
    #[error("{0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built (a header value it cannot carry).
    #[error("{0}")]
    Request(#[from] hyper::http::Error),
    /// The body could not be encoded.
    #[error("encoding the body: {0}")]
    Encode(#[from] serde_json::Error),
    /// No answer within the timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The receiver answered with an error status.
    #[error("HTTP {status}: {body}")]
    Status {
        /// Status code.
        status: u16,
        /// Start of the body.
        body: String,
    },
}

/// POSTs a JSON body; `Ok` on 2xx. Returns the response body.
pub async fn post_json(
    url: &str,
    body: Vec<u8>,
    headers: &[(&str, String)],
    timeout: Duration,
) -> Result<String, SinkError> {
    let uri: hyper::Uri = url.parse().map_err(|_| SinkError::Url(url.into()))?;
    if uri.scheme_str() != Some("http") {
        return Err(SinkError::Url(url.into()));
    }
    let host = uri
        .host()
        .ok_or_else(|| SinkError::Url(url.into()))?
        .to_string();
    let port = uri.port_u16().unwrap_or(80);
    let fut = async {
        let stream = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|source| SinkError::Connect {
                host: host.clone(),
                port,
                source,
            })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = hyper::Request::post(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(hyper::header::HOST, format!("{host}:{port}"))
            .header(hyper::header::CONTENT_TYPE, "application/json");
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req.body(Full::new(Bytes::from(body)))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(2048)]).into_owned();
        if status.is_success() {
            Ok(text)
        } else {
            Err(SinkError::Status {
                status: status.as_u16(),
                body: text.chars().take(200).collect(),
            })
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| SinkError::Timeout(timeout))?
}

/// `sha256=<hex>` of HMAC-SHA256(secret, body): the `X-Flopmeter-Signature` header.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(71);
    hex.push_str("sha256=");
    for b in tag {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// Checks a `X-Flopmeter-Signature` header in constant time.
pub fn verify_signature(secret: &str, body: &[u8], header: &str) -> bool {
    let Some(hex) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Some(tag) = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
    else {
        return false;
    };
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(body);
    mac.verify_slice(&tag).is_ok()
}

/// The JSON body of a webhook delivery.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookBody<'a> {
    /// Idempotency key.
    pub key: &'a str,
    /// The event.
    pub event: &'a flopmeter_core::alert::AlertEvent,
    /// Whether the alert is active.
    pub active: bool,
    /// What the alert says.
    pub content: &'a AlertContent,
}

/// One Alertmanager v2 alert (`POST /api/v2/alerts` takes a list).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AmAlert {
    /// Identity labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Summary and description.
    pub annotations: std::collections::BTreeMap<String, String>,
    /// RFC 3339.
    pub starts_at: String,
    /// RFC 3339: now for a resolved alert, a few resend periods ahead while active (as
    /// Prometheus does, so an engine that stops posting lets the alert expire).
    pub ends_at: String,
}

/// The Alertmanager alert for an alert's content. The label set is stable per (model,
/// threshold) so re-posts update one alert.
pub fn am_alert(
    content: &AlertContent,
    threshold_id: &str,
    active: bool,
    now_unix_ms: i64,
    resend: Duration,
) -> AmAlert {
    let labels = [
        ("alertname", "FlopmeterComplianceAlert".to_string()),
        ("model", content.model.clone()),
        ("threshold", threshold_id.to_string()),
        ("severity", "critical".to_string()),
        ("source", "flopmeter".to_string()),
        ("team", "compliance".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mut description = format!(
        "{} ({}, {}). Measured {}; projected {}.",
        content.level, content.threshold, content.legal_basis, content.measured, content.projected
    );
    if let Some(c) = &content.clock {
        description.push_str(&format!(
            " Clock started {} for reason {}; deadline {} ({}).",
            c.started_at, c.reason, c.deadline, c.time_left
        ));
    }
    description.push_str(&format!(" Status: {}.", content.status.as_str()));
    if let Some(a) = &content.acknowledgement {
        description.push_str(&format!(
            " Acknowledged by {} at {}, notification reference {}.",
            a.by,
            format_utc(a.at_ms),
            a.reference
        ));
    }
    if let Some(d) = &content.dismissal {
        description.push_str(&format!(
            " Dismissed by {} at {}: {}.",
            d.by,
            format_utc(d.at_ms),
            d.reason
        ));
    }
    let annotations = [
        ("summary", content.summary.clone()),
        ("description", description),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let ends = if active {
        now_unix_ms + 4 * resend.as_millis() as i64
    } else {
        now_unix_ms
    };
    AmAlert {
        labels,
        annotations,
        starts_at: rfc3339(now_unix_ms - 1000),
        ends_at: rfc3339(ends),
    }
}

fn rfc3339(ms: i64) -> String {
    format_utc(ms)
}

async fn send(sink: &SinkConfig, item: &OutboxItem, resend: Duration) -> Result<(), SinkError> {
    let timeout = Duration::from_secs(10);
    match sink {
        SinkConfig::Log => {
            tracing::warn!(
                target: "flopmeter::alerts",
                key = %item.key,
                model = %item.event.model,
                threshold = %item.event.threshold_id,
                "{}",
                item.content.summary
            );
            Ok(())
        }
        SinkConfig::Webhook { url, secret, .. } => {
            let body = serde_json::to_vec(&WebhookBody {
                key: &item.key,
                event: &item.event,
                active: item.active,
                content: &item.content,
            })?;
            let sig = signature(secret, &body);
            post_json(
                url,
                body,
                &[
                    ("x-flopmeter-signature", sig),
                    ("x-flopmeter-idempotency-key", item.key.clone()),
                ],
                timeout,
            )
            .await
            .map(|_| ())
        }
        SinkConfig::Alertmanager { url } => {
            let a = am_alert(
                &item.content,
                &item.event.threshold_id,
                item.active,
                crate::now_unix_ms(),
                resend,
            );
            post_am(url, &[a], timeout).await
        }
    }
}

/// POSTs alerts to an Alertmanager's v2 API.
pub async fn post_am(base: &str, alerts: &[AmAlert], timeout: Duration) -> Result<(), SinkError> {
    let body = serde_json::to_vec(alerts)?;
    let url = format!("{}/api/v2/alerts", base.trim_end_matches('/'));
    post_json(&url, body, &[], timeout).await.map(|_| ())
}

/// Delivers every due pending item once. Returns (delivered, failed).
///
/// Only in office (the leader): a replica that is not, or stops being, the leader sends
/// nothing more, so an item is sent by one replica at a time. Checked before each send as
/// well as by the store, which refuses the delivery record of a replica that lost the lease:
/// an item sent just before the loss is then sent again by the new leader, with the same
/// idempotency key for the receiver to drop.
pub async fn deliver_due(engine: &Engine) -> Result<(usize, usize), EngineError> {
    let _one_pass = engine.deliver_lock().lock().await;
    if !engine.in_office() {
        return Ok((0, 0));
    }
    let store = engine.store();
    let now_wall = crate::now_unix_ms();
    let items = store.outbox()?;
    let (mut ok, mut failed) = (0, 0);
    let (base, cap) = engine.config().backoff;
    // An alert's events go out in order: once one waits, later ones for the same alert and
    // sink wait behind it (a "resolved" must not overtake the "firing" it resolves).
    let mut blocked = std::collections::BTreeSet::new();
    for mut item in items {
        let lane = (
            item.sink.clone(),
            item.event.model.clone(),
            item.event.threshold_id.clone(),
        );
        if item.state != DeliveryState::Pending {
            continue;
        }
        if blocked.contains(&lane) || item.next_attempt_unix_ms > now_wall {
            blocked.insert(lane);
            continue;
        }
        let Some(sink) = engine.sinks().iter().find(|s| s.name() == item.sink) else {
            continue; // a sink removed from the config keeps its items until it returns
        };
        if !engine.in_office() {
            break; // leadership lost during this pass: the new leader delivers the rest
        }
        item.attempts += 1;
        let result = send(sink, &item, engine.config().resend).await;
        let mut change = Change::default();
        match result {
            Ok(()) => {
                ok += 1;
                engine
                    .metrics()
                    .deliveries
                    .with_label_values(&[item.sink.as_str(), "ok"])
                    .inc();
                item.state = DeliveryState::Delivered;
                item.delivered_unix_ms = Some(crate::now_unix_ms());
                item.last_error = None;
                change.audit.push(AuditRecord {
                    time_ms: engine.now(),
                    actor: "outbox".into(),
                    kind: AuditKind::Delivery,
                    payload: to_json(&serde_json_delivery(&item, "delivered"))?,
                });
            }
            Err(e) => {
                failed += 1;
                engine
                    .metrics()
                    .deliveries
                    .with_label_values(&[item.sink.as_str(), "error"])
                    .inc();
                tracing::debug!(sink = %item.sink, key = %item.key, error = %e, "delivery failed; will retry");
                let exp = base.saturating_mul(1u32 << item.attempts.min(20).saturating_sub(1));
                item.next_attempt_unix_ms = crate::now_unix_ms() + exp.min(cap).as_millis() as i64;
                if item.attempts == 1 {
                    // The first failure is worth a record; every retry would flood the log.
                    change.audit.push(AuditRecord {
                        time_ms: engine.now(),
                        actor: "outbox".into(),
                        kind: AuditKind::Delivery,
                        payload: to_json(&serde_json_delivery(&item, &format!("failed: {e}")))?,
                    });
                }
                item.last_error = Some(e.to_string());
                blocked.insert(lane);
            }
        }
        change.outbox_update.push(item);
        store.commit(&change)?;
    }
    if ok + failed > 0 {
        store.flush()?;
    }
    refresh_pending(engine)?;
    Ok((ok, failed))
}

/// Sets `flopmeter_outbox_pending{sink}`.
pub fn refresh_pending(engine: &Engine) -> Result<(), EngineError> {
    if !engine.in_office() {
        return Ok(()); // the leader exports it
    }
    let mut counts: std::collections::BTreeMap<String, u64> =
        engine.sinks().iter().map(|s| (s.name(), 0)).collect();
    for i in engine.store().outbox()? {
        if i.state == DeliveryState::Pending {
            *counts.entry(i.sink).or_default() += 1;
        }
    }
    for (sink, n) in counts {
        engine
            .metrics()
            .outbox_pending
            .with_label_values(&[sink.as_str()])
            .set(n as f64);
    }
    Ok(())
}

fn serde_json_delivery<'a>(item: &'a OutboxItem, result: &'a str) -> impl Serialize + 'a {
    #[derive(Serialize)]
    struct Delivery<'a> {
        sink: &'a str,
        key: &'a str,
        attempts: u32,
        result: &'a str,
    }
    Delivery {
        sink: &item.sink,
        key: &item.key,
        attempts: item.attempts,
        result,
    }
}

/// Re-posts every active alert to each Alertmanager, as Prometheus re-sends firing alerts,
/// so an Alertmanager that restarted or lost its state learns of them again.
pub async fn repost_active(engine: &Engine) -> Result<(), EngineError> {
    if !engine.in_office() {
        return Ok(());
    }
    let active: Vec<(Alert, AlertContent)> = engine.active_contents()?;
    if active.is_empty() {
        return Ok(());
    }
    for sink in engine.sinks() {
        if let SinkConfig::Alertmanager { url } = sink {
            let now = crate::now_unix_ms();
            let alerts: Vec<AmAlert> = active
                .iter()
                .map(|(a, c)| am_alert(c, &a.threshold_id, true, now, engine.config().resend))
                .collect();
            let r = post_am(url, &alerts, Duration::from_secs(10)).await;
            let result = if r.is_ok() { "ok" } else { "error" };
            engine
                .metrics()
                .deliveries
                .with_label_values(&[sink.name().as_str(), result])
                .inc();
        }
    }
    Ok(())
}
