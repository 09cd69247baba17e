//! One way to set up logs for every Eddy binary: `tracing` to stderr, filtered by RUST_LOG.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs a stderr subscriber. `RUST_LOG` wins when set; otherwise `default_filter` applies
/// (for example `"info"`). Calling it twice is harmless.
pub fn init(default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for people at a terminal; log files and collectors get plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(true)
        .try_init();
}
