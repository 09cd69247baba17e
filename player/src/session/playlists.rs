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
use crate::playlist::{self, MediaPlaylist, Parsed, PlaylistError, Segment, Variant};

/// Media playlists per variant, reloaded on schedule for live streams.
pub(super) struct Playlists {
    pub loaded: HashMap<usize, LoadedPlaylist>,
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
            // Live: reload after a target duration, or half of one after an unchanged reload.
            let interval = if loaded.unchanged { playlist.target_duration_s / 2.0 } else { playlist.target_duration_s };
            let due = loaded.loaded_at + Duration::from_secs_f64(interval.max(0.1));
            while Instant::now() < due {
                if stop() {
                    return Ok(None);
                }
                tokio::time::sleep(MONITOR_INTERVAL.min(due.saturating_duration_since(Instant::now()))).await;
            }
            let previous_last = playlist.last_sequence();
            let fresh = fetch_media_playlist(fetcher, &variant.uri).await?;
            let unchanged = fresh.last_sequence() == previous_last;
            self.loaded.insert(variant.index, LoadedPlaylist { playlist: fresh, loaded_at: Instant::now(), unchanged });
        }
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

async fn fetch_media_playlist(fetcher: &impl Fetch, url: &Url) -> Result<MediaPlaylist, PlayError> {
    let (body, from) = fetcher.get_playlist(url).await?;
    match playlist::parse(&body, &from)? {
        Parsed::Media(media) => Ok(media),
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
