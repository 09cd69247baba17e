//! Eddy's ABR rule: throughput with hysteresis while the buffer is low, buffer-aware once it is high,
//! plus abandonment of a download that would outlast the buffer.
//!
//! # Rules and why (facts from `shared/reference/abr.md`)
//! 1. **Start**: the first rung is the highest one under [`UP_SAFETY`] × estimate; the estimator's default
//!    is 500 kbps, so the start is conservative, and since one finished segment replaces the default
//!    with a measurement, the second decision can jump several rungs at once (quick ramp-up; "slow
//!    ramp-up at start" is a known complaint).
//! 2. **Down at once**: when the highest rung the estimate sustains with [`DOWN_SAFETY`] (0.9, dash.js'
//!    safety factor; hls.js uses 0.95) is below the current one, switch to it on this decision: stalls
//!    before a late downswitch are the other classic complaint. Exception: with a rich buffer (the
//!    download of the current rung would still leave [`DEFER_DOWN_BUFFER_S`] of media), the downswitch
//!    is deferred, as ExoPlayer defers with a buffer ≥ 25 s: a short dip is absorbed by the buffer
//!    instead of costing two switches.
//! 3. **Up with margin**: only to the highest rung under [`UP_SAFETY`] (0.7, as hls.js and ExoPlayer)
//!    × estimate. The 0.7 / 0.9 gap is the hysteresis that stops oscillation between two rungs when
//!    the link hovers around one rung's bitrate.
//! 4. **Buffer in the spirit of BOLA**: when the buffer is high (≥ [`RICH_BUFFER_FRACTION`] of the target),
//!    the buffer itself pays for quality: a rung one step above the throughput choice is allowed if its
//!    predicted download still leaves the rich level minus one segment in the buffer. Throughput alone
//!    would leave a full buffer unused.
//! 5. **Never plan a stall**: whatever rules 1–4 chose, step down while the predicted download time
//!    (TTFB + size / estimate) would eat the buffer below [`RESERVE_S`], or below half of it when
//!    the buffer is small (dash.js' insufficient-buffer rule). When even rung 0 cannot make it, rung 0 it is.
//! 6. **Abandon**: during a download, once the partial throughput is known, if the rest of the download
//!    would take longer than the buffer that is left, and re-fetching the same segment at a lower rung
//!    would finish sooner, abandon and fetch the highest lower rung that fits (hls.js abandons when
//!    finishing takes > 2× a lower level's fetch; dash.js at 1.8× the segment duration).

use super::{AbandonInput, AbrAlgorithm, AbrInput};

/// Fraction of the estimate a rung must fit under to stay on it (or be switched down to).
pub const DOWN_SAFETY: f64 = 0.9;
/// Fraction of the estimate a rung must fit under to be switched up to.
pub const UP_SAFETY: f64 = 0.7;
/// Seconds of buffer that a predicted download must leave behind.
pub const RESERVE_S: f64 = 2.0;
/// With this much buffer left after the download of the current rung, a downswitch waits.
pub const DEFER_DOWN_BUFFER_S: f64 = 16.0;
/// Fraction of the buffer target from which the buffer lets us go one rung above throughput.
pub const RICH_BUFFER_FRACTION: f64 = 0.6;
/// Abandonment is only considered after this much time in the download (a rate needs some data).
pub const ABANDON_MIN_ELAPSED_S: f64 = 0.5;

/// The pure, stateless-by-design Eddy rule (the struct exists to implement [`AbrAlgorithm`]).
#[derive(Debug, Clone, Default)]
pub struct EddyAbr;

impl EddyAbr {
    pub fn new() -> Self {
        Self
    }

    /// Rules 1–5 of the module documentation.
    pub fn decide(input: &AbrInput) -> usize {
        let top = input.top();
        let estimate = input.estimate_bps;
        let up = input.highest_at_most(UP_SAFETY * estimate);
        let Some(current) = input.current.map(|c| c.min(top)) else {
            return up;
        };
        let sustainable = input.highest_at_most(DOWN_SAFETY * estimate);
        let mut choice = if sustainable < current {
            let defer = input.buffer_s - input.download_time_s(current) >= DEFER_DOWN_BUFFER_S;
            if defer {
                current
            } else {
                sustainable
            }
        } else if up > current {
            up
        } else {
            current
        };
        let rich = RICH_BUFFER_FRACTION * input.buffer_target_s;
        if input.buffer_s >= rich && choice < top {
            let above = choice + 1;
            // Staying on a boosted rung needs one segment less buffer than reaching it: hysteresis.
            let floor = if above == current { rich - 2.0 * input.segment_duration_s } else { rich };
            if input.buffer_s - input.download_time_s(above) >= floor {
                choice = above;
            }
        }
        // With a small buffer (start-up, 1 s segments) half of it is the reserve.
        let reserve = RESERVE_S.min(input.buffer_s / 2.0);
        while choice > 0 && input.buffer_s - input.download_time_s(choice) < reserve {
            choice -= 1;
        }
        choice
    }

    /// Rule 6 of the module documentation.
    pub fn should_abandon(input: &AbandonInput) -> Option<usize> {
        if input.rung == 0 || input.elapsed_s < ABANDON_MIN_ELAPSED_S {
            return None;
        }
        let rate = input.partial_bps?;
        let remaining_bits = input.bytes_total.saturating_sub(input.bytes_done) as f64 * 8.0;
        let finish_s = remaining_bits / rate.max(1.0);
        if finish_s <= input.buffer_s {
            return None;
        }
        let refetch_s = |rung: usize| {
            input.ttfb_s + input.ladder[rung].bitrate_bps as f64 * input.segment_duration_s / rate.max(1.0)
        };
        if refetch_s(0) >= finish_s {
            return None;
        }
        let fitting = (0..input.rung).rev().find(|&r| refetch_s(r) <= input.buffer_s);
        Some(fitting.unwrap_or(0))
    }
}

impl AbrAlgorithm for EddyAbr {
    fn name(&self) -> &'static str {
        "eddy"
    }

    fn choose(&mut self, input: &AbrInput) -> usize {
        Self::decide(input)
    }

    fn abandon(&mut self, input: &AbandonInput) -> Option<usize> {
        Self::should_abandon(input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abr::{BandwidthEstimator, Rung, TransferSample};

    fn ladder() -> Vec<Rung> {
        [300_000u64, 750_000, 1_200_000, 1_850_000, 2_850_000, 4_300_000]
            .iter()
            .map(|&b| Rung { bitrate_bps: b, height: None })
            .collect()
    }

    /// A tiny closed loop: each segment (4 s) is downloaded at the link rate given for that segment,
    /// feeding the real estimator; returns the rung chosen for every segment.
    fn run(link_bps: &[f64]) -> Vec<usize> {
        let ladder = ladder();
        let mut estimator = BandwidthEstimator::default();
        let mut now = 0.0;
        let mut buffer: f64 = 0.0;
        let mut current = None;
        let mut chosen = Vec::new();
        for &link in link_bps {
            let input = AbrInput {
                ladder: &ladder,
                estimate_bps: estimator.estimate_bps(now),
                ttfb_s: estimator.ttfb_s(),
                buffer_s: buffer,
                buffer_target_s: 30.0,
                segment_duration_s: 4.0,
                current,
                max_rung: 5,
                past_throughputs_bps: &[],
            };
            let rung = EddyAbr::decide(&input);
            let seconds = ladder[rung].bitrate_bps as f64 * 4.0 / link;
            estimator.add_transfer(TransferSample {
                request_s: now,
                first_byte_s: now,
                end_s: now + seconds,
                bytes: ladder[rung].bitrate_bps / 2,
            });
            now += seconds;
            buffer = (buffer - seconds).max(0.0) + 4.0;
            // Wait while the buffer is above target, as the fetcher does.
            if buffer > 30.0 {
                now += buffer - 30.0;
                buffer = 30.0;
            }
            current = Some(rung);
            chosen.push(rung);
        }
        chosen
    }

    #[test]
    fn steady_high_bandwidth_reaches_the_top_and_stays() {
        let chosen = run(&[10_000_000.0; 20]);
        let first_top = chosen.iter().position(|&r| r == 5).expect("reaches the top rung");
        assert!(first_top <= 3, "{chosen:?}");
        assert!(chosen[first_top..].iter().all(|&r| r == 5), "{chosen:?}");
    }

    #[test]
    fn sudden_drop_switches_down_on_the_next_decision() {
        let mut link = vec![6_000_000.0; 6];
        link.extend([900_000.0; 6]);
        let chosen = run(&link);
        assert_eq!(chosen[5], 4, "{chosen:?}");
        // The drop happens during segment 6's download; segment 7 is already lower.
        assert!(chosen[7] < 4, "{chosen:?}");
        assert!(chosen[11] <= 1, "settles at what 900 kbps sustains: {chosen:?}");
    }

    #[test]
    fn recovery_switches_back_up_once_the_margin_is_there() {
        let mut link = vec![6_000_000.0; 6];
        link.extend([900_000.0; 6]);
        link.extend([6_000_000.0; 10]);
        let chosen = run(&link);
        assert!(*chosen.last().unwrap_or(&0) >= 4, "{chosen:?}");
        let low = chosen[11];
        let first_up = chosen[12..].iter().position(|&r| r > low).map(|p| p + 12);
        assert!(first_up.is_some_and(|p| p <= 15), "{chosen:?}");
    }

    #[test]
    fn alternating_bandwidth_around_a_rung_does_not_oscillate() {
        // Around rung 2's bitrate / UP_SAFETY: 1.6 and 2.0 Mbps in turn.
        let link: Vec<f64> = (0..30).map(|i| if i % 2 == 0 { 1_600_000.0 } else { 2_000_000.0 }).collect();
        let chosen = run(&link);
        let switches = chosen.windows(2).skip(5).filter(|w| w[0] != w[1]).count();
        assert!(switches <= 2, "{chosen:?}");
    }

    #[test]
    fn caps_and_pins_limit_the_choice() {
        let ladder = ladder();
        let input = AbrInput {
            ladder: &ladder,
            estimate_bps: 50_000_000.0,
            ttfb_s: 0.0,
            buffer_s: 20.0,
            buffer_target_s: 30.0,
            segment_duration_s: 4.0,
            current: Some(2),
            max_rung: 3,
            past_throughputs_bps: &[],
        };
        assert_eq!(EddyAbr::decide(&input), 3);
    }

    #[test]
    fn low_buffer_forbids_a_download_that_would_stall() {
        let ladder = ladder();
        let input = AbrInput {
            ladder: &ladder,
            estimate_bps: 4_000_000.0,
            ttfb_s: 0.1,
            buffer_s: 3.0,
            buffer_target_s: 30.0,
            segment_duration_s: 4.0,
            current: Some(4),
            max_rung: 5,
            past_throughputs_bps: &[],
        };
        let rung = EddyAbr::decide(&input);
        assert!(input.download_time_s(rung) <= input.buffer_s / 2.0 + 1e-9, "rung {rung}");
    }

    #[test]
    fn abandons_a_download_that_would_outlast_the_buffer() {
        let ladder = ladder();
        let input = AbandonInput {
            ladder: &ladder,
            rung: 5,
            elapsed_s: 2.0,
            bytes_done: 50_000,
            bytes_total: 2_150_000,
            partial_bps: Some(200_000.0),
            ttfb_s: 0.05,
            buffer_s: 8.0,
            segment_duration_s: 4.0,
        };
        // Rest: 16.8 Mbit at 200 kbps = 84 s > 8 s of buffer; rung 0 takes 6 s.
        assert_eq!(EddyAbr::should_abandon(&input), Some(0));
        let healthy = AbandonInput { partial_bps: Some(8_000_000.0), ..input.clone() };
        assert_eq!(EddyAbr::should_abandon(&healthy), None);
        let lowest = AbandonInput { rung: 0, ..input };
        assert_eq!(EddyAbr::should_abandon(&lowest), None);
    }
}
