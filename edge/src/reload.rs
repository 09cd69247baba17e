//! What SIGHUP does while the edge runs: one [`Reloader::reload`], which rereads the configuration
//! file (with the command line's overrides applied again) and the viewers' TLS certificate, and puts
//! them in force together or not at all.
//!
//! - What changes: TTL rules and the rest of the cache policy, origins and their settings, the fleet
//!   (`[cluster]`) and the shield, rate limits and client identity, forwarded headers, CORS, signed
//!   URLs (`[auth]`, its key file reread: how a key is rotated), and the TLS certificate (reread from
//!   the files the edge started with).
//! - What needs a restart (a reload says which of these it was asked to change, and leaves them):
//!   listen addresses, workers, connection limits and timeouts, the cache's size, eviction and
//!   ignored query parameters, `[prefetch]`, and the paths of the TLS files.
//! - A file that fails the checks `check-config` runs is refused with the same error, logged, and
//!   counted (`eddy_edge_reloads{result="error"}`); what was in force stays.
//!
//! Nothing is dropped by a reload: the cache is kept, connections keep the TLS keys they agreed on,
//! and a request in flight (a fill too) finishes under the settings it started with (it holds them:
//! `state::Settings`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{Config, Overrides};
use crate::state::{Edge, Settings};
use crate::tls::CertStore;

/// Where the configuration came from, to read it again the same way.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// The `--config` file, if any (without one, only the certificate can be reloaded).
    pub path: Option<PathBuf>,
    /// The command line's overrides, applied again over the reread file.
    pub overrides: Overrides,
}

/// Everything a reload may replace.
pub struct Reloader {
    edge: Arc<Edge>,
    source: ConfigSource,
    /// The public listener's address (a fleet member may find itself in its peers by it).
    listen: SocketAddr,
    /// The TLS listener's certificate, when `listen_tls` is set.
    certs: Option<Arc<CertStore>>,
}

impl Reloader {
    pub fn new(edge: Arc<Edge>, source: ConfigSource, listen: SocketAddr, certs: Option<Arc<CertStore>>) -> Self {
        Reloader { edge, source, listen, certs }
    }

    /// Rereads the configuration and the certificate; on success both are in force, otherwise
    /// neither changes. Logs and counts the outcome; returns whether it succeeded.
    pub fn reload(&self) -> bool {
        let result = self.try_reload();
        match &result {
            Ok(restart_needed) if restart_needed.is_empty() => tracing::info!("reload: new configuration in force"),
            Ok(restart_needed) => tracing::warn!(
                needs_restart = ?restart_needed,
                "reload: new configuration in force, except what only a restart changes"
            ),
            Err(error) => tracing::error!(%error, "reload refused: the configuration in force stays"),
        }
        self.edge.metrics.record_reload(result.is_ok());
        result.is_ok()
    }

    /// Does the reload; returns the changed settings that wait for a restart.
    fn try_reload(&self) -> Result<Vec<&'static str>, String> {
        let settings = match &self.source.path {
            Some(path) => {
                let config = Config::load(path)
                    .and_then(|config| config.with_overrides(self.source.overrides.clone()))
                    .map_err(|e| e.to_string())?;
                if config.origins.is_empty() {
                    return Err(format!("{}: no origin configured", path.display()));
                }
                let settings = Settings::new(config).map_err(|e| e.to_string())?;
                settings.upstream.join_fleet(self.listen)?;
                Some(settings)
            }
            None => None,
        };
        if let Some(certs) = &self.certs {
            // Last: a certificate swap is the one step with an effect of its own, so it happens only
            // once everything else has passed.
            certs.reload().map_err(|e| e.to_string())?;
            let (cert, key) = certs.files();
            tracing::info!(cert = %cert.display(), key = %key.display(), "reload: TLS certificate reread");
        }
        let Some(settings) = settings else { return Ok(Vec::new()) };
        let restart_needed = needs_restart(&self.edge.config, &settings.config);
        self.edge.replace_settings(settings);
        Ok(restart_needed)
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

/// The settings that differ between the configuration the edge started with and `new`, among those
/// only a restart changes.
fn needs_restart(started: &Config, new: &Config) -> Vec<&'static str> {
    // Debug text compares values of types that do not implement PartialEq; it is read once per reload.
    let differs = |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    let checks: [(&'static str, bool); 15] = [
        ("listen", started.listen != new.listen),
        ("admin_listen", started.admin_listen != new.admin_listen),
        ("listen_tls", started.listen_tls != new.listen_tls),
        ("tls", differs(&started.tls, &new.tls)),
        ("workers", started.workers != new.workers),
        ("max_connections", started.max_connections != new.max_connections),
        ("header_read_timeout", started.header_read_timeout.0 != new.header_read_timeout.0),
        ("body_read_timeout", started.body_read_timeout.0 != new.body_read_timeout.0),
        ("keepalive_timeout", started.keepalive_timeout.0 != new.keepalive_timeout.0),
        ("send_timeout", started.send_timeout.0 != new.send_timeout.0),
        ("cache.size", started.cache.size.0 != new.cache.size.0),
        ("cache.eviction", started.cache.eviction != new.cache.eviction),
        ("cache.ignore_query_params", started.cache.ignore_query_params != new.cache.ignore_query_params),
        ("prefetch", differs(&started.prefetch, &new.prefetch)),
        ("origin.max_blocking_reloads", started.origin.max_blocking_reloads != new.origin.max_blocking_reloads),
    ];
    checks.into_iter().filter(|(_, changed)| *changed).map(|(name, _)| name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_names_what_waits_for_a_restart() {
        let started = Config::default();
        let mut new = Config::default();
        assert!(needs_restart(&started, &new).is_empty());
        new.cache.ttl_rules.clear();
        new.origins = vec!["http://127.0.0.1:1".into()];
        assert!(needs_restart(&started, &new).is_empty(), "rules and origins change live");
        new.max_connections = 3;
        new.cache.size.0 = 1;
        assert_eq!(needs_restart(&started, &new), ["max_connections", "cache.size"]);
    }
}
