//! The player adapting to real, shaped links, end to end: packaged content → `eddy-edge` → `eddy-netsim`
//! (a bandwidth pattern) → `eddy-play --headless --report`. Each test plays a few seconds of media in
//! real time, so the whole group stays well under two minutes.
//!
//! Link time 0 is the player's first request (eddy-netsim starts its clock then), so pattern times line
//! up with the player's timeline and with the `start_ms` of eddy-netsim's request log.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use eddy_tests::{bin_path, spawn_until_ready, start_edge, wait_with_timeout, Edge, Running};
use serde_json::Value;

/// Rungs in master order (ascending bandwidth), as `eddy-package` writes them.
const LADDER: &str = "240p:300k,360p:800k,480p:1500k";
const RUNGS: [&str; 3] = ["240p", "360p", "480p"];

/// One packaged ladder (30 s, 1 s segments) shared by every test in this file.
fn content() -> &'static Path {
    static CONTENT: OnceLock<tempfile::TempDir> = OnceLock::new();
    CONTENT
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let status = Command::new(bin_path("eddy-package"))
                .args(["--test-pattern", "30s", "--ladder", LADDER, "--segment-duration", "1", "--out"])
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

/// The peak bitrate the master playlist declares for each rung, in bits/s.
fn declared_bandwidths() -> Vec<u64> {
    let master = std::fs::read_to_string(content().join("master.m3u8")).expect("master");
    master
        .lines()
        .filter_map(|l| l.strip_prefix("#EXT-X-STREAM-INF:"))
        .filter_map(|attrs| attrs.split(',').find_map(|a| a.strip_prefix("BANDWIDTH=")).and_then(|v| v.parse().ok()))
        .collect()
}

struct Setup {
    _edge: Edge,
    link: Running,
    log: PathBuf,
    work: tempfile::TempDir,
}

fn setup(pattern: &str) -> Setup {
    let edge = start_edge(&["--origin", content().to_str().expect("utf8")]).expect("edge");
    let work = tempfile::tempdir().expect("tempdir");
    let log = work.path().join("link.jsonl");
    let mut command = Command::new(bin_path("eddy-netsim"));
    command
        .args([
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &edge.url(""),
            "--pattern",
            pattern,
            "--latency",
            "20",
            "--log",
        ])
        .arg(&log);
    let link = spawn_until_ready(command, "eddy-netsim listening on", Duration::from_secs(20)).expect("netsim");
    Setup { _edge: edge, link, log, work }
}

/// Plays through the link and returns the report.
fn play(setup: &Setup, args: &[&str]) -> Value {
    let addr = setup.link.addr_after("listening on ").expect("netsim addr");
    let report = setup.work.path().join("report.json");
    let mut child = Command::new(bin_path("eddy-play"))
        .arg(format!("http://{addr}/master.m3u8"))
        .args(["--headless", "--quiet", "--report"])
        .arg(&report)
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .expect("eddy-play starts");
    let status = wait_with_timeout(&mut child, Duration::from_secs(90)).expect("eddy-play finishes");
    assert!(status.success(), "eddy-play failed: {status:?}");
    serde_json::from_slice(&std::fs::read(&report).expect("report written")).expect("report is JSON")
}

/// Segment requests from eddy-netsim's log: (rung index, start ms, closed early).
fn segment_requests(log: &Path) -> Vec<(usize, f64, bool)> {
    std::fs::read_to_string(log)
        .expect("link log")
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|entry| {
            let path = entry["path"].as_str()?.to_string();
            if !path.ends_with(".ts") {
                return None;
            }
            let rung = RUNGS.iter().position(|r| path.starts_with(&format!("/{r}/")))?;
            Some((rung, entry["start_ms"].as_f64()?, entry["closed_early"].as_bool().unwrap_or(false)))
        })
        .collect()
}

fn renditions(report: &Value) -> Vec<u64> {
    report["segments"]
        .as_array()
        .expect("segments")
        .iter()
        .map(|s| s["rendition"].as_u64().expect("rendition"))
        .collect()
}

#[test]
fn a_steady_fast_link_reaches_the_top_rendition_and_stays() {
    let top = *declared_bandwidths().last().expect("rungs");
    let rate = top * 3 / 2;
    let setup = setup(&format!("{rate}"));
    let report = play(&setup, &["--duration", "12"]);
    let chosen = renditions(&report);
    let first_top = chosen.iter().position(|&r| r == 2).expect("the top rendition is reached");
    assert!(first_top <= 3, "top rendition only at segment {first_top}: {chosen:?}");
    assert!(chosen[first_top..].iter().all(|&r| r == 2), "left the top rendition on a steady link: {chosen:?}");
    assert_eq!(report["stall_count"], 0, "{report}");
    assert!(report["switches"].as_u64().expect("switches") <= 2, "{report}");
}

#[test]
fn a_drop_brings_a_lower_rendition_within_two_segments_then_recovery_climbs_back() {
    let bandwidths = declared_bandwidths();
    let high = bandwidths[2] * 3 / 2;
    let low = bandwidths[0] * 3 / 2; // just above the lowest rung
    let (drop_s, recover_s) = (6, 14);
    let setup = setup(&format!("{high}@0s,{low}@{drop_s}s,{high}@{recover_s}s"));
    let events = setup.work.path().join("events.jsonl");
    let events_arg = events.to_str().expect("utf8");
    let report = play(&setup, &["--buffer", "6", "--duration", "26", "--events", events_arg]);
    replay_agrees(&events);

    let requests = segment_requests(&setup.log);
    let after_drop: Vec<usize> =
        requests.iter().filter(|(_, start, _)| *start >= (drop_s * 1000) as f64).map(|(rung, _, _)| *rung).collect();
    assert!(
        after_drop.iter().take(2).any(|&rung| rung < 2),
        "no lower rendition within 2 segments of the drop: {after_drop:?}"
    );
    let after_recovery: Vec<usize> =
        requests.iter().filter(|(_, start, _)| *start >= (recover_s * 1000) as f64).map(|(rung, _, _)| *rung).collect();
    assert!(after_recovery.contains(&2), "did not climb back to the top after recovery: {after_recovery:?}");
    let stalls = report["stall_count"].as_u64().expect("stall_count");
    assert!(stalls <= 1, "{stalls} stalls: {report}");
    if stalls == 1 {
        assert!(report["stall_ms"].as_f64().expect("stall_ms") < 2000.0, "the one stall is short: {report}");
    }
}

#[test]
fn a_collapse_mid_download_abandons_it_and_refetches_lower() {
    let bandwidths = declared_bandwidths();
    let high = bandwidths[2] * 3 / 2;
    // Far below even the top rung's segment size per second: the download in progress cannot finish in
    // time, so the player must abandon it.
    let collapse = 150_000;
    let setup = setup(&format!("{high}@0s,{collapse}@6s,{high}@11s"));
    let report = play(&setup, &["--buffer", "4", "--duration", "14"]);
    let segments = report["segments"].as_array().expect("segments");
    // The report has one entry per played segment: `abandoned` marks a segment played at the
    // rendition listed after a download of it at a higher rendition was given up.
    let abandoned: Vec<&Value> = segments.iter().filter(|s| s["abandoned"] == true).collect();
    assert!(!abandoned.is_empty(), "no download was abandoned: {report}");
    let given_up = closed_early_segments(&setup.log);
    assert!(!given_up.is_empty(), "the link log shows no abandoned request");
    for played in &abandoned {
        let index = played["index"].as_u64().expect("index");
        let rendition = played["rendition"].as_u64().expect("rendition") as usize;
        assert!(
            given_up.iter().any(|&(rung, i)| i == index && rung > rendition),
            "segment {index} played at rendition {rendition}, but the link log shows no higher request of it \
             closed early: {given_up:?} {report}"
        );
    }
}

/// Replays a real playback's `--events` file through the ABR loop the simulator drives
/// (`eddy_player::sim::replay`): every decision must come out the same, and there must be decisions
/// at more than one rung (a replay of a session that never adapted would prove little).
fn replay_agrees(events: &Path) {
    let text = std::fs::read_to_string(events).expect("events written");
    let records = eddy_player::events::read(&text).unwrap_or_else(|e| panic!("{}: {e}", events.display()));
    let events: Vec<_> = records.into_iter().map(|r| r.event).collect();
    let decisions = eddy_player::sim::replay::replay(&events, &mut eddy_player::abr::EddyAbr::new())
        .unwrap_or_else(|e| panic!("replay: {e}"));
    let differing: Vec<_> = decisions.iter().filter(|d| d.recorded != d.replayed).collect();
    assert!(differing.is_empty(), "the replay differs from the playback: {differing:?}");
    let mut rungs: Vec<usize> = decisions.iter().map(|d| d.recorded).collect();
    rungs.dedup();
    assert!(decisions.len() >= 10 && rungs.len() >= 3, "too little adaptation to compare: {decisions:?}");
    let ends = events.iter().filter(|e| matches!(e, eddy_player::events::Event::End { .. })).count();
    assert_eq!(ends, 1, "one end event");
}

/// Segment requests eddy-netsim saw closed early: (rung index, segment number).
fn closed_early_segments(log: &Path) -> Vec<(usize, u64)> {
    std::fs::read_to_string(log)
        .expect("link log")
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|entry| entry["closed_early"] == true)
        .filter_map(|entry| {
            let path = entry["path"].as_str()?;
            let rung = RUNGS.iter().position(|r| path.starts_with(&format!("/{r}/")))?;
            let number = path.rsplit('_').next()?.strip_suffix(".ts")?.parse().ok()?;
            Some((rung, number))
        })
        .collect()
}
