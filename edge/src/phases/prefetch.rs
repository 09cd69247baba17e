//! HLS-aware prefetch on the request path (the decisions are in `crate::prefetch`):
//!
//! - When a media playlist is stored (`stored`, called by the fill) or served from the cache
//!   (`served`), the edge reads it once per stored copy and remembers which segment follows which.
//! - When it serves a remembered segment (a 200 to a GET, hit or miss), it fills the next
//!   `prefetch.segments` in the background, unless they are cached or a flight for them is under way.
//! - A watched live playlist (RFC 8216 §6.2.2) is refreshed just before its freshness runs out, until
//!   nobody has asked for it for about two target durations.
//!
//! Invariant: **a prefetch is a miss that no client waits on.** It goes through
//! `fetch::fill_in_background`, the fill a client's miss runs: the same flight registry (a client asking
//! meanwhile joins it, so the origin sees each object once), the same choice of origin, the same
//! storing rules, and the headers a client with no special headers would cause (no Vary'd header: it
//! fills the variant such a client gets). Its only differences: a smaller size cap, above which it is
//! abandoned once no client reads it, and a concurrency bound (`prefetch.max_concurrent`; over it, a
//! prefetch is skipped and counted). Slots are released by the permit's drop, whatever ends the fill.
//!
//! LL-HLS blocking playlist reloads (a query with `_HLS_msn`): the segments such an answer lists are
//! remembered like any playlist's, but its URL is asked for once per part and its answer never
//! changes, so it is neither watched nor refreshed, and prefetch never issues a blocking request
//! itself (a held origin request for nobody). The live refresher keeps the plain playlist fresh.
//!
//! Prefetch fills are not client requests: they have no access-log line (the access log is one line
//! per client request). They are counted in the `prefetch_*` metrics and logged at debug level under
//! the `prefetch` target, failures included; a failure never touches any client's response.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap};
use http::request::Parts;
use http::{Method, StatusCode};

use super::fetch;
use super::respond::Outcome;
use super::route::Target;
use crate::cache::policy;
use crate::cache::{CacheKey, CachedObject, Lifecycle};
use crate::metrics::PrefetchEvent;
use crate::prefetch::{self as decide, PlaylistSeen};
use crate::state::Edge;

const SEGMENT: &str = "segment";
const PLAYLIST: &str = "playlist";

/// A 200 was stored by a fill: if it is a media playlist, remember what it says.
pub fn stored(
    edge: &Arc<Edge>,
    key: &CacheKey,
    (host, path_and_query): (&str, &str),
    object: &Arc<CachedObject>,
    peer: SocketAddr,
) {
    if !edge.prefetch.on() {
        return;
    }
    let path = path_and_query.split('?').next().unwrap_or(path_and_query);
    if decide::may_be_playlist(path, content_type(&object.headers)) {
        learn_in_background(edge, key, (host, path_and_query), object, peer);
    }
}

/// A GET was answered. A 200 for a playlist marks it watched (and reads a cached copy not read yet);
/// a 200 for a remembered segment starts the prefetch of the ones after it.
pub fn served(
    edge: &Arc<Edge>,
    key: &CacheKey,
    target: &Target,
    parts: &Parts,
    outcome: &Outcome,
    object: Option<&Arc<CachedObject>>,
    peer: SocketAddr,
) {
    if !edge.prefetch.on() || parts.method != Method::GET || outcome.response.status() != StatusCode::OK {
        return;
    }
    if decide::may_be_playlist(&target.path, content_type(outcome.response.headers())) {
        // A blocking reload's copy was read when its fill stored it; it is not watched (see the module
        // documentation).
        if policy::is_blocking_reload(target.query.as_deref()) {
            return;
        }
        let now = Instant::now();
        let seen = edge.prefetch.playlists.get(key);
        if let Some(seen) = &seen {
            seen.touch(edge.prefetch.epoch(), now);
        }
        let read_already = |o: &Arc<CachedObject>| {
            seen.as_ref().is_some_and(|s| std::ptr::eq(s.learned_from.as_ptr(), Arc::as_ptr(o)))
        };
        // A miss is read when the fill stores it; a hit only when this copy was never read (the bounded
        // memory forgot it, or it was stored while prefetch could not read it).
        if let Some(object) = object.filter(|o| !read_already(o)) {
            learn_in_background(edge, key, (&target.host, &target.path_and_query()), object, peer);
        }
        return;
    }
    // A fleet member's request is a fill for its own viewer, and that member prefetches for them:
    // prefetching here too would fetch each next segment twice over the fleet.
    if edge.prefetch.segments == 0 || edge.settings().upstream.arrival(&parts.headers).from_fleet {
        return;
    }
    let Some(next) = edge.prefetch.next.next_after(key) else { return };
    // The viewer's signed-URL token (checked by the `auth` phase), for the segments that need one.
    let token = edge.settings().signed_urls.as_ref().and_then(|auth| auth.token(target.query.as_deref()).ok());
    let (edge, host, token) = (edge.clone(), target.host.clone(), token.map(str::to_string));
    tokio::spawn(async move {
        for target in next.iter() {
            prefetch_segment(&edge, &host, target, token.as_deref(), peer).await;
        }
    });
}

fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok())
}

/// Reads a playlist off the client's path: a long VOD playlist takes a few milliseconds to read, and
/// a fill stores before it hands out the last bytes.
fn learn_in_background(
    edge: &Arc<Edge>,
    key: &CacheKey,
    (host, path_and_query): (&str, &str),
    object: &Arc<CachedObject>,
    peer: SocketAddr,
) {
    let (edge, key, object) = (edge.clone(), key.clone(), object.clone());
    let (host, path_and_query) = (host.to_string(), path_and_query.to_string());
    tokio::spawn(async move { learn(&edge, &key, (&host, &path_and_query), &object, peer) });
}

/// Reads a stored media playlist: remembers each segment's successors, and starts a live refresher.
fn learn(
    edge: &Arc<Edge>,
    key: &CacheKey,
    (host, path_and_query): (&str, &str),
    object: &Arc<CachedObject>,
    peer: SocketAddr,
) {
    let Some(playlist) = decide::parse_media(&object.body) else { return };
    let prefetch = &edge.prefetch;
    if prefetch.segments > 0 {
        for (segment, next) in decide::next_segments(host, path_and_query, &playlist, prefetch.segments) {
            let segment_key = edge.cache_key(host, &segment.path, segment.query.as_deref());
            prefetch.next.remember(segment_key, next);
        }
    }
    if policy::is_blocking_reload(path_and_query.split_once('?').map(|(_, query)| query)) {
        // Its successors are known now; nothing else is kept of an answer to one `_HLS_msn`, which
        // would only crowd the playlists that are watched out of the bounded memory.
        edge.metrics.record_prefetch(PrefetchEvent::PlaylistRead);
        return;
    }
    let seen = prefetch.seen(key.clone(), object, (host, path_and_query), &playlist, peer, Instant::now());
    // Counted once the successors are known: tests wait for it.
    edge.metrics.record_prefetch(PrefetchEvent::PlaylistRead);
    if playlist.live && prefetch.refresh_live {
        let token = Arc::new(());
        let entry = prefetch.refreshers.entry(key.clone()).or_insert_with(|| token.clone());
        if entry.is_fresh() {
            let refresher = Refresher { edge: edge.clone(), key: key.clone(), token };
            tokio::spawn(refresher.run(seen));
        }
    }
}

/// Fills one segment ahead of the viewer, if it is neither cached nor being fetched. Under a prefix
/// that needs a signed URL, the fill carries a token (the segment URI's own, or else the viewer's
/// `token`), and only one that opens the segment now: the origin then sees what a viewer's own miss
/// would send, and never a request it would refuse (whose answer, a 404 say, could be stored under
/// the key every authorised viewer shares).
async fn prefetch_segment(edge: &Arc<Edge>, host: &str, next: &decide::Target, token: Option<&str>, peer: SocketAddr) {
    if policy::is_blocking_reload(next.query.as_deref()) {
        // A playlist's URI that asks the origin to hold the request: not a segment to fetch ahead.
        return skip(edge, "blocking_reload");
    }
    let key = edge.cache_key(host, &next.path, next.query.as_deref());
    let Some(query) = authorised_query(edge, &next.path, next.query.as_deref(), token) else {
        return skip(edge, "unauthorised");
    };
    let stale = match edge.storage.peek(&key, &HeaderMap::new()).await {
        Some(object) if matches!(object.lifecycle(Instant::now()), Lifecycle::Fresh { .. }) => {
            return skip(edge, "cached");
        }
        other => other,
    };
    let Some(slot) = edge.prefetch.slot() else { return skip(edge, "busy") };
    let target = Target { host: host.to_string(), path: next.path.clone(), query };
    let Some(parts) = request_parts(&target) else { return skip(edge, "invalid") };
    let Some((flight, task)) = fetch::fill_in_background(
        edge,
        key.clone(),
        &parts,
        &target,
        stale.clone(),
        peer,
        edge.prefetch.max_object_size,
    ) else {
        return skip(edge, "in_flight");
    };
    edge.metrics.record_prefetch(PrefetchEvent::Started { kind: SEGMENT });
    tracing::debug!(target: "prefetch", path = %logged(edge, &target), "prefetch started");
    let edge = edge.clone();
    tokio::spawn(async move {
        // The slot is held until the fill has ended, however it ends (the permit's drop frees it).
        let _slot = slot;
        let _ = task.await;
        settle(&edge, SEGMENT, &key, &target, &flight, stale.as_ref()).await;
    });
}

/// Counts and logs how a prefetch fill ended: stored (a new copy in the cache), or not.
async fn settle(
    edge: &Edge,
    kind: &'static str,
    key: &CacheKey,
    target: &Target,
    flight: &crate::cache::coalesce::Flight,
    before: Option<&Arc<CachedObject>>,
) {
    let now_cached = edge.storage.peek(key, &HeaderMap::new()).await;
    match now_cached.filter(|o| before.is_none_or(|b| !Arc::ptr_eq(o, b))) {
        Some(object) if object.status == StatusCode::OK => {
            let bytes = object.body.len() as u64;
            edge.metrics.record_prefetch(PrefetchEvent::Completed { kind, bytes });
            tracing::debug!(target: "prefetch", kind, path = %logged(edge, target), bytes, "prefetch stored");
        }
        other => {
            let why = match (other, flight.head().await) {
                (Some(object), _) => format!("origin answered {}", object.status.as_u16()),
                (None, crate::cache::coalesce::HeadOutcome::Failed(failure)) => failure.message,
                (None, crate::cache::coalesce::HeadOutcome::Head(head)) => {
                    format!("origin answered {}; nothing stored (not storable, too large or cut off)", head.status)
                }
                (None, crate::cache::coalesce::HeadOutcome::Refreshed(_)) => "refreshed, not replaced".to_string(),
            };
            edge.metrics.record_prefetch(PrefetchEvent::Failed { kind });
            tracing::debug!(target: "prefetch", kind, path = %logged(edge, target), why, "prefetch failed");
        }
    }
}

/// The query a prefetch of `path` sends: `query` as the playlist gave it where no signed URL is needed;
/// where one is, the URI's own token, or else `viewer_token` added, provided it opens `path` now.
/// `None` when no token opens it.
fn authorised_query(
    edge: &Edge,
    path: &str,
    query: Option<&str>,
    viewer_token: Option<&str>,
) -> Option<Option<String>> {
    let settings = edge.settings();
    let Some(auth) = settings.signed_urls.as_ref().filter(|auth| auth.protects(path)) else {
        return Some(query.map(str::to_string));
    };
    let now = super::auth::now_unix();
    match auth.token(query) {
        Ok(_) => auth.check(path, query, now).is_ok().then(|| query.map(str::to_string)),
        Err(crate::signed_urls::Refusal::Missing) => {
            let token = viewer_token?;
            let pair = format!("{}={token}", auth.param());
            let query = Some(match query {
                Some(query) if !query.is_empty() => format!("{query}&{pair}"),
                _ => pair,
            });
            auth.check(path, query.as_deref(), now).is_ok().then_some(query)
        }
        Err(_) => None,
    }
}

/// The target's path and query for a log line: a signed URL's token without its signature.
fn logged(edge: &Edge, target: &Target) -> String {
    let redacted = edge.settings().signed_urls.as_ref().and_then(|auth| auth.redact(target.query.as_deref()?));
    redacted.map_or_else(|| target.path_and_query(), |query| format!("{}?{query}", target.path))
}

fn skip(edge: &Edge, reason: &'static str) {
    edge.metrics.record_prefetch(PrefetchEvent::Skipped { reason });
}

/// The request a client with no special headers would send for `target`: a GET, no header at all
/// (the fill adds the edge's own forwarding headers).
fn request_parts(target: &Target) -> Option<Parts> {
    let request = http::Request::builder().method(Method::GET).uri(target.path_and_query()).body(()).ok()?;
    Some(request.into_parts().0)
}

/// Refreshes one live playlist while it is watched. Its token in `Prefetcher::refreshers` says it is
/// the one refresher of that playlist; the token leaves with this value's drop, on every way out.
struct Refresher {
    edge: Arc<Edge>,
    key: CacheKey,
    token: Arc<()>,
}

impl Drop for Refresher {
    fn drop(&mut self) {
        let refreshers = &self.edge.prefetch.refreshers;
        if refreshers.get(&self.key).is_some_and(|t| Arc::ptr_eq(&t, &self.token)) {
            refreshers.invalidate(&self.key);
        }
    }
}

impl Refresher {
    fn mine(&self) -> bool {
        self.edge.prefetch.refreshers.get(&self.key).is_some_and(|t| Arc::ptr_eq(&t, &self.token))
    }

    async fn run(self, mut seen: Arc<PlaylistSeen>) {
        let edge = self.edge.clone();
        let epoch = edge.prefetch.epoch();
        let headers = HeaderMap::new();
        loop {
            // Evicted from the bounded set, or the playlist ended (EXT-X-ENDLIST): stop.
            if !self.mine() || !seen.live {
                return;
            }
            let Some(object) = edge.storage.peek(&self.key, &headers).await else { return };
            let ttl = match object.lifecycle(Instant::now()) {
                Lifecycle::Fresh { ttl } => ttl,
                _ => Duration::ZERO,
            };
            let delay = decide::refresh_delay(object.lifetime, ttl, seen.target_duration);
            // Never a busy loop, even when the copy is already stale and the last refresh failed.
            tokio::time::sleep(delay.max(Duration::from_millis(100))).await;
            if !decide::still_watched(seen.since_served(epoch, Instant::now()), object.lifetime, seen.target_duration) {
                skip(&edge, "not_watched");
                return;
            }
            if let Some(latest) = edge.prefetch.playlists.get(&self.key) {
                seen = latest;
            }
            // A client's miss may have stored a newer copy meanwhile: then wait for that one's end.
            let current = edge.storage.peek(&self.key, &headers).await;
            if current.as_ref().is_some_and(|c| !Arc::ptr_eq(c, &object)) {
                continue;
            }
            if !self.refresh(&seen, object).await {
                return;
            }
        }
    }

    /// One refresh; `false` when refreshing must stop (no token opens the playlist any more).
    async fn refresh(&self, seen: &PlaylistSeen, object: Arc<CachedObject>) -> bool {
        let edge = &self.edge;
        let Some(_slot) = edge.prefetch.slot() else {
            skip(edge, "busy");
            return true;
        };
        let (path, query) = match seen.path_and_query.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (seen.path_and_query.clone(), None),
        };
        if policy::is_blocking_reload(query.as_deref()) {
            // Never started for one (see `learn`); and never a held origin request for nobody.
            skip(edge, "blocking_reload");
            return false;
        }
        // The token of the viewer whose request the playlist was read from: once it no longer opens
        // the playlist, refreshing stops (the next viewer's miss refills it with their token, and
        // reading that copy starts a refresher with it).
        let Some(query) = authorised_query(edge, &path, query.as_deref(), None) else {
            skip(edge, "unauthorised");
            return false;
        };
        let target = Target { host: seen.host.clone(), path, query };
        let Some(parts) = request_parts(&target) else {
            skip(edge, "invalid");
            return true;
        };
        // The stored copy goes along for its validators: an unchanged playlist costs a 304.
        let Some((flight, task)) = fetch::fill_in_background(
            edge,
            self.key.clone(),
            &parts,
            &target,
            Some(object.clone()),
            seen.peer,
            edge.prefetch.max_object_size,
        ) else {
            skip(edge, "in_flight");
            return true;
        };
        edge.metrics.record_prefetch(PrefetchEvent::Started { kind: PLAYLIST });
        let _ = task.await;
        settle(edge, PLAYLIST, &self.key, &target, &flight, Some(&object)).await;
        true
    }
}
