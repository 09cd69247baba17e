//! `eddy-origin`'s TOML configuration, validated at load: every error names the file, the key and the
//! reason. Every key has a default, so the service runs with no file at all: SQLite and a folder of
//! objects under `data`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use eddy_packager::ladder::{parse_ladder, Rung};
use eddy_shared::config_error::invalid;
pub use eddy_shared::config_error::ConfigError;
use eddy_shared::duration::parse_duration;
use eddy_shared::size::parse_size;
use serde::Deserialize;

use crate::objects::S3Options;

/// The file as written. Sizes and durations are text (`8MiB`, `24h`) turned into numbers by
/// [`Config::settle`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigFile {
    pub listen: String,
    /// Where the SQLite database, the objects folder and the generated keys live by default.
    pub data: PathBuf,
    /// The base of the presigned chunk URLs, when clients reach the API through another address (a
    /// load balancer). Without it, the URLs are relative to whatever base the client used.
    pub public_url: Option<String>,
    /// The base of playback URLs: the edge that viewers play through. Defaults to this service's own
    /// address.
    pub playback_url: Option<String>,
    pub metadata: MetadataFile,
    pub storage: StorageFile,
    pub uploads: UploadsFile,
    pub packaging: PackagingFile,
    pub auth: AuthFile,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetadataFile {
    /// `sqlite://PATH` or `postgres://…`; defaults to `sqlite://DATA/meta.db`.
    pub url: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageFile {
    /// `file:///DIR` or `s3://BUCKET`; defaults to `file://DATA/objects`.
    pub url: Option<String>,
    pub s3: S3Options,
    /// Store uploaded originals sealed with AES-256-GCM and package with HLS AES-128.
    pub encrypt: bool,
    /// 32 bytes (64 hex characters) for AES-256-GCM; defaults to `DATA/at-rest.key`, made on first use.
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadsFile {
    pub chunk_size: String,
    pub max_size: String,
    pub expire_after: String,
    pub janitor_interval: String,
    /// Chunk bodies are read into memory whole: this bounds how many at once.
    pub max_concurrent_chunks: usize,
    /// A chunk's body must arrive within this long.
    pub chunk_timeout: String,
    /// How long a presigned chunk URL stays valid.
    pub url_ttl: String,
}

impl Default for UploadsFile {
    fn default() -> Self {
        UploadsFile {
            chunk_size: "8MiB".into(),
            max_size: "50GiB".into(),
            expire_after: "24h".into(),
            janitor_interval: "1m".into(),
            max_concurrent_chunks: 16,
            chunk_timeout: "5m".into(),
            url_ttl: "24h".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PackagingFile {
    pub ladder: String,
    pub segment_duration: f64,
    /// Packaging jobs that run at once.
    pub concurrency: usize,
    /// x264 speed preset; the packager picks one when unset.
    pub preset: Option<String>,
    /// How often to look for queued jobs that another origin sharing the database queued.
    pub poll_interval: String,
}

impl Default for PackagingFile {
    fn default() -> Self {
        PackagingFile {
            ladder: "240p:400k,480p:1200k".into(),
            segment_duration: 2.0,
            concurrency: 1,
            preset: None,
            poll_interval: "5s".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthFile {
    /// The HMAC key shared with the edges (`[auth] signed_urls.key_file` there); defaults to
    /// `DATA/playback.key`, made on first use.
    pub signing_key_file: Option<PathBuf>,
    pub playback_ttl: String,
}

impl Default for AuthFile {
    fn default() -> Self {
        AuthFile { signing_key_file: None, playback_ttl: "6h".into() }
    }
}

impl Default for ConfigFile {
    fn default() -> Self {
        ConfigFile {
            listen: "127.0.0.1:8070".into(),
            data: PathBuf::from("eddy-origin-data"),
            public_url: None,
            playback_url: None,
            metadata: MetadataFile::default(),
            storage: StorageFile::default(),
            uploads: UploadsFile::default(),
            packaging: PackagingFile::default(),
            auth: AuthFile::default(),
        }
    }
}

/// Flags that override the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data: Option<PathBuf>,
}

/// The checked settings the service runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data: PathBuf,
    pub public_url: Option<String>,
    pub playback_url: Option<String>,
    pub metadata_url: String,
    pub storage_url: String,
    pub s3: S3Options,
    pub encrypt: bool,
    pub at_rest_key_file: PathBuf,
    pub signing_key_file: PathBuf,
    pub playback_ttl: Duration,
    pub chunk_size: u64,
    pub max_size: u64,
    pub expire_after: Duration,
    pub janitor_interval: Duration,
    pub max_concurrent_chunks: usize,
    pub chunk_timeout: Duration,
    pub url_ttl: Duration,
    pub ladder: Vec<Rung>,
    pub segment_duration: f64,
    pub concurrency: usize,
    pub preset: Option<String>,
    pub poll_interval: Duration,
}

/// The smallest chunk accepted: S3's own multipart minimum, so an S3 store could take chunks as parts.
pub const MIN_CHUNK_SIZE: u64 = 64 * 1024;
/// The largest: a chunk is held in memory whole while it is hashed and sealed.
pub const MAX_CHUNK_SIZE: u64 = 64 * 1024 * 1024;

impl Config {
    pub fn load(path: &Path, overrides: Overrides) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let file: ConfigFile =
            toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })?;
        file.settle(&path.display().to_string(), overrides)
    }

    /// The built-in defaults with the flags applied.
    pub fn defaults(overrides: Overrides) -> Result<Config, ConfigError> {
        ConfigFile::default().settle("built-in defaults", overrides)
    }
}

fn size(origin: &str, key: &str, text: &str) -> Result<u64, ConfigError> {
    parse_size(text).map_err(|e| invalid(origin, key, e))
}

fn duration(origin: &str, key: &str, text: &str) -> Result<Duration, ConfigError> {
    let value = parse_duration(text).map_err(|e| invalid(origin, key, e))?;
    if value.is_zero() {
        return Err(invalid(origin, key, "must be more than zero"));
    }
    Ok(value)
}

fn http_base(origin: &str, key: &str, text: &str) -> Result<String, ConfigError> {
    let url = url::Url::parse(text).map_err(|e| invalid(origin, key, e))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(invalid(origin, key, "must be an http:// or https:// URL with a host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(origin, key, "must not carry a query or fragment"));
    }
    Ok(text.trim_end_matches('/').to_string())
}

impl ConfigFile {
    pub fn settle(self, origin: &str, overrides: Overrides) -> Result<Config, ConfigError> {
        let listen_text = overrides.listen.unwrap_or(self.listen);
        let listen: SocketAddr =
            listen_text.parse().map_err(|e| invalid(origin, "listen", format!("{listen_text:?}: {e}")))?;
        let data = overrides.data.unwrap_or(self.data);
        if data.as_os_str().is_empty() {
            return Err(invalid(origin, "data", "must name a folder"));
        }
        let public_url = self.public_url.as_deref().map(|u| http_base(origin, "public_url", u)).transpose()?;
        let playback_url = self.playback_url.as_deref().map(|u| http_base(origin, "playback_url", u)).transpose()?;

        let metadata_url = match self.metadata.url {
            Some(url) => {
                if !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    return Err(invalid(
                        origin,
                        "metadata.url",
                        "must start with sqlite:, postgres:// or postgresql://",
                    ));
                }
                url
            }
            None => format!("sqlite://{}", data.join("meta.db").display()),
        };
        let storage_url = match self.storage.url {
            Some(url) => {
                if !(url.starts_with("file://") || url.starts_with("s3://")) {
                    return Err(invalid(origin, "storage.url", "must start with file:// or s3://"));
                }
                url
            }
            None => {
                let dir = std::path::absolute(data.join("objects"))
                    .map_err(|e| invalid(origin, "data", format!("{}: {e}", data.display())))?;
                format!("file://{}", dir.display())
            }
        };

        let chunk_size = size(origin, "uploads.chunk_size", &self.uploads.chunk_size)?;
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            return Err(invalid(
                origin,
                "uploads.chunk_size",
                format!("must be between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE} bytes"),
            ));
        }
        let max_size = size(origin, "uploads.max_size", &self.uploads.max_size)?;
        if max_size == 0 {
            return Err(invalid(origin, "uploads.max_size", "must be more than zero"));
        }
        if self.uploads.max_concurrent_chunks == 0 {
            return Err(invalid(origin, "uploads.max_concurrent_chunks", "must be at least 1"));
        }
        let ladder = parse_ladder(&self.packaging.ladder).map_err(|e| invalid(origin, "packaging.ladder", e))?;
        let segment_duration = self.packaging.segment_duration;
        if !(segment_duration.is_finite() && (0.5..=30.0).contains(&segment_duration)) {
            return Err(invalid(origin, "packaging.segment_duration", "must be between 0.5 and 30 seconds"));
        }
        if self.packaging.concurrency == 0 {
            return Err(invalid(origin, "packaging.concurrency", "must be at least 1"));
        }
        Ok(Config {
            listen,
            public_url,
            playback_url,
            metadata_url,
            storage_url,
            s3: self.storage.s3,
            encrypt: self.storage.encrypt,
            at_rest_key_file: self.storage.key_file.unwrap_or_else(|| data.join("at-rest.key")),
            signing_key_file: self.auth.signing_key_file.unwrap_or_else(|| data.join("playback.key")),
            playback_ttl: duration(origin, "auth.playback_ttl", &self.auth.playback_ttl)?,
            chunk_size,
            max_size,
            expire_after: duration(origin, "uploads.expire_after", &self.uploads.expire_after)?,
            janitor_interval: duration(origin, "uploads.janitor_interval", &self.uploads.janitor_interval)?,
            max_concurrent_chunks: self.uploads.max_concurrent_chunks,
            chunk_timeout: duration(origin, "uploads.chunk_timeout", &self.uploads.chunk_timeout)?,
            url_ttl: duration(origin, "uploads.url_ttl", &self.uploads.url_ttl)?,
            ladder,
            segment_duration,
            concurrency: self.packaging.concurrency,
            preset: self.packaging.preset,
            poll_interval: duration(origin, "packaging.poll_interval", &self.packaging.poll_interval)?,
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let file: ConfigFile =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: "t.toml".into(), message: e.to_string() })?;
        file.settle("t.toml", Overrides::default())
    }

    #[test]
    fn defaults_run_with_sqlite_and_a_folder_under_data() {
        let config = Config::defaults(Overrides { data: Some("/srv/o".into()), ..Overrides::default() }).unwrap();
        assert_eq!(config.metadata_url, "sqlite:///srv/o/meta.db");
        assert_eq!(config.storage_url, "file:///srv/o/objects");
        assert_eq!(config.chunk_size, 8 * 1024 * 1024);
        assert!(!config.encrypt);
    }

    #[test]
    fn bad_values_name_the_file_key_and_reason() {
        let error = parse("[uploads]\nchunk_size = \"1KiB\"\n").unwrap_err().to_string();
        assert!(
            error.contains("t.toml") && error.contains("uploads.chunk_size") && error.contains("between"),
            "{error}"
        );
        let error = parse("[metadata]\nurl = \"mysql://x\"\n").unwrap_err().to_string();
        assert!(error.contains("metadata.url"), "{error}");
        let error = parse("[packaging]\nladder = \"fast\"\n").unwrap_err().to_string();
        assert!(error.contains("packaging.ladder"), "{error}");
        let error = parse("playback_url = \"ftp://x\"\n").unwrap_err().to_string();
        assert!(error.contains("playback_url"), "{error}");
    }

    #[test]
    fn the_example_config_is_valid_and_says_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/origin.toml");
        let example = Config::load(&path, Overrides::default()).unwrap();
        let defaults = Config::defaults(Overrides::default()).unwrap();
        assert_eq!(format!("{example:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let error = parse("[uploads]\nchunk = 3\n").unwrap_err().to_string();
        assert!(error.contains("chunk"), "{error}");
    }
}
