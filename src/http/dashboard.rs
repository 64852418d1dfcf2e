//! `GET /`: the dashboard, a page that charts the rollups (through
//! `/api/telemetry/report`) and shows the run history. Its HTML, script, styles and
//! chart library (uPlot, vendored in `assets/dashboard/vendor/`) are built into the
//! binary; the page makes no request outside this server. The page itself needs no
//! token: the data it loads does, and the page asks for the secret.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::ApiError;

/// Where the page may load from and send to: this server only, no inline script or
/// style, in no frame.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// One file of the page.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    gzipped: OnceLock<Vec<u8>>,
}

macro_rules! asset {
    ($name:literal, $type:literal, $path:literal) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/assets/dashboard/",
                $path
            )),
            gzipped: OnceLock::new(),
        }
    };
}

static INDEX: Asset = asset!("index.html", "text/html; charset=utf-8", "index.html");
static ASSETS: [Asset; 4] = [
    asset!(
        "dashboard.js",
        "text/javascript; charset=utf-8",
        "dashboard.js"
    ),
    asset!("dashboard.css", "text/css; charset=utf-8", "dashboard.css"),
    asset!(
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        "vendor/uplot/uPlot.iife.min.js"
    ),
    asset!(
        "uPlot.min.css",
        "text/css; charset=utf-8",
        "vendor/uplot/uPlot.min.css"
    ),
];

/// `GET /`: the page.
pub(super) async fn page(headers: HeaderMap) -> Response {
    serve(&INDEX, &headers)
}

/// `GET /assets/{name}`: the page's script, styles and chart library.
pub(super) async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(asset) => serve(asset, &headers),
        None => ApiError::NotFound.into_response(),
    }
}

fn serve(asset: &Asset, request: &HeaderMap) -> Response {
    let gzip = accepts_gzip(request);
    let body: &[u8] = if gzip {
        asset.gzipped.get_or_init(|| compress(asset.body))
    } else {
        asset.body
    };
    let mut response = body.to_vec().into_response();
    let headers = response.headers_mut();
    let set = |headers: &mut HeaderMap, name, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(headers, header::CONTENT_TYPE, asset.content_type);
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        CONTENT_SECURITY_POLICY,
    );
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    // Built into the binary: a new version of it serves new files under the same names.
    set(headers, header::CACHE_CONTROL, "no-cache");
    set(headers, header::VARY, "accept-encoding");
    if gzip {
        set(headers, header::CONTENT_ENCODING, "gzip");
    }
    response
}

/// Whether the client takes gzip (`Accept-Encoding: gzip`, not with `q=0`).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            parts
                .next()
                .is_some_and(|name| name.eq_ignore_ascii_case("gzip"))
                && !parts.any(|p| p.replace(' ', "") == "q=0")
        })
}

fn compress(body: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing to a Vec cannot fail.
    encoder.write_all(body).expect("gzip into memory");
    encoder.finish().expect("gzip into memory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_is_taken_unless_refused() {
        let headers = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_str(value).unwrap(),
            );
            h
        };
        assert!(accepts_gzip(&headers("gzip, deflate, br")));
        assert!(accepts_gzip(&headers("br;q=1.0, gzip;q=0.8")));
        assert!(!accepts_gzip(&headers("gzip;q=0")));
        assert!(!accepts_gzip(&headers("br")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }
}
