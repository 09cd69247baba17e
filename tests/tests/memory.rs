//! Memory is bounded by configuration, not by what clients or objects do: the edge's peak resident
//! set (`VmHWM` in /proc/PID/status) is measured while clients that do not read hold huge responses
//! open and ranges of huge objects are asked for.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eddy_tests::{proc_status_kib, start_edge};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const GIB: u64 = 1 << 30;

/// An origin that serves `/uncacheable` (no-store) and `/cacheable` (max-age), each 1 GiB, generated as
/// it is sent (so the test itself stays small), with single byte ranges. Counts the bytes it sent.
async fn huge_origin() -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, counter.clone()));
        }
    });
    (url, sent)
}

async fn serve(mut stream: TcpStream, sent: Arc<AtomicU64>) {
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buffer[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let cache_control = if head.starts_with("get /uncacheable") { "no-store" } else { "max-age=3600" };
    let range = head
        .lines()
        .find_map(|l| l.strip_prefix("range: bytes="))
        .and_then(|r| r.trim().split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
    let (status, start, end) = match range {
        Some((a, b)) if a <= b && b < GIB => ("206 Partial Content", a, b),
        _ => ("200 OK", 0, GIB - 1),
    };
    let length = end - start + 1;
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {length}\r\nCache-Control: {cache_control}\r\nContent-Type: video/mp4\r\nConnection: close\r\n"
    );
    if range.is_some() {
        response.push_str(&format!("Content-Range: bytes {start}-{end}/{GIB}\r\n"));
    }
    response.push_str("\r\n");
    if stream.write_all(response.as_bytes()).await.is_err() {
        return;
    }
    let chunk = vec![0x5au8; 64 * 1024];
    let mut left = length;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        if stream.write_all(&chunk[..n]).await.is_err() {
            return;
        }
        sent.fetch_add(n as u64, Ordering::Relaxed);
        left -= n as u64;
    }
}

/// Opens a request and reads only the head: a client that then stops reading.
async fn stalled_client(addr: std::net::SocketAddr, target: &str, range: Option<&str>) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let range = range.map(|r| format!("Range: {r}\r\n")).unwrap_or_default();
    let request = format!("GET {target} HTTP/1.1\r\nHost: cdn.example\r\n{range}\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    (stream, String::from_utf8_lossy(&head).into_owned())
}

/// 8 clients that stop reading a 1 GiB uncacheable object, 8 HEADs of it, plus 8 `Range: bytes=0-0`
/// requests on a 1 GiB cacheable one (larger than max_object_size), raise the edge's peak RSS by less
/// than 64 MiB.
/// Before the bounded window, every chunk of every fetch stayed in memory (a Range on a miss cost
/// 600 MiB).
#[tokio::test(flavor = "multi_thread")]
async fn memory_stays_bounded_with_slow_clients_and_ranges_of_huge_objects() {
    let (origin, sent) = huge_origin().await;
    let edge = start_edge(&["--origin", &origin, "--cache-size", "16MiB"]).expect("edge");
    let pid = edge.process.pid();
    // Warm up the edge's own machinery (runtime, client pool) before the baseline.
    let warm = reqwest::Client::builder().no_proxy().build().expect("client");
    let ranged = warm.get(edge.url("/cacheable")).header("range", "bytes=1-2").send().await.expect("range");
    assert_eq!(ranged.status(), 206);
    assert_eq!(ranged.bytes().await.expect("body").len(), 2);
    let baseline = proc_status_kib(pid, "VmRSS:").expect("memory figure");

    let mut held = Vec::new();
    for _ in 0..8 {
        let (stream, head) = stalled_client(edge.addr, "/uncacheable", None).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        held.push(stream);
    }
    // HEAD on a miss of a huge object that will not be stored holds no body.
    for _ in 0..8 {
        let head = warm.head(edge.url("/uncacheable")).send().await.expect("head");
        assert_eq!(head.status(), 200);
        assert_eq!(head.headers()["content-length"], "1073741824");
    }
    for _ in 0..8 {
        let (mut stream, head) = stalled_client(edge.addr, "/cacheable", Some("bytes=0-0")).await;
        assert!(head.starts_with("HTTP/1.1 206"), "{head}");
        assert!(head.to_ascii_lowercase().contains("content-range: bytes 0-0/1073741824"), "{head}");
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.expect("the one byte");
        assert_eq!(byte[0], 0x5a);
    }
    // Wait until the origin stops sending: every fetch is then held back by its client (bounded poll).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut last = u64::MAX;
    let mut quiet_polls = 0;
    while quiet_polls < 5 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = sent.load(Ordering::Relaxed);
        quiet_polls = if now == last { quiet_polls + 1 } else { 0 };
        last = now;
    }
    assert!(quiet_polls >= 5, "the origin never stopped sending: no backpressure");
    let origin_sent_mib = sent.load(Ordering::Relaxed) >> 20;
    eprintln!("origin sent {origin_sent_mib} MiB");
    // Each object is 1 GiB: less than that in all means no fetch ran ahead of its client.
    assert!(origin_sent_mib < 1024, "the origin sent {origin_sent_mib} MiB to clients that read nothing");
    let peak = proc_status_kib(pid, "VmHWM:").expect("memory figure");
    let grown_mib = peak.saturating_sub(baseline) / 1024;
    eprintln!("baseline {baseline} KiB, peak {peak} KiB");
    assert!(grown_mib < 64, "peak RSS grew by {grown_mib} MiB (baseline {baseline} KiB, peak {peak} KiB)");
    // The edge still serves others.
    let ranged = warm.get(edge.url("/cacheable")).header("range", "bytes=10-19").send().await.expect("range");
    assert_eq!(ranged.bytes().await.expect("body").len(), 10);
    drop(held);
}

/// An origin whose every object is `HELD_TOTAL` bytes long and cacheable, of which it sends
/// `HELD_SENT` and then holds the rest back until the connection closes: fills that never end.
async fn holding_origin() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buffer = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buffer[..n]),
                    }
                }
                let response =
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {HELD_TOTAL}\r\nCache-Control: max-age=3600\r\n\r\n");
                if stream.write_all(response.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![0x33u8; 64 * 1024];
                for _ in 0..HELD_SENT / chunk.len() {
                    if stream.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
                // Hold the rest back until the edge hangs up.
                let _ = stream.read(&mut buffer).await;
            });
        }
    });
    url
}

const HELD_TOTAL: usize = 24 << 20;
const HELD_SENT: usize = 20 << 20;

/// Concurrent misses of large distinct objects, each storable (under max_object_size), used to keep
/// one whole body each in memory while it arrived: 8 of them held 160 MiB. All fills together now
/// keep at most `cache.fill_memory`; over it, a fill streams through unstored at its client's pace.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_fills_of_large_objects_are_bounded_by_fill_memory() {
    let origin = holding_origin().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("edge.toml");
    std::fs::write(&config, "[cache]\nfill_memory = \"16MiB\"\n").expect("config");
    let edge = start_edge(&["--config", config.to_str().expect("utf8"), "--origin", &origin, "--cache-size", "16MiB"])
        .expect("edge");
    let pid = edge.process.pid();
    let baseline = proc_status_kib(pid, "VmRSS:").expect("memory figure");
    let mut held = Vec::new();
    for i in 0..8 {
        let (stream, head) = stalled_client(edge.addr, &format!("/large/{i}.mp4"), None).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        held.push(stream);
    }
    // Wait (bounded) until the edge's memory stops growing: every fill is then held back.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (mut last, mut quiet_polls) = (0, 0);
    while quiet_polls < 5 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = proc_status_kib(pid, "VmRSS:").expect("memory figure");
        quiet_polls = if now.abs_diff(last) < 512 { quiet_polls + 1 } else { 0 };
        last = now;
    }
    let peak = proc_status_kib(pid, "VmHWM:").expect("memory figure");
    let grown_mib = peak.saturating_sub(baseline) / 1024;
    eprintln!("baseline {baseline} KiB, peak {peak} KiB");
    assert!(grown_mib < 64, "8 held fills grew peak RSS by {grown_mib} MiB (fill_memory is 16 MiB)");
    drop(held);
}
