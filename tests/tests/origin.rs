//! The origin end to end: `eddy-origin`, `eddy-upload`, `eddy-edge` and `eddy-play` as users run them.
//! An upload is cut off halfway and resumed, packaged, shared, and played through an edge that checks
//! signed URLs; the same file uploaded twice is stored and packaged once; a file GStreamer cannot
//! decode fails with a reason; a job cut short by a crash runs again after a restart; originals are
//! sealed at rest and the AES-128 key goes only to viewers; an abandoned upload is deleted.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use eddy_tests::origin::{files_under, make_clip, wait_for, Origin, StallingProxy};
use eddy_tests::{bin_path, run_to_end, start_edge};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const SIGNING_KEY: &str = "6a1f0c3b9e8d7a6554433221100ffeeddccbbaa99887766554433221100ffee";

struct Setup {
    work: tempfile::TempDir,
    key_file: PathBuf,
    config: PathBuf,
    data: PathBuf,
}

/// A work folder with a signing key and an origin config: 64 KiB chunks, one 240p rung packaged fast.
fn setup(extra: &str) -> Result<Setup> {
    let work = tempfile::Builder::new().prefix("eddy-origin-test").tempdir()?;
    let key_file = work.path().join("playback.key");
    std::fs::write(&key_file, SIGNING_KEY)?;
    let config = work.path().join("origin.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\nsigning_key_file = {key:?}\n\n[uploads]\nchunk_size = \"64KiB\"\n\n\
             [packaging]\nladder = \"240p:300k\"\npreset = \"ultrafast\"\n{extra}\n",
            key = key_file.display().to_string()
        ),
    )?;
    let data = work.path().join("data");
    Ok(Setup { work, key_file, config, data })
}

fn sha256_hex(path: &Path) -> Result<String> {
    Ok(hex::encode(Sha256::digest(std::fs::read(path)?)))
}

async fn call(method: reqwest::Method, url: &str, token: Option<&str>, body: Option<Value>) -> Result<(u16, Value)> {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if let Some(body) = body {
        request = request.header("content-type", "application/json").body(body.to_string());
    }
    let response = request.send().await.with_context(|| url.to_string())?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await?;
    Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
}

/// Runs `eddy-upload FILE --origin URL --token T` plus `args` to its end.
fn upload(file: &Path, origin: &str, token: &str, args: &[&str], timeout: Duration) -> Result<(bool, String, String)> {
    let mut command = Command::new(bin_path("eddy-upload"));
    command.arg(file).args(["--origin", origin, "--token", token, "--quiet"]).args(args);
    let output = run_to_end(command, timeout)?;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

fn line_value<'a>(stdout: &'a str, label: &str) -> Option<&'a str> {
    stdout.lines().find_map(|line| line.strip_prefix(label)).map(str::trim)
}

/// Plays `url` headless with a report; returns the report.
fn play(url: &str, work: &Path, args: &[&str], timeout: Duration) -> Result<Value> {
    let report = work.join(format!("report-{}.json", rand_suffix()));
    let mut command = Command::new(bin_path("eddy-play"));
    command.arg(url).args(["--headless", "--quiet", "--report"]).arg(&report).args(args);
    let output = run_to_end(command, timeout)?;
    ensure!(output.status.success(), "eddy-play {url}: {}", String::from_utf8_lossy(&output.stderr));
    Ok(serde_json::from_slice(&std::fs::read(&report)?)?)
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

async fn video_state(origin: &Origin, id: &str, token: &str) -> Result<Value> {
    let (status, body) =
        call(reqwest::Method::GET, &origin.url(&format!("/v1/videos/{id}")), Some(token), None).await?;
    ensure!(status == 200, "GET video {id}: {status} {body}");
    Ok(body)
}

async fn wait_until_settled(origin: &Origin, id: &str, token: &str) -> Result<Value> {
    wait_for(Duration::from_secs(180), "packaging to end", || async {
        let video = video_state(origin, id, token).await?;
        Ok(matches!(video["state"].as_str(), Some("ready" | "failed")).then_some(video))
    })
    .await
}

fn edge_config(setup: &Setup) -> Result<PathBuf> {
    let path = setup.work.path().join("edge.toml");
    std::fs::write(
        &path,
        format!(
            "[auth]\nsigned_urls = {{ key_file = {:?}, param = \"token\", prefixes = [\"/videos/\"] }}\n",
            setup.key_file.display().to_string()
        ),
    )?;
    Ok(path)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_cut_off_halfway_resumes_then_plays_through_the_edge_for_a_shared_user_only() -> Result<()> {
    let setup = setup("")?;
    let clip = setup.work.path().join("clip.mp4");
    make_clip(&clip, 20)?;
    let size = std::fs::metadata(&clip)?.len();
    let origin = Origin::start(&setup.data, &setup.config)?;
    let alice = origin.add_user("alice")?;
    let bob = origin.add_user("bob")?;
    let carol = origin.add_user("carol")?;

    // The first run goes through a link that stops passing anything once half the file went by; the
    // client, stuck, is killed as a user would with Ctrl-C on a dead network.
    let proxy = StallingProxy::start(origin.addr, size / 2)?;
    let mut first = Command::new(bin_path("eddy-upload"))
        .arg(&clip)
        .args(["--origin", &proxy.url(), "--token", &alice, "--parallel", "2", "--quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let stalled = tokio::task::spawn_blocking(move || proxy.stalled.recv_timeout(Duration::from_secs(60))).await?;
    first.kill()?;
    first.wait()?;
    stalled.context("the upload never reached half the file")?;

    // Posting the same file again finds the open upload: this is how a client resumes.
    let (status, resumed) = call(
        reqwest::Method::POST,
        &origin.url("/v1/uploads"),
        Some(&alice),
        Some(json!({"filename": "clip.mp4", "size": size, "sha256": sha256_hex(&clip)?})),
    )
    .await?;
    ensure!(status == 200, "re-posting resumes the open upload: {status} {resumed}");
    let total = resumed["chunks"].as_array().map_or(0, Vec::len);
    let received = resumed["received"].as_array().map_or(0, Vec::len);
    ensure!(received > 0 && received < total, "part of the file arrived: {received} of {total} chunks");
    assert_eq!(origin.metric("eddy_origin_chunks_received_total").await?, received as f64);

    let (ok, stdout, stderr) = upload(&clip, &origin.url(""), &alice, &["--wait"], Duration::from_secs(240))?;
    ensure!(ok, "the second run resumes and finishes: {stderr}");
    let video_id = line_value(&stdout, "video:").context("a video: line")?.to_string();
    assert_eq!(video_id, resumed["video_id"].as_str().unwrap_or_default());
    ensure!(line_value(&stdout, "playback:").is_some_and(|url| url.contains("token=")), "{stdout}");
    assert_eq!(
        origin.metric("eddy_origin_chunks_received_total").await?,
        total as f64,
        "the second run sent only the chunks that were missing"
    );

    // Alice shares with Bob. Carol is not on the list.
    let (status, body) = call(
        reqwest::Method::POST,
        &origin.url(&format!("/v1/videos/{video_id}/shares")),
        Some(&alice),
        Some(json!({"user": "bob"})),
    )
    .await?;
    ensure!(status == 204, "share: {status} {body}");
    let playback = |token: String| {
        let url = origin.url(&format!("/v1/videos/{video_id}/playback"));
        async move { call(reqwest::Method::GET, &url, Some(&token), None).await }
    };
    let (status, body) = playback(carol.clone()).await?;
    assert_eq!(status, 403, "a user the video is not shared with gets no playback URL: {body}");
    let (status, bobs) = playback(bob.clone()).await?;
    ensure!(status == 200, "bob may watch: {status} {bobs}");

    let edge = start_edge(&["--config", edge_config(&setup)?.to_str().context("utf8")?, "--origin", &origin.url("")])?;
    // The origin's playback URLs name the origin itself here (no `playback_url` in its config, since the
    // edge's port is only known once it started); viewers play through the edge.
    let through_edge = |url: &str| url.replace(&origin.url(""), &edge.url(""));
    let bobs_url = through_edge(bobs["url"].as_str().context("url")?);
    let report = play(&bobs_url, setup.work.path(), &[], Duration::from_secs(90))?;
    assert_eq!(report["stall_count"], 0, "{report}");
    let played = report["played_s"].as_f64().unwrap_or(0.0);
    ensure!((played - 20.0).abs() < 0.5, "bob played the whole 20 s: {played}");

    // Without a token the edge refuses, and asks nothing of the origin.
    let served_before = origin.metric("eddy_origin_served_total{result=\"ok\"}").await?;
    let refused = reqwest::get(edge.url(&format!("/videos/{video_id}/master.m3u8"))).await?;
    assert_eq!(refused.status().as_u16(), 403);
    // A second authorised viewer is served from the edge's cache: the origin sees nothing new.
    let (_, alices) = playback(alice.clone()).await?;
    let report = play(
        &through_edge(alices["url"].as_str().context("url")?),
        setup.work.path(),
        &["--duration", "6"],
        Duration::from_secs(60),
    )?;
    assert_eq!(report["stall_count"], 0, "{report}");
    assert_eq!(
        origin.metric("eddy_origin_served_total{result=\"ok\"}").await?,
        served_before,
        "the origin sees each file once however many viewers play"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_file_uploaded_by_two_users_is_stored_once_and_packaged_once() -> Result<()> {
    let setup = setup("")?;
    let clip = setup.work.path().join("clip.mp4");
    make_clip(&clip, 4)?;
    let origin = Origin::start(&setup.data, &setup.config)?;
    let alice = origin.add_user("alice")?;
    let bob = origin.add_user("bob")?;
    let (ok, first, stderr) = upload(&clip, &origin.url(""), &alice, &["--wait"], Duration::from_secs(120))?;
    ensure!(ok, "{stderr}");
    let (ok, second, stderr) = upload(&clip, &origin.url(""), &bob, &["--wait"], Duration::from_secs(120))?;
    ensure!(ok, "{stderr}");
    let first_id = line_value(&first, "video:").context("video line")?;
    let second_id = line_value(&second, "video:").context("video line")?;
    assert_ne!(first_id, second_id, "two videos");
    let a = video_state(&origin, first_id, &alice).await?;
    let b = video_state(&origin, second_id, &bob).await?;
    assert_eq!(a["sha256"], b["sha256"]);
    assert_eq!(b["state"], "ready");
    let originals = files_under(&setup.data.join("objects/originals"));
    assert_eq!(originals.len(), 1, "one stored original: {originals:?}");
    assert_eq!(origin.metric("eddy_origin_packaging_runs_total{result=\"ready\"}").await?, 1.0, "one packaging run");
    assert_eq!(origin.metric("eddy_origin_uploads_completed_total{result=\"deduplicated\"}").await?, 1.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_that_cannot_be_decoded_ends_failed_with_a_reason_and_leaves_nothing_packaged() -> Result<()> {
    let setup = setup("")?;
    let junk = setup.work.path().join("junk.mp4");
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&junk, bytes)?;
    let origin = Origin::start(&setup.data, &setup.config)?;
    let alice = origin.add_user("alice")?;
    let (ok, stdout, stderr) = upload(&junk, &origin.url(""), &alice, &["--wait"], Duration::from_secs(120))?;
    assert!(!ok, "--wait exits non-zero when packaging fails");
    let id = line_value(&stdout, "video:").context("video line")?;
    let video = video_state(&origin, id, &alice).await?;
    assert_eq!(video["state"], "failed");
    let reason = video["reason"].as_str().unwrap_or_default();
    ensure!(reason.contains("cannot be decoded"), "a clear reason: {reason:?}");
    ensure!(stderr.contains("cannot be decoded"), "the client says why: {stderr}");
    assert!(files_under(&setup.data.join("objects/packaged")).is_empty(), "nothing half-written");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_packaging_job_cut_short_by_a_crash_runs_again_after_a_restart() -> Result<()> {
    // A slow preset and a longer clip, so that the job is still running when the origin is killed.
    let setup = setup("")?;
    std::fs::write(
        &setup.config,
        std::fs::read_to_string(&setup.config)?.replace("preset = \"ultrafast\"", "preset = \"slow\""),
    )?;
    let clip = setup.work.path().join("clip.mp4");
    make_clip(&clip, 20)?;
    let mut origin = Origin::start(&setup.data, &setup.config)?;
    let alice = origin.add_user("alice")?;
    let (ok, stdout, stderr) = upload(&clip, &origin.url(""), &alice, &[], Duration::from_secs(60))?;
    ensure!(ok, "{stderr}");
    let id = line_value(&stdout, "video:").context("video line")?.to_string();
    wait_for(Duration::from_secs(60), "packaging to start", || async {
        Ok((video_state(&origin, &id, &alice).await?["state"] == "packaging").then_some(()))
    })
    .await?;
    origin.process.child.kill()?;
    origin.process.child.wait()?;
    assert!(files_under(&setup.data.join("objects/packaged")).is_empty(), "nothing published by the cut job");

    origin = Origin::start(&setup.data, &setup.config)?;
    let video = wait_until_settled(&origin, &id, &alice).await?;
    assert_eq!(video["state"], "ready", "{video}");
    assert_eq!(origin.metric("eddy_origin_packaging_runs_total{result=\"ready\"}").await?, 1.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn originals_are_sealed_at_rest_and_the_aes_key_goes_only_to_viewers() -> Result<()> {
    let setup = setup("\n[storage]\nencrypt = true\n")?;
    let clip = setup.work.path().join("clip.mp4");
    make_clip(&clip, 4)?;
    let origin = Origin::start(&setup.data, &setup.config)?;
    let alice = origin.add_user("alice")?;
    let (ok, stdout, stderr) = upload(&clip, &origin.url(""), &alice, &["--wait"], Duration::from_secs(120))?;
    ensure!(ok, "{stderr}");
    let id = line_value(&stdout, "video:").context("video line")?.to_string();

    let originals = files_under(&setup.data.join("objects/originals"));
    assert_eq!(originals.len(), 1);
    let stored = std::fs::read(&originals[0])?;
    let plain = std::fs::read(&clip)?;
    let probe = &plain[1024..1024 + 256];
    assert!(!stored.windows(probe.len()).any(|w| w == probe), "the stored original is not the plain file");

    let media = reqwest::Client::new()
        .get(origin.url(&format!("/videos/{id}/240p/index.m3u8")))
        .header("authorization", format!("Bearer {alice}"))
        .send()
        .await?
        .text()
        .await?;
    ensure!(media.contains("METHOD=AES-128"), "packaged with HLS AES-128: {media}");
    let key_url = origin.url(&format!("/videos/{id}/enc.key"));
    assert_eq!(reqwest::get(&key_url).await?.status().as_u16(), 403, "no key without a token");
    let (_, playback) =
        call(reqwest::Method::GET, &origin.url(&format!("/v1/videos/{id}/playback")), Some(&alice), None).await?;
    let token = playback["token"].as_str().context("token")?;
    let key = reqwest::get(format!("{key_url}?token={token}")).await?;
    assert_eq!(key.status().as_u16(), 200);
    assert_eq!(key.headers().get("cache-control").and_then(|v| v.to_str().ok()), Some("private, no-store"));
    assert_eq!(key.bytes().await?.len(), 16);

    let edge = start_edge(&["--config", edge_config(&setup)?.to_str().context("utf8")?, "--origin", &origin.url("")])?;
    let url = playback["url"].as_str().context("url")?.replace(&origin.url(""), &edge.url(""));
    let report = play(&url, setup.work.path(), &[], Duration::from_secs(60))?;
    assert_eq!(report["stall_count"], 0, "{report}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_abandoned_upload_expires_and_its_chunks_are_deleted() -> Result<()> {
    let setup = setup("")?;
    std::fs::write(
        &setup.config,
        std::fs::read_to_string(&setup.config)?.replace(
            "chunk_size = \"64KiB\"",
            "chunk_size = \"64KiB\"\nexpire_after = \"2s\"\njanitor_interval = \"1s\"",
        ),
    )?;
    let origin = Origin::start(&setup.data, &setup.config)?;
    let alice = origin.add_user("alice")?;
    let (status, created) = call(
        reqwest::Method::POST,
        &origin.url("/v1/uploads"),
        Some(&alice),
        Some(json!({"filename": "a.mp4", "size": 100_000})),
    )
    .await?;
    ensure!(status == 201, "{status} {created}");
    let id = created["upload_id"].as_str().context("id")?.to_string();
    let chunk_url = origin.url(created["chunks"][0]["url"].as_str().context("url")?);
    let put = reqwest::Client::new().put(&chunk_url).body(vec![7u8; 65_536]).send().await?;
    assert_eq!(put.status().as_u16(), 200);
    assert_eq!(files_under(&setup.data.join("objects/uploads")).len(), 1);
    wait_for(Duration::from_secs(20), "the upload to expire", || async {
        let (status, _) =
            call(reqwest::Method::GET, &origin.url(&format!("/v1/uploads/{id}")), Some(&alice), None).await?;
        Ok((status == 404).then_some(()))
    })
    .await?;
    assert!(files_under(&setup.data.join("objects/uploads")).is_empty(), "its chunks are deleted");
    let late = reqwest::Client::new().put(&chunk_url).body(vec![7u8; 65_536]).send().await?;
    assert!(late.status().is_client_error(), "a chunk for an expired upload is refused: {}", late.status());
    Ok(())
}

/// The `sh` blocks of a Markdown file, in order.
fn shell_blocks(markdown: &str) -> String {
    let mut script = String::new();
    let mut inside = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            inside = !inside && line.trim() == "```sh";
            continue;
        }
        if inside {
            script.push_str(line);
            script.push('\n');
        }
    }
    script
}

#[tokio::test(flavor = "multi_thread")]
async fn the_curl_examples_in_the_api_doc_run() -> Result<()> {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/origin-api.md");
    let script = shell_blocks(&std::fs::read_to_string(&doc)?);
    ensure!(script.contains("curl"), "the doc has its examples");
    let setup = setup("")?;
    make_clip(&setup.work.path().join("clip.mp4"), 4)?;
    std::fs::create_dir_all(&setup.data)?;
    // The doc's origin runs on built-in defaults, with only --data.
    std::fs::write(&setup.config, "")?;
    let origin = Origin::start(&setup.data, &setup.config)?;
    let bin_dir = bin_path("eddy-origin").parent().context("bin dir")?.to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut command = Command::new("bash");
    command
        .arg("-c")
        .arg(format!("set -euo pipefail\n{script}"))
        .current_dir(setup.work.path())
        .env("PATH", path)
        .env("ORIGIN", origin.url(""))
        .env("DATA", &setup.data);
    let output = run_to_end(command, Duration::from_secs(180))?;
    let (status, stdout, stderr) =
        (output.status, String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    ensure!(status.success(), "the doc's examples failed ({status}):\n{stdout}\n{stderr}");
    ensure!(stdout.contains("is ready"), "the video became ready: {stdout}");
    ensure!(stdout.contains("#EXTM3U"), "bob fetched the master playlist with the playback URL: {stdout}");
    Ok(())
}
