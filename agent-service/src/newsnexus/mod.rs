//! Read-only access to the News Nexus database (SQLite or PostgreSQL) through the `db` layer: the
//! queries behind the article tools (custom SQL runs in `sql_exec`, on a pool of its own). SQLite
//! is opened with `mode=ro`; PostgreSQL sessions run with `default_transaction_read_only=on` and a
//! statement timeout.
//!
//! Beside it: `sql_guard.rs` (the parser and policy walk in front of custom SQL), `sql_exec.rs`
//! (the hardened pool custom SQL runs on) and `demo_db.rs` (the demo database of `agent-service
//! demo-db`).

pub mod demo_db;
pub mod sql_exec;
pub mod sql_guard;

use std::time::Duration;

use serde_json::{Map, Value};

/// Most rows an article-tool query returns.
pub const MAX_ROWS: usize = 1000;

/// How long one query may run.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// What a query can fail with: the `db` layer's error (a failed query, a timeout, an outage).
pub use db::Error as DbError;

#[derive(Clone)]
pub struct NewsDb {
    pool: db::Pool,
}

/// Rows as JSON objects, and whether more rows were cut off at [`MAX_ROWS`].
#[derive(Debug, Clone)]
pub struct Rows {
    pub rows: Vec<Map<String, Value>>,
    pub truncated: bool,
}

impl NewsDb {
    /// Opens the database read-only; connections are made lazily.
    pub fn open(url: &str) -> Result<NewsDb, DbError> {
        let options = db::Options::read_only("agent-service")
            .acquire_timeout(STATEMENT_TIMEOUT)
            .statement_timeout(STATEMENT_TIMEOUT);
        Ok(NewsDb {
            pool: db::Pool::connect_lazy(url, &options)?,
        })
    }

    /// The pool, for callers that need typed sqlx access (`db::with_pool!`).
    pub fn pool(&self) -> &db::Pool {
        &self.pool
    }

    /// Runs `sql` (written with `$1`, `$2`, ... placeholders, for either engine) with JSON
    /// arguments; every selected column should be cast to TEXT by the caller or be decodable by
    /// [`db::row_to_json`]. At most [`MAX_ROWS`] rows come back; the call is bounded by
    /// [`STATEMENT_TIMEOUT`].
    pub async fn query(&self, sql: &str, args: &[Value]) -> Result<Rows, DbError> {
        let fetch = self.pool.fetch_json(sql, args, MAX_ROWS + 1);
        let mut rows = db::timed(STATEMENT_TIMEOUT, fetch).await?;
        let truncated = rows.len() > MAX_ROWS;
        rows.truncate(MAX_ROWS);
        Ok(Rows { rows, truncated })
    }
}
