//! One large stored value selected in many columns: the agent's memory (resident set, from
//! /proc/self/statm, and its peak since a reset, from /proc/self/status) grows by at most a few
//! MiB, because the engine cuts every cell before the row is sent (the rows were built whole
//! before: 24 columns of a 15 MiB value took the agent from 13 to 154 MiB). 24 columns run under
//! the default column cap; 96 are refused by it, and run cut when the cap is raised. SQLite with
//! a 900 kB value (under the default `AGENT_SQL_MAX_VALUE_BYTES`; a 1.2 MB one cannot be read at
//! all), PostgreSQL with 15 MiB. Its own test binary, so no other test's allocations are measured.

mod common;

use agent_service::custom_sql::SqlError;
use common::*;
use sqlx::{Connection, Executor};
use test_support::{sqlite_fixture, sqlite_url, temp_dir, PgTestDb};

const MIB: u64 = 1024 * 1024;
/// The most the agent's memory may grow for one such query.
const ALLOWED_GROWTH: u64 = 8 * MIB;
const CELL_BYTES: usize = 256;

/// Resident set size of this process.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64
}

/// Peak resident set size since the last reset (`VmHWM`).
fn peak() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resets the peak to the current resident set (Linux: `5` in `clear_refs`).
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn columns(n: usize, pg: bool) -> String {
    let (d, t) = if pg {
        ("\"description\"", "\"Articles\"")
    } else {
        ("description", "Articles")
    };
    let cols: Vec<String> = (1..=n).map(|i| format!("{d} AS d{i}")).collect();
    format!(
        "SELECT {} FROM {t} WHERE {} = 'big'",
        cols.join(", "),
        if pg { "\"title\"" } else { "title" }
    )
}

/// Runs `sql` for a user and returns how much the agent's memory grew (the larger of the
/// resident set after it and its peak during it, over the resident set before).
async fn growth(agent: &Agent, sql: &str) -> (u64, Result<agent_service::Rows, SqlError>) {
    let before = rss();
    let reset = reset_peak();
    let r = agent.state.sql.run(2, sql).await.map(|(_, rows)| rows);
    let after = rss();
    let top = if reset {
        peak().unwrap_or(after)
    } else {
        after
    };
    (after.max(top).saturating_sub(before), r)
}

/// The wide queries on one agent whose column cap is `cap`; `size` is the stored value's length.
async fn wide_results_stay_small(agent: &Agent, pg: bool, size: usize, cap: usize, what: &str) {
    // Warm up: pool connections, the schema, the allocator's arenas.
    for _ in 0..2 {
        agent.state.sql.run(2, &columns(1, pg)).await.unwrap();
    }
    for n in [24, 96] {
        let sql = columns(n, pg);
        let (grew, r) = growth(agent, &sql).await;
        if n > cap {
            match r {
                Err(SqlError::Refused(e)) => assert!(
                    e.to_string()
                        .contains(&format!("at most {cap} are allowed")),
                    "{e}"
                ),
                other => panic!("{what}, {n} columns: expected a refusal, got {other:?}"),
            }
            continue;
        }
        let rows = r.unwrap_or_else(|e| panic!("{what}, {n} columns: {e}"));
        eprintln!(
            "{what}: {n} columns of a {size}-byte value: the agent grew by {:.1} MiB",
            grew as f64 / MIB as f64
        );
        assert!(
            grew <= ALLOWED_GROWTH,
            "{what}, {n} columns: the agent grew by {} MiB",
            grew / MIB
        );
        assert_eq!(rows.rows.len(), 1, "{what}");
        let row = &rows.rows[0];
        assert_eq!(row.len(), n);
        let mark = format!("…[{} bytes cut]", size - CELL_BYTES);
        for (k, v) in row {
            let cell = v.as_str().unwrap();
            assert!(
                cell.ends_with(&mark) && cell.len() == CELL_BYTES + mark.len(),
                "{what}: {k} is not cut: {}…",
                &cell[..cell.len().min(40)]
            );
        }
    }
}

async fn agents(url: &str) -> (Agent, Agent) {
    let cell = ("AGENT_SQL_MAX_CELL_BYTES", CELL_BYTES.to_string());
    let default = Agent::start(url, std::slice::from_ref(&cell)).await;
    let wide = Agent::start(url, &[cell, ("AGENT_SQL_MAX_COLUMNS", "96".into())]).await;
    (default, wide)
}

/// SQLite, then PostgreSQL (one at a time: the measurement is process-wide).
#[tokio::test]
async fn wide_rows_of_large_values_are_cut_before_they_are_read() {
    const SQLITE_SIZE: usize = 900_000;
    let dir = temp_dir();
    let db = sqlite_fixture(dir.path(), "nn.db").await;
    {
        let mut c = sqlx::SqliteConnection::connect(&sqlite_url(&db))
            .await
            .unwrap();
        // Built inside SQLite, so the test itself never holds the value.
        c.execute(
            format!(
                "INSERT INTO Articles (title, description, createdAt, updatedAt) VALUES \
                 ('big', replace(hex(zeroblob({})), '0', 'x'), '2025-01-01', '2025-01-01')",
                SQLITE_SIZE / 2
            )
            .as_str(),
        )
        .await
        .unwrap();
        c.close().await.unwrap();
    }
    let (default, wide) = agents(&sqlite_url(&db)).await;
    wide_results_stay_small(&default, false, SQLITE_SIZE, 32, "SQLite").await;
    wide_results_stay_small(&wide, false, SQLITE_SIZE, 96, "SQLite").await;
    drop((default, wide));
    // A stored value larger than AGENT_SQL_MAX_VALUE_BYTES cannot be read at all.
    {
        let mut c = sqlx::SqliteConnection::connect(&sqlite_url(&db))
            .await
            .unwrap();
        c.execute(
            "INSERT INTO Articles (title, description, createdAt, updatedAt) VALUES \
             ('huge', replace(hex(zeroblob(600000)), '0', 'x'), '2025-01-01', '2025-01-01')",
        )
        .await
        .unwrap();
        c.close().await.unwrap();
    }
    let agent = Agent::start(&sqlite_url(&db), &[]).await;
    let r = agent
        .state
        .sql
        .run(2, "SELECT description FROM Articles WHERE title = 'huge'")
        .await;
    assert!(
        matches!(&r, Err(SqlError::Query(e)) if e.contains("too big")),
        "{:?}",
        r.map(|(_, rows)| rows.rows.len())
    );
    drop(agent);

    const PG_SIZE: usize = 15 * 1024 * 1024;
    let Some(pg) = PgTestDb::with_fixture().await else {
        return;
    };
    {
        let mut c = sqlx::PgConnection::connect(&pg.url).await.unwrap();
        c.execute(r#"ALTER TABLE "Articles" ALTER COLUMN "description" TYPE text"#)
            .await
            .unwrap();
        c.execute(
            format!(
                r#"INSERT INTO "Articles" ("title", "description", "createdAt", "updatedAt") VALUES ('big', repeat('x', {PG_SIZE}), now(), now())"#
            )
            .as_str(),
        )
        .await
        .unwrap();
        c.close().await.unwrap();
    }
    let (default, wide) = agents(&pg.url).await;
    wide_results_stay_small(&default, true, PG_SIZE, 32, "PostgreSQL").await;
    wide_results_stay_small(&wide, true, PG_SIZE, 96, "PostgreSQL").await;
}
