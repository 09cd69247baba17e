//! HLS AES-128 full-segment encryption: AES-128-CBC with PKCS#7 padding. Without an IV attribute in
//! EXT-X-KEY, the IV of a segment is its media sequence number as a 16-byte big-endian integer.

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};

type Encryptor = cbc::Encryptor<aes::Aes128>;
type Decryptor = cbc::Decryptor<aes::Aes128>;

/// A 16-byte AES-128 key.
pub type Key = [u8; 16];

/// A fresh random key.
pub fn generate_key() -> Key {
    rand::random()
}

/// The implicit IV of the segment with this media sequence number.
pub fn iv_for_sequence(sequence: u64) -> [u8; 16] {
    u128::from(sequence).to_be_bytes()
}

/// Encrypts a whole segment as an HLS player will decrypt it.
pub fn encrypt_segment(key: &Key, sequence: u64, plain: &[u8]) -> Vec<u8> {
    Encryptor::new(key.into(), &iv_for_sequence(sequence).into()).encrypt_padded_vec_mut::<Pkcs7>(plain)
}

/// Decrypts a segment; `None` when the padding is wrong (wrong key, IV or truncated data).
pub fn decrypt_segment(key: &Key, sequence: u64, cipher: &[u8]) -> Option<Vec<u8>> {
    Decryptor::new(key.into(), &iv_for_sequence(sequence).into()).decrypt_padded_vec_mut::<Pkcs7>(cipher).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iv_is_the_sequence_number_big_endian() {
        let iv = iv_for_sequence(0x0102);
        assert_eq!(&iv[..14], &[0u8; 14]);
        assert_eq!(&iv[14..], &[1, 2]);
    }

    #[test]
    fn round_trips_and_pads_to_whole_blocks() {
        let key = generate_key();
        let plain = vec![0x47u8; 188 * 3];
        let cipher = encrypt_segment(&key, 7, &plain);
        assert_eq!(cipher.len() % 16, 0);
        assert!(cipher.len() > plain.len());
        assert_ne!(&cipher[..188], &plain[..188]);
        assert_eq!(decrypt_segment(&key, 7, &cipher).as_deref(), Some(&plain[..]));
        // The IV matters: the first block decrypts differently under another sequence number.
        assert_ne!(decrypt_segment(&key, 8, &cipher).as_deref(), Some(&plain[..]));
    }

    #[test]
    fn known_answer_from_openssl() {
        // printf '' | openssl enc -aes-128-cbc -K 000102030405060708090a0b0c0d0e0f -iv 000..01
        let key: Key = core::array::from_fn(|i| i as u8);
        let cipher = encrypt_segment(&key, 1, b"");
        assert_eq!(hex::encode(&cipher), "440bc8d11356189a647a85c29054082b");
        assert_eq!(decrypt_segment(&key, 1, &cipher), Some(Vec::new()));
    }
}
