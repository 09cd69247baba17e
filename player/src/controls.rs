//! Keyboard controls for `eddy-play` in a terminal: `space` pause/resume, `←`/`→` seek ∓10 s,
//! `↑`/`↓` pin a higher/lower rendition, `a` back to automatic, `s` subtitles, `q` quit, `Ctrl-C`
//! interrupt.
//!
//! - [`command_for`] maps a key event to a [`Command`] (pure);
//! - [`apply_pin`] decides the pinned rung after `↑`/`↓`/`a`, and [`seek_target`] where a seek lands
//!   (both pure, for the session to call);
//! - [`Controls::start`] puts the terminal in raw mode and reads keys on a thread of its own, only
//!   when stdin is a terminal and the player is in the foreground; dropping [`Controls`] stops the
//!   reader and restores the terminal, and a panic hook restores it on a panic too.
//!
//! # What raw mode changes for the rest of the player
//!
//! - **Output is unchanged.** Raw mode (`cfmakeraw`) would also turn the terminal's output processing
//!   off, so `\n` would no longer return the carriage and every log line and `eprintln!` would
//!   staircase. [`Controls::start`] puts the output modes back as they were right after crossterm
//!   switches to raw mode (crossterm restores the whole saved mode on the way out, so this survives
//!   the restore). Status lines keep printing `\r\x1b[2K…` and `\n` as before; no `\r\n` is needed.
//!   If the output modes cannot be kept, raw mode is undone and there are no controls.
//! - **`Ctrl-C` is a key, not `SIGINT`**, while [`Controls`] is alive: `tokio::signal::ctrl_c()` no
//!   longer fires for it, so the session must treat [`Command::Interrupt`] as it treats the signal
//!   (a `SIGINT` sent with `kill` still arrives as a signal). Likewise `Ctrl-Z` does not suspend.
//! - **The terminal is restored** when [`Controls`] is dropped and by the panic hook. Drop does not
//!   run on `std::process::exit`: drop [`Controls`] before any such exit (returning from `main` is
//!   fine). Quitting with `q` is a [`Command`] like any other, for the session to finish playback
//!   normally and write its report.

use std::io::{self, IsTerminal};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::Duration;

use crossterm::event::{Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};

/// The one-line key help to print when playback starts.
pub const HELP: &str = "keys: space pause · ←/→ seek 10s · ↑/↓ rendition · a auto · s subtitles · q quit";

/// How far `←`/`→` seek, in seconds.
pub const SEEK_STEP_S: f64 = 10.0;

/// How long the reader waits for a key before it looks at its stop flag again: the most dropping
/// [`Controls`] waits for the reader to end.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// What a key asks the player to do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Command {
    /// `space`: pause, or resume when paused.
    TogglePause,
    /// `←`/`→`: seek by this many seconds (negative: back); see [`seek_target`].
    Seek { by_s: f64 },
    /// `↑`: pin the next higher rendition; see [`apply_pin`].
    RenditionUp,
    /// `↓`: pin the next lower rendition.
    RenditionDown,
    /// `a`: no pin, the ABR decides again.
    Automatic,
    /// `s`: subtitles on or off.
    ToggleSubtitles,
    /// `q`: stop playing and finish normally (the report is written).
    Quit,
    /// `Ctrl-C`, which raw mode delivers as a key instead of `SIGINT`: finish as the signal would.
    Interrupt,
}

impl Command {
    /// Whether the command ends playback ([`Command::Quit`] or [`Command::Interrupt`]).
    pub fn ends_playback(self) -> bool {
        matches!(self, Command::Quit | Command::Interrupt)
    }

    /// Whether holding the key down repeats the command: steps do, toggles and `q` do not (`Ctrl-C`
    /// does: interrupting twice is harmless).
    fn repeats(self) -> bool {
        matches!(self, Command::Seek { .. } | Command::RenditionUp | Command::RenditionDown | Command::Interrupt)
    }
}

/// Modifiers that make a key mean nothing here (`Shift` only makes a capital).
const IGNORED_MODIFIERS: KeyModifiers =
    KeyModifiers::ALT.union(KeyModifiers::SUPER).union(KeyModifiers::HYPER).union(KeyModifiers::META);

/// The command for a key event, or `None` for keys without one and for key releases.
///
/// Letters count in either case (`Q` quits too); keys held with `Ctrl`, `Alt` or the like are ignored
/// except `Ctrl-C`. A repeat (reported only by terminals with the kitty keyboard protocol on;
/// elsewhere a held key arrives as presses) repeats seeks and rendition steps, not toggles.
pub fn command_for(event: &KeyEvent) -> Option<Command> {
    let repeat = match event.kind {
        KeyEventKind::Press => false,
        KeyEventKind::Repeat => true,
        KeyEventKind::Release => return None,
    };
    let command = if event.modifiers.contains(KeyModifiers::CONTROL) {
        match event.code {
            KeyCode::Char('c' | 'C') => Command::Interrupt,
            _ => return None,
        }
    } else if event.modifiers.intersects(IGNORED_MODIFIERS) {
        return None;
    } else {
        match event.code {
            KeyCode::Char(' ') => Command::TogglePause,
            KeyCode::Left => Command::Seek { by_s: -SEEK_STEP_S },
            KeyCode::Right => Command::Seek { by_s: SEEK_STEP_S },
            KeyCode::Up => Command::RenditionUp,
            KeyCode::Down => Command::RenditionDown,
            KeyCode::Char(c) => match c.to_ascii_lowercase() {
                'a' => Command::Automatic,
                's' => Command::ToggleSubtitles,
                'q' => Command::Quit,
                _ => return None,
            },
            _ => return None,
        }
    };
    (!repeat || command.repeats()).then_some(command)
}

/// The pinned rung after `command`, where rungs are ladder positions from 0 (lowest bitrate) to
/// `top_rung`, `pin` is the current pin (`None`: automatic) and `current_rung` the rung playing now.
///
/// `↑` pins one rung above the pin, or above `current_rung` when automatic, capped at `top_rung`;
/// `↓` one below, floored at 0; `a` clears the pin. Other commands leave the pin as it is.
pub fn apply_pin(pin: Option<usize>, command: Command, current_rung: usize, top_rung: usize) -> Option<usize> {
    let from = pin.unwrap_or(current_rung).min(top_rung);
    match command {
        Command::RenditionUp => Some(from.saturating_add(1).min(top_rung)),
        Command::RenditionDown => Some(from.saturating_sub(1)),
        Command::Automatic => None,
        _ => pin,
    }
}

/// Where a seek may land, in the same media seconds as the playback position.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeekWindow {
    pub start_s: f64,
    pub end_s: f64,
}

impl SeekWindow {
    /// A VOD stream of `duration_s` seconds: anywhere from its start to its end (a seek to the end
    /// ends playback).
    pub fn vod(duration_s: f64) -> Self {
        SeekWindow { start_s: 0.0, end_s: duration_s }
    }

    /// A live playlist covering `start_s..edge_s`: up to `hold_back_s` from the live edge (the
    /// distance a client starts at, `MediaPlaylist::hold_back_s`), so that a seek forward does not run
    /// dry at once (the start when the window is shorter than that).
    pub fn live(start_s: f64, edge_s: f64, hold_back_s: f64) -> Self {
        let margin_s = hold_back_s.max(0.0);
        SeekWindow { start_s, end_s: (edge_s - margin_s).max(start_s) }
    }
}

/// The position after seeking `by_s` seconds from `position_s`, clamped into `window`. A seek forward
/// never moves back: a live position nearer the edge than the window's end (`--live-delay`) stays.
///
/// Anything not finite (position, step or window), or a window that ends before it starts, leaves
/// the position unchanged: no seek.
pub fn seek_target(position_s: f64, by_s: f64, window: SeekWindow) -> f64 {
    let finite = [position_s, by_s, window.start_s, window.end_s].iter().all(|v| v.is_finite());
    if !finite || window.end_s < window.start_s {
        return position_s;
    }
    let target = (position_s + by_s).clamp(window.start_s, window.end_s);
    if by_s > 0.0 && target < position_s {
        return position_s;
    }
    target
}

/// Keyboard controls while they are on: the key reader thread and the terminal in raw mode.
/// Dropping it stops the reader and restores the terminal.
pub struct Controls {
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
    /// Dropped after [`Drop::drop`] has stopped the reader: the terminal is restored last.
    _terminal: ModeGuard<RawMode>,
}

impl Controls {
    /// Turns the controls on: raw mode (keeping the output modes, see the module docs), the panic
    /// hook that restores the terminal, and the key reader sending [`Command`]s to the receiver.
    ///
    /// `None` when stdin is not a terminal, the player is not in the terminal's foreground process
    /// group (started with `&`: changing the terminal mode or reading it would stop the process), or
    /// the terminal cannot be switched. Playback goes on without keys then.
    pub fn start() -> Option<(Controls, UnboundedReceiver<Command>)> {
        if !io::stdin().is_terminal() || !in_foreground() {
            return None;
        }
        // Before raw mode, so that no panic can leave it on.
        restore_on_panic();
        let terminal = match ModeGuard::enable(RawMode) {
            Ok(terminal) => terminal,
            Err(error) => {
                tracing::debug!("no keyboard controls: cannot switch the terminal to raw mode: {error}");
                return None;
            }
        };
        let (sender, receiver) = mpsc::unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let reader = std::thread::Builder::new().name("eddy-keys".into()).spawn({
            let stop = Arc::clone(&stop);
            move || read_keys(&mut Crossterm, &stop, &sender)
        });
        match reader {
            Ok(reader) => Some((Controls { stop, reader: Some(reader), _terminal: terminal }, receiver)),
            Err(error) => {
                tracing::debug!("no keyboard controls: cannot start the key reader: {error}");
                None
            }
        }
    }
}

impl Drop for Controls {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// Where key events come from: crossterm's reader, or a script in tests.
trait EventSource {
    /// Whether an event is ready within `timeout`.
    fn poll(&mut self, timeout: Duration) -> io::Result<bool>;
    /// The next event (ready after `poll` said so).
    fn read(&mut self) -> io::Result<Event>;
}

struct Crossterm;

impl EventSource for Crossterm {
    fn poll(&mut self, timeout: Duration) -> io::Result<bool> {
        crossterm::event::poll(timeout)
    }

    fn read(&mut self) -> io::Result<Event> {
        crossterm::event::read()
    }
}

/// The reader loop: sends the command of every key until `stop` is set, the receiver is gone or
/// the terminal fails.
fn read_keys(source: &mut impl EventSource, stop: &AtomicBool, commands: &UnboundedSender<Command>) {
    while !stop.load(Ordering::Relaxed) && !commands.is_closed() {
        match source.poll(POLL_EVERY) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(error) => {
                tracing::debug!("keyboard controls stop: {error}");
                return;
            }
        }
        match source.read() {
            Ok(Event::Key(key)) => {
                if let Some(command) = command_for(&key) {
                    if commands.send(command).is_err() {
                        return;
                    }
                }
            }
            Ok(_) => {}
            Err(error) => {
                tracing::debug!("keyboard controls stop: {error}");
                return;
            }
        }
    }
}

/// A terminal mode switch the guard drives: raw mode for real, a fake in tests.
trait TerminalMode {
    fn enable(&self) -> io::Result<()>;
    /// Back to the mode before [`TerminalMode::enable`]; harmless when it is not enabled.
    fn disable(&self) -> io::Result<()>;
}

/// Crossterm's raw mode with the terminal's output modes kept as they were.
struct RawMode;

impl TerminalMode for RawMode {
    fn enable(&self) -> io::Result<()> {
        #[cfg(unix)]
        let output_modes = rustix::termios::tcgetattr(io::stdin())?.output_modes;
        crossterm::terminal::enable_raw_mode()?;
        #[cfg(unix)]
        if let Err(error) = keep_output_modes(output_modes) {
            let _ = crossterm::terminal::disable_raw_mode();
            return Err(error);
        }
        Ok(())
    }

    fn disable(&self) -> io::Result<()> {
        // Restores the whole mode crossterm saved before raw mode; a no-op when raw mode is off.
        crossterm::terminal::disable_raw_mode()
    }
}

/// Puts the output modes (`OPOST`, `ONLCR`…) raw mode turned off back on the terminal on stdin,
/// the one crossterm switched when stdin is a terminal.
#[cfg(unix)]
fn keep_output_modes(output_modes: rustix::termios::OutputModes) -> io::Result<()> {
    use rustix::termios::{tcgetattr, tcsetattr, OptionalActions};
    let mut mode = tcgetattr(io::stdin())?;
    mode.output_modes = output_modes;
    tcsetattr(io::stdin(), OptionalActions::Now, &mode)?;
    Ok(())
}

/// Whether this process is in the foreground of the terminal on stdin (not started with `&`).
#[cfg(unix)]
fn in_foreground() -> bool {
    rustix::termios::tcgetpgrp(io::stdin()).is_ok_and(|group| group == rustix::process::getpgrp())
}

#[cfg(not(unix))]
fn in_foreground() -> bool {
    true
}

/// A terminal mode on for as long as the guard lives: restored once, by [`ModeGuard::restore`] or
/// on drop (unwinding included).
struct ModeGuard<M: TerminalMode> {
    mode: M,
    enabled: bool,
}

impl<M: TerminalMode> ModeGuard<M> {
    fn enable(mode: M) -> io::Result<Self> {
        mode.enable()?;
        Ok(ModeGuard { mode, enabled: true })
    }

    fn restore(&mut self) {
        if std::mem::take(&mut self.enabled) {
            if let Err(error) = self.mode.disable() {
                tracing::warn!("cannot restore the terminal mode: {error}");
            }
        }
    }
}

impl<M: TerminalMode> Drop for ModeGuard<M> {
    fn drop(&mut self) {
        self.restore();
    }
}

/// Installs (once per process) the panic hook that restores the terminal before the panic is
/// printed. After [`Controls`] is gone it does nothing: crossterm's restore is a no-op then.
fn restore_on_panic() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        chain_panic_hook(|| {
            let _ = RawMode.disable();
        })
    });
}

/// Runs `restore` before the panic hook in place now (the default one prints the message).
fn chain_panic_hook(restore: impl Fn() + Send + Sync + 'static) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        previous(info);
    }));
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use crossterm::event::KeyEventState;

    use super::*;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn key_with(code: KeyCode, modifiers: KeyModifiers, kind: KeyEventKind) -> KeyEvent {
        KeyEvent { code, modifiers, kind, state: KeyEventState::NONE }
    }

    #[test]
    fn keys_map_to_their_commands() {
        assert_eq!(command_for(&key(KeyCode::Char(' '))), Some(Command::TogglePause));
        assert_eq!(command_for(&key(KeyCode::Left)), Some(Command::Seek { by_s: -10.0 }));
        assert_eq!(command_for(&key(KeyCode::Right)), Some(Command::Seek { by_s: 10.0 }));
        assert_eq!(command_for(&key(KeyCode::Up)), Some(Command::RenditionUp));
        assert_eq!(command_for(&key(KeyCode::Down)), Some(Command::RenditionDown));
        assert_eq!(command_for(&key(KeyCode::Char('a'))), Some(Command::Automatic));
        assert_eq!(command_for(&key(KeyCode::Char('s'))), Some(Command::ToggleSubtitles));
        assert_eq!(command_for(&key(KeyCode::Char('q'))), Some(Command::Quit));
    }

    #[test]
    fn capitals_count_as_their_letters() {
        for (letter, command) in [('A', Command::Automatic), ('S', Command::ToggleSubtitles), ('Q', Command::Quit)] {
            assert_eq!(
                command_for(&key_with(KeyCode::Char(letter), KeyModifiers::SHIFT, KeyEventKind::Press)),
                Some(command)
            );
            assert_eq!(command_for(&key(KeyCode::Char(letter))), Some(command), "caps lock: no shift");
        }
    }

    #[test]
    fn ctrl_c_interrupts_and_other_modified_keys_do_nothing() {
        assert_eq!(command_for(&KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)), Some(Command::Interrupt));
        assert_eq!(
            command_for(&KeyEvent::new(KeyCode::Char('C'), KeyModifiers::CONTROL | KeyModifiers::SHIFT)),
            Some(Command::Interrupt)
        );
        assert!(Command::Interrupt.ends_playback() && Command::Quit.ends_playback());
        assert!(!Command::TogglePause.ends_playback());
        for modifiers in [KeyModifiers::CONTROL, KeyModifiers::ALT, KeyModifiers::SUPER, KeyModifiers::META] {
            for code in [KeyCode::Char('q'), KeyCode::Char('z'), KeyCode::Char(' '), KeyCode::Left, KeyCode::Up] {
                assert_eq!(command_for(&KeyEvent::new(code, modifiers)), None, "{modifiers:?} {code:?}");
            }
        }
    }

    #[test]
    fn unknown_keys_do_nothing() {
        for code in [
            KeyCode::Char('x'),
            KeyCode::Char('1'),
            KeyCode::Char('é'),
            KeyCode::Enter,
            KeyCode::Esc,
            KeyCode::Tab,
            KeyCode::Backspace,
            KeyCode::Home,
            KeyCode::F(1),
        ] {
            assert_eq!(command_for(&key(code)), None, "{code:?}");
        }
    }

    #[test]
    fn releases_do_nothing_and_repeats_repeat_only_steps() {
        for code in [KeyCode::Char(' '), KeyCode::Left, KeyCode::Up, KeyCode::Char('q')] {
            assert_eq!(command_for(&key_with(code, KeyModifiers::NONE, KeyEventKind::Release)), None);
        }
        let repeat = |code| command_for(&key_with(code, KeyModifiers::NONE, KeyEventKind::Repeat));
        assert_eq!(repeat(KeyCode::Right), Some(Command::Seek { by_s: 10.0 }));
        assert_eq!(repeat(KeyCode::Left), Some(Command::Seek { by_s: -10.0 }));
        assert_eq!(repeat(KeyCode::Up), Some(Command::RenditionUp));
        assert_eq!(repeat(KeyCode::Down), Some(Command::RenditionDown));
        for toggle in [KeyCode::Char(' '), KeyCode::Char('s'), KeyCode::Char('a'), KeyCode::Char('q')] {
            assert_eq!(repeat(toggle), None, "{toggle:?}");
        }
    }

    #[test]
    fn help_names_every_key() {
        assert!(!HELP.contains('\n'));
        for part in ["space", "←/→", "10s", "↑/↓", "a auto", "s subtitles", "q quit"] {
            assert!(HELP.contains(part), "{part}");
        }
        assert_eq!(SEEK_STEP_S, 10.0, "the help says 10s");
    }

    #[test]
    fn up_from_automatic_pins_the_rung_above_the_current_one() {
        assert_eq!(apply_pin(None, Command::RenditionUp, 1, 3), Some(2));
        assert_eq!(apply_pin(None, Command::RenditionUp, 3, 3), Some(3), "capped at the top");
        assert_eq!(apply_pin(None, Command::RenditionDown, 2, 3), Some(1));
        assert_eq!(apply_pin(None, Command::RenditionDown, 0, 3), Some(0), "floored at 0");
    }

    #[test]
    fn steps_move_a_pin_from_the_pin_not_from_the_current_rung() {
        assert_eq!(apply_pin(Some(1), Command::RenditionUp, 3, 3), Some(2));
        assert_eq!(apply_pin(Some(3), Command::RenditionUp, 0, 3), Some(3));
        assert_eq!(apply_pin(Some(2), Command::RenditionDown, 0, 3), Some(1));
        assert_eq!(apply_pin(Some(0), Command::RenditionDown, 3, 3), Some(0));
        assert_eq!(apply_pin(Some(9), Command::RenditionDown, 0, 3), Some(2), "a pin past the top counts as the top");
        assert_eq!(apply_pin(Some(usize::MAX), Command::RenditionUp, 0, usize::MAX), Some(usize::MAX));
        assert_eq!(apply_pin(None, Command::RenditionUp, 0, 0), Some(0), "a one-rung ladder");
    }

    #[test]
    fn automatic_clears_the_pin_and_other_commands_keep_it() {
        assert_eq!(apply_pin(Some(2), Command::Automatic, 1, 3), None);
        assert_eq!(apply_pin(None, Command::Automatic, 1, 3), None);
        for command in [
            Command::TogglePause,
            Command::Seek { by_s: 10.0 },
            Command::ToggleSubtitles,
            Command::Quit,
            Command::Interrupt,
        ] {
            assert_eq!(apply_pin(Some(2), command, 1, 3), Some(2), "{command:?}");
            assert_eq!(apply_pin(None, command, 1, 3), None, "{command:?}");
        }
    }

    #[test]
    fn vod_seeks_stay_within_the_stream() {
        let vod = SeekWindow::vod(120.0);
        assert_eq!(seek_target(50.0, 10.0, vod), 60.0);
        assert_eq!(seek_target(50.0, -10.0, vod), 40.0);
        assert_eq!(seek_target(5.0, -10.0, vod), 0.0);
        assert_eq!(seek_target(115.0, 10.0, vod), 120.0);
        assert_eq!(seek_target(0.0, 0.0, vod), 0.0);
    }

    #[test]
    fn live_seeks_stay_behind_the_edge() {
        // A hold-back of 18 s (three 6 s target durations): at most 18 s from the edge.
        let live = SeekWindow::live(1000.0, 1060.0, 18.0);
        assert_eq!(live, SeekWindow { start_s: 1000.0, end_s: 1042.0 });
        assert_eq!(seek_target(1030.0, 10.0, live), 1040.0);
        assert_eq!(seek_target(1038.0, 10.0, live), 1042.0);
        assert_eq!(seek_target(1005.0, -10.0, live), 1000.0);
        // The window moved on past a paused position: a seek lands back in it.
        assert_eq!(seek_target(900.0, 10.0, live), 1000.0);
        // A window shorter than the margin: only its start.
        let short = SeekWindow::live(1000.0, 1010.0, 18.0);
        assert_eq!(short.end_s, 1000.0);
        assert_eq!(seek_target(1004.0, -10.0, short), 1000.0);
        // Forward from nearer the edge than the window's end (joined closer): no move back.
        assert_eq!(seek_target(1004.0, 10.0, short), 1004.0);
        assert_eq!(seek_target(1050.0, 10.0, live), 1050.0);
        // A hold-back that is negative or not a number takes no margin.
        assert_eq!(SeekWindow::live(0.0, 60.0, -18.0).end_s, 60.0);
        assert_eq!(SeekWindow::live(0.0, 60.0, f64::NAN).end_s, 60.0);
    }

    #[test]
    fn a_seek_with_anything_not_finite_leaves_the_position() {
        let vod = SeekWindow::vod(120.0);
        for by_s in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(seek_target(50.0, by_s, vod), 50.0, "{by_s}");
        }
        assert!(seek_target(f64::NAN, 10.0, vod).is_nan());
        assert_eq!(seek_target(f64::INFINITY, -10.0, vod), f64::INFINITY);
        for window in [
            SeekWindow::vod(f64::NAN),
            SeekWindow::vod(f64::INFINITY),
            SeekWindow { start_s: f64::NEG_INFINITY, end_s: 120.0 },
            SeekWindow::live(f64::NAN, 60.0, 6.0),
            SeekWindow { start_s: 60.0, end_s: 30.0 },
        ] {
            assert_eq!(seek_target(50.0, 10.0, window), 50.0, "{window:?}");
        }
    }

    /// Records what the guard did to the "terminal".
    #[derive(Clone, Default)]
    struct FakeTerminal {
        log: Arc<Mutex<Vec<&'static str>>>,
        refuse: bool,
    }

    impl FakeTerminal {
        fn log(&self) -> Vec<&'static str> {
            self.log.lock().unwrap().clone()
        }
        fn record(&self, what: &'static str) {
            self.log.lock().unwrap().push(what);
        }
    }

    impl TerminalMode for FakeTerminal {
        fn enable(&self) -> io::Result<()> {
            if self.refuse {
                return Err(io::Error::other("not a terminal"));
            }
            self.record("enable");
            Ok(())
        }
        fn disable(&self) -> io::Result<()> {
            self.record("disable");
            Ok(())
        }
    }

    #[test]
    fn the_guard_restores_on_drop() {
        let terminal = FakeTerminal::default();
        let guard = ModeGuard::enable(terminal.clone()).unwrap();
        assert_eq!(terminal.log(), ["enable"]);
        drop(guard);
        assert_eq!(terminal.log(), ["enable", "disable"]);
    }

    #[test]
    fn the_guard_restores_once() {
        let terminal = FakeTerminal::default();
        let mut guard = ModeGuard::enable(terminal.clone()).unwrap();
        guard.restore();
        guard.restore();
        drop(guard);
        assert_eq!(terminal.log(), ["enable", "disable"]);
    }

    #[test]
    fn a_mode_that_cannot_be_enabled_is_not_restored() {
        let terminal = FakeTerminal { refuse: true, ..FakeTerminal::default() };
        assert!(ModeGuard::enable(terminal.clone()).is_err());
        assert!(terminal.log().is_empty());
    }

    #[test]
    fn the_guard_restores_on_a_panic() {
        let terminal = FakeTerminal::default();
        let result = std::panic::catch_unwind({
            let terminal = terminal.clone();
            move || {
                let _guard = ModeGuard::enable(terminal).unwrap();
                panic!("a panic while the terminal is raw");
            }
        });
        assert!(result.is_err());
        assert_eq!(terminal.log(), ["enable", "disable"]);
    }

    #[test]
    fn the_panic_hook_restores_before_the_previous_hook_prints() {
        // Only this test's thread is looked at: other tests may panic meanwhile.
        let this_test = std::thread::current().id();
        let terminal = FakeTerminal::default();
        let original = std::panic::take_hook();
        std::panic::set_hook(Box::new({
            let terminal = terminal.clone();
            move |_| {
                if std::thread::current().id() == this_test {
                    terminal.record("previous hook");
                }
            }
        }));
        chain_panic_hook({
            let terminal = terminal.clone();
            move || {
                if std::thread::current().id() == this_test {
                    let _ = terminal.disable();
                }
            }
        });
        let result = std::panic::catch_unwind({
            let terminal = terminal.clone();
            move || {
                terminal.enable().unwrap();
                panic!("a panic while the terminal is raw");
            }
        });
        drop(std::panic::take_hook());
        std::panic::set_hook(original);
        assert!(result.is_err());
        assert_eq!(terminal.log(), ["enable", "disable", "previous hook"]);
    }

    /// Key events from a script; sets `stop` once they are all read, as dropping `Controls` would.
    struct Script {
        events: VecDeque<io::Result<Event>>,
        stop: Arc<AtomicBool>,
    }

    impl Script {
        fn new(events: Vec<io::Result<Event>>) -> Self {
            Script { events: events.into(), stop: Arc::new(AtomicBool::new(false)) }
        }
    }

    impl EventSource for Script {
        fn poll(&mut self, _timeout: Duration) -> io::Result<bool> {
            if self.events.is_empty() {
                self.stop.store(true, Ordering::Relaxed);
            }
            Ok(!self.events.is_empty())
        }
        fn read(&mut self) -> io::Result<Event> {
            self.events.pop_front().expect("read after poll said ready")
        }
    }

    fn received(receiver: &mut UnboundedReceiver<Command>) -> Vec<Command> {
        std::iter::from_fn(|| receiver.try_recv().ok()).collect()
    }

    #[test]
    fn the_reader_sends_the_commands_of_keys_until_stopped() {
        let mut script = Script::new(vec![
            Ok(Event::Key(key(KeyCode::Char(' ')))),
            Ok(Event::FocusGained),
            Ok(Event::Key(key_with(KeyCode::Char(' '), KeyModifiers::NONE, KeyEventKind::Release))),
            Ok(Event::Key(key(KeyCode::Char('x')))),
            Ok(Event::Resize(80, 24)),
            Ok(Event::Key(key(KeyCode::Right))),
            Ok(Event::Key(key(KeyCode::Char('q')))),
        ]);
        let stop = Arc::clone(&script.stop);
        let (sender, mut receiver) = mpsc::unbounded_channel();
        read_keys(&mut script, &stop, &sender);
        assert_eq!(received(&mut receiver), [Command::TogglePause, Command::Seek { by_s: 10.0 }, Command::Quit]);
    }

    #[test]
    fn the_reader_ends_when_the_receiver_is_gone() {
        let mut script = Script::new((0..3).map(|_| Ok(Event::Key(key(KeyCode::Up)))).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let (sender, receiver) = mpsc::unbounded_channel();
        drop(receiver);
        read_keys(&mut script, &stop, &sender);
        assert_eq!(script.events.len(), 3, "nothing read for nobody");
    }

    #[test]
    fn the_reader_ends_when_the_terminal_fails() {
        let mut script = Script::new(vec![
            Ok(Event::Key(key(KeyCode::Up))),
            Err(io::Error::other("the terminal went away")),
            Ok(Event::Key(key(KeyCode::Down))),
        ]);
        let stop = Arc::new(AtomicBool::new(false));
        let (sender, mut receiver) = mpsc::unbounded_channel();
        read_keys(&mut script, &stop, &sender);
        assert_eq!(received(&mut receiver), [Command::RenditionUp]);
        assert_eq!(script.events.len(), 1);
    }

    #[test]
    fn the_reader_does_not_start_when_already_stopped() {
        let mut script = Script::new(vec![Ok(Event::Key(key(KeyCode::Up)))]);
        let stop = Arc::new(AtomicBool::new(true));
        let (sender, mut receiver) = mpsc::unbounded_channel();
        read_keys(&mut script, &stop, &sender);
        assert!(received(&mut receiver).is_empty());
    }
}
