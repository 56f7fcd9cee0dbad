//! The web UI: static assets from the repository's `ui/` folder, embedded in the binary at
//! compile time (no Node.js, no bundler), and the UI's page routes, which all answer the same
//! `index.html` (the pages are drawn by `ui/app.js` from the URL).
//!
//! Every UI response carries a strict Content-Security-Policy (scripts and styles only from this
//! origin, no inline script), as a second line of defence behind the UI's rule of rendering every
//! name and attribute as text.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// One embedded file of `ui/`.
pub(crate) struct Asset {
    pub(crate) name: &'static str,
    pub(crate) body: &'static [u8],
    content_type: &'static str,
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../ui/", $name)),
            content_type: $type,
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of `ui/` (a test checks that this list and the folder agree).
pub(crate) const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("format.js", JS),
    asset!("search.js", JS),
    asset!("trace.js", JS),
    asset!("tracemodel.js", JS),
    asset!("dependencies.js", JS),
    asset!("doctor.js", JS),
    asset!("monitor.js", JS),
];

/// Strong validators for the assets: a hash of each body, computed once.
static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let mut h = DefaultHasher::new();
            a.body.hash(&mut h);
            format!("\"{:016x}\"", h.finish())
        })
        .collect()
});

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";

/// The UI's routes: pages (`/`, `/search`, `/trace/{id}`, `/dependencies`, `/doctor`, `/monitor`) and
/// `/static/{file}`.
pub(crate) fn router() -> Router {
    Router::new()
        .route("/", get(page))
        .route("/search", get(page))
        .route("/trace/{trace_id}", get(page))
        .route("/dependencies", get(page))
        .route("/doctor", get(page))
        .route("/monitor", get(page))
        .route("/static/{file}", get(static_file))
}

async fn page(headers: HeaderMap) -> Response {
    serve(0, &headers)
}

async fn static_file(Path(file): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().position(|a| a.name == file) {
        Some(i) => serve(i, &headers),
        None => (StatusCode::NOT_FOUND, "no such file\n").into_response(),
    }
}

fn serve(i: usize, headers: &HeaderMap) -> Response {
    let asset = &ASSETS[i];
    let etag = &ETAGS[i];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut response =
        if fresh { StatusCode::NOT_MODIFIED.into_response() } else { asset.body.into_response() };
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    h.insert(header::ETAG, HeaderValue::from_str(etag).expect("hex etag"));
    // Revalidate every time (a 304 is cheap); a new binary's assets are never mixed with old ones.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    #[test]
    fn every_file_of_the_ui_folder_is_embedded_and_nothing_else() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../ui");
        let mut on_disk: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        on_disk.sort();
        let mut embedded: Vec<String> = ASSETS.iter().map(|a| a.name.to_owned()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded, "ui/ and skein-server's ASSETS list must agree");
        for a in ASSETS {
            assert_eq!(a.body, std::fs::read(format!("{dir}/{}", a.name)).unwrap(), "{}", a.name);
        }
    }

    async fn get(uri: &str, if_none_match: Option<&str>) -> Response {
        let mut request = Request::get(uri);
        if let Some(tag) = if_none_match {
            request = request.header(header::IF_NONE_MATCH, tag);
        }
        router().oneshot(request.body(Body::empty()).unwrap()).await.unwrap()
    }

    #[tokio::test]
    async fn pages_answer_the_entry_page_with_a_strict_csp_and_assets_revalidate() {
        for uri in [
            "/",
            "/search?service=a",
            "/trace/0123",
            "/dependencies",
            "/doctor?lookback=1h",
            "/monitor?service=a",
        ] {
            let r = get(uri, None).await;
            assert_eq!(r.status(), StatusCode::OK, "{uri}");
            assert_eq!(r.headers()[header::CONTENT_TYPE], "text/html; charset=utf-8");
            assert!(
                r.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap().contains("script-src 'self'")
            );
            let body = r.into_body().collect().await.unwrap().to_bytes();
            assert!(String::from_utf8_lossy(&body).contains("/static/app.js"), "{uri}");
        }
        let r = get("/static/app.js", None).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_TYPE], JS);
        let etag = r.headers()[header::ETAG].to_str().unwrap().to_owned();
        let again = get("/static/app.js", Some(&etag)).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert!(again.into_body().collect().await.unwrap().to_bytes().is_empty());
        assert_eq!(get("/static/app.js", Some("\"stale\"")).await.status(), StatusCode::OK);
        assert_eq!(get("/static/nope.js", None).await.status(), StatusCode::NOT_FOUND);
        assert_eq!(get("/static/..%2Fcrates", None).await.status(), StatusCode::NOT_FOUND);
    }
}
