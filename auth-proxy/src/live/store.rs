//! The edge's own state store (`AUTH_PROXY_STATE_URL`): the revocations table, on SQLite (one host;
//! the default is a file under the data directory) or PostgreSQL (several replicas share it). The
//! Users database is never written; this is a separate database the edge owns.
//!
//! - [`StateStore::open`] connects through the `db` crate (read-write; SQLite in WAL with
//!   `synchronous=FULL`) and creates the table (on PostgreSQL under an advisory lock, so replicas
//!   starting together do not race).
//! - [`StateStore::insert`] stores a revocation and, on PostgreSQL, sends `NOTIFY` on
//!   [`CHANNEL`] in the same statement, so every replica listening hears of it once it commits.
//! - [`StateStore::list`] reads the whole table (it stays small: records of expiring tokens are
//!   purged by [`StateStore::purge`]); the live-authorization loop re-reads it on every
//!   notification and on a periodic catch-up poll.

use std::time::Duration;

use db::{timed, with_pool, Options, Pool};
use sqlx::postgres::PgListener;

use crate::live::revocations::{Kind, NewRevocation, Revocation};

/// The PostgreSQL notification channel revocations are announced on.
pub const CHANNEL: &str = "auth_proxy_revocations";

/// How long one state-store operation may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The store could not answer; the text is for logs and the operator (never holds a password).
#[derive(Debug, Clone, thiserror::Error)]
#[error("state store: {0}")]
pub struct StoreError(pub String);

impl From<db::Error> for StoreError {
    fn from(e: db::Error) -> Self {
        StoreError(e.to_string())
    }
}

pub struct StateStore {
    pool: Pool,
}

// The table is created here rather than by sqlx migrations: sqlx keeps one `_sqlx_migrations`
// table per database, and the state store may share a database with another service's migrations.
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

/// The insert, the same on both engines; on PostgreSQL it is wrapped by [`POSTGRES_INSERT`].
const INSERT: &str = "INSERT INTO auth_proxy_revocations (kind, user_id, jti, issued_before, reason, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id, kind, user_id, jti, issued_before, reason, created_at, expires_at";

/// On PostgreSQL the insert and its `NOTIFY` are one statement, so one transaction: replicas hear of
/// the row once it is committed, never before.
const POSTGRES_INSERT: &str = "WITH ins AS (INSERT INTO auth_proxy_revocations (kind, user_id, jti, issued_before, reason, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id, kind, user_id, jti, issued_before, reason, created_at, expires_at) SELECT ins.* FROM ins, pg_notify('auth_proxy_revocations', ins.id::text)";

const LIST: &str = "SELECT id, kind, user_id, jti, issued_before, reason, created_at, expires_at FROM auth_proxy_revocations ORDER BY id";

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

/// A whole call bounded by [`TIMEOUT`].
async fn bounded<T>(
    call: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, StoreError> {
    Ok(timed(TIMEOUT, async { Ok(call.await?) }).await?)
}

impl StateStore {
    /// Connects (read-write) and creates the table if needed; on PostgreSQL under an advisory
    /// lock, so replicas starting together do not race.
    pub async fn open(url: &str) -> Result<StateStore, StoreError> {
        let options = Options::read_write("auth-proxy-state")
            .max_connections(4)
            .acquire_timeout(TIMEOUT);
        let pool = timed(TIMEOUT, Pool::connect(url, &options)).await?;
        match &pool {
            Pool::Sqlite(p) => {
                bounded(sqlx::query(SQLITE_SCHEMA).execute(p)).await?;
            }
            Pool::Postgres(p) => {
                let mut tx = bounded(p.begin()).await?;
                bounded(
                    sqlx::query(
                        "SELECT pg_advisory_xact_lock(hashtext('auth_proxy_state_schema'))",
                    )
                    .execute(&mut *tx),
                )
                .await?;
                bounded(sqlx::query(POSTGRES_SCHEMA).execute(&mut *tx)).await?;
                bounded(tx.commit()).await?;
            }
        }
        Ok(StateStore { pool })
    }

    /// Closes the pool's connections.
    pub async fn close(&self) {
        self.pool.close().await
    }

    /// Stores a revocation (and announces it on PostgreSQL); returns the stored record.
    pub async fn insert(&self, r: &NewRevocation) -> Result<Revocation, StoreError> {
        let sql = match self.pool {
            Pool::Sqlite(_) => INSERT,
            Pool::Postgres(_) => POSTGRES_INSERT,
        };
        let row: Row = with_pool!(&self.pool, p => bounded(
            sqlx::query_as(sql)
                .bind(r.kind.as_str())
                .bind(r.user_id)
                .bind(&r.jti)
                .bind(r.issued_before)
                .bind(&r.reason)
                .bind(r.created_at)
                .bind(r.expires_at)
                .fetch_one(p),
        )
        .await)?;
        from_row(row)
    }

    /// Every stored revocation, oldest first.
    pub async fn list(&self) -> Result<Vec<Revocation>, StoreError> {
        let rows: Vec<Row> =
            with_pool!(&self.pool, p => bounded(sqlx::query_as(LIST).fetch_all(p)).await)?;
        rows.into_iter().map(from_row).collect()
    }

    /// Deletes the records whose token expired before `before`; returns how many.
    pub async fn purge(&self, before: i64) -> Result<u64, StoreError> {
        let sql = "DELETE FROM auth_proxy_revocations WHERE expires_at < $1";
        with_pool!(&self.pool, p => bounded(sqlx::query(sql).bind(before).execute(p))
            .await
            .map(|r| r.rows_affected()))
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
