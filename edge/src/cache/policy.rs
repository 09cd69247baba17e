//! What may be stored, for how long, and when a stored object may still be served: pure functions of the
//! request, the response and the time, with no I/O and no clock of their own.
//!
//! Freshness and storability come from `http-cache-semantics` (RFC 9111, shared-cache view, no heuristic
//! freshness). Where the origin said nothing about freshness, operator TTL rules apply (and a short TTL
//! for 404/410). The two stale allowances (`stale-while-revalidate`, `stale-if-error`) come from the
//! response's Cache-Control or, failing that, the operator's defaults; `must-revalidate`,
//! `proxy-revalidate` and `no-cache` forbid serving stale.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use http_cache_semantics::{CacheOptions, CachePolicy};

use crate::config::{CacheConfig, SetCookie, TtlRule};

/// The largest delta-seconds value the cache acts on: larger ones, however many digits they have,
/// count as this (RFC 9111 §1.2.2). All time arithmetic on header values saturates at it.
pub const MAX_DELTA: Duration = Duration::from_secs(1 << 31);

/// Parses delta-seconds (RFC 9111 §1.2.2): digits only; values past [`MAX_DELTA`] are clamped.
pub fn delta_seconds(text: &str) -> Option<Duration> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let seconds = text.parse::<u64>().unwrap_or(u64::MAX).min(MAX_DELTA.as_secs());
    Some(Duration::from_secs(seconds))
}

/// Status codes this cache stores (the ones RFC 9110 calls heuristically cacheable, minus 206 and the
/// rarely useful ones).
pub fn status_is_storable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 200 | 203 | 204 | 300 | 301 | 308 | 404 | 410)
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
}

impl CacheRules {
    pub fn from_config(config: &CacheConfig) -> Self {
        CacheRules {
            ttl_rules: config.ttl_rules.clone(),
            negative_ttl: config.negative_ttl.0,
            stale_if_error: config.stale_if_error.0,
            stale_while_revalidate: config.stale_while_revalidate.0,
            max_object_size: config.max_object_size.0,
            set_cookie: config.set_cookie,
        }
    }

    /// The operator TTL for a response the origin said nothing about, if any rule matches.
    fn operator_ttl(&self, status: StatusCode, path: &str, headers: &HeaderMap) -> Option<Duration> {
        if matches!(status, StatusCode::NOT_FOUND | StatusCode::GONE) {
            return Some(self.negative_ttl);
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

/// Cache-Control directives the policy crate does not interpret for us.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StaleDirectives {
    pub stale_while_revalidate: Option<Duration>,
    pub stale_if_error: Option<Duration>,
    /// must-revalidate, proxy-revalidate or no-cache: never serve stale.
    pub forbids_stale: bool,
    /// The origin gave explicit freshness (max-age, s-maxage, no-cache, no-store, private, or Expires).
    pub explicit_freshness: bool,
}

pub fn stale_directives(headers: &HeaderMap) -> StaleDirectives {
    let mut out = StaleDirectives { explicit_freshness: headers.contains_key(header::EXPIRES), ..Default::default() };
    for value in headers.get_all(header::CACHE_CONTROL) {
        let Ok(text) = value.to_str() else { continue };
        for directive in text.split(',') {
            let directive = directive.trim();
            let (name, arg) = match directive.split_once('=') {
                Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                None => (directive, None),
            };
            let seconds = || arg.and_then(delta_seconds);
            match name.to_ascii_lowercase().as_str() {
                "stale-while-revalidate" => out.stale_while_revalidate = seconds(),
                "stale-if-error" => out.stale_if_error = seconds(),
                "must-revalidate" | "proxy-revalidate" => out.forbids_stale = true,
                "no-cache" => {
                    out.forbids_stale = true;
                    out.explicit_freshness = true;
                }
                "max-age" | "s-maxage" | "no-store" | "private" => out.explicit_freshness = true,
                _ => {}
            }
        }
    }
    out
}

/// The verdict on a response from the origin.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub storable: bool,
    pub fresh_for: Duration,
    pub initial_age: Duration,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    pub policy: CachePolicy,
    /// Header names the response Varies on (lower-cased), if any.
    pub vary: Vec<HeaderName>,
    /// The response sets a cookie. With `cache.set_cookie = "pass"` it is then neither stored nor
    /// shared; with `"strip"` it is stored and shared without its `Set-Cookie`.
    pub sets_cookie: bool,
}

/// Decides whether and for how long a response may be stored. `request` is the request as sent to the
/// origin (its Authorization header matters); `path` is the request path for TTL rules.
pub fn judge(
    rules: &CacheRules,
    request: &http::request::Parts,
    status: StatusCode,
    headers: &HeaderMap,
    path: &str,
    now: SystemTime,
) -> Verdict {
    let directives = stale_directives(headers);
    let mut effective = http::Response::new(());
    *effective.status_mut() = status;
    *effective.headers_mut() = headers.clone();
    let sets_cookie = headers.contains_key(header::SET_COOKIE);
    // The policy crate adds Age to durations unchecked: hand it a clamped value (RFC 9111 §1.2.2).
    if let Some(age) = headers.get(header::AGE).and_then(|v| v.to_str().ok()).and_then(|v| delta_seconds(v.trim())) {
        effective.headers_mut().insert(header::AGE, HeaderValue::from(age.as_secs()));
    }
    if rules.set_cookie == SetCookie::Strip {
        // The stored object will not carry the cookie, so it must not count against its freshness
        // (http-cache-semantics gives a shared cache's cookie-setting responses no lifetime).
        effective.headers_mut().remove(header::SET_COOKIE);
    }
    if !directives.explicit_freshness {
        if let Some(ttl) = rules.operator_ttl(status, path, headers) {
            // The operator's TTL stands in for the max-age the origin did not give.
            if let Ok(value) = HeaderValue::from_str(&format!("max-age={}", ttl.as_secs())) {
                effective.headers_mut().append(header::CACHE_CONTROL, value);
            }
        }
    }
    let options = CacheOptions { shared: true, cache_heuristic: 0.0, ..CacheOptions::default() };
    let policy = CachePolicy::new_options(request, &effective, now, options);
    let vary = vary_names(headers);
    let vary_star = vary.iter().any(|n| n.as_str() == "*");
    let cookie_passes = sets_cookie && rules.set_cookie == SetCookie::Pass;
    let storable = policy.is_storable() && status_is_storable(status) && !vary_star && !cookie_passes;
    let forbids = directives.forbids_stale;
    Verdict {
        storable,
        fresh_for: policy.time_to_live(now).min(MAX_DELTA),
        initial_age: policy.age(now).min(MAX_DELTA),
        stale_while_revalidate: if forbids {
            Duration::ZERO
        } else {
            directives.stale_while_revalidate.unwrap_or(rules.stale_while_revalidate)
        },
        stale_if_error: if forbids {
            Duration::ZERO
        } else {
            directives.stale_if_error.unwrap_or_default().max(rules.stale_if_error)
        },
        policy,
        vary,
        sets_cookie,
    }
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

/// A stored response: its head, its whole body, and when it stops being fresh.
#[derive(Debug)]
pub struct CachedObject {
    pub status: StatusCode,
    /// The origin's headers, minus hop-by-hop ones and Age (recomputed on every response).
    pub headers: HeaderMap,
    pub body: Bytes,
    pub policy: CachePolicy,
    pub stored_at: Instant,
    pub initial_age: Duration,
    pub fresh_for: Duration,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
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
    pub fn from_verdict(status: StatusCode, headers: HeaderMap, body: Bytes, verdict: Verdict, now: Instant) -> Self {
        CachedObject {
            status,
            headers,
            body,
            policy: verdict.policy,
            stored_at: now,
            initial_age: verdict.initial_age,
            fresh_for: verdict.fresh_for,
            stale_while_revalidate: verdict.stale_while_revalidate,
            stale_if_error: verdict.stale_if_error,
        }
    }

    /// The Age to send: the age the origin reported plus the time spent here.
    pub fn age(&self, now: Instant) -> Duration {
        self.initial_age.saturating_add(now.saturating_duration_since(self.stored_at))
    }

    pub fn lifecycle(&self, now: Instant) -> Lifecycle {
        let resident = now.saturating_duration_since(self.stored_at);
        if resident < self.fresh_for {
            return Lifecycle::Fresh { ttl: self.fresh_for - resident };
        }
        let stale_for = resident - self.fresh_for;
        if stale_for < self.stale_while_revalidate {
            Lifecycle::StaleRevalidateInBackground { stale_for }
        } else {
            Lifecycle::Stale { stale_for }
        }
    }

    /// May this object stand in for an origin that failed (error, timeout, 5xx)?
    pub fn usable_on_error(&self, now: Instant) -> bool {
        match self.lifecycle(now) {
            Lifecycle::Fresh { .. } | Lifecycle::StaleRevalidateInBackground { .. } => true,
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
        self.fresh_for.saturating_add(self.stale_while_revalidate.max(self.stale_if_error).max(revalidation_grace))
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

    /// A copy refreshed by a 304 from the origin: the 304's headers replace the stored ones (RFC 9111
    /// §4.3.4) and freshness restarts. Returns `None` when the 304 does not match this object's
    /// validators (the body can no longer be trusted).
    pub fn refreshed(
        &self,
        rules: &CacheRules,
        request: &http::request::Parts,
        not_modified_headers: &HeaderMap,
        path: &str,
        now: SystemTime,
        now_instant: Instant,
    ) -> Option<CachedObject> {
        let mut response = http::Response::new(());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        *response.headers_mut() = not_modified_headers.clone();
        // A cookie in a 304 is the revalidating client's, never the stored object's.
        response.headers_mut().remove(header::SET_COOKIE);
        match self.policy.after_response(request, &response, now) {
            http_cache_semantics::AfterResponse::NotModified(_, parts) => {
                let mut headers = parts.headers;
                headers.remove(header::AGE);
                remove_hop_by_hop(&mut headers);
                let verdict = judge(rules, request, self.status, &headers, path, now);
                Some(CachedObject::from_verdict(self.status, headers, self.body.clone(), verdict, now_instant))
            }
            http_cache_semantics::AfterResponse::Modified(..) => None,
        }
    }
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

    fn judge_now(status: u16, pairs: &[(&str, &str)], path: &str) -> Verdict {
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
        // No rule, no freshness information, no heuristic: stored but stale at once.
        let v = judge_now(200, &[("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")], "/x.bin");
        assert_eq!(v.fresh_for, Duration::ZERO);
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
        let verdict = judge_now(200, &[("cache-control", "max-age=1")], "/a.ts");
        let mut object = CachedObject::from_verdict(StatusCode::OK, HeaderMap::new(), Bytes::new(), verdict, now);
        object.fresh_for = Duration::from_secs(fresh);
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

    #[test]
    fn a_matching_304_refreshes_headers_and_freshness() {
        let rules = rules();
        let req = request(&[]);
        let stored_headers = headers(&[("cache-control", "max-age=1"), ("etag", "\"v1\""), ("x-old", "1")]);
        let verdict = judge(&rules, &req, StatusCode::OK, &stored_headers, "/a.ts", SystemTime::now());
        let object = CachedObject::from_verdict(
            StatusCode::OK,
            stored_headers,
            Bytes::from_static(b"body"),
            verdict,
            Instant::now(),
        );
        let not_modified = headers(&[("cache-control", "max-age=30"), ("etag", "\"v1\"")]);
        let refreshed = object
            .refreshed(&rules, &req, &not_modified, "/a.ts", SystemTime::now(), Instant::now())
            .expect("validators match");
        assert_eq!(refreshed.fresh_for, Duration::from_secs(30));
        assert_eq!(refreshed.body, Bytes::from_static(b"body"));
        assert_eq!(refreshed.headers.get("x-old").map(|v| v.as_bytes()), Some(&b"1"[..]));

        let other = headers(&[("cache-control", "max-age=30"), ("etag", "\"v2\"")]);
        assert!(object.refreshed(&rules, &req, &other, "/a.ts", SystemTime::now(), Instant::now()).is_none());
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
        let object = CachedObject::from_verdict(StatusCode::OK, HeaderMap::new(), Bytes::new(), v, Instant::now());
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
        let mut object = CachedObject::from_verdict(StatusCode::OK, HeaderMap::new(), Bytes::new(), v, now);
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
            let verdict = judge(&rules(), &request(&[]), StatusCode::OK, &map, "/a.ts", SystemTime::now());
            proptest::prop_assert!(verdict.fresh_for <= MAX_DELTA);
            proptest::prop_assert!(verdict.initial_age <= MAX_DELTA);
            proptest::prop_assert!(verdict.stale_if_error <= MAX_DELTA && verdict.stale_while_revalidate <= MAX_DELTA);
            proptest::prop_assert!(verdict.vary.windows(2).all(|w| w[0].as_str() < w[1].as_str()));
            let now = Instant::now();
            let object = CachedObject::from_verdict(StatusCode::OK, map, Bytes::new(), verdict, now);
            let then = now.checked_add(Duration::from_secs(later % (1 << 40))).unwrap_or(now);
            let _ = object.lifecycle(then);
            let _ = object.usable_on_error(then);
            let _ = object.age(then);
            proptest::prop_assert!(object.keep_for() <= MAX_DELTA * 3);
        }
    }
}
