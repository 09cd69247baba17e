//! Where a fill goes: the key's owner in the fleet, else this edge's shield, else the origins.
//!
//! 1. **Peers** (`[cluster]`): a miss for a key another member owns is asked of that member, then
//!    of the next in the key's order if it cannot be reached, until this edge's own turn comes. A
//!    request that came from a peer skips this step: it is never forwarded to another peer.
//! 2. **Shield** (`origin.shield`): an `eddy-edge` between this edge and the origins, so that the
//!    origins see one request per object for every edge behind it. Unreachable, it rests for
//!    `origin.failure_backoff` and the edge goes direct. A shield's 5xx is its origin's answer and is
//!    passed on (going direct would only ask the failing origin twice).
//! 3. **Origins** (`origins`, in failover order).
//!
//! Requests between members and to a shield carry the fleet's secret and a hop count. A request that
//! has already made [`MAX_FLEET_HOPS`] hops goes to the origins, so that even a misconfigured
//! fleet (two shields naming each other) cannot loop.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::cache::CacheKey;
use crate::cluster::{find_self, parse_peers_file, Cluster};
use crate::config::{ClusterConfig, Config, OriginConfig, PeerSpec};
use crate::metrics::{FleetMember, Metrics};
use crate::origin::http::{HttpClients, HttpOrigin};
use crate::origin::{OriginError, OriginRequest, OriginResponse, OriginSet};

/// How many times a request has been passed between edges (peers and shields).
pub static FLEET_HOPS_HEADER: HeaderName = HeaderName::from_static("eddy-hops");

/// Beyond this many edge-to-edge hops, a request goes straight to the origins.
pub const MAX_FLEET_HOPS: u32 = 4;

/// Where a fill's response came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The key's owner (member index in `cluster.peers`).
    Peer(usize),
    Shield,
    Origin,
}

/// How a request reached this edge, as far as the fleet is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Arrival {
    /// It carries the fleet's secret: a member or an edge behind this shield sent it.
    pub from_fleet: bool,
    /// Edge-to-edge hops so far (0 for a viewer's request).
    pub hops: u32,
}

struct Shield {
    origin: HttpOrigin,
    down_until_ms: AtomicU64,
}

pub struct Upstream {
    /// The fleet as last read (from `cluster.peers`, or `cluster.peers_file` when it changes). `None`
    /// while the edge stands alone.
    /// Read on every request (is it a member's?): lock-free, so the hit path takes no lock of ours.
    cluster: ArcSwapOption<Cluster>,
    cluster_config: ClusterConfig,
    origin_config: OriginConfig,
    /// The peers file's (modification time, length) when last read: `Some(None)` when it was missing.
    peers_file_seen: Mutex<Option<Option<(std::time::SystemTime, u64)>>>,
    shield: Option<Shield>,
    backoff: Duration,
    epoch: Instant,
}

/// How often `cluster.peers_file` is checked for a change.
pub const PEERS_FILE_POLL: Duration = Duration::from_secs(1);

impl Upstream {
    pub fn new(config: &Config) -> Result<Upstream, OriginError> {
        let shield = match &config.origin.shield {
            Some(url) => {
                // The shield may wait a whole first-byte timeout on its origin before it answers.
                let mut shield_config = config.origin.clone();
                shield_config.first_byte_timeout.0 = config.origin.first_byte_timeout.0.saturating_mul(2);
                let clients = HttpClients::new(&shield_config)?;
                Some(Shield {
                    origin: HttpOrigin::new(url, clients, &shield_config)?,
                    down_until_ms: AtomicU64::new(0),
                })
            }
            None => None,
        };
        Ok(Upstream {
            cluster: ArcSwapOption::empty(),
            cluster_config: config.cluster.clone(),
            origin_config: config.origin.clone(),
            peers_file_seen: Mutex::new(None),
            shield,
            backoff: config.origin.failure_backoff.0,
            epoch: Instant::now(),
        })
    }

    /// The fleet now, if any.
    pub fn cluster(&self) -> Option<Arc<Cluster>> {
        self.cluster.load_full()
    }

    /// The fleet for `/stats`.
    pub fn fleet_members(&self) -> Vec<FleetMember> {
        self.cluster().map_or_else(Vec::new, |cluster| cluster.members())
    }

    fn set_cluster(&self, cluster: Option<Arc<Cluster>>) {
        self.cluster.store(cluster);
    }

    /// Joins the fleet of `cluster.peers` (or of `cluster.peers_file`, read now) once the public
    /// listener is bound at `listen`: this edge is found by `cluster.self`, or by that address.
    pub fn join_fleet(&self, listen: SocketAddr) -> Result<(), String> {
        let config = &self.cluster_config;
        if config.peers.is_empty() {
            self.poll_peers_file(listen);
            return Ok(());
        }
        let cluster = self.build(&config.peers, listen)?;
        tracing::info!(members = cluster.len(), "joined the fleet");
        self.set_cluster(Some(Arc::new(cluster)));
        Ok(())
    }

    fn build(&self, members: &[PeerSpec], listen: SocketAddr) -> Result<Cluster, String> {
        let config = &self.cluster_config;
        let Some(index) = find_self(members, config.self_url.as_deref(), listen) else {
            return Err(match &config.self_url {
                Some(url) => format!("cluster.self: '{url}' is not one of the peers"),
                None => format!("cluster.self: not set, and no peer is this edge's address http://{listen}"),
            });
        };
        Cluster::new(members, index, config, &self.origin_config).map_err(|e| e.to_string())
    }

    /// Rereads `cluster.peers_file` if it changed since the last look (call it every
    /// [`PEERS_FILE_POLL`]). A file that cannot be read or parsed, or that leaves this edge out, is
    /// logged and the fleet stays as it was.
    pub fn poll_peers_file(&self, listen: SocketAddr) {
        let Some(path) = &self.cluster_config.peers_file else { return };
        let stamp = std::fs::metadata(path).ok().map(|m| (m.modified().unwrap_or(std::time::UNIX_EPOCH), m.len()));
        {
            let mut last = self.peers_file_seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if *last == Some(stamp) {
                return;
            }
            *last = Some(stamp);
        }
        let loaded = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| parse_peers_file(&text))
            .and_then(|members| if members.is_empty() { Ok(None) } else { self.build(&members, listen).map(Some) });
        match loaded {
            Ok(cluster) => {
                let members = cluster.as_ref().map_or(0, |c| c.len());
                tracing::info!(file = %path.display(), members, "fleet membership read");
                self.set_cluster(cluster.map(Arc::new));
            }
            Err(error) => {
                tracing::error!(file = %path.display(), %error, "peers file refused; the fleet stays as it was");
            }
        }
    }

    /// How `headers` arrived: with the fleet's secret or not, and after how many hops.
    pub fn arrival(&self, headers: &HeaderMap) -> Arrival {
        // Most requests carry no marker: skip even the fleet's lookup for them.
        let from_fleet = headers.contains_key(&crate::cluster::PEER_HEADER)
            && self.cluster.load().as_ref().is_some_and(|c| c.is_peer_request(headers));
        // The hop count of a stranger means nothing (and must not let it skip the peers).
        let hops = if from_fleet {
            headers
                .get(&FLEET_HOPS_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(1)
        } else {
            0
        };
        Arrival { from_fleet, hops }
    }

    /// Sends a fill for `key` (asked by a client of `host`) where it should go; see the module
    /// documentation for the order.
    pub async fn send(
        &self,
        origins: &OriginSet,
        metrics: &Metrics,
        key: &CacheKey,
        request: &OriginRequest,
        host: &str,
        arrival: Arrival,
    ) -> Result<(OriginResponse, Source), OriginError> {
        let onward = arrival.hops.saturating_add(1);
        let may_hop = onward <= MAX_FLEET_HOPS;
        let cluster = self.cluster();
        // A peer or the shield may hold a blocking playlist reload as long as its origin does, and then
        // needs the time an answer takes to come back: its own first-byte timeout on top.
        let fleet_first_byte_timeout =
            request.first_byte_timeout.map(|held| held.saturating_add(self.origin_config.first_byte_timeout.0));
        if let Some(cluster) = cluster.as_ref().filter(|_| !arrival.from_fleet && may_hop) {
            let mut marked = request.clone();
            marked.first_byte_timeout = fleet_first_byte_timeout;
            marked.headers.insert(FLEET_HOPS_HEADER.clone(), HeaderValue::from(onward));
            for peer in cluster.peers_before_me(key) {
                let started = Instant::now();
                match cluster.send(peer, &marked, host).await {
                    Ok(response) => {
                        metrics.record_peer_fill(started.elapsed().as_secs_f64(), false);
                        return Ok((response, Source::Peer(peer)));
                    }
                    Err(error @ OriginError::Refused { .. }) => return Err(error),
                    Err(error) => {
                        metrics.record_peer_fill(started.elapsed().as_secs_f64(), true);
                        tracing::warn!(peer = cluster.member_url(peer), %error, "peer failed; its keys go to the next member");
                    }
                }
            }
        }
        if let Some(shield) =
            self.shield.as_ref().filter(|s| may_hop && s.down_until_ms.load(Ordering::Relaxed) <= self.now_ms())
        {
            let mut marked = request.clone();
            marked.first_byte_timeout = fleet_first_byte_timeout;
            marked.headers.insert(FLEET_HOPS_HEADER.clone(), HeaderValue::from(onward));
            if let Some(cluster) = &cluster {
                cluster.mark(&mut marked.headers);
            }
            if let Ok(host) = HeaderValue::from_str(host) {
                marked.headers.insert(http::header::HOST, host);
            }
            let started = Instant::now();
            match shield.origin.send(&marked).await {
                Ok(response) => {
                    shield.down_until_ms.store(0, Ordering::Relaxed);
                    metrics.record_shield_fill(started.elapsed().as_secs_f64(), false);
                    return Ok((response, Source::Shield));
                }
                Err(error @ OriginError::Refused { .. }) => return Err(error),
                Err(error) => {
                    metrics.record_shield_fill(started.elapsed().as_secs_f64(), true);
                    let until = self.now_ms().saturating_add(self.backoff.as_millis() as u64).max(1);
                    shield.down_until_ms.store(until, Ordering::Relaxed);
                    tracing::warn!(shield = shield.origin.name(), %error, "shield failed; going to the origins");
                }
            }
        }
        let started = Instant::now();
        let sent = origins.send(request).await;
        metrics.record_origin_request(started.elapsed().as_secs_f64(), sent.is_err());
        sent.map(|response| (response, Source::Origin))
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}
