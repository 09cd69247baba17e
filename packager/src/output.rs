//! Writing one rendition's files: segments (encrypted when asked), the fMP4 init segment, and its media
//! playlist — the whole list at the end for VOD, a sliding window after every segment for live.

use std::path::{Path, PathBuf};

use crate::crypto::{self, Key};
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
        Ok(Self { name: name.to_string(), dir, extension, options, key, live_window, written: Vec::new() })
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
        if let Some(window) = self.live_window {
            self.write_playlist(false)?;
            // RFC 8216 6.2.2: a segment must stay available for a while after it leaves the
            // playlist (players may have just loaded the previous version); keep it one more window.
            if let Some(expired) = (sequence as usize).checked_sub(2 * window) {
                let path = self.dir.join(&self.written[expired].uri);
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(record)
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
