//! Bandwidth estimation from the segment transfers themselves. Pure: every sample carries its own
//! timestamps (seconds on any monotonic scale), so the estimator is tested and simulated without a clock.
//!
//! # Method (why each piece is there; sources below)
//! - Two time-weighted EWMAs of transfer throughput, a fast one (half-life [`FAST_HALF_LIFE_S`] = 3 s)
//!   and a slow one (half-life [`SLOW_HALF_LIFE_S`] = 9 s), as hls.js does; each sample weighs its
//!   transfer duration in seconds, so a long transfer says more than a short one. The estimate is the
//!   more cautious (smaller) of the two: a drop is seen through the fast average at once, a recovery
//!   only once the slow average agrees, which damps up/down oscillation.
//! - Time to first byte is kept apart (its own EWMA) and excluded from the throughput samples: on small
//!   segments latency would otherwise be counted as transfer time and under-estimate the link (the most
//!   reported ABR complaint). The ABR adds TTFB back when it predicts a download time.
//! - Transfers whose body arrived in under [`CACHED_TRANSFER_S`] (10 ms) are implausibly fast for the
//!   path to the origin (served from a nearby cache, as dash.js and Shaka guard against): they are
//!   ignored once real samples exist. While only such samples have been seen (an unthrottled loopback
//!   link), their duration is floored at 10 ms, so the estimate is high but finite.
//! - A download in progress counts: [`BandwidthEstimator::estimate_bps`] takes the minimum with the
//!   partial throughput of the current transfer after [`PARTIAL_MIN_ELAPSED_S`], so a collapse is seen
//!   before the segment finishes (needed for abandonment and the next decision).
//! - Before any sample, the estimate is [`DEFAULT_ESTIMATE_BPS`] (500 kbps, hls.js' default): a
//!   conservative start that ramps up after the first segment.
//!
//! # Sources
//! - hls.js, `src/utils/ewma-bandwidth-estimator.ts`: two EWMAs, each sample weighted by its transfer
//!   seconds, the estimate the smaller of the two, and a separate time-to-first-byte EWMA;
//!   `src/config.ts`: the half-lives (`abrEwmaFastVoD` 3 s, `abrEwmaSlowVoD` 9 s) and the default
//!   estimate (`abrEwmaDefaultEstimate`, 500 kbps); `src/controller/abr-controller.ts`: the first-byte
//!   time taken out of each throughput sample.
//! - Samples from a cache: dash.js, `src/streaming/models/ThroughputModel.js` (`_isCachedResponse`,
//!   thresholds `cacheLoadThresholds` in `src/core/Settings.js`); Shaka Player,
//!   `lib/abr/simple_abr_manager.js` (`cacheLoadThreshold`).

/// Half-life of the fast average, in seconds of transfer time (hls.js: 3 s).
pub const FAST_HALF_LIFE_S: f64 = 3.0;
/// Half-life of the slow average, in seconds of transfer time (hls.js: 9 s).
pub const SLOW_HALF_LIFE_S: f64 = 9.0;
/// Estimate used before the first sample (hls.js: 500 kbps).
pub const DEFAULT_ESTIMATE_BPS: f64 = 500_000.0;
/// Transfers shorter than this are "from a nearby cache" (dash.js/Shaka ignore samples under ~5–10 ms).
pub const CACHED_TRANSFER_S: f64 = 0.010;
/// A download in progress is taken into account once its body has flowed (or been awaited) this long.
pub const PARTIAL_MIN_ELAPSED_S: f64 = 0.25;
/// Half-life of the time-to-first-byte average, in samples-as-seconds (one sample weighs 1).
const TTFB_HALF_LIFE: f64 = 3.0;

/// One finished transfer. Times are seconds on the caller's monotonic scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TransferSample {
    /// When the request was sent.
    pub request_s: f64,
    /// When the first byte of the body arrived.
    pub first_byte_s: f64,
    /// When the last byte arrived.
    pub end_s: f64,
    /// Body bytes.
    pub bytes: u64,
}

/// A transfer still in progress.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PartialTransfer {
    pub request_s: f64,
    /// `None` while no byte has arrived yet.
    pub first_byte_s: Option<f64>,
    pub bytes_so_far: u64,
}

/// Exponentially weighted moving average where each sample has a weight (seconds), with the
/// zero-start bias removed so the first samples are not dragged towards zero.
#[derive(Debug, Clone)]
struct Ewma {
    alpha: f64,
    value: f64,
    total_weight: f64,
}

impl Ewma {
    fn new(half_life: f64) -> Self {
        Self { alpha: (0.5f64.ln() / half_life).exp(), value: 0.0, total_weight: 0.0 }
    }

    fn add(&mut self, weight: f64, sample: f64) {
        let adjusted = self.alpha.powf(weight);
        self.value = sample * (1.0 - adjusted) + adjusted * self.value;
        self.total_weight += weight;
    }

    fn get(&self) -> Option<f64> {
        if self.total_weight <= 0.0 {
            return None;
        }
        let zero_factor = 1.0 - self.alpha.powf(self.total_weight);
        Some(self.value / zero_factor)
    }
}

/// The player's bandwidth estimator (see the module documentation for the method).
#[derive(Debug, Clone)]
pub struct BandwidthEstimator {
    fast: Ewma,
    slow: Ewma,
    /// Averages fed only by cached-looking transfers; used while no real sample exists.
    cached_only: Ewma,
    ttfb: Ewma,
    in_progress: Option<PartialTransfer>,
    default_bps: f64,
}

impl Default for BandwidthEstimator {
    fn default() -> Self {
        Self::new(DEFAULT_ESTIMATE_BPS)
    }
}

impl BandwidthEstimator {
    pub fn new(default_bps: f64) -> Self {
        Self {
            fast: Ewma::new(FAST_HALF_LIFE_S),
            slow: Ewma::new(SLOW_HALF_LIFE_S),
            cached_only: Ewma::new(FAST_HALF_LIFE_S),
            ttfb: Ewma::new(TTFB_HALF_LIFE),
            in_progress: None,
            default_bps,
        }
    }

    /// Records a finished transfer (and clears the in-progress one).
    pub fn add_transfer(&mut self, sample: TransferSample) {
        self.in_progress = None;
        let ttfb = (sample.first_byte_s - sample.request_s).max(0.0);
        self.ttfb.add(1.0, ttfb);
        let transfer_s = (sample.end_s - sample.first_byte_s).max(0.0);
        if sample.bytes == 0 {
            return;
        }
        let bits = sample.bytes as f64 * 8.0;
        if transfer_s < CACHED_TRANSFER_S {
            self.cached_only.add(CACHED_TRANSFER_S, bits / CACHED_TRANSFER_S);
            return;
        }
        let bps = bits / transfer_s;
        self.fast.add(transfer_s, bps);
        self.slow.add(transfer_s, bps);
    }

    /// Updates (or starts) the in-progress transfer.
    pub fn set_in_progress(&mut self, partial: PartialTransfer) {
        self.in_progress = Some(partial);
    }

    /// Forgets the in-progress transfer (abandoned or failed).
    pub fn clear_in_progress(&mut self) {
        self.in_progress = None;
    }

    /// Whether at least one real (not cached-looking) transfer has been measured.
    pub fn has_real_samples(&self) -> bool {
        self.fast.total_weight > 0.0
    }

    /// The estimate from finished transfers only: min(fast, slow), or the cached-only average, or the
    /// default.
    pub fn settled_estimate_bps(&self) -> f64 {
        match (self.fast.get(), self.slow.get()) {
            (Some(fast), Some(slow)) => fast.min(slow),
            _ => self.cached_only.get().unwrap_or(self.default_bps),
        }
    }

    /// The estimate at time `now_s`: the settled estimate, lowered by the partial throughput of a
    /// download in progress once it has run [`PARTIAL_MIN_ELAPSED_S`].
    pub fn estimate_bps(&self, now_s: f64) -> f64 {
        let settled = self.settled_estimate_bps();
        match self.partial_bps(now_s) {
            Some(partial) => settled.min(partial),
            None => settled,
        }
    }

    /// Throughput of the download in progress so far, if it has run long enough to say anything.
    /// Before the first byte, the wait itself (beyond the usual TTFB) counts as zero-throughput time.
    pub fn partial_bps(&self, now_s: f64) -> Option<f64> {
        let partial = self.in_progress?;
        let (since, bytes) = match partial.first_byte_s {
            Some(first) => (first, partial.bytes_so_far),
            None => (partial.request_s + self.ttfb_s(), 0),
        };
        let elapsed = now_s - since;
        if elapsed < PARTIAL_MIN_ELAPSED_S {
            return None;
        }
        Some(bytes as f64 * 8.0 / elapsed)
    }

    /// Average time to first byte (0 before any sample).
    pub fn ttfb_s(&self) -> f64 {
        self.ttfb.get().unwrap_or(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A transfer of `bps` for `seconds` starting at `t`, with `ttfb` latency.
    fn transfer(t: f64, ttfb: f64, seconds: f64, bps: f64) -> TransferSample {
        TransferSample {
            request_s: t,
            first_byte_s: t + ttfb,
            end_s: t + ttfb + seconds,
            bytes: (bps * seconds / 8.0) as u64,
        }
    }

    #[test]
    fn default_before_any_sample() {
        let estimator = BandwidthEstimator::default();
        assert_eq!(estimator.estimate_bps(0.0), DEFAULT_ESTIMATE_BPS);
    }

    #[test]
    fn steady_link_converges_to_its_rate() {
        let mut estimator = BandwidthEstimator::default();
        for i in 0..10 {
            estimator.add_transfer(transfer(i as f64 * 2.0, 0.05, 1.0, 4_000_000.0));
        }
        let estimate = estimator.estimate_bps(100.0);
        assert!((estimate - 4_000_000.0).abs() < 40_000.0, "{estimate}");
    }

    #[test]
    fn latency_is_not_counted_as_transfer_time() {
        let mut estimator = BandwidthEstimator::default();
        // Small segments behind 200 ms of latency: bodies flow at 5 Mbps for 0.1 s.
        for i in 0..5 {
            estimator.add_transfer(transfer(i as f64, 0.2, 0.1, 5_000_000.0));
        }
        assert!(estimator.estimate_bps(10.0) > 4_900_000.0);
        assert!((estimator.ttfb_s() - 0.2).abs() < 1e-9);
    }

    #[test]
    fn drop_is_seen_at_once_and_recovery_needs_the_slow_average() {
        let mut estimator = BandwidthEstimator::default();
        for i in 0..10 {
            estimator.add_transfer(transfer(i as f64, 0.0, 1.0, 4_000_000.0));
        }
        estimator.add_transfer(transfer(10.0, 0.0, 2.0, 500_000.0));
        let after_drop = estimator.estimate_bps(12.0);
        assert!(after_drop < 3_000_000.0, "fast average reacts: {after_drop}");
        estimator.add_transfer(transfer(12.0, 0.0, 0.5, 4_000_000.0));
        let after_one_good = estimator.estimate_bps(13.0);
        assert!(after_one_good < 3_600_000.0, "one good sample is not enough: {after_one_good}");
    }

    #[test]
    fn fast_cached_transfers_are_ignored_once_real_samples_exist() {
        let mut estimator = BandwidthEstimator::default();
        for i in 0..4 {
            estimator.add_transfer(transfer(i as f64, 0.02, 1.0, 2_000_000.0));
        }
        let before = estimator.estimate_bps(5.0);
        // 1 MB in 2 ms: a cache hit, 4 Gbps "measured".
        estimator.add_transfer(TransferSample { request_s: 5.0, first_byte_s: 5.001, end_s: 5.003, bytes: 1_000_000 });
        assert_eq!(estimator.estimate_bps(6.0), before);
    }

    #[test]
    fn only_cached_transfers_give_a_high_but_finite_estimate() {
        let mut estimator = BandwidthEstimator::default();
        estimator.add_transfer(TransferSample { request_s: 0.0, first_byte_s: 0.0005, end_s: 0.001, bytes: 100_000 });
        let estimate = estimator.estimate_bps(1.0);
        assert!((estimate - 80_000_000.0).abs() < 1.0, "{estimate}");
    }

    #[test]
    fn partial_throughput_reveals_a_collapse_before_the_download_ends() {
        let mut estimator = BandwidthEstimator::default();
        for i in 0..5 {
            estimator.add_transfer(transfer(i as f64, 0.0, 1.0, 4_000_000.0));
        }
        estimator.set_in_progress(PartialTransfer { request_s: 10.0, first_byte_s: Some(10.0), bytes_so_far: 25_000 });
        // 200 kbps so far over one second.
        let estimate = estimator.estimate_bps(11.0);
        assert!((estimate - 200_000.0).abs() < 1.0, "{estimate}");
        // Too early to say anything.
        assert!(estimator.estimate_bps(10.1) > 3_000_000.0);
        estimator.clear_in_progress();
        assert!(estimator.estimate_bps(11.0) > 3_000_000.0);
    }

    #[test]
    fn no_first_byte_for_long_means_zero_throughput() {
        let mut estimator = BandwidthEstimator::default();
        estimator.add_transfer(transfer(0.0, 0.1, 1.0, 4_000_000.0));
        estimator.set_in_progress(PartialTransfer { request_s: 2.0, first_byte_s: None, bytes_so_far: 0 });
        assert_eq!(estimator.estimate_bps(3.0), 0.0);
    }
}
