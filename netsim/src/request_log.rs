//! What the proxy did for each request: one tracing line, and optionally one JSON line in a file so
//! tests and people can read what a player fetched and when.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use serde::Serialize;

/// One request as seen through the link. Times are milliseconds of link time.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    pub method: String,
    /// Path and query as requested.
    pub path: String,
    pub status: u16,
    /// Body bytes delivered to the client.
    pub bytes: u64,
    pub start_ms: u64,
    /// When the response head went out (after the first-byte latency and the upstream's answer).
    pub first_byte_ms: u64,
    pub end_ms: u64,
    /// The body was not delivered in full (the client went away or the upstream failed).
    pub closed_early: bool,
}

impl RequestRecord {
    pub fn trace(&self) {
        tracing::info!(
            target: "eddy_netsim::request",
            method = %self.method,
            path = %self.path,
            status = self.status,
            bytes = self.bytes,
            start_ms = self.start_ms,
            end_ms = self.end_ms,
            took_ms = self.end_ms.saturating_sub(self.start_ms),
            closed_early = self.closed_early,
            "request"
        );
    }
}

/// A JSON-lines file of [`RequestRecord`]s, each written whole in one call.
pub struct RequestLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl RequestLog {
    /// Creates (or empties) the file.
    pub fn create(path: &Path) -> Result<RequestLog> {
        let file = File::create(path).with_context(|| format!("--log {}: cannot create", path.display()))?;
        Ok(RequestLog { path: path.to_path_buf(), file: Mutex::new(file) })
    }

    pub fn write(&self, record: &RequestRecord) {
        let mut line = match serde_json::to_string(record) {
            Ok(line) => line,
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode a request record");
                return;
            }
        };
        line.push('\n');
        let mut file = self.file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(e) = file.write_all(line.as_bytes()) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write the request log");
        }
    }
}
