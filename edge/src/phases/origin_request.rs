//! The headers of the requests the edge sends to an origin. The client's request is never copied
//! whole:
//!
//! - Framing (`Content-Length`, `Transfer-Encoding`, `Expect`) is set by the HTTP client that writes the
//!   origin request, from the body it really sends. A copied `Content-Length` on a body-less fill makes
//!   the origin wait for bytes that never come, or read the client's next bytes as a second request
//!   (request smuggling; RFC 9112 §11.2).
//! - Hop-by-hop headers (RFC 9110 §7.6.1) and those the client's `Connection` names concern one
//!   connection only.
//! - Forwarding headers (`Forwarded`, `X-Forwarded-*`, `Via`, `X-Real-IP`) and URL overrides
//!   (`X-Original-URL`, `X-Rewrite-URL`) are what origins trust to build absolute links; a client's copy
//!   would shape an object stored for everyone. The edge sets its own from what it knows.
//! - On a cacheable fill only an allow-list of the client's headers goes through (the operator's
//!   `origin.forward_request_headers`), plus those the stored response Varies on: the object is
//!   shared, so headers the key does not hold must not shape it (unkeyed input, the root of web cache
//!   poisoning).

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::forwarding::never_forwarded;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Names the client's `Connection` header lists: hop-by-hop for this connection only.
fn connection_listed(client: &HeaderMap) -> Vec<HeaderName> {
    client
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().to_ascii_lowercase().as_bytes()).ok())
        .collect()
}

tokio::task_local! {
    /// Whether the request being served came over TLS. Set by the listener around the request's whole
    /// path ([`over_tls`]), and read where the forwarding headers are built, so that the scheme reaches
    /// `X-Forwarded-Proto` without every phase passing it along. Origin requests that start outside a
    /// request (none today) count as plain HTTP.
    static CLIENT_OVER_TLS: bool;
}

/// Runs `future` (one request's path through the edge) as a request that came over TLS: its origin
/// requests say `X-Forwarded-Proto: https`.
pub async fn over_tls<F: std::future::Future>(future: F) -> F::Output {
    CLIENT_OVER_TLS.scope(true, future).await
}

/// What the edge knows about the request it forwards, for the forwarding headers it sets.
pub struct Forwarding<'a> {
    /// The client's address.
    pub peer: SocketAddr,
    /// The validated Host (or :authority) the client asked for.
    pub host: &'a str,
    /// For a request from a fleet member (it carried the fleet's secret): the viewer's address and
    /// scheme as that member forwarded them, believed because only a member sends the secret.
    pub from_fleet: Option<FleetForwarded>,
}

/// The forwarding headers a fleet member set for its viewer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetForwarded {
    pub viewer: Option<HeaderValue>,
    pub over_tls: bool,
}

impl FleetForwarded {
    /// Reads what a member forwarded (call only for a request that carried the fleet's secret).
    pub fn from_member(headers: &HeaderMap) -> FleetForwarded {
        FleetForwarded {
            viewer: headers.get(&X_FORWARDED_FOR).cloned(),
            over_tls: headers.get(&X_FORWARDED_PROTO).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https")),
        }
    }
}

impl Forwarding<'_> {
    fn apply(&self, headers: &mut HeaderMap) {
        match self.from_fleet.as_ref().and_then(|fleet| fleet.viewer.clone()) {
            Some(viewer) => {
                headers.insert(X_FORWARDED_FOR, viewer);
            }
            None => {
                if let Ok(peer) = HeaderValue::from_str(&self.peer.ip().to_string()) {
                    headers.insert(X_FORWARDED_FOR, peer);
                }
            }
        }
        if let Ok(host) = HeaderValue::from_str(self.host) {
            if !self.host.is_empty() {
                headers.insert(X_FORWARDED_HOST, host);
            }
        }
        let over_tls = CLIENT_OVER_TLS.try_with(|tls| *tls).unwrap_or(false)
            || self.from_fleet.as_ref().is_some_and(|fleet| fleet.over_tls);
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(if over_tls { "https" } else { "http" }));
        headers.insert(header::VIA, HeaderValue::from_static("1.1 eddy"));
    }
}

/// Headers for a cacheable fill (GET): the allow-listed client headers, those named by `vary`, and the
/// edge's forwarding headers.
pub fn for_fill(client: &HeaderMap, allowed: &[HeaderName], vary: &[HeaderName], forwarding: &Forwarding) -> HeaderMap {
    let listed = connection_listed(client);
    let mut headers = HeaderMap::with_capacity(allowed.len() + vary.len() + 4);
    for name in allowed.iter().chain(vary) {
        if never_forwarded(name) || listed.contains(name) || headers.contains_key(name) {
            continue;
        }
        for value in client.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    forwarding.apply(&mut headers);
    headers
}

/// Headers for a request passed through uncached (POST, PUT, …): every client header except those
/// never forwarded, plus the edge's forwarding headers.
pub fn for_pass(client: &HeaderMap, forwarding: &Forwarding) -> HeaderMap {
    let listed = connection_listed(client);
    let mut headers = HeaderMap::with_capacity(client.len() + 4);
    for (name, value) in client {
        if !never_forwarded(name) && !listed.contains(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    forwarding.apply(&mut headers);
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (n, v) in pairs {
            map.append(HeaderName::from_bytes(n.as_bytes()).expect("name"), v.parse().expect("value"));
        }
        map
    }

    fn forwarding() -> Forwarding<'static> {
        Forwarding { peer: "192.0.2.9:5555".parse().expect("addr"), host: "cdn.example", from_fleet: None }
    }

    fn allowed() -> Vec<HeaderName> {
        crate::config::DEFAULT_FORWARDED_REQUEST_HEADERS.iter().map(|n| HeaderName::from_static(n)).collect()
    }

    #[test]
    fn a_fill_never_carries_framing_or_the_clients_forwarding_headers() {
        let headers = for_fill(
            &client(&[
                ("content-length", "28"),
                ("transfer-encoding", "chunked"),
                ("expect", "100-continue"),
                ("x-forwarded-host", "evil.example"),
                ("x-forwarded-for", "6.6.6.6"),
                ("forwarded", "host=evil.example"),
                ("x-original-url", "/admin"),
                ("x-rewrite-url", "/admin"),
                ("cookie", "a=b"),
                ("x-anything", "1"),
                ("accept-encoding", "gzip"),
                ("user-agent", "player/1"),
            ]),
            &allowed(),
            &[],
            &forwarding(),
        );
        for name in ["content-length", "transfer-encoding", "expect", "forwarded", "x-original-url", "x-rewrite-url"] {
            assert!(!headers.contains_key(name), "{name} forwarded");
        }
        assert!(!headers.contains_key("cookie"), "not in the allow-list");
        assert!(!headers.contains_key("x-anything"), "not in the allow-list");
        assert_eq!(headers["x-forwarded-host"], "cdn.example");
        assert_eq!(headers["x-forwarded-for"], "192.0.2.9");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["via"], "1.1 eddy");
        assert_eq!(headers["accept-encoding"], "gzip");
        assert_eq!(headers["user-agent"], "player/1");
    }

    #[tokio::test]
    async fn a_request_over_tls_says_https_to_the_origin() {
        let plain = for_fill(&client(&[]), &allowed(), &[], &forwarding());
        assert_eq!(plain["x-forwarded-proto"], "http");
        let tls = over_tls(async { for_pass(&client(&[("x-forwarded-proto", "http")]), &forwarding()) }).await;
        assert_eq!(tls["x-forwarded-proto"], "https");
        assert_eq!(tls.get_all("x-forwarded-proto").iter().count(), 1);
    }

    #[test]
    fn a_fill_carries_the_headers_the_response_varies_on() {
        let headers =
            for_fill(&client(&[("x-user", "a")]), &allowed(), &[HeaderName::from_static("x-user")], &forwarding());
        assert_eq!(headers["x-user"], "a");
    }

    #[test]
    fn headers_the_connection_header_names_stay_behind() {
        let headers =
            for_pass(&client(&[("connection", "close, X-Secret"), ("x-secret", "1"), ("x-app", "2")]), &forwarding());
        assert!(!headers.contains_key("x-secret"));
        assert!(!headers.contains_key("connection"));
        assert_eq!(headers["x-app"], "2");
    }
}
