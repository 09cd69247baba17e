//! The schema, as an ordered list of portable SQL steps. A step once released is never edited: a change
//! is a new version at the end, so that every database reaches the same schema by the same path.
//!
//! Portable means the same text runs on SQLite and PostgreSQL: TEXT and BIGINT columns only (no
//! AUTOINCREMENT, SERIAL, BLOB, BYTEA or BOOLEAN), constraints both enforce the same way.

use sqlx::{Any, Row, Transaction};

use super::{Backend, MetaError, Result};

pub(crate) struct Migration {
    pub version: i64,
    pub steps: &'static [&'static str],
}

pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        steps: &[
            "CREATE TABLE users (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                token_salt TEXT NOT NULL,
                token_hash TEXT NOT NULL,
                created_at BIGINT NOT NULL
            )",
            // One row per distinct file; `state` is the packaging job's state, `progress` its percent
            // while packaging, `failure` the reason when failed.
            "CREATE TABLE contents (
                sha256 TEXT PRIMARY KEY,
                size BIGINT NOT NULL,
                state TEXT NOT NULL,
                progress BIGINT NOT NULL,
                failure TEXT,
                attempts BIGINT NOT NULL,
                created_at BIGINT NOT NULL,
                updated_at BIGINT NOT NULL
            )",
            // No foreign key from videos.upload_id to uploads: the two rows point at each other and are
            // created together, and a foreign key each way would need deferred constraints.
            "CREATE TABLE videos (
                id TEXT PRIMARY KEY,
                owner_id TEXT NOT NULL REFERENCES users (id),
                filename TEXT NOT NULL,
                visibility TEXT NOT NULL,
                content_sha256 TEXT REFERENCES contents (sha256),
                upload_id TEXT NOT NULL,
                created_at BIGINT NOT NULL
            )",
            "CREATE TABLE uploads (
                id TEXT PRIMARY KEY,
                owner_id TEXT NOT NULL REFERENCES users (id),
                video_id TEXT NOT NULL REFERENCES videos (id),
                filename TEXT NOT NULL,
                size BIGINT NOT NULL,
                sha256 TEXT,
                chunk_size BIGINT NOT NULL,
                state TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                expires_at BIGINT NOT NULL
            )",
            // `index` is a reserved word in SQL, hence chunk_index.
            "CREATE TABLE chunks (
                upload_id TEXT NOT NULL REFERENCES uploads (id),
                chunk_index BIGINT NOT NULL,
                etag TEXT NOT NULL,
                size BIGINT NOT NULL,
                PRIMARY KEY (upload_id, chunk_index)
            )",
            "CREATE TABLE shares (
                video_id TEXT NOT NULL REFERENCES videos (id),
                user_id TEXT NOT NULL REFERENCES users (id),
                PRIMARY KEY (video_id, user_id)
            )",
        ],
    },
    Migration {
        version: 2,
        steps: &[
            // One per query that would otherwise scan a whole table.
            "CREATE INDEX videos_by_owner ON videos (owner_id, created_at)",
            "CREATE INDEX videos_by_content ON videos (content_sha256)",
            "CREATE INDEX uploads_by_owner_sha256 ON uploads (owner_id, sha256, size)",
            "CREATE INDEX uploads_by_state_expiry ON uploads (state, expires_at)",
            "CREATE INDEX contents_by_state ON contents (state, created_at)",
            "CREATE INDEX shares_by_user ON shares (user_id)",
        ],
    },
];

/// The newest schema version this build knows.
pub(crate) fn latest() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// An arbitrary constant: the key of the PostgreSQL advisory lock that serialises migrations.
const MIGRATION_LOCK: i64 = 0x0edd_7a11_5c4e_3a00;

/// Brings the schema up to date in one transaction. Two origins starting together against one
/// PostgreSQL both get here: the advisory lock makes the second wait and then find nothing to do
/// (`CREATE TABLE IF NOT EXISTS` alone races on PostgreSQL's catalogue). SQLite's `BEGIN IMMEDIATE`
/// does the same for it.
pub(crate) async fn migrate(tx: &mut Transaction<'static, Any>, backend: Backend, now: i64) -> Result<()> {
    if backend == Backend::Postgres {
        sqlx::query("SELECT 1 AS locked FROM pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut **tx)
            .await?;
    }
    sqlx::query("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT)")
        .execute(&mut **tx)
        .await?;
    let row =
        sqlx::query("SELECT COALESCE(MAX(version), 0) AS version FROM schema_migrations").fetch_one(&mut **tx).await?;
    let current: i64 = row.try_get("version")?;
    let known = latest();
    if current > known {
        return Err(MetaError::TooNew { found: current, known });
    }
    for migration in MIGRATIONS.iter().filter(|m| m.version > current) {
        for step in migration.steps {
            sqlx::query(step).execute(&mut **tx).await?;
        }
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
            .bind(migration.version)
            .bind(now)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}
