//! Low-Latency HLS media playlists (draft-pantos-hls-rfc8216bis, the HLS 2nd edition): what a live
//! rendition has published (finished segments, the parts of the segment being made, the sibling
//! renditions' progress) in, playlist text out. Pure; `output::RenditionWriter` is the I/O around it.
//!
//! What a playlist holds, by section of the draft:
//! - EXT-X-PART-INF:PART-TARGET (§4.4.3.7), the longest part rounded up to the printed millisecond
//!   (§4.4.4.9: no part may be longer);
//! - EXT-X-SERVER-CONTROL (§4.4.3.8): CAN-BLOCK-RELOAD=YES (the edge's directory origin holds
//!   `_HLS_msn` requests, §6.2.5.2), HOLD-BACK of three target durations, PART-HOLD-BACK of three part
//!   targets (the SHOULD; the MUST is two);
//! - an EXT-X-PART (§4.4.4.9) for each part of the segments that start within three target
//!   durations of the playlist's end (§6.2.2: older part tags SHOULD go), and of the segment being
//!   made, which has no EXTINF yet;
//! - one EXT-X-PRELOAD-HINT TYPE=PART (§4.4.5.3) naming the next part, never with ENDLIST;
//! - an EXT-X-RENDITION-REPORT (§4.4.5.4) for each sibling rendition, URI relative to this playlist;
//! - EXT-X-PROGRAM-DATE-TIME (§4.4.4.6) before each segment's first part or EXTINF, when known, so
//!   that a player can measure its distance from the live edge in wall-clock time.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// Shortest part accepted: a few frames at 30 fps; shorter parts cost a request (and a `moof`) each
/// for little latency gained.
pub const MIN_PART_DURATION: f64 = 0.2;
/// Longest part accepted.
pub const MAX_PART_DURATION: f64 = 10.0;

/// How many parts of `part` seconds make a segment of `segment` seconds, when that is a whole number
/// (within 1 %) of at least one; `None` otherwise.
pub fn parts_per_segment(segment: f64, part: f64) -> Option<usize> {
    if !(segment.is_finite() && part.is_finite() && part > 0.0 && segment > 0.0) {
        return None;
    }
    let ratio = segment / part;
    let whole = ratio.round();
    ((ratio - whole).abs() <= 0.01 * whole && (1.0..=1000.0).contains(&whole)).then_some(whole as usize)
}

/// The file name of part `index` of segment `sequence`: beside `seg_00012.m4s` its parts are
/// `seg_00012.part0.m4s`, `seg_00012.part1.m4s`, ...
pub fn part_uri(sequence: u64, index: usize, extension: &str) -> String {
    format!("seg_{sequence:05}.part{index}.{extension}")
}

/// PART-TARGET for parts of at most `longest` seconds: rounded up to the millisecond, the precision
/// the playlist prints durations with, so that no printed DURATION exceeds it (§4.4.4.9).
pub fn part_target(longest: f64) -> f64 {
    // The small allowance keeps 1.0 (which may be 1.0000000001 after arithmetic) at 1.000.
    ((longest * 1000.0 - 1e-6).ceil() / 1000.0).max(0.001)
}

/// One partial segment (a CMAF chunk: `moof` + `mdat` runs).
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub uri: String,
    /// Seconds.
    pub duration: f64,
    /// Starts with an independent frame (a keyframe; every audio frame is one).
    pub independent: bool,
}

/// A finished segment and the parts it was published as.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub sequence: u64,
    pub uri: String,
    /// Seconds: the sum of its parts'.
    pub duration: f64,
    pub parts: Vec<Part>,
    /// When its first frame was captured.
    pub program_date_time: Option<SystemTime>,
}

/// Where a sibling rendition is (§4.4.5.4): its playlist relative to this one, and its last part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenditionReport {
    pub uri: String,
    /// The media sequence number of its last part.
    pub last_msn: u64,
    /// That part's index within its segment.
    pub last_part: u64,
}

/// Everything one LL-HLS media playlist shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Playlist<'a> {
    /// The finished segments in the window, oldest first.
    pub segments: &'a [Segment],
    /// The media sequence number of the segment being made (the one after the last finished).
    pub next_sequence: u64,
    /// Its parts so far.
    pub in_progress: &'a [Part],
    /// When its first frame was captured.
    pub in_progress_start: Option<SystemTime>,
    /// The next part's URI (EXT-X-PRELOAD-HINT); ignored once `ended`.
    pub preload_hint: Option<&'a str>,
    pub target_duration: u64,
    pub part_target: f64,
    /// EXT-X-MAP.
    pub map_uri: Option<&'a str>,
    pub version: usize,
    pub reports: &'a [RenditionReport],
    /// ENDLIST: the stream is over.
    pub ended: bool,
}

/// The text of `playlist`.
pub fn render(playlist: &Playlist) -> String {
    let mut out = String::with_capacity(256 + 96 * (playlist.segments.len() + playlist.in_progress.len()) * 2);
    let target = playlist.target_duration;
    // `write!` to a String cannot fail.
    let _ = writeln!(out, "#EXTM3U");
    let _ = writeln!(out, "#EXT-X-VERSION:{}", playlist.version);
    let _ = writeln!(out, "#EXT-X-TARGETDURATION:{target}");
    let _ = writeln!(
        out,
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,HOLD-BACK={:.3},PART-HOLD-BACK={:.3}",
        hold_back(target),
        part_hold_back(playlist.part_target)
    );
    let _ = writeln!(out, "#EXT-X-PART-INF:PART-TARGET={:.3}", playlist.part_target);
    let media_sequence = playlist.segments.first().map_or(playlist.next_sequence, |s| s.sequence);
    let _ = writeln!(out, "#EXT-X-MEDIA-SEQUENCE:{media_sequence}");
    let _ = writeln!(out, "#EXT-X-INDEPENDENT-SEGMENTS");
    if let Some(map) = playlist.map_uri {
        let _ = writeln!(out, "#EXT-X-MAP:URI=\"{map}\"");
    }
    let listed = parts_listed(playlist);
    for (segment, with_parts) in playlist.segments.iter().zip(listed) {
        write_date_time(&mut out, segment.program_date_time);
        if with_parts {
            for part in &segment.parts {
                write_part(&mut out, part);
            }
        }
        let _ = writeln!(out, "#EXTINF:{:.3},", segment.duration);
        let _ = writeln!(out, "{}", segment.uri);
    }
    if !playlist.in_progress.is_empty() {
        write_date_time(&mut out, playlist.in_progress_start);
        for part in playlist.in_progress {
            write_part(&mut out, part);
        }
    }
    if playlist.ended {
        let _ = writeln!(out, "#EXT-X-ENDLIST");
        return out;
    }
    if let Some(hint) = playlist.preload_hint {
        let _ = writeln!(out, "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{hint}\"");
    }
    for report in playlist.reports {
        let _ = writeln!(
            out,
            "#EXT-X-RENDITION-REPORT:URI=\"{}\",LAST-MSN={},LAST-PART={}",
            report.uri, report.last_msn, report.last_part
        );
    }
    out
}

/// HOLD-BACK: three target durations, the least §4.4.3.8 allows.
pub fn hold_back(target_duration: u64) -> f64 {
    3.0 * target_duration as f64
}

/// PART-HOLD-BACK: three part targets (§4.4.3.8 SHOULD; MUST be at least two).
pub fn part_hold_back(part_target: f64) -> f64 {
    3.0 * part_target
}

/// Which finished segments have their parts listed: those starting within three target durations of
/// the playlist's end (§6.2.2: part tags further back SHOULD be removed; they go segment by segment,
/// oldest first, as §6.2.2 asks).
fn parts_listed(playlist: &Playlist) -> Vec<bool> {
    let limit = hold_back(playlist.target_duration) + 1e-6;
    let mut from_end: f64 = playlist.in_progress.iter().map(|p| p.duration).sum();
    let mut listed = vec![false; playlist.segments.len()];
    for (segment, listed) in playlist.segments.iter().zip(listed.iter_mut()).rev() {
        from_end += segment.duration;
        *listed = from_end <= limit;
    }
    listed
}

fn write_part(out: &mut String, part: &Part) {
    let independent = if part.independent { ",INDEPENDENT=YES" } else { "" };
    let _ = writeln!(out, "#EXT-X-PART:DURATION={:.3},URI=\"{}\"{independent}", part.duration, part.uri);
}

fn write_date_time(out: &mut String, at: Option<SystemTime>) {
    if let Some(at) = at {
        let _ = writeln!(out, "#EXT-X-PROGRAM-DATE-TIME:{}", format_date_time(at));
    }
}

/// `at` as EXT-X-PROGRAM-DATE-TIME writes it (ISO 8601 in UTC, milliseconds): `2024-02-29T13:05:09.042Z`.
/// Times before 1970 are written as 1970.
pub fn format_date_time(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since.as_secs();
    let (year, month, day) = civil_from_days(seconds / 86_400);
    let of_day = seconds % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since.subsec_millis()
    )
}

/// The proleptic Gregorian date of day `days` after 1970-01-01 (H. Hinnant's `civil_from_days`, for
/// days from the epoch on, where every quantity is non-negative).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn part(sequence: u64, index: usize) -> Part {
        Part { uri: part_uri(sequence, index, "m4s"), duration: 1.0, independent: true }
    }

    fn segment(sequence: u64, parts: usize) -> Segment {
        Segment {
            sequence,
            uri: format!("seg_{sequence:05}.m4s"),
            duration: parts as f64,
            parts: (0..parts).map(|i| part(sequence, i)).collect(),
            program_date_time: None,
        }
    }

    fn playlist<'a>(segments: &'a [Segment], in_progress: &'a [Part], hint: Option<&'a str>) -> Playlist<'a> {
        Playlist {
            segments,
            next_sequence: segments.last().map_or(0, |s| s.sequence + 1),
            in_progress,
            in_progress_start: None,
            preload_hint: hint,
            target_duration: 2,
            part_target: 1.0,
            map_uri: Some("init.mp4"),
            version: 6,
            reports: &[],
            ended: false,
        }
    }

    #[test]
    fn segments_are_whole_numbers_of_parts() {
        assert_eq!(parts_per_segment(4.0, 1.0), Some(4));
        assert_eq!(parts_per_segment(2.0, 0.5), Some(4));
        assert_eq!(parts_per_segment(1.0, 1.0), Some(1));
        assert_eq!(parts_per_segment(2.0, 0.3), None, "6.67 parts");
        assert_eq!(parts_per_segment(1.0, 2.0), None, "half a part");
        assert_eq!(parts_per_segment(2.0, 0.0), None);
        assert_eq!(parts_per_segment(f64::NAN, 1.0), None);
        assert_eq!(parts_per_segment(2.0, f64::INFINITY), None);
    }

    #[test]
    fn part_targets_round_up_to_the_printed_millisecond() {
        assert_eq!(part_target(1.0), 1.0);
        assert_eq!(part_target(1.0 + 1e-12), 1.0);
        assert_eq!(part_target(1.001), 1.001);
        assert_eq!(part_target(30.0 / 29.97), 1.002);
        assert_eq!(part_target(1.0 + 0.0437), 1.044);
        assert_eq!(part_uri(12, 3, "m4s"), "seg_00012.part3.m4s");
    }

    /// The draft's live shape: finished segments with their parts, then the parts of the segment
    /// being made, the hint for the next, and the sibling reports.
    #[test]
    fn a_live_playlist_lists_parts_the_hint_and_reports() {
        let segments = [segment(7, 2), segment(8, 2)];
        let in_progress = [part(9, 0)];
        let reports = [
            RenditionReport { uri: "../360p/index.m3u8".into(), last_msn: 9, last_part: 0 },
            RenditionReport { uri: "../audio/index.m3u8".into(), last_msn: 8, last_part: 1 },
        ];
        let mut shown = playlist(&segments, &in_progress, Some("seg_00009.part1.m4s"));
        shown.reports = &reports;
        let text = render(&shown);
        let expected = "#EXTM3U\n\
            #EXT-X-VERSION:6\n\
            #EXT-X-TARGETDURATION:2\n\
            #EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,HOLD-BACK=6.000,PART-HOLD-BACK=3.000\n\
            #EXT-X-PART-INF:PART-TARGET=1.000\n\
            #EXT-X-MEDIA-SEQUENCE:7\n\
            #EXT-X-INDEPENDENT-SEGMENTS\n\
            #EXT-X-MAP:URI=\"init.mp4\"\n\
            #EXT-X-PART:DURATION=1.000,URI=\"seg_00007.part0.m4s\",INDEPENDENT=YES\n\
            #EXT-X-PART:DURATION=1.000,URI=\"seg_00007.part1.m4s\",INDEPENDENT=YES\n\
            #EXTINF:2.000,\n\
            seg_00007.m4s\n\
            #EXT-X-PART:DURATION=1.000,URI=\"seg_00008.part0.m4s\",INDEPENDENT=YES\n\
            #EXT-X-PART:DURATION=1.000,URI=\"seg_00008.part1.m4s\",INDEPENDENT=YES\n\
            #EXTINF:2.000,\n\
            seg_00008.m4s\n\
            #EXT-X-PART:DURATION=1.000,URI=\"seg_00009.part0.m4s\",INDEPENDENT=YES\n\
            #EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"seg_00009.part1.m4s\"\n\
            #EXT-X-RENDITION-REPORT:URI=\"../360p/index.m3u8\",LAST-MSN=9,LAST-PART=0\n\
            #EXT-X-RENDITION-REPORT:URI=\"../audio/index.m3u8\",LAST-MSN=8,LAST-PART=1\n";
        assert_eq!(text, expected);
    }

    /// §6.2.2: part tags further than three target durations from the end go, whole segments at a
    /// time and oldest first; the segments themselves stay.
    #[test]
    fn old_parts_leave_the_playlist_before_their_segments() {
        let segments: Vec<Segment> = (0..5).map(|s| segment(s, 2)).collect();
        // 2 s target: parts of segments starting within 6 s of the end. With one part in progress
        // the last two segments start 3 s and 5 s from the end; the third 7 s.
        let in_progress = [part(5, 0)];
        let text = render(&playlist(&segments, &in_progress, Some("seg_00005.part1.m4s")));
        for gone in ["seg_00000.part", "seg_00001.part", "seg_00002.part"] {
            assert!(!text.contains(gone), "{gone} still listed:\n{text}");
        }
        for kept in ["seg_00003.part1.m4s", "seg_00004.part0.m4s", "seg_00005.part0.m4s"] {
            assert!(text.contains(kept), "{kept} missing:\n{text}");
        }
        assert_eq!(text.lines().filter(|l| l.starts_with("#EXTINF")).count(), 5);
        // Right after a segment closes, nothing is in progress: three whole segments keep theirs.
        let text = render(&playlist(&segments, &[], Some("seg_00005.part0.m4s")));
        assert!(text.contains("seg_00002.part0.m4s") && !text.contains("seg_00001.part"), "{text}");
        // The media sequence starts at the first segment listed, or at the one being made.
        assert!(text.contains("#EXT-X-MEDIA-SEQUENCE:0\n"));
        let mut first = playlist(&[], &in_progress, None);
        first.next_sequence = 5;
        assert!(render(&first).contains("#EXT-X-MEDIA-SEQUENCE:5\n"));
    }

    /// A finished stream: ENDLIST, and neither a hint (§4.4.5.3: MUST NOT with ENDLIST) nor reports.
    #[test]
    fn an_ended_playlist_has_no_hint() {
        let segments = [segment(0, 2)];
        let reports = [RenditionReport { uri: "../a/index.m3u8".into(), last_msn: 0, last_part: 1 }];
        let mut ended = playlist(&segments, &[], Some("seg_00001.part0.m4s"));
        ended.reports = &reports;
        ended.ended = true;
        let text = render(&ended);
        assert!(text.ends_with("seg_00000.m4s\n#EXT-X-ENDLIST\n"), "{text}");
        assert!(!text.contains("PRELOAD-HINT") && !text.contains("RENDITION-REPORT"), "{text}");
    }

    /// §4.4.4.9: a parent segment's EXT-X-PROGRAM-DATE-TIME comes before its first part.
    #[test]
    fn program_date_time_precedes_each_segments_first_part() {
        let start = UNIX_EPOCH + Duration::from_millis(1_709_211_909_042);
        let mut segments = [segment(3, 2)];
        segments[0].program_date_time = Some(start);
        let in_progress = [part(4, 0)];
        let mut shown = playlist(&segments, &in_progress, None);
        shown.in_progress_start = Some(start + Duration::from_secs(2));
        let text = render(&shown);
        let lines: Vec<&str> = text.lines().collect();
        let at = |needle: &str| lines.iter().position(|l| l.contains(needle)).unwrap();
        assert_eq!(lines[at("seg_00003.part0") - 1], "#EXT-X-PROGRAM-DATE-TIME:2024-02-29T13:05:09.042Z");
        assert_eq!(lines[at("seg_00004.part0") - 1], "#EXT-X-PROGRAM-DATE-TIME:2024-02-29T13:05:11.042Z");
    }

    #[test]
    fn dates_are_iso_8601_in_utc() {
        let at = |ms: u64| format_date_time(UNIX_EPOCH + Duration::from_millis(ms));
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(at(1_704_067_199_999), "2023-12-31T23:59:59.999Z");
        assert_eq!(at(4_107_542_400_000), "2100-03-01T00:00:00.000Z");
        assert_eq!(format_date_time(UNIX_EPOCH - Duration::from_secs(5)), "1970-01-01T00:00:00.000Z");
    }
}
