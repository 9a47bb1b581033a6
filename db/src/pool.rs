//! Pools from URLs ([`Options`], [`Pool`]), the [`with_pool!`](crate::with_pool) dispatch to the
//! typed pool, JSON queries over either engine, and migrations.

use std::str::FromStr;
use std::time::Duration;

use futures_util::TryStreamExt;
use serde_json::{Map, Value};
use sqlx::migrate::Migrator;
use sqlx::pool::PoolOptions;
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

use crate::{bind_json, row_to_json, Engine, Error};

/// Read-only or read-write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// SQLite `mode=ro`; PostgreSQL `default_transaction_read_only=on`.
    ReadOnly,
    /// SQLite: created if missing, WAL, `synchronous=FULL`, foreign keys on.
    ReadWrite,
}

/// How to open a pool.
#[derive(Debug, Clone)]
pub struct Options {
    pub access: Access,
    /// At most this many connections.
    pub max_connections: u32,
    /// How long to wait for a connection from the pool.
    pub acquire_timeout: Duration,
    /// PostgreSQL's server-side `statement_timeout` (SQLite has none: bound calls with
    /// [`timed`](crate::timed)).
    pub statement_timeout: Option<Duration>,
    /// PostgreSQL's `application_name`, seen in `pg_stat_activity`.
    pub application_name: String,
}

impl Options {
    /// Read-only, 4 connections, 30 s acquire timeout, no statement timeout.
    pub fn read_only(application_name: &str) -> Options {
        Options {
            access: Access::ReadOnly,
            max_connections: 4,
            acquire_timeout: Duration::from_secs(30),
            statement_timeout: None,
            application_name: application_name.to_string(),
        }
    }

    /// Read-write, otherwise as [`Options::read_only`].
    pub fn read_write(application_name: &str) -> Options {
        Options {
            access: Access::ReadWrite,
            ..Options::read_only(application_name)
        }
    }

    pub fn max_connections(mut self, n: u32) -> Options {
        self.max_connections = n;
        self
    }

    pub fn acquire_timeout(mut self, d: Duration) -> Options {
        self.acquire_timeout = d;
        self
    }

    pub fn statement_timeout(mut self, d: Duration) -> Options {
        self.statement_timeout = Some(d);
        self
    }

    fn pool<DB: sqlx::Database>(&self) -> PoolOptions<DB> {
        PoolOptions::new()
            .max_connections(self.max_connections)
            .min_connections(0)
            .acquire_timeout(self.acquire_timeout)
    }

    fn sqlite(&self, url: &str) -> Result<SqliteConnectOptions, Error> {
        let o = SqliteConnectOptions::from_str(url)?;
        Ok(match self.access {
            Access::ReadOnly => o.read_only(true),
            Access::ReadWrite => o
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .foreign_keys(true),
        })
    }

    fn postgres(&self, url: &str) -> Result<PgConnectOptions, Error> {
        let mut settings: Vec<(&str, String)> = Vec::new();
        if self.access == Access::ReadOnly {
            settings.push(("default_transaction_read_only", "on".into()));
        }
        if let Some(t) = self.statement_timeout {
            settings.push(("statement_timeout", t.as_millis().to_string()));
        }
        let o = PgConnectOptions::from_str(url)?.application_name(&self.application_name);
        Ok(if settings.is_empty() {
            o
        } else {
            o.options(settings)
        })
    }
}

/// A pool on one of the two engines. Cheap to clone (the sqlx pools are reference-counted).
#[derive(Clone, Debug)]
pub enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the typed pool (`&sqlx::SqlitePool` or `&sqlx::PgPool`);
/// the body is compiled once per engine, so it may use typed sqlx calls (`query_as`, `begin`).
///
/// ```no_run
/// # async fn demo(pool: &db::Pool) -> Result<(), sqlx::Error> {
/// let n: i64 = db::with_pool!(pool, p => sqlx::query_scalar("SELECT $1").bind(7_i64).fetch_one(p).await)?;
/// # assert_eq!(n, 7);
/// # Ok(())
/// # }
/// ```
#[macro_export]
macro_rules! with_pool {
    ($pool:expr, $p:ident => $body:expr) => {
        match $pool {
            $crate::Pool::Sqlite($p) => $body,
            $crate::Pool::Postgres($p) => $body,
        }
    };
}

/// Migrations for both engines, each from its own folder:
/// `Migrations { sqlite: sqlx::migrate!("migrations/sqlite"), postgres: sqlx::migrate!("migrations/postgres") }`.
pub struct Migrations {
    pub sqlite: Migrator,
    pub postgres: Migrator,
}

impl Pool {
    /// A pool that connects on first use; fails only on a bad URL.
    pub fn connect_lazy(url: &str, options: &Options) -> Result<Pool, Error> {
        Ok(match Engine::of_url(url)? {
            Engine::Sqlite => Pool::Sqlite(options.pool().connect_lazy_with(options.sqlite(url)?)),
            Engine::Postgres => {
                Pool::Postgres(options.pool().connect_lazy_with(options.postgres(url)?))
            }
        })
    }

    /// A pool with one connection made now, so a wrong or unreachable database fails here.
    pub async fn connect(url: &str, options: &Options) -> Result<Pool, Error> {
        Ok(match Engine::of_url(url)? {
            Engine::Sqlite => {
                Pool::Sqlite(options.pool().connect_with(options.sqlite(url)?).await?)
            }
            Engine::Postgres => {
                Pool::Postgres(options.pool().connect_with(options.postgres(url)?).await?)
            }
        })
    }

    pub fn engine(&self) -> Engine {
        match self {
            Pool::Sqlite(_) => Engine::Sqlite,
            Pool::Postgres(_) => Engine::Postgres,
        }
    }

    /// `SELECT 1`, for readiness.
    pub async fn ping(&self) -> Result<(), Error> {
        with_pool!(self, p => sqlx::query("SELECT 1").execute(p).await.map(|_| ()))?;
        Ok(())
    }

    /// Runs `sql` (placeholders `$1`, `$2`, ...) with JSON arguments and returns at most `limit`
    /// rows as JSON objects; the rest of the result is not read.
    pub async fn fetch_json(
        &self,
        sql: &str,
        args: &[Value],
        limit: usize,
    ) -> Result<Vec<Map<String, Value>>, Error> {
        let rows = with_pool!(self, p => {
            let q = args.iter().fold(sqlx::query(sql), bind_json);
            try_take(q.fetch(p).map_ok(|r| row_to_json(&r)), limit).await
        })?;
        Ok(rows)
    }

    /// Runs a statement with JSON arguments; returns the number of rows it affected.
    pub async fn execute_json(&self, sql: &str, args: &[Value]) -> Result<u64, Error> {
        let done = with_pool!(self, p => {
            let q = args.iter().fold(sqlx::query(sql), bind_json);
            q.execute(p).await.map(|r| r.rows_affected())
        })?;
        Ok(done)
    }

    /// Applies the engine's pending migrations. Safe when several processes start at once:
    /// PostgreSQL runs under sqlx's advisory lock; SQLite runs inside one `BEGIN IMMEDIATE`
    /// transaction, which holds the database's write lock until every migration is recorded.
    pub async fn migrate(&self, migrations: &Migrations) -> Result<(), Error> {
        match self {
            Pool::Sqlite(p) => {
                let mut tx = p.begin_with("BEGIN IMMEDIATE").await?;
                migrations.sqlite.run_direct(&mut *tx).await?;
                tx.commit().await?;
            }
            Pool::Postgres(p) => migrations.postgres.run(p).await?,
        }
        Ok(())
    }

    /// Closes every connection (waits for those in use to come back).
    pub async fn close(&self) {
        with_pool!(self, p => p.close().await)
    }
}

/// Collects at most `n` items of a fallible stream.
async fn try_take<T, E>(
    stream: impl futures_util::Stream<Item = Result<T, E>>,
    n: usize,
) -> Result<Vec<T>, E> {
    let mut out = Vec::new();
    let mut s = std::pin::pin!(stream);
    while out.len() < n {
        match s.try_next().await? {
            Some(v) => out.push(v),
            None => break,
        }
    }
    Ok(out)
}
