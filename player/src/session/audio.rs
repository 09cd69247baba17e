//! The separate audio rendition's loop (`EXT-X-MEDIA:TYPE=AUDIO` with a URI): its media playlist
//! (reloaded while live, like a variant's), its segments fetched ahead up to the buffer target with
//! their own look-ahead, decrypted, and pushed into the pipeline's audio source. It runs beside the
//! video's download loop; both share the link, so audio bytes come out of the bandwidth the video's
//! downloads measure.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::keys::Keys;
use super::monitor::MONITOR_INTERVAL;
use super::playlists::{Next, NextPart, Playlists};
use super::seams::Fetch;
use super::state::{lock, wait_for_seek, AudioTrack, Playback};
use super::{PlayError, PlayerConfig};
use crate::events::Event;
use crate::pipeline::Track;
use crate::playlist::{InitSection, MediaPlaylist, PartPosition, Rendition, TimelineAnchor, Variant};

pub(super) struct AudioLoader<'a, F: Fetch> {
    pub config: &'a PlayerConfig,
    pub fetcher: &'a F,
    /// The rendition's playlist, as a one-variant "ladder" for [`Playlists`].
    pub playlist: Variant,
    pub playlists: Playlists,
    pub keys: Keys,
    pub last_init: Option<InitSection>,
    /// Live: the last audio segment pushed and where it starts on the position axis (see the video's).
    pub live_anchor: Option<TimelineAnchor>,
    /// Bytes fetched for audio: segments, init sections, keys, playlists.
    pub bytes: u64,
}

impl<'a, F: Fetch> AudioLoader<'a, F> {
    pub fn new(config: &'a PlayerConfig, fetcher: &'a F, rendition: &Rendition) -> Option<Self> {
        let playlist = Variant::media_playlist(rendition.uri.clone()?);
        Some(AudioLoader {
            config,
            fetcher,
            playlist,
            playlists: Playlists::default(),
            keys: Keys::default(),
            last_init: None,
            live_anchor: None,
            bytes: 0,
        })
    }

    /// The audio playlist (loaded once here; reloaded by the loop while live).
    pub async fn first_playlist(&mut self) -> Result<MediaPlaylist, PlayError> {
        let loaded = self.playlists.load(self.fetcher, &self.playlist).await?;
        Ok(loaded.playlist.clone())
    }

    /// Pushes audio from `start_s` of media (`None`: the live edge, or the start of a VOD) until the
    /// rendition ends or playback finishes. `video_part`: where the video joined a low-latency live
    /// stream; a low-latency audio playlist is then played part by part from the same place (media
    /// sequence numbers line up across renditions, and a packager cuts their parts together).
    pub async fn run(
        &mut self,
        shared: &Arc<Mutex<Playback>>,
        start_s: Option<f64>,
        video_part: Option<PartPosition>,
    ) -> Result<(), PlayError> {
        let first = self.first_playlist().await?;
        let mut sequence = match start_s {
            Some(seconds) => first.sequence_at(seconds).or(first.last_sequence()).unwrap_or(0),
            None if !first.ended => first.live_start_sequence().unwrap_or(0),
            None => first.segments.first().map_or(0, |s| s.sequence),
        };
        // Low-latency: the next part to fetch; `None` plays whole segments.
        let mut part = None;
        if let Some(at) = video_part.filter(|_| first.part_target_s.is_some() && !first.ended) {
            sequence = at.msn;
            // A part the audio does not have (fewer, longer parts): from its segment's start.
            part = Some(if first.part(at).is_some() { at.part } else { 0 });
        }
        let mut generation = 0;
        loop {
            // Reloads are the video's to report; the audio's are not kept.
            self.playlists.reloads.clear();
            if let Some(seek) = self.follow_seek(shared, &mut generation)? {
                sequence = seek;
                part = part.map(|_| 0);
            }
            if !self.wait_for_room(shared, generation).await {
                return Ok(());
            }
            if lock(shared).seek.generation != generation {
                continue;
            }
            let stopping = Arc::clone(shared);
            let stop = move || {
                let state = lock(&stopping);
                state.finish.is_some() || state.seek.generation != generation
            };
            // The part this is, when it is one (not a whole segment).
            let mut this_part = None;
            let next = match part {
                Some(at_part) => {
                    let at = PartPosition { msn: sequence, part: at_part };
                    match self.playlists.next_part(self.fetcher, &self.playlist, at, &stop).await? {
                        None => None,
                        Some(NextPart::End) => Some(Next::End),
                        Some(NextPart::Skip(to)) => Some(Next::Skip(to)),
                        Some(NextPart::SegmentDone) => {
                            (sequence, part) = (sequence.saturating_add(1), Some(0));
                            continue;
                        }
                        Some(NextPart::Whole(segment)) => {
                            part = Some(0);
                            Some(Next::Segment(segment))
                        }
                        Some(NextPart::Part(segment)) => {
                            if segment.key.is_some() {
                                // As for the video's (AES-128-CBC encrypts whole segments).
                                let reason = "audio: encrypted parts are not supported".to_string();
                                return Err(PlayError::Segment { sequence, reason });
                            }
                            part = Some(at_part.saturating_add(1));
                            this_part = Some(at_part);
                            Some(Next::Segment(segment))
                        }
                    }
                }
                None => self.playlists.next(self.fetcher, &self.playlist, sequence, &stop).await?,
            };
            let segment = match next {
                None if lock(shared).finish.is_none() => continue,
                None => return Ok(()),
                Some(Next::End) => {
                    {
                        let mut state = lock(shared);
                        state.audio.get_or_insert_with(AudioTrack::default).all_pushed = true;
                        state.sink.end_of_stream(Track::Audio)?;
                    }
                    // A seek back can still come before the end.
                    if !wait_for_seek(shared, generation).await {
                        return Ok(());
                    }
                    continue;
                }
                Some(Next::Skip(to)) => {
                    tracing::warn!("audio fell behind the live window: skipping from {sequence} to {to}");
                    sequence = to;
                    part = part.map(|_| 0);
                    continue;
                }
                Some(Next::Segment(segment)) => *segment,
            };
            if segment.gap {
                let mut state = lock(shared);
                state.audio.get_or_insert_with(AudioTrack::default).pushed_s += segment.duration_s;
                sequence = segment.sequence.saturating_add(1);
                continue;
            }
            let requested_at = Instant::now();
            let data = self
                .fetcher
                .get(&segment.uri, segment.range)
                .await
                .map_err(|e| PlayError::Segment { sequence: segment.sequence, reason: format!("audio: {e}") })?;
            let download_ms = requested_at.elapsed().as_millis() as u64;
            let bytes = data.len() as u64;
            self.bytes = self.bytes.saturating_add(bytes);
            let data = self.keys.decrypt(self.fetcher, &segment, data.to_vec(), &mut self.bytes).await?;
            if lock(shared).seek.generation != generation {
                // A seek came while this segment downloaded: it belongs to the old position.
                continue;
            }
            {
                let state = lock(shared);
                let pushed_s = state.audio.as_ref().map_or(0.0, |a| a.pushed_s);
                if segment.discontinuity && pushed_s > 0.0 {
                    state.sink.restart(Track::Audio, pushed_s, None)?;
                    self.last_init = None;
                }
            }
            let init_changed = segment.init.is_some() && segment.init != self.last_init;
            if let Some(init) = segment.init.as_ref().filter(|_| init_changed) {
                let init_data = self.fetcher.get(&init.uri, init.range).await?;
                self.bytes = self.bytes.saturating_add(init_data.len() as u64);
                lock(shared).sink.push(Track::Audio, init_data.to_vec(), true)?;
                self.last_init = segment.init.clone();
            }
            let mut state = lock(shared);
            state.sink.push(Track::Audio, data, segment.discontinuity && !init_changed)?;
            let media_origin_s = state.media_origin_s;
            let live = state.stream_duration_s.is_none();
            let track = state.audio.get_or_insert_with(AudioTrack::default);
            if live && this_part.is_none_or(|p| p == 0) {
                self.live_anchor =
                    Some(TimelineAnchor { sequence: segment.sequence, media_s: media_origin_s + track.pushed_s });
            }
            track.pushed_s += segment.duration_s;
            let buffer_s = state.audio_ahead_s().unwrap_or(0.0);
            state.event(Event::AudioSegment { index: segment.sequence, bytes, download_ms, buffer_s, part: this_part });
            drop(state);
            if this_part.is_none() {
                sequence = segment.sequence.saturating_add(1);
            }
        }
    }

    /// After a seek the download loop carried out: the audio source starts over where the video's
    /// did, from the audio segment holding the seek's position. Returns that segment's number.
    fn follow_seek(&mut self, shared: &Mutex<Playback>, generation: &mut u64) -> Result<Option<u64>, PlayError> {
        let mut state = lock(shared);
        if state.seek.generation == *generation {
            return Ok(None);
        }
        let seek = state.seek;
        *generation = seek.generation;
        let Some(loaded) = self.playlists.loaded.get(&self.playlist.index) else { return Ok(None) };
        let playlist = &loaded.playlist;
        let (sequence, start_s) = if playlist.ended {
            let sequence = playlist.sequence_at(seek.media_s).or(playlist.last_sequence()).unwrap_or(0);
            let start_s = playlist.segments.iter().take_while(|s| s.sequence < sequence).map(|s| s.duration_s).sum();
            (sequence, start_s)
        } else {
            // Live: placed on the same axis from the last audio segment pushed.
            let placed = self.live_anchor.and_then(|anchor| playlist.segment_on(anchor, seek.media_s));
            let Some(placed) = placed else {
                tracing::warn!("audio cannot follow the seek: its live window has moved past this playback");
                return Ok(None);
            };
            placed
        };
        // Where this audio segment starts, relative to the video's seek point.
        let at_s = seek.running_s + start_s - seek.media_s;
        state.sink.restart(Track::Audio, at_s, Some(seek.running_s))?;
        let track = state.audio.get_or_insert_with(AudioTrack::default);
        track.pushed_s = at_s;
        track.all_pushed = false;
        self.last_init = None;
        Ok(Some(sequence))
    }

    /// Waits while the audio buffered ahead is at its target. False when the loop should stop.
    async fn wait_for_room(&self, shared: &Mutex<Playback>, generation: u64) -> bool {
        loop {
            let (ahead, stop) = {
                let state = lock(shared);
                let pushed = state.audio.as_ref().map_or(0.0, |a| a.pushed_s);
                let enough = state.duration_s.is_some_and(|d| pushed >= d);
                (state.audio_ahead_s().unwrap_or(0.0), state.finish.is_some() || enough)
            };
            if stop {
                return false;
            }
            if ahead < self.config.buffer_target_s || lock(shared).seek.generation != generation {
                return true;
            }
            tokio::time::sleep(MONITOR_INTERVAL).await;
        }
    }
}
