//! HLS-aware prefetch at the edge, end to end (issue 15 §5). A cold viewer (`eddy-play`, one
//! rendition) plays a VOD through a cold edge whose origin adds 200 ms to every request:
//!
//!     eddy-play → eddy-edge (under test, [prefetch]) → eddy-netsim --latency 200 → eddy-edge (directory)
//!
//! eddy-netsim's request log is the ground truth for what reached the origin; the tested edge's access
//! log says how each of the viewer's requests was answered (HIT, MISS).
//!
//! The viewer runs with a 2 s buffer target, so that past its start it asks for a segment about once
//! a second, as a viewer does once its buffer is full: that is when prefetch can turn misses into hits.
//! (A buffer target longer than the stream makes the player fetch back to back, faster than any
//! origin round trip: prefetch then makes collapsed misses, not hits.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use eddy_tests::{bin_path, spawn_until_ready, start_edge, wait_with_timeout, Edge, Running};
use serde_json::Value;

/// One packaged stream (30 s, 1 s segments, one rung) shared by the tests in this file.
fn content() -> &'static Path {
    static CONTENT: OnceLock<tempfile::TempDir> = OnceLock::new();
    CONTENT
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let status = Command::new(bin_path("eddy-package"))
                .args(["--test-pattern", "30s", "--ladder", "240p:300k", "--segment-duration", "1", "--out"])
                .arg(dir.path().join("hls"))
                .stdout(Stdio::null())
                .status()
                .expect("eddy-package runs");
            assert!(status.success(), "packaging the test content failed");
            dir
        })
        .path()
        .join("hls")
        .leak()
}

struct Chain {
    _origin: Edge,
    _link: Running,
    edge: Running,
    edge_addr: std::net::SocketAddr,
    link_log: PathBuf,
    access_log: PathBuf,
    work: tempfile::TempDir,
}

/// The origin (a directory edge), a 200 ms link in front of it, and a cold edge with `prefetch`.
fn chain(prefetch: &str) -> Chain {
    let origin = start_edge(&["--origin", content().to_str().expect("utf8")]).expect("origin edge");
    let work = tempfile::tempdir().expect("tempdir");
    let link_log = work.path().join("origin.jsonl");
    let mut command = Command::new(bin_path("eddy-netsim"));
    command
        .args(["--listen", "127.0.0.1:0", "--upstream", &origin.url(""), "--rate", "1G", "--latency", "200", "--log"])
        .arg(&link_log);
    let link = spawn_until_ready(command, "eddy-netsim listening on", Duration::from_secs(20)).expect("netsim");
    let link_addr = link.addr_after("listening on ").expect("netsim addr");
    let config = work.path().join("edge.toml");
    std::fs::write(&config, format!("origins = [\"http://{link_addr}\"]\n[prefetch]\n{prefetch}\n")).expect("config");
    let access_log = work.path().join("access.log");
    let mut command = Command::new(bin_path("eddy-edge"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .env("RUST_LOG", "access=info,prefetch=debug,warn")
        .stderr(std::fs::File::create(&access_log).expect("log file"));
    let edge = spawn_until_ready(command, "eddy-edge listening on", Duration::from_secs(20)).expect("edge");
    let edge_addr = edge.addr_after("listening on ").expect("edge addr");
    Chain { _origin: origin, _link: link, edge, edge_addr, link_log, access_log, work }
}

/// Plays the stream's first rendition through the edge; returns the report.
fn play(chain: &Chain) -> Value {
    let report = chain.work.path().join("report.json");
    let mut child = Command::new(bin_path("eddy-play"))
        .arg(format!("http://{}/master.m3u8", chain.edge_addr))
        .args(["--headless", "--quiet", "--rendition", "0", "--buffer", "2", "--report"])
        .arg(&report)
        .stdout(Stdio::null())
        .spawn()
        .expect("eddy-play starts");
    let status = wait_with_timeout(&mut child, Duration::from_secs(90)).expect("eddy-play finishes");
    assert!(status.success(), "eddy-play failed: {status:?}");
    serde_json::from_slice(&std::fs::read(&report).expect("report written")).expect("report is JSON")
}

/// Segment paths the origin was asked for, in order.
fn origin_segments(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .expect("link log")
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|entry| entry["path"].as_str().map(str::to_string))
        .filter(|path| path.ends_with(".ts"))
        .collect()
}

/// The edge's answers to the viewer's segment requests, in order: (path, cache result).
fn served_segments(chain: &mut Chain) -> Vec<(String, String)> {
    // SIGTERM makes the edge write out its buffered log lines.
    assert!(chain.edge.terminate(Duration::from_secs(10)).expect("edge exits").success());
    let text = std::fs::read_to_string(&chain.access_log).expect("access log");
    let field = |line: &str, name: &str| {
        let start = line.find(name)? + name.len();
        let value = line[start..].split_whitespace().next()?;
        Some(value.trim_matches('"').to_string())
    };
    text.lines()
        .filter(|l| l.contains("method=GET") && l.contains("status=200"))
        .filter_map(|l| Some((field(l, "path=")?, field(l, "cache=")?)))
        .filter(|(path, _)| path.ends_with(".ts"))
        .collect()
}

/// A percentile (nearest rank) of the report's segment download times, in ms.
fn download_ms(report: &Value, percentile: f64) -> u64 {
    let mut times: Vec<u64> =
        report["segments"].as_array().expect("segments").iter().filter_map(|s| s["download_ms"].as_u64()).collect();
    times.sort_unstable();
    let rank = ((times.len() as f64) * percentile / 100.0).ceil() as usize;
    times.get(rank.saturating_sub(1)).copied().unwrap_or(0)
}

struct Viewing {
    served: Vec<(String, String)>,
    from_origin: Vec<String>,
    startup_ms: u64,
    p50_ms: u64,
    p99_ms: u64,
}

fn view(prefetch: &str) -> Viewing {
    let mut chain = chain(prefetch);
    let report = play(&chain);
    let served = served_segments(&mut chain);
    let from_origin = origin_segments(&chain.link_log);
    let startup_ms = report["startup_ms"].as_u64().expect("startup_ms");
    Viewing { served, from_origin, startup_ms, p50_ms: download_ms(&report, 50.0), p99_ms: download_ms(&report, 99.0) }
}

fn share(served: &[(String, String)], result: &str) -> f64 {
    let after_first = &served[1..];
    after_first.iter().filter(|(_, r)| r == result).count() as f64 / after_first.len() as f64
}

/// Every object reached the origin once at most.
fn assert_each_fetched_once(from_origin: &[String]) {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for path in from_origin {
        *counts.entry(path).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "fetched from the origin more than once: {twice:?}");
}

#[test]
fn a_cold_viewer_gets_hits_through_a_slow_origin_and_the_origin_sees_each_segment_once() {
    let on = view("segments = 1");
    let off = view("segments = 0");
    for (name, v) in [("on: ", &on), ("off:", &off)] {
        println!(
            "prefetch {name} {} segments, after the first {:.0} % HIT {:.0} % MISS; origin segment requests {}; \
             startup {} ms; segment download p50 {} ms, p99 {} ms",
            v.served.len(),
            share(&v.served, "HIT") * 100.0,
            share(&v.served, "MISS") * 100.0,
            v.from_origin.len(),
            v.startup_ms,
            v.p50_ms,
            v.p99_ms
        );
    }
    assert!(on.served.len() >= 25, "the viewer played the stream: {:?}", on.served);
    assert_eq!(on.served.len(), off.served.len(), "both viewings fetch the same segments");
    assert!(share(&on.served, "HIT") >= 0.9, "prefetch on, answers: {:?}", on.served);
    assert!(share(&off.served, "MISS") >= 0.9, "prefetch off, answers: {:?}", off.served);
    // Coalescing: a viewer's request during a prefetch joins it, so nothing is fetched twice, and
    // prefetch adds at most the segment after the last one played.
    assert_each_fetched_once(&on.from_origin);
    assert_each_fetched_once(&off.from_origin);
    assert!(
        on.from_origin.len() <= off.from_origin.len() + 1,
        "origin segment requests: {} with prefetch, {} without",
        on.from_origin.len(),
        off.from_origin.len()
    );
    for (path, _) in &on.served {
        assert!(on.from_origin.contains(path), "{path} was served but never fetched");
    }
}
