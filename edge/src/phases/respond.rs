//! Turning a stored object or a flight into the client's response, and the headers every
//! response carries (`Age`, `Cache-Status` per RFC 9211, `X-Cache`, CORS).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};

use super::range::{self, RangeAnswer};
use crate::body::EdgeBody;
use crate::cache::CachedObject;
use crate::metrics::CacheResult;

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

    /// The answer when an origin could not be used: 504 when it timed out, 502 otherwise, with a
    /// generic reason for the client and the details for the log.
    pub fn origin_failed(timed_out: bool, detail: impl Into<String>) -> Outcome {
        if timed_out {
            Outcome::error(StatusCode::GATEWAY_TIMEOUT, "origin timed out", detail)
        } else {
            Outcome::error(StatusCode::BAD_GATEWAY, "origin unreachable or failed", detail)
        }
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

    /// A hit: `object` is fresh for `ttl` more.
    pub fn hit(object: &CachedObject, parts: &http::request::Parts, now: Instant, ttl: Duration) -> Outcome {
        Outcome::served(
            from_object(object, &parts.method, &parts.headers, now),
            CacheResult::Hit,
            format!("hit; ttl={}", ttl.as_secs()),
            true,
        )
    }
}

/// Answers a GET/HEAD from a stored object: 304 for a matching conditional request, 206/416 for a
/// range, otherwise the whole object. The body is the cache's own `Bytes` (no copy).
pub fn from_object(object: &CachedObject, method: &Method, request: &HeaderMap, now: Instant) -> Response<EdgeBody> {
    let mut headers = response_headers(&object.headers);
    set_age(&mut headers, object.age(now));
    match preconditions(request, method, object.status, &object.headers) {
        Precondition::Proceed => {}
        Precondition::NotModified => {
            return response(StatusCode::NOT_MODIFIED, strip_for_304(headers), EdgeBody::empty())
        }
        Precondition::Failed => return precondition_failed(headers),
    }
    whole_or_range(object.status, headers, object.body.clone(), request, method)
}

/// The answer built from a whole body in hand: 206 or 416 for a single byte range of a 200 (RFC 9110
/// §14), the whole body otherwise; no body for HEAD. Used for hits and for ranges cut from a body fetched
/// whole.
pub fn whole_or_range(
    status: StatusCode,
    mut headers: HeaderMap,
    body: Bytes,
    request: &HeaderMap,
    method: &Method,
) -> Response<EdgeBody> {
    let length = body.len() as u64;
    let answer = if status == StatusCode::OK {
        let etag = headers.get(header::ETAG).and_then(|v| v.to_str().ok());
        range::answer(request, length, etag)
    } else {
        RangeAnswer::Whole
    };
    let status = range_head(status, answer, length, &mut headers);
    let body = match answer {
        RangeAnswer::Whole => body,
        RangeAnswer::Partial { start, end } => body.slice(start as usize..=end as usize),
        RangeAnswer::Unsatisfiable => Bytes::new(),
    };
    let body = if *method == Method::HEAD { EdgeBody::empty() } else { EdgeBody::full(body) };
    response(status, headers, body)
}

/// The head of an answer of `status` with a body of `length` bytes, for the part of it `answer` names:
/// Accept-Ranges, the Content-Length of what is sent and, for 206 and 416, Content-Range (RFC 9110 §14).
/// Returns the status to send. The one place 206 and 416 are built, whether the body is in hand or
/// still streaming from the origin; the caller sends the bytes `answer` names.
pub fn range_head(status: StatusCode, answer: RangeAnswer, length: u64, headers: &mut HeaderMap) -> StatusCode {
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    match answer {
        RangeAnswer::Whole => {
            // The origin's Content-Length usually is the length already: keep it (no allocation).
            let stored_length = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if stored_length != Some(length) {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
            }
            status
        }
        RangeAnswer::Partial { start, end } => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start + 1));
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{length}")) {
                headers.insert(header::CONTENT_RANGE, v);
            }
            StatusCode::PARTIAL_CONTENT
        }
        RangeAnswer::Unsatisfiable => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{length}")) {
                headers.insert(header::CONTENT_RANGE, v);
            }
            StatusCode::RANGE_NOT_SATISFIABLE
        }
    }
}

/// What the client's preconditions (RFC 9110 §13) make of an answer the cache could give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// No precondition, or all of them hold: answer normally.
    Proceed,
    /// 304: the client's copy is current (If-None-Match, If-Modified-Since).
    NotModified,
    /// 412: a state-changing precondition failed (If-Match, If-Unmodified-Since).
    Failed,
}

/// Evaluates the request's preconditions against a response of `status` with `stored` headers, in the
/// order RFC 9110 §13.2.2 prescribes. Preconditions apply only to answers that would be 2xx
/// (§13.2.1). If-Modified-Since is compared with Last-Modified or, lacking it, with the response's
/// Date (RFC 9111 §4.3.2).
pub fn preconditions(request: &HeaderMap, method: &Method, status: StatusCode, stored: &HeaderMap) -> Precondition {
    if !status.is_success() {
        return Precondition::Proceed;
    }
    // Most requests are unconditional: answer them before reading (and parsing dates of) the stored
    // head. Parsing Last-Modified on every hit was 3 % of a small hit's CPU.
    const CONDITIONS: [header::HeaderName; 4] =
        [header::IF_MATCH, header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE, header::IF_UNMODIFIED_SINCE];
    if !CONDITIONS.iter().any(|name| request.contains_key(name)) {
        return Precondition::Proceed;
    }
    let etag = stored.get(header::ETAG).and_then(|v| v.to_str().ok());
    let date_of = |name: header::HeaderName| {
        stored.get(name).and_then(|v| v.to_str().ok()).and_then(crate::cache::directives::http_date)
    };
    let last_modified = || date_of(header::LAST_MODIFIED);
    let request_date = |name: header::HeaderName| {
        request.get(name).and_then(|v| v.to_str().ok()).and_then(crate::cache::directives::http_date)
    };
    if let Some(condition) = request.get(header::IF_MATCH).and_then(|v| v.to_str().ok()) {
        // §13.1.1: strong comparison.
        if !etag_list_matches(condition, etag, true) {
            return Precondition::Failed;
        }
    } else if let Some(since) = request_date(header::IF_UNMODIFIED_SINCE) {
        if last_modified().is_some_and(|modified| modified > since) {
            return Precondition::Failed;
        }
    }
    let safe = *method == Method::GET || *method == Method::HEAD;
    if let Some(condition) = request.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        // §13.1.2: weak comparison.
        if etag_list_matches(condition, etag, false) {
            return if safe { Precondition::NotModified } else { Precondition::Failed };
        }
    } else if safe {
        if let Some(since) = request_date(header::IF_MODIFIED_SINCE) {
            if last_modified().or_else(|| date_of(header::DATE)).is_some_and(|modified| modified <= since) {
                return Precondition::NotModified;
            }
        }
    }
    Precondition::Proceed
}

/// Does `list` (`*` or entity-tags, RFC 9110 §8.8.3) name `etag`? Weak comparison ignores `W/`;
/// strong comparison needs both tags strong and equal.
fn etag_list_matches(list: &str, etag: Option<&str>, strong: bool) -> bool {
    if list.trim() == "*" {
        return true;
    }
    let Some(etag) = etag else { return false };
    let (etag_weak, etag_opaque) = split_etag(etag.trim());
    if strong && etag_weak {
        return false;
    }
    entity_tags(list).any(|(weak, opaque)| opaque == etag_opaque && !(strong && weak))
}

fn split_etag(tag: &str) -> (bool, &str) {
    match tag.strip_prefix("W/") {
        Some(rest) => (true, rest),
        None => (false, tag),
    }
}

/// The entity-tags of a list, each as (weak, opaque-tag with its quotes); commas inside quotes are
/// part of a tag.
fn entity_tags(list: &str) -> impl Iterator<Item = (bool, &str)> {
    let mut rest = list;
    std::iter::from_fn(move || loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return None;
        }
        let (weak, tail) = split_etag(rest);
        if !tail.starts_with('"') {
            // Not an entity-tag: skip to the next comma.
            rest = tail.split_once(',').map_or("", |(_, r)| r);
            continue;
        }
        let end = tail[1..].find('"').map(|i| i + 2).unwrap_or(tail.len());
        let (tag, after) = tail.split_at(end);
        rest = after;
        return Some((weak, tag));
    })
}

/// 412: the validators stay, the body's description goes.
pub fn precondition_failed(headers: HeaderMap) -> Response<EdgeBody> {
    let mut headers = strip_for_304(headers);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    response(StatusCode::PRECONDITION_FAILED, headers, EdgeBody::empty())
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
        let cacheability = judge(&rules, &request, StatusCode::OK, &headers, "/a", SystemTime::now());
        CachedObject::new(StatusCode::OK, headers, Bytes::from_static(body), cacheability, Instant::now())
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

    fn stored(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (n, v) in pairs {
            map.insert(HeaderName::from_bytes(n.as_bytes()).expect("name"), v.parse().expect("value"));
        }
        map
    }

    /// RFC 9110 §13.1.2: If-None-Match uses the weak comparison, and lists may hold several tags.
    #[test]
    fn if_none_match_compares_weakly() {
        let ok = StatusCode::OK;
        let weak = stored(&[("etag", "W/\"v1\"")]);
        let strong = stored(&[("etag", "\"v1\"")]);
        for (request, headers) in
            [("\"v1\"", &weak), ("W/\"v1\"", &strong), ("\"x\", W/\"v1\"", &strong), ("*", &strong)]
        {
            let r = stored(&[("if-none-match", request)]);
            assert_eq!(preconditions(&r, &Method::GET, ok, headers), Precondition::NotModified, "{request}");
        }
        let r = stored(&[("if-none-match", "\"v2\"")]);
        assert_eq!(preconditions(&r, &Method::GET, ok, &strong), Precondition::Proceed);
        // Commas inside an entity-tag are part of it.
        let odd = stored(&[("etag", "\"a,b\"")]);
        let r = stored(&[("if-none-match", "\"a,b\"")]);
        assert_eq!(preconditions(&r, &Method::GET, ok, &odd), Precondition::NotModified);
    }

    /// RFC 9111 §4.3.2: without Last-Modified, If-Modified-Since is compared with the stored Date.
    #[test]
    fn if_modified_since_falls_back_to_date() {
        let headers = stored(&[("date", "Mon, 01 Jan 2024 00:00:00 GMT")]);
        let r = stored(&[("if-modified-since", "Tue, 02 Jan 2024 00:00:00 GMT")]);
        assert_eq!(preconditions(&r, &Method::GET, StatusCode::OK, &headers), Precondition::NotModified);
        let r = stored(&[("if-modified-since", "Sun, 31 Dec 2023 00:00:00 GMT")]);
        assert_eq!(preconditions(&r, &Method::GET, StatusCode::OK, &headers), Precondition::Proceed);
    }

    /// RFC 9110 §13.1.1, §13.1.4: If-Match (strong comparison) and If-Unmodified-Since give 412.
    #[test]
    fn if_match_and_if_unmodified_since_give_412() {
        let headers = stored(&[("etag", "\"v1\""), ("last-modified", "Tue, 02 Jan 2024 00:00:00 GMT")]);
        let check = |pairs: &[(&str, &str)]| preconditions(&stored(pairs), &Method::GET, StatusCode::OK, &headers);
        assert_eq!(check(&[("if-match", "\"v2\"")]), Precondition::Failed);
        assert_eq!(check(&[("if-match", "W/\"v1\"")]), Precondition::Failed, "weak tags never match strongly");
        assert_eq!(check(&[("if-match", "\"v1\"")]), Precondition::Proceed);
        assert_eq!(check(&[("if-match", "*")]), Precondition::Proceed);
        assert_eq!(check(&[("if-unmodified-since", "Mon, 01 Jan 2024 00:00:00 GMT")]), Precondition::Failed);
        assert_eq!(check(&[("if-unmodified-since", "Wed, 03 Jan 2024 00:00:00 GMT")]), Precondition::Proceed);
        // If-Match takes precedence over If-Unmodified-Since.
        assert_eq!(
            check(&[("if-match", "\"v1\""), ("if-unmodified-since", "Mon, 01 Jan 2024 00:00:00 GMT")]),
            Precondition::Proceed
        );
        // Only answers that would be 2xx are conditional (§13.2.1).
        let r = stored(&[("if-match", "\"nope\"")]);
        assert_eq!(preconditions(&r, &Method::GET, StatusCode::NOT_FOUND, &headers), Precondition::Proceed);
        let object = object(b"0123456789");
        let answer = from_object(&object, &Method::GET, &r, Instant::now());
        assert_eq!(answer.status(), StatusCode::PRECONDITION_FAILED);
    }
}
