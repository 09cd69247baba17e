//! What a playback produced: the QoE report (JSON), the human summary and the SVG timeline. (The
//! event stream is `crate::events`.)

use std::path::Path;

use serde::Serialize;

use crate::qoe;

/// One played segment.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SegmentRecord {
    /// Media sequence number (position in the playlist for VOD starting at 0).
    pub index: u64,
    /// Index of the variant in the master playlist as listed (0 for a media playlist alone).
    pub rendition: usize,
    pub bitrate_bps: u64,
    pub bytes: u64,
    pub download_ms: u64,
    /// A download of this segment at a higher rendition was abandoned before this one.
    pub abandoned: bool,
    /// Seconds of media.
    pub duration_s: f64,
    /// Low-latency live: the segment was fetched as this many parts (`bytes`, `download_ms` and
    /// `duration_s` are their sums; a segment joined part-way counts only the parts played).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<u32>,
}

/// The median and 95th percentile of a series.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles, rounded to the millisecond; `None` for no sample.
    pub fn of(samples: &[f64]) -> Option<Percentiles> {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let index = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
            (sorted[index] * 1000.0).round() / 1000.0
        };
        Some(Percentiles { p50: rank(0.50), p95: rank(0.95) })
    }
}

/// The `--report` JSON.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub url: String,
    pub startup_ms: u64,
    pub played_s: f64,
    pub stall_count: u32,
    pub stall_ms: u64,
    /// Stall time / played time.
    pub rebuffer_ratio: f64,
    /// Mean of the played segments' bitrates, weighted by segment duration.
    pub avg_bitrate_bps: u64,
    pub switches: usize,
    /// All bytes fetched, abandoned downloads and playlists included.
    pub bytes: u64,
    pub qoe_lin: f64,
    pub abandoned_downloads: u32,
    pub interrupted: bool,
    /// Seconds of decoded audio that reached the audio sink (0 for a stream without audio, or one
    /// whose audio never played).
    pub audio_played_s: f64,
    /// Live streams with EXT-X-PROGRAM-DATE-TIME: how far behind capture the media playing was
    /// (wall clock minus the date of the frame on screen), sampled while playing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_latency_s: Option<Percentiles>,
    pub segments: Vec<SegmentRecord>,
}

/// What [`Report::build`] summarises.
#[derive(Debug, Clone, PartialEq)]
pub struct PlaybackTotals {
    pub url: String,
    pub startup_ms: u64,
    pub played_s: f64,
    pub stall_count: u32,
    pub stall_s: f64,
    /// All bytes fetched.
    pub bytes: u64,
    pub abandoned_downloads: u32,
    pub interrupted: bool,
    pub audio_played_s: f64,
    /// Live latency samples (seconds).
    pub latency_samples: Vec<f64>,
    /// The segments that (at least partly) played, in order.
    pub segments: Vec<SegmentRecord>,
}

impl Report {
    pub fn build(totals: PlaybackTotals) -> Self {
        let PlaybackTotals {
            url,
            startup_ms,
            played_s,
            stall_count,
            stall_s,
            bytes,
            abandoned_downloads,
            interrupted,
            audio_played_s,
            latency_samples,
            segments,
        } = totals;
        let bitrates: Vec<u64> = segments.iter().map(|s| s.bitrate_bps).collect();
        let total_duration: f64 = segments.iter().map(|s| s.duration_s).sum();
        let weighted: f64 = segments.iter().map(|s| s.bitrate_bps as f64 * s.duration_s).sum();
        Report {
            url,
            startup_ms,
            played_s,
            stall_count,
            stall_ms: (stall_s * 1000.0).round() as u64,
            rebuffer_ratio: if played_s > 0.0 { stall_s / played_s } else { 0.0 },
            avg_bitrate_bps: if total_duration > 0.0 { (weighted / total_duration).round() as u64 } else { 0 },
            switches: qoe::switch_count(&bitrates),
            bytes,
            qoe_lin: qoe::qoe_lin(&bitrates, stall_s),
            abandoned_downloads,
            interrupted,
            audio_played_s: (audio_played_s * 1000.0).round() / 1000.0,
            live_latency_s: Percentiles::of(&latency_samples),
            segments,
        }
    }

    /// The summary printed on stdout at the end.
    pub fn summary(&self) -> String {
        format!(
            "eddy-play: played {:.1} s | startup {} ms | stalls {} ({} ms, rebuffer {:.1}%) | avg bitrate {} kbps | switches {} | abandoned {} | fetched {} | QoE_lin {:.2}",
            self.played_s,
            self.startup_ms,
            self.stall_count,
            self.stall_ms,
            self.rebuffer_ratio * 100.0,
            self.avg_bitrate_bps / 1000,
            self.switches,
            self.abandoned_downloads,
            eddy_shared::size::format_size(self.bytes),
            self.qoe_lin,
        )
    }
}

/// Writes `contents` to `path` through a temporary file and a rename, so a failure leaves no partial
/// file behind.
pub fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let file_name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let temporary = path.with_file_name(format!(".{file_name}.tmp{}", std::process::id()));
    let result = std::fs::write(&temporary, contents).and_then(|()| std::fs::rename(&temporary, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

/// One point of the timeline drawn by `--plot`.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct TimelinePoint {
    pub t_s: f64,
    pub estimate_bps: f64,
    pub bitrate_bps: f64,
    pub buffer_s: f64,
}

/// Draws the timeline as SVG: bandwidth estimate and chosen bitrate (Mbps, left axis) and buffer level
/// (seconds, right axis) over time.
pub fn plot_timeline(path: &Path, points: &[TimelinePoint]) -> Result<(), String> {
    use plotters::prelude::*;
    let t_max = points.last().map_or(1.0, |p| p.t_s).max(1.0);
    // The estimate can dwarf the bitrates on a fast link: it is clipped at 3× the highest bitrate.
    let bitrate_max = points.iter().map(|p| p.bitrate_bps / 1e6).fold(0.1f64, f64::max);
    let estimate_max = points.iter().map(|p| p.estimate_bps / 1e6).fold(0.0f64, f64::max);
    let mbps_max = estimate_max.max(bitrate_max).min(3.0 * bitrate_max) * 1.1;
    let buffer_max = points.iter().map(|p| p.buffer_s).fold(1.0f64, f64::max) * 1.1;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .margin(20)
            .set_label_area_size(LabelAreaPosition::Left, 40)
            .set_label_area_size(LabelAreaPosition::Right, 40)
            .set_label_area_size(LabelAreaPosition::Bottom, 30)
            .build_cartesian_2d(0.0..t_max, 0.0..mbps_max)
            .map_err(|e| e.to_string())?
            .set_secondary_coord(0.0..t_max, 0.0..buffer_max);
        chart.configure_mesh().disable_mesh().draw().map_err(|e| e.to_string())?;
        chart.configure_secondary_axes().draw().map_err(|e| e.to_string())?;
        let estimate = points.iter().map(|p| (p.t_s, (p.estimate_bps / 1e6).min(mbps_max)));
        chart.draw_series(LineSeries::new(estimate, &BLUE)).map_err(|e| e.to_string())?;
        let bitrate = points.iter().map(|p| (p.t_s, p.bitrate_bps / 1e6));
        chart.draw_series(LineSeries::new(bitrate, RED.stroke_width(2))).map_err(|e| e.to_string())?;
        let buffer = points.iter().map(|p| (p.t_s, p.buffer_s));
        chart.draw_secondary_series(LineSeries::new(buffer, &GREEN)).map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    // Titles, legend and axis ranges as plain SVG text (plotters' own text needs font features).
    let labels = format!(
        "<g font-family=\"sans-serif\" font-size=\"13\">\n\
         <text x=\"480\" y=\"16\" text-anchor=\"middle\">eddy-play timeline</text>\n\
         <text x=\"70\" y=\"16\" fill=\"blue\">bandwidth estimate (Mbps)</text>\n\
         <text x=\"260\" y=\"16\" fill=\"red\">chosen bitrate (Mbps)</text>\n\
         <text x=\"700\" y=\"16\" fill=\"green\">buffer (s, right axis)</text>\n\
         <text x=\"4\" y=\"30\">{mbps_max:.1} Mbps</text>\n\
         <text x=\"956\" y=\"30\" text-anchor=\"end\">{buffer_max:.1} s</text>\n\
         <text x=\"60\" y=\"476\">0 s</text>\n\
         <text x=\"900\" y=\"476\" text-anchor=\"end\">{t_max:.1} s</text>\n</g>\n</svg>"
    );
    let svg = match svg.rfind("</svg>") {
        Some(end) => format!("{}{labels}", &svg[..end]),
        None => svg,
    };
    write_atomically(path, svg.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(index: u64, bitrate_bps: u64) -> SegmentRecord {
        SegmentRecord {
            index,
            rendition: 0,
            bitrate_bps,
            bytes: 1000,
            download_ms: 10,
            abandoned: false,
            duration_s: 2.0,
            parts: None,
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        assert_eq!(Percentiles::of(&[]), None);
        let samples: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(Percentiles::of(&samples), Some(Percentiles { p50: 50.0, p95: 95.0 }));
        assert_eq!(Percentiles::of(&[2.5, f64::NAN]), Some(Percentiles { p50: 2.5, p95: 2.5 }));
    }

    #[test]
    fn report_fields_follow_the_segments() {
        let segments = vec![segment(0, 1_000_000), segment(1, 3_000_000), segment(2, 3_000_000)];
        let report = Report::build(PlaybackTotals {
            url: "u".into(),
            startup_ms: 100,
            played_s: 6.0,
            stall_count: 1,
            stall_s: 0.5,
            bytes: 5000,
            abandoned_downloads: 0,
            interrupted: false,
            audio_played_s: 0.0,
            latency_samples: Vec::new(),
            segments,
        });
        assert_eq!(report.switches, 1);
        assert_eq!(report.stall_ms, 500);
        assert!((report.rebuffer_ratio - 0.5 / 6.0).abs() < 1e-9);
        assert_eq!(report.avg_bitrate_bps, 2_333_333);
        assert!((report.qoe_lin - (7.0 - 2.15 - 2.0)).abs() < 1e-9);
        let json = serde_json::to_value(&report).unwrap_or_default();
        for key in [
            "startup_ms",
            "played_s",
            "stall_count",
            "stall_ms",
            "rebuffer_ratio",
            "avg_bitrate_bps",
            "switches",
            "bytes",
            "qoe_lin",
            "segments",
        ] {
            assert!(json.get(key).is_some(), "{key} missing");
        }
        assert_eq!(json["segments"][0]["abandoned"], false);
    }
}
