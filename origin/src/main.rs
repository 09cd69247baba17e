//! `eddy-origin`: the upload and origin service.
//!
//!     eddy-origin serve [--config FILE] [--listen ADDR] [--data DIR]
//!     eddy-origin user add NAME [--config FILE] [--data DIR]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use eddy_origin::config::{Config, Overrides};
use eddy_origin::meta::Meta;
use eddy_origin::service::{now_unix, Origin};
use eddy_origin::{jobs, server, tokens};

#[derive(Parser)]
#[command(name = "eddy-origin", version, about = "Eddy's origin: uploads, packaging, sharing and signed playback")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// TOML config file (see configs/origin.toml); built-in defaults without one.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Folder for the SQLite database, the objects and the keys, unless the config puts them elsewhere.
    #[arg(long)]
    data: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the service.
    Serve {
        #[command(flatten)]
        common: Common,
        /// Address to listen on, e.g. 127.0.0.1:8070 (port 0 picks a free one).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Manages users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Adds a user and prints their API token (shown once; only its hash is stored).
    Add {
        name: String,
        #[command(flatten)]
        common: Common,
    },
}

fn load(common: &Common, listen: Option<String>) -> anyhow::Result<Config> {
    let overrides = Overrides { listen, data: common.data.clone() };
    Ok(match &common.config {
        Some(path) => Config::load(path, overrides)?,
        None => Config::defaults(overrides)?,
    })
}

fn main() -> ExitCode {
    let logs = eddy_shared::logging::init_buffered("info");
    let result = run(Cli::parse());
    drop(logs);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("eddy-origin: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Serve { common, listen } => {
            let config = load(&common, listen)?;
            runtime.block_on(serve(config))
        }
        Command::User { command: UserCommand::Add { name, common } } => {
            let config = load(&common, None)?;
            runtime.block_on(add_user(config, &name))
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let local = listener.local_addr()?;
    let origin = Arc::new(Origin::open(config, local).await?);
    // The test harness and scripts read this line to learn the port.
    println!("eddy-origin listening on {local}");
    tracing::info!("listening on http://{local}");
    let workers = tokio::spawn(jobs::run(origin.clone()));
    let janitor = tokio::spawn(jobs::janitor(origin.clone()));
    let shutdown = async {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::error!("cannot listen for SIGTERM: {error}");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("stopping");
    };
    server::serve(listener, origin, shutdown).await?;
    // A job cut short here is queued again at the next start.
    workers.abort();
    janitor.abort();
    Ok(())
}

async fn add_user(config: Config, name: &str) -> anyhow::Result<()> {
    if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b)) {
        anyhow::bail!("user name {name:?} must be 1 to 64 letters, digits, or - _ . @");
    }
    std::fs::create_dir_all(&config.data).with_context(|| format!("creating data folder {}", config.data.display()))?;
    let meta = Meta::connect(&config.metadata_url).await?;
    let secret = tokens::new_secret();
    let user = meta.add_user(name, &secret.salt, &secret.hash, now_unix()).await?;
    println!("{}", tokens::token(&user.id, &secret.secret));
    eprintln!("user {name} added; the line above is their API token, shown this once");
    Ok(())
}
