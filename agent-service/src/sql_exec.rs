//! Runs custom SQL (the `/sql` path and the `execute_custom_sql` tool) after [`sql_guard`], on a
//! pool of its own that is hardened per engine, so a gap in the guard is not a breach and a slow
//! query cannot starve the article tools:
//!
//! - SQLite: opened read-only with `query_only`, `SQLITE_LIMIT_ATTACHED` = 0 (no `ATTACH`),
//!   `SQLITE_LIMIT_LENGTH` capped, and a progress handler that interrupts the statement at its
//!   deadline, so the worker stops using CPU when the agent gives up.
//! - PostgreSQL: every query in its own `BEGIN READ ONLY` transaction with `SET LOCAL
//!   statement_timeout`, always rolled back.
//! - Both: caps on rows, bytes per cell and total rendered bytes ([`Capper`]) before a result
//!   reaches the LLM, a client frame or the chat store; at most `per_user` queries per user and
//!   `max_concurrent` in all at a time.
//!
//! The table columns the guard needs ([`Schema`]) are read once, at the first query.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use serde_json::{Map, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqlitePoolOptions};
use sqlx::{Connection, Executor, PgPool, Row, SqlitePool};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{number, ConfigError};
use crate::newsnexus::Rows;
use crate::sql_guard::{self, Schema, SqlDialect, SqlPolicy, SqlRefusal};

/// Largest string or blob a custom SQLite query may build (`SQLITE_LIMIT_LENGTH`).
pub const SQLITE_MAX_LENGTH: i32 = 16 * 1024 * 1024;
/// VM instructions between two deadline checks of the SQLite progress handler.
const PROGRESS_OPS: i32 = 10_000;

/// Limits of the custom-SQL path (config: `AGENT_SQL_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlSettings {
    pub policy: SqlPolicy,
    /// `AGENT_SQL_TIMEOUT_SECS`, default 5.
    pub timeout: Duration,
    /// `AGENT_SQL_MAX_ROWS`, default 1000.
    pub max_rows: usize,
    /// `AGENT_SQL_MAX_CELL_BYTES`, default 4096: longer text is cut.
    pub max_cell_bytes: usize,
    /// `AGENT_SQL_MAX_RESULT_BYTES`, default 65536: rendered JSON of all rows.
    pub max_result_bytes: usize,
    /// `AGENT_SQL_PER_USER`, default 1: custom queries one user may run at once.
    pub per_user: usize,
    /// `AGENT_SQL_MAX_CONCURRENT`, default 2: custom queries running at once in all (the size of
    /// the custom-SQL pool; the article tools have their own).
    pub max_concurrent: usize,
}

impl Default for SqlSettings {
    fn default() -> Self {
        SqlSettings {
            policy: SqlPolicy::default(),
            timeout: Duration::from_secs(5),
            max_rows: 1000,
            max_cell_bytes: 4096,
            max_result_bytes: 65536,
            per_user: 1,
            max_concurrent: 2,
        }
    }
}

impl SqlSettings {
    /// Reads the `AGENT_SQL_*` settings; a changed allowlist is logged as a warning at start.
    pub fn load(env: &dyn Fn(&str) -> Option<String>) -> Result<SqlSettings, ConfigError> {
        let get = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let tables = get("AGENT_SQL_TABLES");
        let hidden = get("AGENT_SQL_HIDDEN_COLUMNS");
        let functions = get("AGENT_SQL_FUNCTIONS");
        let policy = SqlPolicy::parse(
            tables.as_deref().unwrap_or(sql_guard::DEFAULT_TABLES),
            hidden
                .as_deref()
                .unwrap_or(sql_guard::DEFAULT_HIDDEN_COLUMNS),
            functions.as_deref().unwrap_or(sql_guard::DEFAULT_FUNCTIONS),
        )
        .map_err(|problem| ConfigError {
            name: "AGENT_SQL_TABLES",
            problem,
        })?;
        for (name, set) in [
            ("AGENT_SQL_TABLES", &tables),
            ("AGENT_SQL_HIDDEN_COLUMNS", &hidden),
            ("AGENT_SQL_FUNCTIONS", &functions),
        ] {
            if set.is_some() {
                tracing::warn!(
                    variable = name,
                    "custom SQL policy differs from the strict default; check it exposes nothing private"
                );
            }
        }
        let d = SqlSettings::default();
        let positive = |name: &'static str, default: usize| -> Result<usize, ConfigError> {
            match number(env, name, default)? {
                0 => Err(ConfigError {
                    name,
                    problem: "must be at least 1".into(),
                }),
                n => Ok(n),
            }
        };
        Ok(SqlSettings {
            policy,
            timeout: Duration::from_secs(positive("AGENT_SQL_TIMEOUT_SECS", 5)? as u64),
            max_rows: positive("AGENT_SQL_MAX_ROWS", d.max_rows)?,
            max_cell_bytes: positive("AGENT_SQL_MAX_CELL_BYTES", d.max_cell_bytes)?,
            max_result_bytes: positive("AGENT_SQL_MAX_RESULT_BYTES", d.max_result_bytes)?,
            per_user: positive("AGENT_SQL_PER_USER", d.per_user)?,
            max_concurrent: positive("AGENT_SQL_MAX_CONCURRENT", d.max_concurrent)?,
        })
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SqlError {
    #[error("query refused: {0}")]
    Refused(#[from] SqlRefusal),
    #[error("{0}")]
    Busy(String),
    #[error("the query took longer than {0:?} and was stopped")]
    Timeout(Duration),
    #[error("the query failed: {0}")]
    Query(String),
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
}

/// Cuts a result down to the configured caps while rows arrive. Pure.
#[derive(Debug)]
pub struct Capper {
    max_rows: usize,
    max_cell_bytes: usize,
    max_result_bytes: usize,
    bytes: usize,
    pub rows: Vec<Map<String, Value>>,
    pub truncated: bool,
}

impl Capper {
    pub fn new(s: &SqlSettings) -> Capper {
        Capper {
            max_rows: s.max_rows,
            max_cell_bytes: s.max_cell_bytes,
            max_result_bytes: s.max_result_bytes,
            bytes: 2,
            rows: Vec::new(),
            truncated: false,
        }
    }

    /// Adds a row (cells cut to size); `false` when the result is full and reading should stop.
    pub fn push(&mut self, mut row: Map<String, Value>) -> bool {
        if self.rows.len() >= self.max_rows {
            self.truncated = true;
            return false;
        }
        for v in row.values_mut() {
            if let Value::String(s) = v {
                if s.len() > self.max_cell_bytes {
                    let cut = s.len() - cut_point(s, self.max_cell_bytes);
                    s.truncate(cut_point(s, self.max_cell_bytes));
                    s.push_str(&format!("…[{cut} bytes cut]"));
                }
            }
        }
        let size = Value::Object(row.clone()).to_string().len() + 1;
        if self.bytes + size > self.max_result_bytes {
            self.truncated = true;
            return false;
        }
        self.bytes += size;
        self.rows.push(row);
        true
    }

    pub fn finish(self) -> Rows {
        Rows {
            rows: self.rows,
            truncated: self.truncated,
        }
    }
}

/// The largest char boundary at or below `max`.
fn cut_point(s: &str, max: usize) -> usize {
    let mut i = max.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The custom-SQL pool of one engine.
#[derive(Clone)]
enum SqlPool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs guarded custom SQL; one per service.
pub struct SqlRunner {
    settings: SqlSettings,
    pool: SqlPool,
    schema: tokio::sync::OnceCell<Schema>,
    all: Arc<Semaphore>,
    users: Mutex<HashMap<i64, Arc<Semaphore>>>,
}

impl SqlRunner {
    /// Opens the custom-SQL pool on `url` (no connection is made until the first query).
    pub fn open(url: &str, settings: SqlSettings) -> Result<SqlRunner, sqlx::Error> {
        let size = settings.max_concurrent.max(1) as u32;
        let pool = if url.starts_with("sqlite:") {
            SqlPool::Sqlite(hardened_sqlite_pool(url, size)?)
        } else {
            SqlPool::Postgres(hardened_pg_pool(url, size, settings.timeout)?)
        };
        Ok(SqlRunner {
            all: Arc::new(Semaphore::new(settings.max_concurrent.max(1))),
            settings,
            pool,
            schema: tokio::sync::OnceCell::new(),
            users: Mutex::new(HashMap::new()),
        })
    }

    /// Custom queries running now (holding a slot of `max_concurrent`).
    pub fn running(&self) -> usize {
        self.settings.max_concurrent.max(1) - self.all.available_permits()
    }

    pub fn settings(&self) -> &SqlSettings {
        &self.settings
    }

    pub fn dialect(&self) -> SqlDialect {
        match self.pool {
            SqlPool::Sqlite(_) => SqlDialect::Sqlite,
            SqlPool::Postgres(_) => SqlDialect::Postgres,
        }
    }

    /// Checks `sql` and, if the guard allows it, runs it for `user_id` under every limit.
    /// Returns the canonical SQL that ran and the capped rows.
    pub async fn run(&self, user_id: i64, sql: &str) -> Result<(String, Rows), SqlError> {
        let schema = self
            .schema
            .get_or_try_init(|| load_schema(&self.pool, &self.settings.policy))
            .await?;
        let canonical = sql_guard::check(sql, self.dialect(), &self.settings.policy, schema)?;
        let _mine = self.user_permit(user_id)?;
        let timeout = self.settings.timeout;
        let _slot = tokio::time::timeout(timeout, self.all.clone().acquire_owned())
            .await
            .map_err(|_| SqlError::Busy("too many custom queries are running; try again".into()))?
            .map_err(|_| SqlError::Busy("custom SQL is shutting down".into()))?;
        let capper = Capper::new(&self.settings);
        let run = async {
            match &self.pool {
                SqlPool::Sqlite(p) => execute_sqlite(p, &canonical, timeout, capper).await,
                SqlPool::Postgres(p) => execute_pg(p, &canonical, timeout, capper).await,
            }
        };
        // The engines stop the statement at `timeout`; this only bounds waiting for them.
        let rows = tokio::time::timeout(timeout + Duration::from_secs(2), run)
            .await
            .unwrap_or(Err(SqlError::Timeout(timeout)))?;
        Ok((canonical, rows))
    }

    fn user_permit(&self, user_id: i64) -> Result<OwnedSemaphorePermit, SqlError> {
        let sem = {
            let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
            users.retain(|_, s| Arc::strong_count(s) > 1 || s.available_permits() == 0);
            users
                .entry(user_id)
                .or_insert_with(|| Arc::new(Semaphore::new(self.settings.per_user.max(1))))
                .clone()
        };
        sem.try_acquire_owned().map_err(|_| {
            SqlError::Busy(format!(
                "you already have {} custom quer{} running; wait for it to finish",
                self.settings.per_user,
                if self.settings.per_user == 1 {
                    "y"
                } else {
                    "ies"
                }
            ))
        })
    }
}

/// A lazy SQLite pool for custom SQL: [`sqlite_read_only`] options, [`harden_sqlite`] on connect.
pub fn hardened_sqlite_pool(url: &str, size: u32) -> Result<SqlitePool, sqlx::Error> {
    Ok(SqlitePoolOptions::new()
        .max_connections(size)
        .after_connect(|conn, _| Box::pin(harden_sqlite(conn)))
        .connect_lazy_with(sqlite_read_only(url)?))
}

/// A lazy PostgreSQL pool for custom SQL with [`pg_read_only`] options.
pub fn hardened_pg_pool(url: &str, size: u32, timeout: Duration) -> Result<PgPool, sqlx::Error> {
    Ok(PgPoolOptions::new()
        .max_connections(size)
        .connect_lazy_with(pg_read_only(url, timeout)?))
}

/// SQLite connect options for custom SQL: read-only file, `query_only`, no extension loading.
pub fn sqlite_read_only(url: &str) -> Result<SqliteConnectOptions, sqlx::Error> {
    Ok(SqliteConnectOptions::from_str(url)?
        .read_only(true)
        .pragma("query_only", "1")
        .pragma("trusted_schema", "0")
        .statement_cache_capacity(0))
}

/// Per-connection SQLite limits: no attached databases, bounded string/blob length.
pub async fn harden_sqlite(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    let mut handle = conn.lock_handle().await?;
    let db = handle.as_raw_handle().as_ptr();
    // SAFETY: `db` is the live handle of this connection, locked for the duration of the calls.
    unsafe {
        libsqlite3_sys::sqlite3_limit(db, libsqlite3_sys::SQLITE_LIMIT_ATTACHED, 0);
        libsqlite3_sys::sqlite3_limit(db, libsqlite3_sys::SQLITE_LIMIT_LENGTH, SQLITE_MAX_LENGTH);
    }
    Ok(())
}

/// PostgreSQL connect options for custom SQL: read-only sessions with a statement timeout (each
/// query also sets both again inside its own transaction).
pub fn pg_read_only(url: &str, timeout: Duration) -> Result<PgConnectOptions, sqlx::Error> {
    let ms = timeout.as_millis().to_string();
    Ok(PgConnectOptions::from_str(url)?
        .application_name("agent-service-sql")
        .statement_cache_capacity(0)
        .options([
            ("default_transaction_read_only", "on"),
            ("statement_timeout", ms.as_str()),
        ]))
}

fn query_error(e: sqlx::Error) -> SqlError {
    match &e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_) => SqlError::Unavailable(e.to_string()),
        _ => SqlError::Query(e.to_string().chars().take(300).collect()),
    }
}

/// Feeds a row stream into `capper` until it is full or the stream ends.
async fn collect<S>(stream: S, mut capper: Capper) -> Result<Rows, sqlx::Error>
where
    S: futures_util::Stream<Item = Result<Map<String, Value>, sqlx::Error>>,
{
    let mut s = std::pin::pin!(stream);
    while let Some(row) = s.try_next().await? {
        if !capper.push(row) {
            break;
        }
    }
    Ok(capper.finish())
}

/// Runs one query on SQLite with a progress handler that interrupts it at the deadline.
pub async fn execute_sqlite(
    pool: &SqlitePool,
    sql: &str,
    timeout: Duration,
    capper: Capper,
) -> Result<Rows, SqlError> {
    let mut conn = pool.acquire().await.map_err(query_error)?;
    let interrupted = Arc::new(AtomicBool::new(false));
    arm_interrupt(&mut conn, Instant::now() + timeout, interrupted.clone())
        .await
        .map_err(query_error)?;
    let stream = sqlx::query(sql)
        .persistent(false)
        .fetch(&mut *conn)
        .map_ok(|r| db::row_to_json(&r));
    let result = collect(stream, capper).await;
    // Best effort: the next query installs its own deadline anyway.
    if let Ok(mut handle) = conn.lock_handle().await {
        handle.remove_progress_handler();
    }
    if interrupted.load(Ordering::SeqCst) {
        return Err(SqlError::Timeout(timeout));
    }
    result.map_err(query_error)
}

/// Installs the deadline: past it, SQLite's progress handler makes the running statement fail
/// with `SQLITE_INTERRUPT` (checked every [`PROGRESS_OPS`] VM instructions), and `interrupted`
/// is set. Each query installs its own, replacing the previous one.
pub async fn arm_interrupt(
    conn: &mut SqliteConnection,
    deadline: Instant,
    interrupted: Arc<AtomicBool>,
) -> Result<(), sqlx::Error> {
    let mut handle = conn.lock_handle().await?;
    handle.set_progress_handler(PROGRESS_OPS, move || {
        if Instant::now() >= deadline {
            interrupted.store(true, Ordering::SeqCst);
            false
        } else {
            true
        }
    });
    Ok(())
}

/// Runs one query on PostgreSQL inside `BEGIN READ ONLY` with `SET LOCAL statement_timeout`,
/// then rolls back whatever happened.
pub async fn execute_pg(
    pool: &PgPool,
    sql: &str,
    timeout: Duration,
    capper: Capper,
) -> Result<Rows, SqlError> {
    let mut conn = pool.acquire().await.map_err(query_error)?;
    let mut tx = conn
        .begin_with("BEGIN TRANSACTION READ ONLY")
        .await
        .map_err(query_error)?;
    let ms = timeout.as_millis();
    for set in [
        format!("SET LOCAL statement_timeout = {ms}"),
        format!("SET LOCAL lock_timeout = {ms}"),
        format!("SET LOCAL idle_in_transaction_session_timeout = {}", ms * 2),
    ] {
        (&mut *tx)
            .execute(set.as_str())
            .await
            .map_err(query_error)?;
    }
    let result = {
        let stream = sqlx::query(sql)
            .persistent(false)
            .fetch(&mut *tx)
            .map_ok(|r| db::row_to_json(&r));
        collect(stream, capper).await
    };
    // A failed rollback leaves the connection unusable; close it rather than reuse it.
    if tx.rollback().await.is_err() {
        conn.close_on_drop();
    }
    result.map_err(|e| match &e {
        sqlx::Error::Database(d) if d.code().as_deref() == Some("57014") => {
            SqlError::Timeout(timeout)
        }
        _ => query_error(e),
    })
}

/// Reads the columns of the allowed tables (names lower-cased).
async fn load_schema(pool: &SqlPool, policy: &SqlPolicy) -> Result<Schema, SqlError> {
    let mut schema = Schema::default();
    for table in policy.tables.keys() {
        let cols: Vec<String> = match pool {
            SqlPool::Sqlite(p) => {
                let rows = sqlx::query(
                    "SELECT p.name FROM sqlite_master m, pragma_table_info(m.name) p \
                     WHERE m.type IN ('table','view') AND lower(m.name) = ?1",
                )
                .bind(table)
                .fetch_all(p)
                .await
                .map_err(query_error)?;
                rows.iter().filter_map(|r| r.try_get(0).ok()).collect()
            }
            SqlPool::Postgres(p) => {
                let rows = sqlx::query(
                    "SELECT column_name::text FROM information_schema.columns \
                     WHERE lower(table_name) = $1 AND table_schema = ANY(current_schemas(false))",
                )
                .bind(table)
                .fetch_all(p)
                .await
                .map_err(query_error)?;
                rows.iter().filter_map(|r| r.try_get(0).ok()).collect()
            }
        };
        if !cols.is_empty() {
            schema.columns.insert(
                table.clone(),
                cols.into_iter().map(|c| c.to_lowercase()).collect(),
            );
        }
    }
    Ok(schema)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn capper_cuts_cells_rows_and_bytes() {
        let s = SqlSettings {
            max_rows: 3,
            max_cell_bytes: 10,
            max_result_bytes: 200,
            ..SqlSettings::default()
        };
        let mut c = Capper::new(&s);
        assert!(c.push(row(json!({"a": "é".repeat(20)}))));
        let cell = c.rows[0]["a"].as_str().unwrap();
        assert!(cell.starts_with("ééééé…[30 bytes cut]"), "{cell}");
        assert!(c.push(row(json!({"a": 1}))));
        assert!(c.push(row(json!({"a": 2}))));
        assert!(!c.push(row(json!({"a": 3}))));
        assert!(c.truncated);
        assert_eq!(c.rows.len(), 3);
    }

    #[test]
    fn settings_from_the_environment() {
        let none = |_: &str| None;
        assert_eq!(SqlSettings::load(&none).unwrap(), SqlSettings::default());
        let env = |k: &str| match k {
            "AGENT_SQL_TABLES" => Some("Articles, Users(id username)".to_string()),
            "AGENT_SQL_MAX_RESULT_BYTES" => Some("1024".to_string()),
            _ => None,
        };
        let s = SqlSettings::load(&env).unwrap();
        assert_eq!(s.policy.tables.len(), 2);
        assert_eq!(s.max_result_bytes, 1024);
        let zero = |k: &str| (k == "AGENT_SQL_PER_USER").then(|| "0".to_string());
        assert_eq!(
            SqlSettings::load(&zero).unwrap_err().name,
            "AGENT_SQL_PER_USER"
        );
        let bad = |k: &str| (k == "AGENT_SQL_TABLES").then(|| "Users(id".to_string());
        assert_eq!(
            SqlSettings::load(&bad).unwrap_err().name,
            "AGENT_SQL_TABLES"
        );
    }

    #[test]
    fn capper_total_bytes() {
        let s = SqlSettings {
            max_rows: 1000,
            max_cell_bytes: 100,
            max_result_bytes: 1000,
            ..SqlSettings::default()
        };
        let mut c = Capper::new(&s);
        while c.push(row(json!({"text": "x".repeat(500)}))) {}
        assert!(c.truncated);
        let out = c.finish();
        let rendered = Value::Array(out.rows.into_iter().map(Value::Object).collect()).to_string();
        assert!(rendered.len() <= 1000, "{}", rendered.len());
    }
}
