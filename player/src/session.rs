//! One playback: playlists → ABR decision → fetch → decrypt → push into the pipeline, with a monitor
//! that measures the buffer ahead of the playback position, pauses on a stall, prints the status line
//! and records the timeline. The decisions themselves live in `abr` and `stall`; this module only
//! moves bytes and time between them.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;
use thiserror::Error;
use url::Url;

use crate::abr::{
    AbandonInput, AbrAlgorithm, AbrInput, BandwidthEstimator, EddyAbr, LastDownload, PartialTransfer, Rung,
    TransferSample,
};
use crate::crypto;
use crate::fetch::{FetchError, Fetcher, Outcome};
use crate::pipeline::{Container, Pipeline, PipelineError, PipelineEvent};
use crate::playlist::{self, InitSection, MediaPlaylist, Parsed, PlaylistError, Segment, Variant};
use crate::report::{EventWriter, Report, SegmentRecord, TimelinePoint};
use crate::stall::{StallAction, StallTracker, RESUME_THRESHOLD_S, STARVED_S};

/// How often the monitor measures the buffer and checks the pipeline.
const MONITOR_INTERVAL: Duration = Duration::from_millis(100);
/// How often the status line is refreshed.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// How often a timeline point is recorded for `--plot`.
const TIMELINE_INTERVAL: Duration = Duration::from_millis(250);
/// Playback that has not started this long after the first segment was pushed is undecodable.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
/// The same once the whole stream has been pushed: nothing more can make it start.
const STARTUP_TIMEOUT_AFTER_END: Duration = Duration::from_secs(4);
/// Once everything pushed has played by the clock, the pipeline's end-of-stream is awaited this long
/// at most: playback ends even if a sink never posts it.
const END_OF_STREAM_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
pub struct PlayerConfig {
    pub url: Url,
    /// Fake sinks instead of a window and a sound card.
    pub headless: bool,
    pub buffer_target_s: f64,
    pub max_bitrate_bps: Option<u64>,
    pub max_height: Option<u64>,
    /// Pin one variant (index in the master as listed).
    pub rendition: Option<usize>,
    pub start_at_s: Option<f64>,
    pub duration_s: Option<f64>,
    pub events: Option<PathBuf>,
    pub quiet: bool,
}

#[derive(Debug, Error)]
pub enum PlayError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Playlist(#[from] PlaylistError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("no playable rendition: {0}")]
    NoRendition(String),
    #[error("segment {sequence} could not be fetched at any rendition: {reason}")]
    Segment { sequence: u64, reason: String },
    #[error("segment {sequence}: {reason}")]
    Decrypt { sequence: u64, reason: String },
    #[error("cannot write {0}")]
    Output(String),
}

/// What a playback produced.
pub struct Played {
    pub report: Report,
    pub timeline: Vec<TimelinePoint>,
}

#[derive(Debug, Clone, PartialEq)]
enum Finish {
    EndOfStream,
    DurationReached,
    Interrupted,
    Failed(String),
}

/// State shared by the download loop and the monitor.
struct Shared {
    pipeline: Pipeline,
    started_at: Instant,
    play_requested_at: Option<Instant>,
    playing_since: Option<Instant>,
    /// Media seconds pushed into the pipeline.
    pushed_media_s: f64,
    all_pushed: bool,
    stall: StallTracker,
    /// Played seconds frozen while the pipeline is paused for a stall.
    frozen_played_s: Option<f64>,
    finish: Option<Finish>,
    duration_s: Option<f64>,
    /// When the monitor first saw everything pushed played (end-of-stream grace).
    all_played_at: Option<Instant>,
    status: Status,
    timeline: Vec<TimelinePoint>,
    events: EventWriter,
}

#[derive(Debug, Clone, Default)]
struct Status {
    rendition: usize,
    resolution: Option<(u64, u64)>,
    bitrate_bps: u64,
    estimate_bps: f64,
}

impl Shared {
    fn now_s(&self) -> f64 {
        self.started_at.elapsed().as_secs_f64()
    }

    /// Media played so far, measured on the pipeline clock (running time), frozen during stalls.
    fn played_s(&self) -> f64 {
        if self.playing_since.is_none() {
            return 0.0;
        }
        if let Some(frozen) = self.frozen_played_s {
            return frozen;
        }
        self.pipeline.running_time_s().unwrap_or(0.0).min(self.pushed_media_s)
    }

    fn buffer_ahead_s(&self) -> f64 {
        (self.pushed_media_s - self.played_s()).max(0.0)
    }

    fn nothing_more_to_push(&self) -> bool {
        nothing_more_to_push(self.all_pushed, self.pushed_media_s, self.duration_s)
    }

    fn event(&mut self, mut event: serde_json::Value) {
        if let Some(object) = event.as_object_mut() {
            object.insert("t_s".into(), json!((self.now_s() * 1000.0).round() / 1000.0));
            let unix_ms =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
            object.insert("unix_ms".into(), json!(unix_ms));
        }
        self.events.write(&event);
    }

    fn finish(&mut self, finish: Finish) {
        if self.finish.is_none() {
            self.finish = Some(finish);
        }
    }
}

/// Whether the pipeline holds all the media this playback will play: the stream's last segment, or
/// enough for `--duration`. The buffer running out then is the end, not a stall.
fn nothing_more_to_push(all_pushed: bool, pushed_media_s: f64, duration_s: Option<f64>) -> bool {
    all_pushed || duration_s.is_some_and(|d| pushed_media_s >= d)
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One tick of the monitor: pipeline messages, stall detection, duration, status line, timeline.
fn monitor_tick(shared: &mut Shared, quiet: bool, last_status: &mut Instant, last_point: &mut Instant) {
    for event in shared.pipeline.poll() {
        match event {
            PipelineEvent::Playing if shared.playing_since.is_none() => {
                shared.playing_since = Some(Instant::now());
                let startup_ms = shared.started_at.elapsed().as_millis() as u64;
                shared.event(json!({"event": "playing", "startup_ms": startup_ms}));
            }
            PipelineEvent::Playing => {}
            PipelineEvent::EndOfStream => shared.finish(Finish::EndOfStream),
            PipelineEvent::Error(message) => shared.finish(Finish::Failed(message)),
        }
    }
    if shared.playing_since.is_none() {
        let limit = if shared.nothing_more_to_push() { STARTUP_TIMEOUT_AFTER_END } else { STARTUP_TIMEOUT };
        if shared.play_requested_at.is_some_and(|t| t.elapsed() > limit) {
            shared.finish(Finish::Failed("playback did not start: the stream could not be decoded".into()));
        }
        return;
    }
    let now = shared.now_s();
    let played = shared.played_s();
    if shared.duration_s.is_some_and(|d| played >= d) {
        shared.finish(Finish::DurationReached);
        return;
    }
    let ahead = shared.buffer_ahead_s();
    let nothing_more = shared.nothing_more_to_push();
    if nothing_more && ahead <= STARVED_S {
        // Everything pushed has played by the clock: the pipeline's end-of-stream should follow; if a
        // sink never posts it, end anyway rather than wait forever.
        let since = *shared.all_played_at.get_or_insert_with(Instant::now);
        if since.elapsed() > END_OF_STREAM_GRACE {
            tracing::warn!("no end-of-stream from the pipeline {END_OF_STREAM_GRACE:?} after the last media played");
            shared.finish(Finish::EndOfStream);
            return;
        }
    }
    match shared.stall.update(now, ahead, nothing_more) {
        StallAction::Pause => {
            shared.frozen_played_s = Some(played);
            if let Err(e) = shared.pipeline.pause() {
                shared.finish(Finish::Failed(e.to_string()));
            }
            tracing::info!("stall at {played:.1} s of media");
            shared.event(json!({"event": "stall", "played_s": played}));
        }
        StallAction::Resume => {
            shared.frozen_played_s = None;
            if let Err(e) = shared.pipeline.play() {
                shared.finish(Finish::Failed(e.to_string()));
            }
            let stall_ms = (shared.stall.total_s * 1000.0).round() as u64;
            shared.event(json!({"event": "resume", "buffer_s": ahead, "total_stall_ms": stall_ms}));
        }
        StallAction::None => {}
    }
    if last_point.elapsed() >= TIMELINE_INTERVAL {
        *last_point = Instant::now();
        let point = TimelinePoint {
            t_s: now,
            estimate_bps: shared.status.estimate_bps,
            bitrate_bps: shared.status.bitrate_bps as f64,
            buffer_s: ahead,
        };
        shared.timeline.push(point);
    }
    if !quiet && last_status.elapsed() >= STATUS_INTERVAL {
        *last_status = Instant::now();
        let status = &shared.status;
        let resolution = status.resolution.map_or_else(|| "?".to_string(), |(w, h)| format!("{w}x{h}"));
        let line = format!(
            "rendition {} {} {} kbps | buffer {:.1} s | bandwidth {:.2} Mbps | played {:.1} s | stalls {}{}",
            status.rendition,
            resolution,
            status.bitrate_bps / 1000,
            ahead,
            status.estimate_bps / 1e6,
            played,
            shared.stall.count,
            if shared.stall.is_stalled() { " (stalled)" } else { "" },
        );
        if std::io::stderr().is_terminal() {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
    }
}

/// Media playlists per variant, reloaded on schedule for live streams.
struct Playlists {
    loaded: HashMap<usize, LoadedPlaylist>,
}

struct LoadedPlaylist {
    playlist: MediaPlaylist,
    loaded_at: Instant,
    unchanged: bool,
}

/// What the next segment position resolved to.
enum Next {
    Segment(Box<Segment>),
    /// The stream is over (ENDLIST reached).
    End,
    /// The position fell out of a live window; continue from this sequence.
    Skip(u64),
}

impl Playlists {
    async fn load(&mut self, fetcher: &Fetcher, variant: &Variant) -> Result<&LoadedPlaylist, PlayError> {
        if let std::collections::hash_map::Entry::Vacant(entry) = self.loaded.entry(variant.index) {
            let playlist = fetch_media_playlist(fetcher, &variant.uri).await?;
            entry.insert(LoadedPlaylist { playlist, loaded_at: Instant::now(), unchanged: false });
        }
        self.loaded.get(&variant.index).ok_or_else(|| PlayError::NoRendition("playlist vanished".into()))
    }

    /// The segment `sequence` of `variant`, waiting for live reloads as needed. Returns `Ok(None)` if
    /// `stop` became true while waiting.
    async fn next(
        &mut self,
        fetcher: &Fetcher,
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
}

async fn fetch_media_playlist(fetcher: &Fetcher, url: &Url) -> Result<MediaPlaylist, PlayError> {
    let body = fetcher.get(url, None).await?;
    match playlist::parse(&body, url)? {
        Parsed::Media(media) => Ok(media),
        Parsed::Master(_) => Err(PlaylistError::Unsupported {
            url: url.to_string(),
            reason: "a master playlist where a media playlist was expected".into(),
        }
        .into()),
    }
}

/// The ladder the ABR chooses from: variants sorted by bitrate, after the caps.
struct Ladder {
    variants: Vec<Variant>,
    rungs: Vec<Rung>,
    max_rung: usize,
}

fn build_ladder(mut variants: Vec<Variant>, config: &PlayerConfig) -> Result<Ladder, PlayError> {
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

/// Plays `config.url` to the end (or `--duration`, or Ctrl-C).
pub async fn play(config: PlayerConfig) -> Result<Played, PlayError> {
    let started_at = Instant::now();
    let fetcher = Fetcher::new()?;
    let body = fetcher.get(&config.url, None).await?;
    let mut playlists = Playlists { loaded: HashMap::new() };
    let variants = match playlist::parse(&body, &config.url)? {
        Parsed::Master(variants) => variants,
        Parsed::Media(media) => {
            playlists.loaded.insert(0, LoadedPlaylist { playlist: media, loaded_at: Instant::now(), unchanged: false });
            vec![Variant {
                index: 0,
                uri: config.url.clone(),
                bandwidth_bps: 0,
                average_bandwidth_bps: None,
                resolution: None,
            }]
        }
    };
    let ladder = build_ladder(variants, &config)?;
    // The lowest rung's playlist tells the container and the start position (all rungs align).
    let first_rung = 0;
    let first = playlists.load(&fetcher, &ladder.variants[first_rung]).await?.playlist.clone();
    if first.segments.is_empty() && first.ended {
        return Err(PlayError::NoRendition(format!(
            "{}: the playlist has no segment",
            ladder.variants[first_rung].uri
        )));
    }
    let container = if first.is_fmp4() { Container::Fmp4 } else { Container::MpegTs };
    let start_sequence = match config.start_at_s {
        Some(seconds) => first
            .sequence_at(seconds)
            .ok_or_else(|| PlayError::NoRendition(format!("--start-at {seconds} is past the end of the stream")))?,
        None if !first.ended => first.live_start_sequence().unwrap_or(0),
        None => first.segments.first().map_or(0, |s| s.sequence),
    };
    let events = EventWriter::create(config.events.as_deref()).map_err(|e| {
        PlayError::Output(format!("{}: {e}", config.events.as_deref().unwrap_or(std::path::Path::new("")).display()))
    })?;
    let shared = Arc::new(Mutex::new(Shared {
        pipeline: Pipeline::new(container, config.headless)?,
        started_at,
        play_requested_at: None,
        playing_since: None,
        pushed_media_s: 0.0,
        all_pushed: false,
        stall: StallTracker::new(RESUME_THRESHOLD_S.min(config.buffer_target_s)),
        frozen_played_s: None,
        finish: None,
        duration_s: config.duration_s,
        all_played_at: None,
        status: Status::default(),
        timeline: Vec::new(),
        events,
    }));
    let monitor = {
        let shared = Arc::clone(&shared);
        let quiet = config.quiet;
        tokio::spawn(async move {
            let mut last_status = Instant::now();
            let mut last_point = Instant::now() - TIMELINE_INTERVAL;
            let mut ticker = tokio::time::interval(MONITOR_INTERVAL);
            loop {
                ticker.tick().await;
                let mut state = lock(&shared);
                monitor_tick(&mut state, quiet, &mut last_status, &mut last_point);
                if state.finish.is_some() {
                    break;
                }
            }
        })
    };
    let interrupt = {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                lock(&shared).finish(Finish::Interrupted);
            }
        })
    };
    let mut downloader = Downloader {
        config: &config,
        fetcher: &fetcher,
        ladder: &ladder,
        shared: &shared,
        playlists,
        estimator: BandwidthEstimator::default(),
        abr: EddyAbr::new(),
        keys: HashMap::new(),
        last_init: None,
        past_throughputs: Vec::new(),
        last_download: None,
        records: Vec::new(),
        durations: Vec::new(),
        bytes: body.len() as u64,
        abandoned: 0,
    };
    let result = downloader.run(start_sequence).await;
    if let Err(error) = &result {
        lock(&shared).finish(Finish::Failed(error.to_string()));
    }
    let _ = monitor.await;
    interrupt.abort();
    let (records, durations, bytes, abandoned) =
        (downloader.records, downloader.durations, downloader.bytes, downloader.abandoned);
    result?;
    let mut state = lock(&shared);
    let finish = state.finish.clone().unwrap_or(Finish::EndOfStream);
    if let Finish::Failed(message) = &finish {
        return Err(PipelineError::Decode(message.clone()).into());
    }
    let now = state.now_s();
    let played_s = match finish {
        Finish::EndOfStream => state.pushed_media_s,
        _ => state.played_s(),
    };
    let startup_ms = state.playing_since.map_or(0, |t| t.duration_since(started_at).as_millis() as u64);
    // Only segments that (at least partly) played belong to the report.
    let mut start = 0.0;
    let played_count = durations
        .iter()
        .take_while(|&&d| {
            let begins = start;
            start += d;
            begins < played_s - 1e-3
        })
        .count();
    let report = Report::build(
        config.url.to_string(),
        startup_ms,
        played_s,
        state.stall.count,
        state.stall.total_at(now),
        bytes,
        abandoned,
        finish == Finish::Interrupted,
        records[..played_count].to_vec(),
        &durations[..played_count],
    );
    state.event(json!({"event": "end", "reason": format!("{finish:?}"), "qoe_lin": report.qoe_lin}));
    state.pipeline.stop();
    Ok(Played { report, timeline: std::mem::take(&mut state.timeline) })
}

struct Downloader<'a> {
    config: &'a PlayerConfig,
    fetcher: &'a Fetcher,
    ladder: &'a Ladder,
    shared: &'a Arc<Mutex<Shared>>,
    playlists: Playlists,
    estimator: BandwidthEstimator,
    abr: EddyAbr,
    keys: HashMap<Url, Bytes>,
    /// The init section last pushed (fMP4): pushed again when it changes (rendition switch).
    last_init: Option<InitSection>,
    past_throughputs: Vec<f64>,
    /// The previous segment's finished download (emergency downswitch when it was slower than real time).
    last_download: Option<LastDownload>,
    records: Vec<SegmentRecord>,
    durations: Vec<f64>,
    bytes: u64,
    abandoned: u32,
}

impl Downloader<'_> {
    async fn run(&mut self, mut sequence: u64) -> Result<(), PlayError> {
        let mut current: Option<usize> = None;
        loop {
            // Bounded look-ahead: wait while the buffer is at its target.
            loop {
                let (ahead, stop, enough) = {
                    let state = lock(self.shared);
                    let enough = state.duration_s.is_some_and(|d| state.pushed_media_s >= d);
                    (state.buffer_ahead_s(), state.finish.is_some(), enough)
                };
                if stop || enough {
                    return Ok(());
                }
                if ahead < self.config.buffer_target_s {
                    break;
                }
                tokio::time::sleep(MONITOR_INTERVAL).await;
            }
            let (buffer_s, now_s) = {
                let state = lock(self.shared);
                (state.buffer_ahead_s(), state.now_s())
            };
            let mut rung = self.decide(current, buffer_s, now_s, sequence).await?;
            let shared = Arc::clone(self.shared);
            let stop = move || lock(&shared).finish.is_some();
            let segment = match self.playlists.next(self.fetcher, &self.ladder.variants[rung], sequence, &stop).await? {
                None => return Ok(()),
                Some(Next::End) => break,
                Some(Next::Skip(to)) => {
                    tracing::warn!("fell behind the live window: skipping from {sequence} to {to}");
                    sequence = to;
                    continue;
                }
                Some(Next::Segment(segment)) => *segment,
            };
            let mut abandoned_here = false;
            let mut segment = segment;
            let (data, download_ms) = loop {
                match self.fetch_segment(&segment, rung).await {
                    Ok(SegmentFetch::Done(data, download_ms)) => break (data, download_ms),
                    Ok(SegmentFetch::Stopped) => return Ok(()),
                    Ok(SegmentFetch::Abandoned(lower)) => {
                        abandoned_here = true;
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
                match self.playlists.next(self.fetcher, &self.ladder.variants[rung], sequence, &stop).await? {
                    Some(Next::Segment(lower)) => segment = *lower,
                    _ => {
                        return Err(PlayError::Segment { sequence, reason: "missing from the lower rendition".into() })
                    }
                }
            };
            let data = self.decrypt(&segment, data).await?;
            let switched = current.is_some_and(|c| c != rung);
            let init_changed = segment.init.is_some() && segment.init != self.last_init;
            if init_changed {
                if let Some(init) = &segment.init {
                    let init_data = self.fetcher.get(&init.uri, init.range).await?;
                    self.bytes += init_data.len() as u64;
                    lock(self.shared).pipeline.push(init_data.to_vec(), true)?;
                    self.last_init = segment.init.clone();
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
                abandoned: abandoned_here,
            };
            {
                let mut state = lock(self.shared);
                state.pipeline.push(data, (switched || segment.discontinuity) && !init_changed)?;
                state.pushed_media_s += segment.duration_s;
                if state.play_requested_at.is_none() {
                    state.pipeline.play()?;
                    state.play_requested_at = Some(Instant::now());
                }
                let estimate = self.estimator.estimate_bps(state.now_s());
                state.status = Status {
                    rendition: variant.index,
                    resolution: variant.resolution,
                    bitrate_bps: record.bitrate_bps,
                    estimate_bps: estimate,
                };
                let buffer_s = state.buffer_ahead_s();
                state.event(json!({
                    "event": "segment", "index": record.index, "rendition": record.rendition,
                    "bitrate_bps": record.bitrate_bps, "bytes": record.bytes, "download_ms": record.download_ms,
                    "abandoned": record.abandoned, "estimate_bps": estimate.round(), "buffer_s": buffer_s,
                }));
            }
            self.records.push(record);
            self.durations.push(segment.duration_s);
            current = Some(rung);
            sequence = segment.sequence + 1;
        }
        let mut state = lock(self.shared);
        state.all_pushed = true;
        if state.play_requested_at.is_none() {
            return Err(PlayError::NoRendition("the stream has no segment to play".into()));
        }
        state.pipeline.end_of_stream()?;
        Ok(())
    }

    async fn decide(
        &mut self,
        current: Option<usize>,
        buffer_s: f64,
        now_s: f64,
        sequence: u64,
    ) -> Result<usize, PlayError> {
        let ladder = self.ladder;
        if ladder.rungs.len() == 1 {
            return Ok(0);
        }
        let duration = match self.playlists.loaded.get(&ladder.variants[current.unwrap_or(0)].index) {
            Some(loaded) => {
                loaded.playlist.segment(sequence).map_or(loaded.playlist.target_duration_s, |s| s.duration_s)
            }
            None => 4.0,
        };
        // Media listed after this segment, and whether the list is final (VOD).
        let (listed_after_s, ended) = self
            .playlists
            .loaded
            .get(&ladder.variants[current.unwrap_or(0)].index)
            .map(|loaded| {
                let playlist = &loaded.playlist;
                let after: f64 = playlist.segments.iter().filter(|s| s.sequence > sequence).map(|s| s.duration_s).sum();
                (after, playlist.ended)
            })
            .unwrap_or((0.0, false));
        // VOD: the buffer need not outlast the stream.
        let remaining_s = ended.then_some(listed_after_s);
        // Live: segments appear in real time, as fast as playback drains them, so the buffer cannot
        // grow past what is listed now; a plan counting on the full target would overreach.
        let buffer_target_s = if ended {
            self.config.buffer_target_s
        } else {
            self.config.buffer_target_s.min(buffer_s + duration + listed_after_s)
        };
        let input = AbrInput {
            ladder: &ladder.rungs,
            estimate_bps: self.estimator.estimate_bps(now_s),
            ttfb_s: self.estimator.ttfb_s(),
            buffer_s,
            buffer_target_s,
            segment_duration_s: duration,
            current,
            max_rung: ladder.max_rung,
            past_throughputs_bps: &self.past_throughputs,
            remaining_s,
            last_download: self.last_download,
        };
        let rung = self.abr.choose(&input).min(ladder.max_rung);
        if let Some(from) = current.filter(|&c| c != rung) {
            tracing::info!(
                "switch at segment {sequence}: rendition {} -> {} (estimate {:.0} kbps, buffer {buffer_s:.1} s)",
                ladder.variants[from].index,
                ladder.variants[rung].index,
                input.estimate_bps / 1000.0
            );
        }
        Ok(rung)
    }

    async fn fetch_segment(&mut self, segment: &Segment, rung: usize) -> Result<SegmentFetch, FetchError> {
        let ladder = self.ladder;
        let shared = self.shared;
        let estimator = &mut self.estimator;
        let abr = &mut self.abr;
        let started_at = lock(shared).started_at;
        let seconds = |t: Instant| t.duration_since(started_at).as_secs_f64();
        let expected = segment
            .range
            .map(|r| r.length)
            .unwrap_or((ladder.rungs[rung].bitrate_bps as f64 * segment.duration_s / 8.0) as u64);
        let can_abandon = rung > 0 && lock(shared).playing_since.is_some();
        let mut lower = None;
        let mut stopped = false;
        let outcome = self
            .fetcher
            .download(&segment.uri, segment.range, |progress| {
                let now = seconds(Instant::now());
                estimator.set_in_progress(PartialTransfer {
                    request_s: seconds(progress.requested_at),
                    first_byte_s: progress.first_byte_at.map(seconds),
                    bytes_so_far: progress.bytes_so_far,
                });
                // Playback is over (--duration, Ctrl-C, an error): stop downloading now.
                if lock(shared).finish.is_some() {
                    stopped = true;
                    return true;
                }
                if !can_abandon {
                    return false;
                }
                let input = AbandonInput {
                    ladder: &ladder.rungs,
                    rung,
                    elapsed_s: now - seconds(progress.requested_at),
                    bytes_done: progress.bytes_so_far,
                    bytes_total: progress.expected_bytes.unwrap_or(expected),
                    partial_bps: estimator.partial_bps(now),
                    ttfb_s: estimator.ttfb_s(),
                    buffer_s: lock(shared).buffer_ahead_s(),
                    segment_duration_s: segment.duration_s,
                };
                lower = abr.abandon(&input);
                lower.is_some()
            })
            .await;
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(error) => {
                self.estimator.clear_in_progress();
                return Err(error);
            }
        };
        match outcome {
            Outcome::Done(download) => {
                let sample = TransferSample {
                    request_s: seconds(download.requested_at),
                    first_byte_s: seconds(download.first_byte_at),
                    end_s: seconds(download.finished_at),
                    bytes: download.body.len() as u64,
                };
                self.estimator.add_transfer(sample);
                let transfer_s = (sample.end_s - sample.request_s).max(1e-3);
                // An empty body says nothing about the link (and would read as a link of 0 bit/s).
                if sample.bytes > 0 {
                    self.past_throughputs.push(sample.bytes as f64 * 8.0 / transfer_s);
                }
                self.last_download =
                    Some(LastDownload { download_s: transfer_s, media_s: segment.duration_s, bytes: sample.bytes });
                self.bytes += sample.bytes;
                let download_ms = download.finished_at.duration_since(download.requested_at).as_millis() as u64;
                Ok(SegmentFetch::Done(download.body.to_vec(), download_ms))
            }
            Outcome::Abandoned { bytes_so_far } if stopped => {
                self.estimator.clear_in_progress();
                self.bytes += bytes_so_far;
                Ok(SegmentFetch::Stopped)
            }
            Outcome::Abandoned { bytes_so_far } => {
                self.estimator.clear_in_progress();
                self.bytes += bytes_so_far;
                self.abandoned += 1;
                let to = lower.unwrap_or(0);
                let mut state = lock(shared);
                let buffer_s = state.buffer_ahead_s();
                tracing::info!(
                    "abandoned segment {} at rendition {} after {bytes_so_far} bytes; refetching at rendition {}",
                    segment.sequence,
                    ladder.variants[rung].index,
                    ladder.variants[to].index
                );
                state.event(json!({
                    "event": "abandon", "index": segment.sequence, "rendition": ladder.variants[rung].index,
                    "to_rendition": ladder.variants[to].index, "bytes": bytes_so_far, "buffer_s": buffer_s,
                }));
                Ok(SegmentFetch::Abandoned(to))
            }
        }
    }

    async fn decrypt(&mut self, segment: &Segment, data: Vec<u8>) -> Result<Vec<u8>, PlayError> {
        let Some(key) = &segment.key else {
            return Ok(data);
        };
        let key_bytes = match self.keys.get(&key.uri) {
            Some(bytes) => bytes.clone(),
            None => {
                let bytes = self.fetcher.get(&key.uri, None).await?;
                self.keys.insert(key.uri.clone(), bytes.clone());
                bytes
            }
        };
        crypto::decrypt_aes128(&key_bytes, &key.iv, &data)
            .map_err(|e| PlayError::Decrypt { sequence: segment.sequence, reason: e.to_string() })
    }
}

enum SegmentFetch {
    Done(Vec<u8>, u64),
    Abandoned(usize),
    /// Playback ended while the segment was downloading.
    Stopped,
}

#[cfg(test)]
mod tests {
    use super::nothing_more_to_push;

    #[test]
    fn reaching_the_requested_duration_leaves_nothing_more_to_push() {
        assert!(!nothing_more_to_push(false, 11.0, Some(12.0)));
        assert!(nothing_more_to_push(false, 12.0, Some(12.0)), "the end of --duration is not a stall");
        assert!(nothing_more_to_push(true, 5.0, None), "the end of the stream is not a stall");
        assert!(!nothing_more_to_push(false, 500.0, None));
    }
}
