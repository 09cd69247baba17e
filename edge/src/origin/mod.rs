//! Origins: where misses are fetched from. Several origins, HTTP(S) or directories, in failover order;
//! an origin that fails (cannot connect, times out, answers 5xx) is skipped for a back-off period.
//!
//! Failover re-sends a request, so it is for idempotent methods only (RFC 9110 §9.2.2). A POST or
//! PATCH that may have reached an origin is never sent again: its 5xx, timeout or broken connection is
//! the answer. Only a request that certainly left nothing behind (the connection could not be made)
//! goes on to the next origin, whatever its method.

pub mod dir;
pub mod http;
pub mod path;
mod playlist_watch;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ::http::{HeaderMap, Method, StatusCode};
use bytes::Bytes;
use futures::stream::BoxStream;
use thiserror::Error;

use crate::config::OriginConfig;

#[derive(Debug, Error)]
pub enum OriginError {
    /// No connection could be made: the request was never sent.
    #[error("origin {origin} unreachable: {reason}")]
    Unreachable { origin: String, reason: String },
    /// The request was (or may have been) sent and no response head came back: the connection was
    /// closed or reset, or the answer was not HTTP.
    #[error("origin {origin} failed: {reason}")]
    Failed { origin: String, reason: String },
    /// `connecting`: the time ran out while connecting, before anything was sent.
    #[error("origin {origin} did not answer within {after:?}")]
    Timeout { origin: String, after: Duration, connecting: bool },
    #[error("origin body broke off: {0}")]
    Body(String),
    #[error("invalid origin {origin}: {reason}")]
    Invalid { origin: String, reason: String },
    /// The edge would not send the request: its path could leave the origin's root or base path.
    #[error("request for origin {origin} refused: {reason}")]
    Refused { origin: String, reason: String },
    #[error("no origin configured")]
    NoOrigin,
}

impl OriginError {
    pub fn is_timeout(&self) -> bool {
        matches!(self, OriginError::Timeout { .. })
    }

    /// Whether the request certainly never reached the origin, so that any method may be sent to
    /// another one.
    pub fn nothing_sent(&self) -> bool {
        matches!(
            self,
            OriginError::Unreachable { .. }
                | OriginError::Timeout { connecting: true, .. }
                | OriginError::Refused { .. }
        )
    }
}

/// What the edge asks an origin for.
#[derive(Debug, Clone)]
pub struct OriginRequest {
    pub method: Method,
    /// Path and query, starting with `/`.
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// How long an HTTP origin may take to send the response head, when not its own
    /// `origin.first_byte_timeout`: a blocking playlist reload, which the origin holds on purpose
    /// (`origin.blocking_reload_timeout`).
    pub first_byte_timeout: Option<Duration>,
}

pub type OriginBody = BoxStream<'static, Result<Bytes, OriginError>>;

pub struct OriginResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: OriginBody,
    /// The origin's name (URL or directory), for logs.
    pub origin: String,
}

pub enum Origin {
    Http(http::HttpOrigin),
    Dir(dir::DirOrigin),
}

impl Origin {
    pub fn name(&self) -> &str {
        match self {
            Origin::Http(o) => o.name(),
            Origin::Dir(o) => o.name(),
        }
    }

    async fn send(&self, request: &OriginRequest) -> Result<OriginResponse, OriginError> {
        match self {
            Origin::Http(o) => o.send(request).await,
            Origin::Dir(o) => o.send(request).await,
        }
    }
}

/// The configured origins, tried in order, with a back-off for those that failed.
pub struct OriginSet {
    origins: Vec<Origin>,
    /// Per origin: milliseconds since `epoch` until which it is skipped (0: healthy).
    down_until_ms: Vec<AtomicU64>,
    epoch: Instant,
    backoff: Duration,
    total_timeout: Duration,
    clients: http::HttpClients,
}

impl OriginSet {
    pub fn new(specs: &[String], config: &OriginConfig) -> Result<OriginSet, OriginError> {
        if specs.is_empty() {
            return Err(OriginError::NoOrigin);
        }
        let clients = http::HttpClients::new(config)?;
        let origins = specs
            .iter()
            .map(|spec| {
                if spec.starts_with("http://") || spec.starts_with("https://") {
                    http::HttpOrigin::new(spec, clients.clone(), config).map(Origin::Http)
                } else {
                    dir::DirOrigin::new(spec, config.serve_dotfiles).map(Origin::Dir)
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let down_until_ms = origins.iter().map(|_| AtomicU64::new(0)).collect();
        Ok(OriginSet {
            origins,
            down_until_ms,
            epoch: Instant::now(),
            backoff: config.failure_backoff.0,
            total_timeout: config.total_timeout.0,
            clients,
        })
    }

    /// Requests sent a second time, on a new connection, after an HTTP origin closed a keep-alive
    /// connection before answering them.
    pub fn retried_requests(&self) -> u64 {
        self.clients.retries()
    }

    /// Over the directory origins: playlist files watched now for held blocking reloads, and the looks
    /// at them since start (bounded by the files, not by the holds: see `playlist_watch`).
    pub fn playlist_watch(&self) -> (u64, u64) {
        self.origins
            .iter()
            .filter_map(|origin| match origin {
                Origin::Dir(dir) => Some(dir.playlist_watch()),
                Origin::Http(_) => None,
            })
            .fold((0, 0), |(live, polls), (l, p)| (live.saturating_add(l), polls.saturating_add(p)))
    }

    /// The longest a whole body may take to arrive.
    pub fn total_timeout(&self) -> Duration {
        self.total_timeout
    }

    pub fn names(&self) -> Vec<String> {
        self.origins.iter().map(|o| o.name().to_string()).collect()
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Sends the request to the first healthy origin. Idempotent requests fail over to the next origin
    /// on connection errors, timeouts and 5xx; other methods only when nothing was sent (see the module
    /// comment). Origins in back-off are tried last, in order, rather than not at all.
    pub async fn send(&self, request: &OriginRequest) -> Result<OriginResponse, OriginError> {
        let now = self.now_ms();
        let (healthy, resting): (Vec<usize>, Vec<usize>) =
            (0..self.origins.len()).partition(|&i| self.down_until_ms[i].load(Ordering::Relaxed) <= now);
        let order: Vec<usize> = healthy.into_iter().chain(resting).collect();
        let may_resend = request.method.is_idempotent();
        let mut last_error = None;
        for (attempt, &i) in order.iter().enumerate() {
            let is_last = attempt + 1 == order.len();
            match self.origins[i].send(request).await {
                Ok(response) if response.status.is_server_error() => {
                    self.mark_down(i);
                    if is_last || !may_resend {
                        return Ok(response);
                    }
                    tracing::warn!(origin = self.origins[i].name(), status = %response.status, "origin failed; trying the next");
                }
                Ok(response) => {
                    self.down_until_ms[i].store(0, Ordering::Relaxed);
                    return Ok(response);
                }
                // A refused path says nothing about the origin's health, and every origin would refuse
                // it: no back-off (a client could otherwise rest every origin), no failover.
                Err(error @ OriginError::Refused { .. }) => return Err(error),
                Err(error) => {
                    tracing::warn!(origin = self.origins[i].name(), %error, "origin failed");
                    self.mark_down(i);
                    if !may_resend && !error.nothing_sent() {
                        return Err(error);
                    }
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.unwrap_or(OriginError::NoOrigin))
    }

    /// Is origin `index` (in configured order) being skipped after a failure?
    pub fn is_resting(&self, index: usize) -> bool {
        self.down_until_ms.get(index).is_some_and(|until| until.load(Ordering::Relaxed) > self.now_ms())
    }

    fn mark_down(&self, index: usize) {
        let backoff_ms = u64::try_from(self.backoff.as_millis()).unwrap_or(u64::MAX);
        let until = self.now_ms().saturating_add(backoff_ms);
        self.down_until_ms[index].store(until.max(1), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wiremock::matchers::any;
    use wiremock::{Mock, MockServer, ResponseTemplate};

    fn request(method: Method, path: &str) -> OriginRequest {
        OriginRequest {
            method,
            path_and_query: path.into(),
            headers: HeaderMap::new(),
            body: Bytes::from("x=1"),
            first_byte_timeout: None,
        }
    }

    async fn answering(status: u16) -> MockServer {
        let server = MockServer::start().await;
        Mock::given(any()).respond_with(ResponseTemplate::new(status)).mount(&server).await;
        server
    }

    async fn hits(server: &MockServer) -> usize {
        server.received_requests().await.map(|r| r.len()).unwrap_or(0)
    }

    fn dead_url() -> String {
        let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", dead.local_addr().expect("addr"));
        drop(dead);
        url
    }

    #[tokio::test]
    async fn a_post_answered_with_500_is_not_sent_to_the_next_origin() {
        let (first, second) = (answering(500).await, answering(500).await);
        let set = OriginSet::new(&[first.uri(), second.uri()], &OriginConfig::default()).expect("origins");
        for method in [Method::POST, Method::PATCH] {
            let response = set.send(&request(method.clone(), "/form")).await.expect("the 500 is the answer");
            assert_eq!(response.status, StatusCode::INTERNAL_SERVER_ERROR, "{method}");
        }
        assert_eq!(hits(&first).await + hits(&second).await, 2, "each request reached one origin once");
    }

    #[tokio::test]
    async fn idempotent_requests_still_fail_over_on_500() {
        let (first, second) = (answering(500).await, answering(200).await);
        let set = OriginSet::new(&[first.uri(), second.uri()], &OriginConfig::default()).expect("origins");
        for method in [Method::GET, Method::PUT, Method::DELETE] {
            let response = set.send(&request(method.clone(), "/a")).await.expect("answer");
            assert_eq!(response.status, StatusCode::OK, "{method} went on to the healthy origin");
        }
        assert!(set.is_resting(0));
    }

    #[tokio::test]
    async fn a_post_fails_over_when_nothing_was_sent() {
        let second = answering(200).await;
        let set = OriginSet::new(&[dead_url(), second.uri()], &OriginConfig::default()).expect("origins");
        let response = set.send(&request(Method::POST, "/form")).await.expect("second origin answers");
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(hits(&second).await, 1);
    }

    #[tokio::test]
    async fn a_post_that_timed_out_is_not_sent_to_the_next_origin() {
        let slow = MockServer::start().await;
        Mock::given(any())
            .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(2)))
            .mount(&slow)
            .await;
        let second = answering(200).await;
        let config = OriginConfig {
            first_byte_timeout: crate::config::HumanDuration(Duration::from_millis(200)),
            ..OriginConfig::default()
        };
        let set = OriginSet::new(&[slow.uri(), second.uri()], &config).expect("origins");
        let error = set.send(&request(Method::POST, "/form")).await.err().expect("the timeout is the answer");
        assert!(error.is_timeout(), "{error}");
        assert_eq!(hits(&second).await, 0, "the POST was not sent again");
        let response = set.send(&request(Method::GET, "/a")).await.expect("a GET fails over");
        assert_eq!(response.status, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_refused_path_rests_no_origin() {
        let (first, second) = (answering(200).await, answering(200).await);
        let set = OriginSet::new(&[first.uri(), second.uri()], &OriginConfig::default()).expect("origins");
        let error = set.send(&request(Method::GET, "/%2e%2e/secret.txt")).await.err().expect("refused");
        assert!(matches!(error, OriginError::Refused { .. }), "{error}");
        assert!(!set.is_resting(0) && !set.is_resting(1));
        assert_eq!(hits(&first).await + hits(&second).await, 0);
    }

    #[tokio::test]
    async fn a_failed_origin_rests_while_the_next_one_serves() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let dead_url = format!("http://{}", dead.local_addr().expect("addr"));
        drop(dead);
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.ts"), "a").expect("write");
        let set =
            OriginSet::new(&[dead_url, dir.path().display().to_string()], &OriginConfig::default()).expect("origins");
        let request = OriginRequest {
            method: Method::GET,
            path_and_query: "/a.ts".into(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            first_byte_timeout: None,
        };
        assert!(!set.is_resting(0));
        let response = set.send(&request).await.expect("second origin answers");
        assert_eq!(response.status, StatusCode::OK);
        assert!(set.is_resting(0), "the dead origin is skipped for its back-off period");
        assert!(!set.is_resting(1));
    }
}
