//! Low-Latency HLS blocking playlist reloads (draft-pantos-hls-rfc8216bis §6.2.5.2) through the real
//! edge: a request with `_HLS_msn` is keyed by it, waits for the origin's answer however long the origin
//! holds it (up to `origin.blocking_reload_timeout`), is never answered with a stale copy, and identical
//! ones coalesce into one origin request. The pure decisions have unit tests in
//! `edge/src/cache/policy.rs`.
//!
//! The origin here is a scripted LL-HLS origin: it holds each `_HLS_msn` request until the test
//! publishes that media sequence number, and answers 400 at once to one more than two segments ahead,
//! as the draft says. Tests synchronise on what the origin and the edge report (a request held, a count
//! in `/stats`), never on sleeps; the one sleep below is the length of an origin's hold, the scenario
//! itself.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eddy_tests::{bin_path, run_to_end, start_edge, Edge};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The scripted LL-HLS origin. `/live/index.m3u8` is the media playlist (a window of three segments
/// ending at the last published media sequence number), `/live/segN.m4s` its segments, and
/// `/live/stall.m3u8` a playlist that never comes.
struct LlHlsOrigin {
    addr: SocketAddr,
    /// The last media sequence number the "packager" has published.
    published: Arc<watch::Sender<u64>>,
    /// Blocking requests that were held (counted when they arrive).
    held: Arc<watch::Sender<usize>>,
    /// Every request target, in arrival order.
    requests: Arc<Mutex<Vec<String>>>,
    /// While set, every request is answered by closing the connection.
    broken: Arc<AtomicBool>,
}

impl LlHlsOrigin {
    /// `cache_control` (and `age`, when not 0) go on every playlist answer.
    async fn start(cache_control: &'static str, age: u64, published: u64) -> LlHlsOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().expect("origin addr");
        let origin = LlHlsOrigin {
            addr,
            published: Arc::new(watch::channel(published).0),
            held: Arc::new(watch::channel(0).0),
            requests: Arc::default(),
            broken: Arc::default(),
        };
        let (published, held, requests, broken) =
            (origin.published.clone(), origin.held.clone(), origin.requests.clone(), origin.broken.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (published, held, requests, broken) =
                    (published.clone(), held.clone(), requests.clone(), broken.clone());
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buffer.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buffer).into_owned();
                    let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    requests.lock().expect("requests").push(target.clone());
                    if broken.load(Ordering::SeqCst) {
                        return;
                    }
                    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
                    let msn = query
                        .split('&')
                        .find_map(|pair| pair.strip_prefix("_HLS_msn="))
                        .and_then(|v| v.parse::<u64>().ok());
                    let answer = match path {
                        "/live/index.m3u8" => {
                            if let Some(msn) = msn {
                                if msn > *published.borrow() + 2 {
                                    // §6.2.5.2: more than two segments ahead is answered 400 at once.
                                    let reply = "HTTP/1.1 400 Bad Request\r\nCache-Control: no-store\r\n\
                                                 Content-Length: 9\r\nConnection: close\r\n\r\ntoo far\r\n";
                                    let _ = stream.write_all(reply.as_bytes()).await;
                                    return;
                                }
                                held.send_modify(|n| *n += 1);
                                let _ = published.subscribe().wait_for(|p| *p >= msn).await;
                            }
                            let last = *published.borrow();
                            let age = if age > 0 { format!("Age: {age}\r\n") } else { String::new() };
                            let body = playlist(last);
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.apple.mpegurl\r\n\
                                 Cache-Control: {cache_control}\r\n{age}ETag: \"{last}\"\r\nContent-Length: {}\r\n\
                                 Connection: close\r\n\r\n{body}",
                                body.len()
                            )
                        }
                        "/live/stall.m3u8" => {
                            std::future::pending::<()>().await;
                            return;
                        }
                        segment if segment.starts_with("/live/seg") && segment.ends_with(".m4s") => format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nCache-Control: max-age=60\r\n\
                             Content-Length: {}\r\nConnection: close\r\n\r\n{segment}",
                            segment.len()
                        ),
                        _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
                    };
                    let _ = stream.write_all(answer.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        origin
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The packager publishes segment `msn`: requests held for it (or an earlier one) are answered.
    fn publish(&self, msn: u64) {
        self.published.send_modify(|p| *p = (*p).max(msn));
    }

    /// Requests for exactly this target so far.
    fn count(&self, target: &str) -> usize {
        self.requests.lock().expect("requests").iter().filter(|t| *t == target).count()
    }

    /// Waits until `n` blocking requests have been held, in all.
    async fn until_held(&self, n: usize) {
        let mut held = self.held.subscribe();
        tokio::time::timeout(Duration::from_secs(10), held.wait_for(|h| *h >= n))
            .await
            .unwrap_or_else(|_| panic!("the origin never held {n} blocking requests"))
            .expect("origin running");
    }
}

/// A live media playlist whose last segment is `last` (three segments, a part hint after them).
fn playlist(last: u64) -> String {
    let first = last.saturating_sub(2);
    let mut text = format!(
        "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:1\n\
         #EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.0\n#EXT-X-PART-INF:PART-TARGET=0.5\n\
         #EXT-X-MEDIA-SEQUENCE:{first}\n"
    );
    for n in first..=last {
        text.push_str(&format!("#EXTINF:1.0,\nseg{n}.m4s\n"));
    }
    text.push_str(&format!("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"seg{}.part0.m4s\"\n", last + 1));
    text
}

/// Whether a playlist lists segment `msn`.
fn lists(body: &str, msn: u64) -> bool {
    body.lines().any(|line| line == format!("seg{msn}.m4s"))
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("client")
}

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> String {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
    }
    fn xcache(&self) -> String {
        self.header("x-cache")
    }
}

async fn get_url(url: String) -> Answer {
    let response = client().get(url).send().await.expect("response");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.text().await.expect("body");
    Answer { status, headers, body }
}

async fn get(edge: &Edge, path: &str) -> Answer {
    get_url(edge.url(path)).await
}

async fn stats(edge: &Edge) -> serde_json::Value {
    let body = client().get(edge.admin_url("/stats")).send().await.expect("stats").bytes().await.expect("body");
    serde_json::from_slice(&body).expect("stats json")
}

/// Polls the edge's `/stats` until `condition` holds (a count the edge reports, not a guess at time).
async fn until_stats(edge: &Edge, what: &str, condition: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = stats(edge).await;
        if condition(&now) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: never happened; /stats: {now}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().expect("config");
    file.write_all(text.as_bytes()).expect("write config");
    file
}

/// Prefetch off, unless a test turns it on: its live refreshes would add playlist requests of their own.
const NO_PREFETCH: &str = "[prefetch]\nsegments = 0\nrefresh_live_playlists = false\n";

fn edge_for(origin: &LlHlsOrigin, config: &str) -> (Edge, tempfile::NamedTempFile) {
    let file = config_file(config);
    let edge = start_edge(&["--config", file.path().to_str().expect("utf8"), "--origin", &origin.url()]).expect("edge");
    (edge, file)
}

/// With stale-while-revalidate and stale-if-error as large as they go and every copy stale on arrival,
/// a plain playlist request is answered stale (today's behaviour), and a blocking reload never is: the
/// next `_HLS_msn` waits for its playlist, and a stale copy of the same blocking URL is revalidated
/// before anything is served.
#[tokio::test(flavor = "multi_thread")]
async fn a_blocking_reload_waits_for_its_playlist_and_is_never_answered_stale() {
    // max-age=1 with Age: 10: stored, and stale from the start.
    let origin = LlHlsOrigin::start("max-age=1", 10, 5).await;
    let (edge, _config) =
        edge_for(&origin, &format!("{NO_PREFETCH}[cache]\nstale_while_revalidate = \"1h\"\nstale_if_error = \"1d\"\n"));

    let plain = get(&edge, "/live/index.m3u8").await;
    assert_eq!((plain.status, plain.xcache().as_str()), (200, "MISS"));
    assert!(lists(&plain.body, 5));
    let plain = get(&edge, "/live/index.m3u8").await;
    assert_eq!(plain.xcache(), "STALE", "a plain playlist keeps stale-while-revalidate");
    assert!(lists(&plain.body, 5) && !lists(&plain.body, 6));

    let reload5 = get(&edge, "/live/index.m3u8?_HLS_msn=5").await;
    assert_eq!((reload5.status, reload5.xcache().as_str()), (200, "MISS"));
    assert!(lists(&reload5.body, 5));

    // The next segment: held by the origin until it exists, however stale-servable the cache is.
    let waiting = tokio::spawn(get_url(edge.url("/live/index.m3u8?_HLS_msn=6&_HLS_part=0")));
    origin.until_held(2).await;
    until_stats(&edge, "the reload waits", |s| s["blocking_reloads_waiting"] == 1).await;
    assert!(!waiting.is_finished(), "answered before the playlist had segment 6");
    origin.publish(6);
    let reload6 = tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("answered").expect("task");
    assert_eq!((reload6.status, reload6.xcache().as_str()), (200, "MISS"), "{reload6:?}");
    assert!(lists(&reload6.body, 6), "not the playlist with segment 6: {}", reload6.body);
    assert_eq!(origin.count("/live/index.m3u8?_HLS_msn=6&_HLS_part=0"), 1);

    // The stale copy of the same blocking URL: revalidated, not served in the background's shadow.
    let again = get(&edge, "/live/index.m3u8?_HLS_msn=5").await;
    assert_eq!(again.status, 200);
    assert_ne!(again.xcache(), "STALE", "a blocking reload answered stale: {again:?}");
    assert!(again.header("cache-status").contains("fwd=stale"), "{}", again.header("cache-status"));
    assert!(lists(&again.body, 6), "the origin's current playlist: {}", again.body);
    assert_eq!(origin.count("/live/index.m3u8?_HLS_msn=5"), 2);
    assert_eq!(stats(&edge).await["blocking_reloads_waiting"], 0);
}

/// stale-if-error covers a plain playlist when the origin fails, never a blocking reload: its client
/// gets the error (and can retry or switch), not an old playlist passed off as the one it waited for.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_origin_gives_a_blocking_reload_the_error_not_a_stale_copy() {
    let origin = LlHlsOrigin::start("max-age=1", 10, 5).await;
    let (edge, _config) = edge_for(&origin, &format!("{NO_PREFETCH}[cache]\nstale_if_error = \"1d\"\n"));
    assert!(lists(&get(&edge, "/live/index.m3u8").await.body, 5));
    assert!(lists(&get(&edge, "/live/index.m3u8?_HLS_msn=5").await.body, 5));
    origin.broken.store(true, Ordering::SeqCst);

    let plain = get(&edge, "/live/index.m3u8").await;
    assert_eq!((plain.status, plain.xcache().as_str()), (200, "STALE"), "{plain:?}");
    assert!(plain.header("cache-status").contains("detail=stale-if-error"));

    let reload = get(&edge, "/live/index.m3u8?_HLS_msn=5").await;
    assert_eq!(reload.status, 502, "{reload:?}");
    assert!(!reload.body.contains("#EXTM3U"), "a stale playlist: {}", reload.body);
    assert!(origin.count("/live/index.m3u8?_HLS_msn=5") >= 2, "the origin was asked");
}

/// K identical blocking reloads held by the origin at once: one origin request, one playlist for all;
/// the answer is then a hit, under a key that keeps `_HLS_msn` and `_HLS_part` and still leaves out the
/// parameters the operator ignores.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_identical_blocking_reloads_make_one_origin_request() {
    const K: usize = 8;
    let origin = LlHlsOrigin::start("max-age=6", 0, 6).await;
    let (edge, _config) = edge_for(&origin, &format!("{NO_PREFETCH}[cache]\nignore_query_params = [\"token\"]\n"));
    let target = "/live/index.m3u8?_HLS_msn=7&_HLS_part=0&token=a";
    let waiting: Vec<_> = (0..K).map(|_| tokio::spawn(get_url(edge.url(target)))).collect();
    // Every one of them is waiting at the edge before the playlist changes.
    until_stats(&edge, "all K wait", |s| s["blocking_reloads_waiting"] == K).await;
    origin.until_held(1).await;
    assert_eq!(origin.count(target), 1);
    origin.publish(7);
    let mut answers = Vec::new();
    for task in waiting {
        answers.push(tokio::time::timeout(Duration::from_secs(10), task).await.expect("answered").expect("task"));
    }
    assert!(answers.iter().all(|a| a.status == 200 && lists(&a.body, 7)), "{answers:?}");
    assert!(answers.iter().all(|a| a.body == answers[0].body), "one playlist for all");
    let collapsed = answers.iter().filter(|a| a.header("cache-status").contains("collapsed")).count();
    assert_eq!(collapsed, K - 1, "{answers:?}");
    assert_eq!(origin.count(target), 1, "one origin request for K clients");

    // A fresh copy of the same blocking URL is served: its answer cannot change. Another viewer's
    // ignored token shares it.
    let hit = get(&edge, "/live/index.m3u8?_HLS_msn=7&_HLS_part=0&token=b").await;
    assert_eq!((hit.status, hit.xcache().as_str()), (200, "HIT"));
    assert_eq!(hit.body, answers[0].body);
    // The next media sequence number is another playlist, waited for in its turn.
    let next = tokio::spawn(get_url(edge.url("/live/index.m3u8?_HLS_msn=8&_HLS_part=0&token=a")));
    origin.until_held(2).await;
    assert!(!next.is_finished());
    origin.publish(8);
    assert!(lists(&next.await.expect("task").body, 8));
    assert_eq!(origin.requests.lock().expect("requests").len(), 2);

    // A plain playlist request keeps today's behaviour: a miss, then a hit.
    assert_eq!(get(&edge, "/live/index.m3u8").await.xcache(), "MISS");
    assert_eq!(get(&edge, "/live/index.m3u8").await.xcache(), "HIT");
}

/// The origin may hold a blocking reload past `origin.first_byte_timeout` (which still cuts any other
/// request), up to `origin.blocking_reload_timeout`; past that the client gets a 504, and the key is
/// free: the next request reaches the origin.
#[tokio::test(flavor = "multi_thread")]
async fn a_blocking_reload_has_its_own_timeout_and_does_not_wedge_its_key() {
    let origin = LlHlsOrigin::start("max-age=1", 0, 5).await;
    let (edge, _config) = edge_for(
        &origin,
        &format!(
            "{NO_PREFETCH}[origin]\nfirst_byte_timeout = \"300ms\"\ntotal_timeout = \"2s\"\n\
             blocking_reload_timeout = \"2s\"\n"
        ),
    );
    // An ordinary request the origin never answers: cut at the first-byte timeout.
    let started = Instant::now();
    let stall = get(&edge, "/live/stall.m3u8").await;
    assert_eq!(stall.status, 504, "{stall:?}");
    assert!(started.elapsed() < Duration::from_millis(1500), "{:?}", started.elapsed());

    // Held three first-byte timeouts long, then answered.
    let started = Instant::now();
    let waiting = tokio::spawn(get_url(edge.url("/live/index.m3u8?_HLS_msn=6")));
    origin.until_held(1).await;
    // How long the origin holds the request: the scenario, not a synchronisation.
    tokio::time::sleep(Duration::from_millis(900)).await;
    origin.publish(6);
    let answer = tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("answered").expect("task");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(lists(&answer.body, 6));
    assert!(started.elapsed() >= Duration::from_millis(900));

    // Never answered: 504 once blocking_reload_timeout has passed.
    let target = "/live/index.m3u8?_HLS_msn=8";
    let started = Instant::now();
    let timed_out = get(&edge, target).await;
    let took = started.elapsed();
    assert_eq!(timed_out.status, 504, "{timed_out:?}");
    assert!(timed_out.body.contains("timed out"), "{}", timed_out.body);
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(5), "504 after {took:?}");
    assert_eq!(origin.count(target), 1);
    assert_eq!(stats(&edge).await["blocking_reloads_waiting"], 0);

    // The key is not wedged: the next request for it reaches the origin, and gets its playlist.
    origin.publish(8);
    let again = get(&edge, target).await;
    assert_eq!(again.status, 200, "{again:?}");
    assert!(lists(&again.body, 8));
    assert_eq!(origin.count(target), 2);
}

/// Delivery directives that cannot mean anything are answered 400 by the edge and never reach the
/// origin; well-formed ones, however far ahead, are the origin's to judge.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_directives_are_refused_and_far_ahead_ones_left_to_the_origin() {
    let origin = LlHlsOrigin::start("max-age=1", 0, 5).await;
    let (edge, _config) = edge_for(&origin, NO_PREFETCH);
    for query in
        ["_HLS_msn=abc", "_HLS_msn=-1", "_HLS_msn=99999999999999999999", "_HLS_part=1", "_HLS_msn=6&_HLS_msn=7"]
    {
        let answer = get(&edge, &format!("/live/index.m3u8?{query}")).await;
        assert_eq!(answer.status, 400, "{query}: {answer:?}");
        assert_eq!(answer.header("cache-control"), "no-store", "{query}");
        assert!(answer.body.contains("delivery directive"), "{query}: {}", answer.body);
    }
    assert_eq!(origin.requests.lock().expect("requests").len(), 0, "a malformed directive reached the origin");

    let far = get(&edge, "/live/index.m3u8?_HLS_msn=1000000").await;
    assert_eq!(far.status, 400, "the origin's own answer: {far:?}");
    assert_eq!(origin.count("/live/index.m3u8?_HLS_msn=1000000"), 1);
    // A delta update request without _HLS_msn does not block.
    let delta = get(&edge, "/live/index.m3u8?_HLS_skip=YES").await;
    assert_eq!(delta.status, 200);
}

/// An operator cannot leave a delivery directive out of the cache key: such a config is refused at load,
/// naming the key.
#[test]
fn ignoring_a_delivery_directive_is_refused_at_load() {
    let file = config_file("[cache]\nignore_query_params = [\"token\", \"_HLS_msn\"]\n");
    let mut command = std::process::Command::new(bin_path("eddy-edge"));
    command.arg("check-config").arg(file.path());
    let output = run_to_end(command, Duration::from_secs(20)).expect("check-config ran");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "accepted: {stderr}");
    assert!(stderr.contains("cache.ignore_query_params[1]") && stderr.contains("_HLS_msn"), "{stderr}");
}

/// Prefetch reads the segments a blocking answer lists (a viewer of segment 4 gets 5 prefetched), but
/// never refreshes a blocking URL (its answer cannot change, and its viewers have moved on to the next
/// one): the plain playlist's live refresher, the positive control, refreshes twice meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn prefetch_learns_from_a_blocking_answer_but_never_refreshes_it() {
    let origin = LlHlsOrigin::start("max-age=1", 0, 5).await;
    let (edge, _config) = edge_for(&origin, "[prefetch]\nsegments = 1\nrefresh_live_playlists = true\n");
    let blocking = "/live/index.m3u8?_HLS_msn=5";
    assert_eq!(get(&edge, blocking).await.status, 200);
    assert_eq!(get(&edge, "/live/index.m3u8").await.status, 200);
    until_stats(&edge, "both playlists read", |s| s["prefetch"]["playlists_read"] == 2).await;

    assert_eq!(get(&edge, "/live/seg4.m4s").await.status, 200);
    until_stats(&edge, "segment 5 prefetched", |s| s["prefetch"]["completed"] == 1).await;
    assert_eq!(get(&edge, "/live/seg5.m4s").await.xcache(), "HIT");
    assert_eq!(origin.count("/live/seg5.m4s"), 1);

    // A viewer of the plain playlist keeps it watched while its refresher works (each copy is fresh
    // for 1 s and refreshed a quarter of a target duration before it runs out).
    let refreshes = "eddy_edge_prefetch_started_total{kind=\"playlist\"} 2";
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = client().get(edge.admin_url("/metrics")).send().await.expect("metrics");
        if metrics.text().await.expect("text").contains(refreshes) {
            break;
        }
        assert!(Instant::now() < deadline, "the plain playlist was not refreshed twice");
        get(&edge, "/live/index.m3u8").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A refresher of the blocking URL would have run as often: it was read first.
    assert_eq!(origin.count(blocking), 1, "{:?}", origin.requests.lock().expect("requests"));
}

/// Promise: memory and origin connections bounded by config. Each blocking reload fill keeps an origin
/// connection for as long as the origin holds it; at most `origin.max_blocking_reloads` are under way.
/// A distinct one past the bound is answered 503 with Retry-After at once (never stored), while one
/// identical to a held request still joins it; once the held ones are answered, new ones go through.
#[tokio::test(flavor = "multi_thread")]
async fn blocking_reloads_past_the_bound_are_refused_and_identical_ones_still_coalesce() {
    let origin = LlHlsOrigin::start("max-age=6", 0, 6).await;
    let (edge, _config) = edge_for(&origin, &format!("{NO_PREFETCH}[origin]\nmax_blocking_reloads = 2\n"));
    let held: Vec<_> =
        (1..=2).map(|i| tokio::spawn(get_url(edge.url(&format!("/live/index.m3u8?_HLS_msn=7&v={i}"))))).collect();
    origin.until_held(2).await;
    let refused = get(&edge, "/live/index.m3u8?_HLS_msn=7&v=3").await;
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.header("retry-after"), "1");
    assert_eq!(refused.header("cache-control"), "no-store");
    assert_eq!(origin.count("/live/index.m3u8?_HLS_msn=7&v=3"), 0, "never sent to the origin");
    // The same URL as a held one: it shares that fill, which needs no second slot.
    let follower = tokio::spawn(get_url(edge.url("/live/index.m3u8?_HLS_msn=7&v=1")));
    until_stats(&edge, "the follower waits", |s| s["blocking_reloads_waiting"] == 3).await;
    origin.publish(7);
    for task in held.into_iter().chain([follower]) {
        let answer = tokio::time::timeout(Duration::from_secs(10), task).await.expect("answered").expect("task");
        assert!(answer.status == 200 && lists(&answer.body, 7), "{answer:?}");
    }
    // The slots are free again: the refused URL goes through now, and was not stored as a 503.
    let retried = get(&edge, "/live/index.m3u8?_HLS_msn=7&v=3").await;
    assert!(retried.status == 200 && lists(&retried.body, 7), "{retried:?}");
    let metrics = client().get(edge.admin_url("/metrics")).send().await.expect("metrics").text().await.expect("body");
    assert!(metrics.contains("eddy_edge_blocking_reloads_refused_total 1\n"), "{metrics}");
}

/// A blocking reload whose clients have all gone ends at once, and frees its slot: a client cannot
/// pile up held origin requests by asking and hanging up.
#[tokio::test(flavor = "multi_thread")]
async fn a_blocking_reload_every_client_left_frees_its_slot() {
    let origin = LlHlsOrigin::start("max-age=6", 0, 6).await;
    let (edge, _config) = edge_for(&origin, &format!("{NO_PREFETCH}[origin]\nmax_blocking_reloads = 1\n"));
    let gone = tokio::spawn(get_url(edge.url("/live/index.m3u8?_HLS_msn=7&v=1")));
    origin.until_held(1).await;
    gone.abort();
    until_stats(&edge, "the client is gone", |s| s["blocking_reloads_waiting"] == 0 && s["in_flight"] == 0).await;
    let next = tokio::spawn(get_url(edge.url("/live/index.m3u8?_HLS_msn=7&v=2")));
    origin.until_held(2).await;
    origin.publish(7);
    let answer = tokio::time::timeout(Duration::from_secs(10), next).await.expect("answered").expect("task");
    assert!(answer.status == 200 && lists(&answer.body, 7), "{answer:?}");
}

/// A live LL-HLS media playlist as `eddy-package --live --low-latency` writes it, segments 0..=`last`
/// with two 1 s parts each.
fn dir_playlist(last: u64) -> String {
    let mut text = String::from(
        "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:2\n#EXT-X-PART-INF:PART-TARGET=1.0\n\
         #EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=3.0\n#EXT-X-MEDIA-SEQUENCE:0\n",
    );
    for n in 0..=last {
        for part in 0..2 {
            text.push_str(&format!("#EXT-X-PART:DURATION=1.0,URI=\"seg{n}.part{part}.m4s\",INDEPENDENT=YES\n"));
        }
        text.push_str(&format!("#EXTINF:2.0,\nseg{n}.m4s\n"));
    }
    text
}

/// Promise: no key ever wedged, and memory and CPU bounded by config, not by a client. Blocking reloads
/// that a client makes distinct with any extra query parameter defeat coalescing, so a directory origin
/// holds each one; they must share one watcher of the playlist file (one `stat` per poll interval),
/// not poll it once each. Before, 300 such holds were 30,000 `stat` calls a second; at the connection
/// limit, a million.
#[tokio::test(flavor = "multi_thread")]
async fn distinct_blocking_reloads_on_one_directory_playlist_share_one_watcher() {
    const K: usize = 300;
    let folder = tempfile::tempdir().expect("tempdir");
    let publish = |last: u64| {
        let staging = folder.path().join(".index.m3u8.tmp");
        std::fs::write(&staging, dir_playlist(last)).expect("write");
        std::fs::rename(&staging, folder.path().join("index.m3u8")).expect("rename");
    };
    publish(3);
    let config = config_file(NO_PREFETCH);
    let edge = start_edge(&[
        "--config",
        config.path().to_str().expect("utf8"),
        "--origin",
        folder.path().to_str().expect("utf8"),
    ])
    .expect("edge");
    // One client (a new one per request costs more than the test's patience); each request still has
    // a connection of its own, since HTTP/1.1 sends one request at a time on each.
    let shared = client();
    let waiting: Vec<_> = (0..K)
        .map(|i| {
            let request = shared.get(edge.url(&format!("/index.m3u8?_HLS_msn=4&x={i}")));
            tokio::spawn(async move {
                let response = request.send().await.expect("response");
                let status = response.status().as_u16();
                (status, response.text().await.expect("body"))
            })
        })
        .collect();
    until_stats(&edge, "all K wait", |s| s["blocking_reloads_waiting"] == K).await;
    let held = stats(&edge).await;
    assert_eq!(held["playlist_watchers"], 1, "K holds on one file, one watcher: {held}");

    publish(4);
    for task in waiting {
        let (status, body) =
            tokio::time::timeout(Duration::from_secs(10), task).await.expect("answered").expect("task");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\nseg4.m4s\n"), "{body}");
    }
    // The watcher stops with the last hold, and the metric says so.
    until_stats(&edge, "the watcher stops", |s| s["playlist_watchers"] == 0).await;
    let metrics = client().get(edge.admin_url("/metrics")).send().await.expect("metrics").text().await.expect("body");
    assert!(metrics.contains("eddy_edge_playlist_watchers 0\n"), "{metrics}");
    let polls = stats(&edge).await["playlist_polls"].as_u64().unwrap_or(0);
    eprintln!("{K} distinct holds: {polls} looks at the playlist file in all");
}
