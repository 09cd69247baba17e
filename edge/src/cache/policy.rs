//! What may be stored, for how long, and when a stored object may still be served: pure functions of the
//! request, the response and the time, with no I/O and no clock of their own. RFC 9111 for a shared
//! cache, and RFC 9213's targeted fields, implemented here rather than delegated, so that each rule can
//! cite its section:
//!
//! - storability (§3, §3.5): which responses a shared cache may keep;
//! - freshness lifetime (§4.2.1): `s-maxage`, `max-age`, `Expires − Date`, then a heuristic (§4.2.2)
//!   of 10 % of `Date − Last-Modified`, capped; operator TTL rules stand in where the origin said
//!   nothing, and override the heuristic;
//! - age (§4.2.3): `corrected_initial_age` from `Age`, `Date` and the response delay, plus residence;
//! - serving stale (§4.2.4, RFC 5861): `stale-while-revalidate` and `stale-if-error`, never against
//!   `must-revalidate`, `proxy-revalidate`, `s-maxage` (which implies proxy-revalidate, §5.2.2.10) or
//!   `no-cache`;
//! - freshening with a 304 (§4.3.4, §3.2);
//! - Low-Latency HLS blocking playlist reloads (draft-pantos-hls-rfc8216bis §6.2.5.2): which requests
//!   are one (`_HLS_msn` in the query), which delivery directives are malformed, and that a blocking
//!   reload is never answered with a stale copy ([`may_serve_stale`]).
//!
//! A targeted field (`CDN-Cache-Control`, or the operator's `cache.targeted_header`) that is present
//! and valid replaces `Cache-Control` and `Expires` for the edge's own decisions (RFC 9213 §2.2);
//! clients still get the origin's `Cache-Control`.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::StatusCode;

use super::directives::{self, Expires};
pub use super::directives::{delta_seconds, MAX_DELTA};
use crate::config::{CacheConfig, SetCookie, TtlRule};

/// RFC 9110 §15.1: statuses whose responses are heuristically cacheable.
pub fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501)
}

/// Status codes this cache understands (RFC 9110 §15), for `must-understand` (RFC 9111 §5.2.2.3).
fn understood(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200..=206 | 300..=305 | 307 | 308 | 400..=417 | 421 | 422 | 426 | 500..=505
    )
}

/// Whether a final status may be stored at all: 206 is not (partial objects are not kept) and 304
/// only ever freshens a stored response.
pub fn status_is_storable(status: StatusCode) -> bool {
    status.as_u16() >= 200 && status != StatusCode::PARTIAL_CONTENT && status != StatusCode::NOT_MODIFIED
}

/// The operator's caching settings that decisions depend on.
#[derive(Debug, Clone)]
pub struct CacheRules {
    pub ttl_rules: Vec<TtlRule>,
    pub negative_ttl: Duration,
    pub stale_if_error: Duration,
    pub stale_while_revalidate: Duration,
    pub max_object_size: u64,
    pub set_cookie: SetCookie,
    /// The cap on heuristic freshness (RFC 9111 §4.2.2).
    pub heuristic_max_ttl: Duration,
    /// Targeted cache-control fields, in order of precedence (RFC 9213 §2.2).
    pub targeted_fields: Vec<HeaderName>,
}

impl CacheRules {
    pub fn from_config(config: &CacheConfig) -> Self {
        let mut targeted_fields = Vec::new();
        if let Some(name) = config.targeted_header.as_deref() {
            if let Ok(name) = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) {
                targeted_fields.push(name);
            }
        }
        targeted_fields.push(HeaderName::from_static("cdn-cache-control"));
        CacheRules {
            ttl_rules: config.ttl_rules.clone(),
            negative_ttl: config.negative_ttl.0,
            stale_if_error: config.stale_if_error.0,
            stale_while_revalidate: config.stale_while_revalidate.0,
            max_object_size: config.max_object_size.0,
            set_cookie: config.set_cookie,
            heuristic_max_ttl: config.heuristic_max_ttl.0,
            targeted_fields,
        }
    }

    /// The operator TTL for a response the origin said nothing about, if any rule matches: the
    /// negative TTL for "not found"-like answers, the suffix and Content-Type rules for successful ones.
    fn operator_ttl(&self, status: StatusCode, path: &str, headers: &HeaderMap) -> Option<Duration> {
        if matches!(status.as_u16(), 404 | 410) {
            return Some(self.negative_ttl);
        }
        if !matches!(status.as_u16(), 200 | 203 | 204 | 300 | 301 | 308) {
            return None;
        }
        let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        self.ttl_rules.iter().find_map(|rule| {
            let matched = match (&rule.suffix, &rule.content_type) {
                (Some(suffix), _) => path.ends_with(suffix.as_str()),
                (None, Some(prefix)) => content_type.starts_with(prefix.as_str()),
                (None, None) => false,
            };
            matched.then_some(rule.ttl.0)
        })
    }
}

/// When a response was asked for and received, for the age calculation (RFC 9111 §4.2.3).
#[derive(Debug, Clone, Copy)]
pub struct Exchange {
    pub request_time: SystemTime,
    pub response_time: SystemTime,
}

impl Exchange {
    /// An exchange with no measurable delay (tests, benchmarks).
    pub fn at(now: SystemTime) -> Self {
        Exchange { request_time: now, response_time: now }
    }
}

/// Where a response's freshness lifetime came from (the precedence tests read it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifetimeSource {
    Directive,
    Expires,
    Operator,
    Heuristic,
    None,
}

/// What a shared cache may do with a response from the origin: whether it may be stored, how long it
/// stays fresh, how long it may be served stale, and which request headers it Varies on.
#[derive(Debug, Clone)]
pub struct Cacheability {
    pub storable: bool,
    /// The freshness lifetime (RFC 9111 §4.2.1).
    pub lifetime: Duration,
    /// `corrected_initial_age` (RFC 9111 §4.2.3): the age the response had when it arrived.
    pub initial_age: Duration,
    /// How long it stays fresh from now: lifetime − initial age (zero when stale on arrival).
    pub fresh_for: Duration,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    /// `must-revalidate`, `proxy-revalidate`, `s-maxage` or `no-cache`: never serve it stale; when
    /// the origin cannot be reached, answer 504 (RFC 9111 §4.2.4, §5.2.2.2).
    pub forbids_stale: bool,
    pub lifetime_source: LifetimeSource,
    /// Header names the response Varies on (lower-cased), if any.
    pub vary: Vec<HeaderName>,
    /// The response sets a cookie. With `cache.set_cookie = "pass"` it is then neither stored nor
    /// shared; with `"strip"` it is stored and shared without its `Set-Cookie`.
    pub sets_cookie: bool,
}

/// Decides whether and for how long a response may be stored, with no delay between request and
/// response (see [`judge_exchange`]).
pub fn judge(
    rules: &CacheRules,
    request: &http::request::Parts,
    status: StatusCode,
    headers: &HeaderMap,
    path: &str,
    now: SystemTime,
) -> Cacheability {
    judge_exchange(rules, request, status, headers, path, Exchange::at(now))
}

/// Decides whether and for how long a response may be stored. `request` is the client's request (its
/// Authorization header matters); `path` is the request path for TTL rules.
pub fn judge_exchange(
    rules: &CacheRules,
    request: &http::request::Parts,
    status: StatusCode,
    headers: &HeaderMap,
    path: &str,
    exchange: Exchange,
) -> Cacheability {
    // RFC 9213 §2.2: a valid targeted field replaces Cache-Control and Expires for this cache.
    let targeted = directives::targeted(headers, &rules.targeted_fields);
    let is_targeted = targeted.is_some();
    let cc = targeted.unwrap_or_else(|| directives::cache_control(headers));
    let expires = if is_targeted { Expires::Absent } else { directives::expires(headers) };
    let date = directives::date(headers);
    let vary = vary_names(headers);
    let sets_cookie = headers.contains_key(header::SET_COOKIE);

    // §4.2.3: the age the response had on arrival.
    let response_delay = exchange.response_time.duration_since(exchange.request_time).unwrap_or_default();
    // In whole seconds, as Date is: a Date written early in the same second is no age at all.
    let whole_seconds = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let apparent_age = date
        .map(|d| Duration::from_secs(whole_seconds(exchange.response_time).saturating_sub(whole_seconds(d))))
        .unwrap_or_default();
    let age_value = directives::age(headers).unwrap_or_default();
    let corrected_age_value = age_value.saturating_add(response_delay);
    let initial_age = apparent_age.max(corrected_age_value).min(MAX_DELTA);

    // §4.2.1: the freshness lifetime, in order of precedence (a shared cache honours s-maxage).
    let explicit = cc.says_anything() || expires != Expires::Absent || is_targeted;
    let (mut lifetime, mut source) = if cc.invalid_freshness {
        (Duration::ZERO, LifetimeSource::Directive)
    } else if let Some(s_maxage) = cc.s_maxage {
        (s_maxage, LifetimeSource::Directive)
    } else if let Some(max_age) = cc.max_age {
        (max_age, LifetimeSource::Directive)
    } else {
        match expires {
            // §5.3: an invalid Expires (for example "0") means already expired.
            Expires::Invalid => (Duration::ZERO, LifetimeSource::Expires),
            Expires::At(at) => {
                let base = date.unwrap_or(exchange.response_time);
                (at.duration_since(base).unwrap_or_default().min(MAX_DELTA), LifetimeSource::Expires)
            }
            Expires::Absent => (Duration::ZERO, LifetimeSource::None),
        }
    };
    if !explicit {
        if let Some(ttl) = rules.operator_ttl(status, path, headers) {
            // The operator's TTL stands in for what the origin did not say, and beats the heuristic.
            (lifetime, source) = (ttl.min(MAX_DELTA), LifetimeSource::Operator);
        } else if heuristically_cacheable(status) || cc.public {
            if let Some(heuristic) = heuristic_lifetime(headers, date.unwrap_or(exchange.response_time)) {
                (lifetime, source) = (heuristic.min(rules.heuristic_max_ttl), LifetimeSource::Heuristic);
            }
        }
    }
    if cc.no_cache {
        // §5.2.2.4: stored, but revalidated on every use.
        lifetime = Duration::ZERO;
    }

    // §3 (shared cache): may the response be stored at all?
    let has_validator = headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED);
    let no_store = cc.no_store && !(cc.must_understand && understood(status));
    let authorized = request.headers.contains_key(header::AUTHORIZATION);
    let cookie_passes = sets_cookie && rules.set_cookie == SetCookie::Pass;
    let may_be_kept = cc.max_age.is_some()
        || cc.s_maxage.is_some()
        || expires != Expires::Absent
        || cc.public
        || source == LifetimeSource::Operator
        || heuristically_cacheable(status);
    let storable = status_is_storable(status)
        && (!cc.must_understand || understood(status))
        && !no_store
        && !cc.private
        // §3.5: a response to a request with Authorization is shared only when the origin says so.
        && (!authorized || cc.public || cc.s_maxage.is_some() || cc.must_revalidate)
        && !vary.iter().any(|n| n.as_str() == "*")
        && !cookie_passes
        && may_be_kept
        // A response that must be revalidated on every use is worth keeping only with a validator.
        && (!cc.no_cache || has_validator);

    let forbids_stale = cc.must_revalidate || cc.proxy_revalidate || cc.s_maxage.is_some() || cc.no_cache;
    Cacheability {
        storable,
        lifetime,
        initial_age,
        fresh_for: lifetime.saturating_sub(initial_age),
        stale_while_revalidate: if forbids_stale {
            Duration::ZERO
        } else {
            cc.stale_while_revalidate.unwrap_or(rules.stale_while_revalidate).min(MAX_DELTA)
        },
        stale_if_error: if forbids_stale {
            Duration::ZERO
        } else {
            cc.stale_if_error.unwrap_or_default().max(rules.stale_if_error).min(MAX_DELTA)
        },
        forbids_stale,
        lifetime_source: source,
        vary,
        sets_cookie,
    }
}

/// §4.2.2: 10 % of the time since Last-Modified, as of `date`, when Last-Modified is valid and not in
/// the future.
fn heuristic_lifetime(headers: &HeaderMap, date: SystemTime) -> Option<Duration> {
    let modified = headers.get(header::LAST_MODIFIED).and_then(|v| v.to_str().ok()).and_then(directives::http_date)?;
    let since = date.duration_since(modified).ok()?;
    Some(since / 10)
}

pub fn vary_names(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| {
            let name = name.trim().to_ascii_lowercase();
            if name == "*" {
                Some(HeaderName::from_static("*"))
            } else {
                HeaderName::from_bytes(name.as_bytes()).ok()
            }
        })
        .collect();
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    names
}

/// A stored response: its head, its whole body, and its timings.
#[derive(Debug)]
pub struct CachedObject {
    pub status: StatusCode,
    /// The origin's headers, minus hop-by-hop ones and Age (recomputed on every response).
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When the response arrived (`response_time` of RFC 9111 §4.2.3), on the monotonic clock.
    pub stored_at: Instant,
    pub initial_age: Duration,
    pub lifetime: Duration,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    pub forbids_stale: bool,
}

/// Where a stored object is in its life at a given instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Serve it; `ttl` left.
    Fresh { ttl: Duration },
    /// Stale, but within stale-while-revalidate: serve it and refresh in the background.
    StaleRevalidateInBackground { stale_for: Duration },
    /// Stale: revalidate before serving; may still be served if the origin fails.
    Stale { stale_for: Duration },
}

impl CachedObject {
    /// The object to store for a response that arrived `now`, with the timings `judge` gave it.
    pub fn new(
        status: StatusCode,
        mut headers: HeaderMap,
        body: Bytes,
        cacheability: Cacheability,
        now: Instant,
    ) -> Self {
        headers.remove(header::AGE);
        CachedObject {
            status,
            headers,
            body,
            stored_at: now,
            initial_age: cacheability.initial_age,
            lifetime: cacheability.lifetime,
            stale_while_revalidate: cacheability.stale_while_revalidate,
            stale_if_error: cacheability.stale_if_error,
            forbids_stale: cacheability.forbids_stale,
        }
    }

    /// `current_age` (RFC 9111 §4.2.3): the age on arrival plus the time spent here.
    pub fn age(&self, now: Instant) -> Duration {
        self.initial_age.saturating_add(now.saturating_duration_since(self.stored_at))
    }

    pub fn lifecycle(&self, now: Instant) -> Lifecycle {
        let age = self.age(now);
        if age < self.lifetime {
            return Lifecycle::Fresh { ttl: self.lifetime - age };
        }
        let stale_for = age - self.lifetime;
        if stale_for < self.stale_while_revalidate {
            Lifecycle::StaleRevalidateInBackground { stale_for }
        } else {
            Lifecycle::Stale { stale_for }
        }
    }

    /// [`CachedObject::lifecycle`] for a request that may or may not be answered stale
    /// ([`may_serve_stale`]): when it may not, a copy within stale-while-revalidate is plainly stale,
    /// revalidated before anything is served.
    pub fn lifecycle_for(&self, now: Instant, may_serve_stale: bool) -> Lifecycle {
        match self.lifecycle(now) {
            Lifecycle::StaleRevalidateInBackground { stale_for } if !may_serve_stale => Lifecycle::Stale { stale_for },
            lifecycle => lifecycle,
        }
    }

    /// May this object stand in for an origin that failed (error, timeout, 5xx)?
    pub fn usable_on_error(&self, now: Instant) -> bool {
        match self.lifecycle(now) {
            Lifecycle::Fresh { .. } => true,
            _ if self.forbids_stale => false,
            Lifecycle::StaleRevalidateInBackground { .. } => true,
            Lifecycle::Stale { stale_for } => stale_for <= self.stale_if_error,
        }
    }

    /// How long after storage the object can still be of use (served stale or revalidated); the
    /// storage drops it afterwards. Objects with validators are kept a while longer because a 304 is
    /// cheaper than a refetch.
    pub fn keep_for(&self) -> Duration {
        let has_validator = self.headers.contains_key(header::ETAG) || self.headers.contains_key(header::LAST_MODIFIED);
        let revalidation_grace = if has_validator { Duration::from_secs(3600) } else { Duration::ZERO };
        // Each part is at most MAX_DELTA, so the sum is far from overflowing the cache's clock.
        self.lifetime
            .saturating_sub(self.initial_age)
            .saturating_add(self.stale_while_revalidate.max(self.stale_if_error).max(revalidation_grace))
    }

    /// Approximate memory this object holds, for the cache's byte weigher.
    pub fn weight(&self) -> usize {
        let headers: usize = self.headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 32).sum();
        self.body.len() + headers + 256
    }

    /// The request headers to revalidate this object with (If-None-Match / If-Modified-Since).
    pub fn validators(&self) -> HeaderMap {
        let mut out = HeaderMap::new();
        if let Some(etag) = self.headers.get(header::ETAG) {
            out.insert(header::IF_NONE_MATCH, etag.clone());
        }
        if let Some(modified) = self.headers.get(header::LAST_MODIFIED) {
            out.insert(header::IF_MODIFIED_SINCE, modified.clone());
        }
        out
    }

    /// A copy freshened by a 304 from the origin (RFC 9111 §4.3.4): the 304's header fields replace the
    /// stored ones (§3.2, except Content-Length and the cookie, which is the revalidating client's), and
    /// freshness is computed anew. Returns `None` when the 304 names another representation than this
    /// one (its validators differ): the body can no longer be trusted.
    pub fn refreshed(
        &self,
        rules: &CacheRules,
        request: &http::request::Parts,
        not_modified: &HeaderMap,
        path: &str,
        exchange: Exchange,
        now: Instant,
    ) -> Option<CachedObject> {
        let opaque = |v: &http::HeaderValue| v.as_bytes().strip_prefix(b"W/").unwrap_or(v.as_bytes()).to_vec();
        if let Some(new) = not_modified.get(header::ETAG) {
            if self.headers.get(header::ETAG).map(opaque) != Some(opaque(new)) {
                return None;
            }
        } else if let Some(new) = not_modified.get(header::LAST_MODIFIED) {
            if self.headers.get(header::LAST_MODIFIED).is_some_and(|old| old != new) {
                return None;
            }
        }
        let mut headers = self.headers.clone();
        let mut replaced: Vec<&HeaderName> = Vec::new();
        for (name, value) in not_modified {
            if matches!(*name, header::CONTENT_LENGTH | header::SET_COOKIE | header::CONTENT_RANGE) {
                continue;
            }
            if !replaced.contains(&name) {
                headers.remove(name);
                replaced.push(name);
            }
            headers.append(name.clone(), value.clone());
        }
        remove_hop_by_hop(&mut headers);
        let cacheability = judge_exchange(rules, request, self.status, &headers, path, exchange);
        Some(CachedObject::new(self.status, headers, self.body.clone(), cacheability, now))
    }
}

// ---- Low-Latency HLS delivery directives (draft-pantos-hls-rfc8216bis §6.2.5) ----

/// The query parameter of a blocking playlist reload: hold the request until the playlist holds this
/// media sequence number (§6.2.5.2).
pub const HLS_MSN: &str = "_HLS_msn";
/// With `_HLS_msn`: ... and this partial segment of it.
pub const HLS_PART: &str = "_HLS_part";
/// A playlist delta update (the origin sends a playlist that skips older segments): `YES` or `v2`,
/// the origin's to judge.
pub const HLS_SKIP: &str = "_HLS_skip";

/// The delivery directives of a request, once checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeliveryDirectives {
    /// `_HLS_msn`: a blocking playlist reload.
    pub msn: Option<u64>,
    /// `_HLS_part` (only with `_HLS_msn`).
    pub part: Option<u64>,
    /// `_HLS_skip` is given (its value is passed on as it is).
    pub skip: bool,
}

impl DeliveryDirectives {
    /// A blocking playlist reload: the origin holds it until the playlist has `msn` (and `part`).
    pub fn blocking(&self) -> bool {
        self.msn.is_some()
    }
}

/// Why a request's delivery directives cannot mean anything: the edge answers 400 itself, without
/// asking the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DirectiveError {
    #[error("{0} must be a decimal integer below 2^64")]
    NotANumber(&'static str),
    #[error("{0} is given more than once")]
    Repeated(&'static str),
    #[error("_HLS_part is only meaningful with _HLS_msn")]
    PartWithoutMsn,
}

/// Reads the delivery directives of a request's query: `_HLS_msn` and `_HLS_part` must be
/// decimal-integers (RFC 8216 §4.2: digits only, below 2^64) given once, `_HLS_part` only with
/// `_HLS_msn`, and `_HLS_skip` once. Names and values are read percent-decoded (an origin would decode `%5FHLS_msn`
/// too). What the values are worth (an `_HLS_msn` far beyond the live edge) is the origin's to judge:
/// the draft has it answer 400 at once. Other parameters, `_HLS_`-prefixed or not, are left alone.
pub fn delivery_directives(query: Option<&str>) -> Result<DeliveryDirectives, DirectiveError> {
    let mut directives = DeliveryDirectives::default();
    let Some(query) = query else { return Ok(directives) };
    // The common case: no directive can be spelt without "_HLS_" or a percent-escape.
    if !query.contains("_HLS_") && !query.contains('%') {
        return Ok(directives);
    }
    for pair in query.split('&') {
        let (name, value) = match pair.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (pair, None),
        };
        let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
        match name.as_ref() {
            HLS_MSN => directives.msn = Some(directive_number(directives.msn, HLS_MSN, value)?),
            HLS_PART => directives.part = Some(directive_number(directives.part, HLS_PART, value)?),
            HLS_SKIP if directives.skip => return Err(DirectiveError::Repeated(HLS_SKIP)),
            HLS_SKIP => directives.skip = true,
            _ => {}
        }
    }
    if directives.part.is_some() && directives.msn.is_none() {
        return Err(DirectiveError::PartWithoutMsn);
    }
    Ok(directives)
}

/// A directive's decimal-integer value (`[0..9]+`, so no sign), unless one was read already.
fn directive_number(already: Option<u64>, name: &'static str, value: Option<&str>) -> Result<u64, DirectiveError> {
    if already.is_some() {
        return Err(DirectiveError::Repeated(name));
    }
    let value = percent_encoding::percent_decode_str(value.unwrap_or_default()).decode_utf8_lossy();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DirectiveError::NotANumber(name));
    }
    value.parse().map_err(|_| DirectiveError::NotANumber(name))
}

/// Is this a blocking playlist reload (the query names `_HLS_msn`, well-formed or not)?
pub fn is_blocking_reload(query: Option<&str>) -> bool {
    query.is_some_and(|query| {
        (query.contains("_HLS_") || query.contains('%'))
            && query.split('&').any(|pair| {
                let name = pair.split('=').next().unwrap_or(pair);
                percent_encoding::percent_decode_str(name).decode_utf8_lossy() == HLS_MSN
            })
    })
}

/// May a stored copy that is no longer fresh answer this request (stale-while-revalidate,
/// stale-if-error, whatever the origin and the operator allow)? Never a blocking playlist reload's.
///
/// RFC 9111 §4.2.4 never obliges a cache to serve stale, so refusing is always allowed; and here it is
/// right. The client asked for the playlist *as soon as* it holds a media sequence number it has not
/// seen, to go on at the live edge; a copy whose freshness ran out is, by the origin's own word, no
/// longer the current playlist: its partial segments and preload hint fall out of the live window
/// within a few target durations (and their resources with them), and after an encoder restart it
/// describes another stream. Served on an origin failure, it would also hide the failure from the
/// player, which reacts to a failed reload (retry, another rendition or pathway) and cannot to a stale
/// success. So such a copy is only revalidated (its validators go along, and a 304 serves it fresh);
/// when the origin fails the client gets the error. A *fresh* copy of the same URL is served: the
/// answer to one `_HLS_msn`/`_HLS_part` cannot change while the origin says it is fresh.
pub fn may_serve_stale(query: Option<&str>) -> bool {
    !is_blocking_reload(query)
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) never cross the edge, in either direction.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::TE,
        header::TRAILER,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CacheConfig, HumanDuration};
    use http::HeaderValue;

    fn rules() -> CacheRules {
        CacheRules::from_config(&CacheConfig::default())
    }

    fn request(headers: &[(&str, &str)]) -> http::request::Parts {
        let mut builder = http::Request::get("http://edge/live/seg.ts");
        for (n, v) in headers {
            builder = builder.header(*n, *v);
        }
        builder.body(()).expect("valid request").into_parts().0
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (n, v) in pairs {
            map.append(HeaderName::from_bytes(n.as_bytes()).expect("name"), v.parse().expect("value"));
        }
        map
    }

    fn judge_now(status: u16, pairs: &[(&str, &str)], path: &str) -> Cacheability {
        judge(
            &rules(),
            &request(&[]),
            StatusCode::from_u16(status).expect("status"),
            &headers(pairs),
            path,
            SystemTime::now(),
        )
    }

    #[test]
    fn max_age_and_s_maxage_set_freshness() {
        let v = judge_now(200, &[("cache-control", "max-age=60")], "/a.ts");
        assert!(v.storable);
        assert_eq!(v.fresh_for, Duration::from_secs(60));
        let v = judge_now(200, &[("cache-control", "max-age=60, s-maxage=5")], "/a.ts");
        assert_eq!(v.fresh_for, Duration::from_secs(5));
    }

    #[test]
    fn no_store_and_private_are_not_stored() {
        assert!(!judge_now(200, &[("cache-control", "no-store")], "/a.ts").storable);
        assert!(!judge_now(200, &[("cache-control", "private, max-age=60")], "/a.ts").storable);
    }

    #[test]
    fn authorization_requests_are_stored_only_when_the_response_allows() {
        let rules = rules();
        let authed = request(&[("authorization", "Bearer x")]);
        let plain = headers(&[("cache-control", "max-age=60")]);
        let v = judge(&rules, &authed, StatusCode::OK, &plain, "/a.ts", SystemTime::now());
        assert!(!v.storable);
        let public = headers(&[("cache-control", "public, max-age=60")]);
        let v = judge(&rules, &authed, StatusCode::OK, &public, "/a.ts", SystemTime::now());
        assert!(v.storable);
    }

    #[test]
    fn operator_rules_apply_only_where_the_origin_said_nothing() {
        let v = judge_now(200, &[], "/live/index.m3u8");
        assert_eq!(v.fresh_for, Duration::from_secs(1));
        let v = judge_now(200, &[], "/live/seg1.ts");
        assert_eq!(v.fresh_for, Duration::from_secs(86_400));
        let v = judge_now(200, &[("cache-control", "max-age=7")], "/live/index.m3u8");
        assert_eq!(v.fresh_for, Duration::from_secs(7));
        // No rule, no freshness information and no Last-Modified: stored but stale at once.
        let v = judge_now(200, &[], "/x.bin");
        assert_eq!(v.fresh_for, Duration::ZERO);
        // An operator rule beats the heuristic.
        let v = judge_now(200, &[("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")], "/live/index.m3u8");
        assert_eq!(v.fresh_for, Duration::from_secs(1));
        assert_eq!(v.lifetime_source, LifetimeSource::Operator);
    }

    /// RFC 9111 §4.2.2: 10 % of Date − Last-Modified, capped by `cache.heuristic_max_ttl`, only for
    /// heuristically cacheable statuses (or `public`).
    #[test]
    fn heuristic_freshness_is_a_tenth_of_the_age_of_last_modified() {
        let now = SystemTime::now();
        let date = httpdate::fmt_http_date(now);
        let modified = httpdate::fmt_http_date(now - Duration::from_secs(10_000));
        let v = judge(
            &rules(),
            &request(&[]),
            StatusCode::OK,
            &headers(&[("date", &date), ("last-modified", &modified)]),
            "/x.bin",
            now,
        );
        assert_eq!(v.lifetime, Duration::from_secs(1000));
        assert_eq!(v.lifetime_source, LifetimeSource::Heuristic);
        assert!(v.storable);
        let v = judge_now(200, &[("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")], "/x.bin");
        assert_eq!(v.lifetime, Duration::from_secs(86_400), "capped at heuristic_max_ttl");
        // 500 is not heuristically cacheable: nothing without explicit freshness.
        let v = judge_now(500, &[("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")], "/x.bin");
        assert!(!v.storable);
        let v = judge_now(
            500,
            &[("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"), ("cache-control", "public")],
            "/x.bin",
        );
        assert!(v.storable);
        assert_eq!(v.lifetime, Duration::from_secs(86_400));
    }

    /// RFC 9111 §3: any final status with explicit freshness may be stored.
    #[test]
    fn non_200_statuses_with_explicit_freshness_are_stored() {
        for status in [204, 299, 302, 303, 307, 400, 404, 405, 410, 414, 500, 501, 502, 503, 504, 599] {
            let v = judge_now(status, &[("cache-control", "max-age=60")], "/x");
            assert!(v.storable, "{status}");
            assert_eq!(v.lifetime, Duration::from_secs(60), "{status}");
            let v = judge_now(status, &[("cache-control", "s-maxage=60")], "/x");
            assert!(v.storable, "{status} with s-maxage");
        }
        for status in [206, 304] {
            assert!(!judge_now(status, &[("cache-control", "max-age=60")], "/x").storable, "{status}");
        }
        // Without freshness information, a 500 or a 302 is not stored.
        assert!(!judge_now(500, &[], "/x.ts").storable);
        assert!(!judge_now(302, &[], "/x.ts").storable);
        let expires = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(60));
        assert!(judge_now(503, &[("expires", &expires)], "/x").storable);
    }

    /// RFC 9111 §4.2.3: current_age counts the origin's Age, the apparent age from Date, and the
    /// response delay; a response older than its lifetime is stale on arrival.
    #[test]
    fn age_on_arrival_follows_age_date_and_the_response_delay() {
        let t0 = SystemTime::now();
        let exchange = Exchange { request_time: t0, response_time: t0 + Duration::from_secs(2) };
        let judge_at = |pairs: &[(&str, &str)]| {
            judge_exchange(&rules(), &request(&[]), StatusCode::OK, &headers(pairs), "/a.ts", exchange)
        };
        // Age 7200 + 2 s of response delay.
        let v = judge_at(&[("cache-control", "max-age=10000"), ("age", "7200")]);
        assert_eq!(v.initial_age, Duration::from_secs(7202));
        assert_eq!(v.fresh_for, Duration::from_secs(10000 - 7202));
        // The apparent age from Date wins when it is larger.
        let date = httpdate::fmt_http_date(t0 - Duration::from_secs(100));
        let v = judge_at(&[("cache-control", "max-age=60"), ("age", "10"), ("date", &date)]);
        assert!(v.initial_age >= Duration::from_secs(101), "{:?}", v.initial_age);
        assert_eq!(v.fresh_for, Duration::ZERO, "stale on arrival");
        // Age past 2^31 counts as 2^31: stale.
        let v = judge_at(&[("cache-control", "max-age=60"), ("age", "99999999999")]);
        assert_eq!(v.initial_age, MAX_DELTA);
        assert_eq!(v.fresh_for, Duration::ZERO);
    }

    /// RFC 9111 §5.3: Expires, ignored when max-age or s-maxage is present; invalid means expired.
    #[test]
    fn expires_counts_only_without_max_age_and_invalid_means_expired() {
        let now = SystemTime::now();
        let date = httpdate::fmt_http_date(now);
        let later = httpdate::fmt_http_date(now + Duration::from_secs(300));
        let at =
            |pairs: &[(&str, &str)]| judge(&rules(), &request(&[]), StatusCode::OK, &headers(pairs), "/x.bin", now);
        assert_eq!(at(&[("date", &date), ("expires", &later)]).lifetime, Duration::from_secs(300));
        assert_eq!(
            at(&[("date", &date), ("expires", &later), ("cache-control", "max-age=5")]).lifetime,
            Duration::from_secs(5)
        );
        assert_eq!(
            at(&[("date", &date), ("expires", &later), ("cache-control", "s-maxage=6")]).lifetime,
            Duration::from_secs(6)
        );
        // Doubled space: invalid, so already expired, and the operator's rule does not apply.
        let v = judge(
            &rules(),
            &request(&[]),
            StatusCode::OK,
            &headers(&[("expires", "Thu,  01 Dec 2099 16:00:00 GMT")]),
            "/a.ts",
            now,
        );
        assert_eq!(v.lifetime, Duration::ZERO);
        let asctime = {
            let t = now + Duration::from_secs(600);
            let imf = httpdate::fmt_http_date(t);
            // IMF "Sun, 06 Nov 1994 08:49:37 GMT" -> asctime "Sun Nov  6 08:49:37 1994"
            let parts: Vec<&str> = imf.split(' ').collect();
            format!("{} {} {:>2} {} {}", &parts[0][..3], parts[2], parts[1].trim_start_matches('0'), parts[4], parts[3])
        };
        let v = at(&[("date", &date), ("expires", &asctime)]);
        assert_eq!(v.lifetime, Duration::from_secs(600), "{asctime}");
    }

    /// RFC 9111 §5.2.2.10: s-maxage implies proxy-revalidate; with must-revalidate, proxy-revalidate
    /// and no-cache, nothing stale is served, not even by the operator's stale-if-error default.
    #[test]
    fn revalidation_directives_forbid_serving_stale() {
        for cc in ["max-age=1, must-revalidate", "max-age=1, proxy-revalidate", "s-maxage=1", "no-cache"] {
            let v = judge_now(
                200,
                &[
                    ("cache-control", cc),
                    ("etag", "\"e\""),
                    ("cache-control", "stale-if-error=60, stale-while-revalidate=60"),
                ],
                "/a.ts",
            );
            assert!(v.forbids_stale, "{cc}");
            assert_eq!(v.stale_if_error, Duration::ZERO, "{cc}");
            assert_eq!(v.stale_while_revalidate, Duration::ZERO, "{cc}");
        }
        // no-cache with a validator: stored, revalidated on every use; without one, not worth storing.
        let v = judge_now(200, &[("cache-control", "no-cache"), ("etag", "\"e\"")], "/a.ts");
        assert!(v.storable && v.lifetime == Duration::ZERO);
        assert!(!judge_now(200, &[("cache-control", "no-cache")], "/a.ts").storable);
        // Case does not matter (§5.2).
        assert!(judge_now(200, &[("cache-control", "No-CaChE, MaX-AgE=60"), ("etag", "\"e\"")], "/a.ts").forbids_stale);
    }

    /// RFC 9213: CDN-Cache-Control (and the operator's own field) beats Cache-Control for this cache.
    #[test]
    fn targeted_fields_take_precedence_over_cache_control() {
        let v = judge_now(200, &[("cache-control", "max-age=5"), ("cdn-cache-control", "max-age=600")], "/a");
        assert_eq!(v.lifetime, Duration::from_secs(600));
        let v = judge_now(200, &[("cache-control", "max-age=600"), ("cdn-cache-control", "no-store")], "/a");
        assert!(!v.storable);
        let v = judge_now(200, &[("cache-control", "private"), ("cdn-cache-control", "max-age=60")], "/a");
        assert!(v.storable, "CDN-Cache-Control replaces Cache-Control, private included");
        let v = judge_now(200, &[("cache-control", "max-age=600"), ("cdn-cache-control", "no-cache")], "/a");
        assert_eq!(v.lifetime, Duration::ZERO);
        // An invalid targeted field is ignored as a whole.
        let v = judge_now(200, &[("cache-control", "max-age=5"), ("cdn-cache-control", "max-age=\"600\", ,")], "/a");
        assert_eq!(v.lifetime, Duration::from_secs(5));
        let mut own = rules();
        own.targeted_fields.insert(0, HeaderName::from_static("eddy-cache-control"));
        let v = judge(
            &own,
            &request(&[]),
            StatusCode::OK,
            &headers(&[("cdn-cache-control", "max-age=600"), ("eddy-cache-control", "max-age=30")]),
            "/a",
            SystemTime::now(),
        );
        assert_eq!(v.lifetime, Duration::from_secs(30));
    }

    #[test]
    fn content_type_rules_match_by_prefix() {
        let mut rules = rules();
        rules.ttl_rules = vec![TtlRule {
            suffix: None,
            content_type: Some("video/".into()),
            ttl: HumanDuration(Duration::from_secs(42)),
        }];
        let v = judge(
            &rules,
            &request(&[]),
            StatusCode::OK,
            &headers(&[("content-type", "video/mp2t")]),
            "/seg",
            SystemTime::now(),
        );
        assert_eq!(v.fresh_for, Duration::from_secs(42));
    }

    #[test]
    fn not_found_is_cached_briefly() {
        let v = judge_now(404, &[], "/missing.ts");
        assert!(v.storable);
        assert_eq!(v.fresh_for, Duration::from_secs(10));
        assert!(!judge_now(500, &[], "/x.ts").storable);
        assert!(!judge_now(206, &[("cache-control", "max-age=60")], "/x.ts").storable);
    }

    #[test]
    fn age_from_the_origin_counts_against_freshness() {
        let v = judge_now(200, &[("cache-control", "max-age=60"), ("age", "50")], "/a.ts");
        assert_eq!(v.fresh_for, Duration::from_secs(10));
        assert_eq!(v.initial_age, Duration::from_secs(50));
    }

    #[test]
    fn stale_allowances_come_from_headers_or_defaults() {
        let v = judge_now(200, &[("cache-control", "max-age=1, stale-while-revalidate=30")], "/a.ts");
        assert_eq!(v.stale_while_revalidate, Duration::from_secs(30));
        assert_eq!(v.stale_if_error, Duration::from_secs(86_400));
        let v = judge_now(200, &[("cache-control", "max-age=1, must-revalidate, stale-if-error=60")], "/a.ts");
        assert_eq!(v.stale_if_error, Duration::ZERO);
        assert_eq!(v.stale_while_revalidate, Duration::ZERO);
    }

    #[test]
    fn vary_star_is_never_stored_and_vary_names_are_normalised() {
        assert!(!judge_now(200, &[("cache-control", "max-age=60"), ("vary", "*")], "/a").storable);
        let v = judge_now(200, &[("cache-control", "max-age=60"), ("vary", "Accept-Encoding, origin")], "/a");
        let names: Vec<&str> = v.vary.iter().map(|n| n.as_str()).collect();
        assert_eq!(names, ["accept-encoding", "origin"]);
    }

    fn object(fresh: u64, swr: u64, sie: u64) -> (CachedObject, Instant) {
        let now = Instant::now();
        let cacheability = judge_now(200, &[("cache-control", "max-age=1")], "/a.ts");
        let mut object = CachedObject::new(StatusCode::OK, HeaderMap::new(), Bytes::new(), cacheability, now);
        object.lifetime = Duration::from_secs(fresh);
        object.initial_age = Duration::ZERO;
        object.stale_while_revalidate = Duration::from_secs(swr);
        object.stale_if_error = Duration::from_secs(sie);
        (object, now)
    }

    #[test]
    fn lifecycle_moves_from_fresh_to_background_refresh_to_stale() {
        let (object, t0) = object(10, 5, 100);
        assert_eq!(object.lifecycle(t0 + Duration::from_secs(4)), Lifecycle::Fresh { ttl: Duration::from_secs(6) });
        assert_eq!(
            object.lifecycle(t0 + Duration::from_secs(12)),
            Lifecycle::StaleRevalidateInBackground { stale_for: Duration::from_secs(2) }
        );
        assert_eq!(
            object.lifecycle(t0 + Duration::from_secs(20)),
            Lifecycle::Stale { stale_for: Duration::from_secs(10) }
        );
        assert!(object.usable_on_error(t0 + Duration::from_secs(100)));
        assert!(!object.usable_on_error(t0 + Duration::from_secs(111)));
    }

    /// draft-pantos-hls-rfc8216bis §6.2.5.2: `_HLS_msn` makes a blocking reload; the values are
    /// decimal-integers (RFC 8216 §4.2); everything else in the query is left alone.
    #[test]
    fn delivery_directives_are_read_and_checked() {
        let read = |query: &str| delivery_directives(Some(query));
        assert_eq!(delivery_directives(None), Ok(DeliveryDirectives::default()));
        assert_eq!(read("token=abc&x=1"), Ok(DeliveryDirectives::default()));
        let blocking = read("_HLS_msn=273&_HLS_part=2").expect("valid");
        assert_eq!(blocking, DeliveryDirectives { msn: Some(273), part: Some(2), skip: false });
        assert!(blocking.blocking());
        assert_eq!(
            read("_HLS_skip=YES&_HLS_msn=0").expect("valid"),
            DeliveryDirectives { msn: Some(0), part: None, skip: true }
        );
        // A delta update alone does not block; its value is the origin's to judge (YES, v2, later ones).
        let delta = read("_HLS_skip=v3").expect("valid");
        assert!(delta.skip && !delta.blocking());
        // Percent-encoded names and values are what an origin would decode them to.
        assert_eq!(read("%5FHLS_msn=%37").expect("valid").msn, Some(7));
        // The largest decimal-integer; leading zeros are digits too.
        assert_eq!(read("_HLS_msn=18446744073709551615").expect("valid").msn, Some(u64::MAX));
        assert_eq!(read("_HLS_msn=007").expect("valid").msn, Some(7));
        // Other names, even _HLS_-prefixed ones the edge does not know, and other cases, pass.
        assert_eq!(read("_HLS_report=../a.m3u8&_hls_msn=x").expect("valid"), DeliveryDirectives::default());

        use DirectiveError::*;
        for (query, error) in [
            ("_HLS_msn=abc", NotANumber(HLS_MSN)),
            ("_HLS_msn=", NotANumber(HLS_MSN)),
            ("_HLS_msn", NotANumber(HLS_MSN)),
            ("_HLS_msn=+5", NotANumber(HLS_MSN)),
            ("_HLS_msn=-1", NotANumber(HLS_MSN)),
            ("_HLS_msn=1.5", NotANumber(HLS_MSN)),
            ("_HLS_msn=18446744073709551616", NotANumber(HLS_MSN)),
            ("_HLS_msn=5&_HLS_part=x", NotANumber(HLS_PART)),
            ("_HLS_msn=5&_HLS_msn=6", Repeated(HLS_MSN)),
            ("_HLS_msn=5&%5FHLS_msn=5", Repeated(HLS_MSN)),
            ("_HLS_msn=5&_HLS_part=1&_HLS_part=1", Repeated(HLS_PART)),
            ("_HLS_skip=YES&_HLS_skip=v2", Repeated(HLS_SKIP)),
            ("_HLS_part=1", PartWithoutMsn),
        ] {
            assert_eq!(read(query), Err(error), "{query}");
        }
    }

    #[test]
    fn only_a_blocking_reload_is_never_served_stale() {
        for query in ["_HLS_msn=5", "a=1&_HLS_msn=5&_HLS_part=0", "%5FHLS_msn=5", "_HLS_msn=junk"] {
            assert!(is_blocking_reload(Some(query)), "{query}");
            assert!(!may_serve_stale(Some(query)), "{query}");
        }
        for query in [None, Some(""), Some("_HLS_skip=YES"), Some("x_HLS_msn=5"), Some("_HLS_msnx=5"), Some("a=%5F")] {
            assert!(!is_blocking_reload(query), "{query:?}");
            assert!(may_serve_stale(query), "{query:?}");
        }
        // Within stale-while-revalidate: served in the background for others, revalidated first for it.
        let (object, t0) = object(10, 5, 100);
        let now = t0 + Duration::from_secs(12);
        let stale_for = Duration::from_secs(2);
        assert_eq!(object.lifecycle_for(now, true), Lifecycle::StaleRevalidateInBackground { stale_for });
        assert_eq!(object.lifecycle_for(now, false), Lifecycle::Stale { stale_for });
        // A fresh copy is fresh for both.
        let ttl = Duration::from_secs(6);
        assert_eq!(object.lifecycle_for(t0 + Duration::from_secs(4), false), Lifecycle::Fresh { ttl });
    }

    #[test]
    fn a_matching_304_refreshes_headers_and_freshness() {
        let rules = rules();
        let req = request(&[]);
        let stored_headers = headers(&[("cache-control", "max-age=1"), ("etag", "\"v1\""), ("x-old", "1")]);
        let cacheability = judge(&rules, &req, StatusCode::OK, &stored_headers, "/a.ts", SystemTime::now());
        let object = CachedObject::new(
            StatusCode::OK,
            stored_headers,
            Bytes::from_static(b"body"),
            cacheability,
            Instant::now(),
        );
        let not_modified = headers(&[("cache-control", "max-age=30"), ("etag", "\"v1\"")]);
        let refreshed = object
            .refreshed(&rules, &req, &not_modified, "/a.ts", Exchange::at(SystemTime::now()), Instant::now())
            .expect("validators match");
        assert_eq!(refreshed.lifetime, Duration::from_secs(30));
        assert_eq!(refreshed.body, Bytes::from_static(b"body"));
        assert_eq!(refreshed.headers.get("x-old").map(|v| v.as_bytes()), Some(&b"1"[..]));

        let other = headers(&[("cache-control", "max-age=30"), ("etag", "\"v2\"")]);
        assert!(object
            .refreshed(&rules, &req, &other, "/a.ts", Exchange::at(SystemTime::now()), Instant::now())
            .is_none());
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h =
            headers(&[("connection", "close, x-private"), ("x-private", "1"), ("keep-alive", "5"), ("etag", "\"a\"")]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("etag"));
    }

    /// RFC 9111 §1.2.2: delta-seconds past 2^31 count as 2^31; nothing overflows (the panics in
    /// `keep_for` and `age` that wedged a URL).
    #[test]
    fn huge_delta_seconds_saturate_instead_of_overflowing() {
        assert_eq!(delta_seconds("18446744073709551615"), Some(MAX_DELTA));
        assert_eq!(delta_seconds("99999999999999999999999999"), Some(MAX_DELTA));
        assert_eq!(delta_seconds("-1"), None);
        assert_eq!(delta_seconds("1e3"), None);
        let v = judge_now(200, &[("cache-control", "max-age=60, stale-if-error=18446744073709551615")], "/a.ts");
        assert_eq!(v.stale_if_error, MAX_DELTA);
        let object = CachedObject::new(StatusCode::OK, HeaderMap::new(), Bytes::new(), v, Instant::now());
        assert!(object.keep_for() >= MAX_DELTA);

        let v = judge_now(
            200,
            &[
                ("cache-control", "max-age=60, stale-while-revalidate=18446744073709551615"),
                ("age", "18446744073709551615"),
            ],
            "/a.ts",
        );
        let now = Instant::now();
        let mut object = CachedObject::new(StatusCode::OK, HeaderMap::new(), Bytes::new(), v, now);
        object.initial_age = Duration::MAX;
        assert_eq!(object.age(now + Duration::from_secs(5)), Duration::MAX);
        let _ = object.lifecycle(now + Duration::from_secs(5));
        let _ = object.keep_for();
    }

    #[test]
    fn set_cookie_responses_are_not_stored_unless_stripped() {
        let v = judge_now(200, &[("cache-control", "max-age=60"), ("set-cookie", "session=A")], "/a.ts");
        assert!(v.sets_cookie);
        assert!(!v.storable);
        let mut rules = rules();
        rules.set_cookie = SetCookie::Strip;
        let v = judge(
            &rules,
            &request(&[]),
            StatusCode::OK,
            &headers(&[("cache-control", "max-age=60"), ("set-cookie", "session=A")]),
            "/a.ts",
            SystemTime::now(),
        );
        assert!(v.storable && v.sets_cookie);
        assert_eq!(v.fresh_for, Duration::from_secs(60));
    }

    fn header_text() -> impl proptest::strategy::Strategy<Value = String> {
        // Directive names, numbers at and past every limit, separators, quotes, dates and junk.
        proptest::string::string_regex(
            "((max-age|s-maxage|MaX-AgE|no-cache|No-CaChE|no-store|private|public|must-revalidate|\
stale-while-revalidate|stale-if-error|immutable|x)(=(0|1|60|2147483648|18446744073709551615|\
99999999999999999999|-1|\"7\"|))?|Mon, 01 Jan 2024 00:00:00 GMT|[ ,;=\"a-z0-9*]{0,6}){0,4}",
        )
        .expect("regex")
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, failure_persistence: None, ..Default::default() })]
        /// Whatever an origin sends in Cache-Control, Age, Expires, Date and Vary: no panic, every
        /// duration within 2^31 s, and a stored object's lifecycle and age computable at any later time.
        #[test]
        fn judging_any_freshness_headers_never_panics_and_stays_bounded(
            cache_control in header_text(), age in header_text(), expires in header_text(), vary in header_text(),
            date in header_text(), later in 0u64..=u64::MAX,
        ) {
            let mut pairs: Vec<(&str, &str)> = vec![("cache-control", &cache_control), ("vary", &vary)];
            for (name, value) in [("age", &age), ("expires", &expires), ("date", &date)] {
                if !value.is_empty() {
                    pairs.push((name, value));
                }
            }
            let mut map = HeaderMap::new();
            for (n, v) in &pairs {
                if let Ok(value) = HeaderValue::from_str(v) {
                    map.append(HeaderName::from_bytes(n.as_bytes()).expect("name"), value);
                }
            }
            let cacheability = judge(&rules(), &request(&[]), StatusCode::OK, &map, "/a.ts", SystemTime::now());
            proptest::prop_assert!(cacheability.fresh_for <= MAX_DELTA);
            proptest::prop_assert!(cacheability.initial_age <= MAX_DELTA);
            proptest::prop_assert!(cacheability.stale_if_error <= MAX_DELTA && cacheability.stale_while_revalidate <= MAX_DELTA);
            proptest::prop_assert!(cacheability.vary.windows(2).all(|w| w[0].as_str() < w[1].as_str()));
            let now = Instant::now();
            let object = CachedObject::new(StatusCode::OK, map, Bytes::new(), cacheability, now);
            let then = now.checked_add(Duration::from_secs(later % (1 << 40))).unwrap_or(now);
            let _ = object.lifecycle(then);
            let _ = object.usable_on_error(then);
            let _ = object.age(then);
            proptest::prop_assert!(object.keep_for() <= MAX_DELTA * 3);
        }
    }
}
