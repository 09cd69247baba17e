//! Runs one packaging job: probe, build the pipeline, store segments as they are produced, then write
//! the playlists — the master last, so a failed run never leaves a master pointing at missing files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gst::prelude::*;
use gstreamer as gst;
use serde::Serialize;

use crate::codecs;
use crate::crypto;
use crate::error::PackageError;
use crate::ladder::{self, Rung};
use crate::output::{RenditionWriter, INIT_SEGMENT, KEY_FILE, MEDIA_PLAYLIST};
use crate::pipeline::{self, Built, Format, PipelinePlan, Produced, RungPlan, Source};
use crate::playlist::{self, Bitrates, MediaOptions, VariantInfo};

/// The master playlist's file name in the output folder.
pub const MASTER_PLAYLIST: &str = "master.m3u8";

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
    /// Measured over the whole file, audio and container included (bit/s).
    pub average_bitrate: u64,
    /// Highest single-segment bitrate (bit/s).
    pub peak_bitrate: u64,
    pub segments: usize,
    pub bytes: u64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub master: PathBuf,
    pub renditions: Vec<RenditionSummary>,
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

pub fn package(config: &PackageConfig, progress: &mut dyn FnMut(Progress)) -> Result<Summary, PackageError> {
    let started = std::time::Instant::now();
    let out = config.out_dir.as_path();
    let output_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PackageError::Output { path, source }
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
    if rungs.is_empty() {
        return Err(PackageError::NothingToMake {
            height: info.height,
            skipped: skipped.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", "),
        });
    }

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
    };
    let mut writers = Vec::new();
    let mut plans = Vec::new();
    for rung in &rungs {
        let writer = RenditionWriter::create(
            out,
            &rung.name,
            config.format.segment_extension(),
            media_options.clone(),
            key,
            config.live_window,
        )
        .map_err(output_error(&out.join(&rung.name)))?;
        plans.push(RungPlan {
            name: rung.name.clone(),
            width: ladder::width_for_height(rung.height, info.display_aspect),
            height: rung.height,
            video_bitrate: rung.video_bitrate,
            dir: writer.dir().to_path_buf(),
        });
        writers.push(writer);
    }
    let plan = PipelinePlan {
        source: config.source.clone(),
        info: info.clone(),
        rungs: plans,
        format: config.format,
        segment_duration: config.segment_duration,
        preset: config.preset.clone().unwrap_or_else(|| default_preset(&config.source).to_string()),
    };
    if config.encrypt && config.format == Format::Fmp4 {
        tracing::warn!(
            "AES-128 fMP4 follows RFC 8216 (clear init segment), but GStreamer 1.22's HLS demuxers \
             cannot play it (they decrypt the init segment too); use --format ts for GStreamer players"
        );
    }
    let built = pipeline::build(&plan)?;
    let mut job = Job { config, plan: &plan, writers, master_written: false };
    let result = job.run(&built, progress);
    let _ = built.pipeline.set_state(gst::State::Null);
    if let Err(error) = result.and_then(|()| job.finish(&built, progress)) {
        for writer in &job.writers {
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
    Ok(Summary {
        master: master_path,
        renditions,
        skipped: skipped.into_iter().map(|r| r.name).collect(),
        wall_seconds: started.elapsed().as_secs_f64(),
    })
}

struct Job<'a> {
    config: &'a PackageConfig,
    plan: &'a PipelinePlan,
    writers: Vec<RenditionWriter>,
    master_written: bool,
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
        };
        let index = self.writers[rung].written().len();
        let duration = built.timelines[rung].lock().ok().and_then(|t| t.segment_duration(index)).ok_or_else(|| {
            PackageError::Misaligned(format!(
                "rendition {} produced segment {index} without a keyframe to start it",
                self.writers[rung].name
            ))
        })?;
        let writer = &mut self.writers[rung];
        writer
            .add_segment(&bytes, duration)
            .map_err(|source| PackageError::Output { path: writer.dir().to_path_buf(), source })?;
        // Live: once every rendition has a playlist, the master can point at them.
        if self.config.live_window.is_some()
            && !self.master_written
            && self.writers.iter().all(|w| !w.written().is_empty())
        {
            self.write_master(built, false)?;
            self.master_written = true;
            progress(Progress::MasterWritten);
        }
        Ok(())
    }

    /// Checks the renditions line up, writes the final media playlists, then the master.
    fn finish(&mut self, built: &Built, progress: &mut dyn FnMut(Progress)) -> Result<(), PackageError> {
        let counts: Vec<usize> = self.writers.iter().map(|w| w.written().len()).collect();
        if counts.iter().any(|c| *c != counts[0]) || counts[0] == 0 {
            let detail: Vec<String> =
                self.writers.iter().map(|w| format!("{}: {}", w.name, w.written().len())).collect();
            return Err(PackageError::Misaligned(format!("segment counts differ or are zero ({})", detail.join(", "))));
        }
        for writer in &self.writers {
            writer
                .write_playlist(true)
                .map_err(|source| PackageError::Output { path: writer.dir().join(MEDIA_PLAYLIST), source })?;
        }
        self.write_master(built, true)?;
        progress(Progress::MasterWritten);
        Ok(())
    }

    fn variants(&self, sps: &[Option<[u8; 3]>], measured: bool) -> Vec<VariantInfo> {
        self.writers
            .iter()
            .zip(&self.plan.rungs)
            .zip(sps)
            .map(|((writer, rung), sps)| {
                let bitrates = if measured {
                    playlist::measure_bitrates(writer.written(), self.config.segment_duration)
                } else {
                    // Live: nothing is measured yet; advertise the target plus audio and ~10 %
                    // container overhead.
                    let nominal = (rung.video_bitrate + u64::from(pipeline::AUDIO_BITRATE)) * 11 / 10;
                    Bitrates { average: nominal, peak: nominal }
                };
                // x264's default for these presets is High profile; used only if no SPS was seen.
                let video = codecs::avc1(sps.unwrap_or([0x64, 0x00, 0x1f]));
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
        let master = playlist::master_playlist(
            &self.variants(sps, measured),
            playlist::protocol_version(&MediaOptions {
                init_uri: (self.config.format == Format::Fmp4).then(String::new),
                key_uri: None,
                nominal_duration: self.config.segment_duration,
            }),
        );
        let path = self.config.out_dir.join(MASTER_PLAYLIST);
        playlist::write_atomically(&path, &playlist::render_master(&master))
            .map_err(|source| PackageError::Output { path, source })
    }
}
