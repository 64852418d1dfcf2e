//! `/api/jobs/telemetry-purge`: a purge from a GET's query string or a POST's JSON
//! body (`keepDays`, `dryRun`, `batchSize`), answered with its report.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use serde_json::Value;

use super::job::{StopIfDropped, has_body, json_body};
use super::request::Fields;
use super::{ApiError, AppState};
use crate::model::Trigger;
use crate::store::StoreError;
use crate::telemetry_purge::{DEFAULT_BATCH_SIZE, PurgeError, PurgeOptions};

/// A validated request to purge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PurgeRequest {
    /// `None`: the server's `TELEMETRY_KEEP_DAYS`.
    pub keep_days: Option<u32>,
    pub dry_run: bool,
    /// `None`: the default.
    pub batch_size: Option<u32>,
}

const FIELDS: &str = "keepDays, dryRun or batchSize";

impl PurgeRequest {
    /// Reads `keepDays`, `dryRun` and `batchSize` from a query string.
    ///
    /// # Errors
    ///
    /// [`ApiError::BadRequest`] for an unknown or repeated parameter or a bad value.
    pub fn from_query(query: &str) -> Result<Self, ApiError> {
        let mut request = Self::default();
        let mut seen: Vec<String> = Vec::new();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            if seen.iter().any(|k| *k == key) {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!("'{key}' is given more than once"),
                ));
            }
            seen.push(key.to_string());
            match key.as_ref() {
                "keepDays" => request.keep_days = Some(positive("keepDays", &value)?),
                "batchSize" => request.batch_size = Some(positive("batchSize", &value)?),
                "dryRun" => {
                    request.dry_run = match value.as_ref() {
                        "true" => true,
                        "false" => false,
                        other => {
                            return Err(ApiError::bad_request(
                                "invalid_dry_run",
                                format!(
                                    "dryRun must be true or false, not '{}'",
                                    other.escape_debug()
                                ),
                            ));
                        }
                    }
                }
                other => return Err(unknown_field(other)),
            }
        }
        Ok(request)
    }

    /// Reads the JSON body `{"keepDays", "dryRun", "batchSize"}`, every field
    /// optional.
    ///
    /// # Errors
    ///
    /// [`ApiError::BadRequest`] for malformed JSON, an unknown field or a bad value.
    pub fn from_json(body: &[u8]) -> Result<Self, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        // The run's own reader of a body: a JSON object, no key given twice.
        let Fields(fields) = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(
                "invalid_json",
                format!("the body is not a JSON object: {e}"),
            )
        })?;
        let mut request = Self::default();
        for (key, value) in &fields {
            match (key.as_str(), value) {
                (_, Value::Null) => {}
                ("keepDays", value) => request.keep_days = Some(positive_json("keepDays", value)?),
                ("batchSize", value) => {
                    request.batch_size = Some(positive_json("batchSize", value)?);
                }
                ("dryRun", Value::Bool(dry_run)) => request.dry_run = *dry_run,
                ("dryRun", _) => {
                    return Err(ApiError::bad_request(
                        "invalid_dry_run",
                        "dryRun must be true or false",
                    ));
                }
                (other, _) => return Err(unknown_field(other)),
            }
        }
        Ok(request)
    }
}

fn positive(name: &str, text: &str) -> Result<u32, ApiError> {
    text.parse::<u32>()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| not_positive(name))
}

fn positive_json(name: &str, value: &Value) -> Result<u32, ApiError> {
    value
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n >= 1)
        .ok_or_else(|| not_positive(name))
}

fn not_positive(name: &str) -> ApiError {
    ApiError::bad_request(
        "invalid_number",
        format!("{name} must be a whole number from 1 to 4294967295"),
    )
}

fn unknown_field(name: &str) -> ApiError {
    ApiError::bad_request(
        "unknown_field",
        format!("unknown field '{}'; expected {FIELDS}", name.escape_debug()),
    )
}

/// `GET`: the fields in the query string, and no body.
pub(super) async fn purge_from_query(
    State(state): State<AppState>,
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
    match PurgeRequest::from_query(query.as_deref().unwrap_or("")) {
        Ok(request) => purge_and_answer(&state, request).await,
        Err(error) => error.into_response(),
    }
}

/// `POST`: the fields in a JSON body, and no query string.
pub(super) async fn purge_from_body(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = match json_body(&state, query, &headers, body).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    match PurgeRequest::from_json(&body) {
        Ok(request) => purge_and_answer(&state, request).await,
        Err(error) => error.into_response(),
    }
}

async fn purge_and_answer(state: &AppState, request: PurgeRequest) -> Response {
    let Some(keep_days) = request.keep_days.or(state.keep_days) else {
        return ApiError::bad_request(
            "keep_days_required",
            "telemetry-purge needs keepDays (or the server's TELEMETRY_KEEP_DAYS): the days of raw events to keep, ending yesterday",
        )
        .into_response();
    };
    let options = PurgeOptions {
        keep_days,
        dry_run: request.dry_run,
        batch_size: request.batch_size.unwrap_or(DEFAULT_BATCH_SIZE),
        trigger: Trigger::Http,
        job: crate::telemetry_daily::RunOptions {
            // A day held by a run is answered 409 at once, never waited for.
            lock_timeout: std::time::Duration::ZERO,
            ..state.launcher.job().clone()
        },
    };
    let handle = match state.launcher.launch_requested_purge(options) {
        Ok(handle) => handle,
        Err(busy) => return ApiError::TooManyRuns(busy.to_string()).into_response(),
    };
    let outcome = StopIfDropped {
        handle,
        armed: request.dry_run,
    }
    .await;
    match outcome {
        Ok(Ok(report)) => {
            let status = if report.ok {
                StatusCode::OK
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            (status, Json(report)).into_response()
        }
        Ok(Err(error)) => purge_error(error).into_response(),
        Err(join_error) => {
            ApiError::Internal(format!("the purge ended abnormally: {join_error}")).into_response()
        }
    }
}

fn purge_error(error: PurgeError) -> ApiError {
    match error {
        PurgeError::KeepDaysRequired => {
            ApiError::bad_request("keep_days_required", error.to_string())
        }
        PurgeError::UnsupportedSource => {
            ApiError::bad_request("unsupported_source", error.to_string())
        }
        PurgeError::BatchSize => ApiError::bad_request("invalid_number", error.to_string()),
        PurgeError::Date(date) => super::request::date_error(date),
        PurgeError::Store(store) if store.is_unreachable() => {
            tracing::warn!(error = %store, "a purge could not start");
            ApiError::Unavailable(store.without_addresses())
        }
        PurgeError::Store(busy @ StoreError::DayBusy { .. }) => {
            ApiError::Conflict(busy.to_string())
        }
        other => ApiError::internal(&other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(result: Result<PurgeRequest, ApiError>) -> &'static str {
        match result {
            Err(ApiError::BadRequest { code, .. }) => code,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn fields_are_read_from_a_query_or_a_body_and_bad_ones_refused() {
        let want = PurgeRequest {
            keep_days: Some(90),
            dry_run: true,
            batch_size: Some(500),
        };
        assert_eq!(
            PurgeRequest::from_query("keepDays=90&dryRun=true&batchSize=500"),
            Ok(want)
        );
        assert_eq!(
            PurgeRequest::from_json(br#"{"keepDays": 90, "dryRun": true, "batchSize": 500}"#),
            Ok(want)
        );
        assert_eq!(PurgeRequest::from_json(b""), Ok(PurgeRequest::default()));
        assert_eq!(
            code(PurgeRequest::from_query("keepDays=0")),
            "invalid_number"
        );
        assert_eq!(
            code(PurgeRequest::from_query("keepDays=-3")),
            "invalid_number"
        );
        assert_eq!(
            code(PurgeRequest::from_json(br#"{"keepDays": "90"}"#)),
            "invalid_number"
        );
        assert_eq!(
            code(PurgeRequest::from_query("keepdays=90")),
            "unknown_field"
        );
        assert_eq!(
            code(PurgeRequest::from_json(br#"{"startDate": "2024-01-01"}"#)),
            "unknown_field"
        );
        assert_eq!(
            code(PurgeRequest::from_query("dryRun=yes")),
            "invalid_dry_run"
        );
        assert_eq!(
            code(PurgeRequest::from_query("keepDays=1&keepDays=2")),
            "invalid_query"
        );
    }
}
