//! Column names fail closed, on SQLite and on the real PostgreSQL with a superuser connection (so
//! only the agent's guard stands between the query and the data): a column list on a real
//! table's alias (`"Users" AS u(c1, c2, c3, c4)` renamed the password hash to `c4`), the same
//! through a join alias inside a subquery (e-mail addresses), and names nothing in scope defines
//! are refused. The queries LLMs write still pass and return what they ask for, through the
//! engine-side cutting wrapper: `ORDER BY ... LIMIT` keeps its order, set operations work, and
//! each result column keeps its name.

mod common;

use agent_service::custom_sql::SqlError;
use common::*;
use serde_json::{json, Value};
use test_support::{sqlite_fixture, sqlite_url, temp_dir, PgTestDb};

/// The fixture's bcrypt hash prefix.
const HASH: &str = "$2b$10$";

/// Quotes the fixture's table and column names for PostgreSQL (its identifiers are mixed-case).
fn sql_for(pg: bool, sql: &str) -> String {
    if !pg {
        return sql.to_string();
    }
    let mut out = sql.to_string();
    for name in [
        "ArticleApproveds",
        "Articles",
        "Users",
        "publishedDate",
        "publicationName",
        "articleId",
        "isApproved",
        "userId",
        "isAdmin",
        "createdAt",
    ] {
        out = out.replace(name, &format!("\"{name}\""));
    }
    out
}

async fn run(agent: &Agent, sql: &str) -> Result<Vec<serde_json::Map<String, Value>>, SqlError> {
    agent.state.sql.run(2, sql).await.map(|(_, rows)| rows.rows)
}

async fn names_fail_closed(url: &str, pg: bool) {
    let agent = Agent::start(url, &[]).await;
    // The leaks, and unknown names (quoted or not: SQLite reads an unknown "x" as 'x').
    for (sql, why) in [
        (
            r#"SELECT c4 AS p FROM Users AS u(c1, c2, c3, c4)"#,
            "a column list on the alias of table",
        ),
        (
            r#"SELECT u.c4 FROM Users AS u(c1, c2, c3, c4) WHERE u.c1 = 1"#,
            "a column list on the alias of table",
        ),
        (
            r#"SELECT x.e FROM (SELECT v.c3 AS e FROM Articles a JOIN Users AS v(c1, c2, c3) ON v.c1 = a.id) x"#,
            "a column list on the alias of table",
        ),
        (
            r#"SELECT (SELECT w.c3 FROM Users AS w(c1, c2, c3) WHERE w.c1 = a.id) FROM Articles a"#,
            "a column list on the alias of table",
        ),
        ("SELECT nothere FROM Articles", "column nothere is unknown"),
        (
            r#"SELECT "nothere" FROM Articles"#,
            r#"column "nothere" is unknown"#,
        ),
        (
            "SELECT a.nothere FROM Articles a",
            "column a.nothere is unknown",
        ),
        (
            "SELECT username FROM Users WHERE email LIKE 'ada%'",
            "column users.email is not allowed",
        ),
        (
            "SELECT x.p FROM (SELECT password AS p FROM Users) x",
            "column password is not allowed",
        ),
    ] {
        let sql = sql_for(pg, sql);
        match run(&agent, &sql).await {
            Err(SqlError::Refused(r)) => assert!(r.to_string().contains(why), "{sql}: {r}"),
            other => panic!("{sql}: expected a refusal ({why}), got {other:?}"),
        }
        assert!(
            !format!("{:?}", run(&agent, &sql).await).contains(HASH),
            "{sql}"
        );
    }
    // What LLMs write.
    let rows = run(&agent, &sql_for(pg, "SELECT * FROM Articles LIMIT 5"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].len(), 10, "{:?}", rows[0]);
    assert!(rows[0].contains_key("title") && rows[0].contains_key("publishedDate"));
    let rows = run(
        &agent,
        &sql_for(
            pg,
            "SELECT title FROM Articles WHERE lower(title) LIKE '%fire%' ORDER BY title",
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        json!(rows),
        json!([{"title": "Dehumidifier fires prompt warning"}])
    );
    let rows = run(&agent, &sql_for(pg, "SELECT COUNT(*) AS n FROM Articles"))
        .await
        .unwrap();
    assert_eq!(json!(rows), json!([{"n": 3}]));
    let rows = run(
        &agent,
        &sql_for(
            pg,
            "SELECT u.username, COUNT(aa.id) AS approvals FROM Users u JOIN ArticleApproveds aa ON aa.userId = u.id \
             GROUP BY u.username ORDER BY approvals DESC, u.username",
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        json!(rows),
        json!([{"username": "ada", "approvals": 2}, {"username": "grace", "approvals": 1}])
    );
    let rows = run(
        &agent,
        &sql_for(
            pg,
            "WITH recent AS (SELECT id, title, publishedDate FROM Articles WHERE publishedDate >= '2025-03-02') \
             SELECT r.title AS t FROM recent r ORDER BY r.publishedDate DESC",
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        json!(rows),
        json!([{"t": "Dehumidifier fires prompt warning"}, {"t": "Playground equipment injuries rise"}])
    );
    // ORDER BY ... LIMIT keeps its order through the wrapper, both ways.
    for (order, first) in [("ASC", 1), ("DESC", 3)] {
        let rows = run(
            &agent,
            &sql_for(
                pg,
                &format!("SELECT id, title FROM Articles ORDER BY id {order} LIMIT 2"),
            ),
        )
        .await
        .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["id"], json!(first), "{order}: {rows:?}");
        assert_eq!(rows[1]["id"], json!(2), "{order}: {rows:?}");
    }
    // Set operations; an ORDER BY over the union's output name.
    let rows = run(
        &agent,
        &sql_for(
            pg,
            "SELECT upper(title) AS name FROM Articles UNION SELECT upper(username) FROM Users ORDER BY name DESC LIMIT 3",
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        json!(rows),
        json!([{"name": "RECALL ISSUED FOR SPACE HEATERS"}, {"name": "PLAYGROUND EQUIPMENT INJURIES RISE"}, {"name": "GRACE"}])
    );
    // Duplicate output names stay apart; an unnamed expression is named by its text.
    let rows = run(
        &agent,
        &sql_for(
            pg,
            "SELECT id, id, upper(title) FROM Articles ORDER BY id LIMIT 1",
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        json!(rows),
        json!([{"id": 1, "id_2": 1, "upper(title)": "RECALL ISSUED FOR SPACE HEATERS"}])
    );
    // The same through the WebSocket: the LLM's query is refused with its reason.
    let mut s = agent
        .connect(&grace(), "grace-names", "?provider=offline")
        .await
        .unwrap();
    greeted(&mut s).await;
    send(
        &mut s,
        json!({"type": "user_message", "content": format!("/sql {}", sql_for(pg, "SELECT c4 AS p FROM Users AS u(c1, c2, c3, c4)"))}),
    )
    .await;
    let text = json!(answer(&mut s).await).to_string();
    assert!(
        text.contains("a column list on the alias of table"),
        "{text}"
    );
    assert!(!text.contains(HASH), "{text}");
}

#[tokio::test]
async fn names_fail_closed_on_sqlite() {
    let dir = temp_dir();
    let db = sqlite_fixture(dir.path(), "nn.db").await;
    names_fail_closed(&sqlite_url(&db), false).await;
}

/// The agent connects as `postgres`, a superuser: only the guard refuses.
#[tokio::test]
async fn names_fail_closed_on_postgres_with_a_superuser() {
    let Some(db) = PgTestDb::with_fixture().await else {
        return;
    };
    names_fail_closed(&db.url, true).await;
}
