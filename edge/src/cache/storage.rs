//! Where objects live: a moka cache weighted by bytes (TinyLFU admission by default, LRU selectable),
//! with a per-entry lifetime so that an object is dropped once it can no longer be served or revalidated.
//!
//! Responses that Vary are stored as two entries, as Varnish does: the primary key maps to the list of
//! varied header names (with a generation), and the variant key, which adds the request's values of
//! those headers, maps to the object.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName};
use moka::future::Cache;
use moka::notification::RemovalCause;
use moka::policy::{EvictionPolicy, Expiry};

use super::key::CacheKey;
use super::policy::CachedObject;
use crate::config::Eviction;

#[derive(Clone)]
enum Entry {
    Object(Arc<CachedObject>),
    Variants { generation: u64, names: Arc<[HeaderName]>, keep_for: Duration },
}

impl Entry {
    fn weight(&self) -> u32 {
        let bytes = match self {
            Entry::Object(object) => object.weight(),
            Entry::Variants { names, .. } => 64 + names.iter().map(|n| n.as_str().len() + 16).sum::<usize>(),
        };
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

struct EntryLifetime;

impl Expiry<CacheKey, Entry> for EntryLifetime {
    fn expire_after_create(&self, _key: &CacheKey, entry: &Entry, _created_at: Instant) -> Option<Duration> {
        Some(match entry {
            Entry::Object(object) => object.keep_for(),
            Entry::Variants { keep_for, .. } => *keep_for,
        })
    }

    fn expire_after_update(
        &self,
        key: &CacheKey,
        entry: &Entry,
        updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, entry, updated_at)
    }
}

/// What a lookup found.
pub enum Found {
    Object(Arc<CachedObject>),
    /// Responses are stored for this URI, but none for this request's variant.
    VaryMiss,
    Miss,
}

/// The cache's store. Cloning is cheap (moka's handle is shared).
#[derive(Clone)]
pub struct Storage {
    cache: Cache<CacheKey, Entry>,
    evictions: Arc<AtomicU64>,
    generations: Arc<AtomicU64>,
}

impl Storage {
    pub fn new(capacity_bytes: u64, eviction: Eviction) -> Self {
        let evictions = Arc::new(AtomicU64::new(0));
        let counter = evictions.clone();
        let policy = match eviction {
            Eviction::TinyLfu => EvictionPolicy::tiny_lfu(),
            Eviction::Lru => EvictionPolicy::lru(),
        };
        let cache = Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(|key: &CacheKey, entry: &Entry| entry.weight().saturating_add(key.weight() as u32))
            .eviction_policy(policy)
            .expire_after(EntryLifetime)
            .eviction_listener(move |_key, _entry, cause| {
                if cause == RemovalCause::Size {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build();
        Storage { cache, evictions, generations: Arc::new(AtomicU64::new(1)) }
    }

    /// The stored object for this request, following a Vary indirection when there is one.
    pub async fn get(&self, primary: &CacheKey, request: &HeaderMap) -> Option<Arc<CachedObject>> {
        match self.lookup(primary, request).await {
            Found::Object(object) => Some(object),
            Found::VaryMiss | Found::Miss => None,
        }
    }

    /// Like `get`, telling apart "nothing under this URI" from "other variants only" (for RFC 9211's
    /// `fwd=uri-miss` and `fwd=vary-miss`).
    pub async fn lookup(&self, primary: &CacheKey, request: &HeaderMap) -> Found {
        match self.cache.get(primary).await {
            None => Found::Miss,
            Some(Entry::Object(object)) => Found::Object(object),
            Some(Entry::Variants { generation, names, .. }) => {
                match self.cache.get(&primary.variant(generation, &names, request)).await {
                    Some(Entry::Object(object)) => Found::Object(object),
                    _ => Found::VaryMiss,
                }
            }
        }
    }

    /// Stores a whole object; `vary` are the header names its response Varies on.
    pub async fn insert(
        &self,
        primary: &CacheKey,
        request: &HeaderMap,
        vary: &[HeaderName],
        object: Arc<CachedObject>,
    ) {
        if vary.is_empty() {
            self.cache.insert(primary.clone(), Entry::Object(object)).await;
            return;
        }
        let keep_for = object.keep_for();
        let generation = match self.cache.get(primary).await {
            Some(Entry::Variants { generation, names, .. }) if *names == *vary => generation,
            _ => {
                let generation = self.generations.fetch_add(1, Ordering::Relaxed);
                let names: Arc<[HeaderName]> = vary.into();
                self.cache.insert(primary.clone(), Entry::Variants { generation, names, keep_for }).await;
                generation
            }
        };
        self.cache.insert(primary.variant(generation, vary, request), Entry::Object(object)).await;
    }

    /// Forgets the object (every variant of it) stored under this key. Returns whether there was one.
    pub async fn invalidate(&self, primary: &CacheKey) -> bool {
        self.cache.remove(primary).await.is_some()
    }

    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    pub fn weighted_bytes(&self) -> u64 {
        self.cache.weighted_size()
    }

    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Applies pending maintenance (counts, evictions) now; tests and stats want settled figures.
    pub async fn settle(&self) {
        self.cache.run_pending_tasks().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::policy::{judge, CacheRules};
    use crate::config::CacheConfig;
    use bytes::Bytes;
    use http::StatusCode;
    use std::time::SystemTime;

    fn object(body: &'static [u8]) -> Arc<CachedObject> {
        let rules = CacheRules::from_config(&CacheConfig::default());
        let request = http::Request::get("http://h/a").body(()).expect("request").into_parts().0;
        let mut headers = HeaderMap::new();
        headers.insert("cache-control", "max-age=60".parse().expect("static"));
        let cacheability = judge(&rules, &request, StatusCode::OK, &headers, "/a", SystemTime::now());
        Arc::new(CachedObject::new(StatusCode::OK, headers, Bytes::from_static(body), cacheability, Instant::now()))
    }

    #[tokio::test]
    async fn stores_and_finds_plain_objects() {
        let storage = Storage::new(1 << 20, Eviction::TinyLfu);
        let key = CacheKey::primary("h", "/a", None, &[]);
        storage.insert(&key, &HeaderMap::new(), &[], object(b"hello")).await;
        let found = storage.get(&key, &HeaderMap::new()).await.expect("stored");
        assert_eq!(found.body, Bytes::from_static(b"hello"));
        assert!(storage.invalidate(&key).await);
        assert!(storage.get(&key, &HeaderMap::new()).await.is_none());
    }

    #[tokio::test]
    async fn variants_are_kept_apart_and_purged_together() {
        let storage = Storage::new(1 << 20, Eviction::Lru);
        let key = CacheKey::primary("h", "/a", None, &[]);
        let vary = [HeaderName::from_static("accept-language")];
        let mut en = HeaderMap::new();
        en.insert("accept-language", "en".parse().expect("static"));
        let mut fr = HeaderMap::new();
        fr.insert("accept-language", "fr".parse().expect("static"));
        storage.insert(&key, &en, &vary, object(b"hello")).await;
        storage.insert(&key, &fr, &vary, object(b"bonjour")).await;
        assert_eq!(storage.get(&key, &en).await.expect("en").body, Bytes::from_static(b"hello"));
        assert_eq!(storage.get(&key, &fr).await.expect("fr").body, Bytes::from_static(b"bonjour"));
        assert!(storage.get(&key, &HeaderMap::new()).await.is_none());
        storage.invalidate(&key).await;
        assert!(storage.get(&key, &en).await.is_none());
        // A new response with the same Vary does not bring the purged variant back.
        storage.insert(&key, &fr, &vary, object(b"salut")).await;
        assert!(storage.get(&key, &en).await.is_none());
    }

    #[tokio::test]
    async fn capacity_is_counted_in_bytes() {
        let storage = Storage::new(64 * 1024, Eviction::Lru);
        static BODY: [u8; 16 * 1024] = [7; 16 * 1024];
        for i in 0..20 {
            let key = CacheKey::primary("h", &format!("/seg{i}.ts"), None, &[]);
            storage.insert(&key, &HeaderMap::new(), &[], object(&BODY)).await;
        }
        storage.settle().await;
        assert!(storage.weighted_bytes() <= 64 * 1024, "{}", storage.weighted_bytes());
        assert!(storage.entry_count() <= 4);
        assert!(storage.evictions() >= 16);
    }
}
