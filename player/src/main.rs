//! `eddy-play`: play an HLS URL with Eddy's ABR, evaluate the ABR against baselines in virtual time,
//! or replay a recorded playback through it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use eddy_player::pipeline::{display_available, preflight};
use eddy_player::report::{plot_timeline, write_atomically};
use eddy_player::session::{list, play, PlayerConfig};
use eddy_player::{playlist, sim};

#[derive(Parser, Debug)]
#[command(
    name = "eddy-play",
    version,
    about = "Play an HLS stream (master or media playlist: http, https or a file) with adaptive bitrate",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    play: PlayArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run Eddy's ABR and the baselines against bandwidth traces in virtual time.
    Evaluate(sim::EvaluateArgs),
    /// Replay a recorded playback (`--events`) through Eddy's ABR and check it decides the same.
    Replay(sim::replay::ReplayArgs),
}

#[derive(Args, Debug)]
struct PlayArgs {
    /// Master or media playlist: http(s) URL or file path.
    #[arg(required = true)]
    url: Option<String>,
    /// Fake sinks (real-time, no window, no sound); automatic when no display is found.
    #[arg(long)]
    headless: bool,
    /// Forward buffer target in seconds: segments are fetched ahead up to this much media.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    buffer: f64,
    /// Highest variant bitrate to use (e.g. 1500000, 1500k, 1.5M).
    #[arg(long, value_name = "BPS", value_parser = parse_bitrate)]
    max_bitrate: Option<u64>,
    /// Highest picture height to use.
    #[arg(long, value_name = "PX")]
    max_height: Option<u64>,
    /// Play only this variant (index in the master playlist as listed, from 0).
    #[arg(long, value_name = "INDEX")]
    rendition: Option<usize>,
    /// Start this many seconds into the stream (VOD).
    #[arg(long, value_name = "SECS")]
    start_at: Option<f64>,
    /// Stop after this many seconds of playback.
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Write the QoE report as JSON.
    #[arg(long, value_name = "FILE.json")]
    report: Option<PathBuf>,
    /// Stream every decision as JSON lines while playing.
    #[arg(long, value_name = "FILE.jsonl")]
    events: Option<PathBuf>,
    /// Draw a timeline (bandwidth estimate, bitrate, buffer) as SVG.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// No status line.
    #[arg(long)]
    quiet: bool,
    /// Audio language (RFC 5646, e.g. `en` or `pt-BR`) among the stream's alternative audio
    /// renditions (`EXT-X-MEDIA`); default: the stream's default rendition.
    #[arg(long, value_name = "LANG")]
    audio_lang: Option<String>,
    /// Show subtitles in this language (RFC 5646) over the video, from the stream's WebVTT subtitle
    /// renditions. Without it, the default rendition's cues are still written to `--events`.
    #[arg(long, value_name = "LANG")]
    subs: Option<String>,
    /// Seek to TO seconds of the stream once AT seconds have played (VOD; the ←/→ keys' equivalent for
    /// scripts), e.g. `--seek-to 20@2`.
    #[arg(long, value_name = "TO@AT", value_parser = parse_seek)]
    seek_to: Option<(f64, f64)>,
    /// Low-latency live (LL-HLS): join this many seconds behind the end of the playlist instead of
    /// the server's PART-HOLD-BACK (at least two part targets are kept, the draft's least hold-back).
    #[arg(long, value_name = "SECS")]
    live_delay: Option<f64>,
    /// Print the variants and the audio and subtitle renditions, then exit.
    #[arg(long)]
    list: bool,
}

fn parse_bitrate(text: &str) -> Result<u64, String> {
    eddy_shared::size::parse_bitrate(text).map_err(|e| e.to_string())
}

fn parse_seek(text: &str) -> Result<(f64, f64), String> {
    let (to, at) = text.split_once('@').ok_or_else(|| format!("'{text}': expected TO@AT, e.g. 20@2"))?;
    let seconds = |what: &str, value: &str| match value.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("'{text}': {what} must be zero or more seconds, got '{value}'")),
    };
    Ok((seconds("TO", to)?, seconds("AT", at)?))
}

fn positive_seconds(name: &str, value: f64) -> Result<()> {
    if !value.is_finite() || value <= 0.0 {
        bail!("--{name} must be a positive number of seconds, got {value}");
    }
    Ok(())
}

async fn run_player(args: PlayArgs) -> Result<()> {
    let Some(url_arg) = args.url else { bail!("a playlist URL or path is required") };
    let url = playlist::source_url(&url_arg).map_err(anyhow::Error::msg)?;
    if args.list {
        print!("{}", list(&url).await?);
        return Ok(());
    }
    positive_seconds("buffer", args.buffer)?;
    if let Some(duration) = args.duration {
        positive_seconds("duration", duration)?;
    }
    if let Some(delay) = args.live_delay {
        positive_seconds("live-delay", delay)?;
    }
    if let Some(start) = args.start_at {
        if !start.is_finite() || start < 0.0 {
            bail!("--start-at must be zero or more seconds, got {start}");
        }
    }
    // Every GStreamer element playback needs is there before anything is fetched.
    preflight()?;
    let headless = args.headless || !display_available();
    if headless {
        let why = if args.headless { "--headless" } else { "no display found (DISPLAY/WAYLAND_DISPLAY unset)" };
        eprintln!("eddy-play: {why}: playing with real-time fake sinks (no window, no sound)");
    }
    let config = PlayerConfig {
        url,
        headless,
        buffer_target_s: args.buffer,
        max_bitrate_bps: args.max_bitrate,
        max_height: args.max_height,
        rendition: args.rendition,
        start_at_s: args.start_at,
        duration_s: args.duration,
        events: args.events,
        quiet: args.quiet,
        audio_lang: args.audio_lang,
        seek_to: args.seek_to,
        keys: true,
        subs: args.subs,
        live_delay_s: args.live_delay,
    };
    let played = play(config).await?;
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) && !args.quiet {
        eprintln!();
    }
    println!("{}", played.report.summary());
    if let Some(path) = &args.report {
        let json = serde_json::to_vec_pretty(&played.report).context("serialising the report")?;
        write_atomically(path, &json).with_context(|| format!("writing the report {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        plot_timeline(path, &played.timeline).map_err(anyhow::Error::msg).context("writing the plot")?;
    }
    Ok(())
}

fn main() -> ExitCode {
    eddy_shared::logging::init("info");
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Evaluate(args)) => sim::run_evaluate(args),
        Some(Command::Replay(args)) => sim::replay::run_replay(args),
        None => match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(runtime) => runtime.block_on(run_player(cli.play)),
            Err(e) => Err(anyhow::Error::new(e).context("starting the async runtime")),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("eddy-play: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
