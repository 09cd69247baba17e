//! Cache keys: host + path + query, with operator-listed query parameters (session tokens and the like)
//! removed so that they do not split the cache; plus, for responses that Vary, the values of the varied
//! request headers.

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, HeaderName};

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(Arc<str>);

impl CacheKey {
    /// The primary key of a request: `host` (lower-cased, without a default port), path, and the query
    /// without the ignored parameters (the remaining ones keep their order).
    pub fn primary(host: &str, path: &str, query: Option<&str>, ignored_params: &[String]) -> CacheKey {
        thread_local! {
            // Reused per thread: the key is built here and copied once into its final allocation.
            static SCRATCH: RefCell<String> = const { RefCell::new(String::new()) };
        }
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut key) => {
                key.clear();
                Self::write_primary(&mut key, host, path, query, ignored_params);
                CacheKey(Arc::from(key.as_str()))
            }
            Err(_) => {
                let mut key = String::new();
                Self::write_primary(&mut key, host, path, query, ignored_params);
                CacheKey(key.into())
            }
        })
    }

    fn write_primary(key: &mut String, host: &str, path: &str, query: Option<&str>, ignored_params: &[String]) {
        let host = host.trim_end_matches(":80");
        key.reserve(host.len() + path.len() + query.map_or(0, str::len) + 1);
        for c in host.chars() {
            key.push(c.to_ascii_lowercase());
        }
        key.push_str(path);
        if let Some(query) = query {
            let mut first = true;
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let name = pair.split('=').next().unwrap_or(pair);
                if ignored_params.iter().any(|ignored| ignored == name) {
                    continue;
                }
                key.push(if first { '?' } else { '&' });
                key.push_str(pair);
                first = false;
            }
        }
    }

    /// The key of one variant of a response that Varies on `names`: the primary key, a generation (so
    /// that purging the primary orphans every old variant), and the request's values of those headers.
    pub fn variant(&self, generation: u64, names: &[HeaderName], request: &HeaderMap) -> CacheKey {
        let mut key = String::with_capacity(self.0.len() + 32);
        key.push_str(&self.0);
        key.push('\u{0}');
        key.push_str(&generation.to_string());
        for name in names {
            key.push('\u{0}');
            key.push_str(name.as_str());
            key.push('=');
            let mut values = request.get_all(name).iter().peekable();
            while let Some(value) = values.next() {
                key.push_str(&String::from_utf8_lossy(value.as_bytes()));
                if values.peek().is_some() {
                    key.push(',');
                }
            }
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
        assert_eq!(key.as_str(), "edge.example/a/b.ts?x=1&y=2");
    }

    #[test]
    fn ignored_query_params_do_not_split_the_cache() {
        let ignored = vec!["token".to_string(), "sid".to_string()];
        let a = CacheKey::primary("h", "/seg.ts", Some("token=abc&q=1"), &ignored);
        let b = CacheKey::primary("h", "/seg.ts", Some("q=1&sid=9&token=zzz"), &ignored);
        assert_eq!(a, b);
        assert_eq!(a.as_str(), "h/seg.ts?q=1");
        let none = CacheKey::primary("h", "/seg.ts", Some("token=abc"), &ignored);
        assert_eq!(none.as_str(), "h/seg.ts");
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
}
