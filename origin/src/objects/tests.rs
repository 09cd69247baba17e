//! The storage tests, written once against [`Objects`] and run on each backend, plain and encrypted:
//! a directory in a temporary directory, and a real S3-compatible server (moto in server mode, which
//! `scripts/moto.sh` installs and `scripts/test.sh` names in `EDDY_TEST_MOTO_SERVER`).

use std::fmt::Debug;
use std::net::TcpListener;
use std::path::{Path as FsPath, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure, Context};
use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::*;

type TestResult = anyhow::Result<()>;

/// Deterministic bytes that differ from chunk to chunk (xorshift64).
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

fn test_key() -> AtRestKey {
    AtRestKey::from_bytes(&[0x42; 32]).unwrap()
}

/// What one sealed chunk adds, and what a framed original adds per frame and once.
const SEALED_OVERHEAD: u64 = 4 + 12 + 16;
const FRAME_OVERHEAD: u64 = 4 + 12 + 16;
const FRAMED_HEADER: u64 = 4;

fn expect_key_error<T: Debug>(result: Result<T>, what: &str) -> TestResult {
    match result {
        Err(ObjectsError::Key { .. }) => Ok(()),
        other => bail!("{what}: expected ObjectsError::Key, got {other:?}"),
    }
}

fn expect_integrity<T: Debug>(result: Result<T>, key: &str) -> TestResult {
    match result {
        Err(ObjectsError::Integrity { key: k }) if k == key => Ok(()),
        other => bail!("expected ObjectsError::Integrity for {key:?}, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The suite

async fn suite(o: &Objects) -> TestResult {
    basics(o).await.context("basics")?;
    etag_changes_with_content(o).await.context("etag")?;
    sealed_round_trip(o).await.context("sealed")?;
    assemble_and_fetch(o).await.context("assemble")?;
    assemble_large(o).await.context("assemble of several parts")?;
    assemble_failures_leave_nothing(o).await.context("assemble failures")?;
    tampered_originals(o).await.context("tampered originals")?;
    bad_keys_are_refused(o).await.context("bad keys")?;
    put_dir_round_trip(o).await.context("put_dir")?;
    Ok(())
}

async fn basics(o: &Objects) -> TestResult {
    ensure!(o.list("basics").await?.is_empty(), "a new store lists nothing");
    ensure!(o.get("basics/missing").await?.is_none(), "get of an absent key");
    ensure!(o.head("basics/missing").await?.is_none(), "head of an absent key");
    o.delete("basics/missing").await.context("deleting an absent key is fine")?;
    let objects = [("basics/b", "bee"), ("basics/a/2", "two"), ("basics/ab/3", "three"), ("basics/a/1", "one")];
    for (key, value) in objects {
        o.put(key, Bytes::from(value)).await?;
    }
    ensure!(o.get("basics/a/1").await?.as_deref() == Some(&b"one"[..]), "get after put");
    let info = o.head("basics/ab/3").await?.context("head after put")?;
    ensure!(info.size == 5, "size {}", info.size);
    ensure!(
        info.etag.len() > 2 && info.etag.starts_with('"') && info.etag.ends_with('"'),
        "a strong quoted etag: {}",
        info.etag
    );
    let age = SystemTime::now().duration_since(info.last_modified).unwrap_or_else(|e| e.duration());
    ensure!(age < Duration::from_secs(600), "last_modified {:?} is not about now", info.last_modified);
    // Whole segments: basics/a is not basics/ab.
    ensure!(
        o.list("basics/a").await? == ["basics/a/1", "basics/a/2"],
        "list basics/a: {:?}",
        o.list("basics/a").await?
    );
    ensure!(o.list("basics/a/").await? == ["basics/a/1", "basics/a/2"], "a trailing '/' is the same prefix");
    ensure!(
        o.list("basics").await? == ["basics/a/1", "basics/a/2", "basics/ab/3", "basics/b"],
        "list sorted: {:?}",
        o.list("basics").await?
    );
    o.delete("basics/a/1").await?;
    ensure!(o.get("basics/a/1").await?.is_none(), "get after delete");
    o.delete("basics/a/1").await.context("deleting twice")?;
    ensure!(o.delete_prefix("basics/a").await? == 1, "delete_prefix basics/a deletes basics/a/2 only");
    ensure!(o.list("basics").await? == ["basics/ab/3", "basics/b"], "left: {:?}", o.list("basics").await?);
    ensure!(o.delete_prefix("basics/").await? == 2, "delete_prefix basics/");
    ensure!(o.list("basics").await?.is_empty(), "nothing left");
    ensure!(o.delete_prefix("basics").await? == 0, "delete_prefix of nothing");
    Ok(())
}

async fn etag_changes_with_content(o: &Objects) -> TestResult {
    o.put("etag/x", Bytes::from_static(b"aaaa")).await?;
    let first = o.head("etag/x").await?.context("head")?;
    let again = o.head("etag/x").await?.context("head")?;
    ensure!(first.etag == again.etag, "the etag is stable: {} then {}", first.etag, again.etag);
    // Same size: only the content tells them apart.
    o.put("etag/x", Bytes::from_static(b"bbbb")).await?;
    let second = o.head("etag/x").await?.context("head")?;
    ensure!(first.etag != second.etag, "the etag did not change with the content: {}", first.etag);
    ensure!(second.size == 4, "size");
    o.delete_prefix("etag").await?;
    Ok(())
}

async fn sealed_round_trip(o: &Objects) -> TestResult {
    let marker = b"a recognisable plaintext, which must not be stored as it is";
    let mut plain = marker.to_vec();
    plain.extend(pattern(10_000, 1));
    o.put_sealed("sealed/chunk", Bytes::from(plain.clone())).await?;
    ensure!(o.get_sealed("sealed/chunk").await?.as_deref() == Some(&plain[..]), "get_sealed after put_sealed");
    ensure!(o.get_sealed("sealed/missing").await?.is_none(), "get_sealed of an absent key");
    let stored = o.get("sealed/chunk").await?.context("the stored object")?;
    if o.encrypted() {
        ensure!(stored.len() as u64 == plain.len() as u64 + SEALED_OVERHEAD, "stored size {}", stored.len());
        ensure!(!contains(&stored, marker), "the stored bytes hold the plaintext");
        // Moved to another key: the key is in the AAD.
        o.put("sealed/moved", stored.clone()).await?;
        expect_integrity(o.get_sealed("sealed/moved").await, "sealed/moved")?;
        // One bit changed.
        let mut tampered = stored.to_vec();
        tampered[stored.len() / 2] ^= 1;
        o.put("sealed/chunk", Bytes::from(tampered)).await?;
        expect_integrity(o.get_sealed("sealed/chunk").await, "sealed/chunk")?;
        // Plain bytes where a sealed object belongs.
        o.put("sealed/plain", Bytes::from(plain.clone())).await?;
        expect_integrity(o.get_sealed("sealed/plain").await, "sealed/plain")?;
    } else {
        ensure!(stored[..] == plain[..], "without a key, sealed objects are stored as they are");
        o.put("sealed/moved", stored.clone()).await?;
        ensure!(o.get_sealed("sealed/moved").await?.as_deref() == Some(&plain[..]), "a plain copy reads back");
    }
    o.delete_prefix("sealed").await?;
    Ok(())
}

/// Chunks stored as the upload API stores them, and the whole file they make.
async fn store_chunks(o: &Objects, prefix: &str, sizes: &[usize]) -> anyhow::Result<(Vec<String>, Vec<u8>)> {
    let mut keys = Vec::new();
    let mut whole = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let key = format!("{prefix}/{i:08}");
        let chunk = pattern(*size, i as u64 + 10);
        o.put_sealed(&key, Bytes::from(chunk.clone())).await?;
        whole.extend(chunk);
        keys.push(key);
    }
    Ok((keys, whole))
}

fn original_size(o: &Objects, chunks: &[usize]) -> u64 {
    let plain: u64 = chunks.iter().map(|&s| s as u64).sum();
    if o.encrypted() {
        FRAMED_HEADER + FRAME_OVERHEAD * chunks.len().max(1) as u64 + plain
    } else {
        plain
    }
}

async fn assemble_and_fetch(o: &Objects) -> TestResult {
    let scratch = tempfile::tempdir()?;
    let sizes = [4096, 4096, 1000];
    let (keys, whole) = store_chunks(o, "asm/uploads/u1", &sizes).await?;
    let sha = sha256_hex(&whole);
    let dest = format!("asm/originals/{sha}");
    // The expected hash as a client may send it, in capitals.
    let (got_sha, size) = o.assemble(&keys, &dest, Some(&sha.to_uppercase())).await?;
    ensure!(got_sha == sha && size == whole.len() as u64, "assemble returned ({got_sha}, {size})");
    let info = o.head(&dest).await?.context("the original is stored")?;
    ensure!(info.size == original_size(o, &sizes), "stored size {} for {:?}", info.size, sizes);
    let stored = o.get(&dest).await?.context("get the original")?;
    if o.encrypted() {
        ensure!(!contains(&stored, &whole[..64]) && !contains(&stored, &whole[8192..8256]), "plaintext at rest");
    } else {
        ensure!(stored[..] == whole[..], "a plain original is the bytes");
    }
    let file = scratch.path().join("original.bin");
    ensure!(o.fetch_original(&dest, &file).await? == whole.len() as u64, "fetch_original's size");
    ensure!(std::fs::read(&file)? == whole, "fetch_original's bytes");
    // No expected hash: the same result.
    let (again, _) = o.assemble(&keys, "asm/originals/again", None).await?;
    ensure!(again == sha, "assemble without an expected hash");

    // An empty file.
    let empty_sha = sha256_hex(b"");
    let (got, size) = o.assemble(&[], "asm/originals/empty", Some(&empty_sha)).await?;
    ensure!(got == empty_sha && size == 0, "empty: ({got}, {size})");
    ensure!(o.head("asm/originals/empty").await?.context("stored")?.size == original_size(o, &[]), "empty's size");
    let empty_file = scratch.path().join("empty.bin");
    ensure!(o.fetch_original("asm/originals/empty", &empty_file).await? == 0, "fetch of the empty original");
    ensure!(std::fs::read(&empty_file)?.is_empty(), "the empty original is empty");

    ensure!(
        matches!(o.fetch_original("asm/originals/none", &file).await, Err(ObjectsError::NotFound { .. })),
        "fetch_original of an absent original"
    );
    o.delete_prefix("asm").await?;
    Ok(())
}

/// More than one multipart part (16 MiB each): the server really joins parts.
async fn assemble_large(o: &Objects) -> TestResult {
    let scratch = tempfile::tempdir()?;
    let sizes = [7 << 20, 7 << 20, (5 << 20) + 3];
    let (keys, whole) = store_chunks(o, "large/uploads/u", &sizes).await?;
    let sha = sha256_hex(&whole);
    let (got, size) = o.assemble(&keys, "large/original", Some(&sha)).await?;
    ensure!(got == sha && size == whole.len() as u64, "assemble returned ({got}, {size})");
    ensure!(o.head("large/original").await?.context("stored")?.size == original_size(o, &sizes), "stored size");
    let file = scratch.path().join("large.bin");
    ensure!(o.fetch_original("large/original", &file).await? == whole.len() as u64, "fetched size");
    ensure!(std::fs::read(&file)? == whole, "fetched bytes");
    o.delete_prefix("large").await?;
    Ok(())
}

async fn assemble_failures_leave_nothing(o: &Objects) -> TestResult {
    let (keys, whole) = store_chunks(o, "fail/uploads/u", &[3000, 3000, 17]).await?;
    let wrong = "0".repeat(64);
    match o.assemble(&keys, "fail/originals/wrong", Some(&wrong)).await {
        Err(ObjectsError::Mismatch { expected, actual }) => {
            ensure!(expected == wrong && actual == sha256_hex(&whole), "mismatch named {expected} and {actual}")
        }
        other => bail!("a wrong expected hash gave {other:?}"),
    }
    ensure!(o.head("fail/originals/wrong").await?.is_none(), "a mismatch left an object at dest");
    ensure!(o.list("fail/originals").await?.is_empty(), "a mismatch left {:?}", o.list("fail/originals").await?);
    // What was at dest before stays as it was.
    o.put("fail/originals/kept", Bytes::from_static(b"earlier")).await?;
    let result = o.assemble(&keys, "fail/originals/kept", Some(&wrong)).await;
    ensure!(matches!(result, Err(ObjectsError::Mismatch { .. })), "{result:?}");
    ensure!(o.get("fail/originals/kept").await?.as_deref() == Some(&b"earlier"[..]), "dest was changed");
    // A chunk that is not there.
    let mut missing = keys.clone();
    missing.insert(1, "fail/uploads/u/absent".into());
    match o.assemble(&missing, "fail/originals/missing", None).await {
        Err(ObjectsError::NotFound { key }) if key == "fail/uploads/u/absent" => {}
        other => bail!("a missing chunk gave {other:?}"),
    }
    ensure!(o.list("fail/originals").await? == ["fail/originals/kept"], "left {:?}", o.list("fail/originals").await?);
    o.delete_prefix("fail").await?;
    Ok(())
}

async fn tampered_originals(o: &Objects) -> TestResult {
    if !o.encrypted() {
        return Ok(());
    }
    let scratch = tempfile::tempdir()?;
    let (keys, _) = store_chunks(o, "tamper/uploads/u", &[2000, 2000, 500]).await?;
    o.assemble(&keys, "tamper/original", None).await?;
    let stored = o.get("tamper/original").await?.context("stored")?;
    let file = scratch.path().join("out.bin");
    let last_frame = FRAME_OVERHEAD as usize + 500;
    let cases: [(&str, Vec<u8>); 4] = [
        ("moved to another key", stored.to_vec()),
        ("last frame dropped", stored[..stored.len() - last_frame].to_vec()),
        ("cut inside the last frame", stored[..stored.len() - 1].to_vec()),
        ("a bit flipped in the first frame", {
            let mut bytes = stored.to_vec();
            bytes[40] ^= 4;
            bytes
        }),
    ];
    for (what, bytes) in cases {
        let key = if what.starts_with("moved") { "tamper/elsewhere" } else { "tamper/original" };
        o.put(key, Bytes::from(bytes)).await?;
        expect_integrity(o.fetch_original(key, &file).await, key).with_context(|| what.to_string())?;
        ensure!(!file.exists(), "{what}: a partly written file was left behind");
    }
    o.delete_prefix("tamper").await?;
    Ok(())
}

const BAD_KEYS: &[&str] =
    &["", "/abs", "a//b", "a/", "..", "../x", "a/../b", ".", "./a", "a/./b", "a\0b", "a\nb", "a#1", "a\\b"];

async fn bad_keys_are_refused(o: &Objects) -> TestResult {
    let scratch = tempfile::tempdir()?;
    let file = scratch.path().join("f");
    let long = "k".repeat(1025);
    for key in BAD_KEYS.iter().copied().chain([long.as_str()]) {
        let data = Bytes::from_static(b"x");
        expect_key_error(o.put(key, data.clone()).await, &format!("put {key:?}"))?;
        expect_key_error(o.get(key).await, &format!("get {key:?}"))?;
        expect_key_error(o.head(key).await, &format!("head {key:?}"))?;
        expect_key_error(o.delete(key).await, &format!("delete {key:?}"))?;
        expect_key_error(o.put_sealed(key, data).await, &format!("put_sealed {key:?}"))?;
        expect_key_error(o.get_sealed(key).await, &format!("get_sealed {key:?}"))?;
        expect_key_error(o.assemble(&[], key, None).await, &format!("assemble to {key:?}"))?;
        expect_key_error(o.assemble(&[key.to_string()], "ok/dest", None).await, &format!("assemble from {key:?}"))?;
        expect_key_error(o.fetch_original(key, &file).await, &format!("fetch_original {key:?}"))?;
    }
    for prefix in ["/", "/a", "..", "../a", "a//", "a//b", "a/../b", "a\0"] {
        expect_key_error(o.list(prefix).await, &format!("list {prefix:?}"))?;
        expect_key_error(o.delete_prefix(prefix).await, &format!("delete_prefix {prefix:?}"))?;
        expect_key_error(o.put_dir(scratch.path(), prefix).await, &format!("put_dir to {prefix:?}"))?;
    }
    let error = o.put("a/../b", Bytes::new()).await.err().context("refused")?.to_string();
    ensure!(error.contains("a/../b"), "the error names the key: {error}");
    ensure!(o.head("ok/dest").await?.is_none(), "nothing was written");
    Ok(())
}

async fn put_dir_round_trip(o: &Objects) -> TestResult {
    let dir = tempfile::tempdir()?;
    let files: [(&str, Vec<u8>); 5] = [
        ("index.m3u8", b"#EXTM3U\n".to_vec()),
        ("v0/seg1.ts", pattern(188 * 50, 1)),
        ("v0/seg2.ts", pattern(188 * 7, 2)),
        ("v1/deep/empty.bin", Vec::new()),
        ("v1/playlist.m3u8", b"#EXTM3U\n#EXT-X-VERSION:3\n".to_vec()),
    ];
    for (relative, bytes) in &files {
        let path = dir.path().join(relative);
        std::fs::create_dir_all(path.parent().context("a parent")?)?;
        std::fs::write(path, bytes)?;
    }
    let expected: Vec<String> = files.iter().map(|(relative, _)| format!("putdir/pkg/v0/{relative}")).collect();
    let keys = o.put_dir(dir.path(), "putdir/pkg/v0/").await?;
    ensure!(keys == expected, "put_dir returned {keys:?}");
    ensure!(o.list("putdir/pkg").await? == expected, "list after put_dir");
    for (relative, bytes) in &files {
        let got = o.get(&format!("putdir/pkg/v0/{relative}")).await?.context("uploaded")?;
        ensure!(got[..] == bytes[..], "{relative} reads back");
    }
    // Without the trailing '/', the same keys.
    ensure!(o.put_dir(dir.path(), "putdir/pkg/v0").await? == expected, "prefix without '/'");
    let empty = tempfile::tempdir()?;
    ensure!(o.put_dir(empty.path(), "putdir/none").await?.is_empty(), "an empty directory");
    // A symbolic link is refused before anything is written.
    let linked = tempfile::tempdir()?;
    std::fs::write(linked.path().join("a.ts"), b"a")?;
    std::os::unix::fs::symlink("/etc/hostname", linked.path().join("link"))?;
    let result = o.put_dir(linked.path(), "putdir/linked").await;
    ensure!(matches!(result, Err(ObjectsError::File { .. })), "a symbolic link gave {result:?}");
    ensure!(o.list("putdir/linked").await?.is_empty(), "a refused put_dir wrote something");
    ensure!(o.delete_prefix("putdir").await? == expected.len() as u64, "delete_prefix of the package");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The file backend

fn file_store(dir: &FsPath, key: Option<AtRestKey>) -> anyhow::Result<Objects> {
    let url = url::Url::from_directory_path(dir).map_err(|()| anyhow::anyhow!("not absolute: {}", dir.display()))?;
    Ok(Objects::open(url.as_str(), &S3Options::default(), key)?)
}

#[tokio::test]
async fn file_plain() -> TestResult {
    let dir = tempfile::tempdir()?;
    let o = file_store(dir.path(), None)?;
    ensure!(o.backend() == "file" && !o.encrypted(), "backend and encryption");
    suite(&o).await
}

#[tokio::test]
async fn file_encrypted() -> TestResult {
    let dir = tempfile::tempdir()?;
    let o = file_store(dir.path(), Some(test_key()))?;
    ensure!(o.backend() == "file" && o.encrypted(), "backend and encryption");
    suite(&o).await
}

#[tokio::test]
async fn file_on_disk_is_ciphertext_when_encrypting() -> TestResult {
    let dir = tempfile::tempdir()?;
    let o = file_store(dir.path(), Some(test_key()))?;
    let marker = b"plaintext that must never reach the disk as it is";
    o.put_sealed("uploads/u/00000000", Bytes::from_static(marker)).await?;
    let on_disk = std::fs::read(dir.path().join("uploads/u/00000000"))?;
    ensure!(!contains(&on_disk, marker) && on_disk.len() == marker.len() + SEALED_OVERHEAD as usize, "sealed");
    o.assemble(&["uploads/u/00000000".to_string()], "originals/x", None).await?;
    let on_disk = std::fs::read(dir.path().join("originals/x"))?;
    ensure!(!contains(&on_disk, marker), "the original on disk holds the plaintext");
    // A sealed chunk copied by hand on disk to another name does not open.
    std::fs::copy(dir.path().join("uploads/u/00000000"), dir.path().join("uploads/u/00000001"))?;
    expect_integrity(o.get_sealed("uploads/u/00000001").await, "uploads/u/00000001")?;
    // The same directory opened without the key gives the stored bytes; with another key, an error.
    let plain = file_store(dir.path(), None)?;
    ensure!(plain.get_sealed("uploads/u/00000000").await?.as_deref() != Some(&marker[..]), "opened without a key");
    let other = file_store(dir.path(), Some(AtRestKey::from_bytes(&[1; 32])?))?;
    expect_integrity(other.get_sealed("uploads/u/00000000").await, "uploads/u/00000000")?;
    Ok(())
}

#[tokio::test]
async fn file_keys_never_escape_the_root() -> TestResult {
    let outer = tempfile::tempdir()?;
    let root = outer.path().join("store");
    let o = file_store(&root, None)?;
    ensure!(root.is_dir(), "open creates the directory");
    bad_keys_are_refused(&o).await?;
    // Characters that are fine in a key stay inside the root even if a layer decodes them.
    for key in ["a%2F..%2F..%2Fescaped", "%2e%2e/x", "sp ace/é"] {
        o.put(key, Bytes::from_static(b"x")).await?;
        ensure!(o.get(key).await?.as_deref() == Some(&b"x"[..]), "{key} reads back");
        ensure!(o.list("").await?.contains(&key.to_string()), "{key} is listed as itself");
    }
    let outside: Vec<_> =
        std::fs::read_dir(outer.path())?.map(|e| e.map(|e| e.file_name())).collect::<std::io::Result<_>>()?;
    ensure!(outside == ["store"], "something was written beside the root: {outside:?}");
    Ok(())
}

#[tokio::test]
async fn file_put_dir_removes_what_it_wrote_on_failure() -> TestResult {
    let dir = tempfile::tempdir()?;
    let o = file_store(dir.path(), None)?;
    // A file where put_dir needs a directory: on a filesystem that upload fails, the others do not.
    o.put("pkg/sub", Bytes::from_static(b"a file")).await?;
    let source = tempfile::tempdir()?;
    for relative in ["a.ts", "b.ts", "c.ts", "sub/x.ts"] {
        let path = source.path().join(relative);
        std::fs::create_dir_all(path.parent().context("a parent")?)?;
        std::fs::write(path, relative)?;
    }
    let result = o.put_dir(source.path(), "pkg").await;
    ensure!(result.is_err(), "put_dir over a file succeeded: {result:?}");
    ensure!(o.list("pkg").await? == ["pkg/sub"], "put_dir left {:?}", o.list("pkg").await?);
    Ok(())
}

#[tokio::test]
async fn open_refuses_bad_urls_naming_them() -> TestResult {
    let options = S3Options::default();
    for url in
        ["relative/dir", "http://example.invalid/x", "s3://", "s3://bucket/prefix", "file://host/dir", "s3://b?x=1"]
    {
        match Objects::open(url, &options, None) {
            Err(e @ ObjectsError::BadUrl { .. }) => {
                ensure!(e.to_string().contains(url), "the error names the URL: {e}")
            }
            other => bail!("{url}: expected BadUrl, got {other:?}"),
        }
    }
    Ok(())
}

#[test]
fn debug_shows_no_credentials() -> TestResult {
    let options = S3Options {
        endpoint: Some("http://127.0.0.1:9".into()),
        access_key_id: Some("AKIDEXAMPLE".into()),
        secret_access_key: Some("a-very-secret-value".into()),
        allow_http: true,
        ..S3Options::default()
    };
    let o = Objects::open("s3://some-bucket", &options, Some(test_key()))?;
    let shown = format!("{o:?}");
    ensure!(shown.contains("some-bucket") && shown.contains("encrypted: true"), "{shown}");
    ensure!(!shown.contains("a-very-secret-value") && !shown.contains("AKIDEXAMPLE"), "{shown}");
    Ok(())
}

#[test]
fn s3_options_from_toml() -> TestResult {
    let options: S3Options = toml::from_str("endpoint = \"http://127.0.0.1:9000\"\nallow_http = true")?;
    ensure!(options.region == "us-east-1" && options.allow_http, "{options:?}");
    ensure!(S3Options::default().region == "us-east-1", "the default region");
    ensure!(toml::from_str::<S3Options>("bucket = \"x\"").is_err(), "an unknown field is refused");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The S3 backend: moto

/// A moto server on 127.0.0.1, killed (by its process id) when dropped, test failure included.
struct Moto {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// Starts moto on a free port. The port is found by binding port 0 and released before moto
    /// binds it, so another process may take it meanwhile: then moto exits, and one more port is
    /// tried.
    async fn start(server: &FsPath) -> anyhow::Result<Moto> {
        let mut last_error = None;
        for _ in 0..2 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let dir = tempfile::tempdir()?;
            let log = dir.path().join("moto.log");
            let log_file = std::fs::File::create(&log)?;
            let child = Command::new(server)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(log_file.try_clone()?)
                .stderr(log_file)
                .spawn()
                .with_context(|| format!("starting {}", server.display()))?;
            let mut moto = Moto { child, port, log, _dir: dir };
            match moto.wait_ready().await {
                Ok(()) => return Ok(moto),
                // Exited: most likely the port was taken. Not answering in time is final.
                Err(e) if moto.child.try_wait()?.is_some() => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("moto did not start")))
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn client() -> anyhow::Result<reqwest::Client> {
        Ok(reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build()?)
    }

    /// Polls until moto answers HTTP, it exits, or a minute passes (a first start compiles
    /// Python's bytecode).
    async fn wait_ready(&mut self) -> TestResult {
        let client = Self::client()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("moto exited ({status}) on port {}:\n{}", self.port, self.log_tail());
            }
            if client.get(self.url()).send().await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("moto did not answer on port {} within 60 s:\n{}", self.port, self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// object_store cannot create buckets: an unsigned PUT, which moto accepts.
    async fn create_bucket(&self, bucket: &str) -> TestResult {
        let response = Self::client()?.put(format!("{}/{bucket}", self.url())).send().await?;
        ensure!(response.status().is_success(), "creating bucket {bucket}: {}", response.status());
        Ok(())
    }

    fn objects(&self, bucket: &str, key: Option<AtRestKey>) -> anyhow::Result<Objects> {
        let options = S3Options {
            endpoint: Some(self.url()),
            region: "us-east-1".into(),
            // Given, so that the client never looks for credentials elsewhere (the instance
            // metadata service is not on 127.0.0.1).
            access_key_id: Some("testing".into()),
            secret_access_key: Some("testing".into()),
            allow_http: true,
        };
        Ok(Objects::open(&format!("s3://{bucket}"), &options, key)?)
    }
}

fn moto_server() -> Option<PathBuf> {
    match std::env::var_os("EDDY_TEST_MOTO_SERVER") {
        Some(path) if !path.is_empty() => Some(PathBuf::from(path)),
        _ => {
            println!("skipped: EDDY_TEST_MOTO_SERVER is not set; scripts/test.sh installs moto");
            None
        }
    }
}

async fn s3_suite(key: Option<AtRestKey>) -> TestResult {
    let Some(server) = moto_server() else { return Ok(()) };
    let moto = Moto::start(&server).await?;
    moto.create_bucket("eddy-test").await?;
    let o = moto.objects("eddy-test", key)?;
    ensure!(o.backend() == "s3", "backend");
    suite(&o).await.with_context(|| format!("moto's log ends with:\n{}", moto.log_tail()))
}

#[tokio::test]
async fn s3_plain() -> TestResult {
    s3_suite(None).await
}

#[tokio::test]
async fn s3_encrypted() -> TestResult {
    s3_suite(Some(test_key())).await
}
