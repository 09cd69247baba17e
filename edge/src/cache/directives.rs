//! What a response says about its own caching, read as RFC 9111 and RFC 9213 define it: pure parsing of
//! `Cache-Control`, the targeted fields (`CDN-Cache-Control` and the operator's own), `Expires`, `Age`
//! and `Date`. No decisions here: `policy.rs` makes them.

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName};

/// The largest delta-seconds value the cache acts on: larger ones, however many digits they have,
/// count as this (RFC 9111 §1.2.2). All time arithmetic on header values saturates at it.
pub const MAX_DELTA: Duration = Duration::from_secs(1 << 31);

/// Parses delta-seconds (RFC 9111 §1.2.2): digits only; values past [`MAX_DELTA`] are clamped.
pub fn delta_seconds(text: &str) -> Option<Duration> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let seconds = text.parse::<u64>().unwrap_or(u64::MAX).min(MAX_DELTA.as_secs());
    Some(Duration::from_secs(seconds))
}

/// The caching directives of a response, from `Cache-Control` or from a targeted field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    pub max_age: Option<Duration>,
    pub s_maxage: Option<Duration>,
    pub no_store: bool,
    /// `no-cache`, qualified or not (a qualified one is honoured as unqualified: the stricter reading).
    pub no_cache: bool,
    /// `private`, qualified or not (for a shared cache, both forbid storing what the origin marked).
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub must_understand: bool,
    pub immutable: bool,
    pub stale_while_revalidate: Option<Duration>,
    pub stale_if_error: Option<Duration>,
    /// A freshness directive (`max-age`, `s-maxage`) had an invalid argument: RFC 9111 §4.2.1 says
    /// such a response should be considered stale.
    pub invalid_freshness: bool,
}

impl Directives {
    /// Any directive that speaks to freshness or storage, so that operator defaults must not apply.
    pub fn says_anything(&self) -> bool {
        self.max_age.is_some()
            || self.s_maxage.is_some()
            || self.no_store
            || self.no_cache
            || self.private
            || self.invalid_freshness
    }

    fn set(&mut self, name: &str, argument: Option<Argument>) {
        // RFC 9111 §4.2.1: with a directive given twice, the first occurrence is used.
        let seconds = |current: &mut Option<Duration>, invalid: &mut bool| {
            if current.is_some() {
                return;
            }
            match argument.as_ref().and_then(Argument::seconds) {
                Some(value) => *current = Some(value),
                None => *invalid = true,
            }
        };
        match name {
            "max-age" => seconds(&mut self.max_age, &mut self.invalid_freshness),
            "s-maxage" => seconds(&mut self.s_maxage, &mut self.invalid_freshness),
            "no-store" => self.no_store = true,
            "no-cache" => self.no_cache = true,
            "private" => self.private = true,
            "public" => self.public = true,
            "must-revalidate" => self.must_revalidate = true,
            "proxy-revalidate" => self.proxy_revalidate = true,
            "must-understand" => self.must_understand = true,
            "immutable" => self.immutable = true,
            "stale-while-revalidate" if self.stale_while_revalidate.is_none() => {
                self.stale_while_revalidate = argument.as_ref().and_then(Argument::seconds);
            }
            "stale-if-error" if self.stale_if_error.is_none() => {
                self.stale_if_error = argument.as_ref().and_then(Argument::seconds);
            }
            _ => {}
        }
    }
}

enum Argument {
    Text(String),
    Integer(i64),
}

impl Argument {
    fn seconds(&self) -> Option<Duration> {
        match self {
            Argument::Text(text) => delta_seconds(text),
            Argument::Integer(n) => u64::try_from(*n).ok().map(|n| Duration::from_secs(n.min(MAX_DELTA.as_secs()))),
        }
    }
}

/// Reads every `Cache-Control` line (RFC 9111 §5.2): directive names are case-insensitive, arguments
/// are tokens or quoted strings (both accepted for delta-seconds, as §5.2 asks of recipients).
pub fn cache_control(headers: &HeaderMap) -> Directives {
    let mut directives = Directives::default();
    for value in headers.get_all(header::CACHE_CONTROL) {
        let Ok(text) = value.to_str() else { continue };
        for item in split_list(text) {
            let (name, argument) = match item.split_once('=') {
                Some((name, argument)) => (name.trim(), Some(unquote(argument.trim()))),
                None => (item.trim(), None),
            };
            if name.is_empty() {
                continue;
            }
            directives.set(&name.to_ascii_lowercase(), argument.map(Argument::Text));
        }
    }
    directives
}

/// Splits a comma-separated list, keeping commas inside quoted strings (`no-cache="a, b"`).
fn split_list(text: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                items.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&text[start..]);
    items
}

fn unquote(text: &str) -> String {
    match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => text.to_string(),
    }
}

/// Reads the first valid targeted field among `names` (RFC 9213 §2.2): a Structured Field Dictionary
/// (RFC 8941). A field that does not parse is ignored as a whole; an absent or empty one is skipped.
pub fn targeted(headers: &HeaderMap, names: &[HeaderName]) -> Option<Directives> {
    for name in names {
        let lines: Vec<&[u8]> = headers.get_all(name).iter().map(|v| v.as_bytes()).collect();
        if lines.is_empty() {
            continue;
        }
        let joined = lines.join(&b", "[..]);
        if joined.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok(dictionary) = sfv::Parser::new(&joined).parse::<sfv::Dictionary>() else { continue };
        if dictionary.is_empty() {
            continue;
        }
        let mut directives = Directives::default();
        for (key, entry) in &dictionary {
            let argument = match entry {
                sfv::ListEntry::Item(item) => match &item.bare_item {
                    sfv::BareItem::Integer(n) => Some(Argument::Integer(i64::from(*n))),
                    sfv::BareItem::Boolean(true) => None,
                    sfv::BareItem::Boolean(false) => continue,
                    // Other types (strings, tokens: field lists of no-cache/private) carry no seconds.
                    _ => Some(Argument::Text(String::new())),
                },
                sfv::ListEntry::InnerList(_) => Some(Argument::Text(String::new())),
            };
            let name = key.as_str();
            let takes_seconds = matches!(name, "max-age" | "s-maxage" | "stale-while-revalidate" | "stale-if-error");
            if takes_seconds && !matches!(argument, Some(Argument::Integer(n)) if n >= 0) {
                // RFC 9213 §2.1: a directive whose value has the wrong type is ignored.
                continue;
            }
            directives.set(name, argument);
        }
        return Some(directives);
    }
    None
}

/// An HTTP-date (RFC 9110 §5.6.7): IMF-fixdate, or the obsolete RFC 850 and asctime forms. Anything
/// else, doubled spaces included, is invalid.
pub fn http_date(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    let parsed = httpdate::parse_http_date(text).ok()?;
    // httpdate is lenient about spacing in places; only the exact forms count.
    let canonical = httpdate::fmt_http_date(parsed);
    let is_imf = text == canonical;
    let is_rfc850 = looks_like_rfc850(text);
    let is_asctime = looks_like_asctime(text);
    (is_imf || is_rfc850 || is_asctime).then_some(parsed)
}

/// `Sunday, 06-Nov-94 08:49:37 GMT`
fn looks_like_rfc850(text: &str) -> bool {
    let Some((day, rest)) = text.split_once(", ") else { return false };
    const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
    let b = rest.as_bytes();
    DAYS.contains(&day)
        && b.len() == 22
        && b[2] == b'-'
        && b[6] == b'-'
        && b[9] == b' '
        && b[12] == b':'
        && b[15] == b':'
        && rest.ends_with(" GMT")
}

/// `Sun Nov  6 08:49:37 1994`
fn looks_like_asctime(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 24 && b[3] == b' ' && b[7] == b' ' && b[10] == b' ' && b[13] == b':' && b[16] == b':' && b[19] == b' '
}

/// The first valid `Age` value (RFC 9111 §5.1): non-numeric and negative values are ignored, values
/// past 2^31 count as 2^31.
pub fn age(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get_all(header::AGE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|v| delta_seconds(v.trim()))
}

/// `Date`, when valid.
pub fn date(headers: &HeaderMap) -> Option<SystemTime> {
    headers.get(header::DATE).and_then(|v| v.to_str().ok()).and_then(http_date)
}

/// What `Expires` says: absent, a valid date, or present but invalid (which means "already expired",
/// RFC 9111 §5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expires {
    Absent,
    At(SystemTime),
    Invalid,
}

pub fn expires(headers: &HeaderMap) -> Expires {
    let mut values = headers.get_all(header::EXPIRES).iter();
    let Some(first) = values.next() else { return Expires::Absent };
    match first.to_str().ok().and_then(http_date) {
        Some(at) => Expires::At(at),
        None => Expires::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (n, v) in pairs {
            map.append(HeaderName::from_bytes(n.as_bytes()).expect("name"), v.parse().expect("value"));
        }
        map
    }

    /// RFC 9111 §5.2: directive names are case-insensitive.
    #[test]
    fn directive_names_are_case_insensitive() {
        let d = cache_control(&headers(&[("cache-control", "No-CaChE, MaX-AgE=60, S-MAXAGE=5")]));
        assert!(d.no_cache);
        assert_eq!(d.max_age, Some(Duration::from_secs(60)));
        assert_eq!(d.s_maxage, Some(Duration::from_secs(5)));
    }

    /// RFC 9111 §4.2.1: the first occurrence of a duplicated directive is used; an invalid argument
    /// makes the response stale.
    #[test]
    fn first_occurrence_wins_and_invalid_arguments_are_flagged() {
        let d = cache_control(&headers(&[("cache-control", "max-age=10"), ("cache-control", "max-age=99")]));
        assert_eq!(d.max_age, Some(Duration::from_secs(10)));
        let d = cache_control(&headers(&[("cache-control", "max-age=abc")]));
        assert!(d.invalid_freshness && d.max_age.is_none());
        let d = cache_control(&headers(&[("cache-control", "max-age=-1")]));
        assert!(d.invalid_freshness);
        let d = cache_control(&headers(&[("cache-control", "max-age=\"7\"")]));
        assert_eq!(d.max_age, Some(Duration::from_secs(7)));
    }

    #[test]
    fn quoted_field_lists_keep_their_commas() {
        let d = cache_control(&headers(&[("cache-control", "no-cache=\"set-cookie, x-a\", max-age=3")]));
        assert!(d.no_cache);
        assert_eq!(d.max_age, Some(Duration::from_secs(3)));
    }

    /// RFC 9213 §2.2: the first valid targeted field wins; an invalid one is ignored whole.
    #[test]
    fn targeted_fields_are_structured_dictionaries() {
        let names = [HeaderName::from_static("eddy-cache-control"), HeaderName::from_static("cdn-cache-control")];
        let d = targeted(&headers(&[("cdn-cache-control", "max-age=600, stale-if-error=60")]), &names).expect("valid");
        assert_eq!(d.max_age, Some(Duration::from_secs(600)));
        assert_eq!(d.stale_if_error, Some(Duration::from_secs(60)));
        let d = targeted(&headers(&[("cdn-cache-control", "no-store")]), &names).expect("valid");
        assert!(d.no_store);
        let d = targeted(&headers(&[("eddy-cache-control", "private"), ("cdn-cache-control", "max-age=600")]), &names)
            .expect("valid");
        assert!(d.private && d.max_age.is_none(), "the first listed field wins");
        // Not a dictionary (RFC 8941 keys are lower-case): ignored, so the next field counts.
        let d = targeted(&headers(&[("eddy-cache-control", "Max-Age=1"), ("cdn-cache-control", "max-age=9")]), &names)
            .expect("valid");
        assert_eq!(d.max_age, Some(Duration::from_secs(9)));
        assert!(targeted(&headers(&[("cdn-cache-control", "max-age=\"60\", ,")]), &names).is_none());
        // A value of the wrong type is ignored, the rest is kept.
        let d = targeted(&headers(&[("cdn-cache-control", "max-age=\"60\", no-cache")]), &names).expect("valid");
        assert!(d.max_age.is_none() && d.no_cache);
    }

    /// RFC 9110 §5.6.7: three date forms; anything else is invalid.
    #[test]
    fn dates_in_the_three_forms_and_nothing_else() {
        let imf = http_date("Sun, 06 Nov 1994 08:49:37 GMT").expect("IMF-fixdate");
        assert_eq!(http_date("Sunday, 06-Nov-94 08:49:37 GMT"), Some(imf));
        assert_eq!(http_date("Sun Nov  6 08:49:37 1994"), Some(imf));
        for bad in ["Sun,  06 Nov 1994 08:49:37 GMT", "Sun, 06 Nov 1994 08:49:37 UTC", "0", "-1", "", "tomorrow"] {
            assert_eq!(http_date(bad), None, "{bad:?}");
        }
        assert_eq!(expires(&headers(&[("expires", "0")])), Expires::Invalid);
        assert_eq!(expires(&HeaderMap::new()), Expires::Absent);
    }

    /// RFC 9111 §5.1: the first valid Age; non-numeric and negative values are ignored.
    #[test]
    fn age_takes_the_first_valid_value_and_clamps() {
        assert_eq!(age(&headers(&[("age", "abc, 20")])), Some(Duration::from_secs(20)));
        assert_eq!(age(&headers(&[("age", "-5"), ("age", "7")])), Some(Duration::from_secs(7)));
        assert_eq!(age(&headers(&[("age", "99999999999999999999")])), Some(MAX_DELTA));
        assert_eq!(age(&headers(&[("age", "x")])), None);
    }
}
