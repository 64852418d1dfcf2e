//! The endpoint's errors, each mapped once to its status and error code.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// When a caller refused for too many runs may try again: most runs over a few
/// days end within that.
const RETRY_AFTER_SECONDS: &str = "10";

/// Every way a request can fail before it yields a run report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// A malformed date, an end before its start, an end without a start.
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// Missing or wrong bearer token.
    #[error("missing or wrong bearer token")]
    Unauthorized,
    /// No such route.
    #[error("no such endpoint")]
    NotFound,
    /// A method the route does not serve; `allow` lists those it does.
    #[error("method not allowed: use {allow}")]
    MethodNotAllowed { allow: &'static str },
    /// Another run holds one of the requested days.
    #[error("{0}")]
    Conflict(String),
    /// As many runs as allowed are going; answered with `Retry-After`.
    #[error("{0}")]
    TooManyRuns(String),
    /// No run has that id.
    #[error("no run with that id is recorded in job_runs")]
    RunNotFound,
    /// The day locks cannot be taken (the SQLite lock file, say); the log says why.
    #[error("the day locks cannot be taken; the server's log says why")]
    LocksUnavailable,
    /// The body did not arrive in time.
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    /// The body is over the limit.
    #[error("the request body is over 16 KiB")]
    PayloadTooLarge,
    /// The request target is longer than any endpoint needs.
    #[error("the request's path and query are over 8 KiB")]
    UriTooLong,
    /// A POST body that is not JSON.
    #[error("the request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    /// The database does not answer.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else that went wrong on this side.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// A 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// A 500 for `error`, whose details (the database's own words) go to the log:
    /// the caller is told only that the fault is on this side.
    pub fn internal(error: &dyn std::fmt::Display) -> Self {
        tracing::error!(%error, "a request failed on the server's side");
        ApiError::Internal("the server failed to answer; its log says why".to_owned())
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooManyRuns(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::RunNotFound => StatusCode::NOT_FOUND,
            ApiError::LocksUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UriTooLong => StatusCode::URI_TOO_LONG,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable code in the body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. } => code,
            ApiError::Unauthorized => "unauthorized",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::Conflict(_) => "day_busy",
            ApiError::TooManyRuns(_) => "too_many_runs",
            ApiError::RunNotFound => "run_not_found",
            ApiError::LocksUnavailable => "locks_unavailable",
            ApiError::RequestTimeout => "request_timeout",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::UriTooLong => "uri_too_long",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::Unavailable(_) => "database_unavailable",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code(), "message": self.to_string()}});
        let mut response = (self.status(), Json(body)).into_response();
        match self {
            ApiError::Unauthorized => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::MethodNotAllowed { allow } => {
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::TooManyRuns(_) => {
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_static(RETRY_AFTER_SECONDS),
                );
            }
            _ => {}
        }
        response
    }
}
