//! Well-known ABR algorithms, implemented from their published descriptions so the evaluation can
//! compare Eddy's rule against them in the same harness. They are not used for playback.
//!
//! # Sources
//! - [`ThroughputAbr`]: hls.js, `src/controller/abr-controller.ts` (level choice with a factor to stay
//!   or go down and a smaller one to go up; abandonment in `_abandonRulesCheck`) and the defaults in
//!   `src/config.ts` (`abrBandWidthFactor` 0.95, `abrBandWidthUpFactor` 0.7).
//! - [`BbaAbr`]: T.-Y. Huang, R. Johari, N. McKeown, M. Trunnell, M. Watson, "A Buffer-Based Approach
//!   to Rate Adaptation: Evidence from a Large Video Streaming Service", ACM SIGCOMM 2014.
//! - [`BolaAbr`]: K. Spiteri, R. Urgaonkar, R. K. Sitaraman, "BOLA: Near-Optimal Bitrate Adaptation
//!   for Online Videos", IEEE INFOCOM 2016 (extended in IEEE/ACM Transactions on Networking, 2020);
//!   the parameter choice and the throughput-based first segment follow dash.js,
//!   `src/streaming/rules/abr/BolaRule.js`.
//! - [`RobustMpcAbr`]: X. Yin, A. Jindal, V. Sekar, B. Sinopoli, "A Control-Theoretic Approach for
//!   Dynamic Adaptive Video Streaming over HTTP", ACM SIGCOMM 2015.

use super::{AbandonInput, AbrAlgorithm, AbrInput};

/// hls.js-style throughput rule: the EWMA estimate × 0.95 to stay or go down, × 0.7 to go up, with
/// hls.js' abandonment (finishing would take longer than 2× re-fetching at a lower level).
#[derive(Debug, Clone, Default)]
pub struct ThroughputAbr;

impl AbrAlgorithm for ThroughputAbr {
    fn name(&self) -> &'static str {
        "throughput"
    }

    fn choose(&mut self, input: &AbrInput) -> usize {
        let stay = input.highest_at_most(0.95 * input.estimate_bps);
        let up = input.highest_at_most(0.7 * input.estimate_bps);
        match input.current {
            None => up,
            Some(current) if stay < current => stay,
            Some(current) => up.max(current.min(input.top())),
        }
    }

    fn abandon(&mut self, input: &AbandonInput) -> Option<usize> {
        if input.rung == 0 || input.elapsed_s < input.ttfb_s.max(input.segment_duration_s / 2.0) {
            return None;
        }
        let rate = input.partial_bps?.max(1.0);
        let finish_s = input.bytes_total.saturating_sub(input.bytes_done) as f64 * 8.0 / rate;
        if finish_s <= input.buffer_s {
            return None;
        }
        let refetch = |r: usize| input.ladder[r].bitrate_bps as f64 * input.segment_duration_s / rate;
        (0..input.rung).rev().find(|&r| finish_s > 2.0 * refetch(r))
    }
}

/// BBA-0 (Huang et al., SIGCOMM 2014): the rung follows the buffer level alone, from the lowest at
/// the reservoir to the highest at reservoir + cushion.
#[derive(Debug, Clone)]
pub struct BbaAbr {
    pub reservoir_s: f64,
    pub cushion_s: f64,
}

impl Default for BbaAbr {
    fn default() -> Self {
        Self { reservoir_s: 5.0, cushion_s: 10.0 }
    }
}

impl AbrAlgorithm for BbaAbr {
    fn name(&self) -> &'static str {
        "bba"
    }

    fn choose(&mut self, input: &AbrInput) -> usize {
        let top = input.top();
        if input.buffer_s <= self.reservoir_s {
            return 0;
        }
        if input.buffer_s >= self.reservoir_s + self.cushion_s {
            return top;
        }
        let low = input.ladder[0].bitrate_bps as f64;
        let high = input.ladder[top].bitrate_bps as f64;
        let target = low + (high - low) * (input.buffer_s - self.reservoir_s) / self.cushion_s;
        input.highest_at_most(target)
    }
}

/// BOLA-BASIC (Spiteri et al., INFOCOM 2016) with dash.js' parameter choice: utilities
/// υ_m = ln(S_m / S_min) + 1, γp and V from a 10 s minimum buffer and the buffer target; picks the
/// rung maximising (V·(υ_m + γp) − Q) / S_m. The first segment uses the throughput estimate (BOLA has
/// no buffer to go on yet), as dash.js does.
#[derive(Debug, Clone, Default)]
pub struct BolaAbr;

/// dash.js' BOLA minimum buffer (seconds).
const BOLA_MINIMUM_BUFFER_S: f64 = 10.0;

impl AbrAlgorithm for BolaAbr {
    fn name(&self) -> &'static str {
        "bola"
    }

    fn choose(&mut self, input: &AbrInput) -> usize {
        let top = input.top();
        if input.current.is_none() {
            return input.highest_at_most(0.9 * input.estimate_bps);
        }
        let lowest = input.ladder[0].bitrate_bps.max(1) as f64;
        let utility = |r: usize| (input.ladder[r].bitrate_bps as f64 / lowest).ln() + 1.0;
        let target = input.buffer_target_s.max(BOLA_MINIMUM_BUFFER_S + input.segment_duration_s);
        let gp = (utility(top) - 1.0) / (target / BOLA_MINIMUM_BUFFER_S - 1.0).max(0.1);
        let v = BOLA_MINIMUM_BUFFER_S / gp.max(1e-6);
        let score = |r: usize| (v * (utility(r) + gp) - input.buffer_s) / input.ladder[r].bitrate_bps.max(1) as f64;
        (0..=top).max_by(|&a, &b| score(a).total_cmp(&score(b))).unwrap_or(0)
    }
}

/// RobustMPC (Yin et al., SIGCOMM 2015): predicts throughput as the harmonic mean of the last 5
/// samples divided by (1 + the largest relative prediction error of the last 5), then enumerates every
/// rung sequence for the next 5 segments and takes the first rung of the sequence with the best QoE_lin.
#[derive(Debug, Clone, Default)]
pub struct RobustMpcAbr {
    predictions: Vec<f64>,
    errors: Vec<f64>,
    seen_samples: usize,
}

const MPC_HORIZON: usize = 5;
const MPC_WINDOW: usize = 5;

impl RobustMpcAbr {
    fn plan(input: &AbrInput, rate_bps: f64, depth: usize, buffer_s: f64, previous: usize) -> f64 {
        if depth == MPC_HORIZON {
            return 0.0;
        }
        let mut best = f64::NEG_INFINITY;
        for r in 0..=input.top() {
            let bitrate = input.ladder[r].bitrate_bps as f64;
            let download_s = bitrate * input.segment_duration_s / rate_bps;
            let rebuffer_s = (download_s - buffer_s).max(0.0);
            let next_buffer = (buffer_s - download_s).max(0.0) + input.segment_duration_s;
            let change = (bitrate - input.ladder[previous].bitrate_bps as f64).abs();
            let qoe = bitrate / 1e6 - crate::qoe::REBUFFER_PENALTY * rebuffer_s - change / 1e6
                + Self::plan(input, rate_bps, depth + 1, next_buffer, r);
            best = best.max(qoe);
        }
        best
    }
}

impl AbrAlgorithm for RobustMpcAbr {
    fn name(&self) -> &'static str {
        "robustmpc"
    }

    fn choose(&mut self, input: &AbrInput) -> usize {
        let samples = input.past_throughputs_bps;
        // Score the previous prediction against the sample that arrived since.
        if samples.len() > self.seen_samples {
            if let (Some(&actual), Some(&predicted)) = (samples.last(), self.predictions.last()) {
                self.errors.push(((predicted - actual) / actual.max(1.0)).abs());
            }
            self.seen_samples = samples.len();
        }
        let recent = &samples[samples.len().saturating_sub(MPC_WINDOW)..];
        let harmonic = if recent.is_empty() {
            input.estimate_bps
        } else {
            recent.len() as f64 / recent.iter().map(|s| 1.0 / s.max(1.0)).sum::<f64>()
        };
        self.predictions.push(harmonic);
        let max_error =
            self.errors[self.errors.len().saturating_sub(MPC_WINDOW)..].iter().fold(0.0f64, |a, &b| a.max(b));
        let rate = (harmonic / (1.0 + max_error)).max(1.0);
        let previous = input.current.unwrap_or(0);
        let mut best = (f64::NEG_INFINITY, 0);
        for r in 0..=input.top() {
            let bitrate = input.ladder[r].bitrate_bps as f64;
            let download_s = bitrate * input.segment_duration_s / rate;
            let rebuffer_s = (download_s - input.buffer_s).max(0.0);
            let next_buffer = (input.buffer_s - download_s).max(0.0) + input.segment_duration_s;
            let change =
                if input.current.is_some() { (bitrate - input.ladder[previous].bitrate_bps as f64).abs() } else { 0.0 };
            let qoe = bitrate / 1e6 - crate::qoe::REBUFFER_PENALTY * rebuffer_s - change / 1e6
                + Self::plan(input, rate, 1, next_buffer, r);
            if qoe > best.0 {
                best = (qoe, r);
            }
        }
        best.1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abr::Rung;

    use crate::abr::test_ladder as ladder;

    fn input<'a>(ladder: &'a [Rung], buffer_s: f64, estimate: f64, past: &'a [f64]) -> AbrInput<'a> {
        AbrInput {
            ladder,
            estimate_bps: estimate,
            ttfb_s: 0.0,
            buffer_s,
            buffer_target_s: 30.0,
            segment_duration_s: 4.0,
            current: Some(2),
            max_rung: 5,
            past_throughputs_bps: past,
            remaining_s: None,
            last_download: None,
        }
    }

    #[test]
    fn bba_follows_the_buffer() {
        let ladder = ladder();
        let mut bba = BbaAbr::default();
        assert_eq!(bba.choose(&input(&ladder, 2.0, 1e9, &[])), 0);
        assert_eq!(bba.choose(&input(&ladder, 20.0, 1.0, &[])), 5);
        let middle = bba.choose(&input(&ladder, 10.0, 1.0, &[]));
        assert!(middle > 0 && middle < 5);
    }

    #[test]
    fn bola_goes_up_with_the_buffer() {
        let ladder = ladder();
        let mut bola = BolaAbr;
        let low = bola.choose(&input(&ladder, 1.0, 1.0, &[]));
        let high = bola.choose(&input(&ladder, 28.0, 1.0, &[]));
        assert!(low < high, "{low} {high}");
        assert!(high >= 4, "{high}");
    }

    #[test]
    fn robust_mpc_follows_a_steady_throughput() {
        let ladder = ladder();
        let mut mpc = RobustMpcAbr::default();
        let past = [2_000_000.0; 5];
        let rung = mpc.choose(&input(&ladder, 12.0, 2_000_000.0, &past));
        assert!((2..=4).contains(&rung), "{rung}");
        let starving = mpc.choose(&input(&ladder, 0.5, 400_000.0, &[400_000.0; 5]));
        assert_eq!(starving, 0);
    }

    #[test]
    fn throughput_rule_has_hysteresis() {
        let ladder = ladder();
        let mut rule = ThroughputAbr;
        // 1.5 Mbps: 0.95 × keeps rung 2 (1.2M), 0.7 × would only allow rung 1.
        assert_eq!(rule.choose(&input(&ladder, 10.0, 1_500_000.0, &[])), 2);
        assert_eq!(rule.choose(&input(&ladder, 10.0, 1_000_000.0, &[])), 1);
    }
}
