//! RFC 9111 (HTTP caching), RFC 9213 (targeted cache-control) and RFC 9211 (Cache-Status) against the
//! real edge, for the rules that involve the origin. docs/http-caching.md maps each requirement to
//! its test; the pure rules have unit tests in `edge/src/cache/policy.rs` and `directives.rs`.

#[path = "support/scripted_origin.rs"]
mod scripted_origin;

use std::io::Write;
use std::time::{Duration, SystemTime};

use eddy_tests::{start_edge, Edge};
use scripted_origin::{Script, ScriptedOrigin};

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("client")
}

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
    fn age(&self) -> u64 {
        self.header("age").parse().expect("Age is a number")
    }
}

async fn get(edge: &Edge, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = client().get(edge.url(path));
    for (n, v) in headers {
        request = request.header(*n, *v);
    }
    let response = request.send().await.expect("response");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.text().await.expect("body");
    Answer { status, headers, body }
}

fn ok(extra: &str, body: &str) -> Script {
    Script::Whole {
        head: format!("HTTP/1.1 200 OK\r\n{extra}Content-Length: {}\r\n\r\n", body.len()),
        body: body.as_bytes().to_vec(),
    }
}

fn status(code: u16, reason: &str, extra: &str, body: &str) -> Script {
    Script::Whole {
        head: format!("HTTP/1.1 {code} {reason}\r\n{extra}Content-Length: {}\r\n\r\n", body.len()),
        body: body.as_bytes().to_vec(),
    }
}

fn not_modified(extra: &str) -> Script {
    Script::Whole { head: format!("HTTP/1.1 304 Not Modified\r\n{extra}\r\n"), body: Vec::new() }
}

async fn edge_for(origin: &ScriptedOrigin, config: &str) -> (Edge, tempfile::NamedTempFile) {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().expect("config");
    file.write_all(config.as_bytes()).expect("write config");
    let edge = start_edge(&["--config", file.path().to_str().expect("utf8"), "--origin", &origin.url()]).expect("edge");
    (edge, file)
}

const SHORT_TIMEOUTS: &str =
    "[origin]\nconnect_timeout = \"500ms\"\nfirst_byte_timeout = \"500ms\"\ntotal_timeout = \"2s\"\n";

/// RFC 9111 §4.2.3, §5.1: the origin's Age is kept and counts against freshness.
#[tokio::test(flavor = "multi_thread")]
async fn the_origins_age_is_forwarded_and_counts_against_freshness() {
    let origin = ScriptedOrigin::start(vec![
        ok("Cache-Control: max-age=10000\r\nAge: 7200\r\n", "aged"),
        ok("Cache-Control: max-age=60\r\nAge: 100\r\n", "old"),
        ok("Cache-Control: max-age=60\r\nAge: 100\r\n", "old again"),
    ])
    .await;
    let (edge, _config) = edge_for(&origin, "").await;
    let first = get(&edge, "/aged.ts", &[]).await;
    assert!(first.age() >= 7200, "Age on the miss: {}", first.age());
    let hit = get(&edge, "/aged.ts", &[]).await;
    assert_eq!(hit.xcache(), "HIT");
    assert!(hit.age() >= 7200, "Age on the hit: {}", hit.age());
    // Age 100 > max-age 60: stale on arrival, never served as fresh.
    assert_eq!(get(&edge, "/old.ts", &[]).await.body, "old");
    let again = get(&edge, "/old.ts", &[]).await;
    assert_ne!(again.xcache(), "HIT");
    assert_eq!(again.body, "old again");
    assert_eq!(origin.request_count(), 3);
}

/// RFC 9111 §5.3: an invalid Expires means already expired; Expires is ignored next to max-age.
#[tokio::test(flavor = "multi_thread")]
async fn invalid_expires_means_expired_and_max_age_beats_expires() {
    let past = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(3600));
    let origin = ScriptedOrigin::start(vec![
        ok("Expires: Thu,  01 Dec 2099 16:00:00 GMT\r\n", "double space"),
        ok("Expires: Thu,  01 Dec 2099 16:00:00 GMT\r\n", "double space again"),
        ok(&format!("Expires: {past}\r\nCache-Control: max-age=60\r\n"), "max-age wins"),
    ])
    .await;
    let (edge, _config) = edge_for(&origin, "").await;
    get(&edge, "/x.bin", &[]).await;
    assert_eq!(get(&edge, "/x.bin", &[]).await.body, "double space again", "an invalid Expires was served fresh");
    get(&edge, "/y.bin", &[]).await;
    assert_eq!(get(&edge, "/y.bin", &[]).await.xcache(), "HIT");
}

/// RFC 9111 §5.2: directive names are case-insensitive (`No-CaChE` forces revalidation).
#[tokio::test(flavor = "multi_thread")]
async fn no_cache_in_any_case_is_stored_and_revalidated_on_every_use() {
    let origin = ScriptedOrigin::start(vec![
        ok("Cache-Control: No-CaChE, MaX-AgE=3600\r\nETag: \"v1\"\r\n", "stored body"),
        not_modified("ETag: \"v1\"\r\n"),
        not_modified("ETag: \"v1\"\r\n"),
    ])
    .await;
    let (edge, _config) = edge_for(&origin, "").await;
    assert_eq!(get(&edge, "/p.m3u8", &[]).await.body, "stored body");
    for _ in 0..2 {
        let again = get(&edge, "/p.m3u8", &[]).await;
        assert_eq!(again.xcache(), "REVALIDATED");
        assert_eq!(again.body, "stored body");
    }
    let heads = origin.request_heads.lock().await.clone();
    assert_eq!(heads.len(), 3);
    assert!(heads[2].to_ascii_lowercase().contains("if-none-match: \"v1\""));
}

/// RFC 9111 §4.2.4, §5.2.2.2, §5.2.2.10: must-revalidate, proxy-revalidate and s-maxage copies are never
/// served stale, not even by the operator's stale-if-error default; an unreachable origin gives 504.
#[tokio::test(flavor = "multi_thread")]
async fn revalidation_directives_give_504_never_stale_when_the_origin_is_down() {
    for directive in ["max-age=0, must-revalidate", "max-age=0, proxy-revalidate", "s-maxage=0", "no-cache"] {
        let reset = || Script::Raw(Vec::new());
        let origin = ScriptedOrigin::start(vec![
            ok(&format!("Cache-Control: {directive}, stale-if-error=3600\r\nETag: \"v1\"\r\n"), "must be fresh"),
            reset(),
            reset(),
        ])
        .await;
        let (edge, _config) = edge_for(&origin, SHORT_TIMEOUTS).await;
        assert_eq!(get(&edge, "/r.ts", &[]).await.status, 200);
        let answer = get(&edge, "/r.ts", &[]).await;
        assert_eq!(answer.status, 504, "{directive}: {}", answer.body);
        assert_ne!(answer.body, "must be fresh", "{directive}: served stale");
    }
}

/// Without those directives the same outage is covered by stale-if-error.
#[tokio::test(flavor = "multi_thread")]
async fn plain_max_age_copies_are_served_stale_when_the_origin_is_down() {
    let origin = ScriptedOrigin::start(vec![
        ok("Cache-Control: max-age=0, stale-if-error=3600\r\nETag: \"v1\"\r\n", "stale but useful"),
        Script::Raw(Vec::new()),
        Script::Raw(Vec::new()),
    ])
    .await;
    let (edge, _config) = edge_for(&origin, SHORT_TIMEOUTS).await;
    get(&edge, "/r.ts", &[]).await;
    let answer = get(&edge, "/r.ts", &[]).await;
    assert_eq!((answer.status, answer.xcache().as_str()), (200, "STALE"));
    assert_eq!(answer.body, "stale but useful");
    assert!(answer.header("cache-status").contains("detail=stale-if-error"), "{}", answer.header("cache-status"));
}

/// RFC 9111 §3: any final status with explicit freshness is stored.
#[tokio::test(flavor = "multi_thread")]
async fn non_200_answers_with_explicit_freshness_are_cached() {
    let answers =
        [(204, "No Content"), (302, "Found"), (400, "Bad Request"), (503, "Service Unavailable"), (599, "Odd")];
    let scripts = answers
        .iter()
        .map(|(code, reason)| {
            let extra = format!("Cache-Control: max-age=60\r\nLocation: /elsewhere\r\nX-Code: {code}\r\n");
            if *code == 204 {
                Script::Whole { head: format!("HTTP/1.1 {code} {reason}\r\n{extra}\r\n"), body: Vec::new() }
            } else {
                status(*code, reason, &extra, "answer")
            }
        })
        .collect();
    let origin = ScriptedOrigin::start(scripts).await;
    let (edge, _config) = edge_for(&origin, "").await;
    let plain =
        reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    for (i, (code, _)) in answers.iter().enumerate() {
        let url = edge.url(&format!("/s{i}"));
        let first = plain.get(&url).send().await.expect("first");
        assert_eq!(first.status().as_u16(), *code);
        first.bytes().await.expect("body");
        let second = plain.get(&url).send().await.expect("second");
        assert_eq!(second.status().as_u16(), *code);
        assert_eq!(second.headers()["x-cache"], "HIT", "{code} was not stored");
    }
    assert_eq!(origin.request_count(), answers.len());
}

/// RFC 9111 §4.2.2: 10 % of Date − Last-Modified when nothing else is said.
#[tokio::test(flavor = "multi_thread")]
async fn heuristic_freshness_from_last_modified() {
    let now = SystemTime::now();
    let date = httpdate::fmt_http_date(now);
    let modified = httpdate::fmt_http_date(now - Duration::from_secs(20_000));
    let origin =
        ScriptedOrigin::start(vec![ok(&format!("Date: {date}\r\nLast-Modified: {modified}\r\n"), "doc")]).await;
    let (edge, _config) = edge_for(&origin, "").await;
    let first = get(&edge, "/doc.bin", &[]).await;
    let status = first.header("cache-status");
    let ttl: u64 = status
        .split("; ")
        .find_map(|p| p.strip_prefix("ttl="))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no ttl in {status}"));
    assert!((1990..=2000).contains(&ttl), "{status}");
    assert_eq!(get(&edge, "/doc.bin", &[]).await.xcache(), "HIT");
}

/// RFC 9213: CDN-Cache-Control (and the operator's own targeted field) decide for the edge; clients
/// still get the origin's Cache-Control.
#[tokio::test(flavor = "multi_thread")]
async fn targeted_cache_control_decides_for_the_edge_only() {
    let origin = ScriptedOrigin::start(vec![
        ok("Cache-Control: no-store\r\nCDN-Cache-Control: max-age=600\r\n", "for the cdn"),
        ok("Cache-Control: max-age=600\r\nCDN-Cache-Control: no-store\r\n", "not for the cdn"),
        ok("Cache-Control: max-age=600\r\nCDN-Cache-Control: no-store\r\n", "not for the cdn"),
        ok("Cache-Control: max-age=1\r\nCDN-Cache-Control: no-store\r\nEddy-Cache-Control: max-age=600\r\n", "ours"),
    ])
    .await;
    let (edge, _config) = edge_for(&origin, "[cache]\ntargeted_header = \"Eddy-Cache-Control\"\n").await;
    get(&edge, "/a", &[]).await;
    let hit = get(&edge, "/a", &[]).await;
    assert_eq!(hit.xcache(), "HIT");
    assert_eq!(hit.header("cache-control"), "no-store", "clients still get the origin's Cache-Control");
    get(&edge, "/b", &[]).await;
    assert_eq!(get(&edge, "/b", &[]).await.xcache(), "MISS", "CDN-Cache-Control: no-store was ignored");
    get(&edge, "/c", &[]).await;
    assert_eq!(get(&edge, "/c", &[]).await.xcache(), "HIT", "the operator's field comes first");
}

/// Interim 1xx answers (103 Early Hints) are not passed on: hyper's client consumes them. The final
/// answer is intact and nothing of the 103 is stored.
#[tokio::test(flavor = "multi_thread")]
async fn early_hints_do_not_leak_into_the_final_or_stored_answer() {
    let mut raw = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n".to_vec();
    raw.extend_from_slice(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 5\r\n\r\nfinal");
    let origin = ScriptedOrigin::start(vec![Script::Raw(raw)]).await;
    let (edge, _config) = edge_for(&origin, "").await;
    let first = get(&edge, "/page", &[]).await;
    assert_eq!((first.status, first.body.as_str()), (200, "final"));
    let hit = get(&edge, "/page", &[]).await;
    assert_eq!(hit.xcache(), "HIT");
    assert_eq!(hit.header("link"), "", "the 103's fields were merged into the stored answer");
}

/// RFC 9110 §13: the client's preconditions are answered from the cache.
#[tokio::test(flavor = "multi_thread")]
async fn client_preconditions_are_answered_from_the_cache() {
    let origin = ScriptedOrigin::start(vec![ok(
        "Cache-Control: max-age=60\r\nETag: W/\"v1\"\r\nLast-Modified: Mon, 01 Jan 2024 00:00:00 GMT\r\n",
        "object",
    )])
    .await;
    let (edge, _config) = edge_for(&origin, "").await;
    get(&edge, "/o", &[]).await;
    assert_eq!(get(&edge, "/o", &[("if-none-match", "\"v1\"")]).await.status, 304, "weak comparison");
    assert_eq!(get(&edge, "/o", &[("if-none-match", "\"v2\"")]).await.status, 200);
    assert_eq!(get(&edge, "/o", &[("if-modified-since", "Tue, 02 Jan 2024 00:00:00 GMT")]).await.status, 304);
    assert_eq!(get(&edge, "/o", &[("if-match", "W/\"v1\"")]).await.status, 412, "If-Match compares strongly");
    assert_eq!(get(&edge, "/o", &[("if-match", "*")]).await.status, 200);
    assert_eq!(get(&edge, "/o", &[("if-unmodified-since", "Sun, 31 Dec 2023 00:00:00 GMT")]).await.status, 412);
    assert_eq!(get(&edge, "/o", &[("if-unmodified-since", "Tue, 02 Jan 2024 00:00:00 GMT")]).await.status, 200);
    assert_eq!(origin.request_count(), 1);
}

/// RFC 9211: Cache-Status carries hit, fwd (uri-miss, vary-miss, stale), fwd-status, ttl, stored,
/// collapsed and detail.
#[tokio::test(flavor = "multi_thread")]
async fn cache_status_has_the_rfc_9211_parameters() {
    let body = "x".repeat(100);
    let origin = ScriptedOrigin::start(vec![
        ok("Cache-Control: max-age=60\r\n", "fresh"),
        ok("Cache-Control: max-age=60\r\nVary: Accept-Language\r\n", "english"),
        ok("Cache-Control: max-age=60\r\nVary: Accept-Language\r\n", "french"),
        ok("Cache-Control: max-age=0\r\nETag: \"v1\"\r\n", "revalidate me"),
        not_modified("ETag: \"v1\"\r\nCache-Control: max-age=30\r\n"),
        Script::Gated {
            head: format!("HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: {}\r\n\r\n", body.len()),
            first: body.as_bytes()[..10].to_vec(),
            rest: body.as_bytes()[10..].to_vec(),
        },
        Script::Raw(Vec::new()),
    ])
    .await;
    let (edge, _config) = edge_for(&origin, SHORT_TIMEOUTS).await;
    let status_of = |a: &Answer| a.header("cache-status");
    assert_eq!(status_of(&get(&edge, "/f", &[]).await), "eddy; fwd=uri-miss; fwd-status=200; stored; ttl=60");
    let hit = status_of(&get(&edge, "/f", &[]).await);
    assert!(hit.starts_with("eddy; hit; ttl="), "{hit}");
    get(&edge, "/v", &[("accept-language", "en")]).await;
    let other = status_of(&get(&edge, "/v", &[("accept-language", "fr")]).await);
    assert!(other.starts_with("eddy; fwd=vary-miss; fwd-status=200; stored"), "{other}");
    get(&edge, "/r", &[]).await;
    let revalidated = status_of(&get(&edge, "/r", &[]).await);
    assert_eq!(revalidated, "eddy; fwd=stale; fwd-status=304; stored; ttl=30");
    let leader = client().get(edge.url("/c")).send().await.expect("leader");
    // The follower joins while the leader's fill is held back at the origin, and says so.
    let follower = client().get(edge.url("/c")).send().await.expect("follower");
    let collapsed = follower.headers()["cache-status"].to_str().expect("ascii").to_string();
    assert!(collapsed.ends_with("; collapsed"), "{collapsed}");
    origin.open_gate();
    assert_eq!(leader.text().await.expect("body"), body);
    assert_eq!(follower.text().await.expect("body"), body);
    assert_eq!(origin.request_count(), 6, "the follower made no origin request of its own");
    // An origin failure is explained in `detail`.
    let failed = status_of(&get(&edge, "/gone", &[]).await);
    assert!(failed.contains("fwd=uri-miss") && failed.contains("detail="), "{failed}");
}
