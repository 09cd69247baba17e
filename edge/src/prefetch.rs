//! HLS-aware prefetch, the parts that decide (pure functions: no I/O, time passed in) and the state
//! they keep, every part of it bounded: reading a media playlist, working out which segment follows
//! which, when to refresh a live playlist, and remembering all that within a memory bound. The request
//! path's side (when to start a prefetch, the fill itself, live refreshes) is `phases/prefetch.rs`.
//!
//! The edge reads playlists as text only (it never looks inside media), with just the tags that say
//! what a player fetches next (RFC 8216):
//!
//! - §4.3.1.1 `#EXTM3U` must be the first line, and §4.3.2.1 `#EXTINF` marks a media playlist: a
//!   master playlist (§4.3.4.2 `EXT-X-STREAM-INF`) has none, and is not prefetched from.
//! - §4.1: every line that is neither blank nor starts with `#` is a URI, and an `#EXTINF` applies to
//!   the next one: that is a media segment, in playback order.
//! - §4.3.2.2 `EXT-X-BYTERANGE` segments are skipped (neither prefetched nor a reason to prefetch): the
//!   player asks for a range of a shared resource, and a whole-resource fill is a different object.
//! - §4.4.4.7 `EXT-X-GAP` segments are skipped: they are known to be missing.
//! - §4.3.2.3 `EXT-X-DISCONTINUITY` changes nothing here: the segment after it is still the one the
//!   player plays next.
//! - §4.3.3.4 `EXT-X-ENDLIST`: without it the playlist is live (§6.2.2) and changes as the server
//!   adds segments; §4.3.3.1 `EXT-X-TARGETDURATION` bounds each segment's duration, and paces the
//!   reloads of a live playlist (§6.3.4).
//!
//! Invariant: **a playlist never makes the edge fetch anywhere a client of the same Host could not
//! make it fetch.** A segment URI is resolved against the playlist's URL (RFC 3986 §5.2), must land on
//! the same host (an absolute URI to another host, or with userinfo, is refused: never an open proxy),
//! and its path must pass `origin::path::check`, the check every client request passes (no dot
//! segment, raw or encoded; no NUL). The target is then a cache key like any client's.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use moka::sync::Cache;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::cache::{CacheKey, CachedObject};
use crate::config::PrefetchConfig;
use crate::origin::path;

/// Media playlists remembered at once (which stored copy was read, live or not, when last served).
const PLAYLISTS_REMEMBERED: u64 = 4096;
/// Live playlists refreshed in the background at once; each refresh also takes a prefetch slot.
const LIVE_PLAYLISTS_REFRESHED: u64 = 256;

/// One media segment of a playlist, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The URI line, untouched.
    pub uri: String,
    /// `EXT-X-BYTERANGE` or `EXT-X-GAP` applied: never prefetched.
    pub skipped: bool,
    /// An `EXT-X-DISCONTINUITY` came before it.
    pub discontinuity: bool,
}

/// What prefetch needs from a media playlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaPlaylist {
    pub segments: Vec<Segment>,
    /// No `EXT-X-ENDLIST`: the server still adds segments (RFC 8216 §6.2.2).
    pub live: bool,
    pub target_duration: Option<Duration>,
}

/// Is a response worth reading as a playlist? By its Content-Type (RFC 8216 §4: the two registered
/// types) or, when the origin gave none that says so, the `.m3u8` extension.
pub fn may_be_playlist(path: &str, content_type: Option<&str>) -> bool {
    // Compared without lowercased copies: this runs on every GET that answers 200.
    const PLAYLIST_TYPES: [&str; 4] =
        ["application/vnd.apple.mpegurl", "audio/mpegurl", "application/x-mpegurl", "audio/x-mpegurl"];
    let essence = content_type.and_then(|t| t.split(';').next()).map(str::trim);
    if essence.is_some_and(|e| PLAYLIST_TYPES.iter().any(|t| e.eq_ignore_ascii_case(t))) {
        return true;
    }
    path.len() >= 5 && path.get(path.len() - 5..).is_some_and(|suffix| suffix.eq_ignore_ascii_case(".m3u8"))
}

/// Reads a media playlist; `None` for anything else (a master playlist, not UTF-8, no `#EXTM3U`).
pub fn parse_media(body: &[u8]) -> Option<MediaPlaylist> {
    // §4.1: playlists are UTF-8, lines end with LF or CR LF.
    let text = std::str::from_utf8(body).ok()?;
    let mut lines = text.lines().map(|l| l.trim_end_matches('\r'));
    // §4.3.1.1; a byte order mark is not allowed, but harmless to tolerate.
    if lines.next()?.trim_start_matches('\u{feff}') != "#EXTM3U" {
        return None;
    }
    let mut playlist = MediaPlaylist { segments: Vec::new(), live: true, target_duration: None };
    let (mut in_segment, mut skipped, mut discontinuity) = (false, false, false);
    for line in lines {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(tag) = line.strip_prefix('#') {
            let name = tag.split(':').next().unwrap_or(tag);
            match name {
                "EXTINF" => in_segment = true,
                "EXT-X-BYTERANGE" | "EXT-X-GAP" => skipped = true,
                "EXT-X-DISCONTINUITY" => discontinuity = true,
                "EXT-X-ENDLIST" => playlist.live = false,
                "EXT-X-TARGETDURATION" => {
                    playlist.target_duration = tag
                        .split_once(':')
                        .and_then(|(_, v)| v.trim().parse::<u32>().ok())
                        .map(|s| Duration::from_secs(u64::from(s)));
                }
                // A master playlist: its URIs are playlists, not segments.
                "EXT-X-STREAM-INF" => return None,
                _ => {}
            }
            continue;
        }
        if in_segment {
            playlist.segments.push(Segment { uri: line.to_string(), skipped, discontinuity });
        }
        (in_segment, skipped, discontinuity) = (false, false, false);
    }
    (!playlist.segments.is_empty()).then_some(playlist)
}

/// Where a prefetch goes: a path and query on the same host as the playlist.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub path: String,
    pub query: Option<String>,
}

impl Target {
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }
}

/// Why a segment URI is not prefetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("not a URI that resolves against the playlist")]
    NotAUri,
    #[error("names another host, a userinfo or a scheme other than http(s)")]
    OtherHost,
    #[error("path refused: {}", .0.reason())]
    Path(path::PathRefusal),
}

/// Resolves a segment URI against its playlist's URL (`host` as the client named it, and the
/// playlist's path and query), keeping only targets this edge would serve a client of that Host.
pub fn resolve(host: &str, playlist_path_and_query: &str, uri: &str) -> Result<Target, Refused> {
    if host.is_empty() {
        return Err(Refused::OtherHost);
    }
    let base = url::Url::parse(&format!("http://{host}{playlist_path_and_query}")).map_err(|_| Refused::NotAUri)?;
    let resolved = base.join(uri).map_err(|_| Refused::NotAUri)?;
    let same_host = matches!(resolved.scheme(), "http" | "https")
        && resolved.username().is_empty()
        && resolved.password().is_none()
        && resolved.host_str().is_some_and(|h| base.host_str().is_some_and(|b| b.eq_ignore_ascii_case(h)))
        && resolved.port() == base.port();
    if !same_host {
        return Err(Refused::OtherHost);
    }
    let target_path = resolved.path();
    path::check(target_path).map_err(Refused::Path)?;
    Ok(Target { path: target_path.to_string(), query: resolved.query().map(str::to_string) })
}

/// For each segment that may be prefetched from, the segments to fetch after it: up to `count` of the
/// ones that follow it in the playlist, leaving out those that are skipped or refused.
pub fn next_segments(
    host: &str,
    playlist_path_and_query: &str,
    playlist: &MediaPlaylist,
    count: usize,
) -> Vec<(Target, Vec<Target>)> {
    let targets: Vec<Option<Target>> = playlist
        .segments
        .iter()
        .map(|s| if s.skipped { None } else { resolve(host, playlist_path_and_query, &s.uri).ok() })
        .collect();
    let mut out = Vec::with_capacity(targets.len());
    for (i, target) in targets.iter().enumerate() {
        let Some(target) = target else { continue };
        let next: Vec<Target> =
            targets.iter().skip(i + 1).take(count).flatten().filter(|t| *t != target).cloned().collect();
        if !next.is_empty() {
            out.push((target.clone(), next));
        }
    }
    out
}

/// When to refresh a live playlist, as a delay from now: a little before its freshness runs out, so
/// that the new copy is stored before viewers would miss. The lead is a quarter of the shorter of its
/// freshness lifetime and its target duration (§6.3.4: players reload about once per target
/// duration), so a refresh never comes sooner than three quarters into a copy's life.
pub fn refresh_delay(lifetime: Duration, ttl_left: Duration, target_duration: Option<Duration>) -> Duration {
    let period = target_duration.map_or(lifetime, |t| t.min(lifetime));
    ttl_left.saturating_sub(period / 4)
}

/// Whether a live playlist last served `since_served` ago is still being watched: a player reloads it
/// at least once per target duration (§6.3.4), so two of them without a request mean nobody is.
pub fn still_watched(since_served: Duration, lifetime: Duration, target_duration: Option<Duration>) -> bool {
    let period = target_duration.unwrap_or(lifetime).max(lifetime).max(Duration::from_secs(1));
    since_served <= period.saturating_mul(2)
}

/// What the edge remembers of the playlists it served: for each segment's cache key, the segments that
/// follow it. Bounded in bytes (`prefetch.memory`): beyond it, the least recently used are forgotten,
/// which only means a prefetch that does not happen.
#[derive(Clone)]
pub struct SegmentMemory {
    next: Cache<CacheKey, Arc<[Target]>>,
}

impl SegmentMemory {
    pub fn new(capacity_bytes: u64) -> Self {
        let next = Cache::builder()
            .max_capacity(capacity_bytes)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .weigher(|key: &CacheKey, next: &Arc<[Target]>| {
                let bytes = key.weight()
                    + 64
                    + next.iter().map(|t| 48 + t.path.len() + t.query.as_ref().map_or(0, String::len)).sum::<usize>();
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .build();
        SegmentMemory { next }
    }

    pub fn remember(&self, segment: CacheKey, next: Vec<Target>) {
        self.next.insert(segment, next.into());
    }

    pub fn next_after(&self, segment: &CacheKey) -> Option<Arc<[Target]>> {
        self.next.get(segment)
    }

    /// Bytes held (as weighed), after pending evictions.
    pub fn weighted_bytes(&self) -> u64 {
        self.next.run_pending_tasks();
        self.next.weighted_size()
    }
}

/// A media playlist the edge has served, and what it learned from it.
pub struct PlaylistSeen {
    /// The stored copy it was read from: a hit on the same copy is not read again. (A `Weak` keeps no
    /// body alive, and keeps its address from being reused while this entry exists.)
    pub learned_from: Weak<CachedObject>,
    pub host: String,
    pub path_and_query: String,
    pub live: bool,
    pub target_duration: Option<Duration>,
    /// The viewer whose request led to the reading: a live refresh forwards as if for it.
    pub peer: SocketAddr,
    /// When it was last served, in milliseconds since `Prefetcher::epoch`.
    last_served_ms: AtomicU64,
}

impl PlaylistSeen {
    pub fn touch(&self, epoch: Instant, now: Instant) {
        let ms = u64::try_from(now.saturating_duration_since(epoch).as_millis()).unwrap_or(u64::MAX);
        self.last_served_ms.fetch_max(ms, Ordering::Relaxed);
    }

    pub fn since_served(&self, epoch: Instant, now: Instant) -> Duration {
        let last = epoch + Duration::from_millis(self.last_served_ms.load(Ordering::Relaxed));
        now.saturating_duration_since(last)
    }
}

/// Prefetch's share of the app state: what it remembers (all bounded) and its concurrency slots.
pub struct Prefetcher {
    pub segments: usize,
    pub refresh_live: bool,
    pub max_object_size: u64,
    pub next: SegmentMemory,
    pub playlists: Cache<CacheKey, Arc<PlaylistSeen>>,
    /// One token per live playlist being refreshed; its task stops when its token is no longer here.
    pub refreshers: Cache<CacheKey, Arc<()>>,
    slots: Arc<Semaphore>,
    epoch: Instant,
}

impl Prefetcher {
    pub fn new(config: &PrefetchConfig) -> Self {
        Prefetcher {
            segments: config.segments,
            refresh_live: config.refresh_live_playlists,
            max_object_size: config.max_object_size.0,
            next: SegmentMemory::new(config.memory.0),
            playlists: Cache::new(PLAYLISTS_REMEMBERED),
            refreshers: Cache::new(LIVE_PLAYLISTS_REFRESHED),
            slots: Arc::new(Semaphore::new(config.max_concurrent)),
            epoch: Instant::now(),
        }
    }

    /// Is any part of prefetch on?
    pub fn on(&self) -> bool {
        self.segments > 0 || self.refresh_live
    }

    /// A concurrency slot, released when the permit is dropped; `None` when all are taken.
    pub fn slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// Remembers a playlist read from `object` at `now`. Reading a copy is not watching it: when the
    /// playlist was known already, its last-served time carries over (otherwise each refresh would keep
    /// its own playlist watched for ever); a playlist seen for the first time was just served.
    pub fn seen(
        &self,
        key: CacheKey,
        object: &Arc<CachedObject>,
        target: (&str, &str),
        playlist: &MediaPlaylist,
        peer: SocketAddr,
        now: Instant,
    ) -> Arc<PlaylistSeen> {
        let seen = Arc::new(PlaylistSeen {
            learned_from: Arc::downgrade(object),
            host: target.0.to_string(),
            path_and_query: target.1.to_string(),
            live: playlist.live,
            target_duration: playlist.target_duration,
            peer,
            last_served_ms: AtomicU64::new(0),
        });
        match self.playlists.get(&key) {
            Some(known) => seen.last_served_ms.store(known.last_served_ms.load(Ordering::Relaxed), Ordering::Relaxed),
            None => seen.touch(self.epoch, now),
        }
        self.playlists.insert(key, seen.clone());
        seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VOD: &str = "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n\
        #EXTINF:2.0,\nseg0.ts\n#EXTINF:2.0,\nseg1.ts\n#EXTINF:2.0,\nseg2.ts\n#EXT-X-ENDLIST\n";

    fn paths(targets: &[Target]) -> Vec<String> {
        targets.iter().map(Target::path_and_query).collect()
    }

    #[test]
    fn vod_playlist_segments_follow_each_other() {
        let playlist = parse_media(VOD.as_bytes()).expect("media playlist");
        assert!(!playlist.live);
        assert_eq!(playlist.target_duration, Some(Duration::from_secs(2)));
        let next = next_segments("cdn.example", "/v/480p/index.m3u8", &playlist, 1);
        let got: Vec<(String, Vec<String>)> = next.iter().map(|(t, n)| (t.path_and_query(), paths(n))).collect();
        assert_eq!(
            got,
            vec![
                ("/v/480p/seg0.ts".to_string(), vec!["/v/480p/seg1.ts".to_string()]),
                ("/v/480p/seg1.ts".to_string(), vec!["/v/480p/seg2.ts".to_string()]),
            ]
        );
        let two = next_segments("cdn.example", "/v/480p/index.m3u8", &playlist, 2);
        assert_eq!(paths(&two[0].1), ["/v/480p/seg1.ts", "/v/480p/seg2.ts"]);
    }

    #[test]
    fn live_playlists_have_no_endlist_and_crlf_is_read() {
        let text = "#EXTM3U\r\n#EXT-X-TARGETDURATION:6\r\n#EXTINF:6,\r\na.ts\r\n#EXTINF:6,\r\nb.ts\r\n";
        let playlist = parse_media(text.as_bytes()).expect("media playlist");
        assert!(playlist.live);
        assert_eq!(playlist.segments.iter().map(|s| s.uri.as_str()).collect::<Vec<_>>(), ["a.ts", "b.ts"]);
    }

    #[test]
    fn master_playlists_and_other_bodies_are_not_media_playlists() {
        let master = "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=800000\n360p/index.m3u8\n";
        assert_eq!(parse_media(master.as_bytes()), None);
        assert_eq!(parse_media(b"not a playlist\n#EXTINF:1,\na.ts\n"), None);
        assert_eq!(parse_media(b"#EXTM3U\n#EXT-X-ENDLIST\n"), None);
        assert_eq!(parse_media(&[0xff, 0xfe, 0x00]), None);
    }

    #[test]
    fn relative_and_absolute_uris_resolve_on_the_same_host_only() {
        let pq = "/live/720p/index.m3u8?token=abc";
        let resolve = |uri| resolve("cdn.example:8080", pq, uri);
        assert_eq!(resolve("s1.ts").map(|t| t.path_and_query()), Ok("/live/720p/s1.ts".into()));
        assert_eq!(resolve("s1.ts?v=2").map(|t| t.path_and_query()), Ok("/live/720p/s1.ts?v=2".into()));
        assert_eq!(resolve("/other/s1.ts").map(|t| t.path_and_query()), Ok("/other/s1.ts".into()));
        // Resolution removes dot segments (RFC 3986 §5.2.4), as the player's own resolution does.
        assert_eq!(resolve("../shared/s1.ts").map(|t| t.path_and_query()), Ok("/live/shared/s1.ts".into()));
        assert_eq!(resolve("http://CDN.example:8080/x/s1.ts").map(|t| t.path_and_query()), Ok("/x/s1.ts".into()));
        for other in [
            "http://evil.example/s1.ts",
            "//evil.example/s1.ts",
            "http://cdn.example:9999/s1.ts",
            "http://cdn.example/s1.ts",
            "http://user@cdn.example:8080/s1.ts",
            "ftp://cdn.example:8080/s1.ts",
            "file:///etc/passwd",
            "http://169.254.169.254/latest/meta-data",
        ] {
            assert_eq!(resolve(other), Err(Refused::OtherHost), "{other}");
        }
        assert_eq!(resolve("data:,hello"), Err(Refused::OtherHost));
    }

    #[test]
    fn dot_segments_the_resolver_leaves_are_refused_like_a_clients() {
        for uri in ["..%2f..%2fsecret.ts", "a/..%5csecret.ts", "seg%00.ts"] {
            let refused = resolve("cdn.example", "/v/index.m3u8", uri);
            assert!(matches!(refused, Err(Refused::Path(_))), "{uri}: {refused:?}");
        }
        // A client without a Host (HTTP/1.0) gets no prefetch: there is no host to stay on.
        assert_eq!(resolve("", "/v/index.m3u8", "a.ts"), Err(Refused::OtherHost));
    }

    #[test]
    fn byte_ranges_gaps_and_refused_uris_are_skipped_and_discontinuities_are_crossed() {
        let text = "#EXTM3U\n#EXT-X-TARGETDURATION:4\n\
            #EXTINF:4,\na.ts\n\
            #EXT-X-BYTERANGE:1000@0\n#EXTINF:4,\nall.ts\n\
            #EXTINF:4,\nb.ts\n\
            #EXT-X-GAP\n#EXTINF:4,\ngap.ts\n\
            #EXTINF:4,\nhttp://evil.example/c.ts\n\
            #EXT-X-DISCONTINUITY\n#EXTINF:4,\nd.ts\n#EXT-X-ENDLIST\n";
        let playlist = parse_media(text.as_bytes()).expect("media playlist");
        assert_eq!(playlist.segments.len(), 6);
        assert!(playlist.segments[1].skipped && playlist.segments[3].skipped);
        assert!(playlist.segments[5].discontinuity);
        let next = next_segments("cdn.example", "/index.m3u8", &playlist, 1);
        let got: Vec<(String, Vec<String>)> = next.iter().map(|(t, n)| (t.path_and_query(), paths(n))).collect();
        // a → (all.ts skipped) nothing within one; b → (gap skipped) nothing; with three, b reaches d.
        assert_eq!(got, Vec::<(String, Vec<String>)>::new());
        let next = next_segments("cdn.example", "/index.m3u8", &playlist, 3);
        let got: Vec<(String, Vec<String>)> = next.iter().map(|(t, n)| (t.path_and_query(), paths(n))).collect();
        assert_eq!(
            got,
            vec![("/a.ts".to_string(), vec!["/b.ts".to_string()]), ("/b.ts".to_string(), vec!["/d.ts".to_string()])]
        );
    }

    #[test]
    fn content_types_and_extensions_mark_playlists() {
        assert!(may_be_playlist("/x", Some("application/vnd.apple.mpegurl")));
        assert!(may_be_playlist("/x", Some("Audio/MPEGURL; charset=utf-8")));
        assert!(may_be_playlist("/a/index.M3U8", None));
        assert!(may_be_playlist("/a/index.m3u8", Some("text/plain")));
        assert!(!may_be_playlist("/a/seg.ts", Some("video/mp2t")));
        // A suffix that starts inside a multi-byte character is not ".m3u8" (and does not panic).
        assert!(!may_be_playlist("/\u{e9}\u{e9}\u{e9}", None));
    }

    #[test]
    fn live_refresh_comes_just_before_expiry_and_stops_when_unwatched() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        // A 1 s playlist TTL with 1 s segments: refreshed 250 ms before it runs out.
        assert_eq!(refresh_delay(s(1), s(1), Some(s(1))), ms(750));
        // A 1 s TTL with 6 s segments: the lead follows the TTL, never a refresh loop.
        assert_eq!(refresh_delay(s(1), ms(900), Some(s(6))), ms(650));
        assert_eq!(refresh_delay(s(4), ms(100), None), Duration::ZERO);
        assert!(still_watched(s(1), s(1), Some(s(1))));
        assert!(!still_watched(s(3), s(1), Some(s(1))));
        assert!(still_watched(s(11), s(1), Some(s(6))));
        assert!(!still_watched(s(13), s(1), Some(s(6))));
    }

    #[test]
    fn segment_memory_stays_within_its_bytes() {
        let memory = SegmentMemory::new(64 << 10);
        for i in 0..10_000 {
            let key = CacheKey::primary("cdn.example", &format!("/v/seg{i}.ts"), None, &[]);
            memory.remember(key, vec![Target { path: format!("/v/seg{}.ts", i + 1), query: None }]);
        }
        assert!(memory.weighted_bytes() <= 64 << 10, "{}", memory.weighted_bytes());
        // The most recent ones are still known.
        let last = CacheKey::primary("cdn.example", "/v/seg9999.ts", None, &[]);
        assert_eq!(memory.next_after(&last).map(|n| n[0].path.clone()), Some("/v/seg10000.ts".into()));
    }
}
