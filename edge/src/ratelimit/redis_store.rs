//! The fleet's store: counters in Redis (one server or a Cluster), one atomic Lua script per algorithm
//! mirroring `algorithm.rs`, so that a decision is one round trip (`EVALSHA`) and every edge sharing the
//! Redis enforces one limit. Time comes from Redis (`TIME`), so edges with skewed clocks still agree.
//!
//! Connections are multiplexed and pooled by the redis crate (`ConnectionManager` for one server, the
//! cluster connection for a Cluster) and reconnect by themselves. Every call has a short timeout; after
//! a failure the store is skipped for a moment (a small circuit breaker), so that an outage costs the
//! request path nothing but the fallback decision.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::Script;
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::sync::OnceCell;

use super::algorithm::{Algorithm, Decision, Policy};
use super::config::StoreSpec;

/// The longest a decision may wait for Redis before the request is decided without it.
pub const STORE_TIMEOUT: Duration = Duration::from_millis(200);
/// After a failure, requests skip Redis for this long (then the next request tries again).
pub const BREAKER: Duration = Duration::from_millis(500);

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis is being skipped after a recent failure")]
    Skipped,
    #[error("redis returned an unexpected reply: {0}")]
    BadReply(String),
}

/// Shared preamble of every script: Redis's clock in microseconds and the policy.
/// ARGV: limit, period (µs), burst, nonce, and optionally the time in µs (only tests pass it, to compare
/// the scripts with `algorithm.rs` in virtual time). Each script returns
/// {allowed, remaining, retry_after_us, reset_us}. Keys live `EXPIRY_SLACK_MS` past the end of their state.
const PRELUDE: &str = r"
local now = tonumber(ARGV[5])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local key = KEYS[1]
";

const TOKEN_BUCKET: &str = r"
local interval = period / limit
local s = redis.call('HMGET', key, 'tokens', 'at')
local tokens = tonumber(s[1])
local at = tonumber(s[2])
if tokens == nil or at == nil then tokens = burst; at = now end
if now > at then
  tokens = math.min(burst, tokens + (now - at) / interval)
  at = now
end
local allowed = 0
if tokens >= 1 then tokens = tokens - 1; allowed = 1 end
local retry = 0
if tokens < 1 then retry = math.ceil((1 - tokens) * interval) end
local reset = math.ceil((burst - tokens) * interval)
redis.call('HSET', key, 'tokens', string.format('%.17g', tokens), 'at', string.format('%.0f', at))
redis.call('PEXPIRE', key, math.ceil(reset / 1000) + 10000)
return {allowed, math.floor(tokens), retry, reset}
";

const FIXED_WINDOW: &str = r"
local window = math.floor(now / period)
local s = redis.call('HMGET', key, 'window', 'count')
local count = 0
if tonumber(s[1]) == window then count = tonumber(s[2]) or 0 end
local allowed = 0
if count < limit then count = count + 1; allowed = 1 end
local until_end = (window + 1) * period - now
redis.call('HSET', key, 'window', string.format('%.0f', window), 'count', count)
redis.call('PEXPIRE', key, math.ceil(until_end / 1000) + 10000)
local remaining = limit - count
local retry = 0
if remaining <= 0 then retry = until_end end
return {allowed, remaining, retry, until_end}
";

const SLIDING_LOG: &str = r"
redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%.0f', now - period))
local count = redis.call('ZCARD', key)
local allowed = 0
if count < limit then
  local stamp = string.format('%.0f', now)
  redis.call('ZADD', key, stamp, stamp .. '-' .. ARGV[4])
  count = count + 1
  allowed = 1
end
local remaining = limit - count
local retry = 0
local reset = 0
if count > 0 then
  local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  reset = tonumber(newest[2]) + period - now
  if remaining <= 0 then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    retry = tonumber(oldest[2]) + period - now
  end
  redis.call('PEXPIRE', key, math.ceil(reset / 1000) + 10000)
end
return {allowed, remaining, retry, reset}
";

const SLIDING_WINDOW: &str = r"
local window = math.floor(now / period)
local elapsed = now - window * period
local s = redis.call('HMGET', key, 'window', 'count', 'previous')
local w = tonumber(s[1])
local count = 0
local previous = 0
if w == window then
  count = tonumber(s[2]) or 0
  previous = tonumber(s[3]) or 0
elseif w == window - 1 then
  previous = tonumber(s[2]) or 0
end
local weight = (period - elapsed) / period
local allowed = 0
if previous * weight + count < limit then count = count + 1; allowed = 1 end
local estimate = previous * weight + count
local remaining = math.max(0, math.ceil(limit - estimate))
local until_end = period - elapsed
local retry = 0
if remaining <= 0 then
  retry = -1
  if count < limit and previous > 0 then
    local at = period - (limit - count) * period / previous
    if at < period then retry = math.max(1, math.floor(at - elapsed) + 1) end
  end
  if retry < 0 then
    local at = math.max(0, period * (1 - limit / math.max(count, 1)))
    retry = until_end + math.floor(at) + 1
  end
end
local reset = 0
if count > 0 then reset = until_end + period elseif previous > 0 then reset = until_end end
redis.call('HSET', key, 'window', string.format('%.0f', window), 'count', count, 'previous', previous)
redis.call('PEXPIRE', key, math.ceil((until_end + period) / 1000) + 10000)
return {allowed, remaining, retry, reset}
";

#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

pub struct RedisStore {
    spec: StoreSpec,
    connection: OnceCell<Connection>,
    scripts: [Script; 4],
    key_prefix: String,
    /// Makes sliding-log members unique across edges and requests.
    nonce_base: String,
    nonce_seq: AtomicU64,
    started: Instant,
    /// Microseconds (on `started`'s clock) before which Redis is not tried.
    skip_until_us: AtomicU64,
}

impl RedisStore {
    /// No I/O here: the connection is made on first use (and remade by the redis crate after failures).
    pub fn new(spec: StoreSpec, key_prefix: &str) -> RedisStore {
        let script = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        RedisStore {
            spec,
            connection: OnceCell::new(),
            scripts: [script(TOKEN_BUCKET), script(FIXED_WINDOW), script(SLIDING_LOG), script(SLIDING_WINDOW)],
            key_prefix: key_prefix.to_string(),
            nonce_base: format!("{:x}.{:x}", std::process::id(), nanos & 0xffff_ffff_ffff),
            nonce_seq: AtomicU64::new(0),
            started: Instant::now(),
            skip_until_us: AtomicU64::new(0),
        }
    }

    /// The Redis key of a client's state under a policy. The identity sits in a hash tag (`{…}`) so that
    /// all of one client's keys live in one Cluster slot.
    pub fn key(&self, client: &str, algorithm: Algorithm) -> String {
        format!("{}{{{}}}:{}", self.key_prefix, key_safe(client), algorithm.key_tag())
    }

    pub async fn decide(&self, client: &str, policy: &Policy) -> Result<Decision, StoreError> {
        self.decide_at(client, policy, None).await
    }

    /// As `decide`; `at` (µs) replaces Redis's clock, for tests in virtual time.
    pub async fn decide_at(&self, client: &str, policy: &Policy, at: Option<u64>) -> Result<Decision, StoreError> {
        let now = self.started.elapsed().as_micros() as u64;
        if now < self.skip_until_us.load(Ordering::Relaxed) {
            return Err(StoreError::Skipped);
        }
        let result = match tokio::time::timeout(STORE_TIMEOUT, self.run(client, policy, at)).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout(STORE_TIMEOUT)),
        };
        if result.is_err() {
            let until = self.started.elapsed().as_micros() as u64 + BREAKER.as_micros() as u64;
            self.skip_until_us.store(until, Ordering::Relaxed);
        }
        result
    }

    async fn run(&self, client: &str, policy: &Policy, at: Option<u64>) -> Result<Decision, StoreError> {
        let connection = self.connection.get_or_try_init(|| connect(&self.spec)).await?;
        let script = &self.scripts[match policy.algorithm {
            Algorithm::TokenBucket => 0,
            Algorithm::FixedWindow => 1,
            Algorithm::SlidingLog => 2,
            Algorithm::SlidingWindow => 3,
        }];
        let nonce = format!("{}.{}", self.nonce_base, self.nonce_seq.fetch_add(1, Ordering::Relaxed));
        let mut invocation = script.key(self.key(client, policy.algorithm));
        invocation.arg(policy.limit).arg(policy.period_us).arg(policy.burst).arg(nonce);
        if let Some(at) = at {
            invocation.arg(at);
        }
        let reply: Vec<i64> = match connection.clone() {
            Connection::Single(mut c) => invocation.invoke_async(&mut c).await?,
            Connection::Cluster(mut c) => invocation.invoke_async(&mut c).await?,
        };
        let [allowed, remaining, retry, reset] = reply[..] else {
            return Err(StoreError::BadReply(format!("{reply:?}")));
        };
        let non_negative = |v: i64| v.max(0) as u64;
        Ok(Decision {
            allowed: allowed == 1,
            remaining: non_negative(remaining),
            retry_after_us: non_negative(retry),
            reset_us: non_negative(reset),
        })
    }
}

async fn connect(spec: &StoreSpec) -> Result<Connection, StoreError> {
    match spec {
        StoreSpec::Redis(url) => {
            let client = redis::Client::open(url.as_str())?;
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(STORE_TIMEOUT))
                .set_response_timeout(Some(STORE_TIMEOUT))
                .set_number_of_retries(1)
                .set_min_delay(Duration::from_millis(10))
                .set_max_delay(Duration::from_millis(100));
            Ok(Connection::Single(ConnectionManager::new_lazy_with_config(client, config)?))
        }
        StoreSpec::Cluster(nodes) => {
            let client = redis::cluster::ClusterClientBuilder::new(nodes.iter().map(String::as_str))
                .connection_timeout(STORE_TIMEOUT)
                .response_timeout(STORE_TIMEOUT)
                .retries(1)
                .build()?;
            Ok(Connection::Cluster(client.get_async_connection().await?))
        }
        StoreSpec::Local => Err(StoreError::BadReply("local store has no Redis connection".into())),
    }
}

/// Identities come from clients: keep them out of keys verbatim when they could break hash tags or
/// bloat keys.
fn key_safe(client: &str) -> String {
    let plain =
        client.len() <= 200 && !client.chars().any(|c| c == '{' || c == '}' || c.is_whitespace() || c.is_control());
    if plain {
        client.to_string()
    } else {
        format!("h:{}", &hex::encode(Sha256::digest(client.as_bytes()))[..32])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::algorithm::decide;

    /// A throwaway `redis-server` on a free loopback port, killed when dropped.
    struct Redis {
        child: std::process::Child,
        port: u16,
        _dir: tempfile::TempDir,
    }

    impl Drop for Redis {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn start_redis() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let dir = tempfile::tempdir().expect("tempdir");
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed for this test (apt-get install redis-server)");
        let redis = Redis { child, port, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    /// The Lua scripts and the pure algorithms give identical decisions (allowed, remaining, retry-after,
    /// reset, to the microsecond) over a long irregular sequence of requests in virtual time, for every
    /// algorithm: both stores have the same semantics.
    #[test]
    fn lua_scripts_decide_exactly_like_the_pure_algorithms() {
        let redis = start_redis();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let store = RedisStore::new(StoreSpec::Redis(format!("redis://127.0.0.1:{}", redis.port)), "parity:");
        let ask = |client: &str, policy: &Policy, now: u64| {
            // The first call connects and loads the script; on a busy machine it may miss the timeout.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match runtime.block_on(store.decide_at(client, policy, Some(now))) {
                    Ok(decision) => return decision,
                    Err(error) if Instant::now() > deadline => panic!("redis: {error}"),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        };
        let algorithms =
            [Algorithm::TokenBucket, Algorithm::FixedWindow, Algorithm::SlidingLog, Algorithm::SlidingWindow];
        for (policy, client) in algorithms.iter().flat_map(|&algorithm| {
            [
                (Policy { algorithm, limit: 5, period_us: 2_000_000, burst: 3 }, "small"),
                (Policy { algorithm, limit: 7, period_us: 3_600_000_000, burst: 9 }, "hourly"),
                (Policy { algorithm, limit: 3, period_us: 1_000_000, burst: 1 }, "tight"),
            ]
        }) {
            let mut state = None;
            let mut now: u64 = 1_764_000_000_123_457; // a Unix time in µs, as Redis's clock gives
            let mut seed = 0x2545_f491_4f6c_dd1d_u64;
            for step in 0..200 {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                let r = seed >> 33;
                now += match r % 10 {
                    0..=3 => 0,
                    4..=7 => r % 200_000,
                    8 => r % 1_500_000,
                    _ => r % (2 * policy.period_us),
                };
                let expected = decide(&policy, &mut state, now);
                let got = ask(&format!("{client}-{}", policy.algorithm.as_str()), &policy, now);
                assert_eq!(got, expected, "{policy:?} step {step} at {now}");
            }
        }
    }

    #[test]
    fn keys_share_a_slot_per_client_and_resist_odd_identities() {
        let store = RedisStore::new(StoreSpec::Redis("redis://127.0.0.1:1".into()), "eddy:rl:");
        assert_eq!(store.key("ip:192.0.2.7", Algorithm::TokenBucket), "eddy:rl:{ip:192.0.2.7}:tb");
        assert_eq!(store.key("api-key:k", Algorithm::SlidingLog), "eddy:rl:{api-key:k}:sl");
        let odd = store.key("api-key:a}{b", Algorithm::FixedWindow);
        assert!(odd.starts_with("eddy:rl:{h:") && odd.ends_with("}:fw") && odd.matches('{').count() == 1, "{odd}");
        let long = store.key(&format!("api-key:{}", "x".repeat(500)), Algorithm::FixedWindow);
        assert!(long.len() < 60, "{long}");
    }
}
