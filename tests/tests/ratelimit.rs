//! End-to-end tests of the edge's rate limiting: the real `eddy-edge` in front of a directory origin,
//! with counters in this process, in a real `redis-server`, or in a real 3-node Redis Cluster, all on
//! 127.0.0.1 ports chosen at run time. Redis processes are started and killed by PID (a Drop guard).
//!
//! Limits are per hour (or the sliding log) so that no window boundary can fall inside a test.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use eddy_tests::{bin_path, spawn_until_ready, Edge};

// ---------------------------------------------------------------------------------------------------
// Helpers

/// One client for the whole test binary: building one (TLS set-up) costs far more than a request.
fn client() -> reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| reqwest::Client::builder().no_proxy().build().expect("client")).clone()
}

/// The log without terminal colour codes.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Waits until `condition` holds, polling; fails after `timeout`.
fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `redis-server` on 127.0.0.1, killed (by PID) when dropped.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    fn start(port: u16, dir: &Path, extra: &[&str]) -> Result<RedisServer> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", &dir.display().to_string()])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (is it installed?)")?;
        let server = RedisServer { child, port };
        wait_until(&format!("redis on port {port} to answer PING"), Duration::from_secs(10), || server.ping())?;
        Ok(server)
    }

    fn ping(&self) -> bool {
        resp_command(self.port, "PING").is_ok_and(|reply| reply.starts_with("+PONG"))
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends one inline command and returns the raw reply (enough for PING and simple checks).
fn resp_command(port: u16, command: &str) -> Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(format!("{command}\r\n").as_bytes())?;
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn redis_cli(args: &[&str]) -> Result<String> {
    let out = Command::new("redis-cli").args(args).output().context("running redis-cli")?;
    if !out.status.success() {
        bail!("redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The Redis tests tell their clients apart by `X-Api-Key` (one loopback address, many clients), which the
/// operator must ask for: the default rules ignore headers a client can choose.
const BY_API_KEY: &str = "identify = [\"x-api-key\", \"peer\"]";

/// A directory origin with one segment (cached for a day) and the edge's config file.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("origin")).expect("origin dir");
        std::fs::write(dir.path().join("origin/seg.ts"), vec![7u8; 1000]).expect("segment");
        Setup { dir }
    }

    fn origin(&self) -> String {
        self.dir.path().join("origin").display().to_string()
    }

    /// Starts an edge with `[rate_limit]` set to `section`; its stderr (the access log) goes to a file.
    fn edge(&self, name: &str, section: &str) -> Result<(Edge, PathBuf)> {
        let config = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&config, format!("[rate_limit]\nenabled = true\n{section}\n"))?;
        let log = self.dir.path().join(format!("{name}.log"));
        let mut command = Command::new(bin_path("eddy-edge"));
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--origin", &self.origin()])
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stderr(File::create(&log)?);
        let process = spawn_until_ready(command, "eddy-edge listening on", Duration::from_secs(20))?;
        let addr = process.addr_after("listening on ")?;
        let admin = process.addr_after("admin on ")?;
        Ok((Edge { process, addr, admin }, log))
    }
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

async fn get(edge: &Edge, headers: &[(&str, &str)]) -> Answer {
    let mut request = client().get(edge.url("/seg.ts"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("request");
    let answer = Answer { status: response.status().as_u16(), headers: response.headers().clone() };
    let _ = response.bytes().await;
    answer
}

async fn stats(edge: &Edge) -> serde_json::Value {
    let body = client().get(edge.admin_url("/stats")).send().await.expect("stats").bytes().await.expect("body");
    serde_json::from_slice(&body).expect("stats json")
}

async fn metrics(edge: &Edge) -> String {
    client().get(edge.admin_url("/metrics")).send().await.expect("metrics").text().await.expect("text")
}

/// Sends `n` requests (alternating over `edges`) and returns their statuses.
async fn statuses(edges: &[&Edge], n: usize, headers: &[(&str, &str)]) -> Vec<u16> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(get(edges[i % edges.len()], headers).await.status);
    }
    out
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|&&s| s == status).count()
}

// ---------------------------------------------------------------------------------------------------
// Local store

#[tokio::test(flavor = "multi_thread")]
async fn over_the_limit_gets_429_with_headers_even_for_cache_hits_and_admin_stays_open() -> Result<()> {
    let setup = Setup::new();
    let (edge, log) = setup.edge(
        "local",
        r#"
        algorithm = "fixed_window"
        rate = "3/h"
        identify = ["x-api-key", "authorization", "peer"]
        [[rate_limit.clients]]
        id = "api-key:partner"
        rate = "5/h"
        "#,
    )?;
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(get(&edge, &[]).await);
    }
    let got: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(got, vec![200, 200, 200, 429]);
    assert_eq!(answers[2].header("x-cache"), "HIT", "hits are limited too: the check runs before the lookup");
    let remaining: Vec<&str> = answers.iter().map(|a| a.header("x-ratelimit-remaining")).collect();
    assert_eq!(remaining, vec!["2", "1", "0", "0"], "allowed responses carry the remaining quota");
    let refused = &answers[3];
    assert_eq!(refused.header("ratelimit-policy"), "\"default\";q=3;w=3600");
    assert!(refused.header("ratelimit").starts_with("\"default\";r=0;t="), "{}", refused.header("ratelimit"));
    assert_eq!(refused.header("x-ratelimit-limit"), "3");
    let retry: u64 = refused.header("retry-after").parse().context("Retry-After in seconds")?;
    assert!((1..=3600).contains(&retry), "{retry}");
    assert_eq!(refused.header("x-cache"), "LOCAL");
    assert_eq!(refused.header("cache-control"), "no-store");

    // Another identity has its own quota; an override its own rate.
    let partner = statuses(&[&edge], 6, &[("x-api-key", "partner")]).await;
    assert_eq!(partner, vec![200, 200, 200, 200, 200, 429]);
    let secret = "Bearer hunter2-very-secret";
    assert_eq!(count(&statuses(&[&edge], 4, &[("authorization", secret)]).await, 200), 3);

    // The admin listener is never limited.
    for _ in 0..10 {
        let response = client().get(edge.admin_url("/healthz")).send().await?;
        assert_eq!(response.status().as_u16(), 200);
    }
    let stats = stats(&edge).await;
    let limits = &stats["rate_limit"];
    assert_eq!(limits["enabled"], true);
    assert_eq!(limits["limited"], 3);
    assert_eq!(limits["allowed"], 11);
    let top: Vec<&str> =
        limits["top_limited"].as_array().context("top")?.iter().filter_map(|c| c["client"].as_str()).collect();
    assert!(top.contains(&"ip:127.0.0.1") && top.contains(&"api-key:partner"), "{top:?}");
    assert!(metrics(&edge)
        .await
        .contains("eddy_edge_ratelimit_decisions_total{result=\"limited\",policy=\"default\",store=\"local\"} 2"));

    // `eddy-edge stats` shows the most limited clients.
    let out = Command::new(bin_path("eddy-edge")).args(["stats", "--admin", &edge.admin_url("")]).output()?;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("top limited clients:") && table.contains("api-key:partner"), "{table}");

    // Every request's identity is in the access log; the credential never is.
    drop(edge);
    let log = plain(&std::fs::read_to_string(log)?);
    assert!(log.lines().any(|l| l.contains("status=429") && l.contains("client=ip:127.0.0.1")), "{log}");
    assert!(log.contains("client=api-key:partner"));
    assert!(log.contains("client=auth:"));
    assert!(!log.contains("hunter2"), "the Authorization secret leaked into the log");
    Ok(())
}

/// Security regression (item 11): the default `identify` rules used to start with `x-api-key`, so a
/// client that sent a new random `X-Api-Key` with every request got a fresh quota every time. With the
/// defaults (`x-forwarded-for`, believed from no one since `trusted_proxies` is empty, then `peer`) a
/// client is its address, whatever headers it invents.
#[tokio::test(flavor = "multi_thread")]
async fn default_identity_rules_are_not_bypassed_by_rotating_api_keys() -> Result<()> {
    let setup = Setup::new();
    // Only the rate: algorithm (token bucket, burst = 3) and identity rules are the defaults. The bucket
    // refills one token per 20 s, far longer than this test's few requests take.
    let (edge, log) = setup.edge("defaults", "rate = \"3/min\"")?;
    let random = std::collections::hash_map::RandomState::new();
    let mut got = Vec::new();
    for i in 0..8u32 {
        let key = format!("{:016x}", std::hash::BuildHasher::hash_one(&random, i));
        got.push(get(&edge, &[("x-api-key", &key)]).await.status);
    }
    assert_eq!(got, vec![200, 200, 200, 429, 429, 429, 429, 429], "a new X-Api-Key per request is no new quota");
    // Nor is a new Authorization or X-Forwarded-For, unless the operator lists them (and trusts the proxy).
    let auth = get(&edge, &[("authorization", "Bearer made-up-1")]).await.status;
    let forwarded = get(&edge, &[("x-forwarded-for", "203.0.113.77")]).await.status;
    assert_eq!((auth, forwarded), (429, 429));
    let limits = stats(&edge).await["rate_limit"].clone();
    let top = limits["top_limited"].as_array().context("top_limited")?;
    assert_eq!(top.len(), 1, "one client, known by its address: {top:?}");
    assert_eq!(top[0]["client"], "ip:127.0.0.1");
    assert_eq!(top[0]["limited"], 7);
    drop(edge);
    let log = plain(&std::fs::read_to_string(log)?);
    assert!(!log.contains("client=api-key:") && !log.contains("client=auth:"), "{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_for_is_believed_only_from_trusted_proxies() -> Result<()> {
    let setup = Setup::new();
    let (trusting, _) = setup.edge(
        "trusting",
        "algorithm = \"sliding_log\"\nrate = \"2/h\"\nidentify = [\"x-forwarded-for\", \"peer\"]\ntrusted_proxies = [\"127.0.0.1/32\"]",
    )?;
    // Behind a trusted proxy each forwarded client has its own quota.
    let a = statuses(&[&trusting], 3, &[("x-forwarded-for", "6.6.6.6, 203.0.113.1")]).await;
    let b = statuses(&[&trusting], 3, &[("x-forwarded-for", "203.0.113.2")]).await;
    assert_eq!((a, b), (vec![200, 200, 429], vec![200, 200, 429]));
    // The left-most entry is the client's own invention and does not change the identity.
    assert_eq!(get(&trusting, &[("x-forwarded-for", "1.1.1.1, 203.0.113.1")]).await.status, 429);

    let (wary, _) = setup
        .edge("wary", "algorithm = \"sliding_log\"\nrate = \"2/h\"\nidentify = [\"x-forwarded-for\", \"peer\"]")?;
    // Without trusted proxies a client cannot pick a new identity per request.
    let spoofed: Vec<u16> = {
        let mut out = Vec::new();
        for i in 0..3 {
            out.push(get(&wary, &[("x-forwarded-for", &format!("203.0.113.{i}"))]).await.status);
        }
        out
    };
    assert_eq!(spoofed, vec![200, 200, 429]);
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// Redis

#[tokio::test(flavor = "multi_thread")]
async fn two_edges_sharing_one_redis_enforce_one_limit_with_every_algorithm() -> Result<()> {
    let setup = Setup::new();
    let redis = RedisServer::start(free_port(), setup.dir.path(), &[])?;
    // (algorithm, extra keys, requests allowed in a quick run)
    let cases = [
        ("token_bucket", "rate = \"1/h\"\nburst = 6", 6),
        ("fixed_window", "rate = \"6/h\"", 6),
        ("sliding_log", "rate = \"6/h\"", 6),
        ("sliding_window", "rate = \"6/h\"", 6),
    ];
    for (algorithm, keys, allowed) in cases {
        let section = format!(
            "algorithm = \"{algorithm}\"\n{keys}\nstore = \"{}\"\non_store_error = \"closed\"\n{BY_API_KEY}",
            redis.url()
        );
        let (one, _) = setup.edge(&format!("{algorithm}-1"), &section)?;
        let (two, _) = setup.edge(&format!("{algorithm}-2"), &section)?;
        let key = [("x-api-key", algorithm)];
        let mut answers = Vec::new();
        for i in 0..allowed + 4 {
            answers.push(get(if i % 2 == 0 { &one } else { &two }, &key).await);
        }
        let got: Vec<u16> = answers.iter().map(|a| a.status).collect();
        let mut expected = vec![200; allowed];
        expected.extend([429; 4]);
        assert_eq!(got, expected, "{algorithm}: one limit across both edges");
        // The remaining count goes down across edges: the counter is shared.
        let remaining: Vec<String> =
            answers[..allowed].iter().map(|a| a.header("x-ratelimit-remaining").to_string()).collect();
        let expected: Vec<String> = (0..allowed).rev().map(|r| r.to_string()).collect();
        assert_eq!(remaining, expected, "{algorithm}");
        assert!(answers[allowed].header("retry-after").parse::<u64>().is_ok_and(|s| s >= 1), "{algorithm}");
        // The client's key is in Redis, with an expiry.
        let tag = match algorithm {
            "token_bucket" => "tb",
            "fixed_window" => "fw",
            "sliding_log" => "sl",
            _ => "sw",
        };
        let redis_key = format!("eddy:rl:{{api-key:{algorithm}}}:{tag}");
        let ttl = redis_cli(&["-p", &redis.port.to_string(), "PTTL", &redis_key])?;
        assert!(ttl.trim().parse::<i64>().is_ok_and(|ms| ms > 0), "{algorithm}: {redis_key} PTTL {ttl}");
        for edge in [&one, &two] {
            let stats = stats(edge).await;
            assert_eq!(stats["rate_limit"]["store_errors"], 0, "{algorithm}");
            assert!(metrics(edge).await.contains("store=\"redis\""), "{algorithm}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_outage_fails_open_or_closed_as_configured_and_limits_return_with_redis() -> Result<()> {
    let setup = Setup::new();
    let port = free_port();
    let mut redis = RedisServer::start(port, setup.dir.path(), &[])?;
    let base = format!("algorithm = \"sliding_log\"\nrate = \"3/h\"\nstore = \"{}\"\n{BY_API_KEY}", redis.url());
    let (open, _) = setup.edge("open", &format!("{base}\non_store_error = \"open\""))?;
    let (closed, _) = setup.edge("closed", &format!("{base}\non_store_error = \"closed\""))?;
    let open_key = [("x-api-key", "open-client")];
    let closed_key = [("x-api-key", "closed-client")];
    assert_eq!(statuses(&[&open], 4, &open_key).await, vec![200, 200, 200, 429]);
    assert_eq!(statuses(&[&closed], 4, &closed_key).await, vec![200, 200, 200, 429]);

    redis.kill();
    // Fail open: the client that Redis had refused gets through again, but only up to the per-edge
    // ceiling (the same policy, counted locally).
    let during = statuses(&[&open], 5, &open_key).await;
    assert_eq!(during, vec![200, 200, 200, 429, 429], "fail open within the local ceiling");
    let limits = stats(&open).await["rate_limit"].clone();
    assert_eq!(limits["failed_open"], 3);
    assert!(limits["store_errors"].as_u64().is_some_and(|n| n >= 1), "{limits}");
    // Fail closed: refused with 503 and Retry-After.
    let refused = get(&closed, &closed_key).await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.header("retry-after"), "1");
    assert_eq!(stats(&closed).await["rate_limit"]["unavailable"], 1);

    // Redis comes back (empty) on the same port; the edges reconnect by themselves.
    let redis = RedisServer::start(port, setup.dir.path(), &[])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut first = get(&closed, &closed_key).await;
    while first.status == 503 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        first = get(&closed, &closed_key).await;
    }
    assert_eq!(first.status, 200, "the closed edge serves again once Redis answers");
    assert_eq!(statuses(&[&closed], 3, &closed_key).await, vec![200, 200, 429], "and Redis's limit holds");
    // The open edge's local ceiling for this client is used up, so a 200 now can only come from Redis.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut first = get(&open, &open_key).await;
    while first.status == 429 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        first = get(&open, &open_key).await;
    }
    assert_eq!(first.status, 200, "the open edge uses Redis again");
    assert_eq!(statuses(&[&open], 3, &open_key).await, vec![200, 200, 429]);
    let keys = redis_cli(&["-p", &redis.port.to_string(), "--scan", "--pattern", "eddy:rl:*"])?;
    assert!(keys.contains("{api-key:open-client}") && keys.contains("{api-key:closed-client}"), "{keys}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_redis_costs_a_short_timeout_not_a_hung_request() -> Result<()> {
    let setup = Setup::new();
    let redis = RedisServer::start(free_port(), setup.dir.path(), &[])?;
    let section = format!(
        "algorithm = \"fixed_window\"\nrate = \"100/h\"\nstore = \"{}\"\non_store_error = \"closed\"",
        redis.url()
    );
    let (edge, _) = setup.edge("stalled", &section)?;
    assert_eq!(get(&edge, &[]).await.status, 200);
    eddy_tests::signal(redis.child.id(), "STOP")?;
    let started = Instant::now();
    let answer = get(&edge, &[]).await;
    let waited = started.elapsed();
    // Resume before asserting, so that a failure does not leave Redis stopped (the guard kills it anyway).
    eddy_tests::signal(redis.child.id(), "CONT")?;
    assert_eq!(answer.status, 503, "a Redis that does not answer is a store error");
    assert!(waited < Duration::from_secs(2), "the request waited {waited:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut status = get(&edge, &[]).await.status;
    while status == 503 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = get(&edge, &[]).await.status;
    }
    assert_eq!(status, 200, "served again once Redis answers");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_three_node_redis_cluster_works() -> Result<()> {
    let setup = Setup::new();
    let mut nodes = Vec::new();
    for i in 0..3 {
        let dir = setup.dir.path().join(format!("node{i}"));
        std::fs::create_dir(&dir)?;
        let port = free_port();
        let conf = dir.join("nodes.conf").display().to_string();
        nodes.push(RedisServer::start(port, &dir, &["--cluster-enabled", "yes", "--cluster-config-file", &conf])?);
    }
    let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
    let mut create = vec!["--cluster", "create"];
    create.extend(addrs.iter().map(String::as_str));
    create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
    redis_cli(&create)?;
    for node in &nodes {
        wait_until("cluster_state:ok", Duration::from_secs(20), || {
            redis_cli(&["-p", &node.port.to_string(), "CLUSTER", "INFO"])
                .is_ok_and(|info| info.contains("cluster_state:ok"))
        })?;
    }
    let store = format!("redis+cluster://{}", addrs.join(","));
    let section = format!(
        "algorithm = \"sliding_window\"\nrate = \"4/h\"\nstore = \"{store}\"\non_store_error = \"closed\"\n{BY_API_KEY}"
    );
    let (one, _) = setup.edge("cluster-1", &section)?;
    let (two, _) = setup.edge("cluster-2", &section)?;
    // Several clients, so that keys land on different nodes; each gets exactly its quota across both edges.
    for client in ["alpha", "bravo", "charlie", "delta", "echo"] {
        let got = statuses(&[&one, &two], 6, &[("x-api-key", client)]).await;
        assert_eq!(got, vec![200, 200, 200, 200, 429, 429], "client {client}");
    }
    for edge in [&one, &two] {
        assert_eq!(stats(edge).await["rate_limit"]["store_errors"], 0);
    }
    let mut holders = 0;
    for node in &nodes {
        let keys = redis_cli(&["-p", &node.port.to_string(), "--scan", "--pattern", "eddy:rl:*"])?;
        holders += usize::from(!keys.trim().is_empty());
    }
    assert!(holders >= 2, "keys should spread over the cluster's nodes");
    Ok(())
}
