//! Methods the cache does not answer (POST, PUT, DELETE, PATCH, plain OPTIONS…) go straight to the origin,
//! uncached, and invalidate what is stored for their URL (RFC 9111 §4.4).

use std::net::SocketAddr;
use std::sync::Arc;

use futures::StreamExt;
use http::request::Parts;
use http::StatusCode;
use hyper::body::Incoming;

use super::fetch::forwarded_headers;
use super::respond::{self, CacheResult, Outcome};
use super::route::Target;
use super::Edge;
use crate::body::{BodyError, EdgeBody};
use crate::cache::policy::remove_hop_by_hop;
use crate::cache::CacheKey;
use crate::origin::OriginRequest;
use crate::request_body::read_to_bytes;

/// Request bodies forwarded to the origin are buffered up to this size.
const MAX_FORWARDED_BODY: usize = 16 << 20;

pub async fn forward(edge: &Arc<Edge>, parts: &Parts, body: Incoming, target: &Target, peer: SocketAddr) -> Outcome {
    // Bounded in size and in time: a trickled body must not hold the request (and its origin
    // connection) open; nothing reaches the origin until the body is whole.
    let body = match read_to_bytes(body, MAX_FORWARDED_BODY, edge.config.body_read_timeout.0).await {
        Ok(body) => body,
        Err(error) => return Outcome::local(error.status(), &error.to_string()),
    };
    let key =
        CacheKey::primary(&target.host, &target.path, target.query.as_deref(), &edge.config.cache.ignore_query_params);
    edge.storage.invalidate(&key).await;

    let request = OriginRequest {
        method: parts.method.clone(),
        path_and_query: target.path_and_query(),
        headers: forwarded_headers(&parts.headers, peer),
        body,
    };
    let started = std::time::Instant::now();
    let sent = edge.origins.send(&request).await;
    edge.metrics.record_origin_request(started.elapsed().as_secs_f64(), sent.is_err());
    match sent {
        Ok(response) => {
            let mut headers = response.headers;
            remove_hop_by_hop(&mut headers);
            let edge = edge.clone();
            let body = response.body.map(move |chunk| {
                chunk
                    .inspect(|bytes| edge.metrics.record_bytes_from_origin(bytes.len() as u64))
                    .map_err(|e| -> BodyError { Box::new(e) })
            });
            Outcome {
                response: respond::response(response.status, headers, EdgeBody::stream(body)),
                result: CacheResult::Pass,
                cache_status: "fwd=method".into(),
                from_cache: false,
                coalesced: false,
            }
        }
        Err(error) => {
            let status = if error.is_timeout() { StatusCode::GATEWAY_TIMEOUT } else { StatusCode::BAD_GATEWAY };
            Outcome::local(status, &error.to_string())
        }
    }
}
