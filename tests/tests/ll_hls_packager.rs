//! `eddy-package --live --low-latency` end to end: the real packager makes a short live test pattern
//! and the tests read what it publishes while it runs — LL-HLS playlists (draft-pantos-hls-rfc8216bis:
//! EXT-X-PART-INF, EXT-X-SERVER-CONTROL, EXT-X-PART, EXT-X-PRELOAD-HINT, EXT-X-RENDITION-REPORT), part
//! files that exist before they are listed and decode (ffprobe), whole segments that are their parts
//! concatenated — and then the same output behind a real `eddy-edge` whose directory origin holds
//! blocking playlist reloads (`_HLS_msn`/`_HLS_part`, §6.2.5.2) until the part exists.
//!
//! Tests wait on what the packager and the edge report (its ready line, files, responses); the loops
//! that read playlists while the packager runs poll at a short interval, which is not synchronisation.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use eddy_tests::{bin_path, run_to_end, spawn_until_ready, start_edge, wait_with_timeout, Running};

/// Starts `eddy-package --live --low-latency` into `out` and waits for its live master.
fn start_live(out: &Path, args: &[&str]) -> Result<Running> {
    let mut command = Command::new(bin_path("eddy-package"));
    command.arg("--out").arg(out).args(["--live", "--low-latency", "--format", "fmp4"]).args(args);
    spawn_until_ready(command, "eddy-package live master at", Duration::from_secs(60))
}

/// `NAME=value` attributes of an `#EXT-X-...:` line (quoted values unquoted; commas inside quotes kept).
fn attributes(line: &str) -> HashMap<String, String> {
    let rest = line.split_once(':').map_or("", |(_, r)| r);
    let (mut map, mut current, mut quoted) = (HashMap::new(), String::new(), false);
    let mut flush = |current: &mut String| {
        if let Some((k, v)) = std::mem::take(current).split_once('=') {
            map.insert(k.to_string(), v.to_string());
        }
    };
    for c in rest.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => flush(&mut current),
            _ => current.push(c),
        }
    }
    flush(&mut current);
    map
}

fn number(attrs: &HashMap<String, String>, name: &str) -> Result<f64> {
    attrs.get(name).with_context(|| format!("{name} missing from {attrs:?}"))?.parse().context(name.to_string())
}

#[derive(Debug, Clone, PartialEq)]
struct Part {
    uri: String,
    duration: f64,
    independent: bool,
}

#[derive(Debug, Clone)]
struct Segment {
    uri: String,
    duration: f64,
    /// The parts listed before it (none once they left the playlist).
    parts: Vec<Part>,
}

/// An LL-HLS media playlist, as far as these tests read it.
#[derive(Debug)]
struct LlPlaylist {
    text: String,
    target: f64,
    part_target: f64,
    server_control: HashMap<String, String>,
    media_sequence: u64,
    segments: Vec<Segment>,
    /// Parts after the last segment: the segment being made.
    trailing: Vec<Part>,
    hints: Vec<String>,
    reports: Vec<HashMap<String, String>>,
    ended: bool,
}

impl LlPlaylist {
    fn read(path: &Path) -> Result<LlPlaylist> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        LlPlaylist::parse(text).with_context(|| format!("in {}", path.display()))
    }

    fn parse(text: String) -> Result<LlPlaylist> {
        ensure!(text.starts_with("#EXTM3U\n"), "not a playlist:\n{text}");
        let mut playlist = LlPlaylist {
            text: String::new(),
            target: 0.0,
            part_target: 0.0,
            server_control: HashMap::new(),
            media_sequence: 0,
            segments: Vec::new(),
            trailing: Vec::new(),
            hints: Vec::new(),
            reports: Vec::new(),
            ended: false,
        };
        let mut extinf = None;
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("#EXT-X-TARGETDURATION:") {
                playlist.target = v.parse()?;
            } else if line.starts_with("#EXT-X-PART-INF:") {
                playlist.part_target = number(&attributes(line), "PART-TARGET")?;
            } else if line.starts_with("#EXT-X-SERVER-CONTROL:") {
                playlist.server_control = attributes(line);
            } else if let Some(v) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
                playlist.media_sequence = v.parse()?;
            } else if line.starts_with("#EXT-X-PART:") {
                let attrs = attributes(line);
                playlist.trailing.push(Part {
                    uri: attrs.get("URI").context("EXT-X-PART without URI")?.clone(),
                    duration: number(&attrs, "DURATION")?,
                    independent: attrs.get("INDEPENDENT").map(String::as_str) == Some("YES"),
                });
            } else if line.starts_with("#EXT-X-PRELOAD-HINT:") {
                let attrs = attributes(line);
                ensure!(attrs.get("TYPE").map(String::as_str) == Some("PART"), "hint type: {line}");
                playlist.hints.push(attrs.get("URI").context("hint without URI")?.clone());
            } else if line.starts_with("#EXT-X-RENDITION-REPORT:") {
                playlist.reports.push(attributes(line));
            } else if let Some(v) = line.strip_prefix("#EXTINF:") {
                extinf = Some(v.trim_end_matches(',').parse::<f64>()?);
            } else if line == "#EXT-X-ENDLIST" {
                playlist.ended = true;
            } else if !line.starts_with('#') && !line.is_empty() {
                let duration = extinf.take().context("segment URI without EXTINF")?;
                let parts = std::mem::take(&mut playlist.trailing);
                playlist.segments.push(Segment { uri: line.to_string(), duration, parts });
            }
        }
        playlist.text = text;
        Ok(playlist)
    }

    fn parts(&self) -> impl Iterator<Item = &Part> {
        self.segments.iter().flat_map(|s| s.parts.iter()).chain(&self.trailing)
    }

    /// (media sequence number, index) of the last part listed.
    fn last_part(&self) -> Option<(u64, u64)> {
        part_position(&self.parts().last()?.uri)
    }
}

/// (media sequence number, part index) from a part's name, `seg_00012.part3.m4s`.
fn part_position(uri: &str) -> Option<(u64, u64)> {
    let (segment, rest) = uri.strip_prefix("seg_")?.split_once(".part")?;
    Some((segment.parse().ok()?, rest.strip_suffix(".m4s")?.parse().ok()?))
}

/// The checks every live LL-HLS playlist must pass, whatever the moment it was read.
fn check_live_playlist(playlist: &LlPlaylist, dir: &Path, siblings: &[&str], part: f64) -> Result<()> {
    let text = &playlist.text;
    ensure!(text.contains("#EXT-X-VERSION:"), "EXT-X-VERSION missing:\n{text}");
    // §4.4.3.7: PART-TARGET; every part at most that long (§4.4.4.9).
    ensure!(playlist.part_target >= part && playlist.part_target < part + 0.05, "PART-TARGET:\n{text}");
    // §4.4.3.8: blocking reloads offered; PART-HOLD-BACK at least three part targets, HOLD-BACK three
    // target durations.
    let control = &playlist.server_control;
    ensure!(control.get("CAN-BLOCK-RELOAD").map(String::as_str) == Some("YES"), "CAN-BLOCK-RELOAD:\n{text}");
    ensure!(number(control, "PART-HOLD-BACK")? >= 3.0 * playlist.part_target - 1e-9, "PART-HOLD-BACK:\n{text}");
    ensure!(number(control, "HOLD-BACK")? >= 3.0 * playlist.target - 1e-9, "HOLD-BACK:\n{text}");
    for part in playlist.parts() {
        ensure!(part.duration <= playlist.part_target, "{} longer than PART-TARGET:\n{text}", part.uri);
        ensure!(part.independent, "{} is not INDEPENDENT=YES (every part starts with a keyframe)", part.uri);
        // §6.2.1: a part is available when it is listed.
        ensure!(dir.join(&part.uri).exists(), "{} listed before it exists", part.uri);
    }
    ensure!(!playlist.ended, "a live snapshot with ENDLIST");
    // §4.4.5.3: one hint, for a part not listed yet, right after the last one listed.
    ensure!(playlist.hints.len() == 1, "expected one PRELOAD-HINT:\n{text}");
    let hint = &playlist.hints[0];
    ensure!(playlist.parts().all(|p| p.uri != *hint), "the hint {hint} is listed already:\n{text}");
    let next = match playlist.trailing.last() {
        Some(last) => part_position(&last.uri).map(|(msn, index)| (msn, index + 1)).context("part name")?,
        // A segment just closed: part 0 of the next.
        None => (playlist.media_sequence + playlist.segments.len() as u64, 0),
    };
    ensure!(part_position(hint) == Some(next), "hint {hint}, expected part {next:?}:\n{text}");
    // §4.4.5.4: a report for each sibling rendition, relative to this playlist (from a rendition's
    // second part on: its first may be out before a sibling has any).
    let reported: BTreeSet<String> = playlist.reports.iter().filter_map(|r| r.get("URI").cloned()).collect();
    let expected: BTreeSet<String> = siblings.iter().map(|s| format!("../{s}/index.m3u8")).collect();
    let complete = playlist.parts().count() >= 2 || !playlist.segments.is_empty();
    ensure!(
        reported.is_subset(&expected) && (!complete || reported == expected),
        "rendition reports {reported:?}, expected {expected:?}:\n{text}"
    );
    for report in &playlist.reports {
        number(report, "LAST-MSN")?;
        number(report, "LAST-PART")?;
    }
    Ok(())
}

/// Feeds `data` to ffprobe on stdin; its CSV output.
fn ffprobe_stdin(args: &[&str], data: &[u8]) -> Result<String> {
    let mut child = Command::new("ffprobe")
        .args(["-v", "error"])
        .args(args)
        .args(["-of", "csv=p=0", "-i", "pipe:0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("running ffprobe")?;
    let mut stdin = child.stdin.take().context("ffprobe stdin")?;
    let data = data.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let output = child.wait_with_output()?;
    let _ = writer.join();
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Whether the first video frame of `data` is a keyframe.
fn first_video_frame_is_key(data: &[u8]) -> Result<bool> {
    let out = ffprobe_stdin(
        &["-select_streams", "v:0", "-show_entries", "frame=key_frame", "-read_intervals", "%+#1"],
        data,
    )?;
    Ok(out.lines().next().and_then(|l| l.split(',').next()).map(str::trim) == Some("1"))
}

/// (codec type, codec name, frames decoded) of each stream in `data`.
fn streams(data: &[u8]) -> Result<Vec<(String, String, u64)>> {
    let out = ffprobe_stdin(&["-count_frames", "-show_entries", "stream=codec_type,codec_name,nb_read_frames"], data)?;
    let mut found = Vec::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let [name, kind, frames] = fields[..] else { bail!("ffprobe line '{line}'") };
        found.push((kind.to_string(), name.to_string(), frames.parse().unwrap_or(0)));
    }
    Ok(found)
}

/// Reads `dir/index.m3u8` of every rendition in `renditions` while the packager runs, checking each
/// snapshot, until it exits. Returns the parts ever listed and the hints ever given, per rendition, and
/// how many snapshots showed a segment in progress.
struct Watched {
    listed: HashMap<String, BTreeSet<String>>,
    hints: HashMap<String, Vec<String>>,
    in_progress_seen: usize,
}

fn watch_while_live(live: &mut Running, out: &Path, renditions: &[&str], part: f64) -> Result<Watched> {
    let mut watched = Watched { listed: HashMap::new(), hints: HashMap::new(), in_progress_seen: 0 };
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let running = live.child.try_wait()?.is_none();
        for name in renditions {
            let dir = out.join(name);
            let playlist = LlPlaylist::read(&dir.join("index.m3u8"))?;
            if playlist.ended {
                continue;
            }
            let siblings: Vec<&str> = renditions.iter().copied().filter(|r| r != name).collect();
            check_live_playlist(&playlist, &dir, &siblings, part).with_context(|| format!("{name}, while live"))?;
            watched.in_progress_seen += usize::from(!playlist.trailing.is_empty());
            watched.listed.entry(name.to_string()).or_default().extend(playlist.parts().map(|p| p.uri.clone()));
            let hints = watched.hints.entry(name.to_string()).or_default();
            if hints.last() != playlist.hints.first() {
                hints.extend(playlist.hints.first().cloned());
            }
        }
        if !running {
            return Ok(watched);
        }
        ensure!(Instant::now() < deadline, "the live packager did not finish");
        std::thread::sleep(Duration::from_millis(20)); // polling interval, not synchronisation
    }
}

/// The finished rendition: ENDLIST without a hint; each segment is its parts (durations and bytes),
/// each part starts with a keyframe (video) and init + parts decode.
fn check_finished_rendition(dir: &Path, video: bool) -> Result<LlPlaylist> {
    let playlist = LlPlaylist::read(&dir.join("index.m3u8"))?;
    let text = &playlist.text;
    ensure!(playlist.ended && playlist.hints.is_empty(), "ENDLIST and no PRELOAD-HINT at the end:\n{text}");
    ensure!(playlist.trailing.is_empty(), "parts after the last segment at the end:\n{text}");
    let init = std::fs::read(dir.join("init.mp4"))?;
    let mut joined = init.clone();
    let mut seconds = 0.0;
    for segment in &playlist.segments {
        ensure!(!segment.parts.is_empty(), "{}: parts of the last segments stay listed:\n{text}", segment.uri);
        let total: f64 = segment.parts.iter().map(|p| p.duration).sum();
        ensure!(
            (total - segment.duration).abs() < 0.002,
            "{}: parts {total} s, EXTINF {}",
            segment.uri,
            segment.duration
        );
        let mut concatenated = Vec::new();
        for part in &segment.parts {
            let bytes = std::fs::read(dir.join(&part.uri))?;
            ensure!(bytes.get(4..8) == Some(b"moof".as_slice()), "{} is not a CMAF chunk (moof first)", part.uri);
            if video {
                let alone = [init.as_slice(), &bytes].concat();
                ensure!(first_video_frame_is_key(&alone)?, "{} does not start with a keyframe", part.uri);
            }
            concatenated.extend(bytes);
        }
        ensure!(
            std::fs::read(dir.join(&segment.uri))? == concatenated,
            "{} is not its parts concatenated",
            segment.uri
        );
        joined.extend(concatenated);
        seconds += segment.duration;
    }
    let found = streams(&joined)?;
    if video {
        let frames = found.iter().find(|s| s.0 == "video").map_or(0, |s| s.2);
        ensure!(
            (frames as f64 - seconds * 30.0).abs() <= 1.0,
            "{frames} frames decoded from {seconds} s of parts: {found:?}"
        );
    } else {
        ensure!(found.len() == 1 && found[0].1 == "aac" && found[0].2 > 0, "audio parts decode as AAC: {found:?}");
    }
    Ok(playlist)
}

/// Every hint but the last (the stream ended before its part) names a part that was listed later.
fn check_hints_were_kept(watched: &Watched, name: &str) -> Result<()> {
    let hints = watched.hints.get(name).context("no hints seen")?;
    let listed = watched.listed.get(name).context("no parts seen")?;
    ensure!(hints.len() >= 3, "{name}: only {} distinct hints seen", hints.len());
    for hint in &hints[..hints.len() - 1] {
        ensure!(listed.contains(hint), "{name}: hinted {hint} was never listed");
    }
    Ok(())
}

#[test]
fn low_latency_renditions_publish_parts_as_they_are_made() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("ll");
    let mut args = vec!["--test-pattern", "6s", "--segment-duration", "2", "--window", "3"];
    args.extend(["--ladder", "240p:300k,360p:800k"]);
    let mut live = start_live(&out, &args)?;
    let master = std::fs::read_to_string(out.join("master.m3u8"))?;
    ensure!(master.contains("240p/index.m3u8") && master.contains("360p/index.m3u8"), "live master:\n{master}");
    let renditions = ["240p", "360p"];
    let watched = watch_while_live(&mut live, &out, &renditions, 1.0)?;
    let status = wait_with_timeout(&mut live.child, Duration::from_secs(30))?;
    ensure!(status.success(), "the live packager failed: {status}");
    ensure!(watched.in_progress_seen > 0, "never saw a segment's parts before the segment itself");
    for name in renditions {
        check_hints_were_kept(&watched, name)?;
        let playlist = check_finished_rendition(&out.join(name), true).with_context(|| format!("{name} at the end"))?;
        ensure!(playlist.segments.len() == 3, "{name}: 6 s in 2 s segments:\n{}", playlist.text);
        ensure!(playlist.segments.iter().all(|s| s.parts.len() == 2), "{name}: two 1 s parts per segment");
    }
    Ok(())
}

/// `--audio separate`: the audio rendition is published part by part too, cut at the video's part
/// boundaries; every playlist carries the same SERVER-CONTROL and PART-INF (§6.2.4) and reports the
/// others.
#[test]
fn a_separate_audio_rendition_is_low_latency_too() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("ll");
    let args = ["--test-pattern", "4s", "--segment-duration", "2", "--window", "3", "--ladder", "240p:300k"];
    let mut live = start_live(&out, &[&args[..], &["--audio", "separate"]].concat())?;
    let renditions = ["240p", "audio"];
    // The audio parts may run over the video's by an AAC frame or two: PART-TARGET allows for it.
    let watched = watch_while_live(&mut live, &out, &renditions, 1.0)?;
    let status = wait_with_timeout(&mut live.child, Duration::from_secs(30))?;
    ensure!(status.success(), "the live packager failed: {status}");
    check_hints_were_kept(&watched, "audio")?;
    let video = check_finished_rendition(&out.join("240p"), true)?;
    let audio = check_finished_rendition(&out.join("audio"), false)?;
    let tags = |p: &LlPlaylist| -> Vec<String> {
        p.text
            .lines()
            .filter(|l| l.starts_with("#EXT-X-SERVER-CONTROL") || l.starts_with("#EXT-X-PART-INF"))
            .map(String::from)
            .collect()
    };
    ensure!(tags(&video) == tags(&audio) && tags(&video).len() == 2, "{:?} vs {:?}", tags(&video), tags(&audio));
    ensure!(audio.segments.len() == video.segments.len(), "audio and video segment counts");
    Ok(())
}

/// What cannot be low-latency is refused with the reason, before anything is written.
#[test]
fn impossible_low_latency_options_are_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cases: [(&[&str], &str); 6] = [
        (&["--test-pattern", "4s", "--format", "fmp4", "--low-latency"], "--low-latency needs --live"),
        (&["--test-pattern", "4s", "--live", "--low-latency"], "--low-latency needs --format fmp4"),
        (&["--test-pattern", "4s", "--live", "--format", "fmp4", "--low-latency", "--encrypt"], "--encrypt"),
        (
            &["--test-pattern", "4s", "--live", "--format", "fmp4", "--low-latency", "--part-duration", "0.3"],
            "not a whole number of 0.3 s parts",
        ),
        (
            &[
                "--test-pattern",
                "4s",
                "--live",
                "--format",
                "fmp4",
                "--low-latency",
                "--segment-duration",
                "1",
                "--window",
                "2",
            ],
            "shorter than three target durations",
        ),
        (
            &["--test-pattern", "4s", "--live", "--format", "fmp4", "--low-latency", "--part-duration", "0.25"],
            "not a whole number of frames",
        ),
    ];
    for (i, (args, expected)) in cases.iter().enumerate() {
        let out = dir.path().join(format!("out-{i}"));
        let mut command = Command::new(bin_path("eddy-package"));
        command.arg("--out").arg(&out).args(*args);
        let output = run_to_end(command, Duration::from_secs(60))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(!output.status.success(), "{args:?} succeeded");
        ensure!(stderr.contains(expected), "{args:?}: expected '{expected}' in:\n{stderr}");
        ensure!(!out.exists(), "{args:?} wrote {}", out.display());
    }
    Ok(())
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("client")
}

/// GET through the edge: status, body, and how long it took.
async fn get(url: String) -> Result<(u16, Vec<u8>, Duration)> {
    let started = Instant::now();
    let response = client().get(&url).send().await.with_context(|| format!("GET {url}"))?;
    let status = response.status().as_u16();
    let body = response.bytes().await?.to_vec();
    Ok((status, body, started.elapsed()))
}

/// The hinted part of `dir`'s playlist that does not exist on disk yet, and the playlist it came from.
/// (The packager writes a part, then the playlist hinting the next; a hint read just before its part
/// lands is passed over.)
async fn next_missing_part(dir: &Path) -> Result<(u64, u64, String)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let playlist = LlPlaylist::read(&dir.join("index.m3u8"))?;
        ensure!(!playlist.ended, "the stream ended before a part could be waited for");
        if let Some(hint) = playlist.hints.first() {
            if !dir.join(hint).exists() {
                let (msn, part) = part_position(hint).context("hint name")?;
                return Ok((msn, part, hint.clone()));
            }
        }
        ensure!(Instant::now() < deadline, "no hint to wait for");
        tokio::time::sleep(Duration::from_millis(20)).await; // polling interval, not synchronisation
    }
}

/// The LL-HLS source behind the product's edge: blocking reloads through `eddy-edge` with the
/// packager's folder as its directory origin wait for the part, and only for a part that can come.
#[tokio::test(flavor = "multi_thread")]
async fn blocking_reloads_through_the_edge_wait_for_the_packagers_parts() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("ll");
    let args = ["--test-pattern", "10s", "--segment-duration", "2", "--window", "3", "--ladder", "240p:300k"];
    let mut live = start_live(&out, &args)?;
    let mut config = tempfile::Builder::new().suffix(".toml").tempfile()?;
    config.write_all(b"[prefetch]\nsegments = 0\nrefresh_live_playlists = false\n")?;
    let edge =
        start_edge(&["--config", config.path().to_str().context("utf8")?, "--origin", out.to_str().context("utf8")?])?;
    let rendition: PathBuf = out.join("240p");

    // The next part, asked for before it exists: the answer comes once it does, and lists it.
    let (msn, part, uri) = next_missing_part(&rendition).await?;
    let (status, body, waited) = get(edge.url(&format!("/240p/index.m3u8?_HLS_msn={msn}&_HLS_part={part}"))).await?;
    ensure!(rendition.join(&uri).exists(), "answered before {uri} was written");
    let answer = LlPlaylist::parse(String::from_utf8(body)?)?;
    ensure!(status == 200 && answer.parts().any(|p| p.uri == uri), "{status}: {uri} not listed:\n{}", answer.text);
    eprintln!("blocking reload for {uri} answered after {} ms", waited.as_millis());
    // The part itself, as the playlist names it.
    let (status, bytes, _) = get(edge.url(&format!("/240p/{uri}"))).await?;
    ensure!(status == 200 && bytes == std::fs::read(rendition.join(&uri))?, "part {uri} through the edge");

    // A whole segment: `_HLS_msn` alone waits for the segment after the one being made to be listed.
    let (status, body, _) = get(edge.url(&format!("/240p/index.m3u8?_HLS_msn={}", msn + 1))).await?;
    let answer = LlPlaylist::parse(String::from_utf8(body)?)?;
    let wanted = format!("seg_{:05}.m4s", msn + 1);
    ensure!(status == 200 && answer.segments.iter().any(|s| s.uri == wanted), "{wanted} not listed:\n{}", answer.text);

    // Too far ahead (§6.2.5.2): 400 at once, not a hold. More than two segments beyond the last, or
    // more parts beyond the last than the Advance Part Limit (three 1 s parts), even if the segment
    // being made closes meanwhile.
    let now = LlPlaylist::read(&rendition.join("index.m3u8"))?;
    let (last_msn, _) = now.last_part().context("no parts")?;
    let next = now.media_sequence + now.segments.len() as u64;
    for query in [format!("_HLS_msn={}", last_msn + 10), format!("_HLS_msn={}&_HLS_part=20", next + 1)] {
        let (status, _, took) = get(edge.url(&format!("/240p/index.m3u8?{query}"))).await?;
        ensure!(status == 400, "{query}: {status}");
        ensure!(took < Duration::from_secs(2), "{query}: refused after {took:?}, not at once");
    }

    // Once the stream has ended the directives are ignored: answered at once.
    let status = wait_with_timeout(&mut live.child, Duration::from_secs(60))?;
    ensure!(status.success(), "the live packager failed: {status}");
    let (status, body, took) = get(edge.url(&format!("/240p/index.m3u8?_HLS_msn={}", last_msn + 2))).await?;
    ensure!(status == 200 && String::from_utf8(body)?.contains("#EXT-X-ENDLIST"), "after the end: {status}");
    ensure!(took < Duration::from_secs(2), "after the end a blocking reload waited {took:?}");
    drop(edge);
    Ok(())
}
