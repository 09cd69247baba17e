//! Request smuggling and cache poisoning over raw HTTP/1.1: ambiguous framing and crafted targets and
//! Hosts sent byte by byte to the real edge. For every case the test checks the status the edge
//! answers, that the bytes hidden behind the request never reach the origin as a request of their own,
//! and that the cache still gives the right object to a clean request afterwards.

use std::time::Duration;

use eddy_tests::{start_edge, Edge};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// Sends raw bytes, then reads until the edge closes the connection (or 5 s pass).
async fn raw(edge: &Edge, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(edge.addr).await.expect("connect");
    stream.write_all(request).await.expect("send");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

fn status_of(answer: &str) -> &str {
    answer.get(9..12).unwrap_or("")
}

struct Case {
    name: &'static str,
    request: Vec<u8>,
    /// Acceptable statuses of the first answer.
    statuses: &'static [&'static str],
}

fn case(name: &'static str, request: &[u8], statuses: &'static [&'static str]) -> Case {
    Case { name, request: request.to_vec(), statuses }
}

/// The smuggled request hidden in each case: it must never reach the origin.
const SMUGGLED: &[u8] = b"GET /smuggled.ts HTTP/1.1\r\nHost: cdn.example\r\n\r\n";

fn with_smuggled(head: &str) -> Vec<u8> {
    [head.as_bytes(), SMUGGLED].concat()
}

#[tokio::test(flavor = "multi_thread")]
async fn ambiguous_framing_and_crafted_targets_never_smuggle_or_poison() {
    let origin = MockServer::start().await;
    for (p, body) in [("/victim.ts", "VICTIM"), ("/smuggled.ts", "SMUGGLED-CONTENT")] {
        Mock::given(method("GET"))
            .and(path(p))
            .respond_with(ResponseTemplate::new(200).insert_header("cache-control", "max-age=60").set_body_string(body))
            .mount(&origin)
            .await;
    }
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(204)).mount(&origin).await;
    let edge = start_edge(&["--origin", &origin.uri()]).expect("edge");
    let smuggled_len = SMUGGLED.len();
    let cases = vec![
        // CL + TE: hyper lets chunked win, drops Content-Length and closes after the answer
        // (RFC 9112 §6.3); a GET carrying either is refused outright.
        case(
            "CL+TE on GET",
            &with_smuggled(&format!(
                "GET /victim.ts HTTP/1.1\r\nHost: cdn.example\r\nContent-Length: {smuggled_len}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            )),
            &["400"],
        ),
        case(
            "CL+TE on POST",
            &with_smuggled(&format!(
                "POST /victim.ts HTTP/1.1\r\nHost: cdn.example\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                smuggled_len + 5
            )),
            &["204"],
        ),
        case(
            "TE that is not chunked",
            &with_smuggled("POST /victim.ts HTTP/1.1\r\nHost: cdn.example\r\nTransfer-Encoding: xchunked\r\n\r\n"),
            &["400"],
        ),
        case(
            "duplicate Content-Length",
            &with_smuggled(&format!(
                "POST /victim.ts HTTP/1.1\r\nHost: cdn.example\r\nContent-Length: 0\r\nContent-Length: {smuggled_len}\r\n\r\n"
            )),
            &["400"],
        ),
        case(
            "GET with a body",
            &with_smuggled(&format!("GET /victim.ts HTTP/1.1\r\nHost: cdn.example\r\nContent-Length: {smuggled_len}\r\n\r\n")),
            &["400"],
        ),
        case(
            "obs-fold",
            &with_smuggled("GET /victim.ts HTTP/1.1\r\nHost: cdn.example\r\nX-Folded: a\r\n b\r\n\r\n"),
            &["400"],
        ),
        case(
            "space before the colon",
            &with_smuggled("GET /victim.ts HTTP/1.1\r\nHost : cdn.example\r\n\r\n"),
            &["400"],
        ),
        // A bare LF ends lines for hyper's parser as for every other (RFC 9112 §2.2 allows it): the
        // request is read one way only, here and on the way to the origin, which gets a fresh head.
        case("bare LF", b"GET /victim.ts HTTP/1.1\nHost: cdn.example\nConnection: close\n\n", &["200", "400"]),
        case(
            "absolute-form for another host",
            b"GET http://evil.example/smuggled.ts HTTP/1.1\r\nHost: cdn.example\r\nConnection: close\r\n\r\n",
            &["421"],
        ),
        case(
            "Host with a slash",
            b"GET /smuggled.ts HTTP/1.1\r\nHost: cdn.example/victim.ts?\r\nConnection: close\r\n\r\n",
            &["400"],
        ),
        case(
            "Host with userinfo",
            b"GET /smuggled.ts HTTP/1.1\r\nHost: cdn.example@evil.example\r\nConnection: close\r\n\r\n",
            &["400"],
        ),
        case("Host with a space", b"GET /smuggled.ts HTTP/1.1\r\nHost: cdn example\r\nConnection: close\r\n\r\n", &["400"]),
        case(
            "Host with non-ASCII",
            "GET /smuggled.ts HTTP/1.1\r\nHost: cdn.ex\u{e4}mple\r\nConnection: close\r\n\r\n".as_bytes(),
            &["400"],
        ),
        case(
            "two Hosts",
            b"GET /smuggled.ts HTTP/1.1\r\nHost: cdn.example\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
            &["400"],
        ),
        case(
            "encoded dot segments",
            b"GET /x/%2e%2e/smuggled.ts HTTP/1.1\r\nHost: cdn.example\r\nConnection: close\r\n\r\n",
            &["400"],
        ),
        case("no Host", b"GET /smuggled.ts HTTP/1.1\r\nConnection: close\r\n\r\n", &["400"]),
        case("garbage request line", b"GET /smuggled.ts HTTP/1.1 extra\r\nHost: cdn.example\r\n\r\n", &["400"]),
    ];
    for case in &cases {
        let answer = raw(&edge, &case.request).await;
        assert!(
            case.statuses.contains(&status_of(&answer)),
            "{}: expected {:?}, got: {answer}",
            case.name,
            case.statuses
        );
        assert!(!answer.contains("SMUGGLED-CONTENT"), "{}: the smuggled object was served: {answer}", case.name);
    }
    let requests = origin.received_requests().await.unwrap_or_default();
    let paths: Vec<String> = requests.iter().map(|r| format!("{} {}", r.method, r.url.path())).collect();
    assert!(paths.iter().all(|p| !p.ends_with("/smuggled.ts")), "a hidden request reached the origin: {paths:?}");
    // The victim's object is still the victim's.
    let clean = raw(&edge, b"GET /victim.ts HTTP/1.1\r\nHost: cdn.example\r\nConnection: close\r\n\r\n").await;
    assert!(clean.starts_with("HTTP/1.1 200") && clean.ends_with("VICTIM"), "{clean}");
    // Nothing is stored under the smuggled path or a crafted host.
    let clean = raw(&edge, b"GET /smuggled.ts HTTP/1.1\r\nHost: cdn.example\r\nConnection: close\r\n\r\n").await;
    assert!(clean.to_ascii_lowercase().contains("x-cache: miss"), "{clean}");
}

/// Absolute-form for a configured name is served, and shares its key with the origin-form request.
#[tokio::test(flavor = "multi_thread")]
async fn absolute_form_for_our_own_name_shares_the_origin_form_key() {
    let origin = MockServer::start().await;
    Mock::given(path("/a.ts"))
        .respond_with(ResponseTemplate::new(200).insert_header("cache-control", "max-age=60").set_body_string("A"))
        .mount(&origin)
        .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("edge.toml");
    std::fs::write(&config, "server_names = [\"cdn.example\"]\n").expect("config");
    let edge = start_edge(&["--config", config.to_str().expect("utf8"), "--origin", &origin.uri()]).expect("edge");
    let first =
        raw(&edge, b"GET http://cdn.example/a.ts HTTP/1.1\r\nHost: cdn.example\r\nConnection: close\r\n\r\n").await;
    assert!(first.starts_with("HTTP/1.1 200") && first.ends_with('A'), "{first}");
    let second = raw(&edge, b"GET /a.ts HTTP/1.1\r\nHost: cdn.example\r\nConnection: close\r\n\r\n").await;
    assert!(second.to_ascii_lowercase().contains("x-cache: hit"), "{second}");
    let other = raw(&edge, b"GET /a.ts HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n").await;
    assert!(other.starts_with("HTTP/1.1 421"), "{other}");
}
