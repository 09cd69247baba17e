//! Signed playback URLs on the request path (`[auth] signed_urls`; the decisions are in
//! `crate::signed_urls`, the token format in `eddy_shared::signed_url`): a request under a protected
//! prefix goes on only with a valid, unexpired token for its path in the query. Otherwise it is
//! answered 403 here, before the cache lookup, so that it never reaches the cache or an origin.
//!
//! - It runs after the rate limit, so that a client sending bad tokens is limited like any other.
//! - A fleet member's request (it carries the fleet's secret) is trusted: the member facing the viewer
//!   checked the viewer's token, and its own prefetches carry tokens it checked. Checking again would
//!   only cost time (the members share the key).
//! - A passed request keeps its token on the way to the origin (which may check it too); the cache
//!   key leaves it out (`Edge::cache_key`).

use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{HeaderValue, CACHE_CONTROL};
use http::StatusCode;

use super::respond::Outcome;
use super::route::Target;
use crate::signed_urls::Refusal;
use crate::state::{Edge, Settings};

/// `Ok` when the request may go on; `Err` with the 403 to send instead (boxed: it is the rare path,
/// and an `Outcome` is large).
pub fn admit(edge: &Edge, settings: &Settings, target: &Target, from_fleet: bool) -> Result<(), Box<Outcome>> {
    let Some(auth) = &settings.signed_urls else { return Ok(()) };
    if from_fleet || !auth.protects(&target.path) {
        return Ok(());
    }
    auth.check(&target.path, target.query.as_deref(), now_unix()).map_err(|refusal| {
        edge.metrics.record_auth_refused(refusal.label());
        // Never the token itself: it is a credential.
        tracing::debug!(target: "auth", path = %target.path, reason = refusal.label(), "signed URL refused");
        Box::new(forbidden(refusal))
    })
}

/// Seconds since the Unix epoch now (0 if the clock is before it, which refuses every token).
pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// 403 with the reason. `no-store`: a cache in front of the edge must not keep a refusal that the
/// next viewer, with a valid token, would be given.
fn forbidden(refusal: Refusal) -> Outcome {
    let mut outcome = Outcome::local(StatusCode::FORBIDDEN, &refusal.message());
    outcome.cache_status = format!("fwd=request; detail=signed-url-{}", refusal.label().replace('_', "-"));
    outcome.response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use eddy_shared::signed_url::TokenError;

    #[test]
    fn a_refusal_is_a_403_nobody_stores() {
        let outcome = forbidden(Refusal::Token(TokenError::OutOfScope));
        assert_eq!(outcome.response.status(), StatusCode::FORBIDDEN);
        assert_eq!(outcome.response.headers()[CACHE_CONTROL], "no-store");
        assert_eq!(outcome.cache_status, "fwd=request; detail=signed-url-out-of-scope");
    }
}
