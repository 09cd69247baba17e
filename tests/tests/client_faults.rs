//! End-to-end tests of `eddy-edge` against clients that misbehave: heads and bodies trickled, idle
//! connections, floods of connections and headers, pipelining, clients that leave or read slowly.
//! Each test starts the real binary with short timeouts and checks what the client gets, that the edge
//! still serves a clean request afterwards, and, where it applies, that nothing bad was cached or sent on.

#[path = "support/scripted_origin.rs"]
mod scripted_origin;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eddy_tests::{start_edge, Edge};
use scripted_origin::pattern;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// Every raw read in these tests gives up after this long, so a broken edge fails a test, never hangs it.
const READ_LIMIT: Duration = Duration::from_secs(10);
const CLEAN_BODY: &str = "clean segment\n";

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(READ_LIMIT).build().expect("client")
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().expect("temp config");
    file.write_all(text.as_bytes()).expect("write config");
    file
}

/// A directory origin with `clean.ts` and whatever else a test writes into it.
fn directory_origin() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("clean.ts"), CLEAN_BODY).expect("write clean.ts");
    dir
}

/// Starts the edge with `config` (TOML) in front of `origin` (a URL or a directory).
fn edge_with(config: &str, origin: &str) -> Edge {
    let file = config_file(config);
    start_edge(&["--config", file.path().to_str().expect("utf8"), "--origin", origin]).expect("edge starts")
}

fn dir_str(dir: &tempfile::TempDir) -> &str {
    dir.path().to_str().expect("utf8 path")
}

/// The edge answers a plain request on a new connection with the clean object.
async fn assert_serves_clean(edge: &Edge) {
    let response = client().get(edge.url("/clean.ts")).send().await.expect("the edge still answers");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body"), CLEAN_BODY);
}

/// Polls `condition` until it holds or `timeout` passes.
async fn eventually<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// One response as read off the wire.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_string())
        })
    }
}

/// A raw HTTP/1.1 client connection that reads responses (Content-Length or chunked) off its buffer.
/// Its write half can be handed to a task that writes while the test reads.
struct Raw {
    reader: OwnedReadHalf,
    writer: Option<OwnedWriteHalf>,
    buffer: Vec<u8>,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        Raw::from(TcpStream::connect(addr).await.expect("connect"))
    }

    fn from(stream: TcpStream) -> Raw {
        let (reader, writer) = stream.into_split();
        Raw { reader, writer: Some(writer), buffer: Vec::new() }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.writer.as_mut().expect("write half").write_all(bytes).await.expect("send");
    }

    fn take_writer(&mut self) -> OwnedWriteHalf {
        self.writer.take().expect("write half")
    }

    /// Reads more bytes into the buffer; `false` at end of stream or on an error.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(READ_LIMIT, self.reader.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.buffer.extend_from_slice(&chunk[..n]);
                true
            }
            Err(_) => panic!("no bytes and no close within {READ_LIMIT:?}"),
        }
    }

    /// Takes `n` bytes off the buffer, reading as needed.
    async fn take(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buffer.len() < n {
            if !self.fill().await {
                return None;
            }
        }
        Some(self.buffer.drain(..n).collect())
    }

    async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\r\n") {
                let line = self.take(end + 2).await?;
                return Some(String::from_utf8_lossy(&line[..end]).into_owned());
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// The next whole response; `None` if the connection ends first.
    async fn response(&mut self) -> Option<RawResponse> {
        let head = loop {
            if let Some(end) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = self.take(end + 4).await?;
                break String::from_utf8_lossy(&head[..end]).into_owned();
            }
            if !self.fill().await {
                return None;
            }
        };
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        let mut response = RawResponse { status, head, body: Vec::new() };
        if response.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            loop {
                let size = usize::from_str_radix(self.line().await?.split(';').next()?.trim(), 16).ok()?;
                let chunk = self.take(size + 2).await?;
                if size == 0 {
                    break;
                }
                response.body.extend_from_slice(&chunk[..size]);
            }
        } else if let Some(length) = response.header("content-length") {
            response.body = self.take(length.parse().ok()?).await?;
        }
        Some(response)
    }

    /// Reads (and drops) until the edge closes the connection; how long that took from `since`.
    async fn closed_after(&mut self, since: Instant, limit: Duration) -> Option<Duration> {
        let mut chunk = [0u8; 4096];
        loop {
            let left = limit.checked_sub(since.elapsed())?;
            match tokio::time::timeout(left, self.reader.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Some(since.elapsed()),
                Ok(Ok(_)) => continue,
                Err(_) => return None,
            }
        }
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: edge\r\n\r\n")
}

/// Writes `bytes` one at a time, `every` apart, until done or the edge closes.
fn trickle(mut writer: OwnedWriteHalf, bytes: Vec<u8>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        for byte in bytes {
            tick.tick().await;
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_head_is_cut_after_header_read_timeout() {
    let dir = directory_origin();
    let edge = edge_with("header_read_timeout = \"1s\"\nkeepalive_timeout = \"30s\"\n", dir_str(&dir));
    let connected = Instant::now();
    let mut slow = Raw::connect(edge.addr).await;
    // One byte of a head every 50 ms; it would take 10 minutes to finish.
    let head = format!("GET /clean.ts HTTP/1.1\r\nHost: edge\r\nX-Slow: {}", "a".repeat(12_000)).into_bytes();
    let trickling = trickle(slow.take_writer(), head, Duration::from_millis(50));

    // A normal client is served while the slow head trickles in.
    assert_serves_clean(&edge).await;

    let closed = slow.closed_after(connected, Duration::from_secs(5)).await;
    trickling.abort();
    let closed = closed.expect("the trickling connection is still open 5 s in (header_read_timeout = 1s)");
    assert!(closed >= Duration::from_millis(900), "cut after {closed:?}, before header_read_timeout");
    assert!(
        slow.buffer.is_empty() || slow.buffer.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&slow.buffer)
    );
    assert_serves_clean(&edge).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_keepalive_connection_is_closed_after_keepalive_timeout() {
    let dir = directory_origin();
    let edge = edge_with("header_read_timeout = \"5s\"\nkeepalive_timeout = \"1s\"\n", dir_str(&dir));
    let mut raw = Raw::connect(edge.addr).await;
    raw.send(get("/clean.ts").as_bytes()).await;
    let answer = raw.response().await.expect("a response");
    assert_eq!((answer.status, answer.body.as_slice()), (200, CLEAN_BODY.as_bytes()));

    let answered = Instant::now();
    let closed = raw.closed_after(answered, Duration::from_secs(4)).await;
    let closed = closed.expect("the idle connection is still open 4 s after its response (keepalive_timeout = 1s)");
    assert!(closed >= Duration::from_millis(900), "closed after {closed:?}, before keepalive_timeout");
    assert_serves_clean(&edge).await;
}

/// hyper's own header_read_timeout also runs while a keep-alive connection waits for its next request;
/// the edge's must not, or keepalive_timeout could never exceed header_read_timeout.
#[tokio::test(flavor = "multi_thread")]
async fn idle_keepalive_connection_outlives_header_read_timeout() {
    let dir = directory_origin();
    let edge = edge_with("header_read_timeout = \"1s\"\nkeepalive_timeout = \"10s\"\n", dir_str(&dir));
    let mut raw = Raw::connect(edge.addr).await;
    raw.send(get("/clean.ts").as_bytes()).await;
    assert_eq!(raw.response().await.expect("first response").status, 200);
    // The idle period is what is under test: longer than header_read_timeout, within keepalive_timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    raw.send(get("/clean.ts").as_bytes()).await;
    let second = raw.response().await.expect("the idle connection was closed before keepalive_timeout");
    assert_eq!((second.status, second.body.as_slice()), (200, CLEAN_BODY.as_bytes()));
}

/// A wiremock origin with the clean object and an upload endpoint that must never be reached.
async fn upload_origin() -> MockServer {
    let origin = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/clean.ts"))
        .respond_with(
            ResponseTemplate::new(200).insert_header("cache-control", "max-age=60").set_body_string(CLEAN_BODY),
        )
        .mount(&origin)
        .await;
    Mock::given(method("POST")).and(path("/upload")).respond_with(ResponseTemplate::new(200)).mount(&origin).await;
    origin
}

async fn origin_posts(origin: &MockServer) -> usize {
    let requests = origin.received_requests().await.expect("wiremock records requests");
    requests.iter().filter(|r| r.method.as_str() != "GET").count()
}

const UPLOAD_HEAD: &[u8] =
    b"POST /upload HTTP/1.1\r\nHost: edge\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n";

#[tokio::test(flavor = "multi_thread")]
async fn trickled_post_body_gets_408_and_reaches_no_origin() {
    let origin = upload_origin().await;
    let edge = edge_with("body_read_timeout = \"1s\"\n", &origin.uri());
    let mut raw = Raw::connect(edge.addr).await;
    raw.send(UPLOAD_HEAD).await;
    let sent_head = Instant::now();
    // A byte every 50 ms never pauses a whole second, but 20 bytes/s would take 80 min for 100 kB.
    let trickling = trickle(raw.take_writer(), vec![b'x'; 100_000], Duration::from_millis(50));

    let answer = tokio::time::timeout(Duration::from_secs(5), raw.response()).await;
    let elapsed = sent_head.elapsed();
    let answer = answer.expect("no answer 5 s into a trickled body (body_read_timeout = 1s)").expect("a response");
    assert_eq!(answer.status, 408, "{}", answer.head);
    assert!(elapsed >= Duration::from_millis(900), "408 after {elapsed:?}, before body_read_timeout");
    // The connection is not kept for the rest of the body.
    assert!(raw.closed_after(Instant::now(), Duration::from_secs(3)).await.is_some(), "the connection stays open");
    trickling.abort();

    assert_eq!(origin_posts(&origin).await, 0, "the origin saw a partial upload");
    assert_serves_clean(&edge).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_post_body_gets_408_and_reaches_no_origin() {
    let origin = upload_origin().await;
    let edge = edge_with("body_read_timeout = \"1s\"\n", &origin.uri());
    let mut raw = Raw::connect(edge.addr).await;
    raw.send(UPLOAD_HEAD).await;
    raw.send(&[b'x'; 10]).await;
    let sent = Instant::now();

    let answer = tokio::time::timeout(Duration::from_secs(5), raw.response()).await;
    let elapsed = sent.elapsed();
    let answer = answer.expect("no answer 5 s into a stalled body (body_read_timeout = 1s)").expect("a response");
    assert_eq!(answer.status, 408, "{}", answer.head);
    assert!(elapsed >= Duration::from_millis(900), "408 after {elapsed:?}, before body_read_timeout");
    assert_eq!(origin_posts(&origin).await, 0, "the origin saw a partial upload");
    assert_serves_clean(&edge).await;
}

/// Raises this process's soft open-file limit to its hard limit when it is below `needed`.
fn ensure_open_files(needed: u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("an open-files line");
    let mut values = line.trim_start_matches("Max open files").split_whitespace();
    let parse = |v: Option<&str>| v.map_or(0, |v| if v == "unlimited" { u64::MAX } else { v.parse().unwrap_or(0) });
    let (soft, hard) = (parse(values.next()), parse(values.next()));
    if soft >= needed {
        return;
    }
    assert!(hard >= needed, "this test needs {needed} open files; the hard limit is {hard}");
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &std::process::id().to_string(), &format!("--nofile={hard}:{hard}")])
        .status()
        .expect("prlimit runs");
    assert!(status.success(), "prlimit could not raise the open-file limit to {hard}");
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|entries| entries.count()).unwrap_or(0)
}

async fn metric(edge: &Edge, name: &str) -> Option<f64> {
    let text = client().get(edge.admin_url("/metrics")).send().await.ok()?.text().await.ok()?;
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn over_max_connections_clients_get_503_and_close() {
    const CONNECTIONS: usize = 10_000;
    const MAX: usize = 50;
    ensure_open_files(CONNECTIONS as u64 + 1_000);
    let dir = directory_origin();
    // Long head and idle clocks, so that the accepted idle connections hold their slots throughout.
    let edge = edge_with(
        &format!("max_connections = {MAX}\nheader_read_timeout = \"60s\"\nkeepalive_timeout = \"60s\"\n"),
        dir_str(&dir),
    );
    let pid = edge.process.pid();
    let baseline = open_fds(pid);

    let (answers, mut answered) = tokio::sync::mpsc::unbounded_channel::<(TcpStream, Vec<u8>)>();
    let connecting = Arc::new(tokio::sync::Semaphore::new(128));
    let mut clients = tokio::task::JoinSet::new();
    let mut most_fds = baseline;
    let flood_started = Instant::now();
    for i in 0..CONNECTIONS {
        // Each client holds a permit until it is answered: if refused connections are not answered,
        // this is where the flood stops.
        let permit = tokio::time::timeout(Duration::from_secs(15), connecting.clone().acquire_owned())
            .await
            .unwrap_or_else(|_| panic!("connections over max_connections are not answered ({i} connected)"))
            .expect("semaphore");
        let (answers, addr) = (answers.clone(), edge.addr);
        clients.spawn(async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            // A refused connection gets the 503 and a close; an accepted one waits here, holding its
            // socket (and a connect permit) until the test ends.
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer).await;
            drop(permit);
            let _ = answers.send((stream, answer));
        });
        if i % 250 == 0 {
            most_fds = most_fds.max(open_fds(pid));
        }
    }
    let mut refused = Vec::with_capacity(CONNECTIONS);
    while refused.len() < CONNECTIONS - MAX {
        match tokio::time::timeout(Duration::from_secs(15), answered.recv()).await {
            Ok(Some(answer)) => refused.push(answer),
            _ => break,
        }
        if refused.len() % 250 == 0 {
            most_fds = most_fds.max(open_fds(pid));
        }
    }
    most_fds = most_fds.max(open_fds(pid));
    eprintln!(
        "{CONNECTIONS} connections, {} refused in {:?}; edge files open: baseline {baseline}, at most {most_fds}",
        refused.len(),
        flood_started.elapsed()
    );
    assert_eq!(refused.len(), CONNECTIONS - MAX, "every connection over max_connections is answered and closed");
    for (_, answer) in &refused {
        let text = String::from_utf8_lossy(answer).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 503") && text.contains("\r\nconnection: close\r\n"), "{text}");
    }
    // The edge's own descriptors: its baseline, the accepted connections and a few lingering refusals.
    assert!(
        most_fds <= baseline + MAX + 40,
        "the edge had {most_fds} files open (baseline {baseline}, max_connections {MAX})"
    );
    assert_eq!(metric(&edge, "eddy_edge_open_connections").await, Some(MAX as f64));
    assert!(metric(&edge, "eddy_edge_refused_connections_total").await >= Some((CONNECTIONS - MAX) as f64));

    // A client that sends its request to a full edge reads the 503 (its request bytes are not met
    // with a reset).
    let full = client().get(edge.url("/clean.ts")).send().await.expect("an answer from a full edge");
    assert_eq!(full.status(), 503);
    assert_eq!(full.headers()["retry-after"], "1");

    // Dropping every client frees the slots: a normal request is served again.
    clients.abort_all();
    while clients.join_next().await.is_some() {}
    drop(refused);
    let served = eventually(Duration::from_secs(5), || async {
        match client().get(edge.url("/clean.ts")).send().await {
            Ok(response) => response.status() == 200,
            Err(_) => false,
        }
    })
    .await;
    assert!(served, "no request served after the clients left");
    assert_serves_clean(&edge).await;
    assert!(
        eventually(Duration::from_secs(5), || async { metric(&edge, "eddy_edge_open_connections").await <= Some(1.0) })
            .await,
        "the open-connections gauge did not come down"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hundred_pipelined_requests_get_hundred_answers_in_order() {
    let dir = directory_origin();
    let body = |i: usize| format!("object {i}\n").repeat(i + 1);
    for i in 0..100 {
        std::fs::write(dir.path().join(format!("obj{i}.ts")), body(i)).expect("write object");
    }
    let edge = edge_with("", dir_str(&dir));
    let mut raw = Raw::connect(edge.addr).await;
    let requests: String = (0..100).map(|i| get(&format!("/obj{i}.ts"))).collect();
    raw.send(requests.as_bytes()).await;
    for i in 0..100 {
        let answer = raw.response().await.unwrap_or_else(|| panic!("connection ended before answer {i}"));
        assert_eq!(answer.status, 200, "answer {i}: {}", answer.head);
        assert_eq!(String::from_utf8_lossy(&answer.body), body(i), "answer {i} is not for request {i}");
    }
    // The connection is still usable, and the edge serves others.
    raw.send(get("/clean.ts").as_bytes()).await;
    assert_eq!(raw.response().await.expect("answer 101").body, CLEAN_BODY.as_bytes());
    assert_serves_clean(&edge).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_leaving_mid_body_and_a_slow_reader_do_not_disturb_others() {
    const SIZE: usize = 8 << 20;
    let dir = directory_origin();
    std::fs::write(dir.path().join("big.ts"), pattern(SIZE)).expect("write big.ts");
    let edge = edge_with("", dir_str(&dir));

    // The first client starts the fill, takes 64 KiB and leaves.
    let mut leaver = Raw::connect(edge.addr).await;
    leaver.send(get("/big.ts").as_bytes()).await;
    while leaver.buffer.len() < 64 * 1024 {
        assert!(leaver.fill().await, "the first client got no body");
    }
    drop(leaver);

    // A reader at 1 KB/s with a small receive window, so the edge's writes to it block.
    let slow = SlowReader::start(edge.addr, "/big.ts", 4096).await;

    // Meanwhile other clients get the whole object (stored whole although its first client left).
    let c = client();
    for round in 0..3 {
        let response = c.get(edge.url("/big.ts")).send().await.expect("a concurrent client is answered");
        assert_eq!(response.status(), 200);
        let cache = response.headers().get("x-cache").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let body = response.bytes().await.expect("the whole body");
        assert!(body.as_ref() == pattern(SIZE).as_slice(), "round {round}: a damaged body ({} bytes)", body.len());
        if round > 0 {
            assert_eq!(cache, "HIT", "round {round}");
        }
    }
    assert_serves_clean(&edge).await;
    assert!(eventually(Duration::from_secs(3), || async { slow.read() > 0 }).await, "the slow reader got nothing");
    assert!(!slow.ended(), "the slow reader was cut off");
    drop(slow);
    assert_serves_clean(&edge).await;
}

/// A client that asks for `path` and then reads 256 bytes every 250 ms (1 KB/s) through a receive
/// buffer of `receive_buffer` bytes, so that the edge's writes to it block. It stops when dropped.
struct SlowReader {
    read: Arc<AtomicUsize>,
    ended: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
    // Kept open: a client that shuts its side may be answered differently.
    _writer: OwnedWriteHalf,
}

impl SlowReader {
    async fn start(addr: SocketAddr, path: &str, receive_buffer: u32) -> SlowReader {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(receive_buffer).expect("receive buffer");
        let mut raw = Raw::from(socket.connect(addr).await.expect("connect"));
        raw.send(get(path).as_bytes()).await;
        let (read, ended) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
        let (counted, finished) = (read.clone(), ended.clone());
        let writer = raw.take_writer();
        let mut reader = raw.reader;
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            let mut chunk = [0u8; 256];
            loop {
                tick.tick().await;
                match reader.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => counted.fetch_add(n, Ordering::SeqCst),
                };
            }
            finished.store(true, Ordering::SeqCst);
        });
        SlowReader { read, ended, task, _writer: writer }
    }

    fn read(&self) -> usize {
        self.read.load(Ordering::SeqCst)
    }

    /// Whether the client saw the end of the connection. The edge's close reaches a slow reader only
    /// after the bytes already in the sockets: [`open_connections`] says sooner whether it was cut.
    fn ended(&self) -> bool {
        self.ended.load(Ordering::SeqCst)
    }
}

impl Drop for SlowReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn open_connections(edge: &Edge) -> Option<f64> {
    metric(edge, "eddy_edge_open_connections").await
}

const BIG_SIZE: usize = 16 << 20;

/// A directory origin with `clean.ts` and a `big.ts` larger than what the edge's and a client's
/// socket buffers hold together (a few MiB on loopback), so that a client that stops reading really
/// leaves the edge with bytes it cannot send.
fn big_origin() -> tempfile::TempDir {
    let dir = directory_origin();
    std::fs::write(dir.path().join("big.ts"), pattern(BIG_SIZE)).expect("write big.ts");
    dir
}

/// Reads (and drops) what the edge sent until the connection ends; the bytes read.
async fn drain(mut raw: Raw) -> usize {
    let mut total = raw.buffer.len();
    let mut chunk = vec![0u8; 256 * 1024];
    loop {
        match tokio::time::timeout(READ_LIMIT, raw.reader.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return total,
            Ok(Ok(n)) => total += n,
            Err(_) => panic!("the connection neither ended nor sent anything within {READ_LIMIT:?}"),
        }
    }
}

/// The defect: with no send timeout, clients that asked for a large object and never read kept their
/// connections for ever; `max_connections` of them held every slot, and every viewer got 503.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_is_cut_after_send_timeout_and_frees_its_slot() {
    const MAX: usize = 4;
    let dir = big_origin();
    let edge = edge_with(&format!("send_timeout = \"1s\"\nmax_connections = {MAX}\n"), dir_str(&dir));

    let requested = Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..MAX {
        let mut raw = Raw::connect(edge.addr).await;
        raw.send(get("/big.ts").as_bytes()).await;
        stalled.push(raw);
    }
    assert!(
        eventually(Duration::from_secs(5), || async { open_connections(&edge).await == Some(MAX as f64) }).await,
        "the {MAX} clients do not hold the {MAX} slots"
    );

    let freed = eventually(Duration::from_secs(10), || async { open_connections(&edge).await == Some(0.0) }).await;
    let elapsed = requested.elapsed();
    assert!(freed, "clients that read nothing still hold their slots 10 s in (send_timeout = 1s)");
    assert!(elapsed >= Duration::from_millis(900), "cut after {elapsed:?}, before send_timeout");

    // Each client gets what the sockets held at the close, then the end: never the whole object.
    for (i, raw) in stalled.into_iter().enumerate() {
        let received = drain(raw).await;
        assert!(received < BIG_SIZE, "client {i} got {received} bytes: it was not cut");
    }

    // The slots are free: a normal client gets the whole object.
    let response = client().get(edge.url("/big.ts")).send().await.expect("an answer");
    assert_eq!(response.status(), 200);
    let body = response.bytes().await.expect("the whole body");
    assert!(body.as_ref() == pattern(BIG_SIZE).as_slice(), "a damaged body ({} bytes)", body.len());
    assert_serves_clean(&edge).await;
}

/// An HTTP/2 request from a client that opens its flow-control windows wide (so the edge writes until
/// the socket is full) and then reads nothing, written by hand: no HTTP/2 client library stops reading.
fn http2_request_never_read(path: &str) -> Vec<u8> {
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let length = u32::try_from(payload.len()).expect("a small frame").to_be_bytes();
        let mut frame = vec![length[1], length[2], length[3], kind, flags];
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }
    const MAX_WINDOW: u32 = (1 << 31) - 1;
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS: SETTINGS_INITIAL_WINDOW_SIZE (0x4) for every stream, then the connection's window.
    let mut settings = vec![0x00, 0x04];
    settings.extend_from_slice(&MAX_WINDOW.to_be_bytes());
    bytes.extend(frame(0x4, 0, 0, &settings));
    bytes.extend(frame(0x8, 0, 0, &(MAX_WINDOW - 65_535).to_be_bytes()));
    // HEADERS on stream 1, END_STREAM | END_HEADERS, in HPACK: :method GET and :scheme http from the
    // static table, :path and :authority as literals with an indexed name (RFC 7541 §6.2.2).
    let mut block = vec![0x82, 0x86];
    for (index, value) in [(0x04u8, path), (0x01, "127.0.0.1")] {
        block.push(index);
        block.push(u8::try_from(value.len()).expect("a short value"));
        block.extend_from_slice(value.as_bytes());
    }
    bytes.extend(frame(0x1, 0x1 | 0x4, 1, &block));
    bytes
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http2_client_that_stops_reading_is_cut_after_send_timeout_too() {
    let dir = big_origin();
    // :authority must be a listed server name (see the HTTP/2 test above).
    let edge = edge_with("send_timeout = \"1s\"\nserver_names = [\"127.0.0.1\"]\n", dir_str(&dir));
    let requested = Instant::now();
    let mut raw = Raw::connect(edge.addr).await;
    raw.send(&http2_request_never_read("/big.ts")).await;
    assert!(
        eventually(Duration::from_secs(5), || async { open_connections(&edge).await == Some(1.0) }).await,
        "the HTTP/2 connection was not counted"
    );
    let freed = eventually(Duration::from_secs(10), || async { open_connections(&edge).await == Some(0.0) }).await;
    let elapsed = requested.elapsed();
    assert!(freed, "an HTTP/2 client that reads nothing still holds its slot 10 s in (send_timeout = 1s)");
    assert!(elapsed >= Duration::from_millis(900), "cut after {elapsed:?}, before send_timeout");
    let received = drain(raw).await;
    assert!(received < BIG_SIZE, "the HTTP/2 client got {received} bytes: it was not cut");

    let h2 = reqwest::Client::builder().no_proxy().http2_prior_knowledge().timeout(READ_LIMIT).build().expect("client");
    let response = h2.get(edge.url("/big.ts")).send().await.expect("an h2 answer");
    assert_eq!((response.version(), response.status()), (reqwest::Version::HTTP_2, reqwest::StatusCode::OK));
    let body = response.bytes().await.expect("the whole body");
    assert!(body.as_ref() == pattern(BIG_SIZE).as_slice(), "a damaged body ({} bytes)", body.len());
}

/// The other side of send_timeout: a client that reads slowly but steadily is never cut, even when
/// send_timeout is much shorter than its download.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_reader_that_keeps_reading_outlives_send_timeout() {
    let dir = big_origin();
    let edge = edge_with("send_timeout = \"1s\"\n", dir_str(&dir));
    // The smallest receive buffer the kernel allows (about 2 KiB), so that the client's kernel takes
    // bytes within every second at 1 KB/s (measured: 576 to 1,728 bytes a second). With a larger buffer
    // it takes them in bursts further apart (4 KiB: one every 8 s or so; loopback's default: about a
    // minute), and until a burst comes no edge can tell the client from one that stopped reading.
    let slow = SlowReader::start(edge.addr, "/big.ts", 1).await;
    // Four send_timeouts, watched from the edge's side: its close would reach the client late.
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let watching = Instant::now();
    while watching.elapsed() < Duration::from_secs(4) {
        tick.tick().await;
        let open = open_connections(&edge).await;
        assert_eq!(
            open,
            Some(1.0),
            "the slow reader was cut after {:?} ({} bytes read)",
            watching.elapsed(),
            slow.read()
        );
    }
    assert!(slow.read() >= 3000, "the slow reader read only {} bytes in 4 s", slow.read());
    assert!(!slow.ended(), "the slow reader saw its connection end");
}

/// Sends `request` while reading, so that an early answer and close do not block the writer.
async fn answer_to(edge: &Edge, request: Vec<u8>) -> String {
    let mut raw = Raw::connect(edge.addr).await;
    let mut writer = raw.take_writer();
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(&request).await;
        writer
    });
    while raw.fill().await {}
    let _ = writing.await;
    String::from_utf8_lossy(&raw.buffer).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn header_flood_gets_431_and_the_edge_keeps_serving() {
    let dir = directory_origin();
    let edge = edge_with("", dir_str(&dir));
    let with_headers = |headers: String| format!("GET /clean.ts HTTP/1.1\r\nHost: edge\r\n{headers}\r\n").into_bytes();

    let ten_thousand: String = (0..10_000).map(|i| format!("X-Flood-{i}: v\r\n")).collect();
    let answer = answer_to(&edge, with_headers(ten_thousand)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "10,000 headers: {answer}");

    let many_small: String = (0..150).map(|i| format!("X-Many-{i}: v\r\n")).collect();
    let answer = answer_to(&edge, with_headers(many_small)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "150 headers: {answer}");

    let one_large = format!("X-Large: {}\r\n", "a".repeat(100 * 1024));
    let answer = answer_to(&edge, with_headers(one_large)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "a 100 KiB header: {answer}");

    assert_serves_clean(&edge).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_range_with_a_thousand_parts_is_answered_whole() {
    const SIZE: usize = 10_000;
    let dir = directory_origin();
    std::fs::write(dir.path().join("seg.ts"), pattern(SIZE)).expect("write seg.ts");
    let edge = edge_with("", dir_str(&dir));
    let parts: Vec<String> = (0..1000).map(|i| format!("{}-{}", i * 3, i * 3 + 1)).collect();
    let range = format!("bytes={}", parts.join(","));
    let c = client();
    // Twice: once on the miss path, once from the cache.
    for round in 0..2 {
        let response = c.get(edge.url("/seg.ts")).header("range", &range).send().await.expect("an answer");
        assert_eq!(response.status(), 200, "round {round}: several ranges are answered with the whole object");
        assert_eq!(response.bytes().await.expect("body").as_ref(), pattern(SIZE).as_slice(), "round {round}");
    }
    let single = c.get(edge.url("/seg.ts")).header("range", "bytes=0-9").send().await.expect("an answer");
    assert_eq!(single.status(), 206);
    assert_eq!(single.bytes().await.expect("body").as_ref(), &pattern(SIZE)[..10]);
    assert_serves_clean(&edge).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_streams_share_one_connection_which_is_closed_when_idle() {
    let dir = directory_origin();
    // HTTP/2 requests carry their authority (:authority), which the route phase treats like an
    // absolute-form target: it must be a listed server name.
    let edge = edge_with("keepalive_timeout = \"1s\"\nserver_names = [\"127.0.0.1\"]\n", dir_str(&dir));
    let h2 = reqwest::Client::builder().no_proxy().http2_prior_knowledge().timeout(READ_LIMIT).build().expect("client");
    let requests = (0..20).map(|_| async {
        let response = h2.get(edge.url("/clean.ts")).send().await.expect("an h2 answer");
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        assert_eq!(response.status(), 200);
        response.text().await.expect("body")
    });
    for body in futures::future::join_all(requests).await {
        assert_eq!(body, CLEAN_BODY);
    }
    assert_eq!(metric(&edge, "eddy_edge_open_connections").await, Some(1.0), "20 streams on one connection");
    // With no stream open for keepalive_timeout, the edge closes the connection (GOAWAY).
    let closed =
        eventually(Duration::from_secs(4), || async { metric(&edge, "eddy_edge_open_connections").await == Some(0.0) })
            .await;
    assert!(closed, "the idle HTTP/2 connection is still open 4 s in (keepalive_timeout = 1s)");
    assert_serves_clean(&edge).await;
}
