//! The global logging set-up, in a test binary of its own (a process has one global subscriber).

use std::io::IsTerminal;

#[test]
fn hand_written_lines_are_allowed_once_the_buffered_subscriber_writes_plain_text() {
    assert!(!eddy_shared::logging::plain_lines(), "nothing is installed yet");
    let guard = eddy_shared::logging::init_buffered("info");
    // Plain text unless stderr is a terminal (then the subscriber writes in colour).
    assert_eq!(eddy_shared::logging::plain_lines(), !std::io::stderr().is_terminal());
    drop(guard);
}
