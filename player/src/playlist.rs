//! HLS playlists as the player uses them: parsed with m3u8-rs, relative URIs resolved, keys and init
//! sections carried forward to every segment they apply to, byte ranges made absolute.

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
}

/// One variant of a master playlist, in the master's order (`index`).
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub index: usize,
    pub uri: Url,
    pub bandwidth_bps: u64,
    pub average_bandwidth_bps: Option<u64>,
    pub resolution: Option<(u64, u64)>,
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
}

#[derive(Debug, Clone, PartialEq)]
pub struct MediaPlaylist {
    pub target_duration_s: f64,
    pub segments: Vec<Segment>,
    /// EXT-X-ENDLIST seen: nothing more will be added (VOD, or a live stream that ended).
    pub ended: bool,
}

impl MediaPlaylist {
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

    /// Whether the segments use fragmented MP4 (an init section).
    pub fn is_fmp4(&self) -> bool {
        self.segments.iter().any(|s| s.init.is_some())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    Master(Vec<Variant>),
    Media(MediaPlaylist),
}

fn resolve(base: &Url, uri: &str) -> Result<Url, PlaylistError> {
    base.join(uri.trim()).map_err(|e| PlaylistError::BadUri {
        url: base.to_string(),
        uri: uri.to_string(),
        reason: e.to_string(),
    })
}

/// Parses a playlist fetched from `base`.
pub fn parse(bytes: &[u8], base: &Url) -> Result<Parsed, PlaylistError> {
    let malformed = |reason: &str| PlaylistError::Malformed { url: base.to_string(), reason: reason.into() };
    if !bytes.trim_ascii_start().starts_with(b"#EXTM3U") {
        return Err(malformed("it does not start with #EXTM3U"));
    }
    match m3u8_rs::parse_playlist_res(bytes) {
        Ok(Playlist::MasterPlaylist(master)) => {
            let mut variants = Vec::new();
            for (index, variant) in master.variants.iter().enumerate() {
                if variant.is_i_frame {
                    continue;
                }
                variants.push(Variant {
                    index,
                    uri: resolve(base, &variant.uri)?,
                    bandwidth_bps: variant.bandwidth,
                    average_bandwidth_bps: variant.average_bandwidth,
                    resolution: variant.resolution.map(|r| (r.width, r.height)),
                });
            }
            if variants.is_empty() {
                return Err(malformed("master playlist lists no variant"));
            }
            Ok(Parsed::Master(variants))
        }
        Ok(Playlist::MediaPlaylist(media)) => Ok(Parsed::Media(media_playlist(media, base)?)),
        Err(e) => Err(malformed(&format!("parse error: {e:?}").chars().take(200).collect::<String>())),
    }
}

fn parse_iv(text: &str) -> Option<[u8; 16]> {
    let hex = text.trim().strip_prefix("0x").or_else(|| text.trim().strip_prefix("0X"))?;
    if hex.len() > 32 || hex.is_empty() {
        return None;
    }
    let value = u128::from_str_radix(hex, 16).ok()?;
    Some(value.to_be_bytes())
}

fn media_playlist(media: m3u8_rs::MediaPlaylist, base: &Url) -> Result<MediaPlaylist, PlaylistError> {
    let unsupported = |reason: String| PlaylistError::Unsupported { url: base.to_string(), reason };
    let mut segments = Vec::with_capacity(media.segments.len());
    let mut key: Option<(Url, Option<[u8; 16]>)> = None;
    let mut init: Option<InitSection> = None;
    let mut next_offset: Option<(Url, u64)> = None;
    for (position, segment) in media.segments.iter().enumerate() {
        let sequence = media.media_sequence + position as u64;
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
            init = Some(InitSection {
                uri: resolve(base, &map.uri)?,
                range: map.byte_range.as_ref().map(|r| Range { offset: r.offset.unwrap_or(0), length: r.length }),
            });
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
                next_offset = Some((uri.clone(), offset + r.length));
                Some(Range { offset, length: r.length })
            }
            None => {
                next_offset = None;
                None
            }
        };
        segments.push(Segment {
            sequence,
            uri,
            duration_s: f64::from(segment.duration),
            range,
            key: key.as_ref().map(|(uri, iv)| SegmentKey {
                uri: uri.clone(),
                iv: iv.unwrap_or_else(|| u128::from(sequence).to_be_bytes()),
            }),
            init: init.clone(),
            discontinuity: segment.discontinuity,
        });
    }
    Ok(MediaPlaylist { target_duration_s: media.target_duration as f64, segments, ended: media.end_list })
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
    fn master_variants_resolve_relative_uris_in_order() {
        let text = b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=800000,RESOLUTION=640x360\n360p/index.m3u8\n#EXT-X-STREAM-INF:BANDWIDTH=300000,AVERAGE-BANDWIDTH=280000\nhttp://cdn.test/240p.m3u8\n";
        let Ok(Parsed::Master(variants)) = parse(text, &base()) else { panic!("master expected") };
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
    fn garbage_is_refused_with_the_url() {
        let error = parse(b"<html>not found</html>", &base()).err().map(|e| e.to_string());
        assert!(error.is_some_and(|e| e.contains("example.test") && e.contains("EXTM3U")));
    }
}
