//! The separate audio rendition (`--audio separate`): mp4mux's audio-only fragmented MP4 is read back
//! sample by sample ([`AudioReader`]), and [`AudioSegmenter`] cuts the samples again into CMAF media
//! segments whose boundaries fall on the AAC frame nearest each video segment boundary. mp4mux itself
//! closes an audio fragment only every `fragment-duration`, wherever that lands, so its fragments
//! cannot be used as segments directly. Pure: bytes in, samples and segments out.

use std::collections::VecDeque;

use crate::fmp4::{be32, box_header, children, header_len, Fmp4Error};

/// One coded audio frame (an AAC access unit) with its place on the track's timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioSample {
    /// Decode time in the track's timescale (`baseMediaDecodeTime` plus the samples before it).
    pub decode_time: u64,
    /// In the track's timescale.
    pub duration: u32,
    pub data: Vec<u8>,
}

impl AudioSample {
    fn end(&self) -> u64 {
        self.decode_time + u64::from(self.duration)
    }
}

/// What [`AudioReader`] gets out of the stream, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioPiece {
    /// `ftyp` + `moov` as mp4mux wrote them: the audio rendition's EXT-X-MAP initialisation section.
    Init { bytes: Vec<u8>, track_id: u32, timescale: u32 },
    /// The samples of one `moof` + `mdat`.
    Samples(Vec<AudioSample>),
}

#[derive(Debug, Clone, Copy)]
struct Track {
    id: u32,
    default_duration: u32,
    default_size: u32,
}

/// Reads a fragmented MP4 with exactly one audio track (as `mp4mux fragment-duration=...` writes it)
/// into its init section and its samples.
#[derive(Debug, Default)]
pub struct AudioReader {
    pending: Vec<u8>,
    init: Vec<u8>,
    track: Option<Track>,
    /// The `moof` whose `mdat` comes next.
    moof: Option<Vec<u8>>,
    /// Where the next fragment starts when it has no `tfdt`.
    next_decode_time: u64,
}

impl AudioReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next bytes of the stream; returns what they completed.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<AudioPiece>, Fmp4Error> {
        self.pending.extend_from_slice(data);
        let mut out = Vec::new();
        let mut consumed = 0;
        while let Some((kind, len)) = box_header(&self.pending[consumed..])? {
            if self.pending.len() - consumed < len {
                break;
            }
            let whole = self.pending[consumed..consumed + len].to_vec();
            consumed += len;
            match (&kind, self.track) {
                (b"moov", None) => {
                    let (track, timescale) = parse_audio_moov(&whole[header_len(&whole)..])?;
                    self.track = Some(track);
                    self.init.extend_from_slice(&whole);
                    out.push(AudioPiece::Init { bytes: std::mem::take(&mut self.init), track_id: track.id, timescale });
                }
                (b"moof" | b"mdat", None) => return Err(Fmp4Error::FragmentBeforeHeader),
                (_, None) => self.init.extend_from_slice(&whole),
                (b"moof", Some(_)) => self.moof = Some(whole),
                (b"mdat", Some(track)) => {
                    let moof = self.moof.take().ok_or(Fmp4Error::MdatWithoutMoof)?;
                    let samples = self.read_fragment(track, &moof, &whole)?;
                    if !samples.is_empty() {
                        out.push(AudioPiece::Samples(samples));
                    }
                }
                // `mfra`, `free`, ...: indexes of the whole file that no segment needs.
                _ => {}
            }
        }
        self.pending.drain(..consumed);
        Ok(out)
    }

    /// The stream ended: nothing may be left half-read.
    pub fn finish(&mut self) -> Result<(), Fmp4Error> {
        if !self.pending.is_empty() {
            return Err(Fmp4Error::TrailingBytes(self.pending.len()));
        }
        if let Some(moof) = self.moof.take() {
            return Err(Fmp4Error::TrailingBytes(moof.len()));
        }
        Ok(())
    }

    /// The samples of one `moof` + `mdat` pair. Data offsets count from the first byte of the `moof`
    /// (ISO/IEC 14496-12 8.8.7: without an explicit base data offset, the base is the `moof`).
    fn read_fragment(&mut self, track: Track, moof: &[u8], mdat: &[u8]) -> Result<Vec<AudioSample>, Fmp4Error> {
        let fragment = [moof, mdat].concat();
        let mut samples = Vec::new();
        for traf in children(&moof[header_len(moof)..], b"traf")? {
            let tfhd = children(traf, b"tfhd")?.into_iter().next().ok_or(Fmp4Error::Truncated("tfhd"))?;
            let flags = be32(tfhd, 0, "tfhd")? & 0x00ff_ffff;
            if be32(tfhd, 4, "tfhd")? != track.id {
                continue;
            }
            if flags & 0x01 != 0 {
                return Err(Fmp4Error::Unsupported("an explicit base data offset"));
            }
            let mut at = 8;
            if flags & 0x02 != 0 {
                at += 4;
            }
            let mut default_duration = track.default_duration;
            if flags & 0x08 != 0 {
                default_duration = be32(tfhd, at, "tfhd")?;
                at += 4;
            }
            let default_size = if flags & 0x10 != 0 { be32(tfhd, at, "tfhd")? } else { track.default_size };
            let mut decode_time = match children(traf, b"tfdt")?.into_iter().next() {
                Some(tfdt) if tfdt.first() == Some(&1) => {
                    let high = be32(tfdt, 4, "tfdt")?;
                    (u64::from(high) << 32) | u64::from(be32(tfdt, 8, "tfdt")?)
                }
                Some(tfdt) => u64::from(be32(tfdt, 4, "tfdt")?),
                None => self.next_decode_time,
            };
            // A run without a data offset continues where the previous one ended; the first starts at
            // the mdat's payload.
            let mut position = moof.len() + header_len(mdat);
            for trun in children(traf, b"trun")? {
                let flags = be32(trun, 0, "trun")? & 0x00ff_ffff;
                let count = be32(trun, 4, "trun")?;
                let mut at = 8;
                if flags & 0x01 != 0 {
                    let offset = be32(trun, at, "trun")? as i32;
                    position = usize::try_from(offset).map_err(|_| Fmp4Error::Unsupported("a negative data offset"))?;
                    at += 4;
                }
                if flags & 0x04 != 0 {
                    at += 4;
                }
                for _ in 0..count {
                    let mut field = |present: u32, default: u32| -> Result<u32, Fmp4Error> {
                        if flags & present == 0 {
                            return Ok(default);
                        }
                        let value = be32(trun, at, "trun")?;
                        at += 4;
                        Ok(value)
                    };
                    let duration = field(0x100, default_duration)?;
                    let size = field(0x200, default_size)? as usize;
                    field(0x400, 0)?;
                    field(0x800, 0)?;
                    let data = fragment.get(position..position + size).ok_or(Fmp4Error::Truncated("sample data"))?;
                    samples.push(AudioSample { decode_time, duration, data: data.to_vec() });
                    decode_time += u64::from(duration);
                    position += size;
                }
            }
            self.next_decode_time = decode_time;
        }
        Ok(samples)
    }
}

/// The only track's id and its `trex` defaults, and its timescale; refuses a header with any other
/// track than one audio track.
fn parse_audio_moov(moov: &[u8]) -> Result<(Track, u32), Fmp4Error> {
    let traks = children(moov, b"trak")?;
    let [trak] = traks.as_slice() else {
        return Err(Fmp4Error::NotOneAudioTrack);
    };
    let tkhd = children(trak, b"tkhd")?.into_iter().next().ok_or(Fmp4Error::Truncated("tkhd"))?;
    let version = *tkhd.first().ok_or(Fmp4Error::Truncated("tkhd"))?;
    let id = be32(tkhd, if version == 1 { 4 + 16 } else { 4 + 8 }, "tkhd")?;
    let mdia = children(trak, b"mdia")?.into_iter().next().ok_or(Fmp4Error::Truncated("mdia"))?;
    let is_audio = children(mdia, b"hdlr")?.into_iter().any(|hdlr| hdlr.get(8..12) == Some(b"soun"));
    if !is_audio {
        return Err(Fmp4Error::NotOneAudioTrack);
    }
    let mdhd = children(mdia, b"mdhd")?.into_iter().next().ok_or(Fmp4Error::Truncated("mdhd"))?;
    let version = *mdhd.first().ok_or(Fmp4Error::Truncated("mdhd"))?;
    let timescale = be32(mdhd, if version == 1 { 20 } else { 12 }, "mdhd")?;
    if timescale == 0 {
        return Err(Fmp4Error::Truncated("mdhd timescale"));
    }
    let mut track = Track { id, default_duration: 0, default_size: 0 };
    for mvex in children(moov, b"mvex")? {
        for trex in children(mvex, b"trex")? {
            if be32(trex, 4, "trex")? == id {
                track.default_duration = be32(trex, 12, "trex")?;
                track.default_size = be32(trex, 16, "trex")?;
            }
        }
    }
    Ok((track, timescale))
}

/// `sample_depends_on = 2` (depends on no other sample) and not a non-sync sample: every AAC frame
/// is a sync sample (ISO/IEC 14496-12 8.8.3.1).
const SYNC_SAMPLE_FLAGS: u32 = 0x0200_0000;

fn mp4_box(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&(payload.len() as u32 + 8).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(payload);
    out
}

fn full_box(kind: &[u8; 4], version: u8, flags: u32, body: &[u8]) -> Vec<u8> {
    let mut payload = ((u32::from(version) << 24) | (flags & 0x00ff_ffff)).to_be_bytes().to_vec();
    payload.extend_from_slice(body);
    mp4_box(kind, &payload)
}

/// One CMAF media segment: a `moof` (`mfhd`, and a `traf` with `tfhd`, a 64-bit `tfdt` and one
/// `trun` listing each sample's duration and size) and the `mdat` holding the samples.
pub fn media_segment(sequence: u32, track_id: u32, samples: &[AudioSample]) -> Vec<u8> {
    let base = samples.first().map_or(0, |s| s.decode_time);
    let mfhd = full_box(b"mfhd", 0, 0, &sequence.to_be_bytes());
    // default-base-is-moof, default-sample-flags-present
    let tfhd = full_box(b"tfhd", 0, 0x02_0020, &[track_id.to_be_bytes(), SYNC_SAMPLE_FLAGS.to_be_bytes()].concat());
    let tfdt = full_box(b"tfdt", 1, 0, &base.to_be_bytes());
    let trun_len = 8 + 4 + 4 + 4 + 8 * samples.len();
    let moof_len = 8 + mfhd.len() + 8 + tfhd.len() + tfdt.len() + trun_len;
    let mut trun_body = Vec::with_capacity(trun_len);
    trun_body.extend_from_slice(&(samples.len() as u32).to_be_bytes());
    // The first sample's data follows the moof and the mdat's 8-byte header.
    trun_body.extend_from_slice(&((moof_len + 8) as u32).to_be_bytes());
    for sample in samples {
        trun_body.extend_from_slice(&sample.duration.to_be_bytes());
        trun_body.extend_from_slice(&(sample.data.len() as u32).to_be_bytes());
    }
    // data-offset, sample-duration and sample-size present
    let trun = full_box(b"trun", 0, 0x00_0301, &trun_body);
    let traf = mp4_box(b"traf", &[tfhd, tfdt, trun].concat());
    let moof = mp4_box(b"moof", &[mfhd, traf].concat());
    debug_assert_eq!(moof.len(), moof_len);
    let payload: Vec<u8> = samples.iter().flat_map(|s| s.data.iter().copied()).collect();
    [moof, mp4_box(b"mdat", &payload)].concat()
}

/// A finished audio segment.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioSegment {
    pub bytes: Vec<u8>,
    /// Seconds (the sum of its samples' durations).
    pub duration: f64,
    /// Decode time of its first sample, in the track's timescale.
    pub start: u64,
}

/// Collects samples and cuts them into segments at given times: a sample belongs to the segment in
/// which its middle lies, so every cut is on the frame boundary nearest the requested time (within
/// half a frame, 10.7 ms for AAC at 48 kHz).
#[derive(Debug)]
pub struct AudioSegmenter {
    pub track_id: u32,
    pub timescale: u32,
    samples: VecDeque<AudioSample>,
    sequence: u32,
}

impl AudioSegmenter {
    pub fn new(track_id: u32, timescale: u32) -> Self {
        Self { track_id, timescale, samples: VecDeque::new(), sequence: 1 }
    }

    /// `nanoseconds` in the track's timescale, rounded.
    pub fn ticks(&self, nanoseconds: u64) -> u64 {
        ((u128::from(nanoseconds) * u128::from(self.timescale) + 500_000_000) / 1_000_000_000) as u64
    }

    pub fn push(&mut self, samples: impl IntoIterator<Item = AudioSample>) {
        self.samples.extend(samples);
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Whether every sample before `boundary` is here: a sample after it has arrived.
    pub fn ready(&self, boundary: u64) -> bool {
        self.samples.back().is_some_and(|s| !before(s, boundary))
    }

    /// Takes the samples before `boundary` (all of them with `None`) as one segment; `None` when there
    /// are none.
    pub fn cut(&mut self, boundary: Option<u64>) -> Option<AudioSegment> {
        let count = match boundary {
            Some(boundary) => self.samples.iter().take_while(|s| before(s, boundary)).count(),
            None => self.samples.len(),
        };
        if count == 0 {
            return None;
        }
        let taken: Vec<AudioSample> = self.samples.drain(..count).collect();
        let ticks: u64 = taken.iter().map(|s| u64::from(s.duration)).sum();
        let segment = AudioSegment {
            bytes: media_segment(self.sequence, self.track_id, &taken),
            duration: ticks as f64 / f64::from(self.timescale),
            start: taken[0].decode_time,
        };
        self.sequence += 1;
        Some(segment)
    }

    /// At the end of the stream: the rest, cut at `first` and then every `step`, except that what is
    /// left stays in one segment when that segment would last at most `longest` (so the encoder's
    /// last frame or two do not make a sliver of their own, and no segment outgrows the target).
    pub fn finish(&mut self, first: u64, step: u64, longest: u64) -> Vec<AudioSegment> {
        let mut out = Vec::new();
        let mut boundary = first;
        while let (Some(head), Some(last)) = (self.samples.front(), self.samples.back()) {
            if last.end() - head.decode_time <= longest || step == 0 {
                out.extend(self.cut(None));
                break;
            }
            out.extend(self.cut(Some(boundary)));
            boundary = boundary.saturating_add(step);
        }
        out
    }
}

/// Whether the middle of `sample` lies before `boundary`.
fn before(sample: &AudioSample, boundary: u64) -> bool {
    2 * sample.decode_time + u64::from(sample.duration) <= 2 * boundary
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(decode_time: u64, tag: u8) -> AudioSample {
        AudioSample { decode_time, duration: 1024, data: vec![tag; 3 + usize::from(tag % 4)] }
    }

    /// A header like mp4mux's for one track of `handler` type, timescale 48 kHz.
    fn header(handlers: &[&[u8; 4]]) -> Vec<u8> {
        let ftyp = mp4_box(b"ftyp", b"mp42\0\0\0\0");
        let mut traks = Vec::new();
        for (i, handler) in handlers.iter().enumerate() {
            let id = i as u32 + 1;
            let tkhd = full_box(b"tkhd", 0, 7, &[&[0u8; 8][..], &id.to_be_bytes(), &[0u8; 68]].concat());
            let mdhd = full_box(b"mdhd", 0, 0, &[&[0u8; 8][..], &48_000u32.to_be_bytes(), &[0u8; 8]].concat());
            let hdlr = full_box(b"hdlr", 0, 0, &[&[0u8; 4][..], &handler[..], &[0u8; 13]].concat());
            traks.push(mp4_box(b"trak", &[tkhd, mp4_box(b"mdia", &[mdhd, hdlr].concat())].concat()));
        }
        let trex =
            full_box(b"trex", 0, 0, &[1u32, 1, 1024, 0, 0].iter().flat_map(|v| v.to_be_bytes()).collect::<Vec<_>>());
        let moov = mp4_box(b"moov", &[traks.concat(), mp4_box(b"mvex", &trex)].concat());
        [ftyp, moov].concat()
    }

    /// A fragment the way mp4mux writes it: tfhd without defaults, a v0 tfdt, and a trun with data
    /// offset, duration, size and flags for each sample.
    fn mp4mux_fragment(sequence: u32, samples: &[AudioSample]) -> Vec<u8> {
        let mfhd = full_box(b"mfhd", 0, 0, &sequence.to_be_bytes());
        let tfhd = full_box(b"tfhd", 0, 0, &1u32.to_be_bytes());
        let tfdt = full_box(b"tfdt", 0, 0, &(samples[0].decode_time as u32).to_be_bytes());
        let trun_len = 8 + 4 + 4 + 4 + 12 * samples.len();
        let moof_len = 8 + mfhd.len() + 8 + tfhd.len() + tfdt.len() + trun_len;
        let mut body = (samples.len() as u32).to_be_bytes().to_vec();
        body.extend_from_slice(&((moof_len + 8) as u32).to_be_bytes());
        for s in samples {
            for v in [s.duration, s.data.len() as u32, 0xc0] {
                body.extend_from_slice(&v.to_be_bytes());
            }
        }
        let traf = mp4_box(b"traf", &[tfhd, tfdt, full_box(b"trun", 0, 0x701, &body)].concat());
        let payload: Vec<u8> = samples.iter().flat_map(|s| s.data.clone()).collect();
        [mp4_box(b"moof", &[mfhd, traf].concat()), mp4_box(b"mdat", &payload)].concat()
    }

    fn read_all(bytes: &[u8], chunk: usize) -> Result<Vec<AudioPiece>, Fmp4Error> {
        let mut reader = AudioReader::new();
        let mut pieces = Vec::new();
        for part in bytes.chunks(chunk) {
            pieces.extend(reader.push(part)?);
        }
        reader.finish()?;
        Ok(pieces)
    }

    #[test]
    fn reads_mp4mux_fragments_into_samples() {
        let samples: Vec<AudioSample> = (0..7).map(|i| sample(i * 1024, i as u8)).collect();
        let stream = [
            header(&[b"soun"]),
            mp4mux_fragment(1, &samples[..4]),
            mp4mux_fragment(2, &samples[4..]),
            mp4_box(b"mfra", &[0; 8]),
        ]
        .concat();
        let pieces = read_all(&stream, 5).unwrap();
        assert_eq!(pieces.len(), 3);
        assert_eq!(pieces[0], AudioPiece::Init { bytes: header(&[b"soun"]), track_id: 1, timescale: 48_000 });
        assert_eq!(pieces[1], AudioPiece::Samples(samples[..4].to_vec()));
        assert_eq!(pieces[2], AudioPiece::Samples(samples[4..].to_vec()));
    }

    #[test]
    fn our_segments_read_back_as_the_same_samples() {
        let samples: Vec<AudioSample> = (0..5).map(|i| sample(9_000 + i * 1024, 10 + i as u8)).collect();
        let segment = media_segment(3, 1, &samples);
        let pieces = read_all(&[header(&[b"soun"]), segment.clone()].concat(), 64).unwrap();
        assert_eq!(pieces[1], AudioPiece::Samples(samples));
        // mfhd carries the sequence number; tfdt is version 1 (64-bit).
        let moof = &segment[8..];
        let mfhd = children(moof, b"mfhd").unwrap()[0];
        assert_eq!(be32(mfhd, 4, "mfhd").unwrap(), 3);
        let traf = children(moof, b"traf").unwrap()[0];
        assert_eq!(children(traf, b"tfdt").unwrap()[0][0], 1);
    }

    #[test]
    fn refuses_headers_without_exactly_one_audio_track_and_stray_data() {
        assert_eq!(read_all(&header(&[b"vide"]), 100), Err(Fmp4Error::NotOneAudioTrack));
        assert_eq!(read_all(&header(&[b"soun", b"soun"]), 100), Err(Fmp4Error::NotOneAudioTrack));
        assert_eq!(read_all(&mp4mux_fragment(1, &[sample(0, 1)]), 100), Err(Fmp4Error::FragmentBeforeHeader));
        let mdat_alone = [header(&[b"soun"]), mp4_box(b"mdat", &[1, 2, 3])].concat();
        assert_eq!(read_all(&mdat_alone, 100), Err(Fmp4Error::MdatWithoutMoof));
        let fragment = mp4mux_fragment(1, &[sample(0, 1), sample(1024, 2)]);
        let truncated = [header(&[b"soun"]), fragment[..fragment.len() - 2].to_vec()].concat();
        assert!(matches!(read_all(&truncated, 100), Err(Fmp4Error::TrailingBytes(_))));
    }

    #[test]
    fn cuts_on_the_frame_nearest_each_boundary() {
        // 1024-tick frames; a 2 s segment at 48 kHz is 93.75 frames.
        let mut segmenter = AudioSegmenter::new(1, 48_000);
        segmenter.push((0..200).map(|i| sample(i * 1024, 0)));
        assert_eq!(segmenter.ticks(2_000_000_000), 96_000);
        assert!(segmenter.ready(96_000));
        assert!(!segmenter.ready(200 * 1024));
        let first = segmenter.cut(Some(96_000)).unwrap();
        // Frame 93 spans 95232..96256, its middle (95744) is before 96000: it stays; frame 94 goes.
        assert_eq!(first.start, 0);
        assert_eq!(first.duration, 94.0 * 1024.0 / 48_000.0);
        let second = segmenter.cut(Some(192_000)).unwrap();
        // 192000 / 1024 = 187.5: frame 187's middle is exactly on the boundary and stays.
        assert_eq!(second.start, 94 * 1024);
        assert_eq!(second.duration, 94.0 * 1024.0 / 48_000.0);
        assert_eq!(segmenter.cut(Some(192_000)), None, "nothing before a boundary already cut");
        let rest = segmenter.cut(None).unwrap();
        assert_eq!(rest.start, 188 * 1024);
        assert!(segmenter.is_empty() && segmenter.cut(None).is_none());
        // Each segment's mfhd sequence number counts up from 1.
        let sequence = |s: &AudioSegment| be32(children(&s.bytes[8..], b"mfhd").unwrap()[0], 4, "").unwrap();
        assert_eq!([sequence(&first), sequence(&second), sequence(&rest)], [1, 2, 3]);
    }

    #[test]
    fn finishing_cuts_long_tails_and_merges_slivers() {
        let frames = |segments: Vec<AudioSegment>| -> Vec<f64> {
            segments.iter().map(|s| s.duration * 48_000.0 / 1024.0).collect()
        };
        // 11 frames left, the video ends at frame 4, then a cut every 4 frames; a segment may hold 5.
        let mut segmenter = AudioSegmenter::new(1, 48_000);
        segmenter.push((0..11).map(|i| sample(i * 1024, 0)));
        assert_eq!(frames(segmenter.finish(4 * 1024, 4 * 1024, 5 * 1024)), [4.0, 4.0, 3.0]);
        // One frame past the video's end joins the last segment.
        let mut segmenter = AudioSegmenter::new(1, 48_000);
        segmenter.push((0..5).map(|i| sample(i * 1024, 0)));
        assert_eq!(frames(segmenter.finish(4 * 1024, 4 * 1024, 5 * 1024)), [5.0]);
        // Two do not: the segment would outgrow the longest allowed.
        let mut segmenter = AudioSegmenter::new(1, 48_000);
        segmenter.push((0..6).map(|i| sample(i * 1024, 0)));
        assert_eq!(frames(segmenter.finish(4 * 1024, 4 * 1024, 5 * 1024)), [4.0, 2.0]);
        assert!(AudioSegmenter::new(1, 48_000).finish(0, 10, 10).is_empty());
    }
}
