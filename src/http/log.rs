//! One log line per request: method, path, status, duration and, for runs, the
//! requested range. Headers are never logged, so the secret cannot leak here. A
//! request whose caller hung up before the answer is logged too, as `499`.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

use super::request::RunRequest;

/// Where a handler leaves the run it was asked for, for the request's log line: a
/// request whose caller hangs up never gets its answer back to this middleware, so
/// the line takes it from here.
#[derive(Debug, Clone, Default)]
pub(super) struct RequestedSlot(Arc<Mutex<Option<RunRequest>>>);

impl RequestedSlot {
    /// Records the run asked for.
    pub(super) fn set(&self, request: RunRequest) {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(request);
    }

    fn get(&self) -> Option<RunRequest> {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The status logged for a request whose caller went away first (nginx's custom).
const CALLER_GONE: u16 = 499;

pub(super) async fn log_request(mut request: Request, next: Next) -> Response {
    let requested = RequestedSlot::default();
    request.extensions_mut().insert(requested.clone());
    let mut line = LogLine {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
        started: Instant::now(),
        status: None,
        requested,
    };
    let response = next.run(request).await;
    line.status = Some(response.status().as_u16());
    response
}

/// Written when dropped: after the answer, or when the caller hung up and the
/// request's future was dropped half-way.
struct LogLine {
    method: String,
    path: String,
    started: Instant,
    status: Option<u16>,
    requested: RequestedSlot,
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let requested = self.requested.get();
        let range = requested
            .and_then(|r| r.range)
            .map_or_else(|| "default".to_owned(), |range| range.to_string());
        tracing::info!(
            method = %self.method,
            path = %self.path,
            status = self.status.unwrap_or(CALLER_GONE),
            caller_gone = self.status.is_none(),
            duration_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            range = requested.map(|_| range),
            dry_run = requested.map(|r| r.dry_run),
            "request"
        );
    }
}
