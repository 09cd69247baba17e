//! Cache keys: host + path + query, with operator-listed query parameters (session tokens and the like)
//! removed so that they do not split the cache; plus, for responses that Vary, the values of the varied
//! request headers.
//!
//! A key is an encoding of its parts, not a concatenation: each part is escaped so that it holds no
//! separator, and the parts are joined by one. So no two (host, path, query) triples share a key,
//! whatever bytes a client sends: `Host: cdn.example/live` + `/seg1.ts` can never name the object of
//! `Host: cdn.example` + `/live/seg1.ts` (the "unkeyed input" class of web cache poisoning).

use std::cell::RefCell;
use std::fmt;
use std::fmt::Write as _;
use std::sync::Arc;

use http::{HeaderMap, HeaderName};

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(Arc<str>);

/// Separates the parts of a key; never left unescaped inside a part.
const PART: char = ' ';
/// Separates a variant's generation and each varied header from the primary key.
const VARIANT: char = '\u{0}';

/// Appends `text` with every byte outside visible ASCII, and `%` itself, written as `%XX`. The result
/// holds no space and no control character, and decoding it gives `text` back: an injective encoding.
fn push_escaped(key: &mut String, text: &[u8], lowercase: bool) {
    for &b in text {
        if b.is_ascii_graphic() && b != b'%' {
            key.push(if lowercase { b.to_ascii_lowercase() } else { b } as char);
        } else {
            let _ = write!(key, "%{b:02X}");
        }
    }
}

impl CacheKey {
    /// The primary key of a request: `host` (lower-cased, without the default port 80), path, and the
    /// query. When the operator ignores some query parameters and the query holds any, they are
    /// dropped (the remaining ones keep their order; a query left empty counts as none); otherwise the
    /// query is kept exactly as sent, since that is what the origin receives.
    pub fn primary(host: &str, path: &str, query: Option<&str>, ignored_params: &[String]) -> CacheKey {
        CacheKey::primary_without(host, path, query, ignored_params, None)
    }

    /// [`CacheKey::primary`], leaving out the parameter `also_ignored` too (a verified signed-URL
    /// token, which differs per viewer for the same object).
    pub fn primary_without(
        host: &str,
        path: &str,
        query: Option<&str>,
        ignored_params: &[String],
        also_ignored: Option<&str>,
    ) -> CacheKey {
        thread_local! {
            // Reused per thread: the key is built here and copied once into its final allocation.
            static SCRATCH: RefCell<String> = const { RefCell::new(String::new()) };
        }
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut key) => {
                key.clear();
                Self::write_primary(&mut key, host, path, query, ignored_params, also_ignored);
                CacheKey(Arc::from(key.as_str()))
            }
            Err(_) => {
                let mut key = String::new();
                Self::write_primary(&mut key, host, path, query, ignored_params, also_ignored);
                CacheKey(key.into())
            }
        })
    }

    fn write_primary(
        key: &mut String,
        host: &str,
        path: &str,
        query: Option<&str>,
        ignored_params: &[String],
        also_ignored: Option<&str>,
    ) {
        let host = host.strip_suffix(":80").unwrap_or(host);
        key.reserve(host.len() + path.len() + query.map_or(0, str::len) + 3);
        push_escaped(key, host.as_bytes(), true);
        key.push(PART);
        push_escaped(key, path.as_bytes(), false);
        let Some(query) = query else { return };
        let ignored = |name: &str| also_ignored == Some(name) || ignored_params.iter().any(|i| i == name);
        let ignores_some =
            (!ignored_params.is_empty() || also_ignored.is_some()) && query.split('&').any(|p| ignored(param_name(p)));
        if !ignores_some {
            key.push(PART);
            key.push('?');
            push_escaped(key, query.as_bytes(), false);
            return;
        }
        let mut first = true;
        for pair in query.split('&') {
            if ignored(param_name(pair)) {
                continue;
            }
            if first {
                key.push(PART);
                key.push('?');
            } else {
                key.push('&');
            }
            push_escaped(key, pair.as_bytes(), false);
            first = false;
        }
    }

    /// The key of one variant of a response that Varies on `names`: the primary key, a generation (so
    /// that purging the primary orphans every old variant), and the request's values of those headers.
    pub fn variant(&self, generation: u64, names: &[HeaderName], request: &HeaderMap) -> CacheKey {
        let mut key = String::with_capacity(self.0.len() + 32);
        key.push_str(&self.0);
        key.push(VARIANT);
        let _ = write!(key, "{generation}");
        for name in names {
            key.push(VARIANT);
            key.push_str(name.as_str());
            key.push('=');
            // The normalised value as bytes, escaped: two different values never share a variant (a
            // lossy UTF-8 conversion would map distinct invalid bytes to the same replacement character).
            push_escaped(&mut key, &vary_value(request, name), false);
        }
        CacheKey(key.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Approximate bytes this key occupies, for the cache's weigher.
    pub fn weight(&self) -> usize {
        self.0.len() + 16
    }
}

/// The value a request gives a header that a response Varies on, normalised so that requests that mean
/// the same select the same variant (RFC 9111 §4.1 allows normalising): several lines become one
/// comma-separated list, whitespace around list members goes, and the case of the `Accept-*` fields
/// (case-insensitive tokens and language tags, RFC 9110 §12.5) is folded.
pub fn vary_value(request: &HeaderMap, name: &HeaderName) -> Vec<u8> {
    let fold_case = matches!(name.as_str(), "accept" | "accept-encoding" | "accept-language" | "accept-charset");
    let mut out = Vec::new();
    for line in request.get_all(name) {
        for member in line.as_bytes().split(|&b| b == b',') {
            let member = member.trim_ascii();
            if member.is_empty() {
                continue;
            }
            if !out.is_empty() {
                out.push(b',');
            }
            if fold_case {
                out.extend(member.iter().map(u8::to_ascii_lowercase));
            } else {
                out.extend_from_slice(member);
            }
        }
    }
    out
}

/// The name of a `name=value` query pair.
fn param_name(pair: &str) -> &str {
    pair.split('=').next().unwrap_or(pair)
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_host_path_query() {
        let key = CacheKey::primary("Edge.Example:80", "/a/b.ts", Some("x=1&y=2"), &[]);
        assert_eq!(key.as_str(), "edge.example /a/b.ts ?x=1&y=2");
    }

    #[test]
    fn ignored_query_params_do_not_split_the_cache() {
        let ignored = vec!["token".to_string(), "sid".to_string()];
        let a = CacheKey::primary("h", "/seg.ts", Some("token=abc&q=1"), &ignored);
        let b = CacheKey::primary("h", "/seg.ts", Some("q=1&sid=9&token=zzz"), &ignored);
        assert_eq!(a, b);
        assert_eq!(a.as_str(), "h /seg.ts ?q=1");
        let none = CacheKey::primary("h", "/seg.ts", Some("token=abc"), &ignored);
        assert_eq!(none, CacheKey::primary("h", "/seg.ts", None, &ignored));
    }

    #[test]
    fn a_signed_url_token_is_left_out_alongside_the_operators_parameters() {
        let sid = vec!["sid".to_string()];
        let a = CacheKey::primary_without("h", "/v/seg.ts", Some("token=A&q=1&sid=1"), &sid, Some("token"));
        let b = CacheKey::primary_without("h", "/v/seg.ts", Some("q=1&token=B"), &sid, Some("token"));
        assert_eq!(a, b);
        assert_eq!(a.as_str(), "h /v/seg.ts ?q=1");
        let alone = CacheKey::primary_without("h", "/v/seg.ts", Some("token=A"), &[], Some("token"));
        assert_eq!(alone, CacheKey::primary("h", "/v/seg.ts", None, &[]));
        // Without it, the token is an ordinary parameter.
        assert_ne!(CacheKey::primary("h", "/v/seg.ts", Some("token=A"), &[]), alone);
    }

    #[test]
    fn variants_differ_by_varied_header_values_and_generation() {
        let primary = CacheKey::primary("h", "/p.m3u8", None, &[]);
        let names = vec![HeaderName::from_static("accept-encoding")];
        let mut gzip = HeaderMap::new();
        gzip.insert("accept-encoding", "gzip".parse().expect("static"));
        let plain = HeaderMap::new();
        assert_ne!(primary.variant(1, &names, &gzip), primary.variant(1, &names, &plain));
        assert_eq!(primary.variant(1, &names, &gzip), primary.variant(1, &names, &gzip));
        assert_ne!(primary.variant(1, &names, &gzip), primary.variant(2, &names, &gzip));
    }

    /// What the key must tell apart: host (ASCII case and a default port aside), path and query.
    fn normalised(host: &str, path: &str, query: &Option<String>) -> (String, String, Option<String>) {
        let host = host.strip_suffix(":80").unwrap_or(host).to_ascii_lowercase();
        (host, path.to_string(), query.clone())
    }

    fn any_text() -> impl proptest::strategy::Strategy<Value = String> {
        // Separators, escapes, controls and non-ASCII are over-represented on purpose.
        proptest::string::string_regex("[ /?&=%:.a-cA-C0-9\\x00\\t\\x7f\\u{e9}\\u{ffff}]{0,12}").expect("regex")
    }

    proptest::proptest! {
        // Fixed case count, and no regression files: CI's tree may be read-only.
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, failure_persistence: None, ..Default::default() })]

        /// No two (host, path, query) triples share a key unless they name the same thing.
        #[test]
        fn keys_are_injective_over_arbitrary_triples(
            h1 in any_text(), p1 in any_text(), q1 in proptest::option::of(any_text()),
            h2 in any_text(), p2 in any_text(), q2 in proptest::option::of(any_text()),
        ) {
            let k1 = CacheKey::primary(&h1, &p1, q1.as_deref(), &[]);
            let k2 = CacheKey::primary(&h2, &p2, q2.as_deref(), &[]);
            proptest::prop_assert_eq!(k1 == k2, normalised(&h1, &p1, &q1) == normalised(&h2, &p2, &q2));
        }

        /// The poisoning shape: the same characters cut into host, path and query at other places.
        #[test]
        fn moving_characters_between_parts_changes_the_key(
            text in any_text(), cuts in proptest::collection::vec(0usize..=12, 4), query in proptest::bool::ANY,
        ) {
            let chars: Vec<char> = text.chars().collect();
            let split = |a: usize, b: usize| {
                let (a, b) = (a.min(chars.len()), b.min(chars.len()));
                let (a, b) = (a.min(b), a.max(b));
                let s = |r: std::ops::Range<usize>| chars[r].iter().collect::<String>();
                (s(0..a), s(a..b), query.then(|| s(b..chars.len())))
            };
            let (h1, p1, q1) = split(cuts[0], cuts[1]);
            let (h2, p2, q2) = split(cuts[2], cuts[3]);
            let k1 = CacheKey::primary(&h1, &p1, q1.as_deref(), &[]);
            let k2 = CacheKey::primary(&h2, &p2, q2.as_deref(), &[]);
            proptest::prop_assert_eq!(k1 == k2, normalised(&h1, &p1, &q1) == normalised(&h2, &p2, &q2));
        }

        /// Two requests whose varied header values differ in any byte get different variants. List syntax
        /// (commas, blanks around members) is left out: `vary_value` normalises it away on purpose.
        #[test]
        fn variant_keys_tell_every_header_value_apart(
            a in proptest::collection::vec(0x20u8..=0xff, 0..8), b in proptest::collection::vec(0x20u8..=0xff, 0..8),
        ) {
            let member = |c: &u8| !matches!(c, 0x7f | b',' | b' ');
            let a: Vec<u8> = a.into_iter().filter(member).collect();
            let b: Vec<u8> = b.into_iter().filter(member).collect();
            let names = vec![HeaderName::from_static("x-user")];
            let headers = |v: &[u8]| {
                let mut map = HeaderMap::new();
                map.insert("x-user", http::HeaderValue::from_bytes(v).expect("visible bytes"));
                map
            };
            let primary = CacheKey::primary("h", "/p", None, &[]);
            let (ka, kb) = (primary.variant(1, &names, &headers(&a)), primary.variant(1, &names, &headers(&b)));
            proptest::prop_assert_eq!(ka == kb, a == b);
        }
    }

    #[test]
    fn the_host_with_a_slash_does_not_name_a_deeper_path() {
        let poisoned = CacheKey::primary("cdn.example/live", "/seg1.ts", None, &[]);
        let real = CacheKey::primary("cdn.example", "/live/seg1.ts", None, &[]);
        assert_ne!(poisoned, real);
    }

    /// Requests that mean the same select the same variant: whitespace, line splits and the case of
    /// Accept-Language do not matter; the values themselves do.
    #[test]
    fn vary_values_are_normalised() {
        let names = vec![HeaderName::from_static("accept-language")];
        let primary = CacheKey::primary("h", "/p", None, &[]);
        let mut a = HeaderMap::new();
        a.insert("accept-language", "en-US, fr;q=0.5".parse().expect("static"));
        let mut b = HeaderMap::new();
        b.append("accept-language", "EN-us".parse().expect("static"));
        b.append("accept-language", " fr;q=0.5 ".parse().expect("static"));
        assert_eq!(primary.variant(1, &names, &a), primary.variant(1, &names, &b));
        let mut c = HeaderMap::new();
        c.insert("accept-language", "de".parse().expect("static"));
        assert_ne!(primary.variant(1, &names, &a), primary.variant(1, &names, &c));
    }
}
