//! AES-128 (CBC, PKCS#7) segment decryption as HLS' EXT-X-KEY METHOD=AES-128 specifies.

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, KeyIvInit};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecryptError {
    #[error("AES-128 key must be 16 bytes, got {0}")]
    KeyLength(usize),
    #[error("decryption failed (wrong key or IV, or a truncated segment)")]
    Padding,
}

/// Decrypts one segment.
pub fn decrypt_aes128(key: &[u8], iv: &[u8; 16], data: &[u8]) -> Result<Vec<u8>, DecryptError> {
    let key: [u8; 16] = key.try_into().map_err(|_| DecryptError::KeyLength(key.len()))?;
    cbc::Decryptor::<aes::Aes128>::new(&key.into(), iv.into())
        .decrypt_padded_vec_mut::<Pkcs7>(data)
        .map_err(|_| DecryptError::Padding)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes::cipher::BlockEncryptMut;

    #[test]
    fn round_trip_and_wrong_key() {
        let key = [7u8; 16];
        let iv = [1u8; 16];
        let plain = b"a transport stream, more or less".to_vec();
        let cipher =
            cbc::Encryptor::<aes::Aes128>::new(&key.into(), &iv.into()).encrypt_padded_vec_mut::<Pkcs7>(&plain);
        assert_eq!(decrypt_aes128(&key, &iv, &cipher), Ok(plain.clone()));
        assert_eq!(decrypt_aes128(&key[..8], &iv, &cipher), Err(DecryptError::KeyLength(8)));
        // A wrong key either breaks the padding or yields other bytes, never the plaintext.
        assert_ne!(decrypt_aes128(&[9u8; 16], &iv, &cipher), Ok(plain));
    }
}
