//! Eddy's ABR rule: plan the next segments against the spread of recent throughputs, never plan a
//! stall, and abandon a download that would outlast the buffer.
//!
//! # Rules and why (sources at the end)
//! 1. **Start**: before any download has been measured, the rung is the highest one under
//!    [`START_SAFETY`] × the estimate (the estimator's default is 500 kbps, so the start is
//!    conservative); one finished segment replaces the default with a measurement, and the next
//!    decision may jump several rungs at once (quick ramp-up; "slow ramp-up at start" is a known
//!    complaint).
//! 2. **Plan against the spread** ([`super::lookahead`]): the rung is the first step of the plan for
//!    the next [`HORIZON`] segments with the best expected QoE_lin (bitrate, minus 4.3 per second of
//!    stall, minus each switch), where each download's throughput is drawn from the last
//!    [`SAMPLE_WINDOW`] downloads, discounted to [`THROUGHPUT_SAFETY`] (75%) of what they measured.
//!    Because switches and stalls are priced, the plan goes up only when the buffer and the link can
//!    keep the new rung for a while, goes down as far as the risk of a stall requires and no further,
//!    and rides out a dip that the buffer can absorb: on links that jump between levels every few
//!    seconds (3G-like), a rule that follows a single estimate oscillates and pays for every switch
//!    twice. On a steady link every sample agrees and the plan is plain MPC.
//! 3. **Emergency**: when the previous download took more than [`EMERGENCY_RATIO`] (1.5) × the media
//!    it brought and the buffer would run dry within [`EMERGENCY_HORIZON`] (6) more downloads like it,
//!    the estimate is pulled down to the geometric mean of the estimate and that download's own
//!    throughput, and rule 4 checks against it (hls.js' emergency downswitch). Under
//!    [`EMERGENCY_MAX_BUFFER_S`] (9 s, where dash.js leaves its buffer-based rule) the current rung
//!    is also kept only if that lowered estimate sustains it. One slow sample among eight moves the
//!    plan little, and a plan that prices switches linearly would rather spend the buffer first and
//!    switch later: with short segments and a small buffer that is a stall. With a deep buffer the
//!    plan's patience is right (in the evaluation, forcing the switch there cost QoE).
//! 4. **Never plan a stall**: whatever rules 1–3 chose, step down while the predicted download time
//!    at [`STALL_GUARD`] (70%) of the estimate would eat the buffer below [`RESERVE_S`], or below half
//!    of the buffer when it is small (dash.js' insufficient-buffer rule, with its 0.7 safety). The
//!    estimate is the estimator's cautious min(fast, slow) average, which includes a download in
//!    progress: it reacts to a drop faster than the window of samples.
//! 5. **Abandon**: during a download, once the partial throughput is known, if the rest of the download
//!    would take longer than the buffer that is left, and re-fetching the same segment at a lower rung
//!    would finish sooner, abandon and fetch the highest lower rung that fits (hls.js abandons when
//!    finishing takes > 2× a lower level's fetch; dash.js at 1.8× the segment duration).
//!
//! The constants were chosen with `eddy-play evaluate` (virtual time, 60 generated traces per family,
//! the literature's 6-rung ladder, 4 s segments) and checked on two other sets of seeds.
//!
//! # Sources
//! - QoE_lin and its 4.3 stall weight: H. Mao, R. Netravali, M. Alizadeh, "Neural Adaptive Video
//!   Streaming with Pensieve", ACM SIGCOMM 2017. MPC: X. Yin, A. Jindal, V. Sekar, B. Sinopoli, "A
//!   Control-Theoretic Approach for Dynamic Adaptive Video Streaming over HTTP", ACM SIGCOMM 2015.
//! - hls.js, `src/controller/abr-controller.ts`, `_abandonRulesCheck`: the emergency downswitch and the
//!   abandonment rule (abort at once when finishing would take more than 2× the lower level's fetch).
//! - dash.js, `src/streaming/controllers/AbrController.js` (`_updateDynamicAbrStrategy`: BOLA from the
//!   default buffer time, 18 s, back to the throughput rule under half of it);
//!   `src/streaming/rules/abr/InsufficientBufferRule.js`; `src/streaming/rules/abr/AbandonRequestsRule.js`;
//!   their defaults (`bufferTimeDefault`, `throughputSafetyFactor` 0.7, `abandonDurationMultiplier` 1.8)
//!   in `src/core/Settings.js`.

use super::lookahead::{best_first_rung, PlanInput};
use super::{AbandonInput, AbrAlgorithm, AbrInput};

/// Fraction of the estimate the first rung must fit under.
pub const START_SAFETY: f64 = 0.85;
/// Segments the plan looks ahead (MPC plans 5; with 4 s segments, 6 covers most of a 30 s buffer).
pub const HORIZON: usize = 6;
/// Recent downloads whose throughputs the plan draws from.
pub const SAMPLE_WINDOW: usize = 8;
/// The plan assumes each download gets this fraction of the throughput a past one measured.
pub const THROUGHPUT_SAFETY: f64 = 0.75;
/// Seconds of buffer that a predicted download must leave behind.
pub const RESERVE_S: f64 = 2.0;
/// The never-plan-a-stall check assumes the link may fall to this fraction of the estimate.
pub const STALL_GUARD: f64 = 0.7;
/// A download that took this many times the media it brought is an emergency (rule 3)...
pub const EMERGENCY_RATIO: f64 = 1.5;
/// ...when the buffer would run dry within this many more downloads like it.
pub const EMERGENCY_HORIZON: f64 = 6.0;
/// ...and the buffer holds less than this (dash.js leaves its buffer-based rule under 9 s).
pub const EMERGENCY_MAX_BUFFER_S: f64 = 9.0;
/// Abandonment is only considered after this much time in the download (a rate needs some data).
pub const ABANDON_MIN_ELAPSED_S: f64 = 0.5;

/// The tunable numbers of the rule; [`Default`] gives the documented constants.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EddyParams {
    pub start_safety: f64,
    pub horizon: usize,
    pub sample_window: usize,
    pub throughput_safety: f64,
    pub reserve_s: f64,
    /// Fraction of the estimate the never-plan-a-stall check assumes the link may fall to.
    pub stall_guard: f64,
    /// Abandon downloads that would outlast the buffer (rule 5).
    pub abandon: bool,
    /// React to a download slower than real time on the next decision (rule 3).
    pub emergency: bool,
    /// A download is an emergency when it took longer than this × the media it brought...
    pub emergency_ratio: f64,
    /// ...and the buffer would run dry within this many more downloads like it.
    pub emergency_horizon: f64,
    /// From this much buffer up, the plan alone answers an emergency.
    pub emergency_max_buffer_s: f64,
}

impl Default for EddyParams {
    fn default() -> Self {
        Self {
            start_safety: START_SAFETY,
            horizon: HORIZON,
            sample_window: SAMPLE_WINDOW,
            throughput_safety: THROUGHPUT_SAFETY,
            reserve_s: RESERVE_S,
            stall_guard: STALL_GUARD,
            abandon: true,
            emergency: true,
            emergency_ratio: EMERGENCY_RATIO,
            emergency_horizon: EMERGENCY_HORIZON,
            emergency_max_buffer_s: EMERGENCY_MAX_BUFFER_S,
        }
    }
}

/// The Eddy rule: no state beyond its parameters, all history comes in through [`AbrInput`].
#[derive(Debug, Clone, Default)]
pub struct EddyAbr {
    pub params: EddyParams,
}

impl EddyAbr {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rules 1–4 of the module documentation.
    pub fn decide(&self, input: &AbrInput) -> usize {
        let p = &self.params;
        let top = input.top();
        // Rule 3: a download much slower than real time is the freshest evidence there is; the
        // averages (weighted over seconds) and the window of samples would only catch up a segment or
        // two later.
        let emergency = p.emergency
            && input.current.is_some()
            && input.last_download.is_some_and(|d| {
                let drained_s = d.download_s - d.media_s;
                d.download_s > d.media_s * p.emergency_ratio && input.buffer_s < drained_s * p.emergency_horizon
            });
        let estimate = match input.last_download {
            // Halfway (geometrically) to the slow download's rate: enough for a downswitch, not a
            // plunge to the bottom after one short deep dip.
            Some(last) if emergency => input.estimate_bps.min((input.estimate_bps * last.throughput_bps()).sqrt()),
            _ => input.estimate_bps,
        };
        if input.ladder.is_empty() {
            return 0;
        }
        let past = input.past_throughputs_bps;
        let recent = &past[past.len().saturating_sub(p.sample_window.max(1))..];
        // Only real measurements: a zero or non-finite sample describes no link.
        let throughputs: Vec<f64> =
            recent.iter().filter(|bps| bps.is_finite() && **bps > 0.0).map(|&bps| bps * p.throughput_safety).collect();
        let mut choice = match input.current {
            Some(current) if !throughputs.is_empty() => {
                let bitrates: Vec<u64> = input.ladder[..=top].iter().map(|r| r.bitrate_bps).collect();
                // The next segment, plus the rest counted in (possibly partial) segments; the small
                // margin keeps 3.9999999 s from counting as 4.
                let segments_left = input.remaining_s.map_or(usize::MAX, |rest| {
                    let after = (rest / input.segment_duration_s.max(1e-3) - 1e-6).ceil().max(0.0);
                    if after.is_finite() && after < 1e9 {
                        after as usize + 1
                    } else {
                        usize::MAX
                    }
                });
                let planned = best_first_rung(&PlanInput {
                    bitrates_bps: &bitrates,
                    segment_s: input.segment_duration_s,
                    buffer_s: input.buffer_s,
                    buffer_target_s: input.buffer_target_s,
                    current: current.min(top),
                    segments: p.horizon.min(segments_left).max(1),
                    throughputs_bps: &throughputs,
                });
                // One slow sample among many moves the plan little, and a plan that prices switches
                // linearly would rather spend the buffer first and switch later; with a small buffer
                // that is a stall. So in an emergency the current rung is kept only if the lowered
                // estimate sustains it.
                if emergency && input.buffer_s < p.emergency_max_buffer_s && input.highest_at_most(estimate) < current {
                    planned.min(current.saturating_sub(1))
                } else {
                    planned
                }
            }
            _ => input.highest_at_most(p.start_safety * input.estimate_bps),
        };
        // Rule 4. With a small buffer (start-up, 1 s segments) half of it is the reserve.
        let reserve = p.reserve_s.min(input.buffer_s / 2.0);
        let guarded = estimate * p.stall_guard;
        while choice > 0 && input.buffer_s - input.download_time_at(choice, guarded) < reserve {
            choice -= 1;
        }
        choice
    }

    /// Rule 5 of the module documentation.
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
        self.decide(input)
    }

    fn abandon(&mut self, input: &AbandonInput) -> Option<usize> {
        if !self.params.abandon {
            return None;
        }
        Self::should_abandon(input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abr::{BandwidthEstimator, LastDownload, Rung, TransferSample};
    use crate::sim::{simulate, SimConfig};
    use eddy_shared::netsim::Trace;

    use crate::abr::test_ladder as ladder;

    /// The rungs the player's loop chooses over `trace` (the simulator drives the same loop as the
    /// player): the literature's ladder, 4 s segments, a 30 s buffer target. Returns (time, rung) of
    /// each decision.
    fn run(trace: &Trace, segments: usize) -> Vec<(f64, usize)> {
        let config = SimConfig { segments, ..SimConfig::default() };
        simulate(&mut EddyAbr::default(), trace, &config).requests
    }

    fn trace(steps: &str) -> Trace {
        Trace::from_steps(steps).unwrap_or_else(|e| panic!("{steps}: {e}"))
    }

    fn rungs(requests: &[(f64, usize)]) -> Vec<usize> {
        requests.iter().map(|r| r.1).collect()
    }

    #[test]
    fn steady_high_bandwidth_reaches_the_top_and_stays() {
        let chosen = rungs(&run(&trace("10000k@0s"), 20));
        let first_top = chosen.iter().position(|&r| r == 5).expect("reaches the top rung");
        assert!(first_top <= 3, "{chosen:?}");
        assert!(chosen[first_top..].iter().all(|&r| r == 5), "{chosen:?}");
    }

    #[test]
    fn sudden_drop_switches_down_within_two_decisions() {
        let requests = run(&trace("6000k@0s,900k@40s"), 40);
        let before: Vec<usize> = requests.iter().filter(|r| r.0 < 40.0).map(|r| r.1).collect();
        let after: Vec<usize> = requests.iter().filter(|r| r.0 >= 40.0).map(|r| r.1).collect();
        let high = *before.last().unwrap_or(&0);
        assert!(high >= 4, "high before the drop: {requests:?}");
        assert!(after.iter().take(2).any(|&r| r < high), "lower within two decisions: {requests:?}");
        let settled = requests.iter().filter(|r| (60.0..120.0).contains(&r.0));
        assert!(
            settled.clone().count() > 5 && settled.clone().all(|r| r.1 <= 1),
            "settles at what 900 kbps sustains: {requests:?}"
        );
    }

    #[test]
    fn recovery_switches_back_up_once_the_margin_is_there() {
        let requests = run(&trace("6000k@0s,900k@40s,6000k@100s"), 60);
        let low = requests.iter().rev().find(|r| r.0 < 100.0).map_or(0, |r| r.1);
        let after: Vec<usize> = requests.iter().filter(|r| r.0 >= 100.0).map(|r| r.1).collect();
        assert!(after.iter().take(4).any(|&r| r > low), "climbs within four decisions: {requests:?}");
        assert!(after.last().is_some_and(|&r| r >= 4), "{requests:?}");
    }

    #[test]
    fn alternating_bandwidth_around_a_rung_does_not_oscillate() {
        // Bandwidth alternating every 4 s just around what rung 2 needs: 1.6 and 2.0 Mbps.
        let steps: Vec<String> =
            (0..60).map(|i| format!("{}k@{}s", if i % 2 == 0 { 1600 } else { 2000 }, i * 4)).collect();
        let chosen = rungs(&run(&trace(&steps.join(",")), 40));
        let switches = chosen.windows(2).skip(5).filter(|w| w[0] != w[1]).count();
        assert!(switches <= 2, "{chosen:?}");
    }

    #[test]
    fn a_deep_buffer_rides_through_a_short_dip() {
        // 3.2 Mbps with a 6 s dip to 1.3 Mbps once the buffer is deep: the buffer pays for the dip; a
        // rule following one estimate would switch down and back up, paying twice.
        let requests = run(&trace("3200k@0s,1300k@80s,3200k@86s"), 60);
        let settled = requests.iter().rev().find(|r| r.0 < 80.0).map_or(0, |r| r.1);
        assert!(settled >= 3, "{requests:?}");
        let later = requests.iter().filter(|r| (80.0..160.0).contains(&r.0));
        assert!(later.clone().count() > 5 && later.clone().all(|r| r.1 == settled), "{requests:?}");
    }

    /// A decision on the test ladder with a deep buffer, on rung 4, after eight 20 Mbit/s downloads;
    /// tests change what they are about with `..`.
    fn deep_buffer_input(ladder: &[Rung]) -> AbrInput<'_> {
        AbrInput {
            ladder,
            estimate_bps: 20_000_000.0,
            ttfb_s: 0.05,
            buffer_s: 28.0,
            buffer_target_s: 30.0,
            segment_duration_s: 4.0,
            current: Some(4),
            max_rung: 5,
            past_throughputs_bps: &[20_000_000.0; 8],
            remaining_s: None,
            last_download: None,
        }
    }

    #[test]
    fn an_empty_download_is_not_a_measurement_of_the_link() {
        let ladder = ladder();
        let decide = |past: &[f64]| {
            EddyAbr::default().decide(&AbrInput { past_throughputs_bps: past, ..deep_buffer_input(&ladder) })
        };
        // A zero-byte body reads as 0 bit/s: taken at face value, one such sample would mean a stall
        // of millions of seconds and rung 0 for the next eight decisions.
        let mut past = vec![20_000_000.0; 7];
        past.push(0.0);
        assert_eq!(decide(&past), 5);
        // With no real sample the rule falls back to the estimate (20 Mbit/s), as at the start.
        assert_eq!(decide(&[0.0, f64::NAN]), 5);
    }

    #[test]
    fn the_end_of_the_stream_counts_partial_and_rounded_segments() {
        let ladder = ladder();
        let decide = |remaining_s: Option<f64>| {
            EddyAbr::default().decide(&AbrInput { remaining_s, ..deep_buffer_input(&ladder) })
        };
        // One more segment after the next one, whether the float arithmetic says 4 s or a hair less.
        assert_eq!(decide(Some(4.0)), decide(Some(3.999_999_9)));
        assert_eq!(decide(Some(f64::INFINITY)), decide(None));
    }

    #[test]
    fn caps_and_pins_limit_the_choice() {
        let ladder = ladder();
        let input = AbrInput { max_rung: 3, current: Some(2), ..deep_buffer_input(&ladder) };
        assert_eq!(EddyAbr::default().decide(&input), 3);
    }

    #[test]
    fn low_buffer_forbids_a_download_that_would_stall() {
        let ladder = ladder();
        let past = [4_000_000.0; 8];
        let input = AbrInput {
            estimate_bps: 4_000_000.0,
            ttfb_s: 0.1,
            buffer_s: 3.0,
            past_throughputs_bps: &past,
            ..deep_buffer_input(&ladder)
        };
        let rung = EddyAbr::default().decide(&input);
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

    /// The end-to-end adaptation test's ladder: peak bitrates of a 3-rung package with 1 s segments.
    fn small_ladder() -> Vec<Rung> {
        [508_000u64, 1_191_000, 2_110_000].iter().map(|&b| Rung { bitrate_bps: b, height: None }).collect()
    }

    /// The end-to-end adaptation test's setting in the simulator: 1 s segments weighing 80% of the
    /// rung's peak (real segments stay under the declared peak), a 6 s buffer, 20 ms latency.
    fn run_small(trace: &Trace, segments: usize) -> Vec<(f64, usize)> {
        let config = SimConfig {
            ladder: small_ladder(),
            segment_duration_s: 1.0,
            segments,
            buffer_target_s: 6.0,
            latency_s: 0.02,
            segment_fill: 0.8,
        };
        simulate(&mut EddyAbr::default(), trace, &config).requests
    }

    #[test]
    fn a_download_slower_than_real_time_brings_a_downswitch_on_the_next_decision() {
        // The end-to-end drop test: 1.5× the top peak, then 1.5× the lowest peak from 6 s, with a 6 s
        // buffer and 1 s segments. Each top-rung segment then takes ~2.2 s for 1 s of media.
        let requests = run_small(&trace("3165k@0s,762k@6s,3165k@14s"), 26);
        let before: Vec<usize> = requests.iter().filter(|(t, _)| *t < 6.0).map(|r| r.1).collect();
        assert_eq!(before.last(), Some(&2), "at the top before the drop: {requests:?}");
        let after: Vec<usize> = requests.iter().filter(|(t, _)| (6.0..14.0).contains(t)).map(|r| r.1).collect();
        assert!(after.iter().take(2).any(|&r| r < 2), "lower within 2 segments of the drop: {requests:?}");
        assert!(after.iter().skip(2).all(|&r| r < 2), "stays lower while the link is low: {requests:?}");
        let recovered: Vec<usize> = requests.iter().filter(|(t, _)| *t >= 14.0).map(|r| r.1).collect();
        assert!(recovered.contains(&2), "climbs back: {requests:?}");
    }

    #[test]
    fn the_decision_after_one_slow_download_is_lower() {
        // The state the player was in: ten fast 1 s top-rung segments, then one that took 2.4 s.
        let ladder = small_ladder();
        let mut estimator = BandwidthEstimator::default();
        for i in 0..10 {
            let t = i as f64;
            estimator.add_transfer(TransferSample {
                request_s: t,
                first_byte_s: t + 0.02,
                end_s: t + 0.5,
                bytes: 200_000,
            });
        }
        let slow = TransferSample { request_s: 10.0, first_byte_s: 10.02, end_s: 12.4, bytes: 220_000 };
        estimator.add_transfer(slow);
        let input = AbrInput {
            ladder: &ladder,
            estimate_bps: estimator.estimate_bps(12.4),
            ttfb_s: estimator.ttfb_s(),
            buffer_s: 4.6,
            buffer_target_s: 6.0,
            segment_duration_s: 1.0,
            current: Some(2),
            max_rung: 2,
            past_throughputs_bps: &[],
            remaining_s: Some(12.0),
            last_download: Some(LastDownload { download_s: 2.4, media_s: 1.0, bytes: 220_000 }),
        };
        assert!(EddyAbr::default().decide(&input) < 2);
        // The same download at real-time speed or better is no emergency.
        let healthy = AbrInput {
            last_download: Some(LastDownload { download_s: 0.5, media_s: 1.0, bytes: 220_000 }),
            estimate_bps: 3_000_000.0,
            ..input
        };
        assert_eq!(EddyAbr::default().decide(&healthy), 2);
    }
}
