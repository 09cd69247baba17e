//! The monitor: every [`MONITOR_INTERVAL`] it reads the pipeline's messages, measures the buffer
//! ahead of the playback position, pauses on a stall and resumes after it (the decisions are
//! `crate::stall`'s), ends playback at `--duration` or when the pipeline stops, records the
//! `--plot` timeline, prints the status line and updates the subtitle overlay.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::commands;
use super::state::{lock, Finish, Playback, Status};
use super::subtitles;
use crate::events::Event;
use crate::pipeline::PipelineEvent;
use crate::report::TimelinePoint;
use crate::stall::{StallAction, STARVED_S};

/// How often the monitor measures the buffer and checks the pipeline.
pub(super) const MONITOR_INTERVAL: Duration = Duration::from_millis(100);
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

/// Runs the monitor until playback has finished.
pub(super) async fn run(shared: Arc<Mutex<Playback>>, quiet: bool) {
    let mut last_status = Instant::now();
    let mut last_point = Instant::now().checked_sub(TIMELINE_INTERVAL).unwrap_or_else(Instant::now);
    let mut ticker = tokio::time::interval(MONITOR_INTERVAL);
    loop {
        ticker.tick().await;
        let mut state = lock(&shared);
        tick(&mut state, quiet, &mut last_status, &mut last_point);
        if state.finish.is_some() {
            break;
        }
    }
}

/// One tick of the monitor: pipeline messages, stall detection, duration, status line, timeline.
fn tick(shared: &mut Playback, quiet: bool, last_status: &mut Instant, last_point: &mut Instant) {
    for event in shared.sink.poll() {
        match event {
            PipelineEvent::Playing if shared.playing_since.is_none() => {
                shared.playing_since = Some(Instant::now());
                let startup_ms = shared.started_at.elapsed().as_millis() as u64;
                shared.event(Event::Playing { startup_ms });
            }
            PipelineEvent::Playing => {}
            PipelineEvent::EndOfStream => shared.finish(Finish::EndOfStream),
            PipelineEvent::Error(message) => shared.finish(Finish::Failed(message)),
            PipelineEvent::TitleShown(title) => shared.event(Event::Title { title }),
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
    let ahead = shared.playable_ahead_s();
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
    if let Some((to_s, at_s)) = shared.scripted_seek {
        if played >= at_s {
            shared.scripted_seek = None;
            commands::request_seek_by(shared, to_s - shared.position_s());
        }
    }
    if shared.seek_refilling {
        // A seek's refill is the viewer's doing, not the network's: no stall is counted.
        if ahead >= shared.stall.resume_threshold_s() || nothing_more {
            shared.seek_refilling = false;
            if !shared.user_paused {
                shared.frozen_played_s = None;
                if let Err(e) = shared.sink.play() {
                    shared.finish(Finish::Failed(e.to_string()));
                }
            }
        }
    } else if !shared.user_paused {
        stall_check(shared, now, ahead, played, nothing_more);
    }
    // Live only (a VOD stream has a length): a VOD's dates say when it was recorded, not how late it plays.
    let live = shared.stream_duration_s.is_none();
    if live && !shared.user_paused && !shared.stall.is_stalled() && !shared.seek_refilling {
        if let Some(latency) =
            shared.live_latency_s(chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now()))
        {
            shared.latency_samples.push(latency);
        }
    }
    subtitles::render(shared);
    if let Some(title) = shared.title_playing().map(str::to_owned) {
        shared.sink.set_title(&title);
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
        let line = status_line(&shared.status, ahead, played, shared.stall.count, shared.stall.is_stalled());
        if std::io::stderr().is_terminal() {
            // Rewrite the line in place: carriage return, then erase the line (ECMA-48 EL, CSI 2 K).
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
    }
}

/// The network's stalls: pause when the buffer runs dry, resume once it refilled.
fn stall_check(state: &mut Playback, now: f64, ahead: f64, played: f64, nothing_more: bool) {
    match state.stall.update(now, ahead, nothing_more) {
        StallAction::Pause => {
            state.frozen_played_s = Some(played);
            if let Err(e) = state.sink.pause() {
                state.finish(Finish::Failed(e.to_string()));
            }
            tracing::info!("stall at {played:.1} s of media");
            state.event(Event::Stall { played_s: played });
        }
        StallAction::Resume => {
            state.frozen_played_s = None;
            if let Err(e) = state.sink.play() {
                state.finish(Finish::Failed(e.to_string()));
            }
            let stall_ms = (state.stall.total_s * 1000.0).round() as u64;
            state.event(Event::Resume { buffer_s: ahead, total_stall_ms: stall_ms });
        }
        StallAction::None => {}
    }
}

/// The status line: what plays, how much is buffered, the estimate, and stalls.
fn status_line(status: &Status, ahead: f64, played: f64, stalls: u32, stalled: bool) -> String {
    let resolution = status.resolution.map_or_else(|| "?".to_string(), |(w, h)| format!("{w}x{h}"));
    format!(
        "rendition {} {} {} kbps | buffer {:.1} s | bandwidth {:.2} Mbps | played {:.1} s | stalls {}{}",
        status.rendition,
        resolution,
        status.bitrate_bps / 1000,
        ahead,
        status.estimate_bps / 1e6,
        played,
        stalls,
        if stalled { " (stalled)" } else { "" },
    )
}
