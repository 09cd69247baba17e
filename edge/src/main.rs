//! `eddy-edge`: the command line. Flags override the config file, which overrides defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use eddy_edge::config::{Config, Overrides};
use eddy_edge::reload::{ConfigSource, Reloader};
use eddy_edge::state::Edge;
use eddy_edge::{server, stats_cmd, tls};
use eddy_shared::size::parse_size;

#[derive(Parser)]
#[command(
    name = "eddy-edge",
    version,
    about = "Eddy's edge cache for HLS: serves playlists and segments from memory, falls back to the origin"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve: answer viewers from the cache, fetch misses from the origins.
    Serve {
        /// TOML config file (see configs/edge.toml for every key).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address for viewers, e.g. 0.0.0.0:8080.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Address of the admin listener (/metrics, /stats, /healthz, /purge).
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
        /// An origin: http(s) URL or directory. Repeat for failover order.
        #[arg(long = "origin", value_name = "URL_OR_DIR")]
        origins: Vec<String>,
        /// Cache capacity, e.g. 64MiB, 2GiB or plain bytes.
        #[arg(long, value_parser = parse_size_arg)]
        cache_size: Option<u64>,
        /// Runtime worker threads (default: all cores).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Print an edge's figures (hit ratio, bytes, entries…).
    Stats {
        /// The edge's admin listener.
        #[arg(long, default_value = "http://127.0.0.1:9090")]
        admin: String,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
        /// Refresh every SECS seconds.
        #[arg(long, value_name = "SECS")]
        watch: Option<u64>,
        /// Every fleet member's figures and the fleet's totals (members are reached through the admin
        /// URLs the fleet's list gives).
        #[arg(long)]
        fleet: bool,
    },
    /// Validate a config file and exit.
    CheckConfig { file: PathBuf },
}

fn parse_size_arg(text: &str) -> Result<u64, String> {
    parse_size(text).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let logs = eddy_shared::logging::init_buffered("info");
    let result = run(Cli::parse());
    // The queued log lines go out before the final error line.
    drop(logs);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("eddy-edge: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::CheckConfig { file } => {
            let config = Config::load(&file)?;
            println!(
                "{}: ok ({} origin(s), cache {} bytes)",
                file.display(),
                config.origins.len(),
                config.cache.size.0
            );
            Ok(())
        }
        Command::Stats { admin, json, watch, fleet } => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(stats_cmd::run(&admin, json, watch, fleet))
        }
        Command::Serve { config, listen, admin_listen, origins, cache_size, workers } => {
            let base = match &config {
                Some(path) => Config::load(path)?,
                None => Config::default(),
            };
            let overrides = Overrides { listen, admin_listen, origins, cache_size, workers };
            let source = ConfigSource { path: config.clone(), overrides: overrides.clone() };
            let config = base.with_overrides(overrides)?;
            if config.origins.is_empty() {
                anyhow::bail!("no origin configured: pass --origin URL_OR_DIR or set `origins` in the config file");
            }
            // One worker needs no work-stealing scheduler: the current-thread runtime skips its overhead.
            let runtime = if config.worker_threads() == 1 {
                tokio::runtime::Builder::new_current_thread().enable_all().build()
            } else {
                tokio::runtime::Builder::new_multi_thread().worker_threads(config.worker_threads()).enable_all().build()
            }
            .context("starting the runtime")?;
            runtime.block_on(serve(config, source))
        }
    }
}

async fn serve(config: Config, source: ConfigSource) -> anyhow::Result<()> {
    let edge = Arc::new(Edge::new(config)?);
    let (public, admin) = server::bind(&edge).await?;
    // The fleet is joined once this edge's own address is known (it may find itself by it).
    let listen = public.local_addr()?;
    edge.settings().upstream.join_fleet(listen).map_err(anyhow::Error::msg)?;
    {
        // The settings in force are asked each time: a reload brings its own peers file.
        let edge = edge.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(eddy_edge::upstream::PEERS_FILE_POLL).await;
                edge.settings().upstream.poll_peers_file(listen);
            }
        });
    }
    let certs = match &edge.config.tls {
        Some(files) if edge.config.listen_tls.is_some() => {
            Some(Arc::new(tls::CertStore::load(&files.cert, &files.key)?))
        }
        _ => None,
    };
    let tls_listener = match &certs {
        Some(certs) => server::bind_tls(&edge, certs.clone()).await?,
        None => None,
    };
    // Before the ready line: whoever sends SIGHUP after it gets a reload, never the signal's default exit.
    let reloads = Reloader::new(edge.clone(), source, listen, certs).on_sighup().context("listening for SIGHUP")?;
    if let Some(tls_listener) = &tls_listener {
        let ready = server::tls_ready_line(tls_listener.listener.local_addr()?);
        tracing::info!("{ready}");
        println!("{ready}");
    }
    let ready = server::ready_line(public.local_addr()?, admin.local_addr()?);
    tracing::info!(origins = ?edge.settings().origins.names(), cache_bytes = edge.config.cache.size.0, "{ready}");
    println!("{ready}");
    // Reloads run beside the server; the task ends with the runtime.
    tokio::spawn(reloads);
    server::run(edge, public, admin, tls_listener, server::shutdown_signal()).await
}
