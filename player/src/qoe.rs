//! Quality of experience, computed the same way for real playback and simulated runs.
//!
//! QoE_lin (Pensieve, SIGCOMM 2017; MPC, SIGCOMM 2015), summed over played segments k:
//!
//! ```text
//! QoE_lin = Σ_k bitrate_Mbps(k) − 4.3 · Σ stall_seconds − Σ_k>0 |bitrate_Mbps(k) − bitrate_Mbps(k−1)|
//! ```
//!
//! The 4.3 weight is the top bitrate of the literature's ladder: one second of stall costs as much as
//! one segment at the best quality. The start-up delay is reported apart and not counted as a stall.

/// Weight of one second of stall in QoE_lin.
pub const REBUFFER_PENALTY: f64 = 4.3;

/// QoE_lin of a played sequence: `bitrates_bps` per segment in play order, total stall seconds.
pub fn qoe_lin(bitrates_bps: &[u64], stall_s: f64) -> f64 {
    let mbps: Vec<f64> = bitrates_bps.iter().map(|&b| b as f64 / 1e6).collect();
    let quality: f64 = mbps.iter().sum();
    let smoothness: f64 = mbps.windows(2).map(|w| (w[1] - w[0]).abs()).sum();
    quality - REBUFFER_PENALTY * stall_s - smoothness
}

/// Number of bitrate changes between consecutive segments.
pub fn switch_count(bitrates_bps: &[u64]) -> usize {
    bitrates_bps.windows(2).filter(|w| w[0] != w[1]).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qoe_lin_matches_the_formula() {
        // 1 + 3 + 3 Mbps, one change of 2 Mbps, 0.5 s of stall.
        let value = qoe_lin(&[1_000_000, 3_000_000, 3_000_000], 0.5);
        assert!((value - (7.0 - 2.15 - 2.0)).abs() < 1e-9);
        assert_eq!(switch_count(&[1, 3, 3, 1]), 2);
        assert_eq!(qoe_lin(&[], 0.0), 0.0);
    }
}
