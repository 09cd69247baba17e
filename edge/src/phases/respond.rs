//! The last phase: turning a stored object or a flight into the client's response, and the headers every
//! response carries (`Age`, `Cache-Status` per RFC 9211, `X-Cache`, CORS).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};

use super::range::{self, RangeAnswer};
use crate::body::EdgeBody;
use crate::cache::CachedObject;

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

pub static X_CACHE: HeaderName = HeaderName::from_static("x-cache");
pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
const CACHE_STATUS_PREFIX: &str = "eddy; ";

/// A response on its way out, with what the request path learnt about it.
pub struct Outcome {
    pub response: Response<EdgeBody>,
    pub result: CacheResult,
    /// The RFC 9211 parameters after `eddy; ` (e.g. `hit; ttl=30`).
    pub cache_status: String,
    /// The body was served by the cache (hit, stale, revalidated, or a coalesced follower).
    pub from_cache: bool,
    /// Whether the response will be recorded as `coalesced` (joined someone else's fetch).
    pub coalesced: bool,
    /// What went wrong, for the log line only: clients see a generic reason and the request id, never
    /// origin addresses or error chains.
    pub detail: Option<String>,
}

impl Outcome {
    pub fn local(status: StatusCode, message: &str) -> Outcome {
        let mut response = Response::new(EdgeBody::full(Bytes::from(format!("{message}\n"))));
        *response.status_mut() = status;
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        Outcome {
            response,
            result: CacheResult::Local,
            cache_status: "fwd=request".into(),
            from_cache: false,
            coalesced: false,
            detail: None,
        }
    }

    /// An error the edge answers itself when an origin failed: the client reads `public` (and finds
    /// the request id in `X-Request-Id`); `detail` goes to the log line with the same id.
    pub fn error(status: StatusCode, public: &str, detail: impl Into<String>) -> Outcome {
        let mut outcome = Outcome::local(status, public);
        outcome.detail = Some(detail.into());
        outcome
    }

    /// An answer from the cache or an origin, with how the cache took part.
    pub fn served(
        response: Response<EdgeBody>,
        result: CacheResult,
        cache_status: impl Into<String>,
        from_cache: bool,
    ) -> Outcome {
        Outcome { response, result, cache_status: cache_status.into(), from_cache, coalesced: false, detail: None }
    }
}

/// Answers a GET/HEAD from a stored object: 304 for a matching conditional request, 206/416 for a
/// range, otherwise the whole object. The body is the cache's own `Bytes` (no copy).
pub fn from_object(object: &CachedObject, method: &Method, request: &HeaderMap, now: Instant) -> Response<EdgeBody> {
    let mut headers = response_headers(&object.headers);
    set_age(&mut headers, object.age(now));
    if object.status == StatusCode::OK && client_has_current_copy(request, &object.headers) {
        return response(StatusCode::NOT_MODIFIED, strip_for_304(headers), EdgeBody::empty());
    }
    let length = object.body.len() as u64;
    let etag = object.headers.get(header::ETAG).and_then(|v| v.to_str().ok());
    let answer =
        if object.status == StatusCode::OK { range::answer(request, length, etag) } else { RangeAnswer::Whole };
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let (status, body) = match answer {
        RangeAnswer::Whole => {
            // The origin's Content-Length usually is the stored length already: keep it (no allocation).
            let stored_length = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if stored_length != Some(length) {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
            }
            (object.status, object.body.clone())
        }
        RangeAnswer::Partial { start, end } => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start + 1));
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{length}")) {
                headers.insert(header::CONTENT_RANGE, v);
            }
            (StatusCode::PARTIAL_CONTENT, object.body.slice(start as usize..=end as usize))
        }
        RangeAnswer::Unsatisfiable => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{length}")) {
                headers.insert(header::CONTENT_RANGE, v);
            }
            (StatusCode::RANGE_NOT_SATISFIABLE, Bytes::new())
        }
    };
    let body = if *method == Method::HEAD { EdgeBody::empty() } else { EdgeBody::full(body) };
    response(status, headers, body)
}

/// RFC 9110 §13.1: does the client's conditional GET name the representation we hold?
pub fn client_has_current_copy(request: &HeaderMap, stored: &HeaderMap) -> bool {
    if let Some(tags) = request.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        let Some(etag) = stored.get(header::ETAG).and_then(|v| v.to_str().ok()) else { return false };
        let etag = etag.trim_start_matches("W/");
        return tags.split(',').map(str::trim).any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag);
    }
    let since = request
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    let modified =
        stored.get(header::LAST_MODIFIED).and_then(|v| v.to_str().ok()).and_then(|v| httpdate::parse_http_date(v).ok());
    matches!((since, modified), (Some(since), Some(modified)) if modified <= since)
}

/// A 304 carries the validators and caching headers, not the body's description.
fn strip_for_304(mut headers: HeaderMap) -> HeaderMap {
    for name in [header::CONTENT_LENGTH, header::CONTENT_TYPE, header::CONTENT_RANGE, header::CONTENT_ENCODING] {
        headers.remove(name);
    }
    headers
}

/// Headers added to a stored object's own on the way out (Age, Accept-Ranges, Content-Length, X-Cache,
/// Cache-Status, two CORS headers), reserved up front so that building a hit's headers never regrows.
const ADDED_HEADERS: usize = 8;

/// A copy of a stored object's headers with room for those every response adds. (`HeaderMap::clone`
/// keeps the stored map's exact size, so the first insert would reallocate and rehash.)
fn response_headers(stored: &HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(stored.len() + ADDED_HEADERS);
    for (name, value) in stored {
        headers.append(name.clone(), value.clone());
    }
    headers
}

/// Ages below this are served from a table of static values (no allocation per response).
const TABULATED_AGES: u64 = 4096;

fn age_value(seconds: u64) -> HeaderValue {
    static AGES: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    if seconds >= TABULATED_AGES {
        return HeaderValue::from(seconds);
    }
    let ages = AGES.get_or_init(|| {
        // Leaked once: 4096 short strings, so that every clone is a static reference, not a refcount.
        (0..TABULATED_AGES).map(|age| HeaderValue::from_static(Box::leak(age.to_string().into_boxed_str()))).collect()
    });
    ages[seconds as usize].clone()
}

pub fn set_age(headers: &mut HeaderMap, age: Duration) {
    headers.insert(header::AGE, age_value(age.as_secs()));
}

pub fn response(status: StatusCode, headers: HeaderMap, body: EdgeBody) -> Response<EdgeBody> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// Headers every response gets on its way out.
pub fn finish_headers(outcome: &mut Outcome, cors_allow_origin: Option<&HeaderValue>) {
    let headers = outcome.response.headers_mut();
    headers.insert(X_CACHE.clone(), HeaderValue::from_static(outcome.result.as_str()));
    // Built in one buffer that becomes the header value without another copy.
    let mut cache_status = BytesMut::with_capacity(CACHE_STATUS_PREFIX.len() + outcome.cache_status.len());
    cache_status.put_slice(CACHE_STATUS_PREFIX.as_bytes());
    cache_status.put_slice(outcome.cache_status.as_bytes());
    if let Ok(value) = HeaderValue::from_maybe_shared(cache_status.freeze()) {
        headers.insert(CACHE_STATUS.clone(), value);
    }
    if let Some(origin) = cors_allow_origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(
                "Age, Cache-Status, X-Cache, Content-Length, Content-Range, ETag, Retry-After, RateLimit, RateLimit-Policy, X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset",
            ),
        );
    }
}

/// Answer to a CORS preflight, so that browser players may use the edge.
pub fn preflight(request: &HeaderMap, cors_allow_origin: Option<&HeaderValue>) -> Outcome {
    let mut outcome = Outcome::local(StatusCode::NO_CONTENT, "");
    outcome.response = response(StatusCode::NO_CONTENT, HeaderMap::new(), EdgeBody::empty());
    let headers = outcome.response.headers_mut();
    if cors_allow_origin.is_some() {
        headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, HEAD, OPTIONS"));
        if let Some(asked) = request.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
        }
        headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::policy::{judge, CacheRules};
    use crate::config::CacheConfig;
    use std::time::SystemTime;

    fn object(body: &'static [u8]) -> CachedObject {
        let rules = CacheRules::from_config(&CacheConfig::default());
        let request = http::Request::get("http://h/a").body(()).expect("request").into_parts().0;
        let mut headers = HeaderMap::new();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=60"));
        headers.insert(header::ETAG, HeaderValue::from_static("\"v1\""));
        headers.insert(header::LAST_MODIFIED, HeaderValue::from_static("Mon, 01 Jan 2024 00:00:00 GMT"));
        let verdict = judge(&rules, &request, StatusCode::OK, &headers, "/a", SystemTime::now());
        CachedObject::from_verdict(StatusCode::OK, headers, Bytes::from_static(body), verdict, Instant::now())
    }

    fn request(pairs: &[(HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (n, v) in pairs {
            map.insert(n.clone(), v.parse().expect("value"));
        }
        map
    }

    #[test]
    fn conditional_requests_get_304() {
        let object = object(b"0123456789");
        let now = Instant::now();
        let r = from_object(&object, &Method::GET, &request(&[(header::IF_NONE_MATCH, "\"v1\"")]), now);
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        assert!(!r.headers().contains_key(header::CONTENT_LENGTH));
        let r = from_object(&object, &Method::GET, &request(&[(header::IF_NONE_MATCH, "\"v0\"")]), now);
        assert_eq!(r.status(), StatusCode::OK);
        let r = from_object(
            &object,
            &Method::GET,
            &request(&[(header::IF_MODIFIED_SINCE, "Tue, 02 Jan 2024 00:00:00 GMT")]),
            now,
        );
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    }

    #[test]
    fn ranges_are_cut_from_the_whole_object() {
        let object = object(b"0123456789");
        let r = from_object(&object, &Method::GET, &request(&[(header::RANGE, "bytes=2-4")]), Instant::now());
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(r.headers()[header::CONTENT_RANGE], "bytes 2-4/10");
        assert_eq!(r.headers()[header::CONTENT_LENGTH], "3");
        let r = from_object(&object, &Method::GET, &request(&[(header::RANGE, "bytes=20-")]), Instant::now());
        assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(r.headers()[header::CONTENT_RANGE], "bytes */10");
    }

    #[test]
    fn tabulated_ages_read_like_computed_ones() {
        for age in [0, 1, 59, TABULATED_AGES - 1, TABULATED_AGES, 86_400] {
            assert_eq!(age_value(age), HeaderValue::from(age), "age {age}");
        }
    }

    #[test]
    fn hit_headers_keep_every_stored_value_and_fix_a_wrong_length() {
        let mut stored = object(b"0123456789");
        stored.headers.append(header::VARY, HeaderValue::from_static("accept-encoding"));
        stored.headers.append(header::VARY, HeaderValue::from_static("origin"));
        stored.headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        let r = from_object(&stored, &Method::GET, &HeaderMap::new(), Instant::now());
        let vary: Vec<_> = r.headers().get_all(header::VARY).iter().collect();
        assert_eq!(vary, ["accept-encoding", "origin"]);
        assert_eq!(r.headers()[header::CONTENT_LENGTH], "10");
        assert_eq!(r.headers()[header::ETAG], "\"v1\"");
        let mut outcome = Outcome::served(r, CacheResult::Hit, "hit; ttl=60", true);
        finish_headers(&mut outcome, Some(&HeaderValue::from_static("*")));
        assert_eq!(outcome.response.headers()[&CACHE_STATUS], "eddy; hit; ttl=60");
        assert_eq!(outcome.response.headers()[&X_CACHE], "HIT");
        assert_eq!(outcome.response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    }

    #[test]
    fn head_has_length_but_no_body() {
        use hyper::body::Body;
        let object = object(b"0123456789");
        let r = from_object(&object, &Method::HEAD, &HeaderMap::new(), Instant::now());
        assert_eq!(r.headers()[header::CONTENT_LENGTH], "10");
        assert!(r.body().is_end_stream());
        assert!(r.headers().contains_key(header::AGE));
    }
}
