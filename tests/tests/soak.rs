//! The soak: a bounded run of mixed load against the real edge, in front of an origin that also
//! misbehaves on purpose. Many clients loop as fast as they can over a seeded mix of hits, misses,
//! ranges, HEADs, aborted downloads, uncacheable objects and origin faults (resets mid-body, stalls
//! past `first_byte_timeout`, 5xx), and every byte a client receives is checked against the object it
//! asked for. At the end: no error, the edge still running with no flight left, and its peak RSS
//! within the configured cache size plus 64 MiB.
//!
//! An error is anything the edge did wrong: wrong bytes, a wrong status, Content-Length or
//! Content-Range, a broken or stuck body or a connection error on a healthy path. Fault paths are
//! expected to fail (502, 503 or 504, or a truncated body; a reset can also cut the response before
//! its head, which the client sees as a connection closed without an answer): those are counted
//! apart, and any other answer on them (a whole body, a 200 on a stall) is an error.
//!
//! `EDDY_SOAK_SECS` sets the length of the load (default 10; `bench/soak.sh` runs 60 s against a
//! release build), `EDDY_SOAK_CLIENTS` the number of clients (default 32), `EDDY_SOAK_SEED` the mix.
//! The one-line summary starts with `soak:` (see it with `--nocapture`).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use eddy_tests::{bin_path, proc_status_kib, spawn_until_ready, Edge};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The edge's cache (`--cache-size`), and how far above it the peak RSS may rise.
const CACHE_MIB: u64 = 32;
const RSS_HEADROOM_MIB: u64 = 64;

/// Short origin timeouts, so that stalls are cut quickly, yet long enough that a busy machine does
/// not turn a healthy answer into a 504.
const CONFIG: &str = "[origin]\nconnect_timeout = \"1s\"\nfirst_byte_timeout = \"1s\"\ntotal_timeout = \"10s\"\n";

/// A request that takes longer than this is an error (the edge hung).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------------
// Deterministic randomness and objects

/// SplitMix64: small, seeded, good enough for a workload mix.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What an origin path does. The path encodes the behaviour and the object number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `/ok/<n>.ts`: cacheable segments of 1–128 KiB.
    Ok,
    /// `/big/<n>.mp4`: cacheable, 2–4 MiB.
    Big,
    /// `/nostore/<n>`: `Cache-Control: no-store`, 1–64 KiB.
    NoStore,
    /// `/fault/reset/<n>`: a Content-Length of 16–256 KiB, half of it sent, then FIN (even n) or RST.
    Reset,
    /// `/fault/slow/<n>`: never answers; the edge must give up at `first_byte_timeout`.
    Slow,
    /// `/fault/5xx/<n>`: 503.
    Unavailable,
}

const KINDS: [Kind; 6] = [Kind::Ok, Kind::Big, Kind::NoStore, Kind::Reset, Kind::Slow, Kind::Unavailable];

impl Kind {
    fn count(self) -> u32 {
        match self {
            Kind::Ok => 1000,
            Kind::Big => 6,
            Kind::NoStore => 100,
            Kind::Reset => 20,
            Kind::Slow => 4,
            Kind::Unavailable => 10,
        }
    }
    fn prefix(self) -> &'static str {
        match self {
            Kind::Ok => "/ok/",
            Kind::Big => "/big/",
            Kind::NoStore => "/nostore/",
            Kind::Reset => "/fault/reset/",
            Kind::Slow => "/fault/slow/",
            Kind::Unavailable => "/fault/5xx/",
        }
    }
    fn suffix(self) -> &'static str {
        match self {
            Kind::Ok => ".ts",
            Kind::Big => ".mp4",
            _ => "",
        }
    }
    fn path(self, n: u32) -> String {
        format!("{}{n}{}", self.prefix(), self.suffix())
    }
    /// A number unique to each object, which seeds its size and bytes.
    fn id(self, n: u32) -> u64 {
        let index = KINDS.iter().position(|k| *k == self).expect("listed") as u64;
        (index << 32) | u64::from(n)
    }
    fn size(self, n: u32) -> usize {
        let h = mix(self.id(n) ^ 0x5EED) as usize;
        match self {
            Kind::Ok => 1024 + h % (127 * 1024),
            Kind::Big => (2 << 20) + h % (2 << 20),
            Kind::NoStore => 1024 + h % (63 * 1024),
            Kind::Reset => (16 << 10) + h % (240 << 10),
            Kind::Slow | Kind::Unavailable => 0,
        }
    }
}

fn parse_path(path: &str) -> Option<(Kind, u32)> {
    KINDS.iter().find_map(|&kind| {
        let n: u32 = path.strip_prefix(kind.prefix())?.strip_suffix(kind.suffix())?.parse().ok()?;
        (n < kind.count()).then_some((kind, n))
    })
}

/// Every object's bytes, generated before the load and shared by the origin and the clients. The
/// bytes are random per object and per position, so another object's bytes, or the right object's
/// bytes at the wrong offset, never pass for the expected ones.
struct Catalog {
    bodies: Vec<Vec<Bytes>>,
}

impl Catalog {
    fn new() -> Catalog {
        let generate = |kind: Kind, n: u32| {
            let len = kind.size(n);
            let mut rng = Rng(kind.id(n).wrapping_mul(0xA24B_AED4_963E_E407));
            let mut bytes = Vec::with_capacity(len + 8);
            while bytes.len() < len {
                bytes.extend_from_slice(&rng.next().to_le_bytes());
            }
            bytes.truncate(len);
            Bytes::from(bytes)
        };
        Catalog { bodies: KINDS.iter().map(|&k| (0..k.count()).map(|n| generate(k, n)).collect()).collect() }
    }
    fn body(&self, kind: Kind, n: u32) -> Bytes {
        let index = KINDS.iter().position(|k| *k == kind).expect("listed");
        self.bodies[index][n as usize].clone()
    }
}

// ---------------------------------------------------------------------------------------------------
// The origin: raw keep-alive HTTP/1.1 on 127.0.0.1, behaviour by path

async fn start_origin(catalog: Arc<Catalog>) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
    let addr = listener.local_addr().expect("origin addr");
    let requests = Arc::new(AtomicU64::new(0));
    let counter = requests.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(origin_connection(stream, catalog.clone(), counter.clone()));
        }
    });
    (addr, requests)
}

/// Serves requests on one connection until the peer closes it or a fault path ends it.
async fn origin_connection(mut stream: TcpStream, catalog: Arc<Catalog>, requests: Arc<AtomicU64>) {
    let _ = stream.set_nodelay(true);
    let mut buffer = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
        buffer.drain(..head_end);
        requests.fetch_add(1, Ordering::Relaxed);
        let mut request_line = head.lines().next().unwrap_or_default().split_whitespace();
        let method = request_line.next().unwrap_or_default().to_string();
        let target = request_line.next().unwrap_or_default().to_string();
        let range = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim().eq_ignore_ascii_case("range").then(|| value.trim().to_string())
        });
        let Some((kind, n)) = parse_path(&target) else {
            let answer = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nCache-Control: no-store\r\n\r\n";
            if stream.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
            continue;
        };
        match kind {
            Kind::Slow => {
                // No answer: wait (boundedly) for the edge to give up and hang up.
                let mut sink = [0u8; 1024];
                let hang_up = async {
                    while let Ok(n) = stream.read(&mut sink).await {
                        if n == 0 {
                            break;
                        }
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(20), hang_up).await;
                return;
            }
            Kind::Unavailable => {
                let answer = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nRetry-After: 1\r\n\r\nbusy";
                if stream.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
            Kind::Reset => {
                let body = catalog.body(kind, n);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\nCache-Control: max-age=3600\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&body[..body.len() / 2]).await;
                let _ = stream.flush().await;
                if n % 2 == 1 {
                    // A real reset (RST) rather than an early end of stream (FIN).
                    let _ = stream.set_zero_linger();
                } else {
                    let _ = stream.shutdown().await;
                }
                return;
            }
            Kind::Ok | Kind::Big | Kind::NoStore => {
                let body = catalog.body(kind, n);
                let length = body.len();
                let cache_control = if kind == Kind::NoStore { "no-store" } else { "max-age=3600" };
                let content_type = match kind {
                    Kind::Ok => "video/mp2t",
                    Kind::Big => "video/mp4",
                    _ => "application/octet-stream",
                };
                let mut head = format!(
                    "Content-Type: {content_type}\r\nCache-Control: {cache_control}\r\nETag: \"{:x}\"\r\nAccept-Ranges: bytes\r\n",
                    kind.id(n)
                );
                let (status, part) = match range.as_deref().map(|r| byte_range(r, length)) {
                    None | Some(RangeAsked::Whole) => ("200 OK", body.clone()),
                    Some(RangeAsked::Part(start, end)) => {
                        head.push_str(&format!("Content-Range: bytes {start}-{end}/{length}\r\n"));
                        ("206 Partial Content", body.slice(start..=end))
                    }
                    Some(RangeAsked::Unsatisfiable) => {
                        head.push_str(&format!("Content-Range: bytes */{length}\r\n"));
                        ("416 Range Not Satisfiable", Bytes::new())
                    }
                };
                let head = format!("HTTP/1.1 {status}\r\n{head}Content-Length: {}\r\n\r\n", part.len());
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                if method != "HEAD" && stream.write_all(&part).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeAsked {
    Whole,
    Part(usize, usize),
    Unsatisfiable,
}

/// A single `bytes=` range of an object of `length` bytes (the forms the clients send).
fn byte_range(spec: &str, length: usize) -> RangeAsked {
    let Some((first, last)) = spec.strip_prefix("bytes=").and_then(|s| s.split_once('-')) else {
        return RangeAsked::Whole;
    };
    if first.is_empty() {
        return match last.parse::<usize>() {
            Ok(suffix) if suffix > 0 && length > 0 => RangeAsked::Part(length.saturating_sub(suffix), length - 1),
            Ok(_) => RangeAsked::Unsatisfiable,
            Err(_) => RangeAsked::Whole,
        };
    }
    let Ok(start) = first.parse::<usize>() else { return RangeAsked::Whole };
    let end = if last.is_empty() {
        length.saturating_sub(1)
    } else {
        match last.parse::<usize>() {
            Ok(end) if end >= start => end.min(length.saturating_sub(1)),
            _ => return RangeAsked::Whole,
        }
    };
    if start >= length {
        return RangeAsked::Unsatisfiable;
    }
    RangeAsked::Part(start, end)
}

// ---------------------------------------------------------------------------------------------------
// The clients

/// One request of the mix.
#[derive(Debug, Clone)]
enum Op {
    Get(Kind, u32),
    Range(Kind, u32, String),
    Head(Kind, u32),
    /// Read at least this many bytes of the body, then drop the response.
    Abort(Kind, u32, usize),
    Fault(Kind, u32),
}

impl Op {
    fn is_fault(&self) -> bool {
        matches!(self, Op::Fault(..))
    }
}

/// Popularity of the `/ok/` segments: Zipf with s = 1 over their numbers, so the popular ones are
/// hits and the tail keeps missing and evicting.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(count: u32) -> Zipf {
        let mut total = 0.0;
        let mut cdf: Vec<f64> = (1..=count)
            .map(|rank| {
                total += 1.0 / f64::from(rank);
                total
            })
            .collect();
        cdf.iter_mut().for_each(|c| *c /= total);
        Zipf { cdf }
    }
    fn draw(&self, rng: &mut Rng) -> u32 {
        let u = rng.unit();
        (self.cdf.partition_point(|&c| c < u) as u32).min(self.cdf.len() as u32 - 1)
    }
}

fn range_spec(rng: &mut Rng, length: usize) -> String {
    let start = rng.below(length as u64) as usize;
    match rng.below(20) {
        0 => format!("bytes={length}-"),                             // past the end: 416
        1..=3 => format!("bytes={start}-"),                          // open-ended
        4..=6 => format!("bytes=-{}", 1 + rng.below(length as u64)), // suffix
        _ => format!("bytes={start}-{}", start + rng.below(256 * 1024) as usize),
    }
}

/// Picks the next request (per mille of the mix).
fn choose(rng: &mut Rng, zipf: &Zipf) -> Op {
    let uniform = |rng: &mut Rng, kind: Kind| rng.below(u64::from(kind.count())) as u32;
    match rng.below(1000) {
        0..520 => Op::Get(Kind::Ok, zipf.draw(rng)),
        520..540 => Op::Get(Kind::Big, uniform(rng, Kind::Big)),
        540..620 => {
            let n = zipf.draw(rng);
            Op::Range(Kind::Ok, n, range_spec(rng, Kind::Ok.size(n)))
        }
        620..660 => {
            let n = uniform(rng, Kind::Big);
            Op::Range(Kind::Big, n, range_spec(rng, Kind::Big.size(n)))
        }
        660..710 => Op::Head(Kind::Ok, zipf.draw(rng)),
        710..760 => Op::Get(Kind::NoStore, uniform(rng, Kind::NoStore)),
        760..780 => {
            let n = uniform(rng, Kind::NoStore);
            Op::Range(Kind::NoStore, n, range_spec(rng, Kind::NoStore.size(n)))
        }
        780..840 => {
            let (kind, n) = match rng.below(5) {
                0 | 1 => (Kind::Ok, zipf.draw(rng)),
                2 | 3 => (Kind::Big, uniform(rng, Kind::Big)),
                _ => (Kind::NoStore, uniform(rng, Kind::NoStore)),
            };
            let size = kind.size(n);
            Op::Abort(kind, n, 1 + rng.below(size as u64 - 1) as usize)
        }
        840..880 => Op::Fault(Kind::Reset, uniform(rng, Kind::Reset)),
        880..883 => Op::Fault(Kind::Slow, uniform(rng, Kind::Slow)),
        883..923 => Op::Fault(Kind::Unavailable, uniform(rng, Kind::Unavailable)),
        _ => Op::Get(Kind::Ok, uniform(rng, Kind::Ok)),
    }
}

#[derive(Debug)]
enum Outcome {
    /// A correct answer; `hit` when the edge said `X-Cache: HIT`.
    Correct { hit: bool },
    /// A download the client gave up on, with every byte it read correct.
    Aborted,
    /// A fault path failing the way it should (502, 503, 504, a truncated body).
    ExpectedFault,
    /// The reset path's truncation, when it came before the edge had sent the head.
    ClosedBeforeHead,
    /// Something the edge did wrong.
    Error(String),
}

struct Record {
    op: Op,
    latency: Duration,
    outcome: Outcome,
}

/// Reads the body and checks it against `expected`, chunk by chunk. Stops early (returning what it
/// read) once `stop_after` bytes have come. Errors say what was wrong.
async fn read_checked(
    response: &mut reqwest::Response,
    expected: &[u8],
    stop_after: Option<usize>,
) -> Result<usize, String> {
    let mut offset = 0;
    loop {
        if stop_after.is_some_and(|limit| offset >= limit) {
            return Ok(offset);
        }
        match response.chunk().await {
            Ok(None) => return Ok(offset),
            Ok(Some(chunk)) => {
                let end = offset + chunk.len();
                if end > expected.len() {
                    return Err(format!("{end} bytes or more for a body of {}", expected.len()));
                }
                if chunk[..] != expected[offset..end] {
                    return Err(format!("wrong bytes at {offset}..{end}"));
                }
                offset = end;
            }
            // A stuck body is not a fault path's expected truncation: it says so.
            Err(error) if error.is_timeout() => return Err(format!("body stuck after {offset} bytes")),
            Err(error) => {
                return Err(format!("body broke off after {offset} bytes: {}", eddy_tests::error_chain(&error)))
            }
        }
    }
}

fn is_hit(response: &reqwest::Response) -> bool {
    response.headers().get("x-cache").is_some_and(|v| v == "HIT")
}

fn content_length_matches(response: &reqwest::Response, expected: usize) -> bool {
    match response.headers().get("content-length").and_then(|v| v.to_str().ok()) {
        None => true,
        Some(value) => value.parse::<usize>().ok() == Some(expected),
    }
}

async fn run(client: &reqwest::Client, base: &str, catalog: &Catalog, op: &Op) -> Outcome {
    let (method, kind, n, range) = match op {
        Op::Get(k, n) | Op::Abort(k, n, _) | Op::Fault(k, n) => (reqwest::Method::GET, *k, *n, None),
        Op::Head(k, n) => (reqwest::Method::HEAD, *k, *n, None),
        Op::Range(k, n, spec) => (reqwest::Method::GET, *k, *n, Some(spec.clone())),
    };
    let mut request = client.request(method, format!("{base}{}", kind.path(n)));
    if let Some(spec) = &range {
        request = request.header("range", spec);
    }
    let mut response = match request.send().await {
        Ok(response) => response,
        // A body that breaks off before the edge has flushed the head reaches the client as a
        // connection closed without a response: on the reset path, that is the truncation too.
        Err(error) if matches!(op, Op::Fault(Kind::Reset, _)) && !error.is_connect() && !error.is_timeout() => {
            return Outcome::ClosedBeforeHead
        }
        Err(error) => return Outcome::Error(format!("no response: {}", eddy_tests::error_chain(&error))),
    };
    let status = response.status().as_u16();
    let hit = is_hit(&response);
    let expected = catalog.body(kind, n);
    match op {
        Op::Get(..) => {
            if status != 200 || !content_length_matches(&response, expected.len()) {
                return Outcome::Error(format!("status {status}, headers {:?}", response.headers()));
            }
            match read_checked(&mut response, &expected, None).await {
                Ok(got) if got == expected.len() => Outcome::Correct { hit },
                Ok(got) => Outcome::Error(format!("a body of {got} of {} bytes delivered as whole", expected.len())),
                Err(error) => Outcome::Error(error),
            }
        }
        Op::Head(..) => {
            if status != 200 || !content_length_matches(&response, expected.len()) {
                return Outcome::Error(format!("HEAD: status {status}, headers {:?}", response.headers()));
            }
            match response.bytes().await {
                Ok(body) if body.is_empty() => Outcome::Correct { hit },
                Ok(body) => Outcome::Error(format!("HEAD answered with a body of {} bytes", body.len())),
                Err(error) => Outcome::Error(format!("HEAD: {error}")),
            }
        }
        Op::Range(_, _, spec) => {
            let length = expected.len();
            let (want_status, slice, content_range) = match byte_range(spec, length) {
                RangeAsked::Part(start, end) => {
                    (206, expected.slice(start..=end), format!("bytes {start}-{end}/{length}"))
                }
                RangeAsked::Unsatisfiable => (416, Bytes::new(), format!("bytes */{length}")),
                RangeAsked::Whole => (200, expected.clone(), String::new()),
            };
            // Ignoring a Range and sending the whole object is allowed (RFC 9110 §14.2).
            let (slice, content_range) =
                if status == 200 { (expected.clone(), String::new()) } else { (slice, content_range) };
            let got_range = response.headers().get("content-range").and_then(|v| v.to_str().ok()).unwrap_or_default();
            if (status != want_status && status != 200) || got_range != content_range {
                return Outcome::Error(format!("{spec} of {length}: status {status}, Content-Range {got_range:?}"));
            }
            if !content_length_matches(&response, slice.len()) {
                return Outcome::Error(format!(
                    "{spec} of {length}: Content-Length {:?}",
                    response.headers().get("content-length")
                ));
            }
            match read_checked(&mut response, &slice, None).await {
                Ok(got) if got == slice.len() => Outcome::Correct { hit },
                Ok(got) => Outcome::Error(format!("{spec}: {got} of {} bytes delivered as whole", slice.len())),
                Err(error) => Outcome::Error(format!("{spec}: {error}")),
            }
        }
        Op::Abort(_, _, after) => {
            if status != 200 {
                return Outcome::Error(format!("status {status} before an abort"));
            }
            match read_checked(&mut response, &expected, Some(*after)).await {
                // Dropping the response mid-body is the abort.
                Ok(got) if got >= *after => Outcome::Aborted,
                Ok(got) => Outcome::Error(format!("the body ended at {got} of {} bytes", expected.len())),
                Err(error) => Outcome::Error(error),
            }
        }
        Op::Fault(Kind::Reset, _) => match status {
            502 | 504 => Outcome::ExpectedFault,
            200 => match read_checked(&mut response, &expected, None).await {
                Err(error) if error.starts_with("body broke off") => Outcome::ExpectedFault,
                Err(error) => Outcome::Error(format!("reset path: {error}")),
                Ok(got) => Outcome::Error(format!("reset path: {got} bytes delivered as a whole body")),
            },
            _ => Outcome::Error(format!("reset path: status {status}")),
        },
        Op::Fault(Kind::Slow, _) if status == 504 => Outcome::ExpectedFault,
        Op::Fault(Kind::Unavailable, _) if status == 502 || status == 503 => Outcome::ExpectedFault,
        Op::Fault(..) => Outcome::Error(format!("fault path: status {status}")),
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(CLIENT_TIMEOUT).build().expect("client")
}

/// One client: requests back to back until the deadline.
async fn client_loop(
    client: reqwest::Client,
    seed: u64,
    base: String,
    catalog: Arc<Catalog>,
    zipf: Arc<Zipf>,
    deadline: Instant,
) -> Vec<Record> {
    let mut rng = Rng(seed);
    let mut records = Vec::new();
    while Instant::now() < deadline {
        let op = choose(&mut rng, &zipf);
        let started = Instant::now();
        let outcome = run(&client, &base, &catalog, &op).await;
        let outcome = match outcome {
            Outcome::Error(error) => Outcome::Error(format!("{op:?}: {error}")),
            other => other,
        };
        records.push(Record { op, latency: started.elapsed(), outcome });
    }
    records
}

// ---------------------------------------------------------------------------------------------------
// The edge, its memory and its stats

async fn stats(client: &reqwest::Client, edge: &Edge) -> serde_json::Value {
    let body = client.get(edge.admin_url("/stats")).send().await.expect("stats").bytes().await.expect("body");
    serde_json::from_slice(&body).expect("json")
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

#[tokio::test(flavor = "multi_thread")]
async fn soak_mixed_load_keeps_errors_at_zero_and_memory_bounded() {
    let secs: u64 = env_or("EDDY_SOAK_SECS", 10);
    let clients: u64 = env_or("EDDY_SOAK_CLIENTS", 32);
    let seed: u64 = env_or("EDDY_SOAK_SEED", 1);

    let catalog = Arc::new(Catalog::new());
    let (origin, origin_requests) = start_origin(catalog.clone()).await;
    let mut config = tempfile::Builder::new().suffix(".toml").tempfile().expect("config");
    config.write_all(CONFIG.as_bytes()).expect("write config");
    // The edge's log goes to a file: an access line per request would flood the test output, and the
    // file is searched for panics afterwards.
    let log = tempfile::NamedTempFile::new().expect("log file");
    let mut command = std::process::Command::new(bin_path("eddy-edge"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--config", config.path().to_str().expect("utf8")])
        .args(["--origin", &format!("http://{origin}"), "--cache-size", &format!("{CACHE_MIB}MiB")])
        .env("RUST_LOG", "warn")
        .stderr(log.reopen().expect("log handle"));
    let process = spawn_until_ready(command, "eddy-edge listening on", Duration::from_secs(20)).expect("edge");
    let mut edge = Edge {
        addr: process.addr_after("listening on ").expect("addr"),
        admin: process.addr_after("admin on ").expect("admin"),
        process,
    };
    let pid = edge.process.pid();
    let base = format!("http://{}", edge.addr);
    let admin = client();

    // Warm up the edge's own machinery (runtime, origin pool, cache) before the baseline.
    for op in [Op::Get(Kind::Ok, 0), Op::Head(Kind::Ok, 0), Op::Range(Kind::Big, 0, "bytes=0-99".into())] {
        let outcome = run(&admin, &base, &catalog, &op).await;
        assert!(matches!(outcome, Outcome::Correct { .. }), "warm-up {op:?}: {outcome:?}");
    }
    let baseline_kib = proc_status_kib(pid, "VmRSS:").expect("memory figure");

    // RSS while the load runs, sampled every 100 ms (VmHWM at the end is the true peak). The highest
    // sample of each half of the run is reported: RSS that keeps climbing would be a leak.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while sampling.load(Ordering::Relaxed) {
                samples.push(proc_status_kib(pid, "VmRSS:").expect("memory figure"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            samples
        })
    };

    let zipf = Arc::new(Zipf::new(Kind::Ok.count()));
    // One connection pool for all clients (building a reqwest client costs tens of milliseconds): a
    // client that is mid-request holds its connection, so the edge sees one connection per busy
    // client, and an aborted download closes its connection.
    let pool = client();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let client_seed = mix(seed.wrapping_mul(1000).wrapping_add(c));
            let task = client_loop(pool.clone(), client_seed, base.clone(), catalog.clone(), zipf.clone(), deadline);
            tokio::spawn(task)
        })
        .collect();
    let mut records = Vec::new();
    for task in tasks {
        records.extend(task.await.expect("client task"));
    }
    let elapsed = started.elapsed();
    sampling.store(false, Ordering::Relaxed);
    let samples = sampler.await.expect("sampler");
    let half = samples.len() / 2;
    let first_half_kib = samples[..half].iter().copied().max().unwrap_or(0);
    let second_half_kib = samples[half..].iter().copied().max().unwrap_or(0);

    let errors: Vec<&str> = records
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Error(e) => Some(e.as_str()),
            _ => None,
        })
        .collect();
    // After the load: the edge is alive, every flight ends (bounded poll), and it still answers right.
    let alive = edge.process.child.try_wait().expect("wait").is_none();
    assert!(alive, "the edge exited during the load; first errors: {:#?}", &errors[..errors.len().min(5)]);
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    let mut last = stats(&admin, &edge).await;
    while last["in_flight"].as_u64() != Some(0) && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        last = stats(&admin, &edge).await;
    }
    let peak_kib = proc_status_kib(pid, "VmHWM:").expect("memory figure").max(first_half_kib).max(second_half_kib);
    let end_kib = proc_status_kib(pid, "VmRSS:").expect("memory figure");
    let after = run(&admin, &base, &catalog, &Op::Get(Kind::Ok, 1)).await;

    // Latency of the requests on healthy paths (a stalled fault path takes first_byte_timeout by design).
    let mut healthy: Vec<&Record> = records.iter().filter(|r| !r.op.is_fault()).collect();
    healthy.sort_by_key(|r| r.latency);
    let latencies: Vec<Duration> = healthy.iter().map(|r| r.latency).collect();
    let slowest = healthy.last().map(|r| format!("{:?}", r.op)).unwrap_or_default();
    let count = |f: fn(&Outcome) -> bool| records.iter().filter(|r| f(&r.outcome)).count();
    let faults = count(|o| matches!(o, Outcome::ExpectedFault | Outcome::ClosedBeforeHead));
    let closed_before_head = count(|o| matches!(o, Outcome::ClosedBeforeHead));
    let aborted = count(|o| matches!(o, Outcome::Aborted));
    let correct = count(|o| matches!(o, Outcome::Correct { .. }));
    let hits = count(|o| matches!(o, Outcome::Correct { hit: true }));
    let grown_mib = peak_kib.saturating_sub(baseline_kib) as f64 / 1024.0;
    let bound_mib = CACHE_MIB + RSS_HEADROOM_MIB;
    eprintln!(
        "soak: {:.1} s, {clients} clients, seed {seed}: {} requests ({:.0} req/s), errors {}, expected faults {faults} \
         ({closed_before_head} closed before the head), aborted {aborted}, hits {hits} of {correct} correct, \
         non-fault latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({slowest}), \
         peak RSS {:.1} MiB (baseline {:.1} MiB, +{grown_mib:.1} MiB, bound +{bound_mib} MiB; highest sample \
         of the first half {:.1} MiB, of the second {:.1} MiB; after the load {:.1} MiB), origin requests {}, \
         edge: evictions {}, cache bytes {}, in_flight after {}",
        elapsed.as_secs_f64(),
        records.len(),
        records.len() as f64 / elapsed.as_secs_f64(),
        errors.len(),
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        percentile(&latencies, 100.0),
        peak_kib as f64 / 1024.0,
        baseline_kib as f64 / 1024.0,
        first_half_kib as f64 / 1024.0,
        second_half_kib as f64 / 1024.0,
        end_kib as f64 / 1024.0,
        origin_requests.load(Ordering::Relaxed),
        last["evictions"],
        last["cache_bytes"],
        last["in_flight"],
    );

    let log_text = std::fs::read_to_string(log.path()).unwrap_or_default();
    let panics: Vec<&str> = log_text.lines().filter(|l| l.contains("panicked")).take(5).collect();
    // Errors grouped by their text with the numbers left out, then the first few in full.
    let mut by_kind = std::collections::BTreeMap::<String, usize>::new();
    for error in &errors {
        let shape: String = error.chars().map(|c| if c.is_ascii_digit() { '#' } else { c }).collect();
        *by_kind.entry(shape).or_default() += 1;
    }
    assert!(
        errors.is_empty(),
        "{} errors; by kind: {by_kind:#?}\nthe first ones: {:#?}",
        errors.len(),
        &errors[..errors.len().min(10)]
    );
    assert!(edge.process.child.try_wait().expect("wait").is_none(), "the edge exited");
    assert!(panics.is_empty(), "the edge panicked: {panics:#?}");
    assert_eq!(last["in_flight"].as_u64(), Some(0), "a flight was left behind after the load");
    assert!(matches!(after, Outcome::Correct { .. }), "after the load: {after:?}");
    assert!(faults > 0 && aborted > 0 && hits > 0, "the mix did not exercise faults, aborts and hits");
    assert!(
        grown_mib < bound_mib as f64,
        "peak RSS rose by {grown_mib:.1} MiB over the baseline: more than the {CACHE_MIB} MiB cache + {RSS_HEADROOM_MIB} MiB"
    );
}
