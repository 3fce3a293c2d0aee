//! The compliance console (issue 16): server-rendered HTML under `/ui/` on the collector's
//! HTTP listener, for the people who sign the notification. It answers at a glance which
//! models are near a threshold, which clocks are running, how many days are left, and how
//! far the figures can be trusted; it serves the report downloads, `audit verify` on demand,
//! the audit export, and lets a logged-in admin acknowledge or dismiss an alert.
//!
//! Code map:
//! - [`gather`]: reads through the collector's own views (ledger trait, report, engine);
//! - [`model`]: what each page shows, pure and unit-tested (urgency, sorting, bars, history);
//! - [`chart`]: the cumulative-FLOP chart as SVG;
//! - [`html`]: the pages (maud: every interpolated value is escaped);
//! - [`access`]: viewer and admin tokens, signed session cookies, CSRF tokens.
//!
//! Rules: no JavaScript (sorting is a link); every asset is embedded; every response carries
//! a CSP without script, `frame-ancestors 'none'` and `nosniff`; a POST is checked for its
//! CSRF token before anything else.

pub mod access;
pub mod chart;
pub mod gather;
pub mod html;
pub mod model;

use std::sync::{Arc, LazyLock};

use axum::Router;
use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use flopmeter_core::stage::StagePolicy;
use maud::Markup;
use serde::Deserialize;

pub use access::{Access, Role, Session};
pub use gather::Sources;

use crate::compliance::{Engine, EngineError};
use crate::ledger::{LedgerStore, StoreError};
use html::alerts::{Forms, Notice};
use html::{Frame, Section};

/// Errors of a console page.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The ledger failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The compliance engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The compliance store failed.
    #[error(transparent)]
    Compliance(#[from] crate::compliance::store::ComplianceStoreError),
    /// A value could not be encoded for a download.
    #[error("cannot encode: {0}")]
    Encode(#[from] serde_json::Error),
    /// A blocking read panicked or was cancelled.
    #[error("page task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        tracing::error!(error = %self, "console page failed");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the collector could not build this page: {self}\n"),
        )
            .into_response()
    }
}

/// What the console's handlers share.
#[derive(Debug, Clone)]
pub struct ConsoleState {
    sources: Arc<Sources>,
    access: Arc<Access>,
}

impl ConsoleState {
    /// The console over a ledger and an engine, with its credentials.
    pub fn new(
        store: Arc<dyn LedgerStore>,
        engine: Arc<Engine>,
        policy: StagePolicy,
        access: Access,
    ) -> ConsoleState {
        ConsoleState {
            sources: Arc::new(Sources {
                store,
                engine,
                policy,
            }),
            access: Arc::new(access),
        }
    }

    fn frame(&self, session: Option<&Session>, now_ms: i64) -> Frame {
        Frame {
            who: session.map(|s| (s.actor.clone(), s.role == Role::Admin)),
            csrf: session.map(|s| self.access.csrf_token(s)),
            logins: self.access.has_logins(),
            now_ms,
        }
    }
}

/// The stylesheet: the file plus the bar position classes (`x0`–`x100`, `w0`–`w100`), which
/// let bars be placed without inline styles (the CSP forbids them).
static CSS: LazyLock<String> = LazyLock::new(|| {
    let mut css = include_str!("assets/console.css").to_string();
    for i in 0..=100 {
        css.push_str(&format!(".x{i}{{left:{i}%}}.w{i}{{width:{i}%}}"));
    }
    css.push('\n');
    css
});
const FAVICON: &str = include_str!("assets/favicon.svg");

/// The console's routes (`/` redirects to `/ui/`).
pub fn router(state: ConsoleState) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(models))
        .route("/ui/models/{model}", get(model_page))
        .route("/ui/models/{model}/{file}", get(report_file))
        .route("/ui/alerts", get(alerts))
        .route("/ui/alerts/ack", post(acknowledge))
        .route("/ui/alerts/dismiss", post(dismiss))
        .route("/ui/audit", get(audit))
        .route("/ui/audit/export.jsonl", get(audit_export))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route(
            "/ui/assets/console.css",
            get(|| async { asset("text/css; charset=utf-8", CSS.as_str()) }),
        )
        .route(
            "/ui/assets/favicon.svg",
            get(|| async { asset("image/svg+xml", FAVICON) }),
        )
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// The policy every console response carries: no script at all, styles and images only from
/// the collector itself, forms only to it, never framed.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
                       form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        // Pages hold compliance data and CSRF tokens: never from a shared cache.
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

fn html_response(status: StatusCode, m: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        m.into_string(),
    )
        .into_response()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ConsoleError> + Send + 'static,
) -> Result<T, ConsoleError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ConsoleError::Task)?
}

fn cookies(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
}

fn session(st: &ConsoleState, headers: &HeaderMap) -> Option<Session> {
    st.access
        .session_from_cookies(cookies(headers), crate::now_unix_ms())
}

/// A local path to return to after login; anything else (another host, a scheme) is `/ui/`.
fn safe_next(next: &str) -> &str {
    if next.starts_with("/ui/") && !next.contains("//") && !next.contains('\\') {
        next
    } else {
        "/ui/"
    }
}

/// The reader's session; a redirect to the login page when reading needs one.
fn reader(st: &ConsoleState, headers: &HeaderMap, here: &str) -> Result<Option<Session>, Redirect> {
    let s = session(st, headers);
    if s.is_none() && !st.access.read_is_open() {
        let next = html::segment(safe_next(here));
        return Err(Redirect::to(&format!("/ui/login?next={next}")));
    }
    Ok(s)
}

#[derive(Debug, Deserialize)]
struct SortQuery {
    sort: Option<String>,
}

async fn models(
    State(st): State<ConsoleState>,
    headers: HeaderMap,
    Query(q): Query<SortQuery>,
) -> Result<Response, ConsoleError> {
    let s = match reader(&st, &headers, "/ui/") {
        Ok(s) => s,
        Err(r) => return Ok(r.into_response()),
    };
    let sort = model::Sort::parse(q.sort.as_deref());
    let sources = st.sources.clone();
    let (input, page) = blocking(move || {
        let input = sources.models()?;
        let page = model::models_page(&input, sort);
        Ok((input.now_ms, page))
    })
    .await?;
    let frame = st.frame(s.as_ref(), input);
    Ok(html_response(
        StatusCode::OK,
        html::models::render(&page, &frame),
    ))
}

fn not_found(st: &ConsoleState, s: Option<&Session>, what: &str) -> Response {
    let frame = st.frame(s, st.sources.engine.now());
    html_response(
        StatusCode::NOT_FOUND,
        html::page(
            "Not found",
            Section::Models,
            &frame,
            maud::html! {
                h1 { "Not found" }
                p { (what) " " a href="/ui/" { "Back to the models" } }
            },
        ),
    )
}

async fn model_page(
    State(st): State<ConsoleState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ConsoleError> {
    let s = match reader(
        &st,
        &headers,
        &format!("/ui/models/{}", html::segment(&name)),
    ) {
        Ok(s) => s,
        Err(r) => return Ok(r.into_response()),
    };
    let sources = st.sources.clone();
    let n = name.clone();
    let Some(page) = blocking(move || Ok(sources.model(&n)?.map(model::model_page))).await? else {
        return Ok(not_found(
            &st,
            s.as_ref(),
            &format!("The ledger knows no model named {name:?}."),
        ));
    };
    let frame = st.frame(s.as_ref(), page.now_ms);
    Ok(html_response(
        StatusCode::OK,
        html::model::render(&page, &frame),
    ))
}

async fn report_file(
    State(st): State<ConsoleState>,
    headers: HeaderMap,
    Path((name, file)): Path<(String, String)>,
) -> Result<Response, ConsoleError> {
    let s = match reader(&st, &headers, "/ui/") {
        Ok(s) => s,
        Err(r) => return Ok(r.into_response()),
    };
    let (format, content_type, ext) = match file.as_str() {
        "report.txt" => (
            crate::report::Format::Text,
            "text/plain; charset=utf-8",
            "txt",
        ),
        "report.csv" => (crate::report::Format::Csv, "text/csv; charset=utf-8", "csv"),
        "report.json" => (crate::report::Format::Json, "application/json", "json"),
        _ => return Ok(not_found(&st, s.as_ref(), "No such download.")),
    };
    let store = st.sources.store.clone();
    let policy = st.sources.policy.clone();
    let n = name.clone();
    let Some(r) = blocking(move || {
        Ok(crate::report::build(
            store.as_ref(),
            &n,
            &policy,
            crate::now_unix_ms(),
        )?)
    })
    .await?
    else {
        return Ok(not_found(
            &st,
            s.as_ref(),
            &format!("The ledger knows no model named {name:?}."),
        ));
    };
    // The file name is built from safe characters only: the model name is untrusted.
    let stem: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"flopmeter-report-{stem}.{ext}\""),
            ),
        ],
        crate::report::render(&r, format),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
struct AlertsQuery {
    done: Option<String>,
    model: Option<String>,
    threshold: Option<String>,
}

async fn alerts_page(
    st: &ConsoleState,
    s: Option<&Session>,
    status: StatusCode,
    notice: Option<Notice>,
) -> Result<Response, ConsoleError> {
    let engine = st.sources.engine.clone();
    let page = blocking(move || {
        let now = engine.now();
        Ok(model::alerts_page(engine.alert_views()?, now))
    })
    .await?;
    let frame = st.frame(s, page.now_ms);
    let forms = s.filter(|s| s.role == Role::Admin).map(|s| Forms {
        csrf: st.access.csrf_token(s),
        actor: s.actor.clone(),
    });
    Ok(html_response(
        status,
        html::alerts::render(
            &page,
            &frame,
            forms.as_ref(),
            notice.as_ref(),
            st.access.has_admins(),
        ),
    ))
}

async fn alerts(
    State(st): State<ConsoleState>,
    headers: HeaderMap,
    Query(q): Query<AlertsQuery>,
) -> Result<Response, ConsoleError> {
    let s = match reader(&st, &headers, "/ui/alerts") {
        Ok(s) => s,
        Err(r) => return Ok(r.into_response()),
    };
    let notice = match (q.done.as_deref(), &q.model, &q.threshold) {
        (Some(what @ ("acknowledged" | "dismissed")), Some(m), Some(t)) => Some(Notice::Done(
            format!("{m} / {t} {what}; the audit log records who."),
        )),
        _ => None,
    };
    alerts_page(&st, s.as_ref(), StatusCode::OK, notice).await
}

/// The fields of the acknowledge and dismiss forms. Missing fields read as empty, so a
/// forged form without a CSRF token gets the CSRF refusal rather than a parse error.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ActForm {
    csrf: String,
    model: String,
    threshold: String,
    reference: String,
    reason: String,
}

/// Why a POST is refused before it does anything, if it is.
fn check_post(
    st: &ConsoleState,
    headers: &HeaderMap,
    csrf: &str,
) -> Result<Session, (StatusCode, String)> {
    let Some(s) = session(st, headers) else {
        return Err((
            StatusCode::FORBIDDEN,
            "you are not logged in (or your session ended): log in with your named admin token and submit the form again".into(),
        ));
    };
    if !st.access.csrf_ok(&s, csrf) {
        return Err((
            StatusCode::FORBIDDEN,
            "refused: the form's CSRF token is missing or wrong. Only forms served by this console can act; reload the Alerts page and submit its form".into(),
        ));
    }
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return Err((
            StatusCode::FORBIDDEN,
            format!("refused: the request came from another origin ({site})"),
        ));
    }
    Ok(s)
}

/// A person's note: bounded and printable (it goes into the audit log for ever).
fn check_note(what: &str, v: &str) -> Result<(), String> {
    if v.trim().is_empty() {
        return Err(format!("the {what} must not be empty"));
    }
    if !crate::ingest::validate::valid_name(v) {
        return Err(format!(
            "the {what} must be at most {} bytes with no control characters",
            crate::ingest::validate::MAX_NAME_LEN
        ));
    }
    Ok(())
}

async fn act(
    st: ConsoleState,
    headers: HeaderMap,
    f: ActForm,
    ack: bool,
) -> Result<Response, ConsoleError> {
    let s = match check_post(&st, &headers, &f.csrf) {
        Ok(s) => s,
        Err((code, why)) => {
            let s = session(&st, &headers);
            return alerts_page(&st, s.as_ref(), code, Some(Notice::Refused(why))).await;
        }
    };
    if s.role != Role::Admin {
        return alerts_page(
            &st,
            Some(&s),
            StatusCode::FORBIDDEN,
            Some(Notice::Refused(format!(
                "{} is logged in with a viewer token, which can read but not act: log in with a named admin token",
                s.actor
            ))),
        )
        .await;
    }
    let (what, note) = if ack {
        ("notification reference", &f.reference)
    } else {
        ("reason", &f.reason)
    };
    if let Err(why) = check_note(what, note) {
        return alerts_page(
            &st,
            Some(&s),
            StatusCode::BAD_REQUEST,
            Some(Notice::Refused(why)),
        )
        .await;
    }
    let engine = st.sources.engine.clone();
    let (model, threshold, actor, note) = (
        f.model.clone(),
        f.threshold.clone(),
        s.actor.clone(),
        note.clone(),
    );
    let done = tokio::task::spawn_blocking(move || {
        if ack {
            engine.acknowledge(&model, &threshold, &actor, &note)
        } else {
            engine.dismiss(&model, &threshold, &actor, &note)
        }
    })
    .await
    .map_err(ConsoleError::Task)?;
    match done {
        Ok(_) => {
            tracing::info!(actor = %s.actor, model = %f.model, threshold = %f.threshold, ack, "alert closed through the console");
            let q = format!(
                "/ui/alerts?done={}&model={}&threshold={}",
                if ack { "acknowledged" } else { "dismissed" },
                html::segment(&f.model),
                html::segment(&f.threshold)
            );
            Ok(Redirect::to(&q).into_response())
        }
        Err(e @ (EngineError::Refused(_) | EngineError::NoAlert { .. })) => {
            let code = if matches!(e, EngineError::NoAlert { .. }) {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::CONFLICT
            };
            alerts_page(&st, Some(&s), code, Some(Notice::Refused(e.to_string()))).await
        }
        // Another replica leads the compliance engine: a retry may reach it (behind a
        // Service or a load balancer, a new connection may land on the leader).
        Err(e) if e.is_not_leader() => {
            let mut page = alerts_page(
                &st,
                Some(&s),
                StatusCode::SERVICE_UNAVAILABLE,
                Some(Notice::Refused(e.to_string())),
            )
            .await?;
            page.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
            Ok(page)
        }
        Err(e) => Err(e.into()),
    }
}

async fn acknowledge(
    State(st): State<ConsoleState>,
    headers: HeaderMap,
    Form(f): Form<ActForm>,
) -> Result<Response, ConsoleError> {
    act(st, headers, f, true).await
}

async fn dismiss(
    State(st): State<ConsoleState>,
    headers: HeaderMap,
    Form(f): Form<ActForm>,
) -> Result<Response, ConsoleError> {
    act(st, headers, f, false).await
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    verify: Option<String>,
}

async fn audit(
    State(st): State<ConsoleState>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Result<Response, ConsoleError> {
    let s = match reader(&st, &headers, "/ui/audit") {
        Ok(s) => s,
        Err(r) => return Ok(r.into_response()),
    };
    let sources = st.sources.clone();
    let verify = q.verify.is_some_and(|v| !v.is_empty());
    let page = blocking(move || sources.audit(verify)).await?;
    let frame = st.frame(s.as_ref(), st.sources.engine.now());
    Ok(html_response(
        StatusCode::OK,
        html::audit::render(&page, &frame),
    ))
}

#[derive(Debug, Deserialize)]
struct ExportQuery {
    since: Option<String>,
}

async fn audit_export(
    State(st): State<ConsoleState>,
    headers: HeaderMap,
    Query(q): Query<ExportQuery>,
) -> Result<Response, ConsoleError> {
    if let Err(r) = reader(&st, &headers, "/ui/audit") {
        return Ok(r.into_response());
    }
    let since = match q.since.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => i64::MIN,
        Some(d) => match flopmeter_core::utc::parse_utc(d) {
            Ok(ms) => ms,
            Err(e) => {
                return Ok((
                    StatusCode::BAD_REQUEST,
                    format!("since: {e}; or leave it empty for the whole log\n"),
                )
                    .into_response());
            }
        },
    };
    let sources = st.sources.clone();
    let body = blocking(move || sources.audit_export(since)).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"flopmeter-audit.jsonl\"",
            ),
        ],
        body,
    )
        .into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct LoginForm {
    token: String,
    next: String,
}

#[derive(Debug, Deserialize)]
struct NextQuery {
    next: Option<String>,
}

fn login_response(
    st: &ConsoleState,
    status: StatusCode,
    next: &str,
    refused: Option<&str>,
) -> Response {
    let frame = st.frame(None, st.sources.engine.now());
    html_response(
        status,
        html::login::render(&frame, safe_next(next), refused, st.access.has_logins()),
    )
}

async fn login_page(State(st): State<ConsoleState>, Query(q): Query<NextQuery>) -> Response {
    login_response(
        &st,
        StatusCode::OK,
        q.next.as_deref().unwrap_or("/ui/"),
        None,
    )
}

async fn login(
    State(st): State<ConsoleState>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    // A login form posted from another origin could log a victim into the attacker's account.
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return login_response(
            &st,
            StatusCode::FORBIDDEN,
            &f.next,
            Some("Refused: the login came from another origin."),
        );
    }
    let now = crate::now_unix_ms();
    let Some((role, actor)) = st.access.identify(&f.token) else {
        return login_response(
            &st,
            StatusCode::UNAUTHORIZED,
            &f.next,
            Some(
                "That token is neither a named admin token (--admin-tokens) nor a viewer token (--viewer-tokens) of this collector. Check for a copy-paste error; the shared --admin-token names nobody and cannot log in.",
            ),
        );
    };
    let Some(value) = st.access.issue(role, &actor, now) else {
        return login_response(
            &st,
            StatusCode::UNAUTHORIZED,
            &f.next,
            Some("That token can no longer log in."),
        );
    };
    tracing::info!(%actor, role = ?role, "console login");
    let mut r = Redirect::to(safe_next(&f.next)).into_response();
    if let Ok(v) = HeaderValue::from_str(&st.access.set_cookie(&value)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct LogoutForm {
    csrf: String,
}

async fn logout(
    State(st): State<ConsoleState>,
    headers: HeaderMap,
    Form(f): Form<LogoutForm>,
) -> Response {
    if let Err((code, why)) = check_post(&st, &headers, &f.csrf) {
        return (code, why).into_response();
    }
    let mut r = Redirect::to("/ui/").into_response();
    if let Ok(v) = HeaderValue::from_str(&st.access.clear_cookie()) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// Guards `/api/v1` with the console's read access: when viewer tokens are configured, a
/// request needs `Authorization: Bearer <viewer or admin token>` or a console session.
/// `/metrics`, `/healthz` and `/readyz` stay open for scrapers and probes.
pub async fn guard_api(State(access): State<Arc<Access>>, req: Request, next: Next) -> Response {
    if access.read_is_open() || !req.uri().path().starts_with("/api/") {
        return next.run(req).await;
    }
    let headers = req.headers();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let allowed = bearer.is_some_and(|t| access.identify(t).is_some())
        || access
            .session_from_cookies(cookies(headers), crate::now_unix_ms())
            .is_some();
    if allowed {
        next.run(req).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            axum::Json(serde_json::json!({
                "error": "this collector requires a viewer or admin token for reads: send Authorization: Bearer <token> (--viewer-tokens / --admin-tokens)"
            })),
        )
            .into_response()
    }
}
