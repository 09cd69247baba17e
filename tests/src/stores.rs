//! The shared stores a fleet of origins runs on, for the end-to-end tests: an S3-compatible server
//! (moto, which `scripts/moto.sh` installs and `scripts/test.sh` names in `EDDY_TEST_MOTO_SERVER`) on
//! 127.0.0.1 port 0, and a PostgreSQL schema of a test's own on the server that `scripts/postgres.sh`
//! starts (`scripts/test.sh` exports its admin URL as `EDDY_TEST_POSTGRES_URL`). Both go away when
//! dropped: moto is killed by its PID, the schema is dropped with everything in it.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};

use crate::{addr_after, run_to_end};

/// The path of moto's `moto_server`.
pub const MOTO_VAR: &str = "EDDY_TEST_MOTO_SERVER";
/// An admin URL of a PostgreSQL server, `postgres://postgres@127.0.0.1:PORT/postgres`.
pub const POSTGRES_VAR: &str = "EDDY_TEST_POSTGRES_URL";

/// The values of the environment variables `names`, in order; or, when any is unset or empty, `None`
/// after one line on stderr that says which are missing and who sets them. The line goes to the
/// process's stderr itself, which the test harness does not capture, so that a skip is seen.
pub fn env_or_skip(names: &[&str]) -> Option<Vec<String>> {
    let values: Vec<Option<String>> =
        names.iter().map(|name| std::env::var(name).ok().filter(|value| !value.is_empty())).collect();
    let missing: Vec<&str> =
        names.iter().zip(&values).filter(|(_, value)| value.is_none()).map(|(name, _)| *name).collect();
    if missing.is_empty() {
        return values.into_iter().collect();
    }
    let line = match missing.as_slice() {
        [one] => format!("skipped: {one} is not set (scripts/test.sh sets it)"),
        many => format!("skipped: {} are not set (scripts/test.sh sets them)", many.join(" and ")),
    };
    let _ = writeln!(std::io::stderr(), "{line}");
    None
}

/// Lines of moto's log kept for error messages.
const LOG_LINES: usize = 40;

/// A moto server on 127.0.0.1, killed (by its PID) when dropped.
pub struct Moto {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<VecDeque<String>>>,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// Starts `server -H 127.0.0.1 -p 0` and learns the port it bound from the line it prints on
    /// stderr when it listens (` * Running on http://127.0.0.1:PORT`): no port is picked in advance, so
    /// none can be taken meanwhile. Waits up to a minute (a first start compiles Python's bytecode).
    pub fn start(server: &Path) -> Result<Moto> {
        let mut command = Command::new(server);
        command.args(["-H", "127.0.0.1", "-p", "0"]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = command.spawn().with_context(|| format!("starting {}", server.display()))?;
        let stderr = child.stderr.take().context("moto's stderr")?;
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = mpsc::channel::<String>();
        let kept = log.clone();
        // Drains stderr for the server's whole life (it logs every request), keeping the last lines.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut kept) = kept.lock() {
                    if kept.len() == LOG_LINES {
                        kept.pop_front();
                    }
                    kept.push_back(line.clone());
                }
                let _ = tx.send(line);
            }
        });
        let mut moto = Moto { child, addr: SocketAddr::from(([127, 0, 0, 1], 0)), log };
        let timeout = Duration::from_secs(60);
        let deadline = Instant::now() + timeout;
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains("Running on http://") => {
                    moto.addr = addr_after(&line, "Running on ")?;
                    return Ok(moto);
                }
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = moto.child.wait()?;
                    bail!("moto exited ({status}) before listening:\n{}", moto.log_tail());
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!("moto did not say it listens within {timeout:?}:\n{}", moto.log_tail())
                }
            }
        }
    }

    /// `http://127.0.0.1:PORT`, the endpoint to give an S3 client.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The last lines moto logged, for error messages.
    pub fn log_tail(&self) -> String {
        self.log.lock().map(|lines| lines.iter().cloned().collect::<Vec<_>>().join("\n")).unwrap_or_default()
    }

    fn client() -> Result<reqwest::Client> {
        Ok(reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build()?)
    }

    /// A GET as a named user. moto refuses anonymous reads of private objects, but, as it runs here
    /// (no `INITIAL_NO_AUTH_ACTION_COUNT`), never checks a signature: naming credentials is enough
    /// for the test's own look into the bucket.
    fn get_as_user(url: String) -> Result<reqwest::RequestBuilder> {
        Ok(Self::client()?.get(url).header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=test/20250101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00",
        ))
    }

    /// Creates a bucket with an unsigned `PUT /BUCKET`, which moto accepts (the origin's S3 client
    /// never creates buckets).
    pub async fn create_bucket(&self, bucket: &str) -> Result<()> {
        let response = Self::client()?.put(format!("{}/{bucket}", self.url())).send().await?;
        ensure!(response.status().is_success(), "creating bucket {bucket}: {}\n{}", response.status(), self.log_tail());
        Ok(())
    }

    /// The keys in `bucket` that start with `prefix`, sorted (ListObjectsV2, followed to its last
    /// page): what is really in the bucket, whatever an origin says.
    pub async fn keys(&self, bucket: &str, prefix: &str) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut continuation: Option<String> = None;
        loop {
            let mut url = format!("{}/{bucket}?list-type=2&prefix={}", self.url(), query_escape(prefix));
            if let Some(token) = continuation.take() {
                url.push_str(&format!("&continuation-token={}", query_escape(&token)));
            }
            let response = Self::get_as_user(url)?.send().await?;
            let status = response.status();
            let body = response.text().await?;
            ensure!(status.is_success(), "listing {bucket}/{prefix}: {status} {body}");
            keys.extend(xml_values(&body, "Key"));
            match xml_values(&body, "NextContinuationToken").into_iter().next() {
                Some(token) if xml_values(&body, "IsTruncated").first().is_some_and(|t| t == "true") => {
                    continuation = Some(token)
                }
                _ => break,
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// The bytes of one object, as stored.
    pub async fn object(&self, bucket: &str, key: &str) -> Result<Vec<u8>> {
        let response = Self::get_as_user(format!("{}/{bucket}/{key}", self.url()))?.send().await?;
        ensure!(response.status().is_success(), "GET {bucket}/{key}: {}", response.status());
        Ok(response.bytes().await?.to_vec())
    }
}

/// `text` as a query value: every byte but RFC 3986's unreserved characters percent-encoded.
fn query_escape(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (byte as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// The text of every `<tag>…</tag>` element in `xml`, with the five predefined entities decoded.
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut values = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        values.push(
            after[..end]
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&"),
        );
        rest = &after[end + close.len()..];
    }
    values
}

/// A PostgreSQL schema of one test's own, dropped with everything in it when this is dropped.
pub struct PgSchema {
    admin_url: String,
    pub name: String,
    /// The admin URL with `options=-csearch_path=NAME`: every connection made with it creates and
    /// finds its tables in this schema only.
    pub url: String,
}

impl PgSchema {
    /// `CREATE SCHEMA` on the server at `admin_url` (with `psql`), under a name no other test uses.
    pub fn create(admin_url: &str) -> Result<PgSchema> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
        let name = format!("t_{:x}_{:x}", std::process::id(), nanos);
        psql(admin_url, &format!("CREATE SCHEMA {name}"))?;
        let separator = if admin_url.contains('?') { '&' } else { '?' };
        let url = format!("{admin_url}{separator}options=-csearch_path%3D{name}");
        Ok(PgSchema { admin_url: admin_url.to_string(), name, url })
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        if let Err(error) = psql(&self.admin_url, &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name)) {
            let _ = writeln!(std::io::stderr(), "dropping schema {}: {error:#}", self.name);
        }
    }
}

/// Runs one SQL statement with `psql`, failing on any error.
fn psql(url: &str, sql: &str) -> Result<()> {
    let mut command = Command::new("psql");
    command.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql]).env("PGCONNECT_TIMEOUT", "10");
    let output = run_to_end(command, Duration::from_secs(30))?;
    if !output.status.success() {
        return Err(anyhow!("psql {sql:?}: {}", String::from_utf8_lossy(&output.stderr).trim()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{query_escape, xml_values};

    #[test]
    fn query_escape_keeps_only_unreserved_characters() {
        assert_eq!(query_escape("packaged/ab-1_2.x~"), "packaged%2Fab-1_2.x~");
        assert_eq!(query_escape("a+b= c"), "a%2Bb%3D%20c");
    }

    #[test]
    fn xml_values_reads_every_element_and_decodes_entities() {
        let xml = "<R><Contents><Key>a/1</Key></Contents><Contents><Key>b&amp;c &lt;d&gt;</Key></Contents>\
                   <IsTruncated>false</IsTruncated></R>";
        assert_eq!(xml_values(xml, "Key"), ["a/1", "b&c <d>"]);
        assert_eq!(xml_values(xml, "IsTruncated"), ["false"]);
        assert!(xml_values(xml, "NextContinuationToken").is_empty());
    }
}
