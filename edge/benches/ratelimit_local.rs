//! Micro-benchmark of the local rate-limit store, the cost of one decision:
//! - `rotating/N`: N distinct identities (1K, 64K, 256K, 1M) ask in turn, each request from the next one;
//! - `fresh_after/1048576`: once the store holds 1M identities, every request brings a new one, as a
//!   client rotating spoofed identities would;
//! - `one_client`: one identity asks again and again.
//!
//! The per-request cost should not grow with the number of identities.
//!
//! Run: `cargo bench -p eddy-edge --bench ratelimit_local` (about a minute; it builds 1M identities).
//! Time is virtual (`decide_at`, 1 µs per request) and every state outlives the run (100/h), so nothing
//! expires: what is measured is lookup, decision and, past the store's bound, eviction.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use eddy_edge::ratelimit::local::LocalStore;
use eddy_edge::ratelimit::{Algorithm, Policy};

const POLICY: Policy = Policy { algorithm: Algorithm::TokenBucket, limit: 100, period_us: 3_600_000_000, burst: 100 };

/// `ip:` identities as the peer rule makes them, distinct for `i` below 2^24.
fn identity(i: u32) -> String {
    format!("ip:10.{}.{}.{}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff)
}

/// Resident memory of this process (Linux), to tell what one remembered identity costs.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn rotating(c: &mut Criterion) {
    let mut group = c.benchmark_group("ratelimit_local");
    group.throughput(Throughput::Elements(1));
    for count in [1_000u32, 64 * 1024, 256 * 1024, 1024 * 1024] {
        let keys: Vec<String> = (0..count).map(identity).collect();
        let rss_before = resident_bytes();
        let store = LocalStore::new();
        let mut now = 1_000_000u64;
        for key in &keys {
            store.decide_at(key, &POLICY, now);
            now += 1;
        }
        if let (Some(before), Some(after)) = (rss_before, resident_bytes()) {
            let each = after.saturating_sub(before) / u64::from(count);
            eprintln!("ratelimit_local: {count} identities: {} tracked, ~{each} bytes of memory each", store.len());
        }
        let mut next = 0usize;
        group.bench_function(BenchmarkId::new("rotating", count), |b| {
            b.iter(|| {
                next = (next + 1) % keys.len();
                now += 1;
                black_box(store.decide_at(&keys[next], &POLICY, now))
            })
        });
        if count == 1024 * 1024 {
            // The attack: a flood of identities never seen before, into a store that is already full.
            // Each key is formatted in the loop (there are more than could be built up front); that costs
            // the same before and after.
            let mut fresh = u64::from(count);
            group.bench_function(BenchmarkId::new("fresh_after", count), |b| {
                b.iter(|| {
                    fresh += 1;
                    now += 1;
                    let key = format!("ip:2001:db8::{:x}:{:x}", fresh >> 16, fresh & 0xffff);
                    black_box(store.decide_at(&key, &POLICY, now))
                })
            });
        }
    }
    group.finish();
}

fn one_client(c: &mut Criterion) {
    // A bucket that a request per µs cannot empty within the run, and that never fills up (a full
    // bucket is back to "never seen" and may be forgotten): every decision is an allowed lookup.
    let policy = Policy { algorithm: Algorithm::TokenBucket, limit: 1 << 30, period_us: 3_600_000_000, burst: 1 << 30 };
    let store = LocalStore::new();
    let mut now = 1_000_000u64;
    c.bench_function("ratelimit_local/one_client", |b| {
        b.iter(|| {
            now += 1;
            black_box(store.decide_at(black_box("ip:192.0.2.7"), &policy, now))
        })
    });
}

criterion_group! {
    name = benches;
    // Short: this is run by hand to compare store designs, not in CI.
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = rotating, one_client
}
criterion_main!(benches);
