//! Driving `eddy-play`: a seek from a flag (`--seek-to`, the ←/→ keys' equivalent for scripts), and
//! the keys themselves in a real pseudo-terminal made by `script(1)` (util-linux, in Debian's
//! essential bsdutils): space pauses and resumes, `q` quits with the report still written, and the
//! terminal is back in its normal mode afterwards. Content is made at test time by ffmpeg and served
//! by a real `eddy-edge` on 127.0.0.1.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use eddy_player::events::{EndReason, Event, EventRecord};

/// 8 s of MPEG-TS in 1 s segments (`index.m3u8`) under `dir`.
fn make_stream(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let status = Command::new("ffmpeg")
        .current_dir(dir)
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25"])
        .args(["-f", "lavfi", "-i", "sine", "-t", "8", "-c:v", "libx264", "-preset", "ultrafast", "-g", "25"])
        .args(["-sc_threshold", "0", "-c:a", "aac", "-f", "hls", "-hls_time", "1", "-hls_playlist_type", "vod"])
        .args(["-hls_segment_filename", "s%d.ts", "index.m3u8"])
        .status()
        .context("running ffmpeg")?;
    if !status.success() {
        bail!("ffmpeg failed: {status}");
    }
    Ok(())
}

fn read_events(path: &Path) -> Vec<EventRecord> {
    eddy_player::events::read(&std::fs::read_to_string(path).unwrap_or_default()).unwrap_or_default()
}

#[test]
fn seek_to_jumps_forward_and_back_within_a_vod_stream_without_a_stall() -> Result<()> {
    let work = tempfile::Builder::new().prefix("eddy-controls").tempdir()?;
    make_stream(&work.path().join("root/vod"))?;
    let edge = eddy_tests::start_edge(&["--origin", work.path().join("root").to_str().context("utf-8")?])?;
    for (seek, first_after, played) in [("6@1", 6, 3.0), ("0@3", 0, 11.0)] {
        let (report_path, events_path) = (work.path().join("report.json"), work.path().join("events.jsonl"));
        let mut command = Command::new(eddy_tests::bin_path("eddy-play"));
        command.arg(edge.url("/vod/index.m3u8")).args(["--headless", "--quiet", "--seek-to", seek, "--report"]);
        command.arg(&report_path).arg("--events").arg(&events_path);
        let output = eddy_tests::run_to_end(command, Duration::from_secs(60))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{seek}: {stderr}");
        let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report_path)?)?;
        assert_eq!(report["stall_count"], 0, "{seek}: a seek is not a stall: {report}");
        let total = report["played_s"].as_f64().unwrap_or(0.0);
        assert!((total - played).abs() < 0.8, "{seek}: played {total} s, expected about {played}");
        let events = read_events(&events_path);
        let position = events.iter().position(|r| matches!(r.event, Event::Seek { .. })).context("no seek event")?;
        let Event::Seek { to_s, .. } = events[position].event else { unreachable!() };
        assert!((to_s - first_after as f64).abs() < 1e-6, "{seek}: sought to {to_s}");
        let next = events[position..].iter().find_map(|r| match r.event {
            Event::Segment { index, .. } => Some(index),
            _ => None,
        });
        assert_eq!(next, Some(first_after), "{seek}: the first segment pushed after the seek");
        assert!(events.iter().any(|r| matches!(r.event, Event::End { reason: EndReason::EndOfStream, .. })));
    }
    Ok(())
}

/// Waits (bounded) until `events_path` holds an event `wanted` says yes to.
fn wait_for_event(events_path: &Path, wanted: impl Fn(&Event) -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if read_events(events_path).iter().any(|r| wanted(&r.event)) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("no such event in {}", events_path.display())
}

#[test]
fn keys_pause_resume_and_quit_in_a_terminal_which_is_restored_after() -> Result<()> {
    let work = tempfile::Builder::new().prefix("eddy-controls").tempdir()?;
    make_stream(&work.path().join("root/vod"))?;
    let edge = eddy_tests::start_edge(&["--origin", work.path().join("root").to_str().context("utf-8")?])?;
    let (report_path, events_path) = (work.path().join("report.json"), work.path().join("events.jsonl"));
    let player = format!(
        "{} {} --headless --report {} --events {}; echo exit=$?; stty -a",
        eddy_tests::bin_path("eddy-play").display(),
        edge.url("/vod/index.m3u8"),
        report_path.display(),
        events_path.display()
    );
    // script gives the command a pseudo-terminal for stdin and stdout, and copies ours into it.
    let mut child = Command::new("script")
        .args(["-qfec", &player, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting script(1)")?;
    let mut keys = child.stdin.take().context("stdin")?;
    let stdout = child.stdout.take().context("stdout")?;
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
            if lines_tx.send(String::from_utf8_lossy(&line).to_string()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut expect = |text: &str| -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines.recv_timeout(left).with_context(|| format!("no '{text}' in {seen:?}"))?;
            seen.push(line.clone());
            if line.contains(text) {
                return Ok(());
            }
        }
    };
    expect("keys: space pause")?;
    wait_for_event(&events_path, |e| matches!(e, Event::Playing { .. }))?;
    keys.write_all(b" ")?;
    keys.flush()?;
    wait_for_event(&events_path, |e| matches!(e, Event::Paused { .. }))?;
    keys.write_all(b" ")?;
    keys.flush()?;
    wait_for_event(&events_path, |e| matches!(e, Event::Unpaused { .. }))?;
    keys.write_all(b"q")?;
    keys.flush()?;
    expect("exit=0")?;
    // After eddy-play, the terminal reads lines and echoes again.
    expect("icanon")?;
    let modes = seen.last().cloned().unwrap_or_default();
    assert!(
        modes.split_whitespace().any(|m| m == "icanon") && !modes.contains("-echo "),
        "the terminal was left in raw mode: {modes}"
    );
    let status = eddy_tests::wait_with_timeout(&mut child, Duration::from_secs(10))?;
    assert!(status.success());
    let events = read_events(&events_path);
    assert!(
        events.iter().any(|r| matches!(r.event, Event::End { reason: EndReason::Quit, .. })),
        "q ends playback as a quit: {events:?}"
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report_path)?)?;
    assert_eq!(report["interrupted"], true, "{report}");
    Ok(())
}
