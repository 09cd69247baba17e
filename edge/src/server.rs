//! The listeners: the public one (HTTP/1.1 and HTTP/2 via hyper-util's auto builder) and the admin one,
//! with graceful shutdown: on SIGTERM/SIGINT stop accepting, let in-flight responses finish within the
//! grace period, then return.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::phases::{self, Edge};

/// Largest request head accepted; larger gets 431 from hyper.
const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// Binds both listeners and prints the ready line (`eddy-edge listening on ADDR admin on ADDR`).
pub async fn bind(edge: &Edge) -> anyhow::Result<(TcpListener, TcpListener)> {
    let public = TcpListener::bind(edge.config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", edge.config.listen))?;
    let admin = TcpListener::bind(edge.config.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {} (admin)", edge.config.admin_listen))?;
    Ok((public, admin))
}

pub async fn run(
    edge: Arc<Edge>,
    public: TcpListener,
    admin: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_buf_size(MAX_REQUEST_HEAD)
        .timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(30))
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = public.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        // Out of file descriptors and the like: keep serving the connections we have.
                        tracing::warn!(%error, "accept failed");
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let edge = edge.clone();
                let service = service_fn(move |request| phases::handle(edge.clone(), request, peer));
                let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%peer, %error, "connection ended with an error");
                    }
                });
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
    drop(admin);
    let grace = edge.config.shutdown_grace.0;
    tracing::info!(?grace, "shutting down: no new connections; waiting for in-flight responses");
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("grace period over; closing remaining connections");
    }
    Ok(())
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
