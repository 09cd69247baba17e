//! What a key (`crate::controls`) or its flag does to a playback: pause and resume, seek, pin a
//! rung or go back to automatic, show or hide subtitles, quit. The decisions are the controls'
//! pure functions; this applies them to the shared state. A seek is only asked for here: the download
//! loop carries it out (it owns the playlists and the fetches).

use super::state::{Finish, Playback};
use crate::controls::{apply_pin, seek_target, Command, SeekWindow};
use crate::events::Event;

/// Applies `command` to the playback; `top_rung` is the highest rung the ladder allows.
pub(super) fn apply(state: &mut Playback, command: Command, top_rung: usize) {
    match command {
        Command::TogglePause => toggle_pause(state),
        Command::Seek { by_s } => request_seek_by(state, by_s),
        Command::RenditionUp | Command::RenditionDown | Command::Automatic => {
            let pinned = apply_pin(state.pinned_rung, command, state.current_rung, top_rung);
            if pinned != state.pinned_rung {
                state.pinned_rung = pinned;
                match pinned {
                    Some(rung) => tracing::info!("rendition pinned to rung {rung}"),
                    None => tracing::info!("rendition chosen by the ABR again"),
                }
                state.event(Event::Pin { rung: pinned });
            }
        }
        Command::ToggleSubtitles => state.subtitles_visible = !state.subtitles_visible,
        Command::Quit => state.finish(Finish::Quit),
        Command::Interrupt => state.finish(Finish::Interrupted),
    }
}

fn toggle_pause(state: &mut Playback) {
    if state.playing_since.is_none() {
        return;
    }
    let played_s = state.played_s();
    if state.user_paused {
        state.user_paused = false;
        // During a stall, the stall's end resumes.
        if !state.stall.is_stalled() {
            state.frozen_played_s = None;
            if let Err(e) = state.sink.play() {
                state.finish(Finish::Failed(e.to_string()));
            }
        }
        state.event(Event::Unpaused { played_s });
    } else {
        state.user_paused = true;
        // The pipeline's running time keeps counting while paused: the position is held here.
        state.frozen_played_s = Some(played_s);
        if let Err(e) = state.sink.pause() {
            state.finish(Finish::Failed(e.to_string()));
        }
        state.event(Event::Paused { played_s });
    }
}

/// Asks the download loop to seek `by_s` from the current position: within a VOD stream, or within a
/// live stream's window (up to a few target durations from its live edge).
pub(super) fn request_seek_by(state: &mut Playback, by_s: f64) {
    let window = match (state.stream_duration_s, state.live_window) {
        (Some(duration_s), _) => SeekWindow::vod(duration_s),
        (None, Some(window)) => window,
        (None, None) => {
            tracing::warn!("no seek yet: the live window is known once a segment has started playing");
            return;
        }
    };
    let from = state.seek_request.unwrap_or_else(|| state.position_s());
    state.seek_request = Some(seek_target(from, by_s, window));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventWriter;
    use crate::pipeline::{PipelineError, PipelineEvent, Track};
    use crate::session::seams::MediaSink;
    use crate::stall::StallTracker;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    /// Records play/pause; its clock says `running` seconds.
    struct Sink {
        calls: Arc<Mutex<Vec<&'static str>>>,
        running: f64,
    }

    impl MediaSink for Sink {
        fn push(&self, _: Track, _: Vec<u8>, _: bool) -> Result<(), PipelineError> {
            Ok(())
        }
        fn play(&self) -> Result<(), PipelineError> {
            self.calls.lock().map(|mut c| c.push("play")).map_err(|_| PipelineError::Setup("lock".into()))
        }
        fn pause(&self) -> Result<(), PipelineError> {
            self.calls.lock().map(|mut c| c.push("pause")).map_err(|_| PipelineError::Setup("lock".into()))
        }
        fn end_of_stream(&self, _: Track) -> Result<(), PipelineError> {
            Ok(())
        }
        fn running_time_s(&self) -> Option<f64> {
            Some(self.running)
        }
        fn poll(&self) -> Vec<PipelineEvent> {
            Vec::new()
        }
        fn stop(&self) {}
    }

    fn playback(calls: &Arc<Mutex<Vec<&'static str>>>) -> Playback {
        let sink = Sink { calls: Arc::clone(calls), running: 12.0 };
        let events = EventWriter::create(None).unwrap_or_else(|e| panic!("{e}"));
        let mut state = Playback::new(Box::new(sink), Instant::now(), StallTracker::new(1.0), None, events);
        state.playing_since = Some(Instant::now());
        state.pushed_media_s = 20.0;
        state
    }

    #[test]
    fn space_pauses_holding_the_position_and_resumes() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let mut state = playback(&calls);
        apply(&mut state, Command::TogglePause, 3);
        assert!(state.user_paused);
        assert_eq!(state.frozen_played_s, Some(12.0));
        apply(&mut state, Command::TogglePause, 3);
        assert!(!state.user_paused);
        assert_eq!(state.frozen_played_s, None);
        assert_eq!(calls.lock().map(|c| c.clone()).unwrap_or_default(), ["pause", "play"]);
    }

    #[test]
    fn seeks_stay_within_a_vod_stream_or_the_live_window() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let mut state = playback(&calls);
        state.media_origin_s = 30.0; // started at 30 s: the position is 42 s
        state.stream_duration_s = Some(60.0);
        apply(&mut state, Command::Seek { by_s: 10.0 }, 3);
        assert_eq!(state.seek_request, Some(52.0));
        // A second key before the first seek is carried out counts from its target.
        apply(&mut state, Command::Seek { by_s: -30.0 }, 3);
        assert_eq!(state.seek_request, Some(22.0));
        apply(&mut state, Command::Seek { by_s: -100.0 }, 3);
        assert_eq!(state.seek_request, Some(0.0));
        state.seek_request = None;
        state.stream_duration_s = None;
        // Live, before any segment start is known: nothing to seek in yet.
        apply(&mut state, Command::Seek { by_s: 10.0 }, 3);
        assert_eq!(state.seek_request, None);
        // Then within the window the download loop last saw.
        state.live_window = Some(SeekWindow { start_s: 20.0, end_s: 45.0 });
        apply(&mut state, Command::Seek { by_s: 10.0 }, 3);
        assert_eq!(state.seek_request, Some(45.0));
        state.seek_request = None;
        apply(&mut state, Command::Seek { by_s: -30.0 }, 3);
        assert_eq!(state.seek_request, Some(20.0));
    }

    #[test]
    fn arrows_pin_rungs_a_unpins_q_quits() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let mut state = playback(&calls);
        state.current_rung = 1;
        apply(&mut state, Command::RenditionUp, 3);
        assert_eq!(state.pinned_rung, Some(2));
        apply(&mut state, Command::RenditionUp, 3);
        apply(&mut state, Command::RenditionUp, 3);
        assert_eq!(state.pinned_rung, Some(3));
        apply(&mut state, Command::Automatic, 3);
        assert_eq!(state.pinned_rung, None);
        apply(&mut state, Command::ToggleSubtitles, 3);
        assert!(state.subtitles_visible);
        apply(&mut state, Command::Quit, 3);
        assert_eq!(state.finish, Some(Finish::Quit));
    }
}
