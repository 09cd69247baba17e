//! The rate limit on the request path: asks `crate::ratelimit` whether the client may go on, and turns a
//! refusal into the answer (429 over the limit, 503 when the shared store failed and the edge fails
//! closed). It runs before the cache lookup, so that hits cannot bypass it; the admin listener is never
//! limited.

use http::header::{HeaderValue, CACHE_CONTROL, RETRY_AFTER};
use http::StatusCode;

use super::respond::Outcome;
use crate::identity::ClientId;
use crate::ratelimit::{Admission, Quota};
use crate::state::{Edge, Settings};

/// `Ok` with the quota headers to add to the answer (none when limiting is off), or `Err` with the
/// refusal to send instead. The refusal is boxed: it is the rare path, and an `Outcome` is large.
pub async fn admit(edge: &Edge, settings: &Settings, client: &ClientId) -> Result<Option<Quota>, Box<Outcome>> {
    match settings.ratelimit.check(client.as_str(), &edge.metrics).await {
        Admission::Unlimited => Ok(None),
        Admission::Allowed(quota) => Ok(Some(quota)),
        Admission::Limited(quota) => Err(Box::new(too_many_requests(&quota))),
        Admission::Unavailable { retry_after_secs } => Err(Box::new(unavailable(retry_after_secs))),
    }
}

/// A refusal must not be stored by a cache in front of the edge: the next request may well be allowed.
fn no_store(outcome: &mut Outcome) {
    outcome.response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// 429 with the quota headers and Retry-After.
fn too_many_requests(quota: &Quota) -> Outcome {
    let retry = quota.retry_after_secs.unwrap_or(1);
    let mut outcome = Outcome::local(StatusCode::TOO_MANY_REQUESTS, &format!("too many requests: retry in {retry} s"));
    outcome.cache_status = "fwd=request; detail=rate-limited".into();
    quota.apply(outcome.response.headers_mut());
    no_store(&mut outcome);
    outcome
}

/// 503 when the shared store is down and the operator chose to fail closed.
fn unavailable(retry_after_secs: u64) -> Outcome {
    let mut outcome = Outcome::local(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("rate limiter unavailable: retry in {retry_after_secs} s"),
    );
    outcome.cache_status = "fwd=request; detail=rate-limiter-unavailable".into();
    outcome.response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
    no_store(&mut outcome);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limited_client_gets_429_with_its_quota_and_no_store() {
        let quota = Quota {
            policy: "default",
            quota: 2,
            window_secs: 60,
            remaining: 0,
            reset_secs: 42,
            retry_after_secs: Some(42),
        };
        let outcome = too_many_requests(&quota);
        assert_eq!(outcome.response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(outcome.cache_status, "fwd=request; detail=rate-limited");
        let h = outcome.response.headers();
        assert_eq!(h[RETRY_AFTER], "42");
        assert_eq!(h["x-ratelimit-limit"], "2");
        assert_eq!(h["x-ratelimit-remaining"], "0");
        assert_eq!(h[CACHE_CONTROL], "no-store");
    }

    #[test]
    fn a_failed_store_that_fails_closed_answers_503_with_retry_after() {
        let outcome = unavailable(1);
        assert_eq!(outcome.response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(outcome.cache_status, "fwd=request; detail=rate-limiter-unavailable");
        let h = outcome.response.headers();
        assert_eq!(h[RETRY_AFTER], "1");
        assert_eq!(h[CACHE_CONTROL], "no-store");
    }
}
