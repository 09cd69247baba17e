//! The JSON bodies of the origin's API (docs/origin-api.md), shared by the server and `eddy-upload` so
//! that the two cannot drift apart.

use serde::{Deserialize, Serialize};

use crate::meta::Visibility;

/// The header that carries a user's API token: `Authorization: Bearer TOKEN`.
pub const BEARER: &str = "Bearer ";

/// `POST /v1/uploads`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUpload {
    pub filename: String,
    pub size: u64,
    /// The whole file's SHA-256, lowercase hex. With it, posting the same file again resumes the open
    /// upload instead of starting another, and `complete` checks the assembled file against it.
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub visibility: Option<Visibility>,
}

/// Where and how to send one chunk.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkTarget {
    pub index: u64,
    pub size: u64,
    /// A presigned URL: `PUT` the chunk's bytes there, without the API token. Relative to the API's
    /// base URL unless the origin has `public_url` set.
    pub url: String,
}

/// A chunk the origin holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReceivedChunk {
    pub index: u64,
    /// The SHA-256 of the chunk's bytes, lowercase hex (the `ETag` of the `PUT`, without quotes).
    pub etag: String,
    pub size: u64,
}

/// The answer to `POST /v1/uploads` and `GET /v1/uploads/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadStatus {
    pub upload_id: String,
    pub video_id: String,
    /// `open`, `completed` or `expired`.
    pub state: String,
    pub filename: String,
    pub size: u64,
    pub chunk_size: u64,
    /// Unix seconds after which an unfinished upload and its chunks are deleted.
    pub expires_at: i64,
    /// Every chunk of the file, with a freshly signed URL.
    pub chunks: Vec<ChunkTarget>,
    pub received: Vec<ReceivedChunk>,
    /// Indexes of the chunks still to send.
    pub missing: Vec<u64>,
}

/// `POST /v1/uploads/{id}/complete`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompleteUpload {
    /// The ETag of every chunk, in order.
    pub etags: Vec<String>,
}

/// The answer to `POST /v1/uploads/{id}/complete`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Completed {
    pub video_id: String,
    pub sha256: String,
    /// The same content was already stored: it is not stored or packaged again.
    pub deduplicated: bool,
    pub state: String,
}

/// The answer to `GET /v1/videos/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VideoStatus {
    pub video_id: String,
    pub owner: String,
    pub filename: String,
    pub visibility: Visibility,
    /// `uploading`, `queued`, `packaging`, `ready` or `failed`.
    pub state: String,
    /// Packaging progress, 0–100, while `packaging`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u8>,
    /// Why packaging failed, when `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub created_at: i64,
    /// The share list (users other than the owner who may watch a private video). Only the owner sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_with: Option<Vec<String>>,
}

/// `PATCH /v1/videos/{id}`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateVideo {
    pub visibility: Visibility,
}

/// `POST /v1/videos/{id}/shares`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Share {
    pub user: String,
}

/// The answer to `GET /v1/videos/{id}/playback`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Playback {
    /// The master playlist's URL with the token in its query.
    pub url: String,
    pub token: String,
    pub expires_at: u64,
}

/// Every error answer: `{"error": "..."}` with a status that says which kind.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}
