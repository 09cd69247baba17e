//! `eddy-play` against the HTTP that CDNs and origins really send: redirects (301, 302, 307) on
//! playlists and segments, whose relative URIs then resolve against the URL the playlist came from
//! (RFC 8216 §4.1, RFC 3986 §5.1.3), and gzip-encoded playlists. A small server in this file, on
//! 127.0.0.1, plays the CDN and records every request.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};

/// 3 s of TS in 1 s segments, `seg0.ts`…, with `index.m3u8`, under `out`.
fn make_rendition(out: &Path) -> Result<()> {
    std::fs::create_dir_all(out)?;
    let status = Command::new("ffmpeg")
        .current_dir(out)
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25"])
        .args(["-f", "lavfi", "-i", "sine", "-t", "3", "-c:v", "libx264", "-preset", "ultrafast"])
        .args(["-g", "25", "-keyint_min", "25", "-sc_threshold", "0", "-c:a", "aac", "-f", "hls"])
        .args(["-hls_time", "1", "-hls_playlist_type", "vod", "-hls_segment_filename", "seg%d.ts", "index.m3u8"])
        .status()
        .context("running ffmpeg")?;
    if !status.success() {
        bail!("ffmpeg failed: {status}");
    }
    Ok(())
}

/// The server's map:
/// - `/r/master.m3u8` → 301 to `/real/master.m3u8` (its variant is `v0/index.m3u8`, relative);
/// - `/real/v0/index.m3u8` → 302 to `/deep/v0/index.m3u8`, whose segments are relative too;
/// - `/deep/v0/*.ts` → 307 to `/store/v0/*.ts`, served from the files;
/// - playlists are sent gzip-encoded, and refused with 406 to a client that does not accept gzip.
fn respond(root: &Path, request: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let redirect = |status: StatusCode, to: String| {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = status;
        if let Ok(value) = to.parse() {
            response.headers_mut().insert(hyper::header::LOCATION, value);
        }
        response
    };
    let status_only = |status: StatusCode| {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = status;
        response
    };
    if path == "/r/master.m3u8" {
        return redirect(StatusCode::MOVED_PERMANENTLY, "/real/master.m3u8".into());
    }
    if path == "/real/v0/index.m3u8" {
        return redirect(StatusCode::FOUND, "/deep/v0/index.m3u8".into());
    }
    if let Some(name) = path.strip_prefix("/deep/v0/").filter(|n| n.ends_with(".ts")) {
        return redirect(StatusCode::TEMPORARY_REDIRECT, format!("/store/v0/{name}"));
    }
    let file = match path {
        "/real/master.m3u8" => root.join("master.m3u8"),
        "/deep/v0/index.m3u8" => root.join("v0/index.m3u8"),
        _ => match path.strip_prefix("/store/v0/").filter(|n| !n.contains('/') && !n.contains("..")) {
            Some(name) => root.join("v0").join(name),
            None => return status_only(StatusCode::NOT_FOUND),
        },
    };
    let Ok(data) = std::fs::read(&file) else { return status_only(StatusCode::NOT_FOUND) };
    if !path.ends_with(".m3u8") {
        return Response::new(Full::new(Bytes::from(data)));
    }
    let accepts_gzip = request
        .headers()
        .get(hyper::header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|c| c.trim().starts_with("gzip")));
    if !accepts_gzip {
        return status_only(StatusCode::NOT_ACCEPTABLE);
    }
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    if encoder.write_all(&data).is_err() {
        return status_only(StatusCode::INTERNAL_SERVER_ERROR);
    }
    let Ok(compressed) = encoder.finish() else { return status_only(StatusCode::INTERNAL_SERVER_ERROR) };
    let mut response = Response::new(Full::new(Bytes::from(compressed)));
    response.headers_mut().insert(hyper::header::CONTENT_ENCODING, hyper::header::HeaderValue::from_static("gzip"));
    response
}

struct Server {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<(String, u16)>>>,
    _runtime: tokio::runtime::Runtime,
}

impl Server {
    fn start(root: PathBuf) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new((root, Arc::clone(&log)));
        runtime.spawn(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
            while let Ok((stream, _)) = listener.accept().await {
                let state = Arc::clone(&state);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let state = Arc::clone(&state);
                        async move {
                            let response = respond(&state.0, &request);
                            if let Ok(mut log) = state.1.lock() {
                                log.push((request.uri().path().to_string(), response.status().as_u16()));
                            }
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
        Ok(Self { addr, log, _runtime: runtime })
    }

    fn requests(&self) -> Vec<(String, u16)> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

#[test]
fn follows_redirects_resolving_relative_uris_against_the_final_url_and_reads_gzip_playlists() -> Result<()> {
    let work = tempfile::Builder::new().prefix("eddy-player-http").tempdir()?;
    let root = work.path().join("content");
    make_rendition(&root.join("v0"))?;
    std::fs::write(root.join("master.m3u8"), "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=600000\nv0/index.m3u8\n")?;
    let server = Server::start(root.clone())?;
    let report_path = work.path().join("report.json");
    let mut command = Command::new(eddy_tests::bin_path("eddy-play"));
    command
        .arg(format!("http://{}/r/master.m3u8", server.addr))
        .args(["--headless", "--quiet", "--report"])
        .arg(&report_path);
    let output = eddy_tests::run_to_end(command, Duration::from_secs(60))?;
    let requests = server.requests();
    assert!(output.status.success(), "{}\nrequests: {requests:?}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report_path)?)?;
    assert_eq!(report["segments"].as_array().map(Vec::len), Some(3), "{report}");
    assert_eq!(report["stall_count"], 0, "{report}");

    let statuses = |prefix: &str| -> Vec<u16> {
        requests.iter().filter(|(path, _)| path.starts_with(prefix)).map(|(_, status)| *status).collect()
    };
    assert_eq!(statuses("/r/"), [301], "{requests:?}");
    assert_eq!(statuses("/real/"), [200, 302], "the master, then the variant it names: {requests:?}");
    assert_eq!(statuses("/deep/v0/index.m3u8"), [200], "{requests:?}");
    assert_eq!(statuses("/deep/v0/seg"), [307, 307, 307], "{requests:?}");
    assert_eq!(statuses("/store/"), [200, 200, 200], "{requests:?}");
    assert!(!requests.iter().any(|(_, status)| *status == 404 || *status == 406), "{requests:?}");
    Ok(())
}
