//! `/api/jobs/runs`: the run history, newest first, in brief; `/api/jobs/runs/{id}`:
//! one run with its whole report.

use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Json, Response};
use serde_json::json;

use super::{ApiError, AppState, read_or_unavailable};
use crate::jobs::Job;
use crate::model::MAX_RUNS_LISTED;

/// Runs a listing shows when the request does not say.
const DEFAULT_LIMIT: u32 = 20;

/// `GET /api/jobs/runs?limit=N&job=NAME`: the `N` most recent runs (20 by default,
/// at most 100), of one job or of all, each with its summary and without its report,
/// so the answer stays small however long the runs were.
pub(super) async fn recent(State(state): State<AppState>, RawQuery(query): RawQuery) -> Response {
    let mut limit = None;
    let mut job: Option<Job> = None;
    for (key, value) in form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        if key == "job" {
            let named = match value.parse::<Job>() {
                Ok(named) => named,
                Err(message) => {
                    return ApiError::bad_request("unknown_job", message).into_response();
                }
            };
            if job.replace(named).is_some() {
                return ApiError::bad_request("invalid_query", "'job' is given more than once")
                    .into_response();
            }
            continue;
        }
        if key != "limit" {
            return ApiError::bad_request(
                "unknown_field",
                format!(
                    "unknown parameter '{}'; expected limit or job",
                    key.escape_debug()
                ),
            )
            .into_response();
        }
        let parsed = match value.parse::<u32>() {
            Ok(n) if (1..=MAX_RUNS_LISTED).contains(&n) => n,
            _ => {
                return ApiError::bad_request(
                    "invalid_limit",
                    format!("limit must be a whole number from 1 to {MAX_RUNS_LISTED}"),
                )
                .into_response();
            }
        };
        if limit.replace(parsed).is_some() {
            return ApiError::bad_request("invalid_query", "'limit' is given more than once")
                .into_response();
        }
    }
    let read = state
        .launcher
        .store()
        .recent_runs_of(limit.unwrap_or(DEFAULT_LIMIT), job.map(|job| job.name()));
    match read_or_unavailable(&state, read).await {
        Ok(runs) => Json(json!({ "runs": runs })).into_response(),
        Err(error) => error.into_response(),
    }
}

/// `GET /api/jobs/runs/{id}`: one run, its report included.
pub(super) async fn one(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return ApiError::RunNotFound.into_response();
    };
    match read_or_unavailable(&state, state.launcher.store().run(id)).await {
        Ok(Some(run)) => Json(run).into_response(),
        Ok(None) => ApiError::RunNotFound.into_response(),
        Err(error) => error.into_response(),
    }
}
