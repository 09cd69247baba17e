//! A directory origin: serves the files below one folder with the Content-Type players expect, an ETag
//! and Last-Modified (and answers conditional requests with 304), and refuses any path that would leave
//! the folder (dot segments, encoded or not, judged by `super::path::check`, and symlinks that point
//! outside). Hidden files and folders (`.env`, `.git/`) are not found unless `origin.serve_dotfiles`.

use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;
use futures::StreamExt;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use percent_encoding::percent_decode_str;

use super::{path, OriginError, OriginRequest, OriginResponse};
use eddy_shared::media::content_type_for_path;

/// Files up to this size are read in one call (segments and playlists); larger ones are streamed.
const WHOLE_READ_LIMIT: u64 = 8 << 20;

pub struct DirOrigin {
    name: String,
    root: PathBuf,
    /// Whether paths with a segment starting with `.` are served (they are 404 otherwise).
    serve_dotfiles: bool,
}

impl DirOrigin {
    pub fn new(spec: &str, serve_dotfiles: bool) -> Result<Self, OriginError> {
        let root = std::fs::canonicalize(spec)
            .map_err(|e| OriginError::Invalid { origin: spec.into(), reason: format!("cannot open directory: {e}") })?;
        if !root.is_dir() {
            return Err(OriginError::Invalid { origin: spec.into(), reason: "not a directory".into() });
        }
        Ok(DirOrigin { name: spec.to_string(), root, serve_dotfiles })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub async fn send(&self, request: &OriginRequest) -> Result<OriginResponse, OriginError> {
        let path = request.path_and_query.split('?').next().unwrap_or("/");
        let response = match self.resolve(path) {
            Resolved::Refused => simple(StatusCode::FORBIDDEN, "path escapes the origin directory\n"),
            Resolved::Missing => simple(StatusCode::NOT_FOUND, "not found\n"),
            Resolved::File(file) => self.serve(&file, path, request).await,
        };
        Ok(OriginResponse { origin: self.name.clone(), ..response })
    }

    fn resolve(&self, url_path: &str) -> Resolved {
        // Dot segments, NUL and bad encodings, decoded, in one place for every origin.
        if path::check(url_path).is_err() {
            return Resolved::Refused;
        }
        // Not found rather than forbidden: whether a hidden file exists is none of the client's business.
        if !self.serve_dotfiles && path::has_hidden_segment(url_path) {
            return Resolved::Missing;
        }
        let Ok(decoded) = percent_decode_str(url_path).decode_utf8() else { return Resolved::Refused };
        // A backslash is a separator to the shared check (and to some servers), but a file name
        // character here: refuse it rather than serve a name the check judged differently.
        if decoded.contains('\\') {
            return Resolved::Refused;
        }
        let relative = decoded.trim_start_matches('/');
        let mut candidate = self.root.clone();
        for component in Path::new(relative).components() {
            match component {
                Component::Normal(part) => candidate.push(part),
                // `path::check` refused `.` and `..` already; these arms keep the join safe on its own.
                Component::CurDir => {}
                Component::ParentDir | Component::RootDir | Component::Prefix(_) => return Resolved::Refused,
            }
        }
        match std::fs::canonicalize(&candidate) {
            // Symlinks are followed, then the real path must still be inside the root.
            Ok(real) if !real.starts_with(&self.root) => Resolved::Refused,
            Ok(real) if real.is_file() => Resolved::File(real),
            _ => Resolved::Missing,
        }
    }

    async fn serve(&self, file: &Path, url_path: &str, request: &OriginRequest) -> OriginResponse {
        if request.method != Method::GET && request.method != Method::HEAD {
            let mut response = simple(StatusCode::METHOD_NOT_ALLOWED, "a directory origin serves GET and HEAD\n");
            response.headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        let metadata = match tokio::fs::metadata(file).await {
            Ok(m) => m,
            Err(_) => return simple(StatusCode::NOT_FOUND, "not found\n"),
        };
        let modified = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let mtime_nanos = modified.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let etag = format!("\"{:x}-{:x}\"", metadata.len(), mtime_nanos);
        let last_modified = httpdate::fmt_http_date(modified);

        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type_for_path(url_path)));
        if let Ok(v) = HeaderValue::from_str(&etag) {
            headers.insert(header::ETAG, v);
        }
        if let Ok(v) = HeaderValue::from_str(&last_modified) {
            headers.insert(header::LAST_MODIFIED, v);
        }
        if not_modified(&request.headers, &etag, modified) {
            return OriginResponse {
                status: StatusCode::NOT_MODIFIED,
                headers,
                body: futures::stream::empty().boxed(),
                origin: String::new(),
            };
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(metadata.len()));
        let body = if request.method == Method::HEAD {
            futures::stream::empty().boxed()
        } else if metadata.len() <= WHOLE_READ_LIMIT {
            match tokio::fs::read(file).await {
                Ok(bytes) => futures::stream::once(async move { Ok(Bytes::from(bytes)) }).boxed(),
                Err(e) => {
                    let message = format!("reading {}: {e}", file.display());
                    futures::stream::once(async move { Err(OriginError::Body(message)) }).boxed()
                }
            }
        } else {
            // Large files are streamed so that memory stays bounded by the chunk size.
            match tokio::fs::File::open(file).await {
                Ok(handle) => tokio_util::io::ReaderStream::with_capacity(handle, 256 * 1024)
                    .map(|chunk| chunk.map_err(|e| OriginError::Body(e.to_string())))
                    .boxed(),
                Err(e) => {
                    let message = format!("opening {}: {e}", file.display());
                    futures::stream::once(async move { Err(OriginError::Body(message)) }).boxed()
                }
            }
        };
        OriginResponse { status: StatusCode::OK, headers, body, origin: String::new() }
    }
}

enum Resolved {
    File(PathBuf),
    Missing,
    Refused,
}

fn simple(status: StatusCode, text: &'static str) -> OriginResponse {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(text.len()));
    OriginResponse {
        status,
        headers,
        body: futures::stream::once(async move { Ok(Bytes::from_static(text.as_bytes())) }).boxed(),
        origin: String::new(),
    }
}

/// RFC 9110 §13.2.2: If-None-Match takes precedence over If-Modified-Since.
fn not_modified(request: &HeaderMap, etag: &str, modified: SystemTime) -> bool {
    if let Some(value) = request.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        return value.split(',').map(str::trim).any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag);
    }
    if let Some(since) = request.get(header::IF_MODIFIED_SINCE).and_then(|v| v.to_str().ok()) {
        if let Ok(since) = httpdate::parse_http_date(since) {
            let modified_secs = modified.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            let since_secs = since.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            return modified_secs <= since_secs;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str) -> OriginRequest {
        OriginRequest {
            method: Method::GET,
            path_and_query: path.into(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            first_byte_timeout: None,
        }
    }

    async fn body_of(response: OriginResponse) -> Vec<u8> {
        let chunks: Vec<Bytes> = response.body.map(|c| c.expect("body")).collect().await;
        chunks.concat()
    }

    #[tokio::test]
    async fn serves_files_with_hls_types_and_validators() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("v")).expect("mkdir");
        std::fs::write(dir.path().join("v/index.m3u8"), "#EXTM3U\n").expect("write");
        let origin = DirOrigin::new(dir.path().to_str().expect("utf8"), false).expect("dir");
        let response = origin.send(&request("/v/index.m3u8?x=1")).await.expect("answer");
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.headers[header::CONTENT_TYPE], "application/vnd.apple.mpegurl");
        let etag = response.headers[header::ETAG].clone();
        assert!(response.headers.contains_key(header::LAST_MODIFIED));
        assert_eq!(body_of(response).await, b"#EXTM3U\n");

        let mut conditional = request("/v/index.m3u8");
        conditional.headers.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(origin.send(&conditional).await.expect("answer").status, StatusCode::NOT_MODIFIED);
    }

    #[tokio::test]
    async fn streams_large_files_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data: Vec<u8> = (0..(WHOLE_READ_LIMIT as usize + 1000)).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("big.mp4"), &data).expect("write");
        let origin = DirOrigin::new(dir.path().to_str().expect("utf8"), false).expect("dir");
        let response = origin.send(&request("/big.mp4")).await.expect("answer");
        assert_eq!(response.headers[header::CONTENT_LENGTH], data.len().to_string().as_str());
        assert_eq!(body_of(response).await, data);
    }

    #[tokio::test]
    async fn refuses_paths_that_escape() {
        let outer = tempfile::tempdir().expect("tempdir");
        let root = outer.path().join("root");
        std::fs::create_dir(&root).expect("mkdir");
        std::fs::write(outer.path().join("secret.txt"), "secret").expect("write");
        std::os::unix::fs::symlink(outer.path().join("secret.txt"), root.join("link.txt")).expect("symlink");
        let origin = DirOrigin::new(root.to_str().expect("utf8"), false).expect("dir");
        for path in [
            "/../secret.txt",
            "/%2e%2e/secret.txt",
            "/%2E%2e/secret.txt",
            "/a/%2E%2E/%2e%2e/secret.txt",
            "/..%2fsecret.txt",
            "/..%5Csecret.txt",
            "/a%00.ts",
            "/link.txt",
        ] {
            let response = origin.send(&request(path)).await.expect("answer");
            assert_eq!(response.status, StatusCode::FORBIDDEN, "{path}");
        }
        assert_eq!(origin.send(&request("/nope.ts")).await.expect("answer").status, StatusCode::NOT_FOUND);
    }

    /// A folder with `.env`, `.git/config`, `.hidden/seg.ts` and an ordinary `v/seg.ts`.
    fn folder_with_dotfiles() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(".env"), "SECRET=1\n").expect("write");
        std::fs::create_dir(dir.path().join(".git")).expect("mkdir");
        std::fs::write(dir.path().join(".git/config"), "[core]\n").expect("write");
        std::fs::create_dir(dir.path().join(".hidden")).expect("mkdir");
        std::fs::write(dir.path().join(".hidden/seg.ts"), "ts").expect("write");
        std::fs::create_dir(dir.path().join("v")).expect("mkdir");
        std::fs::write(dir.path().join("v/seg.ts"), "ts").expect("write");
        dir
    }

    #[tokio::test]
    async fn dotfiles_are_not_found_by_default() {
        let dir = folder_with_dotfiles();
        let origin = DirOrigin::new(dir.path().to_str().expect("utf8"), false).expect("dir");
        for path in ["/.env", "/.git/config", "/%2egit/config", "/%2Eenv", "/.hidden/seg.ts", "/v/.env"] {
            let response = origin.send(&request(path)).await.expect("answer");
            assert_eq!(response.status, StatusCode::NOT_FOUND, "{path}");
            assert_eq!(body_of(response).await, b"not found\n", "{path}: nothing of the file leaks");
        }
        let mut head = request("/.env");
        head.method = Method::HEAD;
        assert_eq!(origin.send(&head).await.expect("answer").status, StatusCode::NOT_FOUND);
        assert_eq!(origin.send(&request("/v/seg.ts")).await.expect("answer").status, StatusCode::OK);
    }

    #[tokio::test]
    async fn dotfiles_are_served_when_configured() {
        let dir = folder_with_dotfiles();
        let origin = DirOrigin::new(dir.path().to_str().expect("utf8"), true).expect("dir");
        let response = origin.send(&request("/.env")).await.expect("answer");
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(body_of(response).await, b"SECRET=1\n");
        assert_eq!(origin.send(&request("/.git/config")).await.expect("answer").status, StatusCode::OK);
        // Serving dotfiles does not let `..` through.
        assert_eq!(origin.send(&request("/.git/..%2f.env")).await.expect("answer").status, StatusCode::FORBIDDEN);
    }
}
