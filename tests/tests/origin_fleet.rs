//! A fleet of origins: the same `eddy-origin` code runs on PostgreSQL and S3 when its config names them
//! by URL (`[metadata] url = "postgres://…"`, `[storage] url = "s3://BUCKET"`), and then two origins
//! sharing them are one service. A video uploaded through one plays from the other, sealed at rest in
//! the bucket with the AES-128 key going only to viewers; the same file uploaded through the other is
//! deduplicated and packaged once in the whole fleet; and no origin keeps objects on its own disk.
//!
//! It needs a PostgreSQL server (`EDDY_TEST_POSTGRES_URL`) and moto (`EDDY_TEST_MOTO_SERVER`), which
//! `scripts/test.sh` provides; without them it says so on one line and passes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use eddy_tests::origin::{add_user, files_under, make_clip, Origin};
use eddy_tests::stores::{env_or_skip, Moto, PgSchema, MOTO_VAR, POSTGRES_VAR};
use eddy_tests::{bin_path, run_to_end};
use serde_json::Value;

const BUCKET: &str = "eddy-fleet";
/// The playback signing key that the origins (and their edges) share.
const SIGNING_KEY: &str = "3c0f9a51d27be4860f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a6978";
/// The at-rest key that the origins share: 64 hex characters, AES-256.
const AT_REST_KEY: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccddeeff00";
const READY_RUNS: &str = "eddy_origin_packaging_runs_total{result=\"ready\"}";
const FAILED_RUNS: &str = "eddy_origin_packaging_runs_total{result=\"failed\"}";

/// One config for every origin of the fleet: metadata in the PostgreSQL schema, objects in the
/// bucket on moto, sealed at rest with the shared key, playback tokens signed with the shared key.
fn fleet_config(work: &Path, metadata_url: &str, s3_endpoint: &str) -> Result<PathBuf> {
    let signing_key = work.join("playback.key");
    std::fs::write(&signing_key, SIGNING_KEY)?;
    let at_rest_key = work.join("at-rest.key");
    std::fs::write(&at_rest_key, AT_REST_KEY)?;
    let config = work.join("origin.toml");
    std::fs::write(
        &config,
        format!(
            "[metadata]\nurl = {metadata_url:?}\n\n\
             [storage]\nurl = \"s3://{BUCKET}\"\n\
             s3 = {{ endpoint = {s3_endpoint:?}, region = \"us-east-1\", access_key_id = \"test\", \
             secret_access_key = \"test\", allow_http = true }}\n\
             encrypt = true\nkey_file = {at_rest:?}\n\n\
             [auth]\nsigning_key_file = {signing:?}\n\n\
             [uploads]\nchunk_size = \"64KiB\"\n\n\
             [packaging]\nladder = \"240p:300k\"\npreset = \"ultrafast\"\npoll_interval = \"1s\"\n",
            at_rest = at_rest_key.display().to_string(),
            signing = signing_key.display().to_string(),
        ),
    )?;
    Ok(config)
}

fn client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build()?)
}

/// A GET with an optional API token: the status and the body.
async fn get(url: &str, token: Option<&str>) -> Result<(u16, bytes::Bytes)> {
    let mut request = client()?.get(url);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = request.send().await.with_context(|| url.to_string())?;
    Ok((response.status().as_u16(), response.bytes().await?))
}

/// `GET /v1/videos/{id}` on `origin`, which must answer 200.
async fn video(origin: &Origin, id: &str, token: &str) -> Result<Value> {
    let (status, body) = get(&origin.url(&format!("/v1/videos/{id}")), Some(token)).await?;
    ensure!(status == 200, "GET /v1/videos/{id} on {}: {status} {}", origin.addr, String::from_utf8_lossy(&body));
    Ok(serde_json::from_slice(&body)?)
}

/// `eddy-upload FILE --origin URL --token T --wait --quiet`, which must succeed: its `video:` line.
fn upload_and_wait(file: &Path, origin: &Origin, token: &str) -> Result<(String, String)> {
    let mut command = Command::new(bin_path("eddy-upload"));
    command.arg(file).args(["--origin", &origin.url(""), "--token", token, "--wait", "--quiet"]);
    let output = run_to_end(command, Duration::from_secs(180))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(
        output.status.success(),
        "eddy-upload through {} ({}):\n{stdout}\n{}",
        origin.addr,
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let id = line_value(&stdout, "video:").with_context(|| format!("a video: line in {stdout:?}"))?;
    Ok((id.to_string(), stdout))
}

fn line_value<'a>(stdout: &'a str, label: &str) -> Option<&'a str> {
    stdout.lines().find_map(|line| line.strip_prefix(label)).map(str::trim)
}

/// `/metrics`' `series`, summed over the fleet.
async fn fleet_total(origins: &[&Origin], series: &str) -> Result<f64> {
    let mut total = 0.0;
    for origin in origins {
        total += origin.metric(series).await?;
    }
    Ok(total)
}

/// Decrypts an HLS AES-128 segment with `openssl` (CBC, the media sequence number as the IV).
fn openssl_decrypt(work: &Path, key: &[u8], sequence: u64, segment: &[u8]) -> Result<Vec<u8>> {
    let (input, output) = (work.join("segment.enc"), work.join("segment.ts"));
    std::fs::write(&input, segment)?;
    let mut command = Command::new("openssl");
    command
        .args(["enc", "-d", "-aes-128-cbc", "-K", &hex::encode(key), "-iv", &format!("{sequence:032x}"), "-in"])
        .arg(&input)
        .arg("-out")
        .arg(&output);
    let run = run_to_end(command, Duration::from_secs(30))?;
    ensure!(run.status.success(), "openssl could not decrypt the segment: {}", String::from_utf8_lossy(&run.stderr));
    Ok(std::fs::read(&output)?)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_origins_sharing_postgresql_and_s3_serve_each_others_uploads_and_package_once() -> Result<()> {
    let Some(env) = env_or_skip(&[MOTO_VAR, POSTGRES_VAR]) else { return Ok(()) };
    let (moto_server, postgres_url) = (&env[0], &env[1]);
    let started = Instant::now();

    // The shared stores, torn down last (locals drop in reverse order): a bucket on moto and a fresh
    // schema on PostgreSQL.
    let moto = Moto::start(Path::new(moto_server))?;
    moto.create_bucket(BUCKET).await?;
    let schema = PgSchema::create(postgres_url)?;

    let work = tempfile::Builder::new().prefix("eddy-origin-fleet").tempdir()?;
    let clip = work.path().join("clip.mp4");
    make_clip(&clip, 4)?;
    let config = fleet_config(work.path(), &schema.url, &moto.url())?;

    // Two origins, one config, each with a data folder of its own.
    let (data_a, data_b) = (work.path().join("a"), work.path().join("b"));
    let a = Origin::start(&data_a, &config)?;
    let b = Origin::start(&data_b, &config)?;
    // Users made through either origin's data folder land in the one database.
    let alice = add_user(&data_a, &config, "alice")?;
    let bob = add_user(&data_b, &config, "bob")?;
    let fleet = [&a, &b];

    // Alice uploads through A and waits for packaging, wherever it runs.
    let (id, stdout) = upload_and_wait(&clip, &a, &alice)?;
    ensure!(line_value(&stdout, "playback:").is_some_and(|url| url.contains("token=")), "a playback line: {stdout}");

    // B knows the video, ready, from the shared metadata.
    let on_b = video(&b, &id, &alice).await?;
    assert_eq!(on_b["state"], "ready", "B sees A's upload ready: {on_b}");
    let sha = on_b["sha256"].as_str().context("sha256 on B")?.to_string();
    assert_eq!(video(&a, &id, &alice).await?["sha256"].as_str(), Some(sha.as_str()), "A and B agree");

    // B's playback URL plays from B: the master playlist, the media playlist and a segment, read from
    // the bucket, and the AES-128 key, unsealed with the shared at-rest key, only with the token.
    let (status, playback) = get(&b.url(&format!("/v1/videos/{id}/playback")), Some(&alice)).await?;
    ensure!(status == 200, "playback from B: {status} {}", String::from_utf8_lossy(&playback));
    let playback: Value = serde_json::from_slice(&playback)?;
    let master_url = playback["url"].as_str().context("url")?;
    let token = playback["token"].as_str().context("token")?;
    ensure!(master_url.starts_with(&b.url(&format!("/videos/{id}/"))), "B's URL names B: {master_url}");
    let (status, master) = get(master_url, None).await?;
    let master = String::from_utf8_lossy(&master).into_owned();
    ensure!(status == 200 && master.contains("240p/index.m3u8"), "master playlist from B: {status}\n{master}");

    let media_url = b.url(&format!("/videos/{id}/240p/index.m3u8?token={token}"));
    let (status, media) = get(&media_url, None).await?;
    let media = String::from_utf8_lossy(&media).into_owned();
    ensure!(status == 200 && media.contains("METHOD=AES-128"), "an encrypted media playlist from B: {status}\n{media}");
    let sequence: u64 = line_value(&media, "#EXT-X-MEDIA-SEQUENCE:").map_or(Ok(0), str::parse)?;
    ensure!(!media.contains("IV="), "the packager uses the implicit IV: {media}");
    let first = media.lines().find(|line| !line.is_empty() && !line.starts_with('#')).context("a segment")?;
    let (status, segment) = get(&b.url(&format!("/videos/{id}/240p/{first}?token={token}")), None).await?;
    ensure!(status == 200 && !segment.is_empty(), "segment {first} from B: {status}");

    let key_url = b.url(&format!("/videos/{id}/enc.key"));
    assert_eq!(get(&key_url, None).await?.0, 403, "no key without a token");
    let (status, key) = get(&format!("{key_url}?token={token}"), None).await?;
    assert_eq!(status, 200, "the key with the token");
    assert_eq!(key.len(), 16, "an AES-128 key");
    let plain = openssl_decrypt(work.path(), &key, sequence, &segment)?;
    ensure!(
        plain.len() % 188 == 0 && plain.iter().step_by(188).all(|byte| *byte == 0x47),
        "the key from B opens the segment from B into MPEG-TS ({} bytes)",
        plain.len()
    );
    ensure!(segment.iter().step_by(188).any(|byte| *byte != 0x47), "the segment as served is not plain MPEG-TS");

    // Bob uploads the same bytes through B: deduplicated, and the fleet packaged them once.
    let (bobs_id, _) = upload_and_wait(&clip, &b, &bob)?;
    assert_ne!(bobs_id, id, "a video of Bob's own");
    let bobs = video(&a, &bobs_id, &bob).await?;
    assert_eq!(bobs["sha256"].as_str(), Some(sha.as_str()), "A sees Bob's video on Alice's content: {bobs}");
    assert_eq!(bobs["state"], "ready", "{bobs}");
    assert_eq!(b.metric("eddy_origin_uploads_completed_total{result=\"deduplicated\"}").await?, 1.0);
    assert_eq!(fleet_total(&fleet, READY_RUNS).await?, 1.0, "one packaging run in the whole fleet");
    assert_eq!(fleet_total(&fleet, FAILED_RUNS).await?, 0.0, "no failed run");

    // The objects are in the bucket, once, and the original is sealed there.
    let originals = moto.keys(BUCKET, "originals/").await?;
    assert_eq!(originals, [format!("originals/{sha}")], "one stored original");
    let packaged = moto.keys(BUCKET, &format!("packaged/{sha}/")).await?;
    for name in ["master.m3u8", "240p/index.m3u8", "enc.key"] {
        let key = format!("packaged/{sha}/{name}");
        ensure!(packaged.contains(&key), "{key} is in the bucket: {packaged:?}");
    }
    let stored = moto.object(BUCKET, &originals[0]).await?;
    let clip_bytes = std::fs::read(&clip)?;
    let probe = &clip_bytes[1024..1024 + 256];
    assert!(!stored.windows(probe.len()).any(|w| w == probe), "the original in the bucket is sealed");
    let stored_key = moto.object(BUCKET, &format!("packaged/{sha}/enc.key")).await?;
    assert!(!stored_key.windows(key.len()).any(|w| w == &key[..]), "the AES-128 key in the bucket is sealed");

    // And nothing under either origin's own objects folder.
    for data in [&data_a, &data_b] {
        let local = files_under(&data.join("objects"));
        assert!(local.is_empty(), "{} holds no objects: {local:?}", data.display());
    }
    println!("two origins on PostgreSQL and S3: {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
