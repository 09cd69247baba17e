//! `eddy-netsim`: an HTTP/1.1 proxy that forwards GET/HEAD to an upstream and releases every response
//! body through one shaped link that follows a bandwidth trace, so a player behind it sees a slow or
//! changing network. Each request is logged (tracing, and optionally JSON lines) so a person or a test
//! can see what the player did.

mod proxy;
mod request_log;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{ArgGroup, Parser};
use eddy_shared::netsim::{Link, Trace, PATTERN_HELP};
use eddy_shared::size::parse_bitrate;
use reqwest::Url;
use tokio::net::TcpListener;

use crate::proxy::Proxy;
use crate::request_log::RequestLog;

const AFTER_HELP: &str = "\
The link is shared by every connection through the proxy (a player's prefetch does not double the
bandwidth). Link time 0 is the first request, so a pattern's times count from the start of a session.

TRACE FILES (--trace) are read by their shape:
  Pensieve:  one 'time_s bandwidth_Mbps' sample per line; each holds until the next; loops at the end
  Mahimahi:  one integer ms timestamp per line, one 1500-byte delivery opportunity each; loops at the
             last timestamp
  Blank lines and '#' comments are skipped.

--log FILE.jsonl writes one JSON object per request:
  {\"method\",\"path\",\"status\",\"bytes\",\"start_ms\",\"first_byte_ms\",\"end_ms\",\"closed_early\"}
  (times in ms of link time; closed_early: the body was not delivered in full).

EXAMPLES:
  eddy-netsim --listen 127.0.0.1:8090 --upstream http://127.0.0.1:8080 --rate 3M --latency 40
  eddy-netsim --upstream http://127.0.0.1:8080 --pattern 5M@0s,800k@20s,5M@40s --log requests.jsonl
  eddy-netsim --upstream http://127.0.0.1:8080 --pattern square:4M:500k:30s
  eddy-netsim --upstream http://127.0.0.1:8080 --trace norway-bus-1.log
  eddy-netsim --pattern random:4g:3:300s --print-trace > 4g-3.txt";

#[derive(Debug, Parser)]
#[command(
    name = "eddy-netsim",
    version,
    about = "HTTP proxy that shapes every response body to a bandwidth trace (network simulator)",
    after_help = format!("{PATTERN_HELP}\n\n{AFTER_HELP}"),
)]
#[command(group(ArgGroup::new("shape").required(true).args(["trace", "rate", "pattern"])))]
struct Args {
    /// Address to listen on (port 0 picks a free port; the ready line shows it).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// Origin the requests are forwarded to, e.g. http://127.0.0.1:8080 (a path prefix is kept).
    #[arg(long, value_name = "URL", value_parser = parse_upstream, required_unless_present = "print_trace")]
    upstream: Option<Url>,
    /// Bandwidth trace file (Pensieve or Mahimahi format, see below).
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Constant bandwidth in bits/s, e.g. 2M, 600k, 1500000.
    #[arg(long, value_name = "BPS", value_parser = parse_rate)]
    rate: Option<f64>,
    /// Bandwidth pattern: steps or a named shape (grammar below).
    #[arg(long, value_name = "SPEC", value_parser = parse_pattern)]
    pattern: Option<Trace>,
    /// First-byte latency added to every request, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    latency: u64,
    /// Also write one JSON line per request to this file (replaced at start).
    #[arg(long, value_name = "FILE.jsonl")]
    log: Option<PathBuf>,
    /// Print the trace (one loop) in Pensieve's format on stdout and exit, e.g. to save a generated
    /// trace: --pattern random:3g:7:300s --print-trace > 3g-7.txt
    #[arg(long)]
    print_trace: bool,
}

fn parse_upstream(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("'{text}' is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(format!("'{text}' is not an http:// or https:// URL with a host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("'{text}' must not have a query or fragment"));
    }
    Ok(url)
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match parse_bitrate(text) {
        Ok(0) => Err("the rate must be above 0".into()),
        Ok(bps) => Ok(bps as f64),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_pattern(text: &str) -> Result<Trace, String> {
    Trace::from_pattern(text).map_err(|e| e.to_string())
}

fn trace_from(args: &Args) -> Result<Trace> {
    if let Some(path) = &args.trace {
        return Trace::load(path).context("--trace");
    }
    if let Some(bps) = args.rate {
        return Trace::constant(bps).context("--rate");
    }
    match &args.pattern {
        Some(trace) => Ok(trace.clone()),
        None => bail!("one of --trace, --rate or --pattern is required"),
    }
}

fn main() -> ExitCode {
    eddy_shared::logging::init("info");
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("eddy-netsim: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eddy-netsim: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let trace = trace_from(&args)?;
    if args.print_trace {
        print!("{}", trace.to_pensieve());
        return Ok(());
    }
    let Some(upstream) = args.upstream.clone() else {
        bail!("--upstream is required");
    };
    let log = match &args.log {
        Some(path) => Some(RequestLog::create(path)?),
        None => None,
    };
    let link = Link::new(trace.clone(), Duration::from_millis(args.latency));
    let proxy = Arc::new(Proxy::new(upstream.clone(), link, log)?);

    let listener =
        TcpListener::bind(args.listen).await.with_context(|| format!("--listen {}: cannot listen", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    tracing::info!(
        upstream = %upstream,
        mean_kbps = (trace.mean_bps() / 1000.0).round(),
        loop_s = trace.duration_s(),
        latency_ms = args.latency,
        "shaping responses"
    );
    println!("eddy-netsim listening on {addr}");

    tokio::select! {
        () = proxy::serve(listener, proxy) => {}
        () = shutdown_signal() => tracing::info!("stopping"),
    }
    Ok(())
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_shape_is_required() {
        let base = ["eddy-netsim", "--upstream", "http://127.0.0.1:1"];
        assert!(Args::try_parse_from(base).is_err());
        let both = [&base[..], &["--rate", "1M", "--pattern", "1M@0s"]].concat();
        assert!(Args::try_parse_from(both).is_err());
        let ok = [&base[..], &["--rate", "1M"]].concat();
        let args = Args::try_parse_from(ok).unwrap();
        assert_eq!(args.rate, Some(1e6));
    }

    #[test]
    fn printing_a_trace_needs_no_upstream() {
        let args = Args::try_parse_from(["eddy-netsim", "--pattern", "random:3g:1", "--print-trace"]).unwrap();
        assert!(args.print_trace && args.upstream.is_none());
        assert!(Args::try_parse_from(["eddy-netsim", "--pattern", "random:3g:1"]).is_err());
    }

    #[test]
    fn bad_values_name_the_problem() {
        let err = Args::try_parse_from(["eddy-netsim", "--upstream", "ftp://x", "--rate", "1M"]).unwrap_err();
        assert!(err.to_string().contains("ftp://x"), "{err}");
        let err = Args::try_parse_from(["eddy-netsim", "--upstream", "http://x", "--rate", "fast"]).unwrap_err();
        assert!(err.to_string().contains("fast"), "{err}");
        let err = Args::try_parse_from(["eddy-netsim", "--upstream", "http://x", "--pattern", "3M@5s"]).unwrap_err();
        assert!(err.to_string().contains("start at 0"), "{err}");
    }
}
