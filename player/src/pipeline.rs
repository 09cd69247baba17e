//! The GStreamer shell: `appsrc → decodebin → (queue → sink)` per stream. Segments are pushed as
//! bytes; decodebin finds the demuxer (caps `video/mpegts,systemstream=true` for TS, typefinding for
//! fMP4) and renegotiates when the rendition's picture size changes. Video goes to a window
//! (`autovideosink`) and audio to `autoaudiosink`, or both to real-time `fakesink sync=true` when
//! headless. With subtitles, a `textoverlay` on the video branch draws the cue the session sets.
//! Elements are created only from [`REQUIRED_ELEMENTS`]; [`preflight`] checks those and the decoders
//! decodebin needs before playback starts.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use eddy_shared::gst_elements::MissingElements;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum PipelineError {
    #[error("GStreamer: {0}")]
    Setup(String),
    #[error("cannot decode the stream: {0}")]
    Decode(String),
    #[error(transparent)]
    MissingElements(#[from] MissingElements),
}

/// Every GStreamer element the player creates, by factory name. The pipeline creates elements only
/// through [`make`], which refuses a name missing here.
pub const REQUIRED_ELEMENTS: &[&str] = &[
    "appsrc",
    "decodebin",
    "queue",
    // Headless: real-time fake sinks.
    "fakesink",
    // With a display: a window and the sound card.
    "videoconvert",
    "videoscale",
    "capsfilter",
    "autovideosink",
    "audioconvert",
    "audioresample",
    "autoaudiosink",
    // Subtitles drawn over the video, with a window or headless.
    "textoverlay",
];

/// What decodebin must find to decode the streams Eddy packages (H.264 and AAC in MPEG-TS or fMP4).
/// Not created by name, but needed all the same, so [`preflight`] checks them too.
pub const DECODERS: &[&str] = &["tsdemux", "qtdemux", "h264parse", "avdec_h264", "aacparse", "avdec_aac"];

/// Checks that every element in [`REQUIRED_ELEMENTS`] and [`DECODERS`] is installed; the error names
/// each missing one with its plugin and the Debian package to install.
pub fn preflight() -> Result<(), PipelineError> {
    gst::init().map_err(setup_error)?;
    eddy_shared::gst_elements::check(REQUIRED_ELEMENTS.iter().chain(DECODERS).copied(), |name| {
        gst::ElementFactory::find(name).is_some()
    })?;
    Ok(())
}

/// Whether an installed decoder accepts `caps` (e.g. `audio/x-eac3`): what decodebin would look for.
pub fn can_decode(caps: &str) -> bool {
    if gst::init().is_err() {
        return false;
    }
    let Ok(caps) = caps.parse::<gst::Caps>() else { return false };
    gst::ElementFactory::factories_with_type(gst::ElementFactoryType::DECODER, gst::Rank::MARGINAL)
        .iter()
        .any(|factory| factory.can_sink_any_caps(&caps))
}

/// Creates an element; `factory` must be listed in [`REQUIRED_ELEMENTS`].
fn make(factory: &str) -> Result<gst::Element, PipelineError> {
    if !REQUIRED_ELEMENTS.contains(&factory) {
        return Err(PipelineError::Setup(format!("element '{factory}' is not listed in REQUIRED_ELEMENTS")));
    }
    gst::ElementFactory::make(factory)
        .build()
        .map_err(|_| MissingElements { elements: vec![factory.to_string()] }.into())
}

fn setup_error(e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Setup(e.to_string())
}

/// The container the segments are in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    MpegTs,
    /// Fragmented MP4 (CMAF); the init section is pushed before media segments.
    Fmp4,
}

/// What happened on the pipeline since the last poll.
#[derive(Debug, Clone, PartialEq)]
pub enum PipelineEvent {
    Playing,
    EndOfStream,
    Error(String),
    /// The video sink received this window title (`set_title`): a window shows it.
    TitleShown(String),
}

/// Which appsrc a push goes to: the variant's stream, or a separate audio rendition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Track {
    Main,
    Audio,
}

pub struct Pipeline {
    pipeline: gst::Pipeline,
    outputs: Outputs,
    main: Mutex<Source>,
    audio: Option<Mutex<Source>>,
    /// The subtitle overlays on the video branch, made when decodebin exposes the video, and the text
    /// they show. `None` without subtitles.
    overlay: Option<Arc<Mutex<Overlay>>>,
}

/// Where every source's decoded streams go, shared by the sources of all tracks.
#[derive(Clone)]
struct Outputs {
    headless: bool,
    /// Nanoseconds of decoded audio that reached the audio sink: silence from a stream whose audio
    /// was never decoded shows as 0 here.
    audio_played_ns: Arc<AtomicU64>,
    /// The window's video size (`set_window_size`): the largest rendition's.
    window: Arc<OnceLock<(u64, u64)>>,
    title: Arc<Title>,
}

/// The window title: the one asked for (`set_title`, numbered so each video branch sends each once),
/// the last the video sink received, and the last `poll` reported.
#[derive(Default)]
struct Title {
    wanted: Mutex<(u64, String)>,
    shown: Mutex<Option<String>>,
    reported: Mutex<Option<String>>,
}

/// One track's input: the `appsrc → decodebin` fed now (a new one after each discontinuity), how to
/// make the next, and where its media's running time started.
struct Source {
    appsrc: gst_app::AppSrc,
    /// Every element of the current source's chain (appsrc, decodebin, each branch), for a flush.
    elements: ChainElements,
    container: Container,
    drop_audio: bool,
    /// Sources ended at a discontinuity, still playing out what they hold. Each is taken out of the
    /// pipeline once all its sinks have ended, so that a stream with a discontinuity every segment
    /// holds as many sources as its buffer spans, not one per discontinuity since it started.
    retired: Vec<ChainElements>,
}

/// One source's chain (appsrc, decodebin, each branch), shared with the callback that adds branches.
#[derive(Default)]
struct Chain {
    elements: Mutex<Vec<gst::Element>>,
    /// Branches attached, and those whose sink has had end-of-stream.
    branches: AtomicUsize,
    ended: Arc<AtomicUsize>,
}

impl Chain {
    fn has_ended(&self) -> bool {
        let branches = self.branches.load(Ordering::SeqCst);
        branches > 0 && self.ended.load(Ordering::SeqCst) >= branches
    }

    /// Stops the chain's elements, sinks first (stopping them fails the pushes of the threads
    /// upstream, which otherwise stay blocked on full queues while the pipeline is paused; an
    /// upstream element can only stop once its streaming thread is back), and takes them out.
    fn remove_from(&self, pipeline: &gst::Pipeline) {
        let elements = std::mem::take(&mut *self.elements.lock().unwrap_or_else(|p| p.into_inner()));
        for element in elements.iter().rev() {
            let _ = element.set_state(gst::State::Null);
            let _ = pipeline.remove(element);
        }
    }
}

type ChainElements = Arc<Chain>;

/// When a source's decoded streams should start: `None` for a track's first source (they start
/// where their timestamps say, which is running time ~0: a demuxer's first segment starts at its
/// first frame), else at running time `at_ns`.
#[derive(Clone)]
struct Alignment {
    /// Negative when a separate audio rendition's segment starts before the video's seek point.
    at_ns: Option<i64>,
    /// The running-time offset of this source, fixed by its first decoded buffer (any stream), so
    /// that its audio and video keep their relative timing.
    offset_ns: Arc<OnceLock<i64>>,
    /// After a seek: decoded media that would run before this running time (ns) is
    /// dropped. A separate audio rendition's segment seldom starts where the video's does; without
    /// this its first part would play late, at once or not, and put the sound out of step.
    clip_before_ns: Option<u64>,
}

/// The `textoverlay`s of the video branch (decodebin may expose the video again after a rendition
/// switch) and the text set last, which a new overlay starts with.
#[derive(Default)]
struct Overlay {
    elements: Vec<gst::Element>,
    markup: String,
}

impl Pipeline {
    /// `audio`: the container of a separate audio rendition (`EXT-X-MEDIA` with a URI), fed through
    /// its own `appsrc → decodebin`. Both sources run on the pipeline's one clock; fMP4 timestamps
    /// (`tfdt`) line the two up. `subtitles`: the video branch gets a `textoverlay` for
    /// [`Pipeline::set_subtitle`].
    pub fn new(
        container: Container,
        audio: Option<Container>,
        headless: bool,
        subtitles: bool,
    ) -> Result<Self, PipelineError> {
        gst::init().map_err(setup_error)?;
        let pipeline = gst::Pipeline::new();
        let outputs =
            Outputs { headless, audio_played_ns: Arc::default(), window: Arc::default(), title: Arc::default() };
        let overlay = subtitles.then(|| Arc::new(Mutex::new(Overlay::default())));
        // A track's first source: its media starts where its timestamps say. The variant's drops its
        // own audio when a separate audio rendition plays; only it draws subtitles.
        let first = |container: Container, drop_audio: bool, overlay: Option<&Arc<Mutex<Overlay>>>| {
            let alignment = Alignment { at_ns: None, offset_ns: Arc::default(), clip_before_ns: None };
            let (appsrc, elements) = add_source(&pipeline, container, drop_audio, &outputs, overlay, alignment)?;
            Ok::<_, PipelineError>(Mutex::new(Source { appsrc, elements, container, drop_audio, retired: Vec::new() }))
        };
        let main = first(container, audio.is_some(), overlay.as_ref())?;
        let audio = audio.map(|container| first(container, false, None)).transpose()?;
        Ok(Self { pipeline, outputs, main, audio, overlay })
    }

    /// The window's title (xvimagesink and ximagesink show a title tag there): sent down the video
    /// branch as a tag event ahead of the next frame, and again by each new branch.
    pub fn set_title(&self, title: &str) {
        if let Ok(mut wanted) = self.outputs.title.wanted.lock() {
            if wanted.1 != title {
                *wanted = (wanted.0.saturating_add(1), title.to_string());
            }
        }
    }

    /// The size the window's video is scaled to, set once before playing (the largest rendition's),
    /// so that the window does not jump at each switch. Headless, nothing to size.
    pub fn set_window_size(&self, width: u64, height: u64) {
        let _ = self.outputs.window.set((width, height));
    }

    /// Shows `text` over the video (plain text) until the next call; `None` clears it. Does nothing
    /// without subtitles.
    pub fn set_subtitle(&self, text: Option<&str>) {
        let Some(overlay) = &self.overlay else { return };
        let mut overlay = overlay.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        overlay.markup = text.map(pango_escape).unwrap_or_default();
        for element in &overlay.elements {
            element.set_property("text", overlay.markup.as_str());
        }
    }

    fn track(&self, track: Track) -> Result<MutexGuard<'_, Source>, PipelineError> {
        let source = match track {
            Track::Main => &self.main,
            Track::Audio => self.audio.as_ref().ok_or_else(|| setup_error("no separate audio track"))?,
        };
        Ok(source.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    fn source(&self, track: Track) -> Result<gst_app::AppSrc, PipelineError> {
        Ok(self.track(track)?.appsrc.clone())
    }

    /// Starts `track` over on a fresh `appsrc → decodebin` (RFC 8216 §4.3.2.3, EXT-X-DISCONTINUITY:
    /// the timestamps, the codecs or the container may all change). The old source ends and plays
    /// out what it holds; the new one's media is shifted to start at running time `at_s`,
    /// where the old one's ends. A demuxer fed the new media after the old would see its
    /// timestamps go back (shown at once, not in time) and, for MPEG-TS, a new program that
    /// decodebin waits on forever. hlsdemux2 likewise resets its demuxer at a discontinuity.
    ///
    /// `seek_at_s` (a seek): the old source's media is dropped instead: its elements are stopped and
    /// taken out of the pipeline at once, and the new media that would run before `seek_at_s` is
    /// dropped too.
    pub fn restart(&self, track: Track, at_s: f64, seek_at_s: Option<f64>) -> Result<(), PipelineError> {
        let mut source = self.track(track)?;
        if seek_at_s.is_some() {
            // Everything the track holds is dropped: the current source and any still playing out.
            source.elements.remove_from(&self.pipeline);
            for retired in std::mem::take(&mut source.retired) {
                retired.remove_from(&self.pipeline);
            }
        } else {
            let _ = source.appsrc.end_of_stream();
            let current = Arc::clone(&source.elements);
            source.retired.push(current);
            let pipeline = &self.pipeline;
            source.retired.retain(|chain| {
                if chain.has_ended() {
                    chain.remove_from(pipeline);
                }
                !chain.has_ended() && !chain.elements.lock().map(|e| e.is_empty()).unwrap_or(true)
            });
        }
        let nanoseconds = |s: f64| (s.max(0.0) * 1e9).min(u64::MAX as f64) as u64;
        let signed_nanoseconds = |s: f64| (s * 1e9).clamp(i64::MIN as f64, i64::MAX as f64) as i64;
        let alignment = Alignment {
            at_ns: Some(signed_nanoseconds(at_s)),
            offset_ns: Arc::default(),
            clip_before_ns: seek_at_s.map(nanoseconds),
        };
        let overlay = if track == Track::Main { self.overlay.as_ref() } else { None };
        let (appsrc, elements) =
            add_source(&self.pipeline, source.container, source.drop_audio, &self.outputs, overlay, alignment)?;
        source.appsrc = appsrc;
        source.elements = elements;
        Ok(())
    }

    /// How many sources `track` holds: the one fed now and those still playing out.
    pub fn sources(&self, track: Track) -> usize {
        self.track(track).map_or(0, |source| 1 + source.retired.len())
    }

    /// Starts playing (the pipeline reaches PLAYING once it has prerolled).
    pub fn play(&self) -> Result<(), PipelineError> {
        self.pipeline.set_state(gst::State::Playing).map(|_| ()).map_err(setup_error)
    }

    /// Pauses for a stall.
    pub fn pause(&self) -> Result<(), PipelineError> {
        self.pipeline.set_state(gst::State::Paused).map(|_| ()).map_err(setup_error)
    }

    /// Pushes bytes into `track`; `discontinuity` marks a jump (a new init section or rendition).
    pub fn push(&self, track: Track, data: Vec<u8>, discontinuity: bool) -> Result<(), PipelineError> {
        let mut buffer = gst::Buffer::from_mut_slice(data);
        if discontinuity {
            if let Some(buffer) = buffer.get_mut() {
                buffer.set_flags(gst::BufferFlags::DISCONT);
            }
        }
        self.source(track)?.push_buffer(buffer).map(|_| ()).map_err(|e| setup_error(format!("push: {e:?}")))
    }

    /// No more data for `track`: the pipeline posts end-of-stream once every track has ended and
    /// everything has played.
    pub fn end_of_stream(&self, track: Track) -> Result<(), PipelineError> {
        self.source(track)?.end_of_stream().map(|_| ()).map_err(|e| setup_error(format!("end of stream: {e:?}")))
    }

    /// Clock time minus base time: how long the pipeline has been playing since its base time was
    /// (re)set. `None` before it first plays.
    pub fn running_time_s(&self) -> Option<f64> {
        self.pipeline.current_running_time().map(|t| t.nseconds() as f64 / 1e9)
    }

    /// Seconds of decoded audio the audio sink has received.
    pub fn audio_played_s(&self) -> f64 {
        self.outputs.audio_played_ns.load(Ordering::Relaxed) as f64 / 1e9
    }

    pub fn is_playing(&self) -> bool {
        self.pipeline.current_state() == gst::State::Playing
    }

    /// Drains the bus without blocking.
    pub fn poll(&self) -> Vec<PipelineEvent> {
        let mut events = Vec::new();
        let Some(bus) = self.pipeline.bus() else {
            return events;
        };
        while let Some(message) = bus.pop() {
            use gst::MessageView;
            match message.view() {
                MessageView::Eos(_) => events.push(PipelineEvent::EndOfStream),
                MessageView::Error(error) => events.push(PipelineEvent::Error(format!(
                    "{} ({})",
                    error.error(),
                    error.debug().map(|d| d.to_string()).unwrap_or_default().lines().next().unwrap_or("")
                ))),
                // decodebin found a stream it has no decoder for. With other streams decodable it
                // would go on without it (silent video): the viewer is told instead.
                MessageView::Element(element) if element.structure().is_some_and(|s| s.name() == "missing-plugin") => {
                    let what = element
                        .structure()
                        .and_then(|s| s.get::<gst::Caps>("detail").ok())
                        .and_then(|caps| caps.structure(0).map(|s| s.name().to_string()))
                        .unwrap_or_else(|| "a stream".into());
                    events.push(PipelineEvent::Error(format!(
                        "no GStreamer decoder for {what}: cannot play this stream's {}",
                        if what.starts_with("audio/") { "audio" } else { "media" }
                    )));
                }
                MessageView::StateChanged(change)
                    if change.src() == Some(self.pipeline.upcast_ref()) && change.current() == gst::State::Playing =>
                {
                    events.push(PipelineEvent::Playing)
                }
                _ => {}
            }
        }
        let title = &self.outputs.title;
        if let (Ok(shown), Ok(mut reported)) = (title.shown.lock(), title.reported.lock()) {
            if *shown != *reported {
                reported.clone_from(&shown);
                events.extend(shown.clone().map(PipelineEvent::TitleShown));
            }
        }
        events
    }

    pub fn stop(&self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Adds `appsrc → decodebin` with a sink branch per decoded stream. `drop_audio`: the variant's own
/// audio (if any) is discarded, because a separate audio rendition plays instead.
fn add_source(
    pipeline: &gst::Pipeline,
    container: Container,
    drop_audio: bool,
    outputs: &Outputs,
    overlay: Option<&Arc<Mutex<Overlay>>>,
    alignment: Alignment,
) -> Result<(gst_app::AppSrc, ChainElements), PipelineError> {
    let appsrc = make("appsrc")?.downcast::<gst_app::AppSrc>().map_err(|_| setup_error("appsrc is not an AppSrc"))?;
    appsrc.set_format(gst::Format::Bytes);
    appsrc.set_is_live(false);
    appsrc.set_stream_type(gst_app::AppStreamType::Stream);
    // The session bounds memory by the buffer target; appsrc must not drop or block pushes.
    appsrc.set_max_bytes(1 << 30);
    if container == Container::MpegTs {
        appsrc.set_caps(Some(&gst::Caps::builder("video/mpegts").field("systemstream", true).build()));
    }
    let decodebin = make("decodebin")?;
    pipeline.add_many([appsrc.upcast_ref(), &decodebin]).map_err(setup_error)?;
    appsrc.link(&decodebin).map_err(setup_error)?;
    let chain = Arc::new(Chain {
        elements: Mutex::new(vec![appsrc.clone().upcast::<gst::Element>(), decodebin.clone()]),
        ..Chain::default()
    });
    let chain_elements = Arc::clone(&chain);
    if pipeline.current_state() != gst::State::Null {
        // Added to a running pipeline (a restart): sinks first, as attach_branch does.
        decodebin.sync_state_with_parent().map_err(setup_error)?;
        appsrc.sync_state_with_parent().map_err(setup_error)?;
    }
    // A demuxer drops a stream's pad when the stream ends mid-playback (a discontinuity into another
    // codec: tsdemux starts a new program). Its branch would then never see end-of-stream, and the
    // pipeline posts EOS only once every sink has: the branch is ended here instead.
    // decodebin unlinks the pad before it says so, hence the record of which branch each pad fed.
    let branches: Arc<std::sync::Mutex<Vec<(gst::Pad, gst::Pad)>>> = Arc::default();
    let fed = Arc::clone(&branches);
    decodebin.connect_pad_removed(move |_, pad| {
        let branch = fed.lock().ok().and_then(|mut fed| {
            let position = fed.iter().position(|(source, _)| source == pad)?;
            Some(fed.swap_remove(position).1)
        });
        if let Some(branch) = branch {
            branch.send_event(gst::event::Eos::new());
        }
    });
    let weak = pipeline.downgrade();
    let Outputs { headless, audio_played_ns, window, title } = outputs.clone();
    let overlay = overlay.map(Arc::clone);
    decodebin.connect_pad_added(move |_, pad| {
        let Some(pipeline) = weak.upgrade() else {
            return;
        };
        let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
        let media = caps.structure(0).map(|s| s.name().to_string()).unwrap_or_default();
        // (elements, whether a fakesink at the end syncs to the clock, i.e. plays in real time)
        let subtitles = overlay.is_some();
        let (branch, sync): (&[&str], bool) = match (media.split('/').next(), headless) {
            (Some("audio"), _) if drop_audio => (&["queue", "fakesink"], false),
            // Headless, the overlay is there too (drawing into the frames the fakesink drops), so
            // that headless playback and the tests go through the same elements as a window.
            (Some("video"), true) if subtitles => (&["queue", "textoverlay", "fakesink"], true),
            (Some("video"), true) | (Some("audio"), true) => (&["queue", "fakesink"], true),
            // The overlay draws into the formats it knows: videoconvert gives it one, and converts
            // its output to what the window takes.
            // The window keeps the largest rendition's size: a switch scales the picture, not the window.
            (Some("video"), false) if subtitles => (
                &["queue", "videoconvert", "textoverlay", "videoconvert", "videoscale", "capsfilter", "autovideosink"],
                true,
            ),
            (Some("video"), false) => (&["queue", "videoconvert", "videoscale", "capsfilter", "autovideosink"], true),
            (Some("audio"), false) => (&["queue", "audioconvert", "audioresample", "autoaudiosink"], true),
            _ => (&["queue", "fakesink"], false),
        };
        let count = (media.starts_with("audio/") && !drop_audio).then_some(&audio_played_ns);
        match attach_branch(&pipeline, pad, branch, sync, count) {
            Ok(elements) => {
                if let (Some(caps), Some(filter)) = (
                    window.get().map(|&(width, height)| window_caps(width, height)),
                    elements.iter().find(|e| e.factory().is_some_and(|f| f.name() == "capsfilter")),
                ) {
                    filter.set_property("caps", caps);
                }
                if let Some(queue_sink) = elements.first().and_then(|queue| queue.static_pad("sink")) {
                    align(&queue_sink, alignment.clone());
                }
                if let Ok(mut chain) = chain_elements.elements.lock() {
                    chain.extend(elements.iter().cloned());
                }
                chain_elements.branches.fetch_add(1, Ordering::SeqCst);
                let video = media.starts_with("video/");
                if let (true, Some(queue_src)) = (video, elements.first().and_then(|queue| queue.static_pad("src"))) {
                    send_title(&queue_src, Arc::clone(&title));
                }
                if let Some(sink_pad) = elements.last().and_then(|sink| sink.static_pad("sink")) {
                    let ended = Arc::clone(&chain_elements.ended);
                    let title = Arc::clone(&title);
                    sink_pad.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
                        let Some(event) = info.event() else { return gst::PadProbeReturn::Ok };
                        match event.view() {
                            gst::EventView::Eos(_) => {
                                ended.fetch_add(1, Ordering::SeqCst);
                                gst::PadProbeReturn::Remove
                            }
                            gst::EventView::Tag(tag) if video => {
                                if let Some(text) = tag.tag().get::<gst::tags::Title>() {
                                    if let Ok(mut shown) = title.shown.lock() {
                                        *shown = Some(text.get().to_string());
                                    }
                                }
                                gst::PadProbeReturn::Ok
                            }
                            _ => gst::PadProbeReturn::Ok,
                        }
                    });
                }
                let branch_sink = elements.first().and_then(|first| first.static_pad("sink"));
                if let (Some(branch_sink), Ok(mut branches)) = (branch_sink, branches.lock()) {
                    branches.push((pad.clone(), branch_sink));
                }
                if let Some(overlay) = &overlay {
                    add_overlays(overlay, elements);
                }
            }
            Err(e) => tracing::error!("cannot attach a sink for {media}: {e}"),
        }
    });
    Ok((appsrc, chain))
}

/// The caps a window's video is scaled to: the largest rendition's size in square pixels (videoscale
/// letterboxes a picture of another shape).
fn window_caps(width: u64, height: u64) -> gst::Caps {
    let clamp = |v: u64| i32::try_from(v.clamp(16, 8192)).unwrap_or(8192);
    gst::Caps::builder("video/x-raw")
        .field("width", clamp(width))
        .field("height", clamp(height))
        .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
        .build()
}

/// The offset that starts media whose first buffer runs at `first_ns` at `target_ns` (both running
/// times, in ns), saturating.
pub fn start_offset_ns(target_ns: i128, first_ns: u64) -> i64 {
    let difference = target_ns - i128::from(first_ns);
    difference.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// For a restarted source's branch (`queue_sink`: decoded streams entering the branch): every segment
/// event gets the running-time offset (as `gst_segment_offset_running_time`) that starts the media at
/// running time `at_ns`, one offset for all the source's streams so that they keep their relative
/// timing; after a seek, frames ending before the seek point are dropped.
fn align(queue_sink: &gst::Pad, alignment: Alignment) {
    let Some(at_ns) = alignment.at_ns else { return };
    // The offset goes into the segment event itself, on its way into the queue: set on a pad, it
    // would race the queue's thread, which may push the old segment and the first frames first.
    queue_sink.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM | gst::PadProbeType::BUFFER, move |pad, info| {
        if let Some(gst::PadProbeData::Event(event)) = &info.data {
            let gst::EventView::Segment(segment) = event.view() else { return gst::PadProbeReturn::Ok };
            let Ok(mut segment) = segment.segment().clone().downcast::<gst::ClockTime>() else {
                return gst::PadProbeReturn::Ok;
            };
            // The demuxer's segment starts at its first frame: where that frame runs now.
            let running = segment.start().and_then(|start| segment.to_running_time(start)).map_or(0, |t| t.nseconds());
            let offset = *alignment.offset_ns.get_or_init(|| start_offset_ns(i128::from(at_ns), running));
            if segment.offset_running_time(offset).is_ok() {
                info.data = Some(gst::PadProbeData::Event(gst::event::Segment::new(&segment)));
            }
            return gst::PadProbeReturn::Ok;
        }
        let (Some(clip), Some(buffer)) = (alignment.clip_before_ns, info.buffer()) else {
            return gst::PadProbeReturn::Ok;
        };
        // After a seek: frames that end before the seek point are dropped (the segment in force on
        // this pad is the offset one).
        let Some(end) = buffer.pts().map(|pts| pts + buffer.duration().unwrap_or(gst::ClockTime::ZERO)) else {
            return gst::PadProbeReturn::Ok;
        };
        let end_ns = pad
            .sticky_event::<gst::event::Segment>(0)
            .and_then(|event| event.segment().downcast_ref::<gst::ClockTime>().and_then(|s| s.to_running_time(end)))
            .map(gst::ClockTime::nseconds);
        match end_ns {
            Some(end_ns) if end_ns <= clip => gst::PadProbeReturn::Drop,
            _ => gst::PadProbeReturn::Ok,
        }
    });
}

/// Registers the branch's `textoverlay`s (if any) with the text set so far; they draw it at the bottom
/// on a shaded band, like a player's subtitles.
fn add_overlays(overlay: &Mutex<Overlay>, elements: Vec<gst::Element>) {
    let mut overlay = overlay.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    for element in elements {
        if element.factory().is_some_and(|f| f.name() == "textoverlay") {
            element.set_property_from_str("valignment", "bottom");
            element.set_property("shaded-background", true);
            element.set_property("text", overlay.markup.as_str());
            overlay.elements.push(element);
        }
    }
}

/// `text` for a property that takes Pango markup (`textoverlay`'s `text` goes to
/// `pango_layout_set_markup`): the characters markup gives meaning to are escaped, as
/// `g_markup_escape_text` does.
fn pango_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Adds `queue ! ... ! sink` made of `factories` to the running pipeline and links `pad` to it.
/// Returns the elements.
fn attach_branch(
    pipeline: &gst::Pipeline,
    pad: &gst::Pad,
    factories: &[&str],
    sync: bool,
    played_ns: Option<&Arc<AtomicU64>>,
) -> Result<Vec<gst::Element>, PipelineError> {
    let elements = factories.iter().map(|factory| make(factory)).collect::<Result<Vec<_>, _>>()?;
    let (Some(first), Some(last)) = (elements.first(), elements.last()) else {
        return Err(setup_error("empty branch"));
    };
    if last.has_property("sync") {
        last.set_property("sync", sync);
    }
    pipeline.add_many(&elements).map_err(setup_error)?;
    for pair in elements.windows(2) {
        // textoverlay has two inputs: a plain link could pick the text one.
        let input = pair[1].static_pad("video_sink").map(|_| "video_sink");
        pair[0].link_pads(None, &pair[1], input).map_err(setup_error)?;
    }
    for element in elements.iter().rev() {
        element.sync_state_with_parent().map_err(setup_error)?;
    }
    if let (Some(played_ns), Some(sink_pad)) = (played_ns, last.static_pad("sink")) {
        let played_ns = Arc::clone(played_ns);
        sink_pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(duration) = info.buffer().and_then(|b| b.duration()) {
                played_ns.fetch_add(duration.nseconds(), Ordering::Relaxed);
            }
            gst::PadProbeReturn::Ok
        });
    }
    let sink = first.static_pad("sink").ok_or_else(|| setup_error("branch has no sink pad"))?;
    pad.link(&sink).map_err(setup_error)?;
    Ok(elements)
}

/// Sends the wanted window title down a video branch from its queue's output, in the streaming
/// thread ahead of the next frame, whenever it changed since this branch last sent it.
fn send_title(queue_src: &gst::Pad, title: Arc<Title>) {
    let sent = AtomicU64::new(0);
    queue_src.add_probe(gst::PadProbeType::BUFFER, move |pad, _| {
        // Every frame passes here: the text is copied only when it changed since this branch sent it.
        let newer = title.wanted.lock().ok().filter(|w| w.0 > sent.load(Ordering::Relaxed)).map(|w| w.clone());
        if let Some((version, text)) = newer {
            sent.store(version, Ordering::Relaxed);
            let mut tags = gst::TagList::new();
            if let Some(tags) = tags.get_mut() {
                tags.add::<gst::tags::Title>(&text.as_str(), gst::TagMergeMode::Replace);
            }
            pad.push_event(gst::event::Tag::new(tags));
        }
        gst::PadProbeReturn::Ok
    });
}

/// Whether a window can be opened (a display server is advertised).
pub fn display_available() -> bool {
    ["DISPLAY", "WAYLAND_DISPLAY"].iter().any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decoders_eddy_needs_are_found_by_caps_and_nonsense_is_not() {
        assert!(can_decode("audio/mpeg, mpegversion=(int)4"), "AAC (gstreamer1.0-libav)");
        assert!(!can_decode("audio/x-no-such-codec"));
        assert!(!can_decode("not caps at all ,,,"));
    }

    #[test]
    fn subtitle_text_is_escaped_for_pango_markup() {
        assert_eq!(
            pango_escape("<b>Tom & \"Jerry's\"</b>\nnext"),
            "&lt;b&gt;Tom &amp; &quot;Jerry&#39;s&quot;&lt;/b&gt;\nnext"
        );
    }

    #[test]
    fn a_restarted_source_is_shifted_to_start_where_the_last_one_ended() {
        // The first media ran from 1.4 s; 11 s later comes media whose timestamps start over at 1.4 s.
        assert_eq!(start_offset_ns(1_400_000_000 + 11_000_000_000, 1_400_000_000), 11_000_000_000);
        // An audio segment that starts 0.8 s before the video's seek point, at running time 0.1 s.
        assert_eq!(start_offset_ns(-800_000_000, 100_000_000), -900_000_000);
        // Media running ahead of where it should start is held back.
        assert_eq!(start_offset_ns(0, 5), -5);
        assert_eq!(start_offset_ns(i128::from(u64::MAX), 0), i64::MAX);
    }

    #[test]
    fn the_window_is_sized_to_the_rendition_given_in_square_pixels_within_bounds() {
        let _ = gst::init();
        let caps = window_caps(1280, 720);
        let structure = caps.structure(0).map(|s| s.to_string()).unwrap_or_default();
        assert!(structure.contains("width=(int)1280") && structure.contains("height=(int)720"), "{structure}");
        assert!(structure.contains("pixel-aspect-ratio=(fraction)1/1"), "{structure}");
        let huge = window_caps(u64::MAX, 0).structure(0).map(|s| s.to_string()).unwrap_or_default();
        assert!(huge.contains("width=(int)8192") && huge.contains("height=(int)16"), "{huge}");
    }

    #[test]
    fn only_listed_elements_are_made() {
        let error = make("identity").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("'identity' is not listed in REQUIRED_ELEMENTS"), "{error}");
    }
}
