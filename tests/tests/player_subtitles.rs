//! `eddy-play` on WebVTT subtitle renditions (`EXT-X-MEDIA:TYPE=SUBTITLES`, RFC 8216 §3.5), end to
//! end: MPEG-TS video made at test time by ffmpeg, subtitle playlists and segments written here (the
//! way segmenters write them: with an `X-TIMESTAMP-MAP` relative to the video's PTS, or without one,
//! cue times on the playlist's timeline), served by a real `eddy-edge` from a directory on
//! 127.0.0.1, played by the real `eddy-play --headless`, which draws the cues through a `textoverlay`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use eddy_player::events::{Event, EventRecord};
use serde_json::Value;

const SECONDS: u32 = 6;
/// 90 kHz ticks of a 2 s segment.
const SEGMENT_TICKS: u64 = 2 * 90_000;

/// The video (`v0/`, three 2 s MPEG-TS segments) and its first PTS in 90 kHz ticks.
fn make_video(out: &Path) -> Result<u64> {
    ffmpeg_ts(&out.join("v0"), "seg%d.ts", "index.m3u8", SECONDS)
}

/// `seconds` of MPEG-TS in 2 s segments named by `segments` (an ffmpeg pattern: `seg%d.ts`), listed by
/// `playlist`, in `dir`, made by a fresh ffmpeg run; returns its first PTS in 90 kHz ticks (ffmpeg's
/// MPEG-TS starts at 1.4 s, not 0: an X-TIMESTAMP-MAP must be read against it).
fn ffmpeg_ts(dir: &Path, segments: &str, playlist: &str, seconds: u32) -> Result<u64> {
    std::fs::create_dir_all(dir)?;
    let status = Command::new("ffmpeg")
        .current_dir(dir)
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=30"])
        .args(["-t", &seconds.to_string(), "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"])
        .args(["-g", "60", "-keyint_min", "60", "-sc_threshold", "0", "-f", "hls", "-hls_time", "2"])
        .args(["-hls_playlist_type", "vod", "-hls_segment_filename", segments, playlist])
        .status()
        .context("running ffmpeg")?;
    if !status.success() {
        bail!("ffmpeg failed: {status}");
    }
    let output = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "format=start_time", "-of", "default=nw=1:nk=1"])
        .arg(dir.join(segments.replace("%d", "0")))
        .output()
        .context("running ffprobe")?;
    let start: f64 = String::from_utf8_lossy(&output.stdout).trim().parse().context("ffprobe start_time")?;
    Ok((start * 90_000.0).round() as u64)
}

/// A subtitle rendition: `subs/{name}.m3u8` listing one 2 s WebVTT segment per entry of `segments`.
fn write_rendition(out: &Path, name: &str, segments: &[String]) -> Result<()> {
    std::fs::create_dir_all(out.join("subs"))?;
    let mut playlist = String::from("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n");
    playlist.push_str("#EXT-X-PLAYLIST-TYPE:VOD\n");
    for (i, segment) in segments.iter().enumerate() {
        std::fs::write(out.join(format!("subs/{name}{i}.vtt")), segment)?;
        playlist.push_str(&format!("#EXTINF:2.000,\n{name}{i}.vtt\n"));
    }
    playlist.push_str("#EXT-X-ENDLIST\n");
    std::fs::write(out.join(format!("subs/{name}.m3u8")), playlist)?;
    Ok(())
}

/// The stream: video and three subtitle renditions in one group.
/// - `en`: segment-relative cue times, each segment's X-TIMESTAMP-MAP naming its own start; the last
///   one maps a LOCAL of 10 s, and repeats the cue that spans the boundary before it.
/// - `de` (the default): no map, cue times on the playlist's timeline, as ffmpeg writes them.
/// - `fr`: its second segment is not WebVTT.
fn make_stream(out: &Path) -> Result<()> {
    let pts = make_video(out)?;
    let map = |segment: u64, local: &str| {
        format!("WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:{},LOCAL:{local}\n\n", pts + segment * SEGMENT_TICKS)
    };
    let en = [
        map(0, "00:00:00.000") + "1\n00:00.500 --> 00:01.500 align:start\n<b>Hello</b> &amp; welcome\n",
        map(1, "00:00:00.000") + "NOTE a comment\n\n00:01.500 --> 00:02.500\n<c.yellow>Both sides</c>\n",
        map(2, "00:00:10.000")
            + "00:09.500 --> 00:10.500\n<c.yellow>Both sides</c>\n\n00:10.500 --> 00:11.000\n<v Narrator>Line one\nLine two\n",
    ];
    write_rendition(out, "en", &en)?;
    let de = [
        "WEBVTT\n\n00:01.000 --> 00:02.000\nHallo\n".to_string(),
        "WEBVTT\n".to_string(),
        "WEBVTT\n\n00:00:04.000 --> 00:00:05.500\nTschüss\n".to_string(),
    ];
    write_rendition(out, "de", &de)?;
    let fr = ["WEBVTT\n\n00:00.200 --> 00:01.000\nBonjour\n".to_string(), "<html>not found</html>\n".to_string()];
    write_rendition(out, "fr", &fr)?;
    let master = "#EXTM3U
#EXT-X-VERSION:3
#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID=\"subs\",NAME=\"English\",LANGUAGE=\"en\",AUTOSELECT=YES,URI=\"subs/en.m3u8\"
#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID=\"subs\",NAME=\"Deutsch\",LANGUAGE=\"de\",DEFAULT=YES,AUTOSELECT=YES,URI=\"subs/de.m3u8\"
#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID=\"subs\",NAME=\"French\",LANGUAGE=\"fr\",AUTOSELECT=YES,URI=\"subs/fr.m3u8\"
#EXT-X-STREAM-INF:BANDWIDTH=800000,RESOLUTION=320x180,SUBTITLES=\"subs\"
v0/index.m3u8
";
    std::fs::write(out.join("master.m3u8"), master)?;
    Ok(())
}

struct Run {
    success: bool,
    stderr: String,
    report: Option<Value>,
    events: Vec<EventRecord>,
}

impl Run {
    /// The `subtitle` events: (start_s, end_s, text, language).
    fn cues(&self) -> Vec<(f64, f64, String, Option<String>)> {
        self.events
            .iter()
            .filter_map(|r| match &r.event {
                Event::Subtitle { start_s, end_s, text, language } => {
                    Some((*start_s, *end_s, text.clone(), language.clone()))
                }
                _ => None,
            })
            .collect()
    }
}

fn play(url: &str, args: &[&str], work: &Path, name: &str) -> Result<Run> {
    let report_path = work.join(format!("{name}.json"));
    let events_path = work.join(format!("{name}.jsonl"));
    let mut command = Command::new(eddy_tests::bin_path("eddy-play"));
    command.arg(url).args(["--headless", "--quiet", "--report"]).arg(&report_path).arg("--events").arg(&events_path);
    command.args(args);
    let output = eddy_tests::run_to_end(command, Duration::from_secs(60))?;
    let report = std::fs::read(&report_path).ok().and_then(|data| serde_json::from_slice(&data).ok());
    let events = eddy_player::events::read(&std::fs::read_to_string(&events_path).unwrap_or_default())
        .map_err(anyhow::Error::msg)?;
    Ok(Run { success: output.status.success(), stderr: String::from_utf8_lossy(&output.stderr).into(), report, events })
}

fn cue(start_s: f64, end_s: f64, text: &str, language: &str) -> (f64, f64, String, Option<String>) {
    (start_s, end_s, text.to_string(), Some(language.to_string()))
}

fn assert_played_without_stalls(run: &Run) -> Result<()> {
    assert!(run.success, "{}", run.stderr);
    let report = run.report.as_ref().context("no report")?;
    assert_eq!(report["stall_count"], 0, "{report}");
    let played = report["played_s"].as_f64().unwrap_or(0.0);
    assert!((played - f64::from(SECONDS)).abs() < 0.5, "played {played} s");
    Ok(())
}

#[test]
fn subtitle_cues_are_shown_with_subs_and_written_to_the_events_either_way() -> Result<()> {
    let work = tempfile::Builder::new().prefix("eddy-subtitles-test").tempdir().context("temporary directory")?;
    let root = work.path().join("root");
    make_stream(&root.join("vod"))?;
    let edge = eddy_tests::start_edge(&["--origin", root.to_str().context("utf-8 path")?])?;
    let url = edge.url("/vod/master.m3u8");

    // --subs en: the overlay is in the pipeline and playback is as smooth as without it. The cues are
    // on the video's timeline: each segment's map against the video's 1.4 s start, LOCAL subtracted,
    // and the cue spanning two segments written once.
    let run = play(&url, &["--subs", "en"], work.path(), "en")?;
    assert_played_without_stalls(&run)?;
    assert_eq!(
        run.cues(),
        [
            cue(0.5, 1.5, "Hello & welcome", "en"),
            cue(3.5, 4.5, "Both sides", "en"),
            cue(4.5, 5.0, "Line one\nLine two", "en"),
        ]
    );

    // Without --subs: the default rendition's cues (no map: cue times as written), nothing shown.
    let run = play(&url, &[], work.path(), "default")?;
    assert_played_without_stalls(&run)?;
    assert_eq!(run.cues(), [cue(1.0, 2.0, "Hallo", "de"), cue(4.0, 5.5, "Tschüss", "de")]);

    // --start-at: the video starts at its second segment, whose PTS is media time 2 s.
    let run = play(&url, &["--subs", "EN", "--start-at", "2"], work.path(), "later")?;
    assert!(run.success, "{}", run.stderr);
    assert_eq!(run.cues(), [cue(3.5, 4.5, "Both sides", "en"), cue(4.5, 5.0, "Line one\nLine two", "en")]);
    Ok(())
}

/// A seek back (`←`, or `--seek-to` for scripts) shows the cues of the new position again: the
/// subtitle loop follows the seek, and the overlay is told what to show from there.
#[test]
fn after_a_seek_back_the_cues_of_the_new_position_are_shown_again() -> Result<()> {
    let work = tempfile::Builder::new().prefix("eddy-subtitles-test").tempdir().context("temporary directory")?;
    let root = work.path().join("root");
    make_stream(&root.join("vod"))?;
    let edge = eddy_tests::start_edge(&["--origin", root.to_str().context("utf-8 path")?])?;
    let run = play(&edge.url("/vod/master.m3u8"), &["--subs", "en", "--seek-to", "0@4"], work.path(), "seek")?;
    assert!(run.success, "{}", run.stderr);
    let report = run.report.as_ref().context("no report")?;
    assert_eq!(report["stall_count"], 0, "a seek is not a stall: {report}");
    let seek = run.events.iter().position(|r| matches!(r.event, Event::Seek { .. })).context("no seek event")?;
    let shown = |events: &[EventRecord]| -> Vec<(String, f64)> {
        events
            .iter()
            .filter_map(|r| match &r.event {
                Event::SubtitleShown { text: Some(text), position_s } => Some((text.clone(), *position_s)),
                _ => None,
            })
            .collect()
    };
    let (before, after) = (shown(&run.events[..seek]), shown(&run.events[seek..]));
    let first = |shown: &[(String, f64)]| shown.first().cloned();
    let hello = "Hello & welcome".to_string();
    assert!(first(&before).is_some_and(|(text, at)| text == hello && (0.4..1.0).contains(&at)), "before: {before:?}");
    assert!(
        first(&after).is_some_and(|(text, at)| text == hello && (0.4..1.0).contains(&at)),
        "after: {after:?}\n{}",
        run.stderr
    );
    // And on to the end, as the first time.
    assert!(after.iter().any(|(text, _)| text == "Line one\nLine two"), "after: {after:?}");
    Ok(())
}

/// An ad break's worth of discontinuity: the video's timestamps start over at its third segment, and
/// so do the subtitle segments' `X-TIMESTAMP-MAP`s. Each map is read against the video of its own
/// discontinuity domain (RFC 8216 §3.5, §4.3.3.3), so the second programme's cue lands at 4.5 s, not
/// on top of the first's at 0.5 s.
#[test]
fn cues_after_a_discontinuity_are_timed_against_the_video_of_their_domain() -> Result<()> {
    let work = tempfile::Builder::new().prefix("eddy-subtitles-test").tempdir().context("temporary directory")?;
    let out = work.path().join("root/ads");
    let first_pts = ffmpeg_ts(&out, "a%d.ts", "a.m3u8", 4)?;
    let second_pts = ffmpeg_ts(&out, "b%d.ts", "b.m3u8", 4)?;
    let playlist = |segments: [&str; 4]| {
        let mut text = String::from("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n");
        text.push_str("#EXT-X-DISCONTINUITY-SEQUENCE:3\n#EXT-X-PLAYLIST-TYPE:VOD\n");
        for (i, uri) in segments.iter().enumerate() {
            if i == 2 {
                text.push_str("#EXT-X-DISCONTINUITY\n");
            }
            text.push_str(&format!("#EXTINF:2.000,\n{uri}\n"));
        }
        text + "#EXT-X-ENDLIST\n"
    };
    std::fs::write(out.join("video.m3u8"), playlist(["a0.ts", "a1.ts", "b0.ts", "b1.ts"]))?;
    for (i, (pts, text)) in
        [(first_pts, "first"), (first_pts, ""), (second_pts, "second"), (second_pts, "")].iter().enumerate()
    {
        let segment_pts = pts + (i as u64 % 2) * SEGMENT_TICKS;
        let mut vtt = format!("WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:{segment_pts},LOCAL:00:00:00.000\n\n");
        if !text.is_empty() {
            vtt.push_str(&format!("00:00.500 --> 00:01.500\n{text}\n"));
        }
        std::fs::write(out.join(format!("s{i}.vtt")), vtt)?;
    }
    std::fs::write(out.join("subs.m3u8"), playlist(["s0.vtt", "s1.vtt", "s2.vtt", "s3.vtt"]))?;
    let master = "#EXTM3U\n#EXT-X-VERSION:3\n\
        #EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID=\"subs\",NAME=\"English\",LANGUAGE=\"en\",DEFAULT=YES,URI=\"subs.m3u8\"\n\
        #EXT-X-STREAM-INF:BANDWIDTH=800000,RESOLUTION=320x180,SUBTITLES=\"subs\"\nvideo.m3u8\n";
    std::fs::write(out.join("master.m3u8"), master)?;
    let edge = eddy_tests::start_edge(&["--origin", work.path().join("root").to_str().context("utf-8 path")?])?;
    let run = play(&edge.url("/ads/master.m3u8"), &["--subs", "en"], work.path(), "ads")?;
    assert!(run.success, "{}", run.stderr);
    assert_eq!(run.cues(), [cue(0.5, 1.5, "first", "en"), cue(4.5, 5.5, "second", "en")]);
    Ok(())
}

#[test]
fn broken_subtitles_never_stop_playback_and_a_missing_language_is_named() -> Result<()> {
    let work = tempfile::Builder::new().prefix("eddy-subtitles-test").tempdir().context("temporary directory")?;
    let root = work.path().join("root");
    make_stream(&root.join("vod"))?;
    let edge = eddy_tests::start_edge(&["--origin", root.to_str().context("utf-8 path")?])?;
    let url = edge.url("/vod/master.m3u8");

    // The second French segment is not WebVTT: a warning naming it, the first segment's cue, and
    // the whole video played.
    let run = play(&url, &["--subs", "fr"], work.path(), "fr")?;
    assert_played_without_stalls(&run)?;
    assert_eq!(run.cues(), [cue(0.2, 1.0, "Bonjour", "fr")]);
    assert!(
        run.stderr.contains("subtitles stopped") && run.stderr.contains("fr1.vtt: WebVTT line 1"),
        "{}",
        run.stderr
    );

    let run = play(&url, &["--subs", "ja"], work.path(), "ja")?;
    assert!(!run.success, "a missing language played");
    assert!(
        run.stderr.contains(
            "--subs ja: no subtitle rendition in that language (the stream has: \"English\" (en), \"Deutsch\" (de), \"French\" (fr))"
        ),
        "{}",
        run.stderr
    );
    assert!(
        !run.events.iter().any(|r| matches!(r.event, Event::Segment { .. })),
        "segments fetched before the refusal"
    );

    // A media playlist alone has no subtitle renditions.
    let run = play(&edge.url("/vod/v0/index.m3u8"), &["--subs", "en"], work.path(), "media")?;
    assert!(!run.success);
    assert!(
        run.stderr.contains("--subs en: no subtitle rendition in that language (the stream has: none)"),
        "{}",
        run.stderr
    );
    Ok(())
}
