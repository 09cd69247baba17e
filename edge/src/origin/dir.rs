//! A directory origin: serves the files below one folder with the Content-Type players expect, an ETag
//! and Last-Modified (and answers conditional requests with 304), and refuses any path that would leave
//! the folder (dot segments, encoded or not, judged by `super::path::check`, and symlinks that point
//! outside). Hidden files and folders (`.env`, `.git/`) are not found unless `origin.serve_dotfiles`.
//!
//! LL-HLS blocking playlist reloads (draft-pantos-hls-rfc8216bis §6.2.5.2): a GET or HEAD of a
//! `.m3u8` with `_HLS_msn` (and `_HLS_part`) is held until the playlist on disk holds that segment
//! (or part), as a live packager (`eddy-package --live --low-latency`) rewrites it; then it is served
//! like any file. One asking more than two segments (or the Advance Part Limit) beyond the playlist's
//! end is answered 400 at once; one whose part has not come within three target durations (or the
//! request's own bound, `origin.blocking_reload_timeout`), 503. A playlist with ENDLIST, or that does
//! not advertise CAN-BLOCK-RELOAD=YES, is served at once. What a playlist holds is judged by the pure
//! [`blocking`] module; the file is watched by one poller shared by all the holds on it
//! (`super::playlist_watch`).

use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;
use futures::StreamExt;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use percent_encoding::percent_decode_str;

use super::playlist_watch::{PlaylistWatchers, Snapshot};
use super::{path, OriginError, OriginRequest, OriginResponse};
use crate::cache::policy;
use eddy_shared::media::content_type_for_path;

/// Files up to this size are read in one call (segments and playlists); larger ones are streamed.
const WHOLE_READ_LIMIT: u64 = 8 << 20;
/// Longer than any hold may last (`origin.blocking_reload_timeout` is at most 10 minutes), and small
/// enough to add to any clock reading.
const FOREVER: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

pub struct DirOrigin {
    name: String,
    root: PathBuf,
    /// Whether paths with a segment starting with `.` are served (they are 404 otherwise).
    serve_dotfiles: bool,
    /// One poller per playlist file with blocking reloads held on it, however many holds there are.
    watchers: PlaylistWatchers,
}

impl DirOrigin {
    pub fn new(spec: &str, serve_dotfiles: bool) -> Result<Self, OriginError> {
        let root = std::fs::canonicalize(spec)
            .map_err(|e| OriginError::Invalid { origin: spec.into(), reason: format!("cannot open directory: {e}") })?;
        if !root.is_dir() {
            return Err(OriginError::Invalid { origin: spec.into(), reason: "not a directory".into() });
        }
        Ok(DirOrigin { name: spec.to_string(), root, serve_dotfiles, watchers: PlaylistWatchers::default() })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The playlist files watched for held blocking reloads now, and the looks at them since start.
    pub fn playlist_watch(&self) -> (u64, u64) {
        (self.watchers.live(), self.watchers.polls())
    }

    pub async fn send(&self, request: &OriginRequest) -> Result<OriginResponse, OriginError> {
        let path = request.path_and_query.split('?').next().unwrap_or("/");
        let response = match self.resolve(path) {
            Resolved::Refused => simple(StatusCode::FORBIDDEN, "path escapes the origin directory\n"),
            Resolved::Missing => simple(StatusCode::NOT_FOUND, "not found\n"),
            Resolved::File(file) => match self.hold_blocking_reload(&file, path, request).await {
                Held::Ready => self.serve(&file, path, request).await,
                Held::BadRequest(reason) => no_store(StatusCode::BAD_REQUEST, reason),
                Held::Unavailable => no_store(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the playlist did not reach the requested segment or part in time\n",
                ),
            },
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

    /// A blocking playlist reload waits here until the playlist holds what it asks for (§6.2.5.2);
    /// every other request is ready at once.
    async fn hold_blocking_reload(&self, file: &Path, url_path: &str, request: &OriginRequest) -> Held {
        let query = request.path_and_query.split_once('?').map(|(_, query)| query);
        if !url_path.ends_with(".m3u8") || (request.method != Method::GET && request.method != Method::HEAD) {
            return Held::Ready;
        }
        // The edge refuses malformed directives (`_HLS_part` without `_HLS_msn` among them, §6.2.5.2)
        // before any origin sees them; checked again for requests that come another way.
        let Ok(directives) = policy::delivery_directives(query) else {
            return Held::BadRequest("malformed HLS delivery directive\n");
        };
        let Some(msn) = directives.msn else { return Held::Ready };
        let deadline_from = tokio::time::Instant::now();
        let mut bound = request.first_byte_timeout.unwrap_or(crate::config::DEFAULT_BLOCKING_RELOAD_TIMEOUT);
        let mut watch = self.watchers.subscribe(file);
        loop {
            let snapshot = watch.snapshots.borrow_and_update().clone();
            match snapshot {
                Snapshot::Pending => {}
                // A file that cannot be read is the answer's business (404 and the like), not the hold's.
                Snapshot::Unwatchable => return Held::Ready,
                Snapshot::Read(playlist) => {
                    match playlist.judge(msn, directives.part) {
                        blocking::Verdict::Ready => return Held::Ready,
                        blocking::Verdict::TooFar => {
                            return Held::BadRequest(
                                "the requested segment or part is too far beyond the playlist's end\n",
                            )
                        }
                        blocking::Verdict::Wait => {}
                    }
                    // §6.2.5.2: no longer than three target durations.
                    if let Some(limit) = playlist.hold_limit() {
                        bound = bound.min(limit);
                    }
                }
            }
            // A bound too large to add to a clock reading waits as if for ever (until the client goes).
            let deadline = deadline_from.checked_add(bound).unwrap_or(deadline_from + FOREVER);
            match tokio::time::timeout_at(deadline, watch.snapshots.changed()).await {
                Err(_elapsed) => return Held::Unavailable,
                // The poller ended, which only an abort does: serve what is there.
                Ok(Err(_closed)) => return Held::Ready,
                Ok(Ok(())) => {}
            }
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

/// How a blocking playlist reload's wait ended.
enum Held {
    /// Serve the file (it holds the part, or the request was not one to hold).
    Ready,
    /// 400 (§6.2.5.2: at once), for a request too far ahead or a malformed one.
    BadRequest(&'static str),
    /// 503 (§6.2.5.2: after three target durations).
    Unavailable,
}

/// A refusal nothing in front of the origin may keep: the same URL is answered differently once the
/// playlist moves on.
fn no_store(status: StatusCode, text: &'static str) -> OriginResponse {
    let mut response = simple(status, text);
    response.headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// What a live media playlist holds, for blocking playlist reloads (draft-pantos-hls-rfc8216bis
/// §6.2.5.2). Pure: playlist text in, a verdict out. The text is outside data: anything it does not
/// say reads as absent, and arithmetic on its numbers saturates.
pub mod blocking {
    use std::time::Duration;

    /// What a request's `_HLS_msn` / `_HLS_part` get, given the playlist as it is now.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Verdict {
        /// The playlist holds the segment or part (or will never change: ENDLIST).
        Ready,
        /// Not yet: hold the request.
        Wait,
        /// Further beyond the end than a client may ask: 400 at once.
        TooFar,
    }

    #[derive(Debug, Clone, Default, PartialEq)]
    pub struct Playlist {
        pub ended: bool,
        /// EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES.
        pub can_block: bool,
        pub target_duration: Option<f64>,
        pub part_target: Option<f64>,
        pub media_sequence: u64,
        /// EXT-X-PART tags listed for each segment with a URI, oldest first (0 once its parts left
        /// the playlist).
        pub segment_parts: Vec<u64>,
        /// EXT-X-PART tags after the last segment URI: the parts of the segment being made.
        pub trailing_parts: u64,
    }

    impl Playlist {
        pub fn read(text: &str) -> Playlist {
            let mut playlist = Playlist::default();
            let mut parts = 0u64;
            for line in text.lines().map(str::trim) {
                if line.is_empty() {
                    continue;
                }
                if !line.starts_with('#') {
                    playlist.segment_parts.push(parts);
                    parts = 0;
                } else if line.starts_with("#EXT-X-PART:") {
                    parts = parts.saturating_add(1);
                } else if line == "#EXT-X-ENDLIST" {
                    playlist.ended = true;
                } else if let Some(value) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
                    playlist.media_sequence = value.trim().parse().unwrap_or(0);
                } else if let Some(value) = line.strip_prefix("#EXT-X-TARGETDURATION:") {
                    playlist.target_duration = seconds(value);
                } else if let Some(list) = line.strip_prefix("#EXT-X-PART-INF:") {
                    playlist.part_target = attribute(list, "PART-TARGET").and_then(seconds);
                } else if let Some(list) = line.strip_prefix("#EXT-X-SERVER-CONTROL:") {
                    playlist.can_block = attribute(list, "CAN-BLOCK-RELOAD") == Some("YES");
                }
            }
            playlist.trailing_parts = parts;
            playlist
        }

        /// The media sequence number of the segment being made: the one after the last with a URI.
        fn next_sequence(&self) -> u64 {
            self.media_sequence.saturating_add(self.segment_parts.len() as u64)
        }

        /// §6.2.5.2, the Advance Part Limit: how many parts beyond the last one a request may ask
        /// for. Three divided by the part target when that is under a second, three otherwise.
        fn advance_part_limit(&self) -> u64 {
            match self.part_target {
                Some(target) if target > 0.0 && target < 1.0 => (3.0 / target).floor() as u64,
                _ => 3,
            }
        }

        /// The longest a request may be held (§6.2.5.2: a server that cannot answer within three
        /// target durations SHOULD answer 503), when the playlist states its target duration.
        pub fn hold_limit(&self) -> Option<Duration> {
            let limit = 3.0 * self.target_duration?;
            Duration::try_from_secs_f64(limit).ok()
        }

        /// Whether a request with `_HLS_msn=msn` (and `_HLS_part=part`) can be answered now.
        pub fn judge(&self, msn: u64, part: Option<u64>) -> Verdict {
            // §6.2.5.2: the directives are ignored once the playlist has ENDLIST; a playlist that
            // does not offer blocking reloads is served as it is.
            if self.ended || !self.can_block {
                return Verdict::Ready;
            }
            let next = self.next_sequence();
            // More than two beyond the last segment (next − 1).
            if msn > next.saturating_add(1) {
                return Verdict::TooFar;
            }
            let Some(part) = part else {
                // A segment (with its URI) numbered `msn` or later.
                return if msn < next { Verdict::Ready } else { Verdict::Wait };
            };
            if msn < next {
                // A finished segment. Its parts no longer listed (or never: a segment from before the
                // parts began) are old news: ready.
                let index = msn.checked_sub(self.media_sequence).and_then(|i| usize::try_from(i).ok());
                let listed = index.and_then(|i| self.segment_parts.get(i)).copied().unwrap_or(0);
                if listed == 0 || part < listed {
                    return Verdict::Ready;
                }
                // §6.2.5.2: a part index past the segment's last means part 0 of the next segment.
                return if msn.saturating_add(1) < next || self.trailing_parts > 0 {
                    Verdict::Ready
                } else {
                    Verdict::Wait
                };
            }
            // Parts beyond the last one listed that the request reaches (at least that many for the
            // segment after the one being made).
            let ahead = part.saturating_add(1).saturating_sub(if msn == next { self.trailing_parts } else { 0 });
            if msn == next && part < self.trailing_parts {
                Verdict::Ready
            } else if ahead > self.advance_part_limit() {
                Verdict::TooFar
            } else {
                Verdict::Wait
            }
        }
    }

    /// The value of `name` in an attribute list (`NAME=value,...`), unquoted. Good enough for the
    /// tags read here, whose attributes hold no commas.
    fn attribute<'a>(list: &'a str, name: &str) -> Option<&'a str> {
        list.split(',').find_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            (key.trim() == name).then(|| value.trim().trim_matches('"'))
        })
    }

    fn seconds(text: &str) -> Option<f64> {
        text.trim().parse::<f64>().ok().filter(|s| s.is_finite() && *s >= 0.0)
    }
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
    use std::time::Duration;

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

    /// An LL-HLS playlist as `eddy-package --low-latency` writes it: 2 s segments of two 1 s parts,
    /// finished segments `first..=last` (parts listed for the last two), and `trailing` parts of the
    /// next.
    fn ll_playlist(first: u64, last: u64, trailing: u64) -> String {
        let mut text = "#EXTM3U\n#EXT-X-VERSION:6\n#EXT-X-TARGETDURATION:2\n\
                        #EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,HOLD-BACK=6.000,PART-HOLD-BACK=3.000\n\
                        #EXT-X-PART-INF:PART-TARGET=1.000\n"
            .to_string();
        text.push_str(&format!("#EXT-X-MEDIA-SEQUENCE:{first}\n#EXT-X-MAP:URI=\"init.mp4\"\n"));
        for sequence in first..=last {
            if sequence + 2 > last {
                for part in 0..2 {
                    text.push_str(&format!("#EXT-X-PART:DURATION=1.000,URI=\"seg_{sequence:05}.part{part}.m4s\"\n"));
                }
            }
            text.push_str(&format!("#EXTINF:2.000,\nseg_{sequence:05}.m4s\n"));
        }
        for part in 0..trailing {
            text.push_str(&format!("#EXT-X-PART:DURATION=1.000,URI=\"seg_{:05}.part{part}.m4s\"\n", last + 1));
        }
        text.push_str(&format!("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"seg_{:05}.part{trailing}.m4s\"\n", last + 1));
        text.push_str("#EXT-X-RENDITION-REPORT:URI=\"../360p/index.m3u8\",LAST-MSN=9,LAST-PART=1\n");
        text
    }

    #[test]
    fn a_playlist_is_read_for_its_segments_and_parts() {
        let playlist = blocking::Playlist::read(&ll_playlist(4, 7, 1));
        assert!(playlist.can_block && !playlist.ended);
        assert_eq!(playlist.media_sequence, 4);
        assert_eq!(playlist.segment_parts, [0, 0, 2, 2]);
        assert_eq!(playlist.trailing_parts, 1);
        assert_eq!((playlist.target_duration, playlist.part_target), (Some(2.0), Some(1.0)));
        assert_eq!(playlist.hold_limit(), Some(Duration::from_secs(6)));
        // Garbage reads as nothing said.
        let junk = blocking::Playlist::read(
            "#EXT-X-MEDIA-SEQUENCE:x\n#EXT-X-TARGETDURATION:-1\n#EXT-X-PART-INF:PART-TARGET=NaN\n",
        );
        assert_eq!(junk, blocking::Playlist::default());
        assert_eq!(junk.hold_limit(), None);
    }

    /// §6.2.5.2 against a playlist whose last finished segment is 7, with part 0 of segment 8 out.
    #[test]
    fn blocking_requests_are_judged_against_the_playlists_end() {
        use blocking::Verdict::{Ready, TooFar, Wait};
        let playlist = blocking::Playlist::read(&ll_playlist(4, 7, 1));
        let judge = |msn: u64, part: Option<u64>| playlist.judge(msn, part);
        // Segments: those with a URI are ready, the one being made and the next are waited for.
        assert_eq!([judge(0, None), judge(7, None), judge(8, None), judge(9, None)], [Ready, Ready, Wait, Wait]);
        // More than two beyond the last finished segment: refused at once.
        assert_eq!([judge(10, None), judge(10, Some(0)), judge(u64::MAX, Some(u64::MAX))], [TooFar; 3]);
        // Parts of the segment being made.
        assert_eq!([judge(8, Some(0)), judge(8, Some(1)), judge(8, Some(3))], [Ready, Wait, Wait]);
        // The Advance Part Limit (three parts of 1 s): part 4 of segment 8 is four beyond part 0.
        assert_eq!(judge(8, Some(4)), TooFar);
        assert_eq!([judge(9, Some(2)), judge(9, Some(3))], [Wait, TooFar]);
        // Finished segments: a listed part, one no longer listed, and one past the last (part 0 of
        // the next, §6.2.5.2), which is out.
        assert_eq!([judge(7, Some(1)), judge(5, Some(1)), judge(7, Some(2)), judge(6, Some(2))], [Ready; 4]);
        // Right after a segment closes: part 0 of the next is not out yet.
        let closed = blocking::Playlist::read(&ll_playlist(4, 8, 0));
        assert_eq!([closed.judge(8, Some(2)), closed.judge(9, Some(0)), closed.judge(8, Some(1))], [Wait, Wait, Ready]);
        // Short parts allow more: 3 / 0.5 = six parts ahead.
        let short = blocking::Playlist { part_target: Some(0.5), ..closed.clone() };
        assert_eq!([short.judge(9, Some(5)), short.judge(9, Some(6))], [Wait, TooFar]);
        // ENDLIST, or no blocking reloads offered: the directives are ignored.
        let ended = blocking::Playlist::read(&format!("{}#EXT-X-ENDLIST\n", ll_playlist(4, 7, 0)));
        assert_eq!(ended.judge(1000, Some(5)), Ready);
        let plain = blocking::Playlist::read("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\na.ts\n");
        assert_eq!(plain.judge(1000, None), Ready);
    }

    fn blocking_request(path: &str, timeout: Duration) -> OriginRequest {
        OriginRequest { first_byte_timeout: Some(timeout), ..request(path) }
    }

    /// Writes `text` the way the packager publishes: a temporary file renamed into place.
    fn publish(dir: &Path, text: &str) {
        std::fs::write(dir.join(".index.m3u8.tmp"), text).expect("write");
        std::fs::rename(dir.join(".index.m3u8.tmp"), dir.join("index.m3u8")).expect("rename");
    }

    #[tokio::test]
    async fn a_blocking_reload_is_answered_once_its_part_is_in_the_playlist() {
        let dir = tempfile::tempdir().expect("tempdir");
        publish(dir.path(), &ll_playlist(0, 3, 1));
        let origin = std::sync::Arc::new(DirOrigin::new(dir.path().to_str().expect("utf8"), true).expect("dir"));
        // Already there: answered at once, and a plain request is never held.
        for path in ["/index.m3u8?_HLS_msn=4&_HLS_part=0", "/index.m3u8?_HLS_msn=3", "/index.m3u8"] {
            let response = origin.send(&blocking_request(path, Duration::from_secs(60))).await.expect("answer");
            assert_eq!(response.status, StatusCode::OK, "{path}");
        }
        // The next part: held until the playlist lists it. (A 200 before the rewrite would carry the
        // old playlist, which does not list it.)
        let waiting = {
            let origin = origin.clone();
            tokio::spawn(async move {
                let request = blocking_request("/index.m3u8?_HLS_msn=4&_HLS_part=1", Duration::from_secs(60));
                let response = origin.send(&request).await.expect("answer");
                (response.status, String::from_utf8(body_of(response).await).expect("utf8"))
            })
        };
        publish(dir.path(), &ll_playlist(0, 3, 2));
        let (status, body) = waiting.await.expect("task");
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("URI=\"seg_00004.part1.m4s\"\n"), "{body}");
    }

    #[tokio::test]
    async fn a_blocking_reload_too_far_ahead_is_400_and_one_never_satisfied_503() {
        let dir = tempfile::tempdir().expect("tempdir");
        publish(dir.path(), &ll_playlist(0, 3, 1));
        let origin = DirOrigin::new(dir.path().to_str().expect("utf8"), true).expect("dir");
        let started = std::time::Instant::now();
        for path in ["/index.m3u8?_HLS_msn=6", "/index.m3u8?_HLS_msn=4&_HLS_part=9", "/index.m3u8?_HLS_part=1"] {
            let response = origin.send(&blocking_request(path, Duration::from_secs(60))).await.expect("answer");
            assert_eq!(response.status, StatusCode::BAD_REQUEST, "{path}");
            assert_eq!(response.headers[header::CACHE_CONTROL], "no-store");
        }
        assert!(started.elapsed() < Duration::from_secs(5), "refused at once");
        // Nothing is published: the hold ends at the request's bound (here shorter than three
        // target durations) with a 503 nobody stores.
        let response =
            origin.send(&blocking_request("/index.m3u8?_HLS_msn=4&_HLS_part=1", Duration::from_millis(50))).await;
        let response = response.expect("answer");
        assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers[header::CACHE_CONTROL], "no-store");
        // A playlist with ENDLIST answers any directive at once.
        publish(dir.path(), &format!("{}#EXT-X-ENDLIST\n", ll_playlist(0, 3, 0)));
        let response = origin.send(&blocking_request("/index.m3u8?_HLS_msn=99", Duration::from_secs(60))).await;
        assert_eq!(response.expect("answer").status, StatusCode::OK);
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
