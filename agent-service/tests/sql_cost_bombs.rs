//! Queries whose single calls cost more than any timer can stop, as an attacker writes them:
//! SQLite `instr` and `trim(x, set)` over strings built by `group_concat` over cross joins (one VM
//! instruction each, so the progress handler never runs), PostgreSQL `strpos`, `position`,
//! `replace`, `split_part`, `LIKE`, `translate` and `btrim` over strings built by `string_agg`
//! (no interrupt check inside, so `statement_timeout`, `pg_cancel_backend` and
//! `pg_terminate_backend` all wait for the call to return). Each is refused by the guard with a
//! message that says why; the variants the rules still allow (short literal patterns over cross
//! joins) are stopped at the timeout. For every case, through the runner and the WebSocket:
//! another user's query is answered within 2 s while it runs, the same user cannot start a second
//! query while it runs, and once the answer is there the database has stopped working on it (on
//! SQLite no worker thread of this process uses CPU in the following second, measured from
//! /proc; on PostgreSQL no backend of the agent is active). And the executor alone, given such a
//! call without the guard: it answers only once the statement has ended (SQLite: the progress
//! handler and `sqlite3_interrupt` take effect when the call returns; PostgreSQL: the backend is
//! cancelled, then terminated, and the answer waits until it is gone). Its own test binary, so
//! the /proc measurement sees no other test's SQLite work.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_service::custom_sql::{self, Capper, SqlError, SqlSettings};
use common::*;
use serde_json::json;
use sqlx::Connection;
use test_support::{sqlite_fixture, sqlite_url, temp_dir, PgTestDb};

const TIMEOUT_SECS: u64 = 2;
const ATTACKER: i64 = 2;
const OTHER: i64 = 3;

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
        // Fields after the ")" that closes the command name: utime is field 14, stime 15.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() > 12 {
            total += f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
        }
    }
    Duration::from_secs_f64(total as f64 / ticks)
}

/// `n` copies of the Articles table (3 rows each) for a cross join.
fn cross(n: usize, pg: bool) -> String {
    let t = if pg { "\"Articles\"" } else { "Articles" };
    (1..=n)
        .map(|i| format!("{t} a{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// The guard refuses it; the message contains the text.
    Refused(&'static str),
    /// It runs and is stopped at the timeout.
    Stopped,
    /// The engine refuses it at once; the message contains the text.
    Fails(&'static str),
}
use Expect::*;

/// The SQLite cases: the reported attack, its variants, and what the rules still allow.
fn sqlite_cases() -> Vec<(String, Expect)> {
    let hay = format!(
        "SELECT group_concat('a', '') AS h FROM {}",
        cross(13, false)
    );
    let needle = format!(
        "SELECT group_concat('a', '') || 'b' AS n FROM {}",
        cross(12, false)
    );
    vec![
        // The report: a 1.6 MB haystack and a 0.5 MB needle, one `instr` call.
        (
            format!("SELECT instr(x.h, y.n) FROM ({hay}) x, ({needle}) y"),
            Refused("must be one stored value"),
        ),
        (
            format!("SELECT instr(a1.title, y.n) FROM Articles a1, ({needle}) y"),
            Refused("must be a string literal"),
        ),
        // trim with a large character set.
        (
            format!(
                "SELECT length(trim(x.h, y.s)) FROM ({hay}) x, (SELECT group_concat('b', '') || 'a' AS s FROM {}) y",
                cross(8, false)
            ),
            Refused("must be one stored value"),
        ),
        (
            format!(
                "SELECT trim(a1.title, y.s) FROM Articles a1, (SELECT group_concat('b', '') || 'a' AS s FROM {}) y",
                cross(8, false)
            ),
            Refused("must be a string literal"),
        ),
        // LIKE with a built pattern, and a built subject.
        (
            format!("SELECT a1.title LIKE '%' || y.n || '%' FROM Articles a1, ({needle}) y"),
            Refused("must be a string literal"),
        ),
        (
            format!("SELECT instr(x.h, 'aaab') FROM ({hay}) x"),
            Refused("must be one stored value"),
        ),
        // The values themselves: the engine caps them at AGENT_SQL_MAX_VALUE_BYTES.
        (
            format!("SELECT length(group_concat('a', '')) FROM {}", cross(13, false)),
            Fails("too big"),
        ),
        // Still allowed: cheap calls, many rows. The timeout stops them.
        (
            format!(
                "SELECT count(*) FROM {} WHERE instr(a1.title, 'heater') > 0",
                cross(20, false)
            ),
            Stopped,
        ),
        (
            format!(
                "SELECT count(*) FROM {} WHERE trim(a2.title, 'xyz') <> '' AND a3.title LIKE '%fire%'",
                cross(20, false)
            ),
            Stopped,
        ),
    ]
}

/// The PostgreSQL cases.
fn pg_cases() -> Vec<(String, Expect)> {
    let hay = format!("SELECT string_agg('a', '') AS s FROM {}", cross(12, true));
    let needle = format!(
        "SELECT 'b' || string_agg('a', '') AS s FROM {}",
        cross(11, true)
    );
    let grows = "grows with every row";
    vec![
        // The report: a 512 KiB haystack and a 172 KiB needle, one `strpos` call.
        (
            format!("SELECT strpos(h.s, n.s) FROM ({hay}) h, ({needle}) n"),
            Refused(grows),
        ),
        (
            format!("SELECT position(n.s IN h.s) FROM ({hay}) h, ({needle}) n"),
            Refused(grows),
        ),
        (
            format!("SELECT length(replace(h.s, n.s, '')) FROM ({hay}) h, ({needle}) n"),
            Refused(grows),
        ),
        (
            format!("SELECT split_part(h.s, n.s, 2) FROM ({hay}) h, ({needle}) n"),
            Refused(grows),
        ),
        (
            format!("SELECT h.s LIKE '%' || n.s || '%' FROM ({hay}) h, ({needle}) n"),
            Refused(grows),
        ),
        (
            format!("SELECT length(btrim(h.s, n.s)) FROM ({hay}) h, ({needle}) n"),
            Refused(grows),
        ),
        // Large strings built without an aggregate.
        (
            "SELECT strpos(repeat('a', 524288), 'b' || repeat('a', 262144))".into(),
            Refused("far larger than its arguments"),
        ),
        (
            format!(
                "SELECT strpos(a1.\"title\", a2.\"title\") FROM {}",
                cross(2, true)
            ),
            Refused("must be a string literal"),
        ),
        (
            format!(
                "SELECT position('fire' IN a1.\"title\" || a2.\"title\") FROM {}",
                cross(2, true)
            ),
            Refused("must be one stored value"),
        ),
        // Still allowed: cheap calls, many rows. statement_timeout stops them.
        (
            format!(
                "SELECT count(*) FROM {} WHERE strpos(a1.\"title\", 'heater') > 0",
                cross(20, true)
            ),
            Stopped,
        ),
        (
            format!(
                "SELECT count(*) FROM {} WHERE a1.\"title\" ILIKE '%fire%' OR split_part(a2.\"url\", '/', 3) = 'x'",
                cross(20, true)
            ),
            Stopped,
        ),
    ]
}

/// How the database shows that it stopped working on a query.
enum Engine {
    Sqlite,
    Postgres(String),
}

/// PostgreSQL backends of the agent's custom-SQL pool that are running a statement.
async fn active_agent_backends(url: &str) -> i64 {
    let mut admin = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND application_name = 'agent-service-sql' AND state = 'active'",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap()
}

/// Checks that the database has stopped working on the answered query.
async fn database_is_idle(engine: &Engine, what: &str) {
    match engine {
        Engine::Sqlite => {
            let before = sqlite_worker_cpu();
            // The measurement window: CPU used by SQLite's workers in the second after the answer.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let used = sqlite_worker_cpu().saturating_sub(before);
            assert!(
                used < Duration::from_millis(200),
                "{what}: SQLite kept computing after the answer: {used:?} CPU in one second"
            );
        }
        Engine::Postgres(url) => {
            assert_eq!(
                active_agent_backends(url).await,
                0,
                "{what}: PostgreSQL still runs the agent's query after the answer"
            );
        }
    }
}

/// Runs one case through the runner (as the attacker) and checks every promise.
async fn through_the_runner(agent: &Agent, engine: &Engine, sql: &str, expect: Expect) {
    let what = &sql[..sql.len().min(90)];
    let state = agent.state.clone();
    let case = {
        let (state, sql) = (state.clone(), sql.to_string());
        tokio::spawn(async move {
            let started = Instant::now();
            let r = state.sql.run(ATTACKER, &sql).await;
            (r, started.elapsed())
        })
    };
    let waited = Instant::now();
    while state.sql.running() == 0 && !case.is_finished() {
        assert!(waited.elapsed() < STEP, "{what}: never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut probed = false;
    if !case.is_finished() {
        probed = true;
        // Another user is answered while it runs.
        let asked = Instant::now();
        let other = state.sql.run(OTHER, "SELECT 1 AS one").await;
        let took = asked.elapsed();
        assert!(
            other.is_ok(),
            "{what}: another user's query failed: {other:?}"
        );
        assert!(
            took < Duration::from_secs(2),
            "{what}: another user waited {took:?}"
        );
        // The same user cannot start another one while it runs.
        let again = state.sql.run(ATTACKER, "SELECT 1 AS one").await;
        assert!(
            matches!(again, Err(SqlError::Busy(_))) || case.is_finished(),
            "{what}: a second query of the same user was not refused: {again:?}"
        );
    }
    let (r, took) = tokio::time::timeout(STEP, case)
        .await
        .expect("an answer in time")
        .unwrap();
    if matches!(r, Err(SqlError::Refused(_))) {
        // Nothing ran.
        assert_eq!(state.sql.running(), 0, "{what}");
    } else {
        database_is_idle(engine, what).await;
    }
    match expect {
        Refused(why) => match &r {
            Err(SqlError::Refused(e)) => {
                assert!(e.to_string().contains(why), "{what}: refused for {e}")
            }
            other => panic!("{what}: expected a refusal ({why}), got {other:?} after {took:?}"),
        },
        Fails(why) => match &r {
            Err(SqlError::Query(e)) => assert!(e.contains(why), "{what}: failed with {e}"),
            other => panic!("{what}: expected an engine error ({why}), got {other:?}"),
        },
        Stopped => {
            assert!(probed, "{what}: ended before it could be watched ({r:?})");
            assert!(matches!(r, Err(SqlError::Timeout(_))), "{what}: {r:?}");
            assert!(
                took < Duration::from_secs(TIMEOUT_SECS) + Duration::from_millis(1500),
                "{what}: stopped only after {took:?}"
            );
        }
    }
    // The permits are back: the same user may ask again at once.
    let next = state.sql.run(ATTACKER, "SELECT 1 AS one").await;
    assert!(next.is_ok(), "{what}: {next:?}");
    eprintln!("{expect:?} after {took:?}: {what}");
}

/// The first refused case and the first stopped one, sent as `/sql` over the WebSocket.
async fn through_the_websocket(agent: &Agent, engine: &Engine, cases: &[(String, Expect)]) {
    let mut s = agent
        .connect(&grace(), "grace-cost", "?provider=offline")
        .await
        .unwrap();
    greeted(&mut s).await;
    let refused = cases.iter().find(|(_, e)| matches!(e, Refused(_))).unwrap();
    let stopped = cases.iter().find(|(_, e)| *e == Stopped).unwrap();
    for (sql, expect) in [refused, stopped] {
        let state = agent.state.clone();
        send(
            &mut s,
            json!({"type": "user_message", "content": format!("/sql {sql}")}),
        )
        .await;
        let asked = Instant::now();
        if *expect == Stopped {
            let waited = Instant::now();
            while state.sql.running() == 0 {
                assert!(waited.elapsed() < STEP, "the WebSocket query never started");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let t = Instant::now();
            let other = state.sql.run(OTHER, "SELECT 1 AS one").await;
            assert!(
                other.is_ok() && t.elapsed() < Duration::from_secs(2),
                "{other:?}"
            );
            let again = state.sql.run(grace().user_id, "SELECT 1 AS one").await;
            assert!(matches!(again, Err(SqlError::Busy(_))), "{again:?}");
        }
        let text = json!(answer(&mut s).await).to_string();
        let took = asked.elapsed();
        match expect {
            Refused(why) => {
                assert!(
                    text.contains("could not run that query") && text.contains(why),
                    "{text}"
                );
            }
            _ => {
                assert!(text.contains("was stopped"), "{text}");
                assert!(
                    took < Duration::from_secs(TIMEOUT_SECS + 2),
                    "answered after {took:?}"
                );
            }
        }
        if *expect == Stopped {
            database_is_idle(engine, "the WebSocket query").await;
        }
    }
}

/// The executor without the guard, on an SQLite call that ignores interrupts (an `instr` of a
/// 0.5 MB haystack and a 177 kB needle, 1 to 2 s of one VM instruction) with a timeout well
/// inside that (300 ms), so the call is past its deadline however fast the machine runs it.
async fn a_stuck_sqlite_call_is_answered_when_it_ends(url: &str) {
    let pool = custom_sql::hardened_sqlite_pool(url, 1, 16 * 1024 * 1024).unwrap();
    let sql = format!(
        "SELECT instr(x.h, y.n) FROM (SELECT group_concat('a', '') AS h FROM {}) x, \
         (SELECT group_concat('a', '') || 'b' AS n FROM {}) y",
        cross(12, false),
        cross(11, false)
    );
    let settings = SqlSettings::default();
    let started = Instant::now();
    let r = custom_sql::execute_sqlite(
        &pool,
        &sql,
        Duration::from_millis(300),
        Capper::new(&settings),
    )
    .await;
    eprintln!(
        "a stuck SQLite call (300 ms timeout) answered after {:?}: {r:?}",
        started.elapsed()
    );
    assert!(matches!(r, Err(SqlError::Timeout(_))), "{r:?}");
    database_is_idle(&Engine::Sqlite, "a stuck SQLite call").await;
}

/// The executor without the guard, on a PostgreSQL call that ignores interrupts (a `strpos` of
/// 200 000 and 100 000 characters, a few seconds in one call) with a 1 s timeout: its backend is
/// cancelled a second after the deadline, terminated a second later, and the answer comes once
/// it is gone.
async fn a_stuck_pg_call_is_answered_when_its_backend_is_gone(url: &str) {
    let pool = custom_sql::hardened_pg_pool(url, 1, Duration::from_secs(1)).unwrap();
    let sql = "SELECT strpos(repeat('a', 200000), 'b' || repeat('a', 100000)) AS p";
    let settings = SqlSettings::default();
    let started = Instant::now();
    let r =
        custom_sql::execute_pg(&pool, sql, Duration::from_secs(1), Capper::new(&settings)).await;
    eprintln!(
        "a stuck PostgreSQL call (1 s timeout) answered after {:?}: {r:?}",
        started.elapsed()
    );
    assert!(matches!(r, Err(SqlError::Timeout(_))), "{r:?}");
    database_is_idle(
        &Engine::Postgres(url.to_string()),
        "a stuck PostgreSQL call",
    )
    .await;
}

async fn start(url: &str) -> Agent {
    Agent::start(url, &[("AGENT_SQL_TIMEOUT_SECS", TIMEOUT_SECS.to_string())]).await
}

/// SQLite, then PostgreSQL (one after the other: the measurement needs the CPU to itself).
#[tokio::test]
async fn calls_that_cannot_be_interrupted_never_start() {
    let dir = temp_dir();
    let db = sqlite_fixture(dir.path(), "nn.db").await;
    let agent = Arc::new(start(&sqlite_url(&db)).await);
    let cases = sqlite_cases();
    for (sql, expect) in &cases {
        through_the_runner(&agent, &Engine::Sqlite, sql, *expect).await;
    }
    through_the_websocket(&agent, &Engine::Sqlite, &cases).await;
    a_stuck_sqlite_call_is_answered_when_it_ends(&sqlite_url(&db)).await;

    let Some(pg) = PgTestDb::with_fixture().await else {
        return;
    };
    let agent = start(&pg.url).await;
    let engine = Engine::Postgres(pg.url.clone());
    let cases = pg_cases();
    for (sql, expect) in &cases {
        through_the_runner(&agent, &engine, sql, *expect).await;
    }
    through_the_websocket(&agent, &engine, &cases).await;
    a_stuck_pg_call_is_answered_when_its_backend_is_gone(&pg.url).await;
}
