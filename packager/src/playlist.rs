//! HLS playlists (built with m3u8-rs), the bitrate figures they advertise, and atomic file writes.

use std::io::Write;
use std::path::Path;

use m3u8_rs::{
    AlternativeMedia, AlternativeMediaType, Key, KeyMethod, Map, MasterPlaylist, MediaPlaylist, MediaPlaylistType,
    MediaSegment, Resolution, VariantStream,
};

/// One finished media segment as a playlist lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentRecord {
    pub sequence: u64,
    /// File name inside the rendition folder.
    pub uri: String,
    /// Seconds.
    pub duration: f64,
    /// Bytes on disk (after encryption, if any).
    pub bytes: u64,
}

/// Measured bitrates of a rendition, in bits per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bitrates {
    pub average: u64,
    pub peak: u64,
}

/// AVERAGE-BANDWIDTH is all bytes over all media time; BANDWIDTH is the highest bitrate of any one
/// segment, ignoring segments shorter than half the nominal duration (a short final segment would
/// otherwise advertise a peak the stream never sustains) unless no other segment exists.
pub fn measure_bitrates(segments: &[SegmentRecord], nominal_duration: f64) -> Bitrates {
    let total_bytes: u64 = segments.iter().map(|s| s.bytes).sum();
    let total_seconds: f64 = segments.iter().map(|s| s.duration).sum();
    if total_seconds <= 0.0 {
        return Bitrates::default();
    }
    let rate = |s: &SegmentRecord| s.bytes as f64 * 8.0 / s.duration;
    let full_length = |s: &&SegmentRecord| s.duration >= nominal_duration / 2.0 && s.duration > 0.0;
    let peak = if segments.iter().any(|s| full_length(&s)) {
        segments.iter().filter(full_length).map(rate).fold(0.0, f64::max)
    } else {
        segments.iter().filter(|s| s.duration > 0.0).map(rate).fold(0.0, f64::max)
    };
    Bitrates { average: (total_bytes as f64 * 8.0 / total_seconds).round() as u64, peak: peak.round() as u64 }
}

/// How far a video segment may run over a whole second before EXT-X-TARGETDURATION counts the next
/// one: timestamp noise.
pub const VIDEO_DURATION_SLACK: f64 = 0.01;

/// EXT-X-TARGETDURATION: whole seconds that no segment exceeds once EXTINF is rounded (RFC 8216
/// 4.3.3.1), tolerating timestamp noise of 10 ms.
pub fn target_duration(segments: &[SegmentRecord], nominal_duration: f64) -> u64 {
    target_duration_with_slack(segments, nominal_duration, VIDEO_DURATION_SLACK)
}

/// [`target_duration`] tolerating `slack` seconds over a whole second (under half a second, so EXTINF
/// rounded to the nearest integer still never exceeds the target). An audio segment cut on the AAC
/// frame nearest a video boundary can be up to one frame longer than the video segment.
pub fn target_duration_with_slack(segments: &[SegmentRecord], nominal_duration: f64, slack: f64) -> u64 {
    let slack = slack.clamp(0.0, 0.49);
    segments.iter().map(|s| (s.duration - slack).ceil()).fold((nominal_duration - slack).ceil(), f64::max).max(1.0)
        as u64
}

/// How the media playlist presents its segments.
#[derive(Debug, Clone, PartialEq)]
pub enum Presentation {
    /// Complete: PLAYLIST-TYPE:VOD and ENDLIST.
    Vod,
    /// A sliding live window: no ENDLIST until `ended`.
    Live { ended: bool },
}

/// Options shared by every playlist of one package.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaOptions {
    /// `init.mp4` for fMP4 (EXT-X-MAP), `None` for MPEG-TS.
    pub init_uri: Option<String>,
    /// URI of the AES-128 key relative to the media playlist, when encrypting.
    pub key_uri: Option<String>,
    pub nominal_duration: f64,
    /// Seconds a segment may run over a whole second without raising EXT-X-TARGETDURATION
    /// ([`VIDEO_DURATION_SLACK`] for video; about one AAC frame for the separate audio rendition).
    pub duration_slack: f64,
}

/// EXT-X-VERSION: 6 is needed for EXT-X-MAP in a normal playlist, 3 for decimal EXTINF.
pub fn protocol_version(options: &MediaOptions) -> usize {
    if options.init_uri.is_some() {
        6
    } else {
        3
    }
}

pub fn media_playlist(
    segments: &[SegmentRecord],
    options: &MediaOptions,
    presentation: &Presentation,
) -> MediaPlaylist {
    let mut playlist_segments: Vec<MediaSegment> = segments
        .iter()
        .map(|s| MediaSegment { uri: s.uri.clone(), duration: s.duration as f32, ..MediaSegment::empty() })
        .collect();
    if let Some(first) = playlist_segments.first_mut() {
        // m3u8-rs writes EXT-X-MAP before EXT-X-KEY, so the init segment stays in the clear.
        first.map = options.init_uri.as_ref().map(|uri| Map { uri: uri.clone(), ..Map::default() });
        first.key = options.key_uri.as_ref().map(|uri| Key {
            method: KeyMethod::AES128,
            uri: Some(uri.clone()),
            ..Key::default()
        });
    }
    MediaPlaylist {
        version: Some(protocol_version(options)),
        target_duration: target_duration_with_slack(segments, options.nominal_duration, options.duration_slack),
        media_sequence: segments.first().map_or(0, |s| s.sequence),
        segments: playlist_segments,
        end_list: matches!(presentation, Presentation::Vod | Presentation::Live { ended: true }),
        playlist_type: matches!(presentation, Presentation::Vod).then_some(MediaPlaylistType::Vod),
        independent_segments: true,
        ..MediaPlaylist::default()
    }
}

/// One rendition as the master playlist advertises it.
#[derive(Debug, Clone, PartialEq)]
pub struct VariantInfo {
    pub uri: String,
    pub bitrates: Bitrates,
    pub width: u32,
    pub height: u32,
    pub codecs: String,
    pub frame_rate: f64,
}

/// The separate audio rendition, as the master playlist's EXT-X-MEDIA tag describes it (RFC 8216
/// 4.3.4.1).
#[derive(Debug, Clone, PartialEq)]
pub struct AudioRendition {
    /// GROUP-ID, which every variant names in its AUDIO attribute.
    pub group_id: String,
    pub name: String,
    /// RFC 5646 language tag (`und` when unknown).
    pub language: String,
    pub channels: u32,
    /// The audio media playlist, relative to the master.
    pub uri: String,
}

/// The master playlist, variants in ascending bandwidth order.
pub fn master_playlist(variants: &[VariantInfo], version: usize) -> MasterPlaylist {
    master_playlist_with_audio(variants, None, version)
}

/// The master playlist, with the audio in its own rendition group when `audio` is given: one
/// EXT-X-MEDIA TYPE=AUDIO (DEFAULT and AUTOSELECT, so every player picks it) and AUDIO=group on each
/// variant. The variants' BANDWIDTH and CODECS must already cover the audio (RFC 8216 4.3.4.2: the
/// renditions played together).
pub fn master_playlist_with_audio(
    variants: &[VariantInfo],
    audio: Option<&AudioRendition>,
    version: usize,
) -> MasterPlaylist {
    let mut sorted: Vec<&VariantInfo> = variants.iter().collect();
    sorted.sort_by_key(|v| (v.bitrates.peak, v.bitrates.average));
    MasterPlaylist {
        version: Some(version),
        independent_segments: true,
        alternatives: audio
            .map(|a| AlternativeMedia {
                media_type: AlternativeMediaType::Audio,
                uri: Some(a.uri.clone()),
                group_id: a.group_id.clone(),
                language: Some(a.language.clone()),
                name: a.name.clone(),
                default: true,
                autoselect: true,
                channels: Some(a.channels.to_string()),
                ..AlternativeMedia::default()
            })
            .into_iter()
            .collect(),
        variants: sorted
            .into_iter()
            .map(|v| VariantStream {
                uri: v.uri.clone(),
                bandwidth: v.bitrates.peak,
                average_bandwidth: Some(v.bitrates.average),
                codecs: Some(v.codecs.clone()),
                resolution: Some(Resolution { width: u64::from(v.width), height: u64::from(v.height) }),
                frame_rate: Some((v.frame_rate * 1000.0).round() / 1000.0),
                audio: audio.map(|a| a.group_id.clone()),
                ..VariantStream::default()
            })
            .collect(),
        ..MasterPlaylist::default()
    }
}

pub fn render_media(playlist: &MediaPlaylist) -> Vec<u8> {
    // EXTINF with millisecond precision (m3u8-rs otherwise prints every digit of the f32).
    m3u8_rs::WRITE_OPT_FLOAT_PRECISION.store(3, std::sync::atomic::Ordering::Relaxed);
    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = playlist.write_to(&mut out);
    out
}

pub fn render_master(playlist: &MasterPlaylist) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = playlist.write_to(&mut out);
    out
}

/// Writes `bytes` to a temporary file beside `path` and renames it into place, so readers (players,
/// the edge) see either the old file or the complete new one, never a partial one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has no file name"))?;
    let temp = path.with_file_name(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_data()?;
        std::fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(sequence: u64, duration: f64, bytes: u64) -> SegmentRecord {
        SegmentRecord { sequence, uri: format!("seg_{sequence:05}.ts"), duration, bytes }
    }

    #[test]
    fn bitrates_from_bytes_and_durations() {
        let segments = [seg(0, 2.0, 100_000), seg(1, 2.0, 150_000), seg(2, 0.5, 60_000)];
        let rates = measure_bitrates(&segments, 2.0);
        // 310 kB over 4.5 s
        assert_eq!(rates.average, (310_000.0 * 8.0 / 4.5_f64).round() as u64);
        // The 0.5 s tail (960 kbit/s) is ignored for the peak; the 2 s segment at 600 kbit/s counts.
        assert_eq!(rates.peak, 600_000);
        assert_eq!(measure_bitrates(&[seg(0, 0.5, 1000)], 2.0).peak, 16_000);
        assert_eq!(measure_bitrates(&[], 2.0), Bitrates::default());
    }

    #[test]
    fn target_duration_covers_every_segment() {
        assert_eq!(target_duration(&[seg(0, 2.0, 1), seg(1, 2.0, 1)], 2.0), 2);
        assert_eq!(target_duration(&[seg(0, 1.001, 1)], 1.0), 1);
        assert_eq!(target_duration(&[seg(0, 2.4, 1)], 2.0), 3);
        assert_eq!(target_duration(&[], 0.5), 1);
        // An audio segment one 21.3 ms AAC frame over 2 s keeps the video's target with its slack.
        assert_eq!(target_duration(&[seg(0, 2.0213, 1)], 2.0), 3);
        assert_eq!(target_duration_with_slack(&[seg(0, 2.0213, 1)], 2.0, 0.022), 2);
        assert_eq!(target_duration_with_slack(&[seg(0, 2.4, 1)], 2.0, 0.022), 3);
        // Slack never reaches half a second, where rounding EXTINF would exceed the target.
        assert_eq!(target_duration_with_slack(&[seg(0, 2.6, 1)], 2.0, 5.0), 3);
    }

    #[test]
    fn vod_playlist_with_map_and_key() {
        let options = MediaOptions {
            init_uri: Some("init.mp4".into()),
            key_uri: Some("../enc.key".into()),
            nominal_duration: 2.0,
            duration_slack: VIDEO_DURATION_SLACK,
        };
        let text = String::from_utf8(render_media(&media_playlist(
            &[seg(0, 2.0, 10), seg(1, 1.5, 10)],
            &options,
            &Presentation::Vod,
        )))
        .unwrap();
        for needle in [
            "#EXT-X-VERSION:6",
            "#EXT-X-TARGETDURATION:2",
            "#EXT-X-PLAYLIST-TYPE:VOD",
            "#EXT-X-INDEPENDENT-SEGMENTS",
            "#EXT-X-MAP:URI=\"init.mp4\"",
            "#EXT-X-KEY:METHOD=AES-128,URI=\"../enc.key\"",
            "#EXT-X-ENDLIST",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
        assert!(text.find("#EXT-X-MAP").unwrap() < text.find("#EXT-X-KEY").unwrap());
        assert_eq!(text.matches("#EXT-X-KEY").count(), 1);
    }

    #[test]
    fn live_window_advances_media_sequence_without_endlist() {
        let options =
            MediaOptions { init_uri: None, key_uri: None, nominal_duration: 2.0, duration_slack: VIDEO_DURATION_SLACK };
        let playlist =
            media_playlist(&[seg(5, 2.0, 1), seg(6, 2.0, 1)], &options, &Presentation::Live { ended: false });
        let text = String::from_utf8(render_media(&playlist)).unwrap();
        assert!(text.contains("#EXT-X-MEDIA-SEQUENCE:5"));
        assert!(!text.contains("ENDLIST"));
        assert!(!text.contains("PLAYLIST-TYPE"));
        let ended = media_playlist(&[seg(5, 2.0, 1)], &options, &Presentation::Live { ended: true });
        assert!(ended.end_list);
    }

    #[test]
    fn master_lists_variants_in_ascending_bandwidth() {
        let variant = |uri: &str, peak: u64| VariantInfo {
            uri: uri.into(),
            bitrates: Bitrates { average: peak - 1, peak },
            width: 426,
            height: 240,
            codecs: "avc1.64001e,mp4a.40.2".into(),
            frame_rate: 30.0,
        };
        let master = master_playlist(&[variant("b/index.m3u8", 900), variant("a/index.m3u8", 400)], 3);
        let text = String::from_utf8(render_master(&master)).unwrap();
        let a = text.find("a/index.m3u8").unwrap();
        assert!(a < text.find("b/index.m3u8").unwrap());
        assert!(text.contains(
            "BANDWIDTH=400,AVERAGE-BANDWIDTH=399,CODECS=\"avc1.64001e,mp4a.40.2\",RESOLUTION=426x240,FRAME-RATE=30"
        ));
    }

    #[test]
    fn master_with_a_separate_audio_group() {
        let variant = |uri: &str, peak: u64| VariantInfo {
            uri: uri.into(),
            bitrates: Bitrates { average: peak - 1, peak },
            width: 426,
            height: 240,
            codecs: "avc1.64001e,mp4a.40.2".into(),
            frame_rate: 30.0,
        };
        let audio = AudioRendition {
            group_id: "aud".into(),
            name: "Audio".into(),
            language: "pt-BR".into(),
            channels: 2,
            uri: "audio/index.m3u8".into(),
        };
        let master =
            master_playlist_with_audio(&[variant("b/index.m3u8", 900), variant("a/index.m3u8", 400)], Some(&audio), 6);
        let text = String::from_utf8(render_master(&master)).unwrap();
        let media: Vec<&str> = text.lines().filter(|l| l.starts_with("#EXT-X-MEDIA:")).collect();
        assert_eq!(
            media,
            ["#EXT-X-MEDIA:TYPE=AUDIO,URI=\"audio/index.m3u8\",GROUP-ID=\"aud\",LANGUAGE=\"pt-BR\",NAME=\"Audio\",\
              DEFAULT=YES,AUTOSELECT=YES,CHANNELS=\"2\""]
        );
        let variants: Vec<&str> = text.lines().filter(|l| l.starts_with("#EXT-X-STREAM-INF:")).collect();
        assert_eq!(variants.len(), 2);
        assert!(variants.iter().all(|v| v.contains("AUDIO=\"aud\"")), "{text}");
        // The EXT-X-MEDIA tag comes before the variants that refer to its group.
        assert!(text.find("#EXT-X-MEDIA:").unwrap() < text.find("#EXT-X-STREAM-INF:").unwrap());
        // Without audio nothing changes.
        let plain = String::from_utf8(render_master(&master_playlist(&[variant("a/index.m3u8", 400)], 6))).unwrap();
        assert!(!plain.contains("EXT-X-MEDIA") && !plain.contains("AUDIO="), "{plain}");
    }

    #[test]
    fn atomic_write_replaces_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.m3u8");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(write_atomically(&dir.path().join("missing/x"), b"").is_err());
    }
}
