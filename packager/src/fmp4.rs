//! Cuts one continuous fragmented MP4 byte stream (as `mp4mux fragment-duration=...` writes it) into
//! an HLS/CMAF init segment (`ftyp` + `moov`) and media segments (`moof` + `mdat` runs) that each begin
//! with the fragment holding a video keyframe. Pure: bytes in, segments out.

use std::collections::HashMap;

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum Fmp4Error {
    #[error("MP4 box '{0}' has an impossible size {1}")]
    BadBoxSize(String, u64),
    #[error("MP4 box '{0}' is truncated")]
    Truncated(&'static str),
    #[error("media fragment before the 'moov' header")]
    FragmentBeforeHeader,
    #[error("the 'moov' header declares no video track")]
    NoVideoTrack,
    #[error("the stream ended inside an MP4 box ({0} bytes left over)")]
    TrailingBytes(usize),
    #[error("the 'moov' header does not hold exactly one audio track")]
    NotOneAudioTrack,
    #[error("'mdat' without the 'moof' that describes it")]
    MdatWithoutMoof,
    #[error("a track fragment uses {0}, which the audio re-segmenter does not read")]
    Unsupported(&'static str),
}

/// What the splitter produces, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// `ftyp` + `moov`: the EXT-X-MAP initialisation section.
    Init(Vec<u8>),
    /// One media segment, starting with the `moof` of a video keyframe (except perhaps leading audio).
    Segment(Vec<u8>),
}

/// Sample flag bit `sample_is_non_sync_sample` (ISO/IEC 14496-12 8.8.3.1).
const NON_SYNC: u32 = 0x0001_0000;

#[derive(Debug, Default)]
pub struct Fmp4Splitter {
    pending: Vec<u8>,
    init: Vec<u8>,
    header_done: bool,
    video_track: Option<u32>,
    /// `trex` default sample flags per track.
    trex_flags: HashMap<u32, u32>,
    current: Vec<u8>,
    current_has_video: bool,
    /// Video samples in `current`.
    current_video_samples: u64,
    /// Close a piece as soon as it holds this many video samples (one whole GOP), instead of when
    /// the next keyframe's fragment arrives.
    frames_per_piece: Option<u64>,
}

impl Fmp4Splitter {
    pub fn new() -> Self {
        Self::default()
    }

    /// A splitter that closes each piece once it holds `frames` video samples. With a fixed GOP of
    /// `frames` frames (and the keyframe rule as a fallback) the pieces are the same, but each leaves
    /// as soon as mp4mux writes its last frame rather than one fragment later, when the next
    /// keyframe's fragment closes: for low-latency parts that is up to a fragment duration sooner.
    pub fn with_frames_per_piece(frames: u32) -> Self {
        Self { frames_per_piece: Some(u64::from(frames.max(1))), ..Self::default() }
    }

    /// Feeds the next bytes of the stream; returns the pieces completed by them.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<Piece>, Fmp4Error> {
        self.pending.extend_from_slice(data);
        let mut out = Vec::new();
        let mut consumed = 0;
        while let Some((kind, len)) = box_header(&self.pending[consumed..])? {
            if self.pending.len() - consumed < len {
                break;
            }
            let start = consumed;
            consumed += len;
            let whole = &self.pending[start..consumed];
            let payload = &whole[header_len(whole)..];
            match &kind {
                b"moov" => {
                    let (video, trex) = parse_moov(payload)?;
                    self.video_track = Some(video);
                    self.trex_flags = trex;
                    self.init.extend_from_slice(whole);
                    self.header_done = true;
                    out.push(Piece::Init(std::mem::take(&mut self.init)));
                }
                _ if !self.header_done => {
                    if &kind == b"moof" || &kind == b"mdat" {
                        return Err(Fmp4Error::FragmentBeforeHeader);
                    }
                    self.init.extend_from_slice(whole);
                }
                b"moof" => {
                    if let Some((is_key, samples)) = self.video_fragment(payload)? {
                        if is_key && self.current_has_video {
                            out.push(Piece::Segment(std::mem::take(&mut self.current)));
                            self.current_video_samples = 0;
                        }
                        self.current_has_video = true;
                        self.current_video_samples = self.current_video_samples.saturating_add(samples);
                    }
                    self.current.extend_from_slice(whole);
                }
                b"mdat" => {
                    self.current.extend_from_slice(whole);
                    if self.frames_per_piece.is_some_and(|frames| self.current_video_samples >= frames) {
                        out.push(Piece::Segment(std::mem::take(&mut self.current)));
                        self.current_has_video = false;
                        self.current_video_samples = 0;
                    }
                }
                // `mfra`, `free`, `sidx`... after the header: indexes of the whole file that no
                // segment needs.
                _ => {}
            }
        }
        self.pending.drain(..consumed);
        Ok(out)
    }

    /// The stream ended: returns the last segment. With a frame count, audio muxed after the last
    /// whole GOP (less than a fragment of it) is dropped: it cannot join the piece that already left,
    /// and a piece without video would be a part without a keyframe.
    pub fn finish(&mut self) -> Result<Vec<Piece>, Fmp4Error> {
        if !self.pending.is_empty() {
            return Err(Fmp4Error::TrailingBytes(self.pending.len()));
        }
        if self.current.is_empty() || (self.frames_per_piece.is_some() && !self.current_has_video) {
            self.current.clear();
            return Ok(Vec::new());
        }
        self.current_has_video = false;
        self.current_video_samples = 0;
        Ok(vec![Piece::Segment(std::mem::take(&mut self.current))])
    }

    /// For a `moof` that carries the video track: whether its first sample is a sync sample, and how
    /// many video samples it holds; `None` when it has no video.
    fn video_fragment(&self, moof: &[u8]) -> Result<Option<(bool, u64)>, Fmp4Error> {
        let video = self.video_track.ok_or(Fmp4Error::NoVideoTrack)?;
        for traf in children(moof, b"traf")? {
            let Some(tfhd) = children(traf, b"tfhd")?.into_iter().next() else {
                continue;
            };
            let (track, tfhd_default) = parse_tfhd(tfhd)?;
            if track != video {
                continue;
            }
            let truns = children(traf, b"trun")?;
            let Some(trun) = truns.first() else {
                continue;
            };
            let default = tfhd_default.or_else(|| self.trex_flags.get(&track).copied()).unwrap_or(0);
            let flags = first_sample_flags(trun)?.unwrap_or(default);
            let mut samples = 0u64;
            for trun in &truns {
                samples = samples.saturating_add(u64::from(be32(trun, 4, "trun")?));
            }
            return Ok(Some((flags & NON_SYNC == 0, samples)));
        }
        Ok(None)
    }
}

/// Reads a box header: (type, total length) or `None` when fewer than 8 (or 16) bytes are there.
pub(crate) fn box_header(data: &[u8]) -> Result<Option<([u8; 4], usize)>, Fmp4Error> {
    if data.len() < 8 {
        return Ok(None);
    }
    let kind: [u8; 4] = [data[4], data[5], data[6], data[7]];
    let size32 = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
    let (size, header) = match size32 {
        1 => {
            if data.len() < 16 {
                return Ok(None);
            }
            let mut large = [0u8; 8];
            large.copy_from_slice(&data[8..16]);
            (u64::from_be_bytes(large), 16)
        }
        other => (u64::from(other), 8),
    };
    if size < header {
        return Err(Fmp4Error::BadBoxSize(String::from_utf8_lossy(&kind).into_owned(), size));
    }
    let size =
        usize::try_from(size).map_err(|_| Fmp4Error::BadBoxSize(String::from_utf8_lossy(&kind).into_owned(), size))?;
    Ok(Some((kind, size)))
}

pub(crate) fn header_len(whole: &[u8]) -> usize {
    if u32::from_be_bytes([whole[0], whole[1], whole[2], whole[3]]) == 1 {
        16
    } else {
        8
    }
}

/// Payloads of the direct children of type `kind` inside a container payload.
pub(crate) fn children<'a>(container: &'a [u8], kind: &[u8; 4]) -> Result<Vec<&'a [u8]>, Fmp4Error> {
    let mut found = Vec::new();
    let mut rest = container;
    while !rest.is_empty() {
        let (child_kind, len) = box_header(rest)?.ok_or(Fmp4Error::Truncated("child box"))?;
        if len > rest.len() {
            return Err(Fmp4Error::Truncated("child box"));
        }
        if &child_kind == kind {
            found.push(&rest[header_len(rest)..len]);
        }
        rest = &rest[len..];
    }
    Ok(found)
}

pub(crate) fn be32(data: &[u8], at: usize, what: &'static str) -> Result<u32, Fmp4Error> {
    data.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])).ok_or(Fmp4Error::Truncated(what))
}

/// The video track's id and each track's `trex` default sample flags.
fn parse_moov(moov: &[u8]) -> Result<(u32, HashMap<u32, u32>), Fmp4Error> {
    let mut video = None;
    for trak in children(moov, b"trak")? {
        let tkhd = children(trak, b"tkhd")?.into_iter().next().ok_or(Fmp4Error::Truncated("tkhd"))?;
        let version = *tkhd.first().ok_or(Fmp4Error::Truncated("tkhd"))?;
        let id_at = if version == 1 { 4 + 16 } else { 4 + 8 };
        let track_id = be32(tkhd, id_at, "tkhd")?;
        for mdia in children(trak, b"mdia")? {
            for hdlr in children(mdia, b"hdlr")? {
                if hdlr.get(8..12) == Some(b"vide") && video.is_none() {
                    video = Some(track_id);
                }
            }
        }
    }
    let mut trex_flags = HashMap::new();
    for mvex in children(moov, b"mvex")? {
        for trex in children(mvex, b"trex")? {
            trex_flags.insert(be32(trex, 4, "trex")?, be32(trex, 20, "trex")?);
        }
    }
    Ok((video.ok_or(Fmp4Error::NoVideoTrack)?, trex_flags))
}

/// Track id and default sample flags (when present) from a `tfhd`.
fn parse_tfhd(tfhd: &[u8]) -> Result<(u32, Option<u32>), Fmp4Error> {
    let flags = be32(tfhd, 0, "tfhd")? & 0x00ff_ffff;
    let track = be32(tfhd, 4, "tfhd")?;
    let mut at = 8;
    if flags & 0x01 != 0 {
        at += 8;
    }
    for bit in [0x02, 0x08, 0x10] {
        if flags & bit != 0 {
            at += 4;
        }
    }
    let default = if flags & 0x20 != 0 { Some(be32(tfhd, at, "tfhd")?) } else { None };
    Ok((track, default))
}

/// The flags of a `trun`'s first sample, when the `trun` states them.
fn first_sample_flags(trun: &[u8]) -> Result<Option<u32>, Fmp4Error> {
    let flags = be32(trun, 0, "trun")? & 0x00ff_ffff;
    let count = be32(trun, 4, "trun")?;
    let mut at = 8;
    if flags & 0x01 != 0 {
        at += 4;
    }
    if flags & 0x04 != 0 {
        return Ok(Some(be32(trun, at, "trun")?));
    }
    if flags & 0x400 != 0 && count > 0 {
        for bit in [0x100, 0x200] {
            if flags & bit != 0 {
                at += 4;
            }
        }
        return Ok(Some(be32(trun, at, "trun")?));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mp4_box(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut out = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(payload);
        out
    }

    fn full_box(kind: &[u8; 4], flags: u32, body: &[u8]) -> Vec<u8> {
        let mut payload = flags.to_be_bytes().to_vec(); // version 0
        payload.extend_from_slice(body);
        mp4_box(kind, &payload)
    }

    fn trak(id: u32, handler: &[u8; 4]) -> Vec<u8> {
        let mut tkhd = vec![0u8; 8];
        tkhd.extend_from_slice(&id.to_be_bytes());
        tkhd.extend_from_slice(&[0u8; 68]);
        let mut hdlr = vec![0u8; 4];
        hdlr.extend_from_slice(handler);
        hdlr.extend_from_slice(&[0u8; 13]);
        let mdia = mp4_box(b"mdia", &full_box(b"hdlr", 0, &hdlr));
        mp4_box(b"trak", &[full_box(b"tkhd", 0, &tkhd), mdia].concat())
    }

    fn header() -> Vec<u8> {
        let ftyp = mp4_box(b"ftyp", b"iso6\0\0\0\0");
        let trex = |id: u32, flags: u32| {
            let body: Vec<u8> = [id, 1, 0, 0, flags].iter().flat_map(|v| v.to_be_bytes()).collect();
            full_box(b"trex", 0, &body)
        };
        let mvex = mp4_box(b"mvex", &[trex(1, NON_SYNC), trex(2, 0)].concat());
        let moov = mp4_box(b"moov", &[trak(1, b"vide"), trak(2, b"soun"), mvex].concat());
        [ftyp, moov].concat()
    }

    /// A fragment of `track`; `first_flags` goes in the trun when given, else trex defaults apply.
    fn fragment(track: u32, first_flags: Option<u32>, tag: u8) -> Vec<u8> {
        let tfhd = full_box(b"tfhd", 0x02_0000, &track.to_be_bytes());
        let trun = match first_flags {
            Some(f) => full_box(b"trun", 0x05, &[1u32.to_be_bytes(), 0u32.to_be_bytes(), f.to_be_bytes()].concat()),
            None => full_box(b"trun", 0x01, &[1u32.to_be_bytes(), 0u32.to_be_bytes()].concat()),
        };
        let moof = mp4_box(b"moof", &mp4_box(b"traf", &[tfhd, trun].concat()));
        [moof, mp4_box(b"mdat", &[tag; 5])].concat()
    }

    #[test]
    fn splits_at_video_keyframe_fragments_keeping_audio_in_between() {
        let key = Some(0x0200_0000);
        let stream = [
            header(),
            fragment(1, key, 1),
            fragment(2, None, 2),
            fragment(1, None, 3), // video continues mid-GOP (trex says non-sync)
            fragment(1, key, 4),
            fragment(2, None, 5),
            mp4_box(b"mfra", &[0; 8]),
        ]
        .concat();
        let mut splitter = Fmp4Splitter::new();
        // Feed in awkward small pieces to exercise buffering.
        let mut pieces = Vec::new();
        for chunk in stream.chunks(7) {
            pieces.extend(splitter.push(chunk).unwrap());
        }
        pieces.extend(splitter.finish().unwrap());
        assert_eq!(pieces.len(), 3);
        assert_eq!(pieces[0], Piece::Init(header()));
        let first = [fragment(1, key, 1), fragment(2, None, 2), fragment(1, None, 3)].concat();
        assert_eq!(pieces[1], Piece::Segment(first));
        assert_eq!(pieces[2], Piece::Segment([fragment(1, key, 4), fragment(2, None, 5)].concat()));
    }

    /// With a frame count the piece leaves with its last video frame: no waiting for the next
    /// keyframe's fragment. Audio that follows joins the next piece.
    #[test]
    fn a_whole_gop_leaves_without_waiting_for_the_next_keyframe() {
        let key = Some(0x0200_0000);
        let mut splitter = Fmp4Splitter::with_frames_per_piece(2);
        let mut pieces = splitter.push(&header()).unwrap();
        pieces.extend(splitter.push(&[fragment(1, key, 1), fragment(2, None, 2)].concat()).unwrap());
        assert_eq!(pieces.len(), 1, "one frame of two: not yet");
        pieces.extend(splitter.push(&fragment(1, None, 3)).unwrap());
        assert_eq!(pieces.len(), 2, "the second frame completes the piece");
        assert_eq!(
            pieces[1],
            Piece::Segment([fragment(1, key, 1), fragment(2, None, 2), fragment(1, None, 3)].concat())
        );
        pieces.extend(splitter.push(&[fragment(2, None, 4), fragment(1, key, 5)].concat()).unwrap());
        pieces.extend(splitter.finish().unwrap());
        assert_eq!(pieces[2..], [Piece::Segment([fragment(2, None, 4), fragment(1, key, 5)].concat())]);
        // Audio after the last whole GOP makes no piece of its own.
        let mut splitter = Fmp4Splitter::with_frames_per_piece(1);
        let mut pieces = splitter.push(&[header(), fragment(1, key, 1), fragment(2, None, 2)].concat()).unwrap();
        pieces.extend(splitter.finish().unwrap());
        assert_eq!(pieces[1..], [Piece::Segment(fragment(1, key, 1))]);
    }

    #[test]
    fn refuses_fragments_before_the_header_and_garbage() {
        let mut splitter = Fmp4Splitter::new();
        assert_eq!(splitter.push(&fragment(1, None, 0)), Err(Fmp4Error::FragmentBeforeHeader));
        let mut splitter = Fmp4Splitter::new();
        assert!(matches!(splitter.push(&[0, 0, 0, 3, b'a', b'b', b'c', b'd']), Err(Fmp4Error::BadBoxSize(..))));
        let mut splitter = Fmp4Splitter::new();
        splitter.push(&header()[..12]).unwrap(); // inside the 16-byte ftyp
        assert_eq!(splitter.finish(), Err(Fmp4Error::TrailingBytes(12)));
    }
}
