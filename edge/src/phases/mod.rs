//! The request's path through the edge, one module per phase. `handle` runs them, and its order is the
//! one that counts:
//!
//! - identify (`crate::identity`): who is the client? (Computed for every request, refused ones too:
//!   the access log records it.)
//! - `route`: is this a request we serve (host, target form, path)? The edge is never an open proxy.
//! - `limit`: the rate limit (decided by `crate::ratelimit`), before any cache lookup so that hits
//!   cannot bypass it.
//! - `auth`: signed playback URLs (`[auth] signed_urls`): under a protected prefix, a request without
//!   a valid token for its path gets 403 and never reaches the cache or an origin.
//! - `lookup`: the cache lookup and the hit / stale / miss decision.
//! - `fetch`: a miss or revalidation, coalesced so the origin sees each object once.
//!   `pass`: methods that are not cached go straight to the origin.
//! - `respond`: the response and the headers every response carries.
//! - `prefetch`: after a GET is answered, HLS-aware prefetch (a playlist is read, the next segments
//!   are filled in the background); never changes the answer.
//!
//! Access logging (`crate::access_log`) and metrics wrap the whole path (`handle`).

pub mod auth;
pub mod fetch;
pub mod limit;
pub mod lookup;
pub mod origin_request;
pub mod pass;
pub mod prefetch;
pub mod range;
pub mod respond;
pub mod route;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method, Request, Response};
use hyper::body::Incoming;

use crate::access_log::{self, LoggedBody};
use crate::identity::ClientId;
use crate::state::{Edge, X_REQUEST_ID};
use respond::Outcome;

/// Serves one request. Never fails: every problem becomes an HTTP answer.
pub async fn handle(
    edge: Arc<Edge>,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<LoggedBody>, Infallible> {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    // Also when limiting is off: the access log records who asked.
    // One view of the reloadable settings for the whole request.
    let settings = edge.settings();
    let client = ClientId::of(&settings.identity, &parts.headers, peer);
    let arrival = settings.upstream.arrival(&parts.headers);
    if arrival.from_fleet {
        edge.metrics.record_fleet_request();
    }
    let mut outcome = match route::accept(&parts, &settings.config.server_names) {
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
        // A fleet member's request was limited at the edge its viewer used.
        Ok(target) => match if arrival.from_fleet { Ok(None) } else { limit::admit(&edge, &settings, &client).await } {
            Err(refusal) => *refusal,
            Ok(quota) => {
                let mut outcome = if let Err(refusal) = auth::admit(&edge, &settings, &target, arrival.from_fleet) {
                    *refusal
                } else if parts.method == Method::OPTIONS
                    && parts.headers.contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
                {
                    respond::preflight(&parts.headers, settings.cors_allow_origin.as_ref())
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
    respond::finish_headers(&mut outcome, settings.cors_allow_origin.as_ref());
    let request_id = edge.next_request_id();
    outcome.response.headers_mut().insert(X_REQUEST_ID.clone(), request_id.header_value());
    let status = outcome.response.status().as_u16();
    edge.metrics.record_response(status, outcome.result);
    if outcome.coalesced {
        edge.metrics.record_coalesced();
    }
    let (response_parts, body) = outcome.response.into_parts();
    let entry = access_log::Entry {
        method: parts.method,
        // The Uri is reference-counted inside: cloning it is cheaper than formatting a String per request.
        // A signed URL's token is a credential: the line gets it without its signature.
        uri: settings
            .signed_urls
            .as_ref()
            .and_then(|auth| auth.redact(parts.uri.query()?))
            .and_then(|query| format!("{}?{query}", parts.uri.path()).parse().ok())
            .unwrap_or_else(|| parts.uri.clone()),
        status,
        result: outcome.result,
        client,
        request_id,
        detail: outcome.detail.take(),
        from_cache: outcome.from_cache,
        started,
        expected_bytes: response_parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()),
    };
    Ok(Response::from_parts(response_parts, LoggedBody::new(edge, body, entry)))
}
