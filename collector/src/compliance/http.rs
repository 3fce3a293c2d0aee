//! The compliance part of the JSON API: `GET /api/v1/alerts` and `GET /api/v1/audit/verify`.
//! Merged into the collector's router.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use super::engine::Engine;
use crate::http::ExactJson;

/// The routes.
pub fn router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/audit/verify", get(verify))
        .with_state(engine)
}

fn error(e: impl std::fmt::Display) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
}

async fn alerts(State(e): State<Arc<Engine>>) -> Response {
    match tokio::task::spawn_blocking(move || e.alert_views()).await {
        Ok(Ok(v)) => ExactJson(v).into_response(),
        Ok(Err(err)) => error(err),
        Err(err) => error(err),
    }
}

/// `/api/v1/audit/verify`: the real counts whether the chain holds or not.
#[derive(Serialize)]
struct Verified {
    ok: bool,
    /// Entries present in the log.
    entries: u64,
    /// Entries that verify (all, or those before the first broken link).
    verified: u64,
    /// Entries the separately stored head accounts for.
    head_entries: u64,
    broken_index: Option<usize>,
    broken_reason: Option<String>,
}

async fn verify(State(e): State<Arc<Engine>>) -> Response {
    match tokio::task::spawn_blocking(move || e.verify_chain()).await {
        Ok(Ok(s)) => ExactJson(Verified {
            ok: s.ok(),
            entries: s.entries,
            verified: s.verified(),
            head_entries: s.head_entries,
            broken_index: s.broken.as_ref().map(|b| b.index),
            broken_reason: s.broken.as_ref().map(|b| b.reason.to_string()),
        })
        .into_response(),
        Ok(Err(err)) => error(err),
        Err(err) => error(err),
    }
}
