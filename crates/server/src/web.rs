//! The web app: plain HTML, CSS and JavaScript kept in `crates/server/web/` and compiled into
//! the binary (no build step, nothing fetched from elsewhere). Pages are served without the key;
//! the data they show comes from the API, which asks for it.

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// The pages' content security policy: scripts, styles and requests from this server only;
/// images also from blob:/data: URLs the scripts make.
const CSP: &str = "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// The files under `/static/`, by name, with their type.
const FILES: [(&str, &str, &str); 4] = [
    ("app.css", "text/css; charset=utf-8", include_str!("../web/app.css")),
    ("common.js", "text/javascript; charset=utf-8", include_str!("../web/common.js")),
    ("compose.js", "text/javascript; charset=utf-8", include_str!("../web/compose.js")),
    ("chat.js", "text/javascript; charset=utf-8", include_str!("../web/chat.js")),
];

fn page(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind), (header::CONTENT_SECURITY_POLICY, CSP), (header::X_CONTENT_TYPE_OPTIONS, "nosniff")], body).into_response()
}

/// `GET /`: the compose page.
pub async fn compose_page() -> Response {
    page("text/html; charset=utf-8", include_str!("../web/compose.html"))
}

/// `GET /chat`: the chat page.
pub async fn chat_page() -> Response {
    page("text/html; charset=utf-8", include_str!("../web/chat.html"))
}

/// `GET /static/{name}`: a stylesheet or script of the pages.
pub async fn file(Path(name): Path<String>) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, kind, body)) => page(kind, body),
        None => ApiError::not_found(format!("no static file {name:?}")).into_response(),
    }
}
