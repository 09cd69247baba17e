//! Signed playback URLs: a token that lets whoever holds it fetch everything under one path prefix
//! until a moment, checked by the edges (and the origin) without asking anyone.
//!
//! The origin hands an authorised viewer `http://EDGE/videos/{id}/master.m3u8?token=TOKEN`. Pure code:
//! no I/O but [`SigningKey::load`], no clock (`now` is an argument).
//!
//! # Token format
//!
//! ```text
//! {expires}.{base64url(prefix)}.{base64url(mac)}
//! mac = HMAC-SHA256(key, "playback" || 0x00 || "{expires}\n{prefix}")
//! ```
//!
//! - `expires`: Unix seconds, in decimal without sign or leading zeros; the token is good while
//!   `now < expires`.
//! - `prefix`: the path prefix the token covers, such as `/videos/abc/`; it starts and ends with `/`.
//! - base64url is the URL- and filename-safe alphabet of RFC 4648 §5, without `=` padding (§3.2). The
//!   token is then made of `A–Z a–z 0–9 - _ .` only: unreserved characters (RFC 3986 §2.3), which
//!   need no percent-encoding in a query.
//! - HMAC is RFC 2104 over SHA-256 (FIPS 180-4), with the key as [`SigningKey`] holds it. The MAC input
//!   starts with a *domain* and a NUL byte ([`SigningKey::mac`]), so that a MAC made for one purpose
//!   (`"playback"`, `"upload"`, …) is never valid for another, even under the same key.
//!
//! # What `verify` checks, in order
//!
//! 1. The token is well-formed: at most [`MAX_TOKEN_LEN`] bytes, three parts, canonical decimal
//!    `expires`, canonical base64url (no padding, no stray bits), a UTF-8 prefix, a 32-byte MAC. Only
//!    bounded work is done on input that fails this.
//! 2. The signature, compared in constant time (`hmac`'s `verify_slice`), so that the time a refusal
//!    takes says nothing about how many bytes of a forged MAC were right.
//! 3. Expiry: `now_unix < expires`.
//! 4. Scope: the prefix starts and ends with `/`, and the request path starts with it. A path (or
//!    prefix) with a `.` or `..` segment (RFC 3986 §5.2.4 removes them when resolving), a backslash, or
//!    a percent-encoded dot, slash, backslash or percent sign (`%2e`, `%2f`, `%5c`, `%25`, any case:
//!    servers that decode once or twice before resolving would see `..` or `/`) is out of scope: a
//!    token for `/videos/a/` must never open `/videos/a/../b/`. A NUL anywhere is out of scope too.
//!
//! The signature comes before expiry and scope so that a forger learns nothing from which error
//! comes back.

use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

type HmacSha256 = Hmac<Sha256>;

/// The query parameter that carries the token, unless configured otherwise.
pub const DEFAULT_PARAM: &str = "token";

/// The shortest key accepted: 32 bytes, SHA-256's output size. RFC 2104 §3 advises keys no shorter
/// than the hash output, since shorter ones weaken the MAC.
pub const MIN_KEY_LEN: usize = 32;

/// The longest token accepted; longer input is refused before any decoding. A token for a prefix of a
/// few hundred bytes is far below it.
pub const MAX_TOKEN_LEN: usize = 1024;

/// A key file larger than this is not a key (a device such as `/dev/urandom`, or the wrong file): it
/// is refused rather than read on and on.
const MAX_KEY_FILE_LEN: u64 = 4096;

/// The domain of playback tokens' MACs.
const PLAYBACK: &str = "playback";

/// Why a signing key cannot be used.
#[derive(Debug, Error)]
pub enum SignedUrlError {
    #[error("signing key is {len} bytes; at least {MIN_KEY_LEN} are needed")]
    KeyTooShort { len: usize },
    #[error("cannot read signing key file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "signing key file {}: {reason} (make one with e.g. `openssl rand -base64 48 > FILE`)",
        path.display()
    )]
    KeyFile { path: PathBuf, reason: String },
}

/// Why a token does not open a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TokenError {
    #[error("token is malformed (expected EXPIRES.PREFIX.SIGNATURE, at most {MAX_TOKEN_LEN} bytes)")]
    Malformed,
    #[error("token has expired")]
    Expired,
    #[error("token does not cover this path")]
    OutOfScope,
    #[error("token signature does not match")]
    BadSignature,
}

/// Why a query yields no token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum QueryTokenError {
    #[error("no token parameter in the query")]
    Missing,
    /// The parameter more than once: two readers (an edge and an origin) could each take another one.
    #[error("the token parameter appears more than once")]
    Repeated,
}

/// The token in `query`: the value of the one `param=` pair (the name compared as sent, the value
/// not decoded). The edge and the origin read queries with this one rule, so that they never disagree
/// on which token a request carries.
pub fn token_in_query<'q>(query: Option<&'q str>, param: &str) -> Result<&'q str, QueryTokenError> {
    let mut found = None;
    for pair in query.unwrap_or_default().split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name == param {
            if found.is_some() {
                return Err(QueryTokenError::Repeated);
            }
            found = Some(value);
        }
    }
    found.ok_or(QueryTokenError::Missing)
}

/// An HMAC-SHA256 key, ready to use (the key is hashed into the HMAC state once).
#[derive(Clone)]
pub struct SigningKey(HmacSha256);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key: Debug output ends up in logs.
        f.write_str("SigningKey(..)")
    }
}

impl SigningKey {
    /// A key from its bytes; fewer than [`MIN_KEY_LEN`] are refused.
    pub fn from_bytes(bytes: &[u8]) -> Result<SigningKey, SignedUrlError> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(SignedUrlError::KeyTooShort { len: bytes.len() });
        }
        // HMAC takes keys of any length (RFC 2104 §2), so this cannot fail.
        HmacSha256::new_from_slice(bytes).map(SigningKey).map_err(|_| SignedUrlError::KeyTooShort { len: bytes.len() })
    }

    /// The key in a file: its contents with the ASCII whitespace around them trimmed (so that a key
    /// written by `echo` or an editor keeps no newline), used as they are (a base64 or hex text key is
    /// not decoded: its characters are the key). Errors name the file.
    pub fn load(path: &Path) -> Result<SigningKey, SignedUrlError> {
        let read_error = |source| SignedUrlError::Read { path: path.to_path_buf(), source };
        let file = std::fs::File::open(path).map_err(read_error)?;
        let mut bytes = Vec::new();
        file.take(MAX_KEY_FILE_LEN + 1).read_to_end(&mut bytes).map_err(read_error)?;
        if bytes.len() as u64 > MAX_KEY_FILE_LEN {
            return Err(SignedUrlError::KeyFile {
                path: path.to_path_buf(),
                reason: format!("larger than {MAX_KEY_FILE_LEN} bytes: not a key file"),
            });
        }
        let key = bytes.trim_ascii();
        if key.len() < MIN_KEY_LEN {
            return Err(SignedUrlError::KeyFile {
                path: path.to_path_buf(),
                reason: format!(
                    "the key is {} bytes once whitespace is trimmed; at least {MIN_KEY_LEN} are needed",
                    key.len()
                ),
            });
        }
        SigningKey::from_bytes(key)
    }

    /// HMAC-SHA256 over `domain || 0x00 || message`. `domain` names the purpose (`"playback"`,
    /// `"upload"`…) and must not contain NUL, which separates it from the message.
    pub fn mac(&self, domain: &str, message: &[u8]) -> [u8; 32] {
        self.keyed(domain, message).finalize().into_bytes().into()
    }

    /// Whether `tag` is the MAC of `message` in `domain`, compared in constant time.
    pub fn verify_mac(&self, domain: &str, message: &[u8], tag: &[u8]) -> bool {
        self.keyed(domain, message).verify_slice(tag).is_ok()
    }

    fn keyed(&self, domain: &str, message: &[u8]) -> HmacSha256 {
        debug_assert!(!domain.contains('\0'), "a MAC domain must not contain NUL");
        let mut mac = self.0.clone();
        mac.update(domain.as_bytes());
        mac.update(&[0]);
        mac.update(message);
        mac
    }
}

/// The bytes a playback token's MAC covers.
fn playback_message(expires: &str, prefix: &str) -> Vec<u8> {
    format!("{expires}\n{prefix}").into_bytes()
}

/// A token for everything under `prefix` (which should start and end with `/`; a token for any other
/// prefix never verifies) until `expires_unix` (exclusive).
pub fn sign(key: &SigningKey, prefix: &str, expires_unix: u64) -> String {
    let expires = expires_unix.to_string();
    let mac = key.mac(PLAYBACK, &playback_message(&expires, prefix));
    format!("{expires}.{}.{}", URL_SAFE_NO_PAD.encode(prefix), URL_SAFE_NO_PAD.encode(mac))
}

/// Whether `token` opens `path` (the request's path, without its query) at `now_unix`; see the
/// module documentation for the checks and their order.
pub fn verify(key: &SigningKey, token: &str, path: &str, now_unix: u64) -> Result<(), TokenError> {
    let token = parse(token).ok_or(TokenError::Malformed)?;
    if !key.verify_mac(PLAYBACK, &playback_message(token.expires_text, &token.prefix), &token.mac) {
        return Err(TokenError::BadSignature);
    }
    if now_unix >= token.expires {
        return Err(TokenError::Expired);
    }
    if !covers(&token.prefix, path) {
        return Err(TokenError::OutOfScope);
    }
    Ok(())
}

/// A well-formed token's parts (not yet authenticated).
struct Parsed<'a> {
    expires_text: &'a str,
    expires: u64,
    prefix: String,
    mac: Vec<u8>,
}

fn parse(token: &str) -> Option<Parsed<'_>> {
    if token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let mut parts = token.split('.');
    let (expires_text, prefix, mac) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    // Canonical decimal only, so that one token has one spelling: digits, no sign, no leading zero.
    let canonical = !expires_text.is_empty()
        && expires_text.bytes().all(|b| b.is_ascii_digit())
        && (expires_text == "0" || !expires_text.starts_with('0'));
    if !canonical {
        return None;
    }
    let expires = expires_text.parse::<u64>().ok()?;
    // The engine refuses padding and non-zero trailing bits (RFC 4648 §3.5), which also keeps one
    // spelling per token.
    let prefix = String::from_utf8(URL_SAFE_NO_PAD.decode(prefix).ok()?).ok()?;
    let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
    if mac.len() != 32 {
        return None;
    }
    Some(Parsed { expires_text, expires, prefix, mac })
}

/// Whether a token for `prefix` covers `path`.
fn covers(prefix: &str, path: &str) -> bool {
    prefix.starts_with('/')
        && prefix.ends_with('/')
        && !may_escape(prefix)
        && path.starts_with(prefix)
        && !may_escape(path)
}

/// Whether a path holds anything that a server on the way could read as another path than its text
/// says: a dot segment, a backslash, a NUL, or a percent-encoded dot, slash, backslash or percent.
fn may_escape(path: &str) -> bool {
    if path.split('/').any(|segment| segment == "." || segment == "..") || path.contains(['\\', '\0']) {
        return true;
    }
    let bytes = path.as_bytes();
    bytes.windows(3).any(|w| {
        w[0] == b'%'
            && matches!((w[1], w[2].to_ascii_lowercase()), (b'2', b'e' | b'f' | b'5') | (b'5', b'c') | (b'0', b'0'))
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_query_carries_exactly_one_token_or_none() {
        assert_eq!(token_in_query(Some("a=1&token=T&b=2"), "token"), Ok("T"));
        assert_eq!(token_in_query(Some("token="), "token"), Ok(""));
        assert_eq!(token_in_query(Some("tokens=T&xtoken=U"), "token"), Err(QueryTokenError::Missing));
        assert_eq!(token_in_query(None, "token"), Err(QueryTokenError::Missing));
        assert_eq!(token_in_query(Some("token=A&token=B"), "token"), Err(QueryTokenError::Repeated));
    }
    use super::*;
    use proptest::prelude::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn key() -> SigningKey {
        SigningKey::from_bytes(KEY).expect("a 32-byte key")
    }

    #[test]
    fn a_token_opens_its_prefix_until_it_expires() {
        let token = sign(&key(), "/videos/abc/", 1_000);
        for path in ["/videos/abc/master.m3u8", "/videos/abc/v0/seg1.ts", "/videos/abc/", "/videos/abc/a.b/c..d.ts"] {
            assert_eq!(verify(&key(), &token, path, 999), Ok(()), "{path}");
        }
    }

    /// Pins the format, computed with another implementation (Python's `hmac` and `base64`): the
    /// origin and the edges must agree on it for ever.
    #[test]
    fn the_format_is_pinned_by_a_known_answer() {
        assert_eq!(
            sign(&key(), "/videos/abc/", 1_700_000_000),
            "1700000000.L3ZpZGVvcy9hYmMv.M8_iDwDPKvz-W-R0tTlSoyvmpKkCsx6ARTs8pFP0Skk"
        );
        let upload: String = key().mac("upload", b"hello").iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(upload, "ec086eaf21e02fc1cf20249224b91257f08aae40bf9ba1e22c5759c952374b63");
    }

    #[test]
    fn domains_separate_macs() {
        let key = key();
        assert_ne!(key.mac("playback", b"x"), key.mac("upload", b"x"));
        let tag = key.mac("upload", b"x");
        assert!(key.verify_mac("upload", b"x", &tag));
        assert!(!key.verify_mac("playback", b"x", &tag));
        assert!(!key.verify_mac("upload", b"y", &tag));
        assert!(!key.verify_mac("upload", b"x", &tag[..31]), "a truncated tag is refused");
        assert!(!key.verify_mac("upload", b"x", &[]));
    }

    #[test]
    fn the_boundary_second_is_expired() {
        let token = sign(&key(), "/v/", 1_000);
        assert_eq!(verify(&key(), &token, "/v/a.ts", 999), Ok(()));
        assert_eq!(verify(&key(), &token, "/v/a.ts", 1_000), Err(TokenError::Expired));
        assert_eq!(verify(&key(), &token, "/v/a.ts", u64::MAX), Err(TokenError::Expired));
        let never = sign(&key(), "/v/", 0);
        assert_eq!(verify(&key(), &never, "/v/a.ts", 0), Err(TokenError::Expired));
        let last = sign(&key(), "/v/", u64::MAX);
        assert_eq!(verify(&key(), &last, "/v/a.ts", u64::MAX - 1), Ok(()));
    }

    fn parts(token: &str) -> (String, String, String) {
        let mut it = token.split('.').map(str::to_string);
        (it.next().unwrap_or_default(), it.next().unwrap_or_default(), it.next().unwrap_or_default())
    }

    #[test]
    fn tampering_with_any_field_breaks_the_signature() {
        let (expires, prefix, mac) = parts(&sign(&key(), "/videos/a/", 1_000));
        let later = format!("2000.{prefix}.{mac}");
        assert_eq!(verify(&key(), &later, "/videos/a/x.ts", 10), Err(TokenError::BadSignature));
        let wider = format!("{expires}.{}.{mac}", URL_SAFE_NO_PAD.encode("/videos/"));
        assert_eq!(verify(&key(), &wider, "/videos/b/x.ts", 10), Err(TokenError::BadSignature));
        let mut bits = URL_SAFE_NO_PAD.decode(&mac).expect("base64url");
        for i in [0, 17, 31] {
            bits[i] ^= 1;
            let flipped = format!("{expires}.{prefix}.{}", URL_SAFE_NO_PAD.encode(&bits));
            assert_eq!(verify(&key(), &flipped, "/videos/a/x.ts", 10), Err(TokenError::BadSignature));
            bits[i] ^= 1;
        }
        let other = SigningKey::from_bytes(b"another key, also thirty-two bytes long").expect("key");
        let token = sign(&other, "/videos/a/", 1_000);
        assert_eq!(verify(&key(), &token, "/videos/a/x.ts", 10), Err(TokenError::BadSignature));
    }

    #[test]
    fn the_checks_come_in_their_order() {
        // Malformed before anything; a bad signature before expiry; expiry before scope.
        assert_eq!(verify(&key(), "x", "/elsewhere", u64::MAX), Err(TokenError::Malformed));
        let (_, prefix, mac) = parts(&sign(&key(), "/a/", 5));
        assert_eq!(verify(&key(), &format!("6.{prefix}.{mac}"), "/b/", 100), Err(TokenError::BadSignature));
        assert_eq!(verify(&key(), &sign(&key(), "/a/", 5), "/b/", 100), Err(TokenError::Expired));
        assert_eq!(verify(&key(), &sign(&key(), "/a/", 500), "/b/", 100), Err(TokenError::OutOfScope));
    }

    #[test]
    fn a_token_never_opens_a_path_outside_its_prefix() {
        let token = sign(&key(), "/videos/a/", 1_000);
        for path in [
            "/videos/b/x.ts",
            "/videos/a",
            "/videos/ab/x.ts",
            "/videos/",
            "/",
            "",
            "videos/a/x.ts",
            "//videos/a/x.ts",
            "/VIDEOS/a/x.ts",
            "/videos/%61/x.ts",
            "/videos/a/../b/x.ts",
            "/videos/a/..",
            "/videos/a/./x.ts",
            "/videos/a/%2e%2e/b/x.ts",
            "/videos/a/%2E%2e/b/x.ts",
            "/videos/a/.%2e/b/x.ts",
            "/videos/a/..%2fb/x.ts",
            "/videos/a/..%2Fb/x.ts",
            "/videos/a/x%2fy.ts",
            "/videos/a/..\\b/x.ts",
            "/videos/a/..%5cb/x.ts",
            "/videos/a/%252e%252e/b/x.ts",
            "/videos/a/x%00.ts",
            "/videos/a/x\0.ts",
        ] {
            assert_eq!(verify(&key(), &token, path, 10), Err(TokenError::OutOfScope), "{path:?}");
        }
    }

    #[test]
    fn a_prefix_that_is_not_a_clean_directory_covers_nothing() {
        for prefix in ["videos/a/", "/videos/a", "", "/videos/../", "/videos/%2e%2e/", "/videos/a/./"] {
            let token = sign(&key(), prefix, 1_000);
            assert_eq!(verify(&key(), &token, "/videos/a/x.ts", 10), Err(TokenError::OutOfScope), "{prefix:?}");
        }
        assert_eq!(verify(&key(), &sign(&key(), "/", 1_000), "/anything/at/all.ts", 10), Ok(()));
    }

    #[test]
    fn malformed_tokens_are_named_so() {
        let (expires, prefix, mac) = parts(&sign(&key(), "/a/", 1_000));
        let long = format!("{expires}.{}.{mac}", URL_SAFE_NO_PAD.encode("/".repeat(MAX_TOKEN_LEN)));
        for token in [
            String::new(),
            ".".into(),
            "..".into(),
            "...".into(),
            "1000".into(),
            format!("{expires}.{prefix}"),
            format!("{expires}.{prefix}.{mac}."),
            format!("0{expires}.{prefix}.{mac}"),
            format!("+{expires}.{prefix}.{mac}"),
            format!("-1.{prefix}.{mac}"),
            format!("99999999999999999999999.{prefix}.{mac}"),
            format!("{expires}.{prefix}=.{mac}"),
            format!("{expires}.{prefix}.{mac}="),
            format!("{expires}.{prefix}.{}", &mac[..mac.len() - 1]),
            format!("{expires}.{prefix}.{}", URL_SAFE_NO_PAD.encode([0u8; 33])),
            format!("{expires}.{}.{mac}", URL_SAFE_NO_PAD.encode([0xff, 0xfe])),
            format!("{expires}.L3Ev+.{mac}"),
            format!("{expires} .{prefix}.{mac}"),
            long,
        ] {
            assert_eq!(verify(&key(), &token, "/a/x.ts", 10), Err(TokenError::Malformed), "{token:?}");
        }
    }

    #[test]
    fn keys_are_at_least_32_bytes_and_never_printed() {
        assert!(matches!(SigningKey::from_bytes(&KEY[..31]), Err(SignedUrlError::KeyTooShort { len: 31 })));
        let debug = format!("{:?}", key());
        assert!(!debug.contains("0123") && !debug.contains("abcdef"), "{debug}");
    }

    #[test]
    fn a_key_file_is_trimmed_and_its_errors_name_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("playback.key");
        std::fs::write(&path, [b"  \n".as_slice(), KEY, b"\r\n"].concat()).expect("write");
        let loaded = SigningKey::load(&path).expect("a trimmed 32-byte key");
        assert_eq!(loaded.mac("playback", b"m"), key().mac("playback", b"m"));

        std::fs::write(&path, b"short key\n").expect("write");
        let error = SigningKey::load(&path).expect_err("too short").to_string();
        assert!(error.contains("playback.key") && error.contains("9 bytes"), "{error}");

        std::fs::write(&path, vec![b'k'; 5000]).expect("write");
        let error = SigningKey::load(&path).expect_err("too large").to_string();
        assert!(error.contains("playback.key") && error.contains("not a key file"), "{error}");

        let missing = dir.path().join("missing.key");
        let error = SigningKey::load(&missing).expect_err("missing").to_string();
        assert!(error.contains("missing.key") && error.contains("cannot read"), "{error}");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn tokens_use_url_safe_characters_only(prefix in "\\PC{0,64}", expires in any::<u64>()) {
            let token = sign(&key(), &prefix, expires);
            prop_assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')), "{}", token);
        }

        #[test]
        fn any_input_is_refused_without_panicking(token in "\\PC{0,1200}", path in "\\PC{0,64}", now in any::<u64>()) {
            prop_assert!(verify(&key(), &token, &path, now).is_err());
        }

        #[test]
        fn any_bytes_are_refused_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..1100)) {
            let token = String::from_utf8_lossy(&bytes);
            prop_assert!(verify(&key(), &token, "/a/b.ts", 0).is_err());
        }

        #[test]
        fn no_one_character_change_of_a_token_verifies(
            segment in "[a-z0-9]{1,8}",
            expires in 1u64..u64::MAX,
            at in any::<prop::sample::Index>(),
            with in prop::sample::select(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_.=+/%".to_vec()),
        ) {
            let prefix = format!("/videos/{segment}/");
            let token = sign(&key(), &prefix, expires);
            let mut bytes = token.clone().into_bytes();
            let i = at.index(bytes.len());
            prop_assume!(bytes[i] != with);
            bytes[i] = with;
            let changed = String::from_utf8(bytes).expect("ASCII");
            prop_assert!(verify(&key(), &changed, &format!("{prefix}x.ts"), 0).is_err(), "{} verifies", changed);
        }
    }
}
