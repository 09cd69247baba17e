//! The fleet: which member owns a key ([`ring`]), how a miss travels to its owner, and how members
//! recognise each other.
//!
//! - A miss for a key this edge does not own is filled from the owner (a peer fill), which fetches
//!   from the origin as usual, coalesced: the fleet asks the origin once per object.
//! - A request from a peer carries the fleet's secret in [`PEER_HEADER`]. Such a request is never
//!   sent on to another peer (no loops, whatever the members believe about ownership) and is not
//!   rate-limited again (its client was, at the first edge).
//! - A member that cannot be reached, times out or answers 5xx rests for `origin.failure_backoff`;
//!   meanwhile its keys go to the next member in each key's own order. After the rest, the next miss
//!   that ranks it first tries it again: that request is the probe, and a member that answers is back.
//! - Whether a non-owner keeps a copy of what the owner gave it is `cluster.local_copy`.
//!
//! Invariant: nothing here decides HTTP semantics. A peer's answer goes through the same cache policy
//! as an origin's (its `Age` counts), and a peer is reached through the same `HttpOrigin` checks, so a
//! path can no more escape through a peer than through an origin.

pub mod ring;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::cache::CacheKey;
use crate::config::{ClusterConfig, LocalCopy, OriginConfig, PeerSpec};
use crate::metrics::FleetMember;
use crate::origin::http::{HttpClients, HttpOrigin};
use crate::origin::{OriginError, OriginRequest, OriginResponse};
use ring::Ring;

/// The header that carries the fleet's secret on requests between members (and to a shield).
pub static PEER_HEADER: HeaderName = HeaderName::from_static("eddy-peer");

/// One member as this edge sees it.
struct Member {
    url: String,
    /// Its admin listener, when the fleet's list gives it (`stats --fleet` reads it).
    admin: Option<String>,
    /// `None` for this edge itself.
    origin: Option<HttpOrigin>,
    /// Milliseconds since `Cluster::epoch` until which the member rests (0: healthy).
    down_until_ms: AtomicU64,
}

/// Where a key's miss goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// This edge fetches it (from its shield or origins).
    Here,
    /// Member `index` (in `peers` order) should be asked.
    Peer(usize),
}

pub struct Cluster {
    ring: Ring,
    members: Vec<Member>,
    self_index: usize,
    secret: HeaderValue,
    local_copy: LocalCopy,
    /// Keys requested here once, for `local_copy = "hot"` (a bounded, self-expiring set).
    seen_once: moka::sync::Cache<u64, ()>,
    backoff: Duration,
    epoch: Instant,
}

/// Keys remembered for `local_copy = "hot"`: enough for a large working set, bounded memory.
const HOT_TRACKED_KEYS: u64 = 200_000;

impl Cluster {
    /// The fleet of `members` (as listed, this edge at `self_index`), with `[cluster]`'s other
    /// settings. The secret has been validated with the configuration.
    pub fn new(
        members: &[PeerSpec],
        self_index: usize,
        config: &ClusterConfig,
        origin: &OriginConfig,
    ) -> Result<Cluster, OriginError> {
        let invalid = |reason: &str| OriginError::Invalid { origin: "cluster".into(), reason: reason.into() };
        let secret = config.secret.as_deref().ok_or_else(|| invalid("no secret"))?;
        let secret = HeaderValue::from_str(secret).map_err(|_| invalid("the secret is not a header value"))?;
        if self_index >= members.len() {
            return Err(invalid("this edge is not a member"));
        }
        // A peer may itself wait a whole first-byte timeout on the origin before it answers: give it
        // that, plus the time to reach it, before calling it down.
        let mut peer_config = origin.clone();
        peer_config.first_byte_timeout.0 = origin.first_byte_timeout.0.saturating_mul(2);
        let clients = HttpClients::new(&peer_config)?;
        let mut nodes = Vec::with_capacity(members.len());
        for (index, peer) in members.iter().enumerate() {
            let url = canonical_url(peer.url());
            let origin =
                if index == self_index { None } else { Some(HttpOrigin::new(&url, clients.clone(), &peer_config)?) };
            let admin = peer.admin().map(str::to_string);
            nodes.push(Member { url, admin, origin, down_until_ms: AtomicU64::new(0) });
        }
        let ring = Ring::new(nodes.iter().zip(members).map(|(m, p)| (m.url.as_str(), p.weight())));
        Ok(Cluster {
            ring,
            members: nodes,
            self_index,
            secret,
            local_copy: config.local_copy,
            seen_once: moka::sync::Cache::builder()
                .max_capacity(HOT_TRACKED_KEYS)
                .time_to_live(config.hot_window.0)
                .build(),
            backoff: origin.failure_backoff.0,
            epoch: Instant::now(),
        })
    }

    /// How many members the fleet has, this edge included.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether a request comes from a fleet member: it carries the fleet's secret. Compared in
    /// constant time, so the secret cannot be guessed byte by byte from response times.
    pub fn is_peer_request(&self, headers: &HeaderMap) -> bool {
        headers.get(&PEER_HEADER).is_some_and(|value| constant_time_eq(value.as_bytes(), self.secret.as_bytes()))
    }

    /// Marks a request as coming from this fleet.
    pub fn mark(&self, headers: &mut HeaderMap) {
        headers.insert(PEER_HEADER.clone(), self.secret.clone());
    }

    /// Members in `key`'s order of preference, resting members skipped, up to and excluding this
    /// edge: the peers to try, in order, before fetching here. Empty when this edge owns the key (or
    /// everyone ranked above it rests).
    pub fn peers_before_me(&self, key: &CacheKey) -> Vec<usize> {
        let now = self.now_ms();
        self.ring
            .ranked(key.as_str().as_bytes())
            .into_iter()
            .take_while(|&i| i != self.self_index)
            .filter(|&i| self.members[i].down_until_ms.load(Ordering::Relaxed) <= now)
            .collect()
    }

    /// The owner of `key`, resting or not.
    pub fn owner(&self, key: &CacheKey) -> Route {
        match self.ring.owner(key.as_str().as_bytes()) {
            Some(i) if i != self.self_index => Route::Peer(i),
            _ => Route::Here,
        }
    }

    pub fn member_url(&self, index: usize) -> &str {
        self.members.get(index).map_or("", |m| m.url.as_str())
    }

    /// Sends a fill to member `index` on behalf of a client of `host`. A member that cannot be
    /// reached, times out or answers 5xx rests, as a failing origin does: a member that is up but
    /// broken must not answer errors for its share of the keys. (When the origin itself fails, this
    /// costs one more request to it, from the next member in line.)
    pub async fn send(&self, index: usize, request: &OriginRequest, host: &str) -> Result<OriginResponse, OriginError> {
        let Some(member) = self.members.get(index) else { return Err(OriginError::NoOrigin) };
        let Some(origin) = &member.origin else { return Err(OriginError::NoOrigin) };
        let mut request = request.clone();
        // The owner keys the object by the Host the client used, as this edge did.
        if let Ok(host) = HeaderValue::from_str(host) {
            request.headers.insert(http::header::HOST, host);
        }
        self.mark(&mut request.headers);
        let rest = || {
            let until = self.now_ms().saturating_add(self.backoff.as_millis() as u64).max(1);
            member.down_until_ms.store(until, Ordering::Relaxed);
        };
        match origin.send(&request).await {
            Ok(response) if response.status.is_server_error() => {
                rest();
                Err(OriginError::Failed { origin: member.url.clone(), reason: format!("answered {}", response.status) })
            }
            Ok(response) => {
                member.down_until_ms.store(0, Ordering::Relaxed);
                Ok(response)
            }
            Err(error @ OriginError::Refused { .. }) => Err(error),
            Err(error) => {
                rest();
                Err(error)
            }
        }
    }

    /// Whether to keep a copy of what the owner of `key` sent (`cluster.local_copy`).
    pub fn keep_local_copy(&self, key: &CacheKey) -> bool {
        match self.local_copy {
            LocalCopy::Always => true,
            LocalCopy::Never => false,
            LocalCopy::Hot => {
                let hash = xxhash_rust::xxh3::xxh3_64(key.as_str().as_bytes());
                if self.seen_once.contains_key(&hash) {
                    true
                } else {
                    self.seen_once.insert(hash, ());
                    false
                }
            }
        }
    }

    /// Each member as `/stats` shows it.
    pub fn members(&self) -> Vec<FleetMember> {
        let now = self.now_ms();
        self.members
            .iter()
            .enumerate()
            .map(|(i, m)| FleetMember {
                url: m.url.clone(),
                admin: m.admin.clone(),
                this_edge: i == self.self_index,
                resting: m.down_until_ms.load(Ordering::Relaxed) > now,
            })
            .collect()
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// A member URL as the ring names it: without a trailing slash, so that `http://a:1/` and `http://a:1`
/// are one member on every edge.
pub fn canonical_url(url: &str) -> String {
    url.trim_end_matches('/').to_string()
}

/// Which of `members` is this edge: the one named by `cluster.self`, or else the one whose URL is
/// the address this edge listens on (an IP literal and port: `http://127.0.0.1:8081`).
pub fn find_self(members: &[PeerSpec], self_url: Option<&str>, listen: SocketAddr) -> Option<usize> {
    if let Some(self_url) = self_url {
        let wanted = canonical_url(self_url);
        return members.iter().position(|m| canonical_url(m.url()) == wanted);
    }
    members.iter().position(|m| {
        url::Url::parse(m.url()).ok().is_some_and(|url| {
            let ip = match url.host() {
                Some(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
                Some(url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
                _ => None,
            };
            ip == Some(listen.ip()) && url.port_or_known_default() == Some(listen.port())
        })
    })
}

/// Reads a peers file: one member per line, `URL [weight=N] [admin=URL]`; `#` starts a comment.
/// Errors name the line.
pub fn parse_peers_file(text: &str) -> Result<Vec<PeerSpec>, String> {
    let mut members = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let at = |reason: String| format!("line {}: {reason}", number + 1);
        let mut words = line.split_whitespace();
        let url = words.next().unwrap_or_default().to_string();
        let (mut weight, mut admin) = (1.0, None);
        for word in words {
            match word.split_once('=') {
                Some(("weight", value)) => {
                    weight = value
                        .parse::<f64>()
                        .ok()
                        .filter(|w| w.is_finite() && *w > 0.0)
                        .ok_or_else(|| at(format!("weight '{value}' is not a positive number")))?;
                }
                Some(("admin", value)) => admin = Some(value.to_string()),
                _ => return Err(at(format!("'{word}' is neither weight=N nor admin=URL"))),
            }
        }
        match url::Url::parse(&url) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some() => {}
            _ => return Err(at(format!("'{url}' is not an http(s) URL"))),
        }
        members.push(PeerSpec::Node { url, weight, admin });
    }
    Ok(members)
}

/// Equal contents, in time that depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PeerSpec;

    fn cluster(local_copy: LocalCopy) -> Cluster {
        let config = ClusterConfig { secret: Some("0123456789abcdef".into()), local_copy, ..ClusterConfig::default() };
        let members: Vec<PeerSpec> = (1..=3).map(|p| PeerSpec::Url(format!("http://127.0.0.1:{p}"))).collect();
        Cluster::new(&members, 0, &config, &OriginConfig::default()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn this_edge_is_found_by_name_or_by_its_listen_address() {
        let members = parse_peers_file(
            "# the fleet\nhttp://127.0.0.1:8080\nhttp://127.0.0.1:8081/ weight=2 admin=http://127.0.0.1:9091\n\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(members.len(), 2);
        assert_eq!(members[1].weight(), 2.0);
        assert_eq!(members[1].admin(), Some("http://127.0.0.1:9091"));
        let listen: SocketAddr = "127.0.0.1:8081".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(find_self(&members, None, listen), Some(1));
        assert_eq!(find_self(&members, Some("http://127.0.0.1:8080/"), listen), Some(0));
        let elsewhere: SocketAddr = "127.0.0.1:9999".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(find_self(&members, None, elsewhere), None);
    }

    #[test]
    fn a_bad_peers_file_line_is_named() {
        for (text, expected) in [
            ("http://a:1\nftp://b:2\n", "line 2:"),
            ("http://a:1 weight=-1\n", "line 1: weight '-1'"),
            ("http://a:1 colour=blue\n", "line 1: 'colour=blue'"),
        ] {
            let error = parse_peers_file(text).err().unwrap_or_default();
            assert!(error.starts_with(expected), "{text:?}: {error}");
        }
    }

    fn key(i: usize) -> CacheKey {
        CacheKey::primary("cdn.example", &format!("/v/{i}.ts"), None, &[])
    }

    #[test]
    fn only_the_secret_makes_a_peer_request() {
        let cluster = cluster(LocalCopy::Hot);
        let mut headers = HeaderMap::new();
        assert!(!cluster.is_peer_request(&headers));
        headers.insert(PEER_HEADER.clone(), HeaderValue::from_static("0123456789abcdeX"));
        assert!(!cluster.is_peer_request(&headers));
        headers.insert(PEER_HEADER.clone(), HeaderValue::from_static("0123456789abcde"));
        assert!(!cluster.is_peer_request(&headers));
        cluster.mark(&mut headers);
        assert!(cluster.is_peer_request(&headers));
    }

    #[test]
    fn peers_before_me_are_the_owners_up_to_this_edge() {
        let cluster = cluster(LocalCopy::Hot);
        for i in 0..200 {
            let key = key(i);
            let before = cluster.peers_before_me(&key);
            match cluster.owner(&key) {
                Route::Here => assert!(before.is_empty()),
                Route::Peer(owner) => assert_eq!(before.first(), Some(&owner)),
            }
            assert!(!before.contains(&cluster.self_index));
        }
    }

    #[test]
    fn a_resting_member_is_passed_over_until_its_rest_ends() {
        let cluster = cluster(LocalCopy::Hot);
        let key = (0..100).map(key).find(|k| cluster.owner(k) != Route::Here).unwrap_or_else(|| key(0));
        let Route::Peer(owner) = cluster.owner(&key) else { panic!("some key has another owner") };
        cluster.members[owner].down_until_ms.store(u64::MAX, Ordering::Relaxed);
        assert!(!cluster.peers_before_me(&key).contains(&owner));
        cluster.members[owner].down_until_ms.store(0, Ordering::Relaxed);
        assert_eq!(cluster.peers_before_me(&key).first(), Some(&owner));
    }

    #[test]
    fn hot_keeps_a_copy_from_the_second_request() {
        let hot = cluster(LocalCopy::Hot);
        assert!(!hot.keep_local_copy(&key(1)));
        assert!(hot.keep_local_copy(&key(1)));
        assert!(!hot.keep_local_copy(&key(2)));
        assert!(cluster(LocalCopy::Always).keep_local_copy(&key(3)));
        assert!(!cluster(LocalCopy::Never).keep_local_copy(&key(3)));
    }
}
