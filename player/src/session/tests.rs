//! The download loop against a fake fetcher (bodies from memory, failures and slow downloads on
//! demand) and a fake pipeline (records what is pushed): no sockets, no GStreamer, no waiting.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use url::Url;

use super::downloader::{Downloaded, Downloader};
use super::keys::Keys;
use super::playlists::{build_ladder, Playlists};
use super::seams::{Fetch, MediaSink};
use super::state::{lock, Finish, Playback};
use super::PlayerConfig;
use crate::abr::history::History;
use crate::abr::{AbandonInput, AbrAlgorithm, AbrInput};
use crate::events::{self, Event, EventWriter};
use crate::fetch::{Download, FetchError, Outcome, Progress};
use crate::pipeline::{PipelineError, PipelineEvent, Track};
use crate::playlist::{Range, Variant};
use crate::stall::StallTracker;

const BASE: &str = "http://origin.test/";

fn url(path: &str) -> Url {
    Url::parse(BASE).and_then(|base| base.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Serves bodies from memory. URLs in `failing` fail; downloads of URLs under `slow/` report one
/// progress of a crawling transfer and stop there if the check says so.
#[derive(Default)]
struct FakeFetch {
    bodies: HashMap<Url, Bytes>,
    failing: HashSet<Url>,
    requested: RefCell<Vec<Url>>,
}

impl FakeFetch {
    fn serve(&mut self, path: &str, body: impl Into<Bytes>) {
        self.bodies.insert(url(path), body.into());
    }

    fn count(&self, path: &str) -> usize {
        self.requested.borrow().iter().filter(|u| **u == url(path)).count()
    }
}

impl Fetch for FakeFetch {
    async fn get(&self, url: &Url, range: Option<Range>) -> Result<Bytes, FetchError> {
        match self.download(url, range, |_| false).await? {
            Outcome::Done(download) => Ok(download.body),
            Outcome::Abandoned { .. } => Err(FetchError::Request { url: url.to_string(), reason: "abandoned".into() }),
        }
    }

    async fn download(
        &self,
        url: &Url,
        _range: Option<Range>,
        mut abandon: impl FnMut(&Progress) -> bool,
    ) -> Result<Outcome, FetchError> {
        self.requested.borrow_mut().push(url.clone());
        let failure = || FetchError::Request { url: url.to_string(), reason: "refused by the test".into() };
        if self.failing.contains(url) {
            return Err(failure());
        }
        let body = self.bodies.get(url).cloned().ok_or_else(failure)?;
        let now = Instant::now();
        if url.path().contains("/slow/") {
            // Two seconds in, 1 kB of a large body has arrived.
            let requested_at = now.checked_sub(std::time::Duration::from_secs(2)).unwrap_or(now);
            let progress =
                Progress { requested_at, first_byte_at: Some(requested_at), bytes_so_far: 1000, expected_bytes: None };
            if abandon(&progress) {
                return Ok(Outcome::Abandoned { bytes_so_far: 1000 });
            }
        }
        Ok(Outcome::Done(Download { body, url: url.clone(), requested_at: now, first_byte_at: now, finished_at: now }))
    }
}

/// Records every push; plays instantly (the buffer is always empty, so the loop never waits).
#[derive(Clone, Default)]
struct FakeSink {
    log: Arc<Mutex<Vec<String>>>,
}

impl FakeSink {
    fn log(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn note(&self, entry: String) {
        if let Ok(mut log) = self.log.lock() {
            log.push(entry);
        }
    }
}

impl MediaSink for FakeSink {
    fn push(&self, track: Track, data: Vec<u8>, discontinuity: bool) -> Result<(), PipelineError> {
        let mark = if discontinuity { " (discontinuity)" } else { "" };
        let to = if track == Track::Audio { "audio: " } else { "" };
        self.note(format!("{to}{}{mark}", String::from_utf8_lossy(&data)));
        Ok(())
    }
    fn play(&self) -> Result<(), PipelineError> {
        self.note("play".into());
        Ok(())
    }
    fn pause(&self) -> Result<(), PipelineError> {
        Ok(())
    }
    fn end_of_stream(&self, track: Track) -> Result<(), PipelineError> {
        self.note(if track == Track::Audio { "audio: end" } else { "end" }.into());
        Ok(())
    }
    fn running_time_s(&self) -> Option<f64> {
        Some(f64::MAX)
    }
    fn poll(&self) -> Vec<PipelineEvent> {
        Vec::new()
    }
    fn stop(&self) {}
}

/// Chooses the rungs it is given, in turn; abandons to `abandon_to` when set.
struct Scripted {
    rungs: Vec<usize>,
    next: usize,
    abandon_to: Option<usize>,
}

impl Scripted {
    fn new(rungs: &[usize]) -> Box<Self> {
        Box::new(Scripted { rungs: rungs.to_vec(), next: 0, abandon_to: None })
    }
}

impl AbrAlgorithm for Scripted {
    fn name(&self) -> &'static str {
        "scripted"
    }
    fn choose(&mut self, _input: &AbrInput) -> usize {
        let rung = self.rungs[self.next % self.rungs.len()];
        self.next += 1;
        rung
    }
    fn abandon(&mut self, _input: &AbandonInput) -> Option<usize> {
        self.abandon_to
    }
}

/// A VOD media playlist of `count` 1 s segments named `{dir}/{i}.ts`, with an init section when
/// `fmp4`.
fn media_playlist(dir: &str, count: usize, fmp4: bool) -> String {
    let mut text = String::from("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:0\n");
    if fmp4 {
        text.push_str(&format!("#EXT-X-MAP:URI=\"{dir}/init.mp4\"\n"));
    }
    for i in 0..count {
        text.push_str(&format!("#EXTINF:1.0,\n{dir}/{i}.{}\n", if fmp4 { "m4s" } else { "ts" }));
    }
    text + "#EXT-X-ENDLIST\n"
}

/// Two renditions, `low` (300 kbit/s) and `high` (3 Mbit/s), of `count` segments each; every
/// segment's body names it.
fn two_renditions(count: usize, fmp4: bool) -> (FakeFetch, Vec<Variant>) {
    let mut fetch = FakeFetch::default();
    let mut variants = Vec::new();
    for (index, (dir, bandwidth_bps)) in [("low", 300_000), ("high", 3_000_000)].into_iter().enumerate() {
        fetch.serve(&format!("{dir}.m3u8"), media_playlist(dir, count, fmp4));
        fetch.serve(&format!("{dir}/init.mp4"), format!("{dir}/init"));
        for i in 0..count {
            fetch.serve(&format!("{dir}/{i}.{}", if fmp4 { "m4s" } else { "ts" }), format!("{dir}/{i}"));
        }
        variants.push(Variant {
            index,
            uri: url(&format!("{dir}.m3u8")),
            bandwidth_bps,
            average_bandwidth_bps: None,
            resolution: None,
            codecs: None,
            audio_group: None,
            subtitles_group: None,
        });
    }
    (fetch, variants)
}

struct Run {
    result: Result<(), super::PlayError>,
    pushed: Vec<String>,
    done: Downloaded,
    events: Vec<Event>,
}

/// Runs the download loop over `variants` with `abr`; `prepare` may change the playback state first.
async fn run(
    fetch: &FakeFetch,
    variants: Vec<Variant>,
    abr: Box<dyn AbrAlgorithm + Send>,
    duration_s: Option<f64>,
    prepare: impl FnOnce(&mut Playback),
) -> Run {
    run_from(fetch, variants, abr, duration_s, prepare, (0, None)).await
}

/// [`run`] from segment `start.0`, part `start.1` (LL-HLS) when given.
async fn run_from(
    fetch: &FakeFetch,
    variants: Vec<Variant>,
    abr: Box<dyn AbrAlgorithm + Send>,
    duration_s: Option<f64>,
    prepare: impl FnOnce(&mut Playback),
    start: (u64, Option<u64>),
) -> Run {
    let work = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let events_path = work.path().join("events.jsonl");
    let config = PlayerConfig {
        url: url("master.m3u8"),
        headless: true,
        buffer_target_s: 30.0,
        max_bitrate_bps: None,
        max_height: None,
        rendition: None,
        start_at_s: None,
        duration_s,
        events: Some(events_path.clone()),
        quiet: true,
        audio_lang: None,
        seek_to: None,
        keys: false,
        subs: None,
        live_delay_s: None,
    };
    let ladder = build_ladder(variants, &config).unwrap_or_else(|e| panic!("{e}"));
    let sink = FakeSink::default();
    let events = EventWriter::create(Some(&events_path)).unwrap_or_else(|e| panic!("{e}"));
    let mut playback =
        Playback::new(Box::new(sink.clone()), Instant::now(), StallTracker::new(1.0), duration_s, events);
    prepare(&mut playback);
    let shared = Arc::new(Mutex::new(playback));
    let mut downloader = Downloader {
        config: &config,
        fetcher: fetch,
        ladder: &ladder,
        shared: &shared,
        playlists: Playlists::default(),
        abr,
        history: History::default(),
        keys: Keys::default(),
        last_init: None,
        live_anchor: None,
        part: start.1,
        done: Downloaded::default(),
    };
    let result = downloader.run(start.0).await;
    let done = downloader.done;
    drop(shared);
    let text = std::fs::read_to_string(&events_path).unwrap_or_default();
    let events = events::read(&text).unwrap_or_else(|e| panic!("{e}")).into_iter().map(|r| r.event).collect();
    Run { result, pushed: sink.log(), done, events }
}

#[tokio::test]
async fn every_segment_is_pushed_in_order_then_the_end_of_the_stream() {
    let (fetch, variants) = two_renditions(3, false);
    let run = run(&fetch, variants, Scripted::new(&[0]), None, |_| {}).await;
    assert!(run.result.is_ok(), "{:?}", run.result.err());
    assert_eq!(run.pushed, ["low/0", "play", "low/1", "low/2", "end"]);
    assert_eq!(run.done.records.iter().map(|r| r.index).collect::<Vec<_>>(), [0, 1, 2]);
    let kinds: Vec<&str> = run
        .events
        .iter()
        .map(|e| match e {
            Event::Start { .. } => "start",
            Event::Decision { .. } => "decision",
            Event::Segment { .. } => "segment",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["start", "decision", "segment", "decision", "segment", "decision", "segment"]);
}

#[tokio::test]
async fn a_switch_pushes_the_new_init_section_and_marks_no_double_discontinuity() {
    let (fetch, variants) = two_renditions(4, true);
    let run = run(&fetch, variants, Scripted::new(&[0, 0, 1, 1]), None, |_| {}).await;
    assert!(run.result.is_ok(), "{:?}", run.result.err());
    assert_eq!(
        run.pushed,
        ["low/init (discontinuity)", "low/0", "play", "low/1", "high/init (discontinuity)", "high/2", "high/3", "end"]
    );
    assert_eq!(fetch.count("high/init.mp4"), 1, "an unchanged init section is not fetched again");
}

#[tokio::test]
async fn a_switch_without_init_sections_is_a_discontinuity() {
    let (fetch, variants) = two_renditions(3, false);
    let run = run(&fetch, variants, Scripted::new(&[0, 1, 1]), None, |_| {}).await;
    assert_eq!(run.pushed, ["low/0", "play", "high/1 (discontinuity)", "high/2", "end"]);
}

#[tokio::test]
async fn a_failing_rendition_falls_back_to_a_lower_one() {
    let (mut fetch, variants) = two_renditions(2, false);
    fetch.failing.insert(url("high/1.ts"));
    let run = run(&fetch, variants, Scripted::new(&[1]), None, |_| {}).await;
    assert!(run.result.is_ok(), "{:?}", run.result.err());
    assert_eq!(run.pushed, ["high/0", "play", "low/1 (discontinuity)", "end"]);
    assert_eq!(run.done.records.iter().map(|r| r.rendition).collect::<Vec<_>>(), [1, 0]);
}

#[tokio::test]
async fn a_segment_missing_everywhere_is_an_error_naming_it() {
    let (mut fetch, variants) = two_renditions(2, false);
    fetch.failing.extend([url("high/1.ts"), url("low/1.ts")]);
    let run = run(&fetch, variants, Scripted::new(&[1]), None, |_| {}).await;
    let error = run.result.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.starts_with("segment 1 could not be fetched"), "{error}");
    assert!(!run.pushed.contains(&"end".to_string()), "no end-of-stream after a failure: {:?}", run.pushed);
}

#[tokio::test]
async fn an_abandoned_download_is_refetched_lower_once() {
    let (mut fetch, variants) = two_renditions(2, false);
    // The high rendition crawls.
    for i in 0..2 {
        let body = fetch.bodies.remove(&url(&format!("high/{i}.ts"))).unwrap_or_default();
        fetch.serve(&format!("high/slow/{i}.ts"), body);
    }
    fetch.serve("high.m3u8", media_playlist("high/slow", 2, false));
    let abr = Box::new(Scripted { rungs: vec![1], next: 0, abandon_to: Some(0) });
    // Abandonment protects a playing buffer: playback is running.
    let run = run(&fetch, variants, abr, None, |playback| playback.playing_since = Some(Instant::now())).await;
    assert!(run.result.is_ok(), "{:?}", run.result.err());
    assert_eq!(run.pushed, ["low/0", "play", "low/1", "end"]);
    assert_eq!(run.done.abandoned, 2);
    assert!(run.done.records.iter().all(|r| r.abandoned && r.rendition == 0));
    assert_eq!(run.done.bytes, 2 * 1000 + 2 * "low/0".len() as u64, "abandoned bytes count");
    let abandons = run.events.iter().filter(|e| matches!(e, Event::Abandon { to_rendition: 0, .. })).count();
    assert_eq!(abandons, 2);
}

#[tokio::test]
async fn no_abandonment_before_playback_starts() {
    let (mut fetch, variants) = two_renditions(1, false);
    let body = fetch.bodies.remove(&url("high/0.ts")).unwrap_or_default();
    fetch.serve("high/slow/0.ts", body);
    fetch.serve("high.m3u8", media_playlist("high/slow", 1, false));
    let abr = Box::new(Scripted { rungs: vec![1], next: 0, abandon_to: Some(0) });
    let run = run(&fetch, variants, abr, None, |_| {}).await;
    assert_eq!(run.pushed, ["high/0", "play", "end"]);
    assert_eq!(run.done.abandoned, 0);
}

#[tokio::test]
async fn enough_media_for_the_duration_stops_the_loop() {
    let (fetch, variants) = two_renditions(5, false);
    let run = run(&fetch, variants, Scripted::new(&[0]), Some(2.0), |_| {}).await;
    assert!(run.result.is_ok(), "{:?}", run.result.err());
    assert_eq!(run.pushed, ["low/0", "play", "low/1"], "no end-of-stream: the stream goes on");
}

#[tokio::test]
async fn a_finished_playback_downloads_nothing() {
    let (fetch, variants) = two_renditions(3, false);
    let run = run(&fetch, variants, Scripted::new(&[0]), None, |playback| playback.finish(Finish::Interrupted)).await;
    assert!(run.result.is_ok());
    assert!(run.pushed.is_empty(), "{:?}", run.pushed);
    assert_eq!(fetch.count("low/0.ts"), 0);
}

/// An LL-HLS playlist (draft-pantos-hls-rfc8216bis): segment 0 of parts 0.0 and 0.1, then `more`.
fn ll_playlist(more: &str) -> String {
    let head = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=2.0\n#EXT-X-PART-INF:PART-TARGET=1.0\n#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-MAP:URI=\"p/init.mp4\"\n";
    let first = "#EXT-X-PART:DURATION=1.0,URI=\"p/0.0\",INDEPENDENT=YES\n#EXT-X-PART:DURATION=1.0,URI=\"p/0.1\",INDEPENDENT=YES\n#EXTINF:2.0,\np/0.m4s\n";
    format!("{head}{first}{more}")
}

/// Low-latency live: parts pushed one by one from the join point, a blocking reload for the part not
/// listed yet, and never a whole segment or a hinted part.
#[tokio::test]
async fn low_latency_live_pushes_parts_and_blocks_for_the_next_one() {
    let mut fetch = FakeFetch::default();
    let first = ll_playlist(
        "#EXT-X-PART:DURATION=1.0,URI=\"p/1.0\",INDEPENDENT=YES\n#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"p/1.1\"\n",
    );
    let parts = "#EXT-X-PART:DURATION=1.0,URI=\"p/1.0\",INDEPENDENT=YES\n#EXT-X-PART:DURATION=1.0,URI=\"p/1.1\",INDEPENDENT=YES\n";
    let second = ll_playlist(&format!("{parts}#EXTINF:2.0,\np/1.m4s\n#EXT-X-ENDLIST\n"));
    fetch.serve("live.m3u8", first.clone());
    fetch.serve("live.m3u8?_HLS_msn=1&_HLS_part=1", second);
    for body in ["p/init.mp4", "p/0.0", "p/0.1", "p/1.0", "p/1.1"] {
        fetch.serve(body, body.trim_end_matches(".mp4").to_string());
    }
    let variant = Variant::media_playlist(url("live.m3u8"));
    let Ok(crate::playlist::Parsed::Media(playlist)) = crate::playlist::parse(first.as_bytes(), &url("live.m3u8"))
    else {
        panic!("media expected")
    };
    let start = playlist.live_start_part(2.0).unwrap_or_else(|| panic!("a start part"));
    assert_eq!((start.msn, start.part), (0, 1), "two parts (PART-HOLD-BACK) from the end");
    let run = run_from(&fetch, vec![variant], Scripted::new(&[0]), None, |_| {}, (start.msn, Some(start.part))).await;
    assert!(run.result.is_ok(), "{:?}", run.result.err());
    assert_eq!(run.pushed, ["p/init (discontinuity)", "p/0.1", "play", "p/1.0", "p/1.1", "end"]);
    assert_eq!(fetch.count("live.m3u8?_HLS_msn=1&_HLS_part=1"), 1, "one blocking reload");
    for never in ["p/0.m4s", "p/1.m4s", "p/0.0"] {
        assert_eq!(fetch.count(never), 0, "{never} fetched");
    }
    let records: Vec<(u64, Option<u32>, f64)> =
        run.done.records.iter().map(|r| (r.index, r.parts, r.duration_s)).collect();
    assert_eq!(records, [(0, Some(1), 1.0), (1, Some(2), 2.0)], "one record per segment");
    let reloads: Vec<&Event> = run.events.iter().filter(|e| matches!(e, Event::Reload { .. })).collect();
    assert!(matches!(reloads[..], [Event::Reload { blocking: true, msn: Some(1), part: Some(1), .. }]), "{reloads:?}");
    let parts: Vec<Option<u64>> = run
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Segment { part, .. } => Some(*part),
            _ => None,
        })
        .collect();
    assert_eq!(parts, [Some(1), Some(0), Some(1)]);
}

#[test]
fn the_end_of_the_stream_or_of_the_duration_is_not_a_stall() {
    let events = EventWriter::create(None).unwrap_or_else(|e| panic!("{e}"));
    let mut playback =
        Playback::new(Box::new(FakeSink::default()), Instant::now(), StallTracker::new(1.0), Some(12.0), events);
    playback.pushed_media_s = 11.0;
    assert!(!playback.nothing_more_to_push());
    playback.pushed_media_s = 12.0;
    assert!(playback.nothing_more_to_push(), "the end of --duration is not a stall");
    playback.duration_s = None;
    assert!(!playback.nothing_more_to_push());
    playback.all_pushed = true;
    assert!(playback.nothing_more_to_push(), "the end of the stream is not a stall");
    assert!(lock(&Mutex::new(playback)).all_pushed);
}
