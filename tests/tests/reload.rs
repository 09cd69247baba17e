//! SIGHUP rereads the configuration file: new TTL rules, origins and rate limits apply to requests
//! that start afterwards; the cache is kept; a request already under way finishes as it started; a
//! file that fails its checks is refused and what was in force stays.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use eddy_tests::{bin_path, signal, spawn_until_ready, Edge};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("client")
}

/// An origin answering `GET /PATH` for every path in `paths` with `body`, cacheable for an hour,
/// after `delay`.
async fn origin(paths: &[&str], body: &str, delay: Duration) -> MockServer {
    let origin = MockServer::start().await;
    for route in paths {
        Mock::given(method("GET"))
            .and(path(*route))
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header("cache-control", "max-age=3600")
                    .set_body_string(body)
                    .set_delay(delay),
            )
            .mount(&origin)
            .await;
    }
    origin
}

/// Starts the edge on `config` alone (no command-line origin, so the file's `origins` count), with
/// stderr to `log`.
fn start(config: &Path, log: &Path) -> Edge {
    let mut command = Command::new(bin_path("eddy-edge"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .stderr(Stdio::from(std::fs::File::create(log).expect("log file")));
    let process = spawn_until_ready(command, "eddy-edge listening on", Duration::from_secs(20)).expect("edge starts");
    let addr = process.addr_after("listening on ").expect("address");
    let admin = process.addr_after("admin on ").expect("admin address");
    Edge { process, addr, admin }
}

/// Replaces the file in one step, as an editor or a deployment tool would.
fn write_config(path: &Path, text: &str) {
    let temporary = path.with_extension("new");
    std::fs::write(&temporary, text).expect("config");
    std::fs::rename(&temporary, path).expect("config in place");
}

/// Sends SIGHUP and waits until `/metrics` counts `ok` or `failed` reloads `count` times.
async fn reload(edge: &Edge, result: &str, count: u32) {
    signal(edge.process.pid(), "HUP").expect("SIGHUP");
    let wanted = format!("eddy_edge_reloads_total{{result=\"{result}\"}} {count}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = client().get(edge.admin_url("/metrics")).send().await.expect("metrics").text().await.expect("text");
        if text.lines().any(|l| l.starts_with(&wanted)) {
            return;
        }
        assert!(Instant::now() < deadline, "no '{wanted}' in /metrics:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn get(edge: &Edge, route: &str) -> (u16, String, String) {
    let response = client().get(edge.url(route)).send().await.expect("response");
    let status = response.status().as_u16();
    let cache = response.headers().get("x-cache").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    (status, cache, response.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_puts_new_origins_rules_and_limits_in_force_and_keeps_the_cache() {
    let first = origin(&["/kept.txt", "/new.txt"], "from the first origin", Duration::ZERO).await;
    let second = origin(&["/kept.txt", "/new.txt", "/short.m3u8"], "from the second origin", Duration::ZERO).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("edge.toml");
    let log = dir.path().join("edge.log");
    write_config(&config, &format!("origins = [{:?}]\n", first.uri()));
    let edge = start(&config, &log);
    assert_eq!(get(&edge, "/kept.txt").await, (200, "MISS".into(), "from the first origin".into()));

    write_config(
        &config,
        &format!(
            "origins = [{:?}]\n[rate_limit]\nenabled = true\nalgorithm = \"fixed_window\"\nrate = \"4/min\"\n",
            second.uri()
        ),
    );
    reload(&edge, "ok", 1).await;
    // The cache is kept: what was stored is served as it was.
    assert_eq!(get(&edge, "/kept.txt").await, (200, "HIT".into(), "from the first origin".into()));
    // New misses go to the new origin.
    assert_eq!(get(&edge, "/new.txt").await.2, "from the second origin");
    // The new limit holds (4 per minute: two more requests pass, the next is refused).
    assert_eq!(get(&edge, "/new.txt").await.0, 200);
    assert_eq!(get(&edge, "/new.txt").await.0, 200);
    assert_eq!(get(&edge, "/new.txt").await.0, 429);
    assert_eq!(first.received_requests().await.map_or(0, |r| r.len()), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_config_that_fails_its_checks_is_refused_and_the_one_in_force_stays() {
    let first = origin(&["/a.txt", "/b.txt"], "from the first origin", Duration::ZERO).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("edge.toml");
    let log = dir.path().join("edge.log");
    write_config(&config, &format!("origins = [{:?}]\n", first.uri()));
    let edge = start(&config, &log);
    let bad_configs =
        ["origins = [\"ftp://nowhere\"]\n", "[cache]\nsizee = 3\n", "[cluster]\npeers = [\"http://127.0.0.1:1\"]\n"];
    for (i, bad) in bad_configs.into_iter().enumerate() {
        write_config(&config, bad);
        reload(&edge, "failed", i as u32 + 1).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let line = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let refused: Vec<&str> = text.lines().filter(|l| l.contains("reload refused")).collect();
            if refused.len() > i {
                break refused[i].to_string();
            }
            assert!(Instant::now() < deadline, "no 'reload refused' line {i} in the log:\n{text}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(line.contains("edge.toml"), "the error names the file: {line}");
        assert_eq!(get(&edge, "/a.txt").await.2, "from the first origin", "the old configuration stays");
    }
    assert_eq!(get(&edge, "/b.txt").await, (200, "MISS".into(), "from the first origin".into()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_under_way_finishes_under_the_settings_it_started_with() {
    let slow = origin(&["/slow.txt"], "from the slow first origin", Duration::from_millis(1500)).await;
    let other = origin(&["/slow.txt"], "from the second origin", Duration::ZERO).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("edge.toml");
    let log = dir.path().join("edge.log");
    write_config(&config, &format!("origins = [{:?}]\n", slow.uri()));
    let edge = start(&config, &log);
    let url = edge.url("/slow.txt");
    let under_way = tokio::spawn(async move { client().get(url).send().await.expect("response").text().await });
    // Reload once the request has reached the origin.
    let deadline = Instant::now() + Duration::from_secs(10);
    while slow.received_requests().await.map_or(0, |r| r.len()) == 0 {
        assert!(Instant::now() < deadline, "the request never reached the origin");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    write_config(&config, &format!("origins = [{:?}]\n", other.uri()));
    reload(&edge, "ok", 1).await;
    let body = under_way.await.expect("task").expect("body");
    assert_eq!(body, "from the slow first origin");
    assert_eq!(other.received_requests().await.map_or(0, |r| r.len()), 0, "the fill stayed with its origin");
}
