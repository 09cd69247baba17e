//! Runs one packaging job: probe, build the pipeline, store segments as they are produced, then write
//! the playlists — the master last, so a failed run never leaves a master pointing at missing files.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use gst::prelude::*;
use gstreamer as gst;
use serde::Serialize;

use crate::audio::AudioSegmenter;
use crate::codecs;
use crate::crypto;
use crate::error::PackageError;
use crate::ladder::{self, Rung};
use crate::ll_hls::{self, RenditionReport};
use crate::output::{LowLatencyLayout, RenditionWriter, INIT_SEGMENT, KEY_FILE, MEDIA_PLAYLIST};
use crate::pipeline::{self, Built, Format, PipelinePlan, Produced, RungPlan, Source};
use crate::playlist::{self, AudioRendition, Bitrates, MediaOptions, VariantInfo};

/// The master playlist's file name in the output folder.
pub const MASTER_PLAYLIST: &str = "master.m3u8";
/// The separate audio rendition's folder in the output folder (never a ladder rung's name: those are
/// heights such as `480p`).
pub const AUDIO_RENDITION: &str = "audio";
/// The GROUP-ID of the separate audio rendition, named by every variant's AUDIO attribute.
pub const AUDIO_GROUP: &str = "aud";

#[derive(Debug, Clone)]
pub struct PackageConfig {
    pub source: Source,
    pub out_dir: PathBuf,
    pub ladder: Vec<Rung>,
    /// Seconds per segment (= GOP length).
    pub segment_duration: f64,
    pub format: Format,
    pub encrypt: bool,
    /// `Some(n)`: live, a sliding window of `n` segments per playlist.
    pub live_window: Option<usize>,
    /// x264 speed preset; `None` picks one for the source (see [`default_preset`]).
    pub preset: Option<String>,
}

/// How much longer than a video segment an audio segment may be: two AAC frames (21.3 ms each at
/// 48 kHz) and 1 ms. Cuts land on the frame nearest each video boundary, so a segment can gain up to
/// one frame; and the encoder's padding makes the audio about one frame longer than the video, which
/// the last segment keeps rather than leaving it a sliver of its own.
const AUDIO_DURATION_SLACK_NS: u64 =
    2 * pipeline::AAC_FRAME_SAMPLES as u64 * 1_000_000_000 / pipeline::AUDIO_SAMPLE_RATE as u64 + 1_000_000;

/// Where the audio goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AudioLayout {
    /// Muxed into every video rendition (MPEG-TS or fMP4).
    #[default]
    Muxed,
    /// An audio-only fMP4 rendition of its own (`EXT-X-MEDIA:TYPE=AUDIO`), which every variant names
    /// in its AUDIO attribute; the video renditions carry no audio. `language` is the rendition's
    /// LANGUAGE, an RFC 5646 tag (`und` when unknown).
    Separate { language: String },
}

impl AudioLayout {
    /// A separate audio rendition of unknown language.
    pub fn separate() -> Self {
        AudioLayout::Separate { language: "und".to_string() }
    }
}

/// Options that came after [`PackageConfig`]: kept apart so that code building a `PackageConfig`
/// (the origin's jobs) keeps compiling; [`package`] uses the defaults. Build one with
/// `PackageOptions::default()` and the `with_` methods.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct PackageOptions {
    pub audio: AudioLayout,
    /// Low-Latency HLS: live fMP4 published part by part.
    pub low_latency: Option<LowLatency>,
}

impl PackageOptions {
    pub fn with_audio(mut self, audio: AudioLayout) -> Self {
        self.audio = audio;
        self
    }

    pub fn with_low_latency(mut self, low_latency: LowLatency) -> Self {
        self.low_latency = Some(low_latency);
        self
    }
}

/// Low-Latency HLS (draft-pantos-hls-rfc8216bis): every segment is published as parts of
/// `part_duration` seconds while it is being made, each a file of its own starting with a keyframe,
/// with blocking-reload-ready playlists. Needs a live fMP4 package without encryption, and segments
/// that are a whole number of parts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LowLatency {
    pub part_duration: f64,
}

impl Default for LowLatency {
    /// One-second parts: with blocking reloads a player can sit about three parts behind the live edge
    /// (PART-HOLD-BACK), a few seconds from capture.
    fn default() -> Self {
        LowLatency { part_duration: 1.0 }
    }
}

/// Checks a low-latency package's settings that need nothing but the configuration; returns the
/// parts per segment.
fn check_low_latency(config: &PackageConfig, low_latency: &LowLatency) -> Result<usize, PackageError> {
    let refuse = |reason: String| Err(PackageError::LowLatency(reason));
    let Some(window) = config.live_window else {
        return refuse("needs a live package: parts exist only at the live edge".into());
    };
    if config.format != Format::Fmp4 {
        return refuse("needs fMP4 output: partial segments are CMAF chunks (moof + mdat), not MPEG-TS".into());
    }
    if config.encrypt {
        return refuse("cannot be encrypted: AES-128 encrypts whole segments, which parts cannot be cut from".into());
    }
    let part = low_latency.part_duration;
    if !(part.is_finite() && (ll_hls::MIN_PART_DURATION..=ll_hls::MAX_PART_DURATION).contains(&part)) {
        return refuse(format!(
            "part duration {part} s must be between {} and {} s",
            ll_hls::MIN_PART_DURATION,
            ll_hls::MAX_PART_DURATION
        ));
    }
    let Some(parts) = ll_hls::parts_per_segment(config.segment_duration, part) else {
        return refuse(format!("the {} s segments are not a whole number of {part} s parts", config.segment_duration));
    };
    // RFC 8216bis 6.2.2: a live playlist never lasts less than three target durations.
    let target = playlist::target_duration(&[], config.segment_duration);
    if (window as f64) * config.segment_duration < 3.0 * target as f64 {
        return refuse(format!(
            "a window of {window} segments of {} s is shorter than three target durations ({} s)",
            config.segment_duration,
            3 * target
        ));
    }
    Ok(parts)
}

/// Frames per part at `fps`, when a part is a whole number of frames (within 1 %: 1 s at 29.97 fps): every part is one
/// GOP, and a GOP is a frame count.
fn frames_per_part(part: f64, fps: f64) -> Option<u32> {
    let frames = part * fps;
    let whole = frames.round();
    ((frames - whole).abs() <= 0.01 * whole && whole >= 1.0).then_some(whole as u32)
}

/// Whether `tag` looks like an RFC 5646 language tag: subtags of 1 to 8 letters or digits joined by
/// `-`, the first 2 to 8 letters (`en`, `pt-BR`, `zh-Hant`, `und`). The check keeps the LANGUAGE
/// attribute's quotes intact; it does not look tags up in the registry.
pub fn is_language_tag(tag: &str) -> bool {
    let mut subtags = tag.split('-');
    let first_ok =
        subtags.next().is_some_and(|s| (2..=8).contains(&s.len()) && s.chars().all(|c| c.is_ascii_alphabetic()));
    first_ok && subtags.all(|s| (1..=8).contains(&s.len()) && s.chars().all(|c| c.is_ascii_alphanumeric()))
}

/// Progress reports for a progress bar.
#[derive(Debug, Clone, Copy)]
pub enum Progress {
    /// Media time processed so far, and the total when known.
    Position { done: Duration, total: Option<Duration> },
    /// The master playlist exists (live: from now on players can start).
    MasterWritten,
}

#[derive(Debug, Clone, Serialize)]
pub struct RenditionSummary {
    pub name: String,
    pub width: u32,
    pub height: u32,
    /// Requested video bitrate (bit/s).
    pub target_video_bitrate: u64,
    /// Measured over the whole file, container included, and audio when it is muxed (bit/s).
    pub average_bitrate: u64,
    /// Highest single-segment bitrate (bit/s).
    pub peak_bitrate: u64,
    pub segments: usize,
    pub bytes: u64,
    pub seconds: f64,
}

/// The separate audio rendition, measured like a video rendition.
#[derive(Debug, Clone, Serialize)]
pub struct AudioSummary {
    pub name: String,
    pub language: String,
    pub average_bitrate: u64,
    pub peak_bitrate: u64,
    pub segments: usize,
    pub bytes: u64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub master: PathBuf,
    pub renditions: Vec<RenditionSummary>,
    /// The separate audio rendition, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio: Option<AudioSummary>,
    /// Ladder rungs not made because they are taller than the source.
    pub skipped: Vec<String>,
    pub wall_seconds: f64,
}

/// `ultrafast` for the test pattern (it is noise: quality per bit does not matter, and the tests
/// package it often on small machines), `veryfast` for real video.
pub fn default_preset(source: &Source) -> &'static str {
    match source {
        Source::TestPattern { .. } => "ultrafast",
        Source::File(_) => "veryfast",
    }
}

/// Packages with the default [`PackageOptions`] (audio muxed into every rendition).
pub fn package(config: &PackageConfig, progress: &mut dyn FnMut(Progress)) -> Result<Summary, PackageError> {
    package_with(config, &PackageOptions::default(), progress)
}

pub fn package_with(
    config: &PackageConfig,
    options: &PackageOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<Summary, PackageError> {
    let started = std::time::Instant::now();
    let out = config.out_dir.as_path();
    let output_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PackageError::Output { path, source }
    };
    // Option conflicts first: they need neither GStreamer nor the input.
    let parts_per_segment = match &options.low_latency {
        Some(low_latency) => Some(check_low_latency(config, low_latency)?),
        None => None,
    };
    let audio_language = match &options.audio {
        AudioLayout::Muxed => None,
        AudioLayout::Separate { language } => {
            if config.format != Format::Fmp4 {
                return Err(PackageError::SeparateAudioNeedsFmp4);
            }
            if !is_language_tag(language) {
                return Err(PackageError::BadLanguage(language.clone()));
            }
            Some(language.clone())
        }
    };
    // Every element the job could need is there, before anything is probed or written.
    pipeline::preflight()?;

    // Learn about the input before touching the output folder.
    let (info, tallest) = match &config.source {
        Source::File(path) => (pipeline::probe_file(path)?, None),
        Source::TestPattern { duration, .. } => {
            let tallest = config.ladder.iter().map(|r| r.height).max().unwrap_or(240);
            (pipeline::test_pattern_info(tallest, *duration), Some(tallest))
        }
    };
    let (rungs, skipped) = ladder::fit_to_source(&config.ladder, tallest.unwrap_or(info.height));
    for rung in &skipped {
        tracing::info!("skipping rung {}: taller than the {}-line source", rung.name, info.height);
    }
    if audio_language.is_some() && !info.has_audio {
        let input = match &config.source {
            Source::File(path) => path.clone(),
            Source::TestPattern { .. } => PathBuf::from("the test pattern"),
        };
        return Err(PackageError::NoAudio(input));
    }
    if rungs.is_empty() {
        return Err(PackageError::NothingToMake {
            height: info.height,
            skipped: skipped.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", "),
        });
    }
    let low_latency = match (&options.low_latency, parts_per_segment) {
        (Some(low_latency), Some(parts_per_segment)) => {
            let fps = info.fps_f64();
            let frames = frames_per_part(low_latency.part_duration, fps).ok_or_else(|| {
                PackageError::LowLatency(format!(
                    "a {} s part is not a whole number of frames at {fps} fps",
                    low_latency.part_duration
                ))
            })?;
            // Every part is one GOP of `frames` frames. A separate audio rendition's parts are cut on
            // the AAC frame nearest each video part boundary, so they can run over by its slack; the
            // same PART-TARGET (and so SERVER-CONTROL) goes in every playlist (RFC 8216bis 6.2.4).
            let slack = if audio_language.is_some() { AUDIO_DURATION_SLACK_NS as f64 / 1e9 } else { 0.0 };
            let video_part = f64::from(frames) / fps;
            Some(LowLatencyLayout { parts_per_segment, part_target: ll_hls::part_target(video_part + slack) })
        }
        _ => None,
    };

    std::fs::create_dir_all(out).map_err(output_error(out))?;
    // An earlier master would point at renditions this run is about to replace.
    let master_path = out.join(MASTER_PLAYLIST);
    match std::fs::remove_file(&master_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(output_error(&master_path)(e)),
        _ => {}
    }
    let key = if config.encrypt {
        let key = crypto::generate_key();
        let key_path = out.join(KEY_FILE);
        playlist::write_atomically(&key_path, &key).map_err(output_error(&key_path))?;
        Some(key)
    } else {
        None
    };
    let media_options = MediaOptions {
        init_uri: (config.format == Format::Fmp4).then(|| INIT_SEGMENT.to_string()),
        key_uri: key.map(|_| format!("../{KEY_FILE}")),
        nominal_duration: config.segment_duration,
        duration_slack: playlist::VIDEO_DURATION_SLACK,
    };
    let mut writers = Vec::new();
    let mut plans = Vec::new();
    for rung in &rungs {
        let mut writer = RenditionWriter::create(
            out,
            &rung.name,
            config.format.segment_extension(),
            media_options.clone(),
            key,
            config.live_window,
        )
        .map_err(output_error(&out.join(&rung.name)))?;
        if let Some(layout) = &low_latency {
            writer = writer.with_low_latency(layout.clone());
        }
        plans.push(RungPlan {
            name: rung.name.clone(),
            width: ladder::width_for_height(rung.height, info.display_aspect),
            height: rung.height,
            video_bitrate: rung.video_bitrate,
            dir: writer.dir().to_path_buf(),
        });
        writers.push(writer);
    }
    let audio = match audio_language {
        Some(language) => {
            let options =
                MediaOptions { duration_slack: AUDIO_DURATION_SLACK_NS as f64 / 1e9, ..media_options.clone() };
            let mut writer = RenditionWriter::create(
                out,
                AUDIO_RENDITION,
                config.format.segment_extension(),
                options,
                key,
                config.live_window,
            )
            .map_err(output_error(&out.join(AUDIO_RENDITION)))?;
            if let Some(layout) = &low_latency {
                writer = writer.with_low_latency(layout.clone());
            }
            Some(AudioTrack { writer, segmenter: None, cut: 0, language })
        }
        None => None,
    };
    let plan = PipelinePlan {
        source: config.source.clone(),
        info: info.clone(),
        rungs: plans,
        format: config.format,
        segment_duration: config.segment_duration,
        preset: config.preset.clone().unwrap_or_else(|| default_preset(&config.source).to_string()),
        separate_audio: audio.is_some(),
        part_duration: options.low_latency.map(|l| l.part_duration),
    };
    if config.encrypt && config.format == Format::Fmp4 {
        tracing::warn!(
            "AES-128 fMP4 follows RFC 8216 (clear init segment), but GStreamer 1.22's HLS demuxers \
             cannot play it (they decrypt the init segment too); use --format ts for GStreamer players"
        );
    }
    let built = pipeline::build(&plan)?;
    let mut job = Job {
        config,
        plan: &plan,
        writers,
        audio,
        master_written: false,
        low_latency: low_latency.is_some(),
        wall_clock_zero: None,
    };
    let result = job.run(&built, progress);
    let _ = built.pipeline.set_state(gst::State::Null);
    if let Err(error) = result.and_then(|()| job.finish(&built, progress)) {
        for writer in job.writers.iter().chain(job.audio.as_ref().map(|a| &a.writer)) {
            writer.discard_unfinished();
        }
        return Err(error);
    }

    let renditions = job
        .writers
        .iter()
        .zip(&plan.rungs)
        .map(|(writer, rung)| {
            let written = writer.written();
            let rates = playlist::measure_bitrates(written, config.segment_duration);
            RenditionSummary {
                name: rung.name.clone(),
                width: rung.width,
                height: rung.height,
                target_video_bitrate: rung.video_bitrate,
                average_bitrate: rates.average,
                peak_bitrate: rates.peak,
                segments: written.len(),
                bytes: written.iter().map(|s| s.bytes).sum(),
                seconds: written.iter().map(|s| s.duration).sum(),
            }
        })
        .collect();
    let audio = job.audio.as_ref().map(|audio| {
        let written = audio.writer.written();
        let rates = playlist::measure_bitrates(written, config.segment_duration);
        AudioSummary {
            name: AUDIO_RENDITION.to_string(),
            language: audio.language.clone(),
            average_bitrate: rates.average,
            peak_bitrate: rates.peak,
            segments: written.len(),
            bytes: written.iter().map(|s| s.bytes).sum(),
            seconds: written.iter().map(|s| s.duration).sum(),
        }
    });
    Ok(Summary {
        master: master_path,
        renditions,
        audio,
        skipped: skipped.into_iter().map(|r| r.name).collect(),
        wall_seconds: started.elapsed().as_secs_f64(),
    })
}

struct Job<'a> {
    config: &'a PackageConfig,
    plan: &'a PipelinePlan,
    writers: Vec<RenditionWriter>,
    /// The separate audio rendition, when there is one.
    audio: Option<AudioTrack>,
    master_written: bool,
    /// The muxers' pieces are parts, published one by one.
    low_latency: bool,
    /// The wall-clock time of the pipeline's running time 0 (live: buffers carry the running time at
    /// which they were captured), learnt once the pipeline runs.
    wall_clock_zero: Option<SystemTime>,
}

/// Which rendition a rendition report is being made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rendition {
    Video(usize),
    Audio,
}

/// The separate audio rendition while it is being made.
struct AudioTrack {
    writer: RenditionWriter,
    /// Made when the init section (which gives the track's timescale) arrives.
    segmenter: Option<AudioSegmenter>,
    /// Video segments whose audio has been cut (an empty cut writes no segment, so this can run
    /// ahead of the segments written).
    cut: usize,
    language: String,
}

impl Job<'_> {
    fn run(&mut self, built: &Built, progress: &mut dyn FnMut(Progress)) -> Result<(), PackageError> {
        let bus = built.pipeline.bus().ok_or_else(|| PackageError::Pipeline("pipeline has no bus".into()))?;
        built
            .pipeline
            .set_state(gst::State::Playing)
            .map_err(|e| PackageError::Pipeline(format!("cannot start: {e}")))?;
        let total = self.plan.info.duration.map(|d| Duration::from_nanos(d.nseconds()));
        loop {
            while let Ok(produced) = built.produced.try_recv() {
                self.store(built, produced, progress)?;
            }
            let Some(message) = bus.timed_pop(gst::ClockTime::from_mseconds(100)) else {
                if let Some(position) = built.pipeline.query_position::<gst::ClockTime>() {
                    progress(Progress::Position { done: Duration::from_nanos(position.nseconds()), total });
                }
                continue;
            };
            use gst::MessageView;
            match message.view() {
                MessageView::Eos(_) => break,
                MessageView::Error(error) => {
                    let source = error.src().map(|s| s.path_string().to_string()).unwrap_or_default();
                    let details = error.debug().map(|d| d.to_string()).unwrap_or_default();
                    tracing::debug!(%source, %details, "pipeline error");
                    return Err(PackageError::Pipeline(format!("{} ({source})", error.error())));
                }
                MessageView::Warning(warning) => tracing::warn!("GStreamer: {}", warning.error()),
                MessageView::Element(element) => {
                    let Some(structure) = element.structure() else { continue };
                    if structure.name() != "splitmuxsink-fragment-closed" {
                        continue;
                    }
                    let rung = message.src().and_then(|s| pipeline::rung_from_mux_name(&s.name()));
                    let location = structure.get::<String>("location").ok();
                    if let (Some(rung), Some(location)) = (rung, location) {
                        let bytes = std::fs::read(&location)
                            .map_err(|source| PackageError::Output { path: location.clone().into(), source })?;
                        let _ = std::fs::remove_file(&location);
                        let _ = built.sender.send(Produced::Segment { rung, bytes });
                    }
                }
                _ => {}
            }
        }
        while let Ok(produced) = built.produced.try_recv() {
            self.store(built, produced, progress)?;
        }
        progress(Progress::Position { done: total.unwrap_or_default(), total });
        Ok(())
    }

    fn store(
        &mut self,
        built: &Built,
        produced: Produced,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(), PackageError> {
        let (rung, bytes) = match produced {
            Produced::Failed(error) => return Err(error),
            Produced::Init { rung, bytes } => {
                let writer = &self.writers[rung];
                return writer
                    .write_init(&bytes)
                    .map_err(|source| PackageError::Output { path: writer.dir().join(INIT_SEGMENT), source });
            }
            Produced::Segment { rung, bytes } => (rung, bytes),
            Produced::AudioInit { bytes, track_id, timescale } => {
                let audio = self.audio.as_mut().ok_or_else(|| PackageError::Pipeline("unexpected audio".into()))?;
                audio.segmenter = Some(AudioSegmenter::new(track_id, timescale));
                return audio
                    .writer
                    .write_init(&bytes)
                    .map_err(|source| PackageError::Output { path: audio.writer.dir().join(INIT_SEGMENT), source });
            }
            Produced::AudioSamples(samples) => {
                let segmenter = self
                    .audio
                    .as_mut()
                    .and_then(|a| a.segmenter.as_mut())
                    .ok_or_else(|| PackageError::Pipeline("audio samples before the audio init section".into()))?;
                segmenter.push(samples);
                self.cut_audio(built, false)?;
                return self.announce_live_master(built, progress);
            }
        };
        // Low-latency: the pieces are parts (one GOP each); otherwise segments.
        let index =
            if self.low_latency { self.writers[rung].parts_written() } else { self.writers[rung].written().len() };
        let duration = built.timelines[rung].lock().ok().and_then(|t| t.segment_duration(index)).ok_or_else(|| {
            PackageError::Misaligned(format!(
                "rendition {} produced {} {index} without a keyframe to start it",
                self.writers[rung].name,
                if self.low_latency { "part" } else { "segment" }
            ))
        })?;
        if self.low_latency {
            let start = if index == 0 { self.first_capture_time(built) } else { None };
            let reports = self.reports(Rendition::Video(rung));
            let writer = &mut self.writers[rung];
            writer
                .add_part(&bytes, duration, start, reports)
                .map_err(|source| PackageError::Output { path: writer.dir().to_path_buf(), source })?;
        } else {
            let writer = &mut self.writers[rung];
            writer
                .add_segment(&bytes, duration)
                .map_err(|source| PackageError::Output { path: writer.dir().to_path_buf(), source })?;
        }
        if rung == 0 {
            // The next video boundary may now be known.
            self.cut_audio(built, false)?;
        }
        self.announce_live_master(built, progress)
    }

    /// When the first video frame was captured, on the wall clock: the program date-time of every
    /// rendition's first part (the audio is cut from the same instant). Live sources stamp buffers
    /// with the running time at capture, so it is the wall clock at running time 0 plus that stamp.
    fn first_capture_time(&mut self, built: &Built) -> Option<SystemTime> {
        let first = built.timelines.first()?.lock().ok()?.first_running_time?;
        if self.wall_clock_zero.is_none() {
            let running = built.pipeline.current_running_time()?;
            self.wall_clock_zero = SystemTime::now().checked_sub(Duration::from_nanos(running.nseconds()));
        }
        self.wall_clock_zero?.checked_add(Duration::from_nanos(first.nseconds()))
    }

    /// Low-latency: where every rendition but `to` is, for `to`'s playlist (RFC 8216bis 4.4.5.4).
    fn reports(&self, to: Rendition) -> Vec<RenditionReport> {
        let videos = self.writers.iter().enumerate().filter(|(i, _)| to != Rendition::Video(*i)).map(|(_, w)| w);
        let audio = self.audio.as_ref().filter(|_| to != Rendition::Audio).map(|a| &a.writer);
        videos
            .chain(audio)
            .filter_map(|w| {
                let (last_msn, last_part) = w.last_part()?;
                Some(RenditionReport { uri: format!("../{}/{MEDIA_PLAYLIST}", w.name), last_msn, last_part })
            })
            .collect()
    }

    /// Live: once every rendition has a playlist with media, the master can point at them.
    fn announce_live_master(&mut self, built: &Built, progress: &mut dyn FnMut(Progress)) -> Result<(), PackageError> {
        let audio_ready = self.audio.as_ref().is_none_or(|a| a.writer.has_media());
        if self.config.live_window.is_some()
            && !self.master_written
            && audio_ready
            && self.writers.iter().all(RenditionWriter::has_media)
        {
            self.write_master(built, false)?;
            self.master_written = true;
            progress(Progress::MasterWritten);
        }
        Ok(())
    }

    /// Cuts the separate audio rendition's segments at the video's segment boundaries (the first
    /// rung's keyframes; every rung has them on the same frames): each one as soon as the samples on
    /// both sides of its end boundary are in, or, `at_end`, all that is left.
    fn cut_audio(&mut self, built: &Built, at_end: bool) -> Result<(), PackageError> {
        // Low-latency: the video's keyframes start parts, so the cuts make audio parts.
        let (reports, start) = match &self.audio {
            Some(audio) if self.low_latency => {
                let start = if audio.writer.parts_written() == 0 { self.first_capture_time(built) } else { None };
                (self.reports(Rendition::Audio), start)
            }
            _ => (Vec::new(), None),
        };
        let step_seconds = self.plan.part_duration.unwrap_or(self.config.segment_duration);
        let low_latency = self.low_latency;
        let Some(audio) = self.audio.as_mut() else { return Ok(()) };
        let Some(segmenter) = audio.segmenter.as_mut() else { return Ok(()) };
        let (keyframes, video_end) = match built.timelines.first().and_then(|t| t.lock().ok()) {
            Some(timeline) => (timeline.keyframes.clone(), timeline.end),
            None => return Ok(()),
        };
        let Some(first) = keyframes.first().copied() else { return Ok(()) };
        let mut segments = Vec::new();
        // Video segment k ends at keyframe k + 1; both timelines count from their first sample.
        while let Some(next) = keyframes.get(audio.cut + 1) {
            let boundary = segmenter.ticks(next.saturating_sub(first).nseconds());
            if !at_end && !segmenter.ready(boundary) {
                break;
            }
            segments.extend(segmenter.cut(Some(boundary)));
            audio.cut += 1;
        }
        if at_end {
            // The last video segment ends with its last frame; audio running past it is cut every
            // segment duration, into segments no longer than the audio playlist's target allows.
            let end = segmenter.ticks(video_end.saturating_sub(first).nseconds());
            let step = segmenter.ticks((step_seconds * 1e9) as u64);
            let longest = step + segmenter.ticks(AUDIO_DURATION_SLACK_NS);
            segments.extend(segmenter.finish(end, step, longest));
        }
        let mut start = start;
        for segment in segments {
            let written = if low_latency {
                audio.writer.add_part(&segment.bytes, segment.duration, start.take(), reports.clone())
            } else {
                audio.writer.add_segment(&segment.bytes, segment.duration).map(|_| ())
            };
            written.map_err(|source| PackageError::Output { path: audio.writer.dir().to_path_buf(), source })?;
        }
        Ok(())
    }

    /// Checks the renditions line up, writes the final media playlists, then the master.
    fn finish(&mut self, built: &Built, progress: &mut dyn FnMut(Progress)) -> Result<(), PackageError> {
        // Low-latency: the parts of an unfinished segment make the last one.
        for writer in &mut self.writers {
            writer
                .finish_parts()
                .map_err(|source| PackageError::Output { path: writer.dir().to_path_buf(), source })?;
        }
        let counts: Vec<usize> = self.writers.iter().map(|w| w.written().len()).collect();
        if counts.iter().any(|c| *c != counts[0]) || counts[0] == 0 {
            let detail: Vec<String> =
                self.writers.iter().map(|w| format!("{}: {}", w.name, w.written().len())).collect();
            return Err(PackageError::Misaligned(format!("segment counts differ or are zero ({})", detail.join(", "))));
        }
        self.cut_audio(built, true)?;
        if let Some(audio) = &mut self.audio {
            audio
                .writer
                .finish_parts()
                .map_err(|source| PackageError::Output { path: audio.writer.dir().to_path_buf(), source })?;
        }
        if let Some(audio) = &self.audio {
            if audio.writer.written().is_empty() {
                return Err(PackageError::Misaligned(format!(
                    "the audio rendition has no segments (the video has {})",
                    counts[0]
                )));
            }
        }
        for writer in self.writers.iter().chain(self.audio.as_ref().map(|a| &a.writer)) {
            writer
                .write_playlist(true)
                .map_err(|source| PackageError::Output { path: writer.dir().join(MEDIA_PLAYLIST), source })?;
        }
        self.write_master(built, true)?;
        progress(Progress::MasterWritten);
        Ok(())
    }

    fn variants(&self, sps: &[Option<[u8; 3]>], measured: bool) -> Vec<VariantInfo> {
        // A separate audio rendition is played with every variant: its bitrates are added to each.
        let audio = match (&self.audio, measured) {
            (Some(audio), true) => playlist::measure_bitrates(audio.writer.written(), self.config.segment_duration),
            _ => Bitrates::default(),
        };
        self.writers
            .iter()
            .zip(&self.plan.rungs)
            .zip(sps)
            .map(|((writer, rung), sps)| {
                let bitrates = if measured {
                    let video = playlist::measure_bitrates(writer.written(), self.config.segment_duration);
                    Bitrates { average: video.average + audio.average, peak: video.peak + audio.peak }
                } else {
                    // Live: nothing is measured yet; advertise the target plus audio and ~10 %
                    // container overhead.
                    let nominal = (rung.video_bitrate + u64::from(pipeline::AUDIO_BITRATE)) * 11 / 10;
                    Bitrates { average: nominal, peak: nominal }
                };
                // x264's default for these presets is High profile; used only if no SPS was seen.
                let video = codecs::avc1(sps.unwrap_or([0x64, 0x00, 0x1f]));
                // With a separate audio rendition CODECS still lists the audio: it is what a player
                // must decode to play the variant (RFC 8216 4.3.4.2).
                let codecs = if self.plan.info.has_audio { format!("{video},{}", codecs::AAC_LC) } else { video };
                VariantInfo {
                    uri: format!("{}/{MEDIA_PLAYLIST}", rung.name),
                    bitrates,
                    width: rung.width,
                    height: rung.height,
                    codecs,
                    frame_rate: self.plan.info.fps_f64(),
                }
            })
            .collect()
    }

    fn write_master(&self, built: &Built, measured: bool) -> Result<(), PackageError> {
        let sps: Vec<Option<[u8; 3]>> = built.timelines.iter().map(|t| t.lock().ok().and_then(|t| t.sps)).collect();
        self.write_master_with(&sps, measured)
    }

    fn write_master_with(&self, sps: &[Option<[u8; 3]>], measured: bool) -> Result<(), PackageError> {
        let audio = self.audio.as_ref().map(|audio| AudioRendition {
            group_id: AUDIO_GROUP.to_string(),
            name: if audio.language == "und" { "Audio".to_string() } else { format!("Audio ({})", audio.language) },
            language: audio.language.clone(),
            channels: pipeline::AUDIO_CHANNELS,
            uri: format!("{AUDIO_RENDITION}/{MEDIA_PLAYLIST}"),
        });
        let master = playlist::master_playlist_with_audio(
            &self.variants(sps, measured),
            audio.as_ref(),
            playlist::protocol_version(&MediaOptions {
                init_uri: (self.config.format == Format::Fmp4).then(String::new),
                key_uri: None,
                nominal_duration: self.config.segment_duration,
                duration_slack: playlist::VIDEO_DURATION_SLACK,
            }),
        );
        let path = self.config.out_dir.join(MASTER_PLAYLIST);
        playlist::write_atomically(&path, &playlist::render_master(&master))
            .map_err(|source| PackageError::Output { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn language_tags() {
        for tag in ["und", "en", "pt-BR", "zh-Hant", "es-419", "sr-Latn-RS"] {
            assert!(is_language_tag(tag), "{tag}");
        }
        for tag in ["", "e", "english!", "en_US", "en-", "-en", "1a", "en\"", "en,fr", "toolongtag"] {
            assert!(!is_language_tag(tag), "{tag}");
        }
    }

    #[test]
    fn audio_stays_muxed_unless_asked() {
        assert_eq!(PackageOptions::default().audio, AudioLayout::Muxed);
        assert_eq!(AudioLayout::separate(), AudioLayout::Separate { language: "und".into() });
    }

    /// Low-latency settings that cannot work are refused before GStreamer runs or anything is written.
    #[test]
    fn impossible_low_latency_packages_are_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let live = PackageConfig {
            source: Source::TestPattern { duration: Duration::from_secs(1), live: true },
            out_dir: out.clone(),
            ladder: ladder::parse_ladder("240p:300k").unwrap(),
            segment_duration: 2.0,
            format: Format::Fmp4,
            encrypt: false,
            live_window: Some(3),
            preset: None,
        };
        let parts = |part_duration: f64| PackageOptions::default().with_low_latency(LowLatency { part_duration });
        assert_eq!(check_low_latency(&live, &LowLatency::default()).unwrap(), 2);
        assert_eq!(
            check_low_latency(
                &PackageConfig { segment_duration: 4.0, ..live.clone() },
                &LowLatency { part_duration: 0.5 }
            )
            .unwrap(),
            8
        );
        let cases = [
            (PackageConfig { live_window: None, ..live.clone() }, parts(1.0), "needs a live package"),
            (PackageConfig { format: Format::Ts, ..live.clone() }, parts(1.0), "needs fMP4 output"),
            (PackageConfig { encrypt: true, ..live.clone() }, parts(1.0), "cannot be encrypted"),
            (live.clone(), parts(0.1), "part duration 0.1 s must be between"),
            (live.clone(), parts(f64::NAN), "must be between"),
            (live.clone(), parts(0.3), "not a whole number of 0.3 s parts"),
            (PackageConfig { live_window: Some(2), ..live.clone() }, parts(1.0), "shorter than three target durations"),
            // 7.5 frames at 30 fps: found once the source is known, still before anything is written.
            (
                PackageConfig { segment_duration: 1.0, live_window: Some(4), ..live.clone() },
                parts(0.25),
                "not a whole number of frames",
            ),
        ];
        for (config, options, expected) in cases {
            let error = package_with(&config, &options, &mut |_| {}).unwrap_err();
            assert!(matches!(error, PackageError::LowLatency(_)), "{error}");
            assert!(error.to_string().contains(expected), "{error}: expected '{expected}'");
            assert!(!out.exists(), "{expected}: the output folder was created");
        }
        assert_eq!(frames_per_part(1.0, 30.0), Some(30));
        assert_eq!(frames_per_part(1.0, 30_000.0 / 1001.0), Some(30));
        assert_eq!(frames_per_part(0.2, 30.0), Some(6));
        assert_eq!(frames_per_part(0.25, 30.0), None);
        assert_eq!(frames_per_part(0.01, 30.0), None);
    }

    #[test]
    fn separate_audio_with_ts_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let mut config = PackageConfig {
            source: Source::TestPattern { duration: Duration::from_secs(1), live: false },
            out_dir: out.clone(),
            ladder: ladder::parse_ladder("240p:300k").unwrap(),
            segment_duration: 1.0,
            format: Format::Ts,
            encrypt: false,
            live_window: None,
            preset: None,
        };
        let separate = PackageOptions::default().with_audio(AudioLayout::separate());
        let error = package_with(&config, &separate, &mut |_| {}).unwrap_err();
        assert!(matches!(error, PackageError::SeparateAudioNeedsFmp4), "{error}");
        config.format = Format::Fmp4;
        let bad_language = PackageOptions::default().with_audio(AudioLayout::Separate { language: "e\"n".into() });
        let error = package_with(&config, &bad_language, &mut |_| {}).unwrap_err();
        assert!(matches!(error, PackageError::BadLanguage(ref tag) if tag == "e\"n"), "{error}");
        assert!(!out.exists());
    }
}
