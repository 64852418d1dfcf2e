//! The check every protected request passes: the bearer token against the secret.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;
use super::error::ApiError;

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Lets a request through only with `CRON_SECRET`; otherwise 401. For the routes
/// that start runs.
pub async fn require_cron(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = bearer(&request)?;
    if token.is_some_and(|token| state.secret().verify(token)) {
        Ok(next.run(request).await)
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// Lets a request through with `READ_SECRET` or `CRON_SECRET`; otherwise 401. For
/// the routes that only read.
pub async fn require_reader(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = bearer(&request)?;
    let authorized = token.is_some_and(|token| {
        // Both are checked, so the time taken does not tell which one matched.
        let cron = state.secret().verify(token);
        let read = state.read_secret().is_some_and(|read| read.verify(token));
        cron | read
    });
    if authorized {
        Ok(next.run(request).await)
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// The request's bearer token, if it has one. More than one `Authorization` header
/// is refused (400) rather than one of them picked.
fn bearer(request: &Request) -> Result<Option<&str>, ApiError> {
    let mut headers = request.headers().get_all(AUTHORIZATION).iter();
    let (first, second) = (headers.next(), headers.next());
    if second.is_some() {
        return Err(ApiError::bad_request(
            "invalid_authorization",
            "more than one Authorization header; send exactly one",
        ));
    }
    Ok(first
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_from_the_header() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
    }
}
