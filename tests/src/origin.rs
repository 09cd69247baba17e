//! Helpers for the origin's end-to-end tests: an `eddy-origin` on port 0 with its own data folder, its
//! users, media made by ffmpeg, and a TCP proxy that stops passing an upload on after a byte count (a
//! connection that drops halfway, at a point the test chooses rather than at a time it guesses).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use crate::{bin_path, spawn_until_ready, Running};

/// A running `eddy-origin serve`.
pub struct Origin {
    pub process: Running,
    pub addr: SocketAddr,
    pub data: PathBuf,
    pub config: PathBuf,
}

impl Origin {
    /// Starts `eddy-origin serve --listen 127.0.0.1:0 --data DATA --config CONFIG`.
    pub fn start(data: &Path, config: &Path) -> Result<Origin> {
        let mut command = Command::new(bin_path("eddy-origin"));
        command.args(["serve", "--listen", "127.0.0.1:0", "--data"]).arg(data).arg("--config").arg(config);
        let process = spawn_until_ready(command, "eddy-origin listening on", Duration::from_secs(30))?;
        let addr = process.addr_after("listening on ")?;
        Ok(Origin { process, addr, data: data.to_path_buf(), config: config.to_path_buf() })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `eddy-origin user add NAME`: the new user's API token.
    pub fn add_user(&self, name: &str) -> Result<String> {
        add_user(&self.data, &self.config, name)
    }

    /// A counter's value from `/metrics` (0 when absent), e.g. `eddy_origin_packaging_runs_total{result="ready"}`.
    pub async fn metric(&self, series: &str) -> Result<f64> {
        let text = reqwest::get(self.url("/metrics")).await?.error_for_status()?.text().await?;
        Ok(text
            .lines()
            .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.trim().parse::<f64>().ok()))
            .unwrap_or(0.0))
    }
}

/// `eddy-origin user add NAME --data DATA --config CONFIG`, with or without a running service.
pub fn add_user(data: &Path, config: &Path, name: &str) -> Result<String> {
    let output = Command::new(bin_path("eddy-origin"))
        .args(["user", "add", name, "--data"])
        .arg(data)
        .arg("--config")
        .arg(config)
        .output()
        .context("running eddy-origin user add")?;
    ensure!(output.status.success(), "eddy-origin user add {name}: {}", String::from_utf8_lossy(&output.stderr));
    let token = String::from_utf8(output.stdout)?.trim().to_string();
    ensure!(token.starts_with("eddy_"), "unexpected token line {token:?}");
    Ok(token)
}

/// A `seconds`-long 426x240 H.264/AAC MP4 made by ffmpeg (a moving test pattern and a tone).
pub fn make_clip(path: &Path, seconds: u32) -> Result<()> {
    let output = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg("testsrc2=size=426x240:rate=25")
        .args(["-f", "lavfi", "-i", "sine=frequency=440", "-t"])
        .arg(seconds.to_string())
        .args(["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-g", "50", "-c:a", "aac", "-shortest"])
        .arg(path)
        .output()
        .context("running ffmpeg")?;
    ensure!(output.status.success(), "ffmpeg failed: {}", String::from_utf8_lossy(&output.stderr));
    Ok(())
}

/// A TCP proxy to `upstream` that passes at most `limit` bytes from clients to the server, summed over
/// all connections, then holds every connection open without passing anything more: to the client,
/// the network has stalled. `stalled` receives one message when the limit is reached.
pub struct StallingProxy {
    pub addr: SocketAddr,
    pub stalled: mpsc::Receiver<()>,
}

impl StallingProxy {
    pub fn start(upstream: SocketAddr, limit: u64) -> Result<StallingProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let (tx, stalled) = mpsc::channel();
        let passed = Arc::new(AtomicU64::new(0));
        let notify = Arc::new(Mutex::new(Some(tx)));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(upstream) else { continue };
                let (Ok(client_reader), Ok(server_writer)) = (client.try_clone(), server.try_clone()) else { continue };
                let (passed, notify) = (passed.clone(), notify.clone());
                std::thread::spawn(move || pass_until(client_reader, server_writer, &passed, limit, &notify));
                std::thread::spawn(move || copy(server, client));
            }
        });
        Ok(StallingProxy { addr, stalled })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn pass_until(
    mut from: TcpStream,
    mut to: TcpStream,
    passed: &AtomicU64,
    limit: u64,
    notify: &Mutex<Option<mpsc::Sender<()>>>,
) {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let Ok(n) = from.read(&mut buffer) else { return };
        if n == 0 {
            return;
        }
        let before = passed.fetch_add(n as u64, Ordering::SeqCst);
        let allowed = limit.saturating_sub(before).min(n as u64) as usize;
        if to.write_all(&buffer[..allowed]).is_err() {
            return;
        }
        if allowed < n {
            if let Ok(mut sender) = notify.lock() {
                if let Some(sender) = sender.take() {
                    let _ = sender.send(());
                }
            }
            // Hold both sockets: the client sees a stalled network until it is killed.
            let mut sink = [0u8; 16 * 1024];
            while matches!(from.read(&mut sink), Ok(n) if n > 0) {}
            return;
        }
    }
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
}

/// Files under `dir`, recursively (none when it does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

/// Polls `check` every 50 ms until it answers `Some`, for at most `timeout`: for states that a
/// background job reaches (packaging), which no message announces to the test.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("{what}: not within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
