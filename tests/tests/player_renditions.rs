//! `eddy-play` on alternative renditions (`EXT-X-MEDIA`, RFC 8216 §4.3.4.1), end to end: streams
//! made at test time by ffmpeg the way CMAF services publish them (video renditions, and audio in a
//! rendition group of its own, fMP4), served by a real `eddy-edge` from a directory on 127.0.0.1,
//! decoded by real GStreamer with `--headless`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use eddy_player::events::{Event, EventRecord};
use serde_json::Value;

const SECONDS: u32 = 6;

/// Writes `master.m3u8` with two video renditions (`v0`, `v1`) and one audio rendition per language
/// in `languages` (`v2`, `v3`…, sine tones), all in the audio group `aud`, the first the default.
fn make_stream(out: &Path, languages: &[&str]) -> Result<()> {
    std::fs::create_dir_all(out)?;
    let mut command = Command::new("ffmpeg");
    command.current_dir(out).args(["-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"]);
    for (i, _) in languages.iter().enumerate() {
        command.args(["-f", "lavfi", "-i", &format!("sine=frequency={}", 440 + 110 * i)]);
    }
    command.args(["-t", &SECONDS.to_string(), "-map", "0:v", "-map", "0:v"]);
    for i in 0..languages.len() {
        command.args(["-map", &format!("{}:a", i + 1)]);
    }
    let mut stream_map = String::from("v:0,agroup:aud v:1,agroup:aud");
    for (i, language) in languages.iter().enumerate() {
        let default = if i == 0 { ",default:yes" } else { "" };
        stream_map.push_str(&format!(" a:{i},agroup:aud{default},language:{language}"));
    }
    command
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "60", "-keyint_min", "60"])
        .args(["-sc_threshold", "0", "-b:v:0", "400k", "-s:v:0", "426x240", "-b:v:1", "1200k"])
        .args(["-c:a", "aac", "-b:a", "96k", "-f", "hls", "-hls_time", "2", "-hls_playlist_type", "vod"])
        .args(["-hls_segment_type", "fmp4", "-master_pl_name", "master.m3u8", "-var_stream_map", &stream_map])
        .args(["-hls_segment_filename", "v%v/seg%d.m4s", "v%v/index.m3u8"]);
    let status = command.status().context("running ffmpeg")?;
    if !status.success() {
        bail!("ffmpeg failed: {status}");
    }
    Ok(())
}

struct Run {
    success: bool,
    stdout: String,
    stderr: String,
    report: Option<Value>,
    events: Vec<EventRecord>,
}

fn play(url: &str, args: &[&str], work: &Path) -> Result<Run> {
    let report_path = work.join("report.json");
    let events_path = work.join("events.jsonl");
    let _ = std::fs::remove_file(&report_path);
    let _ = std::fs::remove_file(&events_path);
    let mut command = Command::new(eddy_tests::bin_path("eddy-play"));
    command.arg(url).args(["--headless", "--quiet", "--report"]).arg(&report_path).arg("--events").arg(&events_path);
    command.args(args);
    let output = eddy_tests::run_to_end(command, Duration::from_secs(60))?;
    let report = std::fs::read(&report_path).ok().and_then(|data| serde_json::from_slice(&data).ok());
    let events = eddy_player::events::read(&std::fs::read_to_string(&events_path).unwrap_or_default())
        .map_err(anyhow::Error::msg)?;
    Ok(Run {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into(),
        stderr: String::from_utf8_lossy(&output.stderr).into(),
        report,
        events,
    })
}

fn tempdir() -> Result<tempfile::TempDir> {
    tempfile::Builder::new().prefix("eddy-renditions-test").tempdir().context("temporary directory")
}

fn edge_for(root: &Path) -> Result<eddy_tests::Edge> {
    eddy_tests::start_edge(&["--origin", root.to_str().context("utf-8 path")?])
}

#[test]
fn plays_a_separate_audio_rendition_beside_the_video_and_hears_all_of_it() -> Result<()> {
    let work = tempdir()?;
    let root = work.path().join("root");
    make_stream(&root.join("cmaf"), &["en"])?;
    let edge = edge_for(&root)?;

    let run = play(&edge.url("/cmaf/master.m3u8"), &[], work.path())?;
    assert!(run.success, "{}", run.stderr);
    let report = run.report.context("no report")?;
    assert_eq!(report["stall_count"], 0, "{report}");
    let played = report["played_s"].as_f64().unwrap_or(0.0);
    assert!((played - f64::from(SECONDS)).abs() < 0.5, "played {played} s");
    // The audio was decoded and reached the sink for the whole playback: not silent video.
    let audio = report["audio_played_s"].as_f64().unwrap_or(0.0);
    assert!(audio >= f64::from(SECONDS) - 0.5, "only {audio} s of audio played: {report}");

    let chosen: Vec<&Event> =
        run.events.iter().map(|r| &r.event).filter(|e| matches!(e, Event::Audio { .. })).collect();
    assert!(
        matches!(chosen.as_slice(), [Event::Audio { language: Some(l), uri, .. }] if l == "en" && uri.ends_with("/cmaf/v2/index.m3u8")),
        "{chosen:?}"
    );
    let audio_segments = run.events.iter().filter(|r| matches!(r.event, Event::AudioSegment { .. })).count();
    let listed = std::fs::read_to_string(root.join("cmaf/v2/index.m3u8"))?.matches("#EXTINF").count();
    assert_eq!(audio_segments, listed, "every audio segment fetched once");
    // The audio's bytes count in what the playback fetched.
    let video_bytes: u64 =
        report["segments"].as_array().into_iter().flatten().filter_map(|s| s["bytes"].as_u64()).sum();
    let audio_bytes: u64 = run
        .events
        .iter()
        .filter_map(|r| match r.event {
            Event::AudioSegment { bytes, .. } => Some(bytes),
            _ => None,
        })
        .sum();
    assert!(report["bytes"].as_u64().unwrap_or(0) >= video_bytes + audio_bytes, "{report}");
    // The ABR's budget for each rung is the variant's BANDWIDTH, which covers its audio rendition
    // (RFC 8216 §4.3.4.2; ffmpeg adds the 96k audio to each video rate): the rung the ABR weighs for
    // the 400k video is at least 400k + 96k, so a link that carries the video alone does not look
    // like enough for the rung.
    let ladder = run.events.iter().find_map(|r| match &r.event {
        Event::Start { ladder, .. } => Some(ladder.clone()),
        _ => None,
    });
    let lowest = ladder.as_deref().and_then(|l| l.first()).map(|rung| rung.bitrate_bps).unwrap_or(0);
    assert!(lowest >= 496_000, "the lowest rung is budgeted at {lowest} b/s: {ladder:?}");

    // The variant alone has no audio: the report says none played.
    let run = play(&edge.url("/cmaf/v1/index.m3u8"), &[], work.path())?;
    assert!(run.success, "{}", run.stderr);
    assert_eq!(run.report.context("no report")?["audio_played_s"], 0.0);
    Ok(())
}

#[test]
fn audio_lang_chooses_the_rendition_and_list_shows_the_groups() -> Result<()> {
    let work = tempdir()?;
    let root = work.path().join("root");
    make_stream(&root.join("two"), &["en", "de"])?;
    let edge = edge_for(&root)?;
    let url = edge.url("/two/master.m3u8");

    let run = play(&url, &["--list"], work.path())?;
    assert!(run.success, "{}", run.stderr);
    assert!(run.stdout.contains("variants:\n  0: "), "{}", run.stdout);
    assert!(run.stdout.contains("(en) [default]"), "{}", run.stdout);
    assert!(run.stdout.contains("(de)"), "{}", run.stdout);
    assert!(run.events.is_empty(), "--list plays nothing");

    let run = play(&url, &["--audio-lang", "DE", "--duration", "2"], work.path())?;
    assert!(run.success, "{}", run.stderr);
    let chosen = run.events.iter().find_map(|r| match &r.event {
        Event::Audio { language, uri, .. } => Some((language.clone(), uri.clone())),
        _ => None,
    });
    assert!(matches!(&chosen, Some((Some(l), uri)) if l == "de" && uri.ends_with("/two/v3/index.m3u8")), "{chosen:?}");
    assert!(run.report.context("no report")?["audio_played_s"].as_f64().unwrap_or(0.0) > 1.0);

    let run = play(&url, &["--audio-lang", "fr"], work.path())?;
    assert!(!run.success, "a missing language played");
    assert!(
        run.stderr.contains("--audio-lang fr: no audio rendition in that language")
            && run.stderr.contains("(en)")
            && run.stderr.contains("(de)"),
        "{}",
        run.stderr
    );
    Ok(())
}

#[test]
fn audio_the_player_cannot_decode_is_an_error_never_silent_video() -> Result<()> {
    let work = tempdir()?;
    let root = work.path().join("root");
    make_stream(&root.join("mpegh"), &["en"])?;
    // The same stream, declared as MPEG-H 3D audio, which GStreamer has no decoder for.
    let master_path = root.join("mpegh/master.m3u8");
    let master = std::fs::read_to_string(&master_path)?;
    assert!(master.contains("mp4a.40.2"), "{master}");
    std::fs::write(&master_path, master.replace("mp4a.40.2", "mhm1.0x0D"))?;
    let edge = edge_for(&root)?;

    let run = play(&edge.url("/mpegh/master.m3u8"), &[], work.path())?;
    assert!(!run.success, "played with undecodable audio: {}", run.stdout);
    assert!(
        run.stderr.contains("cannot play this stream's audio") && run.stderr.contains("\"mhm1.0x0D\""),
        "{}",
        run.stderr
    );
    assert!(
        !run.events.iter().any(|r| matches!(r.event, Event::Segment { .. } | Event::AudioSegment { .. })),
        "segments were fetched before the refusal"
    );
    Ok(())
}

#[test]
fn plays_our_own_packager_s_separate_audio_rendition() -> Result<()> {
    let work = tempdir()?;
    let root = work.path().join("root");
    let mut command = Command::new(eddy_tests::bin_path("eddy-package"));
    command.args(["--test-pattern", "4s", "--out"]).arg(root.join("own")).args([
        "--format",
        "fmp4",
        "--audio",
        "separate",
        "--audio-lang",
        "en",
        "--segment-duration",
        "1",
    ]);
    let output = eddy_tests::run_to_end(command, Duration::from_secs(120))?;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let edge = edge_for(&root)?;

    let run = play(&edge.url("/own/master.m3u8"), &[], work.path())?;
    assert!(run.success, "{}", run.stderr);
    let report = run.report.context("no report")?;
    assert_eq!(report["stall_count"], 0, "{report}");
    let audio = report["audio_played_s"].as_f64().unwrap_or(0.0);
    assert!(audio >= 3.5, "only {audio} s of audio played: {report}");
    let chosen = run.events.iter().find_map(|r| match &r.event {
        Event::Audio { language, uri, .. } => Some((language.clone(), uri.clone())),
        _ => None,
    });
    assert!(
        matches!(&chosen, Some((Some(l), uri)) if l == "en" && uri.ends_with("/own/audio/index.m3u8")),
        "{chosen:?}"
    );
    Ok(())
}

#[test]
fn a_seek_restarts_the_separate_audio_in_step_with_the_video() -> Result<()> {
    let work = tempdir()?;
    let root = work.path().join("root");
    make_stream(&root.join("cmaf"), &["en"])?;
    let edge = edge_for(&root)?;
    // 6 s of media in 2 s segments: 1 s played, then from 4 s to the end (2 s).
    let run = play(&edge.url("/cmaf/master.m3u8"), &["--seek-to", "4@1"], work.path())?;
    assert!(run.success, "{}", run.stderr);
    let report = run.report.context("no report")?;
    assert_eq!(report["stall_count"], 0, "{report}");
    let at = |wanted: fn(&Event) -> bool| run.events.iter().find(|r| wanted(&r.event)).map(|r| r.t_s);
    let seek = at(|e| matches!(e, Event::Seek { .. })).context("no seek")?;
    let end = at(|e| matches!(e, Event::End { .. })).context("no end")?;
    // The audio's segment before the seek point is dropped, not played late: a late one held the
    // end back by its length, and put the sound that far behind the picture.
    assert!(end - seek < 3.2, "2 s of media after the seek took {:.2} s", end - seek);
    assert!(end - seek > 1.5, "2 s of media after the seek took {:.2} s", end - seek);
    Ok(())
}
