//! The metadata store: users, uploads and their chunks, stored content (one row per distinct SHA-256,
//! which is also the packaging job), videos and their share lists.
//!
//! One implementation over `sqlx::AnyPool` with portable SQL, so that SQLite (the embedded default) and
//! PostgreSQL (a fleet of origins) run the same queries and pass the same tests. Times are Unix seconds
//! (`i64`), ids are random text, hashes are lowercase hex: no type that the two databases spell
//! differently.

use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Row, Transaction};
use thiserror::Error;

mod migrations;
#[cfg(test)]
mod tests;

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
    /// A row is not in the state the operation applies to (completing an upload twice, finishing a job
    /// that was requeued meanwhile).
    #[error("{what} is {state}, not {expected}")]
    WrongState { what: String, state: String, expected: String },
    /// The database holds a value this build cannot read: written by a newer build or by hand.
    #[error("metadata store holds {what}: written by a newer eddy-origin or edited by hand?")]
    Corrupt { what: String },
    #[error(
        "the metadata database is at schema version {found}, newer than the {known} this eddy-origin knows: \
         run a newer eddy-origin (or restore the database from before the upgrade)"
    )]
    TooNew { found: i64, known: i64 },
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

#[derive(Debug, Clone, Copy)]
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

/// What completing an upload did with its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompleteOutcome {
    /// The first upload of these bytes: the caller stores them and the packaging job is queued.
    NewContent,
    /// The bytes were already there (or are being stored by a concurrent upload that got there first):
    /// the caller neither stores nor packages them again.
    Deduplicated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

/// The metadata store. Cheap to clone: clones share one connection pool.
#[derive(Debug, Clone)]
pub struct Meta {
    pool: AnyPool,
    backend: Backend,
}

// Column lists, as macros so that `concat!` builds each query as one static string.
macro_rules! user_columns {
    () => {
        "id, name, token_salt, token_hash, created_at"
    };
}
macro_rules! upload_columns {
    () => {
        "id, owner_id, video_id, filename, size, sha256, chunk_size, state, created_at, expires_at"
    };
}
macro_rules! video_columns {
    () => {
        "id, owner_id, filename, visibility, content_sha256, upload_id, created_at"
    };
}
macro_rules! content_columns {
    () => {
        "sha256, size, state, progress, failure, attempts, created_at, updated_at"
    };
}

const ALLOWED_URLS: &str = "expected sqlite://PATH, sqlite::memory: or postgres://USER@HOST:PORT/DATABASE \
                            (postgresql:// too)";

/// Where a URL points, once checked.
enum Target {
    SqliteFile(String),
    SqliteMemory(String),
    Postgres(String),
}

fn parse_url(url: &str) -> Result<Target> {
    let bad = |reason: &str| MetaError::BadUrl { url: redacted(url), reason: reason.to_string() };
    if let Some(rest) = url.strip_prefix("sqlite:") {
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let memory = path == ":memory:" || path == "//:memory:" || query.split('&').any(|pair| pair == "mode=memory");
        if memory {
            return Ok(Target::SqliteMemory(url.to_string()));
        }
        if path.trim_start_matches('/').is_empty() {
            return Err(bad(&format!("no file path; {ALLOWED_URLS}")));
        }
        // sqlx opens an existing file only, unless told to create it.
        if query.split('&').any(|pair| pair.starts_with("mode=")) {
            return Ok(Target::SqliteFile(url.to_string()));
        }
        let separator = if query.is_empty() { "?" } else { "&" };
        let trailing = if url.ends_with('?') { "" } else { separator };
        return Ok(Target::SqliteFile(format!("{url}{trailing}mode=rwc")));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Target::Postgres(url.to_string()));
    }
    Err(bad(ALLOWED_URLS))
}

/// The URL with its password, if any, hidden: it ends up in logs through the error.
fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            if parsed.set_password(Some("***")).is_ok() {
                parsed.to_string()
            } else {
                url.to_string()
            }
        }
        _ => url.to_string(),
    }
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// 16 random bytes as hex: unguessable, so an id alone says nothing about other rows.
fn random_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// A foreign key violation means that a row the statement points at does not exist.
fn missing(error: sqlx::Error, what: impl FnOnce() -> String) -> MetaError {
    match &error {
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => MetaError::NotFound { what: what() },
        _ => MetaError::Database(error),
    }
}

fn upload_state_text(state: UploadState) -> &'static str {
    match state {
        UploadState::Open => "open",
        UploadState::Completed => "completed",
        UploadState::Expired => "expired",
    }
}

fn visibility_text(visibility: Visibility) -> &'static str {
    match visibility {
        Visibility::Private => "private",
        Visibility::Unlisted => "unlisted",
        Visibility::Public => "public",
    }
}

fn user_from(row: &AnyRow) -> Result<User> {
    Ok(User {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        token_salt: row.try_get("token_salt")?,
        token_hash: row.try_get("token_hash")?,
        created_at: row.try_get("created_at")?,
    })
}

fn upload_from(row: &AnyRow) -> Result<Upload> {
    let id: String = row.try_get("id")?;
    let state: String = row.try_get("state")?;
    let state = match state.as_str() {
        "open" => UploadState::Open,
        "completed" => UploadState::Completed,
        "expired" => UploadState::Expired,
        _ => return Err(MetaError::Corrupt { what: format!("upload {id} in an unknown state {state:?}") }),
    };
    Ok(Upload {
        owner_id: row.try_get("owner_id")?,
        video_id: row.try_get("video_id")?,
        filename: row.try_get("filename")?,
        size: row.try_get("size")?,
        sha256: row.try_get("sha256")?,
        chunk_size: row.try_get("chunk_size")?,
        state,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        id,
    })
}

fn video_from(row: &AnyRow) -> Result<Video> {
    let id: String = row.try_get("id")?;
    let visibility: String = row.try_get("visibility")?;
    let visibility = match visibility.as_str() {
        "private" => Visibility::Private,
        "unlisted" => Visibility::Unlisted,
        "public" => Visibility::Public,
        _ => return Err(MetaError::Corrupt { what: format!("video {id} with an unknown visibility {visibility:?}") }),
    };
    Ok(Video {
        owner_id: row.try_get("owner_id")?,
        filename: row.try_get("filename")?,
        visibility,
        content_sha256: row.try_get("content_sha256")?,
        upload_id: row.try_get("upload_id")?,
        created_at: row.try_get("created_at")?,
        id,
    })
}

fn content_from(row: &AnyRow) -> Result<Content> {
    let sha256: String = row.try_get("sha256")?;
    let state: String = row.try_get("state")?;
    let state = match state.as_str() {
        "queued" => ContentState::Queued,
        "packaging" => ContentState::Packaging { percent: row.try_get("progress")? },
        "ready" => ContentState::Ready,
        "failed" => {
            let reason: Option<String> = row.try_get("failure")?;
            ContentState::Failed { reason: reason.unwrap_or_default() }
        }
        _ => return Err(MetaError::Corrupt { what: format!("content {sha256} in an unknown state {state:?}") }),
    };
    Ok(Content {
        size: row.try_get("size")?,
        state,
        attempts: row.try_get("attempts")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        sha256,
    })
}

impl Meta {
    /// Opens the store and brings its schema up to date. `sqlite://PATH` (the file is created if
    /// missing), `sqlite::memory:` (gone when the `Meta` is dropped), or `postgres://...`.
    pub async fn connect(url: &str) -> Result<Meta> {
        sqlx::any::install_default_drivers();
        let (backend, options, url) = match parse_url(url)? {
            // Every new connection to `sqlite::memory:` would open a new, empty database: keep exactly
            // one, and never let the pool retire it.
            Target::SqliteMemory(url) => (
                Backend::Sqlite,
                AnyPoolOptions::new()
                    .max_connections(1)
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            sqlx::query("PRAGMA foreign_keys = ON").execute(&mut *conn).await?;
                            Ok(())
                        })
                    }),
                url,
            ),
            // WAL lets readers go on while one connection writes; the busy timeout makes a writer
            // wait for another rather than fail at once.
            Target::SqliteFile(url) => (
                Backend::Sqlite,
                AnyPoolOptions::new().max_connections(8).after_connect(|conn, _| {
                    Box::pin(async move {
                        for pragma in
                            ["PRAGMA journal_mode = WAL", "PRAGMA busy_timeout = 5000", "PRAGMA foreign_keys = ON"]
                        {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                        Ok(())
                    })
                }),
                url,
            ),
            Target::Postgres(url) => (Backend::Postgres, AnyPoolOptions::new().max_connections(10), url),
        };
        let pool = options.connect(&url).await?;
        let meta = Meta { pool, backend };
        meta.migrate().await?;
        Ok(meta)
    }

    /// "sqlite" or "postgres".
    pub fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    pub(crate) async fn migrate(&self) -> Result<()> {
        let mut tx = self.begin().await?;
        migrations::migrate(&mut tx, self.backend, unix_now()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A write transaction. On SQLite it takes the write lock up front: a deferred transaction that
    /// reads and then writes fails at once with SQLITE_BUSY when another connection wrote in between,
    /// whereas waiting for the lock at BEGIN honours the busy timeout.
    async fn begin(&self) -> Result<Transaction<'static, Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    // -----------------------------------------------------------------------------------------
    // Users

    pub async fn add_user(&self, name: &str, token_salt: &str, token_hash: &str, now: i64) -> Result<User> {
        let user = User {
            id: random_id(),
            name: name.to_string(),
            token_salt: token_salt.to_string(),
            token_hash: token_hash.to_string(),
            created_at: now,
        };
        // DO NOTHING rather than catching the unique violation: the two databases report it with
        // different codes, and PostgreSQL would abort an enclosing transaction on it.
        let done = sqlx::query(concat!(
            "INSERT INTO users (",
            user_columns!(),
            ") VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING"
        ))
        .bind(&user.id)
        .bind(&user.name)
        .bind(&user.token_salt)
        .bind(&user.token_hash)
        .bind(user.created_at)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(MetaError::Conflict { what: format!("user {name:?}") });
        }
        Ok(user)
    }

    pub async fn user_by_id(&self, id: &str) -> Result<Option<User>> {
        let row = sqlx::query(concat!("SELECT ", user_columns!(), " FROM users WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user_from).transpose()
    }

    pub async fn user_by_name(&self, name: &str) -> Result<Option<User>> {
        let row = sqlx::query(concat!("SELECT ", user_columns!(), " FROM users WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user_from).transpose()
    }

    // -----------------------------------------------------------------------------------------
    // Uploads

    /// Creates an open upload and the video it will become, together: the video exists from the first
    /// request on, so that its id can be handed out and its settings changed while uploading.
    pub async fn create_upload(&self, new: &NewUpload<'_>) -> Result<(Upload, Video)> {
        let video = Video {
            id: random_id(),
            owner_id: new.owner_id.to_string(),
            filename: new.filename.to_string(),
            visibility: new.visibility,
            content_sha256: None,
            upload_id: random_id(),
            created_at: new.now,
        };
        let upload = Upload {
            id: video.upload_id.clone(),
            owner_id: video.owner_id.clone(),
            video_id: video.id.clone(),
            filename: video.filename.clone(),
            size: new.size,
            sha256: new.sha256.map(str::to_string),
            chunk_size: new.chunk_size,
            state: UploadState::Open,
            created_at: new.now,
            expires_at: new.expires_at,
        };
        let no_owner = || format!("user {}", new.owner_id);
        let mut tx = self.begin().await?;
        // The video first: the upload's foreign key points at it.
        sqlx::query(concat!("INSERT INTO videos (", video_columns!(), ") VALUES ($1, $2, $3, $4, $5, $6, $7)"))
            .bind(&video.id)
            .bind(&video.owner_id)
            .bind(&video.filename)
            .bind(visibility_text(video.visibility))
            .bind(&video.content_sha256)
            .bind(&video.upload_id)
            .bind(video.created_at)
            .execute(&mut *tx)
            .await
            .map_err(|e| missing(e, no_owner))?;
        sqlx::query(concat!(
            "INSERT INTO uploads (",
            upload_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .bind(&upload.id)
        .bind(&upload.owner_id)
        .bind(&upload.video_id)
        .bind(&upload.filename)
        .bind(upload.size)
        .bind(&upload.sha256)
        .bind(upload.chunk_size)
        .bind(upload_state_text(upload.state))
        .bind(upload.created_at)
        .bind(upload.expires_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| missing(e, no_owner))?;
        tx.commit().await?;
        Ok((upload, video))
    }

    pub async fn upload(&self, id: &str) -> Result<Option<Upload>> {
        let row = sqlx::query(concat!("SELECT ", upload_columns!(), " FROM uploads WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(upload_from).transpose()
    }

    /// The newest open upload of `owner_id` declaring this SHA-256 and size, expired or not: a client
    /// that lost its upload id resumes by asking for the same file again.
    pub async fn open_upload_for(&self, owner_id: &str, sha256: &str, size: i64) -> Result<Option<Upload>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            upload_columns!(),
            " FROM uploads WHERE owner_id = $1 AND sha256 = $2 AND size = $3 AND state = 'open'",
            " ORDER BY created_at DESC, id DESC LIMIT 1"
        ))
        .bind(owner_id)
        .bind(sha256)
        .bind(size)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(upload_from).transpose()
    }

    /// Records a received chunk; a chunk sent again replaces the earlier one (a retry after a lost
    /// response, or a corrected resend).
    pub async fn record_chunk(&self, upload_id: &str, index: i64, etag: &str, size: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO chunks (upload_id, chunk_index, etag, size) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (upload_id, chunk_index) DO UPDATE SET etag = excluded.etag, size = excluded.size",
        )
        .bind(upload_id)
        .bind(index)
        .bind(etag)
        .bind(size)
        .execute(&self.pool)
        .await
        .map_err(|e| missing(e, || format!("upload {upload_id}")))?;
        Ok(())
    }

    /// The chunks received so far, by index.
    pub async fn chunks(&self, upload_id: &str) -> Result<Vec<Chunk>> {
        let rows = sqlx::query("SELECT chunk_index, etag, size FROM chunks WHERE upload_id = $1 ORDER BY chunk_index")
            .bind(upload_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(Chunk { index: row.try_get("chunk_index")?, etag: row.try_get("etag")?, size: row.try_get("size")? })
            })
            .collect()
    }

    pub async fn set_upload_state(&self, id: &str, state: UploadState) -> Result<()> {
        let done = sqlx::query("UPDATE uploads SET state = $1 WHERE id = $2")
            .bind(upload_state_text(state))
            .bind(id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(MetaError::NotFound { what: format!("upload {id}") });
        }
        Ok(())
    }

    /// Open uploads whose time is up (`expires_at <= now`), the longest expired first.
    pub async fn expired_uploads(&self, now: i64) -> Result<Vec<Upload>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            upload_columns!(),
            " FROM uploads WHERE state = 'open' AND expires_at <= $1 ORDER BY expires_at, id"
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(upload_from).collect()
    }

    /// Forgets an upload and its chunks. Its video goes too when it never got content (an abandoned or
    /// expired upload leaves nothing to watch); a completed upload's video stays. Returns whether the
    /// upload existed: two sweepers may race to delete the same one.
    pub async fn delete_upload(&self, id: &str) -> Result<bool> {
        let mut tx = self.begin().await?;
        let video_id: Option<String> =
            sqlx::query_scalar("SELECT video_id FROM uploads WHERE id = $1").bind(id).fetch_optional(&mut *tx).await?;
        let Some(video_id) = video_id else {
            return Ok(false);
        };
        sqlx::query("DELETE FROM chunks WHERE upload_id = $1").bind(id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM uploads WHERE id = $1").bind(id).execute(&mut *tx).await?;
        let empty: Option<String> =
            sqlx::query_scalar("SELECT id FROM videos WHERE id = $1 AND content_sha256 IS NULL")
                .bind(&video_id)
                .fetch_optional(&mut *tx)
                .await?;
        if empty.is_some() {
            sqlx::query("DELETE FROM shares WHERE video_id = $1").bind(&video_id).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM videos WHERE id = $1").bind(&video_id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    // -----------------------------------------------------------------------------------------
    // Content and packaging jobs

    /// In one transaction: the upload becomes Completed, its video points at the content, and the
    /// content row (the packaging job, Queued) is created unless these bytes are already known.
    /// Concurrent completes of the same new bytes are decided by the primary key: exactly one insert
    /// affects a row, and only that caller gets `NewContent`.
    pub async fn complete_upload(&self, upload_id: &str, sha256: &str, size: i64, now: i64) -> Result<CompleteOutcome> {
        let mut tx = self.begin().await?;
        let done = sqlx::query("UPDATE uploads SET state = 'completed' WHERE id = $1 AND state = 'open'")
            .bind(upload_id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            let state: Option<String> = sqlx::query_scalar("SELECT state FROM uploads WHERE id = $1")
                .bind(upload_id)
                .fetch_optional(&mut *tx)
                .await?;
            let what = format!("upload {upload_id}");
            return Err(match state {
                None => MetaError::NotFound { what },
                Some(state) => MetaError::WrongState { what, state, expected: "open".into() },
            });
        }
        // Before the video update: the video's foreign key needs the content row.
        let inserted = sqlx::query(concat!(
            "INSERT INTO contents (",
            content_columns!(),
            ") VALUES ($1, $2, 'queued', 0, NULL, 0, $3, $4) ON CONFLICT (sha256) DO NOTHING"
        ))
        .bind(sha256)
        .bind(size)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let video = sqlx::query(
            "UPDATE videos SET content_sha256 = $1 WHERE id = (SELECT video_id FROM uploads WHERE id = $2)",
        )
        .bind(sha256)
        .bind(upload_id)
        .execute(&mut *tx)
        .await?;
        if video.rows_affected() == 0 {
            return Err(MetaError::NotFound { what: format!("the video of upload {upload_id}") });
        }
        tx.commit().await?;
        Ok(if inserted.rows_affected() == 1 { CompleteOutcome::NewContent } else { CompleteOutcome::Deduplicated })
    }

    pub async fn content(&self, sha256: &str) -> Result<Option<Content>> {
        let row = sqlx::query(concat!("SELECT ", content_columns!(), " FROM contents WHERE sha256 = $1"))
            .bind(sha256)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(content_from).transpose()
    }

    /// Takes the oldest queued job: it becomes Packaging at 0 % with one more attempt. Origins sharing
    /// a database race for it; the conditional update lets exactly one win, and a loser looks again.
    pub async fn claim_job(&self, now: i64) -> Result<Option<Content>> {
        loop {
            let oldest: Option<String> = sqlx::query_scalar(
                "SELECT sha256 FROM contents WHERE state = 'queued' ORDER BY created_at, sha256 LIMIT 1",
            )
            .fetch_optional(&self.pool)
            .await?;
            let Some(sha256) = oldest else {
                return Ok(None);
            };
            // RETURNING (SQLite 3.35+, PostgreSQL) gives the row as this update left it, with no other
            // statement in between; no row means another claimer won.
            let claimed = sqlx::query(concat!(
                "UPDATE contents SET state = 'packaging', progress = 0, failure = NULL, attempts = attempts + 1,",
                " updated_at = $1 WHERE sha256 = $2 AND state = 'queued' RETURNING ",
                content_columns!()
            ))
            .bind(now)
            .bind(&sha256)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(row) = claimed {
                return content_from(&row).map(Some);
            }
        }
    }

    /// Why a job update matched no row: the content is missing, or not in the state expected.
    async fn job_not(&self, sha256: &str, expected: &str) -> MetaError {
        let what = format!("content {sha256}");
        match sqlx::query_scalar::<_, String>("SELECT state FROM contents WHERE sha256 = $1")
            .bind(sha256)
            .fetch_optional(&self.pool)
            .await
        {
            Ok(None) => MetaError::NotFound { what },
            Ok(Some(state)) => MetaError::WrongState { what, state, expected: expected.to_string() },
            Err(e) => MetaError::Database(e),
        }
    }

    /// Records how far packaging got (clamped to 0..=100). Fails with `WrongState` when the job is no
    /// longer packaging (requeued by a restart meanwhile), which tells the packager to stop.
    pub async fn set_job_progress(&self, sha256: &str, percent: i64, now: i64) -> Result<()> {
        let done =
            sqlx::query("UPDATE contents SET progress = $1, updated_at = $2 WHERE sha256 = $3 AND state = 'packaging'")
                .bind(percent.clamp(0, 100))
                .bind(now)
                .bind(sha256)
                .execute(&self.pool)
                .await?;
        if done.rows_affected() == 0 {
            return Err(self.job_not(sha256, "packaging").await);
        }
        Ok(())
    }

    /// Ends a packaging job: Ready, or Failed with the reason.
    pub async fn finish_job(&self, sha256: &str, outcome: std::result::Result<(), String>, now: i64) -> Result<()> {
        let (state, progress, failure) = match outcome {
            Ok(()) => ("ready", 100_i64, None),
            Err(reason) => ("failed", 0, Some(reason)),
        };
        let done = sqlx::query(
            "UPDATE contents SET state = $1, progress = $2, failure = $3, updated_at = $4 \
             WHERE sha256 = $5 AND state = 'packaging'",
        )
        .bind(state)
        .bind(progress)
        .bind(failure)
        .bind(now)
        .bind(sha256)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(self.job_not(sha256, "packaging").await);
        }
        Ok(())
    }

    /// Puts every job left Packaging back in the queue; returns how many. Called at startup, so that a
    /// job interrupted by a crash runs again. Every origin sharing a database runs it when it starts,
    /// so it also requeues the jobs that other, live origins are running: their next progress report
    /// fails with `WrongState`.
    pub async fn requeue_interrupted_jobs(&self, now: i64) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE contents SET state = 'queued', progress = 0, updated_at = $1 WHERE state = 'packaging'",
        )
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Queues a failed job again (an operator's retry after fixing the cause).
    pub async fn retry_failed_job(&self, sha256: &str, now: i64) -> Result<()> {
        let done = sqlx::query(
            "UPDATE contents SET state = 'queued', progress = 0, failure = NULL, updated_at = $1 \
             WHERE sha256 = $2 AND state = 'failed'",
        )
        .bind(now)
        .bind(sha256)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(self.job_not(sha256, "failed").await);
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Videos

    pub async fn video(&self, id: &str) -> Result<Option<Video>> {
        let row = sqlx::query(concat!("SELECT ", video_columns!(), " FROM videos WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(video_from).transpose()
    }

    /// The owner's videos, newest first.
    pub async fn videos_of(&self, owner_id: &str) -> Result<Vec<Video>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            video_columns!(),
            " FROM videos WHERE owner_id = $1 ORDER BY created_at DESC, id DESC"
        ))
        .bind(owner_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(video_from).collect()
    }

    /// Every video whose upload turned out to be these bytes, oldest first.
    pub async fn videos_with_content(&self, sha256: &str) -> Result<Vec<Video>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            video_columns!(),
            " FROM videos WHERE content_sha256 = $1 ORDER BY created_at, id"
        ))
        .bind(sha256)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(video_from).collect()
    }

    pub async fn set_visibility(&self, video_id: &str, visibility: Visibility) -> Result<()> {
        let done = sqlx::query("UPDATE videos SET visibility = $1 WHERE id = $2")
            .bind(visibility_text(visibility))
            .bind(video_id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(MetaError::NotFound { what: format!("video {video_id}") });
        }
        Ok(())
    }

    /// Forgets a video with its shares, its upload and that upload's chunks. The content stays: other
    /// videos may point at it. Returns whether the video existed.
    pub async fn delete_video(&self, id: &str) -> Result<bool> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM shares WHERE video_id = $1").bind(id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM chunks WHERE upload_id IN (SELECT id FROM uploads WHERE video_id = $1)")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM uploads WHERE video_id = $1").bind(id).execute(&mut *tx).await?;
        let done = sqlx::query("DELETE FROM videos WHERE id = $1").bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    // -----------------------------------------------------------------------------------------
    // Shares

    /// Lets `user_id` watch `video_id`; sharing again changes nothing.
    pub async fn add_share(&self, video_id: &str, user_id: &str) -> Result<()> {
        sqlx::query("INSERT INTO shares (video_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(video_id)
            .bind(user_id)
            .execute(&self.pool)
            .await
            .map_err(|e| missing(e, || format!("video {video_id} or user {user_id}")))?;
        Ok(())
    }

    /// Whether the share existed.
    pub async fn remove_share(&self, video_id: &str, user_id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM shares WHERE video_id = $1 AND user_id = $2")
            .bind(video_id)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The users a video is shared with, by name.
    pub async fn shares(&self, video_id: &str) -> Result<Vec<User>> {
        let rows = sqlx::query(
            "SELECT u.id AS id, u.name AS name, u.token_salt AS token_salt, u.token_hash AS token_hash, \
             u.created_at AS created_at FROM shares s JOIN users u ON u.id = s.user_id \
             WHERE s.video_id = $1 ORDER BY u.name",
        )
        .bind(video_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(user_from).collect()
    }

    pub async fn is_shared_with(&self, video_id: &str, user_id: &str) -> Result<bool> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM shares WHERE video_id = $1 AND user_id = $2")
            .bind(video_id)
            .bind(user_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(count > 0)
    }
}
