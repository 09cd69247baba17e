//! The origin's object storage: upload chunks, stored originals and packaged files, in a directory
//! (`file:///abs/dir`) or an S3 bucket (`s3://bucket`, any S3-compatible server), through the
//! `object_store` crate.
//!
//! # Keys
//!
//! Relative paths such as `uploads/{id}/00000003`, `originals/{sha256}`,
//! `packaged/{sha256}/v0/seg1.ts`. Refused ([`ObjectsError::Key`]), so that no key can reach outside
//! the store's root or mean two things: empty, a leading or trailing `/`, an empty segment (`a//b`),
//! a `.` or `..` segment, a control character (NUL included), `\`, `#` (the file backend keeps an
//! unfinished multipart upload to `name` as `name#N`), or more than 1024 bytes (S3's limit). A
//! prefix (of [`Objects::list`], [`Objects::delete_prefix`], [`Objects::put_dir`]) is `""` or a key
//! with an optional trailing `/`, and matches whole segments: `uploads/ab` covers `uploads/ab/1` but
//! never `uploads/abc/1`.
//!
//! # Encryption at rest
//!
//! With an [`AtRestKey`], the objects that hold users' uploads (chunks and stored originals) are
//! encrypted with AES-256-GCM (NIST SP 800-38D), each piece under a fresh random 96-bit nonce and
//! bound to its object key through the additional authenticated data (AAD): an object copied or
//! moved to another key does not open. Packaged files are written plain ([`Objects::put`],
//! [`Objects::put_dir`]): they are public or already AES-128 encrypted for HLS.
//!
//! What GCM cannot see: an object replaced by an older version of itself under the same key. The
//! metadata store keeps each original's SHA-256, which is its key, and `assemble` returns it.
//!
//! ## Sealed object ([`Objects::put_sealed`]: upload chunks)
//!
//! ```text
//! "EDS1"  nonce (12 bytes)  ciphertext (as long as the plaintext)  tag (16 bytes)
//! AAD = the object key (UTF-8)
//! ```
//!
//! ## Stored original ([`Objects::assemble`]: a framed object)
//!
//! ```text
//! "EDF1"  frame 0  frame 1  ...  frame n-1          (n >= 1: an empty file is one empty frame)
//! frame i = length (4 bytes, big-endian: ciphertext + tag)  nonce (12 bytes)  ciphertext  tag (16 bytes)
//! AAD of frame i = object key (UTF-8) || i (8 bytes, big-endian) || last (1 byte: 1 for frame n-1, else 0)
//! ```
//!
//! One frame per upload chunk, so at most 2^32 - 17 bytes each. The reader knows the object's size
//! from the store and opens the frame that ends exactly at the end as the last one. The index stops
//! reordering and dropping frames inside; the `last` flag (the construction of Hoang, Reyhanitabar,
//! Rogaway and Vizár, "Online Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance",
//! CRYPTO 2015) stops cutting the object after any frame, or adding frames after the last. A key
//! never holds NUL and a real index always starts with one, so a frame's AAD is never a sealed
//! object's. The magic bytes name the version: a later format gets new ones.
//!
//! Without a key, sealed objects and originals are the plain bytes, nothing added. Objects written
//! plain do not open once a key is set (they fail as [`ObjectsError::Integrity`]); objects written
//! encrypted read back, without the key, as their stored bytes, which a plain file may begin like:
//! an origin keeps its key, or starts again with an empty store.

mod at_rest;
#[cfg(test)]
mod tests;

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, WriteMultipart};
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::io::AsyncWriteExt;

pub use at_rest::AtRestKey;
use at_rest::{Cipher, FrameReader, FRAMED_MAGIC, MAX_FRAME_PLAIN};

/// Parts of a multipart upload: above S3's 5 MiB minimum for all but the last part, and large
/// enough that S3's 10,000 parts hold an original of 160 GiB.
const PART_SIZE: usize = 16 * 1024 * 1024;
/// Parts of one multipart upload in flight at once: bounds `assemble`'s memory to about
/// (this + 1) parts and one chunk.
const PARTS_IN_FLIGHT: usize = 2;
/// Files `put_dir` uploads at once.
const PUT_DIR_PARALLEL: usize = 8;
/// S3's limit on a key's length, in bytes.
const MAX_KEY_LEN: usize = 1024;

#[derive(Debug, Error)]
pub enum ObjectsError {
    #[error("object store URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("object key {key:?} refused: {reason}")]
    Key { key: String, reason: String },
    #[error("at-rest key from {from}: {reason}")]
    AtRestKey { from: String, reason: String },
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("object store: {0}")]
    Io(#[from] std::io::Error),
    #[error("object store: {}: {source}", path.display())]
    File { path: PathBuf, source: std::io::Error },
    #[error(
        "object {key:?} failed its integrity check: changed, cut short, moved from another key, written \
         unencrypted, or sealed under another at-rest key"
    )]
    Integrity { key: String },
    #[error("SHA-256 mismatch: expected {expected}, the bytes have {actual}")]
    Mismatch { expected: String, actual: String },
    #[error("object {key:?} not found")]
    NotFound { key: String },
    #[error("object {key:?}: {size} bytes is more than one encrypted piece holds")]
    TooLarge { key: String, size: u64 },
}

pub type Result<T> = std::result::Result<T, ObjectsError>;

/// How to reach an S3 bucket. Fields left out come from the environment (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT`..., as `object_store` reads them), then from the
/// instance's role.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Options {
    /// For S3-compatible servers (MinIO, Ceph, moto): `http://host:port`. Requests use path-style
    /// addressing (`endpoint/bucket/key`).
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Allows an `http://` endpoint: only for a server on the same host or a trusted network.
    pub allow_http: bool,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            endpoint: None,
            region: "us-east-1".into(),
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
        }
    }
}

/// What `head` tells of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Stored bytes: for a sealed object or an encrypted original, more than the plaintext.
    pub size: u64,
    /// A strong validator, quoted as HTTP writes it (RFC 9110 §8.8.3): `"..."`.
    pub etag: String,
    pub last_modified: SystemTime,
}

/// The object store. Cheap to clone: the clones share one client.
#[derive(Clone)]
pub struct Objects {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Objects {
    // The store's Display (`LocalFileSystem(file:///...)`, `AmazonS3(bucket)`): never its
    // configuration, which holds the S3 credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Objects")
            .field("store", &format_args!("{}", self.inner.store))
            .field("encrypted", &self.encrypted())
            .finish()
    }
}

struct Inner {
    store: Box<dyn ObjectStore>,
    backend: &'static str,
    /// Shared with the blocking tasks that encrypt and decrypt.
    cipher: Option<Arc<Cipher>>,
}

fn bad_key(key: &str, reason: &str) -> ObjectsError {
    ObjectsError::Key { key: key.to_string(), reason: reason.to_string() }
}

/// The store's path for `key`, once `key` is known not to reach outside the store or to mean
/// something else on one of the backends (see the module documentation).
fn location(key: &str) -> Result<Path> {
    let reason = if key.is_empty() {
        Some("it is empty")
    } else if key.len() > MAX_KEY_LEN {
        Some("it is longer than 1024 bytes")
    } else if key.starts_with('/') {
        Some("it starts with '/'")
    } else if key.ends_with('/') {
        Some("it ends with '/'")
    } else if key.split('/').any(str::is_empty) {
        Some("it has an empty segment")
    } else if key.split('/').any(|segment| segment == "." || segment == "..") {
        Some("it has a '.' or '..' segment")
    } else if key.chars().any(char::is_control) {
        Some("it has a control character (NUL included)")
    } else if key.contains(['\\', '#']) {
        Some("it has a '\\' or '#'")
    } else {
        None
    };
    if let Some(reason) = reason {
        return Err(bad_key(key, reason));
    }
    Path::parse(key).map_err(|e| bad_key(key, &e.to_string()))
}

/// A prefix: `""` (everything) or a key with an optional trailing `/`.
fn prefix_location(prefix: &str) -> Result<Option<Path>> {
    if prefix.is_empty() {
        return Ok(None);
    }
    let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
    location(trimmed).map(Some).map_err(|e| match e {
        ObjectsError::Key { reason, .. } => ObjectsError::Key { key: prefix.to_string(), reason },
        other => other,
    })
}

fn is_not_found(error: &object_store::Error) -> bool {
    matches!(error, object_store::Error::NotFound { .. })
}

/// Runs CPU-bound work (AES-GCM, SHA-256 of a chunk: milliseconds for a few MiB) off the async
/// workers, which must not block that long.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work).await.map_err(|e| ObjectsError::Io(std::io::Error::other(e)))
}

/// HTTP's strong form (RFC 9110 §8.8.3): the file backend gives a bare `inode-mtime-size`.
fn strong_etag(e_tag: Option<String>, size: u64, modified: SystemTime) -> String {
    match e_tag {
        Some(tag) => {
            let tag = tag.strip_prefix("W/").unwrap_or(&tag);
            if tag.starts_with('"') && tag.ends_with('"') && tag.len() >= 2 {
                tag.to_string()
            } else {
                format!("\"{tag}\"")
            }
        }
        None => {
            let since = modified.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
            format!("\"{size:x}-{:x}\"", since.as_nanos())
        }
    }
}

fn open_store(url: &str, s3: &S3Options) -> Result<(Box<dyn ObjectStore>, &'static str)> {
    let bad = |reason: String| ObjectsError::BadUrl { url: url.to_string(), reason };
    let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad("a query or fragment means nothing here".into()));
    }
    match parsed.scheme() {
        "file" => {
            if parsed.host_str().is_some_and(|host| !host.is_empty() && host != "localhost") {
                return Err(bad("a file URL names no host: file:///absolute/directory".into()));
            }
            let dir = parsed.to_file_path().map_err(|()| bad("not an absolute directory".into()))?;
            std::fs::create_dir_all(&dir)
                .map_err(|e| bad(format!("cannot create directory {}: {e}", dir.display())))?;
            // Cleanup: deleting the last object of a directory removes the directories left empty,
            // as deleting the last key under an S3 prefix leaves nothing behind.
            let store =
                LocalFileSystem::new_with_prefix(&dir).map_err(|e| bad(e.to_string()))?.with_automatic_cleanup(true);
            Ok((Box::new(store), "file"))
        }
        "s3" => {
            let bucket = parsed.host_str().unwrap_or_default();
            if bucket.is_empty() {
                return Err(bad("no bucket: s3://bucket".into()));
            }
            if !matches!(parsed.path(), "" | "/") {
                return Err(
                    bad("a path after the bucket is not supported: give the origin a bucket of its own".into()),
                );
            }
            if parsed.port().is_some() || !parsed.username().is_empty() || parsed.password().is_some() {
                return Err(bad("an s3 URL is s3://bucket: the server goes in the endpoint option".into()));
            }
            let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket).with_region(&s3.region);
            if let Some(endpoint) = &s3.endpoint {
                builder = builder.with_endpoint(endpoint);
            }
            if let Some(id) = &s3.access_key_id {
                builder = builder.with_access_key_id(id);
            }
            if let Some(secret) = &s3.secret_access_key {
                builder = builder.with_secret_access_key(secret);
            }
            let store = builder.with_allow_http(s3.allow_http).build().map_err(|e| bad(e.to_string()))?;
            Ok((Box::new(store), "s3"))
        }
        other => Err(bad(format!("scheme {other:?}: file:///absolute/directory or s3://bucket"))),
    }
}

impl Objects {
    /// Opens the store at `url`: `file:///abs/dir` (created when missing) or `s3://bucket` (with
    /// `s3`). With `encrypt`, sealed objects and originals are encrypted at rest.
    pub fn open(url: &str, s3: &S3Options, encrypt: Option<AtRestKey>) -> Result<Objects> {
        let (store, backend) = open_store(url, s3)?;
        let cipher = encrypt.as_ref().map(|key| Arc::new(Cipher::new(key)));
        Ok(Objects { inner: Arc::new(Inner { store, backend, cipher }) })
    }

    /// `"file"` or `"s3"`.
    pub fn backend(&self) -> &'static str {
        self.inner.backend
    }

    /// Whether sealed objects and originals are encrypted at rest.
    pub fn encrypted(&self) -> bool {
        self.inner.cipher.is_some()
    }

    fn store(&self) -> &dyn ObjectStore {
        self.inner.store.as_ref()
    }

    /// Writes `bytes` as they are (packaged files).
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        let path = location(key)?;
        self.store().put(&path, bytes.into()).await?;
        Ok(())
    }

    /// The stored bytes, None when there is no such object.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let path = location(key)?;
        match self.store().get(&path).await {
            Ok(found) => Ok(Some(found.bytes().await?)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let path = location(key)?;
        match self.store().head(&path).await {
            Ok(meta) => {
                // Converted by hand: chrono's own conversion would make chrono a dependency.
                let secs = u64::try_from(meta.last_modified.timestamp()).unwrap_or(0);
                let last_modified = SystemTime::UNIX_EPOCH
                    + Duration::new(secs, meta.last_modified.timestamp_subsec_nanos().min(999_999_999));
                Ok(Some(ObjectInfo {
                    size: meta.size,
                    etag: strong_etag(meta.e_tag, meta.size, last_modified),
                    last_modified,
                }))
            }
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes the object; an absent one is not an error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        let path = location(key)?;
        match self.store().delete(&path).await {
            Err(e) if !is_not_found(&e) => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Deletes every object under `prefix` (whole segments, see the module documentation) and
    /// returns how many it deleted.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        let prefix = prefix_location(prefix)?;
        let paths: Vec<Path> = self.store().list(prefix.as_ref()).map_ok(|meta| meta.location).try_collect().await?;
        // delete_stream batches (S3's DeleteObjects takes 1000 keys a request).
        let results: Vec<object_store::Result<Path>> =
            self.store().delete_stream(stream::iter(paths).map(Ok).boxed()).collect().await;
        let mut deleted = 0;
        for result in results {
            match result {
                Ok(_) => deleted += 1,
                // Gone meanwhile: deleted by someone else, which is what was asked.
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(deleted)
    }

    /// The keys under `prefix` (whole segments), sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let prefix = prefix_location(prefix)?;
        let mut keys: Vec<String> =
            self.store().list(prefix.as_ref()).map_ok(|meta| meta.location.to_string()).try_collect().await?;
        keys.sort();
        Ok(keys)
    }

    /// Writes `plain` encrypted at rest (see the module documentation) when a key is set, plain
    /// otherwise.
    pub async fn put_sealed(&self, key: &str, plain: Bytes) -> Result<()> {
        location(key)?;
        let stored = match self.inner.cipher.clone() {
            Some(cipher) => {
                let owned_key = key.to_string();
                Bytes::from(blocking(move || cipher.seal(&owned_key, &plain)).await??)
            }
            None => plain,
        };
        self.put(key, stored).await
    }

    /// What `put_sealed` wrote, checked and decrypted; None when absent.
    pub async fn get_sealed(&self, key: &str) -> Result<Option<Bytes>> {
        let Some(stored) = self.get(key).await? else { return Ok(None) };
        let Some(cipher) = self.inner.cipher.clone() else { return Ok(Some(stored)) };
        let owned_key = key.to_string();
        let plain = blocking(move || cipher.open(&owned_key, &stored)).await??;
        Ok(Some(Bytes::from(plain)))
    }

    /// Assembles a stored original at `dest` from upload chunks that `put_sealed` wrote under
    /// `chunk_keys`, in order: one chunk in memory at a time, written with a multipart upload that
    /// only completes once the SHA-256 of the plain bytes is known and, when `expect_sha256` is
    /// given, matches it. On any error, [`ObjectsError::Mismatch`] included, the upload is aborted
    /// and `dest` is left as it was. Returns the SHA-256 (lowercase hex) and the size of the plain
    /// bytes. Encrypted, the original is a framed object (see the module documentation); plain, it
    /// is the bytes.
    ///
    /// An interrupted process leaves an unfinished upload: on S3 one the bucket's lifecycle rule
    /// (AbortIncompleteMultipartUpload) removes, in a directory a `dest#N` file.
    pub async fn assemble(
        &self,
        chunk_keys: &[String],
        dest: &str,
        expect_sha256: Option<&str>,
    ) -> Result<(String, u64)> {
        let dest_path = location(dest)?;
        for key in chunk_keys {
            location(key)?;
        }
        let upload = self.store().put_multipart(&dest_path).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let outcome = match self.write_original(&mut writer, chunk_keys, dest).await {
            Ok((sha256, size)) => match expect_sha256 {
                Some(expected) if !expected.eq_ignore_ascii_case(&sha256) => {
                    Err(ObjectsError::Mismatch { expected: expected.to_string(), actual: sha256 })
                }
                _ => Ok((sha256, size)),
            },
            Err(e) => Err(e),
        };
        match outcome {
            // finish aborts the upload itself when completing it fails.
            Ok(done) => writer.finish().await.map(|_| done).map_err(ObjectsError::from),
            Err(e) => {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(dest, error = %abort, "aborting the upload of an original failed");
                }
                Err(e)
            }
        }
    }

    async fn write_original(
        &self,
        writer: &mut WriteMultipart,
        chunk_keys: &[String],
        dest: &str,
    ) -> Result<(String, u64)> {
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let cipher = self.inner.cipher.clone();
        if let Some(cipher) = &cipher {
            writer.write(FRAMED_MAGIC);
            if chunk_keys.is_empty() {
                // An empty file is still one (empty, last) frame: an object with no frame could be
                // any original cut short.
                writer.put(Bytes::from(cipher.seal_frame(dest, 0, true, b"")?));
            }
        }
        for (index, key) in chunk_keys.iter().enumerate() {
            let plain = self.get_sealed(key).await?.ok_or_else(|| ObjectsError::NotFound { key: key.clone() })?;
            if cipher.is_some() && plain.len() > MAX_FRAME_PLAIN {
                return Err(ObjectsError::TooLarge { key: key.clone(), size: plain.len() as u64 });
            }
            size += plain.len() as u64;
            let last = index + 1 == chunk_keys.len();
            let (cipher, dest) = (cipher.clone(), dest.to_string());
            let (returned, piece) = blocking(move || {
                hasher.update(&plain);
                let piece = match cipher {
                    Some(cipher) => cipher.seal_frame(&dest, index as u64, last, &plain).map(Bytes::from),
                    None => Ok(plain),
                };
                (hasher, piece)
            })
            .await?;
            hasher = returned;
            // Backpressure: no more than PARTS_IN_FLIGHT parts uploading while this chunk waits.
            writer.wait_for_capacity(PARTS_IN_FLIGHT).await?;
            writer.put(piece?);
        }
        Ok((hex::encode(hasher.finalize()), size))
    }

    /// Writes the stored original at `key` to the local file `to`, decrypted and every frame
    /// checked when encrypting; returns the plain size. On an error the file is removed, so that
    /// half an original is never taken for one.
    pub async fn fetch_original(&self, key: &str, to: &FsPath) -> Result<u64> {
        let path = location(key)?;
        let found = match self.store().get(&path).await {
            Ok(found) => found,
            Err(e) if is_not_found(&e) => return Err(ObjectsError::NotFound { key: key.to_string() }),
            Err(e) => return Err(e.into()),
        };
        let file_error = |source| ObjectsError::File { path: to.to_path_buf(), source };
        let mut file = tokio::fs::File::create(to).await.map_err(file_error)?;
        let total = found.meta.size;
        let outcome = async {
            let mut stream = found.into_stream();
            let mut written = 0u64;
            let cipher = self.inner.cipher.clone();
            let mut reader = cipher.as_ref().map(|_| FrameReader::new(key, total));
            while let Some(data) = stream.try_next().await? {
                let (Some(reader), Some(cipher)) = (reader.as_mut(), &cipher) else {
                    file.write_all(&data).await.map_err(file_error)?;
                    written += data.len() as u64;
                    continue;
                };
                reader.push(&data);
                while let Some(frame) = reader.take()? {
                    let (cipher, owned_key) = (cipher.clone(), key.to_string());
                    let plain = blocking(move || cipher.open_frame(&owned_key, frame)).await??;
                    file.write_all(&plain).await.map_err(file_error)?;
                    written += plain.len() as u64;
                }
            }
            if let Some(reader) = &reader {
                reader.finish()?;
            }
            file.flush().await.map_err(file_error)?;
            Ok(written)
        }
        .await;
        if outcome.is_err() {
            drop(file);
            if let Err(e) = tokio::fs::remove_file(to).await {
                tracing::warn!(path = %to.display(), error = %e, "removing a partly fetched original failed");
            }
        }
        outcome
    }

    /// Uploads every file under `dir` to `prefix` + its relative path ('/' between segments), plain,
    /// a few at a time; returns the keys written, sorted. On any error, deletes every key it was to
    /// write, so that no half-written set is left.
    pub async fn put_dir(&self, dir: &FsPath, prefix: &str) -> Result<Vec<String>> {
        let base = prefix_location(prefix)?.map(|p| p.to_string());
        let root = dir.to_path_buf();
        let files = blocking(move || walk(&root)).await??;
        let mut planned = Vec::with_capacity(files.len());
        for (path, relative) in files {
            let key = match &base {
                Some(base) => format!("{base}/{relative}"),
                None => relative,
            };
            location(&key)?;
            planned.push((path, key));
        }
        // Every upload runs to its end, failed or not: one still running could otherwise land after
        // the cleanup below.
        // Owned items and a cloned handle: a stream of futures borrowing from here is not Send for
        // every lifetime, which a caller inside tokio::spawn needs (rust-lang/rust#102211).
        let results: Vec<Result<()>> = stream::iter(planned.clone())
            .map(|(path, key)| {
                let objects = self.clone();
                async move {
                    let bytes = tokio::fs::read(&path).await.map_err(|source| ObjectsError::File { path, source })?;
                    objects.put(&key, Bytes::from(bytes)).await
                }
            })
            .buffer_unordered(PUT_DIR_PARALLEL)
            .collect()
            .await;
        if let Some(error) = results.into_iter().find_map(|r| r.err()) {
            for (_, key) in &planned {
                if let Err(e) = self.delete(key).await {
                    tracing::warn!(key, error = %e, "removing a file of a failed put_dir failed");
                }
            }
            return Err(error);
        }
        let mut keys: Vec<String> = planned.into_iter().map(|(_, key)| key).collect();
        keys.sort();
        Ok(keys)
    }
}

/// Every regular file under `dir`, with its path relative to `dir` joined with '/'. Anything else
/// (a symbolic link, a device) is refused rather than followed out of `dir`.
fn walk(dir: &FsPath) -> Result<Vec<(PathBuf, String)>> {
    let mut files = Vec::new();
    let mut pending = vec![(dir.to_path_buf(), String::new())];
    while let Some((current, relative)) = pending.pop() {
        let file_error = |source| ObjectsError::File { path: current.clone(), source };
        for entry in std::fs::read_dir(&current).map_err(file_error)? {
            let entry = entry.map_err(file_error)?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_str().ok_or_else(|| ObjectsError::Key {
                key: path.display().to_string(),
                reason: "the file name is not UTF-8".into(),
            })?;
            let relative = if relative.is_empty() { name.to_string() } else { format!("{relative}/{name}") };
            let kind = entry.file_type().map_err(|source| ObjectsError::File { path: path.clone(), source })?;
            if kind.is_dir() {
                pending.push((path, relative));
            } else if kind.is_file() {
                files.push((path, relative));
            } else {
                return Err(ObjectsError::File {
                    path,
                    source: std::io::Error::other("neither a regular file nor a directory"),
                });
            }
        }
    }
    Ok(files)
}
