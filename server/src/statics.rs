//! `--static DIR`: serves a directory tree for the demo (the repo root, so
//! that `/www/` and `/pkg/` are both reachable).
//!
//! Deliberately small: GET/HEAD, `index.html` for directories, a fixed table
//! of content types (`application/wasm` matters: streaming compilation
//! refuses anything else), no caching. Dot-files and anything resolving
//! outside DIR (`..`, symlinks) are 404, so serving a repo root does not
//! serve its `.git`.

use std::path::{Path, PathBuf};

use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "wasm" => "application/wasm",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "txt" | "md" => "text/plain; charset=utf-8",
        "ts" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The file under `root` that `url_path` names, if it may be served.
fn resolve(root: &Path, url_path: &str) -> Option<PathBuf> {
    let decoded = percent_encoding::percent_decode_str(url_path).decode_utf8().ok()?;
    let mut path = root.to_path_buf();
    for segment in decoded.split('/').filter(|s| !s.is_empty()) {
        if segment.starts_with('.') || segment.contains(['\\', '\0']) {
            return None;
        }
        path.push(segment);
    }
    Some(path)
}

/// Answers a request for `url_path` from `root`, never serving a path that
/// starts with `hidden` (the database file and its `-wal`/`-shm`: the demo
/// serves the repo root, and the database holds the token secret).
pub async fn serve(root: &Path, hidden: &Path, method: &Method, url_path: &str) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return ApiError::NotFound.into_response();
    }
    let Some(mut path) = resolve(root, url_path) else {
        return ApiError::NotFound.into_response();
    };
    let (Ok(canonical_root), Ok(canonical)) =
        (tokio::fs::canonicalize(root).await, tokio::fs::canonicalize(&path).await)
    else {
        return ApiError::NotFound.into_response();
    };
    if !canonical.starts_with(&canonical_root)
        || canonical.as_os_str().as_encoded_bytes().starts_with(hidden.as_os_str().as_encoded_bytes())
    {
        return ApiError::NotFound.into_response();
    }
    if tokio::fs::metadata(&canonical).await.is_ok_and(|m| m.is_dir()) {
        if !url_path.ends_with('/') {
            // Relative links in index.html need the trailing slash.
            let location = format!("{url_path}/");
            return (StatusCode::MOVED_PERMANENTLY, [(header::LOCATION, location)]).into_response();
        }
        path = canonical.join("index.html");
    } else {
        path = canonical;
    }
    let Ok(bytes) = tokio::fs::read(&path).await else {
        return ApiError::NotFound.into_response();
    };
    let body = if method == Method::HEAD { Vec::new() } else { bytes };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(&path)));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_and_dotfiles_are_refused() {
        let root = Path::new("/srv");
        assert_eq!(resolve(root, "/www/index.html"), Some(PathBuf::from("/srv/www/index.html")));
        assert_eq!(resolve(root, "/"), Some(PathBuf::from("/srv")));
        for bad in ["/../etc/passwd", "/www/%2e%2e/x", "/.git/config", "/a/.env", "/a%5cb", "/%ff"] {
            assert_eq!(resolve(root, bad), None, "{bad}");
        }
    }

    #[test]
    fn wasm_and_js_get_their_types() {
        assert_eq!(content_type(Path::new("pkg/x_bg.wasm")), "application/wasm");
        assert!(content_type(Path::new("www/app.js")).starts_with("text/javascript"));
    }
}
