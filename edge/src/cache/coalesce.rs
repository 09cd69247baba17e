//! Request coalescing ("cache lock" in Pingora, "waiting list" in Varnish): the first miss for a key
//! starts ONE origin fetch, a flight; every later miss for the same key joins it. The fetch runs detached
//! from any client, so a client that disconnects cancels nothing for the others.
//!
//! A flight's body is a list of chunks that each reader takes at its own pace from the first byte, so
//! the first bytes reach every client before the origin has finished. Memory is bounded two ways:
//!
//! - A body that will be stored is kept whole (it is at most `max_object_size`): it becomes the
//!   stored object.
//! - A body that will not be stored (too large, `no-store`, `private`, …) flows through a window of
//!   [`STREAM_WINDOW`] bytes ahead of its fastest reader, and keeps at most as many behind it. The
//!   fetch reads from the origin only as fast as the fastest reader drains (backpressure), a reader
//!   that falls a whole window behind the fastest is dropped with an error, and a fetch nobody reads
//!   any more stops.
//!
//! Resources are released by guards, never by hand on each path (Pingora's `WritePermit`): the
//! fetch holds a [`FillGuard`] whose drop ends the flight (as failed, if nothing else ended it; a
//! panic included) and takes it out of the registry, so the next request reaches the origin. Each
//! reader holds a [`FlightReader`] whose drop tells the fetch it has one reader less.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use futures::Stream;
use http::{HeaderMap, HeaderName, StatusCode};
use tokio::sync::watch;

use super::key::CacheKey;
use super::policy::CachedObject;
use crate::body::BodyError;

/// Bytes a flight that will not be stored holds ahead of its fastest reader, and at most again as many
/// behind it for slower readers.
pub const STREAM_WINDOW: u64 = 2 << 20;

/// The response head of a flight.
#[derive(Debug)]
pub struct FlightHead {
    pub status: StatusCode,
    /// The headers every reader gets (without `Set-Cookie` when the cache strips it).
    pub headers: HeaderMap,
    /// Headers only the request that started the flight gets (its own `Set-Cookie`).
    pub leader_only: HeaderMap,
    /// May readers other than the one that started the flight be given this response? False for
    /// responses meant for one client (private, no-store, Set-Cookie…).
    pub shareable: bool,
    /// The header names the response varies on. A follower whose values for them differ from the
    /// leader's must not be given this response.
    pub vary: Vec<HeaderName>,
    /// Will the body be stored? If not, it streams through the bounded window.
    pub storable: bool,
    /// How long the stored object will be fresh, for `Cache-Status: ttl`.
    pub fresh_for: std::time::Duration,
}

/// Why a flight failed: the origin could not be reached or answered badly, the body broke off
/// midway, or the fetch was abandoned.
#[derive(Debug, Clone)]
pub struct FlightFailure {
    pub message: String,
    pub timed_out: bool,
    /// The edge did not start the fetch: too many of its kind were under way (503, not 502).
    pub busy: bool,
}

impl FlightFailure {
    pub fn new(message: impl Into<String>) -> Self {
        FlightFailure { message: message.into(), timed_out: false, busy: false }
    }

    pub fn busy(message: impl Into<String>) -> Self {
        FlightFailure { message: message.into(), timed_out: false, busy: true }
    }
}

#[derive(Debug, Clone)]
enum Phase {
    Pending,
    Streaming(Arc<FlightHead>),
    Done(Arc<FlightHead>),
    /// The origin confirmed (304) a stored object; this is its refreshed copy.
    Refreshed(Arc<CachedObject>),
    Failed {
        head: Option<Arc<FlightHead>>,
        failure: FlightFailure,
    },
}

impl Phase {
    fn ended(&self) -> bool {
        matches!(self, Phase::Done(_) | Phase::Refreshed(_) | Phase::Failed { .. })
    }
}

/// Everything behind the flight's lock.
struct Shared {
    phase: Phase,
    /// Body chunks still held; `chunks[0]` is chunk number `first` of the body.
    chunks: VecDeque<Bytes>,
    /// Body offset at which each held chunk starts (parallel to `chunks`).
    starts: VecDeque<u64>,
    first: usize,
    /// Bytes pushed so far.
    total: u64,
    /// Per reader slot: the number of the next chunk it takes (`None`: free slot).
    readers: Vec<Option<usize>>,
    /// `None`: every chunk is kept (the body will be stored). `Some(n)`: at most about `n` bytes.
    window: Option<u64>,
}

impl Shared {
    fn end(&self) -> usize {
        self.first + self.chunks.len()
    }

    fn offset_of(&self, chunk: usize) -> u64 {
        if chunk >= self.end() {
            self.total
        } else {
            self.starts.get(chunk.saturating_sub(self.first)).copied().unwrap_or(self.total)
        }
    }

    fn active_readers(&self) -> usize {
        self.readers.iter().flatten().count()
    }

    /// Bytes the fastest reader still has to take.
    fn fastest_lag(&self) -> u64 {
        let fastest = self.readers.iter().flatten().max().copied().unwrap_or(self.first);
        self.total.saturating_sub(self.offset_of(fastest))
    }

    /// Drops the chunks every reader has passed, and those more than `window` bytes behind the fastest
    /// reader: a slower reader that still needed them has fallen too far behind and is dropped when it
    /// asks.
    /// Returns the bytes dropped.
    fn trim_to(&mut self, window: u64) -> u64 {
        let mut dropped = 0u64;
        let fastest = self.readers.iter().flatten().max().copied().unwrap_or(self.end());
        let slowest = self.readers.iter().flatten().min().copied().unwrap_or(self.end());
        // Nobody needs what the slowest reader has passed; nobody may keep more than a window behind
        // the fastest.
        let keep_from = self.offset_of(slowest).max(self.offset_of(fastest).saturating_sub(window));
        while self.chunks.len() > 1 && self.starts.get(1).is_some_and(|&next| next <= keep_from) {
            if let Some(chunk) = self.chunks.pop_front() {
                dropped = dropped.saturating_add(chunk.len() as u64);
            }
            self.starts.pop_front();
            self.first += 1;
        }
        dropped
    }
}

/// The memory all flights together may hold in bodies they keep whole for storing
/// (`cache.fill_memory`). Without it, many concurrent misses of large distinct objects would each keep
/// up to `max_object_size`; over it, a fill streams through the window and is not stored.
#[derive(Debug)]
pub struct FillBudget {
    held: AtomicU64,
    limit: u64,
}

impl FillBudget {
    pub fn new(limit: u64) -> Self {
        FillBudget { held: AtomicU64::new(0), limit }
    }

    fn take(&self, bytes: u64) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|&after| after <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: u64) {
        self.held.fetch_sub(bytes.min(self.held.load(Ordering::Acquire)), Ordering::AcqRel);
    }

    /// Bytes held now by bodies being kept.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Acquire)
    }
}

pub struct Flight {
    /// The request headers of the request that started the flight, to compare Vary'd values.
    leader_request: HeaderMap,
    budget: Arc<FillBudget>,
    /// Bytes of this flight's kept body counted in `budget`, given back when it stops keeping or ends.
    counted: AtomicU64,
    shared: Mutex<Shared>,
    /// Bumped by the fetch on every change (head, chunk, end).
    produced: watch::Sender<u64>,
    /// Bumped by readers when they take a chunk or leave.
    consumed: watch::Sender<u64>,
}

/// What a waiter learns once the flight has a head (or has ended without one).
pub enum HeadOutcome {
    Head(Arc<FlightHead>),
    Refreshed(Arc<CachedObject>),
    Failed(FlightFailure),
}

/// Why a flight's body cannot be had whole.
#[derive(Debug)]
pub enum NotWhole {
    /// The body is not being kept (too large, or not stored): it streams through a window.
    TooLarge,
    Failed(FlightFailure),
}

/// The fetch could not hand a chunk on: every reader has gone and the body will not be stored.
#[derive(Debug)]
pub struct NoReaders;

impl Flight {
    fn new(leader_request: &HeaderMap, budget: Arc<FillBudget>) -> Arc<Self> {
        Arc::new(Flight {
            leader_request: leader_request.clone(),
            budget,
            counted: AtomicU64::new(0),
            shared: Mutex::new(Shared {
                phase: Phase::Pending,
                chunks: VecDeque::new(),
                starts: VecDeque::new(),
                first: 0,
                total: 0,
                readers: Vec::new(),
                window: None,
            }),
            produced: watch::channel(0).0,
            consumed: watch::channel(0).0,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A poisoned lock only means a thread panicked while holding it; every update leaves the
        // state consistent, so the data is still valid.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump_produced(&self) {
        self.produced.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn bump_consumed(&self) {
        self.consumed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Returns once no reader is left (every client that asked has gone).
    pub async fn until_no_readers(&self) {
        let mut consumed = self.consumed.subscribe();
        loop {
            // Marked seen before the check, so that a reader leaving after it wakes the wait below.
            consumed.borrow_and_update();
            if self.lock().active_readers() == 0 {
                return;
            }
            if consumed.changed().await.is_err() {
                return;
            }
        }
    }

    /// The headers of the request that started this flight.
    pub fn leader_request(&self) -> &HeaderMap {
        &self.leader_request
    }

    /// A reader from the first byte, or `None` when the first bytes are gone already.
    fn register(self: &Arc<Self>) -> Option<FlightReader> {
        let slot = {
            let mut shared = self.lock();
            if shared.first > 0 {
                return None;
            }
            match shared.readers.iter().position(Option::is_none) {
                Some(free) => {
                    shared.readers[free] = Some(0);
                    free
                }
                None => {
                    shared.readers.push(Some(0));
                    shared.readers.len() - 1
                }
            }
        };
        Some(FlightReader { flight: self.clone(), slot })
    }

    // ---- The fetch's side ----

    pub fn publish_head(&self, head: FlightHead) {
        {
            let mut shared = self.lock();
            if shared.phase.ended() {
                return;
            }
            if !head.storable {
                shared.window = Some(STREAM_WINDOW);
            }
            shared.phase = Phase::Streaming(Arc::new(head));
        }
        self.bump_produced();
    }

    /// The body will not be stored after all (it outgrew `max_object_size`): from now on it streams
    /// through the bounded window.
    pub fn stop_keeping(&self) {
        // What is held stays counted until readers pass it and it is dropped: a reader that does not
        // read keeps the bytes in memory, so they must keep their place in the budget.
        self.lock().window = Some(STREAM_WINDOW);
        // Wakes those waiting for the whole body, which they will not get now.
        self.bump_produced();
    }

    /// Counts `bytes` more of a body being kept against the fill budget; false when that would go over
    /// it (the caller then stops keeping the body).
    pub fn keep(&self, bytes: u64) -> bool {
        if !self.budget.take(bytes) {
            return false;
        }
        self.counted.fetch_add(bytes, Ordering::AcqRel);
        true
    }

    /// Gives back to the fill budget up to `bytes` of what this flight counted (chunks it dropped).
    fn give_back(&self, bytes: u64) {
        let Ok(before) =
            self.counted.fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| Some(c.saturating_sub(bytes)))
        else {
            return;
        };
        self.budget.give_back(before.min(bytes));
    }

    /// Hands a chunk to the readers. While the body is not being kept, waits until the fastest reader
    /// is less than a window behind, and fails when no reader is left.
    pub async fn push(&self, chunk: Bytes) -> Result<(), NoReaders> {
        let mut consumed = self.consumed.subscribe();
        loop {
            // Marked seen before the check, so that a reader's progress after it wakes the wait below.
            consumed.borrow_and_update();
            {
                let shared = self.lock();
                match shared.window {
                    None => break,
                    Some(_) if shared.active_readers() == 0 => return Err(NoReaders),
                    Some(window) if shared.fastest_lag() < window => break,
                    Some(_) => {}
                }
            }
            if consumed.changed().await.is_err() {
                return Err(NoReaders);
            }
        }
        let dropped = {
            let mut shared = self.lock();
            let start = shared.total;
            shared.total = start.saturating_add(chunk.len() as u64);
            shared.chunks.push_back(chunk);
            shared.starts.push_back(start);
            shared.window.map_or(0, |window| shared.trim_to(window))
        };
        self.give_back(dropped);
        self.bump_produced();
        Ok(())
    }

    /// The whole body received so far, as one buffer, when every chunk is still held.
    pub fn collect(&self) -> Option<Bytes> {
        let shared = self.lock();
        if shared.first > 0 {
            return None;
        }
        if shared.chunks.len() == 1 {
            return shared.chunks.front().cloned();
        }
        let mut out = BytesMut::with_capacity(usize::try_from(shared.total).unwrap_or(0));
        for chunk in &shared.chunks {
            out.extend_from_slice(chunk);
        }
        Some(out.freeze())
    }

    pub fn finish(&self) {
        {
            let mut shared = self.lock();
            if let Phase::Streaming(head) = &shared.phase {
                shared.phase = Phase::Done(head.clone());
            }
        }
        self.bump_produced();
    }

    pub fn refreshed(&self, object: Arc<CachedObject>) {
        {
            let mut shared = self.lock();
            if shared.phase.ended() {
                return;
            }
            shared.phase = Phase::Refreshed(object);
        }
        self.bump_produced();
    }

    /// Ends the flight as failed, unless it has ended already.
    pub fn fail(&self, failure: FlightFailure) {
        {
            let mut shared = self.lock();
            if shared.phase.ended() {
                return;
            }
            let head = match &shared.phase {
                Phase::Streaming(head) => Some(head.clone()),
                _ => None,
            };
            shared.phase = Phase::Failed { head, failure };
        }
        self.bump_produced();
    }

    pub fn ended(&self) -> bool {
        self.lock().phase.ended()
    }

    // ---- The readers' side ----

    /// Waits for the response head.
    pub async fn head(&self) -> HeadOutcome {
        let mut produced = self.produced.subscribe();
        loop {
            produced.borrow_and_update();
            let outcome = match &self.lock().phase {
                Phase::Pending => None,
                Phase::Streaming(head) | Phase::Done(head) => Some(HeadOutcome::Head(head.clone())),
                Phase::Refreshed(object) => Some(HeadOutcome::Refreshed(object.clone())),
                Phase::Failed { head: Some(head), .. } => Some(HeadOutcome::Head(head.clone())),
                Phase::Failed { head: None, failure } => Some(HeadOutcome::Failed(failure.clone())),
            };
            if let Some(outcome) = outcome {
                return outcome;
            }
            if produced.changed().await.is_err() {
                return HeadOutcome::Failed(FlightFailure::new("fetch abandoned"));
            }
        }
    }

    /// Waits until the body is complete; returns it whole, or the failure (also when the body was
    /// too large to be kept).
    pub async fn whole_body(&self) -> Result<Bytes, NotWhole> {
        let mut produced = self.produced.subscribe();
        loop {
            produced.borrow_and_update();
            let done = {
                let shared = self.lock();
                match &shared.phase {
                    Phase::Failed { failure, .. } => return Err(NotWhole::Failed(failure.clone())),
                    Phase::Refreshed(object) => return Ok(object.body.clone()),
                    _ if shared.window.is_some() => return Err(NotWhole::TooLarge),
                    Phase::Done(_) => true,
                    Phase::Pending | Phase::Streaming(_) => false,
                }
            };
            if done {
                return self.collect().ok_or(NotWhole::TooLarge);
            }
            if produced.changed().await.is_err() {
                return Err(NotWhole::Failed(FlightFailure::new("fetch abandoned")));
            }
        }
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        self.budget.give_back(*self.counted.get_mut());
    }
}

/// One reader of a flight's body. Dropping it tells the fetch there is one reader less.
pub struct FlightReader {
    flight: Arc<Flight>,
    slot: usize,
}

impl Drop for FlightReader {
    fn drop(&mut self) {
        if let Some(slot) = self.flight.lock().readers.get_mut(self.slot) {
            *slot = None;
        }
        self.flight.bump_consumed();
    }
}

/// What a reader gets next.
enum Next {
    Chunk(Bytes),
    End,
    Failed(String),
    Wait,
}

impl FlightReader {
    fn next(&self) -> Next {
        let mut shared = self.flight.lock();
        let Some(position) = shared.readers.get(self.slot).copied().flatten() else {
            return Next::Failed("reader released".into());
        };
        if position < shared.first {
            return Next::Failed("client fell too far behind the origin fetch".into());
        }
        if position < shared.end() {
            let chunk = shared.chunks[position - shared.first].clone();
            shared.readers[self.slot] = Some(position + 1);
            let dropped = shared.window.map_or(0, |window| shared.trim_to(window));
            drop(shared);
            self.flight.give_back(dropped);
            return Next::Chunk(chunk);
        }
        match &shared.phase {
            Phase::Done(_) => Next::End,
            Phase::Failed { failure, .. } => Next::Failed(failure.message.clone()),
            // Nothing more will come (the body of a refreshed copy is served from the cache).
            Phase::Refreshed(_) => Next::End,
            Phase::Pending | Phase::Streaming(_) => Next::Wait,
        }
    }

    /// The body as a stream from its first byte, following the fetch as it progresses. Ends with an
    /// error if the origin's body broke off, so the client sees a truncated response, not a short one.
    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, BodyError>> + Send + 'static {
        let produced = self.flight.produced.subscribe();
        futures::stream::unfold(Some((self, produced)), |state| async move {
            let (reader, mut produced) = state?;
            loop {
                produced.borrow_and_update();
                match reader.next() {
                    Next::Chunk(chunk) => {
                        reader.flight.bump_consumed();
                        return Some((Ok(chunk), Some((reader, produced))));
                    }
                    Next::End => return None,
                    Next::Failed(message) => {
                        let error: BodyError = format!("origin body broke off: {message}").into();
                        return Some((Err(error), None));
                    }
                    Next::Wait => {
                        if produced.changed().await.is_err() {
                            return None;
                        }
                    }
                }
            }
        })
    }
}

/// Held by the task that runs a flight's fetch. Dropping it, on any path (a panic included), ends the
/// flight as failed unless it ended otherwise, and takes it out of the registry.
pub struct FillGuard {
    flight: Arc<Flight>,
    registration: Option<(Flights, CacheKey)>,
}

impl FillGuard {
    pub fn flight(&self) -> &Arc<Flight> {
        &self.flight
    }

    /// Takes the flight out of the registry now (later requests start afresh or find the cache).
    pub fn unregister(&mut self) {
        if let Some((flights, key)) = self.registration.take() {
            flights.remove(&key, &self.flight);
        }
    }
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        if !self.flight.ended() {
            let why = if std::thread::panicking() { "fetch panicked" } else { "fetch abandoned" };
            self.flight.fail(FlightFailure::new(why));
        }
        self.unregister();
    }
}

/// A caller's place in a flight: readers always; the leader also holds the guard and must run the
/// fetch.
pub struct Joined {
    pub flight: Arc<Flight>,
    pub reader: FlightReader,
    pub guard: Option<FillGuard>,
}

/// The flights under way, by key. Cloning is cheap (one shared registry).
#[derive(Clone)]
pub struct Flights {
    map: Arc<Mutex<HashMap<CacheKey, Arc<Flight>>>>,
    budget: Arc<FillBudget>,
}

impl Default for Flights {
    fn default() -> Self {
        Flights::new(u64::MAX)
    }
}

impl Flights {
    /// The registry, with `fill_memory` bytes for the bodies its flights keep whole.
    pub fn new(fill_memory: u64) -> Self {
        Flights { map: Arc::default(), budget: Arc::new(FillBudget::new(fill_memory)) }
    }

    pub fn fill_budget(&self) -> &FillBudget {
        &self.budget
    }

    fn map(&self) -> MutexGuard<'_, HashMap<CacheKey, Arc<Flight>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins the flight for `key`, or starts one (the caller must then run the fetch with the guard).
    pub fn join(&self, key: &CacheKey, request: &HeaderMap) -> Joined {
        let mut map = self.map();
        if let Some(flight) = map.get(key) {
            if let Some(reader) = flight.register() {
                return Joined { flight: flight.clone(), reader, guard: None };
            }
        }
        let flight = Flight::new(request, self.budget.clone());
        let reader = flight.register().unwrap_or_else(|| unreachable!("a new flight has all its bytes"));
        map.insert(key.clone(), flight.clone());
        let guard = FillGuard { flight: flight.clone(), registration: Some((self.clone(), key.clone())) };
        Joined { flight, reader, guard: Some(guard) }
    }

    /// A flight that no one else may join (per-client requests, e.g. with Authorization).
    pub fn private(&self, request: &HeaderMap) -> Joined {
        let flight = Flight::new(request, self.budget.clone());
        let reader = flight.register().unwrap_or_else(|| unreachable!("a new flight has all its bytes"));
        let guard = FillGuard { flight: flight.clone(), registration: None };
        Joined { flight, reader, guard: Some(guard) }
    }

    fn remove(&self, key: &CacheKey, flight: &Arc<Flight>) {
        let mut map = self.map();
        if map.get(key).is_some_and(|current| Arc::ptr_eq(current, flight)) {
            map.remove(key);
        }
    }

    pub fn in_flight(&self) -> usize {
        self.map().len()
    }
}

/// Do the request headers named by `vary` hold the same values in both requests? (RFC 9111 §4.1:
/// a stored or shared response is reused only for requests that match on its Vary'd headers.)
pub fn vary_matches(vary: &[HeaderName], a: &HeaderMap, b: &HeaderMap) -> bool {
    vary.iter().all(|name| name.as_str() != "*" && super::key::vary_value(a, name) == super::key::vary_value(b, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn head(storable: bool) -> FlightHead {
        FlightHead {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            leader_only: HeaderMap::new(),
            shareable: true,
            vary: Vec::new(),
            storable,
            fresh_for: std::time::Duration::ZERO,
        }
    }

    fn key() -> CacheKey {
        CacheKey::primary("h", "/a", None, &[])
    }

    #[tokio::test]
    async fn one_leader_many_followers_and_the_guard_releases_the_key() {
        let flights = Flights::default();
        let leader = flights.join(&key(), &HeaderMap::new());
        let guard = leader.guard.expect("first caller leads");
        for _ in 0..10 {
            let follower = flights.join(&key(), &HeaderMap::new());
            assert!(follower.guard.is_none());
            assert!(Arc::ptr_eq(&follower.flight, &leader.flight));
        }
        assert_eq!(flights.in_flight(), 1);
        drop(guard);
        assert_eq!(flights.in_flight(), 0, "dropping the guard releases the key");
        assert!(matches!(leader.flight.head().await, HeadOutcome::Failed(_)), "an abandoned fetch fails its readers");
        assert!(flights.join(&key(), &HeaderMap::new()).guard.is_some(), "the next request leads a new fetch");
    }

    /// A fill that panics must not wedge its key: the guard fails the flight and frees the key.
    #[tokio::test]
    async fn a_panicking_fill_releases_its_flight() {
        let flights = Flights::default();
        let joined = flights.join(&key(), &HeaderMap::new());
        let guard = joined.guard.expect("leads");
        let task = tokio::spawn(async move {
            let _guard = guard;
            panic!("fault injected inside a fill");
        });
        assert!(task.await.is_err());
        assert_eq!(flights.in_flight(), 0);
        match joined.flight.head().await {
            HeadOutcome::Failed(failure) => assert_eq!(failure.message, "fetch panicked"),
            _ => panic!("readers must see the failure"),
        }
    }

    #[tokio::test]
    async fn readers_stream_chunks_as_they_arrive() {
        let joined = Flights::default().private(&HeaderMap::new());
        let flight = joined.flight.clone();
        let mut early = Box::pin(joined.reader.into_stream());
        flight.publish_head(head(true));
        flight.push(Bytes::from_static(b"ab")).await.expect("kept");
        assert_eq!(early.next().await.expect("chunk").expect("ok"), Bytes::from_static(b"ab"));
        flight.push(Bytes::from_static(b"cd")).await.expect("kept");
        flight.finish();
        let rest: Vec<Bytes> = early.map(|c| c.expect("ok")).collect().await;
        assert_eq!(rest, vec![Bytes::from_static(b"cd")]);
        assert_eq!(flight.whole_body().await.expect("done"), Bytes::from_static(b"abcd"));
    }

    #[tokio::test]
    async fn a_broken_body_ends_every_stream_with_an_error() {
        let joined = Flights::default().private(&HeaderMap::new());
        let flight = joined.flight.clone();
        flight.publish_head(head(true));
        flight.push(Bytes::from_static(b"ab")).await.expect("kept");
        let stream = joined.reader.into_stream();
        flight.fail(FlightFailure::new("reset"));
        let items: Vec<Result<Bytes, BodyError>> = Box::pin(stream).collect().await;
        assert_eq!(items.len(), 2);
        assert!(items[0].is_ok());
        assert!(items[1].is_err());
        assert!(flight.whole_body().await.is_err());
        assert!(matches!(flight.head().await, HeadOutcome::Head(_)));
    }

    #[tokio::test]
    async fn an_unstored_body_waits_for_its_reader_and_stops_when_it_leaves() {
        let joined = Flights::default().private(&HeaderMap::new());
        let flight = joined.flight.clone();
        flight.publish_head(head(false));
        let chunk = Bytes::from(vec![0u8; 512 * 1024]);
        // Up to a window ahead of the reader, pushes go through at once.
        for _ in 0..4 {
            flight.push(chunk.clone()).await.expect("within the window");
        }
        let mut stream = Box::pin(joined.reader.into_stream());
        let blocked = {
            let flight = flight.clone();
            let chunk = chunk.clone();
            tokio::spawn(async move { flight.push(chunk).await })
        };
        // The reader takes one chunk, which makes room for the blocked push.
        assert_eq!(stream.next().await.expect("chunk").expect("ok").len(), chunk.len());
        blocked.await.expect("joined").expect("room was made");
        {
            let shared = flight.lock();
            assert!(shared.total - shared.offset_of(shared.first) <= 2 * STREAM_WINDOW + chunk.len() as u64);
        }
        drop(stream);
        assert!(flight.push(chunk).await.is_err(), "nobody left to read");
    }

    #[tokio::test]
    async fn a_reader_a_window_behind_the_fastest_is_dropped() {
        let flights = Flights::default();
        let fast = flights.join(&key(), &HeaderMap::new());
        let slow = flights.join(&key(), &HeaderMap::new());
        let flight = fast.flight.clone();
        flight.publish_head(head(true));
        flight.stop_keeping();
        let mut fast_stream = Box::pin(fast.reader.into_stream());
        let chunk = Bytes::from(vec![1u8; 256 * 1024]);
        for _ in 0..20 {
            flight.push(chunk.clone()).await.expect("the fast reader keeps up");
            fast_stream.next().await.expect("chunk").expect("ok");
        }
        flight.finish();
        let items: Vec<Result<Bytes, BodyError>> = Box::pin(slow.reader.into_stream()).collect().await;
        assert!(items.last().expect("an item").is_err(), "the laggard gets an error, not a short body");
        assert!(flight.collect().is_none(), "the early chunks are gone");
    }

    #[test]
    fn vary_matching_compares_every_named_header() {
        let names = vec![HeaderName::from_static("x-user")];
        let mut a = HeaderMap::new();
        a.insert("x-user", "a".parse().expect("static"));
        let mut b = HeaderMap::new();
        b.insert("x-user", "b".parse().expect("static"));
        assert!(vary_matches(&names, &a, &a.clone()));
        assert!(!vary_matches(&names, &a, &b));
        assert!(!vary_matches(&names, &a, &HeaderMap::new()));
        assert!(vary_matches(&[], &a, &b));
    }

    /// cache.fill_memory: what bodies kept for storing hold together is bounded; a flight gives its
    /// share back as its bytes are dropped, not before (a reader that does not read keeps them).
    #[tokio::test]
    async fn kept_bodies_share_one_bounded_budget() {
        let flights = Flights::new(1000);
        let first = flights.join(&key(), &HeaderMap::new());
        assert!(first.flight.keep(600));
        let other = flights.private(&HeaderMap::new());
        assert!(!other.flight.keep(600), "over the budget");
        assert!(other.flight.keep(400));
        first.flight.stop_keeping();
        assert_eq!(flights.fill_budget().held(), 1000, "stopping keeps the held bytes counted");
        drop(first);
        assert_eq!(flights.fill_budget().held(), 400, "a finished flight gives its share back");
        drop(other);
        assert_eq!(flights.fill_budget().held(), 0);
    }
}
