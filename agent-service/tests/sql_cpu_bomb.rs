//! Four CPU-bomb queries in parallel (a 20-way cross join: billions of rows) from four users:
//! another user's question is answered while they still run, each bomb is stopped at its
//! timeout, and the database stops spending CPU on them: on SQLite the worker threads of this
//! process go idle (measured from /proc), on PostgreSQL no query of the agent is active any more.
//! A fifth query from a user whose bomb is running is refused (per-user limit).
//! Its own test binary, so the /proc measurement sees no other test's SQLite work.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_service::custom_sql::SqlError;
use common::*;
use serde_json::json;
use sqlx::Connection;
use test_support::{sqlite_fixture, sqlite_url, temp_dir, PgTestDb};

const BOMB_TIMEOUT_SECS: u64 = 6;

fn bomb() -> String {
    let from: Vec<String> = (0..20).map(|i| format!("\"Articles\" a{i}")).collect();
    format!("SELECT count(*) FROM {}", from.join(", "))
}

/// CPU time (user + system) of this process's SQLite worker threads.
fn sqlite_worker_cpu() -> Duration {
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("sqlx-sqlite") {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the ")" that closes the command name: state is field 3, utime 14, stime 15.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() > 12 {
            total += f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
        }
    }
    Duration::from_secs_f64(total as f64 / ticks)
}

/// CPU used over one second, sampled now.
async fn cpu_over_one_second() -> Duration {
    let a = sqlite_worker_cpu();
    tokio::time::sleep(Duration::from_secs(1)).await;
    sqlite_worker_cpu().saturating_sub(a)
}

/// Starts four bombs, asks another question while they run, then waits for the bombs.
async fn bombs_do_not_starve(agent: &Agent) -> Duration {
    let state = agent.state.clone();
    let mut bombs = Vec::new();
    for user in 101..105 {
        let state = state.clone();
        bombs.push(tokio::spawn(async move {
            let started = Instant::now();
            let r = state.sql.run(user, &bomb()).await;
            (r, started.elapsed())
        }));
    }
    let waited = Instant::now();
    while state.sql.running() < 4 {
        assert!(waited.elapsed() < STEP, "the four bombs never all started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Same user again while their bomb runs: refused at once.
    let again = state.sql.run(101, "SELECT 1").await;
    assert!(matches!(again, Err(SqlError::Busy(_))), "{again:?}");

    // Another user's question, answered while the bombs still run.
    let mut s = agent
        .connect(&grace(), "grace-q", "?provider=offline")
        .await
        .unwrap();
    greeted(&mut s).await;
    let asked = Instant::now();
    send(
        &mut s,
        json!({"type": "user_message", "content": "How many approved articles are there?"}),
    )
    .await;
    let frames = answer(&mut s).await;
    let delay = asked.elapsed();
    let text = json!(frames).to_string();
    assert!(text.contains("There are 2 approved articles"), "{text}");
    assert_eq!(
        state.sql.running(),
        4,
        "the other user's answer came only after the bombs ended ({delay:?})"
    );
    eprintln!("another user's question answered in {delay:?} while four bombs ran");

    for b in bombs {
        let (r, took) = b.await.unwrap();
        assert!(matches!(r, Err(SqlError::Timeout(_))), "{r:?}");
        assert!(
            took < Duration::from_secs(BOMB_TIMEOUT_SECS + 2),
            "a bomb ran {took:?}"
        );
    }
    delay
}

async fn start(url: &str) -> Agent {
    Agent::start(
        url,
        &[
            ("AGENT_SQL_TIMEOUT_SECS", BOMB_TIMEOUT_SECS.to_string()),
            ("AGENT_SQL_MAX_CONCURRENT", "4".into()),
        ],
    )
    .await
}

/// SQLite, then PostgreSQL (one after the other: the measurement needs the CPU to itself).
#[tokio::test]
async fn cpu_bombs_are_stopped_at_their_timeout() {
    cpu_bombs_on_sqlite_are_interrupted().await;
    cpu_bombs_on_postgres_are_cancelled().await;
}

async fn cpu_bombs_on_sqlite_are_interrupted() {
    let dir = temp_dir();
    let db = sqlite_fixture(dir.path(), "nn.db").await;
    let agent = Arc::new(start(&sqlite_url(&db)).await);
    let busy_probe = {
        let agent = agent.clone();
        tokio::spawn(async move {
            let waited = Instant::now();
            while agent.state.sql.running() < 4 {
                assert!(waited.elapsed() < STEP);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            cpu_over_one_second().await
        })
    };
    bombs_do_not_starve(&agent).await;
    let busy = busy_probe.await.unwrap();
    let after = cpu_over_one_second().await;
    eprintln!("SQLite worker CPU: {busy:?} per second while the bombs ran, {after:?} in the second after they were stopped");
    assert!(
        busy > Duration::from_millis(100) && busy > after * 5,
        "the bombs did not run ({busy:?} CPU)"
    );
    assert!(
        after < Duration::from_millis(200),
        "SQLite kept computing after the timeout: {after:?} CPU in one second"
    );
}

async fn cpu_bombs_on_postgres_are_cancelled() {
    let Some(db) = PgTestDb::with_fixture().await else {
        return;
    };
    let agent = start(&db.url).await;
    bombs_do_not_starve(&agent).await;
    let mut admin = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let active: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND application_name = 'agent-service-sql' AND state = 'active'",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(active, 0, "PostgreSQL still runs the agent's bombs");
}
