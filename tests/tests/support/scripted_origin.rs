//! A scriptable origin for edge tests that wiremock cannot express: bodies that stop half-way until the
//! test releases them, and connections reset mid-body. Included by the edge test files with `mod`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{watch, Mutex};

/// What the origin does for the Nth request (the last script repeats).
#[derive(Clone)]
pub enum Script {
    /// Send head + `first`, wait until the test opens the gate, then send `rest`.
    Gated { head: String, first: Vec<u8>, rest: Vec<u8> },
    /// Send head + `partial` and close the connection (a reset mid-body).
    BreakOff { head: String, partial: Vec<u8> },
    /// Send the whole response at once.
    Whole { head: String, body: Vec<u8> },
    /// Write these bytes as they are, then close: resets before or inside the head, lying lengths,
    /// invalid bytes, chunked bodies without their last chunk.
    Raw(Vec<u8>),
    /// Never answer; the connection stays open until the gate opens.
    Stall,
    /// Send head + body one byte every `every`.
    Trickle { head: String, body: Vec<u8>, every: std::time::Duration },
    /// A conditional request (one with If-None-Match) gets `not_modified`; any other the whole response.
    Conditional { not_modified: String, head: String, body: Vec<u8> },
}

pub struct ScriptedOrigin {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    pub request_heads: Arc<Mutex<Vec<String>>>,
    gate: watch::Sender<bool>,
}

pub fn head_200(length: usize, extra: &str) -> String {
    format!("HTTP/1.1 200 OK\r\nContent-Length: {length}\r\nContent-Type: video/mp2t\r\nCache-Control: max-age=60\r\n{extra}\r\n")
}

impl ScriptedOrigin {
    pub async fn start(scripts: Vec<Script>) -> ScriptedOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().expect("origin addr");
        let requests = Arc::new(AtomicUsize::new(0));
        let request_heads = Arc::new(Mutex::new(Vec::new()));
        let (gate, gate_rx) = watch::channel(false);
        let (count, heads) = (requests.clone(), request_heads.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                let (count, heads, scripts, mut gate_rx) =
                    (count.clone(), heads.clone(), scripts.clone(), gate_rx.clone());
                tokio::spawn(async move {
                    // One request per connection is enough for these tests; close afterwards.
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buffer.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let request_head = String::from_utf8_lossy(&buffer).into_owned();
                    let conditional = request_head.to_ascii_lowercase().contains("\r\nif-none-match:");
                    heads.lock().await.push(request_head);
                    let n = count.fetch_add(1, Ordering::SeqCst);
                    let script = scripts[n.min(scripts.len() - 1)].clone();
                    match script {
                        Script::Whole { head, body } => {
                            let _ = stream.write_all(head.as_bytes()).await;
                            let _ = stream.write_all(&body).await;
                        }
                        Script::Conditional { not_modified, head, body } => {
                            if conditional {
                                let _ = stream.write_all(not_modified.as_bytes()).await;
                            } else {
                                let _ = stream.write_all(head.as_bytes()).await;
                                let _ = stream.write_all(&body).await;
                            }
                        }
                        Script::Raw(bytes) => {
                            let _ = stream.write_all(&bytes).await;
                            let _ = stream.flush().await;
                        }
                        Script::Stall => {
                            let _ = gate_rx.wait_for(|open| *open).await;
                        }
                        Script::Trickle { head, body, every } => {
                            let _ = stream.write_all(head.as_bytes()).await;
                            for byte in body {
                                if stream.write_all(&[byte]).await.is_err() {
                                    break;
                                }
                                let _ = stream.flush().await;
                                tokio::time::sleep(every).await;
                            }
                        }
                        Script::BreakOff { head, partial } => {
                            let _ = stream.write_all(head.as_bytes()).await;
                            let _ = stream.write_all(&partial).await;
                            let _ = stream.flush().await;
                            // Dropping the socket ends the body short of its Content-Length.
                        }
                        Script::Gated { head, first, rest } => {
                            let _ = stream.write_all(head.as_bytes()).await;
                            let _ = stream.write_all(&first).await;
                            let _ = stream.flush().await;
                            let _ = gate_rx.wait_for(|open| *open).await;
                            let _ = stream.write_all(&rest).await;
                        }
                    }
                    let _ = stream.shutdown().await;
                });
            }
        });
        ScriptedOrigin { addr, requests, request_heads, gate }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn open_gate(&self) {
        self.gate.send_replace(true);
    }

    pub fn request_count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// A deterministic body of `len` bytes that is not all one value.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}
