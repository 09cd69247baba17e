//! The cache lookup. A fresh object is a hit; a stale one within stale-while-revalidate is
//! served while one background refresh runs; otherwise the request goes on to `fetch` (a miss, or a
//! revalidation of the stale copy, which may still be served if the origin fails). Whatever the answer,
//! `prefetch::served` sees it last (a playlist read, or the next segments started).
//!
//! LL-HLS blocking playlist reloads (`_HLS_msn`, `cache::policy`): malformed delivery directives are
//! answered 400 here, before the cache and the origin; a well-formed one is looked up under its whole
//! query like any request, but never answered stale (a fresh copy is a hit; a stale one is revalidated
//! first).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{HeaderValue, CACHE_CONTROL};
use http::request::Parts;
use http::StatusCode;

use super::fetch;
use super::prefetch;
use super::respond::{self, Outcome};
use super::route::Target;
use crate::cache::policy::{self, DirectiveError};
use crate::cache::storage::Found;
use crate::cache::{CacheKey, CachedObject, Lifecycle};
use crate::metrics::CacheResult;
use crate::state::Edge;

pub async fn serve(edge: &Arc<Edge>, parts: &Parts, target: &Target, peer: SocketAddr) -> Outcome {
    if let Err(error) = policy::delivery_directives(target.query.as_deref()) {
        return malformed_directive(error);
    }
    let key = edge.cache_key(&target.host, &target.path, target.query.as_deref());
    let (outcome, object) = answer(edge, key.clone(), parts, target, peer).await;
    prefetch::served(edge, &key, target, parts, &outcome, object.as_ref(), peer);
    outcome
}

/// The answer, and the stored object it came from (for a hit or a stale copy served).
async fn answer(
    edge: &Arc<Edge>,
    key: CacheKey,
    parts: &Parts,
    target: &Target,
    peer: SocketAddr,
) -> (Outcome, Option<Arc<CachedObject>>) {
    let object = match edge.storage.lookup(&key, &parts.headers).await {
        Found::Object(object) => object,
        Found::Miss => {
            return (fetch::fetch(edge, key, parts, target, None, peer, fetch::Forward::UriMiss).await, None)
        }
        Found::VaryMiss => {
            return (fetch::fetch(edge, key, parts, target, None, peer, fetch::Forward::VaryMiss).await, None)
        }
    };
    let now = Instant::now();
    let outcome = match object.lifecycle_for(now, policy::may_serve_stale(target.query.as_deref())) {
        Lifecycle::Fresh { ttl } => Outcome::hit(&object, parts, now, ttl),
        Lifecycle::StaleRevalidateInBackground { stale_for } => {
            fetch::revalidate_in_background(edge, key, parts, target, object.clone(), peer);
            Outcome::served(
                respond::from_object(&object, &parts.method, &parts.headers, now),
                CacheResult::Stale,
                format!("hit; ttl=-{}; detail=stale-while-revalidate", stale_for.as_secs()),
                true,
            )
        }
        Lifecycle::Stale { .. } => {
            return (fetch::fetch(edge, key, parts, target, Some(object), peer, fetch::Forward::Stale).await, None)
        }
    };
    (outcome, Some(object))
}

/// 400 for delivery directives that cannot mean anything (`_HLS_msn=abc`, `_HLS_part` without
/// `_HLS_msn`, a directive given twice). `no-store`: nothing in front of the edge keeps it.
fn malformed_directive(error: DirectiveError) -> Outcome {
    let mut outcome = Outcome::local(StatusCode::BAD_REQUEST, &format!("malformed HLS delivery directive: {error}"));
    outcome.cache_status = "fwd=request; detail=malformed-delivery-directive".into();
    outcome.response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_directive_is_a_400_nobody_stores() {
        let outcome = malformed_directive(DirectiveError::PartWithoutMsn);
        assert_eq!(outcome.response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(outcome.response.headers()[CACHE_CONTROL], "no-store");
        assert_eq!(outcome.cache_status, "fwd=request; detail=malformed-delivery-directive");
    }
}
