//! Counters for `/metrics` (Prometheus text) and `/stats` (JSON). Counting is lock-free atomics on the
//! request path; gauges of the cache are read from it when scraped.
//!
//! A leaf: it imports nothing from the rest of the crate, so that every part of the request path can
//! count without an import cycle. The label types (`CacheResult`, `LimitResult`, `DecidedBy`) live here
//! for that reason, and clients are plain strings.

mod top;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use self::top::TopClients;

/// How many of the most limited clients are remembered (and `TOP_LIMITED_SHOWN` of them shown).
const TOP_LIMITED_TRACKED: usize = 256;
const TOP_LIMITED_SHOWN: usize = 10;

/// How the cache took part in a response; shown in `X-Cache` and counted in the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheResult {
    Hit,
    Miss,
    Stale,
    Revalidated,
    Pass,
    /// Answered by the edge itself (errors, preflight, refusals).
    Local,
}

impl CacheResult {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "HIT",
            CacheResult::Miss => "MISS",
            CacheResult::Stale => "STALE",
            CacheResult::Revalidated => "REVALIDATED",
            CacheResult::Pass => "PASS",
            CacheResult::Local => "LOCAL",
        }
    }
}

/// How a request fared, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitResult {
    Allowed,
    /// Over its limit: 429.
    Limited,
    /// The shared store failed and `on_store_error = "closed"`: 503.
    Unavailable,
}

impl LimitResult {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitResult::Allowed => "allowed",
            LimitResult::Limited => "limited",
            LimitResult::Unavailable => "unavailable",
        }
    }
}

/// Which store made a decision, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecidedBy {
    Local,
    Redis,
    /// The local ceiling, because Redis failed (fail open).
    Fallback,
    /// No store: a blocked client, or Redis failed with fail closed.
    Nobody,
}

impl DecidedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            DecidedBy::Local => "local",
            DecidedBy::Redis => "redis",
            DecidedBy::Fallback => "fallback",
            DecidedBy::Nobody => "none",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub status: u16,
    pub cache: &'static str,
}

/// A fill sent to another edge: `upstream` is `peer` or `shield`, `result` `ok` or `error` (no answer).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FleetFillLabels {
    pub upstream: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RateLimitLabels {
    pub result: &'static str,
    /// `default` or a per-client override's id (operator-chosen, so bounded).
    pub policy: Arc<String>,
    /// Which store decided: local, redis, fallback (local ceiling while Redis fails) or none.
    pub store: &'static str,
}

/// What became of a prefetch (segments ahead of a viewer, or a watched live playlist refreshed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefetchEvent {
    /// A background fill started; `kind` is `segment` or `playlist`.
    Started { kind: &'static str },
    /// No fill started; `reason` is a fixed word (`cached`, `in_flight`, `busy`, …).
    Skipped { reason: &'static str },
    /// The object was fetched and stored: `bytes` of body.
    Completed { kind: &'static str, bytes: u64 },
    /// The fill failed or stored nothing (origin error, not storable, over the byte cap).
    Failed { kind: &'static str },
    /// A stored copy of a media playlist was read.
    PlaylistRead,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PrefetchLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PrefetchSkipLabels {
    pub reason: &'static str,
}

/// Prefetch's share of `/stats`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PrefetchStats {
    pub started: u64,
    pub skipped: u64,
    pub completed: u64,
    pub failed: u64,
    pub bytes: u64,
    pub playlists_read: u64,
}

/// A client and how many of its requests were refused.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LimitedClient {
    pub client: String,
    pub limited: u64,
}

/// Rate limiting's share of `/stats`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RateLimitStats {
    pub enabled: bool,
    /// Requests allowed (including those let through while the store failed).
    pub allowed: u64,
    /// Requests answered 429.
    pub limited: u64,
    /// Requests answered 503 because the store failed and `on_store_error = "closed"`.
    pub unavailable: u64,
    /// Requests let through by the local ceiling while the store failed (`on_store_error = "open"`).
    pub failed_open: u64,
    /// Store calls that failed (unreachable, timeout, bad reply).
    pub store_errors: u64,
    /// The most refused clients, most first (counts are upper bounds once more clients were refused
    /// than are tracked).
    pub top_limited: Vec<LimitedClient>,
}

/// The figures `/stats` returns and `eddy-edge stats` prints.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    pub requests: u64,
    pub hits: u64,
    pub misses: u64,
    pub stale: u64,
    pub revalidated: u64,
    pub passes: u64,
    pub coalesced: u64,
    pub hit_ratio: f64,
    pub byte_hit_ratio: f64,
    pub origin_requests: u64,
    pub origin_errors: u64,
    pub bytes_from_cache: u64,
    pub bytes_from_origin: u64,
    pub entries: u64,
    pub cache_bytes: u64,
    pub cache_capacity: u64,
    pub evictions: u64,
    pub in_flight: u64,
    /// Origin requests sent again on a new connection after the origin closed a pooled one.
    #[serde(default)]
    pub origin_retries: u64,
    /// LL-HLS blocking playlist reloads (requests with `_HLS_msn`) waiting now for the origin's answer,
    /// coalesced or not.
    #[serde(default)]
    pub blocking_reloads_waiting: u64,
    /// Playlist files a directory origin watches now for held blocking reloads (one poller each,
    /// however many reloads wait on the file), and its looks at them since start.
    #[serde(default)]
    pub playlist_watchers: u64,
    #[serde(default)]
    pub playlist_polls: u64,
    #[serde(default)]
    pub rate_limit: RateLimitStats,
    #[serde(default)]
    pub prefetch: PrefetchStats,
    /// Fills answered by the key's owner in the fleet (`peer_fill_errors`: members that did not answer).
    #[serde(default)]
    pub peer_fills: u64,
    #[serde(default)]
    pub peer_fill_errors: u64,
    /// Fills answered by the shield (`shield_fill_errors`: the shield did not answer).
    #[serde(default)]
    pub shield_fills: u64,
    #[serde(default)]
    pub shield_fill_errors: u64,
    /// Requests from other fleet members (or edges behind this shield) answered here.
    #[serde(default)]
    pub fleet_requests: u64,
    /// The fleet as this edge sees it now (empty when it stands alone).
    #[serde(default)]
    pub fleet_members: Vec<FleetMember>,
}

/// A fleet member in `/stats`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FleetMember {
    pub url: String,
    /// Its admin listener, when the fleet's list gives it.
    #[serde(default)]
    pub admin: Option<String>,
    /// This edge itself.
    pub this_edge: bool,
    /// Skipped after a failure until its back-off ends.
    pub resting: bool,
}

#[derive(Default)]
struct Totals {
    requests: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    stale: AtomicU64,
    revalidated: AtomicU64,
    passes: AtomicU64,
    coalesced: AtomicU64,
    origin_requests: AtomicU64,
    origin_errors: AtomicU64,
    bytes_from_cache: AtomicU64,
    bytes_from_origin: AtomicU64,
    rl_allowed: AtomicU64,
    rl_limited: AtomicU64,
    rl_unavailable: AtomicU64,
    rl_failed_open: AtomicU64,
    rl_store_errors: AtomicU64,
    prefetch_started: AtomicU64,
    prefetch_skipped: AtomicU64,
    prefetch_completed: AtomicU64,
    prefetch_failed: AtomicU64,
    prefetch_bytes: AtomicU64,
    playlists_read: AtomicU64,
    peer_fills: AtomicU64,
    peer_fill_errors: AtomicU64,
    shield_fills: AtomicU64,
    shield_fill_errors: AtomicU64,
    fleet_requests: AtomicU64,
}

pub struct Metrics {
    totals: Totals,
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    bytes_from_cache: Counter,
    bytes_from_origin: Counter,
    origin_requests: Counter,
    origin_errors: Counter,
    coalesced: Counter,
    origin_latency: Histogram,
    cache_entries: Gauge,
    cache_bytes: Gauge,
    evictions: Gauge,
    fills_in_flight: Gauge,
    origin_retries: Gauge,
    playlist_watchers: Gauge,
    playlist_polls: Gauge,
    rl_decisions: Family<RateLimitLabels, Counter>,
    rl_store_errors: Counter,
    rl_failed_open: Counter,
    rl_store_latency: Histogram,
    rl_enabled: AtomicU64,
    top_limited: Mutex<TopClients>,
    open_connections: Gauge,
    refused_connections: Counter,
    blocking_reloads_waiting: Gauge,
    blocking_reloads_refused: Counter,
    prefetch_started: Family<PrefetchLabels, Counter>,
    prefetch_skipped: Family<PrefetchSkipLabels, Counter>,
    prefetch_completed: Family<PrefetchLabels, Counter>,
    prefetch_failed: Family<PrefetchLabels, Counter>,
    prefetch_bytes: Counter,
    playlists_read: Counter,
    fleet_fills: Family<FleetFillLabels, Counter>,
    fleet_fill_latency: Histogram,
    fleet_requests: Counter,
    reloads: Family<ResultLabel, Counter>,
    tls_handshake_failures: Family<ReasonLabel, Counter>,
    auth_refused: Family<ReasonLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// One request counted in a gauge for as long as this lives (whatever way its wait ends).
pub struct Waiting(Gauge);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Cache gauges read at scrape time.
pub struct CacheGauges {
    pub entries: u64,
    pub bytes: u64,
    pub capacity: u64,
    pub evictions: u64,
    pub in_flight: u64,
    pub origin_retries: u64,
    /// (playlist files watched now, looks at them since start), over the directory origins.
    pub playlist_watch: (u64, u64),
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("eddy_edge");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "Requests answered, by status and cache result", requests.clone());
        let bytes_from_cache = Counter::default();
        registry.register(
            "bytes_from_cache",
            "Body bytes served to clients without an origin fetch of their own",
            bytes_from_cache.clone(),
        );
        let bytes_from_origin = Counter::default();
        registry.register("bytes_from_origin", "Body bytes received from origins", bytes_from_origin.clone());
        let origin_requests = Counter::default();
        registry.register("origin_requests", "Requests sent to origins", origin_requests.clone());
        let origin_errors = Counter::default();
        registry.register(
            "origin_errors",
            "Origin requests that failed (unreachable, timeout, broken body)",
            origin_errors.clone(),
        );
        let coalesced = Counter::default();
        registry.register(
            "coalesced_waiters",
            "Requests that joined another request's origin fetch",
            coalesced.clone(),
        );
        let origin_latency = Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        registry.register(
            "origin_first_byte_seconds",
            "Time from sending an origin request to its response head",
            origin_latency.clone(),
        );
        let cache_entries = Gauge::default();
        registry.register("cache_entries", "Objects in the cache", cache_entries.clone());
        let cache_bytes = Gauge::default();
        registry.register("cache_bytes", "Bytes held by the cache (weighted size)", cache_bytes.clone());
        let evictions = Gauge::default();
        registry.register("cache_evictions", "Objects evicted to make room (total)", evictions.clone());
        let fills_in_flight = Gauge::default();
        registry.register(
            "fills_in_flight",
            "Coalesced origin fetches under way (a value that never falls back means a wedged key)",
            fills_in_flight.clone(),
        );
        let origin_retries = Gauge::default();
        registry.register(
            "origin_retries",
            "Idempotent origin requests sent again on a new connection after a pooled one closed (total)",
            origin_retries.clone(),
        );
        let playlist_watchers = Gauge::default();
        registry.register(
            "playlist_watchers",
            "Playlist files a directory origin watches for held LL-HLS blocking reloads (one poller per file)",
            playlist_watchers.clone(),
        );
        let playlist_polls = Gauge::default();
        registry.register(
            "playlist_polls",
            "Looks (stat calls) at watched playlist files by directory origins (total)",
            playlist_polls.clone(),
        );
        let rl_decisions = Family::<RateLimitLabels, Counter>::default();
        registry.register(
            "ratelimit_decisions",
            "Rate-limit decisions, by result (allowed, limited, unavailable), policy and deciding store",
            rl_decisions.clone(),
        );
        let rl_store_errors = Counter::default();
        registry.register(
            "ratelimit_store_errors",
            "Rate-limit store calls that failed (unreachable, timeout, bad reply)",
            rl_store_errors.clone(),
        );
        let rl_failed_open = Counter::default();
        registry.register(
            "ratelimit_failed_open",
            "Requests let through by the local ceiling while the rate-limit store failed",
            rl_failed_open.clone(),
        );
        let rl_store_latency =
            Histogram::new([0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2]);
        registry.register(
            "ratelimit_store_seconds",
            "Time of a successful rate-limit decision in the shared store (one round trip)",
            rl_store_latency.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Client connections open now (public listener)",
            open_connections.clone(),
        );
        let refused_connections = Counter::default();
        registry.register(
            "refused_connections",
            "Client connections answered 503 and closed because max_connections were open",
            refused_connections.clone(),
        );
        let blocking_reloads_waiting = Gauge::default();
        registry.register(
            "blocking_reloads_waiting",
            "LL-HLS blocking playlist reloads (_HLS_msn) waiting now for the origin's answer, coalesced or not",
            blocking_reloads_waiting.clone(),
        );
        let blocking_reloads_refused = Counter::default();
        registry.register(
            "blocking_reloads_refused",
            "LL-HLS blocking playlist reloads answered 503 because origin.max_blocking_reloads were under way",
            blocking_reloads_refused.clone(),
        );
        let prefetch_started = Family::<PrefetchLabels, Counter>::default();
        registry.register(
            "prefetch_started",
            "Background prefetch fills started, by kind (segment, playlist)",
            prefetch_started.clone(),
        );
        let prefetch_skipped = Family::<PrefetchSkipLabels, Counter>::default();
        registry.register(
            "prefetch_skipped",
            "Prefetches not started, by reason (cached, in_flight, busy, not_watched, blocking_reload, unauthorised, invalid)",
            prefetch_skipped.clone(),
        );
        let prefetch_completed = Family::<PrefetchLabels, Counter>::default();
        registry.register("prefetch_completed", "Prefetch fills stored, by kind", prefetch_completed.clone());
        let prefetch_failed = Family::<PrefetchLabels, Counter>::default();
        registry.register(
            "prefetch_failed",
            "Prefetch fills that stored nothing (origin error, not storable, over prefetch.max_object_size)",
            prefetch_failed.clone(),
        );
        let prefetch_bytes = Counter::default();
        registry.register("prefetch_bytes", "Body bytes stored by prefetch fills", prefetch_bytes.clone());
        let playlists_read = Counter::default();
        registry.register(
            "prefetch_playlists_read",
            "Stored copies of media playlists read for prefetch",
            playlists_read.clone(),
        );
        let fleet_fills = Family::<FleetFillLabels, Counter>::default();
        registry.register(
            "fleet_fills",
            "Fills sent to another edge, by upstream (peer: the key's owner; shield) and result",
            fleet_fills.clone(),
        );
        let fleet_fill_latency = Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        registry.register(
            "fleet_fill_first_byte_seconds",
            "Time from sending a fill to a peer or the shield to its response head",
            fleet_fill_latency.clone(),
        );
        let fleet_requests = Counter::default();
        registry.register(
            "fleet_requests",
            "Requests from fleet members (or edges behind this shield) answered here",
            fleet_requests.clone(),
        );
        let reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "reloads",
            "Reloads on SIGHUP, by result (ok, failed: the old settings stay)",
            reloads.clone(),
        );
        let tls_handshake_failures = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes on the viewers' listener that failed (error) or did not finish within \
             header_read_timeout (timeout)",
            tls_handshake_failures.clone(),
        );
        let auth_refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "auth_refused",
            "Requests answered 403 for want of a valid signed URL, by reason (missing, repeated, malformed, \
             bad_signature, expired, out_of_scope)",
            auth_refused.clone(),
        );
        Metrics {
            totals: Totals::default(),
            registry,
            requests,
            bytes_from_cache,
            bytes_from_origin,
            origin_requests,
            origin_errors,
            coalesced,
            origin_latency,
            cache_entries,
            cache_bytes,
            evictions,
            fills_in_flight,
            origin_retries,
            playlist_watchers,
            playlist_polls,
            rl_decisions,
            rl_store_errors,
            rl_failed_open,
            rl_store_latency,
            rl_enabled: AtomicU64::new(0),
            top_limited: Mutex::new(TopClients::new(TOP_LIMITED_TRACKED)),
            open_connections,
            refused_connections,
            blocking_reloads_waiting,
            blocking_reloads_refused,
            fleet_fills,
            fleet_fill_latency,
            fleet_requests,
            reloads,
            tls_handshake_failures,
            auth_refused,
            prefetch_started,
            prefetch_skipped,
            prefetch_completed,
            prefetch_failed,
            prefetch_bytes,
            playlists_read,
        }
    }

    pub fn record_prefetch(&self, event: PrefetchEvent) {
        let t = &self.totals;
        match event {
            PrefetchEvent::Started { kind } => {
                self.prefetch_started.get_or_create(&PrefetchLabels { kind }).inc();
                t.prefetch_started.fetch_add(1, Ordering::Relaxed);
            }
            PrefetchEvent::Skipped { reason } => {
                self.prefetch_skipped.get_or_create(&PrefetchSkipLabels { reason }).inc();
                t.prefetch_skipped.fetch_add(1, Ordering::Relaxed);
            }
            PrefetchEvent::Completed { kind, bytes } => {
                self.prefetch_completed.get_or_create(&PrefetchLabels { kind }).inc();
                self.prefetch_bytes.inc_by(bytes);
                t.prefetch_completed.fetch_add(1, Ordering::Relaxed);
                t.prefetch_bytes.fetch_add(bytes, Ordering::Relaxed);
            }
            PrefetchEvent::Failed { kind } => {
                self.prefetch_failed.get_or_create(&PrefetchLabels { kind }).inc();
                t.prefetch_failed.fetch_add(1, Ordering::Relaxed);
            }
            PrefetchEvent::PlaylistRead => {
                self.playlists_read.inc();
                t.playlists_read.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Marks rate limiting as on in `/stats`.
    pub fn set_rate_limit_enabled(&self, enabled: bool) {
        self.rl_enabled.store(u64::from(enabled), Ordering::Relaxed);
    }

    /// One decision about `client` (an identity such as `ip:203.0.113.9`; only refused ones are kept).
    pub fn record_rate_limit(&self, result: LimitResult, policy: &Arc<String>, store: DecidedBy, client: &str) {
        let labels = RateLimitLabels { result: result.as_str(), policy: policy.clone(), store: store.as_str() };
        self.rl_decisions.get_or_create(&labels).inc();
        let total = match result {
            LimitResult::Allowed => &self.totals.rl_allowed,
            LimitResult::Limited => &self.totals.rl_limited,
            LimitResult::Unavailable => &self.totals.rl_unavailable,
        };
        total.fetch_add(1, Ordering::Relaxed);
        if result == LimitResult::Limited {
            self.top_limited.lock().unwrap_or_else(|p| p.into_inner()).record(client);
        }
    }

    pub fn record_rate_limit_store_error(&self) {
        self.rl_store_errors.inc();
        self.totals.rl_store_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_rate_limit_failed_open(&self) {
        self.rl_failed_open.inc();
        self.totals.rl_failed_open.fetch_add(1, Ordering::Relaxed);
    }

    pub fn observe_rate_limit_store(&self, seconds: f64) {
        self.rl_store_latency.observe(seconds);
    }

    pub fn rate_limit_stats(&self) -> RateLimitStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let t = &self.totals;
        let top = self.top_limited.lock().unwrap_or_else(|p| p.into_inner()).top(TOP_LIMITED_SHOWN);
        RateLimitStats {
            enabled: get(&self.rl_enabled) == 1,
            allowed: get(&t.rl_allowed),
            limited: get(&t.rl_limited),
            unavailable: get(&t.rl_unavailable),
            failed_open: get(&t.rl_failed_open),
            store_errors: get(&t.rl_store_errors),
            top_limited: top.into_iter().map(|(client, limited)| LimitedClient { client, limited }).collect(),
        }
    }

    pub fn record_response(&self, status: u16, result: CacheResult) {
        self.requests.get_or_create(&RequestLabels { status, cache: result.as_str() }).inc();
        self.totals.requests.fetch_add(1, Ordering::Relaxed);
        let counter = match result {
            CacheResult::Hit => &self.totals.hits,
            CacheResult::Miss => &self.totals.misses,
            CacheResult::Stale => &self.totals.stale,
            CacheResult::Revalidated => &self.totals.revalidated,
            CacheResult::Pass => &self.totals.passes,
            CacheResult::Local => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_bytes_from_cache(&self, bytes: u64) {
        self.bytes_from_cache.inc_by(bytes);
        self.totals.bytes_from_cache.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn record_bytes_from_origin(&self, bytes: u64) {
        self.bytes_from_origin.inc_by(bytes);
        self.totals.bytes_from_origin.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn record_origin_request(&self, first_byte_seconds: f64, failed: bool) {
        self.origin_requests.inc();
        self.totals.origin_requests.fetch_add(1, Ordering::Relaxed);
        self.origin_latency.observe(first_byte_seconds);
        if failed {
            self.record_origin_error();
        }
    }

    pub fn record_origin_error(&self) {
        self.origin_errors.inc();
        self.totals.origin_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// A client connection was accepted (`opened`) or ended.
    pub fn record_connection(&self, opened: bool) {
        if opened {
            self.open_connections.inc();
        } else {
            self.open_connections.dec();
        }
    }

    pub fn record_refused_connection(&self) {
        self.refused_connections.inc();
    }

    fn record_fleet_fill(&self, upstream: &'static str, first_byte_seconds: f64, failed: bool) {
        let result = if failed { "error" } else { "ok" };
        self.fleet_fills.get_or_create(&FleetFillLabels { upstream, result }).inc();
        if !failed {
            self.fleet_fill_latency.observe(first_byte_seconds);
        }
    }

    /// A fill sent to the key's owner; `failed` when the member did not answer.
    pub fn record_peer_fill(&self, first_byte_seconds: f64, failed: bool) {
        self.record_fleet_fill("peer", first_byte_seconds, failed);
        let total = if failed { &self.totals.peer_fill_errors } else { &self.totals.peer_fills };
        total.fetch_add(1, Ordering::Relaxed);
    }

    /// A fill sent to the shield; `failed` when it did not answer.
    pub fn record_shield_fill(&self, first_byte_seconds: f64, failed: bool) {
        self.record_fleet_fill("shield", first_byte_seconds, failed);
        let total = if failed { &self.totals.shield_fill_errors } else { &self.totals.shield_fills };
        total.fetch_add(1, Ordering::Relaxed);
    }

    /// A request from another fleet member was answered here.
    pub fn record_fleet_request(&self) {
        self.fleet_requests.inc();
        self.totals.fleet_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// A reload on SIGHUP ended: `ok`, or failed with the old settings kept.
    pub fn record_reload(&self, ok: bool) {
        self.reloads.get_or_create(&ResultLabel { result: if ok { "ok" } else { "failed" } }).inc();
    }

    /// A TLS handshake failed: `timeout` (not finished within header_read_timeout) or `error`.
    pub fn record_tls_handshake_failure(&self, timed_out: bool) {
        self.tls_handshake_failures
            .get_or_create(&ReasonLabel { reason: if timed_out { "timeout" } else { "error" } })
            .inc();
    }

    /// A blocking playlist reload starts waiting for its answer; it is counted until the returned guard
    /// is dropped.
    pub fn blocking_reload_waiting(&self) -> Waiting {
        self.blocking_reloads_waiting.inc();
        Waiting(self.blocking_reloads_waiting.clone())
    }

    /// A blocking playlist reload refused with 503: `origin.max_blocking_reloads` were under way.
    pub fn record_blocking_reload_refused(&self) {
        self.blocking_reloads_refused.inc();
    }

    /// A request refused for want of a valid signed URL; `reason` is a fixed word.
    pub fn record_auth_refused(&self, reason: &'static str) {
        self.auth_refused.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn record_coalesced(&self) {
        self.coalesced.inc();
        self.totals.coalesced.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stats(&self, cache: &CacheGauges) -> Stats {
        let t = &self.totals;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (hits, misses, stale, revalidated) = (get(&t.hits), get(&t.misses), get(&t.stale), get(&t.revalidated));
        let (from_cache, from_origin) = (get(&t.bytes_from_cache), get(&t.bytes_from_origin));
        Stats {
            requests: get(&t.requests),
            hits,
            misses,
            stale,
            revalidated,
            passes: get(&t.passes),
            coalesced: get(&t.coalesced),
            hit_ratio: ratio(hits + stale, hits + stale + misses + revalidated),
            byte_hit_ratio: ratio(from_cache, from_cache + from_origin),
            origin_requests: get(&t.origin_requests),
            origin_errors: get(&t.origin_errors),
            bytes_from_cache: from_cache,
            bytes_from_origin: from_origin,
            entries: cache.entries,
            cache_bytes: cache.bytes,
            cache_capacity: cache.capacity,
            evictions: cache.evictions,
            in_flight: cache.in_flight,
            origin_retries: cache.origin_retries,
            blocking_reloads_waiting: u64::try_from(self.blocking_reloads_waiting.get()).unwrap_or(0),
            playlist_watchers: cache.playlist_watch.0,
            playlist_polls: cache.playlist_watch.1,
            rate_limit: self.rate_limit_stats(),
            peer_fills: get(&t.peer_fills),
            peer_fill_errors: get(&t.peer_fill_errors),
            shield_fills: get(&t.shield_fills),
            shield_fill_errors: get(&t.shield_fill_errors),
            fleet_requests: get(&t.fleet_requests),
            fleet_members: Vec::new(),
            prefetch: PrefetchStats {
                started: get(&t.prefetch_started),
                skipped: get(&t.prefetch_skipped),
                completed: get(&t.prefetch_completed),
                failed: get(&t.prefetch_failed),
                bytes: get(&t.prefetch_bytes),
                playlists_read: get(&t.playlists_read),
            },
        }
    }

    /// Prometheus text exposition.
    pub fn encode(&self, cache: &CacheGauges) -> String {
        self.cache_entries.set(cache.entries as i64);
        self.cache_bytes.set(cache.bytes as i64);
        self.evictions.set(cache.evictions as i64);
        self.fills_in_flight.set(cache.in_flight as i64);
        self.origin_retries.set(cache.origin_retries as i64);
        self.playlist_watchers.set(i64::try_from(cache.playlist_watch.0).unwrap_or(i64::MAX));
        self.playlist_polls.set(i64::try_from(cache.playlist_watch.1).unwrap_or(i64::MAX));
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
