//! ABR evaluation in virtual time: the player's real ABR component (and the baselines) against
//! bandwidth traces, with no sockets and no clock. Segment downloads take the time the trace gives
//! them (plus a first-byte latency), playback drains the buffer, and start-up, stalls and switches are
//! counted the way the real player counts them. Traces come from `eddy_shared::netsim::trace`
//! (seeded families, or Pensieve/Mahimahi files with `--traces DIR`).

pub mod replay;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use eddy_shared::netsim::{generate, Family, Trace};
use serde::Serialize;

use crate::abr::baselines::{BbaAbr, BolaAbr, RobustMpcAbr, ThroughputAbr};
use crate::abr::history::{self, AbandonPoint, DecisionPoint, Download, History, Upcoming};
use crate::abr::{AbrAlgorithm, EddyAbr, PartialTransfer, Rung};
use crate::qoe;

/// The ladder of the ABR literature (Pensieve, MPC): kbps.
pub const LADDER_KBPS: [u64; 6] = [300, 750, 1200, 1850, 2850, 4300];
/// Segment duration of the literature's ladder.
pub const SEGMENT_S: f64 = 4.0;
/// Segments per simulated video (48 × 4 s, as in Pensieve's test video).
pub const SEGMENTS: usize = 48;
/// First-byte latency of every simulated request.
pub const LATENCY_S: f64 = 0.08;
/// Virtual-time step at which a download in progress is checked for abandonment (the real player
/// checks every 100 ms too).
const ABANDON_CHECK_S: f64 = 0.1;
/// Length of each generated trace (they loop).
const TRACE_S: f64 = 600.0;

#[derive(clap::Args, Debug)]
pub struct EvaluateArgs {
    /// Trace family: broadband, 3g, 4g or all.
    #[arg(long, default_value = "all")]
    pub family: String,
    /// Use the trace files in this directory (Pensieve or Mahimahi format) instead of generated ones.
    #[arg(long, value_name = "DIR")]
    pub traces: Option<PathBuf>,
    /// Traces per family.
    #[arg(long, default_value_t = 60)]
    pub count: usize,
    /// Seed of the first generated trace (trace i uses seed + i).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also draw one SVG bar chart of mean QoE per algorithm per family into this directory.
    #[arg(long, value_name = "DIR")]
    pub plot_dir: Option<PathBuf>,
}

/// Parameters of one simulated session.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub ladder: Vec<Rung>,
    pub segment_duration_s: f64,
    pub segments: usize,
    pub buffer_target_s: f64,
    pub latency_s: f64,
    /// Segment size as a fraction of the rung's bitrate × duration (1: segments as heavy as declared;
    /// real segments stay under a declared peak).
    pub segment_fill: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            ladder: LADDER_KBPS.iter().map(|&k| Rung { bitrate_bps: k * 1000, height: None }).collect(),
            segment_duration_s: SEGMENT_S,
            segments: SEGMENTS,
            buffer_target_s: 30.0,
            latency_s: LATENCY_S,
            segment_fill: 1.0,
        }
    }
}

/// What one simulated session gave.
#[derive(Debug, Clone, PartialEq)]
pub struct SimResult {
    pub bitrates_bps: Vec<u64>,
    pub stall_s: f64,
    pub startup_s: f64,
    pub played_s: f64,
    pub abandoned: u32,
    /// (virtual time of the decision, rung chosen) per segment, before any abandonment.
    pub requests: Vec<(f64, usize)>,
}

impl SimResult {
    pub fn qoe_lin(&self) -> f64 {
        qoe::qoe_lin(&self.bitrates_bps, self.stall_s)
    }
}

/// Runs one session of `algorithm` over `trace` in virtual time, through the player's own feedback
/// loop ([`crate::abr::history`]).
pub fn simulate(algorithm: &mut dyn AbrAlgorithm, trace: &Trace, config: &SimConfig) -> SimResult {
    let mut history = History::default();
    let mut t = 0.0f64;
    let mut buffer = 0.0f64;
    let mut playing = false;
    let mut stall_s = 0.0;
    let mut startup_s = 0.0;
    let mut abandoned = 0;
    let mut bitrates = Vec::with_capacity(config.segments);
    let mut requests = Vec::with_capacity(config.segments);
    let top = config.ladder.len().saturating_sub(1);
    let seg = config.segment_duration_s;
    // Playback drains the buffer over `dt`; time with an empty buffer is stall time.
    let drain = |buffer: &mut f64, stall: &mut f64, playing: bool, dt: f64| {
        if playing {
            *stall += (dt - *buffer).max(0.0);
            *buffer = (*buffer - dt).max(0.0);
        }
    };
    for index in 0..config.segments {
        if buffer >= config.buffer_target_s {
            let wait = buffer - config.buffer_target_s + 0.1;
            t += wait;
            drain(&mut buffer, &mut stall_s, playing, wait);
        }
        let at = DecisionPoint {
            now_s: t,
            buffer_s: buffer,
            buffer_target_s: config.buffer_target_s,
            upcoming: Upcoming {
                duration_s: seg,
                listed_after_s: (config.segments - index - 1) as f64 * seg,
                ended: true,
            },
        };
        let mut rung = history::choose(algorithm, &history.input(&config.ladder, top, &at));
        requests.push((t, rung));
        let mut abandoned_this_segment = false;
        loop {
            let bytes = (config.ladder[rung].bitrate_bps as f64 * config.segment_fill * seg / 8.0) as u64;
            let request = t;
            let first_byte = t + config.latency_s;
            let end = first_byte + trace.transfer_time(first_byte, bytes);
            let mut lower = None;
            if history::may_abandon(rung, playing, abandoned_this_segment) {
                let mut now = first_byte + ABANDON_CHECK_S;
                while now < end {
                    let done = (trace.bits_between(first_byte, now) / 8.0) as u64;
                    let check = AbandonPoint {
                        now_s: now,
                        rung,
                        progress: PartialTransfer {
                            request_s: request,
                            first_byte_s: Some(first_byte),
                            bytes_so_far: done,
                        },
                        bytes_total: bytes,
                        buffer_s: (buffer - (now - request)).max(0.0),
                        segment_duration_s: seg,
                    };
                    if let Some(to) = history::abandon(algorithm, &history.abandon_input(&config.ladder, &check)) {
                        lower = Some((to, now));
                        break;
                    }
                    now += ABANDON_CHECK_S;
                }
                history.interrupted();
            }
            if let Some((to, at)) = lower {
                drain(&mut buffer, &mut stall_s, playing, at - t);
                t = at;
                rung = to;
                abandoned += 1;
                abandoned_this_segment = true;
                continue;
            }
            history.record(&Download {
                rung,
                request_s: request,
                first_byte_s: first_byte,
                end_s: end,
                bytes,
                media_s: seg,
            });
            drain(&mut buffer, &mut stall_s, playing, end - t);
            t = end;
            break;
        }
        buffer += seg;
        if !playing {
            playing = true;
            startup_s = t;
        }
        bitrates.push(config.ladder[rung].bitrate_bps);
    }
    SimResult {
        bitrates_bps: bitrates,
        stall_s,
        startup_s,
        played_s: config.segments as f64 * seg,
        abandoned,
        requests,
    }
}

/// The algorithms compared, ours first.
pub fn algorithms() -> Vec<Box<dyn AbrAlgorithm + Send>> {
    vec![
        Box::new(EddyAbr::new()),
        Box::new(ThroughputAbr),
        Box::new(BbaAbr::default()),
        Box::new(BolaAbr),
        Box::new(RobustMpcAbr::default()),
    ]
}

/// Mean figures of one algorithm over one family's traces.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    pub qoe_lin: f64,
    pub avg_bitrate_kbps: f64,
    pub rebuffer_ratio: f64,
    pub switches: f64,
    pub startup_s: f64,
    pub stalls_per_session: f64,
    pub traces: usize,
}

fn summarise(results: &[SimResult]) -> Summary {
    let n = results.len().max(1) as f64;
    let mean = |f: &dyn Fn(&SimResult) -> f64| results.iter().map(f).sum::<f64>() / n;
    Summary {
        qoe_lin: mean(&|r| r.qoe_lin()),
        avg_bitrate_kbps: mean(&|r| {
            r.bitrates_bps.iter().sum::<u64>() as f64 / r.bitrates_bps.len().max(1) as f64 / 1000.0
        }),
        rebuffer_ratio: mean(&|r| r.stall_s / r.played_s.max(1e-9)),
        switches: mean(&|r| qoe::switch_count(&r.bitrates_bps) as f64),
        startup_s: mean(&|r| r.startup_s),
        stalls_per_session: mean(&|r| f64::from(u8::from(r.stall_s > 0.0))),
        traces: results.len(),
    }
}

/// Evaluates every algorithm over `traces`; returns (algorithm name, summary) in [`algorithms`] order.
pub fn evaluate_traces(traces: &[Trace], config: &SimConfig) -> Vec<(&'static str, Summary)> {
    let mut out = Vec::new();
    let algorithm_count = algorithms().len();
    let mut per_algorithm: Vec<(&'static str, Vec<SimResult>)> = Vec::new();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..algorithm_count)
            .map(|i| {
                scope.spawn(move || {
                    let mut results = Vec::with_capacity(traces.len());
                    let mut name = "";
                    for trace in traces {
                        // A fresh instance per session: no state leaks between traces.
                        let mut algorithm = algorithms().swap_remove(i);
                        name = algorithm.name();
                        results.push(simulate(algorithm.as_mut(), trace, config));
                    }
                    (name, results)
                })
            })
            .collect();
        for handle in handles {
            if let Ok(result) = handle.join() {
                per_algorithm.push(result);
            }
        }
    });
    for (name, results) in per_algorithm {
        out.push((name, summarise(&results)));
    }
    out
}

fn load_traces(dir: &std::path::Path) -> Result<Vec<Trace>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading the trace directory {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    let mut traces = Vec::with_capacity(paths.len());
    for path in &paths {
        traces.push(Trace::load(path).with_context(|| format!("trace {}", path.display()))?);
    }
    if traces.is_empty() {
        bail!("{}: no trace files", dir.display());
    }
    Ok(traces)
}

/// `eddy-play evaluate`.
pub fn run_evaluate(args: EvaluateArgs) -> Result<()> {
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    let families: Vec<Family> = if args.family.eq_ignore_ascii_case("all") {
        Family::ALL.to_vec()
    } else {
        vec![args.family.parse::<Family>().map_err(|e| anyhow::anyhow!("--family: {e}"))?]
    };
    let config = SimConfig::default();
    let mut report = serde_json::Map::new();
    let mut rows = Vec::new();
    let sets: Vec<(String, Vec<Trace>)> = match &args.traces {
        Some(dir) => {
            let name = if families.len() == 1 { families[0].name().to_string() } else { "traces".to_string() };
            vec![(name, load_traces(dir)?)]
        }
        None => families
            .iter()
            .map(|&family| {
                let traces = (0..args.count as u64).map(|i| generate(family, args.seed + i, TRACE_S)).collect();
                (family.name().to_string(), traces)
            })
            .collect(),
    };
    for (family, traces) in &sets {
        let results = evaluate_traces(traces, &config);
        let mut algorithms = serde_json::Map::new();
        for (name, summary) in &results {
            algorithms.insert((*name).to_string(), serde_json::to_value(summary)?);
            rows.push((family.clone(), *name, summary.clone()));
        }
        if let Some(dir) = &args.plot_dir {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let path = dir.join(format!("qoe-{family}.svg"));
            let svg =
                bar_chart_svg(&format!("Mean QoE_lin per algorithm, {family} ({} traces)", traces.len()), &results);
            crate::report::write_atomically(&path, svg.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
        }
        report.insert(family.clone(), serde_json::Value::Object(algorithms));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "families": report }))?);
        return Ok(());
    }
    println!(
        "ladder {:?} kbps, {} s segments, {} segments per session, {} s buffer target, {} ms first-byte latency",
        LADDER_KBPS,
        config.segment_duration_s,
        config.segments,
        config.buffer_target_s,
        config.latency_s * 1000.0
    );
    println!(
        "{:<10} {:<11} {:>9} {:>13} {:>10} {:>9} {:>10}",
        "family", "algorithm", "qoe_lin", "bitrate_kbps", "rebuffer%", "switches", "startup_s"
    );
    for (family, name, s) in rows {
        println!(
            "{family:<10} {name:<11} {:>9.2} {:>13.0} {:>10.3} {:>9.1} {:>10.2}",
            s.qoe_lin,
            s.avg_bitrate_kbps,
            s.rebuffer_ratio * 100.0,
            s.switches,
            s.startup_s
        );
    }
    Ok(())
}

/// A plain SVG bar chart (drawn by hand: plotters' text rendering needs font features not enabled).
fn bar_chart_svg(title: &str, results: &[(&'static str, Summary)]) -> String {
    let (width, height, left, bottom, top) = (640.0, 360.0, 60.0, 40.0, 40.0);
    let max = results.iter().map(|(_, s)| s.qoe_lin).fold(1.0f64, f64::max) * 1.1;
    let min = results.iter().map(|(_, s)| s.qoe_lin).fold(0.0f64, f64::min);
    let span = (max - min).max(1e-9);
    let plot_h = height - bottom - top;
    let y = |v: f64| top + plot_h * (max - v) / span;
    let slot = (width - left - 20.0) / results.len().max(1) as f64;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">{title}</text>\n<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n",
        width / 2.0, y(0.0), width - 20.0, y(0.0)
    );
    for (i, (name, summary)) in results.iter().enumerate() {
        let x = left + slot * i as f64 + slot * 0.15;
        let (y0, y1) = (y(0.0), y(summary.qoe_lin));
        let colour = if *name == "eddy" { "#d62728" } else { "#1f77b4" };
        svg.push_str(&format!(
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{colour}\"/>\n<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{:.1}</text>\n<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{name}</text>\n",
            y0.min(y1), slot * 0.7, (y1 - y0).abs(), x + slot * 0.35, y0.min(y1) - 4.0, summary.qoe_lin, x + slot * 0.35, height - 15.0
        ));
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fast_link_plays_at_the_top_without_stalls() {
        let trace = Trace::constant(20_000_000.0).unwrap_or_else(|e| panic!("{e}"));
        let result = simulate(&mut EddyAbr::new(), &trace, &SimConfig::default());
        assert_eq!(result.stall_s, 0.0);
        assert_eq!(result.bitrates_bps.last(), Some(&4_300_000));
        assert!(result.startup_s < 1.0);
    }

    #[test]
    fn a_link_below_the_lowest_rung_stalls_and_is_counted() {
        let trace = Trace::constant(150_000.0).unwrap_or_else(|e| panic!("{e}"));
        let result = simulate(&mut EddyAbr::new(), &trace, &SimConfig::default());
        assert!(result.stall_s > 60.0, "{}", result.stall_s);
        assert!(result.bitrates_bps.iter().all(|&b| b == 300_000));
    }

    #[test]
    fn virtual_time_is_deterministic() {
        let trace = generate(Family::ThreeG, 3, 300.0);
        let a = simulate(&mut EddyAbr::new(), &trace, &SimConfig::default());
        let b = simulate(&mut EddyAbr::new(), &trace, &SimConfig::default());
        assert_eq!(a, b);
    }
}
