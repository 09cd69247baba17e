//! The playlists of one playback: media playlists per variant (reloaded on schedule while live, RFC
//! 8216 §6.3.4), where the next segment is, and the ladder the ABR chooses from.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use url::Url;

use super::monitor::MONITOR_INTERVAL;
use super::seams::Fetch;
use super::{PlayError, PlayerConfig};
use crate::abr::history::Upcoming;
use crate::abr::Rung;
use crate::fetch::FetchError;
use crate::playlist::{self, MediaPlaylist, Parsed, Part, PartPosition, PlaylistError, Segment, Variant};

/// Media playlists per variant, reloaded on schedule for live streams.
#[derive(Default)]
pub(super) struct Playlists {
    pub loaded: HashMap<usize, LoadedPlaylist>,
    /// Live reloads done since the download loop last took them (for its `reload` events).
    pub reloads: Vec<Reload>,
}

/// One live playlist reload.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Reload {
    pub rendition: usize,
    /// A blocking reload (draft-pantos-hls-rfc8216bis §6.2.5.2): what it asked for.
    pub blocking: Option<PartPosition>,
    pub wait_ms: u64,
}

/// What the next part position resolved to (low-latency live).
pub(super) enum NextPart {
    /// The part, as a segment of its own: its URI, duration and range, and the date and init
    /// section of the segment it belongs to (the date moved on by the parts before it).
    Part(Box<Segment>),
    /// Segment `msn` is complete and all its parts were had: go on with the next one.
    SegmentDone,
    /// The segment is listed but no longer its parts: fetch it whole.
    Whole(Box<Segment>),
    End,
    /// Fell out of the live window: continue from this sequence, part 0.
    Skip(u64),
}

pub(super) struct LoadedPlaylist {
    pub playlist: MediaPlaylist,
    pub loaded_at: Instant,
    /// The last reload brought no new segment (the next one comes sooner).
    pub unchanged: bool,
}

/// What the next segment position resolved to.
pub(super) enum Next {
    Segment(Box<Segment>),
    /// The stream is over (ENDLIST reached).
    End,
    /// The position fell out of a live window; continue from this sequence.
    Skip(u64),
}

impl Playlists {
    pub async fn load(&mut self, fetcher: &impl Fetch, variant: &Variant) -> Result<&LoadedPlaylist, PlayError> {
        if let std::collections::hash_map::Entry::Vacant(entry) = self.loaded.entry(variant.index) {
            let playlist = fetch_media_playlist(fetcher, &variant.uri).await?;
            entry.insert(LoadedPlaylist { playlist, loaded_at: Instant::now(), unchanged: false });
        }
        self.loaded.get(&variant.index).ok_or_else(|| PlayError::NoRendition("playlist vanished".into()))
    }

    /// The segment `sequence` of `variant`, waiting for live reloads as needed. Returns `Ok(None)` if
    /// `stop` became true while waiting.
    pub async fn next(
        &mut self,
        fetcher: &impl Fetch,
        variant: &Variant,
        sequence: u64,
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Result<Option<Next>, PlayError> {
        loop {
            let loaded = self.load(fetcher, variant).await?;
            let playlist = &loaded.playlist;
            if let Some(segment) = playlist.segment(sequence) {
                return Ok(Some(Next::Segment(Box::new(segment.clone()))));
            }
            let first = playlist.segments.first().map_or(0, |s| s.sequence);
            if sequence < first {
                return Ok(Some(Next::Skip(first)));
            }
            if playlist.ended {
                return Ok(Some(Next::End));
            }
            let previous_last = playlist.last_sequence();
            if playlist.server_control.can_block_reload {
                // §6.2.5.2 / §6.3.4: ask for the playlist that holds the segment; the server answers
                // when it does, instead of the client polling.
                self.reload(fetcher, variant, Some(PartPosition { msn: sequence, part: u64::MAX })).await?;
                continue;
            }
            // Live: reload after a target duration, or half of one after an unchanged reload.
            let interval = if loaded.unchanged { playlist.target_duration_s / 2.0 } else { playlist.target_duration_s };
            let due = loaded.loaded_at + Duration::from_secs_f64(interval.max(0.1));
            while Instant::now() < due {
                if stop() {
                    return Ok(None);
                }
                tokio::time::sleep(MONITOR_INTERVAL.min(due.saturating_duration_since(Instant::now()))).await;
            }
            let started = Instant::now();
            let fresh = fetch_media_playlist(fetcher, &variant.uri).await?;
            let unchanged = fresh.last_sequence() == previous_last;
            self.note(variant, None, started);
            self.loaded.insert(variant.index, LoadedPlaylist { playlist: fresh, loaded_at: Instant::now(), unchanged });
        }
    }

    /// The part at `at` of `variant` (low-latency live), waiting for it with blocking reloads when
    /// the server offers them (draft-pantos-hls-rfc8216bis §6.2.5.2), polling every part target
    /// otherwise. Returns `Ok(None)` if `stop` became true while waiting.
    pub async fn next_part(
        &mut self,
        fetcher: &impl Fetch,
        variant: &Variant,
        at: PartPosition,
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Result<Option<NextPart>, PlayError> {
        if !self.loaded.contains_key(&variant.index) {
            // A switch: the other renditions' reports (§4.4.5.4) say whether this one can block, so
            // the first request for it can already ask for the part needed rather than a playlist
            // that may not hold it yet.
            let reported = self.loaded.values().any(|loaded| {
                loaded.playlist.server_control.can_block_reload
                    && loaded.playlist.rendition_reports.iter().any(|r| same_resource(&r.uri, &variant.uri))
            });
            if reported {
                self.reload(fetcher, variant, Some(at)).await?;
            }
        }
        loop {
            if stop() {
                return Ok(None);
            }
            let loaded = self.load(fetcher, variant).await?;
            let playlist = &loaded.playlist;
            if let Some(part) = playlist.part(at) {
                let Some(segment) = part_as_segment(playlist, at, part) else {
                    return Err(PlayError::NoRendition(format!(
                        "{}: part {}.{} has no segment before it to take its init section from",
                        variant.uri, at.msn, at.part
                    )));
                };
                return Ok(Some(NextPart::Part(Box::new(segment))));
            }
            if let Some(segment) = playlist.segment(at.msn) {
                if segment.parts.is_empty() {
                    if at.part == 0 {
                        return Ok(Some(NextPart::Whole(Box::new(segment.clone()))));
                    }
                    tracing::warn!("the parts of segment {} left the playlist: skipping to the next", at.msn);
                    return Ok(Some(NextPart::Skip(at.msn.saturating_add(1))));
                }
                // Complete, and `at` is past its last part.
                return Ok(Some(NextPart::SegmentDone));
            }
            let first = playlist.segments.first().map_or(playlist.media_sequence, |s| s.sequence);
            if at.msn < first {
                return Ok(Some(NextPart::Skip(first)));
            }
            if playlist.ended {
                return Ok(Some(NextPart::End));
            }
            if playlist.server_control.can_block_reload {
                self.reload(fetcher, variant, Some(at)).await?;
                continue;
            }
            // No blocking reloads: poll every part target (the playlist changes that often).
            let interval = playlist.part_target_s.unwrap_or(playlist.target_duration_s / 2.0);
            let due = loaded.loaded_at + Duration::from_secs_f64(interval.max(0.1));
            while Instant::now() < due {
                if stop() {
                    return Ok(None);
                }
                tokio::time::sleep(MONITOR_INTERVAL.min(due.saturating_duration_since(Instant::now()))).await;
            }
            self.reload(fetcher, variant, None).await?;
        }
    }

    /// Reloads `variant`'s playlist: a blocking reload for `at` (a `part` of `u64::MAX` asks for
    /// the whole segment), or a plain one.
    async fn reload(
        &mut self,
        fetcher: &impl Fetch,
        variant: &Variant,
        at: Option<PartPosition>,
    ) -> Result<(), PlayError> {
        let started = Instant::now();
        let url = match at {
            Some(at) => blocking_url(&variant.uri, at.msn, (at.part != u64::MAX).then_some(at.part)),
            None => variant.uri.clone(),
        };
        let previous = self.loaded.get(&variant.index).map(|l| &l.playlist);
        let previous_last = previous.and_then(MediaPlaylist::last_sequence);
        let wait_s = previous.and_then(|p| p.part_target_s).unwrap_or(0.5);
        let fresh = match fetch_media_playlist(fetcher, &url).await {
            // §6.2.5.2: a server answers 400 to a request too far ahead of the playlist (a rendition
            // behind the one switched from, say). Not fatal: a plain reload a part target later.
            Err(PlayError::Fetch(FetchError::Status { status, .. }))
                if at.is_some() && (400..500).contains(&status) =>
            {
                tracing::warn!("blocking reload {url} answered {status}: reloading without directives");
                tokio::time::sleep(Duration::from_secs_f64(wait_s.clamp(0.1, 2.0))).await;
                fetch_media_playlist(fetcher, &variant.uri).await?
            }
            other => other?,
        };
        let unchanged = fresh.last_sequence() == previous_last;
        self.note(variant, at, started);
        self.loaded.insert(variant.index, LoadedPlaylist { playlist: fresh, loaded_at: Instant::now(), unchanged });
        Ok(())
    }

    fn note(&mut self, variant: &Variant, blocking: Option<PartPosition>, started: Instant) {
        let wait_ms = started.elapsed().as_millis() as u64;
        // Only the video loop takes them; the audio and subtitle loops' are dropped past a bound.
        if self.reloads.len() >= 64 {
            return;
        }
        self.reloads.push(Reload { rendition: variant.index, blocking, wait_ms });
    }

    /// Whether `variant`'s loaded playlist is final and ends before `sequence`: the stream is over,
    /// with no decision to make.
    pub fn is_past_end(&self, variant: &Variant, sequence: u64) -> bool {
        self.loaded.get(&variant.index).is_some_and(|loaded| {
            let playlist = &loaded.playlist;
            playlist.ended && playlist.last_sequence().is_some_and(|last| sequence > last)
        })
    }

    /// What the loaded playlist of `variant` says about segment `sequence` for the ABR: its duration
    /// (the target duration if it is not listed yet, 4 s before any playlist), the media listed after
    /// it, and whether the list is final.
    pub fn upcoming(&self, variant: &Variant, sequence: u64) -> Upcoming {
        match self.loaded.get(&variant.index) {
            Some(loaded) => {
                let playlist = &loaded.playlist;
                Upcoming {
                    duration_s: playlist.segment(sequence).map_or(playlist.target_duration_s, |s| s.duration_s),
                    listed_after_s: playlist
                        .segments
                        .iter()
                        .filter(|s| s.sequence > sequence)
                        .map(|s| s.duration_s)
                        .sum(),
                    ended: playlist.ended,
                }
            }
            None => Upcoming { duration_s: 4.0, listed_after_s: 0.0, ended: false },
        }
    }
}

/// `uri` with the blocking-reload directives `_HLS_msn` (and `_HLS_part`) of draft-pantos-hls-rfc8216bis
/// §6.2.5.1, after the URI's own query (a signed token stays) without any earlier directives.
pub(super) fn blocking_url(uri: &Url, msn: u64, part: Option<u64>) -> Url {
    let mut url = without_directives(uri);
    {
        let mut query = url.query_pairs_mut();
        query.append_pair("_HLS_msn", &msn.to_string());
        if let Some(part) = part {
            query.append_pair("_HLS_part", &part.to_string());
        }
    }
    url
}

/// `url` without `_HLS_` directives (§6.2.5.1): what the playlist's relative URIs resolve against,
/// so that segments and parts never carry them (each would be a different URL to every cache).
pub(super) fn without_directives(url: &Url) -> Url {
    let mut clean = url.clone();
    if url.query_pairs().any(|(name, _)| name.starts_with("_HLS_")) {
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(name, _)| !name.starts_with("_HLS_"))
            .map(|(n, v)| (n.into_owned(), v.into_owned()))
            .collect();
        if kept.is_empty() {
            clean.set_query(None);
        } else {
            clean.query_pairs_mut().clear().extend_pairs(kept);
        }
    }
    clean
}

/// Whether two URLs name the same playlist, directives and all query aside.
fn same_resource(a: &Url, b: &Url) -> bool {
    let (mut a, mut b) = (a.clone(), b.clone());
    a.set_query(None);
    b.set_query(None);
    a == b
}

/// Part `at` of `playlist` as a segment of its own: the parent segment's init section, key and date
/// (moved on by the parts before it), so the push treats it like a segment.
pub(super) fn part_as_segment(playlist: &MediaPlaylist, at: PartPosition, part: &Part) -> Option<Segment> {
    let parts = playlist.parts_of(at.msn)?;
    let before_s: f64 = parts.iter().take(usize::try_from(at.part).ok()?).map(|p| p.duration_s).sum();
    let (parent_date, init, key, discontinuity, discontinuity_sequence) = match playlist.segment(at.msn) {
        Some(segment) => (
            segment.program_date_time,
            segment.init.clone(),
            segment.key.clone(),
            segment.discontinuity,
            segment.discontinuity_sequence,
        ),
        None => {
            let last = playlist.segments.last();
            let (key, domain) = (last.and_then(|s| s.key.clone()), last.map_or(0, |s| s.discontinuity_sequence));
            (playlist.trailing_date_time, playlist.trailing_init.clone(), key, false, domain)
        }
    };
    let program_date_time = parent_date
        .and_then(|d| d.checked_add_signed(chrono::TimeDelta::milliseconds((before_s * 1000.0).round() as i64)));
    Some(Segment {
        sequence: at.msn,
        uri: part.uri.clone(),
        duration_s: part.duration_s,
        range: part.range,
        key,
        init,
        discontinuity: discontinuity && at.part == 0,
        discontinuity_sequence,
        gap: false,
        program_date_time,
        parts: Vec::new(),
    })
}

async fn fetch_media_playlist(fetcher: &impl Fetch, url: &Url) -> Result<MediaPlaylist, PlayError> {
    let (body, from) = fetcher.get_playlist(url).await?;
    let from = without_directives(&from);
    match playlist::parse(&body, &from)? {
        Parsed::Media(media) => Ok(*media),
        Parsed::Master(_) => Err(PlaylistError::Unsupported {
            url: url.to_string(),
            reason: "a master playlist where a media playlist was expected".into(),
        }
        .into()),
    }
}

/// The ladder the ABR chooses from: variants sorted by bitrate, after the caps.
pub(super) struct Ladder {
    pub variants: Vec<Variant>,
    pub rungs: Vec<Rung>,
    pub max_rung: usize,
}

pub(super) fn build_ladder(mut variants: Vec<Variant>, config: &PlayerConfig) -> Result<Ladder, PlayError> {
    if let Some(pinned) = config.rendition {
        let count = variants.len();
        let variant = variants.into_iter().find(|v| v.index == pinned).ok_or_else(|| {
            PlayError::NoRendition(format!("--rendition {pinned} but the playlist has {count} variant(s)"))
        })?;
        variants = vec![variant];
    }
    variants.sort_by_key(|v| (v.bandwidth_bps, v.index));
    let rungs: Vec<Rung> =
        variants.iter().map(|v| Rung { bitrate_bps: v.bandwidth_bps, height: v.resolution.map(|r| r.1) }).collect();
    let allowed = |r: &Rung| {
        config.max_bitrate_bps.is_none_or(|max| r.bitrate_bps <= max)
            && config.max_height.is_none_or(|max| r.height.is_none_or(|h| h <= max))
    };
    let Some(max_rung) = rungs.iter().rposition(allowed) else {
        return Err(PlayError::NoRendition(format!(
            "none of the {} variant(s) fits --max-bitrate/--max-height",
            rungs.len()
        )));
    };
    Ok(Ladder { variants, rungs, max_rung })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    /// §6.2.5.1: the directives go after the URI's own query (a signed token stays), replacing any.
    #[test]
    fn blocking_urls_keep_the_query_and_replace_old_directives() {
        let plain = url("http://e.test/v/index.m3u8");
        assert_eq!(blocking_url(&plain, 5, Some(2)).as_str(), "http://e.test/v/index.m3u8?_HLS_msn=5&_HLS_part=2");
        assert_eq!(blocking_url(&plain, 5, None).as_str(), "http://e.test/v/index.m3u8?_HLS_msn=5");
        let signed = url("http://e.test/v/index.m3u8?token=T&_HLS_msn=1&_HLS_part=0");
        assert_eq!(
            blocking_url(&signed, 6, Some(0)).as_str(),
            "http://e.test/v/index.m3u8?token=T&_HLS_msn=6&_HLS_part=0"
        );
        assert_eq!(without_directives(&signed).as_str(), "http://e.test/v/index.m3u8?token=T");
        assert_eq!(without_directives(&url("http://e.test/i.m3u8?_HLS_msn=1")).as_str(), "http://e.test/i.m3u8");
        assert!(same_resource(&signed, &plain));
    }

    /// A part played alone carries its segment's init section and a date moved on by the parts before.
    #[test]
    fn a_part_as_a_segment_has_its_own_date_and_the_segments_init() {
        let text = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-PART-INF:PART-TARGET=0.5\n#EXT-X-MAP:URI=\"init.mp4\"\n#EXT-X-PROGRAM-DATE-TIME:2026-12-01T10:00:00.000Z\n#EXT-X-PART:DURATION=0.5,URI=\"a.0.m4s\",INDEPENDENT=YES\n#EXT-X-PART:DURATION=0.5,URI=\"a.1.m4s\",INDEPENDENT=YES\n#EXTINF:1.0,\na.m4s\n#EXT-X-PROGRAM-DATE-TIME:2026-12-01T10:00:01.000Z\n#EXT-X-PART:DURATION=0.5,URI=\"b.0.m4s\",INDEPENDENT=YES\n#EXT-X-PART:DURATION=0.5,URI=\"b.1.m4s\",INDEPENDENT=YES\n";
        let Ok(Parsed::Media(playlist)) = playlist::parse(text.as_bytes(), &url("http://e.test/v/index.m3u8")) else {
            panic!("media expected")
        };
        for (at, uri, date) in [
            (PartPosition { msn: 0, part: 1 }, "a.1.m4s", "2026-12-01T10:00:00.500+00:00"),
            (PartPosition { msn: 1, part: 1 }, "b.1.m4s", "2026-12-01T10:00:01.500+00:00"),
        ] {
            let part = playlist.part(at).unwrap_or_else(|| panic!("{at:?} listed"));
            let segment = part_as_segment(&playlist, at, part).unwrap_or_else(|| panic!("{at:?}"));
            assert_eq!(segment.uri.as_str(), format!("http://e.test/v/{uri}"));
            assert_eq!((segment.sequence, segment.duration_s), (at.msn, 0.5));
            assert_eq!(segment.init.map(|i| i.uri.to_string()).as_deref(), Some("http://e.test/v/init.mp4"));
            assert_eq!(segment.program_date_time.map(|d| d.to_rfc3339()).as_deref(), Some(date));
        }
    }
}
