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

#[derive(Serialize)]
struct Verified {
    ok: bool,
    entries: u64,
    broken_index: Option<usize>,
    broken_reason: Option<String>,
}

async fn verify(State(e): State<Arc<Engine>>) -> Response {
    match tokio::task::spawn_blocking(move || e.store().verify_audit()).await {
        Ok(Ok(Ok(n))) => ExactJson(Verified {
            ok: true,
            entries: n,
            broken_index: None,
            broken_reason: None,
        })
        .into_response(),
        Ok(Ok(Err(b))) => ExactJson(Verified {
            ok: false,
            entries: 0,
            broken_index: Some(b.index),
            broken_reason: Some(b.reason.to_string()),
        })
        .into_response(),
        Ok(Err(err)) => error(err),
        Err(err) => error(err),
    }
}
