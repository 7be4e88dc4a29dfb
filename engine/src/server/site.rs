//! Where the service is and who may use it from a web page: the base URL links are built
//! from (`--public-url`, else the bound address), the `Origin`s allowed across sites
//! (`--cors-origin`; the service's own origin always is), and, on a loopback bind, the `Host`
//! names accepted (so a DNS-rebound name cannot reach a keyless local server).
//!
//! Browsers send `Origin` with every cross-site request that could change something (and with
//! same-site POSTs), so refusing foreign origins stops any page a user visits from queueing jobs,
//! interrupting them or switching checkpoints. Requests without `Origin` (curl, the Python
//! clients, `<img>` tags) pass.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::errors::{A1111Error, ApiError};

/// The service's address as clients see it, and the cross-site policy.
#[derive(Debug, Clone)]
pub struct Site {
    base_url: String,
    /// Lowercased `scheme://host[:port]` values, or `*`.
    cors_origins: Vec<String>,
    /// On loopback binds, the host names (without port) a `Host` header may carry.
    loopback_hosts: Option<Vec<String>>,
}

impl Site {
    /// The site of a server bound to `bound`, with the operator's `public_url` (checked by
    /// [`parse_public_url`]) and allowed `cors_origins` (checked by [`parse_origin`]).
    pub fn new(bound: SocketAddr, public_url: Option<&str>, cors_origins: &[String]) -> Self {
        let mut ip = bound.ip();
        if ip.is_unspecified() {
            ip = std::net::Ipv4Addr::LOCALHOST.into();
        }
        let bound_url = format!("http://{}", SocketAddr::new(ip, bound.port()));
        let base_url = public_url.map_or(bound_url, |u| u.trim_end_matches('/').to_string());
        let loopback_hosts = bound.ip().is_loopback().then(|| {
            let mut hosts = vec![
                "localhost".to_string(),
                "127.0.0.1".to_string(),
                "[::1]".to_string(),
            ];
            if let Some(host) = public_url.and_then(url_host) {
                hosts.push(host);
            }
            hosts
        });
        Self {
            base_url,
            cors_origins: cors_origins.iter().map(|o| o.to_lowercase()).collect(),
            loopback_hosts,
        }
    }

    /// `scheme://host[:port]` (no trailing slash) that links in responses start with.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Refuses a `Host` a loopback server does not answer to.
    fn check_host(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let (Some(allowed), Some(host)) = (&self.loopback_hosts, headers.get(header::HOST)) else {
            return Ok(());
        };
        let host = host.to_str().unwrap_or_default().to_lowercase();
        let name = strip_port(&host);
        if allowed.iter().any(|a| a == name) {
            return Ok(());
        }
        Err(forbidden(
            "forbidden_host",
            format!(
                "this server listens on loopback and answers only to localhost, 127.0.0.1 and \
                 [::1], not to Host `{host}` (a web page may have rebound that name to this \
                 machine); reach it under one of those names, or start `beeswax serve` with \
                 --public-url http://{host} if it is yours"
            ),
        ))
    }

    /// The request's `Origin` when it is another site the operator allows; `Ok(None)` when
    /// there is no `Origin` or it is this site; an error for a foreign one.
    fn cross_origin(&self, headers: &HeaderMap) -> Result<Option<HeaderValue>, ApiError> {
        let Some(value) = headers.get(header::ORIGIN) else {
            return Ok(None);
        };
        let origin = value.to_str().unwrap_or_default().to_lowercase();
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let own = host.is_some_and(|h| {
            ["http://", "https://"]
                .iter()
                .any(|s| origin == format!("{s}{}", h.to_lowercase()))
        });
        if own || origin == self.base_url.to_lowercase() {
            return Ok(None);
        }
        if self.cors_origins.iter().any(|o| o == "*" || *o == origin) {
            return Ok(Some(value.clone()));
        }
        Err(forbidden(
            "forbidden_origin",
            format!(
                "requests from the web page at `{origin}` are refused (another site must not use \
                 this server); to allow it, start `beeswax serve` with --cors-origin {origin}"
            ),
        ))
    }
}

fn forbidden(code: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "permission_error", code, message)
}

/// `host` of `host:port` or `[v6]:port`.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// The lowercased host name of an `http(s)://host[:port][/path]` URL.
fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    Some(strip_port(&authority.to_lowercase()).to_string())
}

/// Checks a `--public-url`: `http://` or `https://`, a host, no query.
pub fn parse_public_url(url: &str) -> Result<String, String> {
    let ok = (url.starts_with("http://") || url.starts_with("https://"))
        && url_host(url).is_some_and(|h| !h.is_empty())
        && !url.contains(['?', '#', ' ']);
    if ok {
        Ok(url.trim_end_matches('/').to_string())
    } else {
        Err(format!(
            "`{url}` is not a base URL: write it as http://HOST[:PORT][/PATH], the address \
             clients use to reach this server"
        ))
    }
}

/// Checks a `--cors-origin`: `*` or `scheme://host[:port]`, as browsers send `Origin`.
pub fn parse_origin(origin: &str) -> Result<String, String> {
    if origin == "*" {
        return Ok(origin.to_string());
    }
    let rest = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    match rest {
        Some(r) if !r.is_empty() && !r.contains(['/', '?', '#', ' ']) => Ok(origin.to_lowercase()),
        _ => Err(format!(
            "`{origin}` is not an origin: write it as a browser sends it, \
             scheme://host[:port] with no path (e.g. https://app.example.com), or *"
        )),
    }
}

/// The middleware: host and origin checks, and CORS headers for allowed other sites.
pub async fn guard(State(site): State<Arc<Site>>, req: Request, next: Next) -> Response {
    let a1111 = req.uri().path().starts_with("/sdapi/");
    let checked = site
        .check_host(req.headers())
        .and_then(|()| site.cross_origin(req.headers()));
    let origin = match checked {
        Ok(origin) => origin,
        Err(e) if a1111 => return A1111Error(e).into_response(),
        Err(e) => return e.into_response(),
    };
    let Some(origin) = origin else {
        return next.run(req).await;
    };
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, DELETE"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, last-event-id"),
        );
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(600));
        r
    } else {
        next.run(req).await
    };
    let h = response.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.append(header::VARY, HeaderValue::from_static("origin"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::test_headers as headers;

    #[test]
    fn loopback_answers_only_to_its_own_names() {
        let site = Site::new("127.0.0.1:7860".parse().unwrap(), None, &[]);
        for ok in [
            "localhost:7860",
            "127.0.0.1:7860",
            "[::1]:7860",
            "LOCALHOST",
        ] {
            assert!(
                site.check_host(&headers(&[(header::HOST, ok)])).is_ok(),
                "{ok}"
            );
        }
        let e = site
            .check_host(&headers(&[(header::HOST, "evil.example:7860")]))
            .unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::FORBIDDEN, "forbidden_host")
        );
        let wide = Site::new("0.0.0.0:7860".parse().unwrap(), None, &[]);
        assert!(wide
            .check_host(&headers(&[(header::HOST, "box.lan")]))
            .is_ok());
        assert_eq!(wide.base_url(), "http://127.0.0.1:7860");
        let public = Site::new(
            "127.0.0.1:7860".parse().unwrap(),
            Some("https://sd.example.com/"),
            &[],
        );
        assert!(public
            .check_host(&headers(&[(header::HOST, "sd.example.com")]))
            .is_ok());
        assert_eq!(public.base_url(), "https://sd.example.com");
    }

    #[test]
    fn foreign_origins_are_refused_unless_allowed() {
        let site = Site::new(
            "127.0.0.1:7860".parse().unwrap(),
            None,
            &["https://app.example".to_string()],
        );
        let own = headers(&[
            (header::HOST, "localhost:7860"),
            (header::ORIGIN, "http://localhost:7860"),
        ]);
        assert_eq!(site.cross_origin(&own).unwrap(), None);
        let allowed = headers(&[
            (header::HOST, "localhost:7860"),
            (header::ORIGIN, "https://APP.example"),
        ]);
        assert!(site.cross_origin(&allowed).unwrap().is_some());
        for bad in ["https://evil.example", "null", "http://localhost:9999"] {
            let h = headers(&[(header::HOST, "localhost:7860"), (header::ORIGIN, bad)]);
            assert_eq!(site.cross_origin(&h).unwrap_err().code, "forbidden_origin");
        }
    }

    #[test]
    fn flags_are_checked() {
        assert!(parse_public_url("http://sd.lan:8080/base").is_ok());
        assert!(parse_public_url("sd.lan").is_err());
        assert!(parse_public_url("http://").is_err());
        assert_eq!(
            parse_origin("https://A.example").unwrap(),
            "https://a.example"
        );
        assert!(parse_origin("*").is_ok());
        assert!(parse_origin("https://a.example/path").is_err());
        assert!(parse_origin("a.example").is_err());
    }
}
