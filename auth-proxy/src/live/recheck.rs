//! The periodic re-check of the users who hold open tunnels: one batched query per interval
//! (`live.recheck_secs`) against the operator's `Users` table, whatever the number of tunnels, with
//! the same `active_condition` as the handshake. A user missing from the answer was deleted or no
//! longer passes the condition; their tunnels are closed with `user_removed`. A failed query
//! closes nothing (an outage is not a removal).
//!
//! The query runs on a one-connection read-only pool of its own, so it never competes with the
//! handshakes' lookups for a connection.

use std::collections::HashSet;
use std::time::Duration;

use db::{timed, Engine, Options, Pool};

use crate::config::UsersConfig;

/// The ids of `ids` that still have a row passing `active_condition`: SQLite takes the ids as one
/// JSON array (`json_each`), PostgreSQL as one `BIGINT[]` (`= ANY`).
pub fn batch_sql(engine: Engine, c: &UsersConfig) -> String {
    let id = engine.quote(&c.id_column);
    let (int, filter) = match engine {
        Engine::Sqlite => (
            "INTEGER",
            format!("{id} IN (SELECT value FROM json_each($1))"),
        ),
        Engine::Postgres => ("BIGINT", format!("{id} = ANY($1)")),
    };
    let mut sql = format!(
        "SELECT CAST({id} AS {int}) FROM {table} WHERE {filter}",
        table = engine.quote(&c.table),
    );
    if !c.active_condition.trim().is_empty() {
        sql.push_str(&format!(" AND ({})", c.active_condition.trim()));
    }
    sql
}

/// The users of `holders` that are not in `present`, sorted.
pub fn removed(holders: &HashSet<i64>, present: &HashSet<i64>) -> Vec<i64> {
    let mut gone: Vec<i64> = holders.difference(present).copied().collect();
    gone.sort_unstable();
    gone
}

pub struct Recheck {
    pool: Pool,
    sql: String,
    timeout: Duration,
}

impl Recheck {
    /// A lazy pool on the Users database (no connection until the first re-check).
    pub fn new(c: &UsersConfig) -> Result<Recheck, db::Error> {
        let engine = Engine::of_url(&c.database_url)?;
        let timeout = Duration::from_millis(c.query_timeout_ms);
        let options = Options::read_only("auth-proxy-recheck")
            .max_connections(1)
            .acquire_timeout(timeout)
            .statement_timeout(timeout);
        Ok(Recheck {
            pool: Pool::connect_lazy(&c.database_url, &options)?,
            sql: batch_sql(engine, c),
            timeout,
        })
    }

    /// The ids of `ids` that still have a row passing `active_condition`, in one query.
    pub async fn present(&self, ids: &[i64]) -> Result<HashSet<i64>, db::Error> {
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        let rows: Vec<i64> = timed(self.timeout, async {
            Ok(match &self.pool {
                Pool::Sqlite(p) => {
                    let list = serde_json::to_string(ids).unwrap_or_else(|_| "[]".into());
                    sqlx::query_scalar(&self.sql)
                        .bind(list)
                        .fetch_all(p)
                        .await?
                }
                Pool::Postgres(p) => {
                    sqlx::query_scalar(&self.sql)
                        .bind(ids.to_vec())
                        .fetch_all(p)
                        .await?
                }
            })
        })
        .await?;
        Ok(rows.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_query_per_engine() {
        let c = UsersConfig::default();
        assert_eq!(
            batch_sql(Engine::Postgres, &c),
            r#"SELECT CAST("id" AS BIGINT) FROM "Users" WHERE "id" = ANY($1)"#
        );
        let c = UsersConfig {
            active_condition: r#""deletedAt" IS NULL"#.into(),
            ..UsersConfig::default()
        };
        assert_eq!(
            batch_sql(Engine::Sqlite, &c),
            r#"SELECT CAST("id" AS INTEGER) FROM "Users" WHERE "id" IN (SELECT value FROM json_each($1)) AND ("deletedAt" IS NULL)"#
        );
    }

    #[test]
    fn removed_users_are_the_missing_ones() {
        let holders: HashSet<i64> = [1, 2, 3].into();
        let present: HashSet<i64> = [1, 3].into();
        assert_eq!(removed(&holders, &present), vec![2]);
        assert!(removed(&holders, &holders).is_empty());
    }

    async fn check_fixture(url: &str) {
        let c = UsersConfig {
            database_url: url.to_string(),
            ..UsersConfig::default()
        };
        let r = Recheck::new(&c).unwrap();
        let present = r.present(&[1, 2, 999]).await.unwrap();
        assert_eq!(present, [1, 2].into());
        assert!(r.present(&[]).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn batched_query_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let path = test_support::sqlite_fixture(dir.path(), "nn.db").await;
        check_fixture(&test_support::sqlite_url(&path)).await;
    }

    #[tokio::test]
    async fn batched_query_on_postgres() {
        let Some(db) = test_support::PgTestDb::with_fixture().await else {
            return;
        };
        check_fixture(&db.url).await;
    }
}
