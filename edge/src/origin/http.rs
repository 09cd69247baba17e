//! An HTTP(S) origin, reached over one pooled keep-alive client shared by all origins.
//!
//! Two defenses live here:
//! - **Closing connections.** Origins close idle keep-alive connections (Node.js after 5 s, many load
//!   balancers likewise). A request written on a connection the origin is closing at that moment fails
//!   with "connection closed before message completed" (hyper issue #2136). The pool keeps idle
//!   connections for less than that (`origin.idle_timeout`), and an idempotent request (RFC 9110
//!   §9.2.2) that meets a closing connection is sent once more, on a new connection, before it counts
//!   as a failure.
//! - **Paths.** A request path must pass the shared check (`super::path::check`), and the URL it turns
//!   into must still be on this origin, under its base path, after the URL parser has resolved it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use super::{path, OriginError, OriginRequest, OriginResponse};
use crate::config::OriginConfig;

/// The clients every HTTP origin shares.
#[derive(Clone)]
pub struct HttpClients {
    /// Pooled keep-alive connections: where every request goes first.
    pooled: reqwest::Client,
    /// Keeps no idle connection, so each request opens a new one: the one retry after a pooled
    /// connection closed under a request cannot land on another dying idle connection.
    fresh: reqwest::Client,
    /// Requests sent again after the origin closed a connection under them.
    retries: Arc<AtomicU64>,
}

impl HttpClients {
    pub fn new(config: &OriginConfig) -> Result<Self, OriginError> {
        Ok(HttpClients {
            pooled: build_client(config, config.max_idle_connections)?,
            fresh: build_client(config, 0)?,
            retries: Arc::new(AtomicU64::new(0)),
        })
    }

    /// How many requests were sent a second time, on a new connection, after the origin closed a
    /// connection before answering.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }
}

fn build_client(config: &OriginConfig, max_idle: usize) -> Result<reqwest::Client, OriginError> {
    let mut builder = reqwest::Client::builder();
    if let Some(ca_file) = &config.ca_file {
        // A private CA's roots, trusted besides the system's (the config checked the file at load).
        let pem = std::fs::read(ca_file).map_err(|e| OriginError::Invalid {
            origin: "origin.ca_file".into(),
            reason: format!("{}: {e}", ca_file.display()),
        })?;
        for certificate in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| OriginError::Invalid {
            origin: "origin.ca_file".into(),
            reason: format!("{}: {e}", ca_file.display()),
        })? {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder
        .connect_timeout(config.connect_timeout.0)
        // With 0, hyper-util's pool is disabled: every request gets a connection of its own.
        .pool_max_idle_per_host(max_idle)
        .pool_idle_timeout(config.idle_timeout.0)
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .map_err(|e| OriginError::Invalid { origin: "http client".into(), reason: e.to_string() })
}

pub struct HttpOrigin {
    name: String,
    /// The origin URL; request paths are appended to its path.
    base: url::Url,
    /// The base URL's path without a trailing slash (empty for the root).
    base_path: String,
    clients: HttpClients,
    connect_timeout: Duration,
    first_byte_timeout: Duration,
}

/// How one attempt to get a response head failed.
enum AttemptError {
    /// The connection closed or was reset before a response head came: the case of a keep-alive
    /// connection the origin closed while the request was on its way.
    Closed(reqwest::Error),
    /// Anything else, already in its final form.
    Other(OriginError),
}

impl HttpOrigin {
    pub fn new(spec: &str, clients: HttpClients, config: &OriginConfig) -> Result<Self, OriginError> {
        let base =
            url::Url::parse(spec).map_err(|e| OriginError::Invalid { origin: spec.into(), reason: e.to_string() })?;
        if base.query().is_some() || base.fragment().is_some() {
            return Err(OriginError::Invalid {
                origin: spec.into(),
                reason: "an origin URL takes no query or fragment".into(),
            });
        }
        if base.cannot_be_a_base() || base.host().is_none() {
            return Err(OriginError::Invalid { origin: spec.into(), reason: "an origin URL needs a host".into() });
        }
        let base_path = base.path().trim_end_matches('/').to_string();
        Ok(HttpOrigin {
            name: spec.to_string(),
            base,
            base_path,
            clients,
            connect_timeout: config.connect_timeout.0,
            first_byte_timeout: config.first_byte_timeout.0,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL a request path and query go to, or `Refused` when the path could leave this origin's
    /// base path. Callers are expected to have refused such paths already; this is the last check
    /// before a request leaves the edge.
    fn url_for(&self, path_and_query: &str) -> Result<url::Url, OriginError> {
        let refused = |reason: &str| OriginError::Refused { origin: self.name.clone(), reason: reason.to_string() };
        // Without a leading slash, the text would run into the base (`/public` + `x` = `/publicx`), or
        // into the authority when the base has no path (`@other.host/`).
        if !path_and_query.starts_with('/') {
            return Err(refused("request path does not start with /"));
        }
        let path = path_and_query.split('?').next().unwrap_or_default();
        path::check(path).map_err(|refusal| refused(refusal.reason()))?;
        let mut joined = self.base.as_str().trim_end_matches('/').to_string();
        joined.push_str(path_and_query);
        let url = url::Url::parse(&joined).map_err(|e| refused(&format!("not a valid URL path: {e}")))?;
        // The parser resolves dot segments and drops tabs and newlines (WHATWG URL Standard), so the
        // result is judged again after parsing, against what the origin will actually be asked.
        let same_server = url.scheme() == self.base.scheme()
            && url.host_str() == self.base.host_str()
            && url.port_or_known_default() == self.base.port_or_known_default();
        let under_base = self.base_path.is_empty()
            || url.path().strip_prefix(&self.base_path).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
        if !same_server || !under_base {
            return Err(refused("request path leaves the origin's base path"));
        }
        Ok(url)
    }

    pub async fn send(&self, request: &OriginRequest) -> Result<OriginResponse, OriginError> {
        let url = self.url_for(&request.path_and_query)?;
        // One deadline for the first attempt and the retry: the edge promises a response head (or an
        // error) within first_byte_timeout, however many connections that takes. A blocking playlist
        // reload brings a longer one of its own (the origin holds it on purpose).
        let first_byte_timeout = request.first_byte_timeout.unwrap_or(self.first_byte_timeout);
        let deadline = (Instant::now() + first_byte_timeout, first_byte_timeout);
        let response = match self.attempt(&self.clients.pooled, &url, request, deadline).await {
            Ok(response) => response,
            Err(AttemptError::Closed(error)) if request.method.is_idempotent() => {
                self.clients.retries.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    origin = %self.name,
                    method = %request.method,
                    error = %error_chain(&error),
                    "origin closed the connection before answering; retrying once on a new connection"
                );
                match self.attempt(&self.clients.fresh, &url, request, deadline).await {
                    Ok(response) => response,
                    Err(AttemptError::Closed(error)) => return Err(self.failed(&error)),
                    Err(AttemptError::Other(error)) => return Err(error),
                }
            }
            // RFC 9110 §9.2.2: a non-idempotent request that may have reached the origin is not sent
            // again automatically.
            Err(AttemptError::Closed(error)) => return Err(self.failed(&error)),
            Err(AttemptError::Other(error)) => return Err(error),
        };
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes_stream().map(|chunk| chunk.map_err(|e| OriginError::Body(error_chain(&e)))).boxed();
        Ok(OriginResponse { status, headers, body, origin: self.name.clone() })
    }

    async fn attempt(
        &self,
        client: &reqwest::Client,
        url: &url::Url,
        request: &OriginRequest,
        (deadline, first_byte_timeout): (Instant, Duration),
    ) -> Result<reqwest::Response, AttemptError> {
        let mut builder = client.request(request.method.clone(), url.clone()).headers(request.headers.clone());
        if !request.body.is_empty() {
            builder = builder.body(request.body.clone());
        }
        let timeout =
            || OriginError::Timeout { origin: self.name.clone(), after: first_byte_timeout, connecting: false };
        match tokio::time::timeout_at(deadline, builder.send()).await {
            Err(_) => Err(AttemptError::Other(timeout())),
            Ok(Ok(response)) => Ok(response),
            // Connect errors first: a connect timeout, or a reset during the TCP or TLS handshake, sent
            // nothing, and is not a closing keep-alive connection either.
            Ok(Err(error)) if error.is_connect() && error.is_timeout() => {
                Err(AttemptError::Other(OriginError::Timeout {
                    origin: self.name.clone(),
                    after: self.connect_timeout,
                    connecting: true,
                }))
            }
            Ok(Err(error)) if error.is_connect() => Err(AttemptError::Other(OriginError::Unreachable {
                origin: self.name.clone(),
                reason: error_chain(&error),
            })),
            Ok(Err(error)) if error.is_timeout() => Err(AttemptError::Other(timeout())),
            Ok(Err(error)) if closed_before_response(&error) => Err(AttemptError::Closed(error)),
            Ok(Err(error)) => Err(AttemptError::Other(self.failed(&error))),
        }
    }

    fn failed(&self, error: &reqwest::Error) -> OriginError {
        OriginError::Failed { origin: self.name.clone(), reason: error_chain(error) }
    }
}

/// Whether a request error means the connection went away before a response head arrived: EOF
/// (hyper's `is_incomplete_message`, hyper issue #2136), a request hyper canceled because its
/// connection closed, or a reset or broken pipe while writing or reading. Timeouts and connect errors
/// are sorted out before this is asked.
fn closed_before_response(error: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if let Some(hyper_error) = cause.downcast_ref::<hyper::Error>() {
            if hyper_error.is_incomplete_message() || hyper_error.is_canceled() {
                return true;
            }
        }
        if let Some(io_error) = cause.downcast_ref::<std::io::Error>() {
            if matches!(
                io_error.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionAborted
            ) {
                return true;
            }
        }
        source = cause.source();
    }
    false
}

/// The error and its causes on one line (reqwest's top-level message alone says little).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use bytes::Bytes;
    use http::{HeaderMap, Method, StatusCode};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    fn origin(spec: &str, config: &OriginConfig) -> HttpOrigin {
        HttpOrigin::new(spec, HttpClients::new(config).expect("clients"), config).expect("origin")
    }

    fn request(method: Method, path: &str) -> OriginRequest {
        OriginRequest {
            method,
            path_and_query: path.into(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            first_byte_timeout: None,
        }
    }

    #[test]
    fn paths_that_leave_the_base_path_are_refused() {
        let public = origin("http://127.0.0.1:9000/public", &OriginConfig::default());
        for path in [
            "/../secret.txt",
            "/%2e%2e/secret.txt",
            "/%2E%2e/secret.txt",
            "/a/%2e%2E/../secret.txt",
            "/..%2fsecret.txt",
            "/a%00.ts",
            // Passes the segment check, but the URL parser drops the tab and resolves the `..` it
            // leaves: only the check of the parsed URL sees this one.
            "/.\t./secret.txt",
            // Without a leading slash the text would join the base's last segment or its authority.
            "x/secret.txt",
            "@evil.example/secret.txt",
        ] {
            match public.url_for(path) {
                Err(OriginError::Refused { .. }) => {}
                other => panic!("{path:?} was not refused: {other:?}"),
            }
        }
    }

    #[test]
    fn ordinary_paths_go_under_the_base_path() {
        let public = origin("http://127.0.0.1:9000/public/", &OriginConfig::default());
        let url = public.url_for("/v1/seg_00001.ts?token=a/../b").expect("url");
        assert_eq!(url.as_str(), "http://127.0.0.1:9000/public/v1/seg_00001.ts?token=a/../b");
        assert_eq!(public.url_for("/").expect("url").as_str(), "http://127.0.0.1:9000/public/");
        let root = origin("http://127.0.0.1:9000", &OriginConfig::default());
        assert_eq!(root.url_for("//a.ts").expect("url").as_str(), "http://127.0.0.1:9000//a.ts");
        assert_eq!(root.url_for("/.well-known/x").expect("url").as_str(), "http://127.0.0.1:9000/.well-known/x");
    }

    #[tokio::test]
    async fn a_refused_path_never_reaches_the_origin() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}/public", listener.local_addr().expect("addr"));
        let public = origin(&base, &OriginConfig::default());
        let error = public.send(&request(Method::GET, "/%2e%2e/secret.txt")).await.err().expect("refused");
        assert!(matches!(error, OriginError::Refused { .. }), "{error}");
        assert!(error.to_string().contains("dot segment"), "the error says what was wrong: {error}");
        let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(accepted.is_err(), "no connection was made to the origin");
    }

    /// What a test origin does with the Nth request it reads, counting over all connections.
    #[derive(Clone, Copy)]
    enum Answer {
        /// 200 with a keep-alive connection.
        Ok,
        /// Close the connection without answering (the origin's idle timer fired as the request came).
        Close,
        /// Read the request and never answer.
        Silent,
    }

    /// A keep-alive HTTP/1.1 origin on a raw socket that follows `script` (the last entry repeats).
    /// Returns its URL and the count of requests it read.
    async fn scripted(script: Vec<Answer>) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, script.clone(), seen.clone()));
            }
        });
        (url, count)
    }

    async fn serve(mut stream: TcpStream, script: Vec<Answer>, count: Arc<AtomicUsize>) {
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            while !buffer.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                }
            }
            // The tests send no request bodies, so the head is the whole request.
            buffer.clear();
            let n = count.fetch_add(1, Ordering::SeqCst);
            match script[n.min(script.len() - 1)] {
                Answer::Ok => {
                    let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok";
                    if stream.write_all(reply).await.is_err() {
                        return;
                    }
                }
                Answer::Close => return,
                Answer::Silent => {
                    let _ = stream.read(&mut chunk).await;
                    return;
                }
            }
        }
    }

    async fn body_of(response: OriginResponse) -> Vec<u8> {
        let chunks: Vec<Bytes> = response.body.map(|c| c.expect("body")).collect().await;
        chunks.concat()
    }

    #[tokio::test]
    async fn a_get_on_a_connection_the_origin_closes_is_retried_once_on_a_new_connection() {
        let (url, count) = scripted(vec![Answer::Ok, Answer::Close, Answer::Ok]).await;
        let origin = origin(&url, &OriginConfig::default());
        let first = origin.send(&request(Method::GET, "/a.ts")).await.expect("first");
        assert_eq!(body_of(first).await, b"ok");
        let second = origin.send(&request(Method::GET, "/b.ts")).await.expect("retried");
        assert_eq!(second.status, StatusCode::OK);
        assert_eq!(body_of(second).await, b"ok");
        assert_eq!(count.load(Ordering::SeqCst), 3, "the closed request was sent once more");
        assert_eq!(origin.clients.retries(), 1);
    }

    #[tokio::test]
    async fn the_retry_is_made_once_only() {
        let (url, count) = scripted(vec![Answer::Ok, Answer::Close]).await;
        let origin = origin(&url, &OriginConfig::default());
        body_of(origin.send(&request(Method::GET, "/a.ts")).await.expect("first")).await;
        let error = origin.send(&request(Method::GET, "/b.ts")).await.err().expect("fails");
        assert!(matches!(error, OriginError::Failed { .. }), "{error}");
        assert_eq!(count.load(Ordering::SeqCst), 3, "one request, one retry");
    }

    #[tokio::test]
    async fn a_post_on_a_connection_the_origin_closes_is_not_sent_again() {
        let (url, count) = scripted(vec![Answer::Ok, Answer::Close, Answer::Ok]).await;
        let origin = origin(&url, &OriginConfig::default());
        body_of(origin.send(&request(Method::GET, "/a.ts")).await.expect("first")).await;
        let error = origin.send(&request(Method::POST, "/form")).await.err().expect("fails");
        assert!(matches!(error, OriginError::Failed { .. }), "{error}");
        assert!(!error.nothing_sent(), "the POST may have reached the origin");
        assert_eq!(count.load(Ordering::SeqCst), 2, "the POST was sent once");
        assert_eq!(origin.clients.retries(), 0);
    }

    #[tokio::test]
    async fn a_timeout_is_not_retried() {
        let (url, count) = scripted(vec![Answer::Silent]).await;
        let config = OriginConfig {
            first_byte_timeout: crate::config::HumanDuration(Duration::from_millis(300)),
            ..OriginConfig::default()
        };
        let origin = origin(&url, &config);
        let error = origin.send(&request(Method::GET, "/a.ts")).await.err().expect("times out");
        assert!(error.is_timeout(), "{error}");
        assert!(!error.nothing_sent());
        assert_eq!(count.load(Ordering::SeqCst), 1);
        assert_eq!(origin.clients.retries(), 0);
    }

    /// A blocking playlist reload brings its own first-byte timeout: the origin's own does not cut it,
    /// and its own still ends the wait.
    #[tokio::test]
    async fn a_request_may_bring_its_own_first_byte_timeout() {
        let (url, count) = scripted(vec![Answer::Silent]).await;
        let config = OriginConfig {
            first_byte_timeout: crate::config::HumanDuration(Duration::from_millis(100)),
            ..OriginConfig::default()
        };
        let origin = origin(&url, &config);
        let mut held = request(Method::GET, "/index.m3u8?_HLS_msn=9");
        held.first_byte_timeout = Some(Duration::from_millis(600));
        let started = Instant::now();
        let error = origin.send(&held).await.err().expect("times out");
        assert!(started.elapsed() >= Duration::from_millis(600), "cut at {:?}", started.elapsed());
        match error {
            OriginError::Timeout { after, connecting: false, .. } => assert_eq!(after, Duration::from_millis(600)),
            other => panic!("{other}"),
        }
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connect_error_sent_nothing_and_is_not_retried_here() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", dead.local_addr().expect("addr"));
        drop(dead);
        let origin = origin(&url, &OriginConfig::default());
        let error = origin.send(&request(Method::POST, "/form")).await.err().expect("refused");
        assert!(matches!(error, OriginError::Unreachable { .. }), "{error}");
        assert!(error.nothing_sent());
        assert_eq!(origin.clients.retries(), 0);
    }
}
