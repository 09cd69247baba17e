//! AES-128 segment keys (RFC 8216 §5.2), fetched once per key URI and shared by every segment and
//! track that names them.

use std::collections::HashMap;

use bytes::Bytes;
use url::Url;

use super::seams::Fetch;
use super::PlayError;
use crate::crypto;
use crate::playlist::Segment;

#[derive(Debug, Default)]
pub(super) struct Keys {
    cache: HashMap<Url, Bytes>,
}

impl Keys {
    /// Decrypts `data` if `segment` is encrypted, fetching its key the first time (the key's bytes
    /// are added to `fetched_bytes`).
    pub async fn decrypt(
        &mut self,
        fetcher: &impl Fetch,
        segment: &Segment,
        data: Vec<u8>,
        fetched_bytes: &mut u64,
    ) -> Result<Vec<u8>, PlayError> {
        let Some(key) = &segment.key else {
            return Ok(data);
        };
        let key_bytes = match self.cache.get(&key.uri) {
            Some(bytes) => bytes.clone(),
            None => {
                let bytes = fetcher.get(&key.uri, None).await?;
                *fetched_bytes = fetched_bytes.saturating_add(bytes.len() as u64);
                self.cache.insert(key.uri.clone(), bytes.clone());
                bytes
            }
        };
        crypto::decrypt_aes128(&key_bytes, &key.iv, &data)
            .map_err(|e| PlayError::Decrypt { sequence: segment.sequence, reason: e.to_string() })
    }
}
