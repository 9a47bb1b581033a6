//! Read-only access to the News Nexus database (SQLite or PostgreSQL): the queries behind the
//! article tools, and the executor for guarded custom SQL. SQLite is opened with `mode=ro`;
//! PostgreSQL sessions run with `default_transaction_read_only=on` and a statement timeout.

use std::str::FromStr;
use std::time::Duration;

use futures_util::TryStreamExt;
use serde_json::{Map, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions, SqliteRow};
use sqlx::{Column, PgPool, Row, SqlitePool};

use crate::sql_guard::MAX_ROWS;

/// How long one query may run.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub enum NewsDb {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Rows as JSON objects, and whether more rows were cut off at [`MAX_ROWS`].
#[derive(Debug, Clone)]
pub struct Rows {
    pub rows: Vec<Map<String, Value>>,
    pub truncated: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("the query failed: {0}")]
    Query(String),
    #[error("the query took longer than {0:?}")]
    Timeout(Duration),
}

impl NewsDb {
    /// Opens the database read-only; connections are made lazily.
    pub fn open(url: &str) -> Result<NewsDb, sqlx::Error> {
        if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)?.read_only(true);
            Ok(NewsDb::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_lazy_with(opts),
            ))
        } else {
            let timeout_ms = STATEMENT_TIMEOUT.as_millis().to_string();
            let opts = PgConnectOptions::from_str(url)?
                .application_name("agent-service")
                .options([
                    ("default_transaction_read_only", "on"),
                    ("statement_timeout", timeout_ms.as_str()),
                ]);
            Ok(NewsDb::Postgres(
                PgPoolOptions::new()
                    .max_connections(4)
                    .connect_lazy_with(opts),
            ))
        }
    }

    /// Runs `sql` (written with `$1`, `$2`, ... placeholders) with text arguments; every selected
    /// column should be cast to TEXT by the caller or be decodable by [`row_to_json`].
    pub async fn query(&self, sql: &str, args: &[Value]) -> Result<Rows, DbError> {
        tokio::time::timeout(STATEMENT_TIMEOUT, self.query_inner(sql, args))
            .await
            .unwrap_or(Err(DbError::Timeout(STATEMENT_TIMEOUT)))
    }

    async fn query_inner(&self, sql: &str, args: &[Value]) -> Result<Rows, DbError> {
        let limit = MAX_ROWS + 1;
        let mut rows: Vec<Map<String, Value>> = match self {
            NewsDb::Sqlite(pool) => {
                let sql = sqlite_placeholders(sql);
                let mut q = sqlx::query(&sql);
                for a in args {
                    q = bind_sqlite(q, a);
                }
                let stream = q.fetch(pool).map_ok(|r: SqliteRow| sqlite_row(&r));
                try_take(stream, limit).await
            }
            NewsDb::Postgres(pool) => {
                let mut q = sqlx::query(sql);
                for a in args {
                    q = bind_pg(q, a);
                }
                let stream = q.fetch(pool).map_ok(|r: PgRow| pg_row(&r));
                try_take(stream, limit).await
            }
        }
        .map_err(|e| DbError::Query(e.to_string()))?;
        let truncated = rows.len() > MAX_ROWS;
        rows.truncate(MAX_ROWS);
        Ok(Rows { rows, truncated })
    }

    pub fn engine(&self) -> &'static str {
        match self {
            NewsDb::Sqlite(_) => "sqlite",
            NewsDb::Postgres(_) => "postgres",
        }
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

/// `$1` → `?1` for SQLite.
pub fn sqlite_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(|n| n.is_ascii_digit()) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

fn bind_sqlite<'q>(
    q: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    v: &Value,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    match v {
        Value::Number(n) if n.is_i64() => q.bind(n.as_i64()),
        Value::Number(n) => q.bind(n.as_f64()),
        Value::String(s) => q.bind(s.clone()),
        other => q.bind(other.to_string()),
    }
}

fn bind_pg<'q>(
    q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    v: &Value,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    match v {
        Value::Number(n) if n.is_i64() => q.bind(n.as_i64()),
        Value::Number(n) => q.bind(n.as_f64()),
        Value::String(s) => q.bind(s.clone()),
        other => q.bind(other.to_string()),
    }
}

fn sqlite_row(row: &SqliteRow) -> Map<String, Value> {
    let mut m = Map::new();
    for (i, col) in row.columns().iter().enumerate() {
        let v = if let Ok(v) = row.try_get::<Option<i64>, _>(i) {
            v.map(Value::from)
        } else if let Ok(v) = row.try_get::<Option<f64>, _>(i) {
            v.map(Value::from)
        } else if let Ok(v) = row.try_get::<Option<String>, _>(i) {
            v.map(Value::from)
        } else {
            Some(Value::from("<binary>"))
        };
        m.insert(col.name().to_string(), v.unwrap_or(Value::Null));
    }
    m
}

fn pg_row(row: &PgRow) -> Map<String, Value> {
    let mut m = Map::new();
    for (i, col) in row.columns().iter().enumerate() {
        let v = if let Ok(v) = row.try_get::<Option<String>, _>(i) {
            v.map(Value::from)
        } else if let Ok(v) = row.try_get::<Option<i64>, _>(i) {
            v.map(Value::from)
        } else if let Ok(v) = row.try_get::<Option<i32>, _>(i) {
            v.map(Value::from)
        } else if let Ok(v) = row.try_get::<Option<i16>, _>(i) {
            v.map(Value::from)
        } else if let Ok(v) = row.try_get::<Option<f64>, _>(i) {
            v.map(Value::from)
        } else if let Ok(v) = row.try_get::<Option<f32>, _>(i) {
            v.map(Value::from)
        } else if let Ok(v) = row.try_get::<Option<bool>, _>(i) {
            v.map(Value::from)
        } else if let Ok(v) = row.try_get::<Option<chrono::NaiveDate>, _>(i) {
            v.map(|d| Value::from(d.to_string()))
        } else if let Ok(v) = row.try_get::<Option<chrono::DateTime<chrono::Utc>>, _>(i) {
            v.map(|d| Value::from(d.to_rfc3339()))
        } else if let Ok(v) = row.try_get::<Option<chrono::NaiveDateTime>, _>(i) {
            v.map(|d| Value::from(d.to_string()))
        } else {
            Some(Value::from("<unsupported type>"))
        };
        m.insert(col.name().to_string(), v.unwrap_or(Value::Null));
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_for_sqlite() {
        assert_eq!(
            sqlite_placeholders("a = $1 AND b = $12 AND c = '$'"),
            "a = ?1 AND b = ?12 AND c = '$'"
        );
    }
}
