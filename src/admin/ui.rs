//! The dashboard's files, served by the admin listener at `/ui/`: plain HTML, CSS and ES modules
//! from the repository's `ui/`, embedded in the binary at build time (`build.rs`), so the
//! dashboard works with no internet and no file next to the binary.
//!
//! The files hold no data and need no sign-in; everything the page shows comes from `/v1/*`,
//! which does. Each answer carries a strict Content-Security-Policy (this origin's scripts,
//! styles and connections only; no inline script, no `eval`, no framing), `nosniff`, and
//! `no-cache`, so that a browser picks up the files of a new version after an upgrade.

use axum::extract::Path;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use http::{header, HeaderValue, StatusCode};
use std::sync::Arc;

use super::error::ApiError;
use super::AdminState;
use crate::api::paths;

/// Every file of `ui/`: name and bytes.
static FILES: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/ui_files.rs"));

/// What the page may load and run: only this origin, no inline script, no framing.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The dashboard's routes.
pub fn router() -> Router<Arc<AdminState>> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent(paths::UI) }))
        .route(paths::UI, get(|| async { file("index.html") }))
        .route(
            "/ui/{file}",
            get(|Path(name): Path<String>| async move { file(&name) }),
        )
}

/// The media type of a file, by its extension.
fn media_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        _ => "application/octet-stream",
    }
}

/// One embedded file, or 404.
fn file(name: &str) -> Response {
    let Some((_, bytes)) = FILES.iter().find(|(n, _)| *n == name) else {
        return ApiError::not_found(format!("the dashboard has no file `{name}`")).into_response();
    };
    let mut response = (StatusCode::OK, *bytes).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(media_type(name)),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_embedded_and_served_with_its_policy() {
        let page = file("index.html");
        assert_eq!(page.status(), StatusCode::OK);
        let h = page.headers();
        assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert!(h[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("script-src 'self'"));
        assert_eq!(file("../Cargo.toml").status(), StatusCode::NOT_FOUND);
        assert_eq!(file("nothing.js").status(), StatusCode::NOT_FOUND);
        for (name, _) in FILES {
            assert_ne!(
                media_type(name),
                "application/octet-stream",
                "{name}: a file of ui/ with no media type"
            );
        }
    }
}
