//! Videos: their state, who may watch them (owner, share list, visibility), and signed playback URLs.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use eddy_shared::signed_url;

use super::auth;
use super::error::{ApiError, ApiResult};
use crate::api::{Playback, Share, UpdateVideo, VideoStatus};
use crate::meta::{ContentState, User, Video, Visibility};
use crate::service::{now_unix, Origin, Shared};

/// The API's name for a packaging state, its percent and its failure reason.
pub fn state_of(state: &ContentState) -> (&'static str, Option<u8>, Option<String>) {
    match state {
        ContentState::Queued => ("queued", None, None),
        ContentState::Packaging { percent } => {
            ("packaging", Some(u8::try_from((*percent).clamp(0, 100)).unwrap_or(0)), None)
        }
        ContentState::Ready => ("ready", None, None),
        ContentState::Failed { reason } => ("failed", None, Some(reason.clone())),
    }
}

/// Whether `user` (or an anonymous caller) may watch `video`.
pub async fn may_watch(origin: &Origin, video: &Video, user: Option<&User>) -> ApiResult<bool> {
    if video.visibility != Visibility::Private {
        return Ok(true);
    }
    let Some(user) = user else { return Ok(false) };
    Ok(user.id == video.owner_id || origin.meta.is_shared_with(&video.id, &user.id).await?)
}

async fn find(origin: &Origin, id: &str) -> ApiResult<Video> {
    origin.meta.video(id).await?.ok_or_else(|| ApiError::not_found(format!("video {id}")))
}

/// The video, if the caller owns it. Others get 404 for a video they may not watch, 403 otherwise.
async fn owned(origin: &Origin, headers: &HeaderMap, id: &str) -> ApiResult<(Video, User)> {
    let user = auth::required(origin, headers).await?;
    let video = find(origin, id).await?;
    if video.owner_id != user.id {
        if may_watch(origin, &video, Some(&user)).await? {
            return Err(ApiError::forbidden(format!("only the owner of video {id} may change it")));
        }
        return Err(ApiError::not_found(format!("video {id}")));
    }
    Ok((video, user))
}

async fn describe(origin: &Origin, video: &Video, caller: Option<&User>) -> ApiResult<VideoStatus> {
    let (state, percent, reason) = match &video.content_sha256 {
        None => ("uploading", None, None),
        Some(sha) => match origin.meta.content(sha).await? {
            Some(content) => state_of(&content.state),
            None => ("queued", None, None),
        },
    };
    let owner = origin.meta.user_by_id(&video.owner_id).await?.map(|u| u.name).unwrap_or_default();
    let shared_with = if caller.is_some_and(|u| u.id == video.owner_id) {
        Some(origin.meta.shares(&video.id).await?.into_iter().map(|u| u.name).collect())
    } else {
        None
    };
    Ok(VideoStatus {
        video_id: video.id.clone(),
        owner,
        filename: video.filename.clone(),
        visibility: video.visibility,
        state: state.to_string(),
        percent,
        reason,
        sha256: video.content_sha256.clone(),
        created_at: video.created_at,
        shared_with,
    })
}

/// `GET /v1/videos/{id}`: for whoever may watch it. A private video that the caller may not watch is
/// answered like a missing one.
pub async fn show(
    State(origin): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<VideoStatus>> {
    let user = auth::caller(&origin, &headers).await?;
    let video = find(&origin, &id).await?;
    if !may_watch(&origin, &video, user.as_ref()).await? {
        return Err(ApiError::not_found(format!("video {id}")));
    }
    Ok(Json(describe(&origin, &video, user.as_ref()).await?))
}

/// `GET /v1/videos`: the caller's own videos, newest first.
pub async fn list(State(origin): State<Shared>, headers: HeaderMap) -> ApiResult<Json<Vec<VideoStatus>>> {
    let user = auth::required(&origin, &headers).await?;
    let mut answer = Vec::new();
    for video in origin.meta.videos_of(&user.id).await? {
        answer.push(describe(&origin, &video, Some(&user)).await?);
    }
    Ok(Json(answer))
}

/// `PATCH /v1/videos/{id}` `{visibility}`
pub async fn update(
    State(origin): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<UpdateVideo>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<VideoStatus>> {
    let (video, user) = owned(&origin, &headers, &id).await?;
    let Json(request) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    origin.meta.set_visibility(&video.id, request.visibility).await?;
    let video = find(&origin, &id).await?;
    Ok(Json(describe(&origin, &video, Some(&user)).await?))
}

/// `POST /v1/videos/{id}/shares` `{user}`: adds a user to the share list.
pub async fn add_share(
    State(origin): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<Share>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<StatusCode> {
    let (video, _) = owned(&origin, &headers, &id).await?;
    let Json(request) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let user = origin
        .meta
        .user_by_name(&request.user)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("user {:?}", request.user)))?;
    origin.meta.add_share(&video.id, &user.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/videos/{id}/shares/{user}`
pub async fn remove_share(
    State(origin): State<Shared>,
    headers: HeaderMap,
    Path((id, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let (video, _) = owned(&origin, &headers, &id).await?;
    let user = origin.meta.user_by_name(&name).await?.ok_or_else(|| ApiError::not_found(format!("user {name:?}")))?;
    if !origin.meta.remove_share(&video.id, &user.id).await? {
        return Err(ApiError::not_found(format!("user {name:?} on the share list of video {id}")));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The path prefix a playback token opens: everything of one video, nothing else.
pub fn video_prefix(id: &str) -> String {
    format!("/videos/{id}/")
}

/// `GET /v1/videos/{id}/playback`: a signed URL for whoever may watch the video.
pub async fn playback(
    State(origin): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Playback>> {
    let user = auth::caller(&origin, &headers).await?;
    let video = find(&origin, &id).await?;
    if !may_watch(&origin, &video, user.as_ref()).await? {
        return Err(match user {
            None => ApiError::unauthorized(format!("video {id} is private: this needs an API token")),
            Some(_) => ApiError::forbidden(format!("video {id} is private and not shared with you")),
        });
    }
    let ready = match &video.content_sha256 {
        Some(sha) => matches!(origin.meta.content(sha).await?.map(|c| c.state), Some(ContentState::Ready)),
        None => false,
    };
    if !ready {
        return Err(ApiError::conflict(format!("video {id} is not ready yet; GET /v1/videos/{id} tells its state")));
    }
    let expires_at = u64::try_from(now_unix()).unwrap_or(0).saturating_add(origin.config.playback_ttl.as_secs());
    let token = signed_url::sign(&origin.signing, &video_prefix(&id), expires_at);
    let url = format!(
        "{}/videos/{id}/{}?{}={token}",
        origin.playback_base(),
        eddy_packager::MASTER_PLAYLIST,
        signed_url::DEFAULT_PARAM
    );
    Ok(Json(Playback { url, token, expires_at }))
}
