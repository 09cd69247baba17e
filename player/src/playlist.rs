//! HLS playlists as the player uses them: parsed with m3u8-rs, relative URIs resolved, keys and init
//! sections carried forward to every segment they apply to, byte ranges made absolute.
//!
//! Playlists come from the network, so everything the session later computes with is checked here:
//! durations are finite and at most a day, sequence numbers and byte ranges fit in u64 (with room for
//! the next one), and URIs resolve to something the fetcher fetches. Where m3u8-rs would silently skip
//! a tag it cannot read (and so change what the playlist means), the playlist is refused instead,
//! with an error naming the line or tag.

use m3u8_rs::{KeyMethod, Playlist};
use thiserror::Error;
use url::Url;

#[derive(Debug, Error)]
pub enum PlaylistError {
    #[error("{url}: not an HLS playlist ({reason})")]
    Malformed { url: String, reason: String },
    #[error("{url}: bad URI '{uri}': {reason}")]
    BadUri { url: String, uri: String, reason: String },
    #[error("{url}: {reason}")]
    Unsupported { url: String, reason: String },
    #[error("{url}: invalid playlist: {reason}")]
    Invalid { url: String, reason: String },
}

/// The longest segment or target duration accepted, in seconds. RFC 8216 sets no limit, but no media
/// segment lasts a day, and the bound keeps every sum and `Duration` the session derives finite.
pub const MAX_DURATION_S: f64 = 86_400.0;

/// One variant of a master playlist, in the master's order (`index`).
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub index: usize,
    pub uri: Url,
    pub bandwidth_bps: u64,
    pub average_bandwidth_bps: Option<u64>,
    pub resolution: Option<(u64, u64)>,
    /// `CODECS`: every format in the variant and the renditions played with it (RFC 8216 §4.3.4.2).
    pub codecs: Option<String>,
    /// `AUDIO`: the group of `EXT-X-MEDIA:TYPE=AUDIO` renditions played with this variant.
    pub audio_group: Option<String>,
    /// `SUBTITLES`: the group of `EXT-X-MEDIA:TYPE=SUBTITLES` renditions.
    pub subtitles_group: Option<String>,
}

impl Variant {
    /// A media playlist played on its own (no master, or a rendition's), as a one-rung ladder.
    pub fn media_playlist(uri: Url) -> Self {
        Variant {
            index: 0,
            uri,
            bandwidth_bps: 0,
            average_bandwidth_bps: None,
            resolution: None,
            codecs: None,
            audio_group: None,
            subtitles_group: None,
        }
    }
}

/// What an `EXT-X-MEDIA` rendition carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    Audio,
    Video,
    Subtitles,
    ClosedCaptions,
}

impl MediaKind {
    pub fn name(self) -> &'static str {
        match self {
            MediaKind::Audio => "audio",
            MediaKind::Video => "video",
            MediaKind::Subtitles => "subtitles",
            MediaKind::ClosedCaptions => "closed captions",
        }
    }
}

/// An alternative rendition (`EXT-X-MEDIA`, RFC 8216 §4.3.4.1).
#[derive(Debug, Clone, PartialEq)]
pub struct Rendition {
    pub kind: MediaKind,
    pub group_id: String,
    pub name: String,
    /// RFC 5646 language tag.
    pub language: Option<String>,
    pub default: bool,
    pub autoselect: bool,
    /// `None`: the rendition is carried in the variant's own stream (§4.3.4.1: "If the URI attribute
    /// is missing, the Rendition is included in the Media Playlist of any EXT-X-STREAM-INF tag
    /// referencing this EXT-X-MEDIA tag").
    pub uri: Option<Url>,
    pub channels: Option<String>,
}

/// A master playlist: its variants (I-frame-only ones left out) and alternative renditions.
#[derive(Debug, Clone, PartialEq)]
pub struct Master {
    pub variants: Vec<Variant>,
    pub renditions: Vec<Rendition>,
}

/// An AES-128 key reference with the IV for one segment.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentKey {
    pub uri: Url,
    pub iv: [u8; 16],
}

/// A byte range (absolute offset and length).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    pub offset: u64,
    pub length: u64,
}

/// An EXT-X-MAP initialisation section.
#[derive(Debug, Clone, PartialEq)]
pub struct InitSection {
    pub uri: Url,
    pub range: Option<Range>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// Media sequence number: how segments of different renditions line up.
    pub sequence: u64,
    pub uri: Url,
    pub duration_s: f64,
    pub range: Option<Range>,
    pub key: Option<SegmentKey>,
    pub init: Option<InitSection>,
    pub discontinuity: bool,
    /// The discontinuity sequence number (`EXT-X-DISCONTINUITY-SEQUENCE` plus the discontinuities
    /// before it in the playlist, RFC 8216 §4.3.3.3): the same in every rendition for the same media,
    /// so it says which of the video's timestamp domains a subtitle segment's `X-TIMESTAMP-MAP` is in.
    pub discontinuity_sequence: u64,
    /// `EXT-X-GAP` (draft-pantos-hls-rfc8216bis §4.4.4.7): the segment is missing; it is not fetched.
    pub gap: bool,
    /// When the segment's first sample was captured (`EXT-X-PROGRAM-DATE-TIME`, RFC 8216 §4.3.2.6),
    /// tagged or worked out from the last tag and the durations since (until a discontinuity).
    pub program_date_time: Option<chrono::DateTime<chrono::FixedOffset>>,
    /// The segment's partial segments (`EXT-X-PART` before its EXTINF, draft-pantos-hls-rfc8216bis
    /// §4.4.4.9), in order; empty when the server lists none (or no longer does).
    pub parts: Vec<Part>,
}

/// A partial segment (`EXT-X-PART`, draft-pantos-hls-rfc8216bis §4.4.4.9): for fMP4, a CMAF chunk
/// (moof + mdat) that plays after the segment's init section like the whole segment does.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub uri: Url,
    pub duration_s: f64,
    /// `INDEPENDENT=YES`: the part starts with an independent frame, so playback can join there.
    pub independent: bool,
    pub range: Option<Range>,
}

/// `EXT-X-SERVER-CONTROL` (draft-pantos-hls-rfc8216bis §4.4.3.8); everything off when absent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerControl {
    /// `CAN-BLOCK-RELOAD=YES`: the server holds `_HLS_msn`/`_HLS_part` reloads (§6.2.5.2).
    pub can_block_reload: bool,
    /// `HOLD-BACK`: how far from the end a client should start (segments).
    pub hold_back_s: Option<f64>,
    /// `PART-HOLD-BACK`: the same when playing parts.
    pub part_hold_back_s: Option<f64>,
}

/// `EXT-X-RENDITION-REPORT` (draft-pantos-hls-rfc8216bis §4.4.5.4): where another rendition's
/// playlist ends, so a switch can ask it for the right blocking reload at once.
#[derive(Debug, Clone, PartialEq)]
pub struct RenditionReport {
    pub uri: Url,
    pub last_msn: Option<u64>,
    pub last_part: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MediaPlaylist {
    pub target_duration_s: f64,
    pub segments: Vec<Segment>,
    /// EXT-X-ENDLIST seen: nothing more will be added (VOD, or a live stream that ended).
    pub ended: bool,
    /// `EXT-X-MEDIA-SEQUENCE`: the first segment's number (also when no segment is listed yet).
    pub media_sequence: u64,
    /// `EXT-X-PART-INF:PART-TARGET` (§4.4.3.7): the playlist is low-latency.
    pub part_target_s: Option<f64>,
    pub server_control: ServerControl,
    /// The parts listed after the last EXTINF: those of the segment being made (its sequence number
    /// is the last segment's plus one).
    pub trailing_parts: Vec<Part>,
    /// When the segment being made began (its `EXT-X-PROGRAM-DATE-TIME`, or the last segment's date
    /// plus its duration).
    pub trailing_date_time: Option<chrono::DateTime<chrono::FixedOffset>>,
    /// The init section (`EXT-X-MAP`) in force for the trailing parts: m3u8-rs gives it to segments
    /// only, and a live playlist's first parts come before any segment.
    pub trailing_init: Option<InitSection>,
    /// `EXT-X-PRELOAD-HINT:TYPE=PART` (§4.4.5.3): the part that comes next. Kept for information
    /// only: it is never fetched before it is listed (a 404 for it would be cached by the edge).
    pub preload_hint: Option<Url>,
    pub rendition_reports: Vec<RenditionReport>,
}

/// A part's place: segment `msn`, part `part` (from 0) in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PartPosition {
    pub msn: u64,
    pub part: u64,
}

/// A known point on a live stream's timeline: segment `sequence` starts at `media_s` on the player's
/// position axis (seconds of media since it joined, moved by seeks). A live playlist's window slides,
/// so times are counted from such a point rather than from the playlist's first segment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimelineAnchor {
    pub sequence: u64,
    pub media_s: f64,
}

impl MediaPlaylist {
    /// Where each listed segment starts on `anchor`'s axis, oldest first, and where the last one ends.
    /// `None` when the anchor's segment is neither listed nor the one after the last (the window slid
    /// past it).
    fn starts_on(&self, anchor: TimelineAnchor) -> Option<(Vec<(u64, f64)>, f64)> {
        let first = self.segments.first()?.sequence;
        let index = usize::try_from(anchor.sequence.checked_sub(first)?).ok()?;
        if index > self.segments.len() || !anchor.media_s.is_finite() {
            return None;
        }
        let before: f64 = self.segments[..index].iter().map(|s| s.duration_s).sum();
        let mut start = anchor.media_s - before;
        let mut starts = Vec::with_capacity(self.segments.len());
        for segment in &self.segments {
            starts.push((segment.sequence, start));
            start += segment.duration_s;
        }
        Some((starts, start))
    }

    /// How far from the end of the playlist a client plays: PART-HOLD-BACK when it plays parts (or
    /// three part targets, §4.4.3.8), HOLD-BACK otherwise (or three target durations, RFC 8216 §6.3.3).
    pub fn hold_back_s(&self) -> f64 {
        let (stated, fallback) = match self.part_target_s {
            Some(part_target) => (self.server_control.part_hold_back_s, 3.0 * part_target),
            None => (self.server_control.hold_back_s, 3.0 * self.target_duration_s),
        };
        stated.filter(|s| s.is_finite() && *s >= 0.0).unwrap_or(fallback)
    }

    /// The listed media on `anchor`'s axis: (start of the first segment, end of the last, or of the
    /// last part listed after it).
    pub fn span_on(&self, anchor: TimelineAnchor) -> Option<(f64, f64)> {
        let (starts, end) = self.starts_on(anchor)?;
        let trailing: f64 = self.trailing_parts.iter().map(|p| p.duration_s).sum();
        Some((starts.first()?.1, end + trailing))
    }

    /// The segment holding `media_s` on `anchor`'s axis, and where it starts: the first segment for a
    /// time before the window, the last for one after it.
    pub fn segment_on(&self, anchor: TimelineAnchor, media_s: f64) -> Option<(u64, f64)> {
        let (starts, _) = self.starts_on(anchor)?;
        let first = *starts.first()?;
        Some(starts.iter().rev().find(|(_, start)| *start <= media_s).copied().unwrap_or(first))
    }

    pub fn segment(&self, sequence: u64) -> Option<&Segment> {
        let first = self.segments.first()?.sequence;
        let position = sequence.checked_sub(first)?;
        self.segments.get(usize::try_from(position).ok()?)
    }

    pub fn last_sequence(&self) -> Option<u64> {
        self.segments.last().map(|s| s.sequence)
    }

    /// Where a live stream starts: the segment from which at least 3 target durations remain.
    pub fn live_start_sequence(&self) -> Option<u64> {
        let mut remaining = 0.0;
        for segment in self.segments.iter().rev() {
            remaining += segment.duration_s;
            if remaining >= 3.0 * self.target_duration_s {
                return Some(segment.sequence);
            }
        }
        self.segments.first().map(|s| s.sequence)
    }

    /// The segment containing media time `seconds` from the start of the playlist.
    pub fn sequence_at(&self, seconds: f64) -> Option<u64> {
        let mut start = 0.0;
        for segment in &self.segments {
            if seconds < start + segment.duration_s {
                return Some(segment.sequence);
            }
            start += segment.duration_s;
        }
        None
    }

    /// The sequence number of the segment whose parts are `trailing_parts`.
    pub fn in_progress_sequence(&self) -> u64 {
        self.last_sequence().map_or(self.media_sequence, |last| last.saturating_add(1))
    }

    /// The parts listed for segment `msn`: a complete segment's, or the trailing ones.
    pub fn parts_of(&self, msn: u64) -> Option<&[Part]> {
        if !self.trailing_parts.is_empty() && msn == self.in_progress_sequence() {
            return Some(&self.trailing_parts);
        }
        self.segment(msn).filter(|s| !s.parts.is_empty()).map(|s| s.parts.as_slice())
    }

    /// The part at `at`, if listed.
    pub fn part(&self, at: PartPosition) -> Option<&Part> {
        self.parts_of(at.msn)?.get(usize::try_from(at.part).ok()?)
    }

    /// Where a low-latency live stream starts: the last INDEPENDENT part from which at least
    /// `delay_s` of listed parts remain (draft-pantos-hls-rfc8216bis §6.3.3: a client SHOULD NOT
    /// play closer to the end than PART-HOLD-BACK). `None` when the playlist lists no part.
    pub fn live_start_part(&self, delay_s: f64) -> Option<PartPosition> {
        let mut all: Vec<(PartPosition, &Part)> = Vec::new();
        for segment in &self.segments {
            for (k, part) in segment.parts.iter().enumerate() {
                all.push((PartPosition { msn: segment.sequence, part: k as u64 }, part));
            }
        }
        let msn = self.in_progress_sequence();
        for (k, part) in self.trailing_parts.iter().enumerate() {
            all.push((PartPosition { msn, part: k as u64 }, part));
        }
        let mut remaining = 0.0;
        let mut candidate = None;
        for (position, part) in all.iter().rev() {
            remaining += part.duration_s;
            if part.independent {
                candidate = Some(*position);
                if remaining >= delay_s {
                    break;
                }
            }
        }
        candidate
    }

    /// Whether the segments use fragmented MP4 (an init section).
    pub fn is_fmp4(&self) -> bool {
        // A low-latency playlist that just began may list parts only: its EXT-X-MAP is the trailing one.
        self.segments.iter().any(|s| s.init.is_some()) || self.trailing_init.is_some()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    Master(Master),
    /// Boxed: a media playlist is several times the size of a master's summary.
    Media(Box<MediaPlaylist>),
}

/// Resolves a playlist URI against the playlist's own URL (RFC 8216 §4.1: relative URIs are relative
/// to the playlist). The result is absolute and fetchable: http(s), or `file` only from a playlist that
/// is itself a local file, so that a remote playlist cannot make the player read local files.
///
/// A relative reference without a query of its own that stays on the playlist's host takes the
/// playlist's query. RFC 3986 §5.2.2 drops the base's query when the reference has a path, but a
/// signed playback URL (`master.m3u8?token=…`) authorises everything under its folder only when every
/// request carries the token: `v0/index.m3u8`, its segments and its key then carry it too. A URI to
/// another host never gets it (the token is for this one).
fn resolve(base: &Url, uri: &str) -> Result<Url, PlaylistError> {
    let bad = |reason: String| PlaylistError::BadUri { url: base.to_string(), uri: uri.to_string(), reason };
    let text = uri.trim();
    if text.is_empty() {
        // An empty reference would resolve to the playlist itself.
        return Err(bad("empty URI".into()));
    }
    let mut url = base.join(text).map_err(|e| bad(e.to_string()))?;
    if url.query().is_none() && !has_scheme(text) && same_origin(base, &url) {
        if let Some(query) = base.query() {
            url.set_query(Some(query));
        }
    }
    match url.scheme() {
        "http" | "https" if url.host().is_some() => Ok(url),
        "file" if base.scheme() == "file" => Ok(url),
        "file" => Err(bad("a remote playlist may not name a local file".into())),
        scheme => Err(bad(format!("scheme '{scheme}' cannot be fetched"))),
    }
}

/// Whether a URI reference starts with a scheme (RFC 3986 §3.1: `ALPHA *( ALPHA / DIGIT / "+" / "-" /
/// "." )` then `:`), making it absolute rather than a relative reference (§4.2).
fn has_scheme(reference: &str) -> bool {
    let Some((scheme, _)) = reference.split_once(':') else { return false };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// Same scheme, host and port (RFC 6454 §4's origin of a URI).
fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme() && a.host() == b.host() && a.port_or_known_default() == b.port_or_known_default()
}

/// Parses a playlist fetched from `base`.
pub fn parse(bytes: &[u8], base: &Url) -> Result<Parsed, PlaylistError> {
    let malformed = |reason: &str| PlaylistError::Malformed { url: base.to_string(), reason: reason.into() };
    let invalid = |reason: String| PlaylistError::Invalid { url: base.to_string(), reason };
    let bytes = bytes.trim_ascii_start();
    if !bytes.starts_with(b"#EXTM3U") {
        return Err(malformed("it does not start with #EXTM3U"));
    }
    check_tag_values(bytes).map_err(invalid)?;
    let (rest, playlist) = match m3u8_rs::parse_playlist(bytes) {
        Ok(parsed) => parsed,
        Err(e) => return Err(malformed(&format!("parse error: {e:?}").chars().take(200).collect::<String>())),
    };
    // m3u8-rs stops at the first line it cannot read (invalid UTF-8, a lone CR) and returns what it read
    // so far: the playlist would silently lose its end, EXT-X-ENDLIST included.
    if !rest.trim_ascii().is_empty() {
        let line = bytes[..bytes.len() - rest.len()].iter().filter(|&&b| b == b'\n').count() + 1;
        let text: String = String::from_utf8_lossy(rest.trim_ascii_start()).chars().take(60).collect();
        return Err(invalid(format!("unreadable from line {line}: {:?}", text.lines().next().unwrap_or(""))));
    }
    match playlist {
        Playlist::MasterPlaylist(master) => {
            // m3u8-rs keeps an EXT-X-STREAM-INF it cannot read (no BANDWIDTH, a bad RESOLUTION...) as an
            // unknown tag, and the URI line after it then replaces the previous variant's URI.
            if let Some(tag) = master.unknown_tags.iter().find(|t| t.tag == "X-STREAM-INF" || t.tag == "X-MEDIA") {
                return Err(invalid(format!("unreadable {}", tag_text(tag))));
            }
            let mut variants = Vec::new();
            for (index, variant) in master.variants.iter().enumerate() {
                if variant.is_i_frame {
                    continue;
                }
                let uri = resolve(base, &variant.uri)?;
                if uri == *base {
                    return Err(invalid(format!("variant {index} is this master playlist itself")));
                }
                variants.push(Variant {
                    index,
                    uri,
                    bandwidth_bps: variant.bandwidth,
                    average_bandwidth_bps: variant.average_bandwidth,
                    resolution: variant.resolution.map(|r| (r.width, r.height)),
                    codecs: variant.codecs.clone(),
                    audio_group: variant.audio.clone(),
                    subtitles_group: variant.subtitles.clone(),
                });
            }
            if variants.is_empty() {
                return Err(malformed("master playlist lists no variant"));
            }
            let renditions =
                master.alternatives.iter().map(|media| rendition(media, base)).collect::<Result<Vec<_>, _>>()?;
            for variant in &variants {
                let groups =
                    [(MediaKind::Audio, &variant.audio_group), (MediaKind::Subtitles, &variant.subtitles_group)];
                for (kind, group) in groups {
                    let Some(group) = group else { continue };
                    // RFC 8216 §4.3.4.2: the value must match the GROUP-ID of an EXT-X-MEDIA of that TYPE.
                    if !renditions.iter().any(|r| r.kind == kind && r.group_id == *group) {
                        return Err(invalid(format!(
                            "variant {} names {} group \"{group}\", which no EXT-X-MEDIA defines",
                            variant.index,
                            kind.name()
                        )));
                    }
                }
            }
            Ok(Parsed::Master(Master { variants, renditions }))
        }
        Playlist::MediaPlaylist(media) => {
            let mut playlist = media_playlist(media, base)?;
            // m3u8-rs read the whole text (checked above), so it is UTF-8.
            let text = std::str::from_utf8(bytes).map_err(|e| invalid(format!("not UTF-8: {e}")))?;
            low_latency_tags(text, base, &mut playlist)?;
            Ok(Parsed::Media(Box::new(playlist)))
        }
    }
}

/// An `EXT-X-MEDIA` tag, its URI resolved like a variant's.
fn rendition(media: &m3u8_rs::AlternativeMedia, base: &Url) -> Result<Rendition, PlaylistError> {
    use m3u8_rs::AlternativeMediaType as Type;
    let kind = match media.media_type {
        Type::Audio => MediaKind::Audio,
        Type::Video => MediaKind::Video,
        Type::Subtitles => MediaKind::Subtitles,
        Type::ClosedCaptions => MediaKind::ClosedCaptions,
        // m3u8-rs keeps any other TYPE; RFC 8216 §4.3.4.1 allows only the four above.
        Type::Other(_) => {
            return Err(PlaylistError::Invalid {
                url: base.to_string(),
                reason: format!("EXT-X-MEDIA \"{}\" has an unknown TYPE", media.name),
            })
        }
    };
    let uri = media.uri.as_deref().map(|uri| resolve(base, uri)).transpose()?;
    Ok(Rendition {
        kind,
        group_id: media.group_id.clone(),
        name: media.name.clone(),
        language: media.language.clone(),
        default: media.default,
        autoselect: media.autoselect,
        uri,
        channels: media.channels.clone(),
    })
}

/// `#EXT-name:value` of a tag m3u8-rs could not read, shortened for an error message.
fn tag_text(tag: &m3u8_rs::ExtTag) -> String {
    let text = format!("#EXT-{}:{}", tag.tag, tag.rest.as_deref().unwrap_or(""));
    text.chars().take(120).collect()
}

/// Checks the values of the tags the player relies on before m3u8-rs reads them. m3u8-rs reads a value
/// it cannot parse (`#EXTINF:-1,`, a byte range past u64) as a comment or an unknown tag and goes on,
/// so the segment would silently get a duration of 0, no byte range, or sequence numbers from 0. And
/// whatever it leaves unread of a tag line becomes a URI line of its own: `#EXT-X-TARGETDURATION:10abc`,
/// `#EXTINF:2,a,b` or an attribute list it stops reading half-way (`URI=""`) each add a segment, or
/// replace a variant's URI.
fn check_tag_values(bytes: &[u8]) -> Result<(), String> {
    // RFC 8216 §4.2: decimal-integer, 0 to 2^64-1, digits only.
    let integer = |s: &str| s.bytes().all(|b| b.is_ascii_digit()) && s.parse::<u64>().is_ok();
    // RFC 8216 §4.2 decimal-floating-point, as m3u8-rs reads it: digits, then an optional fraction.
    let float = |s: &str| {
        let (whole, fraction) = s.split_once('.').unwrap_or((s, "0"));
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        digits(whole) && digits(fraction)
    };
    for (number, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let Ok(line) = std::str::from_utf8(line.trim_ascii()) else { continue };
        let Some((tag, value)) = line.split_once(':') else { continue };
        // Trailing whitespace is read by m3u8-rs; leading whitespace is not.
        let value = value.trim_end();
        let valid = match tag {
            // RFC 8216 §4.3.2.1: #EXTINF:<duration>,[<title>]. m3u8-rs ends the title at a comma.
            "#EXTINF" => {
                // Nothing between the duration and the comma: in `1.5 ,title`, m3u8-rs reads " " as
                // the title and `title` as a URI line.
                let (seconds, title) = value.split_once(',').unwrap_or((value, ""));
                float(seconds) && !title.contains(',')
            }
            // RFC 8216 §4.3.3.1, §4.3.3.2, §4.3.3.3
            "#EXT-X-TARGETDURATION" | "#EXT-X-MEDIA-SEQUENCE" | "#EXT-X-DISCONTINUITY-SEQUENCE" => integer(value),
            // RFC 8216 §4.3.2.2: #EXT-X-BYTERANGE:<n>[@<o>]
            "#EXT-X-BYTERANGE" => value.split_once('@').map_or(integer(value), |(n, o)| integer(n) && integer(o)),
            // The tags m3u8-rs reads as attribute lists (RFC 8216 §4.2).
            "#EXT-X-STREAM-INF"
            | "#EXT-X-I-FRAME-STREAM-INF"
            | "#EXT-X-MEDIA"
            | "#EXT-X-SESSION-DATA"
            | "#EXT-X-SESSION-KEY"
            | "#EXT-X-START"
            | "#EXT-X-KEY"
            | "#EXT-X-MAP"
            | "#EXT-X-DATERANGE" => attribute_list(value),
            _ => true,
        };
        if !valid {
            let value: String = value.chars().take(60).collect();
            return Err(format!("line {}: {tag} has an unreadable value {value:?}", number + 1));
        }
    }
    Ok(())
}

/// Whether m3u8-rs reads all of an attribute list (RFC 8216 §4.2): `NAME=value` pairs separated by
/// commas, each name of `[A-Z0-9-]`, each value a non-empty quoted string or a non-empty run without
/// a comma (m3u8-rs reads neither `""` nor an empty value). A trailing comma is read too.
fn attribute_list(list: &str) -> bool {
    let mut rest = list;
    while !rest.is_empty() {
        let Some((name, after)) = rest.trim_start_matches([' ', '\t']).split_once('=') else { return false };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-') {
            return false;
        }
        let (value, after) = match after.strip_prefix('"') {
            Some(quoted) => match quoted.split_once('"') {
                Some((value, after)) => (value, after),
                None => return false,
            },
            None => after.split_at(after.find(',').unwrap_or(after.len())),
        };
        if value.is_empty() {
            return false;
        }
        rest = match after.strip_prefix(',') {
            Some(next) => next,
            None if after.is_empty() => after,
            None => return false,
        };
    }
    true
}

/// An EXT-X-BYTERANGE (RFC 8216 §4.3.2.2) or EXT-X-MAP BYTERANGE (§4.3.2.5), checked: not empty, and
/// its end (the next implicit offset, and what the fetcher's Range header is built from) fits in u64.
fn byte_range(length: u64, offset: u64, what: &str) -> Result<Range, String> {
    if length == 0 {
        return Err(format!("{what} {length}@{offset} is empty"));
    }
    if offset.checked_add(length).is_none() {
        return Err(format!("{what} {length}@{offset} ends past 2^64 bytes"));
    }
    Ok(Range { offset, length })
}

/// A duration in seconds the session can compute with: finite, not negative, at most a day.
fn duration(seconds: f64, what: &str) -> Result<f64, String> {
    if (0.0..=MAX_DURATION_S).contains(&seconds) {
        Ok(seconds)
    } else {
        Err(format!("{what} {seconds} s is not between 0 and {MAX_DURATION_S} s"))
    }
}

/// Whether an EXT-X-KEY attribute list says METHOD=NONE.
fn method_none(attributes: Option<&str>) -> bool {
    attributes.is_some_and(|a| a.split(',').any(|attribute| attribute.trim() == "METHOD=NONE"))
}

fn parse_iv(text: &str) -> Option<[u8; 16]> {
    let hex = text.trim().strip_prefix("0x").or_else(|| text.trim().strip_prefix("0X"))?;
    // RFC 8216 §4.3.2.4: a hexadecimal-sequence; `from_str_radix` alone would also take a sign.
    if hex.len() > 32 || hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let value = u128::from_str_radix(hex, 16).ok()?;
    Some(value.to_be_bytes())
}

fn media_playlist(media: m3u8_rs::MediaPlaylist, base: &Url) -> Result<MediaPlaylist, PlaylistError> {
    let unsupported = |reason: String| PlaylistError::Unsupported { url: base.to_string(), reason };
    let invalid = |reason: String| PlaylistError::Invalid { url: base.to_string(), reason };
    let target_duration_s = duration(media.target_duration as f64, "EXT-X-TARGETDURATION").map_err(invalid)?;
    let mut segments = Vec::with_capacity(media.segments.len());
    let mut key: Option<(Url, Option<[u8; 16]>)> = None;
    let mut init: Option<InitSection> = None;
    let mut next_offset: Option<(Url, u64)> = None;
    let mut next_date_time: Option<chrono::DateTime<chrono::FixedOffset>> = None;
    let mut discontinuity_sequence = media.discontinuity_sequence;
    for (position, segment) in media.segments.iter().enumerate() {
        // Each segment's number, with room for the one after it (which the session asks for next).
        let sequence =
            media.media_sequence.checked_add(position as u64).filter(|&sequence| sequence < u64::MAX).ok_or_else(
                || {
                    let (first, count) = (media.media_sequence, media.segments.len());
                    invalid(format!("EXT-X-MEDIA-SEQUENCE {first} is too large for {count} segments and the next one"))
                },
            )?;
        // Tags m3u8-rs could not read. It refuses `METHOD=NONE` without an IV (it checks the IV rule
        // backwards), which is how encryption ends (RFC 8216 §4.3.2.4); ignoring it would decrypt clear
        // segments with the previous key.
        let mut key_ends = false;
        let mut gap = false;
        for tag in &segment.unknown_tags {
            match tag.tag.as_str() {
                "X-GAP" => gap = true,
                "X-KEY" if method_none(tag.rest.as_deref()) => key_ends = true,
                "X-KEY" | "X-MAP" => return Err(invalid(format!("unreadable {}", tag_text(tag)))),
                _ => {}
            }
        }
        if key_ends {
            if segment.key.is_some() {
                // m3u8-rs does not keep the order of the two, so which one applies is unknown.
                return Err(invalid(format!("several EXT-X-KEY tags before segment {sequence}")));
            }
            key = None;
        }
        if let Some(tag) = &segment.key {
            key = match &tag.method {
                KeyMethod::None => None,
                KeyMethod::AES128 => {
                    let uri = tag.uri.as_deref().ok_or_else(|| unsupported("EXT-X-KEY AES-128 without URI".into()))?;
                    let iv = match &tag.iv {
                        Some(text) => Some(parse_iv(text).ok_or_else(|| unsupported(format!("bad IV '{text}'")))?),
                        None => None,
                    };
                    Some((resolve(base, uri)?, iv))
                }
                other => return Err(unsupported(format!("encryption method {other:?} is not supported"))),
            };
        }
        if let Some(map) = &segment.map {
            let range = match &map.byte_range {
                Some(r) => Some(byte_range(r.length, r.offset.unwrap_or(0), "EXT-X-MAP BYTERANGE").map_err(invalid)?),
                None => None,
            };
            init = Some(InitSection { uri: resolve(base, &map.uri)?, range });
        }
        let uri = resolve(base, &segment.uri)?;
        let range = match &segment.byte_range {
            Some(r) => {
                let offset = match (r.offset, &next_offset) {
                    (Some(offset), _) => offset,
                    (None, Some((previous, end))) if *previous == uri => *end,
                    (None, _) => {
                        return Err(unsupported(
                            "EXT-X-BYTERANGE without offset follows no range of the same URI".into(),
                        ))
                    }
                };
                let range = byte_range(r.length, offset, "EXT-X-BYTERANGE").map_err(invalid)?;
                // No overflow: byte_range checked that the end fits.
                next_offset = Some((uri.clone(), range.offset.saturating_add(range.length)));
                Some(range)
            }
            None => {
                next_offset = None;
                None
            }
        };
        let duration_s =
            duration(f64::from(segment.duration), &format!("EXTINF of segment {sequence}")).map_err(invalid)?;
        // A date carries over to the segments after it, but not across a discontinuity (§4.3.2.6).
        if segment.discontinuity {
            next_date_time = None;
            discontinuity_sequence = discontinuity_sequence.saturating_add(1);
        }
        let program_date_time = segment.program_date_time.or(next_date_time);
        next_date_time = program_date_time.and_then(|date_time| {
            date_time.checked_add_signed(chrono::TimeDelta::milliseconds((duration_s * 1000.0).round() as i64))
        });
        segments.push(Segment {
            sequence,
            uri,
            duration_s,
            range,
            key: key.as_ref().map(|(uri, iv)| SegmentKey {
                uri: uri.clone(),
                iv: iv.unwrap_or_else(|| u128::from(sequence).to_be_bytes()),
            }),
            init: init.clone(),
            discontinuity: segment.discontinuity,
            discontinuity_sequence,
            gap,
            program_date_time,
            parts: Vec::new(),
        });
    }
    Ok(MediaPlaylist {
        target_duration_s,
        segments,
        ended: media.end_list,
        media_sequence: media.media_sequence,
        part_target_s: None,
        server_control: ServerControl::default(),
        trailing_parts: Vec::new(),
        trailing_date_time: None,
        trailing_init: None,
        preload_hint: None,
        rendition_reports: Vec::new(),
    })
}

/// An attribute list (RFC 8216 §4.2) read strictly: `NAME=value` pairs, each name once, a quoted
/// value kept without its quotes. `tag` names the tag in errors.
fn attributes(tag: &str, list: &str) -> Result<Vec<(String, String, bool)>, String> {
    let mut out: Vec<(String, String, bool)> = Vec::new();
    let mut rest = list.trim();
    while !rest.is_empty() {
        let (name, after) = rest.split_once('=').ok_or_else(|| format!("{tag}: attribute without '=' in {list:?}"))?;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-') {
            return Err(format!("{tag}: bad attribute name {name:?}"));
        }
        let (value, quoted, after) = match after.strip_prefix('"') {
            Some(quoted) => {
                let (value, after) =
                    quoted.split_once('"').ok_or_else(|| format!("{tag}: {name} has an unterminated quoted string"))?;
                (value, true, after)
            }
            None => {
                let (value, after) = after.split_at(after.find(',').unwrap_or(after.len()));
                (value, false, after)
            }
        };
        if out.iter().any(|(n, _, _)| n == name) {
            return Err(format!("{tag}: {name} appears twice"));
        }
        out.push((name.to_string(), value.to_string(), quoted));
        rest = match after.strip_prefix(',') {
            Some(next) => next,
            None if after.is_empty() => after,
            None => return Err(format!("{tag}: unexpected {after:?} after {name}")),
        };
    }
    Ok(out)
}

/// The low-latency tags of a media playlist (draft-pantos-hls-rfc8216bis §4.4.3.7, §4.4.3.8,
/// §4.4.4.9, §4.4.5.3, §4.4.5.4), which m3u8-rs 6 does not know: it keeps them as unknown tags of
/// the next segment and drops those after the last one, so they are read here from the text, each
/// `EXT-X-PART` going to the segment whose URI line follows it.
fn low_latency_tags(text: &str, base: &Url, playlist: &mut MediaPlaylist) -> Result<(), PlaylistError> {
    let invalid = |reason: String| PlaylistError::Invalid { url: base.to_string(), reason };
    let mut pending: Vec<Part> = Vec::new();
    let mut segment_index = 0usize;
    // Where the next BYTERANGE without an offset starts (same URI only, as for EXT-X-BYTERANGE).
    let mut next_offset: Option<(Url, u64)> = None;
    let mut server_control_seen = false;
    // An EXT-X-PROGRAM-DATE-TIME since the last URI line: the date of the segment being made.
    let mut pending_date_time = None;
    // The last EXT-X-MAP (RFC 8216 §4.3.2.5: it applies to every segment after it).
    let mut map: Option<InitSection> = None;
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if !line.starts_with('#') {
            // A URI line: the segment the pending parts belong to.
            if let Some(segment) = playlist.segments.get_mut(segment_index) {
                segment.parts = std::mem::take(&mut pending);
            }
            segment_index += 1;
            pending_date_time = None;
            continue;
        }
        let Some((tag, value)) = line.split_once(':') else { continue };
        let tag = tag.trim_start_matches('#');
        let at = |reason: String| invalid(format!("line {}: {reason}", number + 1));
        match tag {
            // m3u8-rs read it already (for the segment after it); it is only kept here for parts
            // after the last segment, whose date m3u8-rs drops.
            "EXT-X-PROGRAM-DATE-TIME" => pending_date_time = chrono::DateTime::parse_from_rfc3339(value).ok(),
            "EXT-X-MAP" => {
                // m3u8-rs read (and check_tag_values checked) it; only its URI and range matter here.
                let (mut uri, mut range) = (None, None);
                for (name, value, _) in attributes(tag, value).map_err(at)? {
                    match name.as_str() {
                        "URI" => uri = Some(resolve(base, &value)?),
                        "BYTERANGE" => {
                            let bad = || at(format!("{tag}: BYTERANGE {value:?} is not <n>[@<o>]"));
                            let (n, o) = value.split_once('@').unwrap_or((&value, "0"));
                            let (length, offset) = (
                                integer(tag, &name, n).map_err(|_| bad())?,
                                integer(tag, &name, o).map_err(|_| bad())?,
                            );
                            range = Some(byte_range(length, offset, "EXT-X-MAP BYTERANGE").map_err(at)?);
                        }
                        _ => {}
                    }
                }
                map = uri.map(|uri| InitSection { uri, range });
            }
            "EXT-X-PART-INF" => {
                let mut target = None;
                for (name, value, _) in attributes(tag, value).map_err(at)? {
                    if name == "PART-TARGET" {
                        target = Some(seconds(tag, &name, &value).map_err(at)?);
                    }
                }
                let target = target.ok_or_else(|| at(format!("{tag} without PART-TARGET")))?;
                if target <= 0.0 {
                    return Err(at(format!("{tag}: PART-TARGET must be more than 0 s")));
                }
                playlist.part_target_s = Some(target);
            }
            "EXT-X-SERVER-CONTROL" => {
                if server_control_seen {
                    return Err(at(format!("{tag} appears twice")));
                }
                server_control_seen = true;
                for (name, value, _) in attributes(tag, value).map_err(at)? {
                    let control = &mut playlist.server_control;
                    match name.as_str() {
                        "CAN-BLOCK-RELOAD" => control.can_block_reload = yes_no(tag, &name, &value).map_err(at)?,
                        "HOLD-BACK" => control.hold_back_s = Some(seconds(tag, &name, &value).map_err(at)?),
                        "PART-HOLD-BACK" => control.part_hold_back_s = Some(seconds(tag, &name, &value).map_err(at)?),
                        // CAN-SKIP-UNTIL, CAN-SKIP-DATERANGES: delta updates are not asked for.
                        _ => {}
                    }
                }
            }
            "EXT-X-PART" => {
                let (mut uri, mut duration_s, mut independent, mut range_text) = (None, None, false, None);
                for (name, value, quoted) in attributes(tag, value).map_err(at)? {
                    match name.as_str() {
                        "URI" if quoted => uri = Some(resolve(base, &value)?),
                        "URI" => return Err(at(format!("{tag}: URI must be a quoted string"))),
                        "DURATION" => duration_s = Some(seconds(tag, &name, &value).map_err(at)?),
                        "INDEPENDENT" => independent = yes_no(tag, &name, &value).map_err(at)?,
                        "BYTERANGE" => range_text = Some(value),
                        // GAP=YES parts are not produced by Eddy's packager; other attributes are
                        // ignored as §4.4.4.9 lets clients ignore unknown ones.
                        _ => {}
                    }
                }
                let uri = uri.ok_or_else(|| at(format!("{tag} without URI")))?;
                let duration_s = duration_s.ok_or_else(|| at(format!("{tag} without DURATION")))?;
                let range = match range_text {
                    None => {
                        next_offset = None;
                        None
                    }
                    Some(text) => {
                        let bad = || at(format!("{tag}: BYTERANGE {text:?} is not <n>[@<o>]"));
                        let number = |t: &str| {
                            (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
                                .then(|| t.parse::<u64>().ok())
                                .flatten()
                        };
                        let (length, offset) = match text.split_once('@') {
                            Some((n, o)) => (number(n).ok_or_else(bad)?, number(o).ok_or_else(bad)?),
                            None => {
                                let length = number(&text).ok_or_else(bad)?;
                                match &next_offset {
                                    Some((previous, end)) if *previous == uri => (length, *end),
                                    _ => {
                                        return Err(at(format!(
                                            "{tag}: BYTERANGE without offset follows no range of the same URI"
                                        )))
                                    }
                                }
                            }
                        };
                        let range = byte_range(length, offset, "EXT-X-PART BYTERANGE").map_err(at)?;
                        next_offset = Some((uri.clone(), range.offset.saturating_add(range.length)));
                        Some(range)
                    }
                };
                pending.push(Part { uri, duration_s, independent, range });
            }
            "EXT-X-PRELOAD-HINT" => {
                let (mut kind, mut uri) = (None, None);
                for (name, value, quoted) in attributes(tag, value).map_err(at)? {
                    match name.as_str() {
                        "TYPE" => kind = Some(value),
                        "URI" if quoted => uri = Some(resolve(base, &value)?),
                        "URI" => return Err(at(format!("{tag}: URI must be a quoted string"))),
                        _ => {}
                    }
                }
                let uri = uri.ok_or_else(|| at(format!("{tag} without URI")))?;
                match kind.as_deref() {
                    Some("PART") => playlist.preload_hint = Some(uri),
                    Some("MAP") => {}
                    other => return Err(at(format!("{tag}: TYPE {other:?} is neither PART nor MAP"))),
                }
            }
            "EXT-X-RENDITION-REPORT" => {
                let (mut uri, mut last_msn, mut last_part) = (None, None, None);
                for (name, value, quoted) in attributes(tag, value).map_err(at)? {
                    match name.as_str() {
                        "URI" if quoted => uri = Some(resolve(base, &value)?),
                        "URI" => return Err(at(format!("{tag}: URI must be a quoted string"))),
                        "LAST-MSN" => last_msn = Some(integer(tag, &name, &value).map_err(at)?),
                        "LAST-PART" => last_part = Some(integer(tag, &name, &value).map_err(at)?),
                        _ => {}
                    }
                }
                let uri = uri.ok_or_else(|| at(format!("{tag} without URI")))?;
                playlist.rendition_reports.push(RenditionReport { uri, last_msn, last_part });
            }
            _ => {}
        }
    }
    if segment_index != playlist.segments.len() {
        return Err(invalid(format!(
            "{} URI lines for {} segments: the parts cannot be placed",
            segment_index,
            playlist.segments.len()
        )));
    }
    if !playlist.ended {
        playlist.trailing_parts = pending;
        playlist.trailing_init = map;
        playlist.trailing_date_time = pending_date_time.or_else(|| {
            let last = playlist.segments.last()?;
            let milliseconds = (last.duration_s * 1000.0).round() as i64;
            last.program_date_time?.checked_add_signed(chrono::TimeDelta::milliseconds(milliseconds))
        });
    } else if !pending.is_empty() {
        return Err(invalid("EXT-X-PART after the last segment of an ended playlist".into()));
    }
    let has_parts = !playlist.trailing_parts.is_empty() || playlist.segments.iter().any(|s| !s.parts.is_empty());
    if has_parts && playlist.part_target_s.is_none() {
        // §4.4.3.7: EXT-X-PART-INF is REQUIRED when the playlist contains EXT-X-PART.
        return Err(invalid("EXT-X-PART without EXT-X-PART-INF".into()));
    }
    Ok(())
}

/// A decimal-floating-point attribute in seconds, within [`duration`]'s bounds.
fn seconds(tag: &str, name: &str, value: &str) -> Result<f64, String> {
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let (whole, fraction) = value.split_once('.').unwrap_or((value, "0"));
    if !digits(whole) || !digits(fraction) {
        return Err(format!("{tag}: {name}={value:?} is not a number of seconds"));
    }
    let number = value.parse::<f64>().map_err(|_| format!("{tag}: {name}={value:?} is not a number of seconds"))?;
    duration(number, &format!("{tag} {name}"))
}

/// A decimal-integer attribute (RFC 8216 §4.2).
fn integer(tag: &str, name: &str, value: &str) -> Result<u64, String> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{tag}: {name}={value:?} is not a decimal integer"));
    }
    value.parse().map_err(|_| format!("{tag}: {name}={value:?} is too large"))
}

/// A YES/NO enumerated attribute.
fn yes_no(tag: &str, name: &str, value: &str) -> Result<bool, String> {
    match value {
        "YES" => Ok(true),
        "NO" => Ok(false),
        _ => Err(format!("{tag}: {name}={value:?} is neither YES nor NO")),
    }
}

/// Turns a command-line argument (URL or file path) into a URL.
pub fn source_url(arg: &str) -> Result<Url, String> {
    if arg.starts_with("http://") || arg.starts_with("https://") || arg.starts_with("file://") {
        return Url::parse(arg).map_err(|e| format!("'{arg}' is not a valid URL: {e}"));
    }
    let path = std::path::Path::new(arg);
    let absolute = std::path::absolute(path).map_err(|e| format!("'{arg}': {e}"))?;
    Url::from_file_path(&absolute).map_err(|()| format!("'{arg}' is not a usable file path"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("http://example.test/live/master.m3u8").unwrap_or_else(|_| unreachable!())
    }

    #[test]
    fn i_frame_streams_session_keys_and_session_data_are_left_out_of_the_ladder() {
        let text = b"#EXTM3U
#EXT-X-INDEPENDENT-SEGMENTS
#EXT-X-SESSION-KEY:METHOD=AES-128,URI=\"https://keys.test/k\"
#EXT-X-SESSION-DATA:DATA-ID=\"com.example.title\",VALUE=\"A title\"
#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=80000,URI=\"iframes.m3u8\"
#EXT-X-STREAM-INF:BANDWIDTH=800000
v0.m3u8
";
        let Ok(Parsed::Master(Master { variants, renditions })) = parse(text, &base()) else {
            panic!("master expected")
        };
        assert_eq!(variants.len(), 1);
        assert_eq!(variants[0].uri.as_str(), "http://example.test/live/v0.m3u8");
        assert!(renditions.is_empty());
    }

    #[test]
    fn master_variants_resolve_relative_uris_in_order() {
        let text = b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=800000,RESOLUTION=640x360\n360p/index.m3u8\n#EXT-X-STREAM-INF:BANDWIDTH=300000,AVERAGE-BANDWIDTH=280000\nhttp://cdn.test/240p.m3u8\n";
        let Ok(Parsed::Master(Master { variants, .. })) = parse(text, &base()) else { panic!("master expected") };
        assert_eq!(variants.len(), 2);
        assert_eq!(variants[0].uri.as_str(), "http://example.test/live/360p/index.m3u8");
        assert_eq!(variants[0].resolution, Some((640, 360)));
        assert_eq!(variants[1].index, 1);
        assert_eq!(variants[1].average_bandwidth_bps, Some(280_000));
    }

    #[test]
    fn keys_maps_and_byteranges_carry_forward() {
        let text = b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:7\n#EXT-X-MAP:URI=\"init.mp4\"\n#EXT-X-KEY:METHOD=AES-128,URI=\"k.key\"\n#EXTINF:2.0,\n#EXT-X-BYTERANGE:1000@0\nall.m4s\n#EXTINF:2.0,\n#EXT-X-BYTERANGE:500\nall.m4s\n#EXT-X-KEY:METHOD=AES-128,URI=\"k2.key\",IV=0x0000000000000000000000000000002A\n#EXTINF:1.5,\nlast.m4s\n#EXT-X-ENDLIST\n";
        let Ok(Parsed::Media(media)) = parse(text, &base()) else { panic!("media expected") };
        assert!(media.ended);
        assert_eq!(media.segments.len(), 3);
        let first = &media.segments[0];
        assert_eq!(first.sequence, 7);
        assert_eq!(first.range, Some(Range { offset: 0, length: 1000 }));
        assert_eq!(media.segments[1].range, Some(Range { offset: 1000, length: 500 }));
        assert_eq!(first.key.as_ref().map(|k| k.iv[15]), Some(7), "IV from the sequence number");
        assert_eq!(media.segments[2].key.as_ref().map(|k| k.iv[15]), Some(42));
        assert!(media.segments.iter().all(|s| s.init.is_some()));
        assert!(media.is_fmp4());
        assert_eq!(media.segment(8).map(|s| s.sequence), Some(8));
        assert_eq!(media.sequence_at(3.0), Some(8));
    }

    fn signed_base() -> Url {
        Url::parse("http://edge.test/videos/x/master.m3u8?token=T").unwrap_or_else(|_| unreachable!())
    }

    /// A signed URL's token reaches every playlist, segment, init section and key below it.
    #[test]
    fn relative_uris_without_a_query_inherit_the_playlists_query() {
        let master = b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=800000\nv0/index.m3u8\n#EXT-X-STREAM-INF:BANDWIDTH=300000\nv1/index.m3u8?own=1\n";
        let Ok(Parsed::Master(Master { variants, .. })) = parse(master, &signed_base()) else {
            panic!("master expected")
        };
        assert_eq!(variants[0].uri.as_str(), "http://edge.test/videos/x/v0/index.m3u8?token=T");
        assert_eq!(variants[1].uri.as_str(), "http://edge.test/videos/x/v1/index.m3u8?own=1", "its own query wins");

        let media = b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MAP:URI=\"init.mp4\"\n#EXT-X-KEY:METHOD=AES-128,URI=\"../enc.key\"\n#EXTINF:2.0,\nseg1.m4s\n#EXTINF:2.0,\n/videos/x/v0/seg2.m4s\n#EXTINF:2.0,\nseg3.m4s?\n#EXT-X-ENDLIST\n";
        let Ok(Parsed::Media(media)) = parse(media, &variants[0].uri) else { panic!("media expected") };
        let segment = &media.segments[0];
        assert_eq!(segment.uri.as_str(), "http://edge.test/videos/x/v0/seg1.m4s?token=T");
        assert_eq!(segment.key.as_ref().map(|k| k.uri.as_str()), Some("http://edge.test/videos/x/enc.key?token=T"));
        assert_eq!(
            segment.init.as_ref().map(|i| i.uri.as_str()),
            Some("http://edge.test/videos/x/v0/init.mp4?token=T")
        );
        assert_eq!(media.segments[1].uri.as_str(), "http://edge.test/videos/x/v0/seg2.m4s?token=T", "absolute path");
        assert_eq!(
            media.segments[2].uri.as_str(),
            "http://edge.test/videos/x/v0/seg3.m4s?",
            "an empty query is its own"
        );
    }

    #[test]
    fn absolute_uris_and_other_hosts_never_get_the_playlists_query() {
        for (uri, want) in [
            ("http://cdn.test/a.ts", "http://cdn.test/a.ts"),
            ("//cdn.test/a.ts", "http://cdn.test/a.ts"),
            ("http://edge.test/videos/x/a.ts", "http://edge.test/videos/x/a.ts"),
            ("https://edge.test/videos/x/a.ts", "https://edge.test/videos/x/a.ts"),
            ("//edge.test:8080/a.ts", "http://edge.test:8080/a.ts"),
        ] {
            assert_eq!(resolve(&signed_base(), uri).map(|u| u.to_string()).ok().as_deref(), Some(want), "{uri}");
        }
        // A network-path reference to the same origin is relative (RFC 3986 §4.2) and stays on this host.
        assert_eq!(
            resolve(&signed_base(), "//edge.test/videos/x/a.ts").map(|u| u.to_string()).ok().as_deref(),
            Some("http://edge.test/videos/x/a.ts?token=T")
        );
        // Without a query on the playlist, nothing changes.
        assert_eq!(
            resolve(&base(), "a.ts").map(|u| u.to_string()).ok().as_deref(),
            Some("http://example.test/live/a.ts")
        );
        assert!(has_scheme("HTTP+x.y-z:rest") && !has_scheme("a/b:c") && !has_scheme(":x") && !has_scheme("1a:x"));
    }

    #[test]
    fn live_starts_three_target_durations_from_the_edge() {
        let mut text = String::from("#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:100\n");
        for i in 0..6 {
            text.push_str(&format!("#EXTINF:1.0,\ns{i}.ts\n"));
        }
        let Ok(Parsed::Media(media)) = parse(text.as_bytes(), &base()) else { panic!("media expected") };
        assert!(!media.ended);
        assert_eq!(media.live_start_sequence(), Some(103));
    }

    #[test]
    fn each_segment_carries_its_discontinuity_sequence_number() {
        let text = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-DISCONTINUITY-SEQUENCE:5\n#EXTINF:2,\na.ts\n\
                    #EXT-X-DISCONTINUITY\n#EXTINF:2,\nb.ts\n#EXTINF:2,\nc.ts\n#EXT-X-DISCONTINUITY\n#EXTINF:2,\nd.ts\n";
        let Ok(Parsed::Media(media)) = parse(text.as_bytes(), &base()) else { panic!("media expected") };
        let domains: Vec<u64> = media.segments.iter().map(|s| s.discontinuity_sequence).collect();
        assert_eq!(domains, [5, 6, 6, 7]);
    }

    #[test]
    fn a_live_window_is_placed_on_the_players_axis_from_a_known_segment() {
        let mut text = String::from("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:100\n");
        for (i, duration) in [2.0, 2.0, 1.5, 2.0].iter().enumerate() {
            text.push_str(&format!("#EXTINF:{duration},\ns{i}.ts\n"));
        }
        let Ok(Parsed::Media(media)) = parse(text.as_bytes(), &base()) else { panic!("media expected") };
        // Segment 102 started at 10 s of the player's position: 100 at 6, the window ends at 13.5.
        let anchor = TimelineAnchor { sequence: 102, media_s: 10.0 };
        assert_eq!(media.span_on(anchor), Some((6.0, 13.5)));
        assert_eq!(media.segment_on(anchor, 9.9), Some((101, 8.0)));
        assert_eq!(media.segment_on(anchor, 11.5), Some((103, 11.5)));
        // Outside the window: its first or its last segment.
        assert_eq!(media.segment_on(anchor, -50.0), Some((100, 6.0)));
        assert_eq!(media.segment_on(anchor, 99.0), Some((103, 11.5)));
        // The segment after the last is a known point too (it is being made); one the window slid
        // past, or not yet made, is not.
        assert_eq!(media.span_on(TimelineAnchor { sequence: 104, media_s: 20.0 }), Some((12.5, 20.0)));
        assert_eq!(media.span_on(TimelineAnchor { sequence: 99, media_s: 0.0 }), None);
        assert_eq!(media.span_on(TimelineAnchor { sequence: 105, media_s: 0.0 }), None);
        assert_eq!(media.span_on(TimelineAnchor { sequence: 102, media_s: f64::NAN }), None);
    }

    /// What `eddy-package --live --low-latency` writes (draft-pantos-hls-rfc8216bis §4.4.3.7-§4.4.5.4).
    const LL: &str = "#EXTM3U
#EXT-X-VERSION:6
#EXT-X-TARGETDURATION:2
#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,HOLD-BACK=6.000,PART-HOLD-BACK=3.000,CAN-SKIP-UNTIL=12.0
#EXT-X-PART-INF:PART-TARGET=1.000
#EXT-X-MEDIA-SEQUENCE:7
#EXT-X-MAP:URI=\"init.mp4\"
#EXT-X-PROGRAM-DATE-TIME:2026-12-01T10:00:00.000Z
#EXTINF:2.000,
seg_00007.m4s
#EXT-X-PROGRAM-DATE-TIME:2026-12-01T10:00:02.000Z
#EXT-X-PART:DURATION=1.000,URI=\"seg_00008.part0.m4s\",INDEPENDENT=YES
#EXT-X-PART:DURATION=1.000,URI=\"seg_00008.part1.m4s\"
#EXTINF:2.000,
seg_00008.m4s
#EXT-X-PROGRAM-DATE-TIME:2026-12-01T10:00:04.000Z
#EXT-X-PART:DURATION=1.000,URI=\"seg_00009.part0.m4s\",INDEPENDENT=YES
#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"seg_00009.part1.m4s\"
#EXT-X-RENDITION-REPORT:URI=\"../360p/index.m3u8\",LAST-MSN=9,LAST-PART=0
";

    fn media_of(text: &str) -> Result<MediaPlaylist, PlaylistError> {
        match parse(text.as_bytes(), &base())? {
            Parsed::Media(media) => Ok(*media),
            Parsed::Master(_) => panic!("media expected"),
        }
    }

    #[test]
    fn low_latency_tags_give_parts_server_control_hints_and_reports() {
        let media = media_of(LL).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(media.part_target_s, Some(1.0));
        let control = &media.server_control;
        assert!(control.can_block_reload);
        assert_eq!((control.hold_back_s, control.part_hold_back_s), (Some(6.0), Some(3.0)));
        assert!(media.segments[0].parts.is_empty(), "segment 7 lists no parts");
        let parts = &media.segments[1].parts;
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].uri.as_str(), "http://example.test/live/seg_00008.part0.m4s");
        assert!(parts[0].independent && !parts[1].independent);
        assert_eq!(media.in_progress_sequence(), 9);
        assert_eq!(media.trailing_parts.len(), 1);
        assert_eq!(media.trailing_init.as_ref().map(|i| i.uri.as_str()), Some("http://example.test/live/init.mp4"));
        assert_eq!(media.trailing_date_time.map(|d| d.to_rfc3339()).as_deref(), Some("2026-12-01T10:00:04+00:00"));
        assert_eq!(media.preload_hint.as_ref().map(Url::as_str), Some("http://example.test/live/seg_00009.part1.m4s"));
        let report = &media.rendition_reports[0];
        assert_eq!(report.uri.as_str(), "http://example.test/360p/index.m3u8");
        assert_eq!((report.last_msn, report.last_part), (Some(9), Some(0)));
        assert_eq!(media.part(PartPosition { msn: 9, part: 0 }).map(|p| p.duration_s), Some(1.0));
        assert!(media.part(PartPosition { msn: 9, part: 1 }).is_none(), "a hint is not a listed part");
        assert!(media.part(PartPosition { msn: 7, part: 0 }).is_none());
        assert!(media.is_fmp4());
    }

    #[test]
    fn live_start_joins_at_an_independent_part_the_delay_from_the_end() {
        let media = media_of(LL).unwrap_or_else(|e| panic!("{e}"));
        // 9.0 (1 s), 8.1 (2 s, not independent), 8.0 (3 s).
        assert_eq!(media.live_start_part(3.0), Some(PartPosition { msn: 8, part: 0 }));
        assert_eq!(media.live_start_part(2.0), Some(PartPosition { msn: 8, part: 0 }), "8.1 is not independent");
        assert_eq!(media.live_start_part(1.0), Some(PartPosition { msn: 9, part: 0 }));
        assert_eq!(media.live_start_part(60.0), Some(PartPosition { msn: 8, part: 0 }), "as far back as parts go");
        let only_parts = LL.replace("#EXTINF:2.000,\nseg_00007.m4s\n", "");
        let media = media_of(&only_parts).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(media.live_start_part(3.0), Some(PartPosition { msn: 7, part: 0 }));
        let plain = media_of(&LL.lines().filter(|l| !l.contains("PART")).collect::<Vec<_>>().join("\n"));
        assert_eq!(plain.map(|m| m.live_start_part(3.0)).ok(), Some(None));
    }

    #[test]
    fn a_playlist_of_parts_only_is_fmp4_and_numbers_them_from_the_media_sequence() {
        let text = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-PART-INF:PART-TARGET=1.0\n#EXT-X-MEDIA-SEQUENCE:3\n#EXT-X-MAP:URI=\"i.mp4\"\n#EXT-X-PART:DURATION=1.0,URI=\"p.m4s\",INDEPENDENT=YES\n";
        let media = media_of(text).unwrap_or_else(|e| panic!("{e}"));
        assert!(media.segments.is_empty() && media.is_fmp4());
        assert_eq!(media.in_progress_sequence(), 3);
        assert!(media.part(PartPosition { msn: 3, part: 0 }).is_some());
    }

    #[test]
    fn part_byte_ranges_follow_on_within_one_uri() {
        let text = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-PART-INF:PART-TARGET=1.0\n#EXT-X-PART:DURATION=1.0,URI=\"s.mp4\",BYTERANGE=\"100@0\"\n#EXT-X-PART:DURATION=1.0,URI=\"s.mp4\",BYTERANGE=\"50\"\n";
        let media = media_of(text).unwrap_or_else(|e| panic!("{e}"));
        let ranges: Vec<_> = media.trailing_parts.iter().map(|p| p.range).collect();
        assert_eq!(ranges, vec![Some(Range { offset: 0, length: 100 }), Some(Range { offset: 100, length: 50 })]);
    }

    #[test]
    fn bad_low_latency_tags_are_refused_naming_the_tag() {
        let head = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-PART-INF:PART-TARGET=1.0\n";
        for (line, wanted) in [
            ("#EXT-X-PART:DURATION=1.0", "EXT-X-PART without URI"),
            ("#EXT-X-PART:URI=\"p.m4s\"", "EXT-X-PART without DURATION"),
            ("#EXT-X-PART:DURATION=-1,URI=\"p.m4s\"", "DURATION"),
            ("#EXT-X-PART:DURATION=1e9,URI=\"p.m4s\"", "DURATION"),
            ("#EXT-X-PART:DURATION=99999999,URI=\"p.m4s\"", "EXT-X-PART DURATION"),
            ("#EXT-X-PART:DURATION=1.0,URI=p.m4s", "quoted"),
            ("#EXT-X-PART:DURATION=1.0,URI=\"p.m4s\",INDEPENDENT=yes", "INDEPENDENT"),
            ("#EXT-X-PART:DURATION=1.0,URI=\"p.m4s\",DURATION=2.0", "twice"),
            ("#EXT-X-PART:DURATION=1.0,URI=\"p.m4s", "unterminated"),
            ("#EXT-X-PART:DURATION=1.0,URI=\"p.m4s\",BYTERANGE=\"10\"", "without offset"),
            ("#EXT-X-PART:DURATION=1.0,URI=\"p.m4s\",BYTERANGE=\"0@5\"", "empty"),
            ("#EXT-X-PART:DURATION=1.0,URI=\"p.m4s\",BYTERANGE=\"1@18446744073709551615\"", "2^64"),
            ("#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=1", "CAN-BLOCK-RELOAD"),
            ("#EXT-X-SERVER-CONTROL:PART-HOLD-BACK=x", "PART-HOLD-BACK"),
            ("#EXT-X-SERVER-CONTROL:HOLD-BACK=1\n#EXT-X-SERVER-CONTROL:HOLD-BACK=2", "twice"),
            ("#EXT-X-PART-INF:PART-TARGET=0", "PART-TARGET"),
            ("#EXT-X-PART-INF:X=1", "without PART-TARGET"),
            ("#EXT-X-PRELOAD-HINT:TYPE=SEGMENT,URI=\"p\"", "neither PART nor MAP"),
            ("#EXT-X-PRELOAD-HINT:TYPE=PART", "without URI"),
            ("#EXT-X-RENDITION-REPORT:URI=\"../a.m3u8\",LAST-MSN=-1", "LAST-MSN"),
            ("#EXT-X-RENDITION-REPORT:URI=\"../a.m3u8\",LAST-PART=99999999999999999999", "LAST-PART"),
            ("#EXT-X-RENDITION-REPORT:URI=\"ftp://x/a.m3u8\"", "scheme"),
        ] {
            let error = media_of(&format!("{head}{line}\n")).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(error.contains(wanted), "{line}: {error:?} lacks {wanted:?}");
        }
        let no_part_inf = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-PART:DURATION=1.0,URI=\"p.m4s\"\n";
        assert!(media_of(no_part_inf).err().is_some_and(|e| e.to_string().contains("without EXT-X-PART-INF")));
    }

    proptest! {
        /// Any text after an LL tag is read or refused, never a panic.
        #[test]
        fn low_latency_tag_values_never_panic(tag in prop::sample::select(vec!["PART", "PART-INF", "SERVER-CONTROL", "PRELOAD-HINT", "RENDITION-REPORT"]), value in "[ -~]{0,40}") {
            let text = format!("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-PART-INF:PART-TARGET=1.0\n#EXT-X-{tag}:{value}\n");
            let _ = parse(text.as_bytes(), &base());
        }
    }

    #[test]
    fn garbage_is_refused_with_the_url() {
        let error = parse(b"<html>not found</html>", &base()).err().map(|e| e.to_string());
        assert!(error.is_some_and(|e| e.contains("example.test") && e.contains("EXTM3U")));
    }

    // ---- Properties (bounded: each runs a fixed number of cases as an ordinary unit test). ----

    use proptest::prelude::*;
    use proptest::sample::select;

    /// A fixed case count, and no failure persistence: the source tree may be read-only in CI. A
    /// failure prints its shrunk input, which becomes a named regression test.
    fn config(cases: u32) -> ProptestConfig {
        ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
    }

    fn bases() -> impl Strategy<Value = Url> {
        select(vec![
            "http://example.test/live/index.m3u8",
            "https://cdn.example/a/b/master.m3u8?token=1",
            "file:///srv/hls/index.m3u8",
        ])
        .prop_map(|u| Url::parse(u).unwrap_or_else(|_| unreachable!()))
    }

    /// A URI the fetcher can fetch from this playlist: absolute, http(s), or file only from a file.
    fn fetchable(base: &Url, uri: &Url) -> bool {
        match uri.scheme() {
            "http" | "https" => uri.host().is_some(),
            "file" => base.scheme() == "file",
            _ => false,
        }
    }

    /// What every parse must keep, whatever it was given.
    fn check(result: &Result<Parsed, PlaylistError>, base: &Url) -> Result<(), TestCaseError> {
        match result {
            // The error names the playlist it is about.
            Err(e) => prop_assert!(e.to_string().contains(base.as_str()), "{e}"),
            Ok(Parsed::Master(Master { variants, .. })) => {
                prop_assert!(!variants.is_empty());
                for pair in variants.windows(2) {
                    prop_assert!(pair[0].index < pair[1].index);
                }
                for variant in variants {
                    prop_assert!(fetchable(base, &variant.uri), "{}", variant.uri);
                    prop_assert!(variant.uri != *base, "a variant is the master itself");
                }
            }
            Ok(Parsed::Media(media)) => {
                let t = media.target_duration_s;
                prop_assert!(t.is_finite() && (0.0..=MAX_DURATION_S).contains(&t), "target {t}");
                let first = media.segments.first().map_or(0, |s| s.sequence);
                for (i, segment) in media.segments.iter().enumerate() {
                    let d = segment.duration_s;
                    prop_assert!(d.is_finite() && (0.0..=MAX_DURATION_S).contains(&d), "duration {d}");
                    prop_assert_eq!(Some(segment.sequence), first.checked_add(i as u64));
                    prop_assert!(segment.sequence < u64::MAX, "no next segment after {}", segment.sequence);
                    prop_assert_eq!(media.segment(segment.sequence), Some(segment));
                    prop_assert!(fetchable(base, &segment.uri), "{}", segment.uri);
                    let ranges = segment.range.iter().chain(segment.init.as_ref().and_then(|i| i.range.as_ref()));
                    for range in ranges {
                        prop_assert!(range.length > 0 && range.offset.checked_add(range.length).is_some(), "{range:?}");
                    }
                    if let Some(key) = &segment.key {
                        prop_assert!(fetchable(base, &key.uri), "{}", key.uri);
                    }
                    if let Some(init) = &segment.init {
                        prop_assert!(fetchable(base, &init.uri), "{}", init.uri);
                    }
                }
                // The helpers the session calls must not panic on what the parser let through.
                let _ = (media.live_start_sequence(), media.last_sequence(), media.is_fmp4());
                for at in [0.0, 1.0, 1e300, f64::NAN, f64::INFINITY, -1.0] {
                    let _ = media.sequence_at(at);
                }
            }
        }
        Ok(())
    }

    /// Numbers as a hostile or broken packager writes them.
    fn number() -> impl Strategy<Value = String> {
        prop_oneof![
            (0..100u64).prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            select(vec![
                "0",
                "18446744073709551615",
                "18446744073709551614",
                "9223372036854775808",
                "18446744073709551616",
                "99999999999999999999999999",
                "-1",
                "+1",
                "",
                " 5",
                "0x10",
                "1e3",
            ])
            .prop_map(String::from),
        ]
    }

    fn duration() -> impl Strategy<Value = String> {
        prop_oneof![
            (0..100_000u32).prop_map(|n| format!("{}.{:03}", n / 1000, n % 1000)),
            number(),
            select(vec![
                "-1",
                "-0.5",
                "-0",
                "nan",
                "NaN",
                "inf",
                "-inf",
                "infinity",
                "1e400",
                "1e39",
                "3.5e38",
                ".5",
                "2.",
                "86400",
                "86401",
                "1.0.0",
                "340282366920938463463374607431768211456",
                "999999999999999999999999999999999999999999999999999999.5",
            ])
            .prop_map(String::from),
        ]
    }

    fn uri() -> impl Strategy<Value = String> {
        select(vec![
            "seg.ts",
            "../up/seg.ts",
            "/abs/seg.ts",
            "//other.example/seg.ts",
            "http://cdn.example/seg.ts",
            "https://cdn.example/seg.ts?x=1",
            "file:///etc/passwd",
            "file:seg.ts",
            "data:video/mp2t;base64,AAAA",
            "javascript:alert(1)",
            "mailto:a@b",
            "http://[::1",
            "http://",
            "seg with spaces.ts",
            "\tseg.ts ",
            "ségment.ts",
            "%zz.ts",
            "C:\\seg.ts",
            "?q=1",
            "#frag",
            "x:y",
            "HTTP://CDN.EXAMPLE/S.TS",
            "index.m3u8",
        ])
        .prop_map(String::from)
    }

    fn iv() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<u128>().prop_map(|v| format!("0x{v:032X}")),
            select(vec!["0x0", "0x+1", "0X1f", "0x", "0xZZ", "1234", "0x000000000000000000000000000000001"])
                .prop_map(String::from),
        ]
    }

    /// One line a mutation inserts or substitutes: a tag with a hostile value, or a URI line.
    fn line() -> impl Strategy<Value = String> {
        prop_oneof![
            duration().prop_map(|d| format!("#EXTINF:{d},")),
            (number(), proptest::option::of(number())).prop_map(|(n, o)| match o {
                Some(o) => format!("#EXT-X-BYTERANGE:{n}@{o}"),
                None => format!("#EXT-X-BYTERANGE:{n}"),
            }),
            number().prop_map(|n| format!("#EXT-X-MEDIA-SEQUENCE:{n}")),
            number().prop_map(|n| format!("#EXT-X-TARGETDURATION:{n}")),
            number().prop_map(|n| format!("#EXT-X-DISCONTINUITY-SEQUENCE:{n}")),
            (select(vec!["AES-128", "NONE", "SAMPLE-AES", "FOO", ""]), uri(), proptest::option::of(iv())).prop_map(
                |(method, uri, iv)| match iv {
                    Some(iv) => format!("#EXT-X-KEY:METHOD={method},URI=\"{uri}\",IV={iv}"),
                    None => format!("#EXT-X-KEY:METHOD={method},URI=\"{uri}\""),
                }
            ),
            select(vec!["#EXT-X-KEY:METHOD=NONE", "#EXT-X-KEY:URI=\"k\"", "#EXT-X-KEY:METHOD=AES-128"])
                .prop_map(String::from),
            (uri(), proptest::option::of((number(), number()))).prop_map(|(uri, range)| match range {
                Some((n, o)) => format!("#EXT-X-MAP:URI=\"{uri}\",BYTERANGE=\"{n}@{o}\""),
                None => format!("#EXT-X-MAP:URI=\"{uri}\""),
            }),
            (number(), select(vec!["640x360", "x", "99999999999999999999x1", ""]), uri())
                .prop_map(|(b, r, uri)| { format!("#EXT-X-STREAM-INF:BANDWIDTH={b},RESOLUTION={r}\n{uri}") }),
            number().prop_map(|b| format!("#EXT-X-STREAM-INF:BANDWIDTH={b}")),
            number().prop_map(|b| format!("#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH={b},URI=\"i.m3u8\"")),
            select(vec![
                "#EXT-X-DISCONTINUITY",
                "#EXT-X-ENDLIST",
                "#EXT-X-VERSION:99999999999999999999",
                "#EXT-X-FOO:bar",
                "# a comment",
                "#EXT-X-PROGRAM-DATE-TIME:garbage",
                "#EXTM3U",
                "",
                "   ",
                "#",
                "#EXT-",
                "\r",
                "#EXT-X-PLAYLIST-TYPE:VOD",
                "#EXT-X-INDEPENDENT-SEGMENTS",
                "#EXT-X-START:TIME-OFFSET=nan",
            ])
            .prop_map(String::from),
            uri(),
        ]
    }

    #[derive(Debug, Clone)]
    enum Mutation {
        Insert(usize, String),
        Replace(usize, String),
        Delete(usize),
        Duplicate(usize),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            (any::<usize>(), line()).prop_map(|(i, l)| Mutation::Insert(i, l)),
            (any::<usize>(), line()).prop_map(|(i, l)| Mutation::Replace(i, l)),
            any::<usize>().prop_map(Mutation::Delete),
            any::<usize>().prop_map(Mutation::Duplicate),
        ]
    }

    /// Applies the mutations to a playlist's lines (never to its `#EXTM3U` line, which `parse` checks
    /// first and so would refuse every mutant) and joins them with LF or CRLF.
    fn mutate(text: &str, mutations: &[Mutation], crlf: bool) -> String {
        let mut lines: Vec<String> = text.lines().skip(1).map(String::from).collect();
        for mutation in mutations {
            let at = |i: usize, extra: usize| i % (lines.len() + extra).max(1);
            match mutation {
                Mutation::Insert(i, line) => {
                    let i = at(*i, 1);
                    lines.insert(i, line.clone());
                }
                Mutation::Replace(i, line) if !lines.is_empty() => {
                    let i = at(*i, 0);
                    lines[i] = line.clone();
                }
                Mutation::Delete(i) if !lines.is_empty() => {
                    let i = at(*i, 0);
                    lines.remove(i);
                }
                Mutation::Duplicate(i) if !lines.is_empty() => {
                    let i = at(*i, 0);
                    lines.insert(i, lines[i].clone());
                }
                _ => {}
            }
        }
        let eol = if crlf { "\r\n" } else { "\n" };
        format!("#EXTM3U{eol}{}{eol}", lines.join(eol))
    }

    const MEDIA: &str = "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:7\n#EXT-X-MAP:URI=\"init.mp4\",BYTERANGE=\"800@0\"\n#EXT-X-KEY:METHOD=AES-128,URI=\"k.key\"\n#EXTINF:2.0,\n#EXT-X-BYTERANGE:1000@800\nall.m4s\n#EXTINF:2.0,\n#EXT-X-BYTERANGE:500\nall.m4s\n#EXT-X-DISCONTINUITY\n#EXT-X-KEY:METHOD=AES-128,URI=\"k2.key\",IV=0x0000000000000000000000000000002A\n#EXTINF:1.5,\nlast.m4s\n#EXT-X-KEY:METHOD=NONE\n#EXTINF:2,\nclear.m4s\n#EXT-X-ENDLIST\n";

    const MASTER: &str = "#EXTM3U\n#EXT-X-VERSION:6\n#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"a\",NAME=\"en\",URI=\"audio/index.m3u8\"\n#EXT-X-STREAM-INF:BANDWIDTH=800000,AVERAGE-BANDWIDTH=700000,RESOLUTION=640x360,CODECS=\"avc1.4d401e,mp4a.40.2\",AUDIO=\"a\"\n360p/index.m3u8\n#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=90000,URI=\"360p/iframes.m3u8\"\n#EXT-X-STREAM-INF:BANDWIDTH=300000,RESOLUTION=426x240\nhttp://cdn.test/240p.m3u8\n#EXT-X-STREAM-INF:BANDWIDTH=1500000,RESOLUTION=854x480\n../480p/index.m3u8\n";

    /// Bytes from the playlist grammar's fragments, hostile values and arbitrary bytes.
    fn playlist_bytes() -> impl Strategy<Value = Vec<u8>> {
        let fragment = prop_oneof![
            4 => line().prop_map(|l| format!("{l}\n").into_bytes()),
            2 => select(vec![
                "#EXTM3U", "#EXTINF:", "#EXT-X-BYTERANGE:", "#EXT-X-KEY:", "METHOD=", "AES-128", ",URI=\"", "\"",
                "#EXT-X-MAP:", "#EXT-X-STREAM-INF:", "BANDWIDTH=", "#EXT-X-MEDIA-SEQUENCE:", "=", ",", "@", "\n",
                "\r\n", "\r", " ", "\t", "-", ".", "0", "1", "9", "seg.ts",
            ])
            .prop_map(|s| s.as_bytes().to_vec()),
            1 => proptest::collection::vec(any::<u8>(), 1..4),
        ];
        (0..4u8, proptest::collection::vec(fragment, 0..24)).prop_map(|(head, body)| {
            let head: &[u8] = match head {
                0 => b"",
                1 => b"  #EXTM3U\n",
                _ => b"#EXTM3U\n",
            };
            [head.to_vec(), body.concat()].concat()
        })
    }

    proptest! {
        #![proptest_config(config(3_000))]

        /// Arbitrary text never panics, and whatever parses keeps every invariant.
        #[test]
        fn arbitrary_text_parses_or_is_refused(bytes in playlist_bytes(), base in bases()) {
            check(&parse(&bytes, &base), &base)?;
        }

        /// A valid media playlist under random insertions, substitutions, deletions and duplications.
        #[test]
        fn mutated_media_playlists_keep_their_invariants(
            mutations in proptest::collection::vec(mutation(), 1..6), crlf in any::<bool>(), base in bases(),
        ) {
            let text = mutate(MEDIA, &mutations, crlf);
            check(&parse(text.as_bytes(), &base), &base)?;
        }

        /// A valid master playlist under the same mutations.
        #[test]
        fn mutated_master_playlists_keep_their_invariants(
            mutations in proptest::collection::vec(mutation(), 1..6), crlf in any::<bool>(), base in bases(),
        ) {
            let text = mutate(MASTER, &mutations, crlf);
            check(&parse(text.as_bytes(), &base), &base)?;
        }
    }

    #[test]
    fn the_unmutated_playlists_parse() {
        let base = base();
        let Ok(Parsed::Media(media)) = parse(MEDIA.as_bytes(), &base) else { panic!("media expected") };
        assert_eq!(media.segments.len(), 4);
        assert!(media.segments[3].key.is_none(), "METHOD=NONE ends encryption");
        let Ok(Parsed::Master(Master { variants, .. })) = parse(MASTER.as_bytes(), &base) else {
            panic!("master expected")
        };
        assert_eq!(variants.len(), 3);
    }

    // ---- Regression tests: one per defect the properties found in the first parser. ----

    fn media(text: &str, base: &Url) -> Result<MediaPlaylist, String> {
        match parse(text.as_bytes(), base) {
            Ok(Parsed::Media(media)) => Ok(*media),
            Ok(Parsed::Master(_)) => Err("a master playlist".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn refused(text: &str, base: &Url, naming: &str) {
        let result = parse(text.as_bytes(), base);
        let error = result.as_ref().err().map(ToString::to_string).unwrap_or_default();
        assert!(error.contains(naming) && error.contains(base.as_str()), "{text:?}: {result:?}");
    }

    fn file_base() -> Url {
        Url::parse("file:///srv/hls/index.m3u8").unwrap_or_else(|_| unreachable!())
    }

    /// m3u8-rs refuses `METHOD=NONE` without an IV (its IV check is backwards) and skips the tag, so the
    /// segments after it were "decrypted" with the previous key.
    #[test]
    fn encryption_ends_at_method_none() {
        let text = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-KEY:METHOD=AES-128,URI=\"k.key\"\n#EXTINF:2,\na.ts\n#EXT-X-KEY:METHOD=NONE\n#EXTINF:2,\nb.ts\n#EXTINF:2,\nc.ts\n";
        let media = media(text, &base()).expect("parses");
        let keyed: Vec<bool> = media.segments.iter().map(|s| s.key.is_some()).collect();
        assert_eq!(keyed, [true, false, false]);
        let both = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-KEY:METHOD=NONE\n#EXT-X-KEY:METHOD=AES-128,URI=\"k\"\n#EXTINF:2,\na.ts\n";
        refused(both, &base(), "several EXT-X-KEY");
    }

    /// A remote playlist could point segments, keys and init sections at `file:` URLs, which the fetcher
    /// reads from the local disk.
    #[test]
    fn a_remote_playlist_cannot_name_local_files() {
        let segment = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\nfile:///etc/passwd\n";
        refused(segment, &base(), "local file");
        let key =
            "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-KEY:METHOD=AES-128,URI=\"file:///etc/key\"\n#EXTINF:2,\na.ts\n";
        refused(key, &base(), "local file");
        let master = "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nfile:///etc/passwd\n";
        refused(master, &base(), "local file");
        // A local playlist may name local files (and remote ones).
        let local = media(segment, &file_base()).expect("parses");
        assert_eq!(local.segments[0].uri.as_str(), "file:///etc/passwd");
    }

    /// `data:`, `javascript:` and the like resolved "fine" and failed later in the fetcher.
    #[test]
    fn unfetchable_schemes_are_refused() {
        for uri in ["data:video/mp2t;base64,AAAA", "javascript:alert(1)", "mailto:a@b", "x:y", "C:\\seg.ts"] {
            refused(&format!("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\n{uri}\n"), &base(), "cannot be fetched");
        }
    }

    /// An EXT-X-STREAM-INF with no URI line became a variant whose empty URI resolved to the master.
    #[test]
    fn a_variant_without_a_uri_is_refused() {
        let text = "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\n#EXT-X-STREAM-INF:BANDWIDTH=2\nb.m3u8\n";
        refused(text, &base(), "empty URI");
        refused("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nmaster.m3u8\n", &base(), "this master playlist itself");
    }

    /// `offset + length` overflowed (a panic in debug builds, a wrap in release) for the next implicit
    /// offset, and the fetcher's `offset + length - 1` for any range ending past 2^64.
    #[test]
    fn byte_ranges_that_end_past_u64_are_refused() {
        let head = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n";
        refused(
            &format!("{head}#EXTINF:2,\n#EXT-X-BYTERANGE:10@18446744073709551615\na.ts\n"),
            &base(),
            "EXT-X-BYTERANGE",
        );
        let chained = format!(
            "{head}#EXTINF:2,\n#EXT-X-BYTERANGE:18446744073709551615@0\na.ts\n#EXTINF:2,\n#EXT-X-BYTERANGE:1\na.ts\n"
        );
        refused(&chained, &base(), "ends past 2^64");
        let map = format!("{head}#EXT-X-MAP:URI=\"i.mp4\",BYTERANGE=\"2@18446744073709551615\"\n#EXTINF:2,\na.m4s\n");
        refused(&map, &base(), "EXT-X-MAP BYTERANGE");
        let last = media(&format!("{head}#EXTINF:2,\n#EXT-X-BYTERANGE:1@18446744073709551614\na.ts\n"), &base());
        assert_eq!(last.map(|m| m.segments[0].range), Ok(Some(Range { offset: u64::MAX - 1, length: 1 })));
    }

    /// A zero-length range has no last byte: the fetcher's `bytes=o-(o-1)` asked for one byte anyway.
    #[test]
    fn empty_byte_ranges_are_refused() {
        refused("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\n#EXT-X-BYTERANGE:0@0\na.ts\n", &base(), "is empty");
    }

    /// `media_sequence + position` overflowed (a panic in debug builds), and a last segment numbered
    /// u64::MAX left the session's `sequence + 1` nowhere to go.
    #[test]
    fn sequence_numbers_that_overflow_are_refused() {
        let text = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:18446744073709551614\n#EXTINF:2,\na.ts\n";
        assert_eq!(media(text, &base()).map(|m| m.last_sequence()), Ok(Some(u64::MAX - 1)));
        refused(&format!("{text}#EXTINF:2,\nb.ts\n"), &base(), "EXT-X-MEDIA-SEQUENCE");
        let last = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:18446744073709551615\n#EXTINF:2,\na.ts\n";
        refused(&format!("{last}#EXTINF:2,\nb.ts\n"), &base(), "is too large for 2 segments");
    }

    /// A 40-digit EXTINF is an infinite f32; a huge target duration panicked `Duration::from_secs_f64` in
    /// the session's reload timer.
    #[test]
    fn infinite_and_absurd_durations_are_refused() {
        let head = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n";
        let huge = format!("{head}#EXTINF:{},\na.ts\n", "9".repeat(40));
        refused(&huge, &base(), "EXTINF of segment 0");
        refused(&format!("{head}#EXTINF:86400.5,\na.ts\n"), &base(), "EXTINF");
        refused("#EXTM3U\n#EXT-X-TARGETDURATION:18446744073709551615\n#EXTINF:2,\na.ts\n", &base(), "TARGETDURATION");
        assert!(media(&format!("{head}#EXTINF:86400,\na.ts\n"), &base()).is_ok());
    }

    /// m3u8-rs skips a value it cannot read, or reads what is left of the line as a segment URI.
    #[test]
    fn unreadable_tag_values_are_refused_not_skipped() {
        let head = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n";
        for (text, naming) in [
            // Was a segment of 0 s.
            (format!("{head}#EXTINF:-1,\na.ts\n"), "line 3: #EXTINF"),
            (format!("{head}#EXTINF:nan,\na.ts\n"), "#EXTINF"),
            // Was a segment without a byte range: the whole file.
            (format!("{head}#EXTINF:2,\n#EXT-X-BYTERANGE:18446744073709551616@0\na.ts\n"), "#EXT-X-BYTERANGE"),
            // Was the first segment numbered 0.
            (format!("#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:-5\n{head}#EXTINF:2,\na.ts\n"), "#EXT-X-MEDIA-SEQUENCE"),
            // Were an extra segment `abc`, `b`, and `BYTERANGE=""` (with the init section read whole).
            ("#EXTM3U\n#EXT-X-TARGETDURATION:10abc\n#EXTINF:2,\na.ts\n".to_string(), "#EXT-X-TARGETDURATION"),
            (format!("{head}#EXTINF:2,a,b\na.ts\n"), "#EXTINF"),
            (format!("{head}#EXTINF:1.5 ,title\na.ts\n"), "#EXTINF"),
            (format!("{head}#EXT-X-MAP:URI=\"i.mp4\",BYTERANGE=\"\"\n#EXTINF:2,\na.m4s\n"), "#EXT-X-MAP"),
        ] {
            refused(&text, &base(), naming);
        }
        // What m3u8-rs does read stays accepted: CRLF, trailing spaces, no title, a title.
        let fine = "#EXTM3U\r\n#EXT-X-TARGETDURATION:2 \r\n#EXTINF:2\r\na.ts\r\n#EXTINF:1.5,title \r\nb.ts\r\n";
        assert_eq!(media(fine, &base()).map(|m| m.segments.len()), Ok(2));
    }

    /// An EXT-X-STREAM-INF m3u8-rs cannot read (BANDWIDTH past u64) was skipped, and the URI after it
    /// replaced the previous variant's URI.
    #[test]
    fn an_unreadable_stream_inf_is_refused() {
        let text = "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\na.m3u8\n#EXT-X-STREAM-INF:BANDWIDTH=99999999999999999999\nb.m3u8\n";
        refused(text, &base(), "EXT-X-STREAM-INF");
    }

    /// `u128::from_str_radix` takes a sign: `IV=0x+1` was the IV 1.
    #[test]
    fn a_signed_iv_is_refused() {
        assert_eq!(parse_iv("0x+1"), None);
        assert_eq!(parse_iv("0X1f").map(|iv| iv[15]), Some(0x1f));
        let text = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-KEY:METHOD=AES-128,URI=\"k\",IV=0x+1\n#EXTINF:2,\na.ts\n";
        refused(text, &base(), "bad IV");
    }

    /// m3u8-rs stops at a line it cannot read and returns what it read before: the playlist lost its
    /// end (EXT-X-ENDLIST included) without a word.
    #[test]
    fn an_unreadable_line_is_refused_not_truncated() {
        let text =
            b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\na.ts\n\xff\xfe.ts\n#EXTINF:2,\nb.ts\n#EXT-X-ENDLIST\n";
        let error = parse(text, &base()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("unreadable from line 5"), "{error}");
        let lone_cr = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\na.ts\rb.ts\n#EXT-X-ENDLIST\n";
        refused(lone_cr, &base(), "unreadable from line 4");
    }

    /// Resolved URIs are absolute and fetchable from the playlist's scheme, whatever the text.
    fn any_uri() -> impl Strategy<Value = String> {
        prop_oneof![uri(), ".{0,24}", "[a-z]{1,6}:[/a-z.%?#@:\\[\\]]{0,16}"]
    }

    /// A generated segment: every value from the hostile pools, and what the playlist says with them.
    #[derive(Debug, Clone)]
    struct Generated {
        duration: String,
        title: &'static str,
        range: Option<(String, Option<String>)>,
        uri: &'static str,
        discontinuity: bool,
    }

    /// Mostly well-formed values, so that reading back is exercised as much as refusing.
    fn mostly(valid: BoxedStrategy<String>, hostile: BoxedStrategy<String>) -> impl Strategy<Value = String> {
        prop_oneof![6 => valid, 1 => hostile]
    }

    fn generated() -> impl Strategy<Value = Generated> {
        let seconds = prop_oneof![
            (0..20_000u32).prop_map(|n| format!("{}.{:03}", n / 1000, n % 1000)),
            (0..20u32).prop_map(|n| n.to_string()),
        ];
        let duration = mostly(seconds.boxed(), duration().boxed());
        let small = || mostly((0..5_000u64).prop_map(|n| n.to_string()).boxed(), number().boxed());
        let range = proptest::option::of((small(), proptest::option::of(small())));
        let title = prop_oneof![8 => select(vec!["", "t", "é"]), 1 => Just("a,b")];
        (duration, title, range, select(vec!["s.ts", "all.ts"]), any::<bool>()).prop_map(
            |(duration, title, range, uri, discontinuity)| Generated { duration, title, range, uri, discontinuity },
        )
    }

    fn sequence_number() -> impl Strategy<Value = String> {
        prop_oneof![4 => (0..1_000_000u64).prop_map(|n| n.to_string()), 1 => number()]
    }

    fn target() -> impl Strategy<Value = String> {
        mostly((0..20u64).prop_map(|n| n.to_string()).boxed(), number().boxed())
    }

    /// RFC 8216 §4.2 decimal-integer.
    fn integer_value(text: &str) -> Option<u64> {
        text.bytes().all(|b| b.is_ascii_digit()).then(|| text.parse().ok()).flatten()
    }

    /// One segment as read back: sequence, seconds, range, discontinuity.
    type ReadBack = (u64, f64, Option<Range>, bool);

    /// What the playlist must parse to (target duration and segments), or None if it must be refused:
    /// computed from what was generated.
    fn expected(sequence: &str, target: &str, segments: &[Generated]) -> Option<(f64, Vec<ReadBack>)> {
        let target = integer_value(target)? as f64;
        if target > MAX_DURATION_S {
            return None;
        }
        let first = integer_value(sequence)?;
        let mut previous: Option<(&str, u64)> = None;
        let mut out = Vec::new();
        for (i, segment) in segments.iter().enumerate() {
            let number = first.checked_add(i as u64).filter(|&n| n < u64::MAX)?;
            let (whole, fraction) = segment.duration.split_once('.').unwrap_or((&segment.duration, "0"));
            let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
            if !digits(whole) || !digits(fraction) || segment.title.contains(',') {
                return None;
            }
            let seconds = f64::from(segment.duration.parse::<f32>().ok()?);
            if !(0.0..=MAX_DURATION_S).contains(&seconds) {
                return None;
            }
            let range = match &segment.range {
                None => None,
                Some((length, offset)) => {
                    let length = integer_value(length).filter(|&l| l > 0)?;
                    let offset = match offset {
                        Some(offset) => integer_value(offset)?,
                        None => previous.filter(|(uri, _)| *uri == segment.uri)?.1,
                    };
                    offset.checked_add(length)?;
                    Some(Range { offset, length })
                }
            };
            previous = range.map(|r| (segment.uri, r.offset + r.length));
            out.push((number, seconds, range, segment.discontinuity));
        }
        Some((target, out))
    }

    proptest! {
        #![proptest_config(config(3_000))]

        /// A media playlist written from generated values reads back exactly those values, or is refused:
        /// never silently read as something else.
        #[test]
        fn generated_media_playlists_read_back_exactly_or_are_refused(
            sequence in sequence_number(), target in target(), segments in proptest::collection::vec(generated(), 0..6),
        ) {
            let mut text = format!("#EXTM3U\n#EXT-X-TARGETDURATION:{target}\n#EXT-X-MEDIA-SEQUENCE:{sequence}\n");
            for segment in &segments {
                if segment.discontinuity {
                    text.push_str("#EXT-X-DISCONTINUITY\n");
                }
                text.push_str(&format!("#EXTINF:{},{}\n", segment.duration, segment.title));
                match &segment.range {
                    Some((length, Some(offset))) => text.push_str(&format!("#EXT-X-BYTERANGE:{length}@{offset}\n")),
                    Some((length, None)) => text.push_str(&format!("#EXT-X-BYTERANGE:{length}\n")),
                    None => {}
                }
                text.push_str(&format!("{}\n", segment.uri));
            }
            text.push_str("#EXT-X-ENDLIST\n");
            let base = base();
            let result = parse(text.as_bytes(), &base);
            check(&result, &base)?;
            match (expected(&sequence, &target, &segments), result) {
                (None, result) => prop_assert!(result.is_err(), "{text}\nread as {result:?}"),
                (Some((target, want)), Ok(Parsed::Media(media))) => {
                    prop_assert!(media.ended);
                    prop_assert_eq!(media.target_duration_s, target);
                    let got: Vec<_> = media.segments.iter().map(|s| (s.sequence, s.duration_s, s.range, s.discontinuity)).collect();
                    prop_assert_eq!(got, want, "{}", text);
                }
                (Some(_), other) => prop_assert!(false, "{text}\nrefused: {other:?}"),
            }
        }

        /// Whatever the URI text, a resolved URI is absolute and fetchable from that playlist.
        #[test]
        fn resolved_uris_are_absolute_and_fetchable(uri in any_uri(), base in bases()) {
            match resolve(&base, &uri) {
                Ok(url) => {
                    prop_assert!(fetchable(&base, &url) && !url.cannot_be_a_base(), "{uri:?} -> {url}");
                    // An empty reference is the playlist itself (RFC 3986 §5.2): never a resource of it.
                    prop_assert!(!uri.trim().is_empty(), "{uri:?} -> {url}");
                    // The playlist's query (a signed URL's token) goes to no other host than its own.
                    if let (Some(query), false) = (base.query(), same_origin(&base, &url)) {
                        prop_assert!(url.query() != Some(query) || uri.contains(query), "{uri:?} -> {url}");
                    }
                }
                Err(e) => prop_assert!(e.to_string().contains(base.as_str())),
            }
        }
    }
}
