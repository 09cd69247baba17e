//! One set of tests, each an `async fn(&Meta)`, run against SQLite in a file, SQLite in memory, and
//! PostgreSQL when `EDDY_TEST_POSTGRES_URL` names a server (each test in a schema of its own, so that
//! they run in parallel and leave nothing behind).

use std::collections::BTreeMap;
use std::io::Write;

use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;

use super::*;

const SHA_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const SHA_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn sha(n: usize) -> String {
    format!("{n:064x}")
}

async fn user(meta: &Meta, name: &str) -> User {
    meta.add_user(name, "00ff", "11ee", 10).await.unwrap()
}

fn new_upload<'a>(owner: &'a User, sha256: Option<&'a str>, now: i64) -> NewUpload<'a> {
    NewUpload {
        owner_id: &owner.id,
        filename: "holiday.mp4",
        size: 3_000_000,
        sha256,
        chunk_size: 1_000_000,
        visibility: Visibility::Private,
        now,
        expires_at: now + 86_400,
    }
}

/// An upload by `owner` of the bytes `sha256`, completed.
async fn uploaded(meta: &Meta, owner: &User, sha256: &str, now: i64) -> (Video, CompleteOutcome) {
    let (upload, video) = meta.create_upload(&new_upload(owner, Some(sha256), now)).await.unwrap();
    let outcome = meta.complete_upload(&upload.id, sha256, upload.size, now).await.unwrap();
    (meta.video(&video.id).await.unwrap().unwrap_or(video), outcome)
}

// ---------------------------------------------------------------------------------------------
// The tests, once

async fn users_and_name_conflicts(meta: &Meta) {
    let alice = meta.add_user("alice", "5a17", "4a54", 100).await.unwrap();
    assert_eq!(alice.id.len(), 32, "16 random bytes in hex");
    assert_eq!(meta.user_by_id(&alice.id).await.unwrap(), Some(alice.clone()));
    assert_eq!(meta.user_by_name("alice").await.unwrap(), Some(alice.clone()));
    let again = meta.add_user("alice", "00", "00", 101).await;
    assert!(matches!(&again, Err(MetaError::Conflict { what }) if what.contains("alice")), "{again:?}");
    let bob = user(meta, "bob").await;
    assert_ne!(bob.id, alice.id);
    assert_eq!(meta.user_by_name("carol").await.unwrap(), None);
    assert_eq!(meta.user_by_id("0123").await.unwrap(), None);
}

async fn create_and_resume_uploads(meta: &Meta) {
    let alice = user(meta, "alice").await;
    let bob = user(meta, "bob").await;
    let (upload, video) = meta.create_upload(&new_upload(&alice, Some(SHA_A), 1000)).await.unwrap();
    assert_eq!(upload.state, UploadState::Open);
    assert_eq!(upload.video_id, video.id);
    assert_eq!(video.upload_id, upload.id);
    assert_eq!(video.content_sha256, None);
    assert_eq!(video.filename, "holiday.mp4");
    assert_eq!(meta.upload(&upload.id).await.unwrap(), Some(upload.clone()));
    assert_eq!(meta.video(&video.id).await.unwrap(), Some(video.clone()));

    // Re-POSTing the same file finds the newest open upload, and only the owner's.
    let (newer, _) = meta.create_upload(&new_upload(&alice, Some(SHA_A), 2000)).await.unwrap();
    assert_eq!(meta.open_upload_for(&alice.id, SHA_A, 3_000_000).await.unwrap(), Some(newer.clone()));
    assert_eq!(meta.open_upload_for(&alice.id, SHA_A, 3_000_001).await.unwrap(), None);
    assert_eq!(meta.open_upload_for(&alice.id, SHA_B, 3_000_000).await.unwrap(), None);
    assert_eq!(meta.open_upload_for(&bob.id, SHA_A, 3_000_000).await.unwrap(), None);
    meta.set_upload_state(&newer.id, UploadState::Expired).await.unwrap();
    assert_eq!(meta.open_upload_for(&alice.id, SHA_A, 3_000_000).await.unwrap(), Some(upload.clone()));

    // Without a declared hash it is never found for resuming.
    let (anonymous, _) = meta.create_upload(&new_upload(&bob, None, 3000)).await.unwrap();
    assert_eq!(anonymous.sha256, None);
    assert_eq!(meta.upload(&anonymous.id).await.unwrap(), Some(anonymous));

    let nobody = meta.create_upload(&new_upload(&User { id: "ghost".into(), ..alice.clone() }, None, 1)).await;
    assert!(matches!(&nobody, Err(MetaError::NotFound { what }) if what.contains("ghost")), "{nobody:?}");
    let missing = meta.set_upload_state("nope", UploadState::Completed).await;
    assert!(matches!(missing, Err(MetaError::NotFound { .. })), "{missing:?}");
    assert_eq!(meta.upload("nope").await.unwrap(), None);
}

async fn chunks_are_upserted(meta: &Meta) {
    let alice = user(meta, "alice").await;
    let (upload, _) = meta.create_upload(&new_upload(&alice, None, 1)).await.unwrap();
    assert_eq!(meta.chunks(&upload.id).await.unwrap(), vec![]);
    meta.record_chunk(&upload.id, 2, "e2", 500).await.unwrap();
    meta.record_chunk(&upload.id, 0, "e0", 1000).await.unwrap();
    meta.record_chunk(&upload.id, 1, "first", 1000).await.unwrap();
    meta.record_chunk(&upload.id, 1, "second", 999).await.unwrap();
    let chunks = meta.chunks(&upload.id).await.unwrap();
    let expected = vec![
        Chunk { index: 0, etag: "e0".into(), size: 1000 },
        Chunk { index: 1, etag: "second".into(), size: 999 },
        Chunk { index: 2, etag: "e2".into(), size: 500 },
    ];
    assert_eq!(chunks, expected);
    let orphan = meta.record_chunk("no-such-upload", 0, "e", 1).await;
    assert!(matches!(orphan, Err(MetaError::NotFound { .. })), "{orphan:?}");
}

async fn the_same_bytes_from_another_user_are_deduplicated(meta: &Meta) {
    let alice = user(meta, "alice").await;
    let bob = user(meta, "bob").await;
    let (upload, video) = meta.create_upload(&new_upload(&alice, Some(SHA_A), 100)).await.unwrap();
    assert_eq!(meta.complete_upload(&upload.id, SHA_A, 3_000_000, 150).await.unwrap(), CompleteOutcome::NewContent);
    let content = meta.content(SHA_A).await.unwrap().unwrap();
    assert_eq!(
        content,
        Content {
            sha256: SHA_A.into(),
            size: 3_000_000,
            state: ContentState::Queued,
            attempts: 0,
            created_at: 150,
            updated_at: 150
        }
    );
    assert_eq!(meta.upload(&upload.id).await.unwrap().unwrap().state, UploadState::Completed);

    let (bobs, outcome) = uploaded(meta, &bob, SHA_A, 200).await;
    assert_eq!(outcome, CompleteOutcome::Deduplicated);
    assert_eq!(meta.content(SHA_A).await.unwrap(), Some(content), "the content row is untouched");
    let alices = meta.video(&video.id).await.unwrap().unwrap();
    assert_eq!(alices.content_sha256.as_deref(), Some(SHA_A));
    assert_eq!(bobs.content_sha256.as_deref(), Some(SHA_A));
    let ids: Vec<String> = meta.videos_with_content(SHA_A).await.unwrap().into_iter().map(|v| v.id).collect();
    assert_eq!(ids, vec![alices.id, bobs.id]);
    assert_eq!(meta.videos_with_content(SHA_B).await.unwrap(), vec![]);

    // Completing twice is refused, and leaves things as they were.
    let twice = meta.complete_upload(&upload.id, SHA_B, 1, 300).await;
    assert!(matches!(&twice, Err(MetaError::WrongState { state, .. }) if state == "completed"), "{twice:?}");
    assert_eq!(meta.content(SHA_B).await.unwrap(), None);
    let missing = meta.complete_upload("nope", SHA_B, 1, 300).await;
    assert!(matches!(missing, Err(MetaError::NotFound { .. })), "{missing:?}");
}

async fn concurrent_completes_of_new_bytes_make_one_new_content(meta: &Meta) {
    let mut uploads = Vec::new();
    for i in 0..8 {
        let owner = user(meta, &format!("user{i}")).await;
        let (upload, _) = meta.create_upload(&new_upload(&owner, Some(SHA_B), 10)).await.unwrap();
        uploads.push(upload.id);
    }
    let tasks: Vec<_> = uploads
        .into_iter()
        .map(|id| {
            let meta = meta.clone();
            tokio::spawn(async move { meta.complete_upload(&id, SHA_B, 3_000_000, 20).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap().unwrap());
    }
    let new = outcomes.iter().filter(|o| **o == CompleteOutcome::NewContent).count();
    assert_eq!(new, 1, "{outcomes:?}");
    assert_eq!(meta.videos_with_content(SHA_B).await.unwrap().len(), 8);
}

async fn concurrent_claimers_never_share_a_job(meta: &Meta) {
    let owner = user(meta, "alice").await;
    let jobs = 12;
    for i in 0..jobs {
        // Distinct creation times, so "oldest first" has one answer.
        uploaded(meta, &owner, &sha(i), 100 + i as i64).await;
    }
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let meta = meta.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                while let Some(job) = meta.claim_job(500).await.unwrap() {
                    mine.push(job);
                }
                mine
            })
        })
        .collect();
    let mut claimed: BTreeMap<String, usize> = BTreeMap::new();
    for task in tasks {
        for job in task.await.unwrap() {
            assert_eq!(job.state, ContentState::Packaging { percent: 0 });
            assert_eq!(job.attempts, 1);
            assert_eq!(job.updated_at, 500);
            *claimed.entry(job.sha256).or_default() += 1;
        }
    }
    let expected: BTreeMap<String, usize> = (0..jobs).map(|i| (sha(i), 1)).collect();
    assert_eq!(claimed, expected, "each job claimed exactly once");
    assert_eq!(meta.claim_job(600).await.unwrap(), None);
}

async fn jobs_are_claimed_oldest_first_and_finish(meta: &Meta) {
    let owner = user(meta, "alice").await;
    uploaded(meta, &owner, SHA_B, 100).await;
    uploaded(meta, &owner, SHA_A, 200).await;
    // Completed first, though last by hash: the content's creation time decides.
    let first = meta.claim_job(300).await.unwrap().unwrap();
    assert_eq!(first.sha256, SHA_B);
    meta.set_job_progress(SHA_B, 40, 310).await.unwrap();
    let content = meta.content(SHA_B).await.unwrap().unwrap();
    assert_eq!((content.state, content.updated_at), (ContentState::Packaging { percent: 40 }, 310));
    meta.set_job_progress(SHA_B, 250, 311).await.unwrap();
    assert_eq!(meta.content(SHA_B).await.unwrap().unwrap().state, ContentState::Packaging { percent: 100 });
    meta.finish_job(SHA_B, Ok(()), 320).await.unwrap();
    assert_eq!(meta.content(SHA_B).await.unwrap().unwrap().state, ContentState::Ready);

    let late = meta.set_job_progress(SHA_B, 50, 330).await;
    assert!(matches!(&late, Err(MetaError::WrongState { state, .. }) if state == "ready"), "{late:?}");
    let unknown = meta.finish_job(&sha(99), Ok(()), 330).await;
    assert!(matches!(unknown, Err(MetaError::NotFound { .. })), "{unknown:?}");

    let second = meta.claim_job(400).await.unwrap().unwrap();
    assert_eq!(second.sha256, SHA_A);
    meta.finish_job(SHA_A, Err("no video stream".into()), 410).await.unwrap();
    let failed = meta.content(SHA_A).await.unwrap().unwrap();
    assert_eq!(failed.state, ContentState::Failed { reason: "no video stream".into() });
    assert_eq!(meta.claim_job(420).await.unwrap(), None, "a failed job is not retried by itself");

    meta.retry_failed_job(SHA_A, 430).await.unwrap();
    assert_eq!(meta.content(SHA_A).await.unwrap().unwrap().state, ContentState::Queued);
    let again = meta.claim_job(440).await.unwrap().unwrap();
    assert_eq!((again.sha256.as_str(), again.attempts), (SHA_A, 2));
    let not_failed = meta.retry_failed_job(SHA_A, 450).await;
    assert!(matches!(not_failed, Err(MetaError::WrongState { .. })), "{not_failed:?}");
}

async fn a_crash_mid_job_requeues_it(meta: &Meta) {
    let owner = user(meta, "alice").await;
    uploaded(meta, &owner, SHA_A, 100).await;
    uploaded(meta, &owner, SHA_B, 101).await;
    let running = meta.claim_job(200).await.unwrap().unwrap();
    meta.set_job_progress(&running.sha256, 70, 210).await.unwrap();
    // The process dies here; the next one starts with a requeue.
    assert_eq!(meta.requeue_interrupted_jobs(300).await.unwrap(), 1);
    let requeued = meta.content(&running.sha256).await.unwrap().unwrap();
    assert_eq!((requeued.state, requeued.updated_at), (ContentState::Queued, 300));
    assert_eq!(meta.requeue_interrupted_jobs(301).await.unwrap(), 0);

    let retried = meta.claim_job(310).await.unwrap().unwrap();
    assert_eq!(retried.sha256, running.sha256, "still the oldest");
    assert_eq!(retried.attempts, 2);
    assert_eq!(retried.state, ContentState::Packaging { percent: 0 });
    // The old process's packager, had it survived, learns that the job is no longer its own.
    meta.requeue_interrupted_jobs(320).await.unwrap();
    let stale = meta.finish_job(&running.sha256, Ok(()), 330).await;
    assert!(matches!(&stale, Err(MetaError::WrongState { state, .. }) if state == "queued"), "{stale:?}");
}

async fn expired_uploads_are_listed_and_deleted(meta: &Meta) {
    let alice = user(meta, "alice").await;
    let bob = user(meta, "bob").await;
    let make = |expires_at: i64| {
        let mut new = new_upload(&alice, None, 10);
        new.expires_at = expires_at;
        async move { meta.create_upload(&new).await.unwrap() }
    };
    let (early, early_video) = make(100).await;
    let (late, _) = make(300).await;
    let (on_time, _) = make(200).await;
    let (completed, completed_video) = make(50).await;
    meta.complete_upload(&completed.id, SHA_A, 1, 20).await.unwrap();
    let ids = |uploads: Vec<Upload>| uploads.into_iter().map(|u| u.id).collect::<Vec<_>>();
    assert_eq!(ids(meta.expired_uploads(99).await.unwrap()), Vec::<String>::new());
    assert_eq!(ids(meta.expired_uploads(200).await.unwrap()), vec![early.id.clone(), on_time.id.clone()]);

    meta.record_chunk(&early.id, 0, "e", 1).await.unwrap();
    meta.add_share(&early_video.id, &bob.id).await.unwrap();
    meta.set_upload_state(&early.id, UploadState::Expired).await.unwrap();
    assert_eq!(ids(meta.expired_uploads(200).await.unwrap()), vec![on_time.id.clone()], "only open ones");
    assert!(meta.delete_upload(&early.id).await.unwrap());
    assert!(!meta.delete_upload(&early.id).await.unwrap(), "a second sweeper finds nothing");
    assert_eq!(meta.upload(&early.id).await.unwrap(), None);
    assert_eq!(meta.chunks(&early.id).await.unwrap(), vec![]);
    assert_eq!(meta.video(&early_video.id).await.unwrap(), None, "a video without content goes with it");
    assert_eq!(meta.shares(&early_video.id).await.unwrap(), vec![]);

    // A completed upload's video has content: deleting the upload row leaves it.
    assert!(meta.delete_upload(&completed.id).await.unwrap());
    let kept = meta.video(&completed_video.id).await.unwrap().unwrap();
    assert_eq!(kept.content_sha256.as_deref(), Some(SHA_A));
    assert_eq!(ids(meta.expired_uploads(1000).await.unwrap()), vec![on_time.id, late.id]);
}

async fn videos_and_shares(meta: &Meta) {
    let alice = user(meta, "alice").await;
    let bob = user(meta, "bob").await;
    let carol = user(meta, "carol").await;
    let (older, _) = uploaded(meta, &alice, SHA_A, 100).await;
    let (newer, _) = uploaded(meta, &alice, SHA_B, 200).await;
    let ids = |videos: Vec<Video>| videos.into_iter().map(|v| v.id).collect::<Vec<_>>();
    assert_eq!(ids(meta.videos_of(&alice.id).await.unwrap()), vec![newer.id.clone(), older.id.clone()]);
    assert_eq!(meta.videos_of(&bob.id).await.unwrap(), vec![]);

    meta.set_visibility(&older.id, Visibility::Unlisted).await.unwrap();
    assert_eq!(meta.video(&older.id).await.unwrap().unwrap().visibility, Visibility::Unlisted);
    meta.set_visibility(&older.id, Visibility::Public).await.unwrap();
    assert_eq!(meta.video(&older.id).await.unwrap().unwrap().visibility, Visibility::Public);
    let missing = meta.set_visibility("nope", Visibility::Public).await;
    assert!(matches!(missing, Err(MetaError::NotFound { .. })), "{missing:?}");

    meta.add_share(&older.id, &carol.id).await.unwrap();
    meta.add_share(&older.id, &bob.id).await.unwrap();
    meta.add_share(&older.id, &bob.id).await.unwrap();
    assert_eq!(meta.shares(&older.id).await.unwrap(), vec![bob.clone(), carol.clone()]);
    assert!(meta.is_shared_with(&older.id, &bob.id).await.unwrap());
    assert!(!meta.is_shared_with(&newer.id, &bob.id).await.unwrap());
    assert!(meta.remove_share(&older.id, &bob.id).await.unwrap());
    assert!(!meta.remove_share(&older.id, &bob.id).await.unwrap());
    assert!(!meta.is_shared_with(&older.id, &bob.id).await.unwrap());
    for (video, user) in [("nope", bob.id.as_str()), (older.id.as_str(), "nobody")] {
        let result = meta.add_share(video, user).await;
        assert!(matches!(result, Err(MetaError::NotFound { .. })), "{result:?}");
    }

    let upload_id = older.upload_id.clone();
    assert!(meta.delete_video(&older.id).await.unwrap());
    assert!(!meta.delete_video(&older.id).await.unwrap());
    assert_eq!(meta.video(&older.id).await.unwrap(), None);
    assert_eq!(meta.upload(&upload_id).await.unwrap(), None);
    assert!(!meta.is_shared_with(&older.id, &carol.id).await.unwrap());
    assert_eq!(ids(meta.videos_of(&alice.id).await.unwrap()), vec![newer.id]);
    assert!(meta.content(SHA_A).await.unwrap().is_some(), "content outlives its videos");
}

async fn unknown_enum_text_is_an_error(meta: &Meta) {
    let alice = user(meta, "alice").await;
    let (video, _) = uploaded(meta, &alice, SHA_A, 100).await;
    for statement in [
        "UPDATE uploads SET state = 'exploded'",
        "UPDATE videos SET visibility = 'friends'",
        "UPDATE contents SET state = 'Ready'",
    ] {
        sqlx::query(statement).execute(&meta.pool).await.unwrap();
    }
    let upload = meta.upload(&video.upload_id).await;
    assert!(matches!(&upload, Err(MetaError::Corrupt { what }) if what.contains("exploded")), "{upload:?}");
    let read = meta.video(&video.id).await;
    assert!(matches!(&read, Err(MetaError::Corrupt { what }) if what.contains("friends")), "{read:?}");
    let listed = meta.videos_of(&alice.id).await;
    assert!(matches!(listed, Err(MetaError::Corrupt { .. })), "{listed:?}");
    let content = meta.content(SHA_A).await;
    assert!(matches!(&content, Err(MetaError::Corrupt { what }) if what.contains("Ready")), "{content:?}");
    let message = content.unwrap_err().to_string();
    assert!(message.contains(SHA_A), "{message}");
}

async fn migrating_twice_changes_nothing(meta: &Meta) {
    let alice = user(meta, "alice").await;
    let versions = || async {
        let rows: Vec<i64> = sqlx::query_scalar("SELECT version FROM schema_migrations ORDER BY version")
            .fetch_all(&meta.pool)
            .await
            .unwrap();
        rows
    };
    let before = versions().await;
    assert_eq!(before, migrations::MIGRATIONS.iter().map(|m| m.version).collect::<Vec<_>>());
    meta.migrate().await.unwrap();
    meta.migrate().await.unwrap();
    assert_eq!(versions().await, before);
    assert_eq!(meta.user_by_id(&alice.id).await.unwrap(), Some(alice));
}

async fn a_newer_database_is_refused(meta: &Meta) {
    let newer = migrations::latest() + 1;
    sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
        .bind(newer)
        .bind(0_i64)
        .execute(&meta.pool)
        .await
        .unwrap();
    let result = meta.migrate().await;
    assert!(
        matches!(result, Err(MetaError::TooNew { found, known }) if found == newer && known == newer - 1),
        "{result:?}"
    );
    let message = result.unwrap_err().to_string();
    assert!(message.contains("newer") && message.contains(&newer.to_string()), "{message}");
}

// ---------------------------------------------------------------------------------------------
// The backends

const SKIPPED: &str = "skipped: EDDY_TEST_POSTGRES_URL is not set; scripts/test.sh starts a throwaway PostgreSQL";

/// A PostgreSQL schema of one test's own, dropped at the end.
struct PgSchema {
    admin: AnyPool,
    name: String,
}

impl PgSchema {
    /// None, having said so, when no server is configured.
    async fn create() -> Option<(PgSchema, String)> {
        let Ok(admin_url) = std::env::var("EDDY_TEST_POSTGRES_URL") else {
            // Straight to stderr: the test harness captures eprintln!, and a skip should be seen.
            let _ = writeln!(std::io::stderr(), "{SKIPPED}");
            return None;
        };
        sqlx::any::install_default_drivers();
        let admin = AnyPoolOptions::new().max_connections(1).connect(&admin_url).await.unwrap();
        let name = format!("t_{}", random_id());
        sqlx::query(&format!("CREATE SCHEMA {name}")).execute(&admin).await.unwrap();
        // Every connection of the test's pool starts with only this schema on its search path.
        let separator = if admin_url.contains('?') { '&' } else { '?' };
        let url = format!("{admin_url}{separator}options=-csearch_path%3D{name}");
        Some((PgSchema { admin, name }, url))
    }

    async fn drop(self, meta: Meta) {
        meta.pool.close().await;
        sqlx::query(&format!("DROP SCHEMA {} CASCADE", self.name)).execute(&self.admin).await.unwrap();
        self.admin.close().await;
    }
}

/// Each test against each backend, as `meta::tests::<backend>::<test>`.
macro_rules! on_every_backend {
    ($($test:ident),* $(,)?) => {
        mod sqlite_file {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let dir = tempfile::tempdir().unwrap();
                    let url = format!("sqlite://{}", dir.path().join("meta.db").display());
                    let meta = super::Meta::connect(&url).await.unwrap();
                    assert_eq!(meta.backend(), "sqlite");
                    super::$test(&meta).await;
                }
            )*
        }
        mod sqlite_memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let meta = super::Meta::connect("sqlite::memory:").await.unwrap();
                    super::$test(&meta).await;
                }
            )*
        }
        mod postgres {
            use std::panic::AssertUnwindSafe;

            use futures::FutureExt;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let Some((schema, url)) = super::PgSchema::create().await else { return };
                    let meta = super::Meta::connect(&url).await.unwrap();
                    assert_eq!(meta.backend(), "postgres");
                    // The schema is dropped whether the test passed or not, then its panic goes on.
                    let outcome = AssertUnwindSafe(super::$test(&meta)).catch_unwind().await;
                    schema.drop(meta).await;
                    if let Err(panic) = outcome {
                        std::panic::resume_unwind(panic);
                    }
                }
            )*
        }
    };
}

on_every_backend!(
    users_and_name_conflicts,
    create_and_resume_uploads,
    chunks_are_upserted,
    the_same_bytes_from_another_user_are_deduplicated,
    concurrent_completes_of_new_bytes_make_one_new_content,
    concurrent_claimers_never_share_a_job,
    jobs_are_claimed_oldest_first_and_finish,
    a_crash_mid_job_requeues_it,
    expired_uploads_are_listed_and_deleted,
    videos_and_shares,
    unknown_enum_text_is_an_error,
    migrating_twice_changes_nothing,
    a_newer_database_is_refused,
);

// ---------------------------------------------------------------------------------------------
// Connecting

#[tokio::test]
async fn other_urls_are_refused_naming_the_allowed_schemes() {
    for url in ["mysql://root:hunter2@localhost/db", "meta.db", "sqlite://", ""] {
        let result = Meta::connect(url).await;
        let Err(MetaError::BadUrl { url: shown, reason }) = &result else { panic!("{url}: {result:?}") };
        assert!(!shown.contains("hunter2"), "the password is hidden: {shown}");
        assert!(reason.contains("sqlite://") && reason.contains("postgres://"), "{reason}");
    }
}

#[test]
fn sqlite_files_are_created_when_missing() {
    let url = |u: &str| match parse_url(u) {
        Ok(Target::SqliteFile(url)) => url,
        _ => panic!("{u} is not a SQLite file"),
    };
    assert_eq!(url("sqlite:///var/lib/eddy/meta.db"), "sqlite:///var/lib/eddy/meta.db?mode=rwc");
    assert_eq!(url("sqlite://meta.db?cache=shared"), "sqlite://meta.db?cache=shared&mode=rwc");
    assert_eq!(url("sqlite://meta.db?mode=ro"), "sqlite://meta.db?mode=ro", "an explicit mode is kept");
    for memory in ["sqlite::memory:", "sqlite://:memory:", "sqlite://?mode=memory"] {
        assert!(matches!(parse_url(memory), Ok(Target::SqliteMemory(_))), "{memory}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_file_keeps_its_data_and_schema_across_connects() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("meta.db").display());
    let alice = {
        let meta = Meta::connect(&url).await.unwrap();
        let alice = user(&meta, "alice").await;
        meta.pool.close().await;
        alice
    };
    let meta = Meta::connect(&url).await.unwrap();
    assert_eq!(meta.user_by_name("alice").await.unwrap(), Some(alice));
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&meta.pool).await.unwrap();
    assert_eq!(mode, "wal");
    sqlx::query("UPDATE schema_migrations SET version = 1000 WHERE version = 1").execute(&meta.pool).await.unwrap();
    meta.pool.close().await;
    let refused = Meta::connect(&url).await;
    assert!(matches!(refused, Err(MetaError::TooNew { found: 1000, .. })), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_starting_origins_migrate_once_and_accept_postgresql_urls() {
    let Some((schema, url)) = PgSchema::create().await else { return };
    // Origins starting at once against an empty schema: the migration lock serialises them, where
    // concurrent CREATE TABLEs would collide in PostgreSQL's catalogue.
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let url = if i % 2 == 0 { url.clone() } else { url.replacen("postgres://", "postgresql://", 1) };
            tokio::spawn(async move { Meta::connect(&url).await })
        })
        .collect();
    let mut origins = Vec::new();
    for task in tasks {
        origins.push(task.await.unwrap().unwrap());
    }
    let first = origins.remove(0);
    let alice = user(&first, "alice").await;
    for other in origins {
        assert_eq!(other.user_by_id(&alice.id).await.unwrap(), Some(alice.clone()));
        other.pool.close().await;
    }
    let versions: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM schema_migrations").fetch_one(&first.pool).await.unwrap();
    assert_eq!(versions, migrations::MIGRATIONS.len() as i64);
    schema.drop(first).await;
}

#[test]
fn enum_texts_are_snake_case_like_serde() {
    for state in [UploadState::Open, UploadState::Completed, UploadState::Expired] {
        assert_eq!(serde_json::to_value(state).unwrap(), upload_state_text(state));
    }
    for visibility in [Visibility::Private, Visibility::Unlisted, Visibility::Public] {
        assert_eq!(serde_json::to_value(visibility).unwrap(), visibility_text(visibility));
    }
}
