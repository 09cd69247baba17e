//! The one error of Eddy's TOML configs (the edge's and the origin's): every failure names where the
//! setting came from (the file, or "command line"), the key and the reason.

use std::fmt;
use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{origin}: invalid value for `{key}`: {reason}")]
    Invalid { origin: String, key: String, reason: String },
}

/// An invalid value of `key`, set in `origin` (a file path, "command line" or "built-in defaults").
pub fn invalid(origin: &str, key: &str, reason: impl fmt::Display) -> ConfigError {
    ConfigError::Invalid { origin: origin.to_string(), key: key.to_string(), reason: reason.to_string() }
}
