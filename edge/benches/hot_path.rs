//! Micro-benchmarks of the pieces every cache hit goes through: building the cache key, the storage
//! lookup (S3-FIFO, TinyLFU, LRU), building the response headers (`from_object` + `finish_headers`),
//! formatting the access line (by hand, and through tracing-subscriber as it was before), and the
//! smaller pieces (client id, playlist check, request id, preconditions).
//!
//! Run: `cargo bench -p eddy-edge --bench hot_path` (a few seconds per benchmark).

use std::hint::black_box;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};

use eddy_edge::access_log::line::Line;
use eddy_edge::cache::policy::{judge, CacheRules};
use eddy_edge::cache::{CacheKey, CachedObject, Storage};
use eddy_edge::config::{CacheConfig, Config, Eviction};
use eddy_edge::identity::ClientId;
use eddy_edge::metrics::CacheResult;
use eddy_edge::phases::respond::{self, Outcome};
use eddy_edge::state::Edge;

fn segment(size: usize) -> CachedObject {
    let rules = CacheRules::from_config(&CacheConfig::default());
    let request = http::Request::get("http://edge.example/v/720p/seg_00042.ts").body(()).expect("static request");
    let request = request.into_parts().0;
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp2t"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=86400"));
    headers.insert(header::ETAG, HeaderValue::from_static("\"5f2a9c0e41\""));
    headers.insert(header::LAST_MODIFIED, HeaderValue::from_static("Mon, 01 Jan 2024 00:00:00 GMT"));
    headers.insert(header::DATE, HeaderValue::from_static("Mon, 01 Jan 2024 00:00:00 GMT"));
    let cacheability = judge(&rules, &request, StatusCode::OK, &headers, "/v/720p/seg_00042.ts", SystemTime::now());
    CachedObject::new(StatusCode::OK, headers, Bytes::from(vec![7u8; size]), cacheability, Instant::now())
}

fn cache_key(c: &mut Criterion) {
    let ignored = vec!["token".to_string(), "sid".to_string()];
    c.bench_function("cache_key/path_only", |b| {
        b.iter(|| CacheKey::primary(black_box("Edge.Example"), black_box("/v/720p/seg_00042.ts"), None, &[]))
    });
    c.bench_function("cache_key/query_with_ignored_params", |b| {
        b.iter(|| {
            CacheKey::primary(
                black_box("edge.example:8080"),
                black_box("/v/720p/seg_00042.ts"),
                Some(black_box("token=8f3e1c2a&start=10&sid=77")),
                &ignored,
            )
        })
    });
}

fn lookup(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a tokio runtime");
    for eviction in [Eviction::TinyLfu, Eviction::Lru, Eviction::S3Fifo] {
        let storage = Storage::new(256 << 20, eviction);
        let object = Arc::new(segment(64 * 1024));
        let keys: Vec<CacheKey> = (0..1000)
            .map(|i| CacheKey::primary("edge.example", &format!("/v/720p/seg_{i:05}.ts"), None, &[]))
            .collect();
        runtime.block_on(async {
            for key in &keys {
                storage.insert(key, &HeaderMap::new(), &[], object.clone()).await;
            }
            storage.settle().await;
        });
        let request = HeaderMap::new();
        let name = format!("lookup/hit_{eviction:?}").to_lowercase();
        let mut next = 0;
        c.bench_function(&name, |b| {
            b.iter(|| {
                next = (next + 1) % keys.len();
                runtime.block_on(storage.get(&keys[next], &request))
            })
        });
        let missing = CacheKey::primary("edge.example", "/not/there.ts", None, &[]);
        c.bench_function(&format!("lookup/miss_{eviction:?}").to_lowercase(), |b| {
            b.iter(|| runtime.block_on(storage.get(black_box(&missing), &request)))
        });
    }
}

fn headers(c: &mut Criterion) {
    let object = segment(1024 * 1024);
    let cors = HeaderValue::from_static("*");
    let mut request = HeaderMap::new();
    request.insert(header::HOST, HeaderValue::from_static("edge.example"));
    request.insert(header::USER_AGENT, HeaderValue::from_static("bench"));
    c.bench_function("respond/hit_headers", |b| {
        b.iter(|| {
            let now = Instant::now();
            let ttl = match object.lifecycle(now) {
                eddy_edge::cache::Lifecycle::Fresh { ttl } => ttl.as_secs(),
                _ => 0,
            };
            let mut outcome = Outcome::served(
                respond::from_object(&object, &Method::GET, black_box(&request), now),
                CacheResult::Hit,
                format!("hit; ttl={ttl}"),
                true,
            );
            respond::finish_headers(&mut outcome, Some(&cors));
            outcome
        })
    });
    let mut ranged = request.clone();
    ranged.insert(header::RANGE, HeaderValue::from_static("bytes=1000-65535"));
    c.bench_function("respond/range_headers", |b| {
        b.iter(|| respond::from_object(&object, &Method::GET, black_box(&ranged), Instant::now()))
    });
}

fn access_line(c: &mut Criterion) {
    let line = Line {
        method: "GET",
        path: "/v/720p/seg_00042.ts",
        status: 200,
        cache: "HIT",
        bytes: 1024,
        // As the edge computes it: elapsed seconds × 1000, which rarely prints short (0.040330000000000005).
        duration_ms: std::time::Duration::from_nanos(40_330).as_secs_f64() * 1000.0,
        client: "ip:127.0.0.1",
        complete: true,
        request_id: "1cfcce00000000000001",
        detail: None,
    };
    c.bench_function("access_line/by_hand", |b| {
        b.iter(|| {
            black_box(&line).render(SystemTime::now(), |text| {
                black_box(text.len());
            })
        })
    });
    // The subscriber every Eddy binary installs, writing to nowhere.
    let subscriber = eddy_shared::logging::subscriber("info", std::io::sink, false);
    tracing::subscriber::with_default(subscriber, || {
        c.bench_function("access_line/tracing_subscriber", |b| b.iter(|| black_box(&line).trace()));
    });
}

/// The smaller pieces every hit runs (issue 18, goal 2): who the client is, whether the answer is a
/// playlist (prefetch), the request id, and the preconditions of an unconditional request.
fn hit_pieces(c: &mut Criterion) {
    let config = Config::parse(r#"origins = ["http://127.0.0.1:9"]"#, Path::new("edge.toml")).expect("config");
    let edge = Edge::new(config).expect("an edge");
    let settings = edge.settings();
    let peer: SocketAddr = "127.0.0.1:40000".parse().expect("address");
    let mut request = HeaderMap::new();
    request.insert(header::HOST, HeaderValue::from_static("edge.example"));
    request.insert(header::USER_AGENT, HeaderValue::from_static("bench"));
    c.bench_function("hit_pieces/client_id_peer", |b| {
        b.iter(|| ClientId::of(&settings.identity, black_box(&request), peer))
    });
    c.bench_function("hit_pieces/may_be_playlist_segment", |b| {
        b.iter(|| eddy_edge::prefetch::may_be_playlist(black_box("/v/720p/seg_00042.ts"), Some("video/mp2t")))
    });
    c.bench_function("hit_pieces/request_id", |b| b.iter(|| edge.next_request_id().header_value()));
    let object = segment(1024);
    c.bench_function("hit_pieces/preconditions_unconditional", |b| {
        b.iter(|| respond::preconditions(black_box(&request), &Method::GET, StatusCode::OK, &object.headers))
    });
}

criterion_group!(benches, cache_key, lookup, headers, access_line, hit_pieces);
criterion_main!(benches);
