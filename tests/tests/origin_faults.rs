//! End-to-end tests of the edge's origin side when origins misbehave or requests try to misuse them:
//! origins that close idle keep-alive connections, failover of non-idempotent requests, paths that
//! try to leave an origin's base path, and hidden files in a directory origin. The real `eddy-edge`
//! binary runs on 127.0.0.1 port 0 in front of origins on 127.0.0.1 port 0.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eddy_tests::start_edge;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wiremock::matchers::{any, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A client that opens a new connection for every request, so that the test client itself never
/// meets a connection the edge is closing: only the edge's origin side is under test.
fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().pool_max_idle_per_host(0).build().expect("client")
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().expect("temp config");
    file.write_all(text.as_bytes()).expect("write config");
    file
}

/// A small, seedable xorshift generator: random enough to spread timings, and no extra dependency.
struct Rng(AtomicU64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(AtomicU64::new(seed.max(1)))
    }

    fn next(&self) -> u64 {
        let mut x = self.0.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0.store(x, Ordering::Relaxed);
        x
    }

    /// A duration drawn uniformly from `low..high` milliseconds.
    fn millis(&self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.next() % (high - low))
    }
}

/// An HTTP/1.1 keep-alive origin on a raw socket that closes each connection after it has been idle
/// for a random 0.5–1.5 s, the way Node.js (5 s) and many load balancers close idle connections.
///
/// On 127.0.0.1 the origin's FIN reaches the edge within microseconds, so the edge almost never writes a
/// request on a connection that is closing. Across a network the FIN takes half a round trip, and a
/// request the edge writes in the meantime arrives at a closed socket. The origin models a round trip
/// of `FIN_DELAY`: once its idle timer fires it answers nothing more, and closes `FIN_DELAY` later;
/// a request that arrived in that window is lost (the connection closes under it, with a FIN or, half
/// of the time, with a reset).
struct ClosingOrigin {
    addr: SocketAddr,
    /// Requests answered.
    answered: Arc<AtomicUsize>,
    /// Requests that arrived on a connection the origin was closing, and were never answered.
    lost: Arc<AtomicUsize>,
}

const FIN_DELAY: Duration = Duration::from_millis(20);

impl ClosingOrigin {
    async fn start(seed: u64) -> ClosingOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().expect("origin addr");
        let (answered, lost) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (a, l, rng) = (answered.clone(), lost.clone(), Arc::new(Rng::new(seed)));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_until_idle(stream, a.clone(), l.clone(), rng.clone()));
            }
        });
        ClosingOrigin { addr, answered, lost }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn serve_until_idle(mut stream: TcpStream, answered: Arc<AtomicUsize>, lost: Arc<AtomicUsize>, rng: Arc<Rng>) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let idle_limit = rng.millis(500, 1500);
        let head = tokio::time::timeout(idle_limit, async {
            loop {
                if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                    return Some(buffer.drain(..end + 4).collect::<Vec<u8>>());
                }
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        match head {
            Ok(Some(head)) => {
                let text = String::from_utf8_lossy(&head);
                let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
                // `/stale/…` answers are stored but stale at once, so each request refetches them and a
                // failed refetch would be answered from the stale copy (X-Cache: STALE); `/nostore/…`
                // answers are never stored, so a failed fetch would be a 502.
                let cache_control = if path.starts_with("/stale/") { "max-age=0" } else { "no-store" };
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: video/mp2t\r\nCache-Control: {cache_control}\r\n\r\n{path}",
                    path.len()
                );
                if stream.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
                answered.fetch_add(1, Ordering::SeqCst);
            }
            Ok(None) => return,
            Err(_) => {
                // The idle timer fired: the origin closes, and its FIN is on its way for FIN_DELAY.
                tokio::time::sleep(FIN_DELAY).await;
                let arrived = !buffer.is_empty() || matches!(stream.try_read(&mut chunk), Ok(n) if n > 0);
                if arrived {
                    let n = lost.fetch_add(1, Ordering::SeqCst);
                    if n.is_multiple_of(2) {
                        // Closing with unread data, or with linger 0, resets the connection.
                        let _ = stream.set_zero_linger();
                    }
                }
                return;
            }
        }
    }
}

/// Regression test for "sporadic 502s from healthy origins that close idle connections": 2,000
/// requests through the edge to an origin that closes idle connections after 0.5–1.5 s. The requests
/// go in waves of concurrent requests separated by random 0.4–1.6 s gaps: each wave reuses the edge's
/// pooled connections after about one gap of idleness, which is when the origin closes them. Requests
/// spread evenly in time would not do: the pool hands out the most recently used connection first, so
/// under steady traffic reused connections have been idle for milliseconds only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_closing_idle_connections_causes_no_502s_or_stale_copies() {
    const CONCURRENT: usize = 100;
    const WAVES: usize = 20;
    let origin = ClosingOrigin::start(0x5eed_1d1e).await;
    let edge = start_edge(&["--origin", &origin.url()]).expect("edge");
    let c = client();
    let rng = Rng::new(0x0dd_ba11);
    let (mut errors, mut stale, mut failures) = (0usize, 0usize, Vec::new());
    for wave in 0..WAVES {
        let requests = (0..CONCURRENT).map(|k| {
            // Half the clients ask for stored-but-stale objects, half for unstorable ones.
            let path = if k.is_multiple_of(2) { format!("/stale/{k}.ts") } else { format!("/nostore/{k}/{wave}.ts") };
            let (c, url) = (c.clone(), edge.url(&path));
            async move {
                let response = c.get(&url).send().await.map_err(|e| e.to_string())?;
                let status = response.status();
                let x_cache = response.headers().get("x-cache").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                let body = response.bytes().await.map_err(|e| e.to_string())?;
                Ok::<_, String>((path, status, x_cache, body))
            }
        });
        for result in futures::future::join_all(requests).await {
            match result {
                Ok((path, status, x_cache, body)) => {
                    if x_cache == "STALE" {
                        stale += 1;
                    }
                    if status != reqwest::StatusCode::OK || body != path.as_bytes() {
                        errors += 1;
                        failures.push(format!("{path}: {status} {x_cache}"));
                    }
                }
                Err(error) => {
                    errors += 1;
                    failures.push(error);
                }
            }
        }
        tokio::time::sleep(rng.millis(400, 1600)).await;
    }
    let (answered, lost) = (origin.answered.load(Ordering::SeqCst), origin.lost.load(Ordering::SeqCst));
    eprintln!("origin: {answered} requests answered, {lost} lost on closing connections; edge: {errors} errors, {stale} stale");
    failures.truncate(5);
    assert_eq!(
        (errors, stale),
        (0, 0),
        "requests that failed, and stale copies served, out of {}; first failures: {failures:?}",
        CONCURRENT * WAVES
    );
    assert!(
        lost > 0,
        "the origin never closed a connection under a request, so the test did not reach the race it is about"
    );
    assert!(answered >= CONCURRENT * WAVES, "every request was answered by the origin ({answered})");
}

async fn answering(status: u16) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(any()).respond_with(ResponseTemplate::new(status)).mount(&server).await;
    server
}

async fn hits(server: &MockServer) -> usize {
    server.received_requests().await.map(|r| r.len()).unwrap_or(0)
}

/// Regression test for "non-idempotent requests are retried on the next origin": a POST answered with
/// 500 used to reach every origin in turn.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_post_reaches_the_origins_once() {
    let (first, second) = (answering(500).await, answering(500).await);
    let edge = start_edge(&["--origin", &first.uri(), "--origin", &second.uri()]).expect("edge");
    let response = client().post(edge.url("/api/order")).body("item=1").send().await.expect("response");
    assert_eq!(response.status(), reqwest::StatusCode::INTERNAL_SERVER_ERROR, "the origin's answer is returned");
    assert_eq!(hits(&first).await + hits(&second).await, 1, "the POST reached the origins once");
}

/// Sends `target` as written (no client-side normalisation of dot segments) and returns the status
/// code and the whole response.
async fn raw_get(addr: SocketAddr, target: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect to edge");
    let request = format!("GET {target} HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("the edge answers")
        .expect("read");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    (status, text)
}

/// Regression test for "paths escape an HTTP origin's base path": with origin `…/public`,
/// `/../secret.txt` and its encoded forms were fetched from the origin's `/secret.txt`.
#[tokio::test(flavor = "multi_thread")]
async fn a_path_that_leaves_the_base_path_never_reaches_the_origin() {
    let origin = MockServer::start().await;
    Mock::given(path("/secret.txt"))
        .respond_with(ResponseTemplate::new(200).set_body_string("top secret"))
        .with_priority(1)
        .mount(&origin)
        .await;
    Mock::given(any()).respond_with(ResponseTemplate::new(200).set_body_string("segment")).mount(&origin).await;
    let edge = start_edge(&["--origin", &format!("{}/public", origin.uri())]).expect("edge");
    for target in ["/../secret.txt", "/%2e%2e/secret.txt", "/%2E%2e/secret.txt", "/a/..%2f..%2fsecret.txt"] {
        let (status, text) = raw_get(edge.addr, target).await;
        assert!((400..600).contains(&status), "{target}: refused, not {status}");
        assert!(!text.contains("top secret"), "{target}: {text}");
    }
    assert_eq!(hits(&origin).await, 0, "no request left the edge");
    let (status, _) = raw_get(edge.addr, "/v1/seg.ts").await;
    assert_eq!(status, 200, "ordinary paths still go through");
    assert_eq!(origin.received_requests().await.expect("recorded")[0].url.path(), "/public/v1/seg.ts");
}

/// Regression test for "the directory origin serves dotfiles": `/.env` was answered with 200.
#[tokio::test(flavor = "multi_thread")]
async fn directory_origin_does_not_serve_dotfiles() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(".env"), "DB_PASSWORD=hunter2\n").expect("write");
    std::fs::create_dir(dir.path().join(".git")).expect("mkdir");
    std::fs::write(dir.path().join(".git/config"), "[remote \"origin\"]\n").expect("write");
    std::fs::write(dir.path().join("index.m3u8"), "#EXTM3U\n").expect("write");
    let folder = dir.path().to_str().expect("utf8");
    let c = client();

    let edge = start_edge(&["--origin", folder]).expect("edge");
    for path in ["/.env", "/.git/config", "/%2eenv", "/%2Egit/config"] {
        let response = c.get(edge.url(path)).send().await.expect("response");
        assert_eq!(response.status(), reqwest::StatusCode::NOT_FOUND, "{path}");
        let body = response.text().await.expect("body");
        assert!(!body.contains("hunter2") && !body.contains("remote"), "{path}: {body}");
    }
    let playlist = c.get(edge.url("/index.m3u8")).send().await.expect("response");
    assert_eq!(playlist.status(), reqwest::StatusCode::OK, "ordinary files are still served");
    drop(edge);

    let config = config_file("[origin]\nserve_dotfiles = true\n");
    let edge = start_edge(&["--config", config.path().to_str().expect("utf8"), "--origin", folder]).expect("edge");
    let env = c.get(edge.url("/.env")).send().await.expect("response");
    assert_eq!(env.status(), reqwest::StatusCode::OK, "served when configured");
    assert_eq!(env.text().await.expect("body"), "DB_PASSWORD=hunter2\n");
    let git = c.get(edge.url("/.git/config")).send().await.expect("response");
    assert_eq!(git.status(), reqwest::StatusCode::OK);
}
