//! Bandwidth traces: piecewise-constant link rates over time, read from Pensieve or Mahimahi files,
//! written as step/shape patterns, or generated from a seeded Markov chain.
//!
//! Everything here is pure and deterministic: no clocks, no I/O except [`Trace::load`]. Times are
//! seconds from the start of the trace; rates are bits per second.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use thiserror::Error;

use crate::duration::parse_duration;
use crate::size::parse_bitrate;

/// Bytes in one Mahimahi delivery opportunity (one MTU-sized packet).
pub const MAHIMAHI_PACKET_BYTES: f64 = 1500.0;
/// Width of the bins Mahimahi opportunities are counted in to make a piecewise-constant rate.
const MAHIMAHI_BIN_MS: u64 = 100;
/// Step width of the linear ramp in a sawtooth shape.
const SAWTOOTH_STEP_S: f64 = 0.25;

#[derive(Debug, Error, PartialEq)]
pub enum TraceError {
    #[error("the trace has no samples")]
    Empty,
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error("pattern '{spec}': {reason}")]
    Pattern { spec: String, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
}

fn pattern_error(spec: &str, reason: impl Into<String>) -> TraceError {
    TraceError::Pattern { spec: spec.to_string(), reason: reason.into() }
}

/// A piecewise-constant bandwidth over time. A trace either loops (recorded and generated traces,
/// periodic shapes, step patterns ending in `end@T`) or holds its last rate forever (constant rates
/// and plain step patterns).
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// Start of each step; `starts[0] == 0`, strictly increasing.
    starts: Vec<f64>,
    /// Rate of each step, bits/s, finite and >= 0.
    rates_bps: Vec<f64>,
    /// `Some(p)`: the trace repeats every `p` seconds (`p` > last start). `None`: the last rate holds.
    period_s: Option<f64>,
    /// `prefix_bits[i]`: bits deliverable from 0 to `starts[i]`; for looping traces one extra entry,
    /// the bits of one whole period.
    prefix_bits: Vec<f64>,
}

impl Trace {
    /// The general constructor: `(start_s, bits_per_s)` steps, the first starting at 0, strictly
    /// increasing; `period_s` makes the trace loop (it must be after the last start).
    pub fn from_rates(steps: Vec<(f64, f64)>, period_s: Option<f64>) -> Result<Trace, TraceError> {
        let Some(&(first_start, _)) = steps.first() else {
            return Err(TraceError::Empty);
        };
        if first_start != 0.0 {
            return Err(TraceError::Invalid(format!("the first step must start at 0 s, not {first_start} s")));
        }
        for (index, &(start, rate)) in steps.iter().enumerate() {
            if !start.is_finite() || start < 0.0 {
                return Err(TraceError::Invalid(format!("step {}: bad start time {start}", index + 1)));
            }
            if !rate.is_finite() || rate < 0.0 {
                return Err(TraceError::Invalid(format!("step {}: bad rate {rate} bit/s", index + 1)));
            }
            if index > 0 && start <= steps[index - 1].0 {
                return Err(TraceError::Invalid(format!(
                    "step {}: starts at {start} s, not after the previous step ({} s)",
                    index + 1,
                    steps[index - 1].0
                )));
            }
        }
        let (starts, rates_bps): (Vec<f64>, Vec<f64>) = steps.into_iter().unzip();
        let last_start = starts[starts.len() - 1];
        if let Some(period) = period_s {
            if !period.is_finite() || period <= last_start {
                return Err(TraceError::Invalid(format!(
                    "the loop period ({period} s) must come after the last step ({last_start} s)"
                )));
            }
        }
        let trace = Trace::build(starts, rates_bps, period_s);
        if trace.loops() && trace.prefix_bits[trace.starts.len()] <= 0.0 {
            return Err(TraceError::Invalid("the trace never delivers a byte (all rates are 0)".into()));
        }
        Ok(trace)
    }

    /// Builds from already validated steps (see [`Trace::from_rates`] for the rules).
    fn build(starts: Vec<f64>, rates_bps: Vec<f64>, period_s: Option<f64>) -> Trace {
        let mut prefix_bits = Vec::with_capacity(starts.len() + 1);
        let mut total = 0.0;
        prefix_bits.push(0.0);
        for i in 0..starts.len() {
            let end = match (starts.get(i + 1), period_s) {
                (Some(&next), _) => next,
                (None, Some(period)) => period,
                (None, None) => break,
            };
            total += rates_bps[i] * (end - starts[i]);
            prefix_bits.push(total);
        }
        Trace { starts, rates_bps, period_s, prefix_bits }
    }

    /// A constant rate that holds forever.
    pub fn constant(bps: f64) -> Result<Trace, TraceError> {
        Trace::from_rates(vec![(0.0, bps)], None)
    }

    /// `high_bps` for the first half of each period, `low_bps` for the second half.
    pub fn square(high_bps: f64, low_bps: f64, period_s: f64) -> Result<Trace, TraceError> {
        check_period(period_s)?;
        Trace::from_rates(vec![(0.0, high_bps), (period_s / 2.0, low_bps)], Some(period_s))
    }

    /// Falls linearly (in 0.25 s steps) from `high_bps` to `low_bps` over each period, then jumps back.
    pub fn sawtooth(high_bps: f64, low_bps: f64, period_s: f64) -> Result<Trace, TraceError> {
        check_period(period_s)?;
        let steps = ((period_s / SAWTOOTH_STEP_S).ceil() as usize).clamp(2, 100_000);
        let step_s = period_s / steps as f64;
        let rates = (0..steps)
            .map(|i| {
                let fraction = i as f64 / (steps - 1) as f64;
                (i as f64 * step_s, high_bps + (low_bps - high_bps) * fraction)
            })
            .collect();
        Trace::from_rates(rates, Some(period_s))
    }

    /// Step pattern `RATE@TIME,RATE@TIME,...[,end@TIME]`, e.g. `3M@0s,600k@20s,3M@40s`. The first
    /// step starts at 0; the last rate holds forever unless `end@TIME` makes the pattern loop.
    pub fn from_steps(spec: &str) -> Result<Trace, TraceError> {
        let mut steps = Vec::new();
        let mut period = None;
        for (index, item) in spec.split(',').map(str::trim).enumerate() {
            let Some((rate, time)) = item.split_once('@') else {
                return Err(pattern_error(spec, format!("'{item}' is not RATE@TIME (e.g. 600k@20s)")));
            };
            if period.is_some() {
                return Err(pattern_error(spec, "'end@TIME' must be the last item"));
            }
            let time = parse_duration(time)
                .map_err(|e| pattern_error(spec, format!("item {}: {e}", index + 1)))?
                .as_secs_f64();
            if rate.trim().eq_ignore_ascii_case("end") {
                period = Some(time);
                continue;
            }
            let rate = parse_bitrate(rate).map_err(|e| pattern_error(spec, format!("item {}: {e}", index + 1)))?;
            steps.push((time, rate as f64));
        }
        if steps.is_empty() {
            return Err(pattern_error(spec, "no RATE@TIME steps"));
        }
        Trace::from_rates(steps, period).map_err(|e| pattern_error(spec, e.to_string()))
    }

    /// Any pattern the command line accepts (the grammar is in [`PATTERN_HELP`]).
    pub fn from_pattern(spec: &str) -> Result<Trace, TraceError> {
        let spec = spec.trim();
        let mut parts = spec.split(':');
        let shape = parts.next().unwrap_or_default().to_ascii_lowercase();
        let args: Vec<&str> = parts.collect();
        let rate = |text: &str| -> Result<f64, TraceError> {
            parse_bitrate(text).map(|r| r as f64).map_err(|e| pattern_error(spec, e.to_string()))
        };
        let seconds = |text: &str| -> Result<f64, TraceError> {
            parse_duration(text).map(|d| d.as_secs_f64()).map_err(|e| pattern_error(spec, e.to_string()))
        };
        let wrap = |result: Result<Trace, TraceError>| result.map_err(|e| pattern_error(spec, e.to_string()));
        match (shape.as_str(), args.as_slice()) {
            ("constant", [bps]) => wrap(Trace::constant(rate(bps)?)),
            ("square", [high, low, period]) => wrap(Trace::square(rate(high)?, rate(low)?, seconds(period)?)),
            ("sawtooth", [high, low, period]) => wrap(Trace::sawtooth(rate(high)?, rate(low)?, seconds(period)?)),
            ("random", [family, seed, rest @ ..]) if rest.len() <= 1 => {
                let family: Family = family.parse().map_err(|e: TraceError| pattern_error(spec, e.to_string()))?;
                let seed: u64 =
                    seed.parse().map_err(|_| pattern_error(spec, format!("seed '{seed}' is not a whole number")))?;
                let duration = match rest.first() {
                    Some(text) => seconds(text)?,
                    None => 600.0,
                };
                if duration < 1.0 {
                    return Err(pattern_error(spec, "a random trace lasts at least 1s"));
                }
                Ok(generate(family, seed, duration))
            }
            ("constant" | "square" | "sawtooth" | "random", _) => {
                Err(pattern_error(spec, format!("wrong number of ':' fields for '{shape}'")))
            }
            _ if spec.contains('@') => Trace::from_steps(spec),
            _ if !spec.contains(':') && parse_bitrate(spec).is_ok() => wrap(Trace::constant(rate(spec)?)),
            _ => Err(pattern_error(
                spec,
                "expected RATE@TIME,... steps or one of constant:, square:, sawtooth:, random:",
            )),
        }
    }

    /// Pensieve's format: one `time_s bandwidth_Mbps` sample per line. Each sample holds until the next;
    /// the last lasts as long as the interval before it; the trace then loops. Times are shifted so the
    /// first sample starts at 0. Blank lines and `#` comments are skipped.
    pub fn parse_pensieve(text: &str) -> Result<Trace, TraceError> {
        let mut samples: Vec<(f64, f64)> = Vec::new();
        for (number, fields) in data_lines(text) {
            let line_error = |reason: String| TraceError::Line { line: number, reason };
            let [time, mbps] = fields.as_slice() else {
                return Err(line_error(format!("expected 'time_s bandwidth_Mbps', found {} fields", fields.len())));
            };
            let time: f64 = parse_number(time).map_err(&line_error)?;
            let mbps: f64 = parse_number(mbps).map_err(&line_error)?;
            if let Some(&(previous, _)) = samples.last() {
                if time <= previous {
                    return Err(line_error(format!("time {time} is not after the previous one ({previous})")));
                }
            }
            samples.push((time, mbps * 1e6));
        }
        let Some(&(first, _)) = samples.first() else {
            return Err(TraceError::Empty);
        };
        let last_interval = match samples.as_slice() {
            [.., (before, _), (last, _)] => last - before,
            _ => 1.0,
        };
        let period = samples[samples.len() - 1].0 - first + last_interval;
        let steps = samples.into_iter().map(|(t, bps)| (t - first, bps)).collect();
        Trace::from_rates(steps, Some(period))
    }

    /// Mahimahi's format: one line per 1500-byte delivery opportunity, its time in integer ms. The
    /// opportunities are counted in 100 ms bins; the trace loops at the last timestamp, as Mahimahi does.
    pub fn parse_mahimahi(text: &str) -> Result<Trace, TraceError> {
        let mut times_ms: Vec<u64> = Vec::new();
        for (number, fields) in data_lines(text) {
            let line_error = |reason: String| TraceError::Line { line: number, reason };
            let [time] = fields.as_slice() else {
                return Err(line_error(format!("expected one timestamp in ms, found {} fields", fields.len())));
            };
            let time: u64 = time.parse().map_err(|_| line_error(format!("'{time}' is not a whole number of ms")))?;
            if let Some(&previous) = times_ms.last() {
                if time < previous {
                    return Err(line_error(format!("{time} ms comes before the previous line ({previous} ms)")));
                }
            }
            times_ms.push(time);
        }
        let Some(&last_ms) = times_ms.last() else {
            return Err(TraceError::Empty);
        };
        if last_ms == 0 {
            return Err(TraceError::Invalid("the last timestamp must be after 0 ms (it is the loop period)".into()));
        }
        let period = last_ms as f64 / 1000.0;
        let bins = last_ms.div_ceil(MAHIMAHI_BIN_MS) as usize;
        let mut counts = vec![0u64; bins];
        for &t in &times_ms {
            // An opportunity at exactly the period belongs to the last bin (the loop point).
            let bin = ((t / MAHIMAHI_BIN_MS) as usize).min(bins - 1);
            counts[bin] += 1;
        }
        let bin_s = MAHIMAHI_BIN_MS as f64 / 1000.0;
        let steps = counts
            .iter()
            .enumerate()
            .map(|(i, &count)| {
                let start = i as f64 * bin_s;
                let width = (period - start).min(bin_s);
                (start, count as f64 * MAHIMAHI_PACKET_BYTES * 8.0 / width)
            })
            .collect();
        Trace::from_rates(steps, Some(period))
    }

    /// Reads a trace file in either format: two numbers per line is Pensieve's, one is Mahimahi's.
    pub fn parse(text: &str) -> Result<Trace, TraceError> {
        match data_lines(text).next() {
            None => Err(TraceError::Empty),
            Some((_, fields)) if fields.len() == 1 => Trace::parse_mahimahi(text),
            Some(_) => Trace::parse_pensieve(text),
        }
    }

    /// [`Trace::parse`] on a file; errors name the file.
    pub fn load(path: &Path) -> Result<Trace, TraceError> {
        let file_error = |reason: String| TraceError::File { path: path.display().to_string(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
        Trace::parse(&text).map_err(|e| file_error(e.to_string()))
    }

    /// The trace in Pensieve's format (`time_s bandwidth_Mbps` per line), so generated traces can be
    /// saved, plotted and read back with [`Trace::parse_pensieve`]. A looping trace reads back as the
    /// same trace: its last step is written as two samples of half its length, since Pensieve's format
    /// gives the last sample the length of the interval before it. A trace that holds its last rate
    /// reads back looping, with that rate lasting as long as the interval before it (1 s if alone).
    pub fn to_pensieve(&self) -> String {
        let mut samples: Vec<(f64, f64)> = self.steps().collect();
        if let (Some(period), Some(&(last_start, rate))) = (self.period_s, samples.last()) {
            let last_length = period - last_start;
            let implied = match samples.as_slice() {
                [.., (before, _), (last, _)] => last - before,
                _ => 1.0,
            };
            if last_length != implied {
                samples.push((last_start + last_length / 2.0, rate));
            }
        }
        samples.iter().map(|(t, bps)| format!("{t} {}\n", bps / 1e6)).collect()
    }

    /// Rate at `t_s` seconds, in bits/s (looping traces wrap; before 0 is the first rate).
    pub fn bandwidth_at(&self, t_s: f64) -> f64 {
        let t = self.wrap(t_s.max(0.0)).1;
        self.rates_bps[self.step_index(t)]
    }

    /// Length of one loop in seconds, or `f64::INFINITY` for a trace that holds its last rate forever.
    pub fn duration_s(&self) -> f64 {
        self.period_s.unwrap_or(f64::INFINITY)
    }

    /// Whether the trace repeats after [`Trace::duration_s`].
    pub fn loops(&self) -> bool {
        self.period_s.is_some()
    }

    /// The steps of one loop, `(start_s, bits_per_s)`.
    pub fn steps(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.starts.iter().copied().zip(self.rates_bps.iter().copied())
    }

    /// Mean rate over one loop; for a trace that holds its last rate, that rate (its long-run mean).
    pub fn mean_bps(&self) -> f64 {
        match self.period_s {
            Some(period) => self.prefix_bits[self.starts.len()] / period,
            None => self.rates_bps[self.rates_bps.len() - 1],
        }
    }

    /// Bits the link can carry from 0 to `t_s`.
    pub fn cumulative_bits(&self, t_s: f64) -> f64 {
        let (loops, t) = self.wrap(t_s.max(0.0));
        let i = self.step_index(t);
        let whole_loops = match self.period_s {
            Some(_) => loops * self.prefix_bits[self.starts.len()],
            None => 0.0,
        };
        whole_loops + self.prefix_bits[i] + self.rates_bps[i] * (t - self.starts[i])
    }

    /// Bits the link can carry between `from_s` and `to_s`.
    pub fn bits_between(&self, from_s: f64, to_s: f64) -> f64 {
        (self.cumulative_bits(to_s) - self.cumulative_bits(from_s)).max(0.0)
    }

    /// Seconds needed to deliver `bytes` starting at `start_s` (`f64::INFINITY` if the trace ends
    /// holding a rate of 0 before they are through).
    pub fn transfer_time(&self, start_s: f64, bytes: u64) -> f64 {
        let start_s = start_s.max(0.0);
        let target = self.cumulative_bits(start_s) + bytes as f64 * 8.0;
        (self.time_at_cumulative(target) - start_s).max(0.0)
    }

    /// The earliest time by which `bits` have been deliverable since 0.
    fn time_at_cumulative(&self, bits: f64) -> f64 {
        let (loop_offset_s, bits) = match self.period_s {
            Some(period) => {
                let per_loop = self.prefix_bits[self.starts.len()];
                let loops = (bits / per_loop).floor();
                (loops * period, bits - loops * per_loop)
            }
            None => (0.0, bits),
        };
        // First step whose end reaches the target (a holding trace's last step has no end).
        let ends = &self.prefix_bits[1..];
        let i = ends.partition_point(|&end| end < bits);
        let Some(&start) = self.starts.get(i) else {
            // Only a looping trace, by float rounding at the very end of a loop.
            return loop_offset_s + self.duration_s();
        };
        let already = self.prefix_bits[i];
        if bits <= already {
            return loop_offset_s + start;
        }
        match self.rates_bps[i] {
            // Only the last step of a holding trace can be short of the target at rate 0.
            0.0 => f64::INFINITY,
            rate => loop_offset_s + start + (bits - already) / rate,
        }
    }

    /// (whole loops, time within the loop).
    fn wrap(&self, t: f64) -> (f64, f64) {
        match self.period_s {
            Some(period) => {
                let loops = (t / period).floor();
                (loops, (t - loops * period).clamp(0.0, period))
            }
            None => (0.0, t),
        }
    }

    fn step_index(&self, t: f64) -> usize {
        self.starts.partition_point(|&start| start <= t).saturating_sub(1)
    }
}

fn check_period(period_s: f64) -> Result<(), TraceError> {
    if period_s.is_finite() && period_s > 0.0 {
        Ok(())
    } else {
        Err(TraceError::Invalid(format!("the period must be a positive time, not {period_s} s")))
    }
}

fn parse_number(text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| format!("'{text}' is not a non-negative number"))
}

/// Non-empty, non-comment lines as (1-based line number, whitespace-separated fields).
fn data_lines(text: &str) -> impl Iterator<Item = (usize, Vec<&str>)> {
    text.lines().enumerate().filter_map(|(index, line)| {
        let line = line.split('#').next().unwrap_or_default().trim();
        (!line.is_empty()).then(|| (index + 1, line.split_whitespace().collect()))
    })
}

/// The grammar of `--pattern`, for help texts.
pub const PATTERN_HELP: &str = "\
PATTERN is one of:
  RATE@TIME,RATE@TIME,...[,end@TIME]   steps, e.g. 3M@0s,600k@20s,3M@40s (first step at 0s;
                                       the last rate holds, or the pattern loops at end@TIME)
  RATE  or  constant:RATE              a constant rate, e.g. 2M or constant:2M
  square:HIGH:LOW:PERIOD               HIGH for half of each PERIOD, then LOW, e.g. square:3M:600k:20s
  sawtooth:HIGH:LOW:PERIOD             falls linearly from HIGH to LOW over PERIOD, then jumps back
  random:FAMILY:SEED[:DURATION]        seeded Markov trace, FAMILY broadband|3g|4g, loops after
                                       DURATION (default 600s), e.g. random:3g:7:120s
RATE is bits/s with an optional k/M/G suffix (600k, 1.5M, 3000000); TIME is 20s, 500ms, 2m or seconds.";

/// Families of generated traces, after the datasets used in ABR research.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// 1–10 Mbit/s, long stays, small noise (like FCC broadband).
    Broadband,
    /// 0.2–3 Mbit/s, frequent deep drops (like the Norway HSDPA traces).
    ThreeG,
    /// 1–40 Mbit/s, high variance (like the Belgium LTE traces).
    FourG,
}

impl Family {
    pub const ALL: [Family; 3] = [Family::Broadband, Family::ThreeG, Family::FourG];

    pub fn name(self) -> &'static str {
        match self {
            Family::Broadband => "broadband",
            Family::ThreeG => "3g",
            Family::FourG => "4g",
        }
    }

    fn params(self) -> FamilyParams {
        match self {
            Family::Broadband => FamilyParams {
                levels_mbps: &[1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.5, 8.0, 10.0],
                mean_stay_s: 20.0,
                neighbour_reach: 1.0,
                drop_every_s: 300.0,
                drop_mean_s: 2.0,
                noise: 0.05,
                salt: 0x6272_6f61_6462_616e,
            },
            Family::ThreeG => FamilyParams {
                levels_mbps: &[0.2, 0.4, 0.6, 0.9, 1.2, 1.6, 2.2, 3.0],
                mean_stay_s: 6.0,
                neighbour_reach: 1.5,
                drop_every_s: 20.0,
                drop_mean_s: 3.0,
                noise: 0.15,
                salt: 0x3367,
            },
            Family::FourG => FamilyParams {
                levels_mbps: &[1.0, 2.0, 4.0, 6.0, 9.0, 13.0, 18.0, 25.0, 32.0, 40.0],
                mean_stay_s: 4.0,
                neighbour_reach: 3.0,
                drop_every_s: 45.0,
                drop_mean_s: 2.0,
                noise: 0.25,
                salt: 0x3467,
            },
        }
    }

    /// Lowest and highest rate a generated trace of this family reaches, bits/s.
    pub fn range_bps(self) -> (f64, f64) {
        let levels = self.params().levels_mbps;
        (levels[0] * 1e6, levels[levels.len() - 1] * 1e6)
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Family {
    type Err = TraceError;
    fn from_str(text: &str) -> Result<Family, TraceError> {
        match text.trim().to_ascii_lowercase().as_str() {
            "broadband" => Ok(Family::Broadband),
            "3g" => Ok(Family::ThreeG),
            "4g" => Ok(Family::FourG),
            other => Err(TraceError::Invalid(format!("unknown trace family '{other}' (expected broadband, 3g or 4g)"))),
        }
    }
}

struct FamilyParams {
    levels_mbps: &'static [f64],
    /// Mean time on one level before the chain moves.
    mean_stay_s: f64,
    /// How far (in levels) a move usually goes: neighbour weight falls as exp(-distance / reach).
    neighbour_reach: f64,
    /// Mean time between deep drops (tunnels, handovers): short stays on one of the two lowest
    /// levels, after which the chain returns to where it was.
    drop_every_s: f64,
    /// Mean length of a deep drop.
    drop_mean_s: f64,
    /// Standard deviation of the multiplicative Gaussian noise per 1 s sample.
    noise: f64,
    /// Mixed into the seed so the families give unrelated traces for the same seed.
    salt: u64,
}

/// A seeded random trace of `duration_s` seconds (rounded up to whole seconds, at least 1) in 1 s
/// samples that loops at its end: a Markov chain over the family's bandwidth levels (long stays,
/// moves mostly to nearby levels), interrupted by short deep drops to the lowest levels, with
/// Gaussian noise, clamped to the family's range. The same family, seed and duration always give
/// the same trace.
pub fn generate(family: Family, seed: u64, duration_s: f64) -> Trace {
    let params = family.params();
    let levels = params.levels_mbps;
    let seconds = if duration_s.is_finite() { duration_s.ceil().max(1.0) as usize } else { 1 };
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ params.salt.rotate_left(17));
    let mut level = rng.random_range(0..levels.len());
    let mut dropped_to: Option<usize> = None;
    let (low, high) = (levels[0], levels[levels.len() - 1]);
    let mut steps = Vec::with_capacity(seconds);
    for second in 0..seconds {
        if second > 0 {
            dropped_to = match dropped_to {
                Some(_) if rng.random_bool(1.0 / params.drop_mean_s) => None,
                Some(bottom) => Some(bottom),
                None if rng.random_bool(1.0 / params.drop_every_s) => Some(rng.random_range(0..2.min(levels.len()))),
                None => {
                    if rng.random_bool(1.0 / params.mean_stay_s) {
                        level = next_level(&mut rng, &params, level);
                    }
                    None
                }
            };
        }
        let base = levels[dropped_to.unwrap_or(level)];
        let noisy = base * (1.0 + params.noise * standard_normal(&mut rng));
        steps.push((second as f64, noisy.clamp(low, high) * 1e6));
    }
    // Valid by construction: starts at 0, increasing, rates > 0, period after the last start.
    let (starts, rates_bps) = steps.into_iter().unzip();
    Trace::build(starts, rates_bps, Some(seconds as f64))
}

fn next_level(rng: &mut ChaCha8Rng, params: &FamilyParams, current: usize) -> usize {
    let count = params.levels_mbps.len();
    let weights: Vec<f64> = (0..count)
        .map(|i| if i == current { 0.0 } else { (-(i.abs_diff(current) as f64 - 1.0) / params.neighbour_reach).exp() })
        .collect();
    let total: f64 = weights.iter().sum();
    let mut pick = rng.random_range(0.0..total);
    for (i, weight) in weights.iter().enumerate() {
        if pick < *weight {
            return i;
        }
        pick -= weight;
    }
    current
}

/// A standard normal sample (Box–Muller), so no extra distribution crate is needed.
fn standard_normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0)
    }

    #[test]
    fn constant_rate_transfer_time_is_size_over_rate() {
        let trace = Trace::constant(2_000_000.0).unwrap();
        assert!(close(trace.transfer_time(0.0, 250_000), 1.0));
        assert!(close(trace.transfer_time(123.4, 500_000), 2.0));
        assert_eq!(trace.bandwidth_at(1e6), 2_000_000.0);
        assert_eq!(trace.duration_s(), f64::INFINITY);
        assert!(!trace.loops());
    }

    #[test]
    fn steps_follow_the_pattern_and_hold_the_last_rate() {
        let trace = Trace::from_steps("3M@0s,600k@20s,3M@40s").unwrap();
        assert_eq!(trace.bandwidth_at(0.0), 3e6);
        assert_eq!(trace.bandwidth_at(19.9), 3e6);
        assert_eq!(trace.bandwidth_at(20.0), 600e3);
        assert_eq!(trace.bandwidth_at(39.0), 600e3);
        assert_eq!(trace.bandwidth_at(1000.0), 3e6);
        // 1 s at 3M (375 kB) then 600k: 75 kB per second.
        assert!(close(trace.transfer_time(19.0, 375_000 + 75_000 * 2), 3.0));
        // Spanning the recovery at 40 s.
        assert!(close(trace.transfer_time(39.0, 75_000 + 375_000), 2.0));
    }

    #[test]
    fn step_pattern_with_end_loops() {
        let trace = Trace::from_steps("1M@0s, 500k@2s, end@3s").unwrap();
        assert_eq!(trace.duration_s(), 3.0);
        assert_eq!(trace.bandwidth_at(3.5), 1e6);
        assert_eq!(trace.bandwidth_at(5.5), 500e3);
        // One loop carries 2.5 Mbit; ten loops take 30 s.
        assert!(close(trace.transfer_time(0.0, 2_500_000 * 10 / 8), 30.0));
        assert!(close(trace.cumulative_bits(7.0), 2.5e6 * 2.0 + 1e6));
    }

    #[test]
    fn bad_step_patterns_say_what_is_wrong() {
        let err = Trace::from_steps("3M@5s,1M@10s").unwrap_err().to_string();
        assert!(err.contains("start at 0"), "{err}");
        let err = Trace::from_steps("3M@0s,1M").unwrap_err().to_string();
        assert!(err.contains("'1M' is not RATE@TIME"), "{err}");
        let err = Trace::from_steps("3Q@0s").unwrap_err().to_string();
        assert!(err.contains("3Q"), "{err}");
        let err = Trace::from_steps("3M@0s,1M@10s,2M@5s").unwrap_err().to_string();
        assert!(err.contains("not after"), "{err}");
        let err = Trace::from_steps("3M@0s,end@10s,1M@20s").unwrap_err().to_string();
        assert!(err.contains("last item"), "{err}");
    }

    #[test]
    fn named_shapes() {
        let square = Trace::from_pattern("square:3M:600k:20s").unwrap();
        assert_eq!(square.bandwidth_at(5.0), 3e6);
        assert_eq!(square.bandwidth_at(15.0), 600e3);
        assert_eq!(square.bandwidth_at(25.0), 3e6);
        assert!(close(square.mean_bps(), 1.8e6));

        let saw = Trace::from_pattern("sawtooth:4M:1M:10s").unwrap();
        assert_eq!(saw.bandwidth_at(0.0), 4e6);
        assert!(close(saw.bandwidth_at(9.9), 1e6));
        assert!(saw.bandwidth_at(5.0) < 4e6 && saw.bandwidth_at(5.0) > 1e6);
        assert_eq!(saw.bandwidth_at(10.1), 4e6);

        assert_eq!(Trace::from_pattern("constant:2M").unwrap().bandwidth_at(9.0), 2e6);
        assert_eq!(Trace::from_pattern("3M@0s,1M@1s").unwrap().bandwidth_at(2.0), 1e6);
        let random = Trace::from_pattern("random:3g:7:60s").unwrap();
        assert_eq!(random, generate(Family::ThreeG, 7, 60.0));

        for bad in ["square:3M:600k", "wobble:1M", "random:5g:1", "random:3g:x", "sawtooth:1M:1M:0s", ""] {
            assert!(Trace::from_pattern(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn pensieve_samples_hold_until_the_next_and_loop() {
        let text = "# time bandwidth\n0 1.0\n1 2.0\n\n2 0.5\n";
        let trace = Trace::parse_pensieve(text).unwrap();
        assert_eq!(trace.duration_s(), 3.0);
        assert_eq!(trace.bandwidth_at(1.5), 2e6);
        assert_eq!(trace.bandwidth_at(2.5), 0.5e6);
        assert_eq!(trace.bandwidth_at(3.2), 1e6);
        assert_eq!(Trace::parse(text).unwrap(), trace);
        // Offsets are removed.
        let shifted = Trace::parse_pensieve("10.0 1.0\n11.0 2.0\n12.0 0.5").unwrap();
        assert_eq!(shifted, trace);
    }

    #[test]
    fn traces_written_in_pensieve_format_read_back_the_same() {
        let traces = [
            generate(Family::FourG, 9, 120.0),
            Trace::from_pattern("square:3M:600k:20s").unwrap(),
            Trace::from_pattern("3M@0s,1M@2s,2M@7s,end@8s").unwrap(),
            Trace::parse_mahimahi("1\n2\n3\n250\n").unwrap(),
        ];
        for trace in traces {
            let back = Trace::parse_pensieve(&trace.to_pensieve()).unwrap();
            assert!(close(back.duration_s(), trace.duration_s()), "{} vs {}", back.duration_s(), trace.duration_s());
            for i in 0..400 {
                let t = i as f64 * 0.37;
                assert!(close(back.cumulative_bits(t), trace.cumulative_bits(t)), "at {t} s");
            }
        }
        let constant = Trace::parse_pensieve(&Trace::constant(2e6).unwrap().to_pensieve()).unwrap();
        assert!(close(constant.bandwidth_at(100.0), 2e6));
    }

    #[test]
    fn pensieve_errors_name_the_line() {
        let err = Trace::parse_pensieve("0 1\n1 x\n").unwrap_err();
        assert_eq!(err, TraceError::Line { line: 2, reason: "'x' is not a non-negative number".into() });
        let err = Trace::parse_pensieve("0 1\n0 2\n").unwrap_err();
        assert!(matches!(err, TraceError::Line { line: 2, .. }), "{err}");
        assert_eq!(Trace::parse_pensieve("# nothing\n"), Err(TraceError::Empty));
        assert!(Trace::parse_pensieve("0 0\n1 0\n").is_err());
    }

    #[test]
    fn mahimahi_opportunities_become_a_rate() {
        // One 1500-byte packet per ms = 12 Mbit/s for the first second, then one every 2 ms.
        let mut text = String::new();
        for ms in 1..=1000 {
            text.push_str(&format!("{ms}\n"));
        }
        for ms in (1002..=2000).step_by(2) {
            text.push_str(&format!("{ms}\n"));
        }
        let trace = Trace::parse_mahimahi(&text).unwrap();
        assert_eq!(trace.duration_s(), 2.0);
        assert!((trace.bandwidth_at(0.5) - 12e6).abs() < 1e3);
        assert!((trace.bandwidth_at(1.5) - 6e6).abs() < 1e3);
        // Total bytes per loop are exactly the opportunities.
        assert!(close(trace.cumulative_bits(2.0), 1500.0 * 1500.0 * 8.0));
        assert!(matches!(Trace::parse(&text), Ok(t) if t == trace));
        let err = Trace::parse_mahimahi("5\n3\n").unwrap_err();
        assert!(matches!(err, TraceError::Line { line: 2, .. }), "{err}");
        assert!(Trace::parse_mahimahi("1.5\n").is_err());
        assert!(Trace::parse_mahimahi("0\n").is_err());
    }

    #[test]
    fn transfer_time_inverts_cumulative_bits_across_loops_and_zero_rates() {
        let trace = Trace::from_steps("2M@0s,0@1s,1M@2s,end@4s").unwrap();
        for &(start, bytes) in &[(0.0, 1u64), (0.5, 300_000), (1.2, 10), (3.9, 5_000_000), (17.3, 123_456)] {
            let took = trace.transfer_time(start, bytes);
            let carried = trace.bits_between(start, start + took);
            assert!(close(carried, bytes as f64 * 8.0), "{start} {bytes}: {carried}");
        }
        // Starting inside the zero-rate gap waits for it to end.
        assert!(close(trace.transfer_time(1.0, 125_000), 2.0));
        // A holding trace stuck at zero never finishes.
        let dead = Trace::from_steps("1M@0s,0@1s").unwrap();
        assert_eq!(dead.transfer_time(0.0, 1_000_000), f64::INFINITY);
    }

    #[test]
    fn generated_traces_are_deterministic_and_in_range() {
        for family in Family::ALL {
            let a = generate(family, 42, 300.0);
            assert_eq!(a, generate(family, 42, 300.0));
            assert_ne!(a, generate(family, 43, 300.0));
            assert_eq!(a.duration_s(), 300.0);
            let (low, high) = family.range_bps();
            assert!(a.steps().all(|(_, bps)| bps >= low && bps <= high), "{family}");
            assert_eq!(family.name().parse::<Family>().unwrap(), family);
        }
        assert_eq!(generate(Family::ThreeG, 1, 0.2).duration_s(), 1.0);
    }

    #[test]
    fn families_have_their_character() {
        // Averaged over many seeds so the test checks the family, not one draw.
        let stats = |family| {
            let (mut mean, mut changes, mut deep) = (0.0, 0.0, 0.0);
            for seed in 0..20 {
                let trace = generate(family, seed, 300.0);
                let rates: Vec<f64> = trace.steps().map(|(_, bps)| bps / 1e6).collect();
                mean += rates.iter().sum::<f64>() / rates.len() as f64;
                changes += rates.windows(2).filter(|w| (w[1] / w[0]).ln().abs() > 0.35).count() as f64;
                deep += rates.iter().filter(|&&r| r < 0.4).count() as f64 / rates.len() as f64;
            }
            (mean / 20.0, changes / 20.0, deep / 20.0)
        };
        let (broadband_mean, broadband_changes, _) = stats(Family::Broadband);
        let (g3_mean, g3_changes, g3_deep) = stats(Family::ThreeG);
        let (g4_mean, g4_changes, _) = stats(Family::FourG);
        assert!((2.0..8.0).contains(&broadband_mean), "{broadband_mean}");
        assert!((0.5..2.0).contains(&g3_mean), "{g3_mean}");
        assert!(g4_mean > broadband_mean, "{g4_mean} vs {broadband_mean}");
        assert!(g3_changes > 2.0 * broadband_changes, "{g3_changes} vs {broadband_changes}");
        assert!(g4_changes > 2.0 * broadband_changes, "{g4_changes} vs {broadband_changes}");
        assert!(g3_deep > 0.1, "3G spends {g3_deep} of the time in deep drops");
    }
}
