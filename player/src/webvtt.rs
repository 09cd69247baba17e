//! WebVTT subtitle segments (W3C WebVTT, <https://www.w3.org/TR/webvtt1/>) as HLS serves them in a
//! `TYPE=SUBTITLES` rendition (RFC 8216 §3.5): the cues' times and their text as plain text, and the
//! `X-TIMESTAMP-MAP` header that places the cue times on the video's timeline.
//!
//! Pure and bounded: a file over [`MAX_FILE_BYTES`] is refused, arithmetic saturates, and anything
//! that is not WebVTT is an error naming its line. The spec's parser (§6) drops what it cannot read
//! without a word; here a cue that cannot be read is an error, so that a broken subtitle rendition
//! is reported rather than silently missing lines. Cue settings (position, alignment) and `STYLE`,
//! `REGION` and `NOTE` blocks are read past: the player draws plain text at the bottom.

use thiserror::Error;

/// The largest WebVTT file read. A subtitle segment covers a few seconds (RFC 8216 §3.5: each holds
/// the cues shown during its EXTINF duration), a few kilobytes of text.
pub const MAX_FILE_BYTES: usize = 1 << 20;

/// MPEG-2 PES timestamps count a 90 kHz clock (ISO/IEC 13818-1 §2.4.3.7), in 33 bits.
pub const MPEG_CLOCK_HZ: u64 = 90_000;
const PTS_MODULUS: u64 = 1 << 33;

#[derive(Debug, Clone, PartialEq, Error)]
pub enum WebVttError {
    #[error("WebVTT file of {size} bytes, more than the {max} a subtitle segment may have")]
    TooLarge { size: usize, max: usize },
    #[error("WebVTT line {line}: {reason}")]
    Line { line: usize, reason: String },
}

/// One cue: when it shows and what it says, in the file's own cue time (seconds).
#[derive(Debug, Clone, PartialEq)]
pub struct Cue {
    pub start_s: f64,
    pub end_s: f64,
    /// The cue text with its tags removed and character references decoded; lines joined by `\n`.
    pub text: String,
}

/// `X-TIMESTAMP-MAP=MPEGTS:<90 kHz ticks>,LOCAL:<cue time>` (RFC 8216 §3.5): the cue time `local_s`
/// is the instant the other renditions' media timestamps call `mpegts`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimestampMap {
    pub mpegts: u64,
    pub local_s: f64,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct WebVtt {
    pub timestamp_map: Option<TimestampMap>,
    /// In file order.
    pub cues: Vec<Cue>,
}

/// Where the video's timestamps sit: the presentation timestamp of a video segment (90 kHz, as
/// [`crate::timestamps::first_pts`] reads it; the first pushed of its discontinuity domain) and that
/// segment's media time in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VideoStart {
    pub pts: u64,
    pub media_s: f64,
}

impl WebVtt {
    /// What to add to this file's cue times to get media time (seconds from the start of the stream,
    /// the playlist's timeline).
    ///
    /// With an `X-TIMESTAMP-MAP`, a cue at `LOCAL` is at PES time `MPEGTS`, and the video's first
    /// played frame at `video.pts` is at `video.media_s`. The difference is taken modulo 2^33, since
    /// "clients SHOULD account for cases where the 33-bit PES timestamps have wrapped and the WebVTT
    /// cue times have not" (RFC 8216 §3.5). Without the video's timestamp the map is taken to name
    /// the video's start, as segmenters write it (`MPEGTS` the first frame's PTS, `LOCAL` zero).
    ///
    /// Without a map, RFC 8216 §3.5 has cue time 0 at PES time 0. Segmenters that leave the header out
    /// (ffmpeg's hls muxer) write cue times on the playlist's timeline instead, even when their
    /// MPEG-TS video starts at 1.4 s, so cue times are taken as media times, as hls.js and Shaka do.
    pub fn media_offset_s(&self, video: Option<VideoStart>) -> f64 {
        let Some(map) = self.timestamp_map else { return 0.0 };
        match video {
            Some(video) => video.media_s + pts_difference_s(map.mpegts, video.pts) - map.local_s,
            None => -map.local_s,
        }
    }
}

/// `a - b` in seconds for 33-bit PES timestamps, the shorter way round the wrap.
fn pts_difference_s(a: u64, b: u64) -> f64 {
    let forward = a.wrapping_sub(b) & (PTS_MODULUS - 1);
    let ticks = if forward >= PTS_MODULUS / 2 { forward as f64 - PTS_MODULUS as f64 } else { forward as f64 };
    ticks / MPEG_CLOCK_HZ as f64
}

/// Reads a WebVTT file.
pub fn parse(bytes: &[u8]) -> Result<WebVtt, WebVttError> {
    if bytes.len() > MAX_FILE_BYTES {
        return Err(WebVttError::TooLarge { size: bytes.len(), max: MAX_FILE_BYTES });
    }
    // §6.1: the file is UTF-8, decoded with replacement characters; CRLF, CR and LF all end a line;
    // NUL becomes U+FFFD.
    let text = String::from_utf8_lossy(bytes);
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let text = text.replace("\r\n", "\n").replace(['\r'], "\n").replace('\0', "\u{fffd}");
    let lines: Vec<&str> = text.split('\n').collect();
    let error = |index: usize, reason: &str| WebVttError::Line { line: index + 1, reason: reason.to_string() };

    // §4.1: "WEBVTT", then the end of the line, a space or a tab (and anything after it).
    let first = lines.first().copied().unwrap_or_default();
    let header_ok = first.strip_prefix("WEBVTT").is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']));
    if !header_ok {
        return Err(error(0, "the file does not start with WEBVTT"));
    }
    let mut file = WebVtt::default();
    // The header runs to the first blank line. RFC 8216 §3.5 puts X-TIMESTAMP-MAP there.
    let mut index = 1;
    while let Some(line) = lines.get(index).filter(|l| !l.is_empty()) {
        if let Some(value) = line.strip_prefix("X-TIMESTAMP-MAP=") {
            let map = parse_timestamp_map(value).map_err(|reason| error(index, &reason))?;
            file.timestamp_map = Some(map);
        }
        index += 1;
    }
    // Blocks, separated by blank lines (§4.1).
    while index < lines.len() {
        let line = lines[index];
        if line.is_empty() {
            index += 1;
            continue;
        }
        if ["NOTE", "STYLE", "REGION"].iter().any(|keyword| is_keyword_line(line, keyword)) {
            while lines.get(index).is_some_and(|l| !l.is_empty()) {
                index += 1;
            }
            continue;
        }
        // A cue: an optional identifier line, then the timing line (§4.3).
        let timing = if line.contains("-->") {
            index
        } else if lines.get(index + 1).is_some_and(|next| next.contains("-->")) {
            index + 1
        } else {
            return Err(error(index, "a block that is not a cue (no \"-->\" timing line), a NOTE, STYLE or REGION"));
        };
        let (start_s, end_s) = parse_timing(lines[timing]).map_err(|reason| error(timing, &reason))?;
        if end_s < start_s {
            return Err(error(timing, "the cue ends before it starts"));
        }
        // The text runs to a blank line; a line with "-->" starts the next cue (§6.1's cue text
        // loop stops there too).
        index = timing + 1;
        let mut payload = Vec::new();
        while let Some(line) = lines.get(index).filter(|l| !l.is_empty() && !l.contains("-->")) {
            payload.push(*line);
            index += 1;
        }
        // §6.1: a cue whose end is not after its start is dropped; it would never show.
        if end_s > start_s {
            file.cues.push(Cue { start_s, end_s, text: plain_text(&payload.join("\n")) });
        }
    }
    Ok(file)
}

/// Whether `line` is `keyword` alone or followed by a space or tab (§4.1's NOTE, STYLE and REGION).
fn is_keyword_line(line: &str, keyword: &str) -> bool {
    line.strip_prefix(keyword).is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
}

/// `MPEGTS:<ticks>,LOCAL:<timestamp>`, in either order (RFC 8216 §3.5).
fn parse_timestamp_map(value: &str) -> Result<TimestampMap, String> {
    let (mut mpegts, mut local_s) = (None, None);
    for field in value.split(',') {
        let (key, value) = field.split_once(':').ok_or_else(|| format!("X-TIMESTAMP-MAP field {field:?}"))?;
        match key.trim() {
            "MPEGTS" => {
                let value = value.trim();
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!("X-TIMESTAMP-MAP MPEGTS {value:?} is not a number of 90 kHz ticks"));
                }
                mpegts = Some(digits_value(value));
            }
            "LOCAL" => {
                let text = value.trim();
                let (seconds, rest) = parse_timestamp(text).ok_or_else(|| format!("X-TIMESTAMP-MAP LOCAL {text:?}"))?;
                if !rest.is_empty() {
                    return Err(format!("X-TIMESTAMP-MAP LOCAL {text:?}"));
                }
                local_s = Some(seconds);
            }
            // Later revisions may add fields; they do not change these two.
            _ => {}
        }
    }
    match (mpegts, local_s) {
        (Some(mpegts), Some(local_s)) => Ok(TimestampMap { mpegts, local_s }),
        _ => Err("X-TIMESTAMP-MAP needs both MPEGTS and LOCAL".into()),
    }
}

/// `start --> end [settings]` (§4.3: whitespace around the arrow, settings after whitespace).
fn parse_timing(line: &str) -> Result<(f64, f64), String> {
    let (start, rest) = line.split_once("-->").ok_or("no \"-->\"")?;
    let start = start.trim_matches([' ', '\t']);
    let (start_s, after) = parse_timestamp(start).ok_or_else(|| format!("bad cue start time {start:?}"))?;
    if !after.is_empty() {
        return Err(format!("bad cue start time {start:?}"));
    }
    let rest = rest.trim_start_matches([' ', '\t']);
    let (end_s, settings) = parse_timestamp(rest).ok_or_else(|| format!("bad cue end time in {rest:?}"))?;
    if !(settings.is_empty() || settings.starts_with([' ', '\t'])) {
        return Err(format!("bad cue end time in {rest:?}"));
    }
    Ok((start_s, end_s))
}

/// A WebVTT timestamp at the start of `text` (§6.2.1 "collect a WebVTT timestamp"):
/// `[hh…:]mm:ss.ttt`, hours two or more digits, minutes and seconds two digits up to 59, three digits
/// of milliseconds. Returns the seconds and what follows.
fn parse_timestamp(text: &str) -> Option<(f64, &str)> {
    let (first, rest) = take_digits(text);
    if first.is_empty() {
        return None;
    }
    // A first field not of exactly two digits, or over 59, can only be hours.
    let hours_first = first.len() != 2 || digits_value(first) > 59;
    let rest = rest.strip_prefix(':')?;
    let (second, rest) = take_digits(rest);
    if second.len() != 2 {
        return None;
    }
    let (hours, minutes, seconds, rest) = match rest.strip_prefix(':') {
        Some(rest) => {
            let (third, rest) = take_digits(rest);
            if third.len() != 2 {
                return None;
            }
            (digits_value(first), digits_value(second), digits_value(third), rest)
        }
        None if hours_first => return None,
        None => (0, digits_value(first), digits_value(second), rest),
    };
    let rest = rest.strip_prefix('.')?;
    let (fraction, rest) = take_digits(rest);
    if fraction.len() != 3 || minutes > 59 || seconds > 59 {
        return None;
    }
    let total_ms = hours
        .saturating_mul(3_600_000)
        .saturating_add(minutes * 60_000)
        .saturating_add(seconds * 1000)
        .saturating_add(digits_value(fraction));
    Some((total_ms as f64 / 1000.0, rest))
}

/// The leading ASCII digits of `text`, and the rest.
fn take_digits(text: &str) -> (&str, &str) {
    let end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    text.split_at(end)
}

/// The value of a string of ASCII digits, saturating.
fn digits_value(digits: &str) -> u64 {
    digits.bytes().fold(0u64, |value, b| value.saturating_mul(10).saturating_add(u64::from(b - b'0')))
}

/// Cue text as plain text (§6.4's cue text parsing, keeping only the text): tags (`<b>`, `<i>`,
/// `<u>`, `<c.class>`, `<v Speaker>`, `<lang en>`, `<ruby>`, `<rt>`, `<00:00:01.000>`) are removed,
/// character references (`&amp;`, `&lt;`, `&#233;` …) decoded.
pub fn plain_text(payload: &str) -> String {
    let mut out = String::with_capacity(payload.len());
    let mut rest = payload;
    while let Some(position) = rest.find(['<', '&']) {
        out.push_str(&rest[..position]);
        rest = &rest[position..];
        if rest.starts_with('<') {
            // A tag runs to its '>'; an unclosed one to the end of the text (§6.4's tag state).
            rest = rest.find('>').map_or("", |end| &rest[end + 1..]);
            continue;
        }
        match character_reference(rest) {
            Some((decoded, length)) => {
                out.push(decoded);
                rest = &rest[length..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The character reference at the start of `text` (which starts with '&') and its length: the names
/// WebVTT's own examples use and numeric references. Others stay as written.
fn character_reference(text: &str) -> Option<(char, usize)> {
    // The longest name here is 6 bytes, a numeric reference at most 10 digits: look no further,
    // so that text full of '&' stays linear.
    let end = text.bytes().take(16).position(|b| b == b';')?;
    let name = &text[1..end];
    let decoded = match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "nbsp" => '\u{a0}',
        "lrm" => '\u{200e}',
        "rlm" => '\u{200f}',
        _ => {
            let number = name.strip_prefix('#')?;
            let value = match number.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => number.parse::<u32>().ok()?,
            };
            char::from_u32(value).filter(|&c| c != '\0')?
        }
    };
    Some((decoded, end + 1))
}

/// The cue to show at media time `position_s`: of the cues showing then (start ≤ position < end), the
/// one that started last. `cues` are in media time.
pub fn active_cue(cues: &[Cue], position_s: f64) -> Option<&str> {
    cues.iter()
        .filter(|cue| cue.start_s <= position_s && position_s < cue.end_s)
        .max_by(|a, b| a.start_s.total_cmp(&b.start_s))
        .map(|cue| cue.text.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cues(text: &str) -> Vec<(f64, f64, String)> {
        let file = parse(text.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        file.cues.into_iter().map(|c| (c.start_s, c.end_s, c.text)).collect()
    }

    fn error(text: &str) -> String {
        parse(text.as_bytes()).err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn cues_are_read_with_and_without_hours_and_identifiers() {
        let text = "WEBVTT - a title\n\n1\n00:00.500 --> 00:01.500\nHello\n\nintro\n01:02:03.004 --> 01:02:04.000 align:start line:0\nTwo\nlines\n";
        assert_eq!(cues(text), [(0.5, 1.5, "Hello".to_string()), (3723.004, 3724.0, "Two\nlines".to_string())]);
    }

    #[test]
    fn crlf_cr_a_bom_and_a_missing_final_newline_are_fine() {
        let text = "\u{feff}WEBVTT\r\n\r\n00:01.000 --> 00:02.000\r\nA\rB\r\n\r\n00:03.000 --> 00:04.000\nC";
        assert_eq!(cues(text), [(1.0, 2.0, "A\nB".to_string()), (3.0, 4.0, "C".to_string())]);
    }

    #[test]
    fn note_style_and_region_blocks_are_skipped() {
        let text = "WEBVTT\n\nSTYLE\n::cue { color: red }\n\nREGION\nid:fred width:40%\n\nNOTE a comment\nover two lines\n\nNOTE\n\n00:00.000 --> 00:01.000\nkept\n\nNOTES are not a keyword\n00:01.000 --> 00:02.000\nan identifier\n";
        assert_eq!(cues(text), [(0.0, 1.0, "kept".to_string()), (1.0, 2.0, "an identifier".to_string())]);
    }

    #[test]
    fn tags_are_stripped_and_references_decoded() {
        let text = "WEBVTT\n\n00:00.000 --> 00:01.000\n<v Roger Bingham><b>Bold</b> and <i>it</i>, <c.yellow.bg_blue>class</c> <00:00:00.500>&amp; &lt;3 &#233;&#x41; &bogus; a&b\n";
        assert_eq!(cues(text)[0].2, "Bold and it, class & <3 éA &bogus; a&b");
        assert_eq!(plain_text("unclosed <b"), "unclosed ");
        assert_eq!(plain_text("&#0; &#xFFFFFFFF; &"), "&#0; &#xFFFFFFFF; &");
    }

    #[test]
    fn the_timestamp_map_is_read_in_either_order() {
        let file = parse(b"WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:900000,LOCAL:00:00:00.000\n\n00:01.000 --> 00:02.000\nx\n");
        assert_eq!(file.map(|f| f.timestamp_map), Ok(Some(TimestampMap { mpegts: 900_000, local_s: 0.0 })));
        let file = parse(b"WEBVTT\nX-TIMESTAMP-MAP=LOCAL:00:00:10.000, MPEGTS:181083\n");
        assert_eq!(file.map(|f| f.timestamp_map), Ok(Some(TimestampMap { mpegts: 181_083, local_s: 10.0 })));
        assert_eq!(
            error("WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:9x\n"),
            "WebVTT line 2: X-TIMESTAMP-MAP MPEGTS \"9x\" is not a number of 90 kHz ticks"
        );
        assert!(error("WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:9\n").contains("needs both MPEGTS and LOCAL"));
    }

    #[test]
    fn the_map_puts_cues_on_the_video_timeline() {
        let mapped = |mpegts, local_s| WebVtt { timestamp_map: Some(TimestampMap { mpegts, local_s }), cues: vec![] };
        // Apple's segmenter: MPEGTS is the video's first PTS (10 s), LOCAL zero.
        let video = VideoStart { pts: 900_000, media_s: 0.0 };
        assert_eq!(mapped(900_000, 0.0).media_offset_s(Some(video)), 0.0);
        // Segment-relative cue times: each file's map names its own start.
        assert_eq!(mapped(900_000 + 4 * 90_000, 0.0).media_offset_s(Some(video)), 4.0);
        // Playback started 6 s in (--start-at): that segment's PTS is media time 6.
        let later = VideoStart { pts: 900_000 + 6 * 90_000, media_s: 6.0 };
        assert_eq!(mapped(900_000, 0.0).media_offset_s(Some(later)), 0.0);
        // LOCAL is subtracted.
        assert_eq!(mapped(900_000, 3.0).media_offset_s(Some(video)), -3.0);
        // The video's PTS wrapped past 2^33 and the map's did not.
        let wrapped = VideoStart { pts: 90_000, media_s: 0.0 };
        assert!((mapped(PTS_MODULUS - 90_000, 0.0).media_offset_s(Some(wrapped)) + 2.0).abs() < 1e-9);
        // No map: cue times are media times; no video timestamp: the map names the video's start.
        assert_eq!(WebVtt::default().media_offset_s(Some(video)), 0.0);
        assert_eq!(mapped(123, 2.0).media_offset_s(None), -2.0);
    }

    #[test]
    fn bad_input_is_an_error_naming_the_line() {
        assert_eq!(error(""), "WebVTT line 1: the file does not start with WEBVTT");
        assert_eq!(error("WEBVTTX\n"), "WebVTT line 1: the file does not start with WEBVTT");
        assert_eq!(error("1\n00:00.000 --> 00:01.000\n"), "WebVTT line 1: the file does not start with WEBVTT");
        assert_eq!(error("WEBVTT\n\n00:00.000 --> 00:1.000\nx\n"), "WebVTT line 3: bad cue end time in \"00:1.000\"");
        assert_eq!(
            error("WEBVTT\n\nid\n0:00.000 --> 00:01.000\nx\n"),
            "WebVTT line 4: bad cue start time \"0:00.000\""
        );
        assert_eq!(error("WEBVTT\n\n00:60.000 --> 00:61.000\n"), "WebVTT line 3: bad cue start time \"00:60.000\"");
        assert_eq!(error("WEBVTT\n\n00:02.000 --> 00:01.000\n"), "WebVTT line 3: the cue ends before it starts");
        assert_eq!(error("WEBVTT\n\n00:00.000 --> 00:01.000x\n"), "WebVTT line 3: bad cue end time in \"00:01.000x\"");
        assert!(error("WEBVTT\n\njust text\nmore\n").starts_with("WebVTT line 3: a block that is not a cue"));
        let large = vec![b' '; MAX_FILE_BYTES + 1];
        assert_eq!(parse(&large), Err(WebVttError::TooLarge { size: MAX_FILE_BYTES + 1, max: MAX_FILE_BYTES }));
    }

    #[test]
    fn timestamps_follow_the_spec_and_saturate() {
        assert_eq!(parse_timestamp("00:00.000"), Some((0.0, "")));
        assert_eq!(parse_timestamp("59:59.999 x"), Some((3599.999, " x")));
        assert_eq!(parse_timestamp("100:00:00.000"), Some((360_000.0, "")));
        // A first field over 59 or not of two digits must be hours.
        assert_eq!(parse_timestamp("60:00.000"), None);
        assert_eq!(parse_timestamp("1:00.000"), None);
        assert_eq!(parse_timestamp("00:00:00.00"), None);
        assert_eq!(parse_timestamp("00:00,000"), None);
        let (huge, _) = parse_timestamp("99999999999999999999999:00:00.000").unwrap_or_default();
        assert_eq!(huge, u64::MAX as f64 / 1000.0);
        // Zero-length cues never show: dropped, not an error.
        assert!(cues("WEBVTT\n\n00:01.000 --> 00:01.000\nx\n").is_empty());
    }

    #[test]
    fn a_timing_line_without_a_blank_line_starts_the_next_cue() {
        let text = "WEBVTT\n\n00:00.000 --> 00:01.000\none\n00:01.000 --> 00:02.000\ntwo\n";
        assert_eq!(cues(text), [(0.0, 1.0, "one".to_string()), (1.0, 2.0, "two".to_string())]);
    }

    #[test]
    fn the_cue_showing_is_the_latest_started() {
        let cue = |start_s, end_s, text: &str| Cue { start_s, end_s, text: text.into() };
        let list = [cue(1.0, 3.0, "a"), cue(2.0, 2.5, "b"), cue(4.0, 5.0, "c")];
        assert_eq!(active_cue(&list, 0.9), None);
        assert_eq!(active_cue(&list, 1.0), Some("a"));
        assert_eq!(active_cue(&list, 2.2), Some("b"));
        assert_eq!(active_cue(&list, 2.5), Some("a"), "the end is exclusive");
        assert_eq!(active_cue(&list, 3.5), None);
        assert_eq!(active_cue(&list, f64::NAN), None);
    }

    proptest! {
        #[test]
        fn any_bytes_are_read_or_refused_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&bytes);
            let mut prefixed = b"WEBVTT\n\n".to_vec();
            prefixed.extend_from_slice(&bytes);
            let _ = parse(&prefixed);
        }

        #[test]
        fn cue_like_text_never_panics(text in "(WEBVTT\n|X-TIMESTAMP-MAP=|MPEGTS:|LOCAL:|[0-9]{1,3}|[:.,> <&#;x-]|-->|\n|NOTE|[a-z])*") {
            let _ = parse(text.as_bytes());
            let _ = parse(format!("WEBVTT\n{text}").as_bytes());
            let _ = plain_text(&text);
        }

        #[test]
        fn written_cues_read_back(start_ms in 0u64..360_000_000, length_ms in 1u64..100_000, words in "[a-z ]{1,30}") {
            let stamp = |ms: u64| format!("{:02}:{:02}:{:02}.{:03}", ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
            let text = format!("WEBVTT\n\n{} --> {}\n{words}\n", stamp(start_ms), stamp(start_ms + length_ms));
            let file = parse(text.as_bytes()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(file.cues.len(), 1);
            prop_assert!((file.cues[0].start_s - start_ms as f64 / 1000.0).abs() < 1e-6);
            prop_assert!((file.cues[0].end_s - (start_ms + length_ms) as f64 / 1000.0).abs() < 1e-6);
            prop_assert_eq!(&file.cues[0].text, &words);
        }
    }
}
