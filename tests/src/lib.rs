//! Helpers for the end-to-end tests: finding the built binaries, starting them on 127.0.0.1 port 0,
//! learning the port they bound from the line they print when ready, and stopping them by PID.
//!
//! Every Eddy server binary prints exactly one line on stdout when it is ready to serve:
//! `<binary> listening on <ip:port>` (the edge adds ` admin on <ip:port>`). Tests wait for that line
//! instead of sleeping. Lines printed before it are kept: the edge's TLS listener announces itself
//! just before it (`eddy-edge listening (tls) on <ip:port>`).

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

pub mod origin;
pub mod stores;

/// Path of a binary built from this workspace (`eddy-edge`, `eddy-play`, ...), in the same target
/// directory as the running test. The README's test command builds the binaries before the tests.
pub fn bin_path(name: &str) -> PathBuf {
    let mut dir = std::env::current_exe().expect("the test binary knows its own path");
    dir.pop(); // the test binary
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(path.exists(), "{} not found: build the binaries first (cargo build --workspace --bins)", path.display());
    path
}

/// A child process that is killed (by its PID) when dropped, so a failing test leaves nothing running.
pub struct Running {
    pub child: Child,
    /// Lines the process printed on stdout after its ready line (drained in the background).
    pub stdout_rest: mpsc::Receiver<String>,
    /// The ready line itself.
    pub ready_line: String,
    /// The lines printed on stdout before the ready line.
    pub before_ready: Vec<String>,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The first `ip:port` that follows `marker` in the ready line (e.g. "listening on ").
    pub fn addr_after(&self, marker: &str) -> Result<SocketAddr> {
        addr_after(&self.ready_line, marker)
    }

    /// Sends SIGTERM and waits for the exit status (up to `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        signal(self.child.id(), "TERM")?;
        wait_with_timeout(&mut self.child, timeout)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn addr_after(line: &str, marker: &str) -> Result<SocketAddr> {
    let start = line.find(marker).ok_or_else(|| anyhow!("'{marker}' not in line: {line}"))? + marker.len();
    let token =
        line[start..].split_whitespace().next().ok_or_else(|| anyhow!("no address after '{marker}' in: {line}"))?;
    let token = token.trim_start_matches("http://").trim_end_matches([',', ')', '/']);
    token.parse().with_context(|| format!("'{token}' is not an address (line: {line})"))
}

/// Starts `command` with stdout piped and waits (up to `timeout`) for a stdout line containing
/// `ready_marker`. Stderr is inherited so that failures show in the test output.
pub fn spawn_until_ready(mut command: Command, ready_marker: &str, timeout: Duration) -> Result<Running> {
    command.stdout(Stdio::piped()).stdin(Stdio::null());
    let mut child = command.spawn().with_context(|| format!("starting {command:?}"))?;
    let stdout = child.stdout.take().context("child stdout")?;
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + timeout;
    let mut before_ready = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(ready_marker) => {
                return Ok(Running { child, stdout_rest: rx, ready_line: line, before_ready });
            }
            Ok(line) => before_ready.push(line),
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                bail!("{command:?} did not print '{ready_marker}' within {timeout:?} (exit: {status:?})");
            }
        }
    }
}

/// Sends a signal by name (`TERM`, `INT`, `KILL`) to a PID.
pub fn signal(pid: u32, name: &str) -> Result<()> {
    let status = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status().context("running kill")?;
    if !status.success() {
        bail!("kill -{name} {pid} failed");
    }
    Ok(())
}

/// Waits for a child to exit, killing it if it takes longer than `timeout`.
pub fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Result<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            bail!("process {} did not exit within {timeout:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command to completion with a deadline, capturing its output.
pub fn run_to_end(mut command: Command, timeout: Duration) -> Result<std::process::Output> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    // Drain the pipes in the background so a chatty child cannot block on a full pipe.
    let mut stdout = child.stdout.take().context("stdout")?;
    let mut stderr = child.stderr.take().context("stderr")?;
    let out_reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stdout.read_to_end(&mut text);
        text
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text);
        text
    });
    let status = wait_with_timeout(&mut child, timeout).with_context(|| format!("{command:?}"))?;
    Ok(std::process::Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    })
}

/// A running `eddy-edge serve`.
pub struct Edge {
    pub process: Running,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

impl Edge {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }
    /// The TLS listener's address (`listen_tls`), from the line the edge prints before its ready line.
    pub fn tls_addr(&self) -> Result<SocketAddr> {
        let marker = "eddy-edge listening (tls) on ";
        let line = self
            .process
            .before_ready
            .iter()
            .find(|line| line.contains(marker))
            .ok_or_else(|| anyhow!("the edge printed no '{marker}' line before its ready line"))?;
        addr_after(line, marker)
    }
}

/// Starts `eddy-edge serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0` plus `args`.
pub fn start_edge(args: &[&str]) -> Result<Edge> {
    let mut command = Command::new(bin_path("eddy-edge"));
    command.args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]).args(args);
    let process = spawn_until_ready(command, "eddy-edge listening on", Duration::from_secs(20))?;
    let addr = process.addr_after("listening on ")?;
    let admin = process.addr_after("admin on ")?;
    Ok(Edge { process, addr, admin })
}

/// A memory figure of a process in KiB, from `/proc/PID/status` (`field` as written there, e.g.
/// `"VmRSS:"` for the resident set, `"VmHWM:"` for its peak).
pub fn proc_status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading /proc status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no {field} in /proc/{pid}/status"))
}

/// An error and its causes on one line (a client library's top-level message alone says little).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
