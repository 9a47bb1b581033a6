//! The user row: one query against the operator's `Users` table (SQLite or PostgreSQL, picked by the
//! URL, opened read-only through the `db` layer), with identifiers from config quoted for the
//! engine, a per-query timeout (also PostgreSQL's `statement_timeout`), and an in-process
//! cache (moka) with a short life for "no such user" and single-flight loading, so many concurrent
//! handshakes for one uncached user make one query.
//!
//! The connection pool is created lazily on first use, inside whichever pingora runtime asks first,
//! and connects lazily too: the proxy starts while the database is down and recovers by itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use db::{Engine, Options, Pool};
use moka::future::Cache;
use tokio::sync::OnceCell;

use crate::config::UsersConfig;
use crate::metrics::Metrics;

/// What the proxy needs to know about a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub is_admin: bool,
}

/// The database could not answer (down, slow, or the query failed). The text is for logs only.
#[derive(Debug, Clone, thiserror::Error)]
#[error("user lookup failed: {0}")]
pub struct Unavailable(pub String);

impl From<db::Error> for Unavailable {
    fn from(e: db::Error) -> Self {
        Unavailable(e.to_string())
    }
}

/// The lookup query for an engine: id, username and admin flag as (BIGINT, TEXT, BIGINT).
pub fn lookup_sql(engine: Engine, c: &UsersConfig) -> String {
    let quote = |name: &str| engine.quote(name);
    // PostgreSQL casts a boolean to INTEGER but not straight to BIGINT.
    let (int, admin) = match engine {
        Engine::Sqlite => (
            "INTEGER",
            format!("CAST({} AS INTEGER)", quote(&c.admin_column)),
        ),
        Engine::Postgres => (
            "BIGINT",
            format!(
                "CAST(CAST({} AS INTEGER) AS BIGINT)",
                quote(&c.admin_column)
            ),
        ),
    };
    let mut sql = format!(
        "SELECT CAST({id} AS {int}), CAST({name} AS TEXT), COALESCE({admin}, 0) FROM {table} WHERE {id} = {param}",
        id = quote(&c.id_column),
        name = quote(&c.username_column),
        table = quote(&c.table),
        param = engine.placeholder(1),
    );
    if !c.active_condition.trim().is_empty() {
        sql.push_str(&format!(" AND ({})", c.active_condition.trim()));
    }
    sql
}

/// Looks users up in the database, without caching.
pub struct UserDb {
    url: String,
    sql: String,
    timeout: Duration,
    options: Options,
    pool: OnceCell<Pool>,
    metrics: Arc<Metrics>,
}

type Row = (i64, String, i64);

impl UserDb {
    pub fn new(c: &UsersConfig, metrics: Arc<Metrics>) -> UserDb {
        // Config validation accepted the URL; should it still name no engine, opening the pool
        // reports it on first use.
        let engine = Engine::of_url(&c.database_url).unwrap_or(Engine::Postgres);
        let timeout = Duration::from_millis(c.query_timeout_ms);
        UserDb {
            url: c.database_url.clone(),
            sql: lookup_sql(engine, c),
            timeout,
            options: Options::read_only("auth-proxy")
                .max_connections(c.max_connections)
                .acquire_timeout(timeout)
                .statement_timeout(timeout),
            pool: OnceCell::new(),
            metrics,
        }
    }

    /// The pool, made on first use (inside the runtime that asks) and connecting lazily.
    async fn pool(&self) -> Result<&Pool, db::Error> {
        self.pool
            .get_or_try_init(|| async { Pool::connect_lazy(&self.url, &self.options) })
            .await
    }

    /// One query: `Ok(None)` when no such (active) user exists.
    pub async fn fetch(&self, id: i64) -> Result<Option<User>, Unavailable> {
        let started = Instant::now();
        let result = db::timed(self.timeout, self.query(id)).await;
        self.metrics
            .user_lookup_duration
            .observe(started.elapsed().as_secs_f64());
        let label = match &result {
            Ok(Some(_)) => "found",
            Ok(None) => "missing",
            Err(_) => "error",
        };
        self.metrics.user_lookups.with_label_values(&[label]).inc();
        result.map_err(Unavailable::from)
    }

    async fn query(&self, id: i64) -> Result<Option<User>, db::Error> {
        let pool = self.pool().await?;
        let row: Option<Row> =
            db::with_pool!(pool, p => sqlx::query_as(&self.sql).bind(id).fetch_optional(p).await)?;
        Ok(row.map(|(id, username, admin)| User {
            id,
            username,
            is_admin: admin != 0,
        }))
    }

    /// `SELECT 1`, for readiness.
    pub async fn ping(&self) -> Result<(), Unavailable> {
        Ok(db::timed(self.timeout, async { self.pool().await?.ping().await }).await?)
    }
}

/// Users by id, through the cache when it is on.
pub struct Users {
    db: Arc<UserDb>,
    cache: Option<Cache<i64, Option<User>>>,
    metrics: Arc<Metrics>,
}

/// Positive answers live `ttl`, "no such user" lives `negative_ttl`.
struct Lifetimes {
    ttl: Duration,
    negative_ttl: Duration,
}

impl moka::Expiry<i64, Option<User>> for Lifetimes {
    fn expire_after_create(&self, _: &i64, value: &Option<User>, _: Instant) -> Option<Duration> {
        Some(if value.is_some() {
            self.ttl
        } else {
            self.negative_ttl
        })
    }
}

impl Users {
    pub fn new(c: &UsersConfig, metrics: Arc<Metrics>) -> Users {
        let cache = (c.cache_ttl_secs > 0 && c.cache_capacity > 0).then(|| {
            Cache::builder()
                .max_capacity(c.cache_capacity)
                .expire_after(Lifetimes {
                    ttl: Duration::from_secs(c.cache_ttl_secs),
                    negative_ttl: Duration::from_secs(
                        c.negative_cache_ttl_secs.min(c.cache_ttl_secs),
                    ),
                })
                .build()
        });
        Users {
            db: Arc::new(UserDb::new(c, metrics.clone())),
            cache,
            metrics,
        }
    }

    pub fn db(&self) -> &UserDb {
        &self.db
    }

    /// Drops a user's cache entry (a revocation or a removal was learnt).
    pub async fn forget(&self, id: i64) {
        if let Some(cache) = &self.cache {
            cache.invalidate(&id).await;
        }
    }

    /// Drops every cache entry.
    pub fn forget_all(&self) {
        if let Some(cache) = &self.cache {
            cache.invalidate_all();
        }
    }

    /// The user, `None` if there is none; errors are never cached.
    pub async fn get(&self, id: i64) -> Result<Option<User>, Unavailable> {
        let Some(cache) = &self.cache else {
            self.metrics
                .user_cache
                .with_label_values(&["disabled"])
                .inc();
            return Box::pin(self.db.fetch(id)).await;
        };
        if let Some(hit) = cache.get(&id).await {
            self.metrics.hot.cache_hit.inc();
            return Ok(hit);
        }
        self.metrics.user_cache.with_label_values(&["miss"]).inc();
        // Boxed: a miss's query (and moka's single-flight) stays out of every request's future,
        // which is moved once per request.
        let db = self.db.clone();
        let miss = cache.try_get_with(id, async move { db.fetch(id).await });
        Box::pin(miss).await.map_err(|e| (*e).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_quote_identifiers_per_engine() {
        let c = UsersConfig::default();
        assert_eq!(
            lookup_sql(Engine::Postgres, &c),
            r#"SELECT CAST("id" AS BIGINT), CAST("username" AS TEXT), COALESCE(CAST(CAST("isAdmin" AS INTEGER) AS BIGINT), 0) FROM "Users" WHERE "id" = $1"#
        );
        assert!(lookup_sql(Engine::Sqlite, &c).ends_with(r#"FROM "Users" WHERE "id" = ?1"#));
        let c = UsersConfig {
            active_condition: r#""deletedAt" IS NULL"#.into(),
            ..UsersConfig::default()
        };
        assert!(lookup_sql(Engine::Sqlite, &c)
            .ends_with(r#"WHERE "id" = ?1 AND ("deletedAt" IS NULL)"#));
    }
}
