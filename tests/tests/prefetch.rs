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

mod against_a_scripted_origin {
    use std::io::Write;
    use std::time::{Duration, Instant};

    use eddy_tests::{start_edge, Edge};
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    fn client() -> reqwest::Client {
        reqwest::Client::builder().no_proxy().build().expect("client")
    }

    fn config_file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().expect("temp config");
        file.write_all(text.as_bytes()).expect("write config");
        file
    }

    async fn get(url: &str) -> (String, reqwest::StatusCode) {
        let response = client().get(url).send().await.expect("get");
        let cache = response.headers().get("x-cache").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let status = response.status();
        response.bytes().await.expect("body");
        (cache, status)
    }

    async fn prefetch_stats(edge: &Edge) -> serde_json::Value {
        let body = client().get(edge.admin_url("/stats")).send().await.expect("stats").bytes().await.expect("body");
        serde_json::from_slice::<serde_json::Value>(&body).expect("stats json")["prefetch"].clone()
    }

    async fn metrics(edge: &Edge) -> String {
        client().get(edge.admin_url("/metrics")).send().await.expect("metrics").text().await.expect("text")
    }

    /// Waits for `condition` on the edge's prefetch stats, up to `timeout`.
    async fn until(edge: &Edge, timeout: Duration, condition: impl Fn(&serde_json::Value) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if condition(&prefetch_stats(edge).await) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    async fn paths(server: &MockServer) -> Vec<String> {
        server.received_requests().await.unwrap_or_default().iter().map(|r| r.url.path().to_string()).collect()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_hostile_playlist_never_sends_the_edge_to_another_host_or_out_of_its_paths() {
        let elsewhere = MockServer::start().await;
        Mock::given(method("GET")).respond_with(ResponseTemplate::new(200)).mount(&elsewhere).await;
        let origin = MockServer::start().await;
        let elsewhere_host = elsewhere.address().to_string();
        let playlist = format!(
            "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\ns0.ts\n#EXTINF:1,\nhttp://{elsewhere_host}/s1.ts\n\
             #EXTINF:1,\n..%2f..%2fsecret.ts\n#EXTINF:1,\ns3.ts\n#EXT-X-ENDLIST\n"
        );
        Mock::given(path("/v/index.m3u8"))
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header("content-type", "application/vnd.apple.mpegurl")
                    .set_body_string(playlist),
            )
            .mount(&origin)
            .await;
        Mock::given(path("/v/s0.ts"))
            .respond_with(ResponseTemplate::new(200).set_body_bytes(vec![0u8; 1000]))
            .mount(&origin)
            .await;
        Mock::given(path("/v/s3.ts"))
            .respond_with(ResponseTemplate::new(200).set_body_bytes(vec![3u8; 1000]))
            .mount(&origin)
            .await;
        let config = config_file("[prefetch]\nsegments = 3\n");
        let edge =
            start_edge(&["--config", config.path().to_str().expect("utf8"), "--origin", &origin.uri()]).expect("edge");
        // `elsewhere` is on the same address as the edge, another port: the nearest a playlist can come
        // to the viewer's Host without being it.
        assert_eq!(get(&edge.url("/v/index.m3u8")).await.1, 200);
        // The edge reads the playlist in the background.
        assert!(until(&edge, Duration::from_secs(10), |p| p["playlists_read"] == 1).await);
        assert_eq!(get(&edge.url("/v/s0.ts")).await.1, 200);
        // The one legitimate successor (s3) is the positive control: the prefetch did run.
        assert!(
            until(&edge, Duration::from_secs(10), |p| p["completed"] == 1).await,
            "{}",
            prefetch_stats(&edge).await
        );
        assert_eq!(get(&edge.url("/v/s3.ts")).await.0, "HIT");
        assert_eq!(paths(&elsewhere).await, Vec::<String>::new(), "a playlist sent the edge to another host");
        assert_eq!(paths(&origin).await, ["/v/index.m3u8", "/v/s0.ts", "/v/s3.ts"]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_prefetch_over_its_byte_cap_is_abandoned_and_stores_nothing() {
        let origin = MockServer::start().await;
        Mock::given(path("/v/index.m3u8"))
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header("content-type", "application/vnd.apple.mpegurl")
                    .set_body_string("#EXTM3U\n#EXTINF:1,\ns0.ts\n#EXTINF:1,\nbig.ts\n#EXT-X-ENDLIST\n"),
            )
            .mount(&origin)
            .await;
        Mock::given(path("/v/s0.ts"))
            .respond_with(ResponseTemplate::new(200).set_body_bytes(vec![0u8; 1000]))
            .mount(&origin)
            .await;
        Mock::given(path("/v/big.ts"))
            .respond_with(ResponseTemplate::new(200).set_body_bytes(vec![1u8; 200_000]))
            .mount(&origin)
            .await;
        let config = config_file("[prefetch]\nmax_object_size = \"50kB\"\n");
        let edge =
            start_edge(&["--config", config.path().to_str().expect("utf8"), "--origin", &origin.uri()]).expect("edge");
        get(&edge.url("/v/index.m3u8")).await;
        assert!(until(&edge, Duration::from_secs(10), |p| p["playlists_read"] == 1).await);
        get(&edge.url("/v/s0.ts")).await;
        assert!(until(&edge, Duration::from_secs(10), |p| p["failed"] == 1).await, "{}", prefetch_stats(&edge).await);
        assert_eq!(prefetch_stats(&edge).await["completed"], 0);
        // Nothing was stored: the viewer's own request is a miss, and gets the whole object.
        let response = client().get(edge.url("/v/big.ts")).send().await.expect("get");
        assert_eq!(response.headers()["x-cache"], "MISS");
        assert_eq!(response.bytes().await.expect("body").len(), 200_000);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_watched_live_playlist_is_refreshed_before_it_expires_and_left_once_unwatched() {
        let origin = MockServer::start().await;
        // Live (no EXT-X-ENDLIST), 1 s target duration, fresh for 2 s.
        Mock::given(path("/live/index.m3u8"))
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header("content-type", "application/vnd.apple.mpegurl")
                    .insert_header("cache-control", "max-age=2")
                    .set_body_string("#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\na.ts\n#EXTINF:1,\nb.ts\n"),
            )
            .mount(&origin)
            .await;
        let config = config_file("[prefetch]\nsegments = 1\n");
        let edge =
            start_edge(&["--config", config.path().to_str().expect("utf8"), "--origin", &origin.uri()]).expect("edge");
        let url = edge.url("/live/index.m3u8");
        assert_eq!(get(&url).await.0, "MISS");
        // A viewer reloading twice per target duration for 7 s: the pacing of the workload, not a wait
        // for the edge.
        let watched = Instant::now();
        let mut answers = Vec::new();
        while watched.elapsed() < Duration::from_secs(7) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            answers.push(get(&url).await.0);
        }
        let hits = answers.iter().filter(|a| *a == "HIT").count();
        // Without the refresher, a reload every 0.5 s of a 2 s copy misses about one time in four.
        assert!(hits * 10 >= answers.len() * 9, "answers while watched: {answers:?}");
        let refreshed = paths(&origin).await.len() - 1;
        // One refresh about every 1.75 s (a quarter of the target duration before the 2 s run out).
        assert!((3..=6).contains(&refreshed), "{refreshed} refreshes in 7 s: {answers:?}");
        // Nobody reloads it now: the refresher notices within two freshness lifetimes and stops.
        let stopped = Instant::now();
        let mut text = String::new();
        while stopped.elapsed() < Duration::from_secs(15) {
            text = metrics(&edge).await;
            if text.contains("eddy_edge_prefetch_skipped_total{reason=\"not_watched\"} 1") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(text.contains("eddy_edge_prefetch_skipped_total{reason=\"not_watched\"} 1"), "{text}");
        let after = paths(&origin).await.len();
        assert!(after - 1 <= refreshed + 3, "refreshes went on unwatched: {after}");
        assert!(text.contains("eddy_edge_prefetch_completed_total{kind=\"playlist\"}"), "{text}");
    }
}
