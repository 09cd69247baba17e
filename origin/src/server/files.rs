//! `GET /videos/{id}/…`: the packaged files, for edges and players. Segments never change, so they are
//! cached for a year (RFC 8246 `immutable`); VOD playlists for a day; the AES-128 key is `private`
//! and needs the video's playback token (or its owner's API token) when the video is private.
//! Validators come from the object store, and conditional requests are answered with 304
//! (RFC 9110 §13.1.1, §13.1.3: If-None-Match wins over If-Modified-Since).

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use eddy_shared::media::content_type_for_path;
use eddy_shared::signed_url;

use super::auth;
use super::error::{ApiError, ApiResult};
use super::videos::{may_watch, video_prefix};
use crate::meta::{ContentState, Visibility};
use crate::metrics::ResultLabel;
use crate::service::{now_unix, Shared};

/// The packaged key file's name (the packager's `enc.key`).
pub const KEY_FILE: &str = eddy_packager::output::KEY_FILE;

pub fn packaged_prefix(sha: &str) -> String {
    format!("packaged/{sha}/")
}

/// Whether `rest` is a plain relative path inside the video's folder.
fn is_inside(rest: &str) -> bool {
    !rest.is_empty()
        && rest.len() <= 512
        && rest
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != ".." && !part.contains(['\\', '\0', '%']))
}

fn cache_control(rest: &str) -> &'static str {
    if rest == KEY_FILE {
        "private, no-store"
    } else if rest.ends_with(".m3u8") {
        "public, max-age=86400"
    } else {
        "public, max-age=31536000, immutable"
    }
}

/// Whether the token in the query (read by the same rule as the edge's: exactly one `token=`) opens
/// the request path now.
fn token_opens(origin: &Shared, query: Option<&str>, path: &str) -> bool {
    signed_url::token_in_query(query, signed_url::DEFAULT_PARAM).is_ok_and(|token| {
        signed_url::verify(&origin.signing, token, path, u64::try_from(now_unix()).unwrap_or(0)).is_ok()
    })
}

fn counted(origin: &Shared, result: &'static str) {
    origin.metrics.served.get_or_create(&ResultLabel { result }).inc();
}

/// Whether the client's validators say its copy is current.
fn not_modified(headers: &HeaderMap, etag: &str, last_modified: std::time::SystemTime) -> bool {
    if let Some(value) = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        let weak = |tag: &str| tag.trim().trim_start_matches("W/").to_string();
        return value.split(',').any(|tag| tag.trim() == "*" || weak(tag) == weak(etag));
    }
    if let Some(since) = headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
    {
        // HTTP dates have whole seconds.
        let modified = httpdate::parse_http_date(&httpdate::fmt_http_date(last_modified)).unwrap_or(last_modified);
        return modified <= since;
    }
    false
}

pub async fn serve(
    State(origin): State<Shared>,
    Path((id, rest)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let missing = |origin: &Shared| {
        counted(origin, "not_found");
        ApiError::not_found(format!("/videos/{id}/{rest}"))
    };
    if !is_inside(&rest) {
        return Err(missing(&origin));
    }
    let Some(video) = origin.meta.video(&id).await? else { return Err(missing(&origin)) };
    let Some(sha) = video.content_sha256.clone() else { return Err(missing(&origin)) };
    if !matches!(origin.meta.content(&sha).await?.map(|c| c.state), Some(ContentState::Ready)) {
        return Err(missing(&origin));
    }
    if video.visibility == Visibility::Private {
        let path = format!("{}{rest}", video_prefix(&id));
        let allowed = token_opens(&origin, query.as_deref(), &path) || {
            let user = auth::caller(&origin, &headers).await.ok().flatten();
            user.is_some() && may_watch(&origin, &video, user.as_ref()).await?
        };
        if !allowed {
            counted(&origin, "refused");
            return Err(ApiError::forbidden(format!("video {id} is private: a playback token is needed")));
        }
    }
    let key = format!("{}{rest}", packaged_prefix(&sha));
    if rest == KEY_FILE {
        let bytes = origin.objects.get_sealed(&key).await?.ok_or_else(|| missing(&origin))?;
        counted(&origin, "ok");
        let mut response = Response::new(Body::from(bytes));
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache_control(&rest)));
        return Ok(response);
    }
    let Some(info) = origin.objects.head(&key).await? else { return Err(missing(&origin)) };
    let mut head = HeaderMap::new();
    head.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache_control(&rest)));
    if let Ok(etag) = HeaderValue::from_str(&info.etag) {
        head.insert(header::ETAG, etag);
    }
    if let Ok(date) = HeaderValue::from_str(&httpdate::fmt_http_date(info.last_modified)) {
        head.insert(header::LAST_MODIFIED, date);
    }
    if not_modified(&headers, &info.etag, info.last_modified) {
        counted(&origin, "not_modified");
        return Ok((StatusCode::NOT_MODIFIED, head).into_response());
    }
    let bytes = origin.objects.get(&key).await?.ok_or_else(|| missing(&origin))?;
    counted(&origin, "ok");
    head.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type_for_path(&rest)));
    Ok((StatusCode::OK, head, Body::from(bytes)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_are_inside_a_video() {
        for good in ["master.m3u8", "v0/index.m3u8", "v0/seg12.ts", "enc.key"] {
            assert!(is_inside(good), "{good}");
        }
        for bad in ["", "../x", "v0/../../x", "/etc/passwd", "v0//seg", "v0/./seg", "%2e%2e/x", "a\\b", "a\0b"] {
            assert!(!is_inside(bad), "{bad:?}");
        }
    }

    #[test]
    fn segments_are_immutable_playlists_a_day_and_keys_private() {
        assert_eq!(cache_control("v0/seg1.ts"), "public, max-age=31536000, immutable");
        assert_eq!(cache_control("v0/index.m3u8"), "public, max-age=86400");
        assert_eq!(cache_control("enc.key"), "private, no-store");
    }

    #[test]
    fn validators_answer_304_with_if_none_match_first() {
        let modified = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"a\", W/\"b\""));
        assert!(not_modified(&headers, "\"b\"", modified));
        assert!(!not_modified(&headers, "\"c\"", modified));
        headers.insert(header::IF_MODIFIED_SINCE, HeaderValue::from_str(&httpdate::fmt_http_date(modified)).unwrap());
        assert!(!not_modified(&headers, "\"c\"", modified), "If-None-Match decides when present");
        headers.remove(header::IF_NONE_MATCH);
        assert!(not_modified(&headers, "\"c\"", modified));
        assert!(!not_modified(&headers, "\"c\"", modified + std::time::Duration::from_secs(5)));
    }
}
