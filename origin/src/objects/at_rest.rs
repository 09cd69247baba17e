//! Encryption at rest, without I/O: the at-rest key, sealing and opening one buffer (a sealed
//! object), and the frames of a stored original. The formats are described in the parent module's
//! documentation; this file is their only reader and writer.
//!
//! AES-256-GCM (NIST SP 800-38D) with a fresh random 96-bit nonce for every sealed object and every
//! frame: §8.2.2's RBG-based construction, which §8.3 allows for up to 2^32 invocations under one key
//! (a random 96-bit IV collides with probability about n²/2^97 after n of them). Rotate the key long
//! before that: at the origin's scale (a chunk or a frame per few MiB) that is petabytes.

use std::fmt;
use std::path::Path;

use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::{AeadCore, AeadInPlace, KeyInit, OsRng};
use aes_gcm::Aes256Gcm;
use bytes::{Buf, BytesMut};

use super::ObjectsError;

/// The length of an AES-256 key.
const KEY_LEN: usize = 32;
/// 96 bits: the IV length SP 800-38D §5.2.1.1 recommends (other lengths are hashed into one).
pub(crate) const NONCE_LEN: usize = 12;
/// The full 128-bit tag: SP 800-38D §5.2.1.2 allows shorter ones, with weaker forgery bounds.
pub(crate) const TAG_LEN: usize = 16;
/// The first bytes of a sealed object: the format and its version.
pub(crate) const SEALED_MAGIC: &[u8; 4] = b"EDS1";
/// The first bytes of an encrypted stored original (a framed object): the format and its version.
pub(crate) const FRAMED_MAGIC: &[u8; 4] = b"EDF1";
/// A frame's length field: the length of its ciphertext and tag.
const LENGTH_LEN: usize = 4;
/// The most plaintext one frame can carry: its length field counts the tag too.
pub(crate) const MAX_FRAME_PLAIN: usize = u32::MAX as usize - TAG_LEN;

/// The 256-bit key that seals objects at rest.
#[derive(Clone)]
pub struct AtRestKey([u8; KEY_LEN]);

impl fmt::Debug for AtRestKey {
    // Never the key itself: a Debug of the configuration may end up in a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AtRestKey(..)")
    }
}

impl AtRestKey {
    /// Reads the key from a file holding 64 hex characters (surrounding whitespace, such as a final
    /// newline, is ignored) or exactly 32 raw bytes.
    pub fn load(path: &Path) -> Result<AtRestKey, ObjectsError> {
        let from = || format!("file {}", path.display());
        let bytes = std::fs::read(path)
            .map_err(|e| ObjectsError::AtRestKey { from: from(), reason: format!("cannot be read: {e}") })?;
        Self::parse(&bytes).map_err(|reason| ObjectsError::AtRestKey { from: from(), reason })
    }

    /// The key from 64 hex characters or exactly 32 raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<AtRestKey, ObjectsError> {
        Self::parse(bytes).map_err(|reason| ObjectsError::AtRestKey { from: "the bytes given".into(), reason })
    }

    fn parse(bytes: &[u8]) -> Result<AtRestKey, String> {
        // Exactly 32 bytes is raw even if they happen to look like text: 32 is not a hex length.
        if let Ok(raw) = <[u8; KEY_LEN]>::try_from(bytes) {
            return Ok(AtRestKey(raw));
        }
        let text = bytes.trim_ascii();
        if text.len() != 2 * KEY_LEN {
            return Err(format!(
                "holds {} bytes ({} without surrounding whitespace): an AES-256 key is 64 hex characters or 32 raw \
                 bytes (make one with `openssl rand -hex 32`)",
                bytes.len(),
                text.len()
            ));
        }
        let mut raw = [0u8; KEY_LEN];
        hex::decode_to_slice(text, &mut raw)
            .map_err(|e| format!("is 64 characters long but not hex ({e}): an AES-256 key is 64 hex characters"))?;
        Ok(AtRestKey(raw))
    }
}

/// One frame of a framed object, parsed but not yet opened.
#[derive(Debug)]
pub(crate) struct SealedFrame {
    aad: Vec<u8>,
    nonce: [u8; NONCE_LEN],
    /// Ciphertext followed by the tag.
    body: BytesMut,
}

/// The AEAD under the at-rest key.
#[derive(Clone)]
pub(crate) struct Cipher {
    aead: Aes256Gcm,
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cipher(..)")
    }
}

fn integrity(key: &str) -> ObjectsError {
    ObjectsError::Integrity { key: key.to_string() }
}

/// The additional data of frame `index` of the framed object at `key`. Keys never hold NUL (they
/// are refused), and the index's first byte is NUL for any real index (< 2^56): so this never equals
/// a sealed object's additional data, which is a key alone.
fn frame_aad(key: &str, index: u64, last: bool) -> Vec<u8> {
    let mut aad = Vec::with_capacity(key.len() + 9);
    aad.extend_from_slice(key.as_bytes());
    aad.extend_from_slice(&index.to_be_bytes());
    aad.push(u8::from(last));
    aad
}

impl Cipher {
    pub(crate) fn new(key: &AtRestKey) -> Cipher {
        Cipher { aead: Aes256Gcm::new(GenericArray::from_slice(&key.0)) }
    }

    fn random_nonce() -> [u8; NONCE_LEN] {
        // The operating system's generator: SP 800-38D §8.2.2 asks for an approved RBG.
        Aes256Gcm::generate_nonce(&mut OsRng).into()
    }

    /// `header || nonce || ciphertext || tag` of `plain`, authenticated with `aad`.
    fn seal_into(
        &self,
        key: &str,
        header: &[u8],
        aad: &[u8],
        nonce: [u8; NONCE_LEN],
        plain: &[u8],
    ) -> Result<Vec<u8>, ObjectsError> {
        let mut out = Vec::with_capacity(header.len() + NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(header);
        out.extend_from_slice(&nonce);
        let start = out.len();
        out.extend_from_slice(plain);
        // Encrypting in place: the plaintext is copied once, into the output.
        // Refused only past SP 800-38D's limit of 2^39 - 256 bits of plaintext (§5.2.1.1).
        let tag = self
            .aead
            .encrypt_in_place_detached(GenericArray::from_slice(&nonce), aad, &mut out[start..])
            .map_err(|_| ObjectsError::TooLarge { key: key.to_string(), size: plain.len() as u64 })?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// A sealed object holding `plain`, bound to the object key `key`.
    pub(crate) fn seal(&self, key: &str, plain: &[u8]) -> Result<Vec<u8>, ObjectsError> {
        self.seal_with_nonce(key, plain, Self::random_nonce())
    }

    fn seal_with_nonce(&self, key: &str, plain: &[u8], nonce: [u8; NONCE_LEN]) -> Result<Vec<u8>, ObjectsError> {
        self.seal_into(key, SEALED_MAGIC, key.as_bytes(), nonce, plain)
    }

    /// The plaintext of the sealed object `sealed` stored at `key`.
    pub(crate) fn open(&self, key: &str, sealed: &[u8]) -> Result<Vec<u8>, ObjectsError> {
        let rest = sealed.strip_prefix(SEALED_MAGIC).ok_or_else(|| integrity(key))?;
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(integrity(key));
        }
        let (nonce, rest) = rest.split_at(NONCE_LEN);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
        let mut plain = ciphertext.to_vec();
        self.aead
            .decrypt_in_place_detached(
                GenericArray::from_slice(nonce),
                key.as_bytes(),
                &mut plain,
                GenericArray::from_slice(tag),
            )
            .map_err(|_| integrity(key))?;
        Ok(plain)
    }

    /// Frame `index` of the framed object at `key`, `last` when no frame follows it.
    pub(crate) fn seal_frame(&self, key: &str, index: u64, last: bool, plain: &[u8]) -> Result<Vec<u8>, ObjectsError> {
        self.seal_frame_with_nonce(key, index, last, plain, Self::random_nonce())
    }

    fn seal_frame_with_nonce(
        &self,
        key: &str,
        index: u64,
        last: bool,
        plain: &[u8],
        nonce: [u8; NONCE_LEN],
    ) -> Result<Vec<u8>, ObjectsError> {
        let length = u32::try_from(plain.len() + TAG_LEN)
            .ok()
            .filter(|_| plain.len() <= MAX_FRAME_PLAIN)
            .ok_or_else(|| ObjectsError::TooLarge { key: key.to_string(), size: plain.len() as u64 })?;
        self.seal_into(key, &length.to_be_bytes(), &frame_aad(key, index, last), nonce, plain)
    }

    /// The plaintext of a frame that [`FrameReader::take`] parsed.
    pub(crate) fn open_frame(&self, key: &str, frame: SealedFrame) -> Result<Vec<u8>, ObjectsError> {
        let SealedFrame { aad, nonce, mut body } = frame;
        let tag = body.split_off(body.len() - TAG_LEN);
        self.aead
            .decrypt_in_place_detached(
                GenericArray::from_slice(&nonce),
                &aad,
                &mut body,
                GenericArray::from_slice(&tag),
            )
            .map_err(|_| integrity(key))?;
        Ok(body.to_vec())
    }
}

/// Parses a framed object as its bytes arrive, knowing its total size beforehand (from the store):
/// the frame that ends exactly at the end of the object is the one opened as the last. Holds at most
/// one frame and what arrived after it.
#[derive(Debug)]
pub(crate) struct FrameReader {
    key: String,
    total: u64,
    /// Bytes of the object parsed: the magic and the frames taken.
    taken: u64,
    next_index: u64,
    buf: BytesMut,
    magic_seen: bool,
    last_taken: bool,
}

impl FrameReader {
    pub(crate) fn new(key: &str, total: u64) -> FrameReader {
        FrameReader {
            key: key.to_string(),
            total,
            taken: 0,
            next_index: 0,
            buf: BytesMut::new(),
            magic_seen: false,
            last_taken: false,
        }
    }

    /// Appends bytes of the object, in order.
    pub(crate) fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame, or None when more bytes are needed (or the last frame was taken).
    /// Fails on anything a writer of the format could not have written.
    pub(crate) fn take(&mut self) -> Result<Option<SealedFrame>, ObjectsError> {
        if self.last_taken {
            // Bytes past the last frame: appended, or the object grew while it was read.
            return if self.buf.is_empty() { Ok(None) } else { Err(integrity(&self.key)) };
        }
        if !self.magic_seen {
            if self.buf.len() < FRAMED_MAGIC.len() {
                return Ok(None);
            }
            if &self.buf[..FRAMED_MAGIC.len()] != FRAMED_MAGIC {
                return Err(integrity(&self.key));
            }
            self.buf.advance(FRAMED_MAGIC.len());
            self.taken += FRAMED_MAGIC.len() as u64;
            self.magic_seen = true;
        }
        if self.buf.len() < LENGTH_LEN {
            return Ok(None);
        }
        let mut length = [0u8; LENGTH_LEN];
        length.copy_from_slice(&self.buf[..LENGTH_LEN]);
        let length = u32::from_be_bytes(length) as u64;
        let frame_len = (LENGTH_LEN + NONCE_LEN) as u64 + length;
        // A length that runs past the object's end is a truncation or a tampered length: either way
        // refused before buffering what would never come.
        if length < TAG_LEN as u64 || self.taken + frame_len > self.total {
            return Err(integrity(&self.key));
        }
        if (self.buf.len() as u64) < frame_len {
            return Ok(None);
        }
        self.buf.advance(LENGTH_LEN);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&self.buf[..NONCE_LEN]);
        self.buf.advance(NONCE_LEN);
        // Within u32, checked above.
        let body = self.buf.split_to(length as usize);
        self.taken += frame_len;
        let last = self.taken == self.total;
        let aad = frame_aad(&self.key, self.next_index, last);
        self.next_index += 1;
        self.last_taken = last;
        Ok(Some(SealedFrame { aad, nonce, body }))
    }

    /// After the object's last byte was pushed and every frame taken: fails unless the last frame
    /// was reached and nothing is left over.
    pub(crate) fn finish(&self) -> Result<(), ObjectsError> {
        if self.last_taken && self.buf.is_empty() {
            Ok(())
        } else {
            Err(integrity(&self.key))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher(byte: u8) -> Cipher {
        Cipher::new(&AtRestKey([byte; KEY_LEN]))
    }

    /// The framed object that `assemble` would write for these chunks.
    fn encode(cipher: &Cipher, key: &str, chunks: &[&[u8]]) -> Vec<u8> {
        let mut out = FRAMED_MAGIC.to_vec();
        if chunks.is_empty() {
            out.extend(cipher.seal_frame(key, 0, true, b"").unwrap());
        }
        for (i, chunk) in chunks.iter().enumerate() {
            out.extend(cipher.seal_frame(key, i as u64, i + 1 == chunks.len(), chunk).unwrap());
        }
        out
    }

    /// Decodes, pushing the object `step` bytes at a time, as a stream would.
    fn decode_in_steps(cipher: &Cipher, key: &str, object: &[u8], step: usize) -> Result<Vec<u8>, ObjectsError> {
        let mut reader = FrameReader::new(key, object.len() as u64);
        let mut plain = Vec::new();
        for piece in object.chunks(step.max(1)) {
            reader.push(piece);
            while let Some(frame) = reader.take()? {
                plain.extend(cipher.open_frame(key, frame)?);
            }
        }
        reader.finish()?;
        Ok(plain)
    }

    fn decode(cipher: &Cipher, key: &str, object: &[u8]) -> Result<Vec<u8>, ObjectsError> {
        decode_in_steps(cipher, key, object, object.len())
    }

    fn is_integrity(result: Result<Vec<u8>, ObjectsError>, key: &str) -> bool {
        matches!(result, Err(ObjectsError::Integrity { key: k }) if k == key)
    }

    /// Frame boundaries: (start, end) of each frame in `object`.
    fn frames(object: &[u8]) -> Vec<(usize, usize)> {
        let mut at = FRAMED_MAGIC.len();
        let mut out = Vec::new();
        while at < object.len() {
            let length = u32::from_be_bytes(object[at..at + 4].try_into().unwrap()) as usize;
            let end = at + LENGTH_LEN + NONCE_LEN + length;
            out.push((at, end));
            at = end;
        }
        out
    }

    #[test]
    fn key_from_hex_raw_and_neither() {
        let hex_key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let from_hex = AtRestKey::from_bytes(format!("  {hex_key}\n").as_bytes()).unwrap();
        assert_eq!(hex::encode(from_hex.0), hex_key);
        assert_eq!(AtRestKey::from_bytes(&[7u8; 32]).unwrap().0, [7u8; 32]);
        for bad in [&b"abc"[..], &[0u8; 31], &[0u8; 33], "zz".repeat(32).as_bytes()] {
            let error = AtRestKey::from_bytes(bad).unwrap_err().to_string();
            assert!(error.contains("the bytes given") && error.contains("64 hex"), "{error}");
        }
        assert_eq!(format!("{from_hex:?}"), "AtRestKey(..)");
    }

    #[test]
    fn key_file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short.key");
        std::fs::write(&short, "abcd\n").unwrap();
        let error = AtRestKey::load(&short).unwrap_err().to_string();
        assert!(error.contains(&short.display().to_string()) && error.contains("holds 5 bytes"), "{error}");
        let missing = dir.path().join("missing.key");
        let error = AtRestKey::load(&missing).unwrap_err().to_string();
        assert!(error.contains(&missing.display().to_string()) && error.contains("cannot be read"), "{error}");
        let good = dir.path().join("good.key");
        std::fs::write(&good, [9u8; 32]).unwrap();
        assert_eq!(AtRestKey::load(&good).unwrap().0, [9u8; 32]);
    }

    #[test]
    fn sealed_round_trip_and_layout() {
        let c = cipher(1);
        for plain in [&b""[..], b"x", &[0xa5; 1000]] {
            let sealed = c.seal("uploads/u/00000000", plain).unwrap();
            assert_eq!(sealed.len(), SEALED_MAGIC.len() + NONCE_LEN + plain.len() + TAG_LEN);
            assert!(sealed.starts_with(SEALED_MAGIC));
            assert_eq!(c.open("uploads/u/00000000", &sealed).unwrap(), plain);
        }
        // Fresh nonces: the same plaintext twice gives different objects.
        assert_ne!(c.seal("k", b"same").unwrap(), c.seal("k", b"same").unwrap());
    }

    #[test]
    fn sealed_known_answer() {
        // Pins the format: magic || nonce || ciphertext || tag, AAD = the key. Under an all-zero key
        // and nonce with no AAD, AES-256-GCM of the empty string has tag 530f8afbc74536b9a963b4f1c4cb738b
        // (the McGrew-Viega GCM test vectors, test case 13).
        let zero = cipher(0);
        let sealed = zero.seal_with_nonce("", b"", [0u8; NONCE_LEN]).unwrap();
        assert_eq!(hex::encode(&sealed[SEALED_MAGIC.len() + NONCE_LEN..]), "530f8afbc74536b9a963b4f1c4cb738b");
        assert_eq!(zero.open("", &sealed).unwrap(), b"");
    }

    #[test]
    fn sealed_tampering_of_any_byte_is_refused() {
        let c = cipher(2);
        let sealed = c.seal("a/b", b"the plaintext of a chunk").unwrap();
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(is_integrity(c.open("a/b", &bad), "a/b"), "flipping byte {i} went unnoticed");
        }
        for cut in 0..sealed.len() {
            assert!(is_integrity(c.open("a/b", &sealed[..cut]), "a/b"), "cut at {cut} went unnoticed");
        }
        let mut longer = sealed.clone();
        longer.push(0);
        assert!(is_integrity(c.open("a/b", &longer), "a/b"));
    }

    #[test]
    fn sealed_under_another_key_or_name_is_refused() {
        let sealed = cipher(3).seal("a/b", b"secret").unwrap();
        assert!(is_integrity(cipher(4).open("a/b", &sealed), "a/b"));
        assert!(is_integrity(cipher(3).open("a/c", &sealed), "a/c"));
    }

    #[test]
    fn framed_round_trip_in_any_steps() {
        let c = cipher(5);
        let chunks: [&[u8]; 3] = [&[1u8; 100], &[2u8; 100], &[3u8; 37]];
        let object = encode(&c, "originals/x", &chunks);
        let expected: Vec<u8> = chunks.concat();
        for step in [1, 3, 4, 5, 16, 17, 100, object.len()] {
            assert_eq!(decode_in_steps(&c, "originals/x", &object, step).unwrap(), expected, "step {step}");
        }
    }

    #[test]
    fn framed_empty_file_is_one_empty_last_frame() {
        let c = cipher(6);
        let object = encode(&c, "originals/empty", &[]);
        assert_eq!(object.len(), FRAMED_MAGIC.len() + LENGTH_LEN + NONCE_LEN + TAG_LEN);
        assert_eq!(decode(&c, "originals/empty", &object).unwrap(), b"");
        // Without the frame, or without anything, it is not a complete object.
        assert!(is_integrity(decode(&c, "originals/empty", FRAMED_MAGIC), "originals/empty"));
        assert!(is_integrity(decode(&c, "originals/empty", b""), "originals/empty"));
    }

    #[test]
    fn framed_tampering_of_any_byte_is_refused() {
        let c = cipher(7);
        let object = encode(&c, "o", &[b"first chunk", b"second", b"end"]);
        for i in 0..object.len() {
            let mut bad = object.clone();
            bad[i] ^= 0x80;
            assert!(is_integrity(decode(&c, "o", &bad), "o"), "flipping byte {i} went unnoticed");
        }
    }

    #[test]
    fn framed_reordered_frames_are_refused() {
        let c = cipher(8);
        let object = encode(&c, "o", &[b"aaaa", b"bbbb", b"cccc"]);
        let f = frames(&object);
        let piece = |i: usize| &object[f[i].0..f[i].1];
        let mut swapped = FRAMED_MAGIC.to_vec();
        for i in [1, 0, 2] {
            swapped.extend_from_slice(piece(i));
        }
        assert!(is_integrity(decode(&c, "o", &swapped), "o"));
        // Dropping a middle frame shifts the indexes too.
        let mut dropped = FRAMED_MAGIC.to_vec();
        dropped.extend_from_slice(piece(0));
        dropped.extend_from_slice(piece(2));
        assert!(is_integrity(decode(&c, "o", &dropped), "o"));
    }

    #[test]
    fn framed_truncation_at_any_point_is_refused() {
        let c = cipher(9);
        let object = encode(&c, "o", &[b"aaaa", b"bbbb", b"cc"]);
        // Every cut, including right after a frame: the frame then ending the object was not sealed
        // as the last one.
        for cut in 0..object.len() {
            assert!(is_integrity(decode(&c, "o", &object[..cut]), "o"), "cut at {cut} went unnoticed");
        }
        let f = frames(&object);
        assert!(is_integrity(decode(&c, "o", &object[..f[1].1]), "o"));
        assert!(is_integrity(decode(&c, "o", &object[..f[0].1]), "o"));
    }

    #[test]
    fn framed_appended_frames_are_refused() {
        let c = cipher(10);
        let object = encode(&c, "o", &[b"aaaa", b"bbbb"]);
        let mut longer = object.clone();
        longer.extend(c.seal_frame("o", 2, true, b"more").unwrap());
        assert!(is_integrity(decode(&c, "o", &longer), "o"));
        // Garbage after the last frame, with a total size that covers it.
        let mut trailing = object.clone();
        trailing.push(0);
        assert!(is_integrity(decode(&c, "o", &trailing), "o"));
    }

    #[test]
    fn framed_under_another_key_or_name_is_refused() {
        let object = encode(&cipher(11), "originals/a", &[b"aaaa", b"bb"]);
        assert!(is_integrity(decode(&cipher(12), "originals/a", &object), "originals/a"));
        assert!(is_integrity(decode(&cipher(11), "originals/b", &object), "originals/b"));
    }

    #[test]
    fn a_frame_is_not_a_sealed_object_and_back() {
        let c = cipher(13);
        let frame = c.seal_frame("k", 0, true, b"data").unwrap();
        let mut as_sealed = SEALED_MAGIC.to_vec();
        as_sealed.extend_from_slice(&frame[LENGTH_LEN..]);
        assert!(is_integrity(c.open("k", &as_sealed), "k"));
        let sealed = c.seal("k", b"data").unwrap();
        let mut as_framed = FRAMED_MAGIC.to_vec();
        as_framed.extend_from_slice(&((sealed.len() - SEALED_MAGIC.len() - NONCE_LEN) as u32).to_be_bytes());
        as_framed.extend_from_slice(&sealed[SEALED_MAGIC.len()..]);
        assert!(is_integrity(decode(&c, "k", &as_framed), "k"));
    }

    #[test]
    fn a_frame_length_past_the_end_is_refused_before_buffering() {
        let mut reader = FrameReader::new("o", 100);
        reader.push(FRAMED_MAGIC);
        reader.push(&u32::MAX.to_be_bytes());
        assert!(matches!(reader.take(), Err(ObjectsError::Integrity { .. })));
    }
}
