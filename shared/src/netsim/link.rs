//! A shaped link: one bottleneck, following a [`Trace`], shared by every flow that crosses it.
//!
//! The decisions are pure ([`LinkSchedule`], [`simulate`]): each flow hands the link one small chunk at
//! a time and the link books it after everything booked before, so the flows' chunks interleave and
//! together they get the trace's rate — a player's prefetch shares the bandwidth instead of doubling
//! it. [`Link`] is the thin async shell that sleeps until a booked chunk has crossed.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use super::trace::Trace;

/// How much link time one chunk should take: small enough that bytes arrive smoothly and flows
/// interleave finely, large enough to keep the number of wake-ups low.
const CHUNK_TIME_S: f64 = 0.02;
/// How late a sender may hand over its next chunk and still continue where the link left off.
/// Timers wake up to a millisecond late; without this grace every chunk would lose that much and a
/// single download would run a few percent below the trace.
pub const IDLE_GRACE_S: f64 = 0.005;
/// Bounds of a chunk: one packet at least, 64 KiB at most.
pub const MIN_CHUNK_BYTES: usize = 1500;
pub const MAX_CHUNK_BYTES: usize = 64 * 1024;

/// The pure state of a shaped link: when it has finished carrying everything booked so far.
#[derive(Debug, Clone)]
pub struct LinkSchedule {
    trace: Trace,
    busy_until_s: f64,
}

impl LinkSchedule {
    pub fn new(trace: Trace) -> LinkSchedule {
        LinkSchedule { trace, busy_until_s: 0.0 }
    }

    pub fn trace(&self) -> &Trace {
        &self.trace
    }

    /// When the link will have carried everything booked so far (link time, seconds).
    pub fn busy_until_s(&self) -> f64 {
        self.busy_until_s
    }

    /// Size of the next chunk a flow should hand over at `now_s`: about 20 ms of link time at the
    /// rate it will be sent at, between [`MIN_CHUNK_BYTES`] and [`MAX_CHUNK_BYTES`].
    pub fn chunk_size(&self, now_s: f64) -> usize {
        let rate = self.trace.bandwidth_at(now_s.max(self.busy_until_s));
        let bytes = rate * CHUNK_TIME_S / 8.0;
        (bytes as usize).clamp(MIN_CHUNK_BYTES, MAX_CHUNK_BYTES)
    }

    /// Books the link for `bytes` that are ready to go at `now_s`; returns the link time at which the
    /// last of them has crossed. Time the link sat idle is lost, not saved up as a burst — except
    /// for [`IDLE_GRACE_S`], so a sender that wakes a timer tick late still goes back to back.
    pub fn reserve(&mut self, now_s: f64, bytes: u64) -> f64 {
        let start = if now_s - self.busy_until_s <= IDLE_GRACE_S { self.busy_until_s } else { now_s };
        let end = start + self.trace.transfer_time(start, bytes);
        self.busy_until_s = end;
        end
    }
}

/// One download in a virtual-time [`simulate`] run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Download {
    /// When the request is made (link time, seconds).
    pub start_s: f64,
    pub bytes: u64,
}

/// One chunk of a download that crossed the link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Delivery {
    /// Index of the download in the input.
    pub flow: usize,
    /// When the chunk had fully crossed (link time, seconds).
    pub at_s: f64,
    pub bytes: u64,
}

/// Runs `downloads` through one shared link in virtual time, exactly as the proxy paces them: each
/// waits `latency_s` for its first byte, then hands over one chunk at a time, the next when the
/// previous has crossed. Returns every chunk delivery in booking order.
pub fn simulate(trace: &Trace, latency_s: f64, downloads: &[Download]) -> Vec<Delivery> {
    let mut schedule = LinkSchedule::new(trace.clone());
    let mut ready_at: Vec<f64> = downloads.iter().map(|d| d.start_s + latency_s).collect();
    let mut remaining: Vec<u64> = downloads.iter().map(|d| d.bytes).collect();
    let mut deliveries = Vec::new();
    // The flow whose next chunk is ready first books next (ties: the earlier download).
    while let Some(flow) = (0..downloads.len())
        .filter(|&i| remaining[i] > 0)
        .min_by(|&a, &b| ready_at[a].total_cmp(&ready_at[b]).then(a.cmp(&b)))
    {
        let bytes = remaining[flow].min(schedule.chunk_size(ready_at[flow]) as u64);
        let at_s = schedule.reserve(ready_at[flow], bytes);
        if !at_s.is_finite() {
            break; // the trace ends holding 0 bit/s: nothing more ever crosses
        }
        deliveries.push(Delivery { flow, at_s, bytes });
        remaining[flow] -= bytes;
        ready_at[flow] = at_s;
    }
    deliveries
}

/// A shaped link for real connections: clone it into every connection so they all share it. Link
/// time 0 is the first time anything asks for the time (normally the first request), so a pattern
/// such as `3M@0s,600k@20s` is relative to the start of a session, not to when the proxy started.
#[derive(Clone)]
pub struct Link {
    inner: Arc<LinkInner>,
}

struct LinkInner {
    schedule: Mutex<LinkSchedule>,
    epoch: OnceLock<Instant>,
    latency: Duration,
}

impl Link {
    /// A link following `trace`, where every request waits `latency` before its first byte.
    pub fn new(trace: Trace, latency: Duration) -> Link {
        Link {
            inner: Arc::new(LinkInner {
                schedule: Mutex::new(LinkSchedule::new(trace)),
                epoch: OnceLock::new(),
                latency,
            }),
        }
    }

    pub fn latency(&self) -> Duration {
        self.inner.latency
    }

    /// The instant of link time 0 (fixed by the first call to this or [`Link::now_s`]).
    pub fn epoch(&self) -> Instant {
        *self.inner.epoch.get_or_init(Instant::now)
    }

    /// Link time now, seconds.
    pub fn now_s(&self) -> f64 {
        self.seconds_at(Instant::now())
    }

    /// Link time at `instant`, seconds (0 for instants before link time 0).
    pub fn seconds_at(&self, instant: Instant) -> f64 {
        instant.saturating_duration_since(self.epoch()).as_secs_f64()
    }

    /// Waits until the first byte of a request that arrived at `arrived` may go out.
    pub async fn wait_first_byte(&self, arrived: Instant) {
        tokio::time::sleep_until(arrived + self.inner.latency).await;
    }

    /// How many bytes a flow should send next (see [`LinkSchedule::chunk_size`]).
    pub fn chunk_size(&self) -> usize {
        let now = self.now_s();
        self.schedule().chunk_size(now)
    }

    /// Books `bytes` on the link and waits until they have crossed it. Returns false if the trace
    /// never carries them (it ends holding 0 bit/s).
    pub async fn send(&self, bytes: usize) -> bool {
        let now = self.now_s();
        let done_s = self.schedule().reserve(now, bytes as u64);
        if !done_s.is_finite() {
            return false;
        }
        tokio::time::sleep_until(self.epoch() + Duration::from_secs_f64(done_s)).await;
        true
    }

    fn schedule(&self) -> std::sync::MutexGuard<'_, LinkSchedule> {
        // The schedule is a pair of numbers, consistent even if a holder panicked.
        self.inner.schedule.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netsim::trace::{generate, Family};

    /// Bytes of `flow` (or all flows) delivered by `t_s`.
    fn delivered_by(deliveries: &[Delivery], flow: Option<usize>, t_s: f64) -> f64 {
        deliveries.iter().filter(|d| d.at_s <= t_s && flow.is_none_or(|f| d.flow == f)).map(|d| d.bytes as f64).sum()
    }

    fn within(actual: f64, expected: f64, tolerance: f64) -> bool {
        (actual - expected).abs() <= tolerance * expected
    }

    /// While the link is kept busy, the bytes delivered by every second never exceed what the trace
    /// can carry, and from 5 s on (when one chunk is a small part of the total) match it within 2%.
    fn assert_follows_trace(trace: &Trace, downloads: &[Download], latency_s: f64, until_s: f64) {
        let deliveries = simulate(trace, latency_s, downloads);
        let first_byte_s = downloads[0].start_s + latency_s;
        let mut t = first_byte_s + 0.5;
        while t <= until_s {
            let expected = trace.bits_between(first_byte_s, t) / 8.0;
            let actual = delivered_by(&deliveries, None, t);
            assert!(
                actual <= expected * (1.0 + 1e-9),
                "at {t:.1} s delivered {actual} bytes, more than the trace's {expected}"
            );
            if t >= first_byte_s + 5.0 {
                assert!(
                    within(actual, expected, 0.02),
                    "at {t:.1} s delivered {actual} bytes, trace allows {expected}"
                );
            }
            t += 0.5;
        }
    }

    #[test]
    fn delivered_bytes_follow_a_constant_rate() {
        let trace = Trace::constant(2e6).unwrap();
        assert_follows_trace(&trace, &[Download { start_s: 0.0, bytes: 10_000_000 }], 0.05, 30.0);
    }

    #[test]
    fn delivered_bytes_follow_steps_square_waves_and_random_traces() {
        // One download that keeps the link busy a little past the checked window.
        let busy = |trace: &Trace, until_s: f64| {
            [Download { start_s: 0.0, bytes: (trace.cumulative_bits(until_s + 2.0) / 8.0) as u64 }]
        };
        for pattern in ["3M@0s,600k@20s,3M@40s", "square:5M:300k:10s", "sawtooth:8M:500k:7s"] {
            let trace = Trace::from_pattern(pattern).unwrap();
            assert_follows_trace(&trace, &busy(&trace, 60.0), 0.0, 60.0);
        }
        for family in Family::ALL {
            let trace = generate(family, 3, 60.0);
            assert_follows_trace(&trace, &busy(&trace, 120.0), 0.1, 120.0); // across the loop point too
        }
    }

    #[test]
    fn a_download_finishes_when_the_trace_has_carried_it() {
        let trace = Trace::from_pattern("3M@0s,600k@20s,3M@40s").unwrap();
        let deliveries = simulate(&trace, 0.1, &[Download { start_s: 18.0, bytes: 1_000_000 }]);
        let end = deliveries.last().map(|d| d.at_s).unwrap();
        let expected = 18.1 + trace.transfer_time(18.1, 1_000_000);
        assert!((end - expected).abs() < 1e-6, "{end} vs {expected}");
        assert!(deliveries.iter().all(|d| d.bytes as usize <= MAX_CHUNK_BYTES));
    }

    #[test]
    fn concurrent_flows_share_the_link_instead_of_doubling_it() {
        let trace = Trace::constant(2e6).unwrap();
        let downloads = [Download { start_s: 0.0, bytes: 1_000_000 }, Download { start_s: 0.0, bytes: 1_000_000 }];
        let deliveries = simulate(&trace, 0.0, &downloads);
        // Together: 2 MB at 2 Mbit/s = 8 s, however many connections.
        for t in [1.0, 2.0, 4.0, 6.0, 7.9] {
            let together = delivered_by(&deliveries, None, t);
            assert!(within(together, t * 250_000.0, 0.02), "at {t} s together {together}");
            for flow in 0..2 {
                let alone = delivered_by(&deliveries, Some(flow), t);
                assert!(within(alone, t * 125_000.0, 0.05), "at {t} s flow {flow} got {alone}");
            }
        }
        let finish = |flow| deliveries.iter().filter(|d| d.flow == flow).map(|d| d.at_s).fold(0.0, f64::max);
        assert!(within(finish(0), 8.0, 0.02) && within(finish(1), 8.0, 0.02), "{} {}", finish(0), finish(1));
    }

    #[test]
    fn a_prefetch_joining_later_takes_half_and_the_total_still_follows_the_trace() {
        let trace = Trace::from_pattern("4M@0s,1M@5s,4M@10s").unwrap();
        let downloads = [
            Download { start_s: 0.0, bytes: 20_000_000 },
            Download { start_s: 3.0, bytes: 20_000_000 },
            Download { start_s: 7.5, bytes: 300_000 },
        ];
        assert_follows_trace(&trace, &downloads, 0.0, 20.0);
        let deliveries = simulate(&trace, 0.0, &downloads);
        // Between 11 s and 15 s only the two big flows are active: 2 Mbit/s each.
        for flow in 0..2 {
            let share = delivered_by(&deliveries, Some(flow), 15.0) - delivered_by(&deliveries, Some(flow), 11.0);
            assert!(within(share, 4.0 * 250_000.0, 0.05), "flow {flow} got {share}");
        }
    }

    #[test]
    fn chunks_are_about_twenty_milliseconds_of_link_time() {
        let schedule = LinkSchedule::new(Trace::constant(2e6).unwrap());
        assert_eq!(schedule.chunk_size(0.0), 5_000);
        let slow = LinkSchedule::new(Trace::constant(100e3).unwrap());
        assert_eq!(slow.chunk_size(0.0), MIN_CHUNK_BYTES);
        let fast = LinkSchedule::new(Trace::constant(1e9).unwrap());
        assert_eq!(fast.chunk_size(0.0), MAX_CHUNK_BYTES);
    }

    #[test]
    fn an_idle_link_does_not_save_up_a_burst() {
        let mut schedule = LinkSchedule::new(Trace::constant(8e6).unwrap());
        assert!((schedule.reserve(0.0, 1_000_000) - 1.0).abs() < 1e-9);
        // Idle from 1 s to 5 s; the next megabyte still takes a full second.
        assert!((schedule.reserve(5.0, 1_000_000) - 6.0).abs() < 1e-9);
    }

    #[test]
    fn a_sender_waking_a_tick_late_continues_back_to_back() {
        let mut schedule = LinkSchedule::new(Trace::constant(8e6).unwrap());
        let mut done = 0.0;
        for _ in 0..100 {
            done = schedule.reserve(done + 0.001, 10_000);
        }
        // 1 MB at 1 MB/s: one second, not 100 ms more for 100 late wake-ups.
        assert!((done - 1.0).abs() < 1e-9, "{done}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_async_link_paces_concurrent_senders_together() {
        let link = Link::new(Trace::constant(2e6).unwrap(), Duration::from_millis(50));
        let start = link.epoch();
        let flows: Vec<_> = (0..2)
            .map(|_| {
                let link = link.clone();
                tokio::spawn(async move {
                    link.wait_first_byte(start).await;
                    let mut left = 250_000usize;
                    while left > 0 {
                        let chunk = link.chunk_size().min(left);
                        assert!(link.send(chunk).await);
                        left -= chunk;
                    }
                    link.now_s()
                })
            })
            .collect();
        let mut finished = Vec::new();
        for flow in flows {
            finished.push(flow.await.unwrap());
        }
        // 500 kB at 2 Mbit/s after 50 ms: the last byte at 2.05 s, and both flows end within one
        // chunk (20 ms) of it: they shared the link, neither had it alone.
        let last = finished.iter().copied().fold(0.0, f64::max);
        assert!((last - 2.05).abs() < 0.002, "finished at {finished:?}");
        assert!(finished.iter().all(|&f| f >= 2.05 - 0.021), "finished at {finished:?}");
    }
}
