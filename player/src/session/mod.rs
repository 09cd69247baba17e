//! One playback: playlists → ABR decision → fetch → decrypt → push into the pipeline, with a monitor
//! that measures the buffer, pauses on a stall and prints the status line. The decisions live in
//! `crate::abr` and `crate::stall`; this module moves bytes and time between them.
//!
//! - [`play`] (here) sets a playback up, runs it and assembles its report;
//! - `playlists`: media playlists per variant, live reloads, the ladder;
//! - `downloader`: the download loop (one segment at a time);
//! - `audio`: a separate audio rendition's loop, beside the download loop;
//! - `subtitles`: the subtitle rendition's loop (cues to events and the overlay), beside it too;
//! - `keys`: segment keys, fetched once;
//! - `monitor`: the periodic buffer, stall and status-line check;
//! - `state`: the playback state the two share;
//! - `seams`: the fetch and pipeline traits the loop is written against.

mod audio;
mod commands;
mod downloader;
mod keys;
mod monitor;
mod playlists;
mod seams;
mod state;
mod subtitles;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use thiserror::Error;
use url::Url;

use crate::abr::history::History;
use crate::abr::EddyAbr;
use crate::events::{Event, EventWriter};
use crate::fetch::{FetchError, Fetcher};
use crate::pipeline::{self as gst_pipeline, Container, Pipeline, PipelineError};
use crate::playlist::{self, Parsed, PartPosition, PlaylistError, Rendition, Variant};
use crate::renditions::{self, SelectError};
use crate::report::{PlaybackTotals, Report, SegmentRecord, TimelinePoint};
use crate::stall::{StallTracker, RESUME_THRESHOLD_S};
use audio::AudioLoader;
use downloader::{Downloaded, Downloader};
use keys::Keys;
use playlists::{build_ladder, LoadedPlaylist, Playlists};
use state::{lock, AudioTrack, Finish, Playback};
use subtitles::{SubtitleLoader, SubtitleTrack};

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
    /// `--seek-to TO@AT`: seek to TO seconds of media once AT seconds have played (the keys' flag).
    pub seek_to: Option<(f64, f64)>,
    /// Read keys from the terminal (when stdin is one).
    pub keys: bool,
    /// `--audio-lang`: the audio rendition's language (RFC 5646), instead of the stream's default.
    pub audio_lang: Option<String>,
    /// `--subs`: show the subtitle rendition in this language (RFC 5646) over the video.
    pub subs: Option<String>,
    /// `--live-delay`: how far behind the end of a low-latency live playlist to join, instead of
    /// its PART-HOLD-BACK (draft-pantos-hls-rfc8216bis §4.4.3.8); never under two part targets.
    pub live_delay_s: Option<f64>,
}

#[derive(Debug, Error)]
pub enum PlayError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Playlist(#[from] PlaylistError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Select(#[from] SelectError),
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

/// What `--list` prints for `url`: a master's variants and renditions, or a media playlist's length.
pub async fn list(url: &Url) -> Result<String, PlayError> {
    let (body, from) = Fetcher::new()?.get_playlist(url).await?;
    Ok(match playlist::parse(&body, &from)? {
        Parsed::Master(master) => renditions::listing(&master),
        Parsed::Media(media) => format!(
            "a media playlist (no variants or renditions): {} segment(s), {:.1} s{}\n",
            media.segments.len(),
            media.segments.iter().map(|s| s.duration_s).sum::<f64>(),
            if media.ended { "" } else { ", live" }
        ),
    })
}

/// Plays `config.url` to the end (or `--duration`, or Ctrl-C).
pub async fn play(config: PlayerConfig) -> Result<Played, PlayError> {
    let started_at = Instant::now();
    let fetcher = Fetcher::new()?;
    let (body, from) = fetcher.get_playlist(&config.url).await?;
    let mut playlists = Playlists::default();
    let (variants, master) = match playlist::parse(&body, &from)? {
        Parsed::Master(master) => (master.variants.clone(), Some(master)),
        Parsed::Media(media) => {
            playlists
                .loaded
                .insert(0, LoadedPlaylist { playlist: *media, loaded_at: Instant::now(), unchanged: false });
            let variant = Variant::media_playlist(config.url.clone());
            (vec![variant], None)
        }
    };
    let ladder = build_ladder(variants, &config)?;
    for variant in &ladder.variants {
        renditions::check_audio_codecs(variant, &gst_pipeline::can_decode)?;
    }
    let audio_rendition: Option<Rendition> = match &master {
        Some(master) => renditions::select_audio(master, &ladder.variants, config.audio_lang.as_deref())?.cloned(),
        None if config.audio_lang.is_some() => {
            return Err(SelectError::NoAudioRenditions { wanted: config.audio_lang.clone().unwrap_or_default() }.into())
        }
        None => None,
    };
    let subtitle_rendition: Option<Rendition> = match &master {
        Some(master) => renditions::select_subtitles(master, &ladder.variants, config.subs.as_deref())?.cloned(),
        None => match &config.subs {
            Some(wanted) => {
                return Err(SelectError::NoSubtitleLanguage { wanted: wanted.clone(), available: "none".into() }.into())
            }
            None => None,
        },
    };
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
    // Low-latency live: join at a part (draft-pantos-hls-rfc8216bis §6.3.3), PART-HOLD-BACK from the
    // end unless --live-delay says otherwise.
    let start_part = match (config.start_at_s, first.part_target_s) {
        (None, Some(part_target_s)) if !first.ended => {
            let delay_s = live_delay_s(&first, part_target_s, config.live_delay_s);
            first.live_start_part(delay_s)
        }
        _ => None,
    };
    let (start_sequence, start_part) = match start_part {
        Some(at) => {
            tracing::info!("low-latency live: joining at part {} of segment {}", at.part, at.msn);
            (at.msn, Some(at.part))
        }
        None => (start_sequence, None),
    };
    let events = EventWriter::create(config.events.as_deref()).map_err(|e| {
        PlayError::Output(format!("{}: {e}", config.events.as_deref().unwrap_or(std::path::Path::new("")).display()))
    })?;
    let mut audio = match &audio_rendition {
        Some(rendition) => AudioLoader::new(&config, &fetcher, rendition),
        None => None,
    };
    let audio_container = match &mut audio {
        Some(audio) => {
            let playlist = audio.first_playlist().await?;
            Some(if playlist.is_fmp4() { Container::Fmp4 } else { Container::MpegTs })
        }
        None => None,
    };
    let mut subtitles = subtitle_rendition.as_ref().and_then(|rendition| SubtitleLoader::new(&fetcher, rendition));
    let pipeline = Pipeline::new(container, audio_container, config.headless, subtitles.is_some())?;
    if let Some(size) = ladder.variants.iter().filter_map(|v| v.resolution).max_by_key(|&(w, h)| w.saturating_mul(h)) {
        pipeline.set_window_size(size.0, size.1);
    }
    let shared = Arc::new(Mutex::new(Playback::new(
        Box::new(pipeline),
        started_at,
        StallTracker::new(RESUME_THRESHOLD_S.min(config.buffer_target_s)),
        config.duration_s,
        events,
    )));
    if let (Some(rendition), Some(_)) = (&audio_rendition, &audio) {
        let mut state = lock(&shared);
        state.audio = Some(AudioTrack::default());
        let uri = rendition.uri.as_ref().map(Url::to_string).unwrap_or_default();
        state.event(Event::Audio { name: rendition.name.clone(), language: rendition.language.clone(), uri });
    }
    if subtitles.is_some() {
        let mut state = lock(&shared);
        // Where playback starts on the stream's timeline (a live one's starts where it joins).
        let media_start_s = if first.ended {
            first.segments.iter().take_while(|s| s.sequence < start_sequence).map(|s| s.duration_s).sum()
        } else {
            0.0
        };
        state.subtitles = Some(SubtitleTrack { media_start_s, ..SubtitleTrack::default() });
        state.subtitles_visible = config.subs.is_some();
    }
    {
        let mut state = lock(&shared);
        if first.ended {
            state.stream_duration_s = Some(first.segments.iter().map(|s| s.duration_s).sum());
            state.media_origin_s =
                first.segments.iter().take_while(|s| s.sequence < start_sequence).map(|s| s.duration_s).sum();
        }
        state.scripted_seek = config.seek_to;
    }
    // Keys, when stdin is a terminal; the guard restores the terminal when playback ends.
    let controls = if config.keys { crate::controls::Controls::start() } else { None };
    let keys = controls.map(|(guard, mut commands)| {
        if !config.quiet {
            eprintln!("{}", crate::controls::HELP);
        }
        let shared = Arc::clone(&shared);
        let top_rung = ladder.max_rung;
        let task = tokio::spawn(async move {
            while let Some(command) = commands.recv().await {
                let mut state = lock(&shared);
                commands::apply(&mut state, command, top_rung);
                if state.finish.is_some() {
                    break;
                }
            }
        });
        (guard, task)
    });
    let monitor = tokio::spawn(monitor::run(Arc::clone(&shared), config.quiet));
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
        abr: Box::new(EddyAbr::new()),
        history: History::default(),
        keys: Keys::default(),
        last_init: None,
        live_anchor: None,
        part: start_part,
        done: Downloaded { bytes: body.len() as u64, ..Downloaded::default() },
    };
    let video = async {
        let result = downloader.run(start_sequence).await;
        if let Err(error) = &result {
            lock(&shared).finish(Finish::Failed(error.to_string()));
        }
        result
    };
    let audio_loop = async {
        let Some(audio) = &mut audio else { return Ok(0) };
        let video_part = start_part.map(|part| PartPosition { msn: start_sequence, part });
        let result = audio.run(&shared, config.start_at_s, video_part).await;
        if let Err(error) = &result {
            lock(&shared).finish(Finish::Failed(error.to_string()));
        }
        result.map(|()| audio.bytes)
    };
    let subtitle_loop = async {
        let Some(subtitles) = &mut subtitles else { return 0 };
        subtitles.run(&shared, config.start_at_s).await;
        subtitles.bytes
    };
    let (result, audio_result, subtitle_bytes) = tokio::join!(video, audio_loop, subtitle_loop);
    let _ = monitor.await;
    interrupt.abort();
    if let Some((guard, task)) = keys {
        task.abort();
        // The terminal is itself again before the summary is printed.
        drop(guard);
    }
    let mut done = downloader.done;
    result?;
    done.bytes = done.bytes.saturating_add(audio_result?).saturating_add(subtitle_bytes);
    let mut state = lock(&shared);
    let finish = state.finish.clone().unwrap_or(Finish::EndOfStream);
    if let Finish::Failed(message) = &finish {
        return Err(PipelineError::Decode(message.clone()).into());
    }
    let report = Report::build(totals(&config, &state, &finish, done));
    let (reason, error) = finish.reason();
    state.event(Event::End { reason, error, qoe_lin: report.qoe_lin });
    state.sink.stop();
    Ok(Played { report, timeline: std::mem::take(&mut state.timeline) })
}

/// How far behind the end of a low-latency playlist to join: `--live-delay` if given, else the
/// server's PART-HOLD-BACK, else three part targets (§4.4.3.8 recommends that much). Never under two
/// part targets, the least PART-HOLD-BACK may be (§4.4.3.8): closer, the next part is not made yet
/// when the buffer runs out.
fn live_delay_s(playlist: &playlist::MediaPlaylist, part_target_s: f64, asked_s: Option<f64>) -> f64 {
    let least_s = 2.0 * part_target_s;
    let delay_s = asked_s.or(playlist.server_control.part_hold_back_s).unwrap_or(3.0 * part_target_s);
    if delay_s < least_s {
        tracing::warn!("live delay {delay_s:.3} s is under two part targets: using {least_s:.3} s");
    }
    delay_s.max(least_s)
}

/// The report's figures from the finished playback.
fn totals(config: &PlayerConfig, state: &Playback, finish: &Finish, done: Downloaded) -> PlaybackTotals {
    let played_s = match finish {
        Finish::EndOfStream => state.pushed_media_s,
        _ => state.played_s(),
    };
    let startup_ms =
        state.playing_since.map_or(0, |t| t.saturating_duration_since(state.started_at).as_millis() as u64);
    PlaybackTotals {
        url: config.url.to_string(),
        startup_ms,
        played_s,
        stall_count: state.stall.count,
        stall_s: state.stall.total_at(state.now_s()),
        bytes: done.bytes,
        abandoned_downloads: done.abandoned,
        interrupted: matches!(finish, Finish::Interrupted | Finish::Quit),
        audio_played_s: state.sink.audio_played_s(),
        latency_samples: state.latency_samples.clone(),
        segments: played_segments(done.records, played_s),
    }
}

/// The segments that (at least partly) played: only they belong to the report.
fn played_segments(mut records: Vec<SegmentRecord>, played_s: f64) -> Vec<SegmentRecord> {
    let mut start = 0.0;
    let played = records
        .iter()
        .take_while(|record| {
            let begins = start;
            start += record.duration_s;
            begins < played_s - 1e-3
        })
        .count();
    records.truncate(played);
    records
}
