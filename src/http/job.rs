//! `/api/jobs/telemetry-daily`: a run from a GET's query string or a POST's JSON
//! body, answered with its report.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Extension, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use tokio::task::JoinHandle;

use super::log::RequestedSlot;
use super::request::RunRequest;
use super::{ApiError, AppState, MAX_BODY_BYTES};
use crate::model::{RunReport, Trigger};
use crate::store::StoreError;
use crate::telemetry_daily::{RunError, RunOptions};

/// `GET`: the fields in the query string, and no body.
pub(super) async fn run_from_query(
    State(state): State<AppState>,
    slot: Option<Extension<RequestedSlot>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    if has_body(&headers) {
        return ApiError::bad_request(
            "invalid_body",
            "a GET takes its fields in the query string and no body; send a body with POST",
        )
        .into_response();
    }
    match RunRequest::from_query(query.as_deref().unwrap_or(""), state.max_range_days) {
        Ok(request) => run_and_answer(&state, slot, request).await,
        Err(error) => error.into_response(),
    }
}

/// Whether the request announces a body.
pub(super) fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|length| length.as_bytes() != b"0")
}

/// `POST`: the fields in a JSON body, and no query string.
pub(super) async fn run_from_body(
    State(state): State<AppState>,
    slot: Option<Extension<RequestedSlot>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = match json_body(&state, query, &headers, body).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    match RunRequest::from_json(&body, state.max_range_days) {
        Ok(request) => run_and_answer(&state, slot, request).await,
        Err(error) => error.into_response(),
    }
}

/// A POST's JSON body, read within the state's body timeout; or the answer that
/// refuses it (a query string, a body too large, slow or not JSON).
pub(super) async fn json_body(
    state: &AppState,
    query: Option<String>,
    headers: &HeaderMap,
    body: Body,
) -> Result<axum::body::Bytes, Response> {
    if query.is_some_and(|q| !q.is_empty()) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "a POST takes its fields in the JSON body, not in the query string",
        )
        .into_response());
    }
    // A client that sends its body slowly, or never finishes it, is cut off.
    let read = axum::body::to_bytes(body, MAX_BODY_BYTES);
    let body = match tokio::time::timeout(state.body_timeout, read).await {
        Ok(Ok(body)) => body,
        Ok(Err(error)) => {
            let too_large = std::error::Error::source(&error)
                .is_some_and(|e| e.is::<http_body_util::LengthLimitError>());
            return Err(if too_large {
                ApiError::PayloadTooLarge.into_response()
            } else {
                ApiError::bad_request(
                    "invalid_body",
                    format!("the request body could not be read: {error}"),
                )
                .into_response()
            });
        }
        Err(_) => return Err(ApiError::RequestTimeout.into_response()),
    };
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if !body.iter().all(u8::is_ascii_whitespace) && !is_json {
        return Err(ApiError::UnsupportedMediaType.into_response());
    }
    Ok(body)
}

async fn run_and_answer(
    state: &AppState,
    slot: Option<Extension<RequestedSlot>>,
    request: RunRequest,
) -> Response {
    if let Some(Extension(slot)) = slot {
        slot.set(request);
    }
    match run(state, request).await {
        Ok(report) => {
            let status = if report.ok {
                StatusCode::OK
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            (status, Json(report)).into_response()
        }
        Err(error) => error.into_response(),
    }
}

/// Runs a request's job and waits for it. If the caller goes away, a run that
/// writes still finishes; a dry run is stopped.
async fn run(state: &AppState, request: RunRequest) -> Result<RunReport, ApiError> {
    let options = RunOptions {
        range: request.range,
        dry_run: request.dry_run,
        force: false,
        changed: false,
        // A day held by another run is answered 409 at once, never waited for.
        lock_timeout: Duration::ZERO,
        trigger: Trigger::Http,
        ..state.launcher.job().clone()
    };
    let handle = state
        .launcher
        .launch_requested(options)
        .map_err(|busy| ApiError::TooManyRuns(busy.to_string()))?;
    match (StopIfDropped {
        handle,
        armed: request.dry_run,
    })
    .await
    {
        Ok(outcome) => outcome.map_err(run_error),
        Err(join_error) => Err(ApiError::Internal(format!(
            "the run ended abnormally: {join_error}"
        ))),
    }
}

/// A run's handle that, when `armed`, stops the run if dropped before it ended
/// (its caller hung up).
pub(super) struct StopIfDropped<T> {
    pub(super) handle: JoinHandle<T>,
    pub(super) armed: bool,
}

impl<T> Future for StopIfDropped<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.handle).poll(cx)
    }
}

impl<T> Drop for StopIfDropped<T> {
    fn drop(&mut self) {
        if self.armed && !self.handle.is_finished() {
            tracing::info!("dry run stopped: its caller hung up");
            self.handle.abort();
        }
    }
}

fn run_error(error: RunError) -> ApiError {
    match error {
        RunError::Store(busy @ StoreError::DayBusy { .. }) => ApiError::Conflict(busy.to_string()),
        RunError::Store(store) if store.is_unreachable() => {
            tracing::warn!(error = %store, "a run could not start");
            ApiError::Unavailable(store.without_addresses())
        }
        RunError::Store(error @ (StoreError::LockFile { .. } | StoreError::LockLost(_))) => {
            // The details (a path on this server) go to the log, not to the caller.
            tracing::error!(%error, "the day locks could not be taken");
            ApiError::LocksUnavailable
        }
        RunError::Date(date) => super::request::date_error(date),
        other => ApiError::internal(&other),
    }
}
