//! The running service's shared state, and its start: open the stores, load or make the keys, put
//! interrupted jobs back in the queue, start the packaging workers and the janitor.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use eddy_shared::signed_url::SigningKey;
use rand::RngCore;
use tokio::sync::{Notify, Semaphore};

use crate::config::Config;
use crate::meta::Meta;
use crate::metrics::Metrics;
use crate::objects::{AtRestKey, Objects};

pub struct Origin {
    pub config: Config,
    pub meta: Meta,
    pub objects: Objects,
    pub signing: SigningKey,
    /// Chunk bodies are held in memory whole: at most this many at once.
    pub chunk_permits: Semaphore,
    /// Woken when a job is queued, so that a worker does not wait for its next poll.
    pub jobs_queued: Notify,
    pub metrics: Metrics,
    /// The address the API listens on, for playback URLs when `playback_url` is not set.
    pub local_addr: SocketAddr,
}

/// Seconds since the Unix epoch; 0 if the clock is before it.
pub fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)).unwrap_or(0)
}

/// Writes 32 random bytes as 64 hex characters to `path`, readable by its owner only, unless it exists.
fn make_key_file(path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    use std::io::Write;
    let mut file = options.open(path).with_context(|| format!("creating key file {}", path.display()))?;
    file.write_all(hex::encode(key).as_bytes()).with_context(|| format!("writing key file {}", path.display()))?;
    tracing::info!("made a new key file {}", path.display());
    Ok(())
}

impl Origin {
    /// Opens the stores and loads the keys. Key files at their default place under `data` are made on
    /// first use; a key file named in the config must exist (an edge and an origin must share it).
    pub async fn open(config: Config, local_addr: SocketAddr) -> anyhow::Result<Origin> {
        std::fs::create_dir_all(&config.data)
            .with_context(|| format!("creating data folder {}", config.data.display()))?;
        // Work folders of jobs that a stop interrupted: their jobs start again from the stored original.
        let tmp = config.data.join("tmp");
        match std::fs::remove_dir_all(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("clearing {}", tmp.display()));
            }
            _ => {}
        }
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        if config.signing_key_file == config.data.join("playback.key") {
            make_key_file(&config.signing_key_file)?;
        }
        let signing = SigningKey::load(&config.signing_key_file)?;
        let at_rest = if config.encrypt {
            if config.at_rest_key_file == config.data.join("at-rest.key") {
                make_key_file(&config.at_rest_key_file)?;
            }
            Some(AtRestKey::load(&config.at_rest_key_file)?)
        } else {
            None
        };
        let objects = Objects::open(&config.storage_url, &config.s3, at_rest)?;
        let meta = Meta::connect(&config.metadata_url).await?;
        let requeued = meta.requeue_interrupted_jobs(now_unix()).await?;
        if requeued > 0 {
            tracing::info!("{requeued} packaging job(s) were in progress when the service stopped: queued again");
        }
        tracing::info!(
            "metadata in {} ({}), objects in {} ({}{})",
            redact(&config.metadata_url),
            meta.backend(),
            config.storage_url,
            objects.backend(),
            if objects.encrypted() { ", encrypted at rest" } else { "" }
        );
        Ok(Origin {
            chunk_permits: Semaphore::new(config.max_concurrent_chunks),
            jobs_queued: Notify::new(),
            metrics: Metrics::new(),
            config,
            meta,
            objects,
            signing,
            local_addr,
        })
    }

    /// The base of playback URLs: the configured edge, or this service itself.
    pub fn playback_base(&self) -> String {
        match &self.config.playback_url {
            Some(url) => url.clone(),
            None => format!("http://{}", self.local_addr),
        }
    }
}

/// A database URL without its password, for logs.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

pub type Shared = Arc<Origin>;
