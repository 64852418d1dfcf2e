//! The HTTP endpoint: `veris-jobs serve`.
//!
//! [`router`] answers `/api/jobs/telemetry-daily` (GET and POST: a run),
//! `/api/jobs/runs` (the run history) and `/metrics`, all bearer-protected, and
//! `/healthz`; it is a plain axum `Router`, so an existing axum application can mount
//! it. [`serve`] runs it on a listener until a shutdown signal, then waits for the
//! runs under way to finish; it cuts off clients that take too long to send a
//! request's headers or body. Handlers parse, call the [`Runner`] or the store's
//! readers, and answer; the SQL stays in [`crate::store`].
//!
//! A run started by a request goes on to its end even if the caller hangs up: it
//! runs on a task of its own, whose outcome is logged.

mod auth;
mod error;
mod request;

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::net::TcpListener;

pub(crate) use self::error::ApiError;
pub(crate) use self::request::RunRequest;

use crate::config::CronSecret;
use crate::model::{RunReport, Trigger};
use crate::runner::Runner;
use crate::store::{RollupStore as _, RunHistory as _, Store, StoreError};
use crate::telemetry_daily::{RunError, RunOptions};

/// The largest request body accepted.
pub(crate) const MAX_BODY_BYTES: usize = 16 * 1024;

/// How long a client may take to send its request body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may take to send a request's line and headers; a connection
/// that takes longer is closed.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The job's path.
pub(crate) const JOB_PATH: &str = "/api/jobs/telemetry-daily";

/// The run history's path.
pub(crate) const RUNS_PATH: &str = "/api/jobs/runs";

/// What the handlers share: the runner (and through it the store), the limits of a
/// request, and the secret.
#[derive(Debug, Clone)]
pub struct AppState {
    runner: Runner,
    max_range_days: u32,
    secret: Arc<CronSecret>,
    body_timeout: Duration,
    header_timeout: Duration,
}

impl AppState {
    /// State for a router over `store`. `job` gives the zone, top-K and lookback of
    /// every run (its range, dry-run and lock timeout are set per request);
    /// `max_range_days` caps the range one request may ask for.
    pub fn new(store: Store, job: RunOptions, max_range_days: u32, secret: CronSecret) -> Self {
        Self::with_runner(Runner::new(store, job), max_range_days, secret)
    }

    /// State for a router whose runs `runner` starts (shared with the schedule, say).
    pub fn with_runner(runner: Runner, max_range_days: u32, secret: CronSecret) -> Self {
        Self {
            runner,
            max_range_days,
            secret: Arc::new(secret),
            body_timeout: BODY_TIMEOUT,
            header_timeout: HEADER_TIMEOUT,
        }
    }

    /// The same state with another limit on how long a request body may take to
    /// arrive (default [`BODY_TIMEOUT`]).
    pub fn with_body_timeout(mut self, timeout: Duration) -> Self {
        self.body_timeout = timeout;
        self
    }

    /// The same state with another limit on how long [`serve`] lets a request's line
    /// and headers take to arrive (default [`HEADER_TIMEOUT`]).
    pub fn with_header_timeout(mut self, timeout: Duration) -> Self {
        self.header_timeout = timeout;
        self
    }

    fn secret(&self) -> &CronSecret {
        &self.secret
    }

    /// Runs a request's job and waits for it. If the caller goes away, the run
    /// still finishes.
    async fn run(&self, request: RunRequest) -> Result<RunReport, ApiError> {
        let options = RunOptions {
            range: request.range,
            dry_run: request.dry_run,
            force: false,
            changed: false,
            // A day held by another run is answered 409 at once, never waited for.
            lock_timeout: Duration::ZERO,
            trigger: Trigger::Http,
            ..self.runner.job().clone()
        };
        match self.runner.spawn(options).await {
            Ok(outcome) => outcome.map_err(run_error),
            Err(join_error) => Err(ApiError::Internal(format!(
                "the run ended abnormally: {join_error}"
            ))),
        }
    }
}

/// The endpoint's routes, ready to serve or to mount in another axum application.
pub fn router(state: AppState) -> Router {
    let not_allowed = || async { ApiError::MethodNotAllowed { allow: "GET, POST" } };
    // HEAD is answered 405 rather than served as a GET: a probe must not start a run.
    let job = get(run_from_query)
        .post(run_from_body)
        .head(not_allowed)
        .fallback(not_allowed);
    let protected = Router::new()
        .route(JOB_PATH, job.clone())
        // Served as it is, never redirected: cron callers do not follow redirects.
        .route(&format!("{JOB_PATH}/"), job)
        .route(
            "/metrics",
            get(metrics).fallback(|| async { ApiError::MethodNotAllowed { allow: "GET" } }),
        )
        .route(RUNS_PATH, runs_route())
        .route(&format!("{RUNS_PATH}/"), runs_route())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_bearer,
        ));
    Router::new()
        .merge(protected)
        .route(
            "/healthz",
            get(healthz).fallback(|| async { ApiError::MethodNotAllowed { allow: "GET" } }),
        )
        .fallback(not_found)
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

/// Serves `router(state)` on `listener` until `shutdown` completes; then stops
/// accepting connections, lets the requests under way be answered, and waits for
/// every run under way to finish.
///
/// HTTP/1.1 only. A connection whose request line and headers take longer than the
/// state's header timeout is closed, so slow clients can neither pile up open
/// connections nor hold up a shutdown.
///
/// An error accepting a connection (out of file descriptors, say) is logged, and
/// serving goes on.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let runner = state.runner.clone();
    let mut http = hyper::server::conn::http1::Builder::new();
    // hyper times out a request's head only when it has a timer.
    http.timer(TokioTimer::new())
        .header_read_timeout(state.header_timeout);
    let service = TowerToHyperService::new(router(state));
    let connections = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    accept_failed(&error).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let connection = http.serve_connection(TokioIo::new(stream), service.clone());
        let connection = connections.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection closed with an error");
            }
        });
    }
    drop(listener);
    // Idle connections close now; a request under way is answered first.
    connections.shutdown().await;
    runner.wait().await;
}

/// What to do when accepting a connection failed. A client that gave up before it was
/// accepted is no concern; anything else (out of file descriptors, say) is logged and
/// followed by a pause, so as not to spin while it lasts.
async fn accept_failed(error: &std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "accepting a connection failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// The requested range, passed from the handler to the request log line.
#[derive(Debug, Clone, Copy)]
struct Requested(RunRequest);

async fn run_from_query(State(state): State<AppState>, RawQuery(query): RawQuery) -> Response {
    match RunRequest::from_query(query.as_deref().unwrap_or(""), state.max_range_days) {
        Ok(request) => run_and_answer(&state, request).await,
        Err(error) => error.into_response(),
    }
}

async fn run_from_body(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    // A client that sends its body slowly, or never finishes it, is cut off.
    let read = axum::body::to_bytes(body, MAX_BODY_BYTES);
    let body = match tokio::time::timeout(state.body_timeout, read).await {
        Ok(Ok(body)) => body,
        Ok(Err(error)) => {
            let too_large = std::error::Error::source(&error)
                .is_some_and(|e| e.is::<http_body_util::LengthLimitError>());
            return if too_large {
                ApiError::PayloadTooLarge.into_response()
            } else {
                ApiError::bad_request(
                    "invalid_body",
                    format!("the request body could not be read: {error}"),
                )
                .into_response()
            };
        }
        Err(_) => return ApiError::RequestTimeout.into_response(),
    };
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if !body.iter().all(u8::is_ascii_whitespace) && !is_json {
        return ApiError::UnsupportedMediaType.into_response();
    }
    match RunRequest::from_json(&body, state.max_range_days) {
        Ok(request) => run_and_answer(&state, request).await,
        Err(error) => error.into_response(),
    }
}

async fn run_and_answer(state: &AppState, request: RunRequest) -> Response {
    let mut response = match state.run(request).await {
        Ok(report) => {
            let status = if report.ok {
                StatusCode::OK
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            (status, Json(report)).into_response()
        }
        Err(error) => error.into_response(),
    };
    response.extensions_mut().insert(Requested(request));
    response
}

fn run_error(error: RunError) -> ApiError {
    match error {
        RunError::Store(busy @ StoreError::DayBusy { .. }) => ApiError::Conflict(busy.to_string()),
        RunError::Store(store) if store.is_unreachable() => {
            ApiError::Unavailable(store.to_string())
        }
        RunError::Date(date) => ApiError::bad_request("invalid_range", date.to_string()),
        other => ApiError::Internal(other.to_string()),
    }
}

/// `GET /metrics`: the runs of this process, in Prometheus text format.
async fn metrics(State(state): State<AppState>) -> Response {
    let content_type = [(
        header::CONTENT_TYPE,
        "text/plain; version=0.0.4; charset=utf-8",
    )];
    (content_type, state.runner.metrics().render()).into_response()
}

fn runs_route() -> axum::routing::MethodRouter<AppState> {
    get(recent_runs).fallback(|| async { ApiError::MethodNotAllowed { allow: "GET" } })
}

/// `GET /api/jobs/runs?limit=N`: the most recent runs, newest first (20 by default).
async fn recent_runs(State(state): State<AppState>, RawQuery(query): RawQuery) -> Response {
    let mut limit = 20u32;
    for (key, value) in form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        if key != "limit" {
            return ApiError::bad_request(
                "unknown_field",
                format!("unknown parameter '{}'; expected limit", key.escape_debug()),
            )
            .into_response();
        }
        match value.parse::<u32>() {
            Ok(n) if (1..=10_000).contains(&n) => limit = n,
            _ => {
                return ApiError::bad_request(
                    "invalid_limit",
                    "limit must be a whole number from 1 to 10000",
                )
                .into_response();
            }
        }
    }
    match state.runner.store().recent_runs(limit).await {
        Ok(runs) => Json(json!({ "runs": runs })).into_response(),
        Err(error) if error.is_unreachable() => {
            ApiError::Unavailable(error.to_string()).into_response()
        }
        Err(error) => ApiError::Internal(error.to_string()).into_response(),
    }
}

async fn healthz(State(state): State<AppState>) -> Response {
    if state.runner.store().ping().await {
        Json(json!({"status": "ok"})).into_response()
    } else {
        ApiError::Unavailable("the database does not answer".into()).into_response()
    }
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// One log line per request: method, path, status, duration and, for runs, the
/// requested range. Headers are never logged, so the secret cannot leak here.
async fn log_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let requested = response.extensions().get::<Requested>().map(|r| r.0);
    let range = requested
        .and_then(|r| r.range)
        .map_or_else(|| "default".to_owned(), |range| range.to_string());
    tracing::info!(
        %method,
        path,
        status = response.status().as_u16(),
        duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        range = requested.map(|_| range),
        dry_run = requested.map(|r| r.dry_run),
        "request"
    );
    response
}
