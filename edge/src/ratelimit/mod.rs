//! Per-client rate limiting: whether one more request of a client may be served. It decides, it does
//! not build HTTP answers: `check` returns an [`Admission`], and the request path's limit phase
//! (`phases/limit.rs`) turns it into headers or a refusal. Clients are plain identity strings (made by
//! `crate::identity`).
//!
//! - `config`: the `[rate_limit]` keys and their checks.
//! - `algorithm`: token bucket, fixed window, sliding log, sliding window counter, as pure functions
//!   of (policy, state, time).
//! - `local`: the in-process store; `redis_store`: the fleet's store (one Lua script per algorithm).
//! - `headers`: RateLimit-Policy / RateLimit / X-RateLimit-* / Retry-After.
//!
//! `RateLimiter` is the thin shell that ties them together: pick the client's policy, ask the store,
//! fall back to the local store (fail open, still a per-edge ceiling) or refuse (fail closed) when the
//! shared store fails, and count everything.

pub mod algorithm;
pub mod config;
pub mod headers;
pub mod local;
pub mod redis_store;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub use self::algorithm::{Algorithm, Decision, Policy};
pub use self::config::{OnStoreError, Rate, RateLimitConfig, StoreSpec};
pub use self::headers::Quota;
use self::local::LocalStore;
use self::redis_store::RedisStore;
use crate::metrics::{DecidedBy, LimitResult, Metrics};

/// A policy with its names: `metrics_label` is `default` or the override's id (operator-chosen, so
/// bounded); `header_name` never names a client.
struct NamedPolicy {
    policy: Policy,
    metrics_label: Arc<String>,
    header_name: &'static str,
}

fn policy_of(algorithm: Algorithm, rate: Rate, burst: Option<u64>) -> Policy {
    Policy {
        algorithm,
        limit: rate.count,
        period_us: rate.period.as_micros() as u64,
        burst: burst.unwrap_or(rate.count).max(1),
    }
}

/// What the limiter decided about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Rate limiting is off.
    Unlimited,
    /// Serve it, and tell the client its quota.
    Allowed(Quota),
    /// Over its limit: refuse it, telling the client its quota and when to retry.
    Limited(Quota),
    /// The shared store failed and `on_store_error = "closed"`: refuse it for now.
    Unavailable { retry_after_secs: u64 },
}

/// When a client refused because the store failed may retry: the store is skipped only briefly after a
/// failure, so the next try may find it answering.
const STORE_FAILED_RETRY_AFTER_SECS: u64 = 1;

pub struct RateLimiter {
    enabled: bool,
    default: NamedPolicy,
    overrides: HashMap<String, NamedPolicy>,
    /// The store when `store = "local"`; otherwise the per-edge ceiling while Redis fails.
    local: LocalStore,
    redis: Option<RedisStore>,
    on_store_error: OnStoreError,
    started: Instant,
    next_error_log_us: AtomicU64,
    /// Set by a store failure, cleared (and logged) by the next success.
    store_failing: AtomicBool,
}

/// Store errors are logged at most this often (they are all counted).
const ERROR_LOG_INTERVAL_US: u64 = 5_000_000;

impl RateLimiter {
    /// From a validated configuration. Makes no connection: Redis is reached on first use.
    pub fn new(config: &RateLimitConfig) -> RateLimiter {
        let default = NamedPolicy {
            policy: policy_of(config.algorithm, config.rate, config.burst),
            metrics_label: Arc::new("default".into()),
            header_name: "default",
        };
        let overrides = config
            .clients
            .iter()
            .map(|c| {
                let named = NamedPolicy {
                    policy: policy_of(config.algorithm, c.rate, c.burst),
                    metrics_label: Arc::new(c.id.clone()),
                    header_name: "client",
                };
                (c.id.clone(), named)
            })
            .collect();
        let redis = match (&config.store, config.enabled) {
            (StoreSpec::Local, _) | (_, false) => None,
            (spec, true) => Some(RedisStore::new(spec.clone(), &config.key_prefix)),
        };
        if config.enabled {
            tracing::info!(
                algorithm = config.algorithm.as_str(),
                rate = %config.rate,
                burst = default.policy.burst,
                store = %config.store,
                on_store_error = ?config.on_store_error,
                overrides = config.clients.len(),
                local_max_clients = config.local_max_clients,
                "rate limiting on"
            );
            // The default rules list x-forwarded-for, so an empty trusted_proxies is the normal case for
            // an edge that faces viewers directly: only a list the operator wrote deserves the warning.
            let forwarded = config.identify.contains(&config::IdentifyBy::ForwardedFor);
            let own_rules = config.identify != RateLimitConfig::default_identify();
            if forwarded && own_rules && config.trusted_proxies.is_empty() {
                tracing::warn!(
                    "rate_limit.identify has x-forwarded-for but trusted_proxies is empty: it is never used"
                );
            }
        }
        RateLimiter {
            enabled: config.enabled,
            default,
            overrides,
            local: LocalStore::with_capacity(config.local_max_clients),
            redis,
            on_store_error: config.on_store_error,
            started: Instant::now(),
            next_error_log_us: AtomicU64::new(0),
            store_failing: AtomicBool::new(false),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Decides one request of `client` (an identity such as `ip:203.0.113.9`), counting the decision in
    /// `metrics`.
    pub async fn check(&self, client: &str, metrics: &Metrics) -> Admission {
        if !self.enabled {
            return Admission::Unlimited;
        }
        let named = self.overrides.get(client).unwrap_or(&self.default);
        let policy = &named.policy;
        let Some((decision, by)) = self.decide(client, policy, metrics).await else {
            metrics.record_rate_limit(LimitResult::Unavailable, &named.metrics_label, DecidedBy::Nobody, client);
            return Admission::Unavailable { retry_after_secs: STORE_FAILED_RETRY_AFTER_SECS };
        };
        let quota = Quota::new(named.header_name, policy, &decision);
        if decision.allowed {
            if by == DecidedBy::Fallback {
                metrics.record_rate_limit_failed_open();
            }
            metrics.record_rate_limit(LimitResult::Allowed, &named.metrics_label, by, client);
            Admission::Allowed(quota)
        } else {
            metrics.record_rate_limit(LimitResult::Limited, &named.metrics_label, by, client);
            Admission::Limited(quota)
        }
    }

    /// The decision and who made it; `None` when the shared store failed and the edge fails closed.
    async fn decide(&self, client: &str, policy: &Policy, metrics: &Metrics) -> Option<(Decision, DecidedBy)> {
        if policy.blocks_all() {
            return Some((Decision::blocked(policy), DecidedBy::Nobody));
        }
        let Some(redis) = &self.redis else {
            return Some((self.local.decide(client, policy), DecidedBy::Local));
        };
        let started = Instant::now();
        match redis.decide(client, policy).await {
            Ok(decision) => {
                metrics.observe_rate_limit_store(started.elapsed().as_secs_f64());
                if self.store_failing.load(Ordering::Relaxed) && self.store_failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("rate-limit store answers again; limits are shared again");
                }
                Some((decision, DecidedBy::Redis))
            }
            Err(error) => {
                // `Skipped` is the breaker avoiding a store known to be failing: not a new error.
                if !matches!(error, redis_store::StoreError::Skipped) {
                    metrics.record_rate_limit_store_error();
                    self.store_failing.store(true, Ordering::Relaxed);
                    self.log_store_error(&error);
                }
                match self.on_store_error {
                    OnStoreError::Open => Some((self.local.decide(client, policy), DecidedBy::Fallback)),
                    OnStoreError::Closed => None,
                }
            }
        }
    }

    fn log_store_error(&self, error: &redis_store::StoreError) {
        let now = self.started.elapsed().as_micros() as u64;
        let next = self.next_error_log_us.load(Ordering::Relaxed);
        let due = now >= next;
        if due
            && self
                .next_error_log_us
                .compare_exchange(next, now + ERROR_LOG_INTERVAL_US, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let policy = match self.on_store_error {
                OnStoreError::Open => "letting requests through within the local ceiling",
                OnStoreError::Closed => "refusing requests with 503",
            };
            tracing::warn!(%error, "rate-limit store failed; {policy} until it answers again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(toml_text: &str) -> RateLimiter {
        let config: crate::config::Config =
            crate::config::Config::parse(toml_text, std::path::Path::new("t.toml")).expect("valid config");
        RateLimiter::new(&config.rate_limit)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    }

    #[test]
    fn local_limits_refuse_with_the_quota_and_overrides_apply() {
        let limiter = limiter(
            r#"
            [rate_limit]
            enabled = true
            algorithm = "fixed_window"
            rate = "2/min"
            identify = ["x-api-key", "peer"]
            [[rate_limit.clients]]
            id = "api-key:partner"
            rate = "3/min"
            [[rate_limit.clients]]
            id = "ip:192.0.2.7"
            rate = "0/s"
            "#,
        );
        let metrics = Metrics::new();
        let rt = runtime();
        let anon = "ip:203.0.113.9";
        let limited: Vec<bool> =
            (0..3).map(|_| matches!(rt.block_on(limiter.check(anon, &metrics)), Admission::Limited(_))).collect();
        assert_eq!(limited, vec![false, false, true]);
        let Admission::Limited(quota) = rt.block_on(limiter.check(anon, &metrics)) else { panic!("limited") };
        assert!(quota.retry_after_secs.is_some());
        assert_eq!((quota.policy, quota.quota, quota.remaining), ("default", 2, 0));

        let partner = "api-key:partner";
        let allowed = (0..5).filter(|_| matches!(rt.block_on(limiter.check(partner, &metrics)), Admission::Allowed(_)));
        assert_eq!(allowed.count(), 3);

        assert!(matches!(rt.block_on(limiter.check("ip:192.0.2.7", &metrics)), Admission::Limited(_)));

        let stats = metrics.rate_limit_stats();
        assert_eq!(stats.allowed, 5);
        assert_eq!(stats.limited, 5, "2 anonymous, 2 partner, 1 blocked");
        let anon_limited = stats.top_limited.iter().find(|c| c.client == anon).map(|c| c.limited);
        assert_eq!(anon_limited, Some(2));
        assert_eq!(stats.top_limited.len(), 3);
    }

    #[test]
    fn an_unreachable_redis_fails_open_within_the_local_ceiling_or_closed() {
        // Port 1 on loopback refuses connections at once.
        let base = r#"
            [rate_limit]
            enabled = true
            algorithm = "sliding_log"
            rate = "2/min"
            store = "redis://127.0.0.1:1"
        "#;
        let rt = runtime();
        let client = "ip:198.51.100.1";

        let open = limiter(&format!("{base}on_store_error = \"open\"\n"));
        let metrics = Metrics::new();
        let results: Vec<bool> =
            (0..4).map(|_| matches!(rt.block_on(open.check(client, &metrics)), Admission::Allowed(_))).collect();
        assert_eq!(results, vec![true, true, false, false], "fail open still holds the per-edge ceiling");
        let stats = metrics.rate_limit_stats();
        assert_eq!(stats.failed_open, 2);
        assert!(stats.store_errors >= 1);

        let closed = limiter(&format!("{base}on_store_error = \"closed\"\n"));
        let metrics = Metrics::new();
        let admission = rt.block_on(closed.check(client, &metrics));
        assert_eq!(admission, Admission::Unavailable { retry_after_secs: 1 });
        assert_eq!(metrics.rate_limit_stats().unavailable, 1);
    }

    #[test]
    fn disabled_limits_nothing() {
        let limiter = limiter("");
        let rt = runtime();
        assert_eq!(rt.block_on(limiter.check("ip:1.2.3.4", &Metrics::new())), Admission::Unlimited);
    }
}
