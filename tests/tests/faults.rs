//! The fault campaign: the real edge in front of an origin that misbehaves at the byte level. Each case
//! checks three things: what the client gets, what the cache holds afterwards (nothing corrupt, no key
//! wedged: the next clean request gets the right bytes), and that the edge is still running.
//! RELIABILITY.md lists every case with its expected behaviour and its test.

#[path = "support/scripted_origin.rs"]
mod scripted_origin;

use std::io::Write;
use std::time::Duration;

use eddy_tests::{start_edge, Edge};
use scripted_origin::{pattern, Script, ScriptedOrigin};

const GOOD: &str = "the good object";

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(20)).build().expect("client")
}

fn good() -> Script {
    Script::Whole {
        head: format!("HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: {}\r\n\r\n", GOOD.len()),
        body: GOOD.as_bytes().to_vec(),
    }
}

fn head_200(length: usize) -> String {
    format!("HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: {length}\r\n\r\n")
}

/// Short timeouts, so that stalls and trickles are cut quickly.
const CONFIG: &str = "[origin]\nconnect_timeout = \"500ms\"\nfirst_byte_timeout = \"400ms\"\ntotal_timeout = \"1s\"\n";

struct Setup {
    origin: ScriptedOrigin,
    edge: Edge,
    _config: tempfile::NamedTempFile,
}

async fn setup(scripts: Vec<Script>) -> Setup {
    let origin = ScriptedOrigin::start(scripts).await;
    let mut config = tempfile::Builder::new().suffix(".toml").tempfile().expect("config");
    config.write_all(CONFIG.as_bytes()).expect("write config");
    let edge =
        start_edge(&["--config", config.path().to_str().expect("utf8"), "--origin", &origin.url()]).expect("edge");
    Setup { origin, edge, _config: config }
}

/// What the client got: the status, and the body or the error that ended it.
async fn fetch(url: &str) -> (u16, Result<Vec<u8>, String>) {
    match client().get(url).send().await {
        Err(error) => (0, Err(error.to_string())),
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.bytes().await.map(|b| b.to_vec()).map_err(|e| e.to_string()))
        }
    }
}

async fn in_flight(edge: &Edge) -> u64 {
    let body = client().get(edge.admin_url("/stats")).send().await.expect("stats").bytes().await.expect("body");
    let stats: serde_json::Value = serde_json::from_slice(&body).expect("json");
    stats["in_flight"].as_u64().expect("in_flight")
}

/// After a fault: no flight is left behind, the edge is alive, and the next request gets `expected`
/// with the given X-Cache.
async fn afterwards(setup: &mut Setup, path: &str, expected: &[u8], xcache: &str) {
    no_flight_left(&setup.edge).await;
    let response = client().get(setup.edge.url(path)).send().await.expect("next request");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-cache"], xcache);
    assert_eq!(response.bytes().await.expect("body").as_ref(), expected);
    assert!(setup.edge.process.child.try_wait().expect("wait").is_none(), "the edge exited");
}

/// Waits (boundedly) until the edge has no flight under way.
async fn no_flight_left(edge: &Edge) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while in_flight(edge).await != 0 {
        assert!(tokio::time::Instant::now() < deadline, "a flight was left behind: the key is wedged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The origin's raw answer is served as `expected` and stored as such (the next request is a HIT).
async fn served_whole_and_stored(raw: Vec<u8>, expected: &[u8]) {
    let mut s = setup(vec![Script::Raw(raw), good()]).await;
    let (status, body) = fetch(&s.edge.url("/a.ts")).await;
    assert_eq!(status, 200);
    assert_eq!(body.expect("whole"), expected);
    afterwards(&mut s, "/a.ts", expected, "HIT").await;
}

/// The client must see the answer as broken: a 200 whose body ends short or with an error, or, when
/// the body failed before the edge had flushed the head, a connection closed with no head at all
/// (status 0 here; see RELIABILITY.md). Never a whole-looking body.
fn assert_truncated(outcome: &(u16, Result<Vec<u8>, String>), declared: usize) {
    assert!(matches!(outcome.0, 200 | 0), "status {}", outcome.0);
    match &outcome.1 {
        Err(_) => {}
        Ok(body) => assert!(body.len() < declared, "a broken body was delivered as whole ({} bytes)", body.len()),
    }
}

/// A GET whose connection closes before any response byte is sent once more on a new connection
/// (the origin may have been closing an idle connection); a second reset is a 502.
#[tokio::test(flavor = "multi_thread")]
async fn origin_reset_before_headers_is_retried_once_then_a_502_and_nothing_sticks() {
    let mut s = setup(vec![Script::Raw(Vec::new()), Script::Raw(Vec::new()), good()]).await;
    assert_eq!(fetch(&s.edge.url("/a.ts")).await.0, 502);
    assert_eq!(s.origin.request_count(), 2, "one retry, on a new connection");
    afterwards(&mut s, "/a.ts", GOOD.as_bytes(), "MISS").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn origin_reset_mid_headers_is_retried_once_then_a_502_and_nothing_sticks() {
    let cut = || Script::Raw(b"HTTP/1.1 200 OK\r\nContent-Le".to_vec());
    let mut s = setup(vec![cut(), cut(), good()]).await;
    assert_eq!(fetch(&s.edge.url("/a.ts")).await.0, 502);
    assert_eq!(s.origin.request_count(), 2, "one retry, on a new connection");
    afterwards(&mut s, "/a.ts", GOOD.as_bytes(), "MISS").await;
}

/// One reset before the head, then a good answer: the retry hides the fault from the client.
#[tokio::test(flavor = "multi_thread")]
async fn origin_single_reset_before_headers_is_hidden_by_the_retry() {
    let s = setup(vec![Script::Raw(Vec::new()), good()]).await;
    let (status, body) = fetch(&s.edge.url("/a.ts")).await;
    assert_eq!(status, 200);
    assert_eq!(body.expect("body"), GOOD.as_bytes());
}

#[tokio::test(flavor = "multi_thread")]
async fn origin_reset_mid_body_truncates_and_stores_nothing() {
    let body = pattern(100_000);
    let mut s =
        setup(vec![Script::BreakOff { head: head_200(body.len()), partial: body[..40_000].to_vec() }, good()]).await;
    let outcome = fetch(&s.edge.url("/a.ts")).await;
    assert_truncated(&outcome, body.len());
    afterwards(&mut s, "/a.ts", GOOD.as_bytes(), "MISS").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn origin_body_longer_than_its_length_is_cut_at_the_length() {
    let mut raw = head_200(5).into_bytes();
    raw.extend_from_slice(b"12345EXTRA BYTES THAT BELONG TO NO MESSAGE");
    served_whole_and_stored(raw, b"12345").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn origin_chunked_body_without_its_last_chunk_stores_nothing() {
    let raw = b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n".to_vec();
    let mut s = setup(vec![Script::Raw(raw), good()]).await;
    let outcome = fetch(&s.edge.url("/a.ts")).await;
    assert!(matches!(outcome.0, 200 | 0), "status {}", outcome.0);
    assert!(outcome.1.is_err(), "a chunked body without its last chunk was delivered as whole");
    afterwards(&mut s, "/a.ts", GOOD.as_bytes(), "MISS").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn origin_stall_of_ten_first_byte_timeouts_is_a_504() {
    let mut s = setup(vec![Script::Stall, good()]).await;
    let started = std::time::Instant::now();
    assert_eq!(fetch(&s.edge.url("/a.ts")).await.0, 504);
    assert!(started.elapsed() < Duration::from_secs(4), "the stall was not cut at first_byte_timeout");
    afterwards(&mut s, "/a.ts", GOOD.as_bytes(), "MISS").await;
    s.origin.open_gate();
}

#[tokio::test(flavor = "multi_thread")]
async fn origin_trickling_one_byte_a_second_is_cut_at_total_timeout() {
    let body = pattern(60);
    let mut s = setup(vec![
        Script::Trickle { head: head_200(body.len()), body: body.clone(), every: Duration::from_secs(1) },
        good(),
    ])
    .await;
    let outcome = fetch(&s.edge.url("/a.ts")).await;
    assert_truncated(&outcome, body.len());
    afterwards(&mut s, "/a.ts", GOOD.as_bytes(), "MISS").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn origin_5xx_burst_is_passed_on_uncached_and_recovery_is_immediate() {
    let unavailable = || Script::Whole {
        head: "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\n".into(),
        body: b"busy".to_vec(),
    };
    let mut s = setup(vec![unavailable(), unavailable(), unavailable(), good()]).await;
    for _ in 0..3 {
        assert_eq!(fetch(&s.edge.url("/a.ts")).await.0, 503);
    }
    afterwards(&mut s, "/a.ts", GOOD.as_bytes(), "MISS").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn origin_connect_failure_is_a_502_quickly() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let edge = start_edge(&["--origin", &url]).expect("edge");
    let started = std::time::Instant::now();
    assert_eq!(fetch(&edge.url("/a.ts")).await.0, 502);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(in_flight(&edge).await, 0);
}

/// A 304 to a request that asked nothing conditional answers no question: it is a bad origin answer,
/// not something to pass on or store.
#[tokio::test(flavor = "multi_thread")]
async fn origin_304_for_an_object_the_edge_does_not_hold_is_a_502() {
    let mut s = setup(vec![
        Script::Whole { head: "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n".into(), body: Vec::new() },
        good(),
    ])
    .await;
    assert_eq!(fetch(&s.edge.url("/a.ts")).await.0, 502);
    afterwards(&mut s, "/a.ts", GOOD.as_bytes(), "MISS").await;
}

/// A 304 naming another ETag than the stored copy's means the stored body is no longer the origin's:
/// it is dropped and fetched again, unconditionally.
#[tokio::test(flavor = "multi_thread")]
async fn origin_304_that_changes_the_etag_refetches_the_object() {
    let version = |etag: &str, body: &str| Script::Whole {
        head: format!(
            "HTTP/1.1 200 OK\r\nCache-Control: max-age=0\r\nETag: \"{etag}\"\r\nContent-Length: {}\r\n\r\n",
            body.len()
        ),
        body: body.as_bytes().to_vec(),
    };
    let s = setup(vec![
        version("v1", "version one"),
        Script::Whole { head: "HTTP/1.1 304 Not Modified\r\nETag: \"v2\"\r\n\r\n".into(), body: Vec::new() },
        version("v2", "version two"),
    ])
    .await;
    assert_eq!(fetch(&s.edge.url("/p.m3u8")).await.1.expect("body"), b"version one");
    let (status, body) = fetch(&s.edge.url("/p.m3u8")).await;
    assert_eq!(status, 200);
    assert_eq!(body.expect("body"), b"version two");
    let heads = s.origin.request_heads.lock().await.clone();
    assert_eq!(heads.len(), 3);
    assert!(heads[1].to_ascii_lowercase().contains("if-none-match: \"v1\""));
    assert!(!heads[2].to_ascii_lowercase().contains("if-none-match"), "the refetch must be unconditional");
}

#[tokio::test(flavor = "multi_thread")]
async fn origin_conflicting_content_lengths_are_a_502() {
    let raw =
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 5\r\nContent-Length: 9\r\n\r\n123456789"
            .to_vec();
    let mut s = setup(vec![Script::Raw(raw), good()]).await;
    assert_eq!(fetch(&s.edge.url("/a.ts")).await.0, 502);
    afterwards(&mut s, "/a.ts", GOOD.as_bytes(), "MISS").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn origin_duplicate_equal_content_lengths_are_one_length() {
    let raw =
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n12345".to_vec();
    served_whole_and_stored(raw, b"12345").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn origin_header_larger_than_the_limit_is_a_502() {
    let raw = format!("HTTP/1.1 200 OK\r\nX-Huge: {}\r\nContent-Length: 2\r\n\r\nok", "a".repeat(1 << 20)).into_bytes();
    let mut s = setup(vec![Script::Raw(raw), good()]).await;
    assert_eq!(fetch(&s.edge.url("/a.ts")).await.0, 502);
    afterwards(&mut s, "/a.ts", GOOD.as_bytes(), "MISS").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn origin_invalid_utf8_in_headers_passes_through_and_is_cached() {
    let mut raw =
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nX-Binary: caf\xe9 \xff\xfe\r\nETag: \"\xc3\x28\"\r\n"
            .to_vec();
    raw.extend_from_slice(b"Content-Length: 5\r\n\r\n12345");
    let mut s = setup(vec![Script::Raw(raw), good()]).await;
    let response = client().get(s.edge.url("/a.ts")).send().await.expect("response");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-binary"].as_bytes(), b"caf\xe9 \xff\xfe");
    assert_eq!(response.bytes().await.expect("body").as_ref(), b"12345");
    afterwards(&mut s, "/a.ts", b"12345", "HIT").await;
}

/// `stale-if-error=18446744073709551615` used to panic in the expiry callback, leaving the flight in
/// the registry forever (`in_flight: 1`) and every later request for the URL hanging.
#[tokio::test(flavor = "multi_thread")]
async fn huge_stale_if_error_does_not_wedge_the_url() {
    let huge = Script::Whole {
        head: format!(
            "HTTP/1.1 200 OK\r\nCache-Control: max-age=60, stale-if-error=18446744073709551615\r\nContent-Length: {}\r\n\r\n",
            GOOD.len()
        ),
        body: GOOD.as_bytes().to_vec(),
    };
    let mut s = setup(vec![huge]).await;
    assert_eq!(fetch(&s.edge.url("/a.ts")).await.1.expect("body"), GOOD.as_bytes());
    afterwards(&mut s, "/a.ts", GOOD.as_bytes(), "HIT").await;
    assert_eq!(s.origin.request_count(), 1);
}

/// `Age: 18446744073709551615` with stale-while-revalidate used to panic while computing the age and
/// reset the client's connection.
#[tokio::test(flavor = "multi_thread")]
async fn huge_age_does_not_reset_the_connection() {
    let aged = Script::Whole {
        head: "HTTP/1.1 200 OK\r\nCache-Control: max-age=60, stale-while-revalidate=30\r\nAge: 18446744073709551615\r\nContent-Length: 4\r\n\r\n"
            .into(),
        body: b"aged".to_vec(),
    };
    let s = setup(vec![aged.clone(), aged.clone(), aged]).await;
    for _ in 0..3 {
        let (status, body) = fetch(&s.edge.url("/a.ts")).await;
        assert_eq!(status, 200);
        assert_eq!(body.expect("whole body"), b"aged");
    }
    no_flight_left(&s.edge).await;
}

/// A fill that fails in any way, a panic included, releases its flight: followers get an error and
/// the next request reaches the origin (the fault is injected through a test-only environment variable).
#[tokio::test(flavor = "multi_thread")]
async fn a_fill_that_panics_releases_its_flight_and_the_next_request_reaches_the_origin() {
    let origin =
        ScriptedOrigin::start(vec![Script::Whole { head: head_200(GOOD.len()), body: GOOD.as_bytes().to_vec() }]).await;
    let mut command = std::process::Command::new(eddy_tests::bin_path("eddy-edge"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--origin", &origin.url()])
        .env("EDDY_TEST_PANIC_IN_FILL", "/boom.ts")
        .env("RUST_LOG", "error")
        // The injected panic's message is expected; keep it out of the test output.
        .stderr(std::process::Stdio::null());
    let process =
        eddy_tests::spawn_until_ready(command, "eddy-edge listening on", Duration::from_secs(20)).expect("edge");
    let edge = Edge {
        addr: process.addr_after("listening on ").expect("addr"),
        admin: process.addr_after("admin on ").expect("admin"),
        process,
    };
    for attempt in 1..=3 {
        let (_, body) = fetch(&edge.url("/boom.ts")).await;
        assert!(body.is_err() || body.as_ref().is_ok_and(|b| b.is_empty()), "attempt {attempt}: {body:?}");
        assert_eq!(origin.request_count(), attempt, "request {attempt} did not reach the origin: the key is wedged");
        no_flight_left(&edge).await;
    }
    // Other URLs are untouched.
    assert_eq!(fetch(&edge.url("/fine.ts")).await.1.expect("body"), GOOD.as_bytes());
}
