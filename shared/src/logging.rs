//! One way to set up logs for every Eddy binary: `tracing` to stderr, filtered by RUST_LOG.

use std::io::{BufWriter, IsTerminal, Stderr, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Installs a stderr subscriber that writes each line as it is logged. `RUST_LOG` wins when set;
/// otherwise `default_filter` applies (for example `"info"`). Calling it twice is harmless.
///
/// For tools whose log lines interleave with what they print themselves (the player's status line),
/// so the order on the terminal is the order of events.
pub fn init(default_filter: &str) {
    install(default_filter, std::io::stderr);
}

/// How long a line logged through [`init_buffered`] may wait in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Size of the [`init_buffered`] buffer; a full buffer is written out at once.
const BUFFER_BYTES: usize = 64 * 1024;

/// Keeps the flusher of [`init_buffered`] running; dropping it writes out what is buffered.
#[must_use = "dropping the guard stops the flusher; keep it until the end of main"]
pub struct LogGuard {
    buffer: Arc<Mutex<BufWriter<Stderr>>>,
    stop: Option<mpsc::Sender<()>>,
    flusher: Option<JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        // Closing the channel wakes the flusher, which returns; then the last lines go out.
        self.stop.take();
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
        let _ = lock(&self.buffer).flush();
    }
}

/// Like [`init`], but lines go into one in-memory buffer, written to stderr when it is full and at
/// least every [`FLUSH_EVERY`]. For the edge, which logs one access line per request: a `write`
/// system call per line was ~7 % of its CPU on small hits; appending to a buffer under an
/// uncontended lock costs next to nothing. Each line is appended whole, so lines never mix. Keep the
/// guard until the end of `main`: dropping it writes out the rest.
pub fn init_buffered(default_filter: &str) -> LogGuard {
    let buffer = Arc::new(Mutex::new(BufWriter::with_capacity(BUFFER_BYTES, std::io::stderr())));
    if install(default_filter, SharedBuffer(Arc::clone(&buffer))) {
        // Only the buffer the installed subscriber writes to: [`write_line`]'s lines must keep their
        // order with its lines.
        let _ = BUFFERED.set(Arc::clone(&buffer));
    }
    let (stop, stopped) = mpsc::channel::<()>();
    let flushed = Arc::clone(&buffer);
    let flusher = std::thread::Builder::new()
        .name("eddy-log-flush".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(FLUSH_EVERY) {
                let _ = lock(&flushed).flush();
            }
        })
        .ok();
    LogGuard { buffer, stop: Some(stop), flusher }
}

/// The buffer of [`init_buffered`], once its subscriber is installed.
static BUFFERED: OnceLock<Arc<Mutex<BufWriter<Stderr>>>> = OnceLock::new();
/// Whether [`init`] or [`init_buffered`] installed the subscriber, and it writes without colours.
static PLAIN: AtomicBool = AtomicBool::new(false);

/// True when a line written with [`write_line`] goes where this module's subscriber writes and can
/// look like its lines: [`init`] or [`init_buffered`] installed it, and it writes plain text (stderr
/// is not a terminal). Otherwise a caller should log through `tracing`.
pub fn plain_lines() -> bool {
    PLAIN.load(Ordering::Relaxed)
}

/// Writes one finished line (ending in `\n`) where the subscriber writes its lines: appended to the
/// buffer of [`init_buffered`] when that is in force, so that it keeps its order with the other lines
/// and goes out with them; straight to stderr otherwise. For callers that format a hot line
/// themselves (the edge's access log); a write error is dropped, as the subscriber drops its own.
pub fn write_line(line: &[u8]) {
    let _ = match BUFFERED.get() {
        Some(buffer) => lock(buffer).write_all(line),
        None => std::io::stderr().lock().write_all(line),
    };
}

fn lock(buffer: &Mutex<BufWriter<Stderr>>) -> MutexGuard<'_, BufWriter<Stderr>> {
    // A thread that panicked while holding the lock left at worst a half-written line behind.
    buffer.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The writer of [`init_buffered`]: every log line is appended to the shared buffer.
struct SharedBuffer(Arc<Mutex<BufWriter<Stderr>>>);

impl<'a> MakeWriter<'a> for SharedBuffer {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter(lock(&self.0))
    }
}

/// One log line's access to the buffer: the lock is held while the formatter writes the line.
struct LineWriter<'a>(MutexGuard<'a, BufWriter<Stderr>>);

impl Write for LineWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.write(bytes)
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.0.write_all(bytes)
    }

    /// The flusher and the guard flush; a line does not.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the subscriber; false when another one was installed first.
fn install<W>(default_filter: &str, writer: W) -> bool
where
    W: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Colours only for people at a terminal; log files and collectors get plain text.
    let ansi = std::io::stderr().is_terminal();
    let installed = build(filter, writer, ansi).try_init().is_ok();
    if installed && !ansi {
        PLAIN.store(true, Ordering::Relaxed);
    }
    installed
}

/// The subscriber [`init`] and [`init_buffered`] install, with `filter` (`RUST_LOG` syntax) and
/// writing to `writer`: public so that a test can check a hand-written line against the lines it
/// writes (install it with `tracing::subscriber::with_default`).
pub fn subscriber<W>(filter: &str, writer: W, ansi: bool) -> impl Subscriber + Send + Sync + 'static
where
    W: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
{
    build(EnvFilter::new(filter), writer, ansi)
}

fn build<W>(filter: EnvFilter, writer: W, ansi: bool) -> impl Subscriber + Send + Sync + 'static
where
    W: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
{
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(ansi).with_target(true).finish()
}
