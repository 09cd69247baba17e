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

/// One member's figures for `--fleet`: `None` when its admin listener is unknown or did not answer.
pub struct MemberStats {
    pub url: String,
    pub stats: Option<Stats>,
    pub problem: Option<String>,
}

/// Every member's `/stats`, starting from the edge at `admin`.
pub async fn fetch_fleet(admin: &str) -> anyhow::Result<Vec<MemberStats>> {
    let local = fetch(admin).await?;
    if local.fleet_members.is_empty() {
        bail!("the edge at {admin} is in no fleet (no [cluster] peers)");
    }
    let mut members = Vec::with_capacity(local.fleet_members.len());
    for member in &local.fleet_members {
        let (stats, problem) = if member.this_edge {
            (Some(local.clone()), None)
        } else if let Some(admin) = &member.admin {
            match fetch(admin).await {
                Ok(stats) => (Some(stats), None),
                Err(error) => (None, Some(format!("{error:#}"))),
            }
        } else {
            (None, Some("no admin URL in the fleet's list (peers: { url, admin })".to_string()))
        };
        members.push(MemberStats { url: member.url.clone(), stats, problem });
    }
    Ok(members)
}

/// One row per member and a total: what a fleet operator watches.
pub fn fleet_table(members: &[MemberStats]) -> String {
    // Requests from viewers: a peer's request is counted where its viewer came in.
    let header = ["member", "viewer req", "hit ratio", "origin req", "peer fills", "served peers", "cached"];
    let mut rows: Vec<[String; 7]> = Vec::new();
    let mut total = Stats::default();
    for member in members {
        match &member.stats {
            Some(s) => {
                rows.push([
                    member.url.clone(),
                    s.requests.saturating_sub(s.fleet_requests).to_string(),
                    format!("{:.1}%", s.hit_ratio * 100.0),
                    s.origin_requests.to_string(),
                    s.peer_fills.to_string(),
                    s.fleet_requests.to_string(),
                    format_size(s.cache_bytes),
                ]);
                total.requests += s.requests.saturating_sub(s.fleet_requests);
                total.hits += s.hits + s.stale;
                total.misses += s.misses + s.revalidated;
                total.origin_requests += s.origin_requests;
                total.peer_fills += s.peer_fills;
                total.fleet_requests += s.fleet_requests;
                total.cache_bytes += s.cache_bytes;
            }
            None => rows.push([
                member.url.clone(),
                format!("unreachable: {}", member.problem.as_deref().unwrap_or("?")),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ]),
        }
    }
    let answered = total.hits + total.misses;
    rows.push([
        "fleet".to_string(),
        total.requests.to_string(),
        format!("{:.1}%", if answered == 0 { 0.0 } else { total.hits as f64 * 100.0 / answered as f64 }),
        total.origin_requests.to_string(),
        total.peer_fills.to_string(),
        total.fleet_requests.to_string(),
        format_size(total.cache_bytes),
    ]);
    let widths: Vec<usize> =
        (0..7).map(|c| rows.iter().map(|r| r[c].len()).chain([header[c].len()]).max().unwrap_or(0)).collect();
    let line = |cells: Vec<&str>| -> String {
        let mut text: String =
            cells.iter().enumerate().map(|(c, cell)| format!("{cell:<width$}  ", width = widths[c])).collect();
        text.truncate(text.trim_end().len());
        text + "\n"
    };
    let mut out = line(header.to_vec());
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

pub async fn run(admin: &str, json: bool, watch: Option<u64>, fleet: bool) -> anyhow::Result<()> {
    loop {
        if watch.is_some() && !json {
            // Clear the screen so the table refreshes in place.
            print!("\x1b[2J\x1b[H");
        }
        if fleet {
            let members = fetch_fleet(admin).await?;
            if json {
                let value: Vec<serde_json::Value> = members
                    .iter()
                    .map(|m| serde_json::json!({"url": m.url, "stats": m.stats, "problem": m.problem}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                print!("{}", fleet_table(&members));
            }
        } else {
            let stats = fetch(admin).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                print!("{}", table(&stats));
            }
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
    fn the_fleet_table_has_a_row_per_member_and_the_totals() {
        let member = |url: &str, requests, origin_requests, cache_bytes| MemberStats {
            url: url.into(),
            stats: Some(Stats {
                requests,
                hits: requests / 2,
                misses: requests / 2,
                origin_requests,
                cache_bytes,
                ..Stats::default()
            }),
            problem: None,
        };
        let down = MemberStats { url: "http://c:1".into(), stats: None, problem: Some("refused".into()) };
        let text = fleet_table(&[member("http://a:1", 10, 3, 2048), member("http://b:1", 30, 2, 1024), down]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[3].starts_with("http://c:1") && lines[3].contains("unreachable: refused"), "{text}");
        let total: Vec<&str> = lines[4].split_whitespace().collect();
        assert_eq!(total[..4], ["fleet", "40", "50.0%", "5"], "{text}");
        assert!(lines[4].ends_with("3.0 KiB"), "{text}");
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
