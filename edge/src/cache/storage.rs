//! Where objects live: a store weighted by bytes, with a per-entry lifetime so that an object is dropped
//! once it can no longer be served or revalidated. S3-FIFO (`s3fifo`, the pure policy, behind one
//! short lock) is the default: it keeps more bytes of hits on VOD traffic (`BENCHMARKS.md`). moka
//! (TinyLFU admission in front of LRU, or plain LRU) is the alternative.
//!
//! Responses that Vary are stored as two entries, as Varnish does: the primary key maps to the list of
//! varied header names (with a generation), and the variant key, which adds the request's values of
//! those headers, maps to the object.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName};
use moka::future::Cache;
use moka::notification::RemovalCause;
use moka::policy::{EvictionPolicy, Expiry};

use super::key::CacheKey;
use super::policy::CachedObject;
use super::s3fifo::S3Fifo;
use crate::config::Eviction;

#[derive(Clone)]
enum Entry {
    Object(Arc<CachedObject>),
    Variants { generation: u64, names: Arc<[HeaderName]>, keep_for: Duration },
}

impl Entry {
    fn keep_for(&self) -> Duration {
        match self {
            Entry::Object(object) => object.keep_for(),
            Entry::Variants { keep_for, .. } => *keep_for,
        }
    }

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
        Some(entry.keep_for())
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

/// An S3-FIFO entry and the instant it stops being kept (None: never, for lifetimes past the clock's end).
struct Timed {
    entry: Entry,
    until: Option<Instant>,
}

type S3Store = Arc<Mutex<S3Fifo<CacheKey, Timed>>>;

/// Whether a lookup is a client's use of the object (it counts towards keeping it) or a look.
#[derive(Clone, Copy)]
enum Access {
    Use,
    Look,
}

#[derive(Clone)]
enum Backend {
    Moka(Cache<CacheKey, Entry>),
    S3Fifo(S3Store),
}

/// The cache's store. Cloning is cheap (the store is shared).
#[derive(Clone)]
pub struct Storage {
    backend: Backend,
    evictions: Arc<AtomicU64>,
    generations: Arc<AtomicU64>,
}

fn weigh(key: &CacheKey, entry: &Entry) -> u32 {
    entry.weight().saturating_add(u32::try_from(key.weight()).unwrap_or(u32::MAX))
}

/// The S3-FIFO store's lock. A panic while it was held cannot leave the policy's bookkeeping half
/// done in a way that matters more than losing the cache, so a poisoned lock is used as it is.
fn locked(store: &S3Store) -> std::sync::MutexGuard<'_, S3Fifo<CacheKey, Timed>> {
    store.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Storage {
    pub fn new(capacity_bytes: u64, eviction: Eviction) -> Self {
        let evictions = Arc::new(AtomicU64::new(0));
        let counter = evictions.clone();
        let policy = match eviction {
            Eviction::TinyLfu => EvictionPolicy::tiny_lfu(),
            Eviction::Lru => EvictionPolicy::lru(),
            Eviction::S3Fifo => {
                let store = Arc::new(Mutex::new(S3Fifo::new(capacity_bytes)));
                let generations = Arc::new(AtomicU64::new(1));
                return Storage { backend: Backend::S3Fifo(store), evictions, generations };
            }
        };
        let cache = Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(weigh)
            .eviction_policy(policy)
            .expire_after(EntryLifetime)
            .eviction_listener(move |_key, _entry, cause| {
                if cause == RemovalCause::Size {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build();
        Storage { backend: Backend::Moka(cache), evictions, generations: Arc::new(AtomicU64::new(1)) }
    }

    async fn entry(&self, key: &CacheKey, access: Access) -> Option<Entry> {
        match &self.backend {
            // moka has no lookup that leaves its frequency sketch alone.
            Backend::Moka(cache) => cache.get(key).await,
            Backend::S3Fifo(store) => {
                let now = Instant::now();
                let mut store = locked(store);
                // One hash lookup on a hit. A use counted on an entry found expired does not matter:
                // it is removed at once.
                let timed = match access {
                    Access::Use => store.get(key),
                    Access::Look => store.peek(key),
                }?;
                if timed.until.is_some_and(|until| until <= now) {
                    let gone = store.remove(key);
                    drop(store);
                    drop(gone);
                    return None;
                }
                Some(timed.entry.clone())
            }
        }
    }

    async fn put(&self, key: CacheKey, entry: Entry) {
        match &self.backend {
            Backend::Moka(cache) => cache.insert(key, entry).await,
            Backend::S3Fifo(store) => {
                let weight = u64::from(weigh(&key, &entry));
                let now = Instant::now();
                let until = now.checked_add(entry.keep_for());
                // An entry past its lifetime leaves when it reaches a queue's head, whatever its uses.
                let dead = |timed: &Timed| timed.until.is_some_and(|until| until <= now);
                let inserted = locked(store).insert(key, Timed { entry, until }, weight, dead);
                self.evictions.fetch_add(inserted.evicted.len() as u64, Ordering::Relaxed);
                // Dropped here, after the lock: freeing large bodies is not done while holding it.
                drop(inserted);
            }
        }
    }

    async fn remove(&self, key: &CacheKey) -> Option<Entry> {
        match &self.backend {
            Backend::Moka(cache) => cache.remove(key).await,
            Backend::S3Fifo(store) => {
                let gone = locked(store).remove(key);
                gone.map(|timed| timed.entry)
            }
        }
    }

    /// The stored object for this request, following a Vary indirection when there is one.
    pub async fn get(&self, primary: &CacheKey, request: &HeaderMap) -> Option<Arc<CachedObject>> {
        match self.lookup(primary, request).await {
            Found::Object(object) => Some(object),
            Found::VaryMiss | Found::Miss => None,
        }
    }

    /// Like `get`, for the edge's own checks (prefetch: is the next segment cached?): not counted as a
    /// use, so that an object nobody asked for again is not kept for it.
    pub async fn peek(&self, primary: &CacheKey, request: &HeaderMap) -> Option<Arc<CachedObject>> {
        match self.find(primary, request, Access::Look).await {
            Found::Object(object) => Some(object),
            Found::VaryMiss | Found::Miss => None,
        }
    }

    /// Like `get`, telling apart "nothing under this URI" from "other variants only" (for RFC 9211's
    /// `fwd=uri-miss` and `fwd=vary-miss`).
    pub async fn lookup(&self, primary: &CacheKey, request: &HeaderMap) -> Found {
        self.find(primary, request, Access::Use).await
    }

    async fn find(&self, primary: &CacheKey, request: &HeaderMap, access: Access) -> Found {
        match self.entry(primary, access).await {
            None => Found::Miss,
            Some(Entry::Object(object)) => Found::Object(object),
            Some(Entry::Variants { generation, names, .. }) => {
                match self.entry(&primary.variant(generation, &names, request), access).await {
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
            self.put(primary.clone(), Entry::Object(object)).await;
            return;
        }
        let keep_for = object.keep_for();
        let generation = match self.entry(primary, Access::Look).await {
            Some(Entry::Variants { generation, names, .. }) if *names == *vary => generation,
            _ => {
                let generation = self.generations.fetch_add(1, Ordering::Relaxed);
                let names: Arc<[HeaderName]> = vary.into();
                self.put(primary.clone(), Entry::Variants { generation, names, keep_for }).await;
                generation
            }
        };
        self.put(primary.variant(generation, vary, request), Entry::Object(object)).await;
    }

    /// Forgets the object (every variant of it) stored under this key. Returns whether there was one.
    pub async fn invalidate(&self, primary: &CacheKey) -> bool {
        self.remove(primary).await.is_some()
    }

    pub fn entry_count(&self) -> u64 {
        match &self.backend {
            Backend::Moka(cache) => cache.entry_count(),
            Backend::S3Fifo(store) => locked(store).len() as u64,
        }
    }

    pub fn weighted_bytes(&self) -> u64 {
        match &self.backend {
            Backend::Moka(cache) => cache.weighted_size(),
            Backend::S3Fifo(store) => locked(store).weighted_bytes(),
        }
    }

    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Applies pending maintenance (counts, evictions) now; tests and stats want settled figures.
    /// (S3-FIFO keeps no pending work: its figures are always settled.)
    pub async fn settle(&self) {
        if let Backend::Moka(cache) = &self.backend {
            cache.run_pending_tasks().await;
        }
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

    const EVERY_EVICTION: [Eviction; 3] = [Eviction::TinyLfu, Eviction::Lru, Eviction::S3Fifo];

    #[tokio::test]
    async fn stores_and_finds_plain_objects() {
        for eviction in EVERY_EVICTION {
            let storage = Storage::new(1 << 20, eviction);
            let key = CacheKey::primary("h", "/a", None, &[]);
            storage.insert(&key, &HeaderMap::new(), &[], object(b"hello")).await;
            let found = storage.get(&key, &HeaderMap::new()).await.expect("stored");
            assert_eq!(found.body, Bytes::from_static(b"hello"));
            assert!(storage.invalidate(&key).await);
            assert!(storage.get(&key, &HeaderMap::new()).await.is_none(), "{eviction:?}");
        }
    }

    #[tokio::test]
    async fn variants_are_kept_apart_and_purged_together() {
        for eviction in EVERY_EVICTION {
            variants_apart(eviction).await;
        }
    }

    async fn variants_apart(eviction: Eviction) {
        let storage = Storage::new(1 << 20, eviction);
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
        for eviction in [Eviction::Lru, Eviction::S3Fifo] {
            let storage = Storage::new(64 * 1024, eviction);
            static BODY: [u8; 16 * 1024] = [7; 16 * 1024];
            for i in 0..20 {
                let key = CacheKey::primary("h", &format!("/seg{i}.ts"), None, &[]);
                storage.insert(&key, &HeaderMap::new(), &[], object(&BODY)).await;
            }
            storage.settle().await;
            assert!(storage.weighted_bytes() <= 64 * 1024, "{eviction:?}: {}", storage.weighted_bytes());
            assert!(storage.entry_count() <= 4, "{eviction:?}");
            assert!(storage.evictions() >= 16, "{eviction:?}");
        }
    }

    #[tokio::test]
    async fn the_edges_own_looks_do_not_keep_an_object_a_client_did_not_ask_again() {
        static BODY: [u8; 8 * 1024] = [7; 8 * 1024];
        let filled = |i: usize| CacheKey::primary("h", &format!("/seg{i}.ts"), None, &[]);
        for client_asked_again in [false, true] {
            let storage = Storage::new(64 * 1024, Eviction::S3Fifo);
            let key = filled(0);
            storage.insert(&key, &HeaderMap::new(), &[], object(&BODY)).await;
            // Prefetch checks whether it is cached; only in the second case does a client ask again.
            assert!(storage.peek(&key, &HeaderMap::new()).await.is_some());
            if client_asked_again {
                assert!(storage.get(&key, &HeaderMap::new()).await.is_some());
            }
            for i in 1..12 {
                storage.insert(&filled(i), &HeaderMap::new(), &[], object(&BODY)).await;
            }
            let kept = storage.peek(&key, &HeaderMap::new()).await.is_some();
            assert_eq!(kept, client_asked_again);
        }
    }

    /// A client that asks for one-off URLs (cache-busting query strings, a scan) as fast as it can does
    /// not push out what viewers keep asking for, even when they ask less often than the cache turns
    /// over (under LRU they would all be gone).
    #[tokio::test]
    async fn a_flood_of_one_off_urls_does_not_push_out_what_viewers_keep_asking_for() {
        static BODY: [u8; 4 * 1024] = [7; 4 * 1024];
        let storage = Storage::new(64 * 1024, Eviction::S3Fifo);
        let popular: Vec<CacheKey> =
            (0..6).map(|i| CacheKey::primary("h", &format!("/title/seg{i}.ts"), None, &[])).collect();
        for key in &popular {
            storage.insert(key, &HeaderMap::new(), &[], object(&BODY)).await;
            assert!(storage.get(key, &HeaderMap::new()).await.is_some());
        }
        for i in 0..2000 {
            let one_off = CacheKey::primary("h", "/title/seg0.ts", Some(&format!("bust={i}")), &[]);
            storage.insert(&one_off, &HeaderMap::new(), &[], object(&BODY)).await;
            // The viewers come back once per 40 one-off objects: the cache holds about 14.
            if i % 40 == 39 {
                for key in &popular {
                    assert!(storage.get(key, &HeaderMap::new()).await.is_some(), "{key:?} pushed out after {i}");
                }
            }
            assert!(storage.weighted_bytes() <= 64 * 1024);
        }
    }

    #[tokio::test]
    async fn an_s3fifo_object_past_its_lifetime_is_gone() {
        let storage = Storage::new(1 << 20, Eviction::S3Fifo);
        let key = CacheKey::primary("h", "/a", None, &[]);
        let Backend::S3Fifo(store) = &storage.backend else { panic!("an S3-FIFO store") };
        // An entry whose lifetime (counted from its insert, as moka counts it) ended a second ago.
        let until = Instant::now().checked_sub(Duration::from_secs(1));
        let entry = Timed { entry: Entry::Object(object(b"hello")), until };
        locked(store).insert(key.clone(), entry, 100, |_| false);
        assert_eq!(storage.entry_count(), 1);
        assert!(storage.get(&key, &HeaderMap::new()).await.is_none());
        assert_eq!(storage.entry_count(), 0, "the expired entry is dropped when found");
        assert_eq!(storage.weighted_bytes(), 0);
    }
}
