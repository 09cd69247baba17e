//! Is this a request this edge serves at all? The edge is a reverse proxy for its configured
//! origins only: it never forwards to a host named by the client, and a request it cannot read one way
//! only is refused before it reaches the cache or an origin.
//!
//! - The host comes from `Host` (HTTP/1.1) or `:authority` (HTTP/2, RFC 9113 §8.3.1), and must be a
//!   valid `host[:port]` (RFC 3986 §3.2.2): it becomes part of the cache key, so a Host such as
//!   `cdn.example/live` must never be read as a path.
//! - Absolute-form targets (`GET http://host/x HTTP/1.1`) are what forward proxies get; they are served
//!   only for the operator's `server_names`.
//! - A path with a dot segment, raw or encoded, is refused: it could leave an origin's path prefix.
//! - GET and HEAD carry no body here. A body on them has no defined meaning (RFC 9110 §9.3.1) and is a
//!   classic smuggling vehicle, so such requests are refused rather than half-read.

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::request::Parts;
use http::{Method, StatusCode, Version};

use crate::origin::path;

/// The request's target, once accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host as the client named it: lower-case, a valid `host[:port]`, for the cache key.
    pub host: String,
    pub path: String,
    pub query: Option<String>,
}

impl Target {
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{}", self.path, q),
            None => self.path.clone(),
        }
    }
}

/// A refusal: status and a short reason for the client.
pub type Refusal = (StatusCode, String);

fn bad_request(reason: impl Into<String>) -> Refusal {
    (StatusCode::BAD_REQUEST, reason.into())
}

/// Accepts or refuses a request.
pub fn accept(parts: &Parts, server_names: &[String]) -> Result<Target, Refusal> {
    if parts.method == Method::CONNECT {
        return Err((
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not supported: this edge is not a forward proxy".into(),
        ));
    }
    let host = requested_host(parts, server_names)?;
    let path = parts.uri.path();
    if !path.starts_with('/') {
        return Err(bad_request("request target must be an absolute path"));
    }
    if let Err(refusal) = path::check(path) {
        return Err(bad_request(refusal.reason()));
    }
    if (parts.method == Method::GET || parts.method == Method::HEAD) && carries_body(parts) {
        return Err(bad_request("GET and HEAD requests must not carry a body"));
    }
    Ok(Target { host, path: path.to_string(), query: parts.uri.query().map(str::to_string) })
}

/// The host this request is for, checked: lower-case `host[:port]`.
fn requested_host(parts: &Parts, server_names: &[String]) -> Result<String, Refusal> {
    let mut host_headers = parts.headers.get_all(HOST).iter();
    let host_header = host_headers.next();
    if host_headers.next().is_some() {
        // RFC 9112 §3.2: a request with more than one Host is answered 400.
        return Err(bad_request("more than one Host header"));
    }
    let host_header = match host_header {
        Some(value) => {
            let text = value.to_str().map_err(|_| bad_request("Host header is not a valid host[:port]"))?;
            if !is_valid_authority(text) {
                return Err(bad_request("Host header is not a valid host[:port]"));
            }
            Some(text.to_ascii_lowercase())
        }
        None => None,
    };
    let authority = parts.uri.authority().map(|a| a.as_str());
    if let Some(authority) = authority {
        if !is_valid_authority(authority) {
            return Err(bad_request("request authority is not a valid host[:port]"));
        }
    }
    let authority = authority.map(str::to_ascii_lowercase);
    let host = match (parts.version, authority, host_header) {
        // HTTP/2 and HTTP/3 carry the host as :authority in every request; it is the Host.
        (Version::HTTP_2 | Version::HTTP_3, Some(authority), host_header) => {
            // RFC 9113 §8.3.1: a Host that names another entity than :authority is malformed.
            if host_header.is_some_and(|h| h != authority) {
                return Err(bad_request("Host and :authority differ"));
            }
            authority
        }
        // HTTP/1.x absolute form (RFC 9112 §3.2.2): the target's authority wins over Host; only our own
        // names are served, so the edge is never a forward proxy.
        (_, Some(authority), _) => {
            if !name_listed(&authority, server_names) {
                return Err((
                    StatusCode::MISDIRECTED_REQUEST,
                    format!("this edge does not serve {authority} (not a forward proxy)"),
                ));
            }
            return Ok(authority);
        }
        (_, None, Some(host)) => host,
        (Version::HTTP_10 | Version::HTTP_09, None, None) => return Ok(String::new()),
        (_, None, None) => return Err(bad_request("missing Host header")),
    };
    if !server_names.is_empty() && !name_listed(&host, server_names) {
        return Err((StatusCode::MISDIRECTED_REQUEST, format!("this edge does not serve host {host}")));
    }
    Ok(host)
}

/// Does the request announce a body? (`Content-Length` other than 0, or any `Transfer-Encoding`.)
fn carries_body(parts: &Parts) -> bool {
    parts.headers.contains_key(TRANSFER_ENCODING)
        || parts.headers.get_all(CONTENT_LENGTH).iter().any(|v| v.as_bytes().iter().any(|&b| b != b'0'))
}

/// RFC 3986 §3.2.2–3.2.3: `host [ ":" port ]`, where host is an IP-literal in brackets, an IPv4
/// address, or a reg-name (unreserved, pct-encoded, sub-delims). An empty host is refused: every
/// request this edge serves names one. No userinfo (`@`), no path (`/`), no spaces, ASCII only.
pub fn is_valid_authority(authority: &str) -> bool {
    let (host, port) = split_port(authority);
    // The grammar allows an empty port; a port has at most 5 digits and fits in u16.
    let port_ok =
        |port: &str| port.is_empty() || (port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok());
    if !port.is_none_or(port_ok) {
        return false;
    }
    if let Some(literal) = host.strip_prefix('[') {
        let Some(inner) = literal.strip_suffix(']') else { return false };
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty() && is_reg_name(host)
}

/// Splits off `:port` when the text after the last colon is the port (not inside an IPv6 literal).
fn split_port(authority: &str) -> (&str, Option<&str>) {
    match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => (&authority[..i], Some(&authority[i + 1..])),
        _ => (authority, None),
    }
}

/// reg-name = *( unreserved / pct-encoded / sub-delims ); an IPv4 address is a reg-name too.
fn is_reg_name(host: &str) -> bool {
    let bytes = host.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3);
            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                return false;
            }
            i += 3;
            continue;
        }
        let unreserved = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
        let sub_delim = matches!(b, b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=');
        if !(unreserved || sub_delim) {
            return false;
        }
        i += 1;
    }
    true
}

fn name_listed(host: &str, names: &[String]) -> bool {
    let (bare, _) = split_port(host);
    names.iter().any(|n| n.eq_ignore_ascii_case(host) || n.eq_ignore_ascii_case(bare))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, host: Option<&str>) -> Parts {
        let mut builder = http::Request::get(uri);
        if let Some(h) = host {
            builder = builder.header(HOST, h);
        }
        builder.body(()).expect("request").into_parts().0
    }

    fn status(result: Result<Target, Refusal>) -> StatusCode {
        result.map_or_else(|(status, _)| status, |_| StatusCode::OK)
    }

    #[test]
    fn origin_form_with_any_host_when_no_names_configured() {
        let t = accept(&parts("/a/b.ts?x=1", Some("Edge.Example")), &[]).expect("accepted");
        assert_eq!(t, Target { host: "edge.example".into(), path: "/a/b.ts".into(), query: Some("x=1".into()) });
    }

    #[test]
    fn refuses_foreign_hosts_and_absolute_urls() {
        let names = vec!["cdn.example".to_string()];
        assert!(accept(&parts("/a", Some("cdn.example:8080")), &names).is_ok());
        assert_eq!(status(accept(&parts("/a", Some("evil.example")), &names)), StatusCode::MISDIRECTED_REQUEST);
        assert_eq!(status(accept(&parts("http://evil.example/a", None), &[])), StatusCode::MISDIRECTED_REQUEST);
        assert!(accept(&parts("http://cdn.example/a", None), &names).is_ok());
        assert_eq!(status(accept(&parts("/a", None), &[])), StatusCode::BAD_REQUEST);
    }

    /// RFC 3986 §3.2.2: only `host[:port]`; anything that could be read as a path, userinfo or
    /// another request is refused (the Host-with-a-slash cache poisoning).
    #[test]
    fn hosts_that_are_not_host_port_get_400() {
        for host in [
            "cdn.example/live",
            "cdn.example@evil.example",
            "user@cdn.example",
            "cdn example",
            "cdn.example:80:80",
            "cdn.example:99999",
            "cdn.example:8o",
            "[::1",
            "[not-ipv6]",
            "cdn.example?x",
            "cdn.example#x",
            "",
            "%zz.example",
        ] {
            assert!(!is_valid_authority(host), "{host:?} accepted");
            if http::HeaderValue::from_str(host).is_ok() {
                assert_eq!(status(accept(&parts("/seg1.ts", Some(host)), &[])), StatusCode::BAD_REQUEST, "{host:?}");
            }
        }
        for host in
            ["cdn.example", "cdn.example:8080", "127.0.0.1:80", "[::1]:8080", "[2001:db8::1]", "a-b_c~d.example", "x:"]
        {
            assert!(is_valid_authority(host), "{host:?} refused");
        }
    }

    #[test]
    fn non_ascii_hosts_get_400() {
        let value = http::HeaderValue::from_bytes("caf\u{e9}.example".as_bytes()).expect("opaque bytes");
        let mut p = parts("/a", None);
        p.headers.insert(HOST, value);
        assert_eq!(status(accept(&p, &[])), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn two_host_headers_get_400() {
        let mut p = parts("/a", Some("a.example"));
        p.headers.append(HOST, http::HeaderValue::from_static("b.example"));
        assert_eq!(status(accept(&p, &[])), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn http2_authority_is_the_host() {
        let mut p = parts("http://127.0.0.1:8080/a.ts", None);
        p.version = Version::HTTP_2;
        assert_eq!(accept(&p, &[]).expect("served").host, "127.0.0.1:8080");
        // Host naming another entity than :authority is malformed.
        p.headers.insert(HOST, http::HeaderValue::from_static("other.example"));
        assert_eq!(status(accept(&p, &[])), StatusCode::BAD_REQUEST);
        // server_names apply to :authority exactly as to Host.
        let mut p = parts("http://evil.example/a.ts", None);
        p.version = Version::HTTP_2;
        assert_eq!(status(accept(&p, &["cdn.example".into()])), StatusCode::MISDIRECTED_REQUEST);
    }

    #[test]
    fn dot_segments_get_400() {
        for uri in ["/../secret.txt", "/%2e%2e/secret.txt", "/%2E%2e/secret.txt", "/a/./b"] {
            assert_eq!(status(accept(&parts(uri, Some("h")), &[])), StatusCode::BAD_REQUEST, "{uri}");
        }
    }

    #[test]
    fn get_with_a_body_gets_400() {
        let mut p = parts("/a.ts", Some("h"));
        p.headers.insert(CONTENT_LENGTH, http::HeaderValue::from_static("28"));
        assert_eq!(status(accept(&p, &[])), StatusCode::BAD_REQUEST);
        p.headers.insert(CONTENT_LENGTH, http::HeaderValue::from_static("0"));
        assert!(accept(&p, &[]).is_ok());
        p.headers.insert(TRANSFER_ENCODING, http::HeaderValue::from_static("chunked"));
        assert_eq!(status(accept(&p, &[])), StatusCode::BAD_REQUEST);
    }
}
