//! The metadata store: users, uploads and their chunks, stored content (one row per distinct SHA-256,
//! which is also the packaging job), videos and their share lists.
//!
//! One implementation over `sqlx::AnyPool` with portable SQL, so that SQLite (the embedded default) and
//! PostgreSQL (a fleet of origins) run the same queries and pass the same tests. Times are Unix seconds
//! (`i64`), ids are random text, hashes are lowercase hex: no type that the two databases spell
//! differently.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum MetaError {
    #[error("metadata store: {0}")]
    Database(#[from] sqlx::Error),
    #[error("metadata store URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("{what} already exists")]
    Conflict { what: String },
    #[error("{what} not found")]
    NotFound { what: String },
}

pub type Result<T> = std::result::Result<T, MetaError>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub name: String,
    /// Hex salt and hex SHA-256(salt || secret) of the user's API token.
    pub token_salt: String,
    pub token_hash: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UploadState {
    Open,
    Completed,
    Expired,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub id: String,
    pub owner_id: String,
    pub video_id: String,
    pub filename: String,
    pub size: i64,
    /// The whole file's SHA-256 as the client declared it, when it did.
    pub sha256: Option<String>,
    pub chunk_size: i64,
    pub state: UploadState,
    pub created_at: i64,
    pub expires_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub index: i64,
    /// Hex SHA-256 of the chunk's bytes.
    pub etag: String,
    pub size: i64,
}

/// The packaging state of a stored content; it is also the state of the packaging job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentState {
    Queued,
    Packaging { percent: i64 },
    Ready,
    Failed { reason: String },
}

/// One distinct file, by SHA-256: stored once and packaged once however many videos point at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    pub sha256: String,
    pub size: i64,
    pub state: ContentState,
    /// How many times packaging was started (a restart retries a job in progress).
    pub attempts: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    Private,
    Unlisted,
    Public,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Video {
    pub id: String,
    pub owner_id: String,
    pub filename: String,
    pub visibility: Visibility,
    /// Set when the upload completes.
    pub content_sha256: Option<String>,
    pub upload_id: String,
    pub created_at: i64,
}

pub struct NewUpload<'a> {
    pub owner_id: &'a str,
    pub filename: &'a str,
    pub size: i64,
    pub sha256: Option<&'a str>,
    pub chunk_size: i64,
    pub visibility: Visibility,
    pub now: i64,
    pub expires_at: i64,
}

pub struct Meta {
    // The helper fills this in.
}
