//! Stage 1 of a request: routing.
//!
//! Finds the tenant a request is for — `Host: SLUG.localhost[:port]`,
//! `Host: SLUG.<base-domain>`, or the path prefix `/tenants/SLUG/...` — and
//! rewrites the request as the guest should see it: prefix stripped,
//! `x-forwarded-prefix` set, `x-request-id` present.

use http::header::{HOST, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};

/// Header carrying the request id, in both directions.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Header telling the guest which path prefix Lodge stripped.
pub const FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");

/// The path prefix under which tenants are reachable without a DNS name.
const TENANTS_PREFIX: &str = "/tenants/";

/// Which tenant a request is for, and how it was addressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The tenant's slug.
    pub slug: String,
    /// The path prefix that was stripped, e.g. `/tenants/acme`; `None` for host routing.
    pub prefix: Option<String>,
}

/// True for a valid slug: 1–63 of `[a-z0-9-]`, not starting or ending with `-`.
pub fn is_valid_slug(slug: &str) -> bool {
    (1..=63).contains(&slug.len())
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !slug.starts_with('-')
        && !slug.ends_with('-')
}

/// Finds the tenant addressed by `req`, host routing first, then the path prefix.
pub fn route<B>(req: &http::Request<B>, base_domain: Option<&str>) -> Option<Route> {
    host_route(req, base_domain).or_else(|| path_route(req.uri()))
}

fn host_route<B>(req: &http::Request<B>, base_domain: Option<&str>) -> Option<Route> {
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())?;
    let host = strip_port(host).trim_end_matches('.').to_ascii_lowercase();
    let slug = host
        .strip_suffix(".localhost")
        .or_else(|| {
            base_domain
                .map(|d| d.trim_matches('.'))
                .filter(|d| !d.is_empty())
                .and_then(|d| host.strip_suffix(d)?.strip_suffix('.'))
        })
        .filter(|slug| is_valid_slug(slug))?;
    Some(Route {
        slug: slug.to_owned(),
        prefix: None,
    })
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host; // an IPv6 literal never names a tenant
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

fn path_route(uri: &Uri) -> Option<Route> {
    let rest = uri.path().strip_prefix(TENANTS_PREFIX)?;
    let slug = rest.split('/').next().unwrap_or(rest);
    is_valid_slug(slug).then(|| Route {
        slug: slug.to_owned(),
        prefix: Some(format!("{TENANTS_PREFIX}{slug}")),
    })
}

/// Rewrites `req` for the guest: strips the route's prefix, sets
/// `x-forwarded-prefix` (removing any the client sent) and `x-request-id`.
pub fn prepare_for_guest<B>(req: &mut http::Request<B>, route: &Route, request_id: &HeaderValue) {
    let headers = req.headers_mut();
    headers.remove(FORWARDED_PREFIX);
    headers.insert(REQUEST_ID, request_id.clone());
    let Some(prefix) = &route.prefix else {
        return;
    };
    if let Ok(value) = HeaderValue::from_str(prefix) {
        req.headers_mut().insert(FORWARDED_PREFIX, value);
    }
    let uri = req.uri();
    let rest = uri.path().strip_prefix(prefix.as_str()).unwrap_or("");
    let path = if rest.is_empty() { "/" } else { rest };
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = PathAndQuery::try_from(path_and_query).ok();
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

/// The request id: the client's `x-request-id` if it is sane, else a new UUID.
pub fn request_id<B>(req: &http::Request<B>) -> HeaderValue {
    req.headers()
        .get(REQUEST_ID)
        .filter(|v| {
            let bytes = v.as_bytes();
            (1..=128).contains(&bytes.len())
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
        })
        .cloned()
        .unwrap_or_else(|| {
            // Hex digits written straight into a buffer: no formatter, no String.
            let mut buf = [0u8; uuid::fmt::Simple::LENGTH];
            let id = uuid::Uuid::now_v7().simple().encode_lower(&mut buf);
            HeaderValue::from_str(id).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(host: &str, uri: &str) -> http::Request<()> {
        let mut builder = http::Request::builder().uri(uri);
        if !host.is_empty() {
            builder = builder.header(HOST, host);
        }
        builder.body(()).unwrap_or_default()
    }

    fn slug(host: &str, uri: &str, base: Option<&str>) -> Option<String> {
        route(&req(host, uri), base).map(|r| r.slug)
    }

    #[test]
    fn host_routing() {
        assert_eq!(slug("acme.localhost", "/", None).as_deref(), Some("acme"));
        assert_eq!(
            slug("Acme.LocalHost:3000", "/x", None).as_deref(),
            Some("acme")
        );
        assert_eq!(
            slug("acme.apps.example.com", "/", Some("apps.example.com")).as_deref(),
            Some("acme")
        );
        assert_eq!(slug("acme.apps.example.com", "/", None), None);
        assert_eq!(slug("localhost:3000", "/", None), None);
        assert_eq!(slug("a.b.localhost", "/", None), None);
        assert_eq!(
            slug("xapps.example.com", "/", Some("apps.example.com")),
            None
        );
        assert_eq!(slug("[::1]:3000", "/", None), None);
    }

    #[test]
    fn path_routing_strips_the_prefix() {
        let mut r = req("localhost:3000", "/tenants/acme/api/x?y=1");
        let found = route(&r, None).expect("routed");
        assert_eq!(found.slug, "acme");
        prepare_for_guest(&mut r, &found, &HeaderValue::from_static("rid"));
        assert_eq!(r.uri().path(), "/api/x");
        assert_eq!(r.uri().query(), Some("y=1"));
        assert_eq!(r.headers()[FORWARDED_PREFIX], "/tenants/acme");
        assert_eq!(r.headers()[REQUEST_ID], "rid");

        let mut r = req("localhost", "/tenants/acme");
        let found = route(&r, None).expect("routed");
        prepare_for_guest(&mut r, &found, &HeaderValue::from_static("rid"));
        assert_eq!(r.uri().path(), "/");

        assert_eq!(slug("localhost", "/tenants/", None), None);
        assert_eq!(slug("localhost", "/tenants/UP/x", None), None);
        assert_eq!(slug("localhost", "/tenantsx/acme", None), None);
    }

    #[test]
    fn host_routing_wins_and_keeps_the_path() {
        let mut r = req("acme.localhost", "/tenants/other/x");
        r.headers_mut()
            .insert(FORWARDED_PREFIX, HeaderValue::from_static("/spoofed"));
        let found = route(&r, None).expect("routed");
        assert_eq!(found.slug, "acme");
        prepare_for_guest(&mut r, &found, &HeaderValue::from_static("rid"));
        assert_eq!(r.uri().path(), "/tenants/other/x");
        assert!(r.headers().get(FORWARDED_PREFIX).is_none());
    }

    #[test]
    fn request_ids_are_kept_when_sane() {
        let mut r = req("localhost", "/");
        r.headers_mut()
            .insert(REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&r), "abc-123");
        r.headers_mut()
            .insert(REQUEST_ID, HeaderValue::from_static("has space"));
        assert_ne!(request_id(&r), "has space");
        assert_eq!(request_id(&req("localhost", "/")).len(), 32);
    }

    #[test]
    fn slugs() {
        assert!(is_valid_slug("a"));
        assert!(is_valid_slug("acme-2"));
        assert!(!is_valid_slug(""));
        assert!(!is_valid_slug("-a"));
        assert!(!is_valid_slug("a_b"));
        assert!(!is_valid_slug(&"a".repeat(64)));
    }
}
