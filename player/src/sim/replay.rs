//! Replays a recorded playback (`eddy-play --events`) through the ABR feedback loop: the recorded
//! downloads feed a fresh [`History`], each recorded decision point is decided again, and the two
//! rungs are compared. Decisions are deterministic given their inputs, so a replay of Eddy's own
//! rule must agree with the recording; a difference means the player and the loop the simulator
//! drives have drifted apart. It also lets a recorded session be tried against another algorithm.

use thiserror::Error;

use crate::abr::history::{self, History};
use crate::abr::{AbrAlgorithm, Rung};
use crate::events::Event;

/// `eddy-play replay`.
#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// An `--events` file of a playback.
    #[arg(value_name = "EVENTS.jsonl")]
    pub events: std::path::PathBuf,
}

/// `eddy-play replay`: replays the recording through Eddy's ABR and prints how many decisions agree;
/// fails, listing them, if any differ.
pub fn run_replay(args: ReplayArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let path = &args.events;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let events: Vec<Event> = crate::events::read(&text)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("{}", path.display()))?
        .into_iter()
        .map(|record| record.event)
        .collect();
    let decisions = replay(&events, &mut crate::abr::EddyAbr::new()).with_context(|| format!("{}", path.display()))?;
    let differing: Vec<&Replayed> = decisions.iter().filter(|d| d.recorded != d.replayed).collect();
    for d in &differing {
        println!("segment {}: recorded rung {}, replayed rung {}", d.index, d.recorded, d.replayed);
    }
    println!("{} decisions replayed, {} differ", decisions.len(), differing.len());
    if !differing.is_empty() {
        anyhow::bail!("the replay differs from the recording");
    }
    Ok(())
}

/// One decision, as recorded and as replayed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Replayed {
    /// Media sequence number of the segment decided.
    pub index: u64,
    pub recorded: usize,
    pub replayed: usize,
}

#[derive(Debug, Error, PartialEq)]
pub enum ReplayError {
    #[error("the events have no `start` event before the first decision (recorded by an older eddy-play?)")]
    NoStart,
    #[error("a decision for segment {index} chose rung {rung}, outside the ladder of {rungs} rung(s)")]
    RungOutsideLadder { index: u64, rung: usize, rungs: usize },
}

/// Replays `events` through `algorithm`; returns every decision, recorded and replayed.
pub fn replay(events: &[Event], algorithm: &mut dyn AbrAlgorithm) -> Result<Vec<Replayed>, ReplayError> {
    let mut history = History::default();
    let mut ladder: Option<(Vec<Rung>, usize)> = None;
    let mut decisions = Vec::new();
    for event in events {
        match event {
            Event::Start { ladder: rungs, max_rung, .. } => {
                let rungs = rungs.iter().map(|r| Rung { bitrate_bps: r.bitrate_bps, height: r.height }).collect();
                ladder = Some((rungs, *max_rung));
                history = History::default();
            }
            Event::Decision { index, rung, at, .. } => {
                let (rungs, max_rung) = ladder.as_ref().ok_or(ReplayError::NoStart)?;
                if *rung >= rungs.len() {
                    return Err(ReplayError::RungOutsideLadder { index: *index, rung: *rung, rungs: rungs.len() });
                }
                let replayed = history::choose(algorithm, &history.input(rungs, *max_rung, at));
                decisions.push(Replayed { index: *index, recorded: *rung, replayed });
            }
            Event::Segment { download, .. } => history.record(download),
            _ => {}
        }
    }
    Ok(decisions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abr::history::{DecisionPoint, Download, Upcoming};
    use crate::abr::EddyAbr;
    use crate::events::LadderRung;

    fn decision(index: u64, rung: usize, now_s: f64, buffer_s: f64) -> Event {
        let upcoming = Upcoming { duration_s: 4.0, listed_after_s: 100.0, ended: true };
        let at = DecisionPoint { now_s, buffer_s, buffer_target_s: 30.0, upcoming };
        Event::Decision { index, rung, rendition: rung, estimate_bps: 0.0, at }
    }

    fn segment(rung: usize, request_s: f64, end_s: f64, bytes: u64) -> Event {
        let download = Download { rung, request_s, first_byte_s: request_s + 0.05, end_s, bytes, media_s: 4.0 };
        Event::Segment {
            index: 0,
            rendition: rung,
            bitrate_bps: 0,
            bytes,
            download_ms: 0,
            abandoned: false,
            estimate_bps: 0.0,
            buffer_s: 0.0,
            download,
            program_date_time: None,
            part: None,
            live_latency_s: None,
        }
    }

    fn start() -> Event {
        let ladder = [300_000, 1_200_000, 4_300_000]
            .iter()
            .enumerate()
            .map(|(rendition, &bitrate_bps)| LadderRung { rendition, bitrate_bps, height: None })
            .collect();
        Event::Start { url: "u".into(), ladder, max_rung: 2 }
    }

    #[test]
    fn downloads_recorded_between_decisions_change_the_next_one() {
        // A start at rung 0; one fast download (10 Mbit/s) makes the next decision go up.
        let mut events = vec![start(), decision(0, 0, 0.0, 0.0), segment(0, 0.0, 0.17, 150_000)];
        events.push(decision(1, 0, 0.2, 4.0));
        let replayed = replay(&events, &mut EddyAbr::new()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(replayed[0].replayed, 0);
        assert!(replayed[1].replayed > 0, "{replayed:?}");
        assert_ne!(replayed[1].recorded, replayed[1].replayed, "a wrong recording is caught");
    }

    #[test]
    fn a_recording_without_its_ladder_is_refused() {
        assert_eq!(replay(&[decision(0, 0, 0.0, 0.0)], &mut EddyAbr::new()), Err(ReplayError::NoStart));
        let outside = [start(), decision(0, 7, 0.0, 0.0)];
        assert!(matches!(replay(&outside, &mut EddyAbr::new()), Err(ReplayError::RungOutsideLadder { .. })));
    }
}
