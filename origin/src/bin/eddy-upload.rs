//! `eddy-upload FILE --origin URL`: uploads a video to an Eddy origin in chunks, resuming where an
//! interrupted run stopped (the origin remembers which chunks it has), and optionally waits until the
//! video is packaged.
//!
//! On stdout, and only there: `video: ID`, then `playback: URL` (with `--wait`) or `state: STATE`.
//! Exit codes: 0 done, 1 error (or packaging failed), 2 usage, 130 interrupted.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use url::Url;

use eddy_origin::client::{parse_origin, Config, Phase, Token, Ui, Uploader};
use eddy_origin::meta::Visibility;

/// Uploads a video to an Eddy origin. Run it again after an interruption to resume.
#[derive(Parser)]
#[command(name = "eddy-upload", version)]
struct Args {
    /// The video file.
    file: PathBuf,
    /// The origin's API base URL, e.g. http://127.0.0.1:8070
    #[arg(long, value_parser = parse_origin)]
    origin: Url,
    /// The API token (better given in the environment than on the command line).
    #[arg(long, env = "EDDY_TOKEN", hide_env_values = true)]
    token: String,
    /// Chunks sent at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    parallel: u16,
    /// Who may watch the video (the origin's default when not given).
    #[arg(long, value_enum)]
    visibility: Option<VisibilityArg>,
    /// Wait until the video is packaged, and print its playback URL.
    #[arg(long)]
    wait: bool,
    /// No progress bars and no notes; only the result and errors.
    #[arg(long)]
    quiet: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum VisibilityArg {
    Private,
    Unlisted,
    Public,
}

impl From<VisibilityArg> for Visibility {
    fn from(arg: VisibilityArg) -> Self {
        match arg {
            VisibilityArg::Private => Visibility::Private,
            VisibilityArg::Unlisted => Visibility::Unlisted,
            VisibilityArg::Public => Visibility::Public,
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    // Usage errors exit with 2, --help and --version with 0.
    let args = Args::parse();
    let mut cfg = Config::new(args.origin.clone(), Token::new(args.token.clone()));
    cfg.parallel = usize::from(args.parallel);
    cfg.visibility = args.visibility.map(Visibility::from);
    let ui = Ui::new(!args.quiet && std::io::stderr().is_terminal(), !args.quiet);
    let uploader = match Uploader::new(cfg, ui) {
        Ok(uploader) => uploader,
        Err(error) => {
            eprintln!("eddy-upload: error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = tokio::select! {
        biased;
        Ok(()) = tokio::signal::ctrl_c() => {
            uploader.ui().clear();
            eprintln!("eddy-upload: interrupted; {}", resume_hint(&args, &uploader.phase()));
            return ExitCode::from(130);
        }
        outcome = run(&args, &uploader) => outcome,
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            uploader.ui().clear();
            eprintln!("eddy-upload: error: {error:#}");
            if let phase @ Phase::Sending { .. } = uploader.phase() {
                eprintln!("eddy-upload: {}", resume_hint(&args, &phase));
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args, uploader: &Uploader) -> anyhow::Result<ExitCode> {
    let uploaded = uploader.upload(&args.file).await.with_context(|| format!("uploading {}", args.file.display()))?;
    if uploaded.resumed > 0 || uploaded.deduplicated == Some(true) {
        let dedup = if uploaded.deduplicated == Some(true) { "; the origin already had this content" } else { "" };
        uploader
            .ui()
            .note(&format!("sent {} chunks, {} were already at the origin{dedup}", uploaded.sent, uploaded.resumed));
    }
    println!("video: {}", uploaded.video_id);
    if !args.wait {
        println!("state: {}", uploaded.state);
        return Ok(ExitCode::SUCCESS);
    }
    let video = uploader.wait(&uploaded.video_id).await?;
    if video.state != "ready" {
        uploader.ui().clear();
        let reason = video.reason.as_deref().unwrap_or("the origin gave no reason");
        eprintln!("eddy-upload: error: packaging video {} failed: {reason}", uploaded.video_id);
        return Ok(ExitCode::FAILURE);
    }
    let playback = uploader.playback(&uploaded.video_id).await?;
    println!("playback: {}", playback.url);
    Ok(ExitCode::SUCCESS)
}

/// What became of the upload, and how to go on.
fn resume_hint(args: &Args, phase: &Phase) -> String {
    match phase {
        Phase::Starting | Phase::Hashing => "nothing was sent yet".to_owned(),
        Phase::Sending { upload_id, expires_at, .. } => {
            let until = u64::try_from(*expires_at)
                .ok()
                .and_then(|secs| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs)))
                .map_or_else(|| format!("Unix time {expires_at}"), httpdate::fmt_http_date);
            format!(
                "the chunks sent stay at the origin (upload {upload_id}) until {until}; to resume, run again: \
                 eddy-upload {} --origin {} (with the same token)",
                shell_quote(&args.file.to_string_lossy()),
                shell_quote(args.origin.as_str()),
            )
        }
        Phase::Completed { video_id } => {
            format!("the upload is complete (video {video_id}); packaging goes on at the origin")
        }
    }
}

/// `text` as one word for a POSIX shell.
fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | ':' | '@' | '+' | ','));
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}
