//! A fleet of real `eddy-edge` processes on 127.0.0.1: consistent-hash peering (each key has one
//! owner, which alone asks the origin), a member dying mid-run, and a shield tier.
//!
//! The members find each other through a peers file written once they are listening (their ports
//! come from port 0), which also exercises `cluster.peers_file` being reread.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use eddy_tests::{start_edge, Edge};
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

const SECRET: &str = "fleet-secret-of-the-tests";
/// What every client asks for, whichever edge it reaches: a CDN host name, as in production.
const HOST: &str = "cdn.test";
const OBJECTS: usize = 200;
const OBJECT_BYTES: usize = 16 * 1024;

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().pool_max_idle_per_host(64).build().expect("client")
}

/// An origin serving `/obj/N` (16 KiB, cacheable for an hour) and counting what it is asked.
async fn origin() -> MockServer {
    let origin = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path_regex(r"^/obj/\d+$"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("cache-control", "max-age=3600")
                .insert_header("content-type", "application/octet-stream")
                .set_body_bytes(vec![b'x'; OBJECT_BYTES]),
        )
        .mount(&origin)
        .await;
    origin
}

async fn origin_requests(origin: &MockServer) -> usize {
    origin.received_requests().await.map(|r| r.len()).unwrap_or(0)
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().expect("temp config");
    file.write_all(text.as_bytes()).expect("write config");
    file
}

async fn stats(edge: &Edge) -> serde_json::Value {
    let response = client().get(edge.admin_url("/stats")).send().await.expect("stats");
    serde_json::from_slice(&response.bytes().await.expect("body")).expect("stats json")
}

/// Writes the peers file in one step (a rename), so a member never reads half of it.
fn write_peers(path: &Path, edges: &[&Edge]) {
    let text: String = edges.iter().map(|e| format!("http://{} admin=http://{}\n", e.addr, e.admin)).collect();
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text).expect("peers file");
    std::fs::rename(&temporary, path).expect("peers file in place");
}

/// Waits until every edge's `/stats` lists `members` fleet members.
async fn wait_for_fleet(edges: &[&Edge], members: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for edge in edges {
        loop {
            let seen = stats(edge).await["fleet_members"].as_array().map_or(0, Vec::len);
            if seen == members {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{} sees {seen} members, not {members}", edge.addr);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

struct Fleet {
    edges: Vec<Edge>,
    _config: tempfile::NamedTempFile,
    _dir: tempfile::TempDir,
}

/// `count` edges in front of `origin`: a fleet sharing a peers file, or (`clustered = false`)
/// edges that stand alone, for comparison.
async fn fleet(origin: &MockServer, count: usize, clustered: bool) -> Fleet {
    let dir = tempfile::tempdir().expect("tempdir");
    let peers = dir.path().join("peers.txt");
    std::fs::write(&peers, "").expect("empty peers file");
    let text = if clustered {
        format!("[cluster]\npeers_file = {:?}\nsecret = {SECRET:?}\n", peers.display().to_string())
    } else {
        String::new()
    };
    let config = config_file(&text);
    let edges: Vec<Edge> = (0..count)
        .map(|_| {
            start_edge(&["--config", config.path().to_str().expect("utf8"), "--origin", &origin.uri()]).expect("edge")
        })
        .collect();
    if clustered {
        let all: Vec<&Edge> = edges.iter().collect();
        write_peers(&peers, &all);
        wait_for_fleet(&all, count).await;
    }
    Fleet { edges, _config: config, _dir: dir }
}

/// A small deterministic shuffle (the run must be the same every time).
fn shuffled<T>(mut items: Vec<T>, mut seed: u64) -> Vec<T> {
    for i in (1..items.len()).rev() {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        items.swap(i, (seed >> 33) as usize % (i + 1));
    }
    items
}

/// GETs `/obj/N` for each (edge, N), 16 at a time, with the fleet's Host; returns how many did not
/// come back whole with 200.
async fn run(edges: &[&Edge], requests: Vec<(usize, usize)>) -> usize {
    use futures::StreamExt;
    let client = client();
    let results: Vec<bool> = futures::stream::iter(requests)
        .map(|(edge, object)| {
            let client = client.clone();
            let url = edges[edge].url(&format!("/obj/{object}"));
            async move {
                match client.get(&url).header("host", HOST).send().await {
                    Ok(response) if response.status() == 200 => {
                        response.bytes().await.is_ok_and(|body| body.len() == OBJECT_BYTES)
                    }
                    _ => false,
                }
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    results.iter().filter(|ok| !**ok).count()
}

/// Each object once at each edge, in a shuffled order.
fn every_object_at_every_edge(edges: usize, seed: u64) -> Vec<(usize, usize)> {
    shuffled((0..OBJECTS).flat_map(|o| (0..edges).map(move |e| (e, o))).collect(), seed)
}

async fn cached_bytes(edges: &[&Edge]) -> u64 {
    let mut total = 0;
    for edge in edges {
        total += stats(edge).await["cache_bytes"].as_u64().unwrap_or(0);
    }
    total
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_asks_the_origin_once_per_object_and_holds_one_copy() {
    let catalogue = (OBJECTS * OBJECT_BYTES) as f64;

    let alone_origin = origin().await;
    let alone = fleet(&alone_origin, 3, false).await;
    let alone_edges: Vec<&Edge> = alone.edges.iter().collect();
    assert_eq!(run(&alone_edges, every_object_at_every_edge(3, 7)).await, 0);
    let alone_requests = origin_requests(&alone_origin).await;
    let alone_copies = cached_bytes(&alone_edges).await as f64 / catalogue;

    let fleet_origin = origin().await;
    let fleet = fleet(&fleet_origin, 3, true).await;
    let edges: Vec<&Edge> = fleet.edges.iter().collect();
    assert_eq!(run(&edges, every_object_at_every_edge(3, 7)).await, 0, "every request answered whole");
    let fleet_requests = origin_requests(&fleet_origin).await;
    let fleet_copies = cached_bytes(&edges).await as f64 / catalogue;

    eprintln!(
        "3 edges, {OBJECTS} objects, each asked once at every edge: origin requests {alone_requests} alone, \
         {fleet_requests} as a fleet; cached bytes {alone_copies:.2}x the catalogue alone, {fleet_copies:.2}x as a fleet"
    );
    assert_eq!(alone_requests, 3 * OBJECTS, "edges alone each ask the origin");
    assert_eq!(fleet_requests, OBJECTS, "the fleet asks the origin once per object");
    assert!((2.9..3.3).contains(&alone_copies), "{alone_copies}");
    assert!((0.95..1.15).contains(&fleet_copies), "one copy in the fleet (metadata included): {fleet_copies}");
    // Two of every three requests were filled from a peer, spread over the members.
    let mut peer_fills = 0;
    for edge in &edges {
        let stats = stats(edge).await;
        let fills = stats["peer_fills"].as_u64().unwrap_or(0);
        assert!(fills > 0, "every member fills from its peers: {stats}");
        assert!(stats["fleet_requests"].as_u64().unwrap_or(0) > 0, "and serves them: {stats}");
        peer_fills += fills;
    }
    assert_eq!(peer_fills as usize, 2 * OBJECTS);

    // What an operator watches: `eddy-edge stats --fleet` from any member.
    let output = std::process::Command::new(eddy_tests::bin_path("eddy-edge"))
        .args(["stats", "--fleet", "--admin", &format!("http://{}", edges[0].admin)])
        .output()
        .expect("eddy-edge stats runs");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text} {}", String::from_utf8_lossy(&output.stderr));
    for edge in &edges {
        assert!(text.lines().any(|l| l.starts_with(&format!("http://{} ", edge.addr))), "a row per member: {text}");
    }
    let total: Vec<&str> = text.lines().last().unwrap_or_default().split_whitespace().collect();
    assert_eq!(total.first(), Some(&"fleet"), "{text}");
    assert_eq!(total.get(1), Some(&"600"), "every request counted once, at the edge the viewer used: {text}");
    assert_eq!(total.get(3), Some(&"200"), "the fleet's origin requests: {text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_a_member_mid_run_costs_no_client_an_error() {
    let origin = origin().await;
    let mut fleet = fleet(&origin, 3, true).await;
    let first_half: Vec<(usize, usize)> = shuffled((0..OBJECTS / 2).map(|o| (o % 3, o)).collect(), 11);
    {
        let edges: Vec<&Edge> = fleet.edges.iter().collect();
        assert_eq!(run(&edges, first_half).await, 0);
    }
    // The third member dies; viewers now reach only the other two (as a load balancer would send
    // them), which must take over its keys without a single failed request.
    let mut dead = fleet.edges.pop().expect("three edges");
    dead.process.terminate(Duration::from_secs(10)).expect("member stops");
    let survivors: Vec<&Edge> = fleet.edges.iter().collect();
    let everything: Vec<(usize, usize)> = shuffled((0..OBJECTS).map(|o| (o % 2, o)).collect(), 13);
    assert_eq!(run(&survivors, everything).await, 0, "no request failed after the member died");
    // Its keys moved to the survivors; the ones it owned were fetched once more at most.
    let requests = origin_requests(&origin).await;
    assert!(requests <= OBJECTS + OBJECTS / 2, "{requests}");
    let resting: usize = {
        let mut total = 0;
        for edge in &survivors {
            let stats = stats(edge).await;
            total += stats["fleet_members"].as_array().map_or(0, |m| m.iter().filter(|m| m["resting"] == true).count());
        }
        total
    };
    assert!(resting >= 1, "the dead member rests on the survivors that tried it");
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_a_shield_the_origin_sees_one_request_per_object_however_many_edges_miss() {
    let origin = origin().await;
    let shield_config = config_file("");
    let shield = start_edge(&["--config", shield_config.path().to_str().expect("utf8"), "--origin", &origin.uri()])
        .expect("shield");
    let edge_config = config_file(&format!("[origin]\nshield = \"http://{}\"\n", shield.addr));
    let edges: Vec<Edge> = (0..2)
        .map(|_| {
            start_edge(&["--config", edge_config.path().to_str().expect("utf8"), "--origin", &origin.uri()])
                .expect("edge")
        })
        .collect();
    let edge_refs: Vec<&Edge> = edges.iter().collect();
    // Both edges miss every object at the same moment.
    let requests: Vec<(usize, usize)> = (0..OBJECTS / 2).flat_map(|o| [(0, o), (1, o)]).collect();
    assert_eq!(run(&edge_refs, requests).await, 0);
    let mut per_path: HashMap<String, usize> = HashMap::new();
    for request in origin.received_requests().await.unwrap_or_default() {
        *per_path.entry(request.url.path().to_string()).or_default() += 1;
    }
    assert_eq!(per_path.len(), OBJECTS / 2);
    assert!(per_path.values().all(|&n| n == 1), "one origin request per object: {per_path:?}");
    for edge in &edges {
        let stats = stats(edge).await;
        assert_eq!(stats["shield_fills"].as_u64(), Some((OBJECTS / 2) as u64), "{stats}");
        assert_eq!(stats["origin_requests"].as_u64(), Some(0), "{stats}");
    }

    // The shield dies: the edges go to the origin themselves, and no viewer notices.
    let mut shield = shield;
    shield.process.terminate(Duration::from_secs(10)).expect("shield stops");
    let more: Vec<(usize, usize)> = (OBJECTS / 2..OBJECTS).map(|o| (o % 2, o)).collect();
    assert_eq!(run(&edge_refs, more).await, 0, "no request failed without the shield");
    assert_eq!(origin_requests(&origin).await, OBJECTS);
}

/// The fleet's marker is a secret: a viewer who sends `eddy-peer` without it is a viewer (limited,
/// and sent on to the key's owner like anyone else), and neither fleet header ever reaches the origin.
#[tokio::test(flavor = "multi_thread")]
async fn a_viewer_cannot_pass_as_a_peer_and_the_fleet_headers_stay_in_the_fleet() {
    let origin = origin().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let peers = dir.path().join("peers.txt");
    std::fs::write(&peers, "").expect("peers file");
    let config = config_file(&format!(
        "[cluster]\npeers_file = {:?}\nsecret = {SECRET:?}\n[rate_limit]\nenabled = true\nalgorithm = \"fixed_window\"\nrate = \"3/min\"\n",
        peers.display().to_string()
    ));
    let edges: Vec<Edge> = (0..2)
        .map(|_| {
            start_edge(&["--config", config.path().to_str().expect("utf8"), "--origin", &origin.uri()]).expect("edge")
        })
        .collect();
    let all: Vec<&Edge> = edges.iter().collect();
    write_peers(&peers, &all);
    wait_for_fleet(&all, 2).await;

    let client = client();
    let get = |value: &'static str, object: usize| {
        let client = client.clone();
        let url = edges[0].url(&format!("/obj/{object}"));
        async move {
            let mut request = client
                .get(&url)
                .header("host", HOST)
                .header("eddy-hops", "9")
                .header("x-forwarded-for", "203.0.113.7")
                .header("x-forwarded-proto", "https");
            if !value.is_empty() {
                request = request.header("eddy-peer", value);
            }
            request.send().await.expect("response").status().as_u16()
        }
    };
    let forged: Vec<u16> = futures::future::join_all((0..4).map(|o| get("not-the-fleet-secret", o))).await;
    let mut sorted = forged.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, [200, 200, 200, 429], "a forged marker is limited like any viewer: {forged:?}");
    // With the secret, the same edge takes it as a member's request: not limited again.
    for object in 10..14 {
        assert_eq!(get(SECRET, object).await, 200);
    }
    for request in origin.received_requests().await.unwrap_or_default() {
        for name in ["eddy-peer", "eddy-hops"] {
            assert!(!request.headers.contains_key(name), "{name} reached the origin: {:?}", request.headers);
        }
        // What a member forwards for its viewer is believed; what a viewer claims is not.
        let object: usize = request.url.path().trim_start_matches("/obj/").parse().unwrap_or(0);
        let header = |name: &str| request.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let (viewer, proto) = if object >= 10 { ("203.0.113.7", "https") } else { ("127.0.0.1", "http") };
        assert_eq!(header("x-forwarded-for"), viewer, "{}", request.url);
        assert_eq!(header("x-forwarded-proto"), proto, "{}", request.url);
    }
}

/// A member that is up but broken (it answers 503 to everything) must not answer errors for its share
/// of the keys: it is rested like a failing origin, and its keys go to the next member.
#[tokio::test(flavor = "multi_thread")]
async fn a_member_that_answers_errors_is_passed_over() {
    let origin = origin().await;
    let broken = MockServer::start().await;
    Mock::given(method("GET")).respond_with(ResponseTemplate::new(503)).mount(&broken).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let peers = dir.path().join("peers.txt");
    std::fs::write(&peers, "").expect("peers file");
    let config =
        config_file(&format!("[cluster]\npeers_file = {:?}\nsecret = {SECRET:?}\n", peers.display().to_string()));
    let edges: Vec<Edge> = (0..2)
        .map(|_| {
            start_edge(&["--config", config.path().to_str().expect("utf8"), "--origin", &origin.uri()]).expect("edge")
        })
        .collect();
    let text: String = edges.iter().map(|e| format!("http://{}\n", e.addr)).collect::<String>() + &broken.uri() + "\n";
    let temporary = peers.with_extension("tmp");
    std::fs::write(&temporary, text).expect("peers");
    std::fs::rename(&temporary, &peers).expect("peers in place");
    let all: Vec<&Edge> = edges.iter().collect();
    wait_for_fleet(&all, 3).await;

    let requests: Vec<(usize, usize)> = (0..OBJECTS).map(|o| (o % 2, o)).collect();
    assert_eq!(run(&all, requests).await, 0, "no viewer sees the broken member's errors");
    assert!(!broken.received_requests().await.unwrap_or_default().is_empty(), "the broken member owned some keys");
    let resting = stats(&edges[0]).await["fleet_members"]
        .as_array()
        .map_or(0, |m| m.iter().filter(|m| m["resting"] == true).count());
    assert_eq!(resting, 1, "the broken member rests");
}
