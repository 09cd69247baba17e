//! Methods the cache does not answer (POST, PUT, DELETE, PATCH, plain OPTIONS…) go straight to the origin,
//! uncached. An unsafe method that succeeds invalidates what is stored for its URL, and for the
//! same-host URLs in the response's `Location` and `Content-Location` (RFC 9111 §4.4); a refused or
//! failed one leaves the cache alone, so nobody can empty the cache with requests the origin rejects.

use std::net::SocketAddr;
use std::sync::Arc;

use futures::StreamExt;
use http::request::Parts;
use http::{header, HeaderMap, Method};
use hyper::body::Incoming;

use super::origin_request::{self, Forwarding};
use super::respond::{self, Outcome};
use super::route::Target;
use crate::body::{BodyError, EdgeBody};
use crate::cache::policy::remove_hop_by_hop;
use crate::metrics::CacheResult;
use crate::origin::OriginRequest;
use crate::request_body::read_to_bytes;
use crate::state::Edge;

/// Request bodies forwarded to the origin are buffered up to this size.
const MAX_FORWARDED_BODY: usize = 16 << 20;

pub async fn forward(edge: &Arc<Edge>, parts: &Parts, body: Incoming, target: &Target, peer: SocketAddr) -> Outcome {
    // Bounded in size and in time: a trickled body must not hold the request (and its origin
    // connection) open; nothing reaches the origin until the body is whole.
    let body = match read_to_bytes(body, MAX_FORWARDED_BODY, edge.config.body_read_timeout.0).await {
        Ok(body) => body,
        Err(error) => return Outcome::local(error.status(), &error.to_string()),
    };
    let request = OriginRequest {
        method: parts.method.clone(),
        path_and_query: target.path_and_query(),
        headers: origin_request::for_pass(&parts.headers, &Forwarding { peer, host: &target.host, from_fleet: None }),
        body,
        first_byte_timeout: None,
    };
    let started = std::time::Instant::now();
    let sent = edge.settings().origins.send(&request).await;
    edge.metrics.record_origin_request(started.elapsed().as_secs_f64(), sent.is_err());
    match sent {
        Ok(response) => {
            let mut headers = response.headers;
            remove_hop_by_hop(&mut headers);
            if is_unsafe(&parts.method) && (response.status.is_success() || response.status.is_redirection()) {
                invalidate(edge, target, &headers).await;
            }
            let edge = edge.clone();
            let body = response.body.map(move |chunk| {
                chunk
                    .inspect(|bytes| edge.metrics.record_bytes_from_origin(bytes.len() as u64))
                    .map_err(|e| -> BodyError { Box::new(e) })
            });
            Outcome::served(
                respond::response(response.status, headers, EdgeBody::stream(body)),
                CacheResult::Pass,
                "fwd=method",
                false,
            )
        }
        Err(error) => Outcome::origin_failed(error.is_timeout(), error.to_string()),
    }
}

/// RFC 9110 §9.2.1: every method but GET, HEAD, OPTIONS and TRACE may change the resource.
fn is_unsafe(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE)
}

/// Forgets the stored copies of the request's URL and of the same-host URLs in the response's
/// `Location` and `Content-Location` (RFC 9111 §4.4; other hosts' URLs are never touched, so that
/// one origin cannot purge another's objects).
async fn invalidate(edge: &Edge, target: &Target, response: &HeaderMap) {
    edge.storage.invalidate(&edge.cache_key(&target.host, &target.path, target.query.as_deref())).await;
    let base = format!("http://{}{}", if target.host.is_empty() { "edge.invalid" } else { &target.host }, target.path);
    let Ok(base) = url::Url::parse(&base) else { return };
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        let Some(location) = response.get(&name).and_then(|v| v.to_str().ok()) else { continue };
        let Ok(url) = base.join(location) else { continue };
        let same_host =
            url.host_str() == base.host_str() && url.port_or_known_default() == base.port_or_known_default();
        if same_host && matches!(url.scheme(), "http" | "https") {
            let key = edge.cache_key(&target.host, url.path(), url.query());
            edge.storage.invalidate(&key).await;
        }
    }
}
