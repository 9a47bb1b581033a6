//! Runs custom SQL (the `/sql` path and the `execute_custom_sql` tool) after [`sql_guard`], on a
//! pool of its own that is hardened per engine, so a gap in the guard is not a breach and a slow
//! query cannot starve the article tools. What runs is [`sql_guard::prepare`]'s wrapped text: the
//! engine cuts every cell longer than `AGENT_SQL_MAX_CELL_BYTES` bytes and stops one row past
//! `AGENT_SQL_MAX_ROWS`, so no row larger than the caps is ever built here.
//!
//! - SQLite: opened read-only with `query_only`, `SQLITE_LIMIT_ATTACHED` = 0 (no `ATTACH`),
//!   `SQLITE_LIMIT_LENGTH` = `AGENT_SQL_MAX_VALUE_BYTES` (no value, stored or built, is larger),
//!   `SQLITE_LIMIT_LIKE_PATTERN_LENGTH` lowered, and a progress handler that interrupts the
//!   statement at its deadline (checked every [`PROGRESS_OPS`] VM instructions). A statement
//!   still running shortly after its deadline is interrupted again with `sqlite3_interrupt`.
//! - PostgreSQL: every query in its own `BEGIN READ ONLY` transaction with `SET LOCAL
//!   statement_timeout` and `work_mem`, always rolled back. A statement still running a second
//!   after its deadline has its backend cancelled, then terminated, from another connection; that
//!   connection is closed, not reused.
//! - Both: a query holds its user's permit and a slot of `max_concurrent` until the database has
//!   ended the statement (it runs in a task of its own, so a caller that stops waiting frees
//!   nothing early). Caps on rows, bytes per cell and total rendered bytes ([`Capper`]) before a
//!   result reaches the LLM, a client frame or the chat store.
//!
//! The table columns the guard needs ([`Schema`]) are read once, at the first query.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use serde_json::{Map, Value};
use sqlx::postgres::PgRow;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::SqliteRow;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqlitePoolOptions};
use sqlx::{Connection, Executor, PgPool, Row, SqlitePool};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{SqlPolicy, SqlSettings, SQLITE_LENGTH_CEILING};
use crate::newsnexus::sql_guard::{self, Cut, Schema, SqlDialect, SqlRefusal};
use crate::newsnexus::Rows;

/// `SQLITE_LIMIT_LIKE_PATTERN_LENGTH`, in bytes: the guard's pattern limit in characters, at
/// four bytes each.
const SQLITE_LIKE_PATTERN_BYTES: i32 = (sql_guard::MAX_PATTERN_CHARS * 4) as i32;
/// VM instructions between two deadline checks of the SQLite progress handler.
pub const PROGRESS_OPS: i32 = 100;
/// How long after its deadline a SQLite statement is interrupted with `sqlite3_interrupt`.
const SQLITE_INTERRUPT_GRACE: Duration = Duration::from_millis(250);
/// How long after its deadline a PostgreSQL statement has its backend cancelled.
const PG_CANCEL_GRACE: Duration = Duration::from_secs(1);
/// How long a cancelled backend has to stop before it is terminated.
const PG_CANCEL_WAIT: Duration = Duration::from_secs(1);
/// How long a terminated backend has to go away.
const PG_TERMINATE_WAIT: Duration = Duration::from_secs(5);
/// `work_mem` of a custom query: sorts and hashes past it spill to temporary files (bounded by
/// the role's `temp_file_limit`, see `deploy/sql/agent-readonly-role.sql`).
const PG_WORK_MEM: &str = "4MB";

/// The custom-SQL settings as the guard's wrapper needs them.
impl SqlSettings {
    /// How the guard's wrapper cuts results under these settings.
    pub fn cut(&self) -> Cut {
        Cut {
            max_rows: self.max_rows,
            cell_chars: self.max_cell_bytes,
        }
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
    /// The result's column names when rows come from the guard's wrapper (pairs of columns).
    columns: Option<Arc<[String]>>,
    pub rows: Vec<Map<String, Value>>,
    pub truncated: bool,
}

impl Capper {
    /// For rows as the query returns them (each column one cell).
    pub fn new(s: &SqlSettings) -> Capper {
        Capper {
            max_rows: s.max_rows,
            max_cell_bytes: s.max_cell_bytes,
            max_result_bytes: s.max_result_bytes,
            bytes: 2,
            columns: None,
            rows: Vec::new(),
            truncated: false,
        }
    }

    /// For rows of [`sql_guard::prepare`]'s wrapper: each of `columns` is a pair of columns
    /// (value, cut text), merged by [`merge_cell`].
    pub fn wrapped(s: &SqlSettings, columns: Vec<String>) -> Capper {
        Capper {
            columns: Some(columns.into()),
            ..Capper::new(s)
        }
    }

    /// Adds a row (cells cut to size); `false` when the result is full and reading should stop.
    pub fn push(&mut self, mut row: Map<String, Value>) -> bool {
        for v in row.values_mut() {
            cut_value(v, self.max_cell_bytes);
        }
        self.push_cut(row)
    }

    /// Adds a row whose cells are already cut to size.
    fn push_cut(&mut self, row: Map<String, Value>) -> bool {
        if self.rows.len() >= self.max_rows {
            self.truncated = true;
            return false;
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

/// Cuts a text cell longer than `max` bytes, marking how much was cut.
fn cut_value(v: &mut Value, max: usize) {
    if let Value::String(s) = v {
        if s.len() > max {
            let keep = cut_point(s, max);
            let cut = s.len() - keep;
            s.truncate(keep);
            s.push_str(&format!("…[{cut} bytes cut]"));
        }
    }
}

/// One result cell from a pair of the wrapper's columns: `value` when the engine sent it whole,
/// else the `<octet length>:<first characters>` text it cut. The cell is at most `max` bytes
/// plus the mark `…[N bytes cut]`, N counted from the value's full length.
pub fn merge_cell(mut value: Value, cut: Option<&str>, max: usize) -> Value {
    let Some(cut) = cut else {
        cut_value(&mut value, max);
        return value;
    };
    let (total, text) = match cut.split_once(':') {
        Some((n, text)) => match n.parse::<usize>() {
            Ok(n) => (n, text),
            Err(_) => (cut.len(), cut),
        },
        None => (cut.len(), cut),
    };
    let keep = cut_point(text, max);
    Value::String(format!(
        "{}…[{} bytes cut]",
        &text[..keep],
        total.saturating_sub(keep)
    ))
}

/// The largest char boundary at or below `max`.
fn cut_point(s: &str, max: usize) -> usize {
    let mut i = max.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// A row's cells, cut to `max` bytes: as the query returned them (`columns` = `None`), or merged
/// from the wrapper's column pairs and named by `columns`. Text is read borrowed from the row.
macro_rules! row_cells {
    ($row:expr, $columns:expr, $max:expr) => {{
        let (row, max) = ($row, $max);
        match $columns {
            None => {
                let mut cells = db::row_to_json(row);
                for v in cells.values_mut() {
                    cut_value(v, max);
                }
                cells
            }
            Some(columns) => columns
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    let value = db::cell_to_json(row, 2 * i);
                    let cut = row.try_get::<Option<&str>, _>(2 * i + 1).ok().flatten();
                    (name.clone(), merge_cell(value, cut, max))
                })
                .collect::<Map<String, Value>>(),
        }
    }};
}

fn sqlite_cells(row: &SqliteRow, columns: Option<&[String]>, max: usize) -> Map<String, Value> {
    row_cells!(row, columns, max)
}

fn pg_cells(row: &PgRow, columns: Option<&[String]>, max: usize) -> Map<String, Value> {
    row_cells!(row, columns, max)
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
    pub fn open(url: &str, settings: &SqlSettings) -> Result<SqlRunner, sqlx::Error> {
        let settings = settings.clone();
        let size = settings.max_concurrent.max(1) as u32;
        // The configuration accepted the URL (`db::Engine::of_url`); anything else is PostgreSQL's.
        let pool = if matches!(db::Engine::of_url(url), Ok(db::Engine::Sqlite)) {
            SqlPool::Sqlite(hardened_sqlite_pool(url, size, settings.max_value_bytes)?)
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
    /// Returns the canonical text of the checked query (it runs inside the guard's cutting
    /// wrapper) and the capped rows.
    pub async fn run(&self, user_id: i64, sql: &str) -> Result<(String, Rows), SqlError> {
        let schema = self
            .schema
            .get_or_try_init(|| load_schema(&self.pool, &self.settings.policy))
            .await?;
        let prepared = sql_guard::prepare(
            sql,
            self.dialect(),
            &self.settings.policy,
            schema,
            self.settings.cut(),
        )?;
        let mine = self.user_permit(user_id)?;
        let timeout = self.settings.timeout;
        let slot = tokio::time::timeout(timeout, self.all.clone().acquire_owned())
            .await
            .map_err(|_| SqlError::Busy("too many custom queries are running; try again".into()))?
            .map_err(|_| SqlError::Busy("custom SQL is shutting down".into()))?;
        let capper = Capper::wrapped(&self.settings, prepared.columns);
        let pool = self.pool.clone();
        let text = prepared.sql;
        // The statement runs in a task of its own holding both permits: they are released when
        // the database has ended it, even if this caller stops waiting.
        let task = tokio::spawn(async move {
            let rows = match &pool {
                SqlPool::Sqlite(p) => execute_sqlite(p, &text, timeout, capper).await,
                SqlPool::Postgres(p) => execute_pg(p, &text, timeout, capper).await,
            };
            drop((slot, mine));
            rows
        });
        let rows = task
            .await
            .map_err(|e| SqlError::Query(format!("the query task failed: {e}")))??;
        Ok((prepared.canonical, rows))
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
pub fn hardened_sqlite_pool(
    url: &str,
    size: u32,
    max_value_bytes: usize,
) -> Result<SqlitePool, sqlx::Error> {
    let max_value = max_value_bytes.min(SQLITE_LENGTH_CEILING) as i32;
    Ok(SqlitePoolOptions::new()
        .max_connections(size)
        .after_connect(move |conn, _| Box::pin(harden_sqlite(conn, max_value)))
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

/// Per-connection SQLite limits: no attached databases, no string or blob longer than
/// `max_value` bytes (read or built), LIKE/GLOB patterns of at most the guard's pattern length.
pub async fn harden_sqlite(conn: &mut SqliteConnection, max_value: i32) -> Result<(), sqlx::Error> {
    use libsqlite3_sys as ffi;
    let mut handle = conn.lock_handle().await?;
    let db = handle.as_raw_handle().as_ptr();
    // SAFETY: `db` is the live handle of this connection, locked for the duration of the calls.
    unsafe {
        ffi::sqlite3_limit(db, ffi::SQLITE_LIMIT_ATTACHED, 0);
        ffi::sqlite3_limit(db, ffi::SQLITE_LIMIT_LENGTH, max_value);
        ffi::sqlite3_limit(
            db,
            ffi::SQLITE_LIMIT_LIKE_PATTERN_LENGTH,
            SQLITE_LIKE_PATTERN_BYTES,
        );
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
        if !capper.push_cut(row) {
            break;
        }
    }
    Ok(capper.finish())
}

/// The raw handle of a SQLite connection, for `sqlite3_interrupt` from another thread.
struct RawDb(*mut libsqlite3_sys::sqlite3);
// SAFETY: the pointer is only passed to `sqlite3_interrupt`, which SQLite documents as safe to
// call from any thread while the connection is open.
unsafe impl Send for RawDb {}
unsafe impl Sync for RawDb {}

/// Runs one query on SQLite with a progress handler that interrupts it at the deadline, and
/// `sqlite3_interrupt` shortly after it if the statement is still running. Returns only when
/// the statement has ended.
pub async fn execute_sqlite(
    pool: &SqlitePool,
    sql: &str,
    timeout: Duration,
    capper: Capper,
) -> Result<Rows, SqlError> {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut conn = pool.acquire().await.map_err(query_error)?;
    let interrupted = Arc::new(AtomicBool::new(false));
    let raw = arm_interrupt(&mut conn, deadline, interrupted.clone())
        .await
        .map_err(query_error)?;
    let columns = capper.columns.clone();
    let max = capper.max_cell_bytes;
    let mut late = false;
    let result = {
        let stream = sqlx::query(sql)
            .persistent(false)
            .fetch(&mut *conn)
            .map_ok(move |r| sqlite_cells(&r, columns.as_deref(), max));
        let work = collect(stream, capper);
        tokio::pin!(work);
        tokio::select! {
            r = &mut work => r,
            () = tokio::time::sleep_until((deadline + SQLITE_INTERRUPT_GRACE).into()) => {
                late = true;
                tracing::warn!(?timeout, "a custom SQLite statement outlived its deadline; interrupting it");
                // SAFETY: the connection stays open until this function returns, and it returns
                // only after the statement has ended (below).
                unsafe { libsqlite3_sys::sqlite3_interrupt(raw.0) };
                work.await
            }
        }
    };
    // The worker hands the handle out only after the statement has run to its end.
    let ended = match conn.lock_handle().await {
        Ok(mut handle) => {
            handle.remove_progress_handler();
            true
        }
        Err(_) => false,
    };
    if !ended {
        conn.close_on_drop();
    }
    let took = started.elapsed();
    if took > timeout + SQLITE_INTERRUPT_GRACE {
        tracing::warn!(
            ?took,
            ?timeout,
            "a custom SQLite statement ended after its deadline"
        );
    }
    if late || interrupted.load(Ordering::SeqCst) {
        return Err(SqlError::Timeout(timeout));
    }
    result.map_err(query_error)
}

/// Installs the deadline: past it, SQLite's progress handler makes the running statement fail
/// with `SQLITE_INTERRUPT` (checked every [`PROGRESS_OPS`] VM instructions), and `interrupted`
/// is set. Each query installs its own, replacing the previous one. Returns the raw handle.
async fn arm_interrupt(
    conn: &mut SqliteConnection,
    deadline: Instant,
    interrupted: Arc<AtomicBool>,
) -> Result<RawDb, sqlx::Error> {
    let mut handle = conn.lock_handle().await?;
    handle.set_progress_handler(PROGRESS_OPS, move || {
        if Instant::now() >= deadline {
            interrupted.store(true, Ordering::SeqCst);
            false
        } else {
            true
        }
    });
    Ok(RawDb(handle.as_raw_handle().as_ptr()))
}

/// Runs one query on PostgreSQL inside `BEGIN READ ONLY` with `SET LOCAL statement_timeout` and
/// `work_mem`, then rolls back whatever happened. If the statement has not ended a second after
/// its deadline, its backend is cancelled and then terminated ([`stop_backend`]) and the
/// connection is closed. Returns only when the statement has ended.
pub async fn execute_pg(
    pool: &PgPool,
    sql: &str,
    timeout: Duration,
    capper: Capper,
) -> Result<Rows, SqlError> {
    let started = Instant::now();
    let mut conn = pool.acquire().await.map_err(query_error)?;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *conn)
        .await
        .map_err(query_error)?;
    let mut tx = conn
        .begin_with("BEGIN TRANSACTION READ ONLY")
        .await
        .map_err(query_error)?;
    let ms = timeout.as_millis();
    for set in [
        format!("SET LOCAL statement_timeout = {ms}"),
        format!("SET LOCAL lock_timeout = {ms}"),
        format!("SET LOCAL idle_in_transaction_session_timeout = {}", ms * 2),
        format!("SET LOCAL work_mem = '{PG_WORK_MEM}'"),
    ] {
        (&mut *tx)
            .execute(set.as_str())
            .await
            .map_err(query_error)?;
    }
    let deadline = Instant::now() + timeout;
    let columns = capper.columns.clone();
    let max = capper.max_cell_bytes;
    let mut stopped = false;
    let result = {
        let stream = sqlx::query(sql)
            .persistent(false)
            .fetch(&mut *tx)
            .map_ok(move |r| pg_cells(&r, columns.as_deref(), max));
        let work = collect(stream, capper);
        tokio::pin!(work);
        tokio::select! {
            r = &mut work => r,
            () = tokio::time::sleep_until((deadline + PG_CANCEL_GRACE).into()) => {
                stopped = true;
                tracing::warn!(pid, ?timeout, "a custom PostgreSQL statement outlived its deadline; cancelling its backend");
                let options = pool.connect_options();
                let stop = stop_backend(&options, pid);
                tokio::pin!(stop);
                tokio::select! {
                    r = &mut work => r,
                    gone = &mut stop => match gone {
                        // Its connection is closed by the server: the read ends at once.
                        true => tokio::time::timeout(PG_CANCEL_WAIT, work)
                            .await
                            .unwrap_or(Err(sqlx::Error::PoolClosed)),
                        // Not confirmed: wait for the statement itself.
                        false => work.await,
                    },
                }
            }
        }
    };
    let took = started.elapsed();
    if took > timeout + PG_CANCEL_GRACE {
        tracing::warn!(
            pid,
            ?took,
            ?timeout,
            "a custom PostgreSQL statement ended after its deadline"
        );
    }
    if stopped {
        drop(tx);
        conn.close_on_drop();
        return Err(SqlError::Timeout(timeout));
    }
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

/// Stops backend `pid` from a connection of its own: `pg_cancel_backend`, and if it is still
/// active after [`PG_CANCEL_WAIT`], `pg_terminate_backend`. True once the backend is gone;
/// false when it stopped its statement by itself or nothing could be confirmed (the caller then
/// waits for the statement). Both signals act only where the backend checks for interrupts, so
/// a single call that never checks runs to its end regardless: the guard keeps those from
/// starting.
async fn stop_backend(options: &PgConnectOptions, pid: i32) -> bool {
    let run = async {
        let mut c = sqlx::PgConnection::connect_with(options).await?;
        sqlx::query("SELECT pg_cancel_backend($1)")
            .bind(pid)
            .execute(&mut c)
            .await?;
        if wait_for_backend(&mut c, pid, |state| state != Some("active"), PG_CANCEL_WAIT).await? {
            return Ok::<bool, sqlx::Error>(false);
        }
        tracing::warn!(
            pid,
            "a cancelled custom PostgreSQL statement is still active; terminating its backend"
        );
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .execute(&mut c)
            .await?;
        let gone =
            wait_for_backend(&mut c, pid, |state| state.is_none(), PG_TERMINATE_WAIT).await?;
        if !gone {
            tracing::error!(
                pid,
                "a terminated custom PostgreSQL backend is still running"
            );
        }
        c.close().await.ok();
        Ok(gone)
    };
    match run.await {
        Ok(gone) => gone,
        Err(e) => {
            tracing::error!(pid, error = %e, "could not stop a custom PostgreSQL statement");
            false
        }
    }
}

/// Polls `pg_stat_activity` until `done(state)` holds for backend `pid` (`None`: no such
/// backend) or `wait` has passed; returns whether it held.
async fn wait_for_backend(
    c: &mut sqlx::PgConnection,
    pid: i32,
    done: impl Fn(Option<&str>) -> bool,
    wait: Duration,
) -> Result<bool, sqlx::Error> {
    let until = Instant::now() + wait;
    loop {
        let state: Option<Option<String>> =
            sqlx::query_scalar("SELECT state FROM pg_stat_activity WHERE pid = $1")
                .bind(pid)
                .fetch_optional(&mut *c)
                .await?;
        let state = state.map(|s| s.unwrap_or_default());
        if done(state.as_deref()) {
            return Ok(true);
        }
        if Instant::now() >= until {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads the columns of the allowed tables in table order (table names lower-cased).
async fn load_schema(pool: &SqlPool, policy: &SqlPolicy) -> Result<Schema, SqlError> {
    let mut schema = Schema::default();
    for table in policy.tables.keys() {
        let cols: Vec<String> = match pool {
            SqlPool::Sqlite(p) => {
                let rows = sqlx::query(
                    "SELECT p.name FROM sqlite_master m, pragma_table_info(m.name) p \
                     WHERE m.type IN ('table','view') AND lower(m.name) = ?1 ORDER BY p.cid",
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
                     WHERE lower(table_name) = $1 AND table_schema = ANY(current_schemas(false)) \
                     ORDER BY ordinal_position",
                )
                .bind(table)
                .fetch_all(p)
                .await
                .map_err(query_error)?;
                rows.iter().filter_map(|r| r.try_get(0).ok()).collect()
            }
        };
        if !cols.is_empty() {
            schema.columns.insert(table.clone(), cols);
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
        let env = |k: &str| match k {
            "AGENT_SQL_MAX_COLUMNS" => Some("8".to_string()),
            "AGENT_SQL_MAX_VALUE_BYTES" => Some("65536".to_string()),
            _ => None,
        };
        let s = SqlSettings::load(&env).unwrap();
        assert_eq!((s.policy.max_columns, s.max_value_bytes), (8, 65536));
        assert_eq!(
            s.cut(),
            Cut {
                max_rows: 1000,
                cell_chars: 4096
            }
        );
        let huge = |k: &str| (k == "AGENT_SQL_MAX_VALUE_BYTES").then(|| "2000000000".to_string());
        assert_eq!(
            SqlSettings::load(&huge).unwrap_err().name,
            "AGENT_SQL_MAX_VALUE_BYTES"
        );
        let bad = |k: &str| (k == "AGENT_SQL_TABLES").then(|| "Users(id".to_string());
        assert_eq!(
            SqlSettings::load(&bad).unwrap_err().name,
            "AGENT_SQL_TABLES"
        );
    }

    #[test]
    fn wrapped_cells_are_merged_and_marked() {
        // Short enough: the value itself (any type), long text cut to the byte cap.
        assert_eq!(merge_cell(json!(7), None, 10), json!(7));
        assert_eq!(merge_cell(json!("short"), None, 10), json!("short"));
        assert_eq!(
            merge_cell(json!("ééééééééé"), None, 10),
            json!("ééééé…[8 bytes cut]")
        );
        // Cut by the engine: "<octet length>:<first characters>".
        assert_eq!(
            merge_cell(Value::Null, Some("5000:abcdefghijklmnop"), 10),
            json!("abcdefghij…[4990 bytes cut]")
        );
        assert_eq!(
            merge_cell(Value::Null, Some("20:éééééééééé"), 5),
            json!("éé…[16 bytes cut]")
        );
        // A cut text without a length still comes out marked.
        assert_eq!(
            merge_cell(Value::Null, Some("abcdefghijkl"), 10),
            json!("abcdefghij…[2 bytes cut]")
        );
        let s = SqlSettings::default();
        let mut c = Capper::wrapped(&s, vec!["a".into()]);
        assert_eq!(c.columns.as_deref(), Some(&["a".to_string()][..]));
        assert!(c.push_cut(row(json!({"a": 1}))));
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
