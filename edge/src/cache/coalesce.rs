//! Request coalescing ("cache lock" in Pingora, "waiting list" in Varnish): the first miss for a key starts
//! ONE origin fetch, a flight; every later miss for the same key joins it. The fetch runs detached from
//! any client, so a client that disconnects cancels nothing for the others. The body is kept as a list of
//! chunks that each waiter reads at its own pace from the start, so the first bytes reach every client
//! before the origin has finished.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use futures::Stream;
use http::{HeaderMap, StatusCode};
use tokio::sync::watch;

use super::key::CacheKey;
use super::policy::CachedObject;
use crate::body::BodyError;

/// The response head of a flight.
#[derive(Debug)]
pub struct FlightHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// May waiters other than the one that started the flight be given this response? False for
    /// responses that may not be stored (private, no-store, Set-Cookie...): those are per client.
    pub shareable: bool,
}

/// Why a flight failed: the origin could not be reached or answered badly (`before_head`), or the
/// body broke off midway (`!before_head`).
#[derive(Debug, Clone)]
pub struct FlightFailure {
    pub message: String,
    pub timed_out: bool,
}

#[derive(Debug, Clone)]
pub enum FlightState {
    Pending,
    Streaming {
        head: Arc<FlightHead>,
        chunks: usize,
    },
    Done {
        head: Arc<FlightHead>,
        chunks: usize,
    },
    /// The origin confirmed (304) a stored object; this is its refreshed copy.
    Refreshed(Arc<CachedObject>),
    Failed {
        head: Option<Arc<FlightHead>>,
        failure: FlightFailure,
    },
}

pub struct Flight {
    chunks: Mutex<Vec<Bytes>>,
    state: watch::Sender<FlightState>,
}

/// What a waiter learns once the flight has a head (or has ended without one).
pub enum HeadOutcome {
    Head(Arc<FlightHead>),
    Refreshed(Arc<CachedObject>),
    Failed(FlightFailure),
}

impl Flight {
    fn new() -> Self {
        Flight { chunks: Mutex::new(Vec::new()), state: watch::channel(FlightState::Pending).0 }
    }

    fn chunks(&self) -> MutexGuard<'_, Vec<Bytes>> {
        // A poisoned lock only means another thread panicked mid-push; the Vec itself is still valid.
        self.chunks.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn publish_head(&self, head: FlightHead) -> Arc<FlightHead> {
        let head = Arc::new(head);
        self.state.send_replace(FlightState::Streaming { head: head.clone(), chunks: 0 });
        head
    }

    pub fn push_chunk(&self, chunk: Bytes) {
        let count = {
            let mut chunks = self.chunks();
            chunks.push(chunk);
            chunks.len()
        };
        self.state.send_modify(|state| {
            if let FlightState::Streaming { chunks, .. } = state {
                *chunks = count;
            }
        });
    }

    pub fn finish(&self) {
        let count = self.chunks().len();
        self.state.send_modify(|state| {
            if let FlightState::Streaming { head, .. } = state {
                *state = FlightState::Done { head: head.clone(), chunks: count };
            }
        });
    }

    pub fn refreshed(&self, object: Arc<CachedObject>) {
        self.state.send_replace(FlightState::Refreshed(object));
    }

    pub fn fail(&self, failure: FlightFailure) {
        self.state.send_modify(|state| {
            let head = match state {
                FlightState::Streaming { head, .. } => Some(head.clone()),
                _ => None,
            };
            *state = FlightState::Failed { head, failure };
        });
    }

    /// The whole body received so far, as one buffer (used when the flight is done).
    pub fn collect(&self) -> Bytes {
        let chunks = self.chunks();
        if chunks.len() == 1 {
            return chunks[0].clone();
        }
        let total = chunks.iter().map(Bytes::len).sum();
        let mut out = BytesMut::with_capacity(total);
        for chunk in chunks.iter() {
            out.extend_from_slice(chunk);
        }
        out.freeze()
    }

    /// Waits for the response head.
    pub async fn head(&self) -> HeadOutcome {
        let mut rx = self.state.subscribe();
        loop {
            let outcome = match &*rx.borrow_and_update() {
                FlightState::Pending => None,
                FlightState::Streaming { head, .. } | FlightState::Done { head, .. } => {
                    Some(HeadOutcome::Head(head.clone()))
                }
                FlightState::Refreshed(object) => Some(HeadOutcome::Refreshed(object.clone())),
                FlightState::Failed { head: Some(head), .. } => Some(HeadOutcome::Head(head.clone())),
                FlightState::Failed { head: None, failure } => Some(HeadOutcome::Failed(failure.clone())),
            };
            if let Some(outcome) = outcome {
                return outcome;
            }
            if rx.changed().await.is_err() {
                return HeadOutcome::Failed(FlightFailure { message: "fetch abandoned".into(), timed_out: false });
            }
        }
    }

    /// Waits until the body is complete; returns it whole, or the failure.
    pub async fn whole_body(&self) -> Result<Bytes, FlightFailure> {
        let mut rx = self.state.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                FlightState::Done { .. } => return Ok(self.collect()),
                FlightState::Refreshed(object) => return Ok(object.body.clone()),
                FlightState::Failed { failure, .. } => return Err(failure.clone()),
                FlightState::Pending | FlightState::Streaming { .. } => {}
            }
            if rx.changed().await.is_err() {
                return Err(FlightFailure { message: "fetch abandoned".into(), timed_out: false });
            }
        }
    }

    /// The body as a stream from its first byte, following the fetch as it progresses. Ends with an
    /// error if the origin's body broke off, so the client sees a truncated response, not a short one.
    pub fn body_stream(self: Arc<Self>) -> impl Stream<Item = Result<Bytes, BodyError>> + Send + 'static {
        let rx = self.state.subscribe();
        // `next == usize::MAX` marks a stream that has already reported its failure.
        futures::stream::unfold((self, rx, 0usize), |(flight, mut rx, next)| async move {
            if next == usize::MAX {
                return None;
            }
            loop {
                let (available, ended, failure) = match &*rx.borrow_and_update() {
                    FlightState::Streaming { chunks, .. } => (*chunks, false, None),
                    FlightState::Done { chunks, .. } => (*chunks, true, None),
                    FlightState::Failed { failure, .. } => (flight.chunks().len(), true, Some(failure.clone())),
                    FlightState::Pending | FlightState::Refreshed(_) => (0, true, None),
                };
                if next < available {
                    let chunk = flight.chunks()[next].clone();
                    return Some((Ok(chunk), (flight, rx, next + 1)));
                }
                if ended {
                    return failure.map(|f| {
                        let error: BodyError = format!("origin body broke off: {}", f.message).into();
                        (Err(error), (flight.clone(), rx, usize::MAX))
                    });
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        })
    }
}

/// Whether a caller starts the fetch or waits for one.
pub enum Joined {
    Leader(Arc<Flight>),
    Follower(Arc<Flight>),
}

/// The flights under way, by cache key.
#[derive(Default)]
pub struct Flights {
    map: Mutex<HashMap<CacheKey, Arc<Flight>>>,
}

impl Flights {
    fn map(&self) -> MutexGuard<'_, HashMap<CacheKey, Arc<Flight>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins the flight for `key`, or starts one (the caller must then run the fetch and `land` it).
    pub fn join(&self, key: &CacheKey) -> Joined {
        let mut map = self.map();
        if let Some(flight) = map.get(key) {
            return Joined::Follower(flight.clone());
        }
        let flight = Arc::new(Flight::new());
        map.insert(key.clone(), flight.clone());
        Joined::Leader(flight)
    }

    /// A flight that no one else may join (per-client requests, e.g. with Authorization).
    pub fn private() -> Arc<Flight> {
        Arc::new(Flight::new())
    }

    /// Removes the flight from the registry so that later requests start afresh (or find the cache).
    pub fn land(&self, key: &CacheKey, flight: &Arc<Flight>) {
        let mut map = self.map();
        if map.get(key).is_some_and(|current| Arc::ptr_eq(current, flight)) {
            map.remove(key);
        }
    }

    pub fn in_flight(&self) -> usize {
        self.map().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn head() -> FlightHead {
        FlightHead { status: StatusCode::OK, headers: HeaderMap::new(), shareable: true }
    }

    #[tokio::test]
    async fn one_leader_many_followers() {
        let flights = Flights::default();
        let key = CacheKey::primary("h", "/a", None, &[]);
        let leader = match flights.join(&key) {
            Joined::Leader(f) => f,
            Joined::Follower(_) => panic!("first caller must lead"),
        };
        for _ in 0..10 {
            assert!(matches!(flights.join(&key), Joined::Follower(f) if Arc::ptr_eq(&f, &leader)));
        }
        flights.land(&key, &leader);
        assert!(matches!(flights.join(&key), Joined::Leader(_)));
    }

    #[tokio::test]
    async fn followers_stream_chunks_as_they_arrive() {
        let flight = Flights::private();
        let mut early = Box::pin(flight.clone().body_stream());
        flight.publish_head(head());
        flight.push_chunk(Bytes::from_static(b"ab"));
        assert_eq!(early.next().await.expect("chunk").expect("ok"), Bytes::from_static(b"ab"));
        flight.push_chunk(Bytes::from_static(b"cd"));
        let late = flight.clone().body_stream();
        flight.finish();
        let rest: Vec<Bytes> = early.map(|c| c.expect("ok")).collect().await;
        assert_eq!(rest, vec![Bytes::from_static(b"cd")]);
        let all: Vec<Bytes> = Box::pin(late).map(|c| c.expect("ok")).collect().await;
        assert_eq!(all.concat(), b"abcd");
        assert_eq!(flight.whole_body().await.expect("done"), Bytes::from_static(b"abcd"));
    }

    #[tokio::test]
    async fn a_broken_body_ends_every_stream_with_an_error() {
        let flight = Flights::private();
        flight.publish_head(head());
        flight.push_chunk(Bytes::from_static(b"ab"));
        let stream = flight.clone().body_stream();
        flight.fail(FlightFailure { message: "reset".into(), timed_out: false });
        let items: Vec<Result<Bytes, BodyError>> = Box::pin(stream).collect().await;
        assert_eq!(items.len(), 2);
        assert!(items[0].is_ok());
        assert!(items[1].is_err());
        assert!(flight.whole_body().await.is_err());
        assert!(matches!(flight.head().await, HeadOutcome::Head(_)));
    }

    #[tokio::test]
    async fn a_failure_before_the_head_is_reported_to_waiters() {
        let flight = Flights::private();
        let waiter = {
            let flight = flight.clone();
            tokio::spawn(async move { matches!(flight.head().await, HeadOutcome::Failed(_)) })
        };
        flight.fail(FlightFailure { message: "refused".into(), timed_out: false });
        assert!(waiter.await.expect("joined"));
    }
}
