//! The subtitle rendition's loop (`EXT-X-MEDIA:TYPE=SUBTITLES`, RFC 8216 §4.3.4.1): its media
//! playlist (reloaded while live, like a variant's), its WebVTT segments fetched as the video's
//! pushed media reaches them, their cues written as `subtitle` events and kept for the overlay, which
//! the monitor updates through [`render`]. It runs beside the video's download loop. Subtitles are an
//! extra: a fetch or parse failure is a warning and ends subtitles, never playback.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use thiserror::Error;

use super::keys::Keys;
use super::playlists::{Next, Playlists};
use super::seams::Fetch;
use super::state::{lock, wait_for_seek, wait_until, Playback};
use super::PlayError;
use crate::events::Event;
use crate::playlist::{Rendition, TimelineAnchor, Variant};
use crate::webvtt::{self, active_cue, Cue, VideoStart, WebVttError};

#[derive(Debug, Error)]
enum SubtitleError {
    #[error(transparent)]
    Play(#[from] PlayError),
    #[error("{url}: {source}")]
    Cues { url: String, source: WebVttError },
}

/// What the overlay draws from: the cues fetched (in media time) that have not ended yet.
#[derive(Debug, Default)]
pub(super) struct SubtitleTrack {
    /// Media time where the pipeline's running time 0 sits (the first video segment played; moved by
    /// each seek).
    pub media_start_s: f64,
    pub cues: Vec<Cue>,
    /// The text the overlay shows now.
    pub shown: Option<String>,
}

pub(super) struct SubtitleLoader<'a, F: Fetch> {
    pub fetcher: &'a F,
    /// The rendition's playlist, as a one-variant "ladder" for [`Playlists`].
    pub playlist: Variant,
    pub language: Option<String>,
    pub playlists: Playlists,
    pub keys: Keys,
    /// Bytes fetched for subtitles: playlists, segments, keys.
    pub bytes: u64,
}

impl<'a, F: Fetch> SubtitleLoader<'a, F> {
    pub fn new(fetcher: &'a F, rendition: &Rendition) -> Option<Self> {
        let playlist = Variant::media_playlist(rendition.uri.clone()?);
        Some(SubtitleLoader {
            fetcher,
            playlist,
            language: rendition.language.clone(),
            playlists: Playlists::default(),
            keys: Keys::default(),
            bytes: 0,
        })
    }

    /// Fetches cues from `start_s` of media (`None`: the live edge, or the start of a VOD) until the
    /// rendition ends, the video has nothing more to play, or playback finishes. A failure is logged
    /// and ends subtitles only.
    pub async fn run(&mut self, shared: &Arc<Mutex<Playback>>, start_s: Option<f64>) {
        if let Err(error) = self.fetch_cues(shared, start_s).await {
            tracing::warn!("subtitles stopped: {error}");
        }
    }

    async fn fetch_cues(&mut self, shared: &Arc<Mutex<Playback>>, start_s: Option<f64>) -> Result<(), SubtitleError> {
        let first = self.playlists.load(self.fetcher, &self.playlist).await?.playlist.clone();
        let mut sequence = match start_s {
            Some(seconds) => first.sequence_at(seconds).or(first.last_sequence()).unwrap_or(0),
            None if !first.ended => first.live_start_sequence().unwrap_or(0),
            None => first.segments.first().map_or(0, |s| s.sequence),
        };
        // Media time where the next segment starts: on the playlist's timeline for a VOD; a live
        // playback's timeline starts where it joined.
        let mut segment_start_s = if first.ended {
            first.segments.iter().take_while(|s| s.sequence < sequence).map(|s| s.duration_s).sum()
        } else {
            0.0
        };
        // Cues already written: a cue that spans a segment boundary is in both segments (RFC 8216
        // §3.5), and is one cue.
        let mut written: HashSet<(i64, i64, String)> = HashSet::new();
        let mut generation = lock(shared).seek.generation;
        loop {
            if let Some((at, start_s)) = self.follow_seek(shared, &mut generation, (sequence, segment_start_s)) {
                (sequence, segment_start_s) = (at, start_s);
            }
            if !wait_for_video(shared, segment_start_s, generation).await {
                // Nothing more to fetch unless a seek comes (back) before playback ends.
                if wait_for_seek(shared, generation).await {
                    continue;
                }
                return Ok(());
            }
            if lock(shared).seek.generation != generation {
                continue;
            }
            let stopping = Arc::clone(shared);
            let stop = move || lock(&stopping).finish.is_some();
            let segment = match self.playlists.next(self.fetcher, &self.playlist, sequence, &stop).await? {
                None | Some(Next::End) => {
                    if wait_for_seek(shared, generation).await {
                        continue;
                    }
                    return Ok(());
                }
                Some(Next::Skip(to)) => {
                    tracing::warn!("subtitles fell behind the live window: skipping from {sequence} to {to}");
                    sequence = to;
                    continue;
                }
                Some(Next::Segment(segment)) => *segment,
            };
            let data = self.fetcher.get(&segment.uri, segment.range).await.map_err(PlayError::from)?;
            self.bytes = self.bytes.saturating_add(data.len() as u64);
            let data = self.keys.decrypt(self.fetcher, &segment, data.to_vec(), &mut self.bytes).await?;
            let file =
                webvtt::parse(&data).map_err(|source| SubtitleError::Cues { url: segment.uri.to_string(), source })?;
            if lock(shared).seek.generation != generation {
                // A seek came while this segment downloaded: it belongs to the old position.
                continue;
            }
            let video = match file.timestamp_map {
                Some(_) => video_start(shared, segment.discontinuity_sequence),
                None => None,
            };
            let offset_s = file.media_offset_s(video);
            written.retain(|(_, end_ms, _)| *end_ms as f64 / 1000.0 > segment_start_s);
            let mut state = lock(shared);
            for cue in file.cues {
                let start_s = round_ms(cue.start_s + offset_s);
                let end_s = round_ms(cue.end_s + offset_s);
                let key = ((start_s * 1000.0) as i64, (end_s * 1000.0) as i64, cue.text.clone());
                if end_s <= 0.0 {
                    continue;
                }
                // Written once; after a seek back the cues of the new position are fetched again
                // (those the loop had passed are written again too).
                if written.insert(key) {
                    state.event(Event::Subtitle {
                        start_s,
                        end_s,
                        text: cue.text.clone(),
                        language: self.language.clone(),
                    });
                }
                let cue = Cue { start_s, end_s, text: cue.text };
                if let Some(track) = state.subtitles.as_mut().filter(|track| !track.cues.contains(&cue)) {
                    track.cues.push(cue);
                }
            }
            drop(state);
            sequence = segment.sequence.saturating_add(1);
            segment_start_s += segment.duration_s;
        }
    }
}

impl<F: Fetch> SubtitleLoader<'_, F> {
    /// After a seek the download loop carried out: the subtitle segment holding the seek's position,
    /// and where it starts, found from `at` (the next segment and its start, on the same axis).
    fn follow_seek(&self, shared: &Mutex<Playback>, generation: &mut u64, at: (u64, f64)) -> Option<(u64, f64)> {
        let seek = {
            let state = lock(shared);
            if state.seek.generation == *generation {
                return None;
            }
            *generation = state.seek.generation;
            state.seek
        };
        let playlist = &self.playlists.loaded.get(&self.playlist.index)?.playlist;
        let anchor = TimelineAnchor { sequence: at.0, media_s: at.1 };
        let placed = if playlist.ended {
            let sequence = playlist.sequence_at(seek.media_s).or(playlist.last_sequence())?;
            Some((sequence, playlist.segments.iter().take_while(|s| s.sequence < sequence).map(|s| s.duration_s).sum()))
        } else {
            playlist.segment_on(anchor, seek.media_s)
        };
        if placed.is_none() {
            tracing::warn!("subtitles cannot follow the seek: their window has moved past this playback");
        }
        placed
    }
}

fn round_ms(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

/// Where the video of discontinuity domain `domain` sits, for a WebVTT `X-TIMESTAMP-MAP` of the same
/// domain. [`wait_for_video`] has seen it pushed; `None` if its timestamp could not be read.
fn video_start(shared: &Mutex<Playback>, domain: u64) -> Option<VideoStart> {
    lock(shared).video_domains.get(&domain).copied()
}

/// Waits until the video pushed into the pipeline reaches media time `segment_start_s`: subtitles keep
/// up with the video and no further. False when the loop should stop: playback finished, or the video
/// will never get there (its last segment, or `--duration`, is pushed). True at once when a seek
/// came after `generation`.
async fn wait_for_video(shared: &Mutex<Playback>, segment_start_s: f64, generation: u64) -> bool {
    wait_until(shared, |state| {
        if state.finish.is_some() {
            return Some(false);
        }
        if state.seek.generation != generation {
            return Some(true);
        }
        let media_start_s = state.subtitles.as_ref().map_or(0.0, |track| track.media_start_s);
        let pushed = state.play_requested_at.is_some();
        if pushed && segment_start_s < media_start_s + state.pushed_media_s {
            return Some(true);
        }
        (state.all_pushed || state.enough_pushed()).then_some(false)
    })
    .await
}

/// Updates the overlay from the playback position: the cue showing then, when subtitles are
/// visible, else nothing. Sets the text only when it changes, and forgets cues that are over.
pub(super) fn render(state: &mut Playback) {
    let played_s = state.played_s();
    let visible = state.subtitles_visible;
    let Playback { subtitles, sink, .. } = state;
    let Some(track) = subtitles else { return };
    let position_s = track.media_start_s + played_s;
    track.cues.retain(|cue| cue.end_s > position_s);
    let text = if visible { active_cue(&track.cues, position_s) } else { None };
    if text == track.shown.as_deref() {
        return;
    }
    sink.set_subtitle(text);
    track.shown = text.map(str::to_owned);
    let shown = track.shown.clone();
    state.event(Event::SubtitleShown { text: shown, position_s: round_ms(position_s) });
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::events::EventWriter;
    use crate::pipeline::{PipelineError, PipelineEvent, Track};
    use crate::session::seams::MediaSink;
    use crate::stall::StallTracker;

    /// Plays at the running time the test sets; records what the overlay is told.
    #[derive(Clone, Default)]
    struct OverlaySink {
        running_s: Arc<Mutex<f64>>,
        shown: Arc<Mutex<Vec<Option<String>>>>,
    }

    impl MediaSink for OverlaySink {
        fn push(&self, _: Track, _: Vec<u8>, _: bool) -> Result<(), PipelineError> {
            Ok(())
        }
        fn play(&self) -> Result<(), PipelineError> {
            Ok(())
        }
        fn pause(&self) -> Result<(), PipelineError> {
            Ok(())
        }
        fn end_of_stream(&self, _: Track) -> Result<(), PipelineError> {
            Ok(())
        }
        fn running_time_s(&self) -> Option<f64> {
            self.running_s.lock().ok().map(|t| *t)
        }
        fn poll(&self) -> Vec<PipelineEvent> {
            Vec::new()
        }
        fn set_subtitle(&self, text: Option<&str>) {
            if let Ok(mut shown) = self.shown.lock() {
                shown.push(text.map(str::to_owned));
            }
        }
        fn stop(&self) {}
    }

    #[test]
    fn the_overlay_follows_the_position_and_the_visibility() {
        let sink = OverlaySink::default();
        let events = EventWriter::create(None).unwrap_or_else(|e| panic!("{e}"));
        let mut state = Playback::new(Box::new(sink.clone()), Instant::now(), StallTracker::new(1.0), None, events);
        state.playing_since = Some(Instant::now());
        state.pushed_media_s = 100.0;
        state.subtitles_visible = true;
        let cue = |start_s, end_s, text: &str| Cue { start_s, end_s, text: text.into() };
        // Playback started 10 s into the stream (--start-at 10).
        state.subtitles = Some(SubtitleTrack {
            media_start_s: 10.0,
            cues: vec![cue(11.0, 12.0, "one"), cue(12.5, 13.0, "two")],
            shown: None,
        });
        let at = |running_s: f64, state: &mut Playback| {
            if let Ok(mut t) = sink.running_s.lock() {
                *t = running_s;
            }
            render(state);
        };
        at(0.5, &mut state);
        at(1.0, &mut state);
        at(1.5, &mut state);
        at(2.0, &mut state);
        at(2.6, &mut state);
        state.subtitles_visible = false;
        at(2.7, &mut state);
        state.subtitles_visible = true;
        at(2.8, &mut state);
        at(3.5, &mut state);
        let shown = sink.shown.lock().map(|s| s.clone()).unwrap_or_default();
        let expected = [Some("one"), None, Some("two"), None, Some("two"), None];
        assert_eq!(shown, expected.map(|s| s.map(str::to_owned)), "set only on a change");
        assert!(state.subtitles.is_some_and(|track| track.cues.is_empty()), "cues that are over are forgotten");
    }
}
