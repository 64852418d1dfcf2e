//! One log line per request: method, path, status, duration and, for runs, the
//! requested range. Headers are never logged, so the secret cannot leak here. A
//! request whose caller hung up before the answer is logged too, as `499`.

use std::time::Instant;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

use super::request::RunRequest;

/// The requested range, passed from the handler to the request log line.
#[derive(Debug, Clone, Copy)]
pub(super) struct Requested(pub(super) RunRequest);

/// The status logged for a request whose caller went away first (nginx's custom).
const CALLER_GONE: u16 = 499;

pub(super) async fn log_request(request: Request, next: Next) -> Response {
    let mut line = LogLine {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
        started: Instant::now(),
        status: None,
        requested: None,
    };
    let response = next.run(request).await;
    line.status = Some(response.status().as_u16());
    line.requested = response.extensions().get::<Requested>().map(|r| r.0);
    response
}

/// Written when dropped: after the answer, or when the caller hung up and the
/// request's future was dropped half-way.
struct LogLine {
    method: String,
    path: String,
    started: Instant,
    status: Option<u16>,
    requested: Option<RunRequest>,
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let range = self
            .requested
            .and_then(|r| r.range)
            .map_or_else(|| "default".to_owned(), |range| range.to_string());
        tracing::info!(
            method = %self.method,
            path = %self.path,
            status = self.status.unwrap_or(CALLER_GONE),
            caller_gone = self.status.is_none(),
            duration_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            range = self.requested.map(|_| range),
            dry_run = self.requested.map(|r| r.dry_run),
            "request"
        );
    }
}
