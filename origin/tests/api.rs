//! The API against hostile and mistaken clients: an origin in this process on 127.0.0.1 port 0, with a
//! SQLite database and a folder of objects in a temporary directory. No packaging runs here: where a
//! test needs a ready video, it stores the packaged files itself (tests/tests/origin.rs runs the
//! packager end to end).

use std::sync::Arc;

use bytes::Bytes;
use eddy_origin::config::{Config, Overrides};
use eddy_origin::meta::{CompleteOutcome, Visibility};
use eddy_origin::service::{now_unix, Origin};
use eddy_origin::{server, tokens};
use eddy_shared::signed_url;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

struct Running {
    origin: Arc<Origin>,
    base: String,
    _dir: tempfile::TempDir,
    client: reqwest::Client,
}

async fn start() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let mut config =
        Config::defaults(Overrides { listen: Some("127.0.0.1:0".into()), data: Some(dir.path().to_path_buf()) })
            .unwrap();
    config.chunk_size = 64 * 1024;
    let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let origin = Arc::new(Origin::open(config, addr).await.unwrap());
    tokio::spawn(server::serve(listener, origin.clone(), std::future::pending()));
    Running { origin, base: format!("http://{addr}"), _dir: dir, client: reqwest::Client::new() }
}

impl Running {
    async fn user(&self, name: &str) -> String {
        let secret = tokens::new_secret();
        let user = self.origin.meta.add_user(name, &secret.salt, &secret.hash, now_unix()).await.unwrap();
        tokens::token(&user.id, &secret.secret)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let url = if path.starts_with("http") { path.to_string() } else { format!("{}{path}", self.base) };
        let mut request = self.client.request(method, url);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn create(&self, token: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, "/v1/uploads", Some(token), Some(body)).await
    }

    async fn put(&self, url: &str, bytes: Vec<u8>) -> reqwest::Response {
        self.client.put(format!("{}{url}", self.base)).body(bytes).send().await.unwrap()
    }

    /// Uploads `bytes` whole as `token`'s user and completes it.
    async fn upload(&self, token: &str, bytes: &[u8]) -> (u16, Value) {
        let (status, created) = self.create(token, json!({"filename": "f.mp4", "size": bytes.len()})).await;
        assert_eq!(status, 201, "{created}");
        let mut etags = Vec::new();
        for chunk in created["chunks"].as_array().unwrap() {
            let index = chunk["index"].as_u64().unwrap() as usize;
            let part = bytes.chunks(64 * 1024).nth(index).unwrap().to_vec();
            etags.push(hex::encode(Sha256::digest(&part)));
            assert_eq!(self.put(chunk["url"].as_str().unwrap(), part).await.status(), 200);
        }
        let id = created["upload_id"].as_str().unwrap();
        self.call(
            reqwest::Method::POST,
            &format!("/v1/uploads/{id}/complete"),
            Some(token),
            Some(json!({"etags": etags})),
        )
        .await
    }
}

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[tokio::test]
async fn a_presigned_url_opens_one_chunk_of_one_upload_until_it_expires() {
    let origin = start().await;
    let alice = origin.user("alice").await;
    let (_, created) = origin.create(&alice, json!({"filename": "a.mp4", "size": 100_000})).await;
    let url = created["chunks"][0]["url"].as_str().unwrap().to_string();
    let other = created["chunks"][1]["url"].as_str().unwrap().to_string();
    let tampered = [
        url.replace("/chunks/0?", "/chunks/1?"),
        url.replace("expires=", "expires=9"),
        // The signature's last hex digit changed (to another digit, whatever it was).
        format!("{}{}", &url[..url.len() - 1], if url.ends_with('0') { '1' } else { '0' }),
        url.split('?').next().unwrap().to_string(),
    ];
    for bad in &tampered {
        let response = origin.put(bad, bytes(65_536, 1)).await;
        assert_eq!(response.status(), 403, "{bad}");
    }
    // The second chunk's URL with the first chunk's bytes: wrong size for chunk 1 (34,464 bytes).
    assert_eq!(origin.put(&other, bytes(65_536, 1)).await.status(), 400);
    let response = origin.put(&url, bytes(65_536, 1)).await;
    assert_eq!(response.status(), 200, "no API token needed with a valid URL");
    let etag = response.headers().get("etag").unwrap().to_str().unwrap().to_string();
    assert_eq!(
        etag,
        format!("\"{}\"", hex::encode(Sha256::digest(bytes(65_536, 1)))),
        "the ETag is the chunk's SHA-256"
    );
    // An expired URL, signed correctly, is refused.
    let id = created["upload_id"].as_str().unwrap();
    let expired = eddy_origin::chunks::presign(&origin.origin.signing, id, 0, 1);
    assert_eq!(origin.put(&expired, bytes(65_536, 1)).await.status(), 403);
}

#[tokio::test]
async fn sending_a_chunk_again_is_harmless_and_the_status_lists_what_is_missing() {
    let origin = start().await;
    let alice = origin.user("alice").await;
    let (_, created) = origin.create(&alice, json!({"filename": "a.mp4", "size": 200_000})).await;
    let url = created["chunks"][1]["url"].as_str().unwrap();
    for _ in 0..2 {
        assert_eq!(origin.put(url, bytes(65_536, 2)).await.status(), 200);
    }
    let id = created["upload_id"].as_str().unwrap();
    let (status, upload) = origin.call(reqwest::Method::GET, &format!("/v1/uploads/{id}"), Some(&alice), None).await;
    assert_eq!(status, 200);
    assert_eq!(upload["received"].as_array().unwrap().len(), 1);
    assert_eq!(upload["missing"], json!([0, 2, 3]));
}

#[tokio::test]
async fn chunks_of_the_wrong_size_are_refused_and_nothing_is_recorded() {
    let origin = start().await;
    let alice = origin.user("alice").await;
    let (_, created) = origin.create(&alice, json!({"filename": "a.mp4", "size": 100_000})).await;
    let url = created["chunks"][0]["url"].as_str().unwrap();
    for len in [0, 65_535, 65_537, 1_000_000] {
        let response = origin.put(url, bytes(len, 3)).await;
        assert_eq!(response.status(), 400, "{len} bytes");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("65536"), "{body}");
    }
    let id = created["upload_id"].as_str().unwrap();
    let (_, upload) = origin.call(reqwest::Method::GET, &format!("/v1/uploads/{id}"), Some(&alice), None).await;
    assert_eq!(upload["received"], json!([]));
}

#[tokio::test]
async fn complete_checks_every_etag_and_every_chunk() {
    let origin = start().await;
    let alice = origin.user("alice").await;
    let data = bytes(100_000, 4);
    let (_, created) = origin.create(&alice, json!({"filename": "a.mp4", "size": data.len()})).await;
    let id = created["upload_id"].as_str().unwrap();
    let first = data[..65_536].to_vec();
    origin.put(created["chunks"][0]["url"].as_str().unwrap(), first.clone()).await;
    let good = hex::encode(Sha256::digest(&first));
    let complete_path = format!("/v1/uploads/{id}/complete");
    let complete =
        |etags: Value| origin.call(reqwest::Method::POST, &complete_path, Some(&alice), Some(json!({"etags": etags})));
    let (status, body) = complete(json!([good, "00"])).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("chunk 1 has not been received"), "{body}");
    origin.put(created["chunks"][1]["url"].as_str().unwrap(), data[65_536..].to_vec()).await;
    let (status, body) = complete(json!(["0".repeat(64), hex::encode(Sha256::digest(&data[65_536..]))])).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("chunk 0"), "{body}");
    let (status, body) = complete(json!([good])).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = complete(json!([good, hex::encode(Sha256::digest(&data[65_536..]))])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sha256"], hex::encode(Sha256::digest(&data)));
}

#[tokio::test]
async fn a_claimed_sha256_never_links_an_upload_to_content_its_uploader_did_not_send() {
    let origin = start().await;
    let alice = origin.user("alice").await;
    let mallory = origin.user("mallory").await;
    let secret = bytes(100_000, 5);
    let (status, body) = origin.upload(&alice, &secret).await;
    assert_eq!(status, 200, "{body}");
    let sha = hex::encode(Sha256::digest(&secret));
    // Mallory knows the hash and size, not the bytes.
    let (status, created) =
        origin.create(&mallory, json!({"filename": "x.mp4", "size": secret.len(), "sha256": sha})).await;
    assert_eq!(status, 201, "a fresh upload, not alice's: {created}");
    let mut etags = Vec::new();
    for chunk in created["chunks"].as_array().unwrap() {
        let part = bytes(chunk["size"].as_u64().unwrap() as usize, 9);
        etags.push(hex::encode(Sha256::digest(&part)));
        origin.put(chunk["url"].as_str().unwrap(), part).await;
    }
    let id = created["upload_id"].as_str().unwrap();
    let (status, body) = origin
        .call(
            reqwest::Method::POST,
            &format!("/v1/uploads/{id}/complete"),
            Some(&mallory),
            Some(json!({"etags": etags})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let video = created["video_id"].as_str().unwrap();
    let (_, status_body) =
        origin.call(reqwest::Method::GET, &format!("/v1/videos/{video}"), Some(&mallory), None).await;
    assert_eq!(status_body["state"], "uploading", "not linked to alice's content: {status_body}");
}

#[tokio::test]
async fn another_users_uploads_and_private_videos_look_missing() {
    let origin = start().await;
    let alice = origin.user("alice").await;
    let bob = origin.user("bob").await;
    let (_, created) = origin.create(&alice, json!({"filename": "a.mp4", "size": 1000})).await;
    let id = created["upload_id"].as_str().unwrap();
    let video = created["video_id"].as_str().unwrap();
    assert_eq!(origin.call(reqwest::Method::GET, &format!("/v1/uploads/{id}"), Some(&bob), None).await.0, 404);
    let (status, _) = origin
        .call(reqwest::Method::POST, &format!("/v1/uploads/{id}/complete"), Some(&bob), Some(json!({"etags": []})))
        .await;
    assert_eq!(status, 404);
    assert_eq!(origin.call(reqwest::Method::GET, &format!("/v1/videos/{video}"), Some(&bob), None).await.0, 404);
    assert_eq!(origin.call(reqwest::Method::GET, &format!("/v1/videos/{video}"), None, None).await.0, 404);
    let (status, _) = origin
        .call(reqwest::Method::POST, &format!("/v1/videos/{video}/shares"), Some(&bob), Some(json!({"user": "bob"})))
        .await;
    assert_eq!(status, 404, "bob cannot share himself in");
}

#[tokio::test]
async fn bad_requests_and_bad_tokens_get_errors_that_say_what_was_wrong() {
    let origin = start().await;
    let alice = origin.user("alice").await;
    let cases = [
        (json!({"filename": "a.mp4", "size": 0}), 400, "size"),
        (json!({"filename": "", "size": 10}), 400, "filename"),
        (json!({"filename": "a\u{7}", "size": 10}), 400, "filename"),
        (json!({"filename": "a.mp4", "size": 10, "sha256": "xyz"}), 400, "sha256"),
        (json!({"filename": "a.mp4", "size": u64::MAX}), 413, "limit"),
        (json!({"filename": "a.mp4"}), 400, "size"),
        (json!({"filename": "a.mp4", "size": 10, "extra": 1}), 400, "extra"),
    ];
    for (body, status, word) in cases {
        let (got, answer) = origin.create(&alice, body.clone()).await;
        assert_eq!(got, status, "{body} → {answer}");
        assert!(answer["error"].as_str().unwrap_or_default().contains(word), "{body} → {answer}");
    }
    for token in ["", "eddy_", "eddy_00_11", &alice.replace('a', "b"), "x".repeat(10_000).as_str()] {
        let (status, answer) = origin.create(token, json!({"filename": "a", "size": 1})).await;
        assert_eq!(status, 401, "{token:?} → {answer}");
    }
    let response =
        origin.client.post(format!("{}/v1/uploads", origin.base)).body(vec![b'{'; 1 << 20]).send().await.unwrap();
    assert!(response.status().is_client_error(), "a huge body is refused: {}", response.status());
}

/// A ready video whose packaged files this test stores itself.
async fn ready_video(origin: &Running, token: &str, visibility: Visibility) -> String {
    let data = bytes(1000, 7);
    let (_, created) = origin.create(token, json!({"filename": "a.mp4", "size": data.len()})).await;
    let upload = created["upload_id"].as_str().unwrap();
    let video = created["video_id"].as_str().unwrap().to_string();
    let sha = hex::encode(Sha256::digest(&data));
    let meta = &origin.origin.meta;
    assert_eq!(meta.complete_upload(upload, &sha, 1000, now_unix()).await.unwrap(), CompleteOutcome::NewContent);
    let claimed = meta.claim_job(now_unix()).await.unwrap().unwrap();
    meta.finish_job(&claimed.sha256, Ok(()), now_unix()).await.unwrap();
    meta.set_visibility(&video, visibility).await.unwrap();
    let objects = &origin.origin.objects;
    objects.put(&format!("packaged/{sha}/master.m3u8"), Bytes::from_static(b"#EXTM3U\n")).await.unwrap();
    objects.put(&format!("packaged/{sha}/240p/seg0.ts"), Bytes::from_static(b"segment")).await.unwrap();
    objects.put("secret.txt", Bytes::from_static(b"not for viewers")).await.unwrap();
    video
}

#[tokio::test]
async fn files_are_served_with_validators_and_lasting_cache_control_and_answer_304() {
    let origin = start().await;
    let alice = origin.user("alice").await;
    let video = ready_video(&origin, &alice, Visibility::Public).await;
    let url = format!("{}/videos/{video}/240p/seg0.ts", origin.base);
    let response = origin.client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["cache-control"], "public, max-age=31536000, immutable");
    let etag = headers["etag"].to_str().unwrap().to_string();
    let modified = headers["last-modified"].to_str().unwrap().to_string();
    assert_eq!(response.bytes().await.unwrap(), "segment");
    let again = origin.client.get(&url).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(again.status(), 304);
    let again = origin.client.get(&url).header("if-modified-since", &modified).send().await.unwrap();
    assert_eq!(again.status(), 304);
    let master = origin.client.get(format!("{}/videos/{video}/master.m3u8", origin.base)).send().await.unwrap();
    assert_eq!(master.headers()["cache-control"], "public, max-age=86400");
}

#[tokio::test]
async fn nothing_outside_a_videos_folder_is_served_and_private_files_need_a_token() {
    let origin = start().await;
    let alice = origin.user("alice").await;
    let video = ready_video(&origin, &alice, Visibility::Private).await;
    for path in [
        format!("/videos/{video}/../secret.txt"),
        format!("/videos/{video}/%2e%2e/%2e%2e/secret.txt"),
        format!("/videos/{video}/240p//seg0.ts"),
        format!("/videos/{video}/..%2f..%2fsecret.txt"),
        "/videos/../secret.txt".to_string(),
    ] {
        let response = origin.client.get(format!("{}{path}", origin.base)).send().await.unwrap();
        assert!(matches!(response.status().as_u16(), 400 | 403 | 404), "{path}: {}", response.status());
        assert_ne!(response.bytes().await.unwrap(), "not for viewers", "{path}");
    }
    let url = format!("{}/videos/{video}/240p/seg0.ts", origin.base);
    assert_eq!(origin.client.get(&url).send().await.unwrap().status(), 403);
    let prefix = format!("/videos/{video}/");
    let token = signed_url::sign(&origin.origin.signing, &prefix, now_unix() as u64 + 60);
    assert_eq!(origin.client.get(format!("{url}?token={token}")).send().await.unwrap().status(), 200);
    // Two tokens: refused, as the edge refuses them (one rule for both: `signed_url::token_in_query`).
    let repeated = format!("{url}?token={token}&token={token}");
    assert_eq!(origin.client.get(&repeated).send().await.unwrap().status(), 403);
    let expired = signed_url::sign(&origin.origin.signing, &prefix, now_unix() as u64 - 1);
    assert_eq!(origin.client.get(format!("{url}?token={expired}")).send().await.unwrap().status(), 403);
    let elsewhere = signed_url::sign(&origin.origin.signing, "/videos/other/", now_unix() as u64 + 60);
    assert_eq!(origin.client.get(format!("{url}?token={elsewhere}")).send().await.unwrap().status(), 403);
    // The owner's API token opens it too.
    let response = origin.client.get(&url).header("authorization", format!("Bearer {alice}")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn sharing_opens_playback_to_the_listed_users_only() {
    let origin = start().await;
    let alice = origin.user("alice").await;
    let bob = origin.user("bob").await;
    let carol = origin.user("carol").await;
    let video = ready_video(&origin, &alice, Visibility::Private).await;
    let playback = format!("/v1/videos/{video}/playback");
    assert_eq!(origin.call(reqwest::Method::GET, &playback, Some(&bob), None).await.0, 403);
    assert_eq!(origin.call(reqwest::Method::GET, &playback, None, None).await.0, 401);
    let shares_path = format!("/v1/videos/{video}/shares");
    let share = |user: &'static str| {
        origin.call(reqwest::Method::POST, &shares_path, Some(&alice), Some(json!({"user": user})))
    };
    assert_eq!(share("bob").await.0, 204);
    assert_eq!(share("nobody").await.0, 404);
    let (status, answer) = origin.call(reqwest::Method::GET, &playback, Some(&bob), None).await;
    assert_eq!(status, 200, "{answer}");
    let url = answer["url"].as_str().unwrap();
    assert!(url.contains(&format!("/videos/{video}/master.m3u8?token=")), "{url}");
    assert_eq!(origin.call(reqwest::Method::GET, &playback, Some(&carol), None).await.0, 403);
    let (status, _) =
        origin.call(reqwest::Method::DELETE, &format!("/v1/videos/{video}/shares/bob"), Some(&alice), None).await;
    assert_eq!(status, 204);
    assert_eq!(origin.call(reqwest::Method::GET, &playback, Some(&bob), None).await.0, 403);
    // Public: anyone, even without a token.
    let (status, _) = origin
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/videos/{video}"),
            Some(&alice),
            Some(json!({"visibility": "public"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(origin.call(reqwest::Method::GET, &playback, None, None).await.0, 200);
}
