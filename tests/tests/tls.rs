//! HTTPS and HTTP/2 for viewers (issue 15 §3), against the real `eddy-edge`: its TLS listener serves the
//! same cache as the plain one over h2 and HTTP/1.1 (ALPN, RFC 7301), reloads its certificate on SIGHUP
//! without dropping connections and refuses a broken one, bounds handshakes by `header_read_timeout`,
//! trusts a private CA for HTTPS origins with `origin.ca_file`, checks its files at load, and an HLS
//! stream plays through it over HTTPS.
//!
//! Certificates come from a CA made at test time (rcgen). The clients are tokio-rustls + hyper, so that
//! each test chooses the ALPN offer and sees which certificate the edge presented.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use eddy_tests::{bin_path, signal, spawn_until_ready, Edge};
use http_body_util::{BodyExt, Empty};
use hyper::header::HeaderMap;
use hyper::{Request, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SerialNumber};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::RootCertStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// The name (and SNI) the test certificates are issued for, besides 127.0.0.1.
const NAME: &str = "localhost";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A private CA made for one test, in a temporary directory, and the server certificates it signs.
struct Ca {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
    pem_file: PathBuf,
}

/// A server certificate and key on disk, and the certificate's DER (what a client is shown).
struct Leaf {
    cert: PathBuf,
    key: PathBuf,
    der: Vec<u8>,
}

impl Ca {
    fn new() -> Ca {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "Eddy test CA");
        let certificate = params.self_signed(&key).expect("CA certificate");
        let pem_file = dir.path().join("ca.pem");
        std::fs::write(&pem_file, certificate.pem()).expect("write CA");
        Ca { dir, issuer: Issuer::new(params, key), der: certificate.der().clone(), pem_file }
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).expect("CA into the root store");
        roots
    }

    /// Issues a certificate for `localhost` and 127.0.0.1 with this common name and serial, written as
    /// `<file>.crt` and `<file>.key` (through a rename, so that a reload never reads half a file).
    fn issue(&self, common_name: &str, serial: u64, file: &str) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::new(vec![NAME.to_string(), "127.0.0.1".to_string()]).expect("params");
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.serial_number = Some(SerialNumber::from(serial));
        let certificate = params.signed_by(&key, &self.issuer).expect("leaf certificate");
        let cert = self.dir.path().join(format!("{file}.crt"));
        let key_file = self.dir.path().join(format!("{file}.key"));
        write_atomically(&cert, certificate.pem().as_bytes());
        write_atomically(&key_file, key.serialize_pem().as_bytes());
        Leaf { cert, key: key_file, der: certificate.der().to_vec() }
    }
}

fn write_atomically(file: &Path, contents: &[u8]) {
    let temporary = file.with_extension("tmp");
    std::fs::write(&temporary, contents).expect("write");
    std::fs::rename(&temporary, file).expect("rename");
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().expect("temp config");
    file.write_all(text.as_bytes()).expect("write config");
    file
}

/// The config lines of a TLS listener on port 0 serving `leaf`.
fn tls_config(leaf: &Leaf) -> String {
    format!("listen_tls = \"127.0.0.1:0\"\n[tls]\ncert = {:?}\nkey = {:?}\n", leaf.cert, leaf.key)
}

/// Starts the edge with `config` (its root keys must come before any table) and `origin`; stderr goes
/// to `log` when given.
fn start(config: &tempfile::NamedTempFile, origin: &str, log: Option<&Path>) -> Edge {
    let mut command = Command::new(bin_path("eddy-edge"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--config"])
        .arg(config.path())
        .args(["--origin", origin]);
    if let Some(log) = log {
        command.stderr(Stdio::from(std::fs::File::create(log).expect("log file")));
    }
    let process = spawn_until_ready(command, "eddy-edge listening on", Duration::from_secs(20)).expect("edge starts");
    let addr = process.addr_after("listening on ").expect("address");
    let admin = process.addr_after("admin on ").expect("admin address");
    Edge { process, addr, admin }
}

/// An HTTP connection to the edge, over TLS or not, made with hyper's client so that the test sees the
/// protocol, and over TLS the ALPN result and the certificate the edge presented.
struct Connection {
    sender: Sender,
    alpn: Option<Vec<u8>>,
    certificate: Vec<u8>,
}

enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

/// The TLS handshake with `addr`, offering `alpn`, trusting only `roots`.
async fn handshake(
    addr: SocketAddr,
    roots: &RootCertStore,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(NAME).expect("server name");
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await
}

impl Connection {
    async fn tls(addr: SocketAddr, roots: &RootCertStore, alpn: &[&[u8]]) -> Connection {
        let stream = handshake(addr, roots, alpn).await.expect("TLS handshake");
        let (_, session) = stream.get_ref();
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let certificate = session.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
        let sender = if alpn.as_deref() == Some(b"h2") {
            let (sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.expect("h2");
            tokio::spawn(connection);
            Sender::Http2(sender)
        } else {
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("h1");
            tokio::spawn(connection);
            Sender::Http1(sender)
        };
        Connection { sender, alpn, certificate }
    }

    async fn plain(addr: SocketAddr) -> Connection {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.expect("h1");
        tokio::spawn(connection);
        Connection { sender: Sender::Http1(sender), alpn: None, certificate: Vec::new() }
    }

    /// GETs `path` for host `localhost`: status, protocol, headers and body.
    async fn get(&mut self, path: &str) -> (StatusCode, Version, HeaderMap, Bytes) {
        let response = match &mut self.sender {
            Sender::Http1(sender) => {
                sender.ready().await.expect("connection still usable");
                let request = Request::get(path).header("host", NAME).body(Empty::new()).expect("request");
                sender.send_request(request).await.expect("response")
            }
            Sender::Http2(sender) => {
                sender.ready().await.expect("connection still usable");
                let request = Request::get(format!("https://{NAME}{path}")).body(Empty::new()).expect("request");
                sender.send_request(request).await.expect("response")
            }
        };
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("whole body").to_bytes();
        (parts.status, parts.version, parts.headers, body)
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// The admin `/metrics` text.
async fn metrics(edge: &Edge) -> String {
    let client = reqwest::Client::builder().no_proxy().build().expect("client");
    client.get(edge.admin_url("/metrics")).send().await.expect("metrics").text().await.expect("metrics text")
}

/// Waits (polling, up to 20 s) until `/metrics` has a line starting with `line`.
async fn wait_for_metric(edge: &Edge, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = metrics(edge).await;
        if text.lines().any(|l| l.starts_with(line)) {
            return;
        }
        assert!(Instant::now() < deadline, "no '{line}' in /metrics:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (polling, up to 20 s) until the log file contains every one of `needles` on one line.
fn wait_for_log_line(log: &Path, needles: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return line.to_string();
        }
        assert!(Instant::now() < deadline, "no log line with {needles:?}:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn cacheable_origin(route: &str, body: &str) -> MockServer {
    let origin = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(route))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("cache-control", "max-age=60")
                .insert_header("content-type", "video/mp2t")
                .set_body_string(body),
        )
        .mount(&origin)
        .await;
    origin
}

/// (a) One cached object for every way in: h2 over TLS fills it, HTTP/1.1 over TLS (ALPN `http/1.1`,
/// and no ALPN at all) and the plain listener hit it. ALPN picks h2 when offered, and the origin hears
/// `X-Forwarded-Proto: https` for a viewer on TLS.
#[tokio::test(flavor = "multi_thread")]
async fn h2_and_http1_over_tls_and_plain_http_share_one_cached_object() {
    let ca = Ca::new();
    let leaf = ca.issue("edge-one", 1, "edge");
    let origin = cacheable_origin("/live/seg1.ts", "SEGMENT-ONE").await;
    Mock::given(method("GET"))
        .and(path("/plain.ts"))
        .respond_with(ResponseTemplate::new(200).insert_header("cache-control", "max-age=60").set_body_string("P"))
        .mount(&origin)
        .await;
    let config = config_file(&tls_config(&leaf));
    let edge = start(&config, &origin.uri(), None);
    let tls = edge.tls_addr().expect("TLS listener");
    let roots = ca.roots();

    let mut h2 = Connection::tls(tls, &roots, &[b"h2", b"http/1.1"]).await;
    assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]), "the edge prefers h2 when the client offers it");
    assert_eq!(h2.certificate, leaf.der, "the configured certificate");
    let (status, version, headers, body) = h2.get("/live/seg1.ts").await;
    assert_eq!((status, version), (StatusCode::OK, Version::HTTP_2));
    assert_eq!(header(&headers, "x-cache"), "MISS");
    assert_eq!(body, "SEGMENT-ONE");

    let mut http1 = Connection::tls(tls, &roots, &[b"http/1.1"]).await;
    assert_eq!(http1.alpn.as_deref(), Some(&b"http/1.1"[..]));
    let (status, version, headers, body) = http1.get("/live/seg1.ts").await;
    assert_eq!((status, version), (StatusCode::OK, Version::HTTP_11));
    assert_eq!(header(&headers, "x-cache"), "HIT", "the object h2 filled");
    assert!(header(&headers, "cache-status").contains("hit"), "{headers:?}");
    assert_eq!(body, "SEGMENT-ONE");

    let mut no_alpn = Connection::tls(tls, &roots, &[]).await;
    assert_eq!(no_alpn.alpn, None);
    let (status, version, headers, _) = no_alpn.get("/live/seg1.ts").await;
    assert_eq!((status, version, header(&headers, "x-cache")), (StatusCode::OK, Version::HTTP_11, "HIT"));

    let mut plain = Connection::plain(edge.addr).await;
    let (status, _, headers, body) = plain.get("/live/seg1.ts").await;
    assert_eq!((status, header(&headers, "x-cache")), (StatusCode::OK, "HIT"));
    assert_eq!(body, "SEGMENT-ONE");
    let (status, ..) = plain.get("/plain.ts").await;
    assert_eq!(status, StatusCode::OK);

    let requests = origin.received_requests().await.unwrap_or_default();
    let fills: Vec<_> = requests.iter().filter(|r| r.url.path() == "/live/seg1.ts").collect();
    assert_eq!(fills.len(), 1, "one origin request for all four clients");
    assert_eq!(fills[0].headers.get("x-forwarded-proto").map(|v| v.as_bytes()), Some(&b"https"[..]));
    let plain_fill = requests.iter().find(|r| r.url.path() == "/plain.ts").expect("the plain fill");
    assert_eq!(plain_fill.headers.get("x-forwarded-proto").map(|v| v.as_bytes()), Some(&b"http"[..]));
}

/// (b) SIGHUP with a new certificate: connections opened before keep working (HTTP/1.1 and h2), and a
/// new connection is shown the new certificate.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_serves_a_new_certificate_to_new_connections_and_keeps_open_ones() {
    let ca = Ca::new();
    let first = ca.issue("edge-one", 1, "edge");
    let origin = cacheable_origin("/seg.ts", "SEGMENT").await;
    let config = config_file(&tls_config(&first));
    let edge = start(&config, &origin.uri(), None);
    let tls = edge.tls_addr().expect("TLS listener");
    let roots = ca.roots();

    let mut before_h1 = Connection::tls(tls, &roots, &[b"http/1.1"]).await;
    let mut before_h2 = Connection::tls(tls, &roots, &[b"h2"]).await;
    assert_eq!(before_h1.get("/seg.ts").await.0, StatusCode::OK);
    assert_eq!(before_h2.get("/seg.ts").await.0, StatusCode::OK);
    assert_eq!(before_h1.certificate, first.der);

    let second = ca.issue("edge-two", 2, "edge");
    assert_eq!((second.cert.as_path(), second.key.as_path()), (first.cert.as_path(), first.key.as_path()));
    assert_ne!(second.der, first.der);
    signal(edge.process.pid(), "HUP").expect("SIGHUP");
    wait_for_metric(&edge, "eddy_edge_reloads_total{result=\"ok\"} 1").await;

    let mut after = Connection::tls(tls, &roots, &[b"h2"]).await;
    assert_eq!(after.certificate, second.der, "a new connection gets the new certificate");
    assert_eq!(after.get("/seg.ts").await.0, StatusCode::OK);

    let (status, _, headers, body) = before_h1.get("/seg.ts").await;
    assert_eq!((status, header(&headers, "x-cache"), &body[..]), (StatusCode::OK, "HIT", &b"SEGMENT"[..]));
    let (status, version, ..) = before_h2.get("/seg.ts").await;
    assert_eq!((status, version), (StatusCode::OK, Version::HTTP_2), "the h2 connection from before goes on");
}

/// (c) SIGHUP with a broken key: refused with an error naming the file, and the old certificate serves
/// on.
#[tokio::test(flavor = "multi_thread")]
async fn a_broken_key_on_sighup_is_refused_and_the_old_certificate_stays() {
    let ca = Ca::new();
    let leaf = ca.issue("edge-one", 1, "edge");
    let origin = cacheable_origin("/seg.ts", "SEGMENT").await;
    let config = config_file(&tls_config(&leaf));
    let log_dir = tempfile::tempdir().expect("tempdir");
    let log = log_dir.path().join("edge.log");
    let edge = start(&config, &origin.uri(), Some(&log));
    let tls = edge.tls_addr().expect("TLS listener");
    let roots = ca.roots();

    write_atomically(&leaf.key, b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n");
    signal(edge.process.pid(), "HUP").expect("SIGHUP");
    wait_for_metric(&edge, "eddy_edge_reloads_total{result=\"failed\"} 1").await;
    let key_path = leaf.key.display().to_string();
    let line = wait_for_log_line(&log, &["reload refused", &key_path]);
    assert!(line.contains("ERROR"), "{line}");

    let mut after = Connection::tls(tls, &roots, &[b"h2"]).await;
    assert_eq!(after.certificate, leaf.der, "the old certificate stays in force");
    assert_eq!(after.get("/seg.ts").await.0, StatusCode::OK);
}

/// (d) A TLS handshake that never completes holds its slot under `max_connections` only until
/// `header_read_timeout`: then it is cut, counted, and the slot serves the next client.
#[tokio::test(flavor = "multi_thread")]
async fn an_unfinished_handshake_is_cut_after_header_read_timeout_and_frees_its_slot() {
    let ca = Ca::new();
    let leaf = ca.issue("edge-one", 1, "edge");
    let origin = cacheable_origin("/seg.ts", "SEGMENT").await;
    let config = config_file(&format!("max_connections = 1\nheader_read_timeout = \"1s\"\n{}", tls_config(&leaf)));
    let edge = start(&config, &origin.uri(), None);
    let tls = edge.tls_addr().expect("TLS listener");
    let roots = ca.roots();

    let opened = Instant::now();
    let mut stalled = TcpStream::connect(tls).await.expect("connect");
    // The start of a TLS record that announces a 512-byte ClientHello (RFC 8446 §5.1), and one byte of it.
    stalled.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.expect("partial ClientHello");
    wait_for_metric(&edge, "eddy_edge_open_connections 1").await;

    // Its slot is the only one: another client is turned away meanwhile.
    assert!(handshake(tls, &roots, &[b"h2"]).await.is_err(), "over max_connections");
    wait_for_metric(&edge, "eddy_edge_refused_connections_total 1").await;

    let mut buffer = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), stalled.read(&mut buffer)).await;
    let elapsed = opened.elapsed();
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "the edge closed the connection: {read:?}");
    assert!(elapsed >= Duration::from_millis(900), "not before header_read_timeout: {elapsed:?}");
    wait_for_metric(&edge, "eddy_edge_tls_handshake_failures_total{reason=\"timeout\"} 1").await;
    wait_for_metric(&edge, "eddy_edge_open_connections 0").await;

    let mut next = Connection::tls(tls, &roots, &[b"h2"]).await;
    assert_eq!(next.get("/seg.ts").await.0, StatusCode::OK, "the freed slot serves the next client");
}

/// Graceful shutdown covers the TLS listener: on SIGTERM an idle h2 connection over TLS is closed (a
/// GOAWAY) and a handshake in progress is dropped, so neither holds the edge for its `shutdown_grace`.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_closes_idle_tls_connections_and_unfinished_handshakes_at_once() {
    let ca = Ca::new();
    let leaf = ca.issue("edge-one", 1, "edge");
    let origin = cacheable_origin("/seg.ts", "SEGMENT").await;
    let config = config_file(&format!(
        "shutdown_grace = \"60s\"\nheader_read_timeout = \"60s\"\nkeepalive_timeout = \"60s\"\n{}",
        tls_config(&leaf)
    ));
    let mut edge = start(&config, &origin.uri(), None);
    let tls = edge.tls_addr().expect("TLS listener");

    let mut idle = Connection::tls(tls, &ca.roots(), &[b"h2"]).await;
    assert_eq!(idle.get("/seg.ts").await.0, StatusCode::OK);
    let mut stalled = TcpStream::connect(tls).await.expect("connect");
    stalled.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.expect("partial ClientHello");
    wait_for_metric(&edge, "eddy_edge_open_connections 2").await;

    let stopping = Instant::now();
    let status = edge.process.terminate(Duration::from_secs(30)).expect("the edge exits");
    assert!(status.success(), "{status:?}");
    assert!(stopping.elapsed() < Duration::from_secs(20), "shutdown waited {:?}", stopping.elapsed());
    let mut buffer = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), stalled.read(&mut buffer)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "the handshake in progress was closed: {read:?}");
}

/// A small HTTPS origin with a certificate from `ca`: every GET gets a cacheable `FROM-TLS-ORIGIN`.
async fn tls_origin(ca: &Ca) -> SocketAddr {
    let leaf = ca.issue("origin", 7, "origin");
    let chain = vec![CertificateDer::from(leaf.der.clone())];
    let key_pem = std::fs::read(&leaf.key).expect("origin key");
    let key = PrivateKeyDer::from_pem_slice(&key_pem).expect("origin key PEM");
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("origin certificate");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else { return };
                let service = hyper::service::service_fn(|_request| async {
                    let response = hyper::Response::builder()
                        .header("cache-control", "max-age=60")
                        .body(http_body_util::Full::new(Bytes::from_static(b"FROM-TLS-ORIGIN")))
                        .expect("response");
                    Ok::<_, std::convert::Infallible>(response)
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    addr
}

/// (e) An HTTPS origin whose certificate comes from a private CA: trusted with `origin.ca_file`, and
/// without it a clear 502 (the details in the edge's log, never to the client).
#[tokio::test(flavor = "multi_thread")]
async fn a_private_ca_origin_is_trusted_with_origin_ca_file_and_refused_without() {
    let ca = Ca::new();
    let origin = format!("https://{}", tls_origin(&ca).await);

    let trusting = config_file(&format!("[origin]\nca_file = {:?}\n", ca.pem_file));
    let edge = start(&trusting, &origin, None);
    let (status, _, _, body) = Connection::plain(edge.addr).await.get("/seg.ts").await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"FROM-TLS-ORIGIN"[..]));

    let log_dir = tempfile::tempdir().expect("tempdir");
    let log = log_dir.path().join("edge.log");
    let not_trusting = config_file("");
    let edge = start(&not_trusting, &origin, Some(&log));
    let (status, _, _, body) = Connection::plain(edge.addr).await.get("/seg.ts").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let body = String::from_utf8_lossy(&body).to_string();
    assert!(body.contains("origin"), "{body}");
    assert!(!body.to_ascii_lowercase().contains("certificate"), "no internals to the client: {body}");
    wait_for_log_line(&log, &["/seg.ts", "502"]);
}

/// Runs `eddy-edge check-config` on `text`: whether it passed, and stderr.
fn check_config(text: &str) -> (bool, String, PathBuf) {
    let file = config_file(text);
    let output = Command::new(bin_path("eddy-edge")).arg("check-config").arg(file.path()).output().expect("runs");
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned(), file.path().to_path_buf())
}

/// (f) The TLS keys are checked at load: errors name the config file, the key, the file read and the
/// reason.
#[test]
fn tls_config_errors_name_the_file_the_key_and_the_reason() {
    let ca = Ca::new();
    let one = ca.issue("edge-one", 1, "one");
    let two = ca.issue("edge-two", 2, "two");

    let (ok, stderr, _) = check_config(&tls_config(&one));
    assert!(ok, "a good pair passes: {stderr}");

    let mismatched = format!("listen_tls = \"127.0.0.1:0\"\n[tls]\ncert = {:?}\nkey = {:?}\n", one.cert, two.key);
    let (ok, stderr, file) = check_config(&mismatched);
    assert!(!ok);
    for needle in [&file.display().to_string(), "`tls.key`", &two.key.display().to_string(), "does not match"] {
        assert!(stderr.contains(needle), "'{needle}' in: {stderr}");
    }

    let key_as_cert = format!("listen_tls = \"127.0.0.1:0\"\n[tls]\ncert = {:?}\nkey = {:?}\n", one.key, one.key);
    let (ok, stderr, _) = check_config(&key_as_cert);
    assert!(!ok);
    assert!(stderr.contains("`tls.cert`") && stderr.contains("no certificate in PEM"), "{stderr}");

    let missing =
        format!("listen_tls = \"127.0.0.1:0\"\n[tls]\ncert = \"/nonexistent/edge.crt\"\nkey = {:?}\n", one.key);
    let (ok, stderr, _) = check_config(&missing);
    assert!(!ok);
    assert!(stderr.contains("/nonexistent/edge.crt") && stderr.contains("cannot read"), "{stderr}");

    let (ok, stderr, _) = check_config("listen_tls = \"127.0.0.1:0\"\n");
    assert!(!ok);
    assert!(stderr.contains("`tls`") && stderr.contains("cert and key"), "{stderr}");

    let (ok, stderr, _) = check_config(&format!("[origin]\nca_file = {:?}\n", one.key));
    assert!(!ok);
    assert!(stderr.contains("`origin.ca_file`") && stderr.contains("no certificate in PEM"), "{stderr}");
}

/// An HTTPS page can play through the edge: a packaged HLS ladder, served from a directory origin over
/// the TLS listener, comes back whole over h2 (master playlist, media playlist, every segment) with the
/// HLS Content-Types and the CORS header a page on another origin needs; and `eddy-play` itself plays
/// it over HTTPS with the test CA trusted (OpenSSL's `SSL_CERT_FILE`, which its HTTP client honours).
#[tokio::test(flavor = "multi_thread")]
async fn an_hls_stream_plays_through_the_edge_over_https() {
    let work = tempfile::tempdir().expect("tempdir");
    let content = work.path().join("hls");
    let status = Command::new(bin_path("eddy-package"))
        .args(["--test-pattern", "4s", "--ladder", "240p:300k", "--segment-duration", "1", "--out"])
        .arg(&content)
        .stdout(Stdio::null())
        .status()
        .expect("eddy-package runs");
    assert!(status.success(), "packaging the test content failed");

    let ca = Ca::new();
    let leaf = ca.issue("edge-one", 1, "edge");
    let config = config_file(&tls_config(&leaf));
    let edge = start(&config, &content.display().to_string(), None);
    let tls = edge.tls_addr().expect("TLS listener");

    let mut client = Connection::tls(tls, &ca.roots(), &[b"h2", b"http/1.1"]).await;
    let playlist_type = "application/vnd.apple.mpegurl";
    let (status, version, headers, master) = client.get("/master.m3u8").await;
    assert_eq!((status, version), (StatusCode::OK, Version::HTTP_2));
    assert_eq!(header(&headers, "content-type"), playlist_type);
    assert_eq!(header(&headers, "access-control-allow-origin"), "*", "a page on another origin may read it");
    let uris = |text: &Bytes| -> Vec<String> {
        String::from_utf8_lossy(text)
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect()
    };
    let media = uris(&master).first().cloned().expect("a variant in the master playlist");
    let media_path = format!("/{media}");
    let (status, _, headers, playlist) = client.get(&media_path).await;
    assert_eq!((status, header(&headers, "content-type")), (StatusCode::OK, playlist_type));
    let base = media_path.rsplit_once('/').map(|(dir, _)| dir.to_string()).unwrap_or_default();
    let segments = uris(&playlist);
    assert!(segments.len() >= 4, "{segments:?}");
    for segment in &segments {
        let (status, _, headers, body) = client.get(&format!("{base}/{segment}")).await;
        assert_eq!(status, StatusCode::OK, "{segment}");
        assert_eq!(header(&headers, "content-type"), "video/mp2t", "{segment}");
        assert_eq!(header(&headers, "access-control-allow-origin"), "*");
        assert!(!body.is_empty());
    }

    let report = work.path().join("report.json");
    let mut player = Command::new(bin_path("eddy-play"))
        .arg(format!("https://{tls}/master.m3u8"))
        .args(["--headless", "--quiet", "--rendition", "0", "--duration", "2", "--report"])
        .arg(&report)
        .env("SSL_CERT_FILE", &ca.pem_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("eddy-play starts");
    let status = eddy_tests::wait_with_timeout(&mut player, Duration::from_secs(60)).expect("eddy-play finishes");
    let mut stderr = String::new();
    if let Some(mut pipe) = player.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
    }
    assert!(status.success(), "eddy-play over https: {stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("the player's report")).expect("report JSON");
    let played = report["played_s"].as_f64().unwrap_or(0.0);
    assert!(played >= 1.9, "played {played} s over https: {report}");
}
