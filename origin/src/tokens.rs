//! API tokens: `eddy_{user id}_{secret}`. Only a salted SHA-256 of the secret is stored; the secret is
//! 32 random bytes, so a slow password hash would add nothing (OWASP Password Storage Cheat Sheet: key
//! stretching is for low-entropy secrets). The id in front finds the row; the hash comparison is
//! constant-time.

use rand::RngCore;
use sha2::{Digest, Sha256};

const PREFIX: &str = "eddy_";

/// A new secret, and the salt and hash to store. The token is [`token`] of the user's id and the
/// secret, once the user's row (and so its id) exists.
pub struct NewSecret {
    pub secret: String,
    pub salt: String,
    pub hash: String,
}

fn hash(salt: &str, secret: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(salt.as_bytes());
    hasher.update(b"\0");
    hasher.update(secret.as_bytes());
    hex::encode(hasher.finalize())
}

fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buffer);
    hex::encode(buffer)
}

pub fn new_secret() -> NewSecret {
    let secret = random_hex(32);
    let salt = random_hex(16);
    NewSecret { hash: hash(&salt, &secret), secret, salt }
}

/// The token a user presents: its id (hex, so free of `_`) and its secret.
pub fn token(user_id: &str, secret: &str) -> String {
    format!("{PREFIX}{user_id}_{secret}")
}

/// The user id a token claims, and its secret; `None` when it is not shaped like a token.
pub fn split(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(PREFIX)?;
    let (user_id, secret) = rest.split_once('_')?;
    let hex_only = |s: &str| !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex_only(user_id) && hex_only(secret)).then_some((user_id, secret))
}

/// Whether `secret` hashes to the stored `stored_hash` under `salt`, compared in constant time.
pub fn matches(salt: &str, stored_hash: &str, secret: &str) -> bool {
    let computed = hash(salt, secret);
    let (a, b) = (computed.as_bytes(), stored_hash.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A fresh random id (16 bytes, hex) for users, uploads and videos.
pub fn new_id() -> String {
    random_hex(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_token_matches_only_its_own_hash() {
        let new = new_secret();
        let token = token("ab12", &new.secret);
        let (user, secret) = split(&token).unwrap();
        assert_eq!(user, "ab12");
        assert!(matches(&new.salt, &new.hash, secret));
        assert!(!matches(&new.salt, &new.hash, &secret.replace('a', "b").replace('1', "2")));
        let other = new_secret();
        assert!(!matches(&other.salt, &other.hash, secret));
    }

    #[test]
    fn malformed_tokens_are_not_split() {
        for bad in ["", "eddy_", "eddy_ab", "eddy__x", "eddy_ab_", "xeddy_ab_cd", "eddy_ab_c d", "eddy_g_00"] {
            assert_eq!(split(bad), None, "{bad:?}");
        }
    }
}
