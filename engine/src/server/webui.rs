//! The web UI: plain HTML, CSS and JavaScript from `engine/web/`, embedded in the binary with
//! `include_bytes!` (no Node.js, no build step, nothing loaded from the internet) and served at
//! `/` (the page) and `/ui/{version}/{file}` (its assets). The page reads everything it shows
//! from the API, so a manifest change needs no UI change; `beeswax serve --no-ui` leaves these
//! routes out.
//!
//! Caching: assets live under a path holding a hash of every asset (`{version}`), so they are
//! served `immutable` for a year and a new binary's page asks for new URLs; the page itself is
//! `no-cache` (revalidated by its `ETag`, 304 when unchanged). Each asset is gzipped once, on
//! first use, and sent compressed to clients that accept gzip.
//!
//! The page and its assets hold no secrets and need no API key (the page asks for the key
//! and sends it with every API call): [`is_public`] tells the auth layer which paths those are.

use std::io::Write;
use std::sync::OnceLock;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::errors::ApiError;
use super::params::PathParams;

/// One embedded file.
struct Source {
    name: &'static str,
    mime: &'static str,
    bytes: &'static [u8],
}

/// Every file of `engine/web/`; the first is the page.
const SOURCES: &[Source] = &[
    Source {
        name: "index.html",
        mime: "text/html; charset=utf-8",
        bytes: include_bytes!("../../web/index.html"),
    },
    Source {
        name: "app.css",
        mime: "text/css; charset=utf-8",
        bytes: include_bytes!("../../web/app.css"),
    },
    Source {
        name: "main.js",
        mime: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../web/main.js"),
    },
    Source {
        name: "api.js",
        mime: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../web/api.js"),
    },
    Source {
        name: "form.js",
        mime: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../web/form.js"),
    },
    Source {
        name: "picture.js",
        mime: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../web/picture.js"),
    },
    Source {
        name: "jobs.js",
        mime: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../web/jobs.js"),
    },
    Source {
        name: "gallery.js",
        mime: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../web/gallery.js"),
    },
    Source {
        name: "icon.svg",
        mime: "image/svg+xml",
        bytes: include_bytes!("../../web/icon.svg"),
    },
];

/// What the page's HTML writes where the asset version goes.
const VERSION_MARK: &str = "__VERSION__";

/// The page's Content-Security-Policy: its own scripts and styles only, images from the API
/// (blob URLs) and previews (data URLs), requests to this server only.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// A file ready to serve.
#[derive(Debug)]
struct Asset {
    name: &'static str,
    mime: &'static str,
    body: Vec<u8>,
    gzip: Option<Vec<u8>>,
    etag: String,
}

/// The prepared files and the version (hash) of the whole set.
#[derive(Debug)]
struct Assets {
    version: String,
    files: Vec<Asset>,
}

/// The first `n` hex digits of the SHA-256 of `parts`.
fn hash(parts: &[&[u8]], n: usize) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    hex[..n].to_string()
}

/// `body` gzipped at the best level, if that makes it smaller.
fn gzip(body: &[u8]) -> Option<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(body).ok()?;
    let out = encoder.finish().ok()?;
    (out.len() < body.len()).then_some(out)
}

fn assets() -> &'static Assets {
    static ASSETS: OnceLock<Assets> = OnceLock::new();
    ASSETS.get_or_init(|| {
        let all: Vec<&[u8]> = SOURCES.iter().map(|s| s.bytes).collect();
        let version = hash(&all, 12);
        let files = SOURCES
            .iter()
            .map(|s| {
                let body = if s.name == "index.html" {
                    String::from_utf8_lossy(s.bytes)
                        .replace(VERSION_MARK, &version)
                        .into_bytes()
                } else {
                    s.bytes.to_vec()
                };
                Asset {
                    name: s.name,
                    mime: s.mime,
                    gzip: gzip(&body),
                    etag: format!("\"{}\"", hash(&[&body], 20)),
                    body,
                }
            })
            .collect();
        Assets { version, files }
    })
}

/// The version in asset URLs: a hash of every embedded file.
pub fn version() -> &'static str {
    &assets().version
}

/// The embedded files as served: (name, uncompressed bytes, gzipped bytes).
pub fn sizes() -> Vec<(&'static str, usize, usize)> {
    assets()
        .files
        .iter()
        .map(|a| {
            let gz = a.gzip.as_ref().map_or(a.body.len(), Vec::len);
            (a.name, a.body.len(), gz)
        })
        .collect()
}

/// Whether `path` is the page or one of its assets, which need no API key.
pub fn is_public(path: &str) -> bool {
    path == "/" || path.starts_with("/ui/")
}

/// Whether the client accepts gzip (`Accept-Encoding`, q-values honoured).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    value.split(',').any(|item| {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or_default().trim();
        let refused = parts.any(|p| {
            p.trim()
                .strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
    })
}

/// Whether the client's `If-None-Match` holds `etag`.
fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',').any(|t| {
                let t = t.trim();
                t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag
            })
        })
}

/// `asset` as a response with `cache_control`, gzipped when the client takes it.
fn respond(asset: &Asset, headers: &HeaderMap, cache_control: &'static str) -> Response {
    let mut response = if not_modified(headers, &asset.etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        match &asset.gzip {
            Some(gz) if accepts_gzip(headers) => (
                [(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"))],
                gz.clone(),
            )
                .into_response(),
            _ => asset.body.clone().into_response(),
        }
    };
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.mime));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    if let Ok(etag) = HeaderValue::from_str(&asset.etag) {
        h.insert(header::ETAG, etag);
    }
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if asset.name == "index.html" {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
    }
    response
}

/// `GET /`: the page (revalidated on every load).
pub async fn index(headers: HeaderMap) -> Response {
    match assets().files.first() {
        Some(page) => respond(page, &headers, "no-cache"),
        None => ApiError::not_found("unknown_route", "this build has no web UI").into_response(),
    }
}

/// `GET /ui/{version}/{file}`: an asset; immutable when `version` is this build's.
pub async fn asset(
    PathParams((v, name)): PathParams<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let all = assets();
    let Some(asset) = all.files.iter().find(|a| a.name == name) else {
        let names: Vec<&str> = all.files.iter().map(|a| a.name).collect();
        return ApiError::not_found(
            "unknown_asset",
            format!(
                "the web UI has no file `{name}` (it has {})",
                names.join(", ")
            ),
        )
        .into_response();
    };
    let cache = if v == all.version {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    respond(asset, &headers, cache)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::test_headers as headers;

    #[test]
    fn gzip_is_negotiated_with_q_values() {
        let ae = header::ACCEPT_ENCODING;
        assert!(accepts_gzip(&headers(&[(ae.clone(), "gzip, deflate, br")])));
        assert!(accepts_gzip(&headers(&[(
            ae.clone(),
            "br;q=1.0, gzip;q=0.5"
        )])));
        assert!(accepts_gzip(&headers(&[(ae.clone(), "*")])));
        assert!(!accepts_gzip(&headers(&[(ae.clone(), "gzip;q=0")])));
        assert!(!accepts_gzip(&headers(&[(ae, "br, deflate")])));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn etags_match_strong_weak_and_star() {
        let inm = header::IF_NONE_MATCH;
        assert!(not_modified(
            &headers(&[(inm.clone(), "\"abc\"")]),
            "\"abc\""
        ));
        assert!(not_modified(
            &headers(&[(inm.clone(), "\"x\", W/\"abc\"")]),
            "\"abc\""
        ));
        assert!(not_modified(&headers(&[(inm.clone(), "*")]), "\"abc\""));
        assert!(!not_modified(&headers(&[(inm, "\"abd\"")]), "\"abc\""));
        assert!(!not_modified(&HeaderMap::new(), "\"abc\""));
    }

    #[test]
    fn the_page_points_at_this_build_s_assets() {
        let page = String::from_utf8(assets().files[0].body.clone()).unwrap();
        assert!(!page.contains(VERSION_MARK));
        assert!(page.contains(&format!("/ui/{}/main.js", version())));
        // Every asset the page names is embedded.
        for name in ["app.css", "main.js", "icon.svg"] {
            assert!(
                page.contains(&format!("/ui/{}/{name}", version())),
                "{name}"
            );
        }
    }

    #[test]
    fn assets_are_small_and_compress() {
        let total: usize = sizes().iter().map(|(_, raw, _)| raw).sum();
        assert!(total < 300 * 1024, "the web UI is {total} bytes");
        for (name, raw, gz) in sizes() {
            assert!(gz <= raw, "{name}");
        }
        let js = sizes().into_iter().find(|(n, ..)| *n == "main.js").unwrap();
        assert!(js.2 < js.1, "main.js gzips smaller");
    }

    #[test]
    fn only_the_page_and_its_assets_are_public() {
        assert!(is_public("/"));
        assert!(is_public("/ui/abc/main.js"));
        assert!(!is_public("/v1/gallery"));
        assert!(!is_public("/uix"));
    }
}
