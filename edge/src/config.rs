//! The edge's configuration: a TOML file (every key documented in `configs/edge.toml`), overridden by
//! command-line flags, over built-in defaults. Everything is validated at load: unknown keys and bad values
//! are refused with the file, the key and the reason.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderValue;
use serde::de::{self, Deserializer};
use serde::Deserialize;

use eddy_shared::config_error::invalid;
pub use eddy_shared::config_error::ConfigError;
use eddy_shared::duration::parse_duration;
use eddy_shared::size::parse_size;

use crate::ratelimit::RateLimitConfig;

/// A config value written either as a plain number or as text with a unit (`64MiB`, `2s`).
#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrText {
    Number(u64),
    Text(String),
}

/// Reads a [`NumberOrText`] and converts it; text that does not parse becomes a serde error, which the
/// TOML reader reports with the key and the line.
fn number_or_text<'de, D, T, E>(
    deserializer: D,
    from_number: impl FnOnce(u64) -> T,
    from_text: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    E: fmt::Display,
{
    match NumberOrText::deserialize(deserializer)? {
        NumberOrText::Number(n) => Ok(from_number(n)),
        NumberOrText::Text(text) => from_text(&text).map_err(de::Error::custom),
    }
}

/// A byte count written as `64MiB`, `2GiB` or plain bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        number_or_text(deserializer, ByteSize, |text| parse_size(text).map(ByteSize))
    }
}

/// A duration written as `500ms`, `2s`, `1h`, `1d`, or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        number_or_text(
            deserializer,
            |n| HumanDuration(Duration::from_secs(n)),
            |text| parse_duration(text).map(HumanDuration),
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Eviction {
    /// moka's default: LRU eviction with a TinyLFU admission filter (frequency sketch), which keeps a
    /// burst of one-off requests from flushing popular segments.
    TinyLfu,
    /// Plain least-recently-used.
    Lru,
    /// S3-FIFO (Yang et al., SOSP 2023): a small probation FIFO, a main FIFO with reinsertion and a
    /// ghost of recent evictions. Viewers who zap away leave objects that die on probation instead of
    /// pushing out whole titles: more bytes of hits than TinyLFU on the VOD replay in BENCHMARKS.md,
    /// and a cheaper hit (one short lock, no sketch). The default.
    #[default]
    S3Fifo,
}

/// What the cache does with a response that sets a cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SetCookie {
    /// The response goes only to the client whose request fetched it: not stored, not given to
    /// coalesced followers (Varnish's default). A cookie is one client's state.
    #[default]
    Pass,
    /// The object is stored and shared with its `Set-Cookie` headers removed; the client that fetched
    /// it still gets them.
    Strip,
}

/// Operator TTL for responses whose origin said nothing about freshness. Matches by path suffix or
/// by Content-Type prefix (one of the two).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TtlRule {
    pub suffix: Option<String>,
    pub content_type: Option<String>,
    pub ttl: HumanDuration,
}

impl TtlRule {
    pub fn for_suffix(suffix: &str, ttl: Duration) -> TtlRule {
        TtlRule { suffix: Some(suffix.to_string()), content_type: None, ttl: HumanDuration(ttl) }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    pub size: ByteSize,
    pub max_object_size: ByteSize,
    pub eviction: Eviction,
    pub ignore_query_params: Vec<String>,
    pub negative_ttl: HumanDuration,
    pub stale_if_error: HumanDuration,
    pub stale_while_revalidate: HumanDuration,
    pub ttl_rules: Vec<TtlRule>,
    pub set_cookie: SetCookie,
    /// The cap on heuristic freshness (10 % of the time since Last-Modified, RFC 9111 §4.2.2).
    pub heuristic_max_ttl: HumanDuration,
    /// A targeted cache-control field of this fleet's own (RFC 9213), e.g. `Eddy-Cache-Control`; it
    /// takes precedence over `CDN-Cache-Control`, which takes precedence over `Cache-Control`.
    pub targeted_header: Option<String>,
    /// Memory all fills together may hold in bodies they keep whole for storing; a fill that would go
    /// over streams through unstored instead.
    pub fill_memory: ByteSize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            size: ByteSize(256 << 20),
            max_object_size: ByteSize(64 << 20),
            eviction: Eviction::S3Fifo,
            ignore_query_params: Vec::new(),
            negative_ttl: HumanDuration(Duration::from_secs(10)),
            stale_if_error: HumanDuration(Duration::from_secs(24 * 3600)),
            stale_while_revalidate: HumanDuration(Duration::ZERO),
            ttl_rules: vec![
                TtlRule::for_suffix(".m3u8", Duration::from_secs(1)),
                TtlRule::for_suffix(".ts", Duration::from_secs(86_400)),
                TtlRule::for_suffix(".m4s", Duration::from_secs(86_400)),
                TtlRule::for_suffix(".mp4", Duration::from_secs(86_400)),
                TtlRule::for_suffix(".key", Duration::from_secs(86_400)),
            ],
            set_cookie: SetCookie::Pass,
            heuristic_max_ttl: HumanDuration(Duration::from_secs(86_400)),
            targeted_header: None,
            fill_memory: ByteSize(256 << 20),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OriginConfig {
    pub connect_timeout: HumanDuration,
    pub first_byte_timeout: HumanDuration,
    pub total_timeout: HumanDuration,
    /// How long the origin may hold a Low-Latency HLS blocking playlist reload (a request with
    /// `_HLS_msn`) before its response head: it answers once the playlist has the asked-for segment or
    /// part. Unset: the longer of [`DEFAULT_BLOCKING_RELOAD_TIMEOUT`] and `first_byte_timeout`; see
    /// [`OriginConfig::blocking_reload_timeout`].
    pub blocking_reload_timeout: Option<HumanDuration>,
    /// Blocking playlist reloads whose fills may be under way at once (after coalescing: identical
    /// requests share one). Each is held by the origin up to `blocking_reload_timeout` and keeps an
    /// origin connection: without a bound, one client asking for many distinct ones (any extra query
    /// parameter makes one distinct) would hold that many connections to the origin, which other
    /// viewers' fills then lack. Past it, a new one is answered 503 with Retry-After. Read at start.
    pub max_blocking_reloads: usize,
    pub failure_backoff: HumanDuration,
    pub max_idle_connections: usize,
    /// How long an idle keep-alive connection to an origin is kept. Below the 5 s after which Node.js
    /// (and many load balancers) close idle connections, so that the edge rarely writes a request on a
    /// connection the origin is closing.
    pub idle_timeout: HumanDuration,
    /// Extra root CA certificates (PEM) trusted for HTTPS origins, besides the system's: for origins
    /// whose certificate comes from a private CA.
    pub ca_file: Option<PathBuf>,
    /// Whether a directory origin serves paths with a component that starts with `.` (`/.env`).
    pub serve_dotfiles: bool,
    /// Request headers copied from the client onto a cacheable fill (lower-case names). Everything
    /// else stays at the edge: unkeyed headers such as X-Forwarded-Host must not shape a shared object.
    pub forward_request_headers: Vec<String>,
    /// A shield edge (itself an `eddy-edge`) that this edge's misses go to before the origins: the
    /// origins then see one request per object for the whole tier. Unreachable, it is skipped like a
    /// failed origin and the edge goes direct.
    pub shield: Option<String>,
}

/// The default `origin.blocking_reload_timeout`: an LL-HLS origin holds a blocking reload until the
/// asked-for segment or part exists, at most two segments beyond the live edge (it answers 400 at once
/// to any further ahead), so about three target durations; 30 s covers target durations up to 10 s.
pub const DEFAULT_BLOCKING_RELOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// The default `origin.max_blocking_reloads`: a few renditions' next parts for hundreds of live
/// channels, well under the default `max_connections`.
pub const DEFAULT_MAX_BLOCKING_RELOADS: usize = 2048;
/// The largest `origin.max_blocking_reloads` accepted: more than any machine's file descriptors.
pub const MAX_MAX_BLOCKING_RELOADS: usize = 1 << 24;
/// The longest `origin.blocking_reload_timeout` accepted: beyond it a value is a slip of the unit, and
/// each held request keeps a client and an origin connection.
pub const MAX_BLOCKING_RELOAD_TIMEOUT: Duration = Duration::from_secs(600);

impl OriginConfig {
    /// How long the origin may hold a blocking playlist reload before its head (the first-byte timeout
    /// of requests with `_HLS_msn`; their body then has `total_timeout` from the head, like any other).
    /// Never shorter than `first_byte_timeout`.
    pub fn blocking_reload_timeout(&self) -> Duration {
        match self.blocking_reload_timeout {
            Some(timeout) => timeout.0,
            None => DEFAULT_BLOCKING_RELOAD_TIMEOUT.max(self.first_byte_timeout.0),
        }
    }
}

/// Is `name` (a query parameter name an operator configured) an HLS delivery directive's? The HLS draft
/// reserves the `_HLS_` prefix for them (draft-pantos-hls-rfc8216bis §6.2.5; `cache::policy` reads
/// them). Compared after percent-decoding and ignoring case, so that no spelling of one slips past.
fn is_delivery_directive(name: &str) -> bool {
    let decoded = percent_encoding::percent_decode_str(name).collect::<Vec<u8>>();
    decoded.get(..5).is_some_and(|prefix| prefix.eq_ignore_ascii_case(b"_HLS_"))
}

/// An http(s) URL with a host and nothing after the path, or why not.
fn validate_http_url(text: &str) -> Result<(), String> {
    let url = url::Url::parse(text).map_err(|e| format!("'{text}': {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(format!("'{text}': an http or https URL with a host is needed"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("'{text}': no query or fragment"));
    }
    Ok(())
}

/// The client headers a cacheable fill carries by default: content negotiation (which Vary may name),
/// Authorization (such requests get fills of their own), and what identifies the client software.
pub const DEFAULT_FORWARDED_REQUEST_HEADERS: [&str; 6] =
    ["accept", "accept-encoding", "accept-language", "authorization", "origin", "user-agent"];

impl Default for OriginConfig {
    fn default() -> Self {
        OriginConfig {
            connect_timeout: HumanDuration(Duration::from_secs(2)),
            first_byte_timeout: HumanDuration(Duration::from_secs(5)),
            total_timeout: HumanDuration(Duration::from_secs(30)),
            blocking_reload_timeout: None,
            max_blocking_reloads: DEFAULT_MAX_BLOCKING_RELOADS,
            failure_backoff: HumanDuration(Duration::from_secs(10)),
            max_idle_connections: 256,
            idle_timeout: HumanDuration(Duration::from_secs(3)),
            ca_file: None,
            serve_dotfiles: false,
            forward_request_headers: DEFAULT_FORWARDED_REQUEST_HEADERS.iter().map(|s| s.to_string()).collect(),
            shield: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeadersConfig {
    /// Value of Access-Control-Allow-Origin; empty disables CORS headers.
    pub cors_allow_origin: String,
}

impl Default for HeadersConfig {
    fn default() -> Self {
        HeadersConfig { cors_allow_origin: "*".into() }
    }
}

/// Whether an edge keeps its own copy of an object it got from the object's owner in the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LocalCopy {
    /// From the second request for it at this edge within `cluster.hot_window`: popular objects are
    /// served near their viewers, the long tail is held once in the fleet.
    #[default]
    Hot,
    Always,
    Never,
}

/// One fleet member: a URL, or a table with a weight and its admin listener (for `stats --fleet`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PeerSpec {
    Url(String),
    Node {
        url: String,
        #[serde(default = "default_weight")]
        weight: f64,
        #[serde(default)]
        admin: Option<String>,
    },
}

fn default_weight() -> f64 {
    1.0
}

impl PeerSpec {
    pub fn url(&self) -> &str {
        match self {
            PeerSpec::Url(url) | PeerSpec::Node { url, .. } => url,
        }
    }

    pub fn weight(&self) -> f64 {
        match self {
            PeerSpec::Url(_) => 1.0,
            PeerSpec::Node { weight, .. } => *weight,
        }
    }

    pub fn admin(&self) -> Option<&str> {
        match self {
            PeerSpec::Url(_) => None,
            PeerSpec::Node { admin, .. } => admin.as_deref(),
        }
    }
}

/// `[cluster]`: the fleet this edge belongs to. Without `peers`, the edge stands alone.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This edge's own URL, exactly as it appears in `peers`.
    #[serde(rename = "self")]
    pub self_url: Option<String>,
    /// Every member, this edge included, in any order (every member must list the same set).
    pub peers: Vec<PeerSpec>,
    /// Instead of `peers`: a file listing the members, one per line (`URL [weight=N] [admin=URL]`),
    /// reread whenever it changes.
    pub peers_file: Option<PathBuf>,
    /// Shared by the fleet: requests between members carry it, which is how a member knows a request
    /// comes from a peer (never forwarded to another peer, not rate-limited again).
    pub secret: Option<String>,
    pub local_copy: LocalCopy,
    /// With `local_copy = "hot"`: how long a request is remembered when counting to two.
    pub hot_window: HumanDuration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            self_url: None,
            peers: Vec::new(),
            peers_file: None,
            secret: None,
            local_copy: LocalCopy::Hot,
            hot_window: HumanDuration(Duration::from_secs(600)),
        }
    }
}

/// A fleet secret shorter than this is refused: it is all that keeps clients from passing as peers.
pub const MIN_CLUSTER_SECRET_LEN: usize = 16;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Bearer token that guards `POST /purge`; purge is refused when unset.
    pub purge_token: Option<String>,
}

/// HLS-aware prefetch (`[prefetch]`): after serving segment N of a media playlist it has seen, the
/// edge fills N+1..N+`segments` in the background through the same coalesced fill as a client miss.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrefetchConfig {
    /// Segments after the one served to fetch ahead; 0 turns segment prefetch off (live refreshes have
    /// their own switch).
    pub segments: usize,
    /// Prefetch fills (segments and live playlist refreshes) under way at once; more are skipped.
    pub max_concurrent: usize,
    /// A prefetch whose Content-Length or streamed size goes over this (or `cache.max_object_size`) is
    /// abandoned and stores nothing.
    pub max_object_size: ByteSize,
    /// Memory for what the edge remembers of playlists (each segment's next segments, the live
    /// playlists being watched); the least recently used is forgotten beyond it.
    pub memory: ByteSize,
    /// Refresh a watched live playlist just before its freshness runs out, so viewers get hits.
    pub refresh_live_playlists: bool,
}

/// The most `prefetch.segments` may be: more fetches ahead a player may never ask for.
pub const MAX_PREFETCH_SEGMENTS: usize = 3;

impl Default for PrefetchConfig {
    fn default() -> Self {
        PrefetchConfig {
            segments: 1,
            max_concurrent: 16,
            max_object_size: ByteSize(16 << 20),
            memory: ByteSize(8 << 20),
            refresh_live_playlists: true,
        }
    }
}

/// `[auth]`: what viewers must present.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Signed playback URLs (`eddy_shared::signed_url`); off when unset.
    pub signed_urls: Option<SignedUrlsConfig>,
}

/// `auth.signed_urls`: requests under `prefixes` need a valid, unexpired token in the query parameter
/// `param`, signed with the key in `key_file`. The key file is read when the config is checked, and
/// again on every reload (SIGHUP), which is how a key is rotated.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SignedUrlsConfig {
    /// The HMAC key (at least 32 bytes once surrounding whitespace is trimmed), shared with the origin.
    pub key_file: PathBuf,
    #[serde(default = "default_token_param")]
    pub param: String,
    /// Path prefixes that need a token, matched on the decoded path, case-insensitively, with repeated
    /// slashes as one, so that no spelling of a protected path gets around them. `["/"]`: everything.
    #[serde(default = "default_protected_prefixes")]
    pub prefixes: Vec<String>,
}

fn default_token_param() -> String {
    eddy_shared::signed_url::DEFAULT_PARAM.to_string()
}

fn default_protected_prefixes() -> Vec<String> {
    vec!["/".to_string()]
}

/// The viewers' TLS listener's certificate chain (leaf first) and private key, both PEM. Reread on
/// SIGHUP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Address of the HTTPS listener for viewers (HTTP/1.1 and HTTP/2 over TLS); none when unset.
    pub listen_tls: Option<SocketAddr>,
    /// Runtime worker threads; 0 means one per core.
    pub workers: usize,
    /// Origins in failover order: http(s) URLs or directories.
    pub origins: Vec<String>,
    /// Host names this edge answers for; empty accepts any Host (every request still goes only to the
    /// configured origins, so the edge is never an open proxy).
    pub server_names: Vec<String>,
    /// How long in-flight responses may take to finish after SIGTERM/SIGINT.
    pub shutdown_grace: HumanDuration,
    /// Client connections open at once; over it, new connections get 503 and are closed.
    pub max_connections: usize,
    /// A client must send a whole request head within this time (slowloris): from accept for the first
    /// request, from the head's first byte for later ones.
    pub header_read_timeout: HumanDuration,
    /// A client sending a request body may pause this long between bytes, and after this long must
    /// average `request_body::MIN_BODY_RATE` bytes/s.
    pub body_read_timeout: HumanDuration,
    /// An idle keep-alive client connection (no request in flight) is closed after this long.
    pub keepalive_timeout: HumanDuration,
    /// A client connection whose socket has taken none of the bytes the edge has for it for this long
    /// (the client stopped reading) is closed (nginx `send_timeout`). Slow readers that keep taking
    /// bytes are not cut.
    pub send_timeout: HumanDuration,
    /// Certificate and key of `listen_tls`; required with it.
    pub tls: Option<TlsConfig>,
    pub cache: CacheConfig,
    pub origin: OriginConfig,
    pub headers: HeadersConfig,
    pub admin: AdminConfig,
    pub rate_limit: RateLimitConfig,
    pub prefetch: PrefetchConfig,
    pub cluster: ClusterConfig,
    pub auth: AuthConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            listen_tls: None,
            workers: 0,
            origins: Vec::new(),
            server_names: Vec::new(),
            shutdown_grace: HumanDuration(Duration::from_secs(10)),
            max_connections: 10_000,
            header_read_timeout: HumanDuration(Duration::from_secs(10)),
            body_read_timeout: HumanDuration(Duration::from_secs(10)),
            keepalive_timeout: HumanDuration(Duration::from_secs(60)),
            send_timeout: HumanDuration(Duration::from_secs(60)),
            tls: None,
            cache: CacheConfig::default(),
            origin: OriginConfig::default(),
            headers: HeadersConfig::default(),
            admin: AdminConfig::default(),
            rate_limit: RateLimitConfig::default(),
            prefetch: PrefetchConfig::default(),
            cluster: ClusterConfig::default(),
            auth: AuthConfig::default(),
        }
    }
}

/// Command-line values that override the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub origins: Vec<String>,
    pub cache_size: Option<u64>,
    pub workers: Option<usize>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and validates TOML text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.validate(&path.display().to_string())?;
        Ok(config)
    }

    /// Applies command-line overrides, then validates the result.
    pub fn with_overrides(mut self, overrides: Overrides) -> Result<Config, ConfigError> {
        if let Some(listen) = overrides.listen {
            self.listen = listen;
        }
        if let Some(admin) = overrides.admin_listen {
            self.admin_listen = admin;
        }
        if !overrides.origins.is_empty() {
            self.origins = overrides.origins;
        }
        if let Some(size) = overrides.cache_size {
            self.cache.size = ByteSize(size);
        }
        if let Some(workers) = overrides.workers {
            self.workers = workers;
        }
        self.validate("command line")?;
        Ok(self)
    }

    /// Checks what types alone cannot. `origin` names where the values came from.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        for (i, entry) in self.origins.iter().enumerate() {
            let key = format!("origins[{i}]");
            if entry.starts_with("http://") || entry.starts_with("https://") {
                url::Url::parse(entry).map_err(|e| invalid(origin, &key, format!("'{entry}': {e}")))?;
            } else if entry.contains("://") {
                return Err(invalid(
                    origin,
                    &key,
                    format!("'{entry}': only http and https URLs or directories are supported"),
                ));
            } else if entry.is_empty() {
                return Err(invalid(origin, &key, "empty origin"));
            }
        }
        if self.cache.size.0 == 0 {
            return Err(invalid(origin, "cache.size", "must be greater than 0"));
        }
        if self.cache.fill_memory.0 == 0 {
            return Err(invalid(origin, "cache.fill_memory", "must be greater than 0"));
        }
        if self.cache.max_object_size.0 == 0 {
            return Err(invalid(origin, "cache.max_object_size", "must be greater than 0"));
        }
        if self.cache.max_object_size.0 > u32::MAX as u64 {
            return Err(invalid(origin, "cache.max_object_size", "must be below 4GiB"));
        }
        if let Some(name) = &self.cache.targeted_header {
            let valid = http::HeaderName::from_bytes(name.as_bytes()).is_ok();
            let reserved = ["cache-control", "cdn-cache-control", "expires", "age", "date", "vary", "set-cookie"];
            if !valid || reserved.contains(&name.to_ascii_lowercase().as_str()) {
                return Err(invalid(
                    origin,
                    "cache.targeted_header",
                    format!("'{name}' is not a header name of its own (e.g. \"Eddy-Cache-Control\")"),
                ));
            }
        }
        for (i, name) in self.cache.ignore_query_params.iter().enumerate() {
            // Refused rather than quietly kept in the key: the operator asked for something that would
            // answer a blocking reload with another one's playlist, and should know.
            if is_delivery_directive(name) {
                return Err(invalid(
                    origin,
                    &format!("cache.ignore_query_params[{i}]"),
                    format!(
                        "'{name}' is an HLS delivery directive (a name starting with _HLS_, such as _HLS_msn, \
                         _HLS_part, _HLS_skip): it chooses which playlist the origin answers, so it always stays \
                         in the cache key"
                    ),
                ));
            }
        }
        for (i, rule) in self.cache.ttl_rules.iter().enumerate() {
            if rule.suffix.is_some() == rule.content_type.is_some() {
                return Err(invalid(
                    origin,
                    &format!("cache.ttl_rules[{i}]"),
                    "give exactly one of `suffix` or `content_type`",
                ));
            }
        }
        if self.origin.connect_timeout.0.is_zero() {
            return Err(invalid(origin, "origin.connect_timeout", "must be greater than 0"));
        }
        if self.origin.first_byte_timeout.0.is_zero() {
            return Err(invalid(origin, "origin.first_byte_timeout", "must be greater than 0"));
        }
        if self.origin.total_timeout.0 < self.origin.first_byte_timeout.0 {
            return Err(invalid(origin, "origin.total_timeout", "must not be shorter than origin.first_byte_timeout"));
        }
        if let Some(timeout) = self.origin.blocking_reload_timeout {
            if timeout.0 < self.origin.first_byte_timeout.0 || timeout.0 > MAX_BLOCKING_RELOAD_TIMEOUT {
                return Err(invalid(
                    origin,
                    "origin.blocking_reload_timeout",
                    format!(
                        "must be between origin.first_byte_timeout ({:?}) and {}s: an origin holds a blocking \
                         playlist reload up to about three target durations",
                        self.origin.first_byte_timeout.0,
                        MAX_BLOCKING_RELOAD_TIMEOUT.as_secs()
                    ),
                ));
            }
        }
        if self.origin.max_blocking_reloads == 0 || self.origin.max_blocking_reloads > MAX_MAX_BLOCKING_RELOADS {
            return Err(invalid(
                origin,
                "origin.max_blocking_reloads",
                format!(
                    "must be between 1 and {MAX_MAX_BLOCKING_RELOADS}: with none, no LL-HLS blocking playlist \
                     reload could be answered, and each one holds a connection"
                ),
            ));
        }
        if self.origin.idle_timeout.0.is_zero() {
            return Err(invalid(origin, "origin.idle_timeout", "must be greater than 0"));
        }
        for (i, name) in self.origin.forward_request_headers.iter().enumerate() {
            let key = format!("origin.forward_request_headers[{i}]");
            let parsed = http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| invalid(origin, &key, format!("'{name}' is not a header name")))?;
            if crate::forwarding::never_forwarded(&parsed) {
                return Err(invalid(
                    origin,
                    &key,
                    format!("'{name}' is set by the edge itself or concerns one connection; it is never forwarded"),
                ));
            }
        }
        if self.max_connections == 0 {
            return Err(invalid(origin, "max_connections", "must be greater than 0"));
        }
        for (key, value) in [
            ("header_read_timeout", self.header_read_timeout),
            ("body_read_timeout", self.body_read_timeout),
            ("keepalive_timeout", self.keepalive_timeout),
            ("send_timeout", self.send_timeout),
        ] {
            if value.0.is_zero() {
                return Err(invalid(origin, key, "must be greater than 0"));
            }
        }
        self.validate_tls(origin)?;
        if !self.headers.cors_allow_origin.is_empty()
            && http::HeaderValue::from_str(&self.headers.cors_allow_origin).is_err()
        {
            return Err(invalid(origin, "headers.cors_allow_origin", "not a valid header value"));
        }
        if let Some(token) = &self.admin.purge_token {
            if token.trim().is_empty() {
                return Err(invalid(origin, "admin.purge_token", "must not be empty (leave it out to disable purge)"));
            }
        }
        if self.prefetch.segments > MAX_PREFETCH_SEGMENTS {
            return Err(invalid(
                origin,
                "prefetch.segments",
                format!("at most {MAX_PREFETCH_SEGMENTS} (0 turns prefetch off)"),
            ));
        }
        if !(1..=1024).contains(&self.prefetch.max_concurrent) {
            return Err(invalid(origin, "prefetch.max_concurrent", "must be between 1 and 1024"));
        }
        // Above cache.max_object_size it changes nothing (nothing larger is stored): not an error, so
        // that lowering the cache's limit alone stays a valid config.
        if self.prefetch.max_object_size.0 == 0 {
            return Err(invalid(origin, "prefetch.max_object_size", "must be greater than 0"));
        }
        if !(64 << 10..=1 << 30).contains(&self.prefetch.memory.0) {
            return Err(invalid(origin, "prefetch.memory", "must be between 64KiB and 1GiB"));
        }
        self.rate_limit.validate().map_err(|(key, reason)| invalid(origin, &format!("rate_limit.{key}"), reason))?;
        if let Some(shield) = &self.origin.shield {
            validate_http_url(shield).map_err(|reason| invalid(origin, "origin.shield", reason))?;
        }
        self.validate_auth(origin)?;
        self.validate_cluster(origin)
    }

    /// `[auth]`: the key file is read and checked now, so that a missing or short key fails
    /// `check-config` and a reload rather than every viewer's request.
    fn validate_auth(&self, origin: &str) -> Result<(), ConfigError> {
        let Some(signed) = &self.auth.signed_urls else { return Ok(()) };
        eddy_shared::signed_url::SigningKey::load(&signed.key_file)
            .map_err(|e| invalid(origin, "auth.signed_urls.key_file", e))?;
        // Unreserved characters only (RFC 3986 §2.3): the name then appears in queries exactly as
        // written, and is found by comparing bytes.
        let unreserved = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
        if signed.param.is_empty() || signed.param.len() > 64 || !signed.param.bytes().all(unreserved) {
            return Err(invalid(
                origin,
                "auth.signed_urls.param",
                format!("'{}' must be 1 to 64 letters, digits, '-', '.', '_' or '~'", signed.param),
            ));
        }
        if is_delivery_directive(&signed.param) {
            return Err(invalid(
                origin,
                "auth.signed_urls.param",
                format!(
                    "'{}' is an HLS delivery directive's name (_HLS_...): the token is left out of the cache key, \
                     a directive never is",
                    signed.param
                ),
            ));
        }
        if signed.prefixes.is_empty() {
            return Err(invalid(origin, "auth.signed_urls.prefixes", "list at least one (\"/\" protects everything)"));
        }
        for (i, prefix) in signed.prefixes.iter().enumerate() {
            let plain = prefix.starts_with('/')
                && !prefix.contains(['%', '?', '#', '\\', '\0'])
                && !prefix.split('/').any(|segment| segment == "." || segment == "..");
            if !plain {
                return Err(invalid(
                    origin,
                    &format!("auth.signed_urls.prefixes[{i}]"),
                    format!("'{prefix}' must be a path starting with '/', without dot segments, '%', '?', '#' or '\\'"),
                ));
            }
        }
        Ok(())
    }

    fn validate_cluster(&self, origin: &str) -> Result<(), ConfigError> {
        let cluster = &self.cluster;
        if cluster.peers.is_empty() && cluster.peers_file.is_none() {
            if cluster.self_url.is_some() {
                return Err(invalid(origin, "cluster.peers", "`self` is set but no peers are listed"));
            }
            return Ok(());
        }
        if !cluster.peers.is_empty() && cluster.peers_file.is_some() {
            return Err(invalid(origin, "cluster.peers_file", "give `peers` or `peers_file`, not both"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, peer) in cluster.peers.iter().enumerate() {
            let key = format!("cluster.peers[{i}]");
            validate_http_url(peer.url()).map_err(|reason| invalid(origin, &key, reason))?;
            if !(peer.weight().is_finite() && peer.weight() > 0.0) {
                return Err(invalid(origin, &format!("{key}.weight"), "must be a positive number"));
            }
            if let Some(admin) = peer.admin() {
                validate_http_url(admin).map_err(|reason| invalid(origin, &format!("{key}.admin"), reason))?;
            }
            if !seen.insert(peer.url().trim_end_matches('/')) {
                return Err(invalid(origin, &key, format!("'{}' is listed twice", peer.url())));
            }
        }
        if let Some(self_url) = &cluster.self_url {
            if !cluster.peers.is_empty() && !seen.contains(self_url.trim_end_matches('/')) {
                return Err(invalid(origin, "cluster.self", format!("'{self_url}' is not one of cluster.peers")));
            }
        }
        match &cluster.secret {
            Some(secret) if secret.len() >= MIN_CLUSTER_SECRET_LEN && HeaderValue::from_str(secret).is_ok() => {}
            _ => {
                return Err(invalid(
                    origin,
                    "cluster.secret",
                    format!(
                        "required with peers: at least {MIN_CLUSTER_SECRET_LEN} printable characters, the same on every member"
                    ),
                ))
            }
        }
        if cluster.hot_window.0.is_zero() {
            return Err(invalid(origin, "cluster.hot_window", "must be greater than 0"));
        }
        Ok(())
    }

    /// The TLS keys: `listen_tls` and `[tls]` go together, and the certificate files (and
    /// `origin.ca_file`) are read and checked now, so that a bad file fails `check-config` and a reload
    /// rather than the first handshake.
    fn validate_tls(&self, origin: &str) -> Result<(), ConfigError> {
        match (&self.listen_tls, &self.tls) {
            (Some(_), None) => {
                return Err(invalid(origin, "tls", "listen_tls is set: give [tls] cert and key (PEM files)"));
            }
            (None, Some(_)) => {
                return Err(invalid(origin, "listen_tls", "[tls] is set but listen_tls is not: set both or neither"));
            }
            (Some(_), Some(tls)) => {
                crate::tls::load_certified_key(&tls.cert, &tls.key).map_err(|e| {
                    let key = match e.role {
                        crate::tls::Role::Certificate => "tls.cert",
                        crate::tls::Role::Key => "tls.key",
                    };
                    invalid(origin, key, e)
                })?;
            }
            (None, None) => {}
        }
        if let Some(ca_file) = &self.origin.ca_file {
            crate::tls::read_certificates(ca_file).map_err(|e| invalid(origin, "origin.ca_file", e))?;
        }
        Ok(())
    }

    /// The worker thread count to start the runtime with.
    pub fn worker_threads(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("edge.toml"))
    }

    #[test]
    fn defaults_are_valid() {
        let config = parse("").expect("empty config is valid");
        assert_eq!(config.cache.size, ByteSize(256 << 20));
        assert_eq!(config.cache.eviction, Eviction::S3Fifo);
    }

    #[test]
    fn reads_sizes_durations_and_rules() {
        let config = parse(
            r#"
            origins = ["http://127.0.0.1:9000", "/srv/hls"]
            [cache]
            size = "2GiB"
            eviction = "lru"
            negative_ttl = "5s"
            [[cache.ttl_rules]]
            suffix = ".m3u8"
            ttl = "2s"
            "#,
        )
        .expect("valid");
        assert_eq!(config.cache.size, ByteSize(2 << 30));
        assert_eq!(config.cache.eviction, Eviction::Lru);
        assert_eq!(config.cache.negative_ttl, HumanDuration(Duration::from_secs(5)));
        assert_eq!(config.cache.ttl_rules.len(), 1);
        assert_eq!(config.origins.len(), 2);
    }

    #[test]
    fn a_fleet_needs_its_members_listed_once_and_a_secret() {
        let fleet = |extra: &str| {
            parse(&format!(
                "[cluster]\npeers = [\"http://127.0.0.1:8080\", {{ url = \"http://127.0.0.1:8081\", weight = 2, admin = \"http://127.0.0.1:9091\" }}]\n{extra}"
            ))
        };
        let config = fleet("secret = \"0123456789abcdef\"\nlocal_copy = \"never\"\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.cluster.peers[1].weight(), 2.0);
        assert_eq!(config.cluster.local_copy, LocalCopy::Never);
        for (extra, key, reason) in [
            ("", "cluster.secret", "at least 16"),
            ("secret = \"short\"\n", "cluster.secret", "at least 16"),
            ("secret = \"0123456789abcdef\"\nself = \"http://127.0.0.1:9\"\n", "cluster.self", "not one of"),
            ("secret = \"0123456789abcdef\"\npeers_file = \"/etc/eddy/peers\"\n", "cluster.peers_file", "not both"),
        ] {
            let err = fleet(extra).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(key) && err.contains(reason), "{extra:?}: {err}");
        }
        let err = parse("[cluster]\nsecret = \"0123456789abcdef\"\npeers = [\"http://a:1\", \"http://a:1/\"]\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("cluster.peers[1]") && err.contains("twice"), "{err}");
        let err = parse("[origin]\nshield = \"shield.example\"\n").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("origin.shield"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused_with_file_and_key() {
        let err = parse("[cache]\nsize = \"1GiB\"\nsizee = 3\n").unwrap_err().to_string();
        assert!(err.contains("edge.toml"), "{err}");
        assert!(err.contains("sizee"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key_and_reason() {
        let err = parse("[cache]\nsize = \"lots\"\n").unwrap_err().to_string();
        assert!(err.contains("edge.toml") && err.contains("size") && err.contains("lots"), "{err}");

        let err = parse("origins = [\"ftp://x\"]").unwrap_err().to_string();
        assert!(err.contains("origins[0]") && err.contains("only http"), "{err}");

        let err = parse("[[cache.ttl_rules]]\nttl = \"1s\"\n").unwrap_err().to_string();
        assert!(err.contains("cache.ttl_rules[0]"), "{err}");

        let err = parse("[origin]\ntotal_timeout = \"1s\"\nfirst_byte_timeout = \"5s\"\n").unwrap_err().to_string();
        assert!(err.contains("origin.total_timeout"), "{err}");
    }

    #[test]
    fn blocking_reload_timeout_defaults_to_30s_and_is_validated() {
        let config = parse("").expect("valid");
        assert_eq!(config.origin.blocking_reload_timeout(), Duration::from_secs(30));
        // Unset, it never falls below the first-byte timeout an operator raised.
        let config = parse("[origin]\nfirst_byte_timeout = \"45s\"\ntotal_timeout = \"60s\"\n").expect("valid");
        assert_eq!(config.origin.blocking_reload_timeout(), Duration::from_secs(45));
        let config = parse("[origin]\nblocking_reload_timeout = \"12s\"\n").expect("valid");
        assert_eq!(config.origin.blocking_reload_timeout(), Duration::from_secs(12));
        for text in [
            "[origin]\nblocking_reload_timeout = \"2s\"\n",
            "[origin]\nblocking_reload_timeout = 0\n",
            "[origin]\nblocking_reload_timeout = \"11m\"\n",
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(
                err.contains("edge.toml") && err.contains("origin.blocking_reload_timeout") && err.contains("between"),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn max_blocking_reloads_defaults_to_2048_and_refuses_zero() {
        assert_eq!(parse("").expect("valid").origin.max_blocking_reloads, 2048);
        assert_eq!(parse("[origin]\nmax_blocking_reloads = 8\n").expect("valid").origin.max_blocking_reloads, 8);
        for text in ["[origin]\nmax_blocking_reloads = 0\n", "[origin]\nmax_blocking_reloads = 9223372036854775807\n"] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains("edge.toml") && err.contains("origin.max_blocking_reloads"), "{err}");
        }
    }

    #[test]
    fn delivery_directive_names_are_recognised_in_any_spelling() {
        for name in ["_HLS_msn", "_HLS_part", "_HLS_skip", "_hls_msn", "_HLS_anything", "%5FHLS_msn", "%5fhls_part"] {
            assert!(is_delivery_directive(name), "{name}");
        }
        for name in ["", "_HLS", "HLS_msn", "token", "x_HLS_msn", "%5F"] {
            assert!(!is_delivery_directive(name), "{name}");
        }
    }

    #[test]
    fn delivery_directives_cannot_leave_the_cache_key() {
        assert!(parse("[cache]\nignore_query_params = [\"token\", \"sid\"]\n").is_ok());
        for name in ["_HLS_msn", "_HLS_part", "_HLS_skip", "_hls_msn", "%5FHLS_msn"] {
            let err =
                parse(&format!("[cache]\nignore_query_params = [\"token\", \"{name}\"]\n")).unwrap_err().to_string();
            assert!(
                err.contains("edge.toml") && err.contains("cache.ignore_query_params[1]") && err.contains(name),
                "{name}: {err}"
            );
            assert!(err.contains("delivery directive"), "{err}");
        }
    }

    #[test]
    fn send_timeout_defaults_to_a_minute_and_must_be_positive() {
        assert_eq!(parse("").expect("valid").send_timeout, HumanDuration(Duration::from_secs(60)));
        assert_eq!(parse("send_timeout = \"5s\"").expect("valid").send_timeout, HumanDuration(Duration::from_secs(5)));
        let err = parse("send_timeout = \"0s\"").unwrap_err().to_string();
        assert!(err.contains("edge.toml") && err.contains("send_timeout") && err.contains("greater than 0"), "{err}");
    }

    #[test]
    fn prefetch_defaults_to_one_segment_and_is_validated() {
        let config = parse("").expect("valid");
        assert_eq!(config.prefetch.segments, 1);
        assert!(config.prefetch.refresh_live_playlists);
        let config = parse("[prefetch]\nsegments = 0\nrefresh_live_playlists = false\n").expect("off is valid");
        assert_eq!(config.prefetch.segments, 0);
        for (text, key) in [
            ("[prefetch]\nsegments = 4\n", "prefetch.segments"),
            ("[prefetch]\nmax_concurrent = 0\n", "prefetch.max_concurrent"),
            ("[prefetch]\nmax_object_size = 0\n", "prefetch.max_object_size"),
            ("[prefetch]\nmemory = \"1kB\"\n", "prefetch.memory"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains("edge.toml") && err.contains(key), "{text}: {err}");
        }
        assert!(parse("[cache]\nmax_object_size = \"100kB\"\n").is_ok(), "the prefetch cap follows the cache's");
        let err = parse("[prefetch]\nsegmets = 1\n").unwrap_err().to_string();
        assert!(err.contains("segmets"), "{err}");
    }

    #[test]
    fn tls_keys_go_together_and_their_files_are_checked() {
        let err = parse("listen_tls = \"127.0.0.1:8443\"").unwrap_err().to_string();
        assert!(err.contains("edge.toml") && err.contains("`tls`") && err.contains("cert and key"), "{err}");
        let err = parse("[tls]\ncert = \"a.pem\"\nkey = \"b.pem\"\n").unwrap_err().to_string();
        assert!(err.contains("`listen_tls`"), "{err}");
        let err = parse("listen_tls = \"127.0.0.1:8443\"\n[tls]\ncert = \"/nonexistent/edge.crt\"\nkey = \"/nonexistent/edge.key\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`tls.cert`") && err.contains("/nonexistent/edge.crt") && err.contains("cannot read"),
            "{err}"
        );
        let err = parse("listen_tls = \"127.0.0.1:8443\"\n[tls]\ncert = \"a.pem\"\n").unwrap_err().to_string();
        assert!(err.contains("key"), "{err}");
        let err = parse("[origin]\nca_file = \"/nonexistent/ca.pem\"\n").unwrap_err().to_string();
        assert!(err.contains("`origin.ca_file`") && err.contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn signed_urls_read_their_key_at_load_and_name_what_is_wrong() {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = dir.path().join("playback.key");
        std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").expect("write key");
        let with = |table: &str| parse(&format!("[auth]\nsigned_urls = {{ key_file = {:?}{table} }}\n", key));
        let config = with("").expect("valid");
        let signed = config.auth.signed_urls.expect("signed_urls");
        assert_eq!((signed.param.as_str(), signed.prefixes), ("token", vec!["/".to_string()]));
        let config = with(", param = \"t\", prefixes = [\"/videos/\", \"/live/\"]").expect("valid");
        assert_eq!(config.auth.signed_urls.expect("signed_urls").prefixes, ["/videos/", "/live/"]);
        assert!(parse("").expect("valid").auth.signed_urls.is_none(), "off by default");

        for (table, key_name, reason) in [
            (", param = \"\"", "auth.signed_urls.param", "1 to 64"),
            (", param = \"a b\"", "auth.signed_urls.param", "1 to 64"),
            (", param = \"_HLS_msn\"", "auth.signed_urls.param", "delivery directive"),
            (", prefixes = []", "auth.signed_urls.prefixes", "at least one"),
            (", prefixes = [\"videos/\"]", "auth.signed_urls.prefixes[0]", "starting with '/'"),
            (", prefixes = [\"/\", \"/a/../b/\"]", "auth.signed_urls.prefixes[1]", "dot segments"),
            (", prefixes = [\"/%76ideos/\"]", "auth.signed_urls.prefixes[0]", "'%'"),
        ] {
            let err = with(table).unwrap_err().to_string();
            assert!(err.contains("edge.toml") && err.contains(key_name) && err.contains(reason), "{table}: {err}");
        }
        let err = with(", prams = 1").unwrap_err().to_string();
        assert!(err.contains("prams"), "{err}");

        std::fs::write(&key, "too short\n").expect("write key");
        let err = with("").unwrap_err().to_string();
        assert!(
            err.contains("edge.toml") && err.contains("auth.signed_urls.key_file") && err.contains("playback.key"),
            "{err}"
        );
        assert!(err.contains("at least 32"), "{err}");
        std::fs::remove_file(&key).expect("remove key");
        let err = with("").unwrap_err().to_string();
        assert!(
            err.contains("auth.signed_urls.key_file") && err.contains("playback.key") && err.contains("cannot read"),
            "{err}"
        );
    }

    #[test]
    fn flags_override_the_file() {
        let config = parse("origins = [\"http://a.example\"]\n[cache]\nsize = \"1GiB\"\n").expect("valid");
        let config = config
            .with_overrides(Overrides {
                origins: vec!["/srv".into()],
                cache_size: Some(1 << 20),
                ..Overrides::default()
            })
            .expect("valid");
        assert_eq!(config.origins, vec!["/srv".to_string()]);
        assert_eq!(config.cache.size, ByteSize(1 << 20));
    }
}
