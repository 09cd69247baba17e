//! The edge's security promises, each against the real `eddy-edge`: no request may poison the cache
//! for others, escape an origin's root, carry what it should not to an origin, or read another client's
//! private answer. Each test is named after the defect it holds shut (see ARCHITECTURE.md, "Threat
//! model").

#[path = "support/scripted_origin.rs"]
mod scripted_origin;

use std::io::Write;
use std::time::Duration;

use eddy_tests::{start_edge, Edge};
use scripted_origin::{Script, ScriptedOrigin};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("client")
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().expect("temp config");
    file.write_all(text.as_bytes()).expect("write config");
    file
}

/// Sends raw bytes and reads the answer until the edge closes the connection.
async fn raw(edge: &Edge, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(edge.addr).await.expect("connect");
    stream.write_all(request).await.expect("send");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

async fn get(url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = client().get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("response")
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response.headers().get_all(name).iter().map(|v| v.to_str().unwrap_or("?")).collect::<Vec<_>>().join(", ")
}

fn whole(head: &str, body: &str) -> Script {
    Script::Whole { head: format!("{head}Content-Length: {}\r\n\r\n", body.len()), body: body.as_bytes().to_vec() }
}

/// `Host: cdn.example/live` + `/seg1.ts` used to be stored under the key of `cdn.example` +
/// `/live/seg1.ts`, so everyone asking for the live segment got the root one.
#[tokio::test(flavor = "multi_thread")]
async fn host_with_a_slash_cannot_rewrite_the_cache_key() {
    let origin = MockServer::start().await;
    for (p, body) in [("/seg1.ts", "ROOT-SEGMENT"), ("/live/seg1.ts", "LIVE-SEGMENT")] {
        Mock::given(method("GET"))
            .and(path(p))
            .respond_with(ResponseTemplate::new(200).insert_header("cache-control", "max-age=60").set_body_string(body))
            .mount(&origin)
            .await;
    }
    let edge = start_edge(&["--origin", &origin.uri()]).expect("edge");
    let answer = raw(&edge, b"GET /seg1.ts HTTP/1.1\r\nHost: cdn.example/live\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(!answer.contains("ROOT-SEGMENT"), "{answer}");
    let answer = raw(&edge, b"GET /live/seg1.ts HTTP/1.1\r\nHost: cdn.example\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("X-Cache: MISS") || answer.contains("x-cache: MISS"), "{answer}");
    assert!(answer.ends_with("LIVE-SEGMENT"), "{answer}");
    let requests = origin.received_requests().await.unwrap_or_default();
    assert!(requests.iter().all(|r| r.url.path() != "/seg1.ts"), "the crafted request reached the origin");
}

/// A GET carrying `Content-Length: 28` used to reach the origin with that header and no body: a strict
/// origin waited (504), a lenient one read the client's next bytes as a second request (smuggling).
#[tokio::test(flavor = "multi_thread")]
async fn get_with_a_body_is_refused_and_framing_never_reaches_the_origin() {
    let origin = ScriptedOrigin::start(vec![whole(
        "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Type: video/mp2t\r\n",
        "victim",
    )])
    .await;
    let edge = start_edge(&["--origin", &origin.url()]).expect("edge");
    let smuggled = b"GET /smuggled.ts HTTP/1.1\r\n\r\n";
    let request = [
        format!("GET /victim.ts HTTP/1.1\r\nHost: e\r\nContent-Length: {}\r\n\r\n", smuggled.len()).as_bytes(),
        smuggled,
    ]
    .concat();
    let answer = raw(&edge, &request).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(origin.request_count(), 0, "a GET with a body reached the origin");

    // A body-less GET that says so (Content-Length: 0) is fine, and its framing stays at the edge.
    let answer = raw(
        &edge,
        b"GET /victim.ts HTTP/1.1\r\nHost: e\r\nContent-Length: 0\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("victim"), "{answer}");
    let heads = origin.request_heads.lock().await.clone();
    assert_eq!(heads.len(), 1);
    let head = heads[0].to_ascii_lowercase();
    for forbidden in ["content-length", "transfer-encoding", "expect:"] {
        assert!(!head.contains(forbidden), "{forbidden} forwarded on a fill:\n{head}");
    }
}

/// Client A's `set-cookie: session=SECRET-OF-A` used to be stored, and served to client B once the
/// origin confirmed the stored copy with a 304 (`X-Cache: REVALIDATED`).
#[tokio::test(flavor = "multi_thread")]
async fn set_cookie_responses_go_only_to_the_client_that_fetched_them() {
    let page = |who: &str| {
        Script::Conditional {
        not_modified: "HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nCache-Control: max-age=60\r\n\r\n".into(),
        head: format!(
            "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nETag: \"v1\"\r\nSet-Cookie: session=SECRET-OF-{who}\r\nContent-Length: 6\r\n\r\n"
        ),
        body: b"page-x".to_vec(),
    }
    };
    let origin = ScriptedOrigin::start(vec![page("A"), page("B")]).await;
    let edge = start_edge(&["--origin", &origin.url()]).expect("edge");
    let a = get(&edge.url("/page"), &[]).await;
    assert_eq!(header(&a, "set-cookie"), "session=SECRET-OF-A");
    a.bytes().await.expect("body");
    let b = get(&edge.url("/page"), &[]).await;
    assert_eq!(header(&b, "set-cookie"), "session=SECRET-OF-B", "B was given A's cookie");
    assert_eq!(header(&b, "x-cache"), "MISS", "a response that sets a cookie was stored");
    assert_eq!(b.text().await.expect("body"), "page-x");
    assert_eq!(origin.request_count(), 2);
}

/// A follower of a coalesced fetch used to receive the leader's cookie.
#[tokio::test(flavor = "multi_thread")]
async fn a_coalesced_follower_never_receives_the_leaders_cookie() {
    let body = "x".repeat(1000);
    let origin = ScriptedOrigin::start(vec![
        Script::Gated {
            head: format!(
                "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nSet-Cookie: session=SECRET-OF-A\r\nContent-Length: {}\r\n\r\n",
                body.len()
            ),
            first: body.as_bytes()[..10].to_vec(),
            rest: body.as_bytes()[10..].to_vec(),
        },
        whole("HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nSet-Cookie: session=SECRET-OF-B\r\n", &body),
    ])
    .await;
    let edge = start_edge(&["--origin", &origin.url()]).expect("edge");
    let a = get(&edge.url("/page"), &[]).await;
    assert_eq!(header(&a, "set-cookie"), "session=SECRET-OF-A");
    // A's fill is under way (its head is out, its body held back): B arrives now.
    let b = get(&edge.url("/page"), &[]).await;
    assert_eq!(header(&b, "set-cookie"), "session=SECRET-OF-B", "B was given A's cookie");
    assert_eq!(b.text().await.expect("body"), body);
    origin.open_gate();
    assert_eq!(a.text().await.expect("body"), body);
    assert_eq!(origin.request_count(), 2);
}

/// A 304 that carried client A's cookie used to be merged into the stored headers, so B's
/// REVALIDATED answer carried A's cookie.
#[tokio::test(flavor = "multi_thread")]
async fn a_cookie_in_a_304_is_never_merged_into_the_stored_object() {
    let stored = "HTTP/1.1 200 OK\r\nCache-Control: max-age=0\r\nETag: \"v1\"\r\n";
    let origin = ScriptedOrigin::start(vec![
        whole(stored, "body"),
        Script::Whole {
            head: "HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nCache-Control: max-age=0\r\nSet-Cookie: session=SECRET-OF-A\r\n\r\n"
                .into(),
            body: Vec::new(),
        },
        Script::Whole {
            head: "HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nCache-Control: max-age=0\r\n\r\n".into(),
            body: Vec::new(),
        },
    ])
    .await;
    let edge = start_edge(&["--origin", &origin.url()]).expect("edge");
    get(&edge.url("/p.m3u8"), &[]).await.bytes().await.expect("body");
    let a = get(&edge.url("/p.m3u8"), &[]).await;
    assert_eq!(header(&a, "x-cache"), "REVALIDATED");
    let b = get(&edge.url("/p.m3u8"), &[]).await;
    assert_eq!(header(&b, "x-cache"), "REVALIDATED");
    assert_eq!(header(&b, "set-cookie"), "", "B got A's cookie from the stored headers");
    assert_eq!(b.text().await.expect("body"), "body");
}

/// With `cache.set_cookie = "strip"` the object is shared without the cookie, which only its fetcher gets.
#[tokio::test(flavor = "multi_thread")]
async fn set_cookie_strip_shares_the_object_without_the_cookie() {
    let origin = ScriptedOrigin::start(vec![whole(
        "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nSet-Cookie: session=SECRET-OF-A\r\n",
        "page",
    )])
    .await;
    let config = config_file("[cache]\nset_cookie = \"strip\"\n");
    let edge =
        start_edge(&["--config", config.path().to_str().expect("utf8"), "--origin", &origin.url()]).expect("edge");
    let a = get(&edge.url("/page"), &[]).await;
    assert_eq!(header(&a, "set-cookie"), "session=SECRET-OF-A");
    a.bytes().await.expect("body");
    let b = get(&edge.url("/page"), &[]).await;
    assert_eq!(header(&b, "x-cache"), "HIT");
    assert_eq!(header(&b, "set-cookie"), "");
    assert_eq!(b.text().await.expect("body"), "page");
}

/// With the origin sending `Vary: X-User`, client B's request made during client A's fill used to be
/// answered with A's private data.
#[tokio::test(flavor = "multi_thread")]
async fn coalescing_respects_vary() {
    let a_body = "private data for user=A";
    let origin = ScriptedOrigin::start(vec![
        Script::Gated {
            head: format!(
                "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nVary: X-User\r\nContent-Length: {}\r\n\r\n",
                a_body.len()
            ),
            first: a_body.as_bytes()[..4].to_vec(),
            rest: a_body.as_bytes()[4..].to_vec(),
        },
        whole("HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nVary: X-User\r\n", "private data for user=B"),
    ])
    .await;
    let config = config_file(
        "[origin]\nforward_request_headers = [\"accept\", \"accept-encoding\", \"user-agent\", \"x-user\"]\n",
    );
    let edge =
        start_edge(&["--config", config.path().to_str().expect("utf8"), "--origin", &origin.url()]).expect("edge");
    let a = get(&edge.url("/me.json"), &[("x-user", "A")]).await;
    let b = get(&edge.url("/me.json"), &[("x-user", "B")]).await;
    assert_eq!(b.text().await.expect("body"), "private data for user=B");
    origin.open_gate();
    assert_eq!(a.text().await.expect("body"), a_body);
    let heads = origin.request_heads.lock().await.clone();
    assert!(heads[1].to_ascii_lowercase().contains("x-user: b"), "{}", heads[1]);
    // Both variants are stored apart.
    let a_again = get(&edge.url("/me.json"), &[("x-user", "A")]).await;
    assert_eq!(header(&a_again, "x-cache"), "HIT");
    assert_eq!(a_again.text().await.expect("body"), a_body);
    let b_again = get(&edge.url("/me.json"), &[("x-user", "B")]).await;
    assert_eq!(header(&b_again, "x-cache"), "HIT");
    assert_eq!(b_again.text().await.expect("body"), "private data for user=B");
}

/// RFC 9111 §3.5: a request with Authorization never rides on another client's fetch.
#[tokio::test(flavor = "multi_thread")]
async fn authorization_requests_never_join_another_clients_fetch() {
    let public = "public object";
    let origin = ScriptedOrigin::start(vec![
        Script::Gated {
            head: format!("HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: {}\r\n\r\n", public.len()),
            first: public.as_bytes()[..3].to_vec(),
            rest: public.as_bytes()[3..].to_vec(),
        },
        whole("HTTP/1.1 200 OK\r\nCache-Control: private\r\n", "for the authorized client"),
    ])
    .await;
    let edge = start_edge(&["--origin", &origin.url()]).expect("edge");
    let a = get(&edge.url("/doc"), &[]).await;
    let b = get(&edge.url("/doc"), &[("authorization", "Bearer b-token")]).await;
    assert_eq!(b.text().await.expect("body"), "for the authorized client");
    origin.open_gate();
    assert_eq!(a.text().await.expect("body"), public);
    let heads = origin.request_heads.lock().await.clone();
    assert!(heads[1].to_ascii_lowercase().contains("authorization: bearer b-token"), "{}", heads[1]);
}

/// A `private` answer fetched for one client is never handed to a coalesced follower.
#[tokio::test(flavor = "multi_thread")]
async fn private_responses_are_never_shared_with_followers() {
    let mine = "account of A";
    let origin = ScriptedOrigin::start(vec![
        Script::Gated {
            head: format!(
                "HTTP/1.1 200 OK\r\nCache-Control: private, max-age=60\r\nContent-Length: {}\r\n\r\n",
                mine.len()
            ),
            first: mine.as_bytes()[..3].to_vec(),
            rest: mine.as_bytes()[3..].to_vec(),
        },
        whole("HTTP/1.1 200 OK\r\nCache-Control: private, max-age=60\r\n", "account of B"),
    ])
    .await;
    let edge = start_edge(&["--origin", &origin.url()]).expect("edge");
    let a = get(&edge.url("/account"), &[]).await;
    let b = get(&edge.url("/account"), &[]).await;
    assert_eq!(b.text().await.expect("body"), "account of B");
    origin.open_gate();
    assert_eq!(a.text().await.expect("body"), mine);
    let c = get(&edge.url("/account"), &[]).await;
    assert_eq!(header(&c, "x-cache"), "MISS", "a private answer was stored");
}

/// `X-Forwarded-Host` (and `X-Original-URL`, `X-Rewrite-URL`, `Forwarded`…) used to reach the origin,
/// so an origin that reflects them built everyone's stored page from one client's header.
#[tokio::test(flavor = "multi_thread")]
async fn unkeyed_forwarding_headers_never_reach_the_origin() {
    let origin =
        ScriptedOrigin::start(vec![whole("HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n", "#EXTM3U\n")]).await;
    let edge = start_edge(&["--origin", &origin.url()]).expect("edge");
    let answer = raw(
        &edge,
        b"GET /index.m3u8 HTTP/1.1\r\nHost: cdn.example\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-For: 6.6.6.6\r\n\
X-Forwarded-Proto: gopher\r\nForwarded: host=evil.example\r\nX-Original-URL: /admin\r\nX-Rewrite-URL: /admin\r\n\
X-Real-IP: 6.6.6.6\r\nCookie: a=b\r\nX-Anything: 1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let head = origin.request_heads.lock().await[0].to_ascii_lowercase();
    for leaked in
        ["evil.example", "6.6.6.6", "gopher", "forwarded: ", "x-original-url", "x-rewrite-url", "cookie", "x-anything"]
    {
        assert!(!head.contains(leaked), "{leaked} reached the origin:\n{head}");
    }
    assert!(head.contains("x-forwarded-host: cdn.example"), "{head}");
    assert!(head.contains("x-forwarded-for: 127.0.0.1"), "{head}");
    assert!(head.contains("via: 1.1 eddy"), "{head}");
}

/// With origin `http://…/public`, `/../secret.txt` and its encoded forms used to return the origin's
/// `/secret.txt`.
#[tokio::test(flavor = "multi_thread")]
async fn origin_path_prefix_cannot_be_escaped() {
    let origin = MockServer::start().await;
    Mock::given(path("/secret.txt"))
        .respond_with(ResponseTemplate::new(200).set_body_string("SECRET"))
        .mount(&origin)
        .await;
    Mock::given(path("/public/a.ts"))
        .respond_with(ResponseTemplate::new(200).set_body_string("public segment"))
        .mount(&origin)
        .await;
    let edge = start_edge(&["--origin", &format!("{}/public", origin.uri())]).expect("edge");
    for target in ["/../secret.txt", "/%2e%2e/secret.txt", "/%2E%2e/secret.txt", "/a/..%2f..%2fsecret.txt", "/./a.ts"] {
        let answer =
            raw(&edge, format!("GET {target} HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n").as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{target}: {answer}");
        assert!(!answer.contains("SECRET"), "{target}: {answer}");
    }
    assert!(origin.received_requests().await.unwrap_or_default().is_empty(), "a dotted path reached the origin");
    let answer = raw(&edge, b"GET /a.ts HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n").await;
    assert!(answer.ends_with("public segment"), "{answer}");
}

/// A 502 body used to read `origin http://127.0.0.1:1/internal-origin unreachable: … Connection refused`.
#[tokio::test(flavor = "multi_thread")]
async fn origin_errors_do_not_reveal_internals() {
    let log = tempfile::NamedTempFile::new().expect("log file");
    let mut command = std::process::Command::new(eddy_tests::bin_path("eddy-edge"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--origin", "http://127.0.0.1:1/internal-origin"])
        .env("RUST_LOG", "access=info,warn")
        .stderr(log.reopen().expect("log handle"));
    let mut process =
        eddy_tests::spawn_until_ready(command, "eddy-edge listening on", Duration::from_secs(20)).expect("edge");
    let addr = process.addr_after("listening on ").expect("addr");
    let response = get(&format!("http://{addr}/x.ts"), &[]).await;
    assert_eq!(response.status(), 502);
    let id = header(&response, "x-request-id");
    assert!(!id.is_empty(), "no X-Request-Id");
    let body = response.text().await.expect("body");
    for secret in ["127.0.0.1", "internal-origin", "refused", ":1"] {
        assert!(!body.contains(secret), "the client learnt {secret:?}: {body}");
    }
    assert!(process.terminate(Duration::from_secs(10)).expect("exits").success());
    let text = std::fs::read_to_string(log.path()).expect("log");
    let line = text.lines().find(|l| l.contains(&id) && l.contains("status=502")).unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("internal-origin"), "the log line lacks the details: {line}");
}

/// Any method used to evict a cached URL, even one the origin refused (OPTIONS 405, POST 405).
#[tokio::test(flavor = "multi_thread")]
async fn only_successful_unsafe_methods_invalidate() {
    let origin = MockServer::start().await;
    for p in ["/v.ts", "/w.ts"] {
        Mock::given(method("GET"))
            .and(path(p))
            .respond_with(
                ResponseTemplate::new(200).insert_header("cache-control", "max-age=60").set_body_string("seg"),
            )
            .mount(&origin)
            .await;
    }
    Mock::given(method("OPTIONS")).respond_with(ResponseTemplate::new(405)).mount(&origin).await;
    Mock::given(method("POST"))
        .and(path("/v.ts"))
        .respond_with(ResponseTemplate::new(405))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&origin)
        .await;
    Mock::given(method("POST")).and(path("/v.ts")).respond_with(ResponseTemplate::new(204)).mount(&origin).await;
    Mock::given(method("POST"))
        .and(path("/upload"))
        .respond_with(ResponseTemplate::new(201).insert_header("location", "/w.ts"))
        .mount(&origin)
        .await;
    let edge = start_edge(&["--origin", &origin.uri()]).expect("edge");
    let c = client();
    let xcache = |url: String| {
        let c = c.clone();
        async move {
            let r = c.get(url).send().await.expect("get");
            let x = header(&r, "x-cache");
            r.bytes().await.expect("body");
            x
        }
    };
    assert_eq!(xcache(edge.url("/v.ts")).await, "MISS");
    assert_eq!(xcache(edge.url("/w.ts")).await, "MISS");
    let options = c.request(reqwest::Method::OPTIONS, edge.url("/v.ts")).send().await.expect("options");
    assert_eq!(options.status(), 405);
    assert_eq!(xcache(edge.url("/v.ts")).await, "HIT", "a refused OPTIONS evicted the object");
    assert_eq!(c.post(edge.url("/v.ts")).send().await.expect("post").status(), 405);
    assert_eq!(xcache(edge.url("/v.ts")).await, "HIT", "a refused POST evicted the object");
    assert_eq!(c.post(edge.url("/v.ts")).send().await.expect("post").status(), 204);
    assert_eq!(xcache(edge.url("/v.ts")).await, "MISS", "a successful POST invalidates its URL");
    assert_eq!(c.post(edge.url("/upload")).send().await.expect("post").status(), 201);
    assert_eq!(xcache(edge.url("/w.ts")).await, "MISS", "a successful POST invalidates its Location");
}

/// Every HTTP/2 request used to get 421, because h2 targets always carry an authority.
#[tokio::test(flavor = "multi_thread")]
async fn http2_requests_are_served_like_http1() {
    let origin = MockServer::start().await;
    Mock::given(path("/h2.ts"))
        .respond_with(
            ResponseTemplate::new(200).insert_header("cache-control", "max-age=60").set_body_string("over h2"),
        )
        .mount(&origin)
        .await;
    let edge = start_edge(&["--origin", &origin.uri()]).expect("edge");
    let h2 = reqwest::Client::builder().no_proxy().http2_prior_knowledge().build().expect("h2 client");
    let first = h2.get(edge.url("/h2.ts")).send().await.expect("h2 response");
    assert_eq!(first.version(), reqwest::Version::HTTP_2);
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "x-cache"), "MISS");
    assert_eq!(first.text().await.expect("body"), "over h2");
    let second = h2.get(edge.url("/h2.ts")).send().await.expect("h2 response");
    assert_eq!(header(&second, "x-cache"), "HIT");
    // The same object over HTTP/1.1: one key for both protocols.
    assert_eq!(header(&get(&edge.url("/h2.ts"), &[]).await, "x-cache"), "HIT");
    assert_eq!(origin.received_requests().await.map(|r| r.len()), Some(1));
    // An :authority naming another host than the configured ones is still refused.
    let config = config_file("server_names = [\"cdn.example\"]\n");
    let named =
        start_edge(&["--config", config.path().to_str().expect("utf8"), "--origin", &origin.uri()]).expect("edge");
    let refused = h2.get(named.url("/h2.ts")).send().await.expect("h2 response");
    assert_eq!(refused.status(), 421);
}
