//! The ABR feedback loop, once: what past downloads say ([`History`]), what a decision is given
//! ([`History::input`]) and how a choice or an abandonment is bounded ([`choose`], [`abandon`]). The
//! player (`crate::session`), the virtual-time simulator (`crate::sim`) and the replay of a recorded
//! session all drive exactly this code, so `eddy-play evaluate` measures the ABR that `eddy-play`
//! runs. Pure: times are seconds on the caller's clock.

use serde::{Deserialize, Serialize};

use super::estimator::TransferSample;
use super::{AbandonInput, AbrAlgorithm, AbrInput, BandwidthEstimator, LastDownload, PartialTransfer, Rung};

/// Transfer times are floored here: a transfer that took "no time" (a coarse clock, a file URL) would
/// otherwise read as an infinite throughput.
pub const MIN_TRANSFER_S: f64 = 1e-3;

/// A finished segment download, as the loop records it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Download {
    /// Ladder position it was fetched at.
    pub rung: usize,
    /// When the request was sent.
    pub request_s: f64,
    /// When the first byte of the body arrived.
    pub first_byte_s: f64,
    /// When the last byte arrived.
    pub end_s: f64,
    /// Body bytes.
    pub bytes: u64,
    /// Seconds of media it brought.
    pub media_s: f64,
}

/// What the media playlist says about the next segment.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Upcoming {
    /// Duration of the next segment.
    pub duration_s: f64,
    /// Media listed after the next segment.
    pub listed_after_s: f64,
    /// The list is final (`EXT-X-ENDLIST`: VOD, or a live stream that has ended).
    pub ended: bool,
}

/// The moment of a decision, besides what the history holds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DecisionPoint {
    pub now_s: f64,
    /// Media buffered ahead of the playback position.
    pub buffer_s: f64,
    /// The configured forward-buffer target.
    pub buffer_target_s: f64,
    pub upcoming: Upcoming,
}

impl DecisionPoint {
    /// The buffer the decision may plan with. VOD: the configured target. Live: segments appear in
    /// real time, as fast as playback drains them, so the buffer cannot grow past what is listed now;
    /// a plan counting on the full target would overreach.
    pub fn reachable_buffer_target_s(&self) -> f64 {
        if self.upcoming.ended {
            self.buffer_target_s
        } else {
            self.buffer_target_s.min(self.buffer_s + self.upcoming.duration_s + self.upcoming.listed_after_s)
        }
    }

    /// Media left after the next segment when the list is final (the buffer need not outlast the
    /// stream); unknown for live.
    pub fn remaining_s(&self) -> Option<f64> {
        self.upcoming.ended.then_some(self.upcoming.listed_after_s)
    }
}

/// A download in progress at the moment it is checked for abandonment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AbandonPoint {
    pub now_s: f64,
    /// Ladder position being downloaded.
    pub rung: usize,
    pub progress: PartialTransfer,
    /// Expected size (Content-Length, or bitrate × duration when unknown).
    pub bytes_total: u64,
    /// Media buffered ahead of the playback position now.
    pub buffer_s: f64,
    pub segment_duration_s: f64,
}

/// What past downloads tell the next decision: the bandwidth estimator, the throughput of each
/// download, the last download, and the rung playing now.
#[derive(Debug, Clone, Default)]
pub struct History {
    estimator: BandwidthEstimator,
    past_throughputs_bps: Vec<f64>,
    last_download: Option<LastDownload>,
    current: Option<usize>,
}

impl History {
    /// Records a finished download: it feeds the estimator, becomes the last download, and its rung
    /// the current one. An empty body says nothing about the link (it would read as 0 bit/s), so it
    /// adds no throughput sample.
    pub fn record(&mut self, download: &Download) {
        self.estimator.add_transfer(TransferSample {
            request_s: download.request_s,
            first_byte_s: download.first_byte_s,
            end_s: download.end_s,
            bytes: download.bytes,
        });
        let transfer_s = (download.end_s - download.request_s).max(MIN_TRANSFER_S);
        if download.bytes > 0 {
            self.past_throughputs_bps.push(download.bytes as f64 * 8.0 / transfer_s);
        }
        self.last_download =
            Some(LastDownload { download_s: transfer_s, media_s: download.media_s, bytes: download.bytes });
        self.current = Some(download.rung);
    }

    /// A download in progress made progress: the estimate follows it (a collapse is seen before the
    /// segment finishes).
    pub fn progress(&mut self, partial: PartialTransfer) {
        self.estimator.set_in_progress(partial);
    }

    /// The download in progress ended without a result (abandoned, failed, stopped).
    pub fn interrupted(&mut self) {
        self.estimator.clear_in_progress();
    }

    /// The rung of the last finished download (`None` before the first).
    pub fn current(&self) -> Option<usize> {
        self.current
    }

    /// The bandwidth estimate at `now_s` (shown in the status line and the events).
    pub fn estimate_bps(&self, now_s: f64) -> f64 {
        self.estimator.estimate_bps(now_s)
    }

    /// The input of the decision for the next segment.
    pub fn input<'a>(&'a self, ladder: &'a [Rung], max_rung: usize, at: &DecisionPoint) -> AbrInput<'a> {
        AbrInput {
            ladder,
            estimate_bps: self.estimator.estimate_bps(at.now_s),
            ttfb_s: self.estimator.ttfb_s(),
            buffer_s: at.buffer_s,
            buffer_target_s: at.reachable_buffer_target_s(),
            segment_duration_s: at.upcoming.duration_s,
            current: self.current,
            max_rung,
            past_throughputs_bps: &self.past_throughputs_bps,
            remaining_s: at.remaining_s(),
            last_download: self.last_download,
        }
    }

    /// Records the progress of the download in progress and gives the abandonment rule's input.
    pub fn abandon_input<'a>(&'a mut self, ladder: &'a [Rung], at: &AbandonPoint) -> AbandonInput<'a> {
        self.progress(at.progress);
        AbandonInput {
            ladder,
            rung: at.rung,
            elapsed_s: at.now_s - at.progress.request_s,
            bytes_done: at.progress.bytes_so_far,
            bytes_total: at.bytes_total,
            partial_bps: self.estimator.partial_bps(at.now_s),
            ttfb_s: self.estimator.ttfb_s(),
            buffer_s: at.buffer_s,
            segment_duration_s: at.segment_duration_s,
        }
    }
}

/// The rung for the next segment, within the caps (a ladder of one allowed rung needs no decision).
pub fn choose(algorithm: &mut (impl AbrAlgorithm + ?Sized), input: &AbrInput) -> usize {
    let top = input.top();
    if top == 0 {
        return 0;
    }
    algorithm.choose(input).min(top)
}

/// Whether a download may be abandoned at all: only once playback runs (before, there is no buffer
/// to protect and the first segment is already the cautious one), only above the lowest rung, and
/// once per segment: the rule picked a rung whose refetch fits the buffer at the rate it saw.
pub fn may_abandon(rung: usize, playing: bool, abandoned_this_segment: bool) -> bool {
    rung > 0 && playing && !abandoned_this_segment
}

/// Whether to abandon the download in progress, and the lower rung to fetch instead.
pub fn abandon(algorithm: &mut (impl AbrAlgorithm + ?Sized), input: &AbandonInput) -> Option<usize> {
    let below = input.rung.checked_sub(1)?;
    algorithm.abandon(input).map(|to| to.min(below))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abr::test_ladder;
    use crate::abr::EddyAbr;

    fn download(rung: usize, request_s: f64, end_s: f64, bytes: u64) -> Download {
        Download { rung, request_s, first_byte_s: request_s, end_s, bytes, media_s: 4.0 }
    }

    fn vod(buffer_s: f64) -> DecisionPoint {
        DecisionPoint {
            now_s: 10.0,
            buffer_s,
            buffer_target_s: 30.0,
            upcoming: Upcoming { duration_s: 4.0, listed_after_s: 100.0, ended: true },
        }
    }

    #[test]
    fn an_empty_download_adds_no_throughput_sample_but_is_the_last_download() {
        let mut history = History::default();
        history.record(&download(2, 0.0, 1.0, 0));
        let ladder = test_ladder();
        let input = history.input(&ladder, 5, &vod(10.0));
        assert!(input.past_throughputs_bps.is_empty());
        assert_eq!(input.current, Some(2));
        assert_eq!(input.last_download.map(|d| d.bytes), Some(0));
    }

    #[test]
    fn an_instant_download_is_floored_not_infinite() {
        let mut history = History::default();
        history.record(&download(0, 5.0, 5.0, 1000));
        let ladder = test_ladder();
        let input = history.input(&ladder, 5, &vod(10.0));
        assert_eq!(input.past_throughputs_bps, &[8000.0 / MIN_TRANSFER_S]);
        assert_eq!(input.last_download.map(|d| d.download_s), Some(MIN_TRANSFER_S));
    }

    #[test]
    fn live_plans_only_with_the_buffer_the_list_can_give() {
        let live =
            DecisionPoint { upcoming: Upcoming { duration_s: 4.0, listed_after_s: 8.0, ended: false }, ..vod(6.0) };
        assert_eq!(live.reachable_buffer_target_s(), 18.0);
        assert_eq!(live.remaining_s(), None);
        let deep = DecisionPoint { buffer_s: 25.0, ..live };
        assert_eq!(deep.reachable_buffer_target_s(), 30.0, "never above the configured target");
        assert_eq!(vod(6.0).reachable_buffer_target_s(), 30.0);
        assert_eq!(vod(6.0).remaining_s(), Some(100.0));
    }

    #[test]
    fn a_choice_stays_within_the_caps() {
        /// An algorithm that always wants the top and always abandons to the top.
        struct Greedy;
        impl AbrAlgorithm for Greedy {
            fn name(&self) -> &'static str {
                "greedy"
            }
            fn choose(&mut self, input: &AbrInput) -> usize {
                input.ladder.len() + 3
            }
            fn abandon(&mut self, input: &AbandonInput) -> Option<usize> {
                Some(input.ladder.len())
            }
        }
        let ladder = test_ladder();
        let history = History::default();
        assert_eq!(choose(&mut Greedy, &history.input(&ladder, 3, &vod(10.0))), 3);
        assert_eq!(choose(&mut Greedy, &history.input(&ladder, 0, &vod(10.0))), 0);
        let mut history = History::default();
        let at = |rung| AbandonPoint {
            now_s: 2.0,
            rung,
            progress: PartialTransfer { request_s: 0.0, first_byte_s: Some(0.1), bytes_so_far: 10 },
            bytes_total: 1_000_000,
            buffer_s: 1.0,
            segment_duration_s: 4.0,
        };
        assert_eq!(abandon(&mut Greedy, &history.abandon_input(&ladder, &at(4))), Some(3), "always lower");
        assert_eq!(abandon(&mut Greedy, &history.abandon_input(&ladder, &at(0))), None, "nothing below 0");
    }

    #[test]
    fn abandonment_is_once_per_segment_and_only_while_playing() {
        assert!(may_abandon(2, true, false));
        assert!(!may_abandon(0, true, false));
        assert!(!may_abandon(2, false, false));
        assert!(!may_abandon(2, true, true));
    }

    #[test]
    fn the_progress_of_a_collapsing_download_lowers_the_estimate_until_it_ends() {
        let mut history = History::default();
        for i in 0..5 {
            let t = f64::from(i) * 4.0;
            history.record(&download(3, t, t + 1.0, 1_000_000));
        }
        let settled = history.estimate_bps(30.0);
        let ladder = test_ladder();
        let at = AbandonPoint {
            now_s: 32.0,
            rung: 3,
            progress: PartialTransfer { request_s: 30.0, first_byte_s: Some(30.05), bytes_so_far: 1000 },
            bytes_total: 1_000_000,
            buffer_s: 10.0,
            segment_duration_s: 4.0,
        };
        let input = history.abandon_input(&ladder, &at);
        assert!(input.partial_bps.is_some_and(|bps| bps < 10_000.0));
        assert!(history.estimate_bps(32.0) < settled / 100.0);
        history.interrupted();
        assert_eq!(history.estimate_bps(32.0), settled);
        assert!(abandon(&mut EddyAbr::new(), &history.abandon_input(&ladder, &at)).is_some());
    }
}
