//! The admin listener, on its own address: `GET /metrics` (Prometheus text), `GET /stats` (JSON),
//! `GET /healthz`, and `POST /purge?url=…` guarded by the bearer token from the config.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::state::Edge;

pub async fn handle(edge: Arc<Edge>, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path();
    let response = match (request.method(), path) {
        (&Method::GET, "/metrics") => {
            edge.storage.settle().await;
            text(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", edge.metrics.encode(&edge.gauges()))
        }
        (&Method::GET, "/stats") => {
            edge.storage.settle().await;
            let mut stats = edge.metrics.stats(&edge.gauges());
            stats.fleet_members = edge.settings().upstream.fleet_members();
            match serde_json::to_string_pretty(&stats) {
                Ok(json) => text(StatusCode::OK, "application/json", json),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", e.to_string()),
            }
        }
        (&Method::GET, "/healthz") => text(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::POST, "/purge") => purge(&edge, &request).await,
        (_, "/metrics" | "/stats" | "/healthz" | "/purge") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "method not allowed\n".into())
        }
        _ => text(StatusCode::NOT_FOUND, "text/plain", "admin endpoints: /metrics /stats /healthz /purge\n".into()),
    };
    Ok(response)
}

async fn purge(edge: &Edge, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(token) = &edge.config.admin.purge_token else {
        return text(
            StatusCode::FORBIDDEN,
            "text/plain",
            "purge is disabled: set admin.purge_token in the config\n".into(),
        );
    };
    let presented =
        request.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if !presented.is_some_and(|p| constant_time_eq(p.as_bytes(), token.as_bytes())) {
        let mut response = text(StatusCode::UNAUTHORIZED, "text/plain", "a valid bearer token is required\n".into());
        response.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer"));
        return response;
    }
    let target = request
        .uri()
        .query()
        .and_then(|q| url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "url").map(|(_, v)| v.into_owned()));
    let Some(target) = target else {
        return text(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "give the URL to purge: POST /purge?url=http://host/path\n".into(),
        );
    };
    let Ok(url) = url::Url::parse(&target) else {
        return text(
            StatusCode::BAD_REQUEST,
            "text/plain",
            format!("'{target}' is not an absolute URL (http://host/path)\n"),
        );
    };
    let host = match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        (None, _) => return text(StatusCode::BAD_REQUEST, "text/plain", format!("'{target}' has no host\n")),
    };
    let key = edge.cache_key(&host, url.path(), url.query());
    let purged = edge.storage.invalidate(&key).await;
    tracing::info!(key = %key, purged, "purge");
    text(
        StatusCode::OK,
        "application/json",
        format!("{{\"purged\": {purged}, \"key\": {}}}\n", serde_json::Value::String(key.to_string())),
    )
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
