//! Single byte ranges (RFC 9110 §14), answered from a whole object. Several ranges in one request are
//! answered with the whole object, which RFC 9110 §14.2 allows ("A server MAY ignore the Range header
//! field") and players never need.

use http::header::{HeaderMap, HeaderValue, IF_RANGE, RANGE};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// Serve the whole object (no Range, an invalid or multi-range one, a suffix range of an empty
    /// object, or an If-Range that does not match).
    Whole,
    /// Serve bytes `start..=end`; always `start <= end < length`.
    Partial { start: u64, end: u64 },
    /// 416: the first-pos is at or past the end (so every int-range of an empty object), or a suffix
    /// of 0 bytes (RFC 9110 §14.1.2).
    Unsatisfiable,
}

/// Decides what part of an object of `length` bytes with validator `etag` the request asks for.
///
/// For `length == 0`: `bytes=a-` and `bytes=a-b` are Unsatisfiable (no first-pos is below 0),
/// `bytes=-0` is Unsatisfiable, and `bytes=-n` with n > 0 is Whole. RFC 9110 §14.1.2 makes that last
/// one satisfiable ("the only satisfiable form of range-spec" for a zero-length representation), but
/// there is no byte to send and no `Content-Range` (§14.4) that could say so, so the empty object is
/// sent whole with a 200.
pub fn answer(request: &HeaderMap, length: u64, etag: Option<&str>) -> RangeAnswer {
    // Several Range field lines are one comma-separated list (RFC 9110 §5.3): several ranges.
    let Some(range) = single(request, RANGE.as_str()) else { return RangeAnswer::Whole };
    if request.contains_key(IF_RANGE) {
        // RFC 9110 §13.1.5: the range applies only if the validator matches. Only a strong ETag
        // comparison (§8.8.3.2) can match: dates, weak tags, and a field we cannot read (obs-text, or
        // several lines) match nothing.
        let validator = single(request, IF_RANGE.as_str()).and_then(|v| v.to_str().ok()).map(trim_ows);
        let strong = etag.filter(|tag| tag.starts_with('"'));
        if validator.is_none() || validator != strong {
            return RangeAnswer::Whole;
        }
    }
    // A field with obs-text is not a ranges-specifier.
    let Ok(range) = range.to_str() else { return RangeAnswer::Whole };
    match range_spec(range) {
        None => RangeAnswer::Whole,
        Some(Spec::Suffix(digits)) => {
            let suffix = saturating_decimal(digits);
            if suffix == 0 {
                RangeAnswer::Unsatisfiable
            } else if length == 0 {
                RangeAnswer::Whole
            } else {
                // §14.1.2: "If the selected representation is shorter than the specified
                // suffix-length, the entire representation is used."
                RangeAnswer::Partial { start: length - suffix.min(length), end: length - 1 }
            }
        }
        Some(Spec::Int { first, last }) => {
            // §14.1.1: "An int-range is invalid if the last-pos value is present and less than the
            // first-pos." Compared as numerals, so that two values past u64 still compare right.
            if last.is_some_and(|last| decimal_less(last, first)) {
                return RangeAnswer::Whole;
            }
            let start = saturating_decimal(first);
            if start >= length {
                return RangeAnswer::Unsatisfiable;
            }
            // `length >= 1` here. §14.1.2: a last-pos at or past the end means "the remainder".
            let end = last.map_or(length - 1, |last| saturating_decimal(last).min(length - 1));
            RangeAnswer::Partial { start, end }
        }
    }
}

/// The value of a field sent exactly once.
fn single<'a>(request: &'a HeaderMap, name: &str) -> Option<&'a HeaderValue> {
    let mut values = request.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => Some(value),
        _ => None,
    }
}

/// Strips OWS (SP and HTAB only, RFC 9110 §5.6.3), not every Unicode space as `str::trim` would.
fn trim_ows(text: &str) -> &str {
    text.trim_matches([' ', '\t'])
}

/// One range-spec, its numerals as sent: each is `1*DIGIT` (RFC 9110 §14.1.1), possibly past u64.
enum Spec<'a> {
    Int { first: &'a str, last: Option<&'a str> },
    Suffix(&'a str),
}

/// Reads `bytes=range-spec` (RFC 9110 §14.1.1): the unit in any case (§14.1: "All range unit names are
/// case-insensitive"), OWS around the field value (§5.5) and after `=` (the section's own example,
/// `bytes= 0-999, 4500-5499, -1000`, has it), and nothing else: no whitespace inside the range-spec, no
/// sign (`u64::from_str` would take `+5`), one range-spec only. Anything else is not a ranges-specifier
/// this edge honours, and is ignored (§14.2: "MAY ignore or reject ... an invalid ranges-specifier").
fn range_spec(value: &str) -> Option<Spec<'_>> {
    let (unit, set) = trim_ows(value).split_once('=')?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    let (first, last) = set.trim_start_matches([' ', '\t']).split_once('-')?;
    let numeral = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    match (first, last) {
        ("", suffix) if numeral(suffix) => Some(Spec::Suffix(suffix)),
        (first, "") if numeral(first) => Some(Spec::Int { first, last: None }),
        (first, last) if numeral(first) && numeral(last) => Some(Spec::Int { first, last: Some(last) }),
        _ => None,
    }
}

/// The value of a numeral, u64::MAX for any larger one. RFC 9110 §14.1.2: "Recipients MUST anticipate
/// potentially large decimal numerals and prevent parsing errors due to integer conversion overflows."
/// Saturating is exact for what follows: any length is at most u64::MAX, so a first-pos past u64 is
/// past the end, and a last-pos or suffix past u64 covers the whole object.
fn saturating_decimal(digits: &str) -> u64 {
    digits
        .bytes()
        .fold(0u64, |value, digit| value.saturating_mul(10).saturating_add(u64::from(digit.saturating_sub(b'0'))))
}

/// `a < b` for two numerals of any length.
fn decimal_less(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
    (a.len(), a) < (b.len(), b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ask(range: &str, length: u64) -> RangeAnswer {
        let mut headers = HeaderMap::new();
        headers.insert(RANGE, range.parse().expect("header"));
        answer(&headers, length, Some("\"v1\""))
    }

    fn ask_bytes(range: &[u8], if_range: Option<&[u8]>, length: u64, etag: Option<&str>) -> RangeAnswer {
        let mut headers = HeaderMap::new();
        headers.insert(RANGE, HeaderValue::from_bytes(range).expect("field value bytes"));
        if let Some(if_range) = if_range {
            headers.insert(IF_RANGE, HeaderValue::from_bytes(if_range).expect("field value bytes"));
        }
        answer(&headers, length, etag)
    }

    #[test]
    fn single_ranges() {
        assert_eq!(ask("bytes=0-99", 1000), RangeAnswer::Partial { start: 0, end: 99 });
        assert_eq!(ask("bytes=900-", 1000), RangeAnswer::Partial { start: 900, end: 999 });
        assert_eq!(ask("bytes=-100", 1000), RangeAnswer::Partial { start: 900, end: 999 });
        assert_eq!(ask("bytes=990-2000", 1000), RangeAnswer::Partial { start: 990, end: 999 });
        assert_eq!(ask("bytes=-5000", 1000), RangeAnswer::Partial { start: 0, end: 999 });
    }

    #[test]
    fn unsatisfiable_and_ignored_ranges() {
        assert_eq!(ask("bytes=1000-", 1000), RangeAnswer::Unsatisfiable);
        assert_eq!(ask("bytes=-0", 1000), RangeAnswer::Unsatisfiable);
        assert_eq!(ask("bytes=0-1,5-6", 1000), RangeAnswer::Whole);
        assert_eq!(ask("items=0-1", 1000), RangeAnswer::Whole);
        assert_eq!(ask("bytes=5-1", 1000), RangeAnswer::Whole);
        assert_eq!(answer(&HeaderMap::new(), 10, None), RangeAnswer::Whole);
    }

    #[test]
    fn if_range_must_match_the_strong_etag() {
        let mut headers = HeaderMap::new();
        headers.insert(RANGE, "bytes=0-1".parse().expect("header"));
        headers.insert(IF_RANGE, "\"v1\"".parse().expect("header"));
        assert_eq!(answer(&headers, 10, Some("\"v1\"")), RangeAnswer::Partial { start: 0, end: 1 });
        assert_eq!(answer(&headers, 10, Some("\"v2\"")), RangeAnswer::Whole);
    }

    /// RFC 9110 §14.1.2: "Recipients MUST anticipate potentially large decimal numerals and prevent
    /// parsing errors due to integer conversion overflows." A 1,000-part list is answered whole at once.
    #[test]
    fn a_thousand_ranges_are_answered_whole_quickly() {
        let parts: Vec<String> = (0..1000).map(|i| format!("{i}-{i}")).collect();
        let value = format!("bytes={}", parts.join(","));
        let started = std::time::Instant::now();
        for _ in 0..100 {
            assert_eq!(ask(&value, 10_000), RangeAnswer::Whole);
        }
        // Linear in the field's length: 100 answers take microseconds each even in a debug build.
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "{:?}", started.elapsed());
        let long = format!("bytes={}-", "9".repeat(8000));
        assert_eq!(ask(&long, 10_000), RangeAnswer::Unsatisfiable);
    }

    // ---- Regression tests: one per defect the properties below found in the first parser. ----

    /// `"+5".parse::<u64>()` is `Ok(5)`, but first-pos, last-pos and suffix-length are `1*DIGIT`.
    #[test]
    fn a_signed_numeral_is_not_a_range() {
        for value in ["bytes=+0-", "bytes=+5-9", "bytes=5-+9", "bytes=-+5", "bytes=--5", "bytes=-5-9"] {
            assert_eq!(ask(value, 1000), RangeAnswer::Whole, "{value}");
        }
    }

    /// RFC 9110 §14.1: "All range unit names are case-insensitive".
    #[test]
    fn the_range_unit_is_case_insensitive() {
        assert_eq!(ask("Bytes=0-1", 10), RangeAnswer::Partial { start: 0, end: 1 });
        assert_eq!(ask("BYTES=-1", 10), RangeAnswer::Partial { start: 9, end: 9 });
        assert_eq!(ask("Bytes=0-", 0), RangeAnswer::Unsatisfiable);
    }

    /// A numeral past u64 was refused by `u64::from_str` and the range ignored; it is a valid numeral.
    #[test]
    fn numerals_past_u64_are_read_not_ignored() {
        assert_eq!(ask("bytes=18446744073709551616-", 10), RangeAnswer::Unsatisfiable);
        assert_eq!(ask("bytes=0-18446744073709551616", 10), RangeAnswer::Partial { start: 0, end: 9 });
        assert_eq!(ask("bytes=-18446744073709551616", 10), RangeAnswer::Partial { start: 0, end: 9 });
        assert_eq!(ask("bytes=2-000000000000000000000000003", 10), RangeAnswer::Partial { start: 2, end: 3 });
        // Both past u64: still compared as numerals, so this int-range is invalid rather than a 416.
        assert_eq!(ask("bytes=18446744073709551617-18446744073709551616", 10), RangeAnswer::Whole);
        assert_eq!(ask("bytes=18446744073709551615-", u64::MAX), RangeAnswer::Unsatisfiable);
        assert_eq!(ask("bytes=-18446744073709551615", u64::MAX), RangeAnswer::Partial { start: 0, end: u64::MAX - 1 });
    }

    /// RFC 9110 §14.1.2: a non-zero suffix is satisfiable even for an empty object, so not a 416.
    #[test]
    fn a_suffix_of_an_empty_object_is_sent_whole_not_refused() {
        assert_eq!(ask("bytes=-1", 0), RangeAnswer::Whole);
        assert_eq!(ask("bytes=-0", 0), RangeAnswer::Unsatisfiable);
        assert_eq!(ask("bytes=0-", 0), RangeAnswer::Unsatisfiable);
        assert_eq!(ask("bytes=0-0", 0), RangeAnswer::Unsatisfiable);
    }

    /// The range-spec grammar has no whitespace; only the field's ends and the spot after `=` may.
    #[test]
    fn whitespace_inside_a_range_spec_is_not_a_range() {
        for value in ["bytes=0 -1", "bytes=0- 1", "bytes=- 0", "bytes=0 -", "bytes =0-1", "bytes=1 2-3"] {
            assert_eq!(ask(value, 1000), RangeAnswer::Whole, "{value:?}");
        }
        for value in [" bytes=0-1", "bytes= 0-1", "bytes=\t0-1 ", "bytes=0-1\t"] {
            assert_eq!(ask(value, 1000), RangeAnswer::Partial { start: 0, end: 1 }, "{value:?}");
        }
    }

    /// An If-Range we cannot read (obs-text) was skipped, so the range was served unconditionally.
    #[test]
    fn an_unreadable_if_range_matches_nothing() {
        assert_eq!(ask_bytes(b"bytes=0-", Some(&[0x80]), 0, None), RangeAnswer::Whole);
        assert_eq!(ask_bytes(b"bytes=0-1", Some(b"\"v1\"\xff"), 10, Some("\"v1\"")), RangeAnswer::Whole);
        assert_eq!(
            ask_bytes(b"bytes=0-1", Some(b" \"v1\" "), 10, Some("\"v1\"")),
            RangeAnswer::Partial { start: 0, end: 1 }
        );
        assert_eq!(ask_bytes(b"bytes=0-1", Some(b"W/\"v1\""), 10, Some("W/\"v1\"")), RangeAnswer::Whole);
        assert_eq!(ask_bytes(b"bytes=0-1", Some(b"Tue, 15 Nov 1994 08:12:31 GMT"), 10, None), RangeAnswer::Whole);
    }

    /// Two Range (or If-Range) field lines were read as their first: RFC 9110 §5.3 makes them one list.
    #[test]
    fn two_range_field_lines_are_two_ranges() {
        let mut headers = HeaderMap::new();
        headers.append(RANGE, HeaderValue::from_static("bytes=0-1"));
        headers.append(RANGE, HeaderValue::from_static("bytes=5-6"));
        assert_eq!(answer(&headers, 10, None), RangeAnswer::Whole);
        let mut headers = HeaderMap::new();
        headers.insert(RANGE, HeaderValue::from_static("bytes=0-1"));
        headers.append(IF_RANGE, HeaderValue::from_static("\"v1\""));
        headers.append(IF_RANGE, HeaderValue::from_static("\"v2\""));
        assert_eq!(answer(&headers, 10, Some("\"v1\"")), RangeAnswer::Whole);
    }

    // ---- Properties (bounded: each runs a fixed number of cases as an ordinary unit test). ----

    /// A fixed case count, and no failure persistence: the source tree may be read-only in CI. A
    /// failure prints its shrunk input, which becomes a named regression test below.
    fn config(cases: u32) -> ProptestConfig {
        ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
    }

    /// Field value bytes a client can send (RFC 9110 §5.5: visible ASCII, SP, HTAB, obs-text), with
    /// the range grammar's own characters over-represented, and half of them after `bytes=`.
    fn field_bytes() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![
            6 => proptest::sample::select(b"0123456789--,= \t+bytesBYTES\"W/".to_vec()),
            2 => 0x20u8..=0x7e,
            1 => 0x80u8..=0xff,
        ];
        (any::<bool>(), proptest::collection::vec(byte, 0..24)).prop_map(|(prefixed, body)| {
            if prefixed {
                [b"bytes=".as_slice(), &body].concat()
            } else {
                body
            }
        })
    }

    fn lengths() -> impl Strategy<Value = u64> {
        prop_oneof![Just(0), Just(1), Just(u64::MAX), Just(u64::MAX - 1), 0..2_000u64, any::<u64>()]
    }

    /// A decimal numeral as sent (leading zeros included) and its value, which may exceed u64.
    #[derive(Debug, Clone)]
    struct Numeral {
        value: u128,
        text: String,
    }

    fn numeral() -> impl Strategy<Value = Numeral> {
        let value = prop_oneof![
            0..2_000u128,
            any::<u64>().prop_map(u128::from),
            Just(u128::from(u64::MAX)),
            (u128::from(u64::MAX) + 1)..=u128::MAX,
        ];
        (value, 0..3usize).prop_map(|(value, zeros)| Numeral { value, text: format!("{}{value}", "0".repeat(zeros)) })
    }

    #[derive(Debug, Clone)]
    enum Spec {
        Int(Numeral, Option<Numeral>),
        Suffix(Numeral),
    }

    /// What turns a valid ranges-specifier into one that is not (RFC 9110 §14.1.1).
    #[derive(Debug, Clone)]
    enum Flaw {
        None,
        /// A sign before a numeral: `1*DIGIT` has none, though Rust's `u64::from_str` takes `+`.
        Sign(char, usize),
        /// Whitespace inside the range-spec, next to its `-`.
        Space(&'static str, bool),
        /// A second range-spec, or an empty list element.
        List(&'static str),
        /// A unit other than bytes.
        Unit(&'static str),
        /// A trailing character that is not a digit.
        Trailing(char),
    }

    fn flaw() -> impl Strategy<Value = Flaw> {
        prop_oneof![
            4 => Just(Flaw::None),
            1 => (proptest::sample::select(vec!['+', '-']), 0..2usize).prop_map(|(c, i)| Flaw::Sign(c, i)),
            1 => (proptest::sample::select(vec![" ", "\t", "  "]), any::<bool>()).prop_map(|(s, b)| Flaw::Space(s, b)),
            1 => proptest::sample::select(vec![",0-0", ", 5-", ",", " ,-1"]).prop_map(Flaw::List),
            1 => proptest::sample::select(vec!["items", "byte", "bytes ", "bytess", ""]).prop_map(Flaw::Unit),
            1 => proptest::sample::select(vec!['x', '.', 'e', '"']).prop_map(Flaw::Trailing),
        ]
    }

    fn spec() -> impl Strategy<Value = Spec> {
        prop_oneof![
            (numeral(), proptest::option::of(numeral())).prop_map(|(a, b)| Spec::Int(a, b)),
            numeral().prop_map(Spec::Suffix),
        ]
    }

    /// The field value a generated (spec, flaw) spells, with optional whitespace where RFC 9110 allows
    /// it: around the field value (§5.5) and after `=` (as in the example of §14.1.1).
    fn spell(spec: &Spec, flaw: &Flaw, unit_case: u8, ows: [&str; 3]) -> String {
        // With one numeral only, the sign goes before it.
        let numerals = if matches!(spec, Spec::Int(_, Some(_))) { 2 } else { 1 };
        let sign = |i: usize, text: &str| match flaw {
            Flaw::Sign(c, at) if at % numerals == i => format!("{c}{text}"),
            _ => text.to_string(),
        };
        let dash = match (flaw, spec) {
            // Whitespace there would be allowed: trailing after `a-`, or after `=` before `-n`.
            (Flaw::Space(s, _), Spec::Int(_, None)) => format!("{s}-"),
            (Flaw::Space(s, _), Spec::Suffix(_)) => format!("-{s}"),
            (Flaw::Space(s, true), _) => format!("{s}-"),
            (Flaw::Space(s, false), _) => format!("-{s}"),
            _ => "-".to_string(),
        };
        let mut text = match spec {
            Spec::Int(a, b) => {
                format!("{}{dash}{}", sign(0, &a.text), b.as_ref().map_or(String::new(), |b| sign(1, &b.text)))
            }
            Spec::Suffix(n) => format!("{dash}{}", sign(0, &n.text)),
        };
        match flaw {
            Flaw::List(more) => text.push_str(more),
            Flaw::Trailing(c) => text.push(*c),
            _ => {}
        }
        let unit: String = match flaw {
            Flaw::Unit(unit) => unit.to_string(),
            _ => "bytes"
                .chars()
                .enumerate()
                .map(|(i, c)| if unit_case & (1 << i) != 0 { c.to_ascii_uppercase() } else { c })
                .collect(),
        };
        format!("{}{unit}={}{text}{}", ows[0], ows[1], ows[2])
    }

    /// RFC 9110 §14.1.1 and §14.1.2, computed from what was generated rather than from the text.
    fn expected(spec: &Spec, flaw: &Flaw, length: u64) -> RangeAnswer {
        if !matches!(flaw, Flaw::None) {
            // An invalid ranges-specifier: ignored (§14.2 "MAY ignore or reject").
            return RangeAnswer::Whole;
        }
        let length = u128::from(length);
        let narrow = |v: u128| u64::try_from(v).expect("below the length");
        match spec {
            // "An int-range is invalid if the last-pos value is present and less than the first-pos."
            Spec::Int(a, Some(b)) if b.value < a.value => RangeAnswer::Whole,
            Spec::Int(a, _) if a.value >= length => RangeAnswer::Unsatisfiable,
            Spec::Int(a, b) => RangeAnswer::Partial {
                start: narrow(a.value),
                end: narrow(b.as_ref().map_or(length - 1, |b| b.value.min(length - 1))),
            },
            Spec::Suffix(n) if n.value == 0 => RangeAnswer::Unsatisfiable,
            // Satisfiable (§14.1.2), but there is no byte to send and no Content-Range to say so.
            Spec::Suffix(_) if length == 0 => RangeAnswer::Whole,
            Spec::Suffix(n) => {
                RangeAnswer::Partial { start: narrow(length - n.value.min(length)), end: narrow(length - 1) }
            }
        }
    }

    proptest! {
        #![proptest_config(config(10_000))]

        /// Whatever the bytes: no panic, a Partial is inside the object, and only a field shaped like one
        /// `bytes` range-spec (with a first-pos past the end, or a zero suffix) is Unsatisfiable.
        #[test]
        fn arbitrary_field_values_answer_within_bounds(
            value in field_bytes(), if_range in proptest::option::of(field_bytes()), length in lengths(),
            etag in proptest::option::of(proptest::sample::select(vec!["\"v1\"", "W/\"v1\"", "bytes=0-"])),
        ) {
            let got = ask_bytes(&value, if_range.as_deref(), length, etag);
            if let RangeAnswer::Partial { start, end } = got {
                prop_assert!(start <= end && end < length, "{got:?} for length {length}");
            }
            if got != RangeAnswer::Whole {
                // A range is only ever honoured under an If-Range that is exactly the strong ETag.
                if let Some(if_range) = &if_range {
                    let tag = etag.unwrap_or_default();
                    prop_assert!(tag.starts_with('"') && if_range.trim_ascii() == tag.as_bytes(), "{got:?}");
                }
                let text = std::str::from_utf8(&value).expect("not Whole, so ASCII");
                let text = text.trim_matches([' ', '\t']);
                prop_assert!(text.len() > 6 && text[..6].eq_ignore_ascii_case("bytes="), "{text:?}: {got:?}");
                let spec = text[6..].trim_start_matches([' ', '\t']);
                let (first, last) = spec.split_once('-').expect("a range-spec has a dash");
                let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
                prop_assert!(digits(first) && digits(last) && !(first.is_empty() && last.is_empty()), "{text:?}");
                if got == RangeAnswer::Unsatisfiable {
                    let numeral = |s: &str| match s.trim_start_matches('0') {
                        "" => 0,
                        digits => digits.parse::<u128>().unwrap_or(u128::MAX),
                    };
                    let past_the_end = !first.is_empty() && numeral(first) >= u128::from(length);
                    prop_assert!(past_the_end || (first.is_empty() && numeral(last) == 0), "{text:?} {length}");
                }
            }
        }

        /// Generated ranges-specifiers, valid and near-valid, answer exactly as RFC 9110 §14.1 says.
        #[test]
        fn generated_ranges_answer_as_rfc_9110_says(
            spec in spec(), flaw in flaw(), unit_case in any::<u8>(), length in lengths(),
            ows in proptest::array::uniform3(proptest::sample::select(vec!["", " ", "\t", " \t "])),
        ) {
            let value = spell(&spec, &flaw, unit_case, ows);
            prop_assert_eq!(ask(&value, length), expected(&spec, &flaw, length), "{:?}", value);
        }
    }

    proptest! {
        #![proptest_config(config(3_000))]

        /// `bytes=a-b` with a <= b < length is exactly bytes a..=b.
        #[test]
        fn a_closed_range_inside_the_object_is_exact(x in any::<u64>(), y in any::<u64>(), length in 1..=u64::MAX) {
            let (a, b) = ((x % length).min(y % length), (x % length).max(y % length));
            prop_assert_eq!(ask(&format!("bytes={a}-{b}"), length), RangeAnswer::Partial { start: a, end: b });
        }

        /// `bytes=a-` with a < length runs to the last byte; with a >= length it is a 416.
        #[test]
        fn an_open_range_runs_to_the_last_byte(a in any::<u64>(), length in lengths()) {
            let want = if a < length {
                RangeAnswer::Partial { start: a, end: length - 1 }
            } else {
                RangeAnswer::Unsatisfiable
            };
            prop_assert_eq!(ask(&format!("bytes={a}-"), length), want);
        }

        /// `bytes=-n` is the last min(n, length) bytes; `-0` is a 416; an empty object is sent whole.
        #[test]
        fn a_suffix_range_is_the_last_n_bytes(n in any::<u64>(), length in lengths()) {
            let want = match (n, length) {
                (0, _) => RangeAnswer::Unsatisfiable,
                (_, 0) => RangeAnswer::Whole,
                _ => RangeAnswer::Partial { start: length - n.min(length), end: length - 1 },
            };
            prop_assert_eq!(ask(&format!("bytes=-{n}"), length), want);
        }
    }
}
