//! The app state: everything the request path and the admin listener share, built once from the
//! configuration.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use http::{HeaderName, HeaderValue};

use crate::cache::coalesce::Flights;
use crate::cache::policy::CacheRules;
use crate::cache::{CacheKey, Storage};
use crate::config::Config;
use crate::identity::IdentityRules;
use crate::metrics::{CacheGauges, Metrics};
use crate::origin::OriginSet;
use crate::prefetch::Prefetcher;
use crate::ratelimit::RateLimiter;
use crate::signed_urls::SignedUrls;
use crate::upstream::Upstream;

/// Everything the request path shares: configuration, cache, flights, origins, metrics.
pub struct Edge {
    /// The configuration the edge started with: listeners, connection limits and timeouts, the cache's
    /// size and keys, prefetch. A reload does not change these (they need a restart).
    pub config: Config,
    /// What a reload (SIGHUP) replaces: see [`Settings`].
    settings: ArcSwap<Settings>,
    pub storage: Storage,
    pub flights: Flights,
    pub metrics: Metrics,
    /// Test-only fault injection: a fill for exactly this path panics mid-body. Set from the
    /// `EDDY_TEST_PANIC_IN_FILL` environment variable, which nothing but the tests sets; it proves that
    /// a fill that fails in any way releases its flight.
    pub panic_in_fill_path: Option<String>,
    /// HLS-aware prefetch: what it remembers of playlists, and its concurrency slots.
    pub prefetch: Prefetcher,
    /// One permit per blocking playlist reload fill under way (`origin.max_blocking_reloads`), held
    /// by the fill until it ends.
    pub blocking_reload_slots: Arc<tokio::sync::Semaphore>,
    request_ids: RequestIds,
}

/// Everything a reload replaces at once: TTL rules and cache policy, origins, the fleet and shield,
/// rate limits and client identity, forwarded headers, CORS. A request (and a fill) takes one
/// `Arc<Settings>` and keeps it to its end, so a reload never changes the rules half-way through a
/// request: requests in flight finish under the settings they started with.
pub struct Settings {
    /// The configuration these settings were built from (the reloaded file, with the command line's
    /// overrides applied again).
    pub config: Config,
    pub rules: CacheRules,
    pub origins: OriginSet,
    /// Where fills go: the key's owner in the fleet, the shield, or `origins`.
    pub upstream: Upstream,
    pub ratelimit: RateLimiter,
    /// How clients are identified (`rate_limit.identify`), for the limits and the access log.
    pub identity: IdentityRules,
    /// `origin.forward_request_headers`, parsed once.
    pub forwarded_request_headers: Vec<HeaderName>,
    pub cors_allow_origin: Option<HeaderValue>,
    /// `[auth] signed_urls`, with its key read from the key file when these settings were built (so a
    /// reload rotates the key).
    pub signed_urls: Option<SignedUrls>,
}

/// Why settings could not be built from a configuration that passed its checks.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Origin(#[from] crate::origin::OriginError),
    /// The key file changed between the check and the read, or cannot be read any more.
    #[error("auth.signed_urls.key_file: {0}")]
    SigningKey(#[from] eddy_shared::signed_url::SignedUrlError),
}

impl Settings {
    /// Builds every reloadable part from a validated configuration. Makes no connection; reads the
    /// signing key file, if any.
    pub fn new(config: Config) -> Result<Settings, SettingsError> {
        let origins = OriginSet::new(&config.origins, &config.origin)?;
        let upstream = Upstream::new(&config)?;
        let cors_allow_origin = if config.headers.cors_allow_origin.is_empty() {
            None
        } else {
            HeaderValue::from_str(&config.headers.cors_allow_origin).ok()
        };
        // Names were checked when the config was validated.
        let forwarded_request_headers = config
            .origin
            .forward_request_headers
            .iter()
            .filter_map(|name| HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).ok())
            .collect();
        let signed_urls = config.auth.signed_urls.as_ref().map(SignedUrls::load).transpose()?;
        Ok(Settings {
            rules: CacheRules::from_config(&config.cache),
            origins,
            upstream,
            ratelimit: RateLimiter::new(&config.rate_limit),
            identity: IdentityRules::from_config(&config.rate_limit),
            forwarded_request_headers,
            cors_allow_origin,
            signed_urls,
            config,
        })
    }
}

/// Request ids: a per-process random prefix and a counter, so that ids from a fleet's edges do not
/// collide in shared logs.
struct RequestIds {
    prefix: u32,
    next: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        use std::hash::{BuildHasher, Hasher};
        // RandomState is seeded from the OS's randomness: enough to tell processes apart.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        RequestIds { prefix: hasher.finish() as u32, next: AtomicU64::new(1) }
    }

    fn next(&self) -> RequestId {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // 8 hex digits of the prefix, then the low 48 bits of the counter in 12; by hand, not through
        // `write!`, whose formatting machinery was 1 % of a small hit's CPU.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let digits = (u128::from(self.prefix) << 48) | u128::from(n & 0xffff_ffff_ffff);
        let mut text = [0u8; 20];
        for (i, byte) in text.iter_mut().enumerate() {
            // Digit i of 20, most significant first.
            *byte = HEX[((digits >> (4 * (19 - i))) & 0xf) as usize];
        }
        RequestId(text)
    }
}

/// A request's id: 20 hex digits (the process's prefix, then a counter), kept inline so that the
/// response header and the access-log line need no shared allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestId([u8; 20]);

impl RequestId {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("")
    }

    pub fn header_value(&self) -> HeaderValue {
        HeaderValue::from_bytes(&self.0).unwrap_or_else(|_| HeaderValue::from_static("0"))
    }
}

/// The response header that carries the request id (the access-log line repeats it).
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

impl Edge {
    pub fn new(config: Config) -> Result<Edge, SettingsError> {
        let settings = Settings::new(config.clone())?;
        let metrics = Metrics::new();
        metrics.set_rate_limit_enabled(config.rate_limit.enabled);
        Ok(Edge {
            settings: ArcSwap::from_pointee(settings),
            storage: Storage::new(config.cache.size.0, config.cache.eviction),
            flights: Flights::new(config.cache.fill_memory.0),
            metrics,
            panic_in_fill_path: std::env::var("EDDY_TEST_PANIC_IN_FILL").ok().filter(|p| !p.is_empty()),
            request_ids: RequestIds::new(),
            prefetch: Prefetcher::new(&config.prefetch),
            blocking_reload_slots: Arc::new(tokio::sync::Semaphore::new(config.origin.max_blocking_reloads)),
            config,
        })
    }

    /// The settings in force now. Take them once per request and keep them.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// Puts new settings in force for requests that start from now on.
    pub fn replace_settings(&self, settings: Settings) {
        self.metrics.set_rate_limit_enabled(settings.config.rate_limit.enabled);
        self.settings.store(Arc::new(settings));
    }

    /// The primary cache key of a request for `host`, `path` and `query`: the one place keys are built
    /// from requests (lookups, invalidations, purges, prefetches), so that they always agree. Under a
    /// prefix that needs a signed URL, the token is left out: every authorised viewer shares one copy
    /// (the `auth` phase has refused every viewer's request without a valid token by then).
    pub fn cache_key(&self, host: &str, path: &str, query: Option<&str>) -> CacheKey {
        let settings = self.settings.load();
        let unkeyed = settings.signed_urls.as_ref().and_then(|auth| auth.unkeyed_param(path, query));
        CacheKey::primary_without(host, path, query, &self.config.cache.ignore_query_params, unkeyed)
    }

    /// A new request id, for `X-Request-Id` and the access-log line.
    pub fn next_request_id(&self) -> RequestId {
        self.request_ids.next()
    }

    pub fn gauges(&self) -> CacheGauges {
        CacheGauges {
            entries: self.storage.entry_count(),
            bytes: self.storage.weighted_bytes(),
            capacity: self.config.cache.size.0,
            evictions: self.storage.evictions(),
            in_flight: self.flights.in_flight() as u64,
            origin_retries: self.settings().origins.retried_requests(),
            playlist_watch: self.settings().origins.playlist_watch(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_the_prefix_then_the_counter_in_hex() {
        let ids = RequestIds { prefix: 0x1cfc_ce00, next: AtomicU64::new(0xab) };
        assert_eq!(ids.next().as_str(), "1cfcce000000000000ab");
        assert_eq!(ids.next().as_str(), "1cfcce000000000000ac");
        // The counter keeps its low 48 bits.
        let ids = RequestIds { prefix: u32::MAX, next: AtomicU64::new(u64::MAX) };
        assert_eq!(ids.next().as_str(), "ffffffffffffffffffff");
        assert_eq!(ids.next().header_value(), HeaderValue::from_static("ffffffff000000000000"));
    }
}
