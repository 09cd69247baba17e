//! Adaptive bitrate decisions. Everything here is pure: the inputs (bandwidth estimate, buffer level,
//! ladder, history) come in as values, a rung index goes out. No I/O and no clock, so the same code runs
//! in the real player (`crate::session`) and in the virtual-time simulator (`crate::sim`), both through
//! the one feedback loop in [`history`].

pub mod baselines;
pub mod eddy;
pub mod estimator;
pub mod history;
pub mod lookahead;

pub use eddy::EddyAbr;
pub use estimator::{BandwidthEstimator, PartialTransfer, TransferSample};

/// One rendition of the ladder as the ABR sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rung {
    /// Declared bitrate (EXT-X-STREAM-INF BANDWIDTH, or AVERAGE-BANDWIDTH when given).
    pub bitrate_bps: u64,
    /// Picture height, if the playlist declares a resolution.
    pub height: Option<u64>,
}

/// What an ABR decision knows. `ladder` is sorted by ascending bitrate; indices are ladder positions.
#[derive(Debug, Clone)]
pub struct AbrInput<'a> {
    pub ladder: &'a [Rung],
    /// Current bandwidth estimate (bits per second), already the cautious one.
    pub estimate_bps: f64,
    /// Average time to first byte (seconds), added to predicted download times.
    pub ttfb_s: f64,
    /// Media buffered ahead of the playback position (seconds).
    pub buffer_s: f64,
    /// The forward-buffer target (seconds); downloading pauses above it.
    pub buffer_target_s: f64,
    /// Duration of the next segment (seconds).
    pub segment_duration_s: f64,
    /// Rung of the previous segment (`None` for the first decision).
    pub current: Option<usize>,
    /// Highest rung allowed (after `--max-bitrate` / `--max-height`).
    pub max_rung: usize,
    /// Throughput of past segment downloads (bits per second), oldest first.
    pub past_throughputs_bps: &'a [f64],
    /// Media left after the next segment (seconds), when known (VOD); `None` for live.
    pub remaining_s: Option<f64>,
    /// The previous segment's (finished) download, `None` for the first decision.
    pub last_download: Option<LastDownload>,
}

/// The previous segment's download as the buffer lived it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LastDownload {
    /// Seconds from the request to the last byte.
    pub download_s: f64,
    /// Seconds of media it brought.
    pub media_s: f64,
    pub bytes: u64,
}

impl LastDownload {
    /// Throughput as the buffer saw it (first-byte latency included), bits per second.
    pub fn throughput_bps(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.download_s.max(1e-3)
    }
}

impl AbrInput<'_> {
    /// Predicted download time of the next segment at `rung` with the current estimate.
    pub fn download_time_s(&self, rung: usize) -> f64 {
        self.download_time_at(rung, self.estimate_bps)
    }

    /// Predicted download time of the next segment at `rung` if the link gives `bps`.
    pub fn download_time_at(&self, rung: usize, bps: f64) -> f64 {
        let bits = self.ladder[rung].bitrate_bps as f64 * self.segment_duration_s;
        self.ttfb_s + bits / bps.max(1.0)
    }

    /// Highest allowed rung whose bitrate is at most `bps` (rung 0 if none is).
    pub fn highest_at_most(&self, bps: f64) -> usize {
        let top = self.top();
        (0..=top).rev().find(|&r| self.ladder[r].bitrate_bps as f64 <= bps).unwrap_or(0)
    }

    /// Highest rung the caps allow.
    pub fn top(&self) -> usize {
        self.max_rung.min(self.ladder.len().saturating_sub(1))
    }
}

/// A download in progress, as the abandonment rule sees it.
#[derive(Debug, Clone)]
pub struct AbandonInput<'a> {
    pub ladder: &'a [Rung],
    /// Rung being downloaded.
    pub rung: usize,
    /// Seconds since the request was sent.
    pub elapsed_s: f64,
    pub bytes_done: u64,
    /// Expected size (Content-Length, or bitrate × duration when unknown).
    pub bytes_total: u64,
    /// Throughput of this download so far (bits per second), `None` until it means something.
    pub partial_bps: Option<f64>,
    pub ttfb_s: f64,
    /// Media buffered ahead of the playback position now (seconds).
    pub buffer_s: f64,
    pub segment_duration_s: f64,
}

/// An ABR algorithm as both the player and the simulator drive it.
pub trait AbrAlgorithm {
    /// Short name used in reports (`eddy`, `throughput`, `bba`, `bola`, `robustmpc`).
    fn name(&self) -> &'static str;
    /// The rung for the next segment.
    fn choose(&mut self, input: &AbrInput) -> usize;
    /// Whether to abandon the download in progress, and for which lower rung.
    fn abandon(&mut self, _input: &AbandonInput) -> Option<usize> {
        None
    }
}

/// The ladder of the ABR literature (300–4300 kbit/s), shared by the ABR unit tests.
#[cfg(test)]
pub(crate) fn test_ladder() -> Vec<Rung> {
    [300_000u64, 750_000, 1_200_000, 1_850_000, 2_850_000, 4_300_000]
        .iter()
        .map(|&b| Rung { bitrate_bps: b, height: None })
        .collect()
}
