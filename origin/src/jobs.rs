//! Packaging jobs: each distinct content is packaged once, by the packager library (the same code as
//! `eddy-package`), a bounded number at a time. Jobs live in the metadata store, so a job in progress
//! when the service stopped is queued again at the next start (`Meta::requeue_interrupted_jobs`), and
//! several origins sharing one database never run the same job twice (`Meta::claim_job`).
//!
//! A job works in a private temporary folder and publishes under `packaged/{sha256}/` only once the
//! packager succeeded; a failed job deletes whatever it published, so nothing half-written is served
//! (and the video's state only becomes `ready` after the last file is stored).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use eddy_packager::pipeline::{Format, Source};
use eddy_packager::{PackageConfig, PackageError, Progress};
use tokio::sync::Semaphore;

use crate::meta::Content;
use crate::server::{original_key, packaged_prefix, KEY_FILE};
use crate::service::{now_unix, Shared};

/// Runs packaging workers until the task is dropped: claims a queued job whenever one of the
/// `packaging.concurrency` slots is free.
pub async fn run(origin: Shared) {
    let slots = Arc::new(Semaphore::new(origin.config.concurrency));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        match origin.meta.claim_job(now_unix()).await {
            Ok(Some(content)) => {
                let origin = origin.clone();
                tokio::spawn(async move {
                    run_job(&origin, content).await;
                    drop(slot);
                    // A freed slot may take the next job at once.
                    origin.jobs_queued.notify_one();
                });
            }
            Ok(None) => {
                drop(slot);
                // Woken by a completed upload, or polls for jobs that another origin queued.
                let _ = tokio::time::timeout(origin.config.poll_interval, origin.jobs_queued.notified()).await;
            }
            Err(error) => {
                drop(slot);
                tracing::error!("claiming a packaging job: {error}");
                tokio::time::sleep(origin.config.poll_interval).await;
            }
        }
    }
}

/// What a user is told when packaging fails: the packager's own words, without our temporary paths.
fn reason(error: &PackageError) -> String {
    match error {
        PackageError::Undecodable { reason, .. } => format!("the uploaded file cannot be decoded as video: {reason}"),
        PackageError::NoVideo(_) => "the uploaded file has no video stream".to_string(),
        PackageError::InputMissing(_) => "the stored original is missing".to_string(),
        other => other.to_string(),
    }
}

async fn run_job(origin: &Shared, content: Content) {
    let sha = content.sha256.clone();
    origin.metrics.packaging_in_progress.inc();
    tracing::info!(%sha, attempt = content.attempts, "packaging");
    let outcome = package(origin, &sha).await;
    origin.metrics.packaging_in_progress.dec();
    let result = match &outcome {
        Ok(()) => "ready",
        Err(_) => "failed",
    };
    if let Err(reason) = &outcome {
        tracing::warn!(%sha, "packaging failed: {reason}");
        if let Err(error) = origin.objects.delete_prefix(&packaged_prefix(&sha)).await {
            tracing::error!(%sha, "removing a failed job's output: {error}");
        }
    } else {
        tracing::info!(%sha, "packaged");
    }
    origin.metrics.packaging_runs.get_or_create(&crate::metrics::ResultLabel { result }).inc();
    if let Err(error) = origin.meta.finish_job(&sha, outcome, now_unix()).await {
        tracing::error!(%sha, "recording the end of a packaging job: {error}");
    }
}

async fn package(origin: &Shared, sha: &str) -> Result<(), String> {
    let work = tempfile::Builder::new()
        .prefix("package-")
        .tempdir_in(origin.config.data.join("tmp"))
        .map_err(|e| format!("making a work folder: {e}"))?;
    let input = work.path().join("original");
    origin
        .objects
        .fetch_original(&original_key(sha), &input)
        .await
        .map_err(|e| format!("reading the stored original: {e}"))?;
    let out = work.path().join("out");

    let config = PackageConfig {
        source: Source::File(input),
        out_dir: out.clone(),
        ladder: origin.config.ladder.clone(),
        segment_duration: origin.config.segment_duration,
        format: Format::Ts,
        encrypt: origin.objects.encrypted(),
        live_window: None,
        preset: origin.config.preset.clone(),
    };
    let (progress_tx, mut progress_rx) = tokio::sync::watch::channel(0i64);
    let packaging = tokio::task::spawn_blocking(move || {
        eddy_packager::package(&config, &mut |progress| {
            if let Progress::Position { done, total: Some(total) } = progress {
                if !total.is_zero() {
                    let percent = (done.as_secs_f64() / total.as_secs_f64() * 100.0).clamp(0.0, 99.0) as i64;
                    progress_tx.send_if_modified(|last| std::mem::replace(last, percent) != percent);
                }
            }
        })
    });
    let reporter = {
        let origin = origin.clone();
        let sha = sha.to_string();
        async move {
            while progress_rx.changed().await.is_ok() {
                let percent = *progress_rx.borrow_and_update();
                if let Err(error) = origin.meta.set_job_progress(&sha, percent, now_unix()).await {
                    tracing::warn!(%sha, "recording packaging progress: {error}");
                }
            }
        }
    };
    let (packaged, ()) = tokio::join!(packaging, reporter);
    match packaged {
        Ok(Ok(_summary)) => {}
        Ok(Err(error)) => return Err(reason(&error)),
        Err(join) => return Err(format!("the packager stopped: {join}")),
    }
    publish(origin, sha, &out).await
}

/// Stores the packaged folder under `packaged/{sha}/`; the AES-128 key, if any, sealed apart.
async fn publish(origin: &Shared, sha: &str, out: &Path) -> Result<(), String> {
    let prefix = packaged_prefix(sha);
    let key_path: PathBuf = out.join(KEY_FILE);
    if key_path.exists() {
        let key = tokio::fs::read(&key_path).await.map_err(|e| format!("reading the packaged key: {e}"))?;
        origin
            .objects
            .put_sealed(&format!("{prefix}{KEY_FILE}"), Bytes::from(key))
            .await
            .map_err(|e| format!("storing the key: {e}"))?;
        tokio::fs::remove_file(&key_path).await.map_err(|e| format!("removing the packaged key: {e}"))?;
    }
    origin.objects.put_dir(out, &prefix).await.map_err(|e| format!("storing the packaged files: {e}"))?;
    Ok(())
}

/// Deletes abandoned uploads and their chunks: every upload still open past its expiry.
pub async fn sweep_expired(origin: &Shared, now: i64) -> Result<u64, crate::meta::MetaError> {
    let mut swept = 0;
    for upload in origin.meta.expired_uploads(now).await? {
        if let Err(error) = origin.objects.delete_prefix(&format!("uploads/{}/", upload.id)).await {
            tracing::warn!(upload = %upload.id, "deleting an expired upload's chunks: {error}");
            continue;
        }
        origin.meta.delete_upload(&upload.id).await?;
        origin.metrics.uploads_expired.inc();
        tracing::info!(upload = %upload.id, "abandoned upload expired: its chunks are deleted");
        swept += 1;
    }
    Ok(swept)
}

/// Sweeps every `uploads.janitor_interval`.
pub async fn janitor(origin: Shared) {
    loop {
        if let Err(error) = sweep_expired(&origin, now_unix()).await {
            tracing::error!("sweeping expired uploads: {error}");
        }
        tokio::time::sleep(origin.config.janitor_interval).await;
    }
}
