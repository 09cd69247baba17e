//! The HTTP API (docs/origin-api.md) and the file service for edges: thin handlers over the metadata
//! store, the object store and the pure rules in `chunks`, `tokens` and `eddy_shared::signed_url`.

mod auth;
pub mod error;
mod files;
mod uploads;
mod videos;

use std::future::Future;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderValue};
use axum::response::IntoResponse;
use axum::routing::{delete, get, post, put};
use axum::Router;

pub use files::{packaged_prefix, KEY_FILE};
pub use uploads::original_key;

use crate::service::Shared;

/// JSON bodies of the API are small; chunk bodies have their own limit (their exact size).
const JSON_BODY_LIMIT: usize = 64 * 1024;

pub fn router(origin: Shared) -> Router {
    let chunk_limit = usize::try_from(origin.config.chunk_size).unwrap_or(usize::MAX).saturating_add(1);
    // `complete` lists every chunk's ETag (64 hex characters, quotes and a comma): room for the
    // largest upload allowed.
    let most_chunks = crate::chunks::chunk_count(origin.config.max_size, origin.config.chunk_size);
    let complete_limit =
        usize::try_from(most_chunks.saturating_mul(72)).unwrap_or(usize::MAX).saturating_add(JSON_BODY_LIMIT);
    Router::new()
        .route("/v1/uploads", post(uploads::create))
        .route("/v1/uploads/{id}", get(uploads::show))
        .route("/v1/uploads/{id}/chunks/{index}", put(uploads::put_chunk).layer(DefaultBodyLimit::max(chunk_limit)))
        .route("/v1/uploads/{id}/complete", post(uploads::complete).layer(DefaultBodyLimit::max(complete_limit)))
        .route("/v1/videos", get(videos::list))
        .route("/v1/videos/{id}", get(videos::show).patch(videos::update))
        .route("/v1/videos/{id}/shares", post(videos::add_share))
        .route("/v1/videos/{id}/shares/{user}", delete(videos::remove_share))
        .route("/v1/videos/{id}/playback", get(videos::playback))
        .route("/videos/{id}/{*rest}", get(files::serve))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .fallback(|| async { error::ApiError::not_found("this path") })
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .with_state(origin)
}

async fn metrics(State(origin): State<Shared>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        origin.metrics.encode(),
    )
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    origin: Shared,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(origin)).with_graceful_shutdown(shutdown).await
}
