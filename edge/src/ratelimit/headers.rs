//! The response headers of a decision: the IETF draft's `RateLimit-Policy` and `RateLimit`
//! (draft-ietf-httpapi-ratelimit-headers-08 and later, structured fields), the older but common
//! `X-RateLimit-Limit/-Remaining/-Reset`, and `Retry-After` (RFC 9110) on refusals.

use http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};

use super::algorithm::{Decision, Policy};

pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
pub static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
pub static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// What a client is told about its quota after a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Policy name in the headers: `default` or `client` (a per-client override). Never an identity.
    pub policy: &'static str,
    /// `q`: requests in the window (the bucket's capacity for the token bucket).
    pub quota: u64,
    /// `w`: the window in seconds (for the bucket, the time to fill it from empty).
    pub window_secs: u64,
    /// `r`: requests left now.
    pub remaining: u64,
    /// `t`: seconds until the quota is whole again.
    pub reset_secs: u64,
    /// Seconds to wait before retrying, when refused.
    pub retry_after_secs: Option<u64>,
}

/// Whole seconds, rounded up: a client that waits that long is not refused for having waited too little.
pub fn ceil_secs(us: u64) -> u64 {
    us.div_ceil(1_000_000)
}

impl Quota {
    pub fn new(policy_name: &'static str, policy: &Policy, decision: &Decision) -> Quota {
        Quota {
            policy: policy_name,
            quota: policy.quota(),
            window_secs: ceil_secs(policy.quota_window_us()).max(1),
            remaining: decision.remaining,
            reset_secs: ceil_secs(decision.reset_us),
            retry_after_secs: (!decision.allowed).then(|| ceil_secs(decision.retry_after_us).max(1)),
        }
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        let mut set = |name: &HeaderName, value: String| {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name.clone(), value);
            }
        };
        let name = self.policy;
        set(&RATELIMIT_POLICY, format!("\"{name}\";q={};w={}", self.quota, self.window_secs));
        set(&RATELIMIT, format!("\"{name}\";r={};t={}", self.remaining, self.reset_secs));
        set(&X_RATELIMIT_LIMIT, self.quota.to_string());
        set(&X_RATELIMIT_REMAINING, self.remaining.to_string());
        set(&X_RATELIMIT_RESET, self.reset_secs.to_string());
        if let Some(retry) = self.retry_after_secs {
            set(&RETRY_AFTER, retry.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::algorithm::Algorithm;

    #[test]
    fn headers_follow_the_draft_and_the_x_convention() {
        let policy = Policy { algorithm: Algorithm::FixedWindow, limit: 100, period_us: 60_000_000, burst: 0 };
        let decision = Decision { allowed: false, remaining: 0, retry_after_us: 12_300_000, reset_us: 12_300_000 };
        let mut headers = HeaderMap::new();
        Quota::new("default", &policy, &decision).apply(&mut headers);
        assert_eq!(headers["ratelimit-policy"], "\"default\";q=100;w=60");
        assert_eq!(headers["ratelimit"], "\"default\";r=0;t=13");
        assert_eq!(headers["x-ratelimit-limit"], "100");
        assert_eq!(headers["x-ratelimit-remaining"], "0");
        assert_eq!(headers["x-ratelimit-reset"], "13");
        assert_eq!(headers["retry-after"], "13");
    }

    #[test]
    fn the_bucket_advertises_its_capacity_and_fill_time() {
        let policy = Policy { algorithm: Algorithm::TokenBucket, limit: 100, period_us: 1_000_000, burst: 200 };
        let decision = Decision { allowed: true, remaining: 150, retry_after_us: 0, reset_us: 490_000 };
        let mut headers = HeaderMap::new();
        Quota::new("client", &policy, &decision).apply(&mut headers);
        assert_eq!(headers["ratelimit-policy"], "\"client\";q=200;w=2");
        assert_eq!(headers["ratelimit"], "\"client\";r=150;t=1");
        assert!(!headers.contains_key(RETRY_AFTER), "allowed responses carry no Retry-After");
    }
}
