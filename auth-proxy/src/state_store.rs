//! The edge's own state store (`AUTH_PROXY_STATE_URL`): the revocations table, on SQLite (one host;
//! the default is a file under the data directory) or PostgreSQL (several replicas share it). The
//! Users database is never written; this is a separate database the edge owns.
//!
//! - [`StateStore::open`] connects and creates the table (on PostgreSQL under an advisory lock, so
//!   replicas starting together do not race).
//! - [`StateStore::insert`] stores a revocation and, on PostgreSQL, sends `NOTIFY` on
//!   [`CHANNEL`] in the same transaction, so every replica listening hears of it once it commits.
//! - [`StateStore::list`] reads the whole table (it stays small: records of expiring tokens are
//!   purged by [`StateStore::purge`]); the live-authorization loop re-reads it on every
//!   notification and on a periodic catch-up poll.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{PgPool, SqlitePool};

use crate::revocations::{Kind, NewRevocation, Revocation};

/// The PostgreSQL notification channel revocations are announced on.
pub const CHANNEL: &str = "auth_proxy_revocations";

/// How long one state-store operation may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The store could not answer; the text is for logs and the operator (never holds a password).
#[derive(Debug, Clone, thiserror::Error)]
#[error("state store: {0}")]
pub struct StoreError(pub String);

fn fail(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

pub struct StateStore {
    pool: Pool,
}

const SQLITE_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS auth_proxy_revocations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    user_id INTEGER,
    jti TEXT,
    issued_before INTEGER NOT NULL,
    reason TEXT,
    created_at INTEGER NOT NULL,
    expires_at INTEGER
)";

const POSTGRES_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS auth_proxy_revocations (
    id BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL,
    user_id BIGINT,
    jti TEXT,
    issued_before BIGINT NOT NULL,
    reason TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT
)";

const COLUMNS: &str = "id, kind, user_id, jti, issued_before, reason, created_at, expires_at";

type Row = (
    i64,
    String,
    Option<i64>,
    Option<String>,
    i64,
    Option<String>,
    i64,
    Option<i64>,
);

fn from_row(row: Row) -> Result<Revocation, StoreError> {
    let (id, kind, user_id, jti, issued_before, reason, created_at, expires_at) = row;
    Ok(Revocation {
        id,
        kind: Kind::parse(&kind).ok_or_else(|| StoreError(format!("unknown kind {kind:?}")))?,
        user_id,
        jti,
        issued_before,
        reason,
        created_at,
        expires_at,
    })
}

/// True for URLs naming PostgreSQL.
pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

async fn bounded<T>(
    f: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(TIMEOUT, f)
        .await
        .map_err(|_| StoreError("timed out".into()))?
        .map_err(fail)
}

impl StateStore {
    /// Connects and creates the table if needed.
    pub async fn open(url: &str) -> Result<StateStore, StoreError> {
        let pool = if is_postgres(url) {
            let opts = PgConnectOptions::from_str(url).map_err(fail)?;
            let pool = PgPoolOptions::new()
                .max_connections(4)
                .min_connections(0)
                .acquire_timeout(TIMEOUT)
                .connect_with(opts)
                .await
                .map_err(fail)?;
            let mut tx = bounded(pool.begin()).await?;
            bounded(
                sqlx::query("SELECT pg_advisory_xact_lock(hashtext('auth_proxy_state_schema'))")
                    .execute(&mut *tx),
            )
            .await?;
            bounded(sqlx::query(POSTGRES_SCHEMA).execute(&mut *tx)).await?;
            bounded(tx.commit()).await?;
            Pool::Postgres(pool)
        } else {
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(fail)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(TIMEOUT);
            let pool = SqlitePoolOptions::new()
                .max_connections(2)
                .min_connections(0)
                .acquire_timeout(TIMEOUT)
                .connect_with(opts)
                .await
                .map_err(fail)?;
            bounded(sqlx::query(SQLITE_SCHEMA).execute(&pool)).await?;
            Pool::Sqlite(pool)
        };
        Ok(StateStore { pool })
    }

    /// Closes the pool's connections.
    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(p) => p.close().await,
            Pool::Postgres(p) => p.close().await,
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.pool, Pool::Postgres(_))
    }

    /// Stores a revocation (and announces it on PostgreSQL); returns the stored record.
    pub async fn insert(&self, r: &NewRevocation) -> Result<Revocation, StoreError> {
        let row: Row = match &self.pool {
            Pool::Sqlite(pool) => {
                let sql = format!(
                    "INSERT INTO auth_proxy_revocations (kind, user_id, jti, issued_before, reason, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING {COLUMNS}"
                );
                bounded(
                    sqlx::query_as(&sql)
                        .bind(r.kind.as_str())
                        .bind(r.user_id)
                        .bind(&r.jti)
                        .bind(r.issued_before)
                        .bind(&r.reason)
                        .bind(r.created_at)
                        .bind(r.expires_at)
                        .fetch_one(pool),
                )
                .await?
            }
            Pool::Postgres(pool) => {
                let sql = format!(
                    "INSERT INTO auth_proxy_revocations (kind, user_id, jti, issued_before, reason, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}"
                );
                let mut tx = bounded(pool.begin()).await?;
                let row: Row = bounded(
                    sqlx::query_as(&sql)
                        .bind(r.kind.as_str())
                        .bind(r.user_id)
                        .bind(&r.jti)
                        .bind(r.issued_before)
                        .bind(&r.reason)
                        .bind(r.created_at)
                        .bind(r.expires_at)
                        .fetch_one(&mut *tx),
                )
                .await?;
                bounded(
                    sqlx::query("SELECT pg_notify($1, $2)")
                        .bind(CHANNEL)
                        .bind(row.0.to_string())
                        .execute(&mut *tx),
                )
                .await?;
                bounded(tx.commit()).await?;
                row
            }
        };
        from_row(row)
    }

    /// Every stored revocation, oldest first.
    pub async fn list(&self) -> Result<Vec<Revocation>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM auth_proxy_revocations ORDER BY id");
        let rows: Vec<Row> = match &self.pool {
            Pool::Sqlite(pool) => bounded(sqlx::query_as(&sql).fetch_all(pool)).await?,
            Pool::Postgres(pool) => bounded(sqlx::query_as(&sql).fetch_all(pool)).await?,
        };
        rows.into_iter().map(from_row).collect()
    }

    /// Deletes the records whose token expired before `before`; returns how many.
    pub async fn purge(&self, before: i64) -> Result<u64, StoreError> {
        let done = match &self.pool {
            Pool::Sqlite(pool) => bounded(
                sqlx::query("DELETE FROM auth_proxy_revocations WHERE expires_at < ?1")
                    .bind(before)
                    .execute(pool),
            )
            .await?
            .rows_affected(),
            Pool::Postgres(pool) => bounded(
                sqlx::query("DELETE FROM auth_proxy_revocations WHERE expires_at < $1")
                    .bind(before)
                    .execute(pool),
            )
            .await?
            .rows_affected(),
        };
        Ok(done)
    }

    /// A connection listening on [`CHANNEL`] (PostgreSQL only; `None` on SQLite).
    pub async fn listen(&self) -> Result<Option<PgListener>, StoreError> {
        let Pool::Postgres(pool) = &self.pool else {
            return Ok(None);
        };
        let mut listener = bounded(PgListener::connect_with(pool)).await?;
        bounded(listener.listen(CHANNEL)).await?;
        Ok(Some(listener))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(kind: Kind, user_id: Option<i64>, expires_at: Option<i64>) -> NewRevocation {
        NewRevocation {
            kind,
            user_id,
            jti: None,
            issued_before: 100,
            reason: Some("test".into()),
            created_at: 100,
            expires_at,
        }
    }

    async fn round_trip(store: &StateStore) {
        let a = store.insert(&new(Kind::User, Some(2), None)).await.unwrap();
        assert_eq!(a.kind, Kind::User);
        assert_eq!(a.user_id, Some(2));
        assert_eq!(a.reason.as_deref(), Some("test"));
        let b = store.insert(&new(Kind::All, None, Some(50))).await.unwrap();
        assert!(b.id > a.id);
        let all = store.list().await.unwrap();
        assert_eq!(all, vec![a.clone(), b]);
        assert_eq!(store.purge(60).await.unwrap(), 1);
        assert_eq!(store.list().await.unwrap(), vec![a]);
    }

    #[tokio::test]
    async fn sqlite_store_round_trips_and_purges() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("state.db").display());
        let store = StateStore::open(&url).await.unwrap();
        round_trip(&store).await;
        // A second process opening the same file sees the same records.
        let again = StateStore::open(&url).await.unwrap();
        assert_eq!(again.list().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn postgres_store_round_trips_and_notifies() {
        let Some(db) = test_support::PgTestDb::create().await else {
            return;
        };
        let (a, b) = tokio::join!(StateStore::open(&db.url), StateStore::open(&db.url));
        let (store, other) = (a.unwrap(), b.unwrap());
        let mut listener = other
            .listen()
            .await
            .unwrap()
            .expect("a listener on PostgreSQL");
        round_trip(&store).await;
        let n = tokio::time::timeout(Duration::from_secs(10), listener.recv())
            .await
            .expect("a notification in time")
            .unwrap();
        assert_eq!(n.channel(), CHANNEL);
    }
}
