//! The fetcher: one pooled keep-alive HTTP client (reqwest) plus `file://` reads, retries with
//! back-off, and segment downloads that report their progress so the session can feed the estimator
//! and abandon a download that would outlast the buffer.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use thiserror::Error;
use url::Url;

use crate::playlist::Range;

/// Attempts per request before giving up (the first try plus retries).
pub const ATTEMPTS: u32 = 3;
/// Back-off before the first retry; doubled for each further one.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// How often a download in progress is reported even when no bytes arrive (abandonment checks).
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// No request may take longer than this without a byte.
const STALLED_REQUEST: Duration = Duration::from_secs(20);
/// The largest playlist accepted, compressed or not (a two-hour VOD with 1 s segments is ~500 KB):
/// a server cannot make the player hold an endless body, nor a gzip bomb.
pub const MAX_PLAYLIST_BYTES: u64 = 16 << 20;

#[derive(Debug, Error)]
pub enum FetchError {
    #[error("{url}: {reason}")]
    Request { url: String, reason: String },
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: {reason}")]
    File { url: String, reason: String },
    #[error("{url}: unsupported response: {reason}")]
    Unsupported { url: String, reason: String },
}

impl FetchError {
    /// Whether trying again may help (network trouble and 5xx, not 404).
    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::Request { .. } => true,
            FetchError::Status { status, .. } => *status >= 500 || *status == 429,
            FetchError::File { .. } | FetchError::Unsupported { .. } => false,
        }
    }
}

/// Progress of a download, handed to the caller's check at every chunk and every
/// [`PROGRESS_INTERVAL`].
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub requested_at: Instant,
    pub first_byte_at: Option<Instant>,
    pub bytes_so_far: u64,
    /// Content-Length (or range length) when known.
    pub expected_bytes: Option<u64>,
}

/// A finished download with its timing.
#[derive(Debug, Clone)]
pub struct Download {
    pub body: Bytes,
    /// Where the body came from after redirects: relative URIs in a playlist resolve against it.
    pub url: Url,
    pub requested_at: Instant,
    pub first_byte_at: Instant,
    pub finished_at: Instant,
}

/// How a download ended.
#[derive(Debug)]
pub enum Outcome {
    Done(Download),
    /// The caller's check asked to stop; `bytes_so_far` were transferred for nothing.
    Abandoned {
        bytes_so_far: u64,
    },
}

#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
}

impl Fetcher {
    pub fn new() -> Result<Self, FetchError> {
        let client = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(90))
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("eddy-play/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| FetchError::Request { url: String::new(), reason: e.to_string() })?;
        Ok(Self { client })
    }

    /// Fetches a whole small resource (key, init section) with retries.
    pub async fn get(&self, url: &Url, range: Option<Range>) -> Result<Bytes, FetchError> {
        match self.download(url, range, |_| false).await? {
            Outcome::Done(download) => Ok(download.body),
            Outcome::Abandoned { .. } => Err(FetchError::Request { url: url.to_string(), reason: "abandoned".into() }),
        }
    }

    /// Fetches a playlist with retries: gzip-encoded bodies are accepted (`Accept-Encoding: gzip`,
    /// RFC 9110 §12.5.3) and decoded, redirects followed, and the URL it finally came from returned,
    /// since the playlist's relative URIs resolve against that (RFC 8216 §4.1, RFC 3986 §5.1.3).
    pub async fn get_playlist(&self, url: &Url) -> Result<(Bytes, Url), FetchError> {
        match self.fetch(url, None, Kind::Playlist, |_| false).await? {
            Outcome::Done(download) => Ok((download.body, download.url)),
            Outcome::Abandoned { .. } => Err(FetchError::Request { url: url.to_string(), reason: "abandoned".into() }),
        }
    }

    /// Downloads with retries and back-off; `abandon` is called with the progress and stops the
    /// download (without retrying) when it returns true.
    pub async fn download(
        &self,
        url: &Url,
        range: Option<Range>,
        abandon: impl FnMut(&Progress) -> bool,
    ) -> Result<Outcome, FetchError> {
        self.fetch(url, range, Kind::Media, abandon).await
    }

    async fn fetch(
        &self,
        url: &Url,
        range: Option<Range>,
        kind: Kind,
        mut abandon: impl FnMut(&Progress) -> bool,
    ) -> Result<Outcome, FetchError> {
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            match self.download_once(url, range, kind, &mut abandon).await {
                Err(error) if error.is_transient() && attempt < ATTEMPTS => {
                    tracing::warn!(%url, attempt, "request failed, retrying in {backoff:?}: {error}");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn download_once(
        &self,
        url: &Url,
        range: Option<Range>,
        kind: Kind,
        abandon: &mut impl FnMut(&Progress) -> bool,
    ) -> Result<Outcome, FetchError> {
        let requested_at = Instant::now();
        if url.scheme() == "file" {
            return read_file(url, range, requested_at).await.map(Outcome::Done);
        }
        let request_error = |e: reqwest::Error| FetchError::Request { url: url.to_string(), reason: e.to_string() };
        let mut request = self.client.get(url.clone());
        if kind == Kind::Playlist {
            request = request.header(reqwest::header::ACCEPT_ENCODING, "gzip");
        }
        if let Some(range) = range {
            let last = range.offset + range.length.saturating_sub(1);
            request = request.header(reqwest::header::RANGE, format!("bytes={}-{last}", range.offset));
        }
        let send = request.send();
        tokio::pin!(send);
        let mut progress = Progress { requested_at, first_byte_at: None, bytes_so_far: 0, expected_bytes: None };
        let mut response = loop {
            match tokio::time::timeout(PROGRESS_INTERVAL, &mut send).await {
                Ok(result) => break result.map_err(request_error)?,
                Err(_) => {
                    if abandon(&progress) {
                        return Ok(Outcome::Abandoned { bytes_so_far: 0 });
                    }
                    if requested_at.elapsed() > STALLED_REQUEST {
                        return Err(FetchError::Request { url: url.to_string(), reason: "no response".into() });
                    }
                }
            }
        };
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError::Status { url: url.to_string(), status: status.as_u16() });
        }
        let final_url = response.url().clone();
        let gzip = match response.headers().get(reqwest::header::CONTENT_ENCODING).map(|v| v.to_str()) {
            None => false,
            Some(Ok(coding)) if coding.eq_ignore_ascii_case("identity") => false,
            Some(Ok(coding)) if kind == Kind::Playlist && coding.eq_ignore_ascii_case("gzip") => true,
            Some(coding) => {
                let coding = coding.unwrap_or("(not text)");
                return Err(FetchError::Unsupported {
                    url: url.to_string(),
                    reason: format!("Content-Encoding {coding:?}"),
                });
            }
        };
        progress.expected_bytes = response.content_length().or(range.map(|r| r.length));
        let mut body = BytesMut::with_capacity(progress.expected_bytes.unwrap_or(64 * 1024).min(64 << 20) as usize);
        let mut last_byte_at = Instant::now();
        loop {
            match tokio::time::timeout(PROGRESS_INTERVAL, response.chunk()).await {
                Ok(Ok(Some(chunk))) => {
                    last_byte_at = Instant::now();
                    progress.first_byte_at.get_or_insert(last_byte_at);
                    progress.bytes_so_far = progress.bytes_so_far.saturating_add(chunk.len() as u64);
                    if kind == Kind::Playlist && progress.bytes_so_far > MAX_PLAYLIST_BYTES {
                        return Err(too_large(url));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(Ok(None)) => break,
                Ok(Err(e)) => return Err(request_error(e)),
                Err(_) if last_byte_at.elapsed() > STALLED_REQUEST => {
                    return Err(FetchError::Request { url: url.to_string(), reason: "transfer stalled".into() });
                }
                Err(_) => {}
            }
            if abandon(&progress) {
                return Ok(Outcome::Abandoned { bytes_so_far: progress.bytes_so_far });
            }
        }
        if let Some(expected) = progress.expected_bytes {
            if (body.len() as u64) < expected {
                return Err(FetchError::Request {
                    url: url.to_string(),
                    reason: format!("truncated body: {} of {expected} bytes", body.len()),
                });
            }
        }
        let body = if gzip {
            gunzip(&body).map_err(|reason| FetchError::Unsupported { url: url.to_string(), reason })?
        } else {
            body.freeze()
        };
        if kind == Kind::Playlist && body.len() as u64 > MAX_PLAYLIST_BYTES {
            return Err(too_large(url));
        }
        let finished_at = Instant::now();
        Ok(Outcome::Done(Download {
            body,
            url: final_url,
            requested_at,
            first_byte_at: progress.first_byte_at.unwrap_or(finished_at),
            finished_at,
        }))
    }
}

/// What is fetched: a playlist (small, text, maybe gzip-encoded) or media (bytes as sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Playlist,
    Media,
}

fn too_large(url: &Url) -> FetchError {
    FetchError::Unsupported { url: url.to_string(), reason: format!("a playlist over {MAX_PLAYLIST_BYTES} bytes") }
}

/// Decodes a gzip body (RFC 1952), refusing one that inflates past [`MAX_PLAYLIST_BYTES`].
fn gunzip(compressed: &[u8]) -> Result<Bytes, String> {
    use std::io::Read;
    let mut inflated = Vec::new();
    flate2::read::GzDecoder::new(compressed)
        .take(MAX_PLAYLIST_BYTES + 1)
        .read_to_end(&mut inflated)
        .map_err(|e| format!("gzip body cannot be decoded: {e}"))?;
    if inflated.len() as u64 > MAX_PLAYLIST_BYTES {
        return Err(format!("gzip body inflates past {MAX_PLAYLIST_BYTES} bytes"));
    }
    Ok(Bytes::from(inflated))
}

async fn read_file(url: &Url, range: Option<Range>, requested_at: Instant) -> Result<Download, FetchError> {
    let file_error = |reason: String| FetchError::File { url: url.to_string(), reason };
    let path = url.to_file_path().map_err(|()| file_error("not a local path".into()))?;
    let data = tokio::fs::read(&path).await.map_err(|e| file_error(e.to_string()))?;
    let body = match range {
        None => Bytes::from(data),
        Some(range) => {
            let start = usize::try_from(range.offset).map_err(|_| file_error("range out of file".into()))?;
            let end = start.saturating_add(usize::try_from(range.length).unwrap_or(usize::MAX));
            let slice =
                data.get(start..end).ok_or_else(|| file_error(format!("range {start}..{end} is past the end")))?;
            Bytes::copy_from_slice(slice)
        }
    };
    let finished_at = Instant::now();
    Ok(Download { body, url: url.clone(), requested_at, first_byte_at: finished_at, finished_at })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(data).unwrap_or_else(|e| panic!("{e}"));
        encoder.finish().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_gzip_playlist_is_decoded() {
        let text = b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n";
        assert_eq!(gunzip(&gzip(text)).as_deref(), Ok(&text[..]));
    }

    #[test]
    fn a_gzip_bomb_or_a_corrupt_body_is_refused() {
        // 17 MiB of zeros compress to ~17 KB.
        let bomb = gzip(&vec![0u8; (MAX_PLAYLIST_BYTES + (1 << 20)) as usize]);
        assert!(bomb.len() < 100_000);
        let error = gunzip(&bomb).err().unwrap_or_default();
        assert!(error.contains("inflates past"), "{error}");
        let error = gunzip(b"\x1f\x8b not really gzip").err().unwrap_or_default();
        assert!(error.contains("cannot be decoded"), "{error}");
    }
}
