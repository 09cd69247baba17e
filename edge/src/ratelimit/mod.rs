//! Per-client rate limiting (phase 2 of the request path). Until the algorithms land this only carries
//! the configuration, and every request is allowed.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub enabled: bool,
}

impl RateLimitConfig {
    /// Checks values that types alone cannot; on error returns (key, reason).
    pub fn validate(&self) -> Result<(), (String, String)> {
        Ok(())
    }
}
