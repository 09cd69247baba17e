//! `eddy-package`: transcode a video (or a test pattern) into an HLS bitrate ladder.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use eddy_packager::ladder::{parse_ladder, DEFAULT_LADDER};
use eddy_packager::pipeline::{Format, Source};
use eddy_packager::{package_with, AudioLayout, LowLatency, PackageConfig, PackageOptions, Progress, Summary};
use eddy_shared::size::format_size;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FormatArg {
    /// MPEG-2 transport stream segments (.ts)
    Ts,
    /// CMAF fragmented MP4 segments (.m4s) with an init.mp4 per rendition
    Fmp4,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AudioArg {
    /// In every video rendition
    Muxed,
    /// In an audio-only rendition of its own, DIR/audio/index.m3u8 (EXT-X-MEDIA TYPE=AUDIO; needs
    /// --format fmp4)
    Separate,
}

/// Transcode a video into an HLS bitrate ladder: DIR/master.m3u8 and DIR/<rung>/index.m3u8.
#[derive(Debug, Parser)]
#[command(name = "eddy-package", version)]
struct Cli {
    /// Video file to package (anything GStreamer decodes: mp4, mkv, webm, mov, ts).
    #[arg(required_unless_present = "test_pattern", conflicts_with = "test_pattern")]
    input: Option<PathBuf>,
    /// Package a generated test pattern of this length instead of a file (e.g. 30s, 2m).
    #[arg(long, value_name = "DURATION")]
    test_pattern: Option<String>,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Renditions as HEIGHTp:VIDEO_BITRATE, comma-separated.
    #[arg(long, default_value = DEFAULT_LADDER)]
    ladder: String,
    /// Segment (and GOP) duration in seconds [default: 2, or 4 with --low-latency].
    #[arg(long)]
    segment_duration: Option<f64>,
    #[arg(long, value_enum, default_value = "ts")]
    format: FormatArg,
    /// Where the audio goes.
    #[arg(long, value_enum, default_value = "muxed")]
    audio: AudioArg,
    /// The separate audio rendition's LANGUAGE, an RFC 5646 tag such as en or pt-BR (with --audio
    /// separate).
    #[arg(long, value_name = "LANG", default_value = "und")]
    audio_lang: String,
    /// Encrypt segments with AES-128; the key is written to DIR/enc.key.
    #[arg(long)]
    encrypt: bool,
    /// Write a sliding-window live playlist in real time (test pattern only).
    #[arg(long, requires = "test_pattern")]
    live: bool,
    /// Segments per live playlist.
    #[arg(long, default_value_t = 6, requires = "live")]
    window: usize,
    /// Low-Latency HLS (with --live and --format fmp4): every segment is also published as parts
    /// while it is made, each its own file starting with a keyframe, with blocking-reload playlists
    /// (EXT-X-PART, EXT-X-PRELOAD-HINT, EXT-X-SERVER-CONTROL). Serve the folder through eddy-edge,
    /// whose directory origin holds `_HLS_msn` requests.
    #[arg(long)]
    low_latency: bool,
    /// Seconds per part (and GOP) with --low-latency; segments must be a whole number of parts.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    part_duration: f64,
    /// x264 speed preset (ultrafast, superfast, veryfast, ...); default ultrafast for the test
    /// pattern, veryfast for files.
    #[arg(long)]
    preset: Option<String>,
    /// Print the summary as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

const PRESETS: [&str; 10] =
    ["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo"];

/// A test-pattern length: any duration `eddy_shared::duration` reads, above zero and at most a day.
fn parse_duration(text: &str) -> Option<Duration> {
    eddy_shared::duration::parse_duration(text).ok().filter(|d| !d.is_zero() && *d <= Duration::from_secs(24 * 3600))
}

fn options_from(cli: &Cli) -> Result<PackageOptions> {
    let audio = match cli.audio {
        AudioArg::Muxed => {
            if cli.audio_lang != "und" {
                bail!("--audio-lang names the separate audio rendition's language: it needs --audio separate");
            }
            AudioLayout::Muxed
        }
        AudioArg::Separate => {
            if matches!(cli.format, FormatArg::Ts) {
                bail!(
                    "--audio separate needs --format fmp4: MPEG-TS renditions (--format ts, the default) carry \
                     their audio muxed"
                );
            }
            if !eddy_packager::is_language_tag(&cli.audio_lang) {
                bail!("--audio-lang '{}' is not a language tag such as en, pt-BR or und (RFC 5646)", cli.audio_lang);
            }
            AudioLayout::Separate { language: cli.audio_lang.clone() }
        }
    };
    let options = PackageOptions::default().with_audio(audio);
    if !cli.low_latency {
        if cli.part_duration != LowLatency::default().part_duration {
            bail!("--part-duration sets the parts of --low-latency: it needs --low-latency");
        }
        return Ok(options);
    }
    // The library refuses these too; here the message can name the flags.
    if !cli.live {
        bail!("--low-latency needs --live: partial segments exist only at a live stream's edge");
    }
    if matches!(cli.format, FormatArg::Ts) {
        bail!("--low-latency needs --format fmp4: partial segments are CMAF chunks (--format ts is the default)");
    }
    if cli.encrypt {
        bail!("--low-latency cannot be combined with --encrypt: AES-128 encrypts whole segments, not parts");
    }
    Ok(options.with_low_latency(LowLatency { part_duration: cli.part_duration }))
}

/// `--segment-duration`, or its default: 2 s, and 4 s with `--low-latency`, where parts carry the
/// latency and longer segments cost nothing in it (Apple suggests 4 to 6 s with 1 s parts).
fn segment_duration(cli: &Cli) -> f64 {
    cli.segment_duration.unwrap_or(if cli.low_latency { 4.0 } else { 2.0 })
}

fn config_from(cli: &Cli) -> Result<PackageConfig> {
    let ladder = parse_ladder(&cli.ladder).with_context(|| format!("--ladder '{}'", cli.ladder))?;
    let segment_duration = segment_duration(cli);
    if !(segment_duration.is_finite() && (0.5..=30.0).contains(&segment_duration)) {
        bail!("--segment-duration {segment_duration} must be between 0.5 and 30 seconds");
    }
    if cli.live && cli.window < 2 {
        bail!("--window {} must be at least 2 segments", cli.window);
    }
    if let Some(preset) = cli.preset.as_deref().filter(|p| !PRESETS.contains(p)) {
        bail!("--preset '{preset}' is not an x264 preset (one of {})", PRESETS.join(", "));
    }
    let source = match (&cli.input, &cli.test_pattern) {
        (_, Some(length)) => Source::TestPattern {
            duration: parse_duration(length)
                .with_context(|| format!("--test-pattern '{length}' is not a duration such as 30s or 2m"))?,
            live: cli.live,
        },
        (Some(input), None) => Source::File(input.clone()),
        (None, None) => bail!("give an INPUT file or --test-pattern DURATION"),
    };
    Ok(PackageConfig {
        source,
        out_dir: cli.out.clone(),
        ladder,
        segment_duration,
        format: match cli.format {
            FormatArg::Ts => Format::Ts,
            FormatArg::Fmp4 => Format::Fmp4,
        },
        encrypt: cli.encrypt,
        live_window: cli.live.then_some(cli.window),
        preset: cli.preset.clone(),
    })
}

fn print_table(summary: &Summary) {
    println!(
        "{:<8} {:>10} {:>10} {:>10} {:>10} {:>9} {:>10}",
        "rung", "resolution", "target", "average", "peak", "segments", "bytes"
    );
    for r in &summary.renditions {
        println!(
            "{:<8} {:>10} {:>10} {:>10} {:>10} {:>9} {:>10}",
            r.name,
            format!("{}x{}", r.width, r.height),
            format!("{}k", r.target_video_bitrate / 1000),
            format!("{}k", r.average_bitrate / 1000),
            format!("{}k", r.peak_bitrate / 1000),
            r.segments,
            format_size(r.bytes),
        );
    }
    if let Some(audio) = &summary.audio {
        println!(
            "{:<8} {:>10} {:>10} {:>10} {:>10} {:>9} {:>10}",
            audio.name,
            format!("lang {}", audio.language),
            "",
            format!("{}k", audio.average_bitrate / 1000),
            format!("{}k", audio.peak_bitrate / 1000),
            audio.segments,
            format_size(audio.bytes),
        );
    }
    if !summary.skipped.is_empty() {
        println!("skipped (taller than the source): {}", summary.skipped.join(", "));
    }
    println!("master playlist: {} ({:.1} s)", summary.master.display(), summary.wall_seconds);
}

fn main() -> ExitCode {
    eddy_shared::logging::init("info");
    let cli = Cli::parse();
    // Errors are printed as text, never as a Debug dump with a backtrace (RUST_BACKTRACE or not).
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("eddy-package: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<()> {
    let options = options_from(cli)?;
    let config = config_from(cli)?;
    let live = config.live_window.is_some();
    let bar = ProgressBar::new(1000);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {percent}% ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let master = config.out_dir.join(eddy_packager::MASTER_PLAYLIST);
    let mut announced = false;
    let result = package_with(&config, &options, &mut |event| match event {
        Progress::Position { done, total } => {
            if let Some(total) = total.filter(|t| !t.is_zero()) {
                bar.set_position((done.as_secs_f64() / total.as_secs_f64() * 1000.0).min(1000.0) as u64);
            }
        }
        Progress::MasterWritten => {
            // Live: tests and demos wait for this line before starting a player.
            if live && !announced {
                announced = true;
                bar.suspend(|| println!("eddy-package live master at {}", master.display()));
            }
        }
    });
    bar.finish_and_clear();
    let summary = result?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_table(&summary);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_latency_flags() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["eddy-package", "--out", "o"], args].concat());
        let live = ["--test-pattern", "10s", "--live", "--format", "fmp4", "--low-latency"];
        let cli = parse(&live).unwrap();
        let options = options_from(&cli).unwrap();
        assert_eq!(options.low_latency, Some(LowLatency { part_duration: 1.0 }));
        assert_eq!(config_from(&cli).unwrap().segment_duration, 4.0, "4 s segments by default");
        let cli = parse(&[&live[..], &["--part-duration", "0.5", "--segment-duration", "2"]].concat()).unwrap();
        assert_eq!(options_from(&cli).unwrap().low_latency, Some(LowLatency { part_duration: 0.5 }));
        assert_eq!(config_from(&cli).unwrap().segment_duration, 2.0);
        assert_eq!(config_from(&parse(&["--test-pattern", "1s"]).unwrap()).unwrap().segment_duration, 2.0);
        let refused = |args: &[&str]| options_from(&parse(args).unwrap()).unwrap_err().to_string();
        assert!(refused(&["--test-pattern", "5s", "--format", "fmp4", "--low-latency"]).contains("needs --live"));
        assert!(refused(&["--test-pattern", "5s", "--live", "--low-latency"]).contains("needs --format fmp4"));
        assert!(refused(&[&live[..], &["--encrypt"]].concat()).contains("--encrypt"));
        assert!(refused(&["--test-pattern", "5s", "--part-duration", "0.5"]).contains("needs --low-latency"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("10"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("-3s"), None);
    }
}
