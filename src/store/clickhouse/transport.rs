//! The HTTP transport to ClickHouse: one client for the source's life, requests
//! carrying the user and password as headers, answers read as `RowBinary` rows as
//! they stream in, the server's errors put in a line.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue, USER_AGENT};
use hyper::{Request, Response, StatusCode};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::super::StoreError;
use super::config::Endpoint;
use super::row_binary::{Columns, Malformed, RowBuffer};

/// How long to wait for the server to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The `User-Agent` of every request.
const USER_AGENT_VALUE: &str = concat!("veris-jobs/", env!("CARGO_PKG_VERSION"));

/// How long a health check waits for the server.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Requests to one ClickHouse server.
#[derive(Debug, Clone)]
pub(super) struct Transport {
    client: HttpClient,
    endpoint: Endpoint,
}

impl Transport {
    /// A transport to `endpoint`; nothing is sent until the first request.
    pub(super) fn new(endpoint: Endpoint) -> Result<Self, StoreError> {
        let client = http_client(endpoint.https).map_err(|e| {
            StoreError::InvalidSourceUrl(format!(
                "'{}': HTTPS needs the system's trusted certificates, which cannot be read: {e}",
                endpoint.target
            ))
        })?;
        Ok(Self { client, endpoint })
    }

    /// Whether the server answers now.
    pub(super) async fn ping(&self) -> bool {
        let mut url = self.endpoint.url.clone();
        url.set_path("/ping");
        url.set_query(None);
        let Ok(request) = Request::get(url.as_str()).body(Full::default()) else {
            return false;
        };
        let answer = tokio::time::timeout(PING_TIMEOUT, self.client.request(request)).await;
        matches!(answer, Ok(Ok(response)) if response.status().is_success())
    }

    /// Sends `sql` and returns the response once the server says it succeeded.
    pub(super) async fn send(
        &self,
        sql: String,
        action: &str,
    ) -> Result<Response<Incoming>, StoreError> {
        let header = |value: &str| {
            HeaderValue::from_str(value).map_err(|_| {
                StoreError::InvalidSourceUrl(format!(
                    "'{}': its user or password holds characters an HTTP header cannot carry",
                    self.endpoint.target
                ))
            })
        };
        let mut request = Request::post(self.endpoint.url.as_str())
            .header(CONTENT_TYPE, "text/plain; charset=utf-8")
            // Names the job's queries in the server's `system.query_log`.
            .header(USER_AGENT, USER_AGENT_VALUE)
            .header("X-ClickHouse-User", header(&self.endpoint.user)?);
        if let Some(password) = &self.endpoint.password {
            request = request.header("X-ClickHouse-Key", header(password)?);
        }
        let request = request.body(Full::new(Bytes::from(sql))).map_err(|e| {
            StoreError::InvalidSourceUrl(format!("'{}': {e}", self.endpoint.target))
        })?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        if status == StatusCode::OK {
            return Ok(response);
        }
        // An error is a line or two of text; more is not worth reading.
        let text = match response.into_body().collect().await {
            Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
            Err(_) => String::new(),
        };
        Err(StoreError::Source {
            action: action.to_owned(),
            message: server_message(status, &text),
        })
    }

    /// Runs `sql` (`FORMAT RowBinary` is added) and hands each row to `row`, as
    /// the answer streams in.
    pub(super) async fn rows(
        &self,
        sql: &str,
        action: &str,
        row: impl FnMut(&mut Columns<'_>) -> Result<Option<()>, Malformed>,
    ) -> Result<(), StoreError> {
        let response = self.send(format!("{sql} FORMAT RowBinary"), action).await?;
        self.read(response, action, row).await
    }

    /// Hands each row of a `RowBinary` answer to `row`, as it streams in.
    pub(super) async fn read(
        &self,
        mut response: Response<Incoming>,
        action: &str,
        mut row: impl FnMut(&mut Columns<'_>) -> Result<Option<()>, Malformed>,
    ) -> Result<(), StoreError> {
        let malformed = |e: Malformed| StoreError::Source {
            action: action.to_owned(),
            message: e.to_string(),
        };
        let mut buffer = RowBuffer::default();
        let body = response.body_mut();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.unreachable(&e))?;
            if let Some(chunk) = frame.data_ref() {
                buffer.feed(chunk);
                buffer.rows(&mut row).map_err(malformed)?;
            }
        }
        if buffer.is_drained() {
            Ok(())
        } else {
            Err(malformed(Malformed("the answer ends inside a row")))
        }
    }

    pub(super) fn unreachable(&self, error: &(dyn std::error::Error + 'static)) -> StoreError {
        StoreError::SourceUnreachable {
            target: self.endpoint.target.clone(),
            message: describe(error),
        }
    }
}

/// The server's error in a line: ClickHouse answers `Code: N, e.displayText() =
/// DB::Exception: …, e.what() = …`.
fn server_message(status: StatusCode, text: &str) -> String {
    let text = text.trim();
    let text = text
        .split_once(", e.what() = ")
        .map_or(text, |(message, _)| message);
    let text = text.replace("e.displayText() = DB::Exception: ", "");
    if text.is_empty() {
        format!("ClickHouse answered {status}")
    } else {
        format!("ClickHouse answered {status}: {text}")
    }
}

/// The HTTP client: plain HTTP, and HTTPS trusting the system's certificates
/// (which are read only when `https` is asked for, so that plain HTTP works on a
/// system without any).
fn http_client(https: bool) -> std::io::Result<HttpClient> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = if https {
        HttpsConnectorBuilder::new().with_provider_and_native_roots(provider)?
    } else {
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        HttpsConnectorBuilder::new().with_tls_config(config)
    };
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    http.set_nodelay(true);
    let connector = tls.https_or_http().enable_http1().wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// A transport error with its causes, which the HTTP client keeps apart.
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn server_errors_read_as_one_line() {
        assert_eq!(
            server_message(
                StatusCode::NOT_FOUND,
                "Code: 60, e.displayText() = DB::Exception: Table default.x doesn't exist., e.what() = DB::Exception\n"
            ),
            "ClickHouse answered 404 Not Found: Code: 60, Table default.x doesn't exist."
        );
    }
}
