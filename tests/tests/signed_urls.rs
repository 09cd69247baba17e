//! Signed playback URLs end to end: the real `eddy-edge` with `[auth] signed_urls` in front of a
//! wiremock origin that records every request. Tokens are made with `eddy_shared::signed_url`, as the
//! origin service makes them. (The player's side, a signed stream played through the edge, is in
//! `player.rs`.)

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use eddy_shared::signed_url::{self, SigningKey};
use std::process::{Command, Stdio};

use eddy_tests::{bin_path, signal, spawn_until_ready, Edge};
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

const KEY: &str = "test-playback-key-0123456789abcdef";

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("client")
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn key(text: &str) -> SigningKey {
    SigningKey::from_bytes(text.as_bytes()).expect("a long enough key")
}

/// A token for `prefix`, good for `seconds` more (negative: expired that long ago).
fn token(key_text: &str, prefix: &str, seconds: i64) -> String {
    signed_url::sign(&key(key_text), prefix, now().saturating_add_signed(seconds))
}

/// An origin that answers every GET with a body naming its path: playlists (a three-segment VOD
/// playlist under any `.m3u8` path) and segments, all cacheable.
async fn origin() -> MockServer {
    let origin = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path_regex(r"\.m3u8$"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "application/vnd.apple.mpegurl")
                .insert_header("cache-control", "max-age=60")
                .set_body_string(
                    "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\nseg1.ts\n#EXTINF:2.0,\nseg2.ts\n\
                     #EXTINF:2.0,\nseg3.ts\n#EXT-X-ENDLIST\n",
                ),
        )
        .mount(&origin)
        .await;
    Mock::given(method("GET"))
        .respond_with(|request: &wiremock::Request| {
            ResponseTemplate::new(200)
                .insert_header("cache-control", "max-age=3600")
                .set_body_string(format!("media of {}", request.url.path()))
        })
        .mount(&origin)
        .await;
    origin
}

/// Every request the origin received, as (path, query).
async fn origin_requests(origin: &MockServer) -> Vec<(String, Option<String>)> {
    let requests = origin.received_requests().await.unwrap_or_default();
    requests.iter().map(|r| (r.url.path().to_string(), r.url.query().map(str::to_string))).collect()
}

/// An edge whose config protects `prefixes` with the key in `key_file`, in front of `origin`.
fn edge(dir: &Path, key_file: &Path, prefixes: &str, origin: &MockServer) -> Edge {
    let config =
        format!("[auth]\nsigned_urls = {{ key_file = {key_file:?}, param = \"token\", prefixes = {prefixes} }}\n");
    start(dir, "edge", &config, origin)
}

/// An edge on `config` (written to `dir/NAME.toml`) in front of `origin`. Its stderr (the access log
/// among it) goes to `dir/NAME.log`.
fn start(dir: &Path, name: &str, config: &str, origin: &MockServer) -> Edge {
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, config).expect("config");
    let mut command = Command::new(bin_path("eddy-edge"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--config"])
        .arg(&file)
        .args(["--origin", &origin.uri()])
        .stderr(Stdio::from(std::fs::File::create(dir.join(format!("{name}.log"))).expect("log file")));
    let process = spawn_until_ready(command, "eddy-edge listening on", Duration::from_secs(20)).expect("edge starts");
    let addr = process.addr_after("listening on ").expect("address");
    let admin = process.addr_after("admin on ").expect("admin address");
    Edge { process, addr, admin }
}

fn key_file(dir: &Path, text: &str) -> std::path::PathBuf {
    let file = dir.join("playback.key");
    // Replaced in one step, as a deployment tool would.
    std::fs::write(dir.join("playback.key.new"), format!("{text}\n")).expect("key");
    std::fs::rename(dir.join("playback.key.new"), &file).expect("key in place");
    file
}

async fn get(edge: &Edge, target: &str) -> reqwest::Response {
    client().get(edge.url(target)).send().await.expect("response")
}

/// A GET with a fleet's host name: viewers use one whichever member they reach.
async fn at(edge: &Edge, target: &str) -> reqwest::Response {
    client().get(edge.url(target)).header("host", "cdn.test").send().await.expect("response")
}

async fn metrics(edge: &Edge) -> String {
    client().get(edge.admin_url("/metrics")).send().await.expect("metrics").text().await.expect("text")
}

/// The value of the counter line that starts with `name` in `/metrics` (0 when absent).
async fn counter(edge: &Edge, name: &str) -> u64 {
    let text = metrics(edge).await;
    text.lines().find_map(|line| line.strip_prefix(name).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0)
}

/// Polls `/metrics` until the counter `name` reaches `at_least`.
async fn wait_for_counter(edge: &Edge, name: &str, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while counter(edge, name).await < at_least {
        assert!(Instant::now() < deadline, "{name} never reached {at_least}:\n{}", metrics(edge).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends one raw HTTP/1.1 request (no client normalises its target) and returns the status code.
async fn raw_status(edge: &Edge, target: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(edge.addr).await.expect("connect");
    let request = format!("GET {target} HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer);
    text.strip_prefix("HTTP/1.1 ").and_then(|rest| rest.get(..3)).and_then(|code| code.parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_without_a_valid_token_never_reaches_the_origin() {
    let dir = tempfile::tempdir().expect("temp dir");
    let origin = origin().await;
    let edge = edge(dir.path(), &key_file(dir.path(), KEY), "[\"/videos/\"]", &origin);
    let for_a = token(KEY, "/videos/a/", 600);
    let cases = [
        ("/videos/a/master.m3u8".to_string(), "missing"),
        (format!("/videos/a/master.m3u8?token={}", token(KEY, "/videos/a/", -1)), "expired"),
        (format!("/videos/b/master.m3u8?token={for_a}"), "out_of_scope"),
        (
            format!("/videos/a/master.m3u8?token={}", token("another-key-of-32-bytes-or-more!!", "/videos/a/", 600)),
            "bad_signature",
        ),
        (format!("/videos/a/master.m3u8?token={for_a}&token={for_a}"), "repeated"),
        ("/videos/a/master.m3u8?token=not-a-token".to_string(), "malformed"),
        ("/videos/a/seg1.ts?Token=1.2.3&tokens=1.2.3".to_string(), "missing"),
    ];
    for (target, reason) in &cases {
        for request in [client().get(edge.url(target)), client().head(edge.url(target))] {
            let response = request.send().await.expect("response");
            assert_eq!(response.status(), 403, "{target}");
            assert_eq!(response.headers()["cache-control"], "no-store", "{target}");
            assert!(
                response.headers()["cache-status"].to_str().unwrap_or("").contains("detail=signed-url-"),
                "{target}"
            );
        }
        let body = get(&edge, target).await.text().await.expect("body");
        assert!(body.len() < 200 && body.contains("signed URL"), "{target}: {body}");
        wait_for_counter(&edge, &format!("eddy_edge_auth_refused_total{{reason=\"{reason}\"}}"), 3).await;
    }
    // Other methods too: a POST without a token is not passed to the origin either.
    let post = client().post(edge.url("/videos/a/upload")).body("x").send().await.expect("post");
    assert_eq!(post.status(), 403);
    assert_eq!(origin_requests(&origin).await, [], "the origin saw no request at all");
    // A valid token still opens the path.
    let ok = get(&edge, &format!("/videos/a/seg1.ts?token={for_a}")).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(origin_requests(&origin).await.len(), 1);

    // The access log (written out at exit) has the token without its signature: a logged line is
    // never a credential.
    let mut edge = edge;
    edge.process.terminate(Duration::from_secs(20)).expect("the edge exits");
    let log = std::fs::read_to_string(dir.path().join("edge.log")).expect("log");
    let (unsigned, signature) = for_a.rsplit_once('.').expect("three parts");
    assert!(log.contains(&format!("token={unsigned}.-")), "{log}");
    assert!(!log.contains(signature), "the signature is in the log:\n{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn escapes_from_a_tokens_prefix_are_refused_before_the_origin() {
    let dir = tempfile::tempdir().expect("temp dir");
    let origin = origin().await;
    let edge = edge(dir.path(), &key_file(dir.path(), KEY), "[\"/videos/\"]", &origin);
    let for_a = token(KEY, "/videos/a/", 600);
    // Dot segments, raw or encoded, are refused with 400 by the route phase, before any token is
    // looked at; the rest are spellings that an origin could read as another folder: 403.
    for (path, statuses) in [
        ("/videos/a/../b/seg1.ts", &[400][..]),
        ("/videos/a/%2e%2e/b/seg1.ts", &[400]),
        ("/videos/a/%2E%2e%2Fb/seg1.ts", &[400]),
        ("/videos/a/..%2fb/seg1.ts", &[400]),
        ("/videos/a/..%5cb/seg1.ts", &[400]),
        ("/videos/a/%252e%252e/b/seg1.ts", &[403]),
        ("/videos/a%2fb/seg1.ts", &[403]),
        ("/videos/a/x%2fy.ts", &[403]),
        // An HTTP parser may also refuse this target outright.
        ("//videos/b/seg1.ts", &[400, 403]),
        ("/VIDEOS/b/seg1.ts", &[403]),
        ("/%76ideos/b/seg1.ts", &[403]),
        ("/videos/A/seg1.ts", &[403]),
    ] {
        let status = raw_status(&edge, &format!("{path}?token={for_a}")).await;
        assert!(statuses.contains(&status), "{path}: {status}");
        // Without a token, a protected path is refused whatever its spelling.
        let status = raw_status(&edge, path).await;
        assert!(statuses.contains(&status), "{path} without a token: {status}");
    }
    assert_eq!(origin_requests(&origin).await, [], "no escape reached the origin");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_authorised_viewer_shares_one_cached_copy_and_the_origin_gets_the_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    let origin = origin().await;
    let edge = edge(dir.path(), &key_file(dir.path(), KEY), "[\"/videos/\"]", &origin);
    // Two viewers, two tokens (different expiries), one video.
    let viewers = [token(KEY, "/videos/a/", 600), token(KEY, "/videos/a/", 3600)];
    assert_ne!(viewers[0], viewers[1]);

    let first = &viewers[0];
    let playlist = get(&edge, &format!("/videos/a/v0/index.m3u8?token={first}")).await;
    assert_eq!((playlist.status().as_u16(), playlist.headers()["x-cache"].to_str().ok()), (200, Some("MISS")));
    playlist.bytes().await.expect("body");
    // Prefetch reads the playlist; the next segment after seg1 is then fetched ahead, with the
    // viewer's token (checked to open it).
    wait_for_counter(&edge, "eddy_edge_prefetch_playlists_read_total", 1).await;
    for (n, segment) in ["seg1.ts", "seg2.ts", "seg3.ts"].into_iter().enumerate() {
        let response = get(&edge, &format!("/videos/a/v0/{segment}?token={first}")).await;
        assert_eq!(response.status(), 200, "{segment}");
        assert_eq!(response.headers()["x-cache"], if n == 0 { "MISS" } else { "HIT" }, "{segment} was prefetched");
        assert_eq!(response.text().await.expect("body"), format!("media of /videos/a/v0/{segment}"));
        if n < 2 {
            wait_for_counter(&edge, "eddy_edge_prefetch_completed_total{kind=\"segment\"}", n as u64 + 1).await;
        }
    }
    let second = &viewers[1];
    for target in ["v0/index.m3u8", "v0/seg1.ts", "v0/seg2.ts", "v0/seg3.ts"] {
        let response = get(&edge, &format!("/videos/a/{target}?token={second}")).await;
        assert_eq!(response.status(), 200, "{target}");
        assert_eq!(response.headers()["x-cache"], "HIT", "the second viewer's {target} comes from the cache");
    }

    let requests = origin_requests(&origin).await;
    let mut paths: Vec<&str> = requests.iter().map(|(path, _)| path.as_str()).collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        ["/videos/a/v0/index.m3u8", "/videos/a/v0/seg1.ts", "/videos/a/v0/seg2.ts", "/videos/a/v0/seg3.ts"],
        "the origin saw each object once"
    );
    // Every request that reached the origin carried a token that opens its path (prefetches too).
    for (path, query) in &requests {
        let token = query.as_deref().and_then(|q| q.strip_prefix("token=")).unwrap_or("");
        assert_eq!(signed_url::verify(&key(KEY), token, path, now()), Ok(()), "{path}?{query:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unprotected_prefixes_need_no_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    let origin = origin().await;
    let edge = edge(dir.path(), &key_file(dir.path(), KEY), "[\"/videos/\", \"/live/\"]", &origin);
    for target in ["/public/seg1.ts", "/public/seg1.ts?token=anything", "/", "/video/seg1.ts"] {
        let response = get(&edge, target).await;
        assert_eq!(response.status(), 200, "{target}");
    }
    assert_eq!(get(&edge, "/live/seg1.ts").await.status(), 403);
    // Outside the protected prefixes the parameter is an ordinary one: part of the key.
    assert_eq!(get(&edge, "/public/seg1.ts?token=anything").await.headers()["x-cache"], "HIT");
    assert_eq!(get(&edge, "/public/seg1.ts?token=other").await.headers()["x-cache"], "MISS");
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_tokens_of_any_bytes_get_403_never_a_server_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let origin = origin().await;
    // The default prefixes: everything is protected.
    let edge = edge(dir.path(), &key_file(dir.path(), KEY), "[\"/\"]", &origin);
    let valid = token(KEY, "/", 600);
    // A small deterministic generator (xorshift), so that a failure can be replayed.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut targets = Vec::new();
    for i in 0..200 {
        let len = (next() % 1500) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Any bytes, percent-encoded as a client must send them.
        let encoded: String = bytes
            .iter()
            .map(|&b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        targets.push(format!("/seg{i}.ts?token={encoded}"));
        // A valid token with one character changed, cut or extended.
        let mut mutated = valid.clone().into_bytes();
        let at = (next() as usize) % mutated.len();
        mutated[at] = b"0aZ-_."[(next() % 6) as usize];
        if mutated != valid.as_bytes() {
            targets.push(format!("/seg{i}.ts?token={}", String::from_utf8_lossy(&mutated)));
        }
        targets.push(format!("/seg{i}.ts?token={}", &valid[..(next() as usize) % valid.len()]));
    }
    targets.push(format!("/seg.ts?token={valid}{}", "A".repeat(40_000)));
    targets.push(format!("/seg.ts?token={}", ".".repeat(5000)));
    targets.push("/seg.ts?token=1.2.3".into());
    targets.push("/seg.ts?token=99999999999999999999999999.L3Yv.AAAA".into());
    targets.push("/seg.ts?token=%FF%FE%00".into());
    targets.push("/seg.ts?token=%".into());
    for target in &targets {
        let status = raw_status(&edge, target).await;
        assert_eq!(status, 403, "{}", &target[..target.len().min(200)]);
    }
    // Bytes no request line may hold are refused by the HTTP parser itself: 400, still no 5xx.
    for raw in ["/seg.ts?token=a b", "/seg.ts?token=\u{7f}", "/seg.ts?token=\"<>"] {
        let status = raw_status(&edge, raw).await;
        assert!((400..500).contains(&status), "{raw:?}: {status}");
    }
    assert_eq!(origin_requests(&origin).await, [], "no garbage reached the origin");
    assert_eq!(get(&edge, &format!("/seg.ts?token={valid}")).await.status(), 200, "the edge still serves");
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_rereads_the_key_file_and_refuses_a_bad_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let origin = origin().await;
    let file = key_file(dir.path(), KEY);
    let edge = edge(dir.path(), &file, "[\"/videos/\"]", &origin);
    let old = token(KEY, "/videos/a/", 600);
    assert_eq!(get(&edge, &format!("/videos/a/seg1.ts?token={old}")).await.status(), 200);

    let rotated = "a-new-playback-key-after-rotation-0123";
    key_file(dir.path(), rotated);
    signal(edge.process.pid(), "HUP").expect("SIGHUP");
    wait_for_counter(&edge, "eddy_edge_reloads_total{result=\"ok\"}", 1).await;
    let new = token(rotated, "/videos/a/", 600);
    assert_eq!(get(&edge, &format!("/videos/a/seg1.ts?token={old}")).await.status(), 403, "the old key is gone");
    assert_eq!(get(&edge, &format!("/videos/a/seg1.ts?token={new}")).await.status(), 200);

    // A key too short to be safe is refused, and the key in force stays.
    key_file(dir.path(), "short");
    signal(edge.process.pid(), "HUP").expect("SIGHUP");
    wait_for_counter(&edge, "eddy_edge_reloads_total{result=\"failed\"}", 1).await;
    assert_eq!(get(&edge, &format!("/videos/a/seg2.ts?token={new}")).await.status(), 200);
}

#[test]
fn check_config_names_the_key_file_and_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("edge.toml");
    for (key_text, reason) in [(None, "cannot read"), (Some("too short"), "at least 32")] {
        let key = dir.path().join("playback.key");
        let _ = std::fs::remove_file(&key);
        if let Some(text) = key_text {
            std::fs::write(&key, text).expect("key");
        }
        std::fs::write(&config, format!("[auth]\nsigned_urls = {{ key_file = {key:?} }}\n")).expect("config");
        let output = std::process::Command::new(eddy_tests::bin_path("eddy-edge"))
            .arg("check-config")
            .arg(&config)
            .output()
            .expect("check-config runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{stderr}");
        for part in ["edge.toml", "auth.signed_urls.key_file", "playback.key", reason] {
            assert!(stderr.contains(part), "{part} not in: {stderr}");
        }
    }
}

/// Two edges as a fleet, both requiring tokens. A viewer's request at one member is filled from the
/// key's owner with the viewer's token in the URL and the fleet's secret; the owner trusts the member
/// (it checked the token) and keeps one copy, without the token in its key, for every viewer. A
/// stranger who sends `Eddy-Peer` without the secret is a viewer: no token, no answer.
#[tokio::test(flavor = "multi_thread")]
async fn fleet_members_trust_each_other_and_share_one_copy_per_object() {
    const SECRET: &str = "fleet-secret-of-the-tests";
    let dir = tempfile::tempdir().expect("temp dir");
    let origin = origin().await;
    let key = key_file(dir.path(), KEY);
    let peers = dir.path().join("peers.txt");
    std::fs::write(&peers, "").expect("peers file");
    let config = format!(
        "[cluster]\npeers_file = {peers:?}\nsecret = {SECRET:?}\n\
         [auth]\nsigned_urls = {{ key_file = {key:?}, prefixes = [\"/videos/\"] }}\n"
    );
    let edges = [start(dir.path(), "member0", &config, &origin), start(dir.path(), "member1", &config, &origin)];
    let text: String = edges.iter().map(|e| format!("http://{} admin=http://{}\n", e.addr, e.admin)).collect();
    std::fs::write(dir.path().join("peers.tmp"), text).expect("peers");
    std::fs::rename(dir.path().join("peers.tmp"), &peers).expect("peers in place");
    let deadline = Instant::now() + Duration::from_secs(20);
    for edge in &edges {
        loop {
            let body = client().get(edge.admin_url("/stats")).send().await.expect("stats").bytes().await.expect("body");
            let stats: serde_json::Value = serde_json::from_slice(&body).expect("stats json");
            if stats["fleet_members"].as_array().map_or(0, Vec::len) == 2 {
                break;
            }
            assert!(Instant::now() < deadline, "the fleet never formed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // One viewer at member 0: every object, whichever member owns it. Viewers use one host name
    // whichever member they reach (the Host is part of the key).
    let first = token(KEY, "/videos/a/", 600);
    let objects: Vec<String> = (0..20).map(|i| format!("/videos/a/part{i}.bin")).collect();
    for object in &objects {
        let response = at(&edges[0], &format!("{object}?token={first}")).await;
        assert_eq!(response.status(), 200, "{object}");
    }
    // Each object member 1 owns was asked of it once by member 0 (20 keys over 2 members: some).
    let owned = counter(&edges[1], "eddy_edge_fleet_requests_total").await;
    assert!(owned > 0, "member 1 owns some keys");
    // Another viewer at member 1: what member 1 owns is a hit there, whatever token filled it.
    let second = token(KEY, "/videos/a/", 3600);
    let mut hits = 0u64;
    for object in &objects {
        let response = at(&edges[1], &format!("{object}?token={second}")).await;
        assert_eq!(response.status(), 200, "{object}");
        hits += u64::from(response.headers()["x-cache"] == "HIT");
    }
    assert_eq!(hits, owned, "member 1 kept the copies it owns under a key without the token");
    let mut paths: Vec<String> = origin_requests(&origin).await.into_iter().map(|(path, _)| path).collect();
    paths.sort_unstable();
    paths.dedup();
    assert_eq!(paths.len(), objects.len());
    assert_eq!(origin_requests(&origin).await.len(), objects.len(), "the origin saw each object once");
    for edge in &edges {
        let refused = metrics(edge).await;
        assert!(!refused.contains("eddy_edge_auth_refused_total{"), "a member refused a request:\n{refused}");
    }

    // The secret makes a member; without it, Eddy-Peer means nothing and a token is needed.
    let ask = |secret: &'static str| {
        client().get(edges[1].url("/videos/a/part0.bin")).header("host", "cdn.test").header("eddy-peer", secret).send()
    };
    assert_eq!(ask("not-the-secret-at-all").await.expect("response").status(), 403);
    assert_eq!(ask(SECRET).await.expect("response").status(), 200);
}
