//! The HTTP endpoint: `veris-jobs serve`.
//!
//! [`router`] answers `/api/jobs/telemetry-daily` (GET and POST: a run, with
//! `CRON_SECRET`), `/api/jobs/runs` and `/api/jobs/runs/{id}` (the run history),
//! `/api/telemetry/report` (the rollups read back) and `/metrics` (with `READ_SECRET`
//! or `CRON_SECRET`), `/healthz`, and `/` (the dashboard page and its `/assets/`); it is a plain axum `Router`, so an existing axum
//! application can mount it. [`serve`] runs it on a listener until a shutdown
//! signal, then waits for the runs under way to finish. Handlers parse, call the
//! [`Launcher`] or the store's readers, and answer; the SQL stays in [`crate::store`].
//!
//! What a request cannot take from the server: more than [`MAX_CONNECTIONS`] open
//! connections (the rest wait in the kernel's queue), more than the launcher's limit of
//! runs at once (429), a head or body that never finishes (cut off), a listing that
//! grows with the history (at most 100 runs, without their reports). Ambiguous
//! requests are refused rather than guessed at.
//!
//! A run started by a request goes on to its end even if the caller hangs up: it
//! runs on a task of its own, whose outcome is logged. A dry run whose caller hangs
//! up is stopped: it would write nothing, and no one is left to read its report.

mod auth;
mod dashboard;
mod error;
mod job;
mod log;
mod purge;
mod report;
mod request;
mod runs;
mod write_deadline;

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::middleware;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{MethodRouter, get};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub(crate) use self::error::ApiError;

use self::write_deadline::WriteDeadline;
use crate::config::{CronSecret, Secret};
use crate::launcher::Launcher;
use crate::store::{Store, StoreError};
use crate::telemetry_daily::RunOptions;

/// The largest request body accepted.
pub(crate) const MAX_BODY_BYTES: usize = 16 * 1024;

/// How long a client may take to send its request body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may take to send a request's line and headers; a connection
/// that takes longer is closed.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an answer may wait for its client to read more of it; a connection whose
/// client reads nothing for longer is closed, and its answer's memory freed.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a shutdown waits for the answers under way to be read before it closes
/// their connections (runs under way are still waited for).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The longest request target (path and query) answered; longer ones get a 414 with
/// a JSON body. No endpoint needs more than a few hundred bytes.
const MAX_URI_BYTES: usize = 8 * 1024;

/// Connections [`serve`] holds open at once by default; further clients wait in the
/// kernel's accept queue until one closes.
pub const MAX_CONNECTIONS: usize = 512;

/// The job's path.
pub(crate) const JOB_PATH: &str = "/api/jobs/telemetry-daily";

/// The purge's path.
pub(crate) const PURGE_PATH: &str = "/api/jobs/telemetry-purge";

/// The run history's path.
pub(crate) const RUNS_PATH: &str = "/api/jobs/runs";

/// The telemetry report's path.
pub(crate) const REPORT_PATH: &str = "/api/telemetry/report";

/// What the handlers share: the launcher (and through it the store), the limits of a
/// request, and the secret.
#[derive(Debug, Clone)]
pub struct AppState {
    launcher: Launcher,
    max_range_days: u32,
    /// The purge's `keepDays` when a request gives none (`TELEMETRY_KEEP_DAYS`).
    keep_days: Option<u32>,
    secret: Arc<CronSecret>,
    read_secret: Option<Arc<Secret>>,
    body_timeout: Duration,
    header_timeout: Duration,
    write_timeout: Duration,
    max_connections: usize,
}

impl AppState {
    /// State for a router over `store`. `job` gives the zone, top-K and lookback of
    /// every run (its range, dry-run and lock timeout are set per request);
    /// `max_range_days` caps the range one request may ask for.
    pub fn new(store: Store, job: RunOptions, max_range_days: u32, secret: CronSecret) -> Self {
        Self::with_launcher(Launcher::new(store, job), max_range_days, secret)
    }

    /// State for a router whose runs `launcher` starts (shared with the schedule, say).
    pub fn with_launcher(launcher: Launcher, max_range_days: u32, secret: CronSecret) -> Self {
        Self {
            launcher,
            max_range_days,
            keep_days: None,
            secret: Arc::new(secret),
            read_secret: None,
            body_timeout: BODY_TIMEOUT,
            header_timeout: HEADER_TIMEOUT,
            write_timeout: WRITE_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
        }
    }

    /// The same state purging `keep_days` days when a request says nothing
    /// (`TELEMETRY_KEEP_DAYS`).
    pub fn with_keep_days(mut self, keep_days: Option<u32>) -> Self {
        self.keep_days = keep_days;
        self
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

    /// The same state with another limit on how long [`serve`] lets an answer wait
    /// for its client to read (default [`WRITE_TIMEOUT`]).
    pub fn with_write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// The same state with another cap on the connections [`serve`] holds open
    /// (default [`MAX_CONNECTIONS`]).
    pub fn with_max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections.max(1);
        self
    }

    /// The same state accepting `secret` (`READ_SECRET`) too on the routes that only
    /// read: the report, the run history and the metrics.
    pub fn with_read_secret(mut self, secret: Secret) -> Self {
        self.read_secret = Some(Arc::new(secret));
        self
    }

    fn secret(&self) -> &CronSecret {
        &self.secret
    }

    fn read_secret(&self) -> Option<&Secret> {
        self.read_secret.as_deref()
    }
}

/// A route that answers `allow`ed methods and 405 to any other, HEAD included (a
/// probe must not start a run, and a HEAD of a listing would read it for nothing).
fn only(route: MethodRouter<AppState>, allow: &'static str) -> MethodRouter<AppState> {
    let not_allowed = move || async move { ApiError::MethodNotAllowed { allow } };
    route.head(not_allowed).fallback(not_allowed)
}

/// The endpoint's routes, ready to serve or to mount in another axum application.
pub fn router(state: AppState) -> Router {
    let run = || {
        only(
            get(job::run_from_query).post(job::run_from_body),
            "GET, POST",
        )
    };
    let purge = || {
        only(
            get(purge::purge_from_query).post(purge::purge_from_body),
            "GET, POST",
        )
    };
    let runs = || only(get(runs::recent), "GET");
    // Every job of the registry at /api/jobs/{job}; any other name is 404.
    let runs_jobs = Router::new()
        .route(JOB_PATH, run())
        // Served as they are, never redirected: cron callers do not follow redirects.
        .route(&format!("{JOB_PATH}/"), run())
        .route(PURGE_PATH, purge())
        .route(&format!("{PURGE_PATH}/"), purge())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_cron,
        ));
    let reads = Router::new()
        .route(RUNS_PATH, runs())
        .route(&format!("{RUNS_PATH}/"), runs())
        .route(&format!("{RUNS_PATH}/{{id}}"), only(get(runs::one), "GET"))
        .route(REPORT_PATH, only(get(report::report), "GET"))
        .route("/metrics", only(get(metrics), "GET"))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_reader,
        ));
    Router::new()
        .merge(runs_jobs)
        .merge(reads)
        .route("/healthz", only(get(healthz), "GET"))
        .route("/", only(get(dashboard::page), "GET"))
        .route("/assets/{name}", only(get(dashboard::asset), "GET"))
        .fallback(|| async { ApiError::NotFound })
        .layer(middleware::from_fn(refuse_long_uris))
        .layer(middleware::map_response(not_cached))
        .layer(middleware::from_fn(log::log_request))
        .with_state(state)
}

/// A 414 with the usual JSON body for a request target over [`MAX_URI_BYTES`].
async fn refuse_long_uris(request: axum::extract::Request, next: middleware::Next) -> Response {
    let length = request
        .uri()
        .path_and_query()
        .map_or(0, |target| target.as_str().len());
    if length > MAX_URI_BYTES {
        return ApiError::UriTooLong.into_response();
    }
    next.run(request).await
}

/// Answers are the state of the moment, some of them private: no cache keeps one,
/// unless the route says otherwise (the dashboard's files are revalidated).
async fn not_cached(mut response: Response) -> Response {
    response
        .headers_mut()
        .entry(header::CACHE_CONTROL)
        .or_insert(header::HeaderValue::from_static("no-store"));
    response
}

/// Serves `router(state)` on `listener` until `shutdown` completes; then stops
/// accepting connections, lets the requests under way be answered, and waits for
/// every run under way to finish.
///
/// HTTP/1.1 only. A connection whose request line and headers take longer than the
/// state's header timeout is closed, so slow clients can neither pile up open
/// connections nor hold up a shutdown; past the state's connection cap, further
/// clients wait to be accepted.
///
/// An error accepting a connection (out of file descriptors, say) is logged, and
/// serving goes on.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let launcher = state.launcher.clone();
    let open = Arc::new(Semaphore::new(state.max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    // hyper times out a request's head only when it has a timer.
    http.timer(TokioTimer::new())
        .header_read_timeout(state.header_timeout);
    let write_timeout = state.write_timeout;
    let service = TowerToHyperService::new(router(state));
    let connections = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, place) = tokio::select! {
            // A place is taken before accepting, so that past the cap clients wait in
            // the kernel's queue rather than in this process's memory.
            accepted = async {
                let place = Arc::clone(&open).acquire_owned().await;
                (listener.accept().await, place)
            } => match accepted {
                (Ok((stream, _)), Ok(place)) => (stream, place),
                (Err(error), _) => {
                    accept_failed(&error).await;
                    continue;
                }
                // The semaphore is never closed.
                (Ok(_), Err(_)) => continue,
            },
            () = &mut shutdown => break,
        };
        let stream = WriteDeadline::new(stream, write_timeout);
        let connection = http.serve_connection(TokioIo::new(stream), service.clone());
        let connection = connections.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection closed with an error");
            }
            drop(place);
        });
    }
    drop(listener);
    // Idle connections close now; a request under way is answered first, unless its
    // client is too slow to take the answer.
    if tokio::time::timeout(SHUTDOWN_GRACE, connections.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_s = SHUTDOWN_GRACE.as_secs(),
            "answers still unread at shutdown were dropped"
        );
    }
    launcher.wait().await;
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

/// `GET /metrics`: the runs of this process, in Prometheus text format.
async fn metrics(State(state): State<AppState>) -> Response {
    let content_type = [(
        header::CONTENT_TYPE,
        "text/plain; version=0.0.4; charset=utf-8",
    )];
    (content_type, state.launcher.metrics().render()).into_response()
}

/// How long a read may take before the health check is asked whether the database
/// answers at all: a read that answers sooner costs no check.
const READ_BEFORE_CHECK: Duration = Duration::from_millis(500);

/// The answer of `read`, a read of the database for a request. 503 when the
/// database does not answer: as soon as the health check, asked once the read is
/// slow, finds it down (the pool would wait its whole acquire timeout for a server
/// that refuses connections), or when the read failed and the check confirms it;
/// any other failure is a 500.
async fn read_or_unavailable<T>(
    state: &AppState,
    read: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, ApiError> {
    let store = state.launcher.store();
    let down = async {
        tokio::time::sleep(READ_BEFORE_CHECK).await;
        if store.ping().await {
            std::future::pending::<()>().await;
        }
    };
    let failed = tokio::select! {
        biased;
        answer = read => match answer {
            Ok(value) => return Ok(value),
            Err(error) => error,
        },
        () = down => {
            return Err(ApiError::Unavailable("the database does not answer".into()));
        }
    };
    if failed.is_unreachable() || !store.ping().await {
        tracing::warn!(error = %failed, "a read of the database failed");
        Err(ApiError::Unavailable(failed.without_addresses()))
    } else {
        Err(ApiError::internal(&failed))
    }
}

/// `GET /healthz`: 200 when the database (and the source of events, when it is
/// elsewhere) answers, else 503.
async fn healthz(State(state): State<AppState>) -> Response {
    let store = state.launcher.store();
    if store.ping().await {
        if store.is_migrated().await {
            Json(json!({"status": "ok"})).into_response()
        } else {
            ApiError::Unavailable(
                "the database answers but has no rollup tables: run `veris-jobs migrate` first"
                    .into(),
            )
            .into_response()
        }
    } else if store.has_external_source() {
        ApiError::Unavailable("the database or the source of events does not answer".into())
            .into_response()
    } else {
        ApiError::Unavailable("the database does not answer".into()).into_response()
    }
}
