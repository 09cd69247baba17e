//! Phase 1: who is asking. The identity keys rate limits and appears in the access log.

use std::net::SocketAddr;

use http::HeaderMap;

/// A client's identity as the rate limiter sees it (`ip:203.0.113.9`, `api-key:…`, …).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientId(pub String);

impl ClientId {
    /// Until the rate limiter's identity rules apply, a client is its peer address.
    pub fn of(_headers: &HeaderMap, peer: SocketAddr) -> ClientId {
        ClientId(format!("ip:{}", peer.ip()))
    }
}

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
