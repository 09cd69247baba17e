//! Fetching a miss (or revalidating a stale copy) from the origin, coalesced: the first request
//! for a key starts a flight that runs detached from every client; later ones join it. The flight stores
//! the object only once its body has arrived whole (and matches Content-Length when one was given).
//!
//! Who may share a flight (one client must never change what another receives):
//! - requests with `Authorization` never join another's flight (RFC 9111 §3.5);
//! - a follower is given the leader's response only when it may be shared (storable, no `Set-Cookie`
//!   unless the operator strips cookies) and when the follower's request matches the leader's on every
//!   header the response Varies on (RFC 9111 §4.1). Otherwise it fetches for itself: through the
//!   flight of its own variant, or alone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, StatusCode};

use super::origin_request::{self, FleetForwarded, Forwarding};
use super::range::{self, RangeAnswer};
use super::respond::{self, Outcome, Precondition};
use super::route::Target;
use crate::body::{BodyError, EdgeBody};
use crate::cache::coalesce::{
    vary_matches, FillGuard, Flight, FlightFailure, FlightHead, FlightReader, HeadOutcome, Joined, NotWhole,
};
use crate::cache::policy::{self, judge_exchange, remove_hop_by_hop, Cacheability, Exchange};
use crate::cache::storage::Found;
use crate::cache::{CacheKey, CachedObject, Lifecycle};
use crate::config::SetCookie;
use crate::metrics::CacheResult;
use crate::origin::{OriginError, OriginRequest};
use crate::state::{Edge, Settings};
use crate::upstream::{Arrival, Source};

/// Why the request goes forward, for `Cache-Status: fwd=` (RFC 9211 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// Nothing stored under this URI.
    UriMiss,
    /// Other variants are stored, not this request's.
    VaryMiss,
    /// A stored copy is stale and is being revalidated.
    Stale,
}

impl Forward {
    fn as_str(self) -> &'static str {
        match self {
            Forward::UriMiss => "uri-miss",
            Forward::VaryMiss => "vary-miss",
            Forward::Stale => "stale",
        }
    }
}

/// How a request takes part in fetching.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Plan {
    /// Join (or lead) the flight under this key: the primary key, or a variant's.
    Join(CacheKey),
    /// A fetch of its own, stored when the response allows.
    Alone,
    /// A fetch of its own with the client's Range forwarded, never stored: a range of an object that
    /// cannot be stored is not worth the whole body.
    ForwardRange,
}

/// What a flight's answer means for one request.
enum Answer {
    Ready(Outcome),
    /// The leader's response may not be given to this request.
    NotShareable,
    /// The response varies on these headers, and this request's values differ from the leader's.
    OtherVariant(Vec<HeaderName>),
    /// A range of an object that will not be stored: ask the origin for the range itself.
    ForwardRange,
}

/// What a flight needs to know about the request that started it.
struct FillRequest {
    /// Where the object is stored (always the primary key; storage handles variants).
    key: CacheKey,
    /// The request as the cache policy sees it (method GET, the client's headers).
    policy_request: Parts,
    origin_request: OriginRequest,
    path: String,
    /// The client whose request started it (for the forwarding headers of a live refresh).
    peer: SocketAddr,
    stale: Option<Arc<CachedObject>>,
    /// The largest body this fill stores (`cache.max_object_size`, or prefetch's own cap).
    max_object: u64,
    /// Never store what this fill brings (a forwarded range).
    never_store: bool,
    /// A blocking playlist reload: the origin may hold it up to `origin.blocking_reload_timeout`
    /// before its head, and `origin.total_timeout` runs from the head.
    blocking_reload: bool,
    /// The Host the client asked for (a peer keys the object by it too; prefetch reads the playlists
    /// it stores on this host's behalf).
    host: String,
    /// How the request reached this edge (a fleet member's request is never sent to another).
    arrival: Arrival,
    /// Test-only fault injection: panic inside the fill (see `Edge::panic_in_fill_path`).
    panic_mid_body: bool,
    /// The settings in force when the fill started: it ends under them, whatever a reload does.
    settings: Arc<Settings>,
}

fn fill_request(
    edge: &Edge,
    parts: &Parts,
    target: &Target,
    key: CacheKey,
    stale: Option<Arc<CachedObject>>,
    peer: SocketAddr,
    forward_range: bool,
) -> FillRequest {
    let settings = edge.settings();
    let stored_vary = stale.as_ref().map(|s| policy::vary_names(&s.headers)).unwrap_or_default();
    let arrival = settings.upstream.arrival(&parts.headers);
    let from_fleet = arrival.from_fleet.then(|| FleetForwarded::from_member(&parts.headers));
    let forwarding = Forwarding { peer, host: &target.host, from_fleet };
    let mut headers =
        origin_request::for_fill(&parts.headers, &settings.forwarded_request_headers, &stored_vary, &forwarding);
    if forward_range {
        for name in [header::RANGE, header::IF_RANGE] {
            if let Some(value) = parts.headers.get(&name) {
                headers.insert(name, value.clone());
            }
        }
    }
    if let Some(stale) = &stale {
        headers.extend(stale.validators());
    }
    let blocking_reload = policy::is_blocking_reload(target.query.as_deref());
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
            first_byte_timeout: blocking_reload.then(|| settings.config.origin.blocking_reload_timeout()),
        },
        path: target.path.clone(),
        peer,
        stale,
        max_object: settings.rules.max_object_size,
        never_store: forward_range,
        blocking_reload,
        host: target.host.clone(),
        arrival,
        panic_mid_body: edge.panic_in_fill_path.as_deref() == Some(target.path.as_str()),
        settings,
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
    forward: Forward,
) -> Outcome {
    // A request with credentials never joins another's fetch: its answer may be meant for it alone.
    let mut plan =
        if parts.headers.contains_key(header::AUTHORIZATION) { Plan::Alone } else { Plan::Join(key.clone()) };
    let mut stale = stale;
    // A blocking playlist reload revalidates a stale copy (its validators go along) but is never
    // answered with it, whatever the origin does (`policy::may_serve_stale`).
    let may_serve_stale = policy::may_serve_stale(target.query.as_deref());
    // Counted while it waits: the origin holds such requests on purpose.
    let _waiting = policy::is_blocking_reload(target.query.as_deref()).then(|| edge.metrics.blocking_reload_waiting());
    // Join → other variant → alone → forwarded range: a request moves down this list, never back.
    for _ in 0..4 {
        let joined = match &plan {
            Plan::Join(flight_key) => edge.flights.join(flight_key, &parts.headers),
            Plan::Alone | Plan::ForwardRange => edge.flights.private(&parts.headers),
        };
        let Joined { flight, reader, guard } = joined;
        let leader = guard.is_some();
        if let (Some(_), Plan::Join(_), None) = (&guard, &plan, &stale) {
            // Between this request's lookup and its joining the flights, the flight before it may
            // have stored the object and left: look once more before asking upstream, so that this
            // race never costs a second origin request. Anyone who joined meanwhile gets the object.
            if let Found::Object(object) = edge.storage.lookup(&key, &parts.headers).await {
                let now = Instant::now();
                if let Lifecycle::Fresh { ttl } = object.lifecycle(now) {
                    flight.refreshed(object.clone());
                    return Outcome::hit(&object, parts, now, ttl);
                }
            }
        }
        if let Some(guard) = guard {
            let fill = fill_request(edge, parts, target, key.clone(), stale.clone(), peer, plan == Plan::ForwardRange);
            // A blocking reload's fill holds an origin connection for as long as the origin holds it:
            // at most `origin.max_blocking_reloads` at once, each permit released with its fill.
            let slot = match fill.blocking_reload {
                true => edge.blocking_reload_slots.clone().try_acquire_owned().map(Some),
                false => Ok(None),
            };
            match slot {
                Ok(slot) => {
                    let edge = edge.clone();
                    tokio::spawn(async move {
                        let _slot = slot;
                        run_flight(edge, guard, fill).await
                    });
                }
                Err(_no_slot) => {
                    edge.metrics.record_blocking_reload_refused();
                    // The flight fails for this request and any that joined it: all get the 503.
                    flight.fail(FlightFailure::busy("origin.max_blocking_reloads are under way"));
                    drop(guard);
                }
            }
        }
        let forwarded_range = plan == Plan::ForwardRange;
        let fallback = stale.as_ref().filter(|_| may_serve_stale);
        match answer_from_flight(&flight, reader, leader, parts, fallback, forwarded_range, forward).await {
            Answer::Ready(outcome) => return outcome,
            Answer::OtherVariant(names) if matches!(&plan, Plan::Join(k) if *k == key) => {
                // Generation 0 is never used by storage: this key names flights only.
                plan = Plan::Join(key.variant(0, &names, &parts.headers));
            }
            Answer::OtherVariant(_) | Answer::NotShareable => {
                plan = Plan::Alone;
                stale = None;
            }
            Answer::ForwardRange => {
                plan = Plan::ForwardRange;
                stale = None;
            }
        }
    }
    Outcome::error(StatusCode::BAD_GATEWAY, "origin answer unusable", "no usable flight after four attempts")
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
    let _ = fill_in_background(edge, key, parts, target, Some(stale), peer, u64::MAX);
}

/// Starts a detached fill of `key`, unless a flight for it is under way already: the very fill a
/// client's miss runs (the same flight registry, so later requests join it; the same origin choice;
/// the same storing rules), for work no client waits on: stale-while-revalidate and prefetch.
/// `max_object` lowers the size it may store (a larger body is abandoned once nobody reads it).
/// Returns the flight and its task when this call started one.
pub fn fill_in_background(
    edge: &Arc<Edge>,
    key: CacheKey,
    parts: &Parts,
    target: &Target,
    stale: Option<Arc<CachedObject>>,
    peer: SocketAddr,
    max_object: u64,
) -> Option<(Arc<Flight>, tokio::task::JoinHandle<()>)> {
    // The reader is dropped at once: no client waits for this body, which is kept only to be stored.
    let Joined { flight, guard, .. } = edge.flights.join(&key, &parts.headers);
    let guard = guard?;
    let mut fill = fill_request(edge, parts, target, key, stale, peer, false);
    fill.max_object = fill.max_object.min(max_object);
    Some((flight, tokio::spawn(run_flight(edge.clone(), guard, fill))))
}

/// Waits for the flight's head and builds this request's answer.
async fn answer_from_flight(
    flight: &Arc<Flight>,
    reader: FlightReader,
    leader: bool,
    parts: &Parts,
    stale: Option<&Arc<CachedObject>>,
    forwarded_range: bool,
    forward: Forward,
) -> Answer {
    let head = match flight.head().await {
        HeadOutcome::Failed(failure) => {
            return Answer::Ready(stale_or_error(stale, &failure, parts, Instant::now(), forward))
        }
        HeadOutcome::Refreshed(object) => {
            let now = Instant::now();
            let ttl = match object.lifecycle(now) {
                crate::cache::Lifecycle::Fresh { ttl } => rounded_seconds(ttl),
                _ => 0,
            };
            let mut status = format!("fwd=stale; fwd-status=304; stored; ttl={ttl}");
            if !leader {
                status.push_str("; collapsed");
            }
            let mut outcome = Outcome::served(
                respond::from_object(&object, &parts.method, &parts.headers, now),
                CacheResult::Revalidated,
                status,
                true,
            );
            outcome.coalesced = !leader;
            return Answer::Ready(outcome);
        }
        HeadOutcome::Head(head) => head,
    };
    let now = Instant::now();
    if head.status.is_server_error() {
        if let Some(object) = stale.filter(|o| o.usable_on_error(now)) {
            return Answer::Ready(serve_stale(
                object,
                parts,
                now,
                &format!("origin answered {}", head.status.as_u16()),
            ));
        }
    }
    if !leader {
        if !head.shareable {
            return Answer::NotShareable;
        }
        if !vary_matches(&head.vary, flight.leader_request(), &parts.headers) {
            return Answer::OtherVariant(head.vary.clone());
        }
    }
    let mut cache_status = format!("fwd={}; fwd-status={}", forward.as_str(), head.status.as_u16());
    if head.storable {
        cache_status.push_str(&format!("; stored; ttl={}", rounded_seconds(head.fresh_for)));
    }
    if !leader {
        cache_status.push_str("; collapsed");
    }
    let outcome = |response| {
        let mut outcome = Outcome::served(response, CacheResult::Miss, cache_status, !leader);
        outcome.coalesced = !leader;
        outcome
    };

    let mut headers = head.headers.clone();
    if leader {
        for (name, value) in &head.leader_only {
            headers.append(name.clone(), value.clone());
        }
    }
    match respond::preconditions(&parts.headers, &parts.method, head.status, &head.headers) {
        Precondition::Proceed => {}
        Precondition::NotModified => {
            for name in [header::CONTENT_LENGTH, header::CONTENT_TYPE] {
                headers.remove(name);
            }
            return Answer::Ready(outcome(respond::response(StatusCode::NOT_MODIFIED, headers, EdgeBody::empty())));
        }
        Precondition::Failed => return Answer::Ready(outcome(respond::precondition_failed(headers))),
    }
    if parts.method == Method::HEAD {
        // The reader is dropped: a HEAD takes no body, and a fetch that will not be stored stops once
        // nobody reads it.
        drop(reader);
        return Answer::Ready(outcome(respond::response(head.status, headers, EdgeBody::empty())));
    }
    if head.status == StatusCode::OK && parts.headers.contains_key(header::RANGE) && !forwarded_range {
        if !head.storable {
            return Answer::ForwardRange;
        }
        let length = content_length(&head.headers);
        let etag = head.headers.get(header::ETAG).and_then(|v| v.to_str().ok()).map(str::to_string);
        let Some(length) = length else {
            // No declared length: the range can be cut only from the whole body (at most
            // max_object_size, since it is being stored).
            drop(reader);
            return match flight.whole_body().await {
                Ok(body) => Answer::Ready(outcome(respond::whole_or_range(
                    head.status,
                    headers,
                    body,
                    &parts.headers,
                    &parts.method,
                ))),
                Err(NotWhole::TooLarge) => Answer::ForwardRange,
                Err(NotWhole::Failed(failure)) => {
                    Answer::Ready(stale_or_error(stale, &failure, parts, Instant::now(), forward))
                }
            };
        };
        let answer = range::answer(&parts.headers, length, etag.as_deref());
        let status = respond::range_head(head.status, answer, length, &mut headers);
        let body = match answer {
            RangeAnswer::Whole => EdgeBody::stream(reader.into_stream()),
            // Answered as soon as its bytes arrive, while the fill goes on.
            RangeAnswer::Partial { start, end } => EdgeBody::stream(byte_range(reader.into_stream(), start, end)),
            RangeAnswer::Unsatisfiable => EdgeBody::empty(),
        };
        return Answer::Ready(outcome(respond::response(status, headers, body)));
    }
    Answer::Ready(outcome(respond::response(head.status, headers, EdgeBody::stream(reader.into_stream()))))
}

/// Whole seconds, rounded: a fill's own sub-second delay is not a second of age.
fn rounded_seconds(duration: std::time::Duration) -> u64 {
    duration.saturating_add(std::time::Duration::from_millis(500)).as_secs()
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Bytes `start..=end` of a body stream; stops reading once past `end`.
fn byte_range(
    body: impl Stream<Item = Result<Bytes, BodyError>> + Send + 'static,
    start: u64,
    end: u64,
) -> impl Stream<Item = Result<Bytes, BodyError>> + Send + 'static {
    futures::stream::unfold((Box::pin(body), 0u64), move |(mut body, mut offset)| async move {
        while offset <= end {
            match body.next().await? {
                // u64::MAX as the offset ends the stream after the error.
                Err(error) => return Some((Err(error), (body, u64::MAX))),
                Ok(chunk) => {
                    let chunk_start = offset;
                    offset = offset.saturating_add(chunk.len() as u64);
                    let from = start.max(chunk_start);
                    let to = end.saturating_add(1).min(offset);
                    if from < to {
                        let piece = chunk.slice((from - chunk_start) as usize..(to - chunk_start) as usize);
                        return Some((Ok(piece), (body, offset)));
                    }
                }
            }
        }
        None
    })
}

fn serve_stale(object: &CachedObject, parts: &Parts, now: Instant, why: &str) -> Outcome {
    let stale_for = match object.lifecycle(now) {
        crate::cache::Lifecycle::Stale { stale_for }
        | crate::cache::Lifecycle::StaleRevalidateInBackground { stale_for } => stale_for.as_secs(),
        crate::cache::Lifecycle::Fresh { .. } => 0,
    };
    let mut outcome = Outcome::served(
        respond::from_object(object, &parts.method, &parts.headers, now),
        CacheResult::Stale,
        format!("fwd=stale; ttl=-{stale_for}; detail=stale-if-error"),
        true,
    );
    outcome.detail = Some(format!("origin failed, stale copy served: {why}"));
    outcome
}

fn stale_or_error(
    stale: Option<&Arc<CachedObject>>,
    failure: &FlightFailure,
    parts: &Parts,
    now: Instant,
    forward: Forward,
) -> Outcome {
    if let Some(object) = stale.filter(|o| o.usable_on_error(now)) {
        return serve_stale(object, parts, now, &failure.message);
    }
    if stale.is_some_and(|o| o.forbids_stale) {
        // RFC 9111 §4.2.4, §5.2.2.2: a stored copy that must be revalidated is never served stale;
        // when the origin cannot be reached the answer is 504.
        let mut outcome = Outcome::error(StatusCode::GATEWAY_TIMEOUT, "origin unreachable", failure.message.clone());
        outcome.cache_status = "fwd=stale; detail=\"must revalidate, origin unreachable\"".into();
        return outcome;
    }
    if failure.busy {
        // Not the origin's doing: the client may retry in a moment (RFC 9110 §15.6.4, §10.2.3).
        let mut outcome =
            Outcome::error(StatusCode::SERVICE_UNAVAILABLE, "too many requests under way", failure.message.clone());
        let headers = outcome.response.headers_mut();
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        outcome.cache_status = format!("fwd={}; detail=\"edge busy\"", forward.as_str());
        return outcome;
    }
    let mut outcome = Outcome::origin_failed(failure.timed_out, failure.message.clone());
    outcome.cache_status = format!("fwd={}; detail=\"origin failed\"", forward.as_str());
    outcome
}

async fn store(
    edge: &Arc<Edge>,
    fill: &FillRequest,
    status: StatusCode,
    headers: &HeaderMap,
    body: Bytes,
    cacheability: &Cacheability,
) {
    let object = Arc::new(CachedObject::new(status, headers.clone(), body, cacheability.clone(), Instant::now()));
    edge.storage.insert(&fill.key, &fill.policy_request.headers, &cacheability.vary, object.clone()).await;
    if status == StatusCode::OK {
        // A media playlist tells prefetch which segment follows which.
        super::prefetch::stored(edge, &fill.key, (&fill.host, &fill.origin_request.path_and_query), &object, fill.peer);
    }
}

/// Sends the fill's request upstream (the key's owner, the shield or the origins); on failure, ends
/// the flight and returns `None`.
async fn send(edge: &Edge, flight: &Flight, fill: &FillRequest) -> Option<(crate::origin::OriginResponse, Source)> {
    let settings = &fill.settings;
    let sent = settings
        .upstream
        .send(&settings.origins, &edge.metrics, &fill.key, &fill.origin_request, &fill.host, fill.arrival)
        .await;
    match sent {
        Ok(answer) => Some(answer),
        Err(error) => {
            flight.fail(FlightFailure { timed_out: error.is_timeout(), ..FlightFailure::new(error.to_string()) });
            None
        }
    }
}

/// The detached origin fetch of one flight. Every way out of it ends the flight: explicitly on the
/// paths below, and through the guard's drop on any other (a panic included).
async fn run_flight(edge: Arc<Edge>, mut guard: FillGuard, mut fill: FillRequest) {
    let flight = guard.flight().clone();
    let started = Instant::now();
    let request_time = SystemTime::now();
    let sent = if fill.blocking_reload {
        // The origin holds a blocking reload on purpose, up to a few target durations, keeping a
        // connection and a slot (`origin.max_blocking_reloads`): once every client that asked has
        // left, nobody waits for the answer, and the hold ends (a client cannot pile up holds by
        // asking and hanging up).
        tokio::select! {
            sent = send(&edge, &flight, &fill) => sent,
            () = flight.until_no_readers() => {
                flight.fail(FlightFailure::new("every client left before the origin answered"));
                return;
            }
        }
    } else {
        send(&edge, &flight, &fill).await
    };
    let Some((mut response, mut source)) = sent else { return };
    let mut exchange = Exchange { request_time, response_time: SystemTime::now() };
    if response.status == StatusCode::NOT_MODIFIED {
        let refreshed = fill.stale.as_ref().and_then(|stale| {
            stale.refreshed(
                &fill.settings.rules,
                &fill.policy_request,
                &response.headers,
                &fill.path,
                exchange,
                Instant::now(),
            )
        });
        if let Some(object) = refreshed {
            let object = Arc::new(object);
            let vary = policy::vary_names(&object.headers);
            edge.storage.insert(&fill.key, &fill.policy_request.headers, &vary, object.clone()).await;
            flight.refreshed(object);
            return;
        }
        if fill.stale.take().is_none() {
            // The fill asked for nothing conditional: a 304 answers no question it asked.
            flight.fail(FlightFailure::new("origin answered 304 to an unconditional request"));
            return;
        }
        // The 304 names another representation than the stored one (RFC 9111 §4.3.4): the stored
        // body can no longer be trusted. Forget it and ask once more, unconditionally.
        edge.storage.invalidate(&fill.key).await;
        for name in [header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE] {
            fill.origin_request.headers.remove(name);
        }
        let request_time = SystemTime::now();
        let Some((again, again_source)) = send(&edge, &flight, &fill).await else { return };
        source = again_source;
        exchange = Exchange { request_time, response_time: SystemTime::now() };
        if again.status == StatusCode::NOT_MODIFIED {
            flight.fail(FlightFailure::new("origin answered 304 to an unconditional request"));
            return;
        }
        response = again;
    }

    let mut headers = response.headers;
    remove_hop_by_hop(&mut headers);
    let cacheability =
        judge_exchange(&fill.settings.rules, &fill.policy_request, response.status, &headers, &fill.path, exchange);
    // Every answer carries current_age (RFC 9111 §4.2.3), the origin's Age included.
    headers.insert(header::AGE, HeaderValue::from(cacheability.initial_age.as_secs()));
    // With `cache.set_cookie = "strip"`, the cookie goes to the leader alone.
    let mut leader_only = HeaderMap::new();
    if cacheability.sets_cookie && fill.settings.rules.set_cookie == SetCookie::Strip {
        for value in headers.get_all(header::SET_COOKIE) {
            leader_only.append(header::SET_COOKIE, value.clone());
        }
        headers.remove(header::SET_COOKIE);
    }
    // What the key's owner sent is held once in the fleet; a copy here only as `cluster.local_copy` says.
    if let (Source::Peer(_), Some(cluster)) = (source, fill.settings.upstream.cluster()) {
        if !cluster.keep_local_copy(&fill.key) {
            fill.never_store = true;
        }
    }
    let declared_length = content_length(&headers);
    let max_object = fill.max_object;
    let mut storable = cacheability.storable && !fill.never_store && declared_length.is_none_or(|n| n <= max_object);
    let mut stored = false;
    // A 204 has no body (RFC 9110 §15.3.5), whatever its headers say.
    let body_less = declared_length == Some(0) || response.status == StatusCode::NO_CONTENT;
    if storable && body_less {
        // An empty body is whole already, and a client may see the end of it (Content-Length: 0, or a
        // 204) as soon as the head is out: store first, so that its next request finds the object.
        store(&edge, &fill, response.status, &headers, Bytes::new(), &cacheability).await;
        guard.unregister();
        stored = true;
    }
    flight.publish_head(FlightHead {
        status: response.status,
        headers: headers.clone(),
        leader_only,
        shareable: cacheability.storable,
        vary: cacheability.vary.clone(),
        storable,
        fresh_for: cacheability.fresh_for,
    });
    if !storable {
        // Those already waiting share the stream; later requests fetch their own rather than wait
        // on a body that will not be kept.
        guard.unregister();
    }

    // The origin's time is bounded, not the clients': waiting for readers of a body that is not
    // stored (backpressure) does not count against total_timeout. Nor does the hold of a blocking
    // playlist reload, bounded by its own timeout: its total_timeout starts with the head.
    let total_timeout = fill.settings.origins.total_timeout();
    let clock_from = if fill.blocking_reload { Instant::now() } else { started };
    let mut budget = total_timeout.saturating_sub(clock_from.elapsed());
    let mut body = response.body;
    let mut received: u64 = 0;
    loop {
        let read_started = Instant::now();
        let next = tokio::time::timeout(budget, body.next()).await;
        budget = budget.saturating_sub(read_started.elapsed());
        match next {
            Err(_) => {
                edge.metrics.record_origin_error();
                let message = format!("origin body not complete within {total_timeout:?}");
                flight.fail(FlightFailure { timed_out: true, ..FlightFailure::new(message) });
                return;
            }
            Ok(Some(Err(error))) => {
                edge.metrics.record_origin_error();
                let timed_out = matches!(error, OriginError::Timeout { .. });
                flight.fail(FlightFailure { timed_out, ..FlightFailure::new(error.to_string()) });
                return;
            }
            Ok(Some(Ok(chunk))) => {
                received = received.saturating_add(chunk.len() as u64);
                edge.metrics.record_bytes_from_origin(chunk.len() as u64);
                if fill.panic_mid_body {
                    panic!("fault injected into the fill of {} (EDDY_TEST_PANIC_IN_FILL)", fill.path);
                }
                if storable && (received > max_object || !flight.keep(chunk.len() as u64)) {
                    // Too big to keep, or more than all fills together may hold (cache.fill_memory):
                    // those already reading get it streamed; later requests fetch their own instead
                    // of joining a flight that would hold the whole body.
                    storable = false;
                    flight.stop_keeping();
                    guard.unregister();
                }
                if storable && !stored && declared_length == Some(received) {
                    // The body is whole. Store it before handing out the last bytes, so that a client's
                    // next request (sent the moment it has them) already finds the object.
                    if let Some(so_far) = flight.collect() {
                        let mut whole = BytesMut::with_capacity(so_far.len() + chunk.len());
                        whole.extend_from_slice(&so_far);
                        whole.extend_from_slice(&chunk);
                        store(&edge, &fill, response.status, &headers, whole.freeze(), &cacheability).await;
                        // From now on requests find the object in the cache rather than joining this flight.
                        guard.unregister();
                        stored = true;
                    }
                }
                if flight.push(chunk).await.is_err() {
                    // Nobody reads a body that will not be stored: stop fetching it.
                    flight.fail(FlightFailure::new("every client left"));
                    return;
                }
            }
            Ok(None) => break,
        }
    }
    if let Some(expected) = declared_length {
        if expected != received {
            edge.metrics.record_origin_error();
            if stored {
                // Cannot happen (stored only at exactly the declared length), but never keep a body
                // the origin then contradicted.
                edge.storage.invalidate(&fill.key).await;
            }
            flight.fail(FlightFailure::new(format!("origin sent {received} of {expected} bytes")));
            return;
        }
    }
    if storable && !stored {
        // Without a Content-Length the client only sees the end once `finish` says so: store first.
        if let Some(whole) = flight.collect() {
            store(&edge, &fill, response.status, &headers, whole, &cacheability).await;
        }
    }
    flight.finish();
}
