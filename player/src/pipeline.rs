//! The GStreamer shell: `appsrc → decodebin → (queue → sink)` per stream. Segments are pushed as
//! bytes; decodebin finds the demuxer (caps `video/mpegts,systemstream=true` for TS, typefinding for
//! fMP4) and renegotiates when the rendition's picture size changes. Video goes to a window
//! (`autovideosink`) and audio to `autoaudiosink`, or both to real-time `fakesink sync=true` when
//! headless.

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
}

pub struct Pipeline {
    pipeline: gst::Pipeline,
    appsrc: gst_app::AppSrc,
}

impl Pipeline {
    pub fn new(container: Container, headless: bool) -> Result<Self, PipelineError> {
        gst::init().map_err(setup_error)?;
        let pipeline = gst::Pipeline::new();
        let ts_caps = gst::Caps::builder("video/mpegts").field("systemstream", true).build();
        let mut builder = gst_app::AppSrc::builder()
            .format(gst::Format::Bytes)
            .is_live(false)
            .stream_type(gst_app::AppStreamType::Stream)
            // The session bounds memory by the buffer target; appsrc must not drop or block pushes.
            .max_bytes(1 << 30);
        if container == Container::MpegTs {
            builder = builder.caps(&ts_caps);
        }
        let appsrc = builder.build();
        let decodebin = gst::ElementFactory::make("decodebin").build().map_err(setup_error)?;
        pipeline.add_many([appsrc.upcast_ref(), &decodebin]).map_err(setup_error)?;
        appsrc.link(&decodebin).map_err(setup_error)?;
        let weak = pipeline.downgrade();
        decodebin.connect_pad_added(move |_, pad| {
            let Some(pipeline) = weak.upgrade() else {
                return;
            };
            let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
            let media = caps.structure(0).map(|s| s.name().to_string()).unwrap_or_default();
            let description = match (media.split('/').next(), headless) {
                (Some("video"), true) => "queue ! fakesink sync=true",
                (Some("video"), false) => "queue ! videoconvert ! videoscale ! autovideosink",
                (Some("audio"), true) => "queue ! fakesink sync=true",
                (Some("audio"), false) => "queue ! audioconvert ! audioresample ! autoaudiosink",
                _ => "queue ! fakesink sync=false",
            };
            if let Err(e) = attach_branch(&pipeline, pad, description) {
                tracing::error!("cannot attach a sink for {media}: {e}");
            }
        });
        Ok(Self { pipeline, appsrc })
    }

    /// Starts playing (the pipeline reaches PLAYING once it has prerolled).
    pub fn play(&self) -> Result<(), PipelineError> {
        self.pipeline.set_state(gst::State::Playing).map(|_| ()).map_err(setup_error)
    }

    /// Pauses for a stall.
    pub fn pause(&self) -> Result<(), PipelineError> {
        self.pipeline.set_state(gst::State::Paused).map(|_| ()).map_err(setup_error)
    }

    /// Pushes bytes; `discontinuity` marks a jump (a new init section or rendition).
    pub fn push(&self, data: Vec<u8>, discontinuity: bool) -> Result<(), PipelineError> {
        let mut buffer = gst::Buffer::from_mut_slice(data);
        if discontinuity {
            if let Some(buffer) = buffer.get_mut() {
                buffer.set_flags(gst::BufferFlags::DISCONT);
            }
        }
        self.appsrc.push_buffer(buffer).map(|_| ()).map_err(|e| setup_error(format!("push: {e:?}")))
    }

    /// No more data: the pipeline posts end-of-stream once everything has played.
    pub fn end_of_stream(&self) -> Result<(), PipelineError> {
        self.appsrc.end_of_stream().map(|_| ()).map_err(|e| setup_error(format!("end of stream: {e:?}")))
    }

    /// Clock time minus base time: how long the pipeline has been playing since its base time was
    /// (re)set. `None` before it first plays.
    pub fn running_time_s(&self) -> Option<f64> {
        self.pipeline.current_running_time().map(|t| t.nseconds() as f64 / 1e9)
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
                MessageView::StateChanged(change)
                    if change.src() == Some(self.pipeline.upcast_ref()) && change.current() == gst::State::Playing =>
                {
                    events.push(PipelineEvent::Playing)
                }
                _ => {}
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

fn attach_branch(pipeline: &gst::Pipeline, pad: &gst::Pad, description: &str) -> Result<(), PipelineError> {
    let bin = gst::parse::bin_from_description(description, true).map_err(setup_error)?;
    pipeline.add(&bin).map_err(setup_error)?;
    bin.sync_state_with_parent().map_err(setup_error)?;
    let sink = bin.static_pad("sink").ok_or_else(|| setup_error("branch has no sink pad"))?;
    pad.link(&sink).map_err(setup_error)?;
    Ok(())
}

/// Whether a window can be opened (a display server is advertised).
pub fn display_available() -> bool {
    ["DISPLAY", "WAYLAND_DISPLAY"].iter().any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()))
}
