//! The presentation timestamp a media segment starts at, read from its bytes: what a WebVTT
//! segment's `X-TIMESTAMP-MAP` is relative to (RFC 8216 §3.5 maps cue times to "MPEG-2 (PES)
//! timestamps in other Renditions"). GStreamer's demuxers cannot be asked: `tsdemux` rebases its
//! output on the first PCR, so a buffer's timestamp is not the stream's PTS.
//!
//! Pure and bounded: the reader looks at the bytes it is given and nothing else, and returns `None`
//! for anything it does not recognise.

/// 33-bit PES timestamps (ISO/IEC 13818-1 §2.4.3.7).
const PTS_MASK: u64 = (1 << 33) - 1;
/// MPEG-2 transport stream packets (ISO/IEC 13818-1 §2.4.3.2).
const TS_PACKET: usize = 188;
const TS_SYNC: u8 = 0x47;

/// The first presentation timestamp of a segment, on the 90 kHz MPEG-2 clock: the first video PES
/// packet's PTS for MPEG-TS (any stream's if there is no video), the `tfdt` decode time of the first
/// video track fragment for fragmented MP4 (ISO/IEC 14496-12 §8.8.12), scaled from the timescale in
/// `init`'s `mdhd`. A composition offset of the first frame (a frame or two with B-frames) is left
/// out for fMP4, as hls.js also does.
pub fn first_pts(init: Option<&[u8]>, segment: &[u8]) -> Option<u64> {
    if segment.len() >= TS_PACKET && segment[0] == TS_SYNC {
        return first_ts_pts(segment);
    }
    first_fmp4_pts(init.unwrap_or(segment), segment)
}

fn first_ts_pts(segment: &[u8]) -> Option<u64> {
    let mut any = None;
    for packet in segment.chunks_exact(TS_PACKET) {
        if packet[0] != TS_SYNC {
            return any;
        }
        // payload_unit_start_indicator: a PES packet starts in this one.
        if packet[1] & 0x40 == 0 {
            continue;
        }
        let payload = match (packet[3] >> 4) & 0x3 {
            0b01 => &packet[4..],
            0b11 => packet.get(5 + usize::from(packet[4])..).unwrap_or_default(),
            _ => continue,
        };
        let Some((stream_id, pts)) = pes_pts(payload) else { continue };
        // Stream ids 0xE0-0xEF are video (Table 2-22).
        if (0xE0..=0xEF).contains(&stream_id) {
            return Some(pts);
        }
        any = any.or(Some(pts));
    }
    any
}

/// A PES header's stream id and PTS (§2.4.3.6), when it has one.
fn pes_pts(payload: &[u8]) -> Option<(u8, u64)> {
    let header = payload.get(..14)?;
    if header[..3] != [0, 0, 1] || header[7] & 0x80 == 0 {
        return None;
    }
    let p = &header[9..14];
    let pts = (u64::from(p[0] >> 1) & 0x7) << 30
        | u64::from(p[1]) << 22
        | u64::from(p[2] >> 1) << 15
        | u64::from(p[3]) << 7
        | u64::from(p[4] >> 1);
    Some((header[3], pts))
}

/// The boxes in `data` (ISO/IEC 14496-12 §4.2): type and body. Stops at the first malformed one.
fn boxes(data: &[u8]) -> impl Iterator<Item = ([u8; 4], &[u8])> {
    let mut rest = data;
    std::iter::from_fn(move || {
        let size = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
        let kind: [u8; 4] = rest.get(4..8)?.try_into().ok()?;
        let (header, size) = match size {
            0 => (8, rest.len()),
            1 => (16, usize::try_from(u64::from_be_bytes(rest.get(8..16)?.try_into().ok()?)).ok()?),
            n => (8, usize::try_from(n).ok()?),
        };
        let body = rest.get(header..size)?;
        rest = rest.get(size..)?;
        Some((kind, body))
    })
}

fn child<'a>(data: &'a [u8], kind: &[u8; 4]) -> Option<&'a [u8]> {
    boxes(data).find(|(k, _)| k == kind).map(|(_, body)| body)
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(data: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(data.get(at..at + 8)?.try_into().ok()?))
}

/// A track of the `moov`: its id, timescale and whether it is video.
struct Track {
    id: u32,
    timescale: u32,
    video: bool,
}

fn tracks(init: &[u8]) -> Vec<Track> {
    let Some(moov) = child(init, b"moov") else { return Vec::new() };
    boxes(moov)
        .filter(|(kind, _)| kind == b"trak")
        .filter_map(|(_, trak)| {
            // tkhd (§8.3.2) and mdhd (§8.4.2): version 1 has 64-bit times before the field.
            let tkhd = child(trak, b"tkhd")?;
            let id = u32_at(tkhd, if tkhd.first() == Some(&1) { 20 } else { 12 })?;
            let mdia = child(trak, b"mdia")?;
            let mdhd = child(mdia, b"mdhd")?;
            let timescale = u32_at(mdhd, if mdhd.first() == Some(&1) { 20 } else { 12 })?;
            // hdlr (§8.4.3): handler_type after version, flags and pre_defined.
            let video = child(mdia, b"hdlr").and_then(|h| h.get(8..12)) == Some(b"vide".as_slice());
            Some(Track { id, timescale, video })
        })
        .collect()
}

fn first_fmp4_pts(init: &[u8], segment: &[u8]) -> Option<u64> {
    let tracks = tracks(init);
    let moof = child(segment, b"moof")?;
    let fragments: Vec<(u32, u64)> = boxes(moof)
        .filter(|(kind, _)| kind == b"traf")
        .filter_map(|(_, traf)| {
            let id = u32_at(child(traf, b"tfhd")?, 4)?;
            let tfdt = child(traf, b"tfdt")?;
            let decode_time = if tfdt.first() == Some(&1) { u64_at(tfdt, 4)? } else { u64::from(u32_at(tfdt, 4)?) };
            Some((id, decode_time))
        })
        .collect();
    let track_of = |id: u32| tracks.iter().find(|t| t.id == id);
    let (id, decode_time) = fragments
        .iter()
        .find(|(id, _)| track_of(*id).is_some_and(|t| t.video))
        .or_else(|| fragments.first())
        .copied()?;
    let timescale = u64::from(track_of(id)?.timescale);
    if timescale == 0 {
        return None;
    }
    let ticks = u128::from(decode_time) * 90_000 / u128::from(timescale);
    Some((ticks & u128::from(PTS_MASK)) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A TS packet starting a PES packet of `stream_id` with `pts`, on `pid`.
    fn pes_packet(pid: u16, stream_id: u8, pts: u64, adaptation: bool) -> Vec<u8> {
        let mut packet = vec![TS_SYNC, 0x40 | (pid >> 8) as u8, pid as u8, if adaptation { 0x30 } else { 0x10 }];
        if adaptation {
            packet.extend([7, 0x10, 0, 0, 0, 0, 0, 0]);
        }
        let marker = |bits: u64, shift: u32| ((bits >> shift) as u8) << 1 | 1;
        packet.extend([0, 0, 1, stream_id, 0, 0, 0x80, 0x80, 5]);
        packet.extend([
            0x20 | marker(pts & 0x1_c000_0000, 30) & 0x0f,
            (pts >> 22) as u8,
            marker(pts & 0x3f_8000, 15),
            (pts >> 7) as u8,
            marker(pts & 0x7f, 0),
        ]);
        packet.resize(TS_PACKET, 0xff);
        packet
    }

    #[test]
    fn the_first_video_pes_gives_the_pts() {
        let pts = (1 << 32) + 126_000;
        let mut segment = vec![TS_SYNC, 0, 0, 0x10];
        segment.resize(TS_PACKET, 0);
        segment.extend(pes_packet(0x101, 0xC0, 5, false));
        segment.extend(pes_packet(0x100, 0xE0, pts, true));
        segment.extend(pes_packet(0x100, 0xE0, 7, false));
        assert_eq!(first_pts(None, &segment), Some(pts));
        // Audio only: its PTS.
        assert_eq!(first_pts(None, &pes_packet(0x101, 0xC0, 90_000, false)), Some(90_000));
        assert_eq!(first_pts(None, &[TS_SYNC; 100]), None);
    }

    fn mp4_box(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut out = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        out.extend(kind);
        out.extend(body);
        out
    }

    fn trak(id: u32, timescale: u32, handler: &[u8; 4]) -> Vec<u8> {
        let mut tkhd = vec![0; 12];
        tkhd.extend(id.to_be_bytes());
        tkhd.resize(84, 0);
        let mut mdhd = vec![0; 12];
        mdhd.extend(timescale.to_be_bytes());
        mdhd.resize(24, 0);
        let mut hdlr = vec![0; 8];
        hdlr.extend(handler);
        hdlr.resize(25, 0);
        let mdia = [mp4_box(b"mdhd", &mdhd), mp4_box(b"hdlr", &hdlr)].concat();
        mp4_box(b"trak", &[mp4_box(b"tkhd", &tkhd), mp4_box(b"mdia", &mdia)].concat())
    }

    fn traf(id: u32, decode_time: u64) -> Vec<u8> {
        let tfhd = [vec![0, 0, 0, 0], id.to_be_bytes().to_vec()].concat();
        let tfdt = [vec![1, 0, 0, 0], decode_time.to_be_bytes().to_vec()].concat();
        mp4_box(b"traf", &[mp4_box(b"tfhd", &tfhd), mp4_box(b"tfdt", &tfdt)].concat())
    }

    #[test]
    fn fmp4_uses_the_video_track_fragment_decode_time() {
        let init = [
            mp4_box(b"ftyp", b"iso6"),
            mp4_box(b"moov", &[trak(2, 48_000, b"soun"), trak(1, 15_360, b"vide")].concat()),
        ]
        .concat();
        let segment =
            [mp4_box(b"styp", b"msdh"), mp4_box(b"moof", &[traf(2, 96_000), traf(1, 30_720)].concat())].concat();
        assert_eq!(first_pts(Some(&init), &segment), Some(180_000), "2 s in 90 kHz ticks");
        // Without a video track, the first fragment's.
        let audio_only = mp4_box(b"moof", &traf(2, 96_000));
        assert_eq!(first_pts(Some(&init), &audio_only), Some(180_000));
        // A self-initialising segment carries its own moov.
        assert_eq!(first_pts(None, &[init.clone(), segment.clone()].concat()), Some(180_000));
        assert_eq!(first_pts(None, &segment), None, "no timescale, no answer");
        assert_eq!(first_pts(Some(&init), &init), None, "no fragment");
    }

    proptest! {
        #[test]
        fn any_bytes_never_panic(init in proptest::collection::vec(any::<u8>(), 0..400), segment in proptest::collection::vec(any::<u8>(), 0..800)) {
            let _ = first_pts(Some(&init), &segment);
            let mut ts = segment.clone();
            ts.insert(0, TS_SYNC);
            let _ = first_pts(None, &ts);
            let _ = first_pts(None, &mp4_box(b"moof", &segment));
        }
    }
}
