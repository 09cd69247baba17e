//! Who is asking. The identity keys rate limits and appears in the access log. Pure (headers and peer
//! in, identity out), and outside `phases` so that the app state and the access log can hold it without
//! importing the request path.
//!
//! Rules come from `rate_limit.identify`, tried in order; the first that yields an identity wins:
//! - `x-api-key` → `api-key:<value>`;
//! - `authorization` → `auth:<first 32 hex digits of SHA-256 of the header value>`: the credential never
//!   appears in keys, logs or metrics (operators compute an override's id with
//!   `printf %s 'Bearer …' | sha256sum | cut -c1-32`);
//! - `x-forwarded-for` → `ip:<addr>`, the right-most address not in `trusted_proxies`, believed only
//!   when the peer itself is a trusted proxy (the left-most entries are whatever the client wrote);
//! - `peer` → `ip:<socket peer address>`.
//!
//! When no rule applies the peer address is used anyway: every request has an identity.

use std::net::{IpAddr, SocketAddr};

use http::header::{HeaderMap, AUTHORIZATION};
use http::HeaderName;
use ipnet::IpNet;
use sha2::{Digest, Sha256};

use crate::ratelimit::config::{IdentifyBy, RateLimitConfig};

static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// API keys longer than this, or with odd characters, are hashed rather than logged verbatim.
const MAX_PLAIN_API_KEY: usize = 128;

/// A client's identity as the rate limiter sees it (`ip:203.0.113.9`, `api-key:…`, `auth:…`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientId(pub String);

/// How identities are derived, from the `[rate_limit]` configuration.
#[derive(Debug, Clone)]
pub struct IdentityRules {
    order: Vec<IdentifyBy>,
    trusted_proxies: Vec<IpNet>,
}

impl Default for IdentityRules {
    fn default() -> Self {
        IdentityRules::from_config(&RateLimitConfig::default())
    }
}

impl IdentityRules {
    pub fn from_config(config: &RateLimitConfig) -> IdentityRules {
        IdentityRules {
            order: config.identify.clone(),
            trusted_proxies: config.trusted_proxies.iter().map(|t| t.0).collect(),
        }
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// The right-most X-Forwarded-For address that is not a trusted proxy; if every hop is trusted,
    /// the left-most. `None` when the peer is not trusted, the header is absent, or an entry is not
    /// an address (a broken chain is not believed).
    fn forwarded_for(&self, headers: &HeaderMap, peer: IpAddr) -> Option<IpAddr> {
        if !self.trusts(peer) {
            return None;
        }
        let mut hops: Vec<&str> = Vec::new();
        for value in headers.get_all(&X_FORWARDED_FOR) {
            hops.extend(value.to_str().ok()?.split(',').map(str::trim).filter(|h| !h.is_empty()));
        }
        let mut leftmost = None;
        for hop in hops.iter().rev() {
            let ip = parse_hop(hop)?;
            if !self.trusts(ip) {
                return Some(ip);
            }
            leftmost = Some(ip);
        }
        leftmost
    }
}

/// `203.0.113.9`, `203.0.113.9:4711`, `2001:db8::1` or `[2001:db8::1]:4711`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let ip = hop.parse::<IpAddr>().ok().or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))?;
    Some(ip.to_canonical())
}

/// `ip:<address>`, in one allocation of the right size (`format!` guesses short and grows: two).
fn ip_id(ip: IpAddr) -> String {
    use std::fmt::Write;
    // The longest textual IPv6 address is 45 characters (an IPv4-mapped one, RFC 4291 §2.2).
    let mut id = String::with_capacity(3 + 45);
    id.push_str("ip:");
    let _ = write!(id, "{ip}");
    id
}

fn short_hash(value: &[u8]) -> String {
    hex::encode(Sha256::digest(value))[..32].to_string()
}

impl ClientId {
    pub fn of(rules: &IdentityRules, headers: &HeaderMap, peer: SocketAddr) -> ClientId {
        let peer_ip = peer.ip().to_canonical();
        for rule in &rules.order {
            let found = match rule {
                IdentifyBy::ApiKey => headers.get(&X_API_KEY).and_then(|v| {
                    let bytes = v.as_bytes().trim_ascii();
                    if bytes.is_empty() {
                        None
                    } else if bytes.len() <= MAX_PLAIN_API_KEY && bytes.iter().all(|b| b.is_ascii_graphic()) {
                        Some(format!("api-key:{}", String::from_utf8_lossy(bytes)))
                    } else {
                        Some(format!("api-key:h:{}", short_hash(bytes)))
                    }
                }),
                IdentifyBy::Authorization => headers
                    .get(AUTHORIZATION)
                    .filter(|v| !v.as_bytes().trim_ascii().is_empty())
                    .map(|v| format!("auth:{}", short_hash(v.as_bytes()))),
                IdentifyBy::ForwardedFor => rules.forwarded_for(headers, peer_ip).map(ip_id),
                IdentifyBy::Peer => Some(ip_id(peer_ip)),
            };
            if let Some(id) = found {
                return ClientId(id);
            }
        }
        ClientId(ip_id(peer_ip))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::config::TrustedNet;

    fn rules(order: &[IdentifyBy], trusted: &[&str]) -> IdentityRules {
        let config = RateLimitConfig {
            identify: order.to_vec(),
            trusted_proxies: trusted.iter().map(|t| TrustedNet(t.parse().expect("net"))).collect(),
            ..RateLimitConfig::default()
        };
        IdentityRules::from_config(&config)
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(HeaderName::from_bytes(name.as_bytes()).expect("name"), value.parse().expect("value"));
        }
        map
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().expect("ip"), 40000)
    }

    const ALL: [IdentifyBy; 4] =
        [IdentifyBy::ApiKey, IdentifyBy::Authorization, IdentifyBy::ForwardedFor, IdentifyBy::Peer];

    #[test]
    fn first_present_rule_wins() {
        let r = rules(&ALL, &["127.0.0.1/32"]);
        let both = headers(&[("x-api-key", "partner-123"), ("authorization", "Bearer s3cret")]);
        assert_eq!(ClientId::of(&r, &both, peer("127.0.0.1")).0, "api-key:partner-123");
        let auth = headers(&[("authorization", "Bearer s3cret")]);
        let id = ClientId::of(&r, &auth, peer("127.0.0.1")).0;
        assert!(id.starts_with("auth:") && id.len() == 5 + 32, "{id}");
        assert!(!id.contains("s3cret"));
        assert_eq!(id, format!("auth:{}", &hex::encode(Sha256::digest(b"Bearer s3cret"))[..32]));
        assert_eq!(ClientId::of(&r, &HeaderMap::new(), peer("192.0.2.7")).0, "ip:192.0.2.7");
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies_and_read_from_the_right() {
        let r = rules(&[IdentifyBy::ForwardedFor, IdentifyBy::Peer], &["127.0.0.1/32", "10.0.0.0/8"]);
        // The client wrote "6.6.6.6" itself; 203.0.113.9 is what our own proxy 10.1.1.1 saw.
        let xff = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.1.1.1")]);
        assert_eq!(ClientId::of(&r, &xff, peer("127.0.0.1")).0, "ip:203.0.113.9");
        // Several header lines are one list, in order.
        let split = headers(&[("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "203.0.113.9:5000, 10.1.1.1")]);
        assert_eq!(ClientId::of(&r, &split, peer("127.0.0.1")).0, "ip:203.0.113.9");
        // An untrusted peer cannot choose its identity.
        assert_eq!(ClientId::of(&r, &xff, peer("198.51.100.1")).0, "ip:198.51.100.1");
        // Garbage in the chain: not believed, fall back to the peer.
        let broken = headers(&[("x-forwarded-for", "203.0.113.9, unknown")]);
        assert_eq!(ClientId::of(&r, &broken, peer("127.0.0.1")).0, "ip:127.0.0.1");
        // Every hop trusted: the left-most is the best we know.
        let internal = headers(&[("x-forwarded-for", "10.0.0.5, 10.0.0.6")]);
        assert_eq!(ClientId::of(&r, &internal, peer("127.0.0.1")).0, "ip:10.0.0.5");
    }

    #[test]
    fn odd_api_keys_are_hashed_and_ipv4_mapped_peers_are_plain() {
        let r = rules(&ALL, &[]);
        let long = "k".repeat(500);
        let id = ClientId::of(&r, &headers(&[("x-api-key", &long)]), peer("127.0.0.1")).0;
        assert!(id.starts_with("api-key:h:") && id.len() < 50, "{id}");
        let mapped = SocketAddr::new("::ffff:192.0.2.7".parse().expect("ip"), 1);
        assert_eq!(ClientId::of(&r, &HeaderMap::new(), mapped).0, "ip:192.0.2.7");
    }
}
