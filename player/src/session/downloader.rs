//! The download loop: one segment at a time, while the buffer is under its target. For each
//! segment: an ABR decision (through [`crate::abr::history`], the loop the simulator drives too),
//! the download with its abandonment checks, a lower rendition if it fails, decryption, and the push
//! into the pipeline. Fetching and playing go through the [`Fetch`] and [`MediaSink`] seams.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::keys::Keys;
use super::monitor::MONITOR_INTERVAL;
use super::playlists::{Ladder, Next, NextPart, Playlists};
use super::seams::Fetch;
use super::state::{lock, wait_until, Playback, SeekDone, Status};
use super::{PlayError, PlayerConfig};
use crate::abr::history::{self, AbandonPoint, DecisionPoint, Download, History};
use crate::abr::{AbrAlgorithm, PartialTransfer};
use crate::controls::SeekWindow;
use crate::events::{Event, LadderRung};
use crate::fetch::{FetchError, Outcome};
use crate::pipeline::Track;
use crate::playlist::{InitSection, PartPosition, Segment, TimelineAnchor};
use crate::report::SegmentRecord;
use crate::timestamps;
use crate::webvtt::VideoStart;

/// How many discontinuity domains' timestamps are kept for the subtitles (`Playback::video_domains`):
/// far more than a buffer spans.
const VIDEO_DOMAINS_KEPT: usize = 64;

/// What the download loop leaves for the report.
#[derive(Debug, Default)]
pub(super) struct Downloaded {
    pub records: Vec<SegmentRecord>,
    /// All bytes fetched: segments (abandoned ones too), init sections, keys, playlists.
    pub bytes: u64,
    pub abandoned: u32,
}

pub(super) struct Downloader<'a, F: Fetch> {
    pub config: &'a PlayerConfig,
    pub fetcher: &'a F,
    pub ladder: &'a Ladder,
    pub shared: &'a Arc<Mutex<Playback>>,
    pub playlists: Playlists,
    pub abr: Box<dyn AbrAlgorithm + Send>,
    pub history: History,
    pub keys: Keys,
    /// The init section last pushed (fMP4): pushed again when it changes (rendition switch).
    pub last_init: Option<InitSection>,
    /// Live: the last segment whose start was pushed, and where on the position axis; live seeks
    /// are placed from it (the playlist's window slides, so its first segment is no reference).
    pub live_anchor: Option<TimelineAnchor>,
    /// Low-latency live (draft-pantos-hls-rfc8216bis §4.4.4.9): the next part of the current segment
    /// to fetch; `None` when whole segments are fetched.
    pub part: Option<u64>,
    pub done: Downloaded,
}

/// What the look-ahead says.
enum Room {
    Go,
    Stop,
    Seek,
}

/// A segment fetched at some rung.
struct Fetched {
    segment: Segment,
    rung: usize,
    data: Vec<u8>,
    download: Download,
    download_ms: u64,
    /// A download at a higher rung was abandoned first.
    abandoned: bool,
}

enum SegmentFetch {
    Done {
        data: Vec<u8>,
        download: Download,
        download_ms: u64,
    },
    Abandoned(usize),
    /// Playback ended while the segment was downloading.
    Stopped,
}

impl<F: Fetch> Downloader<'_, F> {
    /// Downloads from `sequence` until the stream ends, enough is pushed for `--duration`, or
    /// playback finishes.
    pub async fn run(&mut self, mut sequence: u64) -> Result<(), PlayError> {
        let ladder: Vec<LadderRung> = (self.ladder.variants.iter().zip(&self.ladder.rungs))
            .map(|(v, r)| LadderRung { rendition: v.index, bitrate_bps: r.bitrate_bps, height: r.height })
            .collect();
        let start = Event::Start { url: self.config.url.to_string(), ladder, max_rung: self.ladder.max_rung };
        lock(self.shared).event(start);
        loop {
            self.play_from(&mut sequence).await?;
            {
                let mut state = lock(self.shared);
                // Finished, or enough pushed for --duration (the stream itself goes on).
                if state.finish.is_some() || (state.enough_pushed() && state.seek_request.is_none()) {
                    return Ok(());
                }
                if state.seek_request.is_none() {
                    state.all_pushed = true;
                    if state.play_requested_at.is_none() {
                        return Err(PlayError::NoRendition("the stream has no segment to play".into()));
                    }
                    state.sink.end_of_stream(Track::Main)?;
                }
            }
            // Everything is pushed: a seek back can still come before the end, when seeks can come.
            if !self.config.keys && self.config.seek_to.is_none() {
                return Ok(());
            }
            let sought = wait_until(self.shared, |state| match () {
                _ if state.finish.is_some() => Some(false),
                _ if state.seek_request.is_some() => Some(true),
                _ => None,
            });
            if !sought.await {
                return Ok(());
            }
        }
    }

    /// Pushes from `sequence` until the stream ends (returns), playback finishes or a seek is asked
    /// for (returns, with the seek carried out on the next call).
    async fn play_from(&mut self, sequence: &mut u64) -> Result<(), PlayError> {
        loop {
            let seek = lock(self.shared).seek_request.take();
            if let Some(to_s) = seek {
                *sequence = self.seek(to_s)?;
            }
            match self.wait_for_room().await {
                Room::Stop => return Ok(()),
                Room::Seek => continue,
                Room::Go => {}
            }
            let current = &self.ladder.variants[self.history.current().unwrap_or(0)];
            if self.playlists.is_past_end(current, *sequence) {
                return Ok(());
            }
            if let Some(part) = self.part {
                if self.play_part(sequence, part).await? {
                    continue;
                }
                return Ok(());
            }
            let rung = self.decide(*sequence);
            let shared = Arc::clone(self.shared);
            let stop = move || lock(&shared).interrupted();
            let next = self.playlists.next(self.fetcher, &self.ladder.variants[rung], *sequence, &stop).await;
            self.reload_events();
            let segment = match next? {
                None => return Ok(()),
                Some(Next::End) => return Ok(()),
                Some(Next::Skip(to)) => {
                    tracing::warn!("fell behind the live window: skipping from {sequence} to {to}");
                    *sequence = to;
                    continue;
                }
                Some(Next::Segment(segment)) => *segment,
            };
            if segment.gap {
                // Nothing to fetch (draft-pantos-hls-rfc8216bis §4.4.4.7): the media position moves on
                // by the gap, so the buffer accounting does not read the missing media as a stall.
                let mut state = lock(self.shared);
                state.pushed_media_s += segment.duration_s;
                let program_date_time = date_time_text(segment.program_date_time.as_ref());
                state.event(Event::Gap { index: segment.sequence, duration_s: segment.duration_s, program_date_time });
                tracing::info!("segment {} is a gap: skipped", segment.sequence);
                *sequence = segment.sequence.saturating_add(1);
                continue;
            }
            let previous = self.history.current();
            let Some(fetched) = self.fetch_at_some_rung(segment, rung, &stop).await? else {
                // Stopped: by the end of playback, or by a seek (carried out at the top).
                if lock(self.shared).seek_request.is_some() {
                    continue;
                }
                return Ok(());
            };
            *sequence = fetched.segment.sequence + 1;
            self.push(fetched, previous, None).await?;
        }
    }

    /// One step of low-latency live playback at part `part` of segment `sequence`: fetches and pushes
    /// the part (or the whole segment when its parts left the playlist), or moves on to the next
    /// segment. The ABR decides at segment boundaries only: a part is too short a download to
    /// measure, and the switch needs an independent part, which part 0 always is (§4.4.4.9 allows
    /// others not to be). Returns false when playback should stop (the stream ended, or stopped).
    async fn play_part(&mut self, sequence: &mut u64, part: u64) -> Result<bool, PlayError> {
        let rung = match self.history.current() {
            Some(current) if part > 0 => current,
            _ => self.decide(*sequence),
        };
        let shared = Arc::clone(self.shared);
        let stop = move || lock(&shared).interrupted();
        let at = PartPosition { msn: *sequence, part };
        let next = self.playlists.next_part(self.fetcher, &self.ladder.variants[rung], at, &stop).await;
        self.reload_events();
        let (segment, whole) = match next? {
            None | Some(NextPart::End) => return Ok(false),
            Some(NextPart::Skip(to)) => {
                tracing::warn!("fell behind the live window: skipping from {sequence} to {to}");
                *sequence = to;
                self.part = Some(0);
                return Ok(true);
            }
            Some(NextPart::SegmentDone) => {
                *sequence = sequence.saturating_add(1);
                self.part = Some(0);
                return Ok(true);
            }
            Some(NextPart::Whole(segment)) => (*segment, true),
            Some(NextPart::Part(segment)) => (*segment, false),
        };
        if segment.key.is_some() && !whole {
            // AES-128 (RFC 8216 §4.3.2.4) encrypts whole segments in CBC: a part alone cannot be
            // decrypted with the segment's IV.
            return Err(PlayError::Segment { sequence: *sequence, reason: "encrypted parts are not supported".into() });
        }
        let previous = self.history.current();
        // No abandonment of a part: it is a fraction of a second of media, at the live edge.
        let fetched = match self.fetch_segment(&segment, rung, true).await {
            Ok(SegmentFetch::Done { data, download, download_ms }) => {
                Fetched { segment, rung, data, download, download_ms, abandoned: false }
            }
            Ok(SegmentFetch::Stopped | SegmentFetch::Abandoned(_)) => {
                return Ok(lock(self.shared).seek_request.is_some());
            }
            Err(error) => {
                let what = if whole { String::new() } else { format!(" part {part}") };
                return Err(PlayError::Segment {
                    sequence: *sequence,
                    reason: format!("{what} {error}").trim().into(),
                });
            }
        };
        self.push(fetched, previous, (!whole).then_some(part)).await?;
        if whole {
            *sequence = sequence.saturating_add(1);
            self.part = Some(0);
        } else {
            self.part = Some(part.saturating_add(1));
        }
        Ok(true)
    }

    /// The `reload` events of the live playlist reloads done since the last call.
    fn reload_events(&mut self) {
        let reloads = std::mem::take(&mut self.playlists.reloads);
        if reloads.is_empty() {
            return;
        }
        let mut state = lock(self.shared);
        for reload in reloads {
            let (msn, part) = match reload.blocking {
                Some(at) => (Some(at.msn), (at.part != u64::MAX).then_some(at.part)),
                None => (None, None),
            };
            state.event(Event::Reload {
                rendition: reload.rendition,
                blocking: reload.blocking.is_some(),
                msn,
                part,
                wait_ms: reload.wait_ms,
            });
        }
    }

    /// Carries out a seek to `to_s` (media seconds on the position axis): the pipeline drops what it
    /// holds and is paused while the buffer refills; the media from the segment holding `to_s` is
    /// placed where the running time is now. Returns that segment's sequence number. In a live stream
    /// the segment is found from the live anchor, within the playlist's window as it is now.
    fn seek(&mut self, to_s: f64) -> Result<u64, PlayError> {
        let variant = &self.ladder.variants[self.history.current().unwrap_or(0)];
        let Some(loaded) = self.playlists.loaded.get(&variant.index) else {
            return Err(PlayError::NoRendition("seek: the playlist is not loaded".into()));
        };
        let playlist = &loaded.playlist;
        let (sequence, start_s) = if playlist.ended {
            let sequence = playlist.sequence_at(to_s).or(playlist.last_sequence()).unwrap_or(0);
            let start_s = playlist.segments.iter().take_while(|s| s.sequence < sequence).map(|s| s.duration_s).sum();
            (sequence, start_s)
        } else {
            let placed = self.live_anchor.and_then(|anchor| {
                let (start_s, edge_s) = playlist.span_on(anchor)?;
                let window = SeekWindow::live(start_s, edge_s, playlist.hold_back_s());
                playlist.segment_on(anchor, to_s.clamp(window.start_s, window.end_s))
            });
            let Some(placed) = placed else {
                // The window slid past every segment this playback knows of (a long pause): no seek.
                tracing::warn!("seek to {to_s:.1} s not done: the live window has moved past this playback");
                return Ok(self.live_anchor.map_or(0, |a| a.sequence));
            };
            // Parts, when playing them, from the first of the segment.
            if self.part.is_some() {
                self.part = Some(0);
            }
            placed
        };
        let mut state = lock(self.shared);
        let at_s = state.played_s();
        let from_s = state.position_s();
        // Paused first, so that the old source's sinks render nothing more while it is taken down.
        if !state.user_paused && !state.stall.is_stalled() {
            state.sink.pause()?;
        }
        state.sink.restart(Track::Main, at_s, Some(at_s))?;
        state.frozen_played_s = Some(at_s);
        state.seek_refilling = true;
        state.pushed_media_s = at_s;
        state.all_pushed = false;
        // The audio track has nothing at the new position until its loop follows this seek: the
        // refill waits for it too.
        if let Some(audio) = &mut state.audio {
            audio.pushed_s = at_s;
            audio.all_pushed = false;
        }
        state.all_played_at = None;
        // The dates and titles of the media dropped say nothing of what plays next.
        state.dates.clear();
        state.titles.clear();
        let origin_s = start_s - at_s;
        state.media_origin_s = origin_s;
        if let Some(subtitles) = &mut state.subtitles {
            subtitles.media_start_s = origin_s;
            // The subtitle loop fetches the cues of the new position again.
            subtitles.cues.clear();
        }
        state.seek =
            SeekDone { generation: state.seek.generation.saturating_add(1), media_s: start_s, running_s: at_s };
        tracing::info!("seek from {from_s:.1} s to {start_s:.1} s (segment {sequence})");
        state.event(Event::Seek { from_s, to_s: start_s });
        drop(state);
        // The fresh source needs the init section; the estimate stays, the buffer is empty.
        self.last_init = None;
        self.history.interrupted();
        Ok(sequence)
    }

    /// Bounded look-ahead: waits while the buffer is at its target.
    async fn wait_for_room(&self) -> Room {
        loop {
            let (ahead, stop, seek) = {
                let state = lock(self.shared);
                (state.buffer_ahead_s(), state.finish.is_some() || state.enough_pushed(), state.seek_request.is_some())
            };
            if seek {
                return Room::Seek;
            }
            if stop {
                return Room::Stop;
            }
            if ahead < self.config.buffer_target_s {
                return Room::Go;
            }
            tokio::time::sleep(MONITOR_INTERVAL).await;
        }
    }

    /// The ABR decision for segment `sequence`, logged as an event.
    fn decide(&mut self, sequence: u64) -> usize {
        let ladder = self.ladder;
        let (buffer_s, now_s) = {
            let state = lock(self.shared);
            (state.buffer_ahead_s(), state.now_s())
        };
        let current = self.history.current();
        let upcoming = self.playlists.upcoming(&ladder.variants[current.unwrap_or(0)], sequence);
        let at = DecisionPoint { now_s, buffer_s, buffer_target_s: self.config.buffer_target_s, upcoming };
        let input = self.history.input(&ladder.rungs, ladder.max_rung, &at);
        let chosen = history::choose(self.abr.as_mut(), &input);
        // A rung pinned from the keyboard overrides the ABR (which still ran, to keep its state).
        let rung = lock(self.shared).pinned_rung.map_or(chosen, |pin| pin.min(ladder.max_rung));
        let estimate_bps = input.estimate_bps;
        if let Some(from) = current.filter(|&c| c != rung) {
            tracing::info!(
                "switch at segment {sequence}: rendition {} -> {} (estimate {:.0} kbps, buffer {buffer_s:.1} s)",
                ladder.variants[from].index,
                ladder.variants[rung].index,
                estimate_bps / 1000.0
            );
        }
        let rendition = ladder.variants[rung].index;
        lock(self.shared).event(Event::Decision { index: sequence, rung, rendition, estimate_bps, at });
        rung
    }

    /// Fetches `segment` at `rung`, or lower: after an abandonment, or when a rendition fails.
    /// `None` when playback ended meanwhile.
    async fn fetch_at_some_rung(
        &mut self,
        mut segment: Segment,
        mut rung: usize,
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Result<Option<Fetched>, PlayError> {
        let sequence = segment.sequence;
        let mut abandoned = false;
        loop {
            match self.fetch_segment(&segment, rung, abandoned).await {
                Ok(SegmentFetch::Done { data, download, download_ms }) => {
                    return Ok(Some(Fetched { segment, rung, data, download, download_ms, abandoned }))
                }
                Ok(SegmentFetch::Stopped) => return Ok(None),
                Ok(SegmentFetch::Abandoned(lower)) => {
                    abandoned = true;
                    rung = lower;
                }
                Err(error) if rung > 0 => {
                    tracing::warn!(
                        "segment {sequence} failed at rendition {}: {error}; trying a lower one",
                        self.ladder.variants[rung].index
                    );
                    rung -= 1;
                }
                Err(error) => return Err(PlayError::Segment { sequence, reason: error.to_string() }),
            }
            match self.playlists.next(self.fetcher, &self.ladder.variants[rung], sequence, stop).await? {
                Some(Next::Segment(lower)) => segment = *lower,
                _ => return Err(PlayError::Segment { sequence, reason: "missing from the lower rendition".into() }),
            }
        }
    }

    async fn fetch_segment(
        &mut self,
        segment: &Segment,
        rung: usize,
        abandoned_already: bool,
    ) -> Result<SegmentFetch, FetchError> {
        let ladder = self.ladder;
        let shared = self.shared;
        let history = &mut self.history;
        let abr = &mut self.abr;
        let expected = segment
            .range
            .map(|r| r.length)
            .unwrap_or((ladder.rungs[rung].bitrate_bps as f64 * segment.duration_s / 8.0) as u64);
        let can_abandon = {
            let state = lock(shared);
            // A rung pinned from the keyboard is kept, however the download goes.
            state.pinned_rung.is_none() && history::may_abandon(rung, state.playing_since.is_some(), abandoned_already)
        };
        let mut lower = None;
        let mut stopped = false;
        let outcome = self
            .fetcher
            .download(&segment.uri, segment.range, |progress| {
                let state = lock(shared);
                // Playback is over (--duration, Ctrl-C, an error): stop downloading now.
                if state.interrupted() {
                    stopped = true;
                    return true;
                }
                let at = AbandonPoint {
                    now_s: state.now_s(),
                    rung,
                    progress: PartialTransfer {
                        request_s: state.seconds(progress.requested_at),
                        first_byte_s: progress.first_byte_at.map(|t| state.seconds(t)),
                        bytes_so_far: progress.bytes_so_far,
                    },
                    bytes_total: progress.expected_bytes.unwrap_or(expected),
                    buffer_s: state.buffer_ahead_s(),
                    segment_duration_s: segment.duration_s,
                };
                drop(state);
                let input = history.abandon_input(&ladder.rungs, &at);
                if can_abandon {
                    lower = history::abandon(abr.as_mut(), &input);
                }
                lower.is_some()
            })
            .await;
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(error) => {
                self.history.interrupted();
                return Err(error);
            }
        };
        match outcome {
            Outcome::Done(done) => {
                let download = {
                    let state = lock(shared);
                    Download {
                        rung,
                        request_s: state.seconds(done.requested_at),
                        first_byte_s: state.seconds(done.first_byte_at),
                        end_s: state.seconds(done.finished_at),
                        bytes: done.body.len() as u64,
                        media_s: segment.duration_s,
                    }
                };
                self.history.record(&download);
                self.done.bytes += download.bytes;
                let download_ms = done.finished_at.saturating_duration_since(done.requested_at).as_millis() as u64;
                Ok(SegmentFetch::Done { data: done.body.to_vec(), download, download_ms })
            }
            Outcome::Abandoned { bytes_so_far } => {
                self.history.interrupted();
                self.done.bytes += bytes_so_far;
                if stopped {
                    return Ok(SegmentFetch::Stopped);
                }
                self.done.abandoned += 1;
                let to = lower.unwrap_or(0);
                let (from, to_rendition) = (ladder.variants[rung].index, ladder.variants[to].index);
                tracing::info!(
                    "abandoned segment {} at rendition {from} after {bytes_so_far} bytes; refetching at rendition {to_rendition}",
                    segment.sequence,
                );
                let mut state = lock(shared);
                let buffer_s = state.buffer_ahead_s();
                state.event(Event::Abandon {
                    index: segment.sequence,
                    rendition: from,
                    to_rendition,
                    bytes: bytes_so_far,
                    buffer_s,
                });
                Ok(SegmentFetch::Abandoned(to))
            }
        }
    }

    /// Decrypts, pushes the init section when it changed and the segment, and records it.
    /// `part`: the part of the segment this is, when it is one.
    async fn push(&mut self, fetched: Fetched, previous: Option<usize>, part: Option<u64>) -> Result<(), PlayError> {
        let Fetched { segment, rung, data, download, download_ms, abandoned } = fetched;
        let data = self.keys.decrypt(self.fetcher, &segment, data, &mut self.done.bytes).await?;
        let switched = previous.is_some_and(|c| c != rung);
        {
            let state = lock(self.shared);
            if segment.discontinuity && state.pushed_media_s > 0.0 {
                state.sink.restart(Track::Main, state.pushed_media_s, None)?;
                // The fresh source needs the init section, whether or not it changed.
                self.last_init = None;
            }
        }
        let init_changed = segment.init.is_some() && segment.init != self.last_init;
        let mut init_pushed = None;
        if init_changed {
            if let Some(init) = &segment.init {
                let init_data = self.fetcher.get(&init.uri, init.range).await?;
                self.done.bytes += init_data.len() as u64;
                lock(self.shared).sink.push(Track::Main, init_data.to_vec(), true)?;
                self.last_init = segment.init.clone();
                init_pushed = Some(init_data);
            }
        }
        let variant = &self.ladder.variants[rung];
        let record = SegmentRecord {
            index: segment.sequence,
            rendition: variant.index,
            // A media playlist alone declares no bitrate: use the segment's own.
            bitrate_bps: if variant.bandwidth_bps > 0 {
                variant.bandwidth_bps
            } else {
                (data.len() as f64 * 8.0 / segment.duration_s.max(1e-3)).round() as u64
            },
            bytes: data.len() as u64,
            download_ms,
            abandoned,
            duration_s: segment.duration_s,
            parts: part.map(|_| 1),
        };
        let mut state = lock(self.shared);
        if !state.video_domains.contains_key(&segment.discontinuity_sequence) {
            // Where this timestamp domain's video sits, for subtitles' X-TIMESTAMP-MAP (its first
            // segment pushed comes with its init section: the first, and the first after a
            // discontinuity or a seek).
            if let Some(pts) = timestamps::first_pts(init_pushed.as_deref(), &data) {
                let media_s = state.media_origin_s + state.pushed_media_s;
                state.video_domains.insert(segment.discontinuity_sequence, VideoStart { pts, media_s });
                // A live stream with an ad break every few segments would add one a minute for ever;
                // the subtitles only need the domains around the position.
                while state.video_domains.len() > VIDEO_DOMAINS_KEPT {
                    state.video_domains.pop_first();
                }
            }
        }
        state.sink.push(Track::Main, data, (switched || segment.discontinuity) && !init_changed)?;
        if state.stream_duration_s.is_none() && part.is_none_or(|p| p == 0) {
            let anchor =
                TimelineAnchor { sequence: segment.sequence, media_s: state.media_origin_s + state.pushed_media_s };
            self.live_anchor = Some(anchor);
        }
        if let (Some(anchor), Some(loaded)) = (self.live_anchor, self.playlists.loaded.get(&variant.index)) {
            let playlist = &loaded.playlist;
            if let Some((start_s, edge_s)) = playlist.span_on(anchor).filter(|_| !playlist.ended) {
                state.live_window = Some(SeekWindow::live(start_s, edge_s, playlist.hold_back_s()));
            }
        }
        if let Some(date_time) = segment.program_date_time {
            // Where this media sits on the wall clock: what the monitor's live latency is measured from.
            let start_s = state.pushed_media_s;
            state.dates.push_back((start_s, date_time.with_timezone(&chrono::Utc)));
        }
        state.pushed_media_s += segment.duration_s;
        if state.play_requested_at.is_none() {
            state.sink.play()?;
            state.play_requested_at = Some(Instant::now());
        }
        let estimate_bps = self.history.estimate_bps(state.now_s());
        state.current_rung = rung;
        state.status = Status {
            rendition: variant.index,
            resolution: variant.resolution,
            bitrate_bps: record.bitrate_bps,
            estimate_bps,
        };
        let title = window_title(self.config.url.as_str(), variant.resolution, variant.bandwidth_bps);
        if state.titles.back().is_none_or(|(_, last)| *last != title) {
            let start_s = state.pushed_media_s - segment.duration_s;
            state.titles.push_back((start_s, title));
        }
        let buffer_s = state.buffer_ahead_s();
        let live_latency_s = state.latency_samples.last().map(|l| (l * 1000.0).round() / 1000.0);
        state.event(Event::Segment {
            index: record.index,
            rendition: record.rendition,
            bitrate_bps: record.bitrate_bps,
            bytes: record.bytes,
            download_ms: record.download_ms,
            abandoned: record.abandoned,
            estimate_bps: estimate_bps.round(),
            buffer_s,
            download,
            program_date_time: date_time_text(segment.program_date_time.as_ref()),
            part,
            live_latency_s,
        });
        drop(state);
        // The parts of one segment make one record, as the whole segment would.
        if let (Some(part), Some(last)) = (part, self.done.records.last_mut()) {
            if part > 0 && last.index == record.index && last.rendition == record.rendition && last.parts.is_some() {
                last.bytes += record.bytes;
                last.download_ms += record.download_ms;
                last.duration_s += record.duration_s;
                last.parts = last.parts.map(|n| n.saturating_add(1));
                return Ok(());
            }
        }
        self.done.records.push(record);
        Ok(())
    }
}

/// The window's title: the stream's URL and the rendition playing (its picture size and BANDWIDTH,
/// when the master playlist gives them).
fn window_title(url: &str, resolution: Option<(u64, u64)>, bandwidth_bps: u64) -> String {
    let size = resolution.map(|(width, height)| format!(" · {width}×{height}")).unwrap_or_default();
    let rate = if bandwidth_bps > 0 {
        format!(" · {} kb/s", bandwidth_bps.saturating_add(500) / 1000)
    } else {
        String::new()
    };
    format!("eddy-play · {url}{size}{rate}")
}

/// A segment's date as the events write it: RFC 3339 in UTC, to the millisecond.
pub(super) fn date_time_text(date_time: Option<&chrono::DateTime<chrono::FixedOffset>>) -> Option<String> {
    date_time.map(|d| d.with_timezone(&chrono::Utc).to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_title_names_the_stream_and_the_rendition() {
        let title = window_title("http://127.0.0.1:8080/master.m3u8", Some((1280, 720)), 2_499_600);
        assert_eq!(title, "eddy-play · http://127.0.0.1:8080/master.m3u8 · 1280×720 · 2500 kb/s");
        assert_eq!(
            window_title("http://h/a.m3u8", None, u64::MAX),
            format!("eddy-play · http://h/a.m3u8 · {} kb/s", u64::MAX / 1000)
        );
        // A media playlist alone: no size nor bitrate to name.
        assert_eq!(window_title("http://h/a.m3u8", None, 0), "eddy-play · http://h/a.m3u8");
    }
}
