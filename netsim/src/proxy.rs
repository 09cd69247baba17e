//! The HTTP side: accept connections, forward GET/HEAD upstream with a pooled client, and release each
//! response body through the shared [`Link`] in small chunks on the link's schedule.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use anyhow::{Context, Result};
use bytes::Bytes;
use eddy_shared::netsim::Link;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use reqwest::Url;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::request_log::{RequestLog, RequestRecord};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = BoxBody<Bytes, BoxError>;

/// Headers that belong to one hop and are not forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

pub struct Proxy {
    client: reqwest::Client,
    upstream: Url,
    link: Link,
    log: Option<RequestLog>,
}

impl Proxy {
    pub fn new(upstream: Url, link: Link, log: Option<RequestLog>) -> Result<Proxy> {
        let client = reqwest::Client::builder()
            // The proxy passes redirects on; the player decides whether to follow them.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(std::time::Duration::from_secs(5))
            .build()
            .context("building the upstream HTTP client")?;
        Ok(Proxy { client, upstream, link, log })
    }

    fn upstream_url(&self, request_path: &str, query: Option<&str>) -> Url {
        let mut url = self.upstream.clone();
        let base = self.upstream.path().trim_end_matches('/');
        url.set_path(&format!("{base}{request_path}"));
        url.set_query(query);
        url
    }

    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Result<Response<ProxyBody>, Infallible> {
        let arrived = Instant::now();
        let start_ms = self.ms_at(arrived);
        let method = request.method().clone();
        let path = request.uri().path_and_query().map_or_else(|| "/".to_string(), |p| p.to_string());
        let record =
            |status: StatusCode, bytes: u64, first_byte_ms: u64, end_ms: u64, closed_early: bool| RequestRecord {
                method: method.to_string(),
                path: path.clone(),
                status: status.as_u16(),
                bytes,
                start_ms,
                first_byte_ms,
                end_ms,
                closed_early,
            };

        if method != Method::GET && method != Method::HEAD {
            self.link.wait_first_byte(arrived).await;
            let now = self.ms_at(Instant::now());
            self.finish(record(StatusCode::METHOD_NOT_ALLOWED, 0, now, now, false));
            let mut response = text_response(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD are forwarded\n");
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return Ok(response);
        }

        let url = self.upstream_url(request.uri().path(), request.uri().query());
        let forwarded =
            self.client.request(method.clone(), url.clone()).headers(forwardable(request.headers(), true)).send();
        // Hyper drops this future if the client hangs up before the head is sent: log that too.
        let pending = HangUpBeforeHead {
            proxy: &self,
            record: Some(RequestRecord {
                status: CLIENT_CLOSED_REQUEST,
                ..record(StatusCode::OK, 0, start_ms, start_ms, true)
            }),
        };
        // The first-byte latency runs while the upstream answers, as on a real path.
        let (upstream, ()) = tokio::join!(forwarded, self.link.wait_first_byte(arrived));
        pending.disarm();
        let first_byte_ms = self.ms_at(Instant::now());
        let upstream = match upstream {
            Ok(upstream) => upstream,
            Err(e) => {
                tracing::warn!(%url, error = %e, "upstream request failed");
                self.finish(record(StatusCode::BAD_GATEWAY, 0, first_byte_ms, first_byte_ms, false));
                return Ok(text_response(StatusCode::BAD_GATEWAY, &format!("upstream request failed: {e}\n")));
            }
        };

        let status = upstream.status();
        let mut builder = Response::builder().status(status);
        if let Some(headers) = builder.headers_mut() {
            *headers = forwardable(upstream.headers(), false);
        }
        let has_body = method != Method::HEAD
            && status != StatusCode::NO_CONTENT
            && status != StatusCode::NOT_MODIFIED
            && !status.is_informational();
        if !has_body {
            self.finish(record(status, 0, first_byte_ms, first_byte_ms, false));
            return Ok(builder.body(empty_body()).unwrap_or_else(|_| internal_error()));
        }

        // Capacity 1: the pump stays at most one chunk ahead of the connection, and notices quickly
        // when the client has gone (the receiver is dropped with the connection).
        let (sender, receiver) = mpsc::channel(1);
        let proxy = Arc::clone(&self);
        let base_record = record(status, 0, first_byte_ms, first_byte_ms, false);
        tokio::spawn(async move {
            let (bytes, closed_early) = proxy.pump(upstream, sender).await;
            let end_ms = proxy.ms_at(Instant::now());
            proxy.finish(RequestRecord { bytes, end_ms, closed_early, ..base_record });
        });
        let body = ShapedBody { receiver }.boxed();
        Ok(builder.body(body).unwrap_or_else(|_| internal_error()))
    }

    /// Moves the upstream body to the client through the link, one link-sized chunk at a time.
    /// Returns the bytes delivered and whether the body was cut short.
    async fn pump(
        &self,
        mut upstream: reqwest::Response,
        sender: mpsc::Sender<Result<Bytes, BoxError>>,
    ) -> (u64, bool) {
        let mut delivered = 0u64;
        loop {
            let mut data = match upstream.chunk().await {
                Ok(Some(data)) => data,
                Ok(None) => return (delivered, false),
                Err(e) => {
                    tracing::warn!(error = %e, "upstream body failed");
                    let _ = sender.send(Err(Box::new(e))).await;
                    return (delivered, true);
                }
            };
            while !data.is_empty() {
                let piece = data.split_to(self.link.chunk_size().min(data.len()));
                let length = piece.len();
                if !self.link.send(length).await {
                    tracing::warn!("the trace ends at 0 bit/s: the rest of the body never crosses");
                    return (delivered, true);
                }
                if sender.send(Ok(piece)).await.is_err() {
                    return (delivered, true);
                }
                delivered += length as u64;
            }
        }
    }

    fn finish(&self, record: RequestRecord) {
        record.trace();
        if let Some(log) = &self.log {
            log.write(&record);
        }
    }

    fn ms_at(&self, instant: Instant) -> u64 {
        (self.link.seconds_at(instant) * 1000.0).round() as u64
    }
}

/// Status logged for a request whose client went away before the response head (nginx's 499).
const CLIENT_CLOSED_REQUEST: u16 = 499;

/// Logs a request as abandoned when dropped armed, i.e. when hyper drops the handler because the
/// client hung up while the proxy was still waiting for the upstream or the first-byte latency.
struct HangUpBeforeHead<'a> {
    proxy: &'a Proxy,
    record: Option<RequestRecord>,
}

impl HangUpBeforeHead<'_> {
    fn disarm(mut self) {
        self.record = None;
    }
}

impl Drop for HangUpBeforeHead<'_> {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            let now = self.proxy.ms_at(Instant::now());
            self.proxy.finish(RequestRecord { first_byte_ms: now, end_ms: now, ..record });
        }
    }
}

/// Accepts connections until the listener fails for good; each connection is served on its own task.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Running out of file descriptors and the like: back off briefly, keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let proxy = Arc::clone(&proxy);
        tokio::spawn(async move {
            let service = service_fn(move |request| Arc::clone(&proxy).handle(request));
            if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// A copy of `headers` without hop-by-hop headers (and, for requests, without Host, which the client
/// sets for the upstream).
fn forwardable(headers: &HeaderMap, is_request: bool) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len());
    // Headers named in Connection are hop-by-hop too.
    let named_in_connection: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .collect();
    for (name, value) in headers {
        let hop = HOP_BY_HOP.contains(name)
            || name == header::UPGRADE
            || named_in_connection.iter().any(|n| n == name.as_str())
            || (is_request && name == header::HOST);
        if !hop {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

fn text_response(status: StatusCode, text: &str) -> Response<ProxyBody> {
    let mut response = Response::new(Full::new(Bytes::from(text.to_string())).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

fn empty_body() -> ProxyBody {
    Full::new(Bytes::new()).map_err(|never| match never {}).boxed()
}

fn internal_error() -> Response<ProxyBody> {
    text_response(StatusCode::INTERNAL_SERVER_ERROR, "the proxy could not build the response\n")
}

/// A response body fed chunk by chunk by the pump task.
struct ShapedBody {
    receiver: mpsc::Receiver<Result<Bytes, BoxError>>,
}

impl hyper::body::Body for ShapedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.receiver.poll_recv(cx).map(|item| item.map(|result| result.map(Frame::data)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("proxy"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-private"));
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert(header::RANGE, HeaderValue::from_static("bytes=0-99"));
        headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        let request = forwardable(&headers, true);
        assert_eq!(request.len(), 1);
        assert!(request.contains_key(header::RANGE));
        let response = forwardable(&headers, false);
        assert!(response.contains_key(header::HOST));
        assert!(!response.contains_key("x-private"));
    }

    #[test]
    fn upstream_paths_keep_the_base_prefix() {
        let link = Link::new(eddy_shared::netsim::Trace::constant(1e6).unwrap(), std::time::Duration::ZERO);
        let proxy = Proxy::new(Url::parse("http://127.0.0.1:9/cdn/").unwrap(), link, None).unwrap();
        assert_eq!(proxy.upstream_url("/a/b.ts", Some("x=1")).as_str(), "http://127.0.0.1:9/cdn/a/b.ts?x=1");
        let link = Link::new(eddy_shared::netsim::Trace::constant(1e6).unwrap(), std::time::Duration::ZERO);
        let proxy = Proxy::new(Url::parse("http://127.0.0.1:9").unwrap(), link, None).unwrap();
        assert_eq!(proxy.upstream_url("/live.m3u8", None).as_str(), "http://127.0.0.1:9/live.m3u8");
    }
}
