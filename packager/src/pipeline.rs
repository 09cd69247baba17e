//! The GStreamer side: probing the input, building one pipeline that decodes once and encodes every
//! rung in parallel, and turning what the muxers produce into finished segments for the writers.
//!
//! Graph (per rung the branch after each `tee` is repeated):
//! ```text
//! source video ─ tee ─ queue ─ videoscale ─ caps ─ [label] ─ x264enc ─ h264parse ─ queue ─┐
//! source audio ─ aac ─ tee ─ queue (unbounded) ──────────────────────────────────────────┤
//!    ts:   splitmuxsink(mpegtsmux) → one file per GOP  → "fragment-closed" bus message ──┤→ segments
//!    fmp4: mp4mux(fragmented) → appsink → Fmp4Splitter → init + one segment per GOP ──────┘
//! ```
//! With a separate audio rendition (fMP4 only) the rungs' muxers get no audio; the audio tee feeds
//! one more `mp4mux → appsink`, whose stream [`AudioReader`] reads into samples that the run cuts into
//! segments at the video's segment boundaries (see [`crate::audio`]).
//! x264 gets a fixed GOP of exactly fps × segment duration frames with scene-cut keyframes off, so
//! every rendition has its keyframes on the same frames and each segment holds exactly one GOP.
//! Low-latency (`part_duration`): the GOP is one part instead, so every part starts with a keyframe
//! (INDEPENDENT=YES: a player can join or switch at any part) and the splitter's pieces are parts; the
//! encoder runs without lookahead and the muxers write short fragments, to keep the delay from
//! capture to a published part small.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gst::prelude::*;
use gstreamer as gst;
use gstreamer_app as gst_app;
use gstreamer_pbutils as gst_pbutils;

use eddy_shared::gst_elements::MissingElements;

use crate::audio::{AudioPiece, AudioReader, AudioSample};
use crate::codecs;
use crate::error::PackageError;
use crate::fmp4::{Fmp4Splitter, Piece};

/// Audio bitrate of every rendition (the ladder's bitrates are video bitrates).
pub const AUDIO_BITRATE: u32 = 96_000;
/// The audio is encoded at this sample rate, in stereo.
pub const AUDIO_SAMPLE_RATE: u32 = 48_000;
pub const AUDIO_CHANNELS: u32 = 2;
/// Samples per AAC-LC frame.
pub const AAC_FRAME_SAMPLES: u32 = 1024;
/// The name of the separate audio rendition's muxer.
pub const AUDIO_MUX_NAME: &str = "mux-audio";
/// Frame rate of the test pattern.
pub const TEST_PATTERN_FPS: i32 = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ts,
    Fmp4,
}

impl Format {
    pub fn segment_extension(self) -> &'static str {
        match self {
            Format::Ts => "ts",
            Format::Fmp4 => "m4s",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    File(PathBuf),
    /// Moving noise with a running clock and a tone; `live` paces it in real time.
    TestPattern {
        duration: Duration,
        live: bool,
    },
}

/// What the packager needs to know about the input before building the pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceInfo {
    pub width: u32,
    pub height: u32,
    /// Display aspect ratio (pixel aspect ratio applied).
    pub display_aspect: f64,
    pub fps: gst::Fraction,
    pub has_audio: bool,
    pub duration: Option<gst::ClockTime>,
}

impl SourceInfo {
    pub fn fps_f64(&self) -> f64 {
        f64::from(self.fps.numer()) / f64::from(self.fps.denom())
    }
}

/// Inspects an input file with GStreamer's discoverer.
pub fn probe_file(path: &Path) -> Result<SourceInfo, PackageError> {
    if !path.is_file() {
        return Err(PackageError::InputMissing(path.to_path_buf()));
    }
    let undecodable = |reason: String| PackageError::Undecodable { path: path.to_path_buf(), reason };
    let absolute = std::fs::canonicalize(path).map_err(|e| undecodable(e.to_string()))?;
    let uri = gst::glib::filename_to_uri(&absolute, None).map_err(|e| undecodable(e.to_string()))?;
    let discoverer = gst_pbutils::Discoverer::new(gst::ClockTime::from_seconds(30))
        .map_err(|e| PackageError::Pipeline(e.to_string()))?;
    let info = discoverer.discover_uri(&uri).map_err(|e| undecodable(e.to_string()))?;
    if info.result() != gst_pbutils::DiscovererResult::Ok {
        return Err(undecodable(format!("{:?}", info.result())));
    }
    let video = info
        .video_streams()
        .into_iter()
        .find(|v| !v.is_image())
        .ok_or_else(|| PackageError::NoVideo(path.to_path_buf()))?;
    let (width, height) = (video.width(), video.height());
    if width == 0 || height == 0 {
        return Err(undecodable("the video stream has no picture size".into()));
    }
    let par = video.par();
    let par = if par.numer() > 0 && par.denom() > 0 { f64::from(par.numer()) / f64::from(par.denom()) } else { 1.0 };
    let fps = video.framerate();
    // Variable or unknown frame rates are resampled to 30 fps so the GOP length is a frame count.
    let fps = if fps.numer() > 0 && fps.denom() > 0 && f64::from(fps.numer()) / f64::from(fps.denom()) <= 120.0 {
        fps
    } else {
        gst::Fraction::new(TEST_PATTERN_FPS, 1)
    };
    Ok(SourceInfo {
        width,
        height,
        display_aspect: f64::from(width) * par / f64::from(height),
        fps,
        has_audio: !info.audio_streams().is_empty(),
        duration: info.duration(),
    })
}

/// The test pattern's properties: made at the tallest rung's size, 16:9, 30 fps, with audio.
pub fn test_pattern_info(tallest: u32, duration: Duration) -> SourceInfo {
    let aspect = 16.0 / 9.0;
    SourceInfo {
        width: crate::ladder::width_for_height(tallest, aspect),
        height: tallest,
        display_aspect: aspect,
        fps: gst::Fraction::new(TEST_PATTERN_FPS, 1),
        has_audio: true,
        duration: Some(gst::ClockTime::from_nseconds(duration.as_nanos() as u64)),
    }
}

/// One rendition's encoding settings.
#[derive(Debug, Clone)]
pub struct RungPlan {
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub video_bitrate: u64,
    /// Folder where the TS muxer writes its in-progress files.
    pub dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct PipelinePlan {
    pub source: Source,
    pub info: SourceInfo,
    pub rungs: Vec<RungPlan>,
    pub format: Format,
    pub segment_duration: f64,
    /// x264 speed preset (ultrafast ... veryslow).
    pub preset: String,
    /// The audio goes to its own muxer (a separate audio rendition) instead of every rung's.
    pub separate_audio: bool,
    /// Low-latency: seconds per part (and GOP); the splitter's pieces are parts.
    pub part_duration: Option<f64>,
}

impl PipelinePlan {
    /// Frames per GOP: one GOP per segment, or per part when low-latency.
    pub fn gop_frames(&self) -> u32 {
        (self.info.fps_f64() * self.part_duration.unwrap_or(self.segment_duration)).round().max(1.0) as u32
    }
}

/// Per-rung facts gathered from the encoded video as it flows (by a pad probe).
#[derive(Debug, Default)]
pub struct VideoTimeline {
    /// PTS of every keyframe, in order: segment k starts at `keyframes[k]`.
    pub keyframes: Vec<gst::ClockTime>,
    /// End of the last frame seen (PTS + duration).
    pub end: gst::ClockTime,
    /// profile, constraints, level from the SPS.
    pub sps: Option<[u8; 3]>,
    /// The running time of the first keyframe: for a live source, when it was captured on the
    /// pipeline's clock. (Encoders shift timestamps, x264enc by 1000 hours, and say so in the segment
    /// event; the running time is what stays.)
    pub first_running_time: Option<gst::ClockTime>,
    /// The stream's time segment, from its last segment event.
    segment: Option<gst::FormattedSegment<gst::ClockTime>>,
}

impl VideoTimeline {
    /// Duration in seconds of segment `index`, which starts at keyframe `index`.
    pub fn segment_duration(&self, index: usize) -> Option<f64> {
        let start = *self.keyframes.get(index)?;
        let end = self.keyframes.get(index + 1).copied().unwrap_or(self.end);
        Some(end.saturating_sub(start).nseconds() as f64 / 1e9)
    }
}

/// What the pipeline hands the main thread.
#[derive(Debug)]
pub enum Produced {
    Init {
        rung: usize,
        bytes: Vec<u8>,
    },
    Segment {
        rung: usize,
        bytes: Vec<u8>,
    },
    /// The separate audio rendition's init section, with the track's id and timescale.
    AudioInit {
        bytes: Vec<u8>,
        track_id: u32,
        timescale: u32,
    },
    /// The separate audio rendition's next samples, in order.
    AudioSamples(Vec<AudioSample>),
    Failed(PackageError),
}

/// A built pipeline, ready to run.
pub struct Built {
    pub pipeline: gst::Pipeline,
    pub timelines: Vec<Arc<Mutex<VideoTimeline>>>,
    pub produced: mpsc::Receiver<Produced>,
    /// Kept so that TS segments (read from disk by the run loop) can be sent on the same channel.
    pub sender: mpsc::Sender<Produced>,
}

/// Every GStreamer element the packager creates, by factory name. The pipeline creates elements only
/// through [`make`], which refuses a name missing here, so the list is complete: [`preflight`] checks
/// all of them before a job starts, and `tests/tests/deps.rs` checks that `scripts/install-deps.sh`
/// installs the package of each.
pub const REQUIRED_ELEMENTS: &[&str] = &[
    // Decoding a file (the discoverer uses uridecodebin too).
    "uridecodebin",
    // The test pattern: noise, a clock and each rung's label (the pango plugin), a tone.
    "videotestsrc",
    "timeoverlay",
    "textoverlay",
    "audiotestsrc",
    // Conversion, scaling and fan-out.
    "queue",
    "tee",
    "capsfilter",
    "videoconvert",
    "videorate",
    "videoscale",
    "audioconvert",
    "audioresample",
    // Encoding.
    "x264enc",
    "h264parse",
    "avenc_aac",
    "aacparse",
    // Muxing: TS segments through splitmuxsink into files, fMP4 into an appsink.
    "splitmuxsink",
    "mpegtsmux",
    "filesink",
    "mp4mux",
    "appsink",
];

/// Checks that every element in [`REQUIRED_ELEMENTS`] is installed; the error names each missing one
/// with its plugin and the Debian package to install.
pub fn preflight() -> Result<(), PackageError> {
    gst::init().map_err(pipeline_error)?;
    eddy_shared::gst_elements::check(REQUIRED_ELEMENTS.iter().copied(), |name| {
        gst::ElementFactory::find(name).is_some()
    })?;
    Ok(())
}

/// Creates an element; `factory` must be listed in [`REQUIRED_ELEMENTS`].
fn make(factory: &str) -> Result<gst::Element, PackageError> {
    make_named(factory, None)
}

fn make_named(factory: &str, name: Option<String>) -> Result<gst::Element, PackageError> {
    if !REQUIRED_ELEMENTS.contains(&factory) {
        return Err(PackageError::Pipeline(format!("element '{factory}' is not listed in REQUIRED_ELEMENTS")));
    }
    let mut builder = gst::ElementFactory::make(factory);
    if let Some(name) = name {
        builder = builder.name(name);
    }
    builder.build().map_err(|_| MissingElements { elements: vec![factory.to_string()] }.into())
}

fn caps_filter(caps: gst::Caps) -> Result<gst::Element, PackageError> {
    let filter = make("capsfilter")?;
    filter.set_property("caps", caps);
    Ok(filter)
}

fn link_all(elements: &[&gst::Element]) -> Result<(), PackageError> {
    gst::Element::link_many(elements.iter().copied()).map_err(|e| PackageError::Pipeline(format!("linking: {e}")))
}

fn pipeline_error(e: impl std::fmt::Display) -> PackageError {
    PackageError::Pipeline(e.to_string())
}

/// The name a rung's muxer (or splitmuxsink) gets, so bus messages can be traced back to the rung.
pub fn mux_name(rung: usize) -> String {
    format!("mux-{rung}")
}

pub fn rung_from_mux_name(name: &str) -> Option<usize> {
    name.strip_prefix("mux-")?.parse().ok()
}

pub fn build(plan: &PipelinePlan) -> Result<Built, PackageError> {
    gst::init().map_err(pipeline_error)?;
    let pipeline = gst::Pipeline::new();
    let (sender, produced) = mpsc::channel();

    let video_tee = make("tee")?;
    let audio_tee = if plan.info.has_audio { Some(make("tee")?) } else { None };
    pipeline.add(&video_tee).map_err(pipeline_error)?;
    if let Some(tee) = &audio_tee {
        pipeline.add(tee).map_err(pipeline_error)?;
    }
    let video_entry = build_video_input(&pipeline, plan, &video_tee)?;
    let audio_entry = match &audio_tee {
        Some(tee) => Some(build_audio_encoder(&pipeline, plan, tee)?),
        None => None,
    };
    build_source(&pipeline, plan, &video_entry, audio_entry.as_ref())?;

    let audio_branch = |tee: &gst::Element| -> Result<gst::Element, PackageError> {
        let queue = make("queue")?;
        // Unbounded: audio must never stall the shared audio encoder while the video encoders
        // hold frames in their lookahead.
        queue.set_property("max-size-time", 0u64);
        queue.set_property("max-size-buffers", 0u32);
        queue.set_property("max-size-bytes", 0u32);
        pipeline.add(&queue).map_err(pipeline_error)?;
        link_all(&[tee, &queue])?;
        Ok(queue)
    };
    if plan.separate_audio {
        let tee = audio_tee.as_ref().ok_or_else(|| pipeline_error("a separate audio rendition without audio"))?;
        if plan.format != Format::Fmp4 {
            return Err(PackageError::SeparateAudioNeedsFmp4);
        }
        build_audio_mux(&pipeline, plan, &audio_branch(tee)?, &sender)?;
    }
    let mut timelines = Vec::new();
    for (index, rung) in plan.rungs.iter().enumerate() {
        let timeline = Arc::new(Mutex::new(VideoTimeline::default()));
        let video_out = build_rung_video(&pipeline, plan, index, rung, &video_tee, &timeline)?;
        let audio_out = match &audio_tee {
            Some(tee) if !plan.separate_audio => Some(audio_branch(tee)?),
            _ => None,
        };
        match plan.format {
            Format::Ts => build_ts_mux(&pipeline, plan, index, rung, &video_out, audio_out.as_ref())?,
            Format::Fmp4 => build_fmp4_mux(&pipeline, plan, index, rung, &video_out, audio_out.as_ref(), &sender)?,
        }
        timelines.push(timeline);
    }
    Ok(Built { pipeline, timelines, produced, sender })
}

/// videoconvert → videorate → constant-frame-rate caps → tee. Returns the element the decoded (or
/// generated) video enters.
fn build_video_input(
    pipeline: &gst::Pipeline,
    plan: &PipelinePlan,
    tee: &gst::Element,
) -> Result<gst::Element, PackageError> {
    let queue = make("queue")?;
    let convert = make("videoconvert")?;
    let rate = make("videorate")?;
    // Live sources start their timestamps later than 0; without this videorate would invent frames
    // to fill the gap and shift every GOP off the segment grid.
    rate.set_property("skip-to-first", true);
    let caps = caps_filter(
        gst::Caps::builder("video/x-raw").field("format", "I420").field("framerate", plan.info.fps).build(),
    )?;
    pipeline.add_many([&queue, &convert, &rate, &caps]).map_err(pipeline_error)?;
    link_all(&[&queue, &convert, &rate, &caps, tee])?;
    Ok(queue)
}

/// audioconvert → audioresample → 48 kHz stereo → AAC → aacparse → tee.
fn build_audio_encoder(
    pipeline: &gst::Pipeline,
    _plan: &PipelinePlan,
    tee: &gst::Element,
) -> Result<gst::Element, PackageError> {
    let queue = make("queue")?;
    let convert = make("audioconvert")?;
    let resample = make("audioresample")?;
    let caps = caps_filter(gst::Caps::builder("audio/x-raw").field("rate", 48_000i32).field("channels", 2i32).build())?;
    let encoder = make("avenc_aac")?;
    encoder.set_property("bitrate", AUDIO_BITRATE as i32);
    let parse = make("aacparse")?;
    pipeline.add_many([&queue, &convert, &resample, &caps, &encoder, &parse]).map_err(pipeline_error)?;
    link_all(&[&queue, &convert, &resample, &caps, &encoder, &parse, tee])?;
    Ok(queue)
}

fn build_source(
    pipeline: &gst::Pipeline,
    plan: &PipelinePlan,
    video_entry: &gst::Element,
    audio_entry: Option<&gst::Element>,
) -> Result<(), PackageError> {
    match &plan.source {
        Source::File(path) => {
            let absolute = std::fs::canonicalize(path).map_err(|_| PackageError::InputMissing(path.clone()))?;
            let uri = gst::glib::filename_to_uri(&absolute, None).map_err(pipeline_error)?;
            let decode = make("uridecodebin")?;
            decode.set_property("uri", uri.as_str());
            pipeline.add(&decode).map_err(pipeline_error)?;
            let video_sink = video_entry.static_pad("sink").ok_or_else(|| pipeline_error("video sink pad"))?;
            let audio_sink = match audio_entry {
                Some(entry) => Some(entry.static_pad("sink").ok_or_else(|| pipeline_error("audio sink pad"))?),
                None => None,
            };
            let (video_check, audio_check) = (video_sink.clone(), audio_sink.clone());
            // A stream the discoverer announced but that never got decoded (a missing decoder, say)
            // would leave its muxer inputs waiting forever; end it instead so the run finishes or
            // fails with a clear count mismatch.
            decode.connect_no_more_pads(move |_| {
                for (kind, sink) in [("video", Some(&video_check)), ("audio", audio_check.as_ref())] {
                    if let Some(sink) = sink.filter(|s| !s.is_linked()) {
                        tracing::warn!("the input's {kind} stream could not be decoded; continuing without it");
                        sink.send_event(gst::event::StreamStart::new(&format!("eddy-missing-{kind}")));
                        sink.send_event(gst::event::Segment::new(&gst::FormattedSegment::<gst::ClockTime>::new()));
                        sink.send_event(gst::event::Eos::new());
                    }
                }
            });
            decode.connect_pad_added(move |_, pad| {
                let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
                let Some(kind) = caps.structure(0).map(|s| s.name().to_string()) else {
                    return;
                };
                // The first video and the first audio stream are used; others stay unlinked.
                let target = if kind.starts_with("video/") {
                    Some(&video_sink)
                } else if kind.starts_with("audio/") {
                    audio_sink.as_ref()
                } else {
                    None
                };
                if let Some(sink) = target {
                    if !sink.is_linked() {
                        if let Err(e) = pad.link(sink) {
                            tracing::warn!("could not link decoded {kind}: {e:?}");
                        }
                    }
                }
            });
        }
        Source::TestPattern { duration, live } => {
            let frames = (duration.as_secs_f64() * f64::from(TEST_PATTERN_FPS)).round().max(1.0) as i32;
            let video = make("videotestsrc")?;
            // Noise so the encoder really spends the ladder's bitrates (a flat pattern would compress
            // to almost nothing and make every rendition look alike to an ABR algorithm).
            video.set_property_from_str("pattern", "snow");
            video.set_property("is-live", *live);
            video.set_property("num-buffers", frames);
            // Drawn at half size and doubled with nearest-neighbour scaling: per-pixel noise and a
            // per-frame text render at full size cost more CPU than encoding all the rungs, and 2x2
            // noise blocks are still far from compressible.
            let (half_width, half_height) = ((plan.info.width / 4 * 2).max(2), (plan.info.height / 4 * 2).max(2));
            let caps = caps_filter(
                gst::Caps::builder("video/x-raw")
                    .field("format", "I420")
                    .field("width", half_width as i32)
                    .field("height", half_height as i32)
                    .field("framerate", plan.info.fps)
                    .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
                    .build(),
            )?;
            let clock = make("timeoverlay")?;
            clock.set_property("font-desc", format!("Sans Bold {}", (half_height / 10).max(8)));
            clock.set_property_from_str("halignment", "center");
            clock.set_property_from_str("valignment", "center");
            clock.set_property("shaded-background", true);
            let upscale = make("videoscale")?;
            upscale.set_property_from_str("method", "nearest-neighbour");
            let full_size = caps_filter(
                gst::Caps::builder("video/x-raw")
                    .field("width", plan.info.width as i32)
                    .field("height", plan.info.height as i32)
                    .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
                    .build(),
            )?;
            pipeline.add_many([&video, &caps, &clock, &upscale, &full_size]).map_err(pipeline_error)?;
            link_all(&[&video, &caps, &clock, &upscale, &full_size, video_entry])?;
            if let Some(entry) = audio_entry {
                let samples_per_frame = 48_000 / TEST_PATTERN_FPS;
                let audio = make("audiotestsrc")?;
                // A tick every second: audible proof that audio keeps up across switches.
                audio.set_property_from_str("wave", "ticks");
                audio.set_property("is-live", *live);
                audio.set_property("samplesperbuffer", samples_per_frame);
                audio.set_property("num-buffers", frames);
                let caps = caps_filter(gst::Caps::builder("audio/x-raw").field("rate", 48_000i32).build())?;
                pipeline.add_many([&audio, &caps]).map_err(pipeline_error)?;
                link_all(&[&audio, &caps, entry])?;
            }
        }
    }
    Ok(())
}

/// tee → queue → videoscale → caps → [label] → x264enc → h264parse → (probe) → queue.
fn build_rung_video(
    pipeline: &gst::Pipeline,
    plan: &PipelinePlan,
    index: usize,
    rung: &RungPlan,
    tee: &gst::Element,
    timeline: &Arc<Mutex<VideoTimeline>>,
) -> Result<gst::Element, PackageError> {
    let queue = make("queue")?;
    let scale = make("videoscale")?;
    let caps = caps_filter(
        // 4:2:0 so x264 makes a profile every player decodes (High, not High 4:4:4).
        gst::Caps::builder("video/x-raw")
            .field("format", "I420")
            .field("width", rung.width as i32)
            .field("height", rung.height as i32)
            .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
            .build(),
    )?;
    let mut chain = vec![queue.clone(), scale, caps];
    if matches!(plan.source, Source::TestPattern { .. }) {
        // The rendition's name on screen, so a viewer sees the player switch.
        let label = make("textoverlay")?;
        label.set_property("text", format!("{} {} kbit/s", rung.name, rung.video_bitrate / 1000));
        label.set_property("font-desc", format!("Sans Bold {}", (rung.height / 16).max(10)));
        label.set_property_from_str("halignment", "left");
        label.set_property_from_str("valignment", "top");
        label.set_property("shaded-background", true);
        chain.push(label);
    }
    let encoder = make("x264enc")?;
    encoder.set_property("bitrate", (rung.video_bitrate / 1000).max(1) as u32);
    encoder.set_property_from_str("pass", "cbr");
    encoder.set_property("vbv-buf-capacity", 1000u32);
    encoder.set_property_from_str("speed-preset", &plan.preset);
    encoder.set_property("key-int-max", plan.gop_frames());
    // No scene-cut keyframes: keyframes only every GOP, identical in every rendition.
    encoder.set_property("option-string", format!("scenecut=0:keyint-min={}", plan.gop_frames()));
    if plan.part_duration.is_some() {
        // No lookahead, no B-frames, no frame threads: each frame leaves the encoder as soon as it is
        // coded (x264's defaults hold dozens of frames, over a second at 30 fps).
        encoder.set_property_from_str("tune", "zerolatency");
    }
    let parse = make("h264parse")?;
    let out_queue = make("queue")?;
    chain.extend([encoder, parse.clone(), out_queue.clone()]);
    pipeline.add_many(chain.iter()).map_err(pipeline_error)?;
    let refs: Vec<&gst::Element> = std::iter::once(tee).chain(chain.iter()).collect();
    link_all(&refs)?;

    let probe_timeline = Arc::clone(timeline);
    let pad = parse.static_pad("src").ok_or_else(|| pipeline_error("h264parse src pad"))?;
    pad.add_probe(gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
        let Ok(mut timeline) = probe_timeline.lock() else {
            return gst::PadProbeReturn::Ok;
        };
        match &info.data {
            Some(gst::PadProbeData::Buffer(buffer)) => record_buffer(&mut timeline, buffer),
            Some(gst::PadProbeData::Event(event)) => {
                if let gst::EventView::Segment(segment) = event.view() {
                    timeline.segment = segment.segment().downcast_ref::<gst::ClockTime>().cloned();
                }
                if let gst::EventView::Caps(caps) = event.view() {
                    let codec_data = caps.caps().structure(0).and_then(|s| s.get::<gst::Buffer>("codec_data").ok());
                    if let Some(data) = codec_data {
                        if let Ok(map) = data.map_readable() {
                            timeline.sps = timeline.sps.or(codecs::sps_from_avcc(&map));
                        }
                    }
                }
            }
            _ => {}
        }
        gst::PadProbeReturn::Ok
    });
    tracing::debug!(rung = index, name = %rung.name, "video branch built");
    Ok(out_queue)
}

fn record_buffer(timeline: &mut VideoTimeline, buffer: &gst::Buffer) {
    let Some(pts) = buffer.pts() else {
        return;
    };
    if !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT) {
        if timeline.keyframes.last().is_none_or(|last| *last < pts) {
            timeline.keyframes.push(pts);
        }
        if timeline.first_running_time.is_none() {
            timeline.first_running_time = timeline.segment.as_ref().and_then(|s| s.to_running_time(pts));
        }
        if timeline.sps.is_none() {
            if let Ok(map) = buffer.map_readable() {
                timeline.sps = codecs::sps_from_annex_b(&map);
            }
        }
    }
    let end = pts + buffer.duration().unwrap_or(gst::ClockTime::ZERO);
    if end > timeline.end {
        timeline.end = end;
    }
}

fn link_to_request_pad(from: &gst::Element, to: &gst::Element, template: &str) -> Result<(), PackageError> {
    let sink = to
        .request_pad_simple(template)
        .ok_or_else(|| pipeline_error(format!("no '{template}' pad on {}", to.name())))?;
    let src = from.static_pad("src").ok_or_else(|| pipeline_error("src pad"))?;
    src.link(&sink).map(|_| ()).map_err(|e| pipeline_error(format!("linking {template}: {e:?}")))
}

/// splitmuxsink with mpegtsmux: a new file at every keyframe once the current file holds a whole
/// segment duration, i.e. one GOP per file. Files are written as `.partial-NNNNN.ts` and picked up
/// when the bus says they are closed.
fn build_ts_mux(
    pipeline: &gst::Pipeline,
    plan: &PipelinePlan,
    index: usize,
    rung: &RungPlan,
    video: &gst::Element,
    audio: Option<&gst::Element>,
) -> Result<(), PackageError> {
    let split = make_named("splitmuxsink", Some(mux_name(index)))?;
    let mux = make("mpegtsmux")?;
    split.set_property("muxer", &mux);
    // splitmuxsink would make this filesink itself; made here, it is one of the elements checked.
    split.set_property("sink", make("filesink")?);
    split.set_property("location", rung.dir.join(".partial-%05d.ts").to_string_lossy().as_ref());
    // A file is full once it holds one segment duration; the split then happens at the next
    // keyframe, which is exactly one GOP later.
    let threshold = (plan.segment_duration * 1e9 * 0.9) as u64;
    split.set_property("max-size-time", threshold);
    pipeline.add(&split).map_err(pipeline_error)?;
    link_to_request_pad(video, &split, "video")?;
    if let Some(audio) = audio {
        link_to_request_pad(audio, &split, "audio_%u")?;
    }
    Ok(())
}

/// The fragment length of every mp4mux: short fragments keep audio close to the video it belongs to
/// (muxed) or reach the audio segmenter soon (separate audio). Low-latency: as short as allowed, since
/// a part (or an audio cut) waits for the fragment holding its last samples.
fn fragment_ms(plan: &PipelinePlan) -> u32 {
    if plan.part_duration.is_some() {
        return 100;
    }
    ((plan.segment_duration * 1000.0 / 4.0) as u32).clamp(100, 1000)
}

/// The separate audio rendition: one audio-only fragmented MP4 into an appsink, read into samples.
fn build_audio_mux(
    pipeline: &gst::Pipeline,
    plan: &PipelinePlan,
    audio: &gst::Element,
    sender: &mpsc::Sender<Produced>,
) -> Result<(), PackageError> {
    let mux = make_named("mp4mux", Some(AUDIO_MUX_NAME.to_string()))?;
    mux.set_property("fragment-duration", fragment_ms(plan));
    let sink =
        make("appsink")?.downcast::<gst_app::AppSink>().map_err(|_| pipeline_error("appsink is not an AppSink"))?;
    sink.set_property("sync", false);
    pipeline.add_many([&mux, sink.upcast_ref()]).map_err(pipeline_error)?;
    link_to_request_pad(audio, &mux, "audio_%u")?;
    link_all(&[&mux, sink.upcast_ref()])?;

    let reader = Arc::new(Mutex::new(AudioReader::new()));
    let forward =
        |sender: &mpsc::Sender<Produced>, result: Result<Vec<AudioPiece>, crate::fmp4::Fmp4Error>| match result {
            Ok(pieces) => {
                for piece in pieces {
                    let _ = sender.send(match piece {
                        AudioPiece::Init { bytes, track_id, timescale } => {
                            Produced::AudioInit { bytes, track_id, timescale }
                        }
                        AudioPiece::Samples(samples) => Produced::AudioSamples(samples),
                    });
                }
                true
            }
            Err(source) => {
                let _ = sender.send(Produced::Failed(PackageError::Fmp4 { rung: "audio".into(), source }));
                false
            }
        };
    let (sample_reader, sample_sender) = (Arc::clone(&reader), sender.clone());
    let (eos_reader, eos_sender) = (reader, sender.clone());
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let buffer = sample.buffer().ok_or(gst::FlowError::Error)?;
                let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
                let mut reader = sample_reader.lock().map_err(|_| gst::FlowError::Error)?;
                if forward(&sample_sender, reader.push(&map)) {
                    Ok(gst::FlowSuccess::Ok)
                } else {
                    Err(gst::FlowError::Error)
                }
            })
            .eos(move |_| {
                if let Ok(mut reader) = eos_reader.lock() {
                    forward(&eos_sender, reader.finish().map(|()| Vec::new()));
                }
            })
            .build(),
    );
    Ok(())
}

/// One continuous fragmented MP4 per rung into an appsink; the splitter cuts it into init + segments.
fn build_fmp4_mux(
    pipeline: &gst::Pipeline,
    plan: &PipelinePlan,
    index: usize,
    rung: &RungPlan,
    video: &gst::Element,
    audio: Option<&gst::Element>,
    sender: &mpsc::Sender<Produced>,
) -> Result<(), PackageError> {
    let mux = make_named("mp4mux", Some(mux_name(index)))?;
    // mp4mux also closes a video fragment at every keyframe, which is where the splitter cuts segments.
    mux.set_property("fragment-duration", fragment_ms(plan));
    let sink =
        make("appsink")?.downcast::<gst_app::AppSink>().map_err(|_| pipeline_error("appsink is not an AppSink"))?;
    sink.set_property("sync", false);
    pipeline.add_many([&mux, sink.upcast_ref()]).map_err(pipeline_error)?;
    link_to_request_pad(video, &mux, "video_%u")?;
    if let Some(audio) = audio {
        link_to_request_pad(audio, &mux, "audio_%u")?;
    }
    link_all(&[&mux, sink.upcast_ref()])?;

    // Low-latency: a part leaves as soon as its GOP is whole (see `Fmp4Splitter::with_frames_per_piece`).
    let splitter = match plan.part_duration {
        Some(_) => Fmp4Splitter::with_frames_per_piece(plan.gop_frames()),
        None => Fmp4Splitter::new(),
    };
    let splitter = Arc::new(Mutex::new(splitter));
    let rung_name = rung.name.clone();
    let forward =
        move |sender: &mpsc::Sender<Produced>, result: Result<Vec<Piece>, crate::fmp4::Fmp4Error>| match result {
            Ok(pieces) => {
                for piece in pieces {
                    let produced = match piece {
                        Piece::Init(bytes) => Produced::Init { rung: index, bytes },
                        Piece::Segment(bytes) => Produced::Segment { rung: index, bytes },
                    };
                    let _ = sender.send(produced);
                }
                true
            }
            Err(source) => {
                let _ = sender.send(Produced::Failed(PackageError::Fmp4 { rung: rung_name.clone(), source }));
                false
            }
        };
    let forward = Arc::new(forward);
    let (sample_splitter, sample_sender, sample_forward) =
        (Arc::clone(&splitter), sender.clone(), Arc::clone(&forward));
    let (eos_splitter, eos_sender, eos_forward) = (splitter, sender.clone(), forward);
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let buffer = sample.buffer().ok_or(gst::FlowError::Error)?;
                let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
                let mut splitter = sample_splitter.lock().map_err(|_| gst::FlowError::Error)?;
                if sample_forward(&sample_sender, splitter.push(&map)) {
                    Ok(gst::FlowSuccess::Ok)
                } else {
                    Err(gst::FlowError::Error)
                }
            })
            .eos(move |_| {
                if let Ok(mut splitter) = eos_splitter.lock() {
                    eos_forward(&eos_sender, splitter.finish());
                }
            })
            .build(),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_elements_are_made() {
        let error = make("identity").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("'identity' is not listed in REQUIRED_ELEMENTS"), "{error}");
    }

    #[test]
    fn segment_durations_come_from_keyframe_times() {
        let s = gst::ClockTime::from_mseconds;
        let timeline =
            VideoTimeline { keyframes: vec![s(0), s(2000), s(4000)], end: s(5033), ..VideoTimeline::default() };
        assert_eq!(timeline.segment_duration(0), Some(2.0));
        assert_eq!(timeline.segment_duration(1), Some(2.0));
        // The last segment runs to the end of the last frame.
        assert_eq!(timeline.segment_duration(2), Some(1.033));
        assert_eq!(timeline.segment_duration(3), None);
    }

    #[test]
    fn mux_names_map_back_to_rungs() {
        assert_eq!(rung_from_mux_name(&mux_name(3)), Some(3));
        assert_eq!(rung_from_mux_name("sink"), None);
    }

    #[test]
    fn one_gop_per_segment() {
        let plan = |fps: gst::Fraction, seconds: f64| PipelinePlan {
            source: Source::TestPattern { duration: Duration::from_secs(1), live: false },
            info: SourceInfo {
                width: 640,
                height: 360,
                display_aspect: 16.0 / 9.0,
                fps,
                has_audio: false,
                duration: None,
            },
            rungs: Vec::new(),
            format: Format::Ts,
            segment_duration: seconds,
            preset: "ultrafast".into(),
            separate_audio: false,
            part_duration: None,
        };
        assert_eq!(plan(gst::Fraction::new(30, 1), 2.0).gop_frames(), 60);
        assert_eq!(plan(gst::Fraction::new(30000, 1001), 1.0).gop_frames(), 30);
        assert_eq!(plan(gst::Fraction::new(25, 1), 0.5).gop_frames(), 13);
        // Low-latency: one GOP per part.
        let low_latency = PipelinePlan { part_duration: Some(0.5), ..plan(gst::Fraction::new(30, 1), 2.0) };
        assert_eq!(low_latency.gop_frames(), 15);
    }
}
