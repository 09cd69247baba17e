//! `eddy-netsim` end to end: a real upstream on 127.0.0.1, the real proxy binary shaping to a fixed
//! rate, and real HTTP downloads through it. Rates are wall-clock here, so the bands are generous
//! (±25%); the exact shaping math is unit-tested in virtual time in `eddy_shared::netsim`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use eddy_tests::{bin_path, spawn_until_ready, Running};
use serde_json::Value;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const SEGMENT_BYTES: usize = 400_000;

/// An upstream serving `/seg.ts` (400 kB) and `/half.ts` (200 kB).
async fn upstream() -> MockServer {
    let server = MockServer::start().await;
    for (name, size) in [("/seg.ts", SEGMENT_BYTES), ("/half.ts", SEGMENT_BYTES / 2)] {
        let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        Mock::given(method("GET"))
            .and(path(name))
            .respond_with(ResponseTemplate::new(200).set_body_bytes(body))
            .mount(&server)
            .await;
    }
    server
}

/// Starts `eddy-netsim --listen 127.0.0.1:0 --upstream <upstream>` plus `args`; returns it and its base URL.
fn start_netsim(upstream: &str, args: &[&str]) -> Result<(Running, String)> {
    let mut command = Command::new(bin_path("eddy-netsim"));
    command.args(["--listen", "127.0.0.1:0", "--upstream", upstream]).args(args);
    let process = spawn_until_ready(command, "eddy-netsim listening on", Duration::from_secs(20))?;
    let addr = process.addr_after("listening on ")?;
    Ok((process, format!("http://{addr}")))
}

/// Downloads `url` in full; returns the body and how long it took.
async fn timed_get(client: &reqwest::Client, url: &str) -> Result<(Vec<u8>, Duration)> {
    let started = Instant::now();
    let response = client.get(url).send().await.with_context(|| format!("GET {url}"))?;
    if !response.status().is_success() {
        bail!("GET {url}: {}", response.status());
    }
    let body = response.bytes().await.with_context(|| format!("reading {url}"))?;
    Ok((body.to_vec(), started.elapsed()))
}

/// Waits (up to 5 s) until the JSON-lines log holds `count` records, and returns them.
async fn log_records(log: &Path, count: usize) -> Result<Vec<Value>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let records: Vec<Value> = text
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()
            .with_context(|| format!("log line is not JSON: {text}"))?;
        if records.len() >= count {
            return Ok(records);
        }
        if Instant::now() > deadline {
            bail!("the log has {} records, expected {count}: {text}", records.len());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_within(elapsed: Duration, expected_s: f64, what: &str) {
    let (low, high) = (expected_s * 0.75, expected_s * 1.25);
    let took = elapsed.as_secs_f64();
    assert!((low..=high).contains(&took), "{what} took {took:.2} s, expected {expected_s} s ±25%");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_takes_the_shaped_time_and_is_logged() -> Result<()> {
    let upstream = upstream().await;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("requests.jsonl");
    let log_arg = log.to_str().context("temp path is not UTF-8")?;
    let (_netsim, base) = start_netsim(&upstream.uri(), &["--rate", "2M", "--log", log_arg])?;
    let client = reqwest::Client::new();

    let (body, elapsed) = timed_get(&client, &format!("{base}/seg.ts")).await?;

    assert_eq!(body.len(), SEGMENT_BYTES);
    assert!(body.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8), "body corrupted");
    // 400 kB at 2 Mbit/s = 1.6 s.
    assert_within(elapsed, 1.6, "400 kB at 2 Mbit/s");
    let records = log_records(&log, 1).await?;
    let record = &records[0];
    assert_eq!(record["method"], "GET");
    assert_eq!(record["path"], "/seg.ts");
    assert_eq!(record["status"], 200);
    assert_eq!(record["bytes"], SEGMENT_BYTES as u64);
    assert_eq!(record["closed_early"], false);
    let start = record["start_ms"].as_u64().context("start_ms")?;
    let end = record["end_ms"].as_u64().context("end_ms")?;
    assert!((1200..=2000).contains(&(end - start)), "logged {start}..{end} ms");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pensieve_trace_file_shapes_and_loops() -> Result<()> {
    let upstream = upstream().await;
    let dir = tempfile::tempdir()?;
    let trace = dir.path().join("trace.txt");
    // 4 Mbit/s for 0.5 s, 1 Mbit/s for 0.5 s, looping: 2.5 Mbit per second.
    std::fs::write(&trace, "# time_s bandwidth_Mbps\n0.0 4\n0.5 1\n")?;
    let trace_arg = trace.to_str().context("temp path is not UTF-8")?;
    let (_netsim, base) = start_netsim(&upstream.uri(), &["--trace", trace_arg])?;

    let (body, elapsed) = timed_get(&reqwest::Client::new(), &format!("{base}/seg.ts")).await?;

    assert_eq!(body.len(), SEGMENT_BYTES);
    // 3.2 Mbit: one loop (2.5 Mbit by 1.0 s), then 0.7 Mbit at 4 Mbit/s = 1.175 s.
    assert_within(elapsed, 1.175, "400 kB through the looping trace");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_downloads_share_the_link_instead_of_doubling_it() -> Result<()> {
    let upstream = upstream().await;
    let (_netsim, base) = start_netsim(&upstream.uri(), &["--rate", "2M"])?;
    let client = reqwest::Client::new();
    let url = format!("{base}/half.ts");

    // Two connections at once, like a player prefetching: 2 × 200 kB share 2 Mbit/s, so each takes
    // about 1.6 s, not the 0.8 s it would take alone.
    let (first, second) = tokio::join!(timed_get(&client, &url), timed_get(&client, &url));
    let ((first_body, first_took), (second_body, second_took)) = (first?, second?);

    assert_eq!(first_body.len(), SEGMENT_BYTES / 2);
    assert_eq!(second_body.len(), SEGMENT_BYTES / 2);
    assert_within(first_took, 1.6, "the first of two concurrent 200 kB downloads");
    assert_within(second_took, 1.6, "the second of two concurrent 200 kB downloads");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_is_logged_as_closed_early() -> Result<()> {
    let upstream = upstream().await;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("requests.jsonl");
    let log_arg = log.to_str().context("temp path is not UTF-8")?;
    let (_netsim, base) = start_netsim(&upstream.uri(), &["--rate", "4M", "--latency", "30", "--log", log_arg])?;

    // Read about 50 kB, then abandon the download, as a player abandons a segment.
    let mut response = reqwest::get(format!("{base}/seg.ts")).await?;
    let mut received = 0;
    while received < 50_000 {
        let chunk = response.chunk().await?.context("the body ended early")?;
        received += chunk.len();
    }
    drop(response);

    let records = log_records(&log, 1).await?;
    let record = &records[0];
    assert_eq!(record["closed_early"], true, "{record}");
    let bytes = record["bytes"].as_u64().context("bytes")?;
    assert!(bytes < SEGMENT_BYTES as u64, "{record}");
    let first_byte = record["first_byte_ms"].as_u64().context("first_byte_ms")?;
    assert!(first_byte >= 30, "the 30 ms first-byte latency was not applied: {record}");
    Ok(())
}

#[test]
fn bad_flags_and_traces_fail_with_a_clear_error() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let bad_trace = dir.path().join("bad.txt");
    std::fs::write(&bad_trace, "0 1.5\n1 lots\n")?;
    let bad_trace = bad_trace.to_str().context("temp path is not UTF-8")?;
    let cases: [(&[&str], &str); 4] = [
        (&["--pattern", "3M@5s,1M@10s"], "start at 0"),
        (&["--pattern", "wobble:3M"], "wobble:3M"),
        (&["--rate", "fast"], "fast"),
        (&["--trace", bad_trace], "line 2"),
    ];
    for (args, expected) in cases {
        let output = Command::new(bin_path("eddy-netsim"))
            .args(["--listen", "127.0.0.1:0", "--upstream", "http://127.0.0.1:9"])
            .args(args)
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(expected), "{args:?}: stderr does not say '{expected}': {stderr}");
        assert!(output.stdout.is_empty(), "{args:?} printed a ready line");
    }
    Ok(())
}
