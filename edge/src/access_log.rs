//! The access log: one line per request, written when its response body is done (or dropped, when the
//! client went away), with the bytes actually sent. The line is formatted by hand (`line.rs`), in the
//! layout tracing-subscriber gives it, and only when `RUST_LOG` enables the `access` target at INFO.

pub mod line;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::Method;
use hyper::body::{Body, Frame, SizeHint};

use crate::body::{BodyError, EdgeBody};
use crate::identity::ClientId;
use crate::metrics::CacheResult;
use crate::state::{Edge, RequestId};

/// What the line says about one request, all known once its response head is ready.
pub struct Entry {
    pub method: Method,
    pub uri: http::Uri,
    pub status: u16,
    pub result: CacheResult,
    pub client: ClientId,
    /// Also in the response's X-Request-Id, so that a client's report finds this line.
    pub request_id: RequestId,
    /// What went wrong, when something did (never shown to the client).
    pub detail: Option<String>,
    pub from_cache: bool,
    pub started: Instant,
    /// Content-Length, when known: hyper stops polling a body once that many bytes are out.
    pub expected_bytes: Option<u64>,
}

/// The line and the served-bytes count of one response, written when dropped.
struct AccessLog {
    edge: Arc<Edge>,
    entry: Entry,
    bytes: u64,
    complete: bool,
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        let entry = &self.entry;
        if entry.from_cache {
            self.edge.metrics.record_bytes_from_cache(self.bytes);
        }
        // Cheap: tracing caches whether the filter enables this callsite (RUST_LOG=warn turns it off).
        if !tracing::enabled!(target: "access", tracing::Level::INFO) {
            return;
        }
        line::Line {
            method: entry.method.as_str(),
            path: entry.uri.path_and_query().map_or("", |p| p.as_str()),
            status: entry.status,
            cache: entry.result.as_str(),
            bytes: self.bytes,
            duration_ms: entry.started.elapsed().as_secs_f64() * 1000.0,
            client: entry.client.as_str(),
            complete: self.complete || entry.expected_bytes == Some(self.bytes),
            request_id: entry.request_id.as_str(),
            detail: entry.detail.as_deref(),
        }
        .log();
    }
}

/// A response body that counts what it sends and logs the request once it is finished.
pub struct LoggedBody {
    inner: EdgeBody,
    log: AccessLog,
}

impl LoggedBody {
    /// `edge` is kept for its metrics: bytes served from the cache are counted once they are sent.
    pub fn new(edge: Arc<Edge>, inner: EdgeBody, entry: Entry) -> LoggedBody {
        // A body that has nothing to send is complete before its first poll (hyper may never poll it).
        let complete = inner.is_end_stream();
        LoggedBody { inner, log: AccessLog { edge, entry, bytes: 0, complete } }
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.log.bytes += data.len() as u64;
                }
                // hyper stops polling once the body says it has ended, so note it here.
                this.log.complete = this.inner.is_end_stream();
            }
            Poll::Ready(None) => this.log.complete = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
