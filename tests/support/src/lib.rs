//! Test helpers shared by every crate's tests: the News Nexus fixture on a real SQLite file or a
//! fresh PostgreSQL database, News Nexus-shaped tokens, held loopback ports and listeners
//! handed to the binaries the tests start ([`listeners`]), and WebSocket handshakes ([`ws`]).
//!
//! PostgreSQL: [`PgTestDb::create`] makes a new database on `TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`) and drops it when the value is dropped. When the
//! server cannot be reached the test is skipped with a loud message, unless `REQUIRE_POSTGRES=1`
//! (CI sets it), in which case the test fails. NATS works the same way with `REQUIRE_NATS=1`
//! ([`nats`]).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::{Connection, Executor};

pub mod listeners;
pub mod nats;
pub mod ws;

pub use listeners::{hand_over, Port};

/// The fixture as SQLite statements (the shapes NewsNexus10 uses): agent-service's demo data.
pub const FIXTURE_SQLITE: &str = include_str!("../../../agent-service/demo/newsnexus-sqlite.sql");
/// The fixture as PostgreSQL statements (Sequelize's quoted identifiers, NewsNexus12).
pub const FIXTURE_POSTGRES: &str =
    include_str!("../../../agent-service/demo/newsnexus-postgres.sql");

/// The secret the tests sign tokens with (at least 32 bytes, so no weak-secret opt-in is needed).
pub const TEST_JWT_SECRET: &str = "test-jwt-secret-that-is-at-least-32-bytes-long";
/// The identity key shared by proxy and agent in tests.
pub const TEST_IDENTITY_SECRET: &str = "test-identity-secret-0123456789abcdef";

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A token exactly as the News Nexus API mints it: HS256, payload `{"id": id, "iat": now}`.
pub fn news_nexus_token(secret: &str, id: i64) -> String {
    token_with_claims(secret, serde_json::json!({"id": id, "iat": now_unix()}))
}

/// An HS256 token over arbitrary claims.
pub fn token_with_claims(secret: &str, claims: serde_json::Value) -> String {
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&header, &claims, &key).expect("HS256 signing cannot fail")
}

/// Writes the SQLite fixture into `dir/name` and returns its path (`sqlite://` URL: [`sqlite_url`]).
pub async fn sqlite_fixture(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let mut conn = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("open sqlite fixture");
    conn.execute(FIXTURE_SQLITE)
        .await
        .expect("load sqlite fixture");
    conn.close().await.ok();
    path
}

/// The `sqlite://` URL of a file.
pub fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// True when `REQUIRE_POSTGRES` asks for PostgreSQL tests to fail rather than skip.
pub fn postgres_required() -> bool {
    matches!(
        std::env::var("REQUIRE_POSTGRES").as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    )
}

fn admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh PostgreSQL database for one test, dropped with the value.
pub struct PgTestDb {
    pub name: String,
    pub url: String,
    admin_url: String,
}

impl PgTestDb {
    /// A new empty database, or `None` (after a loud message) when PostgreSQL is unreachable and
    /// not required. Panics when it is required and unreachable.
    pub async fn create() -> Option<PgTestDb> {
        let admin_url = admin_url();
        let mut admin = match sqlx::PgConnection::connect(&admin_url).await {
            Ok(c) => c,
            Err(e) => {
                if postgres_required() {
                    panic!(
                        "REQUIRE_POSTGRES is set but PostgreSQL at {admin_url} is unreachable: {e}"
                    );
                }
                eprintln!("\n!!!! SKIPPING: PostgreSQL at {admin_url} is unreachable ({e}); set REQUIRE_POSTGRES=1 to fail instead !!!!\n");
                return None;
            }
        };
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create test database");
        admin.close().await.ok();
        let url = replace_db_name(&admin_url, &name);
        Some(PgTestDb {
            name,
            url,
            admin_url,
        })
    }

    /// A new database holding the News Nexus fixture.
    pub async fn with_fixture() -> Option<PgTestDb> {
        let db = Self::create().await?;
        let mut conn = sqlx::PgConnection::connect(&db.url)
            .await
            .expect("connect test database");
        sqlx::raw_sql(FIXTURE_POSTGRES)
            .execute(&mut conn)
            .await
            .expect("load postgres fixture");
        conn.close().await.ok();
        Some(db)
    }
}

impl Drop for PgTestDb {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Drop may run inside a runtime: use a thread with its own small runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut c = sqlx::PgConnection::connect(&admin_url).await.ok()?;
                c.execute(sql.as_str()).await.ok()?;
                c.close().await.ok()
            })
        })
        .join();
    }
}

fn replace_db_name(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let base = match base.rfind('/') {
        Some(i) if i > "postgres://".len() => &base[..i],
        _ => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// A temporary directory for test files (removed on drop).
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("create temp dir")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database_name() {
        assert_eq!(
            replace_db_name("postgres://u@h:5432/test", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            replace_db_name("postgres://u@h/test?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
    }

    #[tokio::test]
    async fn sqlite_fixture_has_two_users() {
        let dir = temp_dir();
        let path = sqlite_fixture(dir.path(), "nn.db").await;
        let mut c = sqlx::SqliteConnection::connect(&sqlite_url(&path))
            .await
            .unwrap();
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM Users")
            .fetch_one(&mut c)
            .await
            .unwrap();
        assert_eq!(n, 2);
    }

    #[tokio::test]
    async fn postgres_fixture_has_quoted_tables() {
        let Some(db) = PgTestDb::with_fixture().await else {
            return;
        };
        let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let admin: bool = sqlx::query_scalar(r#"SELECT "isAdmin" FROM "Users" WHERE "id" = 1"#)
            .fetch_one(&mut c)
            .await
            .unwrap();
        assert!(admin);
    }
}
