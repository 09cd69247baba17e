//! The `--events` JSON-lines format: one [`EventRecord`] per line, flushed as it happens, so a reader
//! can follow a playback live and a recorded session can be replayed through the ABR
//! (`crate::sim::replay`). This is a public format: fields are added, never renamed or removed. The
//! README documents it.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::abr::history::{DecisionPoint, Download};

/// One line of the file: the event, when it happened (seconds since the player started, rounded to
/// the millisecond) and the wall-clock time (Unix milliseconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    #[serde(flatten)]
    pub event: Event,
    pub t_s: f64,
    pub unix_ms: u64,
}

/// What happened. Serialised with its kind in the `event` field (`"event": "segment"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Once, before the first decision: the ladder the ABR chooses from (ascending bitrate, after
    /// `--max-bitrate`, `--max-height` and `--rendition`).
    Start { url: String, ladder: Vec<LadderRung>, max_rung: usize },
    /// An ABR decision for the segment `index`, with everything it was given besides the history
    /// of downloads (which the `segment` events carry).
    Decision { index: u64, rung: usize, rendition: usize, estimate_bps: f64, at: DecisionPoint },
    /// A segment downloaded and pushed into the pipeline.
    Segment {
        index: u64,
        rendition: usize,
        bitrate_bps: u64,
        bytes: u64,
        download_ms: u64,
        /// A download of this segment at a higher rendition was abandoned first.
        abandoned: bool,
        estimate_bps: f64,
        buffer_s: f64,
        /// The transfer as the ABR recorded it (seconds since the player started).
        download: Download,
        /// The segment's `EXT-X-PROGRAM-DATE-TIME` (RFC 3339), tagged or carried from an earlier tag
        /// (for a part: the date of its first frame).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        program_date_time: Option<String>,
        /// Low-latency live: this is part `part` of segment `index` (draft-pantos-hls-rfc8216bis
        /// §4.4.4.9), fetched alone.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        part: Option<u64>,
        /// The live latency measured last (wall clock minus the date of the frame playing), when
        /// the stream is dated.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        live_latency_s: Option<f64>,
    },
    /// A live media playlist reload: `blocking` when it asked the server to hold it until segment
    /// `msn` (part `part`) is listed (draft-pantos-hls-rfc8216bis §6.2.5.2), instead of polling.
    Reload {
        rendition: usize,
        blocking: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        msn: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        part: Option<u64>,
        /// How long the request took (the server's hold included).
        wait_ms: u64,
    },
    /// An `EXT-X-GAP` segment: not fetched; playback runs on through the gap's duration without
    /// counting it as a stall.
    Gap {
        index: u64,
        duration_s: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        program_date_time: Option<String>,
    },
    /// Once, before the first audio segment: the separate audio rendition (`EXT-X-MEDIA`) that plays.
    Audio {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        language: Option<String>,
        uri: String,
    },
    /// A segment of the separate audio rendition downloaded and pushed into the pipeline.
    AudioSegment {
        index: u64,
        bytes: u64,
        download_ms: u64,
        /// Audio buffered ahead after the push.
        buffer_s: f64,
        /// Low-latency live: this is part `part` of segment `index`, fetched alone.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        part: Option<u64>,
    },
    /// The video sink received a new window title (the URL and the rendition playing): at the first
    /// frame and after each switch. A window shows it; headless, the sink receives it all the same.
    Title { title: String },
    /// A cue of the subtitle rendition (`EXT-X-MEDIA:TYPE=SUBTITLES`), once, when its segment is
    /// fetched (ahead of playback), whether or not subtitles are shown. Times are media time: seconds
    /// from the start of the stream (of the playback, for a live stream), to the millisecond.
    Subtitle {
        start_s: f64,
        end_s: f64,
        /// The cue's text without its tags; lines joined by `\n`.
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        language: Option<String>,
    },
    /// The overlay's text changed (`--subs`, or `s`): the cue shown from `position_s` (media time, as
    /// `subtitle`'s), or nothing.
    SubtitleShown { text: Option<String>, position_s: f64 },
    /// A download abandoned for a lower rendition.
    Abandon { index: u64, rendition: usize, to_rendition: usize, bytes: u64, buffer_s: f64 },
    /// Playback started.
    Playing { startup_ms: u64 },
    /// The buffer ran dry: playback paused.
    Stall { played_s: f64 },
    /// Playback resumed after a stall.
    Resume { buffer_s: f64, total_stall_ms: u64 },
    /// Paused from the keyboard, at `played_s` of playback.
    Paused { played_s: f64 },
    /// Resumed from the keyboard.
    Unpaused { played_s: f64 },
    /// A seek, from and to a position on the stream's timeline (media seconds); `to_s` is the start
    /// of the segment playback resumes from.
    Seek { from_s: f64, to_s: f64 },
    /// A rung pinned from the keyboard (`None`: back to the ABR's choice).
    Pin { rung: Option<usize> },
    /// Playback ended.
    End {
        reason: EndReason,
        /// What failed, for `reason = "failed"`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        qoe_lin: f64,
    },
}

/// A rung of the ladder in the `start` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LadderRung {
    /// Index of the variant in the master playlist as listed.
    pub rendition: usize,
    pub bitrate_bps: u64,
    pub height: Option<u64>,
}

/// Why playback ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The stream's last segment played.
    EndOfStream,
    /// `--duration` seconds played.
    DurationReached,
    /// Ctrl-C.
    Interrupted,
    /// `q` at the keyboard.
    Quit,
    /// The pipeline or the stream failed.
    Failed,
}

/// Streams [`EventRecord`]s as JSON lines, flushing each. A write error is logged once and turns
/// the log off: playback matters more than its log.
pub struct EventWriter {
    file: Option<std::io::BufWriter<std::fs::File>>,
}

impl EventWriter {
    pub fn create(path: Option<&Path>) -> std::io::Result<Self> {
        let file = match path {
            Some(path) => Some(std::io::BufWriter::new(std::fs::File::create(path)?)),
            None => None,
        };
        Ok(Self { file })
    }

    pub fn write(&mut self, record: &EventRecord) {
        if let Some(file) = &mut self.file {
            let result = serde_json::to_writer(&mut *file, record)
                .map_err(std::io::Error::other)
                .and_then(|()| file.write_all(b"\n"))
                .and_then(|()| file.flush());
            if let Err(e) = result {
                tracing::warn!("cannot write the event log: {e}");
                self.file = None;
            }
        }
    }
}

/// Reads an `--events` file. An unreadable line is an error naming its line number.
pub fn read(text: &str) -> Result<Vec<EventRecord>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(number, line)| serde_json::from_str(line).map_err(|e| format!("line {}: {e}", number + 1)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abr::history::Upcoming;

    #[test]
    fn every_event_reads_back_as_written() {
        let download =
            Download { rung: 1, request_s: 0.1, first_byte_s: 0.123_456_789, end_s: 1.5, bytes: 1234, media_s: 2.0 };
        let at = DecisionPoint {
            now_s: 1.0 / 3.0,
            buffer_s: 0.0,
            buffer_target_s: 30.0,
            upcoming: Upcoming { duration_s: 2.0, listed_after_s: 10.0, ended: true },
        };
        let events = vec![
            Event::Start {
                url: "http://h/m.m3u8".into(),
                ladder: vec![LadderRung { rendition: 2, bitrate_bps: 1, height: None }],
                max_rung: 0,
            },
            Event::Decision { index: 3, rung: 0, rendition: 2, estimate_bps: 5e5, at },
            Event::Segment {
                index: 3,
                rendition: 2,
                bitrate_bps: 800_000,
                bytes: 1234,
                download_ms: 1400,
                abandoned: false,
                estimate_bps: 1e6,
                buffer_s: 2.0,
                download,
                program_date_time: Some("2026-12-01T10:00:02.000Z".into()),
                part: Some(2),
                live_latency_s: Some(2.5),
            },
            Event::Reload { rendition: 2, blocking: true, msn: Some(4), part: Some(1), wait_ms: 480 },
            Event::Reload { rendition: 2, blocking: false, msn: None, part: None, wait_ms: 3 },
            Event::Abandon { index: 4, rendition: 2, to_rendition: 0, bytes: 10, buffer_s: 1.0 },
            Event::Subtitle { start_s: 0.5, end_s: 1.5, text: "Hello\nthere".into(), language: Some("en".into()) },
            Event::Subtitle { start_s: 2.0, end_s: 3.0, text: String::new(), language: None },
            Event::AudioSegment { index: 3, bytes: 10, download_ms: 2, buffer_s: 1.0, part: Some(1) },
            Event::AudioSegment { index: 4, bytes: 10, download_ms: 2, buffer_s: 1.0, part: None },
            Event::SubtitleShown { text: Some("Hello".into()), position_s: 0.5 },
            Event::SubtitleShown { text: None, position_s: 1.5 },
            Event::Title { title: "eddy-play · http://x/master.m3u8 · 1280×720 · 2500 kb/s".into() },
            Event::Playing { startup_ms: 10 },
            Event::Stall { played_s: 3.0 },
            Event::Resume { buffer_s: 1.0, total_stall_ms: 400 },
            Event::End { reason: EndReason::Failed, error: Some("decoder".into()), qoe_lin: -1.0 },
            Event::End { reason: EndReason::EndOfStream, error: None, qoe_lin: 1.0 },
        ];
        let text: String = events
            .iter()
            .map(|event| {
                let record = EventRecord { event: event.clone(), t_s: 1.5, unix_ms: 7 };
                serde_json::to_string(&record).unwrap_or_default() + "\n"
            })
            .collect();
        assert!(text.starts_with("{\"event\":\"start\""), "{text}");
        assert!(text.contains("\"reason\":\"end_of_stream\""), "{text}");
        let read = read(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read.into_iter().map(|r| r.event).collect::<Vec<_>>(), events, "times survive exactly");
    }

    #[test]
    fn an_unreadable_line_is_named() {
        let error = read("{\"event\":\"playing\",\"startup_ms\":1,\"t_s\":0,\"unix_ms\":0}\nnot json\n")
            .err()
            .unwrap_or_default();
        assert!(error.starts_with("line 2:"), "{error}");
    }
}
