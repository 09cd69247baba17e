//! How a file is cut into chunks, and the presigned chunk URLs: pure rules, tested without a server.
//!
//! A presigned URL lets a client (or a browser) `PUT` one chunk without the API token, S3-style: the
//! URL carries its expiry and an HMAC-SHA256 over the method, the path, the expiry and the upload id,
//! keyed by the origin's signing key in the `upload` domain (so an upload signature can never pass as
//! a playback token, which is signed in the `playback` domain).

use eddy_shared::signed_url::SigningKey;

/// The number of chunks of a `size`-byte file (an empty file has none).
pub fn chunk_count(size: u64, chunk_size: u64) -> u64 {
    if chunk_size == 0 {
        return 0;
    }
    size.div_ceil(chunk_size)
}

/// The exact byte count of chunk `index`: `chunk_size` except for a shorter last one; `None` past
/// the end.
pub fn chunk_len(size: u64, chunk_size: u64, index: u64) -> Option<u64> {
    if index >= chunk_count(size, chunk_size) {
        return None;
    }
    let start = index.saturating_mul(chunk_size);
    Some(size.saturating_sub(start).min(chunk_size))
}

/// The storage key of one received chunk; zero-padded so that listing order is chunk order.
pub fn chunk_key(upload_id: &str, index: u64) -> String {
    format!("uploads/{upload_id}/{index:010}")
}

pub fn chunk_path(upload_id: &str, index: u64) -> String {
    format!("/v1/uploads/{upload_id}/chunks/{index}")
}

fn message(path: &str, expires: u64, upload_id: &str) -> Vec<u8> {
    format!("PUT\n{path}\n{expires}\n{upload_id}").into_bytes()
}

/// The presigned URL (path and query) for `PUT`ting chunk `index`.
pub fn presign(key: &SigningKey, upload_id: &str, index: u64, expires: u64) -> String {
    let path = chunk_path(upload_id, index);
    let signature = hex::encode(key.mac("upload", &message(&path, expires, upload_id)));
    format!("{path}?expires={expires}&signature={signature}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PresignError {
    #[error("the chunk URL carries no valid expires and signature parameters")]
    Missing,
    #[error("the chunk URL has expired; ask GET /v1/uploads/{{id}} for fresh ones")]
    Expired,
    #[error("the chunk URL's signature does not match")]
    BadSignature,
}

/// Checks a presigned chunk URL's query against its path. The comparison is constant-time.
pub fn verify_presigned(
    key: &SigningKey,
    upload_id: &str,
    index: u64,
    query: Option<&str>,
    now: u64,
) -> Result<(), PresignError> {
    let mut expires = None;
    let mut signature = None;
    for pair in query.unwrap_or("").split('&') {
        match pair.split_once('=') {
            Some(("expires", value)) if expires.is_none() => expires = value.parse::<u64>().ok(),
            Some(("signature", value)) if signature.is_none() && value.len() == 64 => {
                signature = hex::decode(value).ok()
            }
            _ => {}
        }
    }
    let (Some(expires), Some(signature)) = (expires, signature) else {
        return Err(PresignError::Missing);
    };
    let path = chunk_path(upload_id, index);
    if !key.verify_mac("upload", &message(&path, expires, upload_id), &signature) {
        return Err(PresignError::BadSignature);
    }
    if now >= expires {
        return Err(PresignError::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32]).unwrap()
    }

    #[test]
    fn a_file_is_cut_into_full_chunks_and_a_short_last_one() {
        assert_eq!(chunk_count(0, 10), 0);
        assert_eq!(chunk_count(10, 10), 1);
        assert_eq!(chunk_count(25, 10), 3);
        assert_eq!(chunk_len(25, 10, 0), Some(10));
        assert_eq!(chunk_len(25, 10, 2), Some(5));
        assert_eq!(chunk_len(25, 10, 3), None);
        assert_eq!(chunk_len(u64::MAX, 1 << 20, u64::MAX), None);
        assert_eq!(chunk_count(u64::MAX, 1), u64::MAX);
    }

    #[test]
    fn chunk_keys_list_in_chunk_order() {
        assert!(chunk_key("u", 9) < chunk_key("u", 10));
    }

    #[test]
    fn a_presigned_url_opens_only_its_own_chunk_until_it_expires() {
        let key = key();
        let url = presign(&key, "up1", 3, 1000);
        let query = url.split_once('?').map(|(_, q)| q);
        assert_eq!(verify_presigned(&key, "up1", 3, query, 999), Ok(()));
        assert_eq!(verify_presigned(&key, "up1", 3, query, 1000), Err(PresignError::Expired));
        assert_eq!(verify_presigned(&key, "up1", 4, query, 999), Err(PresignError::BadSignature));
        assert_eq!(verify_presigned(&key, "up2", 3, query, 999), Err(PresignError::BadSignature));
        let later = query.unwrap().replace("expires=1000", "expires=9999");
        assert_eq!(verify_presigned(&key, "up1", 3, Some(&later), 999), Err(PresignError::BadSignature));
        assert_eq!(verify_presigned(&key, "up1", 3, None, 999), Err(PresignError::Missing));
        assert_eq!(verify_presigned(&key, "up1", 3, Some("expires=x&signature=zz"), 999), Err(PresignError::Missing));
        let other = SigningKey::from_bytes(&[8u8; 32]).unwrap();
        assert_eq!(verify_presigned(&other, "up1", 3, query, 999), Err(PresignError::BadSignature));
    }
}
