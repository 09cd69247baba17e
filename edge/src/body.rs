//! The response body type of the edge: a whole `Bytes` shared with the cache (hits, no copy), nothing,
//! or a stream (misses being fetched, pass-through). One concrete enum so the hit path needs no boxing.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use hyper::body::{Body, Frame, SizeHint};

pub type BodyError = Box<dyn std::error::Error + Send + Sync>;
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<Bytes, BodyError>> + Send>>;

pub enum EdgeBody {
    Empty,
    Full(Option<Bytes>),
    Stream(ChunkStream),
}

impl EdgeBody {
    pub fn empty() -> Self {
        EdgeBody::Empty
    }

    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        if bytes.is_empty() {
            EdgeBody::Empty
        } else {
            EdgeBody::Full(Some(bytes))
        }
    }

    pub fn stream(stream: impl Stream<Item = Result<Bytes, BodyError>> + Send + 'static) -> Self {
        EdgeBody::Stream(Box::pin(stream))
    }
}

impl Body for EdgeBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            EdgeBody::Empty => Poll::Ready(None),
            EdgeBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            EdgeBody::Stream(stream) => stream.as_mut().poll_next(cx).map(|item| item.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            EdgeBody::Empty => true,
            EdgeBody::Full(bytes) => bytes.is_none(),
            EdgeBody::Stream(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            EdgeBody::Empty => SizeHint::with_exact(0),
            EdgeBody::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            EdgeBody::Full(None) => SizeHint::with_exact(0),
            EdgeBody::Stream(_) => SizeHint::default(),
        }
    }
}
