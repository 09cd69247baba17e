//! End-to-end tests of `eddy-edge`: the real binary on 127.0.0.1 port 0 in front of a wiremock origin,
//! a scripted TCP origin, or a directory.

#[path = "support/scripted_origin.rs"]
mod scripted_origin;

use std::io::Write;
use std::time::Duration;

use eddy_tests::{start_edge, Edge};
use futures::StreamExt;
use scripted_origin::{head_200, pattern, Script, ScriptedOrigin};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().pool_max_idle_per_host(200).build().expect("client")
}

fn xcache(response: &reqwest::Response) -> String {
    response.headers().get("x-cache").and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
}

/// GETs `url` and reads the whole body, so the response is complete before the next request.
async fn fill(c: &reqwest::Client, url: &str) {
    c.get(url).send().await.expect("response").bytes().await.expect("body");
}

/// GETs `url`, reads the whole body, and returns the X-Cache header.
async fn xcache_of(c: &reqwest::Client, url: &str) -> String {
    let response = c.get(url).send().await.expect("response");
    let result = xcache(&response);
    response.bytes().await.expect("body");
    result
}

async fn origin_hits(server: &MockServer) -> usize {
    server.received_requests().await.map(|r| r.len()).unwrap_or(0)
}

async fn stats(edge: &Edge) -> serde_json::Value {
    let body = client().get(edge.admin_url("/stats")).send().await.expect("stats").bytes().await.expect("body");
    serde_json::from_slice(&body).expect("stats json")
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().expect("temp config");
    file.write_all(text.as_bytes()).expect("write config");
    file
}

/// Polls `condition` until it holds or `timeout` passes.
async fn eventually<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn miss_then_hit_with_cache_headers_and_cors() {
    let origin = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/vod/seg1.ts"))
        .respond_with(
            ResponseTemplate::new(200).insert_header("cache-control", "max-age=60").set_body_bytes(pattern(5000)),
        )
        .mount(&origin)
        .await;
    let edge = start_edge(&["--origin", &origin.uri()]).expect("edge");
    let c = client();

    let first = c.get(edge.url("/vod/seg1.ts")).send().await.expect("first");
    assert_eq!(first.status(), 200);
    assert_eq!(xcache(&first), "MISS");
    // ttl=60, or 59 when the origin's Date was written in the second before the edge received it.
    let status = first.headers()["cache-status"].to_str().expect("ascii").to_string();
    assert!(
        ["60", "59"].iter().any(|ttl| status == format!("eddy; fwd=uri-miss; fwd-status=200; stored; ttl={ttl}")),
        "{status}"
    );
    assert_eq!(first.headers()["access-control-allow-origin"], "*");
    assert_eq!(first.bytes().await.expect("body").as_ref(), pattern(5000).as_slice());

    let second = c.get(edge.url("/vod/seg1.ts")).send().await.expect("second");
    assert_eq!(xcache(&second), "HIT");
    assert!(second.headers()["cache-status"].to_str().expect("ascii").starts_with("eddy; hit; ttl="));
    assert!(second.headers().contains_key("age"));
    assert_eq!(second.bytes().await.expect("body").as_ref(), pattern(5000).as_slice());

    let head = c.head(edge.url("/vod/seg1.ts")).send().await.expect("head");
    assert_eq!(xcache(&head), "HIT");
    assert_eq!(head.headers()["content-length"], "5000");
    assert_eq!(origin_hits(&origin).await, 1, "the origin sees the object once");

    let s = stats(&edge).await;
    assert_eq!(s["hits"], 2);
    assert_eq!(s["misses"], 1);
    assert_eq!(s["origin_requests"], 1);
    assert_eq!(s["entries"], 1);
    for field in [
        "requests",
        "stale",
        "coalesced",
        "hit_ratio",
        "byte_hit_ratio",
        "bytes_from_cache",
        "bytes_from_origin",
        "cache_bytes",
        "evictions",
    ] {
        assert!(s.get(field).is_some(), "/stats lacks {field}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_concurrent_misses_make_one_origin_request() {
    let body = pattern(1_000_000);
    let origin = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/hot.ts"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("cache-control", "max-age=60")
                .set_body_bytes(body.clone())
                // Long enough that all 100 requests arrive while the first fetch is still under way.
                .set_delay(Duration::from_millis(500)),
        )
        .mount(&origin)
        .await;
    let edge = start_edge(&["--origin", &origin.uri()]).expect("edge");
    let c = client();
    let requests = (0..100).map(|_| {
        let c = c.clone();
        let url = edge.url("/hot.ts");
        async move {
            let response = c.get(url).send().await.expect("response");
            assert_eq!(response.status(), 200);
            response.bytes().await.expect("body")
        }
    });
    let bodies = futures::future::join_all(requests).await;
    assert_eq!(origin_hits(&origin).await, 1, "exactly one origin request for 100 concurrent misses");
    for received in &bodies {
        assert_eq!(received.as_ref(), body.as_slice());
    }
    let s = stats(&edge).await;
    assert_eq!(s["origin_requests"], 1);
    assert!(s["coalesced"].as_u64().expect("number") >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn first_bytes_reach_clients_before_the_origin_finishes() {
    let first = vec![1u8; 64 * 1024];
    let rest = vec![2u8; 64 * 1024];
    let origin = ScriptedOrigin::start(vec![Script::Gated {
        head: head_200(first.len() + rest.len(), ""),
        first: first.clone(),
        rest: rest.clone(),
    }])
    .await;
    let edge = start_edge(&["--origin", &origin.url()]).expect("edge");
    let c = client();
    let mut a = c.get(edge.url("/live/seg.ts")).send().await.expect("a").bytes_stream();
    let mut b = c.get(edge.url("/live/seg.ts")).send().await.expect("b").bytes_stream();
    // Both clients read the first half while the origin is still holding back the rest.
    for stream in [&mut a, &mut b] {
        let mut got = 0;
        while got < first.len() {
            got += stream.next().await.expect("chunk").expect("ok").len();
        }
        assert_eq!(got, first.len());
    }
    assert_eq!(origin.request_count(), 1);
    origin.open_gate();
    for stream in [a, b] {
        let rest_len: usize = stream.map(|c| c.expect("ok").len()).collect::<Vec<_>>().await.iter().sum();
        assert_eq!(rest_len, rest.len());
    }
    let third = c.get(edge.url("/live/seg.ts")).send().await.expect("third");
    assert_eq!(xcache(&third), "HIT");
    assert_eq!(third.bytes().await.expect("body").len(), first.len() + rest.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reset_mid_body_is_never_cached() {
    let body = pattern(200_000);
    let origin = ScriptedOrigin::start(vec![
        Script::BreakOff { head: head_200(body.len(), ""), partial: body[..50_000].to_vec() },
        Script::Whole { head: head_200(body.len(), ""), body: body.clone() },
    ])
    .await;
    let edge = start_edge(&["--origin", &origin.url()]).expect("edge");
    let c = client();
    // Depending on when the reset lands, the client sees it before or after the response head; either
    // way it must be an error, never a short success.
    let broken = match c.get(edge.url("/seg.ts")).send().await {
        Ok(response) => response.bytes().await.map(|b| b.len()),
        Err(error) => Err(error),
    };
    assert!(broken.is_err(), "the client must see the body break off, not a short success: {broken:?}");

    let next = c.get(edge.url("/seg.ts")).send().await.expect("next");
    assert_eq!(xcache(&next), "MISS", "the broken object was not stored");
    assert_eq!(next.bytes().await.expect("whole").as_ref(), body.as_slice());
    assert_eq!(origin.request_count(), 2);
    let s = stats(&edge).await;
    assert_eq!(s["entries"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_cancels_nothing_for_the_others() {
    let first = vec![3u8; 32 * 1024];
    let rest = vec![4u8; 32 * 1024];
    let origin = ScriptedOrigin::start(vec![Script::Gated {
        head: head_200(first.len() + rest.len(), ""),
        first: first.clone(),
        rest: rest.clone(),
    }])
    .await;
    let edge = start_edge(&["--origin", &origin.url()]).expect("edge");
    let leaver = client();
    let stayer = client();
    let mut gone = leaver.get(edge.url("/seg.ts")).send().await.expect("leaver").bytes_stream();
    gone.next().await.expect("a first chunk").expect("ok");
    let staying = stayer.get(edge.url("/seg.ts")).send().await.expect("stayer");
    drop(gone);
    drop(leaver);
    origin.open_gate();
    assert_eq!(staying.bytes().await.expect("whole").len(), first.len() + rest.len());
    let again = stayer.get(edge.url("/seg.ts")).send().await.expect("again");
    assert_eq!(xcache(&again), "HIT");
    assert_eq!(origin.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_copy_is_served_when_the_origin_is_down() {
    // Not from wiremock's pool: dropping this one really stops it.
    let origin = MockServer::builder().start().await;
    Mock::given(method("GET"))
        .respond_with(
            // Stored but immediately stale: every later request must go back to the origin.
            ResponseTemplate::new(200).insert_header("cache-control", "max-age=0").set_body_string("playlist v1"),
        )
        .mount(&origin)
        .await;
    let edge = start_edge(&["--origin", &origin.uri()]).expect("edge");
    let c = client();
    assert_eq!(
        c.get(edge.url("/live/index.m3u8")).send().await.expect("fill").text().await.expect("body"),
        "playlist v1"
    );
    drop(origin); // the origin goes away
    let response = c.get(edge.url("/live/index.m3u8")).send().await.expect("stale");
    assert_eq!(response.status(), 200);
    assert_eq!(xcache(&response), "STALE");
    assert!(response.headers()["cache-status"].to_str().expect("ascii").contains("stale-if-error"));
    assert_eq!(response.text().await.expect("body"), "playlist v1");
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_copy_replaces_a_5xx_but_must_revalidate_forbids_it() {
    let origin = MockServer::start().await;
    Mock::given(path("/a.m3u8"))
        .respond_with(ResponseTemplate::new(200).insert_header("cache-control", "max-age=0").set_body_string("a"))
        .up_to_n_times(1)
        .mount(&origin)
        .await;
    Mock::given(path("/b.m3u8"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("cache-control", "max-age=0, must-revalidate")
                .set_body_string("b"),
        )
        .up_to_n_times(1)
        .mount(&origin)
        .await;
    Mock::given(method("GET")).respond_with(ResponseTemplate::new(503)).mount(&origin).await;
    let edge = start_edge(&["--origin", &origin.uri()]).expect("edge");
    let c = client();
    fill(&c, &edge.url("/a.m3u8")).await;
    fill(&c, &edge.url("/b.m3u8")).await;
    let a = c.get(edge.url("/a.m3u8")).send().await.expect("a");
    assert_eq!((a.status().as_u16(), xcache(&a)), (200, "STALE".to_string()));
    let b = c.get(edge.url("/b.m3u8")).send().await.expect("b");
    assert_eq!(b.status(), 503);
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_objects_are_revalidated_with_validators() {
    let origin = MockServer::start().await;
    Mock::given(method("GET"))
        .and(header("if-none-match", "\"v1\""))
        .respond_with(
            ResponseTemplate::new(304).insert_header("etag", "\"v1\"").insert_header("cache-control", "max-age=60"),
        )
        .mount(&origin)
        .await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("etag", "\"v1\"")
                .insert_header("cache-control", "max-age=0")
                .set_body_string("segment body"),
        )
        .mount(&origin)
        .await;
    let edge = start_edge(&["--origin", &origin.uri()]).expect("edge");
    let c = client();
    assert_eq!(xcache_of(&c, &edge.url("/s.ts")).await, "MISS");
    let revalidated = c.get(edge.url("/s.ts")).send().await.expect("revalidate");
    assert_eq!(xcache(&revalidated), "REVALIDATED");
    assert_eq!(revalidated.text().await.expect("body"), "segment body");
    // The 304's max-age=60 made the copy fresh again.
    assert_eq!(xcache_of(&c, &edge.url("/s.ts")).await, "HIT");
    assert_eq!(origin_hits(&origin).await, 2);

    // A client's own conditional request is answered by the cache.
    let conditional = c.get(edge.url("/s.ts")).header("if-none-match", "\"v1\"").send().await.expect("conditional");
    assert_eq!(conditional.status(), 304);
    assert_eq!(origin_hits(&origin).await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_while_revalidate_serves_at_once_and_refreshes_once_in_background() {
    let origin = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("cache-control", "max-age=0, stale-while-revalidate=60")
                .set_body_string("v"),
        )
        .mount(&origin)
        .await;
    let edge = start_edge(&["--origin", &origin.uri()]).expect("edge");
    let c = client();
    fill(&c, &edge.url("/p.m3u8")).await;
    let stale = c.get(edge.url("/p.m3u8")).send().await.expect("stale");
    assert_eq!(xcache(&stale), "STALE");
    assert!(stale.headers()["cache-status"].to_str().expect("ascii").contains("stale-while-revalidate"));
    assert!(
        eventually(Duration::from_secs(5), || async { origin_hits(&origin).await == 2 }).await,
        "one background refresh"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ranges_are_cut_from_whole_objects() {
    let body = pattern(10_000);
    let origin = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200).insert_header("cache-control", "max-age=60").set_body_bytes(body.clone()),
        )
        .mount(&origin)
        .await;
    let edge = start_edge(&["--origin", &origin.uri()]).expect("edge");
    let c = client();
    // A range on a miss fetches the whole object once and answers the range.
    let miss = c.get(edge.url("/r.ts")).header("range", "bytes=100-199").send().await.expect("range miss");
    assert_eq!(miss.status(), 206);
    assert_eq!(miss.headers()["content-range"], "bytes 100-199/10000");
    assert_eq!(miss.bytes().await.expect("body").as_ref(), &body[100..200]);
    let requests = origin.received_requests().await.expect("recorded");
    assert!(requests[0].headers.get("range").is_none(), "the origin is asked for the whole object");
    // The range was answered before the fill ended; wait for the fill to store the object.
    assert!(eventually(Duration::from_secs(10), || async { stats(&edge).await["in_flight"] == 0 }).await);

    let hit = c.get(edge.url("/r.ts")).header("range", "bytes=-10").send().await.expect("range hit");
    assert_eq!((hit.status().as_u16(), xcache(&hit)), (206, "HIT".to_string()));
    assert_eq!(hit.bytes().await.expect("body").as_ref(), &body[9990..]);
    let unsatisfiable = c.get(edge.url("/r.ts")).header("range", "bytes=20000-").send().await.expect("416");
    assert_eq!(unsatisfiable.status(), 416);
    assert_eq!(unsatisfiable.headers()["content-range"], "bytes */10000");
    assert_eq!(origin_hits(&origin).await, 1);
}

/// A Range on a miss is answered as soon as its bytes have arrived, while the fill goes on; the fill
/// still stores the whole object for later requests.
#[tokio::test(flavor = "multi_thread")]
async fn a_range_on_a_miss_is_answered_before_the_whole_object_arrives() {
    let body = pattern(200_000);
    let origin = ScriptedOrigin::start(vec![Script::Gated {
        head: head_200(body.len(), ""),
        first: body[..50_000].to_vec(),
        rest: body[50_000..].to_vec(),
    }])
    .await;
    let edge = start_edge(&["--origin", &origin.url()]).expect("edge");
    let c = client();
    // Only the first 50,000 bytes exist at the origin until the gate opens.
    let early = c.get(edge.url("/r.ts")).header("range", "bytes=1000-1999").send().await.expect("range");
    assert_eq!(early.status(), 206);
    assert_eq!(early.headers()["content-range"], "bytes 1000-1999/200000");
    assert_eq!(early.bytes().await.expect("body").as_ref(), &body[1000..2000]);
    origin.open_gate();
    let late = c.get(edge.url("/r.ts")).header("range", "bytes=150000-150009").send().await.expect("range");
    assert_eq!(late.bytes().await.expect("body").as_ref(), &body[150_000..150_010]);
    assert!(eventually(Duration::from_secs(10), || async { stats(&edge).await["in_flight"] == 0 }).await);
    assert_eq!(xcache_of(&c, &edge.url("/r.ts")).await, "HIT");
    assert_eq!(origin.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn storability_follows_cache_control_and_vary() {
    let origin = MockServer::start().await;
    Mock::given(path("/nostore"))
        .respond_with(ResponseTemplate::new(200).insert_header("cache-control", "no-store").set_body_string("x"))
        .mount(&origin)
        .await;
    Mock::given(path("/private"))
        .respond_with(
            ResponseTemplate::new(200).insert_header("cache-control", "private, max-age=60").set_body_string("x"),
        )
        .mount(&origin)
        .await;
    Mock::given(path("/lang"))
        .and(header("accept-language", "fr"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("cache-control", "max-age=60")
                .insert_header("vary", "Accept-Language")
                .set_body_string("bonjour"),
        )
        .mount(&origin)
        .await;
    Mock::given(path("/lang"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("cache-control", "max-age=60")
                .insert_header("vary", "Accept-Language")
                .set_body_string("hello"),
        )
        .mount(&origin)
        .await;
    let edge = start_edge(&["--origin", &origin.uri()]).expect("edge");
    let c = client();
    for p in ["/nostore", "/private"] {
        fill(&c, &edge.url(p)).await;
        assert_eq!(xcache_of(&c, &edge.url(p)).await, "MISS", "{p} must not be stored");
    }
    let get_lang = |lang: &'static str| {
        let c = c.clone();
        let url = edge.url("/lang");
        async move {
            let r = c.get(url).header("accept-language", lang).send().await.expect("lang");
            (xcache(&r), r.text().await.expect("body"))
        }
    };
    assert_eq!(get_lang("en").await, ("MISS".to_string(), "hello".to_string()));
    assert_eq!(get_lang("fr").await, ("MISS".to_string(), "bonjour".to_string()));
    assert_eq!(get_lang("en").await, ("HIT".to_string(), "hello".to_string()));
    assert_eq!(get_lang("fr").await, ("HIT".to_string(), "bonjour".to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn other_methods_pass_to_the_origin_and_invalidate() {
    let origin = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201).set_body_string("created"))
        .mount(&origin)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).insert_header("cache-control", "max-age=60").set_body_string("v"))
        .mount(&origin)
        .await;
    let edge = start_edge(&["--origin", &origin.uri()]).expect("edge");
    let c = client();
    fill(&c, &edge.url("/doc")).await;
    assert_eq!(xcache_of(&c, &edge.url("/doc")).await, "HIT");
    let post = c.post(edge.url("/doc")).body("payload").send().await.expect("post");
    assert_eq!((post.status().as_u16(), xcache(&post)), (201, "PASS".to_string()));
    assert_eq!(post.text().await.expect("body"), "created");
    let posted = origin.received_requests().await.expect("recorded");
    assert!(posted.iter().any(|r| r.method.as_str() == "POST" && r.body == b"payload"));
    assert_eq!(xcache_of(&c, &edge.url("/doc")).await, "MISS");

    // CORS preflight is answered by the edge itself.
    let preflight = c
        .request(reqwest::Method::OPTIONS, edge.url("/doc"))
        .header("origin", "https://player.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .expect("preflight");
    assert_eq!(preflight.status(), 204);
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");
    assert!(preflight.headers()["access-control-allow-methods"].to_str().expect("ascii").contains("GET"));
}

#[tokio::test(flavor = "multi_thread")]
async fn not_found_is_cached_briefly() {
    let origin = MockServer::start().await;
    Mock::given(method("GET")).respond_with(ResponseTemplate::new(404)).mount(&origin).await;
    let edge = start_edge(&["--origin", &origin.uri()]).expect("edge");
    let c = client();
    let first = c.get(edge.url("/gone.ts")).send().await.expect("first");
    assert_eq!(first.status(), 404);
    first.bytes().await.expect("body");
    let second = c.get(edge.url("/gone.ts")).send().await.expect("second");
    assert_eq!((second.status().as_u16(), xcache(&second)), (404, "HIT".to_string()));
    assert_eq!(origin_hits(&origin).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn origins_fail_over_in_order() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_url = format!("http://{}", dead.local_addr().expect("addr"));
    drop(dead); // nothing listens there any more
    let origin = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).insert_header("cache-control", "max-age=60").set_body_string("ok"))
        .mount(&origin)
        .await;
    let edge = start_edge(&["--origin", &dead_url, "--origin", &origin.uri()]).expect("edge");
    let c = client();
    for p in ["/1.ts", "/2.ts"] {
        let r = c.get(edge.url(p)).send().await.expect("served");
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.expect("body"), "ok");
    }
    assert_eq!(origin_hits(&origin).await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn origin_failures_become_502_and_504_without_cache_entries() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_url = format!("http://{}", dead.local_addr().expect("addr"));
    drop(dead);
    let edge = start_edge(&["--origin", &dead_url]).expect("edge");
    let r = client().get(edge.url("/x.ts")).send().await.expect("answer");
    assert_eq!(r.status(), 502);
    assert_eq!(stats(&edge).await["entries"], 0);

    let slow = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_string("late").set_delay(Duration::from_secs(3)))
        .mount(&slow)
        .await;
    let config = config_file("[origin]\nfirst_byte_timeout = \"300ms\"\n");
    let edge = start_edge(&["--config", config.path().to_str().expect("utf8"), "--origin", &slow.uri()]).expect("edge");
    let r = client().get(edge.url("/x.ts")).send().await.expect("answer");
    assert_eq!(r.status(), 504);
    assert_eq!(stats(&edge).await["entries"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn objects_above_the_size_limit_stream_through_uncached() {
    let origin = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200).insert_header("cache-control", "max-age=60").set_body_bytes(pattern(300_000)),
        )
        .mount(&origin)
        .await;
    let config = config_file("[cache]\nmax_object_size = \"100kB\"\n");
    let edge =
        start_edge(&["--config", config.path().to_str().expect("utf8"), "--origin", &origin.uri()]).expect("edge");
    let c = client();
    for _ in 0..2 {
        let r = c.get(edge.url("/big.mp4")).send().await.expect("big");
        assert_eq!(xcache(&r), "MISS");
        assert_eq!(r.bytes().await.expect("body").len(), 300_000);
    }
    assert_eq!(origin_hits(&origin).await, 2);
    assert_eq!(stats(&edge).await["entries"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn directory_origin_serves_hls_types_and_refuses_escapes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("hls");
    std::fs::create_dir_all(root.join("240p")).expect("mkdir");
    std::fs::write(root.join("master.m3u8"), "#EXTM3U\n").expect("write");
    std::fs::write(root.join("240p/seg_0.ts"), pattern(1000)).expect("write");
    std::fs::write(root.join("240p/seg_0.m4s"), pattern(10)).expect("write");
    std::fs::write(root.join("enc.key"), [0u8; 16]).expect("write");
    std::fs::write(dir.path().join("secret.txt"), "secret").expect("write");
    let edge = start_edge(&["--origin", root.to_str().expect("utf8")]).expect("edge");
    let c = client();
    for (p, ty) in [
        ("/master.m3u8", "application/vnd.apple.mpegurl"),
        ("/240p/seg_0.ts", "video/mp2t"),
        ("/240p/seg_0.m4s", "video/mp4"),
        ("/enc.key", "application/octet-stream"),
    ] {
        let r = c.get(edge.url(p)).send().await.expect("file");
        assert_eq!(r.status(), 200, "{p}");
        assert_eq!(r.headers()["content-type"], ty, "{p}");
        assert!(r.headers().contains_key("etag") && r.headers().contains_key("last-modified"), "{p}");
    }
    // Raw requests, so that no client normalises the dots away.
    for target in ["/../secret.txt", "/%2e%2e/secret.txt", "/240p/..%2F..%2Fsecret.txt"] {
        let answer =
            raw_request(&edge, &format!("GET {target} HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n")).await;
        assert!(!answer.contains("secret\n") && !answer.ends_with("secret"), "{target} leaked: {answer}");
        assert!(answer.starts_with("HTTP/1.1 403") || answer.starts_with("HTTP/1.1 400"), "{target}: {answer}");
    }
}

async fn raw_request(edge: &Edge, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(edge.addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_clear_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let edge = start_edge(&["--origin", dir.path().to_str().expect("utf8")]).expect("edge");
    let malformed = raw_request(&edge, "GARBAGE\r\n\r\n").await;
    assert!(malformed.starts_with("HTTP/1.1 400"), "{malformed}");
    let huge = format!("GET / HTTP/1.1\r\nHost: edge\r\nX-Big: {}\r\n\r\n", "a".repeat(100_000));
    let oversized = raw_request(&edge, &huge).await;
    assert!(oversized.starts_with("HTTP/1.1 431"), "{oversized}");
    let proxy =
        raw_request(&edge, "GET http://evil.example/ HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
            .await;
    assert!(proxy.starts_with("HTTP/1.1 421"), "{proxy}");
    let connect = raw_request(&edge, "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n").await;
    assert!(connect.starts_with("HTTP/1.1 4"), "{connect}");
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_endpoints_metrics_stats_health_and_purge() {
    let origin = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).insert_header("cache-control", "max-age=60").set_body_string("v"))
        .mount(&origin)
        .await;
    let config = config_file("[admin]\npurge_token = \"s3cret\"\n");
    let edge =
        start_edge(&["--config", config.path().to_str().expect("utf8"), "--origin", &origin.uri()]).expect("edge");
    let c = client();
    fill(&c, &edge.url("/p.ts")).await;
    fill(&c, &edge.url("/p.ts")).await;

    let metrics = c.get(edge.admin_url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    for name in [
        "eddy_edge_requests_total",
        "eddy_edge_bytes_from_cache_total",
        "eddy_edge_bytes_from_origin_total",
        "eddy_edge_origin_first_byte_seconds_bucket",
        "eddy_edge_cache_entries",
        "eddy_edge_cache_bytes",
        "eddy_edge_cache_evictions",
        "eddy_edge_coalesced_waiters_total",
    ] {
        assert!(metrics.contains(name), "metrics lack {name}:\n{metrics}");
    }
    assert!(metrics.contains("cache=\"HIT\""));
    assert_eq!(c.get(edge.admin_url("/healthz")).send().await.expect("health").status(), 200);

    let target = edge.url("/p.ts");
    let purge_url = format!("{}?url={}", edge.admin_url("/purge"), target);
    assert_eq!(c.post(&purge_url).send().await.expect("no token").status(), 401);
    assert_eq!(c.post(&purge_url).bearer_auth("wrong").send().await.expect("bad token").status(), 401);
    let purged = c.post(&purge_url).bearer_auth("s3cret").send().await.expect("purge");
    assert_eq!(purged.status(), 200);
    assert!(purged.text().await.expect("body").contains("\"purged\": true"));
    assert_eq!(xcache_of(&c, &edge.url("/p.ts")).await, "MISS");
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_command_prints_the_hit_ratio() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("seg.ts"), "0123").expect("write");
    let edge = start_edge(&["--origin", dir.path().to_str().expect("utf8")]).expect("edge");
    let c = client();
    for _ in 0..4 {
        fill(&c, &edge.url("/seg.ts")).await;
    }
    let admin = format!("http://{}", edge.admin);
    let table = std::process::Command::new(eddy_tests::bin_path("eddy-edge"))
        .args(["stats", "--admin", &admin])
        .output()
        .expect("stats runs");
    assert!(table.status.success());
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("hit ratio") && text.contains("75.0%"), "{text}");
    let json = std::process::Command::new(eddy_tests::bin_path("eddy-edge"))
        .args(["stats", "--admin", &admin, "--json"])
        .output()
        .expect("stats --json runs");
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(value["hit_ratio"], 0.75);
}

#[test]
fn config_errors_name_file_key_and_reason() {
    let bad = config_file("[cache]\nsize = \"lots\"\n");
    let out = std::process::Command::new(eddy_tests::bin_path("eddy-edge"))
        .args(["check-config", bad.path().to_str().expect("utf8")])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(bad.path().to_str().expect("utf8")) && err.contains("size") && err.contains("lots"), "{err}");

    let unknown = config_file("[cache]\nsizes = 3\n");
    let out = std::process::Command::new(eddy_tests::bin_path("eddy-edge"))
        .args(["serve", "--config", unknown.path().to_str().expect("utf8"), "--origin", "/tmp"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sizes"));

    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/edge.toml");
    let out = std::process::Command::new(eddy_tests::bin_path("eddy-edge"))
        .args(["check-config", example.to_str().expect("utf8")])
        .output()
        .expect("runs");
    assert!(out.status.success(), "configs/edge.toml must be valid: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_in_flight_responses_finish_then_exits_0() {
    let first = vec![5u8; 16 * 1024];
    let rest = vec![6u8; 16 * 1024];
    let origin = ScriptedOrigin::start(vec![Script::Gated {
        head: head_200(first.len() + rest.len(), ""),
        first: first.clone(),
        rest: rest.clone(),
    }])
    .await;
    let mut edge = start_edge(&["--origin", &origin.url()]).expect("edge");
    let c = client();
    let mut stream = c.get(edge.url("/slow.ts")).send().await.expect("response").bytes_stream();
    let mut got = stream.next().await.expect("chunk").expect("ok").len();
    eddy_tests::signal(edge.process.pid(), "TERM").expect("sigterm");
    // New connections are refused once the edge stops accepting.
    assert!(
        eventually(Duration::from_secs(5), || async { tokio::net::TcpStream::connect(edge.addr).await.is_err() }).await,
        "the edge still accepts connections after SIGTERM"
    );
    origin.open_gate();
    while let Some(chunk) = stream.next().await {
        got += chunk.expect("the in-flight response completes").len();
    }
    assert_eq!(got, first.len() + rest.len());
    let status = eddy_tests::wait_with_timeout(&mut edge.process.child, Duration::from_secs(10)).expect("exits");
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_access_log_line_per_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("seg.ts"), "0123456789").expect("write");
    let log = tempfile::NamedTempFile::new().expect("log file");
    let mut command = std::process::Command::new(eddy_tests::bin_path("eddy-edge"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--origin"])
        .arg(dir.path())
        // INFO for every target: the access lines must keep their order with the edge's other lines.
        .env("RUST_LOG", "info")
        .stderr(log.reopen().expect("log handle"));
    let mut process =
        eddy_tests::spawn_until_ready(command, "eddy-edge listening on", Duration::from_secs(20)).expect("edge");
    let addr = process.addr_after("listening on ").expect("addr");
    let c = client();
    c.get(format!("http://{addr}/seg.ts")).send().await.expect("get").bytes().await.expect("body");
    // Lines are buffered, but a person tailing the log sees them while the edge runs, not at exit.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(log.path()).expect("log").contains("path=/seg.ts") {
        assert!(std::time::Instant::now() < deadline, "the access line was not written while the edge ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..2 {
        c.get(format!("http://{addr}/seg.ts")).send().await.expect("get").bytes().await.expect("body");
    }
    c.get(format!("http://{addr}/missing.ts")).send().await.expect("get").bytes().await.expect("body");
    assert!(process.terminate(Duration::from_secs(10)).expect("exits").success());
    let text = std::fs::read_to_string(log.path()).expect("log");
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(" INFO access: ")).collect();
    assert_eq!(lines.len(), 4, "{text}");
    // The access lines (written by hand) and tracing's lines share one buffer, in the order logged.
    let order: Vec<&str> = text
        .lines()
        .filter_map(|l| match () {
            _ if l.contains(" INFO access: ") => Some("access"),
            _ if l.contains("eddy-edge listening on") => Some("listening"),
            _ if l.contains("shutting down") => Some("shutting down"),
            _ => None,
        })
        .collect();
    assert_eq!(order, ["listening", "access", "access", "access", "access", "shutting down"], "{text}");
    // tracing-subscriber's layout: `2026-12-01T00:06:03.896597Z  INFO access: method=GET …`.
    for line in &lines {
        let (timestamp, rest) = line.split_at(27);
        let digits = timestamp.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            10 => b == b'T',
            13 | 16 => b == b':',
            19 => b == b'.',
            26 => b == b'Z',
            _ => b.is_ascii_digit(),
        });
        assert!(digits, "timestamp: {line}");
        assert!(rest.starts_with("  INFO access: method=GET path=/"), "{line}");
        let request_id = rest.split(" request_id=").nth(1).and_then(|r| r.split(' ').next()).unwrap_or_default();
        assert!(request_id.len() == 22 && request_id.starts_with('"') && request_id.ends_with('"'), "{line}");
    }
    for field in [
        "method=GET",
        "path=/seg.ts",
        "status=200",
        "cache=\"MISS\"",
        "bytes=10",
        "duration_ms=",
        "client=ip:127.0.0.1",
    ] {
        assert!(lines[0].contains(field), "{field} missing from: {}", lines[0]);
    }
    assert!(lines[1].contains("cache=\"HIT\""), "{}", lines[1]);
    assert!(lines[3].contains("status=404"), "{}", lines[3]);
}

/// Two viewers miss the same object at once, many times over. A request whose lookup missed just
/// before the other's fill stored the object, and which joins the flights just after that fill left,
/// must find the object rather than ask the origin again (the re-check in `phases/fetch.rs`).
#[tokio::test(flavor = "multi_thread")]
async fn simultaneous_misses_cost_one_origin_request_even_when_a_fill_ends_between_lookup_and_join() {
    use wiremock::matchers::path_regex;
    let origin = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path_regex(r"^/race/\d+$"))
        .respond_with(ResponseTemplate::new(200).insert_header("cache-control", "max-age=3600").set_body_string("x"))
        .mount(&origin)
        .await;
    let edge = start_edge(&["--origin", &origin.uri()]).expect("edge");
    let c = client();
    const PAIRS: usize = 400;
    for i in 0..PAIRS {
        let url = edge.url(&format!("/race/{i}"));
        let (a, b) = tokio::join!(fill(&c, &url), fill(&c, &url));
        let ((), ()) = (a, b);
    }
    assert_eq!(origin_hits(&origin).await, PAIRS, "one origin request per object");
}
