//! The access line, formatted by hand. It is the text tracing-subscriber's fmt layer writes for
//! [`Line::trace`]'s event (timestamp, level, target, then the fields in order: `%` fields unquoted,
//! the others through `Debug`), but built in a per-thread buffer that is reused, with the date and
//! time of day formatted once per second per thread: 0.18 µs a line, against 1.05 µs through
//! tracing-subscriber, which took the log's cost on small hits from ~11 % of the edge's throughput to
//! ~4 % (BENCHMARKS.md, "Access-log cost on small hits").

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

/// A line that grew past this (a path of tens of KiB) gives its memory back afterwards.
const KEEP_BYTES: usize = 4096;

/// The fields of one access line, in the order they are written.
pub struct Line<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub cache: &'a str,
    pub bytes: u64,
    pub duration_ms: f64,
    pub client: &'a str,
    pub complete: bool,
    pub request_id: &'a str,
    /// Left out of the line when `None`, as tracing leaves out a `None` field.
    pub detail: Option<&'a str>,
}

impl Line<'_> {
    /// Writes the line. The caller has checked that the `access` target is enabled at INFO. By hand
    /// when the installed subscriber writes plain text and no span is open (spans would prefix the
    /// line with their names); through tracing otherwise (in colour at a terminal, or under a span).
    pub fn log(&self) {
        if eddy_shared::logging::plain_lines() && !in_span() {
            self.render(SystemTime::now(), eddy_shared::logging::write_line);
        } else {
            self.trace();
        }
    }

    /// The same line through tracing-subscriber: the fallback, and what the hand-written line is
    /// tested against.
    pub fn trace(&self) {
        tracing::info!(
            target: "access",
            method = %Unquoted(self.method),
            path = %Unquoted(self.path),
            status = self.status,
            cache = self.cache,
            bytes = self.bytes,
            duration_ms = self.duration_ms,
            client = %Unquoted(self.client),
            complete = self.complete,
            request_id = self.request_id,
            detail = self.detail,
        );
    }

    /// Formats the line as logged at `now` in this thread's buffer and hands it to `write` (public for
    /// the benchmarks).
    pub fn render(&self, now: SystemTime, mut write: impl FnMut(&[u8])) {
        let reused = SCRATCH
            .try_with(|scratch| {
                let Ok(mut scratch) = scratch.try_borrow_mut() else { return false };
                scratch.format(self, now);
                write(scratch.line.as_bytes());
                scratch.line.shrink_to(KEEP_BYTES);
                true
            })
            .unwrap_or(false);
        if !reused {
            // The thread is exiting (its buffer is gone): a buffer for this line only.
            let mut scratch = Scratch::default();
            scratch.format(self, now);
            write(scratch.line.as_bytes());
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// One thread's line buffer and the start of its last timestamp.
#[derive(Default)]
struct Scratch {
    line: String,
    /// The second (since the Unix epoch) that `prefix` is for.
    second: Option<i64>,
    /// `2026-12-01T00:06:03.`: the timestamp up to its microseconds.
    prefix: String,
}

impl Scratch {
    fn format(&mut self, line: &Line<'_>, now: SystemTime) {
        let (second, micros) = split(now);
        if self.second != Some(second) {
            self.prefix.clear();
            push_date_time(&mut self.prefix, second);
            self.second = Some(second);
        }
        let out = &mut self.line;
        out.clear();
        out.push_str(&self.prefix);
        push_digits(out, micros.into(), 6);
        // tracing-subscriber's `Full` format: timestamp, level right-aligned in 5, target, fields.
        out.push_str("Z  INFO access: method=");
        push_unquoted(out, line.method);
        out.push_str(" path=");
        push_unquoted(out, line.path);
        out.push_str(" status=");
        push_digits(out, line.status.into(), 1);
        out.push_str(" cache=");
        push_quoted(out, line.cache);
        out.push_str(" bytes=");
        push_digits(out, line.bytes, 1);
        out.push_str(" duration_ms=");
        // Debug, as tracing records an f64: the shortest text that reads back as the same number.
        let _ = write!(out, "{:?}", line.duration_ms);
        out.push_str(" client=");
        push_unquoted(out, line.client);
        out.push_str(if line.complete { " complete=true" } else { " complete=false" });
        out.push_str(" request_id=");
        push_quoted(out, line.request_id);
        if let Some(detail) = line.detail {
            out.push_str(" detail=");
            push_quoted(out, detail);
        }
        out.push('\n');
    }
}

/// Whole seconds since the Unix epoch (floor, so negative before it) and microseconds in the second.
fn split(now: SystemTime) -> (i64, u32) {
    match now.duration_since(UNIX_EPOCH) {
        Ok(since) => (i64::try_from(since.as_secs()).unwrap_or(i64::MAX), since.subsec_micros()),
        Err(before) => {
            let before = before.duration();
            let seconds = i64::try_from(before.as_secs()).unwrap_or(i64::MAX);
            match before.subsec_nanos() {
                0 => (-seconds, 0),
                nanos => (-seconds - 1, (1_000_000_000 - nanos) / 1000),
            }
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS.` in UTC, with the year written as tracing-subscriber writes it outside
/// 0..=9999 (`+10000`, `-0001`).
fn push_date_time(out: &mut String, second: i64) {
    let (year, month, day) = civil_from_days(second.div_euclid(86_400));
    let in_day = second.rem_euclid(86_400);
    let _ = match year {
        10_000.. => write!(out, "+{year}"),
        ..0 => write!(out, "{year:05}"),
        _ => write!(out, "{year:04}"),
    };
    let _ = write!(out, "-{month:02}-{day:02}T{:02}:{:02}:{:02}.", in_day / 3600, in_day / 60 % 60, in_day % 60);
}

/// The proleptic Gregorian (year, month, day) of a count of days since 1970-01-01: Howard Hinnant,
/// "chrono-Compatible Low-Level Date Algorithms", `civil_from_days`. Days are shifted so that years
/// start on March 1st (the leap day is then the last day of a year) and counted in 400-year eras of
/// 146,097 days.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // `days` is whole seconds (an i64) over 86,400, so within ±1.1e14: nothing below can overflow.
    let days = days + 719_468; // 0000-03-01 is day 0
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097); // [0, 146096]
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365; // [0, 399]
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100); // [0, 365]
    let shifted_month = (5 * day_of_year + 2) / 153; // [0, 11], March is 0
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1; // [1, 31]
    let month = if shifted_month < 10 { shifted_month + 3 } else { shifted_month - 9 }; // [1, 12]
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

/// `value` in decimal, zero-padded to at least `width` digits.
fn push_digits(out: &mut String, mut value: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut start = digits.len();
    while value > 0 || start > digits.len() - width.max(1) {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
    }
    out.extend(digits[start..].iter().map(|&d| char::from(d)));
}

/// A `Debug` string field: quoted, with quotes, backslashes and anything not printable escaped
/// (`\n`, `\u{85}`…), exactly as `<str as Debug>` writes it, so no value can end the line or a field.
fn push_quoted(out: &mut String, value: &str) {
    if value.bytes().all(|b| matches!(b, b' ' | b'!' | b'#'..=b'[' | b']'..=b'~')) {
        out.push('"');
        out.push_str(value);
        out.push('"');
    } else {
        let _ = write!(out, "{value:?}");
    }
}

fn push_unquoted(out: &mut String, value: &str) {
    if value.bytes().all(|b| matches!(b, b'!'..=b'~')) {
        out.push_str(value);
    } else {
        let _ = write!(out, "{}", Unquoted(value));
    }
}

/// A `%` (Display) field: written as is, except characters that could end the line or the field, or
/// hide or reorder text in a viewer. An `http::Uri` path can hold raw non-ASCII, so a client could
/// send U+2028 (a line break for Python's `splitlines`), U+3000 (whitespace for Rust's and Python's
/// `split`), U+009B (CSI to some terminals) or U+202E (right-to-left override: Boucher and Anderson,
/// "Trojan Source: Invisible Vulnerabilities", 2021). Those, and any ASCII space or control (which
/// `http::Uri` refuses anyway), are percent-encoded as UTF-8 (RFC 3986 §2.1), which names the same
/// path; a non-ASCII character is kept when `char::escape_debug` keeps it, the rule `Debug` fields
/// follow.
struct Unquoted<'a>(&'a str);

impl fmt::Display for Unquoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            let printable = if c.is_ascii() { c.is_ascii_graphic() } else { c.escape_debug().len() == 1 };
            if printable {
                f.write_char(c)?;
            } else {
                for byte in c.encode_utf8(&mut [0; 4]).bytes() {
                    write!(f, "%{byte:02X}")?;
                }
            }
        }
        Ok(())
    }
}

/// Whether the event would be inside a span (tracing-subscriber would prefix it with the spans' names).
fn in_span() -> bool {
    // `is_known` only says that the subscriber tracks spans; the id says that one is open.
    tracing::dispatcher::get_default(|dispatch| dispatch.current_span().id().is_some())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;

    fn line<'a>(path: &'a str, detail: Option<&'a str>) -> Line<'a> {
        Line {
            method: "GET",
            path,
            status: 200,
            cache: "HIT",
            bytes: 1024,
            duration_ms: 0.360845,
            client: "ip:127.0.0.1",
            complete: true,
            request_id: "1cfcce00000000000001",
            detail,
        }
    }

    fn by_hand(line: &Line<'_>, now: SystemTime) -> String {
        let mut text = Vec::new();
        line.render(now, |bytes| text.extend_from_slice(bytes));
        String::from_utf8(text).expect("the line is UTF-8")
    }

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("capture").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The line tracing-subscriber writes for `event`, set up as every Eddy binary sets it up, and the
    /// times just before and just after.
    fn by_tracing(event: impl FnOnce()) -> (SystemTime, String, SystemTime) {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = eddy_shared::logging::subscriber("info", move || writer.clone(), false);
        let before = SystemTime::now();
        tracing::subscriber::with_default(subscriber, event);
        let after = SystemTime::now();
        let text = String::from_utf8(captured.0.lock().expect("capture").clone()).expect("UTF-8");
        (before, text, after)
    }

    const TIMESTAMP: usize = "2026-12-01T00:06:03.896597Z".len();

    #[test]
    fn the_hand_written_line_is_the_one_tracing_subscriber_writes() {
        let long = format!("/{}.ts", "a/b".repeat(20_000));
        let uri_path = "/q\"x\\y{}'é中😀/a%0D%0A.ts?k=\\'{}é";
        let hostile = "origin said: \"no\"\r\n2026-12-01T00:06:03.896597Z  INFO access: method=GET path=/forged \
                       \\ \0 \t \u{1b}[31m \u{85} \u{2028} \u{3000} \u{202e} a\u{301} é 😀";
        let odd_path = "/a\r\nb c\0d\u{7f}\u{85}e\u{2028}f\u{3000}g\u{9b}31m\u{202e}h\u{301}é中😀";
        let mut cases = [
            line("/v/720p/seg_00042.ts", None),
            line("/a.ts", Some("origin http://127.0.0.1:1/x unreachable: Connection refused")),
            line(&long, None),
            line(uri_path, Some(hostile)),
            line(odd_path, Some("")),
            line("", None),
        ];
        cases[1].status = 502;
        cases[1].cache = "LOCAL";
        cases[1].complete = false;
        cases[2].method = "PURGE";
        cases[2].bytes = u64::MAX;
        cases[2].duration_ms = 0.0;
        cases[3].request_id = "a\"b\\c";
        cases[3].duration_ms = 1e-7;
        cases[4].request_id = "";
        cases[4].duration_ms = 1e17;
        cases[5].duration_ms = 12_345.678_901_234;
        cases[5].client = "api-key:k\"e\\y";
        for (i, case) in cases.iter().enumerate() {
            let (before, traced, after) = by_tracing(|| case.trace());
            let (earliest, latest) = (by_hand(case, before), by_hand(case, after));
            assert_eq!(traced[TIMESTAMP..], earliest[TIMESTAMP..], "tracing-subscriber's line, then ours");
            if i != 4 {
                // The event the edge logged before the line was written by hand (case 4's path has
                // characters it wrote raw).
                let (_, before_hand, _) = by_tracing(|| as_before(case));
                assert_eq!(before_hand[TIMESTAMP..], earliest[TIMESTAMP..], "the line as it was, then ours");
            }
            // The same layout, so the text order of timestamps is their time order.
            assert!(
                earliest[..TIMESTAMP] <= traced[..TIMESTAMP] && traced[..TIMESTAMP] <= latest[..TIMESTAMP],
                "tracing's {} is not within ours, {} to {}",
                &traced[..TIMESTAMP],
                &earliest[..TIMESTAMP],
                &latest[..TIMESTAMP]
            );
        }
    }

    /// The event as the edge logged it before the line was written by hand.
    fn as_before(line: &Line<'_>) {
        tracing::info!(
            target: "access",
            method = %line.method,
            path = %line.path,
            status = line.status,
            cache = line.cache,
            bytes = line.bytes,
            duration_ms = line.duration_ms,
            client = %line.client,
            complete = line.complete,
            request_id = line.request_id,
            detail = line.detail,
        );
    }

    #[test]
    fn a_span_is_seen_only_while_one_is_open() {
        let subscriber = eddy_shared::logging::subscriber("info", std::io::sink, false);
        tracing::subscriber::with_default(subscriber, || {
            assert!(!in_span(), "no span yet");
            let span = tracing::info_span!("request");
            let entered = span.enter();
            assert!(in_span(), "inside a span");
            drop(entered);
            assert!(!in_span(), "the span was left");
        });
    }

    #[test]
    fn the_layout_of_a_line() {
        let now = UNIX_EPOCH + Duration::new(1_796_083_563, 896_597_999);
        let mut failed = line("/a.ts", Some("origin timed out"));
        failed.status = 502;
        failed.cache = "LOCAL";
        failed.bytes = 29;
        failed.duration_ms = 0.688219;
        assert_eq!(
            by_hand(&failed, now),
            "2026-12-01T00:06:03.896597Z  INFO access: method=GET path=/a.ts status=502 cache=\"LOCAL\" bytes=29 \
             duration_ms=0.688219 client=ip:127.0.0.1 complete=true request_id=\"1cfcce00000000000001\" \
             detail=\"origin timed out\"\n"
        );
    }

    /// A reader of the log: `key=value` fields after `access: `, separated by one space, a value either
    /// quoted (with `Debug`'s escapes) or running to the next space.
    fn fields(line: &str) -> Vec<(String, String)> {
        let (_, mut rest) = line.split_once(" INFO access: ").expect("the level and target");
        let mut fields = Vec::new();
        while !rest.is_empty() {
            let (key, after) = rest.split_once('=').expect("key=value");
            assert!(key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "key {key:?}");
            let (value, after) = match after.strip_prefix('"') {
                Some(quoted) => unquote(quoted),
                None => {
                    let (value, after) = after.split_once(' ').unwrap_or((after, ""));
                    (value.to_string(), after)
                }
            };
            fields.push((key.to_string(), value));
            rest = after.strip_prefix(' ').unwrap_or(after);
        }
        fields
    }

    /// The value of a quoted field whose opening quote is gone, and the text after its closing quote.
    fn unquote(text: &str) -> (String, &str) {
        let mut value = String::new();
        let mut chars = text.chars();
        loop {
            match chars.next().expect("a closing quote") {
                '"' => return (value, chars.as_str()),
                '\\' => match chars.next().expect("an escape") {
                    'n' => value.push('\n'),
                    'r' => value.push('\r'),
                    't' => value.push('\t'),
                    '0' => value.push('\0'),
                    'u' => {
                        let hex: String = chars.by_ref().skip(1).take_while(|&c| c != '}').collect();
                        value.push(char::from_u32(u32::from_str_radix(&hex, 16).expect("hex")).expect("char"));
                    }
                    other => value.push(other),
                },
                other => value.push(other),
            }
        }
    }

    fn percent_decoded(text: &str) -> Vec<u8> {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                out.push(u8::from_str_radix(&text[i + 1..i + 3], 16).expect("hex"));
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        out
    }

    #[test]
    fn a_client_cannot_forge_a_line_or_a_field() {
        let forged = "x\r\n2026-12-01T00:06:03.896597Z  INFO access: method=GET path=/forged status=200\n";
        let long = format!("/{}", "%22\"\\".repeat(16_000));
        let paths = [
            "/a\"b\\c'd{e}f.ts?q=\\'{}",
            "/a\r\nb",
            "/a b\0c\td\u{7f}e\u{1b}[31m",
            "/\u{85}\u{2028}\u{2029}\u{3000}\u{a0}\u{9b}31m\u{202e}\u{2066}\u{200b}\u{feff}",
            "/é/中/😀/a\u{301}",
            long.as_str(),
        ];
        let details = [forged, "\"quoted\" \\ \0 NUL\u{85}\u{2028}\u{3000}", "é 😀 a\u{301}", ""];
        let now = SystemTime::now();
        for path in paths {
            for detail in details {
                let mut entry = line(path, Some(detail));
                entry.request_id = "r\"\n\\";
                let text = by_hand(&entry, now);
                let shown: String = text.chars().take(300).collect();
                assert!(text.ends_with('\n'), "{shown:?}");
                let body = &text[..text.len() - 1];
                assert!(!body.contains(['\n', '\r', '\0', '\u{1b}']), "{shown:?}");
                // No whitespace and no line break of any kind outside the quoted fields.
                let unquoted = fields_unquoted(body);
                assert!(!unquoted.contains(|c: char| c.is_whitespace() && c != ' '), "{shown:?}");
                let found = fields(body);
                let keys: Vec<&str> = found.iter().map(|(k, _)| k.as_str()).collect();
                assert_eq!(
                    keys,
                    [
                        "method",
                        "path",
                        "status",
                        "cache",
                        "bytes",
                        "duration_ms",
                        "client",
                        "complete",
                        "request_id",
                        "detail"
                    ],
                    "{shown:?}"
                );
                // Percent-decoding gives back the path the client sent, byte for byte.
                assert_eq!(percent_decoded(&found[1].1), percent_decoded(path), "{shown:?}");
                assert_eq!(found[8].1, "r\"\n\\");
                assert_eq!(found[9].1, detail, "{shown:?}");
            }
        }
    }

    /// The line with its quoted values taken out.
    fn fields_unquoted(line: &str) -> String {
        let mut out = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            if c == '"' {
                while let Some(q) = chars.next() {
                    match q {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    #[test]
    fn paths_a_uri_accepts_are_written_as_they_came_unless_unprintable() {
        // What `http` lets through (what a hostile client can put in the line at all).
        for refused in ["/a\r\nb", "/a b", "/a\0b", "/a\tb", "/a\u{7f}", "/a\u{1b}b"] {
            assert!(refused.parse::<http::Uri>().is_err(), "{refused:?}");
        }
        for kept in ["/a\"b\\c'{}|^~!$&()*+,;=:@[]", "/%0D%0A", "/é中😀", "/a?b=\\'{}|^`~"] {
            assert!(kept.parse::<http::Uri>().is_ok(), "{kept:?}");
            assert_eq!(Unquoted(kept).to_string(), kept);
        }
        let hidden = "/a\u{85}b\u{2028}c\u{3000}d\u{9b}e\u{202e}f";
        assert!(hidden.parse::<http::Uri>().is_ok(), "{hidden:?}");
        assert_eq!(Unquoted(hidden).to_string(), "/a%C2%85b%E2%80%A8c%E3%80%80d%C2%9Be%E2%80%AEf");
    }

    /// Counts the allocations of each thread, so that a test sees only its own.
    struct Counting;

    thread_local! {
        static ALLOCATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    fn count() {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    }

    // SAFETY (all four): the calls go to the system allocator with the caller's own arguments.
    unsafe impl std::alloc::GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
            count();
            unsafe { std::alloc::System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
            count();
            unsafe { std::alloc::System.alloc_zeroed(layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, size: usize) -> *mut u8 {
            count();
            unsafe { std::alloc::System.realloc(ptr, layout, size) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
            unsafe { std::alloc::System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static ALLOCATOR: Counting = Counting;

    #[test]
    fn a_line_allocates_nothing_once_its_thread_has_a_buffer() {
        let allocated = || ALLOCATIONS.with(|n| n.get());
        // A new thread, so that the first line is the one that makes its buffer.
        let (first, rest, written) = std::thread::spawn(move || {
            let mut entry = line("/v/720p/seg_00042.ts", Some("origin said \"no\"\r\n"));
            entry.duration_ms = 0.36084499999999997;
            let start = UNIX_EPOCH + Duration::new(1_796_083_563, 999_000_000);
            let mut written = 0;
            let before = allocated();
            entry.render(start, |line| written += line.len());
            let first = allocated() - before;
            // 3 s of lines, 1 ms apart: a new second three times.
            let before = allocated();
            for ms in 1..=3000 {
                entry.render(start + Duration::from_millis(ms), |line| written += line.len());
            }
            (first, allocated() - before, written)
        })
        .join()
        .expect("the thread");
        assert!(first > 0, "the first line makes the buffer (else nothing is counted)");
        assert_eq!(rest, 0, "allocations for 3,000 lines");
        assert!(written > 3001 * 200, "{written} bytes");
    }

    #[test]
    fn dates_agree_with_httpdate() {
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
        // Every day from 1970 to 2400 (leap years, centuries, 2000 and 2400), at a few times of day.
        for day in 0..157_000i64 {
            let second = day * 86_400 + (day * 7919) % 86_400;
            let mut ours = String::new();
            push_date_time(&mut ours, second);
            let http = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(second as u64));
            // "Sun, 06 Nov 1994 08:49:37 GMT"
            let (d, m, y, t) = (&http[5..7], &http[8..11], &http[12..16], &http[17..25]);
            let month = months.iter().position(|&name| name == m).expect("month") + 1;
            assert_eq!(ours, format!("{y}-{month:02}-{d}T{t}."), "day {day}");
        }
    }

    #[test]
    fn dates_outside_the_common_years() {
        let at = |second: i64| {
            let mut text = String::new();
            push_date_time(&mut text, second);
            text
        };
        assert_eq!(at(0), "1970-01-01T00:00:00.");
        assert_eq!(at(-1), "1969-12-31T23:59:59.");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00.");
        assert_eq!(at(-62_167_219_200), "0000-01-01T00:00:00.");
        assert_eq!(at(-62_167_219_201), "-0001-12-31T23:59:59.");
        assert_eq!(at(253_402_300_800), "+10000-01-01T00:00:00.");
        assert_eq!(split(UNIX_EPOCH - Duration::new(1, 250_000_000)), (-2, 750_000));
        assert_eq!(split(UNIX_EPOCH + Duration::new(5, 999_999_999)), (5, 999_999));
        // The extremes of whole seconds in an i64.
        let mut text = String::new();
        push_date_time(&mut text, i64::MAX);
        push_date_time(&mut text, i64::MIN);
        assert!(text.starts_with("+292277026596-12-04T15:30:07."), "{text}");
    }

    #[test]
    fn digits() {
        let mut out = String::new();
        for (value, width, text) in
            [(0, 1, "0"), (7, 6, "000007"), (123_456, 6, "123456"), (u64::MAX, 1, "18446744073709551615")]
        {
            out.clear();
            push_digits(&mut out, value, width);
            assert_eq!(out, text);
        }
    }
}
