//! The web page at `/`: three files embedded in the binary, served with a content security
//! policy that lets them reach this server only (no CDN, no other origin, no inline code).
//!
//! The page itself holds nothing secret and is served without the API key; everything it does
//! goes through `/v1/*`, which needs the key when one is set (the page asks for it on a 401).

use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::AppState;

const INDEX: &str = include_str!("../ui/index.html");
const SCRIPT: &str = include_str!("../ui/app.js");
const STYLE: &str = include_str!("../ui/style.css");

/// Everything the page may load or connect to: this origin, and the images it makes itself.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// `/`, `/ui/app.js` and `/ui/style.css`.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/ui/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every way a page names another place to load from or talk to, for the check below.
    const URL_MARKERS: &[&str] = &[
        "http:",
        "https:",
        "ws:",
        "wss:",
        "ftp:",
        "//cdn",
        "src=\"//",
        "href=\"//",
        "url(",
        "@import",
        "import(",
        "importScripts",
        "EventSource(\"http",
    ];

    #[test]
    fn the_pages_assets_name_no_other_origin() {
        for (name, text) in [
            ("index.html", INDEX),
            ("app.js", SCRIPT),
            ("style.css", STYLE),
        ] {
            for marker in URL_MARKERS {
                assert!(
                    !text.contains(marker),
                    "ui/{name} contains {marker:?}: every asset must come from this server"
                );
            }
        }
        // What the page does load, it loads from this origin by absolute path.
        for path in ["/ui/style.css", "/ui/app.js"] {
            assert!(
                INDEX.contains(&format!("\"{path}\"")),
                "index.html loads {path}"
            );
        }
    }

    #[test]
    fn the_policy_allows_this_origin_only() {
        for directive in POLICY.split(';').map(str::trim) {
            let sources = directive.split_whitespace().skip(1);
            for source in sources {
                assert!(
                    ["'self'", "'none'", "data:", "blob:"].contains(&source),
                    "{directive:?} allows {source:?}"
                );
            }
        }
    }
}
