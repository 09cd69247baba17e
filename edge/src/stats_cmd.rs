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
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter().map(|(k, v)| format!("{k:<width$}  {v}\n")).collect()
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
