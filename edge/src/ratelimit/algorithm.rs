//! The four limiting algorithms as pure state machines: a state, a policy and the current time (in
//! microseconds, from any fixed origin) in; a decision out. No clock, no I/O: the local store calls these
//! with a monotonic clock, the unit tests with virtual time, and the Redis store runs Lua scripts that
//! mirror them line for line (see `redis_store.rs`), so both stores have the same semantics.

use std::collections::VecDeque;

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Tokens refill at the rate up to `burst`; each request takes one. Smooth, allows bursts.
    #[default]
    TokenBucket,
    /// At most N per calendar window of the period. Cheap; up to 2N across a window boundary.
    FixedWindow,
    /// Exact: at most N in any period, from a timestamp per allowed request (memory grows with N).
    SlidingLog,
    /// Two fixed windows weighted into an estimate of the sliding count (Cloudflare's approximation).
    SlidingWindow,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::TokenBucket => "token_bucket",
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::SlidingLog => "sliding_log",
            Algorithm::SlidingWindow => "sliding_window",
        }
    }

    /// Short tag in store keys, so that changing the algorithm never meets the old state's shape.
    pub fn key_tag(self) -> &'static str {
        match self {
            Algorithm::TokenBucket => "tb",
            Algorithm::FixedWindow => "fw",
            Algorithm::SlidingLog => "sl",
            Algorithm::SlidingWindow => "sw",
        }
    }
}

/// What a client may do: `limit` requests per `period_us`, and for the token bucket a capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub algorithm: Algorithm,
    pub limit: u64,
    pub period_us: u64,
    /// Token bucket capacity (at least 1 unless `limit` is 0). Unused by the window algorithms.
    pub burst: u64,
}

impl Policy {
    /// `limit = 0`: every request is refused, without touching any store.
    pub fn blocks_all(&self) -> bool {
        self.limit == 0
    }

    /// The quota advertised to clients (`q` of RateLimit-Policy): the bucket's capacity, or N per window.
    pub fn quota(&self) -> u64 {
        match self.algorithm {
            Algorithm::TokenBucket => self.burst,
            _ => self.limit,
        }
    }

    /// The window of that quota, in microseconds: for the bucket, the time an empty bucket takes to fill.
    pub fn quota_window_us(&self) -> u64 {
        match self.algorithm {
            Algorithm::TokenBucket if self.limit > 0 => {
                ((self.burst as f64) * self.token_interval_us()).ceil().max(1.0) as u64
            }
            _ => self.period_us,
        }
    }

    /// Microseconds per token.
    pub fn token_interval_us(&self) -> f64 {
        self.period_us as f64 / self.limit.max(1) as f64
    }
}

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests still allowed right now after this one.
    pub remaining: u64,
    /// Time until the next request would be allowed (0 when `remaining > 0`).
    pub retry_after_us: u64,
    /// Time until the quota is whole again (bucket full, window over, log empty).
    pub reset_us: u64,
}

impl Decision {
    /// The answer for a policy that blocks everything: retry in a period (it will not help, but
    /// clients get a sane back-off).
    pub fn blocked(policy: &Policy) -> Decision {
        Decision { allowed: false, remaining: 0, retry_after_us: policy.period_us, reset_us: policy.period_us }
    }
}

/// One client's counters.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Bucket { tokens: f64, at_us: u64 },
    Fixed { window: u64, count: u64 },
    Log(VecDeque<u64>),
    Sliding { window: u64, count: u64, previous: u64 },
}

impl State {
    /// When this state is back to "never seen" and may be forgotten.
    pub fn expires_at_us(&self, policy: &Policy) -> u64 {
        match self {
            State::Bucket { tokens, at_us } => {
                let missing = (policy.burst as f64 - tokens).max(0.0);
                at_us.saturating_add((missing * policy.token_interval_us()).ceil() as u64)
            }
            State::Fixed { window, .. } => (window + 1).saturating_mul(policy.period_us),
            State::Log(log) => log.back().map_or(0, |t| t.saturating_add(policy.period_us)),
            State::Sliding { window, .. } => (window + 2).saturating_mul(policy.period_us),
        }
    }
}

/// Decides one request at `now_us`, updating `state` (created on first use; replaced when the policy's
/// algorithm changed). Denied requests do not consume quota.
pub fn decide(policy: &Policy, state: &mut Option<State>, now_us: u64) -> Decision {
    if policy.blocks_all() {
        return Decision::blocked(policy);
    }
    match policy.algorithm {
        Algorithm::TokenBucket => token_bucket(policy, state, now_us),
        Algorithm::FixedWindow => fixed_window(policy, state, now_us),
        Algorithm::SlidingLog => sliding_log(policy, state, now_us),
        Algorithm::SlidingWindow => sliding_window(policy, state, now_us),
    }
}

fn token_bucket(policy: &Policy, state: &mut Option<State>, now: u64) -> Decision {
    let capacity = policy.burst as f64;
    let interval = policy.token_interval_us();
    let (mut tokens, mut at) = match state {
        Some(State::Bucket { tokens, at_us }) => (*tokens, *at_us),
        _ => (capacity, now),
    };
    if now > at {
        tokens = (tokens + (now - at) as f64 / interval).min(capacity);
        at = now;
    }
    let allowed = tokens >= 1.0;
    if allowed {
        tokens -= 1.0;
    }
    *state = Some(State::Bucket { tokens, at_us: at });
    let retry_after_us = if tokens >= 1.0 { 0 } else { ((1.0 - tokens) * interval).ceil() as u64 };
    Decision {
        allowed,
        remaining: tokens.floor() as u64,
        retry_after_us,
        reset_us: ((capacity - tokens) * interval).ceil() as u64,
    }
}

fn fixed_window(policy: &Policy, state: &mut Option<State>, now: u64) -> Decision {
    let window = now / policy.period_us;
    let mut count = match state {
        Some(State::Fixed { window: w, count }) if *w == window => *count,
        _ => 0,
    };
    let allowed = count < policy.limit;
    if allowed {
        count += 1;
    }
    *state = Some(State::Fixed { window, count });
    let until_end = (window + 1) * policy.period_us - now;
    let remaining = policy.limit - count;
    Decision { allowed, remaining, retry_after_us: if remaining > 0 { 0 } else { until_end }, reset_us: until_end }
}

fn sliding_log(policy: &Policy, state: &mut Option<State>, now: u64) -> Decision {
    if !matches!(state, Some(State::Log(_))) {
        *state = Some(State::Log(VecDeque::new()));
    }
    let Some(State::Log(log)) = state else { unreachable!("just set") };
    // A request at t counts while now - t < period.
    while log.front().is_some_and(|t| t + policy.period_us <= now) {
        log.pop_front();
    }
    let allowed = (log.len() as u64) < policy.limit;
    if allowed {
        log.push_back(now);
    }
    let remaining = policy.limit - log.len() as u64;
    let retry_after_us = match log.front() {
        Some(oldest) if remaining == 0 => oldest + policy.period_us - now,
        _ => 0,
    };
    let reset_us = log.back().map_or(0, |newest| newest + policy.period_us - now);
    Decision { allowed, remaining, retry_after_us, reset_us }
}

fn sliding_window(policy: &Policy, state: &mut Option<State>, now: u64) -> Decision {
    let period = policy.period_us;
    let limit = policy.limit as f64;
    let window = now / period;
    let elapsed = now - window * period;
    let (mut count, previous) = match state {
        Some(State::Sliding { window: w, count, previous }) if *w == window => (*count, *previous),
        Some(State::Sliding { window: w, count, .. }) if *w + 1 == window => (0, *count),
        _ => (0, 0),
    };
    let weight = (period - elapsed) as f64 / period as f64;
    let allowed = previous as f64 * weight + (count as f64) < limit;
    if allowed {
        count += 1;
    }
    *state = Some(State::Sliding { window, count, previous });
    let estimate = previous as f64 * weight + count as f64;
    let remaining = (limit - estimate).ceil().max(0.0) as u64;
    let until_end = period - elapsed;
    let retry_after_us = if remaining > 0 {
        0
    } else {
        sliding_retry(period as f64, limit, elapsed as f64, count as f64, previous as f64, until_end)
    };
    let reset_us = if count > 0 {
        until_end + period
    } else if previous > 0 {
        until_end
    } else {
        0
    };
    Decision { allowed, remaining, retry_after_us, reset_us }
}

/// Time until the two-window estimate drops below the limit: later in this window as the previous
/// window's weight fades, or else in the next window as this one's count fades.
fn sliding_retry(period: f64, limit: f64, elapsed: f64, count: f64, previous: f64, until_end: u64) -> u64 {
    if count < limit && previous > 0.0 {
        // previous * (period - e) / period + count < limit  ⇔  e > period - (limit - count) * period / previous
        let at = period - (limit - count) * period / previous;
        if at < period {
            return ((at - elapsed).floor() + 1.0).max(1.0) as u64;
        }
    }
    // Next window: count * (period - e) / period < limit  ⇔  e > period * (1 - limit / count)
    let at = (period * (1.0 - limit / count.max(1.0))).max(0.0);
    until_end + at.floor() as u64 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000;

    fn policy(algorithm: Algorithm, limit: u64, period_us: u64, burst: u64) -> Policy {
        Policy { algorithm, limit, period_us, burst }
    }

    /// Sends a request every `step` from `from` (inclusive) to `to` (exclusive); counts the allowed ones.
    fn hammer(policy: &Policy, state: &mut Option<State>, from: u64, to: u64, step: u64) -> u64 {
        (from..to).step_by(step as usize).filter(|&t| decide(policy, state, t).allowed).count() as u64
    }

    fn all() -> [Algorithm; 4] {
        [Algorithm::TokenBucket, Algorithm::FixedWindow, Algorithm::SlidingLog, Algorithm::SlidingWindow]
    }

    #[test]
    fn token_bucket_allows_a_burst_up_to_its_size_then_the_rate() {
        let p = policy(Algorithm::TokenBucket, 100, SECOND, 200);
        let mut state = None;
        let t0 = 5 * SECOND;
        // All at the same instant: exactly the burst.
        let burst: Vec<Decision> = (0..250).map(|_| decide(&p, &mut state, t0)).collect();
        assert_eq!(burst.iter().filter(|d| d.allowed).count(), 200);
        assert_eq!(burst[0].remaining, 199);
        assert_eq!(burst[199].remaining, 0);
        assert!(!burst[200].allowed);
        assert_eq!(burst[200].retry_after_us, 10_000, "one token per 10 ms");
        assert_eq!(burst[200].reset_us, 2 * SECOND, "an empty bucket of 200 fills in 2 s at 100/s");
        // 10 ms later, exactly one more.
        assert!(decide(&p, &mut state, t0 + 10_000).allowed);
        assert!(!decide(&p, &mut state, t0 + 10_000).allowed);
    }

    #[test]
    fn token_bucket_holds_the_steady_rate_within_one_percent() {
        let p = policy(Algorithm::TokenBucket, 100, SECOND, 200);
        let mut state = None;
        // Drain the burst, then ask every 1 ms (10x the rate) for 60 s.
        for _ in 0..200 {
            decide(&p, &mut state, 0);
        }
        let allowed = hammer(&p, &mut state, 1, 60 * SECOND, 1000);
        let rate = allowed as f64 / 60.0;
        assert!((rate - 100.0).abs() <= 1.0, "steady rate {rate}/s");
    }

    #[test]
    fn fixed_window_allows_n_per_window_and_resets_at_the_boundary() {
        let p = policy(Algorithm::FixedWindow, 10, SECOND, 0);
        let mut state = None;
        let t = 7 * SECOND + 250_000; // a quarter into a window
        let decisions: Vec<Decision> = (0..12).map(|_| decide(&p, &mut state, t)).collect();
        assert_eq!(decisions.iter().filter(|d| d.allowed).count(), 10);
        assert_eq!(decisions[9].remaining, 0);
        assert_eq!(decisions[10].retry_after_us, 750_000, "until the window ends");
        assert!(!decide(&p, &mut state, 8 * SECOND - 1).allowed, "still the same window");
        let next = decide(&p, &mut state, 8 * SECOND);
        assert!(next.allowed, "a new window starts afresh");
        assert_eq!(next.remaining, 9);
    }

    #[test]
    fn sliding_log_is_exact_over_any_period() {
        let p = policy(Algorithm::SlidingLog, 5, SECOND, 0);
        let mut state = None;
        // 5 requests at 0.0, 0.1, ... 0.4 s; the 6th at 0.5 s is refused until 1.0 s.
        for i in 0..5 {
            assert!(decide(&p, &mut state, i * 100_000).allowed);
        }
        let refused = decide(&p, &mut state, 500_000);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after_us, 500_000, "the oldest leaves the window at 1.0 s");
        assert!(!decide(&p, &mut state, SECOND - 1).allowed);
        assert!(decide(&p, &mut state, SECOND).allowed, "the slot of the request at 0.0 s is free");
        assert!(!decide(&p, &mut state, SECOND).allowed);
        // Unlike a fixed window, no 2N across a boundary: any 1 s span holds at most 5.
        let mut state = None;
        let allowed = hammer(&p, &mut state, 0, 2 * SECOND, 1000);
        assert_eq!(allowed, 10);
    }

    #[test]
    fn sliding_window_weights_the_previous_window() {
        let p = policy(Algorithm::SlidingWindow, 10, SECOND, 0);
        let mut state = None;
        // 10 in window 0; at 1.5 s the estimate is 10 * 0.5 = 5: 5 more allowed.
        for _ in 0..10 {
            assert!(decide(&p, &mut state, 900_000).allowed);
        }
        assert!(!decide(&p, &mut state, 900_000).allowed);
        let allowed = (0..10).filter(|_| decide(&p, &mut state, 1_500_000).allowed).count();
        assert_eq!(allowed, 5);
        let refused = decide(&p, &mut state, 1_500_000);
        assert!(!refused.allowed);
        // 10 * (1 - e) + 5 < 10 ⇔ e > 0.5: the next request is allowed just after 1.5 s.
        assert_eq!(refused.retry_after_us, 1);
        assert!(decide(&p, &mut state, 1_500_000 + refused.retry_after_us).allowed);
        // Two idle windows later everything is forgotten.
        let fresh = decide(&p, &mut state, 3 * SECOND + 1);
        assert!(fresh.allowed);
        assert_eq!(fresh.remaining, 9);
    }

    #[test]
    fn sliding_window_retry_after_is_when_the_next_request_passes() {
        let p = policy(Algorithm::SlidingWindow, 10, SECOND, 0);
        let mut state = None;
        for _ in 0..10 {
            decide(&p, &mut state, 0);
        }
        let refused = decide(&p, &mut state, 0);
        assert!(!refused.allowed);
        // Next window: 10 * (1 - e) < 10 ⇔ e > 0: just after 1.0 s.
        assert_eq!(refused.retry_after_us, SECOND + 1);
        assert!(!decide(&p, &mut state, SECOND).allowed);
        assert!(decide(&p, &mut state, SECOND + 1).allowed);
    }

    #[test]
    fn window_algorithms_hold_the_steady_rate_within_one_percent() {
        for algorithm in [Algorithm::FixedWindow, Algorithm::SlidingLog, Algorithm::SlidingWindow] {
            let p = policy(algorithm, 100, SECOND, 0);
            let mut state = None;
            let allowed = hammer(&p, &mut state, 0, 100 * SECOND, 500);
            let rate = allowed as f64 / 100.0;
            assert!((rate - 100.0).abs() <= 1.0, "{algorithm:?}: steady rate {rate}/s");
        }
    }

    #[test]
    fn retry_after_is_honest_for_every_algorithm() {
        // Waiting exactly retry_after after a refusal always gets the next request through, and the
        // advertised remaining count is exactly what passes at that instant.
        for algorithm in all() {
            let p = policy(algorithm, 7, 3 * SECOND, 4);
            let mut state = None;
            let mut now = 123_456_789;
            for _ in 0..50 {
                let d = decide(&p, &mut state, now);
                if !d.allowed {
                    assert!(d.retry_after_us > 0, "{algorithm:?}");
                    now += d.retry_after_us;
                    assert!(decide(&p, &mut state, now).allowed, "{algorithm:?} at {now}");
                } else {
                    let mut probe = state.clone();
                    let passes = (0..20).take_while(|_| decide(&p, &mut probe, now).allowed).count() as u64;
                    assert_eq!(passes, d.remaining, "{algorithm:?}: remaining");
                }
                now += 137_000;
            }
        }
    }

    #[test]
    fn zero_rate_blocks_everything() {
        for algorithm in all() {
            let p = policy(algorithm, 0, SECOND, 0);
            let mut state = None;
            let d = decide(&p, &mut state, 42);
            assert!(!d.allowed);
            assert_eq!(d.retry_after_us, SECOND);
            assert!(state.is_none(), "a blocked client needs no counters");
        }
    }

    #[test]
    fn states_expire_once_the_client_is_whole_again() {
        for algorithm in all() {
            let p = policy(algorithm, 10, SECOND, 10);
            let mut state = None;
            decide(&p, &mut state, 5 * SECOND);
            let expires = state.as_ref().map(|s| s.expires_at_us(&p)).unwrap_or_default();
            assert!(expires > 5 * SECOND && expires <= 7 * SECOND, "{algorithm:?}: {expires}");
            // After expiry a fresh state decides the same as the old one would.
            let mut fresh = None;
            let old = decide(&p, &mut state, expires);
            let new = decide(&p, &mut fresh, expires);
            assert_eq!(old.allowed, new.allowed, "{algorithm:?}");
            assert_eq!(old.remaining, new.remaining, "{algorithm:?}");
        }
    }
}
