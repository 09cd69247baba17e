//! Who is calling: the user behind an `Authorization: Bearer` API token.

use axum::http::{header, HeaderMap};

use super::error::{ApiError, ApiResult};
use crate::api::BEARER;
use crate::meta::User;
use crate::service::Origin;
use crate::tokens;

/// The calling user, or `None` when the request carries no Authorization header. A header that is
/// there but wrong is an error: a client with a typo should hear so, not be served as anonymous.
pub async fn caller(origin: &Origin, headers: &HeaderMap) -> ApiResult<Option<User>> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let refused = || ApiError::unauthorized("the API token is not valid");
    let text = value.to_str().map_err(|_| refused())?;
    let token =
        text.strip_prefix(BEARER).ok_or_else(|| ApiError::unauthorized("Authorization must be `Bearer TOKEN`"))?;
    let (user_id, secret) = tokens::split(token.trim()).ok_or_else(refused)?;
    let user = origin.meta.user_by_id(user_id).await?.ok_or_else(refused)?;
    if !tokens::matches(&user.token_salt, &user.token_hash, secret) {
        return Err(refused());
    }
    Ok(Some(user))
}

/// The calling user; 401 without one.
pub async fn required(origin: &Origin, headers: &HeaderMap) -> ApiResult<User> {
    caller(origin, headers)
        .await?
        .ok_or_else(|| ApiError::unauthorized("this needs an API token: Authorization: Bearer TOKEN"))
}
