//! Stochastic lookahead: the rung that maximises the expected QoE_lin of the next few segments, when
//! each download's throughput is drawn from the recent samples.
//!
//! MPC (Yin et al., SIGCOMM 2015) plans the next 5 segments against one predicted throughput; on a
//! link that jumps between levels every few seconds any single prediction is wrong most of the time,
//! and RobustMPC's remedy (divide by the worst recent error) makes it timid everywhere. Planning
//! against the *distribution* of recent throughputs instead (in the spirit of Puffer's Fugu, NSDI
//! 2020) weighs a rung's bitrate against the stalls and the switches it risks in the cases where the
//! link does not cooperate: on a steady link every sample agrees and the plan is plain MPC; on a
//! jumpy one the plan stays on a rung the buffer can carry through the dips instead of chasing them.
//!
//! The plan is a backward dynamic programme over (segment, buffer level, previous rung): each stage
//! takes the best rung for every state, averaging over the samples (drawn independently per
//! segment), with the buffer level on a grid and interpolated between grid points. Pure and
//! deterministic: numbers in, a rung out.

use crate::qoe::REBUFFER_PENALTY;

/// What the planner needs to know; bitrates in bits per second, times in seconds.
#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    /// Bitrate of each rung the plan may use, ascending.
    pub bitrates_bps: &'a [u64],
    pub segment_s: f64,
    pub buffer_s: f64,
    /// Downloads pause above this level, so no decision starts with more in the buffer.
    pub buffer_target_s: f64,
    /// Rung of the previous segment (the first switch of the plan is counted from it).
    pub current: usize,
    /// Segments to plan for (the horizon, or fewer near the end of a VOD stream); at least 1.
    pub segments: usize,
    /// Throughputs a download may see, equally likely, as the buffer sees them (first-byte latency
    /// included), already discounted for safety.
    pub throughputs_bps: &'a [f64],
}

/// At most this many intervals between buffer levels on the grid, whatever the buffer target (the
/// cost is linear in it).
const MAX_GRID_INTERVALS: f64 = 240.0;

/// The first rung of the best plan. With no throughput samples (or an empty ladder, where 0 is no
/// rung at all), 0; with inputs that describe no plan (a segment duration or buffer target that is
/// not a positive number), the current rung.
pub fn best_first_rung(input: &PlanInput) -> usize {
    let rungs = input.bitrates_bps.len();
    if rungs == 0 || input.throughputs_bps.is_empty() {
        return 0;
    }
    let current = input.current.min(rungs - 1);
    let positive = |x: f64| x.is_finite() && x > 0.0;
    if !positive(input.segment_s) || !positive(input.buffer_target_s) {
        return current;
    }
    let buffer_s = if input.buffer_s.is_finite() { input.buffer_s.max(0.0) } else { 0.0 };
    let input = &PlanInput { buffer_s, ..input.clone() };
    // The buffer cannot grow by more than a segment per planned download, nor past the target.
    let highest_s = input.buffer_target_s.min(buffer_s + input.segments as f64 * input.segment_s);
    let step = buffer_step(input.segment_s).max(highest_s / MAX_GRID_INTERVALS);
    let grid = Grid { step, points: (highest_s / step).ceil() as usize + 1, rungs };
    // Download time of each rung under each sample: the same at every stage and grid point.
    let download_s: Vec<Vec<f64>> = input
        .bitrates_bps
        .iter()
        .map(|&bps| {
            let bits = bps as f64 * input.segment_s;
            input.throughputs_bps.iter().map(|&throughput| bits / throughput.max(1.0)).collect()
        })
        .collect();
    let plan = Plan { input, grid, download_s };
    // Value of the state after the last planned segment: nothing more is counted.
    let mut later = vec![0.0; plan.grid.points * rungs];
    for _ in 1..input.segments.max(1) {
        let mut now = vec![0.0; later.len()];
        for point in 0..plan.grid.points {
            // Everything but the switch depends on the rung alone, not on the one before it.
            let outlook: Vec<f64> = (0..rungs).map(|rung| plan.outlook(&later, point as f64 * step, rung)).collect();
            for previous in 0..rungs {
                now[plan.grid.index(point, previous)] = (0..rungs)
                    .map(|rung| outlook[rung] - plan.switch_cost(previous, rung))
                    .fold(f64::NEG_INFINITY, f64::max);
            }
        }
        later = now;
    }
    let mut best = (0, f64::NEG_INFINITY);
    for rung in 0..rungs {
        let value = plan.outlook(&later, input.buffer_s, rung) - plan.switch_cost(current, rung);
        // Ties go to the lower rung: the same expected QoE for fewer bytes.
        if value > best.1 + 1e-9 {
            best = (rung, value);
        }
    }
    best.0
}

/// The buffer grid: fine enough to tell one short segment's download from the next, never finer
/// than 0.1 s (the cost grows with the number of points).
fn buffer_step(segment_s: f64) -> f64 {
    (segment_s / 4.0).clamp(0.1, 1.0)
}

struct Grid {
    step: f64,
    points: usize,
    rungs: usize,
}

impl Grid {
    fn index(&self, point: usize, rung: usize) -> usize {
        point * self.rungs + rung
    }

    /// `values` at a buffer level between grid points, linearly interpolated.
    fn value_at(&self, values: &[f64], buffer_s: f64, rung: usize) -> f64 {
        let position = (buffer_s / self.step).max(0.0);
        let below = (position.floor() as usize).min(self.points - 1);
        let above = (below + 1).min(self.points - 1);
        let fraction = (position - below as f64).clamp(0.0, 1.0);
        values[self.index(below, rung)] * (1.0 - fraction) + values[self.index(above, rung)] * fraction
    }
}

struct Plan<'a> {
    input: &'a PlanInput<'a>,
    grid: Grid,
    /// `download_s[rung][sample]`.
    download_s: Vec<Vec<f64>>,
}

impl Plan<'_> {
    fn mbps(&self, rung: usize) -> f64 {
        self.input.bitrates_bps[rung] as f64 / 1e6
    }

    fn switch_cost(&self, previous: usize, rung: usize) -> f64 {
        (self.mbps(rung) - self.mbps(previous)).abs()
    }

    /// Expected QoE_lin of downloading `rung` next from `buffer_s`, switch aside, plus the value of
    /// the state it leads to (`later`), averaged over the throughput samples.
    fn outlook(&self, later: &[f64], buffer_s: f64, rung: usize) -> f64 {
        let (segment_s, target_s) = (self.input.segment_s, self.input.buffer_target_s);
        let total: f64 = self.download_s[rung]
            .iter()
            .map(|&download_s| {
                let stall_s = (download_s - buffer_s).max(0.0);
                let next_buffer = ((buffer_s - download_s).max(0.0) + segment_s).min(target_s);
                -REBUFFER_PENALTY * stall_s + self.grid.value_at(later, next_buffer, rung)
            })
            .sum();
        self.mbps(rung) + total / self.download_s[rung].len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LADDER: [u64; 6] = [300_000, 750_000, 1_200_000, 1_850_000, 2_850_000, 4_300_000];

    fn plan(buffer_s: f64, current: usize, throughputs_bps: &[f64]) -> usize {
        best_first_rung(&PlanInput {
            bitrates_bps: &LADDER,
            segment_s: 4.0,
            buffer_s,
            buffer_target_s: 30.0,
            current,
            segments: 6,
            throughputs_bps,
        })
    }

    #[test]
    fn a_steady_link_gets_the_highest_rung_it_carries() {
        // 3 Mbps every time: 2.85 Mbps fits, 4.3 Mbps would drain 1.7 s per segment, more than the
        // 6 s of buffer can give over the plan.
        assert_eq!(plan(6.0, 4, &[3_000_000.0; 8]), 4);
        assert_eq!(plan(20.0, 5, &[20_000_000.0; 8]), 5);
    }

    #[test]
    fn an_empty_buffer_on_a_slow_link_takes_the_lowest_rung() {
        assert_eq!(plan(0.5, 2, &[400_000.0; 8]), 0);
    }

    #[test]
    fn a_deep_buffer_is_spent_on_quality() {
        // The same link with 20 s of buffer: the plan can afford the top rung for its whole horizon.
        assert_eq!(plan(20.0, 4, &[3_000_000.0; 8]), 5);
    }

    #[test]
    fn a_full_buffer_rides_through_a_dip_without_switching() {
        // Mostly 2 Mbps, one sample in eight at 300 kbps: 30 s of buffer carries rung 3 through it.
        let mut samples = [2_000_000.0; 8];
        samples[3] = 300_000.0;
        assert_eq!(plan(30.0, 3, &samples), 3);
    }

    #[test]
    fn the_risk_of_a_deep_dip_keeps_a_low_buffer_low() {
        // Same link, but with 4 s of buffer a dip during a rung-3 download would stall for ~20 s.
        let mut samples = [2_000_000.0; 8];
        samples[3] = 300_000.0;
        assert!(plan(4.0, 1, &samples) <= 1);
    }

    #[test]
    fn switches_cost_so_a_short_plan_keeps_the_current_rung() {
        // One segment left: going from rung 1 to rung 2 gains 0.45 Mbps and costs a 0.45 switch.
        let input = PlanInput {
            bitrates_bps: &LADDER,
            segment_s: 4.0,
            buffer_s: 20.0,
            buffer_target_s: 30.0,
            current: 1,
            segments: 1,
            throughputs_bps: &[10_000_000.0; 8],
        };
        assert_eq!(best_first_rung(&input), 1);
        assert_eq!(best_first_rung(&PlanInput { segments: 4, ..input }), 5);
    }

    #[test]
    fn absurd_inputs_give_a_rung_of_the_ladder_at_bounded_cost() {
        let base = PlanInput {
            bitrates_bps: &LADDER,
            segment_s: 4.0,
            buffer_s: 20.0,
            buffer_target_s: 1e12,
            current: 2,
            segments: 6,
            throughputs_bps: &[3_000_000.0; 8],
        };
        // A huge buffer target: the grid only covers what the plan can reach.
        assert!(best_first_rung(&base) <= 5);
        let huge_buffer = PlanInput { buffer_s: 1e9, ..base.clone() };
        assert_eq!(best_first_rung(&huge_buffer), 5);
        for segment_s in [0.0, f64::NAN, f64::INFINITY, -1.0] {
            assert_eq!(best_first_rung(&PlanInput { segment_s, ..base.clone() }), 2);
        }
        assert_eq!(best_first_rung(&PlanInput { buffer_target_s: f64::NAN, ..base.clone() }), 2);
        assert!(best_first_rung(&PlanInput { buffer_s: f64::NAN, ..base.clone() }) <= 5);
        assert!(best_first_rung(&PlanInput { throughputs_bps: &[0.0, f64::NAN], ..base }) <= 5);
    }

    #[test]
    fn no_samples_or_no_ladder_gives_rung_zero() {
        assert_eq!(plan(10.0, 3, &[]), 0);
        let input = PlanInput {
            bitrates_bps: &[],
            segment_s: 4.0,
            buffer_s: 20.0,
            buffer_target_s: 30.0,
            current: 0,
            segments: 3,
            throughputs_bps: &[1.0],
        };
        assert_eq!(best_first_rung(&input), 0);
    }
}
