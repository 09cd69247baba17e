//! `eddy-play` end to end: real HTTP on 127.0.0.1 (a small file server in this file that records when
//! each request started and ended), real GStreamer decoding with `--headless` (real-time fake sinks),
//! a few seconds of media per test.
//!
//! Content comes from `eddy-package` (test pattern, 1 s segments) when that binary is built and
//! works; otherwise it is made with ffmpeg, with the same ladder and layout.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use eddy_player::events::{EndReason, Event, EventRecord};
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use serde_json::Value;

mod gst_tools;

// ---------------------------------------------------------------------------------------------
// Content

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Format {
    Ts,
    Fmp4,
}

const LADDER: &[(&str, &str, &str)] =
    &[("240p", "426x240", "300k"), ("360p", "640x360", "800k"), ("480p", "854x480", "1500k")];

fn unix_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Where `eddy-package` would be, without insisting that it exists.
fn packager_path() -> Option<PathBuf> {
    let mut dir = std::env::current_exe().ok()?;
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join("eddy-package");
    path.exists().then_some(path)
}

/// Packages `seconds` of test pattern into `out` (`out/master.m3u8`, `out/<rung>/index.m3u8`).
fn package(out: &Path, seconds: u32, format: Format, encrypt: bool) -> Result<()> {
    if let Some(packager) = packager_path() {
        let ladder = LADDER.iter().map(|(name, _, rate)| format!("{name}:{rate}")).collect::<Vec<_>>().join(",");
        let mut command = Command::new(packager);
        command
            .args(["--test-pattern", &format!("{seconds}s"), "--out"])
            .arg(out)
            .args(["--ladder", &ladder, "--segment-duration", "1", "--format"])
            .arg(if format == Format::Ts { "ts" } else { "fmp4" });
        if encrypt {
            command.arg("--encrypt");
        }
        let output = command.stdout(Stdio::null()).output().context("running eddy-package")?;
        if output.status.success() && out.join("master.m3u8").exists() {
            return Ok(());
        }
        eprintln!(
            "eddy-package failed ({}), making the content with ffmpeg instead: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).lines().last().unwrap_or("")
        );
        let _ = std::fs::remove_dir_all(out);
    }
    package_with_ffmpeg(out, seconds, format, encrypt)
}

fn package_with_ffmpeg(out: &Path, seconds: u32, format: Format, encrypt: bool) -> Result<()> {
    std::fs::create_dir_all(out)?;
    let mut master = String::from("#EXTM3U\n#EXT-X-VERSION:7\n");
    if encrypt {
        std::fs::write(out.join("enc.key"), b"0123456789abcdef")?;
        std::fs::write(out.join("keyinfo"), format!("../enc.key\n{}\n", out.join("enc.key").display()))?;
    }
    for (name, size, rate) in LADDER {
        let dir = out.join(name);
        std::fs::create_dir_all(&dir)?;
        let mut command = Command::new("ffmpeg");
        command
            .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i", &format!("testsrc2=size={size}:rate=25")])
            .args(["-f", "lavfi", "-i", "sine", "-t", &seconds.to_string()])
            .args(["-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-keyint_min", "25", "-sc_threshold", "0"])
            .args(["-b:v", rate, "-c:a", "aac", "-f", "hls", "-hls_time", "1", "-hls_playlist_type", "vod"]);
        if format == Format::Fmp4 {
            command.args(["-hls_segment_type", "fmp4", "-hls_fmp4_init_filename", "init.mp4"]);
        }
        if encrypt {
            command.arg("-hls_key_info_file").arg(out.join("keyinfo"));
        }
        let extension = if format == Format::Ts { "ts" } else { "m4s" };
        command.arg("-hls_segment_filename").arg(dir.join(format!("seg_%03d.{extension}"))).arg(dir.join("index.m3u8"));
        let status = command.status().context("running ffmpeg")?;
        if !status.success() {
            bail!("ffmpeg failed for {name}: {status}");
        }
        let (width, height) = size.split_once('x').unwrap_or(("0", "0"));
        let bandwidth = eddy_rate(rate) * 12 / 10;
        master.push_str(&format!(
            "#EXT-X-STREAM-INF:BANDWIDTH={bandwidth},RESOLUTION={width}x{height}\n{name}/index.m3u8\n"
        ));
    }
    std::fs::write(out.join("master.m3u8"), master)?;
    Ok(())
}

fn eddy_rate(rate: &str) -> u64 {
    rate.trim_end_matches('k').parse::<u64>().unwrap_or(0) * 1000
}

/// The segment URIs of a media playlist, in order.
fn segment_uris(playlist: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(playlist).with_context(|| format!("reading {}", playlist.display()))?;
    Ok(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect())
}

// ---------------------------------------------------------------------------------------------
// A recording HTTP file server

#[derive(Debug, Clone)]
struct Served {
    path: String,
    status: u16,
    start_ms: f64,
    end_ms: f64,
}

/// Serves `/live/index.m3u8` as a sliding window over the VOD rendition `source`: segment i appears
/// `i` seconds after the server started (3 are there at once), ENDLIST once all are out.
#[derive(Clone)]
struct Live {
    source_rung: String,
    segments: Vec<String>,
}

struct FileServer {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Served>>>,
    _runtime: tokio::runtime::Runtime,
}

impl FileServer {
    fn start(root: PathBuf, live: Option<Live>) -> Result<Self> {
        Self::start_with_delays(root, live, Vec::new())
    }

    /// Like [`FileServer::start`], holding back the response for each `(path, delay)` pair.
    fn start_with_delays(root: PathBuf, live: Option<Live>, delays: Vec<(String, Duration)>) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let state = Arc::new((root, live, Arc::clone(&log), started, delays));
        runtime.spawn(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
            while let Ok((stream, _)) = listener.accept().await {
                let state = Arc::clone(&state);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let state = Arc::clone(&state);
                        async move {
                            let path = request.uri().path().to_string();
                            if let Some((_, delay)) = state.4.iter().find(|(p, _)| *p == path) {
                                tokio::time::sleep(*delay).await;
                            }
                            Ok::<_, Infallible>(serve(&state.0, state.1.as_ref(), &state.2, state.3, request))
                        }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
        Ok(Self { addr, log, _runtime: runtime })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn requests(&self) -> Vec<Served> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

fn serve(
    root: &Path,
    live: Option<&Live>,
    log: &Mutex<Vec<Served>>,
    started: Instant,
    request: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let start_ms = unix_ms();
    let path = request.uri().path().to_string();
    let (status, body) = if path == "/live/index.m3u8" {
        match live {
            Some(live) => (StatusCode::OK, Bytes::from(live_playlist(live, started.elapsed()))),
            None => (StatusCode::NOT_FOUND, Bytes::new()),
        }
    } else if path.split('/').any(|part| part == "..") {
        (StatusCode::FORBIDDEN, Bytes::new())
    } else {
        match std::fs::read(root.join(path.trim_start_matches('/'))) {
            Ok(data) => (StatusCode::OK, Bytes::from(data)),
            Err(_) => (StatusCode::NOT_FOUND, Bytes::from_static(b"not found")),
        }
    };
    if let Ok(mut log) = log.lock() {
        log.push(Served { path, status: status.as_u16(), start_ms, end_ms: unix_ms() });
    }
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
}

fn live_playlist(live: &Live, elapsed: Duration) -> String {
    const WINDOW: usize = 3;
    let available = (WINDOW + elapsed.as_secs() as usize).min(live.segments.len());
    let first = available.saturating_sub(WINDOW);
    let mut text = format!("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:{first}\n");
    for uri in &live.segments[first..available] {
        text.push_str(&format!("#EXTINF:1.0,\n/vod/{}/{uri}\n", live.source_rung));
    }
    if available == live.segments.len() {
        text.push_str("#EXT-X-ENDLIST\n");
    }
    text
}

// ---------------------------------------------------------------------------------------------
// Running the player

struct Run {
    output: Output,
    report: Option<Value>,
    /// The `--events` file, every line read as the documented format (`eddy_player::events`).
    events: Vec<EventRecord>,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).to_string()
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).to_string()
    }
    fn report(&self) -> Result<&Value> {
        self.report.as_ref().with_context(|| format!("no report; stderr: {}", self.stderr()))
    }
}

/// Runs `eddy-play URL --headless --report --events` plus `args`, killing it after `timeout`.
fn play(url: &str, args: &[&str], work: &Path, timeout: Duration) -> Result<Run> {
    let report_path = work.join("report.json");
    let events_path = work.join("events.jsonl");
    let mut child = Command::new(eddy_tests::bin_path("eddy-play"))
        .arg(url)
        .args(["--headless", "--report"])
        .arg(&report_path)
        .arg("--events")
        .arg(&events_path)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting eddy-play")?;
    let status = eddy_tests::wait_with_timeout(&mut child, timeout).context("eddy-play did not finish in time")?;
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    if let Some(mut pipe) = child.stdout.take() {
        std::io::Read::read_to_end(&mut pipe, &mut stdout)?;
    }
    if let Some(mut pipe) = child.stderr.take() {
        std::io::Read::read_to_end(&mut pipe, &mut stderr)?;
    }
    let output = Output { status, stdout, stderr };
    let report = std::fs::read(&report_path).ok().and_then(|data| serde_json::from_slice(&data).ok());
    let events = eddy_player::events::read(&std::fs::read_to_string(&events_path).unwrap_or_default())
        .map_err(anyhow::Error::msg)
        .context("the --events file does not follow the documented format")?;
    Ok(Run { output, report, events })
}

fn segments_of(report: &Value) -> Vec<Value> {
    report["segments"].as_array().cloned().unwrap_or_default()
}

fn tempdir() -> Result<tempfile::TempDir> {
    tempfile::Builder::new().prefix("eddy-player-test").tempdir().context("temporary directory")
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn plays_a_packaged_vod_stream_to_the_end_without_stalls() -> Result<()> {
    let work = tempdir()?;
    let content = work.path().join("content");
    package(&content, 4, Format::Ts, false)?;
    let server = FileServer::start(content.clone(), None)?;
    let run = play(&server.url("/master.m3u8"), &[], work.path(), Duration::from_secs(30))?;
    assert!(run.output.status.success(), "exit {:?}: {}", run.output.status, run.stderr());
    assert!(run.stderr().contains("--headless"), "says it plays headless: {}", run.stderr());
    let report = run.report()?;
    assert_eq!(report["stall_count"], 0, "{report}");
    let played = report["played_s"].as_f64().unwrap_or(0.0);
    assert!((played - 4.0).abs() < 0.2, "played {played} s");
    let segments = segments_of(report);
    let indices: Vec<u64> = segments.iter().filter_map(|s| s["index"].as_u64()).collect();
    assert_eq!(indices, vec![0, 1, 2, 3], "one entry per played segment, in order");
    for segment in &segments {
        assert!(segment["rendition"].as_u64().is_some_and(|r| r < 3), "{segment}");
        assert!(segment["bytes"].as_u64().is_some_and(|b| b > 1000), "{segment}");
        assert_eq!(segment["abandoned"], false);
    }
    // Loopback is fast: the player climbs off the lowest rendition.
    assert!(segments.iter().any(|s| s["rendition"].as_u64() != Some(0)), "{report}");
    for key in ["startup_ms", "stall_ms", "rebuffer_ratio", "avg_bitrate_bps", "switches", "bytes", "qoe_lin"] {
        assert!(report.get(key).is_some(), "{key} missing from {report}");
    }
    assert!(run.stdout().contains("QoE_lin"), "summary on stdout: {}", run.stdout());
    // Every played segment was requested exactly once from the rendition it is reported at.
    let requests = server.requests();
    assert!(requests.iter().all(|r| r.status == 200), "only existing files were asked for");
    for segment in &segments {
        let rung = LADDER[segment["rendition"].as_u64().unwrap_or(0) as usize].0;
        let count =
            requests.iter().filter(|r| r.path.starts_with(&format!("/{rung}/")) && !r.path.ends_with(".m3u8")).count();
        assert!(count >= 1, "no request for rendition {rung}");
    }
    // The window's title names the stream and the rendition playing; the video sink received one
    // per run of a rendition, in the order they played.
    let titles: Vec<&str> = run
        .events
        .iter()
        .filter_map(|r| match &r.event {
            Event::Title { title } => Some(title.as_str()),
            _ => None,
        })
        .collect();
    let mut played: Vec<u64> = segments.iter().filter_map(|s| s["rendition"].as_u64()).collect();
    played.dedup();
    let expected: Vec<String> = played
        .iter()
        .map(|&r| format!("{} · {}", server.url("/master.m3u8"), LADDER[r as usize].1.replace('x', "×")))
        .collect();
    assert_eq!(titles.len(), expected.len(), "titles {titles:?} for renditions {played:?}");
    for (title, expected) in titles.iter().zip(&expected) {
        assert!(title.starts_with("eddy-play · ") && title.contains(expected.as_str()), "{title} ≠ {expected}");
    }
    Ok(())
}

#[test]
fn fetches_the_next_segment_while_the_current_one_plays_with_a_bounded_look_ahead() -> Result<()> {
    let work = tempdir()?;
    let content = work.path().join("content");
    package(&content, 6, Format::Ts, false)?;
    let server = FileServer::start(content.clone(), None)?;
    let run = play(
        &server.url("/master.m3u8"),
        &["--rendition", "0", "--buffer", "2", "--quiet"],
        work.path(),
        Duration::from_secs(30),
    )?;
    assert!(run.output.status.success(), "{}", run.stderr());
    let playing_ms = run
        .events
        .iter()
        .find(|e| matches!(e.event, Event::Playing { .. }))
        .map(|e| e.unix_ms as f64)
        .context("a 'playing' event")?;
    let uris = segment_uris(&content.join("240p/index.m3u8"))?;
    let requests = server.requests();
    let requested_at = |n: usize| -> Result<(f64, f64)> {
        let path = format!("/240p/{}", uris[n]);
        requests
            .iter()
            .find(|r| r.path == path && r.status == 200)
            .map(|r| (r.start_ms, r.end_ms))
            .with_context(|| format!("{path} never served"))
    };
    for n in 0..uris.len() - 1 {
        // Segment n (1 s each) finishes playing at playing + (n + 1) s.
        let n_finishes_ms = playing_ms + (n as f64 + 1.0) * 1000.0;
        let (start, end) = requested_at(n + 1)?;
        assert!(start < n_finishes_ms, "segment {} requested after segment {n} finished playing", n + 1);
        assert!(end < n_finishes_ms, "segment {} arrived after segment {n} finished playing", n + 1);
    }
    // Bounded: with a 2 s buffer target the last segment waits until playback has moved on.
    let (last, _) = requested_at(uris.len() - 1)?;
    assert!(
        last > playing_ms + 1500.0,
        "the last segment was fetched {:.0} ms after playback began",
        last - playing_ms
    );
    Ok(())
}

#[test]
fn plays_an_fmp4_stream_and_pushes_the_init_section_of_each_rendition() -> Result<()> {
    let work = tempdir()?;
    let content = work.path().join("content");
    package(&content, 4, Format::Fmp4, false)?;
    let server = FileServer::start(content.clone(), None)?;
    let run = play(&server.url("/master.m3u8"), &["--quiet"], work.path(), Duration::from_secs(30))?;
    assert!(run.output.status.success(), "{}", run.stderr());
    let report = run.report()?;
    assert_eq!(segments_of(report).len(), 4, "{report}");
    assert_eq!(report["stall_count"], 0);
    let requests = server.requests();
    let mut renditions: Vec<u64> = segments_of(report).iter().filter_map(|s| s["rendition"].as_u64()).collect();
    renditions.dedup();
    for rendition in renditions {
        let rung = LADDER[rendition as usize].0;
        let inits =
            requests.iter().filter(|r| r.path.starts_with(&format!("/{rung}/")) && r.path.contains("init")).count();
        assert!(
            inits >= 1,
            "init section of {rung} not fetched: {:?}",
            requests.iter().map(|r| &r.path).collect::<Vec<_>>()
        );
    }
    Ok(())
}

#[test]
fn plays_an_aes128_stream_fetching_the_key_once() -> Result<()> {
    let work = tempdir()?;
    let content = work.path().join("content");
    package(&content, 3, Format::Ts, true)?;
    let server = FileServer::start(content.clone(), None)?;
    let run =
        play(&server.url("/master.m3u8"), &["--quiet", "--rendition", "0"], work.path(), Duration::from_secs(30))?;
    assert!(run.output.status.success(), "{}", run.stderr());
    let report = run.report()?;
    assert_eq!(segments_of(report).len(), 3, "{report}");
    let keys: Vec<String> = server
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with(".key") || r.path.contains("key"))
        .map(|r| r.path)
        .collect();
    assert_eq!(keys.len(), 1, "key requests: {keys:?}");
    Ok(())
}

#[test]
fn plays_a_live_stream_from_near_the_edge_until_endlist() -> Result<()> {
    let work = tempdir()?;
    let content = work.path().join("content");
    package(&content, 6, Format::Ts, false)?;
    let segments = segment_uris(&content.join("240p/index.m3u8"))?;
    let live = Live { source_rung: "240p".into(), segments };
    let root = work.path().join("root");
    std::fs::create_dir_all(&root)?;
    std::os::unix::fs::symlink(&content, root.join("vod"))?;
    let server = FileServer::start(root, Some(live))?;
    let run = play(&server.url("/live/index.m3u8"), &["--quiet"], work.path(), Duration::from_secs(30))?;
    assert!(run.output.status.success(), "{}", run.stderr());
    let report = run.report()?;
    let indices: Vec<u64> = segments_of(report).iter().filter_map(|s| s["index"].as_u64()).collect();
    // Starts 3 target durations from the live edge (segment 0 of the first 3-segment window), then
    // follows the reloads to the end without gaps.
    assert_eq!(indices, (0..6).collect::<Vec<u64>>(), "{report}");
    let reloads = server.requests().iter().filter(|r| r.path == "/live/index.m3u8").count();
    assert!(reloads >= 3, "the live playlist was reloaded {reloads} time(s)");
    Ok(())
}

#[test]
fn refuses_bad_input_with_a_one_line_reason_and_a_failure_exit() -> Result<()> {
    let work = tempdir()?;
    std::fs::write(work.path().join("bad.m3u8"), "<html>oops</html>")?;
    let server = FileServer::start(work.path().to_path_buf(), None)?;
    let cases: HashMap<&str, (String, &str)> = HashMap::from([
        ("404", (server.url("/missing.m3u8"), "404")),
        ("malformed", (server.url("/bad.m3u8"), "not an HLS playlist")),
        ("unreachable", ("http://127.0.0.1:9/x.m3u8".to_string(), "127.0.0.1:9")),
    ]);
    for (name, (url, expected)) in cases {
        let run = play(&url, &["--quiet"], work.path(), Duration::from_secs(20))?;
        assert!(!run.output.status.success(), "{name}: should fail");
        let stderr = run.stderr();
        let error_line = stderr.lines().find(|l| l.starts_with("eddy-play: error:")).unwrap_or("");
        assert!(error_line.contains(expected), "{name}: {stderr}");
    }
    let run = play(&server.url("/bad.m3u8"), &["--buffer", "0"], work.path(), Duration::from_secs(20))?;
    assert!(!run.output.status.success() && run.stderr().contains("--buffer"), "{}", run.stderr());
    Ok(())
}

#[test]
fn stops_at_the_requested_duration_without_a_stall_or_a_hang() -> Result<()> {
    let work = tempdir()?;
    let content = work.path().join("content");
    package(&content, 6, Format::Ts, false)?;
    let server = FileServer::start(content.clone(), None)?;
    // A 1 s buffer target: the player has pushed exactly 3 s when it stops fetching, and the buffer
    // runs out just as the duration is reached. That end is not a stall, and playback must end there
    // (it used to pause for a "stall" that nothing would ever refill).
    let run = play(
        &server.url("/master.m3u8"),
        &["--rendition", "0", "--buffer", "1", "--duration", "3", "--quiet"],
        work.path(),
        Duration::from_secs(20),
    )?;
    assert!(run.output.status.success(), "{}", run.stderr());
    let report = run.report()?;
    assert_eq!(report["stall_count"], 0, "{report}");
    let played = report["played_s"].as_f64().unwrap_or(0.0);
    assert!((2.9..=3.5).contains(&played), "played {played} s: {report}");
    assert!(!run.events.iter().any(|e| matches!(e.event, Event::Stall { .. })), "no stall event: {:?}", run.events);
    assert!(
        run.events.iter().any(|e| matches!(e.event, Event::End { reason: EndReason::DurationReached, .. })),
        "ends because the duration was reached: {:?}",
        run.events
    );
    Ok(())
}

#[test]
fn measures_a_stall_when_a_segment_arrives_late() -> Result<()> {
    let work = tempdir()?;
    let content = work.path().join("content");
    package(&content, 5, Format::Ts, false)?;
    let uris = segment_uris(&content.join("240p/index.m3u8"))?;
    // Segment 2 is held back 3 s; with a 1 s buffer target playback runs dry and waits for it.
    let late = (format!("/240p/{}", uris[2]), Duration::from_secs(3));
    let server = FileServer::start_with_delays(content.clone(), None, vec![late])?;
    let run = play(
        &server.url("/master.m3u8"),
        &["--rendition", "0", "--buffer", "1", "--quiet"],
        work.path(),
        Duration::from_secs(30),
    )?;
    assert!(run.output.status.success(), "{}", run.stderr());
    let report = run.report()?;
    assert_eq!(report["stall_count"], 1, "{report}");
    let stall_ms = report["stall_ms"].as_u64().unwrap_or(0);
    // Held back 3 s with at most ~1 s buffered: the stall lasts ~2 s plus the resume threshold's refill.
    assert!((1000..=5000).contains(&stall_ms), "stall of {stall_ms} ms");
    assert!(report["rebuffer_ratio"].as_f64().is_some_and(|r| r > 0.1), "{report}");
    assert_eq!(segments_of(report).len(), 5, "everything still played: {report}");
    assert!(run.events.iter().any(|e| matches!(e.event, Event::Stall { .. })), "a stall event");
    assert!(run.events.iter().any(|e| matches!(e.event, Event::Resume { .. })), "a resume event");
    Ok(())
}

#[test]
fn a_missing_segment_is_fetched_from_a_lower_rendition_and_fails_clearly_when_none_has_it() -> Result<()> {
    let work = tempdir()?;
    let content = work.path().join("content");
    package(&content, 4, Format::Ts, false)?;
    let uris = segment_uris(&content.join("240p/index.m3u8"))?;
    // Segment 2 is gone from the two upper renditions: the player must fall back to 240p for it.
    for rung in ["360p", "480p"] {
        let name = segment_uris(&content.join(format!("{rung}/index.m3u8")))?[2].clone();
        std::fs::remove_file(content.join(rung).join(name))?;
    }
    let server = FileServer::start(content.clone(), None)?;
    let run = play(&server.url("/master.m3u8"), &["--quiet"], work.path(), Duration::from_secs(30))?;
    assert!(run.output.status.success(), "{}", run.stderr());
    let report = run.report()?;
    let segments = segments_of(report);
    assert_eq!(segments.len(), 4, "{report}");
    assert_eq!(segments[2]["rendition"], 0, "segment 2 came from the lowest rendition: {report}");
    let failed = server.requests().iter().filter(|r| r.status == 404).count();
    assert!(failed >= 1, "a higher rendition was tried first");

    // Gone everywhere: a clear one-line failure naming the segment.
    std::fs::remove_file(content.join("240p").join(&uris[2]))?;
    let run = play(&server.url("/master.m3u8"), &["--quiet"], work.path(), Duration::from_secs(30))?;
    assert!(!run.output.status.success());
    assert!(run.stderr().contains("segment 2 could not be fetched"), "{}", run.stderr());
    Ok(())
}

/// A raw `GET path` to `addr`, for the edge's `/metrics` (this file's tests are synchronous).
fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

/// A signed playback URL through an edge that requires tokens (`[auth] signed_urls`): the token given
/// on the command line reaches every playlist, segment and the AES key (relative URIs take the
/// playlist's query), and the stream plays to the end without a stall. Without a token, or with one
/// for another video, nothing plays.
#[test]
fn plays_a_signed_stream_through_an_edge_that_requires_tokens() -> Result<()> {
    use eddy_shared::signed_url::{sign, SigningKey};
    let work = tempdir()?;
    let root = work.path().join("root");
    package(&root.join("videos/x"), 4, Format::Ts, true)?;
    let secret = "player-test-playback-key-0123456789";
    let key_file = work.path().join("playback.key");
    std::fs::write(&key_file, secret)?;
    let config = work.path().join("edge.toml");
    std::fs::write(
        &config,
        format!("[auth]\nsigned_urls = {{ key_file = {key_file:?}, prefixes = [\"/videos/\"] }}\n"),
    )?;
    let edge = eddy_tests::start_edge(&[
        "--config",
        config.to_str().context("utf-8 path")?,
        "--origin",
        root.to_str().context("utf-8 path")?,
    ])?;
    let key = SigningKey::from_bytes(secret.as_bytes())?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let token = sign(&key, "/videos/x/", now + 600);

    let run = play(
        &edge.url(&format!("/videos/x/master.m3u8?token={token}")),
        &["--quiet"],
        work.path(),
        Duration::from_secs(30),
    )?;
    assert!(run.output.status.success(), "exit {:?}: {}", run.output.status, run.stderr());
    let report = run.report()?;
    assert_eq!(report["stall_count"], 0, "{report}");
    assert_eq!(segments_of(report).len(), 4, "{report}");
    let metrics = http_get(edge.admin, "/metrics")?;
    let refused: Vec<&str> = metrics.lines().filter(|l| l.starts_with("eddy_edge_auth_refused_total{")).collect();
    assert!(refused.is_empty(), "the edge refused some of the player's requests: {refused:?}");

    for url in [
        edge.url("/videos/x/master.m3u8"),
        edge.url(&format!("/videos/x/master.m3u8?token={}", sign(&key, "/videos/y/", now + 600))),
    ] {
        let run = play(&url, &["--quiet"], work.path(), Duration::from_secs(30))?;
        assert!(!run.output.status.success(), "{url} played");
        assert!(run.stderr().contains("403"), "{url}: {}", run.stderr());
    }
    Ok(())
}

/// Without the plugin that demuxes MPEG-TS (Debian's gstreamer1.0-plugins-bad), eddy-play stops before
/// its first request, names the element, the plugin and the package to install, and exits 1 without a
/// backtrace.
#[test]
fn a_missing_plugin_is_named_with_its_package_before_any_request() -> Result<()> {
    let work = tempdir()?;
    let content = work.path().join("content");
    package(&content, 2, Format::Ts, false)?;
    let server = FileServer::start(content.clone(), None)?;
    let plugins = gst_tools::PluginsWithout::new("libgstmpegtsdemux.so")?;
    let mut command = Command::new(eddy_tests::bin_path("eddy-play"));
    command.arg(server.url("/master.m3u8")).args(["--headless", "--quiet"]).env("RUST_BACKTRACE", "1");
    plugins.apply(&mut command);
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
    let status = eddy_tests::wait_with_timeout(&mut child, Duration::from_secs(30))?;
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        std::io::Read::read_to_string(&mut pipe, &mut stderr)?;
    }
    assert_eq!(status.code(), Some(1), "{stderr}");
    let expected =
        "tsdemux: from the GStreamer plugin 'mpegtsdemux', in the Debian/Ubuntu package gstreamer1.0-plugins-bad";
    assert!(stderr.contains(expected), "{stderr}");
    assert!(stderr.contains("apt-get install gstreamer1.0-plugins-bad"), "{stderr}");
    assert!(!stderr.contains("backtrace") && !stderr.contains("panicked"), "{stderr}");
    assert!(server.requests().is_empty(), "requests before the check: {:?}", server.requests().len());
    Ok(())
}
