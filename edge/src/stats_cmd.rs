//! `eddy-edge stats`: the admin listener's `/stats`, as a table for people or raw JSON.

use std::time::Duration;

use anyhow::{bail, Context};
use eddy_shared::size::format_size;

use crate::metrics::Stats;

pub async fn fetch(admin: &str) -> anyhow::Result<Stats> {
    let url = format!("{}/stats", admin.trim_end_matches('/'));
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).no_proxy().build()?;
    let response =
        client.get(&url).send().await.with_context(|| format!("cannot reach the edge's admin listener at {url}"))?;
    if !response.status().is_success() {
        bail!("{url} answered {}", response.status());
    }
    let body = response.bytes().await.with_context(|| format!("reading {url}"))?;
    serde_json::from_slice(&body).with_context(|| format!("{url} did not return edge stats"))
}

pub fn table(stats: &Stats) -> String {
    let rows: Vec<(&str, String)> = vec![
        ("requests", stats.requests.to_string()),
        ("hits", stats.hits.to_string()),
        ("misses", stats.misses.to_string()),
        ("stale served", stats.stale.to_string()),
        ("revalidated", stats.revalidated.to_string()),
        ("passed", stats.passes.to_string()),
        ("coalesced", stats.coalesced.to_string()),
        ("hit ratio", format!("{:.1}%", stats.hit_ratio * 100.0)),
        ("byte hit ratio", format!("{:.1}%", stats.byte_hit_ratio * 100.0)),
        ("origin requests", stats.origin_requests.to_string()),
        ("origin errors", stats.origin_errors.to_string()),
        ("bytes from cache", format_size(stats.bytes_from_cache)),
        ("bytes from origin", format_size(stats.bytes_from_origin)),
        ("cache entries", stats.entries.to_string()),
        ("cache size", format!("{} of {}", format_size(stats.cache_bytes), format_size(stats.cache_capacity))),
        ("evictions", stats.evictions.to_string()),
        ("fetches in flight", stats.in_flight.to_string()),
    ];
    let mut rows = rows;
    let limits = &stats.rate_limit;
    if limits.enabled {
        rows.extend([
            ("rate limit: allowed", limits.allowed.to_string()),
            ("rate limit: limited (429)", limits.limited.to_string()),
            ("rate limit: unavailable (503)", limits.unavailable.to_string()),
            ("rate limit: failed open", limits.failed_open.to_string()),
            ("rate limit: store errors", limits.store_errors.to_string()),
        ]);
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out: String = rows.iter().map(|(k, v)| format!("{k:<width$}  {v}\n")).collect();
    if !limits.top_limited.is_empty() {
        out.push_str("top limited clients:\n");
        let id_width = limits.top_limited.iter().map(|c| c.client.len()).max().unwrap_or(0);
        for client in &limits.top_limited {
            out.push_str(&format!("  {:<id_width$}  {}\n", client.client, client.limited));
        }
    }
    out
}

pub async fn run(admin: &str, json: bool, watch: Option<u64>) -> anyhow::Result<()> {
    loop {
        let stats = fetch(admin).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&stats)?);
        } else {
            if watch.is_some() {
                // Clear the screen so the table refreshes in place.
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", table(&stats));
        }
        match watch {
            Some(seconds) if seconds > 0 => tokio::time::sleep(Duration::from_secs(seconds)).await,
            Some(_) => bail!("--watch takes a number of seconds greater than 0"),
            None => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{LimitedClient, RateLimitStats};

    #[test]
    fn the_table_shows_rate_limits_and_the_top_limited_clients() {
        let mut stats = Stats::default();
        assert!(!table(&stats).contains("rate limit"), "nothing about rate limits while they are off");
        stats.rate_limit = RateLimitStats {
            enabled: true,
            limited: 7,
            top_limited: vec![
                LimitedClient { client: "ip:192.0.2.7".into(), limited: 5 },
                LimitedClient { client: "api-key:abc".into(), limited: 2 },
            ],
            ..RateLimitStats::default()
        };
        let text = table(&stats);
        assert!(text.lines().any(|l| l.starts_with("rate limit: limited (429)") && l.ends_with(" 7")), "{text}");
        let top = text.split("top limited clients:\n").nth(1).unwrap_or_default();
        assert_eq!(top, "  ip:192.0.2.7  5\n  api-key:abc   2\n");
    }

    #[test]
    fn stats_from_an_edge_without_rate_limits_still_parse() {
        let stats: Stats = serde_json::from_str(
            r#"{"requests": 3, "hits": 1, "misses": 2, "stale": 0,
            "revalidated": 0, "passes": 0, "coalesced": 0, "hit_ratio": 0.3, "byte_hit_ratio": 0.1,
            "origin_requests": 2, "origin_errors": 0, "bytes_from_cache": 1, "bytes_from_origin": 2,
            "entries": 2, "cache_bytes": 3, "cache_capacity": 4, "evictions": 0, "in_flight": 0}"#,
        )
        .expect("older JSON parses");
        assert_eq!(stats.requests, 3);
        assert_eq!(stats.rate_limit, RateLimitStats::default());
    }
}
