//! Signed playback URLs at the edge (`[auth] signed_urls`), the parts that decide: which paths need a
//! token, where the token is in a query, and which query parameter the cache key leaves out. Pure: the
//! clock is an argument. The token format and its checks are `eddy_shared::signed_url`; the phase that
//! refuses requests is `phases/auth.rs`.
//!
//! It sits outside `phases/` so that the reloadable settings (`state::Settings`, which hold it) and
//! `Edge::cache_key` can use it without importing the request path.
//!
//! - **Which paths are protected** is decided on the path as an origin could read it: percent-decoded
//!   (again, while decoding changes it, for origins that decode twice), backslashes as slashes,
//!   repeated slashes as one, ASCII case folded. So `/%76ideos/a/x.ts`, `//videos/a/x.ts` and
//!   `/VIDEOS/a/x.ts` are as protected as `/videos/a/x.ts`: protecting one spelling too many costs a
//!   403, one too few would serve a protected object without a token.
//! - **Whether the token covers the path** is decided on the path exactly as sent, strictly
//!   (`signed_url::verify`): a token for `/videos/a/` opens only paths whose text starts with it.
//! - **The token is out of the cache key** of every protected path: one stored copy serves every
//!   authorised viewer, whatever their token. The request to the origin keeps it.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

use eddy_shared::signed_url::{self, QueryTokenError, SignedUrlError, SigningKey, TokenError};

use crate::config::SignedUrlsConfig;

/// How many times a path is percent-decoded to find what it could name; a path that still changes
/// after that is treated as protected.
const DECODE_ROUNDS: usize = 4;

/// The signed-URL settings in force: the key, the query parameter, the protected prefixes.
pub struct SignedUrls {
    key: SigningKey,
    param: String,
    /// Normalised as paths are (see [`normalise`]).
    prefixes: Vec<String>,
}

/// Why a request under a protected prefix is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No token parameter in the query.
    Missing,
    /// The parameter more than once: the edge and the origin could each read another one.
    Repeated,
    /// The token does not open this path now.
    Token(TokenError),
}

impl Refusal {
    /// The metric label (`eddy_edge_auth_refused_total{reason}`): a fixed word.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Repeated => "repeated",
            Refusal::Token(TokenError::Malformed) => "malformed",
            Refusal::Token(TokenError::Expired) => "expired",
            Refusal::Token(TokenError::OutOfScope) => "out_of_scope",
            Refusal::Token(TokenError::BadSignature) => "bad_signature",
        }
    }

    /// What the client is told. The checks' order (`signed_url::verify`) keeps it from helping a
    /// forger: without a valid signature, the answer is always "malformed" or "signature".
    pub fn message(self) -> Cow<'static, str> {
        match self {
            Refusal::Missing => "a signed URL is required: this path needs a valid token".into(),
            Refusal::Repeated => "a signed URL carries one token, not several".into(),
            Refusal::Token(error) => format!("signed URL refused: {error}").into(),
        }
    }
}

impl SignedUrls {
    /// Reads the key file named by the configuration (already validated).
    pub fn load(config: &SignedUrlsConfig) -> Result<SignedUrls, SignedUrlError> {
        Ok(SignedUrls::new(SigningKey::load(&config.key_file)?, &config.param, &config.prefixes))
    }

    pub fn new(key: SigningKey, param: &str, prefixes: &[String]) -> SignedUrls {
        SignedUrls { key, param: param.to_string(), prefixes: prefixes.iter().map(|p| normalise(p)).collect() }
    }

    /// The query parameter that carries the token.
    pub fn param(&self) -> &str {
        &self.param
    }

    /// Whether a request for `path` (as sent, without the query) needs a token.
    pub fn protects(&self, path: &str) -> bool {
        let Some(path) = readable(path) else { return true };
        self.prefixes.iter().any(|prefix| {
            path.starts_with(prefix.as_str())
                // `/videos` is the folder `/videos/` names, for an origin that redirects or lists.
                || prefix.strip_suffix('/').is_some_and(|folder| !folder.is_empty() && path == folder)
        })
    }

    /// The token in `query` (`signed_url::token_in_query`, the rule the origin reads queries by too).
    pub fn token<'q>(&self, query: Option<&'q str>) -> Result<&'q str, Refusal> {
        signed_url::token_in_query(query, &self.param).map_err(|error| match error {
            QueryTokenError::Missing => Refusal::Missing,
            QueryTokenError::Repeated => Refusal::Repeated,
        })
    }

    /// Whether the request for `path` and `query` carries a token that opens `path` at `now_unix`.
    pub fn check(&self, path: &str, query: Option<&str>, now_unix: u64) -> Result<(), Refusal> {
        let token = self.token(query)?;
        signed_url::verify(&self.key, token, path, now_unix).map_err(Refusal::Token)
    }

    /// The parameter the cache key of `path` and `query` leaves out, if any: the token's, under a
    /// protected prefix. Only requests whose token was verified (or that a fleet member or the edge
    /// itself sends) get that far.
    pub fn unkeyed_param(&self, path: &str, query: Option<&str>) -> Option<&str> {
        // The cheap test first: most queries do not mention the parameter at all.
        let mentioned = query.is_some_and(|q| q.contains(self.param.as_str()));
        (mentioned && self.protects(path)).then_some(self.param.as_str())
    }

    /// `query` with the signature of its token replaced by `-`, for logs (the rest, expiry and
    /// prefix, helps to tell why a viewer was refused); `None` when it holds no token parameter.
    pub fn redact(&self, query: &str) -> Option<String> {
        let mut changed = false;
        let pairs: Vec<Cow<'_, str>> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, value)) if name == self.param => {
                    changed = true;
                    let kept = value.rsplit_once('.').map_or("", |(head, _)| head);
                    Cow::Owned(format!("{name}={kept}.-"))
                }
                _ => Cow::Borrowed(pair),
            })
            .collect();
        changed.then(|| pairs.join("&"))
    }
}

/// The path as an origin could read it (see the module documentation); `None` when decoding goes on
/// changing it for more than [`DECODE_ROUNDS`] rounds.
fn readable(path: &str) -> Option<String> {
    let mut text = Cow::Borrowed(path);
    for _ in 0..DECODE_ROUNDS {
        if !text.contains('%') {
            return Some(normalise(&text));
        }
        let decoded = percent_decode_str(&text).decode_utf8_lossy().into_owned();
        if decoded == text {
            return Some(normalise(&text));
        }
        text = Cow::Owned(decoded);
    }
    (!text.contains('%')).then(|| normalise(&text))
}

/// Backslashes as slashes, repeated slashes as one, ASCII case folded.
fn normalise(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        let c = if c == '\\' { '/' } else { c.to_ascii_lowercase() };
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(prefixes: &[&str]) -> SignedUrls {
        let key = SigningKey::from_bytes(&[7; 32]).expect("key");
        SignedUrls::new(key, "token", &prefixes.iter().map(|p| p.to_string()).collect::<Vec<_>>())
    }

    fn token_for(prefix: &str, expires: u64) -> String {
        signed_url::sign(&SigningKey::from_bytes(&[7; 32]).expect("key"), prefix, expires)
    }

    #[test]
    fn every_spelling_of_a_protected_path_is_protected() {
        let auth = urls(&["/videos/"]);
        for path in [
            "/videos/a/x.ts",
            "/videos/",
            "/videos",
            "/VIDEOS/a/x.ts",
            "//videos/a/x.ts",
            "/%76ideos/a/x.ts",
            "/%2576ideos/a/x.ts",
            "/%25252576ideos/a/x.ts",
            "\\videos\\a\\x.ts",
            "/videos%2fa/x.ts",
        ] {
            assert!(auth.protects(path), "{path}");
        }
        for path in ["/public/x.ts", "/", "/video/x.ts", "/videosx/a.ts", "/public/100%25.ts"] {
            assert!(!auth.protects(path), "{path}");
        }
        assert!(urls(&["/"]).protects("/anything.ts"));
    }

    #[test]
    fn the_token_is_the_one_pair_with_the_parameters_name() {
        let auth = urls(&["/"]);
        assert_eq!(auth.token(Some("a=1&token=T&b=2")), Ok("T"));
        assert_eq!(auth.token(Some("token=")), Ok(""));
        assert_eq!(auth.token(Some("token")), Ok(""));
        assert_eq!(auth.token(None), Err(Refusal::Missing));
        assert_eq!(auth.token(Some("tokens=T&%74oken=T&Token=T")), Err(Refusal::Missing));
        assert_eq!(auth.token(Some("token=A&token=B")), Err(Refusal::Repeated));
    }

    #[test]
    fn a_request_passes_with_a_token_for_its_path_only() {
        let auth = urls(&["/videos/"]);
        let token = token_for("/videos/a/", 100);
        let query = format!("token={token}");
        assert_eq!(auth.check("/videos/a/x.ts", Some(&query), 99), Ok(()));
        assert_eq!(auth.check("/videos/a/x.ts", Some(&query), 100), Err(Refusal::Token(TokenError::Expired)));
        assert_eq!(auth.check("/videos/b/x.ts", Some(&query), 99), Err(Refusal::Token(TokenError::OutOfScope)));
        assert_eq!(auth.check("/VIDEOS/a/x.ts", Some(&query), 99), Err(Refusal::Token(TokenError::OutOfScope)));
        assert_eq!(auth.check("/videos/a/x.ts", Some("token=garbage"), 99), Err(Refusal::Token(TokenError::Malformed)));
        assert_eq!(auth.check("/videos/a/x.ts", None, 99), Err(Refusal::Missing));
    }

    #[test]
    fn only_protected_paths_leave_the_token_out_of_the_key() {
        let auth = urls(&["/videos/"]);
        assert_eq!(auth.unkeyed_param("/videos/a/x.ts", Some("token=T")), Some("token"));
        assert_eq!(auth.unkeyed_param("/videos/a/x.ts", Some("v=2")), None);
        assert_eq!(auth.unkeyed_param("/videos/a/x.ts", None), None);
        assert_eq!(auth.unkeyed_param("/public/x.ts", Some("token=T")), None);
    }

    #[test]
    fn logs_get_the_token_without_its_signature() {
        let auth = urls(&["/"]);
        assert_eq!(auth.redact("a=1&token=100.L3Yv.c2lnbmF0dXJl&b=2").as_deref(), Some("a=1&token=100.L3Yv.-&b=2"));
        assert_eq!(auth.redact("token=secret").as_deref(), Some("token=.-"));
        assert_eq!(auth.redact("a=1"), None);
    }

    #[test]
    fn refusals_have_fixed_labels() {
        let labels: Vec<&str> = [
            Refusal::Missing,
            Refusal::Repeated,
            Refusal::Token(TokenError::Malformed),
            Refusal::Token(TokenError::Expired),
            Refusal::Token(TokenError::OutOfScope),
            Refusal::Token(TokenError::BadSignature),
        ]
        .into_iter()
        .map(Refusal::label)
        .collect();
        assert_eq!(labels, ["missing", "repeated", "malformed", "expired", "out_of_scope", "bad_signature"]);
    }
}
