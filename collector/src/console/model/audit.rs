//! The audit page, and the words an audit entry is said in (shared with the model page).

use super::*;

use flopmeter_core::audit::{AuditEntry, AuditKind, ChainHead, Json};

fn text(j: Option<&Json>) -> String {
    match j {
        Some(Json::Str(s)) => s.clone(),
        Some(Json::UInt(u)) => u.to_string(),
        Some(Json::Int(i)) => i.to_string(),
        _ => String::new(),
    }
}

fn ms(j: Option<&Json>) -> Option<i64> {
    match j {
        Some(Json::UInt(u)) => i64::try_from(*u).ok(),
        Some(Json::Int(i)) => Some(*i),
        _ => None,
    }
}

fn utc(ms: Option<i64>) -> String {
    ms.map_or_else(String::new, flopmeter_core::utc::format_utc)
}

/// An audit entry in words.
pub fn describe_entry(e: &AuditEntry) -> String {
    let p = &e.payload;
    match &e.kind {
        AuditKind::ClockStarted => {
            let start = p.get("start");
            format!(
                "clock started at {}, reason {}; deadline {}",
                utc(ms(start.and_then(|s| s.get("at_ms")))),
                text(start.and_then(|s| s.get("reason"))),
                utc(ms(p.get("deadline_ms")))
            )
        }
        AuditKind::ClockFact => {
            let fact = p.get("fact").and_then(|f| f.get("kind"));
            format!(
                "clock fact: {}; deadline now {}",
                text(fact.and_then(|f| f.get("fact"))),
                utc(ms(p.get("effective_deadline_ms")))
            )
        }
        AuditKind::Alert | AuditKind::Acknowledged | AuditKind::Dismissed => {
            let kind = p.get("kind");
            match text(kind.and_then(|k| k.get("event"))).as_str() {
                "transition" => format!(
                    "{} → {}",
                    match text(kind.and_then(|k| k.get("from"))) {
                        f if f.is_empty() => "new".to_string(),
                        f => f,
                    },
                    text(kind.and_then(|k| k.get("to")))
                ),
                "reminder-due" => format!(
                    "reminder: {} days before the deadline {}",
                    text(kind.and_then(|k| k.get("days_before"))),
                    utc(ms(kind.and_then(|k| k.get("deadline_ms"))))
                ),
                "renotify" => format!(
                    "overdue re-notification {}",
                    text(kind.and_then(|k| k.get("n")))
                ),
                "deadline-moved" => format!(
                    "deadline moved from {} to {}",
                    utc(ms(kind.and_then(|k| k.get("from_ms")))),
                    utc(ms(kind.and_then(|k| k.get("to_ms"))))
                ),
                other => other.to_string(),
            }
        }
        AuditKind::Delivery => format!(
            "{} to {}: {} (attempt {})",
            text(p.get("result")),
            text(p.get("sink")),
            text(p.get("key")),
            text(p.get("attempts"))
        ),
        AuditKind::RegistryChange => "registry entry changed".to_string(),
        other => other.as_str().to_string(),
    }
}

/// Whether an audit entry is about `model` (and `threshold`, when given). A delivery names
/// its alert by idempotency key, `{model}/{threshold}/{kind}/{n}`; threshold ids have no
/// `/`, so the prefix with a threshold is unambiguous.
pub fn entry_is_about(e: &AuditEntry, model: &str, threshold: Option<&str>) -> bool {
    if e.kind == AuditKind::Delivery {
        let key = e.payload.get("key").and_then(Json::as_str).unwrap_or("");
        return match threshold {
            Some(t) => key.starts_with(&format!("{model}/{t}/")),
            None => key.starts_with(&format!("{model}/")),
        };
    }
    e.payload.get("model").and_then(Json::as_str) == Some(model)
        && threshold.is_none_or(|t| e.payload.get("threshold_id").and_then(Json::as_str) == Some(t))
}

/// The result of `audit verify` run on demand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// Every link verified; the number of entries.
    Ok(u64),
    /// The first broken link: index and reason.
    Broken(usize, String),
}

/// The audit page.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditPage {
    /// The stored chain head.
    pub head: ChainHead,
    /// The verification, when asked for.
    pub verification: Option<Verification>,
    /// The latest entries, newest first.
    pub recent: Vec<HistoryLine>,
    /// Their kind and subject (model / threshold), aligned with `recent`.
    pub subjects: Vec<(String, String)>,
}

/// Builds the audit page from the newest `entries` (any order) and the head.
pub fn audit_page(
    head: ChainHead,
    mut entries: Vec<AuditEntry>,
    verification: Option<Verification>,
    limit: usize,
) -> AuditPage {
    entries.sort_by_key(|e| std::cmp::Reverse(e.seq));
    entries.truncate(limit);
    AuditPage {
        head,
        verification,
        subjects: entries
            .iter()
            .map(|e| {
                let p = &e.payload;
                let subject = [p.get("model"), p.get("threshold_id"), p.get("key")]
                    .into_iter()
                    .map(text)
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(" / ");
                (e.kind.as_str().to_string(), subject)
            })
            .collect(),
        recent: entries
            .iter()
            .map(|e| HistoryLine {
                seq: e.seq,
                at_ms: e.time_ms,
                actor: e.actor.clone(),
                what: describe_entry(e),
            })
            .collect(),
    }
}
