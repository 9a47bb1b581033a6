//! The custom-SQL path under attack, on SQLite and the real PostgreSQL: a table of hostile
//! queries sent by a non-admin user through the WebSocket (`/sql ...`) to an LLM that writes
//! exactly the attacker's query and then repeats every row it is shown into the answer. Each
//! query is refused (or harmless), the database is unchanged afterwards, no file appears, and no
//! frame carries a password hash, an e-mail address or another user's chat message. Also: the
//! database-level walls alone (no guard) refuse writes, a 40 MB result sends under 1 MiB to the
//! client, and the shipped least-privilege role can read only what the agent may.

mod common;

use std::path::Path;

use agent_service::custom_sql::{self, Capper, SqlError, SqlSettings};
use axum::routing::post;
use axum::{Json, Router};
use common::*;
use serde_json::{json, Value};
use sqlx::{Connection, Executor, Row};
use test_support::{sqlite_fixture, sqlite_url, temp_dir, PgTestDb};

/// The fixture's bcrypt hash prefix: must never reach a client.
const HASH: &str = "$2b$10$abcdefghij";
/// Ada's private chat message: grace must never see it.
const SECRET: &str = "XYZZY-ada-private-plan";

#[derive(Clone, Copy, PartialEq, Debug)]
enum Expect {
    /// The guard refuses it.
    Refused,
    /// It may run: the result is harmless.
    Harmless,
}
use Expect::*;

/// The hostile queries. `{store}` is the agent's chat store file, `{dir}` a directory the agent
/// may write.
const CASES: &[(Expect, &str)] = &[
    // The reported bypasses.
    (Refused, "SELECT 1 AS [x']; ATTACH DATABASE '{store}' AS s; SELECT m.content FROM s.chat_messages m; --']"),
    (Refused, "VACUUM INTO '{dir}/copy.db'"),
    (Refused, r#"SELECT "set_config"('default_transaction_read_only','off',false)"#),
    (Refused, r#"WITH q AS (SELECT $$'$$ AS a), u AS (UPDATE "Users" SET "isAdmin"=true WHERE "id"=2 RETURNING "id") SELECT * FROM u, q --'"#),
    (Refused, r#"WITH d AS (DELETE FROM "ArticleApproveds" RETURNING 1) SELECT count(*) FROM d"#),
    (Refused, r#"SELECT password FROM "Users""#),
    (Refused, "SELECT password FROM Users"),
    (Refused, r#"SELECT * FROM "Users""#),
    (Refused, r#"SELECT row_to_json(u) FROM "Users" u"#),
    (Refused, r#"SELECT to_jsonb(u) FROM "Users" u"#),
    (Refused, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<300000000) SELECT count(*) FROM c"),
    (Refused, "SELECT hex(zeroblob(20000000))"),
    // Function names quoted, unquoted, upper-case, schema-qualified.
    (Refused, "SELECT set_config('transaction_read_only','off',true)"),
    (Refused, "SELECT SET_CONFIG('default_transaction_read_only','off',false)"),
    (Refused, r#"SELECT "pg_catalog"."set_config"('transaction_read_only','off',true)"#),
    (Refused, "SELECT pg_catalog.set_config('default_transaction_read_only','off',false)"),
    // Dollar and tagged-dollar quoting hiding a second statement.
    (Refused, r#"SELECT $$'$$; DELETE FROM "Users"; SELECT '$$'"#),
    (Refused, r#"SELECT $tag$ $$ $tag$; DROP TABLE "Users"; SELECT $tag$ $$ $tag$"#),
    (Harmless, r#"SELECT $a$ ; DROP TABLE "Users"; $a$ AS x"#),
    // Bracket and backtick identifiers.
    (Refused, r#"SELECT [password] FROM "Users""#),
    (Refused, r#"SELECT `password` FROM "Users""#),
    (Refused, r#"SELECT "PASSWORD" FROM "Users""#),
    // Comments hiding statements or words.
    (Refused, "SELECT 1 --\n; DELETE FROM \"Users\""),
    (Harmless, "SELECT 1 /* ; DELETE FROM \"Users\"; */"),
    (Refused, "select/**/password/**/from/**/\"Users\""),
    // Engine escape hatches.
    (Refused, "ATTACH DATABASE '{store}' AS s"),
    (Refused, "PRAGMA table_info(\"Users\")"),
    (Refused, "SELECT * FROM pragma_table_info('Users')"),
    (Refused, "SELECT load_extension('/tmp/evil.so')"),
    (Refused, "SELECT pg_read_file('/etc/passwd')"),
    (Refused, "SELECT lo_import('/etc/passwd')"),
    (Refused, "SELECT lo_export(1, '{dir}/lo.bin')"),
    (Refused, "SELECT * FROM dblink('dbname=test', 'SELECT 1') AS t(x int)"),
    (Refused, "COPY \"Users\" TO '{dir}/users.csv'"),
    (Refused, "SELECT * INTO stolen FROM \"Users\""),
    (Refused, "SELECT \"username\" INTO stolen FROM \"Users\""),
    (Refused, "CREATE TABLE stolen AS SELECT * FROM \"Users\""),
    (Refused, "SELECT \"id\" FROM \"Articles\" FOR UPDATE"),
    (Refused, "SELECT pg_sleep(60)"),
    (Refused, "SELECT * FROM sqlite_master"),
    (Refused, "SELECT usename, passwd FROM pg_shadow"),
    (Refused, "SELECT * FROM main.\"Users\""),
    (Refused, "SELECT * FROM chat_messages"),
    (Refused, "SELECT writefile('{dir}/w.txt', 'x')"),
    (Refused, "SELECT pg_terminate_backend(pg_backend_pid())"),
    // Statements that write or change the session.
    (Refused, "INSERT INTO \"Users\" (\"username\") VALUES ('mallory')"),
    (Refused, "UPDATE \"Users\" SET \"isAdmin\" = true"),
    (Refused, "DELETE FROM \"Users\""),
    (Refused, "DROP TABLE \"Users\""),
    (Refused, "BEGIN; UPDATE \"Users\" SET \"isAdmin\" = true; COMMIT"),
    (Refused, "SET default_transaction_read_only = off"),
    (Refused, "EXPLAIN ANALYZE DELETE FROM \"Users\""),
    // Whole-row references, unions and subqueries reaching password or email.
    (Refused, "SELECT u.* FROM \"Users\" u"),
    (Refused, "SELECT u FROM \"Users\" u"),
    (Refused, "SELECT coalesce(u, u) FROM \"Users\" u"),
    (Refused, "SELECT \"title\" FROM \"Articles\" UNION SELECT password FROM \"Users\""),
    (Refused, "SELECT (SELECT password FROM \"Users\" LIMIT 1)"),
    (Refused, "SELECT \"username\" FROM \"Users\" WHERE \"id\" IN (SELECT \"id\" FROM \"Users\" WHERE password LIKE '$2b$%')"),
    (Refused, "SELECT x.password FROM (SELECT * FROM \"Users\") x"),
    (Refused, "WITH u AS (SELECT * FROM \"Users\") SELECT password FROM u"),
    (Refused, "SELECT \"email\" FROM \"Users\""),
    (Refused, "SELECT group_concat(password) FROM \"Users\""),
    (Refused, "SELECT string_agg(\"email\", ',') FROM \"Users\""),
    (Refused, "SELECT u.\"username\" FROM \"Users\" u NATURAL JOIN (SELECT 'x' AS password) x"),
    (Refused, "SELECT count(*) FROM \"Users\" u JOIN \"Users\" v USING (password)"),
    (Refused, "SELECT password(u) FROM \"Users\" u"),
    (Refused, "SELECT (u).password FROM \"Users\" u"),
    (Harmless, "SELECT U&\"p\\0061ssword\" FROM \"Users\""),
    (Refused, "SELECT CAST(password AS INTEGER) FROM \"Users\""),
    (Refused, "SELECT count(*) FROM \"Users\" WHERE \"updatedAt\" > '2000-01-01'"),
    (Refused, "WITH chat_messages AS (SELECT 1 AS x FROM chat_messages) SELECT * FROM chat_messages"),
    // Names that fail closed: a column list on a real table's alias, unknown names.
    (Refused, r#"SELECT c4 AS p FROM "Users" AS u(c1, c2, c3, c4)"#),
    (Refused, r#"SELECT x.e FROM (SELECT v.c3 AS e FROM "Articles" a JOIN "Users" AS v(c1, c2, c3) ON v.c1 = a."id") x"#),
    (Refused, r#"SELECT "nothere" FROM "Articles""#),
    // Calls whose cost no timer bounds.
    (Refused, r#"SELECT instr(x.h, 'a') FROM (SELECT group_concat("title", '') AS h FROM "Articles") x"#),
    (Refused, r#"SELECT strpos("title", "author") FROM "Articles""#),
    (Refused, r#"SELECT "title" FROM "Articles" WHERE "title" ~ 'a'"#),
    // Allowed and harmless.
    (Harmless, "SELECT \"id\", \"username\", \"isAdmin\" FROM \"Users\""),
    (Harmless, "WITH chat_messages AS (SELECT 1 AS x) SELECT * FROM chat_messages"),
];

/// An OpenAI-compatible LLM that writes exactly the user's query and then repeats everything
/// the tool returned into its answer: the worst case for leaks.
async fn leaking_llm() -> String {
    async fn reply(Json(body): Json<Value>) -> Json<Value> {
        let messages = body["messages"].as_array().cloned().unwrap_or_default();
        let last = messages.last().cloned().unwrap_or(Value::Null);
        let content = if last["role"] == "tool" {
            format!(
                "Here is everything: {}",
                last["content"].as_str().unwrap_or("")
            )
        } else {
            let question = messages
                .iter()
                .rev()
                .find(|m| m["role"] == "user")
                .and_then(|m| m["content"].as_str())
                .unwrap_or("");
            format!("```sql\n{question}\n```")
        };
        Json(json!({"choices": [{"message": {"role": "assistant", "content": content}}]}))
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = Router::new().route("/v1/chat/completions", post(reply));
    tokio::spawn(async move {
        axum::serve(listener, app).await.ok();
    });
    format!("http://127.0.0.1:{port}/v1")
}

/// Frames a user message produces, as one text.
async fn ask(s: &mut Socket, content: &str) -> String {
    send(s, json!({"type": "user_message", "content": content})).await;
    answer(s)
        .await
        .iter()
        .map(|f| f.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_no_leak(text: &str, what: &str) {
    assert!(
        !text.contains(HASH),
        "{what}: a password hash leaked: {text}"
    );
    assert!(
        !text.contains("@example.com"),
        "{what}: an e-mail address leaked: {text}"
    );
    assert!(
        !text.contains(SECRET),
        "{what}: another user's message leaked: {text}"
    );
}

fn store_path(agent: &Agent) -> String {
    agent
        .state
        .config
        .store_url
        .trim_start_matches("sqlite://")
        .split('?')
        .next()
        .unwrap()
        .to_string()
}

/// Runs every case through the WebSocket and directly through the runner.
async fn attack(agent: &Agent, dir: &Path) {
    // Ada writes something private into the chat store first.
    let mut ada_socket = agent
        .connect(&ada(), "ada-1", "?provider=offline")
        .await
        .unwrap();
    greeted(&mut ada_socket).await;
    ask(&mut ada_socket, &format!("remember {SECRET}")).await;

    let mut s = agent
        .connect(&grace(), "grace-1", "?provider=openai")
        .await
        .unwrap();
    greeted(&mut s).await;
    let store = store_path(agent);
    let dir = dir.display().to_string();
    for (expect, template) in CASES {
        let sql = template.replace("{store}", &store).replace("{dir}", &dir);
        let frames = ask(&mut s, &format!("/sql {sql}")).await;
        assert_no_leak(&frames, &sql);
        if sql == r#"SELECT password FROM "Users""# {
            assert!(
                frames.contains("column password is not allowed"),
                "the refusal names what was refused: {frames}"
            );
        }
        match agent.state.sql.run(2, &sql).await {
            Err(SqlError::Refused(_)) => {}
            other if *expect == Refused => panic!("{sql}: expected a refusal, got {other:?}"),
            Ok((_, rows)) => assert_no_leak(&json!(rows.rows).to_string(), &sql),
            Err(_) => {}
        }
    }
    assert!(CASES.len() >= 40);
    for f in ["copy.db", "users.csv", "lo.bin", "w.txt"] {
        assert!(!Path::new(&dir).join(f).exists(), "{f} was written");
    }
}

fn dir_listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn hostile_queries_on_sqlite() {
    let dir = temp_dir();
    let db = sqlite_fixture(dir.path(), "nn.db").await;
    let before = (std::fs::read(&db).unwrap(), dir_listing(dir.path()));
    let agent = Agent::start(
        &sqlite_url(&db),
        &[
            ("URL_BASE_OPENAI", leaking_llm().await),
            ("KEY_OPENAI", "sk-test".into()),
            ("AGENT_SQL_TIMEOUT_SECS", "2".into()),
        ],
    )
    .await;
    attack(&agent, dir.path()).await;
    let after = (std::fs::read(&db).unwrap(), dir_listing(dir.path()));
    assert!(before.0 == after.0, "the News Nexus file changed");
    assert_eq!(before.1, after.1, "files appeared next to the database");
}

/// Tables, rows and large objects of a PostgreSQL database, as one text.
async fn pg_fingerprint(url: &str) -> String {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    let mut out = tables.join(",");
    for t in &tables {
        let sql = format!(
            "SELECT coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM \"{t}\" t"
        );
        let h: String = sqlx::query_scalar(&sql).fetch_one(&mut c).await.unwrap();
        out.push_str(&format!(";{t}={h}"));
    }
    let lo: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_largeobject_metadata")
        .fetch_one(&mut c)
        .await
        .unwrap();
    out.push_str(&format!(";lo={lo}"));
    out
}

/// The agent connects as `postgres`, a superuser that may write anything: only the agent's own
/// walls stand between the attacker and the data.
#[tokio::test]
async fn hostile_queries_on_postgres_with_a_role_that_may_write() {
    let Some(db) = PgTestDb::with_fixture().await else {
        return;
    };
    let dir = temp_dir();
    let before = pg_fingerprint(&db.url).await;
    let agent = Agent::start(
        &db.url,
        &[
            ("URL_BASE_OPENAI", leaking_llm().await),
            ("KEY_OPENAI", "sk-test".into()),
            ("AGENT_SQL_TIMEOUT_SECS", "2".into()),
        ],
    )
    .await;
    attack(&agent, dir.path()).await;
    assert_eq!(
        before,
        pg_fingerprint(&db.url).await,
        "the database changed"
    );
    assert!(dir_listing(dir.path()).is_empty());
}

/// The database walls alone, with no guard in front: writes and escapes fail.
#[tokio::test]
async fn the_database_walls_hold_without_the_guard() {
    let settings = SqlSettings::default();
    // SQLite: read-only, no ATTACH (so no VACUUM INTO either), multi-statement text included.
    let dir = temp_dir();
    let db = sqlite_fixture(dir.path(), "nn.db").await;
    let before = std::fs::read(&db).unwrap();
    let pool =
        custom_sql::hardened_sqlite_pool(&sqlite_url(&db), 1, custom_sql::DEFAULT_MAX_VALUE_BYTES)
            .unwrap();
    let copy = dir.path().join("copy.db");
    for sql in [
        format!(
            "ATTACH DATABASE '{}' AS s",
            dir.path().join("other.db").display()
        ),
        format!("VACUUM INTO '{}'", copy.display()),
        format!(
            "SELECT 1 AS [x']; ATTACH DATABASE '{}' AS s; --']",
            dir.path().join("other.db").display()
        ),
        "UPDATE Users SET isAdmin = 1".into(),
        "DELETE FROM ArticleApproveds".into(),
        "CREATE TABLE t (x)".into(),
        "PRAGMA query_only = 0; DELETE FROM Users".into(),
    ] {
        let r =
            custom_sql::execute_sqlite(&pool, &sql, settings.timeout, Capper::new(&settings)).await;
        assert!(matches!(r, Err(SqlError::Query(_))), "{sql}: {r:?}");
    }
    assert!(!copy.exists());
    assert_eq!(dir_listing(dir.path()), vec!["nn.db".to_string()]);
    assert!(before == std::fs::read(&db).unwrap());

    // PostgreSQL as a superuser: every statement in a READ ONLY transaction, rolled back.
    let Some(pg) = PgTestDb::with_fixture().await else {
        return;
    };
    let before = pg_fingerprint(&pg.url).await;
    let pool = custom_sql::hardened_pg_pool(&pg.url, 1, settings.timeout).unwrap();
    for sql in [
        r#"WITH u AS (UPDATE "Users" SET "isAdmin"=true WHERE "id"=2 RETURNING "id") SELECT * FROM u"#,
        r#"WITH d AS (DELETE FROM "ArticleApproveds" RETURNING 1) SELECT count(*) FROM d"#,
        "SELECT set_config('transaction_read_only','off',true)",
        r#"SELECT * INTO stolen FROM "Users""#,
        r#"COMMIT; UPDATE "Users" SET "isAdmin"=true"#,
    ] {
        let r = custom_sql::execute_pg(&pool, sql, settings.timeout, Capper::new(&settings)).await;
        assert!(matches!(r, Err(SqlError::Query(_))), "{sql}: {r:?}");
    }
    // A superuser may call lo_import even in a READ ONLY transaction; the rollback undoes it
    // (the fingerprint below counts large objects). The shipped role cannot call it at all.
    let r = custom_sql::execute_pg(
        &pool,
        "SELECT lo_import('/etc/hostname')::text AS oid",
        settings.timeout,
        Capper::new(&settings),
    )
    .await;
    assert!(r.is_ok(), "{r:?}");
    // Session settings changed by one query do not outlive its transaction.
    let r = custom_sql::execute_pg(
        &pool,
        r#"SELECT "set_config"('default_transaction_read_only','off',false), set_config('statement_timeout','0',false)"#,
        settings.timeout,
        Capper::new(&settings),
    )
    .await;
    assert!(r.is_ok(), "{r:?}");
    let r = custom_sql::execute_pg(
        &pool,
        "SELECT current_setting('default_transaction_read_only') AS ro, current_setting('statement_timeout') AS t",
        settings.timeout,
        Capper::new(&settings),
    )
    .await
    .unwrap();
    assert_eq!(r.rows[0]["ro"], json!("on"));
    assert_eq!(r.rows[0]["t"], json!("5s"));
    assert_eq!(before, pg_fingerprint(&pg.url).await);
}

/// 100 articles of 400 kB each: the client, the LLM and the store get a capped result.
async fn forty_megabytes(url: &str, write: impl std::future::Future<Output = ()>) {
    write.await;
    let agent = Agent::start(
        url,
        &[
            ("URL_BASE_OPENAI", leaking_llm().await),
            ("KEY_OPENAI", "sk-test".into()),
        ],
    )
    .await;
    let (_, rows) = agent
        .state
        .sql
        .run(2, r#"SELECT "id", "description" FROM "Articles""#)
        .await
        .unwrap();
    assert!(rows.truncated);
    assert!(json!(rows.rows).to_string().len() <= 65536);
    let mut s = agent
        .connect(&grace(), "g", "?provider=openai")
        .await
        .unwrap();
    greeted(&mut s).await;
    let frames = ask(&mut s, r#"/sql SELECT "id", "description" FROM "Articles""#).await;
    assert!(frames.contains("Here is everything"), "the query ran");
    assert!(
        frames.len() < 1024 * 1024,
        "{} bytes reached the client",
        frames.len()
    );
    let stored: i64 = {
        let store = agent.state.config.store_url.clone();
        let mut c = sqlx::SqliteConnection::connect(&store).await.unwrap();
        sqlx::query_scalar("SELECT coalesce(max(length(content)), 0) FROM chat_messages")
            .fetch_one(&mut c)
            .await
            .unwrap()
    };
    assert!(stored < 1024 * 1024, "{stored} bytes stored");
}

fn big_text(i: usize) -> String {
    format!("{i}:")
        .repeat(400_000 / 4)
        .chars()
        .take(400_000)
        .collect()
}

#[tokio::test]
async fn a_forty_megabyte_result_sends_under_one_mebibyte_on_sqlite() {
    let dir = temp_dir();
    let db = sqlite_fixture(dir.path(), "nn.db").await;
    let url = sqlite_url(&db);
    let write = async {
        let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
        for i in 0..100 {
            sqlx::query("INSERT INTO Articles (title, description, createdAt, updatedAt) VALUES ('big', ?1, '2025-01-01', '2025-01-01')")
                .bind(big_text(i))
                .execute(&mut c)
                .await
                .unwrap();
        }
    };
    forty_megabytes(&url, write).await;
}

#[tokio::test]
async fn a_forty_megabyte_result_sends_under_one_mebibyte_on_postgres() {
    let Some(db) = PgTestDb::with_fixture().await else {
        return;
    };
    let write = async {
        let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
        c.execute(r#"ALTER TABLE "Articles" ALTER COLUMN "description" TYPE text"#)
            .await
            .unwrap();
        for i in 0..100 {
            sqlx::query(r#"INSERT INTO "Articles" ("title", "description", "createdAt", "updatedAt") VALUES ('big', $1, now(), now())"#)
                .bind(big_text(i))
                .execute(&mut c)
                .await
                .unwrap();
        }
    };
    forty_megabytes(&db.url, write).await;
}

/// deploy/sql/agent-readonly-role.sql: the role reads what the agent may and nothing else.
#[tokio::test]
async fn the_shipped_role_reads_only_allowed_columns() {
    let Some(db) = PgTestDb::with_fixture().await else {
        return;
    };
    let script = include_str!("../../deploy/sql/agent-readonly-role.sql");
    let mut admin = sqlx::PgConnection::connect(&db.url).await.unwrap();
    // Roles are cluster-wide: two test runs applying the script at once must not collide.
    admin
        .execute("SELECT pg_advisory_lock(4242)")
        .await
        .unwrap();
    sqlx::raw_sql(script).execute(&mut admin).await.unwrap();
    admin
        .execute("SELECT pg_advisory_unlock(4242)")
        .await
        .unwrap();
    let url = db
        .url
        .replacen("postgres://postgres@", "postgres://newsnexus_agent@", 1);
    assert_ne!(url, db.url, "the test URL names the postgres user");
    let mut agent = sqlx::PgConnection::connect(&url).await.unwrap();
    let names: Vec<String> = sqlx::query_scalar(r#"SELECT "username" FROM "Users" ORDER BY "id""#)
        .fetch_all(&mut agent)
        .await
        .unwrap();
    assert_eq!(names, vec!["ada", "grace"]);
    // The script ran as a superuser, so the role's temporary files are capped too.
    let limit: String = sqlx::query_scalar("SHOW temp_file_limit")
        .fetch_one(&mut agent)
        .await
        .unwrap();
    assert_eq!(limit, "256MB");
    for sql in [
        r#"SELECT "password" FROM "Users""#,
        r#"SELECT "email" FROM "Users""#,
        r#"SELECT * FROM "Users""#,
        r#"SET default_transaction_read_only = off; UPDATE "Articles" SET "title" = 'x'"#,
        r#"INSERT INTO "Articles" ("title", "createdAt", "updatedAt") VALUES ('x', now(), now())"#,
        "CREATE TABLE stolen (x int)",
    ] {
        let r = sqlx::raw_sql(sql).execute(&mut agent).await;
        assert!(r.is_err(), "{sql} was allowed");
    }
    let row = sqlx::query(r#"SELECT count(*) AS n FROM "Articles""#)
        .fetch_one(&mut agent)
        .await
        .unwrap();
    assert_eq!(row.get::<i64, _>("n"), 3);
    // The agent itself works on the role (schema from the granted columns only).
    let agent_service = Agent::start(&url, &[]).await;
    let (_, rows) = agent_service
        .state
        .sql
        .run(1, r#"SELECT "username" FROM "Users" ORDER BY "id""#)
        .await
        .unwrap();
    assert_eq!(rows.rows.len(), 2);
    let r = agent_service
        .state
        .sql
        .run(1, r#"SELECT * FROM "Users""#)
        .await;
    assert!(r.is_err() || !json!(r.unwrap().1.rows).to_string().contains(HASH));
}
