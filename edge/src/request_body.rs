//! Reading a client's request body into memory with limits, so that a client can neither send more
//! than the edge will buffer nor hold a request open by trickling its body.
//!
//! Two clocks bound a body: the client may pause at most `idle` between bytes, and after the first
//! `idle` it must keep up an average of [`MIN_BODY_RATE`] bytes per second. The pause rule alone would
//! let one byte every `idle - ε` hold a 16 MiB body open for weeks; the rate rule is Apache
//! mod_reqtimeout's `MinRate` (its documented default is 500 bytes/s).

use std::fmt;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use thiserror::Error;
use tokio::time::Instant;

/// The slowest average a body may arrive at once its first `idle` period is over, in bytes per second.
pub const MIN_BODY_RATE: u64 = 500;

/// Buffer reserved up front at most, whatever Content-Length the client announced.
const MAX_PREALLOCATION: usize = 64 * 1024;

/// Why a request body could not be read.
#[derive(Debug, Error)]
pub enum RequestBodyError {
    /// The body is (or says it is) larger than the edge buffers.
    #[error("request body too large: more than {limit} bytes")]
    TooLarge { limit: usize },
    /// The client stopped sending, or sends too slowly.
    #[error("request body {stall} after {received} bytes in {elapsed:?}")]
    Stalled { received: usize, elapsed: Duration, stall: Stall },
    /// The body ended badly: a connection closed mid-body, malformed chunked encoding.
    #[error("could not read the request body: {0}")]
    Broken(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Which of the two clocks ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stall {
    /// No byte arrived within the pause allowed between bytes.
    Paused(Duration),
    /// Bytes arrive, but slower than [`MIN_BODY_RATE`] on average.
    TooSlow,
}

impl fmt::Display for Stall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stall::Paused(idle) => write!(f, "stalled: no byte within {idle:?}"),
            Stall::TooSlow => write!(f, "too slow: under {MIN_BODY_RATE} bytes/s"),
        }
    }
}

impl RequestBodyError {
    /// The status the client gets: 413 (RFC 9110 §15.5.14), 408 (§15.5.9) or 400.
    pub fn status(&self) -> StatusCode {
        match self {
            RequestBodyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            RequestBodyError::Stalled { .. } => StatusCode::REQUEST_TIMEOUT,
            RequestBodyError::Broken(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// Reads a whole request body of at most `max_bytes`, pausing at most `idle` between bytes (see the
/// module docs for the rate rule). Trailers are dropped.
pub async fn read_to_bytes(body: Incoming, max_bytes: usize, idle: Duration) -> Result<Bytes, RequestBodyError> {
    read_body(body, max_bytes, idle).await
}

/// [`read_to_bytes`] for any body, so that it can be tested without a connection.
pub async fn read_body<B>(mut body: B, max_bytes: usize, idle: Duration) -> Result<Bytes, RequestBodyError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // A Content-Length over the limit is refused before reading a byte.
    if body.size_hint().lower() > max_bytes as u64 {
        return Err(RequestBodyError::TooLarge { limit: max_bytes });
    }
    let started = Instant::now();
    let mut first: Option<Bytes> = None;
    let mut buffer = BytesMut::new();
    let mut received: usize = 0;
    loop {
        let now = Instant::now();
        // The rate rule: `idle` of grace, then one second per MIN_BODY_RATE bytes received.
        let earned = Duration::from_millis((received as u64).saturating_mul(1000) / MIN_BODY_RATE);
        let rate_deadline = started + idle.saturating_add(earned);
        let pause_deadline = now + idle;
        let (deadline, stall) = if rate_deadline < pause_deadline {
            (rate_deadline, Stall::TooSlow)
        } else {
            (pause_deadline, Stall::Paused(idle))
        };
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(RequestBodyError::Stalled { received, elapsed: started.elapsed(), stall }),
            Ok(None) => break,
            Ok(Some(Err(error))) => return Err(RequestBodyError::Broken(error.into())),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        if data.is_empty() {
            continue;
        }
        received = received.saturating_add(data.len());
        if received > max_bytes {
            return Err(RequestBodyError::TooLarge { limit: max_bytes });
        }
        // Most bodies arrive in one frame: keep it as it is, and copy only when a second one comes.
        match first.take() {
            None if buffer.is_empty() => first = Some(data),
            None => buffer.extend_from_slice(&data),
            Some(previous) => {
                let hint = usize::try_from(body.size_hint().lower()).unwrap_or(usize::MAX);
                buffer.reserve(hint.min(MAX_PREALLOCATION).max(previous.len() + data.len()));
                buffer.extend_from_slice(&previous);
                buffer.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| buffer.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;
    use http_body_util::{Full, StreamBody};
    use hyper::body::Frame;
    use std::convert::Infallible;

    type Chunk = Result<Frame<Bytes>, Infallible>;

    /// A body whose chunks come from a channel, so a test decides when (and whether) bytes arrive.
    fn channel_body() -> (tokio::sync::mpsc::Sender<Chunk>, StreamBody<impl futures::Stream<Item = Chunk> + Unpin>) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(16);
        let stream = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|chunk| (chunk, rx)) });
        (tx, StreamBody::new(Box::pin(stream)))
    }

    fn data(bytes: &'static [u8]) -> Chunk {
        Ok(Frame::data(Bytes::from_static(bytes)))
    }

    #[tokio::test]
    async fn a_whole_body_is_returned_as_sent() {
        let body = Full::new(Bytes::from_static(b"hello"));
        assert_eq!(read_body(body, 16, Duration::from_secs(1)).await.expect("body"), "hello");
    }

    #[tokio::test]
    async fn chunks_are_joined_in_order() {
        let (tx, body) = channel_body();
        for chunk in [&b"ab"[..], b"cd", b"ef"] {
            tx.send(data(chunk)).await.expect("send");
        }
        drop(tx);
        assert_eq!(read_body(body, 16, Duration::from_secs(1)).await.expect("body"), "abcdef");
    }

    #[tokio::test]
    async fn a_content_length_over_the_limit_is_refused_before_reading() {
        let body = Full::new(Bytes::from(vec![0u8; 17]));
        let error = read_body(body, 16, Duration::from_secs(1)).await.expect_err("too large");
        assert!(matches!(error, RequestBodyError::TooLarge { limit: 16 }), "{error}");
        assert_eq!(error.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn chunks_over_the_limit_are_refused() {
        let (tx, body) = channel_body();
        tx.send(data(b"0123456789")).await.expect("send");
        tx.send(data(b"0123456789")).await.expect("send");
        let error = read_body(body, 16, Duration::from_secs(1)).await.expect_err("too large");
        assert!(matches!(error, RequestBodyError::TooLarge { .. }), "{error}");
    }

    #[tokio::test]
    async fn a_pause_longer_than_idle_is_a_stall() {
        let (tx, body) = channel_body();
        tx.send(data(b"abc")).await.expect("send");
        // The sender stays alive and sends nothing more.
        let error = read_body(body, 1024, Duration::from_millis(100)).await.expect_err("stalled");
        assert!(matches!(error, RequestBodyError::Stalled { received: 3, stall: Stall::Paused(_), .. }), "{error}");
        assert_eq!(error.status(), StatusCode::REQUEST_TIMEOUT);
        drop(tx);
    }

    #[tokio::test]
    async fn a_trickle_within_the_pause_but_under_the_rate_is_too_slow() {
        let (tx, body) = channel_body();
        // One byte every 20 ms never pauses 200 ms, but averages 50 bytes/s, under MIN_BODY_RATE.
        let trickle = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            for _ in 0..500 {
                tick.tick().await;
                if tx.send(data(b"x")).await.is_err() {
                    return;
                }
            }
        });
        let error = read_body(body, 1 << 20, Duration::from_millis(200)).await.expect_err("too slow");
        assert!(matches!(error, RequestBodyError::Stalled { stall: Stall::TooSlow, .. }), "{error}");
        trickle.abort();
    }

    #[tokio::test]
    async fn a_broken_body_is_reported() {
        let body = StreamBody::new(stream::iter(vec![Err::<Frame<Bytes>, std::io::Error>(std::io::Error::other(
            "connection reset",
        ))]));
        let error = read_body(body, 16, Duration::from_secs(1)).await.expect_err("broken");
        assert!(matches!(error, RequestBodyError::Broken(_)), "{error}");
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
    }
}
