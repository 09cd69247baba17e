//! The listeners: the public one (HTTP/1.1 and HTTP/2 via hyper-util's auto builder) and the admin one,
//! with graceful shutdown: on SIGTERM/SIGINT stop accepting, let in-flight responses finish within the
//! grace period, then return.
//!
//! The public listener also protects the edge from its clients:
//! - **`max_connections`**: a connection holds a semaphore permit for its whole life (released when its
//!   task ends, whatever the path). Over the limit, the edge answers a fixed 503 with
//!   `Connection: close` itself and closes (see [`refuse`]); a flood of refusals holds a bounded
//!   number of sockets and tasks.
//! - **`header_read_timeout`** and **`keepalive_timeout`**: each connection's [`ConnState`] knows whether
//!   a request is in flight, and a watchdog in the connection task closes it when a head takes too long
//!   (slowloris) or when it has been idle too long. hyper's own `header_read_timeout` is not used: its
//!   clock starts when a connection goes idle, so it would also close every idle keep-alive connection
//!   after `header_read_timeout`, and `keepalive_timeout` could never be longer.
//! - **`send_timeout`**: the same watchdog closes a connection whose socket has taken none of the bytes
//!   the edge has for it for that long (a client that stops reading). Without it such a client holds
//!   its slot, and any flight it reads from, for ever, and `max_connections` of them lock out everyone.
//!   [`WatchedIo`] notes when a write stays pending and clears it on any write that goes through, so a
//!   slow reader that keeps taking bytes is never cut. Past the deadline the socket itself is asked
//!   once more before the close (see [`WriteNow`]): the runtime only hears that a full socket has room
//!   again once a third of its send buffer is free, which a slow reader can take minutes to drain. The
//!   first probe of a client that reads nothing still finds the kernel's last few KiB of slack, so it
//!   is closed between one and two `send_timeout`s into its stall. It watches the socket, so it covers
//!   HTTP/1.1 and HTTP/2 alike.
//! - **`body_read_timeout`** is applied where bodies are read (`request_body.rs`).
//!
//! The TLS listener (`listen_tls`, see `tls.rs`) serves the same request path with the same protections:
//! its connections share the `max_connections` permits and the watchdog (which watches the TCP socket
//! under TLS, so `send_timeout` sees ciphertext the client does not take). The TLS handshake counts as
//! part of the first request head: handshake and head together must arrive within
//! `header_read_timeout` of accept, so a client that never finishes its ClientHello frees its slot like
//! a slowloris head. Over the limit, a TLS connection is closed at once, without a handshake: a 503
//! would cost a handshake per refusal, which is what a flood would want. ALPN decides the protocol (RFC
//! 7301, RFC 9113 §3.3): `h2` gets HTTP/2 only, anything else HTTP/1.1 only.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::Request;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::phases;
use crate::state::Edge;
use crate::tls;

/// Largest request head accepted; larger gets 431 from hyper (RFC 6585 §5).
const MAX_REQUEST_HEAD: usize = 64 * 1024;
/// Most header fields in one HTTP/1.1 head; more gets 431 from hyper (hyper's default, made explicit).
const MAX_REQUEST_HEADERS: usize = 100;
/// HTTP/2 streams one client may have open at once. RFC 9113 §6.5.2 recommends no fewer than 100, so
/// that parallelism is not limited; a player needs a handful.
const H2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// HTTP/2 PING sent after this long without a frame from the client, to find dead peers while
/// streams are open (RFC 9113 §6.7)...
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);
/// ...and the connection is closed if the PING is not acknowledged within this long.
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// Refused connections answered with care at once (see [`refuse`]); the rest get the 503 and a close
/// at once.
const MAX_CAREFUL_REFUSALS: usize = 16;
/// A refused connection answered with care waits this long for the client's request, and then this
/// long again, at most, for the client to close after the 503.
const REFUSAL_WAIT: Duration = Duration::from_secs(1);
/// Bytes of a refused client's request read (and dropped), at most.
const REFUSAL_READ: usize = 64 * 1024;
/// A connection closed for being idle gets this long to finish its close (an HTTP/2 GOAWAY).
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Pause after a failed accept that is not about one connection (out of file descriptors, memory), so
/// that the loop does not spin while the condition lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// File descriptors the edge needs besides client connections (listeners, origin pools, runtime, logs).
const RESERVED_FDS: usize = 256;

/// Binds both listeners. The caller prints the ready line (`ready_line`) once they are bound.
pub async fn bind(edge: &Edge) -> anyhow::Result<(TcpListener, TcpListener)> {
    let public = TcpListener::bind(edge.config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", edge.config.listen))?;
    let admin = TcpListener::bind(edge.config.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {} (admin)", edge.config.admin_listen))?;
    Ok((public, admin))
}

/// The viewers' TLS listener, bound, and the configuration of its handshakes.
pub struct TlsListener {
    pub listener: TcpListener,
    pub config: Arc<rustls::ServerConfig>,
}

/// Binds `listen_tls` when it is set. The caller prints its own ready line (`tls_ready_line`).
pub async fn bind_tls(edge: &Edge, certs: Arc<tls::CertStore>) -> anyhow::Result<Option<TlsListener>> {
    let Some(address) = edge.config.listen_tls else { return Ok(None) };
    let listener = TcpListener::bind(address).await.with_context(|| format!("cannot listen on {address} (tls)"))?;
    let config = tls::server_config(certs).context("building the TLS configuration")?;
    Ok(Some(TlsListener { listener, config }))
}

/// What every public connection (plain or TLS) is served with.
struct Public {
    edge: Arc<Edge>,
    /// Plain connections: HTTP/1.1, or HTTP/2 with prior knowledge (h2c), told apart by the preface.
    auto: auto::Builder<TokioExecutor>,
    /// TLS connections whose ALPN chose `h2`...
    h2_only: auto::Builder<TokioExecutor>,
    /// ...and the others (`http/1.1`, or no ALPN at all).
    h1_only: auto::Builder<TokioExecutor>,
    timeouts: Timeouts,
    connections: Arc<Semaphore>,
    careful_refusals: Arc<Semaphore>,
    refusal: Bytes,
    stopping: CancellationToken,
}

impl Public {
    /// Takes a connection from either listener: gives it a slot under `max_connections` (or refuses it)
    /// and serves it on a task of its own.
    fn accept(self: &Arc<Self>, stream: TcpStream, peer: SocketAddr, tls: Option<&tokio_rustls::TlsAcceptor>) {
        let Ok(permit) = self.connections.clone().try_acquire_owned() else {
            self.edge.metrics.record_refused_connection();
            match tls {
                None => refuse(stream, peer, &self.refusal, &self.careful_refusals),
                // Closed without a handshake (see the module docs).
                Some(_) => tracing::debug!(%peer, "refusing a TLS connection: max_connections are open"),
            }
            return;
        };
        let slot = ConnectionSlot::new(permit, self.edge.clone());
        let _ = stream.set_nodelay(true);
        let state = Arc::new(ConnState::new());
        let io = WatchedIo { inner: stream, state: state.clone() };
        let public = self.clone();
        let tls = tls.cloned();
        tokio::spawn(async move {
            // The slot lives as long as this task: it is released however the connection ends.
            let _slot = slot;
            let Some(acceptor) = tls else {
                public.serve(TokioIo::new(io), &public.auto, state, peer, false).await;
                return;
            };
            // The head clock runs from accept, through the handshake (see the module docs).
            let deadline = state.opened + public.timeouts.header_read;
            let handshake = tokio::select! {
                handshake = tokio::time::timeout_at(deadline, acceptor.accept(io)) => handshake,
                () = public.stopping.cancelled() => return,
            };
            let stream = match handshake {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    public.edge.metrics.record_tls_handshake_failure(false);
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    public.edge.metrics.record_tls_handshake_failure(true);
                    tracing::debug!(%peer, "closing a connection: no TLS handshake within header_read_timeout");
                    return;
                }
            };
            let builder = match stream.get_ref().1.alpn_protocol() {
                Some(tls::ALPN_H2) => &public.h2_only,
                _ => &public.h1_only,
            };
            public.serve(TokioIo::new(stream), builder, state, peer, true).await;
        });
    }

    /// Serves HTTP on an accepted (and, for TLS, handshaken) connection until it ends.
    async fn serve<I>(
        &self,
        io: TokioIo<I>,
        builder: &auto::Builder<TokioExecutor>,
        state: Arc<ConnState>,
        peer: SocketAddr,
        over_tls: bool,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let service_edge = self.edge.clone();
        let service_state = state.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let request_guard = service_state.begin_request(request.version());
            let edge = service_edge.clone();
            async move {
                let handling = phases::handle(edge, request, peer);
                let response =
                    if over_tls { phases::origin_request::over_tls(handling).await? } else { handling.await? };
                Ok::<_, Infallible>(response.map(|body| GuardedBody { inner: body, _request: request_guard }))
            }
        });
        let connection = builder.serve_connection(io, service);
        serve_connection(connection, |c| c.graceful_shutdown(), state, self.timeouts, self.stopping.clone(), peer)
            .await;
    }
}

pub async fn run(
    edge: Arc<Edge>,
    public: TcpListener,
    admin: TcpListener,
    tls: Option<TlsListener>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_buf_size(MAX_REQUEST_HEAD)
        .max_headers(MAX_REQUEST_HEADERS)
        .timer(TokioTimer::new())
        // The connection watchdog enforces header_read_timeout instead (see the module docs).
        .header_read_timeout(None)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_REQUEST_HEAD as u32)
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    let timeouts = Timeouts {
        header_read: edge.config.header_read_timeout.0,
        idle: edge.config.keepalive_timeout.0,
        send: edge.config.send_timeout.0,
    };
    // tokio's semaphore holds at most MAX_PERMITS, and waiting for all of them takes a u32.
    let max_connections = edge.config.max_connections.min(Semaphore::MAX_PERMITS).min(u32::MAX as usize);
    warn_if_fd_limit_is_low(max_connections);
    let connections = Arc::new(Semaphore::new(max_connections));
    let stopping = CancellationToken::new();
    let serving = Arc::new(Public {
        edge: edge.clone(),
        h2_only: builder.clone().http2_only(),
        h1_only: builder.clone().http1_only(),
        auto: builder,
        timeouts,
        connections: connections.clone(),
        careful_refusals: Arc::new(Semaphore::new(MAX_CAREFUL_REFUSALS)),
        refusal: Bytes::from(over_capacity_response()),
        stopping: stopping.clone(),
    });
    let (tls_listener, tls_acceptor) = match tls {
        Some(TlsListener { listener, config }) => (Some(listener), Some(tokio_rustls::TlsAcceptor::from(config))),
        None => (None, None),
    };
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = public.accept() => {
                if let Some((stream, peer)) = accepted_or_back_off(accepted).await {
                    serving.accept(stream, peer, None);
                }
            }
            accepted = accept_some(tls_listener.as_ref()) => {
                if let Some((stream, peer)) = accepted_or_back_off(accepted).await {
                    serving.accept(stream, peer, tls_acceptor.as_ref());
                }
            }
            accepted = admin.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let edge = edge.clone();
                let service = service_fn(move |request| crate::admin::handle(edge.clone(), request));
                let connection = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    let _ = connection.await;
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(public);
    drop(tls_listener);
    drop(admin);
    let grace = edge.config.shutdown_grace.0;
    tracing::info!(?grace, "shutting down: no new connections; waiting for in-flight responses");
    stopping.cancel();
    // Every public connection holds a permit until its task ends: all permits back means all are done.
    let all_public_closed = connections.acquire_many(max_connections as u32);
    if tokio::time::timeout(grace, async { tokio::join!(graceful.shutdown(), all_public_closed) }).await.is_err() {
        tracing::warn!("grace period over; closing remaining connections");
    }
    Ok(())
}

/// The connection an accept gave, or `None` after a failed accept (which waits a little first when the
/// failure is not about one connection: out of file descriptors and the like; the connections already
/// open are still served).
async fn accepted_or_back_off(accepted: io::Result<(TcpStream, SocketAddr)>) -> Option<(TcpStream, SocketAddr)> {
    match accepted {
        Ok(pair) => Some(pair),
        Err(error) => {
            tracing::warn!(%error, "accept failed");
            if !is_connection_error(&error) {
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
            None
        }
    }
}

/// Accepts on `listener`, or never when there is none.
async fn accept_some(listener: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Drives one public connection until it ends, the watchdog closes it, or the edge shuts down.
/// `graceful_shutdown` is the connection's own (hyper's connections share no trait for it).
async fn serve_connection<C, E>(
    connection: C,
    graceful_shutdown: fn(Pin<&mut C>),
    state: Arc<ConnState>,
    timeouts: Timeouts,
    stopping: CancellationToken,
    peer: SocketAddr,
) where
    C: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(connection);
    let mut stopping_seen = false;
    // Set once the watchdog has asked the connection to close: it then has IDLE_CLOSE_GRACE to finish.
    let mut close_by: Option<Instant> = None;
    loop {
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(error) = ended {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
                return;
            }
            // Still watched while shutting down, so that a half-sent head cannot hold the shutdown.
            expiry = state.expired(timeouts), if close_by.is_none() => match expiry {
                Expiry::Head => {
                    // Nothing to answer yet; any side may close at any time (RFC 9112 §9.5).
                    tracing::debug!(%peer, "closing a connection: no whole request head within header_read_timeout");
                    return;
                }
                Expiry::Send(stalled_since) => {
                    // Ask the socket itself before giving up: poll the connection once while probing, so
                    // that hyper retries its writes and WatchedIo takes them past the runtime's readiness
                    // gate. Any byte taken since the stall began shows up as room.
                    state.start_write_probe();
                    let polled = std::future::poll_fn(|cx| Poll::Ready(connection.as_mut().poll(cx))).await;
                    let probe_took_bytes = state.finish_write_probe();
                    if let Poll::Ready(ended) = polled {
                        if let Err(error) = ended {
                            tracing::debug!(%peer, %error, "connection ended with an error");
                        }
                        return;
                    }
                    // (A write may also have gone through the ordinary way meanwhile.)
                    if probe_took_bytes || state.write_pending_since() != Some(stalled_since) {
                        // The client took bytes: the clock starts again from the next stall.
                        tracing::trace!(%peer, probe_took_bytes, "send_timeout: the client took bytes meanwhile");
                        continue;
                    }
                    // The client takes no bytes: a graceful close (a GOAWAY, the rest of a response)
                    // would have to be written to it too, so the socket is dropped at once. Dropping the
                    // connection drops its response bodies, which release their flights.
                    tracing::debug!(%peer, "closing a connection: the client took no bytes for send_timeout");
                    return;
                }
                Expiry::Idle => {
                    tracing::debug!(%peer, "closing a connection idle for keepalive_timeout");
                    // No request is in flight: for HTTP/1.1 this closes at once, HTTP/2 sends GOAWAY.
                    graceful_shutdown(connection.as_mut());
                    close_by = Some(Instant::now() + IDLE_CLOSE_GRACE);
                }
            },
            () = stopping.cancelled(), if !stopping_seen => {
                graceful_shutdown(connection.as_mut());
                stopping_seen = true;
            }
            () = sleep_until_some(close_by) => return,
        }
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Answers a connection over `max_connections` with a fixed 503 (`Connection: close`) and closes it.
///
/// With care, while at most [`MAX_CAREFUL_REFUSALS`] are in progress:
/// - The 503 is written once the client's request head is in (or after [`REFUSAL_WAIT`]): HTTP
///   clients read a response only after sending their request, and hyper's client fails a connection
///   on a response that comes first (`UnexpectedMessage`).
/// - If the client sent anything, the close lingers (RFC 9112 §9.6): closing a socket with unread
///   bytes makes the kernel send a reset, which can destroy the 503 before the client reads it. So the
///   write side is shut and the client's bytes are read and dropped until it closes, at most
///   [`REFUSAL_WAIT`] and [`REFUSAL_READ`].
///
/// Beyond that (a flood), the 503 goes out in one non-blocking write, which a new socket's empty send
/// buffer takes whole, and the socket is closed at once. Either way a flood holds a bounded number of
/// sockets, and costs no more than one short task per careful refusal.
fn refuse(stream: TcpStream, peer: SocketAddr, response: &Bytes, careful: &Arc<Semaphore>) {
    tracing::debug!(%peer, "refusing a connection: max_connections are open");
    match careful.clone().try_acquire_owned() {
        Ok(slot) => {
            let response = response.clone();
            tokio::spawn(async move {
                refuse_with_care(stream, &response).await;
                drop(slot);
            });
        }
        Err(_) => {
            let _ = stream.try_write(response);
        }
    }
}

async fn refuse_with_care(mut stream: TcpStream, response: &[u8]) {
    let mut read = 0usize;
    let _ = tokio::time::timeout(REFUSAL_WAIT, read_until_head_end(&mut stream, &mut read)).await;
    if !matches!(tokio::time::timeout(REFUSAL_WAIT, stream.write_all(response)).await, Ok(Ok(()))) {
        return;
    }
    if read == 0 {
        // Nothing unread: a plain close cannot turn into a reset.
        return;
    }
    if stream.shutdown().await.is_ok() {
        let _ = tokio::time::timeout(REFUSAL_WAIT, read_to_close(&mut stream, &mut read)).await;
    }
}

/// Reads (and drops) until the end of a request head, the client's close, or [`REFUSAL_READ`] bytes.
async fn read_until_head_end(stream: &mut TcpStream, read: &mut usize) {
    let mut buffer = [0u8; 4096];
    // The last three bytes of the previous read, so that a `\r\n\r\n` split across reads is found.
    let mut tail: Vec<u8> = Vec::with_capacity(buffer.len() + 3);
    while *read < REFUSAL_READ {
        let n = match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        *read = read.saturating_add(n);
        tail.extend_from_slice(&buffer[..n]);
        if tail.windows(4).any(|w| w == b"\r\n\r\n") {
            return;
        }
        let keep = tail.len().saturating_sub(3);
        tail.drain(..keep);
    }
}

/// Reads (and drops) until the client closes, or [`REFUSAL_READ`] bytes in all.
async fn read_to_close(stream: &mut TcpStream, read: &mut usize) {
    let mut buffer = [0u8; 4096];
    while *read < REFUSAL_READ {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => *read = read.saturating_add(n),
        }
    }
}

/// The whole 503 a refused connection gets.
fn over_capacity_response() -> Vec<u8> {
    let body = "over capacity: too many open connections, try again\n";
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Retry-After: 1\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Errors about one connection (it was reset before we accepted it) rather than about the listener or
/// the process, after which accepting again at once is right.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused
    )
}

/// Warns when the process may run out of file descriptors before `max_connections`: connections would
/// then fail in `accept` instead of getting a 503.
fn warn_if_fd_limit_is_low(max_connections: usize) {
    let Some(limit) = open_files_limit() else { return };
    let needed = max_connections.saturating_add(MAX_CAREFUL_REFUSALS).saturating_add(RESERVED_FDS);
    if (limit as usize) < needed {
        tracing::warn!(
            limit,
            max_connections,
            "the open-file limit is below max_connections + {}; raise it (ulimit -n, systemd LimitNOFILE=) \
             or lower max_connections",
            needed - max_connections
        );
    }
}

/// The soft RLIMIT_NOFILE of this process, from /proc (Linux); `None` when unknown or unlimited.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files").split_whitespace().next()?.parse().ok()
}

/// A connection's place under `max_connections`: the permit goes back, and the gauge goes down, when it
/// is dropped.
struct ConnectionSlot {
    _permit: OwnedSemaphorePermit,
    edge: Arc<Edge>,
}

impl ConnectionSlot {
    fn new(permit: OwnedSemaphorePermit, edge: Arc<Edge>) -> Self {
        edge.metrics.record_connection(true);
        ConnectionSlot { _permit: permit, edge }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.edge.metrics.record_connection(false);
    }
}

#[derive(Debug, Clone, Copy)]
struct Timeouts {
    /// The whole head must arrive within this, from accept or from its first byte.
    header_read: Duration,
    /// A connection with no request in flight is closed after this.
    idle: Duration,
    /// A connection whose socket has taken none of the bytes written to it for this long is closed.
    send: Duration,
}

/// Which clock ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// A request head did not arrive whole in time.
    Head,
    /// No request for `keepalive_timeout`.
    Idle,
    /// The socket took none of the bytes written to it for `send_timeout`, since the stall that began at
    /// this time (milliseconds after the connection opened).
    Send(u64),
}

/// What a connection's watchdog needs to know: whether a request is in flight, since when it is idle,
/// and since when the client has taken none of the bytes written to it. Atomics, not a lock: HTTP/2
/// streams end on other tasks, and the hit path takes no lock of ours. Times are milliseconds since
/// `opened`.
struct ConnState {
    opened: Instant,
    /// Requests whose response is not finished (HTTP/2 may have many).
    in_flight: AtomicU32,
    /// Whether a first request has arrived; until then the head clock runs from accept.
    any_request: AtomicBool,
    http2: AtomicBool,
    /// When the last response finished.
    idle_since_ms: AtomicU64,
    /// When the first byte of the next HTTP/1.1 head arrived while idle, plus one; 0 for none.
    head_started_ms: AtomicU64,
    /// When a write to the client found its socket full, plus one; 0 once a write goes through (or
    /// before any write waits). Not tied to requests: the last bytes of a response may still wait in
    /// hyper's buffer after its body (and its request guard) is done.
    write_pending_since_ms: AtomicU64,
    /// A probe of the socket past a send deadline (see [`WriteNow`]): `PROBING` while the watchdog polls
    /// the connection for it, plus `PROBE_TOOK_BYTES` once a write went through.
    probe_write: AtomicU8,
    /// Wakes the watchdog when the deadline may have changed.
    changed: Notify,
}

const PROBING: u8 = 1;
const PROBE_TOOK_BYTES: u8 = 2;

/// A [`ConnState`] read at one moment: what [`deadline_after_open`] decides from.
#[derive(Debug, Clone, Copy, Default)]
struct Snapshot {
    in_flight: bool,
    any_request: bool,
    http2: bool,
    idle_since_ms: u64,
    head_started_ms: Option<u64>,
    write_pending_since_ms: Option<u64>,
}

/// When a connection must be closed, as a time since it opened, and why; `None` when no clock runs (a
/// request is in flight and its bytes are being taken). Pure, so that it is tested without sockets or
/// clocks.
fn deadline_after_open(state: Snapshot, timeouts: Timeouts) -> Option<(Duration, Expiry)> {
    let ms = Duration::from_millis;
    // A client that takes no bytes is cut whatever else is going on: in flight, idle or in a next head.
    let send = state.write_pending_since_ms.map(|since| (ms(since).saturating_add(timeouts.send), Expiry::Send(since)));
    let request = if state.in_flight {
        None
    } else if !state.any_request {
        Some((timeouts.header_read, Expiry::Head))
    } else {
        match state.head_started_ms {
            Some(started) if !state.http2 => Some((ms(started).saturating_add(timeouts.header_read), Expiry::Head)),
            _ => Some((ms(state.idle_since_ms).saturating_add(timeouts.idle), Expiry::Idle)),
        }
    };
    match (send, request) {
        (Some(send), Some(request)) => Some(if send.0 <= request.0 { send } else { request }),
        (send, request) => send.or(request),
    }
}

impl ConnState {
    fn new() -> Self {
        ConnState {
            opened: Instant::now(),
            in_flight: AtomicU32::new(0),
            any_request: AtomicBool::new(false),
            http2: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(0),
            head_started_ms: AtomicU64::new(0),
            write_pending_since_ms: AtomicU64::new(0),
            probe_write: AtomicU8::new(0),
            changed: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Called when hyper hands a request to the service: its head is whole.
    fn begin_request(self: &Arc<Self>, version: http::Version) -> RequestGuard {
        if version == http::Version::HTTP_2 && !self.http2.load(Ordering::Relaxed) {
            self.http2.store(true, Ordering::Relaxed);
        }
        if !self.any_request.load(Ordering::Relaxed) {
            self.any_request.store(true, Ordering::Relaxed);
        }
        self.head_started_ms.store(0, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        RequestGuard { state: self.clone() }
    }

    /// Called when bytes were read from the client.
    fn on_read(&self) {
        // Only the start of a next HTTP/1.1 head matters. (HTTP/2 frames while idle are mostly PINGs and
        // settings: the idle clock alone bounds them, as a stream only opens with a whole HEADERS block.)
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.any_request.load(Ordering::Relaxed)
            && !self.http2.load(Ordering::Relaxed)
            && self.head_started_ms.load(Ordering::Relaxed) == 0
        {
            self.head_started_ms.store(self.now_ms().saturating_add(1), Ordering::Relaxed);
            self.changed.notify_one();
        }
    }

    /// Called when a write to the client could not go through: its socket buffer is full.
    fn on_write_pending(&self) {
        // Only the start of a stall counts (and reads the clock): hyper polls again on every wake-up.
        if self.write_pending_since_ms.load(Ordering::Relaxed) == 0 {
            self.write_pending_since_ms.store(self.now_ms().saturating_add(1), Ordering::Relaxed);
            // The watchdog may be waiting with no deadline (a request in flight): give it one.
            self.changed.notify_one();
        }
    }

    /// Called when a write to the client went through: it is taking bytes. On the hit path, so one
    /// relaxed load when nothing was waiting. No wake-up: the send deadline only moves later, and the
    /// watchdog looks again when the old one comes.
    fn on_write_progress(&self) {
        if self.write_pending_since_ms.load(Ordering::Relaxed) != 0 {
            self.write_pending_since_ms.store(0, Ordering::Relaxed);
        }
    }

    /// When the current write stall began (milliseconds after opening); `None` when there is none.
    fn write_pending_since(&self) -> Option<u64> {
        self.write_pending_since_ms.load(Ordering::Relaxed).checked_sub(1)
    }

    /// Starts a probe: until [`Self::finish_write_probe`], every write the runtime holds back is tried
    /// on the socket directly.
    fn start_write_probe(&self) {
        self.probe_write.store(PROBING, Ordering::Relaxed);
    }

    /// Whether a probe is going on. One relaxed load, on writes the runtime held back only.
    fn probing(&self) -> bool {
        self.probe_write.load(Ordering::Relaxed) & PROBING != 0
    }

    fn probe_took_bytes(&self) {
        self.probe_write.fetch_or(PROBE_TOOK_BYTES, Ordering::Relaxed);
    }

    /// Ends a probe: whether any of its writes went through.
    fn finish_write_probe(&self) -> bool {
        self.probe_write.swap(0, Ordering::Relaxed) & PROBE_TOOK_BYTES != 0
    }

    fn snapshot(&self) -> Snapshot {
        let plus_one = |value: u64| value.checked_sub(1);
        Snapshot {
            in_flight: self.in_flight.load(Ordering::Acquire) > 0,
            any_request: self.any_request.load(Ordering::Relaxed),
            http2: self.http2.load(Ordering::Relaxed),
            idle_since_ms: self.idle_since_ms.load(Ordering::Acquire),
            head_started_ms: plus_one(self.head_started_ms.load(Ordering::Relaxed)),
            write_pending_since_ms: self.write_pending_since(),
        }
    }

    /// When the connection must be closed, and why; `None` while a request is in flight and the client
    /// takes its bytes.
    fn deadline(&self, timeouts: Timeouts) -> Option<(Instant, Expiry)> {
        deadline_after_open(self.snapshot(), timeouts).map(|(after, expiry)| (self.opened + after, expiry))
    }

    /// Resolves once a deadline has passed.
    async fn expired(&self, timeouts: Timeouts) -> Expiry {
        loop {
            match self.deadline(timeouts) {
                None => self.changed.notified().await,
                Some((deadline, expiry)) => {
                    if deadline <= Instant::now() {
                        return expiry;
                    }
                    // A change (a response finished, a head started, a write stalled) may move the
                    // deadline: look again.
                    tokio::select! {
                        () = tokio::time::sleep_until(deadline) => {}
                        () = self.changed.notified() => {}
                    }
                }
            }
        }
    }
}

/// One request in flight on a connection; dropped with the response body (or with the service future,
/// when the connection goes away first).
struct RequestGuard {
    state: Arc<ConnState>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        // Set before the count drops, so that the watchdog never sees idle with an old time.
        self.state.idle_since_ms.store(self.state.now_ms(), Ordering::Release);
        if self.state.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.state.changed.notify_one();
        }
    }
}

/// A response body that keeps its request counted as in flight until hyper is done with it.
struct GuardedBody<B> {
    inner: B,
    _request: RequestGuard,
}

impl<B: Body + Unpin> Body for GuardedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A socket that can be written past the runtime's readiness gate.
///
/// tokio tries a socket again only after the kernel reports it writable, and Linux reports a full TCP
/// socket writable only once a third of its send buffer is free (`sk_stream_is_writeable`). The send
/// buffer grows up to `net.ipv4.tcp_wmem` (4 MiB by default) on a fast link, so a client that slows
/// down to 100 kbit/s could see no write for a minute or more while it reads steadily. A write on the
/// socket itself goes through as soon as any room is free, that is as soon as the client took any byte.
trait WriteNow {
    /// One non-blocking write that ignores readiness: `WouldBlock` when the socket has no room.
    fn write_now(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize>;
}

impl WriteNow for TcpStream {
    fn write_now(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        use std::io::Write as _;
        use std::os::fd::AsFd as _;
        // A second descriptor of the same socket, closed right after. It shares the socket's
        // non-blocking flag, and it costs a descriptor only for this one write, once per send_timeout
        // of a stalled connection. The runtime's registration stays on the first descriptor.
        let Ok(descriptor) = self.as_fd().try_clone_to_owned() else {
            // Out of descriptors: nothing is known about the client, so the stall stands.
            return Err(io::ErrorKind::WouldBlock.into());
        };
        (&std::net::TcpStream::from(descriptor)).write_vectored(bufs)
    }
}

/// The client socket, telling its [`ConnState`] when bytes arrive and whether the client takes the
/// bytes written to it. Generic over the socket so that tests can drive it without one.
struct WatchedIo<S> {
    inner: S,
    state: Arc<ConnState>,
}

impl<S: WriteNow> WatchedIo<S> {
    /// Notes what a write said about the client and, when the runtime held it back during a probe,
    /// tries the socket directly.
    fn after_write(&self, polled: Poll<io::Result<usize>>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let polled = match polled {
            // Every write of the probe, until the socket refuses one: Linux takes up to a segment
            // (64 KiB) past a full buffer into the room left in its last packet. Were that slack used
            // up one write per probe, a client that reads nothing would pass a probe per HTTP/2 frame
            // (measured: four, at 16 KiB each). In one go, it buys such a client one more send_timeout.
            Poll::Pending if self.state.probing() => match self.inner.write_now(bufs) {
                Ok(written) => {
                    if written > 0 {
                        self.state.probe_took_bytes();
                    }
                    Poll::Ready(Ok(written))
                }
                // No room: the stall stands, and the runtime holds the waker of the write it refused.
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
                Err(error) => Poll::Ready(Err(error)),
            },
            polled => polled,
        };
        match &polled {
            Poll::Pending => self.state.on_write_pending(),
            Poll::Ready(Ok(written)) if *written > 0 => self.state.on_write_progress(),
            // An error ends the connection anyway, and an empty write says nothing about the client.
            Poll::Ready(_) => {}
        }
        polled
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WatchedIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.state.on_read();
        }
        polled
    }
}

impl<S: AsyncWrite + WriteNow + Unpin> AsyncWrite for WatchedIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.after_write(polled, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.after_write(polled, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    // A TCP socket's flush and shutdown never wait for the client: only writes tell whether it reads.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

pub fn ready_line(public: SocketAddr, admin: SocketAddr) -> String {
    format!("eddy-edge listening on {public} admin on {admin}")
}

/// The TLS listener's line, printed just before [`ready_line`] (which stays the last line printed at
/// start, so that whoever waits for it finds every listener bound).
pub fn tls_ready_line(tls: SocketAddr) -> String {
    format!("eddy-edge listening (tls) on {tls}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUTS: Timeouts =
        Timeouts { header_read: Duration::from_secs(2), idle: Duration::from_secs(10), send: Duration::from_secs(5) };

    #[test]
    fn the_refusal_is_a_whole_http_response_that_closes() {
        let response = String::from_utf8(over_capacity_response()).expect("ascii");
        let (head, body) = response.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains("\r\nConnection: close"));
        assert!(head.contains(&format!("\r\nContent-Length: {}", body.len())));
    }

    #[tokio::test]
    async fn before_any_request_the_head_clock_runs_from_accept() {
        let state = ConnState::new();
        let (deadline, expiry) = state.deadline(TIMEOUTS).expect("a deadline");
        assert_eq!(expiry, Expiry::Head);
        assert_eq!(deadline, state.opened + TIMEOUTS.header_read);
    }

    #[tokio::test]
    async fn no_deadline_while_a_request_is_in_flight_then_the_idle_clock() {
        let state = Arc::new(ConnState::new());
        let guard = state.begin_request(http::Version::HTTP_11);
        state.on_read(); // body bytes of the request in flight start no head clock
        assert!(state.deadline(TIMEOUTS).is_none());
        drop(guard);
        let (_, expiry) = state.deadline(TIMEOUTS).expect("a deadline");
        assert_eq!(expiry, Expiry::Idle);
        // The first byte of the next head switches to the head clock.
        state.on_read();
        assert_eq!(state.deadline(TIMEOUTS).expect("a deadline").1, Expiry::Head);
        let next = state.begin_request(http::Version::HTTP_11);
        assert!(state.deadline(TIMEOUTS).is_none());
        drop(next);
        assert_eq!(state.deadline(TIMEOUTS).expect("a deadline").1, Expiry::Idle);
    }

    #[tokio::test]
    async fn http2_frames_while_idle_do_not_start_the_head_clock() {
        let state = Arc::new(ConnState::new());
        drop(state.begin_request(http::Version::HTTP_2));
        state.on_read();
        assert_eq!(state.deadline(TIMEOUTS).expect("a deadline").1, Expiry::Idle);
    }

    #[tokio::test]
    async fn several_streams_keep_the_connection_busy_until_the_last_ends() {
        let state = Arc::new(ConnState::new());
        let first = state.begin_request(http::Version::HTTP_2);
        let second = state.begin_request(http::Version::HTTP_2);
        drop(first);
        assert!(state.deadline(TIMEOUTS).is_none());
        drop(second);
        assert!(state.deadline(TIMEOUTS).is_some());
    }

    const SECOND: u64 = 1000;

    fn after(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn a_stalled_write_gives_a_send_deadline_even_while_a_request_is_in_flight() {
        let busy = Snapshot { in_flight: true, any_request: true, ..Snapshot::default() };
        assert_eq!(deadline_after_open(busy, TIMEOUTS), None, "a request in flight whose bytes are taken");
        let stalled = Snapshot { write_pending_since_ms: Some(3 * SECOND), ..busy };
        assert_eq!(
            deadline_after_open(stalled, TIMEOUTS),
            Some((after(3 * SECOND) + TIMEOUTS.send, Expiry::Send(3000)))
        );
    }

    #[test]
    fn the_earliest_of_the_send_and_the_idle_or_head_clocks_wins() {
        // The last bytes of a response can wait in hyper's buffer after its request is done.
        let idle = Snapshot { any_request: true, idle_since_ms: 2 * SECOND, ..Snapshot::default() };
        let idle_at = after(2 * SECOND) + TIMEOUTS.idle;
        assert_eq!(deadline_after_open(idle, TIMEOUTS), Some((idle_at, Expiry::Idle)));
        let stalled_early = Snapshot { write_pending_since_ms: Some(2 * SECOND), ..idle };
        assert_eq!(
            deadline_after_open(stalled_early, TIMEOUTS),
            Some((after(2 * SECOND) + TIMEOUTS.send, Expiry::Send(2 * SECOND)))
        );
        let stalled_late = Snapshot { write_pending_since_ms: Some(9 * SECOND), ..idle };
        assert_eq!(deadline_after_open(stalled_late, TIMEOUTS), Some((idle_at, Expiry::Idle)));

        // A pipelining client that sends its next head without reading the answers to the last ones.
        let next_head = Snapshot { head_started_ms: Some(4 * SECOND), ..stalled_early };
        assert_eq!(
            deadline_after_open(next_head, TIMEOUTS),
            Some((after(4 * SECOND) + TIMEOUTS.header_read, Expiry::Head))
        );
    }

    #[test]
    fn http2_uses_the_same_send_clock() {
        let streams = Snapshot {
            in_flight: true,
            any_request: true,
            http2: true,
            write_pending_since_ms: Some(SECOND),
            ..Snapshot::default()
        };
        assert_eq!(deadline_after_open(streams, TIMEOUTS), Some((after(SECOND) + TIMEOUTS.send, Expiry::Send(SECOND))));
    }

    /// A socket without a kernel: `runtime_ready` says whether the runtime lets a write through,
    /// `room` how many bytes writes straight on the socket would still take.
    #[derive(Default)]
    struct FakeSocket {
        runtime_ready: bool,
        room: std::cell::Cell<usize>,
        direct_writes: std::cell::Cell<usize>,
    }

    impl AsyncWrite for FakeSocket {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            if self.runtime_ready {
                Poll::Ready(Ok(buf.len()))
            } else {
                Poll::Pending
            }
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl WriteNow for FakeSocket {
        fn write_now(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
            self.direct_writes.set(self.direct_writes.get() + 1);
            let written = bufs.iter().map(|buf| buf.len()).sum::<usize>().min(self.room.get());
            if written == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.room.set(self.room.get() - written);
            Ok(written)
        }
    }

    fn watched(socket: FakeSocket) -> (WatchedIo<FakeSocket>, Arc<ConnState>) {
        let state = Arc::new(ConnState::new());
        (WatchedIo { inner: socket, state: state.clone() }, state)
    }

    fn write(io: &mut WatchedIo<FakeSocket>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(io).poll_write(&mut Context::from_waker(std::task::Waker::noop()), bytes)
    }

    #[tokio::test]
    async fn a_held_back_write_starts_the_send_clock_and_one_that_goes_through_stops_it() {
        let (mut io, state) = watched(FakeSocket::default());
        let _request = state.begin_request(http::Version::HTTP_11);
        assert!(write(&mut io, b"body").is_pending());
        assert!(state.write_pending_since().is_some());
        assert!(matches!(state.deadline(TIMEOUTS), Some((_, Expiry::Send(_)))));

        // More held-back writes keep the stall's start (hyper polls again on every wake-up).
        state.write_pending_since_ms.store(1 + 1, Ordering::Relaxed);
        assert!(write(&mut io, b"body").is_pending());
        assert_eq!(state.write_pending_since(), Some(1));

        io.inner.runtime_ready = true;
        assert!(matches!(write(&mut io, b"body"), Poll::Ready(Ok(4))));
        assert_eq!(state.write_pending_since(), None);
        assert!(state.deadline(TIMEOUTS).is_none(), "in flight, and the client takes its bytes");
        assert_eq!(io.inner.direct_writes.get(), 0, "no probe was asked for");
    }

    #[tokio::test]
    async fn a_probe_writes_past_the_runtime_until_the_socket_refuses() {
        let (mut io, state) = watched(FakeSocket { room: 6.into(), ..FakeSocket::default() });
        assert!(write(&mut io, b"body").is_pending(), "without a probe, the runtime decides");
        assert!(state.write_pending_since().is_some());

        state.start_write_probe();
        assert!(matches!(write(&mut io, b"body"), Poll::Ready(Ok(4))));
        assert_eq!(state.write_pending_since(), None, "the client took bytes");
        assert!(matches!(write(&mut io, b"body"), Poll::Ready(Ok(2))));
        assert!(write(&mut io, b"body").is_pending(), "the socket is full again");
        assert!(state.finish_write_probe(), "the probe took bytes");
        assert!(state.write_pending_since().is_some(), "a new stall");

        // Once the probe is over, the runtime decides again.
        io.inner.room.set(100);
        assert!(write(&mut io, b"body").is_pending());
        assert_eq!(io.inner.direct_writes.get(), 3);
    }

    #[tokio::test]
    async fn a_probe_of_a_full_socket_leaves_the_stall_as_it_was() {
        let (mut io, state) = watched(FakeSocket::default());
        assert!(write(&mut io, b"body").is_pending());
        let stalled = state.write_pending_since();
        state.start_write_probe();
        assert!(write(&mut io, b"body").is_pending());
        assert!(!state.finish_write_probe());
        assert_eq!(state.write_pending_since(), stalled);
        assert_eq!(io.inner.direct_writes.get(), 1);
    }

    #[tokio::test]
    async fn a_write_that_goes_through_the_runtime_takes_no_probe() {
        let (mut io, state) = watched(FakeSocket { runtime_ready: true, room: 100.into(), ..FakeSocket::default() });
        state.start_write_probe();
        assert!(matches!(write(&mut io, b"body"), Poll::Ready(Ok(4))));
        assert!(!state.finish_write_probe(), "only writes the runtime held back are probes");
        assert_eq!(io.inner.direct_writes.get(), 0);
    }

    #[tokio::test]
    async fn the_watchdog_wakes_when_a_write_stalls_while_a_request_is_in_flight() {
        let state = Arc::new(ConnState::new());
        let _request = state.begin_request(http::Version::HTTP_11);
        let timeouts = Timeouts { send: Duration::from_millis(10), ..TIMEOUTS };
        // The watchdog first waits with no deadline; the stall must wake it.
        let stall = async {
            tokio::task::yield_now().await;
            state.on_write_pending();
        };
        let (expiry, ()) =
            tokio::time::timeout(Duration::from_secs(5), async { tokio::join!(state.expired(timeouts), stall) })
                .await
                .expect("the watchdog saw the stall");
        assert!(matches!(expiry, Expiry::Send(_)), "{expiry:?}");
    }
}
