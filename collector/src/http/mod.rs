//! The collector's HTTP side (axum): Prometheus `/metrics`, `/healthz`, `/readyz` and the
//! read-only JSON API under `/api/v1`, for scripts and dashboards. `/api/v1/unattributed`
//! lists the largest sources of work no model claimed (Slurm job, pod, process), and the
//! GPU time that could not be estimated, per reason.
//!
//! Every `u128` in the JSON (FLOP figures, GPU milliseconds, millijoules) is a **decimal
//! string**, as in the gRPC admin API ([`ExactJson`]): they exceed 2^53, and JavaScript, jq
//! and most JSON libraries would round a bare number to a double. Floats (days, MWh,
//! percentages) are plain numbers, for convenience.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use flopmeter_core::stage::StagePolicy;
use serde::{Deserialize, Serialize};

use crate::ledger::{Aggregate, LedgerStore, StoreError, summary};
use crate::metrics::Metrics;
use crate::{now_unix_ms, report};

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// The ledger.
    pub store: Arc<dyn LedgerStore>,
    /// The metrics.
    pub metrics: Metrics,
    /// The stage policy.
    pub policy: StagePolicy,
    /// True once the collector serves agents, false again while it shuts down.
    pub ready: Arc<AtomicBool>,
    /// The compliance engine: whether this replica leads it decides which series `/metrics`
    /// exports.
    pub engine: Arc<crate::compliance::Engine>,
}

/// An API error, as JSON `{"error": "..."}`.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The ledger failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Nothing by that name.
    #[error("{0}")]
    NotFound(String),
    /// A bad query.
    #[error("{0}")]
    BadRequest(String),
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = match &self {
            HttpError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            HttpError::NotFound(_) => StatusCode::NOT_FOUND,
            HttpError::BadRequest(_) => StatusCode::BAD_REQUEST,
        };
        (
            status,
            axum::Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}

/// A JSON response with every `u128`/`i128` written as a decimal string
/// ([`flopmeter_core::exact::Exact`]).
#[derive(Debug, Clone)]
pub struct ExactJson<T>(pub T);

impl<T: Serialize> IntoResponse for ExactJson<T> {
    fn into_response(self) -> Response {
        match serde_json::to_vec(&flopmeter_core::exact::Exact(&self.0)) {
            Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(serde_json::json!({ "error": e.to_string() })),
            )
                .into_response(),
        }
    }
}

/// The router.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/models", get(models))
        .route("/api/v1/models/{model}", get(model))
        .route("/api/v1/models/{model}/report", get(model_report))
        .route("/api/v1/runs", get(runs))
        .route("/api/v1/agents", get(agents))
        .route("/api/v1/unattributed", get(unattributed))
        .route("/api/v1/rejections", get(rejections))
        .with_state(state)
}

async fn metrics(State(s): State<HttpState>) -> Result<Response, HttpError> {
    s.metrics
        .refresh_ledger(s.store.as_ref(), &s.policy, s.engine.in_office())?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response())
}

/// Ready once the store is open and both listeners serve, whether or not this replica leads
/// the compliance engine: every replica serves ingest and the API.
async fn readyz(State(s): State<HttpState>) -> (StatusCode, &'static str) {
    if s.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Query of `/api/v1/models`.
#[derive(Debug, Deserialize)]
pub struct ModelsQuery {
    /// Only models that ran on this cluster (their totals still cover every cluster).
    pub cluster: Option<String>,
}

async fn models(
    State(s): State<HttpState>,
    Query(q): Query<ModelsQuery>,
) -> Result<ExactJson<Vec<summary::ModelSummary>>, HttpError> {
    Ok(ExactJson(summary::model_summaries_on(
        s.store.as_ref(),
        &s.policy,
        q.cluster.as_deref().filter(|c| !c.is_empty()),
    )?))
}

/// `/api/v1/models/{model}`: the summary and the full per-stage aggregate.
#[derive(Debug, Serialize)]
pub struct ModelDetail {
    /// Totals.
    pub summary: summary::ModelSummary,
    /// Per-stage, per-GPU-type detail.
    pub aggregate: Aggregate,
}

async fn model(
    State(s): State<HttpState>,
    Path(model): Path<String>,
) -> Result<ExactJson<ModelDetail>, HttpError> {
    let summary = summary::model_summary(s.store.as_ref(), &model, &s.policy)?
        .ok_or_else(|| HttpError::NotFound(format!("no model {model:?}")))?;
    let aggregate = s.store.model_aggregate(&model)?.unwrap_or_default();
    Ok(ExactJson(ModelDetail { summary, aggregate }))
}

async fn model_report(
    State(s): State<HttpState>,
    Path(model): Path<String>,
) -> Result<ExactJson<report::Report>, HttpError> {
    report::build(s.store.as_ref(), &model, &s.policy, now_unix_ms())?
        .map(ExactJson)
        .ok_or_else(|| HttpError::NotFound(format!("no model {model:?}")))
}

/// Query of `/api/v1/runs`.
#[derive(Debug, Deserialize)]
pub struct RunsQuery {
    /// The model whose runs to list.
    pub model: Option<String>,
    /// Only runs on this cluster (then `model` may be left out: every model's).
    pub cluster: Option<String>,
}

async fn runs(
    State(s): State<HttpState>,
    Query(q): Query<RunsQuery>,
) -> Result<ExactJson<Vec<summary::RunSummary>>, HttpError> {
    let model = q.model.filter(|m| !m.is_empty());
    let cluster = q.cluster.filter(|c| !c.is_empty());
    if model.is_none() && cluster.is_none() {
        return Err(HttpError::BadRequest(
            "the query parameter model= or cluster= is required".into(),
        ));
    }
    Ok(ExactJson(summary::run_summaries_on(
        s.store.as_ref(),
        model.as_deref(),
        cluster.as_deref(),
        &s.policy,
    )?))
}

async fn agents(
    State(s): State<HttpState>,
) -> Result<ExactJson<Vec<crate::ledger::AgentInfo>>, HttpError> {
    Ok(ExactJson(s.store.agents()?))
}

/// Query of `/api/v1/rejections`.
#[derive(Debug, Deserialize)]
pub struct RejectionsQuery {
    /// Only this agent's.
    pub agent: Option<String>,
    /// At most this many (default 100).
    pub limit: Option<usize>,
}

async fn rejections(
    State(s): State<HttpState>,
    Query(q): Query<RejectionsQuery>,
) -> Result<ExactJson<Vec<crate::ledger::RejectedEntry>>, HttpError> {
    Ok(ExactJson(s.store.rejections(
        q.agent.as_deref().filter(|a| !a.is_empty()),
        q.limit.unwrap_or(100),
    )?))
}

/// Query of `/api/v1/unattributed`.
#[derive(Debug, Deserialize)]
pub struct UnattributedQuery {
    /// UTC days back from today, today included (default 7; 0 = all time).
    pub days: Option<i64>,
    /// Sources listed, largest first (default 20, at most [`MAX_UNATTRIBUTED_SOURCES`]).
    pub limit: Option<usize>,
}

/// The most sources `/api/v1/unattributed` lists.
pub const MAX_UNATTRIBUTED_SOURCES: usize = 1000;

/// `/api/v1/unattributed`: work no model claimed over a period.
#[derive(Debug, Serialize)]
pub struct UnattributedReport {
    /// First UTC day (days since the epoch), `null` for all time.
    pub first_day: Option<i64>,
    /// Last UTC day.
    pub last_day: i64,
    /// Totals, GPU time that could not be estimated, largest sources.
    #[serde(flatten)]
    pub summary: summary::UnattributedSummary,
    /// `N GPU-hours that could not be estimated (reasons)`, or `none`.
    pub unestimated_text: String,
}

async fn unattributed(
    State(s): State<HttpState>,
    Query(q): Query<UnattributedQuery>,
) -> Result<ExactJson<UnattributedReport>, HttpError> {
    let days = q.days.unwrap_or(7);
    if days < 0 {
        return Err(HttpError::BadRequest(format!(
            "days={days}: give a number of days back (0 = all time)"
        )));
    }
    let limit = q.limit.unwrap_or(20);
    if limit > MAX_UNATTRIBUTED_SOURCES {
        return Err(HttpError::BadRequest(format!(
            "limit={limit} is above {MAX_UNATTRIBUTED_SOURCES}"
        )));
    }
    let last_day = now_unix_ms().div_euclid(crate::ledger::keys::DAY_MS);
    let first_day = (days > 0).then(|| last_day - (days - 1));
    let buckets = s
        .store
        .unattributed(first_day.unwrap_or(i64::MIN), last_day)?;
    let summary = summary::summarise_unattributed(&buckets, limit);
    let unestimated_text = report::UnestimatedView::of(&summary.unestimated).text;
    Ok(ExactJson(UnattributedReport {
        first_day,
        last_day,
        summary,
        unestimated_text,
    }))
}
