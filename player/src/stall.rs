//! Stall detection as a pure state machine: the session feeds it the media buffered ahead of the
//! playback position (pushed media minus played time, both measured), and it says when to pause the
//! pipeline and when to resume. A stall starts when the buffer ahead reaches zero and ends once
//! [`RESUME_THRESHOLD_S`] is buffered again (ExoPlayer resumes after 2 s of media following a
//! rebuffer), or when everything left has been pushed.

/// Buffer ahead at or under which playback is considered starved (seconds).
pub const STARVED_S: f64 = 0.05;
/// Media buffered again before a stalled playback resumes (seconds).
pub const RESUME_THRESHOLD_S: f64 = 2.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StallAction {
    None,
    Pause,
    Resume,
}

#[derive(Debug, Clone)]
pub struct StallTracker {
    stalled_since_s: Option<f64>,
    resume_threshold_s: f64,
    pub count: u32,
    pub total_s: f64,
}

impl Default for StallTracker {
    fn default() -> Self {
        Self::new(RESUME_THRESHOLD_S)
    }
}

impl StallTracker {
    /// `resume_threshold_s` is capped by the caller at its buffer target (it could never be reached
    /// above it, since fetching pauses there).
    pub fn new(resume_threshold_s: f64) -> Self {
        Self { stalled_since_s: None, resume_threshold_s, count: 0, total_s: 0.0 }
    }

    /// The buffer playback resumes at after running dry (a seek refills to it too).
    pub fn resume_threshold_s(&self) -> f64 {
        self.resume_threshold_s
    }

    pub fn is_stalled(&self) -> bool {
        self.stalled_since_s.is_some()
    }

    /// `all_pushed`: the pipeline holds all the media this playback will play (the last segment, or
    /// enough for `--duration`), so nothing more will arrive and an empty buffer is the end.
    pub fn update(&mut self, now_s: f64, buffer_ahead_s: f64, all_pushed: bool) -> StallAction {
        match self.stalled_since_s {
            None if buffer_ahead_s <= STARVED_S && !all_pushed => {
                self.stalled_since_s = Some(now_s);
                self.count += 1;
                StallAction::Pause
            }
            Some(since) if buffer_ahead_s >= self.resume_threshold_s || all_pushed => {
                self.total_s += (now_s - since).max(0.0);
                self.stalled_since_s = None;
                StallAction::Resume
            }
            _ => StallAction::None,
        }
    }

    /// Stall time including a stall still in progress at `now_s`.
    pub fn total_at(&self, now_s: f64) -> f64 {
        self.total_s + self.stalled_since_s.map_or(0.0, |since| (now_s - since).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starving_pauses_and_refilling_resumes() {
        let mut tracker = StallTracker::default();
        assert_eq!(tracker.update(0.0, 3.0, false), StallAction::None);
        assert_eq!(tracker.update(1.0, 0.0, false), StallAction::Pause);
        assert_eq!(tracker.update(1.5, 1.0, false), StallAction::None);
        assert!((tracker.total_at(1.5) - 0.5).abs() < 1e-9);
        assert_eq!(tracker.update(2.0, 2.5, false), StallAction::Resume);
        assert_eq!(tracker.count, 1);
        assert!((tracker.total_s - 1.0).abs() < 1e-9);
    }

    #[test]
    fn the_end_of_the_stream_is_not_a_stall() {
        let mut tracker = StallTracker::default();
        assert_eq!(tracker.update(5.0, 0.0, true), StallAction::None);
        assert_eq!(tracker.count, 0);
        assert_eq!(tracker.update(5.0, 0.0, false), StallAction::Pause);
        assert_eq!(tracker.update(5.5, 0.5, true), StallAction::Resume);
    }
}
