//! The query side's door when `--query-token-file` is set: API requests need
//! `Authorization: Bearer <token>` (or the UI's cookie), UI pages send a browser to a login page
//! that keeps the token in an `HttpOnly`, `SameSite=Strict` cookie, and `/logout` clears it.
//! `/healthz`, `/readyz`, the login page and the UI's static files stay open (they hold no data).

use axum::Form;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;

use crate::auth::{Auth, Role};

/// The cookie that carries the token for the UI (base64url, so any token fits in a cookie).
pub(crate) const COOKIE: &str = "skein_token";

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .find_map(|v| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(v).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
}

/// Paths anyone may fetch.
fn open_path(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/login" | "/logout") || path.starts_with("/static/")
}

/// The middleware: lets a request through when the query role needs no token, when the path
/// is open, or when it carries a token of `--query-token-file` (header or cookie).
pub(crate) async fn require_query_token(State(auth): State<Auth>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    if !auth.required(Role::Query) || open_path(&path) {
        return next.run(request).await;
    }
    let headers = request.headers();
    let bearer =
        Auth::bearer(headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())).map(str::to_owned);
    let allowed = match bearer {
        Some(token) => auth.allows(Role::Query, Some(&token)),
        None => cookie_token(headers).is_some_and(|token| auth.allows(Role::Query, Some(&token))),
    };
    if allowed {
        return next.run(request).await;
    }
    let message = "missing or invalid bearer token: send `Authorization: Bearer <token>` with a token of --query-token-file";
    if path.starts_with("/api/v3/") {
        let body = serde_json::json!({"error": {"httpCode": 401, "message": message}});
        return unauthorized(body);
    }
    if path.starts_with("/api/") || path == "/metrics" {
        // Jaeger's error form, as its query service answers.
        let body = serde_json::json!({
            "data": null, "total": 0, "limit": 0, "offset": 0,
            "errors": [{"code": 401, "msg": message}],
        });
        return unauthorized(body);
    }
    // A UI page: to the login page, and back here afterwards.
    let target = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let location =
        format!("/login?next={}", form_urlencoded::byte_serialize(target.as_bytes()).collect::<String>());
    (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response()
}

fn unauthorized(body: serde_json::Value) -> Response {
    let mut response = (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Where to go after logging in: a path of this site only.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.starts_with("/\\") => n,
        _ => "/",
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

const LOGIN_CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                         frame-ancestors 'none'; base-uri 'none'";

fn login_page(status: StatusCode, next: &str, error: Option<&str>) -> Response {
    let error =
        error.map_or(String::new(), |e| format!("<p class=\"warning\" role=\"alert\">{}</p>", escape(e)));
    let html = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>Skein · log in</title>\n\
         <link rel=\"icon\" href=\"/static/favicon.svg\" type=\"image/svg+xml\">\n\
         <link rel=\"stylesheet\" href=\"/static/style.css\">\n</head>\n<body>\n\
         <main class=\"pad login\">\n<h1>Skein</h1>\n<p>This Skein asks for a token (one of its <code>--query-token-file</code>).</p>\n\
         {error}\n<form method=\"post\" action=\"/login\">\n\
         <input type=\"hidden\" name=\"next\" value=\"{next}\">\n\
         <label>Token <input type=\"password\" name=\"token\" autocomplete=\"current-password\" required autofocus></label>\n\
         <button type=\"submit\">Log in</button>\n</form>\n</main>\n</body>\n</html>\n",
        next = escape(next),
    );
    let mut response = (status, html).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(LOGIN_CSP));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

#[derive(Deserialize)]
pub(crate) struct NextParam {
    next: Option<String>,
}

/// `GET /login?next=/search`.
pub(crate) async fn login_form(Query(q): Query<NextParam>) -> Response {
    login_page(StatusCode::OK, safe_next(q.next.as_deref()), None)
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    token: String,
    next: Option<String>,
}

/// `POST /login` with `token` and `next`: sets the cookie and goes to `next`, or answers the
/// form again with 401.
pub(crate) async fn login(State(auth): State<Auth>, Form(form): Form<LoginForm>) -> Response {
    let next = safe_next(form.next.as_deref()).to_owned();
    let token = form.token.trim();
    if !auth.allows(Role::Query, Some(token)) {
        return login_page(StatusCode::UNAUTHORIZED, &next, Some("That token is not valid here."));
    }
    let value = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.as_bytes());
    let cookie = format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict");
    (StatusCode::SEE_OTHER, [(header::LOCATION, next), (header::SET_COOKIE, cookie)]).into_response()
}

/// `POST /logout`: clears the cookie and goes to the login page.
pub(crate) async fn logout() -> Response {
    let cookie = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    (StatusCode::SEE_OTHER, [(header::LOCATION, "/login".to_owned()), (header::SET_COOKIE, cookie)])
        .into_response()
}

/// `GET /api/v1/session`: whether this Skein asks for a token (the UI then shows "Log out").
pub(crate) async fn session(State(auth): State<Auth>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "tokenRequired": auth.required(Role::Query) }))
}
