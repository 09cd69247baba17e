//! Which client headers may never reach an origin. A leaf: both the configuration (which refuses
//! to list them in `origin.forward_request_headers`) and the origin-request phase (which drops them)
//! ask it, so neither has to import the other.

use http::HeaderName;

/// Headers no client value of which ever reaches an origin.
pub fn never_forwarded(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        // Framing: set by the client library that writes the request.
        "content-length" | "transfer-encoding" | "expect"
        // Hop-by-hop (RFC 9110 §7.6.1) and their legacy forms.
        | "connection" | "keep-alive" | "proxy-connection" | "te" | "trailer" | "upgrade"
        | "proxy-authorization" | "proxy-authenticate"
        // The origin's own host is used.
        | "host"
        // Set by the edge itself, or URL overrides some frameworks honour.
        | "forwarded" | "via" | "x-real-ip" | "x-original-url" | "x-rewrite-url"
        | "x-forwarded-for" | "x-forwarded-host" | "x-forwarded-proto" | "x-forwarded-port"
        | "x-forwarded-prefix" | "x-forwarded-server" | "x-forwarded-scheme" | "x-host"
        // The fleet's own: its secret and hop count go only where the edge puts them.
        | "eddy-peer" | "eddy-hops"
    )
}
