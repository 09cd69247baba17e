//! The `[rate_limit]` section: its keys (a contract used outside this crate, documented in
//! `configs/edge.toml`), the typed values they parse into, and the checks types alone cannot make.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::de::{self, Deserializer};
use serde::Deserialize;

use super::algorithm::Algorithm;

/// `N/s`, `N/min` or `N/h`: N requests per period. `0/s` blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u64,
    pub period: Duration,
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> Result<Rate, String> {
        let bad = || format!("invalid rate '{text}': expected N/s, N/min or N/h (e.g. \"100/s\")");
        let (count, unit) = text.trim().split_once('/').ok_or_else(bad)?;
        let count: u64 = count.trim().parse().map_err(|_| bad())?;
        let period = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        if count > 1_000_000_000 {
            return Err(format!("invalid rate '{text}': at most 1000000000 requests per period"));
        }
        Ok(Rate { count, period })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.period.as_secs() {
            1 => "s",
            60 => "min",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(de::Error::custom)
    }
}

/// One rule of `identify`, tried in order; the first that yields an identity wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentifyBy {
    /// `X-Api-Key: K` → `api-key:K`.
    ApiKey,
    /// `Authorization: …` → `auth:<hash>`: the credential itself never appears.
    Authorization,
    /// The right-most `X-Forwarded-For` address not in `trusted_proxies`, when the peer is trusted.
    ForwardedFor,
    /// The socket's peer address.
    Peer,
}

impl<'de> Deserialize<'de> for IdentifyBy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.to_ascii_lowercase().as_str() {
            "x-api-key" => Ok(IdentifyBy::ApiKey),
            "authorization" => Ok(IdentifyBy::Authorization),
            "x-forwarded-for" => Ok(IdentifyBy::ForwardedFor),
            "peer" => Ok(IdentifyBy::Peer),
            _ => Err(de::Error::custom(format!(
                "unknown identity source '{text}': expected x-api-key, authorization, x-forwarded-for or peer"
            ))),
        }
    }
}

/// A network allowed to set `X-Forwarded-For`: CIDR (`10.0.0.0/8`) or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustedNet(pub IpNet);

impl<'de> Deserialize<'de> for TrustedNet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if let Ok(net) = text.parse::<IpNet>() {
            return Ok(TrustedNet(net.trunc()));
        }
        text.parse::<IpAddr>()
            .map(|ip| TrustedNet(IpNet::from(ip)))
            .map_err(|_| de::Error::custom(format!("'{text}' is neither an address nor a CIDR network")))
    }
}

/// Where counters live: this process, one Redis, or a Redis Cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    Local,
    /// A `redis://` URL as the redis crate reads it (password, database in the path).
    Redis(String),
    /// Seed nodes (`redis://h:p` each) of a Redis Cluster.
    Cluster(Vec<String>),
}

impl FromStr for StoreSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<StoreSpec, String> {
        if text == "local" {
            return Ok(StoreSpec::Local);
        }
        if let Some(nodes) = text.strip_prefix("redis+cluster://") {
            let nodes: Vec<String> = nodes.split(',').map(str::trim).map(str::to_string).collect();
            if nodes.iter().any(|n| n.is_empty()) {
                return Err(format!("'{text}': give the cluster nodes as redis+cluster://h1:p1,h2:p2,h3:p3"));
            }
            let urls: Vec<String> = nodes.iter().map(|n| format!("redis://{n}")).collect();
            for url in &urls {
                url::Url::parse(url).map_err(|e| format!("'{text}': bad node {url}: {e}"))?;
            }
            return Ok(StoreSpec::Cluster(urls));
        }
        if text.starts_with("redis://") {
            let url = url::Url::parse(text).map_err(|e| format!("'{text}': {e}"))?;
            if url.host_str().is_none_or(str::is_empty) {
                return Err(format!("'{text}': no host"));
            }
            return Ok(StoreSpec::Redis(text.to_string()));
        }
        Err(format!("'{text}': expected \"local\", \"redis://host:port\" or \"redis+cluster://h1:p1,h2:p2\""))
    }
}

impl<'de> Deserialize<'de> for StoreSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(de::Error::custom)
    }
}

impl fmt::Display for StoreSpec {
    /// Without passwords: this goes to logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hide = |u: &str| match url::Url::parse(u) {
            Ok(url) => format!("redis://{}:{}", url.host_str().unwrap_or(""), url.port().unwrap_or(6379)),
            Err(_) => "redis://?".into(),
        };
        match self {
            StoreSpec::Local => f.write_str("local"),
            StoreSpec::Redis(u) => f.write_str(&hide(u)),
            StoreSpec::Cluster(nodes) => {
                let nodes: Vec<String> =
                    nodes.iter().map(|n| hide(n).trim_start_matches("redis://").to_string()).collect();
                write!(f, "redis+cluster://{}", nodes.join(","))
            }
        }
    }
}

/// What to do with a request when the shared store cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnStoreError {
    /// Let it through (counted), within a per-edge local ceiling.
    #[default]
    Open,
    /// Refuse it: 503 with Retry-After.
    Closed,
}

/// A per-client override, matched on the identity (`api-key:partner-123`, `ip:192.0.2.7`, `auth:<hash>`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientOverride {
    pub id: String,
    pub rate: Rate,
    /// Token bucket capacity; defaults to the rate's N.
    pub burst: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub enabled: bool,
    pub algorithm: Algorithm,
    pub rate: Rate,
    /// Token bucket capacity; defaults to the rate's N. Ignored by the window algorithms.
    pub burst: Option<u64>,
    pub identify: Vec<IdentifyBy>,
    pub trusted_proxies: Vec<TrustedNet>,
    pub store: StoreSpec,
    pub on_store_error: OnStoreError,
    pub key_prefix: String,
    pub clients: Vec<ClientOverride>,
    /// Clients the local store remembers at most (the store itself, or the ceiling while Redis fails).
    pub local_max_clients: usize,
}

/// Bounds of `local_max_clients`: one client per shard at least, and far below what fits in memory.
const LOCAL_MAX_CLIENTS_RANGE: std::ops::RangeInclusive<usize> = 16..=(1 << 28);

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            enabled: false,
            algorithm: Algorithm::TokenBucket,
            rate: Rate { count: 100, period: Duration::from_secs(1) },
            burst: None,
            identify: RateLimitConfig::default_identify(),
            trusted_proxies: Vec::new(),
            store: StoreSpec::Local,
            on_store_error: OnStoreError::Open,
            key_prefix: "eddy:rl:".into(),
            clients: Vec::new(),
            local_max_clients: super::local::DEFAULT_MAX_CLIENTS,
        }
    }
}

impl RateLimitConfig {
    /// Rules a client cannot choose for itself: X-Forwarded-For (believed only from `trusted_proxies`),
    /// then the peer address. `x-api-key` and `authorization` are the client's own words, so a default
    /// that trusted them let a client rotate values to get a fresh quota per request; operators list
    /// them only when something in front validates them.
    pub fn default_identify() -> Vec<IdentifyBy> {
        vec![IdentifyBy::ForwardedFor, IdentifyBy::Peer]
    }

    /// Checks values that types alone cannot; on error returns (key, reason).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |key: &str, reason: String| Err((key.to_string(), reason));
        if self.burst == Some(0) && self.rate.count > 0 {
            return err("burst", "must be at least 1 (use rate = \"0/s\" to block)".into());
        }
        if self.identify.is_empty() {
            return err("identify", "give at least one of x-api-key, authorization, x-forwarded-for, peer".into());
        }
        if self.key_prefix.contains(['{', '}']) {
            return err("key_prefix", "must not contain '{' or '}' (they would break Redis Cluster hash tags)".into());
        }
        if self.key_prefix.len() > 64 || self.key_prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return err("key_prefix", "at most 64 characters, without spaces or control characters".into());
        }
        if !LOCAL_MAX_CLIENTS_RANGE.contains(&self.local_max_clients) {
            return err(
                "local_max_clients",
                format!(
                    "{} is out of range: give {} to {}",
                    self.local_max_clients,
                    LOCAL_MAX_CLIENTS_RANGE.start(),
                    LOCAL_MAX_CLIENTS_RANGE.end()
                ),
            );
        }
        let mut seen = HashSet::new();
        for (i, client) in self.clients.iter().enumerate() {
            if client.id.trim().is_empty() {
                return err(&format!("clients[{i}].id"), "must not be empty".into());
            }
            if client.id.chars().any(char::is_control) {
                return err(&format!("clients[{i}].id"), "must not contain control characters".into());
            }
            if !seen.insert(client.id.as_str()) {
                return err(&format!("clients[{i}].id"), format!("'{}' is listed twice", client.id));
            }
            if client.burst == Some(0) && client.rate.count > 0 {
                return err(&format!("clients[{i}].burst"), "must be at least 1 (use rate = \"0/s\" to block)".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_in_three_units() {
        assert_eq!("100/s".parse::<Rate>(), Ok(Rate { count: 100, period: Duration::from_secs(1) }));
        assert_eq!("5/min".parse::<Rate>(), Ok(Rate { count: 5, period: Duration::from_secs(60) }));
        assert_eq!("7/h".parse::<Rate>(), Ok(Rate { count: 7, period: Duration::from_secs(3600) }));
        assert_eq!("0/s".parse::<Rate>().map(|r| r.count), Ok(0));
        for bad in ["100", "x/s", "10/d", "-1/s", "1.5/s", ""] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    fn parse(text: &str) -> Result<crate::config::Config, String> {
        crate::config::Config::parse(text, std::path::Path::new("edge.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn the_contract_example_parses() {
        let config = parse(
            r#"
            [rate_limit]
            enabled = true
            algorithm = "token_bucket"
            rate = "100/s"
            burst = 200
            identify = ["x-api-key", "authorization", "x-forwarded-for", "peer"]
            trusted_proxies = ["127.0.0.1/32", "10.0.0.0/8"]
            store = "redis+cluster://h1:7001,h2:7002,h3:7003"
            on_store_error = "closed"
            key_prefix = "eddy:rl:"
            [[rate_limit.clients]]
            id = "api-key:partner-123"
            rate = "1000/s"
            burst = 2000
            [[rate_limit.clients]]
            id = "ip:192.0.2.7"
            rate = "0/s"
            "#,
        )
        .expect("valid");
        let rl = config.rate_limit;
        assert!(rl.enabled);
        assert_eq!(rl.burst, Some(200));
        assert_eq!(rl.identify.len(), 4);
        assert_eq!(rl.trusted_proxies.len(), 2);
        assert!(matches!(rl.store, StoreSpec::Cluster(ref nodes) if nodes.len() == 3));
        assert_eq!(rl.on_store_error, OnStoreError::Closed);
        assert_eq!(rl.clients[1].rate.count, 0);
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases = [
            ("rate = \"100/d\"", "rate"),
            ("algorithm = \"leaky\"", "algorithm"),
            ("identify = [\"cookie\"]", "identify"),
            ("identify = []", "rate_limit.identify"),
            ("trusted_proxies = [\"10.0.0.0/33\"]", "trusted_proxies"),
            ("store = \"memcached://x\"", "store"),
            ("on_store_error = \"maybe\"", "on_store_error"),
            ("key_prefix = \"a{b\"", "rate_limit.key_prefix"),
            ("burst = 0", "rate_limit.burst"),
            ("local_max_clients = 15", "rate_limit.local_max_clients"),
            ("local_max_clients = 1000000000", "rate_limit.local_max_clients"),
            ("local_max_clients = -1", "local_max_clients"),
            ("brust = 3", "brust"),
            ("[[rate_limit.clients]]\nid = \"\"\nrate = \"1/s\"", "rate_limit.clients[0].id"),
            ("[[rate_limit.clients]]\nid = \"a\"\nrate = \"1/s\"\n[[rate_limit.clients]]\nid = \"a\"\nrate = \"2/s\"", "rate_limit.clients[1].id"),
        ];
        for (body, key) in cases {
            let err = parse(&format!("[rate_limit]\n{body}\n")).expect_err(body);
            assert!(err.contains("edge.toml") && err.contains(key), "{body}: {err}");
        }
    }

    #[test]
    fn by_default_clients_cannot_choose_their_identity() {
        let rl = parse("[rate_limit]\nenabled = true\n").expect("valid").rate_limit;
        assert_eq!(rl.identify, vec![IdentifyBy::ForwardedFor, IdentifyBy::Peer]);
        assert!(rl.trusted_proxies.is_empty(), "and X-Forwarded-For is believed from no one");
    }

    #[test]
    fn stores_parse() {
        assert_eq!("local".parse::<StoreSpec>(), Ok(StoreSpec::Local));
        assert_eq!(
            "redis://127.0.0.1:6379".parse::<StoreSpec>(),
            Ok(StoreSpec::Redis("redis://127.0.0.1:6379".into()))
        );
        assert_eq!(
            "redis+cluster://a:1,b:2".parse::<StoreSpec>(),
            Ok(StoreSpec::Cluster(vec!["redis://a:1".into(), "redis://b:2".into()]))
        );
        assert!("memcached://x".parse::<StoreSpec>().is_err());
        assert!("redis+cluster://a:1,,b:2".parse::<StoreSpec>().is_err());
        let shown = "redis://:secret@h:7000".parse::<StoreSpec>().map(|s| s.to_string());
        assert_eq!(shown, Ok("redis://h:7000".to_string()));
    }
}
