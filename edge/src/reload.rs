//! What SIGHUP does while the edge runs: one [`Reloader::reload`], which rereads what can change without
//! a restart and keeps what was in force when a new version fails its checks. Today that is the viewers'
//! TLS certificate and key; a full config reload (TTL rules, limits, origins) belongs here too, behind
//! the same signal and the same all-or-nothing rule.
//!
//! Nothing is dropped by a reload: connections keep the TLS keys they agreed on, requests in flight
//! and the cache are untouched, and new handshakes use the new certificate.

use std::sync::Arc;

use crate::state::Edge;
use crate::tls::CertStore;

/// Everything a reload may replace.
pub struct Reloader {
    edge: Arc<Edge>,
    /// The TLS listener's certificate, when `listen_tls` is set.
    certs: Option<Arc<CertStore>>,
}

impl Reloader {
    pub fn new(edge: Arc<Edge>, certs: Option<Arc<CertStore>>) -> Self {
        Reloader { edge, certs }
    }

    /// Rereads what can change, logs the outcome and counts it (`eddy_edge_reloads{result}`). Returns
    /// whether everything reloaded; on failure what was in force stays.
    pub fn reload(&self) -> bool {
        let Some(certs) = &self.certs else {
            tracing::info!("reload: nothing to reload (no listen_tls)");
            self.edge.metrics.record_reload(true);
            return true;
        };
        let (cert, key) = certs.files();
        let ok = match certs.reload() {
            Ok(()) => {
                tracing::info!(cert = %cert.display(), key = %key.display(), "reload: TLS certificate reloaded");
                true
            }
            Err(error) => {
                tracing::error!(%error, "reload refused: the TLS certificate in force stays");
                false
            }
        };
        self.edge.metrics.record_reload(ok);
        ok
    }

    /// Starts listening for SIGHUP now (from here on the signal no longer ends the process, so call this
    /// before telling anyone the edge is ready); the future reloads on every SIGHUP for as long as it
    /// runs.
    pub fn on_sighup(self) -> std::io::Result<impl std::future::Future<Output = ()>> {
        let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        Ok(async move {
            while hangups.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading");
                self.reload();
            }
        })
    }
}
