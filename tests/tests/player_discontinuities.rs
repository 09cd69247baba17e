//! `eddy-play` across `EXT-X-DISCONTINUITY` (RFC 8216 §4.3.2.3), `EXT-X-GAP`
//! (draft-pantos-hls-rfc8216bis §4.4.4.7) and `EXT-X-PROGRAM-DATE-TIME` (§4.3.2.6), the way ad
//! breaks are stitched into streams: timestamps that start over, a resolution, segment duration and
//! codec change mid-stream, in MPEG-TS and fMP4. Content is made at test time by ffmpeg, served by a
//! real `eddy-edge` from a directory on 127.0.0.1, decoded by real GStreamer with `--headless`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use eddy_player::events::{EndReason, Event, EventRecord};

/// `ffmpeg` making an HLS rendition `name` (`name.m3u8`, `name%d.ts` or `.m4s`) in `dir`.
fn ffmpeg(dir: &Path, name: &str, video: &str, audio: &str, seconds: u32, segment_s: u32, fmp4: bool) -> Result<()> {
    let mut command = Command::new("ffmpeg");
    command
        .current_dir(dir)
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i", video, "-f", "lavfi", "-i", audio])
        .args(["-t", &seconds.to_string(), "-g", "25", "-keyint_min", "25", "-sc_threshold", "0"]);
    if name.starts_with('c') {
        command.args(["-c:v", "mpeg2video", "-c:a", "mp2"]);
    } else {
        command.args(["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac"]);
    }
    command.args(["-f", "hls", "-hls_time", &segment_s.to_string(), "-hls_playlist_type", "vod"]);
    let extension = if fmp4 { "m4s" } else { "ts" };
    if fmp4 {
        command.args(["-hls_segment_type", "fmp4", "-hls_fmp4_init_filename", &format!("{name}_init.mp4")]);
    }
    command.args(["-hls_segment_filename", &format!("{name}%d.{extension}"), &format!("{name}.m3u8")]);
    let status = command.status().context("running ffmpeg")?;
    if !status.success() {
        bail!("ffmpeg failed for {name}: {status}");
    }
    Ok(())
}

struct Run {
    stderr: String,
    success: bool,
    events: Vec<EventRecord>,
    report: serde_json::Value,
}

fn play(url: &str, work: &Path) -> Result<Run> {
    let (report_path, events_path) = (work.join("report.json"), work.join("events.jsonl"));
    let mut command = Command::new(eddy_tests::bin_path("eddy-play"));
    command.arg(url).args(["--headless", "--quiet", "--report"]).arg(&report_path).arg("--events").arg(&events_path);
    let output = eddy_tests::run_to_end(command, Duration::from_secs(90))?;
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    let report = serde_json::from_slice(&std::fs::read(&report_path).with_context(|| stderr.clone())?)?;
    let events = eddy_player::events::read(&std::fs::read_to_string(&events_path)?).map_err(anyhow::Error::msg)?;
    Ok(Run { stderr, success: output.status.success(), events, report })
}

/// Seconds between the `playing` event and the `end` event: how long the media took to play.
fn playing_to_end_s(events: &[EventRecord]) -> Option<f64> {
    let playing = events.iter().find(|r| matches!(r.event, Event::Playing { .. }))?.t_s;
    let end = events.iter().find(|r| matches!(r.event, Event::End { reason: EndReason::EndOfStream, .. }))?.t_s;
    Some(end - playing)
}

/// Checks the media played in time (not shown at once), ended with the pipeline's own end-of-stream,
/// and never stalled.
fn assert_played_in_time(run: &Run, media_s: f64, audio_s: f64) -> Result<()> {
    assert!(run.success, "{}", run.stderr);
    assert_eq!(run.report["stall_count"], 0, "{}", run.report);
    let played = run.report["played_s"].as_f64().unwrap_or(0.0);
    assert!((played - media_s).abs() < 0.5, "played {played} s of {media_s}");
    let took = playing_to_end_s(&run.events).context("no playing and end events")?;
    // Media whose timestamps went back would be shown at once after the discontinuity.
    assert!(took > media_s - 1.0, "{media_s} s of media played in {took:.2} s");
    assert!(!run.stderr.contains("no end-of-stream"), "the pipeline never ended by itself: {}", run.stderr);
    let audio = run.report["audio_played_s"].as_f64().unwrap_or(0.0);
    assert!((audio - audio_s).abs() < 0.5, "{audio} s of audio, expected {audio_s}");
    Ok(())
}

#[test]
fn plays_through_mpeg_ts_discontinuities_gaps_and_codec_changes_in_time() -> Result<()> {
    let work = tempfile::Builder::new().prefix("eddy-discontinuities").tempdir()?;
    let dir = work.path().join("root/ads");
    std::fs::create_dir_all(&dir)?;
    // ffmpeg starts every TS at 1.4 s: each part's timestamps start over.
    ffmpeg(&dir, "a", "testsrc2=size=640x360:rate=25", "sine=frequency=440", 4, 2, false)?;
    ffmpeg(&dir, "b", "smptebars=size=320x240:rate=25", "sine=frequency=880", 3, 1, false)?;
    ffmpeg(&dir, "c", "testsrc=size=320x240:rate=25", "sine=frequency=660", 2, 2, false)?;
    let playlist = "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-PLAYLIST-TYPE:VOD\n\
        #EXT-X-PROGRAM-DATE-TIME:2026-12-01T10:00:00.000Z\n#EXTINF:2.0,\na0.ts\n#EXTINF:2.0,\na1.ts\n\
        #EXT-X-DISCONTINUITY\n#EXT-X-PROGRAM-DATE-TIME:2026-12-01T10:05:00.000Z\n#EXTINF:1.0,\nb0.ts\n\
        #EXT-X-GAP\n#EXTINF:1.0,\nmissing.ts\n#EXTINF:1.0,\nb2.ts\n\
        #EXT-X-DISCONTINUITY\n#EXTINF:2.0,\nc0.ts\n\
        #EXT-X-DISCONTINUITY\n#EXTINF:2.0,\na0.ts\n#EXTINF:2.0,\na1.ts\n#EXT-X-ENDLIST\n";
    std::fs::write(dir.join("index.m3u8"), playlist)?;
    let edge = eddy_tests::start_edge(&["--origin", work.path().join("root").to_str().context("utf-8")?])?;

    let run = play(&edge.url("/ads/index.m3u8"), work.path())?;
    // 13 s of media, of which 1 s is the gap (no audio there either).
    assert_played_in_time(&run, 13.0, 12.0)?;
    let gaps: Vec<(u64, Option<String>)> = run
        .events
        .iter()
        .filter_map(|r| match &r.event {
            Event::Gap { index, program_date_time, .. } => Some((*index, program_date_time.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(gaps, [(3, Some("2026-12-01T10:05:01.000Z".to_string()))], "the gap, dated from the tag before it");
    let dates: Vec<Option<String>> = run
        .events
        .iter()
        .filter_map(|r| match &r.event {
            Event::Segment { program_date_time, .. } => Some(program_date_time.clone()),
            _ => None,
        })
        .collect();
    let expected = [
        Some("2026-12-01T10:00:00.000Z"),
        Some("2026-12-01T10:00:02.000Z"),
        Some("2026-12-01T10:05:00.000Z"),
        Some("2026-12-01T10:05:02.000Z"),
        // After a discontinuity without a tag, the date is unknown.
        None,
        None,
        None,
    ];
    assert_eq!(dates, expected.map(|d| d.map(str::to_string)), "the segments' dates");
    Ok(())
}

#[test]
fn plays_through_an_fmp4_discontinuity_with_a_new_init_section_in_time() -> Result<()> {
    let work = tempfile::Builder::new().prefix("eddy-discontinuities").tempdir()?;
    let dir = work.path().join("root/cmaf");
    std::fs::create_dir_all(&dir)?;
    // Both parts' timestamps start at 0.
    ffmpeg(&dir, "f", "testsrc2=size=640x360:rate=25", "sine=frequency=440", 3, 1, true)?;
    ffmpeg(&dir, "g", "smptebars=size=320x180:rate=25", "sine=frequency=880", 3, 1, true)?;
    let playlist = "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:1\n#EXT-X-PLAYLIST-TYPE:VOD\n\
        #EXT-X-MAP:URI=\"f_init.mp4\"\n#EXTINF:1.0,\nf0.m4s\n#EXTINF:1.0,\nf1.m4s\n#EXTINF:1.0,\nf2.m4s\n\
        #EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI=\"g_init.mp4\"\n#EXTINF:1.0,\ng0.m4s\n#EXTINF:1.0,\ng1.m4s\n#EXTINF:1.0,\ng2.m4s\n\
        #EXT-X-ENDLIST\n";
    std::fs::write(dir.join("index.m3u8"), playlist)?;
    let edge = eddy_tests::start_edge(&["--origin", work.path().join("root").to_str().context("utf-8")?])?;
    let run = play(&edge.url("/cmaf/index.m3u8"), work.path())?;
    assert_played_in_time(&run, 6.0, 6.0)
}

/// A live stream with a discontinuity at every segment (an ad break at each) must not make the
/// pipeline keep a source per discontinuity since playback started: sources that have played out
/// are taken out at the next restart, so what is held is bounded by the buffer, not the stream's age.
#[test]
fn sources_that_played_out_are_taken_out_of_the_pipeline() -> Result<()> {
    use eddy_player::pipeline::{Container, Pipeline, PipelineEvent, Track};
    let work = tempfile::Builder::new().prefix("eddy-discontinuities").tempdir()?;
    let dir = work.path().join("segments");
    std::fs::create_dir_all(&dir)?;
    ffmpeg(&dir, "a", "testsrc2=size=320x180:rate=25", "sine=frequency=440", 8, 1, false)?;
    eddy_player::pipeline::preflight()?;
    let pipeline = Pipeline::new(Container::MpegTs, None, true, false)?;
    let wait_until = |what: &str, ready: &dyn Fn() -> bool| -> Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !ready() {
            if let Some(PipelineEvent::Error(e)) =
                pipeline.poll().into_iter().find(|e| matches!(e, PipelineEvent::Error(_)))
            {
                bail!("pipeline error while waiting for {what}: {e}");
            }
            if std::time::Instant::now() > deadline {
                bail!("timed out waiting for {what}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    };
    let mut most = 0;
    for i in 0..8u32 {
        let data = std::fs::read(dir.join(format!("a{i}.ts")))?;
        if i > 0 {
            // Each segment as its own discontinuity, pushed once the one before has mostly played.
            let played = f64::from(i) - 0.5;
            wait_until("playback", &|| pipeline.running_time_s().is_some_and(|t| t >= played))?;
            pipeline.restart(Track::Main, f64::from(i), None)?;
        }
        pipeline.push(Track::Main, data, false)?;
        if i == 0 {
            pipeline.play()?;
        }
        most = most.max(pipeline.sources(Track::Main));
    }
    pipeline.end_of_stream(Track::Main)?;
    let ended = std::cell::Cell::new(false);
    wait_until("end of stream", &|| {
        if pipeline.poll().contains(&PipelineEvent::EndOfStream) {
            ended.set(true);
        }
        ended.get()
    })?;
    assert!(most <= 3, "{most} sources were held at once for 8 discontinuities");
    Ok(())
}
