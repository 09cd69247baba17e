//! RFC 6381 codec strings for the master playlist's CODECS attribute.

/// AAC-LC, which the packager's audio encoder produces.
pub const AAC_LC: &str = "mp4a.40.2";

/// `avc1.PPCCLL` from the three bytes that follow an SPS NAL header (profile_idc,
/// constraint flags, level_idc).
pub fn avc1(profile_constraints_level: [u8; 3]) -> String {
    let [p, c, l] = profile_constraints_level;
    format!("avc1.{p:02x}{c:02x}{l:02x}")
}

/// Finds the first SPS in H.264 Annex B data (start-code delimited NAL units) and returns its
/// profile, constraint and level bytes.
pub fn sps_from_annex_b(data: &[u8]) -> Option<[u8; 3]> {
    let mut i = 0;
    while i + 3 < data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            let nal = i + 3;
            if data.get(nal).is_some_and(|h| h & 0x1f == 7) {
                let b = data.get(nal + 1..nal + 4)?;
                return Some([b[0], b[1], b[2]]);
            }
            i = nal;
        } else {
            i += 1;
        }
    }
    None
}

/// The same bytes from an `avcC` decoder configuration record (MP4 `codec_data`).
pub fn sps_from_avcc(codec_data: &[u8]) -> Option<[u8; 3]> {
    match codec_data {
        [1, p, c, l, ..] => Some([*p, *c, *l]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_sps_in_annex_b() {
        let data = [0, 0, 0, 1, 0x09, 0xf0, 0, 0, 0, 1, 0x67, 0x64, 0x00, 0x1f, 0xac, 0, 0, 1, 0x68];
        assert_eq!(sps_from_annex_b(&data), Some([0x64, 0x00, 0x1f]));
        assert_eq!(avc1([0x64, 0x00, 0x1f]), "avc1.64001f");
        assert_eq!(sps_from_annex_b(&[0, 0, 1, 0x65, 1, 2, 3]), None);
    }

    #[test]
    fn reads_avcc() {
        assert_eq!(sps_from_avcc(&[1, 0x4d, 0x40, 0x1e, 0xff]), Some([0x4d, 0x40, 0x1e]));
        assert_eq!(sps_from_avcc(&[0]), None);
    }
}
