//! The request's path through the edge, one module per phase. `handle` runs them, and its order is the
//! one that counts:
//!
//! - identify (`crate::identity`): who is the client? (Computed for every request, refused ones too:
//!   the access log records it.)
//! - `route`: is this a request we serve (host, target form, path)? The edge is never an open proxy.
//! - `limit`: the rate limit (decided by `crate::ratelimit`), before any cache lookup so that hits
//!   cannot bypass it.
//! - `lookup`: the cache lookup and the hit / stale / miss decision.
//! - `fetch`: a miss or revalidation, coalesced so the origin sees each object once.
//!   `pass`: methods that are not cached go straight to the origin.
//! - `respond`: the response and the headers every response carries.
//!
//! Access logging and metrics wrap the whole path (`handle`).

pub mod fetch;
pub mod limit;
pub mod lookup;
pub mod origin_request;
pub mod pass;
pub mod range;
pub mod respond;
pub mod route;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::body::{BodyError, EdgeBody};
use crate::cache::coalesce::Flights;
use crate::cache::policy::CacheRules;
use crate::cache::{CacheKey, Storage};
use crate::config::Config;
use crate::identity::{ClientId, IdentityRules};
use crate::metrics::{CacheGauges, CacheResult, Metrics};
use crate::origin::OriginSet;
use crate::ratelimit::RateLimiter;
use respond::Outcome;

/// Everything the request path shares: configuration, cache, flights, origins, metrics.
pub struct Edge {
    pub config: Config,
    pub rules: CacheRules,
    pub storage: Storage,
    pub flights: Flights,
    pub origins: OriginSet,
    pub metrics: Metrics,
    pub cors_allow_origin: Option<HeaderValue>,
    pub ratelimit: RateLimiter,
    /// How clients are identified (`rate_limit.identify`), for the limits and the access log.
    pub identity: IdentityRules,
    /// `origin.forward_request_headers`, parsed once.
    pub forwarded_request_headers: Vec<HeaderName>,
    /// Test-only fault injection: a fill for exactly this path panics mid-body. Set from the
    /// `EDDY_TEST_PANIC_IN_FILL` environment variable, which nothing but the tests sets; it proves that
    /// a fill that fails in any way releases its flight.
    pub panic_in_fill_path: Option<String>,
    request_ids: RequestIds,
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

    fn next(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut text = [0u8; 24];
        let len = {
            use std::io::Write;
            let mut cursor = std::io::Cursor::new(&mut text[..]);
            let _ = write!(cursor, "{:08x}{:012x}", self.prefix, n & 0xffff_ffff_ffff);
            cursor.position() as usize
        };
        HeaderValue::from_bytes(&text[..len]).unwrap_or_else(|_| HeaderValue::from_static("0"))
    }
}

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

impl Edge {
    pub fn new(config: Config) -> Result<Edge, crate::origin::OriginError> {
        let origins = OriginSet::new(&config.origins, &config.origin)?;
        let storage = Storage::new(config.cache.size.0, config.cache.eviction);
        let cors_allow_origin = if config.headers.cors_allow_origin.is_empty() {
            None
        } else {
            HeaderValue::from_str(&config.headers.cors_allow_origin).ok()
        };
        let metrics = Metrics::new();
        metrics.set_rate_limit_enabled(config.rate_limit.enabled);
        // Names were checked when the config was validated.
        let forwarded_request_headers = config
            .origin
            .forward_request_headers
            .iter()
            .filter_map(|name| HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).ok())
            .collect();
        Ok(Edge {
            rules: CacheRules::from_config(&config.cache),
            storage,
            flights: Flights::new(config.cache.fill_memory.0),
            origins,
            metrics,
            ratelimit: RateLimiter::new(&config.rate_limit),
            identity: IdentityRules::from_config(&config.rate_limit),
            cors_allow_origin,
            forwarded_request_headers,
            panic_in_fill_path: std::env::var("EDDY_TEST_PANIC_IN_FILL").ok().filter(|p| !p.is_empty()),
            request_ids: RequestIds::new(),
            config,
        })
    }

    /// The primary cache key of a request for `host`, `path` and `query`: the one place keys are built
    /// from requests (lookups, invalidations, purges), so that they always agree.
    pub fn cache_key(&self, host: &str, path: &str, query: Option<&str>) -> CacheKey {
        CacheKey::primary(host, path, query, &self.config.cache.ignore_query_params)
    }

    pub fn gauges(&self) -> CacheGauges {
        CacheGauges {
            entries: self.storage.entry_count(),
            bytes: self.storage.weighted_bytes(),
            capacity: self.config.cache.size.0,
            evictions: self.storage.evictions(),
            in_flight: self.flights.in_flight() as u64,
            origin_retries: self.origins.retried_requests(),
        }
    }
}

/// Serves one request. Never fails: every problem becomes an HTTP answer.
pub async fn handle(
    edge: Arc<Edge>,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<LoggedBody>, Infallible> {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    // Also when limiting is off: the access log records who asked.
    let client = ClientId::of(&edge.identity, &parts.headers, peer);
    let mut outcome = match route::accept(&parts, &edge.config.server_names) {
        Err((status, reason)) => {
            let mut refused = Outcome::local(status, &reason);
            if parts.version <= http::Version::HTTP_11 {
                // A request we could not accept may have left unread bytes behind (a body on a GET):
                // close rather than read them as a next request.
                refused.response.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
            refused
        }
        // Rate limit before the cache lookup, so that hits cannot bypass it.
        Ok(target) => match limit::admit(&edge, &client).await {
            Err(refusal) => *refusal,
            Ok(quota) => {
                let mut outcome = if parts.method == Method::OPTIONS
                    && parts.headers.contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
                {
                    respond::preflight(&parts.headers, edge.cors_allow_origin.as_ref())
                } else if parts.method == Method::GET || parts.method == Method::HEAD {
                    lookup::serve(&edge, &parts, &target, peer).await
                } else {
                    pass::forward(&edge, &parts, body, &target, peer).await
                };
                if let Some(quota) = quota {
                    quota.apply(outcome.response.headers_mut());
                }
                outcome
            }
        },
    };
    respond::finish_headers(&mut outcome, edge.cors_allow_origin.as_ref());
    let request_id = edge.request_ids.next();
    outcome.response.headers_mut().insert(X_REQUEST_ID.clone(), request_id.clone());
    let status = outcome.response.status().as_u16();
    edge.metrics.record_response(status, outcome.result);
    if outcome.coalesced {
        edge.metrics.record_coalesced();
    }
    let (response_parts, body) = outcome.response.into_parts();
    let log = AccessLog {
        edge: edge.clone(),
        method: parts.method,
        // The Uri is reference-counted inside: cloning it is cheaper than formatting a String per request.
        uri: parts.uri.clone(),
        status,
        result: outcome.result,
        client,
        request_id,
        detail: outcome.detail.take(),
        from_cache: outcome.from_cache,
        started,
        bytes: 0,
        complete: body.is_end_stream(),
        expected_bytes: response_parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()),
    };
    Ok(Response::from_parts(response_parts, LoggedBody { inner: body, log }))
}

/// The access-log line and the served-bytes count of one response, written when its body is done (or
/// dropped, when the client went away).
struct AccessLog {
    edge: Arc<Edge>,
    method: Method,
    uri: http::Uri,
    status: u16,
    result: CacheResult,
    client: ClientId,
    /// Also in the response's X-Request-Id, so that a client's report finds this line.
    request_id: HeaderValue,
    /// What went wrong, when something did (never shown to the client).
    detail: Option<String>,
    from_cache: bool,
    started: Instant,
    bytes: u64,
    complete: bool,
    /// Content-Length, when known: hyper stops polling a body once that many bytes are out.
    expected_bytes: Option<u64>,
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        if self.from_cache {
            self.edge.metrics.record_bytes_from_cache(self.bytes);
        }
        tracing::info!(
            target: "access",
            method = %self.method,
            path = %self.uri.path_and_query().map_or("", |p| p.as_str()),
            status = self.status,
            cache = self.result.as_str(),
            bytes = self.bytes,
            duration_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            client = %self.client,
            complete = self.complete || self.expected_bytes == Some(self.bytes),
            request_id = self.request_id.to_str().unwrap_or(""),
            detail = self.detail.as_deref(),
        );
    }
}

/// A response body that counts what it sends and logs the request once it is finished.
pub struct LoggedBody {
    inner: EdgeBody,
    log: AccessLog,
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.log.bytes += data.len() as u64;
                }
                // hyper stops polling once the body says it has ended, so note it here.
                this.log.complete = this.inner.is_end_stream();
            }
            Poll::Ready(None) => this.log.complete = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
