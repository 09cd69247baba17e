//! Phase 5: fetching a miss (or revalidating a stale copy) from the origin, coalesced: the first request
//! for a key starts a flight that runs detached from every client; later ones join it. The flight stores
//! the object only once its body has arrived whole (and matches Content-Length when one was given).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, StatusCode};

use super::range::{self, RangeAnswer};
use super::respond::{self, CacheResult, Outcome};
use super::route::Target;
use super::Edge;
use crate::body::EdgeBody;
use crate::cache::coalesce::{Flight, FlightFailure, FlightHead, Flights, HeadOutcome, Joined};
use crate::cache::policy::{self, judge, remove_hop_by_hop, Verdict};
use crate::cache::{CacheKey, CachedObject};
use crate::origin::{OriginError, OriginRequest};

/// Request headers that concern the client's own copy or connection, never forwarded on a fill.
const NOT_FORWARDED_ON_FILL: [HeaderName; 6] = [
    header::RANGE,
    header::IF_RANGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
];

/// The headers the edge sends to the origin for a client request: the client's end-to-end headers,
/// without hop-by-hop ones and Host (the origin's own host is used), plus X-Forwarded-For and Via.
pub fn forwarded_headers(client: &HeaderMap, peer: SocketAddr) -> HeaderMap {
    let mut headers = client.clone();
    remove_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(previous) => format!("{previous}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert("x-forwarded-for", value);
    }
    headers.append(header::VIA, HeaderValue::from_static("1.1 eddy"));
    headers
}

/// What a flight needs to know about the request that started it.
struct FillRequest {
    key: CacheKey,
    /// The request as the cache policy sees it (method GET, the client's headers).
    policy_request: Parts,
    origin_request: OriginRequest,
    path: String,
    stale: Option<Arc<CachedObject>>,
}

fn fill_request(
    parts: &Parts,
    target: &Target,
    key: CacheKey,
    stale: Option<Arc<CachedObject>>,
    peer: SocketAddr,
) -> FillRequest {
    let mut headers = forwarded_headers(&parts.headers, peer);
    for name in &NOT_FORWARDED_ON_FILL {
        headers.remove(name);
    }
    if let Some(stale) = &stale {
        headers.extend(stale.validators());
    }
    let mut policy_request = http::Request::new(());
    *policy_request.method_mut() = Method::GET;
    *policy_request.uri_mut() = parts.uri.clone();
    *policy_request.headers_mut() = parts.headers.clone();
    FillRequest {
        key,
        policy_request: policy_request.into_parts().0,
        origin_request: OriginRequest {
            // HEAD is filled with GET so that the object can be stored for later GETs.
            method: Method::GET,
            path_and_query: target.path_and_query(),
            headers,
            body: Bytes::new(),
        },
        path: target.path.clone(),
        stale,
    }
}

/// Serves a miss or a stale object through a (possibly shared) flight.
pub async fn fetch(
    edge: &Arc<Edge>,
    key: CacheKey,
    parts: &Parts,
    target: &Target,
    stale: Option<Arc<CachedObject>>,
    peer: SocketAddr,
) -> Outcome {
    // A request with credentials gets its own fetch: its answer may be meant for it alone.
    let per_client = parts.headers.contains_key(header::AUTHORIZATION);
    let (flight, leader) = if per_client {
        (Flights::private(), true)
    } else {
        match edge.flights.join(&key) {
            Joined::Leader(flight) => (flight, true),
            Joined::Follower(flight) => (flight, false),
        }
    };
    if leader {
        let fill = fill_request(parts, target, key.clone(), stale.clone(), peer);
        tokio::spawn(run_flight(edge.clone(), flight.clone(), fill, !per_client));
    }
    let outcome = answer_from_flight(edge, &flight, leader, parts, stale).await;
    match outcome {
        Some(outcome) => outcome,
        // The shared answer turned out to be for its requester only: fetch our own.
        None => {
            let flight = Flights::private();
            let fill = fill_request(parts, target, key, None, peer);
            tokio::spawn(run_flight(edge.clone(), flight.clone(), fill, false));
            answer_from_flight(edge, &flight, true, parts, None)
                .await
                .unwrap_or_else(|| Outcome::local(StatusCode::BAD_GATEWAY, "origin answer unusable"))
        }
    }
}

/// Starts one background revalidation of a stale object unless one is already under way.
pub fn revalidate_in_background(
    edge: &Arc<Edge>,
    key: CacheKey,
    parts: &Parts,
    target: &Target,
    stale: Arc<CachedObject>,
    peer: SocketAddr,
) {
    if let Joined::Leader(flight) = edge.flights.join(&key) {
        let fill = fill_request(parts, target, key, Some(stale), peer);
        tokio::spawn(run_flight(edge.clone(), flight, fill, true));
    }
}

/// Waits for the flight's head and builds the client's response. `None` means the response may not be
/// shared with this (follower) request.
async fn answer_from_flight(
    edge: &Arc<Edge>,
    flight: &Arc<Flight>,
    leader: bool,
    parts: &Parts,
    stale: Option<Arc<CachedObject>>,
) -> Option<Outcome> {
    let now = Instant::now();
    let head = match flight.head().await {
        HeadOutcome::Failed(failure) => return Some(stale_or_error(stale, &failure, parts, now)),
        HeadOutcome::Refreshed(object) => {
            return Some(Outcome {
                response: respond::from_object(&object, &parts.method, &parts.headers, Instant::now()),
                result: CacheResult::Revalidated,
                cache_status: "fwd=stale; fwd-status=304; stored".into(),
                from_cache: true,
                coalesced: !leader,
            })
        }
        HeadOutcome::Head(head) => head,
    };
    if head.status.is_server_error() {
        if let Some(object) = stale.as_ref().filter(|o| o.usable_on_error(now)) {
            return Some(serve_stale(object, parts, now, &format!("origin answered {}", head.status.as_u16())));
        }
    }
    if !head.shareable && !leader {
        return None;
    }
    let mut cache_status = String::from(if stale.is_some() { "fwd=stale" } else { "fwd=miss" });
    if head.shareable && head.status != StatusCode::NOT_MODIFIED && policy::status_is_storable(head.status) {
        cache_status.push_str("; stored");
    }
    if !leader {
        cache_status.push_str("; collapsed");
    }
    let outcome = |response| Outcome {
        response,
        result: CacheResult::Miss,
        cache_status,
        from_cache: !leader,
        coalesced: !leader,
    };

    let mut headers = head.headers.clone();
    headers.insert(header::AGE, HeaderValue::from_static("0"));
    if head.status == StatusCode::OK && respond::client_has_current_copy(&parts.headers, &head.headers) {
        for name in [header::CONTENT_LENGTH, header::CONTENT_TYPE] {
            headers.remove(name);
        }
        return Some(outcome(respond::response(StatusCode::NOT_MODIFIED, headers, EdgeBody::empty())));
    }
    if head.status == StatusCode::OK && parts.headers.contains_key(header::RANGE) {
        // A range on a miss: the whole object is fetched once (coalesced) and the range cut from it.
        return Some(match flight.whole_body().await {
            Ok(body) => outcome(range_response(head.status, headers, body, parts)),
            Err(failure) => stale_or_error(stale, &failure, parts, Instant::now()),
        });
    }
    let body =
        if parts.method == Method::HEAD { EdgeBody::empty() } else { EdgeBody::stream(flight.clone().body_stream()) };
    let _ = edge;
    Some(outcome(respond::response(head.status, headers, body)))
}

fn range_response(status: StatusCode, mut headers: HeaderMap, body: Bytes, parts: &Parts) -> http::Response<EdgeBody> {
    let length = body.len() as u64;
    let etag = headers.get(header::ETAG).and_then(|v| v.to_str().ok()).map(str::to_string);
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let (status, body) = match range::answer(&parts.headers, length, etag.as_deref()) {
        RangeAnswer::Whole => (status, body),
        RangeAnswer::Partial { start, end } => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{length}")) {
                headers.insert(header::CONTENT_RANGE, v);
            }
            (StatusCode::PARTIAL_CONTENT, body.slice(start as usize..=end as usize))
        }
        RangeAnswer::Unsatisfiable => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{length}")) {
                headers.insert(header::CONTENT_RANGE, v);
            }
            (StatusCode::RANGE_NOT_SATISFIABLE, Bytes::new())
        }
    };
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    let body = if parts.method == Method::HEAD { EdgeBody::empty() } else { EdgeBody::full(body) };
    respond::response(status, headers, body)
}

fn serve_stale(object: &CachedObject, parts: &Parts, now: Instant, why: &str) -> Outcome {
    tracing::warn!(path = %parts.uri.path(), reason = why, "serving stale copy: origin failed");
    let stale_for = match object.lifecycle(now) {
        crate::cache::Lifecycle::Stale { stale_for }
        | crate::cache::Lifecycle::StaleRevalidateInBackground { stale_for } => stale_for.as_secs(),
        crate::cache::Lifecycle::Fresh { .. } => 0,
    };
    Outcome {
        response: respond::from_object(object, &parts.method, &parts.headers, now),
        result: CacheResult::Stale,
        cache_status: format!("hit; ttl=-{stale_for}; detail=stale-if-error"),
        from_cache: true,
        coalesced: false,
    }
}

fn stale_or_error(stale: Option<Arc<CachedObject>>, failure: &FlightFailure, parts: &Parts, now: Instant) -> Outcome {
    if let Some(object) = stale.as_ref().filter(|o| o.usable_on_error(now)) {
        return serve_stale(object, parts, now, &failure.message);
    }
    let (status, detail) = if failure.timed_out {
        (StatusCode::GATEWAY_TIMEOUT, "origin timed out")
    } else {
        (StatusCode::BAD_GATEWAY, "origin unreachable or failed")
    };
    let mut outcome = Outcome::local(status, &format!("{detail}: {}", failure.message));
    outcome.cache_status = format!("fwd=miss; detail=\"{detail}\"");
    outcome
}

async fn store(
    edge: &Edge,
    fill: &FillRequest,
    status: StatusCode,
    headers: &HeaderMap,
    body: Bytes,
    verdict: &Verdict,
) {
    let object = CachedObject::from_verdict(status, headers.clone(), body, verdict.clone(), Instant::now());
    edge.storage.insert(&fill.key, &fill.policy_request.headers, &verdict.vary, Arc::new(object)).await;
}

/// The detached origin fetch of one flight. `shared`: the flight is in the registry (and must leave it).
async fn run_flight(edge: Arc<Edge>, flight: Arc<Flight>, fill: FillRequest, shared: bool) {
    let land = |edge: &Edge| {
        if shared {
            edge.flights.land(&fill.key, &flight);
        }
    };
    let started = Instant::now();
    let sent = edge.origins.send(&fill.origin_request).await;
    edge.metrics.record_origin_request(started.elapsed().as_secs_f64(), sent.is_err());
    let response = match sent {
        Ok(response) => response,
        Err(error) => {
            flight.fail(FlightFailure { message: error.to_string(), timed_out: error.is_timeout() });
            land(&edge);
            return;
        }
    };

    if response.status == StatusCode::NOT_MODIFIED {
        if let Some(stale) = &fill.stale {
            let refreshed = stale.refreshed(
                &edge.rules,
                &fill.policy_request,
                &response.headers,
                &fill.path,
                SystemTime::now(),
                Instant::now(),
            );
            match refreshed {
                Some(object) => {
                    let object = Arc::new(object);
                    let vary = policy::vary_names(&object.headers);
                    edge.storage.insert(&fill.key, &fill.policy_request.headers, &vary, object.clone()).await;
                    flight.refreshed(object);
                }
                None => flight.fail(FlightFailure {
                    message: "origin's 304 does not match the stored copy".into(),
                    timed_out: false,
                }),
            }
            land(&edge);
            return;
        }
    }

    let mut headers = response.headers;
    remove_hop_by_hop(&mut headers);
    let verdict = judge(&edge.rules, &fill.policy_request, response.status, &headers, &fill.path, SystemTime::now());
    let declared_length =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let max_object = edge.rules.max_object_size;
    let mut storable = verdict.storable && declared_length.is_none_or(|n| n <= max_object);
    flight.publish_head(FlightHead { status: response.status, headers: headers.clone(), shareable: verdict.storable });

    let deadline = tokio::time::Instant::from_std(started + edge.origins.total_timeout());
    let mut body = response.body;
    let mut received: u64 = 0;
    let mut stored = false;
    loop {
        match tokio::time::timeout_at(deadline, body.next()).await {
            Err(_) => {
                edge.metrics.record_origin_error();
                flight.fail(FlightFailure {
                    message: format!("origin body not complete within {:?}", edge.origins.total_timeout()),
                    timed_out: true,
                });
                land(&edge);
                return;
            }
            Ok(Some(Err(error))) => {
                edge.metrics.record_origin_error();
                flight.fail(FlightFailure {
                    message: error.to_string(),
                    timed_out: matches!(error, OriginError::Timeout { .. }),
                });
                land(&edge);
                return;
            }
            Ok(Some(Ok(chunk))) => {
                received += chunk.len() as u64;
                edge.metrics.record_bytes_from_origin(chunk.len() as u64);
                if storable && received > max_object {
                    // Too big to keep: those already waiting get it streamed; later requests fetch
                    // their own instead of joining a flight that holds the whole body in memory.
                    storable = false;
                    land(&edge);
                }
                if storable && !stored && declared_length == Some(received) {
                    // The body is whole. Store it before handing out the last bytes, so that a client's
                    // next request (sent the moment it has them) already finds the object.
                    let mut whole = BytesMut::with_capacity(received as usize);
                    whole.extend_from_slice(&flight.collect());
                    whole.extend_from_slice(&chunk);
                    store(&edge, &fill, response.status, &headers, whole.freeze(), &verdict).await;
                    // From now on requests find the object in the cache rather than joining this flight.
                    land(&edge);
                    stored = true;
                }
                flight.push_chunk(chunk);
            }
            Ok(None) => break,
        }
    }
    if let Some(expected) = declared_length {
        if expected != received {
            edge.metrics.record_origin_error();
            flight.fail(FlightFailure {
                message: format!("origin sent {received} of {expected} bytes"),
                timed_out: false,
            });
            land(&edge);
            return;
        }
    }
    if storable && !stored {
        // Without a Content-Length the client only sees the end once `finish` says so: store first.
        store(&edge, &fill, response.status, &headers, flight.collect(), &verdict).await;
        land(&edge);
    }
    flight.finish();
    land(&edge);
}
