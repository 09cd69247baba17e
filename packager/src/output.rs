//! Writing one rendition's files: segments (encrypted when asked), the fMP4 init segment, and its media
//! playlist — the whole list at the end for VOD, a sliding window after every segment for live.
//!
//! Low-latency live ([`RenditionWriter::with_low_latency`]): media arrives part by part. Each part is
//! written as a file of its own the moment it is made, then the playlist is republished listing it
//! (draft-pantos-hls-rfc8216bis §6.2.1: a part must be available when it is added to the playlist);
//! when a segment's last part is in, the whole segment (its parts, concatenated) is written too, for
//! players that do not read parts.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::crypto::{self, Key};
use crate::ll_hls::{self, Part, RenditionReport};
use crate::playlist::{self, MediaOptions, Presentation, SegmentRecord};

/// The file name of every media playlist inside its rendition folder.
pub const MEDIA_PLAYLIST: &str = "index.m3u8";
/// The fMP4 initialisation segment inside a rendition folder.
pub const INIT_SEGMENT: &str = "init.mp4";
/// The AES-128 key file inside the output folder.
pub const KEY_FILE: &str = "enc.key";

pub struct RenditionWriter {
    pub name: String,
    dir: PathBuf,
    extension: &'static str,
    options: MediaOptions,
    key: Option<Key>,
    /// `Some(n)`: live, the playlist lists the last `n` segments.
    live_window: Option<usize>,
    /// Every segment written so far (the live ones that were deleted included, for the summary).
    written: Vec<SegmentRecord>,
    /// Low-latency live: segments are published part by part.
    low_latency: Option<LowLatencyState>,
}

/// How a low-latency rendition cuts its segments into parts.
#[derive(Debug, Clone, PartialEq)]
pub struct LowLatencyLayout {
    /// Parts per segment (the last segment of a stream may have fewer).
    pub parts_per_segment: usize,
    /// EXT-X-PART-INF:PART-TARGET, the same in every rendition of a package.
    pub part_target: f64,
}

struct LowLatencyState {
    layout: LowLatencyLayout,
    /// The finished segments the playlist lists, with their parts.
    recent: Vec<ll_hls::Segment>,
    /// The parts of the segment being made, and its bytes so far.
    pending: Vec<Part>,
    pending_bytes: Vec<u8>,
    /// When the first frame of the segment being made was captured.
    pending_start: Option<SystemTime>,
    /// When the next part's first frame was captured: the first part's time plus every part's duration.
    next_start: Option<SystemTime>,
    /// The sibling renditions, as of the last part.
    reports: Vec<RenditionReport>,
    parts_written: usize,
}

impl RenditionWriter {
    /// Creates (or cleans) the rendition folder `out/<name>`, removing files an earlier run left.
    pub fn create(
        out: &Path,
        name: &str,
        extension: &'static str,
        options: MediaOptions,
        key: Option<Key>,
        live_window: Option<usize>,
    ) -> std::io::Result<Self> {
        let dir = out.join(name);
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let file = entry.file_name().to_string_lossy().into_owned();
            if is_our_file(&file) {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(Self {
            name: name.to_string(),
            dir,
            extension,
            options,
            key,
            live_window,
            written: Vec::new(),
            low_latency: None,
        })
    }

    /// Publishes this rendition part by part ([`RenditionWriter::add_part`]) with LL-HLS playlists.
    pub fn with_low_latency(mut self, layout: LowLatencyLayout) -> Self {
        self.low_latency = Some(LowLatencyState {
            layout,
            recent: Vec::new(),
            pending: Vec::new(),
            pending_bytes: Vec::new(),
            pending_start: None,
            next_start: None,
            reports: Vec::new(),
            parts_written: 0,
        });
        self
    }

    /// After a failed run: removes the muxer's unfinished files (finished segments stay; without a
    /// playlist nothing points at them and the next run replaces them).
    pub fn discard_unfinished(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".partial-") || (name.starts_with('.') && name.contains(".tmp-")) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn write_init(&self, bytes: &[u8]) -> std::io::Result<()> {
        playlist::write_atomically(&self.dir.join(INIT_SEGMENT), bytes)
    }

    /// Stores the next segment; for live also republishes the playlist and deletes segments that left
    /// the window long enough ago.
    pub fn add_segment(&mut self, bytes: &[u8], duration: f64) -> std::io::Result<SegmentRecord> {
        let sequence = self.written.len() as u64;
        let uri = format!("seg_{sequence:05}.{}", self.extension);
        let stored = match &self.key {
            Some(key) => crypto::encrypt_segment(key, sequence, bytes),
            None => bytes.to_vec(),
        };
        playlist::write_atomically(&self.dir.join(&uri), &stored)?;
        let record = SegmentRecord { sequence, uri, duration, bytes: stored.len() as u64 };
        self.written.push(record.clone());
        if self.live_window.is_some() {
            self.write_playlist(false)?;
            self.expire_before(sequence)?;
        }
        Ok(record)
    }

    /// Live: deletes the segment (and its parts) that left the window long enough before `sequence`
    /// was added. RFC 8216 6.2.2: a segment must stay available for a while after it leaves the
    /// playlist (players may have just loaded the previous version); it is kept one more window. For
    /// parts that is more than the three target durations the HLS draft asks (§6.2.2) once their tags
    /// are gone, which happens before their segment leaves the window.
    fn expire_before(&self, sequence: u64) -> std::io::Result<()> {
        let Some(window) = self.live_window else { return Ok(()) };
        let Some(expired) = usize::try_from(sequence).ok().and_then(|s| s.checked_sub(2 * window)) else {
            return Ok(());
        };
        let mut doomed = vec![self.written[expired].uri.clone()];
        if let Some(ll) = &self.low_latency {
            doomed
                .extend((0..ll.layout.parts_per_segment).map(|i| ll_hls::part_uri(expired as u64, i, self.extension)));
        }
        for name in doomed {
            match std::fs::remove_file(self.dir.join(name)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Low-latency: stores the next part of `duration` seconds as its own file, closes its segment
    /// when it is the segment's last (writing the whole segment too), then republishes the playlist
    /// with `reports` for the sibling renditions. `start` is when the first part's first frame was
    /// captured (later parts' times follow from the durations). Every part starts with a keyframe.
    pub fn add_part(
        &mut self,
        bytes: &[u8],
        duration: f64,
        start: Option<SystemTime>,
        reports: Vec<RenditionReport>,
    ) -> std::io::Result<()> {
        let sequence = self.written.len() as u64;
        let extension = self.extension;
        let Some(ll) = self.low_latency.as_mut().filter(|_| self.key.is_none()) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "parts are written by an unencrypted low-latency rendition only",
            ));
        };
        let uri = ll_hls::part_uri(sequence, ll.pending.len(), extension);
        playlist::write_atomically(&self.dir.join(&uri), bytes)?;
        if ll.next_start.is_none() {
            ll.next_start = start;
        }
        if ll.pending.is_empty() {
            ll.pending_start = ll.next_start;
        }
        ll.next_start = ll.next_start.map(|t| t + Duration::from_secs_f64(duration.max(0.0)));
        ll.pending.push(Part { uri, duration, independent: true });
        ll.pending_bytes.extend_from_slice(bytes);
        ll.parts_written += 1;
        ll.reports = reports;
        if ll.pending.len() >= ll.layout.parts_per_segment {
            self.close_segment()?;
        }
        self.write_playlist(false)
    }

    /// Low-latency, at the end of the stream: the parts of an unfinished segment become the last
    /// (shorter) segment.
    pub fn finish_parts(&mut self) -> std::io::Result<()> {
        if self.low_latency.as_ref().is_some_and(|ll| !ll.pending.is_empty()) {
            self.close_segment()?;
        }
        Ok(())
    }

    /// Writes the segment made of the pending parts and moves them into the playlist's window.
    fn close_segment(&mut self) -> std::io::Result<()> {
        let sequence = self.written.len() as u64;
        let Some(ll) = self.low_latency.as_mut() else { return Ok(()) };
        let uri = format!("seg_{sequence:05}.{}", self.extension);
        let bytes = std::mem::take(&mut ll.pending_bytes);
        playlist::write_atomically(&self.dir.join(&uri), &bytes)?;
        let parts = std::mem::take(&mut ll.pending);
        let duration = parts.iter().map(|p| p.duration).sum();
        self.written.push(SegmentRecord { sequence, uri: uri.clone(), duration, bytes: bytes.len() as u64 });
        ll.recent.push(ll_hls::Segment { sequence, uri, duration, parts, program_date_time: ll.pending_start.take() });
        if let Some(window) = self.live_window {
            let excess = ll.recent.len().saturating_sub(window);
            ll.recent.drain(..excess);
        }
        self.expire_before(sequence)
    }

    /// Low-latency: the media sequence number and index of the last part written.
    pub fn last_part(&self) -> Option<(u64, u64)> {
        let ll = self.low_latency.as_ref()?;
        if let Some(index) = ll.pending.len().checked_sub(1) {
            return Some((self.written.len() as u64, index as u64));
        }
        let last = ll.recent.last()?;
        Some((last.sequence, last.parts.len().saturating_sub(1) as u64))
    }

    /// Low-latency: parts written so far, in all segments.
    pub fn parts_written(&self) -> usize {
        self.low_latency.as_ref().map_or(0, |ll| ll.parts_written)
    }

    /// Whether a playlist with media in it has been published.
    pub fn has_media(&self) -> bool {
        !self.written.is_empty() || self.parts_written() > 0
    }

    /// The segments the playlist lists now.
    pub fn listed(&self) -> &[SegmentRecord] {
        match self.live_window {
            Some(window) => &self.written[self.written.len().saturating_sub(window)..],
            None => &self.written,
        }
    }

    pub fn written(&self) -> &[SegmentRecord] {
        &self.written
    }

    /// Writes `index.m3u8` atomically; `ended` adds ENDLIST to a live playlist.
    pub fn write_playlist(&self, ended: bool) -> std::io::Result<()> {
        if let Some(ll) = &self.low_latency {
            let next_sequence = self.written.len() as u64;
            let hint = ll_hls::part_uri(next_sequence, ll.pending.len(), self.extension);
            let text = ll_hls::render(&ll_hls::Playlist {
                segments: &ll.recent,
                next_sequence,
                in_progress: &ll.pending,
                in_progress_start: ll.pending_start,
                preload_hint: Some(&hint),
                target_duration: playlist::target_duration_with_slack(
                    self.listed(),
                    self.options.nominal_duration,
                    self.options.duration_slack,
                ),
                part_target: ll.layout.part_target,
                map_uri: self.options.init_uri.as_deref(),
                version: playlist::protocol_version(&self.options),
                reports: &ll.reports,
                ended,
            });
            return playlist::write_atomically(&self.dir.join(MEDIA_PLAYLIST), text.as_bytes());
        }
        let presentation = match self.live_window {
            Some(_) => Presentation::Live { ended },
            None => Presentation::Vod,
        };
        let media = playlist::media_playlist(self.listed(), &self.options, &presentation);
        playlist::write_atomically(&self.dir.join(MEDIA_PLAYLIST), &playlist::render_media(&media))
    }
}

/// Files this packager writes into a rendition folder (and so may replace).
fn is_our_file(name: &str) -> bool {
    name == MEDIA_PLAYLIST
        || name == INIT_SEGMENT
        || (name.starts_with("seg_") && (name.ends_with(".ts") || name.ends_with(".m4s")))
        || name.starts_with(".partial-")
        || (name.starts_with('.') && name.contains(".tmp-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> MediaOptions {
        MediaOptions {
            init_uri: None,
            key_uri: None,
            nominal_duration: 1.0,
            duration_slack: crate::playlist::VIDEO_DURATION_SLACK,
        }
    }

    #[test]
    fn vod_writes_segments_and_a_complete_playlist() {
        let out = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(out.path().join("240p")).unwrap();
        std::fs::write(out.path().join("240p/seg_00009.ts"), b"old").unwrap();
        std::fs::write(out.path().join("240p/notes.txt"), b"keep").unwrap();
        let mut writer = RenditionWriter::create(out.path(), "240p", "ts", options(), None, None).unwrap();
        assert!(!out.path().join("240p/seg_00009.ts").exists(), "stale segment removed");
        assert!(out.path().join("240p/notes.txt").exists(), "foreign file kept");
        writer.add_segment(b"aaaa", 1.0).unwrap();
        let second = writer.add_segment(b"bb", 0.5).unwrap();
        assert_eq!(second.uri, "seg_00001.ts");
        writer.write_playlist(true).unwrap();
        let text = std::fs::read_to_string(out.path().join("240p/index.m3u8")).unwrap();
        assert!(text.contains("seg_00000.ts") && text.contains("seg_00001.ts") && text.contains("#EXT-X-ENDLIST"));
        assert_eq!(std::fs::read(out.path().join("240p/seg_00001.ts")).unwrap(), b"bb");
    }

    #[test]
    fn encrypted_segments_decrypt_with_their_sequence_number() {
        let out = tempfile::tempdir().unwrap();
        let key = crypto::generate_key();
        let mut writer = RenditionWriter::create(out.path(), "480p", "ts", options(), Some(key), None).unwrap();
        writer.add_segment(b"first", 1.0).unwrap();
        let record = writer.add_segment(b"second", 1.0).unwrap();
        assert_eq!(record.bytes, 16);
        let stored = std::fs::read(out.path().join("480p/seg_00001.ts")).unwrap();
        assert_eq!(crypto::decrypt_segment(&key, 1, &stored).unwrap(), b"second");
    }

    /// Low-latency: each part is a file listed as soon as it is written, the next one is hinted, and a
    /// segment's file (its parts, concatenated) appears with its EXTINF once its last part is in.
    #[test]
    fn low_latency_publishes_parts_then_whole_segments() {
        let out = tempfile::tempdir().unwrap();
        let options = MediaOptions { init_uri: Some(INIT_SEGMENT.into()), nominal_duration: 2.0, ..options() };
        let layout = LowLatencyLayout { parts_per_segment: 2, part_target: 1.0 };
        let mut writer = RenditionWriter::create(out.path(), "240p", "m4s", options, None, Some(2))
            .unwrap()
            .with_low_latency(layout);
        let dir = out.path().join("240p");
        let read = || std::fs::read_to_string(dir.join(MEDIA_PLAYLIST)).unwrap();
        assert_eq!(writer.last_part(), None);
        assert!(!writer.has_media());
        let start = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        writer.add_part(b"p0", 1.0, Some(start), Vec::new()).unwrap();
        assert_eq!(std::fs::read(dir.join("seg_00000.part0.m4s")).unwrap(), b"p0");
        let text = read();
        assert!(text.contains("#EXT-X-PART:DURATION=1.000,URI=\"seg_00000.part0.m4s\",INDEPENDENT=YES"), "{text}");
        assert!(text.contains("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"seg_00000.part1.m4s\""), "{text}");
        assert!(text.contains("#EXT-X-PROGRAM-DATE-TIME:2001-09-09T01:46:40.000Z"), "{text}");
        assert!(!text.contains("#EXTINF") && !dir.join("seg_00000.m4s").exists());
        assert_eq!((writer.last_part(), writer.has_media()), (Some((0, 0)), true));

        let report = RenditionReport { uri: "../360p/index.m3u8".into(), last_msn: 0, last_part: 1 };
        writer.add_part(b"p1", 1.0, None, vec![report]).unwrap();
        assert_eq!(std::fs::read(dir.join("seg_00000.m4s")).unwrap(), b"p0p1");
        let text = read();
        assert!(text.contains("#EXTINF:2.000,\nseg_00000.m4s\n"), "{text}");
        assert!(text.contains("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"seg_00001.part0.m4s\""), "{text}");
        assert!(text.contains("#EXT-X-RENDITION-REPORT:URI=\"../360p/index.m3u8\",LAST-MSN=0,LAST-PART=1"));
        assert_eq!(writer.last_part(), Some((0, 1)));

        // Four more segments and one part: a window of two; segment 0 and its parts are deleted once
        // two windows have passed, segment 1 is kept one window after it left the playlist.
        for _ in 0..9 {
            writer.add_part(b"px", 1.0, None, Vec::new()).unwrap();
        }
        assert_eq!((writer.written().len(), writer.parts_written(), writer.last_part()), (5, 11, Some((5, 0))));
        let text = read();
        assert!(text.contains("#EXT-X-MEDIA-SEQUENCE:3\n"), "{text}");
        assert!(text.contains("#EXT-X-PROGRAM-DATE-TIME:2001-09-09T01:46:46.000Z"), "segment 3 starts 6 s in");
        for gone in ["seg_00000.m4s", "seg_00000.part0.m4s", "seg_00000.part1.m4s"] {
            assert!(!dir.join(gone).exists(), "{gone} not deleted");
        }
        assert!(dir.join("seg_00001.m4s").exists() && dir.join("seg_00001.part1.m4s").exists());

        // The end: the part in progress becomes a short last segment; ENDLIST, no hint.
        writer.finish_parts().unwrap();
        writer.write_playlist(true).unwrap();
        let text = read();
        assert!(text.ends_with("#EXTINF:1.000,\nseg_00005.m4s\n#EXT-X-ENDLIST\n"), "{text}");
        assert!(!text.contains("PRELOAD-HINT"));
        assert_eq!(writer.last_part(), Some((5, 0)));
        writer.finish_parts().unwrap();
        assert_eq!(writer.written().len(), 6, "finishing twice adds nothing");
    }

    #[test]
    fn parts_are_refused_by_other_writers() {
        let out = tempfile::tempdir().unwrap();
        let mut plain = RenditionWriter::create(out.path(), "a", "m4s", options(), None, Some(3)).unwrap();
        assert!(plain.add_part(b"x", 1.0, None, Vec::new()).is_err());
        let layout = LowLatencyLayout { parts_per_segment: 2, part_target: 1.0 };
        let key = Some(crypto::generate_key());
        let mut encrypted =
            RenditionWriter::create(out.path(), "b", "m4s", options(), key, Some(3)).unwrap().with_low_latency(layout);
        assert!(encrypted.add_part(b"x", 1.0, None, Vec::new()).is_err());
        assert!(!out.path().join("b/seg_00000.part0.m4s").exists());
    }

    #[test]
    fn live_window_slides_and_expires_old_segments() {
        let out = tempfile::tempdir().unwrap();
        let mut writer = RenditionWriter::create(out.path(), "240p", "ts", options(), None, Some(2)).unwrap();
        for _ in 0..6 {
            writer.add_segment(b"x", 1.0).unwrap();
        }
        let text = std::fs::read_to_string(out.path().join("240p/index.m3u8")).unwrap();
        assert!(text.contains("#EXT-X-MEDIA-SEQUENCE:4"), "{text}");
        assert!(!text.contains("seg_00003.ts") && text.contains("seg_00005.ts"));
        assert!(!text.contains("ENDLIST"));
        // Segments 0 and 1 left the window more than one window ago; 2 and 3 are still served.
        assert!(!out.path().join("240p/seg_00001.ts").exists());
        assert!(out.path().join("240p/seg_00002.ts").exists());
        writer.write_playlist(true).unwrap();
        let text = std::fs::read_to_string(out.path().join("240p/index.m3u8")).unwrap();
        assert!(text.contains("#EXT-X-ENDLIST"));
    }
}
