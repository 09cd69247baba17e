//! The logic of `eddy-upload`, the client of the origin's resumable chunked upload API
//! (`POST /v1/uploads`, `PUT` to each chunk's presigned URL, `POST /v1/uploads/{id}/complete`).
//!
//! Resuming needs no local state: posting the same file (same SHA-256, same user) again answers with the
//! open upload, whose `missing` list says which chunks are still to send.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::File;
use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::Rng;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, ETAG};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use url::Url;

use crate::api::{
    ChunkTarget, CompleteUpload, Completed, CreateUpload, ErrorBody, Playback, ReceivedChunk, UploadStatus,
    VideoStatus, BEARER,
};
use crate::meta::Visibility;

/// The largest chunk this client accepts: it holds up to `parallel` chunks in memory at once.
pub const MAX_CHUNK_SIZE: u64 = 1 << 30;

/// How much of a chunk's body is handed to the connection at a time (and so the progress bar's step).
const BODY_PIECE: usize = 64 * 1024;

/// Everything that can go wrong, each naming what it was doing (`what`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// The request did not get an answer: refused, reset, timed out. Worth retrying.
    #[error("{what}: no answer from the origin")]
    Network {
        what: String,
        #[source]
        source: reqwest::Error,
    },
    /// Nothing moved for `stall_timeout`. Worth retrying.
    #[error("{what}: nothing sent or received for {} s", .after.as_secs_f64())]
    Stalled { what: String, after: Duration },
    #[error("{what}: the origin answered {status}: {message}")]
    Status { what: String, status: StatusCode, message: String },
    #[error("{what}: the origin acknowledged it with ETag {got}, but the chunk's SHA-256 is {expected}")]
    EtagMismatch { what: String, expected: String, got: String },
    /// The origin's answer does not make sense (wrong JSON, inconsistent chunk list, ...).
    #[error("{what}: {detail}")]
    Protocol { what: String, detail: String },
    #[error("{0}")]
    Config(String),
}

impl Error {
    fn network(what: &str, source: reqwest::Error) -> Self {
        // The URL may be a presigned one, whose signature has no business in a message.
        Error::Network { what: what.to_owned(), source: source.without_url() }
    }

    fn status(what: &str, status: StatusCode, body: &[u8]) -> Self {
        Error::Status { what: what.to_owned(), status, message: error_message(body) }
    }

    fn protocol(what: &str, detail: impl Into<String>) -> Self {
        Error::Protocol { what: what.to_owned(), detail: detail.into() }
    }

    /// A failure that may not happen again: no answer, a stall, a 5xx, 408 or 429.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Network { source, .. } => !source.is_builder() && !source.is_redirect(),
            Error::Stalled { .. } => true,
            Error::Status { status, .. } => transient_status(*status),
            _ => false,
        }
    }

    fn status_code(&self) -> Option<StatusCode> {
        match self {
            Error::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Whether an answer with this status is worth trying again.
pub fn transient_status(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS
}

/// The message of an error answer: `ErrorBody.error`, or else the start of the body as text.
fn error_message(body: &[u8]) -> String {
    if let Ok(ErrorBody { error }) = serde_json::from_slice::<ErrorBody>(body) {
        return error;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(no message)".to_owned();
    }
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

/// An error and its causes on one line, for notes printed while retrying.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

/// The API token. Its `Debug` does not show it.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    pub fn new(token: impl Into<String>) -> Self {
        Token(token.into())
    }

    fn header(&self) -> Result<HeaderValue, Error> {
        let mut value = HeaderValue::from_str(&format!("{BEARER}{}", self.0))
            .map_err(|_| Error::Config("the API token has characters that cannot go in an HTTP header".to_owned()))?;
        value.set_sensitive(true);
        Ok(value)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

/// Checks `--origin`: an `http` or `https` URL without query or fragment (API paths are appended to it).
pub fn parse_origin(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!("{text:?} is not an http or https URL"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{text:?} has a query or fragment; give the API's base URL only"));
    }
    Ok(url)
}

/// The URL of an API endpoint: the base URL's path followed by `segments`, each percent-encoded.
pub fn api_url(base: &Url, segments: &[&str]) -> Result<Url, Error> {
    let mut url = base.clone();
    url.path_segments_mut()
        .map_err(|()| Error::Config(format!("the origin URL {base} cannot have a path")))?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

/// A chunk's presigned URL: absolute (`http://`, `https://`) as it is, otherwise a path (starting with
/// `/`) relative to the API's base URL, which may itself have a path.
pub fn resolve_url(base: &Url, target: &str) -> Result<Url, String> {
    let absolute = ["http://", "https://"]
        .iter()
        .any(|scheme| target.get(..scheme.len()).is_some_and(|start| start.eq_ignore_ascii_case(scheme)));
    let joined;
    let text = if absolute {
        target
    } else if target.starts_with('/') {
        joined = format!("{}{target}", base.as_str().trim_end_matches('/'));
        &joined
    } else {
        return Err("it is neither an absolute http(s) URL nor a path starting with '/'".to_owned());
    };
    Url::parse(text).map_err(|e| format!("it is not a valid URL: {e}"))
}

/// The value of an `ETag` header as lowercase hex: without `W/` and quotes.
pub fn parse_etag(header: &str) -> String {
    let tag = header.trim();
    let tag = tag.strip_prefix("W/").unwrap_or(tag);
    let tag = tag.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(tag);
    tag.to_ascii_lowercase()
}

/// One chunk to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkJob {
    pub index: u64,
    /// Where the chunk starts in the file: `index * chunk_size`.
    pub offset: u64,
    pub size: u64,
    pub url: Url,
}

impl ChunkJob {
    fn describe(&self, count: u64) -> String {
        format!("chunk {} of {count} (bytes {}..{})", self.index, self.offset, self.offset + self.size)
    }
}

/// What is left to do for an upload, checked against the file.
#[derive(Debug, Clone)]
pub struct Plan {
    pub chunk_size: u64,
    /// How many chunks the file has.
    pub count: u64,
    /// The chunks still to send, by index.
    pub to_send: Vec<ChunkJob>,
    /// The ETag of every chunk, by index: known for those the origin has, filled in as the others go.
    pub etags: Vec<Option<String>>,
    /// How many chunks, and bytes, the origin already has.
    pub received_chunks: u64,
    pub received_bytes: u64,
}

/// Plans the upload of a file of `file_size` bytes from the origin's `UploadStatus`, checking that the
/// chunk list fits the file: `count = ceil(size / chunk_size)` chunks, chunk `i` at `i * chunk_size`.
pub fn plan(status: &UploadStatus, file_size: u64, base: &Url) -> Result<Plan, Error> {
    let what = format!("upload {}", status.upload_id);
    let bad = |detail: String| Error::protocol(&what, detail);
    if status.size != file_size {
        return Err(bad(format!("the origin has its size as {} bytes, the file has {file_size}", status.size)));
    }
    let chunk_size = status.chunk_size;
    if chunk_size == 0 || chunk_size > MAX_CHUNK_SIZE {
        return Err(bad(format!("the chunk size {chunk_size} is not between 1 and {MAX_CHUNK_SIZE} bytes")));
    }
    let expected_count = file_size.div_ceil(chunk_size);
    let count = status.chunks.len() as u64;
    // An empty file may be one empty chunk or none.
    if count != expected_count && !(file_size == 0 && count == 1) {
        return Err(bad(format!(
            "it lists {count} chunks, but {file_size} bytes in chunks of {chunk_size} make {expected_count}"
        )));
    }
    let expected_size = |index: u64| chunk_size.min(file_size - (index * chunk_size).min(file_size));
    for (position, chunk) in status.chunks.iter().enumerate() {
        let ChunkTarget { index, size, .. } = chunk;
        if *index != position as u64 {
            return Err(bad(format!("chunk number {position} in its list has the index {index}")));
        }
        if *size != expected_size(*index) {
            return Err(bad(format!("chunk {index} has {size} bytes, not {}", expected_size(*index))));
        }
    }
    let mut missing = BTreeSet::new();
    for &index in &status.missing {
        if index >= count {
            return Err(bad(format!("it says chunk {index} is missing, but there are {count} chunks")));
        }
        missing.insert(index);
    }
    let mut etags = vec![None; status.chunks.len()];
    for ReceivedChunk { index, etag, size } in &status.received {
        let Some(slot) = usize::try_from(*index).ok().and_then(|i| etags.get_mut(i)) else {
            return Err(bad(format!("it says chunk {index} was received, but there are {count} chunks")));
        };
        if *size != expected_size(*index) {
            return Err(bad(format!("received chunk {index} has {size} bytes, not {}", expected_size(*index))));
        }
        if !missing.contains(index) {
            *slot = Some(parse_etag(etag));
        }
    }
    let mut to_send = Vec::with_capacity(missing.len());
    let mut received_chunks = 0;
    let mut received_bytes = 0;
    for (chunk, etag) in status.chunks.iter().zip(&etags) {
        if missing.contains(&chunk.index) {
            let url =
                resolve_url(base, &chunk.url).map_err(|why| bad(format!("chunk {}'s URL: {why}", chunk.index)))?;
            to_send.push(ChunkJob { index: chunk.index, offset: chunk.index * chunk_size, size: chunk.size, url });
        } else if etag.is_some() {
            received_chunks += 1;
            received_bytes += chunk.size;
        } else {
            return Err(bad(format!("chunk {} is neither received nor missing", chunk.index)));
        }
    }
    Ok(Plan { chunk_size, count, to_send, etags, received_chunks, received_bytes })
}

/// Reads `len` bytes at `offset`; an error if the file ends before.
pub fn read_chunk<R: Read + Seek>(file: &mut R, offset: u64, len: u64) -> io::Result<Vec<u8>> {
    let len = usize::try_from(len).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "chunk too large"))?;
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0; len];
    file.read_exact(&mut buf)?;
    Ok(buf)
}

/// The whole file's SHA-256 (lowercase hex) and length, read in pieces; stops early when `cancel` is set.
pub fn hash_file(file: &mut impl Read, progress: &ProgressBar, cancel: &AtomicBool) -> io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 1 << 20];
    let mut total = 0u64;
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "cancelled"));
        }
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
        progress.inc(n as u64);
    }
    Ok((hex::encode(hasher.finalize()), total))
}

/// Sets its flag when dropped: tells blocking work whose future was dropped (Ctrl-C) to stop.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// How often, and after how long, a transient failure is tried again.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Tries after the first one.
    pub retries: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { retries: 5, first_delay: Duration::from_millis(500), max_delay: Duration::from_secs(15) }
    }
}

impl RetryPolicy {
    /// The longest wait before retry number `retry + 1`: doubling from `first_delay`, at most `max_delay`.
    pub fn backoff(&self, retry: u32) -> Duration {
        self.first_delay.saturating_mul(1u32 << retry.min(20)).min(self.max_delay)
    }

    /// The wait before the next try after `error`, when `retries_done` retries were made; `None` when the
    /// error is not transient or the retries are used up. Random between half the backoff and all of it,
    /// so that chunks failing together do not come back together.
    pub fn retry_after(&self, error: &Error, retries_done: u32) -> Option<Duration> {
        if !error.is_transient() || retries_done >= self.retries {
            return None;
        }
        Some(self.backoff(retries_done).mul_f64(rand::rng().random_range(0.5..=1.0)))
    }
}

/// The client's settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub origin: Url,
    pub token: Token,
    /// Chunks in flight at once.
    pub parallel: usize,
    pub visibility: Option<Visibility>,
    pub retry: RetryPolicy,
    /// Between two looks at a video's state while waiting for it to be packaged.
    pub poll_interval: Duration,
    /// A chunk `PUT` during which nothing moves for this long is abandoned (and retried).
    pub stall_timeout: Duration,
    /// For the API's requests.
    pub api_timeout: Duration,
    /// For `complete`, which assembles the file at the origin.
    pub complete_timeout: Duration,
    pub connect_timeout: Duration,
}

impl Config {
    pub fn new(origin: Url, token: Token) -> Self {
        Config {
            origin,
            token,
            parallel: 4,
            visibility: None,
            retry: RetryPolicy::default(),
            poll_interval: Duration::from_millis(500),
            stall_timeout: Duration::from_secs(60),
            api_timeout: Duration::from_secs(60),
            complete_timeout: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Progress bars and notes on stderr.
pub struct Ui {
    multi: MultiProgress,
    notes: bool,
}

impl Ui {
    /// `bars`: draw progress bars (on a terminal); `notes`: print what happens (resuming, retries).
    pub fn new(bars: bool, notes: bool) -> Self {
        let target = if bars { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        Ui { multi: MultiProgress::with_draw_target(target), notes }
    }

    /// Neither bars nor notes.
    pub fn quiet() -> Self {
        Ui::new(false, false)
    }

    pub fn note(&self, message: &str) {
        if self.notes {
            self.multi.suspend(|| eprintln!("{message}"));
        }
    }

    /// Takes the bars off the terminal, before a final message.
    pub fn clear(&self) {
        // Only fails when drawing fails, and then there is nothing to clear.
        let _ = self.multi.clear();
    }

    /// A bar in bytes starting at `start`, whose speed and remaining time count from there.
    fn bytes_bar(&self, len: u64, start: u64, message: &'static str) -> ProgressBar {
        let style = ProgressStyle::with_template(
            "{msg:>9} [{wide_bar}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden())
            .with_style(style.progress_chars("=> "))
            .with_message(message)
            .with_position(start);
        // Let the estimator see `start` and forget it, before the bar is drawn: otherwise the first
        // speed shown counts `start` as sent in no time.
        bar.tick();
        bar.reset_eta();
        self.multi.add(bar)
    }

    fn percent_bar(&self, message: &'static str) -> ProgressBar {
        let style = ProgressStyle::with_template("{msg:>9} [{wide_bar}] {pos}% {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        self.multi.add(ProgressBar::new(100).with_style(style.progress_chars("=> ")).with_message(message))
    }
}

/// Where an upload is, for the message when it is interrupted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Hashing,
    /// The upload exists at the origin; the chunks sent stay there until `expires_at` (Unix seconds).
    Sending {
        upload_id: String,
        video_id: String,
        expires_at: i64,
    },
    Completed {
        video_id: String,
    },
}

/// The upload's outcome.
#[derive(Debug, Clone)]
pub struct Uploaded {
    pub upload_id: String,
    pub video_id: String,
    /// The video's state after `complete`.
    pub state: String,
    /// `None` when the answer to `complete` got lost and the upload was found completed afterwards.
    pub deduplicated: Option<bool>,
    pub sha256: String,
    pub chunks: u64,
    /// How many chunks this run sent, and how many the origin had already.
    pub sent: u64,
    pub resumed: u64,
}

/// The client.
pub struct Uploader {
    cfg: Config,
    http: reqwest::Client,
    auth: HeaderValue,
    ui: Ui,
    phase: Mutex<Phase>,
}

impl Uploader {
    pub fn new(cfg: Config, ui: Ui) -> Result<Self, Error> {
        let auth = cfg.token.header()?;
        if cfg.parallel == 0 {
            return Err(Error::Config("parallel must be at least 1".to_owned()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .user_agent(concat!("eddy-upload/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Config(format!("cannot set up the HTTP client: {}", chain(&e))))?;
        Ok(Uploader { cfg, http, auth, ui, phase: Mutex::new(Phase::Starting) })
    }

    pub fn ui(&self) -> &Ui {
        &self.ui
    }

    /// Where the upload is now.
    pub fn phase(&self) -> Phase {
        self.phase.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn set_phase(&self, phase: Phase) {
        *self.phase.lock().unwrap_or_else(PoisonError::into_inner) = phase;
    }

    /// Uploads the file, or the part of it the origin does not have yet, and completes the upload.
    pub async fn upload(&self, path: &Path) -> Result<Uploaded, Error> {
        self.set_phase(Phase::Hashing);
        let (sha256, size) = self.hash(path).await?;
        let filename = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .ok_or_else(|| Error::Config(format!("{} does not name a file", path.display())))?;

        let create = CreateUpload { filename, size, sha256: Some(sha256.clone()), visibility: self.cfg.visibility };
        let url = api_url(&self.cfg.origin, &["v1", "uploads"])?;
        let status: UploadStatus =
            self.call("POST /v1/uploads", self.cfg.api_timeout, || self.http.post(url.clone()).json(&create)).await?;
        if status.state != "open" {
            return Err(Error::protocol(
                &format!("upload {}", status.upload_id),
                format!("the origin answered with an upload in state {:?}, not \"open\"", status.state),
            ));
        }
        self.set_phase(Phase::Sending {
            upload_id: status.upload_id.clone(),
            video_id: status.video_id.clone(),
            expires_at: status.expires_at,
        });
        let mut plan = plan(&status, size, &self.cfg.origin)?;
        if plan.received_chunks > 0 {
            self.ui.note(&format!("resuming: {} of {} chunks already at the origin", plan.received_chunks, plan.count));
        }

        let bar = self.ui.bytes_bar(size, plan.received_bytes, "uploading");
        let file = path.to_path_buf();
        let count = plan.count;
        let sent: Vec<(u64, String)> = futures::stream::iter(plan.to_send.clone())
            .map(|job| self.send_chunk(&file, &status.upload_id, count, job, &bar))
            .buffer_unordered(self.cfg.parallel)
            .try_collect()
            .await?;
        bar.finish();
        for (index, etag) in &sent {
            if let Some(slot) = usize::try_from(*index).ok().and_then(|i| plan.etags.get_mut(i)) {
                *slot = Some(etag.clone());
            }
        }
        let etags = plan
            .etags
            .iter()
            .enumerate()
            .map(|(index, etag)| {
                etag.clone().ok_or_else(|| {
                    Error::protocol(&format!("upload {}", status.upload_id), format!("chunk {index} has no ETag"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;

        let (completed, deduplicated) = self.complete(&status.upload_id, etags).await?;
        self.set_phase(Phase::Completed { video_id: completed.video_id.clone() });
        Ok(Uploaded {
            upload_id: status.upload_id,
            video_id: completed.video_id,
            state: completed.state,
            deduplicated,
            sha256,
            chunks: plan.count,
            sent: sent.len() as u64,
            resumed: plan.received_chunks,
        })
    }

    /// Waits until the video is `ready` or `failed`, showing packaging progress; returns its last status.
    pub async fn wait(&self, video_id: &str) -> Result<VideoStatus, Error> {
        let bar = self.ui.percent_bar("waiting");
        loop {
            let video = self.video(video_id).await?;
            match video.state.as_str() {
                "ready" => {
                    bar.set_message("ready");
                    bar.set_position(100);
                    bar.finish();
                    return Ok(video);
                }
                "failed" => {
                    bar.abandon_with_message("failed");
                    return Ok(video);
                }
                "packaging" => {
                    bar.set_message("packaging");
                    bar.set_position(video.percent.map_or(0, u64::from).min(100));
                }
                other => bar.set_message(other.to_owned()),
            }
            tokio::time::sleep(self.cfg.poll_interval).await;
        }
    }

    /// `GET /v1/videos/{id}`
    pub async fn video(&self, video_id: &str) -> Result<VideoStatus, Error> {
        let url = api_url(&self.cfg.origin, &["v1", "videos", video_id])?;
        self.call(&format!("GET /v1/videos/{video_id}"), self.cfg.api_timeout, || self.http.get(url.clone())).await
    }

    /// `GET /v1/videos/{id}/playback`
    pub async fn playback(&self, video_id: &str) -> Result<Playback, Error> {
        let url = api_url(&self.cfg.origin, &["v1", "videos", video_id, "playback"])?;
        self.call(&format!("GET /v1/videos/{video_id}/playback"), self.cfg.api_timeout, || self.http.get(url.clone()))
            .await
    }

    /// `GET /v1/uploads/{id}`
    pub async fn upload_status(&self, upload_id: &str) -> Result<UploadStatus, Error> {
        let url = api_url(&self.cfg.origin, &["v1", "uploads", upload_id])?;
        self.call(&format!("GET /v1/uploads/{upload_id}"), self.cfg.api_timeout, || self.http.get(url.clone())).await
    }

    async fn hash(&self, path: &Path) -> Result<(String, u64), Error> {
        let what = format!("hashing {}", path.display());
        let mut file = File::open(path).map_err(|source| Error::Io { what: what.clone(), source })?;
        let len = file.metadata().map_err(|source| Error::Io { what: what.clone(), source })?.len();
        let bar = self.ui.bytes_bar(len, 0, "hashing");
        let cancel = Arc::new(AtomicBool::new(false));
        let _guard = CancelOnDrop(cancel.clone());
        let progress = bar.clone();
        let (sha256, size) = tokio::task::spawn_blocking(move || hash_file(&mut file, &progress, &cancel))
            .await
            .map_err(|e| Error::Io { what: what.clone(), source: io::Error::other(e) })?
            .map_err(|source| Error::Io { what: what.clone(), source })?;
        bar.finish_and_clear();
        if size != len {
            return Err(Error::Config(format!(
                "{} changed while it was hashed ({len} bytes before, {size} read)",
                path.display()
            )));
        }
        Ok((sha256, size))
    }

    /// Sends one chunk until the origin has it, and returns its index and SHA-256.
    async fn send_chunk(
        &self,
        path: &Path,
        upload_id: &str,
        count: u64,
        job: ChunkJob,
        bar: &ProgressBar,
    ) -> Result<(u64, String), Error> {
        let what = job.describe(count);
        let (data, sha256) = read_and_hash(path.to_path_buf(), job.offset, job.size)
            .await
            .map_err(|source| Error::Io { what: format!("reading {what} of {}", path.display()), source })?;
        let mut url = job.url.clone();
        let (mut retries, mut etag_retried, mut refreshed) = (0, false, false);
        loop {
            let sent = Arc::new(AtomicU64::new(0));
            let result = self.put_chunk(&what, &url, data.clone(), bar, &sent).await;
            let sent = sent.load(Ordering::Relaxed);
            let error = match result {
                Ok(Some(etag)) if etag == sha256 => {
                    // The origin may answer before reading everything it was given.
                    bar.inc((data.len() as u64).saturating_sub(sent));
                    return Ok((job.index, sha256));
                }
                Ok(etag) => Error::EtagMismatch {
                    what: what.clone(),
                    expected: sha256.clone(),
                    got: etag.unwrap_or_else(|| "(none)".to_owned()),
                },
                Err(error) => error,
            };
            bar.dec(sent);
            if let Error::EtagMismatch { .. } = error {
                if etag_retried {
                    return Err(error);
                }
                etag_retried = true;
                self.ui.note(&format!("{}; sending it again", chain(&error)));
                continue;
            }
            // An expired presigned URL: the upload's status has fresh ones.
            if matches!(error.status_code(), Some(StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)) && !refreshed {
                refreshed = true;
                self.ui.note(&format!("{}; asking for a fresh URL", chain(&error)));
                url = self.fresh_url(upload_id, job.index).await?;
                continue;
            }
            let Some(delay) = self.cfg.retry.retry_after(&error, retries) else {
                return Err(error);
            };
            retries += 1;
            self.ui.note(&format!(
                "{}; trying again in {:.1} s ({retries} of {} retries)",
                chain(&error),
                delay.as_secs_f64(),
                self.cfg.retry.retries
            ));
            tokio::time::sleep(delay).await;
        }
    }

    /// One `PUT` of a chunk, without the API token; the ETag of the answer, if it has one. `sent` counts
    /// the bytes handed to the connection (and to the bar).
    async fn put_chunk(
        &self,
        what: &str,
        url: &Url,
        data: Bytes,
        bar: &ProgressBar,
        sent: &Arc<AtomicU64>,
    ) -> Result<Option<String>, Error> {
        let len = data.len();
        let request = async {
            let response = self
                .http
                .put(url.clone())
                .header(CONTENT_LENGTH, len)
                .body(counting_body(data, bar.clone(), sent.clone()))
                .send()
                .await
                .map_err(|e| Error::network(what, e))?;
            let status = response.status();
            let header = response.headers().get(ETAG).and_then(|v| v.to_str().ok()).map(parse_etag);
            let body = response.bytes().await.map_err(|e| Error::network(what, e))?;
            if !status.is_success() {
                return Err(Error::status(what, status, &body));
            }
            Ok(header.or_else(|| serde_json::from_slice::<ReceivedChunk>(&body).ok().map(|c| parse_etag(&c.etag))))
        };
        // A total timeout would have to grow with the chunk and the link; what matters is that it moves.
        let mut request = std::pin::pin!(request);
        let mut seen = sent.load(Ordering::Relaxed);
        loop {
            tokio::select! {
                result = &mut request => return result,
                () = tokio::time::sleep(self.cfg.stall_timeout) => {
                    let now = sent.load(Ordering::Relaxed);
                    if now == seen {
                        return Err(Error::Stalled { what: what.to_owned(), after: self.cfg.stall_timeout });
                    }
                    seen = now;
                }
            }
        }
    }

    async fn fresh_url(&self, upload_id: &str, index: u64) -> Result<Url, Error> {
        let status = self.upload_status(upload_id).await?;
        let what = format!("upload {upload_id}");
        let chunk = status
            .chunks
            .iter()
            .find(|c| c.index == index)
            .ok_or_else(|| Error::protocol(&what, format!("its status has no chunk {index}")))?;
        resolve_url(&self.cfg.origin, &chunk.url)
            .map_err(|why| Error::protocol(&what, format!("chunk {index}'s URL: {why}")))
    }

    /// `POST /v1/uploads/{id}/complete`, retried like the rest. Should a retry be refused, the answer to
    /// an earlier try may have been lost after the upload completed: the upload's status says.
    async fn complete(&self, upload_id: &str, etags: Vec<String>) -> Result<(Completed, Option<bool>), Error> {
        let what = format!("POST /v1/uploads/{upload_id}/complete");
        let url = api_url(&self.cfg.origin, &["v1", "uploads", upload_id, "complete"])?;
        let body = CompleteUpload { etags };
        let mut retries = 0;
        loop {
            let error = match self
                .call_once(&what, self.cfg.complete_timeout, || self.http.post(url.clone()).json(&body))
                .await
            {
                Ok(completed) => {
                    let completed: Completed = completed;
                    let deduplicated = completed.deduplicated;
                    return Ok((completed, Some(deduplicated)));
                }
                Err(error) => error,
            };
            if retries > 0 && error.status_code().is_some_and(|s| s.is_client_error()) {
                let status = self.upload_status(upload_id).await?;
                if status.state == "completed" {
                    let video = self.video(&status.video_id).await?;
                    let sha256 = video.sha256.unwrap_or_default();
                    let completed =
                        Completed { video_id: status.video_id, sha256, deduplicated: false, state: video.state };
                    return Ok((completed, None));
                }
                return Err(error);
            }
            let Some(delay) = self.cfg.retry.retry_after(&error, retries) else {
                return Err(error);
            };
            retries += 1;
            self.ui.note(&format!("{}; trying again in {:.1} s", chain(&error), delay.as_secs_f64()));
            tokio::time::sleep(delay).await;
        }
    }

    /// An API request with the token, retried while it fails transiently; its JSON answer.
    async fn call<T: DeserializeOwned>(
        &self,
        what: &str,
        timeout: Duration,
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<T, Error> {
        let mut retries = 0;
        loop {
            let error = match self.call_once(what, timeout, &request).await {
                Ok(answer) => return Ok(answer),
                Err(error) => error,
            };
            let Some(delay) = self.cfg.retry.retry_after(&error, retries) else {
                return Err(error);
            };
            retries += 1;
            self.ui.note(&format!("{}; trying again in {:.1} s", chain(&error), delay.as_secs_f64()));
            tokio::time::sleep(delay).await;
        }
    }

    async fn call_once<T: DeserializeOwned>(
        &self,
        what: &str,
        timeout: Duration,
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<T, Error> {
        let response = request()
            .header(AUTHORIZATION, self.auth.clone())
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| Error::network(what, e))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| Error::network(what, e))?;
        if !status.is_success() {
            return Err(Error::status(what, status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| {
            Error::protocol(what, format!("the answer is not the JSON expected ({e}): {}", error_message(&body)))
        })
    }
}

/// Reads a chunk and hashes it, off the async threads.
fn read_and_hash(path: PathBuf, offset: u64, len: u64) -> impl Future<Output = io::Result<(Bytes, String)>> {
    let task = tokio::task::spawn_blocking(move || {
        let mut file = File::open(&path)?;
        let data = read_chunk(&mut file, offset, len)?;
        let sha256 = hex::encode(Sha256::digest(&data));
        Ok((Bytes::from(data), sha256))
    });
    async move { task.await.map_err(io::Error::other)? }
}

/// A request body giving `data` in pieces, counting each piece in `bar` and `sent` as it is taken.
fn counting_body(data: Bytes, bar: ProgressBar, sent: Arc<AtomicU64>) -> reqwest::Body {
    let len = data.len();
    let pieces = (0..len).step_by(BODY_PIECE).map(move |start| data.slice(start..len.min(start + BODY_PIECE)));
    reqwest::Body::wrap_stream(futures::stream::iter(pieces).map(move |piece| {
        bar.inc(piece.len() as u64);
        sent.fetch_add(piece.len() as u64, Ordering::Relaxed);
        Ok::<_, io::Error>(piece)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::{BTreeMap, VecDeque};
    use std::io::Cursor;

    use axum::extract::{Path as UrlPath, Query, State};
    use axum::http::HeaderMap;
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post, put};
    use axum::{Json, Router};

    const KIB: u64 = 1024;

    fn base(text: &str) -> Url {
        parse_origin(text).expect("origin")
    }

    fn status(size: u64, chunk_size: u64, received: &[u64], missing: &[u64]) -> UploadStatus {
        let count = size.div_ceil(chunk_size);
        let chunk = |index: u64| chunk_size.min(size - index * chunk_size);
        UploadStatus {
            upload_id: "u1".to_owned(),
            video_id: "v1".to_owned(),
            state: "open".to_owned(),
            filename: "f.mp4".to_owned(),
            size,
            chunk_size,
            expires_at: 0,
            chunks: (0..count)
                .map(|index| ChunkTarget { index, size: chunk(index), url: format!("/c/{index}?sig=s") })
                .collect(),
            received: received
                .iter()
                .map(|&index| ReceivedChunk { index, etag: format!("E{index}"), size: chunk(index) })
                .collect(),
            missing: missing.to_vec(),
        }
    }

    #[test]
    fn origin_must_be_an_http_base_url() {
        assert!(parse_origin("http://127.0.0.1:8070").is_ok());
        assert!(parse_origin("https://example.test/api/").is_ok());
        assert!(parse_origin("ftp://127.0.0.1").expect_err("ftp").contains("not an http"));
        assert!(parse_origin("http://127.0.0.1/?a=b").expect_err("query").contains("query"));
        assert!(parse_origin("127.0.0.1:8070").is_err());
    }

    #[test]
    fn api_urls_go_under_the_base_path_with_encoded_ids() {
        let url = api_url(&base("http://127.0.0.1:8070"), &["v1", "uploads"]).expect("url");
        assert_eq!(url.as_str(), "http://127.0.0.1:8070/v1/uploads");
        let url = api_url(&base("http://h/api/"), &["v1", "videos", "a/b c", "playback"]).expect("url");
        assert_eq!(url.as_str(), "http://h/api/v1/videos/a%2Fb%20c/playback");
    }

    #[test]
    fn chunk_urls_are_relative_to_the_base_unless_absolute() {
        let root = base("http://127.0.0.1:8070");
        let prefixed = base("http://127.0.0.1:8070/origin/");
        let relative = "/v1/uploads/u1/chunks/3?sig=abc&exp=9";
        assert_eq!(
            resolve_url(&root, relative).expect("relative").as_str(),
            "http://127.0.0.1:8070/v1/uploads/u1/chunks/3?sig=abc&exp=9"
        );
        assert_eq!(
            resolve_url(&prefixed, relative).expect("prefixed").as_str(),
            "http://127.0.0.1:8070/origin/v1/uploads/u1/chunks/3?sig=abc&exp=9"
        );
        let absolute = "HTTPS://store.example.test/bucket/u1/3?X-Sig=1";
        assert_eq!(
            resolve_url(&root, absolute).expect("absolute").as_str(),
            "https://store.example.test/bucket/u1/3?X-Sig=1"
        );
        assert!(resolve_url(&root, "chunks/3").expect_err("bare path").contains("neither"));
        assert!(resolve_url(&root, "http://").is_err());
    }

    #[test]
    fn etags_lose_quotes_weakness_and_case() {
        assert_eq!(parse_etag("\"ABcd01\""), "abcd01");
        assert_eq!(parse_etag(" W/\"ab\" "), "ab");
        assert_eq!(parse_etag("ab"), "ab");
    }

    #[test]
    fn a_plan_sends_only_the_missing_chunks_at_their_offsets() {
        let size = 10 * KIB + 1;
        let plan = plan(&status(size, 2 * KIB, &[0, 2, 4], &[1, 3, 5]), size, &base("http://o")).expect("plan");
        assert_eq!(plan.count, 6);
        let sent: Vec<(u64, u64, u64)> = plan.to_send.iter().map(|j| (j.index, j.offset, j.size)).collect();
        assert_eq!(sent, [(1, 2 * KIB, 2 * KIB), (3, 6 * KIB, 2 * KIB), (5, 10 * KIB, 1)]);
        assert_eq!(plan.to_send[2].url.as_str(), "http://o/c/5?sig=s");
        assert_eq!((plan.received_chunks, plan.received_bytes), (3, 6 * KIB));
        assert_eq!(plan.etags, [Some("e0".to_owned()), None, Some("e2".to_owned()), None, Some("e4".to_owned()), None]);
    }

    #[test]
    fn a_chunk_both_received_and_missing_is_sent() {
        let plan = plan(&status(4 * KIB, KIB, &[0, 1, 2], &[2, 3, 3]), 4 * KIB, &base("http://o")).expect("plan");
        let sent: Vec<u64> = plan.to_send.iter().map(|j| j.index).collect();
        assert_eq!(sent, [2, 3]);
        assert_eq!(plan.received_chunks, 2);
        assert_eq!(plan.etags[2], None);
    }

    #[test]
    fn a_plan_refuses_a_status_that_does_not_fit_the_file() {
        let origin = base("http://o");
        let message = |status: &UploadStatus, size: u64| plan(status, size, &origin).expect_err("refused").to_string();
        assert!(message(&status(4 * KIB, KIB, &[], &[0, 1, 2, 3]), 5 * KIB).contains("the file has 5120"));
        let mut zero = status(4 * KIB, KIB, &[], &[0, 1, 2, 3]);
        zero.chunk_size = 0;
        assert!(message(&zero, 4 * KIB).contains("chunk size 0"));
        let mut short = status(4 * KIB, KIB, &[], &[0, 1, 2]);
        short.chunks.pop();
        assert!(message(&short, 4 * KIB).contains("lists 3 chunks"));
        let mut resized = status(4 * KIB, KIB, &[], &[0, 1, 2, 3]);
        resized.chunks[1].size = 7;
        assert!(message(&resized, 4 * KIB).contains("chunk 1 has 7 bytes"));
        assert!(message(&status(4 * KIB, KIB, &[], &[0, 1, 9]), 4 * KIB).contains("chunk 9 is missing"));
        assert!(message(&status(4 * KIB, KIB, &[0, 1], &[3]), 4 * KIB).contains("chunk 2 is neither"));
        let mut bad_url = status(4 * KIB, KIB, &[], &[0, 1, 2, 3]);
        bad_url.chunks[3].url = "c/3".to_owned();
        assert!(message(&bad_url, 4 * KIB).contains("chunk 3's URL"));
    }

    #[test]
    fn chunks_are_read_at_their_offset() {
        let data: Vec<u8> = (0..=255).collect();
        let mut file = Cursor::new(data);
        assert_eq!(read_chunk(&mut file, 100, 3).expect("middle"), [100, 101, 102]);
        assert_eq!(read_chunk(&mut file, 250, 6).expect("end"), [250, 251, 252, 253, 254, 255]);
        assert_eq!(read_chunk(&mut file, 0, 2).expect("start"), [0, 1]);
        let past = read_chunk(&mut file, 250, 7).expect_err("past the end");
        assert_eq!(past.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn the_file_hash_is_its_sha256_and_stops_when_cancelled() {
        let bar = ProgressBar::hidden();
        let (sha, len) = hash_file(&mut Cursor::new(b"abc".to_vec()), &bar, &AtomicBool::new(false)).expect("hash");
        assert_eq!(sha, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!((len, bar.position()), (3, 3));
        let cancelled = hash_file(&mut Cursor::new(b"abc".to_vec()), &bar, &AtomicBool::new(true));
        assert_eq!(cancelled.expect_err("cancelled").kind(), io::ErrorKind::Interrupted);
    }

    #[test]
    fn retries_back_off_doubling_up_to_a_limit() {
        let policy =
            RetryPolicy { retries: 4, first_delay: Duration::from_millis(100), max_delay: Duration::from_millis(500) };
        let backoffs: Vec<u128> = (0..5).map(|n| policy.backoff(n).as_millis()).collect();
        assert_eq!(backoffs, [100, 200, 400, 500, 500]);
        assert_eq!(policy.backoff(u32::MAX), Duration::from_millis(500));
        let unavailable = Error::Status {
            what: "chunk 1".to_owned(),
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: String::new(),
        };
        for done in 0..4 {
            let delay = policy.retry_after(&unavailable, done).expect("retried");
            assert!(delay >= policy.backoff(done) / 2 && delay <= policy.backoff(done), "{delay:?}");
        }
        assert_eq!(policy.retry_after(&unavailable, 4), None);
        let forbidden =
            Error::Status { what: "chunk 1".to_owned(), status: StatusCode::BAD_REQUEST, message: String::new() };
        assert_eq!(policy.retry_after(&forbidden, 0), None);
        let stalled = Error::Stalled { what: "chunk 1".to_owned(), after: Duration::from_secs(1) };
        assert!(stalled.is_transient());
        let mismatch =
            Error::EtagMismatch { what: "chunk 1".to_owned(), expected: "a".to_owned(), got: "b".to_owned() };
        assert!(!mismatch.is_transient());
    }

    #[test]
    fn which_statuses_are_worth_retrying() {
        for code in [500, 502, 503, 504, 408, 429] {
            assert!(transient_status(StatusCode::from_u16(code).expect("status")), "{code}");
        }
        for code in [400, 401, 403, 404, 409, 413] {
            assert!(!transient_status(StatusCode::from_u16(code).expect("status")), "{code}");
        }
    }

    #[test]
    fn error_messages_come_from_the_error_body_or_the_text() {
        assert_eq!(error_message(br#"{"error":"quota exceeded"}"#), "quota exceeded");
        assert_eq!(error_message(b"  Bad Gateway\n"), "Bad Gateway");
        assert_eq!(error_message(b""), "(no message)");
        assert_eq!(error_message("é".repeat(300).as_bytes()).chars().count(), 203);
    }

    #[test]
    fn the_token_is_not_in_debug_output() {
        let cfg = Config::new(base("http://o"), Token::new("s3cr3t"));
        assert!(!format!("{cfg:?}").contains("s3cr3t"));
        assert!(Token::new("bad\ntoken").header().is_err());
    }

    // A fake origin, in memory, with just enough of the API; it counts the chunk PUTs it gets and can
    // be told to misbehave.

    const TOKEN: &str = "test-token";

    struct FakeUpload {
        id: String,
        video_id: String,
        sha256: String,
        size: u64,
        filename: String,
        chunks: BTreeMap<u64, Vec<u8>>,
        completed: bool,
    }

    #[derive(Default)]
    struct Fake {
        base: String,
        chunk_size: u64,
        uploads: Vec<FakeUpload>,
        /// The index of every chunk PUT, in the order they came.
        puts: Vec<u64>,
        /// The answer to each POST /v1/uploads: 201 or 200.
        creates: Vec<u16>,
        authorization_on_put: bool,
        fail_once: BTreeSet<u64>,
        reject: BTreeSet<u64>,
        /// Chunk index → how many more times to answer with a wrong ETag.
        wrong_etag: BTreeMap<u64, u32>,
        /// Complete the upload but answer 502, as if the answer got lost on the way.
        lose_complete_answer: bool,
        /// Chunks whose URL in the answer to POST /v1/uploads is already expired.
        expired_url: BTreeSet<u64>,
        assembled: Option<Vec<u8>>,
        /// The video states successive GET /v1/videos/{id} answer; the last one stays.
        video_states: VecDeque<(&'static str, Option<u8>, Option<&'static str>)>,
    }

    type Shared = Arc<Mutex<Fake>>;

    fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Fake> {
        shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn refuse(status: StatusCode, error: &str) -> Response {
        (status, Json(ErrorBody { error: error.to_owned() })).into_response()
    }

    fn authorized(headers: &HeaderMap) -> bool {
        headers.get("authorization").is_some_and(|v| v.as_bytes() == format!("Bearer {TOKEN}").as_bytes())
    }

    impl Fake {
        fn status_of(&self, upload: &FakeUpload, fresh: bool) -> UploadStatus {
            let count = upload.size.div_ceil(self.chunk_size);
            let chunks = (0..count)
                .map(|index| {
                    let sig = if !fresh && self.expired_url.contains(&index) { "expired" } else { "good" };
                    let path = format!("/chunks/{}/{index}?sig={sig}", upload.id);
                    // Odd chunks get absolute URLs, even ones relative.
                    let url = if index % 2 == 1 { format!("{}{path}", self.base) } else { path };
                    ChunkTarget { index, size: self.chunk_size.min(upload.size - index * self.chunk_size), url }
                })
                .collect();
            UploadStatus {
                upload_id: upload.id.clone(),
                video_id: upload.video_id.clone(),
                state: if upload.completed { "completed" } else { "open" }.to_owned(),
                filename: upload.filename.clone(),
                size: upload.size,
                chunk_size: self.chunk_size,
                expires_at: 4_000_000_000,
                chunks,
                received: upload
                    .chunks
                    .iter()
                    .map(|(&index, data)| ReceivedChunk {
                        index,
                        etag: hex::encode(Sha256::digest(data)),
                        size: data.len() as u64,
                    })
                    .collect(),
                missing: (0..count).filter(|index| !upload.chunks.contains_key(index)).collect(),
            }
        }
    }

    async fn create(State(shared): State<Shared>, headers: HeaderMap, Json(body): Json<CreateUpload>) -> Response {
        if !authorized(&headers) {
            return refuse(StatusCode::UNAUTHORIZED, "unknown token");
        }
        let Some(sha256) = body.sha256 else {
            return refuse(StatusCode::BAD_REQUEST, "no sha256");
        };
        let mut fake = lock(&shared);
        if let Some(open) = fake.uploads.iter().find(|u| u.sha256 == sha256 && !u.completed) {
            let answer = fake.status_of(open, false);
            fake.creates.push(200);
            return (StatusCode::OK, Json(answer)).into_response();
        }
        let n = fake.uploads.len() + 1;
        let upload = FakeUpload {
            id: format!("up{n}"),
            video_id: format!("vid{n}"),
            sha256,
            size: body.size,
            filename: body.filename,
            chunks: BTreeMap::new(),
            completed: false,
        };
        let answer = fake.status_of(&upload, false);
        fake.uploads.push(upload);
        fake.creates.push(201);
        (StatusCode::CREATED, Json(answer)).into_response()
    }

    async fn upload_status(State(shared): State<Shared>, headers: HeaderMap, UrlPath(id): UrlPath<String>) -> Response {
        if !authorized(&headers) {
            return refuse(StatusCode::UNAUTHORIZED, "unknown token");
        }
        let fake = lock(&shared);
        match fake.uploads.iter().find(|u| u.id == id) {
            Some(upload) => Json(fake.status_of(upload, true)).into_response(),
            None => refuse(StatusCode::NOT_FOUND, "no such upload"),
        }
    }

    async fn put_chunk(
        State(shared): State<Shared>,
        headers: HeaderMap,
        UrlPath((id, index)): UrlPath<(String, u64)>,
        Query(query): Query<BTreeMap<String, String>>,
        body: Bytes,
    ) -> Response {
        let mut fake = lock(&shared);
        fake.puts.push(index);
        if headers.contains_key("authorization") {
            fake.authorization_on_put = true;
            return refuse(StatusCode::BAD_REQUEST, "a presigned URL takes no token");
        }
        match query.get("sig").map(String::as_str) {
            Some("good") => {}
            Some("expired") => return refuse(StatusCode::FORBIDDEN, "the signature has expired"),
            _ => return refuse(StatusCode::FORBIDDEN, "bad signature"),
        }
        if fake.fail_once.remove(&index) {
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "storage busy");
        }
        if fake.reject.contains(&index) {
            return refuse(StatusCode::BAD_REQUEST, "chunk refused by the test");
        }
        let chunk_size = fake.chunk_size;
        let wrong = match fake.wrong_etag.get_mut(&index) {
            Some(times) if *times > 0 => {
                *times -= 1;
                true
            }
            _ => false,
        };
        let Some(upload) = fake.uploads.iter_mut().find(|u| u.id == id) else {
            return refuse(StatusCode::NOT_FOUND, "no such upload");
        };
        let expected = chunk_size.min(upload.size.saturating_sub(index * chunk_size));
        if body.len() as u64 != expected {
            return refuse(StatusCode::BAD_REQUEST, &format!("chunk {index} must have {expected} bytes"));
        }
        let etag = if wrong { "0".repeat(64) } else { hex::encode(Sha256::digest(&body)) };
        upload.chunks.insert(index, body.to_vec());
        let answer = ReceivedChunk { index, etag: etag.clone(), size: body.len() as u64 };
        ([(ETAG, format!("\"{etag}\""))], Json(answer)).into_response()
    }

    async fn complete(
        State(shared): State<Shared>,
        headers: HeaderMap,
        UrlPath(id): UrlPath<String>,
        Json(body): Json<CompleteUpload>,
    ) -> Response {
        if !authorized(&headers) {
            return refuse(StatusCode::UNAUTHORIZED, "unknown token");
        }
        let mut fake = lock(&shared);
        let chunk_size = fake.chunk_size;
        let Some(upload) = fake.uploads.iter_mut().find(|u| u.id == id && !u.completed) else {
            return refuse(StatusCode::NOT_FOUND, "no such open upload");
        };
        if upload.chunks.len() as u64 != upload.size.div_ceil(chunk_size) {
            return refuse(StatusCode::BAD_REQUEST, "chunks are missing");
        }
        let etags: Vec<String> = upload.chunks.values().map(|data| hex::encode(Sha256::digest(data))).collect();
        if etags != body.etags {
            return refuse(StatusCode::BAD_REQUEST, "the etags do not match the chunks");
        }
        let assembled: Vec<u8> = upload.chunks.values().flatten().copied().collect();
        if hex::encode(Sha256::digest(&assembled)) != upload.sha256 {
            return refuse(StatusCode::BAD_REQUEST, "the file does not have the announced sha256");
        }
        upload.completed = true;
        let lost = std::mem::take(&mut fake.lose_complete_answer);
        let Some(upload) = fake.uploads.iter().find(|u| u.id == id) else {
            return refuse(StatusCode::NOT_FOUND, "no such upload");
        };
        let answer = Completed {
            video_id: upload.video_id.clone(),
            sha256: upload.sha256.clone(),
            deduplicated: false,
            state: "queued".to_owned(),
        };
        fake.assembled = Some(assembled);
        if lost {
            return refuse(StatusCode::BAD_GATEWAY, "the answer got lost");
        }
        Json(answer).into_response()
    }

    async fn video(State(shared): State<Shared>, headers: HeaderMap, UrlPath(id): UrlPath<String>) -> Response {
        if !authorized(&headers) {
            return refuse(StatusCode::UNAUTHORIZED, "unknown token");
        }
        let mut fake = lock(&shared);
        let current = if fake.video_states.len() > 1 { fake.video_states.pop_front() } else { None };
        let Some((state, percent, reason)) = current.or_else(|| fake.video_states.front().copied()) else {
            return refuse(StatusCode::NOT_FOUND, "no such video");
        };
        Json(VideoStatus {
            video_id: id,
            owner: "tester".to_owned(),
            filename: "clip.mp4".to_owned(),
            visibility: Visibility::Private,
            state: state.to_owned(),
            percent,
            reason: reason.map(str::to_owned),
            sha256: None,
            created_at: 0,
            shared_with: None,
        })
        .into_response()
    }

    async fn playback(State(shared): State<Shared>, headers: HeaderMap, UrlPath(id): UrlPath<String>) -> Response {
        if !authorized(&headers) {
            return refuse(StatusCode::UNAUTHORIZED, "unknown token");
        }
        let base = lock(&shared).base.clone();
        Json(Playback { url: format!("{base}/v/{id}/master.m3u8?token=pt"), token: "pt".to_owned(), expires_at: 0 })
            .into_response()
    }

    /// The fake origin on a port of 127.0.0.1; stops when dropped.
    struct FakeOrigin {
        shared: Shared,
        base: Url,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for FakeOrigin {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl FakeOrigin {
        async fn start(chunk_size: u64) -> Self {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let base = format!("http://{}", listener.local_addr().expect("address"));
            let shared = Arc::new(Mutex::new(Fake { base: base.clone(), chunk_size, ..Fake::default() }));
            let router = Router::new()
                .route("/v1/uploads", post(create))
                .route("/v1/uploads/{id}", get(upload_status))
                .route("/v1/uploads/{id}/complete", post(complete))
                .route("/chunks/{id}/{index}", put(put_chunk))
                .route("/v1/videos/{id}", get(video))
                .route("/v1/videos/{id}/playback", get(playback))
                .with_state(shared.clone());
            let task = tokio::spawn(async move {
                // Ends when the test aborts it.
                let _ = axum::serve(listener, router).await;
            });
            FakeOrigin { shared, base: base.parse().expect("base"), task }
        }

        fn fake(&self) -> std::sync::MutexGuard<'_, Fake> {
            lock(&self.shared)
        }

        fn uploader(&self, parallel: usize) -> Uploader {
            let mut cfg = Config::new(self.base.clone(), Token::new(TOKEN));
            cfg.parallel = parallel;
            cfg.retry =
                RetryPolicy { retries: 3, first_delay: Duration::from_millis(1), max_delay: Duration::from_millis(5) };
            cfg.poll_interval = Duration::from_millis(1);
            Uploader::new(cfg, Ui::quiet()).expect("uploader")
        }
    }

    /// A 1 MiB file of varied bytes.
    fn video_file() -> (tempfile::TempDir, PathBuf, Vec<u8>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("clip.mp4");
        let data: Vec<u8> = (0..1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        std::fs::write(&path, &data).expect("write");
        (dir, path, data)
    }

    fn count(puts: &[u64], index: u64) -> usize {
        puts.iter().filter(|&&i| i == index).count()
    }

    #[tokio::test]
    async fn uploads_a_file_in_chunks_and_completes_it() {
        let origin = FakeOrigin::start(64 * KIB).await;
        let (_dir, path, data) = video_file();
        let uploaded = origin.uploader(4).upload(&path).await.expect("upload");
        assert_eq!((uploaded.chunks, uploaded.sent, uploaded.resumed), (16, 16, 0));
        assert_eq!(uploaded.video_id, "vid1");
        assert_eq!(uploaded.state, "queued");
        assert_eq!(uploaded.sha256, hex::encode(Sha256::digest(&data)));
        let fake = origin.fake();
        let mut puts = fake.puts.clone();
        puts.sort_unstable();
        assert_eq!(puts, (0..16).collect::<Vec<u64>>());
        assert!(!fake.authorization_on_put);
        assert_eq!(fake.creates, [201]);
        assert_eq!(fake.uploads[0].filename, "clip.mp4");
        assert!(fake.assembled.as_deref() == Some(&data[..]), "the origin assembled other bytes");
    }

    #[tokio::test]
    async fn a_second_run_sends_only_the_missing_chunks() {
        let origin = FakeOrigin::start(64 * KIB).await;
        let (_dir, path, data) = video_file();
        // One chunk at a time, in order: chunks 0 to 7 arrive, chunk 8 is refused and stops the run.
        origin.fake().reject.insert(8);
        let error = origin.uploader(1).upload(&path).await.expect_err("refused");
        let message = error.to_string();
        assert!(message.contains("chunk 8 of 16") && message.contains("chunk refused by the test"), "{message}");
        assert_eq!(error.status_code(), Some(StatusCode::BAD_REQUEST));
        assert_eq!(origin.fake().puts, (0..=8).collect::<Vec<u64>>(), "a 4xx is not retried");

        {
            let mut fake = origin.fake();
            fake.reject.clear();
            fake.puts.clear();
        }
        let uploaded = origin.uploader(4).upload(&path).await.expect("resumed");
        assert_eq!((uploaded.sent, uploaded.resumed), (8, 8));
        let fake = origin.fake();
        assert_eq!(fake.creates, [201, 200]);
        let mut puts = fake.puts.clone();
        puts.sort_unstable();
        assert_eq!(puts, (8..16).collect::<Vec<u64>>());
        assert!(fake.assembled.as_deref() == Some(&data[..]), "the origin assembled other bytes");
    }

    #[tokio::test]
    async fn a_chunk_answered_503_is_sent_again() {
        let origin = FakeOrigin::start(64 * KIB).await;
        let (_dir, path, data) = video_file();
        origin.fake().fail_once.extend([5, 12]);
        let uploaded = origin.uploader(4).upload(&path).await.expect("upload");
        assert_eq!(uploaded.sent, 16);
        let fake = origin.fake();
        assert_eq!(fake.puts.len(), 18);
        assert_eq!((count(&fake.puts, 5), count(&fake.puts, 12), count(&fake.puts, 0)), (2, 2, 1));
        assert!(fake.assembled.as_deref() == Some(&data[..]), "the origin assembled other bytes");
    }

    #[tokio::test]
    async fn a_wrong_etag_is_detected() {
        let origin = FakeOrigin::start(64 * KIB).await;
        let (_dir, path, _) = video_file();
        // Once: sending the chunk again fixes it.
        origin.fake().wrong_etag.insert(3, 1);
        origin.uploader(4).upload(&path).await.expect("upload");
        assert_eq!(count(&origin.fake().puts, 3), 2);

        let origin = FakeOrigin::start(64 * KIB).await;
        origin.fake().wrong_etag.insert(2, u32::MAX);
        let error = origin.uploader(4).upload(&path).await.expect_err("wrong etag");
        let Error::EtagMismatch { what, got, .. } = &error else {
            panic!("not an ETag mismatch: {error}");
        };
        assert!(what.contains("chunk 2 of 16"), "{what}");
        assert_eq!(got, &"0".repeat(64));
        let fake = origin.fake();
        assert_eq!(count(&fake.puts, 2), 2, "sent once more, then given up");
        assert!(fake.assembled.is_none(), "completed despite a wrong ETag");
    }

    #[tokio::test]
    async fn an_expired_chunk_url_is_replaced_by_a_fresh_one() {
        let origin = FakeOrigin::start(64 * KIB).await;
        let (_dir, path, data) = video_file();
        origin.fake().expired_url.insert(4);
        origin.uploader(2).upload(&path).await.expect("upload");
        let fake = origin.fake();
        assert_eq!(count(&fake.puts, 4), 2);
        assert!(fake.assembled.as_deref() == Some(&data[..]), "the origin assembled other bytes");
    }

    #[tokio::test]
    async fn a_lost_answer_to_complete_is_found_in_the_upload_status() {
        let origin = FakeOrigin::start(64 * KIB).await;
        let (_dir, path, _) = video_file();
        {
            let mut fake = origin.fake();
            fake.lose_complete_answer = true;
            fake.video_states.push_back(("queued", None, None));
        }
        // The retry of complete is refused (the upload is no longer open), and the status says why.
        let uploaded = origin.uploader(4).upload(&path).await.expect("upload");
        assert_eq!((uploaded.video_id.as_str(), uploaded.state.as_str()), ("vid1", "queued"));
        assert_eq!(uploaded.deduplicated, None);
    }

    #[tokio::test]
    async fn waits_for_packaging_then_asks_for_playback() {
        let origin = FakeOrigin::start(64 * KIB).await;
        origin.fake().video_states.extend([
            ("queued", None, None),
            ("packaging", Some(40), None),
            ("packaging", Some(90), None),
            ("ready", None, None),
        ]);
        let uploader = origin.uploader(1);
        let video = uploader.wait("vid1").await.expect("wait");
        assert_eq!(video.state, "ready");
        assert!(origin.fake().video_states.len() == 1, "stopped before ready");
        let playback = uploader.playback("vid1").await.expect("playback");
        assert_eq!(playback.url, format!("{}v/vid1/master.m3u8?token=pt", origin.base));

        origin.fake().video_states =
            VecDeque::from([("packaging", Some(10), None), ("failed", None, Some("no video track"))]);
        let video = uploader.wait("vid1").await.expect("wait");
        assert_eq!((video.state.as_str(), video.reason.as_deref()), ("failed", Some("no video track")));
    }

    #[tokio::test]
    async fn a_wrong_token_is_an_error_with_the_origins_message() {
        let origin = FakeOrigin::start(64 * KIB).await;
        let (_dir, path, _) = video_file();
        let cfg = Config::new(origin.base.clone(), Token::new("not-the-token"));
        let error = Uploader::new(cfg, Ui::quiet()).expect("uploader").upload(&path).await.expect_err("refused");
        assert_eq!(error.to_string(), "POST /v1/uploads: the origin answered 401 Unauthorized: unknown token");
        assert!(origin.fake().creates.is_empty());
    }

    #[tokio::test]
    async fn an_unreachable_origin_is_retried_then_reported() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let base: Url = format!("http://{}", dead.local_addr().expect("address")).parse().expect("base");
        drop(dead);
        let (_dir, path, _) = video_file();
        let mut cfg = Config::new(base, Token::new(TOKEN));
        cfg.retry =
            RetryPolicy { retries: 2, first_delay: Duration::from_millis(1), max_delay: Duration::from_millis(2) };
        let error = Uploader::new(cfg, Ui::quiet()).expect("uploader").upload(&path).await.expect_err("no origin");
        assert!(error.is_transient());
        let message = chain(&error);
        assert!(message.starts_with("POST /v1/uploads: no answer from the origin"), "{message}");
    }
}
