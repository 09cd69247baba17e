//! The resumable chunked upload, S3-multipart style: create (or resume), `PUT` chunks to presigned
//! URLs, list what arrived, complete. Completing checks every ETag and the whole file's SHA-256, then
//! stores the file once per distinct content and queues its packaging.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sha2::{Digest, Sha256};

use super::auth;
use super::error::{ApiError, ApiResult};
use crate::api::{ChunkTarget, CompleteUpload, Completed, CreateUpload, ReceivedChunk, UploadStatus};
use crate::chunks::{self, chunk_count, chunk_key, chunk_len};
use crate::meta::{CompleteOutcome, NewUpload, Upload, UploadState, Visibility};
use crate::metrics::ResultLabel;
use crate::service::{now_unix, Shared};

const MAX_FILENAME: usize = 255;

fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

fn state_name(state: UploadState) -> &'static str {
    match state {
        UploadState::Open => "open",
        UploadState::Completed => "completed",
        UploadState::Expired => "expired",
    }
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// The status of an upload, with a freshly signed URL for every chunk.
async fn status(origin: &Shared, upload: &Upload) -> ApiResult<UploadStatus> {
    let size = to_u64(upload.size);
    let chunk_size = to_u64(upload.chunk_size);
    let received: Vec<ReceivedChunk> = origin
        .meta
        .chunks(&upload.id)
        .await?
        .into_iter()
        .map(|c| ReceivedChunk { index: to_u64(c.index), etag: c.etag, size: to_u64(c.size) })
        .collect();
    let expires = to_u64(now_unix()).saturating_add(origin.config.url_ttl.as_secs());
    let base = origin.config.public_url.clone().unwrap_or_default();
    let count = chunk_count(size, chunk_size);
    let chunks = (0..count)
        .map(|index| ChunkTarget {
            index,
            size: chunk_len(size, chunk_size, index).unwrap_or(0),
            url: format!("{base}{}", chunks::presign(&origin.signing, &upload.id, index, expires)),
        })
        .collect();
    let missing = (0..count).filter(|i| !received.iter().any(|c| c.index == *i)).collect();
    Ok(UploadStatus {
        upload_id: upload.id.clone(),
        video_id: upload.video_id.clone(),
        state: state_name(upload.state).to_string(),
        filename: upload.filename.clone(),
        size,
        chunk_size,
        expires_at: upload.expires_at,
        chunks,
        received,
        missing,
    })
}

/// `POST /v1/uploads`: starts an upload, or resumes the caller's open upload of the same file.
pub async fn create(
    State(origin): State<Shared>,
    headers: HeaderMap,
    body: Result<Json<CreateUpload>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Response> {
    let user = auth::required(&origin, &headers).await?;
    let Json(request) = body.map_err(|e| ApiError::bad_request(format!("the upload request: {}", e.body_text())))?;
    if request.filename.is_empty()
        || request.filename.len() > MAX_FILENAME
        || request.filename.chars().any(char::is_control)
    {
        return Err(ApiError::bad_request(format!(
            "filename must be 1 to {MAX_FILENAME} bytes without control characters"
        )));
    }
    if request.size == 0 {
        return Err(ApiError::bad_request("size must be more than zero: an empty file is not a video"));
    }
    if request.size > origin.config.max_size {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("size {} is over this origin's limit of {} bytes", request.size, origin.config.max_size),
        ));
    }
    let size = i64::try_from(request.size).map_err(|_| ApiError::bad_request("size is too large"))?;
    let sha256 = match request.sha256.as_deref() {
        Some(text) if is_sha256_hex(text) => Some(text.to_ascii_lowercase()),
        Some(_) => return Err(ApiError::bad_request("sha256 must be 64 hexadecimal characters")),
        None => None,
    };
    if let Some(sha) = &sha256 {
        if let Some(open) = origin.meta.open_upload_for(&user.id, sha, size).await? {
            if open.expires_at > now_unix() {
                return Ok((StatusCode::OK, Json(status(&origin, &open).await?)).into_response());
            }
        }
    }
    let now = now_unix();
    let chunk_size = i64::try_from(origin.config.chunk_size).unwrap_or(i64::MAX);
    let expires_at = now.saturating_add(i64::try_from(origin.config.expire_after.as_secs()).unwrap_or(i64::MAX));
    let (upload, _video) = origin
        .meta
        .create_upload(&NewUpload {
            owner_id: &user.id,
            filename: &request.filename,
            size,
            sha256: sha256.as_deref(),
            chunk_size,
            visibility: request.visibility.unwrap_or(Visibility::Private),
            now,
            expires_at,
        })
        .await?;
    origin.metrics.uploads_created.inc();
    tracing::info!(upload = %upload.id, user = %user.name, size, "upload started");
    Ok((StatusCode::CREATED, Json(status(&origin, &upload).await?)).into_response())
}

/// The caller's own upload, or 404 (another user's upload is not told apart from a missing one).
async fn owned_upload(origin: &Shared, headers: &HeaderMap, id: &str) -> ApiResult<Upload> {
    let user = auth::required(origin, headers).await?;
    match origin.meta.upload(id).await? {
        Some(upload) if upload.owner_id == user.id => Ok(upload),
        _ => Err(ApiError::not_found(format!("upload {id}"))),
    }
}

/// `GET /v1/uploads/{id}`
pub async fn show(
    State(origin): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<UploadStatus>> {
    let upload = owned_upload(&origin, &headers, &id).await?;
    Ok(Json(status(&origin, &upload).await?))
}

fn refuse_chunk(origin: &Shared, reason: &'static str, error: ApiError) -> ApiError {
    origin.metrics.chunks_refused.get_or_create(&ResultLabel { result: reason }).inc();
    error
}

/// `PUT /v1/uploads/{id}/chunks/{index}?expires=…&signature=…`: no API token, the URL is the proof.
pub async fn put_chunk(
    State(origin): State<Shared>,
    Path((id, index)): Path<(String, u64)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let now = now_unix();
    chunks::verify_presigned(&origin.signing, &id, index, query.as_deref(), to_u64(now))
        .map_err(|e| refuse_chunk(&origin, "signature", ApiError::forbidden(e.to_string())))?;
    let upload = origin.meta.upload(&id).await?.ok_or_else(|| ApiError::not_found(format!("upload {id}")))?;
    if upload.state != UploadState::Open || upload.expires_at <= now {
        return Err(refuse_chunk(
            &origin,
            "closed",
            ApiError::new(StatusCode::GONE, format!("upload {id} is {}; start another", state_name(upload.state))),
        ));
    }
    let (size, chunk_size) = (to_u64(upload.size), to_u64(upload.chunk_size));
    let expected = chunk_len(size, chunk_size, index).ok_or_else(|| {
        refuse_chunk(
            &origin,
            "index",
            ApiError::bad_request(format!(
                "upload {id} has chunks 0 to {}, not {index}",
                chunk_count(size, chunk_size).saturating_sub(1)
            )),
        )
    })?;
    if let Some(declared) = headers.get(header::CONTENT_LENGTH) {
        let declared = declared.to_str().ok().and_then(|v| v.parse::<u64>().ok());
        if declared != Some(expected) {
            return Err(refuse_chunk(
                &origin,
                "length",
                ApiError::bad_request(format!("chunk {index} must be exactly {expected} bytes")),
            ));
        }
    }
    // Bodies are read whole; the permit bounds how many are in memory at once.
    let _permit = origin.chunk_permits.acquire().await.map_err(ApiError::internal)?;
    let limit = usize::try_from(expected).unwrap_or(usize::MAX).saturating_add(1);
    let bytes = match tokio::time::timeout(origin.config.chunk_timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => {
            return Err(refuse_chunk(
                &origin,
                "length",
                ApiError::bad_request(format!(
                    "chunk {index} must be exactly {expected} bytes (the body was longer or broke off)"
                )),
            ))
        }
        Err(_) => {
            return Err(refuse_chunk(
                &origin,
                "timeout",
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("chunk {index} did not arrive within {:?}", origin.config.chunk_timeout),
                ),
            ))
        }
    };
    if bytes.len() as u64 != expected {
        return Err(refuse_chunk(
            &origin,
            "length",
            ApiError::bad_request(format!("chunk {index} must be exactly {expected} bytes, not {}", bytes.len())),
        ));
    }
    let etag = hex::encode(Sha256::digest(&bytes));
    origin.objects.put_sealed(&chunk_key(&id, index), bytes).await?;
    origin
        .meta
        .record_chunk(&id, i64::try_from(index).unwrap_or(i64::MAX), &etag, i64::try_from(expected).unwrap_or(i64::MAX))
        .await?;
    origin.metrics.chunks_received.inc();
    origin.metrics.chunk_bytes.inc_by(expected);
    let mut response = Json(ReceivedChunk { index, etag: etag.clone(), size: expected }).into_response();
    if let Ok(value) = HeaderValue::from_str(&format!("\"{etag}\"")) {
        response.headers_mut().insert(header::ETAG, value);
    }
    Ok(response)
}

fn unquote(etag: &str) -> String {
    etag.trim().trim_start_matches("W/").trim_matches('"').to_ascii_lowercase()
}

/// `POST /v1/uploads/{id}/complete`
pub async fn complete(
    State(origin): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<CompleteUpload>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Completed>> {
    let upload = owned_upload(&origin, &headers, &id).await?;
    let Json(request) = body.map_err(|e| ApiError::bad_request(format!("the complete request: {}", e.body_text())))?;
    if upload.state != UploadState::Open {
        return Err(ApiError::conflict(format!("upload {id} is {}", state_name(upload.state))));
    }
    let count = chunk_count(to_u64(upload.size), to_u64(upload.chunk_size));
    if request.etags.len() as u64 != count {
        return Err(ApiError::bad_request(format!("etags must list all {count} chunks, not {}", request.etags.len())));
    }
    let received = origin.meta.chunks(&id).await?;
    for (index, claimed) in request.etags.iter().enumerate() {
        let held = received.iter().find(|c| c.index == index as i64);
        match held {
            None => return Err(ApiError::bad_request(format!("chunk {index} has not been received"))),
            Some(chunk) if chunk.etag != unquote(claimed) => {
                return Err(ApiError::bad_request(format!(
                    "chunk {index}: the origin holds ETag {}, not {claimed}; send the chunk again",
                    chunk.etag
                )))
            }
            Some(_) => {}
        }
    }
    let keys: Vec<String> = (0..count).map(|i| chunk_key(&id, i)).collect();

    // The SHA-256 comes from the bytes received, never from the client's word: linking an upload to
    // stored content on a claimed hash alone would hand anyone who knows a hash the content.
    let sha = hash_chunks(&origin, &keys).await?;
    if let Some(declared) = &upload.sha256 {
        if declared != &sha {
            return Err(ApiError::bad_request(format!(
                "the chunks put together have SHA-256 {sha}, not the declared {declared}"
            )));
        }
    }
    let stored = origin.meta.content(&sha).await?.is_some();
    if !stored {
        origin.objects.assemble(&keys, &original_key(&sha), Some(&sha)).await?;
    }
    let outcome = origin.meta.complete_upload(&id, &sha, upload.size, now_unix()).await?;
    origin.objects.delete_prefix(&format!("uploads/{id}/")).await?;
    let deduplicated = outcome == CompleteOutcome::Deduplicated;
    origin
        .metrics
        .uploads_completed
        .get_or_create(&ResultLabel { result: if deduplicated { "deduplicated" } else { "stored" } })
        .inc();
    if !deduplicated {
        origin.jobs_queued.notify_one();
    }
    tracing::info!(upload = %id, video = %upload.video_id, %sha, deduplicated, "upload complete");
    let state = match origin.meta.content(&sha).await? {
        Some(content) => super::videos::state_of(&content.state).0,
        None => "queued",
    };
    Ok(Json(Completed { video_id: upload.video_id, sha256: sha, deduplicated, state: state.to_string() }))
}

pub fn original_key(sha: &str) -> String {
    format!("originals/{sha}")
}

/// The SHA-256 of the chunks' bytes in order, reading one chunk at a time.
async fn hash_chunks(origin: &Shared, keys: &[String]) -> ApiResult<String> {
    let mut hasher = Sha256::new();
    for key in keys {
        let bytes = origin
            .objects
            .get_sealed(key)
            .await?
            .ok_or_else(|| ApiError::internal(format!("chunk {key} is missing from storage")))?;
        hasher.update(&bytes);
    }
    Ok(hex::encode(hasher.finalize()))
}
