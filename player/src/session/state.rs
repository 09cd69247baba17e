//! The playback state the download loop and the monitor share (behind one mutex): what was pushed,
//! what played, stalls, how playback ends, the status line's figures, the timeline and the event log.

use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use super::seams::MediaSink;
use super::subtitles::SubtitleTrack;
use crate::events::{EndReason, Event, EventRecord, EventWriter};
use crate::report::TimelinePoint;
use crate::stall::StallTracker;

/// How a playback ends (the first reason wins).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Finish {
    EndOfStream,
    DurationReached,
    Interrupted,
    /// `q` at the keyboard.
    Quit,
    Failed(String),
}

impl Finish {
    /// The reason as the event log states it, with the error for a failure.
    pub(super) fn reason(&self) -> (EndReason, Option<String>) {
        match self {
            Finish::EndOfStream => (EndReason::EndOfStream, None),
            Finish::DurationReached => (EndReason::DurationReached, None),
            Finish::Interrupted => (EndReason::Interrupted, None),
            Finish::Quit => (EndReason::Quit, None),
            Finish::Failed(message) => (EndReason::Failed, Some(message.clone())),
        }
    }
}

/// What the status line shows of the download side.
#[derive(Debug, Clone, Default)]
pub(super) struct Status {
    pub rendition: usize,
    pub resolution: Option<(u64, u64)>,
    pub bitrate_bps: u64,
    pub estimate_bps: f64,
}

pub(super) struct Playback {
    pub sink: Box<dyn MediaSink>,
    pub started_at: Instant,
    pub play_requested_at: Option<Instant>,
    pub playing_since: Option<Instant>,
    /// Media seconds pushed into the pipeline.
    pub pushed_media_s: f64,
    pub all_pushed: bool,
    /// A separate audio rendition's track, when one plays.
    pub audio: Option<AudioTrack>,
    /// The subtitle rendition's cues, when one is fetched.
    pub subtitles: Option<SubtitleTrack>,
    /// Whether cues are drawn over the video: `--subs` turns them on.
    pub subtitles_visible: bool,
    /// Per discontinuity sequence number, where the video's timestamps sit on the media timeline: the
    /// first presentation timestamp (90 kHz) of the first video segment pushed in that domain, when it
    /// could be read, and that segment's media time. What a WebVTT `X-TIMESTAMP-MAP` in the same
    /// domain is relative to (RFC 8216 §3.5): timestamps start over at a discontinuity.
    pub video_domains: std::collections::BTreeMap<u64, crate::webvtt::VideoStart>,
    pub stall: StallTracker,
    /// Played seconds frozen while the pipeline is paused for a stall.
    pub frozen_played_s: Option<f64>,
    pub finish: Option<Finish>,
    /// `--duration`.
    pub duration_s: Option<f64>,
    /// When the monitor first saw everything pushed played (end-of-stream grace).
    pub all_played_at: Option<Instant>,
    pub status: Status,
    pub timeline: Vec<TimelinePoint>,
    /// Paused from the keyboard (space): no stall is detected, and a stall's end does not resume.
    pub user_paused: bool,
    /// A rung pinned from the keyboard (↑/↓), instead of the ABR's choice; `a` clears it.
    pub pinned_rung: Option<usize>,
    /// The rung of the last segment pushed.
    pub current_rung: usize,
    /// Where the media playing now sits on the stream's timeline: `media_origin_s + played_s()`.
    pub media_origin_s: f64,
    /// A VOD stream's length (seeks stay within it); `None` for live.
    pub stream_duration_s: Option<f64>,
    /// A live stream's window on the position axis, as of the last segment pushed: where seeks may go
    /// (`None` for VOD, and until a segment start is known).
    pub live_window: Option<crate::controls::SeekWindow>,
    /// A seek asked for (media seconds), not yet carried out by the download loop.
    pub seek_request: Option<f64>,
    /// The last seek carried out: its number (the audio loop follows each), where its media starts
    /// on the stream's timeline and on the pipeline's running time.
    pub seek: SeekDone,
    /// A seek's refill: the pipeline is paused until the buffer reaches the resume threshold (not a
    /// stall: the viewer asked for it).
    pub seek_refilling: bool,
    /// `--seek-to TO@AT`: a seek to TO once AT seconds have played.
    pub scripted_seek: Option<(f64, f64)>,
    /// Where pushed media sits on the wall clock: (pushed media seconds where a dated segment or part
    /// starts, its EXT-X-PROGRAM-DATE-TIME), oldest first; those behind the playback position are
    /// dropped as it passes them.
    pub dates: std::collections::VecDeque<(f64, chrono::DateTime<chrono::Utc>)>,
    /// The window title of each rendition's run in the pushed media: (pushed media seconds where it
    /// starts, title), oldest first; the monitor shows the one playing and drops those passed.
    pub titles: std::collections::VecDeque<(f64, String)>,
    /// Live latency samples (seconds): wall clock minus the date of the media playing.
    pub latency_samples: Vec<f64>,
    events: EventWriter,
}

/// The last seek the download loop carried out.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct SeekDone {
    pub generation: u64,
    pub media_s: f64,
    pub running_s: f64,
}

impl Playback {
    pub fn new(
        sink: Box<dyn MediaSink>,
        started_at: Instant,
        stall: StallTracker,
        duration_s: Option<f64>,
        events: EventWriter,
    ) -> Self {
        Playback {
            sink,
            started_at,
            play_requested_at: None,
            playing_since: None,
            pushed_media_s: 0.0,
            all_pushed: false,
            audio: None,
            subtitles: None,
            subtitles_visible: false,
            video_domains: std::collections::BTreeMap::new(),
            stall,
            frozen_played_s: None,
            finish: None,
            duration_s,
            all_played_at: None,
            status: Status::default(),
            timeline: Vec::new(),
            user_paused: false,
            pinned_rung: None,
            current_rung: 0,
            media_origin_s: 0.0,
            stream_duration_s: None,
            live_window: None,
            seek_request: None,
            seek: SeekDone::default(),
            seek_refilling: false,
            scripted_seek: None,
            dates: std::collections::VecDeque::new(),
            titles: std::collections::VecDeque::new(),
            latency_samples: Vec::new(),
            events,
        }
    }

    /// Seconds since the player started: the clock every ABR time is on.
    pub fn now_s(&self) -> f64 {
        self.seconds(Instant::now())
    }

    /// `t` in seconds since the player started.
    pub fn seconds(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.started_at).as_secs_f64()
    }

    /// Media played so far, measured on the pipeline clock (running time), frozen during stalls.
    pub fn played_s(&self) -> f64 {
        if self.playing_since.is_none() {
            return 0.0;
        }
        if let Some(frozen) = self.frozen_played_s {
            return frozen;
        }
        self.sink.running_time_s().unwrap_or(0.0).min(self.pushed_media_s)
    }

    /// The variant's media buffered ahead: what the ABR and the download loop plan with.
    pub fn buffer_ahead_s(&self) -> f64 {
        (self.pushed_media_s - self.played_s()).max(0.0)
    }

    /// A separate audio track's media buffered ahead (infinite once it has all been pushed: a track
    /// that ended cannot starve playback).
    pub fn audio_ahead_s(&self) -> Option<f64> {
        let audio = self.audio.as_ref()?;
        if audio.all_pushed {
            return Some(f64::INFINITY);
        }
        Some((audio.pushed_s - self.played_s()).max(0.0))
    }

    /// What can play before something runs out: the least buffered track. The pipeline stops at the
    /// first empty source, so stalls are detected on this.
    pub fn playable_ahead_s(&self) -> f64 {
        self.audio_ahead_s().map_or(self.buffer_ahead_s(), |audio| audio.min(self.buffer_ahead_s()))
    }

    /// Enough media is pushed for `--duration`: the download loop stops.
    pub fn enough_pushed(&self) -> bool {
        self.duration_s.is_some_and(|d| self.pushed_media_s >= d)
    }

    /// Whether the pipeline holds all the media this playback will play: the stream's last segment,
    /// or enough for `--duration`. The buffer running out then is the end, not a stall.
    pub fn nothing_more_to_push(&self) -> bool {
        let audio_done = self
            .audio
            .as_ref()
            .is_none_or(|audio| audio.all_pushed || self.duration_s.is_some_and(|d| audio.pushed_s >= d));
        (self.all_pushed || self.enough_pushed()) && audio_done
    }

    pub fn event(&mut self, event: Event) {
        let unix_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let t_s = (self.now_s() * 1000.0).round() / 1000.0;
        self.events.write(&EventRecord { event, t_s, unix_ms });
    }

    /// The live latency now: the wall clock minus the date of the media at the playback position
    /// (the last dated push at or before it, plus the media played since). Forgets the dates the
    /// position has passed. `None` for undated media.
    pub fn live_latency_s(&mut self, now: chrono::DateTime<chrono::Utc>) -> Option<f64> {
        let played = self.played_s();
        while self.dates.len() > 1 && self.dates.get(1).is_some_and(|(start, _)| *start <= played) {
            self.dates.pop_front();
        }
        let (start, date) = self.dates.front().copied()?;
        if start > played {
            return None;
        }
        let behind_ms = now.signed_duration_since(date).num_milliseconds();
        Some(behind_ms as f64 / 1000.0 - (played - start))
    }

    /// The title of the rendition playing now, once its media has started playing; the titles of
    /// media played past are forgotten.
    pub fn title_playing(&mut self) -> Option<&str> {
        let played = self.played_s();
        while self.titles.len() > 1 && self.titles.get(1).is_some_and(|(start, _)| *start <= played) {
            self.titles.pop_front();
        }
        self.titles.front().filter(|(start, _)| *start <= played).map(|(_, title)| title.as_str())
    }

    /// Where playback is on the stream's timeline (media seconds).
    pub fn position_s(&self) -> f64 {
        self.media_origin_s + self.played_s()
    }

    /// Whether the download loops should drop what they are doing: playback finished, or a seek.
    pub fn interrupted(&self) -> bool {
        self.finish.is_some() || self.seek_request.is_some()
    }

    pub fn finish(&mut self, finish: Finish) {
        if self.finish.is_none() {
            self.finish = Some(finish);
        }
    }
}

/// What was pushed of a separate audio rendition.
#[derive(Debug, Clone, Default)]
pub(super) struct AudioTrack {
    /// Media seconds pushed into the audio source.
    pub pushed_s: f64,
    pub all_pushed: bool,
}

/// The state, even if a holder panicked: playback state stays meaningful, and the player must end.
pub(super) fn lock(shared: &Mutex<Playback>) -> MutexGuard<'_, Playback> {
    shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Looks at the shared state every monitor interval until `decide` answers: what the loops beside the
/// download loop wait on (the video reaching a point, a seek, the end of playback).
pub(super) async fn wait_until(shared: &Mutex<Playback>, decide: impl Fn(&Playback) -> Option<bool>) -> bool {
    loop {
        if let Some(answer) = decide(&lock(shared)) {
            return answer;
        }
        tokio::time::sleep(super::monitor::MONITOR_INTERVAL).await;
    }
}

/// Waits for a seek after `generation` (true) or the end of playback (false).
pub(super) async fn wait_for_seek(shared: &Mutex<Playback>, generation: u64) -> bool {
    wait_until(shared, |state| match () {
        _ if state.finish.is_some() => Some(false),
        _ if state.seek.generation != generation => Some(true),
        _ => None,
    })
    .await
}
